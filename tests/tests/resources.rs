//! cgroup limits and the timeout, against a fork bomb, a memory bomb, a CPU spinner and a process
//! tree that would outlive its parent.

mod harness;
use harness::*;

#[test]
fn a_fork_bomb_stops_at_the_pids_limit() {
    if !privileged("a_fork_bomb_stops_at_the_pids_limit") {
        return;
    }
    let r = hostile_run("pids", &policy("[resources]\npids = 16\n"), &["fork-bomb"]);
    // 16 tasks in all: the fixture plus 15 children.
    assert_line(&r, "ok forked 15 then err EAGAIN");
    assert!(
        r.summary["pids_limit_hits"].as_u64().unwrap() >= 1,
        "{}",
        r.stderr
    );
    assert_eq!(r.summary["pids_peak"], 16, "{}", r.stderr);
}

#[test]
fn a_memory_bomb_is_oom_killed_inside_its_cgroup() {
    if !privileged("a_memory_bomb_is_oom_killed_inside_its_cgroup") {
        return;
    }
    let r = hostile_run(
        "oom",
        &policy("[resources]\nmemory = \"64M\"\n"),
        &["mem-bomb", "512"],
    );
    assert_eq!(r.stdout, "", "{}", r.stderr);
    assert_eq!(r.summary["ended_by"], "oom_kill", "{}", r.stderr);
    assert_eq!(r.summary["signal"], libc::SIGKILL);
    assert!(r.summary["oom_kills"].as_u64().unwrap() >= 1);
    assert!(r.summary["memory_peak_bytes"].as_u64().unwrap() <= 64 << 20);
    assert_eq!(r.code, 128 + libc::SIGKILL);
    // Control: the same limit lets a modest allocation through.
    let r = hostile_run(
        "oom",
        &policy("[resources]\nmemory = \"64M\"\n"),
        &["mem-bomb", "16"],
    );
    assert_line(&r, "ok allocated 16 MiB");
}

#[test]
fn a_cpu_spinner_gets_no_more_than_its_share() {
    if !privileged("a_cpu_spinner_gets_no_more_than_its_share") {
        return;
    }
    // Two spinning threads for 2 s of wall time under a quarter of one core: at most 0.5 s of CPU
    // (plus one period of slack), where unrestricted they would take up to 4 s.
    let r = hostile_run("cpu", &policy("[resources]\ncpu = 0.25\n"), &["spin", "2"]);
    let used_ms: u64 = r
        .line()
        .trim_start_matches("ok cpu_ms ")
        .parse()
        .expect(&r.stdout);
    assert!(
        used_ms <= 600,
        "used {used_ms} ms of CPU under a 0.25 share over 2 s"
    );
    assert!(
        used_ms >= 100,
        "the spinner ran only {used_ms} ms: the test proves nothing"
    );
    // The cgroup's figure covers the whole sandbox lifetime, set-up included: a quarter of the
    // wall time plus one period of slack.
    let cgroup_ms = r.summary["cpu_usage_us"].as_u64().unwrap() / 1000;
    let wall_ms = r.summary["duration_ms"].as_f64().unwrap();
    let bound = 0.25 * wall_ms + 100.0;
    assert!(
        cgroup_ms as f64 <= bound,
        "cgroup accounted {cgroup_ms} ms over {wall_ms:.0} ms (bound {bound:.0})"
    );
}

#[test]
fn the_timeout_kills_the_whole_process_tree() {
    if !privileged("the_timeout_kills_the_whole_process_tree") {
        return;
    }
    let r = hostile_run(
        "timeout",
        &policy("[resources]\ntimeout = \"1500ms\"\n"),
        &["sleep-tree", "30"],
    );
    assert_eq!(r.stdout.trim(), "started", "{}", r.stderr);
    assert_eq!(r.summary["ended_by"], "timeout", "{}", r.stderr);
    let ms = r.summary["duration_ms"].as_f64().unwrap();
    // Long enough for the fixture to start under software emulation (the VM runner), short
    // enough that a missed kill shows: it sleeps 30 s.
    assert!((1500.0..10000.0).contains(&ms), "ended after {ms} ms");
    assert_eq!(r.code, 128 + libc::SIGKILL);
    // No descendant survived: the cgroup was emptied and removed.
    assert_cgroup_removed(r.summary["cgroup_id"].as_u64().unwrap());
}
