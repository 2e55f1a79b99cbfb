//! `stockade policy explain`: what each layer will enforce for a policy on this kernel, in plain
//! words, including what is declared but not (yet) enforced. Security engineers read this before
//! they trust a policy, so it must never claim more than the layers do.

use std::fmt::Write;

use stockade_policy::{
    syscalls, AddressSet, EnforcementMode, Exclusion, LaunchContext, NetworkMode, Policy,
    PolicyPath, Protocol, RlimitResource, ThresholdAction,
};

use crate::probe::Probe;

pub fn explain(policy: &Policy, probe: &Probe) -> String {
    let mut out = String::new();
    // Compile with placeholder directories to get the resolved numbers (defaults included).
    let ctx = LaunchContext {
        argv: vec!["/plugin".into()],
        env: Vec::new(),
        plugin_dir: Some("/plugin-dir".into()),
        state_dir: Some("/state-dir".into()),
        hostname: "stockade".into(),
        cwd: None,
    };
    let spec = policy.compile(&ctx).ok();
    let enforce = policy.enforcement.mode == EnforcementMode::Enforce;

    if let Some(d) = &policy.description {
        let _ = writeln!(out, "{d}\n");
    }
    let _ = writeln!(
        out,
        "kernel {} ({})",
        probe.kernel,
        if enforce {
            "enforce mode"
        } else {
            "monitor mode"
        }
    );

    let fs = &policy.filesystem;
    let list = |paths: &[PolicyPath]| {
        if paths.is_empty() {
            "(none)".to_string()
        } else {
            paths
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let _ = writeln!(
        out,
        "\nfilesystem — mount namespace (enforced): a fresh root in which only these paths exist;"
    );
    let _ = writeln!(
        out,
        "  anything else, /etc/shadow included, is absent (ENOENT)."
    );
    let _ = writeln!(out, "  read-only, not executable: {}", list(&fs.read));
    let _ = writeln!(out, "  read-only, executable:     {}", list(&fs.exec));
    let writable = if fs.tmp_exec {
        "  read-write, never executable but for $TMP (tmp_exec)"
    } else {
        "  read-write, never executable"
    };
    let _ = writeln!(out, "{writable}: {}", list(&fs.write));
    if !fs.absent.is_empty() {
        let _ = writeln!(
            out,
            "  hidden too, but looking for them is not a violation: {}",
            list(&fs.absent)
        );
    }
    if let Some(tmp) = spec.as_ref().and_then(|s| s.tmp.as_ref()) {
        let _ = writeln!(out, "  /tmp: private tmpfs of {} MiB", tmp.size_bytes >> 20);
        if tmp.exec {
            let _ = writeln!(
                out,
                "  /tmp is also executable (tmp_exec): the plugin may run what it writes there"
            );
        }
    }
    let _ = writeln!(
        out,
        "  plus a private /proc (this sandbox's processes only, /proc/sys read-only) and a /dev"
    );
    let _ = writeln!(
        out,
        "  with null, zero, full, random, urandom and tty; no host IPC endpoint is reachable."
    );

    let abi = probe.landlock_abi;
    if abi >= 1 {
        let _ = writeln!(out, "\nlandlock — ABI {abi} on this kernel (enforced): the same paths with the same rights, a");
        let _ = writeln!(
            out,
            "  second wall that the plugin cannot undo; exec only below the exec paths{}.",
            if spec
                .as_ref()
                .and_then(|s| s.tmp.as_ref())
                .is_some_and(|t| t.exec)
            {
                " and in /tmp (tmp_exec)"
            } else {
                ""
            }
        );
        if abi >= 6 {
            let _ = writeln!(
                out,
                "  signals and abstract unix sockets are scoped to the sandbox."
            );
        } else {
            let _ = writeln!(
                out,
                "  signal and abstract-socket scoping need ABI 6: not enforced here."
            );
        }
    } else if enforce {
        let _ = writeln!(out, "\nlandlock — UNAVAILABLE on this kernel: this enforce-mode policy will refuse to start.");
    } else {
        let _ = writeln!(
            out,
            "\nlandlock — UNAVAILABLE on this kernel: monitor mode will run without it (degraded)."
        );
    }

    let net = &policy.network;
    match net.mode {
        NetworkMode::None => {
            let _ = writeln!(
                out,
                "\nnetwork — none (enforced): an empty network namespace; only a down `lo` exists."
            );
        }
        NetworkMode::Allow => {
            let _ = writeln!(out, "\nnetwork — allow: the host's network namespace.");
            for (name, list) in [("connect", &net.connect), ("bind", &net.bind)] {
                if list.is_empty() {
                    let _ = writeln!(out, "  {name} rules: (none)");
                    continue;
                }
                let _ = writeln!(out, "  {name} rules:");
                for r in list.iter() {
                    let _ = write!(
                        out,
                        "    {} {} port {}",
                        proto(r.protocol),
                        r.address,
                        r.ports
                    );
                    if !r.except.is_empty() {
                        let except: Vec<String> = r.except.iter().map(|x| x.to_string()).collect();
                        let _ = write!(out, ", except {}", except.join(", "));
                    }
                    let _ = writeln!(out);
                }
            }
            explain_exclusions(&mut out, net);
            if abi >= 4 {
                let _ = writeln!(out, "  ENFORCED by Landlock: TCP connect and bind only to the listed ports (any address).");
            } else {
                let _ = writeln!(
                    out,
                    "  Landlock ABI {abi} cannot restrict TCP ports: {}.",
                    if enforce {
                        "this enforce-mode policy will refuse to start"
                    } else {
                        "ports are NOT enforced"
                    }
                );
            }
            let sock_addr = probe
                .bpf
                .iter()
                .any(|(ty, r)| ty.starts_with("cgroup_sock_addr") && r.is_ok());
            if sock_addr {
                let _ = writeln!(out, "  ENFORCED by the eBPF cgroup programs (connect4/6, sendmsg4/6, bind4/6): exactly the");
                let _ = writeln!(out, "  listed addresses, ports and protocols, TCP and UDP; anything else fails with EPERM and");
                let _ = writeln!(
                    out,
                    "  is a violation. UDP may bind port 0 (an ephemeral port) on any address."
                );
            } else {
                let _ = writeln!(
                    out,
                    "  cgroup sock_addr programs do not load on this kernel: addresses and UDP are NOT enforced{}.",
                    if enforce { "; this enforce-mode policy will refuse to start" } else { "" }
                );
            }
        }
    }

    explain_ipc(&mut out, policy, spec.as_ref(), probe, enforce);

    let sc = &policy.syscalls;
    let allowed = syscalls::profile_allows(sc.profile).len();
    let _ = writeln!(
        out,
        "\nsyscalls — seccomp (enforced): the {:?} allow list ({allowed} calls) for x86_64 only;",
        sc.profile
    );
    let _ = writeln!(
        out,
        "  any other architecture (int 0x80, x32) is killed. Denied calls {}.",
        match sc.deny_action {
            stockade_policy::DenyAction::Eperm => "fail with EPERM",
            stockade_policy::DenyAction::Kill => "kill the process (SIGSYS)",
        }
    );
    if !sc.allow.is_empty() {
        let _ = writeln!(out, "  added: {}", sc.allow.join(", "));
    }
    if !sc.deny.is_empty() {
        let _ = writeln!(out, "  removed: {}", sc.deny.join(", "));
    }
    let _ = writeln!(
        out,
        "  always filtered: clone with namespace flags; terminal ioctls that inject input or leave\n  \
         the caller's terminal changed (TIOCSTI, TIOCLINUX, TIOCSETD, TIOCEXCL, TCXONC, TIOCSWINSZ,\n  \
         TIOCSCTTY, breaks, modem lines, serial settings; termios changes are allowed and restored);\n  \
         unsafe personality flags; sockets other than unix, inet, inet6 and netlink (vsock is not\n  \
         namespaced), inet sockets other than TCP and UDP (ICMP echo, SCTP: no network\n  \
         program sees their traffic), and netlink sockets other than NETLINK_ROUTE (sock_diag would\n  \
         list the host's connections and unix sockets, kobject_uevent its device events);\n  \
         set-user-ID and set-group-ID modes in chmod, open and mknod; clone3 and\n  \
         openat2 answer ENOSYS so that libc falls back to clone and openat, which can be checked."
    );

    if let Some(s) = &spec {
        let r = &s.resources;
        let _ = writeln!(
            out,
            "\nresources — cgroup {} (enforced):",
            probe.cgroups.as_deref().unwrap_or("unavailable")
        );
        let _ = writeln!(
            out,
            "  memory {} MiB (OOM kill inside the sandbox), {} processes/threads,",
            r.memory_bytes >> 20,
            r.pids
        );
        match r.cpu_quota_us {
            Some(q) => {
                let _ = writeln!(out, "  cpu {:.2} of one core,", q as f64 / 100_000.0);
            }
            None => {
                let _ = writeln!(out, "  cpu unlimited,");
            }
        }
        for l in &s.rlimits {
            let what = match l.resource {
                RlimitResource::Nofile => format!("open files per process {}", l.limit),
                RlimitResource::Fsize => format!("largest file written {} MiB", l.limit >> 20),
                RlimitResource::Core => "no core dumps".to_string(),
                RlimitResource::Nproc => format!("processes per uid {}", l.limit),
                RlimitResource::Sigpending => format!("queued signals {}", l.limit),
                RlimitResource::Msgqueue => format!("message-queue bytes {}", l.limit),
            };
            let _ = writeln!(out, "  {what} (rlimit),");
        }
        match r.timeout_ms {
            Some(ms) => {
                let _ = writeln!(
                    out,
                    "  wall-clock timeout {:.1} s, then every process is killed.",
                    ms as f64 / 1000.0
                );
            }
            None => {
                let _ = writeln!(out, "  no wall-clock timeout.");
            }
        }
    }

    let _ = writeln!(
        out,
        "\nprivileges (enforced): a user namespace; the plugin is uid 1000 inside, an unprivileged"
    );
    let _ = writeln!(
        out,
        "  host uid outside; every capability set empty; no_new_privs; a new session (no TIOCSTI)."
    );

    let e = &policy.enforcement;
    let _ = writeln!(
        out,
        "\nenforcement — {:?} mode, threshold {} violation(s) per {:.0} s, then {}.",
        e.mode,
        e.threshold,
        e.window.as_secs_f64(),
        match e.action {
            ThresholdAction::Kill => "kill",
            ThresholdAction::Report => "report",
        }
    );
    if policy.monitor.syscall_tracepoint {
        let _ = writeln!(
            out,
            "  Every denial above (seccomp, Landlock, the mount table, the network programs) and every"
        );
        let _ = writeln!(
            out,
            "  reach for a path the mount namespace hides is one violation event (`stockade run --events`)."
        );
    } else {
        let _ = writeln!(
            out,
            "  Only the denials the monitors see without the syscall tracepoint count (below)."
        );
    }
    let _ = writeln!(
        out,
        "  {}",
        match (e.mode, e.action) {
            (EnforcementMode::Enforce, ThresholdAction::Kill) =>
                "Crossing the threshold kills every process of the sandbox (auto-unload).",
            _ => "Violations are reported; the plugin keeps running.",
        }
    );
    explain_monitor(&mut out, policy, probe);
    out
}

/// `[monitor]`: what the monitors see of this plugin, and what the rest of the host pays for it.
fn explain_monitor(out: &mut String, policy: &Policy, probe: &Probe) {
    let lsm = crate::monitor::unix::lsm_loads(probe);
    if policy.monitor.syscall_tracepoint {
        let _ = writeln!(
            out,
            "
monitor — syscall tracepoint on: while this sandbox runs, every syscall on the host, not"
        );
        let _ = writeln!(
            out,
            "  only the plugin's, passes Stockade's sys_exit program (the kernel's tracepoint path plus"
        );
        let _ = writeln!(
            out,
            "  one lookup; its cost is in docs/benchmarks.md). It counts the plugin's calls and sees the"
        );
        let _ = writeln!(
            out,
            "  refusals of every layer as they return. `syscall_tracepoint = false` in [monitor] removes"
        );
        let _ = writeln!(
            out,
            "  that cost and with it the sight of seccomp errno, Landlock, mount and hidden-path denials."
        );
    } else {
        let _ = writeln!(
            out,
            "
monitor — syscall tracepoint off: the host pays nothing per syscall for this sandbox (the"
        );
        let _ = writeln!(
            out,
            "  tracepoint is attached only while a sandbox that wants it runs). Seccomp errno, Landlock,"
        );
        let _ = writeln!(
            out,
            "  mount-table and hidden-path denials are still enforced but not seen: they count no"
        );
        let _ = writeln!(
            out,
            "  violation and cause no auto-unload, and the run reports no per-call counts. Still seen:"
        );
        let _ = writeln!(
            out,
            "  seccomp's kills (the signal tracepoint){}{}.",
            if policy.network.mode == NetworkMode::Allow {
                ", the network programs' denials"
            } else {
                ""
            },
            if lsm {
                ", and the LSM wall's (this kernel loads LSM programs)"
            } else {
                "; the LSM wall does not load on this kernel"
            }
        );
    }
}

/// What `except` means, and each named set the policy uses, in plain words.
fn explain_exclusions(out: &mut String, net: &stockade_policy::Network) {
    let mut sets: Vec<AddressSet> = Vec::new();
    let mut any = false;
    for x in net.connect.iter().chain(&net.bind).flat_map(|r| &r.except) {
        any = true;
        if let Exclusion::Set(set) = x {
            if !sets.contains(set) {
                sets.push(*set);
            }
        }
    }
    if !any {
        return;
    }
    let _ = writeln!(
        out,
        "  An excluded address is refused (EPERM, a violation) even though its rule's address covers\n  \
         it: the exclusion wins. Only another rule that covers the address without excluding it\n  \
         allows it. IPv4 addresses written as v4-mapped IPv6 (::ffff:127.0.0.1) are judged by the\n  \
         IPv4 rules and their exclusions."
    );
    for set in sets {
        let nets: Vec<String> = set.networks().iter().map(|n| n.to_string()).collect();
        let meaning = match set {
            AddressSet::Loopback => "the host itself",
            AddressSet::LinkLocal => {
                "this link only; 169.254.169.254 is a cloud's metadata service"
            }
            AddressSet::Private => {
                "private networks, carrier-grade NAT and IPv6 unique local addresses"
            }
            AddressSet::Unspecified => "\"this host\": a connect to 0.0.0.0 reaches the host",
            AddressSet::Multicast => "multicast groups",
            AddressSet::Broadcast => "the IPv4 limited broadcast",
        };
        let _ = writeln!(out, "  {}: {} ({meaning})", set.name(), nets.join(", "));
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// `[ipc]`: which unix sockets, by which mechanism on this kernel.
fn explain_ipc(
    out: &mut String,
    policy: &Policy,
    spec: Option<&stockade_policy::LaunchSpec>,
    probe: &Probe,
    enforce: bool,
) {
    let ipc = &policy.ipc;
    let _ = writeln!(out, "\nipc — unix sockets:");
    let listed = if ipc.connect.is_empty() {
        "(none)".to_string()
    } else {
        ipc.connect
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "  connect and send to: {listed}");
    let writable = spec
        .map(|s| {
            s.ipc
                .writable
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !writable.is_empty() {
        let _ = writeln!(
            out,
            "  and any socket below the writable trees ({}): the sandbox's own.",
            writable.join(", ")
        );
    }
    if crate::monitor::unix::lsm_loads(probe) {
        let _ = writeln!(
            out,
            "  ENFORCED by the BPF LSM programs unix_stream_connect and unix_may_send on the socket"
        );
        let _ = writeln!(
            out,
            "  each connect or datagram reaches, symlinks resolved: a listed socket, one on the"
        );
        let _ = writeln!(
            out,
            "  sandbox's own /tmp or below a writable grant; any other fails with EPERM and is a"
        );
        let _ = writeln!(
            out,
            "  violation. No launch check of the granted trees is needed on this kernel."
        );
    } else if crate::monitor::unix::hooks_load(probe) {
        let _ = writeln!(
            out,
            "  ENFORCED by the eBPF cgroup programs connect_unix and sendmsg_unix: any other"
        );
        let _ = writeln!(
            out,
            "  pathname (a relative one, one with `/..`) fails with EPERM and is a violation."
        );
        let _ = writeln!(
            out,
            "  They judge the name the plugin gives, not where symlinks lead: see docs/policy.md."
        );
        let _ = writeln!(
            out,
            "  {}",
            if writable.is_empty() {
                "no writable tree to make a symlink in: no launch check of the granted trees"
            } else if enforce {
                "and, as a symlink in a writable tree could lead to a socket in a read-only grant, an enforce-mode sandbox does not start while a granted read-only tree holds a socket the policy does not list (checked at launch)"
            } else {
                "and, as a symlink in a writable tree could lead to a socket in a read-only grant, the launch check reports sockets in the granted read-only trees"
            }
        );
    } else {
        let _ = writeln!(
            out,
            "  this kernel has no unix socket hooks (6.7+): {}",
            if enforce {
                "an enforce-mode sandbox does not start while a granted read-only tree holds a socket the policy does not list (checked at launch)"
            } else {
                "NOT enforced; the launch check reports sockets in the granted trees"
            }
        );
    }
    let _ = writeln!(
        out,
        "  abstract names: {}",
        match (policy.network.mode, ipc.bind_abstract) {
            (NetworkMode::None, _) =>
                "private to the sandbox's own network namespace".to_string(),
            (NetworkMode::Allow, true) =>
                "the plugin may bind them in the host's network namespace".to_string(),
            (NetworkMode::Allow, false) if crate::monitor::unix::abstract_bind_refused(probe) =>
                "a process that binds one in the host's network namespace is killed as its bind returns, before it can listen, and it is a violation".to_string(),
            (NetworkMode::Allow, false) =>
                "binding one in the host's network namespace is NOT stopped on this kernel (needs a raw tracepoint program)".to_string(),
        }
    );
    let _ = writeln!(
        out,
        "  Connecting to an abstract name bound outside the sandbox: {}",
        if probe.landlock_abi >= 6 {
            "refused by Landlock's scoping (ABI 6)"
        } else {
            "NOT refused (needs Landlock ABI 6)"
        }
    );
}
