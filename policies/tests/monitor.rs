//! `[monitor]`: what the parser accepts and refuses (message, hint, line and column).

mod common;
use common::{diagnostics, policy};

#[test]
fn the_tracepoint_is_on_unless_turned_off() {
    assert!(policy("").monitor.syscall_tracepoint);
    assert!(policy("[monitor]\n").monitor.syscall_tracepoint);
    assert!(
        policy("[monitor]\nsyscall_tracepoint = true\n")
            .monitor
            .syscall_tracepoint
    );
    let off = policy("[monitor]\nsyscall_tracepoint = false\n");
    assert!(!off.monitor.syscall_tracepoint);
    // In its own network namespace, abstract names are the sandbox's: nothing to enforce.
    assert!(!off.ipc.bind_abstract);
    // On the host network, with abstract binds allowed.
    let host = policy(
        "[network]\nmode = \"allow\"\n[ipc]\nbind_abstract = true\n\
         [monitor]\nsyscall_tracepoint = false\n",
    );
    assert!(!host.monitor.syscall_tracepoint);
}

#[test]
fn off_on_the_host_network_needs_abstract_binds_allowed() {
    let src = "[network]\nmode = \"allow\"\n[monitor]\nsyscall_tracepoint = false\n";
    let all = diagnostics(src);
    assert_eq!(all.len(), 1, "{all:#?}");
    let d = &all[0];
    assert_eq!(
        d.message,
        "`syscall_tracepoint = false` leaves `bind_abstract = false` unenforced: on the host \
         network the syscall tracepoint is what stops a plugin binding the host's abstract \
         socket names"
    );
    assert_eq!(
        d.hint.as_deref(),
        Some(
            "keep the tracepoint, set bind_abstract = true in [ipc], or give the plugin its own \
             network (mode = \"none\" in [network])"
        )
    );
    assert_eq!((d.line, d.column), (4, 1));
}

#[test]
fn wrong_types_and_unknown_keys() {
    let all = diagnostics("[monitor]\nsyscall_tracepoint = \"off\"\n");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(
        all[0].message,
        "`syscall_tracepoint` must be a boolean (true or false), found a string"
    );
    assert_eq!((all[0].line, all[0].column), (2, 22));
    let all = diagnostics("[monitor]\nsyscalls = false\n");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].message, "unknown key `syscalls` in [monitor]");
    let all = diagnostics("monitor = true\n");
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].line, 1);
}
