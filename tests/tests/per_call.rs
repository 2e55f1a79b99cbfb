//! Per-call plugins (`mode = "per-call"`, the UPM seeds' one-shot contract) through a real
//! daemon: tests/fixtures/upm_plugin.py is a plugin written for the seeds' entrypoint, unchanged;
//! each call runs it once in a fresh sandbox taken from the daemon's pool of armed ones.

mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::daemon::{process_alive, Daemon};
use serde_json::{json, Value};

/// The methods of the fixture's PipPlugin the manifest lets through, with their schemas (of the
/// normalized `{"args", "kwargs"}`) and timeouts.
const METHODS: &str = r#"
[methods.install]
params = { type = "object", properties = { args = { type = "array", maxItems = 1, items = { type = "string", pattern = "^[a-z][a-z0-9-]*$" } }, kwargs = { type = "object", properties = { version = { type = "string" } }, additionalProperties = false } } }
timeout = "20s"
audit_params = true

[methods.uninstall]
params = { type = "object" }
timeout = "20s"

[methods.list_installed]
params = { type = "object" }
result = { type = "array", items = { type = "string" } }
timeout = "20s"

[methods.doctor]
params = { type = "object" }
timeout = "20s"

[methods.whoami]
params = { type = "object" }
timeout = "20s"

[methods.probe]
params = { type = "object" }
timeout = "120s"

[methods.chatter]
params = { type = "object" }
timeout = "20s"

[methods.sleep]
params = { type = "object" }
timeout = "SLEEP_TIMEOUT"

[methods.fail]
params = { type = "object" }
timeout = "20s"
"#;

/// A signed per-call package of the fixture; `extra` is added to its manifest.
fn package(d: &Daemon, id: &str, version: &str, extra: &str) -> PathBuf {
    let dir = d.dir.join("packages").join(format!("{id}-{version}"));
    std::fs::create_dir_all(&dir).expect("package dir");
    harness::set_mode(&d.dir.join("packages"), 0o755);
    harness::set_mode(&dir, 0o755);
    let script = dir.join("plugin.py");
    std::fs::copy(
        harness::repo_root().join("tests/fixtures/upm_plugin.py"),
        &script,
    )
    .expect("copy the plugin");
    harness::set_mode(&script, 0o755);
    let manifest = format!(
        r#"id = "{id}"
name = "UPM pip plugin"
version = "{version}"
entry = ["plugin.py"]
policy = {{ profile = "untrusted-default", filesystem = {{ write = ["$STATE_DIR"] }} }}
mode = "per-call"
class = "PipPlugin"
init_args = {{ project_root = "/work", cache_dir = "/tmp/cache", policy = {{ blocked_packages = ["evil"] }} }}
{extra}
{}"#,
        // Under the VM runner's emulation a Python start alone takes about a second.
        METHODS.replace(
            "SLEEP_TIMEOUT",
            if harness::emulated_vm() { "10s" } else { "1s" }
        )
    );
    std::fs::write(dir.join("plugin.toml"), manifest).expect("write plugin.toml");
    d.sign(&dir);
    dir
}

/// A background request's answer line, as `Daemon::request` gives it.
fn parse_answer(line: String) -> Result<Value, Value> {
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    match v.get("result") {
        Some(r) => Ok(r.clone()),
        None => Err(v["error"].clone()),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string()
}

/// Waits until the plugin's pool holds `n` armed sandboxes.
fn wait_warm(d: &Daemon, id: &str, n: u64) {
    let until = Instant::now() + harness::patience(10);
    loop {
        let status = d.status(id);
        if status["per_call"]["warm"] == n && status["per_call"]["arming"] == 0 {
            return;
        }
        assert!(Instant::now() < until, "pool never reached {n}: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_per_call_plugin_answers_the_upm_contract() {
    let test = "a_per_call_plugin_answers_the_upm_contract";
    if !harness::privileged(test) {
        return;
    }
    let mut d = Daemon::start("per-call-contract", &[]);
    let pkg = package(&d, "upm-pip", "1.2.0", "");
    let out = d.cli(&["plugin", "load", pkg.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let status = d.status("upm-pip");
    assert_eq!(status["state"], "active", "{status}");
    assert_eq!(status["mode"], "per-call");
    assert_eq!(status["per_call"]["class"], "PipPlugin");
    assert_eq!(
        status["pid"],
        Value::Null,
        "a per-call plugin has no process"
    );
    // One sandbox armed and waiting: its cgroup exists before any call.
    wait_warm(&d, "upm-pip", 1);
    assert_eq!(d.cgroups().len(), 1, "{:?}", d.cgroups());

    // The seed's call, through the CLI: positional and keyword arguments, the seed's output.
    let out = d.cli(&[
        "call",
        "upm-pip",
        "install",
        r#"{"args": ["requests"], "kwargs": {"version": ">=2"}}"#,
    ]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let answer: Value = serde_json::from_slice(&out.stdout).expect("answer JSON");
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["status"], "success");
    assert_eq!(
        answer["data"]["result"],
        json!({ "installed": "requests", "version": ">=2" })
    );
    assert_eq!(answer["data"]["output"]["stdout"], "installing requests\n");
    assert_eq!(answer["data"]["output"]["stderr"], "resolving >=2\n");
    assert_eq!(answer["data"]["plugin_version"], "1.2.0");
    assert_eq!(answer["hostname"], host_name());
    let timestamp = answer["timestamp"].as_str().expect("timestamp");
    assert!(
        timestamp.len() == 27 && timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T',
        "{timestamp}"
    );
    let request_id = answer["request_id"].as_str().expect("request_id");
    assert_eq!(request_id.len(), 36);
    assert_eq!(request_id.matches('-').count(), 4);
    let first_pid = answer["pid"].as_i64().expect("pid");
    assert!(!process_alive(first_pid), "the call's sandbox outlived it");
    // The call's record carries the same request id.
    let record = d.wait_event(5, "call record", |e| {
        e["type"] == "call" && e["request_id"] == request_id
    });
    assert_eq!(record["outcome"], "ok");

    // A fresh sandbox for each call; the state directory is what they share.
    let answer = d
        .call("upm-pip", "list_installed", json!({}))
        .expect("list_installed");
    assert_eq!(answer["data"]["result"], json!(["requests"]));
    assert_ne!(answer["pid"], first_pid);
    // Params other than {args, kwargs}: an array is the positional arguments, an object the
    // keyword ones.
    let answer = d
        .call("upm-pip", "uninstall", json!(["requests"]))
        .expect("uninstall");
    assert_eq!(
        answer["data"]["result"],
        json!({ "uninstalled": "requests" })
    );
    let answer = d.call("upm-pip", "doctor", json!({})).expect("doctor");
    assert_eq!(
        answer["data"]["result"],
        json!({ "ok": true, "project_root": "/work", "cache_dir": "/tmp/cache" })
    );
    // Inside: the plugin's uid, its own pid namespace (it is pid 1) and hostname, the payload as
    // its one argument.
    let who = d.call("upm-pip", "whoami", json!({})).expect("whoami");
    assert_eq!(
        who["data"]["result"],
        json!({ "pid": 1, "uid": 1000, "argc": 2, "hostname": "upm-pip" })
    );

    // The plugin's failure: exit 1 with its error JSON, the seed's structure with success false.
    let out = d.cli(&["call", "upm-pip", "install", r#"{"args": ["evil"]}"#]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let error: Value = serde_json::from_slice(&out.stderr).expect("error JSON");
    assert_eq!(error["code"], -32003, "{error}");
    assert_eq!(
        error["message"],
        "`install` failed: evil is blocked by policy"
    );
    let seed = &error["data"];
    assert_eq!(seed["success"], false);
    assert_eq!(seed["status"], "error");
    assert_eq!(seed["data"]["error"], "evil is blocked by policy");
    assert_eq!(seed["data"]["details"]["type"], "PluginOperationError");
    assert!(
        seed["data"]["details"]["traceback"]
            .as_str()
            .is_some_and(|t| t.contains("raise PluginOperationError")),
        "{seed}"
    );
    assert_eq!(seed["data"]["exit_status"], 1);
    assert_eq!(seed["data"]["plugin_version"], "1.2.0");
    assert_eq!(seed["request_id"].as_str().map(str::len), Some(36));

    // Refused by the host before any sandbox is used: an undeclared method, params against the
    // schema (a package name with a shell metacharacter), and the warm sandbox is still there.
    wait_warm(&d, "upm-pip", 1);
    let before = d.status("upm-pip")["per_call"].clone();
    let error = d
        .call("upm-pip", "setup", json!({}))
        .expect_err("undeclared");
    assert_eq!(error["code"], -32601);
    let error = d
        .call("upm-pip", "install", json!({ "args": ["x; rm -rf /"] }))
        .expect_err("schema");
    assert_eq!(error["code"], -32602, "{error}");
    assert_eq!(error["data"]["path"], "/args/0");
    let error = d
        .call(
            "upm-pip",
            "install",
            json!({ "args": ["ok"], "kwargs": { "index": "x" } }),
        )
        .expect_err("schema");
    assert_eq!(error["code"], -32602, "{error}");
    assert_eq!(d.status("upm-pip")["per_call"], before);
    // The result schema: list_installed must answer an array of strings (it does, above).

    // Concurrent calls, each in its own sandbox.
    let calls: Vec<_> = (0..3)
        .map(|i| {
            d.request_in_background(
                "call",
                json!({ "plugin": "upm-pip", "method": "install", "params": [format!("pkg{i}")] }),
            )
        })
        .collect();
    let mut pids = Vec::new();
    for c in calls {
        let answer = parse_answer(c.join().expect("thread")).expect("concurrent call");
        pids.push(answer["pid"].as_i64().unwrap());
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 3, "{pids:?}");
    let answer = d
        .call("upm-pip", "list_installed", json!({}))
        .expect("list");
    assert_eq!(answer["data"]["result"], json!(["pkg0", "pkg1", "pkg2"]));

    // Unloaded: the armed sandbox goes with it; nothing is left.
    let out = d.cli(&["plugin", "unload", "upm-pip"]);
    assert!(out.status.success(), "{out:?}");
    assert!(d.cgroups().is_empty(), "{:?}", d.cgroups());
    assert!(d.stop().success());
}

#[test]
fn per_call_sandboxes_are_confined_and_bounded() {
    let test = "per_call_sandboxes_are_confined_and_bounded";
    if !harness::privileged(test) {
        return;
    }
    let mut d = Daemon::start("per-call-bounds", &[]);
    let pkg = package(
        &d,
        "upm-bounded",
        "1.0.0",
        "[per_call]\nwarm = 2\noutput_bytes = 65536\n",
    );
    d.load(&pkg);
    wait_warm(&d, "upm-bounded", 2);
    assert_eq!(d.cgroups().len(), 2, "{:?}", d.cgroups());
    // A waiting sandbox killed from outside (its own limits start at its exec): the pool no
    // longer counts it, its cgroup goes, and the next call refills the pool (below).
    let victim = d
        .cgroup_paths()
        .into_iter()
        .next()
        .expect("an armed sandbox's cgroup");
    let procs = std::fs::read_to_string(victim.join("cgroup.procs")).unwrap();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: a process of the armed sandbox this test's daemon started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    wait_warm(&d, "upm-bounded", 1);
    let until = Instant::now() + harness::patience(10);
    while d.cgroups().len() != 1 {
        assert!(Instant::now() < until, "{:?}", d.cgroups());
        std::thread::sleep(Duration::from_millis(20));
    }
    let probe = |action: &str, path: &str| -> Value {
        d.call(
            "upm-bounded",
            "probe",
            json!({ "action": action, "path": path }),
        )
        .unwrap_or_else(|e| panic!("probe {action} {path}: {e}"))["data"]["result"]
            .clone()
    };
    // The control: the plugin's own state directory is writable.
    let state = d.dir.join("state/plugins/upm-bounded/probe.txt");
    assert_eq!(probe("write", state.to_str().unwrap()), "ok");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "x");

    // Output past `output_bytes` is dropped and counted; the result still comes (stdout).
    let answer = d
        .call("upm-bounded", "chatter", json!({ "nbytes": 1 << 20 }))
        .expect("chatter");
    assert_eq!(answer["data"]["result"], json!({ "wrote": 1 << 20 }));
    assert_eq!(
        answer["data"]["output"]["stderr"].as_str().map(str::len),
        Some(65536)
    );
    assert_eq!(
        answer["data"]["output"]["dropped_bytes"]["stderr"],
        (1 << 20) - 65536
    );

    // A call past its method's timeout: killed, its sandbox gone, the pool filled again.
    let error = d
        .call("upm-bounded", "sleep", json!({ "seconds": 30 }))
        .expect_err("timeout");
    assert_eq!(error["code"], -32000, "{error}");
    wait_warm(&d, "upm-bounded", 2);
    assert_eq!(d.cgroups().len(), 2, "{:?}", d.cgroups());

    // A payload past execve's bound for one argument: refused with a hint, nothing started.
    let big = "a".repeat(200 * 1024);
    let error = d
        .call("upm-bounded", "doctor", json!({ "kwargs": { "x": big } }))
        .expect_err("too large");
    assert_eq!(error["code"], -32602, "{error}");
    assert!(error["data"]["hint"].as_str().is_some(), "{error}");
    assert_eq!(d.status("upm-bounded")["violations"], 0);

    // The host's credentials are not there to read (no /root in the sandbox).
    assert_eq!(probe("read", "/root/.pypirc"), "FileNotFoundError");
    // A file of the host the sandbox hides in a directory it shows: a violation; with the
    // profile's threshold of one the sandbox is killed, the call fails, and the plugin is
    // quarantined with its pool retired.
    let error = d
        .call(
            "upm-bounded",
            "probe",
            json!({ "action": "read", "path": "/etc/shadow" }),
        )
        .expect_err("killed");
    // The seeds' structure still: the plugin's failure, why it ended, no exit status.
    assert_eq!(error["code"], -32003, "{error}");
    assert_eq!(
        error["message"],
        "`probe` failed: auto-unloaded for violations (namespace /etc/shadow)"
    );
    assert_eq!(error["data"]["success"], false);
    assert_eq!(error["data"]["data"]["exit_status"], Value::Null);
    let violation = d.wait_event(5, "the violation", |e| {
        e["type"] == "violation" && e["plugin"] == "upm-bounded"
    });
    assert_eq!(violation["layer"], "namespace", "{violation}");
    assert_eq!(violation["object"], "/etc/shadow", "{violation}");
    let until = Instant::now() + harness::patience(10);
    while d.status("upm-bounded")["state"] != "quarantined" || !d.cgroups().is_empty() {
        assert!(
            Instant::now() < until,
            "{} {:?}",
            d.status("upm-bounded"),
            d.cgroups()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let error = d
        .call("upm-bounded", "doctor", json!({}))
        .expect_err("quarantined");
    assert_eq!(error["code"], -32001, "{error}");

    let out = d.cli(&["plugin", "unload", "upm-bounded"]);
    assert!(out.status.success(), "{out:?}");
    assert!(d.cgroups().is_empty(), "{:?}", d.cgroups());
    assert!(d.stop().success());
}

#[test]
fn a_per_call_plugin_upgrades_without_losing_calls() {
    let test = "a_per_call_plugin_upgrades_without_losing_calls";
    if !harness::privileged(test) {
        return;
    }
    let mut d = Daemon::start("per-call-upgrade", &[]);
    let v1 = package(&d, "upm-up", "1.0.0", "");
    d.load(&v1);
    // A call under way during the upgrade finishes on the old version.
    let slow = d.request_in_background(
        "call",
        json!({ "plugin": "upm-up", "method": "sleep", "params": { "seconds": 0.6 } }),
    );
    let v2 = package(&d, "upm-up", "2.0.0", "");
    let out = d.cli(&["plugin", "upgrade", "upm-up", v2.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let answer = parse_answer(slow.join().expect("thread")).expect("the call under way");
    assert_eq!(answer["success"], true);
    let answer = d.call("upm-up", "doctor", json!({})).expect("doctor");
    assert_eq!(answer["data"]["plugin_version"], "2.0.0");
    wait_warm(&d, "upm-up", 1);
    assert_eq!(d.cgroups().len(), 1, "{:?}", d.cgroups());
    // A package that changes the mode is refused; the plugin keeps serving.
    let service = d.package("svc", "upm-up", "3.0.0", "echo", "");
    let out = d.cli(&["plugin", "upgrade", "upm-up", service.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("changes its `mode`"),
        "{out:?}"
    );
    assert_eq!(d.status("upm-up")["version"], "2.0.0");
    let out = d.cli(&["plugin", "unload", "upm-up"]);
    assert!(out.status.success(), "{out:?}");
    assert!(d.cgroups().is_empty(), "{:?}", d.cgroups());
    assert!(d.stop().success());
}

/// Gives `package`'s plugin the untrusted-default profile with a threshold of `n` (its own
/// policy.toml) and signs it again.
fn with_threshold(d: &Daemon, pkg: &Path, n: u32) {
    let profile = std::fs::read_to_string(
        harness::repo_root().join("policies/profiles/untrusted-default.toml"),
    )
    .unwrap();
    assert!(profile.contains("threshold = 1 "), "{profile}");
    std::fs::write(
        pkg.join("policy.toml"),
        profile.replace("threshold = 1 ", &format!("threshold = {n} ")),
    )
    .unwrap();
    let manifest = std::fs::read_to_string(pkg.join("plugin.toml")).unwrap();
    let inline =
        "policy = { profile = \"untrusted-default\", filesystem = { write = [\"$STATE_DIR\"] } }";
    assert!(manifest.contains(inline));
    std::fs::write(
        pkg.join("plugin.toml"),
        manifest.replace(inline, "policy = \"policy.toml\""),
    )
    .unwrap();
    d.sign(pkg);
}

/// The policy's threshold counts over the plugin's calls, not per sandbox: with a threshold of
/// two, one violation in each of two calls quarantines the plugin (each sandbox alone saw one).
#[test]
fn a_per_call_plugins_violations_count_across_its_calls() {
    let test = "a_per_call_plugins_violations_count_across_its_calls";
    if !harness::privileged(test) {
        return;
    }
    let d = Daemon::start("per-call-threshold", &[]);
    let pkg = package(&d, "upm-twice", "1.0.0", "");
    with_threshold(&d, &pkg, 2);
    d.load(&pkg);
    let shadow = json!({ "action": "read", "path": "/etc/shadow" });
    // One violation: denied, the call answers, the plugin stays.
    let answer = d.call("upm-twice", "probe", shadow.clone()).expect("first");
    assert!(
        answer["data"]["result"]
            .as_str()
            .is_some_and(|r| r.ends_with("Error")),
        "{answer}"
    );
    assert_eq!(d.status("upm-twice")["state"], "active");
    assert_eq!(d.status("upm-twice")["per_call"]["recent_violations"], 1);
    // The second, in a fresh sandbox: the plugin's second within the window. Its answer races
    // the quarantine's kill (either may come first); the quarantine's reason says what crossed.
    let _ = d.call("upm-twice", "probe", shadow);
    let quarantined = d.wait_event(10, "the quarantine", |e| {
        e["type"] == "lifecycle" && e["plugin"] == "upm-twice" && e["to"] == "quarantined"
    });
    assert!(
        quarantined["reason"]
            .as_str()
            .is_some_and(|r| r.contains("2 within 60 s over its calls")),
        "{quarantined}"
    );
    let until = Instant::now() + harness::patience(10);
    while d.status("upm-twice")["state"] != "quarantined" || !d.cgroups().is_empty() {
        assert!(
            Instant::now() < until,
            "{} {:?}",
            d.status("upm-twice"),
            d.cgroups()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let error = d
        .call("upm-twice", "doctor", json!({}))
        .expect_err("quarantined");
    assert_eq!(error["code"], -32001, "{error}");
}

/// Calls running side by side count toward one threshold as their violations happen: with a
/// threshold of three, three calls that each make one violation and then wait are all killed at
/// the third, the plugin quarantined — not three answers once they finish (each sandbox alone
/// stayed under the threshold).
#[test]
fn concurrent_per_call_violations_cross_the_threshold_as_they_happen() {
    let test = "concurrent_per_call_violations_cross_the_threshold_as_they_happen";
    if !harness::privileged(test) {
        return;
    }
    let d = Daemon::start("per-call-live", &[]);
    let pkg = package(&d, "upm-three", "1.0.0", "[per_call]\nwarm = 3\n");
    with_threshold(&d, &pkg, 3);
    d.load(&pkg);
    wait_warm(&d, "upm-three", 3);
    // Each waits 100 s after its violation (its method's timeout is 120 s): far longer than the
    // three take to start, even emulated. Killed, they take no such time.
    let calls: Vec<_> = (0..3)
        .map(|_| {
            d.request_in_background(
                "call",
                json!({ "plugin": "upm-three", "method": "probe",
                        "params": { "kwargs": { "action": "read", "path": "/etc/shadow", "then_sleep": 100 } } }),
            )
        })
        .collect();
    for c in calls {
        let error = parse_answer(c.join().expect("thread")).expect_err("killed");
        assert_eq!(error["code"], -32003, "{error}");
        assert_eq!(error["data"]["success"], false, "{error}");
    }
    let status = d.status("upm-three");
    assert_eq!(status["state"], "quarantined", "{status}");
    let quarantined = d.wait_event(10, "the quarantine", |e| {
        e["type"] == "lifecycle" && e["plugin"] == "upm-three" && e["to"] == "quarantined"
    });
    assert!(
        quarantined["reason"]
            .as_str()
            .is_some_and(|r| r
                .contains("3 within 60 s over its calls; the last: namespace read /etc/shadow")),
        "{quarantined}"
    );
    let until = Instant::now() + harness::patience(10);
    while !d.cgroups().is_empty() {
        assert!(Instant::now() < until, "{:?}", d.cgroups());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon's `[per_call] max_armed` bounds the sandboxes waiting over every per-call plugin
/// (each holds a monitor slot and a cgroup): two plugins that each want two get two between
/// them; the plugin left without one still answers (each call arms its own); the other's unload
/// lets it refill.
#[test]
fn armed_sandboxes_are_bounded_across_plugins() {
    let test = "armed_sandboxes_are_bounded_across_plugins";
    if !harness::privileged(test) {
        return;
    }
    let mut d = Daemon::prepared("per-call-budget");
    let config = d.dir.join("daemon.toml");
    std::fs::write(&config, "[per_call]\nmax_armed = 2\n").unwrap();
    d.spawn(&["--config", config.to_str().unwrap()]);
    let first = package(&d, "upm-first", "1.0.0", "[per_call]\nwarm = 2\n");
    d.load(&first);
    wait_warm(&d, "upm-first", 2);
    // The second proves its sandbox at the load (one armed, then retired: no budget left).
    let second = package(&d, "upm-second", "1.0.0", "[per_call]\nwarm = 2\n");
    d.load(&second);
    wait_warm(&d, "upm-second", 0);
    assert_eq!(d.cgroups().len(), 2, "{:?}", d.cgroups());
    let answer = d.call("upm-second", "doctor", json!({})).unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    wait_warm(&d, "upm-second", 0);
    // A call of the first gives its sandbox's share back, and its own refill takes it again.
    let answer = d.call("upm-first", "doctor", json!({})).unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    wait_warm(&d, "upm-first", 2);
    wait_warm(&d, "upm-second", 0);
    let out = d.cli(&["plugin", "unload", "upm-first"]);
    assert!(out.status.success(), "{out:?}");
    d.call("upm-second", "doctor", json!({})).unwrap();
    wait_warm(&d, "upm-second", 2);
    assert_eq!(d.cgroups().len(), 2, "{:?}", d.cgroups());
}

/// A child process killed when the test ends (the local index's HTTP server).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A local package index for the upm examples (tests/fixtures/make_index.py: pip's simple index,
/// an npm registry and a cargo sparse registry), served on loopback by `python3 -m http.server`,
/// a listener the malicious packages send their loot to, a "host user's" home with credentials
/// in it for them to look for, and the example's package pointed at the index's port.
struct Upm {
    /// The exfiltration's target: it must never see a connection.
    loot: std::net::TcpListener,
    loot_port: u16,
    /// Holds `home/`, the "host user's" home (`Upm::home`).
    host: harness::OwnDir,
    _server: Child,
}

/// The credentials the malicious packages look for (tests/fixtures/make_index.py).
const CREDENTIALS: [&str; 3] = [".pypirc", ".npmrc", ".cargo/credentials.toml"];

/// A home on the host holding credentials (any user may read them: only the sandbox stands in
/// the way), outside /tmp (the sandbox's /tmp is its own): `home/` of the directory returned,
/// which goes when the test ends.
fn host_home(example: &str) -> harness::OwnDir {
    let host = harness::OwnDir::create(PathBuf::from(format!(
        "/run/stockade-tests-{}-{example}",
        std::process::id()
    )));
    let home = host.join("home");
    std::fs::create_dir_all(home.join(".cargo")).unwrap();
    for dir in [&home, &home.join(".cargo")] {
        harness::set_mode(dir, 0o755);
    }
    for c in CREDENTIALS {
        std::fs::write(home.join(c), format!("secret token of {c}\n")).unwrap();
        harness::set_mode(&home.join(c), 0o644);
    }
    host
}

const PYTHON: &str = "/usr/bin/python3";

fn upm(d: &Daemon, example: &str, shipped_port: &str) -> Upm {
    upm_with(d, example, shipped_port, &[])
}

/// `upm`, with more of the example's manifest and policy replaced (`(shipped, here)`).
fn upm_with(d: &Daemon, example: &str, shipped_port: &str, more: &[(&str, &str)]) -> Upm {
    let loot = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    loot.set_nonblocking(true).unwrap();
    let loot_port = loot.local_addr().unwrap().port();
    // The server first, on a port of its choosing (no port picked and released for it to take),
    // then the index it serves: it reads the files at each request.
    let index = d.dir.join("index");
    std::fs::create_dir_all(&index).unwrap();
    let mut server = std::process::Command::new(PYTHON)
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(&index)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let server = Child(server);
    // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
    let port: u16 = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the index's server said {line:?}"));
    let host = host_home(example);
    let out = std::process::Command::new(PYTHON)
        .arg(harness::repo_root().join("tests/fixtures/make_index.py"))
        .arg(&index)
        .arg(loot_port.to_string())
        .arg(port.to_string())
        .arg(host.join("home"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The example as it is, pointed at this index's port instead of the one it ships with — and
    // killed at its fifth violation, not its first, so that every attempt of a malicious package
    // is seen refused: three credentials, a file outside, the connection out.
    let pkg = d.dir.join("packages").join(example);
    std::fs::create_dir_all(&pkg).unwrap();
    harness::set_mode(&d.dir.join("packages"), 0o755);
    harness::set_mode(&pkg, 0o755);
    let source = harness::repo_root().join("examples/plugins").join(example);
    for file in ["plugin.py", "plugin.toml", "policy.toml"] {
        let text = std::fs::read_to_string(source.join(file)).unwrap();
        let text = if file == "plugin.py" {
            text
        } else {
            assert!(text.contains(shipped_port), "{file}");
            let mut text = text.replace(shipped_port, &port.to_string());
            if file == "policy.toml" {
                assert!(text.contains("threshold = 1\n"));
                text = text.replace("threshold = 1\n", "threshold = 5\n");
            }
            for (shipped, here) in more {
                assert!(text.contains(shipped), "{file}: {shipped}");
                text = text.replace(shipped, here);
            }
            text
        };
        std::fs::write(pkg.join(file), text).unwrap();
        harness::set_mode(
            &pkg.join(file),
            if file == "plugin.py" { 0o755 } else { 0o644 },
        );
    }
    d.sign(&pkg);
    d.load(&pkg);
    Upm {
        loot,
        loot_port,
        host,
        _server: server,
    }
}

impl Upm {
    /// The malicious package's install: its reads of the host's credentials, its write outside
    /// the state directory and its connection out are each refused and reported as the plugin's
    /// violation, the plugin quarantined at the fifth; nothing reached the listener or the host.
    fn exfiltration_is_stopped(&self, d: &Daemon, id: &str) {
        let error = d
            .call(id, "install", json!({ "args": ["evil-upm"] }))
            .expect_err("the exfiltration");
        assert_eq!(error["code"], -32003, "{error}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains("auto-unloaded for violations")),
            "{error}"
        );
        let home = self.host.join("home").to_str().unwrap().to_string();
        let mut objects: Vec<String> = CREDENTIALS.iter().map(|c| format!("{home}/{c}")).collect();
        objects.push(format!("{home}/owned"));
        objects.push(format!("127.0.0.1:{}", self.loot_port));
        for object in &objects {
            d.wait_event(10, &format!("a violation on {object}"), |e| {
                e["type"] == "violation"
                    && e["plugin"] == id
                    && e["object"].as_str().is_some_and(|o| o.contains(object))
            });
        }
        assert!(!self.host.join("home/owned").exists());
        let until = Instant::now() + harness::patience(10);
        while d.status(id)["state"] != "quarantined" || !d.cgroups().is_empty() {
            assert!(Instant::now() < until, "{}", d.status(id));
            std::thread::sleep(Duration::from_millis(20));
        }
        match self.loot.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("the listener was reached: {other:?}"),
        }
    }
}

fn has(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The seeds' pip plugin (examples/plugins/upm-pip) driving the real pip in its sandbox, against
/// a local index on loopback built by the test from packages it makes (no outside network):
/// install, list and uninstall work, into the plugin's state directory; the policy's one network
/// destination is that index. Then a package whose setup.py reads the host's credentials, writes
/// outside the state directory and sends its loot to another local port: pip runs it, each is
/// refused and reported as a violation of the plugin, which is quarantined, and nothing reaches
/// the listener (`Upm::exfiltration_is_stopped`).
#[test]
fn the_upm_pip_plugin_installs_from_its_index_and_nothing_else() {
    let test = "the_upm_pip_plugin_installs_from_its_index_and_nothing_else";
    // The example's policy names TCP ports: in enforce mode it does not start without Landlock's
    // TCP rules (ABI 4, Linux 6.7), which is the fail-closed rule, not this test's subject.
    if !harness::privileged(test) || !harness::tcp_rules_enforceable(test) {
        return;
    }
    // Where the sandbox sees them: the system's pip and setuptools (the malicious setup.py
    // imports it), below /usr/lib, not /usr/local or a user's site.
    let system_pip = "import setuptools, pip, sys; \
                      sys.exit(0 if pip.__file__.startswith('/usr/lib/') \
                      and setuptools.__file__.startswith('/usr/lib/') else 1)";
    if !has(PYTHON, &["-I", "-c", system_pip]) {
        println!("skipped: {test}: no pip and setuptools of /usr/bin/python3 below /usr/lib here");
        return;
    }
    let d = Daemon::start("upm-pip", &[]);
    let upm = upm(&d, "upm-pip", "3141");
    let install = d
        .call("upm-pip", "install", json!({ "args": ["hello-upm"] }))
        .unwrap_or_else(|e| panic!("install: {e}\n{}", d.log()));
    assert_eq!(
        install["data"]["result"],
        json!({ "installed": "hello-upm", "version": "1.0.0" })
    );
    let stdout = install["data"]["output"]["stdout"].as_str().unwrap();
    assert!(
        stdout.contains("Successfully installed hello-upm-1.0.0"),
        "{stdout}"
    );
    let site = d.dir.join("state/plugins/upm-pip/site");
    assert!(site.join("hello_upm/__init__.py").is_file());
    let list = d.call("upm-pip", "list_installed", json!({})).unwrap();
    assert_eq!(
        list["data"]["result"],
        json!([{ "name": "hello-upm", "version": "1.0.0" }])
    );
    let gone = d
        .call("upm-pip", "uninstall", json!(["hello-upm"]))
        .unwrap();
    assert_eq!(
        gone["data"]["result"],
        json!({ "uninstalled": "hello-upm" })
    );
    assert!(!site.join("hello_upm/__init__.py").exists());
    let list = d.call("upm-pip", "list_installed", json!({})).unwrap();
    assert_eq!(list["data"]["result"], json!([]));
    upm.exfiltration_is_stopped(&d, "upm-pip");
}

/// The seeds' npm plugin (examples/plugins/upm-npm) driving the real npm (and node) in its
/// sandbox against a local registry: install (a scoped package too), list and uninstall into its
/// state directory; then a package whose `postinstall` script does what the pip test's setup.py
/// does, each act refused and reported, the plugin quarantined, nothing arriving.
#[test]
fn the_upm_npm_plugin_installs_from_its_registry_and_nothing_else() {
    let test = "the_upm_npm_plugin_installs_from_its_registry_and_nothing_else";
    // The example's policy names TCP ports: in enforce mode it does not start without Landlock's
    // TCP rules (ABI 4, Linux 6.7), which is the fail-closed rule, not this test's subject.
    if !harness::privileged(test) || !harness::tcp_rules_enforceable(test) {
        return;
    }
    // npm where the example's policy grants it (NodeSource's and npm's own installs put it in
    // /usr/lib/node_modules; Debian's npm package in /usr/share/nodejs, which it does not grant).
    let npm = std::fs::canonicalize("/usr/bin/npm").ok();
    if !has(PYTHON, &["--version"])
        || !npm.is_some_and(|p| p.starts_with("/usr/lib/node_modules"))
        || !has("/usr/bin/node", &["--version"])
    {
        println!("skipped: {test}: no /usr/bin/python3, or no node with npm in /usr/lib/node_modules here");
        return;
    }
    let d = Daemon::start("upm-npm", &[]);
    let upm = upm(&d, "upm-npm", "4873");
    let install = d
        .call("upm-npm", "install", json!({ "args": ["hello-upm"] }))
        .unwrap_or_else(|e| panic!("install: {e}\n{}", d.log()));
    assert_eq!(
        install["data"]["result"],
        json!({ "installed": "hello-upm", "version": "1.0.0" })
    );
    let modules = d.dir.join("state/plugins/upm-npm/npm/node_modules");
    assert!(modules.join("hello-upm/index.js").is_file());
    // A scoped package: installed below its scope, listed by its whole name.
    let scoped = d
        .call("upm-npm", "install", json!({ "args": ["@upm/scoped"] }))
        .unwrap_or_else(|e| panic!("install: {e}\n{}", d.log()));
    assert_eq!(
        scoped["data"]["result"],
        json!({ "installed": "@upm/scoped", "version": "2.0.0" })
    );
    let list = d.call("upm-npm", "list_installed", json!({})).unwrap();
    assert_eq!(
        list["data"]["result"],
        json!([
            { "name": "@upm/scoped", "version": "2.0.0" },
            { "name": "hello-upm", "version": "1.0.0" }
        ])
    );
    d.call("upm-npm", "uninstall", json!(["@upm/scoped"]))
        .unwrap();
    let gone = d
        .call("upm-npm", "uninstall", json!(["hello-upm"]))
        .unwrap();
    assert_eq!(
        gone["data"]["result"],
        json!({ "uninstalled": "hello-upm" })
    );
    assert!(!modules.join("hello-upm").exists());
    upm.exfiltration_is_stopped(&d, "upm-npm");
}

/// A directory of this test process's own outside /tmp (`/var/tmp/stockade-tests-<pid>`, mode
/// 0755), removed when the test ends; those of test processes that are gone (killed before they
/// could remove theirs) are removed first.
struct OutsideTmp(PathBuf);

impl OutsideTmp {
    fn new() -> Result<OutsideTmp, String> {
        const PREFIX: &str = "stockade-tests-";
        for e in std::fs::read_dir("/var/tmp")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(PREFIX)
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let path = PathBuf::from(format!("/var/tmp/{PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("cannot create {path:?}: {e}"))?;
        harness::set_mode(&path, 0o755);
        Ok(OutsideTmp(path))
    }
}

impl Drop for OutsideTmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Rust toolchain the sandbox's user can reach, for the cargo example: the test's own (`rustc
/// --print sysroot`) where every directory above it lets others through, else a hard-linked copy
/// of it in `base` (rustup keeps it in root's home, 0700: no sandbox user may enter). An error
/// where neither works (a toolchain on another filesystem).
fn toolchain_in(base: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let out = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("no rustc: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !sysroot.join("bin/cargo").is_file() {
        return Err(format!("no cargo beside rustc's sysroot {sysroot:?}"));
    }
    if sysroot.starts_with("/tmp") {
        return Err(format!(
            "{sysroot:?} is below /tmp, which the sandbox has its own of"
        ));
    }
    let passable = sysroot
        .ancestors()
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if passable {
        return Ok(sysroot);
    }
    let path = base.join("rust");
    std::fs::create_dir(&path).map_err(|e| format!("cannot create {path:?}: {e}"))?;
    harness::set_mode(&path, 0o755);
    for dir in ["bin", "lib", "libexec"] {
        if !sysroot.join(dir).exists() {
            continue;
        }
        let done = std::process::Command::new("cp")
            .arg("-al")
            .arg(sysroot.join(dir))
            .arg(&path)
            .output()
            .map_err(|e| e.to_string())?;
        if !done.status.success() {
            return Err(format!(
                "{sysroot:?} is below a directory others cannot enter, and no hard-linked copy of \
                 it could be made in {}: {}",
                base.display(),
                String::from_utf8_lossy(&done.stderr).trim()
            ));
        }
    }
    Ok(path)
}

/// The seeds' cargo plugin (examples/plugins/upm-cargo) driving the real cargo (and rustc, and
/// the system's linker) in its sandbox against a local sparse registry: install builds the crate
/// in the sandbox's /tmp and puts its binary into the state directory (and that binary runs),
/// list and uninstall work. Then a crate whose build script — run by cargo at install, from /tmp
/// (`tmp_exec`) — gathers credentials and sends them to another local port: refused and reported
/// as the plugin's violation, the plugin quarantined, nothing arriving.
#[test]
fn the_upm_cargo_plugin_builds_from_its_registry_and_nothing_else() {
    let test = "the_upm_cargo_plugin_builds_from_its_registry_and_nothing_else";
    // The example's policy names TCP ports: in enforce mode it does not start without Landlock's
    // TCP rules (ABI 4, Linux 6.7), which is the fail-closed rule, not this test's subject.
    if !harness::privileged(test) || !harness::tcp_rules_enforceable(test) {
        return;
    }
    if !has(PYTHON, &["--version"]) || !has("/usr/bin/cc", &["--version"]) {
        println!(
            "skipped: {test}: no /usr/bin/python3 or no /usr/bin/cc (the linker rustc calls) here"
        );
        return;
    }
    // The daemon's directory (its plugins' state) outside /tmp: the policy's `tmp_exec` refuses
    // a state directory below it (Landlock's execute right there would reach it).
    let found = OutsideTmp::new().and_then(|base| Ok((toolchain_in(&base.0)?, base)));
    let (toolchain, base) = match found {
        Ok(found) => found,
        Err(why) => {
            println!("skipped: {test}: no Rust toolchain the sandbox can use: {why}");
            return;
        }
    };
    let d = Daemon::start_at(base.0.join("daemon"), &[]);
    let upm = upm_with(
        &d,
        "upm-cargo",
        "8081",
        &[("/opt/rust", toolchain.to_str().unwrap())],
    );
    let install = d
        .call("upm-cargo", "install", json!({ "args": ["hello-upm"] }))
        .unwrap_or_else(|e| panic!("install: {e}\n{}", d.log()));
    assert_eq!(
        install["data"]["result"],
        json!({ "installed": "hello-upm", "version": "1.0.0" })
    );
    let stdout = install["data"]["output"]["stdout"].as_str().unwrap();
    assert!(stdout.contains("Compiling hello-upm v1.0.0"), "{stdout}");
    let bin = d.dir.join("state/plugins/upm-cargo/cargo/bin/hello-upm");
    let greeting = std::process::Command::new(&bin).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&greeting.stdout), "hello, upm\n");
    let list = d.call("upm-cargo", "list_installed", json!({})).unwrap();
    assert_eq!(
        list["data"]["result"],
        json!([{ "name": "hello-upm", "version": "1.0.0" }])
    );
    let gone = d
        .call("upm-cargo", "uninstall", json!(["hello-upm"]))
        .unwrap();
    assert_eq!(
        gone["data"]["result"],
        json!({ "uninstalled": "hello-upm" })
    );
    assert!(!bin.exists());
    let list = d.call("upm-cargo", "list_installed", json!({})).unwrap();
    assert_eq!(list["data"]["result"], json!([]));
    upm.exfiltration_is_stopped(&d, "upm-cargo");
}
