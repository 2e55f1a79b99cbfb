//! One error type for the set-up: which step failed, on what, and the errno.

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
#[error("{step}: {what}: {errno}")]
pub struct SetupError {
    /// The layer or step, e.g. "mount", "landlock", "seccomp".
    pub step: &'static str,
    /// What was being done, with its object.
    pub what: String,
    pub errno: Errno,
}

impl SetupError {
    pub fn new(step: &'static str, what: impl Into<String>, errno: Errno) -> SetupError {
        SetupError {
            step,
            what: what.into(),
            errno,
        }
    }
}

/// Adds the step and a description to a failing call.
pub trait Context<T> {
    fn during(self, step: &'static str, what: impl FnOnce() -> String) -> Result<T, SetupError>;
}

impl<T> Context<T> for Result<T, Errno> {
    fn during(self, step: &'static str, what: impl FnOnce() -> String) -> Result<T, SetupError> {
        self.map_err(|errno| SetupError::new(step, what(), errno))
    }
}

impl<T> Context<T> for std::io::Result<T> {
    fn during(self, step: &'static str, what: impl FnOnce() -> String) -> Result<T, SetupError> {
        self.map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
            SetupError::new(step, what(), errno)
        })
    }
}
