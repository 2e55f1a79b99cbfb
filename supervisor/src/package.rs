//! A plugin package on disk: a directory with `plugin.toml`, checked the way the daemon's
//! `verified` step checks it. The package is read once (`stockade_trust::snapshot`): every file
//! hashed through its own descriptor and, for a package that is to run, copied from the hashed
//! bytes into a sealed directory that everything after is read from — the manifest, the policy,
//! the entry the sandbox executes. Given a keyring, the package's signature must hold over
//! exactly those files; the trust level follows from the key. `stockade plugin check DIR` and
//! `stockade verify DIR` print the result.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use sha3::{Digest, Sha3_512};
use stockade_policy::manifest::{Manifest, PolicySource, Trust, MANIFEST_FILE};
use stockade_policy::{
    load_manifest, load_policy, parse_policy, Diagnostics, EnforcementMode, LoadError, PathVar,
    Policy, PolicyPath,
};
use stockade_trust::keyring::{Keyring, Level, Refusal, Signer};
use stockade_trust::rotation::Rotation;
use stockade_trust::rotation::{MAX_ROTATION_BYTES, ROTATION_FILE};
use stockade_trust::snapshot::{self, Limits, Sealed, SnapshotError};
use stockade_trust::statement::{Kind, MAX_SIGNATURE_BYTES, SIGNATURE_FILE};

/// A checked package.
#[derive(Debug, Clone)]
pub struct Package {
    /// Where the package runs from: its sealed copy, or (when none was made) `source`.
    pub dir: PathBuf,
    /// The package directory as given, canonical.
    pub source: PathBuf,
    /// The sealed copy, removed when the last holder drops it.
    pub sealed: Option<Arc<Sealed>>,
    /// The trust level it runs at: its signer's (or `untrusted` when unsigned), never above
    /// what its manifest asks for. Without a keyring, what the manifest asks for.
    pub trust: Level,
    /// Who signed it, when a keyring checked it and it is signed.
    pub signer: Option<Signer>,
    /// The key rotation the package carried and its signature check used (the host remembers
    /// it once the package runs).
    pub rotation: Option<Rotation>,
    /// Files and directories in the package, and their bytes.
    pub files: usize,
    pub bytes: u64,
    pub manifest: Manifest,
    /// The policy the plugin runs under: the manifest's, with the trust level applied.
    pub policy: Policy,
    /// Where the policy came from, in words ("policy.toml", "stock profile network-client").
    pub policy_label: String,
    /// The entry program on the host.
    pub entry: PathBuf,
    /// SHA3-512 of the entry program, lowercase hex.
    pub entry_sha3_512: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{} has no {MANIFEST_FILE}", .0.display())]
    NoManifest(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The manifest's own errors, each with its place and hint.
    #[error("{0}")]
    Manifest(Diagnostics),
    /// The policy's errors (a file of the package, or a stock profile).
    #[error("{0}")]
    Policy(Diagnostics),
    #[error("{what}: {source}")]
    PolicyFile { what: String, source: LoadError },
    #[error("the entry {}: {why}", path.display())]
    Entry { path: PathBuf, why: String },
    /// The package cannot be read as one (links, special files, limits).
    #[error("{0}")]
    Snapshot(SnapshotError),
    /// Its signature does not let it in.
    #[error("{0}")]
    Refused(Refusal),
    #[error("method `{method}`: `{key}` is not a usable JSON Schema: {why}")]
    Schema {
        method: String,
        key: &'static str,
        why: String,
    },
}

impl PackageError {
    /// What to do about it (none where each diagnostic carries its own).
    pub fn hint(&self) -> Option<String> {
        match self {
            PackageError::NotADirectory(_) => {
                Some("a plugin package is a directory holding plugin.toml".into())
            }
            PackageError::NoManifest(_) => {
                Some("write plugin.toml (docs/plugins.md), or give the package's directory".into())
            }
            PackageError::Io { .. } => Some("check the path and its permissions".into()),
            PackageError::Manifest(_) | PackageError::Policy(_) => None,
            PackageError::Snapshot(e) => e.hint().map(str::to_string),
            PackageError::Refused(r) => Some(r.hint().into()),
            PackageError::PolicyFile { source, .. } => source.hint().map(str::to_string),
            PackageError::Schema { .. } => Some(
                "write the schema in JSON Schema 2020-12 (docs/plugins.md); `$ref` may only point \
                 inside it"
                    .into(),
            ),
            PackageError::Entry { .. } => Some(
                "`entry` names the program that starts the plugin: a file of the package (or an \
                 absolute path the policy grants for exec), executable"
                    .into(),
            ),
        }
    }
}

impl Package {
    /// What the rollback ratchet compares: the signature's sequence and the package digest (0
    /// and "unsigned" for an unsigned package).
    pub fn ratchet_key(&self) -> (u64, String) {
        match &self.signer {
            Some(s) => (s.sequence, s.digest_hex()),
            None => (0, "unsigned".into()),
        }
    }

    /// The rollback ratchet's verdict: not older than what `state` accepted for this plugin, and
    /// signed by the same key (or one `keyring` says may follow it).
    pub fn check_ratchet(
        &self,
        state: &stockade_trust::ratchet::Ratchet,
        keyring: &Keyring,
    ) -> Result<(), stockade_trust::ratchet::Rollback> {
        let (sequence, digest) = self.ratchet_key();
        let key = self.signer.as_ref().map(|s| s.key.to_string());
        state.check(
            &self.manifest.id,
            &self.manifest.version,
            sequence,
            &digest,
            key.as_deref(),
            |new, old| keyring.may_follow(&self.manifest.id, new, old),
        )
    }
}

/// How a package is read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options<'a> {
    /// Check its signature against these keys; `None` reads the package without a trust
    /// decision (`plugin check`, `policy explain`, `sign`).
    pub keyring: Option<&'a Keyring>,
    /// Make the sealed copy here (a path that does not exist yet) and read everything from it.
    pub seal_into: Option<&'a Path>,
}

/// Reads and checks the package in `dir`, without a trust decision or a sealed copy.
pub fn load(dir: &Path) -> Result<Package, PackageError> {
    load_with(dir, Options::default())
}

/// Reads and checks the package in `dir`.
pub fn load_with(dir: &Path, options: Options) -> Result<Package, PackageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::Io { path, source }
    };
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(PackageError::NotADirectory(dir.to_path_buf()));
    }
    let source = dir.canonicalize().map_err(io(dir))?;
    if std::fs::symlink_metadata(source.join(MANIFEST_FILE)).is_err() {
        return Err(PackageError::NoManifest(source));
    }
    // A signature that verifies limits what is read and copied to the files it names, at their
    // signed sizes (read here only for that: the check below uses the snapshot's own bytes).
    let expect = options.keyring.and_then(|k| {
        k.expected_entries(
            read_own(&source, SIGNATURE_FILE, MAX_SIGNATURE_BYTES).as_deref(),
            read_own(&source, ROTATION_FILE, MAX_ROTATION_BYTES).as_deref(),
        )
    });
    let snap = snapshot::take(
        &source,
        options.seal_into,
        expect.as_deref(),
        Limits::default(),
    )
    .map_err(PackageError::Snapshot)?;
    let sealed = snap.sealed.map(Arc::new);
    // From here on, every file is read from the sealed copy when there is one.
    let dir = match &sealed {
        Some(s) => s.dir.clone(),
        None => source.clone(),
    };
    // The signature first, over the files as read: nothing of a package that is not what was
    // signed is parsed (but to name another plugin's signature as such).
    let checked = match options.keyring {
        Some(keyring) => Some(
            keyring
                .check_files(
                    snap.signature.as_deref(),
                    snap.rotation.as_deref(),
                    &snap.entries,
                    std::time::SystemTime::now(),
                )
                .map_err(|refusal| PackageError::Refused(name_other(refusal, &source)))?,
        ),
        None => None,
    };
    let manifest_path = dir.join(MANIFEST_FILE);
    // Read from inside the package only: a manifest that is a link out of it is refused.
    let manifest_path =
        inside(&dir, Path::new(MANIFEST_FILE)).map_err(|why| PackageError::PolicyFile {
            what: MANIFEST_FILE.into(),
            source: LoadError::Io {
                path: manifest_path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
            },
        })?;
    let manifest = match load_manifest(&manifest_path) {
        Ok(m) => m,
        Err(LoadError::Invalid(d)) => return Err(PackageError::Manifest(d)),
        Err(other) => {
            return Err(PackageError::PolicyFile {
                what: MANIFEST_FILE.into(),
                source: other,
            })
        }
    };
    let (mut policy, policy_label) = match &manifest.policy {
        PolicySource::File(rel) => {
            let path = inside(&dir, rel).map_err(|why| PackageError::PolicyFile {
                what: format!("policy {}", rel.display()),
                source: LoadError::Io {
                    path: dir.join(rel),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
                },
            })?;
            match load_policy(&path) {
                Ok(p) => (p, rel.display().to_string()),
                Err(LoadError::Invalid(d)) => return Err(PackageError::Policy(d)),
                Err(other) => {
                    return Err(PackageError::PolicyFile {
                        what: format!("policy {}", rel.display()),
                        source: other,
                    })
                }
            }
        }
        PolicySource::Profile { name, additions } => {
            let text = stockade_policy::manifest::profiles::get(name).unwrap_or_default();
            let mut policy =
                parse_policy(text, &format!("profile {name}")).map_err(PackageError::Policy)?;
            additions.apply(&mut policy);
            let label = if additions.is_empty() {
                format!("stock profile {name}")
            } else {
                format!("stock profile {name}, plus the manifest's additions")
            };
            (policy, label)
        }
    };
    let (trust, signer, rotation) = match (options.keyring, checked) {
        (Some(keyring), Some(checked)) => {
            // A manifest that asks for `untrusted` is held to it; one that asks for `trusted`
            // gets what its signer is pinned at.
            let cap = match manifest.trust {
                Trust::Untrusted => Level::Untrusted,
                Trust::Trusted => Level::Builtin,
            };
            let verdict = keyring
                .admit(checked, &manifest.id, &manifest.version, cap)
                .map_err(PackageError::Refused)?;
            (verdict.level, verdict.signer, verdict.rotation)
        }
        _ => match manifest.trust {
            Trust::Untrusted => (Level::Untrusted, None, None),
            Trust::Trusted => (Level::Trusted, None, None),
        },
    };
    if trust == Level::Untrusted {
        // DESIGN.md's trust levels: untrusted code runs in enforce mode, whatever its policy says.
        policy.enforcement.mode = EnforcementMode::Enforce;
    }
    check_schemas(&manifest)?;
    let (entry, entry_sha3_512) = entry(&dir, &source, &manifest, &snap.entries)?;
    reachable(&entry, &dir, &policy)?;
    let bytes = snap
        .entries
        .iter()
        .map(|e| match e.kind {
            Kind::File { size, .. } => size,
            Kind::Dir => 0,
        })
        .sum();
    Ok(Package {
        dir,
        source,
        sealed,
        trust,
        signer,
        rotation,
        files: snap.entries.len(),
        bytes,
        manifest,
        policy,
        policy_label,
        entry,
        entry_sha3_512,
    })
}

/// One of the package's own top-level files (signature, rotation), if it is a regular file of at
/// most `max` bytes; `None` otherwise.
fn read_own(dir: &Path, name: &str, max: u64) -> Option<Vec<u8>> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(dir.join(name))
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= max).then_some(bytes)
}

/// A package that is not what was signed, whose signature names another plugin or version than
/// its manifest (read best-effort from the package directory, unverified, for this message only:
/// a file the signature does not match is not in the sealed copy): the more telling refusal.
fn name_other(refusal: Refusal, dir: &Path) -> Refusal {
    let Refusal::Changed {
        plugin, version, ..
    } = &refusal
    else {
        return refusal;
    };
    match load_manifest(&dir.join(MANIFEST_FILE)) {
        Ok(m) if m.id != *plugin => Refusal::OtherPlugin {
            signed: plugin.clone(),
            package: m.id,
        },
        Ok(m) if m.version.to_string() != *version => Refusal::OtherVersion {
            signed: version.clone(),
            package: m.version.to_string(),
        },
        _ => refusal,
    }
}

/// Every method's schemas must be valid JSON Schemas (checked against the meta-schema) and
/// compile: the host validates each call's parameters with them. No reference is fetched from
/// outside the schema (the crate is built without its network and file resolvers).
fn check_schemas(manifest: &Manifest) -> Result<(), PackageError> {
    for (name, method) in &manifest.methods {
        let schemas = [
            ("params", Some(&method.params)),
            ("result", method.result.as_ref()),
        ];
        for (key, schema) in schemas {
            let Some(schema) = schema else { continue };
            let failed = |why: String| PackageError::Schema {
                method: name.clone(),
                key,
                why,
            };
            jsonschema::meta::validate(schema).map_err(|e| {
                failed(format!(
                    "{e} (at {})",
                    show_pointer(&e.instance_path().to_string())
                ))
            })?;
            jsonschema::validator_for(schema).map_err(|e| failed(e.to_string()))?;
        }
    }
    Ok(())
}

fn show_pointer(pointer: &str) -> String {
    if pointer.is_empty() {
        "the top".into()
    } else {
        pointer.to_string()
    }
}

/// `rel` below `dir`, without leaving it through a symlink.
fn inside(dir: &Path, rel: &Path) -> Result<PathBuf, String> {
    let path = dir.join(rel);
    let real = path
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !real.starts_with(dir) {
        return Err(format!(
            "{} leads out of the package, to {}",
            rel.display(),
            real.display()
        ));
    }
    Ok(real)
}

/// The largest entry program hashed: a plugin is not a disk image.
pub const MAX_ENTRY_BYTES: u64 = 1 << 30;

/// The entry program on the host, and its SHA3-512: opened once (for a file of the package,
/// beneath the package directory, no step of the path leaving it) and checked on that
/// descriptor (a regular, executable file of bounded size). A file of the package was hashed
/// in the snapshot; a program outside it (a system interpreter) is hashed from the descriptor.
fn entry(
    dir: &Path,
    source: &Path,
    manifest: &Manifest,
    snapshot: &[stockade_trust::statement::Entry],
) -> Result<(PathBuf, String), PackageError> {
    let raw = Path::new(&manifest.entry[0]);
    let err = |why: String| PackageError::Entry {
        path: raw.to_path_buf(),
        why,
    };
    // A file of the package named by its absolute path would run from the package directory,
    // not from what was verified: the package's own files are named relative to it.
    for arg in &manifest.entry {
        let p = Path::new(arg);
        if p.is_absolute()
            && (p.starts_with(source) || p.canonicalize().is_ok_and(|c| c.starts_with(source)))
        {
            return Err(PackageError::Entry {
                path: p.to_path_buf(),
                why: "names a file of the package by its absolute path; name it relative to the \
                      package, so that what runs is what was verified"
                    .into(),
            });
        }
    }
    let file = if raw.is_absolute() {
        File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(raw)
            .map_err(|e| err(e.to_string()))?
    } else {
        open_beneath(dir, raw).map_err(|e| {
            err(if e.raw_os_error() == Some(libc::EXDEV) {
                "it leads out of the package".into()
            } else {
                e.to_string()
            })
        })?
    };
    let meta = file.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.mode() & 0o111 == 0 {
        return Err(err(format!(
            "not executable (mode {:o}); chmod +x it",
            meta.mode() & 0o7777
        )));
    }
    if meta.len() > MAX_ENTRY_BYTES {
        return Err(err(format!(
            "{} bytes: at most {MAX_ENTRY_BYTES}",
            meta.len()
        )));
    }
    let path = if raw.is_absolute() {
        raw.canonicalize().map_err(|e| err(e.to_string()))?
    } else {
        inside(dir, raw).map_err(err)?
    };
    let known = path
        .strip_prefix(dir)
        .ok()
        .and_then(|rel| rel.to_str())
        .and_then(|rel| snapshot.iter().find(|e| e.path == rel))
        .and_then(|e| match &e.kind {
            Kind::File { digest, .. } => Some(stockade_trust::hex::encode(digest)),
            Kind::Dir => None,
        });
    let digest = match known {
        Some(d) => d,
        None => digest_of(file).map_err(|e| err(e.to_string()))?,
    };
    Ok((path, digest))
}

/// openat2(RESOLVE_BENEATH) of `rel` below `dir`: symlinks are followed only while they stay
/// below it (EXDEV otherwise).
fn open_beneath(dir: &Path, rel: &Path) -> std::io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let dirfd = File::open(dir)?;
    let name = std::ffi::CString::new(rel.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a plain struct of integers; zeroed is a valid start.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads `how` and the path, both alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// The entry must lie below an exec grant of the policy, or the sandbox cannot start it.
fn reachable(entry: &Path, dir: &Path, policy: &Policy) -> Result<(), PackageError> {
    let granted = policy.filesystem.exec.iter().any(|p| match p {
        PolicyPath::Absolute(a) => entry.starts_with(a),
        PolicyPath::Var(PathVar::PluginDir, rest) => entry.starts_with(dir.join(rest)),
        PolicyPath::Var(..) => false,
    });
    if granted {
        return Ok(());
    }
    Err(PackageError::Entry {
        path: entry.to_path_buf(),
        why: "no `exec` path of the policy holds it, so the sandbox could not start it (add \
              \"$PLUGIN_DIR\" to [filesystem] exec)"
            .into(),
    })
}

/// SHA3-512 of the file at `path`, read through one descriptor.
pub fn digest(path: &Path) -> std::io::Result<String> {
    digest_of(
        File::options()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)?,
    )
}

/// SHA3-512 of what `file` reads, lowercase hex.
fn digest_of(mut file: File) -> std::io::Result<String> {
    let mut hasher = Sha3_512::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_sha3_512() {
        let dir = std::env::temp_dir().join(format!("stockade-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("abc");
        std::fs::write(&file, b"abc").unwrap();
        // FIPS 202's example: SHA3-512("abc").
        assert_eq!(
            digest(&file).unwrap(),
            "b751850b1a57168a5693cd924b6b096e08f621827444f70d884f5d0240d2712e\
             10e116e9192af3c91a7ec57647e3934057340b4cf408d5a56592f8274eec53f0"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
