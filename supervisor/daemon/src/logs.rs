//! A plugin's output: its stdout, its stderr and its `log` messages, kept in a bounded buffer per
//! plugin (`stockade plugin logs ID`), numbered so that a call's record can carry what the plugin
//! wrote while the call ran. The pipes are read at a bounded rate: a plugin that writes faster
//! blocks on its full pipe; the daemon's memory and CPU stay the same.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

/// Lines kept per plugin, and their bytes at most.
const KEEP_LINES: usize = 2000;
const KEEP_BYTES: usize = 1 << 20;
/// The longest line kept; the rest of a longer one is cut.
const LINE_BYTES: usize = 4096;
/// Bytes read from one plugin's pipe per second at most.
const PIPE_BYTES_PER_SEC: usize = 4 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// `stdout`, `stderr`, or the level of a `log` message.
    pub stream: String,
    pub text: String,
}

pub struct Logs {
    inner: Mutex<Inner>,
    follow: broadcast::Sender<Line>,
}

struct Inner {
    lines: VecDeque<Line>,
    bytes: usize,
    next: u64,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Logs {
    pub fn new() -> Logs {
        Logs {
            inner: Mutex::new(Inner {
                lines: VecDeque::new(),
                bytes: 0,
                next: 0,
            }),
            follow: broadcast::channel(1024).0,
        }
    }

    pub fn push(&self, stream: &str, text: &str) {
        let text = stockade::rpc::cut_to(text.to_string(), LINE_BYTES);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let line = Line {
            seq: inner.next,
            at_ms: now_ms(),
            stream: stream.to_string(),
            text,
        };
        inner.next += 1;
        inner.bytes += line.text.len();
        inner.lines.push_back(line.clone());
        while inner.lines.len() > KEEP_LINES || inner.bytes > KEEP_BYTES {
            if let Some(old) = inner.lines.pop_front() {
                inner.bytes -= old.text.len();
            }
        }
        let _ = self.follow.send(line);
    }

    /// The number the next line will get.
    pub fn mark(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).next
    }

    /// The kept lines numbered `from` and later (at most `limit`, the last ones).
    pub fn since(&self, from: u64, limit: usize) -> Vec<Line> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let lines: Vec<Line> = inner
            .lines
            .iter()
            .filter(|l| l.seq >= from)
            .cloned()
            .collect();
        let skip = lines.len().saturating_sub(limit);
        lines.into_iter().skip(skip).collect()
    }

    /// The kept lines and a receiver of every later one, taken together (none lost between).
    /// The receiver ends when the plugin's output is gone (it was unloaded).
    pub fn follow(&self) -> (Vec<Line>, broadcast::Receiver<Line>) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let lines = inner.lines.iter().cloned().collect();
        (lines, self.follow.subscribe())
    }
}

/// Reads one of the plugin's output pipes into `logs` until the pipe closes.
pub async fn capture(fd: OwnedFd, stream: &'static str, logs: std::sync::Arc<Logs>) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = vec![0u8; 16 << 10];
    let mut pending: Vec<u8> = Vec::new();
    let mut window = Instant::now();
    let mut window_bytes = 0usize;
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            logs.push(
                stream,
                String::from_utf8_lossy(&line[..line.len() - 1]).as_ref(),
            );
        }
        if pending.len() > LINE_BYTES {
            logs.push(stream, String::from_utf8_lossy(&pending).as_ref());
            pending.clear();
        }
        window_bytes += n;
        if window_bytes >= PIPE_BYTES_PER_SEC {
            let rest = Duration::from_secs(1).saturating_sub(window.elapsed());
            tokio::time::sleep(rest).await;
            window = Instant::now();
            window_bytes = 0;
        } else if window.elapsed() >= Duration::from_secs(1) {
            window = Instant::now();
            window_bytes = 0;
        }
    }
    if !pending.is_empty() {
        logs.push(stream, String::from_utf8_lossy(&pending).as_ref());
    }
}
