//! Key rotation: a statement that key `from` is succeeded by key `to`, signed by both (the old
//! key vouches for the new one; the new key's signature proves its holder has it — TUF's rule
//! for a new root). A host that trusts `from` and reads the statement trusts `to` at the same
//! level, so a publisher rotates a key without every host's configuration being edited; revoking
//! `from` afterwards leaves `to` standing.
//!
//! ```text
//! stockade-key-rotation v1
//! from 1a2b3c4d5e6f7081
//! to ed25519:<base64>
//! signed-at 2026-12-02T15:40:00Z
//! signature-from <base64>
//! signature-to <base64>
//! ```
//!
//! Both signatures are Ed25519 over [`ROTATION_CONTEXT`] and the SHA3-512 of the first four
//! lines.

use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha3::{Digest, Sha3_512};

use crate::key::{KeyId, PublicKey, SecretKey};
use crate::statement::{time_text, whole_seconds, ParseError};

/// What a rotation's signatures sign besides the statement's digest.
pub const ROTATION_CONTEXT: &[u8] = b"stockade key rotation v1\0";
/// A rotation carried in a package, beside its signature.
pub const ROTATION_FILE: &str = "stockade.rotation";
/// The largest rotation file read.
pub const MAX_ROTATION_BYTES: u64 = 4096;
const MAGIC: &str = "stockade-key-rotation v1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub from: KeyId,
    pub to: PublicKey,
    pub signed_at: SystemTime,
    signature_from: [u8; 64],
    signature_to: [u8; 64],
    digest: [u8; 64],
}

fn body(from: KeyId, to: &PublicKey, signed_at: SystemTime) -> String {
    format!(
        "{MAGIC}\nfrom {from}\nto {}\nsigned-at {}\n",
        to.to_text(),
        time_text(signed_at)
    )
}

impl Rotation {
    /// The statement that `old` is succeeded by `new`, signed by both: the file's text.
    pub fn sign(old: &SecretKey, new: &SecretKey, now: SystemTime) -> String {
        let text = body(old.public().id(), &new.public(), whole_seconds(now));
        let digest: [u8; 64] = Sha3_512::digest(text.as_bytes()).into();
        format!(
            "{text}signature-from {}\nsignature-to {}\n",
            B64.encode(old.sign(ROTATION_CONTEXT, &digest)),
            B64.encode(new.sign(ROTATION_CONTEXT, &digest))
        )
    }

    /// Reads a rotation file (in its canonical form only). Nothing is trusted until
    /// [`Rotation::verify`] holds.
    pub fn parse(bytes: &[u8]) -> Result<Rotation, ParseError> {
        let err = |line: usize, why: &str| ParseError {
            line,
            why: why.into(),
        };
        let text = std::str::from_utf8(bytes).map_err(|_| err(1, "not UTF-8 text"))?;
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        if lines.len() != 6 || !text.ends_with('\n') {
            return Err(err(1, "a rotation has six lines, each ending in a newline"));
        }
        if lines[0] != MAGIC {
            return Err(err(1, "not a stockade key rotation (v1)"));
        }
        let field = |n: usize, name: &str| {
            lines[n]
                .strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .ok_or_else(|| err(n + 1, &format!("expected `{name} ...`")))
        };
        let from = KeyId::parse(field(1, "from")?)
            .ok_or_else(|| err(2, "the key id is not 16 hex digits"))?;
        let to = PublicKey::parse(field(2, "to")?, "the new key")
            .map_err(|_| err(3, "the new key is not `ed25519:` and 32 bytes in base64"))?;
        let signed_at = humantime::parse_rfc3339(field(3, "signed-at")?)
            .map_err(|_| err(4, "signed-at is not an RFC 3339 time"))?;
        let sig = |n: usize, name: &str| -> Result<[u8; 64], ParseError> {
            B64.decode(field(n, name)?)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| err(n + 1, "a signature is 64 bytes in base64"))
        };
        let signature_from = sig(4, "signature-from")?;
        let signature_to = sig(5, "signature-to")?;
        let text = body(from, &to, signed_at);
        if !bytes.starts_with(text.as_bytes()) {
            return Err(err(1, "the statement is not in its canonical form"));
        }
        Ok(Rotation {
            digest: Sha3_512::digest(text.as_bytes()).into(),
            from,
            to,
            signed_at,
            signature_from,
            signature_to,
        })
    }

    /// Both signatures hold: `from` (the old key, as the host knows it) and the new key's own.
    pub fn verify(&self, from: &PublicKey) -> bool {
        from.id() == self.from
            && from.verify(ROTATION_CONTEXT, &self.digest, &self.signature_from)
            && self
                .to
                .verify(ROTATION_CONTEXT, &self.digest, &self.signature_to)
    }

    /// The canonical text (what [`Rotation::parse`] read).
    pub fn text(&self) -> String {
        format!(
            "{}signature-from {}\nsignature-to {}\n",
            body(self.from, &self.to, self.signed_at),
            B64.encode(self.signature_from),
            B64.encode(self.signature_to)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_needs_both_keys() {
        let old = SecretKey::generate().unwrap();
        let new = SecretKey::generate().unwrap();
        let text = Rotation::sign(&old, &new, SystemTime::now());
        let r = Rotation::parse(text.as_bytes()).unwrap();
        assert_eq!(r.text(), text);
        assert!(r.verify(&old.public()));
        assert!(!r.verify(&new.public()), "the old key's id is named");
        // Another old key cannot have signed it.
        let other = SecretKey::generate().unwrap();
        let forged = Rotation::sign(&other, &new, SystemTime::now()).replace(
            &other.public().id().to_string(),
            &old.public().id().to_string(),
        );
        let r = Rotation::parse(forged.as_bytes()).unwrap();
        assert!(!r.verify(&old.public()));
        // A new key named without its holder's signature.
        let mallory = SecretKey::generate().unwrap();
        let swapped = text.replace(&new.public().to_text(), &mallory.public().to_text());
        let r = Rotation::parse(swapped.as_bytes()).unwrap();
        assert!(!r.verify(&old.public()));
        assert!(Rotation::parse(b"stockade-key-rotation v1\n").is_err());
    }
}
