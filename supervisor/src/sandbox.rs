//! One sandbox from start to end: cgroup, launch, supervision until the last process is gone,
//! the summary, and cleanup on every path. `stockade run` and (later) the daemon share it.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use serde::Serialize;
use stockade_policy::{LaunchSpec, ShimReport};

use crate::cgroup::{CgroupStats, Layout, SandboxCgroup};
use crate::launcher::{self, ChildSetup, LaunchError, ShimMode, Started};
use crate::monitor::attribute::{Attributor, Event, EventType, Layer};
use crate::monitor::event::Object;
use crate::monitor::report::{Report, Threshold, Tracker};
use crate::monitor::{ArmSpec, Armed, Monitor, MonitorError};

/// Why a sandbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The plugin exited on its own.
    Exited,
    /// The plugin was killed by a signal it did not get from us.
    Signaled,
    /// The kernel's OOM killer ended it at the memory limit.
    OomKill,
    /// seccomp killed it for a denied call (policy `deny_action = "kill"` or a foreign architecture).
    SeccompKill,
    /// The policy's wall-clock timeout ran out; every process was killed.
    Timeout,
    /// The supervisor was asked to stop (SIGINT, SIGTERM); every process was killed.
    Interrupted,
    /// A set-up step of the shim failed; nothing of the plugin ran.
    SetupFailed,
    /// The command could not be executed inside the sandbox.
    ExecFailed,
    /// Its violations crossed the policy's threshold; every process was killed.
    AutoUnloaded,
}

/// What `stockade run` prints at the end (and writes as JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub command: Vec<String>,
    pub ended_by: EndReason,
    /// The plugin's exit status when it exited.
    pub exit_status: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// What stockade itself exits with.
    pub exit_code: i32,
    pub duration_ms: f64,
    #[serde(flatten)]
    pub resources: CgroupStats,
    pub cgroup_id: u64,
    pub landlock_abi: Option<i32>,
    pub landlock_status: Option<String>,
    pub memfd_noexec: Option<bool>,
    /// The shim's error for `setup_failed` and `exec_failed`.
    pub error: Option<String>,
    /// errno of that error.
    pub errno: Option<i32>,
    /// The eBPF monitors' report: violations, process tree, syscall counts.
    pub monitor: Option<Report>,
}

/// A supervisor's handle on the host's monitors: its own (`stockade run`), or one shared by the
/// sandbox threads of a multi-threaded supervisor (the daemon), locked for each short operation
/// (arm, a counter read, disarm), never while the sandbox runs.
pub enum MonitorRef<'a> {
    Own(&'a mut Monitor),
    Shared(&'a std::sync::Mutex<Monitor>),
}

impl MonitorRef<'_> {
    pub fn with<R>(&mut self, f: impl FnOnce(&mut Monitor) -> R) -> R {
        match self {
            MonitorRef::Own(m) => f(m),
            MonitorRef::Shared(m) => f(&mut m.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }
}

/// The eBPF monitors a sandbox runs under (see [`crate::monitor`]).
pub struct Monitoring<'a> {
    pub monitor: MonitorRef<'a>,
    pub arm: ArmSpec,
    pub threshold: Threshold,
    /// Every event as a JSON line (`--events FILE`).
    pub events_out: Option<Box<dyn std::io::Write>>,
    /// Monitors the policy would have used that are not active on this kernel (monitor mode).
    pub degraded: Vec<String>,
    /// Sees each violation and limit event as it happens (the daemon's event stream).
    pub observer: Option<crate::monitor::report::Observer>,
}

/// Events read between two looks at the sandbox's exit, the stop signal and the deadline: a
/// plugin flooding the ring buffer delays those by one batch at most (a few milliseconds).
const DRAIN_BATCH: usize = 4096;

/// The monitors while one sandbox runs.
struct Watch<'a> {
    monitor: MonitorRef<'a>,
    armed: Option<Armed>,
    attributor: Attributor,
    tracker: Tracker,
    /// CLOCK_MONOTONIC at the start: the events' time line.
    start_ns: u64,
    /// Lost denials (`Counters::denials_dropped`) already counted.
    lost_seen: u64,
    /// OOM kills already reported, and when the counter was last read.
    oom_seen: u64,
    oom_read: Option<Instant>,
}

impl Watch<'_> {
    /// Reads waiting events, at most `DRAIN_BATCH`; returns true at once when one crossed the
    /// threshold (the rest wait until after the kill).
    fn drain(&mut self) -> bool {
        let mut crossed = false;
        let (attributor, tracker) = (&mut self.attributor, &mut self.tracker);
        let Some(armed) = self.armed.as_mut() else {
            return false;
        };
        armed.drain_some(DRAIN_BATCH, |raw| {
            if let Some(ev) = attributor.attribute(&raw) {
                crossed |= tracker.record(ev);
            }
            if crossed {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        });
        crossed || self.count_lost()
    }

    /// An OOM kill is a limit reached, like the others, but no syscall answers it: the kernel
    /// kills a process. The counter is read after the events (the victim's exit wakes this
    /// loop), at most every 5 ms, and once more at the end.
    fn check_oom(&mut self, cgroup: &SandboxCgroup, force: bool) {
        if !force
            && self
                .oom_read
                .is_some_and(|t| t.elapsed() < Duration::from_millis(5))
        {
            return;
        }
        self.oom_read = Some(Instant::now());
        let kills = cgroup.oom_kills();
        let t_ms = monotonic_ns().saturating_sub(self.start_ns) as f64 / 1e6;
        for _ in self.oom_seen..kills {
            self.tracker.record(Event {
                t_ms,
                kind: EventType::Limit,
                pid: 0,
                tid: 0,
                layer: Some(Layer::Resources),
                action: Some("memory"),
                syscall: None,
                object: Some(Object::from(
                    "OOM kill (the sandbox's memory limit)".to_string(),
                )),
                errno: None,
                fd: None,
                killed_in_kernel: false,
            });
        }
        self.oom_seen = self.oom_seen.max(kills);
    }

    /// Denials whose events were dropped count as violations (see `Tracker::record_lost`).
    /// Drops happen only while events wait, so this runs after each read of the ring buffer.
    fn count_lost(&mut self) -> bool {
        let Some(armed) = self.armed.as_ref() else {
            return false;
        };
        let lost = self.monitor.with(|m| m.counters(armed)).denials_dropped;
        let new = lost.saturating_sub(self.lost_seen);
        self.lost_seen = lost;
        let t_ms = monotonic_ns().saturating_sub(self.start_ns) as f64 / 1e6;
        self.tracker.record_lost(new, t_ms)
    }

    /// Reads everything left (the sandbox is gone: the ring buffer no longer fills).
    fn drain_all(&mut self) {
        let (attributor, tracker) = (&mut self.attributor, &mut self.tracker);
        let Some(armed) = self.armed.as_mut() else {
            return;
        };
        armed.drain(|raw| {
            if let Some(ev) = attributor.attribute(&raw) {
                tracker.record(ev);
            }
        });
    }

    fn finish(mut self) -> Report {
        self.drain_all();
        self.count_lost();
        let armed = self.armed.take().expect("armed until finish");
        if tracing::enabled!(tracing::Level::DEBUG) {
            let misses = self.monitor.with(|m| m.sys_exit_misses());
            tracing::debug!(?misses, "sys_exit runs the kernel skipped");
        }
        let (counters, counts) = self.monitor.with(|m| {
            let counters = m.counters(&armed);
            let counts = m.syscall_counts(&armed);
            m.disarm(armed);
            (counters, counts)
        });
        self.tracker.finish(counters, counts)
    }
}

/// Waits, looking every `step`, until no process is left in the cgroup or `limit` has passed.
fn wait_empty(cgroup: &SandboxCgroup, limit: Duration, step: Duration) {
    let until = Instant::now() + limit;
    while cgroup.is_populated() && Instant::now() < until {
        std::thread::sleep(step);
    }
}

fn monotonic_ns() -> u64 {
    // SAFETY: a zeroed timespec is a valid value of the plain C struct.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime fills the timespec it is given, which lives for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What the owner of a running sandbox may ask of its supervision.
#[derive(Debug)]
pub enum Request {
    /// Kill every process of the sandbox; the number is the signal that asked for it (the
    /// summary's exit code is 128 + it).
    Kill(i32),
    /// Send this signal to the sandbox's first process (a polite stop before a kill).
    Signal(i32),
    /// A violation seen outside the kernel (the daemon's `rpc` layer): counted toward the
    /// policy's threshold like the monitors' own. Its `t_ms` is set on arrival.
    Violation(Event),
}

/// Requests to a running sandbox from outside: a signal to `stockade run`, the daemon's stop,
/// unload and protocol-violation messages.
pub trait StopSource {
    /// A descriptor that becomes readable when a request waits.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Consumes the waiting requests.
    fn take(&mut self) -> Vec<Request>;
    /// The sandbox's first process runs (before the shim's set-up): its pid in this process's
    /// namespace and the sandbox's cgroup id.
    fn started(&mut self, _pid: i32, _cgroup_id: u64) {}
    /// An armed sandbox's exec channel (`launcher::send_exec`), given once the shim reports every
    /// layer but seccomp in place. Dropping it retires the sandbox.
    fn armed(&mut self, _exec: std::fs::File) {}
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("waiting for the sandbox: {0}")]
    Wait(std::io::Error),
    #[error("arming the eBPF monitors: {0}")]
    Monitor(#[from] MonitorError),
}

/// Runs `spec` to completion.
pub fn run(
    shim: &ShimMode,
    layout: &Layout,
    name: &str,
    spec: &LaunchSpec,
    setup: &mut ChildSetup,
    stop: &mut dyn StopSource,
    monitoring: Option<Monitoring<'_>>,
) -> Result<Summary, SandboxError> {
    let begin = Instant::now();
    let phase =
        |what: &str| tracing::debug!(elapsed_us = begin.elapsed().as_micros() as u64, "{what}");
    let cgroup = SandboxCgroup::create(layout, name, &spec.resources)?;
    let cgroup_id = cgroup.id()?;
    phase("cgroups created");
    // The monitors are armed before anything runs in the cgroup.
    let start_ns = monotonic_ns();
    let mut watch = match monitoring {
        None => None,
        Some(mut m) => {
            let armed = match m
                .monitor
                .with(|monitor| monitor.arm(cgroup.v2_path(), cgroup_id, &m.arm))
            {
                Ok(a) => a,
                Err(e) => {
                    let _ = cgroup.destroy();
                    return Err(e.into());
                }
            };
            let mut tracker = Tracker::new(m.threshold, m.events_out);
            if let Some(observer) = m.observer {
                tracker.observe(observer);
            }
            tracker.note_tracepoint(armed.traced());
            for d in m.degraded {
                tracker.note_degraded(d);
            }
            let mut attributor = Attributor::new(spec, start_ns);
            attributor.set_unix_hook(armed.unix_hooked());
            if let Some(pids) = m.monitor.with(|monitor| monitor.pid_view(&armed)) {
                attributor.set_pid_view(pids);
            }
            Some(Watch {
                monitor: m.monitor,
                armed: Some(armed),
                attributor,
                tracker,
                start_ns,
                lost_seen: 0,
                oom_seen: 0,
                oom_read: None,
            })
        }
    };
    phase("monitors armed");
    let mut started = match launcher::start(shim, spec, &cgroup, setup) {
        Ok(s) => s,
        Err(e) => {
            if let Some(w) = watch {
                w.finish();
            }
            return Err(e.into());
        }
    };
    phase("shim started, cgroups complete");
    let exec = started.exec.take();
    stop.started(started.pid, cgroup_id);
    if let Some(w) = watch.as_mut() {
        w.attributor.set_main_pid(started.pid as u32);
        if let Some(ns) = started.mount_ns.as_ref().and_then(|ns| ns.try_clone().ok()) {
            w.attributor.set_mount_ns(ns);
        }
    }
    // An armed sandbox may wait long for its call: its time starts at the plugin's exec.
    let timeout = spec.resources.timeout_ms.map(Duration::from_millis);
    let (deadline, timeout_after_exec) = match spec.armed {
        false => (timeout.map(|t| begin + t), None),
        true => (None, timeout),
    };
    // When the plugin (PID 1 of the sandbox's pid namespace) is gone, the kernel has killed every
    // other process of the sandbox; `destroy` kills anything left anyway before removing the
    // cgroups, also when supervision failed.
    let outcome = supervise(
        &started,
        (exec, timeout_after_exec),
        &cgroup,
        deadline,
        stop,
        watch.as_mut(),
    );
    if let Some(w) = watch.as_mut() {
        if w.tracker.auto_unloaded() {
            // The enforcement latency ends when the last process is gone, not only the first.
            wait_empty(&cgroup, Duration::from_secs(1), Duration::from_micros(50));
            let t_ms = monotonic_ns().saturating_sub(w.start_ns) as f64 / 1e6;
            w.tracker.all_dead_at(t_ms);
        }
    }
    let duration = begin.elapsed();
    phase("sandbox ended");
    if watch.is_some() && cgroup.is_populated() {
        // Nothing of the sandbox may outlive its monitors (the network programs detach with
        // them): kill what is left (when supervision failed, say) and wait until it is gone.
        let _ = cgroup.kill();
        wait_empty(&cgroup, Duration::from_secs(5), Duration::from_millis(1));
    }
    if let Some(w) = watch.as_mut() {
        w.check_oom(&cgroup, true);
    }
    let report = watch.map(Watch::finish);
    phase("monitors disarmed");
    let outcome = outcome?;
    let resources = cgroup.stats();
    cgroup.destroy()?;
    phase("cgroups removed");
    let mut summary = outcome.into_summary(spec, cgroup_id, duration, resources);
    if let Some(r) = &report {
        if r.auto_unload.is_some() && summary.ended_by != EndReason::Interrupted {
            summary.ended_by = EndReason::AutoUnloaded;
            // Auto-unloaded is exit status 137 even when the plugin's last process had exited
            // on its own before the kill landed (the violation's event was read after it): a
            // plugin that crossed its threshold never reports success.
            summary.exit_code = 128 + libc::SIGKILL;
        }
    }
    summary.monitor = report;
    Ok(summary)
}

struct Outcome {
    status: ExitStatus,
    stopped_by: Option<Stop>,
    reports: Vec<ShimReport>,
}

#[derive(Clone, Copy)]
enum ExitStatus {
    Code(i32),
    Signal(i32),
}

#[derive(Clone, Copy)]
enum Stop {
    Timeout,
    Signal(i32),
    AutoUnload,
}

/// `armed`: an armed sandbox's exec channel, handed to `stop` once the shim reports it is armed,
/// and its timeout, which starts when the plugin is executed.
fn supervise(
    started: &Started,
    armed: (Option<std::fs::File>, Option<Duration>),
    cgroup: &SandboxCgroup,
    mut deadline: Option<Instant>,
    stop: &mut dyn StopSource,
    mut watch: Option<&mut Watch<'_>>,
) -> Result<Outcome, SandboxError> {
    let (mut exec, mut timeout_after_exec) = armed;
    let mut reports = Vec::new();
    let mut report_reader = Some(BufReader::new(&started.reports));
    let mut stopped_by = None;
    loop {
        let timeout_ms = match (deadline, stopped_by) {
            (Some(d), None) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
            _ => -1,
        };
        let report_fd = report_reader
            .as_ref()
            .map_or(-1, |r| r.get_ref().as_raw_fd());
        let mut fds = [
            libc::pollfd {
                fd: started.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: report_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: watch
                    .as_ref()
                    .and_then(|w| w.armed.as_ref())
                    .map_or(-1, |a| a.raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SandboxError::Wait(e));
        }
        // Checked by the clock, not only by poll's timeout: with events always waiting, poll
        // never times out.
        if stopped_by.is_none() && deadline.is_some_and(|d| Instant::now() >= d) {
            stopped_by = Some(Stop::Timeout);
            let _ = cgroup.kill();
            continue;
        }
        if fds[2].revents != 0 {
            // Every whole line read, not one per wake-up: the reader may hold several (the shim
            // writes each line at once, below PIPE_BUF), and poll does not see what it buffered.
            while let Some(reader) = report_reader.as_mut() {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        tracing::debug!("report channel closed: the plugin was executed");
                        report_reader = None;
                        if let Some(t) = timeout_after_exec.take() {
                            deadline = Some(Instant::now() + t);
                        }
                    }
                    Ok(_) => match serde_json::from_str::<ShimReport>(&line) {
                        Ok(ShimReport::Armed) => {
                            if let Some(exec) = exec.take() {
                                stop.armed(exec);
                            }
                        }
                        Ok(r) => reports.push(r),
                        Err(_) => {}
                    },
                }
                if !report_reader
                    .as_ref()
                    .is_some_and(|r| r.buffer().contains(&b'\n'))
                {
                    break;
                }
            }
        }
        if fds[3].revents != 0 {
            if let Some(w) = watch.as_mut() {
                if w.drain() && stopped_by.is_none() {
                    stopped_by = Some(Stop::AutoUnload);
                    let _ = cgroup.kill();
                }
                w.check_oom(cgroup, false);
            }
        }
        if fds[1].revents != 0 {
            for request in stop.take() {
                match request {
                    Request::Kill(signal) => {
                        if stopped_by.is_none() {
                            stopped_by = Some(Stop::Signal(signal));
                            let _ = cgroup.kill();
                        }
                    }
                    Request::Signal(signal) => send_signal(started, signal),
                    Request::Violation(mut event) => {
                        let Some(w) = watch.as_mut() else { continue };
                        event.t_ms = monotonic_ns().saturating_sub(w.start_ns) as f64 / 1e6;
                        if w.tracker.record(event) && stopped_by.is_none() {
                            stopped_by = Some(Stop::AutoUnload);
                            let _ = cgroup.kill();
                        }
                    }
                }
            }
        }
        if fds[0].revents != 0 {
            // Drain reports the shim wrote before exiting.
            if let Some(mut reader) = report_reader.take() {
                let mut rest = String::new();
                let _ = reader.read_to_string(&mut rest);
                reports.extend(rest.lines().filter_map(|l| serde_json::from_str(l).ok()));
            }
            let status = reap(started)?;
            return Ok(Outcome {
                status,
                stopped_by,
                reports,
            });
        }
    }
}

/// A signal to the sandbox's first process through its pidfd (no pid reuse race). The first
/// process is the init of the sandbox's pid namespace: a signal it has no handler for is ignored.
fn send_signal(started: &Started, signal: i32) {
    // SAFETY: pidfd_send_signal with our child's pidfd and no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            started.pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

fn reap(started: &Started) -> Result<ExitStatus, SandboxError> {
    // SAFETY: a zeroed siginfo_t is a valid value of the plain C struct.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid fills `info`, which lives for the call; the pidfd is our child's.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            started.pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED,
        )
    };
    if rc != 0 {
        return Err(SandboxError::Wait(std::io::Error::last_os_error()));
    }
    // SAFETY: waitid filled a CLD_* record, for which si_status is the valid field.
    let (code, status) = unsafe { (info.si_code, info.si_status()) };
    Ok(match code {
        libc::CLD_EXITED => ExitStatus::Code(status),
        _ => ExitStatus::Signal(status),
    })
}

impl Outcome {
    fn into_summary(
        self,
        spec: &LaunchSpec,
        cgroup_id: u64,
        duration: Duration,
        resources: CgroupStats,
    ) -> Summary {
        let mut landlock = None;
        let mut memfd_noexec = None;
        let mut failure = None;
        for r in self.reports {
            match r {
                ShimReport::Landlock { abi, status } => landlock = Some((abi, status)),
                ShimReport::MemfdNoexec { enforced } => memfd_noexec = Some(enforced),
                ShimReport::Failed {
                    step,
                    message,
                    errno,
                } => failure = Some((EndReason::SetupFailed, format!("{step}: {message}"), errno)),
                ShimReport::ExecFailed { path, errno } => {
                    failure = Some((
                        EndReason::ExecFailed,
                        format!("cannot execute {path}"),
                        errno,
                    ))
                }
                ShimReport::Armed => {}
            }
        }
        let (exit_status, signal) = match self.status {
            ExitStatus::Code(c) => (Some(c), None),
            ExitStatus::Signal(s) => (None, Some(s)),
        };
        let ended_by = match (&failure, self.stopped_by, self.status) {
            (Some((reason, _, _)), _, _) => *reason,
            (None, Some(Stop::Timeout), _) => EndReason::Timeout,
            (None, Some(Stop::Signal(_)), _) => EndReason::Interrupted,
            (None, Some(Stop::AutoUnload), _) => EndReason::AutoUnloaded,
            (None, None, ExitStatus::Signal(libc::SIGKILL)) if resources.oom_kills > 0 => {
                EndReason::OomKill
            }
            (None, None, ExitStatus::Signal(libc::SIGSYS)) => EndReason::SeccompKill,
            (None, None, ExitStatus::Signal(_)) => EndReason::Signaled,
            (None, None, ExitStatus::Code(_)) => EndReason::Exited,
        };
        let exit_code = match (ended_by, self.stopped_by, self.status) {
            (EndReason::SetupFailed, _, _) => 1,
            (EndReason::ExecFailed, _, _) => 2,
            (_, Some(Stop::Signal(sig)), _) => 128 + sig,
            (_, _, ExitStatus::Code(c)) => c,
            (_, _, ExitStatus::Signal(s)) => 128 + s,
        };
        Summary {
            command: spec.argv.clone(),
            ended_by,
            exit_status,
            signal,
            exit_code,
            duration_ms: duration.as_secs_f64() * 1000.0,
            resources,
            cgroup_id,
            landlock_abi: landlock.as_ref().map(|(abi, _)| *abi),
            landlock_status: landlock.map(|(_, s)| s),
            memfd_noexec,
            error: failure.as_ref().map(|(_, m, _)| m.clone()),
            errno: failure.map(|(_, _, e)| e),
            monitor: None,
        }
    }
}
