//! A JSON Schema (draft 2020-12) of policy files, for editors.
//!
//! Why: taplo and Even Better TOML validate and complete TOML against a JSON Schema, so a security
//! engineer sees unknown keys and wrong enum values while typing. The schema is looser than the
//! parser (it cannot express W^X or "host bits set"); the parser stays the authority, and the
//! schema must never reject a policy the parser accepts. Keys and enum values come from the
//! parser's own constants, and a test checks the schema's keys against them.

use serde_json::{json, Map, Value};

use crate::compile::{
    DEFAULT_FSIZE_BYTES, DEFAULT_MEMORY_BYTES, DEFAULT_NOFILE, DEFAULT_PIDS, DEFAULT_TMP_SIZE_BYTES,
};
use crate::model::AddressSet;
use crate::parse::{
    DENY_ACTIONS, ENFORCEMENT_MODES, LANGUAGE_VERSION, MAX_CPU, MAX_EXCLUSIONS, MAX_NOFILE,
    MIN_CPU, MIN_NOFILE, NETWORK_MODES, PROTOCOLS, SYSCALL_PROFILES, THRESHOLD_ACTIONS,
};

/// Sizes: bytes, or a whole number with K, M, G or T (powers of 1024), optionally followed by
/// `B` or `iB`, in either case.
const SIZE_PATTERN: &str = "^\\s*[0-9]+\\s*([KkMmGgTt]([Ii]?[Bb])?|[Bb])?\\s*$";
const DURATION_PATTERN: &str = "^\\s*[0-9]+\\s*(ms|s|m|h)\\s*$";
const PORTS_PATTERN: &str = "^\\s*[0-9]{1,5}\\s*(-\\s*[0-9]{1,5}\\s*)?$";
/// A loose shape check; the parser validates the address and the prefix.
const ADDRESS_PATTERN: &str = "^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$";
/// Absolute, or one of the variables followed by nothing or `/`.
const PATH_PATTERN: &str = "^(/|\\$(PLUGIN_DIR|STATE_DIR)(/|$))";
const WRITE_PATH_PATTERN: &str = "^(/|\\$(PLUGIN_DIR|STATE_DIR|TMP)(/|$))";

/// The schema of a policy file.
pub fn json_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Stockade policy",
        "description": "What a sandboxed plugin may do. Reference: docs/policy.md.",
        "type": "object",
        "additionalProperties": false,
        "properties": object(top_level()),
        "$defs": {
            "size": {
                "description": "Bytes as an integer, or a string with a unit: \"512K\", \"256M\", \"1G\" (powers of 1024).",
                "oneOf": [
                    { "type": "integer", "minimum": 1 },
                    { "type": "string", "pattern": SIZE_PATTERN }
                ]
            },
            "duration": {
                "description": "Seconds as an integer, or a string with a unit: \"250ms\", \"30s\", \"5m\", \"1h\".",
                "oneOf": [
                    { "type": "integer", "minimum": 1 },
                    { "type": "string", "pattern": DURATION_PATTERN }
                ]
            },
            "rule": {
                "description": "One allowed destination (connect) or local address (bind).",
                "type": "object",
                "additionalProperties": false,
                "properties": object(rule()),
                "required": ["address"],
                "oneOf": [
                    { "required": ["port"] },
                    { "required": ["ports"] }
                ]
            },
            "rules": {
                "type": "array",
                "items": { "$ref": "#/$defs/rule" }
            }
        }
    })
}

fn object(pairs: Vec<(&'static str, Value)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<Map<_, _>>(),
    )
}

fn names<T>(choices: &'static [(&'static str, T)]) -> Vec<&'static str> {
    choices.iter().map(|(n, _)| *n).collect()
}

fn enumeration(description: &str, choices: Vec<&'static str>, default: &str) -> Value {
    json!({
        "description": description,
        "type": "string",
        "enum": choices,
        "default": default
    })
}

fn paths(description: &str, pattern: &str) -> Value {
    json!({
        "description": description,
        "type": "array",
        "uniqueItems": true,
        "items": { "type": "string", "minLength": 1, "pattern": pattern }
    })
}

fn table(description: &str, properties: Vec<(&'static str, Value)>) -> Value {
    json!({
        "description": description,
        "type": "object",
        "additionalProperties": false,
        "properties": object(properties)
    })
}

fn top_level() -> Vec<(&'static str, Value)> {
    vec![
        (
            "version",
            json!({
                "description": "Version of the policy language. Optional; only 1 exists.",
                "type": "integer",
                "const": LANGUAGE_VERSION
            }),
        ),
        (
            "description",
            json!({ "description": "Free text shown by `stockade policy explain`.", "type": "string" }),
        ),
        (
            "filesystem",
            table(
                "What exists inside the sandbox, and with which rights. A path in no list does not exist inside.",
                filesystem(),
            ),
        ),
        (
            "network",
            table("Network access. Without this table the sandbox has no network.", network()),
        ),
        (
            "ipc",
            table(
                "Unix sockets outside the sandbox's own that the plugin may reach.",
                ipc(),
            ),
        ),
        (
            "syscalls",
            table("The seccomp allow list: a base profile plus additions and removals.", syscalls()),
        ),
        (
            "resources",
            table("cgroup limits, rlimits and the wall-clock timeout.", resources()),
        ),
        (
            "enforcement",
            table("What happens when the plugin violates the policy.", enforcement()),
        ),
        (
            "monitor",
            table(
                "What the eBPF monitors watch for this plugin, and so what the rest of the host pays.",
                monitor(),
            ),
        ),
    ]
}

fn monitor() -> Vec<(&'static str, Value)> {
    vec![(
        "syscall_tracepoint",
        json!({
            "description": "The host-wide syscall tracepoint: per-call counts and the denials of seccomp errno actions, Landlock, the mount table and hidden paths. While a sandbox with it runs every syscall on the host passes it; false: those denials are enforced but not counted as violations.",
            "type": "boolean",
            "default": true
        }),
    )]
}

fn filesystem() -> Vec<(&'static str, Value)> {
    vec![
        (
            "read",
            paths(
                "Read-only, not executable. Absolute paths, or $PLUGIN_DIR / $STATE_DIR optionally followed by /rest.",
                PATH_PATTERN,
            ),
        ),
        (
            "write",
            paths(
                "Read-write, never executable (W^X; the one exception: the private /tmp under tmp_exec). \"$TMP\" grants the private tmpfs at /tmp.",
                WRITE_PATH_PATTERN,
            ),
        ),
        (
            "exec",
            paths(
                "Read-only and executable: binaries and the libraries they map. Implies read.",
                PATH_PATTERN,
            ),
        ),
        (
            "absent",
            paths(
                "Host paths the sandbox does not have and that ordinary programs look for: finding them missing is not a violation. Grants nothing. Absolute paths only.",
                "^/",
            ),
        ),
        (
            "tmp_exec",
            json!({
                "description": "The private /tmp may also hold what the plugin executes: the one exception to W^X, for build tools that run what they compile (cargo's build scripts). Requires \"$TMP\" in write.",
                "type": "boolean",
                "default": false
            }),
        ),
    ]
}

fn network() -> Vec<(&'static str, Value)> {
    vec![
        (
            "mode",
            enumeration(
                "\"none\": an empty network namespace. \"allow\": the host's network, restricted to the rules.",
                names(NETWORK_MODES),
                "none",
            ),
        ),
        (
            "connect",
            json!({
                "description": "Destinations the plugin may connect to (requires mode = \"allow\").",
                "$ref": "#/$defs/rules"
            }),
        ),
        (
            "bind",
            json!({
                "description": "Local addresses and ports the plugin may bind (requires mode = \"allow\").",
                "$ref": "#/$defs/rules"
            }),
        ),
    ]
}

fn ipc() -> Vec<(&'static str, Value)> {
    vec![
        (
            "connect",
            json!({
                "description": "Pathname sockets the plugin may connect and send to, besides those below its writable trees. Each must be visible through a [filesystem] grant.",
                "type": "array",
                "uniqueItems": true,
                "maxItems": crate::parse::MAX_IPC_PATHS,
                "items": { "type": "string", "minLength": 1, "pattern": WRITE_PATH_PATTERN }
            }),
        ),
        (
            "bind_abstract",
            json!({
                "description": "Whether the plugin may bind abstract socket names (on the host network they are the host's).",
                "type": "boolean",
                "default": false
            }),
        ),
    ]
}

fn rule() -> Vec<(&'static str, Value)> {
    vec![
        (
            "protocol",
            enumeration("Transport protocol: TCP or UDP.", names(PROTOCOLS), "tcp"),
        ),
        (
            "address",
            json!({
                "description": "An IP address or CIDR network; \"0.0.0.0/0\" or \"::/0\" for any.",
                "type": "string",
                "pattern": ADDRESS_PATTERN
            }),
        ),
        (
            "port",
            json!({
                "description": "One port. Exactly one of port and ports is required.",
                "type": "integer",
                "minimum": 1,
                "maximum": 65535
            }),
        ),
        (
            "ports",
            json!({
                "description": "An inclusive range, \"8000-8080\". Exactly one of port and ports is required.",
                "type": "string",
                "pattern": PORTS_PATTERN
            }),
        ),
        (
            "except",
            json!({
                "description": "Addresses inside `address` this rule does not cover, whatever their prefix (the exclusion wins): addresses, CIDR networks, or the named sets.",
                "type": "array",
                "maxItems": MAX_EXCLUSIONS,
                "items": {
                    "anyOf": [
                        { "type": "string", "enum": AddressSet::ALL.map(|s| s.name()) },
                        { "type": "string", "pattern": ADDRESS_PATTERN }
                    ]
                }
            }),
        ),
    ]
}

fn syscalls() -> Vec<(&'static str, Value)> {
    let name_list = json!({ "type": "array", "uniqueItems": true, "items": { "type": "string", "pattern": "^[a-z0-9_]+$" } });
    let with = |description: &str| {
        let mut v = name_list.clone();
        v["description"] = json!(description);
        v
    };
    vec![
        (
            "profile",
            enumeration(
                "Base allow list. \"strict\" also removes networking and process creation.",
                names(SYSCALL_PROFILES),
                "default",
            ),
        ),
        ("allow", with("x86_64 system calls added to the profile.")),
        ("deny", with("x86_64 system calls removed from the profile.")),
        (
            "deny_action",
            enumeration(
                "\"eperm\": a denied call fails with EPERM. \"kill\": the process is killed with SIGSYS.",
                names(DENY_ACTIONS),
                "eperm",
            ),
        ),
    ]
}

fn size(description: String, default: u64) -> Value {
    json!({ "description": description, "$ref": "#/$defs/size", "default": default })
}

fn resources() -> Vec<(&'static str, Value)> {
    vec![
        (
            "memory",
            size(
                "Memory of the whole sandbox (cgroup memory.max).".into(),
                DEFAULT_MEMORY_BYTES,
            ),
        ),
        (
            "pids",
            json!({
                "description": "Processes and threads of the whole sandbox (cgroup pids.max).",
                "type": "integer", "minimum": 1, "default": DEFAULT_PIDS
            }),
        ),
        (
            "cpu",
            json!({
                "description": "Share of one core (cgroup cpu.max): 0.5 is half a core, 2 two cores. Unset: no limit.",
                "type": "number", "minimum": MIN_CPU, "maximum": MAX_CPU
            }),
        ),
        (
            "nofile",
            json!({
                "description": "Open files per process (RLIMIT_NOFILE).",
                "type": "integer", "minimum": MIN_NOFILE, "maximum": MAX_NOFILE, "default": DEFAULT_NOFILE
            }),
        ),
        (
            "fsize",
            size(
                "Largest file a process may write (RLIMIT_FSIZE).".into(),
                DEFAULT_FSIZE_BYTES,
            ),
        ),
        (
            "tmp_size",
            size(
                "Size of the private /tmp; requires \"$TMP\" in filesystem.write.".into(),
                DEFAULT_TMP_SIZE_BYTES,
            ),
        ),
        (
            "timeout",
            json!({
                "description": "Wall-clock limit for the whole sandbox. Unset: none.",
                "$ref": "#/$defs/duration"
            }),
        ),
    ]
}

fn enforcement() -> Vec<(&'static str, Value)> {
    vec![
        (
            "mode",
            enumeration(
                "\"enforce\": deny, count, act past the threshold. \"monitor\": record and report only.",
                names(ENFORCEMENT_MODES),
                "enforce",
            ),
        ),
        (
            "threshold",
            json!({
                "description": "Violations within `window` that trigger `action`.",
                "type": "integer", "minimum": 1, "maximum": u32::MAX, "default": 1
            }),
        ),
        (
            "window",
            json!({
                "description": "The sliding window over which violations are counted.",
                "$ref": "#/$defs/duration",
                "default": "60s"
            }),
        ),
        (
            "action",
            enumeration(
                "What crossing the threshold does: \"kill\" the sandbox, or \"report\" only.",
                names(THRESHOLD_ACTIONS),
                "kill",
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{
        ENFORCEMENT_KEYS, FILESYSTEM_KEYS, NETWORK_KEYS, RESOURCES_KEYS, RULE_KEYS, SYSCALLS_KEYS,
        TOP_KEYS,
    };
    use std::collections::BTreeSet;

    fn keys(schema: &Value) -> BTreeSet<&str> {
        schema["properties"]
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    fn set<'a>(list: &[&'a str]) -> BTreeSet<&'a str> {
        list.iter().copied().collect()
    }

    /// The schema's keys are exactly the parser's, table by table (the parser's tests check that
    /// every key in these lists is handled).
    #[test]
    fn schema_keys_match_the_parser() {
        let schema = json_schema();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(keys(&schema), set(TOP_KEYS));
        let p = &schema["properties"];
        assert_eq!(keys(&p["filesystem"]), set(FILESYSTEM_KEYS));
        assert_eq!(keys(&p["network"]), set(NETWORK_KEYS));
        assert_eq!(keys(&p["ipc"]), set(crate::parse::IPC_KEYS));
        assert_eq!(keys(&p["syscalls"]), set(SYSCALLS_KEYS));
        assert_eq!(keys(&p["resources"]), set(RESOURCES_KEYS));
        assert_eq!(keys(&p["enforcement"]), set(ENFORCEMENT_KEYS));
        assert_eq!(keys(&p["monitor"]), set(crate::parse::MONITOR_KEYS));
        assert_eq!(keys(&schema["$defs"]["rule"]), set(RULE_KEYS));
    }

    #[test]
    fn every_table_is_closed_and_described() {
        fn walk(v: &Value, path: &str) {
            if let Some(o) = v.as_object() {
                if o.get("type") == Some(&json!("object")) {
                    assert_eq!(o.get("additionalProperties"), Some(&json!(false)), "{path}");
                }
                if let Some(props) = o.get("properties").and_then(Value::as_object) {
                    for (k, p) in props {
                        assert!(
                            p.get("description").is_some(),
                            "{path}.{k} has no description"
                        );
                        walk(p, &format!("{path}.{k}"));
                    }
                }
                for (k, child) in o {
                    if k != "properties" {
                        walk(child, &format!("{path}/{k}"));
                    }
                }
            }
        }
        walk(&json_schema(), "");
    }

    #[test]
    fn enums_match_the_parser() {
        let schema = json_schema();
        let p = &schema["properties"];
        assert_eq!(
            p["network"]["properties"]["mode"]["enum"],
            json!(["none", "allow"])
        );
        assert_eq!(
            schema["$defs"]["rule"]["properties"]["protocol"]["enum"],
            json!(["tcp", "udp"])
        );
        assert_eq!(
            p["syscalls"]["properties"]["profile"]["enum"],
            json!(["default", "strict"])
        );
        assert_eq!(
            p["syscalls"]["properties"]["deny_action"]["enum"],
            json!(["eperm", "kill"])
        );
        assert_eq!(
            p["enforcement"]["properties"]["mode"]["enum"],
            json!(["monitor", "enforce"])
        );
        assert_eq!(
            p["enforcement"]["properties"]["action"]["enum"],
            json!(["kill", "report"])
        );
    }
}
