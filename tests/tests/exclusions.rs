//! Network exclusions (`except` in a rule): an address a rule's own address covers but its
//! exclusions name is refused by the cgroup programs (EPERM, one network violation), whatever
//! the prefixes; only another rule that names it allows it. The stock network-client profile
//! keeps its internet rules off the host and its networks. Only loopback is used, with listeners
//! the tests open themselves, and 169.254.169.254, which a refused connect() never reaches.

mod harness;
use harness::*;
use serde_json::Value;
use std::net::TcpListener;

/// The violations of a run, from its JSON summary.
fn violations(r: &RunResult) -> Vec<Value> {
    r.summary["monitor"]["first"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no monitor report in the summary:\n{}", r.stderr))
}

fn violation_count(r: &RunResult) -> u64 {
    r.summary["monitor"]["violations"]
        .as_u64()
        .unwrap_or_else(|| panic!("no monitor report in the summary:\n{}", r.stderr))
}

/// Asserts that the run has exactly one violation: a network connect of `object`, EPERM.
#[track_caller]
fn assert_one_refused_connect(r: &RunResult, object: &str) {
    let v = violations(r);
    assert_eq!(v.len(), 1, "expected one violation: {v:#?}\n{}", r.stderr);
    let e = &v[0];
    assert_eq!(e["type"], "violation", "{e}");
    assert_eq!(e["layer"], "network", "{e}");
    assert_eq!(e["action"], "connect", "{e}");
    assert_eq!(e["object"], object, "{e}");
    assert_eq!(e["errno"], "EPERM", "{e}");
    assert_eq!(violation_count(r), 1);
}

#[track_caller]
fn assert_no_violation(r: &RunResult) {
    assert_eq!(
        violation_count(r),
        0,
        "expected no violation: {:#?}\n{}",
        violations(r),
        r.stderr
    );
}

/// TCP to any address on each of `ports`, IPv4 and IPv6, every rule with `except`, plus `extra`
/// rules.
fn any_address_policy(ports: &[u16], except: &str, extra: &str) -> String {
    let mut rules: Vec<String> = Vec::new();
    for port in ports {
        for any in ["0.0.0.0/0", "::/0"] {
            rules.push(format!(
                "{{ address = \"{any}\", port = {port}, except = [{except}] }}"
            ));
        }
    }
    if !extra.is_empty() {
        rules.push(extra.to_string());
    }
    policy(&format!(
        "[network]\nmode = \"allow\"\nconnect = [{}]\n",
        rules.join(", ")
    ))
}

fn ipv6_loopback(test: &str) -> bool {
    if TcpListener::bind("[::1]:0").is_err() {
        println!("skipped: {test}: no IPv6 loopback here");
        return false;
    }
    true
}

#[test]
fn loopback_exclusion_refuses_the_host_on_every_spelling() {
    let test = "loopback_exclusion_refuses_the_host_on_every_spelling";
    if !privileged(test) || !tcp_rules_enforceable(test) || !ipv6_loopback(test) {
        return;
    }
    let v4 = greeter("127.0.0.1:0");
    let v6 = greeter("[::1]:0");
    let excluded = any_address_policy(&[v4, v6], "\"loopback\", \"unspecified\"", "");
    // The control first: without the exclusion, "any address" includes the host's own services,
    // on every spelling (0.0.0.0 reaches the host too). This is the hole.
    let open = any_address_policy(&[v4, v6], "", "");
    for target in [
        format!("127.0.0.1:{v4}"),
        format!("[::1]:{v6}"),
        format!("[::ffff:127.0.0.1]:{v4}"),
        format!("0.0.0.0:{v4}"),
    ] {
        let r = hostile_run("excl-open", &open, &["connect-tcp", &target]);
        assert_line(&r, "ok hello");
        assert_no_violation(&r);
    }
    // With it, each is refused by the cgroup program before any packet is sent, and reported
    // once with the address the kernel judged (a v4-mapped one as IPv4).
    for (target, object) in [
        (format!("127.0.0.1:{v4}"), format!("127.0.0.1:{v4}/tcp")),
        (format!("127.0.0.2:{v4}"), format!("127.0.0.2:{v4}/tcp")),
        (format!("[::1]:{v6}"), format!("[::1]:{v6}/tcp")),
        (
            format!("[::ffff:127.0.0.1]:{v4}"),
            format!("127.0.0.1:{v4}/tcp"),
        ),
        (format!("0.0.0.0:{v4}"), format!("0.0.0.0:{v4}/tcp")),
    ] {
        let r = hostile_run("excl-loopback", &excluded, &["connect-tcp", &target]);
        assert_line(&r, "err EPERM");
        assert_one_refused_connect(&r, &object);
    }
}

/// "Deny wins" is per rule: an exclusion beats its own rule's address, however much wider that
/// is, and a rule that names the address without excluding it is a grant by name. An address the
/// named rule does not cover stays excluded.
#[test]
fn a_rule_that_names_an_excluded_address_allows_only_that_address() {
    let test = "a_rule_that_names_an_excluded_address_allows_only_that_address";
    if !privileged(test) || !tcp_rules_enforceable(test) {
        return;
    }
    let port = greeter("127.0.0.1:0");
    let text = any_address_policy(
        &[port],
        "\"loopback\"",
        &format!("{{ address = \"127.0.0.1\", port = {port} }}"),
    );
    let r = hostile_run(
        "excl-named",
        &text,
        &["connect-tcp", &format!("127.0.0.1:{port}")],
    );
    assert_line(&r, "ok hello");
    assert_no_violation(&r);
    // The same address spelled v4-mapped is the same grant.
    let r = hostile_run(
        "excl-named",
        &text,
        &["connect-tcp", &format!("[::ffff:127.0.0.1]:{port}")],
    );
    assert_line(&r, "ok hello");
    assert_no_violation(&r);
    // 127.0.0.2 is loopback too, and no rule names it: still refused (nothing listens there, so
    // a connect that got through would be ECONNREFUSED, not EPERM).
    let r = hostile_run(
        "excl-named",
        &text,
        &["connect-tcp", &format!("127.0.0.2:{port}")],
    );
    assert_line(&r, "err EPERM");
    assert_one_refused_connect(&r, &format!("127.0.0.2:{port}/tcp"));
    // Within one rule the exclusion wins over a narrower rule address as well.
    let text = policy(&format!(
        "[network]\nmode = \"allow\"\nconnect = [{{ address = \"127.0.0.0/30\", port = {port}, \
         except = [\"127.0.0.1\"] }}]\n"
    ));
    let r = hostile_run(
        "excl-narrow",
        &text,
        &["connect-tcp", &format!("127.0.0.1:{port}")],
    );
    assert_line(&r, "err EPERM");
    assert_one_refused_connect(&r, &format!("127.0.0.1:{port}/tcp"));
}

/// The stock profile's network section, with an `[enforcement]` that kills only after 1000
/// violations, so the fixture can print its answer.
fn network_client_lenient() -> String {
    let text = std::fs::read_to_string(repo_root().join("policies/profiles/network-client.toml"))
        .expect("read network-client.toml");
    let (before, _) = text
        .split_once("[enforcement]")
        .expect("the profile has [enforcement]");
    before.to_string()
}

#[test]
fn network_client_refuses_the_host_and_the_metadata_service() {
    let test = "network_client_refuses_the_host_and_the_metadata_service";
    if !privileged(test) || !tcp_rules_enforceable(test) {
        return;
    }
    let text = network_client_lenient();
    // 169.254.169.254 needs no route: the connect4 program refuses before the route lookup.
    for (target, object) in [
        ("127.0.0.1:443", "127.0.0.1:443/tcp"),
        ("[::ffff:127.0.0.1]:80", "127.0.0.1:80/tcp"),
        ("0.0.0.0:443", "0.0.0.0:443/tcp"),
        ("169.254.169.254:80", "169.254.169.254:80/tcp"),
        ("10.0.0.1:443", "10.0.0.1:443/tcp"),
    ] {
        let r = hostile_run("excl-client", &text, &["connect-tcp", target]);
        assert_line(&r, "err EPERM");
        assert_one_refused_connect(&r, object);
    }
    if TcpListener::bind("[::1]:0").is_ok() {
        let r = hostile_run("excl-client", &text, &["connect-tcp", "[::1]:443"]);
        assert_line(&r, "err EPERM");
        assert_one_refused_connect(&r, "[::1]:443/tcp");
    }
    // Control: DNS to a resolver on loopback is allowed (the profile's port-53 rules exclude
    // neither loopback nor private networks); a datagram needs no listener to be sent.
    let r = hostile_run("excl-client", &text, &["udp-send", "127.0.0.53:53"]);
    assert_line(&r, "ok sent 1");
    assert_no_violation(&r);
}

/// The stock file as shipped: the first reach for the metadata service ends the plugin.
#[test]
fn network_client_as_shipped_unloads_a_plugin_that_reaches_for_the_metadata_service() {
    let test = "network_client_as_shipped_unloads_a_plugin_that_reaches_for_the_metadata_service";
    if !privileged(test) || !tcp_rules_enforceable(test) {
        return;
    }
    let profile = repo_root().join("policies/profiles/network-client.toml");
    let r = run(&profile, &[&hostile(), "connect-tcp", "169.254.169.254:80"]);
    assert_eq!(r.code, 137, "{}", r.stderr);
    assert_eq!(r.summary["ended_by"], "auto_unloaded", "{}", r.stderr);
    let v = &r.summary["monitor"]["auto_unload"]["violation"];
    assert_eq!(v["layer"], "network", "{v}");
    assert_eq!(v["object"], "169.254.169.254:80/tcp", "{v}");
    assert_eq!(v["errno"], "EPERM", "{v}");
}

#[test]
fn explain_names_the_exclusions_and_their_networks() {
    let file = repo_root().join("policies/profiles/network-client.toml");
    let out = std::process::Command::new(stockade())
        .args(["policy", "explain"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "    tcp 0.0.0.0/0 port 443, except loopback, link-local, private, unspecified, multicast, broadcast",
        "    udp 0.0.0.0/0 port 53, except unspecified, multicast, broadcast",
        "  loopback: 127.0.0.0/8, ::1/128 (the host itself)",
        "  link-local: 169.254.0.0/16, fe80::/10 (this link only; 169.254.169.254 is a cloud's metadata service)",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
    }
    assert!(text.contains("the exclusion wins"), "{text}");
}
