//! The daemon's configuration file (TOML; `--config FILE`, else `/etc/stockade/daemon.toml`
//! when it exists). Flags on the command line win over it; lists add up. `stockade verify`
//! reads its `[trust]` keys too.
//!
//! ```toml
//! socket = "/run/stockade/stockade.sock"
//! state_dir = "/var/lib/stockade"
//! plugins = ["/etc/stockade/plugins"]
//! allow_uids = [1000]
//! database = "sqlite:/var/lib/stockade/stockade.db"   # or postgres://USER:PASSWORD@HOST/DB
//! host_id = "web-1"                               # names this host in a shared database
//!
//! [audit]
//! queue = 10000                                   # records waiting for the database, at most
//! sync = "full"                                   # SQLite: "full" (power loss) or "normal"
//! wait = 30                                       # seconds an answer waits for its record
//! retain_days = 365                               # older records exported, then removed
//! retain_records = 10000000                       # at most this many kept per host
//! export_dir = "/var/lib/stockade/audit-export"   # where removed records go first
//!
//! [per_call]
//! max_armed = 64                                  # armed sandboxes waiting, over every plugin
//!
//! [metrics]
//! listen = "127.0.0.1:9464"                       # Prometheus at /metrics; off when absent
//! bpf_stats = false                               # the kernel counts each program's run time
//!
//! [export]
//! file = "/var/log/stockade/events.jsonl"         # events as JSON lines (docs/events.md)
//! max_bytes = 104857600                           # rotated at this size
//! keep = 5                                        # rotated files kept
//! journald = true                                 # each event to the journal too
//! types = ["violation", "lifecycle"]              # only these (default: every type)
//! omit = ["output"]                               # fields left out
//! rate = 1000                                     # events a second at most; the rest counted
//!
//! [trust]
//! keys = ["/etc/stockade/keys/acme.pub"]          # publishers whose plugins run `trusted`
//! third_party_keys = ["ed25519:..."]              # opted in: their plugins run `untrusted`
//! revoked = ["1a2b3c4d5e6f7081"]                  # key ids (or keys) never accepted again
//! rotations = ["/etc/stockade/keys/acme-2027.rotation"]   # new keys vouched for by old ones
//! trust_list = "/etc/stockade/trust.list"        # sealed with `stockade trust-list seal`
//! trust_list_key = "credential:stockade-trust-list"   # or the path of the key file
//! allow_unsigned = false                          # development only
//! ```
//!
//! Every error names the file, line and column, and the daemon does not start.

use std::path::{Path, PathBuf};

use stockade_trust::key::{KeyId, PublicKey};
use stockade_trust::keyring::{Keyring, Level};
use toml_edit::{ImDocument, Item, Table, Value};

/// Where the daemon looks when no `--config` is given.
pub const DEFAULT_CONFIG: &str = "/etc/stockade/daemon.toml";
/// The largest configuration file read.
const MAX_BYTES: u64 = 1 << 20;
const KEYS: &str =
    "socket, state_dir, plugins, allow_uids, database, host_id and the tables [trust], [audit], [per_call], [metrics], [export]";
/// `[per_call] max_armed` when the file does not say: the monitors' full-size slots (each armed
/// sandbox holds one while it waits; docs/architecture.md).
pub const DEFAULT_MAX_ARMED: u32 = 64;

#[derive(Debug, Default, PartialEq)]
pub struct Config {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub plugins: Vec<PathBuf>,
    pub allow_uids: Vec<u32>,
    /// Where the registry and the audit log are: `sqlite:PATH`, `postgres://…`, `memory:`.
    pub database: Option<String>,
    /// This host's name in the database (its audit chain, its trust state, its installations).
    pub host_id: Option<String>,
    pub trust: TrustConfig,
    pub audit: AuditConfig,
    pub metrics: MetricsConfig,
    pub export: ExportConfig,
    pub per_call: PerCallConfig,
}

/// `[per_call]`: what the per-call plugins may hold across the daemon.
#[derive(Debug, Default, PartialEq)]
pub struct PerCallConfig {
    /// Armed sandboxes waiting for a call, over every per-call plugin (each pool's `warm` is
    /// its own bound): past it a pool stays below its `warm`, and a call that finds none arms
    /// its own. 0 keeps no sandbox waiting.
    pub max_armed: Option<u32>,
}

/// `[export]`: the event stream, for a SIEM, as JSON lines and to the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    /// The file (rotated `FILE.1` … `FILE.<keep>`); off when absent.
    pub file: Option<PathBuf>,
    pub max_bytes: u64,
    pub keep: u32,
    /// The journal's socket to send each event to too (`journald = true`: systemd's).
    pub journald: Option<PathBuf>,
    /// The event types exported; empty: every type.
    pub types: Vec<String>,
    /// Fields never exported.
    pub omit: Vec<String>,
    /// Events a second at most; the rest are counted and the count exported.
    pub rate: u32,
}

/// systemd-journald's native socket.
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

impl Default for ExportConfig {
    fn default() -> ExportConfig {
        ExportConfig {
            file: None,
            max_bytes: 100 << 20,
            keep: 5,
            journald: None,
            types: Vec::new(),
            omit: Vec::new(),
            rate: 1000,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Default, PartialEq)]
pub struct MetricsConfig {
    /// Where `/metrics` is served (off when absent).
    pub listen: Option<std::net::SocketAddr>,
    /// Asks the kernel to count each BPF program's runs and run time while the daemon runs
    /// (`BPF_ENABLE_STATS`; every program on the host pays a clock read per run).
    pub bpf_stats: bool,
}

/// `[audit]`: how the audit log is written.
#[derive(Debug, Default, PartialEq)]
pub struct AuditConfig {
    /// Records that may wait for the database before new actions are refused.
    pub queue: Option<usize>,
    /// SQLite's sync: `full` or `normal`.
    pub sync: Option<String>,
    /// Seconds an answer waits for its record's commit.
    pub wait: Option<u64>,
    /// Records older than this many days are exported, then removed.
    pub retain_days: Option<u64>,
    /// At most this many records are kept per host; older ones are exported, then removed.
    pub retain_records: Option<u64>,
    /// Where removed records are exported [default: `<state dir>/audit-export`].
    pub export_dir: Option<PathBuf>,
}

/// The database when none is configured: SQLite in the state directory.
pub fn default_database(state_dir: &Path) -> String {
    format!("sqlite:{}", state_dir.join("stockade.db").display())
}

/// This host's id: the configured one, else the host name.
pub fn host_id(configured: Option<&str>) -> String {
    if let Some(id) = configured {
        return id.to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| valid_host_id(h))
        .unwrap_or_else(|| "localhost".into())
}

/// Letters, digits, `.`, `_` and `-`; 1 to 64 of them.
pub fn valid_host_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `[trust]`: the keys this host accepts signatures from.
#[derive(Debug, Default, PartialEq)]
pub struct TrustConfig {
    /// Publishers whose plugins run at `trusted`: `.pub` files or `ed25519:` lines.
    pub keys: Vec<String>,
    /// Third-party publishers the operator opted in to: their plugins run at `untrusted`.
    pub third_party_keys: Vec<String>,
    /// Keys never accepted again, whatever pins them: key ids, `.pub` files or `ed25519:` lines.
    pub revoked: Vec<String>,
    /// Key rotation files (`stockade key rotate`), applied in order.
    pub rotations: Vec<PathBuf>,
    /// The sealed trust list, and where its key is (a file, or `credential:NAME`).
    pub trust_list: Option<PathBuf>,
    pub trust_list_key: Option<String>,
    pub allow_unsigned: bool,
}

/// A key of the configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("[trust] {list}: {source}")]
pub struct KeyConfigError {
    pub list: &'static str,
    pub source: stockade_trust::key::KeyError,
}

impl KeyConfigError {
    pub fn hint(&self) -> Option<&'static str> {
        self.source.hint()
    }
}

/// The keyring of a configuration, with the compiled-in keys, the `--pubkey` files given on the
/// command line (at `trusted`) and `--allow-unsigned`.
pub fn keyring(
    trust: &TrustConfig,
    pubkeys: &[PathBuf],
    allow_unsigned: bool,
) -> Result<Keyring, KeyConfigError> {
    let mut ring = Keyring::with_builtin();
    let wrap = |list: &'static str| move |source| KeyConfigError { list, source };
    for k in &trust.keys {
        let key = PublicKey::from_config(k).map_err(wrap("keys"))?;
        ring.pin(key, Level::Trusted, k);
    }
    for k in &trust.third_party_keys {
        let key = PublicKey::from_config(k).map_err(wrap("third_party_keys"))?;
        ring.pin(key, Level::Untrusted, k);
    }
    for p in pubkeys {
        let key = PublicKey::read(p).map_err(wrap("--pubkey"))?;
        ring.pin(key, Level::Trusted, &p.display().to_string());
    }
    for r in &trust.revoked {
        let id = match KeyId::parse(&r.to_ascii_lowercase()) {
            Some(id) => id,
            None => PublicKey::from_config(r).map_err(wrap("revoked"))?.id(),
        };
        ring.revoke(id);
    }
    ring.allow_unsigned = allow_unsigned || trust.allow_unsigned;
    Ok(ring)
}

/// Why the daemon's trust cannot be set up: it does not start.
#[derive(Debug)]
pub struct TrustSetupError {
    pub cause: String,
    pub hint: &'static str,
}

impl std::fmt::Display for TrustSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n  hint: {}", self.cause, self.hint)
    }
}

/// The host's keyring: [`keyring`], then the rotations the host accepted before (`state`), then
/// the configuration's rotations, then the trust list — opened whole or not at all, and refused
/// when older than one the host used. With `persist` (the daemon), the rotations and the list's
/// serial are stored in `state`; without (`stockade run --package`), `state` is only read.
pub fn daemon_keyring(
    trust: &TrustConfig,
    pubkeys: &[PathBuf],
    allow_unsigned: bool,
    state: &mut stockade_trust::ratchet::Ratchet,
    persist: bool,
) -> Result<Keyring, TrustSetupError> {
    use stockade_trust::rotation::Rotation;
    let mut ring = keyring(trust, pubkeys, allow_unsigned).map_err(|e| TrustSetupError {
        cause: e.to_string(),
        hint: e.hint().unwrap_or("see docs/plugins.md, \"Signing\""),
    })?;
    for text in state.rotations().to_vec() {
        // Accepted before: it stands even if its old key was revoked since (the point of a
        // rotation). One whose old key is no longer pinned at all introduces nothing.
        if let Ok(r) = Rotation::parse(text.as_bytes()) {
            if let Ok(true) = ring.introduce(&r, true) {
                if ring.is_revoked(r.from) {
                    // It stands (the point of a rotation), but the operator should know: had the
                    // old key been stolen, this could be the thief's key.
                    tracing::warn!(
                        "key {} stays trusted: a rotation from key {} (revoked since) introduced it; revoke it too unless that rotation was the publisher's",
                        r.to.id(),
                        r.from
                    );
                }
            }
        }
    }
    for path in &trust.rotations {
        let bytes = std::fs::read(path).map_err(|e| TrustSetupError {
            cause: format!("[trust] rotations: {}: {e}", path.display()),
            hint: "check the path and its permissions",
        })?;
        let refused = |why: String| TrustSetupError {
            cause: format!("[trust] rotations: {}: {why}", path.display()),
            hint: "a rotation is written by `stockade key rotate` with the old key and the new one",
        };
        let r = Rotation::parse(&bytes).map_err(|e| refused(e.to_string()))?;
        ring.introduce(&r, false)
            .map_err(|e| refused(e.to_string()))?;
        if persist {
            state
                .remember_rotation(r.text())
                .map_err(|e| TrustSetupError {
                    cause: e.to_string(),
                    hint: "the daemon's state directory must be writable",
                })?;
        }
    }
    match (&trust.trust_list, &trust.trust_list_key) {
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            return Err(TrustSetupError {
                cause: "[trust]: trust_list and trust_list_key go together".into(),
                hint: "name both the sealed list and its key, or neither",
            })
        }
        (Some(list), Some(key)) => {
            let wrap = |e: stockade_trust::trustlist::ListError| TrustSetupError {
                cause: format!("[trust] trust_list: {e}"),
                hint: e
                    .hint()
                    .unwrap_or("see docs/plugins.md, \"The trust list\""),
            };
            let key = stockade_trust::trustlist::ListKey::read(key).map_err(wrap)?;
            let list = stockade_trust::trustlist::read(list, &key).map_err(wrap)?;
            if let Err(why) = state.check_list(list.serial, &list.digest) {
                return Err(TrustSetupError {
                    cause: format!("[trust] trust_list: {why}"),
                    hint: "an older list, or another list under a used serial, is refused (it could be a replay): seal the current one, with a higher serial",
                });
            }
            if persist {
                state
                    .record_list(list.serial, &list.digest)
                    .map_err(|e| TrustSetupError {
                        cause: e.to_string(),
                        hint: "the daemon's state directory must be writable",
                    })?;
            }
            ring.list = Some(list);
        }
    }
    Ok(ring)
}

/// Reads `path`; `Ok(None)` when it is the default path and does not exist.
pub fn read(path: Option<&Path>) -> anyhow::Result<Option<Config>> {
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!(
            "{}: {e}\n  hint: give an existing configuration file, or leave --config out",
            path.display()
        ),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_BYTES + 1), &mut text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_BYTES {
        anyhow::bail!("{}: larger than {MAX_BYTES} bytes", path.display());
    }
    parse(&text).map(Some).map_err(|(offset, message)| {
        let (line, column) = line_column(&text, offset);
        anyhow::anyhow!(
            "{}:{line}:{column}: {message}\n  hint: the keys are {KEYS} (see docs/plugins.md)",
            path.display()
        )
    })
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Parses the configuration; an error is its byte offset and message.
pub fn parse(text: &str) -> Result<Config, (usize, String)> {
    let doc = ImDocument::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        (offset, format!("invalid TOML: {}", e.message()))
    })?;
    let mut config = Config::default();
    for (key, item) in doc.as_table().iter() {
        let at = doc
            .as_table()
            .key(key)
            .and_then(|k| k.span())
            .map_or(0, |s| s.start);
        let value_at = item.span().map_or(at, |s| s.start);
        let string = |item: &Item| -> Result<PathBuf, (usize, String)> {
            match item.as_value() {
                Some(Value::String(s)) if !s.value().is_empty() => Ok(PathBuf::from(s.value())),
                _ => Err((
                    value_at,
                    format!("`{key}` must be a non-empty string (a path)"),
                )),
            }
        };
        match key {
            "socket" => config.socket = Some(string(item)?),
            "database" => {
                let text = string(item)?.to_string_lossy().into_owned();
                stockade_state::Location::parse(&text)
                    .map_err(|e| (value_at, format!("`database`: {e} ({})", e.hint())))?;
                config.database = Some(text);
            }
            "host_id" => {
                let id = string(item)?.to_string_lossy().into_owned();
                if !valid_host_id(&id) {
                    return Err((
                        value_at,
                        "`host_id` must be 1 to 64 letters, digits, `.`, `_` or `-`".into(),
                    ));
                }
                config.host_id = Some(id);
            }
            "audit" => {
                let Some(table) = item.as_table() else {
                    return Err((value_at, "`audit` must be a table: [audit]".into()));
                };
                config.audit = parse_audit(table)?;
            }
            "state_dir" => config.state_dir = Some(string(item)?),
            "plugins" => {
                let Some(Value::Array(array)) = item.as_value() else {
                    return Err((value_at, "`plugins` must be an array of directories".into()));
                };
                for v in array.iter() {
                    match v {
                        Value::String(s) if !s.value().is_empty() => {
                            config.plugins.push(PathBuf::from(s.value()))
                        }
                        _ => {
                            let at = v.span().map_or(value_at, |s| s.start);
                            return Err((at, "each of `plugins` must be a directory".into()));
                        }
                    }
                }
            }
            "allow_uids" => {
                let Some(Value::Array(array)) = item.as_value() else {
                    return Err((value_at, "`allow_uids` must be an array of uids".into()));
                };
                for v in array.iter() {
                    match v.as_integer().and_then(|n| u32::try_from(n).ok()) {
                        Some(uid) => config.allow_uids.push(uid),
                        None => {
                            let at = v.span().map_or(value_at, |s| s.start);
                            return Err((
                                at,
                                "each of `allow_uids` must be a uid (0 to 4294967295)".into(),
                            ));
                        }
                    }
                }
            }
            "trust" => {
                let Some(table) = item.as_table() else {
                    return Err((value_at, "`trust` must be a table: [trust]".into()));
                };
                config.trust = parse_trust(table)?;
            }
            "export" => {
                let Some(table) = item.as_table() else {
                    return Err((value_at, "`export` must be a table: [export]".into()));
                };
                config.export = parse_export(table)?;
            }
            "metrics" => {
                let Some(table) = item.as_table() else {
                    return Err((value_at, "`metrics` must be a table: [metrics]".into()));
                };
                config.metrics = parse_metrics(table)?;
            }
            "per_call" => {
                let Some(table) = item.as_table() else {
                    return Err((value_at, "`per_call` must be a table: [per_call]".into()));
                };
                for (key, item) in table.iter() {
                    let (at, value_at) = spans(table, key, item);
                    match key {
                        "max_armed" => {
                            config.per_call.max_armed =
                                Some(bounded(item, key, value_at, 0, 1024)? as u32)
                        }
                        other => {
                            return Err((
                                at,
                                format!("unknown key `{other}` in [per_call] (max_armed)"),
                            ))
                        }
                    }
                }
            }
            other => return Err((at, format!("unknown key `{other}`"))),
        }
    }
    Ok(config)
}

/// Where a table's key and its value start (byte offsets), for the error's line and column.
fn spans(table: &Table, key: &str, item: &Item) -> (usize, usize) {
    let at = table.key(key).and_then(|k| k.span()).map_or(0, |s| s.start);
    (at, item.span().map_or(at, |s| s.start))
}

/// An integer from `low` to `high`.
fn bounded(
    item: &Item,
    key: &str,
    value_at: usize,
    low: i64,
    high: i64,
) -> Result<i64, (usize, String)> {
    item.as_integer()
        .filter(|n| (low..=high).contains(n))
        .ok_or((
            value_at,
            format!("`{key}` must be a number from {low} to {high}"),
        ))
}

fn parse_export(table: &Table) -> Result<ExportConfig, (usize, String)> {
    let mut export = ExportConfig::default();
    for (key, item) in table.iter() {
        let (at, value_at) = spans(table, key, item);
        let number = |low: i64, high: i64| bounded(item, key, value_at, low, high);
        let words = |item: &Item| -> Result<Vec<String>, (usize, String)> {
            let Some(Value::Array(array)) = item.as_value() else {
                return Err((value_at, format!("`{key}` must be an array of names")));
            };
            array
                .iter()
                .map(|v| match v.as_str().filter(|s| !s.is_empty()) {
                    Some(s) => Ok(s.to_string()),
                    None => Err((
                        v.span().map_or(value_at, |s| s.start),
                        format!("each of `{key}` must be a name"),
                    )),
                })
                .collect()
        };
        match key {
            "file" => match item.as_str().filter(|v| v.starts_with('/')) {
                Some(v) => export.file = Some(PathBuf::from(v)),
                None => {
                    return Err((value_at, "`file` must be an absolute path".into()));
                }
            },
            "max_bytes" => export.max_bytes = number(4096, 1 << 40)? as u64,
            "keep" => export.keep = number(1, 1000)? as u32,
            "rate" => export.rate = number(1, 1_000_000)? as u32,
            "journald" => match (item.as_bool(), item.as_str()) {
                (Some(true), _) => export.journald = Some(PathBuf::from(JOURNALD_SOCKET)),
                (Some(false), _) => export.journald = None,
                (_, Some(p)) if p.starts_with('/') => export.journald = Some(PathBuf::from(p)),
                _ => {
                    return Err((
                        value_at,
                        "`journald` must be true, false or the journal's socket (a path)".into(),
                    ))
                }
            },
            "types" => export.types = words(item)?,
            "omit" => export.omit = words(item)?,
            other => {
                return Err((
                    at,
                    format!(
                        "unknown key `{other}` in [export] (file, max_bytes, keep, journald, types, omit, rate)"
                    ),
                ))
            }
        }
    }
    Ok(export)
}

fn parse_metrics(table: &Table) -> Result<MetricsConfig, (usize, String)> {
    let mut metrics = MetricsConfig::default();
    for (key, item) in table.iter() {
        let (at, value_at) = spans(table, key, item);
        match key {
            "listen" => {
                let addr = item.as_str().and_then(|v| v.parse().ok()).ok_or((
                    value_at,
                    "`listen` must be an address and port: \"127.0.0.1:9464\", \"[::1]:9464\""
                        .to_string(),
                ))?;
                metrics.listen = Some(addr);
            }
            "bpf_stats" => {
                metrics.bpf_stats = item
                    .as_bool()
                    .ok_or((value_at, "`bpf_stats` must be true or false".to_string()))?
            }
            other => {
                return Err((
                    at,
                    format!("unknown key `{other}` in [metrics] (listen, bpf_stats)"),
                ))
            }
        }
    }
    Ok(metrics)
}

fn parse_audit(table: &Table) -> Result<AuditConfig, (usize, String)> {
    let mut audit = AuditConfig::default();
    for (key, item) in table.iter() {
        let (at, value_at) = spans(table, key, item);
        let number = |low: i64, high: i64| bounded(item, key, value_at, low, high);
        match key {
            "queue" => audit.queue = Some(number(1, 10_000_000)? as usize),
            "wait" => audit.wait = Some(number(1, 3600)? as u64),
            "retain_days" => audit.retain_days = Some(number(1, 36_500)? as u64),
            "retain_records" => audit.retain_records = Some(number(1, 1_000_000_000_000)? as u64),
            "export_dir" => match item.as_str().filter(|v| !v.is_empty()) {
                Some(v) => audit.export_dir = Some(PathBuf::from(v)),
                None => {
                    return Err((
                        value_at,
                        "`export_dir` must be a non-empty string (a directory)".into(),
                    ))
                }
            },
            "sync" => match item.as_str() {
                Some(v @ ("full" | "normal")) => audit.sync = Some(v.to_string()),
                _ => return Err((value_at, "`sync` must be \"full\" or \"normal\"".into())),
            },
            other => {
                return Err((
                    at,
                    format!(
                        "unknown key `{other}` in [audit] (the keys are queue, sync, wait, \
                         retain_days, retain_records, export_dir)"
                    ),
                ))
            }
        }
    }
    Ok(audit)
}

fn parse_trust(table: &Table) -> Result<TrustConfig, (usize, String)> {
    let mut trust = TrustConfig::default();
    for (key, item) in table.iter() {
        let (at, value_at) = spans(table, key, item);
        let strings = |what: &str| -> Result<Vec<String>, (usize, String)> {
            let Some(Value::Array(array)) = item.as_value() else {
                return Err((value_at, format!("`{key}` must be an array of {what}")));
            };
            array
                .iter()
                .map(|v| match v {
                    Value::String(s) if !s.value().is_empty() => Ok(s.value().clone()),
                    _ => Err((
                        v.span().map_or(value_at, |s| s.start),
                        format!("each of `{key}` must be {what}"),
                    )),
                })
                .collect()
        };
        const KEY: &str = "a key: the path of a .pub file, or its `ed25519:...` line";
        match key {
            "keys" => trust.keys = strings(KEY)?,
            "third_party_keys" => trust.third_party_keys = strings(KEY)?,
            "revoked" => trust.revoked = strings("a key id (16 hex digits) or a key")?,
            "rotations" => {
                trust.rotations = strings("the path of a rotation file")?
                    .into_iter()
                    .map(PathBuf::from)
                    .collect()
            }
            "trust_list" | "trust_list_key" => {
                let value = item
                    .as_str()
                    .filter(|v| !v.is_empty())
                    .ok_or((value_at, format!("`{key}` must be a non-empty string")))?
                    .to_string();
                if key == "trust_list" {
                    trust.trust_list = Some(PathBuf::from(value));
                } else {
                    trust.trust_list_key = Some(value);
                }
            }
            "allow_unsigned" => {
                trust.allow_unsigned = item
                    .as_value()
                    .and_then(Value::as_bool)
                    .ok_or((value_at, "`allow_unsigned` must be true or false".into()))?
            }
            other => {
                return Err((
                    at,
                    format!(
                        "unknown key `{other}` in [trust] (the keys are keys, third_party_keys, \
                         revoked, rotations, trust_list, trust_list_key, allow_unsigned)"
                    ),
                ))
            }
        }
    }
    Ok(trust)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_file() {
        let c = parse(
            "socket = \"/run/s.sock\"\nstate_dir = \"/var/lib/x\"\nplugins = [\"/a\", \"/b\"]\nallow_uids = [1000]\n",
        )
        .unwrap();
        assert_eq!(c.socket, Some(PathBuf::from("/run/s.sock")));
        assert_eq!(c.state_dir, Some(PathBuf::from("/var/lib/x")));
        assert_eq!(c.plugins, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(c.allow_uids, [1000]);
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn the_database_and_audit() {
        let c = parse(
            "database = \"postgres://u:p@db/stockade\"\nhost_id = \"web-1\"\n[audit]\nqueue = 500\nsync = \"normal\"\nwait = 5\n",
        )
        .unwrap();
        assert_eq!(c.database.as_deref(), Some("postgres://u:p@db/stockade"));
        assert_eq!(c.host_id.as_deref(), Some("web-1"));
        assert_eq!(
            c.audit,
            AuditConfig {
                queue: Some(500),
                sync: Some("normal".into()),
                wait: Some(5),
                ..Default::default()
            }
        );
        let (_, message) = parse("database = \"mysql://x\"\n").unwrap_err();
        assert!(message.contains("not a database location"), "{message}");
        let (_, message) = parse("host_id = \"a b\"\n").unwrap_err();
        assert!(message.contains("letters, digits"), "{message}");
        let (_, message) = parse("[audit]\nsync = \"off\"\n").unwrap_err();
        assert!(message.contains("\"full\" or \"normal\""), "{message}");
        let (_, message) = parse("[audit]\nqueue = 0\n").unwrap_err();
        assert!(message.contains("from 1"), "{message}");
    }

    #[test]
    fn the_per_call_table() {
        let c = parse("[per_call]\nmax_armed = 0\n").unwrap();
        assert_eq!(c.per_call.max_armed, Some(0));
        assert_eq!(parse("").unwrap().per_call.max_armed, None);
        let (_, message) = parse("[per_call]\nmax_armed = 1025\n").unwrap_err();
        assert_eq!(message, "`max_armed` must be a number from 0 to 1024");
        let (_, message) = parse("[per_call]\nwarm = 1\n").unwrap_err();
        assert_eq!(message, "unknown key `warm` in [per_call] (max_armed)");
    }

    #[test]
    fn the_trust_table() {
        let c = parse(
            "[trust]\nkeys = [\"/k.pub\"]\nthird_party_keys = [\"ed25519:x\"]\nrevoked = [\"1a2b3c4d5e6f7081\"]\nallow_unsigned = true\n",
        )
        .unwrap();
        assert_eq!(c.trust.keys, ["/k.pub"]);
        assert_eq!(c.trust.third_party_keys, ["ed25519:x"]);
        assert_eq!(c.trust.revoked, ["1a2b3c4d5e6f7081"]);
        assert!(c.trust.allow_unsigned);
        let text = "[trust]\nkey = []\n";
        let (at, message) = parse(text).unwrap_err();
        assert_eq!(line_column(text, at), (2, 1));
        assert!(
            message.contains("unknown key `key` in [trust]"),
            "{message}"
        );
        let (_, message) = parse("[trust]\nallow_unsigned = \"yes\"\n").unwrap_err();
        assert!(message.contains("true or false"), "{message}");
        // A key that is not one is refused when the keyring is built, naming the list.
        let c = parse("[trust]\nthird_party_keys = [\"ed25519:x\"]\n").unwrap();
        let e = keyring(&c.trust, &[], false).unwrap_err();
        assert!(
            e.to_string().starts_with("[trust] third_party_keys:"),
            "{e}"
        );
    }

    /// The configuration the package installs parses, and says what its comments say.
    #[test]
    fn the_packaged_configuration() {
        let c = parse(include_str!("../../packaging/daemon.toml")).unwrap();
        assert_eq!(c.plugins, [PathBuf::from("/etc/stockade/plugins")]);
        assert_eq!(c.audit.sync.as_deref(), Some("full"));
        assert_eq!(c.metrics, MetricsConfig::default());
        assert_eq!(c.export, ExportConfig::default());
    }

    #[test]
    fn the_export_table() {
        let c = parse(
            "[export]\nfile = \"/var/log/s/e.jsonl\"\nmax_bytes = 8192\nkeep = 2\njournald = true\ntypes = [\"violation\"]\nomit = [\"output\"]\nrate = 10\n",
        )
        .unwrap();
        assert_eq!(
            c.export,
            ExportConfig {
                file: Some(PathBuf::from("/var/log/s/e.jsonl")),
                max_bytes: 8192,
                keep: 2,
                journald: Some(PathBuf::from(JOURNALD_SOCKET)),
                types: vec!["violation".into()],
                omit: vec!["output".into()],
                rate: 10,
            }
        );
        let (_, message) = parse("[export]\nfile = \"relative.jsonl\"\n").unwrap_err();
        assert!(message.contains("absolute path"), "{message}");
        let (_, message) = parse("[export]\nmax_bytes = 10\n").unwrap_err();
        assert!(message.contains("from 4096"), "{message}");
        let (_, message) = parse("[export]\ntypes = \"violation\"\n").unwrap_err();
        assert!(message.contains("array of names"), "{message}");
    }

    #[test]
    fn the_metrics_table() {
        let c = parse("[metrics]\nlisten = \"127.0.0.1:9464\"\nbpf_stats = true\n").unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(c.metrics.bpf_stats);
        let text = "[metrics]\nlisten = \"localhost\"\n";
        let (at, message) = parse(text).unwrap_err();
        assert_eq!(line_column(text, at), (2, 10));
        assert!(message.contains("an address and port"), "{message}");
        let (_, message) = parse("[metrics]\nport = 1\n").unwrap_err();
        assert!(
            message.contains("unknown key `port` in [metrics]"),
            "{message}"
        );
    }

    #[test]
    fn errors_point_at_the_value() {
        let text = "socket = \"/s\"\nplugin = [\"/a\"]\n";
        let (at, message) = parse(text).unwrap_err();
        assert_eq!(line_column(text, at), (2, 1));
        assert_eq!(message, "unknown key `plugin`");
        let text = "allow_uids = [1000, -1]\n";
        let (at, message) = parse(text).unwrap_err();
        assert_eq!(line_column(text, at), (1, 21));
        assert!(message.contains("must be a uid"), "{message}");
        let (_, message) = parse("socket = 3\n").unwrap_err();
        assert!(message.contains("must be a non-empty string"), "{message}");
        let (_, message) = parse("socket = \n").unwrap_err();
        assert!(message.starts_with("invalid TOML"), "{message}");
    }
}
