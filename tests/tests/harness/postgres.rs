//! PostgreSQL for the tests: a database of the test's own on the server `cargo xtask test`
//! starts (`STOCKADE_TEST_POSTGRES`: a role that may create databases), or a server of the
//! test's own (`cargo xtask postgres start`, through `STOCKADE_XTASK`) for a test that stops and
//! restarts it. Edited behind the daemon's back with `psql`.

use std::path::PathBuf;
use std::process::Command;

/// The suite's server, or `None` after printing why the test is skipped.
pub fn admin(test: &str) -> Option<String> {
    match std::env::var("STOCKADE_TEST_POSTGRES") {
        Ok(url) => Some(url),
        Err(_) => {
            println!(
                "skipped: {test}: no PostgreSQL server (STOCKADE_TEST_POSTGRES; `cargo xtask test` starts one)"
            );
            None
        }
    }
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    format!(
        "{}/{name}",
        url.rsplit_once('/').expect("a URL with a database").0
    )
}

/// Runs `sql` with psql; panics when it fails.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql {sql}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A fresh, empty database `name` on the server of `admin`; its URL.
pub fn database(admin: &str, name: &str) -> String {
    psql(admin, &format!("DROP DATABASE IF EXISTS {name}"));
    psql(admin, &format!("CREATE DATABASE {name}"));
    with_database(admin, name)
}

/// A server of the test's own, stopped and removed when dropped.
pub struct Server {
    dir: PathBuf,
    pub url: String,
}

impl Server {
    /// `None` after printing why the test is skipped.
    pub fn start(test: &str) -> Option<Server> {
        let Ok(xtask) = std::env::var("STOCKADE_XTASK") else {
            println!("skipped: {test}: no PostgreSQL server of its own (run through `cargo xtask test`: STOCKADE_XTASK)");
            return None;
        };
        // A short directory: the server's socket is in it, and socket paths are short.
        static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = super::scratch().join(format!("pg-{}-{n}", std::process::id()));
        let _ = Command::new(&xtask)
            .args(["postgres", "stop"])
            .arg(&dir)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new(&xtask)
            .args(["postgres", "start"])
            .arg(&dir)
            .output()
            .expect("xtask postgres start");
        assert!(out.status.success(), "xtask postgres start: {out:?}");
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(Server { dir, url })
    }

    fn xtask(&self, what: &str) {
        let xtask = std::env::var("STOCKADE_XTASK").expect("STOCKADE_XTASK");
        let out = Command::new(xtask)
            .args(["postgres", what])
            .arg(&self.dir)
            .output()
            .expect("xtask postgres");
        assert!(out.status.success(), "xtask postgres {what}: {out:?}");
    }

    pub fn restart(&self) {
        self.xtask("restart");
    }

    /// Stops the server; [`Server::resume`] starts it again.
    pub fn pause(&self) {
        self.xtask("pause");
    }

    pub fn resume(&self) {
        self.xtask("resume");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.xtask("stop");
    }
}
