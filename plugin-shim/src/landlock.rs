//! Landlock: the second filesystem wall, and the TCP port rules.
//!
//! Why: the mount namespace decides what exists; Landlock decides what may be done with it, in a
//! way the plugin cannot undo (it survives exec and applies to every descendant). It also denies
//! exec outside the exec list even where a mount would allow it, restricts TCP bind/connect by port
//! (ABI 4), and scopes signals and abstract unix sockets to the sandbox (ABI 6).
//!
//! When: after the new root is in place (rules are opened on the paths the plugin will see) and
//! before capabilities are dropped and seccomp is installed (landlock_* calls need no capability,
//! but the ruleset is easier to reason about when nothing else has changed yet).

use ::landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use nix::errno::Errno;

use crate::error::SetupError;
use stockade_policy::{Access as PathAccess, LandlockSpec};

const STEP: &str = "landlock";

/// The ABI the running kernel offers (0 when Landlock is unavailable).
pub fn kernel_abi() -> i32 {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with a null attribute and size 0 only queries the
    // ABI version; it touches no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if v < 0 {
        0
    } else {
        v as i32
    }
}

pub struct Applied {
    pub abi: i32,
    pub status: &'static str,
}

/// `required`: enforce mode, where a missing part is a set-up failure. `host_network`: the sandbox
/// shares the host's network namespace, so Landlock's TCP rules are the only port restriction.
pub fn apply(
    spec: &LandlockSpec,
    required: bool,
    host_network: bool,
) -> Result<Applied, SetupError> {
    let kernel = kernel_abi();
    if required && host_network && spec.restrict_tcp && kernel < 4 {
        return Err(SetupError::new(
            STEP,
            format!(
                "TCP port rules need Landlock ABI 4 (Linux 6.7); this kernel offers ABI {kernel}"
            ),
            Errno::ENOSYS,
        ));
    }
    if kernel < 1 {
        if required {
            return Err(SetupError::new(
                STEP,
                "Landlock is not available on this kernel",
                Errno::ENOSYS,
            ));
        }
        return Ok(Applied {
            abi: 0,
            status: "unavailable",
        });
    }
    let abi = ABI::from(kernel);
    let err = |what: &str, e: &dyn std::fmt::Display| {
        SetupError::new(STEP, format!("{what}: {e}"), Errno::EINVAL)
    };

    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let exec = read | AccessFs::Execute;
    let write = AccessFs::from_all(abi) & !AccessFs::Execute;
    let file_rights = AccessFs::from_file(abi);

    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| err("handle filesystem access", &e))?;
    if spec.restrict_tcp && kernel >= 4 {
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(|e| err("handle TCP access", &e))?;
    }
    if kernel >= 6 {
        ruleset = ruleset
            .scope(Scope::Signal | Scope::AbstractUnixSocket)
            .map_err(|e| err("scope signals and abstract sockets", &e))?;
    }
    let mut created = ruleset.create().map_err(|e| err("create ruleset", &e))?;

    for (path, access) in &spec.paths {
        let fd = match PathFd::new(path) {
            Ok(fd) => fd,
            // Declared but absent on this host: nothing to grant.
            Err(_) => continue,
        };
        let mut rights = match access {
            PathAccess::Read => read,
            PathAccess::Exec => exec,
            PathAccess::Write => write,
        };
        if spec.also_exec.contains(path) {
            rights |= AccessFs::Execute;
        }
        if !std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false) {
            rights &= file_rights;
        }
        created = created
            .add_rule(PathBeneath::new(fd, rights))
            .map_err(|e| err(&format!("allow {}", path.display()), &e))?;
    }
    // Listing directories is allowed everywhere: the root holds only what the policy declares
    // (the mount namespace is the wall), and `ls /` or a walk up from a granted directory is
    // what honest programs do. Reading files stays limited to the grants.
    let root = PathFd::new("/").map_err(|e| err("open /", &e))?;
    created = created
        .add_rule(PathBeneath::new(root, AccessFs::ReadDir))
        .map_err(|e| err("allow listing directories", &e))?;
    if spec.restrict_tcp && kernel >= 4 {
        for &port in &spec.tcp_bind_ports {
            created = created
                .add_rule(NetPort::new(port, AccessNet::BindTcp))
                .map_err(|e| err(&format!("allow TCP bind {port}"), &e))?;
        }
        for &port in &spec.tcp_connect_ports {
            created = created
                .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
                .map_err(|e| err(&format!("allow TCP connect {port}"), &e))?;
        }
    }
    let status = created
        .restrict_self()
        .map_err(|e| err("restrict self", &e))?;
    let status = match status.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partially enforced",
        RulesetStatus::NotEnforced => "not enforced",
    };
    if required && status == "not enforced" {
        return Err(SetupError::new(
            STEP,
            "the ruleset was not enforced",
            Errno::ENOSYS,
        ));
    }
    Ok(Applied {
        abi: kernel,
        status,
    })
}
