//! Nothing is left behind: after 200 sequential runs (40 under the VM runner's software
//! emulation, where each run's eBPF load takes seconds), no cgroup, mount, process, descriptor,
//! BPF program or BPF map remains; a supervisor killed outright takes its sandbox along and the next run sweeps its
//! cgroups. Its own test binary, so that no other test's sandbox runs meanwhile; the tests here
//! take `SERIAL` so they do not overlap either.

mod harness;
use harness::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::new(());

fn mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count()
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// How many BPF objects of one kind the kernel holds (BPF_PROG_GET_NEXT_ID = 11,
/// BPF_MAP_GET_NEXT_ID = 12: walks every id).
fn bpf_objects(cmd: libc::c_long) -> usize {
    let mut attr = [0u32; 4]; // start_id, next_id, open_flags
    let mut n = 0;
    loop {
        // SAFETY: the attr buffer is large enough for the GET_NEXT_ID fields.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as u32,
            )
        };
        if rc != 0 {
            return n;
        }
        n += 1;
        attr[0] = attr[1];
    }
}

/// BPF programs and maps, once their number stops changing: they are freed after an RCU grace
/// period once the last reference is gone (a supervisor killed by the previous test may still be
/// going away), so wait until two reads 100 ms apart agree, at most 5 s.
fn bpf_settled() -> (usize, usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut last = (bpf_objects(11), bpf_objects(12));
    loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = (bpf_objects(11), bpf_objects(12));
        if now == last || std::time::Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// The BPF object counts once they are back to `before`, or after 10 s. The kernel frees a
/// program or map after its last reference goes (some through RCU and workqueues, cgroup
/// attachments when the cgroup itself is released), so on a loaded machine the count can
/// stand still for a moment before it falls; a leak stays.
fn bpf_back_to(before: (usize, usize)) -> (usize, usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = (bpf_objects(11), bpf_objects(12));
        if (now.0 <= before.0 && now.1 <= before.1) || std::time::Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `stockade run --quiet` of /bin/true under the default profile.
fn run_true() -> std::process::ExitStatus {
    Command::new(stockade())
        .args(["run", "--quiet", "--policy"])
        .arg(default_profile())
        .args(["--", "/bin/true"])
        .stdin(Stdio::null())
        .status()
        .unwrap()
}

#[test]
fn two_hundred_runs_leave_nothing_behind() {
    if !privileged("two_hundred_runs_leave_nothing_behind") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One run first, uncounted: where the host's set of monitors is kept loaded (the VM's
    // runner holds it), a slot's ring buffer is created at the slot's first use and kept for
    // the set's life; it belongs to the set, not to a run.
    let warm = run_true();
    assert!(warm.success(), "warm-up run: {warm}");
    let (cgroups, mounts, procs, fds) = (
        leftover_cgroups(),
        mount_count(),
        sandbox_processes(),
        fd_count(),
    );
    let bpf = bpf_settled();
    assert!(
        procs.is_empty(),
        "sandbox processes before the test: {procs:?}"
    );
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let runs = if cmdline.contains("stockade.vm=tcg") {
        40
    } else {
        200
    };
    println!(
        "{runs} runs ({} BPF programs, {} maps before)",
        bpf.0, bpf.1
    );
    for i in 0..runs {
        let status = run_true();
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
    let after = bpf_back_to(bpf);
    assert!(
        after.0 <= bpf.0 && after.1 <= bpf.1,
        "BPF programs or maps left behind: {after:?} (programs, maps) after, {bpf:?} before \
         (or another process loaded some meanwhile)"
    );
}

/// The processes whose cgroup is named after supervisor `pid`.
fn processes_of_supervisor(pid: u32) -> Vec<u32> {
    let name = format!("stockade-{pid}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cgroup"))
                .map(|c| c.lines().any(|l| l.ends_with(&name)))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_killed_supervisor_takes_its_sandbox_along() {
    if !privileged("a_killed_supervisor_takes_its_sandbox_along") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let file = policy_file("cli", &policy(""));
    let mut child = Command::new(stockade())
        .args(["run", "--quiet", "--policy"])
        .arg(&file)
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .args(["--", &hostile(), "sleep-tree", "30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let supervisor = child.id();
    // Whatever happens below, the supervisor does not outlive the test.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout_pipe = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let mut stdout = BufReader::new(stdout_pipe);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");
    // The fixture and its 6 descendants (the grandchildren fork on their own schedule).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while processes_of_supervisor(supervisor).len() < 7 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(processes_of_supervisor(supervisor).len(), 7);
    // SIGKILL: no handler, no cleanup; the parent-death signal must end the sandbox.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !processes_of_supervisor(supervisor).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        processes_of_supervisor(supervisor),
        Vec::<u32>::new(),
        "sandbox processes outlived their supervisor"
    );
    // Its cgroups are left behind; the next run sweeps them.
    let name = format!("stockade-{supervisor}");
    assert!(leftover_cgroups().iter().any(|p| p.ends_with(&name)));
    let r = run(&file, &[&hostile(), "echo", "next"]);
    assert_line(&r, "ok next");
    let left: Vec<_> = leftover_cgroups()
        .into_iter()
        .filter(|p| p.ends_with(&name))
        .collect();
    assert!(left.is_empty(), "orphaned cgroups not swept: {left:?}");
}
