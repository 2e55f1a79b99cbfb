//! `[ipc]`: unix sockets. A read-only bind does not stop `connect`, so a granted directory that
//! holds a daemon's socket would hand the plugin that daemon's API. Where the cgroup unix socket
//! programs load (6.7+: this host, the VM), each connect and sendto to a pathname socket the
//! policy does not allow fails with EPERM and is one network violation naming the path. The
//! launch check (supervisor/src/socket_scan.rs) refuses to start an enforce-mode sandbox whose
//! read-only grants hold a socket the policy does not list: on every kernel without the programs,
//! and with them for every sandbox with a writable tree (a symlink there could lead to such a
//! socket). Its tests force it with STOCKADE_UNIX_HOOKS=off, so they run on every kernel. A socket
//! the plugin binds itself keeps working.

mod harness;

use harness::*;
use serde_json::Value;

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

/// A directory outside /tmp (a policy with `$TMP` cannot also name a host path below /tmp)
/// holding a listening socket, and the socket's path: below /run, a tmpfs that is writable and
/// world-traversable on the host and in the VM runner (whose /var is the host's, read-only).
fn daemon_socket_outside_tmp(name: &str) -> (OwnDir, String, std::os::unix::net::UnixListener) {
    let dir = OwnDir::create(std::path::PathBuf::from(format!(
        "/run/stockade-tests-{name}-{}",
        std::process::id()
    )));
    set_mode(&dir, 0o755);
    let path = dir.join("daemon.sock");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    set_mode(&path, 0o777);
    (dir, path.to_string_lossy().into_owned(), listener)
}

/// Whether the cgroup unix socket programs judge unix connects in these runs: what
/// `stockade doctor --json` says of the `unix sockets` monitor.
fn unix_hooks_armed() -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ARMED.get_or_init(|| {
        let out = std::process::Command::new(stockade())
            .args(["doctor", "--json"])
            .output()
            .expect("stockade doctor");
        let doctor: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        doctor["monitors"].as_array().is_some_and(|list| {
            list.iter()
                .any(|m| m["name"] == "unix sockets" && m["active"] == true)
        })
    })
}

/// The fixture under `text` with the unix socket programs left out: the launch check decides.
fn hostile_run_without_hooks(name: &str, text: &str, args: &[&str]) -> RunResult {
    let file = policy_file(name, text);
    let fixture = hostile();
    let mut full = vec![fixture.as_str()];
    full.extend_from_slice(args);
    run_with(&file, &full, |c| {
        c.env("STOCKADE_UNIX_HOOKS", "off");
    })
}

/// Asserts that the run has exactly one violation: a network `action` (connect, sendto) of the
/// unix socket `path`, EPERM.
#[track_caller]
fn assert_one_refused(r: &RunResult, action: &str, path: &str) {
    let v = r.summary["monitor"]["first"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no monitor report in the summary:\n{}", r.stderr));
    assert_eq!(v.len(), 1, "expected one violation: {v:#?}\n{}", r.stderr);
    let e = &v[0];
    assert_eq!(e["type"], "violation", "{e}");
    assert_eq!(e["layer"], "network", "{e}");
    assert_eq!(e["action"], action, "{e}");
    assert_eq!(e["object"], path, "{e}");
    assert_eq!(e["errno"], "EPERM", "{e}");
    assert_eq!(
        r.summary["monitor"]["violations"].as_u64(),
        Some(1),
        "{}",
        r.stderr
    );
}

#[test]
fn a_socket_in_a_read_only_grant_stops_an_enforce_mode_launch() {
    if !privileged("a_socket_in_a_read_only_grant_stops_an_enforce_mode_launch") {
        return;
    }
    let (dir, sock, _listener) = daemon_socket("ipc-ro");
    for mode in ["", "[network]\nmode = \"none\"\n"] {
        let text = policy_reading(&dir, &format!("{mode}[ipc]\nbind_abstract = false\n"));
        let r = hostile_run_without_hooks("ipc", &text, &["connect-unix", &sock]);
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
    // One byte each way.
    let accept = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept()?;
        s.write_all(b"x")?;
        let mut back = [0u8; 1];
        s.read_exact(&mut back).map(|()| back)
    });
    let r = hostile_run("ipc", &text, &["unix-exchange", &sock]);
    assert_line(&r, "ok x");
    assert_eq!(accept.join().unwrap().unwrap(), *b"x");
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
    let (dir, sock, _listener) = daemon_socket("ipc-monitor");
    let text = policy_reading(
        &dir,
        "[enforcement]\nmode = \"monitor\"\naction = \"report\"\n",
    );
    let r = hostile_run_without_hooks("ipc", &text, &["echo", "ran"]);
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

#[test]
fn a_socket_in_a_read_only_grant_is_refused_at_connect() {
    let test = "a_socket_in_a_read_only_grant_is_refused_at_connect";
    if !privileged(test) {
        return;
    }
    if !unix_hooks_armed() {
        println!("skipped: {test}: no cgroup unix socket programs on this kernel (6.7+)");
        return;
    }
    let (dir, sock, _listener) = daemon_socket("ipc-hook");
    // No writable tree: the programs alone judge, the sandbox starts.
    // The host's network namespace, and an empty one of its own.
    for mode in [
        "[network]\nmode = \"allow\"\n",
        "[network]\nmode = \"none\"\n",
    ] {
        let r = hostile_run("ipc", &policy_reading(&dir, mode), &["connect-unix", &sock]);
        assert_line(&r, "err EPERM");
        assert_one_refused(&r, "connect", &sock);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_datagram_to_a_socket_in_a_read_only_grant_is_refused() {
    let test = "a_datagram_to_a_socket_in_a_read_only_grant_is_refused";
    if !privileged(test) {
        return;
    }
    if !unix_hooks_armed() {
        println!("skipped: {test}: no cgroup unix socket programs on this kernel (6.7+)");
        return;
    }
    let dir = scratch_dir("ipc-dgram");
    let path = dir.join("daemon.dgram");
    let _ = std::fs::remove_file(&path);
    let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    set_mode(&path, 0o777);
    let sock = path.to_string_lossy().into_owned();
    // The host's network namespace, and an empty one of its own.
    for mode in [
        "[network]\nmode = \"allow\"\n",
        "[network]\nmode = \"none\"\n",
    ] {
        let r = hostile_run("ipc", &policy_reading(&dir, mode), &["sendto-unix", &sock]);
        assert_line(&r, "err EPERM");
        assert_one_refused(&r, "sendto", &sock);
    }
    // Nothing arrived.
    receiver.set_nonblocking(true).unwrap();
    assert!(receiver.recv(&mut [0u8; 8]).is_err());
    // Control: listed, the datagram goes through.
    let text = policy_reading(&dir, &format!("[ipc]\nconnect = [\"{sock}\"]\n"));
    let r = hostile_run("ipc", &text, &["sendto-unix", &sock]);
    assert_line(&r, "ok");
    receiver.set_nonblocking(false).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(receiver.recv(&mut buf).unwrap(), 1);
    assert_eq!(
        r.summary["monitor"]["violations"].as_u64(),
        Some(0),
        "{}",
        r.stderr
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_path_walking_up_out_of_tmp_is_refused() {
    let test = "a_path_walking_up_out_of_tmp_is_refused";
    if !privileged(test) {
        return;
    }
    if !unix_hooks_armed() {
        println!("skipped: {test}: no cgroup unix socket programs on this kernel (6.7+)");
        return;
    }
    // Listed (so the launch check passes and the name itself connects), but reached through
    // `/tmp/..`: a name with `/..` is refused whatever it leads to.
    let (dir, sock, _listener) = daemon_socket_outside_tmp("ipc-dotdot");
    let text = policy(&format!("[ipc]\nconnect = [\"{sock}\"]\n")).replace(
        "read = [\"/etc/ld.so.cache\"]",
        &format!("read = [\"/etc/ld.so.cache\", \"{}\"]", dir.display()),
    );
    let walked = format!("/tmp/..{sock}");
    let r = hostile_run("ipc", &text, &["connect-unix", &walked]);
    assert_line(&r, "err EPERM");
    assert_one_refused(&r, "connect", &walked);
}

/// The programs judge names, and a symlink in a writable tree leads anywhere the plugin can see:
/// with a writable tree, the launch check of the read-only grants still stands, hooks or not.
#[test]
fn a_writable_tree_keeps_the_launch_check() {
    let test = "a_writable_tree_keeps_the_launch_check";
    if !privileged(test) {
        return;
    }
    if lsm_judges_reached_sockets() {
        println!(
            "skipped: {test}: the BPF LSM unix programs judge the socket reached here, so no launch \
             walk runs (a_symlink_in_tmp_to_a_socket_in_a_read_only_grant_is_refused_at_connect)"
        );
        return;
    }
    let (dir, sock, _listener) = daemon_socket_outside_tmp("ipc-symlink");
    let text = policy("").replace(
        "read = [\"/etc/ld.so.cache\"]",
        &format!("read = [\"/etc/ld.so.cache\", \"{}\"]", dir.display()),
    );
    let r = hostile_run("ipc", &text, &["echo", "ran"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "the sandbox could connect to the unix socket {sock}, which [ipc] `connect` does not list"
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.is_empty(),
        "the plugin must not have run: {}",
        r.stdout
    );
}

#[test]
fn binding_an_abstract_name_on_the_host_network_kills_before_it_listens() {
    let test = "binding_an_abstract_name_on_the_host_network_kills_before_it_listens";
    if !privileged(test) || !tcp_rules_enforceable(test) {
        return;
    }
    // The host's network namespace: an abstract name bound here is one host clients can reach.
    let name = format!("stockade-test-{}", std::process::id());
    let host_net = "[network]\nmode = \"allow\"\n";
    let r = hostile_run(
        "abstract-bind",
        &policy(host_net),
        &["bind-abstract", &name],
    );
    assert!(!r.stdout.contains("ok bound"), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.summary["signal"], 9, "{}", r.stderr);
    let v = r.summary["monitor"]["first"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(v.len(), 1, "{v:#?}\n{}", r.stderr);
    assert_eq!(v[0]["layer"], "network", "{}", v[0]);
    assert_eq!(v[0]["action"], "bind", "{}", v[0]);
    assert_eq!(v[0]["object"], format!("@{name}"), "{}", v[0]);
    assert_eq!(v[0]["killed_in_kernel"], true, "{}", v[0]);
    // Controls: autobind (a random name) and, with bind_abstract = true, the same name.
    let r = hostile_run(
        "abstract-autobind",
        &policy(host_net),
        &["bind-abstract", ""],
    );
    assert_line(&r, "ok bound");
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
    let allowed = format!("{host_net}\n[ipc]\nbind_abstract = true\n");
    let r = hostile_run(
        "abstract-allowed",
        &policy(&allowed),
        &["bind-abstract", &name],
    );
    assert_line(&r, "ok bound");
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
    // In its own network namespace (mode none) a name reaches nobody: allowed.
    let r = hostile_run("abstract-none", &policy(""), &["bind-abstract", &name]);
    assert_line(&r, "ok bound");
}

#[test]
fn a_remembered_walk_sees_a_socket_bound_after_it() {
    if !privileged("a_remembered_walk_sees_a_socket_bound_after_it") {
        return;
    }
    // A clean read-only tree, older than the walk's racy window (2 s), so that its record is
    // trusted by the next launch.
    let dir = scratch_dir("ipc-remembered");
    let deep = dir.join("a/b/c");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(dir.join("a/file"), b"x").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let text = policy_reading(&dir, "[ipc]\nbind_abstract = false\n");
    let debug = |r: &mut std::process::Command| {
        r.env("STOCKADE_UNIX_HOOKS", "off");
        r.env("STOCKADE_LOG", "stockade::socket_scan=debug");
    };
    let file = policy_file("ipc-remembered", &text);
    let walked = format!("the [ipc] walk of {}: walked", dir.display());
    let remembered = format!("the [ipc] walk of {}: remembered", dir.display());
    let r = run_with(&file, &[&hostile(), "echo", "first"], debug);
    assert_eq!(r.stdout.trim(), "ok first", "{}", r.stderr);
    assert!(r.stderr.contains(&walked), "{}", r.stderr);
    // Nothing changed: the record stands in for the walk.
    let r = run_with(&file, &[&hostile(), "echo", "second"], debug);
    assert_eq!(r.stdout.trim(), "ok second", "{}", r.stderr);
    assert!(r.stderr.contains(&remembered), "{}", r.stderr);
    // A socket bound three levels down changes only its own directory's times: the record is
    // not used, the tree is walked again and the launch refused.
    let sock = deep.join("late.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let r = run_with(&file, &[&hostile(), "echo", "third"], debug);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(&walked), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "the sandbox could connect to the unix socket {}",
            sock.display()
        )),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "the plugin must not have run");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_socket_bind_mounted_over_a_file_in_a_read_only_grant_is_found() {
    if !privileged("a_socket_bind_mounted_over_a_file_in_a_read_only_grant_is_found") {
        return;
    }
    // The walk reads entry types from the directory (a regular file here); the bind mount shows
    // the socket in its place, in the sandbox as on the host. No directory's times change.
    let (sock_dir, sock, _listener) = daemon_socket_outside_tmp("ipc-mounted-sock");
    let dir = scratch_dir("ipc-mounted");
    let cover = dir.join("innocent");
    std::fs::write(&cover, b"x").unwrap();
    let src = std::ffi::CString::new(sock.as_str()).unwrap();
    let dst = std::ffi::CString::new(cover.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated paths; a bind mount of a socket over a file the test made.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "bind mount: {}", std::io::Error::last_os_error());
    struct Unmount(std::ffi::CString);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // SAFETY: the mount this test made.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _unmount = Unmount(dst);
    let text = policy_reading(&dir, "[ipc]\nbind_abstract = false\n");
    for _ in 0..2 {
        // Twice: the second launch may use the first one's record of the tree.
        let r = hostile_run_without_hooks("ipc-mounted", &text, &["echo", "ran"]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            r.stderr.contains(&format!(
                "the sandbox could connect to the unix socket {}",
                cover.display()
            )),
            "{}",
            r.stderr
        );
        assert!(r.stdout.is_empty());
    }
    drop(_unmount);
    std::fs::remove_dir_all(&dir).unwrap();
    drop(sock_dir);
}

/// Whether the BPF LSM programs load here (`stockade doctor`): they judge the socket each unix
/// connect reaches, symlinks resolved.
fn lsm_judges_reached_sockets() -> bool {
    let out = std::process::Command::new(stockade())
        .args(["doctor", "--json"])
        .output()
        .expect("stockade doctor");
    let doctor: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    doctor["monitors"].as_array().is_some_and(|list| {
        list.iter()
            .any(|m| m["name"] == "lsm" && m["active"] == true)
    })
}

#[test]
fn a_symlink_in_tmp_to_a_socket_in_a_read_only_grant_is_refused_at_connect() {
    let test = "a_symlink_in_tmp_to_a_socket_in_a_read_only_grant_is_refused_at_connect";
    if !privileged(test) {
        return;
    }
    if !lsm_judges_reached_sockets() {
        println!(
            "skipped: {test}: BPF LSM programs do not load here; the launch walk stands in \
             (a_writable_tree_keeps_the_launch_check)"
        );
        return;
    }
    let (dir, sock, listener) = daemon_socket_outside_tmp("ipc-lsm");
    let listed = dir.join("listed.sock");
    let _listed_listener = std::os::unix::net::UnixListener::bind(&listed).unwrap();
    set_mode(&listed, 0o777);
    let text = policy(&format!("[ipc]\nconnect = [\"{}\"]\n", listed.display())).replace(
        "read = [\"/etc/ld.so.cache\"]",
        &format!("read = [\"/etc/ld.so.cache\", \"{}\"]", dir.display()),
    );
    let file = policy_file("ipc-lsm", &text);
    let explain = std::process::Command::new(stockade())
        .args(["policy", "explain"])
        .arg(&file)
        .output()
        .unwrap();
    let explained = String::from_utf8_lossy(&explain.stdout);
    assert!(
        explained
            .contains("ENFORCED by the BPF LSM programs unix_stream_connect and unix_may_send"),
        "{explained}"
    );
    let debug = |c: &mut std::process::Command| {
        c.env("STOCKADE_LOG", "stockade::socket_scan=debug");
    };
    // The symlink's name is below /tmp (allowed by name); the socket it leads to is not listed.
    let r = run_with(
        &file,
        &[&hostile(), "symlink-connect", &sock, "/tmp/x"],
        debug,
    );
    assert!(
        !r.stderr.contains("the [ipc] walk of"),
        "a launch walk ran:\n{}",
        r.stderr
    );
    assert_eq!(r.stdout.trim(), "err EPERM", "{}", r.stderr);
    let v = r.summary["monitor"]["first"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(v.len(), 1, "{v:#?}\n{}", r.stderr);
    assert_eq!(v[0]["layer"], "lsm", "{}", v[0]);
    assert_eq!(v[0]["action"], "connect", "{}", v[0]);
    assert_eq!(v[0]["errno"], "EPERM", "{}", v[0]);
    assert!(
        v[0]["object"]
            .as_str()
            .unwrap_or("")
            .starts_with("daemon.sock (inode "),
        "{}",
        v[0]
    );
    // Controls: the listed socket through a symlink of the plugin's; the socket reached by its
    // own name is still refused by the cgroup program (a network violation), not twice.
    let r = run_with(
        &file,
        &[
            &hostile(),
            "symlink-connect",
            &listed.to_string_lossy(),
            "/tmp/y",
        ],
        debug,
    );
    assert_eq!(r.stdout.trim(), "ok", "{}", r.stderr);
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
    // A listed path that is a symlink (as /dev/log is on systemd hosts): the kernel knows the
    // socket by where it was bound, and that is listed too.
    let alias = dir.join("alias.sock");
    std::os::unix::fs::symlink(&listed, &alias).unwrap();
    let text = policy(&format!("[ipc]\nconnect = [\"{}\"]\n", alias.display())).replace(
        "read = [\"/etc/ld.so.cache\"]",
        &format!("read = [\"/etc/ld.so.cache\", \"{}\"]", dir.display()),
    );
    let file = policy_file("ipc-lsm-alias", &text);
    let r = run_with(
        &file,
        &[&hostile(), "connect-unix", &alias.to_string_lossy()],
        debug,
    );
    assert_eq!(r.stdout.trim(), "ok", "{}", r.stderr);
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
    drop(listener);
}
