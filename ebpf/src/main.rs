//! Stockade's eBPF programs, built for `bpfel-unknown-none` by the supervisor's build script
//! (aya-build) and embedded in the `stockade` binary. On the host (`cargo build --workspace`,
//! clippy) this crate compiles to an empty binary so that workspace-wide commands still work.
//!
//! - `net`: cgroup `sock_addr` programs, attached to each sandbox's own cgroup: the policy's
//!   `[network]` allow lists, EPERM and an event for everything else.
//! - `egress`: one `cgroup_skb/egress` program per host-network sandbox: packets whose headers
//!   would send them elsewhere than their call said (IPv6 routing headers, IPv4 options).
//! - `syscalls`: one raw tracepoint `sys_exit` program: per-sandbox, per-syscall counts, and an
//!   event for every failure a layer may have caused (EPERM, EACCES, EROFS, ENOENT on a path or a
//!   socket name, ENETUNREACH) and every resource limit reached, which the supervisor attributes.
//! - `process`: sched fork/exec/exit tracepoints: the process tree of every sandbox.
//! - `unix`: cgroup `sock_addr` programs of unix sockets (connect_unix, sendmsg_unix), attached to
//!   each sandbox's cgroup by the supervisor itself: `[ipc]`, EPERM and an event for a pathname
//!   socket below a read-only grant that the policy does not list.
//! - `signal`: the `signal_generate` raw tracepoint: seccomp's SIGSYS, for the calls it kills
//!   before any syscall tracepoint runs.
//!
//! Every program looks the current cgroup up in `SANDBOXES` first and returns at once for a cgroup
//! that is not a sandbox's.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod egress;
#[cfg(target_arch = "bpf")]
mod lsm;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod process;
#[cfg(target_arch = "bpf")]
mod signal;
#[cfg(target_arch = "bpf")]
mod syscalls;
#[cfg(target_arch = "bpf")]
mod unix;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // A panic path that survives optimisation becomes a back-edge the verifier rejects, so a
    // program that could panic never loads: no silent panics in the kernel.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
