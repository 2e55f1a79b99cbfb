//! A plugin package's manifest (`plugin.toml`), after parsing and validation: who the plugin is,
//! how it starts, which policy confines it, what it may be called for and how the daemon keeps
//! it alive. `parse::manifest` reads it; docs/plugins.md is the reference.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The manifest's file name inside a package directory.
pub const MANIFEST_FILE: &str = "plugin.toml";

/// A whole `plugin.toml`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// `[a-z0-9][a-z0-9._-]*`, at most [`MAX_ID_BYTES`]: names the plugin to the daemon, the CLI
    /// and the logs.
    pub id: String,
    pub name: String,
    pub version: semver::Version,
    pub description: Option<String>,
    pub author: Option<String>,
    /// The argv that starts the plugin. A first element without a `/` at its start is a path
    /// relative to the package (`$PLUGIN_DIR`); the rest are passed as they are.
    pub entry: Vec<String>,
    pub policy: PolicySource,
    pub trust: Trust,
    /// The methods the host forwards to the plugin, by name; nothing else is forwarded.
    pub methods: BTreeMap<String, Method>,
    pub lifecycle: Lifecycle,
    /// `counters`: the names of the counters the plugin may add to (`metrics.add`), exported by
    /// the daemon as `stockade_plugin_counter_total{plugin_id, name}`. Declared, so that what a
    /// plugin sends can never grow the host's series: an undeclared name is a violation.
    pub counters: Vec<String>,
    /// `mode`: one long-lived sandbox answering calls (the default), or a fresh sandbox for each
    /// call that runs the entry once with the call as its last argument (the UPM one-shot
    /// contract).
    pub mode: Mode,
    /// `subscribe`: the topics of other plugins' published events (`event.publish`) this plugin
    /// receives, as `event` notifications. A topic, or a prefix ending in `*`.
    pub subscribe: Vec<String>,
    /// `publish`: the topics of its own events the plugin shares with other plugins' `subscribe`
    /// (topics or prefixes, as there). Its other events go to the operator's stream only.
    pub publish: Vec<String>,
}

/// How the plugin's process serves calls.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Mode {
    /// `mode = "service"`: started once, initialized, called over its JSON-RPC socket.
    #[default]
    Service,
    /// `mode = "per-call"`: each call starts a sandbox whose entry gets the call's payload as its
    /// last argument, prints its result and exits.
    PerCall(PerCall),
}

/// The per-call mode's settings: `class`, `init_args` and `[per_call]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PerCall {
    /// The class the payload names (`class_name`): a Python identifier.
    pub class: String,
    /// `init_args`: the class's constructor arguments, passed in every payload (a JSON object).
    pub init_args: serde_json::Value,
    /// Sandboxes kept armed, waiting for a call (everything but the plugin's exec done).
    pub warm: u32,
    /// Calls running at once, over all methods; more are refused.
    pub max_running: u32,
    /// The most of each of stdout and stderr kept from one call; the rest is dropped (and said).
    pub output_bytes: u64,
}

pub const DEFAULT_WARM: u32 = 1;
pub const MAX_WARM: i64 = 32;
pub const DEFAULT_MAX_RUNNING: u32 = 8;
pub const MAX_RUNNING: i64 = 256;
pub const DEFAULT_OUTPUT_BYTES: u64 = 1 << 20;
/// Both streams of a call, JSON-escaped (up to 6 bytes each), fit a control message (16 MiB).
pub const MAX_OUTPUT_BYTES: i64 = 1 << 20;
/// Longest `class`.
pub const MAX_CLASS_BYTES: usize = 128;

/// Topics per manifest, and the longest topic.
pub const MAX_SUBSCRIPTIONS: usize = 64;
pub const MAX_TOPIC_BYTES: usize = 128;

/// An event topic a plugin may subscribe to: letters, digits, `.`, `_`, `-`, `/`, optionally
/// ending in `*` (every topic with that prefix; `*` alone is every topic).
pub fn valid_topic_pattern(pattern: &str) -> bool {
    let body = pattern.strip_suffix('*').unwrap_or(pattern);
    pattern.len() <= MAX_TOPIC_BYTES
        && !pattern.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

/// Whether `topic` matches the subscription `pattern`.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

/// A Python identifier of ASCII letters, digits and `_`.
pub fn valid_class(name: &str) -> bool {
    name.len() <= MAX_CLASS_BYTES
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Manifest {
    /// The per-call settings, when the plugin runs per call.
    pub fn per_call(&self) -> Option<&PerCall> {
        match &self.mode {
            Mode::PerCall(p) => Some(p),
            Mode::Service => None,
        }
    }
}

/// Where the plugin's policy comes from: the manifest's capabilities *are* a policy of the
/// existing language.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicySource {
    /// A policy file inside the package (a relative path without `..`).
    File(PathBuf),
    /// One of the stock profiles shipped with Stockade ([`crate::profiles`]), with the lists the
    /// manifest adds to it.
    Profile {
        name: String,
        additions: Box<PolicyAdditions>,
    },
}

/// What a manifest adds to a stock profile, beside `profile` in its `[policy]` table: lists
/// only, each appended to the profile's. A setting (a network mode, a limit, the enforcement)
/// is the profile's; changing one takes a policy file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyAdditions {
    /// `[policy.filesystem]`: read, write, exec, absent.
    pub filesystem: crate::model::Filesystem,
    /// `[policy.network]`: connect, bind (the profile must have the network: mode "allow").
    pub network_connect: Vec<crate::model::NetworkRule>,
    pub network_bind: Vec<crate::model::NetworkRule>,
    /// `[policy.ipc]`: connect.
    pub ipc_connect: Vec<crate::model::PolicyPath>,
    /// `[policy.syscalls]`: allow, deny.
    pub syscalls_allow: Vec<String>,
    pub syscalls_deny: Vec<String>,
}

impl PolicyAdditions {
    pub fn is_empty(&self) -> bool {
        *self == PolicyAdditions::default()
    }

    /// Appends each list to the policy's (an entry it has already is not repeated).
    pub fn apply(&self, policy: &mut crate::model::Policy) {
        fn extend<T: Clone + PartialEq>(to: &mut Vec<T>, from: &[T]) {
            for item in from {
                if !to.contains(item) {
                    to.push(item.clone());
                }
            }
        }
        let fs = &mut policy.filesystem;
        extend(&mut fs.read, &self.filesystem.read);
        extend(&mut fs.write, &self.filesystem.write);
        extend(&mut fs.exec, &self.filesystem.exec);
        extend(&mut fs.absent, &self.filesystem.absent);
        extend(&mut policy.network.connect, &self.network_connect);
        extend(&mut policy.network.bind, &self.network_bind);
        extend(&mut policy.ipc.connect, &self.ipc_connect);
        extend(&mut policy.syscalls.allow, &self.syscalls_allow);
        extend(&mut policy.syscalls.deny, &self.syscalls_deny);
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Trust {
    /// Enforce mode whatever the policy says: violations are denied, counted and acted on.
    #[default]
    Untrusted,
    /// The policy's own mode (the stock profile for trusted plugins is monitor mode).
    Trusted,
}

impl Trust {
    pub fn name(self) -> &'static str {
        match self {
            Trust::Untrusted => "untrusted",
            Trust::Trusted => "trusted",
        }
    }
}

/// `[methods.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Method {
    /// JSON Schema of the parameters; the host checks them before the plugin sees a call.
    pub params: serde_json::Value,
    /// JSON Schema of the result, checked when given.
    pub result: Option<serde_json::Value>,
    pub timeout: Duration,
    /// Calls of this method the host lets in at once; more wait.
    pub max_in_flight: u32,
    /// Whether the audit log keeps the call's parameters (never, unless the manifest says so),
    /// with the values of secret-looking fields and of `redact` replaced.
    pub audit_params: bool,
    /// More field names whose values the audit log never keeps.
    pub redact: Vec<String>,
}

pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;
/// The most calls of one method in flight that a manifest may allow.
pub const MAX_IN_FLIGHT: i64 = 4096;
/// Field names in one method's `redact`.
pub const MAX_REDACT: usize = 64;
/// Longest id: it names cgroups and files.
pub const MAX_ID_BYTES: usize = 64;
/// Methods per manifest.
pub const MAX_METHODS: usize = 256;
/// Arguments of `entry`.
pub const MAX_ENTRY_ARGS: usize = 256;
/// Counters per manifest, and the longest counter name.
pub const MAX_COUNTERS: usize = 64;
pub const MAX_COUNTER_BYTES: usize = 64;

/// A counter's name: a Prometheus name's characters, lowercase (`install_success_total`).
pub fn valid_counter(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_COUNTER_BYTES
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `[lifecycle]`: how the daemon starts, watches, restarts and stops the plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    pub restart: Restart,
    /// At most this many restarts within `start_window`; one more fails the plugin
    /// (`failed("start limit")`).
    pub start_limit: u32,
    pub start_window: Duration,
    /// The first restart's delay; each next one doubles it, with jitter, up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long a plugin must stay up for the backoff to start over.
    pub stable_after: Duration,
    /// The interval of the daemon's `ping`; a plugin that misses answers is handled as crashed.
    pub heartbeat: Duration,
    /// How long `initialize` may take.
    pub init_timeout: Duration,
    /// From `shutdown` to the kill of whatever is left.
    pub stop_timeout: Duration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            restart: Restart::OnFailure,
            start_limit: 5,
            start_window: Duration::from_secs(60),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
            heartbeat: Duration::from_secs(10),
            init_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
        }
    }
}

impl Restart {
    /// As written in a manifest.
    pub fn name(self) -> &'static str {
        match self {
            Restart::No => "no",
            Restart::OnFailure => "on-failure",
            Restart::Always => "always",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Restart {
    No,
    /// After a crash, a missed heartbeat or a failed start; not after a clean exit, and never
    /// after an auto-unload for violations (the plugin is quarantined).
    #[default]
    OnFailure,
    /// After any exit that the operator did not ask for (still not after an auto-unload).
    Always,
}

/// The stock profiles, built into the binary so that a package can name one wherever Stockade
/// is installed.
pub mod profiles {
    /// (name, policy text).
    pub const ALL: [(&str, &str); 3] = [
        (
            "untrusted-default",
            include_str!("../profiles/untrusted-default.toml"),
        ),
        (
            "network-client",
            include_str!("../profiles/network-client.toml"),
        ),
        (
            "trusted-monitor",
            include_str!("../profiles/trusted-monitor.toml"),
        ),
    ];

    pub fn get(name: &str) -> Option<&'static str> {
        ALL.iter().find(|(n, _)| *n == name).map(|(_, text)| *text)
    }

    pub fn names() -> impl Iterator<Item = &'static str> {
        ALL.iter().map(|(n, _)| *n)
    }
}
