//! Per-call plugins (`mode = "per-call"`): the UPM one-shot contract. Each call runs the entry
//! once in a sandbox of its own, with the call's payload as the last argument
//! (`{"class_name", "init_args", "run_args": {"method_name", "args", "kwargs"}}`); the plugin
//! prints its result on stdout and exits 0, or an error on stderr and exits non-zero. The host
//! answers with the seed's output structure (`success`, `status`, `data.result`,
//! `data.output.stdout/stderr`, `data.plugin_version`, `timestamp`, `hostname`, `pid`,
//! `request_id`).
//!
//! A sandbox costs tens of milliseconds to build (cgroups, namespaces, mounts, the monitors,
//! Landlock) and a call should not wait for that: the pool keeps `warm` sandboxes *armed*, their
//! shim done with every layer but seccomp and waiting on its spec pipe (`LaunchSpec::armed`). A
//! call takes one, sends it the argv's last argument, and the shim installs seccomp and executes.
//! A sandbox serves one call and is never reused: nothing of one call reaches the next but the
//! plugin's state directory, as with a long-lived plugin's restarts. The pool is filled again in
//! the background as calls take from it, within the daemon's `[per_call] max_armed` (the
//! sandboxes waiting over every pool).
//!
//! The policy's violation threshold is the plugin's, over its calls: each sandbox's observer
//! counts its violations into the pool's window as the monitors see them (`per_call_observer`),
//! and the first crossing quarantines the plugin and kills the sandboxes still running.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stockade::monitor::attribute::{Event, EventType, Layer};
use stockade::package::Package;
use stockade::rpc::{code, RpcError};
use stockade::sandbox::{EndReason, Request};
use stockade_policy::manifest::PerCall;
use stockade_policy::MAX_ARG_BYTES;
use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use super::{describe_end, refusal, Host, Plugin};
use crate::sandbox::{self as sb, Control, Ended};

/// A per-call plugin's armed sandboxes and its bounds.
pub struct Pool {
    settings: PerCall,
    ready: Mutex<VecDeque<Armed>>,
    /// Sandboxes being armed now.
    arming: AtomicU32,
    armed_changed: Notify,
    /// Calls running, over all methods (`max_running`).
    running: Arc<Semaphore>,
    /// Per method (`max_in_flight`).
    in_flight: HashMap<String, Arc<Semaphore>>,
    /// The running calls' sandboxes, to stop them at an unload: `None` while the call is still
    /// getting its sandbox. `retired` is set before, and read by a call about to execute under,
    /// this lock, so no call executes after the kill of `retire` went by.
    calls: Mutex<HashMap<u64, Option<Arc<Control>>>>,
    next_call: AtomicU64,
    retired: AtomicBool,
    /// The calls' violations crossed the threshold (seen live): the quarantine is under way.
    crossed: AtomicBool,
    /// The policy's threshold across calls (violations within the window, when crossing it
    /// kills): each call's sandbox counts its own, and a hostile plugin must not get a fresh
    /// count with every call.
    threshold: Option<(u64, Duration)>,
    /// The sandboxes' violations, when they were seen.
    violations: Mutex<VecDeque<(Instant, u64)>>,
}

/// One sandbox, armed: everything but seccomp and the plugin's exec done.
struct Armed {
    number: u64,
    pid: i32,
    control: Arc<Control>,
    exec: std::fs::File,
    stdout: OwnedFd,
    stderr: OwnedFd,
    ended: oneshot::Receiver<Ended>,
    /// Its share of the daemon's `max_armed` while it waits in a pool (none when a call armed
    /// it for itself).
    budget: Option<OwnedSemaphorePermit>,
}

impl Armed {
    /// Still waiting for a call: its sandbox has not ended.
    fn waiting(&mut self) -> bool {
        matches!(
            self.ended.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }
}

impl Pool {
    pub fn new(package: &Package) -> Option<Arc<Pool>> {
        let settings = package.manifest.per_call()?.clone();
        let in_flight = super::in_flight_limits(package);
        // As the sandbox thread applies it: untrusted code is enforced whatever its policy says.
        let e = &package.policy.enforcement;
        let enforced = package.trust == stockade_trust::keyring::Level::Untrusted
            || e.mode == stockade_policy::EnforcementMode::Enforce;
        let threshold = (enforced && e.action == stockade_policy::ThresholdAction::Kill)
            .then_some((e.threshold as u64, e.window));
        Some(Arc::new(Pool {
            running: Arc::new(Semaphore::new(settings.max_running as usize)),
            settings,
            ready: Mutex::new(VecDeque::new()),
            arming: AtomicU32::new(0),
            armed_changed: Notify::new(),
            in_flight,
            calls: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            crossed: AtomicBool::new(false),
            threshold,
            violations: Mutex::new(VecDeque::new()),
        }))
    }

    /// An armed sandbox still waiting (one that ended meanwhile, its policy's limits say why,
    /// is dropped).
    fn take(&self) -> Option<Armed> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut armed) = ready.pop_front() {
            if armed.waiting() {
                return Some(armed);
            }
        }
        None
    }

    /// Armed sandboxes waiting for a call; one that ended meanwhile (killed from outside: an
    /// armed sandbox's own limits start at its exec) is dropped here, so that a refill replaces
    /// it and the status does not count it.
    pub fn warm(&self) -> usize {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        ready.retain_mut(Armed::waiting);
        ready.len()
    }

    /// Violations of the plugin's sandboxes within the policy's window.
    fn recent_violations(&self) -> u64 {
        let Some((_, window)) = self.threshold else {
            return 0;
        };
        let mut v = self.violations.lock().unwrap_or_else(|e| e.into_inner());
        while v.front().is_some_and(|(at, _)| at.elapsed() > window) {
            v.pop_front();
        }
        v.iter().map(|(_, n)| n).sum()
    }

    /// Counts violations of the plugin's sandboxes (as the monitors see them, and those a
    /// sandbox's report adds at its end); true when the plugin's calls crossed the threshold.
    /// Once crossed, nothing more is counted (the quarantine is under way). At most `threshold`
    /// entries are kept: each holds at least one violation, so more would have crossed.
    fn count_violations(&self, n: u64) -> bool {
        let Some((threshold, _)) = self.threshold else {
            return false;
        };
        if n == 0 || self.crossed.load(Ordering::SeqCst) {
            return false;
        }
        {
            let mut v = self.violations.lock().unwrap_or_else(|e| e.into_inner());
            v.push_back((Instant::now(), n));
            while v.len() as u64 > threshold {
                v.pop_front();
            }
        }
        self.recent_violations() >= threshold
    }

    /// Why the calls' violations quarantined the plugin; `last`: the crossing one.
    fn crossed_reason(&self, last: Option<&Event>) -> String {
        let last = last
            .map(|e| {
                format!(
                    "; the last: {} {} {}",
                    e.layer.map_or("?", |l| l.name()),
                    e.action.unwrap_or("?"),
                    e.object
                        .as_ref()
                        .map(|o| o.text().into_owned())
                        .unwrap_or_default()
                )
            })
            .unwrap_or_default();
        format!(
            "auto-unloaded for violations: {} within {} s over its calls{last}",
            self.recent_violations(),
            self.threshold.map_or(0, |(_, w)| w.as_secs())
        )
    }

    /// For `plugin status`: the pool now and its bounds.
    pub fn status(&self) -> Value {
        json!({
            "class": self.settings.class,
            "warm": self.warm(),
            "arming": self.arming.load(Ordering::SeqCst),
            "running": self.calls.lock().unwrap_or_else(|e| e.into_inner()).len(),
            "recent_violations": self.recent_violations(),
            "warm_target": self.settings.warm,
            "max_running": self.settings.max_running,
        })
    }
}

/// The params of a per-call method as the payload's `run_args` takes them: `{"args": [...],
/// "kwargs": {...}}`. Also accepted: an array (the positional arguments), any other object (the
/// keyword arguments) and nothing.
pub fn normalize_params(params: Value) -> Value {
    match params {
        Value::Null => json!({ "args": [], "kwargs": {} }),
        Value::Array(args) => json!({ "args": args, "kwargs": {} }),
        Value::Object(mut map)
            if !map.is_empty() && map.keys().all(|k| k == "args" || k == "kwargs") =>
        {
            map.entry("args").or_insert_with(|| json!([]));
            map.entry("kwargs").or_insert_with(|| json!({}));
            Value::Object(map)
        }
        Value::Object(map) => json!({ "args": [], "kwargs": map }),
        other => json!({ "args": [other], "kwargs": {} }),
    }
}

/// This machine's name (the seed reports the host's; inside the sandbox the name is the
/// plugin's id).
fn hostname() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most `buf.len()` bytes into a valid local buffer.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return String::new();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    })
}

/// One sandbox being armed, counted in `Pool::arming` until this drops (also when the arming
/// task ends early), and a retirement waiting for it told.
struct Arming(Arc<Pool>);

impl Drop for Arming {
    fn drop(&mut self) {
        self.0.arming.fetch_sub(1, Ordering::SeqCst);
        self.0.armed_changed.notify_waiters();
    }
}

const GONE: &str = "the plugin is being unloaded, upgraded or quarantined";

/// Whether `e` is a call refused because its pool was retired before anything was executed.
pub fn refused_as_retired(e: &RpcError) -> bool {
    e.code == code::UNAVAILABLE && e.data.as_ref().is_some_and(|d| d["retired"] == true)
}

/// The longest error text an answer (and its audit record) carries.
const ERROR_CHARS: usize = 1024;

/// What one call's output pipe gave: the bytes kept and how many were dropped past the bound.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: u64,
}

/// Reads `fd` to its end, keeping at most `limit` bytes (the plugin never blocks on a full pipe:
/// the rest is read and counted).
async fn capture(fd: OwnedFd, limit: u64) -> Captured {
    let mut out = Captured::default();
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return out;
    };
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = (limit as usize).saturating_sub(out.bytes.len());
        let kept = n.min(room);
        out.bytes.extend_from_slice(&buf[..kept]);
        out.dropped += (n - kept) as u64;
    }
    out
}

/// The last non-empty line of `text` when it is JSON, and the text before it.
fn last_json_line(text: &str) -> Option<(Value, &str)> {
    let trimmed = text.trim_end();
    let start = trimmed.rfind('\n').map_or(0, |i| i + 1);
    let value = serde_json::from_str(trimmed[start..].trim()).ok()?;
    Some((value, &text[..start]))
}

impl Host {
    /// Starts one sandbox of `plugin`'s per-call `package` and waits until its shim is armed.
    async fn arm(
        self: &Arc<Self>,
        plugin: &Arc<Plugin>,
        pool: &Arc<Pool>,
        package: &Arc<Package>,
    ) -> Result<Armed, String> {
        let (launch, number) = self.sandbox_launch(plugin, package, Some(pool)).await?;
        let spawned = sb::spawn(launch).map_err(|e| format!("cannot start the sandbox: {e}"))?;
        let mut ended = spawned.ended;
        let (started, exec) = tokio::select! {
            both = async { (spawned.started.await, spawned.armed.await) } => both,
            end = &mut ended => return Err(describe_end(&end.ok())),
        };
        let (Ok((pid, _)), Ok(exec)) = (started, exec) else {
            return Err(describe_end(&ended.await.ok()));
        };
        Ok(Armed {
            number,
            pid,
            control: spawned.control,
            exec,
            stdout: spawned.ends.stdout,
            stderr: spawned.ends.stderr,
            ended,
            budget: None,
        })
    }

    /// Arms sandboxes in the background until the pool holds `warm` (counting those being armed).
    pub(super) fn refill(
        self: &Arc<Self>,
        plugin: &Arc<Plugin>,
        pool: &Arc<Pool>,
        package: &Arc<Package>,
    ) {
        loop {
            // Counted before `retired` is looked at: a retirement that begins meanwhile either
            // waits for this arming or is seen here.
            let before = pool.arming.fetch_add(1, Ordering::SeqCst) as usize;
            let guard = Arming(pool.clone());
            if pool.retired.load(Ordering::SeqCst)
                || self.stopping.load(Ordering::SeqCst)
                || pool.warm() + before >= pool.settings.warm as usize
            {
                return; // the guard uncounts it
            }
            // The daemon's `max_armed` spent: this pool waits below its `warm` (its calls arm
            // their own). A permit freed elsewhere goes to whichever pool refills next — often
            // the one whose call freed it — so a pool may wait until another is retired.
            let Ok(budget) = self.armed_budget.clone().try_acquire_owned() else {
                return;
            };
            let (host, plugin, pool, package) =
                (self.clone(), plugin.clone(), pool.clone(), package.clone());
            tokio::spawn(async move {
                let _guard = guard;
                let armed = host.arm(&plugin, &pool, &package).await;
                match armed {
                    Ok(mut armed) if !pool.retired.load(Ordering::SeqCst) => {
                        armed.budget = Some(budget);
                        pool.ready
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push_back(armed);
                    }
                    // Retired meanwhile: this one goes too, before the retirement is over.
                    Ok(armed) => retire_one(armed).await,
                    Err(why) => {
                        tracing::warn!(plugin = %plugin.id, "{}: a per-call sandbox did not arm: {why}", plugin.id)
                    }
                }
            });
        }
    }

    /// The first sandbox of a per-call plugin, armed while it loads: it proves the sandbox can
    /// be built (the plan, the monitors, the shim's layers) before the plugin is called active.
    pub(super) async fn arm_first(
        self: &Arc<Self>,
        plugin: &Arc<Plugin>,
        pool: &Arc<Pool>,
        package: &Arc<Package>,
    ) -> Result<(), String> {
        let mut armed = self.arm(plugin, pool, package).await?;
        let budget = self.armed_budget.clone().try_acquire_owned().ok();
        if pool.settings.warm == 0 || budget.is_none() {
            retire_one(armed).await;
        } else {
            armed.budget = budget;
            pool.ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(armed);
            self.refill(plugin, pool, package);
        }
        Ok(())
    }

    /// One call of a per-call plugin. `params` were normalized (`normalize_params`) and checked
    /// against the method's schema.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn call_per_call(
        self: &Arc<Self>,
        plugin: &Arc<Plugin>,
        pool: &Arc<Pool>,
        package: &Arc<Package>,
        method: &str,
        params: &Value,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Value, RpcError> {
        let settings = &pool.settings;
        let payload = json!({
            "class_name": settings.class,
            "init_args": settings.init_args,
            "run_args": {
                "method_name": method,
                "args": params["args"],
                "kwargs": params["kwargs"],
            },
        })
        .to_string();
        if payload.len() > MAX_ARG_BYTES {
            return Err(refusal(
                code::INVALID_PARAMS,
                format!(
                    "the call's payload is {} bytes; a per-call plugin's payload is one argument \
                     of at most {MAX_ARG_BYTES} bytes",
                    payload.len()
                ),
                Some("pass large data through a file in the plugin's state directory"),
            ));
        }
        let busy = |what: &str| {
            refusal(
                code::UNAVAILABLE,
                format!("`{}` has {what} calls running already", plugin.id),
                Some("retry later, or raise it in the manifest"),
            )
        };
        let unavailable = |why: String| {
            refusal(
                code::UNAVAILABLE,
                format!("`{}`: no sandbox for the call: {why}", plugin.id),
                Some("`stockade plugin status ID` and the daemon's log say more"),
            )
        };
        // Nothing was executed: the one refusal a caller may retry on another pool.
        let gone = || {
            let mut e = unavailable(GONE.into());
            if let Some(Value::Object(d)) = e.data.as_mut() {
                d.insert("retired".into(), json!(true));
            }
            e
        };
        // A retiring pool holds its permits back (its retirement waits for them): a call that
        // comes then is told so, not that the pool is busy, and may be retried elsewhere.
        if pool.retired.load(Ordering::SeqCst) {
            return Err(gone());
        }
        let busy_or_gone = |what: &str| {
            if pool.retired.load(Ordering::SeqCst) {
                gone()
            } else {
                busy(what)
            }
        };
        let _running = pool
            .running
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy_or_gone("[per_call] max_running"))?;
        let _method = pool
            .in_flight
            .get(method)
            .and_then(|s| s.clone().try_acquire_owned().ok())
            .ok_or_else(|| busy_or_gone(&format!("`{method}`'s max_in_flight")))?;
        // Registered before it takes a sandbox, so that a retirement waits for it (its permits)
        // and, past its grace, finds it (`calls`).
        let key = pool.next_call.fetch_add(1, Ordering::Relaxed);
        {
            let mut calls = pool.calls.lock().unwrap_or_else(|e| e.into_inner());
            if pool.retired.load(Ordering::SeqCst) {
                return Err(gone());
            }
            calls.insert(key, None);
        }
        let unregister = || {
            pool.calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        };
        let began = Instant::now();
        let armed = match pool.take() {
            Some(a) => a,
            // Bounded by the call's timeout; an arming given up retires itself (its exec channel
            // closes with the dropped receivers).
            None => match tokio::time::timeout(timeout, self.arm(plugin, pool, package)).await {
                Ok(Ok(a)) => a,
                Ok(Err(why)) => {
                    unregister();
                    return Err(unavailable(why));
                }
                Err(_) => {
                    unregister();
                    return Err(refusal(
                        code::TIMEOUT,
                        format!(
                            "no sandbox was ready for `{method}` within {} ms",
                            timeout.as_millis()
                        ),
                        Some("raise the method's `timeout`, or `[per_call] warm`"),
                    ));
                }
            },
        };
        let Armed {
            number,
            pid,
            control,
            mut exec,
            stdout,
            stderr,
            ended,
            budget,
        } = armed;
        // Taken: no longer waiting, its share of `max_armed` goes back (`max_running` bounds it
        // from here) before the pool refills.
        drop(budget);
        self.refill(plugin, pool, package);
        let retired = {
            let mut calls = pool.calls.lock().unwrap_or_else(|e| e.into_inner());
            let retired = pool.retired.load(Ordering::SeqCst);
            if retired {
                calls.remove(&key);
            } else {
                calls.insert(key, Some(control.clone()));
            }
            retired
        };
        if retired {
            drop(exec); // retired meanwhile: nothing is executed
            let _ = ended.await;
            return Err(gone());
        }
        let left = timeout.saturating_sub(began.elapsed());
        let sent = tokio::task::spawn_blocking(move || {
            stockade::launcher::send_exec(&mut exec, vec![payload])
            // `exec` closes here: the shim has what it needs.
        })
        .await;
        let limit = settings.output_bytes;
        let mut outcome = Box::pin(async move {
            let (out, err) = tokio::join!(capture(stdout, limit), capture(stderr, limit));
            (out, err, ended.await.ok())
        });
        let mut timed_out = false;
        if !matches!(sent, Ok(Ok(()))) {
            // The shim is gone: its end says why.
            control.send(Request::Kill(libc::SIGKILL));
        }
        let (out, err, end) = tokio::select! {
            done = &mut outcome => done,
            _ = tokio::time::sleep(left) => {
                timed_out = true;
                control.send(Request::Kill(libc::SIGKILL));
                outcome.await
            }
        };
        unregister();
        let duration = began.elapsed();
        self.per_call_ended(plugin, pool, number, &end).await;

        let text = |c: &Captured| String::from_utf8_lossy(&c.bytes).into_owned();
        let (stdout, stderr) = (text(&out), text(&err));
        for line in stdout.lines() {
            plugin.logs.push("stdout", line);
        }
        for line in stderr.lines() {
            plugin.logs.push("stderr", line);
        }
        if timed_out {
            return Err(refusal(
                code::TIMEOUT,
                format!(
                    "`{method}` did not finish within {} ms; its sandbox was killed",
                    timeout.as_millis()
                ),
                Some("raise the method's `timeout` in the manifest"),
            ));
        }
        // How it ended: its exit status, or (killed: violations, memory, a signal) why.
        let (status, ended_why) = match &end {
            Some(Ended::Ran(s)) if s.ended_by == EndReason::Exited => {
                (s.exit_status.unwrap_or(0), None)
            }
            Some(Ended::Ran(_)) => (-1, Some(describe_end(&end))),
            _ => return Err(unavailable(describe_end(&end))),
        };
        let mut output = json!({ "stdout": stdout, "stderr": stderr });
        if out.dropped > 0 || err.dropped > 0 {
            output["dropped_bytes"] = json!({ "stdout": out.dropped, "stderr": err.dropped });
        }
        let version = package.manifest.version.to_string();
        let envelope = |success: bool, data: Value| {
            json!({
                "success": success,
                "status": if success { "success" } else { "error" },
                "data": data,
                "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                "hostname": hostname(),
                "pid": pid,
                "request_id": request_id,
                "duration_ms": duration.as_secs_f64() * 1000.0,
            })
        };
        if status == 0 && ended_why.is_none() {
            // The result is stdout's last line; what the plugin printed before it stays output.
            let result = match last_json_line(&stdout) {
                Some((value, before)) => {
                    output["stdout"] = json!(before);
                    unwrap_seed_envelope(value)
                }
                None => Value::Null,
            };
            return Ok(envelope(
                true,
                json!({ "result": result, "output": output, "plugin_version": version }),
            ));
        }
        // The seed's plugins print their error as JSON on stderr's last line.
        let (error, details) = match ended_why.map(|why| (why, Value::Null)) {
            Some(killed) => killed,
            None => match last_json_line(&stderr) {
                Some((value, before)) => {
                    output["stderr"] = json!(before);
                    let message = value
                        .get("error")
                        .or_else(|| value.pointer("/data/error"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("exited with status {status}"));
                    (message, value)
                }
                None => (
                    stderr
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .map_or_else(|| format!("exited with status {status}"), str::to_string),
                    Value::Null,
                ),
            },
        };
        // The plugin's own text, into the answer and the call's audit record: bounded.
        let error: String = match error.char_indices().nth(ERROR_CHARS) {
            Some((cut, _)) => format!("{}…", &error[..cut]),
            None => error,
        };
        Err(RpcError {
            code: code::PLUGIN_FAILED,
            message: format!("`{method}` failed: {error}"),
            data: Some(envelope(
                false,
                json!({
                    "error": error,
                    "details": details,
                    "exit_status": (status >= 0).then_some(status),
                    "output": output,
                    "plugin_version": version,
                }),
            )),
        })
    }

    /// `plugin.upgrade` of a per-call plugin: the new version's first sandbox is armed while the
    /// old pool serves; then new calls take the new pool, and the old one is retired once its
    /// running calls finished (for at most `drain_for`). `stage` sends the upgrade's events.
    pub(super) async fn upgrade_per_call(
        self: &Arc<Self>,
        plugin: &Arc<Plugin>,
        package: Arc<Package>,
        methods: Arc<stockade::rpc::Methods>,
        allow_downgrade: Option<u32>,
        drain_for: Duration,
        stage: impl Fn(&str, Value),
    ) -> Result<Value, RpcError> {
        let id = &plugin.id;
        let (old_version, new_version) = {
            let st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            (
                st.package.manifest.version.to_string(),
                package.manifest.version.to_string(),
            )
        };
        let pool = Pool::new(&package).expect("a per-call package");
        if let Err(why) = self.arm_first(plugin, &pool, &package).await {
            stage("failed", json!({ "reason": why }));
            retire(&pool, Duration::ZERO).await;
            return Err(refusal(
                stockade::control::code::START_FAILED,
                format!("the upgrade of `{id}` to {new_version} failed: {why}; {old_version} keeps serving"),
                Some("`stockade plugin logs ID` shows what the new version wrote"),
            ));
        }
        let abandon = |why: String| {
            refusal(
                code::UNAVAILABLE,
                format!("the upgrade of `{id}` was abandoned: {why}"),
                Some("`stockade plugin status ID` says why; upgrade again once it is active"),
            )
        };
        let eligible = |st: &super::PluginState| {
            st.wanted && *st.tracker.state() == stockade::lifecycle::State::Active
        };
        if !eligible(&plugin.state.lock().unwrap_or_else(|e| e.into_inner())) {
            retire(&pool, Duration::ZERO).await;
            stage(
                "failed",
                json!({ "reason": "the plugin stopped meanwhile" }),
            );
            return Err(abandon("the plugin stopped meanwhile".into()));
        }
        if let Err(e) = self.commit(&package, allow_downgrade.is_some()).await {
            retire(&pool, Duration::ZERO).await;
            stage("failed", json!({ "reason": e.message }));
            return Err(e);
        }
        let old = {
            let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            if !eligible(&st) {
                None
            } else {
                st.package = package;
                st.methods = methods;
                Some(st.pool.replace(pool.clone()))
            }
        };
        let Some(old) = old else {
            retire(&pool, Duration::ZERO).await;
            stage(
                "failed",
                json!({ "reason": "the plugin stopped meanwhile" }),
            );
            return Err(abandon("the plugin stopped meanwhile".into()));
        };
        stage("switched", json!({}));
        if let Some(old) = old {
            retire(&old, drain_for.max(Duration::from_secs(1))).await;
        }
        stage("done", json!({}));
        Ok(self.status(plugin, false))
    }

    /// A per-call sandbox ended: its report, and a quarantine when it was auto-unloaded (as a
    /// long-lived plugin's run would be).
    async fn per_call_ended(
        self: &Arc<Self>,
        plugin: &Arc<Plugin>,
        pool: &Arc<Pool>,
        number: u64,
        end: &Option<Ended>,
    ) {
        let Some(Ended::Ran(s)) = end else {
            return;
        };
        let Some(report) = &s.monitor else {
            return;
        };
        self.record_report(plugin, number, report);
        // The threshold across calls: the violations were counted as the monitors saw them
        // (`per_call_observer`); those the kernel could not report are added now.
        let crossed = pool.count_violations(report.lost_denials);
        if s.ended_by != EndReason::AutoUnloaded && !crossed {
            return;
        }
        let reason = if s.ended_by == EndReason::AutoUnloaded {
            describe_end(end)
        } else {
            pool.crossed_reason(None)
        };
        pool.crossed.store(true, Ordering::SeqCst);
        self.per_call_crossed(plugin, pool, &reason, Some(end));
    }

    /// A per-call sandbox's observer: the daemon's (`violation_observer`), and each violation
    /// counted toward the pool's threshold at once, so that calls running side by side cannot
    /// each stay under it; the first crossing quarantines the plugin and kills its sandboxes.
    pub(super) fn per_call_observer(
        self: &Arc<Self>,
        plugin: &Arc<Plugin>,
        pool: &Arc<Pool>,
        mut inner: stockade::monitor::report::Observer,
    ) -> stockade::monitor::report::Observer {
        let (host, plugin, pool) = (self.clone(), plugin.clone(), pool.clone());
        let runtime = tokio::runtime::Handle::current();
        Box::new(move |event: &Event| {
            inner(event);
            let violation = event.kind == EventType::Violation && event.layer != Some(Layer::Rpc);
            if violation && pool.count_violations(1) && !pool.crossed.swap(true, Ordering::SeqCst) {
                let reason = pool.crossed_reason(Some(event));
                let (host, plugin, pool) = (host.clone(), plugin.clone(), pool.clone());
                runtime.spawn(async move {
                    host.per_call_crossed(&plugin, &pool, &reason, None);
                });
            }
        })
    }

    /// The plugin's calls crossed its threshold (or one sandbox did alone): quarantined, as a
    /// long-lived plugin's run is, and no sandbox of its pool left — the running ones killed.
    fn per_call_crossed(
        self: &Arc<Self>,
        plugin: &Arc<Plugin>,
        pool: &Arc<Pool>,
        reason: &str,
        end: Option<&Option<Ended>>,
    ) {
        {
            let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(end) = end {
                st.last_exit = Some(super::describe_end_json(end));
            }
            if st.pool.as_ref().is_some_and(|p| Arc::ptr_eq(p, pool))
                && *st.tracker.state() == stockade::lifecycle::State::Active
            {
                self.metrics
                    .auto_unload(&plugin.id, st.package.trust.name());
                self.decide(
                    plugin,
                    &mut st,
                    stockade::lifecycle::Exit::AutoUnloaded,
                    reason,
                );
            }
        }
        // No sandbox of a quarantined plugin waits for calls, or runs one.
        let pool = pool.clone();
        tokio::spawn(async move { retire(&pool, Duration::ZERO).await });
    }
}

/// A seed plugin that prints the seed's whole structure (`{"success", "data": {"result"}}`) gives
/// its `data.result`; anything else is the result itself.
fn unwrap_seed_envelope(value: Value) -> Value {
    match value {
        Value::Object(mut map)
            if map.contains_key("success")
                && map.get("data").is_some_and(|d| d.get("result").is_some()) =>
        {
            map.remove("data")
                .and_then(|mut d| d.get_mut("result").map(Value::take))
                .unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// Retires one armed sandbox: its exec channel closes, the shim exits without executing
/// anything, and the sandbox is gone (cgroup removed) when this returns.
async fn retire_one(armed: Armed) {
    drop(armed.exec);
    let _ = armed.ended.await;
}

/// Retires the pool: no more sandboxes are armed, those waiting go, and calls still running get
/// `grace` to finish before their sandboxes are killed. Returns when every sandbox is gone.
pub async fn retire(pool: &Pool, grace: Duration) {
    pool.retired.store(true, Ordering::SeqCst);
    loop {
        // Registered before the check, so an arming that ends in between is not missed.
        let changed = pool.armed_changed.notified();
        let waiting: Vec<Armed> = pool
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for armed in waiting {
            retire_one(armed).await;
        }
        if pool.arming.load(Ordering::SeqCst) == 0 {
            break;
        }
        changed.await;
    }
    let all = pool.settings.max_running;
    let done = tokio::time::timeout(grace, pool.running.acquire_many(all)).await;
    if done.is_err() {
        for control in pool
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flatten()
        {
            control.send(Request::Kill(libc::SIGKILL));
        }
        let _ = pool.running.acquire_many(all).await;
    }
}
