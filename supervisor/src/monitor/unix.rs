//! `[ipc]` in the kernel: the cgroup `connect_unix` and `sendmsg_unix` programs (kernel 6.7+).
//!
//! Why here and not through aya: aya 0.14 knows only the inet attach types of
//! `cgroup_sock_addr` programs (`CgroupSockAddrAttachType` has no unix variant and its ELF parser
//! maps no `cgroup/connect_unix` section), and a program of this type must be loaded with the
//! attach type it will be attached with. So the programs are written in sections aya accepts
//! (`cgroup/connect4`, `cgroup/sendmsg4`; see ebpf/src/unix.rs): aya creates every map of the
//! object, and here the same object is parsed again with aya-obj, its map references relocated
//! to the descriptors of the maps aya created, its calls linked, and the two programs loaded with
//! a raw `BPF_PROG_LOAD` carrying `expected_attach_type` `BPF_CGROUP_UNIX_CONNECT` (49) and
//! `BPF_CGROUP_UNIX_SENDMSG` (50). Each sandbox's cgroup gets them with `BPF_LINK_CREATE`; the
//! link descriptors live in its [`UnixLinks`] and closing them (when the sandbox is disarmed)
//! detaches the programs.
//!
//! When: when the host's set is loaded, after aya created the maps (their descriptors are read
//! from the `Ebpf`); the programs are pinned with the set and every later supervisor opens them. Where they do not load (before 6.7, or a
//! verifier that refuses them) the monitor reports them inactive, and the launch check of
//! `socket_scan.rs` stands in.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use aya::maps::Map;
use aya::Ebpf;

use crate::bpf_probe::ProgLoadAttr;
use crate::probe::Probe;

/// `union bpf_attr` commands and constants (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub use crate::bpf_probe::{BPF_CGROUP_UNIX_CONNECT, BPF_CGROUP_UNIX_SENDMSG};

/// The programs of ebpf/src/unix.rs: (name in the object, attach type).
const PROGRAMS: [(&str, u32); 2] = [
    ("connect_unix", BPF_CGROUP_UNIX_CONNECT),
    ("sendmsg_unix", BPF_CGROUP_UNIX_SENDMSG),
];

/// What doctor prints for the monitor.
pub const DETAIL: &str = "cgroup connect_unix/sendmsg_unix (attach types 49/50, loaded and attached by the supervisor): [ipc] judged at each connect and sendto by name; the launch check of the read-only grants still runs for sandboxes with a writable tree (symlinks)";

/// The fields of `union bpf_attr` that BPF_LINK_CREATE reads for a cgroup: the rest (target-
/// specific) stays zero.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// The two programs, loaded. Dropping it unloads them (links hold their own references).
#[derive(Debug)]
pub struct UnixHooks {
    programs: Vec<(u32, OwnedFd)>,
}

/// The programs attached to one sandbox's cgroup: closing the links detaches them.
#[derive(Debug, Default)]
pub struct UnixLinks {
    links: Vec<OwnedFd>,
}

impl UnixHooks {
    /// Loads both programs from `object` (the bytes `ebpf` was loaded from), relocated against
    /// the maps `ebpf` created. The error is the one line doctor prints.
    pub fn load(object: &[u8], ebpf: &Ebpf) -> Result<UnixHooks, String> {
        let t0 = std::time::Instant::now();
        let mut obj = aya_obj::Object::parse(object).map_err(|e| format!("the object: {e}"))?;
        tracing::debug!(
            us = t0.elapsed().as_micros() as u64,
            "unix programs: object parsed"
        );
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
        let defs = std::mem::take(&mut obj.maps);
        let fds: Vec<(&str, RawFd, &aya_obj::Map)> = ebpf
            .maps()
            .filter_map(|(name, map)| Some((name, map_fd(map)?, defs.get(name)?)))
            .collect();
        obj.relocate_maps(fds.into_iter(), &text_sections)
            .map_err(|e| format!("relocating the maps: {e}"))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| format!("linking the calls: {e}"))?;
        tracing::debug!(
            us = t0.elapsed().as_micros() as u64,
            "unix programs: relocated"
        );
        let mut programs = Vec::new();
        for (name, attach_type) in PROGRAMS {
            let program = obj
                .programs
                .get(name)
                .ok_or_else(|| format!("no program {name} in the object"))?;
            let function = obj
                .functions
                .get(&program.function_key())
                .ok_or_else(|| format!("no function for {name}"))?;
            let fd = prog_load(name, attach_type, &function.instructions)
                .map_err(|e| format!("{name} does not load: {e}"))?;
            programs.push((attach_type, fd));
        }
        tracing::debug!(
            us = t0.elapsed().as_micros() as u64,
            "unix programs: loaded"
        );
        Ok(UnixHooks { programs })
    }

    /// Pins both programs in `dir` (`prog-connect_unix`, `prog-sendmsg_unix`), for the host's
    /// set of monitors.
    pub fn pin(&self, dir: &std::path::Path) -> std::io::Result<()> {
        for ((name, _), (_, fd)) in PROGRAMS.iter().zip(&self.programs) {
            super::host::obj_pin(fd.as_fd(), &dir.join(format!("prog-{name}")))?;
        }
        Ok(())
    }

    /// Both programs, from the pins of [`UnixHooks::pin`].
    pub fn from_pins(dir: &std::path::Path) -> std::io::Result<UnixHooks> {
        let mut programs = Vec::new();
        for (name, attach_type) in PROGRAMS {
            let path = dir.join(format!("prog-{name}"));
            let fd = super::host::obj_get(&path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            programs.push((attach_type, fd));
        }
        Ok(UnixHooks { programs })
    }

    /// Attaches both programs to the cgroup directory `cgroup`.
    pub fn attach(&self, cgroup: BorrowedFd<'_>) -> std::io::Result<UnixLinks> {
        let t0 = std::time::Instant::now();
        let mut links = UnixLinks::default();
        for (attach_type, prog) in &self.programs {
            let mut attr = LinkCreateAttr {
                prog_fd: prog.as_raw_fd() as u32,
                target_fd: cgroup.as_raw_fd() as u32,
                attach_type: *attach_type,
                ..LinkCreateAttr::default()
            };
            // SAFETY: BPF_LINK_CREATE takes this layout and reads it; the descriptors in it are
            // open. Closing the link's descriptor detaches it.
            links
                .links
                .push(unsafe { super::host::bpf_fd(BPF_LINK_CREATE, &mut attr) }?);
        }
        tracing::debug!(
            us = t0.elapsed().as_micros() as u64,
            "unix programs: attached"
        );
        Ok(links)
    }
}

/// The descriptor of a map aya created (the variants this object uses).
fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::LruHashMap(d)
        | Map::RingBuf(d)
        | Map::ProgramArray(d)
        | Map::ArrayOfMaps(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// BPF_PROG_LOAD of a `cgroup_sock_addr` program with `expected_attach_type`; on a refusal, the
/// verifier's last lines (the whole log at debug level).
fn prog_load(
    name: &str,
    expected_attach_type: u32,
    insns: &[aya_obj::generated::bpf_insn],
) -> Result<OwnedFd, String> {
    let license = b"GPL\0";
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let load = |log: Option<&mut Vec<u8>>| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name,
            expected_attach_type,
            ..ProgLoadAttr::default()
        };
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = buf.len() as u32;
            attr.log_buf = buf.as_mut_ptr() as u64;
        }
        // SAFETY: BPF_PROG_LOAD takes this layout; the buffers it points to (instructions,
        // license, log) live across the call; the kernel copies the instructions and writes at
        // most `log_size` bytes.
        unsafe { super::host::bpf_fd(BPF_PROG_LOAD, &mut attr) }
    };
    match load(None) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // Again with the verifier's log, to say why.
            let mut buf = vec![0u8; 1 << 20];
            let _ = load(Some(&mut buf));
            let log = String::from_utf8_lossy(crate::monitor::event::c_bytes(&buf)).into_owned();
            tracing::debug!("verifier log of {name}:\n{log}");
            let tail: Vec<&str> = log.lines().rev().take(2).collect();
            if tail.is_empty() {
                Err(first.to_string())
            } else {
                Err(format!(
                    "{first} ({})",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                ))
            }
        }
    }
}

/// Whether BPF LSM programs load on this kernel: then `unix_stream_connect`/`unix_may_send` judge
/// the socket each connect reaches, and no launch walk runs.
pub fn lsm_loads(probe: &Probe) -> bool {
    probe
        .bpf
        .iter()
        .any(|(ty, r)| ty.starts_with("lsm") && r.is_ok())
}

/// Whether the cgroup unix socket hooks load on this kernel (`stockade doctor`'s probe).
pub fn hooks_load(probe: &Probe) -> bool {
    probe
        .bpf
        .iter()
        .any(|(ty, r)| ty.contains("connect_unix") && r.is_ok())
}

/// Whether binding an abstract name is stopped on this kernel: no hook refuses a unix `bind`
/// (no cgroup unix bind hook; BPF LSM `socket_bind` only where LSM programs load), so the
/// `sys_exit` raw tracepoint kills a process whose bind to an abstract name succeeded, before
/// the call returns (`FLAG_NO_ABSTRACT_BIND`): it never listens on the name.
pub fn abstract_bind_refused(probe: &Probe) -> bool {
    probe
        .bpf
        .iter()
        .any(|(ty, r)| ty.contains("raw_tracepoint") && r.is_ok())
}

/// Whether the launch check (`socket_scan`) must walk the read-only grants of `spec`, when the
/// unix socket programs are (`hooked`) or are not armed for it.
///
/// The programs judge the name the plugin gives; the kernel then resolves it, following
/// symlinks. A name below a writable tree is allowed, and there the plugin can make a symlink
/// to any path it can see: `ln -s /srv/data/daemon.sock /tmp/x` and a connect to `/tmp/x` reaches
/// a socket in a read-only grant that `[ipc] connect` does not list. So the walk is left out only
/// for a sandbox with no writable tree at all, where every name it can reach a socket by is one
/// the programs judge as given.
///
/// Where the LSM unix programs load (`reached`), the socket a name leads to is judged after the
/// kernel resolved it, symlinks included, and no walk is needed at all.
pub fn launch_check_needed(
    spec: &stockade_policy::LaunchSpec,
    hooked: bool,
    reached: bool,
) -> bool {
    !reached && (!hooked || !spec.ipc.writable.is_empty())
}

/// Whether `monitor`'s LSM programs judge the socket each unix connect or datagram reaches
/// (BPF LSM `unix_stream_connect`, `unix_may_send`).
pub fn reached_judged_by(monitor: &super::Monitor) -> bool {
    monitor.judges_reached_sockets()
}

/// Whether `monitor` judges unix socket connects in the kernel for the sandboxes it arms (its
/// [`super::Monitor::arm`] attaches the programs or fails).
pub fn armed_by(monitor: &super::Monitor) -> bool {
    monitor.capabilities().unix.active
}

/// The `UNIX_PATHS` entries of one sandbox, each with its verdict: each listed socket with its
/// NUL (only that exact name matches) and each writable tree with a trailing `/` (every name
/// below it matches) are allowed (1); each read-only tree with a trailing `/` is refused (0),
/// for a socket there is the host's. A name below no entry names nothing in the sandbox: it is
/// let through, the lookup answers ENOENT, and the supervisor judges that miss like any other
/// (a hidden host socket is a namespace violation; nscd's socket, which glibc tries on every
/// name lookup, is not where it exists nowhere). Entries too long for the trie's key are left
/// out (socket names are at most 107 bytes, so no name below such a tree reaches the hook).
pub fn path_keys(
    cgroup_id: u64,
    ipc: &stockade_policy::IpcSpec,
) -> Vec<(stockade_ebpf_common::MissKey, u8)> {
    use std::os::unix::ffi::OsStrExt;
    let listed = ipc.connect.iter().map(|p| {
        let mut b = p.as_os_str().as_bytes().to_vec();
        b.push(0);
        b
    });
    let trees = ipc.writable.iter().map(|p| {
        let mut b = p.as_os_str().as_bytes().to_vec();
        if b.last() != Some(&b'/') {
            b.push(b'/');
        }
        b
    });
    let refused = ipc.read_only.iter().map(|p| {
        let mut b = p.as_os_str().as_bytes().to_vec();
        if b.last() != Some(&b'/') {
            b.push(b'/');
        }
        (b, 0)
    });
    listed
        .chain(trees)
        .map(|b| (b, 1))
        .chain(refused)
        .filter_map(|(bytes, verdict)| key(cgroup_id, &bytes).map(|k| (k, verdict)))
        .collect()
}

fn key(cgroup_id: u64, bytes: &[u8]) -> Option<stockade_ebpf_common::MissKey> {
    use stockade_ebpf_common::{MissKey, MISS_KEY_DATA, MISS_PATH_LEN};
    if bytes.is_empty() || bytes.len() > MISS_PATH_LEN {
        return None;
    }
    let mut data = [0u8; MISS_KEY_DATA];
    data[..8].copy_from_slice(&cgroup_id.to_le_bytes());
    data[8..8 + bytes.len()].copy_from_slice(bytes);
    Some(MissKey {
        prefix_len: ((8 + bytes.len()) * 8) as u32,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn listed_sockets_are_exact_writable_trees_allowed_read_only_trees_refused() {
        let ipc = stockade_policy::IpcSpec {
            connect: vec![PathBuf::from("/run/foo.sock")],
            writable: vec![PathBuf::from("/tmp"), PathBuf::from("/srv/state/")],
            read_only: vec![PathBuf::from("/usr/lib"), PathBuf::from("/proc")],
            bind_abstract: false,
        };
        let keys = path_keys(7, &ipc);
        let text = |(k, verdict): &(stockade_ebpf_common::MissKey, u8)| {
            let n = k.prefix_len as usize / 8;
            (
                u64::from_le_bytes(k.data[..8].try_into().unwrap()),
                k.data[8..n].to_vec(),
                *verdict,
            )
        };
        assert_eq!(text(&keys[0]), (7, b"/run/foo.sock\0".to_vec(), 1));
        assert_eq!(text(&keys[1]), (7, b"/tmp/".to_vec(), 1));
        assert_eq!(text(&keys[2]), (7, b"/srv/state/".to_vec(), 1));
        assert_eq!(text(&keys[3]), (7, b"/usr/lib/".to_vec(), 0));
        assert_eq!(text(&keys[4]), (7, b"/proc/".to_vec(), 0));
        assert_eq!(keys.len(), 5);
    }
}
