//! What leaves must go where the call said: a socket option or a header that would send a
//! sandbox's packets to another first hop — an IPv6 routing header, IPv4 options (source routes) —
//! is refused by seccomp when set with setsockopt, and a packet that carries one anyway is dropped
//! by the `outbound` program and reported. Loopback only, with receivers the test opens.

mod harness;
use harness::*;
use serde_json::Value;
use std::net::UdpSocket;
use std::time::Duration;

fn only_violation(r: &RunResult) -> Value {
    let v = r.summary["monitor"]["first"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(v.len(), 1, "{v:#?}\n{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.summary["monitor"]["violations"], 1, "{}", r.stderr);
    v[0].clone()
}

fn receiver(addr: &str) -> (UdpSocket, u16) {
    let s = UdpSocket::bind(addr).expect("bind the receiver");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

fn received(s: &UdpSocket) -> bool {
    let mut buf = [0u8; 16];
    s.recv_from(&mut buf).is_ok()
}

/// The host network, UDP to the two receivers allowed; `extra` adds sections.
fn udp_policy(p4: u16, p6: u16, extra: &str) -> String {
    policy(&format!(
        "[network]\nmode = \"allow\"\nconnect = [\n  {{ protocol = \"udp\", address = \"127.0.0.1\", port = {p4} }},\n  {{ protocol = \"udp\", address = \"::1\", port = {p6} }},\n]\n{extra}"
    ))
}

#[test]
fn socket_options_that_reroute_packets_are_refused() {
    let test = "socket_options_that_reroute_packets_are_refused";
    if !privileged(test) || !tcp_rules_enforceable(test) {
        return;
    }
    let (r4, p4) = receiver("127.0.0.1:0");
    let (r6, p6) = receiver("[::1]:0");
    let text = udp_policy(p4, p6, "");
    for (addr, kind) in [
        (format!("127.0.0.1:{p4}"), "ipopts"),
        (format!("[::1]:{p6}"), "rthdr"),
    ] {
        let r = hostile_run("reroute-opt", &text, &["udp-opts", &addr, kind]);
        assert_line(&r, "setsockopt err EPERM");
        let e = only_violation(&r);
        assert_eq!(e["layer"], "seccomp", "{e}");
        assert_eq!(e["syscall"], "setsockopt", "{e}");
    }
    assert!(!received(&r4) && !received(&r6));
    // Control: the same datagrams without the options arrive.
    for (addr, rx) in [
        (format!("127.0.0.1:{p4}"), &r4),
        (format!("[::1]:{p6}"), &r6),
    ] {
        let r = hostile_run("reroute-none", &text, &["udp-opts", &addr, "none"]);
        assert_line(&r, "ok sent 1");
        assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
        assert!(
            received(rx),
            "the allowed datagram to {addr} did not arrive"
        );
    }
}

#[test]
fn packets_with_a_routing_header_or_ip_options_never_leave() {
    let test = "packets_with_a_routing_header_or_ip_options_never_leave";
    if !privileged(test) || !tcp_rules_enforceable(test) {
        return;
    }
    let (r4, p4) = receiver("127.0.0.1:0");
    let (r6, p6) = receiver("[::1]:0");
    // setsockopt allowed whole: the headers reach the packet, and the outbound program must
    // stop it.
    let text = udp_policy(
        p4,
        p6,
        "[syscalls]\nprofile = \"default\"\nallow = [\"setsockopt\"]\n",
    );
    for (addr, kind, object) in [
        (
            format!("127.0.0.1:{p4}"),
            "ipopts",
            "127.0.0.1 (a packet with IPv4 options)",
        ),
        (
            format!("[::1]:{p6}"),
            "rthdr",
            "::1 (a packet with an IPv6 routing header)",
        ),
    ] {
        let r = hostile_run("reroute-packet", &text, &["udp-opts", &addr, kind]);
        assert_line(&r, "err EPERM");
        let e = only_violation(&r);
        assert_eq!(e["layer"], "network", "{e}");
        assert_eq!(e["action"], "send", "{e}");
        assert_eq!(e["object"], object, "{e}");
        assert_eq!(e["errno"], "EPERM", "{e}");
    }
    assert!(!received(&r4) && !received(&r6), "a dropped packet arrived");
    // Control: without the headers, under the same policy.
    let r = hostile_run(
        "reroute-packet-none",
        &text,
        &["udp-opts", &format!("[::1]:{p6}"), "none"],
    );
    assert_line(&r, "ok sent 1");
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);
    assert!(received(&r6));
}
