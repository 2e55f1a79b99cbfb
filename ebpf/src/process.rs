//! sched tracepoints: fork (every new process or thread), exec and exit of sandboxed tasks, so
//! the supervisor can attribute every descendant to its plugin and count what it started. These
//! fire only on fork, exec and exit, never on ordinary syscalls, so the host pays next to nothing.
//! Field offsets differ between kernels; the supervisor reads them from tracefs into TP_OFFSETS.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes, macros::tracepoint, programs::TracePointContext,
    EbpfContext,
};
use stockade_ebpf_common::{
    ProcEvent, COUNTER_DROPPED, COUNTER_EXECS, COUNTER_FORKS, EVENT_EXEC, EVENT_EXIT, EVENT_FORK,
};

use crate::maps::{bump, current_cgroup, header, EVENTS, SANDBOXES, TP_OFFSETS};

const OFF_FORK_CHILD_PID: u32 = 0;
const OFF_EXEC_FILENAME: u32 = 1;

#[inline(always)]
fn emit(ctx: &TracePointContext, kind: u16, cg: u64, slot: u32, other: u32, with_name: bool) {
    let Some(mut entry) = EVENTS.reserve::<ProcEvent>(0) else {
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
        if with_name {
            if let Some(off) = TP_OFFSETS.get(OFF_EXEC_FILENAME) {
                // __data_loc: the low 16 bits give the offset of the string in the record.
                if let Ok(loc) = ctx.read_at::<u32>(*off as usize) {
                    let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
                    if bpf_probe_read_kernel_str_bytes(src, name).is_err() {
                        name[0] = 0;
                    }
                }
            }
        }
    }
    entry.submit(0);
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let cg = current_cgroup();
    // SAFETY: read only.
    let Some(cfg) = (unsafe { SANDBOXES.get(&cg) }) else {
        return 0;
    };
    bump(cfg.slot, COUNTER_FORKS);
    let child = match TP_OFFSETS.get(OFF_FORK_CHILD_PID) {
        // SAFETY: an offset inside the tracepoint record, read from its tracefs format.
        Some(off) => unsafe { ctx.read_at::<u32>(*off as usize) }.unwrap_or(0),
        None => 0,
    };
    emit(&ctx, EVENT_FORK, cg, cfg.slot, child, false);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
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
    emit(&ctx, EVENT_EXEC, cg, slot, 0, true);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let cg = current_cgroup();
    // SAFETY: read only.
    let Some(cfg) = (unsafe { SANDBOXES.get(&cg) }) else {
        return 0;
    };
    let h = header(0, 0);
    if h.pid != h.tid {
        return 0; // a thread of a process that goes on
    }
    emit(&ctx, EVENT_EXIT, cg, cfg.slot, 0, false);
    0
}
