//! `stockade-shim`: what becomes the plugin.
//!
//! It runs in the sandbox's first process, which the supervisor started with clone3 in new user,
//! mount, pid, ipc, uts, cgroup (and usually network) namespaces, inside the sandbox's cgroups,
//! after writing its uid/gid maps. [`become_plugin`] applies every isolation layer in the order
//! below and executes the plugin; it makes no policy decision of its own: the spec says everything.
//! Two ways in: the `stockade-shim` binary, executed by a supervisor that may not fork-and-continue
//! (a multi-threaded daemon), reads the spec from an inherited pipe; a single-threaded supervisor
//! (`stockade run`) calls [`become_plugin`] directly in the cloned child and saves an exec.
//!
//! The order is the point of this file:
//! 1. the root filesystem (needs every capability and the host tree to bind from);
//! 2. hostname, rlimits (raising a limit needs a capability) and a new session (no TIOCSTI into the
//!    caller's terminal, no signals from its job control);
//! 3. close inherited descriptors (before Landlock, so nothing opened earlier slips through);
//! 4. Landlock (on the paths of the new root);
//! 5. drop every capability and set no_new_privs; arm the parent-death signal (every uid change
//!    clears it) and check the supervisor is still there; default signal dispositions;
//! 6. an armed sandbox (`LaunchSpec::armed`, the daemon's per-call plugins) waits here on its spec
//!    pipe for the rest of its argv, with every layer but seccomp in place;
//! 7. seccomp, last, because every step above makes calls it denies;
//! 8. execve.

mod capabilities;
pub mod error;
mod inherited_fds;
mod landlock;
mod mounts;
pub mod report;
mod resource_limits;
mod seccomp;

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::{chdir, execve, sethostname, setsid};

use error::{Context, SetupError};
pub use landlock::kernel_abi as landlock_abi;
pub use mounts::DEVICES;
pub use report::Reporter;
use stockade_policy::{
    ExecRequest, LaunchSpec, ShimReport, MAX_ARG_BYTES, SHIM_EXEC_FAILED, SHIM_SETUP_FAILED,
    SHIM_SPEC_FD,
};

/// Applies every layer of `spec` to this process and executes the plugin. Reports a failure on
/// the report channel (descriptor `SHIM_REPORT_FD`) and exits; never returns.
///
/// The process must be single-threaded, in the sandbox's namespaces and cgroups, with uid 0 of
/// its user namespace and that namespace's full capabilities. `channel`: the spec pipe, still
/// open on `SHIM_SPEC_FD`, for an armed spec (which waits on it for its [`ExecRequest`]).
pub fn become_plugin(spec: &LaunchSpec, channel: Option<File>) -> ! {
    let mut reporter = Reporter::from_inherited();
    let mut exec = match prepare_exec(spec, &[]) {
        Ok(exec) => exec,
        Err(e) => fail(&mut reporter, e),
    };
    if let Err(e) = apply_layers(spec, &mut reporter) {
        fail(&mut reporter, e);
    }
    if spec.armed {
        let Some(channel) = channel else {
            fail(
                &mut reporter,
                SetupError::new("exec", "an armed spec without its channel", Errno::EBADF),
            );
        };
        reporter.send(&ShimReport::Armed);
        match wait_for_exec(channel) {
            // Retired before any call came: nothing was executed.
            Ok(None) => exit(0),
            Ok(Some(args)) => match prepare_exec(spec, &args) {
                Ok(e) => exec = e,
                Err(e) => fail(&mut reporter, e),
            },
            Err(e) => fail(&mut reporter, e),
        }
    }
    if let Err(e) = seccomp::install(&spec.seccomp) {
        fail(&mut reporter, e);
    }
    let errno = exec.run();
    reporter.send(&ShimReport::ExecFailed {
        path: spec.argv[0].clone(),
        errno: errno as i32,
    });
    exit(SHIM_EXEC_FAILED)
}

/// `_exit`: in the in-process path this is a copy of the supervisor, whose buffers and exit
/// handlers must not run twice.
fn exit(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

pub fn fail(reporter: &mut Reporter, e: SetupError) -> ! {
    reporter.send(&ShimReport::Failed {
        step: e.step.to_string(),
        message: e.what.clone(),
        errno: e.errno as i32,
    });
    exit(SHIM_SETUP_FAILED)
}

fn apply_layers(spec: &LaunchSpec, reporter: &mut Reporter) -> Result<(), SetupError> {
    let root = mounts::build_root(spec)?;
    reporter.send(&ShimReport::MemfdNoexec {
        enforced: root.memfd_noexec,
    });

    sethostname(&spec.hostname).during("uts", || format!("set hostname {}", spec.hostname))?;
    resource_limits::apply(&spec.rlimits)?;
    setsid().during("session", || "start a new session".into())?;
    // An armed shim still reads its exec request from the spec pipe (closed after that).
    let mut keep = spec.keep_fds.clone();
    if spec.armed {
        keep.push(SHIM_SPEC_FD);
    }
    inherited_fds::close_all_except(&keep)?;

    let host_network = spec.network == stockade_policy::NetworkSpec::Host;
    let applied = landlock::apply(&spec.landlock, spec.enforce, host_network)?;
    reporter.send(&ShimReport::Landlock {
        abi: applied.abi,
        status: applied.status.into(),
    });

    capabilities::drop_all(spec.uid, spec.gid)?;
    die_with_supervisor(reporter)?;
    chdir(&spec.cwd).during("cwd", || format!("chdir {}", spec.cwd.display()))?;
    default_signal_dispositions();
    Ok(())
}

/// An armed sandbox's wait: the arguments of its one exec, or None when the pipe ends first (the
/// daemon retired it). The pipe is closed here, so the plugin never holds it.
fn wait_for_exec(mut channel: File) -> Result<Option<Vec<String>>, SetupError> {
    let mut len = [0u8; 8];
    match channel.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e).during("exec", || "read the call's arguments".into()),
    }
    let len = u64::from_le_bytes(len);
    // Every argument is at most MAX_ARG_BYTES, and the argv as a whole is bounded by the stack
    // limit: 16 MiB is far past anything execve would take.
    if len > 16 << 20 {
        return Err(SetupError::new(
            "exec",
            format!("arguments of {len} bytes"),
            Errno::E2BIG,
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    channel
        .read_exact(&mut bytes)
        .during("exec", || "read the call's arguments".into())?;
    let request: ExecRequest = serde_json::from_slice(&bytes).map_err(|e| {
        SetupError::new(
            "exec",
            format!("decode the call's arguments: {e}"),
            Errno::EINVAL,
        )
    })?;
    if request.args.iter().any(|a| a.len() > MAX_ARG_BYTES) {
        return Err(SetupError::new(
            "exec",
            format!("an argument longer than {MAX_ARG_BYTES} bytes"),
            Errno::E2BIG,
        ));
    }
    Ok(Some(request.args))
}

/// Arms SIGKILL on the supervisor's death, after the last uid change (each one clears it; a plain
/// exec keeps it), then checks that the supervisor did not die before it was armed.
fn die_with_supervisor(reporter: &Reporter) -> Result<(), SetupError> {
    // SAFETY: PR_SET_PDEATHSIG takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(SetupError::new(
            "lifetime",
            "arm the parent-death signal",
            Errno::last(),
        ));
    }
    if !reporter.supervisor_alive() {
        return Err(SetupError::new(
            "lifetime",
            "the supervisor is gone",
            Errno::ESRCH,
        ));
    }
    Ok(())
}

/// Every signal back to its default action. Ignored signals survive exec, and this process is a
/// Rust program (or a copy of one) that ignores SIGPIPE, started by callers that may ignore others:
/// a plugin must not inherit that. The raw system call, because libc's wrappers refuse the two
/// real-time signals that glibc reserves for itself (32 and 33), which a caller may still have
/// left ignored.
fn default_signal_dispositions() {
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads a properly laid-out kernel sigaction; SIG_DFL installs no code.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
    }
}

/// Everything execve needs, built before the layers go up so that no allocation or lookup
/// happens between seccomp and exec.
struct Exec {
    candidates: Vec<CString>,
    argv: Vec<CString>,
    env: Vec<CString>,
}

impl Exec {
    /// Tries each candidate path in turn (PATH search); returns the most telling errno.
    fn run(&self) -> Errno {
        let mut last = Errno::ENOENT;
        for path in &self.candidates {
            let Err(e) = execve(path, &self.argv, &self.env);
            // Like execvp: keep looking past missing files, remember a permission problem.
            if e != Errno::ENOENT && e != Errno::ENOTDIR {
                last = e;
            }
            if e != Errno::ENOENT && e != Errno::ENOTDIR && e != Errno::EACCES {
                return e;
            }
        }
        last
    }
}

/// The exec of `spec`'s argv followed by `more`.
fn prepare_exec(spec: &LaunchSpec, more: &[String]) -> Result<Exec, SetupError> {
    let cstr = |s: &[u8]| {
        CString::new(s).map_err(|_| SetupError::new("exec", "argument contains NUL", Errno::EINVAL))
    };
    let program = spec
        .argv
        .first()
        .ok_or_else(|| SetupError::new("exec", "empty command", Errno::EINVAL))?;
    let candidates = if program.contains('/') {
        vec![cstr(program.as_bytes())?]
    } else {
        let path = spec
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or("/usr/bin:/bin");
        path.split(':')
            .filter(|dir| !dir.is_empty())
            .map(|dir| cstr(Path::new(dir).join(program).as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?
    };
    Ok(Exec {
        candidates,
        argv: spec
            .argv
            .iter()
            .chain(more)
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<_, _>>()?,
        env: spec
            .env
            .iter()
            .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
            .collect::<Result<_, _>>()?,
    })
}
