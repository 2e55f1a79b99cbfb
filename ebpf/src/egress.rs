//! `cgroup_skb/egress` (`outbound`): what actually leaves a host-network sandbox. The connect and
//! sendmsg programs judge the address a call names, but an IPv6 routing header sends the packet
//! to the header's first hop instead, and an IPv4 source-route option to the option's first hop.
//! seccomp refuses the socket options that set them for every packet (`IPV6_RTHDR`,
//! `IP_OPTIONS`, …); a routing header given per message, as sendmsg control data, passes no
//! filter a syscall argument can express. So every packet a sandbox's socket sends is read here,
//! before the kernel fragments it: an IPv6 packet with a routing header anywhere in its
//! extension-header chain, and an IPv4 packet with options, are dropped (the sender gets EPERM)
//! and reported as network violations. Honest traffic carries neither.
//!
//! Attached to each host-network sandbox's cgroup beside `inbound`; it runs for packets of the
//! sandbox's own sockets only.

use core::ptr::addr_of_mut;

use aya_ebpf::{
    helpers::generated::bpf_skb_cgroup_id, macros::cgroup_skb, programs::SkBuffContext,
};
use stockade_ebpf_common::{
    NetDenyEvent, AF_INET, AF_INET6, COUNTER_DENIALS_DROPPED, COUNTER_DROPPED, COUNTER_NET_DENIED,
    COUNTER_NET_DROPPED, EVENT_NET_DENY, HOOK_EGRESS4, HOOK_EGRESS6,
};

use crate::maps::{bump, header, header_anon, reserve, SANDBOXES};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// IPv6 next-header values of the extension headers walked here.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTS: u8 = 60;
/// Extension headers walked before giving up (and dropping: a longer chain could hide one).
const MAX_EXT_HEADERS: usize = 8;

#[cgroup_skb(egress)]
pub fn outbound(ctx: SkBuffContext) -> i32 {
    judge::<true>(&ctx)
}

/// `outbound` for kernels whose cgroup_skb programs may not ask for the current task (6.1):
/// its events name no process.
#[cgroup_skb(egress)]
pub fn outbound_anon(ctx: SkBuffContext) -> i32 {
    judge::<false>(&ctx)
}

#[inline(always)]
fn judge<const PID: bool>(ctx: &SkBuffContext) -> i32 {
    // The data starts at the network header.
    let Ok(first) = ctx.load::<u8>(0) else {
        return ALLOW;
    };
    match first >> 4 {
        4 => {
            if first & 0x0f <= 5 {
                return ALLOW;
            }
            let dst = ctx.load::<u32>(16).unwrap_or(0);
            let proto = ctx.load::<u8>(9).unwrap_or(0);
            deny::<PID>(ctx, AF_INET, [dst, 0, 0, 0], proto, HOOK_EGRESS4)
        }
        6 => {
            let mut next = ctx.load::<u8>(6).unwrap_or(0);
            let mut off: usize = 40;
            for _ in 0..MAX_EXT_HEADERS {
                match next {
                    ROUTING => return deny_v6::<PID>(ctx),
                    HOP_BY_HOP | DEST_OPTS => {
                        let (Ok(n), Ok(len)) = (ctx.load::<u8>(off), ctx.load::<u8>(off + 1))
                        else {
                            return deny_v6::<PID>(ctx);
                        };
                        next = n;
                        off += (len as usize + 1) * 8;
                    }
                    FRAGMENT => {
                        let Ok(n) = ctx.load::<u8>(off) else {
                            return deny_v6::<PID>(ctx);
                        };
                        next = n;
                        off += 8;
                    }
                    AUTH => {
                        let (Ok(n), Ok(len)) = (ctx.load::<u8>(off), ctx.load::<u8>(off + 1))
                        else {
                            return deny_v6::<PID>(ctx);
                        };
                        next = n;
                        off += (len as usize + 2) * 4;
                    }
                    _ => return ALLOW,
                }
            }
            deny_v6::<PID>(ctx)
        }
        _ => ALLOW,
    }
}

#[inline(always)]
fn deny_v6<const PID: bool>(ctx: &SkBuffContext) -> i32 {
    let (Ok(a), Ok(b), Ok(c), Ok(d)) = (
        ctx.load::<u32>(24),
        ctx.load::<u32>(28),
        ctx.load::<u32>(32),
        ctx.load::<u32>(36),
    ) else {
        return deny::<PID>(ctx, AF_INET6, [0; 4], 0, HOOK_EGRESS6);
    };
    deny::<PID>(ctx, AF_INET6, [a, b, c, d], 0, HOOK_EGRESS6)
}

#[inline(always)]
fn deny<const PID: bool>(
    ctx: &SkBuffContext,
    family: u8,
    addr: [u32; 4],
    protocol: u8,
    hook: u8,
) -> i32 {
    // SAFETY: the program's own context.
    let cg = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    // SAFETY: the value is only read.
    let Some(slot) = (unsafe { SANDBOXES.get(&cg) }).map(|c| c.slot) else {
        return DENY;
    };
    bump(slot, COUNTER_NET_DENIED);
    let Some(mut entry) = reserve::<NetDenyEvent>(slot) else {
        bump(slot, COUNTER_DROPPED);
        bump(slot, COUNTER_NET_DROPPED);
        bump(slot, COUNTER_DENIALS_DROPPED);
        return DENY;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record; every field is written before submit.
    unsafe {
        let h = if PID {
            header(EVENT_NET_DENY, cg)
        } else {
            header_anon(EVENT_NET_DENY, cg)
        };
        addr_of_mut!((*e).header).write(h);
        addr_of_mut!((*e).addr).write(addr);
        addr_of_mut!((*e).port).write(0);
        addr_of_mut!((*e).family).write(family);
        addr_of_mut!((*e).protocol).write(protocol);
        addr_of_mut!((*e).hook).write(hook);
        addr_of_mut!((*e).killed).write(0);
        addr_of_mut!((*e).lsm).write(0);
        addr_of_mut!((*e)._pad).write(0);
    }
    entry.submit(0);
    DENY
}
