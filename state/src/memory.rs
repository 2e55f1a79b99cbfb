//! The in-memory backend: the same behaviour as the databases, nothing kept past the process
//! (unit tests, and `memory:` for a daemon under test).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::chain::{genesis, Entry};
use crate::{
    ChainHead, Commit, Filter, HostRow, Installation, Mark, PluginRow, StateError, Storage,
    TrustState, VersionRow,
};

#[derive(Default)]
struct Tables {
    hosts: BTreeMap<String, HostRow>,
    plugins: BTreeMap<String, PluginRow>,
    versions: Vec<VersionRow>,
    installations: BTreeMap<(String, String), Installation>,
    trust: BTreeMap<String, TrustState>,
    chains: BTreeMap<String, ChainHead>,
    audit: BTreeMap<(String, i64), Entry>,
}

pub struct Memory {
    tables: Mutex<Tables>,
}

impl Memory {
    pub fn new() -> Memory {
        Memory {
            tables: Mutex::new(Tables::default()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Tables) -> T) -> T {
        f(&mut self.tables.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait]
impl Storage for Memory {
    fn location(&self) -> String {
        "memory:".into()
    }

    async fn schema_version(&self) -> Result<i64, StateError> {
        Ok(crate::migrations::latest())
    }

    async fn open_chain(&self, chain: &str) -> Result<ChainHead, StateError> {
        Ok(self.with(|t| {
            t.chains
                .entry(chain.to_string())
                .or_insert_with(|| {
                    let g = genesis(chain);
                    ChainHead {
                        chain: chain.to_string(),
                        base_seq: 0,
                        base_hash: g.clone(),
                        head_seq: 0,
                        head_hash: g,
                    }
                })
                .clone()
        }))
    }

    async fn append(
        &self,
        chain: &str,
        head_seq: i64,
        entries: Arc<[Entry]>,
    ) -> Result<(), StateError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        self.with(|t| {
            let head = t.chains.get_mut(chain).ok_or_else(|| StateError::Corrupt {
                location: "memory:".into(),
                why: format!("no audit chain `{chain}`"),
            })?;
            if head.head_seq != head_seq {
                return Err(StateError::ChainTaken {
                    location: "memory:".into(),
                    chain: chain.to_string(),
                    expected: head_seq,
                    found: head.head_seq,
                });
            }
            head.head_seq = last.seq;
            head.head_hash = last.hash.clone();
            for e in entries.iter() {
                t.audit.insert((chain.to_string(), e.seq), e.clone());
            }
            Ok(())
        })
    }

    async fn chains(&self) -> Result<Vec<ChainHead>, StateError> {
        Ok(self.with(|t| t.chains.values().cloned().collect()))
    }

    async fn entries(
        &self,
        chain: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Entry>, StateError> {
        Ok(self.with(|t| {
            t.audit
                .range((chain.to_string(), after_seq + 1)..=(chain.to_string(), i64::MAX))
                .take(limit as usize)
                .map(|(_, e)| e.clone())
                .collect()
        }))
    }

    async fn query(&self, f: &Filter) -> Result<Vec<Entry>, StateError> {
        Ok(self.with(|t| {
            let mut found: Vec<Entry> = t
                .audit
                .values()
                .filter(|e| {
                    f.plugin
                        .as_ref()
                        .is_none_or(|p| e.record.plugin.as_ref() == Some(p))
                        && f.kind.as_ref().is_none_or(|k| &e.record.kind == k)
                        && f.chain.as_ref().is_none_or(|c| &e.chain == c)
                        && f.since_ms.is_none_or(|s| e.record.at_ms >= s)
                })
                .cloned()
                .collect();
            found.sort_by(|a, b| {
                (a.record.at_ms, &a.chain, a.seq).cmp(&(b.record.at_ms, &b.chain, b.seq))
            });
            found.truncate(f.limit as usize);
            found
        }))
    }

    async fn last_before(&self, chain: &str, before_ms: i64) -> Result<Option<i64>, StateError> {
        Ok(self.with(|t| {
            t.audit
                .values()
                .filter(|e| e.chain == chain && e.record.at_ms < before_ms)
                .map(|e| e.seq)
                .max()
        }))
    }

    async fn cut(&self, chain: &str, upto_seq: i64) -> Result<(), StateError> {
        self.with(|t| {
            let hash = t
                .audit
                .get(&(chain.to_string(), upto_seq))
                .map(|e| e.hash.clone())
                .ok_or_else(|| StateError::Corrupt {
                    location: "memory:".into(),
                    why: format!("no record {upto_seq} in chain `{chain}` to cut at"),
                })?;
            t.audit.retain(|(c, seq), _| c != chain || *seq > upto_seq);
            if let Some(h) = t.chains.get_mut(chain) {
                h.base_seq = upto_seq;
                h.base_hash = hash;
            }
            Ok(())
        })
    }

    async fn register_host(&self, host: &HostRow) -> Result<(), StateError> {
        self.with(|t| t.hosts.insert(host.host.clone(), host.clone()));
        Ok(())
    }

    async fn hosts(&self) -> Result<Vec<HostRow>, StateError> {
        Ok(self.with(|t| t.hosts.values().cloned().collect()))
    }

    async fn commit_version(&self, k: &Commit) -> Result<(), StateError> {
        let (plugin, version) = (&k.plugin, &k.version);
        self.with(|t| {
            let first_seen = t
                .plugins
                .get(&plugin.id)
                .map_or(plugin.first_seen_ms, |p| p.first_seen_ms);
            t.plugins.insert(
                plugin.id.clone(),
                PluginRow {
                    first_seen_ms: first_seen,
                    ..plugin.clone()
                },
            );
            if !t.versions.iter().any(|v| {
                (&v.plugin, &v.version, &v.digest)
                    == (&version.plugin, &version.version, &version.digest)
            }) {
                t.versions.push(version.clone());
            }
            t.installations.insert(
                (k.host.clone(), version.plugin.clone()),
                Installation {
                    host: k.host.clone(),
                    plugin: version.plugin.clone(),
                    version: version.version.clone(),
                    state: k.state.clone(),
                    reason: None,
                    updated_ms: version.installed_ms,
                },
            );
            let trust = t.trust.entry(k.host.clone()).or_default();
            trust.marks.insert(version.plugin.clone(), k.mark.clone());
            if let Some(r) = &k.rotation {
                if !trust.rotations.contains(r) {
                    trust.rotations.push(r.clone());
                }
            }
        });
        Ok(())
    }

    async fn plugins(&self) -> Result<Vec<PluginRow>, StateError> {
        Ok(self.with(|t| t.plugins.values().cloned().collect()))
    }

    async fn versions(&self, plugin: &str) -> Result<Vec<VersionRow>, StateError> {
        Ok(self.with(|t| {
            t.versions
                .iter()
                .filter(|v| v.plugin == plugin)
                .cloned()
                .collect()
        }))
    }

    async fn set_installation(&self, row: &Installation) -> Result<(), StateError> {
        self.with(|t| {
            if let Some(i) = t
                .installations
                .get_mut(&(row.host.clone(), row.plugin.clone()))
                .filter(|i| i.version == row.version)
            {
                *i = row.clone();
            }
        });
        Ok(())
    }

    async fn installations(&self) -> Result<Vec<Installation>, StateError> {
        Ok(self.with(|t| t.installations.values().cloned().collect()))
    }

    async fn trust_state(&self, host: &str) -> Result<TrustState, StateError> {
        Ok(self.with(|t| t.trust.get(host).cloned().unwrap_or_default()))
    }

    async fn set_mark(&self, host: &str, plugin: &str, mark: &Mark) -> Result<(), StateError> {
        self.with(|t| {
            t.trust
                .entry(host.to_string())
                .or_default()
                .marks
                .insert(plugin.to_string(), mark.clone())
        });
        Ok(())
    }

    async fn add_rotation(&self, host: &str, text: &str) -> Result<(), StateError> {
        self.with(|t| {
            let rotations = &mut t.trust.entry(host.to_string()).or_default().rotations;
            if !rotations.iter().any(|r| r == text) {
                rotations.push(text.to_string());
            }
        });
        Ok(())
    }

    async fn claim_host(&self, _host: &str) -> Result<(), StateError> {
        // Nothing outside this process sees it.
        Ok(())
    }

    async fn set_trust_list(
        &self,
        host: &str,
        serial: u64,
        digest: &str,
    ) -> Result<(), StateError> {
        self.with(|t| {
            let s = t.trust.entry(host.to_string()).or_default();
            s.list_serial = serial;
            s.list_digest = Some(digest.to_string());
        });
        Ok(())
    }
}
