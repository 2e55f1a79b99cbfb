//! seccomp: the system-call allow list, compiled by `stockade-policy` (architecture checked).
//!
//! When: last before exec, because every earlier step makes calls that the filter denies (mount,
//! pivot_root, landlock_*, capset). The only call after it is execve, which the filter allows.

use nix::errno::Errno;
use seccompiler::{apply_filter, sock_filter};

use crate::error::SetupError;
use stockade_policy::SeccompSpec;

pub fn install(spec: &SeccompSpec) -> Result<(), SetupError> {
    let program: Vec<sock_filter> = spec
        .program
        .iter()
        .map(|&(code, jt, jf, k)| sock_filter { code, jt, jf, k })
        .collect();
    apply_filter(&program).map_err(|e| {
        let errno = match &e {
            seccompiler::Error::Seccomp(io) | seccompiler::Error::Prctl(io) => {
                Errno::from_raw(io.raw_os_error().unwrap_or(libc::EINVAL))
            }
            _ => Errno::EINVAL,
        };
        SetupError::new("seccomp", format!("install filter: {e}"), errno)
    })
}
