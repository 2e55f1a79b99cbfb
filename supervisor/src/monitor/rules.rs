//! The policy's `[network]` rules in the form the cgroup programs match, and the syscall table
//! telling the sys_exit program which argument to copy into an event.

use std::net::IpAddr;

use stockade_ebpf_common as k;
use stockade_policy::model::{Network, NetworkRule, Protocol};

use super::MonitorError;

// The parser's limit, plus the two implicit UDP port-0 bind rules, fits the programs' array.
const _: () = assert!(stockade_policy::parse::MAX_NETWORK_RULES + 2 <= k::MAX_RULES);
// The parser's limit on the distinct networks a list excludes is the programs' array.
const _: () = assert!(stockade_policy::parse::MAX_EXCLUSIONS == k::MAX_EXCLUSIONS);

/// Allowed destinations and local addresses of one sandbox on the host network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetPolicy {
    pub connect: Vec<k::Rule>,
    pub bind: Vec<k::Rule>,
    /// The networks the `connect` rules exclude, each once, marking the rules it applies to.
    pub connect_except: Vec<k::Exclusion>,
    pub bind_except: Vec<k::Exclusion>,
}

impl NetPolicy {
    pub fn from_policy(net: &Network) -> NetPolicy {
        // Built before the implicit rules are appended: those exclude nothing.
        let bind_except = exclusions(&net.bind);
        let mut bind: Vec<k::Rule> = net.bind.iter().map(rule).collect();
        // A UDP socket that sends first is bound to an ephemeral port implicitly (no bind4 hook
        // runs); some clients bind port 0 explicitly to the same end. Allow exactly that: UDP,
        // port 0, any address. TCP port 0 stays refused (it would open a listening port).
        for family in [k::AF_INET, k::AF_INET6] {
            bind.push(k::Rule {
                family,
                protocol: k::PROTO_UDP,
                port_lo: 0,
                port_hi: 0,
                ..Default::default()
            });
        }
        NetPolicy {
            connect: net.connect.iter().map(rule).collect(),
            bind,
            connect_except: exclusions(&net.connect),
            bind_except,
        }
    }

    pub fn to_kernel(&self) -> Result<k::NetRules, MonitorError> {
        Ok(k::NetRules {
            connect: rule_set("connect", &self.connect, &self.connect_except)?,
            bind: rule_set("bind", &self.bind, &self.bind_except)?,
        })
    }
}

fn rule_set(
    direction: &'static str,
    rules: &[k::Rule],
    except: &[k::Exclusion],
) -> Result<k::RuleSet, MonitorError> {
    if rules.len() > k::MAX_RULES {
        return Err(MonitorError::TooManyRules {
            direction,
            count: rules.len(),
            max: k::MAX_RULES,
        });
    }
    if except.len() > k::MAX_EXCLUSIONS {
        return Err(MonitorError::TooManyRules {
            direction: if direction == "connect" {
                "connect exclusion"
            } else {
                "bind exclusion"
            },
            count: except.len(),
            max: k::MAX_EXCLUSIONS,
        });
    }
    let mut set = k::RuleSet {
        count: rules.len() as u32,
        exclusion_count: except.len() as u32,
        ..Default::default()
    };
    set.rules[..rules.len()].copy_from_slice(rules);
    set.exclusions[..except.len()].copy_from_slice(except);
    Ok(set)
}

/// The networks `rules` exclude, each once, with a bit for every rule (by index) that excludes
/// it. Each rule's own exclusions are already of its family and inside its address.
fn exclusions(rules: &[NetworkRule]) -> Vec<k::Exclusion> {
    let mut out: Vec<k::Exclusion> = Vec::new();
    for (i, r) in rules.iter().enumerate().take(k::MAX_RULES) {
        for net in r.excluded_networks() {
            let (family, addr, mask) = words(net.addr, net.prefix);
            match out
                .iter_mut()
                .find(|x| x.family == family && x.addr == addr && x.mask == mask)
            {
                Some(x) => x.rules |= 1 << i,
                None => out.push(k::Exclusion {
                    addr,
                    mask,
                    rules: 1 << i,
                    family,
                    _pad: [0; 3],
                }),
            }
        }
    }
    out
}

/// One policy rule: addresses and masks as 32-bit words of network-order bytes, exactly what the
/// kernel puts in `bpf_sock_addr.user_ip4` / `user_ip6`.
pub fn rule(r: &NetworkRule) -> k::Rule {
    let protocol = match r.protocol {
        Protocol::Tcp => k::PROTO_TCP,
        Protocol::Udp => k::PROTO_UDP,
    };
    let (family, addr, mask) = words(r.address.addr, r.address.prefix);
    k::Rule {
        addr,
        mask,
        protocol,
        family,
        port_lo: r.ports.first,
        port_hi: r.ports.last,
        ..Default::default()
    }
}

/// (family, address words, mask words) of a network, the address masked.
fn words(addr: IpAddr, prefix: u8) -> (u8, [u32; 4], [u32; 4]) {
    let prefix = u32::from(prefix);
    let (mut out, mut masks) = ([0u32; 4], [0u32; 4]);
    match addr {
        IpAddr::V4(a) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix.min(32))
            };
            masks[0] = u32::from_ne_bytes(mask.to_be_bytes());
            out[0] = u32::from_ne_bytes(a.octets()) & masks[0];
            (k::AF_INET, out, masks)
        }
        IpAddr::V6(a) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix.min(128))
            };
            let (m, o) = (mask.to_be_bytes(), a.octets());
            for i in 0..4 {
                let word = |b: &[u8; 16]| {
                    u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
                };
                masks[i] = word(&m);
                out[i] = word(&o) & masks[i];
            }
            (k::AF_INET6, out, masks)
        }
    }
}

/// Syscalls whose events carry a path or a socket address: (number, `ARG_*` | argument index).
/// The directories a sandbox's misses are judged against in the kernel: every Landlock grant
/// (paths inside the sandbox), each with whether it may be written. A grant of a file is
/// harmless here (nothing lies below a file).
/// The policy's `absent` paths join them as read-only: a miss below one is not a violation
/// either.
pub fn miss_trees(spec: &stockade_policy::LaunchSpec) -> Vec<(String, bool)> {
    // /proc is the sandbox's own, but `/proc/self/root/...` leads back to its root: misses
    // there go to the supervisor, which reads that alias.
    let grants = spec.landlock.paths.iter().filter_map(|(path, access)| {
        let p = path.to_str()?;
        let judged_in_userspace = *access == stockade_policy::Access::Write || p == "/proc";
        Some((p.to_string(), judged_in_userspace))
    });
    let absent = spec
        .absent
        .iter()
        .filter_map(|p| Some((p.to_str()?.to_string(), false)));
    grants.chain(absent).collect()
}

/// The `MISS_TREES` key of a directory of sandbox `cgroup_id`: the id, then the path with one
/// trailing `/` (so `/usr/lib` does not cover `/usr/lib64`). `None` when it does not fit, or is
/// not an absolute path.
pub fn miss_key(cgroup_id: u64, dir: &str) -> Option<k::MissKey> {
    if !dir.starts_with('/') {
        return None;
    }
    let mut path = dir.trim_end_matches('/').to_string();
    path.push('/');
    if path.len() >= k::MISS_PATH_LEN - 1 {
        return None;
    }
    let mut data = [0u8; k::MISS_KEY_DATA];
    data[..8].copy_from_slice(&cgroup_id.to_le_bytes());
    data[8..8 + path.len()].copy_from_slice(path.as_bytes());
    Some(k::MissKey {
        prefix_len: ((8 + path.len()) * 8) as u32,
        data,
    })
}

/// Whether the syscall of this name takes a path (`ARG_PATH`): its event carries the path,
/// unless the program could not read it from the plugin's memory.
pub fn names_a_path(name: &str) -> bool {
    PATH_ARG_TABLE
        .iter()
        .any(|(n, what)| *n == name && what & k::ARG_PATH != 0)
}

pub fn path_args() -> Vec<(u32, u8)> {
    PATH_ARG_TABLE
        .iter()
        .filter_map(|(name, what)| stockade_policy::syscalls::lookup(name).map(|nr| (nr, *what)))
        .collect()
}

const PATH_ARG_TABLE: &[(&str, u8)] = &[
    // The path is the first argument.
    ("open", k::ARG_PATH | k::ARG_OPENS),
    ("creat", k::ARG_PATH | k::ARG_OPENS),
    ("stat", k::ARG_PATH),
    ("lstat", k::ARG_PATH),
    ("access", k::ARG_PATH),
    ("truncate", k::ARG_PATH),
    ("chdir", k::ARG_PATH),
    ("chroot", k::ARG_PATH),
    ("mkdir", k::ARG_PATH),
    ("rmdir", k::ARG_PATH),
    ("unlink", k::ARG_PATH),
    ("link", k::ARG_PATH),
    ("rename", k::ARG_PATH),
    ("readlink", k::ARG_PATH),
    ("chmod", k::ARG_PATH),
    ("chown", k::ARG_PATH),
    ("lchown", k::ARG_PATH),
    ("mknod", k::ARG_PATH),
    ("execve", k::ARG_PATH),
    ("statfs", k::ARG_PATH),
    ("utime", k::ARG_PATH),
    ("utimes", k::ARG_PATH),
    ("getxattr", k::ARG_PATH),
    ("lgetxattr", k::ARG_PATH),
    ("setxattr", k::ARG_PATH),
    ("lsetxattr", k::ARG_PATH),
    ("listxattr", k::ARG_PATH),
    ("llistxattr", k::ARG_PATH),
    ("removexattr", k::ARG_PATH),
    ("lremovexattr", k::ARG_PATH),
    ("uselib", k::ARG_PATH),
    ("acct", k::ARG_PATH),
    ("swapon", k::ARG_PATH),
    ("swapoff", k::ARG_PATH),
    ("umount2", k::ARG_PATH),
    ("pivot_root", k::ARG_PATH),
    // The path is the second argument (after a directory descriptor, or the link target).
    ("symlink", k::ARG_PATH | 1),
    ("openat", k::ARG_PATH | k::ARG_OPENS | 1),
    ("openat2", k::ARG_PATH | k::ARG_OPENS | 1),
    ("newfstatat", k::ARG_PATH | 1),
    ("statx", k::ARG_PATH | 1),
    ("faccessat", k::ARG_PATH | 1),
    ("faccessat2", k::ARG_PATH | 1),
    ("mkdirat", k::ARG_PATH | 1),
    ("mknodat", k::ARG_PATH | 1),
    ("fchownat", k::ARG_PATH | 1),
    ("fchmodat", k::ARG_PATH | 1),
    ("fchmodat2", k::ARG_PATH | 1),
    ("unlinkat", k::ARG_PATH | 1),
    ("renameat", k::ARG_PATH | 1),
    ("renameat2", k::ARG_PATH | 1),
    ("linkat", k::ARG_PATH | 1),
    ("readlinkat", k::ARG_PATH | 1),
    ("utimensat", k::ARG_PATH | 1),
    ("futimesat", k::ARG_PATH | 1),
    ("execveat", k::ARG_PATH | 1),
    ("name_to_handle_at", k::ARG_PATH | 1),
    ("inotify_add_watch", k::ARG_PATH | 1),
    ("mount", k::ARG_PATH | 1),
    ("open_tree", k::ARG_PATH | 1),
    ("fspick", k::ARG_PATH | 1),
    ("mount_setattr", k::ARG_PATH | 1),
    ("symlinkat", k::ARG_PATH | 2),
    ("fanotify_mark", k::ARG_PATH | 4),
    // Newer calls with a directory descriptor and a path (6.13+, 6.15+, 6.17+).
    ("setxattrat", k::ARG_PATH | 1),
    ("getxattrat", k::ARG_PATH | 1),
    ("listxattrat", k::ARG_PATH | 1),
    ("removexattrat", k::ARG_PATH | 1),
    ("open_tree_attr", k::ARG_PATH | 1),
    ("file_getattr", k::ARG_PATH | 1),
    ("file_setattr", k::ARG_PATH | 1),
    // Socket addresses.
    ("connect", k::ARG_SOCKADDR | 1),
    ("bind", k::ARG_SOCKADDR | 1),
    ("sendto", k::ARG_SOCKADDR | 4),
    // The address is behind the message header's first field.
    ("sendmsg", k::ARG_SOCKADDR | k::ARG_MSGHDR | 1),
    ("sendmmsg", k::ARG_SOCKADDR | k::ARG_MSGHDR | 1),
];

#[cfg(test)]
mod tests {
    use super::*;
    use stockade_policy::model::{IpNet, PortRange};

    fn net(addr: &str, prefix: u8, port: u16, protocol: Protocol) -> NetworkRule {
        NetworkRule {
            protocol,
            address: IpNet {
                addr: addr.parse().unwrap(),
                prefix,
            },
            ports: PortRange {
                first: port,
                last: port,
            },
            except: Vec::new(),
        }
    }

    /// The kernel's decision (ebpf/src/net.rs `matches`), replayed on a compiled set.
    fn allows(set: &k::RuleSet, addr: &str, port: u16, proto: u8) -> bool {
        let ip: IpAddr = addr.parse().unwrap();
        // v4-mapped destinations are unmapped first, as the programs do.
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (family, a, _) = words(ip, if ip.is_ipv4() { 32 } else { 128 });
        let hit = |addr: &[u32; 4], mask: &[u32; 4]| (0..4).all(|i| a[i] & mask[i] == addr[i]);
        let excluded = set.exclusions[..set.exclusion_count as usize]
            .iter()
            .filter(|x| x.family == family && hit(&x.addr, &x.mask))
            .fold(0u32, |bits, x| bits | x.rules);
        set.rules[..set.count as usize]
            .iter()
            .enumerate()
            .any(|(i, r)| {
                excluded & (1 << i) == 0
                    && r.family == family
                    && r.protocol == proto
                    && (r.port_lo..=r.port_hi).contains(&port)
                    && hit(&r.addr, &r.mask)
            })
    }

    fn parsed(text: &str) -> Network {
        stockade_policy::parse_policy(text, "p.toml")
            .unwrap_or_else(|d| panic!("{d}"))
            .network
    }

    #[test]
    fn exclusions_win_over_their_rule_and_yield_to_a_rule_that_names_the_address() {
        let net = parsed(
            "[network]\nmode = \"allow\"\nconnect = [\n\
             { address = \"0.0.0.0/0\", port = 443, except = [\"loopback\", \"link-local\", \"private\"] },\n\
             { address = \"::/0\", port = 443, except = [\"loopback\", \"link-local\", \"private\"] },\n\
             { address = \"127.0.0.2\", port = 443 },\n\
             { protocol = \"udp\", address = \"0.0.0.0/0\", port = 53, except = [\"link-local\"] },\n]\n",
        );
        let policy = NetPolicy::from_policy(&net);
        // 127/8, 169.254/16, 10/8, 172.16/12, 192.168/16, 100.64/10; ::1, fe80::/10, fc00::/7:
        // 169.254/16 shared by rules 0 and 3.
        assert_eq!(policy.connect_except.len(), 9);
        let link_local = policy
            .connect_except
            .iter()
            .find(|x| x.family == k::AF_INET && x.addr[0].to_ne_bytes() == [169, 254, 0, 0])
            .unwrap();
        assert_eq!(link_local.rules, 0b1001);
        let set = policy.to_kernel().unwrap().connect;
        let tcp = k::PROTO_TCP;
        assert!(allows(&set, "93.184.216.34", 443, tcp));
        assert!(allows(&set, "2606:2800:220:1::1", 443, tcp));
        for refused in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fe80::1",
            "10.1.2.3",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
        ] {
            assert!(!allows(&set, refused, 443, tcp), "{refused}");
        }
        // Granted by name: another rule covers it, and no exclusion of that rule.
        assert!(allows(&set, "127.0.0.2", 443, tcp));
        assert!(allows(&set, "::ffff:127.0.0.2", 443, tcp));
        // Exclusions are per rule: the DNS rule excludes only link-local.
        assert!(allows(&set, "127.0.0.53", 53, k::PROTO_UDP));
        assert!(allows(&set, "10.0.0.2", 53, k::PROTO_UDP));
        assert!(!allows(&set, "169.254.169.254", 53, k::PROTO_UDP));
        // The implicit UDP port-0 bind rules exclude nothing.
        assert!(policy.bind_except.is_empty());
    }

    #[test]
    fn too_many_exclusions_are_refused() {
        let many = NetPolicy {
            connect_except: vec![k::Exclusion::default(); k::MAX_EXCLUSIONS + 1],
            ..Default::default()
        };
        assert!(matches!(
            many.to_kernel(),
            Err(MonitorError::TooManyRules { count, .. }) if count == k::MAX_EXCLUSIONS + 1
        ));
    }

    #[test]
    fn v4_rules_hold_network_order_words() {
        let r = rule(&net("10.1.2.3", 16, 443, Protocol::Tcp));
        assert_eq!(r.family, k::AF_INET);
        assert_eq!(r.protocol, k::PROTO_TCP);
        assert_eq!(r.mask[0].to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(r.addr[0].to_ne_bytes(), [10, 1, 0, 0]);
        assert_eq!((r.port_lo, r.port_hi), (443, 443));
        let any = rule(&net("0.0.0.0", 0, 53, Protocol::Udp));
        assert_eq!((any.addr[0], any.mask[0]), (0, 0));
    }

    #[test]
    fn v6_rules_mask_every_word() {
        let r = rule(&net("2001:db8::1", 33, 80, Protocol::Tcp));
        assert_eq!(r.mask[0], u32::MAX);
        assert_eq!(r.mask[1].to_ne_bytes(), [0x80, 0, 0, 0]);
        assert_eq!((r.mask[2], r.mask[3]), (0, 0));
        assert_eq!(r.addr[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!((r.addr[1], r.addr[2], r.addr[3]), (0, 0, 0));
        let host = rule(&net("::1", 128, 80, Protocol::Tcp));
        assert_eq!(host.addr[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!(host.mask, [u32::MAX; 4]);
    }

    #[test]
    fn too_many_rules_are_refused() {
        let many = NetPolicy {
            connect: vec![k::Rule::default(); k::MAX_RULES + 1],
            ..Default::default()
        };
        assert!(matches!(
            many.to_kernel(),
            Err(MonitorError::TooManyRules { count, .. }) if count == k::MAX_RULES + 1
        ));
    }

    #[test]
    fn miss_keys_end_in_one_slash() {
        let key = miss_key(7, "/usr/lib/").unwrap();
        assert_eq!(&key.data[..8], &7u64.to_le_bytes());
        assert_eq!(&key.data[8..18], b"/usr/lib/\0");
        assert_eq!(key.prefix_len, (8 + 9) * 8);
        assert_eq!(miss_key(7, "/").unwrap().prefix_len, (8 + 1) * 8);
        assert!(miss_key(7, "relative").is_none());
        assert!(miss_key(7, &format!("/{}", "a".repeat(300))).is_none());
    }

    #[test]
    fn every_table_entry_names_a_syscall() {
        assert_eq!(path_args().len(), PATH_ARG_TABLE.len());
    }
}
