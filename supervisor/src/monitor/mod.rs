//! The eBPF monitors: loading Stockade's programs (ebpf/), arming them for a sandbox before its
//! first instruction, reading the event ring buffer, and disarming them when it ends.
//!
//! The programs are loaded once per host and shared by every supervisor ([`host`]: pinned in
//! bpffs, joined by later supervisors); everything in the maps is keyed by the sandbox's cgroup
//! id, and each sandbox has a slot (counters, ring buffer) of its own. One [`Monitor`] is one
//! supervisor's handle on that set and serves all of its sandboxes. The cgroup network programs
//! are attached to each host-network sandbox's own cgroup; the tracepoints and LSM hooks are
//! attached once per host and return at once for tasks of any other cgroup.
//!
//! Which layer refused a syscall is decided here in userspace ([`attribute`]): the kernel side
//! only reports what failed and with which arguments.

pub mod attribute;
pub mod event;
pub mod host;
pub mod hostpath;
pub mod report;
pub mod rules;
pub mod sandboxpath;
pub mod unix;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, ArrayOfMaps, HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{
    cgroup_skb::CgroupSkbLinkId, cgroup_sock_addr::CgroupSockAddrLinkId, links::FdLink,
    sock_ops::SockOpsLinkId, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr,
    CgroupSockAddrAttachType, Lsm, ProgramError, RawTracePoint, SockOps,
};
use aya::Ebpf;
use serde::Serialize;
use stockade_ebpf_common as k;

pub use event::RawEvent;

/// The object aya-build produced from ebpf/ (see supervisor/build.rs).
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stockade-ebpf"));

/// What the network monitor attaches to each sandbox's cgroup (doctor prints it).
const NETWORK_PROGRAMS: &str =
    "cgroup connect4/6, sendmsg4/6, bind4/6; inbound guard for listeners and UDP (cgroup_skb, sock_ops); outbound: no routing headers or IPv4 options (cgroup_skb)";

const NET_HOOKS: [&str; 6] = [
    "connect4", "connect6", "sendmsg4", "sendmsg6", "bind4", "bind6",
];

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("loading the eBPF object: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("eBPF program `{program}` did not {step}: {source}")]
    Program {
        program: &'static str,
        step: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map `{0}` is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("mounting {fs} at {path}: {source}")]
    Mount {
        fs: &'static str,
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} sandboxes are monitored already on this host (the most the shared monitors take)"
    )]
    Full(u32),
    #[error("the host's monitors: cannot {what} {}: {source}", path.display())]
    Host {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the host's monitors: pinning {what}: {detail}")]
    Pin { what: String, detail: String },
    #[error("the host's monitors at {} are incomplete and in use; `stockade monitors down` removes them once their users end", .0.display())]
    Busy(std::path::PathBuf),
    #[error("more than {max} {direction} rules ({count}); the eBPF programs take at most {max}")]
    TooManyRules {
        direction: &'static str,
        count: usize,
        max: usize,
    },
    #[error("attaching the network programs to the sandbox's cgroup: {0}")]
    Attach(#[source] ProgramError),
    #[error("{0} needs the syscall tracepoint, which the sandbox does not want")]
    NeedsTracepoint(&'static str),
    #[error("the syscall tracepoint's link ({}) is gone while other sandboxes hold it; `stockade monitors down` once they end", .0.display())]
    TracepointLost(std::path::PathBuf),
    #[error("attaching the unix socket programs to the sandbox's cgroup: {0}")]
    AttachUnix(#[source] std::io::Error),
    #[error("granting {} to the LSM programs: {source}", path.display())]
    Grant {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether one monitor is active on this kernel, and why not.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorStatus {
    pub name: &'static str,
    pub active: bool,
    pub detail: String,
}

/// What the monitors offer on this kernel, found while loading.
#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    /// cgroup sock_addr allow lists (connect, sendmsg, bind).
    pub network: MonitorStatus,
    /// The network programs may kill the offender themselves (bpf_send_signal).
    pub kill_in_kernel: MonitorStatus,
    /// sys_exit: syscall counts and the denials of every layer.
    pub syscalls: MonitorStatus,
    /// sched fork/exec/exit: the process tree.
    pub processes: MonitorStatus,
    /// BPF LSM file_open and bprm_check_security.
    pub lsm: MonitorStatus,
    /// cgroup connect_unix and sendmsg_unix: `[ipc]` judged in the kernel, by name.
    pub unix: MonitorStatus,
}

impl Capabilities {
    pub fn all(&self) -> [&MonitorStatus; 6] {
        [
            &self.network,
            &self.kill_in_kernel,
            &self.syscalls,
            &self.processes,
            &self.lsm,
            &self.unix,
        ]
    }
}

/// What the LSM programs allow one sandbox (host files only; what the sandbox mounts itself is
/// Landlock's alone).
#[derive(Debug, Clone)]
pub struct LsmSpec {
    /// Host paths and `GRANT_*` bits: everything below each path (on its filesystem) gets them.
    pub grants: Vec<(std::path::PathBuf, u32)>,
    /// Enforcement starts when the sandbox has executed this many programs (1: the plugin is the
    /// first; 2: a shim binary is executed before it).
    pub after_execs: u32,
}

/// What one sandbox asks of the monitors.
#[derive(Debug, Clone)]
pub struct ArmSpec {
    /// The LSM wall, where the kernel loads LSM programs.
    pub lsm: Option<LsmSpec>,
    /// `None` for an isolated network namespace (nothing to filter).
    pub network: Option<rules::NetPolicy>,
    /// Let the network programs kill the offender once `threshold` violations fell within
    /// `window` (enforce mode with action kill).
    pub kill: Option<(u32, std::time::Duration)>,
    /// Report every successful open too, not only the failures (`--events`).
    pub trace_files: bool,
    /// The granted directories inside the sandbox, and whether misses there are judged by the
    /// supervisor (writable trees, where the plugin makes links; `/proc`) rather than in the
    /// kernel ([`rules::miss_trees`]): the kernel counts an ENOENT below any other and sends
    /// nothing.
    pub miss_trees: Vec<(String, bool)>,
    /// `[ipc]`: the unix sockets the sandbox may reach by name, for the unix socket programs.
    pub ipc: stockade_policy::IpcSpec,
    /// `[monitor] syscall_tracepoint`: `sys_exit` counts and reports this sandbox's calls. When
    /// false it returns at once for the sandbox, as it does for host processes (and it is not
    /// attached at all unless another sandbox wants it).
    pub syscall_tracepoint: bool,
}

/// A sandbox the monitors watch; give it back to [`Monitor::disarm`].
pub struct Armed {
    pub cgroup_id: u64,
    pub slot: u32,
    links: Vec<(usize, CgroupSockAddrLinkId)>,
    inbound: Option<CgroupSkbLinkId>,
    outbound: Option<CgroupSkbLinkId>,
    listen: Option<SockOpsLinkId>,
    lsm_keys: Vec<k::LsmGrantKey>,
    listed_keys: Vec<k::UnixListedKey>,
    miss_keys: Vec<k::MissKey>,
    /// The unix socket programs' links to the cgroup (closed on disarm) and `UNIX_PATHS` keys.
    unix_links: Option<unix::UnixLinks>,
    unix_keys: Vec<k::MissKey>,
    /// The slot's ring buffer: only this supervisor reads it while it owns the slot.
    ring: RingBuf<MapData>,
    /// Held while the sandbox runs if it wants the syscall tracepoint.
    tracepoint: Option<host::TracepointHold>,
    /// Ownership of the slot (its lock file names this sandbox).
    lock: host::SlotLock,
    /// Records of another cgroup found in the ring (left by the slot's previous sandbox).
    pub foreign_events: u64,
}

impl std::fmt::Debug for Armed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Armed")
            .field("cgroup_id", &self.cgroup_id)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl Armed {
    /// Whether the syscall tracepoint watches this sandbox (it wanted it, and it loads here).
    pub fn traced(&self) -> bool {
        self.tracepoint.is_some()
    }

    /// Whether the unix socket programs are attached to this sandbox's cgroup.
    pub fn unix_hooked(&self) -> bool {
        self.unix_links.is_some()
    }

    /// Becomes readable when events wait in the sandbox's ring buffer.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }

    pub fn raw_fd(&self) -> i32 {
        self.ring.as_raw_fd()
    }

    /// Hands every waiting event to `f`; returns how many there were.
    pub fn drain(&mut self, mut f: impl FnMut(RawEvent)) -> usize {
        self.drain_some(usize::MAX, |e| {
            f(e);
            std::ops::ControlFlow::Continue(())
        })
    }

    /// Reads at most `limit` events, and stops early when `f` says so. A supervise loop reads in
    /// bounded batches so that a flooding plugin cannot keep it from its timeout, its stop
    /// signal or a kill.
    pub fn drain_some(
        &mut self,
        limit: usize,
        mut f: impl FnMut(RawEvent) -> std::ops::ControlFlow<()>,
    ) -> usize {
        let mut n = 0;
        while n < limit {
            let Some(item) = self.ring.next() else {
                break;
            };
            n += 1;
            let event = RawEvent::decode(&item);
            drop(item);
            let Some(event) = event else { continue };
            if event.header().cgroup_id != self.cgroup_id {
                self.foreign_events += 1;
                continue;
            }
            if f(event).is_break() {
                break;
            }
        }
        n
    }
}

/// The monitors as one supervisor uses them: handles on the host's shared set
/// ([`host`]), which it joined or loaded.
pub struct Monitor {
    caps: Capabilities,
    /// What the set's loader found (which programs are pinned).
    info: host::SetInfo,
    /// The network programs, opened from their pins by the first sandbox on the host network
    /// (aya probes the kernel's features, about 0.5 ms, when it first opens a program).
    net: Option<NetPrograms>,
    /// The unix socket programs, where they load, and their allow list.
    unix_hooks: Option<unix::UnixHooks>,
    unix_paths: LpmTrie<MapData, [u8; k::MISS_KEY_DATA], u8>,
    sandboxes: HashMap<MapData, u64, k::SandboxConfig>,
    net_rules: HashMap<MapData, u64, k::NetRules>,
    lsm_grants: HashMap<MapData, k::LsmGrantKey, u32>,
    unix_listed: HashMap<MapData, k::UnixListedKey, u8>,
    /// The LSM unix programs judge the sockets this supervisor's sandboxes reach.
    unix_reached: bool,
    miss_trees: LpmTrie<MapData, [u8; k::MISS_KEY_DATA], u8>,
    index: Array<MapData, k::IndexEntry>,
    counters: PerCpuArray<MapData, [u64; k::COUNTERS as usize]>,
    syscalls: PerCpuArray<MapData, [u64; k::SYSCALL_NR_MAX as usize]>,
    /// The programs' `EVENTS`, an array of maps: slot -> that slot's ring buffer.
    events_by_slot: ArrayOfMaps<MapData, RingBuf<MapData>>,
    /// Slots this supervisor owns (it does not try their locks again).
    held: Vec<bool>,
    /// Whether this supervisor loaded the set (rather than joining one).
    pub loaded: bool,
    dirs: host::SetDirs,
    /// The global hooks' links, held open.
    _links: Vec<std::os::fd::OwnedFd>,
    /// Last: leaving the set (and removing it, for its last user) after every handle above.
    set: Option<Joined>,
}

/// The programs attached to each host-network sandbox's cgroup.
struct NetPrograms {
    /// In `NET_HOOKS` order (`*_kill` or plain).
    hooks: Vec<CgroupSockAddr>,
    inbound: CgroupSkb,
    /// `outbound`, or `outbound_anon` where cgroup_skb programs may not ask for the current task
    /// (6.1).
    outbound: CgroupSkb,
    /// The sock_ops report of listeners (not on 6.1).
    listen: Option<SockOps>,
}

impl NetPrograms {
    fn open(dirs: &host::SetDirs, info: &host::SetInfo) -> Result<NetPrograms, MonitorError> {
        let opened = |name: &str| {
            let name = name.to_string();
            move |source| MonitorError::Program {
                program: "pinned",
                step: "open",
                source: match source {
                    ProgramError::IOError(e) => {
                        ProgramError::IOError(std::io::Error::new(e.kind(), format!("{name}: {e}")))
                    }
                    other => other,
                },
            }
        };
        let mut hooks = Vec::new();
        for (name, hook) in info.net_programs.iter().zip(NET_HOOKS) {
            let path = dirs.pin(&format!("prog-{name}"));
            hooks.push(
                CgroupSockAddr::from_pin(&path, net_attach_type(hook)).map_err(opened(name))?,
            );
        }
        let inbound = CgroupSkb::from_pin(dirs.pin("prog-inbound"), CgroupSkbAttachType::Ingress)
            .map_err(opened("inbound"))?;
        let outbound = CgroupSkb::from_pin(
            dirs.pin(&format!("prog-{}", info.outbound)),
            CgroupSkbAttachType::Egress,
        )
        .map_err(opened(&info.outbound))?;
        let listen = if info.listen {
            Some(SockOps::from_pin(dirs.pin("prog-listen")).map_err(opened("listen"))?)
        } else {
            None
        };
        Ok(NetPrograms {
            hooks,
            inbound,
            outbound,
            listen,
        })
    }
}

/// This supervisor's share of the host's set: the users lock, held shared. Dropping it removes
/// the set when nobody else uses it and it is not persistent.
struct Joined {
    dirs: host::SetDirs,
    users: File,
}

impl Drop for Joined {
    fn drop(&mut self) {
        let Ok(_setup) = host::SetupLock::take() else {
            return;
        };
        // The tracepoint first (its wanters' holds went with their sandboxes): the host stops
        // paying for it as soon as no sandbox wants it, persistent set or not.
        self.dirs.settle_tracepoint();
        if self.dirs.persistent() {
            return;
        }
        if self.dirs.unused(&self.users) {
            tracing::debug!(set = %self.dirs.id, "the last user of the monitors: removed");
            self.dirs.remove();
        }
    }
}

/// The maps every supervisor of the set writes or reads (pinned).
const SHARED_MAPS: [&str; 11] = [
    "SANDBOXES",
    "NET_RULES",
    "LSM_GRANTS",
    "UNIX_LISTED",
    "MISS_TREES",
    "UNIX_PATHS",
    "SANDBOX_INDEX",
    "COUNTER",
    "SYSCALLS",
    "EVENTS",
    // Held pinned: the kernel empties a program array when its last user reference goes.
    "REPORT",
];

/// The programs of one load, before they are pinned (or, for doctor, dropped).
struct Loaded {
    ebpf: Ebpf,
    caps: Capabilities,
    net_programs: Vec<String>,
    outbound: &'static str,
    listen: bool,
    unix_hooks: Option<unix::UnixHooks>,
}

/// Loads every program this kernel accepts and attaches the global hooks, then lets them go:
/// what `stockade doctor` reports (a private load, beside any shared set).
pub fn probe() -> Result<Capabilities, MonitorError> {
    let mut loaded = Loaded::load()?;
    loaded.attach(true)?;
    Ok(loaded.caps)
}

impl Loaded {
    /// Loads every program this kernel accepts. Mounts tracefs when it is missing.
    fn load() -> Result<Loaded, MonitorError> {
        let t0 = std::time::Instant::now();
        let step = |what: &str| {
            tracing::debug!(us = t0.elapsed().as_micros() as u64, "monitor load: {what}")
        };
        ensure_mounted("tracefs", "/sys/kernel/tracing")?;
        ensure_mounted("bpf", "/sys/fs/bpf")?;
        step("mounts");
        // No kernel BTF for aya: Rust eBPF has no CO-RE relocations for it to apply, and
        // `Ebpf::load` would parse all of /sys/kernel/btf/vmlinux (about 30 ms) to find none.
        let mut ebpf = aya::EbpfLoader::new()
            .btf(None)
            .load(PROGRAMS)
            .map_err(MonitorError::Object)?;
        step("object");

        // Network: the `*_kill` variants when the kernel lets them call bpf_send_signal.
        let mut net_programs = Vec::new();
        let mut outbound = "outbound";
        let mut listen = None;
        let (network, kill_in_kernel) =
            if let Err(e) = load_inbound(&mut ebpf).map(|(o, l)| (outbound, listen) = (o, l)) {
                // Without it a listening socket would be open to anyone: no network monitor at all.
                (
                    inactive("network", e),
                    inactive("kill in kernel", "no network programs".into()),
                )
            } else {
                match load_net(&mut ebpf, "_kill") {
                    Ok(names) => {
                        net_programs = names;
                        (
                            active("network", &network_detail(listen.as_deref())),
                            active(
                                "kill in kernel",
                                "bpf_send_signal from the network programs",
                            ),
                        )
                    }
                    Err(kill_error) => match load_net(&mut ebpf, "") {
                        Ok(names) => {
                            net_programs = names;
                            (
                                active("network", &network_detail(listen.as_deref())),
                                inactive(
                                    "kill in kernel",
                                    format!("{kill_error}; cgroup.kill from the supervisor only"),
                                ),
                            )
                        }
                        Err(e) => (
                            inactive("network", e),
                            inactive("kill in kernel", "no network programs".into()),
                        ),
                    },
                }
            };

        step("network programs");
        // seccomp's SIGSYS belongs to the same monitor: the calls it kills never reach sys_exit.
        let syscalls = match load_raw_tp(&mut ebpf, "sys_exit")
            .and_then(|()| load_raw_tp(&mut ebpf, "sys_exit_report"))
            .and_then(|()| link_report(&mut ebpf))
            .and_then(|()| load_raw_tp(&mut ebpf, "signal_generate"))
        {
            Ok(()) => active(
                "syscalls",
                "raw_tracepoint/sys_exit: counts and denials; signal_generate: seccomp's kills",
            ),
            Err(e) => inactive("syscalls", e.to_string()),
        };
        step("sys_exit");
        // The kernel's BTF, read once: struct offsets for the sched and LSM programs (Rust eBPF
        // has no CO-RE relocations).
        let raw_btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap_or_default();
        let btf_index = crate::bpf_probe::BtfIndex::new(&raw_btf);
        let sched_offsets = btf_index
            .as_ref()
            .ok_or_else(|| "no kernel BTF (/sys/kernel/btf/vmlinux)".to_string())
            .and_then(sched_offsets);
        let processes = match sched_offsets.clone().and_then(|_| load_sched(&mut ebpf)) {
            Ok(()) => active("processes", "sched fork/exec/exit raw tracepoints"),
            Err(e) => inactive("processes", e.to_string()),
        };
        let lsm_table = btf_index
            .as_ref()
            .ok_or_else(|| "no kernel BTF (/sys/kernel/btf/vmlinux)".to_string())
            .and_then(lsm_offsets);
        let lsm = match lsm_table
            .clone()
            .and_then(|_| load_lsm(&mut ebpf, &raw_btf))
        {
            Ok(()) => active(
                "lsm",
                "BPF LSM file_open and bprm_check_security: a second filesystem wall; socket_listen: no listening on an unbound socket; unix_stream_connect and unix_may_send: [ipc] judged on the socket reached (no launch walk)",
            ),
            Err(e) => inactive("lsm", e),
        };
        step("programs loaded");
        let (unix, unix_hooks, unix_table) = match btf_index
            .as_ref()
            .ok_or_else(|| "no kernel BTF (/sys/kernel/btf/vmlinux)".to_string())
            .and_then(unix_offsets)
            .and_then(|table| unix::UnixHooks::load(PROGRAMS, &ebpf).map(|h| (h, table)))
        {
            Ok((hooks, table)) => (active("unix sockets", unix::DETAIL), Some(hooks), table),
            Err(e) => (
                inactive(
                    "unix sockets",
                    format!("{e}; [ipc] is checked at launch instead"),
                ),
                None,
                Vec::new(),
            ),
        };
        step("unix socket programs");
        fill_array(&mut ebpf, "PATH_ARGS", rules::path_args())?;
        if let (true, Ok(table)) = (processes.active, sched_offsets) {
            fill_array(&mut ebpf, "TP_OFFSETS", (0..).zip(table))?;
        }
        if let (true, Ok(table)) = (lsm.active, lsm_table) {
            fill_array(&mut ebpf, "LSM_OFFSETS", (0..).zip(table))?;
        }
        if unix.active {
            fill_array(&mut ebpf, "UNIX_OFFSETS", (0..).zip(unix_table))?;
        }
        step("tables");
        Ok(Loaded {
            ebpf,
            caps: Capabilities {
                network,
                kill_in_kernel,
                syscalls,
                processes,
                lsm,
                unix,
            },
            net_programs,
            outbound,
            listen: listen.is_none(),
            unix_hooks,
        })
    }

    /// Attaches the global hooks (tracepoints, LSM); the links are the caller's (dropping them
    /// detaches). The syscall tracepoint only with `sys_exit`: a set attaches it while a sandbox
    /// wants it ([`host::SetDirs::want_tracepoint`]).
    fn attach(&mut self, sys_exit: bool) -> Result<Vec<(&'static str, FdLink)>, MonitorError> {
        let failed = |program: &'static str| {
            move |source| MonitorError::Program {
                program,
                step: "attach",
                source,
            }
        };
        let mut links = Vec::new();
        if self.caps.syscalls.active {
            let names: &[&'static str] = if sys_exit {
                &["sys_exit", "signal_generate"]
            } else {
                &["signal_generate"]
            };
            for &name in names {
                let p: &mut RawTracePoint = program(&mut self.ebpf, name)?;
                let id = p.attach(name).map_err(failed(name))?;
                links.push((name, p.take_link(id).map_err(failed(name))?.into()));
            }
        }
        if self.caps.lsm.active {
            for name in LSM_HOOKS {
                let p: &mut Lsm = program(&mut self.ebpf, name)?;
                let id = p.attach().map_err(failed(name))?;
                links.push((name, p.take_link(id).map_err(failed(name))?.into()));
            }
        }
        if self.caps.processes.active {
            for name in SCHED {
                let p: &mut RawTracePoint = program(&mut self.ebpf, name)?;
                let id = p.attach(name).map_err(failed(name))?;
                links.push((name, p.take_link(id).map_err(failed(name))?.into()));
            }
        }
        Ok(links)
    }

    /// Attaches the global hooks and pins everything later supervisors need in `dirs.pins`.
    fn pin(mut self, dirs: &host::SetDirs) -> Result<host::SetInfo, MonitorError> {
        let pin_error = |what: String| {
            move |e: aya::pin::PinError| MonitorError::Pin {
                what,
                detail: e.to_string(),
            }
        };
        let mut links = Vec::new();
        for (name, link) in self.attach(false)? {
            link.pin(dirs.pin(&format!("link-{name}")))
                .map_err(pin_error(format!("the link of {name}")))?;
            links.push(name.to_string());
        }
        for name in SHARED_MAPS {
            let map = self.ebpf.map(name).ok_or(MonitorError::MissingMap(name))?;
            map.pin(dirs.pin(name))
                .map_err(pin_error(format!("the map {name}")))?;
        }
        let mut programs: Vec<&str> = self.net_programs.iter().map(String::as_str).collect();
        if self.caps.network.active {
            programs.extend(["inbound", self.outbound]);
            if self.listen {
                programs.push("listen");
            }
        }
        if self.caps.syscalls.active {
            programs.push("sys_exit");
        }
        for name in programs {
            let p = self
                .ebpf
                .program_mut(name)
                .ok_or(MonitorError::Attach(ProgramError::NotLoaded))?;
            p.pin(dirs.pin(&format!("prog-{name}")))
                .map_err(pin_error(format!("the program {name}")))?;
        }
        if let Some(hooks) = &self.unix_hooks {
            hooks.pin(&dirs.pins).map_err(|e| MonitorError::Pin {
                what: "the unix socket programs".into(),
                detail: e.to_string(),
            })?;
        }
        Ok(host::SetInfo {
            monitors: self
                .caps
                .all()
                .iter()
                .map(|s| (s.active, s.detail.clone()))
                .collect(),
            net_programs: self.net_programs.clone(),
            outbound: self.outbound.into(),
            listen: self.listen,
            unix: self.unix_hooks.is_some(),
            links,
            loaded_by: std::process::id(),
            loaded_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }
}

impl Monitor {
    /// Joins the host's set of monitors, loading and pinning it first when there is none (or
    /// only one of another build, which is retired when nobody uses it).
    pub fn open() -> Result<Monitor, MonitorError> {
        Monitor::open_for(false)
    }

    /// [`Monitor::open`] for a sandbox that needs the network programs (`network`): a set whose
    /// loader could not load them is loaded again when nobody uses it (a transient failure does
    /// not stick), and so is a set that cannot be opened (a pin removed by hand).
    pub fn open_for(network: bool) -> Result<Monitor, MonitorError> {
        let t0 = std::time::Instant::now();
        ensure_mounted("bpf", "/sys/fs/bpf")?;
        host::make_root()?;
        let setup = host::SetupLock::take()?;
        // Under the setup lock: the last user of the set removes its directories under it too.
        let dirs = host::SetDirs::this_build();
        host::make_dirs(&dirs)?;
        let users = dirs.users_lock()?;
        let mut loaded = false;
        let mut info = dirs.info();
        if let Some(i) = &info {
            let lacking = !i.monitors.get(2).is_some_and(|m| m.0)
                || (network && !i.monitors.first().is_some_and(|m| m.0));
            if lacking && dirs.unused(&users) {
                tracing::debug!(
                    "monitors: the set lacks a monitor this sandbox needs; loading again"
                );
                info = None;
            }
        }
        let mut attempt = 0;
        let monitor = loop {
            attempt += 1;
            let info = match info.take() {
                Some(info) => info,
                None => {
                    // Leftovers of a load that did not finish, or of a set being loaded again:
                    // nobody may be using them.
                    if !dirs.unused(&users) {
                        return Err(MonitorError::Busy(dirs.pins.clone()));
                    }
                    dirs.remove_pins();
                    host::make_dirs(&dirs)?;
                    let info = Loaded::load()?
                        .pin(&dirs)
                        .inspect_err(|_| dirs.remove_pins())?;
                    dirs.write_info(&info).inspect_err(|_| dirs.remove_pins())?;
                    loaded = true;
                    info
                }
            };
            match Monitor::from_pins(&dirs, &info) {
                Ok(m) => break m,
                // A set that does not open (a pin gone) is loaded again, once, if unused.
                Err(e) if attempt == 1 && !loaded && dirs.unused(&users) => {
                    tracing::warn!("the host's monitors do not open ({e}); loading them again");
                }
                Err(e) => {
                    if loaded {
                        dirs.remove();
                    }
                    return Err(e);
                }
            }
        };
        if host::retire_others(&dirs) {
            dirs.set_persistent(true)?;
        }
        host::flock(&users, libc::LOCK_SH).map_err(|source| MonitorError::Host {
            what: "lock",
            path: dirs.run.join("users.lock"),
            source,
        })?;
        // A tracepoint left by a supervisor killed while it wanted it.
        dirs.settle_tracepoint();
        let mut monitor = monitor;
        monitor.set = Some(Joined { dirs, users });
        drop(setup);
        monitor.loaded = loaded;
        tracing::debug!(
            us = t0.elapsed().as_micros() as u64,
            loaded,
            "monitors: the host's set {}",
            if loaded { "loaded" } else { "joined" }
        );
        Ok(monitor)
    }

    /// Opens what the set pinned. The global hooks' links are held too, so that a set unpinned
    /// while this supervisor runs keeps its hooks attached, and one whose links are gone is not
    /// joined (fail closed).
    fn from_pins(dirs: &host::SetDirs, info: &host::SetInfo) -> Result<Monitor, MonitorError> {
        let mut hooks = Vec::new();
        for name in &info.links {
            let path = dirs.pin(&format!("link-{name}"));
            hooks.push(host::obj_get(&path).map_err(|source| MonitorError::Host {
                what: "open the link",
                path,
                source,
            })?);
        }
        // The syscall tracepoint's program, attached when a sandbox wants it: a set that lost it
        // is not joined (and is loaded again when unused).
        if info.monitors.get(2).is_some_and(|m| m.0) {
            let path = dirs.pin("prog-sys_exit");
            host::obj_get(&path).map_err(|source| MonitorError::Host {
                what: "open the program",
                path,
                source,
            })?;
        }
        let status = |i: usize, name: &'static str| {
            let (on, detail) = info.monitors.get(i).cloned().unwrap_or_default();
            MonitorStatus {
                name,
                active: on,
                detail,
            }
        };
        let mut caps = Capabilities {
            network: status(0, "network"),
            kill_in_kernel: status(1, "kill in kernel"),
            syscalls: status(2, "syscalls"),
            processes: status(3, "processes"),
            lsm: status(4, "lsm"),
            unix: status(5, "unix sockets"),
        };
        let unix_off = std::env::var_os("STOCKADE_UNIX_HOOKS").is_some_and(|v| v == "off");
        let unix_hooks = if !info.unix {
            None
        } else if unix_off {
            caps.unix = inactive(
                "unix sockets",
                "not attached: STOCKADE_UNIX_HOOKS=off (the launch check stands in)".into(),
            );
            None
        } else {
            Some(
                unix::UnixHooks::from_pins(&dirs.pins).map_err(|e| MonitorError::Host {
                    what: "open the pinned unix socket programs",
                    path: dirs.pins.clone(),
                    source: e,
                })?,
            )
        };
        Ok(Monitor {
            index: pinned(dirs, "SANDBOX_INDEX", aya::maps::Map::Array)?,
            lsm_grants: pinned(dirs, "LSM_GRANTS", aya::maps::Map::HashMap)?,
            unix_listed: pinned(dirs, "UNIX_LISTED", aya::maps::Map::HashMap)?,
            // The LSM programs judge from the sandbox's first exec of the plugin on, which only
            // the sched exec tracepoint counts: without it they would never judge.
            unix_reached: caps.lsm.active && caps.processes.active && !unix_off,
            miss_trees: pinned(dirs, "MISS_TREES", aya::maps::Map::LpmTrie)?,
            unix_paths: pinned(dirs, "UNIX_PATHS", aya::maps::Map::LpmTrie)?,
            sandboxes: pinned(dirs, "SANDBOXES", aya::maps::Map::HashMap)?,
            net_rules: pinned(dirs, "NET_RULES", aya::maps::Map::HashMap)?,
            counters: pinned(dirs, "COUNTER", aya::maps::Map::PerCpuArray)?,
            syscalls: pinned(dirs, "SYSCALLS", aya::maps::Map::PerCpuArray)?,
            events_by_slot: pinned(dirs, "EVENTS", aya::maps::Map::ArrayOfMaps)?,
            unix_hooks,
            net: None,
            info: info.clone(),
            caps,
            held: vec![false; k::MAX_SLOTS as usize],
            loaded: false,
            dirs: dirs.clone(),
            _links: hooks,
            set: None,
        })
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether the LSM unix programs judge the socket each connect or datagram of this
    /// supervisor's sandboxes reaches (not with `STOCKADE_UNIX_HOOKS=off`, which leaves `[ipc]`
    /// to the launch check).
    pub fn judges_reached_sockets(&self) -> bool {
        self.unix_reached
    }

    /// Makes this build's set persistent: it stays loaded when its last user goes
    /// (`stockade monitors up`).
    pub fn keep(&self) -> Result<(), MonitorError> {
        let _setup = host::SetupLock::take()?;
        self.dirs.set_persistent(true)
    }

    /// Takes a slot nobody owns: the lowest free one.
    fn take_slot(&mut self) -> Result<(u32, host::SlotLock), MonitorError> {
        let mut error = None;
        for slot in 0..k::MAX_SLOTS {
            if self.held[slot as usize] {
                continue;
            }
            match host::SlotLock::try_take(&self.dirs.slot_path(slot)) {
                Ok(Some(lock)) => {
                    self.held[slot as usize] = true;
                    return Ok((slot, lock));
                }
                Ok(None) => {}
                Err(e) => error = Some(e),
            }
        }
        Err(error.unwrap_or(MonitorError::Full(k::MAX_SLOTS)))
    }

    /// The ring buffer at `slot`: the one placed there by its first user, or a new one (an update
    /// of an array of maps waits for an RCU grace period, about 5 ms here: once per slot and set).
    fn ring_at(&mut self, slot: u32) -> Result<RingBuf<MapData>, MonitorError> {
        let map = |source| MonitorError::Map {
            map: "EVENTS",
            source,
        };
        match self.events_by_slot.get(&slot, 0) {
            Ok(ring) => Ok(ring),
            Err(aya::maps::MapError::KeyNotFound) => {
                let bytes = if slot < k::FULL_RING_SLOTS {
                    k::EVENTS_BYTES
                } else {
                    k::EVENTS_BYTES_SMALL
                };
                let ring = new_ring(bytes)?;
                self.events_by_slot.set(slot, &ring, 0).map_err(map)?;
                Ok(ring)
            }
            Err(e) => Err(map(e)),
        }
    }

    /// Removes what a supervisor that died without disarming left for its sandbox.
    fn reclaim(&mut self, stale: &host::Stale) -> Result<(), MonitorError> {
        let id = stale.cgroup_id;
        tracing::warn!(
            "reclaiming the monitor entries of a sandbox whose supervisor (pid {}) ended without removing them: cgroup {} ({id})",
            stale.pid,
            stale.cgroup
        );
        let _ = self.net_rules.remove(&id);
        let grants: Vec<k::LsmGrantKey> = self
            .lsm_grants
            .keys()
            .flatten()
            .filter(|key| key.cgroup_id == id)
            .collect();
        for key in grants {
            let _ = self.lsm_grants.remove(&key);
        }
        let listed: Vec<k::UnixListedKey> = self
            .unix_listed
            .keys()
            .flatten()
            .filter(|key| key.cgroup_id == id)
            .collect();
        for key in listed {
            let _ = self.unix_listed.remove(&key);
        }
        let of_id = |key: &LpmKey<[u8; k::MISS_KEY_DATA]>| key.data()[..8] == id.to_le_bytes();
        let misses: Vec<_> = self.miss_trees.keys().flatten().filter(of_id).collect();
        for key in misses {
            let _ = self.miss_trees.remove(&key);
        }
        let unix: Vec<_> = self.unix_paths.keys().flatten().filter(of_id).collect();
        for key in unix {
            let _ = self.unix_paths.remove(&key);
        }
        let _setup = host::SetupLock::take()?;
        let _ = self.sandboxes.remove(&id);
        self.index_write(Self::bucket(id))
    }

    /// Writes the sandbox's entries and attaches the network programs to its cgroup. Call it
    /// after the cgroup exists and before anything runs in it.
    pub fn arm(
        &mut self,
        cgroup: &Path,
        cgroup_id: u64,
        spec: &ArmSpec,
    ) -> Result<Armed, MonitorError> {
        if spec.network.is_some() && !self.caps.network.active {
            return Err(MonitorError::Attach(ProgramError::NotLoaded));
        }
        // What only sys_exit does (the policy parser and `stockade run` refuse these too).
        if !spec.syscall_tracepoint {
            if spec.trace_files {
                return Err(MonitorError::NeedsTracepoint(
                    "tracing every open (--events)",
                ));
            }
            if spec.network.is_some() && !spec.ipc.bind_abstract {
                return Err(MonitorError::NeedsTracepoint(
                    "refusing abstract binds on the host network",
                ));
            }
        }
        let (slot, mut lock) = self.take_slot()?;
        let prepared = (|| {
            if let Some(stale) = lock.stale() {
                self.reclaim(&stale)?;
            }
            lock.record(cgroup_id, cgroup)
                .map_err(|source| MonitorError::Host {
                    what: "write",
                    path: self.dirs.slot_path(slot),
                    source,
                })?;
            self.zero_slot(slot)?;
            let mut ring = self.ring_at(slot)?;
            // What the slot's previous sandbox left unread.
            while ring.next().is_some() {}
            Ok(ring)
        })();
        let ring = match prepared {
            Ok(ring) => ring,
            Err(e) => {
                // The slot file still names what was not reclaimed, if anything.
                self.held[slot as usize] = false;
                return Err(e);
            }
        };
        let mut flags = 0;
        if spec.network.is_some() {
            flags |= k::FLAG_NET_RULES;
        }
        let (threshold, window) = match spec.kill {
            Some((t, w)) => {
                flags |= k::FLAG_KILL;
                (t.max(1), w)
            }
            None => (u32::MAX, std::time::Duration::ZERO),
        };
        let lsm = spec.lsm.as_ref().filter(|_| self.caps.lsm.active);
        if lsm.is_some() {
            flags |= k::FLAG_LSM;
            if self.unix_reached {
                flags |= k::FLAG_UNIX_REACHED;
            }
        }
        if spec.trace_files {
            flags |= k::FLAG_TRACE_FILES;
        }
        if spec.network.is_some() && !spec.ipc.bind_abstract {
            flags |= k::FLAG_NO_ABSTRACT_BIND;
        }
        if !spec.syscall_tracepoint {
            flags |= k::FLAG_UNTRACED;
        }
        let mut armed = Armed {
            cgroup_id,
            slot,
            links: Vec::new(),
            inbound: None,
            outbound: None,
            listen: None,
            lsm_keys: Vec::new(),
            listed_keys: Vec::new(),
            miss_keys: Vec::new(),
            unix_links: None,
            unix_keys: Vec::new(),
            ring,
            tracepoint: None,
            lock,
            foreign_events: 0,
        };
        let result = (|| {
            if let Some(net) = &spec.network {
                let value = net.to_kernel()?;
                self.net_rules
                    .insert(cgroup_id, value, 0)
                    .map_err(|source| MonitorError::Map {
                        map: "NET_RULES",
                        source,
                    })?;
            }
            let config = k::SandboxConfig {
                slot,
                flags,
                threshold,
                window_count: 0,
                window_ns: window.as_nanos().min(u64::MAX as u128) as u64,
                window_start_ns: 0,
                execs: 0,
                lsm_after_execs: lsm.map_or(u32::MAX, |l| l.after_execs),
            };
            if let Some(l) = lsm {
                let mut bits: std::collections::HashMap<k::LsmGrantKey, u32> = Default::default();
                for (path, b) in &l.grants {
                    let meta = std::fs::metadata(path).map_err(|e| MonitorError::Grant {
                        path: path.clone(),
                        source: e,
                    })?;
                    let key = k::LsmGrantKey {
                        cgroup_id,
                        ino: meta.ino(),
                        dev: kernel_dev(meta.dev()),
                        _pad: 0,
                    };
                    *bits.entry(key).or_default() |= b;
                }
                for (key, b) in bits {
                    armed.lsm_keys.push(key);
                    self.lsm_grants
                        .insert(key, b, 0)
                        .map_err(|source| MonitorError::Map {
                            map: "LSM_GRANTS",
                            source,
                        })?;
                }
            }
            if flags & k::FLAG_UNIX_REACHED != 0 {
                for key in listed_keys(cgroup_id, &spec.ipc) {
                    armed.listed_keys.push(key);
                    self.unix_listed
                        .insert(key, 1, 0)
                        .map_err(|source| MonitorError::Map {
                            map: "UNIX_LISTED",
                            source,
                        })?;
                }
            }
            for (dir, writable) in &spec.miss_trees {
                let Some(key) = rules::miss_key(cgroup_id, dir) else {
                    continue; // too long for the trie: its misses go to the supervisor
                };
                armed.miss_keys.push(key);
                self.miss_trees
                    .insert(
                        &LpmKey::new(key.prefix_len, key.data),
                        u8::from(!writable),
                        0,
                    )
                    .map_err(|source| MonitorError::Map {
                        map: "MISS_TREES",
                        source,
                    })?;
            }
            if self.unix_hooks.is_some() {
                for (key, verdict) in unix::path_keys(cgroup_id, &spec.ipc) {
                    armed.unix_keys.push(key);
                    self.unix_paths
                        .insert(&LpmKey::new(key.prefix_len, key.data), verdict, 0)
                        .map_err(|source| MonitorError::Map {
                            map: "UNIX_PATHS",
                            source,
                        })?;
                }
            }
            {
                let _setup = host::SetupLock::take()?;
                // Attached before the sandbox is known to the programs, so before it runs: none
                // of its calls passes unseen.
                if spec.syscall_tracepoint && self.caps.syscalls.active {
                    armed.tracepoint = Some(self.dirs.want_tracepoint()?);
                }
                self.sandboxes
                    .insert(cgroup_id, config, 0)
                    .map_err(|source| MonitorError::Map {
                        map: "SANDBOXES",
                        source,
                    })?;
                self.index_write(Self::bucket(cgroup_id))?;
            }
            if let Some(hooks) = &self.unix_hooks {
                // Fail closed: the launch check may have been left out for this sandbox.
                let dir = File::open(cgroup).map_err(MonitorError::AttachUnix)?;
                armed.unix_links = Some(
                    hooks
                        .attach(dir.as_fd())
                        .map_err(MonitorError::AttachUnix)?,
                );
            }
            // A sandbox in its own network namespace has nothing to filter.
            if self.caps.network.active && spec.network.is_some() {
                let dir = File::open(cgroup)
                    .map_err(|e| MonitorError::Attach(ProgramError::IOError(e)))?;
                if self.net.is_none() {
                    self.net = Some(NetPrograms::open(&self.dirs, &self.info)?);
                }
                let Some(net) = self.net.as_mut() else {
                    return Err(MonitorError::Attach(ProgramError::NotLoaded));
                };
                for (i, p) in net.hooks.iter_mut().enumerate() {
                    let link = p
                        .attach(dir.as_fd(), CgroupAttachMode::Single)
                        .map_err(MonitorError::Attach)?;
                    armed.links.push((i, link));
                }
                armed.inbound = Some(
                    net.inbound
                        .attach(
                            dir.as_fd(),
                            CgroupSkbAttachType::Ingress,
                            CgroupAttachMode::Single,
                        )
                        .map_err(MonitorError::Attach)?,
                );
                armed.outbound = Some(
                    net.outbound
                        .attach(
                            dir.as_fd(),
                            CgroupSkbAttachType::Egress,
                            CgroupAttachMode::Single,
                        )
                        .map_err(MonitorError::Attach)?,
                );
                if let Some(p) = &mut net.listen {
                    armed.listen = Some(
                        p.attach(dir.as_fd(), CgroupAttachMode::Single)
                            .map_err(MonitorError::Attach)?,
                    );
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(armed),
            Err(e) => {
                self.disarm(armed);
                Err(e)
            }
        }
    }

    /// Removes the sandbox's entries, detaches its network programs and gives its slot back.
    pub fn disarm(&mut self, armed: Armed) {
        let Armed {
            cgroup_id,
            slot,
            links,
            inbound,
            outbound,
            listen,
            lsm_keys,
            listed_keys,
            miss_keys,
            unix_links,
            unix_keys,
            ring,
            tracepoint,
            mut lock,
            foreign_events,
        } = armed;
        if foreign_events > 0 {
            tracing::debug!(
                foreign_events,
                "records of another cgroup in the slot's ring"
            );
        }
        if let Some(net) = self.net.as_mut() {
            for (i, link) in links {
                if let Some(p) = net.hooks.get_mut(i) {
                    let _ = p.detach(link);
                }
            }
            if let Some(link) = inbound {
                let _ = net.inbound.detach(link);
            }
            if let Some(link) = outbound {
                let _ = net.outbound.detach(link);
            }
            if let (Some(link), Some(p)) = (listen, &mut net.listen) {
                let _ = p.detach(link);
            }
        }
        // Closing the links detaches the unix socket programs.
        drop(unix_links);
        for key in &unix_keys {
            let _ = self
                .unix_paths
                .remove(&LpmKey::new(key.prefix_len, key.data));
        }
        let removed = host::SetupLock::take().is_ok_and(|_setup| {
            let _ = self.sandboxes.remove(&cgroup_id);
            let written = self.index_write(Self::bucket(cgroup_id)).is_ok();
            // After the sandbox left the index: detached if nobody else wants it.
            if tracepoint.is_some() {
                drop(tracepoint);
                self.dirs.settle_tracepoint();
            }
            written
        });
        let _ = self.net_rules.remove(&cgroup_id);
        for key in &lsm_keys {
            let _ = self.lsm_grants.remove(key);
        }
        for key in &listed_keys {
            let _ = self.unix_listed.remove(key);
        }
        for key in &miss_keys {
            let _ = self
                .miss_trees
                .remove(&LpmKey::new(key.prefix_len, key.data));
        }
        drop(ring);
        // Everything is removed: the next owner of the slot has nothing to reclaim. Otherwise the
        // slot file keeps naming the sandbox, and the next owner reclaims it.
        if removed {
            lock.clear();
        }
        drop(lock);
        if let Some(held) = self.held.get_mut(slot as usize) {
            *held = false;
        }
    }

    fn bucket(cgroup_id: u64) -> u32 {
        (cgroup_id % u64::from(k::INDEX_BUCKETS)) as u32
    }

    /// Writes the bucket of `SANDBOX_INDEX` for its current members in `SANDBOXES` (every
    /// supervisor's sandboxes). Call with the setup lock held: it orders the writers.
    fn index_write(&mut self, bucket: u32) -> Result<(), MonitorError> {
        let members: Vec<(u64, u32, u32)> = self
            .sandboxes
            .iter()
            .flatten()
            .filter(|(id, _)| Self::bucket(*id) == bucket)
            .map(|(id, c)| (id, c.slot, c.flags))
            .collect();
        let entry = index_entry(&members);
        self.index
            .set(bucket, entry, 0)
            .map_err(|source| MonitorError::Map {
                map: "SANDBOX_INDEX",
                source,
            })
    }

    /// Zeroes a slot's counters for its next sandbox.
    fn zero_slot(&mut self, slot: u32) -> Result<(), MonitorError> {
        let n = self.ncpus();
        let io = |e: std::io::Error| MonitorError::Map {
            map: "COUNTER",
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "zero",
                io_error: e,
            }),
        };
        let counters =
            aya::maps::PerCpuValues::try_from(vec![[0u64; k::COUNTERS as usize]; n]).map_err(io)?;
        self.counters
            .set(slot, counters, 0)
            .map_err(|source| MonitorError::Map {
                map: "COUNTER",
                source,
            })?;
        if slot < k::SYSCALL_SLOTS {
            let syscalls =
                aya::maps::PerCpuValues::try_from(vec![[0u64; k::SYSCALL_NR_MAX as usize]; n])
                    .map_err(io)?;
            self.syscalls
                .set(slot, syscalls, 0)
                .map_err(|source| MonitorError::Map {
                    map: "SYSCALLS",
                    source,
                })?;
        }
        Ok(())
    }

    fn ncpus(&self) -> usize {
        aya::util::nr_cpus().unwrap_or(1)
    }

    /// A sandbox's counters, summed over CPUs.
    pub fn counters(&self, armed: &Armed) -> Counters {
        let per_cpu = self.counters.get(&armed.slot, 0).ok();
        let get = |c: u32| -> u64 {
            per_cpu
                .as_ref()
                .map(|v| v.iter().map(|cpu| cpu[c as usize]).sum())
                .unwrap_or(0)
        };
        Counters {
            net_denied: get(k::COUNTER_NET_DENIED),
            dropped_events: get(k::COUNTER_DROPPED),
            forks: get(k::COUNTER_FORKS),
            execs: get(k::COUNTER_EXECS),
            failed_syscalls: get(k::COUNTER_FAILED),
            kills_in_kernel: get(k::COUNTER_KILLS),
            lsm_denied: get(k::COUNTER_LSM_DENIED),
            net_dropped: get(k::COUNTER_NET_DROPPED),
            inbound_dropped: get(k::COUNTER_INBOUND_DROPPED),
            denials_dropped: get(k::COUNTER_DENIALS_DROPPED),
            quiet_misses: get(k::COUNTER_QUIET_MISSES),
            seccomp_kills: get(k::COUNTER_SECCOMP_KILLS),
            limits: get(k::COUNTER_LIMITS),
            syscalls_by_total: get(k::COUNTER_SYSCALLS),
        }
    }

    /// A reader of the highest pid the sandbox's clones returned, on its own handle of the
    /// counters map: the attribution asks it in the middle of a drain.
    pub fn pid_view(&self, armed: &Armed) -> Option<PidView> {
        use aya::maps::IterableMap;
        let fd = self.counters.map().fd().as_fd().try_clone_to_owned().ok()?;
        let data = MapData::from_fd(fd).ok()?;
        let counters = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).ok()?;
        Some(PidView {
            counters,
            slot: armed.slot,
        })
    }

    /// How many times the kernel skipped `sys_exit` because it was already running on that CPU
    /// (`recursion_misses` of the program: a run preempted on a kernel whose syscall
    /// tracepoints may fault, and another thread's syscall exit on the same CPU meanwhile).
    pub fn sys_exit_misses(&self) -> Option<u64> {
        let fd = host::obj_get(&self.dirs.pin("prog-sys_exit")).ok()?;
        prog_info(fd.as_fd()).map(|i| i.recursion_misses)
    }

    /// What the kernel counts of each of the set's programs: those attached to each sandbox
    /// (`prog-*` pins) and those on the host's hooks (reached through their `link-*` pins).
    /// Runs and run time move only while the kernel's statistics are on
    /// (`kernel.bpf_stats_enabled`, or a `BPF_ENABLE_STATS` descriptor held).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let Ok(entries) = std::fs::read_dir(&self.dirs.pins) else {
            return Vec::new();
        };
        let mut stats: Vec<ProgramStats> = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(file) = file.to_str() else {
                continue;
            };
            let (prog, name) = if let Some(name) = file.strip_prefix("prog-") {
                let Ok(fd) = host::obj_get(&entry.path()) else {
                    continue;
                };
                (fd, name)
            } else if let Some(name) = file.strip_prefix("link-") {
                let Some(fd) = host::obj_get(&entry.path())
                    .ok()
                    .and_then(|link| link_prog_id(link.as_fd()))
                    .and_then(|id| prog_by_id(id).ok())
                else {
                    continue;
                };
                (fd, name)
            } else {
                continue;
            };
            let Some(info) = prog_info(prog.as_fd()) else {
                continue;
            };
            if stats.iter().any(|s| s.id == info.id) {
                continue;
            }
            stats.push(ProgramStats {
                name: name.to_string(),
                id: info.id,
                run_count: info.run_cnt,
                run_time_ns: info.run_time_ns,
                recursion_misses: info.recursion_misses,
            });
        }
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// Per-syscall counts of a sandbox (numbers with a count only), readable while it runs.
    pub fn syscall_counts(&self, armed: &Armed) -> BTreeMap<u32, u64> {
        let mut out = BTreeMap::new();
        if let Ok(per_cpu) = self.syscalls.get(&armed.slot, 0) {
            for nr in 0..k::SYSCALL_NR_MAX as usize {
                let n: u64 = per_cpu.iter().map(|cpu| cpu[nr]).sum();
                if n > 0 {
                    out.insert(nr as u32, n);
                }
            }
        }
        out
    }
}

/// `UNIX_LISTED` keys for the sockets `[ipc] connect` lists: each one's directory (as it is now)
/// and name, for the path as listed and, when a symlink is on the way, for where it leads (the
/// kernel judges where the socket was bound). A socket whose directory does not exist yet is
/// skipped (nothing can be reached there by that name); a name the key cannot hold whole (63
/// bytes or more: the kernel's copy is cut to 63 and must not match a longer listed name) is
/// not listed in the kernel, so the LSM programs refuse it (fail closed).
fn listed_keys(cgroup_id: u64, ipc: &stockade_policy::IpcSpec) -> Vec<k::UnixListedKey> {
    use std::os::unix::ffi::OsStrExt;
    let mut keys: Vec<k::UnixListedKey> = Vec::new();
    for listed in &ipc.connect {
        let resolved = std::fs::canonicalize(listed).ok();
        for path in std::iter::once(listed).chain(resolved.as_ref()) {
            let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            let name = name.as_bytes();
            if name.len() >= k::UNIX_NAME_LEN - 1 {
                continue;
            }
            let Ok(meta) = std::fs::metadata(dir) else {
                continue;
            };
            let mut key = k::UnixListedKey {
                cgroup_id,
                parent_ino: meta.ino(),
                dev: kernel_dev(meta.dev()),
                _pad: 0,
                name: [0; k::UNIX_NAME_LEN],
            };
            key.name[..name.len()].copy_from_slice(name);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// The attach type of a network hook's program.
fn net_attach_type(hook: &str) -> CgroupSockAddrAttachType {
    match hook {
        "connect4" => CgroupSockAddrAttachType::Connect4,
        "connect6" => CgroupSockAddrAttachType::Connect6,
        "sendmsg4" => CgroupSockAddrAttachType::UDPSendMsg4,
        "sendmsg6" => CgroupSockAddrAttachType::UDPSendMsg6,
        "bind4" => CgroupSockAddrAttachType::Bind4,
        _ => CgroupSockAddrAttachType::Bind6,
    }
}

/// A pinned map of the set as a `T` (`wrap`: the `Map` variant of its kernel type).
fn pinned<T>(
    dirs: &host::SetDirs,
    name: &'static str,
    wrap: fn(MapData) -> aya::maps::Map,
) -> Result<T, MonitorError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = |source| MonitorError::Map { map: name, source };
    let data = MapData::from_pin(dirs.pin(name)).map_err(map)?;
    T::try_from(wrap(data)).map_err(map)
}

/// The highest pid one sandbox's clones returned so far, in its own pid namespace
/// (`COUNTER_PID_HIGH`, the largest over CPUs). Read when asked, never cached: it only grows,
/// so a value read after an event is at least the one at the time of the event.
pub struct PidView {
    counters: PerCpuArray<MapData, [u64; k::COUNTERS as usize]>,
    slot: u32,
}

impl PidView {
    pub fn highest(&self) -> Option<u64> {
        let per_cpu = self.counters.get(&self.slot, 0).ok()?;
        per_cpu
            .iter()
            .map(|cpu| cpu[k::COUNTER_PID_HIGH as usize])
            .max()
    }
}

/// The kernel-side counters of one sandbox.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counters {
    pub net_denied: u64,
    pub dropped_events: u64,
    pub forks: u64,
    pub execs: u64,
    pub failed_syscalls: u64,
    pub kills_in_kernel: u64,
    pub lsm_denied: u64,
    /// Network denials whose event was dropped (included in `dropped_events`).
    pub net_dropped: u64,
    /// Inbound packets dropped on their way to a listener no bind rule covers.
    pub inbound_dropped: u64,
    /// Dropped events that were denials by a layer (part of `dropped_events`); in enforce mode
    /// each counts as a violation.
    pub denials_dropped: u64,
    /// ENOENTs below a read-only granted directory, judged harmless in the kernel and not sent.
    pub quiet_misses: u64,
    /// Calls seccomp ended with SIGSYS.
    pub seccomp_kills: u64,
    /// Resource limits reached (each also an event at the 1st, 2nd, 4th... time per CPU).
    pub limits: u64,
    /// Syscalls counted in total only, not by number (every one, for a sandbox in a slot past
    /// `SYSCALL_SLOTS`).
    pub syscalls_by_total: u64,
}

/// A `SANDBOX_INDEX` bucket holding `members` (cgroup id, slot, flags): empty, one sandbox, or
/// shared (the programs then look in `SANDBOXES`).
fn index_entry(members: &[(u64, u32, u32)]) -> k::IndexEntry {
    match members {
        [] => k::IndexEntry::default(),
        [(cgroup_id, slot, flags)] => k::IndexEntry {
            cgroup_id: *cgroup_id,
            slot: *slot,
            flags: *flags,
        },
        _ => k::IndexEntry {
            cgroup_id: k::INDEX_SHARED,
            slot: 0,
            flags: 0,
        },
    }
}

const LSM_HOOKS: [&str; 5] = [
    "file_open",
    "bprm_check_security",
    "socket_listen",
    "unix_stream_connect",
    "unix_may_send",
];

/// The kernel's dev_t (`MAJOR << 20 | MINOR`, what `super_block.s_dev` holds) of a userspace
/// `st_dev`.
fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | (minor & 0xf_ffff)
}

/// Loads the LSM programs where the kernel accepts BPF LSM programs at all (probed first with a
/// two-instruction program: parsing the kernel's BTF for aya costs about 10 ms, which hosts that
/// refuse LSM programs need not pay).
/// Turns the kernel's count of every BPF program's runs and run time on until the descriptor is
/// closed (`BPF_ENABLE_STATS`): what `kernel.bpf_stats_enabled = 1` does, without changing the
/// host's setting for longer than this process lives.
pub fn enable_run_time_stats() -> std::io::Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| e.io_error)
}

/// One of the monitors' BPF programs as the kernel counts it (see [`Monitor::program_stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    /// The pin's name without its `prog-` or `link-`: `sys_exit`, `file_open`, `connect4`…
    pub name: String,
    pub id: u32,
    pub run_count: u64,
    pub run_time_ns: u64,
    /// Runs the kernel skipped because the program was running on that CPU already.
    pub recursion_misses: u64,
}

/// BPF_OBJ_GET_INFO_BY_FD (15) into a `T`.
///
/// # Safety
/// `T` must be one of the kernel's info structs of plain integers (`bpf_prog_info`,
/// `bpf_link_info`), for which all zeroes is a valid value.
unsafe fn obj_info<T>(fd: BorrowedFd<'_>) -> Option<T> {
    // SAFETY: the caller's promise: all zeroes is a valid `T`.
    let mut info: T = unsafe { std::mem::zeroed() };
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<T>() as u32,
        info: &mut info as *mut T as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD (15) takes this layout; the kernel writes at most
    // `info_len` bytes into `info`, a local that outlives the call.
    let r = unsafe { host::bpf_cmd(15, &mut attr) };
    r.ok().map(|_| info)
}

fn prog_info(fd: BorrowedFd<'_>) -> Option<aya_obj::generated::bpf_prog_info> {
    // SAFETY: `bpf_prog_info` is a plain C struct of integers (pointers carried as u64).
    unsafe { obj_info(fd) }
}

fn link_prog_id(fd: BorrowedFd<'_>) -> Option<u32> {
    // SAFETY: `bpf_link_info` is a plain C struct of integers and a union of such structs.
    unsafe { obj_info::<aya_obj::generated::bpf_link_info>(fd) }.map(|i| i.prog_id)
}

/// BPF_PROG_GET_FD_BY_ID (13).
fn prog_by_id(id: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    #[repr(C)]
    struct Attr {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = Attr {
        prog_id: id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: BPF_PROG_GET_FD_BY_ID (13) takes this layout and answers a new descriptor.
    unsafe { host::bpf_fd(13, &mut attr) }
}

fn load_lsm(ebpf: &mut Ebpf, raw_btf: &[u8]) -> Result<(), String> {
    crate::bpf_probe::lsm_file_open_with(raw_btf)
        .map_err(|e| format!("BPF LSM programs do not load on this kernel: {e}"))?;
    let btf = aya::Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
    for name in LSM_HOOKS {
        let p: &mut Lsm = program_to_load(ebpf, name)?;
        p.load(name, &btf)
            .map_err(|e| format!("lsm/{name} does not load: {}", verifier_hint(&e)))?;
    }
    Ok(())
}

/// The kernel struct offsets of `TP_OFFSETS`: task_struct.pid, linux_binprm.filename.
fn sched_offsets(btf: &crate::bpf_probe::BtfIndex<'_>) -> Result<Vec<u32>, String> {
    let get = |s: &str, m: &str| {
        btf.member_offset(s, m)
            .ok_or_else(|| format!("no member {m} in struct {s} of the kernel's BTF"))
    };
    Ok(vec![
        get("task_struct", "pid")?,
        get("linux_binprm", "filename")?,
    ])
}

/// The kernel struct offsets of `LSM_OFFSETS`, in `OFF_*` order.
fn lsm_offsets(btf: &crate::bpf_probe::BtfIndex<'_>) -> Result<Vec<u32>, String> {
    let get = |s: &str, m: &str| {
        btf.member_offset(s, m)
            .ok_or_else(|| format!("no member {m} in struct {s} of the kernel's BTF"))
    };
    let table = [
        get("file", "f_path")? + get("path", "dentry")?,
        get("file", "f_mode")?,
        get("dentry", "d_parent")?,
        get("dentry", "d_inode")?,
        get("dentry", "d_name")?,
        get("inode", "i_ino")?,
        get("inode", "i_sb")?,
        get("super_block", "s_dev")?,
        get("super_block", "s_user_ns")?,
        get("user_namespace", "level")?,
        get("linux_binprm", "file")?,
        get("file", "f_flags")?,
        get("socket", "sk")?,
        get("sock", "__sk_common")? + get("sock_common", "skc_family")?,
        get("sock", "__sk_common")? + get("sock_common", "skc_num")?,
        get("unix_sock", "path")? + get("path", "dentry")?,
    ];
    debug_assert_eq!(table.len(), k::LSM_OFFSETS_LEN as usize);
    Ok(table.to_vec())
}

/// The kernel struct offsets of `UNIX_OFFSETS`, in `OFF_SOCK_ADDR_KERN_*` order: where the
/// unix socket programs' context (at run time a `struct bpf_sock_addr_kern *`) holds the address.
fn unix_offsets(btf: &crate::bpf_probe::BtfIndex<'_>) -> Result<Vec<u32>, String> {
    let get = |s: &str, m: &str| {
        btf.member_offset(s, m)
            .ok_or_else(|| format!("no member {m} in struct {s} of the kernel's BTF"))
    };
    let table = [
        get("bpf_sock_addr_kern", "uaddr")?,
        get("bpf_sock_addr_kern", "uaddrlen")?,
    ];
    debug_assert_eq!(table.len(), k::UNIX_OFFSETS_LEN as usize);
    Ok(table.to_vec())
}

const SCHED: [&str; 3] = [
    "sched_process_fork",
    "sched_process_exec",
    "sched_process_exit",
];

fn active(name: &'static str, detail: &str) -> MonitorStatus {
    MonitorStatus {
        name,
        active: true,
        detail: detail.into(),
    }
}

fn inactive(name: &'static str, detail: String) -> MonitorStatus {
    MonitorStatus {
        name,
        active: false,
        detail,
    }
}

/// Writes `values` (index, value) into the array map `name`, which the programs only read.
fn fill_array<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    values: impl IntoIterator<Item = (u32, V)>,
) -> Result<(), MonitorError> {
    let mut array: Array<MapData, V> = take(ebpf, name)?;
    for (i, v) in values {
        array
            .set(i, v, 0)
            .map_err(|source| MonitorError::Map { map: name, source })?;
    }
    Ok(())
}

/// A slot's ring buffer, outside the object (whose `EVENTS` is the array of maps that holds one
/// per slot).
fn new_ring(bytes: usize) -> Result<RingBuf<MapData>, MonitorError> {
    let map = |source| MonitorError::Map {
        map: "EVENTS",
        source,
    };
    let def = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
        0,
        0,
        bytes as u32,
        0,
    );
    let data = MapData::create(def, "EVENTS", None).map_err(map)?;
    RingBuf::try_from(aya::maps::Map::RingBuf(data)).map_err(map)
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MonitorError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(MonitorError::MissingMap(name))?;
    T::try_from(map).map_err(|source| MonitorError::Map { map: name, source })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, MonitorError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or(MonitorError::Program {
        program: name,
        step: "exist in the object",
        source: ProgramError::NotLoaded,
    })?;
    p.try_into().map_err(|source| MonitorError::Program {
        program: name,
        step: "have the expected type",
        source,
    })
}

fn program_named<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, MonitorError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or(MonitorError::Attach(ProgramError::NotLoaded))?;
    p.try_into().map_err(MonitorError::Attach)
}

/// The program `name` of the object as a `T`, for loading: errors as the one line doctor prints.
fn program_to_load<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("no program {name}"))?
        .try_into()
        .map_err(|e: ProgramError| format!("{name}: {e}"))
}

fn load_net(ebpf: &mut Ebpf, suffix: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for hook in NET_HOOKS {
        let name = format!("{hook}{suffix}");
        let p: &mut CgroupSockAddr = program_to_load(ebpf, &name)?;
        p.load()
            .map_err(|e| format!("{name} does not load: {}", verifier_hint(&e)))?;
        names.push(name);
    }
    Ok(names)
}

/// Listening without bind(): no sock_addr hook sees it (see `inbound` in the eBPF crate).
fn load_inbound(ebpf: &mut Ebpf) -> Result<(&'static str, Option<String>), String> {
    let p: &mut CgroupSkb = program_to_load(ebpf, "inbound")?;
    p.load()
        .map_err(|e| format!("cgroup_skb/ingress does not load: {}", verifier_hint(&e)))?;
    // Where cgroup_skb programs may not ask for the current task (6.1), the variant whose
    // events name no process.
    let mut outbound = "outbound";
    let p: &mut CgroupSkb = program_to_load(ebpf, outbound)?;
    if let Err(first) = p.load() {
        outbound = "outbound_anon";
        let p: &mut CgroupSkb = program_to_load(ebpf, outbound)?;
        p.load().map_err(|e| {
            format!(
                "cgroup_skb/egress does not load: {} (with the current task: {})",
                verifier_hint(&e),
                verifier_hint(&first)
            )
        })?;
    }
    // Only a report (the inbound guard keeps every connection out of such a listener): where
    // sock_ops programs may not ask for the cgroup (6.1) the monitor runs without it, and says so.
    let p: &mut SockOps = program_to_load(ebpf, "listen")?;
    let listen = p
        .load()
        .err()
        .map(|e| format!("sock_ops does not load: {}", verifier_hint(&e)));
    Ok((outbound, listen))
}

/// What the network monitor attaches, and what it lacks (`listen`: why the sock_ops report of
/// listeners did not load).
fn network_detail(listen: Option<&str>) -> String {
    match listen {
        None => NETWORK_PROGRAMS.to_string(),
        Some(why) => format!(
            "{NETWORK_PROGRAMS}; without the report of listeners outside the bind rules ({why}): \
             the inbound guard still keeps every connection from them"
        ),
    }
}

/// `sys_exit` hands each event to `sys_exit_report` by a tail call through `REPORT`. The array
/// stays in `ebpf`: the kernel empties a program array when its last descriptor closes.
fn link_report(ebpf: &mut Ebpf) -> Result<(), String> {
    let fd = {
        let p: &mut RawTracePoint =
            program_named(ebpf, "sys_exit_report").map_err(|e| e.to_string())?;
        p.fd()
            .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
            .map_err(|e| format!("sys_exit_report: {e}"))?
    };
    let map = ebpf
        .map_mut("REPORT")
        .ok_or_else(|| "the object has no map REPORT".to_string())?;
    let mut array = aya::maps::ProgramArray::try_from(map).map_err(|e| format!("REPORT: {e}"))?;
    array
        .set(0, &fd, 0)
        .map_err(|e| format!("REPORT: cannot hold sys_exit_report: {e}"))
}

fn load_raw_tp(ebpf: &mut Ebpf, name: &'static str) -> Result<(), String> {
    let p: &mut RawTracePoint = program_to_load(ebpf, name)?;
    p.load()
        .map_err(|e| format!("raw_tracepoint/{name} does not load: {}", verifier_hint(&e)))?;
    if tracing::enabled!(tracing::Level::DEBUG) {
        let insns = p.info().ok().and_then(|i| i.verified_instruction_count());
        tracing::debug!(
            program = name,
            ?insns,
            "instructions the verifier processed"
        );
    }
    Ok(())
}

fn load_sched(ebpf: &mut Ebpf) -> Result<(), String> {
    for name in SCHED {
        let p: &mut RawTracePoint = program_to_load(ebpf, name)?;
        p.load()
            .map_err(|e| format!("{name} does not load: {}", verifier_hint(&e)))?;
    }
    Ok(())
}

/// The error with the verifier's last lines, which say why (the full log is at debug level).
fn verifier_hint(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            tracing::debug!("verifier log:\n{log}");
            let tail: Vec<&str> = log.lines().rev().take(2).collect();
            if tail.is_empty() {
                io_error.to_string()
            } else {
                format!(
                    "{io_error} ({})",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                )
            }
        }
        other => other.to_string(),
    }
}

/// Mounts `fs` at `path` unless something is mounted there already.
fn ensure_mounted(fs: &'static str, path: &'static str) -> Result<(), MonitorError> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mounts.lines().any(|l| l.split(' ').nth(4) == Some(path)) {
        return Ok(());
    }
    nix::mount::mount(
        Some(fs),
        path,
        Some(fs),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| MonitorError::Mount {
        fs,
        path,
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_buckets_hold_one_sandbox_or_defer_to_the_hash() {
        assert_eq!(index_entry(&[]).cgroup_id, 0);
        let one = index_entry(&[(70000, 3, k::FLAG_TRACE_FILES)]);
        assert_eq!(
            (one.cgroup_id, one.slot, one.flags),
            (70000, 3, k::FLAG_TRACE_FILES)
        );
        let two = index_entry(&[(70000, 3, 0), (70000 + u64::from(k::INDEX_BUCKETS), 4, 0)]);
        assert_eq!(two.cgroup_id, k::INDEX_SHARED);
        assert_eq!(
            Monitor::bucket(70000),
            Monitor::bucket(70000 + u64::from(k::INDEX_BUCKETS))
        );
    }
}
