//! Starts a sandbox: the shim in new namespaces, inside the sandbox's cgroup, with its launch spec.
//!
//! The protocol between the supervisor (parent) and the child:
//! 1. parent: `clone3` with new user, mount, pid, ipc, uts, cgroup (and network) namespaces,
//!    `CLONE_INTO_CGROUP` (the child's first instruction already runs in the sandbox's v2 cgroup)
//!    and `CLONE_PIDFD`;
//! 2. child: waits for [`ChildChannel::wait_for_mapping`], doing nothing else;
//! 3. child: on hybrid hosts, moves itself into the sandbox's v1 cgroups (see
//!    `SandboxCgroup::v1_task_files`); parent: writes the uid/gid maps, then
//!    [`ParentChannel::mapping_written`];
//! 4. child: becomes uid 0 of its user namespace (so that exec keeps its namespace capabilities)
//!    and executes the shim from a descriptor opened at start-up (no path lookup that could be
//!    raced);
//! 5. parent: sends the launch spec over a pipe and closes it; the shim reports back on another
//!    pipe, which closes on the plugin's exec.
//!
//! The child side between clone3 and exec runs in a copy of a possibly multi-threaded process, so
//! it only makes async-signal-safe system calls on memory prepared before the clone.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use stockade_policy::{
    LaunchSpec, NetworkSpec, ShimReport, HIGHEST_FIXED_FD, PLUGIN_RPC_FD, SHIM_REPORT_FD,
    SHIM_SPEC_FD,
};

use crate::cgroup::{CgroupError, SandboxCgroup};

/// The first host uid (and gid) of a sandbox's user namespace: uid N inside is host uid
/// `HOST_ID_BASE + N`, so the plugin (uid 1000 inside) is an unprivileged host uid that is neither
/// root nor the caller.
pub const HOST_ID_BASE: u32 = 0x6000_0000;
/// How many ids are mapped.
pub const HOST_ID_COUNT: u32 = 65536;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot find the shim {path}: {source}")]
    ShimMissing { path: PathBuf, source: io::Error },
    #[error("{action}: {source}")]
    Sys {
        action: &'static str,
        source: io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("the shim can run in-process only from a single-threaded supervisor")]
    NotSingleThreaded,
    #[error("an armed sandbox needs the shim binary (it waits on its spec pipe)")]
    ArmedInProcess,
    #[error("cannot encode the launch spec: {0}")]
    Encode(#[from] serde_json::Error),
}

fn sys(action: &'static str) -> impl FnOnce(io::Error) -> LaunchError {
    move |source| LaunchError::Sys { action, source }
}

/// The shim binary, opened once so that every launch executes the same file.
pub struct Shim {
    fd: OwnedFd,
    path: PathBuf,
}

impl Shim {
    /// Opens `stockade-shim` next to the running executable, or the path in `STOCKADE_SHIM`.
    pub fn locate() -> Result<Shim, LaunchError> {
        let path = match std::env::var_os("STOCKADE_SHIM") {
            Some(p) => PathBuf::from(p),
            None => {
                let exe = std::env::current_exe().map_err(|source| LaunchError::ShimMissing {
                    path: "stockade-shim".into(),
                    source,
                })?;
                exe.with_file_name("stockade-shim")
            }
        };
        Shim::open(&path)
    }

    pub fn open(path: &Path) -> Result<Shim, LaunchError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| LaunchError::ShimMissing {
                path: path.to_path_buf(),
                source,
            })?;
        // Kept above the fixed descriptors the child places before exec (spec, report, RPC).
        Ok(Shim {
            fd: above_stdio_and_shim_fds(file.into())?,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How the sandbox's first process becomes the shim.
pub enum ShimMode {
    /// Execute the `stockade-shim` binary, which reads the spec from a pipe. Required when the
    /// supervisor may have several threads at the clone (the daemon): the child of a
    /// multi-threaded process may only make async-signal-safe calls until it executes something.
    Exec(Shim),
    /// Run the shim's code in the cloned child itself, saving an exec (about 0.4 ms of a launch).
    /// Only for a single-threaded supervisor (`stockade run`); `start` checks.
    InProcess,
}

/// Whether this process has exactly one thread (from /proc/self/stat's num_threads).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which is parenthesised and may contain spaces.
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().nth(17)?.parse::<u32>().ok()
        })
        == Some(1)
}

/// A started sandbox: its init process (the shim, then the plugin) and the report channel.
pub struct Started {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The shim's report lines; end of file once the plugin was executed (or the shim exited).
    pub reports: File,
    /// `/proc/PID/ns/mnt`, opened before the sandbox's first process was released.
    pub mount_ns: Option<OwnedFd>,
    /// For an armed spec: the spec pipe's write end, on which the one [`ExecRequest`] goes
    /// (`stockade_policy::ExecRequest`, see [`send_exec`]); closing it retires the sandbox.
    pub exec: Option<File>,
}

/// Sends an armed sandbox its exec request: the arguments appended to its argv. An error means
/// the shim is gone (it failed, or the sandbox was stopped).
pub fn send_exec(channel: &mut File, args: Vec<String>) -> io::Result<()> {
    let bytes = serde_json::to_vec(&stockade_policy::ExecRequest { args })?;
    let mut framed = Vec::with_capacity(8 + bytes.len());
    framed.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    framed.extend_from_slice(&bytes);
    channel.write_all(&framed)
}

/// The sandbox's first process's descriptor table and identity, beyond the shim's own pipes:
///
/// | descriptor | what |
/// |---|---|
/// | 0, 1, 2 | `stdio`, or the supervisor's own when `None` (`stockade run`) |
/// | 3 (`SHIM_SPEC_FD`) | the launch spec, read and closed by the shim |
/// | 4 (`SHIM_REPORT_FD`) | the shim's reports, close-on-exec |
/// | 5 (`PLUGIN_RPC_FD`) | `rpc`, the plugin's JSON-RPC socket, when given |
///
/// The shim closes every other descriptor; the spec's `keep_fds` must list `PLUGIN_RPC_FD` for
/// the socket to reach the plugin. The descriptors are the child's: [`start`] takes them and
/// closes the supervisor's copies once the child has its own, so a plugin's end of its socket
/// or pipes is never held open by the supervisor (end of file means the plugin is gone).
pub struct ChildSetup {
    /// The plugin's stdin, stdout and stderr.
    pub stdio: Option<[OwnedFd; 3]>,
    pub rpc: Option<OwnedFd>,
    /// The host uid (and gid) that uid 0 of the sandbox maps to; `HOST_ID_COUNT` ids follow it.
    pub id_base: u32,
}

impl Default for ChildSetup {
    fn default() -> Self {
        ChildSetup {
            stdio: None,
            rpc: None,
            id_base: HOST_ID_BASE,
        }
    }
}

/// A pipe whose ends are moved above the descriptors the child will use (3 and 4), close-on-exec.
fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sys("create a pipe")(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((above_stdio_and_shim_fds(r)?, above_stdio_and_shim_fds(w)?))
}

fn above_stdio_and_shim_fds(fd: OwnedFd) -> Result<OwnedFd, LaunchError> {
    if fd.as_raw_fd() > HIGHEST_FIXED_FD {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor (or -1); `fd` stays valid for the call.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(sys("duplicate a pipe descriptor")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `new` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Starts the shim for `spec` in `cgroup`. On error nothing is left running.
pub fn start(
    mode: &ShimMode,
    spec: &LaunchSpec,
    cgroup: &SandboxCgroup,
    setup: &mut ChildSetup,
) -> Result<Started, LaunchError> {
    if matches!(mode, ShimMode::InProcess) && !single_threaded() {
        return Err(LaunchError::NotSingleThreaded);
    }
    if matches!(mode, ShimMode::InProcess) && spec.armed {
        return Err(LaunchError::ArmedInProcess);
    }
    let spec_bytes = serde_json::to_vec(spec)?;
    let (spec_r, spec_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let (sync_r, sync_w) = pipe()?;
    let cgroup_fd = cgroup.v2_dir_fd()?;
    // Copies above the fixed numbers, so that placing one never overwrites another's source.
    let stdio = match setup.stdio.take() {
        Some([i, o, e]) => Some([
            above_stdio_and_shim_fds(i)?,
            above_stdio_and_shim_fds(o)?,
            above_stdio_and_shim_fds(e)?,
        ]),
        None => None,
    };
    let rpc = setup.rpc.take().map(above_stdio_and_shim_fds).transpose()?;

    // Everything the child touches is prepared here, before the clone.
    let shim_name = CString::new("stockade-shim").expect("no NUL");
    let argv = [shim_name.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let empty = CString::new("").expect("no NUL");
    let memfd_noexec = CString::new(MEMFD_NOEXEC_SYSCTL).expect("no NUL");
    let task_files: Vec<CString> = cgroup
        .v1_task_files()
        .into_iter()
        .map(|p| CString::new(p.into_os_string().into_vec()).expect("no NUL in cgroup paths"))
        .collect();
    let task_file_ptrs: Vec<*const libc::c_char> = task_files.iter().map(|c| c.as_ptr()).collect();
    let mut attach_failed = serde_json::to_vec(&ShimReport::Failed {
        step: "cgroups".into(),
        message: "move into the sandbox's v1 cgroups".into(),
        errno: 0,
    })?;
    attach_failed.push(b'\n');
    let child = ChildChannel {
        memfd_noexec: memfd_noexec.as_ptr(),
        v1_task_files: &task_file_ptrs,
        attach_failed: &attach_failed,
        sync: sync_r.as_raw_fd(),
        spec: spec_r.as_raw_fd(),
        report: report_w.as_raw_fd(),
        shim: match mode {
            ShimMode::Exec(shim) => Some(shim.fd.as_raw_fd()),
            ShimMode::InProcess => None,
        },
        spec_in_memory: spec,
        stdio: stdio
            .as_ref()
            .map(|fds| fds.each_ref().map(|f| f.as_raw_fd())),
        rpc: rpc.as_ref().map(|f| f.as_raw_fd()),
    };

    let mut flags = (libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_PIDFD) as u64
        | CLONE_INTO_CGROUP;
    if spec.network == NetworkSpec::Isolated {
        flags |= libc::CLONE_NEWNET as u64;
    }
    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_fd.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM duplicates the process like fork. The child branch below
    // calls `ChildChannel::become_shim`, which makes async-signal-safe system calls on memory
    // prepared above and then either executes the shim or, only when this process was checked to
    // be single-threaded (so the copy holds no lock another thread owned), runs the shim's code in
    // place. It never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(sys("clone3 the sandbox's first process")(
            io::Error::last_os_error(),
        ));
    }
    if pid == 0 {
        // SAFETY: see above; this is the child and it only becomes the shim or exits.
        unsafe { child.become_shim(argv.as_ptr(), envp.as_ptr(), empty.as_ptr()) }
    }
    let pid = pid as i32;
    // SAFETY: clone3 stored a fresh pidfd for the child, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((spec_r, report_w, sync_r, stdio, rpc));

    let parent = ParentChannel {
        sync: File::from(sync_w),
        pid,
        pidfd: &pidfd,
        id_base: setup.id_base,
    };
    let mut mount_ns = None;
    let mut exec = None;
    let result = (|| {
        parent.write_id_maps()?;
        // The sandbox's mount namespace, held before its first process may run anything: the
        // monitors follow the plugin's own symlinks in it even after every process is gone.
        mount_ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
            .ok()
            .map(OwnedFd::from);
        parent.mapping_written()?;
        if matches!(mode, ShimMode::Exec(_)) {
            let mut control = File::from(spec_w);
            // A shim that died early closes its end: EPIPE here, and its report says why.
            let _ = control.write_all(&(spec_bytes.len() as u64).to_le_bytes());
            let _ = control.write_all(&spec_bytes);
            if spec.armed {
                exec = Some(control);
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        parent.kill_and_reap();
        return Err(e);
    }
    Ok(Started {
        pid,
        pidfd,
        reports: File::from(report_r),
        mount_ns,
        exec,
    })
}

/// `vm.memfd_noexec` applies to the writer's pid namespace (Linux 6.3+).
const MEMFD_NOEXEC_SYSCTL: &str = "/proc/sys/vm/memfd_noexec";

/// The child's side of the launch protocol.
struct ChildChannel<'a> {
    memfd_noexec: *const libc::c_char,
    v1_task_files: &'a [*const libc::c_char],
    /// The report line written if the move into the v1 cgroups fails.
    attach_failed: &'a [u8],
    sync: RawFd,
    spec: RawFd,
    report: RawFd,
    /// The shim binary to execute, or None to run the shim's code in place.
    shim: Option<RawFd>,
    spec_in_memory: &'a LaunchSpec,
    /// Placed on 0, 1 and 2 (all numbered above `HIGHEST_FIXED_FD`).
    stdio: Option<[RawFd; 3]>,
    /// Placed on `PLUGIN_RPC_FD`.
    rpc: Option<RawFd>,
}

impl ChildChannel<'_> {
    /// # Safety
    /// Must only be called in the child of clone3, with pointers that stay valid (they point into
    /// the parent's copied memory).
    unsafe fn become_shim(
        &self,
        argv: *const *const libc::c_char,
        envp: *const *const libc::c_char,
        empty: *const libc::c_char,
    ) -> ! {
        // SAFETY (whole block): async-signal-safe calls only, on valid descriptors and pointers.
        unsafe {
            self.enter_v1_cgroups();
            self.wait_for_mapping();
            self.forbid_executable_memfds();
            let empty_set: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_SETMASK, &empty_set, std::ptr::null_mut());
            // uid/gid 0 of the new namespace: without it exec would drop the namespace capabilities
            // the shim needs for its mounts. The raw system calls, not glibc's wrappers: those
            // change the ids of every thread glibc knows of, taking its thread-list lock and
            // waiting on the others — threads of the parent that do not exist here, and a lock
            // another parent thread may have held at the clone (a thread starting or ending):
            // the child would wait forever. The raw calls change this thread only, which is the
            // whole process here.
            if libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
                || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
            {
                libc::_exit(121);
            }
            // Die with the supervisor: a sandbox must not outlive whoever accounts for it. Armed
            // only now because the kernel clears it on every change of effective uid; the shim
            // arms it again after its last uid change and then checks the supervisor is alive.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::dup2(self.spec, SHIM_SPEC_FD) < 0
                || libc::dup2(self.report, SHIM_REPORT_FD) < 0
            {
                libc::_exit(122);
            }
            if let Some(fds) = self.stdio {
                for (target, fd) in fds.into_iter().enumerate() {
                    if libc::dup2(fd, target as RawFd) < 0 {
                        libc::_exit(122);
                    }
                }
            }
            if let Some(fd) = self.rpc {
                if libc::dup2(fd, PLUGIN_RPC_FD) < 0 {
                    libc::_exit(122);
                }
            }
            let Some(shim) = self.shim else {
                // Single-threaded supervisor: the same steps as the shim binary, without its exec.
                stockade_shim::become_plugin(self.spec_in_memory, None)
            };
            libc::syscall(
                libc::SYS_execveat,
                shim,
                empty,
                argv,
                envp,
                libc::AT_EMPTY_PATH,
            );
            libc::_exit(123)
        }
    }

    /// Sets `vm.memfd_noexec = 2` for the sandbox's pid namespace: memfd_create cannot make an
    /// executable memfd, so the plugin cannot run code it wrote into memory (Landlock does not
    /// cover memfds). Only this moment can do it: the sysctl file belongs to host root, and this
    /// is the last point where the child still has host root's uid while already being in the new
    /// pid namespace (the shim, as uid 0 of the user namespace, may not open it for writing).
    /// The shim reads the value back and reports it; a kernel without the sysctl is reported, not
    /// fatal here.
    unsafe fn forbid_executable_memfds(&self) {
        // SAFETY: open/write/close on a NUL-terminated path prepared before the clone.
        unsafe {
            let fd = libc::open(self.memfd_noexec, libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"2".as_ptr() as *const libc::c_void, 1);
                libc::close(fd);
            }
        }
    }

    /// Moves this (single-threaded) process into the sandbox's v1 cgroups on hybrid hosts, while it
    /// still has host root's credentials; see `SandboxCgroup::v1_task_files` for why the child
    /// does this itself. On failure it reports and exits: no sandbox runs outside its limits.
    unsafe fn enter_v1_cgroups(&self) {
        for &path in self.v1_task_files {
            // SAFETY: open/write/close on NUL-terminated paths prepared before the clone.
            let ok = unsafe {
                let fd = libc::open(path, libc::O_WRONLY | libc::O_CLOEXEC);
                let ok = fd >= 0 && libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1) == 1;
                if fd >= 0 {
                    libc::close(fd);
                }
                ok
            };
            if !ok {
                // SAFETY: writing a prepared buffer to the report pipe, then exiting.
                unsafe {
                    libc::write(
                        self.report,
                        self.attach_failed.as_ptr() as *const libc::c_void,
                        self.attach_failed.len(),
                    );
                    libc::_exit(124);
                }
            }
        }
    }

    /// Blocks until the parent wrote the id maps; exits if the parent went away instead.
    unsafe fn wait_for_mapping(&self) {
        let mut byte = 0u8;
        // SAFETY: reading one byte into a valid local.
        let n = unsafe { libc::read(self.sync, &mut byte as *mut u8 as *mut libc::c_void, 1) };
        if n != 1 {
            // SAFETY: _exit is always safe in the child.
            unsafe { libc::_exit(120) };
        }
    }
}

/// The parent's side of the launch protocol.
struct ParentChannel<'a> {
    sync: File,
    pid: i32,
    pidfd: &'a OwnedFd,
    id_base: u32,
}

impl ParentChannel<'_> {
    fn write_id_maps(&self) -> Result<(), LaunchError> {
        let map = format!("0 {} {HOST_ID_COUNT}\n", self.id_base);
        std::fs::write(format!("/proc/{}/uid_map", self.pid), &map)
            .map_err(sys("write the uid map"))?;
        std::fs::write(format!("/proc/{}/gid_map", self.pid), &map)
            .map_err(sys("write the gid map"))?;
        Ok(())
    }

    fn mapping_written(&self) -> Result<(), LaunchError> {
        (&self.sync)
            .write_all(&[1])
            .map_err(sys("release the sandbox's first process"))
    }

    fn kill_and_reap(&self) {
        // SAFETY: signalling and reaping our own child through its pidfd.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                0,
                0,
            );
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PIDFD,
                self.pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            );
        }
    }
}
