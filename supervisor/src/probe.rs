//! What this kernel can do for each isolation layer, probed for real (a feature is present when
//! the call that uses it succeeds, not when a config file says so). Used by `stockade doctor` and
//! `stockade policy explain`.

use std::fs;

use serde::Serialize;

use crate::cgroup::Layout;

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub kernel: String,
    pub user_namespaces: Result<(), String>,
    pub landlock_abi: i32,
    pub seccomp_filter: bool,
    pub seccomp_kill_process: bool,
    pub cgroups: Result<String, String>,
    pub mount_setattr: bool,
    pub memfd_noexec: bool,
    pub io_uring_disabled: Option<u32>,
    pub legacy_tiocsti: Option<u32>,
    pub bpf: Vec<(&'static str, Result<(), String>)>,
}

impl Probe {
    pub fn run() -> Probe {
        Probe {
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            user_namespaces: probe_namespaces(),
            landlock_abi: landlock_abi(),
            seccomp_filter: fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
                .map(|a| a.split_whitespace().any(|x| x == "errno"))
                .unwrap_or(false),
            seccomp_kill_process: fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
                .map(|a| a.split_whitespace().any(|x| x == "kill_process"))
                .unwrap_or(false),
            cgroups: Layout::detect()
                .map(|l| l.name().to_string())
                .map_err(|e| e.to_string()),
            mount_setattr: mount_setattr_exists(),
            memfd_noexec: fs::metadata("/proc/sys/vm/memfd_noexec").is_ok(),
            io_uring_disabled: read_u32("/proc/sys/kernel/io_uring_disabled"),
            legacy_tiocsti: read_u32("/proc/sys/dev/tty/legacy_tiocsti"),
            bpf: crate::bpf_probe::program_types(),
        }
    }

    /// The layers the default profile cannot run without; each entry is (layer, why missing).
    pub fn missing_required(&self) -> Vec<(&'static str, String)> {
        let mut missing = Vec::new();
        if let Err(e) = &self.user_namespaces {
            missing.push(("namespaces", e.clone()));
        }
        if self.landlock_abi < 1 {
            missing.push((
                "landlock",
                "Landlock is not enabled (add `landlock` to the lsm= boot parameter)".into(),
            ));
        }
        if !self.seccomp_filter || !self.seccomp_kill_process {
            missing.push((
                "seccomp",
                "seccomp filters with kill_process and errno are unavailable".into(),
            ));
        }
        if let Err(e) = &self.cgroups {
            missing.push(("cgroups", e.clone()));
        }
        if !self.mount_setattr {
            missing.push((
                "mounts",
                "mount_setattr(2) is missing (Linux 5.12 or newer is needed)".into(),
            ));
        }
        missing
    }
}

fn read_u32(path: &str) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The Landlock ABI this kernel offers (0: none); the shim applies the same number.
pub fn landlock_abi() -> i32 {
    stockade_shim::landlock_abi()
}

fn mount_setattr_exists() -> bool {
    // SAFETY: invalid arguments on purpose: ENOSYS means missing, anything else means present.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<u8>(),
            0,
            std::ptr::null::<u8>(),
            0,
        )
    };
    !(rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

/// Forks a child that creates every namespace a sandbox uses.
fn probe_namespaces() -> Result<(), String> {
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
    // SAFETY: the child only calls unshare and _exit, both async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            let rc = libc::unshare(flags);
            libc::_exit(if rc == 0 {
                0
            } else {
                *libc::__errno_location() & 0x7f
            });
        }
    }
    let mut status = 0;
    // SAFETY: reaping the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        errno => Err(format!(
            "unshare(user, mount, pid, ipc, uts, net, cgroup) failed: {} (check user.max_user_namespaces)",
            std::io::Error::from_raw_os_error(errno)
        )),
    }
}
