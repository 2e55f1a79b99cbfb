//! Retention: a chain's oldest records removed past an age or a count, exported first. The
//! records to be removed are written, as stored (hashes included), to a JSON-lines file
//! `<export dir>/<chain>-<first>-<last>.jsonl`, synced, and only then removed in one
//! transaction that moves the chain's base to the last of them. The chain still verifies from
//! its new base, and the export verifies on its own ([`verify_export`]) and joins the chain: its
//! last record's hash is the base the database kept.

use std::io::{BufRead, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::audit::{AuditError, AuditLog};
use crate::chain::{genesis, Break, Entry, Record};
use crate::{StateError, Storage};

/// How much of a chain is kept: records younger than `max_age`, and at most `max_records`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub max_age: Option<Duration>,
    pub max_records: Option<u64>,
}

impl Policy {
    pub fn is_set(&self) -> bool {
        self.max_age.is_some() || self.max_records.is_some()
    }
}

/// One cut: the records `from..=to` of `chain`, now in `file` and no longer in the database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cut {
    pub chain: String,
    pub from: i64,
    pub to: i64,
    pub file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("audit export {}: {source}", path.display())]
    Export {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the cut could not be recorded: {0}")]
    Audit(AuditError),
}

impl RetentionError {
    pub fn hint(&self) -> &'static str {
        match self {
            RetentionError::Export { .. } => {
                "nothing was removed: make the export directory writable (and give it room)"
            }
            RetentionError::State(e) => e.hint(),
            RetentionError::Audit(e) => e.hint(),
        }
    }
}

/// Records read per round trip while exporting.
const PAGE: u32 = 2000;

/// Applies `policy` to `log`'s chain: exports the records past it to `export_dir`, records the
/// cut in the chain (committed: `audit verify` accepts a base only a retention record accounts
/// for), then removes them. `None` when nothing is past it. The count bound has a tenth of
/// slack, so that the cut's own record does not cause the next cut.
pub async fn apply(
    storage: &dyn Storage,
    log: &AuditLog,
    policy: &Policy,
    export_dir: &Path,
) -> Result<Option<Cut>, RetentionError> {
    let chain = log.chain();
    let head = storage.open_chain(chain).await?;
    let mut upto = head.base_seq;
    if let Some(age) = policy.max_age {
        let before = crate::now_ms() - age.as_millis() as i64;
        if let Some(seq) = storage.last_before(chain, before).await? {
            upto = upto.max(seq);
        }
    }
    if let Some(n) = policy.max_records {
        let (n, count) = (n as i64, head.head_seq - head.base_seq);
        if count > n + n / 10 {
            upto = upto.max(head.head_seq - n);
        }
    }
    let upto = upto.min(head.head_seq);
    if upto <= head.base_seq {
        return Ok(None);
    }
    let from = head.base_seq + 1;
    let file = export_dir.join(format!("{chain}-{from:012}-{upto:012}.jsonl"));
    let export = |source| RetentionError::Export {
        path: file.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(export_dir)
        .map_err(export)?;
    let partial = file.with_extension("partial");
    let mut out = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .map_err(export)?,
    );
    let mut seq = head.base_seq;
    while seq < upto {
        let page = storage
            .entries(chain, seq, PAGE.min((upto - seq) as u32))
            .await?;
        let Some(last) = page.last() else {
            break;
        };
        seq = last.seq;
        for e in &page {
            serde_json::to_writer(&mut out, e).map_err(|e| export(e.into()))?;
            out.write_all(b"\n").map_err(export)?;
        }
    }
    let f = out.into_inner().map_err(|e| export(e.into_error()))?;
    f.sync_all().map_err(export)?;
    drop(f);
    std::fs::rename(&partial, &file).map_err(export)?;
    std::fs::File::open(export_dir)
        .and_then(|d| d.sync_all())
        .map_err(export)?;
    // Removed only once the export is on disk and the cut is in the chain.
    let detail = serde_json::json!({
        "event": "retention",
        "from": from,
        "to": upto,
        "file": file,
    });
    log.record(Record::new("audit", None, &detail), Duration::from_secs(30))
        .await
        .map_err(RetentionError::Audit)?;
    storage.cut(chain, upto).await?;
    Ok(Some(Cut {
        chain: chain.to_string(),
        from,
        to: upto,
        file,
    }))
}

/// What an export file holds, checked on its own.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportVerdict {
    pub file: PathBuf,
    pub chain: String,
    pub from: i64,
    pub to: i64,
    pub records: i64,
    /// The first record's previous hash, and the last record's hash: where it joins the records
    /// before it (the genesis, or an earlier export) and after it (the database's base).
    pub joins_after: String,
    pub last_hash: String,
    pub broken: Option<Break>,
}

/// Checks an export: every record's hash, the numbers consecutive, each linked to the one
/// before; a file starting at record 1 starts from its chain's genesis.
pub fn verify_export(path: &Path) -> std::io::Result<ExportVerdict> {
    let reader = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut v = ExportVerdict {
        file: path.to_path_buf(),
        chain: String::new(),
        from: 0,
        to: 0,
        records: 0,
        joins_after: String::new(),
        last_hash: String::new(),
        broken: None,
    };
    let broken = |seq, kind, why: String| Some(Break { seq, kind, why });
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        let e: Entry = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(err) => {
                v.broken = broken(
                    v.to + 1,
                    "edited",
                    format!("line {}: not a record: {err}", n + 1),
                );
                break;
            }
        };
        if n == 0 {
            v.chain = e.chain.clone();
            v.from = e.seq;
            v.joins_after = e.prev.clone();
            if e.seq == 1 && e.prev != genesis(&e.chain) {
                v.broken = broken(
                    1,
                    "relinked",
                    "record 1 does not start from its chain's genesis".into(),
                );
                break;
            }
        } else if e.chain != v.chain || e.seq != v.to + 1 {
            v.broken = broken(
                v.to + 1,
                "missing",
                format!(
                    "record {} is missing: the next one is {} of chain {}",
                    v.to + 1,
                    e.seq,
                    e.chain
                ),
            );
            break;
        } else if e.prev != v.last_hash {
            v.broken = broken(
                e.seq,
                "relinked",
                format!("record {} does not follow record {}", e.seq, v.to),
            );
            break;
        }
        if !e.holds() {
            v.broken = broken(
                e.seq,
                "edited",
                format!("record {}'s contents do not match its hash", e.seq),
            );
            break;
        }
        v.records += 1;
        v.to = e.seq;
        v.last_hash = e.hash;
    }
    Ok(v)
}
