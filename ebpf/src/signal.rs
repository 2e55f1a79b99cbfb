//! `raw_tracepoint/signal_generate`: seccomp's SIGSYS. A call the filter kills (`deny_action =
//! "kill"`, and every call of another architecture: `int 0x80`) never reaches a syscall
//! tracepoint — seccomp answers before sys_enter, and the process is gone before sys_exit — so
//! without this the run ended `seccomp_kill` with an empty violation report. seccomp raises the
//! signal on the calling task itself (`force_sig_seccomp`), with the call's number and
//! architecture in the siginfo.
//!
//! The tracepoint fires for every signal on the host; a task outside a sandbox costs one cgroup
//! lookup.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::raw_tracepoint, programs::RawTracePointContext,
};
use stockade_ebpf_common::{
    SigsysEvent, COUNTER_DENIALS_DROPPED, COUNTER_DROPPED, COUNTER_SECCOMP_KILLS, EVENT_SIGSYS,
};

use crate::maps::{bump, current_cgroup, header, reserve, sandbox_slot};

const SIGSYS: u64 = 31;
/// `si_code` of a seccomp SIGSYS.
const SYS_SECCOMP: i32 = 1;
/// Offsets in `struct kernel_siginfo` (the UAPI siginfo layout on 64-bit): `si_code` after
/// `si_signo` and `si_errno`; the `_sigsys` fields after the pointer-aligned union start
/// (`_call_addr` at 16, then `_syscall` and `_arch`).
const SI_CODE: u64 = 8;
const SI_SYSCALL: u64 = 24;
const SI_ARCH: u64 = 28;

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the access and answers an error instead of faulting.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// `signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
/// int result)`.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate(ctx: RawTracePointContext) -> i32 {
    let sig: u64 = ctx.arg(0);
    if sig != SIGSYS {
        return 0;
    }
    let cg = current_cgroup();
    let Some((slot, _)) = sandbox_slot(cg) else {
        return 0;
    };
    let info: u64 = ctx.arg(1);
    // SEND_SIG_NOINFO (0) and SEND_SIG_PRIV (1) are not pointers.
    if info < 4096 || read::<i32>(info + SI_CODE) != Some(SYS_SECCOMP) {
        return 0;
    }
    let nr = read::<i32>(info + SI_SYSCALL).unwrap_or(-1);
    let arch = read::<u32>(info + SI_ARCH).unwrap_or(0);
    bump(slot, COUNTER_SECCOMP_KILLS);
    let Some(mut entry) = reserve::<SigsysEvent>(slot) else {
        bump(slot, COUNTER_DROPPED);
        bump(slot, COUNTER_DENIALS_DROPPED);
        return 0;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record; every field is written before submit.
    unsafe {
        addr_of_mut!((*e).header).write(header(EVENT_SIGSYS, cg));
        addr_of_mut!((*e).nr).write(nr);
        addr_of_mut!((*e).arch).write(arch);
    }
    entry.submit(0);
    0
}
