//! The audit log's hash chain. Each record carries its chain's name, its number (one more than
//! the record before it), its contents, the hash of the record before it and its own hash:
//! SHA3-256 over a domain string and each of those fields, length-prefixed. Editing a record
//! breaks its own hash; deleting one leaves a gap in the numbers; reordering or replacing one
//! breaks the next record's link; cutting the tail leaves the chain's head (kept beside the
//! records) pointing past the end. Each host writes a chain of its own (named by its host id),
//! so the daemons of a fleet never wait for each other's appends.

use serde::Serialize;
use sha3::{Digest, Sha3_256};
use stockade_trust::hex;

use crate::{ChainHead, StateError, Storage};

/// What is recorded: the contents of one audit record, before it is chained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Milliseconds since the epoch.
    pub at_ms: i64,
    /// `daemon`, `lifecycle`, `load`, `unload`, `upgrade`, `reload`, `call`, `violation`,
    /// `auto-unload`, `trust`, `audit`.
    pub kind: String,
    pub plugin: Option<String>,
    /// The uid that asked (the control socket's peer), when someone did.
    pub actor: Option<i64>,
    pub request_id: Option<String>,
    /// The rest, a JSON object, kept as the exact text that was hashed.
    pub detail: String,
}

impl Record {
    pub fn new(kind: &str, plugin: Option<&str>, detail: &serde_json::Value) -> Record {
        Record {
            at_ms: crate::now_ms(),
            kind: kind.to_string(),
            plugin: plugin.map(str::to_string),
            actor: None,
            request_id: None,
            detail: detail.to_string(),
        }
    }

    pub fn by(mut self, actor: Option<u32>) -> Record {
        self.actor = actor.map(i64::from);
        self
    }

    pub fn request(mut self, id: &str) -> Record {
        self.request_id = Some(id.to_string());
        self
    }
}

/// A record in its chain, as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub chain: String,
    pub seq: i64,
    #[serde(flatten)]
    pub record: Record,
    /// The previous record's hash (the chain's base hash for the first).
    pub prev: String,
    pub hash: String,
}

impl Entry {
    /// Chains `record` after `(seq - 1, prev)`.
    pub fn seal(chain: &str, seq: i64, prev: &str, record: Record) -> Entry {
        let hash = hash(chain, seq, &record, prev);
        Entry {
            chain: chain.to_string(),
            seq,
            record,
            prev: prev.to_string(),
            hash,
        }
    }

    /// Whether the stored hash is the hash of the stored contents.
    pub fn holds(&self) -> bool {
        hash(&self.chain, self.seq, &self.record, &self.prev) == self.hash
    }
}

/// The hash a chain starts from: its name's, so that no chain's records pass for another's.
pub fn genesis(chain: &str) -> String {
    let mut h = Sha3_256::new();
    h.update(b"stockade audit genesis v1\0");
    h.update(chain.as_bytes());
    hex::encode(&h.finalize())
}

fn hash(chain: &str, seq: i64, r: &Record, prev: &str) -> String {
    let mut h = Sha3_256::new();
    h.update(b"stockade audit record v1\0");
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    let optional = |v: &Option<String>| v.as_ref().map(|s| format!("+{s}")).unwrap_or_default();
    field(chain.as_bytes());
    field(&seq.to_be_bytes());
    field(&r.at_ms.to_be_bytes());
    field(r.kind.as_bytes());
    field(optional(&r.plugin).as_bytes());
    field(optional(&r.actor.map(|a| a.to_string())).as_bytes());
    field(optional(&r.request_id).as_bytes());
    field(r.detail.as_bytes());
    field(prev.as_bytes());
    hex::encode(&h.finalize())
}

/// What `audit verify` found in one chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub chain: String,
    /// Records checked.
    pub records: i64,
    pub base_seq: i64,
    pub head_seq: i64,
    /// The first break, if any.
    pub broken: Option<Break>,
}

/// Where and how a chain breaks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Break {
    /// The record number at which the chain stops holding.
    pub seq: i64,
    /// `edited`, `missing`, `relinked`, `truncated`, `extra`.
    pub kind: &'static str,
    pub why: String,
}

/// Records read per round trip while verifying.
const PAGE: u32 = 2000;

/// Walks `head`'s chain from its base and checks every record: its number, its link to the one
/// before, its own hash; then that the last one is the head.
pub async fn verify(storage: &dyn Storage, head: &ChainHead) -> Result<Verdict, StateError> {
    let mut verdict = Verdict {
        chain: head.chain.clone(),
        records: 0,
        base_seq: head.base_seq,
        head_seq: head.head_seq,
        broken: None,
    };
    let (mut seq, mut prev) = (head.base_seq, head.base_hash.clone());
    let broken = |seq: i64, kind, why: String| Some(Break { seq, kind, why });
    'pages: loop {
        let page = storage.entries(&head.chain, seq, PAGE).await?;
        let last_page = (page.len() as u32) < PAGE;
        for e in page {
            if e.seq != seq + 1 {
                verdict.broken = broken(
                    seq + 1,
                    "missing",
                    if e.seq > seq + 1 {
                        format!(
                            "record {} is missing (deleted?): the next one is {}",
                            seq + 1,
                            e.seq
                        )
                    } else {
                        format!("record {} appears twice", e.seq)
                    },
                );
                break 'pages;
            }
            if !e.holds() {
                verdict.broken = broken(
                    e.seq,
                    "edited",
                    format!(
                        "record {}'s contents do not match its hash (edited after it was written)",
                        e.seq
                    ),
                );
                break 'pages;
            }
            if e.prev != prev {
                verdict.broken = broken(
                    e.seq,
                    "relinked",
                    format!(
                        "record {} does not follow record {} (reordered, replaced or inserted)",
                        e.seq, seq
                    ),
                );
                break 'pages;
            }
            verdict.records += 1;
            seq = e.seq;
            prev = e.hash;
        }
        if last_page {
            break;
        }
    }
    if verdict.broken.is_none() {
        if seq < head.head_seq {
            verdict.broken = broken(
                seq + 1,
                "truncated",
                format!(
                    "the chain ends at record {seq} but its head says {} (records removed from the end)",
                    head.head_seq
                ),
            );
        } else if seq > head.head_seq || prev != head.head_hash {
            verdict.broken = broken(
                head.head_seq,
                "extra",
                format!(
                    "the chain's head says record {} but the records go on to {seq} (written around the daemon)",
                    head.head_seq
                ),
            );
        }
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: i64) -> Record {
        Record {
            at_ms: 1_700_000_000_000 + n,
            kind: "call".into(),
            plugin: Some("echo".into()),
            actor: None,
            request_id: Some(format!("r{n}")),
            detail: format!(r#"{{"n":{n}}}"#),
        }
    }

    #[test]
    fn a_record_holds_only_with_its_own_contents() {
        let g = genesis("h1");
        assert_ne!(g, genesis("h2"), "chains start apart");
        let e = Entry::seal("h1", 1, &g, record(1));
        assert!(e.holds());
        let mut edited = e.clone();
        edited.record.detail = r#"{"n":2}"#.into();
        assert!(!edited.holds());
        let mut moved = e.clone();
        moved.seq = 2;
        assert!(!moved.holds(), "the number is hashed");
        let mut other = e.clone();
        other.chain = "h2".into();
        assert!(!other.holds(), "the chain is hashed");
        // None and Some("") differ.
        let mut r = record(1);
        r.plugin = None;
        let mut s = record(1);
        s.plugin = Some(String::new());
        assert_ne!(
            Entry::seal("h1", 1, &g, r).hash,
            Entry::seal("h1", 1, &g, s).hash
        );
    }
}
