//! No silent attempt: what a layer refused or hid is an event even where no syscall tracepoint
//! sees it the usual way — a call seccomp kills, a call outside the syscall table, a datagram in
//! an empty network namespace, a newer path call — and a resource limit reached is a timed event
//! of its own kind (not a violation). Each beside a control that the allowed thing still works.

mod harness;
use harness::*;
use serde_json::Value;

fn violations(r: &RunResult) -> Vec<Value> {
    r.summary["monitor"]["first"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no monitor report:\n{}", r.stderr))
}

/// The run's only violation.
#[track_caller]
fn only_violation(r: &RunResult) -> Value {
    let v = violations(r);
    assert_eq!(v.len(), 1, "{v:#?}\n{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.summary["monitor"]["violations"], 1, "{}", r.stderr);
    v[0].clone()
}

/// `stockade run --json --events FILE` of `args` under `policy`: the result and every event.
fn run_with_events(policy: &std::path::Path, name: &str, args: &[&str]) -> (RunResult, Vec<Value>) {
    let events = scratch_dir("events").join(format!("{name}.jsonl"));
    let mut cmd = std::process::Command::new(stockade());
    cmd.args(["run", "--json", "--policy"])
        .arg(policy)
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .arg("--events")
        .arg(&events)
        .arg("--")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let r = tracked(&mut cmd);
    let all = std::fs::read_to_string(&events)
        .expect("events file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    (r, all)
}

#[track_caller]
fn assert_violation(e: &Value, layer: &str, syscall: &str, errno: &str) {
    assert_eq!(e["type"], "violation", "{e}");
    assert_eq!(e["layer"], layer, "{e}");
    assert_eq!(e["syscall"], syscall, "{e}");
    assert_eq!(e["errno"], errno, "{e}");
}

#[test]
fn calls_seccomp_kills_are_violations_naming_the_call() {
    let test = "calls_seccomp_kills_are_violations_naming_the_call";
    if !privileged(test) {
        return;
    }
    let kill = policy("[syscalls]\nprofile = \"default\"\ndeny_action = \"kill\"\n");
    let r = hostile_run("sigsys-kill", &kill, &["syscall", "keyctl"]);
    assert_eq!(r.summary["ended_by"], "seccomp_kill", "{}", r.stderr);
    let e = only_violation(&r);
    assert_violation(&e, "seccomp", "keyctl", "SIGSYS");
    assert_eq!(r.summary["monitor"]["kernel"]["seccomp_kills"], 1);
    // Another architecture's call gate: the filter kills whatever the deny action.
    let r = hostile_run("sigsys-int80", &policy(""), &["int80"]);
    assert_eq!(r.summary["ended_by"], "seccomp_kill", "{}", r.stderr);
    let e = only_violation(&r);
    assert_violation(&e, "seccomp", "i386 syscall 20 (int 0x80)", "SIGSYS");
    // Control: an allowed call under the same killing filter.
    let r = hostile_run("sigsys-control", &kill, &["syscall", "getppid"]);
    assert_line(&r, "ok");
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
}

#[test]
fn calls_outside_the_syscall_table_are_reported() {
    let test = "calls_outside_the_syscall_table_are_reported";
    if !privileged(test) {
        return;
    }
    let text = policy("");
    for (nr, shown) in [
        ("-1", "syscall -1"),
        ("1000", "syscall 1000"),
        // getpid through the x32 ABI (bit 30).
        ("1073741863", "x32 syscall 39"),
    ] {
        let r = hostile_run("outside-table", &text, &["raw-syscall", nr]);
        assert_line(&r, "err EPERM");
        let e = only_violation(&r);
        assert_violation(&e, "seccomp", shown, "EPERM");
    }
    // Control: a call of the table by number (getppid, 110) is allowed and silent.
    let r = hostile_run("outside-table-control", &text, &["raw-syscall", "110"]);
    assert_line(&r, "ok");
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
}

#[test]
fn datagrams_in_an_empty_network_namespace_are_violations() {
    let test = "datagrams_in_an_empty_network_namespace_are_violations";
    if !privileged(test) {
        return;
    }
    // network.mode = "none" (the harness's default): no route anywhere.
    let r = hostile_run("udp-none", &policy(""), &["udp-send", "192.0.2.1:53"]);
    assert_line(&r, "err ENETUNREACH");
    let e = only_violation(&r);
    assert_eq!(e["layer"], "namespace", "{e}");
    assert_eq!(e["action"], "sendto", "{e}");
    assert_eq!(e["object"], "192.0.2.1:53/udp", "{e}");
    assert_eq!(e["errno"], "ENETUNREACH", "{e}");
    // Control: on the host network, a datagram the rules allow leaves without a violation.
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = receiver.local_addr().unwrap().port();
    let allow = host_network_policy(&format!(
        "connect = [{{ protocol = \"udp\", address = \"127.0.0.1\", port = {port} }}]\n"
    ));
    let r = hostile_run(
        "udp-allowed",
        &allow,
        &["udp-send", &format!("127.0.0.1:{port}")],
    );
    assert_line(&r, "ok sent 1");
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
}

#[test]
fn resource_limits_reached_are_events_of_their_own() {
    let test = "resource_limits_reached_are_events_of_their_own";
    if !privileged(test) {
        return;
    }
    for (resources, args, line_start, limit, errno) in [
        (
            "nofile = 64",
            vec!["nofile"],
            "ok opened",
            "nofile",
            "EMFILE",
        ),
        (
            "fsize = \"1M\"",
            vec!["fsize", "/tmp/big", "2097152"],
            "err EFBIG",
            "fsize",
            "EFBIG",
        ),
        (
            "tmp_size = \"4M\"",
            vec!["fill-tmp", "/tmp/fill"],
            "ok wrote",
            "disk",
            "ENOSPC",
        ),
        (
            "pids = 16",
            vec!["fork-bomb"],
            "ok forked",
            "pids",
            "EAGAIN",
        ),
    ] {
        let file = policy_file("limits", &policy(&format!("[resources]\n{resources}\n")));
        let fixture = hostile();
        let mut full = vec![fixture.as_str()];
        full.extend_from_slice(&args);
        let (r, all) = run_with_events(&file, limit, &full);
        assert!(
            r.stdout.contains(line_start),
            "{limit}: {}\n{}",
            r.stdout,
            r.stderr
        );
        // Not a violation: the limit did its job.
        assert_eq!(
            r.summary["monitor"]["violations"], 0,
            "{limit}: {}",
            r.stderr
        );
        assert!(
            r.summary["monitor"]["kernel"]["limits"].as_u64().unwrap() >= 1,
            "{limit}: {}",
            r.stderr
        );
        let first = all
            .iter()
            .find(|e| e["type"] == "limit")
            .unwrap_or_else(|| panic!("{limit}: no limit event in {all:#?}"));
        assert_eq!(first["layer"], "resources", "{first}");
        assert_eq!(first["action"], limit, "{first}");
        assert_eq!(first["errno"], errno, "{first}");
        assert!(first["t_ms"].as_f64().unwrap() > 0.0, "{first}");
    }
}

#[test]
fn newer_path_calls_are_judged_like_the_others() {
    let test = "newer_path_calls_are_judged_like_the_others";
    if !privileged(test) {
        return;
    }
    let text = policy("");
    let r = hostile_run("getxattrat", &text, &["getxattrat", "/etc/shadow"]);
    if r.line() == "err ENOSYS" {
        println!("skipped: {test}: getxattrat needs Linux 6.13");
        return;
    }
    assert_line(&r, "err ENOENT");
    let e = only_violation(&r);
    assert_violation(&e, "namespace", "getxattrat", "ENOENT");
    assert_eq!(e["object"], "/etc/shadow", "{e}");
    // Control: the same call on a granted path is answered by the filesystem, silently.
    let r = hostile_run("getxattrat-control", &text, &["getxattrat", "/usr/lib"]);
    assert_line(&r, "err ENODATA");
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
}

#[test]
fn reaches_through_the_plugins_own_links_and_aliases_are_seen() {
    let test = "reaches_through_the_plugins_own_links_and_aliases_are_seen";
    if !privileged(test) {
        return;
    }
    let text = policy("");
    // A link the plugin makes in /tmp to a hidden file: a miss "below /tmp" that was not one.
    let r = hostile_run(
        "link-hidden",
        &text,
        &["symlink-read", "/etc/shadow", "/tmp/l"],
    );
    assert_line(&r, "err ENOENT");
    let e = only_violation(&r);
    assert_eq!(e["layer"], "namespace", "{e}");
    assert_eq!(e["object"], "/tmp/l → /etc/shadow", "{e}");
    // Through a relative link and a directory of its own.
    let r = hostile_run(
        "link-hidden-rel",
        &text,
        &["symlink-read", "../etc/shadow", "/tmp/rel"],
    );
    let e = only_violation(&r);
    assert_eq!(e["object"], "/tmp/rel → /etc/shadow", "{e}");
    // /proc/self/root is the sandbox's root.
    let r = hostile_run("proc-root", &text, &["read", "/proc/self/root/etc/shadow"]);
    assert_line(&r, "err ENOENT");
    let e = only_violation(&r);
    assert_eq!(e["layer"], "namespace", "{e}");
    assert_eq!(e["object"], "/proc/self/root/etc/shadow", "{e}");
    // Control: a dangling link to a file that exists nowhere, and one to a missing file in /tmp.
    for (target, link) in [
        ("/nonexistent-anywhere/x", "/tmp/a"),
        ("/tmp/missing", "/tmp/b"),
    ] {
        let r = hostile_run("link-control", &text, &["symlink-read", target, link]);
        assert_line(&r, "err ENOENT");
        assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
    }
}

#[test]
fn a_host_process_named_in_proc_is_a_violation() {
    let test = "a_host_process_named_in_proc_is_a_violation";
    if !privileged(test) {
        return;
    }
    let text = policy("");
    // This test's own process: alive on the host, numbered far above any pid of the sandbox.
    let target = format!("/proc/{}/status", std::process::id());
    let r = hostile_run("proc-host-pid", &text, &["read", &target]);
    assert_line(&r, "err ENOENT");
    let e = only_violation(&r);
    assert_eq!(e["layer"], "namespace", "{e}");
    assert_eq!(e["object"], target.as_str(), "{e}");
    // Control: the plugin's own child, reaped, then looked for. Its number is small, and a
    // process of the host (a kernel thread) very likely has it too: not a violation.
    let r = hostile_run("proc-own-child", &text, &["reaped-child-proc"]);
    let line = r.line();
    let child = line
        .strip_prefix("ok pid=")
        .and_then(|rest| rest.strip_suffix(" ENOENT"))
        .unwrap_or_else(|| panic!("{line}\n{}", r.stderr));
    // The control proves something only where the host has a process with that number too
    // (kthreadd is 2, and the first kernel threads follow).
    assert!(
        std::path::Path::new(&format!("/proc/{child}")).exists(),
        "the host has no pid {child}: the control shows nothing"
    );
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
}

#[test]
fn creating_below_a_hidden_directory_is_a_violation() {
    let test = "creating_below_a_hidden_directory_is_a_violation";
    if !privileged(test) {
        return;
    }
    let text = policy("");
    // /var/tmp exists on the host, and the sandbox has no /var.
    let r = hostile_run("create-hidden", &text, &["write", "/var/tmp/stockade-x"]);
    assert_line(&r, "err ENOENT");
    let e = only_violation(&r);
    assert_eq!(e["layer"], "namespace", "{e}");
    assert_eq!(e["action"], "write", "{e}");
    assert_eq!(e["object"], "/var/tmp/stockade-x", "{e}");
    // The host's /dev/shm, from a sandbox without scratch space (no $TMP: no /dev/shm).
    let no_tmp = "[filesystem]\nexec = [\"/usr/bin\", \"/usr/lib\", \"/usr/lib64\", \"/lib\", \"/lib64\", \"/bin\", \"$PLUGIN_DIR\"]\n";
    let r = hostile_run("create-shm", no_tmp, &["write", "/dev/shm/stockade-x"]);
    assert_line(&r, "err ENOENT");
    let e = only_violation(&r);
    assert_eq!(e["object"], "/dev/shm/stockade-x", "{e}");
    // Controls: below a directory that exists nowhere, nothing was hidden; with $TMP the
    // sandbox has a private /dev/shm (POSIX shared memory works), and /tmp is writable.
    for (path, line) in [
        ("/nonexistent-anywhere/x", "err ENOENT"),
        ("/dev/shm/stockade-x", "ok"),
        ("/tmp/x", "ok"),
    ] {
        let r = hostile_run("create-control", &text, &["write", path]);
        assert_line(&r, line);
        assert_eq!(
            r.summary["monitor"]["violations"], 0,
            "{path}: {}",
            r.stderr
        );
    }
    assert!(
        !std::path::Path::new("/dev/shm/stockade-x").exists(),
        "the sandbox's /dev/shm is its own"
    );
}

#[test]
fn an_oom_kill_is_a_timed_limit_event() {
    let test = "an_oom_kill_is_a_timed_limit_event";
    if !privileged(test) {
        return;
    }
    let file = policy_file("oom", &policy("[resources]\nmemory = \"64M\"\n"));
    let fixture = hostile();
    let (r, all) = run_with_events(&file, "oom", &[&fixture, "mem-bomb", "512"]);
    assert_eq!(r.summary["ended_by"], "oom_kill", "{}", r.stderr);
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
    // One event per process the OOM killer took (with memory.oom.group on cgroup v2, every
    // process of the sandbox), as the summary counts them.
    let oom: Vec<&Value> = all.iter().filter(|e| e["action"] == "memory").collect();
    let kills = r.summary["oom_kills"].as_u64().unwrap();
    assert!(kills >= 1, "{}", r.stderr);
    assert_eq!(oom.len() as u64, kills, "{}\n{:#?}", r.stderr, oom);
    for e in &oom {
        assert_eq!(e["type"], "limit", "{e}");
        assert_eq!(e["layer"], "resources", "{e}");
        assert!(e["t_ms"].as_f64().unwrap() > 0.0, "{e}");
    }
    // Control: within the limit, no memory event.
    let r = hostile_run(
        "oom-control",
        &policy("[resources]\nmemory = \"64M\"\n"),
        &["mem-bomb", "8"],
    );
    assert_line(&r, "ok allocated 8 MiB");
    assert_eq!(r.summary["monitor"]["limits"], 0, "{}", r.stderr);
}

#[test]
fn connecting_to_a_hidden_host_socket_is_a_violation() {
    let test = "connecting_to_a_hidden_host_socket_is_a_violation";
    if !privileged(test) {
        return;
    }
    // A socket the host has, outside every grant: the sandbox does not have it (ENOENT), and
    // asking for it by name is a reach for it.
    // Below /run: outside every grant wherever the checkout lives (a checkout below /tmp would
    // put the target directory inside the sandbox's own /tmp), and writable in the VM runner.
    let dir = OwnDir::create(std::path::PathBuf::from(format!(
        "/run/stockade-tests-hidden-{}",
        std::process::id()
    )));
    let path = dir.join("host.sock");
    let _ = std::fs::remove_file(&path);
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let text = policy("");
    let p = path.to_str().unwrap();
    let r = hostile_run("hidden-socket", &text, &["connect-unix", p]);
    assert_line(&r, "err ENOENT");
    let e = only_violation(&r);
    assert_eq!(e["layer"], "namespace", "{e}");
    assert_eq!(e["action"], "connect", "{e}");
    assert_eq!(e["object"], p, "{e}");
    // Control: glibc's nscd socket, which exists nowhere here, is looked for by every name
    // lookup: no violation.
    let r = hostile_run(
        "nscd-socket",
        &text,
        &["connect-unix", "/var/run/nscd/stockade-none.sock"],
    );
    assert_line(&r, "err ENOENT");
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
}

#[test]
fn both_paths_of_a_rename_or_link_are_judged_once() {
    let test = "both_paths_of_a_rename_or_link_are_judged_once";
    if !privileged(test) {
        return;
    }
    let text = policy("");
    // The second path is the one that reaches below a hidden directory.
    let r = hostile_run(
        "rename-second",
        &text,
        &["rename", "/tmp/a", "/var/tmp/stockade-y"],
    );
    assert_line(&r, "err ENOENT");
    let e = only_violation(&r);
    assert_eq!(e["layer"], "namespace", "{e}");
    assert_eq!(e["syscall"], "rename", "{e}");
    assert_eq!(e["object"], "/var/tmp/stockade-y", "{e}");
    // The first path is the hidden one: one violation, not one per path.
    let r = hostile_run("link-first", &text, &["link", "/etc/shadow", "/tmp/s"]);
    assert_line(&r, "err ENOENT");
    let e = only_violation(&r);
    assert_eq!(e["object"], "/etc/shadow", "{e}");
    // Controls: inside /tmp; a missing source inside /tmp.
    for args in [
        ["rename", "/tmp/a", "/tmp/b"],
        ["rename", "/tmp/missing", "/tmp/b"],
    ] {
        let r = hostile_run("rename-control", &text, &args);
        assert_eq!(
            r.summary["monitor"]["violations"], 0,
            "{args:?}: {}",
            r.stderr
        );
    }
}
