//! `stockade audit`, `stockade audit verify` and `stockade registry`: the daemon's database read
//! directly (read-only: never migrated or written from here), so they work while the daemon runs,
//! after it stopped, and after it crashed. The database is the daemon configuration's (or
//! `--database URL`).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use stockade::daemon_config;
use stockade_state::chain::{self, Entry};
use stockade_state::{Filter, Location, Options, StateError, Storage};

use crate::Failure;

/// The daemon's database as its configuration names it.
pub struct Database {
    pub location: Location,
    /// This host's id in it.
    pub host_id: String,
    pub state_dir: PathBuf,
    pub config: daemon_config::Config,
}

/// Where the database is: `--database`, else the configuration's, else SQLite in its state
/// directory; and this host's id.
pub fn database(config: Option<&Path>, flag: Option<&str>) -> Result<Database, Failure> {
    let config = daemon_config::read(config)
        .map_err(|e| Failure::usage(format!("{e:#}"), "see docs/plugins.md"))?
        .unwrap_or_default();
    let state_dir = config
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/stockade"));
    let text = flag
        .map(str::to_string)
        .or(config.database.clone())
        .unwrap_or_else(|| daemon_config::default_database(&state_dir));
    let location =
        Location::parse(&text).map_err(|e| Failure::usage(format!("--database: {e}"), e.hint()))?;
    Ok(Database {
        location,
        host_id: daemon_config::host_id(config.host_id.as_deref()),
        state_dir,
        config,
    })
}

pub(super) fn state_failure(e: StateError) -> Failure {
    Failure::internal(e.to_string(), Some(e.hint().into()))
}

pub(super) async fn open(location: &Location) -> Result<std::sync::Arc<dyn Storage>, Failure> {
    if *location == Location::Memory {
        return Err(Failure::usage(
            "memory: is a daemon's own, inside its process",
            "name the database the daemon uses: --database sqlite:PATH or postgres://…",
        ));
    }
    stockade_state::open(
        location,
        &Options {
            read_only: true,
            ..Default::default()
        },
    )
    .await
    .map_err(state_failure)
}

/// The host's trust state as the daemon keeps it (read, not moved), for `stockade run
/// --package` and `stockade verify`: empty when no daemon has kept one yet.
pub fn trust_state(db: &Database) -> Result<stockade_trust::ratchet::Ratchet, Failure> {
    let (location, host_id) = (&db.location, db.host_id.as_str());
    let state = match location {
        Location::Sqlite(p) if !p.exists() => Default::default(),
        Location::Memory => Default::default(),
        _ => stockade_state::block_on(async {
            open(location)
                .await?
                .trust_state(host_id)
                .await
                .map_err(state_failure)
        })?,
    };
    // An earlier Stockade's file, not yet moved into the database by a daemon.
    let file = db.state_dir.join("trust/state.json");
    if state == Default::default() && file.exists() {
        return stockade_trust::ratchet::Ratchet::open(&file)
            .map_err(|e| Failure::internal(e.to_string(), None));
    }
    Ok(stockade_trust::ratchet::Ratchet::detached(
        state.marks,
        state.rotations,
        state.list_serial,
        state.list_digest,
    ))
}

pub struct Query {
    pub plugin: Option<String>,
    pub kind: Option<String>,
    pub host: Option<String>,
    pub since: Option<String>,
    pub limit: u32,
    pub json: bool,
}

/// `--since`: a duration back from now ("2h", "7d") or an RFC 3339 time; milliseconds since the
/// epoch.
pub(super) fn since_ms(text: &str) -> Result<i64, Failure> {
    let now = std::time::SystemTime::now();
    let at = match humantime::parse_duration(text) {
        Ok(d) => now.checked_sub(d),
        Err(_) => humantime::parse_rfc3339_weak(text).ok(),
    };
    at.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| {
            Failure::usage(
                format!("--since {text}: not a duration or a time"),
                "a duration back from now (30m, 2h, 7d) or a time (2026-12-01T08:00:00Z)",
            )
        })
}

/// `stockade audit`: the records that match, oldest first.
pub fn list(location: &Location, q: &Query) -> Result<u8, Failure> {
    let filter = Filter {
        plugin: q.plugin.clone(),
        kind: q.kind.clone(),
        chain: q.host.clone(),
        since_ms: q.since.as_deref().map(since_ms).transpose()?,
        limit: q.limit,
    };
    let entries = stockade_state::block_on(async {
        open(location)
            .await?
            .query(&filter)
            .await
            .map_err(state_failure)
    })?;
    if q.json {
        for e in &entries {
            println!("{}", entry_json(e));
        }
        return Ok(0);
    }
    if entries.is_empty() {
        eprintln!("no audit records match");
        return Ok(0);
    }
    println!(
        "{:<24} {:<12} {:>6} {:<11} {:<16} {:>5}  WHAT",
        "TIME (UTC)", "HOST", "#", "KIND", "PLUGIN", "BY"
    );
    for e in &entries {
        println!(
            "{:<24} {:<12} {:>6} {:<11} {:<16} {:>5}  {}",
            time(e.record.at_ms),
            e.chain,
            e.seq,
            e.record.kind,
            e.record.plugin.as_deref().unwrap_or("-"),
            e.record.actor.map_or("-".into(), |a| a.to_string()),
            summary(e)
        );
    }
    Ok(0)
}

/// One record as a JSON line: its fields, with its detail as JSON (not a string).
fn entry_json(e: &Entry) -> Value {
    let mut v = json!(e);
    v["detail"] = serde_json::from_str(&e.record.detail).unwrap_or(json!(e.record.detail));
    v
}

fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A record's detail in a few words.
fn summary(e: &Entry) -> String {
    let d: Value = serde_json::from_str(&e.record.detail).unwrap_or(Value::Null);
    let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
    let outcome = || match s("outcome").as_str() {
        "error" => format!("error {}: {}", d["code"], s("error")),
        other => other.to_string(),
    };
    let text = match e.record.kind.as_str() {
        "call" => format!(
            "{} → {} in {:.2} ms (request {})",
            s("method"),
            outcome(),
            d["duration_ms"].as_f64().unwrap_or(0.0),
            e.record.request_id.as_deref().unwrap_or("?")
        ),
        "lifecycle" => format!("{} → {}: {}", s("from"), s("to"), s("reason")),
        "load" | "upgrade" => format!("{} → {}", s("dir"), outcome()),
        "unload" | "reload" => outcome(),
        "violation" | "limit" => format!(
            "{} {} {}{}",
            s("layer"),
            s("action"),
            s("syscall"),
            d.get("object")
                .filter(|o| !o.is_null())
                .map(|o| format!(" {}", o.as_str().map_or(o.to_string(), str::to_string)))
                .unwrap_or_default()
        ),
        "trust" => format!(
            "{} {}{}",
            s("decision"),
            s("kind"),
            d.get("reason")
                .and_then(Value::as_str)
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        "daemon" => s("event"),
        _ => e.record.detail.clone(),
    };
    let text = text.trim().to_string();
    if text.chars().count() > 140 {
        format!("{}…", text.chars().take(139).collect::<String>())
    } else {
        text
    }
}

/// The signed checkpoints `audit verify` checks: `--checkpoints FILE` (its key `--checkpoint-key`,
/// else the `checkpoint.pub` beside it), else the state directory's when the daemon kept them
/// (the SQLite database's directory; for PostgreSQL the configuration's `state_dir`).
pub struct CheckpointArgs {
    pub file: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn checkpoint_source(
    db: &Database,
    args: &CheckpointArgs,
) -> Result<Option<(PathBuf, PathBuf)>, Failure> {
    use stockade_state::checkpoint;
    let file = match &args.file {
        Some(f) if !f.exists() => {
            return Err(Failure::usage(
                format!("--checkpoints {}: no such file", f.display()),
                "the daemon keeps them in <state_dir>/audit/checkpoints.jsonl",
            ))
        }
        Some(f) => f.clone(),
        None => {
            // The daemon keeps them in its state directory, where its SQLite database lies too.
            let state_dir = match &db.location {
                Location::Sqlite(path) => path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                _ => db.state_dir.clone(),
            };
            let f = checkpoint::dir(&state_dir).join(checkpoint::FILE);
            if !f.exists() {
                return Ok(None);
            }
            f
        }
    };
    let key = args.key.clone().unwrap_or_else(|| {
        file.parent()
            .unwrap_or(Path::new("."))
            .join(checkpoint::PUBLIC)
    });
    Ok(Some((file, key)))
}

/// `stockade audit verify`: every chain walked from its base, and the last signed checkpoint of
/// each checked against it; exit 0 only when all hold.
pub fn verify(db: &Database, json_out: bool, checkpoints: &CheckpointArgs) -> Result<u8, Failure> {
    use stockade_state::checkpoint;
    let location = &db.location;
    let source = checkpoint_source(db, checkpoints)?;
    let signed = match &source {
        None => None,
        Some((file, key)) => {
            let list = checkpoint::read_last(file).map_err(|e| {
                Failure::usage(e, "name the file the daemon writes (--checkpoints FILE)")
            })?;
            let public = stockade_trust::key::PublicKey::read(key).map_err(|e| {
                Failure::usage(
                    format!("--checkpoint-key {}: {e}", key.display()),
                    "the daemon writes it beside its checkpoints (checkpoint.pub)",
                )
            })?;
            Some((list, public))
        }
    };
    let (verdicts, findings) = stockade_state::block_on(async {
        let storage = open(location).await?;
        let heads = storage.chains().await.map_err(state_failure)?;
        let mut verdicts = Vec::new();
        for head in &heads {
            verdicts.push(
                chain::verify(storage.as_ref(), head)
                    .await
                    .map_err(state_failure)?,
            );
        }
        let findings = match &signed {
            None => Vec::new(),
            Some((list, key)) => checkpoint::check(storage.as_ref(), list, key, &heads)
                .await
                .map_err(state_failure)?,
        };
        Ok::<_, Failure>((verdicts, findings))
    })?;
    let broken = verdicts.iter().filter(|v| v.broken.is_some()).count()
        + findings.iter().filter(|f| f.broken()).count();
    if json_out {
        println!(
            "{}",
            json!({
                "ok": broken == 0,
                "database": location.display(),
                "chains": verdicts,
                "checkpoints": source.as_ref().map(|(f, _)| f),
                "checked": findings,
            })
        );
    } else {
        for v in &verdicts {
            match &v.broken {
                None => println!(
                    "chain {}: {} records ({}..{}) hold",
                    v.chain,
                    v.records,
                    v.base_seq + 1,
                    v.head_seq
                ),
                Some(b) => println!(
                    "chain {}: BROKEN at record {} ({}): {}",
                    v.chain, b.seq, b.kind, b.why
                ),
            }
        }
        if verdicts.is_empty() {
            println!("no audit chains in {}", location.display());
        }
        if let Some((file, _)) = &source {
            for f in &findings {
                let at = time(f.at_ms);
                if f.broken() {
                    println!(
                        "chain {}: BROKEN against its checkpoint of {at} ({}): {}",
                        f.chain, f.verdict, f.why
                    );
                } else {
                    println!("chain {}: checkpoint of {at}: {}", f.chain, f.why);
                }
            }
            if findings.is_empty() {
                println!("no checkpoints in {}", file.display());
            }
        }
    }
    if broken > 0 {
        eprintln!(
            "stockade: {broken} of {} audit chains and checkpoints broken\n  hint: the records before the first break hold; compare with an export or a backup to see what was changed",
            verdicts.len() + findings.len()
        );
        return Ok(1);
    }
    Ok(0)
}

/// `stockade audit verify --export FILE...`: each export checked on its own, and whether it
/// joins the database's chain (its last record is the base the database kept) when the database
/// can be read.
pub fn verify_exports(
    location: &Location,
    files: &[PathBuf],
    json_out: bool,
) -> Result<u8, Failure> {
    let heads = stockade_state::block_on(async {
        match open(location).await {
            Ok(s) => s.chains().await.ok(),
            Err(_) => None,
        }
    });
    let mut verdicts = Vec::new();
    let mut broken = 0;
    for file in files {
        let v = stockade_state::retention::verify_export(file).map_err(|e| {
            Failure::usage(
                format!("{}: {e}", file.display()),
                "give an export file: --export FILE",
            )
        })?;
        let base = heads
            .as_ref()
            .and_then(|h| h.iter().find(|h| h.chain == v.chain && h.base_seq == v.to));
        let joins = base.map(|b| b.base_hash == v.last_hash);
        if v.broken.is_some() || joins == Some(false) {
            broken += 1;
        }
        if !json_out {
            match (&v.broken, joins) {
                (Some(b), _) => println!(
                    "{}: BROKEN at record {} ({}): {}",
                    file.display(),
                    b.seq,
                    b.kind,
                    b.why
                ),
                (None, Some(false)) => println!(
                    "{}: records {}..{} of chain {} hold, but do not join the database's chain (its base at record {} has another hash)",
                    file.display(),
                    v.from,
                    v.to,
                    v.chain,
                    v.to
                ),
                (None, joined) => println!(
                    "{}: records {}..{} of chain {} hold{}",
                    file.display(),
                    v.from,
                    v.to,
                    v.chain,
                    if joined == Some(true) {
                        " and join the database's chain"
                    } else {
                        ""
                    }
                ),
            }
        }
        verdicts.push(json!({ "export": v, "joins_database": joins }));
    }
    if json_out {
        println!("{}", json!({ "ok": broken == 0, "exports": verdicts }));
    }
    if broken > 0 {
        eprintln!(
            "stockade: {broken} of {} exports do not hold\n  hint: an export is the records as they were removed; compare it with a backup",
            files.len()
        );
        return Ok(1);
    }
    Ok(0)
}

/// `stockade registry [ID]`: the hosts, the plugins and which host runs which version; with an
/// id, that plugin's versions and their capabilities.
pub fn registry(location: &Location, id: Option<&str>, json_out: bool) -> Result<u8, Failure> {
    stockade_state::block_on(async {
        let storage = open(location).await?;
        let f = state_failure;
        if let Some(id) = id {
            let versions = storage.versions(id).await.map_err(f)?;
            if versions.is_empty() {
                return Err(Failure::usage(
                    format!("the registry has no plugin `{id}`"),
                    "`stockade registry` lists the plugins it has",
                ));
            }
            if json_out {
                println!("{}", json!({ "plugin": id, "versions": versions }));
                return Ok(0);
            }
            for v in versions {
                println!(
                    "{} {} (digest {}…, signed by {} at sequence {}; first installed {})\n",
                    v.plugin,
                    v.version,
                    v.digest.chars().take(16).collect::<String>(),
                    v.signer.as_deref().unwrap_or("no key (unsigned)"),
                    v.sequence,
                    time(v.installed_ms)
                );
                for line in v.capabilities.lines() {
                    println!("    {line}");
                }
                println!();
            }
            return Ok(0);
        }
        let hosts = storage.hosts().await.map_err(f)?;
        let plugins = storage.plugins().await.map_err(f)?;
        let installations = storage.installations().await.map_err(f)?;
        if json_out {
            println!(
                "{}",
                json!({ "hosts": hosts, "plugins": plugins, "installations": installations })
            );
            return Ok(0);
        }
        println!(
            "{:<16} {:<20} {:<12} {:<12} REASON",
            "HOST", "PLUGIN", "VERSION", "STATE"
        );
        for i in &installations {
            println!(
                "{:<16} {:<20} {:<12} {:<12} {}",
                i.host,
                i.plugin,
                i.version,
                i.state,
                i.reason.as_deref().unwrap_or("")
            );
        }
        println!(
            "\n{} hosts, {} plugins ({})",
            hosts.len(),
            plugins.len(),
            location.display()
        );
        Ok(0)
    })
}
