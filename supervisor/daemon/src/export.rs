//! Event export for SIEMs and log pipelines (`[export]` of the configuration): the daemon's event
//! stream as JSON lines in a file rotated by size, and to the journal, in the schema of
//! docs/events.md (`schema` 1). Filtered by type and field, limited in rate — what the limit
//! holds back is counted and the count exported (`suppressed`), never dropped silently — and
//! never in the way of enforcement or of the audit log: the daemon hands each event to a bounded
//! queue without waiting, a writer thread does the I/O, and a failure (a full disk, an
//! unwritable path, a journal that is not there) is counted, logged at most once a minute, and
//! reported in the export itself (`export_gap`) once writing works again.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stockade::daemon_config::ExportConfig;

use crate::logs::now_ms;
use crate::metrics::Metrics;

/// The version of the exported records' shape (docs/events.md).
pub const SCHEMA: u64 = 1;
/// Events that may wait for the writer, and their bytes (as JSON); past either they are counted
/// (`queue_full`): a plugin publishing large events cannot grow the daemon's memory through a
/// slow export.
const QUEUE: usize = 10_000;
const QUEUE_BYTES: usize = 64 << 20;

enum Msg {
    /// An event and its size as JSON.
    Event(Arc<Value>, usize),
    /// Write what waits, then answer.
    Close(std::sync::mpsc::Sender<()>),
}

/// The daemon's side: hands events to the writer thread.
pub struct Exporter {
    tx: Mutex<Option<SyncSender<Msg>>>,
    types: Vec<String>,
    queue_full: Arc<AtomicU64>,
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Exporter {
    /// The exporter `config` asks for, or `None` when it names no file and no journal.
    pub fn start(config: &ExportConfig, host: &str, metrics: Arc<Metrics>) -> Option<Exporter> {
        if config.file.is_none() && config.journald.is_none() {
            return None;
        }
        let (tx, rx) = sync_channel(QUEUE);
        let queue_full = Arc::new(AtomicU64::new(0));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            file: config
                .file
                .as_ref()
                .map(|p| Rotating::new(p, config.max_bytes, config.keep)),
            journal: config.journald.as_ref().map(|p| Journal::new(p)),
            omit: config.omit.clone(),
            rate: config.rate,
            host: host.to_string(),
            seq: 0,
            queue_full: queue_full.clone(),
            queued_bytes: queued_bytes.clone(),
            metrics: metrics.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("export".into())
            .spawn(move || writer.run(rx));
        if let Err(e) = spawned {
            tracing::error!("export: cannot start its thread: {e}; events are not exported");
            return None;
        }
        Some(Exporter {
            tx: Mutex::new(Some(tx)),
            types: config.types.clone(),
            queue_full,
            queued_bytes,
            metrics,
        })
    }

    /// Queues `event` when its type is exported; never waits.
    pub fn send(&self, event: &Arc<Value>) {
        let kind = event["type"].as_str().unwrap_or("");
        if !self.types.is_empty() && !self.types.iter().any(|t| t == kind) {
            return;
        }
        let full = || {
            self.queue_full.fetch_add(1, Ordering::Relaxed);
            self.metrics.export_held_back("queue_full");
        };
        let size = json_size(event);
        if self.queued_bytes.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            return full();
        }
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else {
            return;
        };
        match tx.try_send(Msg::Event(event.clone(), size)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                full();
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Writes what waits (within `within`: a writer stuck on a hung file system is left
    /// behind), then stops the writer.
    pub fn close(&self, within: Duration) {
        let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let until = Instant::now() + within;
        let (done, wait) = std::sync::mpsc::channel();
        let mut msg = Msg::Close(done);
        loop {
            match tx.try_send(msg) {
                Ok(()) => {
                    let _ = wait.recv_timeout(until.saturating_duration_since(Instant::now()));
                    return;
                }
                Err(TrySendError::Full(m)) if Instant::now() < until => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
    }
}

/// The writer thread's state.
struct Writer {
    file: Option<Rotating>,
    journal: Option<Journal>,
    omit: Vec<String>,
    rate: u32,
    host: String,
    /// Numbers every exported record, so that a reader sees a gap.
    seq: u64,
    queue_full: Arc<AtomicU64>,
    queued_bytes: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

/// An event's size as JSON, estimated from its shape without writing it: a string by its length,
/// a number at its longest form, punctuation as it would be. A walk over the event's nodes, not
/// its bytes, so a plugin's 64 KiB event costs the daemon's event path no serialization (the
/// writer's thread serializes it once). Escapes are not counted; the bound it feeds is one of
/// memory, for which that is close enough.
fn json_size(event: &Value) -> usize {
    match event {
        Value::Null => 4,
        Value::Bool(_) => 5,
        // "-9223372036854775808" and f64's longest shortest-form are about this long.
        Value::Number(_) => 24,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| json_size(v) + 1).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| k.len() + 4 + json_size(v))
                .sum::<usize>()
        }
    }
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut window = Instant::now();
        let mut in_window = 0u32;
        let mut suppressed = 0u64;
        let mut suppressed_since = 0u64;
        let mut next: Option<Msg> = None;
        loop {
            let msg = match next.take() {
                Some(m) => Some(m),
                None => match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            if window.elapsed() >= Duration::from_secs(1) {
                window = Instant::now();
                in_window = 0;
            }
            // What was held back is told first, once the limit lets a record through again (and
            // at the end, whatever the limit).
            let closing = matches!(msg, Some(Msg::Close(_)));
            let full = self.queue_full.load(Ordering::Relaxed);
            if (suppressed > 0 || full > 0) && (in_window < self.rate || closing) {
                self.queue_full.fetch_sub(full, Ordering::Relaxed);
                in_window += 1;
                self.emit(&json!({
                    "type": "suppressed",
                    "at_ms": now_ms(),
                    "since_ms": suppressed_since,
                    "rate_limited": suppressed,
                    "queue_full": full,
                }));
                suppressed = 0;
            }
            match msg {
                None => {}
                Some(Msg::Close(done)) => {
                    let _ = done.send(());
                    return;
                }
                Some(Msg::Event(event, size)) => {
                    self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                    if in_window >= self.rate {
                        if suppressed == 0 {
                            suppressed_since = now_ms();
                        }
                        suppressed += 1;
                        self.metrics.export_held_back("rate_limited");
                    } else {
                        in_window += 1;
                        self.emit(&event);
                    }
                }
            }
            if let Ok(m) = rx.try_recv() {
                next = Some(m);
            }
        }
    }

    /// One record to every sink.
    fn emit(&mut self, event: &Value) {
        self.seq += 1;
        let mut record = serde_json::Map::new();
        record.insert("schema".into(), json!(SCHEMA));
        record.insert("seq".into(), json!(self.seq));
        record.insert("host".into(), json!(self.host));
        if let Value::Object(fields) = event {
            for (k, v) in fields {
                if !self.omit.iter().any(|o| o == k) && !record.contains_key(k) {
                    record.insert(k.clone(), v.clone());
                }
            }
        }
        let record = Value::Object(record);
        let mut line = serde_json::to_vec(&record).unwrap_or_default();
        line.push(b'\n');
        if let Some(file) = self.file.as_mut() {
            match file.write_line(&line) {
                Ok(()) => self.metrics.exported("file"),
                Err(e) => {
                    self.metrics.export_failed("file");
                    file.failed(&e);
                }
            }
        }
        if let Some(journal) = self.journal.as_mut() {
            match journal.send(&record, &line) {
                Ok(()) => self.metrics.exported("journald"),
                Err(e) => {
                    self.metrics.export_failed("journald");
                    journal.failed(&e);
                }
            }
        }
    }
}

/// A file rotated by size: `path`, then `path.1` (the newest full one) … `path.<keep>`. Each
/// record is one `write` of the whole line (no buffer a failure could leave half-written and
/// uncounted); a line cut short by a full disk is ended before the next record.
struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    out: Option<File>,
    size: u64,
    /// Records lost since the last successful write (told in an `export_gap` record).
    lost: u64,
    /// When a failed open may be tried again, and when the last failure was logged.
    retry_at: Option<Instant>,
    logged_at: Option<Instant>,
}

/// What `write_line` answers while a failed file waits to be opened again.
const WAITING: std::io::ErrorKind = std::io::ErrorKind::WouldBlock;

impl Rotating {
    fn new(path: &Path, max_bytes: u64, keep: u32) -> Rotating {
        Rotating {
            path: path.to_path_buf(),
            max_bytes,
            keep,
            out: None,
            size: 0,
            lost: 0,
            retry_at: None,
            logged_at: None,
        }
    }

    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        if self.size > 0 {
            // A record cut short (a full disk) is ended, so that the next one is a line.
            let mut last = [0u8; 1];
            file.seek(std::io::SeekFrom::End(-1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                self.size += 1;
            }
        }
        self.out = Some(file);
        Ok(())
    }

    /// Writes one whole line: a line that would pass `max_bytes` goes to a fresh file (one
    /// longer than `max_bytes` alone gets a file of its own); a line is never split.
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.out.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(std::io::Error::new(
                    WAITING,
                    "waiting to open the file again",
                ));
            }
            self.open()?;
        }
        let mut gap = Vec::new();
        if self.lost > 0 {
            gap = serde_json::to_vec(&json!({
                "schema": SCHEMA,
                "type": "export_gap",
                "at_ms": now_ms(),
                "lost": self.lost,
            }))
            .unwrap_or_default();
            gap.push(b'\n');
        }
        let len = (gap.len() + line.len()) as u64;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        if !gap.is_empty() {
            self.put(&gap)?;
            self.lost = 0;
        }
        self.put(line)
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| std::io::Error::other("not open"))?;
        out.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out = None;
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.open()
    }

    /// A write failed: the record is lost (and counted). After a real failure the file is
    /// opened again, at most once a second; while it waits, records are only counted.
    fn failed(&mut self, e: &std::io::Error) {
        self.lost += 1;
        if e.kind() == WAITING {
            return;
        }
        self.out = None;
        self.retry_at = Some(Instant::now() + Duration::from_secs(1));
        if self
            .logged_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.logged_at = Some(Instant::now());
            tracing::error!(
                "export: {}: {e}; events are counted as lost until it can be written (hint: check the path, its permissions and the disk; enforcement and the audit log go on)",
                self.path.display()
            );
        }
    }
}

/// systemd-journald's native protocol over its datagram socket.
struct Journal {
    path: PathBuf,
    socket: Option<UnixDatagram>,
    logged_at: Option<Instant>,
}

impl Journal {
    fn new(path: &Path) -> Journal {
        Journal {
            path: path.to_path_buf(),
            socket: None,
            logged_at: None,
        }
    }

    fn send(&mut self, record: &Value, line: &[u8]) -> std::io::Result<()> {
        if self.socket.is_none() {
            let s = UnixDatagram::unbound()?;
            s.set_nonblocking(true)?;
            self.socket = Some(s);
        }
        let kind = record["type"].as_str().unwrap_or("event");
        let mut buf = Vec::with_capacity(line.len() + 256);
        field(&mut buf, "MESSAGE", summary(record).as_bytes());
        field(&mut buf, "PRIORITY", priority(record).as_bytes());
        field(&mut buf, "SYSLOG_IDENTIFIER", b"stockade");
        field(&mut buf, "STOCKADE_SCHEMA", SCHEMA.to_string().as_bytes());
        field(&mut buf, "STOCKADE_TYPE", kind.as_bytes());
        if let Some(p) = record["plugin"].as_str() {
            field(&mut buf, "STOCKADE_PLUGIN", p.as_bytes());
        }
        if let Some(l) = record["layer"].as_str() {
            field(&mut buf, "STOCKADE_LAYER", l.as_bytes());
        }
        if let Some(r) = record["request_id"].as_str() {
            field(&mut buf, "STOCKADE_REQUEST_ID", r.as_bytes());
        }
        let whole = line.strip_suffix(b"\n").unwrap_or(line);
        let socket = self
            .socket
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no socket"))?;
        let mut with_event = buf.clone();
        field(&mut with_event, "STOCKADE_EVENT", whole);
        match socket.send_to(&with_event, &self.path) {
            // Larger than a datagram may be: the record without its JSON, marked.
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                field(&mut buf, "STOCKADE_EVENT_TRUNCATED", b"1");
                socket.send_to(&buf, &self.path).map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    fn failed(&mut self, e: &std::io::Error) {
        if self
            .logged_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.logged_at = Some(Instant::now());
            tracing::error!(
                "export: the journal ({}): {e}; events are counted as lost (hint: is systemd-journald running?)",
                self.path.display()
            );
        }
    }
}

/// One field of the native protocol: `NAME=value\n`, or — when the value holds a newline —
/// `NAME\n`, its length as 64-bit little-endian, the value, `\n`.
fn field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// syslog priorities: violations and failures are warnings and errors, the rest information.
fn priority(record: &Value) -> &'static str {
    match record["type"].as_str() {
        Some("violation" | "limit" | "report" | "suppressed" | "export_gap") => "4",
        Some("lifecycle") if matches!(record["to"].as_str(), Some("failed" | "quarantined")) => "3",
        Some("trust") if record["decision"] == "refused" => "4",
        _ => "6",
    }
}

/// The journal's one-line message for a record.
fn summary(record: &Value) -> String {
    let text = |k: &str| record[k].as_str().unwrap_or("?").to_string();
    let plugin = text("plugin");
    match record["type"].as_str().unwrap_or("event") {
        "violation" | "limit" => format!(
            "{plugin}: {} {} {} {}",
            text("type"),
            text("layer"),
            text("action"),
            record["object"].as_str().unwrap_or("")
        ),
        "lifecycle" => format!(
            "{plugin}: {} -> {}: {}",
            text("from"),
            text("to"),
            text("reason")
        ),
        "call" => format!(
            "{plugin}: call {} {} in {:.1} ms",
            text("method"),
            text("outcome"),
            record["duration_ms"].as_f64().unwrap_or(0.0)
        ),
        "report" => format!(
            "{plugin}: run {} ended with {} violation(s)",
            record["run"], record["violations"]
        ),
        "suppressed" => format!(
            "export: {} event(s) held back by the rate limit, {} by a full queue",
            record["rate_limited"], record["queue_full"]
        ),
        other => format!("{plugin}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    /// The queue's size estimate: at least the text for events without escapes, and above it
    /// by no more than the numbers' allowance; a 64 KiB string counts as its length.
    #[test]
    fn the_size_estimate_follows_the_text() {
        let events = [
            json!({"type": "call", "plugin": "echo", "request_id": "0f7c", "duration_ms": 1.25, "outcome": "ok", "output": [{"stream": "stdout", "text": "hi"}]}),
            json!({"type": "violation", "at_ms": 1_764_000_000_000u64, "layer": "namespace", "ok": true, "none": null, "nested": {"a": [1, 2, 3]}}),
            json!({"type": "published", "data": "x".repeat(65536)}),
            json!([]),
            json!({}),
        ];
        for e in &events {
            let text = serde_json::to_string(e).unwrap().len();
            let numbers = serde_json::to_string(e)
                .unwrap()
                .matches(|c: char| c.is_ascii_digit())
                .count();
            let estimate = json_size(e);
            assert!(estimate >= text, "{estimate} < {text}: {e}");
            assert!(
                estimate <= text + 24 * numbers.max(1),
                "{estimate} vs {text}: {e}"
            );
        }
        assert!(json_size(&events[2]) < 65536 + 64);
    }

    /// Rotation at the size bound: every file within it, every line whole, and the records
    /// numbered without a gap from the oldest file kept to the current one.
    #[test]
    fn rotation_keeps_lines_whole_and_numbered() {
        let dir = std::env::temp_dir().join(format!("stockade-export-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("events.jsonl");
        let config = ExportConfig {
            file: Some(path.clone()),
            max_bytes: 4096,
            keep: 3,
            rate: 1_000_000,
            ..ExportConfig::default()
        };
        let metrics = Arc::new(Metrics::new());
        let x = Exporter::start(&config, "test-host", metrics).unwrap();
        for i in 0..500 {
            let event = json!({
                "type": "violation",
                "at_ms": i,
                "plugin": "p",
                "layer": "namespace",
                "object": "x".repeat(i % 97),
            });
            x.send(&Arc::new(event));
        }
        x.close(Duration::from_secs(10));
        let mut seqs = Vec::new();
        for name in [
            "events.jsonl.3",
            "events.jsonl.2",
            "events.jsonl.1",
            "events.jsonl",
        ] {
            let p = dir.join(name);
            let size = std::fs::metadata(&p).unwrap().len();
            assert!(size <= 4096, "{name}: {size} bytes");
            for record in lines(&p) {
                assert_eq!(record["schema"], 1);
                assert_eq!(record["host"], "test-host");
                seqs.push(record["seq"].as_u64().unwrap());
            }
        }
        assert!(!dir.join("events.jsonl.4").exists());
        assert_eq!(*seqs.last().unwrap(), 500);
        for pair in seqs.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "a gap: {pair:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The rate limit holds records back and says how many, with the types and fields asked.
    #[test]
    fn the_rate_limit_counts_what_it_holds_back() {
        let dir = std::env::temp_dir().join(format!("stockade-export-rate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("events.jsonl");
        let config = ExportConfig {
            file: Some(path.clone()),
            rate: 10,
            types: vec!["violation".into()],
            omit: vec!["object".into()],
            ..ExportConfig::default()
        };
        let x = Exporter::start(&config, "h", Arc::new(Metrics::new())).unwrap();
        for i in 0..100 {
            x.send(&Arc::new(
                json!({"type": "violation", "object": "secret", "i": i}),
            ));
            x.send(&Arc::new(json!({"type": "call", "i": i})));
        }
        // The next second lets the count through.
        std::thread::sleep(Duration::from_millis(2100));
        x.close(Duration::from_secs(10));
        let records = lines(&path);
        let violations: Vec<&Value> = records
            .iter()
            .filter(|r| r["type"] == "violation")
            .collect();
        let held: u64 = records
            .iter()
            .filter(|r| r["type"] == "suppressed")
            .map(|r| r["rate_limited"].as_u64().unwrap())
            .sum();
        assert_eq!(violations.len() as u64 + held, 100, "{records:#?}");
        assert!(violations.len() >= 10);
        assert!(records.iter().all(|r| r["type"] != "call"));
        assert!(violations.iter().all(|r| r.get("object").is_none()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn journal_fields_are_framed_like_journald_reads_them() {
        let mut buf = Vec::new();
        field(&mut buf, "A", b"one line");
        field(&mut buf, "B", b"two\nlines");
        let mut want = b"A=one line\nB\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(buf, want);
    }
}
