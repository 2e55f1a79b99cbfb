//! A throwaway PostgreSQL cluster for the tests: `initdb` in a directory of its own, owned by
//! `nobody` (the server refuses to run as root), listening on a free loopback port (password
//! login, SCRAM; TLS offered, with a certificate for `localhost` from a CA made for the cluster:
//! `tls/ca.crt`, beside `tls/stranger.crt`, a CA that signed nothing) and on a unix socket in
//! that directory; stopped and removed afterwards.
//! `cargo xtask test` starts one for the whole suite and hands its address to the tests
//! (`STOCKADE_TEST_POSTGRES`: a role that may create databases; each test makes its own);
//! `cargo xtask postgres start DIR | stop DIR` serves a test that needs a server of its own (one
//! it restarts).

use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

pub const USAGE: &str =
    "cargo xtask postgres start DIR | stop DIR | pause DIR | resume DIR | restart DIR";

/// `nobody:nogroup` on Debian.
const NOBODY: u32 = 65534;

pub struct Cluster {
    pub dir: PathBuf,
    /// `postgres://stockade:PASSWORD@127.0.0.1:PORT/stockade` (a database the role owns).
    pub url: String,
}

/// The newest PostgreSQL server's binaries (`/usr/lib/postgresql/N/bin`).
fn bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no PostgreSQL server is installed (/usr/lib/postgresql); `cargo xtask setup` installs it")?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .context("no PostgreSQL server binaries below /usr/lib/postgresql")
}

fn as_nobody(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    // Root drops to nobody for the server's tools; anyone else runs them as themselves.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
    cmd
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| what.to_string())?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn secret() -> Result<String> {
    let mut bytes = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Creates and starts a cluster in `dir` (which must not exist yet).
pub fn start(dir: &Path) -> Result<Cluster> {
    let bin = bin_dir()?;
    if dir.exists() {
        bail!("{} exists already", dir.display());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        chown(dir, Some(NOBODY), Some(NOBODY))?;
    }
    let admin = secret()?;
    let password = secret()?;
    let pwfile = dir.join("admin-password");
    std::fs::write(&pwfile, &admin)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        chown(&pwfile, Some(NOBODY), Some(NOBODY))?;
    }
    let data = dir.join("data");
    run(
        as_nobody(&bin.join("initdb")).args([
            "--pgdata",
            &data.to_string_lossy(),
            "--username",
            "postgres",
            "--pwfile",
            &pwfile.to_string_lossy(),
            "--auth-local",
            "trust",
            "--auth-host",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-instructions",
        ]),
        "initdb",
    )?;
    let port = free_port()?;
    std::fs::write(dir.join("port"), port.to_string())?;
    certificates(&dir.join("tls"))?;
    pg_ctl_start(&bin, dir, port)?;
    run(
        Command::new(bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-h",
                &dir.to_string_lossy(),
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
            ])
            .arg(format!(
                "CREATE ROLE stockade LOGIN CREATEDB PASSWORD '{password}'"
            ))
            .args(["-c", "CREATE DATABASE stockade OWNER stockade"]),
        "creating the role and database stockade",
    )?;
    let url = format!("postgres://stockade:{password}@127.0.0.1:{port}/stockade");
    std::fs::write(dir.join("url"), &url)?;
    Ok(Cluster {
        dir: dir.to_path_buf(),
        url,
    })
}

/// The cluster's CA and its server certificate (for `localhost` only: a client that checks the
/// name must connect by that name), and a second CA that signed nothing, with openssl(1).
fn certificates(tls: &Path) -> Result<()> {
    std::fs::create_dir_all(tls)?;
    let openssl =
        |args: &[&str], what: &str| run(Command::new("openssl").current_dir(tls).args(args), what);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for (name, subject) in [
        ("ca", "/CN=stockade test CA"),
        ("stranger", "/CN=another CA"),
    ] {
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        let mut args = vec!["req", "-x509", "-days", "3", "-subj", subject];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt]);
        openssl(&args, "openssl: a test CA")?;
    }
    let mut args = vec!["req", "-subj", "/CN=localhost"];
    args.extend(ec);
    args.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(&args, "openssl: the server's key")?;
    std::fs::write(
        tls.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        &[
            "x509",
            "-req",
            "-days",
            "3",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
        "openssl: the server's certificate",
    )?;
    // The server reads its key as nobody and refuses one that others may read.
    let key = tls.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        chown(&key, Some(NOBODY), Some(NOBODY))?;
        chown(tls.join("server.crt"), Some(NOBODY), Some(NOBODY))?;
    }
    Ok(())
}

fn pg_ctl_start(bin: &Path, dir: &Path, port: u16) -> Result<()> {
    let mut options = format!(
        "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} \
         -c max_connections=200 -c shared_buffers=32MB",
        dir.display()
    );
    let tls = dir.join("tls");
    if tls.join("server.crt").exists() {
        options.push_str(&format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            tls.join("server.crt").display(),
            tls.join("server.key").display()
        ));
    }
    run(
        as_nobody(&bin.join("pg_ctl")).args([
            "start",
            "--wait",
            "--pgdata",
            &dir.join("data").to_string_lossy(),
            "--log",
            &dir.join("server.log").to_string_lossy(),
            "-o",
            &options,
        ]),
        "pg_ctl start",
    )
}

/// Stops the server in `dir`, if it runs; its data stays.
pub fn pause(dir: &Path) -> Result<()> {
    let bin = bin_dir()?;
    let data = dir.join("data");
    if data.join("postmaster.pid").exists() {
        run(
            as_nobody(&bin.join("pg_ctl")).args([
                "stop",
                "--wait",
                "--mode",
                "fast",
                "--pgdata",
                &data.to_string_lossy(),
            ]),
            "pg_ctl stop",
        )?;
    }
    Ok(())
}

/// Starts the server in `dir` again, on its port.
pub fn resume(dir: &Path) -> Result<()> {
    let bin = bin_dir()?;
    let port: u16 = std::fs::read_to_string(dir.join("port"))?.trim().parse()?;
    pg_ctl_start(&bin, dir, port)
}

/// Stops the server in `dir` and removes the directory.
pub fn stop(dir: &Path) -> Result<()> {
    pause(dir)?;
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(())
}

pub fn command(args: &[&str]) -> Result<()> {
    match args {
        ["start", dir] => {
            let c = start(Path::new(dir))?;
            println!("{}", c.url);
            Ok(())
        }
        ["stop", dir] => stop(Path::new(dir)),
        ["pause", dir] => pause(Path::new(dir)),
        ["resume", dir] => resume(Path::new(dir)),
        ["restart", dir] => pause(Path::new(dir)).and_then(|()| resume(Path::new(dir))),
        _ => bail!("usage: {USAGE}"),
    }
}
