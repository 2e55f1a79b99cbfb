//! A validated [`Policy`] plus one launch's facts ([`LaunchContext`]) into the [`LaunchSpec`] the
//! shim applies.
//!
//! Why a separate step from parsing: the same policy file serves many launches with different
//! plugin and state directories, and a policy can be checked (`stockade policy check`) where those
//! directories do not exist. Everything that depends on the launch is resolved here, once, so the
//! shim makes no decisions of its own.
//!
//! What this step deliberately does not do: look at the host. Paths are neither canonicalized nor
//! required to exist. The shim binds each path at the same place inside the sandbox, recreates
//! symlinks instead of following them (so `/lib -> usr/lib` stays a link and grants nothing by
//! itself), and skips paths missing on the host. Resolving symlinks here would make the spec depend
//! on the host's state at compile time rather than at launch.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Component, Path, PathBuf};

use crate::model::*;
use crate::parse::{RESERVED_DIRS, TMP_DIR};
use crate::spec::*;

/// cgroup memory.max when `[resources] memory` is unset.
/// RLIMIT_SIGPENDING of every sandbox: queued signals.
pub const SIGPENDING_LIMIT: u64 = 256;
/// RLIMIT_MSGQUEUE of every sandbox: bytes in POSIX message queues.
pub const MSGQUEUE_LIMIT_BYTES: u64 = 64 << 10;
pub const DEFAULT_MEMORY_BYTES: u64 = 256 << 20;
/// cgroup pids.max when `[resources] pids` is unset.
pub const DEFAULT_PIDS: u64 = 64;
/// RLIMIT_NOFILE when `[resources] nofile` is unset.
pub const DEFAULT_NOFILE: u64 = 256;
/// RLIMIT_FSIZE when `[resources] fsize` is unset.
pub const DEFAULT_FSIZE_BYTES: u64 = 64 << 20;
/// Size of the private /tmp when `[resources] tmp_size` is unset.
pub const DEFAULT_TMP_SIZE_BYTES: u64 = 64 << 20;
/// The cgroup cpu.max period; `cpu = 1.0` is a quota of one whole period.
pub const CPU_PERIOD_US: u64 = 100_000;

/// What one launch knows that the policy does not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaunchContext {
    /// The program and its arguments, as executed inside the sandbox.
    pub argv: Vec<String>,
    /// The plugin's complete environment, built by the supervisor.
    pub env: Vec<(String, String)>,
    /// The host directory for `$PLUGIN_DIR`; must be absolute if the policy uses it.
    pub plugin_dir: Option<PathBuf>,
    /// The host directory for `$STATE_DIR`; must be absolute if the policy uses it.
    pub state_dir: Option<PathBuf>,
    pub hostname: String,
    /// Working directory inside the sandbox; by default `$PLUGIN_DIR` if granted, else `/`.
    pub cwd: Option<PathBuf>,
}

/// Why a policy cannot be compiled for a launch. Each says what to pass or change.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("the policy uses {var} but no directory was given for it\n  hint: {hint}")]
    MissingVariable {
        var: &'static str,
        hint: &'static str,
    },
    #[error("{var} must be an absolute path, got `{}`", path.display())]
    PathNotAbsolute { var: &'static str, path: PathBuf },
    #[error(
        "{var} must not contain `..`, got `{}`\n  hint: pass the directory it leads to",
        path.display()
    )]
    PathHasParent { var: &'static str, path: PathBuf },
    #[error("no command to run: argv is empty")]
    EmptyCommand,
    #[error("the working directory must be absolute, got `{}`", path.display())]
    CwdNotAbsolute { path: PathBuf },
    #[error(
        "`{}` is writable and `{}` executable, and one is inside the other (W^X)\n  hint: \
         choose directories that do not overlap",
        writable.display(),
        executable.display()
    )]
    WriteExecOverlap {
        writable: PathBuf,
        executable: PathBuf,
    },
    #[error(
        "`{}` resolves inside {reserved}, which the sandbox mounts itself and would hide it\n  \
         hint: choose a directory outside {reserved}",
        path.display()
    )]
    ReservedTarget {
        path: PathBuf,
        reserved: &'static str,
    },
    #[error(
        "`{}` lies inside the writable `{}`: the plugin could replace a directory on its path with \
         a symlink and have the next launch bind whatever it points to\n  hint: grant the writable \
         directory alone, or move the other path out of it",
        path.display(),
        writable.display()
    )]
    BelowWritable { path: PathBuf, writable: PathBuf },
    #[error(
        "`{}` lies below /tmp, which `tmp_exec` makes executable: Landlock's execute right there \
         reaches every path below it, so only the bind's noexec would keep the plugin's writes \
         there from running\n  hint: keep the plugin's directories outside /tmp, or drop `tmp_exec`",
        path.display()
    )]
    BelowExecutableTmp { path: PathBuf },
    #[error(
        "the [ipc] socket `{written}` is `{}` for this launch: {} bytes, and a unix socket \
         address holds at most 107\n  hint: choose a shorter directory for the variable",
        path.display(),
        path.as_os_str().len()
    )]
    SocketPathTooLong { path: PathBuf, written: String },
}

impl Policy {
    /// Whether any `[filesystem]` list uses `var`, so the launch must provide it.
    pub fn uses_var(&self, var: PathVar) -> bool {
        self.all_paths()
            .any(|(_, p)| matches!(p, PolicyPath::Var(v, _) if *v == var))
    }

    /// Every `[filesystem]` path with the access its list grants.
    fn all_paths(&self) -> impl Iterator<Item = (Access, &PolicyPath)> {
        let fs = &self.filesystem;
        let read = fs.read.iter().map(|p| (Access::Read, p));
        let exec = fs.exec.iter().map(|p| (Access::Exec, p));
        let write = fs.write.iter().map(|p| (Access::Write, p));
        read.chain(exec).chain(write)
    }

    /// Resolves the policy for one launch.
    pub fn compile(&self, ctx: &LaunchContext) -> Result<LaunchSpec, CompileError> {
        if ctx.argv.is_empty() {
            return Err(CompileError::EmptyCommand);
        }
        let plugin_dir = self.resolved_dir(PathVar::PluginDir, ctx)?;
        let state_dir = self.resolved_dir(PathVar::StateDir, ctx)?;

        let uses_tmp = self.uses_var(PathVar::Tmp);
        let mut targets: BTreeMap<PathBuf, Access> = BTreeMap::new();
        for (access, path) in self.all_paths() {
            let target = match path {
                // $TMP is the tmpfs, not a bind.
                PolicyPath::Var(PathVar::Tmp, _) => continue,
                PolicyPath::Absolute(p) => p.clone(),
                PolicyPath::Var(PathVar::PluginDir, rest) => join(&plugin_dir, rest),
                PolicyPath::Var(PathVar::StateDir, rest) => join(&state_dir, rest),
            };
            let merged = match targets.get(&target) {
                None => access,
                Some(&previous) => merge(previous, access, &target)?,
            };
            targets.insert(target, merged);
        }
        check_overlaps(&targets)?;

        let mut mounts: Vec<MountSpec> = targets
            .into_iter()
            .map(|(target, access)| MountSpec {
                source: target.clone(),
                target,
                access,
            })
            .collect();
        // Parents before children, so a child's bind lands inside its parent's rather than being
        // covered by it.
        mounts.sort_by(|a, b| {
            (a.target.components().count(), &a.target)
                .cmp(&(b.target.components().count(), &b.target))
        });

        let tmp = uses_tmp.then(|| TmpSpec {
            size_bytes: self.resources.tmp_size.unwrap_or(DEFAULT_TMP_SIZE_BYTES),
            exec: self.filesystem.tmp_exec,
        });
        // Landlock's rule for an executable /tmp covers the binds below it too (a plugin or state
        // directory under the host's /tmp): W^X would rest on their mount flags alone.
        if tmp.as_ref().is_some_and(|t| t.exec) {
            if let Some(m) = mounts.iter().find(|m| m.target.starts_with(TMP_DIR)) {
                return Err(CompileError::BelowExecutableTmp {
                    path: m.target.clone(),
                });
            }
        }

        let mut landlock_paths: Vec<(PathBuf, Access)> = mounts
            .iter()
            .map(|m| (m.target.clone(), m.access))
            .collect();
        if tmp.is_some() {
            landlock_paths.push((PathBuf::from(TMP_DIR), Access::Write));
        }
        // The shim always builds these two: a /proc of the sandbox's own pid namespace, and a /dev
        // with only null, zero, full, random, urandom and tty.
        landlock_paths.push((PathBuf::from("/proc"), Access::Read));
        landlock_paths.push((PathBuf::from("/dev"), Access::Write));

        let allow_network = self.network.mode == NetworkMode::Allow;
        let landlock = LandlockSpec {
            paths: landlock_paths,
            restrict_tcp: true,
            tcp_bind_ports: tcp_ports(&self.network.bind, allow_network),
            tcp_connect_ports: tcp_ports(&self.network.connect, allow_network),
            also_exec: match &tmp {
                Some(t) if t.exec => vec![PathBuf::from(TMP_DIR)],
                _ => Vec::new(),
            },
        };

        let ipc = self.compile_ipc(&mounts, uses_tmp, &plugin_dir, &state_dir)?;

        let r = &self.resources;
        let cwd = match &ctx.cwd {
            Some(cwd) if cwd.is_absolute() => cwd.clone(),
            Some(cwd) => return Err(CompileError::CwdNotAbsolute { path: cwd.clone() }),
            None => match &plugin_dir {
                Some(dir) if self.grants_whole(PathVar::PluginDir) => dir.clone(),
                _ => PathBuf::from("/"),
            },
        };

        Ok(LaunchSpec {
            argv: ctx.argv.clone(),
            env: ctx.env.clone(),
            cwd,
            hostname: ctx.hostname.clone(),
            uid: SANDBOX_UID,
            gid: SANDBOX_GID,
            mounts,
            tmp,
            rlimits: vec![
                RlimitSpec {
                    resource: RlimitResource::Nofile,
                    limit: r.nofile.unwrap_or(DEFAULT_NOFILE),
                },
                RlimitSpec {
                    resource: RlimitResource::Fsize,
                    limit: r.fsize.unwrap_or(DEFAULT_FSIZE_BYTES),
                },
                // Core dumps would write the plugin's memory outside its limits.
                RlimitSpec {
                    resource: RlimitResource::Core,
                    limit: 0,
                },
                // Queued signals and POSIX message-queue bytes are counted per user up the user
                // namespace tree, so a sandbox's use is also charged to the supervisor's uid: its
                // own rlimit is what bounds its share.
                RlimitSpec {
                    resource: RlimitResource::Sigpending,
                    limit: SIGPENDING_LIMIT,
                },
                RlimitSpec {
                    resource: RlimitResource::Msgqueue,
                    limit: MSGQUEUE_LIMIT_BYTES,
                },
            ],
            absent: self
                .filesystem
                .absent
                .iter()
                .filter_map(|p| match p {
                    PolicyPath::Absolute(p) => Some(p.clone()),
                    PolicyPath::Var(..) => None, // refused by the parser
                })
                .collect(),
            landlock,
            seccomp: crate::seccomp::build_program(&self.syscalls),
            network: if allow_network {
                NetworkSpec::Host
            } else {
                NetworkSpec::Isolated
            },
            resources: ResourceSpec {
                memory_bytes: r.memory.unwrap_or(DEFAULT_MEMORY_BYTES),
                pids: r.pids.unwrap_or(DEFAULT_PIDS),
                // The parser keeps cpu within [0.01, 1024], so this is 1_000..=102_400_000.
                cpu_quota_us: r
                    .cpu
                    .map(|share| (share * CPU_PERIOD_US as f64).round() as u64),
                timeout_ms: r
                    .timeout
                    .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            },
            enforce: self.enforcement.mode == EnforcementMode::Enforce,
            keep_fds: Vec::new(),
            ipc,
            armed: false,
        })
    }

    /// `[ipc]` for this launch: each socket path resolved and checked against `sun_path`'s size;
    /// the writable trees from the mounts (`/tmp` first).
    fn compile_ipc(
        &self,
        mounts: &[MountSpec],
        uses_tmp: bool,
        plugin_dir: &Option<PathBuf>,
        state_dir: &Option<PathBuf>,
    ) -> Result<IpcSpec, CompileError> {
        let mut connect = Vec::with_capacity(self.ipc.connect.len());
        for path in &self.ipc.connect {
            let resolved = match path {
                PolicyPath::Absolute(p) => p.clone(),
                PolicyPath::Var(PathVar::Tmp, rest) => Path::new(TMP_DIR).join(rest),
                PolicyPath::Var(PathVar::PluginDir, rest) => join(plugin_dir, rest),
                PolicyPath::Var(PathVar::StateDir, rest) => join(state_dir, rest),
            };
            if resolved.as_os_str().len() > crate::parse::MAX_SOCKET_PATH_BYTES {
                return Err(CompileError::SocketPathTooLong {
                    path: resolved,
                    written: path.to_string(),
                });
            }
            connect.push(resolved);
        }
        let mut writable: Vec<PathBuf> = Vec::new();
        if uses_tmp {
            writable.push(PathBuf::from(TMP_DIR));
        }
        writable.extend(
            mounts
                .iter()
                .filter(|m| m.access == Access::Write)
                .map(|m| m.target.clone()),
        );
        let mut read_only: Vec<PathBuf> = mounts
            .iter()
            .filter(|m| m.access != Access::Write)
            .map(|m| m.target.clone())
            .collect();
        read_only.push(PathBuf::from("/proc"));
        Ok(IpcSpec {
            connect,
            writable,
            read_only,
            bind_abstract: self.ipc.bind_abstract,
        })
    }

    /// Whether `var` itself (not only something below it) is granted.
    fn grants_whole(&self, var: PathVar) -> bool {
        self.all_paths()
            .any(|(_, p)| matches!(p, PolicyPath::Var(v, rest) if *v == var && rest.as_os_str().is_empty()))
    }

    /// The host directory of `var`, checked, if the policy uses it.
    fn resolved_dir(
        &self,
        var: PathVar,
        ctx: &LaunchContext,
    ) -> Result<Option<PathBuf>, CompileError> {
        if !self.uses_var(var) {
            return Ok(None);
        }
        let (given, hint) = match var {
            PathVar::PluginDir => (&ctx.plugin_dir, "pass --plugin-dir DIR"),
            PathVar::StateDir => (&ctx.state_dir, "pass --state-dir DIR"),
            PathVar::Tmp => return Ok(None),
        };
        let name = var.name();
        let path = given
            .as_ref()
            .ok_or(CompileError::MissingVariable { var: name, hint })?;
        if !path.is_absolute() {
            return Err(CompileError::PathNotAbsolute {
                var: name,
                path: path.clone(),
            });
        }
        let mut normal = PathBuf::from("/");
        for component in path.components() {
            match component {
                Component::Normal(c) => normal.push(c),
                Component::ParentDir => {
                    return Err(CompileError::PathHasParent {
                        var: name,
                        path: path.clone(),
                    })
                }
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        Ok(Some(normal))
    }
}

/// `dir` is `Some` whenever the policy uses its variable (`resolved_dir` made sure).
fn join(dir: &Option<PathBuf>, rest: &Path) -> PathBuf {
    let base = dir.clone().unwrap_or_else(|| PathBuf::from("/"));
    if rest.as_os_str().is_empty() {
        base
    } else {
        base.join(rest)
    }
}

/// One path granted by two lists: exec implies read, write implies read, write and exec exclude
/// each other (the parser catches this for literal paths; here two variables can meet).
fn merge(a: Access, b: Access, target: &Path) -> Result<Access, CompileError> {
    use Access::*;
    match (a, b) {
        (Write, Exec) | (Exec, Write) => Err(CompileError::WriteExecOverlap {
            writable: target.to_path_buf(),
            executable: target.to_path_buf(),
        }),
        (Read, other) | (other, Read) => Ok(other),
        (same, _) => Ok(same),
    }
}

/// After resolution: no bind below the mounts the shim makes after the binds (/proc, /dev), which
/// would hide it; and W^X between nested paths (Landlock rights reach below a path, so a writable
/// path inside an executable one would be both as far as Landlock is concerned).
///
/// The private /tmp takes part in neither: the shim mounts it before the binds, so a bind below
/// /tmp (a plugin directory under the host's /tmp) lands on top of it as its own mount; and the
/// tmpfs is noexec, so whatever Landlock grants below an exec path, nothing written to /tmp runs —
/// unless the policy sets `tmp_exec`, which `compile` then allows only with no bind below /tmp.
fn check_overlaps(targets: &BTreeMap<PathBuf, Access>) -> Result<(), CompileError> {
    for r in RESERVED_DIRS {
        if let Some(path) = targets.keys().find(|p| p.starts_with(r)) {
            return Err(CompileError::ReservedTarget {
                path: path.clone(),
                reserved: r,
            });
        }
    }
    // Bind sources are host paths resolved at each launch; a path below a plugin-writable one is
    // resolved through directories the plugin controls.
    //
    // Paths order by components, so the paths below `w` are the ones right after it: the first
    // path after `w` is below it if any is, and it is the first of them. One look-up per writable
    // path, where comparing each with every path took seconds for 10,000 paths.
    for (w, _) in targets.iter().filter(|(_, a)| **a == Access::Write) {
        let next = targets
            .range::<Path, _>((Bound::Excluded(w.as_path()), Bound::Unbounded))
            .next();
        if let Some((inner, _)) = next.filter(|(p, _)| p.starts_with(w)) {
            return Err(CompileError::BelowWritable {
                path: inner.clone(),
                writable: w.clone(),
            });
        }
    }
    // Past the check above nothing lies below a writable path, so an exec path overlapping a
    // writable one can only be one of its ancestors: of the writable paths in order, the first
    // with an exec ancestor, and of those ancestors the first in order (the shallowest).
    for (w, _) in targets.iter().filter(|(_, a)| **a == Access::Write) {
        let ancestors: Vec<&Path> = w.ancestors().skip(1).collect();
        let exec = ancestors
            .into_iter()
            .rev()
            .find(|x| targets.get(*x) == Some(&Access::Exec));
        if let Some(x) = exec {
            return Err(CompileError::WriteExecOverlap {
                writable: w.clone(),
                executable: x.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// The TCP ports of `rules`, expanded, sorted and unique. Landlock restricts ports only, not
/// addresses, and not UDP at all.
fn tcp_ports(rules: &[NetworkRule], allowed: bool) -> Vec<u16> {
    if !allowed {
        return Vec::new();
    }
    let mut ports: Vec<u16> = rules
        .iter()
        .filter(|r| r.protocol == Protocol::Tcp)
        .flat_map(|r| r.ports.first..=r.ports.last)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_policy;
    use std::time::Duration;

    fn policy(toml: &str) -> Policy {
        match parse_policy(toml, "test.toml") {
            Ok(p) => p,
            Err(d) => panic!("test policy does not parse:\n{d}"),
        }
    }

    fn ctx() -> LaunchContext {
        LaunchContext {
            argv: vec!["/plugin/run".into()],
            env: vec![("PATH".into(), "/usr/bin".into())],
            plugin_dir: Some("/srv/plugins/p".into()),
            state_dir: Some("/var/lib/stockade/p".into()),
            hostname: "sandbox".into(),
            cwd: None,
        }
    }

    fn mounts(spec: &LaunchSpec) -> Vec<(&str, Access)> {
        spec.mounts
            .iter()
            .map(|m| {
                assert_eq!(m.source, m.target, "binds keep their host path");
                (m.target.to_str().unwrap_or("?"), m.access)
            })
            .collect()
    }

    #[test]
    fn merges_read_and_exec_and_orders_parents_first() {
        let p = policy(
            r#"
            [filesystem]
            read = ["/usr/lib/x86_64-linux-gnu/gconv", "/etc/ld.so.cache", "/usr/lib", "$PLUGIN_DIR/data"]
            exec = ["/usr/lib", "/bin", "$PLUGIN_DIR"]
            write = ["$STATE_DIR", "$TMP"]
            "#,
        );
        let spec = p.compile(&ctx()).expect("compiles");
        assert_eq!(
            mounts(&spec),
            vec![
                ("/bin", Access::Exec),
                ("/etc/ld.so.cache", Access::Read),
                ("/usr/lib", Access::Exec),
                ("/srv/plugins/p", Access::Exec),
                ("/srv/plugins/p/data", Access::Read),
                ("/usr/lib/x86_64-linux-gnu/gconv", Access::Read),
                ("/var/lib/stockade/p", Access::Write),
            ]
        );
        assert_eq!(
            spec.tmp,
            Some(TmpSpec {
                size_bytes: DEFAULT_TMP_SIZE_BYTES,
                exec: false,
            })
        );
        let landlock: Vec<_> = spec
            .landlock
            .paths
            .iter()
            .map(|(p, a)| (p.to_str().unwrap_or("?"), *a))
            .collect();
        assert_eq!(&landlock[..7], &mounts(&spec)[..]);
        assert_eq!(
            &landlock[7..],
            &[
                ("/tmp", Access::Write),
                ("/proc", Access::Read),
                ("/dev", Access::Write)
            ]
        );
        assert_eq!(spec.cwd, PathBuf::from("/srv/plugins/p"));
    }

    #[test]
    fn read_and_write_merge_to_write() {
        let p = policy("[filesystem]\nread = [\"/srv/x\"]\nwrite = [\"/srv/x\"]\n");
        let spec = p.compile(&ctx()).expect("compiles");
        assert_eq!(mounts(&spec), vec![("/srv/x", Access::Write)]);
        assert_eq!(spec.tmp, None);
        assert_eq!(spec.cwd, PathBuf::from("/"));
    }

    #[test]
    fn missing_variables_name_the_flag() {
        let p = policy("[filesystem]\nexec = [\"$PLUGIN_DIR/bin\"]\nwrite = [\"$STATE_DIR\"]\n");
        let mut c = ctx();
        c.plugin_dir = None;
        let err = p.compile(&c).expect_err("no plugin dir");
        assert!(matches!(
            err,
            CompileError::MissingVariable {
                var: "$PLUGIN_DIR",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "the policy uses $PLUGIN_DIR but no directory was given for it\n  hint: pass --plugin-dir DIR"
        );
        let mut c = ctx();
        c.state_dir = None;
        let err = p.compile(&c).expect_err("no state dir");
        assert!(matches!(
            err,
            CompileError::MissingVariable {
                var: "$STATE_DIR",
                hint: "pass --state-dir DIR"
            }
        ));
    }

    #[test]
    fn unused_variables_are_not_required() {
        let p = policy("[filesystem]\nexec = [\"/usr/bin\"]\n");
        let c = LaunchContext {
            argv: vec!["/usr/bin/true".into()],
            ..Default::default()
        };
        assert!(p.compile(&c).is_ok());
    }

    #[test]
    fn variables_must_be_absolute_and_plain() {
        let p = policy("[filesystem]\nexec = [\"$PLUGIN_DIR\"]\n");
        let mut c = ctx();
        c.plugin_dir = Some("plugins/p".into());
        assert!(matches!(
            p.compile(&c),
            Err(CompileError::PathNotAbsolute {
                var: "$PLUGIN_DIR",
                ..
            })
        ));
        c.plugin_dir = Some("/srv/../etc".into());
        assert!(matches!(
            p.compile(&c),
            Err(CompileError::PathHasParent {
                var: "$PLUGIN_DIR",
                ..
            })
        ));
        c.plugin_dir = Some("/srv//plugins/./p/".into());
        let spec = p.compile(&c).expect("normalised");
        assert_eq!(mounts(&spec), vec![("/srv/plugins/p", Access::Exec)]);
    }

    #[test]
    fn resolved_write_exec_overlap_is_refused() {
        let p = policy("[filesystem]\nexec = [\"$PLUGIN_DIR\"]\nwrite = [\"$STATE_DIR\"]\n");
        let mut c = ctx();
        c.state_dir = Some("/srv/plugins/p/state".into());
        assert!(matches!(
            p.compile(&c),
            Err(CompileError::WriteExecOverlap { .. })
        ));
        c.state_dir = Some("/srv/plugins/p".into());
        assert!(matches!(
            p.compile(&c),
            Err(CompileError::WriteExecOverlap { .. })
        ));
    }

    #[test]
    fn paths_below_a_writable_path_are_refused() {
        // The parser refuses `$STATE_DIR/x` next to `$STATE_DIR`; only resolution shows this one.
        let p = policy("[filesystem]\nwrite = [\"$STATE_DIR\"]\nread = [\"$PLUGIN_DIR\"]\n");
        let mut c = ctx();
        c.state_dir = Some("/srv/p".into());
        c.plugin_dir = Some("/srv/p/code".into());
        let err = p.compile(&c).unwrap_err();
        assert!(matches!(err, CompileError::BelowWritable { .. }), "{err}");
    }

    #[test]
    fn binds_below_the_private_tmp_are_allowed() {
        // The shim mounts /tmp first, so the plugin directory is bound on top of it.
        let p = policy("[filesystem]\nexec = [\"$PLUGIN_DIR\"]\nwrite = [\"$TMP\"]\n");
        let mut c = ctx();
        c.plugin_dir = Some("/tmp/plugin".into());
        let spec = p.compile(&c).expect("a plugin dir below /tmp compiles");
        assert_eq!(mounts(&spec), vec![("/tmp/plugin", Access::Exec)]);
        assert!(spec.tmp.is_some());
    }

    #[test]
    fn tmp_exec_makes_only_the_private_tmp_executable() {
        let plain = policy("[filesystem]\nwrite = [\"$TMP\", \"$STATE_DIR\"]\n");
        let mut c = ctx();
        c.state_dir = Some("/srv/p".into());
        let spec = plain.compile(&c).unwrap();
        assert!(!spec.tmp.as_ref().unwrap().exec);
        assert!(spec.landlock.also_exec.is_empty());
        let p = policy("[filesystem]\nwrite = [\"$TMP\", \"$STATE_DIR\"]\ntmp_exec = true\n");
        let spec = p.compile(&c).unwrap();
        assert!(spec.tmp.as_ref().unwrap().exec);
        assert_eq!(spec.landlock.also_exec, vec![PathBuf::from("/tmp")]);
        // The state directory stays W^X.
        assert_eq!(mounts(&spec), vec![("/srv/p", Access::Write)]);
        // Not below the executable /tmp, where Landlock's execute right would reach it.
        c.state_dir = Some("/tmp/p".into());
        let err = p.compile(&c).unwrap_err();
        assert!(
            matches!(&err, CompileError::BelowExecutableTmp { path } if path == Path::new("/tmp/p")),
            "{err}"
        );
        assert!(plain.compile(&c).is_ok());
    }

    #[test]
    fn landlock_ports_are_tcp_only_expanded_and_unique() {
        let p = policy(
            r#"
            [network]
            mode = "allow"
            connect = [
                { address = "0.0.0.0/0", port = 443 },
                { address = "::/0", port = 443 },
                { address = "10.0.0.0/8", ports = "8000-8002" },
                { protocol = "udp", address = "0.0.0.0/0", port = 53 },
            ]
            bind = [{ address = "127.0.0.1", port = 8080 }]
            "#,
        );
        let spec = p.compile(&ctx()).expect("compiles");
        assert!(spec.landlock.restrict_tcp);
        assert_eq!(spec.landlock.tcp_connect_ports, vec![443, 8000, 8001, 8002]);
        assert_eq!(spec.landlock.tcp_bind_ports, vec![8080]);
        assert_eq!(spec.network, NetworkSpec::Host);
    }

    #[test]
    fn no_network_restricts_all_tcp() {
        let spec = policy("").compile(&ctx()).expect("compiles");
        assert_eq!(spec.network, NetworkSpec::Isolated);
        assert!(spec.landlock.restrict_tcp);
        assert!(spec.landlock.tcp_connect_ports.is_empty());
        assert!(spec.landlock.tcp_bind_ports.is_empty());
    }

    #[test]
    fn defaults_and_limits() {
        let spec = policy("").compile(&ctx()).expect("compiles");
        assert_eq!(
            spec.resources,
            ResourceSpec {
                memory_bytes: 256 << 20,
                pids: 64,
                cpu_quota_us: None,
                timeout_ms: None
            }
        );
        assert_eq!(
            spec.rlimits,
            vec![
                RlimitSpec {
                    resource: RlimitResource::Nofile,
                    limit: 256
                },
                RlimitSpec {
                    resource: RlimitResource::Fsize,
                    limit: 64 << 20
                },
                RlimitSpec {
                    resource: RlimitResource::Core,
                    limit: 0
                },
                RlimitSpec {
                    resource: RlimitResource::Sigpending,
                    limit: SIGPENDING_LIMIT
                },
                RlimitSpec {
                    resource: RlimitResource::Msgqueue,
                    limit: MSGQUEUE_LIMIT_BYTES
                },
            ]
        );
        assert!(spec.enforce);
        assert_eq!((spec.uid, spec.gid), (SANDBOX_UID, SANDBOX_GID));
        assert_eq!(spec.cwd, PathBuf::from("/"));
        assert!(spec.keep_fds.is_empty());
        assert!(!spec.seccomp.program.is_empty());

        let p = policy(
            r#"
            filesystem.write = ["$TMP"]
            [resources]
            memory = "1G"
            pids = 8
            cpu = 0.5
            nofile = 1024
            fsize = "1M"
            tmp_size = "16M"
            timeout = "250ms"
            [enforcement]
            mode = "monitor"
            action = "report"
            "#,
        );
        let mut c = ctx();
        c.cwd = Some("/work".into());
        let spec = p.compile(&c).expect("compiles");
        assert_eq!(
            spec.resources,
            ResourceSpec {
                memory_bytes: 1 << 30,
                pids: 8,
                cpu_quota_us: Some(50_000),
                timeout_ms: Some(250)
            }
        );
        assert_eq!(spec.rlimits[0].limit, 1024);
        assert_eq!(spec.rlimits[1].limit, 1 << 20);
        assert_eq!(
            spec.tmp,
            Some(TmpSpec {
                size_bytes: 16 << 20,
                exec: false,
            })
        );
        assert!(!spec.enforce);
        assert_eq!(spec.cwd, PathBuf::from("/work"));
        assert_eq!(p.resources.timeout, Some(Duration::from_millis(250)));
    }

    #[test]
    fn launch_facts_are_checked() {
        let p = policy("");
        let mut c = ctx();
        c.argv.clear();
        assert!(matches!(p.compile(&c), Err(CompileError::EmptyCommand)));
        let mut c = ctx();
        c.cwd = Some("work".into());
        assert!(matches!(
            p.compile(&c),
            Err(CompileError::CwdNotAbsolute { .. })
        ));
    }

    /// `check_overlaps` as first written, comparing every path with every other: the reference
    /// the ordered look-ups must agree with, error for error.
    fn quadratic_overlaps(targets: &BTreeMap<PathBuf, Access>) -> Result<(), CompileError> {
        for r in RESERVED_DIRS {
            if let Some(path) = targets.keys().find(|p| p.starts_with(r)) {
                return Err(CompileError::ReservedTarget {
                    path: path.clone(),
                    reserved: r,
                });
            }
        }
        for (w, _) in targets.iter().filter(|(_, a)| **a == Access::Write) {
            if let Some(inner) = targets.keys().find(|p| *p != w && p.starts_with(w)) {
                return Err(CompileError::BelowWritable {
                    path: inner.clone(),
                    writable: w.clone(),
                });
            }
        }
        let all = || targets.iter().map(|(p, a)| (p.as_path(), *a));
        for (w, _) in all().filter(|(_, a)| *a == Access::Write) {
            for (x, _) in all().filter(|(_, a)| *a == Access::Exec) {
                if w.starts_with(x) || x.starts_with(w) {
                    return Err(CompileError::WriteExecOverlap {
                        writable: w.to_path_buf(),
                        executable: x.to_path_buf(),
                    });
                }
            }
        }
        Ok(())
    }

    #[test]
    fn overlap_checks_match_the_quadratic_reference() {
        const POOL: &[&str] = &[
            "/", "/a", "/a/b", "/a/b/c", "/a/bc", "/ab", "/a-b", "/a/c", "/b", "/b/a", "/devx",
            "/dev/x", "/procs", "/z/y/x",
        ];
        const ACCESS: [Access; 3] = [Access::Read, Access::Write, Access::Exec];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut outcomes = [0usize; 4];
        for _ in 0..5000 {
            let targets: BTreeMap<PathBuf, Access> = (0..next(7))
                .map(|_| (PathBuf::from(POOL[next(POOL.len())]), ACCESS[next(3)]))
                .collect();
            let (fast, reference) = (check_overlaps(&targets), quadratic_overlaps(&targets));
            let outcome = match (&fast, &reference) {
                (Ok(()), Ok(())) => 0,
                (
                    Err(CompileError::ReservedTarget { path: a, .. }),
                    Err(CompileError::ReservedTarget { path: b, .. }),
                ) if a == b => 1,
                (
                    Err(CompileError::BelowWritable {
                        path: a,
                        writable: w,
                    }),
                    Err(CompileError::BelowWritable {
                        path: b,
                        writable: v,
                    }),
                ) if (a, w) == (b, v) => 2,
                (
                    Err(CompileError::WriteExecOverlap {
                        writable: a,
                        executable: x,
                    }),
                    Err(CompileError::WriteExecOverlap {
                        writable: b,
                        executable: y,
                    }),
                ) if (a, x) == (b, y) => 3,
                _ => panic!("{targets:?}: {fast:?} but the reference says {reference:?}"),
            };
            outcomes[outcome] += 1;
        }
        assert!(outcomes.iter().all(|&n| n > 50), "{outcomes:?}");
    }

    #[test]
    fn uses_var_sees_every_list() {
        let p = policy("[filesystem]\nread = [\"$STATE_DIR/cfg\"]\nwrite = [\"$TMP/x\"]\n");
        assert!(p.uses_var(PathVar::StateDir));
        assert!(p.uses_var(PathVar::Tmp));
        assert!(!p.uses_var(PathVar::PluginDir));
    }
}
