//! The plugin SDKs, spoken to as the host speaks: the Rust one's tests live in its crate
//! (`sdk/rust`); the Python one's are run here under pytest, with the system's Python 3 (the one the example
//! plugins' `#!/usr/bin/python3` names).

mod harness;

use std::path::Path;
use std::process::Command;

use harness::daemon::Daemon;
use serde_json::json;

#[test]
fn the_python_sdk_speaks_the_protocol() {
    let test = "the_python_sdk_speaks_the_protocol";
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        println!("skipped: {test}: no /usr/bin/python3 on this machine");
        return;
    }
    // pytest, as `cargo xtask test` installed it (xtask/src/setup.rs): in the target directory's
    // python-tools, the newest install. (CARGO_TARGET_TMPDIR is below the target triple's
    // directory, inside the target directory.)
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let tools = tmp
        .ancestors()
        .map(|a| a.join("python-tools"))
        .find(|t| t.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "no python-tools above {}\nhint: `cargo xtask setup pytest` (cargo xtask test runs it)",
                tmp.display()
            )
        });
    let pytest = std::fs::read_dir(&tools)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pytest-"))
                && p.join("pytest/__init__.py").exists()
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no pytest in {}", tools.display()));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python");
    let out = Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .args(["-W", "error::ResourceWarning", "tests"])
        .current_dir(&dir)
        .env("PYTHONPATH", &pytest)
        // The checkout may be read-only (the VM runner's is).
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Every test ran and passed (10 of them), none skipped, no warning.
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.starts_with("10 passed in "), "{stdout}");
}

/// Copies the files of `from` into `to`, leaving out tests and caches.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if name == "tests" || name == "__pycache__" || name == "build" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// `pip install` of the SDK from the repository (offline: the system's pip and setuptools, no
/// build isolation, no index), then imported from where pip put it: the package, its `py.typed`,
/// its version, the class API — and, the control, not importable without that directory.
#[test]
fn the_python_sdk_installs_with_pip() {
    let test = "the_python_sdk_installs_with_pip";
    let python = Path::new("/usr/bin/python3");
    let has = |module: &str| {
        Command::new(python)
            .args(["-c", &format!("import {module}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !python.exists() || !has("pip") || !has("setuptools") {
        println!("skipped: {test}: no /usr/bin/python3 with pip and setuptools");
        return;
    }
    let scratch = std::env::temp_dir().join(format!("stockade-sdk-pip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    // A copy: pip builds in the source tree, and the checkout may be read-only (the VM's is).
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python"),
        &scratch.join("src"),
    );
    let site = scratch.join("site");
    let out = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-build-isolation",
            "--no-index",
            "--target",
        ])
        .arg(&site)
        .arg(scratch.join("src"))
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("pip");
    assert!(out.status.success(), "{out:?}");
    let probe = "import os, importlib.metadata as m, stockade_plugin as s\n\
                 d = os.path.dirname(s.__file__)\n\
                 print(d)\n\
                 print(m.version('stockade-plugin'))\n\
                 print(os.path.exists(os.path.join(d, 'py.typed')))\n\
                 print(issubclass(s.PluginOperationError, s.PluginError), callable(s.serve))";
    let out = Command::new(python)
        .args(["-c", probe])
        .env("PYTHONPATH", &site)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&scratch)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            site.join("stockade_plugin").to_str().unwrap(),
            "0.1.0",
            "True",
            "True True"
        ],
        "{stdout}"
    );
    let out = Command::new(python)
        .args(["-c", "import stockade_plugin"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&scratch)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "importable without the install: {out:?}"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

/// A plugin written with the Python SDK, packaged as docs/plugins.md's first-plugin guide does:
/// the SDK copied into the package (the sandbox sees no site-packages but the system's), and a
/// class whose methods are the plugin's — here imported from a module of its own (Python would
/// write its bytecode cache beside it: the daemon's environment says not to, or the first import
/// would be a violation). Called through the daemon: a result, a log line, an event, a declared
/// counter added to without a violation, and the seed's exception as error 1000 with its type;
/// refused params never reach it.
#[test]
fn a_python_sdk_plugin_runs_under_the_daemon() {
    let test = "a_python_sdk_plugin_runs_under_the_daemon";
    if !harness::privileged(test) {
        return;
    }
    let d = Daemon::start("python-sdk", &[]);
    let pkg = d.dir.join("packages").join("hello");
    std::fs::create_dir_all(pkg.join("hello")).unwrap();
    for dir in [d.dir.join("packages"), pkg.clone(), pkg.join("hello")] {
        harness::set_mode(&dir, 0o755);
    }
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python/stockade_plugin"),
        &pkg.join("stockade_plugin"),
    );
    std::fs::write(
        pkg.join("hello/__init__.py"),
        "from stockade_plugin import PluginBase, PluginOperationError, on_event\n\n\n\
         class Hello(PluginBase):\n\
         \x20   def init(self, config):\n\
         \x20       self.heard = []\n\n\
         \x20   @on_event(\"greeted\")\n\
         \x20   def hear(self, event):\n\
         \x20       self.heard.append({\"from\": event.plugin, \"data\": event.data})\n\n\
         \x20   def seen(self):\n\
         \x20       return self.heard\n\n\
         \x20   def greet(self, name):\n\
         \x20       self.logger.info(\"greeting %s\", name)\n\
         \x20       self.publish_event(\"greeted\", {\"name\": name})\n\
         \x20       self.count(\"greetings_total\")\n\
         \x20       return {\"text\": f\"hello, {name}\"}\n\n\
         \x20   async def refuse(self, name):\n\
         \x20       raise PluginOperationError(f\"will not greet {name}\", {\"name\": name})\n",
    )
    .unwrap();
    std::fs::write(
        pkg.join("main.py"),
        "#!/usr/bin/python3\nfrom stockade_plugin import serve\nfrom hello import Hello\n\nserve(Hello())\n",
    )
    .unwrap();
    harness::set_mode(&pkg.join("main.py"), 0o755);
    std::fs::write(
        pkg.join("plugin.toml"),
        r#"id = "hello"
name = "Hello"
version = "0.1.0"
entry = ["main.py"]
policy = { profile = "untrusted-default" }
counters = ["greetings_total"]
publish = ["greeted"]
subscribe = ["greeted"]

[methods.seen]
params = { type = "object" }
timeout = "20s"

[methods.greet]
params = { type = "object", properties = { name = { type = "string", maxLength = 100 } }, required = ["name"], additionalProperties = false }
timeout = "20s"

[methods.refuse]
params = { type = "object" }
timeout = "20s"
"#,
    )
    .unwrap();
    // Every file and directory readable by the plugin's uid.
    let out = Command::new("chmod")
        .args(["-R", "go+rX"])
        .arg(&pkg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    d.sign(&pkg);
    let out = d.cli(&["plugin", "load", pkg.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let answer = d
        .call("hello", "greet", json!({ "name": "world" }))
        .unwrap();
    assert_eq!(answer, json!({ "text": "hello, world" }));
    let published = d.wait_event(5, "the event", |e| {
        e["type"] == "published" && e["plugin"] == "hello"
    });
    assert_eq!(published["topic"], "greeted");
    assert_eq!(published["data"], json!({ "name": "world" }));
    let error = d
        .call("hello", "refuse", json!({ "name": "you" }))
        .expect_err("the plugin's exception");
    assert_eq!(error["code"], 1000, "{error}");
    assert_eq!(error["message"], "will not greet you");
    assert_eq!(error["data"]["type"], "PluginOperationError");
    assert_eq!(error["data"]["details"], json!({ "name": "you" }));
    let error = d
        .call("hello", "greet", json!({ "name": 7 }))
        .expect_err("refused by the host");
    assert_eq!(error["code"], -32602);
    let logs = d.logs("hello");
    assert!(
        logs.iter().any(|l| l == "info: greeting world"),
        "{logs:#?}"
    );
    let status = d.status("hello");
    assert_eq!(status["state"], "active", "{status}");
    assert_eq!(status["violations"], 0, "{status}");
    // A second instance, subscribed to what the first publishes: its hook (`@on_event`) hears
    // the first's greeting; the first heard none of its own.
    let second = d.dir.join("packages").join("hello-2");
    copy_tree(&pkg, &second);
    harness::set_mode(&second, 0o755);
    let manifest = std::fs::read_to_string(second.join("plugin.toml")).unwrap();
    std::fs::write(
        second.join("plugin.toml"),
        manifest.replace("id = \"hello\"", "id = \"hello-2\""),
    )
    .unwrap();
    let out = Command::new("chmod")
        .args(["-R", "go+rX"])
        .arg(&second)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    d.sign(&second);
    let out = d.cli(&["plugin", "load", second.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    d.call("hello", "greet", json!({ "name": "again" }))
        .unwrap();
    let until = std::time::Instant::now() + harness::patience(10);
    loop {
        let seen = d.call("hello-2", "seen", json!({})).unwrap();
        if seen == json!([{ "from": "hello", "data": { "name": "again" } }]) {
            break;
        }
        assert!(seen == json!([]), "{seen}");
        assert!(std::time::Instant::now() < until, "no event heard");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(d.call("hello", "seen", json!({})).unwrap(), json!([]));
    assert_eq!(d.status("hello-2")["violations"], 0);
}
