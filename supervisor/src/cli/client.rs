//! `stockade daemon`, `stockade plugin load|unload|reload|list|status|logs`, `stockade call` and
//! `stockade events`: the CLI side of the daemon's control API (`stockade::control`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use stockade::control::{self, Client, ClientError};

use crate::Failure;

fn failure(e: ClientError) -> Failure {
    let hint = e.hint();
    Failure::internal(e.to_string(), hint)
}

fn connect(socket: Option<&Path>) -> Result<Client, Failure> {
    Client::connect(&control::socket_path(socket)).map_err(failure)
}

/// `stockade daemon ARGS...`: executes `stockade-daemon` from beside this binary, so that the
/// async runtime lives in a binary of its own.
pub fn daemon(args: &[String]) -> Result<u8, Failure> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()
        .map_err(|e| Failure::internal(format!("cannot find this executable: {e}"), None))?;
    let daemon = exe.with_file_name("stockade-daemon");
    let e = std::process::Command::new(&daemon)
        .args(args)
        .arg0("stockade-daemon")
        .exec();
    Err(Failure::internal(
        format!("cannot execute {}: {e}", daemon.display()),
        Some(
            "stockade-daemon is installed beside stockade; build the workspace (`cargo build`)"
                .into(),
        ),
    ))
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string(value).unwrap_or_default());
}

fn one_line(status: &Value) -> String {
    let mut line = format!(
        "{} {} ({}): {}",
        status["id"].as_str().unwrap_or("?"),
        status["version"].as_str().unwrap_or("?"),
        status["trust"].as_str().unwrap_or("?"),
        status["state"].as_str().unwrap_or("?"),
    );
    if let Some(pid) = status["pid"].as_i64() {
        line.push_str(&format!(", pid {pid}"));
    }
    if let Some(reason) = status["reason"].as_str() {
        line.push_str(&format!(" ({reason})"));
    }
    line
}

/// `stockade plugin load DIR...`: each package in turn; on a terminal, the one being loaded
/// and its lifecycle so far on a line of its own ([`Progress`]). With several, a package that
/// fails is reported and the next one loaded; the exit status says whether all were.
pub fn load(
    socket: Option<&Path>,
    dirs: &[PathBuf],
    allow_downgrade: bool,
    json: bool,
) -> Result<u8, Failure> {
    let progress = (!json).then(|| Progress::start(socket)).flatten();
    let mut failed = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        if let Some(p) = &progress {
            let count = if dirs.len() > 1 {
                format!("[{}/{}] ", i + 1, dirs.len())
            } else {
                String::new()
            };
            p.begin(&count, dir);
        }
        match load_one(socket, dir, allow_downgrade, json, progress.as_ref()) {
            Ok(()) => {}
            Err(f) if dirs.len() == 1 => return Err(f),
            Err(f) => {
                eprintln!("stockade: {}", f.cause);
                if let Some(hint) = &f.hint {
                    eprintln!("  hint: {hint}");
                }
                failed.push(dir.display().to_string());
            }
        }
    }
    if failed.is_empty() {
        return Ok(0);
    }
    Err(Failure::internal(
        format!(
            "{} of {} packages were not loaded: {}",
            failed.len(),
            dirs.len(),
            failed.join(", ")
        ),
        Some("each one's cause is above; `stockade plugin list` shows what runs".into()),
    ))
}

fn load_one(
    socket: Option<&Path>,
    dir: &Path,
    allow_downgrade: bool,
    json: bool,
    progress: Option<&Progress>,
) -> Result<(), Failure> {
    let result = dir
        .canonicalize()
        .map_err(|e| {
            Failure::usage(
                format!("{}: {e}", dir.display()),
                "give the directory of a plugin package (it holds plugin.toml)",
            )
        })
        .and_then(|dir| {
            let mut client = connect(socket)?;
            Ok(client.call(
                "plugin.load",
                json!({ "dir": dir, "allow_downgrade": allow_downgrade }),
            ))
        });
    // The progress line cleared before anything of the result is printed, on every path.
    if let Some(p) = progress {
        p.end();
    }
    let result = result?;
    match result {
        Ok(status) => {
            if json {
                print_json(&status);
            } else {
                println!("loaded {}", one_line(&status));
            }
            Ok(())
        }
        Err(ClientError::Rpc(e)) => {
            if let Some(output) = e
                .data
                .as_ref()
                .and_then(|d| d.get("output"))
                .and_then(Value::as_array)
            {
                for line in output.iter().filter_map(Value::as_str) {
                    eprintln!("  | {line}");
                }
            }
            Err(failure(ClientError::Rpc(e)))
        }
        Err(e) => Err(failure(e)),
    }
}

/// What a long operation (a load, an upgrade) shows on a terminal while the daemon works: the
/// package's plugin and the steps the daemon's event stream reports for it (its signature
/// decision, each lifecycle state, an upgrade's stages), on one line rewritten in place and
/// cleared before the result is printed. Nothing when stderr is not a terminal: logs and pipes
/// get the result lines only.
struct Progress {
    /// The line's prefix and the plugin id being worked on; `None` between operations.
    current: Arc<Mutex<Option<(String, String)>>>,
}

impl Progress {
    fn start(socket: Option<&Path>) -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        // A connection of its own: the operation's call holds the other until it is done.
        let mut client = connect(socket).ok()?;
        let current: Arc<Mutex<Option<(String, String)>>> = Arc::new(Mutex::new(None));
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let shared = current.clone();
        // Left to run until the process exits: it only ever prints while an operation is on.
        std::thread::spawn(move || {
            let _ = client.call_streaming(
                "events.subscribe",
                json!({ "follow": true }),
                |method, event| {
                    if method != "event" || event["at_ms"].as_u64().unwrap_or(0) < since {
                        return;
                    }
                    let current = shared.lock().unwrap_or_else(|e| e.into_inner());
                    let Some((prefix, id)) = current.as_ref() else {
                        return;
                    };
                    if event["plugin"].as_str() != Some(id.as_str()) {
                        return;
                    }
                    if let Some(step) = step(event) {
                        eprint!("\r\x1b[K{prefix}{id}: {step}");
                    }
                },
            );
        });
        Some(Progress { current })
    }

    /// An operation on the package in `dir` begins.
    fn begin(&self, prefix: &str, dir: &Path) {
        // The plugin's id as its manifest says, read from plugin.toml alone (the daemon reads
        // the package itself, from a sealed copy; this is only the line's label).
        let id = std::fs::read_to_string(dir.join(stockade_policy::manifest::MANIFEST_FILE))
            .ok()
            .and_then(|text| text.parse::<toml_edit::DocumentMut>().ok())
            .and_then(|doc| doc.get("id").and_then(|v| v.as_str()).map(str::to_string))
            // Printed to the operator's terminal before the daemon has read anything: only an id
            // the manifest rules allow (no control characters, so no escape sequences).
            .filter(|id| stockade_policy::valid_id(id))
            .unwrap_or_else(|| dir.display().to_string());
        eprint!("\r\x1b[K{prefix}{id}: verifying");
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((prefix.to_string(), id));
    }

    /// The operation is done: the line is cleared (under the lock, so nothing is printed after).
    fn end(&self) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *current = None;
        eprint!("\r\x1b[K");
    }
}

/// An event's step as the progress line shows it.
fn step(event: &Value) -> Option<String> {
    match event["type"].as_str()? {
        "lifecycle" => event["to"].as_str().map(str::to_string),
        "upgrade" => event["stage"].as_str().map(|s| format!("upgrade {s}")),
        "trust" => event["decision"].as_str().map(|d| format!("signature {d}")),
        _ => None,
    }
}

pub fn upgrade(
    socket: Option<&Path>,
    id: &str,
    dir: &Path,
    allow_downgrade: bool,
    json: bool,
) -> Result<u8, Failure> {
    let dir = dir.canonicalize().map_err(|e| {
        Failure::usage(
            format!("{}: {e}", dir.display()),
            "give the directory of the new version's package",
        )
    })?;
    let progress = (!json).then(|| Progress::start(socket)).flatten();
    if let Some(p) = &progress {
        p.begin("", &dir);
    }
    let mut client = connect(socket)?;
    let result = client.call(
        "plugin.upgrade",
        json!({ "id": id, "dir": dir, "allow_downgrade": allow_downgrade }),
    );
    if let Some(p) = &progress {
        p.end();
    }
    let status = result.map_err(failure)?;
    if json {
        print_json(&status);
    } else {
        println!("upgraded {}", one_line(&status));
    }
    Ok(0)
}

pub fn simple(socket: Option<&Path>, method: &str, id: &str, json: bool) -> Result<u8, Failure> {
    let mut client = connect(socket)?;
    let status = client.call(method, json!({ "id": id })).map_err(failure)?;
    if json {
        print_json(&status);
    } else {
        let verb = match method {
            "plugin.unload" => "unloaded",
            "plugin.reload" => "reloaded",
            _ => "",
        };
        println!("{verb} {}", one_line(&status));
    }
    Ok(0)
}

pub fn list(socket: Option<&Path>, json: bool) -> Result<u8, Failure> {
    let mut client = connect(socket)?;
    let list = client.call("plugin.list", Value::Null).map_err(failure)?;
    if json {
        print_json(&list);
        return Ok(0);
    }
    let rows = list.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("no plugins loaded");
        return Ok(0);
    }
    println!(
        "{:<24} {:<10} {:<10} {:<12} {:>8} {:>8} {:>6} {:>9} {:>8} {:>8}",
        "ID", "VERSION", "TRUST", "STATE", "UPTIME", "RESTARTS", "VIOL", "MEMORY", "CPU", "PID"
    );
    for p in rows {
        let usage = &p["usage"];
        println!(
            "{:<24} {:<10} {:<10} {:<12} {:>8} {:>8} {:>6} {:>9} {:>8} {:>8}",
            p["id"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?"),
            p["trust"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?"),
            p["uptime_s"].as_f64().map_or("-".into(), duration),
            p["restarts"].as_u64().unwrap_or(0),
            p["violations"].as_u64().unwrap_or(0),
            usage["memory_bytes"].as_u64().map_or("-".into(), bytes),
            usage["cpu_us"]
                .as_u64()
                .map_or("-".into(), |us| format!("{:.1}s", us as f64 / 1e6)),
            p["pid"].as_i64().map_or("-".into(), |p| p.to_string()),
        );
    }
    Ok(0)
}

/// 42s, 17m, 3h, 2d.
fn duration(s: f64) -> String {
    match s as u64 {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// 812K, 38.2M, 1.4G.
fn bytes(b: u64) -> String {
    match b {
        b if b < 1 << 20 => format!("{}K", b >> 10),
        b if b < 1 << 30 => format!("{:.1}M", b as f64 / f64::from(1 << 20)),
        b => format!("{:.1}G", b as f64 / f64::from(1 << 30)),
    }
}

pub fn status(socket: Option<&Path>, id: &str, json: bool) -> Result<u8, Failure> {
    let mut client = connect(socket)?;
    let status = client
        .call("plugin.status", json!({ "id": id }))
        .map_err(failure)?;
    if json {
        print_json(&status);
        return Ok(0);
    }
    println!("{}", one_line(&status));
    println!("  package: {}", status["dir"].as_str().unwrap_or("?"));
    println!(
        "  runs from: {} (its sealed copy)",
        status["runs_from"].as_str().unwrap_or("?")
    );
    let signer = &status["signer"];
    if signer.is_null() {
        println!("  signature: none (loaded because the daemon allows unsigned packages)");
    } else {
        println!(
            "  signature: key {} ({}), sequence {}, signed {}, expires {}",
            signer["key"].as_str().unwrap_or("?"),
            signer["pinned_as"].as_str().unwrap_or("?"),
            signer["sequence"],
            signer["signed_at"].as_str().unwrap_or("?"),
            signer["expires"].as_str().unwrap_or("never")
        );
        println!(
            "  package digest: {}",
            signer["digest"].as_str().unwrap_or("?")
        );
    }
    println!(
        "  entry sha3-512: {}",
        status["entry_sha3_512"].as_str().unwrap_or("?")
    );
    println!("  restarts: {}", status["restarts"]);
    if let Some(exit) = status["last_exit"].get("reason").and_then(Value::as_str) {
        println!("  last exit: {exit}");
    }
    println!("  transitions:");
    for t in status["history"].as_array().into_iter().flatten() {
        println!(
            "    {} {} -> {}: {}",
            t["at_ms"],
            t["from"].as_str().unwrap_or("?"),
            t["to"]["state"].as_str().unwrap_or("?"),
            t["reason"].as_str().unwrap_or("")
        );
    }
    Ok(0)
}

fn print_log_line(line: &Value) {
    println!(
        "{} {}: {}",
        line["at_ms"],
        line["stream"].as_str().unwrap_or("?"),
        line["text"].as_str().unwrap_or("")
    );
}

pub fn logs(socket: Option<&Path>, id: &str, follow: bool) -> Result<u8, Failure> {
    let mut client = connect(socket)?;
    let result = client
        .call_streaming(
            "plugin.logs",
            json!({ "id": id, "follow": follow }),
            |method, params| {
                if method == "log" {
                    print_log_line(params);
                }
            },
        )
        .map_err(failure)?;
    for line in result["lines"].as_array().into_iter().flatten() {
        print_log_line(line);
    }
    Ok(0)
}

/// `stockade call ID METHOD [PARAMS]`: the result on stdout; a failed call's JSON-RPC error on
/// stderr and exit status 1.
pub fn call(
    socket: Option<&Path>,
    id: &str,
    method: &str,
    params: Option<&str>,
) -> Result<u8, Failure> {
    let params: Value = match params {
        None => Value::Null,
        Some(text) => serde_json::from_str(text).map_err(|e| {
            Failure::usage(
                format!("the params are not JSON: {e}"),
                "give one JSON object, such as '{\"text\": \"hi\"}'",
            )
        })?,
    };
    let mut client = connect(socket)?;
    match client.call(
        "call",
        json!({ "plugin": id, "method": method, "params": params }),
    ) {
        Ok(result) => {
            print_json(&result);
            Ok(0)
        }
        Err(ClientError::Rpc(e)) => {
            eprintln!("{}", serde_json::to_string(&e).unwrap_or_default());
            Ok(1)
        }
        Err(e) => Err(failure(e)),
    }
}

/// `stockade events [--follow]`: the daemon's recent events as JSON lines, then (with `--follow`)
/// new ones as they happen.
pub fn events(socket: Option<&Path>, follow: bool) -> Result<u8, Failure> {
    let mut client = connect(socket)?;
    let result = client
        .call_streaming(
            "events.subscribe",
            json!({ "follow": follow }),
            |method, params| {
                if method == "event" {
                    print_json(params);
                }
            },
        )
        .map_err(failure)?;
    for event in result["events"].as_array().into_iter().flatten() {
        print_json(event);
    }
    Ok(0)
}
