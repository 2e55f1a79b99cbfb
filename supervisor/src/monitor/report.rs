//! Per-sandbox violation accounting: the policy's threshold over a sliding window, the report
//! `stockade run` prints at exit, and the `--events` JSON lines.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use stockade_policy::syscalls;

use super::attribute::{Event, EventType};
use super::event::Object;
use super::Counters;

/// Events kept for the report (the rest are counted, and written by `--events`).
pub const FIRST_EVENTS: usize = 10;

/// What the policy's `[enforcement]` asks for.
#[derive(Debug, Clone, Copy)]
pub struct Threshold {
    pub violations: u32,
    pub window: Duration,
    /// Kill the sandbox when crossed (enforce mode, action kill); otherwise report only.
    pub kill: bool,
}

/// Why a sandbox was auto-unloaded.
#[derive(Debug, Clone, Serialize)]
pub struct AutoUnload {
    /// The violation that crossed the threshold.
    pub violation: Event,
    pub threshold: u32,
    pub window_ms: u64,
    /// Whether the network program had already killed the offender in the kernel.
    pub killed_in_kernel: bool,
    /// From the violation (its kernel timestamp) to the moment the supervisor saw every process
    /// of the sandbox gone: an upper bound of the enforcement latency.
    pub kill_latency_ms: Option<f64>,
}

/// The violation report of one sandbox.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub violations: u64,
    pub by_layer: BTreeMap<String, u64>,
    pub by_action: BTreeMap<String, u64>,
    /// Refusals by something that is not a Stockade layer (file modes, capabilities).
    pub refused: u64,
    /// Files opened (counted when every open is traced, with `--events`).
    pub opens: u64,
    /// Resource-limit events received (`kernel.limits` counts every time a limit answered).
    pub limits: u64,
    /// The first of them.
    pub first_limits: Vec<Event>,
    pub first: Vec<Event>,
    /// Events the ring buffer had no room for: lost, but counted.
    pub dropped_events: u64,
    /// Of those, the ones that may have been violations: counted as violations (`by_layer`:
    /// "unknown (event lost)").
    pub lost_denials: u64,
    pub processes_started: u64,
    pub execs: u64,
    /// Whether the syscall tracepoint watched the sandbox (`[monitor] syscall_tracepoint`):
    /// without it `syscalls` and the counts are zero, and only seccomp's kills, the network and
    /// the LSM programs report denials.
    pub syscall_tracepoint: bool,
    pub syscalls: u64,
    /// Per-syscall counts by name.
    pub syscall_counts: BTreeMap<String, u64>,
    pub auto_unload: Option<AutoUnload>,
    /// Monitors that were not active for this sandbox, and why.
    pub degraded: Vec<String>,
    /// What the programs counted in the kernel, independent of the ring buffer: network
    /// denials here equal the network violations received plus those dropped.
    pub kernel: Counters,
}

/// A writer of JSON lines that stops at `cap` bytes without splitting a line: the lines that
/// do not fit are counted (`not_written`), and one last line says how many when it is dropped.
pub struct CappedLines<W: Write> {
    inner: W,
    cap: u64,
    written: u64,
    full: bool,
    line: Vec<u8>,
    not_written: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<W: Write> CappedLines<W> {
    pub fn new(inner: W, cap: u64) -> CappedLines<W> {
        CappedLines {
            inner,
            cap,
            written: 0,
            full: false,
            line: Vec::new(),
            not_written: Default::default(),
        }
    }

    /// The count of lines left out, readable after the writer is gone.
    pub fn not_written(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.not_written.clone()
    }
}

impl<W: Write> Write for CappedLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for chunk in buf.split_inclusive(|b| *b == b'\n') {
            self.line.extend_from_slice(chunk);
            if chunk.ends_with(b"\n") {
                let line = std::mem::take(&mut self.line);
                // A prefix of the stream: once one line does not fit, no later one is written.
                if self.written + line.len() as u64 <= self.cap && !self.full {
                    self.inner.write_all(&line)?;
                    self.written += line.len() as u64;
                } else {
                    self.full = true;
                    self.not_written
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for CappedLines<W> {
    fn drop(&mut self) {
        let n = self.not_written.load(std::sync::atomic::Ordering::Relaxed);
        if n > 0 {
            let _ = writeln!(
                self.inner,
                "{{\"type\":\"events_not_written\",\"count\":{n},\"cap_bytes\":{}}}",
                self.cap
            );
        }
        let _ = self.inner.flush();
    }
}

/// Sees each violation and limit event as it is recorded (the daemon's live event stream).
pub type Observer = Box<dyn FnMut(&Event) + Send>;

/// Counts a sandbox's events as they arrive and decides when its threshold is crossed.
pub struct Tracker {
    threshold: Threshold,
    recent: VecDeque<f64>,
    report: Report,
    events_out: Option<Box<dyn Write>>,
    write_error: Option<std::io::Error>,
    observer: Option<Observer>,
}

impl Tracker {
    pub fn new(threshold: Threshold, events_out: Option<Box<dyn Write>>) -> Tracker {
        Tracker {
            threshold,
            recent: VecDeque::new(),
            report: Report::default(),
            events_out,
            write_error: None,
            observer: None,
        }
    }

    /// Hands every violation and limit event to `observer` as it is recorded.
    pub fn observe(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }

    pub fn note_tracepoint(&mut self, on: bool) {
        self.report.syscall_tracepoint = on;
    }

    pub fn note_degraded(&mut self, what: String) {
        self.report.degraded.push(what);
    }

    /// Records one event; returns true when it crossed the threshold and the sandbox must be
    /// killed now.
    pub fn record(&mut self, ev: Event) -> bool {
        if let Some(out) = self.events_out.as_mut() {
            if self.write_error.is_none() {
                let line = serde_json::to_string(&ev).unwrap_or_default();
                if let Err(e) = writeln!(out, "{line}") {
                    self.write_error = Some(e);
                }
            }
        }
        if matches!(ev.kind, EventType::Violation | EventType::Limit) {
            if let Some(observer) = self.observer.as_mut() {
                observer(&ev);
            }
        }
        match ev.kind {
            EventType::Violation => {}
            EventType::Refused => {
                self.report.refused += 1;
                return false;
            }
            EventType::Open => {
                self.report.opens += 1;
                return false;
            }
            EventType::Limit => {
                self.report.limits += 1;
                if self.report.first_limits.len() < FIRST_EVENTS {
                    self.report.first_limits.push(ev);
                }
                return false;
            }
            _ => return false,
        }
        let r = &mut self.report;
        r.violations += 1;
        if let Some(layer) = ev.layer {
            *r.by_layer.entry(layer.name().to_string()).or_default() += 1;
        }
        if let Some(action) = ev.action {
            *r.by_action.entry(action.to_string()).or_default() += 1;
        }
        if r.first.len() < FIRST_EVENTS {
            r.first.push(ev.clone());
        }
        if r.auto_unload.is_some() {
            return false;
        }
        if self.window_crossed(ev.t_ms) {
            self.report.auto_unload = Some(AutoUnload {
                killed_in_kernel: ev.killed_in_kernel,
                violation: ev,
                threshold: self.threshold.violations,
                window_ms: self.threshold.window.as_millis() as u64,
                kill_latency_ms: None,
            });
            return true;
        }
        false
    }

    /// `n` more possible violations whose events the full ring buffer dropped (the kernel counted them), seen
    /// at `t_ms`. They are violations: otherwise a plugin could fill the buffer first and then
    /// try the forbidden thing unseen. Returns true when they crossed the threshold.
    pub fn record_lost(&mut self, n: u64, t_ms: f64) -> bool {
        if n == 0 {
            return false;
        }
        let r = &mut self.report;
        r.violations += n;
        r.lost_denials += n;
        *r.by_layer.entry("unknown (event lost)".into()).or_default() += n;
        if r.auto_unload.is_some() {
            return false;
        }
        let mut crossed = false;
        for _ in 0..n.min(u64::from(self.threshold.violations.max(1))) {
            crossed |= self.window_crossed(t_ms);
        }
        if !crossed {
            return false;
        }
        self.report.auto_unload = Some(AutoUnload {
            killed_in_kernel: false,
            violation: Event {
                t_ms,
                kind: EventType::Violation,
                pid: 0,
                tid: 0,
                layer: None,
                action: Some("lost"),
                syscall: None,
                object: Some(Object::from(format!(
                    "{n} possible violation{} whose events the full ring buffer dropped",
                    if n == 1 { "" } else { "s" }
                ))),
                errno: None,
                fd: None,
                killed_in_kernel: false,
            },
            threshold: self.threshold.violations,
            window_ms: self.threshold.window.as_millis() as u64,
            kill_latency_ms: None,
        });
        true
    }

    /// Adds one violation at `t_ms` to the sliding window; true when the threshold is crossed
    /// and the policy kills.
    fn window_crossed(&mut self, t_ms: f64) -> bool {
        let window_ms = self.threshold.window.as_secs_f64() * 1000.0;
        self.recent.push_back(t_ms);
        // Only the last `threshold` times matter: memory stays bounded in report mode too.
        while self.recent.len() > self.threshold.violations.max(1) as usize {
            self.recent.pop_front();
        }
        while let Some(&t) = self.recent.front() {
            if t_ms - t > window_ms {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.threshold.kill
            && self.recent.len() as u64 >= u64::from(self.threshold.violations.max(1))
    }

    pub fn auto_unloaded(&self) -> bool {
        self.report.auto_unload.is_some()
    }

    /// `t_ms` (on the events' time line) at which every process was seen gone.
    pub fn all_dead_at(&mut self, t_ms: f64) {
        if let Some(a) = self.report.auto_unload.as_mut() {
            a.kill_latency_ms = Some((t_ms - a.violation.t_ms).max(0.0));
        }
    }

    /// Adds what only the kernel counted, and returns the report.
    pub fn finish(mut self, counters: Counters, counts: BTreeMap<u32, u64>) -> Report {
        if let Some(out) = self.events_out.as_mut() {
            if let Err(e) = out.flush() {
                self.write_error.get_or_insert(e);
            }
        }
        if let Some(e) = self.write_error {
            self.report
                .degraded
                .push(format!("writing the events file failed: {e}"));
        }
        let r = &mut self.report;
        r.dropped_events = counters.dropped_events;
        r.kernel = counters;
        r.processes_started = counters.forks;
        r.execs = counters.execs;
        r.syscalls = counts.values().sum::<u64>() + counters.syscalls_by_total;
        r.syscall_counts = counts
            .into_iter()
            .map(|(nr, n)| {
                (
                    syscalls::name_of(nr).map_or_else(|| format!("syscall {nr}"), str::to_string),
                    n,
                )
            })
            .collect();
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::attribute::Layer;

    fn violation(t_ms: f64) -> Event {
        Event {
            t_ms,
            kind: EventType::Violation,
            pid: 1,
            tid: 1,
            layer: Some(Layer::Network),
            action: Some("connect"),
            syscall: None,
            object: None,
            errno: Some("EPERM"),
            fd: None,
            killed_in_kernel: false,
        }
    }

    #[test]
    fn threshold_is_a_sliding_window() {
        let mut t = Tracker::new(
            Threshold {
                violations: 3,
                window: Duration::from_millis(100),
                kill: true,
            },
            None,
        );
        assert!(!t.record(violation(0.0)));
        assert!(!t.record(violation(60.0)));
        // 0.0 has left the window: two within 100 ms.
        assert!(!t.record(violation(150.0)));
        assert!(t.record(violation(155.0)));
        let r = t.finish(Counters::default(), BTreeMap::new());
        assert_eq!(r.violations, 4);
        assert_eq!(r.auto_unload.unwrap().violation.t_ms, 155.0);
    }

    #[test]
    fn report_mode_never_kills() {
        let mut t = Tracker::new(
            Threshold {
                violations: 1,
                window: Duration::from_secs(60),
                kill: false,
            },
            None,
        );
        assert!(!t.record(violation(0.0)));
        assert!(!t.record(violation(1.0)));
        assert_eq!(t.finish(Counters::default(), BTreeMap::new()).violations, 2);
    }

    #[test]
    fn capped_lines_stop_at_the_cap_and_say_how_many() {
        let mut out = Vec::new();
        let count;
        {
            let mut w = CappedLines::new(&mut out, 20);
            count = w.not_written();
            // Written in pieces, as `writeln!` does.
            for line in ["{\"a\":1}", "{\"b\":22}", "{\"c\":333}", "{\"d\":4}"] {
                write!(w, "{line}").unwrap();
                writeln!(w).unwrap();
            }
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"a\":1}\n{\"b\":22}\n{\"events_not_written\":0}\n".replace(
                "{\"events_not_written\":0}",
                "{\"type\":\"events_not_written\",\"count\":2,\"cap_bytes\":20}"
            )
        );
        assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn lost_denials_count_toward_the_threshold() {
        let threshold = |kill| Threshold {
            violations: 3,
            window: Duration::from_secs(1),
            kill,
        };
        let mut t = Tracker::new(threshold(true), None);
        assert!(!t.record_lost(0, 1.0));
        assert!(!t.record_lost(2, 1.0));
        // The third violation is a received one: together they cross.
        assert!(t.record(violation(2.0)));
        let r = t.finish(Counters::default(), BTreeMap::new());
        assert_eq!((r.violations, r.lost_denials), (3, 2));
        assert_eq!(r.by_layer["unknown (event lost)"], 2);
        assert_eq!(r.auto_unload.unwrap().violation.action, Some("connect"));

        // A burst of lost denials alone crosses it, and says so.
        let mut t = Tracker::new(threshold(true), None);
        assert!(t.record_lost(1000, 5.0));
        let r = t.finish(Counters::default(), BTreeMap::new());
        let a = r.auto_unload.unwrap();
        assert_eq!(a.violation.action, Some("lost"));
        assert_eq!(
            a.violation.object.as_ref().map(|o| o.text()).as_deref(),
            Some("1000 possible violations whose events the full ring buffer dropped")
        );

        // Monitor mode: counted, never a kill.
        let mut t = Tracker::new(threshold(false), None);
        assert!(!t.record_lost(1000, 5.0));
        assert_eq!(
            t.finish(Counters::default(), BTreeMap::new()).violations,
            1000
        );
    }
}
