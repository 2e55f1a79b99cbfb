//! Does a path that a plugin reached for exist on the host? The answer decides whether an ENOENT
//! outside every grant is a violation (the mount namespace hid something) or nothing (the path
//! exists nowhere). The path is the plugin's choice, so the lookup must not let it steer the
//! supervisor (root, in the host's mount namespace) into a hung NFS or FUSE mount or make autofs
//! mount something.
//!
//! The path is walked one component at a time, each with `openat(dir, name, O_PATH |
//! O_NOFOLLOW)`: a single component is always the last of its lookup, and the last component of
//! an `O_PATH | O_NOFOLLOW` open is neither followed (symlinks, magic links) nor automounted.
//! After each step, the mount the new descriptor lies on is found by its id (`/proc/self/fdinfo`,
//! which asks no filesystem) in the mount table; unless that filesystem is a local one (or the
//! root filesystem itself), the walk stops before asking it anything. A symlink before the last
//! component is read and its target walked the same way, one component at a time (at most 40
//! links, as the kernel): glibc asks for `/var/run/nscd/socket`, and `/var/run` is a link to
//! `/run` on most hosts. An automount point before the last component stops the walk. No step
//! waits on anything but local filesystems, so it runs inline.
//!
//! Anything not answered is [`Presence::Unknown`], which the attributor counts as a violation: a
//! plugin that reaches outside its grants into such a place gets no benefit of the doubt.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Present,
    Absent,
    /// Not looked up, and why.
    Unknown(String),
}

/// Filesystems whose lookups are local and have no side effects. Everything else (nfs, cifs,
/// fuse.*, autofs, 9p, ceph, …) is never asked anything.
const LOCAL: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "nilfs2", "reiserfs", "bcachefs", "zfs",
    "vfat", "exfat", "ntfs3", "hfsplus", "iso9660", "squashfs", "erofs", "overlay", "tmpfs",
    "ramfs", "rootfs", "devtmpfs", "proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue",
];

/// Definite answers kept; the cache is emptied when full.
const CACHE_MAX: usize = 4096;
/// How long an answer serves: a file created on the host later must not stay "absent".
const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// STATX_ATTR_AUTOMOUNT: the dentry is an automount trigger.
const ATTR_AUTOMOUNT: u64 = 0x1000;

#[derive(Default)]
pub struct HostPaths {
    cache: HashMap<PathBuf, (bool, std::time::Instant)>,
    /// mount id -> filesystem type, as last read (re-read whenever a walk enters another mount:
    /// ids are reused).
    mounts: HashMap<u64, String>,
}

impl HostPaths {
    pub fn new() -> HostPaths {
        HostPaths::default()
    }

    /// `path` must be absolute and normalized (no `.` or `..`).
    pub fn presence(&mut self, path: &Path) -> Presence {
        if let Some(&(present, at)) = self.cache.get(path) {
            if at.elapsed() < CACHE_TTL {
                return if present {
                    Presence::Present
                } else {
                    Presence::Absent
                };
            }
        }
        let answer = self.walk(path);
        let definite = match answer {
            Presence::Present => Some(true),
            Presence::Absent => Some(false),
            Presence::Unknown(_) => None,
        };
        if let Some(present) = definite {
            if self.cache.len() >= CACHE_MAX {
                self.cache.clear();
            }
            self.cache
                .insert(path.to_path_buf(), (present, std::time::Instant::now()));
        }
        answer
    }

    fn walk(&mut self, path: &Path) -> Presence {
        let mut names: std::collections::VecDeque<std::ffi::OsString> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                _ => None,
            })
            .collect();
        let root = match open_path(None, std::ffi::OsStr::new("/")) {
            Ok(fd) => fd,
            Err(e) => return Presence::Unknown(format!("/: errno {e}")),
        };
        // The supervisor's own root filesystem is trusted whatever its type (the VM runner's is
        // 9p): if it hung, the supervisor would be stuck loading its own files anyway.
        let Some(root_mount) = mount_id(&root) else {
            return Presence::Unknown("no mount id in fdinfo".into());
        };
        let Ok(mut dir) = root.try_clone() else {
            return Presence::Unknown("dup of /".into());
        };
        let mut mount = root_mount;
        let mut links = 0;
        while let Some(name) = names.pop_front() {
            let last = names.is_empty();
            let fd = match open_path(Some(&dir), &name) {
                Ok(fd) => fd,
                Err(libc::ENOENT | libc::ENOTDIR | libc::ENAMETOOLONG) => return Presence::Absent,
                Err(e) => return Presence::Unknown(format!("errno {e} on the way")),
            };
            mount = match self.local_mount(&fd, mount) {
                Ok(id) => id,
                Err(why) => return Presence::Unknown(why),
            };
            if last {
                return Presence::Present;
            }
            // Local now; statx may ask it. An automount trigger is not walked through; a link
            // is read and its target walked the same careful way (at most 40, as the kernel).
            match kind(&fd) {
                Ok((mode, attributes)) => {
                    if mode & libc::S_IFMT == libc::S_IFLNK {
                        links += 1;
                        let Some(target) = read_link(&fd).filter(|_| links <= 40) else {
                            return Presence::Unknown("a link loop on the way".into());
                        };
                        let parts: Vec<std::ffi::OsString> = target
                            .components()
                            .filter_map(|c| match c {
                                Component::Normal(n) => Some(n.to_os_string()),
                                Component::ParentDir => Some("..".into()),
                                _ => None,
                            })
                            .collect();
                        for p in parts.into_iter().rev() {
                            names.push_front(p);
                        }
                        if target.is_absolute() {
                            let Ok(r) = root.try_clone() else {
                                return Presence::Unknown("dup of /".into());
                            };
                            dir = r;
                            mount = root_mount;
                        }
                        continue;
                    }
                    if attributes & ATTR_AUTOMOUNT != 0 {
                        return Presence::Unknown("an automount point on the way".into());
                    }
                    if mode & libc::S_IFMT != libc::S_IFDIR {
                        return Presence::Absent; // a file used as a directory
                    }
                }
                Err(e) => return Presence::Unknown(format!("errno {e} on the way")),
            }
            dir = fd;
        }
        Presence::Present // the root itself
    }

    /// The id of the mount `fd` lies on, if its filesystem is a local one. `previous`: the mount
    /// of the step before (the same mount needs no second look).
    fn local_mount(&mut self, fd: &OwnedFd, previous: u64) -> Result<u64, String> {
        let id = mount_id(fd).ok_or("no mount id in fdinfo")?;
        if previous == id {
            return Ok(id);
        }
        // Another mount: read the table again (ids are reused after an unmount).
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        self.mounts = parse_mount_types(&text);
        let fstype = self.mounts.get(&id).map_or("?", String::as_str);
        if LOCAL.contains(&fstype) {
            Ok(id)
        } else {
            Err(format!("on a {fstype} filesystem: not looked up"))
        }
    }
}

/// `openat(dir or AT_FDCWD, name, O_PATH | O_NOFOLLOW | O_CLOEXEC)`.
fn open_path(dir: Option<&OwnedFd>, name: &std::ffi::OsStr) -> Result<OwnedFd, i32> {
    let c = CString::new(name.as_bytes()).map_err(|_| libc::ENOENT)?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a NUL-terminated name; the descriptor returned is owned below.
    let fd = unsafe {
        libc::openat(
            dirfd,
            c.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: a descriptor this function just opened and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The target of the link `fd` (opened `O_PATH | O_NOFOLLOW`) names.
pub(super) fn read_link(fd: &OwnedFd) -> Option<PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: an empty path on an O_PATH descriptor of the link itself; `buf` is writable for
    // its length.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(PathBuf::from(std::ffi::OsString::from_vec(buf)))
}

/// The mount id of an open descriptor, from `/proc/self/fdinfo` (the VFS answers; the file's
/// filesystem is not asked).
fn mount_id(fd: &OwnedFd) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// (mode, attributes) of the object `fd` refers to, without following it.
fn kind(fd: &OwnedFd) -> Result<(u32, u64), i32> {
    // SAFETY: a zeroed statx is a valid buffer for the kernel to fill.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH on our descriptor; `st` lives for
    // the call.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_TYPE,
            &mut st,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    Ok((u32::from(st.stx_mode), st.stx_attributes))
}

/// mount id -> filesystem type, from a mountinfo text.
fn parse_mount_types(text: &str) -> HashMap<u64, String> {
    text.lines()
        .filter_map(|line| {
            let id = line.split(' ').next()?.parse().ok()?;
            let fstype = line.split(' ').skip_while(|f| *f != "-").nth(1)?;
            Some((id, fstype.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_answers_for_the_root_filesystem() {
        let mut h = HostPaths::new();
        assert_eq!(h.presence(Path::new("/")), Presence::Present);
        assert_eq!(
            h.presence(Path::new("/no-such-dir-stockade/x")),
            Presence::Absent
        );
        // (Not this test's own executable: in the VM runner it lies on a 9p mount, which is not
        // looked up.)
        assert_eq!(h.presence(Path::new("/etc/passwd")), Presence::Present);
        // A file used as a directory: nothing there either.
        assert_eq!(h.presence(Path::new("/etc/passwd/x")), Presence::Absent);
    }

    #[test]
    fn links_are_walked_the_same_careful_way() {
        let dir = std::env::temp_dir().join(format!("stockade-hostpath-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/", &link).unwrap();
        let missing = dir.join("missing");
        let _ = std::fs::remove_file(&missing);
        std::os::unix::fs::symlink("nowhere/at/all", &missing).unwrap();
        let looping = dir.join("loop");
        let _ = std::fs::remove_file(&looping);
        std::os::unix::fs::symlink("loop", &looping).unwrap();
        let mut h = HostPaths::new();
        // The link itself exists; through it, its target is walked component by component.
        assert_eq!(h.presence(&link), Presence::Present);
        assert_eq!(h.presence(&link.join("etc")), Presence::Present);
        assert_eq!(h.presence(&link.join("no-such-dir")), Presence::Absent);
        assert_eq!(h.presence(&missing.join("x")), Presence::Absent);
        assert!(matches!(
            h.presence(&looping.join("x")),
            Presence::Unknown(_)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_mount_table_names_each_mounts_type() {
        let text = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
30 22 0:40 / /net rw,relatime shared:2 - autofs systemd-1 rw
31 22 0:41 / /mnt/my\\040share rw - nfs4 srv:/x rw
33 22 0:43 / /home/u/fs rw - fuse.sshfs u@h: rw
";
        let m = parse_mount_types(text);
        assert_eq!(m[&22], "ext4");
        assert_eq!(m[&30], "autofs");
        assert_eq!(m[&31], "nfs4");
        assert_eq!(m[&33], "fuse.sshfs");
        for remote in ["autofs", "nfs4", "fuse.sshfs", "?"] {
            assert!(!LOCAL.contains(&remote));
        }
    }
}
