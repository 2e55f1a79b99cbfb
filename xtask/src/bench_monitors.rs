//! `cargo xtask bench monitors [--rounds N] [--no-record]`: what the eBPF monitors cost, and how
//! fast they act.
//!
//! 1. Host processes outside any sandbox: an open/close loop and a getppid loop in this very
//!    process, while a long-lived `stockade run` keeps the tracepoints attached, while nothing is
//!    attached, and (the peer) while bpftrace has a raw_syscalls:sys_enter probe attached.
//! 2. Inside a sandbox: the fixture's open/read/close and TCP connect loops in a monitor-mode
//!    sandbox, with the monitors and without (`STOCKADE_MONITORS=off`).
//! 3. Enforcement latency: the summary's `monitor.auto_unload.kill_latency_ms` of a threshold-1
//!    kill, for a hidden-path violation (killed from userspace) and a network one (the offender
//!    killed in the kernel, the rest by cgroup.kill).
//! 4. Event throughput: a million denied connects; events received per second and events dropped.
//!
//! States are interleaved round by round, as in `bench launch`, and quoted as medians and ratios
//! (percentiles for the latencies); nothing is asserted. Results go to docs/benchmarks.md between
//! `<!-- bench:monitors:begin -->` and `<!-- bench:monitors:end -->`.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{flag_value, machine, median, percentile, replace_section, today};
use crate::{apt_install, target_dir, workspace_root};

pub const USAGE: &str = "cargo xtask bench monitors [--rounds N] [--no-record]";

const DEFAULT_ROUNDS: usize = 10;
/// Part 1, per state and round, in this process.
const HOST_OPEN: u64 = 200_000;
const HOST_GETPPID: u64 = 1_000_000;
/// Part 2, per sandbox run.
const SANDBOX_OPEN: u64 = 200_000;
const SANDBOX_CONNECT: u64 = 20_000;
/// Part 3: runs of each series per round.
const KILLS_PER_ROUND: usize = 10;
/// Part 4: denied connects per run (one run per round).
const FLOOD: u64 = 1_000_000;

/// The peer of part 1: a probe on every system call of the machine whose filter never matches
/// (cgroup ids start at 1, the root; 0 is no cgroup's).
const BPFTRACE_PROGRAM: &str = "tracepoint:raw_syscalls:sys_enter /cgroup == 0/ { }";

const BEGIN: &str = "<!-- bench:monitors:begin -->";
const END: &str = "<!-- bench:monitors:end -->";

/// What every part needs: the binaries, the plugin directory, the policies, a loopback listener.
struct Setup {
    stockade: PathBuf,
    plugin_dir: PathBuf,
    hostile: String,
    port: u16,
    /// Monitor mode, no network: the long-lived sandbox of part 1.
    monitor_policy: PathBuf,
    /// The same with `[monitor] syscall_tracepoint = false`.
    untraced_policy: PathBuf,
    /// Monitor mode with the listener's port allowed: parts 2 and 4.
    monitor_net_policy: PathBuf,
    /// Enforce mode, threshold 1, kill: part 3.
    kill_policy: PathBuf,
    kill_net_policy: PathBuf,
}

pub fn run(args: &[&str]) -> Result<()> {
    let rounds: usize = flag_value(args, "--rounds")
        .map(|v| v.parse())
        .transpose()
        .context("--rounds takes a number")?
        .unwrap_or(DEFAULT_ROUNDS);
    if rounds == 0 {
        bail!("usage: {USAGE} (N at least 1)");
    }
    let record = !args.contains(&"--no-record");
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match *arg {
            "--no-record" => {}
            "--rounds" => {
                rest.next();
            }
            other => bail!("unknown argument {other:?}; usage: {USAGE}"),
        }
    }
    crate::setup::ebpf()?;
    super::build_release(&["stockade", "stockade-tests"])?;
    let setup = prepare()?;
    let started = Instant::now();

    println!("== 1. host processes outside any sandbox ({rounds} rounds) ==");
    let host = host_overhead(&setup, rounds)?;
    println!("{}", host.table);
    println!("{}\n", host.verdict);

    println!("== 2. inside a sandbox, monitors on vs off ({rounds} rounds) ==");
    let sandbox = sandbox_overhead(&setup, rounds)?;
    println!("{}", sandbox.table);
    println!("{}\n", sandbox.verdict);

    let kills = rounds * KILLS_PER_ROUND;
    println!("== 3. enforcement latency ({kills} runs per series) ==");
    let latency = enforcement_latency(&setup, kills)?;
    println!("{}", latency.table);
    println!("{}\n", latency.verdict);

    println!("== 4. event throughput ({rounds} runs of {FLOOD} denied connects) ==");
    let throughput = event_throughput(&setup, rounds)?;
    println!("{}", throughput.table);
    println!("{}\n", throughput.verdict);

    println!("took {:.0} s", started.elapsed().as_secs_f64());
    if record {
        let section = format!(
            "## Monitors: overhead, enforcement latency, event throughput\n\n\
             Measured {} on {}; `cargo xtask bench monitors --rounds {rounds}` (the states of each \
             part interleaved round by round; medians of the rounds, ratios and percentiles quoted, \
             nothing asserted).\n\n\
             ### Host processes outside any sandbox\n\n{}\n\n{}\n{}\n\n\
             ### Inside a sandbox: monitors on and off\n\n{}\n\n{}\n{}\n\n\
             ### Enforcement latency\n\n{}\n\n{}\n{}\n\n\
             ### Event throughput\n\n{}\n\n{}\n{}",
            today(),
            machine(),
            host.what,
            host.table,
            host.verdict,
            sandbox.what,
            sandbox.table,
            sandbox.verdict,
            latency.what,
            latency.table,
            latency.verdict,
            throughput.what,
            throughput.table,
            throughput.verdict,
        );
        replace_section(
            &workspace_root().join("docs/benchmarks.md"),
            BEGIN,
            END,
            &section,
        )?;
    }
    Ok(())
}

/// One part's result: a sentence on what was measured, a Markdown table, the targets' verdict.
struct Part {
    what: String,
    table: String,
    verdict: String,
}

fn prepare() -> Result<Setup> {
    let target = target_dir()?;
    let release = target.join("x86_64-unknown-linux-gnu/release");
    // The sandbox's unprivileged uid must traverse every directory above the plugin directory.
    let scratch = target.join("bench-monitors");
    let _ = std::fs::remove_dir_all(&scratch);
    let plugin_dir = scratch.join("plugin");
    std::fs::create_dir_all(&plugin_dir)
        .with_context(|| format!("create {}", plugin_dir.display()))?;
    for dir in [&scratch, &plugin_dir] {
        set_mode(dir, 0o755)?;
    }
    // Copies of the binaries just built: a build during the run does not change what is measured.
    let stockade = scratch.join("stockade");
    std::fs::copy(release.join("stockade"), &stockade).context("copy the stockade binary")?;
    let hostile = plugin_dir.join("stockade-hostile");
    std::fs::copy(release.join("stockade-hostile"), &hostile)
        .context("copy the hostile fixture into the plugin directory")?;

    // A loopback listener for the whole run: it accepts and drops.
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a loopback listener")?;
    let port = listener.local_addr()?.port();
    widen_backlog(&listener)?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });

    let connect_rule = format!(
        "[network]\nmode = \"allow\"\nconnect = [{{ protocol = \"tcp\", address = \"127.0.0.1\", port = {port} }}]\n\n"
    );
    let monitor_mode =
        "[enforcement]\nmode = \"monitor\"\nthreshold = 1000\nwindow = \"60s\"\naction = \"report\"\n";
    let kill_mode =
        "[enforcement]\nmode = \"enforce\"\nthreshold = 1\nwindow = \"60s\"\naction = \"kill\"\n";
    let write = |name: &str, extra: String| -> Result<PathBuf> {
        let path = scratch.join(name);
        std::fs::write(&path, policy(&extra)).with_context(|| format!("write {name}"))?;
        Ok(path)
    };
    Ok(Setup {
        monitor_policy: write("monitor.toml", monitor_mode.to_string())?,
        untraced_policy: write(
            "untraced.toml",
            format!("{monitor_mode}[monitor]\nsyscall_tracepoint = false\n"),
        )?,
        monitor_net_policy: write("monitor-net.toml", format!("{connect_rule}{monitor_mode}"))?,
        kill_policy: write("kill.toml", kill_mode.to_string())?,
        kill_net_policy: write("kill-net.toml", format!("{connect_rule}{kill_mode}"))?,
        stockade,
        plugin_dir,
        hostile: hostile.to_string_lossy().into_owned(),
        port,
    })
}

/// std listens with a backlog of 128: when this thread is not scheduled for a millisecond or two
/// (2 shared cores), the connect loop fills the queue and a refused SYN costs a 1 s retransmit.
/// Listening again on a listening socket only changes its backlog.
fn widen_backlog(listener: &TcpListener) -> Result<()> {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn listen(fd: std::os::raw::c_int, backlog: std::os::raw::c_int) -> std::os::raw::c_int;
    }
    // SAFETY: a listening socket that `listener` owns and keeps open; no pointers.
    if unsafe { listen(listener.as_raw_fd(), 4096) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("listen(4096) on the loopback listener");
    }
    Ok(())
}

/// The integration tests' policy (tests/tests/harness: `policy()`) with `extra` sections.
fn policy(extra: &str) -> String {
    format!(
        r#"
[filesystem]
exec = ["/usr/bin", "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/bin", "$PLUGIN_DIR"]
read = ["/etc/ld.so.cache"]
write = ["$TMP"]

{extra}"#
    )
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// 1. Host processes

#[derive(Clone, Copy, PartialEq, Eq)]
enum HostState {
    Detached,
    /// An empty `raw_tracepoint/sys_exit` program: the floor of any syscall-tracepoint monitor.
    Floor,
    Stockade,
    Stockade10,
    Stockade50,
    Bpftrace,
    /// One sandbox whose policy turns the syscall tracepoint off.
    Untraced,
}

const HOST_STATES: usize = 7;

impl HostState {
    fn label(self) -> &'static str {
        match self {
            HostState::Detached => "detached (no stockade running)",
            HostState::Floor => "floor: an empty sys_exit program",
            HostState::Stockade => "stockade monitors attached (1 sandbox)",
            HostState::Stockade10 => "10 sandboxes, each with its supervisor",
            HostState::Stockade50 => "50 sandboxes, each with its supervisor",
            HostState::Bpftrace => "bpftrace sys_enter probe (peer)",
            HostState::Untraced => "1 sandbox with `syscall_tracepoint = false`",
        }
    }

    fn sandboxes(self) -> usize {
        match self {
            HostState::Stockade | HostState::Untraced => 1,
            HostState::Stockade10 => 10,
            HostState::Stockade50 => 50,
            _ => 0,
        }
    }
}

/// What keeps a state alive while the loops run.
enum Attached {
    Nothing,
    Floor(EmptyProbe),
    Stockade(Vec<Child>),
    Bpftrace(Child),
}

/// An empty `raw_tracepoint/sys_exit` program (`r0 = 0; exit`), attached while this lives: what
/// every process pays for a syscall tracepoint before any program logic.
struct EmptyProbe {
    _program: OwnedFd,
    _link: OwnedFd,
}

fn attach_empty_sys_exit() -> Result<EmptyProbe> {
    #[repr(C)]
    #[derive(Default)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        _rest: [u64; 12],
    }
    #[repr(C)]
    #[derive(Default)]
    struct RawTpOpen {
        name: u64,
        prog_fd: u32,
        _pad: u32,
        _rest: [u64; 4],
    }
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
    const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoad::default()
    };
    load.prog_name[..5].copy_from_slice(b"floor");
    let bpf = |cmd: libc::c_long, attr: *const libc::c_void, size: usize| {
        // SAFETY: `attr` points to a `union bpf_attr` prefix of `size` bytes that lives across
        // the call, and every pointer inside it to a live local.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            // SAFETY: a fresh descriptor that nobody else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        }
    };
    let program = bpf(
        BPF_PROG_LOAD,
        &load as *const ProgLoad as *const libc::c_void,
        std::mem::size_of::<ProgLoad>(),
    )
    .context("loading the empty sys_exit program")?;
    let name = b"sys_exit\0";
    let open = RawTpOpen {
        name: name.as_ptr() as u64,
        prog_fd: program.as_raw_fd() as u32,
        ..RawTpOpen::default()
    };
    let link = bpf(
        BPF_RAW_TRACEPOINT_OPEN,
        &open as *const RawTpOpen as *const libc::c_void,
        std::mem::size_of::<RawTpOpen>(),
    )
    .context("attaching the empty program to raw_tracepoint/sys_exit")?;
    Ok(EmptyProbe {
        _program: program,
        _link: link,
    })
}

fn host_overhead(setup: &Setup, rounds: usize) -> Result<Part> {
    let mut states = vec![
        HostState::Stockade,
        HostState::Detached,
        HostState::Floor,
        HostState::Stockade10,
        HostState::Stockade50,
        HostState::Untraced,
    ];
    let mut bpftrace_note = None;
    match apt_install(&["bpftrace"]) {
        Ok(()) => states.push(HostState::Bpftrace),
        Err(e) => {
            let why = format!("bpftrace could not be installed ({e:#}); its peer row is skipped");
            eprintln!("bench monitors: {why}");
            bpftrace_note = Some(why);
        }
    }
    // Warm-up: the loops once, short, in no particular state.
    open_close_ns(HOST_OPEN / 10)?;
    getppid_ns(HOST_GETPPID / 10);
    let mut open: Vec<Vec<f64>> = vec![Vec::new(); HOST_STATES];
    let mut ppid: Vec<Vec<f64>> = vec![Vec::new(); HOST_STATES];
    for round in 0..rounds {
        let mut i = 0;
        while i < states.len() {
            let state = states[i];
            let attached = match state {
                HostState::Detached => Attached::Nothing,
                HostState::Floor => Attached::Floor(attach_empty_sys_exit()?),
                HostState::Stockade
                | HostState::Stockade10
                | HostState::Stockade50
                | HostState::Untraced => {
                    let policy = if state == HostState::Untraced {
                        &setup.untraced_policy
                    } else {
                        &setup.monitor_policy
                    };
                    let mut sleepers = Vec::new();
                    for _ in 0..state.sandboxes() {
                        match start_sleeper(setup, policy) {
                            Ok(child) => sleepers.push(child),
                            Err(e) => {
                                for child in sleepers {
                                    let _ = stop_sleeper(child);
                                }
                                return Err(e);
                            }
                        }
                    }
                    Attached::Stockade(sleepers)
                }
                HostState::Bpftrace => match start_bpftrace() {
                    Ok(child) => Attached::Bpftrace(child),
                    Err(e) if round == 0 => {
                        let why =
                            format!("bpftrace does not run here ({e:#}); its peer row is skipped");
                        eprintln!("bench monitors: {why}");
                        bpftrace_note = Some(why);
                        states.remove(i);
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            let o = open_close_ns(HOST_OPEN);
            let p = getppid_ns(HOST_GETPPID);
            match attached {
                Attached::Nothing => {}
                // Detached when dropped.
                Attached::Floor(probe) => drop(probe),
                Attached::Stockade(children) => {
                    for child in children {
                        stop_sleeper(child)?;
                    }
                }
                Attached::Bpftrace(mut child) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            let slot = state as usize;
            open[slot].push(o?);
            ppid[slot].push(p);
            eprintln!(
                "  round {}: {}: open/close {:.0} ns, getppid {:.0} ns",
                round + 1,
                state.label(),
                open[slot].last().unwrap(),
                p
            );
            i += 1;
        }
    }
    let base_open = median(&open[HostState::Detached as usize]);
    let base_ppid = median(&ppid[HostState::Detached as usize]);
    let mut table = String::from(
        "| state | open/close median | ÷ detached | getppid median | ÷ detached |\n|---|---|---|---|---|\n",
    );
    for state in [
        HostState::Detached,
        HostState::Floor,
        HostState::Stockade,
        HostState::Stockade10,
        HostState::Stockade50,
        HostState::Untraced,
        HostState::Bpftrace,
    ] {
        let slot = state as usize;
        if open[slot].is_empty() {
            continue;
        }
        let (o, p) = (median(&open[slot]), median(&ppid[slot]));
        table.push_str(&format!(
            "| {} | {o:.0} ns | {:.3} | {p:.0} ns | {:.3} |\n",
            state.label(),
            o / base_open,
            p / base_ppid
        ));
    }
    let open_ratio = median(&open[HostState::Stockade as usize]) / base_open;
    let ppid_ratio = median(&ppid[HostState::Stockade as usize]) / base_ppid;
    let floor_ppid = median(&ppid[HostState::Floor as usize]);
    let (tax, floor_tax) = (
        median(&ppid[HostState::Stockade as usize]) - base_ppid,
        floor_ppid - base_ppid,
    );
    let ten = median(&ppid[HostState::Stockade10 as usize]) / base_ppid;
    let fifty = median(&ppid[HostState::Stockade50 as usize]) / base_ppid;
    let untraced = median(&ppid[HostState::Untraced as usize]) / base_ppid;
    let mut verdict = format!(
        "With stockade's monitors attached, a host process's open/close takes {open_ratio:.3}× as \
         long as with none attached ({}: at most 1.02×); getppid {ppid_ratio:.3}×. Stockade's \
         own cost per host syscall is {tax:.0} ns against the empty program's {floor_tax:.0} ns \
         ({}: within 10% of the floor). With 10 sandboxes getppid takes {ten:.3}×, with 50 \
         {fifty:.3}× ({}: no growth with their number). With one sandbox whose policy turns \
         the syscall tracepoint off (`[monitor] syscall_tracepoint = false`) getppid takes \
         {untraced:.3}× ({}: the host pays nothing, at most 1.02×).",
        met(open_ratio <= 1.02),
        met(tax <= floor_tax * 1.10),
        met(fifty <= ppid_ratio * 1.10),
        met(untraced <= 1.02),
    );
    if let Some(note) = bpftrace_note {
        verdict.push_str(&format!(" Peer: {note}."));
    }
    Ok(Part {
        what: format!(
            "This process (outside any sandbox) timed {HOST_OPEN} open+close of /etc/hostname and \
             {HOST_GETPPID} getppid calls per round, while a monitor-mode `stockade run -- \
             /usr/bin/sleep 600` kept the monitors' sys_exit and sched tracepoints attached (and \
             10 and 50 of them at once, and one whose policy turns the syscall tracepoint off), \
             while nothing was attached, while only an empty \
             raw_tracepoint/sys_exit program was (the floor), and while `bpftrace -e \
             '{BPFTRACE_PROGRAM}'` was attached; {}, the states in turn, time per call.",
            times(rounds, "round")
        ),
        table,
        verdict,
    })
}

fn open_close_ns(n: u64) -> Result<f64> {
    let path = Path::new("/etc/hostname");
    let start = Instant::now();
    for _ in 0..n {
        let f = std::fs::File::open(path).context("open /etc/hostname")?;
        drop(std::hint::black_box(f));
    }
    Ok(start.elapsed().as_nanos() as f64 / n as f64)
}

fn getppid_ns(n: u64) -> f64 {
    let start = Instant::now();
    let mut sum = 0u64;
    for _ in 0..n {
        sum = sum.wrapping_add(u64::from(std::hint::black_box(
            std::os::unix::process::parent_id(),
        )));
    }
    std::hint::black_box(sum);
    start.elapsed().as_nanos() as f64 / n as f64
}

/// A monitor-mode sandbox running `/usr/bin/sleep 600`, returned once the sleep runs (the monitors
/// are loaded and attached before the sandbox starts).
fn start_sleeper(setup: &Setup, policy: &Path) -> Result<Child> {
    let mut child = Command::new(&setup.stockade)
        .arg("run")
        .arg("--json")
        .arg("--policy")
        .arg(policy)
        .arg("--plugin-dir")
        .arg(&setup.plugin_dir)
        .args(["--", "/usr/bin/sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn stockade run -- /usr/bin/sleep 600")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if descendant_comms(child.id()).iter().any(|c| c == "sleep") {
            return Ok(child);
        }
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("the long-lived sandbox ended before its sleep started ({status}):\n{err}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the long-lived sandbox's sleep did not start within 10 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGTERM to the long-lived sandbox's supervisor, which kills the sandbox and cleans up; checks
/// from its summary that the monitors were really there.
fn stop_sleeper(child: Child) -> Result<()> {
    let pid = child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .context("kill -TERM")?;
    if !status.success() {
        bail!("kill -TERM {pid} failed");
    }
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = last_json(&stderr);
    if summary["ended_by"] != "interrupted" {
        bail!("the long-lived sandbox did not end by SIGTERM:\n{stderr}");
    }
    complete_monitors(&summary, &stderr)
}

/// Fails unless the summary has a monitor report with nothing degraded: a monitor-mode sandbox
/// runs without what does not load, and would measure nothing.
fn complete_monitors(summary: &Value, stderr: &str) -> Result<()> {
    let monitor = &summary["monitor"];
    if !monitor.is_object() {
        bail!("the sandbox ran without its monitors:\n{stderr}");
    }
    if let Some(d) = monitor["degraded"].as_array().filter(|d| !d.is_empty()) {
        bail!("the sandbox ran with monitors missing ({d:?}): nothing to measure:\n{stderr}");
    }
    Ok(())
}

/// The command names (comm) of every descendant of `pid`.
fn descendant_comms(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if let Ok(comm) = std::fs::read_to_string(format!("/proc/{child}/comm")) {
                    out.push(comm.trim().to_string());
                }
                todo.push(child);
            }
        }
    }
    out
}

/// bpftrace with [`BPFTRACE_PROGRAM`], returned once it said "Attaching".
fn start_bpftrace() -> Result<Child> {
    let mut child = Command::new("bpftrace")
        .args(["-e", BPFTRACE_PROGRAM])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn bpftrace")?;
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.contains("Attaching") => break,
            Ok(line) => seen.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if let Some(status) = child.try_wait()? {
            // Whatever it printed before exiting.
            seen.extend(rx.try_iter());
            bail!("bpftrace exited ({status}): {}", seen.join(" / "));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("bpftrace did not attach within 60 s: {}", seen.join(" / "));
        }
    }
    // "Attaching N probes..." comes just before the attach itself.
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = child.try_wait()? {
        bail!("bpftrace exited after attaching ({status})");
    }
    Ok(child)
}

// ---------------------------------------------------------------------------------------------
// 2. Inside a sandbox

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    summary: Value,
}

impl Run {
    fn line(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
}

/// `stockade run --json --policy POLICY --plugin-dir DIR -- stockade-hostile ARGS...`
fn hostile_run(setup: &Setup, policy: &Path, monitors: bool, args: &[&str]) -> Result<Run> {
    let mut cmd = Command::new(&setup.stockade);
    cmd.arg("run")
        .arg("--json")
        .arg("--policy")
        .arg(policy)
        .arg("--plugin-dir")
        .arg(&setup.plugin_dir)
        .arg("--")
        .arg(&setup.hostile)
        .args(args)
        .stdin(Stdio::null());
    if !monitors {
        cmd.env("STOCKADE_MONITORS", "off");
    }
    let out = cmd.output().context("spawn stockade run")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        summary: last_json(&stderr),
        stderr,
    })
}

fn last_json(stderr: &str) -> Value {
    stderr
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null)
}

/// One run of a timing loop of the fixture: its `ok <ns>`, after checking that the monitors were
/// there or not as asked.
fn timed_loop(setup: &Setup, monitors: bool, args: &[&str]) -> Result<f64> {
    let r = hostile_run(setup, &setup.monitor_net_policy, monitors, args)?;
    let ns = r
        .line()
        .strip_prefix("ok ")
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| {
            format!(
                "stockade-hostile {} said {:?} (exit {}):\n{}",
                args.join(" "),
                r.line(),
                r.code,
                r.stderr
            )
        })?;
    if monitors {
        complete_monitors(&r.summary, &r.stderr)?;
    } else if !r.summary["monitor"].is_null() {
        bail!(
            "STOCKADE_MONITORS=off, yet the summary has a monitor report:\n{}",
            r.stderr
        );
    }
    Ok(ns)
}

fn sandbox_overhead(setup: &Setup, rounds: usize) -> Result<Part> {
    let addr = format!("127.0.0.1:{}", setup.port);
    let loops: [(&str, Vec<String>); 2] = [
        (
            "open, read 1 byte, close (/etc/ld.so.cache)",
            vec![
                "bench-open".into(),
                SANDBOX_OPEN.to_string(),
                "/etc/ld.so.cache".into(),
            ],
        ),
        (
            "TCP connect + close (allowed loopback port)",
            vec![
                "bench-connect".into(),
                SANDBOX_CONNECT.to_string(),
                addr.clone(),
            ],
        ),
    ];
    // Warm-up (not recorded), a tenth of the size; also checks that everything works here.
    for monitors in [true, false] {
        timed_loop(
            setup,
            monitors,
            &[
                "bench-open",
                &(SANDBOX_OPEN / 10).to_string(),
                "/etc/ld.so.cache",
            ],
        )?;
        timed_loop(
            setup,
            monitors,
            &["bench-connect", &(SANDBOX_CONNECT / 10).to_string(), &addr],
        )?;
    }
    // samples[loop][0 = on, 1 = off]
    let mut samples = vec![[Vec::new(), Vec::new()]; loops.len()];
    for round in 0..rounds {
        for (i, (name, args)) in loops.iter().enumerate() {
            for (slot, monitors) in [(0, true), (1, false)] {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let ns = timed_loop(setup, monitors, &args)?;
                eprintln!(
                    "  round {}: {name}, monitors {}: {ns:.0} ns",
                    round + 1,
                    if monitors { "on" } else { "off" }
                );
                samples[i][slot].push(ns);
            }
        }
    }
    let mut table = String::from(
        "| loop in the sandbox | monitors off | monitors on | on ÷ off |\n|---|---|---|---|\n",
    );
    let mut worst: f64 = 0.0;
    let mut ratios = Vec::new();
    for ((name, _), [on, off]) in loops.iter().zip(&samples) {
        let (on, off) = (median(on), median(off));
        let ratio = on / off;
        worst = worst.max(ratio);
        ratios.push(format!("{ratio:.3}×"));
        table.push_str(&format!(
            "| {name} | {off:.0} ns | {on:.0} ns | {ratio:.3} |\n"
        ));
    }
    Ok(Part {
        what: format!(
            "The fixture timed {SANDBOX_OPEN} open/read/close and {SANDBOX_CONNECT} TCP \
             connects (each closed at once with a reset) to a listener of this process, inside a \
             monitor-mode sandbox on the host network with that port allowed, with the monitors \
             and with `STOCKADE_MONITORS=off`; {}, on and off in turn, time per \
             iteration.",
            times(rounds, "round")
        ),
        table,
        verdict: format!(
            "Monitors on ÷ off: {} ({}: at most 1.05×).",
            ratios.join(" and "),
            met(worst <= 1.05)
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Enforcement latency

fn enforcement_latency(setup: &Setup, runs: usize) -> Result<Part> {
    let connect = format!("127.0.0.2:{}", setup.port);
    let series: [(&str, &Path, Vec<&str>); 2] = [
        (
            "hidden path (/etc/shadow), killed from userspace",
            &setup.kill_policy,
            vec!["children-then", "4", "grandchild", "read", "/etc/shadow"],
        ),
        (
            "network (connect to a denied address), offender killed in the kernel",
            &setup.kill_net_policy,
            vec!["children-then", "4", "grandchild", "connect-tcp", &connect],
        ),
    ];
    let mut latencies = vec![Vec::new(); series.len()];
    let mut in_kernel = vec![0usize; series.len()];
    // Runs that ended otherwise, by how they ended.
    let mut failures = vec![std::collections::BTreeMap::<String, usize>::new(); series.len()];
    for _ in 0..runs {
        for (i, (_, policy, args)) in series.iter().enumerate() {
            let r = hostile_run(setup, policy, true, args)?;
            if r.summary.is_null() {
                bail!(
                    "stockade failed before running the fixture (exit {}):\n{}",
                    r.code,
                    r.stderr
                );
            }
            let auto = &r.summary["monitor"]["auto_unload"];
            match auto["kill_latency_ms"].as_f64() {
                Some(ms) if r.summary["ended_by"] == "auto_unloaded" => {
                    latencies[i].push(ms);
                    if auto["killed_in_kernel"].as_bool() == Some(true) {
                        in_kernel[i] += 1;
                    }
                }
                _ => {
                    if failures[i].is_empty() {
                        eprintln!(
                            "bench monitors: a kill run ended otherwise (exit {}):\n{}",
                            r.code,
                            r.stderr.trim_end()
                        );
                    }
                    *failures[i]
                        .entry(r.summary["ended_by"].as_str().unwrap_or("?").to_string())
                        .or_insert(0usize) += 1;
                }
            }
        }
    }
    let mut table = String::from(
        "| violation | runs | p50 | p99 | max | offender killed in the kernel |\n|---|---|---|---|---|---|\n",
    );
    let mut verdicts = Vec::new();
    for (i, (name, _, _)) in series.iter().enumerate() {
        let l = &latencies[i];
        if l.is_empty() {
            table.push_str(&format!(
                "| {name} | 0 of {runs} killed | – | – | – | – |\n"
            ));
            verdicts.push(format!(
                "{name}: no run was killed ({})",
                tally(&failures[i])
            ));
            continue;
        }
        let (p50, p99) = (percentile(l, 0.5), percentile(l, 0.99));
        let max = l.iter().copied().fold(0.0, f64::max);
        table.push_str(&format!(
            "| {name} | {} | {p50:.3} ms | {p99:.3} ms | {max:.3} ms | {} of {} |\n",
            l.len(),
            in_kernel[i],
            l.len()
        ));
        let mut v = format!(
            "{}: p50 {p50:.3} ms, p99 {p99:.3} ms, {}",
            name.split(" (").next().unwrap_or(name),
            met(p50 <= 1.0 && p99 <= 10.0)
        );
        if !failures[i].is_empty() {
            v.push_str(&format!(
                "; {} of {runs} runs were not killed ({})",
                failures[i].values().sum::<usize>(),
                tally(&failures[i])
            ));
        }
        verdicts.push(v);
    }
    Ok(Part {
        what: format!(
            "{} per series, interleaved, of `stockade run --json` under an enforce-mode \
             policy with `threshold = 1, action = \"kill\"`, the fixture starting four sleeping \
             children and then violating in a grandchild; the latency is the summary's \
             `monitor.auto_unload.kill_latency_ms`, from the violation's kernel timestamp to the \
             supervisor seeing every process of the sandbox gone (an upper bound).",
            times(runs, "run")
        ),
        table,
        verdict: format!(
            "Target p50 at most 1 ms and p99 at most 10 ms. {}.",
            capitalized(&verdicts.join("; "))
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Event throughput

fn event_throughput(setup: &Setup, rounds: usize) -> Result<Part> {
    let target = format!("127.0.0.2:{}", setup.port);
    let expected = format!("ok eperm={FLOOD} other=0");
    let mut table = String::from(
        "| run | duration | events received | dropped (counted) | denied in the kernel | received per second |\n|---|---|---|---|---|---|\n",
    );
    let (mut rates, mut denial_rates) = (Vec::new(), Vec::new());
    let (mut total_dropped, mut unaccounted) = (0u64, 0u64);
    for round in 0..rounds {
        let r = hostile_run(
            setup,
            &setup.monitor_net_policy,
            true,
            &["connect-flood", &target, &FLOOD.to_string()],
        )?;
        if r.line() != expected {
            bail!(
                "connect-flood said {:?}, not {expected:?} (exit {}):\n{}",
                r.line(),
                r.code,
                r.stderr
            );
        }
        complete_monitors(&r.summary, &r.stderr)?;
        let m = &r.summary["monitor"];
        let received = m["by_layer"]["network"].as_u64().unwrap_or(0);
        let dropped = m["dropped_events"]
            .as_u64()
            .with_context(|| format!("no monitor report in the summary:\n{}", r.stderr))?;
        let denied = m["kernel"]["net_denied"].as_u64().unwrap_or(0);
        let ms = r.summary["duration_ms"].as_f64().unwrap_or(f64::NAN);
        let rate = received as f64 / (ms / 1000.0);
        eprintln!(
            "  run {}: {received} received, {dropped} dropped, {denied} denied, {ms:.0} ms",
            round + 1
        );
        total_dropped += dropped;
        unaccounted += denied.abs_diff(received + dropped) + FLOOD.abs_diff(denied);
        rates.push(rate);
        denial_rates.push(denied as f64 / (ms / 1000.0));
        table.push_str(&format!(
            "| {} | {ms:.0} ms | {received} | {dropped} | {denied} | {} |\n",
            round + 1,
            per_second(rate)
        ));
    }
    let (rate, denial_rate) = (median(&rates), median(&denial_rates));
    let verdict = format!(
        "Median {} events received per second, of {} denials per second made; {total_dropped} \
         events dropped in all. At least 1M events/s without loss: {}. Every lost event counted: {}.",
        per_second(rate),
        per_second(denial_rate),
        if rate >= 1e6 && total_dropped == 0 {
            "yes, target met"
        } else if denial_rate < 1e6 && total_dropped == 0 {
            "no loss, but the fixture made fewer than 1M denials/s here"
        } else {
            "no"
        },
        if unaccounted == 0 {
            "yes".to_string()
        } else {
            format!("NO: {unaccounted} denials neither received nor counted")
        },
    );
    Ok(Part {
        what: format!(
            "{} of `stockade run --json` in monitor mode, the fixture making \
             {FLOOD} connects to an address the network rules deny (each refused by the cgroup \
             program: one violation event each); from the summary, the network events received, \
             the events the ring buffer had no room for (counted), the kernel's own count of \
             denials, and events received per second of the whole run (`duration_ms`, sandbox \
             set-up included).",
            times(rounds, "run")
        ),
        table,
        verdict,
    })
}

/// "1 round", "10 rounds".
fn times(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn per_second(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2} M", rate / 1e6)
    } else {
        format!("{:.0} k", rate / 1e3)
    }
}

/// "ended_by X: N, ..." of the runs that were not killed.
fn tally(failures: &std::collections::BTreeMap<String, usize>) -> String {
    failures
        .iter()
        .map(|(how, n)| format!("ended_by {how}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|first| first.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn met(ok: bool) -> &'static str {
    if ok {
        "target met"
    } else {
        "target NOT met"
    }
}
