//! The stock policies in `policies/profiles/` parse without errors and compile for a launch.

use std::path::{Path, PathBuf};

use stockade_policy::{load_policy, Access, LaunchContext, NetworkSpec, PathVar, Policy};

fn profiles() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn load(name: &str) -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("profiles")
        .join(name);
    load_policy(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn ctx() -> LaunchContext {
    LaunchContext {
        argv: vec!["/srv/plugins/p/run".into()],
        plugin_dir: Some("/srv/plugins/p".into()),
        state_dir: Some("/var/lib/stockade/p".into()),
        hostname: "plugin".into(),
        ..Default::default()
    }
}

#[test]
fn every_profile_parses_and_compiles() {
    let files = profiles();
    assert!(files.len() >= 2, "profiles missing: {files:?}");
    for file in files {
        let policy = load_policy(&file).unwrap_or_else(|e| panic!("{}:\n{e}", file.display()));
        assert!(
            policy.description.is_some(),
            "{} has no description",
            file.display()
        );
        if let Err(e) = policy.compile(&ctx()) {
            panic!("{} does not compile: {e}", file.display());
        }
    }
}

#[test]
fn untrusted_default_needs_no_state_dir_and_has_no_network() {
    let policy = load("untrusted-default.toml");
    assert!(!policy.uses_var(PathVar::StateDir));
    let mut c = ctx();
    c.state_dir = None;
    let spec = policy.compile(&c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.network, NetworkSpec::Isolated);
    assert!(spec.landlock.tcp_connect_ports.is_empty());
    assert!(spec.enforce);
    assert_eq!(spec.tmp.map(|t| t.size_bytes), Some(64 << 20));
    assert_eq!(spec.resources.memory_bytes, 256 << 20);
    assert_eq!(spec.resources.pids, 64);
    assert_eq!(spec.resources.cpu_quota_us, Some(100_000));
    assert_eq!(spec.resources.timeout_ms, None);
    // Nothing writable is mounted from the host: the only writable place is the private /tmp.
    assert!(spec.mounts.iter().all(|m| m.access != Access::Write));
    assert!(spec
        .mounts
        .iter()
        .any(|m| m.target == Path::new("/lib64") && m.access == Access::Exec));
    assert_eq!(spec.cwd, Path::new("/srv/plugins/p"));
}

#[test]
fn network_client_allows_http_https_and_dns_over_tcp() {
    let spec = load("network-client.toml")
        .compile(&ctx())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.network, NetworkSpec::Host);
    assert_eq!(spec.landlock.tcp_connect_ports, vec![53, 80, 443]);
    assert!(spec.landlock.tcp_bind_ports.is_empty());
    assert!(spec
        .mounts
        .iter()
        .any(|m| m.target == Path::new("/etc/resolv.conf") && m.access == Access::Read));
}

#[test]
fn network_client_keeps_internet_rules_off_the_host_and_its_networks() {
    use stockade_policy::{AddressSet::*, Exclusion, Protocol};
    let policy = load("network-client.toml");
    let internet = [
        Loopback,
        LinkLocal,
        Private,
        Unspecified,
        Multicast,
        Broadcast,
    ];
    let dns = [Unspecified, Multicast, Broadcast];
    for rule in &policy.network.connect {
        let expected: Vec<Exclusion> = match (rule.protocol, rule.ports.first) {
            (Protocol::Tcp, 80 | 443) => internet.map(Exclusion::Set).to_vec(),
            (_, 53) => dns.map(Exclusion::Set).to_vec(),
            other => panic!("unexpected rule {other:?}"),
        }
        .into_iter()
        // broadcast is IPv4 only; the IPv6 rules leave it out.
        .filter(|x| rule.address.addr.is_ipv4() || *x != Exclusion::Set(Broadcast))
        .collect();
        assert!(rule.address.is_any(), "{rule:?}");
        assert_eq!(rule.except, expected, "{rule:?}");
    }
    assert_eq!(policy.network.connect.len(), 8);
}
