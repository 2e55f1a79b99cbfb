//! The systemd unit as shipped (`packaging/systemd/stockade.service`): `systemd-analyze verify`
//! finds nothing wrong with it, and `systemd-analyze security` scores it at most the exposure
//! level docs/operations.md records — beside a unit with none of the hardening (what Tetragon's
//! and lockc's units ship: `ExecStart=` and little else), scored in the same run. The Debian
//! package (`cargo xtask deb`; `cargo xtask test` and `vm-test` package the test build's
//! binaries) holds what it should, and under systemd as PID 1 it installs, `systemctl enable
//! --now stockade` runs a signed plugin from /etc/stockade, its log reaches the journal with
//! its fields, and a purge leaves no unit, binary, process or cgroup.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The tests that start the `stockade` unit run one at a time (one unit name).
static UNIT: Mutex<()> = Mutex::new(());

/// Runs its closure when dropped: a test's unit stopped and removed even when it fails, so that
/// the next test's unit is its own.
struct Cleanup<F: FnMut()>(F);

impl<F: FnMut()> Drop for Cleanup<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// The Debian package of this build's binaries, when `cargo xtask test` or `vm-test` made it.
fn test_package() -> Option<PathBuf> {
    let deb = harness::bin_dir().join(format!(
        "debian/stockade_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    deb.exists().then_some(deb)
}

/// The Rust example plugin (static: nothing of the host's /usr, which the systemd boot overlays)
/// as package `dir` with plugin id `id`, unsigned yet.
fn rust_echo_package(dir: &Path, id: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let manifest = std::fs::read_to_string(
        harness::repo_root().join("examples/plugins/echo-rust/plugin.toml"),
    )
    .unwrap();
    assert!(manifest.contains("id = \"echo-rust\""), "{manifest}");
    std::fs::write(
        dir.join("plugin.toml"),
        manifest.replace("id = \"echo-rust\"", &format!("id = \"{id}\"")),
    )
    .unwrap();
    std::fs::copy(harness::bin_dir().join("echo-rust"), dir.join("echo-rust")).unwrap();
    harness::set_mode(&dir.join("echo-rust"), 0o755);
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The shipped unit, its `ExecStart=` pointed at the binary this build made (verify checks that
/// the program exists), in a directory of its own.
fn unit_copy(name: &str) -> PathBuf {
    let text =
        std::fs::read_to_string(harness::repo_root().join("packaging/systemd/stockade.service"))
            .expect("packaging/systemd/stockade.service");
    assert!(
        text.contains("\nExecStart=/usr/bin/stockade daemon\n"),
        "{text}"
    );
    let built = harness::stockade();
    let text = text.replace(
        "\nExecStart=/usr/bin/stockade daemon\n",
        &format!("\nExecStart={} daemon\n", built.display()),
    );
    let dir = harness::scratch_dir(name);
    let unit = dir.join("stockade.service");
    std::fs::write(&unit, text).unwrap();
    unit
}

/// `systemd-analyze security --offline=yes`: the overall exposure level (0.0 safest, 10.0 least).
fn exposure(analyze: &Path, unit: &Path) -> f64 {
    let out = Command::new(analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| {
            panic!(
                "no overall level in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    line.split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no level in {line:?}"))
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        println!(
            "skipped: the_unit_passes_systemd_analyze_verify: no systemd-analyze on this host"
        );
        return;
    };
    let unit = unit_copy("unit-verify");
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only what concerns this unit: verify also reports on the host's own units it loads.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("stockade.service"))
        .collect();
    assert!(out.status.success(), "{stderr}");
    assert!(ours.is_empty(), "{ours:#?}");
    // The control: a unit with a directive systemd does not know is reported.
    let broken = unit.with_file_name("broken").join("stockade.service");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(
        &broken,
        text.replace("[Service]\n", "[Service]\nProtectEverything=yes\n"),
    )
    .unwrap();
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&broken)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Unknown key 'ProtectEverything'"),
        "{stderr}"
    );
}

#[test]
fn the_units_exposure_is_what_the_docs_record() {
    let Some(analyze) = systemd_analyze() else {
        println!(
            "skipped: the_units_exposure_is_what_the_docs_record: no systemd-analyze on this host"
        );
        return;
    };
    let ours = exposure(&analyze, &unit_copy("unit-security"));
    // The peer: what Tetragon's and lockc's units amount to.
    let dir = harness::scratch_dir("unit-security-bare");
    let bare = dir.join("bare.service");
    std::fs::write(
        &bare,
        format!(
            "[Unit]\nDescription=bare\n[Service]\nUser=root\nExecStart={} daemon\n[Install]\nWantedBy=multi-user.target\n",
            harness::stockade().display()
        ),
    )
    .unwrap();
    let peer = exposure(&analyze, &bare);
    println!("exposure: stockade.service {ours:.1}, a unit without hardening {peer:.1}");
    assert!(ours < peer, "{ours} vs {peer}");
    let docs = std::fs::read_to_string(harness::repo_root().join("docs/operations.md")).unwrap();
    let recorded = format!("exposure level {ours:.1}");
    assert!(
        docs.contains(&recorded),
        "docs/operations.md should record `{recorded}` (the unit changed: update the docs)"
    );
}

/// True in the VM runner's guest booted with systemd as PID 1; else prints why the test is
/// skipped. Never on a real host: these tests start the `stockade` unit, install and purge the
/// package, and remove /etc/stockade and /var/lib/stockade.
fn under_systemd(test: &str) -> bool {
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if pid1.trim() != "systemd" {
        println!(
            "skipped: {test}: PID 1 is {} here, not systemd (cargo xtask vm-test --systemd runs it)",
            pid1.trim()
        );
        return false;
    }
    if !Path::new("/run/vm-test/run").exists() {
        println!(
            "skipped: {test}: not the VM runner's guest (it would install, start and purge the service on this host)"
        );
        return false;
    }
    true
}

fn systemctl(args: &[&str]) -> std::process::Output {
    Command::new("systemctl")
        .args(args)
        .output()
        .expect("systemctl")
}

/// `systemctl show -p NAME stockade`'s value.
fn show(property: &str) -> String {
    let out = systemctl(&["show", "-p", property, "--value", "stockade"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + harness::patience(secs);
    while !done() {
        assert!(
            std::time::Instant::now() < until,
            "{what}: not within {secs} s\n{}",
            String::from_utf8_lossy(&systemctl(&["status", "--no-pager", "-l", "stockade"]).stdout)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The shipped unit under systemd as PID 1 (`cargo xtask vm-test --systemd`): it starts (READY
/// after the socket listens), its status line counts the plugins, the daemon sits in the
/// delegated cgroup's `supervisor/` leaf with its plugin's sandbox beside it, the plugin answers
/// through the CLI under every hardening line of the unit, a daemon that stops answering is
/// restarted by the watchdog with a fresh cgroup tree, and a stop leaves nothing.
#[test]
fn the_unit_runs_under_systemd() {
    if !harness::privileged("the_unit_runs_under_systemd") {
        return;
    }
    if !under_systemd("the_unit_runs_under_systemd") {
        return;
    }
    let _unit = UNIT.lock().unwrap_or_else(|e| e.into_inner());
    // The package and the publisher's key where the unit lets the daemon read them (not below
    // /tmp, which PrivateTmp= hides).
    let base = Path::new("/var/lib/stockade-test");
    let _ = std::fs::remove_dir_all(base);
    let plugins = base.join("plugins");
    let pkg = plugins.join("echo");
    std::fs::create_dir_all(&pkg).unwrap();
    for d in [base, plugins.as_path(), pkg.as_path()] {
        harness::set_mode(d, 0o755);
    }
    let (key, public) = harness::daemon::generate_key(base, "publisher");
    rust_echo_package(&pkg, "echo");
    let signed = harness::daemon::sign(&pkg, &key, &["--sequence", "1"]);
    assert!(signed.status.success(), "{signed:?}");

    // The unit as shipped, and a drop-in for this build: the binary, the key, the plugins, a
    // shorter watchdog.
    let units = Path::new("/run/systemd/system");
    std::fs::copy(
        harness::repo_root().join("packaging/systemd/stockade.service"),
        units.join("stockade.service"),
    )
    .unwrap();
    let drop_in = units.join("stockade.service.d");
    std::fs::create_dir_all(&drop_in).unwrap();
    let binary = harness::stockade();
    let mut conf = format!(
        "[Service]\nExecStart=\nExecStart={} daemon --pubkey {} --plugins {}\nWatchdogSec=20s\nTimeoutAbortSec=10s\nEnvironment=STOCKADE_LOG=info\n",
        binary.display(),
        public.display(),
        plugins.display()
    );
    if binary.starts_with("/tmp") {
        // This build lies below /tmp (a checkout there): the unit's private /tmp would hide it.
        conf.push_str("PrivateTmp=no\n");
    }
    std::fs::write(drop_in.join("test.conf"), conf).unwrap();
    let _remove = Cleanup(|| {
        let _ = systemctl(&["stop", "stockade"]);
        let _ = std::fs::remove_dir_all(units.join("stockade.service.d"));
        let _ = std::fs::remove_file(units.join("stockade.service"));
        let _ = systemctl(&["daemon-reload"]);
        let _ = std::fs::remove_dir_all("/var/lib/stockade");
    });
    assert!(systemctl(&["daemon-reload"]).status.success());

    let started = systemctl(&["start", "stockade"]);
    assert!(
        started.status.success(),
        "{started:?}\n{}",
        String::from_utf8_lossy(&systemctl(&["status", "--no-pager", "-l", "stockade"]).stdout)
    );
    assert_eq!(show("ActiveState"), "active");
    wait_for("the status line counts the plugin", 60, || {
        show("StatusText").starts_with("1 of 1 plugins active")
    });
    let main_pid: u32 = show("MainPID").parse().unwrap();
    let unit_cgroup =
        Path::new("/sys/fs/cgroup").join(show("ControlGroup").trim_start_matches('/'));
    assert_eq!(
        std::fs::read_to_string(unit_cgroup.join("cgroup.procs")).unwrap(),
        "",
        "the unit's cgroup holds no process: they are in its leaf"
    );
    let leaf = std::fs::read_to_string(unit_cgroup.join("supervisor/cgroup.procs")).unwrap();
    assert!(leaf.lines().any(|l| l == main_pid.to_string()), "{leaf}");
    let control = std::fs::read_to_string(unit_cgroup.join("cgroup.subtree_control")).unwrap();
    for c in ["memory", "pids", "cpu"] {
        assert!(control.split_whitespace().any(|h| h == c), "{control}");
    }
    let sandboxes = |pid: u32| -> Vec<String> {
        std::fs::read_dir(&unit_cgroup)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("stockade-{pid}.echo.")))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        sandboxes(main_pid).len(),
        1,
        "{:?}",
        std::fs::read_dir(&unit_cgroup)
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );

    // The plugin answers, through the CLI on the unit's socket.
    let call = Command::new(&binary)
        .args(["call", "echo", "echo", "{\"text\": \"under systemd\"}"])
        .output()
        .unwrap();
    assert!(call.status.success(), "{call:?}");
    assert!(
        String::from_utf8_lossy(&call.stdout).contains("under systemd"),
        "{call:?}"
    );

    // A daemon that stops making progress stops its pings: the watchdog restarts the service
    // (its SIGABRT waits on a stopped process; the SIGKILL after TimeoutAbortSec= does not).
    // SAFETY: kill with the pid systemd names as the service's main process.
    assert_eq!(unsafe { libc::kill(main_pid as i32, libc::SIGSTOP) }, 0);
    wait_for("the watchdog's restart", 120, || {
        show("NRestarts") == "1"
            && show("ActiveState") == "active"
            && show("MainPID") != main_pid.to_string()
    });
    let new_pid: u32 = show("MainPID").parse().unwrap();
    wait_for("the plugin back", 60, || sandboxes(new_pid).len() == 1);
    assert!(
        sandboxes(main_pid).is_empty(),
        "the old run's sandbox is gone"
    );

    let stopped = systemctl(&["stop", "stockade"]);
    assert!(stopped.status.success(), "{stopped:?}");
    assert_eq!(show("ActiveState"), "inactive");
    assert!(!unit_cgroup.exists(), "the unit's cgroup is removed");
    std::fs::remove_dir_all(&drop_in).unwrap();
    std::fs::remove_file(units.join("stockade.service")).unwrap();
    let _ = systemctl(&["daemon-reload"]);
    let _ = std::fs::remove_dir_all(base);
    let _ = std::fs::remove_dir_all("/var/lib/stockade");
}

#[test]
fn the_package_holds_the_service() {
    let Some(deb) = test_package() else {
        println!(
            "skipped: the_package_holds_the_service: no package of this build (cargo xtask test makes it)"
        );
        return;
    };
    let deb = deb.to_str().unwrap();
    let field = |name: &str| {
        let out = run("dpkg-deb", &["--field", deb, name]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "stockade");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    // Static binaries: nothing to depend on.
    assert_eq!(field("Depends"), "");
    let listing = text(&run("dpkg-deb", &["--contents", deb]));
    let entry = |path: &str| -> String {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" ./{path}")))
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"))
            .to_string()
    };
    for b in ["stockade", "stockade-daemon", "stockade-shim"] {
        let line = entry(&format!("usr/bin/{b}"));
        assert!(line.starts_with("-rwxr-xr-x root/root"), "{line}");
    }
    for f in [
        "lib/systemd/system/stockade.service",
        "etc/stockade/daemon.toml",
        "usr/share/stockade/profiles/untrusted-default.toml",
        "usr/share/doc/stockade/operations.md",
        "usr/share/doc/stockade/copyright",
    ] {
        let line = entry(f);
        assert!(line.starts_with("-rw-r--r-- root/root"), "{line}");
    }
    assert!(entry("etc/stockade/plugins/").starts_with("drwxr-xr-x root/root"));
    let conffiles = text(&run("dpkg-deb", &["--info", deb, "conffiles"]));
    assert_eq!(conffiles.trim(), "/etc/stockade/daemon.toml");

    // What it installs is what the repository holds, and the binaries run.
    let dir = harness::scratch_dir("deb-contents");
    let out = run("dpkg-deb", &["--extract", deb, dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for (installed, repo) in [
        (
            "lib/systemd/system/stockade.service",
            "packaging/systemd/stockade.service",
        ),
        ("etc/stockade/daemon.toml", "packaging/daemon.toml"),
    ] {
        assert_eq!(
            std::fs::read(dir.join(installed)).unwrap(),
            std::fs::read(harness::repo_root().join(repo)).unwrap(),
            "{installed}"
        );
    }
    let version = run(
        dir.join("usr/bin/stockade").to_str().unwrap(),
        &["--version"],
    );
    assert!(version.status.success(), "{}", text(&version));
    assert!(
        text(&version).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        text(&version)
    );
    // (The stock configuration is proved by the daemon that starts with it under systemd:
    // the_package_installs_and_runs_under_systemd.)
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dpkg -i`, `systemctl enable --now stockade` with the stock configuration given a publisher's
/// key and a signed plugin in /etc/stockade, the plugin answering, the daemon's log in the
/// journal with its fields, and `dpkg --purge` taking it all away (but the audit log).
#[test]
fn the_package_installs_and_runs_under_systemd() {
    if !harness::privileged("the_package_installs_and_runs_under_systemd")
        || !under_systemd("the_package_installs_and_runs_under_systemd")
    {
        return;
    }
    let Some(deb) = test_package() else {
        panic!("no package of this build: cargo xtask vm-test makes it before the boot");
    };
    let _unit = UNIT.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        !Path::new("/usr/bin/stockade").exists(),
        "stockade is installed on this host already: this test installs and purges it"
    );
    // A fresh machine's state: none (another test's daemon may have left its registry).
    let _ = std::fs::remove_dir_all("/var/lib/stockade");
    let _purge = Cleanup(|| {
        let _ = run("dpkg", &["--purge", "stockade"]);
        let _ = std::fs::remove_dir_all("/etc/stockade");
        let _ = std::fs::remove_dir_all("/var/lib/stockade");
    });
    let installed = run("dpkg", &["--install", deb.to_str().unwrap()]);
    assert!(installed.status.success(), "{}", text(&installed));
    assert!(Path::new("/usr/bin/stockade-shim").exists());
    // Installed, not started: the operator enables it.
    assert_eq!(show("UnitFileState"), "disabled");
    assert_eq!(show("ActiveState"), "inactive");

    // What an operator does: a publisher's key and a signed plugin where the stock
    // configuration looks.
    let etc = Path::new("/etc/stockade");
    let keys = etc.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let scratch = harness::scratch_dir("deb-publisher");
    let (key, public) = harness::daemon::generate_key(&scratch, "publisher");
    std::fs::copy(&public, keys.join("publisher.pub")).unwrap();
    let pkg = etc.join("plugins/packaged");
    rust_echo_package(&pkg, "packaged");
    let signed = harness::daemon::sign(&pkg, &key, &["--sequence", "1"]);
    assert!(signed.status.success(), "{signed:?}");
    let config = etc.join("daemon.toml");
    let stock = std::fs::read_to_string(&config).unwrap();
    assert!(stock.contains("\nkeys = []\n"), "{stock}");
    std::fs::write(
        &config,
        stock.replace(
            "\nkeys = []\n",
            "\nkeys = [\"/etc/stockade/keys/publisher.pub\"]\n",
        ),
    )
    .unwrap();

    let enabled = systemctl(&["enable", "--now", "stockade"]);
    assert!(
        enabled.status.success(),
        "{}\n{}",
        text(&enabled),
        String::from_utf8_lossy(&systemctl(&["status", "--no-pager", "-l", "stockade"]).stdout)
    );
    assert_eq!(show("UnitFileState"), "enabled");
    assert!(Path::new("/etc/systemd/system/multi-user.target.wants/stockade.service").exists());
    wait_for("the packaged daemon runs the plugin", 120, || {
        show("StatusText").starts_with("1 of 1 plugins active")
    });
    let call = run(
        "/usr/bin/stockade",
        &[
            "call",
            "packaged",
            "echo",
            "{\"text\": \"from the package\"}",
        ],
    );
    assert!(call.status.success(), "{}", text(&call));
    assert!(text(&call).contains("from the package"), "{}", text(&call));

    // The daemon's own log, in the journal with its fields.
    let mut entry = serde_json::Value::Null;
    wait_for("the plugin's lifecycle in the journal", 30, || {
        let out = run(
            "journalctl",
            &[
                "--no-pager",
                "-o",
                "json",
                "-u",
                "stockade",
                "STOCKADE_PLUGIN=packaged",
                "STOCKADE_STATE=active",
            ],
        );
        match String::from_utf8_lossy(&out.stdout).lines().next() {
            Some(line) => {
                entry = serde_json::from_str(line).unwrap();
                true
            }
            None => false,
        }
    });
    assert_eq!(entry["STOCKADE_TRUST"], "untrusted", "{entry}");
    assert_eq!(entry["STOCKADE_VERSION"], "0.1.0", "{entry}");
    assert_eq!(entry["PRIORITY"], "6", "{entry}");
    let message = entry["MESSAGE"].as_str().unwrap_or_default();
    assert!(message.starts_with("packaged: "), "{entry}");
    // The control: a field no entry has finds nothing.
    let none = run(
        "journalctl",
        &[
            "--no-pager",
            "-o",
            "json",
            "-u",
            "stockade",
            "STOCKADE_PLUGIN=absent",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&none.stdout).trim(), "");

    let unit_cgroup =
        Path::new("/sys/fs/cgroup").join(show("ControlGroup").trim_start_matches('/'));
    assert!(unit_cgroup.join("supervisor").exists());
    let purged = run("dpkg", &["--purge", "stockade"]);
    assert!(purged.status.success(), "{}", text(&purged));
    assert_eq!(show("ActiveState"), "inactive");
    assert!(!unit_cgroup.exists(), "the unit's cgroup is removed");
    for gone in [
        "/usr/bin/stockade",
        "/usr/bin/stockade-daemon",
        "/usr/bin/stockade-shim",
        "/lib/systemd/system/stockade.service",
        "/etc/stockade/daemon.toml",
        "/etc/systemd/system/multi-user.target.wants/stockade.service",
        "/run/stockade/stockade.sock",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after the purge");
    }
    // The registry and the audit log outlive the package (the postrm says so).
    assert!(Path::new("/var/lib/stockade/stockade.db").exists());
    let _ = std::fs::remove_dir_all(etc);
    let _ = std::fs::remove_dir_all("/var/lib/stockade");
    let _ = std::fs::remove_dir_all(&scratch);
}
