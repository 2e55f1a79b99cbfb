//! `plugin.toml`: parsed and checked with the policy parser's machinery, so that a manifest's
//! errors read like a policy's (file:line:column, a hint, every error of the file at once).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use super::{
    Checker, Entry, Place, Seen, Source, Span, FILESYSTEM_KEYS, IPC_KEYS, NETWORK_KEYS,
    SYSCALLS_KEYS,
};
use crate::diagnostics::{Diagnostics, LoadError};
use crate::manifest::*;

pub(crate) const MANIFEST_KEYS: &[&str] = &[
    "id",
    "name",
    "version",
    "description",
    "author",
    "entry",
    "policy",
    "trust",
    "methods",
    "lifecycle",
    "counters",
    "mode",
    "class",
    "init_args",
    "per_call",
    "subscribe",
    "publish",
];
pub(crate) const PER_CALL_KEYS: &[&str] = &["warm", "max_running", "output_bytes"];
pub(crate) const MODES: &[(&str, bool)] = &[("service", false), ("per-call", true)];
pub(crate) const POLICY_TABLE_KEYS: &[&str] =
    &["profile", "filesystem", "network", "ipc", "syscalls"];
/// The lists a manifest may add to a stock profile, by section.
const ADDITION_LISTS: &[(&str, &[&str])] = &[
    ("filesystem", &["read", "write", "exec", "absent"]),
    ("network", &["connect", "bind"]),
    ("ipc", &["connect"]),
    ("syscalls", &["allow", "deny"]),
];
pub(crate) const METHOD_KEYS: &[&str] = &[
    "params",
    "result",
    "timeout",
    "max_in_flight",
    "audit_params",
    "redact",
];
pub(crate) const LIFECYCLE_KEYS: &[&str] = &[
    "restart",
    "start_limit",
    "start_window",
    "backoff_min",
    "backoff_max",
    "stable_after",
    "heartbeat",
    "init_timeout",
    "stop_timeout",
];
pub(crate) const TRUST_LEVELS: &[(&str, Trust)] =
    &[("untrusted", Trust::Untrusted), ("trusted", Trust::Trusted)];
pub(crate) const RESTARTS: &[(&str, Restart)] = &[
    ("no", Restart::No),
    ("on-failure", Restart::OnFailure),
    ("always", Restart::Always),
];
/// Nesting of a JSON Schema written in TOML: deeper is refused (the checks walk it).
const MAX_SCHEMA_DEPTH: usize = 32;
/// The longest any manifest duration may be: the daemon adds them to clocks and doubles the
/// backoff, which must not overflow.
const DAY: Duration = Duration::from_secs(24 * 3600);
const HOUR: Duration = Duration::from_secs(3600);

/// Reads and validates the manifest at `path` (a regular file of at most 1 MiB, as a policy).
pub fn load_manifest(path: &Path) -> Result<Manifest, LoadError> {
    let bytes = super::read_policy_file(path)?;
    let file_name = path.display().to_string();
    match String::from_utf8(bytes) {
        Ok(source) => parse_manifest(&source, &file_name).map_err(LoadError::Invalid),
        Err(err) => {
            let valid = err.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&err.as_bytes()[..valid]).into_owned();
            let source = Source::new(&prefix, &file_name);
            Err(LoadError::Invalid(Diagnostics(vec![source.diagnostic(
                Some(valid..valid),
                "the file is not valid UTF-8".into(),
                Some("TOML files are UTF-8; re-save the manifest as UTF-8".into()),
            )])))
        }
    }
}

/// Parses and validates a manifest. `file_name` only labels the diagnostics.
pub fn parse_manifest(source: &str, file_name: &str) -> Result<Manifest, Diagnostics> {
    super::check_document(source, file_name, "manifest", None, |checker, root| {
        checker.manifest(root)
    })
}

/// Whether `id` is a plugin id: `[a-z0-9][a-z0-9._-]*`, at most [`MAX_ID_BYTES`].
pub fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    id.len() <= MAX_ID_BYTES
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// A path inside the package: relative, no `..`, not empty.
fn package_relative(raw: &str) -> Result<PathBuf, String> {
    if raw.is_empty() {
        return Err("empty path".into());
    }
    let path = Path::new(raw);
    if path.is_absolute() {
        return Err(format!(
            "`{raw}` is absolute: a path of the package is relative to it"
        ));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "`{raw}` contains `..`: it must stay inside the package"
        ));
    }
    if raw.contains('\0') {
        return Err(format!("`{}` contains a NUL byte", raw.escape_debug()));
    }
    Ok(path.to_path_buf())
}

impl Checker<'_> {
    fn manifest(&mut self, root: &dyn TableLike) -> Option<Manifest> {
        let (mut id, mut name, mut version, mut description, mut author) =
            (None, None, None, None, None);
        let (mut entry, mut policy) = (None, None);
        let mut trust = Trust::default();
        let mut methods = BTreeMap::new();
        let mut lifecycle = Lifecycle::default();
        let mut counters = Vec::new();
        let mut per_call_mode = false;
        let mut subscribe = Vec::new();
        let mut publish = Vec::new();
        let (mut class, mut init_args) = (None, serde_json::Value::Object(Default::default()));
        let mut per_call = PerCall {
            class: String::new(),
            init_args: serde_json::Value::Null,
            warm: DEFAULT_WARM,
            max_running: DEFAULT_MAX_RUNNING,
            output_bytes: DEFAULT_OUTPUT_BYTES,
        };
        // Keys that only mean something in one mode, with where they were written.
        let mut per_call_only: Vec<(&str, Span)> = Vec::new();
        let mut service_only: Vec<(&str, Span)> = Vec::new();
        for e in self.entries(root, MANIFEST_KEYS, Place::ManifestTable("plugin.toml")) {
            match e.key {
                "class" | "init_args" | "per_call" => per_call_only.push((e.key, e.key_span())),
                "lifecycle" | "counters" | "subscribe" | "publish" => {
                    service_only.push((e.key, e.key_span()))
                }
                _ => {}
            }
            match e.key {
                "id" => {
                    if let Some(raw) = self.string(&e) {
                        if valid_id(raw) {
                            id = Some(raw.to_string());
                        } else {
                            self.error(
                                e.value_span(),
                                format!("invalid plugin id \"{}\"", raw.escape_debug()),
                                Some(format!(
                                    "an id is lowercase letters, digits, `.`, `_` and `-`, \
                                     starting with a letter or digit, at most {MAX_ID_BYTES} bytes"
                                )),
                            );
                        }
                    }
                }
                "name" => name = self.nonempty(&e),
                "description" => description = self.string(&e).map(str::to_string),
                "author" => author = self.string(&e).map(str::to_string),
                "version" => {
                    if let Some(raw) = self.string(&e) {
                        match semver::Version::parse(raw) {
                            Ok(v) => version = Some(v),
                            Err(err) => self.error(
                                e.value_span(),
                                format!("invalid version \"{}\": {err}", raw.escape_debug()),
                                Some(
                                    "a version is semver: MAJOR.MINOR.PATCH, like \"1.4.0\"".into(),
                                ),
                            ),
                        }
                    }
                }
                "entry" => entry = self.entry(&e),
                "policy" => policy = self.policy_source(&e),
                "trust" => {
                    if let Some(t) = self.choice(&e, TRUST_LEVELS) {
                        trust = t;
                    }
                }
                "methods" => {
                    if let Some(table) = self.table(&e) {
                        methods = self.methods(table, e.value_span());
                    }
                }
                "lifecycle" => {
                    if let Some(table) = self.table(&e) {
                        lifecycle = self.lifecycle(table);
                    }
                }
                "counters" => counters = self.counters(&e),
                "subscribe" | "publish" => {
                    let topics = self.subscriptions(&e);
                    if e.key == "publish" {
                        publish = topics;
                    } else {
                        subscribe = topics;
                    }
                }
                "mode" => per_call_mode = self.choice(&e, MODES).unwrap_or(false),
                "class" => {
                    if let Some(raw) = self.string(&e) {
                        if valid_class(raw) {
                            class = Some(raw.to_string());
                        } else {
                            self.error(
                                e.value_span(),
                                format!("invalid class name \"{}\"", raw.escape_debug()),
                                Some(format!(
                                    "the class the payload names (`class_name`): a Python \
                                     identifier of ASCII letters, digits and `_`, at most \
                                     {MAX_CLASS_BYTES} bytes, like \"PipPlugin\""
                                )),
                            );
                        }
                    }
                }
                "init_args" if self.table(&e).is_some() => match item_json(e.item, 0) {
                    Ok(v) => init_args = v,
                    Err(why) => self.error(e.value_span(), format!("`init_args`: {why}"), None),
                },
                "per_call" => {
                    if let Some(table) = self.table(&e) {
                        self.per_call(table, &mut per_call);
                    }
                }
                _ => {}
            }
        }
        if per_call_mode {
            for (key, span) in &service_only {
                let why = match *key {
                    "lifecycle" => {
                        "a per-call plugin has no long-lived process to restart, ping or stop: \
                         each call's sandbox ends with the call (its method's `timeout` bounds it)"
                    }
                    "counters" => {
                        "counters come over the JSON-RPC socket of a long-lived plugin; a \
                         per-call plugin reports in its result"
                    }
                    _ => "events are exchanged over the JSON-RPC socket of a long-lived plugin",
                };
                self.error(
                    span.clone(),
                    format!("`{key}` is for plugins with mode \"service\""),
                    Some(format!("remove it: {why}")),
                );
            }
            if class.is_none() && !root.contains_key("class") {
                self.error(
                    Some(0..0),
                    "a per-call plugin's manifest has no `class`".into(),
                    Some(
                        "add class = \"MyPlugin\": the class the payload's `class_name` names"
                            .into(),
                    ),
                );
            }
        } else {
            for (key, span) in &per_call_only {
                self.error(
                    span.clone(),
                    format!("`{key}` is for plugins with mode \"per-call\""),
                    Some("add mode = \"per-call\", or remove it".into()),
                );
            }
        }
        let mode = if per_call_mode {
            per_call.class = class?;
            per_call.init_args = init_args;
            Mode::PerCall(per_call)
        } else {
            Mode::Service
        };
        let mut missing = |key: &str, what: &str, present: bool| {
            if !present {
                self.error(
                    Some(0..0),
                    format!("the manifest has no `{key}`"),
                    Some(what.to_string()),
                );
            }
        };
        missing(
            "id",
            "add id = \"my-plugin\" (lowercase letters, digits, `.`, `_`, `-`)",
            id.is_some() || root.contains_key("id"),
        );
        missing(
            "name",
            "add name = \"My plugin\"",
            name.is_some() || root.contains_key("name"),
        );
        missing(
            "version",
            "add version = \"0.1.0\"",
            version.is_some() || root.contains_key("version"),
        );
        missing("entry", "add entry = [\"bin/plugin\"]: the argv that starts the plugin, relative paths inside the package", entry.is_some() || root.contains_key("entry"));
        missing(
            "policy",
            "add policy = \"policy.toml\" (a policy file in the package) or policy = { profile = \"untrusted-default\" }",
            policy.is_some() || root.contains_key("policy"),
        );
        Some(Manifest {
            id: id?,
            name: name?,
            version: version?,
            description,
            author,
            entry: entry?,
            policy: policy?,
            trust,
            methods,
            lifecycle,
            counters,
            mode,
            subscribe,
            publish,
        })
    }

    /// `subscribe = ["installed", "pip.*"]` (topics of other plugins' events) or `publish` (its
    /// own shared with them): each once.
    fn subscriptions(&mut self, e: &Entry<'_>) -> Vec<String> {
        let topics = self.bounded_string_array(
            e,
            MAX_SUBSCRIPTIONS,
            "topics",
            "name a prefix (`pip.*`) instead of each topic",
        );
        let mut out: Vec<String> = Vec::new();
        for (topic, span) in topics {
            if !valid_topic_pattern(topic) {
                self.error(
                    span,
                    format!("invalid topic \"{}\"", topic.escape_debug()),
                    Some(format!(
                        "a topic is letters, digits, `.`, `_`, `-` and `/`, at most \
                         {MAX_TOPIC_BYTES} bytes, optionally ending in `*` (a prefix)"
                    )),
                );
            } else if !out.iter().any(|t| t == topic) {
                out.push(topic.to_string());
            }
        }
        out
    }

    /// `[per_call]`: the pool and the bounds of a per-call plugin's sandboxes.
    fn per_call(&mut self, table: &dyn TableLike, into: &mut PerCall) {
        for e in self.entries(table, PER_CALL_KEYS, Place::ManifestTable("per_call")) {
            match e.key {
                "warm" => {
                    let why = "sandboxes kept armed for the next calls; 0 starts each on demand";
                    if let Some(n) = self.integer_in(&e, 0, MAX_WARM, Some(why)) {
                        into.warm = n as u32;
                    }
                }
                "max_running" => {
                    if let Some(n) = self.integer_in(&e, 1, MAX_RUNNING, None) {
                        into.max_running = n as u32;
                    }
                }
                _ => {
                    let why = "bytes kept of each of a call's stdout and stderr";
                    if let Some(n) = self.integer_in(&e, 1024, MAX_OUTPUT_BYTES, Some(why)) {
                        into.output_bytes = n as u64;
                    }
                }
            }
        }
    }

    /// `counters = ["install_success_total", ...]`: names a plugin may count, each once.
    fn counters(&mut self, e: &Entry<'_>) -> Vec<String> {
        let names = self.bounded_string_array(
            e,
            MAX_COUNTERS,
            "counters",
            "count the rest under fewer names, or in the plugin's own results",
        );
        let mut counters: Vec<String> = Vec::new();
        for (name, span) in names {
            if !valid_counter(name) {
                self.error(
                    span,
                    format!("invalid counter name \"{}\"", name.escape_debug()),
                    Some(format!(
                        "a counter is lowercase letters, digits and `_`, not starting with a \
                         digit, at most {MAX_COUNTER_BYTES} bytes, like \"install_success_total\""
                    )),
                );
            } else if counters.iter().any(|c| c == name) {
                self.error(
                    span,
                    format!("the counter `{name}` is declared twice"),
                    Some("declare each counter once".into()),
                );
            } else {
                counters.push(name.to_string());
            }
        }
        counters
    }

    fn nonempty(&mut self, e: &Entry<'_>) -> Option<String> {
        let raw = self.string(e)?;
        if raw.trim().is_empty() {
            self.error(e.value_span(), format!("`{}` is empty", e.key), None);
            return None;
        }
        Some(raw.to_string())
    }

    fn entry(&mut self, e: &Entry<'_>) -> Option<Vec<String>> {
        let args = self.bounded_string_array(
            e,
            MAX_ENTRY_ARGS,
            "arguments",
            "pass the rest in the plugin's configuration",
        );
        e.item.as_array()?;
        let Some((program, span)) = args.first() else {
            self.error(
                e.value_span(),
                "`entry` is empty".into(),
                Some("give the program that starts the plugin: entry = [\"bin/plugin\"]".into()),
            );
            return None;
        };
        if !program.starts_with('/') {
            if let Err(why) = package_relative(program) {
                self.error(
                    span.clone(),
                    why,
                    Some("the program is a path inside the package, or an absolute path the policy grants".into()),
                );
                return None;
            }
        }
        Some(args.iter().map(|(s, _)| s.to_string()).collect())
    }

    fn policy_source(&mut self, e: &Entry<'_>) -> Option<PolicySource> {
        if let Some(raw) = e.item.as_str() {
            return match package_relative(raw) {
                Ok(path) => Some(PolicySource::File(path)),
                Err(why) => {
                    self.error(
                        e.value_span(),
                        why,
                        Some("name a policy file inside the package, like \"policy.toml\"".into()),
                    );
                    None
                }
            };
        }
        let Some(table) = e.item.as_table_like() else {
            self.type_error(
                e,
                "a string (a policy file in the package) or a table (`profile`)",
            );
            return None;
        };
        let mut profile: Option<String> = None;
        let mut additions = PolicyAdditions::default();
        let mut seen = Seen::default();
        let mut network_rules: Span = None;
        for pe in self.entries(table, POLICY_TABLE_KEYS, Place::ManifestTable("policy")) {
            if pe.key != "profile" {
                let Some(section) = self.table(&pe) else {
                    continue;
                };
                let lists = ADDITION_LISTS
                    .iter()
                    .find(|(name, _)| *name == pe.key)
                    .map_or(&[][..], |(_, lists)| *lists);
                self.settings_not_added(section, pe.key, lists);
                match pe.key {
                    "filesystem" => additions.filesystem = self.filesystem(section, &mut seen),
                    "network" => {
                        let network = self.network(section, &mut seen);
                        if !network.connect.is_empty() || !network.bind.is_empty() {
                            network_rules = pe.key_span();
                        }
                        additions.network_connect = network.connect;
                        additions.network_bind = network.bind;
                    }
                    "ipc" => additions.ipc_connect = self.ipc(section, &mut seen).connect,
                    _ => {
                        let syscalls = self.syscalls(section);
                        additions.syscalls_allow = syscalls.allow;
                        additions.syscalls_deny = syscalls.deny;
                    }
                }
                continue;
            }
            let Some(raw) = self.string(&pe) else {
                continue;
            };
            if crate::manifest::profiles::get(raw).is_some() {
                profile = Some(raw.to_string());
            } else {
                let names: Vec<&str> = crate::manifest::profiles::names().collect();
                let hint = match crate::diagnostics::nearest(raw, names.iter().copied()) {
                    Some(near) => format!("did you mean \"{near}\"?"),
                    None => format!("the stock profiles are {}", names.join(", ")),
                };
                self.error(
                    pe.value_span(),
                    format!("unknown profile \"{}\"", raw.escape_debug()),
                    Some(hint),
                );
            }
        }
        if profile.is_none() && !table.contains_key("profile") {
            self.error(
                e.key_span(),
                "the `policy` table has no `profile`".into(),
                Some("policy = { profile = \"untrusted-default\" }, or name a policy file".into()),
            );
        }
        let name = profile?;
        // Checks across the profile and what is added to it.
        let text = crate::manifest::profiles::get(&name).unwrap_or_default();
        if let Ok(mut base) = crate::parse_policy(text, &name) {
            if network_rules.is_some() && base.network.mode == crate::model::NetworkMode::None {
                self.error(
                    network_rules,
                    format!(
                        "the profile {name} has no network (mode \"none\"): connect and bind \
                         rules cannot be added to it"
                    ),
                    Some(
                        "use the network-client profile, or a policy file of the plugin's own"
                            .into(),
                    ),
                );
            }
            additions.apply(&mut base);
            self.ipc_visible(&base.filesystem, &seen);
        }
        Some(PolicySource::Profile {
            name,
            additions: Box::new(additions),
        })
    }

    /// A key of an added section that is a setting rather than a list: refused, with the way to
    /// change it.
    fn settings_not_added(&mut self, section: &dyn TableLike, name: &str, lists: &[&str]) {
        for (key, _) in section.iter() {
            if lists.contains(&key) {
                continue;
            }
            let known = match name {
                "filesystem" => FILESYSTEM_KEYS.contains(&key),
                "network" => NETWORK_KEYS.contains(&key),
                "ipc" => IPC_KEYS.contains(&key),
                _ => SYSCALLS_KEYS.contains(&key),
            };
            if !known {
                continue; // the section's own check names it
            }
            let span = section.get_key_value(key).and_then(|(k, _)| k.span());
            self.error(
                span,
                format!(
                    "`{key}` in [policy.{name}] is a setting of the profile: a manifest only adds \
                     to the profile's lists ({})",
                    lists.join(", ")
                ),
                Some(
                    "to change a setting, give the plugin a policy file: policy = \"policy.toml\""
                        .into(),
                ),
            );
        }
    }

    fn methods(&mut self, table: &dyn TableLike, span: Span) -> BTreeMap<String, Method> {
        let mut methods = BTreeMap::new();
        if table.len() > MAX_METHODS {
            self.error(
                span,
                format!("{} methods: at most {MAX_METHODS}", table.len()),
                None,
            );
            return methods;
        }
        for (name, item) in table.iter() {
            let key_span = table.get_key_value(name).and_then(|(k, _)| k.span());
            if !valid_method_name(name) {
                self.error(
                    key_span.clone(),
                    format!("invalid method name \"{}\"", name.escape_debug()),
                    Some(
                        "a method name is letters, digits, `_`, `.` and `-`, at most 128 bytes; \
                         `initialize`, `shutdown`, `ping` and names starting with `rpc.` or \
                         `stockade.` are the host's"
                            .into(),
                    ),
                );
                continue;
            }
            let Some(body) = item.as_table_like() else {
                self.error(
                    item.span().or(key_span),
                    format!(
                        "method `{name}` must be a table, found {}",
                        super::item_type(item)
                    ),
                    Some(format!("[methods.{name}] with at least `params`")),
                );
                continue;
            };
            if let Some(m) = self.method(name, body, key_span) {
                methods.insert(name.to_string(), m);
            }
        }
        methods
    }

    fn method(&mut self, name: &str, table: &dyn TableLike, span: Span) -> Option<Method> {
        let mut params = None;
        let mut result = None;
        let mut timeout = DEFAULT_CALL_TIMEOUT;
        let mut max_in_flight = DEFAULT_MAX_IN_FLIGHT;
        let mut audit_params = false;
        let mut redact = Vec::new();
        for e in self.entries(table, METHOD_KEYS, Place::Method) {
            match e.key {
                "params" => params = self.schema(&e),
                "result" => result = self.schema(&e),
                "timeout" => {
                    if let Some(d) = self.duration_in(&e, Duration::ZERO, DAY) {
                        timeout = d;
                    }
                }
                "max_in_flight" => {
                    if let Some(n) = self.integer_in(&e, 1, MAX_IN_FLIGHT, None) {
                        max_in_flight = n as u32;
                    }
                }
                "audit_params" => match e.item.as_bool() {
                    Some(b) => audit_params = b,
                    None => self.type_error(&e, "true or false"),
                },
                "redact" => {
                    redact = self
                        .bounded_string_array(
                            &e,
                            MAX_REDACT,
                            "names",
                            "name the fields that hold secrets, not every field",
                        )
                        .into_iter()
                        .map(|(s, _)| s.to_string())
                        .collect()
                }
                _ => {}
            }
        }
        if params.is_none() && !table.contains_key("params") {
            self.error(
                span,
                format!("method `{name}` has no `params`"),
                Some(
                    "give the JSON Schema of its parameters, like params = { type = \"object\" }"
                        .into(),
                ),
            );
        }
        Some(Method {
            params: params?,
            result,
            timeout,
            max_in_flight,
            audit_params,
            redact,
        })
    }

    /// A JSON Schema written in TOML: a table (a schema object) or a boolean.
    fn schema(&mut self, e: &Entry<'_>) -> Option<serde_json::Value> {
        if let Some(b) = e.item.as_bool() {
            return Some(serde_json::Value::Bool(b));
        }
        if e.item.as_table_like().is_none() {
            self.type_error(e, "a JSON Schema (a table, or true or false)");
            return None;
        }
        match item_json(e.item, 0) {
            Ok(v) => Some(v),
            Err(why) => {
                self.error(e.value_span(), format!("`{}`: {why}", e.key), None);
                None
            }
        }
    }

    fn lifecycle(&mut self, table: &dyn TableLike) -> Lifecycle {
        let mut l = Lifecycle::default();
        let mut backoff_span = None;
        for e in self.entries(table, LIFECYCLE_KEYS, Place::ManifestTable("lifecycle")) {
            // (the least, the most) each may be: a heartbeat of a millisecond would be a
            // thousand wakeups a second, and a day is longer than any of them needs.
            let limits = match e.key {
                "heartbeat" => (Duration::from_secs(1), DAY),
                "backoff_min" => (Duration::from_millis(10), HOUR),
                "init_timeout" | "stop_timeout" => (Duration::ZERO, HOUR),
                _ => (Duration::ZERO, DAY),
            };
            let d = |c: &mut Self| c.duration_in(&e, limits.0, limits.1);
            match e.key {
                "restart" => {
                    if let Some(r) = self.choice(&e, RESTARTS) {
                        l.restart = r;
                    }
                }
                "start_limit" => {
                    if let Some(n) = self.integer_in(&e, 0, 1000, None) {
                        l.start_limit = n as u32;
                    }
                }
                "start_window" => l.start_window = d(self).unwrap_or(l.start_window),
                "backoff_min" => l.backoff_min = d(self).unwrap_or(l.backoff_min),
                "backoff_max" => {
                    backoff_span = e.key_span();
                    l.backoff_max = d(self).unwrap_or(l.backoff_max);
                }
                "stable_after" => l.stable_after = d(self).unwrap_or(l.stable_after),
                "heartbeat" => l.heartbeat = d(self).unwrap_or(l.heartbeat),
                "init_timeout" => l.init_timeout = d(self).unwrap_or(l.init_timeout),
                "stop_timeout" => l.stop_timeout = d(self).unwrap_or(l.stop_timeout),
                _ => {}
            }
        }
        if l.backoff_max < l.backoff_min {
            self.error(
                backoff_span.or(Some(0..0)),
                format!(
                    "`backoff_max` ({}) is shorter than `backoff_min` ({})",
                    show(l.backoff_max),
                    show(l.backoff_min)
                ),
                Some("the delay grows from backoff_min up to backoff_max".into()),
            );
        }
        l
    }
}

impl Checker<'_> {
    /// A duration of at least `min` (and more than zero) and at most `max`.
    fn duration_in(&mut self, e: &Entry<'_>, min: Duration, max: Duration) -> Option<Duration> {
        let d = self.duration(e)?;
        let message = if d < min {
            format!(
                "`{}` must be at least {}, found {}",
                e.key,
                show(min),
                show(d)
            )
        } else if d > max {
            format!(
                "`{}` must be at most {}, found {}",
                e.key,
                show(max),
                show(d)
            )
        } else {
            return Some(d);
        };
        self.error(e.value_span(), message, None);
        None
    }
}

fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A method name the manifest may declare.
pub fn valid_method_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !matches!(name, "initialize" | "shutdown" | "ping")
        && !name.starts_with("rpc.")
        && !name.starts_with("stockade.")
}

/// A TOML item as JSON (for a JSON Schema written in TOML). Dates have no JSON form.
fn item_json(item: &Item, depth: usize) -> Result<serde_json::Value, String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!("nested deeper than {MAX_SCHEMA_DEPTH} levels"));
    }
    if let Some(table) = item.as_table_like() {
        let mut map = serde_json::Map::new();
        for (k, v) in table.iter() {
            map.insert(k.to_string(), item_json(v, depth + 1)?);
        }
        return Ok(serde_json::Value::Object(map));
    }
    if let Some(array) = item.as_array_of_tables() {
        return array
            .iter()
            .map(|t| item_json(&Item::Table(t.clone()), depth + 1))
            .collect::<Result<Vec<_>, _>>()
            .map(serde_json::Value::Array);
    }
    match item.as_value() {
        Some(v) => value_json(v, depth),
        None => Err("an empty item".into()),
    }
}

fn value_json(v: &Value, depth: usize) -> Result<serde_json::Value, String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!("nested deeper than {MAX_SCHEMA_DEPTH} levels"));
    }
    Ok(match v {
        Value::String(s) => serde_json::Value::String(s.value().clone()),
        Value::Integer(i) => serde_json::Value::from(*i.value()),
        Value::Float(f) => serde_json::Number::from_f64(*f.value())
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("{} has no JSON form", f.value()))?,
        Value::Boolean(b) => serde_json::Value::Bool(*b.value()),
        Value::Datetime(d) => return Err(format!("the date {} has no JSON form", d.value())),
        Value::Array(a) => serde_json::Value::Array(
            a.iter()
                .map(|x| value_json(x, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::InlineTable(t) => {
            let mut map = serde_json::Map::new();
            for (k, x) in t.iter() {
                map.insert(k.to_string(), value_json(x, depth + 1)?);
            }
            serde_json::Value::Object(map)
        }
    })
}
