//! `cargo xtask setup [ebpf|bench]`: what this machine needs beyond stable Rust, installed once.
//!
//! - `ebpf` (also with no argument): the eBPF programs (ebpf/) are built by supervisor/build.rs
//!   with aya-build, which runs `cargo +nightly build -Z build-std=core --target
//!   bpfel-unknown-none`. That needs the nightly toolchain's rust-src and bpf-linker, exactly
//!   0.10.3 (its default feature: the LLVM of the toolchain that builds it). Each is checked
//!   before anything is installed, so on a machine that has both this takes a few hundredths of a
//!   second; `cargo xtask test` and `cargo xtask vm-test` run it before they build.
//! - `bench`: what the benchmarks compare against (Debian packages).
//! - pytest, for the Python SDK's tests (`cargo xtask test` and `vm-test` install it): pinned,
//!   from PyPI, into `target/python-tools/pytest-<version>` with the system's Python 3 (the one
//!   the SDK's tests run with), once.
//!
//! One line per step (`setup: <what>: present | installing ... | installed`); a failure ends the
//! run with a one-line cause and a hint.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

use crate::{apt_install, cargo};

pub const USAGE: &str = "cargo xtask setup [ebpf|state|pytest|bench]";

/// The bpf-linker the eBPF build is known to work with; another version is replaced.
const BPF_LINKER_VERSION: &str = "0.10.3";

pub fn run(args: &[&str]) -> Result<()> {
    match args {
        [] => {
            ebpf()?;
            state()?;
            pytest();
            eprintln!(
                "setup: the benchmarks' peers (bubblewrap, unshare): `cargo xtask setup bench`"
            );
            Ok(())
        }
        ["ebpf"] => ebpf(),
        ["pytest"] => {
            pytest();
            Ok(())
        }
        ["state"] => state(),
        ["bench"] => apt_install(&["bubblewrap", "util-linux"]),
        _ => bail!("usage: {USAGE}"),
    }
}

/// What the state tests need: a PostgreSQL server (the suite starts a throwaway cluster of its
/// own; Debian's package also starts one of its own, which nothing here uses), the `sqlite3`
/// shell (the tamper tests edit the daemon's database with it), `openssl` (the throwaway
/// server's certificates) and a headless chromium (the HTML report's test renders it).
pub fn state() -> Result<()> {
    let server = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().any(|e| e.path().join("bin/postgres").exists()))
        .unwrap_or(false);
    // chromium-headless-shell: the HTML report is checked in a real browser (tests/daemon.rs).
    let mut missing = vec!["sqlite3", "openssl", "chromium-headless-shell"];
    if !server {
        missing.push("postgresql");
    }
    apt_install(&missing)
}

/// pytest and its dependencies, pinned: the Python SDK's tests run under it (tests/sdk.rs).
pub const PYTEST: &[&str] = &[
    "pytest==8.3.4",
    "iniconfig==2.3.1",
    "packaging==26.4",
    "pluggy==1.7.0",
];

/// Where `pytest` installs them (a `PYTHONPATH` entry), named after every pin: another pin is
/// another directory. tests/sdk.rs takes the newest `python-tools/pytest-*`.
pub fn pytest_dir() -> Result<PathBuf> {
    let name = PYTEST.join("+").replace("==", "-");
    Ok(crate::target_dir()?.join("python-tools").join(name))
}

/// Installs pytest when missing. A failure is told, not fatal: only the SDK's test needs it,
/// and it says so itself.
pub fn pytest() {
    let step = "pytest for the Python SDK's tests";
    let dir = match pytest_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("setup: {step}: {e:#}");
            return;
        }
    };
    if dir.join("pytest").join("__init__.py").exists() {
        eprintln!("setup: {step}: present");
        return;
    }
    let has_pip = Command::new("/usr/bin/python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_pip {
        if let Err(e) = apt_install(&["python3-pip"]) {
            eprintln!("setup: {step}: {e:#}");
            return;
        }
    }
    eprintln!("setup: {step}: installing into {}", dir.display());
    // This run's own (two runs may install at once); renamed into place whole.
    let partial = dir.with_file_name(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    // An install that lost its pytest.
    let _ = std::fs::remove_dir_all(&dir);
    // Their dependencies come too (exceptiongroup and tomli below Python 3.11).
    let out = Command::new("/usr/bin/python3")
        .args(["-m", "pip", "install", "--quiet", "--target"])
        .arg(&partial)
        .args(PYTEST)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .output();
    match out {
        Ok(o) if o.status.success() => match std::fs::rename(&partial, &dir) {
            Ok(()) => eprintln!("setup: {step}: installed"),
            // Another run put its own there first: the same pins.
            Err(_) if dir.join("pytest").join("__init__.py").exists() => {
                let _ = std::fs::remove_dir_all(&partial);
                eprintln!("setup: {step}: installed");
            }
            Err(e) => eprintln!("setup: {step}: {e}"),
        },
        Ok(o) => {
            let _ = std::fs::remove_dir_all(&partial);
            eprintln!(
                "setup: {step}: pip failed: {}\nhint: the SDK's test needs it; PyPI must be reachable",
                String::from_utf8_lossy(&o.stderr).trim()
            )
        }
        Err(e) => eprintln!("setup: {step}: cannot run /usr/bin/python3 -m pip: {e}"),
    }
}

/// The nightly rust-src and bpf-linker 0.10.3, each installed only when missing.
pub fn ebpf() -> Result<()> {
    rust_src()?;
    bpf_linker()
}

/// A failed step: `<cause>` on one line, `hint: <hint>` on the next (main prints it after
/// `xtask: `).
fn failed(
    step: &str,
    cause: impl std::fmt::Display,
    hint: impl std::fmt::Display,
) -> anyhow::Error {
    anyhow::anyhow!("setup: {step}: {cause}\nhint: {hint}")
}

const RUST_SRC: &str = "rust-src for nightly";

fn rust_src() -> Result<()> {
    let list = ["component", "list", "--toolchain", "nightly", "--installed"];
    let out = match Command::new("rustup").args(list).stderr(Stdio::piped()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(failed(
                RUST_SRC,
                "rustup is not on PATH",
                "the eBPF programs are built with rustup's nightly toolchain: put ~/.cargo/bin on \
                 PATH (export PATH=\"$HOME/.cargo/bin:$PATH\"), or install rustup (https://rustup.rs)",
            ))
        }
        Err(e) => return Err(failed(RUST_SRC, format!("running rustup: {e}"), "is rustup intact?")),
    };
    if !out.status.success() {
        return Err(failed(
            RUST_SRC,
            format!(
                "`rustup {}` failed: {}",
                list.join(" "),
                rustup_error(&String::from_utf8_lossy(&out.stderr))
            ),
            "install the nightly toolchain: `rustup toolchain install nightly --profile minimal \
             --component rust-src`",
        ));
    }
    if lists_rust_src(&String::from_utf8_lossy(&out.stdout)) {
        eprintln!("setup: {RUST_SRC}: present");
        return Ok(());
    }
    let add = ["component", "add", "rust-src", "--toolchain", "nightly"];
    eprintln!("setup: {RUST_SRC}: installing (rustup {})", add.join(" "));
    let status = Command::new("rustup").args(add).status().map_err(|e| {
        failed(
            RUST_SRC,
            format!("running rustup: {e}"),
            "is rustup intact?",
        )
    })?;
    if !status.success() {
        return Err(failed(
            RUST_SRC,
            format!("`rustup {}` failed ({status}; its message is above)", add.join(" ")),
            "it downloads from the rustup dist server (static.rust-lang.org, or RUSTUP_DIST_SERVER): \
             check that it is reachable, then run `cargo xtask setup` again",
        ));
    }
    eprintln!("setup: {RUST_SRC}: installed");
    Ok(())
}

/// Whether `rustup component list --installed` output names rust-src (it has no target suffix).
fn lists_rust_src(list: &str) -> bool {
    list.lines()
        .any(|l| l.split_whitespace().next() == Some("rust-src"))
}

/// rustup's `error: ...` line (it may be followed by `help:` and a backtrace), else its first line.
fn rustup_error(stderr: &str) -> String {
    let mut lines = stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.clone().next().unwrap_or("no message").to_string();
    lines
        .find_map(|l| l.strip_prefix("error: "))
        .map_or(first, str::to_string)
}

fn bpf_linker() -> Result<()> {
    // The step's name is also exactly what `bpf-linker --version` prints.
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    let step = wanted.as_str();
    let cargo_bin = cargo_home().join("bin");
    let on_path = version_of(Path::new("bpf-linker")).map_err(|e| {
        failed(
            step,
            format!("running `bpf-linker --version`: {e}"),
            reinstall_hint(),
        )
    })?;
    match on_path.as_deref() {
        Some(v) if v == wanted => {
            eprintln!("setup: {step}: present");
            return Ok(());
        }
        // Installed where cargo installs, but the build would not find it (build.rs looks it up on
        // PATH): installing again would not help.
        None if version_of(&cargo_bin.join("bpf-linker"))
            .ok()
            .flatten()
            .as_deref()
            == Some(wanted.as_str()) =>
        {
            return Err(not_on_path(step, &cargo_bin));
        }
        _ => {}
    }
    let install = [
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
    ]
    .map(String::from);
    eprintln!(
        "setup: {step}: {}installing (cargo {}; it compiles for about 4 minutes)",
        on_path.map_or(String::new(), |v| format!("found `{v}`; ")),
        install.join(" ")
    );
    // Outside the workspace, so that nothing of its configuration (.cargo/config.toml: the
    // target and static linking) applies to bpf-linker.
    let status = cargo()
        .args(&install)
        .current_dir(std::env::temp_dir())
        .status()
        .map_err(|e| failed(step, format!("running cargo: {e}"), "is cargo on PATH?"))?;
    if !status.success() {
        return Err(failed(
            step,
            format!(
                "`cargo {}` failed ({status}; its message is above)",
                install.join(" ")
            ),
            "it downloads from crates.io: check that crates.io is reachable, then run \
             `cargo xtask setup` again",
        ));
    }
    match version_of(Path::new("bpf-linker")) {
        Ok(Some(v)) if v == wanted => {
            eprintln!("setup: {step}: installed in {}", cargo_bin.display());
            Ok(())
        }
        Ok(None) => Err(not_on_path(step, &cargo_bin)),
        Ok(Some(v)) => Err(failed(
            step,
            format!(
                "installed in {}, but the bpf-linker found first on PATH says `{v}`",
                cargo_bin.display()
            ),
            format!(
                "remove that one, or put {} first on PATH",
                cargo_bin.display()
            ),
        )),
        Err(e) => Err(failed(
            step,
            format!("installed, but `bpf-linker --version` fails: {e}"),
            reinstall_hint(),
        )),
    }
}

fn not_on_path(step: &str, cargo_bin: &Path) -> anyhow::Error {
    failed(
        step,
        format!("installed in {}, which is not on PATH", cargo_bin.display()),
        format!(
            "the eBPF build looks bpf-linker up on PATH: export PATH=\"{}:$PATH\"",
            cargo_bin.display()
        ),
    )
}

fn reinstall_hint() -> String {
    format!("reinstall it: `cargo install bpf-linker@{BPF_LINKER_VERSION} --locked --force`")
}

/// What `<program> --version` prints (trimmed); None when there is no such program. A bare name
/// is looked up on PATH.
fn version_of(program: &Path) -> Result<Option<String>> {
    match Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(Some(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )),
        Ok(out) => bail!("{}", out.status),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Where `cargo install` puts binaries (below `bin/`): $CARGO_HOME, else ~/.cargo.
fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("~/.cargo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_src_in_component_list() {
        let list = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrust-src\n\
                    rust-std-x86_64-unknown-linux-gnu\n";
        assert!(lists_rust_src(list));
        assert!(lists_rust_src("rust-src (installed)\n"));
        assert!(!lists_rust_src(
            "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!lists_rust_src(""));
    }

    #[test]
    fn rustup_error_line() {
        let stderr = "error: toolchain 'nightly-x86_64-unknown-linux-gnu' is not installed\n\
                      help: run `rustup toolchain install nightly-x86_64-unknown-linux-gnu`\n\n\
                      Stack backtrace:\n   0: anyhow::error\n";
        assert_eq!(
            rustup_error(stderr),
            "toolchain 'nightly-x86_64-unknown-linux-gnu' is not installed"
        );
        assert_eq!(rustup_error("info: something\n"), "info: something");
        assert_eq!(rustup_error(""), "no message");
    }

    #[test]
    fn arguments() {
        assert!(run(&["ebpf", "extra"]).is_err());
        assert!(run(&["nonsense"]).is_err());
    }
}
