//! The caller's terminal: a plugin handed a terminal as stdin and stdout cannot take it over or
//! leave it broken. What would outlive the sandbox and cannot be read back (exclusive mode,
//! stopped output, the window size, becoming its controlling terminal) is refused by seccomp and
//! reported; raw mode is allowed, and the supervisor puts the settings back however the sandbox
//! ended. The terminal is a real pseudo-terminal the test opens; it reads what the plugin writes
//! from the master side.

mod harness;
use harness::*;
use serde_json::Value;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

fn openpty() -> Pty {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the given ints; the name, termios and winsize
    // pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and belong to nobody else.
    let pty = unsafe {
        Pty {
            master: OwnedFd::from_raw_fd(master),
            slave: OwnedFd::from_raw_fd(slave),
        }
    };
    // A window size of the caller's, as a terminal emulator sets it on the master.
    set_winsize(pty.master.as_raw_fd(), 40, 100);
    pty
}

fn termios(fd: i32) -> libc::termios {
    // SAFETY: a zeroed termios is a valid value; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr writes into a valid local.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t
}

/// The fields tcsetattr sets (the struct has padding), for comparison.
fn settings(t: &libc::termios) -> (u32, u32, u32, u32, u8, Vec<u8>, u32, u32) {
    (
        t.c_iflag,
        t.c_oflag,
        t.c_cflag,
        t.c_lflag,
        t.c_line,
        t.c_cc.to_vec(),
        t.c_ispeed,
        t.c_ospeed,
    )
}

fn winsize(fd: i32) -> (u16, u16) {
    // SAFETY: a zeroed winsize is valid; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into a valid local.
    assert_eq!(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) }, 0);
    (ws.ws_row, ws.ws_col)
}

fn set_winsize(fd: i32, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid local.
    assert_eq!(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }, 0);
}

fn exclusive(fd: i32) -> bool {
    let mut on: libc::c_int = 0;
    // SAFETY: TIOCGEXCL writes one int into a valid local.
    assert_eq!(unsafe { libc::ioctl(fd, libc::TIOCGEXCL, &mut on) }, 0);
    on != 0
}

/// Reads from the master until what arrived satisfies `done` or `limit` has passed; returns all
/// read.
fn read_until(master: i32, done: impl Fn(&str) -> bool, limit: Duration) -> String {
    let until = Instant::now() + limit;
    let mut got = Vec::new();
    while !done(&String::from_utf8_lossy(&got)) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfd = libc::pollfd {
            fd: master,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
        if n <= 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a local buffer of its size.
        let r = unsafe { libc::read(master, buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            break;
        }
        got.extend_from_slice(&buf[..r as usize]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// `stockade run --json` of the fixture's `terminal HOLD_MS` with the pty's slave as stdin and
/// stdout; stderr (the summary) piped.
fn spawn(pty: &Pty, opts: &[&str], hold_ms: &str) -> std::process::Child {
    let file = policy_file("terminal", &policy(""));
    Command::new(stockade())
        .args(["run", "--json", "--policy"])
        .arg(&file)
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .args(opts)
        .args(["--", &hostile(), "terminal", hold_ms])
        .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
        .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stockade")
}

/// Runs the fixture, checks what it was refused and allowed, and that raw mode really reached
/// the caller's terminal while it ran; `stop` ends the run (or not) once the line is read.
fn run_and_check(pty: &Pty, opts: &[&str], hold_ms: &str, stop: impl FnOnce(u32)) -> RunResult {
    let (master, slave) = (pty.master.as_raw_fd(), pty.slave.as_raw_fd());
    let child = spawn(pty, opts, hold_ms);
    let name = format!("stockade-{}", child.id());
    let verdict = |s: &str| s.find("tcgets=").is_some_and(|i| s[i..].contains("\r\n"));
    let out = read_until(master, verdict, Duration::from_secs(20));
    let line = out
        .lines()
        .find(|l| l.starts_with("ok "))
        .unwrap_or_else(|| panic!("no verdict from the fixture on the terminal: {out:?}"))
        .trim_end()
        .to_string();
    assert_eq!(
        line,
        "ok excl=EPERM sctty=EPERM winsz=EPERM xonc=EPERM raw=ok tcgets=raw"
    );
    // The control: raw mode is on the caller's terminal while the plugin runs.
    assert_eq!(
        termios(slave).c_lflag & libc::ICANON,
        0,
        "raw mode did not reach the terminal"
    );
    stop(child.id());
    let r = finish(child.wait_with_output().expect("wait for stockade"));
    let left: Vec<_> = leftover_cgroups()
        .into_iter()
        .filter(|p| p.ends_with(&name))
        .collect();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
    // Each refusal is a seccomp violation of ioctl.
    let first = r.summary["monitor"]["first"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no monitor report:\n{}", r.stderr));
    let seccomp: Vec<&Value> = first.iter().filter(|e| e["layer"] == "seccomp").collect();
    assert_eq!(seccomp.len(), 4, "{first:#?}");
    for e in &seccomp {
        assert_eq!(e["type"], "violation", "{e}");
        assert_eq!(e["syscall"], "ioctl", "{e}");
        assert_eq!(e["errno"], "EPERM", "{e}");
    }
    assert_eq!(r.summary["monitor"]["violations"], 4, "{first:#?}");
    r
}

/// The terminal as the test left it, and that output flows through it.
#[track_caller]
fn assert_terminal_restored(pty: &Pty, original: &libc::termios) {
    let (master, slave) = (pty.master.as_raw_fd(), pty.slave.as_raw_fd());
    assert_eq!(settings(&termios(slave)), settings(original));
    assert_eq!(winsize(slave), (40, 100));
    assert!(!exclusive(slave), "the terminal was left in exclusive mode");
    // Output is not stopped: what is written to the slave arrives at the master.
    let msg = b"still flowing\n";
    // SAFETY: writing a local buffer to our own pty.
    let n = unsafe { libc::write(slave, msg.as_ptr().cast(), msg.len()) };
    assert_eq!(n, msg.len() as isize);
    let got = read_until(
        master,
        |s| s.contains("still flowing"),
        Duration::from_secs(2),
    );
    assert!(got.contains("still flowing"), "output is stopped: {got:?}");
}

#[test]
fn a_plugin_cannot_take_over_or_break_the_callers_terminal() {
    if !privileged("a_plugin_cannot_take_over_or_break_the_callers_terminal") {
        return;
    }
    let pty = openpty();
    let original = termios(pty.slave.as_raw_fd());
    let r = run_and_check(&pty, &[], "300", |_| {});
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary["ended_by"], "exited");
    assert_terminal_restored(&pty, &original);
}

#[test]
fn the_terminal_is_restored_when_the_sandbox_is_stopped() {
    if !privileged("the_terminal_is_restored_when_the_sandbox_is_stopped") {
        return;
    }
    // A stop signal to stockade: the sandbox is killed while the plugin holds raw mode.
    let pty = openpty();
    let original = termios(pty.slave.as_raw_fd());
    let r = run_and_check(&pty, &[], "30000", |pid| {
        // SAFETY: signalling the stockade process this test spawned, by pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    });
    assert_eq!(r.code, 128 + libc::SIGTERM, "{}", r.stderr);
    assert_eq!(r.summary["ended_by"], "interrupted");
    assert_terminal_restored(&pty, &original);

    // The policy's timeout: every process killed, the same restore.
    let pty = openpty();
    let original = termios(pty.slave.as_raw_fd());
    let r = run_and_check(&pty, &["--timeout", "2s"], "30000", |_| {});
    assert_eq!(r.summary["ended_by"], "timeout", "{}", r.stderr);
    assert_terminal_restored(&pty, &original);
}

#[test]
fn reopening_the_callers_terminal_by_name_is_a_violation() {
    if !privileged("reopening_the_callers_terminal_by_name_is_a_violation") {
        return;
    }
    // `/dev/stdin` and `/proc/self/fd/1` lead to the caller's terminal, which no grant covers:
    // file modes answer first, but it is a reach past the descriptors the plugin was handed.
    let pty = openpty();
    let file = policy_file("terminal-reopen", &policy(""));
    let slave = &pty.slave;
    let r = run_with(&file, &[&hostile(), "reopen-stdio"], |cmd| {
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()));
    });
    let out = read_until(
        pty.master.as_raw_fd(),
        |s| s.contains("own="),
        Duration::from_secs(5),
    );
    // Control: a file of its own reopens through /proc/self/fd.
    let line = out
        .lines()
        .find(|l| l.starts_with("ok "))
        .unwrap_or_else(|| panic!("no verdict on the terminal: {out:?}\n{}", r.stderr))
        .trim_end();
    let pid = line
        .split_once(" pid=")
        .and_then(|(_, rest)| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{line}"));
    assert_eq!(
        line,
        format!("ok stdin=EACCES stdout=EACCES by_pid=EACCES pid={pid} own=ok"),
        "{}",
        r.stderr
    );
    // The terminal's name, as the host knows it.
    let tty = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd())).unwrap();
    let first = r.summary["monitor"]["first"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no monitor report:\n{}", r.stderr));
    let objects: Vec<(&str, &str, &str)> = first
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "violation", "{e}");
            assert_eq!(e["layer"], "landlock", "{e}");
            assert_eq!(e["errno"], "EACCES", "{e}");
            (
                e["action"].as_str().unwrap(),
                e["object"].as_str().unwrap(),
                e["syscall"].as_str().unwrap(),
            )
        })
        .collect();
    let stdin = format!("/dev/stdin → {}", tty.display());
    let stdout = format!("/proc/self/fd/1 → {}", tty.display());
    // Through the sandbox's own /proc: its pid there, not the host's.
    let by_pid = format!("/proc/{pid}/fd/1 → {}", tty.display());
    assert_eq!(
        objects,
        [
            ("read", stdin.as_str(), "openat"),
            ("write", stdout.as_str(), "openat"),
            ("write", by_pid.as_str(), "openat")
        ],
        "{}",
        r.stderr
    );
    assert_eq!(r.summary["monitor"]["violations"], 3, "{}", r.stderr);
}
