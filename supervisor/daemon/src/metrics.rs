//! Prometheus metrics at `/metrics` (`--metrics ADDR` or `[metrics] listen`; off by default),
//! in the OpenMetrics text format through the `prometheus-client` crate, served by hyper.
//!
//! Counters move where the thing happens (a load, a run's end, a restart, a call, each
//! violation the sandbox's tracker records — before the event stream's rate limit, so the
//! count is exact); gauges (plugins by state, the audit log, the BPF programs' own counts) are
//! read when scraped. Label values are bounded: a plugin id is one a package signed by a key the
//! host accepts declared (a call to a plugin not loaded counts as `(unknown)`), a method a
//! declared one (else `(undeclared)`), an outcome one of a fixed set — a caller cannot mint
//! series with made-up names.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::host::Host;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Plugin {
    plugin_id: String,
    trust_level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginId {
    plugin_id: String,
}

/// A plugin's own counter (`counters` of its manifest: bounded by what its signer declared).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCounter {
    plugin_id: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Trust {
    trust_level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByLayer {
    plugin_id: String,
    trust_level: String,
    layer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByLimit {
    plugin_id: String,
    trust_level: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    plugin_id: String,
    method: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallMethod {
    plugin_id: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventType {
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginState {
    state: String,
    trust_level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Sink {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Program {
    program: String,
}

#[derive(Clone)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// 10 ms to 41 s.
fn load_buckets() -> &'static [f64] {
    static B: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    B.get_or_init(|| exponential_buckets(0.01, 2.0, 13).collect())
}

/// 50 µs to 26 s.
fn call_buckets() -> &'static [f64] {
    static B: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    B.get_or_init(|| exponential_buckets(0.00005, 2.0, 20).collect())
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    loads: Family<Outcome, Counter>,
    load_seconds: Family<Trust, Histogram, Buckets>,
    failures: Family<PluginId, Counter>,
    events_dropped: Family<PluginId, Counter>,
    restarts: Family<PluginId, Counter>,
    violations: Family<ByLayer, Counter>,
    limits: Family<ByLimit, Counter>,
    auto_unloads: Family<Plugin, Counter>,
    calls: Family<Call, Counter>,
    call_seconds: Family<CallMethod, Histogram, Buckets>,
    lost_denials: Family<PluginId, Counter>,
    dropped_events: Family<PluginId, Counter>,
    events: Family<EventType, Counter>,
    exported: Family<Sink, Counter>,
    export_failures: Family<Sink, Counter>,
    export_held_back: Family<Reason, Counter>,
    plugin_counters: Family<PluginCounter, Counter>,
    // Read when scraped.
    plugins: Family<PluginState, Gauge>,
    active: Family<Trust, Gauge>,
    audit_committed: Gauge,
    audit_queued: Gauge,
    audit_failing: Gauge,
    bpf_runs: Family<Program, Counter>,
    bpf_run_seconds: Family<Program, Counter<f64>>,
    bpf_misses: Family<Program, Counter>,
    /// One scrape at a time: the gauges are cleared and set for each.
    scrape: Mutex<()>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("stockade");
        let m = Metrics {
            loads: Family::default(),
            load_seconds: Family::new_with_constructor(Buckets(load_buckets())),
            failures: Family::default(),
            events_dropped: Family::default(),
            restarts: Family::default(),
            violations: Family::default(),
            limits: Family::default(),
            auto_unloads: Family::default(),
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(Buckets(call_buckets())),
            lost_denials: Family::default(),
            dropped_events: Family::default(),
            events: Family::default(),
            exported: Family::default(),
            export_failures: Family::default(),
            export_held_back: Family::default(),
            plugin_counters: Family::default(),
            plugins: Family::default(),
            active: Family::default(),
            audit_committed: Gauge::default(),
            audit_queued: Gauge::default(),
            audit_failing: Gauge::default(),
            bpf_runs: Family::default(),
            bpf_run_seconds: Family::default(),
            bpf_misses: Family::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "plugin_loads",
            "Plugin loads asked of the daemon, by outcome (ok or error)",
            m.loads.clone(),
        );
        r.register_with_unit(
            "plugin_load_duration",
            "From a load's request to the plugin active (verification, sandbox, initialize)",
            Unit::Seconds,
            m.load_seconds.clone(),
        );
        r.register(
            "plugin_failures",
            "Runs that failed (a crash, a failed start, a kill for missed heartbeats or hung calls)",
            m.failures.clone(),
        );
        r.register(
            "sandbox_process_restarts",
            "Restarts of a plugin's sandbox by its restart policy",
            m.restarts.clone(),
        );
        r.register(
            "violations",
            "Violations by the layer that refused (or saw) them, every one counted",
            m.violations.clone(),
        );
        r.register(
            "limits",
            "Resource limits reached (memory, pids, descriptors, disk)",
            m.limits.clone(),
        );
        r.register(
            "auto_unloads",
            "Runs ended by the policy's violation threshold",
            m.auto_unloads.clone(),
        );
        r.register(
            "calls",
            "Calls of plugin methods by outcome (ok, timeout, method_not_found, invalid_params, invalid_result, unavailable, unknown_plugin, audit_unavailable, error)",
            m.calls.clone(),
        );
        r.register_with_unit(
            "call_duration",
            "A call's time in the daemon, from the request to the answer",
            Unit::Seconds,
            m.call_seconds.clone(),
        );
        r.register(
            "plugin_events_dropped",
            "Published events not delivered to a subscribing plugin (past its rate, or its queue half full)",
            m.events_dropped.clone(),
        );
        r.register(
            "plugin_counter",
            "The plugins' own counters (metrics.add of a name their manifest's `counters` declares)",
            m.plugin_counters.clone(),
        );
        r.register(
            "monitor_lost_denials",
            "Denials whose events the ring buffer could not take (counted as violations)",
            m.lost_denials.clone(),
        );
        r.register(
            "monitor_dropped_events",
            "Monitor events the ring buffer could not take",
            m.dropped_events.clone(),
        );
        r.register(
            "events",
            "Events on the daemon's event stream, by type",
            m.events.clone(),
        );
        r.register(
            "export_records",
            "Records the event export wrote, by sink (file, journald)",
            m.exported.clone(),
        );
        r.register(
            "export_failures",
            "Records the event export could not write, by sink (each is also told in the export)",
            m.export_failures.clone(),
        );
        r.register(
            "export_held_back",
            "Events the export held back (rate_limited, queue_full), each counted in the export",
            m.export_held_back.clone(),
        );
        r.register(
            "plugins",
            "Loaded plugins by lifecycle state",
            m.plugins.clone(),
        );
        r.register(
            "plugins_active",
            "Active plugins by trust level",
            m.active.clone(),
        );
        r.register(
            "audit_records_committed",
            "The audit chain's last committed record",
            m.audit_committed.clone(),
        );
        r.register(
            "audit_queue_length",
            "Audit records waiting for the database",
            m.audit_queued.clone(),
        );
        r.register(
            "audit_failing",
            "1 while the audit log cannot commit (or has stopped)",
            m.audit_failing.clone(),
        );
        r.register(
            "bpf_program_runs",
            "Runs of each monitor program (moving while kernel.bpf_stats_enabled is 1)",
            m.bpf_runs.clone(),
        );
        r.register_with_unit(
            "bpf_program_run",
            "Time in each monitor program (moving while kernel.bpf_stats_enabled is 1)",
            Unit::Seconds,
            m.bpf_run_seconds.clone(),
        );
        r.register(
            "bpf_program_recursion_misses",
            "Runs of each monitor program the kernel skipped (already running on that CPU)",
            m.bpf_misses.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn load(&self, ok: bool, trust: Option<&str>, took: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.loads
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
        if let (true, Some(t)) = (ok, trust) {
            self.load_seconds
                .get_or_create(&Trust {
                    trust_level: t.into(),
                })
                .observe(took.as_secs_f64());
        }
    }

    pub fn failure(&self, plugin: &str) {
        self.failures.get_or_create(&id(plugin)).inc();
    }

    pub fn event_dropped(&self, plugin: &str) {
        self.events_dropped.get_or_create(&id(plugin)).inc();
    }

    pub fn restart(&self, plugin: &str) {
        self.restarts.get_or_create(&id(plugin)).inc();
    }

    pub fn auto_unload(&self, plugin: &str, trust: &str) {
        self.auto_unloads
            .get_or_create(&Plugin {
                plugin_id: plugin.into(),
                trust_level: trust.into(),
            })
            .inc();
    }

    /// One violation (`limit`: false) or limit reached, as the sandbox's tracker recorded it.
    pub fn violation(&self, plugin: &str, trust: &str, limit: bool, what: &str) {
        if limit {
            self.limits
                .get_or_create(&ByLimit {
                    plugin_id: plugin.into(),
                    trust_level: trust.into(),
                    limit: what.into(),
                })
                .inc();
        } else {
            self.violations
                .get_or_create(&ByLayer {
                    plugin_id: plugin.into(),
                    trust_level: trust.into(),
                    layer: what.into(),
                })
                .inc();
        }
    }

    /// What a run's end reported of the monitors' losses.
    pub fn run_losses(&self, plugin: &str, lost_denials: u64, dropped_events: u64) {
        if lost_denials > 0 {
            self.lost_denials
                .get_or_create(&id(plugin))
                .inc_by(lost_denials);
        }
        if dropped_events > 0 {
            self.dropped_events
                .get_or_create(&id(plugin))
                .inc_by(dropped_events);
        }
    }

    /// `value` added to a plugin's declared counter `name`.
    pub fn plugin_counter(&self, plugin: &str, name: &str, value: u64) {
        self.plugin_counters
            .get_or_create(&PluginCounter {
                plugin_id: plugin.into(),
                name: name.into(),
            })
            .inc_by(value);
    }

    /// A call: `plugin` and `method` already bounded (see the module's comment).
    pub fn call(&self, plugin: &str, method: &str, code: Option<i64>, took: Duration) {
        self.calls
            .get_or_create(&Call {
                plugin_id: plugin.into(),
                method: method.into(),
                outcome: outcome(code).into(),
            })
            .inc();
        self.call_seconds
            .get_or_create(&CallMethod {
                plugin_id: plugin.into(),
                method: method.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn exported(&self, sink: &str) {
        self.exported
            .get_or_create(&Sink { sink: sink.into() })
            .inc();
    }

    pub fn export_failed(&self, sink: &str) {
        self.export_failures
            .get_or_create(&Sink { sink: sink.into() })
            .inc();
    }

    pub fn export_held_back(&self, reason: &str) {
        self.export_held_back
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn event(&self, kind: &str) {
        self.events
            .get_or_create(&EventType {
                r#type: kind.into(),
            })
            .inc();
    }

    /// The text a scrape gets: the gauges read from `host` now.
    fn render(&self, host: &Host) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.plugins.clear();
        self.active.clear();
        for (state, trust) in host.plugin_states() {
            self.plugins
                .get_or_create(&PluginState {
                    state: state.clone(),
                    trust_level: trust.clone(),
                })
                .inc();
            if state == "active" {
                self.active
                    .get_or_create(&Trust { trust_level: trust })
                    .inc();
            }
        }
        // The levels with none active, as 0, so that a dashboard sees them.
        for level in ["builtin", "trusted", "untrusted"] {
            self.active
                .get_or_create(&Trust {
                    trust_level: level.into(),
                })
                .inc_by(0);
        }
        let audit = host.audit_stats();
        self.audit_committed.set(audit.committed);
        self.audit_queued.set(audit.queued as i64);
        self.audit_failing.set(i64::from(
            audit.failing.is_some() || audit.stopped.is_some(),
        ));
        for p in host.program_stats() {
            let label = Program { program: p.name };
            self.bpf_runs
                .get_or_create(&label)
                .inner()
                .store(p.run_count, std::sync::atomic::Ordering::Relaxed);
            let seconds = self.bpf_run_seconds.get_or_create(&label);
            let now = seconds.get();
            seconds.inc_by((p.run_time_ns as f64 / 1e9 - now).max(0.0));
            self.bpf_misses
                .get_or_create(&label)
                .inner()
                .store(p.recursion_misses, std::sync::atomic::Ordering::Relaxed);
        }
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!("metrics: cannot encode: {e}");
        }
        text
    }
}

fn id(plugin: &str) -> PluginId {
    PluginId {
        plugin_id: plugin.into(),
    }
}

/// A call's outcome label: a fixed set, whatever error code a plugin answers.
fn outcome(code: Option<i64>) -> &'static str {
    use stockade::control::code as c;
    use stockade::rpc::code as r;
    match code {
        None => "ok",
        Some(r::TIMEOUT) => "timeout",
        Some(r::METHOD_NOT_FOUND) => "method_not_found",
        Some(r::INVALID_PARAMS) => "invalid_params",
        Some(r::INVALID_RESULT) => "invalid_result",
        Some(r::UNAVAILABLE) => "unavailable",
        Some(c::UNKNOWN_PLUGIN) => "unknown_plugin",
        Some(crate::audit::AUDIT_UNAVAILABLE) => "audit_unavailable",
        Some(_) => "error",
    }
}

/// Binds the metrics address. An address in use (or not this host's) is the caller's to report:
/// the daemon serves plugins without metrics rather than not at all.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Connections served at once; more wait in the kernel's backlog.
const CONNECTIONS: usize = 16;

/// Serves `/metrics` until the daemon stops.
pub async fn serve(listener: TcpListener, host: Arc<Host>) {
    let limit = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, say: the plugins matter more; try again shortly.
                tracing::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let host = host.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let host = host.clone();
                async move { Ok::<_, Infallible>(respond(&host, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            // A scraper keeps its connection; a client that holds one and says nothing is cut.
            let _ = tokio::time::timeout(Duration::from_secs(300), conn).await;
            drop(permit);
        });
    }
}

fn respond(host: &Host, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            host.metrics().render(host),
        ),
        (_, "/metrics") => {
            let mut r = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "GET /metrics\n".into(),
            );
            r.headers_mut().insert(
                "allow",
                hyper::header::HeaderValue::from_static("GET, HEAD"),
            );
            r
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "Stockade serves its metrics at /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_what_prometheus_users_expect() {
        let m = Metrics::new();
        m.call("echo", "echo", None, Duration::from_millis(2));
        m.call(
            "echo",
            "(undeclared)",
            Some(-32601),
            Duration::from_millis(1),
        );
        m.call("echo", "echo", Some(-77), Duration::from_millis(1));
        m.violation("bad", "untrusted", false, "namespace");
        m.load(true, Some("trusted"), Duration::from_millis(300));
        m.restart("crashy");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        for line in [
            "stockade_calls_total{plugin_id=\"echo\",method=\"echo\",outcome=\"ok\"} 1",
            "stockade_calls_total{plugin_id=\"echo\",method=\"(undeclared)\",outcome=\"method_not_found\"} 1",
            "stockade_calls_total{plugin_id=\"echo\",method=\"echo\",outcome=\"error\"} 1",
            "stockade_violations_total{plugin_id=\"bad\",trust_level=\"untrusted\",layer=\"namespace\"} 1",
            "stockade_plugin_load_duration_seconds_count{trust_level=\"trusted\"} 1",
            "stockade_sandbox_process_restarts_total{plugin_id=\"crashy\"} 1",
            "# TYPE stockade_call_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
    }
}
