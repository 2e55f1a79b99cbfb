//! `cargo xtask fuzz TARGET|all [--time S]`: runs the cargo-fuzz targets of `fuzz/` (libFuzzer,
//! on the nightly toolchain) for S seconds each, and fails when one finds a crash or a hang.
//!
//! Why: policies will come from plugin authors, so the parser and the compiler take hostile input;
//! a panic there is a denial of service of the supervisor, and a slow input is one too.
//!
//! Steps, one line each (`fuzz: <what>: ...`):
//! 1. the nightly toolchain must be installed (`cargo xtask setup` needs it too);
//! 2. cargo-fuzz is installed when missing (`cargo install cargo-fuzz@0.13.2 --locked`, outside
//!    the workspace, as setup.rs installs bpf-linker); present, it is used whatever its version;
//! 3. the seed corpus is written afresh into fuzz/target/seeds/TARGET, from the stock profiles
//!    (policies/profiles/*.toml), every ```toml example of docs/policy.md and docs/plugins.md, and
//!    the example packages' manifests. Generated at each
//!    run rather than copied into the repository, so the seeds follow the profiles and the docs
//!    as they change, and nothing can go stale;
//! 4. `cargo +nightly fuzz run TARGET fuzz/corpus/TARGET fuzz/target/seeds/TARGET --
//!    -max_total_time=S`: new inputs go to the working corpus fuzz/corpus/TARGET (kept between
//!    local runs, ignored by git), crash inputs to fuzz/artifacts/TARGET, whose paths are printed
//!    with the command that replays them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{cargo, workspace_root};

pub const USAGE: &str =
    "cargo xtask fuzz TARGET|all [--time S]    (targets: policy_parse, policy_compile)";

/// The fuzz targets of fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &["policy_parse", "policy_compile"];

/// Seconds per target when `--time` is not given.
const DEFAULT_SECONDS: u64 = 60;

/// The cargo-fuzz installed when none is (the version this was written and measured with).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// One input running longer than this is a hang, reported like a crash (libFuzzer's default is
/// 20 minutes). Parsing a policy takes milliseconds even at the size limits.
const HANG_SECONDS: u64 = 10;

/// Inputs up to this many bytes (libFuzzer's default follows the largest seed, about 4 KB):
/// room for the long lists and lines that the limits of the language are about.
const MAX_INPUT_BYTES: usize = 16 << 10;

pub fn run(args: &[&str]) -> Result<()> {
    let (targets, seconds) = parse_args(args)?;
    let started = Instant::now();
    nightly()?;
    cargo_fuzz()?;
    let mut failed = Vec::new();
    for target in targets {
        if let Err(e) = fuzz(target, seconds) {
            eprintln!("fuzz: {target}: {e:#}");
            failed.push(target);
        }
    }
    eprintln!("fuzz: done in {:.0} s", started.elapsed().as_secs_f64());
    if !failed.is_empty() {
        bail!("fuzz: {} failed (see above)", failed.join(", "));
    }
    Ok(())
}

/// `TARGET|all [--time S]` into the targets and the seconds for each.
fn parse_args(args: &[&str]) -> Result<(Vec<&'static str>, u64)> {
    let usage = || anyhow::anyhow!("usage: {USAGE}");
    let (target, rest) = args.split_first().ok_or_else(usage)?;
    let targets: Vec<&'static str> = match *target {
        "all" => TARGETS.to_vec(),
        name => match TARGETS.iter().find(|t| **t == name) {
            Some(t) => vec![*t],
            None => bail!(
                "unknown fuzz target `{name}`: the targets are {} (or all)",
                TARGETS.join(", ")
            ),
        },
    };
    let seconds = match rest {
        [] => DEFAULT_SECONDS,
        ["--time", s] => match s.parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => bail!("--time takes a whole number of seconds greater than 0, got `{s}`"),
        },
        _ => return Err(usage()),
    };
    Ok((targets, seconds))
}

fn nightly() -> Result<()> {
    let out = Command::new("rustc")
        .args(["+nightly", "--version"])
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => {
            eprintln!(
                "fuzz: nightly toolchain: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
            Ok(())
        }
        _ => bail!(
            "fuzz: the nightly toolchain is missing (cargo-fuzz builds with sanitizers, which \
             need nightly)\nhint: rustup toolchain install nightly --profile minimal"
        ),
    }
}

/// What `cargo fuzz --version` prints, if cargo finds the subcommand.
fn cargo_fuzz_version() -> Option<String> {
    let out = cargo()
        .args(["fuzz", "--version"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cargo_fuzz() -> Result<()> {
    if let Some(version) = cargo_fuzz_version() {
        eprintln!("fuzz: {version}: present");
        return Ok(());
    }
    let install = [
        "install".to_string(),
        format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked".to_string(),
    ];
    eprintln!(
        "fuzz: cargo-fuzz: installing (cargo {}; it compiles for about 2 minutes)",
        install.join(" ")
    );
    let started = Instant::now();
    // Outside the workspace, so that its configuration (.cargo/config.toml: the target and
    // static linking) does not apply to cargo-fuzz.
    let status = cargo()
        .args(&install)
        .current_dir(std::env::temp_dir())
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!(
            "fuzz: `cargo {}` failed ({status}; its message is above)\nhint: it downloads from \
             crates.io: check that crates.io is reachable, then run the command again",
            install.join(" ")
        );
    }
    match cargo_fuzz_version() {
        Some(version) => {
            eprintln!(
                "fuzz: {version}: installed in {:.0} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        None => bail!(
            "fuzz: cargo-fuzz was installed but `cargo fuzz` does not find it\nhint: put cargo's \
             bin directory (~/.cargo/bin) on PATH"
        ),
    }
}

/// `cargo +nightly fuzz ...` at the workspace root, where cargo-fuzz finds `fuzz/`. Through
/// rustup's `cargo` rather than $CARGO (the stable cargo running xtask), so `+nightly` works.
fn cargo_nightly_fuzz(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz"]).current_dir(root);
    // Set by the stable cargo that runs xtask; the nightly cargo sets its own.
    for var in ["CARGO", "RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN"] {
        cmd.env_remove(var);
    }
    cmd
}

fn fuzz(target: &str, seconds: u64) -> Result<()> {
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");

    let started = Instant::now();
    let status = cargo_nightly_fuzz(&root)
        .args(["build", target])
        .status()
        .context("running cargo +nightly fuzz build")?;
    if !status.success() {
        bail!("`cargo +nightly fuzz build {target}` failed ({status}; its message is above)");
    }
    eprintln!(
        "fuzz: {target}: built in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let seeds = fuzz_dir.join("target").join("seeds").join(target);
    let written = write_seeds(&root, &seeds)?;
    let corpus = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let before = files_in(&artifacts)?;
    eprintln!(
        "fuzz: {target}: {seconds} s from {written} seeds ({}) and the corpus in {}",
        seeds.display(),
        corpus.display()
    );
    let status = cargo_nightly_fuzz(&root)
        .args(["run", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={HANG_SECONDS}"))
        .arg(format!("-max_len={MAX_INPUT_BYTES}"))
        .status()
        .context("running cargo +nightly fuzz run")?;
    let found: Vec<PathBuf> = files_in(&artifacts)?
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    if !found.is_empty() {
        for input in &found {
            eprintln!(
                "fuzz: {target}: input saved in {}\n  replay: cargo +nightly fuzz run {target} {}",
                input.display(),
                input.display()
            );
        }
        bail!(
            "found {} failing input(s) (crash-*: a panic or a sanitizer error; timeout-*: over \
             {HANG_SECONDS} s; oom-*: over libFuzzer's memory limit)",
            found.len()
        );
    }
    if !status.success() {
        bail!("`cargo +nightly fuzz run {target}` failed ({status}; its message is above)");
    }
    eprintln!("fuzz: {target}: no failure in {seconds} s");
    Ok(())
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        files.push(entry?.path());
    }
    Ok(files)
}

/// The seeds, written afresh into `dir`: each stock profile, and each TOML example of
/// docs/policy.md. Returns how many.
fn write_seeds(root: &Path, dir: &Path) -> Result<usize> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut seeds: Vec<(String, String)> = Vec::new();
    let profiles = root.join("policies").join("profiles");
    for entry in
        std::fs::read_dir(&profiles).with_context(|| format!("listing {}", profiles.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            seeds.push((format!("profile-{name}"), text));
        }
    }
    // The manifest parser reads the same inputs (policy_parse runs both): docs/plugins.md's
    // examples and the example packages' manifests seed it.
    for doc in ["policy", "plugins"] {
        let docs = root.join("docs").join(format!("{doc}.md"));
        let markdown = std::fs::read_to_string(&docs)
            .with_context(|| format!("reading {}", docs.display()))?;
        for (i, example) in toml_examples(&markdown).into_iter().enumerate() {
            seeds.push((format!("docs-{doc}-{}.toml", i + 1), example));
        }
    }
    let packages = root.join("examples").join("plugins");
    if let Ok(entries) = std::fs::read_dir(&packages) {
        for entry in entries.flatten() {
            let manifest = entry.path().join("plugin.toml");
            if let Ok(text) = std::fs::read_to_string(&manifest) {
                let name = entry.file_name().to_string_lossy().into_owned();
                seeds.push((format!("package-{name}.toml"), text));
            }
        }
    }
    if seeds.is_empty() {
        bail!(
            "no seeds: no profile in {} and no example in docs/policy.md or docs/plugins.md",
            profiles.display(),
        );
    }
    for (name, text) in &seeds {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(seeds.len())
}

/// The contents of every ```toml fenced block of a Markdown text.
fn toml_examples(markdown: &str) -> Vec<String> {
    let mut examples = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        let fence = line.trim_start();
        match &mut current {
            None if fence.starts_with("```toml") => current = Some(String::new()),
            None => {}
            Some(_) if fence.starts_with("```") => examples.extend(current.take()),
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    examples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        assert_eq!(
            parse_args(&["policy_parse"]).ok(),
            Some((vec!["policy_parse"], DEFAULT_SECONDS))
        );
        assert_eq!(
            parse_args(&["all", "--time", "30"]).ok(),
            Some((TARGETS.to_vec(), 30))
        );
        assert!(parse_args(&[]).is_err());
        assert!(parse_args(&["nonsense"]).is_err());
        assert!(parse_args(&["policy_parse", "--time"]).is_err());
        assert!(parse_args(&["policy_parse", "--time", "0"]).is_err());
        assert!(parse_args(&["policy_parse", "--time", "1m"]).is_err());
        assert!(parse_args(&["policy_parse", "extra"]).is_err());
    }

    #[test]
    fn examples_are_the_toml_blocks() {
        let md =
            "# Title\n\n```toml\na = 1\n\n[b]\n```\n\n```sh\nls\n```\n  ```toml\nc = 2\n  ```\n";
        assert_eq!(toml_examples(md), vec!["a = 1\n\n[b]\n", "c = 2\n"]);
        // An unclosed block is not an example.
        assert!(toml_examples("```toml\na = 1\n").is_empty());
    }

    /// The targets listed here are the fuzz crate's binaries.
    #[test]
    fn targets_match_the_fuzz_crate() {
        let manifest = workspace_root().join("fuzz").join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap_or_default();
        let bins: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|name| *name != "stockade-fuzz")
            .collect();
        assert_eq!(bins, TARGETS, "{}", manifest.display());
    }
}
