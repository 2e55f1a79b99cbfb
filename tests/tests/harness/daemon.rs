//! A daemon for the tests: `stockade daemon` with its own socket, state directory and test
//! publisher key, driven through the CLI and the control socket; packages of the test plugin
//! (tests/fixtures/daemon_plugin.py) signed with that key.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The test publisher's secret key; the daemon pins its public key (`--pubkey`).
    pub key: PathBuf,
    /// The next signature's sequence: every package this daemon sees grows it.
    pub sequence: std::sync::atomic::AtomicU64,
    /// A cgroup (v2 directory) the daemon is started in, instead of the test's own.
    pub cgroup: Option<PathBuf>,
}

/// A fresh key pair NAME.key and NAME.pub in `dir`.
pub fn generate_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let out = Command::new(super::stockade())
        .args(["key", "generate", name, "--out"])
        .arg(dir)
        .output()
        .expect("stockade key generate");
    assert!(out.status.success(), "key generate: {out:?}");
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

/// `stockade sign DIR --key KEY ARGS`.
pub fn sign(dir: &Path, key: &Path, args: &[&str]) -> Output {
    Command::new(super::stockade())
        .arg("sign")
        .arg(dir)
        .arg("--key")
        .arg(key)
        .args(args)
        .output()
        .expect("stockade sign")
}

/// The test plugin's methods: `echo`, and `go` (each mode's act). A call may take 5 s; `go`, 30 s
/// in the emulated guest, where a mode's act (thousands of denials) takes seconds.
pub fn echo_methods() -> String {
    let go = if super::emulated_vm() { "30s" } else { "5s" };
    format!(
        r#"
[methods.echo]
params = {{ type = "object", properties = {{ text = {{ type = "string" }}, sleep_ms = {{ type = "integer" }}, password = {{ type = "string" }}, note = {{ type = "string" }} }}, additionalProperties = false }}
timeout = "5s"
audit_params = true
redact = ["note"]

[methods.go]
params = {{ type = "object" }}
timeout = "{go}"
"#
    )
}

impl Daemon {
    /// A daemon that pins a test publisher's key; the packages of `package_with` are signed with
    /// it.
    pub fn start(name: &str, extra: &[&str]) -> Daemon {
        let mut daemon = Daemon::prepared(name);
        daemon.spawn(extra);
        daemon
    }

    /// A daemon whose directory is `dir` (made here, mode 0755; the sandbox's user must be able to
    /// pass every directory above it) rather than one in the scratch directory below /tmp.
    pub fn start_at(dir: PathBuf, extra: &[&str]) -> Daemon {
        std::fs::create_dir_all(&dir).expect("the daemon's directory");
        super::set_mode(&dir, 0o755);
        let mut daemon = Daemon::prepared_at(dir);
        daemon.spawn(extra);
        daemon
    }

    /// The same, not started yet ([`Daemon::spawn_with`] starts it).
    pub fn prepared(name: &str) -> Daemon {
        Daemon::prepared_at(super::scratch_dir(&format!("daemon-{name}")))
    }

    fn prepared_at(dir: PathBuf) -> Daemon {
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).expect("keys dir");
        let (key, _) = generate_key(&keys, "publisher");
        Daemon {
            child: None,
            socket: dir.join("control.sock"),
            dir,
            key,
            sequence: std::sync::atomic::AtomicU64::new(1),
            cgroup: None,
        }
    }

    /// The daemon's command line: its socket, state directory and the publisher's key.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(super::stockade());
        cmd.arg("daemon")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--pubkey")
            .arg(self.key.with_extension("pub"))
            .env("STOCKADE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    /// Starts the daemon (again) on this directory, with `extra`; returns once it listens.
    pub fn spawn(&mut self, extra: &[&str]) {
        self.spawn_with(extra, &[]);
    }

    /// The same, with `env` added to the daemon's environment.
    pub fn spawn_with(&mut self, extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) {
        let log = std::fs::File::create(self.dir.join("daemon.log")).expect("daemon log");
        let mut command = self.command();
        if let Some(cgroup) = &self.cgroup {
            // A shell that moves itself into the cgroup, then becomes the daemon.
            let mut inside = Command::new("/bin/sh");
            inside
                .arg("-c")
                .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
                .arg(cgroup)
                .arg(command.get_program())
                .args(command.get_args())
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            for (k, v) in command.get_envs() {
                if let Some(v) = v {
                    inside.env(k, v);
                }
            }
            command = inside;
        }
        let child = command
            .args(extra)
            .envs(env.iter().copied())
            .stderr(log)
            .spawn()
            .expect("start the daemon");
        self.child = Some(child);
        let until = Instant::now() + super::patience(20);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < until,
                "the daemon did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon and starts it again on the same state directory, with `extra`.
    pub fn restart(&mut self, extra: &[&str]) {
        let status = self.stop();
        assert!(status.success(), "{status:?}: {}", self.log());
        self.spawn(extra);
    }

    /// The sealed copies this daemon keeps (below its state's `store/<pid>`).
    pub fn sealed_copies(&self) -> Vec<PathBuf> {
        let store = self.dir.join("state/store").join(self.pid().to_string());
        std::fs::read_dir(&store)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// `stockade ARGS` against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(super::stockade())
            .args(args)
            .env("STOCKADE_SOCKET", &self.socket)
            .output()
            .expect("run stockade")
    }

    /// One control request; `Err` holds the JSON-RPC error.
    pub fn request(&self, method: &str, params: Value) -> Result<Value, Value> {
        let mut stream = UnixStream::connect(&self.socket).expect("connect");
        let line = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
        stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("send");
        let mut answer = String::new();
        BufReader::new(stream)
            .read_line(&mut answer)
            .expect("answer");
        let answer: Value = serde_json::from_str(&answer).expect("JSON answer");
        match answer.get("result") {
            Some(r) => Ok(r.clone()),
            None => Err(answer["error"].clone()),
        }
    }

    /// One control request on a thread of its own; the join gives its answer line.
    pub fn request_in_background(
        &self,
        method: &str,
        params: Value,
    ) -> std::thread::JoinHandle<String> {
        let socket = self.socket.clone();
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        std::thread::spawn(move || {
            let mut s = UnixStream::connect(socket).unwrap();
            s.write_all(format!("{req}\n").as_bytes()).unwrap();
            let mut line = String::new();
            let _ = BufReader::new(s).read_line(&mut line);
            line
        })
    }

    pub fn call(&self, plugin: &str, method: &str, params: Value) -> Result<Value, Value> {
        self.request(
            "call",
            json!({ "plugin": plugin, "method": method, "params": params }),
        )
    }

    pub fn events(&self) -> Vec<Value> {
        self.request("events.subscribe", json!({})).expect("events")["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until an event matches `pred`; panics with the events seen after `secs`.
    pub fn wait_event(&self, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let patience = super::patience(secs);
        let until = Instant::now() + patience;
        loop {
            let events = self.events();
            if let Some(e) = events.iter().find(|e| pred(e)) {
                return e.clone();
            }
            assert!(
                Instant::now() < until,
                "no event {what} within {} s; events: {events:#?}\nlog: {}",
                patience.as_secs(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn status(&self, id: &str) -> Value {
        self.request("plugin.status", json!({ "id": id }))
            .expect("status")
    }

    /// The plugin's captured output and log lines.
    pub fn logs(&self, id: &str) -> Vec<String> {
        self.request("plugin.logs", json!({ "id": id }))
            .expect("logs")["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "{}: {}",
                    l["stream"].as_str().unwrap_or(""),
                    l["text"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    /// A package of the test plugin in this daemon's directory.
    pub fn package(
        &self,
        name: &str,
        id: &str,
        version: &str,
        mode: &str,
        lifecycle: &str,
    ) -> PathBuf {
        self.package_with(name, id, version, mode, lifecycle, "untrusted", None)
    }

    /// A package with its trust level and, when given, a policy file of its own.
    #[allow(clippy::too_many_arguments)]
    pub fn package_with(
        &self,
        name: &str,
        id: &str,
        version: &str,
        mode: &str,
        lifecycle: &str,
        trust: &str,
        policy: Option<&str>,
    ) -> PathBuf {
        let dir = self.dir.join("packages").join(name);
        std::fs::create_dir_all(&dir).expect("package dir");
        super::set_mode(&self.dir.join("packages"), 0o755);
        super::set_mode(&dir, 0o755);
        let script = dir.join("plugin.py");
        std::fs::copy(
            super::repo_root().join("tests/fixtures/daemon_plugin.py"),
            &script,
        )
        .expect("copy the plugin");
        super::set_mode(&script, 0o755);
        let policy_line = match policy {
            Some(text) => {
                std::fs::write(dir.join("policy.toml"), text).expect("write policy.toml");
                "policy = \"policy.toml\"".to_string()
            }
            None => "policy = { profile = \"untrusted-default\" }".to_string(),
        };
        let methods = echo_methods();
        let manifest = format!(
            r#"id = "{id}"
name = "test plugin {id}"
version = "{version}"
entry = ["plugin.py", "{mode}", "{version}"]
{policy_line}
trust = "{trust}"
{methods}
[lifecycle]
{lifecycle}
"#
        );
        std::fs::write(dir.join("plugin.toml"), manifest).expect("write plugin.toml");
        self.sign(&dir);
        dir
    }

    /// Signs the package in `dir` with the test publisher's key, at the next sequence.
    pub fn sign(&self, dir: &Path) {
        let n = self
            .sequence
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .to_string();
        let out = sign(dir, &self.key, &["--sequence", &n]);
        assert!(out.status.success(), "sign {}: {out:?}", dir.display());
    }

    pub fn load(&self, dir: &Path) -> Value {
        self.request("plugin.load", json!({ "dir": dir }))
            .unwrap_or_else(|e| panic!("load {}: {e}\n{}", dir.display(), self.log()))
    }

    /// The directories of this daemon's sandbox cgroups still present, in every hierarchy.
    pub fn cgroup_paths(&self) -> Vec<PathBuf> {
        let prefix = format!("stockade-{}.", self.pid());
        super::leftover_cgroups()
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .collect()
    }

    /// The names of this daemon's sandbox cgroups still present (each in every hierarchy).
    pub fn cgroups(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .cgroup_paths()
            .into_iter()
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// SIGKILL: the daemon dies at once (its sandboxes stay until the next daemon sweeps them).
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL the daemon");
        child.wait().expect("reap the daemon");
    }

    /// The daemon's SQLite database (the default one, in its state directory).
    pub fn database(&self) -> String {
        format!("sqlite:{}", self.dir.join("state/stockade.db").display())
    }

    /// `stockade audit --json` on `database`, with `args`: the records.
    pub fn audit(database: &str, args: &[&str]) -> Vec<Value> {
        let out = Command::new(super::stockade())
            .args(["audit", "--json", "--database", database])
            .args(args)
            .output()
            .expect("stockade audit");
        assert!(out.status.success(), "stockade audit: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record"))
            .collect()
    }

    /// `stockade audit verify --json` on `database`: (exit code, verdict).
    pub fn audit_verify(database: &str) -> (i32, Value) {
        let out = Command::new(super::stockade())
            .args(["audit", "verify", "--json", "--database", database])
            .output()
            .expect("stockade audit verify");
        let verdict = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("a JSON verdict: {out:?}"));
        (out.status.code().unwrap_or(-1), verdict)
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling the daemon this test started, by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + super::patience(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!("the daemon did not stop on SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn lifecycle_event<'a>(e: &'a Value, plugin: &str, to: &str) -> Option<&'a Value> {
    (e["type"] == "lifecycle" && e["plugin"] == plugin && e["to"] == to).then_some(e)
}

pub fn process_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}
