//! `cargo xtask vm-test`: the test suite on a production-like kernel, in one qemu boot.
//!
//! Why a VM: these machines have hybrid cgroups and a kernel that refuses BPF LSM programs
//! (../shared/PLATFORM.md), while Stockade's users run pure cgroup v2 with the BPF LSM. The VM
//! boots Debian's own kernel with exactly that, shares the host's root read-only over 9p (so the
//! guest runs the very test executables built on the host, with the host's libraries and tools)
//! and the target directory read-write, and runs every test binary as root inside one boot: booting costs
//! seconds under emulation, so it is done once.
//!
//! The flow: host packages (qemu, busybox-static, zstd, xz) → the kernel package, fetched once and
//! cached (vm/kernel.rs) → the test binaries, built if missing → an initramfs holding busybox, the
//! 9p modules, /init and the runner script (vm/initramfs.rs) → KVM if it really works here, else
//! TCG → qemu, whose serial console is streamed, logged to target/vm-test/serial-<series>.log and parsed
//! for the runner's `@@vm-test` markers, test results and `skipped:` lines → a per-binary summary,
//! the coverage record (target/coverage/vm.txt) and the tests' status as the exit status.

mod initramfs;
mod kernel;

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{apt_install, cargo, count, coverage, target_dir};

pub const USAGE: &str =
    "cargo xtask vm-test [--kernel 6.12|6.1|6.12,6.1|all]... [--test NAME]... [--accel auto|kvm|tcg] \
[--timeout SECS] [--cold] [--systemd] [--refresh] [--mirror URL] [--exec SHELL-COMMAND] [--append KERNEL-ARGS] [-- TEST-ARGS...]";

/// What the guest's init reports when it cannot set the guest up (see vm/initramfs.rs).
const INIT_FAILED: i32 = 100;
/// How many lines of the serial log to show when the guest fails.
const TAIL: usize = 40;

struct Options {
    /// The kernels to boot; more than one boot side by side (each guest is one host thread
    /// under TCG, so two fit a 2-core machine), their console lines prefixed with the series.
    series: Vec<kernel::Series>,
    accel: Accel,
    timeout: Duration,
    /// `--test NAME`: only these binaries (an integration test's name, or a package's name for
    /// its unit tests).
    tests: Vec<String>,
    /// Passed to every test binary (libtest filters and flags).
    test_args: Vec<String>,
    refresh: bool,
    mirror: Option<String>,
    /// `--exec CMD`: run this shell command in the guest instead of the tests (for looking
    /// around, timing one thing, debugging a failure).
    exec: Option<String>,
    /// `--append ARGS`: more kernel command line.
    append: Vec<String>,
    /// `--cold`: no set of monitors held for the suite; each sandbox loads its own, as a lone
    /// `stockade run` on an idle host does (see [`runner_script`]).
    cold: bool,
    /// `--systemd`: the guest boots the host's systemd as PID 1 (its own target, `vmtest.target`,
    /// whose one service runs the test runner), for the tests of the unit under systemd itself;
    /// recorded as the coverage environment `vm-systemd`.
    systemd: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accel {
    Auto,
    Kvm,
    Tcg,
}

impl Options {
    fn parse(args: &[&str]) -> Result<Options> {
        let mut o = Options {
            series: Vec::new(),
            accel: Accel::Auto,
            timeout: Duration::from_secs(1800),
            tests: Vec::new(),
            test_args: Vec::new(),
            refresh: false,
            mirror: None,
            exec: None,
            append: Vec::new(),
            cold: false,
            systemd: false,
        };
        let mut it = args.iter();
        while let Some(&arg) = it.next() {
            let mut value = || {
                it.next()
                    .map(|v| v.to_string())
                    .with_context(|| format!("{arg} needs a value; usage: {USAGE}"))
            };
            match arg {
                "--kernel" => {
                    let v = value()?;
                    let list: Vec<&str> = if v == "all" {
                        vec!["6.12", "6.1"]
                    } else {
                        v.split(',').collect()
                    };
                    for name in list {
                        let s = kernel::Series::parse(name.trim())?;
                        if !o.series.contains(&s) {
                            o.series.push(s);
                        }
                    }
                }
                "--accel" => {
                    o.accel = match value()?.as_str() {
                        "auto" => Accel::Auto,
                        "kvm" => Accel::Kvm,
                        "tcg" => Accel::Tcg,
                        other => bail!("--accel {other}: expected auto, kvm or tcg"),
                    }
                }
                "--timeout" => {
                    let secs: u64 = value()?.parse().context("--timeout takes seconds")?;
                    o.timeout = Duration::from_secs(secs);
                }
                "--test" => o.tests.push(value()?),
                "--refresh" => o.refresh = true,
                "--mirror" => o.mirror = Some(value()?),
                "--exec" => o.exec = Some(value()?),
                "--append" => o.append.push(value()?),
                "--cold" => o.cold = true,
                "--systemd" => o.systemd = true,
                "--" => {
                    o.test_args = it.by_ref().map(|a| a.to_string()).collect();
                }
                other => bail!("unknown argument {other}; usage: {USAGE}"),
            }
        }
        if o.series.is_empty() {
            o.series.push(kernel::Series::V6_12);
        }
        if o.exec.is_some() && o.series.len() > 1 {
            bail!("--exec runs in one guest: give one --kernel");
        }
        Ok(o)
    }

    /// A run that leaves tests out cannot say which tests ran in the VM. (A `--systemd` run's
    /// record says which tests ran rather than which were skipped: see coverage.rs.)
    fn complete(&self) -> bool {
        self.tests.is_empty() && self.test_args.is_empty() && self.exec.is_none()
    }
}

/// One test executable, as cargo built it.
#[derive(Debug, Clone)]
struct TestBinary {
    /// e.g. "stockade-tests: resources" or "stockade (lib)".
    label: String,
    package: String,
    target: String,
    path: PathBuf,
    /// An integration test (tests/*.rs) rather than a crate's unit tests.
    integration: bool,
    /// Its arguments in the guest.
    args: Vec<String>,
    /// cargo runs each test binary in its package's directory; so does the guest.
    dir: PathBuf,
}

impl TestBinary {
    /// `--exec CMD` as the one thing the guest runs, by the busybox shell the runner also uses.
    fn exec(command: &str) -> TestBinary {
        TestBinary {
            label: format!("exec: {command}"),
            package: String::new(),
            target: String::new(),
            path: PathBuf::from("/run/vm-test/busybox"),
            integration: false,
            args: vec!["sh".into(), "-c".into(), command.into()],
            dir: crate::workspace_root(),
        }
    }
}

pub fn run(args: &[&str]) -> Result<()> {
    let opts = Options::parse(args)?;
    let started = Instant::now();
    install_host_packages()?;
    let packages_done = started.elapsed();

    let target = target_dir()?;
    let vm_dir = target.join("vm-test");
    fs::create_dir_all(&vm_dir).with_context(|| format!("creating {}", vm_dir.display()))?;
    let mut kernels = Vec::new();
    for &series in &opts.series {
        let kernel = kernel::obtain(series, &vm_dir, opts.mirror.as_deref(), opts.refresh)?;
        eprintln!(
            "vm-test: kernel {} ({}, booting {})",
            kernel.release,
            kernel.package,
            kernel.image.display()
        );
        kernels.push((series, kernel));
    }
    let kernel_done = started.elapsed();

    let binaries = match &opts.exec {
        Some(command) => vec![TestBinary::exec(command)],
        None => test_binaries(&opts)?,
    };
    if binaries.is_empty() {
        bail!(
            "no test binary matches --test {}",
            opts.tests.join(" --test ")
        );
    }
    let build_done = started.elapsed();
    let times = format!(
        "host packages {:.1} s, kernel {:.1} s, build {:.1} s",
        packages_done.as_secs_f64(),
        (kernel_done - packages_done).as_secs_f64(),
        (build_done - kernel_done).as_secs_f64(),
    );

    // One guest: its console is the output, as it comes. Several: each in a thread, each line
    // prefixed with its kernel series, the summaries printed whole as each guest ends.
    let several = kernels.len() > 1;
    let results: Vec<(kernel::Series, Result<()>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = kernels
            .iter()
            .map(|(series, kernel)| {
                let guest = Guest {
                    series: *series,
                    kernel,
                    binaries: &binaries,
                    target: &target,
                    vm_dir: &vm_dir,
                    opts: &opts,
                    prefix: if several {
                        format!("[{}] ", series.name())
                    } else {
                        String::new()
                    },
                    times: &times,
                    started,
                };
                (*series, scope.spawn(move || guest.run()))
            })
            .collect();
        handles
            .into_iter()
            .map(|(series, h)| {
                let result = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the thread running it panicked")));
                (series, result)
            })
            .collect()
    });
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(series, r)| {
            r.as_ref()
                .err()
                .map(|e| format!("{}: {e:#}", series.name()))
        })
        .collect();
    match failed.len() {
        0 => Ok(()),
        1 if !several => Err(results.into_iter().find_map(|(_, r)| r.err()).expect("one")),
        _ => bail!("{}", failed.join("; ")),
    }
}

/// One guest's boot: the initramfs for its kernel, the accelerator, qemu, and what its console
/// said.
struct Guest<'a> {
    series: kernel::Series,
    kernel: &'a kernel::Kernel,
    binaries: &'a [TestBinary],
    target: &'a Path,
    vm_dir: &'a Path,
    opts: &'a Options,
    /// Before each console line printed ("[6.1] " when several guests run side by side).
    prefix: String,
    /// The shared steps' times, for the last line.
    times: &'a str,
    started: Instant,
}

impl Guest<'_> {
    /// The kernel command line's additions: `--append`, and with `--systemd` what makes the
    /// guest's init hand over to systemd and systemd start only `vmtest.target`.
    fn append(&self) -> Vec<String> {
        let mut a = self.opts.append.clone();
        if self.opts.systemd {
            a.extend(
                [
                    "vmtest.systemd",
                    "systemd.unit=vmtest.target",
                    "systemd.show_status=false",
                    "fstab=no",
                ]
                .map(String::from),
            );
        }
        a
    }

    /// This guest's files in target/vm-test: serial-6.12.log, dmesg-6.1.log, kvm-probe-6.1.
    fn file(&self, stem: &str) -> PathBuf {
        let name = match stem.split_once('.') {
            Some((base, ext)) => format!("{base}-{}.{ext}", self.series.name()),
            None => format!("{stem}-{}", self.series.name()),
        };
        self.vm_dir.join(name)
    }

    fn run(&self) -> Result<()> {
        let (opts, target, binaries) = (self.opts, self.target, self.binaries);
        let prepare = Instant::now();
        let initrd = self.file("initrd.cpio");
        // Under systemd the tests start the daemon as a service, which loads its own set.
        let hold = opts.exec.is_none() && !opts.cold && !opts.systemd;
        let runner = runner_script(binaries, &self.file("dmesg.log"), hold);
        initramfs::build(
            &busybox()?,
            &self.kernel.modules,
            &crate::workspace_root(),
            target,
            &runner,
            &initrd,
        )?;
        let accel = choose_accel(
            opts.accel,
            self.kernel,
            &initrd,
            target,
            &self.file("kvm-probe"),
        )?;
        let prepared = prepare.elapsed();
        let serial = self.file("serial.log");
        eprintln!(
            "{}vm-test: booting {} under {} (timeout {} s; serial log {})",
            self.prefix,
            self.kernel.release,
            accel.name(),
            opts.timeout.as_secs(),
            serial.display()
        );

        let mut progress = Progress::new(binaries);
        let boot = boot(
            &qemu_command(accel, self.kernel, &initrd, target, &self.append()),
            opts.timeout,
            &serial,
            |line| {
                // Live: the guest's console is the suite's output.
                println!("{}{line}", self.prefix);
                progress.line(line)
            },
        )?;

        let boot_secs = progress
            .guest_ready
            .map(|t| t.duration_since(boot.started).as_secs_f64());
        let suite_secs = progress
            .guest_ready
            .map(|t| boot.ended.duration_since(t).as_secs_f64());
        let mut report = progress.summary(binaries, &self.kernel.release);
        report.push_str(&format!(
            "vm-test times ({}): {}, initramfs and accelerator {:.1} s, boot {}, suite {}, \
             total {:.1} s\n",
            self.kernel.release,
            self.times,
            prepared.as_secs_f64(),
            boot_secs.map_or("-".into(), |s| format!("{s:.1} s")),
            suite_secs.map_or("-".into(), |s| format!("{s:.1} s")),
            self.started.elapsed().as_secs_f64(),
        ));
        // One write: the summaries of guests side by side do not interleave.
        print!("{report}");

        let env_name = match self.series {
            _ if opts.systemd => "vm-systemd".to_string(),
            kernel::Series::V6_12 => "vm".to_string(),
            other => format!("vm-{}", other.name()),
        };
        // The guest's status: from the debug-exit port ((status << 1) | 1), else from the runner's
        // last console line.
        let status = match boot.code {
            Some(code) if code & 1 == 1 => Some(code >> 1),
            _ => progress.done,
        };
        // The skip lines are worth recording whenever the runner got to the end, failures or not:
        // the coverage check then still says what ran where.
        if !boot.timed_out && opts.exec.is_none() && matches!(status, Some(0) | Some(1)) {
            let description = format!(
                "{} ({})",
                progress
                    .guest_env
                    .as_deref()
                    .unwrap_or(&self.kernel.release),
                accel.name()
            );
            coverage::record(
                target,
                &env_name,
                &description,
                opts.complete(),
                &progress.skipped,
                opts.systemd.then_some(progress.ran.as_slice()),
            )?;
        }
        let show_tail = || show_tail(&boot.tail, &serial, &self.prefix);
        if boot.timed_out {
            show_tail();
            bail!(
                "the guest did not finish within {} s and was killed (qemu pid {}); serial log: {}",
                opts.timeout.as_secs(),
                boot.pid,
                serial.display()
            );
        }
        match status {
            Some(0) => Ok(()),
            Some(INIT_FAILED) => {
                show_tail();
                bail!(
                    "the guest's init failed: {}",
                    progress
                        .init_failed
                        .as_deref()
                        .unwrap_or("see the serial log")
                );
            }
            Some(status) => {
                if progress.results.iter().all(|r| r.rc == Some(0)) {
                    show_tail();
                }
                if opts.exec.is_some() {
                    bail!("the command failed in the VM (status {status})");
                }
                bail!(
                    "tests failed in the VM ({} {})",
                    self.kernel.release,
                    accel.name()
                );
            }
            None => {
                show_tail();
                let panicked = boot.tail.iter().any(|l| l.contains("Kernel panic"));
                bail!(
                    "the guest ended without reporting a status ({}; qemu exited with {}); serial \
                     log: {}",
                    if panicked {
                        "its kernel panicked"
                    } else {
                        "it powered off or reset"
                    },
                    boot.code.map_or("a signal".to_string(), |c| c.to_string()),
                    serial.display()
                );
            }
        }
    }
}

fn install_host_packages() -> Result<()> {
    // qemu-system-x86 without recommends: the recommended GUI and firmware packages are large and
    // unused with -nographic.
    apt_install(&["qemu-system-x86", "busybox-static", "zstd", "xz-utils"])
}

/// The statically linked busybox that busybox-static installs (a dynamic one would find no libc in
/// the initramfs).
fn busybox() -> Result<PathBuf> {
    let out = Command::new("dpkg")
        .args(["-L", "busybox-static"])
        .output()
        .context("dpkg -L busybox-static")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.ends_with("bin/busybox"))
        .map(PathBuf::from)
        .context("busybox-static is installed but lists no bin/busybox")
}

/// Builds what the tests need and lists the test executables (`cargo test --no-run`).
fn test_binaries(opts: &Options) -> Result<Vec<TestBinary>> {
    // The binaries the integration tests execute (stockade, stockade-shim, stockade-hostile) are
    // not all built by `cargo test --no-run`.
    let status = cargo()
        .args(["build", "--workspace", "--bins"])
        .status()
        .context("cargo build")?;
    if !status.success() {
        bail!("cargo build --workspace --bins failed");
    }
    if let Err(e) = crate::test_package() {
        eprintln!("vm-test: no Debian package of this build: {e:#}");
    }
    // xtask's own tests are about this machine's tooling, not the sandbox.
    let out = cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "xtask",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed (cargo test --workspace --no-run)");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let package = msg["package_id"]
            .as_str()
            .and_then(package_name)
            .unwrap_or_default();
        let target = msg["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = msg["target"]["kind"][0].as_str().unwrap_or_default();
        let label = match kind {
            "test" => format!("{package}: {target}"),
            other => format!("{target} ({other})"),
        };
        let dir = msg["manifest_path"]
            .as_str()
            .and_then(|p| Path::new(p).parent())
            .map(Path::to_path_buf)
            .unwrap_or_else(crate::workspace_root);
        // --show-output: the `skipped:` lines of passing tests are their stdout, which libtest
        // otherwise swallows. No colours: the console is a terminal, the log is a file.
        let mut args = vec!["--show-output".to_string()];
        if !opts.test_args.iter().any(|a| a.starts_with("--color")) {
            args.extend(["--color".into(), "never".into()]);
        }
        args.extend(opts.test_args.iter().cloned());
        found.push(TestBinary {
            label,
            package,
            target,
            path: PathBuf::from(exe),
            integration: kind == "test",
            args,
            dir,
        });
    }
    // Unit tests first (quick), then the integration tests, each group by name: a stable order
    // makes two runs' logs comparable.
    found.sort_by_key(|b| (b.integration, b.label.clone()));
    if !opts.tests.is_empty() {
        found.retain(|b| opts.tests.iter().any(|t| *t == b.target || *t == b.package));
    } else if opts.systemd {
        found.retain(|b| b.integration && SYSTEMD_TESTS.contains(&b.target.as_str()));
    }
    Ok(found)
}

/// The package name of a cargo package id: "path+file:///work/main/tests#stockade-tests@0.1.0"
/// (or the older "stockade-tests 0.1.0 (path+file://...)").
fn package_name(id: &str) -> Option<String> {
    if let Some((_, rest)) = id.rsplit_once('#') {
        let name = rest.split('@').next()?;
        // "…/tests#0.1.0": the package is named after its directory.
        if name.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            let path = id.rsplit_once('#')?.0;
            return path.rsplit('/').next().map(String::from);
        }
        return Some(name.to_string());
    }
    id.split_whitespace().next().map(String::from)
}

/// The guest's PID 1 after switch_root: runs each binary in turn, announcing it with markers the
/// host parses, then reports the overall status. busybox's sh reaps every child it is given as
/// PID 1 (orphans of the sandboxes included) while it waits for the foreground test.
///
/// `hold`: the host's set of monitors is loaded once and kept (`stockade monitors up`) while the
/// binaries run, as a server running Stockade keeps it, so that each sandbox joins it rather than
/// loading and verifying every eBPF program again (seconds each under emulation). The binaries of
/// [`FRESH_SET`] test the set's own load and removal and run without it.
fn runner_script(binaries: &[TestBinary], dmesg: &Path, hold: bool) -> String {
    let mut s = String::from(
        r#"# The test runner of `cargo xtask vm-test` (xtask/src/vm.rs), PID 1 after switch_root.
B=/run/vm-test/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root RUST_BACKTRACE=1
report() {
    $B printf "\\$($B printf %o "$1")" | $B dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    $B poweroff -f
}
echo "@@vm-test env kernel $($B uname -r); lsm $($B cat /sys/kernel/security/lsm); cgroup2 controllers $($B cat /sys/fs/cgroup/cgroup.subtree_control)"
status=0
run() {
    n=$1
    dir=$2
    shift 2
    echo "@@vm-test start $n"
    (cd "$dir" && export CARGO_MANIFEST_DIR="$dir" && exec "$@")
    rc=$?
    echo "@@vm-test end $n $rc"
    [ "$rc" = 0 ] || status=1
}
"#,
    );
    // The stockade binary beside the test executables' deps/ directory.
    let stockade = binaries
        .iter()
        .find(|b| b.integration)
        .and_then(|b| Some(b.path.parent()?.parent()?.join("stockade")));
    let hold = match (hold, stockade) {
        (true, Some(path)) => {
            s.push_str(&format!(
                r#"S={}
hold() {{ "$S" monitors up >/dev/null || echo "@@vm-test note: stockade monitors up failed: the runs load their own"; }}
release() {{ "$S" monitors down >/dev/null; }}
hold
"#,
                shell_quote(&path.to_string_lossy())
            ));
            true
        }
        _ => false,
    };
    for (i, b) in binaries.iter().enumerate() {
        let fresh = hold && b.integration && FRESH_SET.contains(&b.target.as_str());
        if fresh {
            s.push_str("release\n");
        }
        let mut line = format!(
            "run {i} {} {}",
            shell_quote(&b.dir.to_string_lossy()),
            shell_quote(&b.path.to_string_lossy())
        );
        for arg in &b.args {
            line.push(' ');
            line.push_str(&shell_quote(arg));
        }
        s.push_str(&line);
        s.push('\n');
        if fresh {
            s.push_str("hold\n");
        }
    }
    if hold {
        s.push_str("release\n");
    }
    s.push_str(&format!(
        "$B dmesg > {}\n$B sync\necho \"@@vm-test done $status\"\nreport $status\n",
        shell_quote(&dmesg.to_string_lossy())
    ));
    s
}

/// The integration tests a `--systemd` boot runs: those of the unit under systemd as PID 1.
const SYSTEMD_TESTS: &[&str] = &["service"];

/// The integration tests that load, share and remove the host's set of monitors themselves: in
/// the guest they run with no set held (see [`runner_script`]).
const FRESH_SET: &[&str] = &["shared"];

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            _ => "TCG",
        }
    }
}

/// KVM when asked, or when /dev/kvm opens and a probe boot reaches the guest's init; else TCG.
///
/// Why a probe boot: on these machines /dev/kvm opens and KVM starts, but the guest kernel hangs
/// early (PLATFORM.md), so only a boot tells. The probe's verdict is cached per host kernel and
/// guest kernel, so it costs its seconds once.
fn choose_accel(
    wanted: Accel,
    kernel: &kernel::Kernel,
    initrd: &Path,
    target: &Path,
    cache: &Path,
) -> Result<Accel> {
    match wanted {
        Accel::Kvm | Accel::Tcg => return Ok(wanted),
        Accel::Auto => {}
    }
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok(Accel::Tcg);
    }
    let host = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let key = format!("host {} guest {}", host.trim(), kernel.package);
    if let Ok(text) = fs::read_to_string(cache) {
        if let Some(verdict) = text.strip_prefix(&format!("{key}: ")) {
            return Ok(if verdict.trim() == "works" {
                Accel::Kvm
            } else {
                Accel::Tcg
            });
        }
    }
    eprintln!("vm-test: probing KVM with a short boot");
    let probe = boot(
        &qemu_command(Accel::Kvm, kernel, initrd, target, &["vmtest.probe".into()]),
        Duration::from_secs(6),
        &cache.with_extension("log"),
        |_| {},
    )?;
    let works = probe.code == Some(1);
    eprintln!(
        "vm-test: KVM {} here",
        if works {
            "works"
        } else {
            "does not boot a guest (TCG it is)"
        }
    );
    fs::write(
        cache,
        format!("{key}: {}\n", if works { "works" } else { "broken" }),
    )?;
    Ok(if works { Accel::Kvm } else { Accel::Tcg })
}

fn qemu_command(
    accel: Accel,
    kernel: &kernel::Kernel,
    initrd: &Path,
    target: &Path,
    append: &[String],
) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        // thread=single: one host thread runs both vCPUs in turn. With thread=multi (a host
        // thread per vCPU) the guest kernel died with "Oops: int3" in syscall exit code: the
        // sandboxes' monitors attach and detach a syscall tracepoint, the kernel live-patches
        // its static branches with int3 (text_poke_bp), and a vCPU still ran a translation of the
        // patched code. Single-threaded TCG invalidates translations in step with the writes.
        _ => cmd.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
    };
    // loglevel=3 after quiet: only critical kernel messages (oopses, panics) reach the console,
    // where they would interleave with the tests' output (an OOM kill is an error-level message,
    // and the tests cause several); the full kernel log is saved as dmesg.log at the end.
    // `stockade.vm=tcg|kvm` tells tests that scale their load (a million-connect flood) where
    // they run; the kernel ignores parameters it does not know.
    let mut cmdline = format!(
        "console=ttyS0 quiet loglevel=3 panic=-1 lsm=lockdown,capability,landlock,yama,bpf stockade.vm={}",
        match accel {
            Accel::Kvm => "kvm",
            _ => "tcg",
        }
    );
    for a in append {
        cmdline.push(' ');
        cmdline.push_str(a);
    }
    // qboot instead of SeaBIOS when qemu ships it: it hands over to the kernel sooner (about
    // 0.6 s less per boot under TCG) and writes no escape sequences to the console.
    if Path::new("/usr/share/qemu/qboot.rom").exists() {
        cmd.args(["-bios", "qboot.rom"]);
    }
    cmd.args(["-m", "2G", "-smp", "2", "-nographic", "-no-reboot"])
        // No network card: nothing in the guest uses one, and its option ROM slows the firmware.
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &cmdline])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=workspace,security_model=none,readonly=on,multidevs=remap",
            crate::workspace_root().display()
        ))
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=target,security_model=none,multidevs=remap",
            target.display()
        ))
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    cmd
}

struct BootOutcome {
    pid: u32,
    /// qemu's exit code; None when it was killed.
    code: Option<i32>,
    timed_out: bool,
    started: Instant,
    ended: Instant,
    tail: VecDeque<String>,
}

/// Runs qemu with a timeout, streaming its console line by line to `on_line` and `log`. On timeout
/// qemu is killed (by its pid, SIGKILL).
fn boot(
    cmd: &Command,
    timeout: Duration,
    log: &Path,
    mut on_line: impl FnMut(&str),
) -> Result<BootOutcome> {
    let mut command = Command::new(cmd.get_program());
    command
        .args(cmd.get_args())
        // No terminal for qemu: with -nographic on a terminal it would switch it to raw mode.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut log_file =
        fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    writeln!(log_file, "# {command:?}")?;
    let started = Instant::now();
    let mut child = command
        .spawn()
        .context("running qemu-system-x86_64 (package qemu-system-x86)")?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<String>();
    let readers = [
        spawn_reader(child.stdout.take().expect("piped"), "", tx.clone()),
        spawn_reader(child.stderr.take().expect("piped"), "qemu: ", tx),
    ];
    let deadline = started + timeout;
    let mut tail = VecDeque::with_capacity(TAIL);
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(log_file, "{line}")?;
                if tail.len() == TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
                on_line(&line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                // SIGKILL to qemu's pid; its pipes then close and the readers end.
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    for r in readers {
        let _ = r.join();
    }
    // Lines that arrived after the timeout fired.
    for line in rx.try_iter() {
        writeln!(log_file, "{line}")?;
        tail.push_back(line);
    }
    while tail.len() > TAIL {
        tail.pop_front();
    }
    Ok(BootOutcome {
        pid,
        code: if timed_out { None } else { status.code() },
        timed_out,
        started,
        ended: Instant::now(),
        tail,
    })
}

fn spawn_reader(
    stream: impl std::io::Read + Send + 'static,
    prefix: &'static str,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    // The serial console ends lines with \r\n, and firmware writes escapes.
                    let text = String::from_utf8_lossy(&buf);
                    let line = text.trim_end_matches(['\n', '\r']).replace('\r', "");
                    if tx.send(format!("{prefix}{line}")).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

fn show_tail(tail: &VecDeque<String>, serial: &Path, prefix: &str) {
    let mut text = format!(
        "\n{prefix}== the last lines of the serial log ({}) ==\n",
        serial.display()
    );
    for line in tail {
        text.push_str(&format!("{prefix}{line}\n"));
    }
    eprint!("{text}");
}

/// What the host learns from the guest's console.
struct Progress {
    results: Vec<BinaryResult>,
    current: Option<usize>,
    guest_ready: Option<Instant>,
    guest_env: Option<String>,
    init_failed: Option<String>,
    done: Option<i32>,
    skipped: Vec<String>,
    /// Tests that passed (`test NAME ... ok`), skipped ones included.
    ran: Vec<String>,
}

#[derive(Default, Clone)]
struct BinaryResult {
    started: Option<Instant>,
    secs: Option<f64>,
    rc: Option<i32>,
    passed: u64,
    failed: u64,
}

impl Progress {
    fn new(binaries: &[TestBinary]) -> Progress {
        Progress {
            results: vec![BinaryResult::default(); binaries.len()],
            current: None,
            guest_ready: None,
            guest_env: None,
            init_failed: None,
            done: None,
            skipped: Vec::new(),
            ran: Vec::new(),
        }
    }

    fn line(&mut self, line: &str) {
        // Anywhere in the line: the firmware ends its last line without a newline.
        if let Some(marker) = line
            .find("@@vm-test ")
            .map(|at| &line[at + "@@vm-test ".len()..])
        {
            let mut words = marker.split_whitespace();
            match words.next() {
                Some("env") => {
                    self.guest_ready = Some(Instant::now());
                    self.guest_env = Some(marker["env ".len()..].trim().to_string());
                }
                Some("init-failed:") => {
                    self.init_failed = Some(marker["init-failed:".len()..].trim().to_string())
                }
                Some("start") => {
                    if let Some(i) = words.next().and_then(|w| w.parse::<usize>().ok()) {
                        if let Some(r) = self.results.get_mut(i) {
                            r.started = Some(Instant::now());
                            self.current = Some(i);
                        }
                    }
                }
                Some("end") => {
                    let i = words.next().and_then(|w| w.parse::<usize>().ok());
                    let rc = words.next().and_then(|w| w.parse().ok());
                    if let Some(r) = i.and_then(|i| self.results.get_mut(i)) {
                        r.rc = rc;
                        r.secs = r.started.map(|s| s.elapsed().as_secs_f64());
                    }
                    self.current = None;
                }
                Some("done") => self.done = words.next().and_then(|w| w.parse().ok()),
                _ => {}
            }
            return;
        }
        if let Some(why) = line.trim().strip_prefix("skipped: ") {
            self.skipped.push(why.to_string());
        }
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... ok"))
        {
            self.ran.push(name.to_string());
        }
        if let Some(counts) = line.strip_prefix("test result: ") {
            if let Some(r) = self.current.and_then(|i| self.results.get_mut(i)) {
                r.passed += count(counts, " passed");
                r.failed += count(counts, " failed");
            }
        }
    }

    /// The end-of-run report: each binary's verdict and time, the guest, what was skipped.
    fn summary(&self, binaries: &[TestBinary], release: &str) -> String {
        use std::fmt::Write as _;
        let mut out = format!("\n== vm-test ({release}): each test binary in the guest ==\n");
        let (mut passed, mut failed) = (0, 0);
        for (b, r) in binaries.iter().zip(&self.results) {
            let verdict = match r.rc {
                Some(0) => "ok  ",
                Some(_) => "FAIL",
                None => "----",
            };
            let time = r
                .secs
                .map_or("     -".to_string(), |s| format!("{s:6.1} s"));
            let what = match r.rc {
                None => "did not run to the end".to_string(),
                Some(rc) if rc != 0 && r.failed == 0 => format!("exit status {rc}"),
                Some(_) => format!("{} passed, {} failed", r.passed, r.failed),
            };
            let _ = writeln!(out, "  {verdict} {time}  {}: {what}", b.label);
            passed += r.passed;
            failed += r.failed;
        }
        if let Some(env) = &self.guest_env {
            let _ = writeln!(out, "guest: {env}");
        }
        if self.skipped.is_empty() {
            out.push_str("skipped in the VM: none\n");
        } else {
            let _ = writeln!(out, "skipped in the VM ({}):", self.skipped.len());
            for s in &self.skipped {
                let _ = writeln!(out, "  {s}");
            }
        }
        let _ = writeln!(out, "vm-test ({release}): {passed} passed, {failed} failed");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = Options::parse(&[
            "--kernel",
            "6.1",
            "--test",
            "resources",
            "--",
            "oom",
            "--exact",
        ])
        .unwrap();
        assert_eq!(o.series, vec![kernel::Series::V6_1]);
        assert_eq!(o.tests, vec!["resources"]);
        assert_eq!(o.test_args, vec!["oom", "--exact"]);
        assert!(!o.complete());
        assert!(Options::parse(&[]).unwrap().complete());
        assert!(Options::parse(&["--kernel", "5.10"]).is_err());
        assert_eq!(
            Options::parse(&[]).unwrap().series,
            vec![kernel::Series::V6_12]
        );
        let both = vec![kernel::Series::V6_12, kernel::Series::V6_1];
        assert_eq!(Options::parse(&["--kernel", "all"]).unwrap().series, both);
        assert_eq!(
            Options::parse(&["--kernel", "6.12,6.1", "--kernel", "6.1"])
                .unwrap()
                .series,
            both
        );
        assert!(Options::parse(&["--kernel", "all", "--exec", "true"]).is_err());
        assert!(Options::parse(&["--cold"]).unwrap().cold);
        assert!(Options::parse(&["--timeout"]).is_err());
    }

    #[test]
    fn package_names() {
        assert_eq!(
            package_name("path+file:///work/main/tests#stockade-tests@0.1.0").as_deref(),
            Some("stockade-tests")
        );
        assert_eq!(
            package_name("path+file:///work/main/xtask#0.1.0").as_deref(),
            Some("xtask")
        );
        assert_eq!(
            package_name("stockade 0.1.0 (path+file:///work/main/supervisor)").as_deref(),
            Some("stockade")
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn progress_from_console_lines() {
        let bins = vec![TestBinary {
            label: "stockade-tests: resources".into(),
            package: "stockade-tests".into(),
            target: "resources".into(),
            path: "/t/resources-1".into(),
            integration: true,
            args: vec![],
            dir: "/w/tests".into(),
        }];
        let mut p = Progress::new(&bins);
        for line in [
            "Booting from ROM..@@vm-test env kernel 6.12.1; lsm bpf",
            "@@vm-test start 0",
            "skipped: some_test: needs the BPF LSM",
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
            "@@vm-test end 0 101",
            "@@vm-test done 1",
        ] {
            p.line(line);
        }
        assert_eq!(p.results[0].rc, Some(101));
        assert_eq!((p.results[0].passed, p.results[0].failed), (3, 1));
        assert_eq!(p.skipped, vec!["some_test: needs the BPF LSM"]);
        assert_eq!(p.done, Some(1));
        assert_eq!(p.guest_env.as_deref(), Some("kernel 6.12.1; lsm bpf"));
    }
}
