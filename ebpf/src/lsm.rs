//! BPF LSM programs: a second filesystem wall behind the mount namespace and Landlock, where the
//! kernel loads LSM programs (not on every host: `stockade doctor` says).
//!
//! `file_open` and `bprm_check_security` allow a file of a host filesystem only when it lies
//! below an inode the policy grants (the source of a bind mount, or the file itself) with the
//! right asked for: read, write (open for writing) or execute. They walk up the file's dentries to
//! the root of its filesystem, so a filesystem mounted below a granted directory on the host is
//! not granted by it. Filesystems the sandbox mounted itself — its root, /tmp, /proc — belong to
//! its user namespace and are left to Landlock. A refusal is EACCES and an event.
//!
//! `socket_listen` refuses `listen()` on an inet socket that was never bound: the kernel would
//! bind it to an ephemeral port on every address without running any bind hook. (The cgroup
//! ingress program keeps such a listener unreachable everywhere; here the call itself fails.)
//!
//! `unix_stream_connect` and `unix_may_send` judge the pathname socket a connect or a datagram
//! reached, after the kernel resolved the name (symlinks included): allowed if `[ipc] connect`
//! lists it (its directory and name, `UNIX_LISTED`), if it lies on a filesystem of the sandbox's
//! own, or below a tree granted writable; otherwise EPERM and an event. The cgroup unix programs
//! judge the name the plugin gave; these judge what it led to, so a symlink in a writable tree
//! cannot lead to a socket in a read-only grant, and the launch check of those grants is not
//! needed where these load.
//!
//! Kernel struct offsets come from the kernel's BTF, read by the supervisor (`LSM_OFFSETS`).

use core::ptr::addr_of_mut;

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::lsm,
    programs::LsmContext,
};
use stockade_ebpf_common::{
    LsmDenyEvent, LsmGrantKey, NetDenyEvent, UnixListedKey, AF_INET, AF_INET6,
    COUNTER_DENIALS_DROPPED, COUNTER_DROPPED, COUNTER_LSM_DENIED, COUNTER_NET_DENIED,
    EVENT_LSM_DENY, EVENT_NET_DENY, FLAG_LSM, FLAG_NET_RULES, FLAG_UNIX_REACHED, GRANT_EXEC,
    GRANT_READ, GRANT_WRITE, HOOK_LISTEN4, HOOK_LISTEN6, LSM_BPRM_CHECK, LSM_FILE_OPEN,
    LSM_MAX_DEPTH, LSM_UNIX_CONNECT, LSM_UNIX_SEND, OFF_BPRM_FILE, OFF_DENTRY_INODE,
    OFF_DENTRY_NAME, OFF_DENTRY_PARENT, OFF_FILE_DENTRY, OFF_FILE_FLAGS, OFF_FILE_MODE,
    OFF_INODE_INO, OFF_INODE_SB, OFF_SB_DEV, OFF_SB_USER_NS, OFF_SK_FAMILY, OFF_SK_NUM,
    OFF_SOCKET_SK, OFF_UNIX_PATH_DENTRY, OFF_USERNS_LEVEL, PROTO_TCP, UNIX_NAME_LEN,
};

use crate::maps::{
    bump, current_cgroup, header, mark_denied, reserve, LSM_GRANTS, LSM_OFFSETS, SANDBOXES,
    UNIX_LISTED,
};

const EPERM: i32 = 1;
const EACCES: i32 = 13;
const FMODE_WRITE: u32 = 2;
const FMODE_EXEC: u32 = 0x20;
/// In `f_flags`: the open of an exec (`__FMODE_EXEC`); `f_mode` gets FMODE_EXEC only later on
/// some kernels.
const O_FMODE_EXEC: u32 = 0x20;

#[inline(always)]
fn off(i: u32) -> Option<usize> {
    LSM_OFFSETS.get(i).map(|o| *o as usize)
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn field<T>(base: u64, offset: u32) -> Option<T> {
    let o = off(offset)?;
    // SAFETY: bpf_probe_read_kernel checks the access and answers an error instead of faulting.
    unsafe { bpf_probe_read_kernel((base as usize + o) as *const T) }.ok()
}

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    // The hook's first argument is `struct file *`.
    let file: u64 = ctx.arg(0);
    let mut mode: u32 = match field(file, OFF_FILE_MODE) {
        Some(m) => m,
        None => return 0,
    };
    if field::<u32>(file, OFF_FILE_FLAGS).unwrap_or(0) & O_FMODE_EXEC != 0 {
        mode |= FMODE_EXEC;
    }
    let want = if mode & FMODE_EXEC != 0 {
        GRANT_EXEC
    } else if mode & FMODE_WRITE != 0 {
        GRANT_WRITE
    } else {
        GRANT_READ
    };
    decide(file, want, mode, LSM_FILE_OPEN)
}

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    // The hook's first argument is `struct linux_binprm *`.
    let bprm: u64 = ctx.arg(0);
    let Some(file) = field::<u64>(bprm, OFF_BPRM_FILE) else {
        return 0;
    };
    decide(file, GRANT_EXEC, FMODE_EXEC, LSM_BPRM_CHECK)
}

#[lsm(hook = "socket_listen")]
pub fn socket_listen(ctx: LsmContext) -> i32 {
    // The hook's first argument is `struct socket *`.
    let sock: u64 = ctx.arg(0);
    let cg = current_cgroup();
    let Some(cfg) = SANDBOXES.get_ptr(&cg) else {
        return 0;
    };
    // SAFETY: a live map value, read only.
    let (slot, flags, active) = unsafe {
        let flags = (*cfg).flags;
        (
            (*cfg).slot,
            flags,
            flags & FLAG_LSM != 0
                && flags & FLAG_NET_RULES != 0
                && (*cfg).execs >= (*cfg).lsm_after_execs,
        )
    };
    if !active {
        return 0;
    }
    let Some(sk) = field::<u64>(sock, OFF_SOCKET_SK) else {
        return 0;
    };
    let family = field::<u16>(sk, OFF_SK_FAMILY).unwrap_or(0);
    let v4 = family == AF_INET as u16;
    if !v4 && family != AF_INET6 as u16 {
        return 0; // unix sockets and the like: not the network's business
    }
    if field::<u16>(sk, OFF_SK_NUM).unwrap_or(0) != 0 {
        return 0; // bound: the bind hooks judged its address and port
    }
    bump(slot, COUNTER_NET_DENIED);
    mark_denied(flags);
    match reserve::<NetDenyEvent>(slot) {
        Some(mut e) => {
            e.write(NetDenyEvent {
                header: header(EVENT_NET_DENY, cg),
                addr: [0; 4],
                port: 0,
                family: family as u8,
                protocol: PROTO_TCP,
                hook: if v4 { HOOK_LISTEN4 } else { HOOK_LISTEN6 },
                killed: 0,
                lsm: 1,
                _pad: 0,
            });
            e.submit(0);
        }
        None => {
            bump(slot, COUNTER_DROPPED);
            bump(slot, COUNTER_DENIALS_DROPPED);
        }
    }
    -EPERM
}

#[lsm(hook = "unix_stream_connect")]
pub fn unix_stream_connect(ctx: LsmContext) -> i32 {
    // (struct sock *sock, struct sock *other, struct sock *newsk): `other` is the listener, a
    // `struct unix_sock` whose first member is its `struct sock`.
    let other: u64 = ctx.arg(1);
    judge_unix(other, LSM_UNIX_CONNECT)
}

#[lsm(hook = "unix_may_send")]
pub fn unix_may_send(ctx: LsmContext) -> i32 {
    // (struct socket *sock, struct socket *other)
    let other: u64 = ctx.arg(1);
    let Some(sk) = field::<u64>(other, OFF_SOCKET_SK) else {
        return 0;
    };
    judge_unix(sk, LSM_UNIX_SEND)
}

/// The pathname socket `sk` (a `struct unix_sock *`) for the current task's sandbox.
#[inline(always)]
fn judge_unix(sk: u64, hook: u8) -> i32 {
    let cg = current_cgroup();
    let Some(cfg) = SANDBOXES.get_ptr(&cg) else {
        return 0;
    };
    // SAFETY: a live map value, read only.
    let (slot, flags, active) = unsafe {
        (
            (*cfg).slot,
            (*cfg).flags,
            (*cfg).flags & FLAG_UNIX_REACHED != 0 && (*cfg).execs >= (*cfg).lsm_after_execs,
        )
    };
    if !active {
        return 0;
    }
    // No dentry: an abstract or unnamed socket (Landlock's scoping judges abstract names).
    let dentry = match field::<u64>(sk, OFF_UNIX_PATH_DENTRY) {
        Some(d) if d != 0 => d,
        _ => return 0,
    };
    let Some(inode) = field::<u64>(dentry, OFF_DENTRY_INODE) else {
        return 0;
    };
    let Some(sb) = field::<u64>(inode, OFF_INODE_SB) else {
        return 0;
    };
    // A filesystem the sandbox mounted itself (its /tmp): its own sockets.
    if let Some(ns) = field::<u64>(sb, OFF_SB_USER_NS) {
        if field::<u32>(ns, OFF_USERNS_LEVEL).unwrap_or(0) > 0 {
            return 0;
        }
    }
    let dev: u32 = field(sb, OFF_SB_DEV).unwrap_or(0);
    let ino = field::<u64>(inode, OFF_INODE_INO).unwrap_or(0);
    let parent = field::<u64>(dentry, OFF_DENTRY_PARENT).unwrap_or(0);
    let parent_ino = field::<u64>(parent, OFF_DENTRY_INODE)
        .and_then(|i| field::<u64>(i, OFF_INODE_INO))
        .unwrap_or(0);
    let mut listed = UnixListedKey {
        cgroup_id: cg,
        parent_ino,
        dev,
        _pad: 0,
        name: [0; UNIX_NAME_LEN],
    };
    // struct qstr: the name pointer follows the 8-byte hash_len.
    let name_ptr = off(OFF_DENTRY_NAME).and_then(|o| {
        // SAFETY: bpf_probe_read_kernel checks the access and answers an error instead of faulting.
        unsafe { bpf_probe_read_kernel((dentry as usize + o + 8) as *const u64) }.ok()
    });
    if let Some(ptr) = name_ptr {
        // SAFETY: the helper bounds the read by the buffer and checks the source address.
        if unsafe { bpf_probe_read_kernel_str_bytes(ptr as *const u8, &mut listed.name) }.is_err() {
            listed.name[0] = 0;
        }
    }
    // SAFETY: the value is only read.
    if listed.name[0] != 0 && unsafe { UNIX_LISTED.get(&listed) }.is_some() {
        return 0;
    }
    // Below a tree granted writable: the plugin's own to bind in.
    let mut key = LsmGrantKey {
        cgroup_id: cg,
        ino,
        dev,
        _pad: 0,
    };
    let mut d = dentry;
    for _ in 0..LSM_MAX_DEPTH {
        // SAFETY: the value is only read.
        if let Some(bits) = unsafe { LSM_GRANTS.get(&key) } {
            if *bits & GRANT_WRITE != 0 {
                return 0;
            }
        }
        let Some(up) = field::<u64>(d, OFF_DENTRY_PARENT) else {
            break;
        };
        if up == d {
            break; // the root of this filesystem
        }
        d = up;
        let Some(i) = field::<u64>(d, OFF_DENTRY_INODE) else {
            break;
        };
        key.ino = field::<u64>(i, OFF_INODE_INO).unwrap_or(0);
    }

    bump(slot, COUNTER_LSM_DENIED);
    mark_denied(flags);
    let Some(mut entry) = reserve::<LsmDenyEvent>(slot) else {
        bump(slot, COUNTER_DROPPED);
        bump(slot, COUNTER_DENIALS_DROPPED);
        return -EPERM;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record; every field is written before submit.
    unsafe {
        addr_of_mut!((*e).header).write(header(EVENT_LSM_DENY, cg));
        addr_of_mut!((*e).hook).write(hook);
        addr_of_mut!((*e)._pad).write([0; 3]);
        addr_of_mut!((*e).mode).write(0);
        addr_of_mut!((*e).dev).write(dev as u64);
        addr_of_mut!((*e).ino).write(ino);
        let name = &mut *addr_of_mut!((*e).name);
        name[0] = 0;
        if let Some(ptr) = name_ptr {
            if bpf_probe_read_kernel_str_bytes(ptr as *const u8, name).is_err() {
                name[0] = 0;
            }
        }
    }
    entry.submit(0);
    -EPERM
}

#[inline(always)]
fn decide(file: u64, want: u32, mode: u32, hook: u8) -> i32 {
    let cg = current_cgroup();
    let Some(cfg) = SANDBOXES.get_ptr(&cg) else {
        return 0;
    };
    // SAFETY: a live map value, read only.
    let (slot, flags, active) = unsafe {
        (
            (*cfg).slot,
            (*cfg).flags,
            (*cfg).flags & FLAG_LSM != 0 && (*cfg).execs >= (*cfg).lsm_after_execs,
        )
    };
    if !active {
        return 0;
    }
    let Some(dentry) = field::<u64>(file, OFF_FILE_DENTRY) else {
        return 0;
    };
    let Some(inode) = field::<u64>(dentry, OFF_DENTRY_INODE) else {
        return 0;
    };
    let Some(sb) = field::<u64>(inode, OFF_INODE_SB) else {
        return 0;
    };
    // A filesystem mounted inside the sandbox (owned by a user namespace below the initial one)
    // holds nothing of the host's.
    if let Some(ns) = field::<u64>(sb, OFF_SB_USER_NS) {
        if field::<u32>(ns, OFF_USERNS_LEVEL).unwrap_or(0) > 0 {
            return 0;
        }
    }
    let dev: u32 = field(sb, OFF_SB_DEV).unwrap_or(0);
    let mut key = LsmGrantKey {
        cgroup_id: cg,
        ino: 0,
        dev,
        _pad: 0,
    };
    let mut granted = 0u32;
    let mut d = dentry;
    let mut ino_of_file = 0u64;
    for level in 0..LSM_MAX_DEPTH {
        let Some(i) = field::<u64>(d, OFF_DENTRY_INODE) else {
            break;
        };
        key.ino = field::<u64>(i, OFF_INODE_INO).unwrap_or(0);
        if level == 0 {
            ino_of_file = key.ino;
        }
        // SAFETY: the value is only read.
        if let Some(bits) = unsafe { LSM_GRANTS.get(&key) } {
            // Rights add up along the path, as Landlock's do.
            granted |= *bits;
            if granted & want != 0 {
                return 0;
            }
        }
        let Some(parent) = field::<u64>(d, OFF_DENTRY_PARENT) else {
            break;
        };
        if parent == d {
            break; // the root of this filesystem
        }
        d = parent;
    }

    bump(slot, COUNTER_LSM_DENIED);
    mark_denied(flags);
    let Some(mut entry) = reserve::<LsmDenyEvent>(slot) else {
        bump(slot, COUNTER_DROPPED);
        bump(slot, COUNTER_DENIALS_DROPPED);
        return -EACCES;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record; every field is written before submit.
    unsafe {
        addr_of_mut!((*e).header).write(header(EVENT_LSM_DENY, cg));
        addr_of_mut!((*e).hook).write(hook);
        addr_of_mut!((*e)._pad).write([0; 3]);
        addr_of_mut!((*e).mode).write(mode);
        addr_of_mut!((*e).dev).write(dev as u64);
        addr_of_mut!((*e).ino).write(ino_of_file);
        let name = &mut *addr_of_mut!((*e).name);
        name[0] = 0;
        // struct qstr: the name pointer follows the 8-byte hash_len.
        let name_ptr = off(OFF_DENTRY_NAME)
            .and_then(|o| bpf_probe_read_kernel((dentry as usize + o + 8) as *const u64).ok());
        if let Some(ptr) = name_ptr {
            if bpf_probe_read_kernel_str_bytes(ptr as *const u8, name).is_err() {
                name[0] = 0;
            }
        }
    }
    entry.submit(0);
    -EACCES
}
