//! `stockade-policy`: Stockade's policy language.
//!
//! A policy file (TOML, `docs/policy.md`) is parsed and validated into a [`Policy`], reporting every
//! error of the file at once with line, column and a hint. [`Policy::compile`] then resolves it for
//! one launch into a [`LaunchSpec`]: concrete mounts, Landlock rules, a compiled seccomp program,
//! rlimits and cgroup limits, which the supervisor and the shim apply without further decisions.
//!
//! A plugin package's manifest (`plugin.toml`, [`manifest::Manifest`]) is read by the same
//! machinery, so that its errors read like a policy's.

pub mod compile;
pub mod diagnostics;
pub mod manifest;
pub mod model;
pub mod parse;
pub mod schema;
pub mod seccomp;
pub mod spec;
pub mod syscalls;

pub use compile::{CompileError, LaunchContext};
pub use diagnostics::{Diagnostic, Diagnostics, LoadError};
pub use model::*;
pub use parse::manifest::{load_manifest, parse_manifest, valid_id, valid_method_name};
pub use parse::{load_policy, parse_duration_arg, parse_policy};
pub use spec::*;
