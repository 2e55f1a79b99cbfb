//! The plugin SDKs, spoken to as the host speaks: the Rust one's tests live in its crate
//! (`sdk/rust`); the Python one's are run here, with the system's Python 3 (the one the example
//! plugins' `#!/usr/bin/python3` names).

use std::path::Path;
use std::process::Command;

#[test]
fn the_python_sdk_speaks_the_protocol() {
    let test = "the_python_sdk_speaks_the_protocol";
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        println!("skipped: {test}: no /usr/bin/python3 on this machine");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python");
    let out = Command::new(python)
        .args([
            "-W",
            "error::ResourceWarning",
            "-m",
            "unittest",
            "discover",
            "-s",
            "tests",
        ])
        .current_dir(&dir)
        // The checkout may be read-only (the VM runner's is).
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Ran 2 tests"), "{stderr}");
    assert!(stderr.trim_end().ends_with("OK"), "{stderr}");
    assert!(!stderr.contains("ResourceWarning"), "{stderr}");
}
