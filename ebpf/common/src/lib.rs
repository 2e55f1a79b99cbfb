//! The types Stockade's eBPF programs share with the supervisor: map keys and values and the
//! records of the event ring buffer. Everything is `#[repr(C)]` with explicit padding, so both
//! sides agree byte for byte, and ring buffer records are multiples of 8 bytes.
//!
//! Every map is keyed by the sandbox's cgroup v2 id (the inode number of its cgroup directory,
//! what `bpf_get_current_cgroup_id()` returns). A cgroup without an entry in [`SandboxConfig`]'s
//! map is not Stockade's: the programs return at once for it.
#![no_std]

/// Buckets of `SANDBOX_INDEX`, the direct-mapped table the sys_exit program looks the current
/// cgroup up in (an array lookup the verifier inlines, where a hash lookup is a helper call: this
/// is the one program every syscall of the host passes).
pub const INDEX_BUCKETS: u32 = 1 << 16;
/// `IndexEntry::cgroup_id` of a bucket two sandboxes share: look in `SANDBOXES` instead.
pub const INDEX_SHARED: u64 = u64::MAX;

/// Sandboxes monitored at once on the host, by every supervisor together (map sizes).
pub const MAX_SANDBOXES: u32 = 1024;
/// Slots of the host's set (one per monitored sandbox): its counters and its ring buffer.
pub const MAX_SLOTS: u32 = 1024;
/// Slots that keep per-syscall counts (`SYSCALLS`: 4 KiB per slot and CPU, allocated up front, so
/// not for every slot): the first 64. A sandbox in a higher slot has its syscalls counted in
/// total only (`COUNTER_SYSCALLS`).
pub const SYSCALL_SLOTS: u32 = 64;
/// Slots whose ring buffer holds `EVENTS_BYTES`; the higher ones hold `EVENTS_BYTES_SMALL`.
pub const FULL_RING_SLOTS: u32 = 64;
/// Syscall numbers counted per sandbox (x86_64 numbers end below 512).
pub const SYSCALL_NR_MAX: u32 = 512;
/// Network rules per direction (connect, bind) and sandbox. The programs loop over this constant
/// and stop at `RuleSet::count` (the verifier rejects a loop bounded by a map value).
pub const MAX_RULES: usize = 32;
/// Networks excluded from one direction's rules (`RuleSet::exclusions`), each marking the rules
/// it applies to: a loop bound like `MAX_RULES`.
pub const MAX_EXCLUSIONS: usize = 32;
/// Bytes of a path or socket address copied into a [`SyscallEvent`].
pub const OBJECT_LEN: usize = 256;
/// Bytes of a file name copied into a [`ProcEvent`] (exec).
pub const FILENAME_LEN: usize = 128;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// `SandboxConfig::flags`: kill the offending process from the program itself (bpf_send_signal)
/// once the in-kernel window count reaches the threshold. Set in enforce mode with action kill.
pub const FLAG_KILL: u32 = 1;
/// `SandboxConfig::flags`: the sandbox uses the host network and has `NetRules`.
pub const FLAG_NET_RULES: u32 = 2;
/// `SandboxConfig::flags` and `IndexEntry::flags`: report every successful open as well, not
/// only failures (`stockade run --events`).
pub const FLAG_TRACE_FILES: u32 = 8;
/// `SandboxConfig::flags`: the BPF LSM programs enforce `LSM_GRANTS` for this sandbox once
/// `execs` reaches `lsm_after_execs` (from the plugin's first instruction: the set-up before it
/// opens host files that the plugin may not).
pub const FLAG_LSM: u32 = 4;
/// `SandboxConfig::flags` and `IndexEntry::flags`: the sandbox shares the host's network
/// namespace and `[ipc] bind_abstract` is false. No hook refuses a unix `bind` (there is no cgroup
/// unix bind hook, and BPF LSM `socket_bind` loads only where LSM programs do), so `sys_exit`
/// kills a process whose `bind` to an abstract name succeeded before it returns to user space:
/// it never listens nor answers on the name.
pub const FLAG_NO_ABSTRACT_BIND: u32 = 16;
/// The LSM unix programs judge the socket each connect or datagram of the sandbox reaches.
pub const FLAG_UNIX_REACHED: u32 = 32;
/// `SandboxConfig::flags` and `IndexEntry::flags`: `[monitor] syscall_tracepoint = false`:
/// `sys_exit` returns at once for the sandbox, as for a host process.
pub const FLAG_UNTRACED: u32 = 64;

/// `LsmGrantKey` access bits.
pub const GRANT_READ: u32 = 1;
pub const GRANT_WRITE: u32 = 2;
pub const GRANT_EXEC: u32 = 4;

/// Kernel struct offsets the LSM programs need (Rust eBPF has no CO-RE): read from the kernel's
/// BTF by the supervisor into `LSM_OFFSETS` at these indices.
pub const OFF_FILE_DENTRY: u32 = 0;
pub const OFF_FILE_MODE: u32 = 1;
pub const OFF_DENTRY_PARENT: u32 = 2;
pub const OFF_DENTRY_INODE: u32 = 3;
pub const OFF_DENTRY_NAME: u32 = 4;
pub const OFF_INODE_INO: u32 = 5;
pub const OFF_INODE_SB: u32 = 6;
pub const OFF_SB_DEV: u32 = 7;
pub const OFF_SB_USER_NS: u32 = 8;
pub const OFF_USERNS_LEVEL: u32 = 9;
pub const OFF_BPRM_FILE: u32 = 10;
pub const OFF_FILE_FLAGS: u32 = 11;
pub const OFF_SOCKET_SK: u32 = 12;
/// `sock.__sk_common.skc_family` (u16).
pub const OFF_SK_FAMILY: u32 = 13;
/// `sock.__sk_common.skc_num`: the local port in host order, 0 while unbound (u16).
pub const OFF_SK_NUM: u32 = 14;
/// `unix_sock.path` + `path.dentry`: the dentry of a bound pathname socket (NULL otherwise).
pub const OFF_UNIX_PATH_DENTRY: u32 = 15;
pub const LSM_OFFSETS_LEN: u32 = 16;
/// Directory levels the LSM programs walk up from a file looking for a grant.
pub const LSM_MAX_DEPTH: u32 = 32;

/// Bytes of each slot's ring buffer (an inner map of `EVENTS`, one per slot of the host's set,
/// created the first time the slot is used and kept while the set lives), for the first
/// `FULL_RING_SLOTS` slots.
pub const EVENTS_BYTES: usize = 2 << 20;
/// The ring buffer of a slot from `FULL_RING_SLOTS` on: a host running hundreds of sandboxes at
/// once (the daemon) keeps a quarter of a megabyte of kernel memory for each, not two.
pub const EVENTS_BYTES_SMALL: usize = 256 << 10;

/// Per-sandbox counters, per CPU (userspace sums): element `slot`, index `COUNTER_*`.
pub const COUNTERS: u32 = 15;
/// Denials by the cgroup network programs.
pub const COUNTER_NET_DENIED: u32 = 0;
/// Events that did not fit in the ring buffer (lost, and counted here).
pub const COUNTER_DROPPED: u32 = 1;
/// Syscalls not counted by number: out of the per-syscall array's range (none on x86_64 today),
/// or every syscall of a sandbox in a slot without per-syscall counts (`SYSCALL_SLOTS`).
pub const COUNTER_SYSCALLS: u32 = 2;
/// Processes and threads started (sched_process_fork).
pub const COUNTER_FORKS: u32 = 3;
/// Successful execs (sched_process_exec).
pub const COUNTER_EXECS: u32 = 4;
/// Syscalls that failed with one of the errnos the monitor reports (before any filtering).
pub const COUNTER_FAILED: u32 = 5;
/// Times the in-kernel threshold sent SIGKILL.
pub const COUNTER_KILLS: u32 = 6;
/// Denials by the BPF LSM programs.
pub const COUNTER_LSM_DENIED: u32 = 7;
/// Network denials whose event was dropped (part of `COUNTER_DROPPED`): with
/// `COUNTER_NET_DENIED` it proves that every network denial was received or counted.
pub const COUNTER_NET_DROPPED: u32 = 8;
/// Inbound packets dropped because they were addressed to a listening socket that no bind rule
/// covers. Not violations: the sender is outside the sandbox.
pub const COUNTER_INBOUND_DROPPED: u32 = 9;
/// Dropped events that may have been violations (network and LSM denials, and every failure
/// sys_exit reports: EPERM, EACCES, EROFS, ENOENT on a path): part of `COUNTER_DROPPED`. Each
/// counts as a violation, so that a plugin cannot hide one by filling the ring buffer first.
pub const COUNTER_DENIALS_DROPPED: u32 = 10;
/// ENOENTs on an absolute path inside a directory the sandbox may read but not write, decided
/// in the kernel (`MISS_TREES`) and never sent: what a loader, a compiler or an interpreter's
/// imports probe all day. Counted, so the report still shows how many there were.
pub const COUNTER_QUIET_MISSES: u32 = 11;
/// Calls seccomp ended with SIGSYS (kill, or an architecture other than x86_64): counted in the
/// kernel from `signal_generate`, since no syscall tracepoint sees a call seccomp killed.
pub const COUNTER_SECCOMP_KILLS: u32 = 12;
/// Resource limits reached (`LIMIT_*`): reported as events at the 1st, 2nd, 4th, 8th... time
/// on each CPU, counted every time.
pub const COUNTER_LIMITS: u32 = 13;
/// Not a count: the highest pid (or tid) a clone, fork or vfork of the sandbox returned, in the
/// sandbox's own pid namespace, on this CPU (userspace takes the largest). Pids are handed out
/// in increasing order, so a `/proc/N` above it names no process the sandbox ever had.
pub const COUNTER_PID_HIGH: u32 = 14;

/// `EventHeader::kind`.
pub const EVENT_NET_DENY: u16 = 1;
pub const EVENT_SYSCALL: u16 = 2;
pub const EVENT_FORK: u16 = 3;
pub const EVENT_EXEC: u16 = 4;
pub const EVENT_EXIT: u16 = 5;
pub const EVENT_LSM_DENY: u16 = 6;
/// seccomp sent SIGSYS for a call ([`SigsysEvent`]).
pub const EVENT_SIGSYS: u16 = 7;
/// The cgroup unix socket programs refused a connect or sendmsg ([`UnixDenyEvent`]).
pub const EVENT_UNIX_DENY: u16 = 8;

/// `NetDenyEvent::hook`.
pub const HOOK_CONNECT4: u8 = 1;
pub const HOOK_CONNECT6: u8 = 2;
pub const HOOK_SENDMSG4: u8 = 3;
pub const HOOK_SENDMSG6: u8 = 4;
pub const HOOK_BIND4: u8 = 5;
pub const HOOK_BIND6: u8 = 6;
/// A TCP socket started listening on a local address no bind rule covers (an implicit bind:
/// `listen()` without `bind()` takes an ephemeral port and runs no bind hook). Its inbound
/// connections are dropped by the ingress program; the event is the plugin's attempt.
pub const HOOK_LISTEN4: u8 = 7;
pub const HOOK_LISTEN6: u8 = 8;
/// The `outbound` program dropped a packet that would not go where its call said: an IPv4
/// packet with options (a source route), an IPv6 packet with a routing header. `addr` is the
/// packet's destination field (for IPv6, the routing header's first hop).
pub const HOOK_EGRESS4: u8 = 9;
pub const HOOK_EGRESS6: u8 = 10;

/// `UnixDenyEvent::hook`.
pub const HOOK_UNIX_CONNECT: u8 = 1;
pub const HOOK_UNIX_SENDMSG: u8 = 2;

/// Bytes of `UnixDenyEvent::path`: a `sun_path` (108 bytes) and its NUL, rounded up to 8.
pub const UNIX_PATH_LEN: usize = 112;
/// Kernel struct offsets the unix socket programs need, from the kernel's BTF (`UNIX_OFFSETS`):
/// `bpf_sock_addr_kern.uaddr` and `.uaddrlen`, what the programs' context points to at run time.
pub const OFF_SOCK_ADDR_KERN_UADDR: u32 = 0;
pub const OFF_SOCK_ADDR_KERN_UADDRLEN: u32 = 1;
pub const UNIX_OFFSETS_LEN: u32 = 2;

/// `LsmDenyEvent::hook`.
pub const LSM_FILE_OPEN: u8 = 1;
pub const LSM_BPRM_CHECK: u8 = 2;
/// `unix_stream_connect`: a stream connect to a pathname socket.
pub const LSM_UNIX_CONNECT: u8 = 3;
/// `unix_may_send`: a datagram to a pathname socket.
pub const LSM_UNIX_SEND: u8 = 4;

/// Bytes of a socket's own name in `UnixListedKey`.
pub const UNIX_NAME_LEN: usize = 64;

/// `PATH_ARGS` values: which argument of a syscall is worth copying into its event.
/// 0: none; `ARG_PATH | i`: argument `i` is a path; `ARG_SOCKADDR | i`: argument `i` points to a
/// socket address.
pub const ARG_PATH: u8 = 0x10;
pub const ARG_SOCKADDR: u8 = 0x20;
/// With `ARG_PATH`: the syscall opens a file (open, openat, openat2, creat); with
/// `FLAG_TRACE_FILES` its successes are events too.
pub const ARG_OPENS: u8 = 0x40;
/// With `ARG_SOCKADDR`: argument `i` points to a `struct msghdr` (or `mmsghdr`), whose first
/// field points to the socket address (sendmsg, sendmmsg).
pub const ARG_MSGHDR: u8 = 0x80;

/// What the supervisor tells the programs about one sandbox (value of `SANDBOXES`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SandboxConfig {
    /// Index into the counter arrays, `< MAX_SLOTS`.
    pub slot: u32,
    /// `FLAG_*`.
    pub flags: u32,
    /// Violations within `window_ns` that end the plugin (enforce mode, action kill).
    pub threshold: u32,
    /// In-kernel window state (approximate: a fixed window opened by its first violation and
    /// updated without atomics; the supervisor keeps the exact sliding window). The approximation
    /// can only count fewer violations, so the program never kills before the policy says so.
    pub window_count: u32,
    pub window_ns: u64,
    pub window_start_ns: u64,
    /// Execs seen in the sandbox (sched_process_exec).
    pub execs: u32,
    /// `FLAG_LSM` enforcement starts when `execs` reaches this (1: the plugin is the first exec;
    /// 2: a shim binary is executed first).
    pub lsm_after_execs: u32,
}

/// Value of `SANDBOX_INDEX`, at bucket `cgroup_id % INDEX_BUCKETS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexEntry {
    /// The sandbox's cgroup id, 0 for an empty bucket, `INDEX_SHARED` for a shared one.
    pub cgroup_id: u64,
    pub slot: u32,
    /// The sandbox's `FLAG_*`.
    pub flags: u32,
}

/// Bytes of `MissKey::data`: the sandbox's cgroup id (8 bytes, little-endian) then the path.
/// An LPM trie's key data is at most 256 bytes.
pub const MISS_KEY_DATA: usize = 256;
/// Bytes of a path `MissKey` can hold.
pub const MISS_PATH_LEN: usize = MISS_KEY_DATA - 8;

/// Key of `MISS_TREES`, an LPM trie: the sandbox's cgroup id, then a directory path ending in
/// `/`. The trie answers the longest stored prefix of a looked-up path, so a path below a
/// stored directory finds it. Laid out as aya's `lpm_trie::Key<[u8; MISS_KEY_DATA]>`
/// (`prefix_len` in bits, then the data).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MissKey {
    pub prefix_len: u32,
    pub data: [u8; MISS_KEY_DATA],
}

/// Key of `LSM_GRANTS`: an inode the policy grants (a bind-mount source or a file), by the
/// kernel's device number (`MAJOR << 20 | MINOR`) and inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LsmGrantKey {
    pub cgroup_id: u64,
    pub ino: u64,
    pub dev: u32,
    pub _pad: u32,
}

/// Key of `UNIX_LISTED`: a socket `[ipc] connect` lists, by its directory (device, inode) and its
/// own name, so that a daemon that binds its socket again (a new inode) is still the listed one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnixListedKey {
    pub cgroup_id: u64,
    pub parent_ino: u64,
    pub dev: u32,
    pub _pad: u32,
    /// NUL-padded.
    pub name: [u8; UNIX_NAME_LEN],
}

/// One allowed destination (connect, sendmsg) or local address (bind).
///
/// Addresses and masks are 32-bit words holding network-order bytes, exactly as the kernel hands
/// them to a `cgroup_sock_addr` program (an IPv4 rule uses word 0). A socket address matches when
/// `addr[i] & mask[i] == rule.addr[i]` for every word, `port_lo <= port <= port_hi` (host order)
/// and the protocol is equal.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub addr: [u32; 4],
    pub mask: [u32; 4],
    pub port_lo: u16,
    pub port_hi: u16,
    pub family: u8,
    pub protocol: u8,
    pub _pad: [u8; 2],
}

/// A network some rules of a [`RuleSet`] do not cover (their `except`): a socket address inside
/// it matches none of the rules whose bit is set in `rules` (bit `i`: `RuleSet::rules[i]`),
/// whatever those rules' own prefixes. Same word layout as [`Rule`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exclusion {
    pub addr: [u32; 4],
    pub mask: [u32; 4],
    pub rules: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}

/// One direction's allow list: an address is allowed when a rule matches it and no exclusion
/// that matches it marks that rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RuleSet {
    pub count: u32,
    pub exclusion_count: u32,
    pub rules: [Rule; MAX_RULES],
    pub exclusions: [Exclusion; MAX_EXCLUSIONS],
}

/// Value of `NET_RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetRules {
    pub connect: RuleSet,
    pub bind: RuleSet,
}

/// The start of every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// `EVENT_*`.
    pub kind: u16,
    pub _pad: u16,
    /// Thread group id (the process id on the host).
    pub pid: u32,
    /// Thread id on the host.
    pub tid: u32,
    pub _pad2: u32,
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub timestamp_ns: u64,
}

/// A cgroup network program refused a connect, sendmsg or bind (errno EPERM for the caller).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetDenyEvent {
    pub header: EventHeader,
    /// Destination (or local address for bind), network-order words as in `Rule::addr`.
    pub addr: [u32; 4],
    /// Host order.
    pub port: u16,
    pub family: u8,
    pub protocol: u8,
    /// `HOOK_*`.
    pub hook: u8,
    /// 1 when this denial made the program send SIGKILL.
    pub killed: u8,
    /// 1 when the BPF LSM refused the call itself (`socket_listen`), rather than a cgroup program.
    pub lsm: u8,
    pub _pad: u8,
}

/// A syscall of a sandboxed process returned EPERM, EACCES, EROFS, or ENOENT for a path; or,
/// with `FLAG_TRACE_FILES`, a file was opened (`ret` is then the descriptor).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallEvent {
    pub header: EventHeader,
    pub nr: u32,
    /// The negative errno the syscall returned (or the new descriptor of an open).
    pub ret: i32,
    /// The six argument registers (di, si, dx, r10, r8, r9), as seccomp saw them.
    pub args: [u64; 6],
    /// `ARG_*` of the copied object; 0 when `object` is empty.
    pub object_kind: u8,
    pub _pad: [u8; 3],
    /// Bytes copied into `object` (a path includes its NUL).
    pub object_len: u32,
    pub object: [u8; OBJECT_LEN],
}

/// seccomp ended a call with SIGSYS (`SECCOMP_RET_KILL_*`, and every call of another
/// architecture, which the filter kills): the process dies before any syscall tracepoint runs.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SigsysEvent {
    pub header: EventHeader,
    /// `si_syscall`: the call's number in its architecture's table.
    pub nr: i32,
    /// `si_arch`: `AUDIT_ARCH_*` (x86_64 0xc000003e, i386 0x40000003).
    pub arch: u32,
}

/// fork, exec or exit of a sandboxed process or thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub header: EventHeader,
    /// fork: the new task's tid; exec: the old tid; exit: 0.
    pub other: u32,
    pub _pad: u32,
    /// exec: the file name as passed to exec, NUL-terminated.
    pub filename: [u8; FILENAME_LEN],
}

/// A BPF LSM program refused an open or an exec (errno EACCES for the caller).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LsmDenyEvent {
    pub header: EventHeader,
    /// `LSM_*`.
    pub hook: u8,
    pub _pad: [u8; 3],
    /// The file's `f_mode` (FMODE_READ 1, FMODE_WRITE 2, FMODE_EXEC 0x20).
    pub mode: u32,
    pub dev: u64,
    pub ino: u64,
    /// The file's own name (its last path component), NUL-terminated.
    pub name: [u8; FILENAME_LEN],
}

/// A cgroup unix socket program refused a connect or a sendmsg to a pathname socket (errno
/// EPERM for the caller): a name neither `[ipc] connect` lists nor below a writable tree, a
/// relative name, or one with `/..`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnixDenyEvent {
    pub header: EventHeader,
    /// `HOOK_UNIX_*`.
    pub hook: u8,
    pub _pad: [u8; 3],
    /// Bytes of `path` before its NUL.
    pub path_len: u32,
    /// The socket's name as the caller gave it (`sun_path` up to the address length or the first
    /// NUL), NUL-terminated.
    pub path: [u8; UNIX_PATH_LEN],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all): plain old data without implicit padding; every bit pattern is a valid value.
    unsafe impl aya::Pod for super::SandboxConfig {}
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::Exclusion {}
    unsafe impl aya::Pod for super::RuleSet {}
    unsafe impl aya::Pod for super::NetRules {}
    unsafe impl aya::Pod for super::LsmGrantKey {}
    unsafe impl aya::Pod for super::UnixListedKey {}
    unsafe impl aya::Pod for super::IndexEntry {}
}

const _: () = assert!(core::mem::size_of::<SandboxConfig>() == 40);
const _: () = assert!(core::mem::size_of::<MissKey>() == 4 + MISS_KEY_DATA);
const _: () = assert!(core::mem::size_of::<LsmGrantKey>() == 24);
const _: () = assert!(core::mem::size_of::<UnixListedKey>() == 24 + UNIX_NAME_LEN);
const _: () = assert!(core::mem::size_of::<Rule>() == 40);
const _: () = assert!(core::mem::size_of::<Exclusion>() == 40);
const _: () = assert!(core::mem::size_of::<RuleSet>() == 8 + 40 * MAX_RULES + 40 * MAX_EXCLUSIONS);
// `Exclusion::rules` has one bit per rule.
const _: () = assert!(MAX_RULES <= 32);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 32);
const _: () = assert!(core::mem::size_of::<NetDenyEvent>() == 32 + 24);
const _: () = assert!(core::mem::size_of::<SyscallEvent>() == 32 + 8 + 48 + 8 + OBJECT_LEN);
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 32 + 8 + FILENAME_LEN);
const _: () = assert!(core::mem::size_of::<SigsysEvent>() == 32 + 8);
const _: () = assert!(core::mem::size_of::<LsmDenyEvent>() == 32 + 24 + FILENAME_LEN);
const _: () = assert!(core::mem::size_of::<UnixDenyEvent>() == 32 + 8 + UNIX_PATH_LEN);

/// Whether the path in `data[8..]` (after a `MissKey`'s cgroup id) holds a `/..` that starts
/// before `limit`: such a path could walk up out of the tree it names. Every byte after the
/// path's end must be zero (a `/..` never contains a NUL, so zeros end the search by
/// themselves); a `/..` starting at or after `limit`, up to five bytes past it, may also count
/// (the safe side: the path goes to the supervisor).
///
/// Eight bytes at a time, in windows 6 bytes apart (each judges the `/..` starting in its first
/// six bytes, which it holds whole), with no branch and no early exit: one path through 41
/// windows for the verifier, where a byte-by-byte loop ending at the path's end was a path per
/// length (31,000 instructions processed at each load of `sys_exit` on 6.18, and more than the
/// million allowed on 6.1).
#[inline(always)]
pub fn walks_up(data: &[u8; MISS_KEY_DATA], limit: usize) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    /// The high bit of a window's first six bytes: the starts it judges.
    const STARTS: u64 = 0x0000_8080_8080_8080;
    // The high bit of each byte of `w` that equals `b`, exactly (no carry between bytes).
    #[inline(always)]
    fn equal_bytes(w: u64, b: u8) -> u64 {
        let x = w ^ (ONES * b as u64);
        !(((x & LOW7) + LOW7) | x | LOW7)
    }
    let mut found = 0u64;
    let mut o = 8;
    while o + 8 <= MISS_KEY_DATA && o < limit {
        // SAFETY: `o + 8 <= data.len()`; an unaligned read of initialized bytes.
        let w =
            u64::from_le(unsafe { core::ptr::read_unaligned(data.as_ptr().add(o).cast::<u64>()) });
        let dot = equal_bytes(w, b'.');
        found |= equal_bytes(w, b'/') & (dot >> 8) & (dot >> 16) & STARTS;
        o += 6;
    }
    found != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-by-byte definition.
    fn naive(data: &[u8; MISS_KEY_DATA], end: usize, limit: usize) -> bool {
        (8..end.min(limit)).any(|i| data.get(i..i + 3) == Some(b"/.."))
    }

    #[test]
    fn walks_up_matches_the_byte_by_byte_definition() {
        // Every placement of "/.." and near misses, at every length, over a noisy background,
        // zero after the path's end as the callers guarantee.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..20000 {
            let mut data = [0u8; MISS_KEY_DATA];
            let end = 8 + (next() as usize % (MISS_KEY_DATA - 9));
            for b in data[8..end].iter_mut() {
                *b = b"/.a"[(next() % 3) as usize];
            }
            if round % 2 == 0 && end > 11 {
                let at = 8 + (next() as usize % (end - 11));
                data[at..at + 3].copy_from_slice(b"/..");
            }
            let limit = if round % 3 == 0 {
                8 + 108
            } else {
                MISS_KEY_DATA - 2
            };
            let want = naive(&data, end, limit);
            let got = walks_up(&data, limit);
            let past_limit = naive(&data, end, limit + 6);
            assert!(
                got == want || (got && past_limit),
                "end {end} limit {limit}"
            );
        }
        let mut data = [0u8; MISS_KEY_DATA];
        data[8..8 + 14].copy_from_slice(b"/usr/lib/..x/y");
        assert!(walks_up(&data, MISS_KEY_DATA - 2));
        data[8..8 + 14].copy_from_slice(b"/usr/lib/.x/.y");
        assert!(!walks_up(&data, MISS_KEY_DATA - 2));
        // At the very end of the key.
        let mut data = [b'a'; MISS_KEY_DATA];
        data[MISS_KEY_DATA - 3..].copy_from_slice(b"/..");
        assert!(walks_up(&data, MISS_KEY_DATA - 2));
    }
}
