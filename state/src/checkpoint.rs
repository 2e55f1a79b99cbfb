//! Signed checkpoints of the audit chain's head, kept outside the database. The chain alone
//! cannot show a rewrite done by someone who can write the database: records changed from some
//! point to the head, every hash recomputed, the head moved to match (or the tail cut and the
//! head moved back). So the daemon signs its chain's head — `(chain, seq, hash, time)`, Ed25519
//! with a key of its own host — every few seconds while records arrive and when it stops, and
//! appends the signature to a file in its state directory (`audit/checkpoints.jsonl`, one JSON
//! object a line, synced). `stockade audit verify` checks the last checkpoint of each chain:
//! its signature, and that the database still holds the signed record with the signed hash.
//! Each record's hash covers every record before it, so the last checkpoint vouches for the
//! whole chain up to it; a rewrite after it is not seen (the window is the interval).
//!
//! What it defends: a database shared by a fleet (or its backups) in hands other than the
//! daemon host's. Whoever is root on the daemon's host can read its key; an operator who wants
//! more keeps a copy of the public key (`audit/checkpoint.pub`) elsewhere and passes it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_512};
use stockade_trust::hex;
use stockade_trust::key::{PublicKey, SecretKey};

use crate::{ChainHead, StateError, Storage};

/// What a checkpoint's signature covers, apart from its digest: no other signature passes.
const CONTEXT: &[u8] = b"stockade audit checkpoint v1\0";

/// One signed head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub chain: String,
    pub seq: i64,
    pub hash: String,
    pub at_ms: i64,
    /// The signing key's id.
    pub key: String,
    /// Ed25519, hex.
    pub sig: String,
}

fn digest(chain: &str, seq: i64, hash: &str, at_ms: i64) -> [u8; 64] {
    let mut h = Sha3_512::new();
    for field in [
        chain.as_bytes(),
        &seq.to_be_bytes(),
        hash.as_bytes(),
        &at_ms.to_be_bytes(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    h.finalize().into()
}

impl Checkpoint {
    pub fn sign(key: &SecretKey, chain: &str, seq: i64, hash: &str, at_ms: i64) -> Checkpoint {
        let sig = key.sign(CONTEXT, &digest(chain, seq, hash, at_ms));
        Checkpoint {
            chain: chain.to_string(),
            seq,
            hash: hash.to_string(),
            at_ms,
            key: key.public().id().to_string(),
            sig: hex::encode(&sig),
        }
    }

    /// Whether `key` signed exactly this.
    pub fn holds(&self, key: &PublicKey) -> bool {
        let Some(sig) = hex::decode(&self.sig).and_then(|s| <[u8; 64]>::try_from(s).ok()) else {
            return false;
        };
        key.verify(
            CONTEXT,
            &digest(&self.chain, self.seq, &self.hash, self.at_ms),
            &sig,
        )
    }
}

/// Where a state directory keeps them.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("audit")
}
pub const FILE: &str = "checkpoints.jsonl";
pub const PUBLIC: &str = "checkpoint.pub";
const SECRET: &str = "checkpoint.key";

/// The daemon's side: its key (made at its first start) and the file it appends to.
pub struct Writer {
    key: SecretKey,
    file: std::fs::File,
    path: PathBuf,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "checkpoint::Writer({})", self.path.display())
    }
}

impl Writer {
    /// Opens `dir` (made 0700 when missing), its key (made when missing: the secret 0600, the
    /// public beside it) and its file.
    pub fn open(dir: &Path) -> Result<Writer, StateError> {
        let fail = |what: &Path, why: String| StateError::Open {
            location: what.display().to_string(),
            why,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(dir, e.to_string()))?;
        let secret = dir.join(SECRET);
        let key = if secret.exists() {
            let key =
                SecretKey::read(&secret, || None).map_err(|e| fail(&secret, e.to_string()))?;
            // The public half is what `audit verify` checks with: made again when removed.
            let public = dir.join(PUBLIC);
            if !public.exists() {
                std::fs::write(&public, key.public().file_text("audit checkpoints"))
                    .map_err(|e| fail(&public, e.to_string()))?;
            }
            key
        } else {
            let key = SecretKey::generate().map_err(|e| fail(&secret, e.to_string()))?;
            let text = key
                .file_text("audit checkpoints", None)
                .map_err(|e| fail(&secret, e.to_string()))?;
            // Written whole under a temporary name, then renamed: a crash leaves no half key.
            let partial = dir.join(format!("{SECRET}.partial"));
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&partial)?;
                f.write_all(text.as_bytes())?;
                f.sync_all()?;
                std::fs::write(
                    dir.join(PUBLIC),
                    key.public().file_text("audit checkpoints"),
                )?;
                std::fs::rename(&partial, &secret)
            };
            write().map_err(|e| fail(&secret, e.to_string()))?;
            key
        };
        let path = dir.join(FILE);
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&path)
            .map_err(|e| fail(&path, e.to_string()))?;
        Ok(Writer { key, file, path })
    }

    /// Signs `(chain, seq, hash)` now and appends it, synced.
    pub fn write(&mut self, chain: &str, seq: i64, hash: &str) -> std::io::Result<Checkpoint> {
        let c = Checkpoint::sign(&self.key, chain, seq, hash, crate::now_ms());
        let mut line = serde_json::to_vec(&c).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        Ok(c)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The last checkpoint of each chain in `path` (a line that is not one is an error: the file
/// was edited, or is not a checkpoint file).
pub fn read_last(path: &Path) -> Result<Vec<Checkpoint>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut last: std::collections::BTreeMap<String, Checkpoint> = Default::default();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let c: Checkpoint = serde_json::from_str(line)
            .map_err(|e| format!("{} line {}: not a checkpoint ({e})", path.display(), n + 1))?;
        last.insert(c.chain.clone(), c);
    }
    Ok(last.into_values().collect())
}

/// What one chain's last checkpoint says about the database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub chain: String,
    pub seq: i64,
    pub at_ms: i64,
    /// `holds`, `before-cut` (retention removed the signed record: nothing to compare),
    /// `forged` (the signature does not hold), `rewritten`, `deleted` (the signed record is gone
    /// from the middle of the chain), `truncated` (from its end), `missing` (no such chain in
    /// the database).
    pub verdict: &'static str,
    pub why: String,
}

impl Finding {
    pub fn broken(&self) -> bool {
        !matches!(self.verdict, "holds" | "before-cut")
    }
}

/// Checks each checkpoint against `key` and the chains in `storage`.
pub async fn check(
    storage: &dyn Storage,
    checkpoints: &[Checkpoint],
    key: &PublicKey,
    heads: &[ChainHead],
) -> Result<Vec<Finding>, StateError> {
    let mut found = Vec::new();
    for c in checkpoints {
        let finding = |verdict, why: String| Finding {
            chain: c.chain.clone(),
            seq: c.seq,
            at_ms: c.at_ms,
            verdict,
            why,
        };
        if !c.holds(key) {
            found.push(finding(
                "forged",
                format!(
                    "the checkpoint of record {} does not hold under key {} (the file was edited, or another key signed it)",
                    c.seq,
                    key.id()
                ),
            ));
            continue;
        }
        let Some(head) = heads.iter().find(|h| h.chain == c.chain) else {
            found.push(finding(
                "missing",
                format!(
                    "the database has no chain `{}`, signed up to record {}",
                    c.chain, c.seq
                ),
            ));
            continue;
        };
        if c.seq <= head.base_seq {
            found.push(finding(
                "before-cut",
                format!(
                    "record {} was removed by retention (the chain starts after {})",
                    c.seq, head.base_seq
                ),
            ));
            continue;
        }
        let entry = storage.entries(&c.chain, c.seq - 1, 1).await?;
        match entry.first() {
            Some(e) if e.seq == c.seq && e.hash == c.hash => found.push(finding(
                "holds",
                format!("record {} is the one signed", c.seq),
            )),
            Some(e) if e.seq == c.seq => found.push(finding(
                "rewritten",
                format!(
                    "record {} is not the record signed at its checkpoint: the chain was rewritten at or before it",
                    c.seq
                ),
            )),
            Some(e) => found.push(finding(
                "deleted",
                format!(
                    "record {} was signed at its checkpoint but is gone from the chain (the next one is {}): records were removed",
                    c.seq, e.seq
                ),
            )),
            None => found.push(finding(
                "truncated",
                format!(
                    "record {} was signed at its checkpoint but the chain ends at {}: records were removed from its end",
                    c.seq, head.head_seq
                ),
            )),
        }
    }
    Ok(found)
}
