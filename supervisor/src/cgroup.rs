//! One cgroup per sandbox, below the supervisor's own cgroup, in every hierarchy that enforces one
//! of its limits.
//!
//! Why our own code rather than cgroups-rs: on hybrid hosts (v1 controllers plus a v2 hierarchy
//! without controllers, like these machines) a sandbox needs both at once: the v1 memory, pids and
//! cpu controllers for its limits, and a v2 directory for its cgroup id (what BPF programs key on),
//! `cgroup.kill` and `CLONE_INTO_CGROUP`. cgroups-rs picks one hierarchy kind per host. What we need
//! is a few file writes per hierarchy, done here (see docs/architecture.md).
//!
//! Rules this module keeps: it never writes into, moves processes out of, or removes a cgroup at or
//! above its own; everything it creates it removes, also on error paths. One exception, asked for:
//! a cgroup the service manager delegated (systemd's `Delegate=yes` marks it with the xattr
//! `trusted.delegate`) is ours to arrange — the supervisor moves its own processes into a leaf,
//! `supervisor/`, and enables the controllers its sandboxes need in the delegated cgroup, whose
//! children they become (cgroup v2 gives controllers only to cgroups without processes).

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stockade_policy::ResourceSpec;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read the cgroup layout: {0}")]
    Layout(String),
    #[error("no cgroup v2 hierarchy is mounted")]
    NoUnified,
    #[error("the {0} controller is not available in any hierarchy")]
    MissingController(&'static str),
    #[error(
        "cannot enable the memory, pids and cpu controllers below {}: that cgroup holds processes, \
         and cgroup v2 gives controllers only to cgroups without them",
        .0.display()
    )]
    NotDelegated(PathBuf),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CgroupError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> CgroupError {
        CgroupError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How the host mounts cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2 only (the systemd default): every controller in one hierarchy.
    Unified { mount: PathBuf, own: PathBuf },
    /// v1 controllers beside a v2 hierarchy whose controllers are not the ones we need.
    Hybrid {
        unified: PathBuf,
        own_unified: PathBuf,
        v1: Vec<V1Hierarchy>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    pub controller: &'static str,
    /// The supervisor's own cgroup in this hierarchy (absolute path under the mount).
    pub own: PathBuf,
}

/// The v1 controllers a sandbox uses on hybrid hosts. CPU time is read from the v2 directory's
/// cpu.stat, which exists without any controller, so cpuacct is not needed.
const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// The v2 controllers a sandbox needs on unified hosts.
const V2_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// The leaf of a delegated cgroup that holds the supervisor's own processes (the name systemd's
/// `DelegateSubgroup=` uses too).
pub const SUPERVISOR_LEAF: &str = "supervisor";

impl Layout {
    /// The host's cgroups and our place in them. "Our" cgroup is the delegated one when we sit in
    /// its `supervisor/` leaf (after [`enter_delegated_leaf`], or placed there by systemd's
    /// `DelegateSubgroup=supervisor`): the sandboxes go beside the leaf, not inside it.
    pub fn detect() -> Result<Layout, CgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| CgroupError::Layout(format!("/proc/self/mountinfo: {e}")))?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| CgroupError::Layout(format!("/proc/self/cgroup: {e}")))?;
        let mut layout = Layout::from_tables(&mountinfo, &own)?;
        if let Layout::Unified { own, .. } = &mut layout {
            if own.file_name() == Some(std::ffi::OsStr::new(SUPERVISOR_LEAF)) {
                if let Some(parent) = own.parent().filter(|p| delegated(p)) {
                    *own = parent.to_path_buf();
                }
            }
        }
        Ok(layout)
    }

    /// Parses /proc/self/mountinfo and /proc/self/cgroup.
    pub fn from_tables(mountinfo: &str, own: &str) -> Result<Layout, CgroupError> {
        let mut v2_mount: Option<PathBuf> = None;
        let mut v1_mounts: Vec<(String, PathBuf)> = Vec::new();
        for line in mountinfo.lines() {
            // "36 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4).unwrap_or_default();
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or_default();
            let super_opts = right.nth(1).unwrap_or_default();
            match fstype {
                "cgroup2" if v2_mount.is_none() => v2_mount = Some(PathBuf::from(mount_point)),
                "cgroup" => v1_mounts.push((super_opts.to_string(), PathBuf::from(mount_point))),
                _ => {}
            }
        }
        let mut own_v2 = None;
        let mut own_v1: Vec<(Vec<String>, String)> = Vec::new();
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if ctrls.is_empty() {
                own_v2 = Some(path.to_string());
            } else {
                own_v1.push((
                    ctrls.split(',').map(String::from).collect(),
                    path.to_string(),
                ));
            }
        }
        let unified = v2_mount.ok_or(CgroupError::NoUnified)?;
        let own_unified = join(&unified, own_v2.as_deref().unwrap_or("/"));
        if v1_mounts.is_empty() {
            return Ok(Layout::Unified {
                mount: unified,
                own: own_unified,
            });
        }
        let mut v1 = Vec::new();
        for controller in V1_CONTROLLERS {
            let mount = v1_mounts
                .iter()
                .find(|(opts, _)| opts.split(',').any(|o| o == controller))
                .map(|(_, m)| m.clone());
            let own_path = own_v1
                .iter()
                .find(|(ctrls, _)| ctrls.iter().any(|c| c == controller))
                .map(|(_, p)| p.clone());
            match (mount, own_path) {
                (Some(mount), Some(own)) => v1.push(V1Hierarchy {
                    controller,
                    own: join(&mount, &own),
                }),
                _ => return Err(CgroupError::MissingController(controller)),
            }
        }
        Ok(Layout::Hybrid {
            unified,
            own_unified,
            v1,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Layout::Unified { .. } => "unified (cgroup v2)",
            Layout::Hybrid { .. } => "hybrid (cgroup v1 controllers + cgroup v2 for identity)",
        }
    }
}

fn join(mount: &Path, cgroup_path: &str) -> PathBuf {
    let rel = cgroup_path.trim_start_matches('/');
    if rel.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(rel)
    }
}

/// Resource use read from the sandbox's cgroups when it ends.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CgroupStats {
    pub memory_peak_bytes: Option<u64>,
    pub oom_kills: u64,
    pub pids_peak: Option<u64>,
    pub pids_limit_hits: u64,
    pub cpu_usage_us: Option<u64>,
}

/// The cgroups of one sandbox. Dropping it removes them (after killing what is left inside).
#[derive(Debug)]
pub struct SandboxCgroup {
    /// The v2 directory: cgroup id, cgroup.kill, CLONE_INTO_CGROUP, and the limits on unified hosts.
    v2: PathBuf,
    /// v1 directories on hybrid hosts, by controller.
    v1: Vec<(&'static str, PathBuf)>,
    removed: bool,
}

impl SandboxCgroup {
    /// Creates the sandbox's cgroups named `name` and writes its limits. On any error, what was
    /// already created is removed.
    pub fn create(
        layout: &Layout,
        name: &str,
        limits: &ResourceSpec,
    ) -> Result<SandboxCgroup, CgroupError> {
        let (own_v2, v1) = match layout {
            Layout::Unified { own, .. } => (own.clone(), Vec::new()),
            Layout::Hybrid {
                own_unified, v1, ..
            } => (own_unified.clone(), v1.clone()),
        };
        let mut cg = SandboxCgroup {
            v2: own_v2.join(name),
            v1: Vec::new(),
            removed: false,
        };
        if matches!(layout, Layout::Unified { .. }) {
            enable_controllers(&own_v2)?;
        }
        mkdir(&cg.v2)?;
        for h in &v1 {
            // Each v1 directory costs a mkdir, a self-attach and an rmdir per launch: only the
            // controllers with a limit to enforce get one.
            if h.controller == "cpu" && limits.cpu_quota_us.is_none() {
                continue;
            }
            let dir = h.own.join(name);
            mkdir(&dir)?;
            cg.v1.push((h.controller, dir));
        }
        cg.write_limits(limits)?;
        Ok(cg)
    }

    fn write_limits(&self, limits: &ResourceSpec) -> Result<(), CgroupError> {
        if self.v1.is_empty() {
            write(
                &self.v2.join("memory.max"),
                &limits.memory_bytes.to_string(),
            )?;
            write_if_exists(&self.v2.join("memory.swap.max"), "0")?;
            // Kill the whole sandbox on OOM, not one process chosen inside it.
            write_if_exists(&self.v2.join("memory.oom.group"), "1")?;
            write(&self.v2.join("pids.max"), &limits.pids.to_string())?;
            if let Some(quota) = limits.cpu_quota_us {
                write(&self.v2.join("cpu.max"), &format!("{quota} 100000"))?;
            }
            return Ok(());
        }
        for (controller, dir) in &self.v1 {
            match *controller {
                "memory" => {
                    write(
                        &dir.join("memory.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    )?;
                    // Socket buffers are charged to a v1 memory cgroup only once its TCP limit is
                    // set; without it a plugin's UDP and TCP buffers escape the memory limit.
                    write_if_exists(
                        &dir.join("memory.kmem.tcp.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    )?;
                    // Swap counts against the same limit where swap accounting exists.
                    write_if_exists(
                        &dir.join("memory.memsw.limit_in_bytes"),
                        &limits.memory_bytes.to_string(),
                    )?;
                    write_if_exists(&dir.join("memory.swappiness"), "0")?;
                }
                "pids" => write(&dir.join("pids.max"), &limits.pids.to_string())?,
                "cpu" => {
                    // The period is the kernel's default of 100 ms for a new cgroup.
                    if let Some(quota) = limits.cpu_quota_us {
                        write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// An O_DIRECTORY descriptor of the v2 directory, for clone3's CLONE_INTO_CGROUP.
    pub fn v2_dir_fd(&self) -> Result<OwnedFd, CgroupError> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&self.v2)
            .map_err(|e| CgroupError::io("open", &self.v2, e))?;
        Ok(dir.into())
    }

    /// The cgroup id: the inode number of the v2 directory, what `bpf_get_current_cgroup_id()`
    /// returns for the sandbox's processes.
    pub fn id(&self) -> Result<u64, CgroupError> {
        fs::metadata(&self.v2)
            .map(|m| m.ino())
            .map_err(|e| CgroupError::io("stat", &self.v2, e))
    }

    pub fn v2_path(&self) -> &Path {
        &self.v2
    }

    /// The v1 `tasks` files (hybrid hosts) that the launched child writes "0" into, to move itself.
    ///
    /// Why not the supervisor writing the child's pid into `cgroup.procs`: that takes the cgroup
    /// threadgroup rwsem for writing, which waits for an RCU grace period (6–14 ms measured on
    /// these hosts, more than a whole bubblewrap launch). A single thread moving itself through
    /// `tasks` skips that lock (kernel/cgroup: `cgroup_procs_write_start` with pid 0 and no
    /// threadgroup) and takes about 0.1 ms. The child does it before it executes anything.
    pub fn v1_task_files(&self) -> Vec<PathBuf> {
        self.v1.iter().map(|(_, dir)| dir.join("tasks")).collect()
    }

    /// Kills every process in the sandbox at once (cgroup.kill, Linux 5.14+).
    pub fn kill(&self) -> Result<(), CgroupError> {
        write(&self.v2.join("cgroup.kill"), "1")
    }

    pub fn is_populated(&self) -> bool {
        match fs::read_to_string(self.v2.join("cgroup.events")) {
            Ok(events) => events.lines().any(|l| l == "populated 1"),
            Err(_) => false,
        }
    }

    /// OOM kills in the sandbox so far (v2 `memory.events`, or the v1 `memory.oom_control`).
    pub fn oom_kills(&self) -> u64 {
        if self.v1.is_empty() {
            return read_keyed(&self.v2.join("memory.events"), "oom_kill").unwrap_or(0);
        }
        self.v1
            .iter()
            .find(|(controller, _)| *controller == "memory")
            .and_then(|(_, dir)| read_keyed(&dir.join("memory.oom_control"), "oom_kill"))
            .unwrap_or(0)
    }

    pub fn stats(&self) -> CgroupStats {
        let mut s = CgroupStats {
            cpu_usage_us: read_keyed(&self.v2.join("cpu.stat"), "usage_usec"),
            ..CgroupStats::default()
        };
        if self.v1.is_empty() {
            s.memory_peak_bytes = read_u64(&self.v2.join("memory.peak"));
            s.oom_kills = read_keyed(&self.v2.join("memory.events"), "oom_kill").unwrap_or(0);
            s.pids_peak = read_u64(&self.v2.join("pids.peak"));
            s.pids_limit_hits = read_keyed(&self.v2.join("pids.events"), "max").unwrap_or(0);
            return s;
        }
        for (controller, dir) in &self.v1 {
            match *controller {
                "memory" => {
                    s.memory_peak_bytes = read_u64(&dir.join("memory.max_usage_in_bytes"));
                    s.oom_kills =
                        read_keyed(&dir.join("memory.oom_control"), "oom_kill").unwrap_or(0);
                }
                "pids" => {
                    s.pids_peak = read_u64(&dir.join("pids.peak"));
                    s.pids_limit_hits = read_keyed(&dir.join("pids.events"), "max").unwrap_or(0);
                }
                _ => {}
            }
        }
        s
    }

    /// Kills what is left, waits until the cgroups are empty, and removes them.
    pub fn destroy(mut self) -> Result<(), CgroupError> {
        self.remove()
    }

    fn remove(&mut self) -> Result<(), CgroupError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        if self.v2.exists() && self.is_populated() {
            let _ = self.kill();
        }
        let mut first_error = None;
        for dir in self
            .v1
            .iter()
            .map(|(_, d)| d.clone())
            .chain(std::iter::once(self.v2.clone()))
        {
            if let Err(e) = rmdir_when_empty(&dir) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!("cgroup cleanup: {e}");
        }
    }
}

/// What a running sandbox uses now, read from its cgroups (`name` below our own).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Memory charged to it (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub memory_bytes: Option<u64>,
    /// CPU time so far, in microseconds (the v2 `cpu.stat`, which exists without a controller).
    pub cpu_us: Option<u64>,
    /// Its processes and threads now.
    pub tasks: Option<u64>,
}

/// [`Usage`] of the sandbox cgroup `name` (absent cgroups answer nothing).
pub fn usage(layout: &Layout, name: &str) -> Usage {
    match layout {
        Layout::Unified { own, .. } => {
            let dir = own.join(name);
            Usage {
                memory_bytes: read_u64(&dir.join("memory.current")),
                cpu_us: read_keyed(&dir.join("cpu.stat"), "usage_usec"),
                tasks: read_u64(&dir.join("pids.current")),
            }
        }
        Layout::Hybrid {
            own_unified, v1, ..
        } => {
            let v1_dir = |controller: &str| {
                v1.iter()
                    .find(|h| h.controller == controller)
                    .map(|h| h.own.join(name))
            };
            Usage {
                memory_bytes: v1_dir("memory")
                    .and_then(|d| read_u64(&d.join("memory.usage_in_bytes"))),
                cpu_us: read_keyed(&own_unified.join(name).join("cpu.stat"), "usage_usec"),
                tasks: v1_dir("pids").and_then(|d| read_u64(&d.join("pids.current"))),
            }
        }
    }
}

/// Removes the cgroups of sandboxes whose supervisor died without cleaning up (SIGKILL, a crash):
/// `stockade-<pid>[.<plugin>.<run>]` directories below our own cgroups whose process is gone or
/// is not a stockade supervisor (`stockade` or `stockade-daemon`). Their processes died with the supervisor (parent-death signal); anything left is
/// killed first. Returns how many sandboxes were swept.
pub fn sweep_orphans(layout: &Layout) -> usize {
    let own: Vec<PathBuf> = match layout {
        Layout::Unified { own, .. } => vec![own.clone()],
        Layout::Hybrid {
            own_unified, v1, ..
        } => std::iter::once(own_unified.clone())
            .chain(v1.iter().map(|h| h.own.clone()))
            .collect(),
    };
    let v2_own = own[0].clone();
    let mut swept = std::collections::BTreeSet::new();
    for dir in &own {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // `stockade-<pid>` (stockade run) or `stockade-<pid>.<plugin>.<run>` (the daemon).
            let Some(pid) = name
                .strip_prefix("stockade-")
                .map(|rest| rest.split('.').next().unwrap_or_default())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if matches!(comm.trim_end(), "stockade" | "stockade-daemon") {
                continue;
            }
            if swept.insert(name.clone()) {
                let _ = fs::write(v2_own.join(&name).join("cgroup.kill"), "1");
            }
            if let Err(e) = rmdir_when_empty(&entry.path()) {
                tracing::warn!(
                    "cannot remove the orphaned cgroup {}: {e}",
                    entry.path().display()
                );
            }
        }
    }
    if !swept.is_empty() {
        tracing::warn!(
            "removed the cgroups of {} sandbox(es) whose supervisor died",
            swept.len()
        );
    }
    swept.len()
}

/// Whether the service manager delegated `dir` (the xattr `trusted.delegate` or `user.delegate`
/// is "1": systemd's mark on the cgroup of a `Delegate=yes` unit or scope).
pub fn delegated(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    [c"trusted.delegate", c"user.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        // SAFETY: getxattr writes at most `value.len()` bytes into `value`, and reads the two
        // NUL-terminated strings, all alive for the call.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        n > 0 && &value[..n as usize] == b"1"
    })
}

/// On a unified host whose service manager delegated our cgroup to us: moves the cgroup's
/// processes (ours, and any other of the unit's) into its leaf `supervisor/` and enables the
/// memory, pids and cpu controllers in the delegated cgroup, so that sandboxes can be its
/// children. Returns the leaf; `None` when nothing was delegated (or on a hybrid host, whose
/// unified hierarchy has no controllers to enable): then nothing is touched. Idempotent: run in
/// the leaf already, it only checks the controllers.
pub fn enter_delegated_leaf(layout: &Layout) -> Result<Option<PathBuf>, CgroupError> {
    let Layout::Unified { own, .. } = layout else {
        return Ok(None);
    };
    if !delegated(own) {
        return Ok(None);
    }
    let leaf = own.join(SUPERVISOR_LEAF);
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(CgroupError::io("create", &leaf, e)),
    }
    let procs = own.join("cgroup.procs");
    // Processes can come (a unit's ExecStartPost) between the read and the write: a few rounds.
    for _ in 0..10 {
        let listed = fs::read_to_string(&procs).map_err(|e| CgroupError::io("read", &procs, e))?;
        if listed.trim().is_empty() {
            break;
        }
        let target = leaf.join("cgroup.procs");
        for pid in listed.split_whitespace() {
            match fs::write(&target, pid) {
                Ok(()) => {}
                // Gone meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(CgroupError::io("move a process into", &target, e)),
            }
        }
    }
    let available = fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
    if let Some(missing) = V2_CONTROLLERS
        .iter()
        .find(|c| !available.split_whitespace().any(|have| have == **c))
    {
        return Err(CgroupError::MissingController(missing));
    }
    enable_controllers(own)?;
    Ok(Some(leaf))
}

/// Enables the controllers we need for children of `own` (unified hosts). Fails with EBUSY when
/// `own` holds processes and is not the root (cgroup v2's no-internal-process rule).
fn enable_controllers(own: &Path) -> Result<(), CgroupError> {
    let path = own.join("cgroup.subtree_control");
    let current = fs::read_to_string(&path).map_err(|e| CgroupError::io("read", &path, e))?;
    let missing: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|c| !current.split_whitespace().any(|have| have == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    match fs::write(&path, missing.join(" ")) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            Err(CgroupError::NotDelegated(own.to_path_buf()))
        }
        other => other.map_err(|e| CgroupError::io("write", &path, e)),
    }
}

/// rmdir, retrying while the kernel finishes tearing down exited tasks (rmdir of a cgroup whose
/// last task is exiting returns EBUSY for a short while).
fn rmdir_when_empty(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(CgroupError::io("remove", dir, e)),
        }
    }
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    fs::create_dir(dir).map_err(|e| CgroupError::io("create", dir, e))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|e| CgroupError::io("write", path, e))
}

fn write_if_exists(path: &Path, value: &str) -> Result<(), CgroupError> {
    match fs::write(path, value) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other.map_err(|e| CgroupError::io("write", path, e)),
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Reads `key value` lines (cpu.stat, memory.events, memory.oom_control, pids.events).
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
35 24 0:30 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
37 24 0:32 / /sys/fs/cgroup/cpu rw,relatime shared:12 - cgroup cgroup rw,cpu
38 24 0:33 / /sys/fs/cgroup/cpuacct rw,relatime shared:13 - cgroup cgroup rw,cpuacct
40 24 0:35 / /sys/fs/cgroup/memory rw,relatime shared:15 - cgroup cgroup rw,memory
43 24 0:38 / /sys/fs/cgroup/pids rw,relatime shared:18 - cgroup cgroup rw,pids
";
    const HYBRID_OWN: &str = "\
8:pids:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn hybrid_layout_nests_below_own_cgroups() {
        let layout = Layout::from_tables(HYBRID_MOUNTS, HYBRID_OWN).unwrap();
        let Layout::Hybrid {
            unified,
            own_unified,
            v1,
        } = layout
        else {
            panic!("not hybrid")
        };
        assert_eq!(unified, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(own_unified, PathBuf::from("/sys/fs/cgroup/unified"));
        let memory = v1.iter().find(|h| h.controller == "memory").unwrap();
        assert_eq!(
            memory.own,
            PathBuf::from("/sys/fs/cgroup/memory/process_api/abc")
        );
        assert_eq!(v1.len(), 3);
    }

    #[test]
    fn unified_layout() {
        let mounts = "30 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let layout = Layout::from_tables(mounts, "0::/system.slice/stockade.service\n").unwrap();
        assert_eq!(
            layout,
            Layout::Unified {
                mount: PathBuf::from("/sys/fs/cgroup"),
                own: PathBuf::from("/sys/fs/cgroup/system.slice/stockade.service"),
            }
        );
    }

    #[test]
    fn missing_v1_controller_is_named() {
        let mounts = "35 24 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                      40 24 0:35 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let err = Layout::from_tables(mounts, "4:memory:/\n0::/\n").unwrap_err();
        assert!(
            matches!(err, CgroupError::MissingController("pids")),
            "{err}"
        );
    }
}
