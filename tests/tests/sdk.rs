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
    assert!(stderr.contains("Ran 6 tests"), "{stderr}");
    assert!(stderr.trim_end().ends_with("OK"), "{stderr}");
    assert!(!stderr.contains("ResourceWarning"), "{stderr}");
}

/// Copies the files of `from` into `to`, leaving out tests and caches.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if name == "tests" || name == "__pycache__" || name == "build" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(&name));
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// `pip install` of the SDK from the repository (offline: the system's pip and setuptools, no
/// build isolation, no index), then imported from where pip put it: the package, its `py.typed`,
/// its version, the class API — and, the control, not importable without that directory.
#[test]
fn the_python_sdk_installs_with_pip() {
    let test = "the_python_sdk_installs_with_pip";
    let python = Path::new("/usr/bin/python3");
    let has = |module: &str| {
        Command::new(python)
            .args(["-c", &format!("import {module}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !python.exists() || !has("pip") || !has("setuptools") {
        println!("skipped: {test}: no /usr/bin/python3 with pip and setuptools");
        return;
    }
    let scratch = std::env::temp_dir().join(format!("stockade-sdk-pip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    // A copy: pip builds in the source tree, and the checkout may be read-only (the VM's is).
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python"),
        &scratch.join("src"),
    );
    let site = scratch.join("site");
    let out = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-build-isolation",
            "--no-index",
            "--target",
        ])
        .arg(&site)
        .arg(scratch.join("src"))
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("pip");
    assert!(out.status.success(), "{out:?}");
    let probe = "import os, importlib.metadata as m, stockade_plugin as s\n\
                 d = os.path.dirname(s.__file__)\n\
                 print(d)\n\
                 print(m.version('stockade-plugin'))\n\
                 print(os.path.exists(os.path.join(d, 'py.typed')))\n\
                 print(issubclass(s.PluginOperationError, s.PluginError), callable(s.serve))";
    let out = Command::new(python)
        .args(["-c", probe])
        .env("PYTHONPATH", &site)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&scratch)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            site.join("stockade_plugin").to_str().unwrap(),
            "0.1.0",
            "True",
            "True True"
        ],
        "{stdout}"
    );
    let out = Command::new(python)
        .args(["-c", "import stockade_plugin"])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(&scratch)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "importable without the install: {out:?}"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
