//! The seccomp allow list, tried call by call by a hostile plugin.

mod harness;
use harness::*;

fn attempt(call: &str) -> RunResult {
    hostile_run("syscalls", &policy(""), &["syscall", call])
}

#[test]
fn dangerous_calls_fail_with_eperm() {
    if !privileged("dangerous_calls_fail_with_eperm") {
        return;
    }
    for call in [
        "ptrace-parent",
        "mount",
        "fsopen",
        "unshare-user",
        "clone-newuser",
        "setns",
        "chroot",
        "bpf",
        "io_uring_setup",
        "keyctl",
        "add_key",
        "perf_event_open",
        "userfaultfd",
        "process_vm_readv",
        "personality-unsafe",
        "kexec_load",
        "init_module",
        "reboot",
        "clock_settime",
    ] {
        let r = attempt(call);
        assert_eq!(
            r.line(),
            "err EPERM",
            "{call}: stdout {:?} stderr {}",
            r.stdout,
            r.stderr
        );
        assert_eq!(r.code, 0, "{call}: the plugin goes on after a denied call");
    }
    // Controls: harmless calls and the harmless form of a filtered one still work.
    assert_line(&attempt("getppid"), "ok");
    assert_line(&attempt("personality-query"), "ok");
}

#[test]
fn a_32_bit_syscall_kills_the_plugin() {
    if !privileged("a_32_bit_syscall_kills_the_plugin") {
        return;
    }
    let r = hostile_run("syscalls", &policy(""), &["int80"]);
    // The process dies before printing its verdict.
    assert_eq!(r.stdout, "", "{}", r.stderr);
    assert_eq!(r.summary["ended_by"], "seccomp_kill", "{}", r.stderr);
    assert_eq!(r.summary["signal"], libc::SIGSYS, "{}", r.stderr);
    assert_eq!(r.code, 128 + libc::SIGSYS);
}

#[test]
fn deny_action_kill_and_policy_additions() {
    if !privileged("deny_action_kill_and_policy_additions") {
        return;
    }
    let text = policy("[syscalls]\ndeny = [\"getppid\"]\ndeny_action = \"kill\"\n");
    let r = hostile_run("kill", &text, &["syscall", "getppid"]);
    assert_eq!(r.summary["ended_by"], "seccomp_kill", "{}", r.stderr);
    assert_eq!(r.code, 128 + libc::SIGSYS);
    // Control: the same policy lets allowed calls through.
    let r = hostile_run("kill", &text, &["echo", "alive"]);
    assert_line(&r, "ok alive");
}

#[test]
fn kernel_wide_resources_and_set_id_files_are_out_of_reach() {
    if !privileged("kernel_wide_resources_and_set_id_files_are_out_of_reach") {
        return;
    }
    // vsock is not namespaced: it would reach the hypervisor from "no network".
    assert_line(&attempt("socket-vsock"), "err EPERM");
    assert_line(&attempt("socket-packet"), "err EPERM");
    // ICMP echo ("ping") sockets: with a permissive net.ipv4.ping_group_range their sendto would
    // reach any address past the network programs (which hook connect, UDP sendmsg and bind).
    assert_line(&attempt("socket-ping"), "err EPERM");
    assert_line(&attempt("socket-ping6"), "err EPERM");
    assert_line(&attempt("socket-udp"), "ok");
    // AIO contexts come from a machine-wide pool.
    assert_line(&attempt("io_setup"), "err EPERM");
    // Set-id bits, by chmod and at creation.
    assert_line(&attempt("chmod-setuid"), "err EPERM");
    assert_line(&attempt("create-setgid"), "err EPERM");
    // inotify instances are charged to the supervisor's uid too: the sandbox has its own cap.
    let r = hostile_run("syscalls", &policy(""), &["inotify"]);
    assert_line(&r, "ok created 32 then err EMFILE");
    // Controls.
    assert_line(&attempt("socket-unix"), "ok");
    assert_line(&attempt("socket-inet"), "ok");
    assert_line(&attempt("chmod-plain"), "ok");
}
