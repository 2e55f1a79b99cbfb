//! rlimits: per-process bounds the cgroup cannot express (open files, file size, core dumps).
//!
//! When: before capabilities are dropped, because raising a hard limit needs CAP_SYS_RESOURCE and
//! the supervisor's own limits may be lower than the policy's; afterwards only lowering is possible.

use nix::sys::resource::{setrlimit, Resource};

use crate::error::{Context, SetupError};
use stockade_policy::{RlimitResource, RlimitSpec};

pub fn apply(limits: &[RlimitSpec]) -> Result<(), SetupError> {
    for l in limits {
        let resource = match l.resource {
            RlimitResource::Nofile => Resource::RLIMIT_NOFILE,
            RlimitResource::Fsize => Resource::RLIMIT_FSIZE,
            RlimitResource::Core => Resource::RLIMIT_CORE,
            RlimitResource::Nproc => Resource::RLIMIT_NPROC,
            RlimitResource::Sigpending => Resource::RLIMIT_SIGPENDING,
            RlimitResource::Msgqueue => Resource::RLIMIT_MSGQUEUE,
        };
        setrlimit(resource, l.limit, l.limit)
            .during("rlimits", || format!("set {:?} to {}", l.resource, l.limit))?;
    }
    Ok(())
}
