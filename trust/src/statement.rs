//! What a package signature says, and its file (`stockade.sig` at the package's top).
//!
//! The signed statement is text, one fact per line, in one canonical form (a reader re-renders
//! what it parsed and refuses anything that is not byte for byte that rendering):
//!
//! ```text
//! stockade-package-signature v1
//! plugin echo-rust
//! version 0.1.0
//! sequence 3
//! signed-at 2026-12-02T15:40:00Z
//! expires never
//! key 1a2b3c4d5e6f7081
//! dir bin
//! file 0755 1048576 <sha3-512 hex> bin/echo
//! file 0644 412 <sha3-512 hex> plugin.toml
//! signature <base64 of 64 bytes>
//! ```
//!
//! Every file and directory of the package is listed, sorted by path, except the signature
//! file itself. The signature is Ed25519 over a context string and the SHA3-512 of every byte
//! before the `signature` line; that SHA3-512, in hex, is the package's digest.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha3::{Digest, Sha3_512};

use crate::hex;
use crate::key::{KeyId, SecretKey};

/// The signature's file name in a package.
pub const SIGNATURE_FILE: &str = "stockade.sig";
/// What a package signature signs besides the statement's digest.
pub const PACKAGE_CONTEXT: &[u8] = b"stockade package signature v1\0";
const MAGIC: &str = "stockade-package-signature v1";
/// The largest signature file read (a statement of 65,536 files is about 12 MiB).
pub const MAX_SIGNATURE_BYTES: u64 = 32 << 20;
/// The longest path in a package.
pub const MAX_PATH_BYTES: usize = 4096;
/// The most files and directories a package (and so a statement) holds.
pub const MAX_ENTRIES: usize = 65_536;

/// One file or directory of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, `/`-separated, no `.` or `..` steps.
    pub path: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File {
        /// Any execute bit set: written as 0755, otherwise 0644.
        exec: bool,
        size: u64,
        digest: [u8; 64],
    },
}

/// A package signature's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub plugin: String,
    pub version: String,
    /// Grows with every signature of this plugin: the rollback ratchet compares it.
    pub sequence: u64,
    /// Whole seconds.
    pub signed_at: SystemTime,
    pub expires: Option<SystemTime>,
    pub key: KeyId,
    /// Sorted by path, each path once.
    pub entries: Vec<Entry>,
}

/// A statement with its signature, as read from a signature file.
#[derive(Debug, Clone)]
pub struct Signed {
    pub statement: Statement,
    pub signature: [u8; 64],
    /// SHA3-512 of the statement's text: the package digest.
    pub digest: [u8; 64],
}

/// Why a signature file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct ParseError {
    pub line: usize,
    pub why: String,
}

impl Statement {
    /// The canonical text (without the `signature` line).
    pub fn text(&self) -> String {
        let mut t = String::with_capacity(128 + self.entries.len() * 180);
        t.push_str(MAGIC);
        t.push('\n');
        t.push_str(&format!("plugin {}\n", self.plugin));
        t.push_str(&format!("version {}\n", self.version));
        t.push_str(&format!("sequence {}\n", self.sequence));
        t.push_str(&format!("signed-at {}\n", time_text(self.signed_at)));
        match self.expires {
            Some(at) => t.push_str(&format!("expires {}\n", time_text(at))),
            None => t.push_str("expires never\n"),
        }
        t.push_str(&format!("key {}\n", self.key));
        for e in &self.entries {
            match &e.kind {
                Kind::Dir => t.push_str(&format!("dir {}\n", e.path)),
                Kind::File { exec, size, digest } => t.push_str(&format!(
                    "file {} {size} {} {}\n",
                    if *exec { "0755" } else { "0644" },
                    hex::encode(digest),
                    e.path
                )),
            }
        }
        t
    }

    /// Signs with `key` (whose id must be `self.key`): the signature file's text.
    pub fn sign(&self, key: &SecretKey) -> String {
        let text = self.text();
        let digest: [u8; 64] = Sha3_512::digest(text.as_bytes()).into();
        let signature = key.sign(PACKAGE_CONTEXT, &digest);
        format!("{text}signature {}\n", B64.encode(signature))
    }
}

/// RFC 3339 in UTC, whole seconds.
pub fn time_text(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `t` rounded down to whole seconds.
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Whether `path` is a path this format writes.
pub fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH_BYTES
        && !path.chars().any(|c| c.is_control())
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Reads a signature file. The statement must be in its canonical form; nothing is trusted
/// until the signature is checked by the caller.
pub fn parse(bytes: &[u8]) -> Result<Signed, ParseError> {
    let err = |line: usize, why: &str| ParseError {
        line,
        why: why.into(),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| err(1, "not UTF-8 text"))?;
    if !text.ends_with('\n') {
        return Err(err(text.lines().count().max(1), "no newline at the end"));
    }
    let body = &text[..text.len() - 1];
    let (signed_text, sig_line) = match body.rfind('\n') {
        Some(i) => (&text[..i + 1], &body[i + 1..]),
        None => return Err(err(1, "not a stockade signature")),
    };
    let last = text.lines().count();
    let signature: [u8; 64] = sig_line
        .strip_prefix("signature ")
        .and_then(|b| B64.decode(b).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            err(
                last,
                "the last line must be `signature` and 64 bytes in base64",
            )
        })?;

    let mut lines = signed_text.lines().enumerate().map(|(i, l)| (i + 1, l));
    let mut next = |name: &str| -> Result<(usize, String), ParseError> {
        let (n, line) = lines
            .next()
            .ok_or_else(|| err(last, &format!("no `{name}` line")))?;
        let value = line
            .strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .ok_or_else(|| err(n, &format!("expected `{name} ...`")))?;
        Ok((n, value.to_string()))
    };
    let (n, magic) = next("stockade-package-signature")?;
    if magic != "v1" {
        return Err(err(
            n,
            &format!("signature format {magic:?} (this Stockade reads v1)"),
        ));
    }
    let (_, plugin) = next("plugin")?;
    let (_, version) = next("version")?;
    let (n, sequence) = next("sequence")?;
    let sequence: u64 = sequence
        .parse()
        .map_err(|_| err(n, "the sequence is not a number"))?;
    if sequence == 0 {
        return Err(err(n, "the sequence starts at 1"));
    }
    let (n, signed_at) = next("signed-at")?;
    let signed_at = humantime::parse_rfc3339(&signed_at)
        .map_err(|_| err(n, "signed-at is not an RFC 3339 time"))?;
    let (n, expires) = next("expires")?;
    let expires = match expires.as_str() {
        "never" => None,
        t => Some(
            humantime::parse_rfc3339(t)
                .map_err(|_| err(n, "expires is not an RFC 3339 time or `never`"))?,
        ),
    };
    let (n, key) = next("key")?;
    let key = KeyId::parse(&key).ok_or_else(|| err(n, "the key id is not 16 hex digits"))?;
    let mut entries: Vec<Entry> = Vec::new();
    for (n, line) in lines {
        if entries.len() >= MAX_ENTRIES {
            return Err(err(
                n,
                &format!("more than {MAX_ENTRIES} files and directories"),
            ));
        }
        let entry = if let Some(path) = line.strip_prefix("dir ") {
            Entry {
                path: path.to_string(),
                kind: Kind::Dir,
            }
        } else if let Some(rest) = line.strip_prefix("file ") {
            let mut parts = rest.splitn(4, ' ');
            let (mode, size, digest, path) =
                (parts.next(), parts.next(), parts.next(), parts.next());
            let bad = || err(n, "expected `file MODE SIZE SHA3-512 PATH`");
            let exec = match mode.ok_or_else(bad)? {
                "0755" => true,
                "0644" => false,
                _ => return Err(err(n, "a file's mode is 0755 or 0644")),
            };
            let size = size.and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let digest: [u8; 64] = digest
                .and_then(hex::decode)
                .and_then(|d| d.try_into().ok())
                .ok_or_else(bad)?;
            Entry {
                path: path.ok_or_else(bad)?.to_string(),
                kind: Kind::File { exec, size, digest },
            }
        } else {
            return Err(err(n, "expected `dir PATH` or `file ...`"));
        };
        if !valid_path(&entry.path) {
            return Err(err(n, "not a plain relative path"));
        }
        if entries
            .last()
            .is_some_and(|prev| prev.path.as_bytes() >= entry.path.as_bytes())
        {
            return Err(err(n, "the paths are not sorted, or one is listed twice"));
        }
        entries.push(entry);
    }
    let statement = Statement {
        plugin,
        version,
        sequence,
        signed_at,
        expires,
        key,
        entries,
    };
    if statement.text() != signed_text {
        return Err(err(1, "the statement is not in its canonical form"));
    }
    Ok(Signed {
        digest: Sha3_512::digest(signed_text.as_bytes()).into(),
        statement,
        signature,
    })
}

/// How a package differs from what was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// A file whose bytes, size or mode are not the signed ones (or a directory that became a
    /// file, or the other way round).
    Changed { path: String, what: &'static str },
    /// Present in the package, not in the statement.
    Added(String),
    /// In the statement, not in the package.
    Removed(String),
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Changed { path, what } => write!(f, "{path}: {what}"),
            Difference::Added(path) => write!(f, "{path}: added after signing"),
            Difference::Removed(path) => write!(f, "{path}: removed after signing"),
        }
    }
}

/// Every difference between the signed entries and the package's, in path order.
pub fn compare(signed: &[Entry], found: &[Entry]) -> Vec<Difference> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < signed.len() || j < found.len() {
        match (signed.get(i), found.get(j)) {
            (Some(s), Some(f)) if s.path == f.path => {
                let what = match (&s.kind, &f.kind) {
                    (Kind::Dir, Kind::Dir) => None,
                    (
                        Kind::File {
                            exec: e1,
                            size: s1,
                            digest: d1,
                        },
                        Kind::File {
                            exec: e2,
                            size: s2,
                            digest: d2,
                        },
                    ) => {
                        if s1 != s2 || d1 != d2 {
                            Some("its bytes are not the signed ones")
                        } else if e1 != e2 {
                            Some("its execute permission is not the signed one")
                        } else {
                            None
                        }
                    }
                    (Kind::Dir, _) => Some("signed as a directory, now a file"),
                    (_, Kind::Dir) => Some("signed as a file, now a directory"),
                };
                if let Some(what) = what {
                    out.push(Difference::Changed {
                        path: s.path.clone(),
                        what,
                    });
                }
                i += 1;
                j += 1;
            }
            (Some(s), Some(f)) if s.path.as_bytes() < f.path.as_bytes() => {
                out.push(Difference::Removed(s.path.clone()));
                i += 1;
            }
            (Some(_), Some(f)) | (None, Some(f)) => {
                out.push(Difference::Added(f.path.clone()));
                j += 1;
            }
            (Some(s), None) => {
                out.push(Difference::Removed(s.path.clone()));
                i += 1;
            }
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, byte: u8) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File {
                exec: false,
                size: 1,
                digest: [byte; 64],
            },
        }
    }

    fn statement(key: &SecretKey) -> Statement {
        Statement {
            plugin: "echo".into(),
            version: "1.0.0".into(),
            sequence: 3,
            signed_at: whole_seconds(SystemTime::now()),
            expires: None,
            key: key.public().id(),
            entries: vec![
                Entry {
                    path: "bin".into(),
                    kind: Kind::Dir,
                },
                file("bin/echo", 1),
                file("plugin.toml", 2),
            ],
        }
    }

    #[test]
    fn a_signed_statement_parses_back_and_verifies() {
        let key = SecretKey::generate().unwrap();
        let s = statement(&key);
        let text = s.sign(&key);
        let signed = parse(text.as_bytes()).unwrap();
        assert_eq!(signed.statement, s);
        assert!(key
            .public()
            .verify(PACKAGE_CONTEXT, &signed.digest, &signed.signature));
    }

    #[test]
    fn only_the_canonical_form_is_read() {
        let key = SecretKey::generate().unwrap();
        let text = statement(&key).sign(&key);
        let cases = [
            (text.replace("sequence 3", "sequence 03"), "canonical"),
            (
                text.replace("plugin echo\n", "plugin echo\nextra x\n"),
                "version",
            ),
            (text.replace("bin/echo", "bin/../echo"), "plain relative"),
            (text.replace("file 0644", "file 0600"), "mode"),
            (text.trim_end().to_string(), "newline"),
            (
                text.replacen("dir bin\n", "", 1)
                    .replace("plugin.toml", "a"),
                "sorted",
            ),
            (text.replace("v1\n", "v2\n"), "format \"v2\""),
            (text.replace("sequence 3", "sequence 0"), "starts at 1"),
        ];
        for (bad, why) in cases {
            let e = parse(bad.as_bytes()).unwrap_err();
            assert!(e.why.contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn differences_are_named_one_by_one() {
        let signed = vec![file("a", 1), file("b", 1), file("d", 1)];
        let found = vec![file("a", 1), file("b", 2), file("c", 1)];
        assert_eq!(
            compare(&signed, &found),
            vec![
                Difference::Changed {
                    path: "b".into(),
                    what: "its bytes are not the signed ones"
                },
                Difference::Added("c".into()),
                Difference::Removed("d".into()),
            ]
        );
        assert!(compare(&signed, &signed).is_empty());
    }

    #[test]
    fn paths_are_plain() {
        for bad in ["", "/a", "a/", "a//b", "./a", "a/../b", "a\nb", "a\tb"] {
            assert!(!valid_path(bad), "{bad:?}");
        }
        for good in ["a", "a b/c", "dir/.hidden", "ünï"] {
            assert!(valid_path(good), "{good:?}");
        }
    }
}
