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
