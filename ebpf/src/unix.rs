//! `[ipc]` in the kernel: the cgroup `sock_addr` programs of unix sockets (kernel 6.7+,
//! `BPF_CGROUP_UNIX_CONNECT` = 49 and `BPF_CGROUP_UNIX_SENDMSG` = 50), attached to each sandbox's
//! own cgroup. They run in `connect()` of every unix socket (stream, datagram, seqpacket) and in
//! `sendto`/`sendmsg` with an address on a datagram socket, after the kernel checked the address's
//! form and before it looks the name up. Return 1 to let the call go on, 0 to make it fail with
//! EPERM.
//!
//! aya 0.14 has neither these attach types nor their ELF sections, so the programs live in
//! sections it does know (`cgroup/connect4`, `cgroup/sendmsg4`), which makes it relocate their
//! maps; the supervisor loads them itself with the right `expected_attach_type` and attaches them
//! with `BPF_LINK_CREATE` (supervisor/src/monitor/unix.rs).
//!
//! The context the verifier describes is `struct bpf_sock_addr`, whose fields hold no unix path;
//! at run time it points to the kernel's `struct bpf_sock_addr_kern`, whose `uaddr` is the
//! kernel's copy of the caller's `sockaddr_un` and `uaddrlen` its length. Both are read with
//! bpf_probe_read_kernel at offsets from the kernel's BTF (`UNIX_OFFSETS`): the helper is
//! available to this program type for a loader with CAP_PERFMON, and passing the context pointer
//! to it as a plain value is allowed with the pointer leaks such a loader may make.
//!
//! The decision, for a sandbox (any other cgroup: allowed at once):
//! - an abstract name (`sun_path[0] == 0`): allowed here; Landlock's scoping (ABI 6) refuses one
//!   bound outside the sandbox;
//! - a relative name, or one containing `/..`: refused. A relative name is resolved against the
//!   caller's working directory, which this program cannot see, so it cannot be judged;
//! - a name `[ipc] connect` lists exactly, or one below a writable tree of the sandbox
//!   (`UNIX_PATHS` value 1): allowed;
//! - a name below a read-only tree (value 0): refused, counted as a network denial and reported
//!   ([`UnixDenyEvent`]) with the name;
//! - a name below no grant: allowed here; it names nothing in the sandbox, the lookup answers
//!   ENOENT, and the supervisor judges that miss (sys_exit copies the address).
//!
//! The name is the one the caller gave: the kernel resolves it afterwards, following symlinks.

use core::ffi::c_void;
use core::ptr::addr_of_mut;

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_probe_read_kernel_str},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use stockade_ebpf_common::{
    MissKey, UnixDenyEvent, COUNTER_DENIALS_DROPPED, COUNTER_DROPPED, COUNTER_NET_DENIED,
    COUNTER_NET_DROPPED, EVENT_UNIX_DENY, HOOK_UNIX_CONNECT, HOOK_UNIX_SENDMSG, MISS_KEY_DATA,
    OFF_SOCK_ADDR_KERN_UADDR, OFF_SOCK_ADDR_KERN_UADDRLEN, UNIX_PATH_LEN,
};

use crate::maps::{
    bump, current_cgroup, header, lpm_key, mark_denied, reserve, sandbox_slot, walks_up,
    UNIX_OFFSETS, UNIX_PATHS,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const AF_UNIX: u16 = 1;
/// `sizeof(sun_path)`.
const SUN_PATH_MAX: u32 = 108;
/// `offsetof(struct sockaddr_un, sun_path)`: UAPI.
const SUN_PATH_OFFSET: u64 = 2;

#[cgroup_sock_addr(connect4)]
pub fn connect_unix(ctx: SockAddrContext) -> i32 {
    check(&ctx, HOOK_UNIX_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg_unix(ctx: SockAddrContext) -> i32 {
    check(&ctx, HOOK_UNIX_SENDMSG)
}

/// Reads a `T` at `addr` in kernel memory.
#[inline(always)]
fn kernel<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel checks the access and answers an error instead of faulting.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
fn check(ctx: &SockAddrContext, hook: u8) -> i32 {
    let cg = current_cgroup();
    let Some((slot, flags)) = sandbox_slot(cg) else {
        return ALLOW;
    };
    // The name, read into the lookup key on this program's stack (not a per-CPU scratch: this
    // program may be preempted, and another caller's name must not replace this one).
    let mut key = MissKey {
        prefix_len: 0,
        data: [0; MISS_KEY_DATA],
    };
    key.data[..8].copy_from_slice(&cg.to_le_bytes());
    let len = read_name(ctx, &mut key);
    let name_len = match len {
        Name::Abstract | Name::NotUnix => return ALLOW,
        Name::Unreadable => 0,
        Name::Path(n) => n,
    };
    if name_len > 0 && judge(&mut key, name_len) {
        return ALLOW;
    }

    bump(slot, COUNTER_NET_DENIED);
    mark_denied(flags);
    match reserve::<UnixDenyEvent>(slot) {
        Some(mut entry) => {
            let e = entry.as_mut_ptr();
            // SAFETY: `e` points to the reserved record, valid for writes until submit; every
            // field is written before submit.
            unsafe {
                addr_of_mut!((*e).header).write(header(EVENT_UNIX_DENY, cg));
                addr_of_mut!((*e).hook).write(hook);
                addr_of_mut!((*e)._pad).write([0; 3]);
                addr_of_mut!((*e).path_len).write(name_len as u32);
                let path = &mut *addr_of_mut!((*e).path);
                if let Some(src) = key.data.get(8..8 + UNIX_PATH_LEN) {
                    path.copy_from_slice(src);
                }
            }
            entry.submit(0);
        }
        None => {
            bump(slot, COUNTER_DROPPED);
            bump(slot, COUNTER_NET_DROPPED);
            bump(slot, COUNTER_DENIALS_DROPPED);
        }
    }
    DENY
}

enum Name {
    /// Not a `sockaddr_un` with a name: not this program's to judge.
    NotUnix,
    /// An abstract name: Landlock's scoping judges it.
    Abstract,
    /// The kernel's copy of the address could not be read: refused.
    Unreadable,
    /// A pathname of this many bytes (without its NUL), in `key.data[8..]`.
    Path(usize),
}

/// Copies the caller's `sun_path` into `key.data[8..]`, NUL-terminated, as the kernel will read
/// it: up to the address length or the first NUL, whichever comes first.
#[inline(always)]
fn read_name(ctx: &SockAddrContext, key: &mut MissKey) -> Name {
    let (Some(off_uaddr), Some(off_len)) = (
        UNIX_OFFSETS.get(OFF_SOCK_ADDR_KERN_UADDR),
        UNIX_OFFSETS.get(OFF_SOCK_ADDR_KERN_UADDRLEN),
    ) else {
        return Name::Unreadable;
    };
    // At run time the context is the kernel's `struct bpf_sock_addr_kern *` (see above).
    let kern = ctx.sock_addr as u64;
    let (Some(uaddr), Some(addr_len)) = (
        kernel::<u64>(kern + *off_uaddr as u64),
        kernel::<u32>(kern + *off_len as u64),
    ) else {
        return Name::Unreadable;
    };
    if uaddr == 0 {
        return Name::Unreadable;
    }
    let Some(family) = kernel::<u16>(uaddr) else {
        return Name::Unreadable;
    };
    // The kernel checked the form before this hook: AF_UNIX, and more than the family.
    if family != AF_UNIX || addr_len <= SUN_PATH_OFFSET as u32 {
        return Name::NotUnix;
    }
    let Some(first) = kernel::<u8>(uaddr + SUN_PATH_OFFSET) else {
        return Name::Unreadable;
    };
    if first == 0 {
        return Name::Abstract;
    }
    let mut n = addr_len - SUN_PATH_OFFSET as u32;
    if n > SUN_PATH_MAX {
        n = SUN_PATH_MAX;
    }
    let dst = &mut key.data[8..];
    // SAFETY: `dst` holds MISS_KEY_DATA - 8 bytes, more than the at most SUN_PATH_MAX + 1 the
    // helper writes (it stops one byte early and writes a NUL); the source is kernel memory the
    // helper checks.
    let copied = unsafe {
        bpf_probe_read_kernel_str(
            dst.as_mut_ptr() as *mut c_void,
            n + 1,
            (uaddr + SUN_PATH_OFFSET) as *const c_void,
        )
    };
    if copied <= 1 {
        return Name::Unreadable;
    }
    Name::Path(copied as usize - 1)
}

/// Whether the name in `key` (`len` bytes after the cgroup id) is absolute, never walks up
/// (`/..`), and is listed or lies below a writable tree (`UNIX_PATHS`).
#[inline(always)]
fn judge(key: &mut MissKey, len: usize) -> bool {
    if key.data[8] != b'/' {
        return false;
    }
    let end = 8 + len;
    // The key starts zeroed on this program's stack, as `walks_up` needs.
    if walks_up(key, 8 + SUN_PATH_MAX as usize) {
        return false;
    }
    // The NUL too: a listed path is stored with its NUL and matches only itself; a writable
    // tree is stored with a trailing `/` and matches every name below it.
    key.prefix_len = ((end + 1) * 8) as u32;
    let k = lpm_key(key);
    // No entry: the name lies below no grant and names nothing in the sandbox.
    UNIX_PATHS.get(k).is_none_or(|allowed| *allowed != 0)
}
