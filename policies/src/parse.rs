//! Policy files (TOML) into a validated [`Policy`].
//!
//! Why a hand-written walk over `toml_edit` rather than serde: every error must point at the key or
//! value that caused it, and every error of the file must be reported in one run. serde stops at the
//! first error and forgets positions; `toml_edit::ImDocument` keeps the byte span of every key and
//! value, so each check below can say exactly where it failed and go on.
//!
//! The order: syntax (toml_edit; nothing can be checked past a syntax error), then each table on its
//! own (types, ranges, names), then the checks across tables (`tmp_size` needs `$TMP`, network rules
//! need `mode = "allow"`), so a contradiction is reported even when both halves are valid alone.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use toml_edit::{ImDocument, Item, TableLike, Value};

use crate::diagnostics::{
    all_of, nearest, one_of, Diagnostic, Diagnostics, LoadError, MAX_DIAGNOSTICS, MAX_POLICY_BYTES,
};
use crate::model::*;
use crate::syscalls;

pub(crate) mod manifest;

// The vocabulary of the language, shared with `schema.rs` so the schema editors validate against
// cannot drift from what the parser accepts (a unit test there checks both directions).

/// The only version of the language this parser understands.
pub(crate) const LANGUAGE_VERSION: i64 = 1;
pub(crate) const TOP_KEYS: &[&str] = &[
    "version",
    "description",
    "filesystem",
    "network",
    "ipc",
    "syscalls",
    "resources",
    "enforcement",
    "monitor",
];
pub(crate) const FILESYSTEM_KEYS: &[&str] = &["read", "write", "exec", "absent", "tmp_exec"];
pub(crate) const NETWORK_KEYS: &[&str] = &["mode", "connect", "bind"];
/// Rules per `connect` or `bind` list: the eBPF programs match against a fixed-size array (32
/// entries; `bind` also holds the two implicit UDP port-0 rules).
pub const MAX_NETWORK_RULES: usize = 30;
pub(crate) const RULE_KEYS: &[&str] = &["protocol", "address", "port", "ports", "except"];
/// Networks excluded from the rules of one `connect` or `bind` list, after the named sets are
/// expanded, counting a network that several rules exclude once (the eBPF programs keep one
/// fixed-size array per list, each entry marking the rules it applies to); also the most entries
/// one rule's `except` may list.
pub const MAX_EXCLUSIONS: usize = 32;
pub(crate) const SYSCALLS_KEYS: &[&str] = &["profile", "allow", "deny", "deny_action"];
pub(crate) const RESOURCES_KEYS: &[&str] = &[
    "memory", "pids", "cpu", "nofile", "fsize", "tmp_size", "timeout",
];
pub(crate) const ENFORCEMENT_KEYS: &[&str] = &["mode", "threshold", "window", "action"];
pub(crate) const IPC_KEYS: &[&str] = &["connect", "bind_abstract"];
pub(crate) const MONITOR_KEYS: &[&str] = &["syscall_tracepoint"];
/// Paths in `[ipc] connect`: each is one entry of a kernel map per sandbox.
pub const MAX_IPC_PATHS: usize = 64;
/// The longest path a pathname unix socket can have: `sun_path` holds 108 bytes with the NUL.
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

// Bounds on the work a policy can ask for: policies come from plugin authors, and checking one
// must not cost the supervisor more than a few milliseconds however it is written. With the file
// at most MAX_POLICY_BYTES, these keep every list, and so every check, small.

/// Paths per `[filesystem]` list: each becomes a bind mount and a Landlock rule. A policy that
/// needs more grants a directory above them.
pub const MAX_PATHS_PER_LIST: usize = 10_000;
/// Names per `[syscalls]` `allow` or `deny` list: x86_64 has fewer than 500 system calls, and
/// each may be listed once.
pub const MAX_SYSCALLS_PER_LIST: usize = 1_024;
/// The longest path, in bytes: the kernel's PATH_MAX (4096) counts the final NUL, and refuses
/// anything longer with ENAMETOOLONG.
pub const MAX_PATH_BYTES: usize = 4_095;

pub(crate) const NETWORK_MODES: &[(&str, NetworkMode)] =
    &[("none", NetworkMode::None), ("allow", NetworkMode::Allow)];
pub(crate) const PROTOCOLS: &[(&str, Protocol)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];
pub(crate) const SYSCALL_PROFILES: &[(&str, SyscallProfile)] = &[
    ("default", SyscallProfile::Default),
    ("strict", SyscallProfile::Strict),
];
pub(crate) const DENY_ACTIONS: &[(&str, DenyAction)] =
    &[("eperm", DenyAction::Eperm), ("kill", DenyAction::Kill)];
pub(crate) const ENFORCEMENT_MODES: &[(&str, EnforcementMode)] = &[
    ("monitor", EnforcementMode::Monitor),
    ("enforce", EnforcementMode::Enforce),
];
pub(crate) const THRESHOLD_ACTIONS: &[(&str, ThresholdAction)] = &[
    ("kill", ThresholdAction::Kill),
    ("report", ThresholdAction::Report),
];

/// RLIMIT_NOFILE below this leaves no room for stdin/out/err, the dynamic loader's and libc's own
/// descriptors and the plugin's channel: ordinary programs fail before `main`.
pub(crate) const MIN_NOFILE: i64 = 16;
/// The kernel's default `fs.nr_open`: setrlimit(RLIMIT_NOFILE) above it fails with EPERM.
pub(crate) const MAX_NOFILE: i64 = 1 << 20;
/// cgroup v2 rejects a cpu.max quota below 1 ms; with the 100 ms period that is 1 % of a core.
pub(crate) const MIN_CPU: f64 = 0.01;
pub(crate) const MAX_CPU: f64 = 1024.0;
/// The mount points the shim builds itself; a bind below them would be hidden or would hide them.
pub(crate) const RESERVED_DIRS: &[&str] = &["/proc", "/dev"];
/// Where `$TMP` appears inside the sandbox.
pub(crate) const TMP_DIR: &str = "/tmp";

/// Reads and validates the policy file at `path`, which must be a regular file of at most
/// [`MAX_POLICY_BYTES`].
pub fn load_policy(path: &Path) -> Result<Policy, LoadError> {
    let bytes = read_policy_file(path)?;
    let file_name = path.display().to_string();
    match String::from_utf8(bytes) {
        Ok(source) => parse_policy(&source, &file_name).map_err(LoadError::Invalid),
        // TOML is UTF-8 by definition; say where the bad byte is rather than "invalid data".
        Err(err) => {
            let valid = err.utf8_error().valid_up_to();
            let bytes = err.as_bytes();
            let prefix = String::from_utf8_lossy(&bytes[..valid]);
            let source = Source::new(&prefix, &file_name);
            let mut diagnostic = source.diagnostic(
                Some(valid..valid),
                "the file is not valid UTF-8".into(),
                Some("TOML files are UTF-8; re-save the policy as UTF-8".into()),
            );
            // Past the last valid byte the column is one more than the text before it.
            if valid == prefix.len() {
                diagnostic.column = prefix[prefix.rfind('\n').map_or(0, |nl| nl + 1)..]
                    .chars()
                    .count()
                    + 1;
            }
            Err(LoadError::Invalid(Diagnostics(vec![diagnostic])))
        }
    }
}

/// The bytes of the regular file at `path`, at most [`MAX_POLICY_BYTES`] of them.
///
/// One descriptor from open to the last read, so what was checked is what is read: `open` with
/// O_NONBLOCK, so that a FIFO without a writer does not block it (the flag changes nothing for a
/// regular file), then `fstat` of that descriptor, which refuses anything but a regular file
/// before a byte is read (`/dev/zero` never ends, a FIFO may never answer), then a read of at most
/// one byte past the limit, which bounds the memory even when the size `fstat` gave was wrong (a
/// file that grows, or reports 0 like those of /proc). O_NOCTTY: opening a terminal must not make
/// it ours before it is refused.
fn read_policy_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    let file_type = metadata.file_type();
    if !file_type.is_file() {
        let kind = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_char_device() {
            "a character device"
        } else if file_type.is_block_device() {
            "a block device"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "something else"
        };
        return Err(LoadError::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    let too_large = || LoadError::TooLarge {
        path: path.to_path_buf(),
        limit: MAX_POLICY_BYTES,
    };
    if metadata.len() > MAX_POLICY_BYTES as u64 {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize + 1);
    file.take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Parses and validates a policy. `file_name` only labels the diagnostics. Text longer than
/// [`MAX_POLICY_BYTES`] is refused unread, as [`load_policy`] refuses such a file.
pub fn parse_policy(source: &str, file_name: &str) -> Result<Policy, Diagnostics> {
    check_document(
        source,
        file_name,
        "policy",
        Some("grant common parent directories rather than every path below them"),
        |checker, root| Some(checker.policy(root)),
    )
}

/// Runs `check` over the TOML document in `source` (a policy, a manifest), refusing text longer
/// than [`MAX_POLICY_BYTES`] unread; the value only when no diagnostic was recorded.
fn check_document<T>(
    source: &str,
    file_name: &str,
    noun: &str,
    size_hint: Option<&str>,
    check: impl FnOnce(&mut Checker<'_>, &dyn TableLike) -> Option<T>,
) -> Result<T, Diagnostics> {
    if source.len() > MAX_POLICY_BYTES {
        return Err(Diagnostics(vec![Diagnostic {
            file: file_name.to_string(),
            line: 1,
            column: 1,
            message: format!(
                "the {noun} is {} bytes: at most {MAX_POLICY_BYTES} (1 MiB)",
                source.len()
            ),
            hint: size_hint.map(str::to_string),
        }]));
    }
    let mut checker = Checker {
        source: Source::new(source, file_name),
        diagnostics: Vec::new(),
        left_out: 0,
        cutoff: None,
    };
    let value = match ImDocument::parse(source) {
        Ok(document) => check(&mut checker, document.as_table()),
        Err(err) => {
            checker.syntax_error(&err);
            None
        }
    };
    match value {
        Some(value) if checker.diagnostics.is_empty() => Ok(value),
        _ => Err(checker.into_diagnostics()),
    }
}

/// Byte offsets into line:column.
struct Source<'s> {
    text: &'s str,
    file: &'s str,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
    /// UTF-8 continuation bytes before each multiple of [`CHECKPOINT`]: a column is the bytes
    /// since the line's start less the continuation bytes among them, found from the nearest
    /// checkpoint. Counting characters from the line's start instead made each position cost the
    /// length of its line, and a policy written on one long line quadratic in its errors.
    continuations: Vec<usize>,
}

/// Bytes between two entries of `Source::continuations`.
const CHECKPOINT: usize = 256;

fn is_continuation(byte: &u8) -> bool {
    byte & 0xc0 == 0x80
}

impl<'s> Source<'s> {
    fn new(text: &'s str, file: &'s str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        let mut continuations = vec![0];
        for chunk in text.as_bytes().chunks(CHECKPOINT) {
            let before = continuations.last().copied().unwrap_or(0);
            continuations.push(before + chunk.iter().filter(|b| is_continuation(b)).count());
        }
        Source {
            text,
            file,
            line_starts,
            continuations,
        }
    }

    /// UTF-8 continuation bytes in `text[..offset]`.
    fn continuations_before(&self, offset: usize) -> usize {
        let checkpoint = offset / CHECKPOINT;
        let rest = &self.text.as_bytes()[checkpoint * CHECKPOINT..offset];
        self.continuations[checkpoint] + rest.iter().filter(|b| is_continuation(b)).count()
    }

    /// 1-based line and character column of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        // Inside a character (never for a span toml_edit gives) the column counts bytes.
        let column = if self.text.is_char_boundary(offset) {
            offset - start - (self.continuations_before(offset) - self.continuations_before(start))
        } else {
            offset - start
        };
        (line, column + 1)
    }

    fn diagnostic(&self, span: Span, message: String, hint: Option<String>) -> Diagnostic {
        let (line, column) = span.map_or((1, 1), |s| self.position(s.start));
        Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            message,
            hint,
        }
    }
}

type Span = Option<Range<usize>>;

/// What went wrong with one value, before it is given a place in the file.
#[derive(Debug, PartialEq)]
pub(crate) struct Problem {
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

impl Problem {
    fn new(message: String) -> Self {
        Problem {
            message,
            hint: None,
        }
    }

    fn hint(mut self, hint: String) -> Self {
        self.hint = Some(hint);
        self
    }
}

/// One `key = value` of a table, with the key's position.
struct Entry<'d> {
    key: &'d str,
    key_span: Span,
    item: &'d Item,
}

impl Entry<'_> {
    fn key_span(&self) -> Span {
        self.key_span.clone()
    }

    /// Where the value starts; a table built from dotted keys has no span of its own, so fall back
    /// to its key.
    fn value_span(&self) -> Span {
        self.item.span().or_else(|| self.key_span())
    }
}

/// Where a table's keys live, for "unknown key" messages.
#[derive(Clone, Copy)]
enum Place {
    Top,
    Table(&'static str),
    NetworkRule,
    /// A table of a plugin manifest (`plugin.toml`), not of a policy.
    ManifestTable(&'static str),
    /// One `[methods.NAME]` of a manifest.
    Method,
}

impl Place {
    fn suffix(self) -> String {
        match self {
            Place::Top => String::new(),
            Place::Table(name) | Place::ManifestTable(name) => format!(" in [{name}]"),
            Place::NetworkRule => " in a network rule".into(),
            Place::Method => " in a method".into(),
        }
    }

    fn keys_are(self) -> String {
        match self {
            Place::Top => "the top-level keys are".into(),
            Place::Table(name) | Place::ManifestTable(name) => format!("the keys of [{name}] are"),
            Place::NetworkRule => "the keys of a network rule are".into(),
            Place::Method => "the keys of a method are".into(),
        }
    }

    /// Whether a policy's tables are the neighbours ("`memory` belongs in [resources]").
    fn in_policy(self) -> bool {
        matches!(self, Place::Top | Place::Table(_) | Place::NetworkRule)
    }
}

/// Where each table's keys belong, to say "`memory` belongs in [resources]".
const TABLE_KEYS: &[(&str, &[&str])] = &[
    ("filesystem", FILESYSTEM_KEYS),
    ("network", NETWORK_KEYS),
    ("ipc", IPC_KEYS),
    ("syscalls", SYSCALLS_KEYS),
    ("resources", RESOURCES_KEYS),
    ("enforcement", ENFORCEMENT_KEYS),
    ("monitor", MONITOR_KEYS),
];

struct Checker<'s> {
    source: Source<'s>,
    /// The first errors by position, at most twice [`MAX_DIAGNOSTICS`] at any time.
    diagnostics: Vec<Diagnostic>,
    /// Errors found but dropped from `diagnostics` because at least MAX_DIAGNOSTICS + 1 come
    /// before them.
    left_out: usize,
    /// Once MAX_DIAGNOSTICS + 1 errors are kept, the position of the last of them.
    cutoff: Option<(usize, usize)>,
}

/// What the per-table checks leave for the checks across tables.
#[derive(Default)]
struct Seen {
    tmp_granted: bool,
    tmp_size_key: Span,
    /// `tmp_exec = true`.
    tmp_exec_key: Span,
    network_mode: Option<NetworkMode>,
    /// `connect`/`bind` keys with at least one rule.
    network_rule_keys: Vec<(&'static str, Span)>,
    enforcement_mode: Option<EnforcementMode>,
    kill_action_key: Span,
    /// `[ipc] connect` paths, to check that a `[filesystem]` grant makes each visible.
    ipc_connect: Vec<(PolicyPath, Span)>,
    /// `[ipc] bind_abstract`, as given (false when absent).
    bind_abstract: bool,
    /// `syscall_tracepoint = false`.
    untraced_key: Span,
}

impl<'s> Checker<'s> {
    fn error(&mut self, span: Span, message: String, hint: Option<String>) {
        self.error_with(span, |_| (message, hint));
    }

    /// An error whose message and hint are written only if it may be reported: the checks across
    /// lists can find many errors (each writable path inside each of a chain of executable ones)
    /// whose messages quote two long paths.
    fn error_with(&mut self, span: Span, write: impl FnOnce(&Self) -> (String, Option<String>)) {
        let (line, column) = span
            .as_ref()
            .map_or((1, 1), |s| self.source.position(s.start));
        // At or after the last of MAX_DIAGNOSTICS + 1 errors kept so far, it would be sorted after
        // all of them: it can only be counted.
        if self.cutoff.is_some_and(|cutoff| (line, column) >= cutoff) {
            self.left_out += 1;
            return;
        }
        let (message, hint) = write(self);
        let diagnostic = Diagnostic {
            file: self.source.file.to_string(),
            line,
            column,
            message,
            hint,
        };
        self.diagnostics.push(diagnostic);
        // Keep one more than is shown: it is where the summary of the rest points.
        if self.diagnostics.len() > 2 * (MAX_DIAGNOSTICS + 1) {
            self.keep_first(MAX_DIAGNOSTICS + 1);
        }
    }

    /// Keeps the first `n` errors by position. Stable: errors at one position keep the order in
    /// which they were found, so keeping a prefix each time gives the prefix of the whole list.
    fn keep_first(&mut self, n: usize) {
        self.diagnostics.sort_by_key(|d| (d.line, d.column));
        if self.diagnostics.len() >= n {
            self.left_out += self.diagnostics.len() - n;
            self.diagnostics.truncate(n);
            self.cutoff = self.diagnostics.last().map(|d| (d.line, d.column));
        }
    }

    /// The errors in file order, the first MAX_DIAGNOSTICS of them and then, if there were more,
    /// one that counts the rest, placed at the first of them.
    fn into_diagnostics(mut self) -> Diagnostics {
        self.keep_first(MAX_DIAGNOSTICS + 1);
        if let Some(first_left_out) = self.diagnostics.get_mut(MAX_DIAGNOSTICS) {
            let more = self.left_out + 1;
            first_left_out.message = format!(
                "{more} more error{} from here on not shown: at most {MAX_DIAGNOSTICS} are \
                 reported",
                if more == 1 { "" } else { "s" }
            );
            first_left_out.hint =
                Some("fix the errors above and check the policy again to see the rest".into());
        }
        Diagnostics(self.diagnostics)
    }

    fn problem(&mut self, span: Span, problem: Problem) {
        self.error(span, problem.message, problem.hint);
    }

    fn syntax_error(&mut self, err: &toml_edit::TomlError) {
        // toml_edit's messages are several lines ("invalid array\nexpected `]`"); one line reads
        // better in a list of diagnostics.
        let message = err
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(": ");
        self.error(
            err.span(),
            format!("invalid TOML: {message}"),
            Some("fix the syntax first; nothing else in the file was checked".into()),
        );
    }

    /// The whole document, with defaults wherever a value was missing or wrong; the policy is only
    /// returned if no diagnostic was recorded.
    fn policy(&mut self, root: &dyn TableLike) -> Policy {
        let mut seen = Seen::default();
        let mut policy = Policy {
            description: None,
            filesystem: Filesystem::default(),
            network: Network::default(),
            ipc: Ipc::default(),
            syscalls: Syscalls::default(),
            resources: Resources::default(),
            enforcement: Enforcement::default(),
            monitor: MonitorPolicy::default(),
        };
        for entry in self.entries(root, TOP_KEYS, Place::Top) {
            match entry.key {
                "version" => {
                    if let Some(version) = self.integer(&entry) {
                        if version != LANGUAGE_VERSION {
                            self.error(
                                entry.value_span(),
                                format!("unsupported policy version {version}"),
                                Some(format!(
                                    "this stockade understands version {LANGUAGE_VERSION}"
                                )),
                            );
                        }
                    }
                }
                "description" => policy.description = self.string(&entry).map(str::to_string),
                "filesystem" => {
                    if let Some(table) = self.table(&entry) {
                        policy.filesystem = self.filesystem(table, &mut seen);
                    }
                }
                "network" => {
                    if let Some(table) = self.table(&entry) {
                        policy.network = self.network(table, &mut seen);
                    }
                }
                "ipc" => {
                    if let Some(table) = self.table(&entry) {
                        policy.ipc = self.ipc(table, &mut seen);
                    }
                }
                "syscalls" => {
                    if let Some(table) = self.table(&entry) {
                        policy.syscalls = self.syscalls(table);
                    }
                }
                "resources" => {
                    if let Some(table) = self.table(&entry) {
                        policy.resources = self.resources(table, &mut seen);
                    }
                }
                "enforcement" => {
                    if let Some(table) = self.table(&entry) {
                        policy.enforcement = self.enforcement(table, &mut seen);
                    }
                }
                "monitor" => {
                    if let Some(table) = self.table(&entry) {
                        policy.monitor = self.monitor(table, &mut seen);
                    }
                }
                // `entries` only yields the keys of TOP_KEYS.
                _ => {}
            }
        }
        self.across_tables(&seen);
        self.ipc_visible(&policy.filesystem, &seen);
        policy
    }

    fn across_tables(&mut self, seen: &Seen) {
        if seen.tmp_size_key.is_some() && !seen.tmp_granted {
            self.error(
                seen.tmp_size_key.clone(),
                "`tmp_size` is set but the policy grants no private /tmp".into(),
                Some("add \"$TMP\" to `write` in [filesystem], or remove `tmp_size`".into()),
            );
        }
        if seen.tmp_exec_key.is_some() && !seen.tmp_granted {
            self.error(
                seen.tmp_exec_key.clone(),
                "`tmp_exec = true` but the policy grants no private /tmp".into(),
                Some("add \"$TMP\" to `write` in [filesystem], or remove `tmp_exec`".into()),
            );
        }
        if seen.network_mode == Some(NetworkMode::None) {
            for (key, span) in &seen.network_rule_keys {
                self.error(
                    span.clone(),
                    format!(
                        "`{key}` rules contradict `mode = \"none\"`: the sandbox has no network"
                    ),
                    Some("set mode = \"allow\" in [network]".into()),
                );
            }
        }
        // On the host network an abstract name is the host's, and no hook on these kernels
        // refuses a unix bind: the syscall tracepoint kills the process whose bind returned.
        if seen.untraced_key.is_some()
            && seen.network_mode == Some(NetworkMode::Allow)
            && !seen.bind_abstract
        {
            self.error(
                seen.untraced_key.clone(),
                "`syscall_tracepoint = false` leaves `bind_abstract = false` unenforced: on the \
                 host network the syscall tracepoint is what stops a plugin binding the host's \
                 abstract socket names"
                    .into(),
                Some(
                    "keep the tracepoint, set bind_abstract = true in [ipc], or give the plugin \
                     its own network (mode = \"none\" in [network])"
                        .into(),
                ),
            );
        }
        if seen.enforcement_mode == Some(EnforcementMode::Monitor) && seen.kill_action_key.is_some()
        {
            self.error(
                seen.kill_action_key.clone(),
                "`action = \"kill\"` contradicts `mode = \"monitor\"`: monitor mode never kills"
                    .into(),
                Some("set mode = \"enforce\", or action = \"report\"".into()),
            );
        }
    }

    // ---- [filesystem] ----

    fn filesystem(&mut self, table: &dyn TableLike, seen: &mut Seen) -> Filesystem {
        let mut fs = Filesystem::default();
        // Every accepted path with its list and position, for the checks across lists.
        let mut all: Vec<(&'static str, PolicyPath, Span)> = Vec::new();
        for entry in self.entries(table, FILESYSTEM_KEYS, Place::Table("filesystem")) {
            if entry.key == "tmp_exec" {
                match entry.item.as_bool() {
                    Some(b) => {
                        fs.tmp_exec = b;
                        if b {
                            seen.tmp_exec_key = entry.key_span();
                        }
                    }
                    None => self.type_error(&entry, "a boolean (true or false)"),
                }
                continue;
            }
            let (list, paths): (&'static str, &mut Vec<PolicyPath>) = match entry.key {
                "read" => ("read", &mut fs.read),
                "write" => ("write", &mut fs.write),
                "exec" => ("exec", &mut fs.exec),
                "absent" => ("absent", &mut fs.absent),
                _ => continue,
            };
            let mut first_seen: HashMap<PolicyPath, Span> = HashMap::new();
            let raws = self.bounded_string_array(
                &entry,
                MAX_PATHS_PER_LIST,
                "paths",
                "grant a directory above the paths rather than each of them",
            );
            for (raw, span) in raws {
                let path = match parse_path(raw) {
                    Ok(path) => path,
                    Err(problem) => {
                        self.problem(span, problem);
                        continue;
                    }
                };
                if let Some(first) = first_seen.get(&path) {
                    let hint = self.first_listed(first);
                    self.error(
                        span,
                        format!("`{path}` is listed twice in `{list}`"),
                        Some(hint),
                    );
                    continue;
                }
                if list == "absent" {
                    // Grants nothing, so none of the checks across lists apply.
                    if matches!(path, PolicyPath::Var(..)) {
                        self.error(
                            span,
                            format!("`{path}` in `absent` is not a host path"),
                            Some(
                                "`absent` names host paths the sandbox hides (e.g. \"/usr/local\"); \
                                 the launch variables are the sandbox's own"
                                    .into(),
                            ),
                        );
                        continue;
                    }
                    first_seen.insert(path.clone(), span.clone());
                    paths.push(path);
                    continue;
                }
                if matches!(path, PolicyPath::Var(PathVar::Tmp, _)) && list != "write" {
                    self.error(
                        span,
                        format!("`$TMP` is only allowed in `write`, not in `{list}`"),
                        Some(
                            "$TMP is the sandbox's private tmpfs at /tmp: always writable, \
                             executable only with `tmp_exec = true`"
                                .into(),
                        ),
                    );
                    continue;
                }
                if let PolicyPath::Absolute(p) = &path {
                    if let Some(reserved) = RESERVED_DIRS.iter().find(|r| p.starts_with(r)) {
                        self.error(
                            span,
                            format!(
                                "`{path}` is inside {reserved}, which the sandbox builds itself"
                            ),
                            Some(format!(
                                "{reserved} is always present with a fixed content; see \
                                 docs/policy.md"
                            )),
                        );
                        continue;
                    }
                }
                first_seen.insert(path.clone(), span.clone());
                all.push((list, path.clone(), span));
                paths.push(path);
            }
        }
        seen.tmp_granted = fs
            .write
            .iter()
            .any(|p| matches!(p, PolicyPath::Var(PathVar::Tmp, _)));
        if seen.tmp_granted {
            all.retain(|(list, path, span)| {
                let hidden = matches!(path, PolicyPath::Absolute(p) if p.starts_with(TMP_DIR));
                if hidden {
                    self.error(
                        span.clone(),
                        format!("`{path}` in `{list}` is ambiguous: with `$TMP`, /tmp in the sandbox is its own private tmpfs"),
                        Some("name host directories outside /tmp, or pass them as $PLUGIN_DIR or $STATE_DIR".into()),
                    );
                }
                !hidden
            });
        }
        let places = Places::new(&all);
        self.write_xor_exec(&all, &places);
        self.nothing_below_writable(&all, &places);
        fs
    }

    /// W^X across lists: nothing writable may be executable. Landlock grants a rule's rights to
    /// everything below its path, so a writable path inside an executable one (or the reverse)
    /// would let the plugin write a file and execute it; only the mount flags would stand in the
    /// way.
    ///
    /// Each pair of a write and an exec path of which one is inside (or is) the other is judged,
    /// in the order of the lists. The pairs are found from the deeper path's ancestors, not by
    /// comparing every write path with every exec path (10,000 paths took seconds).
    fn write_xor_exec(&mut self, all: &[(&'static str, PolicyPath, Span)], places: &Places) {
        // (write, exec, whether the write path is the inner one): from each write path, the exec
        // paths at or above it; from each exec path, the write paths strictly above it.
        let mut pairs: Vec<(usize, usize, bool)> = places
            .nested_pairs(all, "write", "exec")
            .into_iter()
            .map(|(w, x)| (w, x, true))
            .collect();
        pairs.extend(
            places
                .nested_pairs(all, "exec", "write")
                .into_iter()
                .filter(|&(x, w)| places.keys[x] != places.keys[w])
                .map(|(x, w)| (w, x, false)),
        );
        // The order of the lists: by write path, then by exec path.
        pairs.sort_unstable();
        for (wi, xi, write_inside) in pairs {
            let ((_, w, w_span), (_, x, x_span)) = (&all[wi], &all[xi]);
            let hint = "W^X: Landlock rights reach everything below a path, so the plugin could \
                        write a file there and execute it; separate the two trees";
            if !write_inside {
                self.error_with(x_span.clone(), |_| {
                    (
                        format!("executable path `{x}` is inside writable path `{w}`"),
                        Some(hint.into()),
                    )
                });
            } else if places.keys[wi] != places.keys[xi] {
                self.error_with(w_span.clone(), |_| {
                    (
                        format!("writable path `{w}` is inside executable path `{x}`"),
                        Some(hint.into()),
                    )
                });
            } else if w == x {
                // One place but not one path: `$TMP/x` and /tmp, which the policy cannot hold both
                // of (/tmp is refused next to $TMP), is no error here.
                let (later, earlier) = if start(w_span) > start(x_span) {
                    (w_span, x_span)
                } else {
                    (x_span, w_span)
                };
                self.error_with(later.clone(), |checker| {
                    let hint = format!(
                        "W^X: a path may be writable or executable, not both; {}",
                        checker.first_listed(earlier)
                    );
                    (format!("`{w}` is in both `write` and `exec`"), Some(hint))
                });
            }
        }
    }

    /// A read path inside a write path is resolved on the host through directories the plugin
    /// controls (it could plant a symlink there between launches). Exec paths inside write paths
    /// are already W^X errors.
    fn nothing_below_writable(
        &mut self,
        all: &[(&'static str, PolicyPath, Span)],
        places: &Places,
    ) {
        let mut pairs: Vec<(usize, usize)> = places
            .nested_pairs(all, "read", "write")
            .into_iter()
            .filter(|&(r, w)| places.keys[r] != places.keys[w])
            .map(|(r, w)| (w, r))
            .collect();
        // The order of the lists: by write path, then by read path.
        pairs.sort_unstable();
        for (wi, ri) in pairs {
            let ((_, w, _), (list, inner, span)) = (&all[wi], &all[ri]);
            self.error_with(span.clone(), |_| {
                (
                    format!("`{inner}` in `{list}` lies inside the writable path `{w}`"),
                    Some(
                        "the plugin could replace a directory on its path with a symlink \
                         before the next launch; grant the writable directory alone"
                            .into(),
                    ),
                )
            });
        }
    }

    fn first_listed(&self, span: &Span) -> String {
        let (line, column) = span
            .as_ref()
            .map_or((1, 1), |s| self.source.position(s.start));
        format!("first listed at line {line}, column {column}")
    }

    // ---- [network] ----

    fn network(&mut self, table: &dyn TableLike, seen: &mut Seen) -> Network {
        let mut network = Network::default();
        let mut mode_set = false;
        for entry in self.entries(table, NETWORK_KEYS, Place::Table("network")) {
            match entry.key {
                "mode" => {
                    mode_set = true;
                    if let Some(mode) = self.choice(&entry, NETWORK_MODES) {
                        network.mode = mode;
                        seen.network_mode = Some(mode);
                    }
                }
                "connect" | "bind" => {
                    let key: &'static str = if entry.key == "connect" {
                        "connect"
                    } else {
                        "bind"
                    };
                    let (rules, written) = self.rules(&entry);
                    if written > 0 {
                        seen.network_rule_keys.push((key, entry.key_span()));
                    }
                    if key == "connect" {
                        network.connect = rules;
                    } else {
                        network.bind = rules;
                    }
                }
                _ => {}
            }
        }
        if !mode_set {
            seen.network_mode = Some(NetworkMode::None);
        }
        network
    }

    /// The valid rules of `connect` or `bind`, and how many rules were written (valid or not).
    fn rules(&mut self, entry: &Entry<'_>) -> (Vec<NetworkRule>, usize) {
        let mut tables: Vec<(&dyn TableLike, Span)> = Vec::new();
        match entry.item {
            Item::ArrayOfTables(array) => {
                tables.extend(array.iter().map(|t| (t as &dyn TableLike, t.span())));
            }
            Item::Value(Value::Array(array)) => {
                for value in array.iter() {
                    match value.as_inline_table() {
                        Some(t) => tables.push((t, value.span())),
                        None => self.error(
                            value.span(),
                            format!(
                                "entries of `{}` must be tables, found {}",
                                entry.key,
                                value_type(value)
                            ),
                            Some(RULE_EXAMPLE.into()),
                        ),
                    }
                }
            }
            other => {
                self.error(
                    entry.value_span(),
                    format!(
                        "`{}` must be an array of tables, found {}",
                        entry.key,
                        item_type(other)
                    ),
                    Some(RULE_EXAMPLE.into()),
                );
                return (Vec::new(), 0);
            }
        }
        let written = tables.len();
        if written > MAX_NETWORK_RULES {
            self.error(
                entry.value_span(),
                format!(
                    "{written} `{}` rules: at most {MAX_NETWORK_RULES} fit the kernel's allow list",
                    entry.key
                ),
                Some("merge rules with CIDR networks (\"10.0.0.0/8\") and port ranges (ports = \"8000-8080\")".into()),
            );
        }
        let rules: Vec<NetworkRule> = tables
            .into_iter()
            .filter_map(|(table, span)| self.rule(table, span))
            .collect();
        let mut excluded = std::collections::HashSet::new();
        for rule in &rules {
            excluded.extend(rule.excluded_networks());
        }
        if excluded.len() > MAX_EXCLUSIONS {
            self.error(
                entry.value_span(),
                format!(
                    "the `{}` rules exclude {} different networks: at most {MAX_EXCLUSIONS} fit \
                     the kernel's exclusion list",
                    entry.key,
                    excluded.len()
                ),
                Some(
                    "a network that several rules exclude counts once; exclude wider networks"
                        .into(),
                ),
            );
        }
        (rules, written)
    }

    fn rule(&mut self, table: &dyn TableLike, span: Span) -> Option<NetworkRule> {
        let mut protocol = Some(Protocol::Tcp);
        let mut address = None;
        let mut address_seen = false;
        let mut ports = None;
        let mut port_key: Option<(&str, Span)> = None;
        let mut except: Vec<(Exclusion, Span)> = Vec::new();
        let mut valid = true;
        for entry in self.entries(table, RULE_KEYS, Place::NetworkRule) {
            match entry.key {
                "protocol" => protocol = self.choice(&entry, PROTOCOLS),
                "except" => {
                    except = self.exclusions(&entry);
                    valid &= except.len() == entry.item.as_array().map_or(0, |a| a.len());
                }
                "address" => {
                    address_seen = true;
                    if let Some(raw) = self.string(&entry) {
                        match parse_net(raw) {
                            Ok(net) => address = Some(net),
                            Err(problem) => self.problem(entry.value_span(), problem),
                        }
                    }
                }
                "port" | "ports" => {
                    if let Some((first_key, first_span)) = &port_key {
                        let (later_key, later_span) = if start(first_span) > start(&entry.key_span)
                        {
                            (*first_key, first_span.clone())
                        } else {
                            (entry.key, entry.key_span())
                        };
                        self.error(
                            later_span,
                            format!(
                                "a rule takes `port` or `ports`, not both (remove `{later_key}`)"
                            ),
                            Some(
                                "`port = 443` for one port, `ports = \"8000-8080\"` for a range"
                                    .into(),
                            ),
                        );
                        valid = false;
                        continue;
                    }
                    port_key = Some((entry.key, entry.key_span()));
                    ports = if entry.key == "port" {
                        self.port(&entry)
                    } else {
                        self.port_range(&entry)
                    };
                }
                _ => {}
            }
        }
        if !address_seen {
            self.error(
                span.clone(),
                "network rule has no `address`".into(),
                Some("add address = \"0.0.0.0/0\" (or \"::/0\") to match any address".into()),
            );
        }
        if port_key.is_none() {
            self.error(
                span,
                "network rule has neither `port` nor `ports`".into(),
                Some("add port = 443 for one port, or ports = \"8000-8080\" for a range".into()),
            );
        }
        if let Some(address) = &address {
            for (exclusion, span) in &except {
                if let Err(problem) = exclusion_fits(exclusion, address) {
                    self.problem(span.clone(), problem);
                    valid = false;
                }
            }
        }
        match (protocol, address, ports, valid) {
            (Some(protocol), Some(address), Some(ports), true) => Some(NetworkRule {
                protocol,
                address,
                ports,
                except: except.into_iter().map(|(x, _)| x).collect(),
            }),
            _ => None,
        }
    }

    /// A rule's `except` list: at most [`MAX_EXCLUSIONS`] entries, each a named set or an address
    /// or network, none twice. Only the valid entries are returned.
    fn exclusions(&mut self, entry: &Entry<'_>) -> Vec<(Exclusion, Span)> {
        let items = self.bounded_string_array(
            entry,
            MAX_EXCLUSIONS,
            "entries",
            "exclude wider networks, or name a set (\"private\" is five networks)",
        );
        let mut out: Vec<(Exclusion, Span)> = Vec::new();
        for (raw, span) in items {
            match parse_exclusion(raw) {
                Ok(exclusion) => {
                    if let Some((_, first)) = out.iter().find(|(x, _)| *x == exclusion) {
                        let first = self.first_listed(first);
                        self.error(
                            span,
                            format!("`{raw}` is listed twice in `except`"),
                            Some(first),
                        );
                        continue;
                    }
                    out.push((exclusion, span));
                }
                Err(problem) => self.problem(span, problem),
            }
        }
        out
    }

    fn port(&mut self, entry: &Entry<'_>) -> Option<PortRange> {
        let Some(value) = entry.item.as_integer() else {
            let hint = entry.item.is_str().then(|| {
                "write a range as ports = \"8000-8080\", a single port as a number".into()
            });
            self.error(
                entry.value_span(),
                format!("`port` must be an integer, found {}", item_type(entry.item)),
                hint,
            );
            return None;
        };
        match port_number(value, "`port`") {
            Ok(port) => Some(PortRange {
                first: port,
                last: port,
            }),
            Err(problem) => {
                self.problem(entry.value_span(), problem);
                None
            }
        }
    }

    fn port_range(&mut self, entry: &Entry<'_>) -> Option<PortRange> {
        let Some(raw) = entry.item.as_str() else {
            let hint = entry
                .item
                .is_integer()
                .then(|| "use `port = N` for a single port".into());
            self.error(
                entry.value_span(),
                format!(
                    "`ports` must be a string like \"8000-8080\", found {}",
                    item_type(entry.item)
                ),
                hint,
            );
            return None;
        };
        match parse_port_range(raw) {
            Ok(range) => Some(range),
            Err(problem) => {
                self.problem(entry.value_span(), problem);
                None
            }
        }
    }

    // ---- [ipc] ----

    fn ipc(&mut self, table: &dyn TableLike, seen: &mut Seen) -> Ipc {
        let mut ipc = Ipc::default();
        for entry in self.entries(table, IPC_KEYS, Place::Table("ipc")) {
            match entry.key {
                "connect" => {
                    let raws = self.bounded_string_array(
                        &entry,
                        MAX_IPC_PATHS,
                        "paths",
                        "put the sockets the plugin needs in one directory below a writable \
                         tree, or list only the daemons' sockets",
                    );
                    let mut first_seen: HashMap<PolicyPath, Span> = HashMap::new();
                    for (raw, span) in raws {
                        let path = match parse_socket_path(raw) {
                            Ok(path) => path,
                            Err(problem) => {
                                self.problem(span, problem);
                                continue;
                            }
                        };
                        if let Some(first) = first_seen.get(&path) {
                            let hint = self.first_listed(first);
                            self.error(
                                span,
                                format!("`{path}` is listed twice in `connect`"),
                                Some(hint),
                            );
                            continue;
                        }
                        first_seen.insert(path.clone(), span.clone());
                        seen.ipc_connect.push((path.clone(), span));
                        ipc.connect.push(path);
                    }
                }
                "bind_abstract" => match entry.item.as_bool() {
                    Some(b) => {
                        ipc.bind_abstract = b;
                        seen.bind_abstract = b;
                    }
                    None => self.type_error(&entry, "a boolean (true or false)"),
                },
                _ => {}
            }
        }
        ipc
    }

    /// A socket the plugin may connect to must exist in its root: some `[filesystem]` grant
    /// must hold it. Linear in the paths: each socket's ancestors are looked up.
    fn ipc_visible(&mut self, fs: &Filesystem, seen: &Seen) {
        let granted: std::collections::HashSet<&PolicyPath> =
            fs.read.iter().chain(&fs.write).chain(&fs.exec).collect();
        for (path, span) in &seen.ipc_connect {
            if socket_path_ancestors(path).any(|a| granted.contains(&a)) {
                continue;
            }
            self.error(
                span.clone(),
                format!("`{path}` in [ipc] `connect` is not visible in the sandbox"),
                Some(format!(
                    "grant the socket or its directory in [filesystem], e.g. read = [\"{path}\"]"
                )),
            );
        }
    }

    // ---- [syscalls] ----

    fn syscalls(&mut self, table: &dyn TableLike) -> Syscalls {
        let mut syscalls = Syscalls::default();
        let mut listed: HashMap<String, (&'static str, Span)> = HashMap::new();
        for entry in self.entries(table, SYSCALLS_KEYS, Place::Table("syscalls")) {
            match entry.key {
                "profile" => {
                    if let Some(p) = self.choice(&entry, SYSCALL_PROFILES) {
                        syscalls.profile = p;
                    }
                }
                "deny_action" => {
                    if let Some(a) = self.choice(&entry, DENY_ACTIONS) {
                        syscalls.deny_action = a;
                    }
                }
                "allow" | "deny" => {
                    let list: &'static str = if entry.key == "allow" {
                        "allow"
                    } else {
                        "deny"
                    };
                    let mut names = Vec::new();
                    let names_written = self.bounded_string_array(
                        &entry,
                        MAX_SYSCALLS_PER_LIST,
                        "system calls",
                        "list each system call once",
                    );
                    for (name, span) in names_written {
                        if syscalls::lookup(name).is_none() {
                            // A suggestion compares the name with every system call's: only for
                            // an error that will be reported.
                            self.error_with(span, |_| {
                                let names = syscalls::ALL.iter().map(|(n, _)| *n);
                                let hint = match nearest(name, names) {
                                    Some(near) => format!("did you mean `{near}`?"),
                                    None => "names are those of x86_64 (`man 2 syscalls`), as \
                                             listed in policies/src/syscalls.rs"
                                        .into(),
                                };
                                (format!("unknown system call `{name}`"), Some(hint))
                            });
                            continue;
                        }
                        if let Some((other, first)) = listed.get(name).cloned() {
                            let hint = self.first_listed(&first);
                            if other == list {
                                self.error(
                                    span,
                                    format!("`{name}` is listed twice in `{list}`"),
                                    Some(hint),
                                );
                            } else {
                                self.error(
                                    span,
                                    format!("`{name}` is in both `allow` and `deny`"),
                                    Some(format!("remove it from one of them; {hint}")),
                                );
                            }
                            continue;
                        }
                        listed.insert(name.to_string(), (list, span));
                        names.push(name.to_string());
                    }
                    if list == "allow" {
                        syscalls.allow = names;
                    } else {
                        syscalls.deny = names;
                    }
                }
                _ => {}
            }
        }
        syscalls
    }

    // ---- [resources] ----

    fn resources(&mut self, table: &dyn TableLike, seen: &mut Seen) -> Resources {
        let mut r = Resources::default();
        for entry in self.entries(table, RESOURCES_KEYS, Place::Table("resources")) {
            match entry.key {
                "memory" => r.memory = self.size(&entry),
                "fsize" => r.fsize = self.size(&entry),
                "tmp_size" => {
                    seen.tmp_size_key = entry.key_span();
                    r.tmp_size = self.size(&entry);
                }
                "pids" => r.pids = self.integer_in(&entry, 1, i64::MAX, None).map(|n| n as u64),
                "nofile" => {
                    r.nofile = self
                        .integer_in(
                            &entry,
                            MIN_NOFILE,
                            MAX_NOFILE,
                            Some(
                                "with fewer open files ordinary programs fail before `main` \
                                 (stdio, the dynamic loader and libc need several)",
                            ),
                        )
                        .map(|n| n as u64)
                }
                "cpu" => r.cpu = self.cpu(&entry),
                "timeout" => r.timeout = self.duration(&entry),
                _ => {}
            }
        }
        r
    }

    fn cpu(&mut self, entry: &Entry<'_>) -> Option<f64> {
        let value = match entry.item.as_value() {
            Some(Value::Float(f)) => *f.value(),
            Some(Value::Integer(i)) => *i.value() as f64,
            _ => {
                self.error(
                    entry.value_span(),
                    format!(
                        "`cpu` must be a number (share of one core), found {}",
                        item_type(entry.item)
                    ),
                    Some("cpu = 0.5 is half a core, cpu = 2 is two cores".into()),
                );
                return None;
            }
        };
        if !(MIN_CPU..=MAX_CPU).contains(&value) {
            self.error(
                entry.value_span(),
                format!("`cpu` must be between {MIN_CPU} and {MAX_CPU}, found {value}"),
                Some(
                    "cpu is a share of one core; the kernel's smallest quota is 1% of a core"
                        .into(),
                ),
            );
            return None;
        }
        Some(value)
    }

    // ---- [enforcement] ----

    fn enforcement(&mut self, table: &dyn TableLike, seen: &mut Seen) -> Enforcement {
        let mut e = Enforcement::default();
        seen.enforcement_mode = Some(e.mode);
        for entry in self.entries(table, ENFORCEMENT_KEYS, Place::Table("enforcement")) {
            match entry.key {
                "mode" => {
                    let mode = self.choice(&entry, ENFORCEMENT_MODES);
                    seen.enforcement_mode = mode;
                    if let Some(mode) = mode {
                        e.mode = mode;
                    }
                }
                "threshold" => {
                    if let Some(n) = self.integer_in(&entry, 1, i64::from(u32::MAX), None) {
                        e.threshold = n as u32;
                    }
                }
                "window" => {
                    if let Some(d) = self.duration(&entry) {
                        e.window = d;
                    }
                }
                "action" => {
                    if let Some(action) = self.choice(&entry, THRESHOLD_ACTIONS) {
                        e.action = action;
                        if action == ThresholdAction::Kill {
                            seen.kill_action_key = entry.key_span();
                        }
                    }
                }
                _ => {}
            }
        }
        e
    }

    // ---- [monitor] ----

    fn monitor(&mut self, table: &dyn TableLike, seen: &mut Seen) -> MonitorPolicy {
        let mut m = MonitorPolicy::default();
        for entry in self.entries(table, MONITOR_KEYS, Place::Table("monitor")) {
            if entry.key == "syscall_tracepoint" {
                match entry.item.as_bool() {
                    Some(on) => {
                        m.syscall_tracepoint = on;
                        if !on {
                            seen.untraced_key = entry.key_span();
                        }
                    }
                    None => self.type_error(&entry, "a boolean (true or false)"),
                }
            }
        }
        m
    }

    // ---- typed values ----

    /// The entries of `table` whose keys are in `allowed`; every other key is reported here.
    fn entries<'d>(
        &mut self,
        table: &'d dyn TableLike,
        allowed: &[&str],
        place: Place,
    ) -> Vec<Entry<'d>> {
        let mut known = Vec::new();
        for (key, item) in table.iter() {
            let key_span = table.get_key_value(key).and_then(|(k, _)| k.span());
            if allowed.contains(&key) {
                known.push(Entry {
                    key,
                    key_span,
                    item,
                });
                continue;
            }
            let hint = match nearest(key, allowed.iter().copied()) {
                Some(near) => format!("did you mean `{near}`?"),
                None => match TABLE_KEYS.iter().find(|(table, keys)| {
                    place.in_policy()
                        && keys.contains(&key)
                        && !matches!(place, Place::Table(t) if t == *table)
                }) {
                    Some((table, _)) => format!("`{key}` belongs in [{table}]"),
                    None => format!(
                        "{} {}",
                        place.keys_are(),
                        all_of(&allowed.iter().map(|k| k.to_string()).collect::<Vec<_>>())
                    ),
                },
            };
            self.error(
                key_span,
                format!("unknown key `{key}`{}", place.suffix()),
                Some(hint),
            );
        }
        known
    }

    fn type_error(&mut self, entry: &Entry<'_>, expected: &str) {
        self.error(
            entry.value_span(),
            format!(
                "`{}` must be {expected}, found {}",
                entry.key,
                item_type(entry.item)
            ),
            None,
        );
    }

    fn table<'d>(&mut self, entry: &Entry<'d>) -> Option<&'d dyn TableLike> {
        let table = entry.item.as_table_like();
        if table.is_none() {
            self.type_error(entry, "a table");
        }
        table
    }

    fn string<'d>(&mut self, entry: &Entry<'d>) -> Option<&'d str> {
        let s = entry.item.as_str();
        if s.is_none() {
            self.type_error(entry, "a string");
        }
        s
    }

    fn integer(&mut self, entry: &Entry<'_>) -> Option<i64> {
        let n = entry.item.as_integer();
        if n.is_none() {
            self.type_error(entry, "an integer");
        }
        n
    }

    fn integer_in(
        &mut self,
        entry: &Entry<'_>,
        min: i64,
        max: i64,
        why: Option<&str>,
    ) -> Option<i64> {
        let n = self.integer(entry)?;
        let message = if n < min {
            format!("`{}` must be at least {min}, found {n}", entry.key)
        } else if n > max {
            format!("`{}` must be at most {max}, found {n}", entry.key)
        } else {
            return Some(n);
        };
        self.error(entry.value_span(), message, why.map(str::to_string));
        None
    }

    /// A string that must be one of `choices`.
    fn choice<T: Copy>(&mut self, entry: &Entry<'_>, choices: &[(&str, T)]) -> Option<T> {
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let Some(raw) = entry.item.as_str() else {
            self.type_error(entry, &format!("a string ({})", one_of(&names)));
            return None;
        };
        if let Some((_, value)) = choices.iter().find(|(name, _)| *name == raw) {
            return Some(*value);
        }
        let hint =
            nearest(raw, choices.iter().map(|(n, _)| *n)).map(|n| format!("did you mean \"{n}\"?"));
        self.error(
            entry.value_span(),
            format!(
                "`{}` must be {}, found \"{raw}\"",
                entry.key,
                one_of(&names)
            ),
            hint,
        );
        None
    }

    /// [`Checker::string_array`] of at most `max` entries. A longer list is one error, and its
    /// entries are not checked: the policy is refused anyway, and checking them is what the limit
    /// bounds.
    fn bounded_string_array<'d>(
        &mut self,
        entry: &Entry<'d>,
        max: usize,
        noun: &str,
        hint: &str,
    ) -> Vec<(&'d str, Span)> {
        if let Some(array) = entry.item.as_array() {
            if array.len() > max {
                self.error(
                    entry.value_span(),
                    format!(
                        "{} {noun} in `{}`: at most {max} per list",
                        array.len(),
                        entry.key
                    ),
                    Some(hint.into()),
                );
                return Vec::new();
            }
        }
        self.string_array(entry)
    }

    /// An array of strings, each with its position; entries of other types are reported.
    fn string_array<'d>(&mut self, entry: &Entry<'d>) -> Vec<(&'d str, Span)> {
        let Some(array) = entry.item.as_array() else {
            self.type_error(entry, "an array of strings");
            return Vec::new();
        };
        let mut strings = Vec::new();
        for value in array.iter() {
            match value.as_str() {
                Some(s) => strings.push((s, value.span())),
                None => self.error(
                    value.span(),
                    format!(
                        "entries of `{}` must be strings, found {}",
                        entry.key,
                        value_type(value)
                    ),
                    None,
                ),
            }
        }
        strings
    }

    fn size(&mut self, entry: &Entry<'_>) -> Option<u64> {
        let parsed = match entry.item.as_value() {
            Some(Value::Integer(n)) => positive(*n.value(), entry.key),
            Some(Value::String(s)) => parse_size(s.value()),
            _ => {
                self.error(
                    entry.value_span(),
                    format!(
                        "`{}` must be a size (bytes, or a string like \"256M\"), found {}",
                        entry.key,
                        item_type(entry.item)
                    ),
                    None,
                );
                return None;
            }
        };
        match parsed.and_then(|n| positive_u64(n, entry.key)) {
            Ok(n) => Some(n),
            Err(problem) => {
                self.problem(entry.value_span(), problem);
                None
            }
        }
    }

    fn duration(&mut self, entry: &Entry<'_>) -> Option<Duration> {
        let parsed = match entry.item.as_value() {
            Some(Value::Integer(n)) => positive(*n.value(), entry.key).map(Duration::from_secs),
            Some(Value::String(s)) => parse_duration(s.value()),
            _ => {
                self.error(
                    entry.value_span(),
                    format!(
                        "`{}` must be a duration (seconds, or a string like \"30s\"), found {}",
                        entry.key,
                        item_type(entry.item)
                    ),
                    None,
                );
                return None;
            }
        };
        match parsed {
            Ok(d) if d.is_zero() => {
                self.error(
                    entry.value_span(),
                    format!("`{}` must be longer than 0", entry.key),
                    None,
                );
                None
            }
            Ok(d) => Some(d),
            Err(problem) => {
                self.problem(entry.value_span(), problem);
                None
            }
        }
    }
}

fn start(span: &Span) -> usize {
    span.as_ref().map_or(0, |s| s.start)
}

const RULE_EXAMPLE: &str =
    "write rules like { protocol = \"tcp\", address = \"0.0.0.0/0\", port = 443 }";

fn item_type(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => value_type(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

/// Where each accepted `[filesystem]` path lies ([`inside_key`]), in the order of places.
///
/// Places sort by tree, then component by component, so the places below a place come right
/// after it. One walk in that order with a stack of the enclosing places finds every pair of
/// nested paths, at a cost of the sort and of the pairs found; comparing each path with every
/// other made the checks quadratic (10,000 paths took seconds), and looking up each ancestor of
/// each path would cost the square of a path's length.
struct Places {
    /// `inside_key` of each entry of the list the checks share, by index.
    keys: Vec<(Option<PathVar>, PathBuf)>,
    /// The indices of the entries, sorted by place; stable, so entries at one place keep their
    /// order.
    sorted: Vec<usize>,
}

impl Places {
    fn new(all: &[(&'static str, PolicyPath, Span)]) -> Places {
        let keys: Vec<_> = all.iter().map(|(_, path, _)| inside_key(path)).collect();
        let mut sorted: Vec<usize> = (0..keys.len()).collect();
        sorted.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        Places { keys, sorted }
    }

    /// Every (entry of `inner`, entry of `outer`) whose outer place is the inner one's or one of
    /// its ancestors, in the same tree.
    fn nested_pairs(
        &self,
        all: &[(&'static str, PolicyPath, Span)],
        inner: &str,
        outer: &str,
    ) -> Vec<(usize, usize)> {
        let mut pairs = Vec::new();
        // The `outer` entries at the current place and above it: a chain, shallowest first.
        let mut enclosing: Vec<usize> = Vec::new();
        for group in self.sorted.chunk_by(|&a, &b| self.keys[a] == self.keys[b]) {
            let (tree, place) = &self.keys[group[0]];
            // A place that does not enclose this one encloses nothing after it either: the
            // places below it came right after it.
            while let Some(&top) = enclosing.last() {
                let (top_tree, top_place) = &self.keys[top];
                if top_tree == tree && place.starts_with(top_place) {
                    break;
                }
                enclosing.pop();
            }
            enclosing.extend(group.iter().filter(|&&i| all[i].0 == outer));
            for &i in group.iter().filter(|&&i| all[i].0 == inner) {
                pairs.extend(enclosing.iter().map(|&j| (i, j)));
            }
        }
        pairs
    }
}

/// `$TMP` and `/tmp` are the same place inside the sandbox; other variables are their own trees
/// until `compile` resolves them. Returns (tree, path within it) for "is one inside the other".
fn inside_key(path: &PolicyPath) -> (Option<PathVar>, PathBuf) {
    match path {
        PolicyPath::Absolute(p) => (None, p.clone()),
        PolicyPath::Var(PathVar::Tmp, _) => (None, PathBuf::from(TMP_DIR)),
        PolicyPath::Var(var, rest) => (Some(*var), rest.clone()),
    }
}

// ---- value grammars: pure functions, unit-tested below ----

/// An `[ipc] connect` path: a path (see [`parse_path`]) short enough for `sun_path`, where the
/// length can be known before launch.
pub(crate) fn parse_socket_path(raw: &str) -> Result<PolicyPath, Problem> {
    let path = parse_path(raw)?;
    let len = match &path {
        PolicyPath::Absolute(p) => Some(p.as_os_str().len()),
        // /tmp/rest inside the sandbox.
        PolicyPath::Var(PathVar::Tmp, rest) => Some(TMP_DIR.len() + 1 + rest.as_os_str().len()),
        // Known at launch; `compile` checks it then.
        PolicyPath::Var(..) => None,
    };
    if let Some(len) = len.filter(|&len| len > MAX_SOCKET_PATH_BYTES) {
        return Err(Problem::new(format!(
            "socket path `{path}` is {len} bytes long: at most {MAX_SOCKET_PATH_BYTES}"
        ))
        .hint("a unix socket address holds 108 bytes with the final NUL".into()));
    }
    if matches!(&path, PolicyPath::Var(_, rest) if rest.as_os_str().is_empty()) {
        return Err(
            Problem::new(format!("`{path}` is a directory, not a socket"))
                .hint(format!("name the socket, e.g. \"{path}/daemon.sock\"")),
        );
    }
    Ok(path)
}

/// `path` and every directory above it, in the same form (absolute, or below the same variable).
fn socket_path_ancestors(path: &PolicyPath) -> impl Iterator<Item = PolicyPath> + '_ {
    let (var, inner) = match path {
        PolicyPath::Absolute(p) => (None, p),
        PolicyPath::Var(v, rest) => (Some(*v), rest),
    };
    inner.ancestors().map(move |a| match var {
        None => PolicyPath::Absolute(a.to_path_buf()),
        Some(v) => PolicyPath::Var(v, a.to_path_buf()),
    })
}

/// A `[filesystem]` path: `/abs/path`, `$VAR` or `$VAR/rest`. Normalised (no `.`, no empty or
/// trailing components) so duplicates compare equal; `..` is refused rather than resolved, because
/// with symlinks on the host its meaning depends on the host.
pub(crate) fn parse_path(raw: &str) -> Result<PolicyPath, Problem> {
    if raw.is_empty() {
        return Err(Problem::new("empty path".into()).hint(
            "write an absolute path like \"/usr/lib\" or a variable like \"$PLUGIN_DIR\"".into(),
        ));
    }
    if raw.len() > MAX_PATH_BYTES {
        let beginning: String = raw.chars().take(32).collect();
        return Err(Problem::new(format!(
            "path `{beginning}…` is {} bytes long: at most {MAX_PATH_BYTES}",
            raw.len()
        ))
        .hint(
            "the kernel refuses longer paths (PATH_MAX is 4096 bytes with the final NUL)".into(),
        ));
    }
    if raw.contains('\0') {
        return Err(Problem::new(format!(
            "path `{}` contains a NUL byte",
            raw.escape_default()
        )));
    }
    let (var, rest) = if let Some(after) = raw.strip_prefix('$') {
        let (name, rest) = after.split_once('/').unwrap_or((after, ""));
        let var = PathVar::ALL.into_iter().find(|v| &v.name()[1..] == name);
        let Some(var) = var else {
            // `$PLUGIN_DIRbin`: a known variable glued to the rest of the path.
            if let Some(v) = PathVar::ALL
                .into_iter()
                .find(|v| name.starts_with(&v.name()[1..]))
            {
                let junk = &name[v.name().len() - 1..];
                return Err(Problem::new(format!(
                    "unexpected `{junk}` after `{}` in `{raw}`",
                    v.name()
                ))
                .hint(format!(
                    "separate the rest of the path with `/`: `{}/{junk}`",
                    v.name()
                )));
            }
            let names = PathVar::ALL.map(|v| &v.name()[1..]);
            let hint = match nearest(name.trim_matches(['{', '}']), names) {
                Some(near) => format!("did you mean `${near}`?"),
                None => "the variables are $PLUGIN_DIR, $STATE_DIR and $TMP".into(),
            };
            let message = if rest.is_empty() && !after.contains('/') {
                format!("unknown variable `${name}`")
            } else {
                format!("unknown variable `${name}` in `{raw}`")
            };
            return Err(Problem::new(message).hint(hint));
        };
        (Some(var), rest)
    } else if raw.starts_with('/') {
        (None, raw)
    } else {
        let hint = if raw.starts_with('~') {
            "`~` is not expanded; write the full path".to_string()
        } else {
            format!("write `/{raw}` for a host path, or `$PLUGIN_DIR/{raw}` for one in the plugin's directory")
        };
        return Err(Problem::new(format!(
            "path `{raw}` is relative: paths must be absolute or start with $PLUGIN_DIR, $STATE_DIR or $TMP"
        ))
        .hint(hint));
    };
    if rest.contains('$') {
        return Err(Problem::new(format!(
            "`$` inside `{raw}`: a variable may only start a path"
        ))
        .hint(
            "the variables are $PLUGIN_DIR, $STATE_DIR and $TMP, at the start of a path".into(),
        ));
    }
    let mut normal = PathBuf::new();
    if var.is_none() {
        normal.push("/");
    }
    for component in Path::new(rest).components() {
        match component {
            Component::Normal(c) => normal.push(c),
            Component::ParentDir => {
                return Err(Problem::new(format!("path `{raw}` contains `..`")).hint(
                    "`..` is not resolved (a symlink on the host would change its meaning); write \
                     the path it leads to"
                        .into(),
                ))
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(match var {
        Some(var) => PolicyPath::Var(var, normal),
        None => PolicyPath::Absolute(normal),
    })
}

fn positive(n: i64, key: &str) -> Result<u64, Problem> {
    u64::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| Problem::new(format!("`{key}` must be greater than 0, found {n}")))
}

fn positive_u64(n: u64, key: &str) -> Result<u64, Problem> {
    if n == 0 {
        // tmpfs reads size=0 as "unlimited": refusing 0 everywhere keeps that from slipping in.
        Err(Problem::new(format!("`{key}` must be greater than 0")))
    } else {
        Ok(n)
    }
}

const SIZE_HINT: &str =
    "write bytes as an integer, or a whole number with a unit: \"512K\", \"256M\", \"1G\" (powers of 1024)";

/// `"256M"`, `"1G"`, `"512K"`, `"64MiB"`, `"64MB"`, `"4096"`, `"4096B"`: K, M, G, T are powers of
/// 1024 whether or not an `i` is written, because memory limits are.
pub(crate) fn parse_size(raw: &str) -> Result<u64, Problem> {
    let invalid = || Problem::new(format!("invalid size \"{raw}\"")).hint(SIZE_HINT.into());
    let s = raw.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid());
    }
    let unit = unit.trim_start();
    if unit.starts_with('.') {
        return Err(Problem::new(format!(
            "invalid size \"{raw}\": fractions are not supported"
        ))
        .hint("use a smaller unit: \"1536M\" rather than \"1.5G\"".into()));
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(invalid()),
    };
    let too_large = || Problem::new(format!("size \"{raw}\" is too large"));
    let n: u64 = digits.parse().map_err(|_| too_large())?;
    n.checked_mul(1u64 << shift).ok_or_else(too_large)
}

const DURATION_HINT: &str =
    "write a whole number with a unit: \"250ms\", \"30s\", \"5m\", \"1h\", or an integer of seconds";

/// A duration given on a command line (`stockade run --timeout 30s`), in the policy's syntax.
/// The error is (message, hint).
pub fn parse_duration_arg(raw: &str) -> Result<Duration, (String, Option<String>)> {
    match parse_duration(raw) {
        Ok(d) if d.is_zero() => Err((format!("duration \"{raw}\" must be greater than 0"), None)),
        Ok(d) => Ok(d),
        Err(p) => Err((p.message, p.hint)),
    }
}

/// `"250ms"`, `"30s"`, `"5m"`, `"1h"`.
pub(crate) fn parse_duration(raw: &str) -> Result<Duration, Problem> {
    let invalid = || Problem::new(format!("invalid duration \"{raw}\"")).hint(DURATION_HINT.into());
    let s = raw.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid());
    }
    let unit = unit.trim_start();
    if unit.starts_with('.') {
        return Err(Problem::new(format!(
            "invalid duration \"{raw}\": fractions are not supported"
        ))
        .hint("use a smaller unit: \"1500ms\" rather than \"1.5s\"".into()));
    }
    let too_long = || Problem::new(format!("duration \"{raw}\" is too long"));
    let n: u64 = digits.parse().map_err(|_| too_long())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(too_long),
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(too_long),
        "" => Err(
            Problem::new(format!("duration \"{raw}\" has no unit")).hint(format!(
                "write \"{digits}s\" for seconds, or an integer without quotes"
            )),
        ),
        _ => Err(invalid()),
    }
}

/// `what` names the value in the message: "`port`", or "port" inside a range.
fn port_number(n: i64, what: &str) -> Result<u16, Problem> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| Problem::new(format!("{what} must be between 1 and 65535, found {n}")))
}

/// `"8000-8080"`, or a single `"443"`.
pub(crate) fn parse_port_range(raw: &str) -> Result<PortRange, Problem> {
    let invalid = || {
        Problem::new(format!("invalid port range \"{raw}\""))
            .hint("write two ports separated by `-`, like \"8000-8080\"".into())
    };
    let (first, last) = raw.split_once('-').unwrap_or((raw, raw));
    let number = |s: &str| -> Result<u16, Problem> {
        let n: i64 = s.trim().parse().map_err(|_| invalid())?;
        port_number(n, "a port")
    };
    let (first, last) = (number(first)?, number(last)?);
    if first > last {
        return Err(Problem::new(format!("port range \"{raw}\" is reversed"))
            .hint(format!("write \"{last}-{first}\"")));
    }
    Ok(PortRange { first, last })
}

/// `"10.0.0.0/8"`, `"::/0"`, or a bare address (a full-length prefix).
pub(crate) fn parse_net(raw: &str) -> Result<IpNet, Problem> {
    let (addr_text, prefix_text) = match raw.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (raw, None),
    };
    let addr: IpAddr = addr_text.parse().map_err(|_| {
        let hint = if addr_text.chars().any(|c| c.is_ascii_alphabetic() && !c.is_ascii_hexdigit())
        {
            "host names are not resolved; write an IP address or a CIDR network like \"10.0.0.0/8\""
        } else {
            "write an IPv4 or IPv6 address, optionally with a prefix length: \"10.0.0.0/8\", \"::/0\""
        };
        Problem::new(format!("invalid address \"{raw}\"")).hint(hint.into())
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix_text {
        None => max,
        Some(p) => p.parse::<u8>().map_err(|_| {
            Problem::new(format!("invalid prefix length \"{p}\" in \"{raw}\""))
                .hint(format!("a prefix length is a number from 0 to {max}"))
        })?,
    };
    if prefix > max {
        let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
        return Err(Problem::new(format!(
            "prefix length {prefix} is too long for an {family} address (at most {max})"
        )));
    }
    let network = mask(addr, prefix);
    if network != addr {
        return Err(Problem::new(format!("\"{raw}\" has host bits set"))
            .hint(format!("did you mean \"{network}/{prefix}\"?")));
    }
    Ok(IpNet { addr, prefix })
}

/// One entry of `except`: a named set, or an address or CIDR network.
pub(crate) fn parse_exclusion(raw: &str) -> Result<Exclusion, Problem> {
    if let Some(set) = AddressSet::ALL.into_iter().find(|s| s.name() == raw) {
        return Ok(Exclusion::Set(set));
    }
    let looks_like_address =
        raw.starts_with(|c: char| c.is_ascii_digit()) || raw.contains([':', '.', '/']);
    if looks_like_address {
        let net = parse_net(raw)?;
        if let IpAddr::V6(a) = net.addr {
            if net.prefix >= 96 && a.to_ipv4_mapped().is_some() {
                let v4 = IpNet {
                    addr: IpAddr::V4(a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
                    prefix: net.prefix - 96,
                };
                return Err(Problem::new(format!(
                    "\"{raw}\" is a v4-mapped IPv6 address: such destinations are judged by the IPv4 rules"
                ))
                .hint(format!("exclude \"{v4}\" on the IPv4 rule")));
            }
        }
        return Ok(Exclusion::Net(net));
    }
    let names = AddressSet::ALL.map(|s| s.name());
    let hint = match nearest(raw, names) {
        Some(near) => format!("did you mean \"{near}\"?"),
        None => format!(
            "the sets are {}; or write an address or CIDR network like \"10.0.0.0/8\"",
            all_of(&names.map(|n| format!("\"{n}\"")))
        ),
    };
    Err(Problem::new(format!("unknown address set \"{raw}\"")).hint(hint))
}

/// Whether `exclusion` means something for a rule on `address`: an address or network must lie
/// inside it (of the same family), and nothing may exclude the whole rule. A named set may have
/// no network inside the rule (the same list serves IPv4 and IPv6 rules).
fn exclusion_fits(exclusion: &Exclusion, address: &IpNet) -> Result<(), Problem> {
    for net in exclusion.networks() {
        if net.contains(address) {
            let what = match exclusion {
                Exclusion::Net(_) => format!("\"{net}\""),
                Exclusion::Set(set) => format!("the set \"{}\" ({net})", set.name()),
            };
            return Err(Problem::new(format!(
                "{what} covers the rule's whole address \"{address}\": the rule would allow nothing"
            ))
            .hint("remove the rule, or exclude a smaller network".into()));
        }
    }
    match exclusion {
        Exclusion::Net(net) if net.addr.is_ipv4() != address.addr.is_ipv4() => {
            Err(Problem::new(format!(
                "\"{net}\" is {} but the rule's address \"{address}\" is {}: it excludes nothing",
                family(net),
                family(address)
            ))
            .hint("put it on a rule of its own family".into()))
        }
        Exclusion::Net(net) if !address.contains(net) => Err(Problem::new(format!(
            "\"{net}\" lies outside the rule's address \"{address}\": it excludes nothing"
        ))
        .hint("remove it, or correct the rule's address".into())),
        _ => Ok(()),
    }
}

fn family(net: &IpNet) -> &'static str {
    if net.addr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T: std::fmt::Debug>(r: Result<T, Problem>) -> T {
        match r {
            Ok(v) => v,
            Err(p) => panic!("unexpected problem: {p:?}"),
        }
    }

    fn message<T: std::fmt::Debug>(r: Result<T, Problem>) -> String {
        match r {
            Ok(v) => panic!("expected a problem, got {v:?}"),
            Err(p) => p.message,
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(ok(parse_size("4096")), 4096);
        assert_eq!(ok(parse_size("4096B")), 4096);
        assert_eq!(ok(parse_size("512K")), 512 << 10);
        assert_eq!(ok(parse_size("256M")), 256 << 20);
        assert_eq!(ok(parse_size("256 MB")), 256 << 20);
        assert_eq!(ok(parse_size("64MiB")), 64 << 20);
        assert_eq!(ok(parse_size("1G")), 1 << 30);
        assert_eq!(ok(parse_size("1gib")), 1 << 30);
        assert_eq!(ok(parse_size("2T")), 2 << 40);
        assert_eq!(
            message(parse_size("1.5G")),
            "invalid size \"1.5G\": fractions are not supported"
        );
        assert_eq!(message(parse_size("12X")), "invalid size \"12X\"");
        assert_eq!(message(parse_size("M")), "invalid size \"M\"");
        assert_eq!(message(parse_size("-1M")), "invalid size \"-1M\"");
        assert_eq!(message(parse_size("")), "invalid size \"\"");
        assert_eq!(
            message(parse_size("99999999999T")),
            "size \"99999999999T\" is too large"
        );
        assert_eq!(
            message(parse_size("99999999999999999999")),
            "size \"99999999999999999999\" is too large"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(ok(parse_duration("250ms")), Duration::from_millis(250));
        assert_eq!(ok(parse_duration("30s")), Duration::from_secs(30));
        assert_eq!(ok(parse_duration("5m")), Duration::from_secs(300));
        assert_eq!(ok(parse_duration("1h")), Duration::from_secs(3600));
        assert_eq!(ok(parse_duration(" 2 h ")), Duration::from_secs(7200));
        assert_eq!(
            ok(parse_duration("0s")),
            Duration::ZERO,
            "zero is refused by the caller"
        );
        assert_eq!(message(parse_duration("30")), "duration \"30\" has no unit");
        assert_eq!(
            message(parse_duration("1.5s")),
            "invalid duration \"1.5s\": fractions are not supported"
        );
        assert_eq!(message(parse_duration("5d")), "invalid duration \"5d\"");
        assert_eq!(message(parse_duration("s")), "invalid duration \"s\"");
        assert_eq!(
            message(parse_duration("99999999999999999h")),
            "duration \"99999999999999999h\" is too long"
        );
    }

    #[test]
    fn paths() {
        let abs = |p: &str| PolicyPath::Absolute(PathBuf::from(p));
        let var = |v, p: &str| PolicyPath::Var(v, PathBuf::from(p));
        assert_eq!(ok(parse_path("/usr/lib")), abs("/usr/lib"));
        assert_eq!(
            ok(parse_path("/usr//lib/./x86_64/")),
            abs("/usr/lib/x86_64")
        );
        assert_eq!(ok(parse_path("/")), abs("/"));
        assert_eq!(ok(parse_path("$PLUGIN_DIR")), var(PathVar::PluginDir, ""));
        assert_eq!(ok(parse_path("$PLUGIN_DIR/")), var(PathVar::PluginDir, ""));
        assert_eq!(
            ok(parse_path("$STATE_DIR/db/")),
            var(PathVar::StateDir, "db")
        );
        assert_eq!(ok(parse_path("$TMP/sub")), var(PathVar::Tmp, "sub"));
    }

    #[test]
    fn path_errors() {
        assert_eq!(message(parse_path("")), "empty path");
        assert_eq!(
            message(parse_path("lib")),
            "path `lib` is relative: paths must be absolute or start with $PLUGIN_DIR, $STATE_DIR or $TMP"
        );
        assert_eq!(
            message(parse_path("$HOME/x")),
            "unknown variable `$HOME` in `$HOME/x`"
        );
        assert_eq!(message(parse_path("$STATE")), "unknown variable `$STATE`");
        assert_eq!(
            message(parse_path("$TMPfoo")),
            "unexpected `foo` after `$TMP` in `$TMPfoo`"
        );
        assert_eq!(
            message(parse_path("/a/../b")),
            "path `/a/../b` contains `..`"
        );
        assert_eq!(
            message(parse_path("$PLUGIN_DIR/..")),
            "path `$PLUGIN_DIR/..` contains `..`"
        );
        assert_eq!(
            message(parse_path("/srv/$STATE_DIR")),
            "`$` inside `/srv/$STATE_DIR`: a variable may only start a path"
        );
        assert_eq!(
            message(parse_path("/a\0")),
            "path `/a\\u{0}` contains a NUL byte"
        );
    }

    #[test]
    fn too_many_network_rules() {
        let rules: Vec<String> = (1..=31)
            .map(|p| format!("{{ address = \"10.0.0.1\", port = {p} }}"))
            .collect();
        let text = format!(
            "version = 1\n[network]\nmode = \"allow\"\nconnect = [{}]\n",
            rules.join(", ")
        );
        let diags = parse_policy(&text, "p.toml").unwrap_err();
        assert!(
            diags.to_string().contains("31 `connect` rules: at most 30"),
            "{diags}"
        );
    }

    #[test]
    fn exclusions_parse_and_expand() {
        let text = "[network]\nmode = \"allow\"\nconnect = [\n\
            { address = \"0.0.0.0/0\", port = 443, except = [\"loopback\", \"private\", \"169.254.169.254\", \"broadcast\"] },\n\
            { address = \"::/0\", port = 443, except = [\"loopback\", \"private\", \"broadcast\"] },\n\
            { address = \"10.0.0.0/8\", port = 443, except = [\"loopback\", \"10.1.0.0/16\"] },\n]\n";
        let p = parse_policy(text, "p.toml").unwrap_or_else(|d| panic!("{d}"));
        let [v4, v6, ten] = &p.network.connect[..] else {
            panic!("three rules: {:?}", p.network.connect)
        };
        assert_eq!(
            v4.except,
            vec![
                Exclusion::Set(AddressSet::Loopback),
                Exclusion::Set(AddressSet::Private),
                Exclusion::Net(ok(parse_net("169.254.169.254"))),
                Exclusion::Set(AddressSet::Broadcast),
            ]
        );
        let nets = |r: &NetworkRule| -> Vec<String> {
            r.excluded_networks()
                .iter()
                .map(|n| n.to_string())
                .collect()
        };
        // Each rule gets the networks of its own family that lie inside its address.
        assert_eq!(
            nets(v4),
            [
                "127.0.0.0/8",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "100.64.0.0/10",
                "169.254.169.254/32",
                "255.255.255.255/32"
            ]
        );
        assert_eq!(nets(v6), ["::1/128", "fc00::/7"]);
        assert_eq!(nets(ten), ["10.1.0.0/16"]);
    }

    #[test]
    fn named_sets_are_exactly_documented() {
        let all: Vec<(&str, Vec<String>)> = AddressSet::ALL
            .iter()
            .map(|s| {
                (
                    s.name(),
                    s.networks().iter().map(|n| n.to_string()).collect(),
                )
            })
            .collect();
        let expect = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            all,
            vec![
                ("loopback", expect(&["127.0.0.0/8", "::1/128"])),
                ("link-local", expect(&["169.254.0.0/16", "fe80::/10"])),
                (
                    "private",
                    expect(&[
                        "10.0.0.0/8",
                        "172.16.0.0/12",
                        "192.168.0.0/16",
                        "100.64.0.0/10",
                        "fc00::/7"
                    ])
                ),
                ("unspecified", expect(&["0.0.0.0/8", "::/128"])),
                ("multicast", expect(&["224.0.0.0/4", "ff00::/8"])),
                ("broadcast", expect(&["255.255.255.255/32"])),
            ]
        );
        // Every member is a valid network as the parser would write it (no host bits).
        for set in AddressSet::ALL {
            for net in set.networks() {
                assert_eq!(ok(parse_net(&net.to_string())), *net);
            }
        }
    }

    #[test]
    fn containment_is_by_prefix_and_family() {
        let net = |s: &str| ok(parse_net(s));
        assert!(net("0.0.0.0/0").contains(&net("127.0.0.1")));
        assert!(net("127.0.0.0/8").contains(&net("127.0.0.0/8")));
        assert!(!net("127.0.0.0/8").contains(&net("0.0.0.0/0")));
        assert!(!net("10.0.0.0/8").contains(&net("11.0.0.1")));
        assert!(!net("::/0").contains(&net("127.0.0.1")));
        assert!(net("fc00::/7").contains(&net("fd12::1")));
        assert!(!net("fc00::/7").contains(&net("fe80::1")));
    }

    #[test]
    fn networks() {
        let net = |s: &str| ok(parse_net(s)).to_string();
        assert_eq!(net("0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(net("::/0"), "::/0");
        assert_eq!(net("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(net("192.0.2.7"), "192.0.2.7/32");
        assert_eq!(net("2001:db8::/32"), "2001:db8::/32");
        assert_eq!(net("::1"), "::1/128");
        assert!(ok(parse_net("::/0")).is_any());
        assert_eq!(
            message(parse_net("10.1.0.0/8")),
            "\"10.1.0.0/8\" has host bits set"
        );
        assert_eq!(
            message(parse_net("10.0.0.0/33")),
            "prefix length 33 is too long for an IPv4 address (at most 32)"
        );
        assert_eq!(
            message(parse_net("10.0.0.0/x")),
            "invalid prefix length \"x\" in \"10.0.0.0/x\""
        );
        assert_eq!(message(parse_net("10.0.0")), "invalid address \"10.0.0\"");
        match parse_net("2001:db8::1/32") {
            Err(p) => assert_eq!(p.hint.as_deref(), Some("did you mean \"2001:db8::/32\"?")),
            Ok(n) => panic!("accepted {n}"),
        }
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            ok(parse_port_range("8000-8080")),
            PortRange {
                first: 8000,
                last: 8080
            }
        );
        assert_eq!(
            ok(parse_port_range(" 1 - 65535 ")),
            PortRange {
                first: 1,
                last: 65535
            }
        );
        assert_eq!(
            ok(parse_port_range("443")),
            PortRange {
                first: 443,
                last: 443
            }
        );
        assert_eq!(
            message(parse_port_range("8080-8000")),
            "port range \"8080-8000\" is reversed"
        );
        assert_eq!(
            message(parse_port_range("0-10")),
            "a port must be between 1 and 65535, found 0"
        );
        assert_eq!(
            message(parse_port_range("1-70000")),
            "a port must be between 1 and 65535, found 70000"
        );
        assert_eq!(
            message(parse_port_range("a-b")),
            "invalid port range \"a-b\""
        );
    }

    #[test]
    fn positions_count_characters_from_one() {
        let src = Source::new("a = 1\né = \"ü\" x\n", "f");
        assert_eq!(src.position(0), (1, 1));
        assert_eq!(src.position(4), (1, 5));
        assert_eq!(src.position(6), (2, 1));
        // "é" is two bytes, one column.
        let x = "a = 1\né = \"ü\" x\n".find('x').unwrap_or(0);
        assert_eq!(src.position(x), (2, 9));
    }

    /// Every key of the vocabulary reaches its own check: `key = true` is a type error naming the
    /// key, never "unknown key" and never silently accepted. The schema test checks the same lists
    /// against the schema, so parser, schema and lists agree.
    #[test]
    fn every_listed_key_is_handled() {
        let tables: &[(&str, &[&str])] = &[
            ("", TOP_KEYS),
            ("[filesystem]\n", FILESYSTEM_KEYS),
            ("[network]\n", NETWORK_KEYS),
            ("[syscalls]\n", SYSCALLS_KEYS),
            ("[resources]\n", RESOURCES_KEYS),
            ("[enforcement]\n", ENFORCEMENT_KEYS),
            (
                "[network]\nmode = \"allow\"\n[[network.connect]]\n",
                RULE_KEYS,
            ),
        ];
        for (header, keys) in tables {
            for key in *keys {
                // A value of the wrong type: a boolean, or a string where one is expected.
                let value = if *key == "tmp_exec" {
                    "\"yes\""
                } else {
                    "true"
                };
                let src = format!("{header}{key} = {value}\n");
                let errors = match parse_policy(&src, "t") {
                    Ok(_) => panic!("`{key} = true` accepted in:\n{src}"),
                    Err(d) => d.0,
                };
                assert!(
                    errors
                        .iter()
                        .any(|e| e.message.starts_with(&format!("`{key}` must be"))),
                    "{src}\n{errors:?}"
                );
                assert!(
                    errors.iter().all(|e| !e.message.starts_with("unknown key")),
                    "{errors:?}"
                );
            }
        }
    }

    #[test]
    fn empty_file_is_the_default_policy() {
        let p = match parse_policy("# nothing\n", "t") {
            Ok(p) => p,
            Err(d) => panic!("{d}"),
        };
        assert_eq!(p.filesystem, Filesystem::default());
        assert_eq!(p.network, Network::default());
        assert_eq!(p.syscalls, Syscalls::default());
        assert_eq!(p.resources, Resources::default());
        assert_eq!(p.enforcement, Enforcement::default());
        assert_eq!(p.description, None);
    }

    #[test]
    fn tables_may_be_written_inline_or_dotted() {
        let src = r#"
            version = 1
            filesystem = { exec = ["/usr/bin"] }
            resources.memory = "1G"
            [network]
            mode = "allow"
            [[network.connect]]
            address = "192.0.2.0/24"
            ports = "8000-8080"
            protocol = "udp"
        "#;
        let p = match parse_policy(src, "t") {
            Ok(p) => p,
            Err(d) => panic!("{d}"),
        };
        assert_eq!(
            p.filesystem.exec,
            vec![PolicyPath::Absolute("/usr/bin".into())]
        );
        assert_eq!(p.resources.memory, Some(1 << 30));
        assert_eq!(p.network.connect.len(), 1);
        assert_eq!(p.network.connect[0].protocol, Protocol::Udp);
        assert_eq!(
            p.network.connect[0].ports,
            PortRange {
                first: 8000,
                last: 8080
            }
        );
    }

    #[test]
    fn positions_count_characters_across_checkpoints() {
        // Multi-byte characters before and after several checkpoints of continuation counts.
        let text = format!("a = 1\n{}x{}y\n", "é".repeat(300), "ü".repeat(200));
        let src = Source::new(&text, "f");
        let x = text.find('x').unwrap_or(0);
        let y = text.find('y').unwrap_or(0);
        assert_eq!(src.position(x), (2, 301));
        assert_eq!(src.position(y), (2, 502));
        assert_eq!(src.position(text.len()), (3, 1));
        // Every character boundary agrees with counting from the line's start.
        for (offset, _) in text.char_indices() {
            let start = text[..offset].rfind('\n').map_or(0, |nl| nl + 1);
            let line = text[..offset].matches('\n').count() + 1;
            assert_eq!(
                src.position(offset),
                (line, text[start..offset].chars().count() + 1)
            );
        }
    }

    /// The cross-list checks as they were written first, comparing every path with every other:
    /// the reference the look-ups by ancestor must reproduce, diagnostic for diagnostic, in order.
    fn quadratic_cross_checks(checker: &mut Checker<'_>, all: &[(&'static str, PolicyPath, Span)]) {
        let writes = all.iter().filter(|(list, _, _)| *list == "write");
        let execs = || all.iter().filter(|(list, _, _)| *list == "exec");
        for (_, w, w_span) in writes {
            for (_, x, x_span) in execs() {
                let (later, earlier) = if start(w_span) > start(x_span) {
                    (w_span, x_span)
                } else {
                    (x_span, w_span)
                };
                if w == x {
                    let hint = format!(
                        "W^X: a path may be writable or executable, not both; {}",
                        checker.first_listed(earlier)
                    );
                    checker.error(
                        later.clone(),
                        format!("`{w}` is in both `write` and `exec`"),
                        Some(hint),
                    );
                    continue;
                }
                let (w_place, x_place) = (inside_key(w), inside_key(x));
                let hint = "W^X: Landlock rights reach everything below a path, so the plugin \
                            could write a file there and execute it; separate the two trees";
                if w_place.0 == x_place.0 && w_place.1 != x_place.1 {
                    if w_place.1.starts_with(&x_place.1) {
                        checker.error(
                            w_span.clone(),
                            format!("writable path `{w}` is inside executable path `{x}`"),
                            Some(hint.into()),
                        );
                    } else if x_place.1.starts_with(&w_place.1) {
                        checker.error(
                            x_span.clone(),
                            format!("executable path `{x}` is inside writable path `{w}`"),
                            Some(hint.into()),
                        );
                    }
                }
            }
        }
        for (_, w, _) in all.iter().filter(|(list, _, _)| *list == "write") {
            for (list, inner, span) in all.iter().filter(|(list, _, _)| *list == "read") {
                let (w_place, inner_place) = (inside_key(w), inside_key(inner));
                if w_place.0 == inner_place.0
                    && w_place.1 != inner_place.1
                    && inner_place.1.starts_with(&w_place.1)
                {
                    checker.error(
                        span.clone(),
                        format!("`{inner}` in `{list}` lies inside the writable path `{w}`"),
                        Some(
                            "the plugin could replace a directory on its path with a symlink \
                             before the next launch; grant the writable directory alone"
                                .into(),
                        ),
                    );
                }
            }
        }
    }

    #[test]
    fn cross_list_checks_match_the_quadratic_reference() {
        const POOL: &[&str] = &[
            "/",
            "/a",
            "/a/b",
            "/a/b/c",
            "/ab",
            "/a/c",
            "/tmp",
            "/tmp/x",
            "$TMP",
            "$TMP/x",
            "$TMP/x/y",
            "$PLUGIN_DIR",
            "$PLUGIN_DIR/a",
            "$PLUGIN_DIR/a/b",
            "$STATE_DIR",
            "$STATE_DIR/a",
        ];
        const LISTS: [&str; 3] = ["read", "write", "exec"];
        let text = "x".repeat(4096);
        // xorshift64: a fixed, dependency-free sequence.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut compared = 0;
        for _ in 0..3000 {
            let len = next(12);
            let all: Vec<(&'static str, PolicyPath, Span)> = (0..len)
                .map(|i| {
                    let path = ok(parse_path(POOL[next(POOL.len())]));
                    // Spans in a shuffled order, so "later" is not always the write side.
                    let at = (i * 7 + next(5)) * 13 % 4000;
                    (LISTS[next(3)], path, Some(at..at + 1))
                })
                .collect();
            let mut fast = Checker {
                source: Source::new(&text, "f"),
                diagnostics: Vec::new(),
                left_out: 0,
                cutoff: None,
            };
            let places = Places::new(&all);
            fast.write_xor_exec(&all, &places);
            fast.nothing_below_writable(&all, &places);
            let mut reference = Checker {
                source: Source::new(&text, "f"),
                diagnostics: Vec::new(),
                left_out: 0,
                cutoff: None,
            };
            quadratic_cross_checks(&mut reference, &all);
            assert_eq!(fast.diagnostics, reference.diagnostics, "{all:?}");
            compared += fast.diagnostics.len();
        }
        assert!(
            compared > 1000,
            "the cases found too few errors: {compared}"
        );
    }

    /// Errors found in any order: the first MAX_DIAGNOSTICS by position (ties in the order found)
    /// are kept, the rest counted, exactly as sorting all of them would.
    #[test]
    fn the_first_errors_by_position_are_kept() {
        let text = "x\n".repeat(50);
        let mut checker = Checker {
            source: Source::new(&text, "f"),
            diagnostics: Vec::new(),
            left_out: 0,
            cutoff: None,
        };
        let mut state = 0x1234_5678_9abc_def1_u64;
        let mut all = Vec::new();
        for i in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state % 100) as usize;
            checker.error(Some(at..at + 1), format!("error {i}"), None);
            all.push((checker.source.position(at), format!("error {i}")));
        }
        all.sort_by_key(|(position, _)| *position);
        let kept = checker.into_diagnostics().0;
        assert_eq!(kept.len(), MAX_DIAGNOSTICS + 1);
        for (d, (position, message)) in kept.iter().zip(&all[..MAX_DIAGNOSTICS]) {
            assert_eq!(((d.line, d.column), &d.message), (*position, message));
        }
        let last = &kept[MAX_DIAGNOSTICS];
        assert_eq!((last.line, last.column), all[MAX_DIAGNOSTICS].0);
        assert_eq!(
            last.message,
            "1900 more errors from here on not shown: at most 100 are reported"
        );
    }

    /// A directory of its own for one test (tests run in parallel in one process).
    fn test_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("stockade-policy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create {}: {e}", dir.display());
        }
        dir
    }

    #[test]
    fn load_policy_refuses_devices_and_directories() {
        match load_policy(Path::new("/dev/zero")) {
            Err(LoadError::NotRegularFile { kind, .. }) => assert_eq!(kind, "a character device"),
            other => panic!("/dev/zero: {other:?}"),
        }
        let dir = test_dir("directory");
        match load_policy(&dir) {
            Err(LoadError::NotRegularFile { path, kind }) => {
                assert_eq!((path.as_path(), kind), (dir.as_path(), "a directory"))
            }
            other => panic!("a directory: {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn load_policy_refuses_a_fifo_without_waiting_for_a_writer() {
        let dir = test_dir("fifo");
        let fifo = dir.join("policy.toml");
        let c_path = match std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call; mkfifo only
        // reads it.
        let made = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert_eq!(made, 0, "mkfifo: {}", std::io::Error::last_os_error());
        // No writer ever opens it: a blocking open or read would never return, so wait on a
        // thread and fail the test (rather than hang it) after a generous delay.
        let (done, result) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = done.send(load_policy(&path).map(|_| ()));
        });
        match result.recv_timeout(Duration::from_secs(10)) {
            Ok(Err(LoadError::NotRegularFile { kind, .. })) => assert_eq!(kind, "a FIFO"),
            Ok(other) => panic!("a FIFO: {other:?}"),
            Err(_) => panic!("load_policy blocked on a FIFO with no writer"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn load_policy_reads_at_most_the_limit() {
        let dir = test_dir("size");
        // Exactly the limit: a valid policy padded with comment lines.
        let mut text = String::from("version = 1\n");
        let line = format!("#{}\n", "-".repeat(1022));
        while text.len() + line.len() <= MAX_POLICY_BYTES {
            text.push_str(&line);
        }
        text.push_str(&"#".repeat(MAX_POLICY_BYTES - text.len()));
        assert_eq!(text.len(), MAX_POLICY_BYTES);
        let at_limit = dir.join("at-limit.toml");
        let over = dir.join("over.toml");
        let written = std::fs::write(&at_limit, &text)
            .and_then(|()| std::fs::write(&over, format!("{text}#")));
        assert!(written.is_ok(), "{written:?}");
        if let Err(e) = load_policy(&at_limit) {
            panic!("a policy of exactly the limit: {e}");
        }
        match load_policy(&over) {
            Err(LoadError::TooLarge { limit, .. }) => assert_eq!(limit, MAX_POLICY_BYTES),
            other => panic!("one byte over the limit: {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn load_policy_reports_io_and_encoding() {
        let missing = Path::new("/nonexistent/stockade/policy.toml");
        match load_policy(missing) {
            Err(LoadError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        let dir = std::env::temp_dir().join(format!("stockade-policy-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("latin1.toml");
        if std::fs::write(&file, b"description = \"caf\xe9\"\n").is_ok() {
            match load_policy(&file) {
                Err(LoadError::Invalid(d)) => {
                    assert_eq!((d.0[0].line, d.0[0].column), (1, 19));
                    assert_eq!(d.0[0].message, "the file is not valid UTF-8");
                }
                other => panic!("{other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
