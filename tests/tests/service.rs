//! The systemd unit as shipped (`packaging/systemd/stockade.service`): `systemd-analyze verify`
//! finds nothing wrong with it, and `systemd-analyze security` scores it at most the exposure
//! level docs/operations.md records — beside a unit with none of the hardening (what Tetragon's
//! and lockc's units ship: `ExecStart=` and little else), scored in the same run.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

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
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if pid1.trim() != "systemd" {
        println!(
            "skipped: the_unit_runs_under_systemd: PID 1 is {} here, not systemd (cargo xtask vm-test --systemd runs it)",
            pid1.trim()
        );
        return;
    }
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
    std::fs::copy(
        harness::repo_root().join("tests/fixtures/daemon_plugin.py"),
        pkg.join("plugin.py"),
    )
    .unwrap();
    harness::set_mode(&pkg.join("plugin.py"), 0o755);
    std::fs::write(
        pkg.join("plugin.toml"),
        format!(
            "id = \"echo\"\nname = \"echo under systemd\"\nversion = \"1.0.0\"\nentry = [\"plugin.py\", \"echo\", \"1\"]\npolicy = {{ profile = \"untrusted-default\" }}\ntrust = \"untrusted\"\n{}",
            harness::daemon::echo_methods()
        ),
    )
    .unwrap();
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
}
