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
}

const FORMAT: u32 = 1;

#[derive(Debug)]
pub struct Ratchet {
    path: PathBuf,
    plugins: BTreeMap<String, Mark>,
    rotations: Vec<String>,
    list_serial: u64,
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
}

impl Rollback {
    pub fn hint(&self) -> &'static str {
        "an older package, even correctly signed, is refused; if going back is intended, the \
         operator says so with --allow-downgrade (recorded)"
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Rollback::OlderVersion { .. } => "older-version",
            Rollback::OlderSequence { .. } => "older-sequence",
            Rollback::SequenceReused { .. } => "sequence-reused",
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
            path: path.to_path_buf(),
            plugins: file.plugins,
            rotations: file.rotations,
            list_serial: file.list_serial,
        })
    }

    pub fn get(&self, plugin: &str) -> Option<&Mark> {
        self.plugins.get(plugin)
    }

    /// Whether `version`/`sequence`/`digest` may be accepted for `plugin`.
    pub fn check(
        &self,
        plugin: &str,
        version: &semver::Version,
        sequence: u64,
        digest: &str,
    ) -> Result<(), Rollback> {
        let Some(mark) = self.plugins.get(plugin) else {
            return Ok(());
        };
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

    /// Raises the trust list serial (stored before returning).
    pub fn raise_list_serial(&mut self, serial: u64) -> Result<(), RatchetError> {
        if serial <= self.list_serial {
            return Ok(());
        }
        let old = std::mem::replace(&mut self.list_serial, serial);
        if let Err(e) = self.store() {
            self.list_serial = old;
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
        let io = |source| RatchetError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = self.path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(&File {
            format: FORMAT,
            plugins: self.plugins.clone(),
            rotations: self.rotations.clone(),
            list_serial: self.list_serial,
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
        std::fs::rename(&tmp, &self.path).map_err(io)?;
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
            at: 0,
        }
    }

    #[test]
    fn the_ratchet_refuses_older_and_keeps_across_opens() {
        let dir = std::env::temp_dir().join(format!("stockade-ratchet-{}", std::process::id()));
        let path = dir.join("ratchet.json");
        let mut r = Ratchet::open(&path).unwrap();
        assert_eq!(r.check("p", &v("1.0.0"), 5, "aa"), Ok(()));
        r.record("p", mark("1.2.0", 5, "aa")).unwrap();
        let r = Ratchet::open(&path).unwrap();
        assert_eq!(
            r.check("p", &v("1.2.0"), 5, "aa"),
            Ok(()),
            "the same package again"
        );
        assert_eq!(r.check("p", &v("1.3.0"), 6, "bb"), Ok(()));
        assert_eq!(
            r.check("p", &v("1.1.0"), 9, "cc").unwrap_err().kind(),
            "older-version"
        );
        assert_eq!(
            r.check("p", &v("1.2.0"), 4, "cc").unwrap_err().kind(),
            "older-sequence"
        );
        assert_eq!(
            r.check("p", &v("1.2.0"), 5, "cc").unwrap_err().kind(),
            "sequence-reused"
        );
        assert_eq!(r.check("q", &v("0.1.0"), 1, "dd"), Ok(()), "another plugin");
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(
            Ratchet::open(&path),
            Err(RatchetError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
