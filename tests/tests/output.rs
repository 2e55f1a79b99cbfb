//! Output the plugin controls. The paths a plugin reaches for end up in the report printed on the
//! operator's terminal and in the JSON events: the text report escapes them (a newline cannot
//! forge a report line, an escape sequence cannot reach the terminal), and the JSON keeps their
//! exact bytes, also when they are not UTF-8.

mod harness;
use harness::*;
use serde_json::Value;
use std::process::{Command, Stdio};

/// The names the fixture's `hostile-names` opens below its directory.
const NAMES: [&[u8]; 4] = [
    b"x\nstockade: forged exited with status 0 after 1.0 ms",
    b"\x1b[2J\x1b]0;owned\x07esc",
    b"evil\xe2\x80\xaetxt.sh",
    b"\xff\xfe-invalid",
];

/// How the text report shows each name (after the directory and a slash).
const ESCAPED: [&str; 4] = [
    "x\\nstockade: forged exited with status 0 after 1.0 ms",
    "\\x1b[2J\\x1b]0;owned\\x07esc",
    "evil\\u{202e}txt.sh",
    "\\xff\\xfe-invalid",
];

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// An event's object, exactly: `object_hex` when present, `object` otherwise.
fn object_bytes(e: &Value) -> Vec<u8> {
    match e["object_hex"].as_str() {
        Some(hex) => unhex(hex),
        None => e["object"].as_str().unwrap_or_default().as_bytes().to_vec(),
    }
}

#[test]
fn plugin_chosen_paths_are_escaped_in_the_report_and_exact_in_the_events() {
    if !privileged("plugin_chosen_paths_are_escaped_in_the_report_and_exact_in_the_events") {
        return;
    }
    // /usr/bin is granted read-only (exec): each open for writing is refused (EROFS), a
    // violation that names the path.
    let dir = "/usr/bin";
    let events = scratch_dir("output").join("events.jsonl");
    let file = policy_file("output", &policy(""));
    let out = Command::new(stockade())
        .args(["run", "--policy"])
        .arg(&file)
        .arg("--plugin-dir")
        .arg(plugin_dir())
        .arg("--events")
        .arg(&events)
        .args(["--", &hostile(), "hostile-names", dir])
        .stdin(Stdio::null())
        .output()
        .expect("run stockade");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "ok 4 refused", "{stdout}");
    assert_eq!(out.status.code(), Some(0));

    // The text report: every name escaped, valid UTF-8, no control byte but the line ends, and
    // the forged line is not a line of its own.
    let report = String::from_utf8(out.stderr.clone())
        .unwrap_or_else(|e| panic!("the report is not UTF-8: {e}"));
    for escaped in ESCAPED {
        assert!(
            report.contains(&format!("{dir}/{escaped}")),
            "{escaped:?} not in the report:\n{report}"
        );
    }
    for (i, b) in out.stderr.iter().enumerate() {
        assert!(
            *b == b'\n' || (*b >= 0x20 && *b != 0x7f),
            "raw control byte {b:#04x} at {i} of the report:\n{report}"
        );
    }
    assert!(
        !report.contains('\u{202e}'),
        "a bidi override reached the report"
    );
    assert!(
        !report.lines().any(|l| l.starts_with("stockade: forged")),
        "a forged line:\n{report}"
    );
    assert!(report.contains("4 violations (mount 4)"), "{report}");

    // The events: the exact bytes of every name, U+FFFD nowhere.
    let text = std::fs::read(&events).expect("events file");
    let lines: Vec<Value> = String::from_utf8(text)
        .expect("JSON lines are UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let refused: Vec<&Value> = lines
        .iter()
        .filter(|e| e["type"] == "violation" && e["layer"] == "mount")
        .collect();
    assert_eq!(refused.len(), 4, "{lines:#?}");
    for (name, e) in NAMES.iter().zip(&refused) {
        let mut want = format!("{dir}/").into_bytes();
        want.extend_from_slice(name);
        assert_eq!(object_bytes(e), want, "{e}");
        assert_eq!(e["errno"], "EROFS", "{e}");
        assert!(!e["object"].as_str().unwrap().contains('\u{fffd}'), "{e}");
    }
    // Valid UTF-8 is carried as it is (JSON escapes the control characters); only the name that
    // is not UTF-8 has object_hex, and its text shows the bytes as \xNN.
    assert!(refused[0]["object_hex"].is_null());
    assert!(refused[1]["object"].as_str().unwrap().contains('\u{1b}'));
    assert_eq!(refused[3]["object"], "/usr/bin/\\xff\\xfe-invalid");
    assert_eq!(
        refused[3]["object_hex"],
        "2f7573722f62696e2ffffe2d696e76616c6964"
    );
    let _ = std::fs::remove_file(&events);
}

/// `--events-max`: the events file stops at its cap without splitting a line, and its last line
/// (and a warning) says how many events were left out; the summary still counts them all. The
/// control: the same run without a small cap writes every event.
#[test]
fn the_events_file_stops_at_its_cap() {
    if !privileged("the_events_file_stops_at_its_cap") {
        return;
    }
    let file = policy_file("events-cap", &policy(""));
    let dir = scratch_dir("events-cap");
    let run = |events: &std::path::Path, cap: Option<&str>| {
        let mut cmd = Command::new(stockade());
        cmd.args(["run", "--json", "--policy"])
            .arg(&file)
            .arg("--events")
            .arg(events);
        if let Some(cap) = cap {
            cmd.args(["--events-max", cap]);
        }
        // 200 opens of a granted file: an event each.
        cmd.args([
            "--",
            "/bin/sh",
            "-c",
            "for i in $(seq 200); do : < /etc/ld.so.cache; done",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run stockade")
    };
    let full = dir.join("full.jsonl");
    let out = run(&full, None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let all: Vec<serde_json::Value> = std::fs::read_to_string(&full)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(all.len() >= 200, "{} events", all.len());
    assert!(all.iter().all(|e| e["type"] != "events_not_written"));

    let capped = dir.join("capped.jsonl");
    let out = run(&capped, Some("4K"));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = std::fs::read_to_string(&capped).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let (last, written) = lines.split_last().unwrap();
    assert_eq!(last["type"], "events_not_written", "{last}");
    assert_eq!(last["cap_bytes"], 4096);
    let body: usize = text.lines().take(written.len()).map(|l| l.len() + 1).sum();
    assert!(body <= 4096, "{body} bytes before the last line");
    // Every event is either written or counted.
    assert_eq!(
        written.len() as u64 + last["count"].as_u64().unwrap(),
        all.len() as u64,
        "the two runs made the same events"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--events reached --events-max (4096 bytes)"),
        "{stderr}"
    );
    let bad = Command::new(stockade())
        .args(["run", "--events-max", "12Q", "--policy"])
        .arg(&file)
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("the units are K, M and G"),
        "{bad:?}"
    );
}
