//! `stockade report`: what each plugin tried and what stopped it, read from the audit log (the
//! daemon's database, read-only, like `stockade audit`).
//!
//! Counts are exact where the log is: each run that had violations ends with a `report` record
//! (every violation its tracker counted, by layer, the lost denials among them, and the
//! auto-unload with its kill latency); a run still going is counted from its `violation` records
//! plus the `suppressed_before` each carries (the live stream's rate limit). The objects table
//! counts the violation records themselves: what was seen, by layer, action and object.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use stockade_state::chain::Entry;
use stockade_state::{Filter, Location};

use crate::Failure;

pub struct Args {
    pub plugin: Option<String>,
    pub host: Option<String>,
    pub since: Option<String>,
    pub json: bool,
}

/// Records read per kind, at most.
const MAX_RECORDS: u32 = 2_000_000;
/// Rows of the objects table on a terminal (`--json` has them all).
const TOP_OBJECTS: usize = 15;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The window: the first and last record read (ms since the epoch).
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Plugins by violations, most first.
    pub plugins: Vec<PluginRow>,
    /// (plugin, layer, action, object) by count, most first.
    pub objects: Vec<ObjectRow>,
    pub auto_unloads: Vec<AutoUnloadRow>,
    /// A kind's records were more than `MAX_RECORDS`: the oldest were read.
    pub truncated: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct PluginRow {
    pub plugin: String,
    pub violations: u64,
    pub by_layer: BTreeMap<String, u64>,
    pub lost_denials: u64,
    pub limits: u64,
    pub auto_unloads: u64,
    pub restarts: u64,
    /// Its last lifecycle state in the window.
    pub state: Option<String>,
    pub runs_with_violations: u64,
}

#[derive(Debug, Serialize)]
pub struct ObjectRow {
    pub plugin: String,
    pub layer: String,
    pub action: String,
    pub object: String,
    pub count: u64,
    pub first_ms: i64,
    pub last_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct AutoUnloadRow {
    pub plugin: String,
    pub at_ms: i64,
    pub run: Option<u64>,
    pub layer: Option<String>,
    pub object: Option<String>,
    pub kill_latency_ms: Option<f64>,
    pub killed_in_kernel: bool,
}

fn detail(e: &Entry) -> Value {
    serde_json::from_str(&e.record.detail).unwrap_or(Value::Null)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The report of these records (each kind's in the order the log keeps them).
pub fn build(
    violations: &[Entry],
    limits: &[Entry],
    reports: &[Entry],
    lifecycle: &[Entry],
) -> Report {
    let mut r = Report::default();
    let all = violations
        .iter()
        .chain(limits)
        .chain(reports)
        .chain(lifecycle);
    r.from_ms = all.clone().map(|e| e.record.at_ms).min();
    r.to_ms = all.map(|e| e.record.at_ms).max();
    let mut plugins: BTreeMap<String, PluginRow> = BTreeMap::new();
    let row = |plugins: &mut BTreeMap<String, PluginRow>, e: &Entry| -> String {
        let id = e.record.plugin.clone().unwrap_or_else(|| "-".into());
        plugins.entry(id.clone()).or_insert_with(|| PluginRow {
            plugin: id.clone(),
            ..Default::default()
        });
        id
    };
    // Runs whose report is in the log: their violations come from it.
    let mut reported: std::collections::BTreeSet<(String, String, u64)> = Default::default();
    for e in reports {
        let d = detail(e);
        let id = row(&mut plugins, e);
        if let Some(run) = d["run"].as_u64() {
            reported.insert((e.chain.clone(), id.clone(), run));
        }
        let p = plugins.get_mut(&id).expect("made above");
        p.violations += d["violations"].as_u64().unwrap_or(0);
        p.lost_denials += d["lost_denials"].as_u64().unwrap_or(0);
        p.runs_with_violations += 1;
        if let Some(layers) = d["by_layer"].as_object() {
            for (layer, n) in layers {
                *p.by_layer.entry(layer.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        let unload = &d["auto_unload"];
        if unload.is_object() {
            p.auto_unloads += 1;
            let v = &unload["violation"];
            r.auto_unloads.push(AutoUnloadRow {
                plugin: id.clone(),
                at_ms: e.record.at_ms,
                run: d["run"].as_u64(),
                layer: v["layer"].as_str().map(str::to_string),
                object: v.get("object").map(text),
                kill_latency_ms: unload["kill_latency_ms"].as_f64(),
                killed_in_kernel: unload["killed_in_kernel"].as_bool().unwrap_or(false),
            });
        }
    }
    let mut objects: BTreeMap<(String, String, String, String), ObjectRow> = BTreeMap::new();
    let mut unreported_runs: std::collections::BTreeSet<(String, String, u64)> = Default::default();
    for e in violations {
        let d = detail(e);
        let id = row(&mut plugins, e);
        let run = d["run"].as_u64();
        let counted = run.is_some_and(|n| reported.contains(&(e.chain.clone(), id.clone(), n)));
        let layer = d["layer"].as_str().unwrap_or("unknown").to_string();
        if !counted {
            let p = plugins.get_mut(&id).expect("made above");
            let n = 1 + d["suppressed_before"].as_u64().unwrap_or(0);
            p.violations += n;
            *p.by_layer.entry(layer.clone()).or_default() += n;
            if let Some(run) = run {
                if unreported_runs.insert((e.chain.clone(), id.clone(), run)) {
                    p.runs_with_violations += 1;
                }
            }
        }
        let action = d["action"].as_str().unwrap_or("-").to_string();
        let object = d.get("object").map(text).unwrap_or_else(|| "-".into());
        let at = e.record.at_ms;
        objects
            .entry((id.clone(), layer.clone(), action.clone(), object.clone()))
            .and_modify(|o| {
                o.count += 1;
                o.last_ms = at;
            })
            .or_insert(ObjectRow {
                plugin: id,
                layer,
                action,
                object,
                count: 1,
                first_ms: at,
                last_ms: at,
            });
    }
    for e in limits {
        let id = row(&mut plugins, e);
        plugins.get_mut(&id).expect("made above").limits += 1;
    }
    for e in lifecycle {
        let d = detail(e);
        let id = row(&mut plugins, e);
        let p = plugins.get_mut(&id).expect("made above");
        let to = d["to"].as_str().unwrap_or("?").to_string();
        if to == "restarting" {
            p.restarts += 1;
        }
        p.state = Some(to);
    }
    r.plugins = plugins.into_values().collect();
    r.plugins.sort_by(|a, b| {
        b.violations
            .cmp(&a.violations)
            .then(a.plugin.cmp(&b.plugin))
    });
    r.objects = objects.into_values().collect();
    r.objects
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.first_ms.cmp(&b.first_ms)));
    r
}

fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// The report as a terminal shows it: one screen for "what did plugin X try, and what stopped it".
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let (Some(from), Some(to)) = (r.from_ms, r.to_ms) else {
        return "no records in the audit log match\n".into();
    };
    let _ = writeln!(
        out,
        "Stockade report: {} – {}, {} plugin(s){}\n",
        time(from),
        time(to),
        r.plugins.len(),
        if r.truncated {
            " (the oldest 2,000,000 records of a kind: narrow it with --since)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "{:<20} {:>10} {:>6} {:>8} {:>8} {:<12}  STOPPED BY (LAYER: COUNT)",
        "PLUGIN", "VIOLATIONS", "LIMITS", "UNLOADS", "RESTARTS", "STATE"
    );
    for p in &r.plugins {
        let mut layers: Vec<(&String, &u64)> = p.by_layer.iter().collect();
        layers.sort_by(|a, b| b.1.cmp(a.1));
        let layers: Vec<String> = layers.iter().map(|(l, n)| format!("{l}: {n}")).collect();
        let _ = writeln!(
            out,
            "{:<20} {:>10} {:>6} {:>8} {:>8} {:<12}  {}",
            cut(&p.plugin, 20),
            p.violations,
            p.limits,
            p.auto_unloads,
            p.restarts,
            p.state.as_deref().unwrap_or("-"),
            if layers.is_empty() {
                "-".into()
            } else {
                layers.join(", ")
            }
        );
    }
    if !r.objects.is_empty() {
        let _ = writeln!(out, "\nWhat they tried (violation records, most first):");
        let _ = writeln!(
            out,
            "{:<20} {:<11} {:<8} {:>6}  {:<20}  OBJECT",
            "PLUGIN", "LAYER", "ACTION", "SEEN", "LAST (UTC)"
        );
        for o in r.objects.iter().take(TOP_OBJECTS) {
            let _ = writeln!(
                out,
                "{:<20} {:<11} {:<8} {:>6}  {:<20}  {}",
                cut(&o.plugin, 20),
                cut(&o.layer, 11),
                cut(&o.action, 8),
                o.count,
                time(o.last_ms),
                cut(&o.object, 60)
            );
        }
        if r.objects.len() > TOP_OBJECTS {
            let _ = writeln!(
                out,
                "… {} more (--json has them all)",
                r.objects.len() - TOP_OBJECTS
            );
        }
    }
    if !r.auto_unloads.is_empty() {
        let _ = writeln!(out, "\nAuto-unloads:");
        let _ = writeln!(
            out,
            "{:<20} {:<20}  {:>12}  {:<11}  OBJECT",
            "PLUGIN", "AT (UTC)", "KILL LATENCY", "LAYER"
        );
        for a in &r.auto_unloads {
            let latency = match (a.kill_latency_ms, a.killed_in_kernel) {
                (_, true) => "in kernel".to_string(),
                (Some(ms), false) => format!("{ms:.1} ms"),
                (None, false) => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<20} {:<20}  {:>12}  {:<11}  {}",
                cut(&a.plugin, 20),
                time(a.at_ms),
                latency,
                a.layer.as_deref().unwrap_or("-"),
                cut(a.object.as_deref().unwrap_or("-"), 60)
            );
        }
    }
    out
}

/// `stockade report`.
pub fn run(location: &Location, args: &Args) -> Result<u8, Failure> {
    let since_ms = args
        .since
        .as_deref()
        .map(super::audit::since_ms)
        .transpose()?;
    let read = |kind: &str| Filter {
        plugin: args.plugin.clone(),
        kind: Some(kind.into()),
        chain: args.host.clone(),
        since_ms,
        limit: MAX_RECORDS,
    };
    let (violations, limits, reports, lifecycle) = stockade_state::block_on(async {
        let db = super::audit::open(location).await?;
        let q = |kind: &'static str| {
            let db = db.clone();
            let f = read(kind);
            async move { db.query(&f).await.map_err(super::audit::state_failure) }
        };
        Ok::<_, Failure>((
            q("violation").await?,
            q("limit").await?,
            q("report").await?,
            q("lifecycle").await?,
        ))
    })?;
    let truncated = [&violations, &limits, &reports, &lifecycle]
        .iter()
        .any(|v| v.len() as u32 >= MAX_RECORDS);
    let mut report = build(&violations, &limits, &reports, &lifecycle);
    report.truncated = truncated;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", render(&report));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockade_state::chain::Record;

    fn entry(seq: i64, at: i64, kind: &str, plugin: &str, detail: Value) -> Entry {
        let mut record = Record::new(kind, Some(plugin), &detail);
        record.at_ms = at;
        Entry::seal("h", seq, "", record)
    }

    /// A finished run counts from its report (every violation, the suppressed ones too); a run
    /// still going counts from its records and their `suppressed_before`.
    #[test]
    fn counts_come_from_reports_and_live_records() {
        let v = |seq, at, plugin: &str, run, object: &str, suppressed: u64| {
            entry(
                seq,
                at,
                "violation",
                plugin,
                serde_json::json!({"layer": "namespace", "action": "read", "object": object, "run": run, "suppressed_before": suppressed}),
            )
        };
        let violations = vec![
            v(1, 10, "a", 1, "/etc/shadow", 0),
            v(2, 11, "a", 1, "/etc/shadow", 0),
            v(3, 20, "b", 7, "/root/.ssh/id_rsa", 0),
            v(4, 21, "b", 7, "/root/.ssh/id_rsa", 40),
        ];
        let reports = vec![entry(
            5,
            30,
            "report",
            "a",
            serde_json::json!({"run": 1, "violations": 250, "lost_denials": 3, "by_layer": {"namespace": 247, "unknown (event lost)": 3},
                "auto_unload": {"violation": {"layer": "namespace", "object": "/etc/shadow"}, "kill_latency_ms": 0.4, "killed_in_kernel": false}}),
        )];
        let lifecycle = vec![
            entry(
                6,
                31,
                "lifecycle",
                "a",
                serde_json::json!({"from": "active", "to": "quarantined"}),
            ),
            entry(
                7,
                5,
                "lifecycle",
                "b",
                serde_json::json!({"from": "active", "to": "restarting"}),
            ),
            entry(
                8,
                6,
                "lifecycle",
                "b",
                serde_json::json!({"from": "restarting", "to": "active"}),
            ),
        ];
        let r = build(&violations, &[], &reports, &lifecycle);
        assert_eq!((r.from_ms, r.to_ms), (Some(5), Some(31)));
        let a = &r.plugins[0];
        assert_eq!(
            (
                a.plugin.as_str(),
                a.violations,
                a.lost_denials,
                a.auto_unloads
            ),
            ("a", 250, 3, 1)
        );
        assert_eq!(a.state.as_deref(), Some("quarantined"));
        let b = &r.plugins[1];
        assert_eq!((b.plugin.as_str(), b.violations, b.restarts), ("b", 42, 1));
        assert_eq!(b.by_layer["namespace"], 42);
        assert_eq!(r.objects[0].count, 2);
        assert_eq!(r.auto_unloads[0].kill_latency_ms, Some(0.4));
        let text = render(&r);
        assert!(
            text.contains("namespace: 247, unknown (event lost): 3"),
            "{text}"
        );
        assert!(text.contains("0.4 ms"), "{text}");
    }
}
