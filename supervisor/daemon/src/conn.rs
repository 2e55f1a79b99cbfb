//! The daemon's end of one plugin run's JSON-RPC socket (docs/plugins.md, "The protocol").
//!
//! A reader task splits the plugin's bytes into lines (`rpc::LineDecoder`, 1 MiB each), routes
//! answers to the calls waiting for them, serves the narrow host API (`log`, `event.publish`,
//! `metrics.add`) and
//! turns everything else into violations of the `rpc` layer. A writer task sends the host's
//! requests, and the `event` notifications of the plugin's subscriptions (`Conn::notify`), in
//! order. Calls carry a UUID as their id and a deadline; an answer that arrives after
//! its call was abandoned is dropped quietly (it is late, not forged).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stockade::rpc::{self, code, Frame, Incoming, RpcError, Violation};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// Late answers remembered per run (ids of abandoned calls).
const ABANDONED: usize = 1024;
/// The most data one published event carries.
const MAX_EVENT_BYTES: usize = 64 << 10;
/// Host-API messages (`log`, `event.publish`, `metrics.add`) a plugin may send per second, and
/// as a burst.
const HOST_CALLS_PER_SEC: f64 = 1000.0;
const HOST_CALLS_BURST: f64 = 2000.0;

/// What the plugin's messages reach: its log, the event stream, the violation counter.
pub trait Sink: Send + Sync + 'static {
    fn log(&self, level: &str, message: &str);
    fn publish(&self, topic: &str, data: Value);
    /// Adds `value` to the plugin's counter `name`; false when its manifest does not declare it.
    fn count(&self, name: &str, value: u64) -> bool;
    fn violation(&self, action: &'static str, what: String);
}

/// The largest value one `metrics.add` may add: at the host-API rate limit, a counter takes
/// centuries to wrap.
const MAX_COUNTER_ADD: u64 = 1 << 20;

type Waiter = oneshot::Sender<Result<Value, RpcError>>;

pub struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<String, Waiter>>,
    abandoned: Mutex<VecDeque<String>>,
    closed: AtomicBool,
}

fn unavailable(message: &str) -> RpcError {
    RpcError {
        code: code::UNAVAILABLE,
        message: message.to_string(),
        data: None,
    }
}

/// Messages queued for the plugin's socket at most.
const QUEUE: usize = 1024;

impl Conn {
    /// Starts the reader and writer tasks on `stream`.
    pub fn start(stream: std::os::unix::net::UnixStream, sink: Arc<dyn Sink>) -> Arc<Conn> {
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(stream));
        let (tx, rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let conn = Arc::new(Conn {
            tx,
            pending: Mutex::new(HashMap::new()),
            abandoned: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
        });
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("the plugin's socket: {e}");
                conn.close();
                return conn;
            }
        };
        let (mut read, write) = stream.into_split();
        tokio::spawn(write_batched(rx, write));
        let reader = conn.clone();
        tokio::spawn(async move {
            let mut decoder = rpc::LineDecoder::new(rpc::MAX_MESSAGE_BYTES);
            let mut buf = vec![0u8; 64 << 10];
            let mut bucket = Bucket::new();
            loop {
                let n = match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for frame in decoder.feed(&buf[..n]) {
                    reader.handle(&frame, sink.as_ref(), &mut bucket);
                }
            }
            if let Some(frame) = decoder.finish() {
                reader.handle(&frame, sink.as_ref(), &mut bucket);
            }
            reader.close();
        });
        conn
    }

    /// Fails every waiting call: the plugin's socket is gone.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let waiting: Vec<Waiter> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, w)| w)
            .collect();
        for w in waiting {
            let _ = w.send(Err(unavailable(
                "the plugin's connection closed during the call",
            )));
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn handle(&self, frame: &Frame, sink: &dyn Sink, bucket: &mut Bucket) {
        let incoming = match rpc::parse(frame) {
            Ok(i) => i,
            Err(v) => return sink.violation(v.action(), v.to_string()),
        };
        match incoming {
            Incoming::Response { id, outcome } => {
                let key = id_key(&id);
                let waiter = self
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                match waiter {
                    Some(w) => {
                        let _ = w.send(outcome);
                    }
                    None => {
                        let late = self
                            .abandoned
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains(&key);
                        if !late {
                            let v = Violation::UnknownId(shorten(&key));
                            sink.violation(v.action(), v.to_string());
                        }
                    }
                }
            }
            Incoming::Request { id, method, params } => {
                let outcome = self.host_call(&method, params, sink, bucket);
                let _ = self.tx.try_send(rpc::response(&id, &outcome));
            }
            Incoming::Notification { method, params } => {
                let _ = self.host_call(&method, params, sink, bucket);
            }
        }
    }

    /// The host API the plugin may call.
    fn host_call(
        &self,
        method: &str,
        params: Value,
        sink: &dyn Sink,
        bucket: &mut Bucket,
    ) -> Result<Value, RpcError> {
        if !rpc::PLUGIN_TO_HOST.contains(&method) {
            let v = Violation::UndeclaredMethod(shorten(method));
            sink.violation(v.action(), v.to_string());
            return Err(RpcError {
                code: code::METHOD_NOT_FOUND,
                message: format!("the host has no method `{}`", shorten(method)),
                data: None,
            });
        }
        if !bucket.take() {
            if bucket.report_flood() {
                sink.violation(
                    "flood",
                    format!(
                        "more than {HOST_CALLS_PER_SEC} log, event and counter messages per second"
                    ),
                );
            }
            return Err(RpcError {
                code: code::UNAVAILABLE,
                message: "too many log, event and counter messages".into(),
                data: None,
            });
        }
        match method {
            "log" => {
                let level = params
                    .get("level")
                    .and_then(Value::as_str)
                    .unwrap_or("info");
                let message = match params.get("message") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                sink.log(level, &message);
            }
            "metrics.add" => {
                let name = params.get("name").and_then(Value::as_str).unwrap_or("");
                let value = match params.get("value") {
                    None => Some(1),
                    Some(v) => v.as_u64().filter(|n| *n <= MAX_COUNTER_ADD),
                };
                let refused = match value {
                    None => Some((
                        "invalid-counter",
                        format!(
                            "metrics.add of `{}` with a value that is not an integer from 0 to 2^20",
                            shorten(name)
                        ),
                    )),
                    Some(n) if !sink.count(name, n) => Some((
                        "undeclared-counter",
                        format!(
                            "metrics.add of `{}`, a counter the manifest does not declare",
                            shorten(name)
                        ),
                    )),
                    Some(_) => None,
                };
                if let Some((action, what)) = refused {
                    sink.violation(action, what.clone());
                    return Err(RpcError {
                        code: code::INVALID_PARAMS,
                        message: what,
                        data: None,
                    });
                }
            }
            _ => {
                let topic = params.get("topic").and_then(Value::as_str).unwrap_or("");
                let data = params.get("data").cloned().unwrap_or(Value::Null);
                let bytes = serde_json::to_vec(&data).map_or(0, |v| v.len());
                if bytes > MAX_EVENT_BYTES || topic.len() > 256 {
                    sink.violation(
                        "oversized-event",
                        format!("an event of {bytes} bytes (at most {MAX_EVENT_BYTES})"),
                    );
                    return Err(RpcError {
                        code: code::INVALID_PARAMS,
                        message: format!("events carry at most {MAX_EVENT_BYTES} bytes of data"),
                        data: None,
                    });
                }
                sink.publish(topic, data);
            }
        }
        Ok(json!({}))
    }

    /// Sends the notification `method` (no answer); false when its connection is gone or the
    /// plugin's queue is half full (the notification is dropped: a plugin slow to read holds up
    /// no other, and its own calls and pings keep their room).
    pub fn notify(&self, method: &str, params: &Value) -> bool {
        let line = rpc::notification(method, params);
        // Half the queue stays for the host's calls and pings.
        if self.tx.capacity() <= QUEUE / 2 {
            return false;
        }
        line.len() <= rpc::MAX_MESSAGE_BYTES && !self.is_closed() && self.tx.try_send(line).is_ok()
    }

    /// Sends `method` to the plugin and waits for its answer until `timeout`.
    pub async fn call(
        &self,
        id: &str,
        method: &str,
        params: &Value,
        timeout: Duration,
    ) -> Result<Value, RpcError> {
        let line = rpc::request(&json!(id), method, params);
        if line.len() > rpc::MAX_MESSAGE_BYTES {
            return Err(RpcError {
                code: code::INVALID_PARAMS,
                message: format!(
                    "the call's message would be {} bytes (at most {})",
                    line.len(),
                    rpc::MAX_MESSAGE_BYTES
                ),
                data: None,
            });
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), tx);
        // After the insert: a close between a check and the insert would leave this call
        // waiting for its whole timeout.
        if self.is_closed() {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            return Err(unavailable("the plugin is not running"));
        }
        let deadline = Instant::now() + timeout;
        let outcome = tokio::time::timeout_at(deadline.into(), async {
            if self.tx.send(line).await.is_err() {
                return Err(unavailable("the plugin's connection closed"));
            }
            rx.await
                .unwrap_or_else(|_| Err(unavailable("the plugin's connection closed")))
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(_) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
                let mut abandoned = self.abandoned.lock().unwrap_or_else(|e| e.into_inner());
                if abandoned.len() == ABANDONED {
                    abandoned.pop_front();
                }
                abandoned.push_back(id.to_string());
                Err(RpcError {
                    code: code::TIMEOUT,
                    message: format!(
                        "no answer within {} ms; the call was abandoned",
                        timeout.as_millis()
                    ),
                    data: None,
                })
            }
        }
    }
}

/// Writes the lines `rx` receives to `write` until either ends; what queued up meanwhile goes out
/// in the same write (a burst of answers costs one system call, not one each).
pub async fn write_batched(
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut write: impl tokio::io::AsyncWrite + Unpin,
) {
    let mut batch = Vec::new();
    while let Some(line) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&line);
        while batch.len() < 256 << 10 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if write.write_all(&batch).await.is_err() {
            break;
        }
    }
}

/// How an answer's id is matched: a string as it is, a number as its text.
fn id_key(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// At most 128 characters of something the plugin sent, for a message.
fn shorten(text: &str) -> String {
    if text.chars().count() <= 128 {
        return text.to_string();
    }
    let mut s: String = text.chars().take(128).collect();
    s.push('…');
    s
}

/// A token bucket for the host API, and the once-per-second flood report.
struct Bucket {
    tokens: f64,
    at: Instant,
    reported: Option<Instant>,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            tokens: HOST_CALLS_BURST,
            at: Instant::now(),
            reported: None,
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * HOST_CALLS_PER_SEC;
        self.tokens = (self.tokens + refill).min(HOST_CALLS_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn report_flood(&mut self) -> bool {
        let now = Instant::now();
        if self
            .reported
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return false;
        }
        self.reported = Some(now);
        true
    }
}
