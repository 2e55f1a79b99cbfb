//! The audit log's hash chain. Each record carries its chain's name, its number (one more than
//! the record before it), its contents, the hash of the record before it and its own hash:
//! SHA3-256 over a domain string and each of those fields, length-prefixed. Editing a record
//! breaks its own hash; deleting one leaves a gap in the numbers; reordering or replacing one
//! breaks the next record's link; cutting the tail leaves the chain's head (kept beside the
//! records) pointing past the end. Each host writes a chain of its own (named by its host id),
//! so the daemons of a fleet never wait for each other's appends.

use serde::{Deserialize, Serialize};
use sha3::{Digest, Sha3_256};
use stockade_trust::hex;

use crate::{ChainHead, StateError, Storage};

/// What is recorded: the contents of one audit record, before it is chained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// A name as a record keeps it: no NUL (PostgreSQL's text refuses it), at most 256 characters
/// (a caller's unknown plugin id is recorded as given).
fn name(text: &str) -> String {
    if text.len() <= 256 && !text.contains('\0') {
        return text.to_string();
    }
    text.chars()
        .take(256)
        .map(|c| if c == '\0' { '\u{fffd}' } else { c })
        .collect()
}

impl Record {
    /// `detail`: a JSON object (a `serde_json::Value` or a struct serialized as one: a call's
    /// record is built without an intermediate map).
    pub fn new<D: Serialize + ?Sized>(kind: &str, plugin: Option<&str>, detail: &D) -> Record {
        // The detail is JSON text: a NUL in it is written as the escape \u0000. Serializing a
        // map with non-text keys is the one failure, and no caller passes one.
        let detail = serde_json::to_string(detail)
            .unwrap_or_else(|e| serde_json::json!({ "unrecorded": e.to_string() }).to_string());
        Record {
            at_ms: crate::now_ms(),
            kind: name(kind),
            plugin: plugin.map(name),
            actor: None,
            request_id: None,
            detail,
        }
    }

    pub fn by(mut self, actor: Option<u32>) -> Record {
        self.actor = actor.map(i64::from);
        self
    }

    pub fn request(mut self, id: &str) -> Record {
        self.request_id = Some(name(id));
        self
    }
}

/// A record in its chain, as stored (and exported).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    // Each field length-prefixed; an optional one is empty when absent, `+` and its text when
    // present.
    let mut field = |parts: &[&[u8]]| {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        h.update((len as u64).to_be_bytes());
        for p in parts {
            h.update(p);
        }
    };
    let actor = r.actor.map(|a| a.to_string());
    fn optional(v: Option<&str>) -> [&[u8]; 2] {
        match v {
            Some(s) => [b"+", s.as_bytes()],
            None => [b"", b""],
        }
    }
    field(&[chain.as_bytes()]);
    field(&[&seq.to_be_bytes()]);
    field(&[&r.at_ms.to_be_bytes()]);
    field(&[r.kind.as_bytes()]);
    field(&optional(r.plugin.as_deref()));
    field(&optional(actor.as_deref()));
    field(&optional(r.request_id.as_deref()));
    field(&[r.detail.as_bytes()]);
    field(&[prev.as_bytes()]);
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

/// Walks `head`'s chain from its base to its head and checks every record: its number, its link
/// to the one before, its own hash; that the chain starts at its genesis, or at a base that a
/// retention record in the chain accounts for; that the last one is the head. Records appended
/// after `head` was read (a daemon writing meanwhile) are not an error when the chain's head
/// has moved past them.
pub async fn verify(storage: &dyn Storage, head: &ChainHead) -> Result<Verdict, StateError> {
    let mut verdict = Verdict {
        chain: head.chain.clone(),
        records: 0,
        base_seq: head.base_seq,
        head_seq: head.head_seq,
        broken: None,
    };
    let broken = |seq: i64, kind, why: String| Some(Break { seq, kind, why });
    if head.base_seq == 0 && head.base_hash != genesis(&head.chain) {
        verdict.broken = broken(
            1,
            "rebased",
            "the chain does not start from its genesis (its base was rewritten)".into(),
        );
        return Ok(verdict);
    }
    let (mut seq, mut prev) = (head.base_seq, head.base_hash.clone());
    // A base past the genesis must be a retention cut's, recorded in the chain.
    let mut cut_recorded = head.base_seq == 0;
    'pages: while seq < head.head_seq {
        let want = PAGE.min((head.head_seq - seq) as u32);
        let page = storage.entries(&head.chain, seq, want).await?;
        if page.is_empty() {
            break;
        }
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
            if !cut_recorded && e.record.kind == "audit" {
                let d: serde_json::Value =
                    serde_json::from_str(&e.record.detail).unwrap_or_default();
                cut_recorded = d["event"] == "retention" && d["to"] == head.base_seq;
            }
            verdict.records += 1;
            seq = e.seq;
            prev = e.hash;
        }
    }
    if verdict.broken.is_some() {
        return Ok(verdict);
    }
    if seq < head.head_seq {
        verdict.broken = broken(
            seq + 1,
            "truncated",
            format!(
                "the chain ends at record {seq} but its head says {} (records removed from the end)",
                head.head_seq
            ),
        );
    } else if prev != head.head_hash {
        verdict.broken = broken(
            seq,
            "relinked",
            format!("record {seq} is not the chain's head (the head was rewritten)"),
        );
    } else if !cut_recorded {
        verdict.broken = broken(
            head.base_seq + 1,
            "rebased",
            format!(
                "the chain starts after record {} but no retention record says so (records removed from its start)",
                head.base_seq
            ),
        );
    } else if let Some(next) = storage
        .entries(&head.chain, head.head_seq, 1)
        .await?
        .first()
    {
        // Records past the head: a daemon appending while this ran, or written around it.
        let now = storage
            .chains()
            .await?
            .into_iter()
            .find(|h| h.chain == head.chain);
        if now.is_none_or(|h| h.head_seq < next.seq) {
            verdict.broken = broken(
                next.seq,
                "extra",
                format!(
                    "record {} lies past the chain's head (written around the daemon)",
                    next.seq
                ),
            );
        }
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record hash's layout, spelled out once more: a record hashed by an earlier build
    /// must hash the same now (or every chain written before would fail `audit verify`).
    #[test]
    fn the_record_hash_keeps_its_layout() {
        let r = Record {
            at_ms: 1_700_000_000_123,
            kind: "call".into(),
            plugin: Some("echo".into()),
            actor: Some(1000),
            request_id: None,
            detail: r#"{"method":"echo"}"#.into(),
        };
        let mut h = Sha3_256::new();
        h.update(b"stockade audit record v1\0");
        for f in [
            b"host-a".to_vec(),
            7i64.to_be_bytes().to_vec(),
            r.at_ms.to_be_bytes().to_vec(),
            b"call".to_vec(),
            b"+echo".to_vec(),
            b"+1000".to_vec(),
            vec![],
            br#"{"method":"echo"}"#.to_vec(),
            b"prev-hash".to_vec(),
        ] {
            h.update((f.len() as u64).to_be_bytes());
            h.update(&f);
        }
        assert_eq!(
            hash("host-a", 7, &r, "prev-hash"),
            hex::encode(&h.finalize())
        );
    }

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
