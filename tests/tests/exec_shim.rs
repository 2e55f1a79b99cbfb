//! The executed shim (`stockade-shim`, reading its spec from a pipe) is the path a multi-threaded
//! supervisor takes; `stockade run` takes the in-process path. The same layers must hold on both:
//! these tests repeat the key checks with STOCKADE_SHIM set.

mod harness;
use harness::*;

fn exec_mode(policy_text: &str, args: &[&str]) -> RunResult {
    let file = policy_file("exec-shim", policy_text);
    let fixture = hostile();
    let mut full = vec![fixture.as_str()];
    full.extend_from_slice(args);
    let shim = bin_dir().join("stockade-shim");
    assert!(shim.exists(), "{} is missing", shim.display());
    run_with(&file, &full, |cmd| {
        cmd.env("STOCKADE_SHIM", &shim);
    })
}

#[test]
fn the_executed_shim_applies_every_layer() {
    if !privileged("the_executed_shim_applies_every_layer") {
        return;
    }
    let p = policy("[resources]\npids = 8\n");
    assert_line(&exec_mode(&p, &["read", "/etc/shadow"]), "err ENOENT");
    assert_line(&exec_mode(&p, &["write", "/usr/bin/planted"]), "err EROFS");
    assert_line(&exec_mode(&p, &["copy-exec", "/tmp/payload"]), "err EACCES");
    // vm.memfd_noexec (Linux 6.3+), or memfd_create denied by seccomp where it is missing.
    let memfd = if std::path::Path::new("/proc/sys/vm/memfd_noexec").exists() {
        "execveat err EACCES"
    } else {
        "memfd_create err EPERM"
    };
    assert_line(&exec_mode(&p, &["memfd-exec"]), memfd);
    assert_line(&exec_mode(&p, &["syscall", "unshare-user"]), "err EPERM");
    assert_line(&exec_mode(&p, &["syscall", "ptrace-parent"]), "err EPERM");
    assert_line(
        &exec_mode(&p, &["ids"]),
        "ok uid=1000 euid=1000 gid=1000 egid=1000",
    );
    assert_line(
        &exec_mode(&p, &["caps"]),
        "ok CapInh:=0000000000000000 CapPrm:=0000000000000000 CapEff:=0000000000000000 \
         CapBnd:=0000000000000000 CapAmb:=0000000000000000 NoNewPrivs:=1 Seccomp:=2",
    );
    assert_line(&exec_mode(&p, &["pids"]), "ok 1");
    assert_line(&exec_mode(&p, &["fd", "3"]), "err EBADF");
    assert_line(
        &exec_mode(&p, &["fork-bomb"]),
        "ok forked 7 then err EAGAIN",
    );
    let r = exec_mode(&p, &["int80"]);
    assert_eq!(r.summary["ended_by"], "seccomp_kill", "{}", r.stderr);
    // Control: an allowed write.
    assert_line(&exec_mode(&p, &["write", "/tmp/file"]), "ok");
}
