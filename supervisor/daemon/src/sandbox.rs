//! One run of a plugin's sandbox, on an OS thread of its own.
//!
//! The thread applies the launch plan (the same rules as `stockade run`: `stockade::plan`), then
//! runs `stockade::sandbox::run`, which blocks until the sandbox's last process is gone and
//! returns its summary with the monitors' report. The thread must live as long as the sandbox:
//! the sandbox's first process has a parent-death signal, and its parent is this thread. The
//! daemon talks to the running sandbox through [`Control`] (a queue and a pipe the sandbox's poll
//! loop watches): stop signals, kills and the `rpc` layer's violations.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use stockade::cgroup::Layout;
use stockade::launcher::{ChildSetup, Shim, ShimMode};
use stockade::monitor::Monitor;
use stockade::package::Package;
use stockade::plan::{self, PlanError};
use stockade::sandbox::{self, MonitorRef, Request, StopSource, Summary};
use stockade_policy::{EnforcementMode, LaunchContext, PLUGIN_RPC_FD};
use stockade_trust::keyring::Level;
use tokio::sync::oneshot;

/// How a sandbox run ended.
#[derive(Debug)]
pub enum Ended {
    /// It ran; the summary says how it ended.
    Ran(Box<Summary>),
    /// The launch plan refused it before anything was created.
    Refused(PlanError),
    /// It could not be started (cgroups, clone, monitors).
    Failed(String),
}

/// The daemon's handle on a running sandbox's supervision loop.
pub struct Control {
    queue: Mutex<Vec<Request>>,
    wake: OwnedFd,
}

impl Control {
    pub fn send(&self, request: Request) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(request);
        // SAFETY: writing one byte from a valid local to our own pipe. A full pipe (EAGAIN)
        // already wakes the reader, which takes the whole queue.
        unsafe { libc::write(self.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }
}

struct Source {
    control: Arc<Control>,
    wake: OwnedFd,
    started: Option<oneshot::Sender<(i32, u64)>>,
    armed: Option<oneshot::Sender<std::fs::File>>,
}

impl StopSource for Source {
    fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    fn take(&mut self) -> Vec<Request> {
        let mut buf = [0u8; 256];
        // SAFETY: reading into a valid local buffer from our own non-blocking pipe.
        while unsafe { libc::read(self.wake.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
            == buf.len() as isize
        {}
        std::mem::take(&mut *self.control.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn started(&mut self, pid: i32, cgroup_id: u64) {
        if let Some(tx) = self.started.take() {
            let _ = tx.send((pid, cgroup_id));
        }
    }

    fn armed(&mut self, exec: std::fs::File) {
        if let Some(tx) = self.armed.take() {
            let _ = tx.send(exec);
        }
    }
}

/// What one launch needs besides the package.
pub struct Launch {
    pub package: Arc<Package>,
    pub state_dir: PathBuf,
    pub id_base: u32,
    /// The sandbox's cgroup directory name.
    pub cgroup_name: String,
    /// Sees the monitors' violation and limit events as they happen.
    pub observer: Option<stockade::monitor::report::Observer>,
    /// The daemon's handle on the host's monitors, shared by every sandbox thread.
    pub monitor: Option<Arc<Mutex<Monitor>>>,
    /// A per-call plugin's sandbox: armed (it waits for its call's arguments before seccomp and
    /// exec), without a JSON-RPC socket.
    pub per_call: bool,
}

/// The daemon's ends of a sandbox's descriptors.
pub struct HostEnds {
    pub rpc: std::os::unix::net::UnixStream,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A started run: its control, when its first process ran, and how it ended.
pub struct Spawned {
    pub control: Arc<Control>,
    pub started: oneshot::Receiver<(i32, u64)>,
    /// A per-call sandbox's exec channel, once its shim runs (`launcher::send_exec`).
    pub armed: oneshot::Receiver<std::fs::File>,
    pub ended: oneshot::Receiver<Ended>,
    pub ends: HostEnds,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe whose read end is the daemon's (non-blocking) and whose write end the plugin gets
/// (blocking: a plugin writing faster than the daemon reads waits, it does not lose output).
fn output_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe()?;
    // SAFETY: F_SETFL on our own descriptor; clears O_NONBLOCK on the plugin's end.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, 0) };
    Ok((r, w))
}

/// Starts the sandbox thread.
pub fn spawn(launch: Launch) -> std::io::Result<Spawned> {
    let (wake_r, wake_w) = pipe()?;
    let control = Arc::new(Control {
        queue: Mutex::new(Vec::new()),
        wake: wake_w,
    });
    let (started_tx, started) = oneshot::channel();
    let (ended_tx, ended) = oneshot::channel();
    let (armed_tx, armed) = oneshot::channel();
    let (host_rpc, plugin_rpc) = std::os::unix::net::UnixStream::pair()?;
    let (out_r, out_w) = output_pipe()?;
    let (err_r, err_w) = output_pipe()?;
    let source = Source {
        control: control.clone(),
        wake: wake_r,
        started: Some(started_tx),
        armed: Some(armed_tx),
    };
    let name = format!("sandbox {}", launch.package.manifest.id);
    std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || {
            let ended = run(launch, source, plugin_rpc.into(), out_w, err_w);
            let _ = ended_tx.send(ended);
        })?;
    Ok(Spawned {
        control,
        started,
        armed,
        ended,
        ends: HostEnds {
            rpc: host_rpc,
            stdout: out_r,
            stderr: err_r,
        },
    })
}

fn run(
    mut launch: Launch,
    mut source: Source,
    rpc: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Ended {
    let package = &launch.package;
    let manifest = &package.manifest;
    let mut policy = package.policy.clone();
    // DESIGN.md's trust levels: untrusted code is enforced whatever its policy says; trusted
    // code runs in its policy's own mode (the stock trusted profile is monitor mode). The level
    // is the one the signature check gave (`package::load_with` applied it already).
    if package.trust == Level::Untrusted {
        policy.enforcement.mode = EnforcementMode::Enforce;
    }
    let refused = |e: PlanError| Ended::Refused(e);
    if let Err(e) = plan::forbid_memfd_without_sysctl(&mut policy) {
        return refused(e);
    }
    let state = launch.state_dir.to_string_lossy().into_owned();
    let mut vars = vec![
        ("STOCKADE_PLUGIN_ID".into(), manifest.id.clone()),
        ("STOCKADE_STATE_DIR".into(), state),
    ];
    if !launch.per_call {
        vars.push(("STOCKADE_RPC_FD".into(), PLUGIN_RPC_FD.to_string()));
    }
    let env = plan::plugin_env(&policy, &vars);
    let mut argv = manifest.entry.clone();
    argv[0] = package.entry.to_string_lossy().into_owned();
    let ctx = LaunchContext {
        argv,
        env,
        plugin_dir: Some(package.dir.clone()),
        state_dir: Some(launch.state_dir.clone()),
        hostname: manifest.id.chars().take(63).collect(),
        cwd: None,
    };
    let mut spec = match policy.compile(&ctx) {
        Ok(s) => s,
        Err(e) => return refused(plan::compile_error(&e)),
    };
    if launch.per_call {
        spec.armed = true;
    } else {
        spec.keep_fds = vec![PLUGIN_RPC_FD];
    }
    if let Err(e) = plan::own_state_dir(&launch.state_dir, launch.id_base) {
        return refused(e);
    }
    if package.sealed.is_some() {
        if let Err(e) = plan::open_sealed_copy(&package.dir, launch.id_base) {
            return refused(e);
        }
    }
    let shim = match Shim::locate() {
        Ok(s) => ShimMode::Exec(s),
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let layout = match Layout::detect() {
        Ok(l) => l,
        Err(e) => return Ended::Failed(format!("cgroups: {e}")),
    };
    let mut warnings = Vec::new();
    // The daemon's shared handle on the monitors, or (when they did not load at its start) a
    // load of this sandbox's own: an untrusted plugin fails closed without them either way.
    let mut own = None;
    let mut degraded = Vec::new();
    let judged = match &launch.monitor {
        Some(shared) => {
            let monitor = shared.lock().unwrap_or_else(|e| e.into_inner());
            match plan::check_monitor(&monitor, &policy, &mut warnings) {
                Ok(d) => degraded = d,
                Err(e) => return refused(e),
            }
            Some(plan::unix_judged(&monitor))
        }
        None => match plan::load_monitor(&policy, &mut warnings) {
            Ok(loaded) => {
                own = loaded;
                own.as_ref().map(|l| {
                    degraded = l.degraded.clone();
                    plan::unix_judged(&l.monitor)
                })
            }
            Err(e) => return refused(e),
        },
    };
    if let Err(e) = plan::ipc_launch_check(&spec, judged, &mut degraded, &mut warnings) {
        return refused(e);
    }
    for w in &warnings {
        tracing::warn!(plugin = %manifest.id, "{}: {w}", manifest.id);
    }
    let observer = launch.observer.take();
    let monitor = match (&launch.monitor, own.as_mut()) {
        (Some(shared), _) => Some(MonitorRef::Shared(shared)),
        (None, Some(l)) => Some(MonitorRef::Own(&mut l.monitor)),
        (None, None) => None,
    };
    let monitoring = monitor.map(|m| {
        let mut m = plan::monitoring(&policy, &spec, true, m, degraded, None);
        m.observer = observer;
        m
    });
    let devnull = match std::fs::File::open("/dev/null") {
        Ok(f) => OwnedFd::from(f),
        Err(e) => return Ended::Failed(format!("/dev/null: {e}")),
    };
    let mut setup = ChildSetup {
        stdio: Some([devnull, stdout, stderr]),
        rpc: (!launch.per_call).then_some(rpc),
        id_base: launch.id_base,
    };
    let result = sandbox::run(
        &shim,
        &layout,
        &launch.cgroup_name,
        &spec,
        &mut setup,
        &mut source,
        monitoring,
    );
    match result {
        Ok(summary) => Ended::Ran(Box::new(summary)),
        Err(e) => Ended::Failed(e.to_string()),
    }
}
