//! Parts of the `stockade` binary that are not the library's: the daemon's client commands, and keys,
//! signing and verification.

pub mod client;
pub mod trust;
