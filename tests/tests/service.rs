//! The systemd unit as shipped (`packaging/systemd/stockade.service`): `systemd-analyze verify`
//! finds nothing wrong with it, and `systemd-analyze security` scores it at most the exposure
//! level docs/operations.md records — beside a unit with none of the hardening (what Tetragon's
//! and lockc's units ship: `ExecStart=` and little else), scored in the same run.

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The shipped unit, its `ExecStart=` pointed at the binary this build made (verify checks that
/// the program exists), in a directory of its own.
fn unit_copy(name: &str) -> PathBuf {
    let text =
        std::fs::read_to_string(harness::repo_root().join("packaging/systemd/stockade.service"))
            .expect("packaging/systemd/stockade.service");
    assert!(
        text.contains("\nExecStart=/usr/bin/stockade daemon\n"),
        "{text}"
    );
    let built = harness::stockade();
    let text = text.replace(
        "\nExecStart=/usr/bin/stockade daemon\n",
        &format!("\nExecStart={} daemon\n", built.display()),
    );
    let dir = harness::scratch_dir(name);
    let unit = dir.join("stockade.service");
    std::fs::write(&unit, text).unwrap();
    unit
}

/// `systemd-analyze security --offline=yes`: the overall exposure level (0.0 safest, 10.0 least).
fn exposure(analyze: &Path, unit: &Path) -> f64 {
    let out = Command::new(analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| {
            panic!(
                "no overall level in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    line.split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no level in {line:?}"))
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        println!(
            "skipped: the_unit_passes_systemd_analyze_verify: no systemd-analyze on this host"
        );
        return;
    };
    let unit = unit_copy("unit-verify");
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only what concerns this unit: verify also reports on the host's own units it loads.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("stockade.service"))
        .collect();
    assert!(out.status.success(), "{stderr}");
    assert!(ours.is_empty(), "{ours:#?}");
    // The control: a unit with a directive systemd does not know is reported.
    let broken = unit.with_file_name("broken").join("stockade.service");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(
        &broken,
        text.replace("[Service]\n", "[Service]\nProtectEverything=yes\n"),
    )
    .unwrap();
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&broken)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Unknown key 'ProtectEverything'"),
        "{stderr}"
    );
}

#[test]
fn the_units_exposure_is_what_the_docs_record() {
    let Some(analyze) = systemd_analyze() else {
        println!(
            "skipped: the_units_exposure_is_what_the_docs_record: no systemd-analyze on this host"
        );
        return;
    };
    let ours = exposure(&analyze, &unit_copy("unit-security"));
    // The peer: what Tetragon's and lockc's units amount to.
    let dir = harness::scratch_dir("unit-security-bare");
    let bare = dir.join("bare.service");
    std::fs::write(
        &bare,
        format!(
            "[Unit]\nDescription=bare\n[Service]\nUser=root\nExecStart={} daemon\n[Install]\nWantedBy=multi-user.target\n",
            harness::stockade().display()
        ),
    )
    .unwrap();
    let peer = exposure(&analyze, &bare);
    println!("exposure: stockade.service {ours:.1}, a unit without hardening {peer:.1}");
    assert!(ours < peer, "{ours} vs {peer}");
    let docs = std::fs::read_to_string(harness::repo_root().join("docs/operations.md")).unwrap();
    let recorded = format!("exposure level {ours:.1}");
    assert!(
        docs.contains(&recorded),
        "docs/operations.md should record `{recorded}` (the unit changed: update the docs)"
    );
}
