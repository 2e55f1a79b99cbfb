//! Which BPF program types load on this kernel: a two-instruction program ("return 1") per type,
//! loaded with BPF_PROG_LOAD and closed at once. The eBPF monitors of a later issue build on this
//! answer; `stockade doctor` shows it now so operators know what their kernel offers.

use std::os::fd::{FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;

/// The fields of `union bpf_attr` that BPF_PROG_LOAD reads, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

pub fn program_types() -> Vec<(&'static str, Result<(), String>)> {
    [
        ("socket_filter", BPF_PROG_TYPE_SOCKET_FILTER, 0),
        ("tracepoint", BPF_PROG_TYPE_TRACEPOINT, 0),
        ("raw_tracepoint", BPF_PROG_TYPE_RAW_TRACEPOINT, 0),
        ("cgroup_skb", BPF_PROG_TYPE_CGROUP_SKB, 0),
        (
            "cgroup_sock_addr (connect4)",
            BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            BPF_CGROUP_INET4_CONNECT,
        ),
    ]
    .into_iter()
    .map(|(name, ty, attach)| (name, load(ty, attach)))
    .collect()
}

fn load(prog_type: u32, expected_attach_type: u32) -> Result<(), String> {
    // r0 = 1; exit
    let insns: [u64; 2] = [0x0000_0001_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type,
        ..ProgLoadAttr::default()
    };
    // SAFETY: `attr` and the buffers it points to live across the call; the kernel copies them.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: a fresh program descriptor owned by nobody else; dropping it unloads the program.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}
