//! `stockade key generate`, `stockade sign` and `stockade verify`: the publisher's side of signed
//! packages and the operator's offline check.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::json;
use stockade::package::{self, Options, PackageError};
use stockade_trust::key::SecretKey;
use stockade_trust::keyring::Keyring;
use stockade_trust::snapshot::{self, Limits, Store};
use stockade_trust::statement::{self, Statement, SIGNATURE_FILE};
use zeroize::Zeroizing;

use crate::Failure;

/// The longest passphrase read from a file.
const MAX_PASSPHRASE: usize = 1024;

/// A passphrase: the first line of `file`, or (`ask`) typed at the terminal.
fn passphrase(
    file: Option<&Path>,
    ask: Option<&str>,
) -> Result<Option<Zeroizing<String>>, Failure> {
    if let Some(file) = file {
        let text = Zeroizing::new(std::fs::read_to_string(file).map_err(|e| {
            Failure::usage(
                format!("--passphrase-file {}: {e}", file.display()),
                "give a file whose first line is the passphrase",
            )
        })?);
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() || line.len() > MAX_PASSPHRASE {
            return Err(Failure::usage(
                format!(
                    "--passphrase-file {}: the first line must hold the passphrase (1 to {MAX_PASSPHRASE} bytes)",
                    file.display()
                ),
                "write the passphrase on the file's first line",
            ));
        }
        return Ok(Some(Zeroizing::new(line.to_string())));
    }
    let Some(prompt) = ask else { return Ok(None) };
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Ok(None);
    }
    let typed = Zeroizing::new(
        rpassword::prompt_password(prompt)
            .map_err(|e| Failure::internal(format!("reading the passphrase: {e}"), None))?,
    );
    Ok(Some(typed))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `stockade key generate NAME`.
pub fn key_generate(
    name: &str,
    out: Option<&Path>,
    passphrase_file: Option<&Path>,
    ask: bool,
    force: bool,
) -> Result<u8, Failure> {
    if !valid_name(name) {
        return Err(Failure::usage(
            format!("key name {name:?}: use letters, digits, '.', '_' and '-' (at most 64)"),
            "for example `stockade key generate acme-2026`",
        ));
    }
    let dir = out.unwrap_or(Path::new("."));
    let secret_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    let phrase = if ask {
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return Err(Failure::usage(
                "--ask-passphrase needs a terminal",
                "give --passphrase-file FILE instead",
            ));
        }
        let first = passphrase(None, Some("passphrase for the new key: "))?;
        let again = passphrase(None, Some("the same passphrase again: "))?;
        if first.as_deref().map(String::as_str) != again.as_deref().map(String::as_str)
            || first.as_ref().is_none_or(|p| p.is_empty())
        {
            return Err(Failure::usage(
                "the passphrases differ, or are empty",
                "run the command again",
            ));
        }
        first
    } else {
        passphrase(passphrase_file, None)?
    };
    let key = SecretKey::generate().map_err(|e| Failure::internal(e.to_string(), None))?;
    let text = key
        .file_text(name, phrase.as_ref().map(|p| p.as_bytes()))
        .map_err(|e| Failure::internal(e.to_string(), None))?;
    write_new(&secret_path, text.as_bytes(), 0o600, force)?;
    let public = key.public();
    if let Err(e) = write_new(
        &public_path,
        public.file_text(name).as_bytes(),
        0o644,
        force,
    ) {
        let _ = std::fs::remove_file(&secret_path);
        return Err(e);
    }
    eprintln!(
        "stockade: wrote {} (secret, mode 0600{}) and {}",
        secret_path.display(),
        if phrase.is_some() {
            ", sealed with the passphrase"
        } else {
            ", not sealed: --ask-passphrase or --passphrase-file seal it"
        },
        public_path.display()
    );
    println!("{}", public.to_text());
    eprintln!("stockade: key id {}", public.id());
    Ok(0)
}

/// Writes a new file; an existing one only with `force` (then replaced whole).
fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), Failure> {
    let mut options = std::fs::File::options();
    options.write(true).mode(mode);
    if force {
        let _ = std::fs::remove_file(path);
    }
    options.create_new(true);
    let mut f = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::usage(
                format!("{} exists already", path.display()),
                "choose another name or --out DIR, or give --force to replace it",
            )
        } else {
            Failure::usage(
                format!("{}: {e}", path.display()),
                "check the directory and its permissions",
            )
        }
    })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Failure::internal(format!("{}: {e}", path.display()), None))
}

fn key_failure(e: stockade_trust::key::KeyError) -> Failure {
    Failure::usage(
        e.to_string(),
        e.hint().unwrap_or("see docs/plugins.md, \"Signing\""),
    )
}

/// `--expires`: a duration from now ("90d", "12h") or an RFC 3339 time.
fn expiry(text: &str, now: SystemTime) -> Result<SystemTime, Failure> {
    let at = humantime::parse_duration(text)
        .map(|d| now + d)
        .or_else(|_| humantime::parse_rfc3339(text))
        .map_err(|_| {
            Failure::usage(
                format!("--expires {text}: not a duration or an RFC 3339 time"),
                "for example --expires 90d, or --expires 2027-06-30T00:00:00Z",
            )
        })?;
    if at <= now {
        return Err(Failure::usage(
            format!("--expires {text}: that is not in the future"),
            "give a later time",
        ));
    }
    Ok(statement::whole_seconds(at))
}

/// `stockade sign DIR --key NAME.key`.
pub fn sign(
    dir: &Path,
    key_path: &Path,
    sequence: Option<u64>,
    expires: Option<&str>,
    passphrase_file: Option<&Path>,
) -> Result<u8, Failure> {
    let now = statement::whole_seconds(SystemTime::now());
    let expires = expires.map(|e| expiry(e, now)).transpose()?;
    if sequence == Some(0) {
        return Err(Failure::usage(
            "--sequence 0: a signature's sequence starts at 1",
            "give --sequence 1 or more, or leave it out",
        ));
    }
    // The package must be a valid one (manifest, policy, entry): nobody needs a signed broken one.
    let package = package::load(dir).map_err(|e| crate::package_failure(dir, e))?;
    let key = secret(key_path, passphrase_file)?;
    // A temporary file an interrupted `sign` left would be signed as part of the package.
    let tmp = package.source.join(format!(".{SIGNATURE_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let snap = snapshot::take(&package.source, None, None, Limits::default())
        .map_err(|e| crate::package_failure(dir, PackageError::Snapshot(e)))?;
    let previous = snap
        .signature
        .as_deref()
        .and_then(|b| statement::parse(b).ok())
        .filter(|s| s.statement.plugin == package.manifest.id)
        .map(|s| s.statement.sequence);
    // By default the signing time in seconds, or the previous signature's plus one when that
    // is larger: it grows with every signature, also from a fresh checkout without the previous
    // stockade.sig.
    let seconds = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let sequence = match (sequence, previous) {
        (Some(n), _) => n,
        (None, Some(p)) => p
            .checked_add(1)
            .ok_or_else(|| {
                Failure::usage(
                    "the previous signature's sequence is the largest there is",
                    "give --sequence N",
                )
            })?
            .max(seconds),
        (None, None) => seconds,
    };
    let statement = Statement {
        plugin: package.manifest.id.clone(),
        version: package.manifest.version.to_string(),
        sequence,
        signed_at: now,
        expires,
        key: key.public().id(),
        entries: snap.entries,
    };
    let text = statement.sign(&key);
    let path = package.source.join(SIGNATURE_FILE);
    write_new(&tmp, text.as_bytes(), 0o644, true)?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Failure::internal(format!("{}: {e}", path.display()), None)
    })?;
    println!(
        "signed {} {} (sequence {sequence}, {} files and directories, expires {}) with key {}",
        statement.plugin,
        statement.version,
        statement.entries.len(),
        expires.map_or("never".into(), statement::time_text),
        key.public().id()
    );
    println!("  wrote {}", path.display());
    Ok(0)
}

/// `stockade verify DIR`: the package checked offline against `pubkeys`, or the daemon's
/// configured keys when none are given.
pub fn verify(
    dir: &Path,
    pubkeys: &[PathBuf],
    config: Option<&Path>,
    json: bool,
) -> Result<u8, Failure> {
    let (mut ring, _) = host_trust(config, pubkeys, false)?;
    if ring.pinned().is_empty() {
        return Err(Failure::usage(
            "no key to verify against: no --pubkey, and the daemon's configuration pins none",
            "give the publisher's key: --pubkey NAME.pub",
        ));
    }
    // A signature holds or it does not: unsigned is not a pass here.
    ring.allow_unsigned = false;
    let started = std::time::Instant::now();
    let loaded = package::load_with(
        dir,
        Options {
            keyring: Some(&ring),
            seal_into: None,
        },
    );
    let took = started.elapsed();
    let package = match loaded {
        Ok(p) => p,
        Err(PackageError::Refused(why)) => {
            if json {
                println!(
                    "{}",
                    json!({ "ok": false, "dir": dir, "kind": why.kind(), "reason": why.to_string(), "hint": why.hint() })
                );
                return Ok(1);
            }
            return Err(Failure {
                cause: format!("{}: {why}", dir.display()),
                hint: Some(why.hint().into()),
                code: 1,
            });
        }
        Err(e) => return Err(crate::package_failure(dir, e)),
    };
    let signer = package
        .signer
        .as_ref()
        .expect("a verified package is signed");
    let mode = if package.policy.enforcement.mode == stockade_policy::EnforcementMode::Enforce {
        "enforce"
    } else {
        "monitor"
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "ok": true,
                "dir": package.source,
                "plugin": package.manifest.id,
                "version": package.manifest.version.to_string(),
                "key": signer.key.to_string(),
                "pinned_as": signer.origin,
                "sequence": signer.sequence,
                "signed_at": statement::time_text(signer.signed_at),
                "expires": signer.expires.map(statement::time_text),
                "digest": signer.digest_hex(),
                "files": package.files,
                "bytes": package.bytes,
                "trust": package.trust.name(),
                "mode": mode,
                "verify_ms": took.as_secs_f64() * 1000.0,
            }))
            .unwrap_or_default()
        );
        return Ok(0);
    }
    println!("{}: signature ok", package.source.display());
    println!(
        "  plugin   {} {}",
        package.manifest.id, package.manifest.version
    );
    println!(
        "  signed   by key {} ({}) at {}, sequence {}",
        signer.key,
        signer.origin,
        statement::time_text(signer.signed_at),
        signer.sequence
    );
    println!(
        "  expires  {}",
        signer.expires.map_or("never".into(), statement::time_text)
    );
    println!("  digest   {}", signer.digest_hex());
    println!(
        "  files    {} ({} bytes), every one as signed",
        package.files, package.bytes
    );
    println!("  trust    {} ({mode} mode)", package.trust.name());
    Ok(0)
}

/// Reads a secret key, asking for its passphrase when it is sealed.
fn secret(path: &Path, passphrase_file: Option<&Path>) -> Result<SecretKey, Failure> {
    let prompt = format!("passphrase for {}: ", path.display());
    let mut asked = None;
    let key = SecretKey::read(path, || match passphrase(passphrase_file, Some(&prompt)) {
        Ok(p) => p,
        Err(e) => {
            asked = Some(e);
            None
        }
    });
    if let Some(e) = asked {
        return Err(e);
    }
    key.map_err(key_failure)
}

/// `stockade key rotate --from OLD.key --to NEW.key`: the statement that the new key succeeds
/// the old one, signed by both.
pub fn key_rotate(
    from: &Path,
    to: &Path,
    out: Option<&Path>,
    passphrase_file: Option<&Path>,
) -> Result<u8, Failure> {
    let old = secret(from, passphrase_file)?;
    let new = secret(to, passphrase_file)?;
    if old.public() == new.public() {
        return Err(Failure::usage(
            "--from and --to are the same key",
            "rotate to a new key: `stockade key generate NAME` writes one",
        ));
    }
    let text = stockade_trust::rotation::Rotation::sign(&old, &new, SystemTime::now());
    let default = to.with_extension("rotation");
    let path = out.unwrap_or(&default);
    write_new(path, text.as_bytes(), 0o644, false)?;
    println!(
        "key {} succeeds key {}: wrote {}",
        new.public().id(),
        old.public().id(),
        path.display()
    );
    println!(
        "  ship it as {} in packages signed with the new key, or list it in [trust] rotations",
        stockade_trust::rotation::ROTATION_FILE
    );
    Ok(0)
}

/// `stockade trust-list new-key --out FILE`.
pub fn list_new_key(out: &Path, force: bool) -> Result<u8, Failure> {
    let key = stockade_trust::trustlist::ListKey::generate()
        .map_err(|e| Failure::internal(e.to_string(), None))?;
    write_new(out, key.file_text().as_bytes(), 0o600, force)?;
    println!(
        "wrote {} (mode 0600): the key the daemon opens the trust list with",
        out.display()
    );
    Ok(0)
}

fn list_failure(e: stockade_trust::trustlist::ListError) -> Failure {
    Failure::usage(
        e.to_string(),
        e.hint()
            .unwrap_or("see docs/plugins.md, \"The trust list\""),
    )
}

/// `stockade trust-list seal PLAIN.toml --key FILE --out LIST`.
pub fn list_seal(plain: &Path, key: &str, out: &Path, force: bool) -> Result<u8, Failure> {
    let text = std::fs::read_to_string(plain).map_err(|e| {
        Failure::usage(
            format!("{}: {e}", plain.display()),
            "give the trust list's plain text (TOML)",
        )
    })?;
    let key = stockade_trust::trustlist::ListKey::read(key).map_err(list_failure)?;
    let list = stockade_trust::trustlist::parse(&text, &plain.display().to_string())
        .map_err(list_failure)?;
    let sealed = stockade_trust::trustlist::seal(&text, &key).map_err(list_failure)?;
    let tmp = out.with_extension("tmp");
    write_new(&tmp, &sealed, 0o644, true)?;
    if !force && out.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Failure::usage(
            format!("{} exists already", out.display()),
            "give --force to replace it",
        ));
    }
    std::fs::rename(&tmp, out)
        .map_err(|e| Failure::internal(format!("{}: {e}", out.display()), None))?;
    println!(
        "sealed {} (serial {}, {} plugins) into {}",
        plain.display(),
        list.serial,
        list.plugins.len(),
        out.display()
    );
    Ok(0)
}

/// `stockade trust-list show LIST --key FILE`: what a sealed list says.
pub fn list_show(list: &Path, key: &str) -> Result<u8, Failure> {
    let key = stockade_trust::trustlist::ListKey::read(key).map_err(list_failure)?;
    let list = stockade_trust::trustlist::read(list, &key).map_err(list_failure)?;
    println!("serial {}", list.serial);
    for (id, a) in &list.plugins {
        let any = |v: &[String]| {
            if v.is_empty() {
                "any".to_string()
            } else {
                v.join(", ")
            }
        };
        println!(
            "  {id}: versions {}; keys {}; digests {}",
            a.versions.as_ref().map_or("any".into(), |r| r.to_string()),
            any(&a.keys.iter().map(|k| k.to_string()).collect::<Vec<_>>()),
            any(&a
                .digests
                .iter()
                .map(|d| format!("{}…", &d[..16]))
                .collect::<Vec<_>>()),
        );
    }
    Ok(0)
}

/// Where `stockade run --package` keeps its sealed copies (a store per run).
const RUN_STORE: &str = "/run/stockade-packages";

/// The host's trust as the daemon builds it from its configuration (`config`, else the default
/// file) — keys, revocations, remembered and configured rotations, the trust list — with
/// `pubkeys` pinned at `trusted` besides; and the host's trust state, read, not written.
fn host_trust(
    config: Option<&Path>,
    pubkeys: &[PathBuf],
    allow_unsigned: bool,
) -> Result<(Keyring, stockade_trust::ratchet::Ratchet), Failure> {
    let db = crate::cli::audit::database(config, None)?;
    let mut state = crate::cli::audit::trust_state(&db)?;
    let ring = stockade::daemon_config::daemon_keyring(
        &db.config.trust,
        pubkeys,
        allow_unsigned,
        &mut state,
        false,
    )
    .map_err(|e| Failure {
        cause: e.cause,
        hint: Some(e.hint.into()),
        code: 2,
    })?;
    Ok((ring, state))
}

/// `stockade run --package DIR`: the package verified as the daemon verifies it — against the
/// daemon configuration's keys, rotations, revocations and trust list, and `--pubkey` keys; the
/// rollback ratchet of the host's trust state read, not moved — and read once into a sealed copy
/// that the run executes from. The returned package and store own the copy: keep them until the
/// run ends.
pub fn run_package(
    dir: &Path,
    pubkeys: &[PathBuf],
    allow_unsigned: bool,
    quiet: bool,
) -> Result<(stockade::package::Package, Store), Failure> {
    let (mut ring, state) = host_trust(None, pubkeys, allow_unsigned)?;
    ring.allow_unsigned |= allow_unsigned;
    if ring.pinned().is_empty() && !ring.allow_unsigned {
        return Err(Failure::usage(
            format!(
                "--package {}: no key to verify it against: no --pubkey, and the daemon's configuration pins none",
                dir.display()
            ),
            "give the publisher's key: --pubkey NAME.pub (or --allow-unsigned, for development)",
        ));
    }
    // The sealed copy in a store of this process's own (held by a lock, swept by the next one
    // if this process is killed), on /run: root's, and a path the plugin's uid can traverse.
    let store = Store::open(Path::new(RUN_STORE), &format!("run-{}", std::process::id()))
        .map_err(|e| Failure::internal(format!("{RUN_STORE}: {e}"), None))?;
    let seal = store.dir.join("copy");
    let package = package::load_with(
        dir,
        Options {
            keyring: Some(&ring),
            seal_into: Some(&seal),
        },
    )
    .map_err(|e| match e {
        PackageError::Refused(why) => Failure {
            cause: format!("{}: {why}", dir.display()),
            hint: Some(why.hint().into()),
            code: 1,
        },
        e => crate::package_failure(dir, e),
    })?;
    package.check_ratchet(&state, &ring).map_err(|r| Failure {
        cause: format!(
            "{}: plugin `{}`: {r} on this host",
            dir.display(),
            package.manifest.id
        ),
        hint: Some(r.hint().into()),
        code: 1,
    })?;
    if !quiet {
        match &package.signer {
            Some(s) => eprintln!(
                "stockade: {} {}: signed by key {} ({}), sequence {}; runs {}",
                package.manifest.id,
                package.manifest.version,
                s.key,
                s.origin,
                s.sequence,
                package.trust.name()
            ),
            None => eprintln!(
                "stockade: {} {}: unsigned (--allow-unsigned); runs untrusted",
                package.manifest.id, package.manifest.version
            ),
        }
    }
    Ok((package, store))
}
