//! `cargo xtask bench registry`: what the audit log costs the daemon's calls. Every call is
//! answered only once its audit record is committed (group commit: one transaction per batch of
//! waiting records), so the cost shows in the calls' throughput and round trip. Measured side by
//! side, interleaved round by round, on four daemons that differ only in their database:
//!
//! - `memory:` — the records are kept in memory and "committed" at once: the floor, nothing durable;
//! - SQLite with `synchronous = FULL` (the default: each group commit synced, a power loss keeps
//!   what was acknowledged);
//! - SQLite with `synchronous = NORMAL` (`[audit] sync = "normal"`: a daemon crash keeps it);
//! - PostgreSQL 15 on loopback (a throwaway server, its defaults: fsync and synchronous commit on;
//!   the URL's default `sslmode=prefer`, so TLS, as a URL without `sslmode` gets).
//!
//! For each: calls per second with 64 in flight on one connection (each call is one audit
//! record, so it is also the rate of durable records) — the daemon benchmark's measure — and with
//! 256; the p50 round trip of one call at a time. The target: the audit cuts the call throughput
//! by at most 10% (≥ 0.90 of the floor) at 64 in flight. A client that keeps N calls in flight
//! gets at most N ÷ (one call's round trip): a commit's wait, added to every round trip, costs
//! throughput even when no CPU is short; 256 in flight shows what is left once it is hidden.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::daemon::{
    generate_key, package, release_daemon, sign, start_daemon, throughput, Conn, RemoveOnDrop,
};
use super::{flag_number, machine, median, replace_section, today};
use crate::workspace_root;

pub const USAGE: &str = "cargo xtask bench registry [--rounds N] [--seconds N] [--no-record]";

struct Setup {
    name: &'static str,
    database: String,
    config: &'static str,
    throughput: Vec<f64>,
    /// The same with 256 in flight.
    wide: Vec<f64>,
    p50_us: Vec<f64>,
}

struct PgServer(PathBuf);

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = crate::postgres::stop(&self.0);
    }
}

pub fn run(args: &[&str]) -> Result<()> {
    let rounds = flag_number(args, "--rounds", 7)?;
    let seconds = flag_number(args, "--seconds", 2)?;
    let record = !args.contains(&"--no-record");
    let bin = release_daemon("registry")?;
    crate::setup::state()?;
    // Below /tmp: each plugin's uid must traverse the path to its package.
    let dir = PathBuf::from(format!(
        "/tmp/stockade-bench-registry-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let chmod = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
    };
    chmod(&dir)?;
    let pg = crate::postgres::start(&dir.join("pg"))?;
    let _pg = PgServer(dir.join("pg"));
    let key = generate_key(&bin, &dir)?;
    let mut setups = vec![
        Setup {
            name: "memory: (nothing durable: the floor)",
            database: "memory:".into(),
            config: "",
            throughput: vec![],
            wide: vec![],
            p50_us: vec![],
        },
        Setup {
            name: "SQLite, sync = full (the default)",
            database: String::new(),
            config: "",
            throughput: vec![],
            wide: vec![],
            p50_us: vec![],
        },
        Setup {
            name: "SQLite, sync = normal",
            database: String::new(),
            config: "[audit]\nsync = \"normal\"\n",
            throughput: vec![],
            wide: vec![],
            p50_us: vec![],
        },
        Setup {
            name: "PostgreSQL 15, loopback, TLS",
            database: pg.url.clone(),
            config: "",
            throughput: vec![],
            wide: vec![],
            p50_us: vec![],
        },
    ];
    let mut daemons = Vec::new();
    let call = json!({ "plugin": "bench-echo", "method": "echo", "params": { "text": "hi" } });
    for (i, s) in setups.iter().enumerate() {
        let own = dir.join(format!("daemon-{i}"));
        std::fs::create_dir_all(&own)?;
        chmod(&own)?;
        let config = own.join("daemon.toml");
        std::fs::write(&config, s.config)?;
        let mut extra = vec![
            "--config".to_string(),
            config.to_string_lossy().into_owned(),
        ];
        if !s.database.is_empty() {
            extra.extend(["--database".to_string(), s.database.clone()]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let daemon = start_daemon(&bin, &own, &key, &extra)?;
        let pkg = package(&bin, &own, "bench-echo")?;
        sign(&bin, &pkg, &key)?;
        chmod(&own.join("packages"))?;
        chmod(&pkg)?;
        let mut control = Conn::open(&daemon.socket)?;
        control.request("plugin.load", json!({ "dir": pkg }))?;
        for _ in 0..1000 {
            control.request("call", call.clone())?;
        }
        daemons.push((daemon, control));
    }
    let duration = Duration::from_secs(seconds as u64);
    let cpu_before = cpu_times();
    for round in 0..rounds {
        // Each round starts with another setup: none always runs first or last.
        let n = setups.len();
        for k in 0..n {
            let i = (round + k) % n;
            let (s, (daemon, control)) = (&mut setups[i], &mut daemons[i]);
            s.throughput
                .push(throughput(&daemon.socket, &call, 64, duration)?);
            s.wide
                .push(throughput(&daemon.socket, &call, 256, duration)?);
            let mut us = Vec::with_capacity(2000);
            for _ in 0..2000 {
                let t = Instant::now();
                control.request("call", call.clone())?;
                us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            s.p50_us.push(median(&us));
        }
        let got: Vec<String> = setups
            .iter()
            .map(|s| format!("{:.0}", s.throughput.last().copied().unwrap_or(0.0)))
            .collect();
        eprintln!("round {}/{rounds}: calls/s {}", round + 1, got.join(" "));
    }
    drop(daemons);
    // The machine's speed drifts from second to second (a shared VM): each setup is compared
    // with the floor of the same round, and the ratios' median reported.
    let ratio = |s: &Setup, of: fn(&Setup) -> &Vec<f64>| {
        let floor = of(&setups[0]);
        let r: Vec<f64> = of(s).iter().zip(floor).map(|(a, b)| a / b).collect();
        median(&r)
    };
    let floor_p50 = median(&setups[0].p50_us);
    let mut table = String::from(
        "| database | calls/s, 64 in flight (= durable records/s) | ÷ memory | calls/s, 256 in flight | ÷ memory | call p50 | cost of one audited call (p50 − memory's) |\n|---|---|---|---|---|---|---|\n",
    );
    for s in &setups {
        let p50 = median(&s.p50_us);
        table.push_str(&format!(
            "| {} | {:.0} | {:.3} | {:.0} | {:.3} | {p50:.1} µs | {:+.1} µs |\n",
            s.name,
            median(&s.throughput),
            ratio(s, |s| &s.throughput),
            median(&s.wide),
            ratio(s, |s| &s.wide),
            p50 - floor_p50
        ));
    }
    let verdict = |i: usize| {
        let r = ratio(&setups[i], |s| &s.throughput);
        format!("**{r:.2}** ({})", if r >= 0.90 { "met" } else { "NOT met" })
    };
    let summary = format!(
        "Throughput with the audit ÷ without (target ≥ 0.90): SQLite full {}, SQLite normal {}, PostgreSQL {}.",
        verdict(1),
        verdict(2),
        verdict(3)
    );
    // The share of the run's CPU time the hypervisor gave to other guests: when it is high the
    // absolute numbers fall and spread, and only the same round's ratios compare.
    let steal = match (cpu_before, cpu_times()) {
        (Some((t0, s0)), Some((t1, s1))) if t1 > t0 => {
            format!("{:.1}%", 100.0 * (s1 - s0) as f64 / (t1 - t0) as f64)
        }
        _ => "unknown".into(),
    };
    let summary =
        format!("{summary} CPU time stolen by the hypervisor during the rounds: {steal}.");
    println!("{table}\n{summary}");
    if record {
        let section = format!(
            "Measured {} on {}: {rounds} rounds of {seconds} s per measure, interleaved (each round \
             starting with another setup); throughput and p50: medians; ÷ memory: the median of \
             each round's ratio to the floor's measure in the same round.\n\n{table}\n{summary}",
            today(),
            machine(),
        );
        replace_section(
            &workspace_root().join("docs/benchmarks.md"),
            "<!-- bench:registry:begin -->",
            "<!-- bench:registry:end -->",
            &section,
        )?;
    }
    Ok(())
}

/// The machine's total CPU time and the part of it stolen (`/proc/stat`'s first line), in ticks.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal
    Some((ticks.iter().sum(), *ticks.get(7)?))
}
