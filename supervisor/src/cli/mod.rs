//! Parts of the `stockade` binary that are not the library's: the daemon's client commands.

pub mod client;
