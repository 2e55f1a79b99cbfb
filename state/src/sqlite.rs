//! The SQLite backend (rusqlite, SQLite compiled in): one connection, owned by a thread of its
//! own that runs each request as a transaction; the async side sends it closures and awaits
//! their results. WAL journal, so readers (`stockade audit`) never block the daemon's commits;
//! `synchronous = FULL` by default (each commit synced: a power loss keeps what was
//! acknowledged), `NORMAL` when configured (a daemon crash still keeps it). The file is the
//! daemon's alone: 0600 in a 0700 directory it creates.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use crate::chain::{genesis, Entry, Record};
use crate::migrations::{latest, MIGRATIONS, SCHEMA_TABLE};
use crate::{
    ChainHead, Commit, Filter, HostRow, Installation, Mark, Options, PluginRow, StateError,
    Storage, TrustState, VersionRow,
};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

pub struct Sqlite {
    path: PathBuf,
    /// The lock file of the host this process claimed (`<database>.host-<id>.lock`, flocked).
    host_lock: std::sync::Mutex<Option<std::fs::File>>,
    /// `None` once dropped: the thread's loop ends, and the drop waits for it.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sqlite {
    fn drop(&mut self) {
        // The connection closes on its own thread before this returns: a caller that goes on
        // to fork (the CLI's `run`) is single-threaded again.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Sqlite {
    pub async fn open(path: &Path, options: &Options) -> Result<Sqlite, StateError> {
        let location = format!("sqlite:{}", path.display());
        let fail = |why: String| StateError::Open {
            location: location.clone(),
            why,
        };
        let conn = if options.read_only {
            if !path.exists() {
                return Err(StateError::Missing { location });
            }
            Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| fail(e.to_string()))?
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.exists() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
                }
            }
            // Created 0600 before SQLite opens it: never readable by others, not even briefly.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| fail(e.to_string()))?;
            Connection::open(path).map_err(|e| fail(e.to_string()))?
        };
        let sync = match options.sync {
            crate::Sync::Full => "FULL",
            crate::Sync::Normal => "NORMAL",
        };
        let setup = format!(
            "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = {sync};"
        );
        conn.execute_batch(&setup)
            .map_err(|e| fail(e.to_string()))?;
        if !options.read_only {
            // WAL: `stockade audit` reads while the daemon commits. The journal mode is kept in
            // the file; a read-only opener uses what the daemon set.
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(|e| fail(e.to_string()))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(fail(format!("cannot use the WAL journal (got {mode})")));
            }
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let mut conn = conn;
        let thread = std::thread::Builder::new()
            .name("stockade-sqlite".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| fail(format!("cannot start its thread: {e}")))?;
        let db = Sqlite {
            path: path.to_path_buf(),
            host_lock: std::sync::Mutex::new(None),
            jobs: Some(tx),
            thread: Some(thread),
        };
        let location = db.location();
        let read_only = options.read_only;
        db.run(move |c| migrate(c, &location, read_only)).await?;
        Ok(db)
    }

    /// Runs `job` on the connection's thread.
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |c| {
            let _ = tx.send(job(c));
        });
        self.jobs
            .as_ref()
            .ok_or_else(|| self.gone())?
            .send(job)
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())?
    }

    /// The rows of one statement (`params` owned: they cross to the connection's thread), each
    /// mapped by `f`.
    async fn select<T: Send + 'static>(
        &self,
        sql: String,
        params: Vec<Value>,
        f: fn(&rusqlite::Row) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StateError> {
        let l = self.location();
        self.run(move |c| {
            rows(c, &sql, rusqlite::params_from_iter(params), f).map_err(|e| error(&l, e))
        })
        .await
    }

    fn gone(&self) -> StateError {
        StateError::Unavailable {
            location: self.location(),
            why: "its thread stopped".into(),
        }
    }
}

/// A rusqlite error as a state error: a full disk and a busy database told apart.
fn error(location: &str, e: rusqlite::Error) -> StateError {
    use rusqlite::ErrorCode;
    let location = location.to_string();
    let why = e.to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StateError::Full { location, why },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::SystemIoFailure) => {
            StateError::Unavailable { location, why }
        }
        Some(
            ErrorCode::NotADatabase
            | ErrorCode::DatabaseCorrupt
            | ErrorCode::ConstraintViolation
            | ErrorCode::TooBig,
        ) => StateError::Corrupt { location, why },
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            StateError::Open { location, why }
        }
        _ => StateError::Unavailable { location, why },
    }
}

fn migrate(c: &mut Connection, location: &str, read_only: bool) -> Result<i64, StateError> {
    let e = |err| error(location, err);
    if read_only {
        let has: Option<String> = c
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'stockade_schema'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?;
        let found: i64 = match has {
            Some(_) => c
                .query_row(
                    "SELECT COALESCE(MAX(version), 0) FROM stockade_schema",
                    [],
                    |r| r.get(0),
                )
                .map_err(e)?,
            None => 0,
        };
        return check_version(location, found, true);
    }
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(e)?;
    tx.execute_batch(SCHEMA_TABLE).map_err(e)?;
    let found: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM stockade_schema",
            [],
            |r| r.get(0),
        )
        .map_err(e)?;
    check_version(location, found, false)?;
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        tx.execute_batch(m.sql).map_err(e)?;
        tx.execute(
            "INSERT INTO stockade_schema (version, description, applied_ms) VALUES (?1, ?2, ?3)",
            params![m.version, m.description, crate::now_ms()],
        )
        .map_err(e)?;
        tracing::info!(
            version = m.version,
            "{location}: schema migrated: {}",
            m.description
        );
    }
    tx.commit().map_err(e)?;
    Ok(latest())
}

/// Refuses a schema newer than this binary's; a reader also refuses an older one.
pub(crate) fn check_version(location: &str, found: i64, reader: bool) -> Result<i64, StateError> {
    if found > latest() {
        return Err(StateError::NewerSchema {
            location: location.to_string(),
            found,
            known: latest(),
        });
    }
    if reader && found < latest() {
        return Err(StateError::OlderSchema {
            location: location.to_string(),
            found,
            known: latest(),
        });
    }
    Ok(found)
}

fn put_mark(c: &Connection, host: &str, plugin: &str, m: &Mark) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO trust_marks (host, plugin, version, sequence, digest, signer, accepted_s)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (host, plugin) DO UPDATE SET version = excluded.version,
         sequence = excluded.sequence, digest = excluded.digest, signer = excluded.signer,
         accepted_s = excluded.accepted_s",
        params![
            host,
            plugin,
            m.version,
            m.sequence as i64,
            m.digest,
            m.key,
            m.at as i64
        ],
    )
    .map(drop)
}

/// Adds a rotation unless the host has it.
fn put_rotation(c: &Connection, host: &str, text: &str) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO trust_rotations (host, n, text)
         SELECT ?1, (SELECT COALESCE(MAX(n), 0) + 1 FROM trust_rotations WHERE host = ?1), ?2
         WHERE NOT EXISTS (SELECT 1 FROM trust_rotations WHERE host = ?1 AND text = ?2)",
        params![host, text],
    )
    .map(drop)
}

/// One statement's rows, each mapped by `f`.
fn rows<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnMut(&rusqlite::Row) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut q = c.prepare_cached(sql)?;
    let found = q.query_map(params, f)?.collect();
    found
}

fn entry_from(r: &rusqlite::Row) -> rusqlite::Result<Entry> {
    Ok(Entry {
        chain: r.get(0)?,
        seq: r.get(1)?,
        record: Record {
            at_ms: r.get(2)?,
            kind: r.get(3)?,
            plugin: r.get(4)?,
            actor: r.get(5)?,
            request_id: r.get(6)?,
            detail: r.get(7)?,
        },
        prev: r.get(8)?,
        hash: r.get(9)?,
    })
}

const ENTRY_COLUMNS: &str =
    "chain, seq, at_ms, kind, plugin, actor, request_id, detail, prev, hash";

fn head_from(r: &rusqlite::Row) -> rusqlite::Result<ChainHead> {
    Ok(ChainHead {
        chain: r.get(0)?,
        base_seq: r.get(1)?,
        base_hash: r.get(2)?,
        head_seq: r.get(3)?,
        head_hash: r.get(4)?,
    })
}

fn version_from(r: &rusqlite::Row) -> rusqlite::Result<VersionRow> {
    Ok(VersionRow {
        plugin: r.get(0)?,
        version: r.get(1)?,
        digest: r.get(2)?,
        entry_sha3_512: r.get(3)?,
        signer: r.get(4)?,
        sequence: r.get(5)?,
        published_s: r.get(6)?,
        installed_ms: r.get(7)?,
        capabilities: r.get(8)?,
    })
}

#[async_trait]
impl Storage for Sqlite {
    fn location(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    async fn schema_version(&self) -> Result<i64, StateError> {
        let l = self.location();
        self.run(move |c| {
            c.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM stockade_schema",
                [],
                |r| r.get(0),
            )
            .map_err(|e| error(&l, e))
        })
        .await
    }

    async fn open_chain(&self, chain: &str) -> Result<ChainHead, StateError> {
        let (l, chain) = (self.location(), chain.to_string());
        self.run(move |c| {
            let e = |err| error(&l, err);
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(e)?;
            let g = genesis(&chain);
            tx.execute(
                "INSERT INTO audit_chains (chain, base_seq, base_hash, head_seq, head_hash)
                 VALUES (?1, 0, ?2, 0, ?2) ON CONFLICT (chain) DO NOTHING",
                params![chain, g],
            )
            .map_err(e)?;
            let head = tx
                .query_row(
                    "SELECT chain, base_seq, base_hash, head_seq, head_hash FROM audit_chains WHERE chain = ?1",
                    params![chain],
                    head_from,
                )
                .map_err(e)?;
            tx.commit().map_err(e)?;
            Ok(head)
        })
        .await
    }

    async fn append(
        &self,
        chain: &str,
        head_seq: i64,
        entries: Arc<[Entry]>,
    ) -> Result<(), StateError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let (l, chain) = (self.location(), chain.to_string());
        let (last_seq, last_hash) = (last.seq, last.hash.clone());
        self.run(move |c| {
            let e = |err| error(&l, err);
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(e)?;
            let moved = tx
                .prepare_cached(
                    "UPDATE audit_chains SET head_seq = ?1, head_hash = ?2 WHERE chain = ?3 AND head_seq = ?4",
                )
                .and_then(|mut s| s.execute(params![last_seq, last_hash, chain, head_seq]))
                .map_err(e)?;
            if moved != 1 {
                let found: i64 = tx
                    .query_row(
                        "SELECT head_seq FROM audit_chains WHERE chain = ?1",
                        params![chain],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(e)?
                    .unwrap_or(-1);
                return Err(StateError::ChainTaken {
                    location: l.clone(),
                    chain,
                    expected: head_seq,
                    found,
                });
            }
            {
                let mut insert = tx
                    .prepare_cached(&format!(
                        "INSERT INTO audit ({ENTRY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                    ))
                    .map_err(e)?;
                for en in entries.iter() {
                    let r = &en.record;
                    insert
                        .execute(params![
                            en.chain,
                            en.seq,
                            r.at_ms,
                            r.kind,
                            r.plugin,
                            r.actor,
                            r.request_id,
                            r.detail,
                            en.prev,
                            en.hash
                        ])
                        .map_err(e)?;
                }
            }
            tx.commit().map_err(e)
        })
        .await
    }

    async fn chains(&self) -> Result<Vec<ChainHead>, StateError> {
        self.select(
            "SELECT chain, base_seq, base_hash, head_seq, head_hash FROM audit_chains ORDER BY chain".into(),
            vec![],
            head_from,
        )
        .await
    }

    async fn entries(
        &self,
        chain: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Entry>, StateError> {
        self.select(
            format!(
                "SELECT {ENTRY_COLUMNS} FROM audit WHERE chain = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ),
            vec![chain.to_string().into(), after_seq.into(), i64::from(limit).into()],
            entry_from,
        )
        .await
    }

    async fn query(&self, f: &Filter) -> Result<Vec<Entry>, StateError> {
        // Only the conditions given: SQLite plans `?1 IS NULL OR plugin = ?1` as a scan of the
        // time index, where `plugin = ?1` alone reads `audit_by_plugin` (already in time order).
        let mut conditions = Vec::new();
        let mut params: Vec<Value> = Vec::new();
        for (column, op, value) in [
            ("plugin", "=", f.plugin.clone().map(Value::from)),
            ("kind", "=", f.kind.clone().map(Value::from)),
            ("chain", "=", f.chain.clone().map(Value::from)),
            ("at_ms", ">=", f.since_ms.map(Value::from)),
        ] {
            if let Some(value) = value {
                params.push(value);
                conditions.push(format!("{column} {op} ?{}", params.len()));
            }
        }
        params.push(i64::from(f.limit).into());
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        self.select(
            format!(
                "SELECT {ENTRY_COLUMNS} FROM audit {filter} ORDER BY at_ms, chain, seq LIMIT ?{}",
                params.len()
            ),
            params,
            entry_from,
        )
        .await
    }

    async fn last_before(&self, chain: &str, before_ms: i64) -> Result<Option<i64>, StateError> {
        let (l, chain) = (self.location(), chain.to_string());
        self.run(move |c| {
            c.query_row(
                "SELECT MAX(seq) FROM audit WHERE chain = ?1 AND at_ms < ?2",
                params![chain, before_ms],
                |r| r.get(0),
            )
            .map_err(|e| error(&l, e))
        })
        .await
    }

    async fn cut(&self, chain: &str, upto_seq: i64) -> Result<(), StateError> {
        let (l, chain) = (self.location(), chain.to_string());
        self.run(move |c| {
            let e = |err| error(&l, err);
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(e)?;
            let hash: Option<String> = tx
                .query_row(
                    "SELECT a.hash FROM audit a JOIN audit_chains h ON h.chain = a.chain
                     WHERE a.chain = ?1 AND a.seq = ?2 AND a.seq > h.base_seq AND a.seq <= h.head_seq",
                    params![chain, upto_seq],
                    |r| r.get(0),
                )
                .optional()
                .map_err(e)?;
            let Some(hash) = hash else {
                return Err(StateError::Corrupt {
                    location: l.clone(),
                    why: format!("no record {upto_seq} in chain `{chain}` to cut at"),
                });
            };
            tx.execute(
                "DELETE FROM audit WHERE chain = ?1 AND seq <= ?2",
                params![chain, upto_seq],
            )
            .map_err(e)?;
            tx.execute(
                "UPDATE audit_chains SET base_seq = ?1, base_hash = ?2 WHERE chain = ?3",
                params![upto_seq, hash, chain],
            )
            .map_err(e)?;
            tx.commit().map_err(e)
        })
        .await
    }

    async fn register_host(&self, host: &HostRow) -> Result<(), StateError> {
        let (l, h) = (self.location(), host.clone());
        self.run(move |c| {
            c.execute(
                "INSERT INTO hosts (host, pid, started_ms, stockade_version) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (host) DO UPDATE SET pid = excluded.pid, started_ms = excluded.started_ms,
                 stockade_version = excluded.stockade_version",
                params![h.host, h.pid, h.started_ms, h.stockade_version],
            )
            .map(drop)
            .map_err(|e| error(&l, e))
        })
        .await
    }

    async fn hosts(&self) -> Result<Vec<HostRow>, StateError> {
        self.select(
            "SELECT host, pid, started_ms, stockade_version FROM hosts ORDER BY host".into(),
            vec![],
            |r| {
                Ok(HostRow {
                    host: r.get(0)?,
                    pid: r.get(1)?,
                    started_ms: r.get(2)?,
                    stockade_version: r.get(3)?,
                })
            },
        )
        .await
    }

    async fn commit_version(&self, commit: &Commit) -> Result<(), StateError> {
        let (l, k) = (self.location(), commit.clone());
        self.run(move |c| {
            let e = |err| error(&l, err);
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(e)?;
            let (p, v) = (&k.plugin, &k.version);
            tx.execute(
                "INSERT INTO plugins (id, name, trust, config, first_seen_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, trust = excluded.trust,
                 config = excluded.config, updated_ms = excluded.updated_ms",
                params![p.id, p.name, p.trust, p.config, p.first_seen_ms, p.updated_ms],
            )
            .map_err(e)?;
            tx.execute(
                "INSERT INTO plugin_versions (plugin, version, digest, entry_sha3_512, signer, sequence,
                 published_s, installed_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (plugin, version, digest) DO NOTHING",
                params![
                    v.plugin,
                    v.version,
                    v.digest,
                    v.entry_sha3_512,
                    v.signer,
                    v.sequence,
                    v.published_s,
                    v.installed_ms
                ],
            )
            .map_err(e)?;
            tx.execute(
                "INSERT INTO plugin_capabilities (plugin, version, digest, explain) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (plugin, version, digest) DO NOTHING",
                params![v.plugin, v.version, v.digest, v.capabilities],
            )
            .map_err(e)?;
            tx.execute(
                "INSERT INTO installations (host, plugin, version, state, reason, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5)
                 ON CONFLICT (host, plugin) DO UPDATE SET version = excluded.version,
                 state = excluded.state, reason = NULL, updated_ms = excluded.updated_ms",
                params![k.host, v.plugin, v.version, k.state, v.installed_ms],
            )
            .map_err(e)?;
            put_mark(&tx, &k.host, &v.plugin, &k.mark).map_err(e)?;
            if let Some(text) = &k.rotation {
                put_rotation(&tx, &k.host, text).map_err(e)?;
            }
            tx.commit().map_err(e)
        })
        .await
    }

    async fn plugins(&self) -> Result<Vec<PluginRow>, StateError> {
        self.select(
            "SELECT id, name, trust, config, first_seen_ms, updated_ms FROM plugins ORDER BY id"
                .into(),
            vec![],
            |r| {
                Ok(PluginRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    trust: r.get(2)?,
                    config: r.get(3)?,
                    first_seen_ms: r.get(4)?,
                    updated_ms: r.get(5)?,
                })
            },
        )
        .await
    }

    async fn versions(&self, plugin: &str) -> Result<Vec<VersionRow>, StateError> {
        self.select(
            "SELECT v.plugin, v.version, v.digest, v.entry_sha3_512, v.signer, v.sequence,
             v.published_s, v.installed_ms, COALESCE(c.explain, '')
             FROM plugin_versions v LEFT JOIN plugin_capabilities c
             ON c.plugin = v.plugin AND c.version = v.version AND c.digest = v.digest
             WHERE v.plugin = ?1 ORDER BY v.installed_ms"
                .into(),
            vec![plugin.to_string().into()],
            version_from,
        )
        .await
    }

    async fn set_installation(&self, row: &Installation) -> Result<(), StateError> {
        let (l, i) = (self.location(), row.clone());
        self.run(move |c| {
            c.execute(
                "UPDATE installations SET state = ?1, reason = ?2, updated_ms = ?3
                 WHERE host = ?4 AND plugin = ?5 AND version = ?6",
                params![i.state, i.reason, i.updated_ms, i.host, i.plugin, i.version],
            )
            .map(drop)
            .map_err(|e| error(&l, e))
        })
        .await
    }

    async fn installations(&self) -> Result<Vec<Installation>, StateError> {
        self.select(
            "SELECT host, plugin, version, state, reason, updated_ms FROM installations
             ORDER BY host, plugin"
                .into(),
            vec![],
            |r| {
                Ok(Installation {
                    host: r.get(0)?,
                    plugin: r.get(1)?,
                    version: r.get(2)?,
                    state: r.get(3)?,
                    reason: r.get(4)?,
                    updated_ms: r.get(5)?,
                })
            },
        )
        .await
    }

    async fn trust_state(&self, host: &str) -> Result<TrustState, StateError> {
        let (l, host) = (self.location(), host.to_string());
        self.run(move |c| {
            let e = |err| error(&l, err);
            let mut state = TrustState::default();
            let mut q = c
                .prepare(
                    "SELECT plugin, version, sequence, digest, signer, accepted_s FROM trust_marks
                     WHERE host = ?1",
                )
                .map_err(e)?;
            let marks = q
                .query_map(params![host], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        Mark {
                            version: r.get(1)?,
                            sequence: r.get::<_, i64>(2)? as u64,
                            digest: r.get(3)?,
                            key: r.get(4)?,
                            at: r.get::<_, i64>(5)? as u64,
                        },
                    ))
                })
                .map_err(e)?;
            for m in marks {
                let (plugin, mark) = m.map_err(e)?;
                state.marks.insert(plugin, mark);
            }
            let mut q = c
                .prepare("SELECT text FROM trust_rotations WHERE host = ?1 ORDER BY n")
                .map_err(e)?;
            let rotations = q.query_map(params![host], |r| r.get(0)).map_err(e)?;
            state.rotations = rotations.collect::<Result<Vec<_>, _>>().map_err(e)?;
            if let Some((serial, digest)) = c
                .query_row(
                    "SELECT serial, digest FROM trust_lists WHERE host = ?1",
                    params![host],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                )
                .optional()
                .map_err(e)?
            {
                state.list_serial = serial as u64;
                state.list_digest = Some(digest);
            }
            Ok(state)
        })
        .await
    }

    async fn set_mark(&self, host: &str, plugin: &str, mark: &Mark) -> Result<(), StateError> {
        let (l, host, plugin, m) = (
            self.location(),
            host.to_string(),
            plugin.to_string(),
            mark.clone(),
        );
        self.run(move |c| put_mark(c, &host, &plugin, &m).map_err(|e| error(&l, e)))
            .await
    }

    async fn add_rotation(&self, host: &str, text: &str) -> Result<(), StateError> {
        let (l, host, text) = (self.location(), host.to_string(), text.to_string());
        self.run(move |c| put_rotation(c, &host, &text).map_err(|e| error(&l, e)))
            .await
    }

    async fn claim_host(&self, host: &str) -> Result<(), StateError> {
        use std::os::fd::AsRawFd;
        let path = PathBuf::from(format!("{}.host-{host}.lock", self.path.display()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StateError::Open {
                location: self.location(),
                why: format!("{}: {e}", path.display()),
            })?;
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StateError::HostTaken {
                location: self.location(),
                host: host.to_string(),
            });
        }
        *self.host_lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
        Ok(())
    }

    async fn set_trust_list(
        &self,
        host: &str,
        serial: u64,
        digest: &str,
    ) -> Result<(), StateError> {
        let (l, host, digest) = (self.location(), host.to_string(), digest.to_string());
        self.run(move |c| {
            c.execute(
                "INSERT INTO trust_lists (host, serial, digest) VALUES (?1, ?2, ?3)
                 ON CONFLICT (host) DO UPDATE SET serial = excluded.serial, digest = excluded.digest",
                params![host, serial as i64, digest],
            )
            .map(drop)
            .map_err(|e| error(&l, e))
        })
        .await
    }
}
