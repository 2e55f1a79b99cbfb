//! The daemon for real: `stockade daemon` started by each test with its own socket and state
//! directory, real plugin packages (tests/fixtures/daemon_plugin.py, well-behaved or hostile as
//! its argument says) in real sandboxes, driven through the CLI and the control socket.

mod harness;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::daemon::{echo_methods, lifecycle_event, process_alive, Daemon};
use serde_json::{json, Value};

#[test]
fn load_call_unload_and_refusals_before_the_plugin() {
    if !harness::privileged("load_call_unload_and_refusals_before_the_plugin") {
        return;
    }
    let mut d = Daemon::start("basic", &[]);
    let pkg = d.package("echo", "echo", "1.0.0", "echo", "");
    let out = d.cli(&["plugin", "load", pkg.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("loaded echo 1.0.0 (untrusted): active, pid "),
        "{text}"
    );
    let status = d.status("echo");
    let pid = status["pid"].as_i64().expect("pid");
    assert!(process_alive(pid));
    assert_eq!(d.cgroups().len(), 1);

    // The call path, through the CLI: the result on stdout.
    let out = d.cli(&["call", "echo", "echo", r#"{"text": "hi"}"#]);
    assert!(out.status.success(), "{out:?}");
    let result: Value = serde_json::from_slice(&out.stdout).expect("result JSON");
    assert_eq!(result["text"], "hi");

    // Refused by the host: the plugin never sees them.
    let out = d.cli(&["call", "echo", "undeclared", "{}"]);
    assert_eq!(out.status.code(), Some(1));
    let error: Value = serde_json::from_slice(&out.stderr).expect("error JSON");
    assert_eq!(error["code"], -32601);
    let error = d
        .call("echo", "echo", json!({ "text": 7 }))
        .expect_err("schema-invalid params");
    assert_eq!(error["code"], -32602);
    assert_eq!(error["data"]["path"], "/text");
    let logs = d.logs("echo");
    assert!(
        logs.iter()
            .any(|l| l == r#"stderr: received echo {"text": "hi"}"#),
        "{logs:#?}"
    );
    assert!(!logs.iter().any(|l| l.contains("undeclared")), "{logs:#?}");
    assert!(
        !logs
            .iter()
            .any(|l| l.contains("received echo {\"text\": 7}")),
        "{logs:#?}"
    );

    // Every call has a record with a request id.
    let record = d.wait_event(5, "call record", |e| {
        e["type"] == "call" && e["method"] == "undeclared"
    });
    assert_eq!(record["outcome"], "error -32601");
    assert_eq!(record["request_id"].as_str().map(str::len), Some(36));

    let out = d.cli(&["plugin", "unload", "echo"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!process_alive(pid), "the plugin outlived its unload");
    assert!(d.cgroups().is_empty(), "{:?}", d.cgroups());
    let out = d.cli(&["plugin", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "no plugins loaded"
    );
    assert!(d.stop().success());
}

#[test]
fn bad_input_is_one_line_and_leaves_the_daemon_serving() {
    if !harness::privileged("bad_input_is_one_line_and_leaves_the_daemon_serving") {
        return;
    }
    let d = Daemon::start("badinput", &[]);
    let good = d.package("good", "good", "1.0.0", "echo", "");
    d.load(&good);

    // A malformed package.
    let bad = d.dir.join("packages/bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("plugin.toml"), "id = \"Bad Id\"\n").unwrap();
    let out = d.cli(&["plugin", "load", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("stockade: error: "), "{err}");
    assert!(err.contains("hint: "), "{err}");

    // A duplicate id, an unknown id.
    let out = d.cli(&["plugin", "load", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is loaded already"));
    let out = d.cli(&["plugin", "unload", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no plugin `nobody` is loaded"));

    // A plugin that cannot start is not kept, and its output says why.
    let crash = d.package("crash", "crash", "1.0.0", "crash", "");
    let out = d.cli(&["plugin", "load", crash.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not start"), "{err}");
    assert!(err.contains("crashing on purpose"), "{err}");
    assert_eq!(
        d.cgroups().len(),
        1,
        "only the good plugin's sandbox remains"
    );

    // A daemon that is not running.
    let out = Command::new(harness::stockade())
        .args([
            "plugin",
            "list",
            "--socket",
            "/tmp/stockade-tests/no-such.sock",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the daemon"), "{err}");
    assert!(err.contains("is the daemon running?"), "{err}");

    // Through all of it the good plugin answered.
    assert_eq!(
        d.call("good", "echo", json!({"text": "still"})).unwrap()["text"],
        "still"
    );
}

/// `stockade plugin load A BAD B`: each in turn, the bad one reported and the next one loaded,
/// exit 1 with the list; on a terminal (a pty from `script`) a progress line per package,
/// `[i/n] ID: step`, rewritten in place — and none off a terminal.
#[test]
fn several_packages_load_in_turn_with_progress_on_a_terminal() {
    if !harness::privileged("several_packages_load_in_turn_with_progress_on_a_terminal") {
        return;
    }
    let d = Daemon::start("several", &[]);
    let a = d.package("a", "first", "1.0.0", "echo", "");
    let b = d.package("b", "second", "1.0.0", "echo", "");
    let bad = d.dir.join("packages/bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("plugin.toml"), "id = \"Bad Id\"\n").unwrap();
    let (a, b, bad) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        bad.to_str().unwrap(),
    );

    let out = d.cli(&["plugin", "load", a, bad, b]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let loaded: Vec<&str> = stdout.lines().collect();
    assert_eq!(loaded.len(), 2, "{stdout}");
    assert!(loaded[0].starts_with("loaded first 1.0.0"), "{stdout}");
    assert!(loaded[1].starts_with("loaded second 1.0.0"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("1 of 3 packages were not loaded: {bad}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "no progress off a terminal: {stderr:?}"
    );
    assert_eq!(d.status("first")["state"], "active");
    assert_eq!(d.status("second")["state"], "active");

    for id in ["first", "second"] {
        assert!(d.cli(&["plugin", "unload", id]).status.success());
    }
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command"])
        .arg(format!(
            "{} plugin load {a} {b}",
            harness::stockade().display()
        ))
        .arg("/dev/null")
        .env("STOCKADE_SOCKET", &d.socket)
        .output()
        .expect("script (util-linux)");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(tty.contains("\r\x1b[K[1/2] first: verifying"), "{tty:?}");
    assert!(tty.contains("\r\x1b[K[2/2] second: verifying"), "{tty:?}");
    // Each result on a line of its own: the progress line is cleared before it is printed.
    let first = tty.find("\r\x1b[Kloaded first").expect("first's result");
    let second = tty.find("\r\x1b[Kloaded second").expect("second's result");
    assert!(first < second, "{tty:?}");
    assert_eq!(d.status("second")["state"], "active");

    // A hostile manifest's id with a terminal escape (it would retitle the operator's window)
    // is never the progress line's label: the directory is.
    let evil = d.dir.join("packages/evil");
    std::fs::create_dir_all(&evil).unwrap();
    std::fs::write(
        evil.join("plugin.toml"),
        "id = \"x\\u001b]0;pwned\\u0007\"\n",
    )
    .unwrap();
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command"])
        .arg(format!(
            "{} plugin load {}",
            harness::stockade().display(),
            evil.display()
        ))
        .arg("/dev/null")
        .env("STOCKADE_SOCKET", &d.socket)
        .output()
        .expect("script (util-linux)");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        tty.contains(&format!("\r\x1b[K{}: verifying", evil.display())),
        "{tty:?}"
    );
    assert!(!tty.contains("pwned\x07"), "{tty:?}");
}

#[test]
fn a_crashing_plugin_restarts_with_backoff_and_fails_at_the_start_limit() {
    if !harness::privileged("a_crashing_plugin_restarts_with_backoff_and_fails_at_the_start_limit")
    {
        return;
    }
    let d = Daemon::start("crashloop", &[]);
    // It starts fine, then crashes on `go` (fork-exit: its first process exits).
    let pkg = d.package(
        "flaky",
        "flaky",
        "1.0.0",
        "fork-exit",
        "restart = \"always\"\nstart_limit = 2\nstart_window = \"60s\"\nbackoff_min = \"50ms\"\nbackoff_max = \"200ms\"",
    );
    d.load(&pkg);
    // A second plugin answers through all of it.
    let good = d.package("good", "good", "1.0.0", "echo", "");
    d.load(&good);
    for restarts in 1..=2 {
        let _ = d.call("flaky", "go", json!({}));
        assert_eq!(
            d.call("good", "echo", json!({"text": "up"})).unwrap()["text"],
            "up"
        );
        d.wait_event(10, &format!("restart {restarts}, active again"), |_| {
            let st = d.status("flaky");
            st["state"] == "active" && st["restarts"] == restarts
        });
    }
    let _ = d.call("flaky", "go", json!({}));
    let failed = d.wait_event(10, "failed at the start limit", |e| {
        lifecycle_event(e, "flaky", "failed").is_some()
    });
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("start limit: 2 restarts within 60 s"),
        "{failed}"
    );
    let restarts = d
        .events()
        .into_iter()
        .filter(|e| lifecycle_event(e, "flaky", "restarting").is_some())
        .count();
    assert_eq!(restarts, 2);
    assert_eq!(d.status("flaky")["state"], "failed");
    assert_eq!(
        d.cgroups().len(),
        1,
        "a failed plugin keeps no sandbox; the good one runs"
    );
    assert_eq!(d.status("good")["restarts"], 0);
    // The operator's reload starts it over.
    let reloaded = d
        .request("plugin.reload", json!({"id": "flaky"}))
        .expect("reload");
    assert_eq!(reloaded["state"], "active");
}

#[test]
fn a_hanging_plugin_is_killed_by_the_heartbeat() {
    if !harness::privileged("a_hanging_plugin_is_killed_by_the_heartbeat") {
        return;
    }
    let d = Daemon::start("hang", &[]);
    let pkg = d.package(
        "hang",
        "hang",
        "1.0.0",
        "hang",
        "heartbeat = \"1s\"\nrestart = \"no\"",
    );
    d.load(&pkg);
    let pid = d.status("hang")["pid"].as_i64().unwrap();
    let stopped = d.wait_event(15, "the heartbeat kill", |e| {
        lifecycle_event(e, "hang", "stopped").is_some()
    });
    assert!(
        stopped["reason"]
            .as_str()
            .unwrap()
            .contains("missed 2 heartbeats"),
        "{stopped}"
    );
    assert!(!process_alive(pid));
    assert!(d.cgroups().is_empty());
}

#[test]
fn a_failed_upgrade_leaves_the_old_version_serving() {
    if !harness::privileged("a_failed_upgrade_leaves_the_old_version_serving") {
        return;
    }
    let d = Daemon::start("upgrade-fail", &[]);
    let v1 = d.package("v1", "svc", "1.0.0", "echo", "");
    let v2 = d.package("v2", "svc", "2.0.0", "init-fail", "");
    d.load(&v1);
    let pid = d.status("svc")["pid"].as_i64().unwrap();
    let out = d.cli(&["plugin", "upgrade", "svc", v2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("initialize fails on purpose"), "{err}");
    assert!(err.contains("1.0.0 keeps serving"), "{err}");
    let answer = d
        .call("svc", "echo", json!({"text": "x"}))
        .expect("v1 answers");
    assert_eq!(answer["version"], "1.0.0");
    assert_eq!(d.status("svc")["pid"].as_i64(), Some(pid));
    assert_eq!(d.cgroups().len(), 1, "the failed version's sandbox is gone");
}

#[test]
fn an_upgrade_under_load_loses_and_duplicates_nothing() {
    if !harness::privileged("an_upgrade_under_load_loses_and_duplicates_nothing") {
        return;
    }
    let d = Daemon::start("upgrade-load", &[]);
    let v1 = d.package("v1", "svc", "1.0.0", "echo", "");
    let v2 = d.package("v2", "svc", "2.0.0", "echo", "");
    d.load(&v1);
    let old_pid = d.status("svc")["pid"].as_i64().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|t| {
            let socket = d.socket.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                // One connection per caller, requests in sequence, each answered exactly once.
                let stream = UnixStream::connect(&socket).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut versions = Vec::new();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) || n < 20 {
                    n += 1;
                    let text = format!("{t}-{n}");
                    let req = json!({"jsonrpc": "2.0", "id": n, "method": "call",
                        "params": {"plugin": "svc", "method": "echo", "params": {"text": text, "sleep_ms": 2}}});
                    writer.write_all(format!("{req}\n").as_bytes()).unwrap();
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let answer: Value = serde_json::from_str(&line).unwrap();
                    assert_eq!(answer["id"], n, "{answer}");
                    assert_eq!(answer["result"]["text"], text, "call {text}: {answer}");
                    versions.push(answer["result"]["version"].as_str().unwrap().to_string());
                }
                versions
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let upgraded = d
        .request("plugin.upgrade", json!({"id": "svc", "dir": v2}))
        .unwrap_or_else(|e| panic!("upgrade: {e}\n{}", d.log()));
    assert_eq!(upgraded["version"], "2.0.0");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for caller in callers {
        let versions = caller.join().expect("a caller failed");
        assert_eq!(versions.first().map(String::as_str), Some("1.0.0"));
        assert_eq!(versions.last().map(String::as_str), Some("2.0.0"));
        // Once a caller saw the new version it never sees the old one again.
        let first_new = versions.iter().position(|v| v == "2.0.0").unwrap();
        assert!(
            versions[first_new..].iter().all(|v| v == "2.0.0"),
            "{versions:?}"
        );
    }
    assert!(!process_alive(old_pid), "the old version was stopped");
    assert_eq!(d.cgroups().len(), 1);
}

/// Each hostile act ends as a violation or failure of its plugin alone, while a second plugin
/// keeps answering.
#[test]
fn hostile_plugins_harm_only_themselves() {
    if !harness::privileged("hostile_plugins_harm_only_themselves") {
        return;
    }
    let d = Daemon::start("hostile", &[]);
    let good = d.package("good", "good", "1.0.0", "echo", "");
    d.load(&good);
    for (mode, expect) in [
        ("garbage", "malformed"),
        ("oversized", "oversized"),
        ("unknown-id", "unknown-id"),
        ("log-flood", "flood"),
    ] {
        let id = format!("h-{mode}");
        let pkg = d.package(&id, &id, "1.0.0", mode, "restart = \"no\"");
        d.load(&pkg);
        let _ = d.call(&id, "go", json!({}));
        let violation = d.wait_event(20, &format!("{mode}'s violation"), |e| {
            e["type"] == "violation" && e["plugin"] == id.as_str()
        });
        assert_eq!(violation["layer"], "rpc", "{violation}");
        assert_eq!(violation["action"], expect, "{violation}");
        // untrusted-default kills at the first violation: quarantined, not restarted.
        let q = d.wait_event(20, &format!("{mode} quarantined"), |e| {
            lifecycle_event(e, &id, "quarantined").is_some()
        });
        assert!(
            q["reason"].as_str().unwrap().contains("auto-unloaded"),
            "{q}"
        );
        assert_eq!(
            d.call("good", "echo", json!({"text": mode})).unwrap()["text"],
            mode
        );
    }
    // A stdout flood is throttled, not fatal: the flooder is slowed, the good plugin answers.
    let pkg = d.package("h-stdout", "h-stdout", "1.0.0", "stdout-flood", "");
    d.load(&pkg);
    let flooder = d.request_in_background(
        "call",
        json!({"plugin": "h-stdout", "method": "go", "params": {}}),
    );
    for i in 0..20 {
        let text = format!("during flood {i}");
        assert_eq!(
            d.call("good", "echo", json!({"text": text})).unwrap()["text"],
            text
        );
    }
    flooder.join().unwrap();
    assert_eq!(d.status("good")["state"], "active");
    assert_eq!(d.status("good")["rpc_violations"], 0);
}

#[test]
fn two_plugins_violating_at_once_are_told_apart() {
    if !harness::privileged("two_plugins_violating_at_once_are_told_apart") {
        return;
    }
    let d = Daemon::start("attribution", &[]);
    let a = d.package("a", "va", "1.0.0", "forbidden", "restart = \"no\"");
    let b = d.package("b", "vb", "1.0.0", "forbidden", "restart = \"no\"");
    d.load(&a);
    d.load(&b);
    let ta = d.request_in_background(
        "call",
        json!({"plugin": "va", "method": "go", "params": {}}),
    );
    let _ = d.call("vb", "go", json!({}));
    ta.join().unwrap();
    for id in ["va", "vb"] {
        // Seen live, as it happened, and in the run's report.
        let live = d.wait_event(20, &format!("{id}'s live violation"), |e| {
            e["type"] == "violation" && e["plugin"] == id && e["layer"] == "namespace"
        });
        assert_eq!(live["object"], "/etc/shadow", "{live}");
        let report = d.wait_event(20, &format!("{id}'s report"), |e| {
            e["type"] == "report" && e["plugin"] == id
        });
        let first = &report["first"][0];
        assert_eq!(first["object"], "/etc/shadow", "{report}");
        assert_eq!(report["violations"], 1, "{report}");
        d.wait_event(20, &format!("{id} quarantined"), |e| {
            lifecycle_event(e, id, "quarantined").is_some()
        });
    }
}

#[test]
fn a_killed_daemon_takes_its_sandboxes_and_the_next_one_sweeps() {
    if !harness::privileged("a_killed_daemon_takes_its_sandboxes_and_the_next_one_sweeps") {
        return;
    }
    let mut d = Daemon::start("sigkill", &[]);
    let pkg = d.package("p", "p", "1.0.0", "echo", "");
    d.load(&pkg);
    let pid = d.status("p")["pid"].as_i64().unwrap();
    let old_daemon = d.pid();
    let prefix = format!("stockade-{old_daemon}.");
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while process_alive(pid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!process_alive(pid), "the plugin outlived its daemon");
    // A new daemon on the same socket sweeps the dead one's cgroups.
    let fresh = Daemon::start("sigkill-after", &[]);
    let left: Vec<PathBuf> = harness::leftover_cgroups()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    drop(fresh);
}

#[test]
fn the_control_socket_refuses_callers_not_allowed() {
    if !harness::privileged("the_control_socket_refuses_callers_not_allowed") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let d = Daemon::start("access", &["--allow-uid", "65533"]);
    let ask = |uid: u32| {
        Command::new(harness::stockade())
            .args(["plugin", "list"])
            .env("STOCKADE_SOCKET", &d.socket)
            .uid(uid)
            .output()
            .unwrap()
    };
    let refused = ask(65534);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("uid 65534 may not use the daemon's control socket"),
        "{refused:?}"
    );
    let allowed = ask(65533);
    assert!(allowed.status.success(), "{allowed:?}");
    // Without --allow-uid the socket itself is root's alone.
    let strict = Daemon::start("access-strict", &[]);
    let out = Command::new(harness::stockade())
        .args(["plugin", "list"])
        .env("STOCKADE_SOCKET", &strict.socket)
        .uid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run the command with sudo"),
        "{out:?}"
    );
}

/// The README's first command, on the debug build: the daemon hosts the examples, each answers,
/// `nosy` is quarantined with its report, and the daemon stops cleanly.
#[test]
fn the_readme_demo_runs() {
    if !harness::privileged("the_readme_demo_runs") {
        return;
    }
    let mut demo = Command::new(harness::repo_root().join("examples/daemon-demo.sh"));
    demo.env("STOCKADE_BIN", harness::bin_dir());
    if harness::emulated_vm() {
        // A Python start in a sandbox once took more than the default 10 s under emulation.
        demo.env("STOCKADE_DEMO_INIT_TIMEOUT", "60s");
    }
    let out = demo.output().expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for expected in [
        r#"{"text":"hello from Rust"}"#,
        r#"{"text":"hello from Python"}"#,
        "the plugin declares no method `shout`",
        "nosy 0.1.0 (untrusted): quarantined (auto-unloaded for violations (namespace /etc/shadow))",
        r#""by_layer":{"namespace":1}"#,
        "/echo-python: signature ok",
        "the package is not what was signed: main.py: its bytes are not the signed ones",
        "the daemon exited with status 0",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("did not"), "{stdout}");
}

/// A signed package of the Rust example (examples/plugins/echo-rust) with id `id`.
fn rust_echo(d: &Daemon, id: &str) -> PathBuf {
    rust_echo_with(d, id, |m| m)
}

/// The same, its manifest changed by `edit`.
fn rust_echo_with(d: &Daemon, id: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let manifest = edit(
        std::fs::read_to_string(
            harness::repo_root().join("examples/plugins/echo-rust/plugin.toml"),
        )
        .unwrap(),
    );
    let dir = d.dir.join("packages").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    harness::set_mode(&d.dir.join("packages"), 0o755);
    harness::set_mode(&dir, 0o755);
    std::fs::write(
        dir.join("plugin.toml"),
        manifest.replace("id = \"echo-rust\"", &format!("id = \"{id}\"")),
    )
    .unwrap();
    // A hard link: 80 copies of the binary would fill the VM's /tmp (each load makes a sealed
    // copy of its own besides).
    std::fs::hard_link(harness::bin_dir().join("echo-rust"), dir.join("echo-rust"))
        .or_else(|_| {
            std::fs::copy(harness::bin_dir().join("echo-rust"), dir.join("echo-rust")).map(|_| ())
        })
        .unwrap();
    d.sign(&dir);
    dir
}

/// Events between plugins: what a plugin publishes reaches the other plugins whose manifest
/// subscribes to the topic (the Rust example, declared with `make_plugin!`, has a hook for
/// `greetings.*` that counts what it hears), never the publisher itself, and no topic its
/// publisher does not share (`publish`) or the subscriber did not subscribe to — both of those
/// topics below match the listener's hook, which would count them.
#[test]
fn published_events_reach_their_subscribers() {
    if !harness::privileged("published_events_reach_their_subscribers") {
        return;
    }
    let d = Daemon::start("subscribers", &[]);
    d.load(&rust_echo_with(&d, "greeter", |m| {
        assert!(m.contains("publish = [\"greetings.*\"]"), "{m}");
        m.replace(
            "publish = [\"greetings.*\"]",
            "publish = [\"greetings.hello\", \"greetings.again\", \"greetings.unasked\"]",
        )
    }));
    d.load(&rust_echo_with(&d, "listener", |m| {
        assert!(m.contains("subscribe = [\"greetings.*\"]"), "{m}");
        m.replace(
            "subscribe = [\"greetings.*\"]",
            "subscribe = [\"greetings.hello\", \"greetings.again\", \"greetings.unshared\"]",
        )
    }));
    let heard = |id: &str| d.call(id, "count", json!({})).unwrap()["heard"].clone();
    assert_eq!(heard("listener"), 0);
    d.call(
        "greeter",
        "announce",
        json!({ "topic": "greetings.hello", "data": { "n": 1 } }),
    )
    .unwrap();
    // Shared by the greeter, not subscribed by the listener; and the other way round.
    d.call(
        "greeter",
        "announce",
        json!({ "topic": "greetings.unasked", "data": {} }),
    )
    .unwrap();
    d.call(
        "greeter",
        "announce",
        json!({ "topic": "greetings.unshared", "data": "not shared" }),
    )
    .unwrap();
    d.call(
        "greeter",
        "announce",
        json!({ "topic": "greetings.again", "data": "twice" }),
    )
    .unwrap();
    let until = Instant::now() + harness::patience(5);
    while heard("listener") != 2 {
        assert!(Instant::now() < until, "{:#?}", d.logs("listener"));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The stream had all four; nothing more arrives, and the publisher heard none of its own.
    d.wait_event(5, "the last topic", |e| {
        e["type"] == "published" && e["topic"] == "greetings.again"
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(heard("listener"), 2);
    assert_eq!(heard("greeter"), 0);
    let logs = d.logs("listener");
    for line in [
        r#"info: heard greetings.hello from greeter: {"n":1}"#,
        r#"info: heard greetings.again from greeter: "twice""#,
    ] {
        assert!(logs.iter().any(|l| l == line), "{line} not in {logs:#?}");
    }
    assert!(!logs.iter().any(|l| l.contains("unasked")), "{logs:#?}");
    assert!(!logs.iter().any(|l| l.contains("unshared")), "{logs:#?}");
}

/// More sandboxes at once than the monitors' first 64 slots (full ring buffers, per-syscall
/// counts): 80 Rust plugins loaded, each answering, each in its own cgroup.
#[test]
fn more_than_64_plugins_at_once() {
    if !harness::privileged("more_than_64_plugins_at_once") {
        return;
    }
    let d = Daemon::start("many", &[]);
    let count = 80;
    for i in 0..count {
        d.load(&rust_echo(&d, &format!("many-{i}")));
    }
    assert_eq!(d.cgroups().len(), count);
    for i in 0..count {
        let text = format!("hello {i}");
        let answer = d
            .call(&format!("many-{i}"), "echo", json!({ "text": text }))
            .unwrap_or_else(|e| panic!("many-{i}: {e}"));
        assert_eq!(answer["text"], text);
    }
    let list = d.request("plugin.list", json!({})).unwrap();
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .filter(|p| p["state"] == "active")
            .count(),
        count
    );
}

/// One plugin flooding its ring buffer with denials costs another neither its events nor its
/// life: the flooder (trusted, monitor mode: never killed) makes 100,000 denials (10,000 under
/// emulation) while the other
/// makes one, which is seen, counted once, with no lost denial, and ends it at its threshold.
#[test]
fn a_flooding_plugin_costs_another_nothing() {
    if !harness::privileged("a_flooding_plugin_costs_another_nothing") {
        return;
    }
    let d = Daemon::start("flood", &[]);
    let monitor_mode = std::fs::read_to_string(harness::default_profile())
        .unwrap()
        .replace("mode = \"enforce\"", "mode = \"monitor\"")
        .replace("action = \"kill\"", "action = \"report\"");
    let flooder = d.package_with(
        "flooder",
        "flooder",
        "1.0.0",
        "deny-flood",
        "",
        "trusted",
        Some(&monitor_mode),
    );
    let victim = d.package("victim", "victim", "1.0.0", "forbidden", "restart = \"no\"");
    d.load(&flooder);
    d.load(&victim);
    // Within the call's timeout (5 s; 30 s under the VM runner's emulation).
    let count: u64 = if harness::emulated_vm() {
        5_000
    } else {
        100_000
    };
    let flood = d.request_in_background(
        "call",
        json!({"plugin": "flooder", "method": "go", "params": {"count": count}}),
    );
    // Once the flood is under way, the victim's one denial.
    d.wait_event(20, "the flood under way", |e| {
        e["type"] == "violation" && e["plugin"] == "flooder"
    });
    let _ = d.call("victim", "go", json!({}));
    let report = d.wait_event(20, "the victim's report", |e| {
        e["type"] == "report" && e["plugin"] == "victim"
    });
    assert_eq!(report["violations"], 1, "{report}");
    assert_eq!(report["lost_denials"], 0, "{report}");
    assert_eq!(report["first"][0]["object"], "/etc/shadow", "{report}");
    assert!(report["auto_unload"].is_object(), "{report}");
    let answer = flood.join().unwrap();
    assert!(answer.contains("\"done\":true"), "{answer}");
    assert_eq!(d.status("flooder")["state"], "active");
    // The flooder's own report: every denial seen or counted.
    d.request("plugin.unload", json!({"id": "flooder"}))
        .unwrap();
    let report = d.wait_event(20, "the flooder's report", |e| {
        e["type"] == "report" && e["plugin"] == "flooder"
    });
    assert!(report["violations"].as_u64().unwrap() >= count, "{report}");
}

/// `--config FILE`: the plugin directories and the socket's extra uid come from the file; a
/// file with an unknown key stops the daemon before it listens, with the line and column.
#[test]
fn the_configuration_file() {
    if !harness::privileged("the_configuration_file") {
        return;
    }
    let dir = harness::scratch_dir("daemon-config");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    harness::set_mode(&plugins, 0o755);
    let pkg = plugins.join("configured");
    std::fs::create_dir_all(&pkg).unwrap();
    harness::set_mode(&pkg, 0o755);
    std::fs::copy(
        harness::repo_root().join("tests/fixtures/daemon_plugin.py"),
        pkg.join("plugin.py"),
    )
    .unwrap();
    harness::set_mode(&pkg.join("plugin.py"), 0o755);
    std::fs::write(
        pkg.join("plugin.toml"),
        format!(
            "id = \"configured\"\nname = \"c\"\nversion = \"1.0.0\"\nentry = [\"plugin.py\"]\n\
             policy = {{ profile = \"untrusted-default\" }}\n{}",
            echo_methods()
        ),
    )
    .unwrap();
    let config = dir.join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "plugins = [\"{}\"]\nallow_uids = [65533]\n[trust]\nallow_unsigned = true\n",
            plugins.display()
        ),
    )
    .unwrap();
    let d = Daemon::start("configured", &["--config", config.to_str().unwrap()]);
    d.wait_event(20, "the configured plugin active", |e| {
        lifecycle_event(e, "configured", "active").is_some()
    });
    use std::os::unix::process::CommandExt;
    let out = Command::new(harness::stockade())
        .args([
            "call",
            "configured",
            "echo",
            r#"{"text": "from uid 65533"}"#,
        ])
        .env("STOCKADE_SOCKET", &d.socket)
        .uid(65533)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    std::fs::write(&config, "socket = \"/tmp/x.sock\"\nplugin_dirs = []\n").unwrap();
    let out = Command::new(harness::stockade())
        .args(["daemon", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2:1: unknown key `plugin_dirs`",
            config.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("hint: the keys are socket, state_dir, plugins, allow_uids"),
        "{err}"
    );
    assert!(!Path::new("/tmp/x.sock").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Operations on one plugin happen one after another: an unload asked during an upgrade makes
/// the upgrade give up (its new version stopped), then stops the old one, leaving no sandbox
/// behind; a `logs --follow` ends with the plugin it follows.
#[test]
fn an_unload_during_an_upgrade_leaves_nothing_running() {
    if !harness::privileged("an_unload_during_an_upgrade_leaves_nothing_running") {
        return;
    }
    let d = Daemon::start("unload-upgrade", &[]);
    let v1 = d.package("v1", "svc", "1.0.0", "echo", "");
    let v2 = d.package("v2", "svc", "2.0.0", "slow-init", "");
    d.load(&v1);
    let mut follower = Command::new(harness::stockade())
        .args(["plugin", "logs", "svc", "--follow"])
        .env("STOCKADE_SOCKET", &d.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let upgrade = d.request_in_background("plugin.upgrade", json!({"id": "svc", "dir": v2}));
    // The new version is initializing (1.5 s) when the unload comes.
    d.wait_event(20, "the upgrade under way", |e| {
        e["type"] == "upgrade" && e["stage"] == "starting"
    });
    std::thread::sleep(Duration::from_millis(300));
    let unloaded = d.request("plugin.unload", json!({"id": "svc"}));
    assert!(unloaded.is_ok(), "{unloaded:?}");
    let answer = upgrade.join().unwrap();
    assert!(
        answer.contains("was abandoned and its new version stopped: the plugin is being unloaded"),
        "{answer}"
    );
    assert!(d.cgroups().is_empty(), "{:?}", d.cgroups());
    assert_eq!(d.request("plugin.list", json!({})).unwrap(), json!([]));
    // The follower's stream ended with the plugin.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = follower.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        if Instant::now() > until {
            let _ = follower.kill();
            panic!("`plugin logs --follow` did not end with the plugin");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    std::io::Read::read_to_string(follower.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(out.contains("received initialize"), "{out}");
}

/// Unloads and the daemon's stop leave nothing behind: no descriptor of the daemon (its count
/// back where it was after a warm-up), no slot or map entry of the monitors naming the daemon's
/// sandboxes, no cgroup, no process.
#[test]
fn unload_and_shutdown_leave_nothing_behind() {
    if !harness::privileged("unload_and_shutdown_leave_nothing_behind") {
        return;
    }
    let mut d = Daemon::start("leftovers", &[]);
    let pkg = d.package("p", "p", "1.0.0", "echo", "");
    // The daemon's descriptors once the control connections of the last requests are closed
    // (its side closes when it reads their end): the same count twice, 100 ms apart.
    let fds = |pid: u32| {
        let count = || {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .count()
        };
        let mut last = count();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = count();
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let slots_of = |prefix: &str| -> Vec<Value> {
        let out = Command::new(harness::stockade())
            .args(["monitors", "status", "--json"])
            .output()
            .unwrap();
        let sets: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        sets.as_array()
            .into_iter()
            .flatten()
            .flat_map(|set| set["slots"].as_array().cloned().unwrap_or_default())
            .filter(|slot| slot["cgroup"].as_str().is_some_and(|c| c.contains(prefix)))
            .collect()
    };
    let prefix = format!("stockade-{}.", d.pid());
    // Warm-up: the first launch opens what the daemon keeps (the uid table, the scan cache).
    d.load(&pkg);
    d.request("plugin.unload", json!({"id": "p"})).unwrap();
    let baseline = fds(d.pid());
    let mut pids = Vec::new();
    for i in 0..3 {
        d.load(&pkg);
        pids.push(d.status("p")["pid"].as_i64().unwrap());
        let text = format!("round {i}");
        assert_eq!(
            d.call("p", "echo", json!({"text": text})).unwrap()["text"],
            text
        );
        assert_eq!(slots_of(&prefix).len(), 1, "the run holds one slot");
        d.request("plugin.unload", json!({"id": "p"})).unwrap();
        assert!(slots_of(&prefix).is_empty(), "{:?}", slots_of(&prefix));
        assert!(d.cgroups().is_empty(), "{:?}", d.cgroups());
    }
    let after = fds(d.pid());
    assert!(
        after <= baseline,
        "descriptors left by three load/unload rounds: {after}, {baseline} before"
    );
    assert!(pids.iter().all(|&p| !process_alive(p)));
    // The daemon's stop with a plugin running.
    d.load(&pkg);
    let pid = d.status("p")["pid"].as_i64().unwrap();
    assert!(d.stop().success());
    assert!(!process_alive(pid));
    assert!(slots_of(&prefix).is_empty());
    let left: Vec<PathBuf> = harness::leftover_cgroups()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        !d.socket.exists(),
        "the control socket is removed at the stop"
    );
}

/// systemd's notify protocol, spoken to a datagram socket the test binds as systemd would:
/// `READY=1` with a status once the control socket listens, the status again as plugins come
/// (with `WATCHDOG=1` pings at half of `WATCHDOG_USEC`), `STOPPING=1` when SIGTERM stops it,
/// with `EXTEND_TIMEOUT_USEC=` for the plugins' longest stop.
#[test]
fn the_daemon_speaks_systemds_notify_protocol() {
    if !harness::privileged("the_daemon_speaks_systemds_notify_protocol") {
        return;
    }
    let mut d = Daemon::prepared("notify");
    let path = d.dir.join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(harness::patience(20)))
        .unwrap();
    let mut messages = Vec::new();
    let next = |messages: &mut Vec<String>| {
        let mut buf = [0u8; 4096];
        let n = systemd.recv(&mut buf).expect("a notification in time");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        messages.push(m.clone());
        m
    };
    // 0.4 s: pings every 0.2 s.
    d.spawn_with(
        &[],
        &[
            ("NOTIFY_SOCKET", path.as_os_str()),
            ("WATCHDOG_USEC", std::ffi::OsStr::new("400000")),
        ],
    );
    let first = next(&mut messages);
    assert!(first.lines().any(|l| l == "READY=1"), "{first}");
    assert!(
        first.contains("STATUS=0 of 0 plugins active; audit log at record "),
        "{first}"
    );
    d.load(&d.package("echo", "echo", "1.0.0", "echo", ""));
    let until = Instant::now() + harness::patience(20);
    while !next(&mut messages).contains("STATUS=1 of 1 plugins active") {
        assert!(Instant::now() < until, "{messages:?}");
    }
    let pings = messages.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(pings >= 1, "{messages:?}");
    // A manager that stops reading: its queue (net.unix.max_dgram_qlen, 10 by default) fills
    // within 2 s of pings. The daemon drops what does not fit and goes on serving; it once
    // waited on the full socket on its runtime's thread and answered nothing more.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(d.status("echo")["state"], "active");
    systemd.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let mut queued = 0;
    while systemd.recv(&mut buf).is_ok() {
        queued += 1;
    }
    assert!(queued >= 5, "{queued} notifications were waiting");
    systemd.set_nonblocking(false).unwrap();
    // And once read again, it is told again.
    assert!(next(&mut messages).contains("WATCHDOG=1"), "{messages:?}");
    assert!(d.stop().success());
    let until = Instant::now() + harness::patience(20);
    let stopping = loop {
        let m = next(&mut messages);
        if m.lines().any(|l| l == "STOPPING=1") {
            break m;
        }
        assert!(Instant::now() < until, "{messages:?}");
    };
    // The stop's time asked for: the plugin's stop_timeout (the default 5 s) and 20 s more.
    assert!(
        stopping
            .lines()
            .any(|l| l == "EXTEND_TIMEOUT_USEC=25000000"),
        "{stopping}"
    );
}

/// GET (or POST) `path` of the metrics endpoint at `port`: (status line, headers, body).
fn http(port: u16, method: &str, path: &str) -> Option<(String, String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(harness::patience(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Some((status.to_string(), headers.to_lowercase(), body.to_string()))
}

/// One scrape: each sample line's `name{labels}` and value.
fn scrape(port: u16) -> std::collections::BTreeMap<String, f64> {
    let (status, headers, body) = http(port, "GET", "/metrics").expect("the metrics endpoint");
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        headers.contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("a sample line");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// A daemon serving metrics on a free port, once the endpoint answers.
fn metrics_daemon(name: &str) -> (Daemon, u16) {
    let port = free_port();
    let d = Daemon::start(name, &["--metrics", &format!("127.0.0.1:{port}")]);
    let until = Instant::now() + harness::patience(10);
    while http(port, "GET", "/metrics").is_none() {
        assert!(Instant::now() < until, "no metrics endpoint\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    (d, port)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plugin's own counters (`counters` in its manifest, `metrics.add` on the socket) in the
/// daemon's metrics, added exactly; an undeclared name is a violation of the `rpc` layer and
/// never a series.
#[test]
fn a_plugins_own_counters_reach_prometheus() {
    if !harness::privileged("a_plugins_own_counters_reach_prometheus") {
        return;
    }
    let (d, port) = metrics_daemon("counters");
    let pkg = d.package("counting", "counting", "1.0.0", "count", "restart = \"no\"");
    let manifest = std::fs::read_to_string(pkg.join("plugin.toml")).unwrap();
    std::fs::write(
        pkg.join("plugin.toml"),
        manifest.replace(
            "trust = \"untrusted\"\n",
            "trust = \"untrusted\"\ncounters = [\"install_success_total\", \"install_failure_total\"]\n",
        ),
    )
    .unwrap();
    d.sign(&pkg);
    d.load(&pkg);
    let series =
        "stockade_plugin_counter_total{plugin_id=\"counting\",name=\"install_success_total\"}";
    assert_eq!(
        scrape(port).get(series),
        None,
        "no series before the first add"
    );
    for value in [1, 41] {
        d.call(
            "counting",
            "go",
            json!({ "names": ["install_success_total"], "value": value }),
        )
        .unwrap();
    }
    // The notifications come before the answer on the same socket: counted by now.
    assert_eq!(scrape(port).get(series), Some(&42.0));

    let _ = d.call("counting", "go", json!({ "names": ["made_up_total"] }));
    let v = d.wait_event(20, "the undeclared counter's violation", |e| {
        e["type"] == "violation" && e["plugin"] == "counting" && e["layer"] == "rpc"
    });
    assert_eq!(v["action"], "undeclared-counter", "{v}");
    let after = scrape(port);
    assert!(
        !after.keys().any(|k| k.contains("made_up_total")),
        "{after:#?}"
    );
    assert_eq!(after.get(series), Some(&42.0));
}

/// The metrics endpoint, scraped while the daemon loads plugins, calls them, sees one violate
/// and be unloaded for it, sees one crash and restarts it, and fails to start another: every
/// counter moves by exactly what happened, and the labels a caller chooses (an unknown plugin,
/// an undeclared method) do not become series of their own.
#[test]
fn the_metrics_count_what_happened() {
    if !harness::privileged("the_metrics_count_what_happened") {
        return;
    }
    let (d, port) = metrics_daemon("metrics");
    let before = scrape(port);
    assert_eq!(
        before.get("stockade_plugins_active{trust_level=\"untrusted\"}"),
        Some(&0.0)
    );
    assert_eq!(before.get("stockade_audit_failing"), Some(&0.0));

    d.load(&d.package("echo", "echo", "1.0.0", "echo", ""));
    for i in 0..3 {
        d.call("echo", "echo", json!({ "text": format!("hi {i}") }))
            .unwrap();
    }
    assert!(d.call("echo", "nope", json!({})).is_err());
    assert!(d.call("ghost", "echo", json!({})).is_err());
    assert!(d.call("ghost", "x-made-up-method", json!({})).is_err());

    let victim = d.package("victim", "victim", "1.0.0", "forbidden", "restart = \"no\"");
    d.load(&victim);
    let _ = d.call("victim", "go", json!({}));
    d.wait_event(20, "the victim's report", |e| {
        e["type"] == "report" && e["plugin"] == "victim"
    });
    d.wait_event(20, "the victim quarantined", |e| {
        lifecycle_event(e, "victim", "quarantined").is_some()
    });

    let crashy = d.package(
        "crashy",
        "crashy",
        "1.0.0",
        "echo",
        "restart = \"always\"\nbackoff_min = \"50ms\"\nbackoff_max = \"100ms\"",
    );
    d.load(&crashy);
    let pid = d.status("crashy")["pid"].as_i64().unwrap();
    // SAFETY: kill with a pid the daemon reported for its plugin's first process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let until = Instant::now() + harness::patience(20);
    while !(d.status("crashy")["state"] == "active" && d.status("crashy")["pid"] != pid) {
        assert!(Instant::now() < until, "{}", d.status("crashy"));
        std::thread::sleep(Duration::from_millis(50));
    }

    let crasher = d.package("crasher", "crasher", "1.0.0", "crash", "restart = \"no\"");
    assert!(d.request("plugin.load", json!({ "dir": crasher })).is_err());

    let after = scrape(port);
    let delta = |name: &str| {
        after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
    };
    let expected: &[(&str, f64)] = &[
        ("stockade_plugin_loads_total{outcome=\"ok\"}", 3.0),
        ("stockade_plugin_loads_total{outcome=\"error\"}", 1.0),
        (
            "stockade_plugin_load_duration_seconds_count{trust_level=\"untrusted\"}",
            3.0,
        ),
        (
            "stockade_calls_total{plugin_id=\"echo\",method=\"echo\",outcome=\"ok\"}",
            3.0,
        ),
        (
            "stockade_calls_total{plugin_id=\"echo\",method=\"(undeclared)\",outcome=\"method_not_found\"}",
            1.0,
        ),
        (
            "stockade_calls_total{plugin_id=\"(unknown)\",method=\"(undeclared)\",outcome=\"unknown_plugin\"}",
            2.0,
        ),
        (
            "stockade_call_duration_seconds_count{plugin_id=\"echo\",method=\"echo\"}",
            3.0,
        ),
        (
            "stockade_violations_total{plugin_id=\"victim\",trust_level=\"untrusted\",layer=\"namespace\"}",
            1.0,
        ),
        (
            "stockade_auto_unloads_total{plugin_id=\"victim\",trust_level=\"untrusted\"}",
            1.0,
        ),
        (
            "stockade_sandbox_process_restarts_total{plugin_id=\"crashy\"}",
            1.0,
        ),
        ("stockade_plugin_failures_total{plugin_id=\"crashy\"}", 1.0),
        ("stockade_plugin_failures_total{plugin_id=\"crasher\"}", 1.0),
        ("stockade_plugins_active{trust_level=\"untrusted\"}", 2.0),
        (
            "stockade_plugins{state=\"active\",trust_level=\"untrusted\"}",
            2.0,
        ),
        (
            "stockade_plugins{state=\"quarantined\",trust_level=\"untrusted\"}",
            1.0,
        ),
    ];
    for (name, want) in expected {
        assert_eq!(delta(name), *want, "{name}\n{after:#?}");
    }
    // Nothing else: no violation of another plugin or layer, no failure of the others.
    let moved = |prefix: &str| {
        after
            .keys()
            .filter(|k| k.starts_with(prefix) && delta(k) != 0.0)
            .count()
    };
    assert_eq!(moved("stockade_violations_total"), 1, "{after:#?}");
    assert_eq!(moved("stockade_plugin_failures_total"), 2, "{after:#?}");
    assert_eq!(moved("stockade_auto_unloads_total"), 1, "{after:#?}");
    let victim_calls: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("stockade_calls_total{plugin_id=\"victim\",method=\"go\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(victim_calls, 1.0, "{after:#?}");
    assert!(delta("stockade_audit_records_committed") > 0.0);
    if after
        .keys()
        .any(|k| k.starts_with("stockade_bpf_program_runs_total{program=\"sys_exit\"}"))
    {
        assert!(
            after.contains_key("stockade_bpf_program_recursion_misses_total{program=\"sys_exit\"}"),
            "{after:#?}"
        );
    } else {
        assert!(
            after.keys().all(|k| !k.starts_with("stockade_bpf_program")),
            "programs without sys_exit: {after:#?}"
        );
    }
    // `plugin list` tells the same story per plugin, with what each uses now.
    let echo = d.status("echo");
    assert!(
        echo["usage"]["memory_bytes"].as_u64().unwrap() > 0,
        "{echo}"
    );
    assert!(echo["usage"]["tasks"].as_u64().unwrap() >= 1, "{echo}");
    assert!(echo["usage"]["cpu_us"].as_u64().is_some(), "{echo}");
    assert_eq!(d.status("victim")["violations"], 1);
    assert!(d.status("victim")["usage"].is_null());
    let out = d.cli(&["plugin", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "VERSION", "TRUST", "STATE", "UPTIME", "RESTARTS", "VIOL", "MEMORY", "CPU", "PID"]
    );
    let row = |id: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no {id} in:\n{text}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let victim = row("victim");
    assert_eq!(
        (victim[3].as_str(), victim[6].as_str(), victim[7].as_str()),
        ("quarantined", "1", "-"),
        "{text}"
    );
    let crashy = row("crashy");
    assert_eq!(
        (crashy[3].as_str(), crashy[5].as_str()),
        ("active", "1"),
        "{text}"
    );
    assert!(
        crashy[7].ends_with('K') || crashy[7].ends_with('M'),
        "{text}"
    );

    // The endpoint answers only what it serves.
    let (status, headers, _) = http(port, "POST", "/metrics").unwrap();
    assert!(status.contains(" 405 "), "{status}");
    assert!(headers.contains("allow: get, head"), "{headers}");
    let (status, _, _) = http(port, "GET", "/admin").unwrap();
    assert!(status.contains(" 404 "), "{status}");
}

/// A metrics address already taken: the daemon says so in one line and serves plugins anyway
/// (metrics are never a reason to stop enforcing).
#[test]
fn a_metrics_address_in_use_costs_only_the_metrics() {
    if !harness::privileged("a_metrics_address_in_use_costs_only_the_metrics") {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let d = Daemon::start(
        "metrics-taken",
        &["--metrics", &format!("127.0.0.1:{port}")],
    );
    d.load(&d.package("echo", "echo", "1.0.0", "echo", ""));
    assert_eq!(
        d.call("echo", "echo", json!({ "text": "still here" }))
            .unwrap()["text"],
        "still here"
    );
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("metrics: cannot listen on"))
        .unwrap_or_else(|| panic!("no line about the metrics address:\n{log}"));
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(line.contains("Address already in use"), "{line}");
    assert!(line.contains("hint:"), "{line}");
}

/// The cgroup v2 directory of this test process (`None` on a hybrid host, whose v2 hierarchy
/// has no controllers to delegate).
fn own_unified_cgroup() -> Option<std::path::PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    if own.lines().any(|l| !l.starts_with("0::")) {
        return None;
    }
    let path = own.lines().next()?.strip_prefix("0::")?;
    Some(std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')))
}

fn set_delegate_mark(dir: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: setxattr reads the two NUL-terminated strings and one byte, alive for the call.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"trusted.delegate".as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// A cgroup delegated as systemd's `Delegate=yes` does it (the xattr `trusted.delegate`): the
/// daemon moves into its `supervisor/` leaf, enables the controllers, and its sandboxes become
/// the leaf's siblings. The control: the same cgroup unmarked leaves the daemon where it is, and
/// a plugin cannot start there (cgroup v2 gives no controllers to a cgroup with processes).
#[test]
fn a_delegated_cgroup_holds_the_daemon_in_a_leaf() {
    if !harness::privileged("a_delegated_cgroup_holds_the_daemon_in_a_leaf") {
        return;
    }
    let Some(own) = own_unified_cgroup() else {
        println!("skipped: a_delegated_cgroup_holds_the_daemon_in_a_leaf: hybrid cgroups here, whose cgroup v2 has no controllers to delegate (the VM guests run it)");
        return;
    };
    let available = std::fs::read_to_string(own.join("cgroup.subtree_control")).unwrap_or_default();
    if !["memory", "pids", "cpu"]
        .iter()
        .all(|c| available.split_whitespace().any(|h| h == *c))
    {
        println!("skipped: a_delegated_cgroup_holds_the_daemon_in_a_leaf: this test's cgroup does not give its children memory, pids and cpu ({available:?})");
        return;
    }
    let unit = own.join(format!("stockade-test-delegated-{}", std::process::id()));
    std::fs::create_dir(&unit).unwrap();
    let leaf = unit.join("supervisor");

    // The control: not marked.
    let mut d = Daemon::prepared("delegated");
    d.cgroup = Some(unit.clone());
    d.spawn(&[]);
    let placed = std::fs::read_to_string(format!("/proc/{}/cgroup", d.pid())).unwrap();
    assert!(
        placed
            .trim_end()
            .ends_with(&format!("/stockade-test-delegated-{}", std::process::id())),
        "{placed}"
    );
    let e = d
        .request(
            "plugin.load",
            json!({ "dir": d.package("echo", "echo", "1.0.0", "echo", "") }),
        )
        .unwrap_err();
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("cgroup v2 gives controllers only to cgroups without them"),
        "{e}"
    );
    assert!(d.stop().success());
    assert!(!leaf.exists());

    // Marked: the daemon moves into the leaf and its plugin runs beside it.
    set_delegate_mark(&unit);
    d.spawn(&[]);
    let placed = std::fs::read_to_string(format!("/proc/{}/cgroup", d.pid())).unwrap();
    assert!(
        placed.trim_end().ends_with(&format!(
            "/stockade-test-delegated-{}/supervisor",
            std::process::id()
        )),
        "{placed}"
    );
    assert!(
        d.log()
            .contains("the service manager delegated this cgroup"),
        "{}",
        d.log()
    );
    let control = std::fs::read_to_string(unit.join("cgroup.subtree_control")).unwrap();
    for c in ["memory", "pids", "cpu"] {
        assert!(control.split_whitespace().any(|h| h == c), "{control}");
    }
    assert_eq!(
        std::fs::read_to_string(unit.join("cgroup.procs")).unwrap(),
        ""
    );
    d.load(&d.dir.join("packages/echo"));
    assert_eq!(
        d.call("echo", "echo", json!({ "text": "beside" })).unwrap()["text"],
        "beside"
    );
    let sandboxes: Vec<String> = std::fs::read_dir(&unit)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("stockade-{}.echo.", d.pid())))
        .collect();
    assert_eq!(sandboxes.len(), 1, "{sandboxes:?}");
    let memory_max = std::fs::read_to_string(unit.join(&sandboxes[0]).join("memory.max")).unwrap();
    assert_ne!(
        memory_max.trim(),
        "max",
        "the sandbox's memory limit is set"
    );
    assert!(d.stop().success());
    // Nothing of the daemon's is left but its own leaf, which its service manager removes with
    // the unit (here: the test).
    let left: Vec<String> = std::fs::read_dir(&unit)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["supervisor"]);
    std::fs::remove_dir(&leaf).unwrap();
    std::fs::remove_dir(&unit).unwrap();
}

/// The fields of one journal datagram in the native protocol (`NAME=value`, or `NAME`, a 64-bit
/// length and the value when it holds a newline).
fn journal_fields(mut d: &[u8]) -> std::collections::BTreeMap<String, String> {
    let mut fields = std::collections::BTreeMap::new();
    while !d.is_empty() {
        let end = d.iter().position(|b| *b == b'\n').expect("a field ends");
        let head = &d[..end];
        if let Some(eq) = head.iter().position(|b| *b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&head[..eq]).into_owned(),
                String::from_utf8_lossy(&head[eq + 1..]).into_owned(),
            );
            d = &d[end + 1..];
        } else {
            let len = u64::from_le_bytes(d[end + 1..end + 9].try_into().unwrap()) as usize;
            let value = &d[end + 9..end + 9 + len];
            fields.insert(
                String::from_utf8_lossy(head).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            );
            d = &d[end + 9 + len + 1..];
        }
    }
    fields
}

/// `[export]`: the event stream as JSON lines in schema 1 (numbered, with the host, filtered by
/// type, a field left out) and to the journal's socket (bound here as journald binds it), while
/// a plugin violates; an export path that cannot be written is one error line and the plugins
/// are served all the same.
#[test]
fn events_are_exported_for_a_siem() {
    if !harness::privileged("events_are_exported_for_a_siem") {
        return;
    }
    let mut d = Daemon::prepared("export");
    let file = d.dir.join("log/events.jsonl");
    let journal_path = d.dir.join("journal.sock");
    let journal = std::os::unix::net::UnixDatagram::bind(&journal_path).unwrap();
    journal
        .set_read_timeout(Some(harness::patience(10)))
        .unwrap();
    let config = d.dir.join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "host_id = \"export-host\"\n[export]\nfile = \"{}\"\njournald = \"{}\"\ntypes = [\"lifecycle\", \"violation\", \"report\"]\nomit = [\"first\"]\n",
            file.display(),
            journal_path.display()
        ),
    )
    .unwrap();
    d.spawn(&["--config", config.to_str().unwrap()]);
    let victim = d.package("victim", "victim", "1.0.0", "forbidden", "restart = \"no\"");
    d.load(&victim);
    let _ = d.call("victim", "go", json!({}));
    d.wait_event(20, "the victim quarantined", |e| {
        lifecycle_event(e, "victim", "quarantined").is_some()
    });
    assert!(d.stop().success());
    let records: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["schema"], 1, "{r}");
        assert_eq!(r["host"], "export-host", "{r}");
        assert_eq!(r["seq"], i as u64 + 1, "{r}");
        assert!(
            ["lifecycle", "violation", "report"].contains(&r["type"].as_str().unwrap()),
            "{r}"
        );
    }
    let violation = records
        .iter()
        .find(|r| r["type"] == "violation")
        .expect("the violation exported");
    assert_eq!(violation["plugin"], "victim");
    assert_eq!(violation["layer"], "namespace");
    assert_eq!(violation["object"], "/etc/shadow");
    let report = records.iter().find(|r| r["type"] == "report").unwrap();
    assert_eq!(report["violations"], 1);
    assert!(report.get("first").is_none(), "{report}");
    assert!(records
        .iter()
        .any(|r| r["type"] == "lifecycle" && r["to"] == "quarantined"));
    // The journal got the same records, one datagram each.
    let mut buf = vec![0u8; 1 << 17];
    let mut entries = Vec::new();
    while entries.len() < records.len() {
        let n = journal.recv(&mut buf).expect("a journal entry");
        entries.push(journal_fields(&buf[..n]));
    }
    let v = entries
        .iter()
        .find(|e| e["STOCKADE_TYPE"] == "violation")
        .unwrap();
    assert_eq!(v["SYSLOG_IDENTIFIER"], "stockade");
    assert_eq!(v["PRIORITY"], "4");
    assert_eq!(v["STOCKADE_PLUGIN"], "victim");
    assert_eq!(v["STOCKADE_LAYER"], "namespace");
    assert!(v["MESSAGE"].contains("/etc/shadow"), "{v:?}");
    let inner: Value = serde_json::from_str(&v["STOCKADE_EVENT"]).unwrap();
    assert_eq!(&inner, violation);

    // An export file that cannot be written (its directory is a file): one line, and the
    // plugins are served.
    let blocker = d.dir.join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    std::fs::write(
        &config,
        format!("[export]\nfile = \"{}/events.jsonl\"\n", blocker.display()),
    )
    .unwrap();
    let phase = std::time::Instant::now();
    d.spawn(&["--config", config.to_str().unwrap()]);
    d.load(&d.package("echo", "echo", "1.0.0", "echo", ""));
    assert_eq!(
        d.call("echo", "echo", json!({ "text": "served" })).unwrap()["text"],
        "served"
    );
    let log = d.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("export: ")).collect();
    // Logged once a minute at most (a slow emulated phase may see a second one).
    let minutes = phase.elapsed().as_secs() / 60;
    assert!(
        !lines.is_empty() && lines.len() as u64 <= 1 + minutes,
        "{} lines in {minutes} min: {log}",
        lines.len()
    );
    assert!(lines[0].contains("not-a-dir/events.jsonl"), "{}", lines[0]);
    assert!(lines[0].contains("hint:"), "{}", lines[0]);
    assert!(d.stop().success());
}

/// `stockade report` from the audit log: a plugin that violated (counted from its run's report,
/// with the auto-unload and its kill latency), one restarted after a crash, and — the control —
/// one that only answered, with nothing against it.
#[test]
fn the_report_says_what_each_plugin_tried() {
    if !harness::privileged("the_report_says_what_each_plugin_tried") {
        return;
    }
    let mut d = Daemon::start("report", &[]);
    d.load(&d.package("calm", "calm", "1.0.0", "echo", ""));
    d.call("calm", "echo", json!({ "text": "hi" })).unwrap();
    d.load(&d.package("victim", "victim", "1.0.0", "forbidden", "restart = \"no\""));
    let _ = d.call("victim", "go", json!({}));
    d.wait_event(20, "the victim quarantined", |e| {
        lifecycle_event(e, "victim", "quarantined").is_some()
    });
    d.load(&d.package(
        "crashy",
        "crashy",
        "1.0.0",
        "echo",
        "restart = \"always\"\nbackoff_min = \"50ms\"\nbackoff_max = \"100ms\"",
    ));
    let pid = d.status("crashy")["pid"].as_i64().unwrap();
    // SAFETY: kill with a pid the daemon reported for its plugin's first process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let until = Instant::now() + harness::patience(20);
    while !(d.status("crashy")["state"] == "active" && d.status("crashy")["pid"] != pid) {
        assert!(Instant::now() < until, "{}", d.status("crashy"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.stop().success());
    let database = d.database();
    let out = Command::new(harness::stockade())
        .args(["report", "--json", "--database", &database])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let plugin = |id: &str| -> Value {
        report["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["plugin"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id} in {report:#}"))
    };
    let victim = plugin("victim");
    assert_eq!(victim["violations"], 1, "{victim}");
    assert_eq!(victim["by_layer"]["namespace"], 1, "{victim}");
    assert_eq!(victim["auto_unloads"], 1, "{victim}");
    assert!(
        ["quarantined", "stopped"].contains(&victim["state"].as_str().unwrap()),
        "{victim}"
    );
    let crashy = plugin("crashy");
    assert_eq!(crashy["violations"], 0, "{crashy}");
    assert_eq!(crashy["restarts"], 1, "{crashy}");
    let calm = plugin("calm");
    assert_eq!(
        (calm["violations"].as_u64(), calm["auto_unloads"].as_u64()),
        (Some(0), Some(0))
    );
    // Most violations first.
    assert_eq!(report["plugins"][0]["plugin"], "victim");
    let object = &report["objects"][0];
    assert_eq!(
        (
            object["plugin"].as_str(),
            object["layer"].as_str(),
            object["object"].as_str()
        ),
        (Some("victim"), Some("namespace"), Some("/etc/shadow"))
    );
    let unload = &report["auto_unloads"][0];
    assert_eq!(unload["plugin"], "victim");
    assert!(
        unload["kill_latency_ms"].as_f64().is_some() || unload["killed_in_kernel"] == true,
        "{unload}"
    );
    // The terminal's table says the same.
    let out = Command::new(harness::stockade())
        .args(["report", "--plugin", "victim", "--database", &database])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 plugin(s)"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("victim ") && l.contains("namespace: 1"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.split_whitespace().nth(1) == Some("1"), "{row}");
    assert!(text.contains("/etc/shadow"), "{text}");
    assert!(text.contains("Auto-unloads:"), "{text}");
}

/// `stockade report --html FILE`: one self-contained page, rendered by a real headless chromium
/// (its DOM after the page's own script ran: the checks the page makes of its tables and chart
/// against its data say ok), with a screenshot kept in target/test-artifacts/.
#[test]
fn the_html_report_renders_in_headless_chromium() {
    if !harness::privileged("the_html_report_renders_in_headless_chromium") {
        return;
    }
    let Some(browser) = ["/usr/bin/chromium-headless-shell", "/usr/bin/chromium"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
    else {
        println!("skipped: the_html_report_renders_in_headless_chromium: no headless chromium here (cargo xtask setup installs chromium-headless-shell)");
        return;
    };
    let mut d = Daemon::start("report-html", &[]);
    d.load(&d.package("victim", "victim", "1.0.0", "forbidden", "restart = \"no\""));
    let _ = d.call("victim", "go", json!({}));
    d.wait_event(20, "the victim quarantined", |e| {
        lifecycle_event(e, "victim", "quarantined").is_some()
    });
    d.load(&d.package("calm", "calm", "1.0.0", "echo", ""));
    assert!(d.stop().success());
    let page = d.dir.join("report.html");
    let out = Command::new(harness::stockade())
        .args(["report", "--database", &d.database(), "--html"])
        .arg(&page)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("/etc/shadow"));
    // Nothing outside the page is fetched: no src= or href= to anywhere.
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    let chromium = |args: &[&str]| {
        Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ])
            .args(args)
            .arg(format!("file://{}", page.display()))
            .env("HOME", &d.dir)
            .output()
            .expect("run chromium")
    };
    let dom = chromium(&["--dump-dom", "--virtual-time-budget=5000"]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom_text.contains("data-checks=\"ok\""),
        "the page's own checks: {}\n{}",
        dom_text
            .lines()
            .find(|l| l.contains("id=\"checks\""))
            .unwrap_or("(no checks line)"),
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(
        dom_text.contains("page checks: ok (1 violations, 2 plugins)"),
        "{dom_text}"
    );
    // target/test-artifacts (writable in the VM guests too, where the checkout is read-only).
    let artifacts = harness::bin_dir()
        .ancestors()
        .nth(2)
        .expect("target/<triple>/<profile>")
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1200,1400",
    ]);
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}): {out:?}"));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}
