//! The plugin host: the table of loaded plugins and each one's lifecycle (load, initialize,
//! heartbeats, calls, restarts with backoff, quarantine, unload), driven by
//! `stockade::lifecycle::Tracker`. Every transition is an event on the daemon's event stream.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stockade::control::code as ccode;
use stockade::idmap::IdRanges;
use stockade::lifecycle::{Decision, Exit, State, Tracker};
use stockade::monitor::attribute::{Event, EventType, Layer};
use stockade::monitor::event::Object;
use stockade::package::{Package, PackageError};
use stockade::rpc::{code, Methods, RpcError};
use stockade::sandbox::{EndReason, Request};
use stockade_state::audit::AuditLog;
use stockade_state::chain::Record;
use stockade_state::{Commit, Installation, PluginRow, StateError, Storage, VersionRow};
use stockade_trust::keyring::Keyring;
use stockade_trust::ratchet::{Mark, Ratchet};
use tokio::sync::{broadcast, mpsc, Notify, Semaphore};

use crate::conn::{Conn, Sink};
use crate::export::Exporter;
use crate::logs::{self, now_ms, Logs};
use crate::metrics::Metrics;
use crate::sandbox::{self as sb, Control, Ended};

mod per_call;

/// Consecutive call timeouts after which a plugin counts as hung and is restarted.
const TIMEOUTS_BEFORE_HUNG: u32 = 3;
/// Heartbeats a plugin may miss in a row.
const MISSED_HEARTBEATS: u32 = 2;

pub struct Config {
    /// Per-plugin state directories live below `<state_root>/plugins/`.
    pub state_root: PathBuf,
    /// This daemon's sealed copies of packages (`<state_root>/store/<pid>`).
    pub store: PathBuf,
    /// The host's monitors, loaded (or joined) once at start; `None` when they did not load.
    pub monitor: Option<Arc<Mutex<stockade::monitor::Monitor>>>,
    /// The registry (and the trust state), shared with the hosts of a fleet.
    pub storage: Arc<dyn Storage>,
    /// This host's audit log.
    pub audit: Arc<AuditLog>,
    /// This host's name in the database.
    pub host_id: String,
    /// How long an answer waits for its audit record's commit.
    pub audit_wait: Duration,
    /// What this host offers: the registry keeps each version's capabilities in the words of
    /// `stockade policy explain` on it.
    pub probe: stockade::probe::Probe,
    /// The event export (`[export]`).
    pub export: stockade::daemon_config::ExportConfig,
    /// Armed per-call sandboxes waiting, over every plugin (`[per_call] max_armed`).
    pub max_armed: usize,
}

/// Events kept for `stockade events` without `--follow`.
const RECENT_EVENTS: usize = 1000;

/// The daemon's event stream: lifecycle transitions, violations, call records, published events.
pub struct Events {
    /// Shared, not copied, by the kept list, the ring and each subscriber.
    tx: broadcast::Sender<Arc<Value>>,
    recent: Mutex<std::collections::VecDeque<Arc<Value>>>,
    /// Where the events the audit log keeps go too.
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    /// The export for SIEMs, when configured.
    export: Option<Exporter>,
}

impl Events {
    fn new(audit: Arc<AuditLog>, metrics: Arc<Metrics>, export: Option<Exporter>) -> Events {
        Events {
            tx: broadcast::channel(4096).0,
            recent: Mutex::new(std::collections::VecDeque::new()),
            audit,
            metrics,
            export,
        }
    }

    pub fn send(&self, event: Value) {
        crate::audit::record_event(&self.audit, &event);
        if let Some(kind) = event["type"].as_str() {
            self.metrics.event(kind);
        }
        let event = Arc::new(event);
        if let Some(export) = &self.export {
            export.send(&event);
        }
        // Under the lock, so that `subscribe` sees each event once: in its list or on its
        // receiver.
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        let _ = self.tx.send(event);
    }

    /// The kept events and a receiver of every later one (taken together: none lost between).
    pub fn subscribe(&self) -> (Vec<Arc<Value>>, broadcast::Receiver<Arc<Value>>) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        (recent.iter().cloned().collect(), self.tx.subscribe())
    }
}

pub struct Host {
    config: Config,
    /// Permits for armed per-call sandboxes waiting, over every plugin (`max_armed`): each
    /// holds a monitor slot and a cgroup while it waits.
    armed_budget: Arc<Semaphore>,
    /// The keyring each verification uses: replaced whole when a rotation adds a key.
    keyring: Mutex<Arc<Keyring>>,
    ratchet: Mutex<Ratchet>,
    /// Held by each commit for its check and record together.
    committing: tokio::sync::Mutex<()>,
    /// The registry's writes (installation states, commits), in order, by a task of their own.
    registry: mpsc::UnboundedSender<RegistryWrite>,
    /// Names the next sealed copy below `<state_root>/store/`.
    next_seal: AtomicU64,
    plugins: Mutex<BTreeMap<String, Arc<Plugin>>>,
    events: Arc<Events>,
    ids: IdRanges,
    stopping: AtomicBool,
    next_run: AtomicU64,
    metrics: Arc<Metrics>,
    /// The host's cgroups, as the sandboxes are placed in them (for what each uses now).
    layout: Option<stockade::cgroup::Layout>,
    /// When this daemon started (ms since the epoch): with a run's number, in the events of its
    /// runs (run numbers start again at each start).
    started_ms: u64,
}

/// A host-side refusal: a JSON-RPC error with a hint.
pub fn refusal(code: i64, message: impl Into<String>, hint: Option<&str>) -> RpcError {
    RpcError {
        code,
        message: message.into(),
        data: hint.map(|h| json!({ "hint": h })),
    }
}

pub struct Plugin {
    pub id: String,
    logs: Arc<Logs>,
    /// Held by each lifecycle operation (a start, a restart, an unload, an upgrade) for its
    /// whole length: they happen one after another, never interleaved.
    op: tokio::sync::Mutex<()>,
    state: Mutex<PluginState>,
    /// Violations of the `rpc` layer so far.
    rpc_violations: AtomicU64,
    /// Violations of every layer so far, over all runs (as the sandboxes' trackers record
    /// them; the `rpc` layer's included).
    violations: Arc<AtomicU64>,
    /// Events delivered to it this second, and when the second began (`EVENTS_IN_PER_SEC`).
    delivered: Mutex<(Instant, u32)>,
}

/// Events delivered to one subscriber per second at most; the rest are dropped and counted. Far
/// below the plugin's own budget of calls to the host (1000 a second), so that a hook that logs
/// for each event cannot spend it.
const EVENTS_IN_PER_SEC: u32 = 100;

struct PluginState {
    package: Arc<Package>,
    methods: Arc<Methods>,
    tracker: Tracker,
    run: Option<Arc<Run>>,
    /// A per-call plugin's armed sandboxes (it has no run).
    pool: Option<Arc<per_call::Pool>>,
    /// False once the operator unloaded it: no restart.
    wanted: bool,
    restarts: u32,
    /// How the last run ended.
    last_exit: Option<Value>,
}

/// One run of the plugin's sandbox.
struct Run {
    number: u64,
    version: String,
    conn: Arc<Conn>,
    control: Arc<Control>,
    pid: i32,
    cgroup_id: u64,
    /// Its cgroup's directory name (below the daemon's own), for what it uses now.
    cgroup_name: String,
    started: Instant,
    /// Why the daemon killed it, if it did (heartbeat, hung calls).
    kill_reason: Mutex<Option<String>>,
    /// The operator asked it to stop.
    stopping: AtomicBool,
    ended: Notify,
    end: Mutex<Option<Value>>,
    in_flight: HashMap<String, Arc<Semaphore>>,
    /// Calls forwarded and not answered yet (an upgrade drains them).
    calls: AtomicU64,
    timeouts: AtomicU32,
}

struct PluginSink {
    plugin: Arc<Plugin>,
    events: Arc<Events>,
    /// The `rpc` violations sent as events this second, when the second began, and those held
    /// back since the last one sent: at most `LIVE_EVENTS_PER_SEC`, the rest counted (and the
    /// count sent with the next, `suppressed_before`).
    sent: Mutex<(Instant, u32, u64)>,
    control: Arc<Control>,
    /// The run's number and the daemon's start, in its events.
    run: u64,
    daemon: u64,
    metrics: Arc<Metrics>,
    trust: &'static str,
    /// The counters the manifest declares (`counters`).
    counters: Arc<[String]>,
}

impl Sink for PluginSink {
    fn count(&self, name: &str, value: u64) -> bool {
        if !self.counters.iter().any(|c| c == name) {
            return false;
        }
        self.metrics.plugin_counter(&self.plugin.id, name, value);
        true
    }

    fn log(&self, level: &str, message: &str) {
        self.plugin.logs.push(level, message);
    }

    fn publish(&self, topic: &str, data: Value) {
        self.events.send(json!({
            "type": "published",
            "at_ms": now_ms(),
            "plugin": self.plugin.id,
            "topic": topic,
            "data": data,
        }));
    }

    /// Counted and sent here, once: the sandbox's tracker counts it too (its threshold, its
    /// report), but its observer leaves the `rpc` layer to this sink — a sandbox without
    /// monitors has no tracker to see it.
    fn violation(&self, action: &'static str, what: String) {
        self.plugin.rpc_violations.fetch_add(1, Ordering::Relaxed);
        self.plugin.violations.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .violation(&self.plugin.id, self.trust, false, "rpc");
        let held_back = {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            if sent.0.elapsed() >= Duration::from_secs(1) {
                (sent.0, sent.1) = (Instant::now(), 0);
            }
            sent.1 += 1;
            if sent.1 <= LIVE_EVENTS_PER_SEC {
                Some(std::mem::take(&mut sent.2))
            } else {
                sent.2 += 1;
                None
            }
        };
        if let Some(held_back) = held_back {
            let mut event = json!({
                "type": "violation",
                "at_ms": now_ms(),
                "plugin": self.plugin.id,
                "layer": "rpc",
                "action": action,
                "object": what,
                "run": self.run,
                "daemon": self.daemon,
            });
            if held_back > 0 {
                event["suppressed_before"] = json!(held_back);
            }
            self.events.send(event);
        }
        self.control.send(Request::Violation(Event {
            t_ms: 0.0,
            kind: EventType::Violation,
            pid: 0,
            tid: 0,
            layer: Some(Layer::Rpc),
            action: Some(action),
            syscall: None,
            object: Some(Object::from(what)),
            errno: None,
            fd: None,
            killed_in_kernel: false,
        }));
    }
}

impl Host {
    /// `keyring`: the keys signatures are checked against (a package's accepted key rotation adds
    /// to them); `ratchet`: the host's trust state, from `<state_root>/trust/state.json`.
    pub fn new(config: Config, keyring: Keyring, ratchet: Ratchet) -> Arc<Host> {
        let ids = IdRanges::at(&config.state_root.join("idmap.json"));
        let (registry, updates) = mpsc::unbounded_channel();
        tokio::spawn(write_registry(config.storage.clone(), updates));
        let metrics = Arc::new(Metrics::new());
        let export = Exporter::start(&config.export, &config.host_id, metrics.clone());
        let host = Arc::new(Host {
            armed_budget: Arc::new(Semaphore::new(config.max_armed)),
            keyring: Mutex::new(Arc::new(keyring)),
            events: Arc::new(Events::new(config.audit.clone(), metrics.clone(), export)),
            metrics,
            config,
            ratchet: Mutex::new(ratchet),
            committing: tokio::sync::Mutex::new(()),
            registry,
            next_seal: AtomicU64::new(1),
            plugins: Mutex::new(BTreeMap::new()),
            ids,
            stopping: AtomicBool::new(false),
            next_run: AtomicU64::new(1),
            layout: stockade::cgroup::Layout::detect().ok(),
            started_ms: now_ms(),
        });
        tokio::spawn(deliver_events(
            Arc::downgrade(&host),
            host.events.subscribe().1,
        ));
        host
    }

    /// Hands a published event to every other active plugin whose manifest subscribes to its
    /// topic, as an `event` notification, when the publisher's manifest shares the topic
    /// (`publish`): a plugin's events reach other plugins only by its own declaration.
    fn deliver(&self, event: &Value) {
        use stockade_policy::manifest::topic_matches;
        let (Some(source), Some(topic)) = (event["plugin"].as_str(), event["topic"].as_str())
        else {
            return;
        };
        let shared = self.plugin(source).is_ok_and(|p| {
            let st = p.state.lock().unwrap_or_else(|e| e.into_inner());
            st.package
                .manifest
                .publish
                .iter()
                .any(|p| topic_matches(p, topic))
        });
        if !shared {
            return;
        }
        let params = json!({ "plugin": source, "topic": topic, "data": event["data"] });
        for plugin in self.all_plugins() {
            if plugin.id == source {
                continue;
            }
            let run = {
                let st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
                let wants = *st.tracker.state() == State::Active
                    && st
                        .package
                        .manifest
                        .subscribe
                        .iter()
                        .any(|p| topic_matches(p, topic));
                st.run.clone().filter(|_| wants)
            };
            let Some(run) = run else { continue };
            let within_rate = {
                let mut d = plugin.delivered.lock().unwrap_or_else(|e| e.into_inner());
                if d.0.elapsed() >= Duration::from_secs(1) {
                    *d = (Instant::now(), 0);
                }
                d.1 += 1;
                d.1 <= EVENTS_IN_PER_SEC
            };
            if !within_rate || !run.conn.notify("event", &params) {
                self.metrics.event_dropped(&plugin.id);
            }
        }
    }

    pub fn subscribe(&self) -> (Vec<Arc<Value>>, broadcast::Receiver<Arc<Value>>) {
        self.events.subscribe()
    }

    fn plugin(&self, id: &str) -> Result<Arc<Plugin>, RpcError> {
        self.plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| {
                refusal(
                    ccode::UNKNOWN_PLUGIN,
                    format!("no plugin `{id}` is loaded"),
                    Some("`stockade plugin list` shows the loaded plugins"),
                )
            })
    }

    fn transition(&self, plugin: &Plugin, st: &mut PluginState, to: State, reason: &str) {
        match st.tracker.go(to, reason, now_ms()) {
            Ok(t) => {
                tracing::info!(
                    plugin = %plugin.id,
                    trust = st.package.trust.name(),
                    version = %st.package.manifest.version,
                    from = t.from,
                    state = t.to.name(),
                    "{}: {} -> {}: {reason}",
                    plugin.id,
                    t.from,
                    t.to.name()
                );
                self.events.send(json!({
                    "type": "lifecycle",
                    "at_ms": t.at_ms,
                    "plugin": plugin.id,
                    "from": t.from,
                    "to": t.to.name(),
                    "reason": t.reason,
                }));
                let _ = self
                    .registry
                    .send(RegistryWrite::Installation(Installation {
                        host: self.config.host_id.clone(),
                        plugin: plugin.id.clone(),
                        version: st.package.manifest.version.to_string(),
                        state: t.to.name().to_string(),
                        reason: match &t.to {
                            State::Failed(r) | State::Quarantined(r) => Some(r.clone()),
                            _ => None,
                        },
                        updated_ms: t.at_ms as i64,
                    }));
            }
            Err(e) => tracing::warn!(plugin = %plugin.id, "{}: {e} ({reason})", plugin.id),
        }
    }

    /// The `verified` step: the package read once into a sealed copy (everything after runs from
    /// it), its signature checked against the keyring, its version and sequence against the
    /// rollback ratchet. Nothing is started, and nothing kept, for a package refused here.
    async fn verify(
        self: &Arc<Self>,
        dir: &Path,
        allow_downgrade: Option<u32>,
    ) -> Result<(Arc<Package>, Arc<Methods>), RpcError> {
        let owned = dir.to_path_buf();
        // One keyring for the whole verification: the signature's check and the ratchet's.
        let keyring = keyring_now(self);
        let ring = keyring.clone();
        let seal = self.config.store.join(format!(
            "load-{}",
            self.next_seal.fetch_add(1, Ordering::Relaxed)
        ));
        let loaded = tokio::task::spawn_blocking(move || {
            stockade::package::load_with(
                &owned,
                stockade::package::Options {
                    keyring: Some(&ring),
                    seal_into: Some(&seal),
                },
            )
        })
        .await
        .map_err(|e| refusal(code::INTERNAL_ERROR, e.to_string(), None))?;
        let package = loaded.map_err(|e| {
            let hint = e.hint().unwrap_or_else(|| {
                format!(
                    "`stockade plugin check {}` lists every problem",
                    dir.display()
                )
            });
            let mut r = refusal(
                ccode::BAD_PACKAGE,
                format!("{}: {e}", dir.display()),
                Some(&hint),
            );
            if let PackageError::Refused(why) = &e {
                r.code = ccode::UNTRUSTED;
                if let Some(Value::Object(d)) = r.data.as_mut() {
                    d.insert("kind".into(), json!(why.kind()));
                }
                self.events.send(json!({
                    "type": "trust",
                    "at_ms": now_ms(),
                    "dir": dir,
                    "decision": "refused",
                    "kind": why.kind(),
                    "reason": why.to_string(),
                }));
            }
            r
        })?;
        let id = package.manifest.id.clone();
        let checked = self.check_ratchet(&keyring, &package);
        let mut downgrade = None;
        if let Err(rollback) = checked {
            let Some(uid) = allow_downgrade else {
                self.events.send(json!({
                    "type": "trust",
                    "at_ms": now_ms(),
                    "plugin": id,
                    "dir": dir,
                    "decision": "refused",
                    "kind": rollback.kind(),
                    "reason": rollback.to_string(),
                }));
                return Err(RpcError {
                    code: ccode::UNTRUSTED,
                    message: format!("{}: plugin `{id}`: {rollback}", dir.display()),
                    data: Some(json!({ "hint": rollback.hint(), "kind": rollback.kind() })),
                });
            };
            tracing::warn!(plugin = %id, uid, "{id}: downgrade allowed by the operator: {rollback}");
            downgrade = Some(json!({ "allowed_by_uid": uid, "was": rollback.to_string() }));
        }
        if package.signer.is_none() {
            tracing::warn!(plugin = %id, "{id}: unsigned package loaded (--allow-unsigned): it runs untrusted");
        }
        self.events.send(json!({
            "type": "trust",
            "at_ms": now_ms(),
            "plugin": id,
            "dir": dir,
            "decision": "accepted",
            "level": package.trust.name(),
            "signer": signer_json(&package),
            "downgrade": downgrade,
        }));
        let methods = Methods::compile(&package.manifest)
            .map_err(|e| refusal(ccode::BAD_PACKAGE, e, None))?;
        Ok((Arc::new(package), Arc::new(methods)))
    }

    /// The rollback ratchet's verdict on `package`.
    fn check_ratchet(
        &self,
        keyring: &Keyring,
        package: &Package,
    ) -> Result<(), stockade_trust::ratchet::Rollback> {
        package.check_ratchet(
            &self.ratchet.lock().unwrap_or_else(|e| e.into_inner()),
            keyring,
        )
    }

    /// Moves the rollback ratchet to `package`: the daemon now runs this version; and remembers
    /// the key rotation it carried, if its signature needed one (the new key is then trusted for
    /// every plugin, as its old key was). Checked again first, under the commit lock (another
    /// load or upgrade of the plugin may have moved it since this one was verified), unless the
    /// operator allowed a downgrade. The registry records the version (with its capabilities)
    /// and this host's installation of it, and the ratchet is stored, before it returns; an
    /// error means the version must not become the active one.
    async fn commit(
        self: &Arc<Self>,
        package: &Arc<Package>,
        allow_downgrade: bool,
    ) -> Result<(), RpcError> {
        let id = package.manifest.id.clone();
        let (sequence, digest) = package.ratchet_key();
        let mark = Mark {
            version: package.manifest.version.to_string(),
            sequence,
            digest: digest.clone(),
            key: package.signer.as_ref().map(|s| s.key.to_string()),
            at: now_ms() / 1000,
        };
        let stored = |e: StateError| {
            refusal(
                crate::audit::AUDIT_UNAVAILABLE,
                format!("cannot record the accepted version: {e}"),
                Some(e.hint()),
            )
        };
        // One commit at a time: the check and the record under the same lock.
        let _one = self.committing.lock().await;
        if !allow_downgrade {
            self.check_ratchet(&keyring_now(self), package)
                .map_err(|r| RpcError {
                    code: ccode::UNTRUSTED,
                    message: format!("plugin `{id}`: {r}"),
                    data: Some(json!({ "hint": r.hint(), "kind": r.kind() })),
                })?;
        }
        let now = now_ms() as i64;
        let m = &package.manifest;
        let commit = Commit {
            host: self.config.host_id.clone(),
            plugin: PluginRow {
                id: id.clone(),
                name: m.name.clone(),
                trust: package.trust.name().to_string(),
                config: None,
                first_seen_ms: now,
                updated_ms: now,
            },
            version: VersionRow {
                plugin: id.clone(),
                version: m.version.to_string(),
                digest,
                entry_sha3_512: package.entry_sha3_512.clone(),
                signer: package.signer.as_ref().map(|s| s.key.to_string()),
                sequence: sequence as i64,
                published_s: package.signer.as_ref().and_then(|s| {
                    s.signed_at
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs() as i64)
                }),
                installed_ms: now,
                capabilities: stockade::explain::explain(&package.policy, &self.config.probe),
            },
            state: State::Active.name().to_string(),
            mark: mark.clone(),
            rotation: package.rotation.as_ref().map(|r| r.text()),
        };
        // The version, its capabilities, this host's installation, the ratchet's mark and the
        // rotation: one transaction, written in order with the installation states.
        let (done, written) = tokio::sync::oneshot::channel();
        let _ = self
            .registry
            .send(RegistryWrite::Commit(Box::new(commit), done));
        let result = written.await.unwrap_or_else(|_| {
            Err(StateError::Unavailable {
                location: self.config.storage.location(),
                why: "the registry's writer stopped".into(),
            })
        });
        if let Err(e) = result {
            // Unclear whether it went through (an answer lost with the connection): the
            // ratchet in memory follows what the database holds.
            if let Ok(state) = self.config.storage.trust_state(&self.config.host_id).await {
                if let Some(held) = state.marks.get(&id) {
                    let _ = self
                        .ratchet
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(&id, held.clone());
                }
            }
            return Err(stored(e));
        }
        {
            let mut ratchet = self.ratchet.lock().unwrap_or_else(|e| e.into_inner());
            let _ = ratchet.record(&id, mark);
            if let Some(r) = &package.rotation {
                let _ = ratchet.remember_rotation(r.text());
            }
        }
        if let Some(r) = &package.rotation {
            let mut keyring = self.keyring.lock().unwrap_or_else(|e| e.into_inner());
            let mut next = Keyring::clone(&keyring);
            if let Ok(true) = next.introduce(r, true) {
                tracing::info!(
                    from = %r.from,
                    to = %r.to.id(),
                    "key rotation accepted (carried by plugin `{id}`)"
                );
                self.events.send(json!({
                    "type": "trust",
                    "at_ms": now_ms(),
                    "plugin": id,
                    "decision": "key-rotated",
                    "from": r.from.to_string(),
                    "to": r.to.id().to_string(),
                }));
            }
            *keyring = Arc::new(next);
        }
        Ok(())
    }

    /// Waits until the registry's writes so far are done (at a clean stop, before the last
    /// audit record).
    pub async fn flush_registry(&self) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.registry.send(RegistryWrite::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }

    /// Refuses a request when the audit log cannot take its record.
    fn audit_ready(&self) -> Result<(), RpcError> {
        self.config
            .audit
            .ready()
            .map_err(|e| crate::audit::refusal(&e))
    }

    /// Records an operator's request (`by`: the uid that asked; none: the daemon itself) and its
    /// outcome, and returns the outcome only once the record is committed.
    async fn acknowledge(
        &self,
        kind: &str,
        plugin: Option<&str>,
        by: Option<u32>,
        mut detail: Value,
        result: Result<Value, RpcError>,
    ) -> Result<Value, RpcError> {
        if let (Value::Object(d), Value::Object(o)) = (&mut detail, crate::audit::outcome(&result))
        {
            d.extend(o);
        }
        let plugin = plugin.map(str::to_string).or_else(|| {
            result
                .as_ref()
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string))
        });
        let record = Record::new(kind, plugin.as_deref(), &detail).by(by);
        self.committed(record).await?;
        result
    }

    /// Queues `record` and waits for its commit.
    async fn committed(&self, record: Record) -> Result<(), RpcError> {
        let audit = &self.config.audit;
        let ticket = audit
            .append_always(record)
            .ok_or_else(|| crate::audit::refusal(&audit.refusal()))?;
        audit
            .durable(ticket, self.config.audit_wait)
            .await
            .map_err(|e| crate::audit::refusal(&e))
    }

    /// `plugin.load` asked by `by` (the daemon itself at start: none).
    pub async fn load(
        self: &Arc<Self>,
        dir: &Path,
        by: Option<u32>,
        allow_downgrade: bool,
    ) -> Result<Value, RpcError> {
        self.audit_ready()?;
        let downgrade = allow_downgrade.then(|| by.unwrap_or(0));
        let begin = Instant::now();
        let result = self.load_package(dir, downgrade).await;
        let trust = result.as_ref().ok().and_then(|s| s["trust"].as_str());
        self.metrics.load(result.is_ok(), trust, begin.elapsed());
        let detail = json!({ "dir": dir, "allow_downgrade": allow_downgrade });
        self.acknowledge("load", None, by, detail, result).await
    }

    /// `plugin.unload` asked by `by`.
    pub async fn unload(self: &Arc<Self>, id: &str, by: Option<u32>) -> Result<Value, RpcError> {
        self.audit_ready()?;
        let result = self.unload_plugin(id).await;
        self.acknowledge("unload", Some(id), by, json!({}), result)
            .await
    }

    /// `plugin.reload` asked by `by`.
    pub async fn reload(self: &Arc<Self>, id: &str, by: Option<u32>) -> Result<Value, RpcError> {
        self.audit_ready()?;
        let result = self.reload_plugin(id).await;
        self.acknowledge("reload", Some(id), by, json!({}), result)
            .await
    }

    /// `plugin.upgrade` asked by `by`.
    pub async fn upgrade(
        self: &Arc<Self>,
        id: &str,
        dir: &Path,
        by: Option<u32>,
        allow_downgrade: bool,
    ) -> Result<Value, RpcError> {
        self.audit_ready()?;
        let downgrade = allow_downgrade.then(|| by.unwrap_or(0));
        let result = self.upgrade_package(id, dir, downgrade).await;
        let detail = json!({ "dir": dir, "allow_downgrade": allow_downgrade });
        self.acknowledge("upgrade", Some(id), by, detail, result)
            .await
    }

    /// Verifies the package, starts it and waits until it is active. A plugin that cannot start
    /// is not kept.
    async fn load_package(
        self: &Arc<Self>,
        dir: &Path,
        allow_downgrade: Option<u32>,
    ) -> Result<Value, RpcError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(refusal(
                ccode::SHUTTING_DOWN,
                "the daemon is stopping",
                None,
            ));
        }
        let (package, methods) = self.verify(dir, allow_downgrade).await?;
        let id = package.manifest.id.clone();
        let plugin = {
            let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(other) = plugins.get(&id) {
                let st = other.state.lock().unwrap_or_else(|e| e.into_inner());
                return Err(refusal(
                    ccode::DUPLICATE,
                    format!(
                        "a plugin `{id}` is loaded already (version {}, from {})",
                        st.package.manifest.version,
                        st.package.source.display()
                    ),
                    Some("`stockade plugin upgrade ID DIR` replaces it; `stockade plugin unload ID` removes it"),
                ));
            }
            let plugin = Arc::new(Plugin {
                id: id.clone(),
                logs: Arc::new(Logs::new()),
                state: Mutex::new(PluginState {
                    tracker: Tracker::new(package.manifest.lifecycle.clone(), now_ms()),
                    package: package.clone(),
                    methods,
                    run: None,
                    pool: None,
                    wanted: true,
                    restarts: 0,
                    last_exit: None,
                }),
                rpc_violations: AtomicU64::new(0),
                violations: Arc::new(AtomicU64::new(0)),
                delivered: Mutex::new((Instant::now(), 0)),
                op: tokio::sync::Mutex::new(()),
            });
            plugins.insert(id.clone(), plugin.clone());
            plugin
        };
        let op = plugin.op.lock().await;
        if self.stopping.load(Ordering::SeqCst) {
            self.forget(&plugin);
            return Err(refusal(
                ccode::SHUTTING_DOWN,
                "the daemon is stopping",
                None,
            ));
        }
        {
            let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            let reason = match &package.signer {
                Some(s) => format!(
                    "package verified: signed by key {} (sequence {}), runs {}; entry sha3-512 {}",
                    s.key,
                    s.sequence,
                    package.trust.name(),
                    package.entry_sha3_512
                ),
                None => format!(
                    "package verified: unsigned (allowed), runs untrusted; entry sha3-512 {}",
                    package.entry_sha3_512
                ),
            };
            self.transition(&plugin, &mut st, State::Verified, &reason);
        }
        let started = self.start(&plugin).await;
        if started.is_ok() {
            if let Err(e) = self.commit(&package, allow_downgrade.is_some()).await {
                drop(op);
                let _ = self.unload_plugin(&id).await;
                return Err(e);
            }
        }
        drop(op);
        match started {
            Ok(()) => Ok(self.status(&plugin, false)),
            Err((why, _)) => {
                self.metrics.failure(&plugin.id);
                {
                    let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.wanted = false;
                    if !matches!(st.tracker.state(), State::Stopped | State::Failed(_)) {
                        self.transition(&plugin, &mut st, State::Failed(why.clone()), &why);
                    }
                }
                let status = self.status(&plugin, true);
                self.forget(&plugin);
                let stderr: Vec<String> = plugin
                    .logs
                    .since(0, 20)
                    .into_iter()
                    .map(|l| format!("{}: {}", l.stream, l.text))
                    .collect();
                let mut e = refusal(
                    ccode::START_FAILED,
                    format!("plugin `{id}` did not start: {why}"),
                    Some("its output is in data.output; `stockade plugin check DIR` checks the package offline"),
                );
                if let Some(Value::Object(d)) = e.data.as_mut() {
                    d.insert("output".into(), json!(stderr));
                    d.insert("status".into(), status);
                }
                Err(e)
            }
        }
    }

    /// Removes `plugin` from the table, if the table still holds that one (not a newer plugin
    /// loaded under the same id).
    fn forget(&self, plugin: &Arc<Plugin>) {
        let mut plugins = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        if plugins
            .get(&plugin.id)
            .is_some_and(|p| Arc::ptr_eq(p, plugin))
        {
            plugins.remove(&plugin.id);
        }
    }

    /// One start: loading → initializing → active. Until the run is active this function
    /// watches it; afterwards a task of its own does (`run_ended`). On failure the run is gone
    /// and the reason returned; the caller decides (restart, fail).
    fn start<'a>(
        self: &'a Arc<Self>,
        plugin: &'a Arc<Plugin>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StartFailure>> + Send + 'a>>
    {
        // Boxed: a run's end may start the plugin again, a cycle of futures.
        Box::pin(self.start_inner(plugin))
    }

    async fn start_inner(self: &Arc<Self>, plugin: &Arc<Plugin>) -> Result<(), StartFailure> {
        let package = {
            let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            if !st.wanted || self.stopping.load(Ordering::SeqCst) {
                return Err(("unloaded before it started".into(), Exit::Failure));
            }
            self.transition(plugin, &mut st, State::Loading, "starting the sandbox");
            st.package.clone()
        };
        if let Some(pool) = per_call::Pool::new(&package) {
            self.arm_first(plugin, &pool, &package)
                .await
                .map_err(|why| (why, Exit::Failure))?;
            let wanted = plugin
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .wanted;
            if !wanted {
                per_call::retire(&pool, Duration::ZERO).await;
                return Err(("unloaded while it started".into(), Exit::Failure));
            }
            let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            st.pool = Some(pool);
            self.transition(
                plugin,
                &mut st,
                State::Initializing,
                "per-call: the first sandbox is armed",
            );
            self.transition(
                plugin,
                &mut st,
                State::Active,
                "per-call: each call runs in a sandbox of its own",
            );
            return Ok(());
        }
        let (run, ended) = self
            .launch(plugin, &package, |host, run| {
                let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
                st.run = Some(run.clone());
                host.transition(
                    plugin,
                    &mut st,
                    State::Initializing,
                    &format!(
                        "sandbox up (pid {}, cgroup {}); sending initialize",
                        run.pid, run.cgroup_id
                    ),
                );
            })
            .await
            .inspect_err(|_| {
                let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
                st.run = None;
            })?;
        let wanted = {
            let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.wanted {
                self.transition(plugin, &mut st, State::Active, "initialize answered");
            }
            st.wanted
        };
        if !wanted {
            Host::stop_run_after_start(run, ended).await;
            return Err(("unloaded while it started".into(), Exit::Failure));
        }
        self.watch(plugin, run, ended, package.manifest.lifecycle.heartbeat);
        Ok(())
    }

    /// From now on the run's end is handled by the restart policy, and it gets heartbeats.
    fn watch(
        self: &Arc<Self>,
        plugin: &Arc<Plugin>,
        run: Arc<Run>,
        ended: tokio::sync::oneshot::Receiver<Ended>,
        heartbeat_every: Duration,
    ) {
        let host = self.clone();
        let watcher_plugin = plugin.clone();
        let watcher_run = run.clone();
        tokio::spawn(async move {
            let end = ended.await.ok();
            host.run_ended(&watcher_plugin, &watcher_run, end).await;
        });
        tokio::spawn(heartbeat(run, heartbeat_every));
    }

    /// What one sandbox of `plugin` needs (its uid range, state directory, cgroup name, the
    /// monitors and the observer of its violations), and its run number. A per-call sandbox's
    /// violations also count toward its pool's threshold as they happen.
    async fn sandbox_launch(
        self: &Arc<Self>,
        plugin: &Arc<Plugin>,
        package: &Arc<Package>,
        per_call: Option<&Arc<per_call::Pool>>,
    ) -> Result<(sb::Launch, u64), String> {
        let id = plugin.id.clone();
        let ids = self.ids.clone();
        let base = tokio::task::spawn_blocking(move || ids.base_for(&id))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("no host uid range for the plugin: {e}"))?;
        let state_dir = self.config.state_root.join("plugins").join(&plugin.id);
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
        let number = self.next_run.fetch_add(1, Ordering::Relaxed);
        let mut observer = violation_observer(
            self.events.clone(),
            self.metrics.clone(),
            plugin.violations.clone(),
            plugin.id.clone(),
            package.trust.name(),
            (self.started_ms, number),
        );
        if let Some(pool) = per_call {
            observer = self.per_call_observer(plugin, pool, observer);
        }
        let launch = sb::Launch {
            package: package.clone(),
            state_dir,
            id_base: base,
            cgroup_name: format!("stockade-{}.{}.{number}", std::process::id(), plugin.id),
            monitor: self.config.monitor.clone(),
            observer: Some(observer),
            per_call: per_call.is_some(),
        };
        Ok((launch, number))
    }

    /// Starts one run of `package` and initializes it: the sandbox thread, the connection, the
    /// output capture. `up` is called once the sandbox's first process runs. On failure the run
    /// is gone (killed and waited for) and its last exit recorded.
    async fn launch(
        self: &Arc<Self>,
        plugin: &Arc<Plugin>,
        package: &Arc<Package>,
        up: impl FnOnce(&Arc<Self>, &Arc<Run>),
    ) -> Result<(Arc<Run>, tokio::sync::oneshot::Receiver<Ended>), StartFailure> {
        let failed = |why: String| (why, Exit::Failure);
        let (launch, number) = self
            .sandbox_launch(plugin, package, None)
            .await
            .map_err(failed)?;
        let (state_dir, cgroup_name) = (launch.state_dir.clone(), launch.cgroup_name.clone());
        let spawned =
            sb::spawn(launch).map_err(|e| failed(format!("cannot start the sandbox: {e}")))?;
        let sink = Arc::new(PluginSink {
            plugin: plugin.clone(),
            events: self.events.clone(),
            control: spawned.control.clone(),
            sent: Mutex::new((Instant::now(), 0, 0)),
            run: number,
            daemon: self.started_ms,
            metrics: self.metrics.clone(),
            trust: package.trust.name(),
            counters: package.manifest.counters.clone().into(),
        });
        let conn = Conn::start(spawned.ends.rpc, sink);
        tokio::spawn(logs::capture(
            spawned.ends.stdout,
            "stdout",
            plugin.logs.clone(),
        ));
        tokio::spawn(logs::capture(
            spawned.ends.stderr,
            "stderr",
            plugin.logs.clone(),
        ));
        let mut ended = spawned.ended;
        let (pid, cgroup_id) = tokio::select! {
            started = spawned.started => match started {
                Ok(s) => s,
                Err(_) => {
                    let end = (&mut ended).await.ok();
                    return Err((describe_end(&end), exit_kind(&end)));
                }
            },
            end = &mut ended => {
                let end = end.ok();
                return Err((describe_end(&end), exit_kind(&end)));
            }
        };
        let in_flight = in_flight_limits(package);
        let run = Arc::new(Run {
            number,
            version: package.manifest.version.to_string(),
            conn: conn.clone(),
            control: spawned.control.clone(),
            pid,
            cgroup_id,
            cgroup_name,
            started: Instant::now(),
            kill_reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
            ended: Notify::new(),
            end: Mutex::new(None),
            in_flight,
            calls: AtomicU64::new(0),
            timeouts: AtomicU32::new(0),
        });
        up(self, &run);
        let lifecycle = &package.manifest.lifecycle;
        let params = json!({
            "config": {},
            "state_dir": state_dir.to_string_lossy(),
            "plugin": { "id": plugin.id, "version": package.manifest.version.to_string() },
        });
        let init_id = uuid::Uuid::new_v4().to_string();
        let failed = tokio::select! {
            init = conn.call(&init_id, "initialize", &params, lifecycle.init_timeout) => match init {
                Ok(_) => None,
                Err(e) if e.code == code::UNAVAILABLE => {
                    // The plugin closed its socket: how its run ended is the reason (an
                    // auto-unload names the violation), not the closed connection.
                    let end = match tokio::time::timeout(Duration::from_secs(1), &mut ended).await {
                        Ok(end) => end.ok(),
                        Err(_) => {
                            run.stopping.store(true, Ordering::SeqCst);
                            run.control.send(Request::Kill(libc::SIGKILL));
                            (&mut ended).await.ok()
                        }
                    };
                    Some((format!("it ended before answering initialize: {}", describe_end(&end)), end))
                }
                Err(e) => {
                    run.stopping.store(true, Ordering::SeqCst);
                    run.control.send(Request::Kill(libc::SIGKILL));
                    let end = (&mut ended).await.ok();
                    Some((format!("initialize failed: {} ({})", e.message, e.code), end))
                }
            },
            end = &mut ended => {
                let end = end.ok();
                Some((format!("it ended before answering initialize: {}", describe_end(&end)), end))
            }
        };
        if let Some((why, end)) = failed {
            plugin
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last_exit = Some(describe_end_json(&end));
            finish(&run, &end);
            return Err((why, exit_kind(&end)));
        }
        Ok((run, ended))
    }

    /// `plugin.upgrade`: the new version starts in a second sandbox and is initialized while the
    /// old one serves; then new calls go to the new one, the old one's calls in flight finish
    /// (until the longest call timeout of its methods), and the old one is stopped. When the new
    /// one cannot start or initialize, the old one keeps serving and the upgrade fails.
    async fn upgrade_package(
        self: &Arc<Self>,
        id: &str,
        dir: &Path,
        allow_downgrade: Option<u32>,
    ) -> Result<Value, RpcError> {
        let plugin = self.plugin(id)?;
        let (package, methods) = self.verify(dir, allow_downgrade).await?;
        if package.manifest.id != id {
            return Err(refusal(
                ccode::BAD_PACKAGE,
                format!(
                    "{} is the package of plugin `{}`, not `{id}`",
                    dir.display(),
                    package.manifest.id
                ),
                Some("upgrade a plugin with a newer package of the same id"),
            ));
        }
        let _op = plugin.op.lock().await;
        let (old, old_version, old_longest) = {
            let st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            if *st.tracker.state() != State::Active || !st.wanted {
                return Err(refusal(
                    code::UNAVAILABLE,
                    format!(
                        "plugin `{id}` is {}; only an active plugin is upgraded",
                        st.tracker.state().name(),
                    ),
                    Some("`stockade plugin reload ID` restarts a plugin that is not active"),
                ));
            }
            let longest = st
                .package
                .manifest
                .methods
                .values()
                .map(|m| m.timeout)
                .max()
                .unwrap_or_default();
            if st.pool.is_some() != package.manifest.per_call().is_some() {
                return Err(refusal(
                    ccode::BAD_PACKAGE,
                    format!("the new package of `{id}` changes its `mode`; an upgrade keeps it"),
                    Some("unload the plugin and load the new package"),
                ));
            }
            (
                st.run.clone(),
                st.package.manifest.version.to_string(),
                longest,
            )
        };
        let new_version = package.manifest.version.to_string();
        let stage = |stage: &str, extra: Value| {
            let mut e = json!({
                "type": "upgrade",
                "at_ms": now_ms(),
                "plugin": id,
                "from": old_version,
                "to": new_version,
                "stage": stage,
            });
            if let (Value::Object(e), Value::Object(extra)) = (&mut e, extra) {
                e.extend(extra);
            }
            e
        };
        self.events.send(stage("starting", json!({})));
        if package.manifest.per_call().is_some() {
            let stages = |name: &str, extra: Value| self.events.send(stage(name, extra));
            return self
                .upgrade_per_call(
                    &plugin,
                    package,
                    methods,
                    allow_downgrade,
                    old_longest,
                    stages,
                )
                .await;
        }
        let (run, ended) = match self.launch(&plugin, &package, |_, _| {}).await {
            Ok(r) => r,
            Err((why, _)) => {
                self.events.send(stage("failed", json!({ "reason": why })));
                return Err(refusal(
                    ccode::START_FAILED,
                    format!("the upgrade of `{id}` to {new_version} failed: {why}; {old_version} keeps serving"),
                    Some("`stockade plugin logs ID` shows what the new version wrote"),
                ));
            }
        };
        // Still the plugin that was upgraded: active, wanted, the same run serving (the operation
        // lock keeps operators out; a crash of the old run or an unload's mark does not).
        let eligible = |st: &PluginState| -> Result<(), &'static str> {
            let same = match (&st.run, &old) {
                (Some(now), Some(before)) => Arc::ptr_eq(now, before),
                _ => false,
            };
            if same && st.wanted && *st.tracker.state() == State::Active {
                Ok(())
            } else if !st.wanted {
                Err("the plugin is being unloaded")
            } else {
                Err("the old version stopped while the new one started")
            }
        };
        // The ratchet moves only for an upgrade that will switch: checked first, then committed.
        let still = eligible(&plugin.state.lock().unwrap_or_else(|e| e.into_inner()));
        if still.is_ok() {
            if let Err(e) = self.commit(&package, allow_downgrade.is_some()).await {
                Host::stop_run_after_start(run, ended).await;
                self.events
                    .send(stage("failed", json!({ "reason": e.message })));
                return Err(e);
            }
        }
        let heartbeat_every = package.manifest.lifecycle.heartbeat;
        // The old run's calls may run as long as the old manifest allows.
        let drain_for = old_longest.max(Duration::from_secs(1));
        let switched = still.and_then(|()| {
            let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            eligible(&st)?;
            let stop_timeout = st.package.manifest.lifecycle.stop_timeout;
            st.tracker.set_policy(package.manifest.lifecycle.clone());
            st.package = package;
            st.methods = methods;
            st.run = Some(run.clone());
            Ok(stop_timeout)
        });
        let stop_timeout = match switched {
            Ok(t) => t,
            Err(why) => {
                Host::stop_run_after_start(run, ended).await;
                self.events.send(stage("failed", json!({ "reason": why })));
                return Err(refusal(
                    code::UNAVAILABLE,
                    format!(
                        "the upgrade of `{id}` was abandoned and its new version stopped: {why}"
                    ),
                    Some("`stockade plugin status ID` says why; upgrade again once it is active"),
                ));
            }
        };
        self.events
            .send(stage("switched", json!({ "pid": run.pid })));
        self.watch(&plugin, run, ended, heartbeat_every);
        if let Some(old) = old {
            // No call is lost: the old run stops only once its calls are answered (or their
            // timeouts passed).
            old.stopping.store(true, Ordering::SeqCst);
            let until = Instant::now() + drain_for;
            while old.calls.load(Ordering::SeqCst) > 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Host::stop_run(&old, stop_timeout).await;
        }
        self.events.send(stage("done", json!({})));
        Ok(self.status(&plugin, false))
    }

    async fn stop_run_after_start(run: Arc<Run>, ended: tokio::sync::oneshot::Receiver<Ended>) {
        run.stopping.store(true, Ordering::SeqCst);
        run.control.send(Request::Kill(libc::SIGKILL));
        let end = ended.await.ok();
        finish(&run, &end);
    }

    /// A run's (or a per-call sandbox's) monitor report: its losses counted, and a `report`
    /// event when it saw violations.
    fn record_report(&self, plugin: &Plugin, run: u64, report: &stockade::monitor::report::Report) {
        self.metrics
            .run_losses(&plugin.id, report.lost_denials, report.dropped_events);
        plugin
            .violations
            .fetch_add(report.lost_denials, Ordering::Relaxed);
        if report.violations > 0 {
            self.events.send(json!({
                "type": "report",
                "at_ms": now_ms(),
                "plugin": plugin.id,
                "run": run,
                "daemon": self.started_ms,
                "violations": report.violations,
                "lost_denials": report.lost_denials,
                "dropped_events": report.dropped_events,
                "by_layer": report.by_layer,
                "first": report.first,
                "auto_unload": report.auto_unload,
            }));
        }
    }

    /// A run ended: record how; then restart, quarantine, fail or stop, by the manifest.
    async fn run_ended(self: &Arc<Self>, plugin: &Arc<Plugin>, run: &Arc<Run>, end: Option<Ended>) {
        let summary = describe_end_json(&end);
        let reason = describe_end(&end);
        finish(run, &end);
        let kill_reason = run
            .kill_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let exit = match &end {
            Some(Ended::Ran(s)) if s.ended_by == EndReason::AutoUnloaded => Exit::AutoUnloaded,
            Some(Ended::Ran(s))
                if kill_reason.is_none() && s.ended_by == EndReason::Exited && s.exit_code == 0 =>
            {
                Exit::Clean
            }
            _ => Exit::Failure,
        };
        let reason = kill_reason.unwrap_or(reason);
        if exit == Exit::AutoUnloaded {
            let trust = plugin
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .package
                .trust
                .name();
            self.metrics.auto_unload(&plugin.id, trust);
        }
        if let Some(Ended::Ran(s)) = &end {
            if let Some(report) = &s.monitor {
                self.record_report(plugin, run.number, report);
            }
        }
        let restart = {
            let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            let current = st.run.as_ref().is_some_and(|r| r.number == run.number);
            if !current {
                return;
            }
            st.last_exit = Some(summary);
            st.run = None;
            if run.stopping.load(Ordering::SeqCst) || !st.wanted {
                // The operator's unload (or a failed start, which its caller reports).
                return;
            }
            self.decide(plugin, &mut st, exit, &reason)
        };
        if let Some(delay) = restart {
            let host = self.clone();
            let plugin = plugin.clone();
            tokio::spawn(async move { host.restart_after(&plugin, delay).await });
        }
    }

    async fn restart_after(self: &Arc<Self>, plugin: &Arc<Plugin>, mut delay: Duration) {
        loop {
            tokio::time::sleep(delay).await;
            let _op = plugin.op.lock().await;
            {
                let st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
                if !st.wanted || *st.tracker.state() != State::Restarting {
                    return;
                }
            }
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let Err((why, exit)) = self.start(plugin).await else {
                return;
            };
            // A start that failed counts as an exit of a run that never became active.
            let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            if !st.wanted {
                return;
            }
            match self.decide(plugin, &mut st, exit, &why) {
                Some(d) => delay = d,
                None => return,
            }
        }
    }

    /// The restart policy's answer to an exit, applied: a transition to restarting (the delay
    /// returned), stopped, failed or quarantined.
    fn decide(
        &self,
        plugin: &Plugin,
        st: &mut PluginState,
        exit: Exit,
        reason: &str,
    ) -> Option<Duration> {
        if exit == Exit::Failure {
            self.metrics.failure(&plugin.id);
        }
        match st.tracker.after_exit(exit, now_ms(), jitter()) {
            Decision::RestartAfter(d) => {
                st.restarts += 1;
                self.metrics.restart(&plugin.id);
                let why = format!("{reason}; restarting in {} ms", d.as_millis());
                self.transition(plugin, st, State::Restarting, &why);
                Some(d)
            }
            Decision::StayStopped => {
                self.transition(plugin, st, State::Stopped, reason);
                None
            }
            Decision::Fail(f) => {
                let why = format!("{reason}; {f}");
                self.transition(plugin, st, State::Failed(f), &why);
                None
            }
            Decision::Quarantine(_) => {
                let why = format!(
                    "{reason}; quarantined: `stockade plugin reload {}` starts it again",
                    plugin.id
                );
                self.transition(plugin, st, State::Quarantined(reason.to_string()), &why);
                None
            }
        }
    }

    /// Stops a run: `shutdown`, then SIGTERM, then a kill of the whole cgroup at `stop_timeout`.
    async fn stop_run(run: &Arc<Run>, stop_timeout: Duration) {
        run.stopping.store(true, Ordering::SeqCst);
        if run.end.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        let deadline = Instant::now() + stop_timeout;
        let ended = async {
            let polite = run
                .conn
                .call(
                    &uuid::Uuid::new_v4().to_string(),
                    "shutdown",
                    &Value::Null,
                    stop_timeout / 2,
                )
                .await;
            if polite.is_ok() {
                // Answered: give it the rest of the first half to exit on its own.
                let _ = tokio::time::timeout(stop_timeout / 2, wait_end(run)).await;
            }
            if run.end.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
                run.control.send(Request::Signal(libc::SIGTERM));
                wait_end(run).await;
            }
        };
        if tokio::time::timeout_at(deadline.into(), ended)
            .await
            .is_err()
        {
            run.control.send(Request::Kill(libc::SIGKILL));
        }
        wait_end(run).await;
    }

    /// Stops the plugin and forgets it.
    async fn unload_plugin(self: &Arc<Self>, id: &str) -> Result<Value, RpcError> {
        let plugin = self.plugin(id)?;
        // No start may follow: a restart waiting out its backoff sees this and gives up; a
        // start under way finishes first (the operation lock), then is stopped here.
        plugin
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wanted = false;
        let _op = plugin.op.lock().await;
        let (run, pool, stop_timeout) = {
            let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            st.wanted = false;
            // A per-call plugin that is quarantined or failed has retired its pool already.
            if st.run.is_some() || (st.pool.is_some() && *st.tracker.state() == State::Active) {
                self.transition(&plugin, &mut st, State::Stopping, "unload requested");
            }
            (
                st.run.clone(),
                st.pool.take(),
                st.package.manifest.lifecycle.stop_timeout,
            )
        };
        if let Some(run) = run {
            Host::stop_run(&run, stop_timeout).await;
        }
        if let Some(pool) = pool {
            // Calls running get the same grace as a long-lived plugin's shutdown.
            per_call::retire(&pool, stop_timeout).await;
        }
        {
            let mut st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            st.run = None;
            if matches!(
                st.tracker.state(),
                State::Stopping | State::Restarting | State::Verified | State::Discovered
            ) {
                self.transition(&plugin, &mut st, State::Stopped, "unloaded");
            }
        }
        self.forget(&plugin);
        Ok(self.status(&plugin, false))
    }

    /// Stops the plugin if it runs and starts it again from its package (a quarantined or failed
    /// plugin too: this is the operator's explicit request).
    async fn reload_plugin(self: &Arc<Self>, id: &str) -> Result<Value, RpcError> {
        let plugin = self.plugin(id)?;
        let dir = {
            let st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            st.package.source.clone()
        };
        self.unload_plugin(id).await?;
        // Verified again from its directory, as any load.
        self.load_package(&dir, None).await
    }

    /// `call` by `by`: refused before anything happens when the audit log cannot take its
    /// record; answered once its record (method, duration, outcome; the parameters only when
    /// the manifest says so) is committed.
    pub async fn call(
        self: &Arc<Self>,
        id: &str,
        method: &str,
        params: Value,
        by: Option<u32>,
    ) -> Result<Value, RpcError> {
        let begin = Instant::now();
        let answer = self.call_audited(id, method, params, by, begin).await;
        // Counted as answered: refused before it began, or withheld because its record could
        // not be committed, it is `audit_unavailable`.
        let (metric_plugin, metric_method) = self.call_labels(id, method);
        self.metrics.call(
            &metric_plugin,
            &metric_method,
            answer.as_ref().err().map(|e| e.code),
            begin.elapsed(),
        );
        answer
    }

    async fn call_audited(
        self: &Arc<Self>,
        id: &str,
        method: &str,
        params: Value,
        by: Option<u32>,
        begin: Instant,
    ) -> Result<Value, RpcError> {
        self.audit_ready()?;
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut logged = Value::Null;
        let outcome = self
            .call_plugin(id, method, params, &request_id, &mut logged)
            .await;
        let detail = crate::audit::CallDetail::new(
            method,
            begin.elapsed().as_secs_f64() * 1000.0,
            &logged,
            &outcome,
        );
        let record = Record::new("call", Some(id), &detail)
            .request(&request_id)
            .by(by);
        self.committed(record).await?;
        outcome
    }

    /// Checks the method and its params, then forwards the call to the active run. `logged`:
    /// the parameters as the audit log may keep them.
    async fn call_plugin(
        self: &Arc<Self>,
        id: &str,
        method: &str,
        params: Value,
        request_id: &str,
        logged: &mut Value,
    ) -> Result<Value, RpcError> {
        let plugin = self.plugin(id)?;
        let mut params = params;
        let (methods, run, timeout, per_call) = {
            let st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
            // A per-call plugin's params are `{"args", "kwargs"}`, as its schema sees them.
            let per_call = st.pool.clone().map(|pool| (pool, st.package.clone()));
            if per_call.is_some() {
                params = per_call::normalize_params(params);
            }
            let declared = st.package.manifest.methods.get(method);
            *logged = crate::audit::loggable_params(declared, &params);
            let timeout = declared.map(|m| m.timeout);
            // Counted while the run is chosen, so an upgrade that switches runs waits for it.
            let run = st.run.clone().map(CallCount::new);
            (st.methods.clone(), run, timeout, per_call)
        };
        let begin = Instant::now();
        let mark = plugin.logs.mark();
        let outcome: Result<Value, RpcError> = async {
            methods.check_call(method, &params)?;
            let active = {
                let st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
                *st.tracker.state() == State::Active
            };
            let inactive = || {
                refusal(
                    code::UNAVAILABLE,
                    format!("plugin `{id}` is not active"),
                    Some("`stockade plugin status ID` says why"),
                )
            };
            if let Some((pool, package)) = per_call.filter(|_| active) {
                let timeout = timeout.unwrap_or(stockade_policy::manifest::DEFAULT_CALL_TIMEOUT);
                let mut answer = self
                    .call_per_call(
                        &plugin, &pool, &package, method, &params, request_id, timeout,
                    )
                    .await;
                // An upgrade switched pools between this call's look and its start: once more,
                // on the pool that serves now (a retirement for any other reason stays refused).
                // The new version's checks and what is left of the call's time.
                let mut methods = methods;
                if answer.as_ref().is_err_and(per_call::refused_as_retired) {
                    let now = {
                        let st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
                        st.pool
                            .clone()
                            .filter(|p| {
                                !Arc::ptr_eq(p, &pool) && *st.tracker.state() == State::Active
                            })
                            .map(|p| (p, st.package.clone(), st.methods.clone()))
                    };
                    if let Some((pool, package, now_methods)) = now {
                        methods = now_methods;
                        methods.check_call(method, &params)?;
                        let left = timeout.saturating_sub(begin.elapsed());
                        answer = self
                            .call_per_call(
                                &plugin, &pool, &package, method, &params, request_id, left,
                            )
                            .await;
                    }
                }
                let value = answer?;
                methods.check_result(method, &value["data"]["result"])?;
                return Ok(value);
            }
            let run = run.filter(|_| active).ok_or_else(inactive)?;
            let permit = run
                .in_flight
                .get(method)
                .and_then(|s| s.clone().try_acquire_owned().ok())
                .ok_or_else(|| {
                    refusal(
                        code::UNAVAILABLE,
                        format!("`{method}` has max_in_flight calls running already"),
                        Some("retry later, or raise the method's max_in_flight"),
                    )
                })?;
            let timeout = timeout.unwrap_or(stockade_policy::manifest::DEFAULT_CALL_TIMEOUT);
            let result = run.conn.call(request_id, method, &params, timeout).await;
            drop(permit);
            match &result {
                Err(e) if e.code == code::TIMEOUT => {
                    let n = run.timeouts.fetch_add(1, Ordering::SeqCst) + 1;
                    if n >= TIMEOUTS_BEFORE_HUNG {
                        *run.kill_reason.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(format!("{n} calls in a row timed out"));
                        run.control.send(Request::Kill(libc::SIGKILL));
                    }
                }
                _ => run.timeouts.store(0, Ordering::SeqCst),
            }
            let value = result?;
            methods.check_result(method, &value)?;
            Ok(value)
        }
        .await;
        let output: Vec<Value> = plugin
            .logs
            .since(mark, 100)
            .into_iter()
            .map(|l| json!({ "stream": l.stream, "text": l.text }))
            .collect();
        let shown = match &outcome {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("error {}", e.code),
        };
        let duration_ms = begin.elapsed().as_secs_f64() * 1000.0;
        // The journal's fields (STOCKADE_PLUGIN, STOCKADE_REQUEST_ID, …; main.rs): a timeout is
        // the operator's business, every call only at debug.
        match &outcome {
            Err(e) if e.code == code::TIMEOUT => {
                tracing::warn!(plugin = %id, request_id, method, outcome = %shown, "{id}: `{method}` timed out")
            }
            _ => {
                tracing::debug!(plugin = %id, request_id, method, outcome = %shown, duration_ms, "{id}: `{method}` {shown}")
            }
        }
        self.events.send(json!({
            "type": "call",
            "at_ms": now_ms(),
            "plugin": id,
            "request_id": request_id,
            "method": method,
            "duration_ms": duration_ms,
            "outcome": shown,
            "output": output,
        }));
        outcome
    }

    /// Every plugin, taken out of the map's lock.
    fn all_plugins(&self) -> Vec<Arc<Plugin>> {
        self.plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn list(&self) -> Value {
        let plugins = self.all_plugins();
        Value::Array(plugins.iter().map(|p| self.status(p, false)).collect())
    }

    /// (active plugins, plugins known).
    pub fn counts(&self) -> (usize, usize) {
        let plugins = self.all_plugins();
        let active = plugins
            .iter()
            .filter(|p| {
                let st = p.state.lock().unwrap_or_else(|e| e.into_inner());
                *st.tracker.state() == State::Active
            })
            .count();
        (active, plugins.len())
    }

    pub fn audit_stats(&self) -> stockade_state::audit::Stats {
        self.config.audit.stats()
    }

    /// Writes what the event export holds (at most `within`) and stops it.
    pub fn close_export(&self, within: Duration) {
        if let Some(export) = &self.events.export {
            export.close(within);
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Each loaded plugin's lifecycle state and trust level.
    pub fn plugin_states(&self) -> Vec<(String, String)> {
        self.all_plugins()
            .iter()
            .map(|p| {
                let st = p.state.lock().unwrap_or_else(|e| e.into_inner());
                (
                    st.tracker.state().name().to_string(),
                    st.package.trust.name().to_string(),
                )
            })
            .collect()
    }

    /// What the kernel counts of the monitors' programs (none without the monitors).
    pub fn program_stats(&self) -> Vec<stockade::monitor::ProgramStats> {
        self.config
            .monitor
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).program_stats())
            .unwrap_or_default()
    }

    /// A call's labels, bounded: a loaded plugin's id (else `(unknown)`), a method it declares
    /// (else `(undeclared)`).
    fn call_labels(&self, id: &str, method: &str) -> (String, String) {
        let Ok(plugin) = self.plugin(id) else {
            return ("(unknown)".into(), "(undeclared)".into());
        };
        let st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
        let declared = st.methods.names().any(|m| m == method);
        (
            id.to_string(),
            if declared { method } else { "(undeclared)" }.to_string(),
        )
    }

    pub fn status_of(&self, id: &str) -> Result<Value, RpcError> {
        let plugin = self.plugin(id)?;
        Ok(self.status(&plugin, true))
    }

    /// The plugin's kept output and a receiver of what follows (which ends with the plugin).
    pub fn logs_of(
        &self,
        id: &str,
    ) -> Result<(Vec<logs::Line>, broadcast::Receiver<logs::Line>), RpcError> {
        let plugin = self.plugin(id)?;
        Ok(plugin.logs.follow())
    }

    fn status(&self, plugin: &Plugin, history: bool) -> Value {
        let st = plugin.state.lock().unwrap_or_else(|e| e.into_inner());
        let m = &st.package.manifest;
        let state = st.tracker.state();
        let reason = match state {
            State::Failed(r) | State::Quarantined(r) => Some(r.clone()),
            _ => None,
        };
        let mut v = json!({
            "id": plugin.id,
            "name": m.name,
            "version": m.version.to_string(),
            "trust": st.package.trust.name(),
            "signer": signer_json(&st.package),
            "dir": st.package.source,
            "runs_from": st.package.dir,
            "entry_sha3_512": st.package.entry_sha3_512,
            "state": state.name(),
            "reason": reason,
            "restarts": st.restarts,
            "rpc_violations": plugin.rpc_violations.load(Ordering::Relaxed),
            "violations": plugin.violations.load(Ordering::Relaxed),
            "usage": st.run.as_ref().zip(self.layout.as_ref()).map(|(r, layout)| {
                stockade::cgroup::usage(layout, &r.cgroup_name)
            }),
            "methods": st.methods.names().collect::<Vec<_>>(),
            "pid": st.run.as_ref().map(|r| r.pid),
            "run": st.run.as_ref().map(|r| json!({ "number": r.number, "version": r.version })),
            "cgroup_id": st.run.as_ref().map(|r| r.cgroup_id),
            "uptime_s": st.run.as_ref().map(|r| r.started.elapsed().as_secs_f64()),
            "last_exit": st.last_exit,
        });
        v["mode"] = json!(if m.per_call().is_some() {
            "per-call"
        } else {
            "service"
        });
        if let Some(pool) = &st.pool {
            v["per_call"] = pool.status();
        }
        if history {
            v["history"] = json!(st.tracker.history().collect::<Vec<_>>());
        }
        v
    }

    /// The longest `stop_timeout` of the loaded plugins: what stopping them all may take.
    pub fn longest_stop(&self) -> Duration {
        self.all_plugins()
            .iter()
            .map(|p| {
                let st = p.state.lock().unwrap_or_else(|e| e.into_inner());
                st.package.manifest.lifecycle.stop_timeout
            })
            .max()
            .unwrap_or_default()
    }

    /// Daemon shutdown: every plugin stopped, all at once.
    pub async fn stop_all(self: &Arc<Self>) {
        self.stopping.store(true, Ordering::SeqCst);
        let ids: Vec<String> = self
            .plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        // All at once: each may take its `stop_timeout`, and the service manager's stop timeout
        // is for the whole daemon.
        let stops: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let host = self.clone();
                tokio::spawn(async move {
                    let _ = host.unload_plugin(&id).await;
                })
            })
            .collect();
        for stop in stops {
            let _ = stop.await;
        }
    }
}

/// A semaphore per declared method, of its `max_in_flight` permits.
fn in_flight_limits(package: &Package) -> HashMap<String, Arc<Semaphore>> {
    package
        .manifest
        .methods
        .iter()
        .map(|(name, m)| {
            (
                name.clone(),
                Arc::new(Semaphore::new(m.max_in_flight as usize)),
            )
        })
        .collect()
}

/// Delivers the published events of the daemon's stream to their subscribers, until the host
/// is gone. A subscriber that lags behind the stream loses the oldest (counted).
async fn deliver_events(host: std::sync::Weak<Host>, mut rx: broadcast::Receiver<Arc<Value>>) {
    loop {
        match rx.recv().await {
            Ok(event) if event["type"] == "published" => {
                let Some(host) = host.upgrade() else { return };
                host.deliver(&event);
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("{n} events were not delivered to subscribers: the stream ran ahead")
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// A call counted on its run (`Run::calls`) until it is answered or given up.
struct CallCount(Arc<Run>);

impl CallCount {
    fn new(run: Arc<Run>) -> CallCount {
        run.calls.fetch_add(1, Ordering::SeqCst);
        CallCount(run)
    }
}

impl Drop for CallCount {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::ops::Deref for CallCount {
    type Target = Run;
    fn deref(&self) -> &Run {
        &self.0
    }
}

/// Why a start failed, and what kind of exit it counts as for the restart policy.
type StartFailure = (String, Exit);

/// An auto-unload for violations, or any other failure.
fn exit_kind(end: &Option<Ended>) -> Exit {
    match end {
        Some(Ended::Ran(s)) if s.ended_by == EndReason::AutoUnloaded => Exit::AutoUnloaded,
        _ => Exit::Failure,
    }
}

/// Records a run's end and wakes whoever waits for it.
fn finish(run: &Run, end: &Option<Ended>) {
    *run.end.lock().unwrap_or_else(|p| p.into_inner()) = Some(describe_end_json(end));
    run.ended.notify_waiters();
}

async fn wait_end(run: &Run) {
    loop {
        let notified = run.ended.notified();
        if run.end.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return;
        }
        notified.await;
    }
}

/// Pings the run every `interval`; a run that misses `MISSED_HEARTBEATS` in a row is killed and
/// handled as a crash.
async fn heartbeat(run: Arc<Run>, interval: Duration) {
    let mut missed = 0;
    loop {
        // Ends with the run, not at the next beat: the run (its socket, its control pipe) is
        // released when it ends.
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = wait_end(&run) => return,
        }
        if run.end.lock().unwrap_or_else(|p| p.into_inner()).is_some()
            || run.stopping.load(Ordering::SeqCst)
        {
            return;
        }
        let answer = run
            .conn
            .call(
                &uuid::Uuid::new_v4().to_string(),
                "ping",
                &Value::Null,
                interval.min(Duration::from_secs(10)),
            )
            .await;
        if run.stopping.load(Ordering::SeqCst) {
            return;
        }
        match answer {
            Ok(_) => missed = 0,
            Err(_) => {
                missed += 1;
                if missed >= MISSED_HEARTBEATS {
                    *run.kill_reason.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("missed {missed} heartbeats"));
                    run.control.send(Request::Kill(libc::SIGKILL));
                    return;
                }
            }
        }
    }
}

/// Violation and limit events sent to the event stream as the monitors see them: at most
/// `LIVE_EVENTS_PER_SEC` a second per run, the rest counted and the count sent with the next.
/// Violation events sent live per run and second; the rest are counted.
const LIVE_EVENTS_PER_SEC: u32 = 100;

fn violation_observer(
    events: Arc<Events>,
    metrics: Arc<Metrics>,
    violations: Arc<AtomicU64>,
    plugin: String,
    trust: &'static str,
    (daemon, run): (u64, u64),
) -> stockade::monitor::report::Observer {
    let mut window = Instant::now();
    let mut sent = 0u32;
    // Held back since the last event of the same type sent: violations and limits apart.
    let (mut held_violations, mut held_limits) = (0u64, 0u64);
    Box::new(move |event: &Event| {
        // The `rpc` layer's are counted and sent by the plugin's sink (`PluginSink`).
        if event.layer == Some(Layer::Rpc) {
            return;
        }
        // Counted before the stream's rate limit: every one.
        let limit = event.kind == EventType::Limit;
        let what = if limit {
            event.action.unwrap_or("other")
        } else {
            event.layer.map_or("unknown", |l| l.name())
        };
        metrics.violation(&plugin, trust, limit, what);
        if !limit {
            violations.fetch_add(1, Ordering::Relaxed);
        }
        if window.elapsed() >= Duration::from_secs(1) {
            window = Instant::now();
            sent = 0;
        }
        let held = if limit {
            &mut held_limits
        } else {
            &mut held_violations
        };
        if sent >= LIVE_EVENTS_PER_SEC {
            *held += 1;
            return;
        }
        sent += 1;
        let mut e = serde_json::to_value(event).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut e {
            m.insert(
                "type".into(),
                json!(if limit { "limit" } else { "violation" }),
            );
            m.insert("at_ms".into(), json!(now_ms()));
            m.insert("plugin".into(), json!(plugin));
            m.insert("run".into(), json!(run));
            m.insert("daemon".into(), json!(daemon));
            if *held > 0 {
                m.insert("suppressed_before".into(), json!(std::mem::take(held)));
            }
        }
        events.send(e);
    })
}

/// A number in [0, 1) for the backoff's jitter.
fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

fn describe_end(end: &Option<Ended>) -> String {
    match end {
        None => "the sandbox thread ended without a result".into(),
        Some(Ended::Refused(e)) => match &e.hint {
            Some(h) => format!("{} (hint: {h})", e.cause),
            None => e.cause.clone(),
        },
        Some(Ended::Failed(e)) => e.clone(),
        Some(Ended::Ran(s)) => match s.ended_by {
            EndReason::Exited => format!("exited with status {}", s.exit_status.unwrap_or(0)),
            EndReason::AutoUnloaded => {
                let why = s
                    .monitor
                    .as_ref()
                    .and_then(|r| r.first.first())
                    .map(|e| {
                        format!(
                            "{} {}",
                            e.layer.map_or("?", |l| l.name()),
                            e.object
                                .as_ref()
                                .map(|o| o.text().into_owned())
                                .unwrap_or_default()
                        )
                    })
                    .unwrap_or_default();
                format!("auto-unloaded for violations ({why})")
            }
            EndReason::SetupFailed | EndReason::ExecFailed => format!(
                "{}: {}",
                s.error.as_deref().unwrap_or("set-up failed"),
                std::io::Error::from_raw_os_error(s.errno.unwrap_or(0))
            ),
            other => format!(
                "{} (signal {})",
                serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                s.signal.unwrap_or(0)
            ),
        },
    }
}

fn describe_end_json(end: &Option<Ended>) -> Value {
    let mut v = json!({ "at_ms": now_ms(), "reason": describe_end(end) });
    if let Some(Ended::Ran(s)) = end {
        v["ended_by"] = json!(s.ended_by);
        v["exit_status"] = json!(s.exit_status);
        v["signal"] = json!(s.signal);
        v["violations"] = json!(s.monitor.as_ref().map(|r| r.violations));
    }
    v
}

/// A write to the registry, done in order by [`write_registry`].
enum RegistryWrite {
    /// A lifecycle transition of this host's plugin: failures are logged (the audit log has
    /// the transition; the next state written corrects the row).
    Installation(Installation),
    /// A version committed to: its result goes back to the committer.
    Commit(
        Box<Commit>,
        tokio::sync::oneshot::Sender<Result<(), StateError>>,
    ),
    /// Everything before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

async fn write_registry(
    storage: Arc<dyn Storage>,
    mut writes: mpsc::UnboundedReceiver<RegistryWrite>,
) {
    while let Some(w) = writes.recv().await {
        match w {
            RegistryWrite::Installation(row) => {
                if let Err(e) = storage.set_installation(&row).await {
                    tracing::warn!(plugin = %row.plugin, "{}: registry: {e}", row.plugin);
                }
            }
            RegistryWrite::Commit(commit, done) => {
                let _ = done.send(storage.commit_version(&commit).await);
            }
            RegistryWrite::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// The keyring verifications use now.
fn keyring_now(host: &Host) -> Arc<Keyring> {
    host.keyring
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

fn signer_json(package: &Package) -> Value {
    match &package.signer {
        Some(s) => json!({
            "key": s.key.to_string(),
            "pinned_as": s.origin,
            "sequence": s.sequence,
            "signed_at": stockade_trust::statement::time_text(s.signed_at),
            "expires": s.expires.map(stockade_trust::statement::time_text),
            "digest": s.digest_hex(),
        }),
        None => Value::Null,
    }
}
