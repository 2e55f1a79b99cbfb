//! Ed25519 keys and their files.
//!
//! A public key is one line, `ed25519:` and the key's 32 bytes in base64; the same line is what
//! a configuration pins. Its id is the first 8 bytes of the SHA3-512 of the key, in hex: short
//! enough to read out, what signatures and revocations name.
//!
//! A secret key file (mode 0600) holds the 32-byte seed, either as it is or sealed with
//! XChaCha20-Poly1305 under a key derived from a passphrase with Argon2id. The seed lives in
//! memory that is zeroed when dropped.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha3::{Digest, Sha3_512};
use zeroize::Zeroizing;

use crate::hex;

/// The prefix of a public key's text.
pub const PUBLIC_PREFIX: &str = "ed25519:";
const SECRET_MAGIC: &str = "stockade-secret-key v1";
/// The largest key file read.
const MAX_KEY_FILE: u64 = 64 << 10;
/// Argon2id's memory (KiB), passes and lanes for a passphrase: OWASP's first choice of 2023
/// asks for 19 MiB and 2 passes; a key is unsealed rarely, so more of both.
const ARGON_M_KIB: u32 = 64 << 10;
const ARGON_T: u32 = 3;
const ARGON_P: u32 = 1;

/// A key's id: the first 8 bytes of the SHA3-512 of its 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl KeyId {
    /// Parses 16 hex digits.
    pub fn parse(text: &str) -> Option<KeyId> {
        let bytes = hex::decode(text)?;
        Some(KeyId(bytes.try_into().ok()?))
    }
}

/// What is wrong with a key, or a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: larger than {MAX_KEY_FILE} bytes: not a key file", .0.display())]
    TooLarge(PathBuf),
    #[error("{what}: not a public key (expected `{PUBLIC_PREFIX}` and 32 bytes in base64)")]
    NotAPublicKey { what: String },
    #[error("{what} is a secret key, where a public key belongs")]
    SecretForPublic { what: String },
    #[error("{what} is a public key, where the secret key belongs")]
    PublicForSecret { what: String },
    #[error("{what}: not a secret key file ({why})")]
    NotASecretKey { what: String, why: String },
    #[error("{what}: the passphrase is wrong, or the file was changed")]
    WrongPassphrase { what: String },
    #[error("{what}: the secret key does not match its public key: the file was changed")]
    Mismatch { what: String },
    #[error("{what}: the key is sealed with a passphrase, and none was given")]
    NeedsPassphrase { what: String },
    #[error("the system's random source failed: {0}")]
    Random(String),
}

impl KeyError {
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            KeyError::Io { .. } => "check the path and its permissions",
            KeyError::TooLarge(_) | KeyError::NotAPublicKey { .. } => {
                "a public key is a file NAME.pub written by `stockade key generate`, or its line \
                 `ed25519:...`"
            }
            KeyError::SecretForPublic { .. } => {
                "give NAME.pub (the secret NAME.key stays with whoever signs)"
            }
            KeyError::PublicForSecret { .. } => "sign with NAME.key, written beside NAME.pub",
            KeyError::NotASecretKey { .. } => {
                "a secret key is the file NAME.key written by `stockade key generate`"
            }
            KeyError::WrongPassphrase { .. } => {
                "give the passphrase the key was generated with (--passphrase-file FILE, or type \
                 it at the prompt)"
            }
            KeyError::Mismatch { .. } => "restore the key file from its backup",
            KeyError::NeedsPassphrase { .. } => {
                "give --passphrase-file FILE, or run on a terminal to be asked"
            }
            KeyError::Random(_) => return None,
        })
    }
}

/// An Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<PublicKey> {
        VerifyingKey::from_bytes(bytes).ok().map(PublicKey)
    }

    pub fn bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn id(&self) -> KeyId {
        let digest = Sha3_512::digest(self.0.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// `ed25519:BASE64`.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}", B64.encode(self.0.as_bytes()))
    }

    /// Parses `ed25519:BASE64` (`what` names it in errors).
    pub fn parse(text: &str, what: &str) -> Result<PublicKey, KeyError> {
        let bad = || KeyError::NotAPublicKey { what: what.into() };
        let b64 = text.trim().strip_prefix(PUBLIC_PREFIX).ok_or_else(bad)?;
        let bytes: [u8; 32] = B64
            .decode(b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        PublicKey::from_bytes(&bytes).ok_or_else(bad)
    }

    /// A public key as a configuration gives it: the line itself, or the path of a `.pub` file.
    pub fn from_config(value: &str) -> Result<PublicKey, KeyError> {
        if value.starts_with(PUBLIC_PREFIX) {
            PublicKey::parse(value, "the key")
        } else {
            PublicKey::read(Path::new(value))
        }
    }

    /// Reads a `.pub` file: comment lines (`#`), blank lines and one key line.
    pub fn read(path: &Path) -> Result<PublicKey, KeyError> {
        let text = read_small(path)?;
        let what = path.display().to_string();
        if text.lines().any(|l| l.trim() == SECRET_MAGIC) {
            return Err(KeyError::SecretForPublic { what });
        }
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        match (lines.next(), lines.next()) {
            (Some(line), None) => PublicKey::parse(line, &what),
            _ => Err(KeyError::NotAPublicKey { what }),
        }
    }

    /// The text of a `.pub` file.
    pub fn file_text(&self, name: &str) -> String {
        format!(
            "# stockade public key \"{name}\", id {}\n{}\n",
            self.id(),
            self.to_text()
        )
    }

    /// Checks `signature` over `context` and `digest` (see [`SecretKey::sign`]).
    pub fn verify(&self, context: &[u8], digest: &[u8; 64], signature: &[u8; 64]) -> bool {
        let message = message(context, digest);
        self.0
            .verify(&message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

/// What is signed: a context naming the kind of statement, then the statement's SHA3-512.
fn message(context: &[u8], digest: &[u8; 64]) -> Vec<u8> {
    let mut message = Vec::with_capacity(context.len() + 64);
    message.extend_from_slice(context);
    message.extend_from_slice(digest);
    message
}

/// An Ed25519 secret key (the seed is zeroed when it is dropped).
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the seed.
        write!(f, "SecretKey({})", self.public().id())
    }
}

impl SecretKey {
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut *seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Ed25519 over `context` followed by `digest` (a SHA3-512): the context keeps a signature
    /// over one kind of statement from passing for another.
    pub fn sign(&self, context: &[u8], digest: &[u8; 64]) -> [u8; 64] {
        self.0.sign(&message(context, digest)).to_bytes()
    }

    /// The text of a `.key` file; sealed under `passphrase` when one is given.
    pub fn file_text(
        &self,
        name: &str,
        passphrase: Option<&[u8]>,
    ) -> Result<Zeroizing<String>, KeyError> {
        let public = self.public();
        let header = header(&public);
        let seed = Zeroizing::new(self.0.to_bytes());
        let mut text = Zeroizing::new(format!(
            "# stockade secret key \"{name}\", id {}: keep it secret\n{header}",
            public.id()
        ));
        match passphrase {
            None => {
                // Encoded into a buffer that is zeroed too, not a temporary String.
                let mut encoded = Zeroizing::new(String::with_capacity(48));
                B64.encode_string(&seed[..], &mut encoded);
                text.push_str("seed ");
                text.push_str(&encoded);
                text.push('\n');
            }
            Some(passphrase) => {
                let mut salt = [0u8; 16];
                let mut nonce = [0u8; 24];
                getrandom::getrandom(&mut salt).map_err(|e| KeyError::Random(e.to_string()))?;
                getrandom::getrandom(&mut nonce).map_err(|e| KeyError::Random(e.to_string()))?;
                let kdf = format!(
                    "kdf argon2id m={ARGON_M_KIB} t={ARGON_T} p={ARGON_P} salt={}\n",
                    B64.encode(salt)
                );
                let key = derive(passphrase, &salt, ARGON_M_KIB, ARGON_T, ARGON_P)?;
                let aad = format!("{header}{kdf}");
                let sealed = XChaCha20Poly1305::new((&*key).into())
                    .encrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: &*seed,
                            aad: aad.as_bytes(),
                        },
                    )
                    .map_err(|_| KeyError::Random("sealing failed".into()))?;
                text.push_str(&kdf);
                text.push_str(&format!(
                    "sealed {} nonce={}\n",
                    B64.encode(sealed),
                    B64.encode(nonce)
                ));
            }
        }
        Ok(text)
    }

    /// Whether the key file at `path` is sealed with a passphrase.
    pub fn is_sealed(path: &Path) -> Result<bool, KeyError> {
        Ok(read_small(path)?.lines().any(|l| l.starts_with("kdf ")))
    }

    /// Reads a `.key` file; `passphrase` is asked only when the key is sealed.
    pub fn read(
        path: &Path,
        passphrase: impl FnOnce() -> Option<Zeroizing<String>>,
    ) -> Result<SecretKey, KeyError> {
        let text = read_small(path)?;
        SecretKey::parse(&text, &path.display().to_string(), passphrase)
    }

    pub fn parse(
        text: &str,
        what: &str,
        passphrase: impl FnOnce() -> Option<Zeroizing<String>>,
    ) -> Result<SecretKey, KeyError> {
        let not = |why: &str| KeyError::NotASecretKey {
            what: what.into(),
            why: why.into(),
        };
        let mut lines = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some(l) if l.trim() == SECRET_MAGIC => {}
            Some(l) if l.trim().starts_with(PUBLIC_PREFIX) => {
                return Err(KeyError::PublicForSecret { what: what.into() })
            }
            _ => return Err(not("it does not start with `stockade-secret-key v1`")),
        }
        let mut fields: Vec<(&str, &str)> = Vec::new();
        for line in lines {
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| not("a line without a value"))?;
            fields.push((key, value));
        }
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| not(&format!("no `{name}` line")))
        };
        let public = PublicKey::parse(field("public")?, what)?;
        if field("id")? != public.id().to_string() {
            return Err(KeyError::Mismatch { what: what.into() });
        }
        let seed: Zeroizing<[u8; 32]> = if let Ok(seed) = field("seed") {
            let bytes = Zeroizing::new(B64.decode(seed).map_err(|_| not("a bad `seed`"))?);
            Zeroizing::new(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| not("a bad `seed`"))?,
            )
        } else {
            let kdf = field("kdf")?;
            let (salt, m, t, p) = parse_kdf(kdf).ok_or_else(|| not("a bad `kdf` line"))?;
            let (sealed, nonce) = field("sealed")?
                .split_once(" nonce=")
                .and_then(|(s, n)| Some((B64.decode(s).ok()?, B64.decode(n).ok()?)))
                .filter(|(_, n)| n.len() == 24)
                .ok_or_else(|| not("a bad `sealed` line"))?;
            let passphrase =
                passphrase().ok_or_else(|| KeyError::NeedsPassphrase { what: what.into() })?;
            let key = derive(passphrase.as_bytes(), &salt, m, t, p)
                .map_err(|_| not("a `kdf` line whose parameters Argon2id refuses"))?;
            let aad = format!("{}kdf {kdf}\n", header(&public));
            let plain = Zeroizing::new(
                XChaCha20Poly1305::new((&*key).into())
                    .decrypt(
                        XNonce::from_slice(&nonce),
                        Payload {
                            msg: &sealed,
                            aad: aad.as_bytes(),
                        },
                    )
                    .map_err(|_| KeyError::WrongPassphrase { what: what.into() })?,
            );
            Zeroizing::new(
                plain
                    .as_slice()
                    .try_into()
                    .map_err(|_| not("a sealed seed of the wrong length"))?,
            )
        };
        let key = SecretKey(SigningKey::from_bytes(&seed));
        if key.public() != public {
            return Err(KeyError::Mismatch { what: what.into() });
        }
        Ok(key)
    }
}

/// The lines that identify a secret key; also the associated data of its sealed seed.
fn header(public: &PublicKey) -> String {
    format!(
        "{SECRET_MAGIC}\nid {}\npublic {}\n",
        public.id(),
        public.to_text()
    )
}

fn parse_kdf(line: &str) -> Option<(Vec<u8>, u32, u32, u32)> {
    let mut parts = line.split(' ');
    if parts.next()? != "argon2id" {
        return None;
    }
    let (mut salt, mut m, mut t, mut p) = (None, None, None, None);
    for part in parts {
        let (k, v) = part.split_once('=')?;
        match k {
            "m" => m = v.parse().ok(),
            "t" => t = v.parse().ok(),
            "p" => p = v.parse().ok(),
            "salt" => salt = B64.decode(v).ok(),
            _ => return None,
        }
    }
    // A file may not make the reader spend more than 1 GiB or many passes.
    let (m, t, p) = (m?, t?, p?);
    if m > (1 << 20) || t > 64 || p > 16 {
        return None;
    }
    Some((salt?, m, t, p))
}

fn derive(
    passphrase: &[u8],
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let params = argon2::Params::new(m, t, p, Some(32))
        .map_err(|e| KeyError::Random(format!("argon2 parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, &mut *key)
        .map_err(|e| KeyError::Random(format!("argon2: {e}")))?;
    Ok(key)
}

/// The file's text, in memory that is zeroed when dropped (it may be a secret key).
fn read_small(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // Room for the whole file up front: no reallocation leaves a copy of a secret behind.
    let mut text = Zeroizing::new(String::with_capacity(MAX_KEY_FILE as usize + 1));
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                KeyError::NotAPublicKey {
                    what: format!("{} (not text)", path.display()),
                }
            } else {
                io(e)
            }
        })?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(KeyError::TooLarge(path.to_path_buf()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_key_round_trips_through_its_text_and_file() {
        let secret = SecretKey::generate().unwrap();
        let public = secret.public();
        assert_eq!(
            PublicKey::parse(&public.to_text(), "x").unwrap(),
            public,
            "line"
        );
        let file = public.file_text("acme");
        assert!(file.starts_with(&format!(
            "# stockade public key \"acme\", id {}\n",
            public.id()
        )));
        assert_eq!(public.id().to_string().len(), 16);
    }

    #[test]
    fn a_plain_secret_key_signs_what_its_public_key_verifies() {
        let secret = SecretKey::generate().unwrap();
        let text = secret.file_text("k", None).unwrap();
        let read = SecretKey::parse(&text, "k.key", || None).unwrap();
        let digest = [7u8; 64];
        let sig = read.sign(b"ctx", &digest);
        assert!(secret.public().verify(b"ctx", &digest, &sig));
        assert!(!secret.public().verify(b"other", &digest, &sig));
        let mut flipped = digest;
        flipped[0] ^= 1;
        assert!(!secret.public().verify(b"ctx", &flipped, &sig));
    }

    #[test]
    fn a_sealed_secret_key_needs_its_passphrase() {
        let secret = SecretKey::generate().unwrap();
        let text = secret.file_text("k", Some(b"correct horse")).unwrap();
        assert!(!text.contains("seed "));
        let ok = SecretKey::parse(&text, "k.key", || {
            Some(Zeroizing::new("correct horse".into()))
        })
        .unwrap();
        assert_eq!(ok.public(), secret.public());
        let wrong = SecretKey::parse(&text, "k.key", || Some(Zeroizing::new("battery".into())));
        assert!(
            matches!(wrong, Err(KeyError::WrongPassphrase { .. })),
            "{wrong:?}"
        );
        let none = SecretKey::parse(&text, "k.key", || None);
        assert!(matches!(none, Err(KeyError::NeedsPassphrase { .. })));
        // The header is bound to the sealed seed: another public key line is refused.
        let other = SecretKey::generate().unwrap().public();
        let swapped = text
            .replace(&secret.public().to_text(), &other.to_text())
            .replace(&secret.public().id().to_string(), &other.id().to_string());
        let r = SecretKey::parse(&swapped, "k.key", || {
            Some(Zeroizing::new("correct horse".into()))
        });
        assert!(matches!(r, Err(KeyError::WrongPassphrase { .. })), "{r:?}");
    }

    #[test]
    fn keys_given_for_the_other_kind_are_named_as_such() {
        let secret = SecretKey::generate().unwrap();
        let public_text = secret.public().file_text("k");
        assert!(matches!(
            SecretKey::parse(&public_text, "k.pub", || None),
            Err(KeyError::PublicForSecret { .. })
        ));
        let dir = std::env::temp_dir().join(format!("stockade-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.key");
        std::fs::write(&path, &*secret.file_text("k", None).unwrap()).unwrap();
        let e = PublicKey::read(&path).unwrap_err();
        assert!(matches!(e, KeyError::SecretForPublic { .. }), "{e:?}");
        // The secret never appears in the message.
        assert!(!e.to_string().contains("seed"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_changed_secret_key_file_is_refused() {
        let secret = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let text = secret.file_text("k", None).unwrap();
        let seed_line = text.lines().find(|l| l.starts_with("seed ")).unwrap();
        let other_text = other.file_text("k", None).unwrap();
        let other_seed = other_text.lines().find(|l| l.starts_with("seed ")).unwrap();
        let r = SecretKey::parse(&text.replace(seed_line, other_seed), "k.key", || None);
        assert!(matches!(r, Err(KeyError::Mismatch { .. })));
    }
}
