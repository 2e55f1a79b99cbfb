//! `stockade-daemon` (run as `stockade daemon`): hosts plugins as long-lived sandboxed services.
//!
//! Start-up: root check, the database opened (the registry and the audit log; the daemon never
//! runs unaudited), the trust set up (keys, rotations, the trust list, the host's trust
//! state; any problem stops the daemon before anything exists), the cgroups of sandboxes a killed
//! daemon left are swept, this daemon's store of sealed copies taken (stores of daemons that are
//! gone removed), the eBPF monitors loaded once (or the host's set joined), the control socket
//! bound, then every package in the `--plugins` directories loaded. SIGTERM or SIGINT stops every plugin and exits 0.

mod audit;
mod conn;
mod control;
mod export;
mod host;
mod logs;
mod metrics;
mod notify;
mod sandbox;
mod state;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "stockade daemon",
    version,
    about = "Stockade's plugin host: plugins as long-lived sandboxed services"
)]
struct Args {
    /// The configuration file [default: /etc/stockade/daemon.toml, when it exists]; flags win
    /// over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The control socket (default /run/stockade/stockade.sock, or STOCKADE_SOCKET).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// A directory of plugin packages (each a directory with plugin.toml), loaded at start.
    #[arg(long = "plugins", value_name = "DIR")]
    plugins: Vec<PathBuf>,
    /// Where the daemon keeps its state: per-plugin state directories and uid ranges
    /// [default: /var/lib/stockade].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// A non-root uid that may use the control socket (repeatable).
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,
    /// A publisher's public key (NAME.pub) whose signed plugins run `trusted` (repeatable; adds
    /// to `keys` in [trust] of the configuration).
    #[arg(long = "pubkey", value_name = "FILE")]
    pubkey: Vec<PathBuf>,
    /// Load unsigned packages too, at `untrusted` (enforce mode). For development: each such
    /// load is logged.
    #[arg(long)]
    allow_unsigned: bool,
    /// Where the registry and the audit log are: sqlite:PATH, postgres://USER:PASSWORD@HOST/DB,
    /// or memory: (tests) [default: sqlite:<state dir>/stockade.db].
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// This host's name in the database (its audit chain, trust state and installations)
    /// [default: the host name].
    #[arg(long, value_name = "ID")]
    host_id: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (ADDR: an address and port, such as
    /// 127.0.0.1:9464) [default: `[metrics] listen` of the configuration; else off].
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

fn main() -> ExitCode {
    // One sandbox thread per plugin: glibc would give each thread that allocates a malloc arena
    // of its own, which keeps what the launch (the `[ipc]` walk) freed, megabytes per plugin.
    // SAFETY: mallopt before any other thread exists; it only sets an allocator parameter.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    init_logging();
    let args = Args::parse();
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stockade daemon: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn start(mut args: Args) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "the daemon needs root: it maps user ids and creates cgroups for each sandbox\n  \
             hint: run it with sudo, or as the stockade systemd service"
        );
    }
    let config = stockade::daemon_config::read(args.config.as_deref())?.unwrap_or_default();
    args.socket = args.socket.or(config.socket);
    let state_dir = args
        .state_dir
        .or(config.state_dir)
        .unwrap_or_else(|| PathBuf::from("/var/lib/stockade"));
    let mut plugins = config.plugins;
    plugins.append(&mut args.plugins);
    let mut allow_uid = config.allow_uids;
    allow_uid.append(&mut args.allow_uid);
    let database = args
        .database
        .or(config.database)
        .unwrap_or_else(|| stockade::daemon_config::default_database(&state_dir));
    let location = stockade_state::Location::parse(&database)
        .map_err(|e| anyhow::anyhow!("--database: {e}\n  hint: {}", e.hint()))?;
    if let Some(id) = args.host_id.as_deref() {
        if !stockade::daemon_config::valid_host_id(id) {
            anyhow::bail!(
                "--host-id `{id}`: not a host id\n  hint: 1 to 64 letters, digits, `.`, `_` or `-`"
            );
        }
    }
    let host_id =
        stockade::daemon_config::host_id(args.host_id.as_deref().or(config.host_id.as_deref()));
    let options = stockade_state::Options {
        sync: match config.audit.sync.as_deref() {
            Some("normal") => stockade_state::Sync::Normal,
            _ => stockade_state::Sync::Full,
        },
        read_only: false,
    };
    let audit_wait = std::time::Duration::from_secs(config.audit.wait.unwrap_or(30));
    // Half the cores for the daemon's async work (at least one): the plugins answering its calls
    // need the rest. Measured on 2 cores, one worker serves 72,000 calls/s where two, contending
    // with each other and the plugin, served 59,000 (docs/benchmarks.md).
    let workers = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    // The state directory before the database in it: the sandboxes reach their sealed copies
    // through it (a database directory made first would be 0700).
    std::fs::create_dir_all(state_dir.join("plugins")).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the state directory {}: {e}",
            state_dir.display()
        )
    })?;
    // The state first: a database that cannot be opened, or written, stops the daemon here.
    let opened = runtime.block_on(state::open(
        &location,
        &options,
        &host_id,
        config.audit.queue.unwrap_or(state::DEFAULT_QUEUE),
        &state_dir,
    ))?;
    let before = {
        let (marks, rotations, serial, digest) = opened.ratchet.parts();
        stockade_state::TrustState {
            marks: marks.clone(),
            rotations: rotations.to_vec(),
            list_serial: serial,
            list_digest: digest.map(str::to_string),
        }
    };
    let mut ratchet = opened.ratchet;
    // Then the trust: a configuration that names a bad key, rotation or list stops here, before
    // anything exists.
    let keyring = stockade::daemon_config::daemon_keyring(
        &config.trust,
        &args.pubkey,
        args.allow_unsigned,
        &mut ratchet,
        true,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    runtime.block_on(state::store_trust(
        opened.storage.as_ref(),
        &host_id,
        &before,
        &ratchet,
    ))?;
    if keyring.allow_unsigned {
        tracing::warn!(
            "unsigned packages are allowed (--allow-unsigned): a development mode; they run untrusted"
        );
    }
    tracing::info!(
        keys = keyring.pinned().len(),
        revoked = keyring.revoked().count(),
        trust_list = keyring.list.as_ref().map(|l| l.serial),
        "trust set up"
    );
    let layout = stockade::cgroup::Layout::detect().map_err(|e| {
        anyhow::anyhow!("cgroups: {e}\n  hint: `stockade doctor` shows what this host offers")
    })?;
    // A unit with Delegate=yes hands the daemon its cgroup: the daemon moves into a leaf of it
    // (every thread: cgroup.procs moves the process) before any sandbox exists; its sandboxes go
    // beside the leaf.
    match stockade::cgroup::enter_delegated_leaf(&layout) {
        Ok(Some(leaf)) => tracing::info!(
            "the service manager delegated this cgroup: the daemon runs in {} and its sandboxes beside it",
            leaf.display()
        ),
        Ok(None) => {}
        Err(e) => anyhow::bail!(
            "cgroups: the delegated cgroup cannot hold sandboxes: {e}\n  hint: the unit needs Delegate=yes (or Delegate=memory pids cpu); `stockade doctor` shows what this host offers"
        ),
    }
    stockade::cgroup::sweep_orphans(&layout);
    raise_open_files();
    // Sealed copies of packages: one store per daemon process, held by a lock; the stores of
    // daemons (and runs) that are gone are removed: nothing runs from them now.
    let store_root = state_dir.join("store");
    let store = stockade_trust::snapshot::Store::open(&store_root, &std::process::id().to_string())
        .map_err(|e| anyhow::anyhow!("cannot create the store {}: {e}", store_root.display()))?;
    // The monitors once for every plugin (joining the host's set where one is loaded); each
    // sandbox joins this set. A host without them still serves monitor-mode (trusted) plugins;
    // an untrusted one refuses to start without them (fail closed, per sandbox).
    let monitor = match stockade::monitor::Monitor::open_for(true) {
        Ok(m) => Some(std::sync::Arc::new(std::sync::Mutex::new(m))),
        Err(e) => {
            tracing::warn!("the eBPF monitors cannot load ({e}): untrusted plugins will not start");
            None
        }
    };
    let socket = stockade::control::socket_path(args.socket.as_deref());
    let access = control::Access { uids: allow_uid };
    let (storage, audit) = (opened.storage, opened.audit);
    let shown = location.display();
    runtime.block_on(state::started(storage.as_ref(), &audit, &host_id, &shown))?;
    // How the records reach the database (for a server: TLS, and whether it was authenticated).
    let transport = runtime
        .block_on(storage.transport())
        .unwrap_or_else(|e| e.to_string());
    tracing::info!(database = %shown, %transport, host = %host_id, "state opened");
    let probe = stockade::probe::Probe::run();
    let metrics_at = args.metrics.or(config.metrics.listen);
    // Held until the daemon exits: the kernel counts the programs' run time meanwhile.
    let _bpf_stats = if config.metrics.bpf_stats {
        match stockade::monitor::enable_run_time_stats() {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!("[metrics] bpf_stats: the kernel refused BPF_ENABLE_STATS: {e}");
                None
            }
        }
    } else {
        None
    };
    let result = runtime.block_on(async {
        // The signal handlers before the socket: whoever sees the socket may stop the daemon,
        // and a SIGTERM between the two would otherwise be missed (tokio delivers a signal only
        // to streams that exist when it arrives).
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let listener = control::bind(&socket, &access)?;
        let host = host::Host::new(
            host::Config {
                state_root: state_dir.clone(),
                store: store.dir.clone(),
                monitor: monitor.clone(),
                storage: storage.clone(),
                audit: audit.clone(),
                host_id: host_id.clone(),
                audit_wait,
                probe,
                export: config.export.clone(),
                max_armed: config
                    .per_call
                    .max_armed
                    .unwrap_or(stockade::daemon_config::DEFAULT_MAX_ARMED)
                    as usize,
            },
            keyring,
            ratchet,
        );
        let policy = stockade_state::retention::Policy {
            max_age: config
                .audit
                .retain_days
                .map(|d| std::time::Duration::from_secs(d * 86_400)),
            max_records: config.audit.retain_records,
        };
        if policy.is_set() {
            tokio::spawn(state::retain(
                storage.clone(),
                audit.clone(),
                policy,
                config
                    .audit
                    .export_dir
                    .clone()
                    .unwrap_or_else(|| state_dir.join("audit-export")),
            ));
        }
        let server = tokio::spawn(control::serve(listener, host.clone(), access));
        tracing::info!(socket = %socket.display(), "listening");
        if let Some(addr) = metrics_at {
            // Metrics are for the operator; the plugins' enforcement never waits on them. An
            // address that cannot be had is reported, and the daemon serves without metrics.
            match metrics::bind(addr).await {
                Ok(l) => {
                    tracing::info!("metrics at http://{}/metrics", l.local_addr().unwrap_or(addr));
                    tokio::spawn(metrics::serve(l, host.clone()));
                }
                Err(e) => tracing::error!(
                    "metrics: cannot listen on {addr}: {e}; serving plugins without metrics (hint: choose a free port with --metrics or [metrics] listen)"
                ),
            }
        }
        notify::ready(host.clone());
        // A SIGTERM while the packages load stops the daemon cleanly too (the loads under way
        // finish, then everything is stopped; later ones are refused).
        let loader = host.clone();
        tokio::spawn(async move {
            for dir in &plugins {
                load_directory(&loader, dir).await;
            }
        });
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping every plugin"),
            _ = int.recv() => tracing::info!("SIGINT: stopping every plugin"),
        }
        // The plugins' longest stop, then the export's 2 s and the audit log's 10 s below, and
        // a margin.
        notify::stopping(host.longest_stop() + std::time::Duration::from_secs(20));
        server.abort();
        let _ = std::fs::remove_file(&socket);
        host.stop_all().await;
        host.flush_registry().await;
        host.close_export(std::time::Duration::from_secs(2));
        // The stop recorded and everything queued committed: one deadline for both.
        let stopped = stockade_state::chain::Record::new(
            "daemon",
            None,
            &serde_json::json!({ "event": "stopped", "pid": std::process::id() }),
        );
        audit.append_always(stopped);
        let left = audit.close(std::time::Duration::from_secs(10)).await;
        if left > 0 {
            tracing::error!(
                "the audit log: {left} records could not be committed before the daemon stopped"
            );
        }
        anyhow::Ok(())
    });
    // The runtime (and any verification still in its blocking pool) is gone before the store.
    drop(runtime);
    drop(monitor);
    drop(store);
    result
}

/// The daemon's own log: to the journal, with its fields, when stderr is the journal's stream
/// (a systemd service's default: `JOURNAL_STREAM` names stderr's device and inode); else lines
/// on stderr. In the journal a field `plugin` is `STOCKADE_PLUGIN`, and so on: `STOCKADE_TRUST`,
/// `STOCKADE_STATE`, `STOCKADE_VERSION`, `STOCKADE_REQUEST_ID`, `STOCKADE_METHOD` (the prefix and
/// names of the event export's journal entries, docs/events.md, which has `STOCKADE_PLUGIN` and
/// `STOCKADE_REQUEST_ID` too), with syslog's priority of its level (error 3, warn 4, info 6).
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("STOCKADE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if stderr_is_the_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(
                        layer
                            .with_field_prefix(Some("STOCKADE".into()))
                            // syslog's meaning of the levels (the crate's default makes every
                            // info line a notice).
                            .with_priority_mappings(tracing_journald::PriorityMappings {
                                info: tracing_journald::Priority::Informational,
                                debug: tracing_journald::Priority::Debug,
                                ..tracing_journald::PriorityMappings::new()
                            }),
                    )
                    .init();
                return;
            }
            Err(e) => eprintln!(
                "stockade daemon: the journal's socket: {e}; logging to stderr without fields"
            ),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// `JOURNAL_STREAM` is `DEVICE:INODE` of the stream systemd connected stdout and stderr to; a
/// stderr redirected since (or inherited by a child started by hand) is not the journal.
fn stderr_is_the_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat of descriptor 2 into a zeroed stat struct the call fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; a closed descriptor 2 makes it fail, which is answered with false.
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev == dev && st.st_ino == ino
}

/// Each plugin's run holds a few dozen descriptors (its socket and pipes, its sandbox's pidfd and
/// cgroup, its handles on the monitors' maps): the soft limit goes up to the hard one.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Loads every package (a directory with plugin.toml) found in `dir`; a bad one is logged and
/// skipped, the others load.
async fn load_directory(host: &std::sync::Arc<host::Host>, dir: &std::path::Path) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("--plugins {}: {e}", dir.display());
            return;
        }
    };
    let mut packages: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(stockade_policy::manifest::MANIFEST_FILE).is_file())
        .collect();
    packages.sort();
    for package in packages {
        match host.load(&package, None, false).await {
            Ok(status) => tracing::info!(
                plugin = status["id"].as_str().unwrap_or("?"),
                "loaded from {}",
                package.display()
            ),
            Err(e) => tracing::error!("{}: {}", package.display(), e.message),
        }
    }
}
