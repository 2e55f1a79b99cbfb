//! The maps every program shares, and small helpers over them.

use aya_ebpf::{
    btf_maps::{ArrayOfMaps, RingBuf},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_current_cgroup_id},
    macros::{btf_map, map},
    maps::{lpm_trie::Key, ring_buf::RingBufEntry, Array, HashMap, LpmTrie, PerCpuArray},
};
use stockade_ebpf_common::{
    EventHeader, IndexEntry, LsmGrantKey, MissKey, NetRules, SandboxConfig, UnixListedKey,
    COUNTERS, EVENTS_BYTES, FLAG_UNTRACED, INDEX_BUCKETS, INDEX_SHARED, LSM_OFFSETS_LEN,
    MAX_SANDBOXES, MAX_SLOTS, MISS_KEY_DATA, SYSCALL_NR_MAX, SYSCALL_SLOTS, UNIX_OFFSETS_LEN,
};

/// cgroup id -> the sandbox's configuration. No entry: not a sandbox.
#[map]
pub static SANDBOXES: HashMap<u64, SandboxConfig> = HashMap::with_max_entries(MAX_SANDBOXES, 0);

/// `cgroup_id % INDEX_BUCKETS` -> the sandbox there (see `IndexEntry`).
#[map]
pub static SANDBOX_INDEX: Array<IndexEntry> = Array::with_max_entries(INDEX_BUCKETS, 0);

/// cgroup id -> allowed destinations and local addresses.
#[map]
pub static NET_RULES: HashMap<u64, NetRules> = HashMap::with_max_entries(MAX_SANDBOXES, 0);

/// Per sandbox slot: `COUNTER_*`, per CPU. One element per slot, not per counter: the kernel
/// allocates per-CPU memory element by element, and tens of thousands of small elements cost
/// tens of milliseconds at every load.
#[map]
pub static COUNTER: PerCpuArray<[u64; COUNTERS as usize]> =
    PerCpuArray::with_max_entries(MAX_SLOTS, 0);

/// Per sandbox slot below `SYSCALL_SLOTS`: a count per syscall number, per CPU (4 KiB per slot
/// and CPU).
#[map]
pub static SYSCALLS: PerCpuArray<[u64; SYSCALL_NR_MAX as usize]> =
    PerCpuArray::with_max_entries(SYSCALL_SLOTS, 0);

/// Syscall number -> `ARG_*` (which argument to copy into a syscall event). Written at load.
#[map]
pub static PATH_ARGS: Array<u8> = Array::with_max_entries(SYSCALL_NR_MAX, 0);

/// Kernel struct offsets the sched programs need, from the kernel's BTF:
/// 0: task_struct.pid, 1: linux_binprm.filename.
#[map]
pub static TP_OFFSETS: Array<u32> = Array::with_max_entries(4, 0);

/// The thread whose call a network or LSM program just refused, per CPU, so that sys_exit does
/// not report the same EPERM or EACCES a second time.
#[map]
pub static DENIED_TID: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Inodes each sandbox may reach (the LSM programs' second wall): access bits `GRANT_*`.
#[map]
pub static LSM_GRANTS: HashMap<LsmGrantKey, u32> = HashMap::with_max_entries(MAX_SANDBOXES * 64, 0);

/// The sockets `[ipc] connect` lists, for the LSM unix programs: a pathname socket reached by any
/// name (a symlink included) is allowed if listed, or if it lies in a tree granted writable or on
/// a filesystem of the sandbox's own.
#[map]
pub static UNIX_LISTED: HashMap<UnixListedKey, u8> =
    HashMap::with_max_entries(MAX_SANDBOXES * 16, 0);

/// (cgroup id, directory path ending in `/`) -> 1: the directories a sandbox may read or execute
/// but not write. An ENOENT on an absolute path below one of them is a miss inside a granted,
/// read-only tree — never a violation — and is counted (`COUNTER_QUIET_MISSES`) instead of
/// sent, so that ordinary probing cannot fill the ring buffer.
#[map]
pub static MISS_TREES: LpmTrie<[u8; MISS_KEY_DATA], u8> =
    LpmTrie::with_max_entries(MAX_SANDBOXES * 32, 0);

/// Per CPU: the path of the syscall being reported, read once from the plugin's memory, judged
/// against `MISS_TREES` (it is laid out as that trie's key) and copied into the event from here.
#[map]
pub static PATH_SCRATCH: PerCpuArray<MissKey> = PerCpuArray::with_max_entries(1, 0);

/// Kernel struct offsets (`OFF_*`), from the kernel's BTF.
#[map]
pub static LSM_OFFSETS: Array<u32> = Array::with_max_entries(LSM_OFFSETS_LEN, 0);

/// (cgroup id, unix socket path) -> 1: the pathname sockets a sandbox may connect and send to.
/// Each `[ipc] connect` path is stored with its NUL (only that exact name matches), each writable
/// tree with a trailing `/` (every name below it matches). Laid out like `MISS_TREES`.
#[map]
pub static UNIX_PATHS: LpmTrie<[u8; MISS_KEY_DATA], u8> =
    LpmTrie::with_max_entries(MAX_SANDBOXES * 32, 0);

/// `OFF_SOCK_ADDR_KERN_*`: where the unix socket programs find the address in their context,
/// from the kernel's BTF.
#[map]
pub static UNIX_OFFSETS: Array<u32> = Array::with_max_entries(UNIX_OFFSETS_LEN, 0);

/// Every event, to the supervisor of its sandbox: one ring buffer per slot, read only by the
/// supervisor that owns the slot (the programs are shared by every supervisor of the host). 2 MiB
/// each: about 32 000 network denials or 5 800 syscall denials between two reads; what does not
/// fit, or has no ring buffer at its slot, is counted in `COUNTER_DROPPED`. One sandbox's flood
/// never fills another's.
#[btf_map]
pub static EVENTS: ArrayOfMaps<RingBuf<u8, EVENTS_BYTES>, { MAX_SLOTS as usize }> =
    ArrayOfMaps::new();

/// A record of type `T` in the ring buffer of `slot`.
#[inline(always)]
pub fn reserve<T: 'static>(slot: u32) -> Option<RingBufEntry<T>> {
    EVENTS.get(slot)?.reserve_untyped::<T>(0)
}

#[inline(always)]
pub fn current_cgroup() -> u64 {
    // SAFETY: a helper without arguments; every program type used here may call it.
    unsafe { bpf_get_current_cgroup_id() }
}

#[inline(always)]
pub fn bump(slot: u32, counter: u32) {
    if let Some(c) = COUNTER.get_ptr_mut(slot) {
        // SAFETY: this CPU's copy: no other program touches it while this one runs here.
        if let Some(n) = unsafe { (*c).get_mut(counter as usize) } {
            *n += 1;
        }
    }
}

/// The slot and flags of the sandbox `cg`, if it is one: first the direct-mapped index (an inlined array
/// lookup), the hash map only for a bucket two sandboxes share.
#[inline(always)]
pub fn sandbox_slot(cg: u64) -> Option<(u32, u32)> {
    let e = SANDBOX_INDEX.get((cg % INDEX_BUCKETS as u64) as u32)?;
    if e.cgroup_id == cg {
        return Some((e.slot, e.flags));
    }
    if e.cgroup_id != INDEX_SHARED {
        return None;
    }
    // SAFETY: the value is only read.
    unsafe { SANDBOXES.get(&cg) }.map(|c| (c.slot, c.flags))
}

/// Marks the current thread as just refused (see `DENIED_TID`), for a sandbox with `flags`. Not
/// for an untraced sandbox: `sys_exit` returns before clearing its marks, and a mark left behind
/// could hide a later thread's refusal.
#[inline(always)]
pub fn mark_denied(flags: u32) {
    if flags & FLAG_UNTRACED != 0 {
        return;
    }
    if let Some(t) = DENIED_TID.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *t = bpf_get_current_pid_tgid() as u32 };
    }
}

#[inline(always)]
pub fn header(kind: u16, cgroup_id: u64) -> EventHeader {
    header_of(kind, cgroup_id, bpf_get_current_pid_tgid())
}

/// [`header`] without the current task (pid and tid 0), for programs that may not ask for it.
#[inline(always)]
pub fn header_anon(kind: u16, cgroup_id: u64) -> EventHeader {
    header_of(kind, cgroup_id, 0)
}

#[inline(always)]
fn header_of(kind: u16, cgroup_id: u64, pid_tgid: u64) -> EventHeader {
    EventHeader {
        kind,
        _pad: 0,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        _pad2: 0,
        cgroup_id,
        // SAFETY: a helper without arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// Whether the path in `key.data[8..]` has a `/..` starting before `limit` (see the common
/// crate's `walks_up`); every byte after the path's end must be zero.
#[inline(always)]
pub fn walks_up(key: &MissKey, limit: usize) -> bool {
    stockade_ebpf_common::walks_up(&key.data, limit)
}

/// Zeroes the path part of `key` (after the cgroup id), in words: the string helpers write one
/// NUL and leave the rest of the buffer as the last path left it. Volatile stores: LLVM would
/// turn a plain loop into a call of `memset`, a byte loop the 6.1 verifier walks 248 times
/// for every state that reaches it.
#[inline(always)]
pub fn clear_path(key: &mut MissKey) {
    let base = key.data.as_mut_ptr();
    let mut o = 8;
    while o + 8 <= MISS_KEY_DATA {
        // SAFETY: `o + 8 <= data.len()`: an unaligned 8-byte store inside `key.data`.
        unsafe { core::ptr::write_volatile(base.add(o).cast::<[u8; 8]>(), [0; 8]) };
        o += 8;
    }
}

/// `key` as the LPM trie key it is laid out as.
#[inline(always)]
pub fn lpm_key(key: &MissKey) -> &Key<[u8; MISS_KEY_DATA]> {
    // SAFETY: `MissKey` has the layout of `Key<[u8; MISS_KEY_DATA]>` (a u32 bit count, then the
    // data; asserted in the common crate); the reference lives as long as `key`.
    unsafe { &*(key as *const MissKey as *const Key<[u8; MISS_KEY_DATA]>) }
}
