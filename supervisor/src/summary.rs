//! The one-screen report `stockade run` prints on stderr when the sandbox has ended.
//!
//! Much of it is the plugin's choice — the paths it reached for, the files it executed — and it
//! goes to the operator's terminal, so every such string is escaped first
//! ([`escape_for_terminal`]): a newline must not forge a report line, an escape sequence must
//! not reach the terminal, a bidi override must not reorder what the operator reads. The JSON
//! forms (`--json`, `--events`) keep the exact bytes instead (`monitor::event::Object`).

use std::fmt::Write;

use crate::monitor::attribute::{Event, Layer};
use crate::monitor::report::Report;
use crate::sandbox::{EndReason, Summary};

pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    let cmd = escape_for_terminal(s.command.first().map_or(b"?", |c| c.as_bytes()));
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
            escape_text(s.error.as_deref().unwrap_or("?"))
        ),
        EndReason::ExecFailed => format!(
            "never started: {}",
            escape_text(s.error.as_deref().unwrap_or("?"))
        ),
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
        (Some(abi), Some(status)) if abi > 0 => {
            format!("landlock ABI {abi} ({})", escape_text(status))
        }
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
        let layers: Vec<String> = r
            .by_layer
            .iter()
            .map(|(l, n)| format!("{} {n}", escape_text(l)))
            .collect();
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
        " · {} process{} started",
        r.processes_started,
        if r.processes_started == 1 { "" } else { "es" },
    );
    if r.syscall_tracepoint {
        let _ = write!(line, " · {} syscalls", r.syscalls);
    } else {
        line.push_str(" · syscalls not traced");
    }
    if r.kernel.inbound_dropped > 0 {
        let _ = write!(
            line,
            " · {} inbound packets dropped (a listener without a bind rule)",
            r.kernel.inbound_dropped
        );
    }
    if r.limits > 0 {
        let mut kinds: Vec<&str> = r.first_limits.iter().filter_map(|e| e.action).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let _ = write!(line, " · resource limits reached ({})", kinds.join(", "));
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
        let _ = writeln!(out, "  monitor degraded: {}", escape_text(d));
    }
}

/// One event in a line: `landlock refused write /usr/bin/evil (openat, EACCES) by pid 12`. The
/// object is escaped for the terminal.
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
        let _ = write!(
            s,
            " {}{}",
            escape_for_terminal(o.as_bytes()),
            if o.truncated() { "…" } else { "" }
        );
    }
    let syscall = ev.syscall.as_deref().map(escape_text);
    let detail: Vec<&str> = [syscall.as_deref(), ev.errno]
        .into_iter()
        .flatten()
        .collect();
    if !detail.is_empty() {
        let _ = write!(s, " ({})", detail.join(", "));
    }
    // pid 0: a record no process is known for (an OOM kill; a packet judged where the kernel
    // does not say whose it is).
    if ev.pid != 0 {
        let _ = write!(s, " by pid {}", ev.pid);
    }
    s
}

/// `bytes` as text that is safe to print on a terminal and cannot be mistaken for another line:
/// - a backslash becomes `\\`; newline, carriage return and tab become `\n`, `\r`, `\t`;
/// - every other control character becomes `\xNN` (C0 and DEL) or `\u{NN}` (C1, U+0080 to
///   U+009F, which some terminals obey as escape sequences);
/// - characters that reorder or break what is displayed become `\u{NNNN}`: the bidirectional
///   controls (U+061C, U+200E, U+200F, the embeddings and overrides U+202A to U+202E, the
///   isolates U+2066 to U+2069) and the line and paragraph separators U+2028, U+2029;
/// - each byte that is not part of valid UTF-8 becomes `\xNN`.
///
/// Everything else, non-ASCII letters included, is kept as it is. The escaping is unambiguous:
/// a backslash in the output always starts an escape.
pub fn escape_for_terminal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\0'..='\x1f' | '\x7f' => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                '\u{80}'..='\u{9f}'
                | '\u{61c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}' => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// [`escape_for_terminal`] for text that is already UTF-8.
pub fn escape_text(text: &str) -> String {
    escape_for_terminal(text.as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::attribute::EventType;
    use crate::monitor::event::Object;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_for_terminal(b"/tmp/plain-\xc3\xa9"), "/tmp/plain-é");
        assert_eq!(escape_for_terminal(b"a\nb\rc\td\\e"), "a\\nb\\rc\\td\\\\e");
        assert_eq!(
            escape_for_terminal(b"\x1b[2J\x07\x00\x7f"),
            "\\x1b[2J\\x07\\x00\\x7f"
        );
        // C1 controls (CSI as one code point) and the bidi overrides and isolates.
        assert_eq!(escape_for_terminal("\u{9b}31m".as_bytes()), "\\u{9b}31m");
        assert_eq!(escape_for_terminal("\u{85}".as_bytes()), "\\u{85}");
        assert_eq!(
            escape_for_terminal("evil\u{202e}txt.exe".as_bytes()),
            "evil\\u{202e}txt.exe"
        );
        for c in [
            '\u{61c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202d}', '\u{2066}', '\u{2069}',
            '\u{2028}', '\u{2029}',
        ] {
            let out = escape_for_terminal(c.to_string().as_bytes());
            assert_eq!(out, format!("\\u{{{:x}}}", c as u32));
        }
        // Neighbours of the escaped ranges stay as they are.
        assert_eq!(
            escape_for_terminal("\u{a0}\u{2065}\u{202f}".as_bytes()),
            "\u{a0}\u{2065}\u{202f}"
        );
    }

    #[test]
    fn invalid_utf8_is_shown_byte_by_byte() {
        assert_eq!(escape_for_terminal(b"/tmp/\xff\xfe"), "/tmp/\\xff\\xfe");
        // A truncated multi-byte sequence, then valid text again.
        assert_eq!(escape_for_terminal(b"\xe2\x82x"), "\\xe2\\x82x");
        // An overlong encoding of '/' is not a slash.
        assert_eq!(escape_for_terminal(b"\xc0\xaf"), "\\xc0\\xaf");
    }

    #[test]
    fn a_forged_line_stays_on_its_own_line() {
        let ev = Event {
            t_ms: 1.0,
            kind: EventType::Violation,
            pid: 7,
            tid: 7,
            layer: Some(Layer::Namespace),
            action: Some("read"),
            syscall: Some("openat".into()),
            object: Some(Object::path(
                b"/tmp/x\n    1.0 ms  landlock refused write /etc/forged (openat, EACCES) by pid 1\x1b]0;owned\x07\xff"
                    .to_vec(),
                true,
            )),
            errno: Some("ENOENT"),
            fd: None,
            killed_in_kernel: false,
        };
        let line = describe(&ev);
        assert_eq!(
            line,
            "namespace hid read /tmp/x\\n    1.0 ms  landlock refused write /etc/forged (openat, \
             EACCES) by pid 1\\x1b]0;owned\\x07\\xff… (openat, ENOENT) by pid 7"
        );
        assert!(!line.contains('\n') && !line.contains('\x1b') && !line.contains('\x07'));
        // The JSON form of the same event keeps every byte.
        let json = serde_json::to_value(&ev).unwrap();
        let hex = json["object_hex"]
            .as_str()
            .expect("object_hex for bytes that are not UTF-8");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(bytes, ev.object.as_ref().unwrap().as_bytes());
        assert_eq!(json["pid"], 7);
        let none = Event { object: None, ..ev };
        let json = serde_json::to_value(&none).unwrap();
        assert!(json.get("object").is_none() && json.get("object_hex").is_none());
    }
}
