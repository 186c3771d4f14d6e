//! httptunneling: forward local TCP ports to remote hosts, directly or through
//! an HTTP proxy asked for a tunnel with `CONNECT`.
//!
//! The engine is a library so that `tests/` and `benches/` can drive it in
//! process; `main.rs` only parses the command line and maps errors to exit
//! codes. Dependencies point down: `reactor → tunnel → {ring, connect, net,
//! config}`; `reload` and `resolve` reach the reactor only through its
//! channel and waker.

pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod connect;
pub mod logsink;
pub mod metrics;
pub mod net;
pub mod reactor;
pub mod reload;
pub mod resolve;
pub mod ring;
pub mod status;
pub mod sys;
pub mod tls;
pub mod transport;
pub mod tunnel;

pub use reactor::{Engine, EngineOptions, Handle, StartError};
pub use resolve::{Resolve, SystemResolver};
