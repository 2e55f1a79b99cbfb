//! Nothing is left behind: after 200 sequential runs, no cgroup, mount, process or descriptor
//! remains. Its own test binary, so that no other sandbox runs meanwhile.

mod harness;
use harness::*;
use std::process::{Command, Stdio};

fn mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count()
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn two_hundred_runs_leave_nothing_behind() {
    if !privileged("two_hundred_runs_leave_nothing_behind") {
        return;
    }
    let (cgroups, mounts, procs, fds) = (
        leftover_cgroups(),
        mount_count(),
        sandbox_processes(),
        fd_count(),
    );
    assert!(
        procs.is_empty(),
        "sandbox processes before the test: {procs:?}"
    );
    for i in 0..200 {
        let status = Command::new(stockade())
            .args(["run", "--quiet", "--policy"])
            .arg(default_profile())
            .args(["--", "/bin/true"])
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "run {i}: {status}");
    }
    assert_eq!(leftover_cgroups(), cgroups, "cgroups left behind");
    assert_eq!(mount_count(), mounts, "mounts left behind");
    assert_eq!(
        sandbox_processes(),
        Vec::<u32>::new(),
        "sandbox processes left behind"
    );
    assert_eq!(fd_count(), fds, "descriptors left open");
}
