//! Signed packages for real: the CLI's keys, signatures and offline verification; a real daemon
//! that refuses each kind of tampering with its own reason and starts nothing; the rollback
//! ratchet; key rotation across a restart; the encrypted trust list; and a file swapped while
//! the daemon verifies and runs it, many times over.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use harness::daemon::{generate_key, sign, Daemon};
use serde_json::{json, Value};

fn stockade(args: &[&str]) -> Output {
    Command::new(harness::stockade())
        .args(args)
        .output()
        .expect("run stockade")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A refusal in the CLI's voice: exit code, one `stockade: error:` line holding `reason`, a hint.
fn assert_refused(out: &Output, code: i32, reason: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{reason}: {out:?}");
    let first = err.lines().next().unwrap_or("");
    assert!(first.starts_with("stockade: error: "), "{err}");
    assert!(first.contains(reason), "expected {reason:?} in:\n{err}");
    assert!(
        err.lines()
            .nth(1)
            .is_some_and(|l| l.trim_start().starts_with("hint: ")),
        "{err}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Flips the lowest bit of the first byte of `within` in the file (a change that keeps TOML
/// valid when `within` is inside a string or a comment).
fn flip_bit(path: &Path, within: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(within.len())
        .position(|w| w == within.as_bytes())
        .unwrap_or_else(|| panic!("{within:?} not in {}", path.display()));
    bytes[at] ^= 1;
    std::fs::write(path, bytes).unwrap();
}

/// The daemon started nothing and keeps nothing for refused packages.
fn assert_nothing_started(d: &Daemon, loaded: usize) {
    let list = d.request("plugin.list", json!({})).unwrap();
    assert_eq!(list.as_array().unwrap().len(), loaded, "{list}");
    assert_eq!(d.cgroups().len(), loaded, "cgroups: {:?}", d.cgroups());
    assert_eq!(d.sealed_copies().len(), loaded, "{:?}", d.sealed_copies());
}

/// A change made to a copy of a signed package.
type Change<'a> = Box<dyn Fn(&Path) + 'a>;

const POLICY_COMMENT: &str = "# the test plugin's own policy\n";

/// Every change made after signing — a bit of the entry, of the manifest, of the policy; a file
/// added or removed — and every signature that does not belong (an unpinned key, a revoked key,
/// another plugin's signature, an expired one, a corrupt file, none at all) is refused with its
/// own reason, and the daemon starts nothing for it; the untouched package then loads.
#[test]
fn each_change_after_signing_is_refused_with_its_own_reason() {
    if !harness::privileged("each_change_after_signing_is_refused_with_its_own_reason") {
        return;
    }
    let aux = harness::scratch_dir("trust-refusals-aux");
    let (stranger, _) = generate_key(&aux, "stranger");
    let (revoked, revoked_pub) = generate_key(&aux, "revoked");
    let revoked_id = key_id(&revoked_pub);
    let config = aux.join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "[trust]\nkeys = [\"{}\"]\nrevoked = [\"{revoked_id}\"]\n",
            revoked_pub.display()
        ),
    )
    .unwrap();
    let d = Daemon::start("trust-refusals", &["--config", config.to_str().unwrap()]);
    let policy = format!(
        "{POLICY_COMMENT}{}",
        std::fs::read_to_string(harness::default_profile()).unwrap()
    );
    let good = d.package_with(
        "good",
        "good",
        "1.0.0",
        "echo",
        "",
        "untrusted",
        Some(&policy),
    );
    std::fs::create_dir_all(good.join("data")).unwrap();
    std::fs::write(good.join("data/notes.txt"), "kept with the plugin\n").unwrap();
    d.sign(&good);
    let other = d.package("other", "other", "1.0.0", "echo", "");

    let cases: Vec<(&str, Change, String)> = vec![
        (
            "entry",
            Box::new(|p: &Path| flip_bit(&p.join("plugin.py"), "Every request")),
            "plugin.py: its bytes are not the signed ones".into(),
        ),
        (
            "manifest",
            Box::new(|p: &Path| flip_bit(&p.join("plugin.toml"), "test plugin")),
            "plugin.toml: its bytes are not the signed ones".into(),
        ),
        (
            "policy",
            Box::new(|p: &Path| flip_bit(&p.join("policy.toml"), "own policy")),
            "policy.toml: its bytes are not the signed ones".into(),
        ),
        (
            "added",
            Box::new(|p: &Path| std::fs::write(p.join("extra.py"), "print('hi')\n").unwrap()),
            "extra.py: added after signing".into(),
        ),
        (
            "removed",
            Box::new(|p: &Path| std::fs::remove_file(p.join("data/notes.txt")).unwrap()),
            "data/notes.txt: removed after signing".into(),
        ),
        (
            "unpinned",
            Box::new(|p: &Path| {
                let out = sign(p, &stranger, &["--sequence", "50"]);
                assert!(out.status.success(), "{out:?}");
            }),
            format!(
                "signed by key {}, which this host does not trust",
                key_id(&stranger.with_extension("pub"))
            ),
        ),
        (
            "revoked",
            Box::new(|p: &Path| {
                let out = sign(p, &revoked, &["--sequence", "51"]);
                assert!(out.status.success(), "{out:?}");
            }),
            format!("signed by key {revoked_id}, which is revoked"),
        ),
        (
            "another plugin's signature",
            Box::new(|p: &Path| {
                std::fs::copy(other.join("stockade.sig"), p.join("stockade.sig")).unwrap();
            }),
            "the signature is for plugin `other`, and this package is plugin `good`".into(),
        ),
        (
            "unsigned",
            Box::new(|p: &Path| std::fs::remove_file(p.join("stockade.sig")).unwrap()),
            "the package is not signed (no stockade.sig)".into(),
        ),
        (
            "corrupt signature",
            Box::new(|p: &Path| {
                let sig = std::fs::read_to_string(p.join("stockade.sig")).unwrap();
                std::fs::write(p.join("stockade.sig"), &sig[..sig.len() / 2]).unwrap();
            }),
            "stockade.sig is not a signature: line".into(),
        ),
        (
            "a changed signature",
            Box::new(|p: &Path| {
                // Still a well-formed statement, now saying another sequence.
                let sig = std::fs::read_to_string(p.join("stockade.sig")).unwrap();
                let changed: Vec<String> = sig
                    .lines()
                    .map(|l| {
                        if l.starts_with("sequence ") {
                            "sequence 999".to_string()
                        } else {
                            l.to_string()
                        }
                    })
                    .collect();
                std::fs::write(p.join("stockade.sig"), changed.join("\n") + "\n").unwrap();
            }),
            "the signature does not verify with key".into(),
        ),
    ];
    for (i, (what, change, reason)) in cases.iter().enumerate() {
        let copy = d.dir.join(format!("packages/case-{i}"));
        copy_dir(&good, &copy);
        change(&copy);
        let out = d.cli(&["plugin", "load", copy.to_str().unwrap()]);
        assert_refused(&out, 1, reason);
        eprintln!(
            "{what}: refused: {}",
            stderr(&out).lines().next().unwrap_or("")
        );
        assert_nothing_started(&d, 0);
    }

    // Expired: signed to expire in one second.
    let expiring = d.dir.join("packages/expiring");
    copy_dir(&good, &expiring);
    let n = d
        .sequence
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        .to_string();
    let out = sign(&expiring, &d.key, &["--sequence", &n, "--expires", "1s"]);
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_millis(2100));
    let out = d.cli(&["plugin", "load", expiring.to_str().unwrap()]);
    assert_refused(&out, 1, "the signature expired at ");
    assert_nothing_started(&d, 0);

    // Each refusal is an event with its kind.
    let kinds: Vec<String> = d
        .events()
        .iter()
        .filter(|e| e["type"] == "trust" && e["decision"] == "refused")
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect();
    for kind in [
        "changed",
        "unknown-key",
        "revoked-key",
        "other-plugin",
        "unsigned",
        "corrupt-signature",
        "bad-signature",
        "expired",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }

    // The control: the package as signed loads, runs from its sealed copy, and answers.
    let status = d.load(&good);
    assert_eq!(status["state"], "active");
    assert_eq!(
        status["signer"]["key"],
        key_id(&d.key.with_extension("pub"))
    );
    let sealed = PathBuf::from(status["runs_from"].as_str().unwrap());
    assert!(sealed.starts_with(d.dir.join("state/store")), "{sealed:?}");
    // Open to the plugin's own ids only: other users on the host cannot read the copy.
    use std::os::unix::fs::MetadataExt;
    let top = std::fs::metadata(&sealed).unwrap();
    assert_eq!(top.mode() & 0o777, 0o750, "{sealed:?}");
    assert_ne!(top.gid(), 0);
    assert_eq!(
        d.call("good", "echo", json!({ "text": "signed" })).unwrap()["text"],
        "signed"
    );
    assert_nothing_started(&d, 1);
    drop(d);
    std::fs::remove_dir_all(&aux).unwrap();
}

/// The 16-hex-digit id in a `.pub` file's comment line.
fn key_id(public: &Path) -> String {
    let text = std::fs::read_to_string(public).unwrap();
    text.lines()
        .next()
        .and_then(|l| l.rsplit("id ").next())
        .unwrap()
        .trim()
        .to_string()
}

/// An older package is refused even though properly signed — an older version, an older
/// sequence, or another package under an accepted sequence — across a daemon restart; the
/// operator's --allow-downgrade lets it in and is recorded with the caller's uid.
#[test]
fn older_packages_are_refused_until_the_operator_allows_it() {
    if !harness::privileged("older_packages_are_refused_until_the_operator_allows_it") {
        return;
    }
    let mut d = Daemon::start("trust-ratchet", &[]);
    let v1 = d.package("v1", "rolled", "1.0.0", "echo", "");
    let v2 = d.package("v2", "rolled", "2.0.0", "echo", "");
    d.load(&v2);
    let out = d.cli(&["plugin", "unload", "rolled"]);
    assert!(out.status.success(), "{out:?}");
    d.restart(&[]);
    let out = d.cli(&["plugin", "load", v1.to_str().unwrap()]);
    assert_refused(
        &out,
        1,
        "plugin `rolled`: version 1.0.0 is older than version 2.0.0, accepted before",
    );
    assert_nothing_started(&d, 0);
    // The same version signed again with an older sequence: a replay of an older signature.
    let replay = d.dir.join("packages/replay");
    copy_dir(&v2, &replay);
    let out = sign(&replay, &d.key, &["--sequence", "1"]);
    assert!(out.status.success(), "{out:?}");
    let out = d.cli(&["plugin", "load", replay.to_str().unwrap()]);
    assert_refused(&out, 1, "signature sequence 1 is older than sequence 2");
    // Another package under the accepted sequence.
    let reused = d.dir.join("packages/reused");
    copy_dir(&v2, &reused);
    std::fs::write(reused.join("extra.txt"), "x\n").unwrap();
    let out = sign(&reused, &d.key, &["--sequence", "2"]);
    assert!(out.status.success(), "{out:?}");
    let out = d.cli(&["plugin", "load", reused.to_str().unwrap()]);
    assert_refused(
        &out,
        1,
        "signature sequence 2 was accepted before for another package",
    );
    // The same package again: accepted.
    d.load(&v2);
    let out = d.cli(&["plugin", "unload", "rolled"]);
    assert!(out.status.success());
    // The operator's override.
    let out = d.cli(&["plugin", "load", "--allow-downgrade", v1.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let accepted = d
        .events()
        .into_iter()
        .find(|e| e["type"] == "trust" && e["decision"] == "accepted" && !e["downgrade"].is_null())
        .expect("an accepted downgrade event");
    assert_eq!(accepted["downgrade"]["allowed_by_uid"], 0);
    assert!(accepted["downgrade"]["was"]
        .as_str()
        .unwrap()
        .contains("older than version 2.0.0"));
    // Now 1.0.0 is what the host runs: 2.0.0 is newer and loads by upgrade.
    let out = d.cli(&["plugin", "upgrade", "rolled", v2.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    // Another key the host pins may not take the plugin over from its publisher.
    let (other, other_pub) = generate_key(&d.dir.join("keys"), "other");
    let out = d.cli(&["plugin", "unload", "rolled"]);
    assert!(out.status.success());
    d.restart(&["--pubkey", other_pub.to_str().unwrap()]);
    let v3 = d.package("v3", "rolled", "3.0.0", "echo", "");
    let out = sign(&v3, &other, &["--sequence", "99"]);
    assert!(out.status.success(), "{out:?}");
    let out = d.cli(&["plugin", "load", v3.to_str().unwrap()]);
    assert_refused(
        &out,
        1,
        &format!(
            "signed by key {}, where key {} signed the version accepted before",
            key_id(&other_pub),
            key_id(&d.key.with_extension("pub"))
        ),
    );
}

/// A publisher rotates its key: the new key, vouched for by the old one (and signing for
/// itself), is trusted once a package carries the rotation; the host remembers it, so after the
/// operator revokes the old key, packages of the old key are refused and those of the new one
/// load.
#[test]
fn a_rotated_key_takes_over_from_a_revoked_one() {
    if !harness::privileged("a_rotated_key_takes_over_from_a_revoked_one") {
        return;
    }
    let mut d = Daemon::start("trust-rotation", &[]);
    let keys = d.dir.join("keys");
    let (new, _) = generate_key(&keys, "publisher-2027");
    let by_new = d.package("by-new", "rotated", "1.0.0", "echo", "");
    let out = sign(&by_new, &new, &["--sequence", "100"]);
    assert!(out.status.success());
    let new_id = key_id(&new.with_extension("pub"));
    let out = d.cli(&["plugin", "load", by_new.to_str().unwrap()]);
    assert_refused(
        &out,
        1,
        &format!("signed by key {new_id}, which this host does not trust"),
    );

    // A rotation signed by the new key alone (a stranger claiming to succeed the old key).
    let (mallory, _) = generate_key(&keys, "mallory");
    let forged = keys.join("forged.rotation");
    let out = stockade(&[
        "key",
        "rotate",
        "--from",
        mallory.to_str().unwrap(),
        "--to",
        new.to_str().unwrap(),
        "--out",
        forged.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    std::fs::copy(&forged, by_new.join("stockade.rotation")).unwrap();
    let out = d.cli(&["plugin", "load", by_new.to_str().unwrap()]);
    assert_refused(&out, 1, "the rotation is from key");
    assert_nothing_started(&d, 0);

    // The real rotation, old key to new.
    let rotation = keys.join("publisher-2027.rotation");
    let out = stockade(&[
        "key",
        "rotate",
        "--from",
        d.key.to_str().unwrap(),
        "--to",
        new.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(rotation.exists());
    std::fs::copy(&rotation, by_new.join("stockade.rotation")).unwrap();
    let status = d.load(&by_new);
    assert_eq!(status["signer"]["key"], new_id);
    assert_eq!(
        status["signer"]["pinned_as"],
        format!("rotated from key {}", key_id(&d.key.with_extension("pub")))
    );
    d.wait_event(5, "key-rotated", |e| e["decision"] == "key-rotated");
    let out = d.cli(&["plugin", "unload", "rotated"]);
    assert!(out.status.success());

    // The old key revoked; the host restarted.
    let old_id = key_id(&d.key.with_extension("pub"));
    let config = d.dir.join("revoke.toml");
    std::fs::write(&config, format!("[trust]\nrevoked = [\"{old_id}\"]\n")).unwrap();
    d.restart(&["--config", config.to_str().unwrap()]);
    let by_old = d.package("by-old", "old", "1.0.0", "echo", "");
    let out = d.cli(&["plugin", "load", by_old.to_str().unwrap()]);
    assert_refused(
        &out,
        1,
        &format!("signed by key {old_id}, which is revoked"),
    );
    // A package of the new key without the rotation file: the host remembers the rotation.
    std::fs::remove_file(by_new.join("stockade.rotation")).unwrap();
    let status = d.load(&by_new);
    assert_eq!(status["state"], "active");
    assert_eq!(
        d.call("rotated", "echo", json!({ "text": "new key" }))
            .unwrap()["text"],
        "new key"
    );
}

fn write_list(dir: &Path, key: &Path, name: &str, plain: &str) -> PathBuf {
    let plain_path = dir.join(format!("{name}.toml"));
    std::fs::write(&plain_path, plain).unwrap();
    let list = dir.join(format!("{name}.list"));
    let out = stockade(&[
        "trust-list",
        "seal",
        plain_path.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--out",
        list.to_str().unwrap(),
        "--force",
    ]);
    assert!(out.status.success(), "{out:?}");
    list
}

/// The operator's trust list decides which plugins, versions and signers run; a list that was
/// tampered with, truncated, sealed under another key or older than one the host used stops the
/// daemon from starting at all (never partially used).
#[test]
fn the_trust_list_decides_and_a_bad_one_stops_the_daemon() {
    if !harness::privileged("the_trust_list_decides_and_a_bad_one_stops_the_daemon") {
        return;
    }
    let mut d = Daemon::start("trust-list", &[]);
    let lists = d.dir.join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    let list_key = lists.join("list.key");
    let out = stockade(&["trust-list", "new-key", "--out", list_key.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let publisher = key_id(&d.key.with_extension("pub"));
    let list = write_list(
        &lists,
        &list_key,
        "v3",
        &format!("serial = 3\n[plugins.listed]\nversions = \"<2\"\nkeys = [\"{publisher}\"]\n"),
    );
    let config = d.dir.join("list.toml");
    std::fs::write(
        &config,
        format!(
            "[trust]\ntrust_list = \"{}\"\ntrust_list_key = \"{}\"\n",
            list.display(),
            list_key.display()
        ),
    )
    .unwrap();
    d.restart(&["--config", config.to_str().unwrap()]);
    let listed = d.package("listed", "listed", "1.0.0", "echo", "");
    let unlisted = d.package("unlisted", "unlisted", "1.0.0", "echo", "");
    let too_new = d.package("too-new", "listed", "2.0.0", "echo", "");
    d.load(&listed);
    let out = d.cli(&["plugin", "load", unlisted.to_str().unwrap()]);
    assert_refused(&out, 1, "plugin `unlisted` is not on the trust list");
    let out = d.cli(&["plugin", "upgrade", "listed", too_new.to_str().unwrap()]);
    assert_refused(
        &out,
        1,
        "the trust list allows plugin `listed` only in versions <2, not 2.0.0",
    );
    assert_nothing_started(&d, 1);
    assert!(d.stop().success());

    // Bad lists: the daemon refuses to start, with the reason, and leaves no socket.
    let sealed = std::fs::read(&list).unwrap();
    let mut flipped = sealed.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    let other_key = lists.join("other.key");
    let out = stockade(&[
        "trust-list",
        "new-key",
        "--out",
        other_key.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let older = write_list(&lists, &list_key, "v2", "serial = 2\n[plugins.listed]\n");
    let bad: Vec<(&str, Vec<u8>, &Path, &str)> = vec![
        (
            "tampered",
            flipped,
            &list_key,
            "the trust list does not decrypt",
        ),
        (
            "truncated",
            sealed[..sealed.len() - 7].to_vec(),
            &list_key,
            "the trust list does not decrypt",
        ),
        (
            "another key",
            sealed.clone(),
            &other_key,
            "the trust list does not decrypt",
        ),
        (
            "older",
            std::fs::read(&older).unwrap(),
            &list_key,
            "serial 2 is older than serial 3, used before on this host",
        ),
    ];
    for (what, bytes, key, reason) in bad {
        let path = lists.join("bad.list");
        std::fs::write(&path, bytes).unwrap();
        let config = d.dir.join("bad.toml");
        std::fs::write(
            &config,
            format!(
                "[trust]\ntrust_list = \"{}\"\ntrust_list_key = \"{}\"\n",
                path.display(),
                key.display()
            ),
        )
        .unwrap();
        let out = d
            .command()
            .args(["--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        assert!(err.contains(reason), "{what}: {err}");
        assert!(err.contains("hint: "), "{what}: {err}");
        assert!(!d.socket.exists(), "{what}: a socket was left");
        eprintln!("{what}: {}", err.lines().last().unwrap_or(""));
    }
}

/// Verify-then-exec: while the daemon loads a package again and again, another thread swaps its
/// entry between the signed bytes and other bytes (by rename and by writing in place). Every
/// load either is refused (the snapshot read other bytes) or runs the signed bytes — never the
/// others; and once loaded, a restart after the source was replaced runs the sealed copy.
#[test]
fn a_file_swapped_during_verification_never_runs() {
    if !harness::privileged("a_file_swapped_during_verification_never_runs") {
        return;
    }
    let d = Daemon::start("trust-race", &[]);
    // Room for the start under emulation with the racer running beside it.
    let pkg = d.package(
        "raced",
        "raced",
        "1.0.0",
        "echo",
        "restart = \"always\"\ninit_timeout = \"60s\"",
    );
    let pause = if harness::emulated_vm() {
        Duration::from_millis(3)
    } else {
        Duration::from_micros(300)
    };
    let good = std::fs::read(pkg.join("plugin.py")).unwrap();
    // The other bytes: a plugin that would fail its start (and say so), were it ever run.
    let evil = b"#!/bin/sh\necho 'the swapped-in bytes ran' >&2\nexit 7\n".to_vec();
    let spare = d.dir.join("spare");
    std::fs::create_dir_all(&spare).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let (stop, pkg, spare, good, evil) = (
            stop.clone(),
            pkg.clone(),
            spare.clone(),
            good.clone(),
            evil.clone(),
        );
        std::thread::spawn(move || {
            use std::os::unix::fs::PermissionsExt;
            let target = pkg.join("plugin.py");
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, bytes) in [&evil, &good].into_iter().enumerate() {
                    if swaps.is_multiple_of(2) {
                        // By rename: a whole other file under the entry's name.
                        let tmp = spare.join(format!("swap-{i}"));
                        std::fs::write(&tmp, bytes).unwrap();
                        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                            .unwrap();
                        std::fs::rename(&tmp, &target).unwrap();
                    } else {
                        // In place: the same inode, rewritten.
                        std::fs::write(&target, bytes).unwrap();
                    }
                    std::thread::sleep(pause);
                }
                swaps += 1;
            }
            swaps
        })
    };
    let rounds = if harness::emulated_vm() { 12 } else { 40 };
    let (mut ran, mut refused) = (0, 0);
    for round in 0..rounds {
        match d.request("plugin.load", json!({ "dir": pkg })) {
            Ok(status) => {
                ran += 1;
                assert_eq!(status["state"], "active", "round {round}: {status}");
                let sealed = PathBuf::from(status["runs_from"].as_str().unwrap());
                assert_eq!(std::fs::read(sealed.join("plugin.py")).unwrap(), good);
                assert_eq!(
                    d.call("raced", "echo", json!({ "text": round.to_string() }))
                        .unwrap()["text"],
                    round.to_string()
                );
                d.request("plugin.unload", json!({ "id": "raced" }))
                    .unwrap();
            }
            Err(e) => {
                refused += 1;
                let message = e["message"].as_str().unwrap_or("");
                assert_eq!(e["code"], -32016, "round {round}: not a trust refusal: {e}");
                assert!(
                    message.contains("plugin.py: its bytes are not the signed ones"),
                    "round {round}: {e}"
                );
            }
        }
        assert!(
            !d.log().contains("the swapped-in bytes ran"),
            "round {round}: the swapped-in bytes ran"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    eprintln!("{rounds} loads under {swaps} swaps: {ran} ran the signed bytes, {refused} refused");
    assert!(swaps > 0);

    // Deterministic: loaded from the signed bytes, then the source replaced for good and the
    // plugin killed: its restart runs the sealed copy, not the source.
    std::fs::write(pkg.join("plugin.py"), &good).unwrap();
    let status = d.load(&pkg);
    std::fs::write(pkg.join("plugin.py"), &evil).unwrap();
    let pid = status["pid"].as_i64().unwrap();
    // SAFETY: a signal to the plugin this test loaded, by its pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = d.status("raced");
        if st["state"] == "active" && st["pid"].as_i64().is_some_and(|p| p != pid) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "no restart: {st}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        d.call("raced", "echo", json!({ "text": "sealed" }))
            .unwrap()["text"],
        "sealed"
    );
    assert_ne!(d.status("raced")["pid"].as_i64(), Some(pid));
    let logs = d.logs("raced").join("\n");
    assert!(!logs.contains("the swapped-in bytes ran"), "{logs}");
}

/// The CLI's side, unprivileged: keys, signing and offline verification, and bad input — a
/// missing, malformed or wrong-type key file, a package without a signature, a corrupt one —
/// each one line of cause, a hint, a non-zero exit, nothing written.
#[test]
fn keys_signing_and_verification_at_the_command_line() {
    let dir = harness::scratch_dir("trust-cli");
    let pkg = dir.join("pkg");
    copy_dir(
        &harness::repo_root().join("examples/plugins/echo-python"),
        &pkg,
    );
    let (key, public) = generate_key(&dir, "acme");
    let out = stockade(&[
        "verify",
        pkg.to_str().unwrap(),
        "--pubkey",
        public.to_str().unwrap(),
    ]);
    assert_refused(&out, 1, "the package is not signed (no stockade.sig)");

    let out = sign(&pkg, &key, &[]);
    assert!(out.status.success(), "{out:?}");
    let sequence_of = |out: &Output| -> u64 {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("signed echo-python 0.1.0 (sequence "),
            "{text}"
        );
        text["signed echo-python 0.1.0 (sequence ".len()..]
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let first = sequence_of(&out);
    assert!(
        first > 1_700_000_000,
        "the signing time by default: {first}"
    );
    let out = stockade(&[
        "verify",
        pkg.to_str().unwrap(),
        "--pubkey",
        public.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["plugin"], "echo-python");
    assert_eq!(v["sequence"], first);
    assert_eq!(v["files"], 2);
    // Signing again raises the sequence.
    let out = sign(&pkg, &key, &[]);
    assert!(sequence_of(&out) > first);
    let out = sign(&pkg, &key, &["--sequence", "0"]);
    assert_refused(&out, 2, "a signature's sequence starts at 1");

    // A sealed key: the passphrase from a file; the wrong one refused.
    let phrase = dir.join("phrase");
    std::fs::write(&phrase, "correct horse battery staple\n").unwrap();
    let out = stockade(&[
        "key",
        "generate",
        "sealed",
        "--out",
        dir.to_str().unwrap(),
        "--passphrase-file",
        phrase.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let sealed_key = dir.join("sealed.key");
    assert!(!std::fs::read_to_string(&sealed_key)
        .unwrap()
        .contains("seed "));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sealed_key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "tr0ub4dor\n").unwrap();
    let before = std::fs::read(pkg.join("stockade.sig")).unwrap();
    let out = sign(
        &pkg,
        &sealed_key,
        &["--passphrase-file", wrong.to_str().unwrap()],
    );
    assert_refused(&out, 2, "the passphrase is wrong, or the file was changed");
    let out = sign(&pkg, &sealed_key, &[]);
    assert_refused(
        &out,
        2,
        "the key is sealed with a passphrase, and none was given",
    );
    let out = sign(
        &pkg,
        &sealed_key,
        &["--passphrase-file", phrase.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    assert_ne!(std::fs::read(pkg.join("stockade.sig")).unwrap(), before);

    // Bad key files: nothing signed, nothing left.
    let sig_before = std::fs::read(pkg.join("stockade.sig")).unwrap();
    let malformed = dir.join("malformed.key");
    std::fs::write(&malformed, "stockade-secret-key v1\nid 00\n").unwrap();
    let garbage = dir.join("garbage.pub");
    std::fs::write(&garbage, "ed25519:not-base64!\n").unwrap();
    for (args, code, reason) in [
        (
            vec!["sign", pkg.to_str().unwrap(), "--key", "/nonexistent/k.key"],
            2,
            "/nonexistent/k.key: No such file or directory",
        ),
        (
            vec![
                "sign",
                pkg.to_str().unwrap(),
                "--key",
                malformed.to_str().unwrap(),
            ],
            2,
            "not a secret key file",
        ),
        (
            vec![
                "sign",
                pkg.to_str().unwrap(),
                "--key",
                public.to_str().unwrap(),
            ],
            2,
            "is a public key, where the secret key belongs",
        ),
        (
            vec![
                "verify",
                pkg.to_str().unwrap(),
                "--pubkey",
                key.to_str().unwrap(),
            ],
            2,
            "is a secret key, where a public key belongs",
        ),
        (
            vec![
                "verify",
                pkg.to_str().unwrap(),
                "--pubkey",
                garbage.to_str().unwrap(),
            ],
            2,
            "not a public key",
        ),
    ] {
        let out = stockade(&args);
        assert_refused(&out, code, reason);
        assert!(!stderr(&out).contains("seed"), "a secret in the message");
    }
    assert_eq!(std::fs::read(pkg.join("stockade.sig")).unwrap(), sig_before);
    let leftovers: Vec<_> = std::fs::read_dir(&pkg)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A corrupt signature file.
    std::fs::write(
        pkg.join("stockade.sig"),
        "stockade-package-signature v1\nplugin x\n",
    )
    .unwrap();
    let out = stockade(&[
        "verify",
        pkg.to_str().unwrap(),
        "--pubkey",
        public.to_str().unwrap(),
    ]);
    assert_refused(&out, 1, "stockade.sig is not a signature: line");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `stockade run --package`: a signed package runs once from its sealed copy, its entry's
/// arguments then the caller's; a changed one is refused before anything starts, an unsigned one
/// unless the caller allows it; the sealed copy goes with the run.
#[test]
fn stockade_run_runs_a_signed_package_from_its_sealed_copy() {
    if !harness::privileged("stockade_run_runs_a_signed_package_from_its_sealed_copy") {
        return;
    }
    let dir = harness::scratch_dir("trust-run");
    let (key, public) = generate_key(&dir, "publisher");
    let pkg = dir.join("hello");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("hello.sh"),
        "#!/bin/sh\necho \"hello from $0: $*\"\n",
    )
    .unwrap();
    harness::set_mode(&pkg.join("hello.sh"), 0o755);
    std::fs::write(
        pkg.join("plugin.toml"),
        "id = \"hello\"\nname = \"Hello\"\nversion = \"1.0.0\"\nentry = [\"hello.sh\", \"first\"]\n\
         policy = { profile = \"untrusted-default\" }\n",
    )
    .unwrap();
    let out = sign(&pkg, &key, &[]);
    assert!(out.status.success(), "{out:?}");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--quiet", "--package", pkg.to_str().unwrap()];
        args.extend_from_slice(extra);
        stockade(&args)
    };
    let out = run(&["--pubkey", public.to_str().unwrap(), "--", "second"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("hello from /"), "{said}");
    assert!(
        said.contains("/stockade-packages/run-"),
        "runs from the sealed copy: {said}"
    );
    assert!(said.trim_end().ends_with(": first second"), "{said}");
    let sealed = said["hello from ".len()..]
        .split(':')
        .next()
        .unwrap()
        .to_string();
    assert!(
        !Path::new(&sealed).exists(),
        "the sealed copy outlived its run: {sealed}"
    );

    std::fs::write(pkg.join("extra.txt"), "added\n").unwrap();
    let out = run(&["--pubkey", public.to_str().unwrap()]);
    assert_refused(&out, 1, "extra.txt: added after signing");
    assert!(out.stdout.is_empty(), "{out:?}");
    std::fs::remove_file(pkg.join("extra.txt")).unwrap();
    std::fs::remove_file(pkg.join("stockade.sig")).unwrap();
    let out = run(&["--pubkey", public.to_str().unwrap()]);
    assert_refused(&out, 1, "the package is not signed (no stockade.sig)");
    let out = run(&["--pubkey", public.to_str().unwrap(), "--allow-unsigned"]);
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
