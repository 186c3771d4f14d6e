//! httptunneling: forward local TCP ports to remote hosts, directly or through
//! an HTTP proxy asked for a tunnel with `CONNECT`.
//!
//! The engine is a library so that `tests/` and `benches/` can drive it in
//! process; `main.rs` only parses the command line and maps errors to exit codes.

pub mod config;
pub mod connect;
pub mod ring;
