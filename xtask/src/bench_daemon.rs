//! `cargo xtask bench daemon`: what the daemon's call path and plugin loads cost, beside their
//! floors measured in the same run.
//!
//! - A call round trip to the sandboxed Rust example (`echo {"text": "hi"}` through the control
//!   socket, the daemon's checks and the plugin's socket), p50 and p99, beside a raw socketpair
//!   ping-pong of a line of the same size between two threads of this process.
//! - Calls per second with 64 in flight (one connection keeping 64 requests outstanding).
//! - `plugin load` to active for the Rust example, beside bwrap's cold start of /bin/true,
//!   interleaved.
//! - With N plugins loaded and idle: the daemon's resident memory and its threads' context
//!   switches per second (its wakeups: heartbeats only, ideally).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{build_release, flag_number, machine, median, percentile, replace_section, today};
use crate::{apt_install, workspace_root};

pub const USAGE: &str =
    "cargo xtask bench daemon [--calls N] [--loads N] [--idle-plugins N] [--no-record]";

pub(super) struct Daemon {
    pub(super) child: Child,
    pub(super) socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling the daemon this benchmark started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

pub(super) struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next: u64,
}

impl Conn {
    pub(super) fn open(socket: &Path) -> Result<Conn> {
        let s = UnixStream::connect(socket).context("connect to the daemon")?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            next: 1,
        })
    }

    fn send(&mut self, method: &str, params: &Value) -> Result<u64> {
        let id = self.next;
        self.next += 1;
        let line = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        Ok(id)
    }

    fn receive(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("the daemon closed the connection");
        }
        let v: Value = serde_json::from_str(&line)?;
        if let Some(e) = v.get("error") {
            bail!("the daemon answered an error: {e}");
        }
        Ok(v)
    }

    pub(super) fn request(&mut self, method: &str, params: Value) -> Result<Value> {
        self.send(method, &params)?;
        Ok(self.receive()?["result"].clone())
    }
}

/// For a benchmark that starts daemons: root, and the release binaries built; their directory.
pub(super) fn release_daemon(benchmark: &str) -> Result<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the {benchmark} benchmark needs root (the daemon creates sandboxes)");
    }
    build_release(&[
        "stockade",
        "stockade-daemon",
        "stockade-shim",
        "stockade-example-echo-rust",
    ])?;
    Ok(crate::target_dir()?.join("x86_64-unknown-linux-gnu/release"))
}

/// Calls per second with `in_flight` requests outstanding on one connection (a new one sent for
/// each answer), for `duration`.
pub(super) fn throughput(
    socket: &Path,
    call: &Value,
    in_flight: usize,
    duration: Duration,
) -> Result<f64> {
    let mut pipe = Conn::open(socket)?;
    for _ in 0..in_flight {
        pipe.send("call", call)?;
    }
    let until = Instant::now() + duration;
    let mut total = 0u64;
    while Instant::now() < until {
        pipe.receive()?;
        total += 1;
        pipe.send("call", call)?;
    }
    for _ in 0..in_flight {
        pipe.receive()?;
    }
    Ok(total as f64 / duration.as_secs_f64())
}

/// A publisher key for the benchmark's packages: `dir/keys/bench.{key,pub}`.
pub(super) fn generate_key(bin: &Path, dir: &Path) -> Result<PathBuf> {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys)?;
    let out = Command::new(bin.join("stockade"))
        .args(["key", "generate", "bench", "--out"])
        .arg(&keys)
        .output()?;
    if !out.status.success() {
        bail!(
            "stockade key generate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(keys.join("bench.key"))
}

/// Signs the package in `pkg` with `key`.
pub(super) fn sign(bin: &Path, pkg: &Path, key: &Path) -> Result<()> {
    let out = Command::new(bin.join("stockade"))
        .arg("sign")
        .arg(pkg)
        .arg("--key")
        .arg(key)
        .output()?;
    if !out.status.success() {
        bail!("stockade sign: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The daemon, pinning `key`'s public half; `extra` flags after.
pub(super) fn start_daemon(bin: &Path, dir: &Path, key: &Path, extra: &[&str]) -> Result<Daemon> {
    let socket = dir.join("control.sock");
    let child = Command::new(bin.join("stockade"))
        .arg("daemon")
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--pubkey")
        .arg(key.with_extension("pub"))
        .args(extra)
        .env("STOCKADE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log"))?)
        .spawn()
        .context("start the daemon")?;
    let daemon = Daemon { child, socket };
    let until = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&daemon.socket).is_err() {
        if Instant::now() > until {
            bail!(
                "the daemon did not listen: {}",
                std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(daemon)
}

/// A copy of the Rust example's package, with id `id`, below `dir` (not signed yet).
pub(super) fn package(bin: &Path, dir: &Path, id: &str) -> Result<PathBuf> {
    let root = workspace_root();
    let pkg = dir.join("packages").join(id);
    std::fs::create_dir_all(&pkg)?;
    let manifest = std::fs::read_to_string(root.join("examples/plugins/echo-rust/plugin.toml"))?
        .replace("id = \"echo-rust\"", &format!("id = \"{id}\""));
    std::fs::write(pkg.join("plugin.toml"), manifest)?;
    std::fs::copy(bin.join("echo-rust"), pkg.join("echo-rust"))?;
    Ok(pkg)
}

/// The floor: a line of `bytes` bytes sent and echoed back over a socketpair, between two threads.
fn socketpair_floor(rounds: usize, bytes: usize) -> Result<Vec<f64>> {
    let (a, b) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut reader = BufReader::new(b.try_clone()?);
        let mut writer = b;
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            writer.write_all(&line)?;
        }
    });
    let mut reader = BufReader::new(a.try_clone()?);
    let mut writer = a;
    let mut message = vec![b'x'; bytes.saturating_sub(1)];
    message.push(b'\n');
    let mut answer = Vec::new();
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        writer.write_all(&message)?;
        answer.clear();
        reader.read_until(b'\n', &mut answer)?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(writer);
    drop(reader);
    echo.join().expect("echo thread")?;
    Ok(samples)
}

fn time_bwrap() -> Result<f64> {
    let argv = super::bwrap_true();
    let t = Instant::now();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("bwrap failed: {status}");
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Context switches so far of each thread of `pid` (its wakeups, and its preemptions).
fn context_switches(pid: u32) -> std::collections::HashMap<String, u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Default::default();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let n = status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            Some((t.file_name().to_string_lossy().into_owned(), n))
        })
        .collect()
}

/// Switches between two samples, over the threads present in both (tokio's idle blocking
/// threads come and go).
fn switches_between(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
) -> u64 {
    after
        .iter()
        .filter_map(|(tid, n)| Some(n.saturating_sub(*before.get(tid)?)))
        .sum()
}

/// (RssAnon, RssFile) of `pid` in KiB: the daemon's own memory, and its mappings of files and
/// kernel objects (each plugin's ring buffer, mapped to be read, is kernel memory counted here).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:"), field("RssFile:"))
}

pub fn run(args: &[&str]) -> Result<()> {
    let calls = flag_number(args, "--calls", 20_000)?;
    let loads = flag_number(args, "--loads", 30)?;
    let idle_plugins = flag_number(args, "--idle-plugins", 32)?;
    let record = !args.contains(&"--no-record");
    let bin = release_daemon("daemon")?;
    apt_install(&["bubblewrap"])?;
    // Below /tmp: each plugin's uid must traverse the path to its package.
    let dir = PathBuf::from(format!("/tmp/stockade-bench-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let chmod = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
    };
    chmod(&dir)?;
    let key = generate_key(&bin, &dir)?;
    let daemon = start_daemon(&bin, &dir, &key, &[])?;
    let pkg = package(&bin, &dir, "bench-echo")?;
    sign(&bin, &pkg, &key)?;
    chmod(&dir.join("packages"))?;
    chmod(&pkg)?;
    let mut control = Conn::open(&daemon.socket)?;

    // 1. Load to active, interleaved with bwrap's cold start of /bin/true.
    for _ in 0..3 {
        control.request("plugin.load", json!({ "dir": pkg }))?;
        control.request("plugin.unload", json!({ "id": "bench-echo" }))?;
        time_bwrap()?;
    }
    let mut load_ms = Vec::new();
    let mut bwrap_ms = Vec::new();
    for _ in 0..loads {
        let t = Instant::now();
        control.request("plugin.load", json!({ "dir": pkg }))?;
        load_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        control.request("plugin.unload", json!({ "id": "bench-echo" }))?;
        bwrap_ms.push(time_bwrap()?);
    }
    control.request("plugin.load", json!({ "dir": pkg }))?;

    // 2. Call round trips, one at a time, beside the socketpair floor.
    let call = json!({ "plugin": "bench-echo", "method": "echo", "params": { "text": "hi" } });
    let size = json!({ "jsonrpc": "2.0", "id": 1, "method": "call", "params": call })
        .to_string()
        .len()
        + 1;
    for _ in 0..1000 {
        control.request("call", call.clone())?;
    }
    let mut call_us = Vec::with_capacity(calls);
    let mut floor_us = Vec::with_capacity(calls);
    let chunk = 1000;
    for _ in 0..calls.div_ceil(chunk) {
        for _ in 0..chunk {
            let t = Instant::now();
            control.request("call", call.clone())?;
            call_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        floor_us.extend(socketpair_floor(chunk, size)?);
    }

    // 3. Throughput with 64 calls in flight: one connection keeping 64 requests outstanding (a
    // new one sent for each answer), as an asynchronous client would.
    let in_flight = 64;
    let per_sec = throughput(&daemon.socket, &call, in_flight, Duration::from_secs(3))?;

    // 4. Idle: N plugins loaded, the daemon's memory and wakeups.
    control.request("plugin.unload", json!({ "id": "bench-echo" }))?;
    let pid = daemon.child.id();
    let rss_empty = rss_kib(pid);
    let mut idle_loaded = 0;
    for i in 0..idle_plugins {
        let id = format!("idle-{i}");
        let p = package(&bin, &dir, &id)?;
        sign(&bin, &p, &key)?;
        chmod(&p)?;
        match control.request("plugin.load", json!({ "dir": p })) {
            Ok(_) => idle_loaded += 1,
            Err(e) => {
                println!("stopped loading at {i} plugins: {e:#}");
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_loaded = rss_kib(pid);
    let idle_window = Duration::from_secs(10);
    let before = context_switches(pid);
    std::thread::sleep(idle_window);
    let switches = switches_between(&before, &context_switches(pid));
    drop(control);
    drop(daemon);

    let floor_p50 = median(&floor_us);
    let call_p50 = median(&call_us);
    let load_p50 = median(&load_ms);
    let bwrap_p50 = median(&bwrap_ms);
    let mut table = String::from("| what | p50 | p99 | ÷ its floor |\n|---|---|---|---|\n");
    table.push_str(&format!(
        "| `stockade call` round trip (control socket → daemon → sandboxed Rust plugin → back), {calls} calls | {call_p50:.1} µs | {:.1} µs | {:.2} |\n",
        percentile(&call_us, 0.99),
        call_p50 / floor_p50
    ));
    table.push_str(&format!(
        "| floor: socketpair ping-pong of a {size}-byte line between two threads | {floor_p50:.1} µs | {:.1} µs | 1 |\n",
        percentile(&floor_us, 0.99)
    ));
    table.push_str(&format!(
        "| `plugin load` → active, Rust example, monitors loaded, {loads} loads | {load_p50:.2} ms | {:.2} ms | {:.2} |\n",
        percentile(&load_ms, 0.99),
        load_p50 / bwrap_p50
    ));
    table.push_str(&format!(
        "| floor: `bwrap --unshare-all` /bin/true, interleaved | {bwrap_p50:.2} ms | {:.2} ms | 1 |\n",
        percentile(&bwrap_ms, 0.99)
    ));
    let idle_line = format!(
        "{in_flight} calls in flight: **{per_sec:.0} calls/s** (target 200,000). {idle_loaded} plugins loaded and idle (heartbeat 10 s): the daemon's own memory (RssAnon) {} KiB, {:.0} KiB per plugin over the empty daemon's {} KiB; mapped kernel objects and files (RssFile: each plugin's 2 MiB event ring buffer, mapped twice to be read) {} KiB, {:.0} KiB per plugin; {switches} context switches of the daemon's threads in {} s ({:.2}/s; the heartbeats alone are {:.1}/s, each a few switches).",
        rss_loaded.0,
        (rss_loaded.0.saturating_sub(rss_empty.0)) as f64 / idle_loaded.max(1) as f64,
        rss_empty.0,
        rss_loaded.1,
        (rss_loaded.1.saturating_sub(rss_empty.1)) as f64 / idle_loaded.max(1) as f64,
        idle_window.as_secs(),
        switches as f64 / idle_window.as_secs_f64(),
        idle_loaded as f64 / 10.0
    );
    println!("{table}\n{idle_line}");
    println!(
        "call p50 ÷ floor: {:.2} (target ≤ 2); load ÷ bwrap: {:.2} (target ≤ 1)",
        call_p50 / floor_p50,
        load_p50 / bwrap_p50
    );
    if record {
        let section = format!(
            "Measured {} on {}.\n\n{table}\n{idle_line}\n\nCall p50 ÷ its floor: **{:.2}** (target ≤ 2); load ÷ bwrap: **{:.2}** (target ≤ 1); calls/s with 64 in flight: **{per_sec:.0}** (target ≥ 200,000).",
            today(),
            machine(),
            call_p50 / floor_p50,
            load_p50 / bwrap_p50
        );
        replace_section(
            &workspace_root().join("docs/benchmarks.md"),
            "<!-- bench:daemon:begin -->",
            "<!-- bench:daemon:end -->",
            &section,
        )?;
    }
    // Per-call plugins and the Python plugin's calls, in a daemon of their own.
    let per_call_args: &[&str] = if record { &[] } else { &["--no-record"] };
    super::per_call::run(per_call_args)
}

pub(super) struct RemoveOnDrop(pub(super) PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
