//! The one-screen report `stockade run` prints on stderr when the sandbox has ended.

use std::fmt::Write;

use crate::monitor::attribute::{Event, Layer};
use crate::monitor::report::Report;
use crate::sandbox::{EndReason, Summary};

pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    let cmd = s.command.first().map(String::as_str).unwrap_or("?");
    let signal_name = |sig: i32| signal_name(sig).unwrap_or("?");
    let why = match s.ended_by {
        EndReason::Exited => format!("exited with status {}", s.exit_status.unwrap_or(-1)),
        EndReason::Signaled => format!("killed by {}", signal_name(s.signal.unwrap_or(0))),
        EndReason::OomKill => "killed by the OOM killer at the memory limit".to_string(),
        EndReason::SeccompKill => "killed by seccomp (SIGSYS) for a denied system call".to_string(),
        EndReason::Timeout => "killed at the policy's timeout (every process)".to_string(),
        EndReason::Interrupted => {
            "stopped: stockade was interrupted (every process killed)".to_string()
        }
        EndReason::SetupFailed => format!(
            "never started: sandbox set-up failed: {}",
            s.error.as_deref().unwrap_or("?")
        ),
        EndReason::ExecFailed => format!("never started: {}", s.error.as_deref().unwrap_or("?")),
        EndReason::AutoUnloaded => {
            "auto-unloaded: its violations crossed the policy's threshold (every process killed)"
                .to_string()
        }
    };
    let _ = writeln!(
        out,
        "stockade: {cmd} {why} after {}",
        duration(s.duration_ms)
    );
    let r = &s.resources;
    let mut usage = Vec::new();
    if let Some(m) = r.memory_peak_bytes {
        usage.push(format!("memory peak {}", bytes(m)));
    }
    if let Some(p) = r.pids_peak {
        usage.push(format!("processes peak {p}"));
    }
    if let Some(cpu) = r.cpu_usage_us {
        usage.push(format!("cpu {}", duration(cpu as f64 / 1000.0)));
    }
    if !usage.is_empty() {
        let _ = writeln!(out, "  {}", usage.join(" · "));
    }
    let mut limits = Vec::new();
    if r.oom_kills > 0 {
        limits.push(format!("memory limit: {} OOM kill(s)", r.oom_kills));
    }
    if r.pids_limit_hits > 0 {
        limits.push(format!("pids limit: {} refused fork(s)", r.pids_limit_hits));
    }
    if !limits.is_empty() {
        let _ = writeln!(out, "  limits hit: {}", limits.join(" · "));
    }
    let landlock = match (s.landlock_abi, &s.landlock_status) {
        (Some(abi), Some(status)) if abi > 0 => format!("landlock ABI {abi} ({status})"),
        (Some(_), _) => "landlock unavailable".to_string(),
        _ => "landlock not reached".to_string(),
    };
    let _ = writeln!(
        out,
        "  layers: namespaces · {landlock} · seccomp · cgroup {}",
        s.cgroup_id
    );
    if let Some(report) = &s.monitor {
        render_report(&mut out, report);
    }
    out
}

fn render_report(out: &mut String, r: &Report) {
    let mut line = format!(
        "  monitors: {} violation{}",
        r.violations,
        if r.violations == 1 { "" } else { "s" }
    );
    if !r.by_layer.is_empty() {
        let layers: Vec<String> = r.by_layer.iter().map(|(l, n)| format!("{l} {n}")).collect();
        let _ = write!(line, " ({})", layers.join(", "));
    }
    if r.refused > 0 {
        let _ = write!(
            line,
            " · {} refused by file permissions or capabilities",
            r.refused
        );
    }
    if r.opens > 0 {
        let _ = write!(line, " · {} files opened", r.opens);
    }
    let _ = write!(
        line,
        " · {} process{} started · {} syscalls",
        r.processes_started,
        if r.processes_started == 1 { "" } else { "es" },
        r.syscalls
    );
    if r.kernel.inbound_dropped > 0 {
        let _ = write!(
            line,
            " · {} inbound packets dropped (a listener without a bind rule)",
            r.kernel.inbound_dropped
        );
    }
    if r.dropped_events > 0 {
        let _ = write!(
            line,
            " · {} EVENTS DROPPED (ring buffer full{})",
            r.dropped_events,
            if r.lost_denials > 0 {
                format!(
                    "; {} of them possible violations, counted as such",
                    r.lost_denials
                )
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(out, "{line}");
    if let Some(a) = &r.auto_unload {
        let _ = writeln!(
            out,
            "  auto-unloaded: {} violation{} within {} reached the threshold{}{}; the last: {}",
            a.threshold,
            if a.threshold == 1 { "" } else { "s" },
            duration(a.window_ms as f64),
            a.kill_latency_ms
                .map(|ms| format!(", every process dead {} after it", duration(ms)))
                .unwrap_or_default(),
            if a.killed_in_kernel {
                " (the offender was killed in the kernel)"
            } else {
                ""
            },
            describe(&a.violation)
        );
    }
    for ev in &r.first {
        let _ = writeln!(out, "    {:>9}  {}", duration(ev.t_ms), describe(ev));
    }
    if r.violations as usize > r.first.len() {
        let _ = writeln!(
            out,
            "    ... {} more (--events FILE writes them all)",
            r.violations as usize - r.first.len()
        );
    }
    for d in &r.degraded {
        let _ = writeln!(out, "  monitor degraded: {d}");
    }
}

/// One event in a line: `landlock refused write /usr/bin/evil (openat, EACCES) by pid 12`.
pub fn describe(ev: &Event) -> String {
    let layer = ev.layer.map_or("?", |l| l.name());
    let verb = match (ev.layer, ev.action) {
        (Some(Layer::Namespace), _) => "hid",
        // The listen itself succeeded; its inbound connections are dropped.
        (Some(Layer::Network), Some("listen")) => "cut off",
        _ => "refused",
    };
    let mut s = format!("{layer} {verb} {}", ev.action.unwrap_or("?"));
    if let Some(o) = &ev.object {
        let _ = write!(s, " {o}");
    }
    let detail: Vec<&str> = [ev.syscall.as_deref(), ev.errno]
        .into_iter()
        .flatten()
        .collect();
    if !detail.is_empty() {
        let _ = write!(s, " ({})", detail.join(", "));
    }
    let _ = write!(s, " by pid {}", ev.pid);
    s
}

pub fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSYS => "SIGSYS",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGXCPU => "SIGXCPU",
        _ => return None,
    })
}

fn duration(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn bytes(b: u64) -> String {
    let mib = b as f64 / (1024.0 * 1024.0);
    if mib >= 1.0 {
        format!("{mib:.1} MiB")
    } else {
        format!("{:.0} KiB", b as f64 / 1024.0)
    }
}
