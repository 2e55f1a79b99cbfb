//! The daemon's control API as the CLI speaks it: newline-delimited JSON-RPC 2.0 on a unix socket
//! (default [`DEFAULT_SOCKET`], root-only), the caller checked by `SO_PEERCRED`. The daemon side is
//! `stockade-daemon`; this is the blocking client `stockade plugin ...`, `stockade call` and
//! `stockade events` use, so the CLI stays free of an async runtime.
//!
//! Methods (params → result):
//! - `plugin.load {dir, allow_downgrade?}` → the plugin's status, once active (or the error that
//!   stopped it);
//! - `plugin.unload {id}`, `plugin.reload {id}`, `plugin.upgrade {id, dir, allow_downgrade?}` →
//!   the status;
//! - `plugin.list` → `[status]`; `plugin.status {id}` → status with its transitions;
//! - `plugin.logs {id, follow}` → `{lines}`; with `follow`, `log` notifications until the caller
//!   closes;
//! - `call {plugin, method, params}` → the plugin's result, or its (or the host's) error;
//! - `events.subscribe` → `event` notifications until the caller closes.
//!
//! A refusal carries `data.hint` (one line: what to do about it).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::rpc::{self, RpcError};

/// Where the daemon listens unless `--socket` or `STOCKADE_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/stockade/stockade.sock";

/// The largest control message either side sends: plugin logs and lists are bounded well below.
pub const MAX_CONTROL_BYTES: usize = 16 << 20;

/// Error codes of the control API (beyond JSON-RPC's and [`rpc::code`]).
pub mod code {
    /// No plugin with that id is loaded.
    pub const UNKNOWN_PLUGIN: i64 = -32010;
    /// A plugin with that id is loaded already.
    pub const DUPLICATE: i64 = -32011;
    /// The package is malformed or invalid (`stockade plugin check DIR` says why).
    pub const BAD_PACKAGE: i64 = -32012;
    /// The plugin could not be started or initialized.
    pub const START_FAILED: i64 = -32013;
    /// The caller may not use the control socket.
    pub const FORBIDDEN: i64 = -32014;
    /// The daemon is stopping.
    pub const SHUTTING_DOWN: i64 = -32015;
    /// The package's signature does not let it in, or it is older than what was accepted
    /// (`data.kind` names which refusal).
    pub const UNTRUSTED: i64 = -32016;
}

/// The socket path: `--socket`, else `STOCKADE_SOCKET`, else [`DEFAULT_SOCKET`].
pub fn socket_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    std::env::var_os("STOCKADE_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the daemon closed the connection")]
    Closed,
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent something that is not a JSON-RPC answer: {0}")]
    Protocol(String),
    /// The daemon (or the plugin through it) answered with an error.
    #[error("{}", .0.message)]
    Rpc(RpcError),
}

impl ClientError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            ClientError::Connect { source, .. } => Some(match source.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    "is the daemon running? start it with `stockade daemon` (or \
                     `systemctl start stockade`); --socket or STOCKADE_SOCKET names another socket"
                        .into()
                }
                std::io::ErrorKind::PermissionDenied => {
                    "the control socket is root's: run the command with sudo".into()
                }
                _ => "check the socket path (--socket, STOCKADE_SOCKET)".into(),
            }),
            ClientError::Rpc(e) => e
                .data
                .as_ref()
                .and_then(|d| d.get("hint"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        }
    }
}

/// Writes all of `bytes` to the socket without SIGPIPE (MSG_NOSIGNAL): a CLI whose reporting
/// commands take SIGPIPE's default (so that `| head` ends them quietly) must still read a
/// daemon's refusal after the daemon closed the connection unread.
fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !bytes.is_empty() {
        // SAFETY: send reads at most `bytes.len()` bytes from a valid slice on our own socket.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// One connection to the daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
        })
    }

    /// Calls `method` and waits for its answer; notifications that arrive first go to
    /// `on_notification`.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.call_streaming(method, params, |_, _| {})
    }

    /// Like [`Client::call`], handing every notification (method, params) to `on_notification`
    /// until the answer arrives.
    pub fn call_streaming(
        &mut self,
        method: &str,
        params: Value,
        mut on_notification: impl FnMut(&str, &Value),
    ) -> Result<Value, ClientError> {
        let id = json!(self.next_id);
        self.next_id += 1;
        // A daemon that refuses the caller answers and closes without reading: the answer is
        // read even when the request could not be written.
        let written = send_all(&self.writer, &rpc::request(&id, method, &params));
        loop {
            let message = match (self.next_message(), &written) {
                (Ok(m), _) => m,
                (Err(_), Err(e)) => {
                    return Err(ClientError::Io(std::io::Error::new(
                        e.kind(),
                        e.to_string(),
                    )))
                }
                (Err(e), Ok(())) => return Err(e),
            };
            if let Some(m) = message.get("method").and_then(Value::as_str) {
                on_notification(m, message.get("params").unwrap_or(&Value::Null));
                continue;
            }
            if message.get("id") == Some(&Value::Null) && message.get("error").is_some() {
                // A refusal of the connection itself (the caller is not allowed).
                return Err(rpc_error(&message));
            }
            if message.get("id") != Some(&id) {
                return Err(ClientError::Protocol(format!(
                    "an answer to another request: {message}"
                )));
            }
            if let Some(result) = message.get("result") {
                return Ok(result.clone());
            }
            if message.get("error").is_none() {
                return Err(ClientError::Protocol(message.to_string()));
            }
            return Err(rpc_error(&message));
        }
    }

    fn next_message(&mut self) -> Result<Value, ClientError> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_CONTROL_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        if line.last() != Some(&b'\n') {
            return Err(ClientError::Protocol(format!(
                "a message of more than {MAX_CONTROL_BYTES} bytes"
            )));
        }
        serde_json::from_slice(&line).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

fn rpc_error(message: &Value) -> ClientError {
    let error = &message["error"];
    ClientError::Rpc(RpcError {
        code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
        message: error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string(),
        data: error.get("data").cloned(),
    })
}
