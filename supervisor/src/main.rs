//! The `stockade` command line: `run`, `policy check|explain|schema`, `doctor`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stockade::cgroup::Layout;
use stockade::launcher::{Shim, ShimMode, HOST_ID_BASE};
use stockade::monitor::report::Threshold;
use stockade::monitor::rules::NetPolicy;
use stockade::monitor::{ArmSpec, LsmSpec, Monitor};
use stockade::probe::Probe;
use stockade::sandbox;
use stockade::signals::StopSignals;
use stockade_policy::model::{NetworkMode, ThresholdAction};
use stockade_policy::{
    load_policy, Access, EnforcementMode, LaunchContext, LaunchSpec, LoadError, Policy, SANDBOX_UID,
};

#[derive(Parser)]
#[command(
    name = "stockade",
    version,
    about = "A sandbox supervisor for untrusted plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a sandbox under a policy, once, and report how it ended.
    Run(RunArgs),
    /// Check, explain or describe policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The host's shared eBPF monitors: keep them loaded between runs, remove them, or list them.
    #[command(subcommand)]
    Monitors(MonitorsCommand),
    /// Plugin packages (a directory with plugin.toml).
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Probe what each isolation layer can do on this kernel.
    Doctor {
        /// Print the probe as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The policy file (TOML; see docs/policy.md).
    #[arg(long, short = 'p', value_name = "FILE")]
    policy: PathBuf,
    /// The directory that `$PLUGIN_DIR` stands for [default: the command's directory, when the
    /// command is given as a path; stockade says which]. Never `/`, `/tmp`, a top-level system
    /// directory, anything in /proc, /sys or /dev, or a directory every user may write to.
    #[arg(long, value_name = "DIR")]
    plugin_dir: Option<PathBuf>,
    /// The writable directory that `$STATE_DIR` stands for (its owner becomes the plugin's uid).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// An environment variable for the plugin (repeatable); nothing else is inherited but TERM.
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// A wall-clock limit for this run ("30s", "5m", "250ms"), replacing the policy's.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Write the end-of-run summary as one JSON line on stderr instead of text.
    #[arg(long)]
    json: bool,
    /// Print no summary.
    #[arg(long, short = 'q', conflicts_with = "json")]
    quiet: bool,
    /// Write every monitor event to FILE as JSON lines: violations, refusals, every file opened,
    /// fork, exec and exit.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// The command and its arguments, as seen inside the sandbox.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files; report every error with its line and column.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Say in plain words what each layer will enforce for a policy on this kernel (a policy
    /// file, or a plugin package's directory: the policy its plugin runs under).
    Explain {
        #[arg(value_name = "FILE|DIR")]
        file: PathBuf,
    },
    /// Print the JSON Schema of policy files (for editors).
    Schema,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Validate a package offline: its manifest, its policy, and its entry program; report every
    /// error of the manifest with its line and column.
    Check {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Print what was checked as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MonitorsCommand {
    /// Load the monitors (or join the loaded ones) and keep them loaded when their last user
    /// ends: every later `stockade run` starts without loading them.
    Up,
    /// Stop keeping them: they are removed now, or when their last user ends.
    Down,
    /// The sets of monitors pinned on this host, their users and their slots.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A user-facing failure: one line of cause, one of hint, and the exit code.
struct Failure {
    cause: String,
    hint: Option<String>,
    code: u8,
}

impl Failure {
    fn usage(cause: impl Into<String>, hint: impl Into<String>) -> Failure {
        Failure {
            cause: cause.into(),
            hint: Some(hint.into()),
            code: 2,
        }
    }

    fn internal(cause: impl Into<String>, hint: Option<String>) -> Failure {
        Failure {
            cause: cause.into(),
            hint,
            code: 1,
        }
    }
}

/// When the process started, for the debug log's phase timings (STOCKADE_LOG=debug).
static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn phase(what: &str) {
    if let Some(start) = START.get() {
        tracing::debug!(
            since_start_us = start.elapsed().as_micros() as u64,
            "{what}"
        );
    }
}

fn main() -> ExitCode {
    START.get_or_init(std::time::Instant::now);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("STOCKADE_LOG"))
        .without_time()
        .init();
    phase("logging ready");
    let cli = Cli::parse();
    phase("arguments parsed");
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Policy(PolicyCommand::Check { files }) => policy_check(&files),
        Command::Policy(PolicyCommand::Explain { file }) => policy_explain(&file),
        Command::Policy(PolicyCommand::Schema) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&stockade_policy::schema::json_schema())
                    .unwrap_or_default()
            );
            Ok(0)
        }
        Command::Monitors(command) => monitors(command),
        Command::Plugin(PluginCommand::Check { dir, json }) => plugin_check(&dir, json),
        Command::Doctor { json } => doctor(json),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("stockade: error: {}", f.cause);
            if let Some(hint) = f.hint {
                eprintln!("  hint: {hint}");
            }
            ExitCode::from(f.code)
        }
    }
}

fn load(path: &Path) -> Result<Policy, Failure> {
    load_policy(path).map_err(|e| match e {
        LoadError::Invalid(diags) => Failure {
            cause: format!("{} is not a valid policy:\n{diags}", path.display()),
            hint: Some(format!(
                "`stockade policy check {}` lists every error",
                path.display()
            )),
            code: 2,
        },
        other => Failure::usage(
            other.to_string(),
            other
                .hint()
                .unwrap_or("check the path and that it is readable"),
        ),
    })
}

fn policy_check(files: &[PathBuf]) -> Result<u8, Failure> {
    let mut failed = false;
    for file in files {
        match load_policy(file) {
            Ok(_) => println!("{}: ok", file.display()),
            Err(LoadError::Invalid(diags)) => {
                failed = true;
                print_diagnostics(&diags);
            }
            Err(other) => {
                failed = true;
                eprintln!("stockade: error: {other}");
                if let Some(hint) = other.hint() {
                    eprintln!("  hint: {hint}");
                }
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

fn policy_explain(file: &Path) -> Result<u8, Failure> {
    if file.is_dir() {
        let package = load_package(file)?;
        let m = &package.manifest;
        println!(
            "package {} {} ({}), {}: policy {}{}\n",
            m.id,
            m.version,
            m.name,
            m.trust.name(),
            package.policy_label,
            if m.trust == stockade_policy::manifest::Trust::Untrusted {
                ", in enforce mode whatever it says"
            } else {
                ""
            }
        );
        print!(
            "{}",
            stockade::explain::explain(&package.policy, &Probe::run())
        );
        return Ok(0);
    }
    let policy = load(file)?;
    print!("{}", stockade::explain::explain(&policy, &Probe::run()));
    Ok(0)
}

fn load_package(dir: &Path) -> Result<stockade::package::Package, Failure> {
    stockade::package::load(dir).map_err(|e| package_failure(dir, e))
}

fn package_failure(dir: &Path, e: stockade::package::PackageError) -> Failure {
    use stockade::package::PackageError;
    match &e {
        PackageError::Manifest(d) | PackageError::Policy(d) => Failure {
            cause: format!(
                "{} is not a valid plugin package:\n{}",
                dir.display(),
                d.to_string().trim_end()
            ),
            hint: Some(format!(
                "`stockade plugin check {}` lists every error",
                dir.display()
            )),
            code: 2,
        },
        _ => Failure::usage(
            format!("{}: {e}", dir.display()),
            e.hint().unwrap_or_else(|| "see docs/plugins.md".into()),
        ),
    }
}

/// Every diagnostic of a file on stderr, one per line (with its hint).
fn print_diagnostics(d: &stockade_policy::Diagnostics) {
    let text = d.to_string();
    eprint!("{text}");
    if !text.ends_with('\n') {
        eprintln!();
    }
}

fn plugin_check(dir: &Path, json: bool) -> Result<u8, Failure> {
    let package = match stockade::package::load(dir) {
        Ok(p) => p,
        Err(
            stockade::package::PackageError::Manifest(d)
            | stockade::package::PackageError::Policy(d),
        ) => {
            print_diagnostics(&d);
            return Ok(1);
        }
        Err(e) => return Err(package_failure(dir, e)),
    };
    let m = &package.manifest;
    let mode = if package.policy.enforcement.mode == EnforcementMode::Enforce {
        "enforce"
    } else {
        "monitor"
    };
    if json {
        let methods: serde_json::Map<String, serde_json::Value> = m
            .methods
            .iter()
            .map(|(name, method)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "params": method.params,
                        "result": method.result,
                        "timeout_ms": method.timeout.as_millis() as u64,
                        "max_in_flight": method.max_in_flight,
                    }),
                )
            })
            .collect();
        let l = &m.lifecycle;
        let value = serde_json::json!({
            "dir": package.dir,
            "id": m.id,
            "name": m.name,
            "version": m.version.to_string(),
            "description": m.description,
            "author": m.author,
            "trust": m.trust.name(),
            "policy": package.policy_label,
            "mode": mode,
            "entry": m.entry,
            "entry_path": package.entry,
            "entry_sha3_512": package.entry_sha3_512,
            "methods": methods,
            "lifecycle": {
                "restart": l.restart.name(),
                "start_limit": l.start_limit,
                "start_window_ms": l.start_window.as_millis() as u64,
                "backoff_min_ms": l.backoff_min.as_millis() as u64,
                "backoff_max_ms": l.backoff_max.as_millis() as u64,
                "stable_after_ms": l.stable_after.as_millis() as u64,
                "heartbeat_ms": l.heartbeat.as_millis() as u64,
                "init_timeout_ms": l.init_timeout.as_millis() as u64,
                "stop_timeout_ms": l.stop_timeout.as_millis() as u64,
            },
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(0);
    }
    println!("{}: ok", package.dir.display());
    println!("  plugin   {} {} ({})", m.id, m.version, m.name);
    println!("  trust    {} ({mode} mode)", m.trust.name());
    println!("  policy   {}", package.policy_label);
    println!("  entry    {}", m.entry.join(" "));
    println!("  sha3-512 {}", package.entry_sha3_512);
    if m.methods.is_empty() {
        println!("  methods  none (the host forwards no call but initialize, ping and shutdown)");
    }
    for (name, method) in &m.methods {
        println!(
            "  method   {name} (timeout {:.1} s, at most {} in flight{})",
            method.timeout.as_secs_f64(),
            method.max_in_flight,
            if method.result.is_some() {
                ", result checked"
            } else {
                ""
            }
        );
    }
    Ok(0)
}

fn monitors(command: MonitorsCommand) -> Result<u8, Failure> {
    use stockade::monitor::host;
    let failed = |e: stockade::monitor::MonitorError| {
        Failure::internal(
            format!("the host's monitors: {e}"),
            Some(
                "run as root; `stockade doctor` says which eBPF programs load on this kernel"
                    .into(),
            ),
        )
    };
    match command {
        MonitorsCommand::Up => {
            let monitor = Monitor::open().map_err(failed)?;
            monitor.keep().map_err(failed)?;
            println!(
                "monitors {} ({}): {}; kept loaded until `stockade monitors down`",
                host::set_id(),
                host::PIN_ROOT,
                if monitor.loaded {
                    "loaded"
                } else {
                    "already loaded"
                }
            );
            for status in monitor.capabilities().all() {
                let state = if status.active { "active" } else { "inactive" };
                println!("  {:<15} {state}: {}", status.name, status.detail);
            }
            Ok(0)
        }
        MonitorsCommand::Down => {
            if !Path::new(host::RUN_ROOT).exists() {
                println!("no monitors are loaded");
                return Ok(0);
            }
            let _setup = host::SetupLock::take().map_err(failed)?;
            let sets = host::status();
            if sets.is_empty() {
                println!("no monitors are loaded");
            }
            for set in sets {
                let dirs = host::SetDirs::of(&set.id);
                host::make_dirs(&dirs).map_err(failed)?;
                dirs.set_persistent(false).map_err(failed)?;
                let users = dirs.users_lock().map_err(failed)?;
                // A tracepoint no sandbox wants (its wanter was killed) goes either way.
                dirs.settle_tracepoint();
                if dirs.unused(&users) {
                    dirs.remove();
                    println!("monitors {}: removed", set.id);
                } else {
                    println!(
                        "monitors {}: in use by {}; removed when the last of them ends",
                        set.id,
                        set.users
                            .iter()
                            .map(|p| format!("pid {p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            Ok(0)
        }
        MonitorsCommand::Status { json } => {
            let sets = host::status();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&sets).unwrap_or_default()
                );
                return Ok(0);
            }
            if sets.is_empty() {
                println!("no monitors are loaded (each `stockade run` loads them for its own life; `stockade monitors up` keeps them)");
            }
            for set in sets {
                println!(
                    "monitors {}{}: {}{}",
                    set.id,
                    if set.this_build {
                        ""
                    } else {
                        " (another build)"
                    },
                    if set.loaded { "loaded" } else { "incomplete" },
                    if set.persistent { ", persistent" } else { "" }
                );
                println!("  pinned at  {}", set.pins);
                if let Some(pid) = set.loaded_by {
                    println!("  loaded by  pid {pid}");
                }
                println!(
                    "  users      {}",
                    if set.users.is_empty() && !set.persistent {
                        "none, and not kept: left by a killed supervisor (or being loaded this moment); `stockade monitors down` removes it".to_string()
                    } else if set.users.is_empty() {
                        "none".to_string()
                    } else {
                        set.users
                            .iter()
                            .map(|p| format!("pid {p}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
                println!(
                    "  syscall tracepoint {}",
                    if !set.syscall_tracepoint {
                        "detached (no sandbox wants it: host syscalls pay nothing)".to_string()
                    } else if !set.this_build {
                        "attached (another build's set; `stockade monitors down` removes it once \
                         unused)"
                            .to_string()
                    } else if set.tracepoint_users.is_empty() {
                        "attached, wanted by nobody: left by a killed supervisor; the next run \
                         detaches it"
                            .to_string()
                    } else {
                        format!(
                            "attached (every host syscall passes it), wanted by {}",
                            set.tracepoint_users
                                .iter()
                                .map(|p| format!("pid {p}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                );
                for slot in &set.slots {
                    println!(
                        "  slot {:<3}   {} cgroup {} ({})",
                        slot.slot,
                        slot.owner.map_or_else(
                            || "left without cleanup (reclaimed when the slot is taken):".into(),
                            |p| format!("pid {p}:")
                        ),
                        slot.cgroup_id,
                        slot.cgroup
                    );
                }
            }
            Ok(0)
        }
    }
}

/// What reports violations of a sandbox without the syscall tracepoint, on this kernel: the
/// hooks where denials happen.
fn untraced_sources(monitors: &[stockade::monitor::MonitorStatus]) -> Vec<&'static str> {
    let active = |name: &str| monitors.iter().any(|m| m.name == name && m.active);
    let mut sources = Vec::new();
    if active("syscalls") {
        sources.push("seccomp kills (signal tracepoint)");
    }
    if active("network") {
        sources.push("network denials (cgroup programs)");
    }
    if active("unix sockets") {
        sources.push("unix socket denials (cgroup programs)");
    }
    if active("lsm") {
        sources.push("the LSM wall and unix sockets reached (BPF LSM)");
    }
    if sources.is_empty() {
        sources.push("nothing");
    }
    sources
}

fn doctor(json: bool) -> Result<u8, Failure> {
    let probe = Probe::run();
    let missing = probe.missing_required();
    // Loading Stockade's own programs is the real test of the monitors (verifier included).
    let monitors: Result<Vec<stockade::monitor::MonitorStatus>, String> =
        stockade::monitor::probe()
            .map(|caps| caps.all().into_iter().cloned().collect())
            .map_err(|e| e.to_string());
    if json {
        let mut value = serde_json::to_value(&probe).unwrap_or_default();
        value["monitors"] = match &monitors {
            Ok(list) => serde_json::to_value(list).unwrap_or_default(),
            Err(e) => serde_json::json!({ "error": e }),
        };
        value["monitor_sets"] =
            serde_json::to_value(stockade::monitor::host::status()).unwrap_or_default();
        if let Ok(list) = &monitors {
            value["untraced_sources"] = serde_json::json!(untraced_sources(list));
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        let ok = |b: bool| if b { "yes" } else { "NO" };
        println!("kernel                {}", probe.kernel);
        println!(
            "user namespaces       {}",
            probe.user_namespaces.as_ref().map_or_else(
                |e| format!("NO: {e}"),
                |_| "yes (user, mount, pid, ipc, uts, net, cgroup)".into()
            )
        );
        println!(
            "landlock              {}",
            if probe.landlock_abi > 0 {
                format!("ABI {}", probe.landlock_abi)
            } else {
                "NO".into()
            }
        );
        println!(
            "seccomp filters       {}",
            ok(probe.seccomp_filter && probe.seccomp_kill_process)
        );
        println!(
            "cgroups               {}",
            probe
                .cgroups
                .as_ref()
                .map_or_else(|e| format!("NO: {e}"), |l| l.clone())
        );
        println!("mount_setattr         {}", ok(probe.mount_setattr));
        println!("memfd_noexec sysctl   {}", ok(probe.memfd_noexec));
        if let Some(v) = probe.io_uring_disabled {
            println!(
                "io_uring_disabled     {v} (io_uring is denied by the seccomp profiles regardless)"
            );
        }
        if let Some(v) = probe.legacy_tiocsti {
            println!("legacy_tiocsti        {v} (sandboxes get their own session and TIOCSTI is filtered)");
        }
        for (ty, result) in &probe.bpf {
            println!(
                "bpf {:<17} {}",
                ty,
                result
                    .as_ref()
                    .map_or_else(|e| format!("NO: {e}"), |_| "loads".into())
            );
        }
        match &monitors {
            Ok(list) => {
                for m in list {
                    println!(
                        "monitor {:<14} {}: {}",
                        m.name,
                        if m.active { "active" } else { "NOT ACTIVE" },
                        m.detail
                    );
                }
            }
            Err(e) => println!("monitors              NO: {e}"),
        }
        if let Ok(list) = &monitors {
            println!(
                "without the tracepoint  ([monitor] syscall_tracepoint = false) a sandbox's violations come \
                 from: {}; seccomp errno, Landlock, mount and hidden-path refusals and resource \
                 limits are enforced but not seen",
                untraced_sources(list).join(", ")
            );
        }
        let sets = stockade::monitor::host::status();
        if sets.is_empty() {
            println!("host's monitor set    none loaded (each run loads it; `stockade monitors up` keeps it)");
        }
        for set in &sets {
            println!(
                "host's monitor set    {}{}: {}, {} user(s), {} slot(s) held{}",
                set.id,
                if set.this_build {
                    ""
                } else {
                    " (another build)"
                },
                if set.loaded { "loaded" } else { "incomplete" },
                set.users.len(),
                set.slots.len(),
                if set.persistent {
                    ", kept (`monitors up`)"
                } else {
                    ""
                }
            );
        }
        if missing.is_empty() {
            println!("\nevery layer the default profile requires is available");
        } else {
            for (layer, why) in &missing {
                println!("\nMISSING {layer}: {why}");
            }
        }
    }
    Ok(if missing.is_empty() { 0 } else { 1 })
}

fn run(args: RunArgs) -> Result<u8, Failure> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Failure::usage(
            "stockade run needs root: it maps user ids and creates cgroups for each sandbox",
            "run it with sudo, or as the stockade systemd service",
        ));
    }
    let mut policy = load(&args.policy)?;
    phase("policy loaded");
    if let Some(raw) = &args.timeout {
        let timeout = stockade_policy::parse_duration_arg(raw).map_err(|(message, hint)| {
            Failure::usage(
                format!("--timeout: {message}"),
                hint.unwrap_or_else(|| "for example --timeout 30s".into()),
            )
        })?;
        policy.resources.timeout = Some(timeout);
    }
    if args.events.is_some() && !policy.monitor.syscall_tracepoint {
        return Err(Failure::usage(
            "--events records the plugin's opens and refusals from the syscall tracepoint, which \
             this policy turns off ([monitor] syscall_tracepoint = false)",
            "drop --events, or run with a policy that keeps the tracepoint",
        ));
    }
    let memfd_fallback = forbid_memfd_without_sysctl(&mut policy)?;
    let plugin_dir = plugin_dir(&args, &policy)?;
    let state_dir = args
        .state_dir
        .as_deref()
        .map(|d| existing_dir(d, "--state-dir"))
        .transpose()?;
    let env = plugin_env(&policy, &args.env, policy_grants_tmp(&policy))?;
    let mut argv = args.command.clone();
    // A command given as a relative path means the file on the host; inside, the cwd differs.
    if argv[0].contains('/') {
        if let Ok(abs) = Path::new(&argv[0]).canonicalize() {
            argv[0] = abs.to_string_lossy().into_owned();
        }
    }
    let ctx = LaunchContext {
        argv,
        env,
        plugin_dir,
        state_dir: state_dir.clone(),
        hostname: "stockade".into(),
        cwd: None,
    };
    let spec = policy.compile(&ctx).map_err(|e| {
        // Most compile errors carry their own hint line.
        let message = e.to_string();
        match message.split_once("\n  hint: ") {
            Some((cause, hint)) => Failure::usage(cause, hint),
            None => Failure::usage(message, "see docs/policy.md"),
        }
    })?;
    if let Some(dir) = &state_dir {
        let plugin_uid = HOST_ID_BASE + SANDBOX_UID;
        std::os::unix::fs::chown(dir, Some(plugin_uid), Some(plugin_uid)).map_err(|e| {
            Failure::internal(
                format!("cannot hand {} to the plugin's uid: {e}", dir.display()),
                None,
            )
        })?;
    }
    phase("policy compiled");
    // `stockade run` is single-threaded, so the cloned child runs the shim's code in place; set
    // STOCKADE_SHIM to a shim binary to execute it instead, as the daemon does.
    let shim = match std::env::var_os("STOCKADE_SHIM") {
        Some(_) => ShimMode::Exec(Shim::locate().map_err(|e| {
            Failure::internal(
                e.to_string(),
                Some("STOCKADE_SHIM must name the stockade-shim binary".into()),
            )
        })?),
        None => ShimMode::InProcess,
    };
    let layout = Layout::detect().map_err(|e| {
        Failure::internal(
            format!("cgroups: {e}"),
            Some("`stockade doctor` shows what this host offers".into()),
        )
    })?;
    phase("shim and cgroup layout found");
    stockade::cgroup::sweep_orphans(&layout);
    let mut stop = StopSignals::block()
        .map_err(|e| Failure::internal(format!("cannot set up signal handling: {e}"), None))?;
    let name = format!("stockade-{}", std::process::id());
    // The monitors first (joining the host's set takes about a millisecond): whether the walk of
    // the granted trees for unix sockets (`ipc_launch_check`) is needed depends on what they judge.
    let mut monitor = load_monitor(&policy)?;
    phase("monitors loaded");
    ipc_launch_check(&spec, monitor.as_mut())?;
    let monitoring = match monitor.as_mut() {
        Some((m, degraded)) => Some(monitoring(
            &policy,
            &spec,
            matches!(shim, ShimMode::Exec(_)),
            m,
            degraded.clone(),
            args.events.as_deref(),
        )?),
        None => None,
    };
    let stdio = stockade::stdio::StdioGuard::save();
    // Put back after every process of the sandbox is gone, whatever ended it.
    let terminal = stockade::terminal::TerminalGuard::save();
    let summary = sandbox::run(&shim, &layout, &name, &spec, &mut stop, monitoring);
    drop(terminal);
    drop(stdio);
    let summary = summary.map_err(|e| {
        let hint = match &e {
            sandbox::SandboxError::Cgroup(stockade::cgroup::CgroupError::NotDelegated(_)) => {
                "run it in a delegated cgroup: `systemd-run --scope -p Delegate=yes stockade run ...`, \
                 or as the stockade service"
            }
            _ => "`stockade doctor` checks each layer on this kernel",
        };
        Failure::internal(format!("cannot start the sandbox: {e}"), Some(hint.into()))
    })?;
    if summary.ended_by == sandbox::EndReason::ExecFailed {
        let errno = summary.errno.unwrap_or(0);
        let command = &args.command[0];
        return Err(if errno == libc::ENOENT {
            Failure::usage(
                format!("command not found inside the sandbox: {command}"),
                "the command must lie below one of the policy's exec paths (give its absolute path)",
            )
        } else {
            Failure::usage(
                format!("cannot execute {command} inside the sandbox: {}", std::io::Error::from_raw_os_error(errno)),
                "the command must lie below one of the policy's exec paths, on an exec-granted mount",
            )
        });
    }
    if summary.ended_by == sandbox::EndReason::SetupFailed {
        let errno = summary.errno.unwrap_or(0);
        return Err(Failure::internal(
            format!(
                "sandbox set-up failed: {}: {}",
                summary.error.as_deref().unwrap_or("?"),
                std::io::Error::from_raw_os_error(errno)
            ),
            Some("`stockade doctor` checks each layer on this kernel; paths must be readable by unprivileged users".into()),
        ));
    }
    if memfd_fallback {
        tracing::warn!(
            "vm.memfd_noexec is missing on this kernel: memfd_create was denied instead"
        );
    }
    if summary.landlock_abi == Some(0) {
        // Only reachable in monitor mode: enforce mode refuses to start without Landlock.
        eprintln!("stockade: warning: Landlock is unavailable on this kernel; the sandbox ran without it (monitor mode)");
    }
    if args.json {
        eprintln!("{}", serde_json::to_string(&summary).unwrap_or_default());
    } else if !args.quiet {
        eprint!("{}", stockade::summary::render(&summary));
    }
    Ok(summary.exit_code.clamp(0, 255) as u8)
}

/// Loads the eBPF monitors. An enforce-mode policy needs the ones it relies on (fail closed); a
/// monitor-mode one runs with what loads, and the report says what was missing.
fn load_monitor(policy: &Policy) -> Result<Option<(Monitor, Vec<String>)>, Failure> {
    let enforce = policy.enforcement.mode == EnforcementMode::Enforce;
    let host_network = policy.network.mode == NetworkMode::Allow;
    let hint = "`stockade doctor` lists which eBPF program types load on this kernel; \
                a policy with [enforcement] mode = \"monitor\" runs without the missing monitors";
    // For measurements (docs/benchmarks.md): the same sandbox without its monitors.
    if std::env::var_os("STOCKADE_MONITORS").is_some_and(|v| v == "off") {
        if enforce {
            return Err(Failure::usage(
                "STOCKADE_MONITORS=off: an enforce-mode policy never runs without its monitors",
                "use a policy with [enforcement] mode = \"monitor\" to measure without them",
            ));
        }
        eprintln!("stockade: warning: STOCKADE_MONITORS=off: running without the eBPF monitors");
        return Ok(None);
    }
    let monitor = match Monitor::open_for(host_network) {
        Ok(m) => m,
        Err(e) if enforce => {
            return Err(Failure::internal(
                format!("the eBPF monitors cannot load: {e}"),
                Some(hint.into()),
            ))
        }
        Err(e) => {
            eprintln!("stockade: warning: the eBPF monitors cannot load ({e}); running without them (monitor mode)");
            return Ok(None);
        }
    };
    let caps = monitor.capabilities();
    let mut required = vec![&caps.syscalls];
    if host_network {
        required.push(&caps.network);
    }
    let mut degraded = Vec::new();
    for status in required {
        if !status.active {
            if enforce {
                return Err(Failure::internal(
                    format!(
                        "the {} monitor that this enforce-mode policy requires is not available: {}",
                        status.name, status.detail
                    ),
                    Some(hint.into()),
                ));
            }
            eprintln!(
                "stockade: warning: the {} monitor is not available ({}); running without it (monitor mode)",
                status.name, status.detail
            );
            degraded.push(format!("{}: {}", status.name, status.detail));
        }
    }
    if !caps.processes.active {
        degraded.push(format!("processes: {}", caps.processes.detail));
    }
    Ok(Some((monitor, degraded)))
}

/// `[ipc]` where no kernel hook judges unix socket connects (before 6.7, or the hooks did not
/// load), or where the sandbox has a writable tree a symlink could lead from
/// (`unix::launch_check_needed`): an enforce-mode sandbox does not start while a read-only tree
/// it is granted holds a socket its policy does not list; a monitor-mode one starts and its
/// report says so.
fn ipc_launch_check(
    spec: &LaunchSpec,
    monitor: Option<&mut (Monitor, Vec<String>)>,
) -> Result<(), Failure> {
    let hooks = monitor
        .as_ref()
        .is_some_and(|(m, _)| stockade::monitor::unix::armed_by(m));
    let reached = monitor
        .as_ref()
        .is_some_and(|(m, _)| stockade::monitor::unix::reached_judged_by(m));
    if !stockade::monitor::unix::launch_check_needed(spec, hooks, reached) {
        return Ok(());
    }
    let scan = stockade::socket_scan::scan(spec);
    phase("unix sockets of the granted trees checked");
    let Some(cause) = scan.refusal(hooks) else {
        return Ok(());
    };
    if spec.enforce {
        return Err(Failure::usage(
            cause,
            "list the socket in [ipc] `connect`, grant a narrower directory that does not hold it, \
             or run on a kernel with the cgroup unix socket hooks (6.7+; `stockade doctor`)",
        ));
    }
    eprintln!("stockade: warning: {cause}; running anyway (monitor mode)");
    if let Some((_, degraded)) = monitor {
        degraded.push(format!("ipc: {cause}"));
    }
    Ok(())
}

fn monitoring<'a>(
    policy: &Policy,
    spec: &LaunchSpec,
    shim_exec: bool,
    monitor: &'a mut Monitor,
    degraded: Vec<String>,
    events: Option<&Path>,
) -> Result<sandbox::Monitoring<'a>, Failure> {
    let e = &policy.enforcement;
    let kill = e.mode == EnforcementMode::Enforce && e.action == ThresholdAction::Kill;
    let network = (policy.network.mode == NetworkMode::Allow)
        .then(|| NetPolicy::from_policy(&policy.network));
    let in_kernel_kill = kill && monitor.capabilities().kill_in_kernel.active;
    let events_out = match events {
        None => None,
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|err| {
                Failure::usage(
                    format!("--events {}: {err}", path.display()),
                    "give a writable file path",
                )
            })?;
            Some(Box::new(std::io::BufWriter::new(file)) as Box<dyn std::io::Write>)
        }
    };
    Ok(sandbox::Monitoring {
        monitor,
        arm: ArmSpec {
            lsm: Some(lsm_spec(spec, shim_exec)),
            network,
            kill: in_kernel_kill.then_some((e.threshold, e.window)),
            trace_files: events.is_some(),
            miss_trees: stockade::monitor::rules::miss_trees(spec),
            ipc: spec.ipc.clone(),
            syscall_tracepoint: policy.monitor.syscall_tracepoint,
        },
        threshold: Threshold {
            violations: e.threshold,
            window: e.window,
            kill,
        },
        events_out,
        degraded,
    })
}

/// What the LSM wall grants: the host sources of the policy's binds with their rights, and the
/// device nodes the shim binds into /dev.
fn lsm_spec(spec: &LaunchSpec, shim_exec: bool) -> LsmSpec {
    use stockade_ebpf_common::{GRANT_EXEC, GRANT_READ, GRANT_WRITE};
    let mut grants: Vec<(PathBuf, u32)> = spec
        .mounts
        .iter()
        .map(|m| {
            let bits = match m.access {
                Access::Read => GRANT_READ,
                Access::Write => GRANT_READ | GRANT_WRITE,
                Access::Exec => GRANT_READ | GRANT_EXEC,
            };
            (m.source.clone(), bits)
        })
        .collect();
    for dev in stockade_shim::DEVICES {
        let path = PathBuf::from("/dev").join(dev);
        if path.exists() {
            grants.push((path, GRANT_READ | GRANT_WRITE));
        }
    }
    LsmSpec {
        grants,
        after_execs: if shim_exec { 2 } else { 1 },
    }
}

/// Without `vm.memfd_noexec` (Linux < 6.3) a memfd stays executable and Landlock does not cover
/// it, so in enforce mode memfd_create is denied instead; a policy that allows it explicitly cannot
/// be enforced here. Returns whether the fallback was applied.
fn forbid_memfd_without_sysctl(policy: &mut Policy) -> Result<bool, Failure> {
    if std::path::Path::new("/proc/sys/vm/memfd_noexec").exists()
        || policy.enforcement.mode != stockade_policy::EnforcementMode::Enforce
    {
        return Ok(false);
    }
    if policy.syscalls.allow.iter().any(|s| s == "memfd_create") {
        return Err(Failure::usage(
            "the policy allows memfd_create, but this kernel cannot make memfds non-executable (vm.memfd_noexec, Linux 6.3+)",
            "remove memfd_create from [syscalls] allow, or use monitor mode",
        ));
    }
    if !policy.syscalls.deny.iter().any(|s| s == "memfd_create") {
        policy.syscalls.deny.push("memfd_create".into());
    }
    Ok(true)
}

/// `$PLUGIN_DIR`: `--plugin-dir`, or else, when the policy uses it, the directory of a command
/// given as a path — said on stderr, never picked silently. Either is refused when it would grant
/// the plugin more than a directory of its own (`plugin_dir_refusal`), before anything is created.
fn plugin_dir(args: &RunArgs, policy: &Policy) -> Result<Option<PathBuf>, Failure> {
    if let Some(given) = &args.plugin_dir {
        let dir = existing_dir(given, "--plugin-dir")?;
        if let Some(why) = plugin_dir_refusal(&dir) {
            let shown = if dir == *given {
                dir.display().to_string()
            } else {
                format!("{} (resolves to {})", given.display(), dir.display())
            };
            return Err(Failure::usage(
                format!("--plugin-dir {shown}: {why}"),
                "give the directory that holds the plugin and nothing else, such as /opt/plugins/NAME",
            ));
        }
        return Ok(Some(dir));
    }
    if !policy.uses_var(stockade_policy::PathVar::PluginDir) {
        return Ok(None);
    }
    // A bare command name: the compiler asks for --plugin-dir.
    let Some(dir) = command_dir(&args.command[0]) else {
        return Ok(None);
    };
    if let Some(why) = plugin_dir_refusal(&dir) {
        return Err(Failure::usage(
            format!(
                "$PLUGIN_DIR would be {}, the directory of {}: {why}",
                dir.display(),
                args.command[0]
            ),
            "put the plugin in a directory of its own, or pass --plugin-dir DIR",
        ));
    }
    if !args.quiet {
        eprintln!(
            "stockade: $PLUGIN_DIR is {}, the directory of {} (--plugin-dir chooses another)",
            dir.display(),
            args.command[0]
        );
    }
    Ok(Some(dir))
}

/// Top-level directories of the host that are never one plugin's own directory.
const SYSTEM_TREES: [&str; 17] = [
    "/bin", "/boot", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt",
    "/opt", "/root", "/run", "/sbin", "/srv", "/usr", "/var",
];

/// Why `dir` (canonical: no symlink, no `..`) must not be `$PLUGIN_DIR`, if it must not. The
/// policy grants `$PLUGIN_DIR` whole (read or exec, sometimes write), so it must be the plugin's
/// own directory:
/// - not `/`: the whole host tree;
/// - not `/tmp`, the sandbox's private `/tmp` (`$TMP`), which the host's would replace. A
///   directory below `/tmp` is fine: it is bound on top of the private `/tmp`;
/// - nothing in `/proc`, `/sys` or `/dev`: kernel interfaces, which the sandbox builds for
///   itself (or hides), never a plugin's code;
/// - not a top-level system directory (`SYSTEM_TREES`: `/etc`, `/usr`, `/home`, ...); one of its
///   subdirectories may be (`/usr/bin` for `stockade run -- /bin/true`);
/// - not a directory every user may write to (`/var/tmp`, `/dev/shm`, any mode o+w): anyone on
///   the host could put code there that the plugin would run, or read what it leaves.
fn plugin_dir_refusal(dir: &Path) -> Option<String> {
    if dir == Path::new("/") {
        return Some("that is the host's root: the plugin would get the whole host tree".into());
    }
    if dir == Path::new("/tmp") {
        return Some("the sandbox has a private /tmp, which the host's /tmp would replace".into());
    }
    if let Some(kernel) = ["/proc", "/sys", "/dev"]
        .into_iter()
        .find(|k| dir.starts_with(k))
    {
        return Some(format!(
            "{kernel} is a kernel interface that the sandbox builds for itself, not a plugin's code"
        ));
    }
    if SYSTEM_TREES.iter().any(|s| dir == Path::new(s)) {
        return Some(format!(
            "{} is a system tree of the host, not a plugin's own directory",
            dir.display()
        ));
    }
    let mode = std::fs::metadata(dir).map_or(0, |m| {
        std::os::unix::fs::PermissionsExt::mode(&m.permissions())
    });
    if mode & 0o002 != 0 {
        return Some(format!(
            "every user of the host may write to it (mode {:o}): anyone could put code there \
             that the plugin would run",
            mode & 0o7777
        ));
    }
    None
}

/// The directory of a command given as a path (`./plugin`, `/opt/x/bin/plugin`), resolved.
fn command_dir(command: &str) -> Option<PathBuf> {
    if !command.contains('/') {
        return None;
    }
    Path::new(command)
        .canonicalize()
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}

fn existing_dir(dir: &Path, flag: &str) -> Result<PathBuf, Failure> {
    let canonical = dir.canonicalize().map_err(|e| {
        Failure::usage(
            format!("{flag} {}: {e}", dir.display()),
            "give an existing directory",
        )
    })?;
    if !canonical.is_dir() {
        return Err(Failure::usage(
            format!("{flag} {} is not a directory", dir.display()),
            "give an existing directory",
        ));
    }
    Ok(canonical)
}

/// PATH: the usual directories the policy lets the plugin execute from, and no others. A
/// directory the sandbox hides would make every command search a reach for a hidden path (the
/// shell stats `/usr/local/bin/git` before `/usr/bin/git`).
fn plugin_path(policy: &Policy) -> String {
    let granted = |dir: &str| {
        policy.filesystem.exec.iter().any(|p| {
            matches!(p, stockade_policy::PolicyPath::Absolute(g) if Path::new(dir).starts_with(g))
        })
    };
    let dirs: Vec<&str> = ["/usr/local/bin", "/usr/bin", "/bin"]
        .into_iter()
        .filter(|d| granted(d))
        .collect();
    if dirs.is_empty() {
        "/usr/bin:/bin".into()
    } else {
        dirs.join(":")
    }
}

fn policy_grants_tmp(policy: &Policy) -> bool {
    policy.filesystem.write.iter().any(|p| {
        matches!(
            p,
            stockade_policy::PolicyPath::Var(stockade_policy::PathVar::Tmp, _)
        )
    })
}

/// The plugin's environment: a fixed base, TERM from the caller, and `--env` additions. Nothing
/// else of the caller's environment (tokens, proxies, sockets) leaks in.
fn plugin_env(
    policy: &Policy,
    extra: &[String],
    has_tmp: bool,
) -> Result<Vec<(String, String)>, Failure> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), plugin_path(policy)),
        (
            "HOME".into(),
            if has_tmp { "/tmp".into() } else { "/".into() },
        ),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    if let Ok(term) = std::env::var("TERM") {
        env.push(("TERM".into(), term));
    }
    for item in extra {
        let (k, v) = item
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| {
                Failure::usage(
                    format!("--env {item}: expected NAME=VALUE"),
                    "for example --env RUST_LOG=debug",
                )
            })?;
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_dirs_that_grant_more_than_the_plugin_are_refused() {
        for dir in [
            "/",
            "/tmp",
            "/proc",
            "/proc/1",
            "/sys/kernel",
            "/dev",
            "/dev/shm",
            "/etc",
            "/usr",
            "/home",
            "/root",
            "/var",
            "/run",
            "/boot",
        ] {
            assert!(
                plugin_dir_refusal(Path::new(dir)).is_some(),
                "{dir} was accepted"
            );
        }
        // Subdirectories of system trees, and of /tmp (bound over the private /tmp), are fine.
        for dir in [
            "/usr/bin",
            "/tmp/plugins/p",
            "/opt/plugins/p",
            "/etc/stockade",
        ] {
            assert_eq!(plugin_dir_refusal(Path::new(dir)), None, "{dir}");
        }
        assert!(plugin_dir_refusal(Path::new("/"))
            .unwrap()
            .contains("whole host tree"));
    }

    #[test]
    fn a_world_writable_plugin_dir_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("stockade-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(plugin_dir_refusal(&dir), None);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let why = plugin_dir_refusal(&dir);
        std::fs::remove_dir(&dir).unwrap();
        assert!(why.unwrap().contains("mode 1777"));
    }
}
