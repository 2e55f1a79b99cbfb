//! SIGINT, SIGTERM and SIGHUP as a readable descriptor (signalfd), so `stockade run` handles them
//! in its poll loop: kill the sandbox, clean up, exit 128+N. The signals are blocked in the
//! supervisor before the sandbox starts (no window where one would kill us and leak a cgroup); the
//! launched child unblocks them before it executes the shim.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::sandbox::{Request, StopSource};

pub struct StopSignals {
    fd: OwnedFd,
}

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

impl StopSignals {
    pub fn block() -> std::io::Result<StopSignals> {
        // SAFETY: sigset operations on a local set; sigprocmask and signalfd with valid pointers.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in SIGNALS {
                libc::sigaddset(&mut set, s);
            }
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(StopSignals {
                fd: OwnedFd::from_raw_fd(fd),
            })
        }
    }
}

impl StopSource for StopSignals {
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn take(&mut self) -> Vec<Request> {
        // SAFETY: reading one signalfd_siginfo into a properly sized, zeroed local.
        unsafe {
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let n = libc::read(
                self.fd.as_raw_fd(),
                &mut info as *mut _ as *mut libc::c_void,
                std::mem::size_of::<libc::signalfd_siginfo>(),
            );
            let signal = if n > 0 {
                info.ssi_signo as i32
            } else {
                libc::SIGTERM
            };
            vec![Request::Kill(signal)]
        }
    }
}
