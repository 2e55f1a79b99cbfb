//! The control socket: newline-delimited JSON-RPC 2.0 for the CLI (`stockade::control` is the
//! client and lists the methods). Each connection is checked by `SO_PEERCRED` before anything it
//! sends is read; each request runs as a task of its own, so a long call does not hold up the
//! next request, and answers go back through one writer per connection.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use stockade::control::{code as ccode, MAX_CONTROL_BYTES};
use stockade::rpc::{self, code, Incoming, RpcError};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::host::{refusal, Host};

/// Who may use the socket: root always, and the uids the operator names.
#[derive(Debug, Clone)]
pub struct Access {
    pub uids: Vec<u32>,
}

impl Access {
    fn allows(&self, uid: u32) -> bool {
        uid == 0 || self.uids.contains(&uid)
    }
}

/// Binds the control socket: its directory made if missing, a stale socket of a dead daemon
/// replaced, a live one refused. Mode 0600 (root only) unless other uids are allowed, in which
/// case 0666 and `SO_PEERCRED` is the check.
pub fn bind(path: &Path, access: &Access) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket; remove it or choose another --socket",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another daemon answers on {}; stop it first or choose another --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    let mode = if access.uids.is_empty() { 0o600 } else { 0o666 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, host: Arc<Host>, access: Access) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let host = host.clone();
        let access = access.clone();
        tokio::spawn(async move { connection(stream, host, access).await });
    }
}

async fn connection(stream: UnixStream, host: Arc<Host>, access: Access) {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (mut read, write) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(256);
    tokio::spawn(crate::conn::write_batched(rx, write));
    let Some(uid) = uid.filter(|u| access.allows(*u)) else {
        tracing::warn!(uid = ?uid, "control socket: caller refused");
        let e = refusal(
            ccode::FORBIDDEN,
            format!(
                "uid {} may not use the daemon's control socket",
                uid.map_or("?".into(), |u| u.to_string())
            ),
            Some("run the command as root, or start the daemon with --allow-uid UID"),
        );
        let _ = tx.send(rpc::response(&Value::Null, &Err(e))).await;
        return;
    };
    let mut decoder = rpc::LineDecoder::new(MAX_CONTROL_BYTES);
    let mut buf = vec![0u8; 64 << 10];
    // Set when the caller goes away: streams it asked for (`--follow`) end with it.
    let (gone_tx, gone) = tokio::sync::watch::channel(false);
    // Requests of one connection running at once; more wait (the caller is not read from).
    let running = Arc::new(tokio::sync::Semaphore::new(REQUESTS_PER_CONNECTION));
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for frame in decoder.feed(&buf[..n]) {
            let (id, method, params) = match rpc::parse(&frame) {
                Ok(Incoming::Request { id, method, params }) => (id, method, params),
                _ => {
                    let e = RpcError {
                        code: code::INVALID_REQUEST,
                        message: "not a JSON-RPC 2.0 request".into(),
                        data: None,
                    };
                    let _ = tx.send(rpc::response(&Value::Null, &Err(e))).await;
                    continue;
                }
            };
            let Ok(permit) = running.clone().acquire_owned().await else {
                break;
            };
            let host = host.clone();
            let tx = tx.clone();
            let gone = gone.clone();
            tokio::spawn(async move {
                let outcome = dispatch(&host, &method, params, &tx, gone, uid).await;
                let _ = tx.send(rpc::response(&id, &outcome)).await;
                drop(permit);
            });
        }
    }
    let _ = gone_tx.send(true);
}

/// Requests one control connection may have running at once.
const REQUESTS_PER_CONNECTION: usize = 64;

/// Forwards `rx`'s items as notifications `method` until the stream ends or the caller goes away.
async fn stream<T: serde::Serialize + Clone>(
    mut rx: tokio::sync::broadcast::Receiver<T>,
    method: &str,
    tx: &mpsc::Sender<Vec<u8>>,
    mut gone: tokio::sync::watch::Receiver<bool>,
    lagged: impl Fn(u64) -> Value,
) -> Result<Value, RpcError> {
    loop {
        let item = tokio::select! {
            item = rx.recv() => item,
            _ = gone.changed() => return Ok(json!({})),
        };
        let line = match item {
            Ok(item) => notification(method, &item),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                notification(method, &lagged(n))
            }
            Err(_) => return Ok(json!({})),
        };
        if tx.send(line).await.is_err() {
            return Ok(json!({}));
        }
    }
}

fn text<'a>(params: &'a Value, name: &str) -> Result<&'a str, RpcError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError {
            code: code::INVALID_PARAMS,
            message: format!("`{name}` (a string) is required"),
            data: None,
        })
}

/// One notification's line, serialized straight from `params` (an event is shared, not copied).
fn notification<P: serde::Serialize + ?Sized>(method: &str, params: &P) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Notification<'a, P: ?Sized> {
        jsonrpc: &'static str,
        method: &'a str,
        params: &'a P,
    }
    let mut line = serde_json::to_vec(&Notification {
        jsonrpc: "2.0",
        method,
        params,
    })
    .unwrap_or_default();
    line.push(b'\n');
    line
}

async fn dispatch(
    host: &Arc<Host>,
    method: &str,
    params: Value,
    tx: &mpsc::Sender<Vec<u8>>,
    gone: tokio::sync::watch::Receiver<bool>,
    uid: u32,
) -> Result<Value, RpcError> {
    // `allow_downgrade` is the operator's explicit override of the rollback ratchet, recorded
    // with the uid that asked (as every request is).
    let downgrade = params.get("allow_downgrade").and_then(Value::as_bool) == Some(true);
    match method {
        "plugin.load" => {
            let dir = PathBuf::from(text(&params, "dir")?);
            host.load(&dir, Some(uid), downgrade).await
        }
        "plugin.unload" => host.unload(text(&params, "id")?, Some(uid)).await,
        "plugin.reload" => host.reload(text(&params, "id")?, Some(uid)).await,
        "plugin.upgrade" => {
            let dir = PathBuf::from(text(&params, "dir")?);
            host.upgrade(text(&params, "id")?, &dir, Some(uid), downgrade)
                .await
        }
        "plugin.list" => Ok(host.list()),
        "plugin.status" => host.status_of(text(&params, "id")?),
        "plugin.logs" => {
            let (lines, follow) = host.logs_of(text(&params, "id")?)?;
            if params.get("follow").and_then(Value::as_bool) != Some(true) {
                return Ok(json!({ "lines": lines }));
            }
            for line in lines {
                if tx.send(notification("log", &line)).await.is_err() {
                    return Ok(json!({}));
                }
            }
            stream(follow, "log", tx, gone, |n| {
                json!({ "stream": "stockade", "text": format!("{n} lines skipped (the reader was too slow)") })
            })
            .await
        }
        "call" => {
            let plugin = text(&params, "plugin")?.to_string();
            let method = text(&params, "method")?.to_string();
            let args = params.get("params").cloned().unwrap_or(Value::Null);
            host.call(&plugin, &method, args, Some(uid)).await
        }
        "events.subscribe" => {
            let (recent, events) = host.subscribe();
            if params.get("follow").and_then(Value::as_bool) != Some(true) {
                return Ok(json!({ "events": recent }));
            }
            for event in recent {
                if tx.send(notification("event", &event)).await.is_err() {
                    return Ok(json!({}));
                }
            }
            stream(
                events,
                "event",
                tx,
                gone,
                |n| json!({ "type": "lagged", "skipped": n }),
            )
            .await
        }
        other => Err(RpcError {
            code: code::METHOD_NOT_FOUND,
            message: format!("the daemon has no method `{other}`"),
            data: Some(json!({ "hint": "see `stockade --help` for what the CLI asks" })),
        }),
    }
}
