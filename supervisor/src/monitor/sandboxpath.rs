//! Where a path the plugin named leads inside its own sandbox.
//!
//! A miss inside a granted tree is not a violation: the loader probing library directories. But
//! in a tree the plugin may write, the plugin makes the symlinks: `/tmp/l -> /etc/shadow`, then
//! `open("/tmp/l")`, is a reach for a hidden file that reads as a miss below `/tmp`. So a miss in
//! a writable tree is followed through the sandbox's own root (`/proc/PID/root`), one component
//! at a time: each component is opened `O_PATH | O_NOFOLLOW` with `RESOLVE_IN_ROOT` (an absolute
//! link target stays inside the sandbox's root, `..` cannot climb above it, no magic link is
//! followed), and each symlink the plugin made is read and expanded, at most 40 of them, as the
//! kernel does. Only components inside the writable trees are opened: beyond them the rest of
//! the path is taken lexically, as for every other path (their links were made by the host).

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Symlinks expanded before giving up (the kernel's MAXSYMLINKS).
const MAX_LINKS: usize = 40;

/// The sandbox's root directory, opened once from a live process of the sandbox.
#[derive(Default)]
pub struct SandboxRoot {
    /// The plugin's process (PID 1 of the sandbox), asked when the event's process is gone.
    main_pid: Option<u32>,
    /// The sandbox's mount namespace (`/proc/PID/ns/mnt`, opened at launch), which outlives its
    /// processes while this descriptor holds it.
    mount_ns: Option<OwnedFd>,
    root: Option<OwnedFd>,
}

impl SandboxRoot {
    pub fn set_main_pid(&mut self, pid: u32) {
        self.main_pid = Some(pid);
    }

    pub fn set_mount_ns(&mut self, ns: OwnedFd) {
        self.mount_ns = Some(ns);
    }

    /// The root, opened from `pid`'s `/proc/PID/root` or the plugin's (after the shim's pivot:
    /// events come from the plugin, which runs only after it).
    fn root(&mut self, pid: u32) -> Option<BorrowedFd<'_>> {
        if self.root.is_none() {
            self.root = self
                .mount_ns
                .as_ref()
                .and_then(root_of_namespace)
                .or_else(|| {
                    [Some(pid), self.main_pid]
                        .into_iter()
                        .flatten()
                        .find_map(|p| open_root(p).ok())
                });
        }
        self.root.as_ref().map(|fd| {
            // SAFETY: the descriptor lives in `self` for as long as the borrow.
            unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }
        })
    }

    /// Whether `path` (sandbox-absolute, normalized) exists in the sandbox. Only for paths on
    /// filesystems the sandbox built itself (`/dev`): elsewhere a walk could cross into host
    /// mounts.
    pub fn exists(&mut self, path: &Path) -> bool {
        let pid = self.main_pid.unwrap_or(0);
        match self.root(pid) {
            Some(root) => match root.try_clone_to_owned() {
                Ok(root) => open(Some(&root), path, RESOLVE_IN_ROOT).is_ok(),
                Err(_) => false,
            },
            None => false,
        }
    }

    /// Where descriptor `fd` of the sandbox's process `pid` (a pid of its own namespace) leads:
    /// the link `proc/PID/fd/FD` below the sandbox's root, whose /proc is of the sandbox's pid
    /// namespace. Through the root rather than a host pid, which may be another process's once
    /// the plugin's has gone.
    pub fn fd_target(&mut self, pid: u64, fd: u32) -> Option<PathBuf> {
        let main = self.main_pid.unwrap_or(0);
        let root = self.root(main)?.try_clone_to_owned().ok()?;
        // O_PATH | O_NOFOLLOW: the magic link itself, which RESOLVE_NO_MAGICLINKS allows.
        let link = open(
            Some(&root),
            Path::new(&format!("proc/{pid}/fd/{fd}")),
            RESOLVE_IN_ROOT,
        )
        .ok()?;
        super::hostpath::read_link(&link)
    }

    /// Where `path` (absolute, as the plugin gave it) leads: a sandbox-absolute path with every
    /// symlink inside `walkable` trees expanded. `None` when it cannot be told (no live process
    /// of the sandbox, a link loop, an error other than ENOENT).
    pub fn resolve(
        &mut self,
        pid: u32,
        path: &Path,
        walkable: impl Fn(&Path) -> bool,
    ) -> Option<PathBuf> {
        let root = self.root(pid)?.try_clone_to_owned().ok()?;
        let mut rest: VecDeque<OsString> = names(path);
        let mut cur = PathBuf::from("/");
        let mut links = 0;
        while let Some(name) = rest.pop_front() {
            match name.as_bytes() {
                b"." => continue,
                b".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            let next = cur.join(&name);
            if !walkable(&next) {
                cur = next;
                continue;
            }
            let fd = match open(Some(&root), &next, RESOLVE_IN_ROOT) {
                Ok(fd) => fd,
                Err(libc::ENOENT) => {
                    // Missing from here on: the rest is only names.
                    cur = next;
                    continue;
                }
                Err(_) => return None,
            };
            if !is_symlink(&fd)? {
                cur = next;
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return None;
            }
            let target = super::hostpath::read_link(&fd)?;
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            for (i, n) in names(&target).into_iter().enumerate() {
                rest.insert(i, n);
            }
        }
        Some(cur)
    }
}

const RESOLVE_IN_ROOT: u64 = 0x10;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;

fn names(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// The root directory of a mount namespace: a short-lived thread of our own leaves the
/// process's shared filesystem context (`unshare(CLONE_FS)`), enters the namespace (which sets
/// its root to the namespace's root) and opens `/`. Works after the namespace's last process is
/// gone: the descriptor keeps the namespace and its mounts.
fn root_of_namespace(ns: &OwnedFd) -> Option<OwnedFd> {
    let ns = ns.try_clone().ok()?;
    std::thread::spawn(move || -> Option<OwnedFd> {
        // SAFETY: unshare and setns affect only this thread (its filesystem context is its own
        // after CLONE_FS), which ends right after; the path is NUL-terminated and the descriptor
        // returned is owned below.
        unsafe {
            if libc::unshare(libc::CLONE_FS) != 0
                || libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) != 0
            {
                return None;
            }
            let fd = libc::open(
                c"/".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            (fd >= 0).then(|| OwnedFd::from_raw_fd(fd))
        }
    })
    .join()
    .ok()
    .flatten()
}

/// `/proc/PID/root`, followed (it is a magic link to the process's root directory).
fn open_root(pid: u32) -> Result<OwnedFd, i32> {
    let c = CString::new(format!("/proc/{pid}/root")).map_err(|_| libc::ENOENT)?;
    // SAFETY: a NUL-terminated path; the descriptor returned is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: a descriptor this function just opened and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2(dir, path, O_PATH | O_NOFOLLOW | O_CLOEXEC, RESOLVE_NO_MAGICLINKS | extra)`; `path`
/// relative to `dir` (a leading `/` is dropped).
fn open(dir: Option<&OwnedFd>, path: &Path, extra: u64) -> Result<OwnedFd, i32> {
    let bytes = path.as_os_str().as_bytes();
    let bytes = match dir {
        Some(_) => bytes.strip_prefix(b"/").unwrap_or(bytes),
        None => bytes,
    };
    let c = CString::new(if bytes.is_empty() { b"." } else { bytes }).map_err(|_| libc::ENOENT)?;
    // SAFETY: `open_how` is plain data; zero is a valid value of each field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.resolve = RESOLVE_NO_MAGICLINKS | extra;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a NUL-terminated path and an `open_how` of the size passed; the descriptor
    // returned is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: a descriptor this function just opened and nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn is_symlink(fd: &OwnedFd) -> Option<bool> {
    // SAFETY: a zeroed stat is a valid buffer for the kernel to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an empty path with AT_EMPTY_PATH on our descriptor; `st` lives for the call.
    let rc = unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    (rc == 0).then_some(st.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The supervisor's own root stands in for a sandbox's: a link made in a scratch directory
    /// is followed, components outside the walkable tree are not opened.
    #[test]
    fn links_in_walkable_trees_are_expanded() {
        let dir = std::env::temp_dir().join(format!("stockade-sandboxpath-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc/nonexistent-target", dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("sub/../missing", dir.join("rel")).unwrap();
        std::os::unix::fs::symlink("loop", dir.join("loop")).unwrap();
        let mut root = SandboxRoot::default();
        let pid = std::process::id();
        let inside = |p: &Path| p.starts_with(&dir);
        assert_eq!(
            root.resolve(pid, &dir.join("abs/x"), inside),
            Some(PathBuf::from("/etc/nonexistent-target/x"))
        );
        assert_eq!(
            root.resolve(pid, &dir.join("rel"), inside),
            Some(dir.join("missing"))
        );
        assert_eq!(
            root.resolve(pid, &dir.join("sub/../../x"), inside),
            Some(dir.parent().unwrap().join("x"))
        );
        assert_eq!(root.resolve(pid, &dir.join("loop"), inside), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
