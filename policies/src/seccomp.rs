//! Compiles `[syscalls]` into a classic-BPF seccomp program for x86_64.
//!
//! Why our own generator rather than seccompiler's `SeccompFilter`: a sandbox needs different
//! answers for different calls in one filter (EPERM for denied calls, ENOSYS for `clone3` so that
//! libc falls back to `clone`, whose flags we can inspect) and seccompiler gives one match action
//! per filter. Its rules are also a linear chain; this generator emits a binary search over syscall
//! number ranges, so a call costs about log2(ranges) comparisons. seccompiler still installs the
//! program in the shim.
//!
//! The program:
//! 1. checks the architecture: anything but AUDIT_ARCH_X86_64 (an `int 0x80` i386 call) kills the
//!    process, because the numbers below mean other calls in other ABIs;
//! 2. denies the x32 ABI (numbers with bit 30 set);
//! 3. searches the allowed ranges; calls with argument checks get a few more instructions.

use crate::model::{DenyAction, Syscalls};
use crate::spec::SeccompSpec;
use crate::syscalls;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

pub const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
pub const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// Low 32 bits of argument `i` (seccomp_data.args is u64[6] at offset 16; x86_64 is little-endian).
const fn offset_arg_low(i: u32) -> u32 {
    16 + 8 * i
}

const CLONE_NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | 0x80/* CLONE_NEWTIME */) as u32;
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541c;
/// personality() values that do not weaken the process: PER_LINUX, PER_LINUX32, UNAME26 and their
/// combination, and 0xffffffff (query). ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC and friends are denied.
const SAFE_PERSONALITIES: [u32; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

type Insn = (u16, u8, u8, u32);

/// What the program does with one syscall number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    Deny,
    Enosys,
    /// Allowed unless the low 32 bits of argument `arg` have one of the bits of `mask`.
    AllowUnlessBits {
        arg: u32,
        mask: u32,
    },
    /// `open`/`openat`: allowed unless the call creates a file (`O_CREAT` or `O_TMPFILE` in the
    /// flags at `flags`) with a set-id bit in its mode (at `mode`). Without those flags the
    /// kernel ignores the mode argument, and callers leave what they like there: jemalloc opens
    /// `/proc/sys/vm/overcommit_memory` by the raw system call with whatever the register held.
    AllowUnlessCreatesSetId {
        flags: u32,
        mode: u32,
    },
    /// Allowed only when the low 32 bits of argument `arg` equal one of `values`.
    AllowIfOneOf {
        arg: u32,
        values: &'static [u32],
    },
    /// Allowed unless the low 32 bits of argument `arg` equal one of `values`.
    AllowUnlessOneOf {
        arg: u32,
        values: &'static [u32],
    },
    /// `socket`: unix sockets; netlink sockets of protocol NETLINK_ROUTE only; inet and inet6
    /// only for TCP and UDP (protocol 0, 6 or 17). Anything else there — ICMP echo ("ping")
    /// sockets, SCTP, UDP-Lite, MPTCP — would carry traffic past the network programs, which hook
    /// connect, UDP sendmsg and bind only.
    Socket,
    /// `setsockopt`: not the options that send a socket's packets somewhere other than the
    /// address its connect or sendto named — an IPv6 routing header (`IPV6_RTHDR`, the RFC 2292
    /// `IPV6_2292RTHDR` and `IPV6_2292PKTOPTIONS` that can carry one, `IPV6_RTHDRDSTOPTS` that
    /// goes with one) and IPv4 options (`IP_OPTIONS`: loose and strict source routes). The
    /// network programs judge the address the call names; the packet would go to the first
    /// hop. The same headers given per message (sendmsg control data) are dropped on the way
    /// out by the `outbound` program.
    Setsockopt,
}

const IPV6_2292RTHDR: u32 = 5;
const IPV6_2292PKTOPTIONS: u32 = 6;
const IPV6_RTHDRDSTOPTS: u32 = 55;
const IPV6_RTHDR: u32 = 57;

const TIOCSETD: u32 = 0x5423;
/// `_IOWR('T', 0x43, struct serial_iso7816)`, which libc does not define.
const TIOCSISO7816: u32 = 0xc028_5443;
/// Terminal ioctls a plugin must not issue even on a terminal it was handed (the caller's stdio):
/// - injecting input: TIOCSTI, TIOCLINUX (its paste);
/// - state of the caller's terminal that outlives the sandbox and that the supervisor cannot read
///   back to restore: the line discipline (TIOCSETD), exclusive mode (TIOCEXCL, and TIOCNXCL,
///   which would undo the caller's own), output or input stopped (TCXONC, every argument: its
///   "on" halves only undo an "off" a plugin cannot issue), a break condition (TIOCSBRK,
///   TIOCCBRK), the modem lines (TIOCMSET, TIOCMBIS, TIOCMBIC: dropping DTR hangs a line up),
///   serial port settings (TIOCSSERIAL, TIOCSRS485, TIOCSISO7816);
/// - the window size (TIOCSWINSZ): it also sends SIGWINCH to the caller's foreground process
///   group, and the supervisor does not restore it, because the operator may resize the window
///   while the plugin runs;
/// - taking the terminal over: TIOCSCTTY (the plugin runs in a session of its own without a
///   controlling terminal, and must not acquire the caller's), TIOCVHANGUP, TIOCCONS and
///   TIOCSLCKTRMIOS (these three also need capabilities the plugin lacks; refused here so an
///   attempt is reported as seccomp's).
///
/// Termios settings (TCSETS*: raw mode for a password prompt or an editor) are ordinary and stay
/// allowed: the supervisor saves them before the launch and restores them at the end. TIOCSPGRP
/// is allowed: without a controlling terminal the kernel answers ENOTTY, which an interactive
/// shell's job control meets and survives.
const TERMINAL_IOCTLS_DENIED: [u32; 19] = [
    TIOCSTI,
    TIOCLINUX,
    TIOCSETD,
    libc::TIOCEXCL as u32,
    libc::TIOCNXCL as u32,
    libc::TCXONC as u32,
    libc::TIOCSBRK as u32,
    libc::TIOCCBRK as u32,
    libc::TIOCMSET as u32,
    libc::TIOCMBIS as u32,
    libc::TIOCMBIC as u32,
    libc::TIOCSSERIAL as u32,
    libc::TIOCSRS485 as u32,
    TIOCSISO7816,
    libc::TIOCSWINSZ as u32,
    libc::TIOCSCTTY as u32,
    libc::TIOCVHANGUP as u32,
    libc::TIOCCONS as u32,
    libc::TIOCSLCKTRMIOS as u32,
];
/// The one netlink protocol a plugin may open: NETLINK_ROUTE, what glibc's getaddrinfo
/// (AI_ADDRCONFIG), getifaddrs and if_nameindex use. The others tell a plugin on the host's
/// network what it has no business with: NETLINK_SOCK_DIAG lists the host's connections and the
/// names of its unix sockets, NETLINK_KOBJECT_UEVENT receives its device events, and the rest
/// (audit, netfilter, xfrm, generic families) are administration interfaces.
const NETLINK_ROUTE: u32 = libc::NETLINK_ROUTE as u32;
/// Address families a plugin may open. AF_VSOCK in particular is not namespaced: it would reach
/// the hypervisor and the host's vsock ports from an otherwise empty network namespace.
const SOCKET_FAMILIES: [u32; 4] = [
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
    libc::AF_NETLINK as u32,
];
/// S_ISUID | S_ISGID: a plugin must not leave a set-id file behind (in `$STATE_DIR` it would run
/// with the plugin's host uid for any local user).
const SET_ID_BITS: u32 = 0o6000;
/// The open flags with which the kernel reads the mode argument: `O_CREAT` and `__O_TMPFILE`
/// (`O_TMPFILE` without its `O_DIRECTORY` bit, which alone creates nothing).
const OPEN_CREATES: u32 = libc::O_CREAT as u32 | 0o2000_0000;

/// Builds the program for a validated `[syscalls]` table. Unknown names were rejected by the parser
/// and are ignored here.
pub fn build_program(s: &Syscalls) -> SeccompSpec {
    let deny_ret = match s.deny_action {
        DenyAction::Eperm => SECCOMP_RET_ERRNO | libc::EPERM as u32,
        DenyAction::Kill => SECCOMP_RET_KILL_PROCESS,
    };
    let mut verdicts = verdicts(s);
    verdicts.sort_by_key(|&(nr, _)| nr);
    let segments = segments(&verdicts);

    let mut program = vec![
        (BPF_LD_W_ABS, 0, 0, OFFSET_ARCH),
        (BPF_JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        (BPF_LD_W_ABS, 0, 0, OFFSET_NR),
    ];
    // Numbers at or above the x32 bit form the last segment, which is always Deny.
    emit_search(&segments, deny_ret, &mut program);
    SeccompSpec { program }
}

fn verdicts(s: &Syscalls) -> Vec<(u32, Verdict)> {
    let mut allowed: Vec<&str> = syscalls::profile_allows(s.profile);
    allowed.retain(|name| !s.deny.iter().any(|d| d == name));
    for name in &s.allow {
        if !allowed.contains(&name.as_str()) {
            if let Some((n, _)) = syscalls::ALL.iter().find(|(n, _)| n == name) {
                allowed.push(n);
            }
        }
    }
    let explicitly_allowed = |name: &str| s.allow.iter().any(|a| a == name);
    allowed
        .into_iter()
        .filter_map(|name| {
            let nr = syscalls::lookup(name)?;
            let unless_set_id = |arg| Verdict::AllowUnlessBits {
                arg,
                mask: SET_ID_BITS,
            };
            let verdict = match name {
                "clone" => Verdict::AllowUnlessBits {
                    arg: 0,
                    mask: CLONE_NAMESPACE_FLAGS,
                },
                // glibc and musl fall back to clone() on ENOSYS, never on EPERM; likewise openat2
                // (whose mode hides in a struct) falls back to openat, whose mode we can check.
                "clone3" if !explicitly_allowed("clone3") => Verdict::Enosys,
                "openat2" if !explicitly_allowed("openat2") => Verdict::Enosys,
                "ioctl" => Verdict::AllowUnlessOneOf {
                    arg: 1,
                    values: &TERMINAL_IOCTLS_DENIED,
                },
                "personality" => Verdict::AllowIfOneOf {
                    arg: 0,
                    values: &SAFE_PERSONALITIES,
                },
                "socket" => Verdict::Socket,
                // Listed in `allow`, the call is allowed whole (as clone3 and openat2 are).
                "setsockopt" if !explicitly_allowed("setsockopt") => Verdict::Setsockopt,
                "socketpair" => Verdict::AllowIfOneOf {
                    arg: 0,
                    values: &SOCKET_FAMILIES,
                },
                "chmod" | "fchmod" | "creat" | "mknod" => unless_set_id(1),
                "fchmodat" | "fchmodat2" | "mknodat" => unless_set_id(2),
                "open" => Verdict::AllowUnlessCreatesSetId { flags: 1, mode: 2 },
                "openat" => Verdict::AllowUnlessCreatesSetId { flags: 2, mode: 3 },
                _ => Verdict::Allow,
            };
            Some((nr, verdict))
        })
        .collect()
}

/// Covers the whole u32 number space with (first, verdict) segments, merging neighbours with the
/// same verdict; each segment runs up to the next one's first number.
fn segments(verdicts: &[(u32, Verdict)]) -> Vec<(u32, Verdict)> {
    let mut out: Vec<(u32, Verdict)> = vec![(0, Verdict::Deny)];
    let push = |first: u32, v: Verdict, out: &mut Vec<(u32, Verdict)>| {
        if out.last().map(|&(_, last)| last) != Some(v) {
            if out.last().map(|&(f, _)| f) == Some(first) {
                out.pop();
                if out.last().map(|&(_, last)| last) == Some(v) {
                    return;
                }
            }
            out.push((first, v));
        }
    };
    for &(nr, v) in verdicts {
        debug_assert!(nr < X32_SYSCALL_BIT);
        push(nr, v, &mut out);
        push(nr + 1, Verdict::Deny, &mut out);
    }
    push(X32_SYSCALL_BIT, Verdict::Deny, &mut out);
    out
}

/// Emits a binary search over `segments` (sorted, first one starting at 0). The accumulator holds
/// the syscall number on entry to every node.
fn emit_search(segments: &[(u32, Verdict)], deny_ret: u32, out: &mut Vec<Insn>) {
    if segments.len() == 1 {
        emit_verdict(segments[0].1, deny_ret, out);
        return;
    }
    let mid = segments.len() / 2;
    let mut low = Vec::new();
    emit_search(&segments[..mid], deny_ret, &mut low);
    let split = segments[mid].0;
    match u8::try_from(low.len()) {
        Ok(skip) => out.push((BPF_JMP_JGE_K, skip, 0, split)),
        Err(_) => {
            // Too far for an 8-bit conditional offset: hop over an unconditional jump.
            out.push((BPF_JMP_JGE_K, 0, 1, split));
            out.push((BPF_JMP_JA, 0, 0, low.len() as u32));
        }
    }
    out.extend(low);
    emit_search(&segments[mid..], deny_ret, out);
}

fn emit_verdict(v: Verdict, deny_ret: u32, out: &mut Vec<Insn>) {
    let allow = (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW);
    let deny = (BPF_RET_K, 0, 0, deny_ret);
    match v {
        Verdict::Allow => out.push(allow),
        Verdict::Deny => out.push(deny),
        Verdict::Enosys => out.push((BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32)),
        Verdict::AllowUnlessBits { arg, mask } => out.extend([
            (BPF_LD_W_ABS, 0, 0, offset_arg_low(arg)),
            (BPF_JMP_JSET_K, 1, 0, mask),
            allow,
            deny,
        ]),
        Verdict::AllowUnlessCreatesSetId { flags, mode } => out.extend([
            (BPF_LD_W_ABS, 0, 0, offset_arg_low(flags)),
            (BPF_JMP_JSET_K, 0, 2, OPEN_CREATES),
            (BPF_LD_W_ABS, 0, 0, offset_arg_low(mode)),
            (BPF_JMP_JSET_K, 1, 0, SET_ID_BITS),
            allow,
            deny,
        ]),
        Verdict::AllowIfOneOf { arg, values } => emit_one_of(arg, values, [deny, allow], out),
        Verdict::AllowUnlessOneOf { arg, values } => emit_one_of(arg, values, [allow, deny], out),
        Verdict::Socket => {
            // Each jump counts the instructions it skips; the last one is `allow`.
            out.extend([
                (BPF_LD_W_ABS, 0, 0, offset_arg_low(0)),
                (BPF_JMP_JEQ_K, 12, 0, libc::AF_UNIX as u32),
                (BPF_JMP_JEQ_K, 8, 0, libc::AF_NETLINK as u32),
                (BPF_JMP_JEQ_K, 2, 0, libc::AF_INET as u32),
                (BPF_JMP_JEQ_K, 1, 0, libc::AF_INET6 as u32),
                deny,
                // inet, inet6: the protocol is TCP or UDP (0 picks one by the type).
                (BPF_LD_W_ABS, 0, 0, offset_arg_low(2)),
                (BPF_JMP_JEQ_K, 6, 0, 0),
                (BPF_JMP_JEQ_K, 5, 0, libc::IPPROTO_TCP as u32),
                (BPF_JMP_JEQ_K, 4, 0, libc::IPPROTO_UDP as u32),
                deny,
                // netlink: NETLINK_ROUTE only.
                (BPF_LD_W_ABS, 0, 0, offset_arg_low(2)),
                (BPF_JMP_JEQ_K, 1, 0, NETLINK_ROUTE),
                deny,
                allow,
            ])
        }
        Verdict::Setsockopt => out.extend([
            (BPF_LD_W_ABS, 0, 0, offset_arg_low(1)),
            (BPF_JMP_JEQ_K, 1, 0, libc::SOL_IP as u32),
            (BPF_JMP_JEQ_K, 2, 8, libc::SOL_IPV6 as u32),
            // SOL_IP
            (BPF_LD_W_ABS, 0, 0, offset_arg_low(2)),
            (BPF_JMP_JEQ_K, 5, 6, libc::IP_OPTIONS as u32),
            // SOL_IPV6
            (BPF_LD_W_ABS, 0, 0, offset_arg_low(2)),
            (BPF_JMP_JEQ_K, 3, 0, IPV6_2292RTHDR),
            (BPF_JMP_JEQ_K, 2, 0, IPV6_2292PKTOPTIONS),
            (BPF_JMP_JEQ_K, 1, 0, IPV6_RTHDRDSTOPTS),
            (BPF_JMP_JEQ_K, 0, 1, IPV6_RTHDR),
            deny,
            allow,
        ]),
    }
}

/// Compares the low 32 bits of argument `arg` with `values`: a match ends at `on_match`, anything
/// else at `otherwise`. Emits `[otherwise, on_match]` last. Long lists (the terminal ioctls) are
/// searched in halves, so a call takes a few comparisons however many values there are.
fn emit_one_of(arg: u32, values: &[u32], [otherwise, on_match]: [Insn; 2], out: &mut Vec<Insn>) {
    out.push((BPF_LD_W_ABS, 0, 0, offset_arg_low(arg)));
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut search = Vec::new();
    emit_member(&sorted, &mut search);
    // The two verdicts follow the search: `otherwise` at len, `on_match` at len + 1.
    let len = search.len();
    for (i, (code, jt, jf, k)) in search.into_iter().enumerate() {
        let resolve = |j: Jump| -> u8 {
            let target = match j {
                Jump::Next(n) => i + 1 + n,
                Jump::Otherwise => len,
                Jump::Match => len + 1,
            };
            u8::try_from(target - (i + 1)).expect("a short search")
        };
        out.push((code, resolve(jt), resolve(jf), k));
    }
    out.push(otherwise);
    out.push(on_match);
}

/// A jump of [`emit_member`], resolved once the search's length is known.
#[derive(Clone, Copy)]
enum Jump {
    /// Skip this many instructions of the search.
    Next(usize),
    Otherwise,
    Match,
}

/// A binary search over `sorted` for the accumulator: up to three values compared in a row,
/// longer lists split at their middle value.
fn emit_member(sorted: &[u32], out: &mut Vec<(u16, Jump, Jump, u32)>) {
    if sorted.len() <= 3 {
        for (i, v) in sorted.iter().enumerate() {
            let miss = if i + 1 == sorted.len() {
                Jump::Otherwise
            } else {
                Jump::Next(0)
            };
            out.push((BPF_JMP_JEQ_K, Jump::Match, miss, *v));
        }
        // An empty list emits nothing: the search falls through to `otherwise`.
        return;
    }
    let mid = sorted.len() / 2;
    let mut low = Vec::new();
    emit_member(&sorted[..mid], &mut low);
    out.push((
        BPF_JMP_JGE_K,
        Jump::Next(low.len()),
        Jump::Next(0),
        sorted[mid],
    ));
    out.extend(low);
    emit_member(&sorted[mid..], out);
}

/// Runs a compiled program (one the generator above emitted) on one syscall, as the kernel would:
/// returns the `SECCOMP_RET_*` action with its data. The tests check the generator with it, and
/// the monitor uses it to tell which EPERMs seccomp returned: it replays the sandbox's own filter
/// on the registers the syscall was made with. An instruction this generator never emits, or a
/// jump out of the program, answers `None`.
pub fn evaluate(program: &[(u16, u8, u8, u32)], arch: u32, nr: u32, args: [u64; 6]) -> Option<u32> {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let mut acc = 0u32;
    let mut pc = 0usize;
    // Classic BPF only jumps forward, so every program ends within its length.
    for _ in 0..program.len() {
        let &(code, jt, jf, k) = program.get(pc)?;
        pc += 1;
        match code {
            BPF_LD_W_ABS => {
                let o = k as usize;
                acc = u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?);
            }
            BPF_JMP_JA => pc += k as usize,
            BPF_JMP_JEQ_K => pc += if acc == k { jt } else { jf } as usize,
            BPF_JMP_JGE_K => pc += if acc >= k { jt } else { jf } as usize,
            BPF_JMP_JSET_K => pc += if acc & k != 0 { jt } else { jf } as usize,
            BPF_RET_K => return Some(k),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SyscallProfile;

    fn run(program: &[Insn], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        evaluate(program, arch, nr, args).expect("a complete program")
    }

    fn eperm() -> u32 {
        SECCOMP_RET_ERRNO | libc::EPERM as u32
    }

    fn answer(p: &[Insn], name: &str, args: [u64; 6]) -> u32 {
        run(p, AUDIT_ARCH_X86_64, syscalls::lookup(name).unwrap(), args)
    }

    #[test]
    fn every_number_gets_the_profile_answer() {
        let spec = build_program(&Syscalls::default());
        let allowed = syscalls::profile_allows(SyscallProfile::Default);
        for nr in 0..600u32 {
            let got = run(&spec.program, AUDIT_ARCH_X86_64, nr, [0; 6]);
            let name = syscalls::name_of(nr);
            let want = match name {
                Some("clone3") | Some("openat2") => SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
                // Family 0 (AF_UNSPEC) is not an allowed family.
                Some("socket") | Some("socketpair") => eperm(),
                Some(n) if allowed.contains(&n) => SECCOMP_RET_ALLOW,
                _ => eperm(),
            };
            assert_eq!(got, want, "syscall {nr} ({name:?})");
        }
    }

    #[test]
    fn foreign_architectures_and_x32_are_refused() {
        let p = build_program(&Syscalls::default()).program;
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        assert_eq!(
            run(&p, AUDIT_ARCH_I386, 20, [0; 6]),
            SECCOMP_RET_KILL_PROCESS
        );
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39, [0; 6]),
            eperm()
        );
        assert_eq!(run(&p, AUDIT_ARCH_X86_64, u32::MAX, [0; 6]), eperm());
    }

    #[test]
    fn argument_filters() {
        let p = build_program(&Syscalls::default()).program;
        let thread_flags = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(
            answer(&p, "clone", [thread_flags, 0, 0, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        let userns = libc::CLONE_NEWUSER as u64 | libc::SIGCHLD as u64;
        assert_eq!(answer(&p, "clone", [userns, 0, 0, 0, 0, 0]), eperm());
        assert_eq!(
            answer(&p, "ioctl", [0, 0x5401, 0, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            answer(&p, "ioctl", [0, TIOCSTI as u64, 0, 0, 0, 0]),
            eperm()
        );
        assert_eq!(
            answer(&p, "ioctl", [0, TIOCLINUX as u64, 0, 0, 0, 0]),
            eperm()
        );
        for ok in SAFE_PERSONALITIES {
            assert_eq!(
                answer(&p, "personality", [ok as u64, 0, 0, 0, 0, 0]),
                SECCOMP_RET_ALLOW
            );
        }
        assert_eq!(
            answer(&p, "personality", [0x0040000, 0, 0, 0, 0, 0]),
            eperm()
        );
    }

    #[test]
    fn additions_removals_and_kill() {
        let s = Syscalls {
            allow: vec!["ptrace".into(), "clone3".into()],
            deny: vec!["getppid".into()],
            deny_action: DenyAction::Kill,
            ..Syscalls::default()
        };
        let p = build_program(&s).program;
        assert_eq!(answer(&p, "ptrace", [0; 6]), SECCOMP_RET_ALLOW);
        assert_eq!(answer(&p, "clone3", [0; 6]), SECCOMP_RET_ALLOW);
        assert_eq!(answer(&p, "getppid", [0; 6]), SECCOMP_RET_KILL_PROCESS);
        assert_eq!(answer(&p, "mount", [0; 6]), SECCOMP_RET_KILL_PROCESS);
        assert_eq!(answer(&p, "getpid", [0; 6]), SECCOMP_RET_ALLOW);
    }

    #[test]
    fn program_is_short_and_every_path_shorter() {
        let p = build_program(&Syscalls::default()).program;
        assert!(p.len() < 512, "{} instructions", p.len());
        // The longest path a call takes: the binary search keeps it near log2(ranges).
        let longest = (0..600u32).map(|nr| steps(&p, nr)).max().unwrap();
        assert!(longest <= 24, "a call runs {longest} instructions");
    }

    /// How many instructions the program executes for `nr` with zero arguments.
    fn steps(program: &[Insn], nr: u32) -> usize {
        let (mut pc, mut acc, mut n) = (0usize, 0u32, 0usize);
        loop {
            let (code, jt, jf, k) = program[pc];
            pc += 1;
            n += 1;
            match code {
                BPF_LD_W_ABS => {
                    acc = if k == OFFSET_ARCH {
                        AUDIT_ARCH_X86_64
                    } else if k == OFFSET_NR {
                        nr
                    } else {
                        0
                    }
                }
                BPF_JMP_JA => pc += k as usize,
                BPF_JMP_JEQ_K => pc += if acc == k { jt } else { jf } as usize,
                BPF_JMP_JGE_K => pc += if acc >= k { jt } else { jf } as usize,
                BPF_JMP_JSET_K => pc += if acc & k != 0 { jt } else { jf } as usize,
                _ => return n,
            }
        }
    }

    #[test]
    fn no_socket_option_routes_packets_elsewhere() {
        let p = build_program(&Syscalls::default()).program;
        let opt = |level: i32, name: u32| {
            answer(&p, "setsockopt", [3, level as u64, name as u64, 0, 0, 0])
        };
        let deny = eperm();
        assert_eq!(opt(libc::SOL_IP, libc::IP_OPTIONS as u32), deny);
        for name in [
            IPV6_2292RTHDR,
            IPV6_2292PKTOPTIONS,
            IPV6_RTHDRDSTOPTS,
            IPV6_RTHDR,
        ] {
            assert_eq!(opt(libc::SOL_IPV6, name), deny, "IPv6 option {name}");
        }
        // Everything else stays: TTLs, buffers, reuse, v6only, TCP options.
        assert_eq!(opt(libc::SOL_IP, libc::IP_TTL as u32), SECCOMP_RET_ALLOW);
        assert_eq!(
            opt(libc::SOL_IPV6, libc::IPV6_V6ONLY as u32),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            opt(libc::SOL_SOCKET, libc::SO_REUSEADDR as u32),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            opt(libc::SOL_TCP, libc::TCP_NODELAY as u32),
            SECCOMP_RET_ALLOW
        );
        // The level, not the option number alone: IP_OPTIONS is 4 at SOL_IP only.
        assert_eq!(
            opt(libc::SOL_SOCKET, libc::IP_OPTIONS as u32),
            SECCOMP_RET_ALLOW
        );
    }

    #[test]
    fn inet_sockets_are_tcp_or_udp_only() {
        let p = build_program(&Syscalls::default()).program;
        let sock = |family: i32, ty: i32, proto: i32| {
            answer(
                &p,
                "socket",
                [family as u64, ty as u64, proto as u64, 0, 0, 0],
            )
        };
        for family in [libc::AF_INET, libc::AF_INET6] {
            assert_eq!(sock(family, libc::SOCK_STREAM, 0), SECCOMP_RET_ALLOW);
            assert_eq!(
                sock(family, libc::SOCK_STREAM, libc::IPPROTO_TCP),
                SECCOMP_RET_ALLOW
            );
            assert_eq!(sock(family, libc::SOCK_DGRAM, 0), SECCOMP_RET_ALLOW);
            assert_eq!(
                sock(family, libc::SOCK_DGRAM, libc::IPPROTO_UDP),
                SECCOMP_RET_ALLOW
            );
            // Ping sockets, SCTP, UDP-Lite, MPTCP: past the network programs' hooks.
            for proto in [
                libc::IPPROTO_ICMP,
                libc::IPPROTO_ICMPV6,
                libc::IPPROTO_SCTP,
                136,
                262,
            ] {
                assert_eq!(
                    sock(family, libc::SOCK_DGRAM, proto),
                    eperm(),
                    "{family} {proto}"
                );
            }
        }
        // Other families are judged by family alone, as before.
        assert_eq!(sock(libc::AF_UNIX, libc::SOCK_STREAM, 0), SECCOMP_RET_ALLOW);
        assert_eq!(sock(libc::AF_NETLINK, libc::SOCK_RAW, 0), SECCOMP_RET_ALLOW);
        assert_eq!(sock(libc::AF_PACKET, libc::SOCK_RAW, 0), eperm());
    }

    #[test]
    fn netlink_is_route_only() {
        let p = build_program(&Syscalls::default()).program;
        let netlink = |ty: i32, proto: i32| {
            answer(
                &p,
                "socket",
                [libc::AF_NETLINK as u64, ty as u64, proto as u64, 0, 0, 0],
            )
        };
        // What getaddrinfo, getifaddrs and if_nameindex open.
        assert_eq!(
            netlink(libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            netlink(libc::SOCK_DGRAM, libc::NETLINK_ROUTE),
            SECCOMP_RET_ALLOW
        );
        for proto in [
            libc::NETLINK_SOCK_DIAG,
            libc::NETLINK_KOBJECT_UEVENT,
            libc::NETLINK_AUDIT,
            libc::NETLINK_NETFILTER,
            libc::NETLINK_XFRM,
            libc::NETLINK_GENERIC,
            libc::NETLINK_SELINUX,
            libc::NETLINK_CONNECTOR,
            31,
        ] {
            assert_eq!(netlink(libc::SOCK_RAW, proto), eperm(), "protocol {proto}");
        }
        // Only the low 32 bits reach the kernel: NETLINK_ROUTE with garbage above is still 0.
        assert_eq!(
            answer(&p, "socket", [libc::AF_NETLINK as u64, 3, 1 << 32, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        // The inet checks are unchanged by the netlink branch.
        assert_eq!(
            answer(&p, "socket", [libc::AF_INET as u64, 1, 6, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            answer(&p, "socket", [libc::AF_INET6 as u64, 2, 1, 0, 0, 0]),
            eperm()
        );
    }

    #[test]
    fn terminal_ioctls_that_outlive_the_sandbox_are_refused() {
        let p = build_program(&Syscalls::default()).program;
        let ioctl = |request: u64| answer(&p, "ioctl", [1, request, 0, 0, 0, 0]);
        for request in TERMINAL_IOCTLS_DENIED {
            assert_eq!(ioctl(request as u64), eperm(), "ioctl {request:#x}");
        }
        for request in [
            libc::TIOCEXCL,
            libc::TCXONC,
            libc::TIOCSWINSZ,
            libc::TIOCSCTTY,
            libc::TIOCVHANGUP,
            libc::TIOCCONS,
        ] {
            assert_eq!(ioctl(request), eperm(), "ioctl {request:#x}");
        }
        // Reading the terminal, and termios settings (restored by the supervisor), are ordinary.
        for request in [
            libc::TCGETS,
            libc::TCSETS,
            libc::TCSETSW,
            libc::TCSETSF,
            libc::TIOCGWINSZ,
            libc::TIOCGPGRP,
            libc::TIOCSPGRP,
            libc::TIOCGEXCL,
            libc::TCFLSH,
            libc::TCSBRK,
            libc::FIONREAD,
            libc::FIONBIO,
            libc::FIOCLEX,
        ] {
            assert_eq!(ioctl(request), SECCOMP_RET_ALLOW, "ioctl {request:#x}");
        }
        // The search in halves answers exactly the list, for every request of the terminal range.
        for request in (0x5400..0x5480u32).chain([TIOCSISO7816, TIOCSISO7816 + 1, u32::MAX]) {
            let want = if TERMINAL_IOCTLS_DENIED.contains(&request) {
                eperm()
            } else {
                SECCOMP_RET_ALLOW
            };
            assert_eq!(ioctl(request as u64), want, "ioctl {request:#x}");
        }
    }

    #[test]
    fn socket_families_and_set_id_modes() {
        let p = build_program(&Syscalls::default()).program;
        for family in [
            libc::AF_UNIX,
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_NETLINK,
        ] {
            assert_eq!(
                answer(&p, "socket", [family as u64, 1, 0, 0, 0, 0]),
                SECCOMP_RET_ALLOW
            );
        }
        for family in [
            libc::AF_VSOCK,
            libc::AF_PACKET,
            libc::AF_ALG,
            libc::AF_BLUETOOTH,
        ] {
            assert_eq!(
                answer(&p, "socket", [family as u64, 1, 0, 0, 0, 0]),
                eperm()
            );
        }
        assert_eq!(
            answer(&p, "socketpair", [libc::AF_UNIX as u64, 1, 0, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            answer(&p, "chmod", [0, 0o755, 0, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(answer(&p, "chmod", [0, 0o4755, 0, 0, 0, 0]), eperm());
        assert_eq!(answer(&p, "fchmodat", [0, 0, 0o2755, 0, 0, 0]), eperm());
        assert_eq!(
            answer(&p, "openat", [0, 0, 0o100, 0o644, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(answer(&p, "openat", [0, 0, 0o100, 0o6755, 0, 0]), eperm());
        // O_TMPFILE (with O_DIRECTORY) creates too; O_DIRECTORY alone does not.
        assert_eq!(
            answer(&p, "openat", [0, 0, 0o2020_0002, 0o4755, 0, 0]),
            eperm()
        );
        // Without O_CREAT or O_TMPFILE the mode is ignored by the kernel, whatever it holds:
        // jemalloc's raw open(2) of /proc/sys/vm/overcommit_memory passes a stray register.
        for (name, args) in [
            (
                "open",
                [0, libc::O_RDONLY as u64 | 0o2000000, 0xffff_ffff, 0, 0, 0],
            ),
            ("openat", [0, 0, 0o200000, 0o7777, 0, 0]),
        ] {
            assert_eq!(answer(&p, name, args), SECCOMP_RET_ALLOW, "{name}");
        }
        assert_eq!(answer(&p, "open", [0, 0o101, 0o4755, 0, 0, 0]), eperm());
        assert_eq!(
            answer(&p, "open", [0, 0o101, 0o755, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            answer(&p, "openat2", [0; 6]),
            SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
        assert_eq!(
            answer(&p, "ioctl", [0, TIOCSETD as u64, 0, 0, 0, 0]),
            eperm()
        );
        assert_eq!(answer(&p, "io_setup", [0; 6]), eperm());
    }
}
