//! `stockade-shim`: the small program that becomes the plugin.
//!
//! The supervisor starts it with clone3 in new user, mount, pid, ipc, uts, cgroup (and usually
//! network) namespaces, inside the sandbox's cgroup, after writing its uid/gid maps. It reads the
//! launch spec from an inherited pipe, applies every isolation layer in the order below, and
//! executes the plugin. It makes no policy decision of its own: the spec says everything.
//!
//! The order is the point of this file:
//! 1. the root filesystem (needs every capability and the host tree to bind from);
//! 2. hostname, rlimits (raising a limit needs a capability) and a new session (no TIOCSTI into the
//!    caller's terminal, no signals from its job control);
//! 3. close inherited descriptors (before Landlock, so nothing opened earlier slips through);
//! 4. Landlock (on the paths of the new root);
//! 5. drop every capability and set no_new_privs;
//! 6. wait for the supervisor's go (the cgroups are complete), then seccomp, last, because every
//!    step above makes calls it denies;
//! 7. execve.

mod capabilities;
mod error;
mod inherited_fds;
mod landlock;
mod mounts;
mod report;
mod resource_limits;
mod seccomp;

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::{chdir, execve, sethostname, setsid};

use error::{Context, SetupError};
use report::Reporter;
use stockade_policy::{
    LaunchSpec, ShimReport, SHIM_EXEC_FAILED, SHIM_GO, SHIM_SETUP_FAILED, SHIM_SPEC_FD,
};

fn main() {
    // SAFETY: F_GETFD only queries whether the descriptor is open.
    if unsafe { libc::fcntl(SHIM_SPEC_FD, libc::F_GETFD) } < 0 {
        eprintln!("stockade-shim: no launch spec on fd {SHIM_SPEC_FD}");
        eprintln!(
            "hint: the shim is started by the supervisor; use `stockade run --policy FILE -- CMD`"
        );
        std::process::exit(2);
    }
    let mut reporter = Reporter::from_inherited();
    let mut control = control_pipe();
    let spec = match read_spec(&mut control) {
        Ok(spec) => spec,
        Err(e) => fail(&mut reporter, e),
    };
    let exec = match prepare_exec(&spec) {
        Ok(exec) => exec,
        Err(e) => fail(&mut reporter, e),
    };
    if let Err(e) = apply_layers(&spec, &mut control, &mut reporter) {
        fail(&mut reporter, e);
    }
    let errno = exec.run();
    reporter.send(&ShimReport::ExecFailed {
        path: spec.argv[0].clone(),
        errno: errno as i32,
    });
    std::process::exit(SHIM_EXEC_FAILED);
}

fn fail(reporter: &mut Reporter, e: SetupError) -> ! {
    reporter.send(&ShimReport::Failed {
        step: e.step.to_string(),
        message: e.what.clone(),
        errno: e.errno as i32,
    });
    std::process::exit(SHIM_SETUP_FAILED);
}

fn control_pipe() -> std::fs::File {
    // SAFETY: the supervisor passes the read end of the control pipe on this descriptor; it is
    // taken once, here.
    let fd = unsafe { OwnedFd::from_raw_fd(SHIM_SPEC_FD) };
    // Close-on-exec: the plugin never sees it.
    // SAFETY: setting a descriptor flag on a descriptor we own.
    unsafe { libc::fcntl(SHIM_SPEC_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    std::fs::File::from(fd)
}

fn read_spec(control: &mut std::fs::File) -> Result<LaunchSpec, SetupError> {
    let mut len = [0u8; 8];
    control
        .read_exact(&mut len)
        .during("spec", || "read the launch spec's length".into())?;
    let len = u64::from_le_bytes(len);
    if len > 16 << 20 {
        return Err(SetupError::new(
            "spec",
            format!("launch spec of {len} bytes"),
            Errno::E2BIG,
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    control
        .read_exact(&mut bytes)
        .during("spec", || "read the launch spec".into())?;
    serde_json::from_slice(&bytes).map_err(|e| {
        SetupError::new(
            "spec",
            format!("decode the launch spec: {e}"),
            Errno::EINVAL,
        )
    })
}

/// Blocks until the supervisor confirms that the sandbox's cgroups are complete.
fn wait_for_go(control: &mut std::fs::File) -> Result<(), SetupError> {
    let mut byte = [0u8; 1];
    match control.read_exact(&mut byte) {
        Ok(()) if byte[0] == SHIM_GO => Ok(()),
        Ok(()) => Err(SetupError::new(
            "cgroups",
            "unexpected byte from the supervisor",
            Errno::EPROTO,
        )),
        Err(_) => Err(SetupError::new(
            "cgroups",
            "the supervisor did not confirm the cgroups",
            Errno::EPIPE,
        )),
    }
}

fn apply_layers(
    spec: &LaunchSpec,
    control: &mut std::fs::File,
    reporter: &mut Reporter,
) -> Result<(), SetupError> {
    let root = mounts::build_root(spec)?;
    reporter.send(&ShimReport::MemfdNoexec {
        enforced: root.memfd_noexec,
    });

    sethostname(&spec.hostname).during("uts", || format!("set hostname {}", spec.hostname))?;
    resource_limits::apply(&spec.rlimits)?;
    setsid().during("session", || "start a new session".into())?;
    let mut keep = spec.keep_fds.clone();
    keep.push(SHIM_SPEC_FD);
    inherited_fds::close_all_except(&keep)?;

    let applied = landlock::apply(&spec.landlock, spec.enforce)?;
    reporter.send(&ShimReport::Landlock {
        abi: applied.abi,
        status: applied.status.into(),
    });

    capabilities::drop_all(spec.uid, spec.gid)?;
    chdir(&spec.cwd).during("cwd", || format!("chdir {}", spec.cwd.display()))?;
    wait_for_go(control)?;
    seccomp::install(&spec.seccomp)
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

fn prepare_exec(spec: &LaunchSpec) -> Result<Exec, SetupError> {
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
            .map(|a| cstr(a.as_bytes()))
            .collect::<Result<_, _>>()?,
        env: spec
            .env
            .iter()
            .map(|(k, v)| cstr(format!("{k}={v}").as_bytes()))
            .collect::<Result<_, _>>()?,
    })
}
