//! Does a path that a plugin reached for exist on the host? The answer decides whether an ENOENT
//! outside every grant is a violation (the mount namespace hid something) or nothing (the path
//! exists nowhere). The path is the plugin's choice, so the lookup must not let it steer the
//! supervisor (root, in the host's mount namespace) into a hung NFS or FUSE mount, or make autofs
//! mount something.
//!
//! 1. `openat2(O_PATH | O_NOFOLLOW, RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS)`: a walk that never
//!    leaves the root filesystem and triggers no automount. Most answers end here.
//! 2. A path on another mount: the filesystem type of the mount that holds it (the longest mount
//!    point prefix in /proc/self/mountinfo). On a local filesystem, `fstatat` with
//!    `AT_NO_AUTOMOUNT`, in a worker thread the supervisor waits on for a bounded time; on
//!    anything else (network, FUSE, autofs, unknown) no lookup at all.
//!
//! Anything not answered is [`Presence::Unknown`], which the attributor counts as a violation: a
//! plugin that reaches outside its grants into such a place gets no benefit of the doubt.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Present,
    Absent,
    /// Not looked up, and why.
    Unknown(String),
}

/// Filesystems whose lookups are local and have no side effects. Everything else (nfs, cifs,
/// fuse.*, autofs, 9p, ceph, …) is never looked up.
const LOCAL: &[&str] = &[
    "ext2",
    "ext3",
    "ext4",
    "xfs",
    "btrfs",
    "f2fs",
    "jfs",
    "nilfs2",
    "reiserfs",
    "bcachefs",
    "zfs",
    "vfat",
    "exfat",
    "ntfs3",
    "hfsplus",
    "iso9660",
    "squashfs",
    "erofs",
    "overlay",
    "tmpfs",
    "ramfs",
    "devtmpfs",
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "bpf",
    "tracefs",
    "debugfs",
    "securityfs",
    "pstore",
    "efivarfs",
    "configfs",
    "hugetlbfs",
];

/// How long the supervise loop waits for a lookup on a local filesystem.
const LOOKUP_WAIT: Duration = Duration::from_millis(50);
/// Definite answers kept; the cache is emptied when full.
const CACHE_MAX: usize = 4096;
/// How long a read of the mount table serves.
const MOUNTS_TTL: Duration = Duration::from_secs(1);

pub struct HostPaths {
    cache: HashMap<PathBuf, bool>,
    mounts: Vec<(PathBuf, String)>,
    mounts_read: Option<Instant>,
    /// A worker's lookup has not returned yet (a stuck one stays stuck: no second is started).
    busy: Arc<AtomicBool>,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths::new()
    }
}

impl HostPaths {
    pub fn new() -> HostPaths {
        HostPaths {
            cache: HashMap::new(),
            mounts: Vec::new(),
            mounts_read: None,
            busy: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `path` must be absolute and normalized.
    pub fn presence(&mut self, path: &Path) -> Presence {
        if let Some(&present) = self.cache.get(path) {
            return if present {
                Presence::Present
            } else {
                Presence::Absent
            };
        }
        let answer = self.look(path);
        let definite = match answer {
            Presence::Present => Some(true),
            Presence::Absent => Some(false),
            Presence::Unknown(_) => None,
        };
        if let Some(present) = definite {
            if self.cache.len() >= CACHE_MAX {
                self.cache.clear();
            }
            self.cache.insert(path.to_path_buf(), present);
        }
        answer
    }

    fn look(&mut self, path: &Path) -> Presence {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
            return Presence::Absent; // a NUL byte: no such path anywhere
        };
        match open_on_root_fs(&c) {
            Ok(()) => return Presence::Present,
            Err(libc::ENOENT) | Err(libc::ENOTDIR) | Err(libc::ENAMETOOLONG) => {
                return Presence::Absent
            }
            // EXDEV: another mount on the way; ENOSYS: a kernel without openat2 (before 5.6);
            // ELOOP: a magic link.
            Err(_) => {}
        }
        self.refresh_mounts();
        let fstype = mount_of(&self.mounts, path).unwrap_or("?");
        if !LOCAL.contains(&fstype) {
            return Presence::Unknown(format!("on a {fstype} filesystem: not looked up"));
        }
        self.stat_in_worker(c)
    }

    fn refresh_mounts(&mut self) {
        if self.mounts_read.is_some_and(|t| t.elapsed() < MOUNTS_TTL) {
            return;
        }
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        self.mounts = parse_mountinfo(&text);
        self.mounts_read = Some(Instant::now());
    }

    fn stat_in_worker(&self, path: CString) -> Presence {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Presence::Unknown("an earlier lookup has not returned".into());
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let busy = self.busy.clone();
        let spawned = std::thread::Builder::new()
            .name("stockade-lookup".into())
            .spawn(move || {
                let r = stat_no_automount(&path);
                busy.store(false, Ordering::Release);
                let _ = tx.send(r);
            });
        if spawned.is_err() {
            self.busy.store(false, Ordering::Release);
            return Presence::Unknown("no thread for the lookup".into());
        }
        match rx.recv_timeout(LOOKUP_WAIT) {
            Ok(Ok(())) => Presence::Present,
            Ok(Err(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG)) => Presence::Absent,
            Ok(Err(e)) => Presence::Unknown(format!("lookup failed: errno {e}")),
            Err(_) => Presence::Unknown(format!(
                "the lookup took longer than {} ms",
                LOOKUP_WAIT.as_millis()
            )),
        }
    }
}

const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `path` as O_PATH without following a final symlink and without leaving the root
/// filesystem; Ok if something is there.
fn open_on_root_fs(path: &CString) -> Result<(), i32> {
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 reads a NUL-terminated path and an open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: a descriptor this function just opened.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn stat_no_automount(path: &CString) -> Result<(), i32> {
    // SAFETY: a zeroed stat is a valid buffer for fstatat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a stat buffer that live for the call.
    let rc = unsafe {
        libc::fstatat(
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// (mount point, filesystem type) of every line of a mountinfo text, in its order.
fn parse_mountinfo(text: &str) -> Vec<(PathBuf, String)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let point = fields.nth(4)?;
            let fstype = fields.skip_while(|f| *f != "-").nth(1)?;
            Some((PathBuf::from(unescape(point)), fstype.to_string()))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The filesystem type of the mount holding `path`: the longest mount point that is a prefix of
/// it; among equal ones the last (mounted on top).
fn mount_of<'a>(mounts: &'a [(PathBuf, String)], path: &Path) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for (point, fstype) in mounts {
        if path.starts_with(point) {
            let len = point.components().count();
            if best.is_none_or(|(l, _)| len >= l) {
                best = Some((len, fstype));
            }
        }
    }
    best.map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_filesystem_answers_directly() {
        let mut h = HostPaths::new();
        assert_eq!(h.presence(Path::new("/")), Presence::Present);
        assert_eq!(
            h.presence(Path::new("/no-such-dir-stockade/x")),
            Presence::Absent
        );
        // A file used as a directory: nothing there either.
        let exe = std::env::current_exe().unwrap();
        assert_eq!(h.presence(&exe.join("x")), Presence::Absent);
        assert_eq!(h.presence(&exe), Presence::Present);
    }

    #[test]
    fn the_mount_table_decides_who_is_looked_up() {
        let text = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
30 22 0:40 / /net rw,relatime shared:2 - autofs systemd-1 rw
31 22 0:41 / /mnt/my\\040share rw - nfs4 srv:/x rw
32 31 0:42 / /mnt/my\\040share/local rw - tmpfs tmpfs rw
33 22 0:43 / /home/u/fs rw - fuse.sshfs u@h: rw
";
        let m = parse_mountinfo(text);
        assert_eq!(m[2].0, Path::new("/mnt/my share"));
        assert_eq!(mount_of(&m, Path::new("/etc/shadow")), Some("ext4"));
        assert_eq!(mount_of(&m, Path::new("/net/host/x")), Some("autofs"));
        assert_eq!(mount_of(&m, Path::new("/mnt/my share/a")), Some("nfs4"));
        assert_eq!(
            mount_of(&m, Path::new("/mnt/my share/local/a")),
            Some("tmpfs")
        );
        assert_eq!(mount_of(&m, Path::new("/home/u/fs/x")), Some("fuse.sshfs"));
        // A prefix by components, not by bytes.
        assert_eq!(mount_of(&m, Path::new("/network")), Some("ext4"));
        for remote in ["autofs", "nfs4", "fuse.sshfs"] {
            assert!(!LOCAL.contains(&remote));
        }
    }

    #[test]
    fn unescape_reads_octal_escapes_only() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/a\\09"), "/a\\09");
        assert_eq!(unescape("/a\\"), "/a\\");
    }
}
