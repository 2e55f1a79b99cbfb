//! The host's trust state. The rollback ratchet: per plugin, the highest version and signature sequence this host has
//! accepted, and the digest of the package that carried them. An older version or sequence is
//! refused even when properly signed (a replayed old package: TUF's rollback attack), and so is
//! a second, different package under the same sequence. The ratchet moves only when a package
//! is committed to (the daemon: when it becomes the active version), never on a mere check.
//!
//! Beside it, what the host learnt and must not forget: the key rotations it accepted (a
//! rotated-in key stays trusted after its old key is revoked) and the highest trust list
//! serial it used (an older list is a replay).
//!
//! Kept in one JSON file, replaced atomically (written beside, synced, renamed, directory
//! synced); a file that cannot be read is an error, never an empty ratchet.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The mark of one plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub version: String,
    /// 0 for an unsigned package.
    pub sequence: u64,
    /// The package digest, or "unsigned".
    pub digest: String,
    /// The key that signed it (none: unsigned).
    #[serde(default)]
    pub key: Option<String>,
    /// Unix seconds.
    pub at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    format: u32,
    plugins: BTreeMap<String, Mark>,
    /// Accepted key rotations, their file text, in the order accepted.
    #[serde(default)]
    rotations: Vec<String>,
    #[serde(default)]
    list_serial: u64,
    /// SHA3-512 of the trust list used at that serial.
    #[serde(default)]
    list_digest: Option<String>,
}

const FORMAT: u32 = 1;

#[derive(Debug)]
pub struct Ratchet {
    /// Where it is kept; `None`: its owner keeps it (the daemon, in its database).
    path: Option<PathBuf>,
    plugins: BTreeMap<String, Mark>,
    rotations: Vec<String>,
    list_serial: u64,
    list_digest: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RatchetError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a rollback ratchet Stockade can read: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
}

/// Why an offered package is older than what was accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rollback {
    #[error("version {offered} is older than version {accepted}, accepted before")]
    OlderVersion { offered: String, accepted: String },
    #[error("signature sequence {offered} is older than sequence {accepted}, accepted before (version {version})")]
    OlderSequence {
        offered: u64,
        accepted: u64,
        version: String,
    },
    #[error("signature sequence {sequence} was accepted before for another package (digest {accepted}…)")]
    SequenceReused { sequence: u64, accepted: String },
    #[error("an unsigned package, where signed ones were accepted before (sequence {accepted})")]
    UnsignedAfterSigned { accepted: u64 },
    #[error("signed by key {offered}, where key {accepted} signed the version accepted before (and did not rotate to it)")]
    OtherSigner { offered: String, accepted: String },
}

impl Rollback {
    pub fn hint(&self) -> &'static str {
        match self {
            Rollback::OtherSigner { .. } => {
                "a plugin stays with the key that signed it (or the keys that key rotated to); \
                 name the new key for it in the trust list, or accept it once with \
                 --allow-downgrade (recorded)"
            }
            _ => {
                "an older package, even correctly signed, is refused; if going back is intended, \
                 the operator says so with --allow-downgrade (recorded)"
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Rollback::OlderVersion { .. } => "older-version",
            Rollback::OlderSequence { .. } => "older-sequence",
            Rollback::SequenceReused { .. } => "sequence-reused",
            Rollback::UnsignedAfterSigned { .. } => "unsigned-after-signed",
            Rollback::OtherSigner { .. } => "other-signer",
        }
    }
}

impl Ratchet {
    /// Opens the ratchet kept at `path` (none yet: empty).
    pub fn open(path: &Path) -> Result<Ratchet, RatchetError> {
        let file = match std::fs::read(path) {
            Ok(bytes) => {
                let corrupt = |why: String| RatchetError::Corrupt {
                    path: path.to_path_buf(),
                    why,
                };
                let file: File =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                if file.format != FORMAT {
                    return Err(corrupt(format!(
                        "format {} (this one reads {FORMAT})",
                        file.format
                    )));
                }
                file
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(source) => {
                return Err(RatchetError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Ratchet {
            path: Some(path.to_path_buf()),
            plugins: file.plugins,
            rotations: file.rotations,
            list_serial: file.list_serial,
            list_digest: file.list_digest,
        })
    }

    /// A ratchet its owner keeps: the changes stay in memory, and the owner stores each one
    /// (the daemon: in its database, before it acts on it).
    pub fn detached(
        plugins: BTreeMap<String, Mark>,
        rotations: Vec<String>,
        list_serial: u64,
        list_digest: Option<String>,
    ) -> Ratchet {
        Ratchet {
            path: None,
            plugins,
            rotations,
            list_serial,
            list_digest,
        }
    }

    /// What it holds: the marks, the rotations, the trust list's serial and digest.
    pub fn parts(&self) -> (&BTreeMap<String, Mark>, &[String], u64, Option<&str>) {
        (
            &self.plugins,
            &self.rotations,
            self.list_serial,
            self.list_digest.as_deref(),
        )
    }

    /// Whether `version`/`sequence`/`digest`, signed by `key`, may be accepted for `plugin`.
    /// `succeeds(new, old)` says whether key `new` is key `old` or was rotated to from it.
    pub fn check(
        &self,
        plugin: &str,
        version: &semver::Version,
        sequence: u64,
        digest: &str,
        key: Option<&str>,
        succeeds: impl Fn(&str, &str) -> bool,
    ) -> Result<(), Rollback> {
        let Some(mark) = self.plugins.get(plugin) else {
            return Ok(());
        };
        if let (Some(offered), Some(accepted)) = (key, mark.key.as_deref()) {
            if !succeeds(offered, accepted) {
                return Err(Rollback::OtherSigner {
                    offered: offered.into(),
                    accepted: accepted.into(),
                });
            }
        }
        if key.is_none() && mark.sequence > 0 {
            return Err(Rollback::UnsignedAfterSigned {
                accepted: mark.sequence,
            });
        }
        if let Ok(accepted) = semver::Version::parse(&mark.version) {
            if *version < accepted {
                return Err(Rollback::OlderVersion {
                    offered: version.to_string(),
                    accepted: mark.version.clone(),
                });
            }
        }
        if sequence < mark.sequence {
            return Err(Rollback::OlderSequence {
                offered: sequence,
                accepted: mark.sequence,
                version: mark.version.clone(),
            });
        }
        if sequence == mark.sequence && sequence != 0 && digest != mark.digest {
            return Err(Rollback::SequenceReused {
                sequence,
                accepted: mark.digest.chars().take(16).collect(),
            });
        }
        Ok(())
    }

    /// The key rotations accepted so far, in order.
    pub fn rotations(&self) -> &[String] {
        &self.rotations
    }

    /// Remembers an accepted rotation (its file text), stored before returning.
    pub fn remember_rotation(&mut self, text: String) -> Result<(), RatchetError> {
        if self.rotations.contains(&text) {
            return Ok(());
        }
        self.rotations.push(text);
        if let Err(e) = self.store() {
            self.rotations.pop();
            return Err(e);
        }
        Ok(())
    }

    /// The highest trust list serial used.
    pub fn list_serial(&self) -> u64 {
        self.list_serial
    }

    /// Whether a trust list of `serial` with contents `digest` may be used: not older than one
    /// used before, and not another list under a serial used before.
    pub fn check_list(&self, serial: u64, digest: &str) -> Result<(), String> {
        if serial < self.list_serial {
            return Err(format!(
                "serial {serial} is older than serial {}, used before on this host",
                self.list_serial
            ));
        }
        if serial == self.list_serial && self.list_digest.as_deref().is_some_and(|d| d != digest) {
            return Err(format!(
                "serial {serial} was used before on this host for another list (raise the serial with every edit)"
            ));
        }
        Ok(())
    }

    /// Records the trust list used (stored before returning).
    pub fn record_list(&mut self, serial: u64, digest: &str) -> Result<(), RatchetError> {
        if serial == self.list_serial && self.list_digest.as_deref() == Some(digest) {
            return Ok(());
        }
        let old = (
            std::mem::replace(&mut self.list_serial, serial),
            self.list_digest.replace(digest.to_string()),
        );
        if let Err(e) = self.store() {
            (self.list_serial, self.list_digest) = old;
            return Err(e);
        }
        Ok(())
    }

    /// Moves the ratchet to `mark` (also backwards: an allowed downgrade) and stores it before
    /// returning.
    pub fn record(&mut self, plugin: &str, mark: Mark) -> Result<(), RatchetError> {
        let old = self.plugins.insert(plugin.to_string(), mark);
        if let Err(e) = self.store() {
            match old {
                Some(m) => self.plugins.insert(plugin.to_string(), m),
                None => self.plugins.remove(plugin),
            };
            return Err(e);
        }
        Ok(())
    }

    fn store(&self) -> Result<(), RatchetError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| RatchetError::Io {
            path: path.clone(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(&File {
            format: FORMAT,
            plugins: self.plugins.clone(),
            rotations: self.rotations.clone(),
            list_serial: self.list_serial,
            list_digest: self.list_digest.clone(),
        })
        .expect("plain data serializes");
        let mut f = std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap()
    }

    fn mark(version: &str, sequence: u64, digest: &str) -> Mark {
        Mark {
            version: version.into(),
            sequence,
            digest: digest.into(),
            key: Some("k1".into()),
            at: 0,
        }
    }

    /// `k2` was rotated to from `k1`.
    fn succeeds(new: &str, old: &str) -> bool {
        new == old || (new == "k2" && old == "k1")
    }

    #[test]
    fn the_ratchet_refuses_older_and_keeps_across_opens() {
        let dir = std::env::temp_dir().join(format!("stockade-ratchet-{}", std::process::id()));
        let path = dir.join("ratchet.json");
        let mut r = Ratchet::open(&path).unwrap();
        let check = |r: &Ratchet, version: &str, seq: u64, digest: &str, key: Option<&str>| {
            r.check("p", &v(version), seq, digest, key, succeeds)
        };
        assert_eq!(check(&r, "1.0.0", 5, "aa", Some("k1")), Ok(()));
        r.record("p", mark("1.2.0", 5, "aa")).unwrap();
        let r = Ratchet::open(&path).unwrap();
        assert_eq!(
            check(&r, "1.2.0", 5, "aa", Some("k1")),
            Ok(()),
            "the same package again"
        );
        assert_eq!(check(&r, "1.3.0", 6, "bb", Some("k1")), Ok(()));
        assert_eq!(
            check(&r, "1.3.0", 6, "bb", Some("k2")),
            Ok(()),
            "a rotated-to key"
        );
        let kind = |e: Result<(), Rollback>| e.unwrap_err().kind();
        assert_eq!(
            kind(check(&r, "1.3.0", 6, "bb", Some("k3"))),
            "other-signer"
        );
        assert_eq!(
            kind(check(&r, "1.1.0", 9, "cc", Some("k1"))),
            "older-version"
        );
        assert_eq!(
            kind(check(&r, "1.2.0", 4, "cc", Some("k1"))),
            "older-sequence"
        );
        assert_eq!(
            kind(check(&r, "1.2.0", 5, "cc", Some("k1"))),
            "sequence-reused"
        );
        assert_eq!(
            kind(check(&r, "1.3.0", 0, "unsigned", None)),
            "unsigned-after-signed"
        );
        assert_eq!(
            r.check("q", &v("0.1.0"), 1, "dd", Some("k9"), succeeds),
            Ok(()),
            "another plugin"
        );
        let mut r = Ratchet::open(&path).unwrap();
        r.record_list(3, "l3").unwrap();
        assert!(r.check_list(3, "l3").is_ok());
        assert!(r
            .check_list(3, "other")
            .unwrap_err()
            .contains("another list"));
        assert!(r.check_list(2, "l2").unwrap_err().contains("older"));
        assert!(r.check_list(4, "l4").is_ok());
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(
            Ratchet::open(&path),
            Err(RatchetError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
