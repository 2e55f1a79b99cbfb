//! The policy as a security engineer wrote it, after parsing and validation but before any path is
//! resolved. `compile` turns it into a [`crate::LaunchSpec`] for one launch.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

/// A whole policy file, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Free text shown by `policy explain`.
    pub description: Option<String>,
    pub filesystem: Filesystem,
    pub network: Network,
    pub ipc: Ipc,
    pub syscalls: Syscalls,
    pub resources: Resources,
    pub enforcement: Enforcement,
    pub monitor: MonitorPolicy,
}

/// `[filesystem]`: what exists inside the sandbox and with which rights. A path that is in no list
/// does not exist in the sandbox's root at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filesystem {
    /// Read-only, not executable.
    pub read: Vec<PolicyPath>,
    /// Read-write, never executable (W^X: a path may not be both writable and executable; the one
    /// exception is the private /tmp under `tmp_exec`).
    pub write: Vec<PolicyPath>,
    /// Read-only and executable (binaries and the shared libraries they map).
    pub exec: Vec<PolicyPath>,
    /// Host paths the sandbox does not have and that ordinary programs look for (optional
    /// configuration, local installs, kernel tunables): finding them missing is not a violation.
    /// Grants nothing; always absolute.
    pub absent: Vec<PolicyPath>,
    /// `tmp_exec = true`: the private /tmp (`$TMP`) may also hold what the plugin executes — the
    /// one exception to W^X, for build tools that run what they compile (cargo's build scripts,
    /// proc macros). The tmpfs is the sandbox's own and disappears with it.
    pub tmp_exec: bool,
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
    /// Addresses inside `address` that this rule does not cover, as written: whatever their
    /// prefix lengths, the exclusion wins over the rule's own address. Another rule that covers
    /// such an address still allows it (a grant by name).
    pub except: Vec<Exclusion>,
}

impl NetworkRule {
    /// The networks the kernel must refuse for this rule: every exclusion of the rule's address
    /// family that lies inside the rule's address, named sets expanded, each once. IPv4 destinations
    /// written as v4-mapped IPv6 addresses are judged by the IPv4 rules, so an IPv4 rule's
    /// exclusions cover them too.
    pub fn excluded_networks(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = Vec::new();
        for exclusion in &self.except {
            for net in exclusion.networks() {
                if self.address.contains(net) && !out.contains(net) {
                    out.push(*net);
                }
            }
        }
        out
    }
}

/// One entry of a rule's `except` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// An address or CIDR network.
    Net(IpNet),
    /// A named set of networks.
    Set(AddressSet),
}

impl Exclusion {
    pub fn networks(&self) -> &[IpNet] {
        match self {
            Exclusion::Net(net) => std::slice::from_ref(net),
            Exclusion::Set(set) => set.networks(),
        }
    }
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exclusion::Net(net) => write!(f, "{net}"),
            Exclusion::Set(set) => f.write_str(set.name()),
        }
    }
}

/// The named sets an `except` list may use: the destinations that are not "the internet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressSet {
    /// The host itself: 127.0.0.0/8, ::1.
    Loopback,
    /// This link only, where cloud metadata services live (169.254.169.254): 169.254.0.0/16,
    /// fe80::/10.
    LinkLocal,
    /// Private networks (RFC 1918), shared address space (RFC 6598, carrier-grade NAT) and IPv6
    /// unique local addresses: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10,
    /// fc00::/7.
    Private,
    /// "This host" (a connect to 0.0.0.0 reaches the local host): 0.0.0.0/8, ::/128.
    Unspecified,
    /// Multicast groups: 224.0.0.0/4, ff00::/8.
    Multicast,
    /// The IPv4 limited broadcast address 255.255.255.255 (IPv6 has no broadcast).
    Broadcast,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpNet {
    IpNet {
        addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        prefix,
    }
}

const fn v6(first: u16, last: u16, prefix: u8) -> IpNet {
    IpNet {
        addr: IpAddr::V6(Ipv6Addr::new(first, 0, 0, 0, 0, 0, 0, last)),
        prefix,
    }
}

const LOOPBACK: &[IpNet] = &[v4(127, 0, 0, 0, 8), v6(0, 1, 128)];
const LINK_LOCAL: &[IpNet] = &[v4(169, 254, 0, 0, 16), v6(0xfe80, 0, 10)];
const PRIVATE: &[IpNet] = &[
    v4(10, 0, 0, 0, 8),
    v4(172, 16, 0, 0, 12),
    v4(192, 168, 0, 0, 16),
    v4(100, 64, 0, 0, 10),
    v6(0xfc00, 0, 7),
];
const UNSPECIFIED: &[IpNet] = &[v4(0, 0, 0, 0, 8), v6(0, 0, 128)];
const MULTICAST: &[IpNet] = &[v4(224, 0, 0, 0, 4), v6(0xff00, 0, 8)];
const BROADCAST: &[IpNet] = &[v4(255, 255, 255, 255, 32)];

impl AddressSet {
    pub const ALL: [AddressSet; 6] = [
        AddressSet::Loopback,
        AddressSet::LinkLocal,
        AddressSet::Private,
        AddressSet::Unspecified,
        AddressSet::Multicast,
        AddressSet::Broadcast,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AddressSet::Loopback => "loopback",
            AddressSet::LinkLocal => "link-local",
            AddressSet::Private => "private",
            AddressSet::Unspecified => "unspecified",
            AddressSet::Multicast => "multicast",
            AddressSet::Broadcast => "broadcast",
        }
    }

    pub fn networks(self) -> &'static [IpNet] {
        match self {
            AddressSet::Loopback => LOOPBACK,
            AddressSet::LinkLocal => LINK_LOCAL,
            AddressSet::Private => PRIVATE,
            AddressSet::Unspecified => UNSPECIFIED,
            AddressSet::Multicast => MULTICAST,
            AddressSet::Broadcast => BROADCAST,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// An address with a prefix length: `10.0.0.0/8`, `::1/128`, or a bare address (a full-length prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    /// Whether the rule matches any address of its family.
    pub fn is_any(&self) -> bool {
        self.prefix == 0
    }

    /// Whether every address of `other` is in `self` (never across families).
    pub fn contains(&self, other: &IpNet) -> bool {
        if other.prefix < self.prefix {
            return false;
        }
        match (self.addr, other.addr) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
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

/// `[ipc]`: the unix sockets outside its own that the plugin may reach. Sockets below the
/// sandbox's writable trees are always allowed: only the sandbox can bind there (or, in a host
/// directory it may write, the plugin could unlink any socket and bind its own in its place).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ipc {
    /// Pathname sockets the plugin may `connect` and `sendto`, by the path it must use.
    pub connect: Vec<PolicyPath>,
    /// Whether it may bind abstract socket names. Only the host network namespace shares them
    /// with the host's services; in a sandbox's own namespace they are private anyway.
    pub bind_abstract: bool,
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

/// `[monitor]`: what the eBPF monitors watch for this plugin, and so what the rest of the host
/// pays for it.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorPolicy {
    /// The host-wide syscall tracepoint (`sys_exit`): per-call counts and the denials of seccomp's
    /// errno actions, Landlock, the mount table and the hidden paths, seen as they return. While a
    /// sandbox with it runs, every syscall on the host passes the program. Without it those
    /// denials are still enforced but not counted as violations; seccomp's kills, the network
    /// programs' and the LSM programs' denials still are.
    pub syscall_tracepoint: bool,
}

impl Default for MonitorPolicy {
    fn default() -> Self {
        MonitorPolicy {
            syscall_tracepoint: true,
        }
    }
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
