//! Parts of the `stockade` binary that are not the library's: the daemon's client commands, and keys,
//! signing and verification, and the audit log and registry read from the daemon's database.

pub mod audit;
pub mod client;
pub mod report;
pub mod trust;
