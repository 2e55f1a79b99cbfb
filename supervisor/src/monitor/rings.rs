//! Each supervisor's own ring buffer, placed in the programs' `EVENTS` array of maps at every
//! slot it arms: the programs write a sandbox's records to the ring buffer at its slot, so that
//! several supervisors can share one set of programs and each read only its own sandboxes.
//!
//! Raw `bpf()` calls: aya creates maps only from an object's definitions. Each update of an
//! array of maps waits for an RCU grace period (`maybe_wait_bpf_programs`, about 5 ms here), so a
//! supervisor places its ring buffer at a slot once and leaves it there.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// The head of `union bpf_attr` for BPF_MAP_CREATE; the rest stays zero.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    _rest: [u32; 8],
}

/// `union bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a `union bpf_attr` prefix of its own size that lives across the call;
    // the pointers inside it point to live values (the callers' locals).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A new ring buffer of `bytes` (a power of two of pages), named for `bpftool map`.
pub fn create(bytes: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_RINGBUF,
        max_entries: bytes,
        ..MapCreateAttr::default()
    };
    attr.map_name[..6].copy_from_slice(b"EVENTS");
    let fd = bpf(BPF_MAP_CREATE, &attr)?;
    // SAFETY: a fresh map descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Puts `ring` at `slot` of the array of maps `outer`.
pub fn place(outer: BorrowedFd<'_>, slot: u32, ring: BorrowedFd<'_>) -> io::Result<()> {
    let value = ring.as_raw_fd() as u32;
    let attr = ElemAttr {
        map_fd: outer.as_raw_fd() as u32,
        key: &slot as *const u32 as u64,
        value: &value as *const u32 as u64,
        ..ElemAttr::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &attr).map(drop)
}
