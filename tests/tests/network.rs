//! `[network] mode = "allow"`: the host's network namespace with Landlock's TCP port rules. Only
//! loopback is used, with listeners the test itself opens.

mod harness;
use harness::*;
use std::net::TcpListener;

fn allow_policy(connect: &str, bind: &str) -> String {
    policy(&format!(
        "[network]\nmode = \"allow\"\nconnect = [{connect}]\nbind = [{bind}]\n"
    ))
}

#[test]
fn tcp_connect_only_to_allowed_ports() {
    if !privileged("tcp_connect_only_to_allowed_ports")
        || !tcp_rules_enforceable("tcp_connect_only_to_allowed_ports")
    {
        return;
    }
    let allowed = greeter("127.0.0.1:0");
    let other = greeter("127.0.0.1:0");
    let text = allow_policy(
        &format!("{{ address = \"127.0.0.1\", port = {allowed} }}"),
        "",
    );
    let r = hostile_run(
        "net",
        &text,
        &["connect-tcp", &format!("127.0.0.1:{allowed}")],
    );
    assert_line(&r, "ok hello");
    let r = hostile_run(
        "net",
        &text,
        &["connect-tcp", &format!("127.0.0.1:{other}")],
    );
    assert_line(&r, "err EACCES");
}

#[test]
fn tcp_connect_over_ipv6_follows_the_same_rules() {
    if !privileged("tcp_connect_over_ipv6_follows_the_same_rules")
        || !tcp_rules_enforceable("tcp_connect_over_ipv6_follows_the_same_rules")
    {
        return;
    }
    if TcpListener::bind("[::1]:0").is_err() {
        println!("skipped: tcp_connect_over_ipv6_follows_the_same_rules: no IPv6 loopback here");
        return;
    }
    let allowed = greeter("[::1]:0");
    let other = greeter("[::1]:0");
    let text = allow_policy(&format!("{{ address = \"::1\", port = {allowed} }}"), "");
    let r = hostile_run("net6", &text, &["connect-tcp", &format!("[::1]:{allowed}")]);
    assert_line(&r, "ok hello");
    let r = hostile_run("net6", &text, &["connect-tcp", &format!("[::1]:{other}")]);
    assert_line(&r, "err EACCES");
}

#[test]
fn tcp_bind_only_to_allowed_ports() {
    if !privileged("tcp_bind_only_to_allowed_ports")
        || !tcp_rules_enforceable("tcp_bind_only_to_allowed_ports")
    {
        return;
    }
    // Two free ports, found by binding and releasing.
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (allowed, other) = (free(), free());
    let text = allow_policy(
        "",
        &format!("{{ address = \"127.0.0.1\", port = {allowed} }}"),
    );
    let r = hostile_run(
        "bind",
        &text,
        &["bind-tcp", &format!("127.0.0.1:{allowed}")],
    );
    assert_line(&r, "ok");
    let r = hostile_run("bind", &text, &["bind-tcp", &format!("127.0.0.1:{other}")]);
    assert_line(&r, "err EACCES");
}

#[test]
fn explain_says_who_enforces_addresses_and_udp() {
    let file = policy_file(
        "explain",
        &allow_policy(
            "{ address = \"10.0.0.0/8\", port = 443 }, { protocol = \"udp\", address = \"0.0.0.0/0\", port = 53 }",
            "",
        ),
    );
    let out = std::process::Command::new(stockade())
        .args(["policy", "explain"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ENFORCED by the eBPF cgroup programs (connect4/6, sendmsg4/6, bind4/6)"),
        "{text}"
    );
    assert!(text.contains("udp 0.0.0.0/0 port 53"), "{text}");
}
