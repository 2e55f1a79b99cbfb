//! The schema, as numbered migrations, each one SQL text that SQLite and PostgreSQL both run.
//! A database records the migrations applied to it in `stockade_schema`; at start the missing
//! ones are applied in order, each in its own transaction, and a database whose schema is newer
//! than this binary's is refused (a newer Stockade wrote it). Never edit a migration that has
//! shipped: add the next one.

pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    /// The same text for both: only types both read alike (SQLite gives `BIGINT` integer
    /// affinity) and statements both know.
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "registry, trust state and audit log",
    sql: r#"
CREATE TABLE hosts (
    host TEXT PRIMARY KEY,
    pid BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    stockade_version TEXT NOT NULL
);
CREATE TABLE plugins (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    trust TEXT NOT NULL,
    config TEXT,
    first_seen_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE plugin_versions (
    plugin TEXT NOT NULL REFERENCES plugins(id),
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    entry_sha3_512 TEXT NOT NULL,
    signer TEXT,
    sequence BIGINT NOT NULL,
    published_s BIGINT,
    installed_ms BIGINT NOT NULL,
    PRIMARY KEY (plugin, version, digest)
);
CREATE TABLE plugin_capabilities (
    plugin TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    explain TEXT NOT NULL,
    PRIMARY KEY (plugin, version, digest),
    FOREIGN KEY (plugin, version, digest) REFERENCES plugin_versions(plugin, version, digest)
);
CREATE TABLE installations (
    host TEXT NOT NULL,
    plugin TEXT NOT NULL REFERENCES plugins(id),
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (host, plugin)
);
CREATE TABLE trust_marks (
    host TEXT NOT NULL,
    plugin TEXT NOT NULL,
    version TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    digest TEXT NOT NULL,
    signer TEXT,
    accepted_s BIGINT NOT NULL,
    PRIMARY KEY (host, plugin)
);
CREATE TABLE trust_rotations (
    host TEXT NOT NULL,
    n BIGINT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (host, n)
);
CREATE TABLE trust_lists (
    host TEXT PRIMARY KEY,
    serial BIGINT NOT NULL,
    digest TEXT NOT NULL
);
CREATE TABLE audit_chains (
    chain TEXT PRIMARY KEY,
    base_seq BIGINT NOT NULL,
    base_hash TEXT NOT NULL,
    head_seq BIGINT NOT NULL,
    head_hash TEXT NOT NULL
);
CREATE TABLE audit (
    chain TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    plugin TEXT,
    actor BIGINT,
    request_id TEXT,
    detail TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX audit_by_plugin ON audit (plugin, at_ms);
CREATE INDEX audit_by_time ON audit (at_ms);
"#,
}];

/// The schema version this binary writes.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The bookkeeping table, the same in both dialects.
pub const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS stockade_schema (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    applied_ms BIGINT NOT NULL
)";
