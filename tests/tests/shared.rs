//! One set of monitors per host: supervisors running at once share the pinned programs, each
//! sandbox's events reach only its own supervisor, the set goes with its last user unless it was
//! made persistent, and what a killed supervisor left in the maps is reclaimed.
//!
//! The tests here change the host's set, so they run one at a time (one lock), and the other
//! test binaries do not run beside them (cargo runs test binaries one after another).

mod harness;
use harness::*;
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn stockade_out(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(stockade())
        .args(args)
        .output()
        .expect("run stockade");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// This build's set in `stockade monitors status --json`, if one is pinned.
fn this_set() -> Option<Value> {
    let (code, stdout, stderr) = stockade_out(&["monitors", "status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let sets: Vec<Value> = serde_json::from_str(&stdout).expect("status JSON");
    sets.into_iter().find(|s| s["this_build"] == true)
}

/// `stockade monitors down`, and nothing of this build left pinned.
fn start_clean() {
    let (code, _, stderr) = stockade_out(&["monitors", "down"]);
    assert_eq!(code, 0, "{stderr}");
    let until = Instant::now() + patience(10);
    while this_set().is_some() {
        assert!(
            Instant::now() < until,
            "another user keeps the monitors: {:?}",
            this_set()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `stockade run --json` of the hostile fixture, in the background.
fn spawn_run(policy: &std::path::Path, args: &[&str]) -> Child {
    Command::new(stockade())
        .args(["run", "--json", "--policy"])
        .arg(policy)
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .arg("--")
        .arg(hostile())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stockade")
}

/// Waits until `pid` owns a slot of the set; returns that slot's status entry.
fn slot_of(pid: u32) -> Value {
    let until = Instant::now() + patience(20);
    loop {
        if let Some(set) = this_set() {
            if let Some(slot) = set["slots"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["owner"] == pid)
            {
                return slot.clone();
            }
        }
        assert!(Instant::now() < until, "pid {pid} never armed a sandbox");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The summary is the last JSON line of stderr (debug lines may follow it).
fn summary(stderr: &str) -> Value {
    stderr
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("no summary in:\n{stderr}"))
}

fn violations(summary: &Value) -> Vec<Value> {
    summary["monitor"]["first"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn runs_at_once_share_one_set_and_each_gets_only_its_own_events() {
    if !privileged("runs_at_once_share_one_set_and_each_gets_only_its_own_events") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    start_clean();
    let policy = policy_file("shared", &policy(""));
    // A: waits, then writes a file Landlock keeps read-only.
    let a = spawn_run(&policy, &["after", "3000", "write", "/proc/self/comm"]);
    let a_pid = a.id();
    let a_slot = slot_of(a_pid);
    let set = this_set().expect("A's set");
    assert_eq!(set["loaded_by"], a_pid, "{set:#}");
    assert_eq!(set["users"], serde_json::json!([a_pid]), "{set:#}");
    assert_eq!(set["persistent"], false);

    // B, while A runs: joins A's set (no load of its own) and makes a seccomp denial.
    let r = run_with(&policy, &[&hostile(), "syscall", "mount"], |c| {
        c.env("STOCKADE_LOG", "stockade::monitor=debug");
    });
    assert!(
        r.stderr.contains("the host's set joined"),
        "B did not join A's set:\n{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("monitor load: object"),
        "B loaded the programs again:\n{}",
        r.stderr
    );
    assert_eq!(r.stdout.trim(), "err EPERM");
    let b = violations(&summary(&r.stderr));
    assert_eq!(b.len(), 1, "B's violations: {b:#?}");
    assert_eq!(b[0]["layer"], "seccomp");
    assert_eq!(b[0]["syscall"], "mount");

    let out = a.wait_with_output().expect("wait for A");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "err EACCES");
    let v = violations(&summary(&stderr));
    assert_eq!(
        v.len(),
        1,
        "A's violations (B's must not be among them): {v:#?}"
    );
    assert_eq!(v[0]["layer"], "landlock");
    assert_eq!(v[0]["object"], "/proc/self/comm");
    assert!(a_slot["cgroup_id"].as_u64().is_some());

    // A was the last user: nothing of the set is left pinned.
    assert!(this_set().is_none(), "left pinned: {:?}", this_set());
    let id = set["id"].as_str().unwrap();
    assert!(
        !std::path::Path::new(&format!("/sys/fs/bpf/stockade/{id}")).exists(),
        "the pin directory is left"
    );
    // Its parent goes with the last set (unless another build's set is pinned).
    let others = std::fs::read_dir("/sys/fs/bpf/stockade").map_or(0, |d| d.count());
    assert!(
        others > 0 || !std::path::Path::new("/sys/fs/bpf/stockade").exists(),
        "an empty /sys/fs/bpf/stockade is left"
    );
}

#[test]
fn persistent_monitors_stay_loaded_until_down() {
    if !privileged("persistent_monitors_stay_loaded_until_down") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    start_clean();
    let (code, stdout, stderr) = stockade_out(&["monitors", "up"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": loaded; kept loaded"), "{stdout}");
    let set = this_set().expect("a set after `monitors up`");
    assert_eq!(set["persistent"], true);
    assert_eq!(set["users"], serde_json::json!([]), "{set:#}");
    // Up again: the same set, not a second load.
    let (_, stdout, _) = stockade_out(&["monitors", "up"]);
    assert!(stdout.contains(": already loaded"), "{stdout}");
    // doctor says so too.
    let (_, doctor, _) = stockade_out(&["doctor"]);
    let line = format!(
        "host's monitor set    {}: loaded, 0 user(s), 0 slot(s) held, kept",
        set["id"].as_str().unwrap()
    );
    assert!(doctor.contains(&line), "{doctor}");

    let policy = policy_file("shared", &policy(""));
    let r = run_with(&policy, &[&hostile(), "echo", "hi"], |c| {
        c.env("STOCKADE_LOG", "stockade::monitor=debug");
    });
    assert_eq!(r.stdout.trim(), "ok hi");
    assert!(r.stderr.contains("the host's set joined"), "{}", r.stderr);
    let after = this_set().expect("the set outlives its users");
    assert_eq!(after["loaded_by"], set["loaded_by"]);
    assert!(after["slots"].as_array().unwrap().is_empty(), "{after:#}");

    let (code, stdout, stderr) = stockade_out(&["monitors", "down"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": removed"), "{stdout}");
    assert!(this_set().is_none());
    let (_, stdout, _) = stockade_out(&["monitors", "status"]);
    assert!(stdout.starts_with("no monitors are loaded"), "{stdout}");
}

#[test]
fn a_killed_supervisors_entries_are_reclaimed_by_the_next() {
    if !privileged("a_killed_supervisors_entries_are_reclaimed_by_the_next") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    start_clean();
    let policy = policy_file("shared", &policy(""));
    let mut a = spawn_run(&policy, &["after", "30000", "echo", "late"]);
    let a_pid = a.id();
    let slot = slot_of(a_pid);
    // SAFETY: kill of the child this test spawned (its pid is still ours: not waited for).
    assert_eq!(unsafe { libc::kill(a_pid as i32, libc::SIGKILL) }, 0);
    a.wait().expect("reap A");

    // Its slot is left holding its sandbox, with nobody holding the slot.
    let set = this_set().expect("the set is left pinned by a killed last user");
    assert_eq!(set["users"], serde_json::json!([]), "{set:#}");
    let left = set["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == slot["slot"])
        .cloned()
        .unwrap_or_else(|| panic!("slot gone: {set:#}"));
    assert_eq!(left["owner"], Value::Null, "{left:#}");
    assert_eq!(left["cgroup_id"], slot["cgroup_id"]);

    // The next run takes that slot (the lowest free one), removes A's entries and, as the
    // last user, the whole set.
    let r = run_with(&policy, &[&hostile(), "echo", "hi"], |c| {
        c.env("STOCKADE_LOG", "stockade::monitor=warn");
    });
    assert_eq!(r.stdout.trim(), "ok hi");
    assert!(
        r.stderr.contains(&format!(
            "reclaiming the monitor entries of a sandbox whose supervisor (pid {a_pid})"
        )) && r.stderr.contains(&format!("({})", slot["cgroup_id"])),
        "{}",
        r.stderr
    );
    assert!(this_set().is_none(), "left pinned: {:?}", this_set());
    // A's sandbox went too (the orphan sweep of the next start).
    let a_cgroup = slot["cgroup"].as_str().unwrap();
    assert!(
        !std::path::Path::new(a_cgroup).exists(),
        "{a_cgroup} is left"
    );
}

#[test]
fn a_set_that_lost_a_hook_is_never_joined() {
    if !privileged("a_set_that_lost_a_hook_is_never_joined") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The link of a global hook (unpinned, seccomp's kill reports are detached), and the program
    // a sandbox attaches to the syscall tracepoint: a set without either must not be joined.
    for lost in ["link-signal_generate", "prog-sys_exit"] {
        start_clean();
        let (code, _, stderr) = stockade_out(&["monitors", "up"]);
        assert_eq!(code, 0, "{stderr}");
        let set = this_set().expect("a set after `monitors up`");
        let pin = format!("{}/{lost}", set["pins"].as_str().unwrap());
        std::fs::remove_file(&pin).expect("remove the pin");
        let policy = policy_file("shared", &policy(""));
        let r = run_with(&policy, &[&hostile(), "syscall", "mount"], |c| {
            c.env("STOCKADE_LOG", "stockade::monitor=debug");
        });
        assert!(
            r.stderr.contains("do not open") && r.stderr.contains("loading them again"),
            "{lost}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("the host's set loaded"), "{}", r.stderr);
        // The reloaded set's hooks work: seccomp's refusal is reported.
        assert_eq!(r.stdout.trim(), "err EPERM");
        let v = violations(&summary(&r.stderr));
        assert_eq!(v.len(), 1, "{lost}: {v:#?}");
        assert_eq!(v[0]["layer"], "seccomp");
        assert!(
            std::path::Path::new(&pin).exists(),
            "{lost} is pinned again"
        );
        let (code, stdout, _) = stockade_out(&["monitors", "down"]);
        assert_eq!(code, 0);
        assert!(stdout.contains(": removed"), "{stdout}");
    }
}

/// `bpf(cmd, attr)` for the few commands the tracepoint test asks.
fn bpf(cmd: libc::c_long, attr: &mut [u32]) -> libc::c_long {
    // SAFETY: `attr` is a live, writable buffer of the size passed; the kernel reads (and for
    // GET_NEXT_ID writes) at most that many bytes.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    }
}

/// The id of the program pinned at `path` (BPF_OBJ_GET, then BPF_OBJ_GET_INFO_BY_FD).
fn program_id(path: &str) -> u32 {
    let name = std::ffi::CString::new(path).unwrap();
    let mut attr = [0u32; 6];
    attr[0] = name.as_ptr() as u64 as u32;
    attr[1] = (name.as_ptr() as u64 >> 32) as u32;
    let fd = bpf(7, &mut attr);
    assert!(
        fd >= 0,
        "BPF_OBJ_GET {path}: {}",
        std::io::Error::last_os_error()
    );
    // bpf_prog_info starts with type and id.
    let mut info = [0u32; 64];
    assert!(
        info_and_close(fd, &mut info),
        "BPF_OBJ_GET_INFO_BY_FD: {}",
        std::io::Error::last_os_error()
    );
    info[1]
}

/// BPF_OBJ_GET_INFO_BY_FD into `info`, then closes `fd` (a descriptor the caller was just given).
fn info_and_close(fd: libc::c_long, info: &mut [u32]) -> bool {
    let mut attr = [0u32; 4];
    attr[0] = fd as u32;
    attr[1] = std::mem::size_of_val(info) as u32;
    attr[2] = info.as_mut_ptr() as u64 as u32;
    attr[3] = (info.as_mut_ptr() as u64 >> 32) as u32;
    let r = bpf(15, &mut attr);
    // SAFETY: a descriptor the caller was given by bpf(2) and owns; closed once, here.
    unsafe { libc::close(fd as i32) };
    r == 0
}

/// How many links in the kernel attach program `prog_id` (walked by id, as bpftool does).
fn links_of(prog_id: u32) -> usize {
    let mut found = 0;
    let mut id = 0u32;
    loop {
        let mut attr = [id, 0, 0, 0];
        if bpf(31, &mut attr) != 0 {
            return found; // BPF_LINK_GET_NEXT_ID: ENOENT after the last.
        }
        id = attr[1];
        let mut attr = [id, 0, 0, 0];
        let fd = bpf(30, &mut attr); // BPF_LINK_GET_FD_BY_ID
        if fd < 0 {
            continue; // gone meanwhile
        }
        // bpf_link_info: type, id, prog_id, ...
        let mut info = [0u32; 32];
        if info_and_close(fd, &mut info) && info[2] == prog_id {
            found += 1;
        }
    }
}

/// A fresh set kept loaded (`monitors up`), and the kernel's id of its `sys_exit` program.
fn kept_set() -> (Value, u32) {
    start_clean();
    let (code, _, stderr) = stockade_out(&["monitors", "up"]);
    assert_eq!(code, 0, "{stderr}");
    let set = this_set().expect("a set after `monitors up`");
    let pins = set["pins"].as_str().unwrap().to_string();
    let sys_exit = program_id(&format!("{pins}/prog-sys_exit"));
    (set, sys_exit)
}

fn untraced_policy(extra: &str) -> std::path::PathBuf {
    policy_file(
        "untraced",
        &policy(&format!("{extra}\n[monitor]\nsyscall_tracepoint = false\n")),
    )
}

/// Waits until `pid` holds the syscall tracepoint for its sandbox (which arm takes after the
/// slot, before the sandbox runs).
fn wanting(pid: u32) {
    let until = Instant::now() + patience(20);
    loop {
        let set = this_set();
        if set.as_ref().is_some_and(|s| {
            s["tracepoint_users"]
                .as_array()
                .is_some_and(|u| u.contains(&Value::from(pid)))
        }) {
            return;
        }
        assert!(
            Instant::now() < until,
            "pid {pid} never took the tracepoint: {set:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file in the plugin directory (which the sandbox sees at the same path) whose creation
/// lets a `hostile until FILE ...` go on.
struct Go(std::path::PathBuf);

impl Go {
    fn new(name: &str) -> Go {
        let path = plugin_dir().join(format!("go-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Go(path)
    }
    fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
    fn now(&self) {
        std::fs::write(&self.0, b"").expect("write the go file");
    }
}

impl Drop for Go {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_syscall_tracepoint_is_attached_only_while_a_sandbox_wants_it() {
    let test = "the_syscall_tracepoint_is_attached_only_while_a_sandbox_wants_it";
    if !privileged(test) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A persistent set with no sandbox: nothing on the host's syscall path.
    let (set, sys_exit) = kept_set();
    assert_eq!(links_of(sys_exit), 0, "attached with no sandbox: {set:#}");
    assert_eq!(set["syscall_tracepoint"], false, "{set:#}");

    // A wants it (the default): attached while A runs. A writes what Landlock keeps read-only
    // once told to.
    let traced = policy_file("traced", &policy(""));
    let (go_a, go_c) = (Go::new("a"), Go::new("c"));
    let a = spawn_run(&traced, &["until", &go_a.arg(), "write", "/proc/self/comm"]);
    let a_pid = a.id();
    wanting(a_pid);
    assert_eq!(links_of(sys_exit), 1);
    // C wants it too: the same link, not a second one (sys_exit would run twice per call).
    let c = spawn_run(&traced, &["until", &go_c.arg(), "echo", "c"]);
    let c_pid = c.id();
    wanting(c_pid);
    assert_eq!(links_of(sys_exit), 1, "a second link for the second wanter");
    let now = this_set().unwrap();
    assert_eq!(now["syscall_tracepoint"], true, "{now:#}");
    let mut wanters: Vec<u64> = now["tracepoint_users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    wanters.sort();
    let mut expected = vec![u64::from(a_pid), u64::from(c_pid)];
    expected.sort();
    assert_eq!(wanters, expected, "{now:#}");

    // B does not, while the program runs for A and C: B's Landlock refusal is enforced, not seen.
    let untraced = untraced_policy("");
    let r = run(&untraced, &[&hostile(), "write", "/proc/self/comm"]);
    assert_eq!(r.stdout.trim(), "err EACCES", "{}", r.stderr);
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
    assert_eq!(r.summary["monitor"]["syscall_tracepoint"], false);
    assert_eq!(r.summary["monitor"]["syscalls"], 0, "{}", r.stderr);
    // B's end left A's and C's tracepoint alone, pin included.
    assert_eq!(links_of(sys_exit), 1);
    assert_eq!(this_set().unwrap()["syscall_tracepoint"], true);

    // Control: A sees its own refusal.
    go_a.now();
    let out = a.wait_with_output().expect("wait for A");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "err EACCES");
    let a_sum = summary(&stderr);
    let v = violations(&a_sum);
    assert_eq!(v.len(), 1, "A's violations: {v:#?}");
    assert_eq!(v[0]["layer"], "landlock");
    assert_eq!(a_sum["monitor"]["syscall_tracepoint"], true);
    assert!(a_sum["monitor"]["syscalls"].as_u64().unwrap() > 0);
    // C still wants it.
    assert_eq!(links_of(sys_exit), 1, "detached while C wants it");
    go_c.now();
    let out = c.wait_with_output().expect("wait for C");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok c");

    // Both gone: detached, though the set stays loaded.
    assert_eq!(links_of(sys_exit), 0, "left attached after its last wanter");
    let now = this_set().expect("the persistent set");
    assert_eq!(now["syscall_tracepoint"], false, "{now:#}");

    // With the tracepoint off, seccomp's kills are still violations (the signal tracepoint).
    let kill = untraced_policy("[syscalls]\ndeny = [\"getppid\"]\ndeny_action = \"kill\"\n");
    let r = run(&kill, &[&hostile(), "syscall", "getppid"]);
    assert_eq!(r.summary["ended_by"], "seccomp_kill", "{}", r.stderr);
    let v = violations(&r.summary);
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0]["layer"], "seccomp");
    assert_eq!(v[0]["syscall"], "getppid");
    // Control: its allowed calls run.
    let r = run(&kill, &[&hostile(), "echo", "alive"]);
    assert_eq!(r.stdout.trim(), "ok alive", "{}", r.stderr);
    assert_eq!(links_of(sys_exit), 0);

    // doctor says what a sandbox without it still reports on this kernel.
    let (_, doctor, _) = stockade_out(&["doctor", "--json"]);
    let doctor: Value = serde_json::from_str(&doctor).expect("doctor JSON");
    let sources = doctor["untraced_sources"]
        .as_array()
        .expect("untraced_sources");
    assert!(
        sources.contains(&Value::from("seccomp kills (signal tracepoint)")),
        "{sources:?}"
    );

    let (code, _, _) = stockade_out(&["monitors", "down"]);
    assert_eq!(code, 0);
}

#[test]
fn a_tracepoint_left_by_a_killed_supervisor_is_detached_by_the_next() {
    let test = "a_tracepoint_left_by_a_killed_supervisor_is_detached_by_the_next";
    if !privileged(test) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_, sys_exit) = kept_set();
    let traced = policy_file("traced", &policy(""));
    let mut a = spawn_run(&traced, &["after", "30000", "echo", "late"]);
    let a_pid = a.id();
    wanting(a_pid);
    // SAFETY: kill of the child this test spawned (its pid is still ours: not waited for).
    assert_eq!(unsafe { libc::kill(a_pid as i32, libc::SIGKILL) }, 0);
    a.wait().expect("reap A");
    // Nobody wants it now, but nobody said so: still attached.
    assert_eq!(links_of(sys_exit), 1);
    // The next supervisor, wanting it or not, settles it.
    let r = run(&untraced_policy(""), &[&hostile(), "echo", "hi"]);
    assert_eq!(r.stdout.trim(), "ok hi", "{}", r.stderr);
    assert_eq!(links_of(sys_exit), 0, "still attached after the next run");
    let (code, _, _) = stockade_out(&["monitors", "down"]);
    assert_eq!(code, 0);
}
