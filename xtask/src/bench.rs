//! `cargo xtask bench launch`: the cold start of a sandboxed /bin/true, stockade beside its peers.
//! `cargo xtask bench monitors`: what the eBPF monitors cost and how fast they act
//! (bench_monitors.rs). `cargo xtask bench daemon`: the daemon's calls and loads
//! (bench_daemon.rs). `cargo xtask bench trust`: verification (bench_trust.rs). `cargo xtask
//! bench registry`: what the audit log costs the calls (bench_registry.rs). `cargo xtask bench
//! per-call`: per-call plugins beside a plain subprocess, and a Python plugin's calls
//! (bench_per_call.rs; `bench daemon` runs it too).
//!
//! The commands run interleaved (A B C A B C ...) rather than one after another, so that the
//! machine's noise falls on all of them alike; the result is quoted as medians and ratios, never
//! as an absolute target. Results go to docs/benchmarks.md with the machine and the date.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{apt_install, cargo, workspace_root};

#[path = "bench_monitors.rs"]
mod monitors;

#[path = "bench_daemon.rs"]
mod daemon;

#[path = "bench_trust.rs"]
mod trust;

#[path = "bench_registry.rs"]
mod registry;

#[path = "bench_per_call.rs"]
mod per_call;

struct Contender {
    name: &'static str,
    argv: Vec<String>,
    /// One environment variable for this contender only.
    env: Option<(&'static str, &'static str)>,
    /// Measured in the second phase, with no monitors loaded beforehand (each run loads them
    /// and, as their only user, removes them); the first phase keeps them loaded throughout.
    cold: bool,
    samples: Vec<f64>,
}

/// `stockade run --quiet --policy POLICY -- /bin/true`.
fn stockade_true(
    stockade: &Path,
    name: &'static str,
    policy: &Path,
    env: Option<(&'static str, &'static str)>,
    cold: bool,
) -> Contender {
    let argv = [
        stockade,
        Path::new("run"),
        Path::new("--quiet"),
        Path::new("--policy"),
        policy,
        Path::new("--"),
        Path::new("/bin/true"),
    ];
    Contender {
        name,
        argv: argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        env,
        cold,
        samples: vec![],
    }
}

pub fn run(args: &[&str]) -> Result<()> {
    match args.first().copied() {
        Some("launch") => {}
        Some("monitors") => return monitors::run(&args[1..]),
        Some("daemon") => return daemon::run(&args[1..]),
        Some("trust") => return trust::run(&args[1..]),
        Some("registry") => return registry::run(&args[1..]),
        Some("per-call") => return per_call::run(&args[1..]),
        _ => bail!(
            "usage: cargo xtask bench launch [--runs N] [--no-record]\n       {}\n       {}\n       {}\n       {}\n       {}",
            monitors::USAGE,
            daemon::USAGE,
            trust::USAGE,
            registry::USAGE,
            per_call::USAGE
        ),
    }
    let runs: usize = flag_value(args, "--runs")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(300);
    let record = !args.contains(&"--no-record");
    apt_install(&["bubblewrap", "util-linux"])?;
    build_release(&["stockade", "stockade-shim"])?;
    let root = workspace_root();
    let target = crate::target_dir()?;
    let stockade = target.join("x86_64-unknown-linux-gnu/release/stockade");
    let profile = root.join("policies/profiles/untrusted-default.toml");
    // The same profile in monitor mode, so that it may run without the eBPF monitors
    // (STOCKADE_MONITORS=off is refused in enforce mode): the sandbox's own launch cost apart.
    let scratch = target.join("bench-launch");
    std::fs::create_dir_all(&scratch)?;
    let monitor_mode = scratch.join("untrusted-default-monitor-mode.toml");
    std::fs::write(
        &monitor_mode,
        std::fs::read_to_string(&profile)?
            .replace("mode = \"enforce\"", "mode = \"monitor\"")
            .replace("action = \"kill\"", "action = \"report\""),
    )?;
    // The same profile without its writable /tmp: no symlink could lead the kernel's unix socket
    // programs astray, so no `[ipc]` walk of the read-only grants where those programs load.
    let no_walk = scratch.join("untrusted-default-no-tmp.toml");
    std::fs::write(
        &no_walk,
        std::fs::read_to_string(&profile)?
            .replace("write = [\"$TMP\"]", "write = []")
            .lines()
            .filter(|l| !l.starts_with("tmp_size"))
            .collect::<Vec<_>>()
            .join("\n"),
    )?;
    // The same profile without the syscall tracepoint: nothing to attach at launch.
    let untraced = scratch.join("untrusted-default-untraced.toml");
    std::fs::write(
        &untraced,
        format!(
            "{}\n[monitor]\nsyscall_tracepoint = false\n",
            std::fs::read_to_string(&profile)?
        ),
    )?;
    let s = |x: &str| x.to_string();
    let mut contenders = vec![
        Contender {
            name: "plain fork+exec",
            argv: vec![s("/bin/true")],
            env: None,
            cold: false,
            samples: vec![],
        },
        stockade_true(
            &stockade,
            "stockade run (untrusted-default), monitors kept loaded",
            &profile,
            None,
            false,
        ),
        stockade_true(
            &stockade,
            "stockade run, monitors kept loaded, no writable /tmp (no [ipc] walk)",
            &no_walk,
            None,
            false,
        ),
        stockade_true(
            &stockade,
            "stockade run, monitors kept loaded, `syscall_tracepoint = false`",
            &untraced,
            None,
            false,
        ),
        stockade_true(
            &stockade,
            "stockade run (untrusted-default), loading the monitors (no other user)",
            &profile,
            None,
            true,
        ),
        stockade_true(
            &stockade,
            "stockade run, eBPF monitors off (same profile, monitor mode)",
            &monitor_mode,
            Some(("STOCKADE_MONITORS", "off")),
            false,
        ),
        Contender {
            name: "bwrap --unshare-all",
            argv: bwrap_true(),
            env: None,
            cold: false,
            samples: vec![],
        },
        Contender {
            name: "unshare -Urpfnmiu",
            argv: ["unshare", "-Urpfnmiu", "--mount-proc", "/bin/true"]
                .map(s)
                .to_vec(),
            env: None,
            cold: false,
            samples: vec![],
        },
    ];
    // Untimed: keep the host's monitors loaded, or not, as the next contender needs.
    let monitors = |verb: &str| -> Result<()> {
        let status = Command::new(&stockade)
            .args(["monitors", verb])
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("stockade monitors {verb} failed");
        }
        Ok(())
    };
    // Warm-up, and a check that every contender works here.
    for c in &mut contenders {
        monitors(if c.cold { "down" } else { "up" })?;
        for _ in 0..5 {
            time_once(&c.argv, c.env).with_context(|| format!("{} does not run here", c.name))?;
        }
    }
    // First phase: the host's monitors kept loaded, as a server that launches often keeps them.
    monitors("up")?;
    for _ in 0..runs {
        for c in contenders.iter_mut().filter(|c| !c.cold) {
            c.samples.push(time_once(&c.argv, c.env)?);
        }
    }
    // Second phase: none loaded; each cold run loads them and, their only user, removes them.
    // bwrap again beside it, for a ratio from the same minutes.
    monitors("down")?;
    let bwrap_index = contenders.len() - 2;
    let mut bwrap_cold = Vec::new();
    for _ in 0..runs.div_ceil(3) {
        for c in contenders.iter_mut().filter(|c| c.cold) {
            c.samples.push(time_once(&c.argv, c.env)?);
        }
        let b = &contenders[bwrap_index];
        bwrap_cold.push(time_once(&b.argv, b.env)?);
    }
    let stockade_median = median(&contenders[1].samples);
    let no_walk_median = median(&contenders[2].samples);
    let untraced_median = median(&contenders[3].samples);
    let cold_median =
        median(&contenders[4].samples) / median(&bwrap_cold) * median(&contenders[6].samples);
    let sandbox_only_median = median(&contenders[5].samples);
    let bwrap_median = median(&contenders[6].samples);
    let mut table =
        String::from("| command | median | p90 | stockade ÷ this |\n|---|---|---|---|\n");
    for c in &contenders {
        let m = median(&c.samples);
        table.push_str(&format!(
            "| `{}` | {:.2} ms | {:.2} ms | {:.2} |\n",
            c.name,
            m,
            percentile(&c.samples, 0.9),
            stockade_median / m
        ));
    }
    println!("{table}");
    println!(
        "with the monitors kept loaded, stockade's median is {:.2}× bwrap's ({}); without the \
         [ipc] walk {:.2}×; without the syscall tracepoint {:.2}×; loading the monitors itself \
         {:.2}×; with the eBPF monitors off (the walk still runs) {:.2}×.",
        stockade_median / bwrap_median,
        if stockade_median <= bwrap_median {
            "target met: at or below bwrap"
        } else {
            "target NOT met"
        },
        no_walk_median / bwrap_median,
        untraced_median / bwrap_median,
        cold_median / bwrap_median,
        sandbox_only_median / bwrap_median
    );
    if record {
        record_result(
            &root.join("docs/benchmarks.md"),
            runs,
            &table,
            [
                stockade_median / bwrap_median,
                no_walk_median / bwrap_median,
                untraced_median / bwrap_median,
                cold_median / bwrap_median,
                sandbox_only_median / bwrap_median,
            ],
        )?;
    }
    Ok(())
}

/// bwrap's cold start of /bin/true, every namespace unshared: the peer launches are measured
/// against.
pub(crate) fn bwrap_true() -> Vec<String> {
    [
        "bwrap",
        "--unshare-all",
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "/bin/true",
    ]
    .map(str::to_string)
    .to_vec()
}

/// `cargo build --release` of these packages (what a benchmark measures).
pub(crate) fn build_release(packages: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--release"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if !cmd.status()?.success() {
        bail!("the release build failed");
    }
    Ok(())
}

fn flag_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1))
        .copied()
}

/// A numeric flag's value, or `default` when it is not given.
fn flag_number(args: &[&str], flag: &str, default: usize) -> Result<usize> {
    match flag_value(args, flag) {
        Some(v) => v
            .parse()
            .with_context(|| format!("{flag} {v}: not a whole number")),
        None => Ok(default),
    }
}

fn time_once(argv: &[String], env: Option<(&str, &str)>) -> Result<f64> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("spawn {}", argv[0]))?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        bail!("{} exited with {status}", argv.join(" "));
    }
    Ok(ms)
}

fn median(samples: &[f64]) -> f64 {
    percentile(samples, 0.5)
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}, kernel {}", kernel.trim())
}

fn today() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Replaces the launch section of docs/benchmarks.md (between its markers) with this run.
fn record_result(
    path: &Path,
    runs: usize,
    table: &str,
    [ratio, no_walk, untraced, cold, no_monitors]: [f64; 5],
) -> Result<()> {
    let cold_runs = runs.div_ceil(3);
    const BEGIN: &str = "<!-- bench:launch:begin -->";
    const END: &str = "<!-- bench:launch:end -->";
    let section = format!(
        "Measured {} on {}; {runs} interleaved runs of each command with the host's monitors kept loaded (`stockade monitors up`), wall time from spawn to exit.\n\n{table}\nstockade ÷ bwrap, the host's monitors kept loaded (`stockade monitors up`): **{ratio:.2}**; without the `[ipc]` walk (no writable /tmp): **{no_walk:.2}**; without the syscall tracepoint (`[monitor] syscall_tracepoint = false`: nothing attached at launch): **{untraced:.2}**; loading the monitors in the run (no other user of them; measured in a second phase with no monitors loaded, {cold_runs} runs beside bwrap again): **{cold:.2}**; without the eBPF monitors (the walk still runs: no kernel hook judges unix sockets then): **{no_monitors:.2}**",
        today(),
        machine()
    );
    replace_section(path, BEGIN, END, &section)
}

/// Replaces what lies between the markers `begin` and `end` in the file at `path` with `body`;
/// without both markers, appends them with `body` between at the end of the file.
fn replace_section(path: &Path, begin: &str, end: &str, body: &str) -> Result<()> {
    let section = format!("{begin}\n{body}\n{end}");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if b < e => format!("{}{section}{}", &text[..b], &text[e + end.len()..]),
        _ => format!("{text}\n{section}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("write {}", path.display()))?;
    println!("recorded in {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::replace_section;

    #[test]
    fn sections_are_replaced_or_appended() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("benchmarks.md");
        std::fs::write(
            &path,
            "# B\n\n<!-- a:begin -->\nold\n<!-- a:end -->\ntail\n",
        )
        .unwrap();
        replace_section(&path, "<!-- b:begin -->", "<!-- b:end -->", "first").unwrap();
        replace_section(&path, "<!-- a:begin -->", "<!-- a:end -->", "new").unwrap();
        replace_section(&path, "<!-- b:begin -->", "<!-- b:end -->", "second").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# B\n\n<!-- a:begin -->\nnew\n<!-- a:end -->\ntail\n\n<!-- b:begin -->\nsecond\n<!-- b:end -->\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
