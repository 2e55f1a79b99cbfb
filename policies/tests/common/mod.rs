//! What the table tests share: parsing a policy that must be accepted or refused.
// Each test file is its own crate and uses a part of these.
#![allow(dead_code)]

use stockade_policy::{parse_policy, Diagnostic, Policy};

pub fn diagnostics(src: &str) -> Vec<Diagnostic> {
    match parse_policy(src, "policy.toml") {
        Ok(_) => panic!("policy accepted:\n{src}"),
        Err(d) => d.0,
    }
}

/// The policy has exactly this one error.
#[track_caller]
pub fn error(src: &str, line: usize, column: usize, message: &str, hint: Option<&str>) {
    let all = diagnostics(src);
    assert_eq!(
        all.len(),
        1,
        "expected one error for:\n{src}\ngot:\n{all:#?}"
    );
    let d = &all[0];
    assert_eq!(d.message, message, "message for:\n{src}");
    assert_eq!(d.hint.as_deref(), hint, "hint for:\n{src}");
    assert_eq!(
        (d.line, d.column),
        (line, column),
        "position of `{message}` in:\n{src}"
    );
    assert_eq!(d.file, "policy.toml");
}

#[track_caller]
pub fn policy(src: &str) -> Policy {
    match parse_policy(src, "policy.toml") {
        Ok(p) => p,
        Err(d) => panic!("refused:\n{src}\n{d}"),
    }
}

pub fn manifest_diagnostics(src: &str) -> Vec<Diagnostic> {
    match stockade_policy::parse_manifest(src, "plugin.toml") {
        Ok(m) => panic!("manifest accepted:\n{src}\n{m:#?}"),
        Err(d) => d.0,
    }
}

#[track_caller]
pub fn manifest(src: &str) -> stockade_policy::manifest::Manifest {
    match stockade_policy::parse_manifest(src, "plugin.toml") {
        Ok(m) => m,
        Err(d) => panic!("refused:\n{src}\n{d}"),
    }
}
