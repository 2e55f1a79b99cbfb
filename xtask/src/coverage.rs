//! Which feature-gated tests ran where.
//!
//! A test that needs something (root, the BPF LSM, cgroup v2 controllers, a Landlock ABI, IPv6)
//! checks for it and prints `skipped: <test>: <reason>` instead of passing silently. The same
//! suite runs on the host (`cargo xtask test`) and in the VM (`cargo xtask vm-test`); each run
//! records its skip lines in target/coverage/<environment>.txt, and `cargo xtask coverage` puts the
//! records side by side and fails when a test was skipped in every environment: such a test proves
//! nothing anywhere.
//!
//! Record format: `# key: value` header lines (environment, description, complete), then one
//! `skipped: <test>: <reason>` line per skip, as the test printed it. An environment that runs only
//! a few tests (`vm-test --systemd`: the unit under systemd as PID 1) also lists the tests that
//! passed there (`ran: <test>`, with `# scope: ran-only`): in the table a test it did not run is
//! `-` there, not "ran".

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The environments `cargo xtask coverage` compares when none are named: the host and the default
/// VM kernel.
const DEFAULT_ENVS: [&str; 2] = ["host", "vm"];

fn record_path(target: &Path, env: &str) -> PathBuf {
    target.join("coverage").join(format!("{env}.txt"))
}

/// Writes the record of one run. `complete` is false when the run left tests out (filters,
/// --test), which makes the record unusable for the check.
pub fn record(
    target: &Path,
    env: &str,
    description: &str,
    complete: bool,
    skipped: &[String],
    ran_only: Option<&[String]>,
) -> Result<()> {
    let path = record_path(target, env);
    fs::create_dir_all(path.parent().expect("in target/coverage"))?;
    let mut text = format!(
        "# environment: {env}\n# description: {description}\n# complete: {}\n",
        if complete { "yes" } else { "no" }
    );
    if let Some(ran) = ran_only {
        text.push_str("# scope: ran-only\n");
        for name in ran {
            text.push_str(&format!("ran: {name}\n"));
        }
    }
    for s in skipped {
        text.push_str(&format!("skipped: {s}\n"));
    }
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("coverage record: {}", path.display());
    Ok(())
}

#[derive(Debug)]
struct Record {
    env: String,
    description: String,
    complete: bool,
    /// test name → reason
    skipped: BTreeMap<String, String>,
    /// `# scope: ran-only`: only the tests in `ran` ran here.
    ran_only: bool,
    ran: std::collections::BTreeSet<String>,
}

fn parse(env: &str, text: &str) -> Record {
    let mut r = Record {
        env: env.to_string(),
        description: String::new(),
        complete: false,
        skipped: BTreeMap::new(),
        ran_only: false,
        ran: Default::default(),
    };
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("# description: ") {
            r.description = d.to_string();
        } else if let Some(c) = line.strip_prefix("# complete: ") {
            r.complete = c.trim() == "yes";
        } else if line == "# scope: ran-only" {
            r.ran_only = true;
        } else if let Some(name) = line.strip_prefix("ran: ") {
            r.ran.insert(name.trim().to_string());
        } else if let Some(s) = line.strip_prefix("skipped: ") {
            let (name, reason) = split_skip(s);
            r.skipped.insert(name, reason);
        }
    }
    r
}

/// "test_name: reason" → (test_name, reason). The test is named before the first colon.
pub fn split_skip(line: &str) -> (String, String) {
    match line.split_once(':') {
        Some((name, reason)) => (name.trim().to_string(), reason.trim().to_string()),
        None => (line.trim().to_string(), String::new()),
    }
}

/// `cargo xtask coverage [ENV...]`: the table, and an error when a test was skipped everywhere.
pub fn run(args: &[&str]) -> Result<()> {
    let target = crate::target_dir()?;
    let envs: Vec<&str> = if args.is_empty() {
        DEFAULT_ENVS.to_vec()
    } else {
        args.to_vec()
    };
    let mut records = Vec::new();
    for env in &envs {
        let path = record_path(&target, env);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "no coverage record for {env} ({}): run {} first",
                path.display(),
                if *env == "host" {
                    "cargo xtask test"
                } else {
                    "cargo xtask vm-test"
                }
            )
        })?;
        let record = parse(env, &text);
        if !record.complete {
            bail!(
                "{} comes from a run that left tests out (a filter or --test): run the whole \
                 suite there first",
                path.display()
            );
        }
        records.push(record);
    }
    let (table, everywhere) = table(&records);
    print!("{table}");
    if !everywhere.is_empty() {
        bail!(
            "skipped in every environment, so tested nowhere: {}",
            everywhere.join(", ")
        );
    }
    Ok(())
}

/// The table, and the tests skipped in every record.
fn table(records: &[Record]) -> (String, Vec<String>) {
    let mut out = String::from("\n== feature-gated tests: where they ran ==\n");
    for r in records {
        out.push_str(&format!("{}: {}\n", r.env, r.description));
    }
    let mut names: Vec<&String> = records.iter().flat_map(|r| r.skipped.keys()).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        out.push_str("no test was skipped in any environment\n");
        return (out, Vec::new());
    }
    let cell = |r: &Record, name: &str| match r.skipped.get(name) {
        Some(reason) => format!("skipped: {reason}"),
        None if r.ran_only && !r.ran.contains(name) => "-".to_string(),
        None => "ran".to_string(),
    };
    let name_width = names.iter().map(|n| n.len()).max().unwrap_or(4).max(4);
    let widths: Vec<usize> = records
        .iter()
        .map(|r| {
            names
                .iter()
                .map(|n| cell(r, n).len())
                .max()
                .unwrap_or(0)
                .max(r.env.len())
        })
        .collect();
    let mut header = format!("{:name_width$}", "test");
    for (r, w) in records.iter().zip(&widths) {
        header.push_str(&format!("  {:w$}", r.env));
    }
    out.push_str(header.trim_end());
    out.push('\n');
    let mut everywhere = Vec::new();
    for name in names {
        out.push_str(&format!("{name:name_width$}"));
        for (r, w) in records.iter().zip(&widths) {
            out.push_str(&format!("  {:w$}", cell(r, name)));
        }
        // Tested somewhere: a record where it ran (not skipped, and within the record's scope).
        let ran_somewhere = records.iter().any(|r| {
            !r.skipped.contains_key(name.as_str()) && (!r.ran_only || r.ran.contains(name.as_str()))
        });
        if !ran_somewhere {
            out.push_str("  <- skipped everywhere");
            everywhere.push(name.clone());
        }
        out.push('\n');
    }
    (out, everywhere)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lines_name_the_test_before_the_colon() {
        assert_eq!(
            split_skip("doctor_reports_every_layer (exit status): needs root (CI runs as root)"),
            (
                "doctor_reports_every_layer (exit status)".to_string(),
                "needs root (CI runs as root)".to_string()
            )
        );
    }

    #[test]
    fn a_test_skipped_everywhere_is_reported() {
        let host = parse(
            "host",
            "# description: kernel 6.18\n# complete: yes\n\
             skipped: lsm_denies_mkdir: the BPF LSM cannot load programs here\n\
             skipped: ipv6_test: no IPv6 loopback here\n",
        );
        let vm = parse(
            "vm",
            "# complete: yes\nskipped: ipv6_test: no IPv6 loopback here\n",
        );
        assert!(host.complete && vm.complete);
        let (table, everywhere) = table(&[host, vm]);
        assert_eq!(everywhere, vec!["ipv6_test"]);
        assert!(table.contains("lsm_denies_mkdir"), "{table}");
        let lsm_row = table
            .lines()
            .find(|l| l.starts_with("lsm_denies_mkdir"))
            .unwrap();
        assert!(lsm_row.contains("skipped: the BPF LSM") && lsm_row.trim_end().ends_with("ran"));
    }

    /// A record of a few tests counts only for them: a test it did not run is `-` there and
    /// not "tested" by it.
    #[test]
    fn a_ran_only_record_counts_for_its_tests_alone() {
        let host = parse(
            "host",
            "# complete: yes\nskipped: under_systemd: PID 1 is not systemd\nskipped: ipv6_test: no IPv6\n",
        );
        let systemd = parse(
            "vm-systemd",
            "# complete: yes\n# scope: ran-only\nran: under_systemd\nran: offline_check\n",
        );
        let (table, everywhere) = table(&[host, systemd]);
        assert_eq!(everywhere, vec!["ipv6_test"], "{table}");
        let row = table.lines().find(|l| l.starts_with("ipv6_test")).unwrap();
        assert!(row.contains("  -"), "{row}");
        let row = table
            .lines()
            .find(|l| l.starts_with("under_systemd"))
            .unwrap();
        assert!(row.trim_end().ends_with("ran"), "{row}");
    }

    #[test]
    fn nothing_skipped() {
        let host = parse("host", "# complete: yes\n");
        let (table, everywhere) = table(&[host]);
        assert!(everywhere.is_empty());
        assert!(table.contains("no test was skipped"));
        assert!(!parse("vm", "# complete: no\n").complete);
    }
}
