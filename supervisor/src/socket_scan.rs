//! The launch check of `[ipc]` on kernels without unix socket hooks: the unix sockets a sandbox
//! could reach by name, found before it starts.
//!
//! Why: a read-only bind does not stop `connect` (a socket's permission check is a write to its
//! inode, which a read-only mount does not refuse), and Landlock before ABI 8 does not govern
//! it, so a granted directory that holds a daemon's socket hands the plugin that daemon's API.
//! Where the cgroup `connect_unix`/`sendmsg_unix` programs load (6.7+) the kernel judges each
//! call; elsewhere an enforce-mode sandbox must not start while one of its read-only trees holds
//! a socket the policy does not list. When: after the policy is compiled (the mounts are known)
//! and the monitors are loaded (whether the hooks exist is known), before the sandbox is made.
//!
//! What is walked: every read-only and executable bind source. Writable trees are not: what lies
//! there the plugin may replace at will (unlink a socket, bind its own), so sockets there are its
//! own. Symlinks are not followed (a link leads only to what another grant makes visible, and
//! that grant is walked itself); mount points below a grant are crossed, as the recursive bind
//! shows them. The walk is bounded — [`MAX_ENTRIES`] entries and [`MAX_DEPTH`] levels in all —
//! and a tree it could not finish counts as holding an unlisted socket: fail closed.
//!
//! A grant on a filesystem whose superblock is read-only (not only its bind: `ro` in the super
//! options of `/proc/self/mountinfo`) is not walked, only the mounts below it: `bind()` creates
//! the socket's inode, which such a filesystem refuses, so no process can be listening on a
//! socket there (short of binding before a remount read-only). Read-only system images, and the
//! VM runner's host root over 9p, where each walk took seconds.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use stockade_policy::{Access, LaunchSpec};

/// Directory entries looked at in all, for one launch. The stock profiles grant /usr/lib and
/// /usr/bin: about 73,000 entries on Debian 12, walked in about 0.15 s warm.
pub const MAX_ENTRIES: usize = 250_000;
/// Directory levels below each grant.
pub const MAX_DEPTH: usize = 32;

/// What the walk found.
#[derive(Debug, Default, PartialEq)]
pub struct ScanResult {
    /// Sockets below a read-only grant that `[ipc] connect` does not list, in walk order.
    pub unlisted: Vec<PathBuf>,
    /// The first directory the bounds left unwalked, if any.
    pub incomplete: Option<PathBuf>,
    /// Entries looked at.
    pub entries: usize,
}

impl ScanResult {
    /// The one-line cause for a refusal, or `None` when the granted trees are clean. `hooked`:
    /// the kernel's unix socket programs are armed (the walk runs because of a writable tree).
    pub fn refusal(&self, hooked: bool) -> Option<String> {
        let why = if hooked {
            "and a symlink the plugin makes in a writable tree would lead there past the kernel's \
             unix socket programs, which judge names"
        } else {
            "and no kernel unix socket hook is loaded to refuse it"
        };
        if let Some(first) = self.unlisted.first() {
            let more = match self.unlisted.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return Some(format!(
                "the sandbox could connect to the unix socket {}{more}, which [ipc] `connect` does \
                 not list, {why}",
                first.display()
            ));
        }
        self.incomplete.as_ref().map(|dir| {
            format!(
                "the granted trees hold more than {MAX_ENTRIES} entries or {MAX_DEPTH} levels \
                 (stopped at {}): they cannot be checked for unix sockets, {why}",
                dir.display()
            )
        })
    }
}

/// The sockets below `spec`'s read-only binds that its `[ipc] connect` does not list. Each tree's
/// last walk is remembered ([`cache`]) and used again while none of its directories changed.
pub fn scan(spec: &LaunchSpec) -> ScanResult {
    scan_with(spec, cache::Cache::open().as_ref())
}

/// [`scan`], walking every tree again.
pub fn scan_uncached(spec: &LaunchSpec) -> ScanResult {
    scan_with(spec, None)
}

fn scan_with(spec: &LaunchSpec, cache: Option<&cache::Cache>) -> ScanResult {
    let listed: HashSet<&Path> = spec.ipc.connect.iter().map(PathBuf::as_path).collect();
    let grants: Vec<&Path> = spec
        .mounts
        .iter()
        .filter(|m| m.access != Access::Write)
        .map(|m| m.source.as_path())
        .collect();
    let mounts = Mounts::read();
    let roots: Vec<PathBuf> = walk_roots(&grants, &mounts);
    let mut result = ScanResult::default();
    for root in &roots {
        let left = MAX_ENTRIES.saturating_sub(result.entries);
        let t0 = std::time::Instant::now();
        let tree = match cache.and_then(|c| c.valid(root)) {
            Some(tree) if tree.entries <= left => {
                tracing::debug!(
                    dirs = tree.dirs.len(),
                    us = t0.elapsed().as_micros() as u64,
                    "the [ipc] walk of {}: remembered, its directories unchanged",
                    root.display()
                );
                tree
            }
            _ => {
                let taken = cache::now();
                let tree = walk_tree(root, left);
                tracing::debug!(
                    entries = tree.entries,
                    us = t0.elapsed().as_micros() as u64,
                    "the [ipc] walk of {}: walked",
                    root.display()
                );
                if let Some(c) = cache {
                    c.save_taken(root, &tree, taken);
                }
                tree
            }
        };
        let mut tree = tree;
        // A socket bind-mounted over a file below the root: the walk saw the file's entry type,
        // and no directory's times change with a mount. Looked at on every launch (a few stats).
        for (_, point, _) in &mounts.0 {
            if point != root && point.starts_with(root) && !tree.sockets.contains(point) {
                use std::os::unix::fs::FileTypeExt;
                if std::fs::symlink_metadata(point).is_ok_and(|m| m.file_type().is_socket()) {
                    tree.sockets.push(point.clone());
                }
            }
        }
        if merge(&mut result, tree, &listed) {
            break;
        }
    }
    result
}

pub mod cache;

/// The mount table: each mount's id, mount point and whether its superblock is read-only.
struct Mounts(Vec<(u64, PathBuf, bool)>);

impl Mounts {
    fn read() -> Mounts {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Mounts(parse_mountinfo(&text))
    }

    /// Whether `path` lies on a filesystem mounted read-only (superblock); unknown is no.
    fn read_only(&self, path: &Path) -> bool {
        let Some(id) = mount_id(path) else {
            return false;
        };
        self.0.iter().any(|(m, _, ro)| *m == id && *ro)
    }
}

/// Where to walk: each grant, or, for a grant on a read-only filesystem, the mounts below it
/// (each judged the same way).
fn walk_roots(grants: &[&Path], mounts: &Mounts) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for g in grants {
        if !mounts.read_only(g) {
            out.push(g.to_path_buf());
            continue;
        }
        for (_, point, _) in &mounts.0 {
            if point != *g && point.starts_with(g) && !mounts.read_only(point) {
                // A mount below another walked one is walked with it.
                if !out.iter().any(|o: &PathBuf| point.starts_with(o)) {
                    out.push(point.clone());
                }
            }
        }
    }
    out
}

/// (mount id, mount point, superblock read-only) of each line of a mountinfo text.
fn parse_mountinfo(text: &str) -> Vec<(u64, PathBuf, bool)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let id = fields.next()?.parse().ok()?;
            let point = fields.nth(3)?;
            let (_, after) = line.split_once(" - ")?;
            let super_options = after.split(' ').nth(2)?;
            let ro = super_options.split(',').any(|o| o == "ro");
            Some((id, PathBuf::from(unescape(point)), ro))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The id of the mount `path` lies on (statx `STATX_MNT_ID`), without following a final link.
fn mount_id(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statx is a valid buffer for the kernel to fill.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path; `st` lives for the call.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_MNT_ID,
            &mut st,
        )
    };
    (rc == 0 && st.stx_mask & libc::STATX_MNT_ID != 0).then_some(st.stx_mnt_id)
}

/// One tree's walk: every socket below it (listed or not), and the identity and times of every
/// directory it listed, taken before listing it ([`cache`] compares them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    pub sockets: Vec<PathBuf>,
    pub dirs: Vec<cache::Stamp>,
    pub entries: usize,
    pub incomplete: Option<PathBuf>,
}

/// Adds `tree` to `result`; true when the walk must stop (out of bounds).
fn merge(result: &mut ScanResult, tree: Tree, listed: &HashSet<&Path>) -> bool {
    result.entries += tree.entries;
    result.unlisted.extend(
        tree.sockets
            .into_iter()
            .filter(|s| !listed.contains(s.as_path())),
    );
    if result.incomplete.is_none() {
        result.incomplete = tree.incomplete;
    }
    result.incomplete.is_some() && result.entries >= MAX_ENTRIES
}

/// [`scan`] over explicit trees, with an entry budget (unit tests use a small one).
pub fn scan_trees(roots: &[&Path], listed: &HashSet<&Path>, budget: usize) -> ScanResult {
    let mut result = ScanResult::default();
    for root in roots {
        let tree = walk_tree(root, budget.saturating_sub(result.entries));
        let cut =
            tree.incomplete.is_some() && tree.entries >= budget.saturating_sub(result.entries);
        merge(&mut result, tree, listed);
        if cut {
            break;
        }
    }
    result
}

/// Walks one tree, looking at `budget` entries at most.
pub fn walk_tree(root: &Path, budget: usize) -> Tree {
    use std::os::unix::fs::FileTypeExt;
    let mut tree = Tree::default();
    let Ok(meta) = std::fs::symlink_metadata(root) else {
        return tree; // the shim skips paths missing on the host
    };
    if budget == 0 {
        tree.incomplete = Some(root.to_path_buf());
        return tree;
    }
    tree.entries += 1;
    // Depth-first with an explicit stack: (directory, depth, its stamp).
    let mut stack: Vec<(PathBuf, usize, cache::Stamp)> = Vec::new();
    if meta.file_type().is_socket() {
        tree.sockets.push(root.to_path_buf());
    } else if meta.is_dir() {
        stack.push((root.to_path_buf(), 0, cache::Stamp::of(root, &meta)));
    }
    while let Some((dir, depth, stamp)) = stack.pop() {
        if depth >= MAX_DEPTH {
            tree.incomplete.get_or_insert(dir);
            continue;
        }
        // A directory the supervisor cannot list is one the plugin cannot list either, but it may
        // still reach a socket inside by name: count it as unwalked.
        let Ok(entries) = std::fs::read_dir(&dir) else {
            tree.incomplete.get_or_insert(dir);
            continue;
        };
        tree.dirs.push(stamp);
        for entry in entries {
            let Ok(entry) = entry else {
                tree.incomplete.get_or_insert(dir.clone());
                break;
            };
            if tree.entries >= budget {
                tree.incomplete.get_or_insert(dir.clone());
                return tree;
            }
            tree.entries += 1;
            let Ok(kind) = entry.file_type() else {
                tree.incomplete.get_or_insert(entry.path());
                continue;
            };
            let path = entry.path();
            if kind.is_socket() {
                tree.sockets.push(path);
            } else if kind.is_dir() {
                // Stamped now, before it is listed: a change after this shows in its times.
                let Ok(meta) = entry.metadata() else {
                    tree.incomplete.get_or_insert(path);
                    continue;
                };
                let stamp = cache::Stamp::of(&path, &meta);
                stack.push((path, depth + 1, stamp));
            }
        }
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A directory removed at the end of the test.
    struct TempDir(PathBuf);

    impl TempDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tempdir() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "stockade-scan-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }

    fn tree() -> TempDir {
        let dir = tempdir();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/file"), b"x").unwrap();
        dir
    }

    #[test]
    fn finds_an_unlisted_socket_and_passes_a_listed_one() {
        let dir = tree();
        let sock = dir.path().join("a/b/daemon.sock");
        let _l = UnixListener::bind(&sock).unwrap();
        let roots = [dir.path()];
        let found = scan_trees(&roots, &HashSet::new(), 1000);
        assert_eq!(found.unlisted, std::slice::from_ref(&sock));
        assert!(found.incomplete.is_none());
        assert!(found.refusal(false).unwrap().contains("daemon.sock"));
        let listed: HashSet<&Path> = [sock.as_path()].into();
        let clean = scan_trees(&roots, &listed, 1000);
        assert_eq!(
            clean,
            ScanResult {
                entries: clean.entries,
                ..ScanResult::default()
            }
        );
        assert!(clean.refusal(false).is_none());
    }

    #[test]
    fn a_granted_socket_itself_is_checked() {
        let dir = tree();
        let sock = dir.path().join("s");
        let _l = UnixListener::bind(&sock).unwrap();
        let roots = [sock.as_path()];
        assert_eq!(
            scan_trees(&roots, &HashSet::new(), 10).unlisted,
            std::slice::from_ref(&sock)
        );
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tree();
        let other = tempdir();
        let sock = other.path().join("elsewhere.sock");
        let _l = UnixListener::bind(&sock).unwrap();
        std::os::unix::fs::symlink(other.path(), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(&sock, dir.path().join("sock-link")).unwrap();
        let roots = [dir.path()];
        assert!(scan_trees(&roots, &HashSet::new(), 1000)
            .unlisted
            .is_empty());
    }

    #[test]
    fn the_bounds_fail_closed() {
        let dir = tree();
        for i in 0..20 {
            std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
        }
        let roots = [dir.path()];
        let cut = scan_trees(&roots, &HashSet::new(), 10);
        assert!(cut.unlisted.is_empty());
        assert!(cut.incomplete.is_some());
        assert!(cut.refusal(false).unwrap().contains("cannot be checked"));
        // Depth: MAX_DEPTH + 1 levels.
        let deep = tempdir();
        let mut p = deep.path().to_path_buf();
        for _ in 0..=MAX_DEPTH {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        let roots = [deep.path()];
        assert!(scan_trees(&roots, &HashSet::new(), 1000)
            .incomplete
            .is_some());
    }

    #[test]
    fn read_only_filesystems_are_not_walked_but_the_mounts_below_them_are() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:5 / /usr ro,relatime - squashfs /dev/loop0 ro
31 30 0:6 / /usr/lib/sock\\040dir rw - tmpfs tmpfs rw,size=10k
32 22 0:7 / /srv ro - ext4 /dev/sdb ro,errors=remount-ro
";
        let m = parse_mountinfo(text);
        assert_eq!(m[0], (22, PathBuf::from("/"), false));
        assert_eq!(m[1], (30, PathBuf::from("/usr"), true));
        assert_eq!(m[2], (31, PathBuf::from("/usr/lib/sock dir"), false));
        assert!(m[3].2, "ro among other super options");
    }

    #[test]
    fn a_missing_grant_is_skipped() {
        let roots = [Path::new("/nonexistent/stockade/grant")];
        assert_eq!(
            scan_trees(&roots, &HashSet::new(), 10),
            ScanResult::default()
        );
    }
}
