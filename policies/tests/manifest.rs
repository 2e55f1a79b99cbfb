//! `plugin.toml`: what the manifest parser accepts, and every error it reports (message, hint,
//! line and column), all at once.

use std::time::Duration;

use stockade_policy::manifest::{PolicySource, Restart, Trust};

mod common;
use common::{manifest, manifest_diagnostics};

const MINIMAL: &str = r#"
id = "echo"
name = "Echo"
version = "0.1.0"
entry = ["bin/echo"]
policy = "policy.toml"
"#;

#[test]
fn a_minimal_manifest_gets_the_defaults() {
    let m = manifest(MINIMAL);
    assert_eq!(m.id, "echo");
    assert_eq!(m.version, semver::Version::new(0, 1, 0));
    assert_eq!(m.entry, vec!["bin/echo"]);
    assert_eq!(m.policy, PolicySource::File("policy.toml".into()));
    assert_eq!(m.trust, Trust::Untrusted);
    assert!(m.methods.is_empty());
    assert_eq!(m.lifecycle.restart, Restart::OnFailure);
    assert_eq!(m.lifecycle.start_limit, 5);
}

#[test]
fn a_full_manifest() {
    let m = manifest(
        r#"
id = "acme.thumbnails-2"
name = "Thumbnails"
version = "2.1.0-rc.1"
description = "Makes thumbnails"
author = "Acme"
entry = ["/usr/bin/python3", "main.py", "--fast"]
policy = { profile = "network-client" }
trust = "trusted"

[methods.resize]
params = { type = "object", properties = { width = { type = "integer", minimum = 1 } }, required = ["width"] }
result = { type = "string" }
timeout = "2s"
max_in_flight = 4

[methods."stats.get"]
params = true

[lifecycle]
restart = "always"
start_limit = 3
start_window = "30s"
backoff_min = "250ms"
backoff_max = "10s"
heartbeat = "5s"
init_timeout = "3s"
stop_timeout = "1s"
"#,
    );
    assert_eq!(m.id, "acme.thumbnails-2");
    assert_eq!(m.version.pre.as_str(), "rc.1");
    assert_eq!(m.description.as_deref(), Some("Makes thumbnails"));
    assert_eq!(m.entry[0], "/usr/bin/python3");
    assert_eq!(
        m.policy,
        PolicySource::Profile {
            name: "network-client".into(),
            additions: Default::default()
        }
    );
    assert_eq!(m.trust, Trust::Trusted);
    let resize = &m.methods["resize"];
    assert_eq!(
        resize.params,
        serde_json::json!({
            "type": "object",
            "properties": { "width": { "type": "integer", "minimum": 1 } },
            "required": ["width"]
        })
    );
    assert_eq!(resize.result, Some(serde_json::json!({ "type": "string" })));
    assert_eq!(resize.timeout, Duration::from_secs(2));
    assert_eq!(resize.max_in_flight, 4);
    assert_eq!(m.methods["stats.get"].params, serde_json::json!(true));
    assert_eq!(m.lifecycle.restart, Restart::Always);
    assert_eq!(m.lifecycle.backoff_min, Duration::from_millis(250));
    assert_eq!(m.lifecycle.stop_timeout, Duration::from_secs(1));
}

#[test]
fn every_error_at_once_with_its_place_and_hint() {
    let src = r#"id = "Echo!"
name = "Echo"
verison = "0.1.0"
entry = ["../escape"]
policy = { profile = "untrusted-defualt" }
trust = "sometimes"

[methods.initialize]
params = true

[methods.greet]
timeout = "1s"

[lifecycle]
backoff_min = "10s"
backoff_max = "1s"
"#;
    let d = manifest_diagnostics(src);
    let got: Vec<(usize, usize, &str, Option<&str>)> = d
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str(), d.hint.as_deref()))
        .collect();
    let want: Vec<(usize, usize, &str, Option<&str>)> = vec![
        (
            1,
            1,
            "the manifest has no `version`",
            Some("add version = \"0.1.0\""),
        ),
        (
            1,
            6,
            "invalid plugin id \"Echo!\"",
            Some(
                "an id is lowercase letters, digits, `.`, `_` and `-`, starting with a letter or \
                 digit, at most 64 bytes",
            ),
        ),
        (
            3,
            1,
            "unknown key `verison` in [plugin.toml]",
            Some("did you mean `version`?"),
        ),
        (
            4,
            10,
            "`../escape` contains `..`: it must stay inside the package",
            Some("the program is a path inside the package, or an absolute path the policy grants"),
        ),
        (
            5,
            22,
            "unknown profile \"untrusted-defualt\"",
            Some("did you mean \"untrusted-default\"?"),
        ),
        (
            6,
            9,
            "`trust` must be \"untrusted\" or \"trusted\", found \"sometimes\"",
            None,
        ),
        (
            8,
            10,
            "invalid method name \"initialize\"",
            Some(
                "a method name is letters, digits, `_`, `.` and `-`, at most 128 bytes; \
                 `initialize`, `shutdown`, `ping` and names starting with `rpc.` or `stockade.` \
                 are the host's",
            ),
        ),
        (
            11,
            10,
            "method `greet` has no `params`",
            Some("give the JSON Schema of its parameters, like params = { type = \"object\" }"),
        ),
        (
            16,
            1,
            "`backoff_max` (1s) is shorter than `backoff_min` (10s)",
            Some("the delay grows from backoff_min up to backoff_max"),
        ),
    ];
    assert_eq!(got, want, "{d:#?}");
}

#[test]
fn schemas_and_entries_that_have_no_form() {
    let d = manifest_diagnostics(&format!(
        "{MINIMAL}[methods.when]\nparams = {{ const = 1979-05-27 }}\n"
    ));
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(
        d[0].message,
        "`params`: the date 1979-05-27 has no JSON form"
    );
    let d = manifest_diagnostics(&MINIMAL.replace("[\"bin/echo\"]", "[]"));
    assert_eq!(d[0].message, "`entry` is empty");
    let d = manifest_diagnostics(&MINIMAL.replace("\"policy.toml\"", "\"/etc/policy.toml\""));
    assert_eq!(
        d[0].message,
        "`/etc/policy.toml` is absolute: a path of the package is relative to it"
    );
    let d = manifest_diagnostics(&MINIMAL.replace("\"0.1.0\"", "\"1.0\""));
    assert!(
        d[0].message.starts_with("invalid version \"1.0\": "),
        "{d:#?}"
    );
}

#[test]
fn ids_and_method_names() {
    for ok in ["a", "0day", "acme.tool_2-beta"] {
        assert!(stockade_policy::valid_id(ok), "{ok}");
    }
    for bad in ["", "-x", ".x", "Ab", "a b", "a/b", &"a".repeat(65)] {
        assert!(!stockade_policy::valid_id(bad), "{bad}");
    }
    for ok in ["resize", "stats.get", "do-it_2"] {
        assert!(stockade_policy::valid_method_name(ok), "{ok}");
    }
    for bad in [
        "",
        "ping",
        "shutdown",
        "rpc.discover",
        "stockade.x",
        "a b",
        "é",
    ] {
        assert!(!stockade_policy::valid_method_name(bad), "{bad}");
    }
}

#[test]
fn durations_are_bounded() {
    let d = manifest_diagnostics(&format!(
        "{MINIMAL}[lifecycle]\nheartbeat = \"10ms\"\nbackoff_max = \"99999999999h\"\n\
         [methods.m]\nparams = true\ntimeout = \"25h\"\n"
    ));
    let got: Vec<&str> = d.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        got,
        [
            "`heartbeat` must be at least 1s, found 10ms",
            "`backoff_max` must be at most 86400s, found 359999999996400s",
            "`timeout` must be at most 86400s, found 90000s",
        ],
        "{d:#?}"
    );
}

const HEAD: &str = r#"
id = "fetcher"
name = "Fetcher"
version = "1.0.0"
entry = ["fetch"]
"#;

#[test]
fn a_stock_profile_plus_additions() {
    let m = manifest(&format!(
        r#"{HEAD}
[policy]
profile = "network-client"

[policy.filesystem]
read = ["/opt/fetcher/data", "/etc/ld.so.cache"]

[policy.network]
connect = [{{ address = "203.0.113.7", port = 443 }}]

[policy.syscalls]
allow = ["inotify_init1"]
"#
    ));
    let PolicySource::Profile { name, additions } = &m.policy else {
        panic!("{:?}", m.policy)
    };
    assert_eq!(name, "network-client");
    assert_eq!(additions.network_connect.len(), 1);
    assert_eq!(additions.syscalls_allow, ["inotify_init1"]);
    let text = stockade_policy::manifest::profiles::get(name).unwrap();
    let mut policy = stockade_policy::parse_policy(text, name).unwrap();
    let before = policy.clone();
    additions.apply(&mut policy);
    // Appended, an entry the profile has already not repeated.
    assert_eq!(
        policy.filesystem.read.len(),
        before.filesystem.read.len() + 1,
        "{:?}",
        policy.filesystem.read
    );
    assert_eq!(
        policy.network.connect.len(),
        before.network.connect.len() + 1
    );
    assert!(policy.syscalls.allow.iter().any(|s| s == "inotify_init1"));
    assert_eq!(policy.network.mode, before.network.mode);
}

#[test]
fn additions_are_lists_and_respect_the_profile() {
    let src = format!(
        r#"{HEAD}
[policy]
profile = "untrusted-default"

[policy.network]
mode = "allow"
connect = [{{ address = "203.0.113.7", port = 443 }}]

[policy.resources]
memory = "1G"
"#
    );
    let d = manifest_diagnostics(&src);
    let got: Vec<(usize, usize, &str)> = d
        .iter()
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                10,
                9,
                "the profile untrusted-default has no network (mode \"none\"): connect and bind rules cannot be added to it"
            ),
            (
                11,
                1,
                "`mode` in [policy.network] is a setting of the profile: a manifest only adds to the profile's lists (connect, bind)"
            ),
            (14, 9, "unknown key `resources` in [policy]"),
        ],
        "{d:#?}"
    );
}

#[test]
fn counters_are_declared_names() {
    let m = manifest(&format!(
        "{MINIMAL}counters = [\"install_success_total\", \"_private\", \"retries2\"]\n"
    ));
    assert_eq!(
        m.counters,
        ["install_success_total", "_private", "retries2"]
    );
    assert!(manifest(MINIMAL).counters.is_empty());
    let d = manifest_diagnostics(&format!(
        "{MINIMAL}counters = [3, \"ok_total\", \"Bad\", \"2fast\", \"a-b\", \"ok_total\"]\n"
    ));
    let got: Vec<&str> = d.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        got,
        [
            "entries of `counters` must be strings, found an integer",
            "invalid counter name \"Bad\"",
            "invalid counter name \"2fast\"",
            "invalid counter name \"a-b\"",
            "the counter `ok_total` is declared twice",
        ],
        "{d:#?}"
    );
    let many: Vec<String> = (0..65).map(|i| format!("\"c{i}\"")).collect();
    let d = manifest_diagnostics(&format!("{MINIMAL}counters = [{}]\n", many.join(", ")));
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(
        d[0].message.starts_with("65 counters in `counters`"),
        "{d:#?}"
    );
}

#[test]
fn per_call_plugins_name_their_class() {
    use stockade_policy::manifest::Mode;
    let m = manifest(&format!(
        "{MINIMAL}mode = \"per-call\"\nclass = \"PipPlugin\"\n\
         init_args = {{ project_root = \"/work\", policy = {{ blocked = [\"evil\"] }} }}\n\
         [per_call]\nwarm = 3\nmax_running = 2\noutput_bytes = 4096\n"
    ));
    let Mode::PerCall(p) = &m.mode else {
        panic!("{:?}", m.mode)
    };
    assert_eq!(p.class, "PipPlugin");
    assert_eq!(
        p.init_args,
        serde_json::json!({ "project_root": "/work", "policy": { "blocked": ["evil"] } })
    );
    assert_eq!((p.warm, p.max_running, p.output_bytes), (3, 2, 4096));
    // The defaults, and the default mode.
    let m = manifest(&format!("{MINIMAL}mode = \"per-call\"\nclass = \"_P2\"\n"));
    let p = m.per_call().expect("per-call");
    assert_eq!((p.warm, p.max_running, p.output_bytes), (1, 8, 1 << 20));
    assert_eq!(p.init_args, serde_json::json!({}));
    assert_eq!(manifest(MINIMAL).mode, Mode::Service);
    assert_eq!(
        manifest(&format!("{MINIMAL}mode = \"service\"\n")).mode,
        Mode::Service
    );

    let messages = |text: &str| -> Vec<String> {
        manifest_diagnostics(&format!("{MINIMAL}{text}"))
            .iter()
            .map(|d| d.message.clone())
            .collect()
    };
    assert_eq!(
        messages("mode = \"per-call\"\n"),
        ["a per-call plugin's manifest has no `class`"]
    );
    assert_eq!(
        messages("mode = \"percall\"\n"),
        ["`mode` must be \"service\" or \"per-call\", found \"percall\""]
    );
    assert_eq!(
        messages("class = \"P\"\ninit_args = {}\n"),
        [
            "`class` is for plugins with mode \"per-call\"",
            "`init_args` is for plugins with mode \"per-call\"",
        ]
    );
    assert_eq!(
        messages(
            "mode = \"per-call\"\nclass = \"os.system\"\ncounters = [\"a\"]\n\
             init_args = 3\n[lifecycle]\nrestart = \"no\"\n[per_call]\nwarm = 33\noutput_bytes = 1\n"
        ),
        [
            "invalid class name \"os.system\"",
            "`counters` is for plugins with mode \"service\"",
            "`init_args` must be a table, found an integer",
            "`lifecycle` is for plugins with mode \"service\"",
            "`warm` must be at most 32, found 33",
            "`output_bytes` must be at least 1024, found 1",
        ]
    );
}

#[test]
fn subscriptions_are_topics_or_prefixes() {
    let m = manifest(&format!(
        "{MINIMAL}subscribe = [\"pip.installed\", \"greetings.*\", \"*\", \"pip.installed\"]\n"
    ));
    assert_eq!(m.subscribe, ["pip.installed", "greetings.*", "*"]);
    use stockade_policy::manifest::topic_matches;
    assert!(topic_matches("greetings.*", "greetings.hello"));
    assert!(!topic_matches("greetings.*", "greeting"));
    assert!(topic_matches("*", "anything"));
    assert!(!topic_matches("pip.installed", "pip.installed.x"));
    let d = manifest_diagnostics(&format!("{MINIMAL}subscribe = [\"a b\", \"x*y\", \"\"]\n"));
    let got: Vec<&str> = d.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        got,
        [
            "invalid topic \"a b\"",
            "invalid topic \"x*y\"",
            "invalid topic \"\""
        ],
        "{d:#?}"
    );
    let d = manifest_diagnostics(&format!(
        "{MINIMAL}mode = \"per-call\"\nclass = \"P\"\nsubscribe = [\"a\"]\n"
    ));
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(
        d[0].message,
        "`subscribe` is for plugins with mode \"service\""
    );
}

#[test]
fn shared_topics_are_declared_like_subscriptions() {
    let m = manifest(&format!(
        "{MINIMAL}publish = [\"greetings.*\"]\nsubscribe = [\"greetings.*\"]\n"
    ));
    assert_eq!(m.publish, ["greetings.*"]);
    assert!(manifest(MINIMAL).publish.is_empty());
    let d = manifest_diagnostics(&format!("{MINIMAL}publish = [\"a b\"]\n"));
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].message, "invalid topic \"a b\"");
}
