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
    /// Also write the report as one self-contained HTML page.
    pub html: Option<std::path::PathBuf>,
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
    /// Violations per plugin over time, from the violation records (each with the ones the
    /// live stream held back before it): `bucket_ms` wide, from `from_ms`.
    pub timeline: Timeline,
    /// A kind's records were more than `MAX_RECORDS`: the oldest were read.
    pub truncated: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Timeline {
    pub bucket_ms: i64,
    pub buckets: usize,
    /// Plugin → count per bucket.
    pub series: BTreeMap<String, Vec<u64>>,
}

/// Buckets of the timeline.
const BUCKETS: usize = 60;

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
    // A run is known by its host, its daemon's start and its number (run numbers start again
    // at each start of a daemon).
    type RunKey = (String, Option<u64>, String, u64);
    let mut reported: std::collections::BTreeSet<RunKey> = Default::default();
    for e in reports {
        let d = detail(e);
        let id = row(&mut plugins, e);
        if let Some(run) = d["run"].as_u64() {
            reported.insert((e.chain.clone(), d["daemon"].as_u64(), id.clone(), run));
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
    let mut unreported_runs: std::collections::BTreeSet<RunKey> = Default::default();
    for e in violations {
        let d = detail(e);
        let id = row(&mut plugins, e);
        let run = d["run"].as_u64();
        let daemon = d["daemon"].as_u64();
        let counted =
            run.is_some_and(|n| reported.contains(&(e.chain.clone(), daemon, id.clone(), n)));
        let layer = d["layer"].as_str().unwrap_or("unknown").to_string();
        if !counted {
            let p = plugins.get_mut(&id).expect("made above");
            let n = 1 + d["suppressed_before"].as_u64().unwrap_or(0);
            p.violations += n;
            *p.by_layer.entry(layer.clone()).or_default() += n;
            if let Some(run) = run {
                if unreported_runs.insert((e.chain.clone(), daemon, id.clone(), run)) {
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
    if let (Some(from), Some(to)) = (r.from_ms, r.to_ms) {
        let span = (to - from).max(1);
        let bucket_ms = (span + BUCKETS as i64 - 1) / BUCKETS as i64;
        let mut series: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in violations {
            let d = detail(e);
            let id = e.record.plugin.clone().unwrap_or_else(|| "-".into());
            let i = (((e.record.at_ms - from) / bucket_ms.max(1)) as usize).min(BUCKETS - 1);
            series.entry(id).or_insert_with(|| vec![0; BUCKETS])[i] +=
                1 + d["suppressed_before"].as_u64().unwrap_or(0);
        }
        r.timeline = Timeline {
            bucket_ms,
            buckets: BUCKETS,
            series,
        };
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
            let _ = writeln!(
                out,
                "{:<20} {:<20}  {:>12}  {:<11}  {}",
                cut(&a.plugin, 20),
                time(a.at_ms),
                latency(a),
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
    if let Some(path) = &args.html {
        std::fs::write(path, html(&report)).map_err(|e| {
            Failure::usage(
                format!("--html {}: {e}", path.display()),
                "give a writable file path",
            )
        })?;
    }
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

/// Text for HTML: `&`, `<`, `>`, `"` and `'` escaped.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Harmless in text, but nowhere raw: a page's script may copy text into its own.
            '\u{2028}' => out.push_str("&#x2028;"),
            '\u{2029}' => out.push_str("&#x2029;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON that may stand inside a `<script>` element: `<`, `>` and `&` (so no `</script>` and no
/// `<!--`) and the two line separators JavaScript once treated as line ends, as `\u` escapes.
fn script_json(v: &impl Serialize) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

const COLORS: [&str; 8] = [
    "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// The timeline as an SVG: one line per plugin (the eight with most violations), time across.
fn chart(r: &Report) -> String {
    use std::fmt::Write as _;
    let (w, h, pad) = (900.0f64, 260.0f64, 40.0f64);
    let mut top: Vec<(&String, &Vec<u64>)> = r.timeline.series.iter().collect();
    top.sort_by_key(|(_, v)| std::cmp::Reverse(v.iter().sum::<u64>()));
    top.truncate(COLORS.len());
    let max = top
        .iter()
        .flat_map(|(_, v)| v.iter())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let n = r.timeline.buckets.max(2) as f64;
    let mut svg = format!(
        r#"<svg id="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" role="img" aria-label="violations per plugin over time">"#
    );
    let y0 = h - pad;
    let _ = write!(
        svg,
        r##"<line x1="{pad}" y1="{y0}" x2="{x2}" y2="{y0}" stroke="#999"/><line x1="{pad}" y1="10" x2="{pad}" y2="{y0}" stroke="#999"/><text x="4" y="16" font-size="11">{max}</text><text x="4" y="{y0}" font-size="11">0</text>"##,
        x2 = w - 10.0,
    );
    for (i, (plugin, values)) in top.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let x = pad + (w - pad - 10.0) * k as f64 / (n - 1.0);
                let y = y0 - (y0 - 10.0) * (*v as f64) / max as f64;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="series" data-plugin="{}" fill="none" stroke="{}" stroke-width="2" points="{}"/><text x="{}" y="{}" font-size="12" fill="{}">{}</text>"#,
            esc(plugin),
            COLORS[i],
            points.join(" "),
            pad + 10.0 + 140.0 * (i % 6) as f64,
            h - 8.0 - 14.0 * (i / 6) as f64,
            COLORS[i],
            esc(plugin)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn latency(a: &AutoUnloadRow) -> String {
    match (a.kill_latency_ms, a.killed_in_kernel) {
        (_, true) => "in kernel".to_string(),
        (Some(ms), false) => format!("{ms:.1} ms"),
        (None, false) => "-".into(),
    }
}

/// The report as one self-contained page (nothing fetched from anywhere: its Content Security
/// Policy forbids it): the terminal's tables, the timeline as an SVG, the data as JSON, and a
/// script that checks the page against its data (the tables' rows and totals, the chart's lines)
/// and says so in the body's `data-checks`.
pub fn html(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut body = String::new();
    let window = match (r.from_ms, r.to_ms) {
        (Some(f), Some(t)) => format!("{} – {}", time(f), time(t)),
        _ => "no records".into(),
    };
    let _ = write!(
        body,
        r#"<h1>Stockade report</h1><p class="window">{} · {} plugin(s)</p>"#,
        esc(&window),
        r.plugins.len()
    );
    body.push_str(r#"<h2>Plugins</h2><table id="plugins"><tr><th>Plugin</th><th>Violations</th><th>Limits</th><th>Auto-unloads</th><th>Restarts</th><th>State</th><th>Stopped by</th></tr>"#);
    for p in &r.plugins {
        let layers: Vec<String> = p
            .by_layer
            .iter()
            .map(|(l, n)| format!("{}: {n}", esc(l)))
            .collect();
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td class="violations">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&p.plugin),
            p.violations,
            p.limits,
            p.auto_unloads,
            p.restarts,
            esc(p.state.as_deref().unwrap_or("-")),
            layers.join(", ")
        );
    }
    body.push_str("</table><h2>Violations over time</h2>");
    body.push_str(&chart(r));
    body.push_str(r#"<h2>What they tried</h2><table id="objects"><tr><th>Plugin</th><th>Layer</th><th>Action</th><th>Seen</th><th>Last (UTC)</th><th>Object</th></tr>"#);
    for o in &r.objects {
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="object">{}</td></tr>"#,
            esc(&o.plugin),
            esc(&o.layer),
            esc(&o.action),
            o.count,
            time(o.last_ms),
            esc(&o.object)
        );
    }
    body.push_str(r#"</table><h2>Auto-unloads</h2><table id="unloads"><tr><th>Plugin</th><th>At (UTC)</th><th>Kill latency</th><th>Layer</th><th>Object</th></tr>"#);
    for a in &r.auto_unloads {
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="object">{}</td></tr>"#,
            esc(&a.plugin),
            time(a.at_ms),
            latency(a),
            esc(a.layer.as_deref().unwrap_or("-")),
            esc(a.object.as_deref().unwrap_or("-"))
        );
    }
    body.push_str("</table>");
    format!(
        r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>Stockade report</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }}
td.violations {{ text-align: right; }}
td.object {{ font-family: monospace; word-break: break-all; }}
svg {{ width: 100%; max-width: 900px; height: auto; border: 1px solid #eee; }}
#checks {{ padding: 6px 10px; margin-bottom: 1em; }}
.ok {{ background: #e8f5e9; }} .failed {{ background: #ffebee; }}
</style></head>
<body data-checks="pending"><div id="checks">checking…</div>
{body}
<script type="application/json" id="report-data">{data}</script>
<script>
(function () {{
  var problems = [];
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var count = function (sel) {{ return document.querySelectorAll(sel).length; }};
  if (count("#plugins tr") - 1 !== data.plugins.length) problems.push("plugin rows");
  var shown = 0, total = 0;
  document.querySelectorAll("#plugins td.violations").forEach(function (td) {{ shown += Number(td.textContent); }});
  data.plugins.forEach(function (p) {{ total += p.violations; }});
  if (shown !== total) problems.push("violations shown " + shown + ", in the data " + total);
  if (count("#timeline polyline.series") !== Math.min(Object.keys(data.timeline.series).length, 8)) problems.push("chart lines");
  if (count("#objects tr") - 1 !== data.objects.length) problems.push("object rows");
  if (count("#unloads tr") - 1 !== data.auto_unloads.length) problems.push("auto-unload rows");
  var box = document.getElementById("checks");
  box.textContent = problems.length ? "page checks failed: " + problems.join("; ") : "page checks: ok (" + total + " violations, " + data.plugins.length + " plugins)";
  box.className = problems.length ? "failed" : "ok";
  document.body.setAttribute("data-checks", problems.length ? "failed" : "ok");
}})();
</script></body></html>
"##,
        data = script_json(r)
    )
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
            // Run 1 of an earlier start of the daemon (which crashed before its report): not
            // the run 1 whose report is below.
            entry(
                9,
                8,
                "violation",
                "a",
                serde_json::json!({"layer": "namespace", "action": "read", "object": "/etc/shadow", "run": 1, "daemon": 100}),
            ),
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
        assert_eq!(r.plugins[0].runs_with_violations, 2);
        let a = &r.plugins[0];
        assert_eq!(
            (
                a.plugin.as_str(),
                a.violations,
                a.lost_denials,
                a.auto_unloads
            ),
            ("a", 251, 3, 1)
        );
        assert_eq!(a.state.as_deref(), Some("quarantined"));
        let b = &r.plugins[1];
        assert_eq!((b.plugin.as_str(), b.violations, b.restarts), ("b", 42, 1));
        assert_eq!(b.by_layer["namespace"], 42);
        assert_eq!(r.objects[0].count, 3);
        assert_eq!(r.auto_unloads[0].kill_latency_ms, Some(0.4));
        let text = render(&r);
        assert!(
            text.contains("namespace: 248, unknown (event lost): 3"),
            "{text}"
        );
        assert!(text.contains("0.4 ms"), "{text}");
        assert_eq!(r.timeline.series["b"].iter().sum::<u64>(), 42);
    }

    /// A path a plugin chose cannot become markup or script in the page.
    #[test]
    fn the_page_escapes_what_plugins_chose() {
        let hostile = "/tmp/</script><script>alert(1)</script><img src=x onerror=alert(2)>\u{2028}";
        let violations = vec![entry(
            1,
            10,
            "violation",
            "a<b>",
            serde_json::json!({"layer": "namespace", "action": "read", "object": hostile, "run": 1}),
        )];
        let page = html(&build(&violations, &[], &[], &[]));
        assert_eq!(page.matches("<script").count(), 2, "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(page.contains("&lt;/script&gt;"), "{page}");
        assert!(!page.contains('\u{2028}'), "{page}");
    }
}
