//! The sandbox's root filesystem: a fresh tmpfs holding only what the policy declares.
//!
//! Why: the mount namespace is the first filesystem wall. A path that the policy does not name does
//! not exist inside (`/etc/shadow` is ENOENT, not EACCES), so there is nothing to get wrong in a
//! permission check. Landlock, applied later, is the second wall over the same paths.
//!
//! When: first, while the shim still has every capability in its user namespace and the host's
//! tree is reachable to bind from. The steps:
//! 1. make every mount private, so nothing we do propagates back to the host;
//! 2. mount a scratch tmpfs and pivot into it, keeping the host tree at /oldroot (this keeps
//!    sources under /tmp reachable, unlike mounting the scratch area over /tmp);
//! 3. build /newroot: read-only binds (noexec unless granted exec), read-write binds (always
//!    noexec: W^X), symlinks recreated rather than followed, a private /proc, a minimal /dev and a
//!    size-limited /tmp;
//! 4. pivot into /newroot, detach the scratch tree and the host tree, make / read-only.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};

use crate::error::{Context, SetupError};
use stockade_policy::{Access, LaunchSpec, MountSpec};

const STEP: &str = "mount";
const NEWROOT: &str = "/newroot";
const OLDROOT: &str = "/oldroot";

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: u32 = 0x8000;

/// Limits of the sandbox's own user namespace (/proc/sys/user).
const USER_NAMESPACE_LIMITS: [(&str, &str); 2] = [
    ("max_inotify_instances", "32"),
    ("max_inotify_watches", "8192"),
];

/// Device nodes the plugin gets, bound from the host's /dev.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// What the root build could and could not do, for the supervisor's report.
pub struct RootReport {
    pub memfd_noexec: bool,
}

pub fn build_root(spec: &LaunchSpec) -> Result<RootReport, SetupError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .during(STEP, || "make / private".into())?;

    // The scratch tmpfs goes over /tmp only within this namespace; the host's /tmp stays reachable
    // at /oldroot/tmp after the pivot.
    tmpfs("/tmp", "mode=0700,size=1m")?;
    mkdir("/tmp/oldroot", 0o700)?;
    mkdir("/tmp/newroot", 0o755)?;
    pivot_root("/tmp", "/tmp/oldroot").during(STEP, || "pivot into the scratch tmpfs".into())?;
    chdir("/").during(STEP, || "chdir /".into())?;

    tmpfs(NEWROOT, "mode=0755,size=1m")?;
    // /tmp before the binds, so that a declared path below /tmp is bound on top of it, not hidden.
    if let Some(tmp) = &spec.tmp {
        let target = format!("{NEWROOT}/tmp");
        mkdir_all(Path::new(&target))?;
        tmpfs(&target, &format!("mode=1777,size={}", tmp.size_bytes))?;
        // `tmp_exec`: the one writable tree the plugin may also execute from (docs/policy.md).
        let noexec = if tmp.exec { 0 } else { MOUNT_ATTR_NOEXEC };
        set_attrs(&target, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | noexec)?;
    }
    for m in &spec.mounts {
        bind_declared(m)?;
    }
    let memfd_noexec = build_proc()?;
    build_dev(spec.tmp.as_ref().map(|t| t.size_bytes))?;

    // pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then removes
    // the scratch tmpfs and, below it, the whole host tree from this namespace.
    chdir(NEWROOT).during(STEP, || format!("chdir {NEWROOT}"))?;
    pivot_root(".", ".").during(STEP, || "pivot into the sandbox root".into())?;
    umount2(".", MntFlags::MNT_DETACH).during(STEP, || "detach the host tree".into())?;
    chdir("/").during(STEP, || "chdir /".into())?;
    set_attrs_one(
        "/",
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )?;
    set_attrs_one(
        "/dev",
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
    )?;
    Ok(RootReport { memfd_noexec })
}

fn bind_declared(m: &MountSpec) -> Result<(), SetupError> {
    let source = under(OLDROOT, &m.source);
    let target = under(NEWROOT, &m.target);
    let meta = match fs::symlink_metadata(&source) {
        Ok(meta) => meta,
        // A declared path missing on this host is simply absent in the sandbox too.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).during(STEP, || format!("stat {}", m.source.display())),
    };
    if let Some(parent) = target.parent() {
        mkdir_all(parent)?;
    }
    if meta.file_type().is_symlink() {
        // Recreate the link instead of following it: /lib -> usr/lib stays a link, and its target
        // exists inside only if the policy grants it too.
        let link =
            fs::read_link(&source).during(STEP, || format!("readlink {}", m.source.display()))?;
        return match symlink(&link, &target) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other.during(STEP, || format!("symlink {}", m.target.display())),
        };
    }
    if meta.is_dir() {
        mkdir_all(&target)?;
    } else if fs::symlink_metadata(&target).is_err() {
        fs::File::create(&target).during(STEP, || format!("create {}", m.target.display()))?;
    }
    mount(
        Some(&source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .during(STEP, || format!("bind {}", m.source.display()))?;
    let attrs = MOUNT_ATTR_NOSUID
        | MOUNT_ATTR_NODEV
        | match m.access {
            Access::Read => MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOEXEC,
            Access::Exec => MOUNT_ATTR_RDONLY,
            Access::Write => MOUNT_ATTR_NOEXEC,
        };
    set_attrs(&target, attrs)
}

/// A /proc for the sandbox's own pid namespace, with /proc/sys read-only. Returns whether
/// `vm.memfd_noexec` is 2 in it.
fn build_proc() -> Result<bool, SetupError> {
    let target = format!("{NEWROOT}/proc");
    mkdir_all(Path::new(&target))?;
    mount(
        Some("proc"),
        target.as_str(),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .during(STEP, || "mount /proc".into())?;
    // Per-user-namespace limits, written while /proc/sys is still writable. inotify instances and
    // watches are counted per user up the namespace tree and charged to the supervisor's uid as
    // well, so without a limit of its own one sandbox could exhaust them for the whole host.
    for (sysctl, value) in USER_NAMESPACE_LIMITS {
        fs::write(format!("{target}/sys/user/{sysctl}"), value)
            .during(STEP, || format!("set user.{sysctl}"))?;
    }
    // The launcher set vm.memfd_noexec = 2 for this pid namespace; read it back for the report.
    let memfd_noexec = fs::read_to_string(format!("{target}/sys/vm/memfd_noexec"))
        .map(|v| v.trim() == "2")
        .unwrap_or(false);
    let sys = format!("{target}/sys");
    mount(
        Some(sys.as_str()),
        sys.as_str(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .during(STEP, || "bind /proc/sys".into())?;
    set_attrs(
        &sys,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
    )?;
    Ok(memfd_noexec)
}

/// A tmpfs /dev with the harmless device nodes bound from the host and the usual links, and,
/// when the policy grants `$TMP` (scratch space), a private `/dev/shm` of the same size: POSIX
/// shared memory and named semaphores (Python's multiprocessing locks) live there, and without it
/// their first `O_CREAT` is a reach below a directory the sandbox hides. Its pages count against
/// the sandbox's memory limit like /tmp's.
fn build_dev(shm_bytes: Option<u64>) -> Result<(), SetupError> {
    let dev = format!("{NEWROOT}/dev");
    mkdir_all(Path::new(&dev))?;
    tmpfs(&dev, "mode=0755,size=64k")?;
    if let Some(size) = shm_bytes {
        let shm = format!("{dev}/shm");
        mkdir(shm.as_str(), 0o755)?;
        tmpfs(&shm, &format!("mode=1777,size={size}"))?;
    }
    for name in DEVICES {
        let source = format!("{OLDROOT}/dev/{name}");
        let target = format!("{dev}/{name}");
        if fs::metadata(&source).is_err() {
            continue;
        }
        fs::File::create(&target).during(STEP, || format!("create /dev/{name}"))?;
        mount(
            Some(source.as_str()),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .during(STEP, || format!("bind /dev/{name}"))?;
    }
    // One recursive call for the tmpfs and every device bound on it (never nodev: these are the
    // devices the plugin may use).
    set_attrs(&dev, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC)?;
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, format!("{dev}/{link}")).during(STEP, || format!("symlink /dev/{link}"))?;
    }
    Ok(())
}

fn tmpfs(target: &str, options: &str) -> Result<(), SetupError> {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options),
    )
    .during(STEP, || format!("mount tmpfs on {target}"))
}

/// Sets mount attributes on `path` and every mount below it (mount_setattr, Linux 5.12+). Only
/// sets flags, never clears them, so flags locked by a more privileged namespace stay as they are.
fn set_attrs(path: impl AsRef<Path>, attrs: u64) -> Result<(), SetupError> {
    mount_setattr(path, attrs, AT_RECURSIVE)
}

fn set_attrs_one(path: impl AsRef<Path>, attrs: u64) -> Result<(), SetupError> {
    mount_setattr(path, attrs, 0)
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn mount_setattr(path: impl AsRef<Path>, attrs: u64, flags: u32) -> Result<(), SetupError> {
    let path = path.as_ref();
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SetupError::new(STEP, format!("path {}", path.display()), Errno::EINVAL))?;
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `c_path` is a valid NUL-terminated string and `attr` a properly laid-out struct that
    // outlives the call; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(SetupError::new(
            STEP,
            format!("set mount attributes of {}", path.display()),
            Errno::last(),
        ));
    }
    Ok(())
}

/// `root` joined with absolute `path`, refusing `..` (the policy parser already rejects it).
fn under(root: &str, path: &Path) -> PathBuf {
    let mut out = PathBuf::from(root);
    for c in path.components() {
        if let Component::Normal(part) = c {
            out.push(part);
        }
    }
    out
}

fn mkdir(path: &str, mode: u32) -> Result<(), SetupError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .during(STEP, || format!("mkdir {path}"))
}

fn mkdir_all(path: &Path) -> Result<(), SetupError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .during(STEP, || format!("mkdir {}", path.display()))
}
