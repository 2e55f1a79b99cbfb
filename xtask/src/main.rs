//! `cargo xtask`: the project's own tasks.
//!
//! - `cargo xtask test`: build everything, run the whole suite, and say which privileged or
//!   feature-gated tests ran and which were skipped (and why); records the skips in
//!   target/coverage/host.txt.
//! - `cargo xtask vm-test`: the suite again, inside a qemu guest running Debian's 6.12 kernel
//!   (pure cgroup v2, BPF LSM): see vm.rs and docs/testing.md.
//! - `cargo xtask deb`: the Debian package, from a release build (deb.rs).
//! - `cargo xtask coverage`: which feature-gated tests ran on the host and in the VM; fails when
//!   one was skipped in both.
//! - `cargo xtask bench launch [--runs N]`: cold-start time of `stockade run` beside bubblewrap
//!   and unshare, interleaved in one run, recorded in docs/benchmarks.md.
//! - `cargo xtask bench monitors [--rounds N]`: what the eBPF monitors cost the host and a sandbox,
//!   their enforcement latency and event throughput, recorded in docs/benchmarks.md.
//! - `cargo xtask fuzz TARGET|all [--time S]`: the cargo-fuzz targets of fuzz/ on nightly for S
//!   seconds each (installs cargo-fuzz when missing); fails on a crash or a hang. See fuzz.rs.
//! - `cargo xtask setup [ebpf]`: installs what building the eBPF programs needs (the nightly
//!   rust-src and bpf-linker 0.10.3), skipping what is already there; `test` and `vm-test` run it
//!   first. `cargo xtask setup bench`: what the benchmarks compare against (Debian packages). See
//!   setup.rs.

mod bench;
mod coverage;
mod deb;
mod fuzz;
mod postgres;
mod setup;
mod vm;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

fn main() {
    if let Err(e) = dispatch() {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match args.first().map(String::as_str) {
        Some("test") => {
            setup::ebpf()?;
            setup::state()?;
            setup::pytest();
            test(&rest)
        }
        Some("postgres") => postgres::command(&rest),
        Some("bench") => bench::run(&rest),
        Some("setup") => setup::run(&rest),
        // Before vm-test's own steps: it builds the workspace on the host (vm.rs, test_binaries).
        Some("vm-test") => {
            setup::ebpf()?;
            setup::state()?;
            setup::pytest();
            vm::run(&rest)
        }
        Some("coverage") => coverage::run(&rest),
        Some("deb") => deb::command(&rest),
        Some("fuzz") => fuzz::run(&rest),
        _ => {
            eprintln!("usage: cargo xtask test [-- CARGO-TEST-ARGS...]");
            eprintln!("       {}", vm::USAGE);
            eprintln!("       cargo xtask coverage [ENVIRONMENT...]");
            eprintln!("       {}", deb::USAGE);
            eprintln!("       cargo xtask bench launch [--runs N]");
            eprintln!("       cargo xtask bench monitors [--rounds N]");
            eprintln!("       {}", fuzz::USAGE);
            eprintln!("       {}", setup::USAGE);
            eprintln!("       {}", postgres::USAGE);
            std::process::exit(2);
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The target directory (`cargo metadata`: honours CARGO_TARGET_DIR and build.target-dir).
pub fn target_dir() -> Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed");
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let dir = meta["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Builds the workspace and runs every test, echoing the output and collecting `skipped:` lines.
fn test(extra: &[&str]) -> Result<()> {
    // libtest keeps a passing test's stdout to itself unless asked: --show-output prints it (in
    // the "successes:" section), and with it the `skipped:` lines.
    let mut args: Vec<&str> = extra.to_vec();
    match args.iter().position(|a| *a == "--") {
        Some(i) => args.insert(i + 1, "--show-output"),
        None => args.extend(["--", "--show-output"]),
    }
    let status = cargo()
        .args(["build", "--workspace", "--all-targets"])
        .status()
        .context("cargo build")?;
    if !status.success() {
        bail!("the build failed");
    }
    // The Debian package of this build's binaries, for the tests of the package itself (which
    // say they are skipped when it could not be made).
    if let Err(e) = test_package() {
        eprintln!("xtask: no Debian package of this build: {e:#}");
    }
    // One PostgreSQL server for the suite's database tests (each makes a database of its own).
    let pg_dir = std::env::temp_dir().join(format!("stockade-pg-{}", std::process::id()));
    let cluster = postgres::start(&pg_dir);
    // The integration tests' scratch directory (tests/tests/harness: `scratch`), this run's own.
    let scratch = format!("/tmp/stockade-tests-{}", std::process::id());
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .args(&args)
        .env("RUST_BACKTRACE", "1")
        .env("STOCKADE_TEST_SCRATCH", &scratch)
        .env("STOCKADE_XTASK", this_executable()?)
        .stdout(Stdio::piped());
    match &cluster {
        Ok(c) => {
            println!(
                "PostgreSQL for the tests: {} (in {})",
                postgres_shown(&c.url),
                c.dir.display()
            );
            cmd.env("STOCKADE_TEST_POSTGRES", &c.url)
                .env("STOCKADE_TEST_POSTGRES_TLS", c.dir.join("tls"));
        }
        Err(e) => println!("no PostgreSQL for the tests: {e:#}"),
    }
    let mut child = cmd.spawn().context("cargo test")?;
    let stdout = child.stdout.take().expect("piped");
    let mut skipped = Vec::new();
    let mut passed = 0u64;
    let mut failed = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(why) = line.trim().strip_prefix("skipped: ") {
            skipped.push(why.to_string());
        }
        if let Some(counts) = line.strip_prefix("test result: ") {
            passed += count(counts, " passed");
            failed += count(counts, " failed");
        }
    }
    let status = child.wait()?;
    if cluster.is_ok() {
        if let Err(e) = postgres::stop(&pg_dir) {
            eprintln!("stopping the tests' PostgreSQL: {e:#}");
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let (uid, kernel) = (
        unsafe_geteuid(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default(),
    );
    println!("\n== where the tests ran ==");
    println!(
        "host: kernel {}, {}",
        kernel.trim(),
        if uid == 0 {
            "as root (privileged tests ran)"
        } else {
            "not root"
        }
    );
    if skipped.is_empty() {
        println!("every privileged and feature-gated test ran here");
    } else {
        println!("skipped here ({}):", skipped.len());
        for s in &skipped {
            println!("  {s}");
        }
    }
    println!("{passed} passed, {failed} failed");
    // Recorded whether or not something failed: the skips are what `cargo xtask coverage` needs.
    let cgroups = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "pure cgroup v2"
    } else if Path::new("/sys/fs/cgroup/unified").exists() {
        "hybrid cgroups (v1 controllers + v2)"
    } else {
        "cgroup v1"
    };
    coverage::record(
        &target_dir()?,
        "host",
        &format!("kernel {}, {cgroups}", kernel.trim()),
        extra.is_empty(),
        &skipped,
        None,
    )?;
    if !status.success() {
        bail!("some tests failed");
    }
    Ok(())
}

/// Packages the test build's binaries into target/<triple>/debug/debian (where
/// tests/tests/service.rs looks for it).
pub fn test_package() -> Result<PathBuf> {
    let bins = target_dir()?.join("x86_64-unknown-linux-gnu/debug");
    deb::package(&bins, &bins.join("debian"), deb::Compression::Fast)
}

pub fn count(result: &str, label: &str) -> u64 {
    result
        .split(';')
        .find(|part| part.trim_end().ends_with(label.trim()))
        .and_then(|part| part.split_whitespace().rev().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn unsafe_geteuid() -> u32 {
    // Read from /proc rather than adding a libc dependency to xtask.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// Installs Debian packages, once: a package already installed is not fetched again.
/// This program's path, for the tests to run it (`xtask postgres`). A build during the run may
/// replace the file: the kernel then names the old one "PATH (deleted)", and the new one is at
/// PATH.
fn this_executable() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// A PostgreSQL URL without its password.
fn postgres_shown(url: &str) -> String {
    match url
        .split_once(':')
        .and_then(|(s, r)| Some((s, r.split_once('@')?.1)))
    {
        Some(("postgres", host)) => format!("postgres://stockade:***@{host}"),
        _ => url.to_string(),
    }
}

pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {}", missing.join(" "));
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed");
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("apt-get install")
    };
    // A first install on these machines sometimes fails in dpkg and succeeds when run again
    // (../shared/PLATFORM.md, about qemu-system-x86).
    if !install()?.success() {
        eprintln!("apt-get install failed; trying once more");
        if !install()?.success() {
            bail!("apt-get install {} failed twice", missing.join(" "));
        }
    }
    Ok(())
}
