//! The PostgreSQL backend (tokio-postgres), for fleets: the daemons of many hosts share one
//! registry, each writing its own audit chain and its own trust state (keyed by host id), so
//! none tramples another's. One connection per daemon, used by one request at a time (an audit
//! batch is one statement: one round trip); when the server goes away (a restart), the next
//! request connects again, and the audit log's writer keeps its records until one succeeds. TLS
//! as libpq's `sslmode` and `sslrootcert` say (pg_tls.rs).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement};

use crate::chain::{genesis, Entry, Record};
use crate::migrations::{latest, MIGRATIONS, SCHEMA_TABLE};
use crate::{
    ChainHead, Commit, Filter, HostRow, Installation, Mark, Options, PluginRow, StateError,
    Storage, TrustState, VersionRow,
};

pub struct Postgres {
    config: tokio_postgres::Config,
    tls: crate::pg_tls::Settings,
    connector: tokio_postgres_rustls::MakeRustlsConnect,
    shown: String,
    client: Mutex<Option<Session>>,
    /// The host this process claimed: its advisory lock is taken again on every new connection.
    host: std::sync::Mutex<Option<String>>,
}

/// One connection and what is prepared on it.
struct Session {
    client: Client,
    /// The audit append, prepared at its first use on this connection.
    append: Option<Statement>,
}

impl std::ops::Deref for Session {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Session {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// `url` with its password replaced by `***`: in the authority (`user:PASSWORD@`) and in a
/// `password=` parameter.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let main = match main.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or("");
            format!("{name}:***@{host}")
        }
        _ => main.to_string(),
    };
    let query = query.map(|q| {
        q.split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    match query {
        Some(q) => format!("{scheme}://{main}?{q}"),
        None => format!("{scheme}://{main}"),
    }
}

/// Bounds on one request, so that a hung server or a lost network cannot hold the daemon's
/// writers for ever: a statement runs at most 30 s, waits for a lock at most 10 s, a transaction
/// left open is ended after a minute; the connection is probed after 10 s of silence.
const SESSION_OPTIONS: &str =
    "-c statement_timeout=30000 -c lock_timeout=10000 -c idle_in_transaction_session_timeout=60000";

impl Postgres {
    pub async fn open(url: &str, options: &Options) -> Result<Postgres, StateError> {
        let shown = redact(url);
        let tls_error = |why| StateError::Tls {
            location: shown.clone(),
            why,
        };
        let (url, tls) = crate::pg_tls::split(url).map_err(tls_error)?;
        let mut config: tokio_postgres::Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| StateError::Open {
                    location: shown.clone(),
                    why: e.to_string(),
                })?;
        let mut session = config.get_options().unwrap_or("").to_string();
        if !session.is_empty() {
            session.push(' ');
        }
        session.push_str(SESSION_OPTIONS);
        config
            .options(&session)
            .connect_timeout(std::time::Duration::from_secs(10))
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(10))
            .tcp_user_timeout(std::time::Duration::from_secs(30));
        let connector = crate::pg_tls::connector(&tls, &mut config).map_err(tls_error)?;
        let remote = config.get_hosts().iter().any(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => !loopback(name),
            tokio_postgres::config::Host::Unix(_) => false,
        });
        if remote && !tls.mode.verifies() {
            tracing::warn!(
                "{shown}: the server is not authenticated (sslmode={}): a host on the path \
                 could read and change what the daemon records; use sslmode=verify-full with \
                 sslrootcert",
                tls.mode.name()
            );
        }
        let db = Postgres {
            config,
            tls,
            connector,
            shown,
            client: Mutex::new(None),
            host: std::sync::Mutex::new(None),
        };
        {
            let mut guard = db.client().await?;
            let client = guard.as_mut().expect("connected");
            let r = migrate(client, &db.shown, options.read_only).await;
            db.settle(&mut guard, r)?;
        }
        Ok(db)
    }

    async fn connect(&self) -> Result<Client, StateError> {
        let connecting = self.config.connect(self.connector.clone());
        let (client, connection) =
            match tokio::time::timeout(std::time::Duration::from_secs(10), connecting).await {
                Ok(r) => r.map_err(|e| self.error(e))?,
                Err(_) => {
                    return Err(StateError::Unavailable {
                        location: self.shown.clone(),
                        why: "no answer within 10 s".into(),
                    })
                }
            };
        let shown = self.shown.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("{shown}: connection lost: {e}");
            }
        });
        let host = self.host.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(host) = host {
            self.lock_host(&client, &host).await?;
        }
        Ok(client)
    }

    /// Takes the session's advisory lock of `host`; refused when another session holds it.
    async fn lock_host(&self, client: &Client, host: &str) -> Result<(), StateError> {
        let key = format!("stockade host {host}");
        let taken: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(('x' || substr(md5($1), 1, 16))::bit(64)::bigint)",
                &[&key],
            )
            .await
            .map_err(|e| self.error(e))?
            .get(0);
        if !taken {
            return Err(StateError::HostTaken {
                location: self.shown.clone(),
                host: host.to_string(),
            });
        }
        Ok(())
    }

    /// The connection, made again when the last one was lost.
    async fn client(&self) -> Result<MutexGuard<'_, Option<Session>>, StateError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|s| s.is_closed()) {
            *guard = Some(Session {
                client: self.connect().await?,
                append: None,
            });
        }
        Ok(guard)
    }

    /// One statement's rows, each mapped by `f`.
    async fn rows<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        f: impl Fn(&Row) -> T + Send,
    ) -> Result<Vec<T>, StateError> {
        let mut g = self.client().await?;
        let c = g.as_mut().expect("connected");
        let r = c
            .query(sql, params)
            .await
            .map(|rows| rows.iter().map(&f).collect())
            .map_err(Fail::Pg);
        self.settle(&mut g, r)
    }

    /// One statement, for what it does.
    async fn exec(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<(), StateError> {
        let mut g = self.client().await?;
        let c = g.as_mut().expect("connected");
        let r = c.execute(sql, params).await.map(drop).map_err(Fail::Pg);
        self.settle(&mut g, r)
    }

    /// `r` as a state error; a connection that broke is dropped (the next request connects).
    fn settle<T>(
        &self,
        guard: &mut MutexGuard<'_, Option<Session>>,
        r: Result<T, Fail>,
    ) -> Result<T, StateError> {
        if guard.as_ref().is_some_and(|s| s.is_closed()) {
            **guard = None;
        }
        r.map_err(|f| match f {
            Fail::Pg(e) => self.error(e),
            Fail::State(s) => s,
        })
    }

    fn error(&self, e: tokio_postgres::Error) -> StateError {
        let location = self.shown.clone();
        let why = match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => {
                let mut why = e.to_string();
                if let Some(source) = std::error::Error::source(&e) {
                    why = format!("{why}: {source}");
                }
                why
            }
        };
        if tls_failure(&e) {
            return StateError::Tls { location, why };
        }
        match e.code() {
            Some(c) if *c == SqlState::INVALID_CATALOG_NAME => StateError::Missing { location },
            Some(c)
                if *c == SqlState::INVALID_PASSWORD
                    || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
            {
                StateError::Auth { location, why }
            }
            Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
                StateError::Denied { location, why }
            }
            // Data exceptions and integrity violations: the same request would fail again.
            Some(c) if c.code().starts_with("22") || c.code().starts_with("23") => {
                StateError::Corrupt { location, why }
            }
            Some(c) if *c == SqlState::DISK_FULL || *c == SqlState::OUT_OF_MEMORY => {
                StateError::Full { location, why }
            }
            Some(c)
                if *c == SqlState::UNDEFINED_TABLE
                    || *c == SqlState::UNDEFINED_COLUMN
                    || *c == SqlState::DATATYPE_MISMATCH =>
            {
                StateError::Corrupt { location, why }
            }
            _ => StateError::Unavailable { location, why },
        }
    }
}

/// Whether a name is this host (no one on a network path to see the connection).
fn loopback(name: &str) -> bool {
    name == "localhost"
        || name
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `e` is the TLS handshake failing (a certificate refused, a server without TLS).
fn tls_failure(e: &tokio_postgres::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                return true;
            }
        }
        source = s.source();
    }
    // tokio-postgres's words for its TLS step (a server that has no TLS, with `require`).
    e.to_string().starts_with("error performing TLS handshake")
}

/// An error inside a request: the server's, or one of ours.
enum Fail {
    Pg(tokio_postgres::Error),
    State(StateError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

/// A lock number for migrations: two daemons starting at once migrate one after the other.
const MIGRATION_LOCK: i64 = 0x5354_4b44_0001;

async fn migrate(c: &mut Client, location: &str, read_only: bool) -> Result<i64, Fail> {
    if read_only {
        let has: Option<String> = c
            .query_one("SELECT to_regclass('stockade_schema')::text", &[])
            .await?
            .get(0);
        let found: i64 = match has {
            Some(_) => c
                .query_one(
                    "SELECT COALESCE(MAX(version), 0)::BIGINT FROM stockade_schema",
                    &[],
                )
                .await?
                .get(0),
            None => 0,
        };
        return crate::sqlite::check_version(location, found, true).map_err(Fail::State);
    }
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(SCHEMA_TABLE).await?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM stockade_schema",
            &[],
        )
        .await?
        .get(0);
    crate::sqlite::check_version(location, found, false).map_err(Fail::State)?;
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        tx.batch_execute(m.sql).await?;
        tx.execute(
            "INSERT INTO stockade_schema (version, description, applied_ms) VALUES ($1, $2, $3)",
            &[&m.version, &m.description, &crate::now_ms()],
        )
        .await?;
        tracing::info!(
            version = m.version,
            "{location}: schema migrated: {}",
            m.description
        );
    }
    tx.commit().await?;
    Ok(latest())
}

/// An audit append: moves the chain's head ($11..$14) and inserts the batch ($1..$10, one array
/// per column) in one statement.
static APPEND: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH moved AS (
             UPDATE audit_chains SET head_seq = $11, head_hash = $12
             WHERE chain = $13 AND head_seq = $14 RETURNING chain)
         INSERT INTO audit ({ENTRY_COLUMNS})
         SELECT u.* FROM moved, UNNEST(
             $1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[],
             $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[]) AS u"
    )
});

const ENTRY_COLUMNS: &str =
    "chain, seq, at_ms, kind, plugin, actor, request_id, detail, prev, hash";

async fn put_mark(
    c: &impl GenericClient,
    host: &str,
    plugin: &str,
    m: &Mark,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "INSERT INTO trust_marks (host, plugin, version, sequence, digest, signer, accepted_s)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (host, plugin) DO UPDATE SET version = excluded.version,
         sequence = excluded.sequence, digest = excluded.digest, signer = excluded.signer,
         accepted_s = excluded.accepted_s",
        &[
            &host,
            &plugin,
            &m.version,
            &(m.sequence as i64),
            &m.digest,
            &m.key,
            &(m.at as i64),
        ],
    )
    .await
    .map(drop)
}

/// Adds a rotation unless the host has it.
async fn put_rotation(
    c: &impl GenericClient,
    host: &str,
    text: &str,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "INSERT INTO trust_rotations (host, n, text)
         SELECT $1, (SELECT COALESCE(MAX(n), 0) + 1 FROM trust_rotations WHERE host = $1), $2
         WHERE NOT EXISTS (SELECT 1 FROM trust_rotations WHERE host = $1 AND text = $2)",
        &[&host, &text],
    )
    .await
    .map(drop)
}

fn entry_from(r: &Row) -> Entry {
    Entry {
        chain: r.get(0),
        seq: r.get(1),
        record: Record {
            at_ms: r.get(2),
            kind: r.get(3),
            plugin: r.get(4),
            actor: r.get(5),
            request_id: r.get(6),
            detail: r.get(7),
        },
        prev: r.get(8),
        hash: r.get(9),
    }
}

fn head_from(r: &Row) -> ChainHead {
    ChainHead {
        chain: r.get(0),
        base_seq: r.get(1),
        base_hash: r.get(2),
        head_seq: r.get(3),
        head_hash: r.get(4),
    }
}

#[async_trait]
impl Storage for Postgres {
    fn location(&self) -> String {
        self.shown.clone()
    }

    async fn transport(&self) -> Result<String, StateError> {
        let found = self
            .rows(
                "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
                &[],
                |r| r.get::<_, String>(0),
            )
            .await?;
        Ok(match found.first() {
            None => "unencrypted".into(),
            Some(version) => {
                let checked = match self.tls.mode {
                    crate::pg_tls::Mode::VerifyFull => "the server's certificate and name verified",
                    crate::pg_tls::Mode::VerifyCa => {
                        "the server's certificate verified, not its name"
                    }
                    _ => "the server not authenticated",
                };
                format!("{version}, {checked} (sslmode={})", self.tls.mode.name())
            }
        })
    }

    async fn schema_version(&self) -> Result<i64, StateError> {
        let found = self
            .rows(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM stockade_schema",
                &[],
                |r| r.get(0),
            )
            .await?;
        Ok(found.first().copied().unwrap_or(0))
    }

    async fn open_chain(&self, chain: &str) -> Result<ChainHead, StateError> {
        let g = genesis(chain);
        self.exec(
            "INSERT INTO audit_chains (chain, base_seq, base_hash, head_seq, head_hash)
             VALUES ($1, 0, $2, 0, $2) ON CONFLICT (chain) DO NOTHING",
            &[&chain, &g],
        )
        .await?;
        let heads = self
            .rows(
                "SELECT chain, base_seq, base_hash, head_seq, head_hash FROM audit_chains WHERE chain = $1",
                &[&chain],
                head_from,
            )
            .await?;
        heads.into_iter().next().ok_or_else(|| StateError::Corrupt {
            location: self.shown.clone(),
            why: format!("the audit chain `{chain}` vanished"),
        })
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
        let shown = self.shown.clone();
        let mut g = self.client().await?;
        let c = g.as_mut().expect("connected");
        let r = async {
            // One statement, so one round trip and its own transaction: the chain's head moves
            // from `head_seq` to the batch's last record, and the batch is inserted only when it
            // did (another writer that moved it first leaves nothing inserted). The columns go as
            // arrays, unnested server-side.
            let statement = match &c.append {
                Some(s) => s.clone(),
                None => {
                    let s = c.client.prepare(&APPEND).await?;
                    c.append = Some(s.clone());
                    s
                }
            };
            let mut cols: (
                Vec<&str>,
                Vec<i64>,
                Vec<i64>,
                Vec<&str>,
                Vec<Option<&str>>,
                Vec<Option<i64>>,
                Vec<Option<&str>>,
                Vec<&str>,
                Vec<&str>,
                Vec<&str>,
            ) = Default::default();
            for e in entries.iter() {
                cols.0.push(&e.chain);
                cols.1.push(e.seq);
                cols.2.push(e.record.at_ms);
                cols.3.push(&e.record.kind);
                cols.4.push(e.record.plugin.as_deref());
                cols.5.push(e.record.actor);
                cols.6.push(e.record.request_id.as_deref());
                cols.7.push(&e.record.detail);
                cols.8.push(&e.prev);
                cols.9.push(&e.hash);
            }
            let inserted = c
                .client
                .execute(
                    &statement,
                    &[
                        &cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &cols.5, &cols.6, &cols.7,
                        &cols.8, &cols.9, &last.seq, &last.hash, &chain, &head_seq,
                    ],
                )
                .await?;
            if inserted as usize != entries.len() {
                let found = c
                    .client
                    .query_opt(
                        "SELECT head_seq FROM audit_chains WHERE chain = $1",
                        &[&chain],
                    )
                    .await?
                    .map_or(-1, |r| r.get::<_, i64>(0));
                return Err(Fail::State(StateError::ChainTaken {
                    location: shown,
                    chain: chain.to_string(),
                    expected: head_seq,
                    found,
                }));
            }
            Ok(())
        }
        .await;
        self.settle(&mut g, r)
    }

    async fn chains(&self) -> Result<Vec<ChainHead>, StateError> {
        self.rows(
            "SELECT chain, base_seq, base_hash, head_seq, head_hash FROM audit_chains ORDER BY chain",
            &[],
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
        self.rows(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM audit WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ),
            &[&chain, &after_seq, &i64::from(limit)],
            entry_from,
        )
        .await
    }

    async fn query(&self, f: &Filter) -> Result<Vec<Entry>, StateError> {
        self.rows(
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM audit
                 WHERE ($1::TEXT IS NULL OR plugin = $1) AND ($2::TEXT IS NULL OR kind = $2)
                   AND ($3::TEXT IS NULL OR chain = $3) AND ($4::BIGINT IS NULL OR at_ms >= $4)
                 ORDER BY at_ms, chain, seq LIMIT $5"
            ),
            &[
                &f.plugin,
                &f.kind,
                &f.chain,
                &f.since_ms,
                &i64::from(f.limit),
            ],
            entry_from,
        )
        .await
    }

    async fn last_before(&self, chain: &str, before_ms: i64) -> Result<Option<i64>, StateError> {
        let found = self
            .rows(
                "SELECT MAX(seq) FROM audit WHERE chain = $1 AND at_ms < $2",
                &[&chain, &before_ms],
                |r| r.get::<_, Option<i64>>(0),
            )
            .await?;
        Ok(found.into_iter().next().flatten())
    }

    async fn cut(&self, chain: &str, upto_seq: i64) -> Result<(), StateError> {
        let shown = self.shown.clone();
        let mut g = self.client().await?;
        let c = g.as_mut().expect("connected");
        let r = async {
            let tx = c.transaction().await?;
            // The chain's row locked first: an append waits, and the base cannot pass the head.
            let hash: Option<String> = tx
                .query_opt(
                    "SELECT a.hash FROM audit_chains h JOIN audit a ON a.chain = h.chain
                     WHERE h.chain = $1 AND a.seq = $2 AND a.seq > h.base_seq AND a.seq <= h.head_seq
                     FOR UPDATE OF h",
                    &[&chain, &upto_seq],
                )
                .await?
                .map(|r| r.get(0));
            let Some(hash) = hash else {
                return Err(Fail::State(StateError::Corrupt {
                    location: shown,
                    why: format!("no record {upto_seq} in chain `{chain}` to cut at"),
                }));
            };
            tx.execute(
                "DELETE FROM audit WHERE chain = $1 AND seq <= $2",
                &[&chain, &upto_seq],
            )
            .await?;
            tx.execute(
                "UPDATE audit_chains SET base_seq = $1, base_hash = $2 WHERE chain = $3",
                &[&upto_seq, &hash, &chain],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        self.settle(&mut g, r)
    }

    async fn register_host(&self, h: &HostRow) -> Result<(), StateError> {
        self.exec(
            "INSERT INTO hosts (host, pid, started_ms, stockade_version) VALUES ($1, $2, $3, $4)
             ON CONFLICT (host) DO UPDATE SET pid = excluded.pid, started_ms = excluded.started_ms,
             stockade_version = excluded.stockade_version",
            &[&h.host, &h.pid, &h.started_ms, &h.stockade_version],
        )
        .await
    }

    async fn hosts(&self) -> Result<Vec<HostRow>, StateError> {
        self.rows(
            "SELECT host, pid, started_ms, stockade_version FROM hosts ORDER BY host",
            &[],
            |r| HostRow {
                host: r.get(0),
                pid: r.get(1),
                started_ms: r.get(2),
                stockade_version: r.get(3),
            },
        )
        .await
    }

    async fn commit_version(&self, k: &Commit) -> Result<(), StateError> {
        let mut g = self.client().await?;
        let c = g.as_mut().expect("connected");
        let r = async {
            let tx = c.transaction().await?;
            let (p, v) = (&k.plugin, &k.version);
            tx.execute(
                "INSERT INTO plugins (id, name, trust, config, first_seen_ms, updated_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, trust = excluded.trust,
                 config = excluded.config, updated_ms = excluded.updated_ms",
                &[&p.id, &p.name, &p.trust, &p.config, &p.first_seen_ms, &p.updated_ms],
            )
            .await?;
            tx.execute(
                "INSERT INTO plugin_versions (plugin, version, digest, entry_sha3_512, signer, sequence,
                 published_s, installed_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (plugin, version, digest) DO NOTHING",
                &[
                    &v.plugin,
                    &v.version,
                    &v.digest,
                    &v.entry_sha3_512,
                    &v.signer,
                    &v.sequence,
                    &v.published_s,
                    &v.installed_ms,
                ],
            )
            .await?;
            tx.execute(
                "INSERT INTO plugin_capabilities (plugin, version, digest, explain) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (plugin, version, digest) DO NOTHING",
                &[&v.plugin, &v.version, &v.digest, &v.capabilities],
            )
            .await?;
            tx.execute(
                "INSERT INTO installations (host, plugin, version, state, reason, updated_ms)
                 VALUES ($1, $2, $3, $4, NULL, $5)
                 ON CONFLICT (host, plugin) DO UPDATE SET version = excluded.version,
                 state = excluded.state, reason = NULL, updated_ms = excluded.updated_ms",
                &[&k.host, &v.plugin, &v.version, &k.state, &v.installed_ms],
            )
            .await?;
            put_mark(&tx, &k.host, &v.plugin, &k.mark).await?;
            if let Some(text) = &k.rotation {
                put_rotation(&tx, &k.host, text).await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        self.settle(&mut g, r)
    }

    async fn plugins(&self) -> Result<Vec<PluginRow>, StateError> {
        self.rows(
            "SELECT id, name, trust, config, first_seen_ms, updated_ms FROM plugins ORDER BY id",
            &[],
            |r| PluginRow {
                id: r.get(0),
                name: r.get(1),
                trust: r.get(2),
                config: r.get(3),
                first_seen_ms: r.get(4),
                updated_ms: r.get(5),
            },
        )
        .await
    }

    async fn versions(&self, plugin: &str) -> Result<Vec<VersionRow>, StateError> {
        self.rows(
            "SELECT v.plugin, v.version, v.digest, v.entry_sha3_512, v.signer, v.sequence,
             v.published_s, v.installed_ms, COALESCE(c.explain, '')
             FROM plugin_versions v LEFT JOIN plugin_capabilities c
             ON c.plugin = v.plugin AND c.version = v.version AND c.digest = v.digest
             WHERE v.plugin = $1 ORDER BY v.installed_ms",
            &[&plugin],
            |r| VersionRow {
                plugin: r.get(0),
                version: r.get(1),
                digest: r.get(2),
                entry_sha3_512: r.get(3),
                signer: r.get(4),
                sequence: r.get(5),
                published_s: r.get(6),
                installed_ms: r.get(7),
                capabilities: r.get(8),
            },
        )
        .await
    }

    async fn set_installation(&self, i: &Installation) -> Result<(), StateError> {
        self.exec(
            "UPDATE installations SET state = $1, reason = $2, updated_ms = $3
             WHERE host = $4 AND plugin = $5 AND version = $6",
            &[
                &i.state,
                &i.reason,
                &i.updated_ms,
                &i.host,
                &i.plugin,
                &i.version,
            ],
        )
        .await
    }

    async fn installations(&self) -> Result<Vec<Installation>, StateError> {
        self.rows(
            "SELECT host, plugin, version, state, reason, updated_ms FROM installations
             ORDER BY host, plugin",
            &[],
            |r| Installation {
                host: r.get(0),
                plugin: r.get(1),
                version: r.get(2),
                state: r.get(3),
                reason: r.get(4),
                updated_ms: r.get(5),
            },
        )
        .await
    }

    async fn trust_state(&self, host: &str) -> Result<TrustState, StateError> {
        let mut g = self.client().await?;
        let c = g.as_mut().expect("connected");
        let r = async {
            let mut state = TrustState::default();
            for r in c
                .query(
                    "SELECT plugin, version, sequence, digest, signer, accepted_s FROM trust_marks
                     WHERE host = $1",
                    &[&host],
                )
                .await?
            {
                state.marks.insert(
                    r.get(0),
                    Mark {
                        version: r.get(1),
                        sequence: r.get::<_, i64>(2) as u64,
                        digest: r.get(3),
                        key: r.get(4),
                        at: r.get::<_, i64>(5) as u64,
                    },
                );
            }
            state.rotations = c
                .query(
                    "SELECT text FROM trust_rotations WHERE host = $1 ORDER BY n",
                    &[&host],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if let Some(r) = c
                .query_opt(
                    "SELECT serial, digest FROM trust_lists WHERE host = $1",
                    &[&host],
                )
                .await?
            {
                state.list_serial = r.get::<_, i64>(0) as u64;
                state.list_digest = Some(r.get(1));
            }
            Ok(state)
        }
        .await;
        self.settle(&mut g, r)
    }

    async fn set_mark(&self, host: &str, plugin: &str, m: &Mark) -> Result<(), StateError> {
        let mut g = self.client().await?;
        let c = g.as_mut().expect("connected");
        let r = put_mark(&c.client, host, plugin, m).await.map_err(Fail::Pg);
        self.settle(&mut g, r)
    }

    async fn add_rotation(&self, host: &str, text: &str) -> Result<(), StateError> {
        let mut g = self.client().await?;
        let c = g.as_mut().expect("connected");
        let r = put_rotation(&c.client, host, text).await.map_err(Fail::Pg);
        self.settle(&mut g, r)
    }

    async fn claim_host(&self, host: &str) -> Result<(), StateError> {
        let mut g = self.client().await?;
        let c = g.as_mut().expect("connected");
        self.lock_host(c, host).await?;
        *self.host.lock().unwrap_or_else(|e| e.into_inner()) = Some(host.to_string());
        Ok(())
    }

    async fn set_trust_list(
        &self,
        host: &str,
        serial: u64,
        digest: &str,
    ) -> Result<(), StateError> {
        self.exec(
            "INSERT INTO trust_lists (host, serial, digest) VALUES ($1, $2, $3)
             ON CONFLICT (host) DO UPDATE SET serial = excluded.serial, digest = excluded.digest",
            &[&host, &(serial as i64), &digest],
        )
        .await
    }
}
