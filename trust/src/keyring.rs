//! Who may sign what, and the decision about one package: which key signed it, whether that
//! key is pinned and not revoked, whether the signature holds over exactly the package's files,
//! for this plugin and version, and what trust level the plugin then runs at.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::hex;
use crate::key::{KeyId, PublicKey};
use crate::statement::{self, Difference, Entry, ParseError, PACKAGE_CONTEXT, SIGNATURE_FILE};

/// How far in the future a signing time may lie (clocks differ).
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Trust levels, lowest first (DESIGN.md's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Enforce mode whatever the policy says.
    Untrusted,
    /// The policy's own mode (monitor mode in the stock trusted profile).
    Trusted,
    /// Signed by a key compiled into Stockade.
    Builtin,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Untrusted => "untrusted",
            Level::Trusted => "trusted",
            Level::Builtin => "builtin",
        }
    }
}

/// A key this host accepts signatures from.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub key: PublicKey,
    /// The highest level a package it signs runs at.
    pub level: Level,
    /// Where it was pinned (a file, the configuration, "compiled in", a rotation).
    pub origin: String,
}

/// The keys of one host and its rules for unsigned packages.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    pinned: Vec<Pinned>,
    revoked: BTreeSet<KeyId>,
    /// Unsigned packages load (at `untrusted`) instead of being refused.
    pub allow_unsigned: bool,
}

/// The keys compiled in for `builtin` publishers: `STOCKADE_BUILTIN_KEYS` at build time (public
/// key lines separated by white space or commas). This source tree names none: a release build
/// names the release key.
pub fn builtin_keys() -> Vec<PublicKey> {
    option_env!("STOCKADE_BUILTIN_KEYS")
        .unwrap_or("")
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .filter_map(|s| PublicKey::parse(s, "a compiled-in key").ok())
        .collect()
}

/// What the signature check found, for a package that passed it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub level: Level,
    /// `None` for an unsigned package let in by `allow_unsigned`.
    pub signer: Option<Signer>,
}

#[derive(Debug, Clone)]
pub struct Signer {
    pub key: KeyId,
    pub origin: String,
    pub sequence: u64,
    pub signed_at: SystemTime,
    pub expires: Option<SystemTime>,
    /// The package digest: SHA3-512 of the signed statement.
    pub digest: [u8; 64],
}

impl Signer {
    pub fn digest_hex(&self) -> String {
        hex::encode(&self.digest)
    }
}

/// Why a package is refused, each with its own words.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("the package is not signed (no {SIGNATURE_FILE})")]
    Unsigned,
    #[error("{SIGNATURE_FILE} is not a signature: {0}")]
    Corrupt(ParseError),
    #[error("signed by key {0}, which this host does not trust")]
    UnknownKey(KeyId),
    #[error("signed by key {0}, which is revoked")]
    Revoked(KeyId),
    #[error("the signature does not verify with key {0}: {SIGNATURE_FILE} was changed, or made with another key")]
    BadSignature(KeyId),
    #[error("the signature is for plugin `{signed}`, and this package is plugin `{package}`")]
    OtherPlugin { signed: String, package: String },
    #[error("the signature is for version {signed}, and this package is version {package}")]
    OtherVersion { signed: String, package: String },
    #[error("the package is not what was signed: {}", summary(.0))]
    Changed(Vec<Difference>),
    #[error("the signature expired at {}", statement::time_text(*.0))]
    Expired(SystemTime),
    #[error("the signature was made at {}, in the future (this host's clock says {})", statement::time_text(*.0), statement::time_text(*.1))]
    FromTheFuture(SystemTime, SystemTime),
}

fn summary(d: &[Difference]) -> String {
    let mut s = d
        .iter()
        .take(3)
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    if d.len() > 3 {
        s.push_str(&format!("; and {} more", d.len() - 3));
    }
    s
}

impl Refusal {
    /// A short stable name (events, `--json`).
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::Corrupt(_) => "corrupt-signature",
            Refusal::UnknownKey(_) => "unknown-key",
            Refusal::Revoked(_) => "revoked-key",
            Refusal::BadSignature(_) => "bad-signature",
            Refusal::OtherPlugin { .. } => "other-plugin",
            Refusal::OtherVersion { .. } => "other-version",
            Refusal::Changed(_) => "changed",
            Refusal::Expired(_) => "expired",
            Refusal::FromTheFuture(..) => "from-the-future",
        }
    }

    pub fn hint(&self) -> &'static str {
        match self {
            Refusal::Unsigned => {
                "sign it (`stockade sign DIR --key NAME.key`) with a key the daemon pins; for \
                 development only, start the daemon with --allow-unsigned"
            }
            Refusal::Corrupt(_) => "sign the package again with `stockade sign`",
            Refusal::UnknownKey(_) => {
                "pin the publisher's NAME.pub (the daemon's --pubkey, or `keys` in [trust] of its \
                 configuration) if you trust it"
            }
            Refusal::Revoked(_) => "ask the publisher for a package signed with its current key",
            Refusal::BadSignature(_) | Refusal::OtherPlugin { .. } | Refusal::OtherVersion { .. } => {
                "this signature does not belong to this package: get the package again from its publisher"
            }
            Refusal::Changed(_) => {
                "a file was changed, added or removed after signing: get the package again, or \
                 sign it again if you are its publisher"
            }
            Refusal::Expired(_) => "ask the publisher for a fresh signature",
            Refusal::FromTheFuture(..) => "check this host's clock, and the signer's",
        }
    }
}

impl Keyring {
    pub fn new() -> Keyring {
        Keyring::default()
    }

    /// A keyring holding the compiled-in keys at `builtin`.
    pub fn with_builtin() -> Keyring {
        let mut k = Keyring::new();
        for key in builtin_keys() {
            k.pin(key, Level::Builtin, "compiled in");
        }
        k
    }

    /// Pins `key`; pinned twice, the higher level holds.
    pub fn pin(&mut self, key: PublicKey, level: Level, origin: &str) {
        if let Some(p) = self.pinned.iter_mut().find(|p| p.key == key) {
            p.level = p.level.max(level);
            return;
        }
        self.pinned.push(Pinned {
            key,
            level,
            origin: origin.into(),
        });
    }

    pub fn revoke(&mut self, id: KeyId) {
        self.revoked.insert(id);
    }

    pub fn is_revoked(&self, id: KeyId) -> bool {
        self.revoked.contains(&id)
    }

    pub fn pinned(&self) -> &[Pinned] {
        &self.pinned
    }

    pub fn revoked(&self) -> impl Iterator<Item = &KeyId> {
        self.revoked.iter()
    }

    /// A pinned key that is not revoked.
    pub fn find(&self, id: KeyId) -> Option<&Pinned> {
        if self.is_revoked(id) {
            return None;
        }
        self.pinned.iter().find(|p| p.key.id() == id)
    }

    /// The decision about one package: `signature` is its signature file's bytes, `entries`
    /// what the package holds (its snapshot), `plugin` and `version` what its manifest says,
    /// `claimed` the trust level its manifest asks for.
    pub fn judge(
        &self,
        signature: Option<&[u8]>,
        entries: &[Entry],
        plugin: &str,
        version: &str,
        claimed: Level,
        now: SystemTime,
    ) -> Result<Verdict, Refusal> {
        let Some(bytes) = signature else {
            return if self.allow_unsigned {
                Ok(Verdict {
                    level: Level::Untrusted,
                    signer: None,
                })
            } else {
                Err(Refusal::Unsigned)
            };
        };
        let signed = statement::parse(bytes).map_err(Refusal::Corrupt)?;
        let s = &signed.statement;
        if self.is_revoked(s.key) {
            return Err(Refusal::Revoked(s.key));
        }
        let pinned = self.find(s.key).ok_or(Refusal::UnknownKey(s.key))?;
        if !pinned
            .key
            .verify(PACKAGE_CONTEXT, &signed.digest, &signed.signature)
        {
            return Err(Refusal::BadSignature(s.key));
        }
        // From here on the statement is the publisher's.
        if s.plugin != plugin {
            return Err(Refusal::OtherPlugin {
                signed: s.plugin.clone(),
                package: plugin.into(),
            });
        }
        if s.version != version {
            return Err(Refusal::OtherVersion {
                signed: s.version.clone(),
                package: version.into(),
            });
        }
        let differences = statement::compare(&s.entries, entries);
        if !differences.is_empty() {
            return Err(Refusal::Changed(differences));
        }
        if let Some(at) = s.expires {
            if now > at {
                return Err(Refusal::Expired(at));
            }
        }
        if s.signed_at > now + CLOCK_SKEW {
            return Err(Refusal::FromTheFuture(s.signed_at, now));
        }
        Ok(Verdict {
            level: pinned.level.min(claimed),
            signer: Some(Signer {
                key: s.key,
                origin: pinned.origin.clone(),
                sequence: s.sequence,
                signed_at: s.signed_at,
                expires: s.expires,
                digest: signed.digest,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::SecretKey;
    use crate::statement::{whole_seconds, Kind, Statement};

    fn entries() -> Vec<Entry> {
        vec![Entry {
            path: "plugin.toml".into(),
            kind: Kind::File {
                exec: false,
                size: 3,
                digest: [9; 64],
            },
        }]
    }

    fn signed(key: &SecretKey, f: impl FnOnce(&mut Statement)) -> String {
        let mut s = Statement {
            plugin: "p".into(),
            version: "1.0.0".into(),
            sequence: 1,
            signed_at: whole_seconds(SystemTime::now()),
            expires: None,
            key: key.public().id(),
            entries: entries(),
        };
        f(&mut s);
        s.sign(key)
    }

    fn judge(ring: &Keyring, sig: &str) -> Result<Verdict, Refusal> {
        ring.judge(
            Some(sig.as_bytes()),
            &entries(),
            "p",
            "1.0.0",
            Level::Trusted,
            SystemTime::now(),
        )
    }

    #[test]
    fn each_refusal_has_its_own_reason() {
        let key = SecretKey::generate().unwrap();
        let stranger = SecretKey::generate().unwrap();
        let mut ring = Keyring::new();
        ring.pin(key.public(), Level::Trusted, "test");
        let ok = judge(&ring, &signed(&key, |_| {})).unwrap();
        assert_eq!(ok.level, Level::Trusted);

        let kind = |sig: &str, ring: &Keyring| judge(ring, sig).unwrap_err().kind();
        assert_eq!(kind(&signed(&stranger, |_| {}), &ring), "unknown-key");
        assert_eq!(
            kind(&signed(&key, |s| s.plugin = "q".into()), &ring),
            "other-plugin"
        );
        assert_eq!(
            kind(&signed(&key, |s| s.version = "0.9.0".into()), &ring),
            "other-version"
        );
        assert_eq!(
            kind(
                &signed(&key, |s| s.expires =
                    Some(SystemTime::now() - Duration::from_secs(60))),
                &ring
            ),
            "expired"
        );
        assert_eq!(
            kind(
                &signed(&key, |s| s.signed_at =
                    whole_seconds(SystemTime::now() + Duration::from_secs(3600))),
                &ring
            ),
            "from-the-future"
        );
        assert_eq!(kind(&signed(&key, |s| s.entries.clear()), &ring), "changed");
        // A statement changed after signing: the signature no longer verifies.
        let forged = signed(&key, |_| {}).replace("sequence 1", "sequence 9");
        assert_eq!(kind(&forged, &ring), "bad-signature");
        assert_eq!(kind("garbage\n", &ring), "corrupt-signature");
        let mut revoked = ring.clone();
        revoked.revoke(key.public().id());
        assert_eq!(kind(&signed(&key, |_| {}), &revoked), "revoked-key");
    }

    #[test]
    fn the_level_is_the_lower_of_the_key_and_the_manifest() {
        let key = SecretKey::generate().unwrap();
        let mut ring = Keyring::new();
        ring.pin(key.public(), Level::Untrusted, "third party");
        assert_eq!(
            judge(&ring, &signed(&key, |_| {})).unwrap().level,
            Level::Untrusted
        );
        let mut ring = Keyring::new();
        ring.pin(key.public(), Level::Builtin, "compiled in");
        let v = ring
            .judge(
                Some(signed(&key, |_| {}).as_bytes()),
                &entries(),
                "p",
                "1.0.0",
                Level::Untrusted,
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(v.level, Level::Untrusted);
    }

    #[test]
    fn unsigned_packages_are_refused_unless_allowed() {
        let mut ring = Keyring::new();
        let r = ring.judge(
            None,
            &entries(),
            "p",
            "1.0.0",
            Level::Trusted,
            SystemTime::now(),
        );
        assert_eq!(r.unwrap_err().kind(), "unsigned");
        ring.allow_unsigned = true;
        let v = ring
            .judge(
                None,
                &entries(),
                "p",
                "1.0.0",
                Level::Trusted,
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(v.level, Level::Untrusted);
        assert!(v.signer.is_none());
    }
}
