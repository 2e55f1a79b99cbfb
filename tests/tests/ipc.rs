//! `[ipc]`: unix sockets. A read-only bind does not stop `connect`, so a granted directory that
//! holds a daemon's socket would hand the plugin that daemon's API. Until a kernel hook judges
//! each connect, Stockade refuses to start an enforce-mode sandbox whose read-only grants hold a
//! socket the policy does not list (supervisor/src/socket_scan.rs); a socket the plugin binds
//! itself keeps working.

mod harness;

use harness::*;

/// A directory holding a listening socket the plugin should not reach, and the socket's path.
fn daemon_socket(name: &str) -> (std::path::PathBuf, String, std::os::unix::net::UnixListener) {
    let dir = scratch_dir(name);
    let path = dir.join("daemon.sock");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    set_mode(&path, 0o777);
    (dir, path.to_string_lossy().into_owned(), listener)
}

/// [`policy`] with `dir` granted read-only (and no `$TMP`: the scratch directory lies below the
/// host's /tmp).
fn policy_reading(dir: &std::path::Path, extra: &str) -> String {
    policy(extra)
        .replace(
            "read = [\"/etc/ld.so.cache\"]",
            &format!("read = [\"/etc/ld.so.cache\", \"{}\"]", dir.display()),
        )
        .replace("write = [\"$TMP\"]\n", "")
}

/// Whether a kernel hook judges unix connects in these runs.
fn unix_hooks_armed() -> bool {
    // The hooks are not attached by any monitor yet (monitor/unix.rs): the launch check is the
    // mechanism on every kernel until they are.
    false
}

#[test]
fn a_socket_in_a_read_only_grant_stops_an_enforce_mode_launch() {
    if !privileged("a_socket_in_a_read_only_grant_stops_an_enforce_mode_launch") {
        return;
    }
    if unix_hooks_armed() {
        println!("skipped: the kernel hooks judge each connect here (see the hook tests)");
        return;
    }
    let (dir, sock, _listener) = daemon_socket("ipc-ro");
    for mode in ["", "[network]\nmode = \"none\"\n"] {
        let text = policy_reading(&dir, &format!("{mode}[ipc]\nbind_abstract = false\n"));
        let r = hostile_run("ipc", &text, &["connect-unix", &sock]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            r.stderr.contains(&format!(
                "the sandbox could connect to the unix socket {sock}, which [ipc] `connect` does not list"
            )),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr
                .contains("hint: list the socket in [ipc] `connect`"),
            "{}",
            r.stderr
        );
        assert!(
            r.stdout.is_empty(),
            "the plugin must not have run: {}",
            r.stdout
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_listed_socket_connects() {
    if !privileged("a_listed_socket_connects") {
        return;
    }
    let (dir, sock, listener) = daemon_socket("ipc-listed");
    let text = policy_reading(&dir, &format!("[ipc]\nconnect = [\"{sock}\"]\n"));
    let accept = std::thread::spawn(move || {
        use std::io::Write;
        listener.accept().and_then(|(mut s, _)| s.write_all(b"x"))
    });
    let r = hostile_run("ipc", &text, &["connect-unix", &sock]);
    assert_line(&r, "ok");
    accept.join().unwrap().unwrap();
    assert_eq!(
        r.summary["monitor"]["violations"].as_u64(),
        Some(0),
        "{}",
        r.stderr
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_socket_the_plugin_binds_in_tmp_keeps_working() {
    if !privileged("a_socket_the_plugin_binds_in_tmp_keeps_working") {
        return;
    }
    let r = hostile_run("ipc", &policy(""), &["unix-self", "/tmp/own.sock"]);
    assert_line(&r, "ok");
    assert_eq!(
        r.summary["monitor"]["violations"].as_u64(),
        Some(0),
        "{}",
        r.stderr
    );
}

#[test]
fn monitor_mode_starts_and_says_what_it_could_not_check() {
    if !privileged("monitor_mode_starts_and_says_what_it_could_not_check") {
        return;
    }
    if unix_hooks_armed() {
        println!("skipped: the kernel hooks judge each connect here");
        return;
    }
    let (dir, sock, _listener) = daemon_socket("ipc-monitor");
    let text = policy_reading(
        &dir,
        "[enforcement]\nmode = \"monitor\"\naction = \"report\"\n",
    );
    let r = hostile_run("ipc", &text, &["echo", "ran"]);
    assert_line(&r, "ok ran");
    assert!(
        r.stderr.contains(&format!(
            "warning: the sandbox could connect to the unix socket {sock}"
        )),
        "{}",
        r.stderr
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
