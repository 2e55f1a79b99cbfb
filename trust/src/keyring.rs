//! Who may sign what, and the decision about one package: which key signed it, whether that
//! key is pinned and not revoked, whether the signature holds over exactly the package's files,
//! for this plugin and version, and what trust level the plugin then runs at.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::hex;
use crate::key::{KeyId, PublicKey};
use crate::rotation::{Rotation, ROTATION_FILE};
use crate::statement::{self, Difference, Entry, ParseError, PACKAGE_CONTEXT, SIGNATURE_FILE};
use crate::trustlist::{NotAllowed, TrustList};

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
    /// The key whose rotation introduced it.
    pub rotated_from: Option<KeyId>,
}

/// The keys of one host and its rules for unsigned packages.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    pinned: Vec<Pinned>,
    revoked: BTreeSet<KeyId>,
    /// Unsigned packages load (at `untrusted`) instead of being refused.
    pub allow_unsigned: bool,
    /// When set, only the plugins it lists, as it lists them.
    pub list: Option<TrustList>,
}

/// What a package presents to the keyring, both halves of the decision at once (the tests'
/// shorthand; a package is judged in two steps, its manifest read between them).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// Its signature file's bytes.
    pub signature: Option<&'a [u8]>,
    /// Its key rotation file's bytes (a new signing key introduced by an old one).
    pub rotation: Option<&'a [u8]>,
    /// What the package holds (its snapshot).
    pub entries: &'a [Entry],
    /// What its manifest says.
    pub plugin: &'a str,
    pub version: &'a semver::Version,
    /// The highest level its manifest lets it run at.
    pub cap: Level,
}

/// Why a key rotation is not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RotationRefusal {
    #[error("{ROTATION_FILE} is not a key rotation: {0}")]
    Corrupt(ParseError),
    #[error("the rotation is from key {0}, which this host does not trust")]
    UnknownFrom(KeyId),
    #[error("the rotation is from key {0}, which is revoked")]
    RevokedFrom(KeyId),
    #[error("the rotation to key {0} is not signed by both the old key and the new one")]
    BadSignature(KeyId),
    #[error("the rotation introduces key {0}, which is revoked")]
    RevokedTo(KeyId),
}

/// The keys compiled in for `builtin` publishers: `STOCKADE_BUILTIN_KEYS` at build time (public
/// key lines separated by white space or commas). This source tree names none: a release build
/// names the release key.
pub fn builtin_keys() -> Vec<PublicKey> {
    key_list(option_env!("STOCKADE_BUILTIN_KEYS").unwrap_or(""))
}

/// Public key lines separated by white space or commas; anything else is skipped.
fn key_list(text: &str) -> Vec<PublicKey> {
    text.split(|c: char| c.is_whitespace() || c == ',')
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
    /// A key rotation the package carried, accepted to check its signature: the host may
    /// remember it.
    pub rotation: Option<Rotation>,
}

#[derive(Debug, Clone)]
pub struct Signer {
    pub key: KeyId,
    pub origin: String,
    /// The key whose rotation introduced the signing key, if one did.
    pub rotated_from: Option<KeyId>,
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
    #[error("the package is not what was signed: {}", summary(differences))]
    Changed {
        /// What the signature says the package is.
        plugin: String,
        version: String,
        differences: Vec<Difference>,
    },
    #[error("the signature expired at {}", statement::time_text(*.0))]
    Expired(SystemTime),
    #[error("the signature was made at {}, in the future (this host's clock says {})", statement::time_text(*.0), statement::time_text(*.1))]
    FromTheFuture(SystemTime, SystemTime),
    #[error("signed by key {key}, introduced by the package's key rotation, refused: {why}")]
    Rotation { key: KeyId, why: RotationRefusal },
    #[error("{0}")]
    NotAllowed(NotAllowed),
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
            Refusal::Changed { .. } => "changed",
            Refusal::Expired(_) => "expired",
            Refusal::FromTheFuture(..) => "from-the-future",
            Refusal::Rotation { .. } => "bad-rotation",
            Refusal::NotAllowed(NotAllowed::NotListed(_)) => "not-listed",
            Refusal::NotAllowed(_) => "list-forbids",
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
            Refusal::Changed { .. } => {
                "a file was changed, added or removed after signing: get the package again, or \
                 sign it again if you are its publisher"
            }
            Refusal::Expired(_) => "ask the publisher for a fresh signature",
            Refusal::FromTheFuture(..) => "check this host's clock, and the signer's",
            Refusal::Rotation { .. } => {
                "a new key is accepted only from a rotation signed by a key this host trusts and \
                 by the new key itself (`stockade key rotate`)"
            }
            Refusal::NotAllowed(_) => {
                "the operator's trust list decides which plugins run here: add it there \
                 (`stockade trust-list seal`), or get the version and signer it names"
            }
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
            rotated_from: None,
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

    /// Accepts a key rotation: its `to` key is pinned at the level of its `from` key. A
    /// `remembered` rotation (accepted before, kept by the host) stands even if `from` was
    /// revoked since; a new one needs `from` trusted and not revoked. `Ok(false)`: known already.
    pub fn introduce(&mut self, r: &Rotation, remembered: bool) -> Result<bool, RotationRefusal> {
        let to = r.to.id();
        if self.is_revoked(to) {
            return Err(RotationRefusal::RevokedTo(to));
        }
        if !remembered && self.is_revoked(r.from) {
            return Err(RotationRefusal::RevokedFrom(r.from));
        }
        let from = self
            .pinned
            .iter()
            .find(|p| p.key.id() == r.from)
            .ok_or(RotationRefusal::UnknownFrom(r.from))?;
        if !r.verify(&from.key) {
            return Err(RotationRefusal::BadSignature(to));
        }
        if self.pinned.iter().any(|p| p.key.id() == to) {
            return Ok(false);
        }
        let pinned = Pinned {
            key: r.to.clone(),
            level: from.level,
            origin: format!("rotated from key {}", r.from),
            rotated_from: Some(r.from),
        };
        self.pinned.push(pinned);
        Ok(true)
    }

    /// The first half of the decision, before anything of the package is parsed: the signature
    /// holds over exactly the package's files. Unsigned: refused unless `allow_unsigned`.
    /// Signed: by a pinned key that is not revoked (or one the package's own rotation introduces
    /// from such a key), over exactly `entries`, not expired, not from the future.
    pub fn check_files(
        &self,
        signature: Option<&[u8]>,
        rotation: Option<&[u8]>,
        entries: &[Entry],
        now: SystemTime,
    ) -> Result<Checked, Refusal> {
        let Some(bytes) = signature else {
            if !self.allow_unsigned {
                return Err(Refusal::Unsigned);
            }
            return Ok(Checked {
                signed: None,
                pinned: None,
                rotation: None,
            });
        };
        let signed = statement::parse(bytes).map_err(Refusal::Corrupt)?;
        let s = &signed.statement;
        if self.is_revoked(s.key) {
            return Err(Refusal::Revoked(s.key));
        }
        // A key this host does not know yet, introduced by the package's own rotation.
        let mut rotated = None;
        let extended;
        let ring = match (self.find(s.key), rotation) {
            (None, Some(bytes)) => {
                let why = |why| Refusal::Rotation { key: s.key, why };
                let r = Rotation::parse(bytes).map_err(|e| why(RotationRefusal::Corrupt(e)))?;
                if r.to.id() != s.key {
                    return Err(Refusal::UnknownKey(s.key));
                }
                let mut ring = self.clone();
                ring.introduce(&r, false).map_err(why)?;
                rotated = Some(r);
                extended = ring;
                &extended
            }
            _ => self,
        };
        let pinned = ring.find(s.key).ok_or(Refusal::UnknownKey(s.key))?.clone();
        if !pinned
            .key
            .verify(PACKAGE_CONTEXT, &signed.digest, &signed.signature)
        {
            return Err(Refusal::BadSignature(s.key));
        }
        // From here on the statement is the publisher's.
        let differences = statement::compare(&s.entries, entries);
        if !differences.is_empty() {
            return Err(Refusal::Changed {
                plugin: s.plugin.clone(),
                version: s.version.clone(),
                differences,
            });
        }
        if let Some(at) = s.expires {
            if now > at {
                return Err(Refusal::Expired(at));
            }
        }
        if s.signed_at > now + CLOCK_SKEW {
            return Err(Refusal::FromTheFuture(s.signed_at, now));
        }
        Ok(Checked {
            signed: Some(signed),
            pinned: Some(pinned),
            rotation: rotated,
        })
    }

    /// The entries a signature names, when it verifies with a key this keyring trusts (directly
    /// or through the package's rotation): what reading the package may be limited to. `None`
    /// when it does not (the full check then says why).
    pub fn expected_entries(
        &self,
        signature: Option<&[u8]>,
        rotation: Option<&[u8]>,
    ) -> Option<Vec<Entry>> {
        let signed = statement::parse(signature?).ok()?;
        let key = signed.statement.key;
        if self.is_revoked(key) {
            return None;
        }
        let pinned = match self.find(key) {
            Some(p) => p.key.clone(),
            None => {
                let r = Rotation::parse(rotation?).ok()?;
                let mut ring = self.clone();
                ring.introduce(&r, false).ok()?;
                ring.find(key)?.key.clone()
            }
        };
        pinned
            .verify(PACKAGE_CONTEXT, &signed.digest, &signed.signature)
            .then_some(signed.statement.entries)
    }

    /// The second half, once the (verified) manifest is read: the signature is for this plugin
    /// and version, the trust list allows it, and the level is the key's, never above `cap`.
    pub fn admit(
        &self,
        checked: Checked,
        plugin: &str,
        version: &semver::Version,
        cap: Level,
    ) -> Result<Verdict, Refusal> {
        let (Some(signed), Some(pinned)) = (checked.signed, checked.pinned) else {
            if let Some(list) = &self.list {
                list.check(plugin, version, None, None)
                    .map_err(Refusal::NotAllowed)?;
            }
            return Ok(Verdict {
                level: Level::Untrusted,
                signer: None,
                rotation: None,
            });
        };
        let s = &signed.statement;
        if s.plugin != plugin {
            return Err(Refusal::OtherPlugin {
                signed: s.plugin.clone(),
                package: plugin.into(),
            });
        }
        if s.version != version.to_string() {
            return Err(Refusal::OtherVersion {
                signed: s.version.clone(),
                package: version.to_string(),
            });
        }
        let digest_hex = hex::encode(&signed.digest);
        if let Some(list) = &self.list {
            list.check(plugin, version, Some(s.key), Some(&digest_hex))
                .map_err(Refusal::NotAllowed)?;
        }
        Ok(Verdict {
            level: pinned.level.min(cap),
            signer: Some(Signer {
                key: s.key,
                origin: pinned.origin.clone(),
                rotated_from: pinned.rotated_from,
                sequence: s.sequence,
                signed_at: s.signed_at,
                expires: s.expires,
                digest: signed.digest,
            }),
            rotation: checked.rotation,
        })
    }

    /// Both halves at once (the package's manifest already read).
    #[cfg(test)]
    pub fn judge(&self, p: Presented, now: SystemTime) -> Result<Verdict, Refusal> {
        let checked = self.check_files(p.signature, p.rotation, p.entries, now)?;
        self.admit(checked, p.plugin, p.version, p.cap)
    }

    /// Whether a package of `plugin` signed by `new` may follow one signed by `old`: the same
    /// key, a key `old` rotated to, or a key the trust list names for the plugin (the operator's
    /// say). Key ids in text, as the ratchet keeps them.
    pub fn may_follow(&self, plugin: &str, new: &str, old: &str) -> bool {
        if new == old {
            return true;
        }
        let (Some(new), Some(old)) = (KeyId::parse(new), KeyId::parse(old)) else {
            return false;
        };
        self.descends(new, old)
            || self
                .list
                .as_ref()
                .and_then(|l| l.plugins.get(plugin))
                .is_some_and(|a| a.keys.contains(&new))
    }

    /// Whether `key` is `ancestor` or was introduced by it through rotations this keyring knows.
    pub fn descends(&self, key: KeyId, ancestor: KeyId) -> bool {
        let mut at = Some(key);
        for _ in 0..=self.pinned.len() {
            match at {
                Some(k) if k == ancestor => return true,
                Some(k) => {
                    at = self
                        .pinned
                        .iter()
                        .find(|p| p.key.id() == k)
                        .and_then(|p| p.rotated_from)
                }
                None => return false,
            }
        }
        false
    }
}

/// A signature checked against the package's files, its plugin and version not yet.
#[derive(Debug)]
pub struct Checked {
    signed: Option<statement::Signed>,
    pinned: Option<Pinned>,
    rotation: Option<Rotation>,
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

    fn presented<'a>(sig: Option<&'a str>, entries: &'a [Entry], cap: Level) -> Presented<'a> {
        static V: std::sync::OnceLock<semver::Version> = std::sync::OnceLock::new();
        Presented {
            signature: sig.map(str::as_bytes),
            rotation: None,
            entries,
            plugin: "p",
            version: V.get_or_init(|| semver::Version::new(1, 0, 0)),
            cap,
        }
    }

    fn judge(ring: &Keyring, sig: &str) -> Result<Verdict, Refusal> {
        let e = entries();
        ring.judge(presented(Some(sig), &e, Level::Trusted), SystemTime::now())
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
        let sig = signed(&key, |_| {});
        let e = entries();
        let v = ring
            .judge(
                presented(Some(&sig), &e, Level::Untrusted),
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(v.level, Level::Untrusted);
    }

    #[test]
    fn compiled_in_keys_are_a_list_of_key_lines() {
        let secret = SecretKey::generate().unwrap();
        let a = secret.public();
        let b = SecretKey::generate().unwrap().public();
        let text = format!("{}, {}\n junk", a.to_text(), b.to_text());
        assert_eq!(key_list(&text), vec![a.clone(), b]);
        assert!(key_list("").is_empty());
        // Pinned at `builtin`: a manifest asking for `trusted` (cap builtin) runs at builtin.
        let mut ring = Keyring::new();
        ring.pin(a, Level::Builtin, "compiled in");
        let sig = signed(&secret, |_| {});
        let e = entries();
        let v = ring
            .judge(presented(Some(&sig), &e, Level::Builtin), SystemTime::now())
            .unwrap();
        assert_eq!(v.level, Level::Builtin);
    }

    #[test]
    fn unsigned_packages_are_refused_unless_allowed() {
        let mut ring = Keyring::new();
        let e = entries();
        let r = ring.judge(presented(None, &e, Level::Trusted), SystemTime::now());
        assert_eq!(r.unwrap_err().kind(), "unsigned");
        ring.allow_unsigned = true;
        let v = ring
            .judge(presented(None, &e, Level::Trusted), SystemTime::now())
            .unwrap();
        assert_eq!(v.level, Level::Untrusted);
        assert!(v.signer.is_none());
    }

    #[test]
    fn a_rotated_key_stands_after_the_old_one_is_revoked() {
        let old = SecretKey::generate().unwrap();
        let new = SecretKey::generate().unwrap();
        let mut ring = Keyring::new();
        ring.pin(old.public(), Level::Trusted, "old.pub");
        let by_new = signed(&new, |_| {});
        assert_eq!(judge(&ring, &by_new).unwrap_err().kind(), "unknown-key");
        // The package carries the rotation: accepted, at the old key's level.
        let rotation = Rotation::sign(&old, &new, SystemTime::now());
        let e = entries();
        let mut p = presented(Some(&by_new), &e, Level::Trusted);
        p.rotation = Some(rotation.as_bytes());
        let v = ring.judge(p, SystemTime::now()).unwrap();
        assert_eq!(v.level, Level::Trusted);
        let r = v.rotation.expect("the rotation it used");
        // The host remembers it; then the old key is revoked.
        assert!(ring.introduce(&r, false).unwrap());
        ring.revoke(old.public().id());
        assert_eq!(
            judge(&ring, &signed(&old, |_| {})).unwrap_err().kind(),
            "revoked-key"
        );
        assert!(judge(&ring, &by_new).is_ok());
        // Remembered after a restart: stands although its old key is revoked now.
        let mut fresh = Keyring::new();
        fresh.pin(old.public(), Level::Trusted, "old.pub");
        fresh.revoke(old.public().id());
        assert!(matches!(
            fresh.introduce(&r, false),
            Err(RotationRefusal::RevokedFrom(_))
        ));
        assert!(fresh.introduce(&r, true).unwrap());
        assert!(judge(&fresh, &by_new).is_ok());
        // A rotation from a key nobody pinned introduces nothing.
        let stranger = SecretKey::generate().unwrap();
        let bad =
            Rotation::parse(Rotation::sign(&stranger, &new, SystemTime::now()).as_bytes()).unwrap();
        assert!(matches!(
            Keyring::new().introduce(&bad, false),
            Err(RotationRefusal::UnknownFrom(_))
        ));
    }
}
