//! Privileges and visibility: user namespace ids, capabilities, setuid binaries, /proc, the
//! terminal, inherited descriptors and the network namespace.

mod harness;
use harness::*;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;

#[test]
fn the_plugin_is_unprivileged_and_capability_free() {
    if !privileged("the_plugin_is_unprivileged_and_capability_free") {
        return;
    }
    let r = hostile_run("priv", &policy(""), &["ids"]);
    assert_line(&r, "ok uid=1000 euid=1000 gid=1000 egid=1000");
    let r = hostile_run("priv", &policy(""), &["caps"]);
    assert_line(
        &r,
        "ok CapInh:=0000000000000000 CapPrm:=0000000000000000 CapEff:=0000000000000000 \
         CapBnd:=0000000000000000 CapAmb:=0000000000000000 NoNewPrivs:=1 Seccomp:=2",
    );
}

#[test]
fn a_setuid_root_binary_does_not_raise_privileges() {
    if !privileged("a_setuid_root_binary_does_not_raise_privileges") {
        return;
    }
    // A setuid-root copy of the fixture, owned by host root, in the plugin directory.
    let setuid = plugin_dir().join("setuid-hostile");
    std::fs::copy(plugin_dir().join("stockade-hostile"), &setuid).unwrap();
    set_mode(&setuid, 0o4755);
    let setuid = setuid.to_string_lossy().into_owned();
    let r = hostile_run("setuid", &policy(""), &["exec", &setuid, "ids"]);
    assert_line(&r, "ok uid=1000 euid=1000 gid=1000 egid=1000");
    // Control: run directly, it is the same unprivileged plugin.
    let file = policy_file("setuid", &policy(""));
    let r = run(&file, &[&setuid, "ids"]);
    assert_line(&r, "ok uid=1000 euid=1000 gid=1000 egid=1000");
}

#[test]
fn proc_shows_only_the_sandbox() {
    if !privileged("proc_shows_only_the_sandbox") {
        return;
    }
    let r = hostile_run("proc", &policy(""), &["pids"]);
    assert_line(&r, "ok 1");
    // The test process itself exists on the host but not inside.
    let me = std::process::id().to_string();
    let r = hostile_run("proc", &policy(""), &["kill", &me]);
    assert_line(&r, "err ESRCH");
    // Control: the plugin sees itself.
    let r = hostile_run("proc", &policy(""), &["kill", "1"]);
    assert_line(&r, "ok");
}

#[test]
fn tiocsti_on_the_terminal_fails() {
    if !privileged("tiocsti_on_the_terminal_fails") {
        return;
    }
    let mut master = -1;
    let mut slave = -1;
    // SAFETY: openpty fills two descriptors; the name and settings pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        println!(
            "skipped: tiocsti_on_the_terminal_fails: no pseudo-terminal here (is devpts mounted?)"
        );
        return;
    }
    // SAFETY: fresh descriptors from openpty, owned here.
    let (master, slave) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let file = policy_file("tty", &policy(""));
    let fixture = hostile();
    let slave_fd = slave.as_raw_fd();
    let r = run_with(&file, &[&fixture, "tiocsti"], |cmd| {
        cmd.stdin(slave.try_clone().unwrap());
        // SAFETY: setsid and TIOCSCTTY between fork and exec; both async-signal-safe. The pty
        // becomes stockade's controlling terminal, as in an interactive shell.
        unsafe {
            cmd.pre_exec(move || {
                libc::setsid();
                libc::ioctl(slave_fd, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
    });
    assert_line(&r, "err EPERM");
    drop(master);
}

#[test]
fn an_fd_the_caller_opened_is_not_inherited() {
    if !privileged("an_fd_the_caller_opened_is_not_inherited") {
        return;
    }
    let secret = std::fs::File::open("/etc/hostname").unwrap();
    let raw = secret.as_raw_fd();
    let file = policy_file("fd", &policy(""));
    let fixture = hostile();
    let r = run_with(&file, &[&fixture, "fd", "7"], |cmd| {
        // SAFETY: dup2 between fork and exec; async-signal-safe. Descriptor 7 reaches stockade
        // without close-on-exec, as a careless caller would leave it.
        unsafe {
            cmd.pre_exec(move || {
                libc::dup2(raw, 7);
                Ok(())
            });
        }
    });
    assert_line(&r, "err EBADF");
    // Control: stdio is there.
    let r = run(&file, &[&fixture, "fd", "1"]);
    assert_line(&r, "ok");
}

#[test]
fn network_mode_none_has_only_loopback() {
    if !privileged("network_mode_none_has_only_loopback") {
        return;
    }
    let r = hostile_run("net", &policy(""), &["net-ifaces"]);
    assert_line(&r, "ok lo");
    // Even loopback: from Landlock ABI 4 the TCP connect is refused before the (down) interface is
    // reached; below it, the empty namespace has no route.
    let r = hostile_run("net", &policy(""), &["connect-tcp", "127.0.0.1:22"]);
    let abi = landlock_abi();
    assert_line(
        &r,
        if abi >= 4 {
            "err EACCES"
        } else {
            "err ENETUNREACH"
        },
    );
}

#[test]
fn the_plugin_starts_with_default_signal_dispositions() {
    if !privileged("the_plugin_starts_with_default_signal_dispositions") {
        return;
    }
    // The supervisor and the shim are Rust programs, which ignore SIGPIPE; ignored signals survive
    // exec, so without a reset `yes | head` pipelines in a plugin would misbehave. cat changes
    // nothing, so its SigIgn is what it inherited.
    let file = policy_file("signals", &policy(""));
    let r = run(&file, &["/usr/bin/cat", "/proc/self/status"]);
    let ignored = r
        .stdout
        .lines()
        .find(|l| l.starts_with("SigIgn:"))
        .unwrap_or_default();
    assert_eq!(ignored, "SigIgn:\t0000000000000000", "{}", r.stderr);
}

#[test]
fn stdio_flags_the_plugin_changes_are_restored() {
    if !privileged("stdio_flags_the_plugin_changes_are_restored") {
        return;
    }
    // The plugin's stdout is this file's open file description: what it changes, we see.
    let path = scratch_dir("stdio").join("out");
    let out = std::fs::File::create(&path).unwrap();
    let fd = out.as_raw_fd();
    let file = policy_file("stdio", &policy(""));
    let fixture = hostile();
    let out2 = out.try_clone().unwrap();
    let r = run_with(&file, &[&fixture, "nonblock-stdout"], move |cmd| {
        cmd.stdout(out2);
    });
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "ok\n");
    // SAFETY: F_GETFL on our own descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert_eq!(
        flags & libc::O_NONBLOCK,
        0,
        "O_NONBLOCK survived the sandbox"
    );
}
