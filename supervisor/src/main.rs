//! The `stockade` command line: `run`, `policy check|explain|schema`, `plugin`, `call`,
//! `events`, `daemon` (which executes `stockade-daemon`), `monitors`, `doctor`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;
use cli::client;
use stockade::cgroup::Layout;
use stockade::launcher::{ChildSetup, Shim, ShimMode, HOST_ID_BASE};
use stockade::monitor::Monitor;
use stockade::plan::{self, PlanError};
use stockade::probe::Probe;
use stockade::sandbox;
use stockade::signals::StopSignals;
use stockade_policy::{load_policy, EnforcementMode, LaunchContext, LoadError, Policy};

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
    /// Run the plugin host (executes stockade-daemon; `stockade daemon --help` lists its options).
    #[command(disable_help_flag = true)]
    Daemon {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Call a method of a plugin the daemon hosts; prints the result as JSON.
    Call {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(value_name = "METHOD")]
        method: String,
        /// The parameters, one JSON value (an object, usually).
        #[arg(value_name = "PARAMS-JSON")]
        params: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The daemon's events as JSON lines: lifecycle transitions, violations, calls, published
    /// events.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Signing keys (Ed25519).
    #[command(subcommand)]
    Key(KeyCommand),
    /// The operator's encrypted trust list: which plugins, versions and signers this host runs.
    #[command(subcommand)]
    TrustList(TrustListCommand),
    /// Sign a plugin package: writes stockade.sig into it, over the SHA3-512 of every file.
    Sign {
        #[arg(value_name = "PACKAGE-DIR")]
        dir: PathBuf,
        /// The secret key (NAME.key).
        #[arg(long, value_name = "NAME.key")]
        key: PathBuf,
        /// The signature's sequence number: it must grow with every signature of this plugin
        /// [default: the signing time in seconds since 1970, or the package's previous
        /// signature's plus one when that is larger].
        #[arg(long, value_name = "N")]
        sequence: Option<u64>,
        /// When the signature stops being accepted: a duration from now ("90d") or an RFC 3339
        /// time [default: never].
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
        /// Read the key's passphrase from the first line of FILE (else asked at the terminal).
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Check a package's signature offline; exits 0 only when it holds.
    Verify {
        #[arg(value_name = "PACKAGE-DIR")]
        dir: PathBuf,
        /// A publisher's public key (NAME.pub) to accept (repeatable) [default: the keys of the
        /// daemon's configuration].
        #[arg(long, value_name = "NAME.pub")]
        pubkey: Vec<PathBuf>,
        /// The daemon's configuration, whose [trust] keys are used without --pubkey [default:
        /// /etc/stockade/daemon.toml].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// The audit log: the records that match, oldest first (or `verify`). Reads the daemon's
    /// database directly, running or not.
    #[command(args_conflicts_with_subcommands = true)]
    Audit {
        #[command(subcommand)]
        command: Option<AuditCommand>,
        /// Only this plugin's records.
        #[arg(long, value_name = "ID")]
        plugin: Option<String>,
        /// Only records of this kind (call, lifecycle, load, unload, reload, upgrade, violation,
        /// limit, trust, daemon, audit).
        #[arg(long, value_name = "KIND")]
        kind: Option<String>,
        /// Only this host's records (its host id).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// Only records since then: a duration back from now (2h, 7d) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// At most this many records.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: u32,
        /// One JSON object per record.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// What each plugin tried and what stopped it: violations by plugin and layer, the objects
    /// they reached for, auto-unloads and their kill latency. Reads the audit log.
    Report {
        /// Only this plugin.
        #[arg(long, value_name = "ID")]
        plugin: Option<String>,
        /// Only this host's records (its host id).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// Only since then: a duration back from now (2h, 7d) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// The report as one JSON document.
        #[arg(long)]
        json: bool,
        /// Also write it as one self-contained HTML page, with a timeline of violations.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// The registry: which host runs which version of which plugin; with an id, that plugin's
    /// versions and their capabilities.
    Registry {
        #[arg(value_name = "ID")]
        id: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Probe what each isolation layer can do on this kernel.
    Doctor {
        /// Print the probe as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Which database `audit` and `registry` read.
#[derive(clap::Args)]
struct DatabaseArgs {
    /// The database: sqlite:PATH or postgres://USER:PASSWORD@HOST/DB [default: the daemon
    /// configuration's, else sqlite:/var/lib/stockade/stockade.db].
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// The daemon's configuration [default: /etc/stockade/daemon.toml, when it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Prove every audit chain: each record's hash, its link to the one before, no gap, the
    /// chain's head; names the first broken record. Exits 0 only when every chain holds.
    Verify {
        /// Check these exports of removed records instead (`[audit] export_dir`), each on its
        /// own and where it joins the database's chain.
        #[arg(long = "export", value_name = "FILE")]
        exports: Vec<PathBuf>,
        /// The daemon's signed checkpoints of each chain's head, checked against the database
        /// [default: <state_dir>/audit/checkpoints.jsonl, when it exists].
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
        /// The key that signed them [default: checkpoint.pub beside the file]; keep a copy
        /// away from the host to pin it.
        #[arg(long, value_name = "PUB")]
        checkpoint_key: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The policy file (TOML; see docs/policy.md).
    #[arg(
        long,
        short = 'p',
        value_name = "FILE",
        required_unless_present = "package"
    )]
    policy: Option<PathBuf>,
    /// Run a signed plugin package once instead: its signature checked (against --pubkey, else
    /// the daemon configuration's keys), read once into a sealed copy, its entry run from there
    /// under its policy at its trust level; CMD's words are appended to the entry's.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["policy", "plugin_dir"])]
    package: Option<PathBuf>,
    /// With --package: a publisher's key to accept (repeatable).
    #[arg(long, value_name = "NAME.pub", requires = "package")]
    pubkey: Vec<PathBuf>,
    /// With --package: run it unsigned (at `untrusted`), for development.
    #[arg(long, requires = "package")]
    allow_unsigned: bool,
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
    /// The most --events writes (bytes; K, M, G suffixes): the lines past it are counted, not
    /// written, and a last line says how many.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    events_max: u64,
    /// The command and its arguments, as seen inside the sandbox (with --package: arguments
    /// after the entry's).
    #[arg(last = true, required_unless_present = "package", value_name = "CMD")]
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

/// The daemon's control socket.
#[derive(clap::Args)]
struct SocketArg {
    /// The daemon's control socket [default: STOCKADE_SOCKET, else /run/stockade/stockade.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load packages into the running daemon, each in turn, and wait until each is active (on
    /// a terminal, what the daemon is doing is shown as it happens).
    Load {
        #[arg(value_name = "DIR", required = true, num_args = 1..)]
        dirs: Vec<PathBuf>,
        /// Accept a package older than the one this host accepted before (recorded, with your
        /// uid).
        #[arg(long)]
        allow_downgrade: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Stop a plugin (shutdown, SIGTERM, then a kill at its stop_timeout) and forget it.
    Unload {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Stop a plugin and start it again from its package (also a quarantined or failed one).
    Reload {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Replace a plugin by a newer package without a gap: the new version starts beside the old
    /// one, takes the new calls once initialized, and the old one stops after its calls finish.
    Upgrade {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Accept a package older than the one this host accepted before (recorded, with your
        /// uid).
        #[arg(long)]
        allow_downgrade: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The loaded plugins: state, uptime, restarts, violations.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// One plugin's state and its lifecycle transitions.
    Status {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// A plugin's stdout, stderr and log messages (the last ones the daemon keeps).
    Logs {
        #[arg(value_name = "ID")]
        id: String,
        /// Keep printing new lines as they come.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
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
enum KeyCommand {
    /// Write a new key pair: NAME.key (secret, mode 0600) and NAME.pub; print the public key.
    Generate {
        #[arg(value_name = "NAME")]
        name: String,
        /// Where to write them [default: the current directory].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Seal the secret key with a passphrase typed at the terminal.
        #[arg(long, conflicts_with = "passphrase_file")]
        ask_passphrase: bool,
        /// Seal the secret key with the passphrase on the first line of FILE.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Replace existing files of that name.
        #[arg(long)]
        force: bool,
    },
    /// Write the statement that a new key succeeds an old one, signed by both: hosts that trust
    /// the old key then trust the new one (ship it in packages as stockade.rotation, or list it
    /// in the daemon's [trust] rotations).
    Rotate {
        /// The old secret key.
        #[arg(long, value_name = "OLD.key")]
        from: PathBuf,
        /// The new secret key.
        #[arg(long, value_name = "NEW.key")]
        to: PathBuf,
        /// Where to write it [default: NEW.rotation beside NEW.key].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Read the keys' passphrase from the first line of FILE.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TrustListCommand {
    /// Write a new key to seal trust lists with (mode 0600).
    NewKey {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Seal a trust list's plain text (TOML; docs/plugins.md) with XChaCha20-Poly1305.
    Seal {
        #[arg(value_name = "PLAIN.toml")]
        plain: PathBuf,
        /// The list key: a file, or credential:NAME (a systemd credential).
        #[arg(long, value_name = "KEY")]
        key: String,
        #[arg(long, value_name = "LIST")]
        out: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Open a sealed trust list and print what it allows.
    Show {
        #[arg(value_name = "LIST")]
        list: PathBuf,
        #[arg(long, value_name = "KEY")]
        key: String,
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

impl From<PlanError> for Failure {
    fn from(e: PlanError) -> Failure {
        Failure {
            code: match e.fault {
                plan::Fault::Input => 2,
                plan::Fault::Host => 1,
            },
            cause: e.cause,
            hint: e.hint,
        }
    }
}

/// Launch warnings on stderr, in the CLI's voice.
fn print_warnings(warnings: &mut Vec<String>) {
    for w in warnings.drain(..) {
        eprintln!("stockade: warning: {w}");
    }
}

/// `--env NAME=VALUE` arguments.
fn env_args(items: &[String]) -> Result<Vec<(String, String)>, Failure> {
    let mut env = Vec::new();
    if let Ok(term) = std::env::var("TERM") {
        env.push(("TERM".to_string(), term));
    }
    for item in items {
        let (k, v) = item
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| {
                Failure::usage(
                    format!("--env {item}: expected NAME=VALUE"),
                    "for example --env RUST_LOG=debug",
                )
            })?;
        env.push((k.to_string(), v.to_string()));
    }
    Ok(env)
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

/// `4096`, `64K`, `100M`, `1G` (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}`: a size is a number of bytes, with K, M or G after it"))?;
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => return Err(format!("`{text}`: the units are K, M and G")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}`: too large"))
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
    // A command that only reports ends quietly when its reader goes away (`stockade plugin
    // status ID | head -1`), as other Unix tools do, instead of a panic about a broken pipe. Not
    // the supervisor (`run`), which must clean up after its sandbox, nor the daemon.
    if !matches!(
        cli.command,
        Command::Run(_) | Command::Daemon { .. } | Command::Monitors(_)
    ) {
        // SAFETY: restoring a signal's default disposition; no handler is installed.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
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
        Command::Plugin(PluginCommand::Load {
            dirs,
            allow_downgrade,
            json,
            socket,
        }) => client::load(socket.socket.as_deref(), &dirs, allow_downgrade, json),
        Command::Plugin(PluginCommand::Unload { id, json, socket }) => {
            client::simple(socket.socket.as_deref(), "plugin.unload", &id, json)
        }
        Command::Plugin(PluginCommand::Reload { id, json, socket }) => {
            client::simple(socket.socket.as_deref(), "plugin.reload", &id, json)
        }
        Command::Plugin(PluginCommand::Upgrade {
            id,
            dir,
            allow_downgrade,
            json,
            socket,
        }) => client::upgrade(socket.socket.as_deref(), &id, &dir, allow_downgrade, json),
        Command::Plugin(PluginCommand::List { json, socket }) => {
            client::list(socket.socket.as_deref(), json)
        }
        Command::Plugin(PluginCommand::Status { id, json, socket }) => {
            client::status(socket.socket.as_deref(), &id, json)
        }
        Command::Plugin(PluginCommand::Logs { id, follow, socket }) => {
            client::logs(socket.socket.as_deref(), &id, follow)
        }
        Command::Daemon { args } => client::daemon(&args),
        Command::Call {
            id,
            method,
            params,
            socket,
        } => client::call(socket.socket.as_deref(), &id, &method, params.as_deref()),
        Command::Events { follow, socket } => client::events(socket.socket.as_deref(), follow),
        Command::Key(KeyCommand::Generate {
            name,
            out,
            ask_passphrase,
            passphrase_file,
            force,
        }) => cli::trust::key_generate(
            &name,
            out.as_deref(),
            passphrase_file.as_deref(),
            ask_passphrase,
            force,
        ),
        Command::Key(KeyCommand::Rotate {
            from,
            to,
            out,
            passphrase_file,
        }) => cli::trust::key_rotate(&from, &to, out.as_deref(), passphrase_file.as_deref()),
        Command::TrustList(TrustListCommand::NewKey { out, force }) => {
            cli::trust::list_new_key(&out, force)
        }
        Command::TrustList(TrustListCommand::Seal {
            plain,
            key,
            out,
            force,
        }) => cli::trust::list_seal(&plain, &key, &out, force),
        Command::TrustList(TrustListCommand::Show { list, key }) => {
            cli::trust::list_show(&list, &key)
        }
        Command::Sign {
            dir,
            key,
            sequence,
            expires,
            passphrase_file,
        } => cli::trust::sign(
            &dir,
            &key,
            sequence,
            expires.as_deref(),
            passphrase_file.as_deref(),
        ),
        Command::Verify {
            dir,
            pubkey,
            config,
            json,
        } => cli::trust::verify(&dir, &pubkey, config.as_deref(), json),
        Command::Doctor { json } => doctor(json),
        Command::Audit {
            command:
                Some(AuditCommand::Verify {
                    exports,
                    checkpoints,
                    checkpoint_key,
                    json,
                    db,
                }),
            ..
        } => cli::audit::database(db.config.as_deref(), db.database.as_deref()).and_then(|db| {
            if exports.is_empty() {
                let signed = cli::audit::CheckpointArgs {
                    file: checkpoints,
                    key: checkpoint_key,
                };
                cli::audit::verify(&db, json, &signed)
            } else {
                cli::audit::verify_exports(&db.location, &exports, json)
            }
        }),
        Command::Audit {
            command: None,
            plugin,
            kind,
            host,
            since,
            limit,
            json,
            db,
        } => cli::audit::database(db.config.as_deref(), db.database.as_deref()).and_then(|db| {
            cli::audit::list(
                &db.location,
                &cli::audit::Query {
                    plugin,
                    kind,
                    host,
                    since,
                    limit,
                    json,
                },
            )
        }),
        Command::Report {
            plugin,
            host,
            since,
            json,
            html,
            db,
        } => cli::audit::database(db.config.as_deref(), db.database.as_deref()).and_then(|db| {
            cli::report::run(
                &db.location,
                &cli::report::Args {
                    plugin,
                    host,
                    since,
                    json,
                    html,
                },
            )
        }),
        Command::Registry { id, json, db } => {
            cli::audit::database(db.config.as_deref(), db.database.as_deref())
                .and_then(|db| cli::audit::registry(&db.location, id.as_deref(), json))
        }
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
    // With --package, the package (and so its sealed copy) lives until the run ends.
    let package = match &args.package {
        Some(dir) => Some(cli::trust::run_package(
            dir,
            &args.pubkey,
            args.allow_unsigned,
            args.quiet || args.json,
        )?),
        None => None,
    };
    let mut policy = match (&package, &args.policy) {
        (Some((p, _)), _) => p.policy.clone(),
        (None, Some(file)) => load(file)?,
        (None, None) => unreachable!("clap requires --policy or --package"),
    };
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
    let memfd_fallback = plan::forbid_memfd_without_sysctl(&mut policy)?;
    let plugin_dir = match &package {
        Some((p, _)) => {
            plan::open_sealed_copy(&p.dir, HOST_ID_BASE)?;
            Some(p.dir.clone())
        }
        None => plugin_dir(&args, &policy)?,
    };
    let state_dir = args
        .state_dir
        .as_deref()
        .map(|d| existing_dir(d, "--state-dir"))
        .transpose()?;
    let env = plan::plugin_env(&policy, &env_args(&args.env)?);
    let mut argv = match &package {
        Some((p, _)) => {
            let mut argv = p.manifest.entry.clone();
            argv[0] = p.entry.to_string_lossy().into_owned();
            argv.extend(args.command.iter().cloned());
            argv
        }
        None => args.command.clone(),
    };
    // A command given as a relative path means the file on the host; inside, the cwd differs.
    if package.is_none() && argv[0].contains('/') {
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
    let spec = policy.compile(&ctx).map_err(|e| plan::compile_error(&e))?;
    if let Some(dir) = &state_dir {
        plan::own_state_dir(dir, HOST_ID_BASE)?;
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
    // Run in a delegated scope (`systemd-run --scope -p Delegate=yes stockade run ...`): this
    // process moves into the scope's leaf, the sandbox goes beside it.
    stockade::cgroup::enter_delegated_leaf(&layout).map_err(|e| {
        Failure::internal(
            format!("cgroups: the delegated cgroup cannot hold a sandbox: {e}"),
            Some("`stockade doctor` shows what this host offers".into()),
        )
    })?;
    stockade::cgroup::sweep_orphans(&layout);
    let mut stop = StopSignals::block()
        .map_err(|e| Failure::internal(format!("cannot set up signal handling: {e}"), None))?;
    let name = format!("stockade-{}", std::process::id());
    // The monitors first (joining the host's set takes about a millisecond): whether the walk of
    // the granted trees for unix sockets (`ipc_launch_check`) is needed depends on what they judge.
    let mut warnings = Vec::new();
    let monitor = plan::load_monitor(&policy, &mut warnings);
    print_warnings(&mut warnings);
    let mut monitor = monitor?;
    phase("monitors loaded");
    let checked = match monitor.as_mut() {
        Some(l) => plan::ipc_launch_check(
            &spec,
            Some(plan::unix_judged(&l.monitor)),
            &mut l.degraded,
            &mut warnings,
        ),
        None => plan::ipc_launch_check(&spec, None, &mut Vec::new(), &mut warnings),
    };
    print_warnings(&mut warnings);
    checked?;
    let mut events_not_written = None;
    let events_out = match monitor
        .is_some()
        .then_some(args.events.as_deref())
        .flatten()
    {
        None => None,
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|err| {
                Failure::usage(
                    format!("--events {}: {err}", path.display()),
                    "give a writable file path",
                )
            })?;
            let capped = stockade::monitor::report::CappedLines::new(
                std::io::BufWriter::new(file),
                args.events_max,
            );
            events_not_written = Some(capped.not_written());
            Some(Box::new(capped) as Box<dyn std::io::Write>)
        }
    };
    let monitoring = monitor.as_mut().map(|loaded| {
        plan::monitoring(
            &policy,
            &spec,
            matches!(shim, ShimMode::Exec(_)),
            sandbox::MonitorRef::Own(&mut loaded.monitor),
            loaded.degraded.clone(),
            events_out,
        )
    });
    let stdio = stockade::stdio::StdioGuard::save();
    // Put back after every process of the sandbox is gone, whatever ended it.
    let terminal = stockade::terminal::TerminalGuard::save();
    let summary = sandbox::run(
        &shim,
        &layout,
        &name,
        &spec,
        &mut ChildSetup::default(),
        &mut stop,
        monitoring,
    );
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
    if let Some(n) = events_not_written
        .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
        .filter(|n| *n > 0)
    {
        eprintln!(
            "stockade: warning: --events reached --events-max ({} bytes): {n} later events were not written (the summary counts them all)",
            args.events_max
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

/// `$PLUGIN_DIR`: `--plugin-dir`, or else, when the policy uses it, the directory of a command
/// given as a path — said on stderr, never picked silently. Either is refused when it would grant
/// the plugin more than a directory of its own (`plugin_dir_refusal`), before anything is created.
fn plugin_dir(args: &RunArgs, policy: &Policy) -> Result<Option<PathBuf>, Failure> {
    if let Some(given) = &args.plugin_dir {
        let dir = existing_dir(given, "--plugin-dir")?;
        if let Some(why) = plan::plugin_dir_refusal(&dir) {
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
    if let Some(why) = plan::plugin_dir_refusal(&dir) {
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
