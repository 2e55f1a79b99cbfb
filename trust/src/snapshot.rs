//! Reading a package once: every file opened through its directory's descriptor (never by a
//! path, never through a symlink), hashed from that descriptor, and — when the package is to
//! run — written, from the same bytes that were hashed, into a sealed copy: a new directory
//! only root can change, whose files are read-only. What was verified is then what runs,
//! whatever happens to the original files afterwards.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha3::{Digest, Sha3_512};

use crate::rotation::{MAX_ROTATION_BYTES, ROTATION_FILE};
use crate::statement::{
    valid_path, Entry, Kind, MAX_ENTRIES, MAX_PATH_BYTES, MAX_SIGNATURE_BYTES, SIGNATURE_FILE,
};

/// Bounds on what one package may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: usize,
    pub max_bytes: u64,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_entries: MAX_ENTRIES,
            max_bytes: 4 << 30,
            max_depth: 32,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: a symbolic link; a package holds files and directories only")]
    Symlink { path: String },
    #[error("{path}: not a regular file or a directory")]
    Special { path: String },
    #[error("{path:?}: a name this format cannot hold (control characters, or not UTF-8)")]
    BadName { path: String },
    #[error("{path}…: a path longer than {MAX_PATH_BYTES} bytes")]
    PathTooLong { path: String },
    #[error("more than {0} files and directories")]
    TooManyEntries(usize),
    #[error("more than {0} bytes in all")]
    TooLarge(u64),
    #[error("{path}: directories nested deeper than {depth}")]
    TooDeep { path: String, depth: usize },
    #[error("{0}: larger than it can be")]
    SignatureTooLarge(&'static str),
    #[error("writing the sealed copy {}: {source}", path.display())]
    Seal {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SnapshotError {
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            SnapshotError::Symlink { .. } => {
                "copy the link's target into the package instead of linking to it"
            }
            SnapshotError::Special { .. } => "remove it from the package",
            SnapshotError::BadName { .. } | SnapshotError::PathTooLong { .. } => "rename it",
            SnapshotError::TooManyEntries(_)
            | SnapshotError::TooLarge(_)
            | SnapshotError::TooDeep { .. } => "a plugin package is not a disk image",
            SnapshotError::SignatureTooLarge(_) => "sign the package again: this file is not one",
            SnapshotError::Io { .. } | SnapshotError::Seal { .. } => return None,
        })
    }
}

/// A package as it was read.
#[derive(Debug)]
pub struct Snapshot {
    /// Every file and directory but the signature and the key rotation, sorted by path.
    pub entries: Vec<Entry>,
    /// The signature file's bytes, when there is one.
    pub signature: Option<Vec<u8>>,
    /// The key rotation file's bytes, when there is one (it vouches for itself: two signatures).
    pub rotation: Option<Vec<u8>>,
    /// The sealed copy, when one was asked for.
    pub sealed: Option<Sealed>,
}

/// A sealed copy of a package. Removed when dropped.
#[derive(Debug)]
pub struct Sealed {
    pub dir: PathBuf,
}

impl Drop for Sealed {
    fn drop(&mut self) {
        remove_sealed(&self.dir);
    }
}

/// Lets `uid` and the group `gid` (ids of one plugin's own host range) read the sealed copy at
/// `dir`: its top becomes `uid`:`gid`, mode 0750. Nobody else may enter it; what is below stays
/// root's and read-only.
pub fn open_to(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
}

/// Removes a sealed copy (its directories are read-only: made writable first).
pub fn remove_sealed(dir: &Path) {
    fn writable(dir: &Path) {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    writable(&e.path());
                }
            }
        }
    }
    if std::fs::symlink_metadata(dir).is_ok() {
        writable(dir);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Reads the package in `dir`. With `seal_into` (a path that must not exist; its parent must),
/// also writes the sealed copy there. With `expect` (the entries of a signature already checked),
/// a file the signature does not name, or whose size is not the signed one, is neither read nor
/// copied: it is listed with its size and an all-zero digest, so that the comparison with the
/// signature refuses the package as it would have anyway — and a hostile package makes the host
/// read and store no more than what its publisher signed.
pub fn take(
    dir: &Path,
    seal_into: Option<&Path>,
    expect: Option<&[Entry]>,
    limits: Limits,
) -> Result<Snapshot, SnapshotError> {
    let top = open_dir(None, dir).map_err(|source| SnapshotError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let sealed = match seal_into {
        Some(to) => {
            let seal_err = |source| SnapshotError::Seal {
                path: to.to_path_buf(),
                source,
            };
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(to)
                .map_err(seal_err)?;
            // Canonical, so that paths below it compare with canonical paths.
            let dir = match to.canonicalize() {
                Ok(dir) => dir,
                Err(e) => {
                    remove_sealed(to);
                    return Err(seal_err(e));
                }
            };
            Some(Sealed { dir })
        }
        None => None,
    };
    let dest = match &sealed {
        Some(s) => Some(
            open_dir(None, &s.dir).map_err(|source| SnapshotError::Seal {
                path: s.dir.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let mut walk = Walk {
        root: dir,
        seal_root: seal_into,
        expect,
        limits,
        entries: Vec::new(),
        bytes: 0,
        signature: None,
        rotation: None,
        buf: vec![0u8; 1 << 20],
    };
    // The copy's top stays 0700 (root's alone) until `open_to` lets one plugin's group in.
    walk.dir(&top, dest.as_ref(), "", 0)?;
    let mut entries = walk.entries;
    entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(Snapshot {
        entries,
        signature: walk.signature,
        rotation: walk.rotation,
        sealed,
    })
}

struct Walk<'a> {
    root: &'a Path,
    seal_root: Option<&'a Path>,
    expect: Option<&'a [Entry]>,
    limits: Limits,
    entries: Vec<Entry>,
    bytes: u64,
    signature: Option<Vec<u8>>,
    rotation: Option<Vec<u8>>,
    buf: Vec<u8>,
}

impl Walk<'_> {
    /// What the checked signature says of `rel`: `None` when there is no expectation; `Some(None)`
    /// when the signature does not name it.
    fn expected(&self, rel: &str) -> Option<Option<&Kind>> {
        let expect = self.expect?;
        Some(
            expect
                .binary_search_by(|e| e.path.as_bytes().cmp(rel.as_bytes()))
                .ok()
                .map(|i| &expect[i].kind),
        )
    }

    fn io(&self, rel: &str) -> impl Fn(std::io::Error) -> SnapshotError {
        let path = self.root.join(rel);
        move |source| SnapshotError::Io {
            path: path.clone(),
            source,
        }
    }

    fn seal_err(&self, rel: &str) -> impl Fn(std::io::Error) -> SnapshotError {
        let path = self.seal_root.map(|r| r.join(rel)).unwrap_or_default();
        move |source| SnapshotError::Seal {
            path: path.clone(),
            source,
        }
    }

    fn dir(
        &mut self,
        fd: &OwnedFd,
        dest: Option<&OwnedFd>,
        prefix: &str,
        depth: usize,
    ) -> Result<(), SnapshotError> {
        if depth > self.limits.max_depth {
            return Err(SnapshotError::TooDeep {
                path: prefix.trim_end_matches('/').to_string(),
                depth: self.limits.max_depth,
            });
        }
        let budget = self.limits.max_entries.saturating_sub(self.entries.len());
        let names = list(fd, budget).map_err(self.io(prefix))?;
        if names.len() > budget {
            return Err(SnapshotError::TooManyEntries(self.limits.max_entries));
        }
        for name in names {
            let rel_name = match std::str::from_utf8(name.as_bytes()) {
                Ok(n) => n.to_string(),
                Err(_) => {
                    return Err(SnapshotError::BadName {
                        path: format!("{prefix}{}", String::from_utf8_lossy(name.as_bytes())),
                    })
                }
            };
            let rel = format!("{prefix}{rel_name}");
            if rel.len() > MAX_PATH_BYTES {
                return Err(SnapshotError::PathTooLong {
                    path: rel.chars().take(64).collect(),
                });
            }
            if !valid_path(&rel) {
                return Err(SnapshotError::BadName { path: rel });
            }
            if self.entries.len() >= self.limits.max_entries {
                return Err(SnapshotError::TooManyEntries(self.limits.max_entries));
            }
            // Its type first, without opening it (a device or a socket is never opened)...
            let kind = fstatat_type(fd, &name).map_err(self.io(&rel))?;
            match kind {
                libc::S_IFLNK => return Err(SnapshotError::Symlink { path: rel }),
                libc::S_IFREG | libc::S_IFDIR => {}
                _ => return Err(SnapshotError::Special { path: rel }),
            }
            // ...then opened without following a link, and the type checked on the descriptor
            // (what was looked at may have been replaced meanwhile).
            let child = match openat(fd, &name, libc::O_RDONLY) {
                Ok(c) => c,
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(SnapshotError::Symlink { path: rel })
                }
                Err(e) => return Err(self.io(&rel)(e)),
            };
            let file = File::from(child);
            let meta = file.metadata().map_err(self.io(&rel))?;
            if meta.mode() & libc::S_IFMT != kind {
                return Err(SnapshotError::Io {
                    path: self.root.join(&rel),
                    source: std::io::Error::other("it was replaced while the package was read"),
                });
            }
            if meta.is_dir() {
                // A directory the signature does not name is walked (its files are listed) but
                // not made in the copy.
                let unexpected = matches!(self.expected(&rel), Some(k) if k != Some(&Kind::Dir));
                let child_dest = match dest.filter(|_| !unexpected) {
                    Some(d) => {
                        mkdirat(d, &name).map_err(self.seal_err(&rel))?;
                        Some(
                            openat(d, &name, libc::O_RDONLY | libc::O_DIRECTORY)
                                .map_err(self.seal_err(&rel))?,
                        )
                    }
                    None => None,
                };
                self.entries.push(Entry {
                    path: rel.clone(),
                    kind: Kind::Dir,
                });
                let sub = OwnedFd::from(file);
                self.dir(&sub, child_dest.as_ref(), &format!("{rel}/"), depth + 1)?;
                if let Some(d) = &child_dest {
                    seal_mode(d).map_err(self.seal_err(&rel))?;
                }
            } else if meta.is_file() {
                if depth == 0 && rel == SIGNATURE_FILE {
                    self.signature =
                        Some(self.read_small(file, SIGNATURE_FILE, MAX_SIGNATURE_BYTES)?);
                    continue;
                }
                if depth == 0 && rel == ROTATION_FILE {
                    self.rotation =
                        Some(self.read_small(file, ROTATION_FILE, MAX_ROTATION_BYTES)?);
                    continue;
                }
                let exec = meta.mode() & 0o111 != 0;
                let limit = match self.expected(&rel) {
                    None => None,
                    Some(Some(Kind::File { size, .. })) if *size == meta.len() => Some(*size),
                    Some(_) => {
                        // Not what was signed: refused later, never read.
                        self.entries.push(Entry {
                            path: rel,
                            kind: Kind::File {
                                exec,
                                size: meta.len(),
                                digest: [0; 64],
                            },
                        });
                        continue;
                    }
                };
                let mut out = match dest {
                    Some(d) => Some(File::from(
                        create_at(d, &name).map_err(self.seal_err(&rel))?,
                    )),
                    None => None,
                };
                let (size, digest) = self.copy(file, out.as_mut(), &rel, limit)?;
                if let Some(out) = &out {
                    let mode = if exec { 0o555 } else { 0o444 };
                    fchmod(out, mode).map_err(self.seal_err(&rel))?;
                }
                self.entries.push(Entry {
                    path: rel,
                    kind: Kind::File { exec, size, digest },
                });
            } else {
                return Err(SnapshotError::Special { path: rel });
            }
        }
        Ok(())
    }

    /// Hashes what `file` reads and writes the same bytes to `out`. Past `limit` bytes (a file
    /// growing while it is read) it stops: the size says so and the digest is all zeros.
    fn copy(
        &mut self,
        mut file: File,
        mut out: Option<&mut File>,
        rel: &str,
        limit: Option<u64>,
    ) -> Result<(u64, [u8; 64]), SnapshotError> {
        let mut hasher = Sha3_512::new();
        let mut size = 0u64;
        loop {
            let n = match file.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io(rel)(e)),
            };
            size += n as u64;
            self.bytes += n as u64;
            if self.bytes > self.limits.max_bytes {
                return Err(SnapshotError::TooLarge(self.limits.max_bytes));
            }
            if limit.is_some_and(|l| size > l) {
                return Ok((size, [0; 64]));
            }
            hasher.update(&self.buf[..n]);
            if let Some(out) = out.as_mut() {
                out.write_all(&self.buf[..n]).map_err(self.seal_err(rel))?;
            }
        }
        Ok((size, hasher.finalize().into()))
    }

    /// One of the package's own small files (signature, rotation), bounded.
    fn read_small(
        &self,
        file: File,
        name: &'static str,
        max: u64,
    ) -> Result<Vec<u8>, SnapshotError> {
        let mut bytes = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(self.io(name))?;
        if bytes.len() as u64 > max {
            return Err(SnapshotError::SignatureTooLarge(name));
        }
        Ok(bytes)
    }
}

/// Opens a directory: `at` None opens `path` as given (the operator's path to the package).
fn open_dir(at: Option<&OwnedFd>, path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let dirfd = at.map_or(libc::AT_FDCWD, |f| f.as_raw_fd());
    // SAFETY: openat reads the path, alive for the call.
    let fd = unsafe {
        libc::openat(
            dirfd,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    owned(fd)
}

/// Opens `name` in `dir` without following a symlink at its last step (ELOOP if it is one);
/// O_NONBLOCK so that a FIFO put there does not hang the reader.
fn openat(dir: &OwnedFd, name: &CStr, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: openat reads the name, alive for the call.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK,
        )
    };
    owned(fd)
}

fn create_at(dir: &OwnedFd, name: &CStr) -> std::io::Result<OwnedFd> {
    // SAFETY: openat reads the name, alive for the call.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    owned(fd)
}

fn mkdirat(dir: &OwnedFd, name: &CStr) -> std::io::Result<()> {
    // SAFETY: mkdirat reads the name, alive for the call.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn fchmod(fd: &impl AsRawFd, mode: libc::mode_t) -> std::io::Result<()> {
    // SAFETY: a plain syscall on a descriptor we own.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A sealed directory: read and search for everybody (the sandbox's uid reads it), written by
/// nobody but root.
fn seal_mode(fd: &OwnedFd) -> std::io::Result<()> {
    fchmod(fd, 0o555)
}

fn owned(fd: libc::c_int) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The type bits (`S_IFMT`) of `name` in `dir`, not following a symlink.
fn fstatat_type(dir: &OwnedFd, name: &CStr) -> std::io::Result<libc::mode_t> {
    // SAFETY: a plain struct of integers; zeroed is a valid start.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat reads the name and writes `st`, both alive for the call.
    if unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT)
}

/// The names in a directory (not `.` and `..`), sorted, read from its descriptor: at most
/// `budget + 1` (one more than may be taken says there are too many).
fn list(fd: &OwnedFd, budget: usize) -> std::io::Result<Vec<CString>> {
    let dup = fd.as_fd().try_clone_to_owned()?;
    let mut dir = nix::dir::Dir::from_fd(dup).map_err(std::io::Error::from)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(std::io::Error::from)?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        names.push(name.to_owned());
        if names.len() > budget {
            break;
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Where one process keeps its sealed copies: `<root>/<name>/`, owned for as long as the
/// process holds `<root>/<name>.lock` (flock). Whoever opens a store first removes the stores
/// whose lock nobody holds — their process is gone, killed or crashed — so copies never pile up,
/// and a live owner's copies are never removed (whatever its name or pid namespace).
#[derive(Debug)]
pub struct Store {
    pub dir: PathBuf,
    /// Held (flock) for the store's life.
    _lock: File,
    lock_path: PathBuf,
}

impl Store {
    /// Sweeps `root`, then makes `<root>/<name>` (mode 0711) and holds its lock. A stale store
    /// of the same name (a previous process with this pid) is removed first.
    pub fn open(root: &Path, name: &str) -> std::io::Result<Store> {
        create_private(root)?;
        sweep(root);
        let lock_path = root.join(format!("{name}.lock"));
        let lock = loop {
            let f = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&lock_path)?;
            flock(&f, libc::LOCK_EX | libc::LOCK_NB)?;
            // Still the file at that path? (a sweeper may have removed it meanwhile)
            let on_disk = std::fs::symlink_metadata(&lock_path);
            let held = f.metadata()?;
            if on_disk.is_ok_and(|m| m.ino() == held.ino() && m.dev() == held.dev()) {
                break f;
            }
        };
        let dir = root.join(name);
        remove_sealed(&dir);
        std::fs::DirBuilder::new().mode(0o711).create(&dir)?;
        let dir = dir.canonicalize()?;
        Ok(Store {
            dir,
            _lock: lock,
            lock_path,
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        remove_sealed(&self.dir);
        // Unlinked while still held (the lock goes when `lock` closes, after this).
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// `dir`, made if missing (mode 0711: anyone may pass through, nobody but root list it).
fn create_private(dir: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o711).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

fn flock(f: &File, op: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), op) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes the stores below `root` whose owner is gone: a directory whose `.lock` can be taken
/// (or that has none), with its lock file.
pub fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let lock_path = path.with_extension("lock");
        let lock = File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&lock_path);
        match lock {
            Ok(f) => {
                if flock(&f, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
                    remove_sealed(&path);
                    let _ = std::fs::remove_file(&lock_path);
                }
            }
            Err(_) => remove_sealed(&path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stockade-snap-{name}-{}", std::process::id()));
        remove_sealed(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("plugin.toml"), b"id = 'x'\n").unwrap();
        std::fs::write(dir.join("bin/run"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.join("bin/run"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        std::fs::write(dir.join(SIGNATURE_FILE), b"sig\n").unwrap();
        dir
    }

    #[test]
    fn a_snapshot_lists_hashes_and_seals_every_file() {
        let dir = tree("seal");
        let to = dir.with_extension("sealed");
        let snap = take(&dir, Some(&to), None, Limits::default()).unwrap();
        let paths: Vec<&str> = snap.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["bin", "bin/run", "plugin.toml"]);
        assert_eq!(snap.signature.as_deref(), Some(&b"sig\n"[..]));
        match &snap.entries[1].kind {
            Kind::File { exec, size, digest } => {
                assert!(*exec);
                assert_eq!(*size, 10);
                assert_eq!(digest, &<[u8; 64]>::from(Sha3_512::digest(b"#!/bin/sh\n")));
            }
            other => panic!("{other:?}"),
        }
        let meta = |p: &str| std::fs::metadata(to.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(meta(""), 0o700, "root's alone until opened to a plugin");
        assert_eq!(meta("bin"), 0o555);
        assert_eq!(meta("bin/run"), 0o555);
        assert_eq!(meta("plugin.toml"), 0o444);
        assert!(!to.join(SIGNATURE_FILE).exists());
        assert_eq!(std::fs::read(to.join("bin/run")).unwrap(), b"#!/bin/sh\n");
        drop(snap);
        assert!(!to.exists(), "the sealed copy goes with its snapshot");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_store_is_swept_only_once_its_owner_is_gone() {
        let root = std::env::temp_dir().join(format!("stockade-store-{}", std::process::id()));
        let a = Store::open(&root, "a").unwrap();
        std::fs::create_dir(a.dir.join("load-1")).unwrap();
        // A store whose owner is gone: a directory and a lock file nobody holds.
        std::fs::create_dir(root.join("dead")).unwrap();
        std::fs::write(root.join("dead.lock"), b"").unwrap();
        // An older one without a lock file.
        std::fs::create_dir(root.join("older")).unwrap();
        let b = Store::open(&root, "b").unwrap();
        assert!(a.dir.join("load-1").exists(), "a live owner's copies stay");
        assert!(!root.join("dead").exists() && !root.join("dead.lock").exists());
        assert!(!root.join("older").exists());
        let a_dir = a.dir.clone();
        drop(a);
        assert!(!a_dir.exists() && !root.join("a.lock").exists());
        // The same name again (a pid reused): a fresh store.
        let b_dir = b.dir.clone();
        std::fs::create_dir(b_dir.join("load-9")).unwrap();
        drop(b);
        let again = Store::open(&root, "b").unwrap();
        assert!(!again.dir.join("load-9").exists());
        drop(again);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn with_an_expectation_only_signed_files_of_their_signed_size_are_read() {
        let dir = tree("expect");
        let to = dir.with_extension("sealed");
        let first = take(&dir, None, None, Limits::default()).unwrap();
        // Then: a file added, one grown, a directory added.
        std::fs::write(dir.join("junk.bin"), vec![7u8; 1 << 16]).unwrap();
        std::fs::write(dir.join("plugin.toml"), b"id = 'x'\n# and more\n").unwrap();
        std::fs::create_dir(dir.join("extra")).unwrap();
        std::fs::write(dir.join("extra/more"), b"more").unwrap();
        let snap = take(&dir, Some(&to), Some(&first.entries), Limits::default()).unwrap();
        let kind = |p: &str| {
            snap.entries
                .iter()
                .find(|e| e.path == p)
                .unwrap()
                .kind
                .clone()
        };
        assert_eq!(
            kind("junk.bin"),
            Kind::File {
                exec: false,
                size: 1 << 16,
                digest: [0; 64]
            }
        );
        assert!(matches!(kind("plugin.toml"), Kind::File { digest, .. } if digest == [0; 64]));
        assert_eq!(
            kind("bin/run"),
            first.entries[1].kind,
            "a signed file is read as before"
        );
        assert!(!to.join("junk.bin").exists() && !to.join("plugin.toml").exists());
        assert!(
            !to.join("extra").exists(),
            "an unsigned directory is not made in the copy"
        );
        assert!(to.join("bin/run").exists());
        let differences = crate::statement::compare(&first.entries, &snap.entries);
        assert_eq!(differences.len(), 4, "{differences:?}");
        drop(snap);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_and_special_files_are_refused() {
        let dir = tree("links");
        std::os::unix::fs::symlink("/etc/passwd", dir.join("bin/pw")).unwrap();
        let e = take(&dir, None, None, Limits::default()).unwrap_err();
        assert!(
            matches!(&e, SnapshotError::Symlink { path } if path == "bin/pw"),
            "{e}"
        );
        std::fs::remove_file(dir.join("bin/pw")).unwrap();
        nix::unistd::mkfifo(
            &dir.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let e = take(&dir, None, None, Limits::default()).unwrap_err();
        assert!(
            matches!(&e, SnapshotError::Special { path } if path == "fifo"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn limits_hold() {
        let dir = tree("limits");
        let small = Limits {
            max_entries: 2,
            ..Limits::default()
        };
        assert!(matches!(
            take(&dir, None, None, small),
            Err(SnapshotError::TooManyEntries(2))
        ));
        let small = Limits {
            max_bytes: 5,
            ..Limits::default()
        };
        assert!(matches!(
            take(&dir, None, None, small),
            Err(SnapshotError::TooLarge(5))
        ));
        let small = Limits {
            max_depth: 0,
            ..Limits::default()
        };
        assert!(matches!(
            take(&dir, None, None, small),
            Err(SnapshotError::TooDeep { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
