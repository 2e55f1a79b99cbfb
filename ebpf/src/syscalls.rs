//! `raw_tracepoint/sys_exit`: every syscall of a sandboxed process is counted by number, and every one
//! that fails with EPERM, EACCES, EROFS, ENOENT (when it names a path or a unix socket's address)
//! or ENETUNREACH (connect, sendto) becomes an event with its argument registers and, where it has
//! one, its path or socket address (both paths of link and rename, the second as an event of its
//! own). A resource limit reached (EAGAIN from a fork, EMFILE, ENFILE, EFBIG, ENOSPC, EDQUOT) is
//! counted and sent at the 1st, 2nd, 4th... time per CPU. The supervisor decides which layer
//! refused it (it re-runs the sandbox's own seccomp filter on the registers, and knows the
//! policy's paths).
//!
//! It also keeps the highest pid a clone of the sandbox returned (`COUNTER_PID_HIGH`): the
//! supervisor tells a `/proc/N` of the sandbox's own past from a reach for a host process.
//!
//! One action is taken here: on the host network with `[ipc] bind_abstract = false`, a process
//! whose bind to an abstract unix name succeeded is killed before the call returns
//! (`FLAG_NO_ABSTRACT_BIND`).
//!
//! One decision is made here instead: an ENOENT on an absolute path below a directory the
//! sandbox may read but not write (`MISS_TREES`) is counted and dropped. Loaders, compilers and
//! interpreters probe such paths by the thousand; sent as events they filled the ring buffer,
//! and the fail-closed count of dropped denials then killed honest plugins.
//!
//! Why sys_exit: it runs also for a syscall that seccomp refused (sys_enter does not), after
//! Landlock, the mount table and the LSMs have answered, so one program sees the answer of every
//! layer. Its price: while any syscall tracepoint is attached every thread of the host takes the
//! slow syscall path (measured in docs/benchmarks.md). The supervisor attaches it only while a
//! sandbox that wants it runs (`[monitor] syscall_tracepoint`); for one that does not
//! (`FLAG_UNTRACED`) it returns at once, as for a host process.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
        bpf_probe_read_user, bpf_probe_read_user_buf, bpf_probe_read_user_str_bytes,
        generated::bpf_send_signal,
    },
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, ProgramArray},
    programs::RawTracePointContext,
};
use stockade_ebpf_common::{
    MissKey, SyscallEvent, ARG_MSGHDR, ARG_OPENS, ARG_PATH, ARG_SOCKADDR, COUNTER_DENIALS_DROPPED,
    COUNTER_DROPPED, COUNTER_FAILED, COUNTER_KILLS, COUNTER_LIMITS, COUNTER_PID_HIGH,
    COUNTER_QUIET_MISSES, COUNTER_SYSCALLS, EVENT_SYSCALL, FLAG_NO_ABSTRACT_BIND, FLAG_TRACE_FILES,
    FLAG_UNTRACED, MISS_KEY_DATA, MISS_PATH_LEN, SYSCALL_NR_MAX,
};

use crate::maps::{
    bump, clear_path, current_cgroup, header, lpm_key, reserve, sandbox_slot, walks_up, COUNTER,
    DENIED_TID, MISS_TREES, PATH_ARGS, PATH_SCRATCH, SYSCALLS,
};

const EPERM: i64 = 1;
const ENOENT: i64 = 2;
const EAGAIN: i64 = 11;
const EACCES: i64 = 13;
const ENFILE: i64 = 23;
const EMFILE: i64 = 24;
const EFBIG: i64 = 27;
const ENOSPC: i64 = 28;
const EROFS: i64 = 30;
const ENETUNREACH: i64 = 101;
const EDQUOT: i64 = 122;

/// `path_len` when no path was copied.
const NO_PATH: usize = usize::MAX;

const NR_BIND: u32 = 49;
const AF_UNIX: u16 = 1;
const SIGKILL: u32 = 9;
const NR_RENAME: u32 = 82;
const NR_LINK: u32 = 86;
const NR_RENAMEAT: u32 = 264;
const NR_LINKAT: u32 = 265;
const NR_RENAMEAT2: u32 = 316;
const NR_CLONE: u32 = 56;
const NR_FORK: u32 = 57;
const NR_VFORK: u32 = 58;
const NR_CLONE3: u32 = 435;

/// Offsets (in u64 words) of `struct pt_regs` on x86_64: the argument registers di, si, dx, r10,
/// r8, r9 and orig_ax (the syscall number). This layout is the ptrace ABI and does not change.
const REG_ARGS: [usize; 6] = [14, 13, 12, 7, 9, 8];
const REG_ORIG_AX: usize = 15;

/// Bytes of a socket address worth copying: a whole `sockaddr_un` (its path is judged like any
/// other), or, when that much cannot be read (an inet address at the end of a page), a
/// `sockaddr_in6`.
const SOCKADDR_UN_LEN: usize = 110;
const SOCKADDR_LEN: usize = 28;

/// Raises this CPU's `COUNTER_PID_HIGH` of the sandbox to `pid`.
#[inline(always)]
fn note_pid(slot: u32, pid: u64) {
    if let Some(c) = COUNTER.get_ptr_mut(slot) {
        // SAFETY: this CPU's copy; `get_mut`, not indexing (see `SYSCALLS` below).
        if let Some(high) = unsafe { (*c).get_mut(COUNTER_PID_HIGH as usize) } {
            if pid > *high {
                *high = pid;
            }
        }
    }
}

#[inline(always)]
fn reg(regs: *const u64, word: usize) -> u64 {
    // SAFETY: `regs` is the tracepoint's `struct pt_regs *`; bpf_probe_read_kernel checks the
    // access and answers an error instead of faulting.
    unsafe { bpf_probe_read_kernel(regs.add(word)) }.unwrap_or(u64::MAX)
}

/// Argument `i` (0 to 5) of the call, read again from the registers rather than indexed in a
/// copy on the stack: kernels before 6.3 or so refuse a read from the stack at an offset only
/// known at run time ("invalid variable-offset read from stack"). The register's word comes from
/// `REG_ARGS` packed four bits each into one immediate: a table in `.rodata` would be a map the
/// 6.1 verifier lost the index's bound on.
#[inline(always)]
fn arg(regs: *const u64, i: usize) -> u64 {
    const PACKED: u64 = {
        let mut packed = 0u64;
        let mut k = 0;
        while k < 6 {
            packed |= (REG_ARGS[k] as u64) << (4 * k);
            k += 1;
        }
        packed
    };
    let word = (PACKED >> (4 * (i & 7))) & 0xf;
    reg(regs, word as usize)
}

/// A raw tracepoint rather than tp_btf: the same dispatch in the kernel, but loading it needs
/// no kernel BTF in userspace (parsing it costs about 10 ms per load).
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let cg = current_cgroup();
    let Some((slot, flags)) = sandbox_slot(cg) else {
        return 0;
    };
    if flags & FLAG_UNTRACED != 0 {
        return 0;
    }
    let regs: *const u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    let nr = reg(regs, REG_ORIG_AX) as u32;
    let by_number = if nr < SYSCALL_NR_MAX {
        SYSCALLS.get_ptr_mut(slot)
    } else {
        None
    };
    if let Some(c) = by_number {
        // SAFETY: this CPU's copy. `get_mut`, not indexing: a bounds-check panic path would
        // make the verifier reject the program.
        if let Some(n) = unsafe { (*c).get_mut(nr as usize) } {
            *n += 1;
        }
    } else {
        // Not a call of the table (x32 calls, `syscall(-1)`), or a slot without per-syscall
        // counts: counted in total; a failed one is reported below like any other.
        bump(slot, COUNTER_SYSCALLS);
    }
    // Reported already by the network or LSM program that refused this thread's call? The mark
    // is cleared at this thread's next syscall exit whatever it returned, before any early
    // return, so that a call a program refused but that still returned success (sendmmsg with
    // one message sent) cannot leave a mark that would hide a later, unrelated denial.
    let mut suppressed = false;
    if let Some(t) = DENIED_TID.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe {
            if *t != 0 && *t == header(0, 0).tid {
                *t = 0;
                suppressed = ret == -EPERM || ret == -EACCES;
            }
        }
    }
    let what;
    let mut abstract_bound = false;
    if ret > 0 && matches!(nr, NR_CLONE | NR_FORK | NR_VFORK | NR_CLONE3) {
        // A new process or thread, numbered in the caller's pid namespace: the sandbox's.
        note_pid(slot, ret as u64);
    }
    if ret >= 0 {
        if nr == NR_BIND && flags & FLAG_NO_ABSTRACT_BIND != 0 && binds_abstract(regs) {
            // SAFETY: a helper taking a signal number; the signal goes to the current task's
            // process, which is the one that just bound.
            unsafe { bpf_send_signal(SIGKILL) };
            bump(slot, COUNTER_KILLS);
            abstract_bound = true;
            what = PATH_ARGS.get(nr).copied().unwrap_or(0);
        } else {
            // A success: an event only for an open, and only when every open is traced.
            if flags & FLAG_TRACE_FILES == 0 {
                return 0;
            }
            what = PATH_ARGS.get(nr).copied().unwrap_or(0);
            if what & ARG_OPENS == 0 {
                return 0;
            }
        }
    } else if limit_reached(nr, ret) {
        // Not a refusal: an event at the 1st, 2nd, 4th... time on this CPU, so that a plugin
        // looping on a full descriptor table cannot flood the buffer; all are counted.
        what = PATH_ARGS.get(nr).copied().unwrap_or(0);
        if !count_limit(slot) {
            return 0;
        }
    } else {
        if ret != -EPERM && ret != -EACCES && ret != -EROFS && ret != -ENOENT && ret != -ENETUNREACH
        {
            return 0;
        }
        what = PATH_ARGS.get(nr).copied().unwrap_or(0);
        // ENOENT names a path: a file's, or a unix socket's in the address of a connect or a
        // sendto (the supervisor judges whether something was hidden there).
        if ret == -ENOENT && what & (ARG_PATH | ARG_SOCKADDR) == 0 {
            return 0;
        }
        // No route: in an empty network namespace, a datagram's or a connection's attempt.
        if ret == -ENETUNREACH && what & ARG_SOCKADDR == 0 {
            return 0;
        }
        bump(slot, COUNTER_FAILED);
    }
    if suppressed {
        return 0;
    }
    let refusal = (ret < 0 && !limit_reached(nr, ret)) || abstract_bound;
    // The event is built by `sys_exit_report`, a program of its own reached by a tail call: the
    // verifier judges each half alone, where one program with every branch of both was more
    // states than 6.1's verifier allows (and costlier to verify everywhere).
    let Some(p) = PENDING.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's element, read by the program tail-called next on this CPU.
    unsafe {
        *p = Pending {
            cg,
            ret,
            pid_tgid: bpf_get_current_pid_tgid(),
            slot,
            nr,
            what: what as u32,
            refusal: refusal as u32,
        };
    }
    // SAFETY: the context is this program's; on success the call does not return.
    unsafe { REPORT.tail_call(&ctx, 0) };
    // The report program is missing (a kernel that refused it, or the array emptied): lost.
    bump(slot, COUNTER_DROPPED);
    if refusal {
        bump(slot, COUNTER_DENIALS_DROPPED);
    }
    0
}

/// What `sys_exit` decided, for `sys_exit_report` on the same CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    cg: u64,
    ret: i64,
    /// `bpf_get_current_pid_tgid()` of the writer. The kernel does not run `sys_exit` twice at
    /// once on a CPU (it skips the second run, counted in `recursion_misses`), so no other
    /// thread writes here between the write and the report's read; checked all the same.
    pid_tgid: u64,
    slot: u32,
    nr: u32,
    what: u32,
    refusal: u32,
}

#[map]
static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

/// Index 0: `sys_exit_report`, set by the supervisor after loading it.
#[map]
static REPORT: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The second half of `sys_exit`: the event of a call it chose to report, with the call's
/// arguments and its path or socket address. Never attached: `sys_exit` tail-calls it.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_report(ctx: RawTracePointContext) -> i32 {
    let Some(p) = PENDING.get(0) else {
        return 0;
    };
    let Pending {
        cg,
        ret,
        pid_tgid,
        slot,
        nr,
        what,
        refusal,
    } = *p;
    // Another thread's decision (see `Pending::pid_tgid`: not expected): this call's event is
    // lost, and counted as a lost denial of this thread's sandbox, failing closed.
    if pid_tgid != bpf_get_current_pid_tgid() {
        if let Some((own, _)) = sandbox_slot(current_cgroup()) {
            bump(own, COUNTER_DROPPED);
            bump(own, COUNTER_DENIALS_DROPPED);
        }
        return 0;
    }
    let what = what as u8;
    let refusal = refusal != 0;
    let regs: *const u64 = ctx.arg(0);
    let mut args = [0u64; 6];
    for (i, word) in REG_ARGS.iter().enumerate() {
        args[i] = reg(regs, *word);
    }
    let index = (what & 0x7) as usize;
    // The path, read once from the plugin's memory into this CPU's scratch key: judged there,
    // and copied into the event from there (a second read could see other bytes).
    // NO_PATH, not an Option: LLVM stores an Option's undefined payload, and the verifier
    // refuses a program that reads a register never written.
    let mut path_len: usize = NO_PATH;
    let Some(scratch) = PATH_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    if what & ARG_PATH != 0 && index < 6 {
        // SAFETY: this CPU's scratch element, used by one program at a time on this CPU
        // (tracepoint programs do not nest on a CPU).
        clear_path(unsafe { &mut *scratch });
        // SAFETY: as above.
        let data = unsafe { &mut (*scratch).data };
        data[..8].copy_from_slice(&cg.to_le_bytes());
        // SAFETY: the helper checks the user pointer and answers an error instead of faulting.
        if let Ok(p) =
            unsafe { bpf_probe_read_user_str_bytes(arg(regs, index) as *const u8, &mut data[8..]) }
        {
            path_len = p.len();
        }
    }
    let second = second_path_index(nr);
    // A call with two paths is judged on both in userspace (its miss may be the second's).
    if ret == -ENOENT && path_len != NO_PATH && second == 0 {
        let len = path_len;
        // SAFETY: as above.
        if quiet_miss(unsafe { &mut *scratch }, len) {
            bump(slot, COUNTER_QUIET_MISSES);
            return 0;
        }
    }
    let Some(mut entry) = reserve::<SyscallEvent>(slot) else {
        bump(slot, COUNTER_DROPPED);
        // Every failure reported here may be a violation, an ENOENT too (a hidden path):
        // all count, or a flood of harmless misses could hide one. A limit reached is not one.
        if refusal {
            bump(slot, COUNTER_DENIALS_DROPPED);
        }
        return 0;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to the reserved record, valid for writes until submit; every field is
    // written before submit.
    unsafe {
        addr_of_mut!((*e).header).write(header(EVENT_SYSCALL, cg));
        addr_of_mut!((*e).nr).write(nr);
        addr_of_mut!((*e).ret).write(ret as i32);
        addr_of_mut!((*e).args).write(args);
        addr_of_mut!((*e)._pad).write([0; 3]);
        let object = &mut *addr_of_mut!((*e).object);
        let mut kind = 0u8;
        let mut len = 0u32;
        // (ARG_OPENS is only a marker: the copy below needs the kind and the index.)
        if path_len != NO_PATH {
            let n = path_len;
            let src = (*scratch).data.as_ptr().add(8);
            if bpf_probe_read_kernel_buf(src, &mut object[..MISS_PATH_LEN]).is_ok() {
                kind = ARG_PATH;
                len = n as u32;
            }
        } else if what & ARG_SOCKADDR != 0 && index < 6 {
            let mut ptr = arg(regs, index);
            if what & ARG_MSGHDR != 0 {
                // `msg_name`, the first field of `struct msghdr` (and of `mmsghdr`'s first).
                ptr = bpf_probe_read_user(ptr as *const u64).unwrap_or(0);
            }
            if ptr != 0 {
                if bpf_probe_read_user_buf(ptr as *const u8, &mut object[..SOCKADDR_UN_LEN]).is_ok()
                {
                    kind = ARG_SOCKADDR;
                    len = SOCKADDR_UN_LEN as u32;
                } else if bpf_probe_read_user_buf(ptr as *const u8, &mut object[..SOCKADDR_LEN])
                    .is_ok()
                {
                    kind = ARG_SOCKADDR;
                    len = SOCKADDR_LEN as u32;
                }
            }
        }
        addr_of_mut!((*e).object_kind).write(kind);
        addr_of_mut!((*e).object_len).write(len);
    }
    entry.submit(0);
    // link, rename and their *at forms name two paths, and either may be the one refused or
    // missing: the second goes out as an event of its own, marked (`_pad[0] = 1`).
    if ret < 0 && second != 0 {
        // SAFETY: as for the first path.
        second_path_event(
            cg,
            slot,
            nr,
            ret,
            &args,
            arg(regs, second),
            unsafe { &mut *scratch },
            refusal,
        );
    }
    0
}

/// Whether the `bind` whose registers these are named an abstract unix address: `AF_UNIX`, a
/// first path byte of 0, and more than the family (an address of the family alone is autobind:
/// the kernel picks a random name, which no host service uses).
#[inline(always)]
fn binds_abstract(regs: *const u64) -> bool {
    let ptr = reg(regs, REG_ARGS[1]);
    let len = reg(regs, REG_ARGS[2]);
    if len <= 2 || ptr == 0 {
        return false;
    }
    // SAFETY: the helper checks the user pointer and answers an error instead of faulting.
    let family = unsafe { bpf_probe_read_user(ptr as *const u16) }.unwrap_or(0);
    // SAFETY: as above.
    let first = unsafe { bpf_probe_read_user((ptr + 2) as *const u8) }.unwrap_or(1);
    family == AF_UNIX && first == 0
}

/// Which argument holds the second path of a call that names two; 0 for any other call (a
/// plain integer, not an Option: see `path_len`).
#[inline(always)]
fn second_path_index(nr: u32) -> usize {
    match nr {
        NR_RENAME | NR_LINK => 1,
        NR_RENAMEAT | NR_LINKAT | NR_RENAMEAT2 => 3,
        _ => 0,
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn second_path_event(
    cg: u64,
    slot: u32,
    nr: u32,
    ret: i64,
    args: &[u64; 6],
    ptr: u64,
    scratch: &mut MissKey,
    refusal: bool,
) {
    // SAFETY: the helper checks the user pointer and answers an error instead of faulting.
    let Ok(p) =
        (unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, &mut scratch.data[8..]) })
    else {
        return;
    };
    let n = p.len();
    let Some(mut entry) = reserve::<SyscallEvent>(slot) else {
        bump(slot, COUNTER_DROPPED);
        if refusal {
            bump(slot, COUNTER_DENIALS_DROPPED);
        }
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to the reserved record; every field is written before submit.
    unsafe {
        addr_of_mut!((*e).header).write(header(EVENT_SYSCALL, cg));
        addr_of_mut!((*e).nr).write(nr);
        addr_of_mut!((*e).ret).write(ret as i32);
        addr_of_mut!((*e).args).write(*args);
        addr_of_mut!((*e)._pad).write([1, 0, 0]);
        let object = &mut *addr_of_mut!((*e).object);
        let src = scratch.data.as_ptr().add(8);
        let ok = bpf_probe_read_kernel_buf(src, &mut object[..MISS_PATH_LEN]).is_ok();
        addr_of_mut!((*e).object_kind).write(if ok { ARG_PATH } else { 0 });
        addr_of_mut!((*e).object_len).write(if ok { n as u32 } else { 0 });
    }
    entry.submit(0);
}

/// A resource limit answered the call: the pids limit (EAGAIN from a fork), the descriptor
/// limits, the file size limit, a full filesystem or quota.
#[inline(always)]
fn limit_reached(nr: u32, ret: i64) -> bool {
    match -ret {
        EAGAIN => matches!(nr, NR_CLONE | NR_FORK | NR_VFORK | NR_CLONE3),
        EMFILE | ENFILE | EFBIG | ENOSPC | EDQUOT => true,
        _ => false,
    }
}

/// Counts a limit reached; true when this CPU's count is a power of two (report it).
#[inline(always)]
fn count_limit(slot: u32) -> bool {
    let Some(c) = COUNTER.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: this CPU's copy.
    let Some(n) = (unsafe { (*c).get_mut(COUNTER_LIMITS as usize) }) else {
        return false;
    };
    *n += 1;
    *n & (*n - 1) == 0
}

/// Whether the path in `key` (`len` bytes after the cgroup id) is absolute, whole (not cut at
/// the copy's end), never walks up (`/..`), and lies below a directory the sandbox may read but
/// not write (`MISS_TREES`). Such a miss is the same one the supervisor would dismiss as
/// "missing inside a granted tree"; anything else goes to the supervisor as before.
#[inline(always)]
fn quiet_miss(key: &mut MissKey, len: usize) -> bool {
    if len == 0 || len >= MISS_PATH_LEN - 1 || key.data[8] != b'/' {
        return false;
    }
    let end = 8 + len;
    // Zero after the path: `clear_path` ran before the copy.
    if walks_up(key, MISS_KEY_DATA - 2) {
        return false;
    }
    key.prefix_len = (end * 8) as u32;
    let k = lpm_key(key);
    MISS_TREES.get(k).is_some_and(|quiet| *quiet != 0)
}
