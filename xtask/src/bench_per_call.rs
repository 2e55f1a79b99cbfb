//! `cargo xtask bench per-call` (also run by `cargo xtask bench daemon`): what a per-call plugin's
//! call costs (the UPM one-shot contract: a sandbox per call), beside the seeds' own model in the
//! same run — a plain `python3 plugin.py PAYLOAD` subprocess without any sandbox — and what a
//! long-lived Python plugin's call costs beside the Rust example's.
//!
//! - `stockade call ID doctor '{}'` from the CLI's spawn to its exit, the pool keeping one
//!   sandbox armed (`warm = 1`, the default), and with no pool (`warm = 0`: every call builds its
//!   sandbox), interleaved with `python3 plugin.py PAYLOAD` (the same script and payload);
//! - the round trip of one call through the control socket to the long-lived Python example
//!   (examples/plugins/echo-python) and to the Rust example, one after the other.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;

use super::daemon::{generate_key, release_daemon, sign, start_daemon, Conn, RemoveOnDrop};
use super::{flag_number, machine, median, percentile, replace_section, today};
use crate::workspace_root;

pub const USAGE: &str = "cargo xtask bench per-call [--rounds N] [--calls N] [--no-record]";

/// The methods the benchmark calls, for a per-call package of the UPM fixture.
const MANIFEST_TAIL: &str = r#"
entry = ["plugin.py"]
policy = { profile = "untrusted-default" }
mode = "per-call"
class = "PipPlugin"
init_args = { project_root = "/work", cache_dir = "/tmp/cache" }

[methods.doctor]
params = { type = "object" }
timeout = "20s"
"#;

fn chmod(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// A per-call package of tests/fixtures/upm_plugin.py, with `warm` armed sandboxes.
fn upm_package(dir: &Path, id: &str, warm: u32) -> Result<PathBuf> {
    let pkg = dir.join("packages").join(id);
    std::fs::create_dir_all(&pkg)?;
    chmod(&dir.join("packages"))?;
    chmod(&pkg)?;
    std::fs::copy(
        workspace_root().join("tests/fixtures/upm_plugin.py"),
        pkg.join("plugin.py"),
    )?;
    chmod(&pkg.join("plugin.py"))?;
    std::fs::write(
        pkg.join("plugin.toml"),
        format!(
            "id = \"{id}\"\nname = \"bench\"\nversion = \"1.0.0\"\n{MANIFEST_TAIL}\n[per_call]\nwarm = {warm}\n"
        ),
    )?;
    Ok(pkg)
}

/// A copy of an example package below `dir`, with `files` copied from the build (or the example).
fn example_package(dir: &Path, example: &str, files: &[(PathBuf, &str)]) -> Result<PathBuf> {
    let pkg = dir.join("packages").join(example);
    std::fs::create_dir_all(&pkg)?;
    chmod(&pkg)?;
    let src = workspace_root().join("examples/plugins").join(example);
    std::fs::copy(src.join("plugin.toml"), pkg.join("plugin.toml"))?;
    for (from, name) in files {
        std::fs::copy(from, pkg.join(name))?;
        chmod(&pkg.join(name))?;
    }
    Ok(pkg)
}

/// Milliseconds from the spawn of `cmd` to its exit; it must succeed.
fn time_command(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::piped()).output()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms)
}

/// Microseconds of `calls` sequential calls through `conn`.
fn round_trips(conn: &mut Conn, call: &serde_json::Value, calls: usize) -> Result<Vec<f64>> {
    for _ in 0..calls / 10 {
        conn.request("call", call.clone())?;
    }
    let mut us = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        conn.request("call", call.clone())?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(us)
}

pub fn run(args: &[&str]) -> Result<()> {
    let rounds = flag_number(args, "--rounds", 60)?;
    let calls = flag_number(args, "--calls", 2000)?;
    let record = !args.contains(&"--no-record");
    let bin = release_daemon("per-call")?;
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        bail!("the per-call benchmark runs Python plugins: /usr/bin/python3 is missing");
    }
    let dir = PathBuf::from(format!(
        "/tmp/stockade-bench-per-call-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveOnDrop(dir.clone());
    chmod(&dir)?;
    let key = generate_key(&bin, &dir)?;
    let daemon = start_daemon(&bin, &dir, &key, &[])?;
    let mut control = Conn::open(&daemon.socket)?;
    let warm = upm_package(&dir, "upm-warm", 1)?;
    let cold = upm_package(&dir, "upm-cold", 0)?;
    let py = example_package(
        &dir,
        "echo-python",
        &[(
            workspace_root().join("examples/plugins/echo-python/main.py"),
            "main.py",
        )],
    )?;
    let rust = example_package(&dir, "echo-rust", &[(bin.join("echo-rust"), "echo-rust")])?;
    for pkg in [&warm, &cold, &py, &rust] {
        sign(&bin, pkg, &key)?;
    }
    // 0. Long-lived plugins alone first: the Python example's call round trip beside the Rust
    // example's, before any per-call plugin (and its armed sandbox) is there.
    for pkg in [&py, &rust] {
        control.request("plugin.load", json!({ "dir": pkg }))?;
    }
    let text = json!({ "text": "hi" });
    let py_call = json!({ "plugin": "echo-python", "method": "echo", "params": text });
    let rust_call = json!({ "plugin": "echo-rust", "method": "echo", "params": text });
    let py_alone = round_trips(&mut control, &py_call, calls)?;
    let rust_alone = round_trips(&mut control, &rust_call, calls)?;
    for pkg in [&warm, &cold] {
        control.request("plugin.load", json!({ "dir": pkg }))?;
    }

    // 1. Per-call, interleaved with the unsandboxed subprocess the seeds run.
    let payload = json!({
        "class_name": "PipPlugin",
        "init_args": { "project_root": "/work", "cache_dir": "/tmp/cache" },
        "run_args": { "method_name": "doctor", "args": [], "kwargs": {} },
    })
    .to_string();
    let script = warm.join("plugin.py");
    let stockade_call = |id: &str| {
        let mut cmd = Command::new(bin.join("stockade"));
        cmd.args(["call", id, "doctor", "{}"])
            .env("STOCKADE_SOCKET", &daemon.socket)
            .stdout(Stdio::null());
        cmd
    };
    let plain = || {
        let mut cmd = Command::new(python);
        cmd.arg(&script).arg(&payload).stdout(Stdio::null());
        cmd
    };
    for _ in 0..3 {
        time_command(&mut plain())?;
        time_command(&mut stockade_call("upm-warm"))?;
        time_command(&mut stockade_call("upm-cold"))?;
    }
    let (mut plain_ms, mut warm_ms, mut cold_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain_ms.push(time_command(&mut plain())?);
        warm_ms.push(time_command(&mut stockade_call("upm-warm"))?);
        cold_ms.push(time_command(&mut stockade_call("upm-cold"))?);
    }

    // 2. The same round trips again, the per-call plugins loaded (one armed sandbox waiting).
    let py_us = round_trips(&mut control, &py_call, calls)?;
    let rust_us = round_trips(&mut control, &rust_call, calls)?;
    drop(control);
    drop(daemon);

    let p50 = median(&plain_ms);
    let row = |what: &str, ms: &[f64]| {
        format!(
            "| {what} | {:.1} ms | {:.1} ms | {:.2} |\n",
            median(ms),
            percentile(ms, 0.99),
            median(ms) / p50
        )
    };
    let mut table = String::from("| what | p50 | p99 | ÷ plain subprocess |\n|---|---|---|---|\n");
    table.push_str(&row(
        &format!(
            "`stockade call` of a per-call Python plugin, pool of 1 armed sandbox, {rounds} calls"
        ),
        &warm_ms,
    ));
    table.push_str(&row(
        "the same, no pool (`warm = 0`: each call builds its sandbox)",
        &cold_ms,
    ));
    table.push_str(&row(
        "the seeds' model: `python3 plugin.py PAYLOAD`, no sandbox, interleaved",
        &plain_ms,
    ));
    let trips = |py: &[f64], rust: &[f64]| {
        format!(
            "the Python example (examples/plugins/echo-python) p50 **{:.1} µs** (p99 {:.1} µs), the Rust example {:.1} µs (p99 {:.1} µs): {:.2}× the Rust plugin's",
            median(py),
            percentile(py, 0.99),
            median(rust),
            percentile(rust, 0.99),
            median(py) / median(rust)
        )
    };
    let long_lived = format!(
        "Long-lived plugins, one call at a time through the control socket, {calls} calls each. Before the per-call plugins were loaded: {}. With them loaded (their armed sandbox waiting), after the per-call runs: {}.",
        trips(&py_alone, &rust_alone),
        trips(&py_us, &rust_us),
    );
    let ratio = median(&warm_ms) / p50;
    println!("{table}\n{long_lived}");
    println!("per-call (pool) ÷ plain subprocess: {ratio:.2} (target ≤ 1.5)");
    if record {
        let section = format!(
            "Measured {} on {}.\n\n{table}\n{long_lived}\n\nA per-call plugin's call ÷ the unsandboxed subprocess: **{ratio:.2}** (target ≤ 1.5).",
            today(),
            machine(),
        );
        replace_section(
            &workspace_root().join("docs/benchmarks.md"),
            "<!-- bench:per-call:begin -->",
            "<!-- bench:per-call:end -->",
            &section,
        )?;
    }
    Ok(())
}
