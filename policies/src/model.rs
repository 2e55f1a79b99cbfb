//! The policy as a security engineer wrote it, after parsing and validation but before any path is
//! resolved. `compile` turns it into a [`crate::LaunchSpec`] for one launch.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole policy file, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Free text shown by `policy explain`.
    pub description: Option<String>,
    pub filesystem: Filesystem,
    pub network: Network,
    pub syscalls: Syscalls,
    pub resources: Resources,
    pub enforcement: Enforcement,
}

/// `[filesystem]`: what exists inside the sandbox and with which rights. A path that is in no list
/// does not exist in the sandbox's root at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filesystem {
    /// Read-only, not executable.
    pub read: Vec<PolicyPath>,
    /// Read-write, never executable (W^X: a path may not be both writable and executable).
    pub write: Vec<PolicyPath>,
    /// Read-only and executable (binaries and the shared libraries they map).
    pub exec: Vec<PolicyPath>,
    /// Host paths the sandbox does not have and that ordinary programs look for (optional
    /// configuration, local installs, kernel tunables): finding them missing is not a violation.
    /// Grants nothing; always absolute.
    pub absent: Vec<PolicyPath>,
}

/// A path as written in a policy: absolute, or below one of the launch variables.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyPath {
    Absolute(PathBuf),
    /// `$VAR` or `$VAR/rest`; `rest` is relative and may be empty.
    Var(PathVar, PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathVar {
    /// `$PLUGIN_DIR`: the directory holding the plugin's files (read-only unless granted otherwise).
    PluginDir,
    /// `$STATE_DIR`: the plugin's persistent, writable state directory on the host.
    StateDir,
    /// `$TMP`: the sandbox's private, size-limited tmpfs, mounted at /tmp.
    Tmp,
}

impl PathVar {
    pub const ALL: [PathVar; 3] = [PathVar::PluginDir, PathVar::StateDir, PathVar::Tmp];

    pub fn name(self) -> &'static str {
        match self {
            PathVar::PluginDir => "$PLUGIN_DIR",
            PathVar::StateDir => "$STATE_DIR",
            PathVar::Tmp => "$TMP",
        }
    }
}

impl std::fmt::Display for PolicyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyPath::Absolute(p) => write!(f, "{}", p.display()),
            PolicyPath::Var(v, rest) if rest.as_os_str().is_empty() => write!(f, "{}", v.name()),
            PolicyPath::Var(v, rest) => write!(f, "{}/{}", v.name(), rest.display()),
        }
    }
}

/// `[network]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Network {
    pub mode: NetworkMode,
    pub connect: Vec<NetworkRule>,
    pub bind: Vec<NetworkRule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// An empty network namespace: only a `lo` that is down.
    #[default]
    None,
    /// The host's network, restricted to the `connect` and `bind` rules.
    Allow,
}

/// One allowed destination (connect) or local address (bind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRule {
    pub protocol: Protocol,
    pub address: IpNet,
    pub ports: PortRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// An address with a prefix length: `10.0.0.0/8`, `::1/128`, or a bare address (a full-length prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// Whether the rule matches any address of its family.
    pub fn is_any(&self) -> bool {
        self.prefix == 0
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// `[syscalls]`: a base allow list plus additions and removals by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Syscalls {
    pub profile: SyscallProfile,
    /// Added to the profile's allow list.
    pub allow: Vec<String>,
    /// Removed from the profile's allow list.
    pub deny: Vec<String>,
    pub deny_action: DenyAction,
}

impl Default for Syscalls {
    fn default() -> Self {
        Syscalls {
            profile: SyscallProfile::Default,
            allow: Vec::new(),
            deny: Vec::new(),
            deny_action: DenyAction::Eperm,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyscallProfile {
    /// What ordinary programs need, without the dangerous families (see `docs/policy.md`).
    #[default]
    Default,
    /// Default minus process creation and networking: for pure compute plugins.
    Strict,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DenyAction {
    /// The call fails with EPERM and the process goes on.
    #[default]
    Eperm,
    /// The whole process is killed with SIGSYS.
    Kill,
}

/// `[resources]`. `None` means the built-in default of `docs/policy.md`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// Bytes of memory (cgroup memory.max).
    pub memory: Option<u64>,
    /// Processes and threads (cgroup pids.max).
    pub pids: Option<u64>,
    /// Share of one core: 0.5 is half a core, 2.0 two cores (cgroup cpu.max).
    pub cpu: Option<f64>,
    /// Open files per process (RLIMIT_NOFILE).
    pub nofile: Option<u64>,
    /// Largest file a process may write, in bytes (RLIMIT_FSIZE).
    pub fsize: Option<u64>,
    /// Size of the private /tmp in bytes.
    pub tmp_size: Option<u64>,
    /// Wall-clock limit for the whole sandbox.
    pub timeout: Option<Duration>,
}

/// `[enforcement]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Enforcement {
    pub mode: EnforcementMode,
    /// Violations within `window` that trigger `action`.
    pub threshold: u32,
    pub window: Duration,
    pub action: ThresholdAction,
}

impl Default for Enforcement {
    fn default() -> Self {
        Enforcement {
            mode: EnforcementMode::Enforce,
            threshold: 1,
            window: Duration::from_secs(60),
            action: ThresholdAction::Kill,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EnforcementMode {
    /// Violations are recorded and reported; the plugin goes on. A missing layer degrades loudly.
    Monitor,
    /// Violations are denied and counted; the plugin is killed past the threshold. The sandbox
    /// never starts with a required layer missing.
    #[default]
    Enforce,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ThresholdAction {
    /// Kill every process of the sandbox and report it as auto-unloaded.
    #[default]
    Kill,
    /// Report only.
    Report,
}
