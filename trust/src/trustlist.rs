//! The trust list: which plugins this host runs — per plugin id, the versions, signing keys and
//! package digests allowed — kept encrypted and authenticated with XChaCha20-Poly1305 under a key
//! the daemon holds outside it (a file, or a systemd credential). A list that does not decrypt
//! whole (tampered, truncated, another key) is refused whole: never partially used. Its `serial`
//! grows with every edit, and a host refuses a list older than one it has used (a replayed list
//! is a rollback too).
//!
//! The plain text, written by the operator and sealed with `stockade trust-list seal`:
//!
//! ```toml
//! serial = 7
//!
//! [plugins.echo-rust]
//! versions = ">=0.1, <2"                 # a semver requirement (default: any)
//! keys = ["1a2b3c4d5e6f7081"]            # who may sign it (default: any key the host pins)
//! digests = ["<package digest>"]         # exactly these signed packages (default: any)
//! ```
//!
//! The sealed file: `stockade-trust-list v1\n`, a 24-byte nonce, then the ciphertext and its tag
//! (the first line is the associated data).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha3::Digest;
use toml_edit::{ImDocument, Value};
use zeroize::Zeroizing;

use crate::hex;
use crate::key::KeyId;

const HEADER: &[u8] = b"stockade-trust-list v1\n";
const KEY_MAGIC: &str = "stockade-trust-list-key v1";
const NONCE: usize = 24;
const TAG: usize = 16;
/// The largest sealed list read.
pub const MAX_LIST_BYTES: u64 = 16 << 20;

/// The key a trust list is sealed under (zeroed when dropped).
pub struct ListKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for ListKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}: not a trust list key (expected `{KEY_MAGIC}` and 32 bytes in base64)")]
    NotAKey(String),
    #[error("{0}: not a sealed trust list")]
    NotAList(String),
    #[error("{0}: the trust list does not decrypt: it was changed or truncated, or sealed under another key")]
    Tampered(String),
    #[error("{what}: line {line}: {why}")]
    Invalid {
        what: String,
        line: usize,
        why: String,
    },
    #[error("the system's random source failed: {0}")]
    Random(String),
}

impl ListError {
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            ListError::Io { .. } => "check the path and its permissions",
            ListError::NotAKey(_) => "`stockade trust-list new-key --out FILE` writes one",
            ListError::NotAList(_) | ListError::Tampered(_) => {
                "seal the list again from its plain text with `stockade trust-list seal`, under \
                 the key the daemon is given"
            }
            ListError::Invalid { .. } => "see docs/plugins.md, \"The trust list\"",
            ListError::Random(_) => return None,
        })
    }
}

impl ListKey {
    pub fn generate() -> Result<ListKey, ListError> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut *key).map_err(|e| ListError::Random(e.to_string()))?;
        Ok(ListKey(key))
    }

    pub fn file_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(KEY_MAGIC.len() + 48));
        text.push_str(KEY_MAGIC);
        text.push('\n');
        B64.encode_string(&self.0[..], &mut text);
        text.push('\n');
        text
    }

    /// Reads a key file, or (`credential:NAME`) the systemd credential NAME from
    /// `$CREDENTIALS_DIRECTORY`.
    pub fn read(source: &str) -> Result<ListKey, ListError> {
        let path = match source.strip_prefix("credential:") {
            Some(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    ListError::Io {
                    what: source.into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "CREDENTIALS_DIRECTORY is not set (LoadCredential= in the unit sets it)",
                    ),
                }
                })?;
                Path::new(&dir).join(name)
            }
            None => Path::new(source).to_path_buf(),
        };
        // Room for the whole (bounded) file up front: no reallocation leaves a copy behind.
        let mut text = Zeroizing::new(String::with_capacity(4097));
        std::fs::File::open(&path)
            .and_then(|f| f.take(4096).read_to_string(&mut text))
            .map_err(|e| ListError::Io {
                what: path.display().to_string(),
                source: e,
            })?;
        let mut lines = text.lines();
        if lines.next() != Some(KEY_MAGIC) {
            return Err(ListError::NotAKey(path.display().to_string()));
        }
        let bytes = Zeroizing::new(
            lines
                .next()
                .and_then(|l| B64.decode(l).ok())
                .unwrap_or_default(),
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| ListError::NotAKey(path.display().to_string()))?;
        Ok(ListKey(Zeroizing::new(key)))
    }
}

/// What the list says of one plugin.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Allowed {
    pub versions: Option<semver::VersionReq>,
    pub keys: Vec<KeyId>,
    /// Package digests, lowercase hex.
    pub digests: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrustList {
    pub serial: u64,
    pub plugins: BTreeMap<String, Allowed>,
    /// SHA3-512 of the plain text, hex: tells two lists of one serial apart.
    pub digest: String,
}

/// Seals `plain` (checked first: a list that would be refused is not sealed).
pub fn seal(plain: &str, key: &ListKey) -> Result<Vec<u8>, ListError> {
    parse(plain, "the plain text")?;
    let mut nonce = [0u8; NONCE];
    getrandom::getrandom(&mut nonce).map_err(|e| ListError::Random(e.to_string()))?;
    let sealed = XChaCha20Poly1305::new((&*key.0).into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain.as_bytes(),
                aad: HEADER,
            },
        )
        .map_err(|_| ListError::Random("sealing failed".into()))?;
    let mut out = Vec::with_capacity(HEADER.len() + NONCE + sealed.len());
    out.extend_from_slice(HEADER);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Decrypts and reads a sealed list; `what` names it in errors.
pub fn open(bytes: &[u8], key: &ListKey, what: &str) -> Result<TrustList, ListError> {
    let rest = bytes
        .strip_prefix(HEADER)
        .ok_or_else(|| ListError::NotAList(what.into()))?;
    if rest.len() < NONCE + TAG {
        return Err(ListError::Tampered(what.into()));
    }
    let (nonce, sealed) = rest.split_at(NONCE);
    let plain = Zeroizing::new(
        XChaCha20Poly1305::new((&*key.0).into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: HEADER,
                },
            )
            .map_err(|_| ListError::Tampered(what.into()))?,
    );
    let text = std::str::from_utf8(&plain).map_err(|_| ListError::Invalid {
        what: what.into(),
        line: 1,
        why: "not UTF-8 text".into(),
    })?;
    parse(text, what)
}

/// Reads the sealed list at `path`.
pub fn read(path: &Path, key: &ListKey) -> Result<TrustList, ListError> {
    let what = path.display().to_string();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_LIST_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|source| ListError::Io {
            what: what.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_LIST_BYTES {
        return Err(ListError::NotAList(what));
    }
    open(&bytes, key, &what)
}

/// Reads the plain text of a list.
pub fn parse(text: &str, what: &str) -> Result<TrustList, ListError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let invalid = |offset: usize, why: String| ListError::Invalid {
        what: what.into(),
        line: line_of(offset),
        why,
    };
    let doc = ImDocument::parse(text).map_err(|e| {
        invalid(
            e.span().map_or(0, |s| s.start),
            format!("invalid TOML: {}", e.message()),
        )
    })?;
    let mut list = TrustList::default();
    let mut serial = None;
    for (key, item) in doc.as_table().iter() {
        let at = item.span().map_or(0, |s| s.start);
        match key {
            "serial" => {
                serial = Some(
                    item.as_integer()
                        .and_then(|n| u64::try_from(n).ok())
                        .ok_or_else(|| invalid(at, "`serial` must be a whole number".into()))?,
                )
            }
            "plugins" => {
                let table = item
                    .as_table()
                    .ok_or_else(|| invalid(at, "`plugins` must be a table of plugin ids".into()))?;
                for (id, entry) in table.iter() {
                    let at = entry.span().map_or(at, |s| s.start);
                    let entry = entry
                        .as_table()
                        .ok_or_else(|| invalid(at, format!("[plugins.{id}] must be a table")))?;
                    list.plugins.insert(
                        id.to_string(),
                        allowed(entry, id).map_err(|(o, w)| invalid(o.unwrap_or(at), w))?,
                    );
                }
            }
            other => {
                return Err(invalid(
                    at,
                    format!("unknown key `{other}` (the keys are serial and [plugins.ID])"),
                ))
            }
        }
    }
    list.serial = serial.ok_or_else(|| {
        invalid(
            0,
            "no `serial`: every list carries one, raised with every edit".into(),
        )
    })?;
    list.digest = hex::encode(&<[u8; 64]>::from(sha3::Sha3_512::digest(text.as_bytes())));
    Ok(list)
}

fn allowed(table: &toml_edit::Table, id: &str) -> Result<Allowed, (Option<usize>, String)> {
    let mut a = Allowed::default();
    for (key, item) in table.iter() {
        let at = item.span().map(|s| s.start);
        let strings = || -> Result<Vec<String>, (Option<usize>, String)> {
            match item.as_value() {
                Some(Value::Array(array)) => array
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or((at, format!("[plugins.{id}] `{key}` holds strings")))
                    })
                    .collect(),
                _ => Err((
                    at,
                    format!("[plugins.{id}] `{key}` must be an array of strings"),
                )),
            }
        };
        match key {
            "versions" => {
                let text = item
                    .as_str()
                    .ok_or((at, format!("[plugins.{id}] `versions` must be a string")))?;
                a.versions = Some(
                    semver::VersionReq::parse(text)
                        .map_err(|e| (at, format!("[plugins.{id}] `versions`: {e}")))?,
                );
            }
            "keys" => {
                for k in strings()? {
                    a.keys.push(KeyId::parse(&k).ok_or((
                        at,
                        format!("[plugins.{id}] `keys`: {k:?} is not a key id (16 hex digits)"),
                    ))?);
                }
            }
            "digests" => {
                for d in strings()? {
                    if hex::decode(&d).is_none_or(|b| b.len() != 64) {
                        return Err((
                            at,
                            format!(
                                "[plugins.{id}] `digests`: not a package digest (128 hex digits)"
                            ),
                        ));
                    }
                    a.digests.push(d);
                }
            }
            other => {
                return Err((
                    Some(
                        table
                            .key(other)
                            .and_then(|k| k.span())
                            .map_or(0, |s| s.start),
                    ),
                    format!("[plugins.{id}]: unknown key `{other}` (versions, keys, digests)"),
                ))
            }
        }
    }
    Ok(a)
}

/// Why the list does not allow a package.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    #[error("plugin `{0}` is not on the trust list")]
    NotListed(String),
    #[error("the trust list allows plugin `{plugin}` only in versions {allowed}, not {version}")]
    Version {
        plugin: String,
        allowed: String,
        version: String,
    },
    #[error("the trust list allows plugin `{plugin}` only signed by {allowed}")]
    Key { plugin: String, allowed: String },
    #[error("the trust list allows plugin `{0}` only as the packages whose digests it names")]
    Digest(String),
}

impl TrustList {
    /// Whether the list lets in `plugin` at `version`, signed by `key` with package `digest`
    /// (both `None` for an unsigned package).
    pub fn check(
        &self,
        plugin: &str,
        version: &semver::Version,
        key: Option<KeyId>,
        digest: Option<&str>,
    ) -> Result<(), NotAllowed> {
        let a = self
            .plugins
            .get(plugin)
            .ok_or_else(|| NotAllowed::NotListed(plugin.into()))?;
        if let Some(req) = &a.versions {
            if !req.matches(version) {
                return Err(NotAllowed::Version {
                    plugin: plugin.into(),
                    allowed: req.to_string(),
                    version: version.to_string(),
                });
            }
        }
        if !a.keys.is_empty() && !key.is_some_and(|k| a.keys.contains(&k)) {
            return Err(NotAllowed::Key {
                plugin: plugin.into(),
                allowed: a
                    .keys
                    .iter()
                    .map(|k| format!("key {k}"))
                    .collect::<Vec<_>>()
                    .join(" or "),
            });
        }
        if !a.digests.is_empty() && !digest.is_some_and(|d| a.digests.iter().any(|x| x == d)) {
            return Err(NotAllowed::Digest(plugin.into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = "serial = 3\n\n[plugins.echo]\nversions = \">=1.0, <2\"\nkeys = [\"1a2b3c4d5e6f7081\"]\n\n[plugins.other]\n";

    #[test]
    fn a_sealed_list_opens_with_its_key_only_and_whole() {
        let key = ListKey::generate().unwrap();
        let sealed = seal(PLAIN, &key).unwrap();
        let list = open(&sealed, &key, "list").unwrap();
        assert_eq!(list.serial, 3);
        assert_eq!(list.plugins.len(), 2);
        let wrong = ListKey::generate().unwrap();
        assert!(matches!(
            open(&sealed, &wrong, "l"),
            Err(ListError::Tampered(_))
        ));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        assert!(matches!(
            open(&flipped, &key, "l"),
            Err(ListError::Tampered(_))
        ));
        for cut in [sealed.len() - 1, HEADER.len() + NONCE + 3, HEADER.len() + 2] {
            assert!(
                matches!(open(&sealed[..cut], &key, "l"), Err(ListError::Tampered(_))),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            open(b"serial = 1\n", &key, "l"),
            Err(ListError::NotAList(_))
        ));
    }

    #[test]
    fn the_list_decides_by_id_version_key_and_digest() {
        let list = parse(PLAIN, "l").unwrap();
        let v = |s: &str| semver::Version::parse(s).unwrap();
        let k = KeyId::parse("1a2b3c4d5e6f7081");
        assert_eq!(list.check("echo", &v("1.2.0"), k, None), Ok(()));
        assert!(matches!(
            list.check("nope", &v("1.0.0"), k, None),
            Err(NotAllowed::NotListed(_))
        ));
        assert!(matches!(
            list.check("echo", &v("2.0.0"), k, None),
            Err(NotAllowed::Version { .. })
        ));
        assert!(matches!(
            list.check("echo", &v("1.0.0"), KeyId::parse("0000000000000000"), None),
            Err(NotAllowed::Key { .. })
        ));
        assert!(matches!(
            list.check("echo", &v("1.0.0"), None, None),
            Err(NotAllowed::Key { .. })
        ));
        assert_eq!(list.check("other", &v("9.0.0"), None, None), Ok(()));
    }

    #[test]
    fn bad_plain_text_is_not_sealed() {
        let key = ListKey::generate().unwrap();
        for (text, why) in [
            ("[plugins.x]\n", "no `serial`"),
            (
                "serial = 1\n[plugins.x]\nversion = \"1\"\n",
                "unknown key `version`",
            ),
            ("serial = 1\n[plugins.x]\nkeys = [\"zz\"]\n", "not a key id"),
            (
                "serial = 1\n[plugins.x]\nversions = \"one\"\n",
                "`versions`",
            ),
        ] {
            let e = seal(text, &key).unwrap_err();
            assert!(e.to_string().contains(why), "{text:?}: {e}");
        }
    }
}
