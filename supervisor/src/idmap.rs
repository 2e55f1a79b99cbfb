//! Host uid/gid ranges per plugin: each hosted plugin's user namespace maps onto a range of host
//! ids of its own, so that no two plugins share per-uid kernel accounting (RLIMIT_NPROC,
//! inotify instances, user namespaces) or the ownership of their state directories.
//!
//! A range is allocated by plugin id the first time the plugin is hosted and kept for good in a
//! small JSON file (the daemon's state directory): the same plugin gets the same range across
//! restarts and upgrades, and a range is never handed to another plugin, since files the first
//! one owned may still exist. Range 0 is `stockade run`'s ([`crate::launcher::HOST_ID_BASE`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::launcher::{HOST_ID_BASE, HOST_ID_COUNT};

/// The last host id a range may reach (`(uid_t)-1` is "no id").
const LAST_ID: u64 = u32::MAX as u64 - 1;

#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is damaged ({why}); it records which host ids each plugin owns: restore it from a backup rather than remove it", path.display())]
    Damaged { path: PathBuf, why: String },
    #[error("every host id range is taken ({0} plugins have been hosted)")]
    Exhausted(u32),
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Table {
    /// The next range to hand out; never decreases.
    next: u32,
    /// Plugin id → range number.
    plugins: BTreeMap<String, u32>,
}

/// The allocation file and its lock.
#[derive(Debug, Clone)]
pub struct IdRanges {
    path: PathBuf,
}

impl IdRanges {
    pub fn at(path: &Path) -> IdRanges {
        IdRanges {
            path: path.to_path_buf(),
        }
    }

    /// The first host id of `plugin`'s range, allocating one the first time.
    pub fn base_for(&self, plugin: &str) -> Result<u32, IdError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdError::Io { path, source }
        };
        let lock_path = self.path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        crate::monitor::host::flock(&lock, libc::LOCK_EX).map_err(io(&lock_path))?;
        let mut table = match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<Table>(&bytes).map_err(|e| IdError::Damaged {
                path: self.path.clone(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Table {
                next: 1,
                ..Table::default()
            },
            Err(e) => return Err(io(&self.path)(e)),
        };
        // A table that parses may still hand a range out twice: refuse it as damaged.
        let mut seen = std::collections::BTreeSet::new();
        for (id, &n) in &table.plugins {
            if n == 0 || n >= table.next || !seen.insert(n) {
                return Err(IdError::Damaged {
                    path: self.path.clone(),
                    why: format!(
                        "plugin {id} holds range {n}, which is 0, shared, or not below next ({})",
                        table.next
                    ),
                });
            }
        }
        let range = match table.plugins.get(plugin) {
            Some(&n) => n,
            None => {
                let n = table.next.max(1);
                if base_of(n).is_none() {
                    return Err(IdError::Exhausted(n - 1));
                }
                table.plugins.insert(plugin.to_string(), n);
                table.next = n + 1;
                self.store(&table).map_err(io(&self.path))?;
                n
            }
        };
        drop(lock);
        base_of(range).ok_or(IdError::Damaged {
            path: self.path.clone(),
            why: format!("range {range} lies past the last host id"),
        })
    }

    /// Written whole to a temporary file, synced, then renamed over: a crash leaves the old table
    /// or the new one.
    fn store(&self, table: &Table) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(table).unwrap_or_default())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
        Ok(())
    }
}

/// Range `n`'s first host id, if the whole range fits below the last id.
fn base_of(n: u32) -> Option<u32> {
    let base = u64::from(HOST_ID_BASE) + u64::from(n) * u64::from(HOST_ID_COUNT);
    (base + u64::from(HOST_ID_COUNT) - 1 <= LAST_ID).then_some(base as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("stockade-idmap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn each_plugin_keeps_a_range_of_its_own() {
        let dir = scratch("keep");
        let ranges = IdRanges::at(&dir.join("ids.json"));
        let a = ranges.base_for("a").unwrap();
        let b = ranges.base_for("b").unwrap();
        // Range 0 is `stockade run`'s; the first plugin gets the next one.
        assert_eq!(a, HOST_ID_BASE + HOST_ID_COUNT);
        assert_eq!(b, a + HOST_ID_COUNT);
        // Again, and from a fresh handle (a restarted daemon): the same ranges.
        assert_eq!(ranges.base_for("a").unwrap(), a);
        assert_eq!(
            IdRanges::at(&dir.join("ids.json")).base_for("b").unwrap(),
            b
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ranges_are_never_handed_out_twice_even_by_threads_at_once() {
        let dir = scratch("threads");
        let path = dir.join("ids.json");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || IdRanges::at(&path).base_for(&format!("p{i}")).unwrap())
            })
            .collect();
        let mut bases: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        bases.sort();
        bases.dedup();
        assert_eq!(bases.len(), 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_table_is_refused_not_reset() {
        let dir = scratch("damaged");
        let path = dir.join("ids.json");
        std::fs::write(&path, b"{ half").unwrap();
        let err = IdRanges::at(&path).base_for("a").unwrap_err();
        assert!(matches!(err, IdError::Damaged { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"{ half");
        // Valid JSON, but a range shared, or not below `next`.
        for table in [
            r#"{"next": 3, "plugins": {"a": 1, "b": 1}}"#,
            r#"{"next": 2, "plugins": {"a": 2}}"#,
        ] {
            std::fs::write(&path, table).unwrap();
            let err = IdRanges::at(&path).base_for("c").unwrap_err();
            assert!(matches!(err, IdError::Damaged { .. }), "{table}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_last_range_ends_below_the_last_id() {
        let last = ((LAST_ID + 1 - u64::from(HOST_ID_COUNT) - u64::from(HOST_ID_BASE))
            / u64::from(HOST_ID_COUNT)) as u32;
        let end = u64::from(base_of(last).unwrap()) + u64::from(HOST_ID_COUNT) - 1;
        assert!(end <= LAST_ID);
        assert!(base_of(last + 1).is_none());
        let dir = scratch("exhausted");
        let path = dir.join("ids.json");
        std::fs::write(
            &path,
            format!("{{\"next\": {}, \"plugins\": {{}}}}", last + 1),
        )
        .unwrap();
        assert!(matches!(
            IdRanges::at(&path).base_for("late"),
            Err(IdError::Exhausted(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
