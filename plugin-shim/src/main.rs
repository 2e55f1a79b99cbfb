//! The `stockade-shim` binary: reads the launch spec from the inherited pipe and becomes the
//! plugin (see the library's documentation for the order of the layers).

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::errno::Errno;
use stockade_policy::{LaunchSpec, SHIM_SPEC_FD};
use stockade_shim::error::{Context, SetupError};
use stockade_shim::{become_plugin, fail, Reporter};

fn main() {
    // SAFETY: F_GETFD only queries whether the descriptor is open.
    if unsafe { libc::fcntl(SHIM_SPEC_FD, libc::F_GETFD) } < 0 {
        eprintln!("stockade-shim: no launch spec on fd {SHIM_SPEC_FD}");
        eprintln!(
            "hint: the shim is started by the supervisor; use `stockade run --policy FILE -- CMD`"
        );
        std::process::exit(2);
    }
    match read_spec() {
        // An armed spec keeps the pipe: its exec request comes on it later.
        Ok((spec, control)) => {
            let channel = spec.armed.then_some(control);
            become_plugin(&spec, channel)
        }
        Err(e) => fail(&mut Reporter::from_inherited(), e),
    }
}

fn read_spec() -> Result<(LaunchSpec, std::fs::File), SetupError> {
    // SAFETY: the supervisor passes the read end of the spec pipe on this descriptor; it is taken
    // once and closed when `control` drops (after the exec request, for an armed spec).
    let mut control = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(SHIM_SPEC_FD) });
    let mut len = [0u8; 8];
    control
        .read_exact(&mut len)
        .during("spec", || "read the launch spec's length".into())?;
    let len = u64::from_le_bytes(len);
    if len > 16 << 20 {
        return Err(SetupError::new(
            "spec",
            format!("launch spec of {len} bytes"),
            Errno::E2BIG,
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    control
        .read_exact(&mut bytes)
        .during("spec", || "read the launch spec".into())?;
    let spec = serde_json::from_slice(&bytes).map_err(|e| {
        SetupError::new(
            "spec",
            format!("decode the launch spec: {e}"),
            Errno::EINVAL,
        )
    })?;
    Ok((spec, control))
}
