//! Stockade's supervisor library: cgroups, the launcher, sandbox supervision and kernel probes.
//! The `stockade` binary (CLI, and later the daemon) is a thin layer over it.

pub mod bpf_probe;
pub mod cgroup;
pub mod control;
pub mod daemon_config;
pub mod explain;
pub mod idmap;
pub mod launcher;
pub mod lifecycle;
pub mod monitor;
pub mod package;
pub mod plan;
pub mod probe;
pub mod rpc;
pub mod sandbox;
pub mod signals;
pub mod socket_scan;
pub mod stdio;
pub mod summary;
pub mod terminal;
