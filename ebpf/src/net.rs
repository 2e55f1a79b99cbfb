//! cgroup `sock_addr` programs: connect4/6 (TCP, and UDP `connect`), sendmsg4/6 (UDP `sendto`
//! without a connected peer) and bind4/6. Attached to each sandbox's own cgroup only, so nothing
//! else on the host runs them. Return 1 to let the call go on, 0 to make it fail with EPERM.
//!
//! Each hook exists twice: `*_kill` may also send SIGKILL to the caller (bpf_send_signal) when the
//! sandbox's threshold is crossed. Kernels that refuse that helper for this program type still
//! load the plain ones; the supervisor's cgroup.kill is the backstop either way.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr, BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_LISTEN},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_send_signal, bpf_sk_fullsock, bpf_skb_cgroup_id},
    },
    macros::{cgroup_skb, cgroup_sock_addr, sock_ops},
    programs::{SkBuffContext, SockAddrContext, SockOpsContext},
};
use stockade_ebpf_common::{
    NetDenyEvent, RuleSet, SandboxConfig, AF_INET, AF_INET6, COUNTER_DENIALS_DROPPED,
    COUNTER_DROPPED, COUNTER_INBOUND_DROPPED, COUNTER_KILLS, COUNTER_NET_DENIED,
    COUNTER_NET_DROPPED, EVENT_NET_DENY, FLAG_KILL, FLAG_NET_RULES, HOOK_BIND4, HOOK_BIND6,
    HOOK_CONNECT4, HOOK_CONNECT6, HOOK_LISTEN4, HOOK_LISTEN6, HOOK_SENDMSG4, HOOK_SENDMSG6,
    MAX_EXCLUSIONS, MAX_RULES, PROTO_TCP, PROTO_UDP,
};

use crate::maps::{bump, current_cgroup, header, mark_denied, reserve, NET_RULES, SANDBOXES};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const SIGKILL: u32 = 9;

#[inline(always)]
fn ctx_u32(p: *const u32) -> u32 {
    // SAFETY: `p` points into the program's context; the verifier checks the size and offset of
    // every context access. One volatile 4-byte load per field keeps LLVM from merging or
    // narrowing them into accesses the verifier rejects.
    unsafe { read_volatile(p) }
}

/// ::ffff:a.b.c.d on a dual-stack IPv6 socket reaches the *6 hooks but talks IPv4: the IPv4
/// rules judge it, or an IPv4 deny could be bypassed through an IPv6 socket.
#[inline(always)]
fn unmap(family: u8, addr: [u32; 4]) -> (u8, [u32; 4]) {
    if family == AF_INET6
        && addr[0] == 0
        && addr[1] == 0
        && addr[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
    {
        (AF_INET, [addr[3], 0, 0, 0])
    } else {
        (family, addr)
    }
}

/// The rules of `set` that exclude (`family`, `addr`), one bit per rule. Checked before any rule:
/// an exclusion wins over its rule's address whatever the two prefixes.
#[inline(always)]
fn excluded_rules(set: &RuleSet, family: u8, addr: &[u32; 4]) -> u32 {
    let n = set.exclusion_count;
    let mut bits = 0;
    for i in 0..MAX_EXCLUSIONS {
        if i as u32 >= n {
            break;
        }
        let x = &set.exclusions[i];
        if x.family == family
            && addr[0] & x.mask[0] == x.addr[0]
            && addr[1] & x.mask[1] == x.addr[1]
            && addr[2] & x.mask[2] == x.addr[2]
            && addr[3] & x.mask[3] == x.addr[3]
        {
            bits |= x.rules;
        }
    }
    bits
}

#[inline(always)]
fn matches(set: &RuleSet, family: u8, addr: &[u32; 4], port: u16, proto: u8) -> bool {
    let excluded = excluded_rules(set, family, addr);
    let n = set.count;
    // A loop over the constant MAX_RULES with an exit at `count`: the verifier accepts it
    // (bounded loops); one bounded by the map value itself it does not.
    for i in 0..MAX_RULES {
        if i as u32 >= n {
            break;
        }
        let r = &set.rules[i];
        if excluded & (1 << i) == 0
            && r.family == family
            && r.protocol == proto
            && port >= r.port_lo
            && port <= r.port_hi
            && addr[0] & r.mask[0] == r.addr[0]
            && addr[1] & r.mask[1] == r.addr[1]
            && addr[2] & r.mask[2] == r.addr[2]
            && addr[3] & r.mask[3] == r.addr[3]
        {
            return true;
        }
    }
    false
}

/// The in-kernel threshold: a fixed window opened by its first violation. Not atomic: racing
/// CPUs can lose an increment, which only delays the kill (the supervisor counts exactly).
#[inline(always)]
fn threshold_crossed(cfg: *mut SandboxConfig) -> bool {
    // SAFETY: `cfg` is a live map value returned by the lookup of this program run.
    unsafe {
        if (*cfg).flags & FLAG_KILL == 0 {
            return false;
        }
        let now = bpf_ktime_get_ns();
        if (*cfg).window_count == 0 || now.wrapping_sub((*cfg).window_start_ns) > (*cfg).window_ns {
            (*cfg).window_start_ns = now;
            (*cfg).window_count = 0;
        }
        (*cfg).window_count += 1;
        (*cfg).window_count >= (*cfg).threshold
    }
}

/// Does a bind rule of sandbox `cg` cover a socket of protocol `proto` on (`family`, `addr`,
/// `port`)? `true` for a cgroup that is not a sandbox, or one in its own network namespace.
#[inline(always)]
fn local_allowed(cg: u64, family: u32, addr: [u32; 4], port: u32, proto: u8) -> bool {
    // SAFETY: the value is only read.
    let Some(cfg) = (unsafe { SANDBOXES.get(&cg) }) else {
        return true;
    };
    if cfg.flags & FLAG_NET_RULES == 0 {
        return true;
    }
    let Some(rules) = NET_RULES.get_ptr(&cg) else {
        return false;
    };
    let family = if family == AF_INET as u32 {
        AF_INET
    } else {
        AF_INET6
    };
    let (family, addr) = unmap(family, addr);
    // SAFETY: a live map value.
    matches(unsafe { &(*rules).bind }, family, &addr, port as u16, proto)
}

#[inline(always)]
fn check<const KILL: bool>(ctx: &SockAddrContext, hook: u8) -> i32 {
    let cg = current_cgroup();
    let Some(cfg) = SANDBOXES.get_ptr_mut(&cg) else {
        return ALLOW;
    };
    // SAFETY: a live map value (see above).
    let (slot, flags) = unsafe { ((*cfg).slot, (*cfg).flags) };
    if flags & FLAG_NET_RULES == 0 {
        // An isolated network namespace: nothing to reach, nothing to decide here.
        return ALLOW;
    }
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    let v4 = matches!(hook, HOOK_CONNECT4 | HOOK_SENDMSG4 | HOOK_BIND4);
    // SAFETY: addr_of! only computes the addresses of fields inside the program's context; they
    // are loaded through `ctx_u32` alone.
    let (ip4, ip6, user_port, protocol) = unsafe {
        (
            addr_of!((*sa).user_ip4),
            addr_of!((*sa).user_ip6) as *const u32,
            addr_of!((*sa).user_port),
            addr_of!((*sa).protocol),
        )
    };
    let (family, addr) = if v4 {
        (AF_INET, [ctx_u32(ip4), 0, 0, 0])
    } else {
        (
            AF_INET6,
            [
                ctx_u32(ip6),
                ctx_u32(ip6.wrapping_add(1)),
                ctx_u32(ip6.wrapping_add(2)),
                ctx_u32(ip6.wrapping_add(3)),
            ],
        )
    };
    let (family, addr) = unmap(family, addr);
    // user_port holds the __be16 port in the low 16 bits of a u32.
    let port = u16::from_be(ctx_u32(user_port) as u16);
    let proto = ctx_u32(protocol) as u8;

    let Some(rules) = NET_RULES.get_ptr(&cg) else {
        return DENY; // rules are written before the sandbox starts; none is a closed door
    };
    let bind = hook == HOOK_BIND4 || hook == HOOK_BIND6;
    // SAFETY: a live map value.
    let set = unsafe {
        if bind {
            &(*rules).bind
        } else {
            &(*rules).connect
        }
    };
    if matches(set, family, &addr, port, proto) {
        return ALLOW;
    }

    bump(slot, COUNTER_NET_DENIED);
    let kill = KILL && threshold_crossed(cfg);
    if kill {
        // SAFETY: a helper taking a signal number; it signals the current thread group.
        unsafe { bpf_send_signal(SIGKILL) };
        bump(slot, COUNTER_KILLS);
    }
    mark_denied(flags);
    match reserve::<NetDenyEvent>(slot) {
        Some(mut e) => {
            e.write(NetDenyEvent {
                header: header(EVENT_NET_DENY, cg),
                addr,
                port,
                family,
                protocol: proto,
                hook,
                killed: kill as u8,
                lsm: 0,
                _pad: 0,
            });
            e.submit(0);
        }
        None => {
            bump(slot, COUNTER_DROPPED);
            bump(slot, COUNTER_NET_DROPPED);
            bump(slot, COUNTER_DENIALS_DROPPED);
        }
    }
    DENY
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    check::<false>(&ctx, HOOK_CONNECT4)
}
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    check::<false>(&ctx, HOOK_CONNECT6)
}
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    check::<false>(&ctx, HOOK_SENDMSG4)
}
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    check::<false>(&ctx, HOOK_SENDMSG6)
}
#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    check::<false>(&ctx, HOOK_BIND4)
}
#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    check::<false>(&ctx, HOOK_BIND6)
}

#[cgroup_sock_addr(connect4)]
pub fn connect4_kill(ctx: SockAddrContext) -> i32 {
    check::<true>(&ctx, HOOK_CONNECT4)
}
#[cgroup_sock_addr(connect6)]
pub fn connect6_kill(ctx: SockAddrContext) -> i32 {
    check::<true>(&ctx, HOOK_CONNECT6)
}
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4_kill(ctx: SockAddrContext) -> i32 {
    check::<true>(&ctx, HOOK_SENDMSG4)
}
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6_kill(ctx: SockAddrContext) -> i32 {
    check::<true>(&ctx, HOOK_SENDMSG6)
}
#[cgroup_sock_addr(bind4)]
pub fn bind4_kill(ctx: SockAddrContext) -> i32 {
    check::<true>(&ctx, HOOK_BIND4)
}
#[cgroup_sock_addr(bind6)]
pub fn bind6_kill(ctx: SockAddrContext) -> i32 {
    check::<true>(&ctx, HOOK_BIND6)
}

/// Inbound packets of the sandbox's sockets: only what an allow list admits gets in.
///
/// - TCP: a socket can listen without ever passing a bind hook: `listen()` on an unbound socket
///   takes an ephemeral port on every address (autobind), and Landlock has no right for
///   listening. Every packet addressed to a listening socket (the SYN, and the handshake's last
///   ACK, are delivered to the listener) is dropped unless a bind rule covers the socket's own
///   address and port, so no connection to it can complete. The socket's state is read rather
///   than the packet parsed: a sender cannot hide the SYN behind IPv6 extension headers.
/// - UDP: a socket that sent first was bound to an ephemeral port on every address, and anyone
///   could then send to it. An unconnected UDP socket whose own address no bind rule covers
///   takes a datagram only from a source its connect rules allow (a DNS server's answer); a
///   connected one only hears its peer, which the connect hook judged.
/// - Everything else (established TCP) only hears the peer the connect hook judged.
#[cgroup_skb(ingress)]
pub fn inbound(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the program's context; `sk` is a context field the verifier knows to be a
    // socket pointer or null, checked before use; `bpf_sock` fields are loaded one by one.
    // bpf_skb_cgroup_id and bpf_sk_fullsock take the context and that pointer; the SANDBOXES
    // value is only read.
    unsafe {
        let sk: *mut bpf_sock = read_volatile(addr_of!((*skb).__bindgen_anon_2.sk));
        if sk.is_null() {
            return ALLOW;
        }
        let listening = read_volatile(addr_of!((*sk).state)) == BPF_TCP_LISTEN;
        let family = read_volatile(addr_of!((*sk).family));
        let ip6 = addr_of!((*sk).src_ip6) as *const u32;
        let addr = if family == AF_INET as u32 {
            [read_volatile(addr_of!((*sk).src_ip4)), 0, 0, 0]
        } else {
            [
                read_volatile(ip6),
                read_volatile(ip6.wrapping_add(1)),
                read_volatile(ip6.wrapping_add(2)),
                read_volatile(ip6.wrapping_add(3)),
            ]
        };
        let port = read_volatile(addr_of!((*sk).src_port));
        let udp_unconnected = !listening && {
            let full = bpf_sk_fullsock(sk);
            !full.is_null()
                && read_volatile(addr_of!((*full).protocol)) == PROTO_UDP as u32
                && read_volatile(addr_of!((*sk).dst_port)) == 0
        };
        if !listening && !udp_unconnected {
            return ALLOW;
        }
        // The socket's cgroup (this runs in softirq, not in the plugin's context).
        let cg = bpf_skb_cgroup_id(skb);
        let proto = if listening { PROTO_TCP } else { PROTO_UDP };
        if local_allowed(cg, family, addr, port, proto) {
            return ALLOW;
        }
        if udp_unconnected && source_allowed(&ctx, cg) {
            return ALLOW;
        }
        if let Some(cfg) = SANDBOXES.get(&cg) {
            bump(cfg.slot, COUNTER_INBOUND_DROPPED);
        }
        DENY
    }
}

/// Is the datagram's source (read from its IP and UDP headers) a destination the connect rules
/// of sandbox `cg` allow for UDP? Anything not parsed (IPv6 extension headers) is no.
#[inline(always)]
fn source_allowed(ctx: &SkBuffContext, cg: u64) -> bool {
    let Some(rules) = NET_RULES.get_ptr(&cg) else {
        return false;
    };
    // The data starts at the network header.
    let Ok(first) = ctx.load::<u8>(0) else {
        return false;
    };
    let (family, addr, l4) = match first >> 4 {
        4 => {
            let Ok(src) = ctx.load::<u32>(12) else {
                return false;
            };
            (AF_INET, [src, 0, 0, 0], ((first & 0x0f) as usize) * 4)
        }
        6 => {
            if ctx.load::<u8>(6) != Ok(PROTO_UDP) {
                return false;
            }
            let (Ok(a), Ok(b), Ok(c), Ok(d)) = (
                ctx.load::<u32>(8),
                ctx.load::<u32>(12),
                ctx.load::<u32>(16),
                ctx.load::<u32>(20),
            ) else {
                return false;
            };
            (AF_INET6, [a, b, c, d], 40)
        }
        _ => return false,
    };
    let (family, addr) = unmap(family, addr);
    let Ok(sport) = ctx.load::<u16>(l4) else {
        return false;
    };
    // SAFETY: a live map value.
    matches(
        unsafe { &(*rules).connect },
        family,
        &addr,
        u16::from_be(sport),
        PROTO_UDP,
    )
}

/// The plugin's side of the same hole: a socket started listening where no bind rule allows it.
/// The call itself cannot be refused from here (the kernel ignores the reply), so this only
/// reports it; `inbound` keeps every connection out.
#[sock_ops]
pub fn listen(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_LISTEN_CB {
        return 1;
    }
    let cg = current_cgroup();
    let ops = ctx.ops;
    // SAFETY: addresses of fields inside the program's context, each loaded once, unconditionally
    // (a load through a pointer chosen by a branch is a modified context pointer to the verifier).
    let (family, ip4, ip6, port) = unsafe {
        let ip6 = addr_of!((*ops).local_ip6) as *const u32;
        (
            ctx_u32(addr_of!((*ops).family)),
            ctx_u32(addr_of!((*ops).local_ip4)),
            [
                ctx_u32(ip6),
                ctx_u32(ip6.wrapping_add(1)),
                ctx_u32(ip6.wrapping_add(2)),
                ctx_u32(ip6.wrapping_add(3)),
            ],
            ctx_u32(addr_of!((*ops).local_port)),
        )
    };
    let addr = if family == AF_INET as u32 {
        [ip4, 0, 0, 0]
    } else {
        ip6
    };
    if local_allowed(cg, family, addr, port, PROTO_TCP) {
        return 1;
    }
    // SAFETY: the value is only read.
    let Some(cfg) = (unsafe { SANDBOXES.get(&cg) }) else {
        return 1;
    };
    bump(cfg.slot, COUNTER_NET_DENIED);
    let v4 = family == AF_INET as u32;
    match reserve::<NetDenyEvent>(cfg.slot) {
        Some(mut e) => {
            e.write(NetDenyEvent {
                header: header(EVENT_NET_DENY, cg),
                addr,
                port: port as u16,
                family: if v4 { AF_INET } else { AF_INET6 },
                protocol: PROTO_TCP,
                hook: if v4 { HOOK_LISTEN4 } else { HOOK_LISTEN6 },
                killed: 0,
                lsm: 0,
                _pad: 0,
            });
            e.submit(0);
        }
        None => {
            bump(cfg.slot, COUNTER_DROPPED);
            bump(cfg.slot, COUNTER_NET_DROPPED);
            bump(cfg.slot, COUNTER_DENIALS_DROPPED);
        }
    }
    1
}
