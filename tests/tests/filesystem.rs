//! The filesystem walls: the mount namespace (only declared paths exist) and Landlock (only the
//! declared rights), tried by a hostile plugin.

mod harness;
use harness::*;

fn default_policy() -> String {
    policy("")
}

#[test]
fn shadow_does_not_exist_inside() {
    if !privileged("shadow_does_not_exist_inside") {
        return;
    }
    let r = hostile_run("fs", &default_policy(), &["read", "/etc/shadow"]);
    assert_line(&r, "err ENOENT");
    // Control: a declared read path is readable.
    let r = hostile_run("fs", &default_policy(), &["read", "/etc/ld.so.cache"]);
    assert!(r.line().starts_with("ok "), "{}", r.stderr);
}

#[test]
fn symlink_and_hardlink_to_a_denied_file_reach_nothing() {
    if !privileged("symlink_and_hardlink_to_a_denied_file_reach_nothing") {
        return;
    }
    let r = hostile_run(
        "fs",
        &default_policy(),
        &["symlink-read", "/etc/shadow", "/tmp/link"],
    );
    assert_line(&r, "err ENOENT");
    let r = hostile_run(
        "fs",
        &default_policy(),
        &["hardlink-read", "/etc/shadow", "/tmp/link"],
    );
    assert_line(&r, "link err ENOENT");
    // A hard link from a read-only grant into writable /tmp would let the plugin rename or keep a
    // file it must not write: different mounts, so EXDEV.
    let r = hostile_run(
        "fs",
        &default_policy(),
        &["hardlink-read", "/etc/ld.so.cache", "/tmp/link"],
    );
    assert_line(&r, "link err EXDEV");
    // Control: a link to a file the plugin may read works.
    let r = hostile_run(
        "fs",
        &default_policy(),
        &["symlink-read", "/etc/ld.so.cache", "/tmp/link"],
    );
    assert!(r.line().starts_with("ok "), "{}", r.stderr);
}

#[test]
fn writes_outside_the_write_list_fail() {
    if !privileged("writes_outside_the_write_list_fail") {
        return;
    }
    // A read-only bind: the mount refuses.
    let r = hostile_run("fs", &default_policy(), &["write", "/usr/bin/planted"]);
    assert_line(&r, "err EROFS");
    // The plugin's own code is read-only too.
    let target = format!("{}/planted", plugin_dir().display());
    let r = hostile_run("fs", &default_policy(), &["write", &target]);
    assert_line(&r, "err EROFS");
    assert!(!std::path::Path::new(&target).exists());
    // The sandbox's root itself is a read-only mount (and Landlock grants nothing there).
    let r = hostile_run("fs", &default_policy(), &["write", "/planted"]);
    assert_line(&r, "err EROFS");
    // Control: /tmp is writable.
    let r = hostile_run("fs", &default_policy(), &["write", "/tmp/file"]);
    assert_line(&r, "ok");
}

#[test]
fn state_dir_is_writable_and_persists() {
    if !privileged("state_dir_is_writable_and_persists") {
        return;
    }
    let state = scratch_dir("state");
    let text = r#"
[filesystem]
exec = ["/usr/bin", "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/bin", "$PLUGIN_DIR"]
read = ["/etc/ld.so.cache"]
write = ["$STATE_DIR"]
"#;
    let file = policy_file("state", text);
    let target = format!("{}/out", state.display());
    let fixture = hostile();
    // --state-dir goes before `--`, so build the command here rather than with `run`.
    let mut cmd = std::process::Command::new(stockade());
    cmd.args(["run", "--json", "--policy"])
        .arg(&file)
        .arg("--plugin-dir")
        .arg(plugin_dir());
    cmd.arg("--state-dir")
        .arg(&state)
        .arg("--")
        .args([fixture.as_str(), "write", &target]);
    let r = finish(cmd.output().unwrap());
    assert_line(&r, "ok");
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "written by stockade-hostile\n"
    );
    std::fs::remove_dir_all(&state).unwrap();
}

#[test]
fn no_code_runs_outside_the_exec_list() {
    if !privileged("no_code_runs_outside_the_exec_list") {
        return;
    }
    // A binary the plugin wrote itself: /tmp is noexec and Landlock grants no execute there.
    let r = hostile_run("fs", &default_policy(), &["copy-exec", "/tmp/payload"]);
    assert_line(&r, "err EACCES");
    // Unless the policy takes the private /tmp out of W^X (`tmp_exec`, for build tools that run
    // what they compile): then the same copy runs — inside every other layer still. Its plugin
    // directory must not lie below /tmp, where Landlock's execute right would reach it: the
    // tests' own is refused, one below /run runs.
    let tmp_exec = policy("tmp_exec = true\n");
    let r = hostile_run("fs", &tmp_exec, &["copy-exec", "/tmp/payload"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("lies below /tmp, which `tmp_exec` makes executable"),
        "{}",
        r.stderr
    );
    let outside = OwnDir::create(std::path::PathBuf::from(format!(
        "/run/stockade-tests-{}-tmp-exec",
        std::process::id()
    )));
    set_mode(&outside, 0o755);
    let fixture = outside.join("stockade-hostile");
    std::fs::copy(hostile(), &fixture).unwrap();
    set_mode(&fixture, 0o755);
    let r = run_from(
        &outside,
        &policy_file("tmp-exec", &tmp_exec),
        &[fixture.to_str().unwrap(), "copy-exec", "/tmp/payload"],
        |_| {},
    );
    assert_line(&r, "ok escaped");
    // Code written into a memfd: vm.memfd_noexec=2 in the sandbox's pid namespace (Linux 6.3+);
    // older kernels get memfd_create denied by seccomp instead.
    if std::path::Path::new("/proc/sys/vm/memfd_noexec").exists() {
        let r = hostile_run("fs", &default_policy(), &["memfd-exec"]);
        assert_line(&r, "execveat err EACCES");
        let r = hostile_run("fs", &default_policy(), &["memfd-exec", "mfd-exec"]);
        assert_line(&r, "memfd_create err EACCES");
        assert_eq!(r.summary["memfd_noexec"], true, "{}", r.stderr);
    } else {
        let r = hostile_run("fs", &default_policy(), &["memfd-exec"]);
        assert_line(&r, "memfd_create err EPERM");
    }
    // A binary that is readable but not under an exec path.
    let text = r#"
[filesystem]
exec = ["/usr/lib", "/usr/lib64", "/lib", "/lib64", "$PLUGIN_DIR"]
read = ["/etc/ld.so.cache", "/usr/bin"]
"#;
    let r = hostile_run("noexec", text, &["exec", "/usr/bin/true"]);
    assert_line(&r, "err EACCES");
    // Control: a binary under an exec path runs.
    let r = hostile_run(
        "fs",
        &default_policy(),
        &["exec", "/usr/bin/echo", "allowed"],
    );
    assert_line(&r, "allowed");
}

#[test]
fn host_ipc_endpoints_are_unreachable() {
    if !privileged("host_ipc_endpoints_are_unreachable") {
        return;
    }
    // A pathname unix socket the test itself listens on, in a directory the policy does not grant.
    let dir = scratch_dir("ipc");
    let sock_path = dir.join("engine.sock");
    let _ = std::fs::remove_file(&sock_path);
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    set_mode(&sock_path, 0o777);
    let sock = sock_path.to_string_lossy().into_owned();
    let r = hostile_run("fs", &default_policy(), &["connect-unix", &sock]);
    assert_line(&r, "err ENOENT");
    for well_known in [
        "/run/dbus/system_bus_socket",
        "/var/run/docker.sock",
        "/run/systemd/private",
    ] {
        let r = hostile_run("fs", &default_policy(), &["connect-unix", well_known]);
        assert_line(&r, "err ENOENT");
    }
    // Files in host /dev/shm and /var/tmp are not there.
    for shared in ["/dev/shm", "/var/tmp"] {
        let canary = format!("{shared}/stockade-canary-{}", std::process::id());
        if std::fs::write(&canary, "secret").is_ok() {
            let r = hostile_run("fs", &default_policy(), &["read", &canary]);
            assert_line(&r, "err ENOENT");
            std::fs::remove_file(&canary).unwrap();
        }
    }
    // Control: the same socket is reachable when its directory is granted (without $TMP: the
    // directory lies below the host's /tmp).
    let text = format!(
        "[filesystem]\nexec = [\"/usr/lib\", \"/usr/lib64\", \"/lib\", \"/lib64\", \"$PLUGIN_DIR\"]\n\
         read = [\"/etc/ld.so.cache\"]\nwrite = [\"{}\"]\n",
        dir.display()
    );
    let accept = std::thread::spawn(move || listener.accept().map(|_| ()));
    let r = hostile_run("ipc", &text, &["connect-unix", &sock]);
    assert_line(&r, "ok");
    accept.join().unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn disk_use_and_open_files_are_bounded() {
    if !privileged("disk_use_and_open_files_are_bounded") {
        return;
    }
    let text =
        policy("[resources]\nmemory = \"128M\"\ntmp_size = \"8M\"\nfsize = \"4M\"\nnofile = 64\n");
    // /tmp is a tmpfs of 8 MiB.
    let r = hostile_run("bounded", &text, &["fill-tmp", "/tmp/fill"]);
    assert_line(&r, "ok wrote 4 MiB then err EFBIG");
    // RLIMIT_FSIZE: one file no larger than 4 MiB.
    let r = hostile_run("bounded", &text, &["fsize", "/tmp/big", "5242880"]);
    assert_line(&r, "err EFBIG");
    let r = hostile_run("bounded", &text, &["fsize", "/tmp/small", "1048576"]);
    assert_line(&r, "ok");
    // RLIMIT_NOFILE: 64 descriptors, 3 of them stdio.
    let r = hostile_run("bounded", &text, &["nofile"]);
    assert_line(&r, "ok opened 61 then err EMFILE");
    // The tmpfs size, with no file size limit in the way.
    let text = policy("[resources]\nmemory = \"128M\"\ntmp_size = \"8M\"\nfsize = \"64M\"\n");
    let r = hostile_run("bounded", &text, &["fill-tmp", "/tmp/fill"]);
    assert_line(&r, "ok wrote 8 MiB then err ENOSPC");
}
