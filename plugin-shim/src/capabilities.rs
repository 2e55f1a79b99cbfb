//! Privileges: the plugin runs as an unprivileged uid of the user namespace with every capability
//! set empty (bounding and ambient included) and no_new_privs.
//!
//! When: after Landlock (whose set-up is simplest while nothing else changed) and before seccomp.
//! The bounding set must be emptied while CAP_SETPCAP is still held, so before the uid changes;
//! the uid change then clears the permitted and effective sets. no_new_privs comes last so that no
//! later exec (setuid binaries, file capabilities) can give anything back.

use caps::{CapSet, Capability};
use nix::errno::Errno;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

use crate::error::{Context, SetupError};

const STEP: &str = "capabilities";

pub fn drop_all(uid: u32, gid: u32) -> Result<(), SetupError> {
    let caps_err = |what: &str, e: caps::errors::CapsError| {
        SetupError::new(STEP, format!("{what}: {e}"), Errno::EPERM)
    };
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap).map_err(|e| caps_err("drop bounding set", e))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| caps_err("clear ambient set", e))?;
    setgroups(&[]).during(STEP, || "clear supplementary groups".into())?;
    setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))
        .during(STEP, || format!("switch to gid {gid}"))?;
    setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
        .during(STEP, || format!("switch to uid {uid}"))?;
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::clear(None, set).map_err(|e| caps_err("clear capability set", e))?;
    }
    if caps::has_cap(None, CapSet::Permitted, Capability::CAP_SYS_ADMIN).unwrap_or(true) {
        return Err(SetupError::new(
            STEP,
            "capabilities survived the uid change",
            Errno::EPERM,
        ));
    }
    set_no_new_privs()
}

fn set_no_new_privs() -> Result<(), SetupError> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(SetupError::new(STEP, "set no_new_privs", Errno::last()));
    }
    Ok(())
}
