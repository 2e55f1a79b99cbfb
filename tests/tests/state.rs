//! The daemon's registry and audit log for real: a real daemon records every request and call
//! with who asked (and nothing secret), a tampered database is found by `stockade audit verify`
//! (SQLite edited with the sqlite3 shell, PostgreSQL with psql), a bad database stops the daemon
//! before it starts, a daemon killed mid-burst or mid-load has lost no acknowledged record, two
//! daemons share one PostgreSQL registry, and a PostgreSQL restart is survived while a full queue
//! refuses new work.

mod harness;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::daemon::Daemon;
use harness::postgres;
use serde_json::{json, Value};

fn echo_package(d: &Daemon, name: &str, id: &str) -> std::path::PathBuf {
    d.package(name, id, "1.0.0", "serve", "")
}

/// A daemon that loaded the echo plugin, answered `calls` calls and stopped cleanly.
fn stopped_after_calls(name: &str, extra: &[&str], calls: usize) -> Daemon {
    let mut d = Daemon::start(name, extra);
    d.load(&echo_package(&d, "echo", "echo"));
    for n in 0..calls {
        d.call("echo", "echo", json!({ "text": n.to_string() }))
            .unwrap();
    }
    assert!(d.stop().success());
    d
}

/// The records of `kind` among `records`.
fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

fn sqlite3(db: &Path, sql: &str) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3 (`cargo xtask setup` installs it)");
    assert!(out.status.success(), "sqlite3 {sql}: {out:?}");
}

/// The broken record `audit verify` names: (exit code, seq, kind).
fn broken(database: &str) -> (i32, i64, String) {
    let (code, verdict) = Daemon::audit_verify(database);
    let b = verdict["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|c| c["broken"].as_object().cloned())
        .unwrap_or_default();
    (
        code,
        b.get("seq").and_then(Value::as_i64).unwrap_or(0),
        b.get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    )
}

/// Runs the daemon of `d` with `args`, expecting it to refuse to start: it must exit on its own,
/// at once (one that started anyway is killed after 30 s and the test fails), and leave no
/// socket.
fn refused(d: &Daemon, args: &[&str]) -> Output {
    let err = d.dir.join("refused.log");
    let mut child = d
        .command()
        .args(args)
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("run the daemon");
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon started with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!d.socket.exists(), "a refused daemon left its socket");
    Output {
        status,
        stdout: Vec::new(),
        stderr: std::fs::read(&err).unwrap(),
    }
}

fn one_line_refusal(out: &Output, cause: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{cause}: {out:?}");
    let last: Vec<&str> = err.lines().rev().take(2).collect();
    assert!(
        last.len() == 2 && last[0].trim_start().starts_with("hint: "),
        "{err}"
    );
    assert!(
        last[1].starts_with("stockade daemon: ") && last[1].contains(cause),
        "expected {cause:?} in:\n{err}"
    );
}

#[test]
fn every_request_and_call_is_in_the_audit_log_and_the_chain_holds() {
    if !harness::privileged("every_request_and_call_is_in_the_audit_log_and_the_chain_holds") {
        return;
    }
    let mut d = Daemon::start("audit-log", &[]);
    let dir = echo_package(&d, "echo", "echo");
    d.load(&dir);
    for n in 0..3 {
        let params =
            json!({ "text": format!("hello {n}"), "password": "hunter2", "note": "private" });
        assert_eq!(
            d.call("echo", "echo", params).unwrap()["text"],
            format!("hello {n}")
        );
    }
    // Refused before the plugin: an undeclared method, bad params, an unknown plugin.
    assert!(d.call("echo", "rm", json!({})).is_err());
    assert!(d.call("echo", "echo", json!({ "text": 5 })).is_err());
    assert!(d.call("nobody", "echo", json!({})).is_err());
    // A method whose manifest does not mark its params loggable.
    d.call("echo", "go", json!({ "secret_plan": "x" })).unwrap();
    d.request("plugin.unload", json!({ "id": "echo" })).unwrap();
    let db = d.database();
    let records = Daemon::audit(&db, &[]);
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "daemon", "{kinds:?}");
    assert_eq!(records[0]["detail"]["event"], "started");
    // Who asked: the test runs as root.
    let load = of_kind(&records, "load");
    assert_eq!(load.len(), 1);
    assert_eq!(
        (
            &load[0]["plugin"],
            &load[0]["actor"],
            &load[0]["detail"]["outcome"]
        ),
        (&json!("echo"), &json!(0), &json!("ok"))
    );
    let trust = of_kind(&records, "trust");
    assert_eq!(trust[0]["detail"]["decision"], "accepted");
    let to: Vec<&str> = of_kind(&records, "lifecycle")
        .iter()
        .map(|r| r["detail"]["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        to,
        [
            "verified",
            "loading",
            "initializing",
            "active",
            "stopping",
            "stopped"
        ]
    );
    // Every call, refused ones too, each with its own request id; params only where the
    // manifest allows, with secrets redacted.
    let calls = of_kind(&records, "call");
    assert_eq!(calls.len(), 7, "{calls:#?}");
    let mut ids: Vec<&str> = calls
        .iter()
        .map(|c| c["request_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 7, "a request id per call");
    assert_eq!(
        calls[0]["detail"]["params"],
        json!({ "text": "hello 0", "password": "<redacted>", "note": "<redacted>" })
    );
    assert_eq!(calls[0]["detail"]["outcome"], "ok");
    assert!(calls[0]["detail"]["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        (&calls[3]["detail"]["method"], &calls[3]["detail"]["code"]),
        (&json!("rm"), &json!(-32601))
    );
    assert_eq!(calls[5]["detail"]["code"], -32010, "the unknown plugin");
    assert_eq!(
        (&calls[6]["detail"]["method"], &calls[6]["detail"]["params"]),
        (&json!("go"), &Value::Null),
        "never logged unless the manifest says so"
    );
    let text = std::fs::read(d.dir.join("state/stockade.db")).unwrap();
    let wal = std::fs::read(d.dir.join("state/stockade.db-wal")).unwrap_or_default();
    for bytes in [&text, &wal] {
        assert!(
            !bytes.windows(7).any(|w| w == b"hunter2"),
            "a password reached the database"
        );
    }
    assert_eq!(of_kind(&records, "unload")[0]["actor"], 0);
    // Filters.
    assert_eq!(
        Daemon::audit(&db, &["--kind", "call", "--plugin", "nobody"]).len(),
        1
    );
    assert_eq!(
        Daemon::audit(&db, &["--since", "1h", "--kind", "load"]).len(),
        1
    );
    assert!(Daemon::audit(&db, &["--since", "2099-01-01T00:00:00Z"]).is_empty());
    // A clean stop is recorded; the chain holds.
    assert!(d.stop().success());
    let records = Daemon::audit(&db, &[]);
    assert_eq!(records.last().unwrap()["detail"]["event"], "stopped");
    let (code, verdict) = Daemon::audit_verify(&db);
    assert_eq!((code, &verdict["ok"]), (0, &json!(true)), "{verdict}");
    assert_eq!(
        verdict["chains"][0]["records"].as_u64().unwrap() as usize,
        records.len()
    );
    // The registry (written in order, flushed at the stop): the version, its capabilities,
    // this host's installation.
    let out = Command::new(harness::stockade())
        .args(["registry", "--json", "--database", &db])
        .output()
        .unwrap();
    let registry: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(registry["installations"][0]["plugin"], "echo");
    assert_eq!(registry["installations"][0]["state"], "stopped");
    assert_eq!(registry["plugins"][0]["trust"], "untrusted");
    let out = Command::new(harness::stockade())
        .args(["registry", "echo", "--json", "--database", &db])
        .output()
        .unwrap();
    let versions: Value = serde_json::from_slice(&out.stdout).unwrap();
    let caps = versions["versions"][0]["capabilities"].as_str().unwrap();
    assert!(caps.contains("filesystem"), "{caps}");
    assert!(versions["versions"][0]["signer"].is_string());
}

#[test]
fn tampering_with_the_database_is_found_by_audit_verify() {
    if !harness::privileged("tampering_with_the_database_is_found_by_audit_verify") {
        return;
    }
    let d = stopped_after_calls("audit-tamper", &[], 5);
    let db = d.database();
    let file = d.dir.join("state/stockade.db");
    assert_eq!(broken(&db), (0, 0, String::new()));
    // Edited: what a call returned.
    sqlite3(
        &file,
        "UPDATE audit SET detail = replace(detail, '\"ok\"', '\"error\"') WHERE seq = 9",
    );
    assert_eq!(broken(&db), (1, 9, "edited".into()));
    sqlite3(
        &file,
        "UPDATE audit SET detail = replace(detail, '\"error\"', '\"ok\"') WHERE seq = 9",
    );
    assert_eq!(broken(&db).0, 0, "restored");
    // Deleted: a record in the middle.
    sqlite3(
        &file,
        "CREATE TABLE saved AS SELECT * FROM audit WHERE seq = 4; DELETE FROM audit WHERE seq = 4",
    );
    assert_eq!(broken(&db), (1, 4, "missing".into()));
    sqlite3(
        &file,
        "INSERT INTO audit SELECT * FROM saved; DROP TABLE saved",
    );
    // Reordered: two records swap places.
    sqlite3(
        &file,
        "UPDATE audit SET seq = -1 WHERE seq = 6; UPDATE audit SET seq = 6 WHERE seq = 7; UPDATE audit SET seq = 7 WHERE seq = -1",
    );
    let (code, seq, _) = broken(&db);
    assert_eq!((code, seq), (1, 6));
    // The text output names the record.
    let out = Command::new(harness::stockade())
        .args(["audit", "verify", "--database", &db])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BROKEN at record 6"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hint:"),
        "{out:?}"
    );

    let Some(admin) =
        postgres::admin("tampering_with_the_database_is_found_by_audit_verify (PostgreSQL)")
    else {
        return;
    };
    let url = postgres::database(&admin, "tamper");
    let _d = stopped_after_calls("audit-tamper-pg", &["--database", &url], 5);
    assert_eq!(broken(&url), (0, 0, String::new()));
    postgres::psql(&url, "UPDATE audit SET at_ms = at_ms + 1 WHERE seq = 9");
    assert_eq!(broken(&url), (1, 9, "edited".into()));
    postgres::psql(&url, "UPDATE audit SET at_ms = at_ms - 1 WHERE seq = 9");
    postgres::psql(&url, "DELETE FROM audit WHERE seq = 3");
    assert_eq!(broken(&url), (1, 3, "missing".into()));
}

/// What the chain alone cannot see — its tail cut and its head moved back to match — the
/// daemon's signed checkpoint of the head (kept in its state directory, outside the database)
/// does; with the checkpoints the daemon wrote, `audit verify` says which record was signed.
#[test]
fn a_consistent_truncation_is_found_by_the_signed_checkpoint() {
    if !harness::privileged("a_consistent_truncation_is_found_by_the_signed_checkpoint") {
        return;
    }
    let d = stopped_after_calls("audit-checkpoint", &[], 5);
    let db = d.database();
    let file = d.dir.join("state/stockade.db");
    let signed = d.dir.join("state/audit/checkpoints.jsonl");
    assert!(
        signed.exists(),
        "the daemon keeps its checkpoints in its state directory"
    );
    let (code, verdict) = Daemon::audit_verify(&db);
    let head = verdict["chains"][0]["head_seq"].as_i64().unwrap();
    assert_eq!(code, 0, "{verdict}");
    assert_eq!(verdict["checked"][0]["verdict"], "holds", "{verdict}");
    assert_eq!(
        verdict["checked"][0]["seq"], head,
        "the head at stop is signed"
    );
    // Control: the chain's own check passes after the cut, so only the checkpoint can tell.
    sqlite3(
        &file,
        "DELETE FROM audit WHERE seq > 5; UPDATE audit_chains SET head_seq = 5, head_hash = (SELECT hash FROM audit WHERE seq = 5)",
    );
    let (code, verdict) = Daemon::audit_verify(&db);
    assert_eq!(code, 1, "{verdict}");
    assert!(verdict["chains"][0]["broken"].is_null(), "{verdict}");
    assert_eq!(verdict["checked"][0]["verdict"], "truncated", "{verdict}");
    let out = Command::new(harness::stockade())
        .args(["audit", "verify", "--database", &db])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BROKEN against its checkpoint"), "{text}");
    assert!(
        text.contains(&format!("record {head} was signed")),
        "{text}"
    );
    // A checkpoint file that is not there is a usage error in one line.
    let out = Command::new(harness::stockade())
        .args(["audit", "verify", "--database", &db, "--checkpoints"])
        .arg(d.dir.join("none.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no such file") && err.contains("hint:"),
        "{err}"
    );
}

#[test]
fn a_bad_database_stops_the_daemon_before_it_starts() {
    if !harness::privileged("a_bad_database_stops_the_daemon_before_it_starts") {
        return;
    }
    let d = Daemon::start("audit-bad", &[]);
    let db = d.dir.join("state/stockade.db");
    let mut d = d;
    assert!(d.stop().success());
    let run = |args: &[&str]| refused(&d, args);
    // Not a location.
    one_line_refusal(
        &run(&["--database", "mysql://db/x"]),
        "not a database location",
    );
    // A schema from a newer Stockade.
    sqlite3(
        &db,
        "INSERT INTO stockade_schema (version, description, applied_ms) VALUES (99, 'future', 0)",
    );
    one_line_refusal(&run(&[]), "newer than this Stockade's 1");
    // Not a database at all.
    std::fs::write(
        &db,
        b"not a database, just bytes, long enough to have a header..........",
    )
    .unwrap();
    let _ = std::fs::remove_file(d.dir.join("state/stockade.db-wal"));
    let _ = std::fs::remove_file(d.dir.join("state/stockade.db-shm"));
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hint:"),
        "{out:?}"
    );
    // Nobody answers there.
    one_line_refusal(
        &run(&["--database", "postgres://stockade:x@127.0.0.1:1/db"]),
        "127.0.0.1:1",
    );
    let Some(admin) =
        postgres::admin("a_bad_database_stops_the_daemon_before_it_starts (PostgreSQL)")
    else {
        return;
    };
    let missing = postgres::with_database(&admin, "no_such_database");
    one_line_refusal(
        &run(&["--database", &missing]),
        "the database does not exist",
    );
    let wrong = admin.replacen("stockade:", "stockade:x", 1);
    let out = run(&["--database", &wrong]);
    one_line_refusal(&out, "the password was refused");
    let password = admin
        .split_once("stockade:")
        .and_then(|(_, r)| r.split_once('@'))
        .unwrap()
        .0;
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(password),
        "the password was shown"
    );
}

#[test]
fn a_killed_daemon_loses_no_acknowledged_record() {
    if !harness::privileged("a_killed_daemon_loses_no_acknowledged_record") {
        return;
    }
    let mut d = Daemon::start("audit-crash", &[]);
    d.load(&echo_package(&d, "echo", "echo"));
    // A burst of calls from four threads; SIGKILL in the middle of it.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let socket = d.socket.clone();
    let callers: Vec<_> = (0..4)
        .map(|t| {
            let acked = acked.clone();
            let socket = socket.clone();
            std::thread::spawn(move || {
                for n in 0.. {
                    let token = format!("t{t}-{n}");
                    let Ok(mut s) = std::os::unix::net::UnixStream::connect(&socket) else {
                        return;
                    };
                    use std::io::{BufRead, Write};
                    let req = json!({"jsonrpc": "2.0", "id": 1, "method": "call",
                        "params": {"plugin": "echo", "method": "echo", "params": {"text": token}}});
                    if s.write_all(format!("{req}\n").as_bytes()).is_err() {
                        return;
                    }
                    let mut line = String::new();
                    if std::io::BufReader::new(s).read_line(&mut line).is_err() {
                        return;
                    }
                    match serde_json::from_str::<Value>(&line) {
                        Ok(v) if v.get("result").is_some() => acked.lock().unwrap().push(token),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    // Emulated (the VM runner), calls are about a hundred times slower.
    let want = if harness::emulated_vm() { 30 } else { 200 };
    let until = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < want && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    d.kill();
    for c in callers {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= want, "only {} calls answered", acked.len());
    let db = d.database();
    let recorded: std::collections::HashSet<String> =
        Daemon::audit(&db, &["--kind", "call", "--limit", "1000000"])
            .iter()
            .filter_map(|r| r["detail"]["params"]["text"].as_str().map(str::to_string))
            .collect();
    let missing: Vec<&String> = acked.iter().filter(|t| !recorded.contains(*t)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged calls have no record: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        Daemon::audit_verify(&db).0,
        0,
        "the chain holds after SIGKILL"
    );
    // The next daemon says what the dead one left running.
    d.spawn(&[]);
    let started = Daemon::audit(&db, &["--kind", "daemon"]);
    let last = started.last().unwrap();
    assert_eq!(last["detail"]["event"], "started");
    assert_eq!(
        last["detail"]["left_running_by_a_previous_daemon"],
        json!(["echo"])
    );
    // SIGKILL during a load: the next daemon starts, the chain holds, nothing says active.
    let load = d.request_in_background(
        "plugin.load",
        json!({ "dir": echo_package(&d, "echo2", "echo") }),
    );
    std::thread::sleep(Duration::from_millis(150));
    d.kill();
    let _ = load.join();
    d.spawn(&[]);
    assert_eq!(Daemon::audit_verify(&db).0, 0);
    let out = d.cli(&["registry", "--json", "--database", &db]);
    let registry: Value = serde_json::from_slice(&out.stdout).unwrap();
    for i in registry["installations"].as_array().unwrap() {
        assert_eq!(i["state"], "stopped", "{registry}");
    }
    let dir = echo_package(&d, "echo3", "echo");
    d.load(&dir);
    assert_eq!(
        d.call("echo", "echo", json!({ "text": "again" })).unwrap()["text"],
        "again"
    );
    assert!(d.stop().success());
    assert_eq!(Daemon::audit_verify(&db).0, 0);
}

#[test]
fn two_daemons_share_one_postgresql_registry() {
    if !harness::privileged("two_daemons_share_one_postgresql_registry") {
        return;
    }
    let Some(admin) = postgres::admin("two_daemons_share_one_postgresql_registry") else {
        return;
    };
    let url = postgres::database(&admin, "fleet");
    let mut a = Daemon::start("fleet-a", &["--database", &url, "--host-id", "host-a"]);
    let mut b = Daemon::start("fleet-b", &["--database", &url, "--host-id", "host-b"]);
    a.load(&a.package("echo", "echo", "1.0.0", "serve", ""));
    b.load(&b.package("echo", "echo", "1.1.0", "serve", ""));
    // Both write at once.
    let calls = |d: &Daemon, host: &str| {
        for n in 0..100 {
            d.call("echo", "echo", json!({ "text": format!("{host}-{n}") }))
                .unwrap();
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| calls(&a, "a"));
        s.spawn(|| calls(&b, "b"));
    });
    // Each sees the other's installation.
    let out = a.cli(&["registry", "--json", "--database", &url]);
    let registry: Value = serde_json::from_slice(&out.stdout).unwrap();
    let seen: Vec<(String, String, String)> = registry["installations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["host"].as_str().unwrap().to_string(),
                i["version"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("host-a".into(), "1.0.0".into(), "active".into()),
            ("host-b".into(), "1.1.0".into(), "active".into())
        ]
    );
    assert_eq!(registry["hosts"].as_array().unwrap().len(), 2);
    let versions: Value = serde_json::from_slice(
        &a.cli(&["registry", "echo", "--json", "--database", &url])
            .stdout,
    )
    .unwrap();
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
    // Each host's own chain; both hold; each has its own 100 calls.
    assert!(a.stop().success());
    assert!(b.stop().success());
    let (code, verdict) = Daemon::audit_verify(&url);
    assert_eq!(code, 0, "{verdict}");
    assert_eq!(verdict["chains"].as_array().unwrap().len(), 2);
    for host in ["host-a", "host-b"] {
        assert_eq!(
            Daemon::audit(&url, &["--host", host, "--kind", "call"]).len(),
            100
        );
    }
    // A second daemon claiming host-a's id while host-a runs is refused before it writes
    // anything; host-a goes on.
    a.spawn(&["--database", &url, "--host-id", "host-a"]);
    let out = b
        .command()
        .args(["--database", &url, "--host-id", "host-a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another daemon runs as host `host-a`"),
        "{err}"
    );
    assert!(!b.socket.exists());
    a.load(&a.package("echo2", "echo", "1.0.0", "serve", ""));
    assert!(a.stop().success());
    assert_eq!(Daemon::audit_verify(&url).0, 0);
}

#[test]
fn a_postgresql_restart_is_survived_and_a_full_queue_refuses_new_work() {
    if !harness::privileged("a_postgresql_restart_is_survived_and_a_full_queue_refuses_new_work") {
        return;
    }
    let Some(server) = postgres::Server::start(
        "a_postgresql_restart_is_survived_and_a_full_queue_refuses_new_work",
    ) else {
        return;
    };
    let config = harness::scratch_dir("pg-restart-config").join("daemon.toml");
    std::fs::write(&config, "[audit]\nqueue = 20\nwait = 10\n").unwrap();
    let config = config.to_string_lossy().into_owned();
    let mut d = Daemon::start(
        "pg-restart",
        &["--database", &server.url, "--config", &config],
    );
    d.load(&echo_package(&d, "echo", "echo"));
    // A restart while calls go on: they wait, none is lost, none fails.
    let caller = {
        let socket = d.socket.clone();
        std::thread::spawn(move || {
            let mut answered = 0;
            for n in 0..40 {
                let out = Command::new(harness::stockade())
                    .args([
                        "call",
                        "echo",
                        "echo",
                        &json!({ "text": format!("r{n}") }).to_string(),
                    ])
                    .env("STOCKADE_SOCKET", &socket)
                    .output()
                    .unwrap();
                if out.status.success() {
                    answered += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            answered
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    server.restart();
    assert_eq!(
        caller.join().unwrap(),
        40,
        "every call answered across the restart"
    );
    // Down for longer: an answer waits at most `wait`, then says why (its record is kept and
    // committed later); once the queue is full, new calls and loads are refused before anything
    // happens.
    server.pause();
    let waiting: Vec<_> = (0..25)
        .map(|n| {
            d.request_in_background(
                "call",
                json!({ "plugin": "echo", "method": "echo", "params": { "text": format!("down {n}") } }),
            )
        })
        .collect();
    // Once their records fill the queue, a call is refused before it runs (a probe that came
    // too early runs, and waits for its record like the others).
    std::thread::sleep(Duration::from_millis(1000));
    let mut n = 0;
    let refused = loop {
        let text = format!("probe {n}");
        match d.call("echo", "echo", json!({ "text": text })) {
            Err(e) if e["message"].as_str().unwrap_or("").contains("is full") => {
                assert_eq!(e["code"], -32017, "{e}");
                break text;
            }
            _ => {}
        }
        n += 1;
        assert!(n < 4, "the queue never filled");
    };
    // Each waiting call either ran and was told its record is not committed yet (kept, to be
    // committed later), or came after the queue filled and was refused before it ran (no
    // record): which ones did depends on the order the daemon took them in.
    let mut kept = Vec::new();
    let mut turned_away = Vec::new();
    for (n, w) in waiting.into_iter().enumerate() {
        let answer: Value = serde_json::from_str(&w.join().unwrap()).unwrap();
        let message = answer["error"]["message"].as_str().unwrap_or("");
        if message.contains("not committed") {
            kept.push(format!("down {n}"));
        } else {
            assert!(message.contains("is full"), "{answer}");
            turned_away.push(format!("down {n}"));
        }
    }
    assert!(!kept.is_empty(), "no call ran while the server was down");
    let err = d
        .request(
            "plugin.load",
            json!({ "dir": echo_package(&d, "other", "other") }),
        )
        .unwrap_err();
    assert_eq!(err["code"], -32017);
    assert!(
        d.status("echo")["state"] == "active",
        "the plugin keeps running"
    );
    server.resume();
    // The queued records are committed; work is accepted again.
    let until = Instant::now() + Duration::from_secs(30);
    while d.call("echo", "echo", json!({ "text": "after" })).is_err() {
        assert!(
            Instant::now() < until,
            "calls are not accepted again: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d.stop().success());
    let texts: Vec<String> = Daemon::audit(&server.url, &["--kind", "call", "--limit", "100000"])
        .iter()
        .filter_map(|r| r["detail"]["params"]["text"].as_str().map(str::to_string))
        .collect();
    for text in &kept {
        assert!(
            texts.contains(text),
            "{text}: the records kept while the server was down were committed"
        );
    }
    for text in turned_away.iter().chain([&refused]) {
        assert!(!texts.contains(text), "{text}: a refused call did not run");
    }
    for n in 0..40 {
        assert!(texts.contains(&format!("r{n}")), "r{n} missing");
    }
    let (code, verdict) = Daemon::audit_verify(&server.url);
    assert_eq!(code, 0, "{verdict}");
}

#[test]
fn retention_exports_before_it_removes_and_both_halves_verify() {
    if !harness::privileged("retention_exports_before_it_removes_and_both_halves_verify") {
        return;
    }
    let mut d = stopped_after_calls("audit-retention", &[], 15);
    let db = d.database();
    let before = Daemon::audit(&db, &["--limit", "100000"]).len();
    assert!(before > 20, "{before} records");
    // Restarted with a bound of 8 records: the older ones are exported, then removed.
    let export_dir = d.dir.join("exports");
    let config = d.dir.join("retention.toml");
    std::fs::write(
        &config,
        format!(
            "[audit]\nretain_records = 8\nexport_dir = \"{}\"\n",
            export_dir.display()
        ),
    )
    .unwrap();
    d.spawn(&["--config", &config.to_string_lossy()]);
    let until = Instant::now() + Duration::from_secs(30);
    let file = loop {
        let found: Vec<_> = std::fs::read_dir(&export_dir)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if let Some(f) = found
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        {
            break f;
        }
        assert!(Instant::now() < until, "no export: {}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    let cut = Daemon::audit(&db, &["--kind", "audit"]);
    assert_eq!(cut.len(), 1, "the cut is recorded: {cut:?}");
    assert_eq!(cut[0]["detail"]["event"], "retention");
    let exported = std::fs::read_to_string(&file).unwrap().lines().count();
    assert_eq!(exported as i64, cut[0]["detail"]["to"].as_i64().unwrap());
    assert!(exported >= before - 8, "{exported} exported of {before}");
    assert!(d.stop().success());
    // Both halves verify, and the export joins the database's chain.
    let (code, verdict) = Daemon::audit_verify(&db);
    assert_eq!(code, 0, "{verdict}");
    assert_eq!(
        verdict["chains"][0]["base_seq"].as_i64().unwrap(),
        exported as i64
    );
    let out = d.cli(&[
        "audit",
        "verify",
        "--database",
        &db,
        "--export",
        &file.to_string_lossy(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("join the database's chain"), "{text}");
    // An export edited later is found.
    let edited = std::fs::read_to_string(&file)
        .unwrap()
        .replacen("started", "restarted", 1);
    std::fs::write(&file, edited).unwrap();
    let out = d.cli(&[
        "audit",
        "verify",
        "--database",
        &db,
        "--export",
        &file.to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("BROKEN at record 1"),
        "{out:?}"
    );
}

/// A small tmpfs of the test's own, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: std::path::PathBuf, size: &str) -> SmallDisk {
        use std::ffi::CString;
        std::fs::create_dir_all(&dir).unwrap();
        let target = CString::new(dir.to_str().unwrap()).unwrap();
        let options = CString::new(format!("size={size},mode=0700")).unwrap();
        // SAFETY: mount(2) with NUL-terminated strings that live across the call; the target is
        // a directory this test created.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        SmallDisk(dir)
    }

    /// Fills what is left of it with a file; returns the file.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("ballast");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Whatever a partial block left.
        while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: unmounting the tmpfs this test mounted, by its path.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_full_disk_stops_the_daemon_from_starting_and_then_from_acting() {
    if !harness::privileged("a_full_disk_stops_the_daemon_from_starting_and_then_from_acting") {
        return;
    }
    let mut d = Daemon::start("audit-full", &[]);
    assert!(d.stop().success());
    let disk = SmallDisk::mount(d.dir.join("small"), "4m");
    let database = format!("sqlite:{}", disk.0.join("stockade.db").display());
    let config = d.dir.join("full.toml");
    std::fs::write(&config, "[audit]\nwait = 2\nqueue = 50\n").unwrap();
    let config = config.to_string_lossy().into_owned();
    let args = ["--database", database.as_str(), "--config", config.as_str()];
    // Full before the start: refused in one line with a hint, nothing left listening.
    let ballast = disk.fill();
    let out = refused(&d, &args);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("full"), "{err}");
    assert!(
        err.lines()
            .last()
            .unwrap()
            .trim_start()
            .starts_with("hint: "),
        "{err}"
    );
    // Room again: it starts and serves.
    std::fs::remove_file(&ballast).unwrap();
    d.spawn(&args);
    d.load(&echo_package(&d, "echo", "echo"));
    d.call("echo", "echo", json!({ "text": "before" })).unwrap();
    // Full while running: a call's answer is withheld (its record waits), the plugin runs on.
    let ballast = disk.fill();
    let e = d
        .call("echo", "echo", json!({ "text": "while full" }))
        .unwrap_err();
    assert_eq!(e["code"], -32017, "{e}");
    assert!(e["message"].as_str().unwrap().contains("full"), "{e}");
    assert_eq!(d.status("echo")["state"], "active");
    // Room again: the waiting record is committed, calls are answered.
    std::fs::remove_file(&ballast).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while d.call("echo", "echo", json!({ "text": "after" })).is_err() {
        assert!(Instant::now() < until, "not answering again: {}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.stop().success());
    let texts: Vec<String> = Daemon::audit(&database, &["--kind", "call"])
        .iter()
        .filter_map(|r| r["detail"]["params"]["text"].as_str().map(str::to_string))
        .collect();
    assert!(texts.contains(&"while full".to_string()), "{texts:?}");
    assert_eq!(Daemon::audit_verify(&database).0, 0);
}
