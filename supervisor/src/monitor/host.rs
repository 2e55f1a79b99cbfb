//! One set of monitors per host: the programs are loaded by the first supervisor that needs them,
//! pinned in bpffs, and reused by every later one (`stockade run`s at once, the daemon).
//!
//! Layout, versioned by the eBPF object's own hash ([`SET_ID`]) so that a new build never
//! attaches to an old layout:
//!
//! - `/sys/fs/bpf/stockade/<id>/`: the shared maps (`SANDBOXES`, ..., `EVENTS`, `REPORT`), the
//!   programs a supervisor attaches to each sandbox's cgroup (`prog-*`), and the links of the
//!   global hooks (`link-*`: tracepoints, LSM), which keep them attached between supervisors.
//!   One of them, `link-sys_exit`, exists only while a sandbox that wants the syscall tracepoint
//!   runs (`[monitor] syscall_tracepoint`): every syscall on the host pays for it.
//! - `/run/stockade/monitors/`: `setup.lock` (exclusive while a set is loaded, pinned, removed,
//!   or while a supervisor writes `SANDBOX_INDEX`), and per set `<id>/info.json` (what loaded:
//!   written last, so a set without it is incomplete), `<id>/users.lock` (shared by every
//!   supervisor using the set), `<id>/persistent` (kept when its last user goes: `stockade
//!   monitors up`), `<id>/sys_exit.lock` (shared by every supervisor whose sandbox wants the
//!   syscall tracepoint: whoever takes it exclusively, under the setup lock, may detach it), and
//!   `<id>/slot-N` (exclusive while a supervisor owns slot N; it names the sandbox's cgroup, so a
//!   slot whose owner died without disarming is reclaimed by the next).
//!
//! flock(2) locks end with their holder, so a supervisor killed with SIGKILL releases its share
//! of the set and its slots; what it wrote into the maps stays until its slot is taken again
//! ([`super::Monitor::arm`] reclaims it) or the set is removed.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::MonitorError;

/// The eBPF object's FNV-1a hash (supervisor/build.rs).
const OBJECT_ID: &str = include_str!(concat!(env!("OUT_DIR"), "/stockade-ebpf.id"));

/// The layout of what a set's loader writes besides the object (`SetInfo`, the pins' names):
/// raised when either changes.
const SCHEMA: u32 = 2;

/// The name of this build's set: the object's hash, the table the loader writes into
/// `PATH_ARGS`, and [`SCHEMA`], so that a supervisor never joins a set whose maps or tables
/// another layout wrote.
pub fn set_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut bytes = OBJECT_ID.trim().as_bytes().to_vec();
        bytes.extend(SCHEMA.to_le_bytes());
        for (nr, what) in super::rules::path_args() {
            bytes.extend(nr.to_le_bytes());
            bytes.push(what);
        }
        format!("{:016x}", fnv1a(&bytes))
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Where sets are pinned.
pub const PIN_ROOT: &str = "/sys/fs/bpf/stockade";
/// Where their locks and descriptions are.
pub const RUN_ROOT: &str = "/run/stockade/monitors";

/// What the loader of a set found, for every later user (`info.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetInfo {
    /// `(active, detail)` of each monitor, in `Capabilities::all` order.
    pub monitors: Vec<(bool, String)>,
    /// The network programs pinned, in `NET_HOOKS` order (`*_kill` or plain).
    pub net_programs: Vec<String>,
    /// `outbound` or `outbound_anon`.
    pub outbound: String,
    /// Whether the sock_ops report of listeners is pinned.
    pub listen: bool,
    /// Whether the unix socket programs are pinned.
    pub unix: bool,
    /// The global hooks whose links are pinned (`link-NAME`).
    pub links: Vec<String>,
    /// The supervisor that loaded the set, and when (seconds since the epoch).
    pub loaded_by: u32,
    pub loaded_at: u64,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MonitorError + 'a {
    move |source| MonitorError::Host {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// flock(2); `Ok(false)` when `LOCK_NB` was asked and another holder has it.
pub fn flock(file: &File, op: libc::c_int) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor this `File` owns; no memory is passed.
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if op & libc::LOCK_NB != 0 => return Ok(false),
            _ => return Err(e),
        }
    }
}

fn open_lock(path: &Path) -> Result<File, MonitorError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(io("open the lock", path))
}

/// The host-wide setup lock, held while it lives.
pub struct SetupLock(File);

impl SetupLock {
    pub fn take() -> Result<SetupLock, MonitorError> {
        let path = Path::new(RUN_ROOT).join("setup.lock");
        let file = open_lock(&path)?;
        flock(&file, libc::LOCK_EX).map_err(io("lock", &path))?;
        Ok(SetupLock(file))
    }
}

impl Drop for SetupLock {
    fn drop(&mut self) {
        let _ = flock(&self.0, libc::LOCK_UN);
    }
}

/// One set, by id: its pin directory and its run directory.
#[derive(Debug, Clone)]
pub struct SetDirs {
    pub id: String,
    pub pins: PathBuf,
    pub run: PathBuf,
}

impl SetDirs {
    pub fn of(id: &str) -> SetDirs {
        SetDirs {
            id: id.to_string(),
            pins: Path::new(PIN_ROOT).join(id),
            run: Path::new(RUN_ROOT).join(id),
        }
    }

    pub fn this_build() -> SetDirs {
        SetDirs::of(set_id())
    }

    pub fn pin(&self, name: &str) -> PathBuf {
        self.pins.join(name)
    }

    pub fn info(&self) -> Option<SetInfo> {
        if !self.pins.join("SANDBOXES").exists() {
            return None;
        }
        let text = fs::read_to_string(self.run.join("info.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write_info(&self, info: &SetInfo) -> Result<(), MonitorError> {
        let tmp = self.run.join("info.json.tmp");
        let text = serde_json::to_string_pretty(info).unwrap_or_default();
        fs::write(&tmp, text).map_err(io("write", &tmp))?;
        let path = self.run.join("info.json");
        fs::rename(&tmp, &path).map_err(io("write", &path))
    }

    pub fn persistent(&self) -> bool {
        self.run.join("persistent").exists()
    }

    pub fn set_persistent(&self, on: bool) -> Result<(), MonitorError> {
        let path = self.run.join("persistent");
        if on {
            fs::write(&path, b"").map_err(io("write", &path))
        } else {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &path)(e)),
                _ => Ok(()),
            }
        }
    }

    pub fn users_lock(&self) -> Result<File, MonitorError> {
        open_lock(&self.run.join("users.lock"))
    }

    pub fn slot_path(&self, slot: u32) -> PathBuf {
        self.run.join(format!("slot-{slot}"))
    }

    /// Unpins everything and removes the run directory. The programs stay in the kernel while
    /// a descriptor of theirs is open (a supervisor of this set may still be detaching).
    /// Call with the setup lock held and the users lock exclusive.
    pub fn remove(&self) {
        // First what marks the set complete: a removal cut short leaves a set nobody joins.
        let _ = fs::remove_file(self.run.join("info.json"));
        for dir in [&self.pins, &self.run] {
            if let Ok(entries) = fs::read_dir(dir) {
                for e in entries.flatten() {
                    let _ = fs::remove_file(e.path());
                }
            }
            if let Err(e) = fs::remove_dir(dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove {}: {e}", dir.display());
                }
            }
        }
        // The last set gone: its parent too (another set's directory keeps it).
        let _ = fs::remove_dir(PIN_ROOT);
    }

    /// Unpins everything of an incomplete set (the run directory and its locks stay).
    pub fn remove_pins(&self) {
        let _ = fs::remove_file(self.run.join("info.json"));
        if let Ok(entries) = fs::read_dir(&self.pins) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir(&self.pins);
    }

    fn tracepoint_lock_path(&self) -> PathBuf {
        self.run.join("sys_exit.lock")
    }

    pub fn tracepoint_lock(&self) -> Result<File, MonitorError> {
        open_lock(&self.tracepoint_lock_path())
    }

    /// Detaches the syscall tracepoint when no supervisor wants it (its lock taken exclusively):
    /// its last wanter ended, or was killed. Call with the setup lock held.
    pub fn settle_tracepoint(&self) {
        let pin = self.pin("link-sys_exit");
        if !pin.exists() {
            return;
        }
        let Ok(lock) = self.tracepoint_lock() else {
            return;
        };
        if flock(&lock, libc::LOCK_EX | libc::LOCK_NB).unwrap_or(false) {
            // Nobody else holds the link open (its holders hold the lock shared): unpinned, it
            // is detached.
            let _ = fs::remove_file(&pin);
            tracing::debug!(set = %self.id, "syscall tracepoint detached: no sandbox wants it");
        }
    }

    /// Whether nobody uses the set: the users lock taken exclusively (and kept in `users`).
    pub fn unused(&self, users: &File) -> bool {
        flock(users, libc::LOCK_EX | libc::LOCK_NB).unwrap_or(false)
    }
}

/// Creates `/run/stockade/monitors/` (mode 0700), where the setup lock is.
pub fn make_root() -> Result<(), MonitorError> {
    let dir = Path::new(RUN_ROOT);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))
}

/// Creates this set's directories (with the setup lock held: its last user removes them under
/// it).
pub fn make_dirs(set: &SetDirs) -> Result<(), MonitorError> {
    for dir in [Path::new(RUN_ROOT), &set.run] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create", dir))?;
    }
    for dir in [Path::new(PIN_ROOT), &set.pins] {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io("create", dir)(e))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Removes the sets of other builds that nobody uses (with the setup lock held). Returns whether
/// one of them was persistent, which the new set inherits.
pub fn retire_others(ours: &SetDirs) -> bool {
    let mut persistent = false;
    let Ok(entries) = fs::read_dir(PIN_ROOT) else {
        return false;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if id == ours.id {
            continue;
        }
        let other = SetDirs::of(&id);
        let _ = fs::DirBuilder::new().mode(0o700).create(&other.run);
        let Ok(users) = other.users_lock() else {
            continue;
        };
        if other.unused(&users) {
            persistent |= other.persistent();
            tracing::info!("removing the unused monitors of another build ({id})");
            other.remove();
        } else {
            tracing::info!("the monitors of another build ({id}) are in use; left in place");
        }
    }
    persistent
}

/// The fields of `union bpf_attr` that BPF_OBJ_PIN and BPF_OBJ_GET read.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `bpf(cmd)` with an `ObjAttr` naming `path` (and `fd`, for a pin).
fn obj_call(cmd: libc::c_long, path: &Path, fd: u32) -> std::io::Result<libc::c_long> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjAttr {
        pathname: name.as_ptr() as u64,
        bpf_fd: fd,
        ..ObjAttr::default()
    };
    // SAFETY: BPF_OBJ_PIN (6) and BPF_OBJ_GET (7) take this layout and read the path it points
    // to, alive for the call.
    unsafe { bpf_cmd(cmd, &mut attr) }
}

/// One bpf(2) command `cmd` with its attribute `attr`: what the kernel answers (0, or a new
/// descriptor), or its error. Every raw bpf(2) call of the supervisor goes through here. The
/// attribute is the kernel's to write too (BPF_OBJ_GET_INFO_BY_FD writes `info_len` back).
///
/// # Safety
/// `A` is the attribute layout `cmd` takes (the kernel zero-extends the newer fields), and
/// every pointer in it is valid, for the call's length, for what `cmd` reads or writes there.
pub unsafe fn bpf_cmd<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<libc::c_long> {
    // SAFETY: the caller's promise; `attr` itself lives across the call and is exclusively
    // borrowed for it.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// [`bpf_cmd`] for a command that answers a new descriptor, owned from here on.
///
/// # Safety
/// As for [`bpf_cmd`]; `cmd` answers a descriptor.
pub unsafe fn bpf_fd<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller's promise.
    let fd = unsafe { bpf_cmd(cmd, attr) }?;
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_OBJ_PIN: `fd`'s object at `path` on a bpffs.
pub fn obj_pin(fd: std::os::fd::BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
    obj_call(6, path, fd.as_raw_fd() as u32).map(|_| ())
}

/// BPF_OBJ_GET: a new descriptor of the object pinned at `path`.
pub fn obj_get(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let fd = obj_call(7, path, 0)?;
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_RAW_TRACEPOINT_OPEN: attaches `prog` to the raw tracepoint `name`; the descriptor is the
/// link (closing its last reference, pin included, detaches).
pub fn raw_tracepoint_open(
    prog: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::CStr,
) -> std::io::Result<std::os::fd::OwnedFd> {
    #[repr(C)]
    struct Attr {
        name: u64,
        prog_fd: u32,
        _pad: u32,
    }
    let mut attr = Attr {
        name: name.as_ptr() as u64,
        prog_fd: prog.as_raw_fd() as u32,
        _pad: 0,
    };
    // SAFETY: BPF_RAW_TRACEPOINT_OPEN (17) takes this layout and reads the name it points to,
    // alive for the call.
    unsafe { bpf_fd(17, &mut attr) }
}

/// A supervisor's want of the syscall tracepoint: the link held open (so that it stays attached
/// whatever happens to its pin) and the set's `sys_exit.lock` held shared.
#[derive(Debug)]
pub struct TracepointHold {
    _link: std::os::fd::OwnedFd,
    _lock: File,
}

impl SetDirs {
    /// Attaches the set's `sys_exit` program to the syscall tracepoint unless a sandbox that
    /// wants it runs already, and holds it for one sandbox. Call with the setup lock held.
    ///
    /// Only a sole wanter attaches: one who finds other holders but no pinned link does not
    /// attach a second one (the program would then run twice per call and count everything
    /// twice) and fails instead.
    pub fn want_tracepoint(&self) -> Result<TracepointHold, MonitorError> {
        let lock = self.tracepoint_lock()?;
        let lock_path = self.tracepoint_lock_path();
        let sole = flock(&lock, libc::LOCK_EX | libc::LOCK_NB).map_err(io("lock", &lock_path))?;
        let pin = self.pin("link-sys_exit");
        let link = match obj_get(&pin) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && sole => {
                let program = self.pin("prog-sys_exit");
                let prog = obj_get(&program).map_err(io("open the program", &program))?;
                let link = raw_tracepoint_open(prog.as_fd(), c"sys_exit")
                    .map_err(io("attach to the syscall tracepoint", &program))?;
                obj_pin(link.as_fd(), &pin).map_err(io("pin", &pin))?;
                tracing::debug!(set = %self.id, "syscall tracepoint attached");
                link
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(MonitorError::TracepointLost(pin))
            }
            Err(e) => return Err(io("open the link", &pin)(e)),
        };
        // Shared from here; every exclusive taker holds the setup lock, as this caller does, so
        // the conversion (not atomic in flock(2)) leaves no gap anyone could use.
        flock(&lock, libc::LOCK_SH).map_err(io("lock", &lock_path))?;
        Ok(TracepointHold {
            _link: link,
            _lock: lock,
        })
    }
}

/// A slot of the set, owned while the file's lock is held. The file names the sandbox armed at
/// it, so that whoever takes the slot after a crashed owner removes that sandbox's entries.
#[derive(Debug)]
pub struct SlotLock {
    file: File,
}

/// Who held a slot before, as its file says: a cgroup id and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    pub pid: u32,
    pub cgroup_id: u64,
    pub cgroup: String,
}

impl SlotLock {
    /// The slot when nobody holds it.
    pub fn try_take(path: &Path) -> Result<Option<SlotLock>, MonitorError> {
        let file = open_lock(path)?;
        Ok(flock(&file, libc::LOCK_EX | libc::LOCK_NB)
            .map_err(io("lock", path))?
            .then_some(SlotLock { file }))
    }

    /// What the previous owner left: a sandbox it never disarmed.
    pub fn stale(&mut self) -> Option<Stale> {
        let mut text = String::new();
        self.file.rewind().ok()?;
        self.file.read_to_string(&mut text).ok()?;
        parse_slot(&text)
    }

    pub fn record(&mut self, cgroup_id: u64, cgroup: &Path) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        let line = format!("{} {cgroup_id} {}\n", std::process::id(), cgroup.display());
        self.file.write_all(line.as_bytes())
    }

    pub fn clear(&mut self) {
        let _ = self.file.set_len(0);
    }
}

fn parse_slot(text: &str) -> Option<Stale> {
    let mut parts = text.trim_end().splitn(3, ' ');
    Some(Stale {
        pid: parts.next()?.parse().ok()?,
        cgroup_id: parts.next()?.parse().ok()?,
        cgroup: parts.next().unwrap_or_default().to_string(),
    })
}

/// `stockade monitors status`: what is pinned, who uses it (from /proc/locks, without taking a
/// lock), and which slots are owned.
#[derive(Debug, Serialize)]
pub struct Status {
    pub id: String,
    pub this_build: bool,
    pub pins: String,
    pub loaded: bool,
    pub persistent: bool,
    pub loaded_by: Option<u32>,
    pub loaded_at: Option<u64>,
    /// Supervisors holding the set (pids).
    pub users: Vec<u32>,
    /// Whether the syscall tracepoint is attached (every syscall on the host passes it).
    pub syscall_tracepoint: bool,
    /// The supervisors whose sandboxes want it (pids).
    pub tracepoint_users: Vec<u32>,
    pub slots: Vec<SlotStatus>,
}

#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub slot: u32,
    /// The pid holding the slot's lock; `None` for a slot its owner left without disarming.
    pub owner: Option<u32>,
    pub cgroup_id: u64,
    pub cgroup: String,
}

/// Every set on this host.
pub fn status() -> Vec<Status> {
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    let mut ids: Vec<String> = fs::read_dir(PIN_ROOT)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids.into_iter()
        .map(|id| {
            let set = SetDirs::of(&id);
            let info = set.info();
            let users = holders(&locks, &set.run.join("users.lock"));
            let tracepoint_users = holders(&locks, &set.tracepoint_lock_path());
            let mut slots = Vec::new();
            for n in 0..stockade_ebpf_common::MAX_SLOTS {
                let path = set.slot_path(n);
                let Some(stale) = fs::read_to_string(&path).ok().and_then(|t| parse_slot(&t))
                else {
                    continue;
                };
                slots.push(SlotStatus {
                    slot: n,
                    owner: holders(&locks, &path).first().copied(),
                    cgroup_id: stale.cgroup_id,
                    cgroup: stale.cgroup,
                });
            }
            Status {
                this_build: id == set_id(),
                pins: set.pins.display().to_string(),
                loaded: info.is_some(),
                persistent: set.persistent(),
                loaded_by: info.as_ref().map(|i| i.loaded_by),
                loaded_at: info.as_ref().map(|i| i.loaded_at),
                syscall_tracepoint: set.pin("link-sys_exit").exists(),
                id,
                users,
                tracepoint_users,
                slots,
            }
        })
        .collect()
}

/// The pids holding a FLOCK on `path`, from /proc/locks (`1: FLOCK ADVISORY READ 1234
/// 00:1a:5678 0 EOF`: the file by major:minor:inode).
fn holders(locks: &str, path: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(path) else {
        return Vec::new();
    };
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let mut pids: Vec<u32> = locks
        .lines()
        .filter(|l| !l.contains("->")) // a waiter, not a holder
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
                .then(|| f.get(4)?.parse().ok())
                .flatten()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_file_names_its_owner_and_sandbox() {
        assert_eq!(
            parse_slot("123 4567 /sys/fs/cgroup/x/stockade-123/sandbox\n"),
            Some(Stale {
                pid: 123,
                cgroup_id: 4567,
                cgroup: "/sys/fs/cgroup/x/stockade-123/sandbox".into()
            })
        );
        assert_eq!(parse_slot(""), None);
        assert_eq!(parse_slot("garbage"), None);
    }

    #[test]
    fn lock_holders_are_read_by_device_and_inode() {
        let dir = std::env::temp_dir().join(format!("stockade-holders-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.lock");
        let file = open_lock(&path).unwrap();
        assert!(flock(&file, libc::LOCK_SH).unwrap());
        let locks = fs::read_to_string("/proc/locks").unwrap();
        let pids = holders(&locks, &path);
        assert_eq!(pids, vec![std::process::id()]);
        // A second holder of the same file on another open description: still one pid.
        let other = open_lock(&path).unwrap();
        assert!(flock(&other, libc::LOCK_SH | libc::LOCK_NB).unwrap());
        assert!(!flock(&other, libc::LOCK_EX | libc::LOCK_NB).unwrap());
        drop((file, other));
        let locks = fs::read_to_string("/proc/locks").unwrap();
        assert!(holders(&locks, &path).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
