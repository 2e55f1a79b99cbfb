//! The caller's stdio, as it was before the sandbox ran. The plugin shares the caller's open file
//! descriptions (and terminal), so what it changes there outlives it: a non-blocking flag on a
//! shared pipe makes the supervisor's own summary fail with EAGAIN, and terminal settings stay
//! broken in the caller's shell. The guard puts them back when the sandbox has ended.

use std::mem::MaybeUninit;

struct Saved {
    fd: i32,
    status_flags: i32,
    termios: Option<libc::termios>,
}

pub struct StdioGuard {
    saved: Vec<Saved>,
}

impl StdioGuard {
    pub fn save() -> StdioGuard {
        let mut saved = Vec::new();
        for fd in 0..=2 {
            // SAFETY: F_GETFL and tcgetattr only read state of a descriptor into local memory.
            unsafe {
                let status_flags = libc::fcntl(fd, libc::F_GETFL);
                if status_flags < 0 {
                    continue;
                }
                let mut termios = MaybeUninit::<libc::termios>::uninit();
                let termios =
                    (libc::tcgetattr(fd, termios.as_mut_ptr()) == 0).then(|| termios.assume_init());
                saved.push(Saved {
                    fd,
                    status_flags,
                    termios,
                });
            }
        }
        StdioGuard { saved }
    }
}

impl Drop for StdioGuard {
    fn drop(&mut self) {
        for s in &self.saved {
            // SAFETY: restoring flags and terminal settings saved from the same descriptors.
            unsafe {
                libc::fcntl(s.fd, libc::F_SETFL, s.status_flags);
                if let Some(t) = &s.termios {
                    libc::tcsetattr(s.fd, libc::TCSANOW, t);
                }
            }
        }
    }
}
