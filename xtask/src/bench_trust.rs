//! `cargo xtask bench trust`: what verifying a signed package costs, beside the SHA3-512 tools
//! people use, and what verification adds to `plugin load`.
//!
//! - A 50 MiB package (the Rust example, one 40 MiB file and 160 files of 64 KiB), signed:
//!   `stockade verify` (hashing every file through its descriptor, the signature, the manifest
//!   and policy checks; one process) beside `openssl dgst -sha3-512` and `sha3sum -a 512` over
//!   the same files, interleaved, the files in the page cache for all three.
//! - `plugin load` → active in a daemon: the small signed example, the same package unsigned
//!   (the daemon allows it), and the 50 MiB package: what the signature check and what the
//!   package's size (hashed and copied into the sealed copy) add.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;

use super::daemon::{generate_key, package, sign, start_daemon, Conn, RemoveOnDrop};
use super::{build_release, flag_number, machine, median, replace_section, today};
use crate::{apt_install, workspace_root};

pub const USAGE: &str = "cargo xtask bench trust [--runs N] [--loads N] [--no-record]";

/// Wall time of one run of `argv`, in ms; the command must succeed.
fn time(argv: &[String]) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new(&argv[0]).args(&argv[1..]).output()?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms)
}

/// `bytes` of incompressible data (a xorshift stream: the benchmark needs no entropy).
fn data(bytes: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(bytes);
    while v.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(bytes);
    v
}

/// The files of `dir`, recursively, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if p.file_name().is_some_and(|n| n != "stockade.sig") {
            out.push(p);
        }
    }
    out.sort();
    out
}

pub fn run(args: &[&str]) -> Result<()> {
    let runs = flag_number(args, "--runs", 15)?;
    let loads = flag_number(args, "--loads", 15)?;
    let record = !args.contains(&"--no-record");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the trust benchmark needs root (its second half loads plugins into a daemon)");
    }
    // sha3sum: Perl's Digest::SHA3 (its C core).
    apt_install(&["openssl", "libdigest-sha3-perl"])?;
    build_release(&[
        "stockade",
        "stockade-daemon",
        "stockade-shim",
        "stockade-example-echo-rust",
    ])?;
    let bin = crate::target_dir()?.join("x86_64-unknown-linux-gnu/release");
    let dir = PathBuf::from(format!("/tmp/stockade-bench-trust-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let key = generate_key(&bin, &dir)?;

    // The 50 MiB package.
    let big = package(&bin, &dir, "bench-big")?;
    std::fs::write(big.join("model.bin"), data(40 << 20, 1))?;
    std::fs::create_dir_all(big.join("assets"))?;
    for i in 0..160 {
        std::fs::write(
            big.join(format!("assets/part-{i:03}.bin")),
            data(64 << 10, i + 2),
        )?;
    }
    sign(&bin, &big, &key)?;
    let listed = files(&big);
    let total: u64 = listed
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    let stockade = bin.join("stockade").to_string_lossy().into_owned();
    let with_files = |head: &[&str]| -> Vec<String> {
        head.iter()
            .map(|s| s.to_string())
            .chain(listed.iter().map(|f| f.to_string_lossy().into_owned()))
            .collect()
    };
    let contenders: Vec<(&str, Vec<String>)> = vec![
        (
            "`stockade verify` (every file hashed, signature, manifest and policy checked)",
            vec![
                stockade.clone(),
                "verify".into(),
                big.to_string_lossy().into_owned(),
                "--pubkey".into(),
                key.with_extension("pub").to_string_lossy().into_owned(),
            ],
        ),
        (
            "`openssl dgst -sha3-512` over the same files",
            with_files(&["openssl", "dgst", "-sha3-512"]),
        ),
        (
            "`sha3sum -a 512` over the same files",
            with_files(&["sha3sum", "-a", "512"]),
        ),
    ];
    let mut samples = vec![Vec::new(); contenders.len()];
    for (_, argv) in &contenders {
        time(argv)?; // warm: the files in the page cache, the binaries loaded
    }
    for _ in 0..runs {
        for (i, (_, argv)) in contenders.iter().enumerate() {
            samples[i].push(time(argv)?);
        }
    }
    let medians: Vec<f64> = samples.iter().map(|s| median(s)).collect();
    let fastest_tool = medians[1..].iter().cloned().fold(f64::INFINITY, f64::min);
    let mut table = format!(
        "| {} files, {:.1} MiB | p50 | MB/s | ÷ the fastest tool |\n|---|---|---|---|\n",
        listed.len(),
        total as f64 / (1 << 20) as f64
    );
    for (i, (name, _)) in contenders.iter().enumerate() {
        table.push_str(&format!(
            "| {name} | {:.1} ms | {:.0} | {:.2} |\n",
            medians[i],
            total as f64 / 1e6 / (medians[i] / 1000.0),
            medians[i] / fastest_tool
        ));
    }

    // plugin load: small signed, small unsigned, 50 MiB signed.
    let small = package(&bin, &dir, "bench-small")?;
    sign(&bin, &small, &key)?;
    let unsigned = package(&bin, &dir, "bench-unsigned")?;
    let daemon = start_daemon(&bin, &dir, &key, &["--allow-unsigned"])?;
    let mut control = Conn::open(&daemon.socket)?;
    let cases = [
        ("the Rust example, signed", &small, "bench-small"),
        ("the same, unsigned (allowed)", &unsigned, "bench-unsigned"),
        ("the 50 MiB package, signed", &big, "bench-big"),
    ];
    let mut load_ms = vec![Vec::new(); cases.len()];
    for (_, pkg, id) in &cases {
        control.request("plugin.load", json!({ "dir": pkg }))?;
        control.request("plugin.unload", json!({ "id": id }))?;
    }
    for _ in 0..loads {
        for (i, (_, pkg, id)) in cases.iter().enumerate() {
            let t = Instant::now();
            control.request("plugin.load", json!({ "dir": pkg }))?;
            load_ms[i].push(t.elapsed().as_secs_f64() * 1000.0);
            control.request("plugin.unload", json!({ "id": id }))?;
        }
    }
    drop(control);
    drop(daemon);
    let load_p50: Vec<f64> = load_ms.iter().map(|s| median(s)).collect();
    let entry_bytes = std::fs::metadata(small.join("echo-rust")).map_or(0, |m| m.len());
    let mut loads_table =
        String::from("| `plugin load` → active | p50 | − the unsigned load |\n|---|---|---|\n");
    for (i, (name, _, _)) in cases.iter().enumerate() {
        loads_table.push_str(&format!(
            "| {name} | {:.2} ms | {:+.2} ms |\n",
            load_p50[i],
            load_p50[i] - load_p50[1]
        ));
    }
    let ratio = medians[0] / fastest_tool;
    let summary = format!(
        "`stockade verify` ÷ the fastest SHA3-512 tool: **{ratio:.2}** (target ≤ 1.2). The signature check adds {:+.2} ms to a load; a package's bytes add about {:.1} ms per 10 MiB (hashed and written to its sealed copy; the Rust example's entry is {:.1} MiB).",
        load_p50[0] - load_p50[1],
        (load_p50[2] - load_p50[0]) / ((total - entry_bytes) as f64 / (10 << 20) as f64),
        entry_bytes as f64 / (1 << 20) as f64,
    );
    println!("{table}\n{loads_table}\n{summary}");
    if record {
        replace_section(
            &workspace_root().join("docs/benchmarks.md"),
            "<!-- bench:trust:begin -->",
            "<!-- bench:trust:end -->",
            &format!(
                "Measured {} on {}.\n\n{table}\n{loads_table}\n{summary}",
                today(),
                machine()
            ),
        )?;
    }
    Ok(())
}
