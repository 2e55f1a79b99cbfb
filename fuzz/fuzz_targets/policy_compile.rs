//! Parse, then compile for a fixed launch (the context the unit tests use): neither may panic,
//! and a compiled spec must keep W^X (no writable mount inside or around an executable one; the
//! only writable tree Landlock may also let execute is the private /tmp, with no bind below it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stockade_policy::{parse_policy, Access, LaunchContext};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = parse_policy(text, "fuzz.toml") else {
        return;
    };
    let ctx = LaunchContext {
        argv: vec!["/plugin/run".into()],
        env: vec![("PATH".into(), "/usr/bin".into())],
        plugin_dir: Some("/srv/plugins/p".into()),
        state_dir: Some("/var/lib/stockade/p".into()),
        hostname: "sandbox".into(),
        cwd: None,
    };
    let Ok(spec) = policy.compile(&ctx) else {
        return;
    };
    let writable = spec.mounts.iter().filter(|m| m.access == Access::Write);
    for w in writable {
        for x in spec.mounts.iter().filter(|m| m.access == Access::Exec) {
            assert!(
                !w.target.starts_with(&x.target) && !x.target.starts_with(&w.target),
                "writable {} and executable {} overlap",
                w.target.display(),
                x.target.display()
            );
        }
    }
    for path in &spec.landlock.also_exec {
        assert_eq!(path, std::path::Path::new("/tmp"), "also executable: {path:?}");
        assert!(spec.tmp.as_ref().is_some_and(|t| t.exec));
        assert!(
            !spec.mounts.iter().any(|m| m.target.starts_with("/tmp")),
            "a bind below the executable /tmp"
        );
    }
});
