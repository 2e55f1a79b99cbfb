//! sched raw tracepoints: fork (every new process or thread), exec and exit of sandboxed tasks, so
//! the supervisor can attribute every descendant to its plugin and count what it started. These
//! fire only on fork, exec and exit, never on ordinary syscalls, so the host pays next to nothing.
//!
//! Raw tracepoints, not perf-event tracepoints: detaching a perf-event tracepoint waits for RCU
//! grace periods (about 70 ms each here, at every `stockade run`'s exit); a raw tracepoint link
//! goes at once. Their arguments are kernel pointers: `task_struct.pid` and
//! `linux_binprm.filename` offsets come from the kernel's BTF through `TP_OFFSETS`.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use stockade_ebpf_common::{
    ProcEvent, COUNTER_DROPPED, COUNTER_EXECS, COUNTER_FORKS, EVENT_EXEC, EVENT_EXIT, EVENT_FORK,
};

use crate::maps::{bump, current_cgroup, header, reserve, SANDBOXES, TP_OFFSETS};

/// `TP_OFFSETS` indices.
const OFF_TASK_PID: u32 = 0;
const OFF_BPRM_FILENAME: u32 = 1;

/// Reads a `T` at `base + TP_OFFSETS[index]` in kernel memory.
#[inline(always)]
fn field<T>(base: u64, index: u32) -> Option<T> {
    let off = *TP_OFFSETS.get(index)? as u64;
    // SAFETY: bpf_probe_read_kernel checks the access and answers an error instead of faulting.
    unsafe { bpf_probe_read_kernel((base + off) as *const T) }.ok()
}

#[inline(always)]
fn emit(kind: u16, cg: u64, slot: u32, other: u32, filename: u64) {
    let Some(mut entry) = reserve::<ProcEvent>(slot) else {
        bump(slot, COUNTER_DROPPED);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record; every field is written before submit.
    unsafe {
        addr_of_mut!((*e).header).write(header(kind, cg));
        addr_of_mut!((*e).other).write(other);
        addr_of_mut!((*e)._pad).write(0);
        let name = &mut *addr_of_mut!((*e).filename);
        name[0] = 0;
        if filename != 0 && bpf_probe_read_kernel_str_bytes(filename as *const u8, name).is_err() {
            name[0] = 0;
        }
    }
    entry.submit(0);
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let cg = current_cgroup();
    // SAFETY: read only.
    let Some(cfg) = (unsafe { SANDBOXES.get(&cg) }) else {
        return 0;
    };
    bump(cfg.slot, COUNTER_FORKS);
    let child: u64 = ctx.arg(1);
    let pid: u32 = field(child, OFF_TASK_PID).unwrap_or(0);
    emit(EVENT_FORK, cg, cfg.slot, pid, 0);
    0
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    let cg = current_cgroup();
    let Some(cfg) = SANDBOXES.get_ptr_mut(&cg) else {
        return 0;
    };
    // SAFETY: a live map value. The first execs of a sandbox (shim, plugin) run before it can
    // start a second process, so the plain increment does not race where it matters.
    let slot = unsafe {
        (*cfg).execs = (*cfg).execs.saturating_add(1);
        (*cfg).slot
    };
    bump(slot, COUNTER_EXECS);
    let bprm: u64 = ctx.arg(2);
    let filename: u64 = field(bprm, OFF_BPRM_FILENAME).unwrap_or(0);
    emit(EVENT_EXEC, cg, slot, 0, filename);
    0
}

/// `sched_process_exit(struct task_struct *p, ...)`: the exiting task is the current one.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    let cg = current_cgroup();
    // SAFETY: read only.
    let Some(cfg) = (unsafe { SANDBOXES.get(&cg) }) else {
        return 0;
    };
    let h = header(0, 0);
    if h.pid != h.tid {
        return 0; // a thread of a process that goes on
    }
    emit(EVENT_EXIT, cg, cfg.slot, 0, 0);
    0
}
