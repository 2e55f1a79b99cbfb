//! Inherited file descriptors: everything but stdio, the report channel (close-on-exec) and the
//! descriptors passed on purpose is closed, so the plugin cannot reach objects the supervisor or
//! the caller happened to have open.
//!
//! When: after the spec was read (its pipe is among the inherited fds) and before Landlock, so no
//! descriptor opened before the ruleset reaches the plugin unchecked.

use nix::errno::Errno;

use crate::error::SetupError;
use stockade_policy::SHIM_REPORT_FD;

pub fn close_all_except(keep: &[i32]) -> Result<(), SetupError> {
    let mut keep: Vec<u32> = keep
        .iter()
        .chain(&[SHIM_REPORT_FD])
        .map(|&fd| fd as u32)
        .collect();
    keep.retain(|&fd| fd > 2);
    keep.sort_unstable();
    keep.dedup();
    let mut first = 3u32;
    for fd in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd.saturating_add(1);
    }
    Ok(())
}

fn close_range(first: u32, last: u32) -> Result<(), SetupError> {
    // SAFETY: closing descriptors this process does not use any more; no Rust object owns them
    // (the spec pipe was dropped after reading, the report channel is kept).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if rc != 0 {
        return Err(SetupError::new(
            "fds",
            format!("close fds {first}..={last}"),
            Errno::last(),
        ));
    }
    Ok(())
}
