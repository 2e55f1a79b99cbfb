//! Which BPF program types load on this kernel: a two-instruction program ("return 1", or 0 for an
//! LSM hook) per type, loaded with BPF_PROG_LOAD and closed at once. The eBPF monitors of a later issue build on this
//! answer; `stockade doctor` shows it now so operators know what their kernel offers.

use std::os::fd::{FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_CGROUP_UNIX_CONNECT: u32 = 49;
pub const BPF_CGROUP_UNIX_SENDMSG: u32 = 50;
const BPF_PROG_TYPE_LSM: u32 = 29;
const BPF_LSM_MAC: u32 = 27;

/// The fields of `union bpf_attr` that BPF_PROG_LOAD reads, up to `attach_btf_id` (the probes
/// here and the unix socket programs' loader, `monitor/unix.rs`).
#[repr(C)]
#[derive(Default)]
pub(crate) struct ProgLoadAttr {
    pub(crate) prog_type: u32,
    pub(crate) insn_cnt: u32,
    pub(crate) insns: u64,
    pub(crate) license: u64,
    pub(crate) log_level: u32,
    pub(crate) log_size: u32,
    pub(crate) log_buf: u64,
    pub(crate) kern_version: u32,
    pub(crate) prog_flags: u32,
    pub(crate) prog_name: [u8; 16],
    pub(crate) prog_ifindex: u32,
    pub(crate) expected_attach_type: u32,
    pub(crate) prog_btf_fd: u32,
    pub(crate) func_info_rec_size: u32,
    pub(crate) func_info: u64,
    pub(crate) func_info_cnt: u32,
    pub(crate) line_info_rec_size: u32,
    pub(crate) line_info: u64,
    pub(crate) line_info_cnt: u32,
    pub(crate) attach_btf_id: u32,
    pub(crate) attach_prog_fd: u32,
    pub(crate) _pad: u32,
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
        // Kernel 6.7+: pathname and abstract unix sockets ([ipc]).
        (
            "cgroup_sock_addr (connect_unix)",
            BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            BPF_CGROUP_UNIX_CONNECT,
        ),
    ]
    .into_iter()
    .map(|(name, ty, attach)| (name, load(ty, attach, 0)))
    .chain(std::iter::once(("lsm (file_open)", lsm_file_open())))
    .collect()
}

/// A BPF LSM program on the `file_open` hook. It needs the hook's BTF id from the kernel's own
/// BTF, and the kernel must list `bpf` among its LSMs; even then a lockdown or a policy of the
/// host may refuse it (these hosts answer EPERM).
pub fn lsm_file_open() -> Result<(), String> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux")
        .map_err(|e| format!("no kernel BTF (/sys/kernel/btf/vmlinux): {e}"))?;
    lsm_file_open_with(&btf)
}

/// [`lsm_file_open`] with the kernel's BTF read already.
pub fn lsm_file_open_with(btf: &[u8]) -> Result<(), String> {
    let active = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    if !active.is_empty() && !active.split(',').any(|l| l.trim() == "bpf") {
        return Err("`bpf` is not among the active LSMs (lsm= boot parameter)".into());
    }
    if btf.is_empty() {
        return Err("no kernel BTF (/sys/kernel/btf/vmlinux)".into());
    }
    let id =
        btf_func_id(btf, "bpf_lsm_file_open").ok_or("no bpf_lsm_file_open in the kernel's BTF")?;
    load(BPF_PROG_TYPE_LSM, BPF_LSM_MAC, id)
}

/// The type id of function `name` in a raw BTF blob (the kernel's /sys/kernel/btf/vmlinux).
pub fn btf_func_id(btf: &[u8], name: &str) -> Option<u32> {
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(btf.get(off..off + 4)?.try_into().ok()?))
    };
    if btf.get(0..2)? != [0x9f, 0xeb] {
        return None;
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let strings = hdr_len + str_off;
    let name_at = |off: u32| -> Option<&[u8]> {
        let start = strings + off as usize;
        let rest = btf.get(start..)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    };
    const KIND_FUNC: u32 = 12;
    let (mut at, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
    let mut id = 1u32;
    while at + 12 <= end {
        let (name_off, info) = (u32_at(at)?, u32_at(at + 4)?);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        if kind == KIND_FUNC && name_at(name_off)? == name.as_bytes() {
            return Some(id);
        }
        // Each kind is followed by data of its own size (include/uapi/linux/btf.h).
        let extra = match kind {
            1 | 14 | 17 => 4,     // int, var, decl_tag
            3 => 12,              // array
            4 | 5 => 12 * vlen,   // struct, union: members
            6 | 13 => 8 * vlen,   // enum values, func_proto params
            15 | 19 => 12 * vlen, // datasec entries, enum64 values
            _ => 0,               // ptr, fwd, typedef, qualifiers, func, float, type_tag
        };
        at += 12 + extra;
        id += 1;
    }
    None
}

/// A raw BTF blob (the kernel's /sys/kernel/btf/vmlinux), indexed by type id. Rust eBPF
/// programs have no CO-RE relocations, so the LSM programs get kernel struct offsets from here.
pub struct BtfIndex<'a> {
    data: &'a [u8],
    strings: usize,
    /// Where each type id's record starts (id 0 is void).
    starts: Vec<usize>,
}

const BTF_KIND_STRUCT: u32 = 4;
const BTF_KIND_UNION: u32 = 5;

impl<'a> BtfIndex<'a> {
    pub fn new(data: &'a [u8]) -> Option<BtfIndex<'a>> {
        let mut index = BtfIndex {
            data,
            strings: 0,
            starts: vec![0],
        };
        if data.get(0..2)? != [0x9f, 0xeb] {
            return None;
        }
        let hdr_len = index.u32_at(4)? as usize;
        let (type_off, type_len) = (index.u32_at(8)? as usize, index.u32_at(12)? as usize);
        index.strings = hdr_len + index.u32_at(16)? as usize;
        let (mut at, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        while at + 12 <= end {
            index.starts.push(at);
            let info = index.u32_at(at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            // Each kind is followed by data of its own size (include/uapi/linux/btf.h).
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 => 12 * vlen,
                6 | 13 => 8 * vlen,
                15 | 19 => 12 * vlen,
                _ => 0,
            };
            at += 12 + extra;
        }
        Some(index)
    }

    fn u32_at(&self, off: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.data.get(off..off + 4)?.try_into().ok()?,
        ))
    }

    fn name_at(&self, off: u32) -> Option<&'a [u8]> {
        let rest = self.data.get(self.strings + off as usize..)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    }

    /// The byte offset of `member` in `struct name`, looking into anonymous struct and union
    /// members.
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        (1..self.starts.len() as u32)
            .filter(|&id| {
                let at = self.starts[id as usize];
                let kind = (self.u32_at(at + 4).unwrap_or(0) >> 24) & 0x1f;
                kind == BTF_KIND_STRUCT
                    && self.u32_at(at).and_then(|n| self.name_at(n)) == Some(name.as_bytes())
            })
            .find_map(|id| self.find(id, member.as_bytes(), 0))
    }

    fn find(&self, id: u32, member: &[u8], depth: u32) -> Option<u32> {
        let at = *self.starts.get(id as usize)?;
        let info = self.u32_at(at + 4)?;
        let (kind, vlen, kflag) = ((info >> 24) & 0x1f, info & 0xffff, info >> 31);
        if (kind != BTF_KIND_STRUCT && kind != BTF_KIND_UNION) || depth > 8 {
            return None;
        }
        for i in 0..vlen as usize {
            let m = at + 12 + 12 * i;
            let (name_off, ty, raw) = (self.u32_at(m)?, self.u32_at(m + 4)?, self.u32_at(m + 8)?);
            // With kind_flag set, the low 24 bits are the bit offset (the rest a bitfield size).
            let bits = if kflag == 1 { raw & 0xff_ffff } else { raw };
            if name_off == 0 {
                if let Some(inner) = self.find(ty, member, depth + 1) {
                    return Some(bits / 8 + inner);
                }
            } else if self.name_at(name_off)? == member {
                return Some(bits / 8);
            }
        }
        None
    }
}

fn load(prog_type: u32, expected_attach_type: u32, attach_btf_id: u32) -> Result<(), String> {
    // r0 = 1; exit (LSM hooks: r0 = 0, "allow")
    let r0 = if prog_type == BPF_PROG_TYPE_LSM {
        0
    } else {
        1u64
    };
    let insns: [u64; 2] = [0x0000_0000_0000_00b7 | (r0 << 32), 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type,
        attach_btf_id,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_functions_in_the_kernel_btf() {
        let Ok(btf) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            println!("skipped: finds_functions_in_the_kernel_btf: this kernel exposes no BTF");
            return;
        };
        // Every kernel with BTF has these; the LSM hook exists where CONFIG_BPF_LSM is set.
        let read = btf_func_id(&btf, "vfs_read").expect("vfs_read in BTF");
        let exit = btf_func_id(&btf, "do_exit").expect("do_exit in BTF");
        assert_ne!(read, exit);
        assert_eq!(btf_func_id(&btf, "stockade_no_such_function"), None);
        assert_eq!(btf_func_id(b"not btf at all", "do_exit"), None);
    }

    #[test]
    fn finds_struct_members_in_the_kernel_btf() {
        let Ok(btf) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            println!("skipped: finds_struct_members_in_the_kernel_btf: this kernel exposes no BTF");
            return;
        };
        let index = BtfIndex::new(&btf).expect("kernel BTF parses");
        // struct path { struct vfsmount *mnt; struct dentry *dentry; }: a stable layout.
        assert_eq!(index.member_offset("path", "mnt"), Some(0));
        assert_eq!(index.member_offset("path", "dentry"), Some(8));
        // pt_regs is the ptrace ABI: orig_ax is word 15.
        assert_eq!(index.member_offset("pt_regs", "orig_ax"), Some(120));
        // Members inside anonymous unions (dentry's d_name, in a union with d_u in some kernels).
        assert!(index.member_offset("dentry", "d_name").is_some());
        assert!(index.member_offset("file", "f_mode").is_some());
        assert_eq!(index.member_offset("file", "stockade_no_such_member"), None);
        assert_eq!(index.member_offset("stockade_no_such_struct", "x"), None);
    }
}
