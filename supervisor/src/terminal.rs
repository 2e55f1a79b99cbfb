//! The caller's terminal, put back as it was when the sandbox ends.
//!
//! A plugin inherits the caller's stdio, and when that is a terminal every change it makes there
//! outlives it: `stty raw` leaves the operator's shell without echo or line editing. Two kinds of
//! change are handled differently:
//! - what cannot be read back, or that no plugin needs, is refused by seccomp
//!   (`stockade_policy::seccomp`): exclusive mode, stopped output (TCXONC), the line discipline,
//!   breaks and modem lines, taking the terminal over, and the window size. The window size is
//!   refused rather than restored because the operator may resize the window while the plugin
//!   runs: putting the old size back would undo that;
//! - the termios settings are ordinary (a password prompt turns echo off, an editor enters raw
//!   mode) and are saved here before the launch and restored when every process of the sandbox is
//!   gone, on every path out of `sandbox::run` (exit, kill, timeout, a stop signal, an error).
//!   Exclusive mode is also checked and cleared if it was set, in case a filter let TIOCEXCL by.
//!
//! The guard must be created before the sandbox starts and dropped after `sandbox::run` returns:
//! only then can no process of the sandbox change the terminal again.

use std::mem::MaybeUninit;

/// One terminal among stdin, stdout and stderr (the same terminal is saved once).
struct Saved {
    fd: i32,
    /// The terminal's device, to save a terminal shared by several descriptors once.
    rdev: u64,
    termios: libc::termios,
    exclusive: bool,
}

/// Saves the terminals of descriptors 0–2 and restores them when dropped.
pub struct TerminalGuard {
    saved: Vec<Saved>,
}

impl TerminalGuard {
    pub fn save() -> TerminalGuard {
        let mut saved: Vec<Saved> = Vec::new();
        for fd in 0..=2 {
            let Some(termios) = termios(fd) else {
                continue; // not a terminal
            };
            let rdev = rdev(fd);
            if saved.iter().any(|s| s.rdev == rdev) {
                continue;
            }
            saved.push(Saved {
                fd,
                rdev,
                termios,
                exclusive: exclusive(fd).unwrap_or(false),
            });
        }
        TerminalGuard { saved }
    }

    fn restore(&self) {
        for s in &self.saved {
            if termios(s.fd).is_some_and(|now| !same_termios(&now, &s.termios)) {
                without_sigttou(|| {
                    // SAFETY: tcsetattr reads a termios saved from this same descriptor.
                    let rc = unsafe { libc::tcsetattr(s.fd, libc::TCSANOW, &s.termios) };
                    if rc != 0 {
                        tracing::warn!(
                            fd = s.fd,
                            "restoring the terminal's settings failed: {}",
                            std::io::Error::last_os_error()
                        );
                    }
                });
            }
            if exclusive(s.fd) == Some(true) && !s.exclusive {
                // SAFETY: TIOCNXCL takes no argument and only clears the terminal's exclusive flag.
                unsafe { libc::ioctl(s.fd, libc::TIOCNXCL) };
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        self.restore();
    }
}

fn termios(fd: i32) -> Option<libc::termios> {
    let mut t = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: tcgetattr writes a whole termios into the pointer it is given, which is valid for
    // the call; it is read only when the call succeeded.
    unsafe { (libc::tcgetattr(fd, t.as_mut_ptr()) == 0).then(|| t.assume_init()) }
}

fn rdev(fd: i32) -> u64 {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole stat into the pointer it is given, valid for the call; it is
    // read only when the call succeeded.
    unsafe {
        if libc::fstat(fd, st.as_mut_ptr()) == 0 {
            st.assume_init().st_rdev
        } else {
            u64::MAX - fd as u64
        }
    }
}

/// The terminal's exclusive mode (TIOCGEXCL, Linux 3.8).
fn exclusive(fd: i32) -> Option<bool> {
    let mut on: libc::c_int = 0;
    // SAFETY: TIOCGEXCL writes one int into the pointer it is given, which is valid for the call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGEXCL, &mut on) };
    (rc == 0).then_some(on != 0)
}

/// The settings tcsetattr applies, compared field by field (the struct has padding).
fn same_termios(a: &libc::termios, b: &libc::termios) -> bool {
    a.c_iflag == b.c_iflag
        && a.c_oflag == b.c_oflag
        && a.c_cflag == b.c_cflag
        && a.c_lflag == b.c_lflag
        && a.c_line == b.c_line
        && a.c_cc == b.c_cc
        && a.c_ispeed == b.c_ispeed
        && a.c_ospeed == b.c_ospeed
}

/// Runs `f` with SIGTTOU blocked. A `stockade run` in a background job of the terminal's session
/// would otherwise be stopped by its own restore (the kernel sends SIGTTOU to a background
/// process that changes its controlling terminal's settings, unless the signal is blocked or
/// ignored; then the change is made).
fn without_sigttou(f: impl FnOnce()) {
    // SAFETY: sigset operations on local sets; pthread_sigmask with valid pointers, restoring
    // the thread's previous mask afterwards.
    unsafe {
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        libc::sigaddset(&mut block, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut previous);
        f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn pty() -> (OwnedFd, OwnedFd) {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two descriptors into the given ints; the name, termios and
        // winsize pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
    }

    #[test]
    fn settings_and_exclusive_mode_are_put_back() {
        let (_master, slave) = pty();
        let fd = slave.as_raw_fd();
        let original = termios(fd).expect("a pty is a terminal");
        let guard = TerminalGuard {
            saved: vec![Saved {
                fd,
                rdev: rdev(fd),
                termios: original,
                exclusive: false,
            }],
        };
        // What a plugin might do: raw mode, exclusive mode.
        let mut raw = original;
        // SAFETY: cfmakeraw edits the local termios; tcsetattr and TIOCEXCL act on our own pty.
        unsafe {
            libc::cfmakeraw(&mut raw);
            assert_eq!(libc::tcsetattr(fd, libc::TCSANOW, &raw), 0);
            assert_eq!(libc::ioctl(fd, libc::TIOCEXCL), 0);
        }
        assert!(!same_termios(&termios(fd).unwrap(), &original));
        assert_eq!(exclusive(fd), Some(true));
        drop(guard);
        assert!(same_termios(&termios(fd).unwrap(), &original));
        assert_eq!(exclusive(fd), Some(false));
    }

    #[test]
    fn descriptors_that_are_not_terminals_are_left_alone() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(termios(file.as_raw_fd()).is_none());
        assert_eq!(exclusive(file.as_raw_fd()), None);
    }
}
