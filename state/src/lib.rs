//! What the daemon remembers: the registry (plugins, their versions and capabilities, which host
//! runs which version, the rollback ratchet) and the audit log (append-only, hash-chained), behind
//! one storage trait, [`Storage`], with three backends: SQLite ([`sqlite`], the embedded default),
//! PostgreSQL ([`postgres`], one registry for a fleet of hosts) and memory ([`memory`], tests).
//!
//! The audit log is written through [`audit::AuditLog`]: records are chained and numbered when
//! they are appended, committed in batches (group commit), and whoever must not acknowledge an
//! action before its record is durable waits for that record's commit.

pub mod audit;
pub mod chain;
pub mod checkpoint;
mod memory;
mod migrations;
mod pg_tls;
mod postgres;
pub mod retention;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

pub use chain::{Entry, Record};
pub use stockade_trust::ratchet::Mark;

/// Where the state is kept: `sqlite:PATH`, `postgres://…` (or `postgresql://…`), `memory:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
    Memory,
}

impl Location {
    pub fn parse(text: &str) -> Result<Location, StateError> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(StateError::BadLocation(text.to_string()));
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(Location::Postgres(text.to_string()));
        }
        if text == "memory:" {
            return Ok(Location::Memory);
        }
        Err(StateError::BadLocation(text.to_string()))
    }

    /// The location as it may be shown: a PostgreSQL password replaced by `***`.
    pub fn display(&self) -> String {
        match self {
            Location::Sqlite(p) => format!("sqlite:{}", p.display()),
            Location::Memory => "memory:".into(),
            Location::Postgres(url) => postgres::redact(url),
        }
    }
}

/// How an SQLite database syncs its commits: `full` survives a power loss (an fsync per group
/// commit), `normal` survives a crash of the daemon but not of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sync {
    #[default]
    Full,
    Normal,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub sync: Sync,
    /// Only read: no migration is applied, nothing is created (`stockade audit`).
    pub read_only: bool,
}

/// Opens the state at `location`: its schema created or migrated to this binary's (refused when
/// newer).
pub async fn open(location: &Location, options: &Options) -> Result<Arc<dyn Storage>, StateError> {
    let storage: Arc<dyn Storage> = match location {
        Location::Sqlite(path) => Arc::new(sqlite::Sqlite::open(path, options).await?),
        Location::Postgres(url) => Arc::new(postgres::Postgres::open(url, options).await?),
        Location::Memory => Arc::new(memory::Memory::new()),
    };
    Ok(storage)
}

/// What went wrong with the state. Each kind has a hint ([`StateError::hint`]).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("`{0}` is not a database location")]
    BadLocation(String),
    #[error("{location}: the database does not exist")]
    Missing { location: String },
    #[error("{location}: cannot open it: {why}")]
    Open { location: String, why: String },
    #[error("{location}: the password was refused: {why}")]
    Auth { location: String, why: String },
    #[error("{location}: permission denied: {why}")]
    Denied { location: String, why: String },
    #[error("{location}: the schema is version {found}, newer than this Stockade's {known}")]
    NewerSchema {
        location: String,
        found: i64,
        known: i64,
    },
    #[error("{location}: the schema is version {found}; this Stockade needs {known} (it migrates it when the daemon starts)")]
    OlderSchema {
        location: String,
        found: i64,
        known: i64,
    },
    #[error("{location}: the disk is full: {why}")]
    Full { location: String, why: String },
    #[error("{location}: {why}")]
    Unavailable { location: String, why: String },
    #[error("{location}: audit chain `{chain}` moved under this daemon (at record {expected}, found {found}): another daemon writes it")]
    ChainTaken {
        location: String,
        chain: String,
        expected: i64,
        found: i64,
    },
    #[error("{location}: {why}")]
    Corrupt { location: String, why: String },
    #[error("{location}: TLS: {why}")]
    Tls { location: String, why: String },
    #[error("{location}: another daemon runs as host `{host}`")]
    HostTaken { location: String, host: String },
}

impl StateError {
    pub fn hint(&self) -> &'static str {
        match self {
            StateError::BadLocation(_) => {
                "write sqlite:/PATH, postgres://USER:PASSWORD@HOST/DB or memory: (tests only)"
            }
            StateError::Missing { .. } => {
                "create the database first (`createdb NAME` for PostgreSQL), or check its name"
            }
            StateError::Open { .. } => {
                "check that the path's directory exists and is writable, or that the server runs"
            }
            StateError::Auth { .. } => "check the user and password in the database URL",
            StateError::Denied { .. } => {
                "the database's user must own it (CREATE DATABASE stockade OWNER stockade), or \
                 be granted what the schema needs"
            }
            StateError::NewerSchema { .. } => {
                "a newer Stockade wrote it: run that version, or restore a backup made for this one"
            }
            StateError::OlderSchema { .. } => {
                "start the daemon once to migrate it (`stockade daemon`), then try again"
            }
            StateError::Full { .. } => {
                "free space on the database's disk; nothing is written meanwhile"
            }
            StateError::Unavailable { .. } => {
                "the database did not answer: check that its server runs and is reachable"
            }
            StateError::ChainTaken { .. } => {
                "each daemon needs a host id of its own (`host_id` in the configuration)"
            }
            StateError::Corrupt { .. } => {
                "the database holds something Stockade did not write: restore it from a backup"
            }
            StateError::Tls { .. } => {
                "sslrootcert must name the CA (PEM) that signed the server's certificate, and the \
                 URL's host must be a name the certificate holds (verify-ca skips the name)"
            }
            StateError::HostTaken { .. } => {
                "each daemon sharing a database needs a host id of its own (`host_id` in the \
                 configuration, or --host-id); stop the other one first to take its place"
            }
        }
    }

    /// Whether waiting may help (a server restarting, a lock held for a while).
    pub fn transient(&self) -> bool {
        matches!(
            self,
            StateError::Unavailable { .. } | StateError::Full { .. }
        )
    }
}

/// One plugin, as the registry knows it (shared by every host of a fleet).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginRow {
    pub id: String,
    pub name: String,
    /// The trust level its latest version ran at.
    pub trust: String,
    /// The plugin's own configuration (its manifest's `[config]`, JSON), if any.
    pub config: Option<String>,
    pub first_seen_ms: i64,
    pub updated_ms: i64,
}

/// One version of a plugin that some host committed to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionRow {
    pub plugin: String,
    pub version: String,
    /// The package digest (SHA3-512 of its signed statement), or "unsigned".
    pub digest: String,
    pub entry_sha3_512: String,
    /// The key id that signed it.
    pub signer: Option<String>,
    pub sequence: i64,
    /// When it was signed (Unix seconds), if signed.
    pub published_s: Option<i64>,
    /// When a host first committed to it.
    pub installed_ms: i64,
    /// The compiled policy, as `stockade policy explain` shows it.
    pub capabilities: String,
}

/// What a host commits to when a version becomes its active one.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    pub host: String,
    pub plugin: PluginRow,
    pub version: VersionRow,
    /// The host's installation state now.
    pub state: String,
    /// The rollback ratchet's new mark for the plugin.
    pub mark: Mark,
    /// The key rotation the package carried, when its signature needed one.
    pub rotation: Option<String>,
}

/// Which version a host runs, and in what state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Installation {
    pub host: String,
    pub plugin: String,
    pub version: String,
    pub state: String,
    pub reason: Option<String>,
    pub updated_ms: i64,
}

/// A daemon that used the state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostRow {
    pub host: String,
    pub pid: i64,
    pub started_ms: i64,
    pub stockade_version: String,
}

/// What a host's trust set-up remembers (see `stockade_trust::ratchet`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustState {
    pub marks: std::collections::BTreeMap<String, Mark>,
    /// Accepted key rotations, their file text, in the order accepted.
    pub rotations: Vec<String>,
    pub list_serial: u64,
    pub list_digest: Option<String>,
}

/// One audit chain: a host's records, from its base (the genesis, or the last record a
/// retention cut exported) to its head.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainHead {
    pub chain: String,
    pub base_seq: i64,
    pub base_hash: String,
    pub head_seq: i64,
    pub head_hash: String,
}

/// Which audit records a query wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub plugin: Option<String>,
    pub kind: Option<String>,
    pub chain: Option<String>,
    /// Milliseconds since the epoch.
    pub since_ms: Option<i64>,
    pub limit: u32,
}

/// The storage behind the registry and the audit log. Every method is one transaction: it
/// happened whole when it returns `Ok`, and durably (as the backend's sync setting says).
#[async_trait]
pub trait Storage: Send + std::marker::Sync {
    /// The location, shown without secrets.
    fn location(&self) -> String;

    /// How the records travel to the database: `local` for a file or memory; for a server,
    /// whether the connection is encrypted and whether the server was authenticated.
    async fn transport(&self) -> Result<String, StateError> {
        Ok("local".into())
    }

    /// The schema version found (after migrating, when the storage may migrate).
    async fn schema_version(&self) -> Result<i64, StateError>;

    // The audit log.

    /// The chain's head, the chain created (at its genesis) when it does not exist.
    async fn open_chain(&self, chain: &str) -> Result<ChainHead, StateError>;
    /// Appends `entries` (numbered from `head_seq + 1`, chained from `head_hash`) and moves the
    /// chain's head to the last of them, refused with [`StateError::ChainTaken`] when the head
    /// is no longer `head_seq` (another writer).
    async fn append(
        &self,
        chain: &str,
        head_seq: i64,
        entries: Arc<[Entry]>,
    ) -> Result<(), StateError>;
    async fn chains(&self) -> Result<Vec<ChainHead>, StateError>;
    /// Records of `chain` after `after_seq` in order, at most `limit`: as stored, unchecked.
    async fn entries(
        &self,
        chain: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Entry>, StateError>;
    /// Records matching `filter`, oldest first.
    async fn query(&self, filter: &Filter) -> Result<Vec<Entry>, StateError>;
    /// The number of `chain`'s last record written before `before_ms`, if any.
    async fn last_before(&self, chain: &str, before_ms: i64) -> Result<Option<i64>, StateError>;
    /// Removes `chain`'s records up to `upto_seq` (not past its head) and moves the chain's base
    /// to that record, in one transaction: the chain verifies from there on.
    async fn cut(&self, chain: &str, upto_seq: i64) -> Result<(), StateError>;

    // The registry.

    async fn register_host(&self, host: &HostRow) -> Result<(), StateError>;
    async fn hosts(&self) -> Result<Vec<HostRow>, StateError>;
    /// Records, in one transaction, that a host committed to a version: the plugin and version
    /// upserted (with its capabilities), the host's installation pointed at it, the ratchet's
    /// mark moved, the key rotation it carried remembered.
    async fn commit_version(&self, commit: &Commit) -> Result<(), StateError>;
    async fn plugins(&self) -> Result<Vec<PluginRow>, StateError>;
    async fn versions(&self, plugin: &str) -> Result<Vec<VersionRow>, StateError>;
    async fn set_installation(&self, row: &Installation) -> Result<(), StateError>;
    async fn installations(&self) -> Result<Vec<Installation>, StateError>;

    // The host's trust state.

    async fn trust_state(&self, host: &str) -> Result<TrustState, StateError>;
    async fn set_mark(&self, host: &str, plugin: &str, mark: &Mark) -> Result<(), StateError>;
    /// Remembers an accepted key rotation (once: adding it again changes nothing).
    async fn add_rotation(&self, host: &str, text: &str) -> Result<(), StateError>;
    /// Claims `host` for this process while it uses the storage: refused with
    /// [`StateError::HostTaken`] when another process holds it (two daemons with one host id
    /// would fork its audit chain and trample its trust state).
    async fn claim_host(&self, host: &str) -> Result<(), StateError>;
    async fn set_trust_list(&self, host: &str, serial: u64, digest: &str)
        -> Result<(), StateError>;
}

/// Runs `f` to its end on a runtime of its own, on this thread, gone when it returns (the
/// CLI's commands: no thread of it outlives the call).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(f)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
