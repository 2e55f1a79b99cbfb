//! `[ipc]`: what the parser accepts and refuses (message, hint, line and column), and what
//! `compile` hands the supervisor.

use std::path::PathBuf;

use stockade_policy::{CompileError, LaunchContext, PolicyPath};

mod common;
use common::{diagnostics, error, policy};

#[test]
fn the_defaults_grant_no_socket_and_no_abstract_bind() {
    let p = policy("");
    assert!(p.ipc.connect.is_empty());
    assert!(!p.ipc.bind_abstract);
}

#[test]
fn connect_and_bind_abstract() {
    let p = policy(
        "[filesystem]\nread = [\"/run/foo.sock\", \"$STATE_DIR\"]\nwrite = [\"$TMP\"]\n\
         [ipc]\nconnect = [\"/run/foo.sock\", \"$STATE_DIR/peer.sock\", \"$TMP/own.sock\"]\n\
         bind_abstract = true\n",
    );
    assert_eq!(p.ipc.connect.len(), 3);
    assert_eq!(
        p.ipc.connect[0],
        PolicyPath::Absolute("/run/foo.sock".into())
    );
    assert!(p.ipc.bind_abstract);
    // A directory grant makes the sockets below it visible.
    policy("[filesystem]\nread = [\"/run\"]\n[ipc]\nconnect = [\"/run/a/b.sock\"]\n");
    // Inline and dotted forms.
    policy("filesystem.read = [\"/run\"]\nipc = { connect = [\"/run/b.sock\"] }\n");
    policy("ipc.bind_abstract = false\n");
}

#[test]
fn a_socket_no_grant_makes_visible() {
    error(
        "[filesystem]\nread = [\"/usr\"]\n[ipc]\nconnect = [\"/run/foo.sock\"]\n",
        4,
        12,
        "`/run/foo.sock` in [ipc] `connect` is not visible in the sandbox",
        Some("grant the socket or its directory in [filesystem], e.g. read = [\"/run/foo.sock\"]"),
    );
    // `absent` grants nothing.
    error(
        "[filesystem]\nabsent = [\"/run\"]\n[ipc]\nconnect = [\"/run/foo.sock\"]\n",
        4,
        12,
        "`/run/foo.sock` in [ipc] `connect` is not visible in the sandbox",
        Some("grant the socket or its directory in [filesystem], e.g. read = [\"/run/foo.sock\"]"),
    );
}

#[test]
fn socket_paths_fit_sun_path() {
    let long = format!("/run/{}", "a".repeat(103));
    error(
        &format!("[filesystem]\nread = [\"/run\"]\n[ipc]\nconnect = [\"{long}\"]\n"),
        4,
        12,
        &format!("socket path `{long}` is 108 bytes long: at most 107"),
        Some("a unix socket address holds 108 bytes with the final NUL"),
    );
    let fits = format!("/run/{}", "a".repeat(102));
    policy(&format!(
        "[filesystem]\nread = [\"/run\"]\n[ipc]\nconnect = [\"{fits}\"]\n"
    ));
}

#[test]
fn wrong_entries() {
    error(
        "[ipc]\nconnect = [\"run/foo.sock\"]\n",
        2,
        12,
        "path `run/foo.sock` is relative: paths must be absolute or start with $PLUGIN_DIR, \
         $STATE_DIR or $TMP",
        Some(
            "write `/run/foo.sock` for a host path, or `$PLUGIN_DIR/run/foo.sock` for one in the \
              plugin's directory",
        ),
    );
    error(
        "[filesystem]\nread = [\"$STATE_DIR\"]\n[ipc]\nconnect = [\"$STATE_DIR\"]\n",
        4,
        12,
        "`$STATE_DIR` is a directory, not a socket",
        Some("name the socket, e.g. \"$STATE_DIR/daemon.sock\""),
    );
    error(
        "[filesystem]\nread = [\"/run\"]\n[ipc]\nconnect = [\"/run/a\", \"/run/a\"]\n",
        4,
        22,
        "`/run/a` is listed twice in `connect`",
        Some("first listed at line 4, column 12"),
    );
    error(
        "[ipc]\nbind_abstract = \"yes\"\n",
        2,
        17,
        "`bind_abstract` must be a boolean (true or false), found a string",
        None,
    );
    error(
        "[ipc]\nbind_abstrct = true\n",
        2,
        1,
        "unknown key `bind_abstrct` in [ipc]",
        Some("did you mean `bind_abstract`?"),
    );
    error(
        "[network]\nbind_abstract = true\n",
        2,
        1,
        "unknown key `bind_abstract` in [network]",
        Some("`bind_abstract` belongs in [ipc]"),
    );
}

#[test]
fn the_list_is_capped() {
    let paths: Vec<String> = (0..65).map(|i| format!("\"/run/{i}.sock\"")).collect();
    let all = diagnostics(&format!(
        "[filesystem]\nread = [\"/run\"]\n[ipc]\nconnect = [{}]\n",
        paths.join(", ")
    ));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].message, "65 paths in `connect`: at most 64 per list");
}

fn context() -> LaunchContext {
    LaunchContext {
        argv: vec!["/bin/true".into()],
        state_dir: Some("/var/lib/stockade/p".into()),
        ..LaunchContext::default()
    }
}

#[test]
fn compile_resolves_the_paths_and_the_writable_trees() {
    let p = policy(
        "[filesystem]\nread = [\"/run/foo.sock\"]\nwrite = [\"$TMP\", \"$STATE_DIR\"]\n\
         [ipc]\nconnect = [\"/run/foo.sock\", \"$STATE_DIR/peer.sock\", \"$TMP/x.sock\"]\n",
    );
    let spec = p.compile(&context()).unwrap();
    assert_eq!(
        spec.ipc.connect,
        [
            PathBuf::from("/run/foo.sock"),
            PathBuf::from("/var/lib/stockade/p/peer.sock"),
            PathBuf::from("/tmp/x.sock"),
        ]
    );
    assert_eq!(
        spec.ipc.writable,
        [PathBuf::from("/tmp"), PathBuf::from("/var/lib/stockade/p")]
    );
    assert!(!spec.ipc.bind_abstract);
}

#[test]
fn compile_refuses_a_socket_path_the_launch_makes_too_long() {
    let p = policy(
        "[filesystem]\nread = [\"$STATE_DIR\"]\n[ipc]\nconnect = [\"$STATE_DIR/peer.sock\"]\n",
    );
    let ctx = LaunchContext {
        state_dir: Some(PathBuf::from("/").join("d".repeat(100))),
        ..context()
    };
    match p.compile(&ctx) {
        Err(e @ CompileError::SocketPathTooLong { .. }) => {
            assert!(e.to_string().contains("111 bytes"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}
