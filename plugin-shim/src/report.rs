//! The report channel to the supervisor: JSON lines on an inherited, close-on-exec descriptor.
//! A successful exec closes it, which is how the supervisor tells "the plugin runs" from "set-up
//! failed" without a race.

use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};

use stockade_policy::{ShimReport, SHIM_REPORT_FD};

pub struct Reporter {
    file: std::fs::File,
}

impl Reporter {
    /// Takes ownership of the inherited report descriptor.
    pub fn from_inherited() -> Reporter {
        // SAFETY: the supervisor hands this descriptor over open and owned by nobody else in this
        // process; the shim takes it exactly once, at start-up.
        let fd = unsafe { OwnedFd::from_raw_fd(SHIM_REPORT_FD) };
        // Close-on-exec, so that the plugin's exec closes the channel: that end of file is the
        // supervisor's signal that set-up succeeded.
        // SAFETY: setting a descriptor flag on a descriptor we own.
        unsafe { libc::fcntl(SHIM_REPORT_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
        Reporter {
            file: std::fs::File::from(fd),
        }
    }

    /// Whether the supervisor still holds the read end: a pipe's write end reports POLLERR once
    /// every reader is gone.
    pub fn supervisor_alive(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: polling one valid descriptor without waiting.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n >= 0 && pfd.revents & libc::POLLERR == 0
    }

    pub fn send(&mut self, report: &ShimReport) {
        if let Ok(mut line) = serde_json::to_vec(report) {
            line.push(b'\n');
            // Nothing useful can be done if the supervisor went away: it will see the exit status.
            let _ = self.file.write_all(&line);
        }
    }
}
