//! `cargo xtask deb`: the Debian package (`stockade_VERSION_ARCH.deb`), built with `dpkg-deb`
//! from a staging directory (docs/operations.md, "Installing from the Debian package").
//!
//! What it installs:
//!
//! | path | what |
//! |---|---|
//! | /usr/bin/stockade, stockade-daemon, stockade-shim | the binaries (static: no library dependencies) |
//! | /lib/systemd/system/stockade.service | packaging/systemd/stockade.service |
//! | /etc/stockade/daemon.toml | packaging/daemon.toml, a conffile |
//! | /etc/stockade/plugins/ | where the default configuration loads packages from |
//! | /usr/share/stockade/profiles/ | the stock profiles (compiled in; here to read and copy) |
//! | /usr/share/doc/stockade/ | README, operations, policy, events, plugins, copyright |
//!
//! The maintainer scripts do what debhelper's would for a service the operator turns on
//! himself: the unit is not enabled at install (a plugin host with no publisher keys configured
//! has nothing to run; `systemctl enable --now stockade` does it), an upgrade restarts a running
//! daemon, a removal stops it, a purge forgets its enablement. The state directory (the registry
//! and the audit log) is kept even by a purge: an audit trail does not vanish with a package.
//!
//! Why not cargo-deb: one more tool to install on every CI machine for what is a staging
//! directory and one `dpkg-deb` call; the package's layout is Stockade's own job (the shim next
//! to the binaries, the unit, the conffile), and it is tested as such (tests/tests/service.rs).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const USAGE: &str =
    "cargo xtask deb [--out DIR]   (a release build, packaged as stockade_VERSION_ARCH.deb)";

/// The binaries, from the build's profile directory to /usr/bin.
const BINARIES: [&str; 3] = ["stockade", "stockade-daemon", "stockade-shim"];

/// Documentation, from the repository to /usr/share/doc/stockade.
const DOCS: [(&str, &str); 5] = [
    ("README.md", "README.md"),
    ("docs/operations.md", "operations.md"),
    ("docs/policy.md", "policy.md"),
    ("docs/events.md", "events.md"),
    ("docs/plugins.md", "plugins.md"),
];

const POSTINST: &str = r#"#!/bin/sh
# stockade's postinst (xtask/src/deb.rs): systemd learns of the unit; an upgrade restarts a
# daemon that was running. The unit is not enabled here: `systemctl enable --now stockade`.
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    if [ -n "$2" ]; then
        systemctl try-restart stockade.service >/dev/null || true
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
# stockade's prerm (xtask/src/deb.rs): a removal stops the daemon (it stops every plugin and
# drains its audit log first); an upgrade leaves it to the new postinst's restart.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop stockade.service >/dev/null 2>&1 || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
# stockade's postrm (xtask/src/deb.rs): systemd forgets the unit; a purge forgets that it was
# enabled too. /var/lib/stockade (the registry and the audit log) is kept: remove it by hand.
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge stockade.service >/dev/null || true
    fi
    rm -f /etc/systemd/system/multi-user.target.wants/stockade.service
    rmdir --ignore-fail-on-non-empty /etc/stockade/plugins /etc/stockade 2>/dev/null || true
    if [ -d /var/lib/stockade ]; then
        echo "stockade: /var/lib/stockade (the registry and the audit log) is kept" >&2
    fi
fi
exit 0
"#;

/// `cargo xtask deb [--out DIR]`: a release build, packaged.
pub fn command(args: &[&str]) -> Result<()> {
    let mut out = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--out" => out = Some(PathBuf::from(it.next().context("--out needs a directory")?)),
            other => bail!("unknown argument {other}\n  usage: {USAGE}"),
        }
    }
    let status = crate::cargo()
        .args(["build", "--release"])
        .args(BINARIES.iter().flat_map(|b| ["--bin", b]))
        .status()
        .context("cargo build --release")?;
    if !status.success() {
        bail!("the release build failed");
    }
    let target = crate::target_dir()?;
    let out = out.unwrap_or_else(|| target.join("debian"));
    let deb = package(
        &target.join("x86_64-unknown-linux-gnu/release"),
        &out,
        Compression::Small,
    )?;
    println!("{}", deb.display());
    Ok(())
}

#[derive(Clone, Copy)]
pub enum Compression {
    /// xz: what a package handed to people is compressed with.
    Small,
    /// gzip -1: the test suite's package, made at every run.
    Fast,
}

/// Stages the package from the binaries in `bin_dir` and builds it into `out_dir`; returns the
/// .deb's path. The staging directory is removed afterwards.
pub fn package(bin_dir: &Path, out_dir: &Path, compression: Compression) -> Result<PathBuf> {
    let root = crate::workspace_root();
    let version = env!("CARGO_PKG_VERSION");
    // The binaries are built for x86_64-unknown-linux-gnu (.cargo/config.toml): Debian's amd64.
    let arch = "amd64".to_string();
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let stage = out_dir.join(format!("stockade_{version}_{arch}.staging"));
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let result = stage_and_build(&root, bin_dir, &stage, version, &arch, compression);
    let _ = fs::remove_dir_all(&stage);
    let built = result?;
    let deb = out_dir.join(format!("stockade_{version}_{arch}.deb"));
    fs::rename(&built, &deb)?;
    Ok(deb)
}

fn stage_and_build(
    root: &Path,
    bin_dir: &Path,
    stage: &Path,
    version: &str,
    arch: &str,
    compression: Compression,
) -> Result<PathBuf> {
    let put = |to: &str, from: &Path, mode: u32| -> Result<()> {
        let dest = stage.join(to);
        fs::create_dir_all(dest.parent().expect("a path below the stage"))?;
        fs::copy(from, &dest)
            .with_context(|| format!("copying {} into the package", from.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let text = |to: &str, contents: &str, mode: u32| -> Result<()> {
        let dest = stage.join(to);
        fs::create_dir_all(dest.parent().expect("a path below the stage"))?;
        fs::write(&dest, contents)?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    for b in BINARIES {
        let from = bin_dir.join(b);
        if !from.is_file() {
            bail!(
                "{} is not built\n  hint: cargo build{} --bin {b}",
                from.display(),
                if bin_dir.ends_with("release") {
                    " --release"
                } else {
                    ""
                }
            );
        }
        let to = format!("usr/bin/{b}");
        put(&to, &from, 0o755)?;
        // Without debug info, as dh_strip leaves a binary (a test build's are mostly that).
        command_output(
            Command::new("strip")
                .arg("--strip-debug")
                .arg(stage.join(&to)),
        )?;
    }
    put(
        "lib/systemd/system/stockade.service",
        &root.join("packaging/systemd/stockade.service"),
        0o644,
    )?;
    put(
        "etc/stockade/daemon.toml",
        &root.join("packaging/daemon.toml"),
        0o644,
    )?;
    fs::create_dir_all(stage.join("etc/stockade/plugins"))?;
    let profiles = root.join("policies/profiles");
    let mut names: Vec<_> = fs::read_dir(&profiles)
        .with_context(|| format!("reading {}", profiles.display()))?
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().ends_with(".toml"))
        .collect();
    names.sort();
    for n in &names {
        put(
            &format!("usr/share/stockade/profiles/{}", n.to_string_lossy()),
            &profiles.join(n),
            0o644,
        )?;
    }
    for (from, to) in DOCS {
        put(
            &format!("usr/share/doc/stockade/{to}"),
            &root.join(from),
            0o644,
        )?;
    }
    text(
        "usr/share/doc/stockade/copyright",
        &format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
             Upstream-Name: stockade\n\nFiles: *\nCopyright: the Stockade developers\n\
             License: {}\n On Debian systems the full text of the Apache License 2.0 is in\n \
             /usr/share/common-licenses/Apache-2.0.\n",
            "Apache-2.0"
        ),
        0o644,
    )?;
    // Directories 0755 whatever the umask made them.
    set_dir_modes(stage)?;

    let installed_kib = du_kib(stage)?;
    let control = format!(
        "Package: stockade\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: Stockade developers <stockade@localhost>\n\
         Installed-Size: {installed_kib}\n\
         Section: admin\n\
         Priority: optional\n\
         Recommends: systemd\n\
         Description: sandbox supervisor for untrusted plugins\n \
         Stockade runs plugins it did not write as long-lived sandboxed services: user,\n \
         mount, pid, ipc, uts and network namespaces, Landlock, seccomp and cgroup limits,\n \
         with eBPF monitors that enforce each plugin's declared capabilities and unload it\n \
         on violations. Signed packages (Ed25519 over SHA3-512), JSON-RPC calls with\n \
         per-method allow lists and schemas, a hash-chained audit log.\n"
    );
    text("DEBIAN/control", &control, 0o644)?;
    text("DEBIAN/conffiles", "/etc/stockade/daemon.toml\n", 0o644)?;
    text("DEBIAN/postinst", POSTINST, 0o755)?;
    text("DEBIAN/prerm", PRERM, 0o755)?;
    text("DEBIAN/postrm", POSTRM, 0o755)?;
    // md5sums of every file but the conffiles, as dh_md5sums writes them (dpkg --verify reads it).
    let mut files = Vec::new();
    list_files(stage, stage, &mut files)?;
    files.retain(|f| !f.starts_with("DEBIAN/") && !f.starts_with("etc/"));
    files.sort();
    let sums = command_output(Command::new("md5sum").args(&files).current_dir(stage))?;
    text("DEBIAN/md5sums", &format!("{sums}\n"), 0o644)?;
    // DEBIAN/ too (dpkg-deb refuses it other than 0755..0775, and the umask made it).
    set_dir_modes(stage)?;

    let built = stage.with_extension("deb");
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("--root-owner-group");
    match compression {
        Compression::Small => cmd.arg("-Zxz"),
        Compression::Fast => cmd.args(["-Zgzip", "-z1"]),
    };
    let out = cmd
        .arg("--build")
        .arg(stage)
        .arg(&built)
        .output()
        .context("dpkg-deb (Debian's dpkg package)")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb --build failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(built)
}

fn command_output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn set_dir_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            set_dir_modes(&e.path())?;
        }
    }
    Ok(())
}

/// The files below `dir`, as paths relative to `base`.
fn list_files(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            list_files(base, &path, out)?;
        } else {
            let rel = path.strip_prefix(base).expect("below base");
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// The staged tree's size in KiB, as Installed-Size counts it.
fn du_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        if meta.is_dir() {
            total += du_kib(&e.path())?;
        } else {
            total += meta.len().div_ceil(1024);
        }
    }
    Ok(total)
}
