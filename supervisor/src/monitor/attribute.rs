//! Which layer refused what: turns the raw records of one sandbox into [`Event`]s.
//!
//! The sys_exit program reports every EPERM, EACCES, EROFS, ENETUNREACH and ENOENT on a path or
//! a unix socket name, with the syscall's registers; the signal_generate program seccomp's
//! SIGSYS; the cgroup programs their own refusals. The layer is decided here:
//! - **seccomp**: the sandbox's own filter, replayed on the same registers (`seccomp::evaluate`),
//!   refuses the call. Exact: the filter only looks at the registers the event carries.
//! - **network**: the cgroup programs report their own denials (with the address, and counted in
//!   the kernel even when the ring buffer drops the event); an EPERM from connect, bind or sendto
//!   that seccomp did not cause is that same denial and is not reported twice. An EACCES from connect or bind is Landlock's TCP rule.
//! - **landlock**: an EACCES on a path whose requested right (read, write, execute) the policy
//!   does not grant. Landlock enforces exactly the policy's grants, so this is the same decision.
//! - **mount**: EROFS, a write to a path granted read-only (or /proc/sys).
//! - **namespace**: ENOENT for an absolute path outside every grant that exists on the host: the
//!   mount namespace hid it. A missing file inside a granted tree (the loader probing library
//!   directories), below a path the policy declares `absent`, or one that exists nowhere, is not
//!   a violation. Whether it exists is looked up without leaving local filesystems and without
//!   triggering automounts (`hostpath`); a path on a network, FUSE or autofs mount is not looked
//!   up and counts as a violation. Also: a create below a directory the host has and the sandbox
//!   lacks, `/proc/self/root/PATH` as `PATH`, a miss in a writable tree through a link the plugin
//!   made (followed through the sandbox's root, `sandboxpath`), a datagram in an empty network
//!   namespace (ENETUNREACH).
//! - **resources**: a limit reached (pids, nofile, fsize, disk): an event of type `limit`, not a
//!   violation.
//! - **permissions**: everything else (file modes, capability checks of the user namespace). These
//!   are recorded as refusals, not violations: no Stockade layer made them.

use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use stockade_ebpf_common as k;
use stockade_policy::seccomp::{self, AUDIT_ARCH_X86_64, SECCOMP_RET_ALLOW};
use stockade_policy::{syscalls, Access, LaunchSpec};

use super::event::{c_bytes, c_path, net_address, sockaddr, unix_path, Object, RawEvent};
use super::hostpath::{HostPaths, Presence};
use super::rules::names_a_path;
use super::sandboxpath::SandboxRoot;
use super::PidView;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    Seccomp,
    Landlock,
    Network,
    Mount,
    Namespace,
    Lsm,
    Permissions,
    /// A resource limit: the cgroup's pids, the rlimits, a full filesystem.
    Resources,
    /// The plugin broke the JSON-RPC protocol with its host (the daemon): malformed or
    /// oversized messages, unknown response ids, methods it may not call.
    Rpc,
}

impl Layer {
    pub fn name(self) -> &'static str {
        match self {
            Layer::Seccomp => "seccomp",
            Layer::Landlock => "landlock",
            Layer::Network => "network",
            Layer::Mount => "mount",
            Layer::Namespace => "namespace",
            Layer::Lsm => "lsm",
            Layer::Permissions => "permissions",
            Layer::Resources => "resources",
            Layer::Rpc => "rpc",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A Stockade layer refused it, or the plugin reached for a hidden path: counted.
    Violation,
    /// Refused by something that is not a Stockade layer (file modes, capabilities): recorded only.
    Refused,
    /// A file was opened (every open is traced with `--events`).
    Open,
    /// A resource limit answered a call (fork at the pids limit, no descriptor left, a file past
    /// the size limit, a full /tmp): not a violation, but a timed event of its own.
    Limit,
    Fork,
    Exec,
    Exit,
}

/// One event of a sandbox, as `--events` writes it and the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Milliseconds since the sandbox started.
    pub t_ms: f64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub pid: u32,
    pub tid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<Layer>,
    /// What was attempted: read, write, exec, connect, sendto, bind, syscall, fork, exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// A path, an address (`127.0.0.2:8080/tcp`), or a new pid: the fields `object` and, when
    /// its bytes are not UTF-8, `object_hex` (see [`Object`]).
    #[serde(flatten)]
    pub object: Option<Object>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<&'static str>,
    /// The descriptor an open returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// The network program killed the process at once (in-kernel threshold).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub killed_in_kernel: bool,
}

/// What the attribution needs to know about one sandbox.
pub struct Attributor {
    seccomp: Vec<(u16, u8, u8, u32)>,
    /// Paths inside the sandbox and the right granted there (what Landlock enforces).
    grants: Vec<(PathBuf, Access)>,
    /// Grants that also allow execute (the private /tmp under `tmp_exec`).
    also_exec: Vec<PathBuf>,
    /// The policy's `absent` paths: hidden, but looking for them is not a violation.
    absent: Vec<PathBuf>,
    /// `network.mode = "none"`: an empty network namespace.
    isolated: bool,
    /// The unix socket programs judge this sandbox's pathname connects (and report them).
    unix_hook: bool,
    /// The sandbox's own root, to follow the links the plugin made in its writable trees.
    root: SandboxRoot,
    /// The thread whose two-path call (link, rename) was a violation on its first path: its
    /// second path's event is not another one.
    first_of_two_violated: Option<u32>,
    start_ns: u64,
    /// Whether a hidden path exists on the host (see `hostpath`).
    host: HostPaths,
    /// The highest pid the sandbox's clones returned (in its own pid namespace).
    pids: Option<PidView>,
}

impl Attributor {
    /// `start_ns`: CLOCK_MONOTONIC at the sandbox's start (the clock of the event timestamps).
    pub fn new(spec: &LaunchSpec, start_ns: u64) -> Attributor {
        Attributor {
            seccomp: spec.seccomp.program.clone(),
            grants: spec.landlock.paths.clone(),
            also_exec: spec.landlock.also_exec.clone(),
            absent: spec.absent.clone(),
            isolated: spec.network == stockade_policy::NetworkSpec::Isolated,
            unix_hook: false,
            root: SandboxRoot::default(),
            first_of_two_violated: None,
            start_ns,
            host: HostPaths::new(),
            pids: None,
        }
    }

    /// The sandbox's pid counter (see [`PidView`]): without it no `/proc/N` is judged.
    pub fn set_pid_view(&mut self, pids: PidView) {
        self.pids = Some(pids);
    }

    /// The plugin's process (PID 1 of the sandbox, host pid): its root is the sandbox's.
    pub fn set_main_pid(&mut self, pid: u32) {
        self.root.set_main_pid(pid);
    }

    /// The sandbox's mount namespace: its root stays readable after every process is gone.
    pub fn set_mount_ns(&mut self, ns: std::os::fd::OwnedFd) {
        self.root.set_mount_ns(ns);
    }

    /// Whether the cgroup unix socket programs are attached to this sandbox's cgroup.
    pub fn set_unix_hook(&mut self, armed: bool) {
        self.unix_hook = armed;
    }

    fn base(&self, h: &k::EventHeader, kind: EventType) -> Event {
        Event {
            t_ms: h.timestamp_ns.saturating_sub(self.start_ns) as f64 / 1e6,
            kind,
            pid: h.pid,
            tid: h.tid,
            layer: None,
            action: None,
            syscall: None,
            object: None,
            errno: None,
            fd: None,
            killed_in_kernel: false,
        }
    }

    /// The event for one record, or `None` when it is not worth one (a file missing inside a
    /// granted tree, a repeated report).
    pub fn attribute(&mut self, raw: &RawEvent) -> Option<Event> {
        match raw {
            RawEvent::NetDeny(e) => {
                let mut ev = self.base(&e.header, EventType::Violation);
                ev.layer = Some(Layer::Network);
                ev.action = Some(match e.hook {
                    k::HOOK_CONNECT4 | k::HOOK_CONNECT6 => "connect",
                    k::HOOK_SENDMSG4 | k::HOOK_SENDMSG6 => "sendto",
                    k::HOOK_LISTEN4 | k::HOOK_LISTEN6 => "listen",
                    k::HOOK_EGRESS4 | k::HOOK_EGRESS6 => "send",
                    _ => "bind",
                });
                ev.object = Some(Object::from(format!(
                    "{}/{}",
                    net_address(e),
                    protocol_name(e.protocol)
                )));
                if matches!(e.hook, k::HOOK_EGRESS4 | k::HOOK_EGRESS6) {
                    // The packet's own destination: where its headers would have sent it.
                    let ip = net_address(e).ip();
                    let why = if e.hook == k::HOOK_EGRESS4 {
                        "IPv4 options"
                    } else {
                        "an IPv6 routing header"
                    };
                    ev.object = Some(Object::from(format!("{ip} (a packet with {why})")));
                }
                // listen() itself succeeds (no hook can refuse it); its inbound packets are
                // dropped instead.
                let listen = matches!(e.hook, k::HOOK_LISTEN4 | k::HOOK_LISTEN6);
                ev.errno = (!listen || e.lsm != 0).then_some("EPERM");
                if e.lsm != 0 {
                    // The LSM refused listen() on a socket never bound.
                    ev.layer = Some(Layer::Lsm);
                    let v = if e.hook == k::HOOK_LISTEN4 {
                        "IPv4"
                    } else {
                        "IPv6"
                    };
                    ev.object = Some(Object::from(format!("unbound {v} tcp socket")));
                }
                ev.killed_in_kernel = e.killed != 0;
                Some(ev)
            }
            RawEvent::UnixDeny(e) => {
                // `[ipc]`: a pathname socket neither listed nor below a writable tree.
                let mut ev = self.base(&e.header, EventType::Violation);
                ev.layer = Some(Layer::Network);
                ev.action = Some(if e.hook == k::HOOK_UNIX_SENDMSG {
                    "sendto"
                } else {
                    "connect"
                });
                let len = (e.path_len as usize).min(k::UNIX_PATH_LEN);
                ev.object = Some(Object::bytes(e.path[..len].to_vec()));
                ev.errno = Some("EPERM");
                Some(ev)
            }
            RawEvent::Syscall(e) => self.syscall(e),
            RawEvent::Sigsys(e) => {
                let mut ev = self.base(&e.header, EventType::Violation);
                ev.layer = Some(Layer::Seccomp);
                ev.action = Some("syscall");
                ev.syscall = Some(sigsys_call(e.nr, e.arch));
                ev.errno = Some("SIGSYS");
                Some(ev)
            }
            RawEvent::Fork(h, child) => {
                let mut ev = self.base(h, EventType::Fork);
                ev.action = Some("fork");
                ev.object = Some(Object::from(child.to_string()));
                Some(ev)
            }
            RawEvent::Exec(h, file) => {
                let mut ev = self.base(h, EventType::Exec);
                ev.action = Some("exec");
                ev.object = Some(Object::bytes(file.clone()));
                Some(ev)
            }
            RawEvent::Exit(h) => {
                let mut ev = self.base(h, EventType::Exit);
                ev.action = Some("exit");
                Some(ev)
            }
            RawEvent::LsmDeny(e) => {
                let mut ev = self.base(&e.header, EventType::Violation);
                ev.layer = Some(Layer::Lsm);
                let unix = e.hook == k::LSM_UNIX_CONNECT || e.hook == k::LSM_UNIX_SEND;
                ev.action = Some(if e.hook == k::LSM_UNIX_CONNECT {
                    "connect"
                } else if e.hook == k::LSM_UNIX_SEND {
                    "sendto"
                } else if e.hook == k::LSM_BPRM_CHECK || e.mode & 0x20 != 0 {
                    "exec"
                } else if e.mode & 2 != 0 {
                    "write"
                } else {
                    "read"
                });
                let mut object = c_bytes(&e.name).to_vec();
                object.extend_from_slice(
                    format!(
                        " (inode {} on device {}:{})",
                        e.ino,
                        e.dev >> 20,
                        e.dev & 0xf_ffff
                    )
                    .as_bytes(),
                );
                ev.object = Some(Object::bytes(object));
                ev.errno = Some(if unix { "EPERM" } else { "EACCES" });
                Some(ev)
            }
        }
    }

    /// link, rename and their *at forms name two paths; the kernel sends the second as an event
    /// of its own right after the first (marked `_pad[0] = 1`). One call is one violation: the
    /// second path is judged only when the first was not one.
    fn syscall(&mut self, e: &k::SyscallEvent) -> Option<Event> {
        if e.ret >= 0 && syscalls::name_of(e.nr) == Some("bind") {
            return Some(self.abstract_bind(e));
        }
        if e.ret >= 0 {
            return self.open(e);
        }
        let second = e._pad[0] == 1;
        if second {
            if self.first_of_two_violated.take() == Some(e.header.tid) {
                return None;
            }
            return self.failed_syscall(e);
        }
        let ev = self.failed_syscall(e);
        let two_paths = matches!(
            syscalls::name_of(e.nr),
            Some("link" | "linkat" | "rename" | "renameat" | "renameat2")
        );
        self.first_of_two_violated = ev
            .as_ref()
            .filter(|v| two_paths && v.kind == EventType::Violation)
            .map(|_| e.header.tid);
        ev
    }

    fn failed_syscall(&mut self, e: &k::SyscallEvent) -> Option<Event> {
        let errno = -e.ret;
        let name = syscalls::name_of(e.nr);
        let object = &e.object[..(e.object_len as usize).min(k::OBJECT_LEN)];
        let path = (e.object_kind == k::ARG_PATH).then(|| c_path(object));
        // The program copies at most MISS_PATH_LEN - 1 bytes of a path: a copy that long may
        // be the beginning of a longer one, whose end (a `..`, say) could lead anywhere.
        let truncated = path.is_some() && e.object_len as usize >= k::MISS_PATH_LEN - 1;
        let addr = (e.object_kind == k::ARG_SOCKADDR)
            .then(|| sockaddr(object))
            .flatten();
        let mut ev = self.base(&e.header, EventType::Violation);
        // A number outside the table (x32, `syscall(-1)`) is shown as the kernel saw it.
        ev.syscall = Some(sigsys_call(e.nr as i32, AUDIT_ARCH_X86_64));
        ev.errno = Some(errno_name(errno));
        ev.object = path
            .as_ref()
            .map(|p| Object::path(p.as_os_str().as_bytes(), truncated))
            .or_else(|| addr.map(|a| Object::from(a.to_string())));

        if let Some(limit) = limit_name(name.unwrap_or(""), errno) {
            ev.kind = EventType::Limit;
            ev.layer = Some(Layer::Resources);
            ev.action = Some(limit);
            return Some(ev);
        }
        // seccomp first: it answers before any other layer sees the call.
        if errno == libc::EPERM {
            let verdict = seccomp::evaluate(&self.seccomp, AUDIT_ARCH_X86_64, e.nr, e.args);
            if verdict.is_some_and(|v| v != SECCOMP_RET_ALLOW) {
                ev.layer = Some(Layer::Seccomp);
                ev.action = Some("syscall");
                return Some(ev);
            }
        }
        if let Some(action) = name.and_then(net_action) {
            ev.action = Some(action);
            if let Some(a) = addr {
                ev.object = Some(Object::from(format!("{a}/tcp")));
            }
            return match errno {
                // No route: the empty network namespace of `network.mode = "none"` (a TCP
                // connect meets Landlock's port rule first; a datagram meets nothing else).
                // On the host's network a missing route is the network's answer, not ours.
                libc::ENETUNREACH if self.isolated => {
                    ev.layer = Some(Layer::Namespace);
                    if let Some(a) = addr {
                        let proto = if action == "connect" { "" } else { "/udp" };
                        ev.object = Some(Object::from(format!("{a}{proto}")));
                    }
                    Some(ev)
                }
                libc::ENETUNREACH => None,
                // A socket name that names nothing in the sandbox: the unix socket programs let
                // such a name through (it lies below no grant). Judged like any other miss: a
                // socket the host has there is a reach for it; nscd's, where there is none, not.
                libc::ENOENT => {
                    let p = (e.object_kind == k::ARG_SOCKADDR)
                        .then(|| unix_path(object))
                        .flatten()
                        .filter(|p| p.is_absolute())?;
                    let clean = normalize(&p);
                    let clean = proc_root_alias(&clean).unwrap_or(clean);
                    if !self.hidden(&clean, Access::Read) {
                        return None;
                    }
                    ev.layer = Some(Layer::Namespace);
                    ev.object = Some(Object::bytes(p.as_os_str().as_bytes().to_vec()));
                    Some(ev)
                }
                // Landlock's TCP bind/connect rules answer EACCES.
                libc::EACCES => {
                    ev.layer = Some(Layer::Landlock);
                    Some(ev)
                }
                libc::EPERM => {
                    // Not seccomp's (replayed above): on an IP address (the copied sockaddr is
                    // AF_INET or AF_INET6; sendmsg's is not copied) it is the network
                    // program's refusal, which that program reports itself (and counts when the
                    // ring buffer drops its event), so this report of it is not another
                    // violation. The kernel side usually suppresses it; a thread that moved to
                    // another CPU in between gets here.
                    if addr.is_some() {
                        return None;
                    }
                    let unix = (e.object_kind == k::ARG_SOCKADDR)
                        .then(|| unix_pathname(object))
                        .flatten();
                    match unix {
                        // The unix socket program's refusal, reported (and counted) by it.
                        Some(true) if self.unix_hook => return None,
                        // No Stockade layer refuses a pathname connect with EPERM otherwise.
                        Some(true) => {
                            ev.kind = EventType::Refused;
                            ev.layer = Some(Layer::Permissions);
                            return Some(ev);
                        }
                        _ => {}
                    }
                    // Landlock's scoping (abstract unix sockets) answers EPERM too.
                    ev.layer = Some(Layer::Landlock);
                    Some(ev)
                }
                _ => {
                    ev.kind = EventType::Refused;
                    ev.layer = Some(Layer::Permissions);
                    Some(ev)
                }
            };
        }
        let Some(path) = path else {
            if errno == libc::ENOENT && e.object_kind == 0 && name.is_some_and(names_a_path) {
                // A call that takes a path, whose path the program could not read from the
                // plugin's memory (`bpf_probe_read_user` does not fault a page in: a page being
                // migrated or compacted, or one another thread of the plugin unmapped after the
                // kernel's own copy). No benefit of the doubt: it may have named a hidden path.
                ev.layer = Some(Layer::Namespace);
                ev.action = Some(access_word(requested_access(name.unwrap_or(""), &e.args)));
                ev.object = Some(Object::from(
                    "(a path the monitor could not read)".to_string(),
                ));
                return Some(ev);
            }
            if errno == libc::ENOENT {
                return None;
            }
            ev.kind = EventType::Refused;
            ev.layer = Some(Layer::Permissions);
            ev.action = Some("syscall");
            return Some(ev);
        };
        let want = requested_access(name.unwrap_or(""), &e.args);
        ev.action = Some(access_word(want));
        if !path.is_absolute() {
            // Relative to a directory the event does not name: no judgement on what it reached.
            if errno == libc::ENOENT {
                return None;
            }
            ev.layer = Some(Layer::Landlock);
            if errno == libc::EROFS {
                ev.layer = Some(Layer::Mount);
            }
            return Some(ev);
        }
        let clean = normalize(&path);
        let granted = self.granted(&clean);
        match errno {
            libc::ENOENT if truncated => {
                // Not judged on a part of the path: no benefit of the doubt.
                ev.layer = Some(Layer::Namespace);
                Some(ev)
            }
            libc::ENOENT if self.host_process(&clean) => {
                // `/proc/4242/...` above every pid the sandbox ever had: the pid of a process
                // of the host (whose own /proc has it), which the sandbox's /proc does not show.
                ev.layer = Some(Layer::Namespace);
                Some(ev)
            }
            libc::ENOENT => {
                // `/proc/self/root/etc/shadow` is `/etc/shadow`: every process of the sandbox
                // has the sandbox's root.
                let clean = proc_root_alias(&clean).unwrap_or(clean);
                if self.granted(&clean) == Some(Access::Write) && !is_dev(&clean) {
                    // A tree the plugin writes, where it makes the links: follow them.
                    let writable: Vec<PathBuf> = self
                        .grants
                        .iter()
                        .filter(|(p, a)| *a == Access::Write && !is_dev(p))
                        .map(|(p, _)| p.clone())
                        .collect();
                    let inside = |p: &Path| writable.iter().any(|w| p.starts_with(w));
                    let pid = e.header.pid;
                    return match self.root.resolve(pid, &path, inside) {
                        Some(to) if to != clean && self.hidden(&to, want) => {
                            let shown = format!("{} → {}", path.display(), to.display());
                            ev.object = Some(Object::from(shown));
                            ev.layer = Some(Layer::Namespace);
                            Some(ev)
                        }
                        _ => None, // missing inside a tree it may write
                    };
                }
                self.hidden(&clean, want).then(|| {
                    ev.layer = Some(Layer::Namespace);
                    ev
                })
            }
            libc::EROFS => {
                ev.layer = Some(Layer::Mount);
                Some(ev)
            }
            _ => {
                // A descriptor reopened by name (`/dev/stdin`, `/proc/self/fd/1`): the kernel
                // follows the link to the open file itself, which may lie outside every grant
                // (the caller's terminal). File modes often answer first, but Landlock would
                // refuse it all the same: a reach past the descriptor the plugin was handed.
                if errno == libc::EACCES {
                    if let Some(to) = self.reopened(e.header.tid, &clean) {
                        if !self.grants_file(&to, want) {
                            let shown = format!("{} → {}", path.display(), to.display());
                            ev.object = Some(Object::from(shown));
                            ev.layer = Some(Layer::Landlock);
                            return Some(ev);
                        }
                    }
                }
                let covers = granted.is_some_and(|g| covers(g, want))
                    || (want == Access::Exec && self.also_executable(&clean));
                if covers {
                    ev.kind = EventType::Refused;
                    ev.layer = Some(Layer::Permissions);
                } else {
                    ev.layer = Some(Layer::Landlock);
                }
                Some(ev)
            }
        }
    }

    /// A `bind` to an abstract name on the host's network namespace, which `[ipc]` does not allow
    /// (`FLAG_NO_ABSTRACT_BIND`): the program killed the process before it returned from the call.
    fn abstract_bind(&self, e: &k::SyscallEvent) -> Event {
        let mut ev = self.base(&e.header, EventType::Violation);
        ev.layer = Some(Layer::Network);
        ev.action = Some("bind");
        ev.syscall = Some("bind".into());
        let object = &e.object[..(e.object_len as usize).min(k::OBJECT_LEN)];
        // sun_path after its first (zero) byte, up to the address length the call gave.
        let addr_len = (e.args[2] as usize).clamp(3, 110);
        let name = object.get(3..addr_len.min(object.len())).unwrap_or(&[]);
        let mut shown = b"@".to_vec();
        shown.extend_from_slice(name);
        ev.object = Some(Object::bytes(shown));
        ev.killed_in_kernel = true;
        ev
    }

    /// A successful open (`FLAG_TRACE_FILES`).
    fn open(&self, e: &k::SyscallEvent) -> Option<Event> {
        let name = syscalls::name_of(e.nr)?;
        let mut ev = self.base(&e.header, EventType::Open);
        let object = &e.object[..(e.object_len as usize).min(k::OBJECT_LEN)];
        ev.object = (e.object_kind == k::ARG_PATH).then(|| Object::path(c_bytes(object), false));
        ev.action = Some(match requested_access(name, &e.args) {
            Access::Write => "write",
            _ => "read",
        });
        ev.syscall = Some(name.to_string());
        ev.fd = Some(e.ret);
        Some(ev)
    }

    /// Whether a miss of `path` (sandbox-absolute, normalized) was the mount namespace hiding
    /// something: it exists on the host (or cannot be looked up safely), outside every grant and
    /// every `absent` path; or, for a create, the nearest directory above it that the host has is
    /// one the sandbox lacks (`/var/tmp/x`). The sandbox's `/dev` is built with a fixed content,
    /// so its grant does not excuse a miss there.
    fn hidden(&mut self, path: &Path, want: Access) -> bool {
        if self.granted(path).is_some() && !is_dev(path) {
            return false; // missing inside a granted tree
        }
        if self.absent.iter().any(|a| path.starts_with(a)) {
            return false; // declared absent: probing for it is expected
        }
        match self.host.presence(path) {
            Presence::Present => true,
            Presence::Unknown(why) => {
                // No benefit of the doubt outside the grants.
                tracing::debug!(path = %path.display(), "hidden path not looked up: {why}");
                true
            }
            // Exists nowhere: nothing was hidden, unless it was to be created below a
            // directory the host has and the sandbox does not.
            Presence::Absent => want == Access::Write && self.creates_below_hidden(path),
        }
    }

    fn creates_below_hidden(&mut self, path: &Path) -> bool {
        for dir in path.ancestors().skip(1) {
            if dir == Path::new("/") {
                return false;
            }
            if matches!(self.host.presence(dir), Presence::Absent) {
                continue;
            }
            // The nearest directory the host has: does the sandbox have it too?
            let in_sandbox = if is_dev(dir) {
                dir == Path::new("/dev") || self.root.exists(dir)
            } else {
                self.granted(dir).is_some() || self.grants.iter().any(|(g, _)| g.starts_with(dir))
            };
            return !in_sandbox;
        }
        false
    }

    /// Whether `path` names a process of the host: `/proc/N/...` with N above every pid the
    /// sandbox's clones were given (pids grow; one at or below may be its own exited child,
    /// whose number a host process may well share), and a process N on the host.
    fn host_process(&self, path: &Path) -> bool {
        let Some(pid) = proc_pid(path) else {
            return false;
        };
        let Some(high) = self.pids.as_ref().and_then(|p| p.highest()) else {
            return false;
        };
        pid > high.max(1) && Path::new("/proc").join(pid.to_string()).exists()
    }

    /// The open file a reopen by name leads to, as the host names it: `/dev/stdin`, `/dev/fd/N`,
    /// `/proc/self/fd/N`, `/proc/thread-self/fd/N` (read through the calling thread), or
    /// `/proc/PID/[task/TID/]fd/N` of a sandbox pid (read through the sandbox's own /proc).
    /// When that process is gone, descriptors 0 to 2 are the ones the sandbox inherited from
    /// this process. `None` for anything Landlock does not judge by path (a pipe, a socket).
    fn reopened(&mut self, tid: u32, path: &Path) -> Option<PathBuf> {
        let (who, fd) = fd_link(path)?;
        let live = match who {
            FdOwner::Caller => std::fs::read_link(format!("/proc/{tid}/fd/{fd}")).ok(),
            FdOwner::SandboxPid(p) => self.root.fd_target(p, fd),
        };
        let to = live.or_else(|| {
            (fd <= 2)
                .then(|| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok())
                .flatten()
        })?;
        to.is_absolute().then_some(to)
    }

    /// Whether the sandbox has `file` (a host path) with `want` granted: below a grant, and in
    /// `/dev` only the devices the shim built it with.
    fn grants_file(&mut self, file: &Path, want: Access) -> bool {
        let granted = self.granted(file).is_some_and(|g| covers(g, want));
        granted && (!is_dev(file) || self.root.exists(file))
    }

    /// Whether the grant that decides `path` (the deepest one above it) also allows execute.
    fn also_executable(&self, path: &Path) -> bool {
        self.nearest_grant(path)
            .is_some_and(|(p, _)| self.also_exec.contains(p))
    }

    /// The right granted at `path` (by its nearest granted ancestor), if any.
    fn granted(&self, path: &Path) -> Option<Access> {
        self.nearest_grant(path).map(|(_, a)| *a)
    }

    /// The grant that decides `path`: the deepest one above it.
    fn nearest_grant(&self, path: &Path) -> Option<&(PathBuf, Access)> {
        self.grants
            .iter()
            .filter(|(p, _)| path.starts_with(p))
            .max_by_key(|(p, _)| p.components().count())
    }
}

/// Below the sandbox's own `/dev` (built by the shim, not bound from the host).
fn is_dev(path: &Path) -> bool {
    path.starts_with("/dev")
}

/// N of `/proc/N/...`.
fn proc_pid(path: &Path) -> Option<u64> {
    let mut c = path.strip_prefix("/proc").ok()?.components();
    let n = c.next()?.as_os_str().to_str()?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

enum FdOwner {
    /// `self`, `thread-self`, `/dev/std*`, `/dev/fd`: the thread that made the call.
    Caller,
    /// A pid of the sandbox's own pid namespace.
    SandboxPid(u64),
}

/// Whose descriptor, and which, a path reopens (lexically; `path` is normalized).
fn fd_link(path: &Path) -> Option<(FdOwner, u32)> {
    let fd_of = |s: &std::ffi::OsStr| s.to_str()?.parse::<u32>().ok();
    let names: Vec<&std::ffi::OsStr> = path.components().skip(1).map(|c| c.as_os_str()).collect();
    let names: Vec<&str> = names.iter().map(|n| n.to_str()).collect::<Option<_>>()?;
    match names.as_slice() {
        ["dev", "stdin"] => Some((FdOwner::Caller, 0)),
        ["dev", "stdout"] => Some((FdOwner::Caller, 1)),
        ["dev", "stderr"] => Some((FdOwner::Caller, 2)),
        ["dev", "fd", n] => Some((FdOwner::Caller, fd_of(n.as_ref())?)),
        ["proc", "self" | "thread-self", "fd", n] => Some((FdOwner::Caller, fd_of(n.as_ref())?)),
        ["proc", "self", "task", _, "fd", n] => Some((FdOwner::Caller, fd_of(n.as_ref())?)),
        ["proc", p, "fd", n] | ["proc", p, "task", _, "fd", n] => {
            let pid = proc_pid(Path::new("/proc").join(p).as_path())?;
            Some((FdOwner::SandboxPid(pid), fd_of(n.as_ref())?))
        }
        _ => None,
    }
}

/// `/proc/self/root/REST`, `/proc/thread-self/root/REST` or `/proc/N/root/REST` as `/REST`.
fn proc_root_alias(path: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix("/proc").ok()?;
    let mut c = rest.components();
    let who = c.next()?.as_os_str().to_str()?;
    if !(who == "self" || who == "thread-self" || who.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    if c.next()?.as_os_str() != "root" {
        return None;
    }
    Some(Path::new("/").join(c.as_path()))
}

fn covers(granted: Access, want: Access) -> bool {
    matches!(
        (granted, want),
        (_, Access::Read) | (Access::Write, Access::Write) | (Access::Exec, Access::Exec)
    )
}

fn net_action(syscall: &str) -> Option<&'static str> {
    match syscall {
        "connect" => Some("connect"),
        "bind" => Some("bind"),
        "sendto" | "sendmsg" | "sendmmsg" => Some("sendto"),
        _ => None,
    }
}

/// The right a path syscall asks for.
fn requested_access(syscall: &str, args: &[u64; 6]) -> Access {
    let open_flags = |flags: u64| {
        let flags = flags as i32;
        // O_TMPFILE includes O_DIRECTORY: test all of its bits, or every opendir is a write.
        if flags & libc::O_ACCMODE != libc::O_RDONLY
            || flags & (libc::O_CREAT | libc::O_TRUNC) != 0
            || flags & libc::O_TMPFILE == libc::O_TMPFILE
        {
            Access::Write
        } else {
            Access::Read
        }
    };
    match syscall {
        "execve" | "execveat" | "uselib" => Access::Exec,
        "open" => open_flags(args[1]),
        "openat" => open_flags(args[2]),
        "stat" | "lstat" | "access" | "chdir" | "readlink" | "statfs" | "getxattr"
        | "lgetxattr" | "listxattr" | "llistxattr" | "newfstatat" | "statx" | "faccessat"
        | "faccessat2" | "readlinkat" | "name_to_handle_at" | "inotify_add_watch" | "openat2" => {
            Access::Read
        }
        _ => Access::Write,
    }
}

/// `path` without `.` and `..` components (lexically; the sandbox has no symlinks of its own
/// outside the granted trees).
fn access_word(want: Access) -> &'static str {
    match want {
        Access::Read => "read",
        Access::Write => "write",
        Access::Exec => "exec",
    }
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// For a copied `sockaddr_un`: whether it names a pathname socket (not an abstract one).
/// `None` for another family.
fn unix_pathname(sockaddr: &[u8]) -> Option<bool> {
    let family = u16::from_ne_bytes(sockaddr.get(0..2)?.try_into().ok()?);
    (family == libc::AF_UNIX as u16).then(|| sockaddr.get(2).is_some_and(|b| *b != 0))
}

fn protocol_name(p: u8) -> &'static str {
    match p {
        k::PROTO_TCP => "tcp",
        k::PROTO_UDP => "udp",
        _ => "ip",
    }
}

pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EDQUOT => "EDQUOT",
        _ => "E?",
    }
}

/// Which limit an errno of a call means (the kernel reports exactly these).
fn limit_name(syscall: &str, errno: i32) -> Option<&'static str> {
    match errno {
        libc::EAGAIN if matches!(syscall, "clone" | "clone3" | "fork" | "vfork") => Some("pids"),
        libc::EMFILE | libc::ENFILE => Some("nofile"),
        libc::EFBIG => Some("fsize"),
        libc::ENOSPC | libc::EDQUOT => Some("disk"),
        _ => None,
    }
}

/// The call a seccomp SIGSYS names: an x86_64 name, or the number in its own architecture.
fn sigsys_call(nr: i32, arch: u32) -> String {
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    const X32_SYSCALL_BIT: i32 = 0x4000_0000;
    match arch {
        AUDIT_ARCH_X86_64 if nr >= 0 && nr & X32_SYSCALL_BIT != 0 => {
            format!("x32 syscall {}", nr & !X32_SYSCALL_BIT)
        }
        AUDIT_ARCH_X86_64 => u32::try_from(nr)
            .ok()
            .and_then(syscalls::name_of)
            .map_or_else(|| format!("syscall {nr}"), str::to_string),
        AUDIT_ARCH_I386 => format!("i386 syscall {nr} (int 0x80)"),
        other => format!("syscall {nr} of architecture {other:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributor() -> Attributor {
        Attributor {
            seccomp: Vec::new(),
            grants: vec![(PathBuf::from("/usr"), Access::Read)],
            also_exec: Vec::new(),
            absent: Vec::new(),
            isolated: true,
            unix_hook: false,
            root: SandboxRoot::default(),
            first_of_two_violated: None,
            start_ns: 0,
            host: HostPaths::new(),
            pids: None,
        }
    }

    fn failed(name: &str, ret: i32, path: Option<&str>) -> RawEvent {
        // SAFETY: a plain C struct of integers and byte arrays: all zeroes is valid.
        let mut e: k::SyscallEvent = unsafe { std::mem::zeroed() };
        e.header.kind = k::EVENT_SYSCALL;
        e.header.pid = 4242;
        e.header.tid = 4242;
        e.nr = syscalls::lookup(name).unwrap();
        e.ret = ret;
        if let Some(p) = path {
            e.object_kind = k::ARG_PATH;
            e.object[..p.len()].copy_from_slice(p.as_bytes());
            e.object_len = p.len() as u32 + 1;
        }
        RawEvent::Syscall(Box::new(e))
    }

    /// A miss whose path the program could not read is counted (it may have named a hidden
    /// path), where a miss of a path that exists nowhere, or of no path at all, is not.
    #[test]
    fn a_miss_of_an_unreadable_path_counts() {
        let mut a = attributor();
        let enoent = -libc::ENOENT;
        let ev = a.attribute(&failed("openat", enoent, None)).unwrap();
        assert_eq!(ev.kind, EventType::Violation);
        assert_eq!(ev.layer, Some(Layer::Namespace));
        assert_eq!(ev.action, Some("read"));
        // The controls: a miss named and absent everywhere, inside a grant, and a call without
        // a path (an fd's fchdir) are not violations.
        let nowhere = "/stockade-no-such-path-anywhere";
        assert!(a
            .attribute(&failed("openat", enoent, Some(nowhere)))
            .is_none());
        assert!(a
            .attribute(&failed("openat", enoent, Some("/usr/none")))
            .is_none());
        assert!(a.attribute(&failed("fchdir", enoent, None)).is_none());
        // A hidden path that the host has, named: counted, with its name.
        let ev = a
            .attribute(&failed("openat", enoent, Some("/etc/passwd")))
            .unwrap();
        assert_eq!(ev.layer, Some(Layer::Namespace));
    }

    /// Under `tmp_exec` an exec refused in /tmp is the file's mode (the plugin's own doing), not
    /// a Landlock refusal; below a bind on top of /tmp (not compiled so, but judged by its own
    /// grant all the same) it is Landlock's.
    #[test]
    fn an_executable_tmp_excuses_execs_there_only() {
        let mut a = attributor();
        a.grants = vec![
            (PathBuf::from("/tmp"), Access::Write),
            (PathBuf::from("/tmp/state"), Access::Write),
        ];
        a.also_exec = vec![PathBuf::from("/tmp")];
        assert!(a.also_executable(Path::new("/tmp/target/build-script-build")));
        assert!(!a.also_executable(Path::new("/tmp/state/payload")));
        assert!(!a.also_executable(Path::new("/usr/bin/true")));
        let eacces = -libc::EACCES;
        let ev = a
            .attribute(&failed(
                "execve",
                eacces,
                Some("/tmp/target/build-script-build"),
            ))
            .unwrap();
        assert_eq!(
            (ev.kind, ev.layer),
            (EventType::Refused, Some(Layer::Permissions))
        );
        let ev = a
            .attribute(&failed("execve", eacces, Some("/tmp/state/payload")))
            .unwrap();
        assert_eq!(
            (ev.kind, ev.layer),
            (EventType::Violation, Some(Layer::Landlock))
        );
        a.also_exec.clear();
        let ev = a
            .attribute(&failed(
                "execve",
                eacces,
                Some("/tmp/target/build-script-build"),
            ))
            .unwrap();
        assert_eq!(ev.layer, Some(Layer::Landlock));
    }

    #[test]
    fn reopens_by_name_are_recognized() {
        let caller = |p: &str| match fd_link(Path::new(p)) {
            Some((FdOwner::Caller, fd)) => Some(fd),
            _ => None,
        };
        assert_eq!(caller("/dev/stdin"), Some(0));
        assert_eq!(caller("/dev/stderr"), Some(2));
        assert_eq!(caller("/dev/fd/7"), Some(7));
        assert_eq!(caller("/proc/self/fd/1"), Some(1));
        assert_eq!(caller("/proc/thread-self/fd/3"), Some(3));
        assert!(matches!(
            fd_link(Path::new("/proc/12/task/13/fd/4")),
            Some((FdOwner::SandboxPid(12), 4))
        ));
        for not in [
            "/proc/self/fdinfo/1",
            "/dev/fd",
            "/proc/self/fd/x",
            "/proc/12/fd",
            "/tmp/fd/1",
        ] {
            assert!(fd_link(Path::new(not)).is_none(), "{not}");
        }
        assert_eq!(proc_pid(Path::new("/proc/4242/status")), Some(4242));
        assert_eq!(proc_pid(Path::new("/proc/self/status")), None);
        assert_eq!(proc_pid(Path::new("/proc")), None);
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(
            normalize(Path::new("/tmp/../etc/./shadow")),
            Path::new("/etc/shadow")
        );
        assert_eq!(normalize(Path::new("/../..")), Path::new("/"));
    }

    #[test]
    fn open_flags_decide_the_right() {
        let ro = [0, 0, libc::O_RDONLY as u64, 0, 0, 0];
        let creat = [0, 0, (libc::O_WRONLY | libc::O_CREAT) as u64, 0, 0, 0];
        assert_eq!(requested_access("openat", &ro), Access::Read);
        assert_eq!(requested_access("openat", &creat), Access::Write);
        // opendir: O_DIRECTORY is part of O_TMPFILE's bits, and a read.
        let dir = [0, 0, (libc::O_RDONLY | libc::O_DIRECTORY) as u64, 0, 0, 0];
        assert_eq!(requested_access("openat", &dir), Access::Read);
        let tmpfile = [0, 0, (libc::O_RDWR | libc::O_TMPFILE) as u64, 0, 0, 0];
        assert_eq!(requested_access("openat", &tmpfile), Access::Write);
        assert_eq!(requested_access("execve", &ro), Access::Exec);
        assert_eq!(requested_access("unlink", &ro), Access::Write);
    }

    #[test]
    fn grants_cover_like_landlock() {
        assert!(covers(Access::Read, Access::Read));
        assert!(!covers(Access::Read, Access::Write));
        assert!(!covers(Access::Read, Access::Exec));
        assert!(covers(Access::Write, Access::Write));
        assert!(!covers(Access::Write, Access::Exec));
        assert!(covers(Access::Exec, Access::Exec));
        assert!(!covers(Access::Exec, Access::Write));
    }
}
