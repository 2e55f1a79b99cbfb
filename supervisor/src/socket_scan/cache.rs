//! The `[ipc]` walk, remembered: one record per walked tree in `/run/stockade/ipc-walk/`, used
//! again while every directory it listed is unchanged.
//!
//! A unix socket appears in a directory only by creating an entry there, which sets that
//! directory's mtime and ctime; a directory appears only as an entry of its parent; a mount on a
//! directory changes the device and inode a path shows. So a tree whose every listed directory
//! still has the device, inode, mtime and ctime of the walk holds the same sockets, and checking
//! that is a stat per directory (about 11,700 below the stock profiles' grants) instead of a
//! look at every entry (about 78,000). ctime cannot be set back by a process (utimes sets it to
//! now), so a directory touched back to its old mtime still differs.
//!
//! Racy timestamps: file times come from a coarse clock, so a change in the same tick as the
//! walk's look could leave the times equal. A record taken at time T is trusted only for
//! directories whose times are at least [`RACY`] before T; one that is newer makes the record
//! unusable and the tree is walked again (the next record, taken later, is trusted).
//!
//! Records are written by root into a directory only root may write (0700, checked), atomically
//! (write then rename); a record that does not parse is walked again. Never recorded: a walk that
//! did not finish (a bound, a directory that could not be listed), a root that is not a directory
//! (a missing grant, a file: one stat anyway, and a socket may appear there later), and a tree
//! with a directory on a filesystem whose directory times are not the kernel's own record of
//! local changes (FUSE, 9p, NFS, overlayfs...: only ext4, xfs, btrfs, f2fs and tmpfs qualify).
//! Sockets bind-mounted below a root are looked for on every launch by the caller (a mount
//! changes no directory's times).

use std::fs;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Tree;

/// Where the records are.
pub const DIR: &str = "/run/stockade/ipc-walk";
/// How long before a walk a directory's times must be to trust them.
pub const RACY: Duration = Duration::from_secs(2);
const MAGIC: &[u8; 8] = b"STKWALK1";

/// A directory's identity and times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stamp {
    pub fn of(path: &Path, meta: &fs::Metadata) -> Stamp {
        Stamp {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the directory at `path` is still this one, unchanged.
    fn holds(&self) -> bool {
        fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.is_dir() && Stamp::of(&self.path, &m) == *self)
    }

    /// Whether its times fall within [`RACY`] of `taken` (or after it).
    fn racy(&self, taken: (i64, i64)) -> bool {
        let limit = (taken.0 - RACY.as_secs() as i64, taken.1);
        self.mtime >= limit || self.ctime >= limit
    }
}

/// The records' directory.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache, creating its directory; `None` where it cannot be made (not root): every tree
    /// is then walked.
    pub fn open() -> Option<Cache> {
        Cache::at(Path::new(DIR))
    }

    pub fn at(dir: &Path) -> Option<Cache> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ok()?;
        // Only a directory of root's that nobody else may write.
        let meta = fs::symlink_metadata(dir).ok()?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            tracing::debug!(
                "{} is not root's alone: the walk is not remembered",
                dir.display()
            );
            return None;
        }
        Some(Cache {
            dir: dir.to_path_buf(),
        })
    }

    fn record(&self, root: &Path) -> PathBuf {
        let h = root
            .as_os_str()
            .as_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        self.dir.join(format!("{h:016x}"))
    }

    /// The remembered walk of `root`, if every directory it listed is unchanged.
    pub fn valid(&self, root: &Path) -> Option<Tree> {
        let bytes = fs::read(self.record(root)).ok()?;
        let (recorded_root, taken, tree) = decode(&bytes)?;
        if recorded_root != root {
            return None;
        }
        if tree.dirs.iter().any(|d| d.racy(taken)) {
            return None;
        }
        // A stat per directory, on two threads for a large tree (the machines here have two
        // cores; the path walks are independent).
        let unchanged = if tree.dirs.len() < 2048 {
            tree.dirs.iter().all(Stamp::holds)
        } else {
            let (a, b) = tree.dirs.split_at(tree.dirs.len() / 2);
            std::thread::scope(|s| {
                match std::thread::Builder::new().spawn_scoped(s, || b.iter().all(Stamp::holds)) {
                    Ok(other) => {
                        let mine = a.iter().all(Stamp::holds);
                        // A thread that died did not check its half: not unchanged.
                        mine && other.join().unwrap_or(false)
                    }
                    Err(_) => tree.dirs.iter().all(Stamp::holds),
                }
            })
        };
        unchanged.then_some(tree)
    }

    /// Remembers a finished walk of `root`, started at `taken` (real time).
    pub fn save_taken(&self, root: &Path, tree: &Tree, taken: (i64, i64)) {
        if tree.incomplete.is_some() || tree.dirs.first().is_none_or(|d| d.path != root) {
            return;
        }
        if !trusted_filesystems(&tree.dirs) {
            return;
        }
        let path = self.record(root);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&encode(root, taken, tree)))
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            tracing::debug!("cannot remember the walk of {}: {e}", root.display());
        }
    }

    /// [`Cache::save_taken`] with the time now, later than the walk's start: only more
    /// directories count as racy.
    pub fn save(&self, root: &Path, tree: &Tree) {
        self.save_taken(root, tree, now());
    }
}

/// Whether every device of `dirs` is a filesystem whose directory times record the kernel's own
/// changes (one statfs per device).
fn trusted_filesystems(dirs: &[Stamp]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    // statfs f_type: ext4 (ext2/3 share it), xfs, btrfs, f2fs, tmpfs.
    const TRUSTED: [i64; 5] = [0xEF53, 0x5846_5342, 0x9123_683E, 0xF2F5_2010, 0x0102_1994];
    let mut seen: Vec<u64> = Vec::new();
    for d in dirs {
        if seen.contains(&d.dev) {
            continue;
        }
        seen.push(d.dev);
        let Ok(c) = std::ffi::CString::new(d.path.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: a zeroed statfs is a valid buffer for the kernel to fill.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path; `st` lives for the call.
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            return false;
        }
        #[allow(clippy::unnecessary_cast)] // f_type's width differs between libc targets
        let kind = st.f_type as i64;
        if !TRUSTED.contains(&kind) {
            tracing::debug!(
                "{}: filesystem type {kind:#x}: the walk is not remembered",
                d.path.display()
            );
            return false;
        }
    }
    true
}

/// CLOCK_REALTIME as (seconds, nanoseconds), what file times are in.
pub fn now() -> (i64, i64) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, i64::from(d.subsec_nanos()))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend((b.len() as u32).to_le_bytes());
    out.extend(b);
}

fn encode(root: &Path, taken: (i64, i64), tree: &Tree) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend(taken.0.to_le_bytes());
    out.extend(taken.1.to_le_bytes());
    put_bytes(&mut out, root.as_os_str().as_bytes());
    out.extend((tree.entries as u64).to_le_bytes());
    out.extend((tree.sockets.len() as u32).to_le_bytes());
    for s in &tree.sockets {
        put_bytes(&mut out, s.as_os_str().as_bytes());
    }
    out.extend((tree.dirs.len() as u32).to_le_bytes());
    for d in &tree.dirs {
        put_bytes(&mut out, d.path.as_os_str().as_bytes());
        for n in [d.dev, d.ino] {
            out.extend(n.to_le_bytes());
        }
        for n in [d.mtime.0, d.mtime.1, d.ctime.0, d.ctime.1] {
            out.extend(n.to_le_bytes());
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn path(&mut self) -> Option<PathBuf> {
        let n = self.u32()? as usize;
        Some(PathBuf::from(std::ffi::OsString::from_vec(
            self.take(n)?.to_vec(),
        )))
    }
}

fn decode(bytes: &[u8]) -> Option<(PathBuf, (i64, i64), Tree)> {
    let mut r = Reader(bytes);
    if r.take(MAGIC.len())? != MAGIC {
        return None;
    }
    let taken = (r.i64()?, r.i64()?);
    let root = r.path()?;
    let mut tree = Tree {
        entries: r.u64()? as usize,
        ..Tree::default()
    };
    for _ in 0..r.u32()? {
        tree.sockets.push(r.path()?);
    }
    let dirs = r.u32()? as usize;
    tree.dirs.reserve(dirs.min(1 << 20));
    for _ in 0..dirs {
        tree.dirs.push(Stamp {
            path: r.path()?,
            dev: r.u64()?,
            ino: r.u64()?,
            mtime: (r.i64()?, r.i64()?),
            ctime: (r.i64()?, r.i64()?),
        });
    }
    r.0.is_empty().then_some((root, taken, tree))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket_scan::walk_tree;
    use std::os::unix::net::UnixListener;

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn tempdir(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("stockade-walk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("tree/a/b")).unwrap();
        TempDir(dir)
    }

    /// A record taken well after the tree's last change (no racy directory). The directories'
    /// mtimes are first set 100 s back, as a real tree's would be: file times come from a coarse
    /// clock, and a change made in the same tick as the tree's creation (the VM's clock ticks
    /// slowly) would otherwise leave them as they were.
    fn settled(cache: &Cache, root: &Path) -> Tree {
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        for dir in [root.to_path_buf(), root.join("a"), root.join("a/b")] {
            if let Ok(d) = fs::File::open(&dir) {
                d.set_modified(past).unwrap();
            }
        }
        let tree = walk_tree(root, 1000);
        let (s, ns) = now();
        cache.save_taken(root, &tree, (s + 10, ns));
        tree
    }

    #[test]
    fn a_record_round_trips_and_is_used_while_nothing_changed() {
        let t = tempdir("same");
        let root = t.0.join("tree");
        let cache = Cache::at(&t.0.join("cache")).unwrap();
        let sock = root.join("a/b/s.sock");
        let _l = UnixListener::bind(&sock).unwrap();
        let tree = settled(&cache, &root);
        assert_eq!(tree.sockets, vec![sock]);
        assert_eq!(cache.valid(&root), Some(tree));
        // Another root's record is not this one's.
        assert_eq!(cache.valid(&t.0.join("cache")), None);
    }

    #[test]
    fn a_new_socket_deep_in_the_tree_invalidates_the_record() {
        let t = tempdir("new");
        let root = t.0.join("tree");
        let cache = Cache::at(&t.0.join("cache")).unwrap();
        settled(&cache, &root);
        assert!(cache.valid(&root).is_some());
        let _l = UnixListener::bind(root.join("a/b/late.sock")).unwrap();
        assert_eq!(cache.valid(&root), None, "a/b changed");
    }

    #[test]
    fn a_directory_replaced_or_mounted_over_invalidates_the_record() {
        let t = tempdir("swap");
        let root = t.0.join("tree");
        let cache = Cache::at(&t.0.join("cache")).unwrap();
        settled(&cache, &root);
        // Swap a/b for another directory: a different inode at the same path.
        fs::create_dir(root.join("b2")).unwrap();
        fs::rename(root.join("a/b"), root.join("old")).unwrap();
        fs::rename(root.join("b2"), root.join("a/b")).unwrap();
        assert_eq!(cache.valid(&root), None);
    }

    #[test]
    fn a_fresh_record_is_not_trusted_and_a_garbled_one_is_ignored() {
        let t = tempdir("racy");
        let root = t.0.join("tree");
        let cache = Cache::at(&t.0.join("cache")).unwrap();
        // Taken now: the tree was made within RACY of it.
        let tree = walk_tree(&root, 1000);
        cache.save(&root, &tree);
        assert_eq!(cache.valid(&root), None);
        settled(&cache, &root);
        let record = cache.record(&root);
        let mut bytes = fs::read(&record).unwrap();
        bytes.truncate(bytes.len() - 3);
        fs::write(&record, bytes).unwrap();
        assert_eq!(cache.valid(&root), None);
    }

    #[test]
    fn a_root_that_is_not_a_directory_is_not_recorded() {
        let t = tempdir("file");
        let cache = Cache::at(&t.0.join("cache")).unwrap();
        let (s, ns) = now();
        for root in [t.0.join("tree/a/missing"), t.0.join("tree/file")] {
            if root.ends_with("file") {
                fs::write(&root, b"x").unwrap();
            }
            let tree = walk_tree(&root, 1000);
            cache.save_taken(&root, &tree, (s + 10, ns));
            assert!(!cache.record(&root).exists(), "{}", root.display());
        }
    }

    #[test]
    fn an_unfinished_walk_is_not_recorded() {
        let t = tempdir("cut");
        let root = t.0.join("tree");
        let cache = Cache::at(&t.0.join("cache")).unwrap();
        let tree = walk_tree(&root, 1);
        assert!(tree.incomplete.is_some());
        let (s, ns) = now();
        cache.save_taken(&root, &tree, (s + 10, ns));
        assert!(!cache.record(&root).exists());
    }
}
