//! The command line as a user meets it: exit codes, the summary, bad input (a one-line cause, a
//! hint, exit 2, nothing left behind) and stopping `stockade run` with a signal.

mod harness;
use harness::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn stockade_cmd(args: &[&str]) -> RunResult {
    tracked(
        Command::new(stockade())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// The error a user sees: "stockade: error: ..." then "  hint: ...".
#[track_caller]
fn assert_usage_error(r: &RunResult, cause: &str) {
    assert_eq!(r.code, 2, "stderr: {}", r.stderr);
    let first = r
        .stderr
        .lines()
        .find(|l| l.starts_with("stockade: error: "))
        .unwrap_or_else(|| panic!("no error line in {}", r.stderr));
    assert!(first.contains(cause), "{first:?} does not say {cause:?}");
    assert!(r.stderr.contains("  hint: "), "no hint in {}", r.stderr);
}

#[test]
fn exit_status_and_summary() {
    if !privileged("exit_status_and_summary") {
        return;
    }
    let file = policy_file("cli", &policy(""));
    let fixture = hostile();
    let r = run(&file, &[&fixture, "exit", "7"]);
    assert_eq!(r.code, 7);
    assert_eq!(r.summary["ended_by"], "exited");
    assert_eq!(r.summary["exit_status"], 7);
    assert!(r.summary["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(r.summary["memory_peak_bytes"].as_u64().unwrap() > 0);
    assert_eq!(r.summary["pids_peak"], 1);
    assert_eq!(r.summary["landlock_abi"], landlock_abi());
    // The text summary, for people.
    let out = Command::new(stockade())
        .args(["run", "--policy"])
        .arg(&file)
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .args(["--", &fixture, "exit", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr.contains(&format!("stockade: {fixture} exited with status 3 after ")),
        "{stderr}"
    );
    assert!(stderr.contains("memory peak"), "{stderr}");
    assert!(stderr.contains("layers: namespaces"), "{stderr}");
}

#[test]
fn missing_and_invalid_policies() {
    if !privileged("missing_and_invalid_policies") {
        return;
    }
    let r = stockade_cmd(&[
        "run",
        "--policy",
        "/nonexistent/policy.toml",
        "--",
        "/bin/true",
    ]);
    assert_usage_error(&r, "/nonexistent/policy.toml");
    let bad = policy_file("bad", "[filesystem]\nreed = [\"/usr\"]\n");
    let r = stockade_cmd(&["run", "--policy", bad.to_str().unwrap(), "--", "/bin/true"]);
    assert_usage_error(&r, "is not a valid policy");
    assert!(
        r.stderr.contains(&format!("{}:2:1:", bad.display())),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("read"),
        "the hint names the nearest key: {}",
        r.stderr
    );
}

#[test]
fn command_not_found_inside_the_sandbox() {
    if !privileged("command_not_found_inside_the_sandbox") {
        return;
    }
    let file = policy_file("cli", &policy(""));
    // Exists on the host, but /etc is not in the policy, so not in the sandbox.
    let r = run(&file, &["/etc/hostname"]);
    assert_usage_error(&r, "command not found inside the sandbox: /etc/hostname");
    let r = run(&file, &["no-such-command"]);
    assert_usage_error(&r, "command not found inside the sandbox: no-such-command");
}

#[test]
fn run_needs_root() {
    if !privileged("run_needs_root") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let r = tracked(
        Command::new(stockade())
            .args(["run", "--policy"])
            .arg(default_profile())
            .args(["--", "/bin/true"])
            .uid(65534)
            .gid(65534)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    assert_usage_error(&r, "needs root");
}

#[test]
fn policy_commands() {
    let r = stockade_cmd(&["policy", "check", default_profile().to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let profiles: Vec<String> = std::fs::read_dir(repo_root().join("policies/profiles"))
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .collect();
    let mut args = vec!["policy", "check"];
    args.extend(profiles.iter().map(String::as_str));
    let r = stockade_cmd(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bad = policy_file("bad", "[resources]\npids = \"many\"\n");
    let r = stockade_cmd(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains(":2:8:"), "{}", r.stderr);
    let r = stockade_cmd(&["policy", "explain", default_profile().to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for section in [
        "filesystem",
        "landlock",
        "network",
        "syscalls",
        "resources",
        "privileges",
        "violation event",
    ] {
        assert!(
            r.stdout.contains(section),
            "explain lacks {section}:\n{}",
            r.stdout
        );
    }
    let r = stockade_cmd(&["policy", "schema"]);
    let schema: serde_json::Value = serde_json::from_str(&r.stdout).expect("schema is JSON");
    assert!(schema["properties"]["filesystem"].is_object());
}

#[test]
fn doctor_reports_every_layer() {
    let r = stockade_cmd(&["doctor"]);
    for layer in [
        "user namespaces",
        "landlock",
        "seccomp",
        "cgroups",
        "bpf cgroup_sock_addr",
    ] {
        assert!(
            r.stdout.contains(layer),
            "doctor lacks {layer}:\n{}",
            r.stdout
        );
    }
    if privileged("doctor_reports_every_layer (exit status)") {
        assert_eq!(
            r.code, 0,
            "this machine has every required layer:\n{}",
            r.stdout
        );
        // Loading Stockade's own programs (verifier included) is what doctor reports here.
        for monitor in ["network", "syscalls", "processes"] {
            let line = r
                .stdout
                .lines()
                .find(|l| l.starts_with(&format!("monitor {monitor} ")))
                .unwrap_or_else(|| panic!("doctor lacks monitor {monitor}:\n{}", r.stdout));
            assert!(line.contains(" active:"), "{line}");
        }
    }
}

#[test]
fn sigterm_stops_the_sandbox_and_cleans_up() {
    if !privileged("sigterm_stops_the_sandbox_and_cleans_up") {
        return;
    }
    let file = policy_file("cli", &policy(""));
    let mut child = Command::new(stockade())
        .args(["run", "--json", "--policy"])
        .arg(&file)
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .args(["--", &hostile(), "sleep-tree", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started");
    // SAFETY: signalling the child we spawned, by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let r = finish(out);
    assert_eq!(r.code, 128 + libc::SIGTERM, "{}", r.stderr);
    assert_eq!(r.summary["ended_by"], "interrupted");
    assert_cgroup_removed(r.summary["cgroup_id"].as_u64().unwrap());
}

/// `stockade run --policy (the tests' policy, which grants $PLUGIN_DIR) [--plugin-dir DIR]
/// --events FILE -- CMD...`; asserts that a refused run left no events file behind.
fn run_plugin_dir(dir: Option<&std::path::Path>, command: &[&str]) -> RunResult {
    let file = policy_file("plugin-dir", &policy(""));
    // One file per call: the tests run in parallel.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let events = scratch_dir("plugin-dir-events").join(format!("{n}.jsonl"));
    let _ = std::fs::remove_file(&events);
    let mut cmd = Command::new(stockade());
    cmd.args(["run", "--policy"]).arg(&file);
    if let Some(dir) = dir {
        cmd.arg("--plugin-dir").arg(dir);
    }
    cmd.arg("--events")
        .arg(&events)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let r = tracked(&mut cmd);
    if r.code == 2 {
        assert!(
            !events.exists(),
            "a refused run created {}",
            events.display()
        );
        assert_eq!(r.stdout, "", "the plugin ran");
    }
    let _ = std::fs::remove_file(&events);
    r
}

#[test]
fn plugin_dirs_that_grant_more_than_the_plugin_are_refused() {
    if !privileged("plugin_dirs_that_grant_more_than_the_plugin_are_refused") {
        return;
    }
    let fixture = hostile();
    let scratch = scratch_dir("plugin-dirs");
    // Resolved before judged: a symlink to / and a path through `..` are what they lead to.
    let root_link = scratch.join("root-link");
    let _ = std::fs::remove_file(&root_link);
    std::os::unix::fs::symlink("/", &root_link).unwrap();
    let everyone = scratch.join("world-writable");
    std::fs::create_dir_all(&everyone).unwrap();
    set_mode(&everyone, 0o1777);
    let cases: [(&std::path::Path, &str); 8] = [
        ("/".as_ref(), "--plugin-dir /: that is the host's root: the plugin would get the whole host tree"),
        (&root_link, "(resolves to /): that is the host's root"),
        ("/tmp".as_ref(), "--plugin-dir /tmp: the sandbox has a private /tmp, which the host's /tmp would replace"),
        ("/usr/../tmp/".as_ref(), "(resolves to /tmp): the sandbox has a private /tmp"),
        ("/proc/self".as_ref(), "/proc is a kernel interface"),
        ("/etc".as_ref(), "--plugin-dir /etc: /etc is a system tree of the host"),
        ("/home".as_ref(), "/home is a system tree of the host"),
        (&everyone, "every user of the host may write to it (mode 1777)"),
    ];
    for (dir, cause) in cases {
        let r = run_plugin_dir(Some(dir), &[&fixture, "echo", "ran"]);
        assert_usage_error(&r, cause);
    }
    // The control: the tests' own plugin directory (below /tmp, bound over the private /tmp).
    let r = run_plugin_dir(Some(plugin_dir()), &[&fixture, "echo", "ran"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_line(&r, "ok ran");
    let _ = std::fs::remove_file(&root_link);
    let _ = std::fs::remove_dir(&everyone);
}

#[test]
fn the_default_plugin_dir_is_said_and_checked() {
    if !privileged("the_default_plugin_dir_is_said_and_checked") {
        return;
    }
    // Without --plugin-dir, the command's directory is $PLUGIN_DIR, and stockade says so.
    let fixture = hostile();
    let r = run_plugin_dir(None, &[&fixture, "echo", "ran"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_line(&r, "ok ran");
    let said = format!(
        "stockade: $PLUGIN_DIR is {}, the directory of {fixture} (--plugin-dir chooses another)",
        plugin_dir().display()
    );
    assert!(r.stderr.contains(&said), "{said:?} not in:\n{}", r.stderr);

    // A command directly in /tmp would make the host's /tmp the plugin directory.
    let in_tmp = format!("/tmp/stockade-hostile-cli-{}", std::process::id());
    std::fs::copy(&fixture, &in_tmp).unwrap();
    let r = run_plugin_dir(None, &[&in_tmp, "echo", "ran"]);
    let _ = std::fs::remove_file(&in_tmp);
    assert_usage_error(
        &r,
        &format!(
            "$PLUGIN_DIR would be /tmp, the directory of {in_tmp}: the sandbox has a private /tmp"
        ),
    );
}

#[test]
fn policy_files_must_be_regular_files() {
    let test = "policy_files_must_be_regular_files";
    if !privileged(test) {
        return;
    }
    let dir = scratch_dir("policy-fifo");
    let fifo = dir.join("policy.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let fifo = fifo.to_str().unwrap();
    // `policy check` reads nothing from a device or a FIFO (it used to read /dev/zero until
    // memory ran out, and hang on a FIFO with no writer): exit 1, the cause and a hint.
    for (path, kind) in [("/dev/zero", "character device"), (fifo, "FIFO")] {
        let started = std::time::Instant::now();
        let r = stockade_cmd(&["policy", "check", path]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("is a {kind}, not a regular file")),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("  hint: "), "{}", r.stderr);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // `run` refuses it as a usage error before anything is created.
        let r = stockade_cmd(&["run", "--policy", path, "--", "/bin/true"]);
        assert_usage_error(&r, "not a regular file");
    }
    // Control: a regular policy file checks.
    let file = policy_file("regular", &policy(""));
    let r = stockade_cmd(&["policy", "check", file.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// A package directory of this test's own, from `files` (name, contents, executable).
fn package(name: &str, files: &[(&str, &str, bool)]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch().join(format!("pkg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text, exec) in files {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        let mode = if *exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    dir
}

#[test]
fn plugin_check_validates_a_package_offline() {
    // The example package: ok, with its entry's digest.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/plugins/echo-python")
        .canonicalize()
        .unwrap();
    let r = stockade_cmd(&["plugin", "check", example.to_str().unwrap(), "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["id"], "echo-python");
    assert_eq!(v["trust"], "untrusted");
    assert_eq!(v["mode"], "enforce");
    assert_eq!(v["policy"], "stock profile untrusted-default");
    assert_eq!(v["entry_sha3_512"].as_str().unwrap().len(), 128);
    assert_eq!(
        v["methods"]["echo"]["params"]["required"],
        serde_json::json!(["text"])
    );
    // Its policy explained, as the plugin would run under it.
    let r = stockade_cmd(&["policy", "explain", example.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with(
            "package echo-python 0.1.0 (Echo (Python)), untrusted: policy stock profile \
             untrusted-default, in enforce mode whatever it says"
        ),
        "{}",
        r.stdout
    );

    // Every manifest error at once, each with its place.
    let bad = package(
        "bad",
        &[(
            "plugin.toml",
            "id = \"Bad\"\nname = \"x\"\nversion = \"1\"\nentry = [\"run\"]\npolicy = \"p.toml\"\n",
            false,
        )],
    );
    let r = stockade_cmd(&["plugin", "check", bad.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let manifest = bad.join("plugin.toml").canonicalize().unwrap();
    let m = manifest.display();
    assert!(
        r.stderr
            .contains(&format!("{m}:1:6: error: invalid plugin id \"Bad\"")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("{m}:3:11: error: invalid version \"1\"")),
        "{}",
        r.stderr
    );

    // An entry that is not executable, and a policy that does not grant it for exec.
    let manifest_text = "id = \"p\"\nname = \"p\"\nversion = \"1.0.0\"\nentry = [\"run\"]\npolicy = \"policy.toml\"\n";
    let noexec = package(
        "noexec",
        &[
            ("plugin.toml", manifest_text, false),
            ("run", "#!/bin/sh\n", false),
            (
                "policy.toml",
                "[filesystem]\nexec = [\"$PLUGIN_DIR\"]\n",
                false,
            ),
        ],
    );
    let r = stockade_cmd(&["plugin", "check", noexec.to_str().unwrap()]);
    assert_usage_error(&r, "not executable (mode 644)");
    let unreachable = package(
        "unreachable",
        &[
            ("plugin.toml", manifest_text, false),
            ("run", "#!/bin/sh\n", true),
            (
                "policy.toml",
                "[filesystem]\nexec = [\"/usr/bin\"]\n",
                false,
            ),
        ],
    );
    let r = stockade_cmd(&["plugin", "check", unreachable.to_str().unwrap()]);
    assert_usage_error(&r, "no `exec` path of the policy holds it");
    // An entry that leaves the package through a symlink: a package holds no symlinks at all
    // (what is verified and copied into the sealed copy is files and directories).
    let escape = package(
        "escape",
        &[
            ("plugin.toml", manifest_text, false),
            (
                "policy.toml",
                "[filesystem]\nexec = [\"$PLUGIN_DIR\"]\n",
                false,
            ),
        ],
    );
    std::os::unix::fs::symlink("/bin/sh", escape.join("run")).unwrap();
    let r = stockade_cmd(&["plugin", "check", escape.to_str().unwrap()]);
    assert_usage_error(
        &r,
        "run: a symbolic link; a package holds files and directories only",
    );
    // Control: the same package with the entry in it is ok.
    let good = package(
        "good",
        &[
            ("plugin.toml", manifest_text, false),
            ("run", "#!/bin/sh\n", true),
            (
                "policy.toml",
                "[filesystem]\nexec = [\"$PLUGIN_DIR\"]\n",
                false,
            ),
        ],
    );
    let r = stockade_cmd(&["plugin", "check", good.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("  plugin   p 1.0.0 (p)"), "{}", r.stdout);

    // Method schemas: checked against JSON Schema's meta-schema, and never fetched from outside.
    for (schema, cause) in [
        (
            "{ type = \"strin\" }",
            "method `m`: `params` is not a usable JSON Schema: \"strin\" is not valid",
        ),
        (
            "{ \"$ref\" = \"http://192.0.2.1/s.json\" }",
            "method `m`: `params` is not a usable JSON Schema: Resource 'http://192.0.2.1/s.json'",
        ),
    ] {
        let with_schema = package(
            "schema",
            &[
                (
                    "plugin.toml",
                    &format!("{manifest_text}[methods.m]\nparams = {schema}\n"),
                    false,
                ),
                ("run", "#!/bin/sh\n", true),
                (
                    "policy.toml",
                    "[filesystem]\nexec = [\"$PLUGIN_DIR\"]\n",
                    false,
                ),
            ],
        );
        let r = stockade_cmd(&["plugin", "check", with_schema.to_str().unwrap()]);
        assert_usage_error(&r, cause);
        let _ = std::fs::remove_dir_all(with_schema);
    }
    // Control: a reference inside the schema is fine.
    let local_ref = package(
        "local-ref",
        &[
            (
                "plugin.toml",
                &format!(
                    "{manifest_text}[methods.m]\nparams = {{ \"$ref\" = \"#/$defs/n\", \"$defs\" = {{ n = {{ type = \"integer\" }} }} }}\n"
                ),
                false,
            ),
            ("run", "#!/bin/sh\n", true),
            ("policy.toml", "[filesystem]\nexec = [\"$PLUGIN_DIR\"]\n", false),
        ],
    );
    let r = stockade_cmd(&["plugin", "check", local_ref.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let _ = std::fs::remove_dir_all(local_ref);

    // Not a package at all.
    let r = stockade_cmd(&["plugin", "check", "/etc/hostname"]);
    assert_usage_error(&r, "is not a directory");
    let empty = package("empty", &[]);
    let r = stockade_cmd(&["plugin", "check", empty.to_str().unwrap()]);
    assert_usage_error(&r, "has no plugin.toml");
    for dir in [bad, noexec, unreachable, escape, good, empty] {
        let _ = std::fs::remove_dir_all(dir);
    }
}
