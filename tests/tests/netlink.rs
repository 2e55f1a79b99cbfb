//! Netlink on the host's network (`[network] mode = "allow"`): a plugin may open NETLINK_ROUTE,
//! what getaddrinfo and if_nameindex use, and nothing else. NETLINK_SOCK_DIAG would list the
//! host's connections and the names of its unix sockets; a NETLINK_KOBJECT_UEVENT listener would
//! receive the host's device events. Each is refused by seccomp (EPERM) and reported.

mod harness;
use harness::*;
use serde_json::Value;

fn host_network() -> String {
    host_network_policy("")
}

/// The seccomp violations of a run, from its JSON summary.
fn seccomp_violations(r: &RunResult) -> Vec<Value> {
    r.summary["monitor"]["first"]
        .as_array()
        .unwrap_or_else(|| panic!("no monitor report:\n{}", r.stderr))
        .iter()
        .filter(|e| e["layer"] == "seccomp")
        .cloned()
        .collect()
}

#[test]
fn only_netlink_route_is_open_to_a_host_network_plugin() {
    if !privileged("only_netlink_route_is_open_to_a_host_network_plugin") {
        return;
    }
    let text = host_network();
    // The control: a link dump over NETLINK_ROUTE answers, with at least loopback.
    let r = hostile_run("netlink", &text, &["netlink", "route"]);
    let links: u32 = r
        .line()
        .strip_prefix("ok ")
        .and_then(|l| l.strip_suffix(" links"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no link dump: {}\n{}", r.line(), r.stderr));
    assert!(links >= 1, "{}", r.line());
    assert_eq!(r.summary["monitor"]["violations"], 0, "{}", r.stderr);

    for protocol in ["sock_diag", "kobject_uevent"] {
        let r = hostile_run("netlink", &text, &["netlink", protocol]);
        assert_line(&r, "err EPERM");
        let v = seccomp_violations(&r);
        assert_eq!(v.len(), 1, "{protocol}: {v:#?}\n{}", r.stderr);
        assert_eq!(v[0]["type"], "violation");
        assert_eq!(v[0]["action"], "syscall");
        assert_eq!(v[0]["syscall"], "socket");
        assert_eq!(v[0]["errno"], "EPERM");
        assert_eq!(r.summary["monitor"]["violations"], 1, "{}", r.stderr);
    }
}
