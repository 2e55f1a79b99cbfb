//! The daemon's state at start: the database opened (created, or migrated to this binary's
//! schema; a newer one refused), this host's audit chain resumed, its trust state read (and, once,
//! imported from the trust state file an earlier Stockade kept), and what a daemon that died left
//! in the registry set straight. Any failure stops the daemon before it does anything: it never
//! runs unaudited.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use stockade_state::audit::AuditLog;
use stockade_state::chain::Record;
use stockade_state::retention::{self, Policy};
use stockade_state::{HostRow, Installation, Location, Options, StateError, Storage, TrustState};
use stockade_trust::ratchet::Ratchet;

/// Records that may wait for the database before new requests are refused, by default.
pub const DEFAULT_QUEUE: usize = 10_000;

/// How often the chain's head is signed while records are committed (and once at stop): a
/// rewrite of the records after the last checkpoint is what `audit verify` cannot see.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

pub struct Opened {
    pub storage: Arc<dyn Storage>,
    pub audit: Arc<AuditLog>,
    pub ratchet: Ratchet,
}

fn fail(e: StateError) -> anyhow::Error {
    anyhow::anyhow!("{e}\n  hint: {}", e.hint())
}

pub async fn open(
    location: &Location,
    options: &Options,
    host_id: &str,
    queue: usize,
    state_dir: &Path,
) -> anyhow::Result<Opened> {
    let storage = stockade_state::open(location, options)
        .await
        .map_err(fail)?;
    // This host's rows are this process's from here on: a second daemon with the same host id
    // is refused before it writes anything.
    storage.claim_host(host_id).await.map_err(fail)?;
    let audit = Arc::new(
        AuditLog::open(storage.clone(), host_id, queue)
            .await
            .map_err(fail)?,
    );
    // Signed checkpoints of the chain's head, outside the database (not for `memory:`, which
    // ends with the process).
    if *location != Location::Memory {
        let dir = stockade_state::checkpoint::dir(state_dir);
        let writer = stockade_state::checkpoint::Writer::open(&dir).map_err(fail)?;
        audit.checkpoint_to(writer, CHECKPOINT_EVERY);
    }
    let mut trust = storage.trust_state(host_id).await.map_err(fail)?;
    import_trust_file(storage.as_ref(), host_id, state_dir, &mut trust).await?;
    let ratchet = Ratchet::detached(
        trust.marks,
        trust.rotations,
        trust.list_serial,
        trust.list_digest,
    );
    Ok(Opened {
        storage,
        audit,
        ratchet,
    })
}

/// The trust state an earlier Stockade kept in `<state>/trust/state.json`, moved into the
/// database (the file is renamed `state.json.imported` once all of it is there; an import cut
/// short is done again at the next start). What the database holds already wins: a plugin's
/// mark is imported only when the database has none, a rotation only once, the list's serial
/// only when higher.
async fn import_trust_file(
    storage: &dyn Storage,
    host_id: &str,
    state_dir: &Path,
    trust: &mut TrustState,
) -> anyhow::Result<()> {
    let path = state_dir.join("trust").join("state.json");
    if !path.exists() {
        return Ok(());
    }
    let file = Ratchet::open(&path).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n  hint: it records the versions, key rotations and trust list this host \
             accepted; restore it from a backup (removing it forgets them: older packages would \
             load again)"
        )
    })?;
    let (marks, rotations, serial, digest) = file.parts();
    for (plugin, mark) in marks {
        if !trust.marks.contains_key(plugin) {
            storage
                .set_mark(host_id, plugin, mark)
                .await
                .map_err(fail)?;
        }
    }
    for text in rotations {
        storage.add_rotation(host_id, text).await.map_err(fail)?;
    }
    if let Some(d) = digest.filter(|_| serial > trust.list_serial) {
        storage
            .set_trust_list(host_id, serial, d)
            .await
            .map_err(fail)?;
    }
    *trust = storage.trust_state(host_id).await.map_err(fail)?;
    std::fs::rename(&path, path.with_extension("json.imported"))?;
    tracing::info!(
        "trust state imported into {} from {}",
        storage.location(),
        path.display()
    );
    Ok(())
}

/// Stores what the trust set-up added to the ratchet (rotations named in the configuration, the
/// trust list's serial) before anything relies on it.
pub async fn store_trust(
    storage: &dyn Storage,
    host_id: &str,
    before: &TrustState,
    ratchet: &Ratchet,
) -> anyhow::Result<()> {
    let (_, rotations, serial, digest) = ratchet.parts();
    for text in rotations.iter().filter(|r| !before.rotations.contains(r)) {
        storage.add_rotation(host_id, text).await.map_err(fail)?;
    }
    if let Some(d) = digest.filter(|d| before.list_digest.as_deref() != Some(*d)) {
        storage
            .set_trust_list(host_id, serial, d)
            .await
            .map_err(fail)?;
    }
    Ok(())
}

/// Registers this daemon in the database, marks what a previous daemon of this host left
/// running as stopped, and records the start (committed before it returns).
pub async fn started(
    storage: &dyn Storage,
    audit: &AuditLog,
    host_id: &str,
    database: &str,
) -> anyhow::Result<()> {
    let now = stockade_state::now_ms();
    storage
        .register_host(&HostRow {
            host: host_id.to_string(),
            pid: i64::from(std::process::id()),
            started_ms: now,
            stockade_version: env!("CARGO_PKG_VERSION").to_string(),
        })
        .await
        .map_err(fail)?;
    // A daemon that stopped cleanly stopped its plugins; one that died did not say so.
    let mut left = Vec::new();
    for i in storage.installations().await.map_err(fail)? {
        if i.host == host_id && !matches!(i.state.as_str(), "stopped" | "failed" | "quarantined") {
            left.push(i.plugin.clone());
            storage
                .set_installation(&Installation {
                    state: "stopped".into(),
                    reason: Some(format!(
                        "the daemon stopped while it was {} (it did not unload it)",
                        i.state
                    )),
                    updated_ms: now,
                    ..i
                })
                .await
                .map_err(fail)?;
        }
    }
    let detail = json!({
        "event": "started",
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "database": database,
        "left_running_by_a_previous_daemon": left,
    });
    audit
        .record(
            Record::new("daemon", None, &detail),
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n  hint: {}", e.hint()))
}

/// Applies the retention policy now and then every hour: what is past it is exported to
/// `export_dir`, the cut recorded, then removed. A failure is logged and tried again at the
/// next round (nothing is removed that was not exported).
pub async fn retain(
    storage: Arc<dyn Storage>,
    audit: Arc<AuditLog>,
    policy: Policy,
    export_dir: std::path::PathBuf,
) {
    loop {
        match retention::apply(storage.as_ref(), &audit, &policy, &export_dir).await {
            Ok(Some(cut)) => tracing::info!(
                from = cut.from,
                to = cut.to,
                "audit retention: records exported to {} and removed",
                cut.file.display()
            ),
            Ok(None) => {}
            Err(e) => tracing::error!("audit retention: {e} ({})", e.hint()),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
