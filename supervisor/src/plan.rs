//! The launch rules every sandbox follows, whoever starts it (`stockade run`, the daemon): which
//! eBPF monitors a policy needs (fail closed in enforce mode), the memfd fallback on kernels
//! without `vm.memfd_noexec`, what the LSM wall grants, which directory may be `$PLUGIN_DIR`, the
//! plugin's environment, the unix-socket launch check, the state directory's owner, and what the
//! monitors are armed with.
//!
//! Errors are data: a cause, a hint and whether the input or the host is at fault; warnings (a
//! monitor-mode sandbox starting without a layer) are returned for the caller to show.

use std::path::{Path, PathBuf};

use stockade_policy::model::{NetworkMode, ThresholdAction};
use stockade_policy::{Access, EnforcementMode, LaunchSpec, Policy};

use crate::monitor::report::Threshold;
use crate::monitor::rules::NetPolicy;
use crate::monitor::{ArmSpec, LsmSpec, Monitor};
use crate::sandbox::{MonitorRef, Monitoring};

/// Whose fault a refusal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The policy, the command or an argument: the caller can fix it.
    Input,
    /// The host lacks something (a kernel feature, a permission).
    Host,
}

/// A launch refused before anything was created.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{cause}")]
pub struct PlanError {
    pub cause: String,
    pub hint: Option<String>,
    pub fault: Fault,
}

impl PlanError {
    pub fn input(cause: impl Into<String>, hint: impl Into<String>) -> PlanError {
        PlanError {
            cause: cause.into(),
            hint: Some(hint.into()),
            fault: Fault::Input,
        }
    }

    pub fn host(cause: impl Into<String>, hint: Option<String>) -> PlanError {
        PlanError {
            cause: cause.into(),
            hint,
            fault: Fault::Host,
        }
    }
}

/// The monitors a sandbox runs under, as loaded for its policy.
pub struct Loaded {
    pub monitor: Monitor,
    /// Monitors the policy would use that are not active here (monitor mode only).
    pub degraded: Vec<String>,
}

const MONITOR_HINT: &str = "`stockade doctor` lists which eBPF program types load on this \
    kernel; a policy with [enforcement] mode = \"monitor\" runs without the missing monitors";

/// Loads (or joins) the eBPF monitors for `policy`. An enforce-mode policy needs the ones it relies
/// on (fail closed); a monitor-mode one runs with what loads, and `warnings` says what was
/// missing. `Ok(None)`: monitor mode without any monitor.
pub fn load_monitor(
    policy: &Policy,
    warnings: &mut Vec<String>,
) -> Result<Option<Loaded>, PlanError> {
    let enforce = policy.enforcement.mode == EnforcementMode::Enforce;
    let host_network = policy.network.mode == NetworkMode::Allow;
    // For measurements (docs/benchmarks.md): the same sandbox without its monitors.
    if std::env::var_os("STOCKADE_MONITORS").is_some_and(|v| v == "off") {
        if enforce {
            return Err(PlanError::input(
                "STOCKADE_MONITORS=off: an enforce-mode policy never runs without its monitors",
                "use a policy with [enforcement] mode = \"monitor\" to measure without them",
            ));
        }
        warnings.push("STOCKADE_MONITORS=off: running without the eBPF monitors".into());
        return Ok(None);
    }
    let monitor = match Monitor::open_for(host_network) {
        Ok(m) => m,
        Err(e) if enforce => {
            return Err(PlanError::host(
                format!("the eBPF monitors cannot load: {e}"),
                Some(MONITOR_HINT.into()),
            ))
        }
        Err(e) => {
            warnings.push(format!(
                "the eBPF monitors cannot load ({e}); running without them (monitor mode)"
            ));
            return Ok(None);
        }
    };
    let degraded = check_monitor(&monitor, policy, warnings)?;
    Ok(Some(Loaded { monitor, degraded }))
}

/// Whether `monitor` has what `policy` needs: an error in enforce mode when a required monitor
/// is missing; otherwise the list of missing ones (each also a warning).
pub fn check_monitor(
    monitor: &Monitor,
    policy: &Policy,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>, PlanError> {
    let enforce = policy.enforcement.mode == EnforcementMode::Enforce;
    let caps = monitor.capabilities();
    let mut required = vec![&caps.syscalls];
    if policy.network.mode == NetworkMode::Allow {
        required.push(&caps.network);
    }
    let mut degraded = Vec::new();
    for status in required {
        if !status.active {
            if enforce {
                return Err(PlanError::host(
                    format!(
                        "the {} monitor that this enforce-mode policy requires is not available: {}",
                        status.name, status.detail
                    ),
                    Some(MONITOR_HINT.into()),
                ));
            }
            warnings.push(format!(
                "the {} monitor is not available ({}); running without it (monitor mode)",
                status.name, status.detail
            ));
            degraded.push(format!("{}: {}", status.name, status.detail));
        }
    }
    if !caps.processes.active {
        degraded.push(format!("processes: {}", caps.processes.detail));
    }
    Ok(degraded)
}

/// `[ipc]` where no kernel hook judges unix socket connects (before 6.7, or the hooks did not
/// load), or where the sandbox has a writable tree a symlink could lead from
/// (`unix::launch_check_needed`): an enforce-mode sandbox does not start while a read-only tree
/// it is granted holds a socket its policy does not list; a monitor-mode one starts, with a
/// warning and a degraded entry in its report.
/// What the monitors judge of unix sockets: (the cgroup hooks judge names, the LSM programs judge
/// the socket reached). Read under a shared monitor's lock; the launch check runs without it.
pub fn unix_judged(monitor: &Monitor) -> (bool, bool) {
    (
        crate::monitor::unix::armed_by(monitor),
        crate::monitor::unix::reached_judged_by(monitor),
    )
}

pub fn ipc_launch_check(
    spec: &LaunchSpec,
    judged: Option<(bool, bool)>,
    degraded: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<(), PlanError> {
    let (hooks, reached) = judged.unwrap_or((false, false));
    if !crate::monitor::unix::launch_check_needed(spec, hooks, reached) {
        return Ok(());
    }
    let scan = crate::socket_scan::scan(spec);
    let Some(cause) = scan.refusal(hooks) else {
        return Ok(());
    };
    if spec.enforce {
        return Err(PlanError::input(
            cause,
            "list the socket in [ipc] `connect`, grant a narrower directory that does not hold it, \
             or run on a kernel with the cgroup unix socket hooks (6.7+; `stockade doctor`)",
        ));
    }
    warnings.push(format!("{cause}; running anyway (monitor mode)"));
    if judged.is_some() {
        degraded.push(format!("ipc: {cause}"));
    }
    Ok(())
}

/// What the monitors are armed with for one sandbox, and its threshold.
pub fn monitoring<'a>(
    policy: &Policy,
    spec: &LaunchSpec,
    shim_exec: bool,
    mut monitor: MonitorRef<'a>,
    degraded: Vec<String>,
    events_out: Option<Box<dyn std::io::Write>>,
) -> Monitoring<'a> {
    let e = &policy.enforcement;
    let kill = e.mode == EnforcementMode::Enforce && e.action == ThresholdAction::Kill;
    let network = (policy.network.mode == NetworkMode::Allow)
        .then(|| NetPolicy::from_policy(&policy.network));
    let in_kernel_kill = kill && monitor.with(|m| m.capabilities().kill_in_kernel.active);
    let trace_files = events_out.is_some();
    Monitoring {
        monitor,
        arm: ArmSpec {
            lsm: Some(lsm_spec(spec, shim_exec)),
            network,
            kill: in_kernel_kill.then_some((e.threshold, e.window)),
            trace_files,
            miss_trees: crate::monitor::rules::miss_trees(spec),
            ipc: spec.ipc.clone(),
            syscall_tracepoint: policy.monitor.syscall_tracepoint,
        },
        threshold: Threshold {
            violations: e.threshold,
            window: e.window,
            kill,
        },
        events_out,
        degraded,
        observer: None,
    }
}

/// What the LSM wall grants: the host sources of the policy's binds with their rights, and the
/// device nodes the shim binds into /dev.
pub fn lsm_spec(spec: &LaunchSpec, shim_exec: bool) -> LsmSpec {
    use stockade_ebpf_common::{GRANT_EXEC, GRANT_READ, GRANT_WRITE};
    let mut grants: Vec<(PathBuf, u32)> = spec
        .mounts
        .iter()
        .map(|m| {
            let bits = match m.access {
                Access::Read => GRANT_READ,
                Access::Write => GRANT_READ | GRANT_WRITE,
                Access::Exec => GRANT_READ | GRANT_EXEC,
            };
            (m.source.clone(), bits)
        })
        .collect();
    for dev in stockade_shim::DEVICES {
        let path = PathBuf::from("/dev").join(dev);
        if path.exists() {
            grants.push((path, GRANT_READ | GRANT_WRITE));
        }
    }
    LsmSpec {
        grants,
        after_execs: if shim_exec { 2 } else { 1 },
    }
}

/// Without `vm.memfd_noexec` (Linux < 6.3) a memfd stays executable and Landlock does not cover
/// it, so in enforce mode memfd_create is denied instead; a policy that allows it explicitly cannot
/// be enforced here. Returns whether the fallback was applied.
pub fn forbid_memfd_without_sysctl(policy: &mut Policy) -> Result<bool, PlanError> {
    if Path::new("/proc/sys/vm/memfd_noexec").exists()
        || policy.enforcement.mode != EnforcementMode::Enforce
    {
        return Ok(false);
    }
    if policy.syscalls.allow.iter().any(|s| s == "memfd_create") {
        return Err(PlanError::input(
            "the policy allows memfd_create, but this kernel cannot make memfds non-executable (vm.memfd_noexec, Linux 6.3+)",
            "remove memfd_create from [syscalls] allow, or use monitor mode",
        ));
    }
    if !policy.syscalls.deny.iter().any(|s| s == "memfd_create") {
        policy.syscalls.deny.push("memfd_create".into());
    }
    Ok(true)
}

/// Top-level directories of the host that are never one plugin's own directory.
const SYSTEM_TREES: [&str; 17] = [
    "/bin", "/boot", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt",
    "/opt", "/root", "/run", "/sbin", "/srv", "/usr", "/var",
];

/// Why `dir` (canonical: no symlink, no `..`) must not be `$PLUGIN_DIR`, if it must not. The
/// policy grants `$PLUGIN_DIR` whole (read or exec, sometimes write), so it must be the plugin's
/// own directory:
/// - not `/`: the whole host tree;
/// - not `/tmp`, the sandbox's private `/tmp` (`$TMP`), which the host's would replace. A
///   directory below `/tmp` is fine: it is bound on top of the private `/tmp`;
/// - nothing in `/proc`, `/sys` or `/dev`: kernel interfaces, which the sandbox builds for
///   itself (or hides), never a plugin's code;
/// - not a top-level system directory (`SYSTEM_TREES`: `/etc`, `/usr`, `/home`, ...); one of its
///   subdirectories may be (`/usr/bin` for `stockade run -- /bin/true`);
/// - not a directory every user may write to (`/var/tmp`, `/dev/shm`, any mode o+w): anyone on
///   the host could put code there that the plugin would run, or read what it leaves.
pub fn plugin_dir_refusal(dir: &Path) -> Option<String> {
    if dir == Path::new("/") {
        return Some("that is the host's root: the plugin would get the whole host tree".into());
    }
    if dir == Path::new("/tmp") {
        return Some("the sandbox has a private /tmp, which the host's /tmp would replace".into());
    }
    if let Some(kernel) = ["/proc", "/sys", "/dev"]
        .into_iter()
        .find(|k| dir.starts_with(k))
    {
        return Some(format!(
            "{kernel} is a kernel interface that the sandbox builds for itself, not a plugin's code"
        ));
    }
    if SYSTEM_TREES.iter().any(|s| dir == Path::new(s)) {
        return Some(format!(
            "{} is a system tree of the host, not a plugin's own directory",
            dir.display()
        ));
    }
    let mode = std::fs::metadata(dir).map_or(0, |m| {
        std::os::unix::fs::PermissionsExt::mode(&m.permissions())
    });
    if mode & 0o002 != 0 {
        return Some(format!(
            "every user of the host may write to it (mode {:o}): anyone could put code there \
             that the plugin would run",
            mode & 0o7777
        ));
    }
    None
}

/// PATH: the usual directories the policy lets the plugin execute from, and no others. A
/// directory the sandbox hides would make every command search a reach for a hidden path (the
/// shell stats `/usr/local/bin/git` before `/usr/bin/git`).
fn plugin_path(policy: &Policy) -> String {
    let granted = |dir: &str| {
        policy.filesystem.exec.iter().any(|p| {
            matches!(p, stockade_policy::PolicyPath::Absolute(g) if Path::new(dir).starts_with(g))
        })
    };
    let dirs: Vec<&str> = ["/usr/local/bin", "/usr/bin", "/bin"]
        .into_iter()
        .filter(|d| granted(d))
        .collect();
    if dirs.is_empty() {
        "/usr/bin:/bin".into()
    } else {
        dirs.join(":")
    }
}

/// Whether the policy grants the sandbox's private /tmp (`$TMP`) for writing.
pub fn policy_grants_tmp(policy: &Policy) -> bool {
    policy.filesystem.write.iter().any(|p| {
        matches!(
            p,
            stockade_policy::PolicyPath::Var(stockade_policy::PathVar::Tmp, _)
        )
    })
}

/// The plugin's base environment: PATH, HOME, LANG and PYTHONDONTWRITEBYTECODE, then `extra`
/// (which replaces a base variable of the same name). Nothing of the supervisor's own
/// environment (tokens, proxies, sockets) leaks in unless the caller puts it in `extra`.
/// PYTHONDONTWRITEBYTECODE=1: a plugin's own files are read-only, and Python would otherwise try
/// to write the bytecode cache of each module it imports beside it (`__pycache__`), a violation
/// that kills an untrusted plugin at its first import of a module of its own.
pub fn plugin_env(policy: &Policy, extra: &[(String, String)]) -> Vec<(String, String)> {
    let home = if policy_grants_tmp(policy) {
        "/tmp"
    } else {
        "/"
    };
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), plugin_path(policy)),
        ("HOME".into(), home.into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
    ];
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Hands the state directory to the plugin's uid (`id_base` + the sandbox uid), so the plugin
/// may write there and no other plugin's uid may.
pub fn own_state_dir(dir: &Path, id_base: u32) -> Result<(), PlanError> {
    let uid = id_base + stockade_policy::SANDBOX_UID;
    let gid = id_base + stockade_policy::SANDBOX_GID;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| {
        PlanError::host(
            format!("cannot hand {} to the plugin's uid: {e}", dir.display()),
            None,
        )
    })
}

/// Lets the sandbox read a package's sealed copy, and nobody else: its top becomes owned by the
/// sandbox's root (`id_base`: the shim, which opens it for Landlock before it drops to the
/// plugin's ids) and the plugin's group, mode 0750. The plugin reads it through the group and
/// cannot change it (it owns nothing there); everything below stays root's and read-only.
pub fn open_sealed_copy(dir: &Path, id_base: u32) -> Result<(), PlanError> {
    let gid = id_base + stockade_policy::SANDBOX_GID;
    stockade_trust::snapshot::open_to(dir, id_base, gid).map_err(|e| {
        PlanError::host(
            format!(
                "cannot open the sealed copy {} to the plugin: {e}",
                dir.display()
            ),
            None,
        )
    })
}

/// A policy compile error as cause and hint (most carry their own hint line).
pub fn compile_error(e: &stockade_policy::CompileError) -> PlanError {
    let message = e.to_string();
    match message.split_once("\n  hint: ") {
        Some((cause, hint)) => PlanError::input(cause, hint),
        None => PlanError::input(message, "see docs/policy.md"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_dirs_that_grant_more_than_the_plugin_are_refused() {
        for dir in [
            "/",
            "/tmp",
            "/proc",
            "/proc/1",
            "/sys/kernel",
            "/dev",
            "/dev/shm",
            "/etc",
            "/usr",
            "/home",
            "/root",
            "/var",
            "/run",
            "/boot",
        ] {
            assert!(
                plugin_dir_refusal(Path::new(dir)).is_some(),
                "{dir} was accepted"
            );
        }
        // Subdirectories of system trees, and of /tmp (bound over the private /tmp), are fine.
        for dir in [
            "/usr/bin",
            "/tmp/plugins/p",
            "/opt/plugins/p",
            "/etc/stockade",
        ] {
            assert_eq!(plugin_dir_refusal(Path::new(dir)), None, "{dir}");
        }
        assert!(plugin_dir_refusal(Path::new("/"))
            .unwrap()
            .contains("whole host tree"));
    }

    #[test]
    fn a_world_writable_plugin_dir_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("stockade-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(plugin_dir_refusal(&dir), None);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let why = plugin_dir_refusal(&dir);
        std::fs::remove_dir(&dir).unwrap();
        assert!(why.unwrap().contains("mode 1777"));
    }

    #[test]
    fn extra_variables_replace_base_ones() {
        let policy = stockade_policy::parse_policy("", "p.toml").expect("empty policy");
        let env = plugin_env(
            &policy,
            &[
                ("HOME".into(), "/state".into()),
                ("STOCKADE_RPC_FD".into(), "5".into()),
            ],
        );
        let homes: Vec<_> = env.iter().filter(|(k, _)| k == "HOME").collect();
        assert_eq!(homes, [&("HOME".to_string(), "/state".to_string())]);
        assert!(env.iter().any(|(k, v)| k == "STOCKADE_RPC_FD" && v == "5"));
        assert!(env.iter().any(|(k, _)| k == "PATH"));
    }
}
