//! `client::parse` for a `socks` entry, on any bytes a local client may send.
//!
//! The first two bytes of the input pick a cut point; the rest is what the
//! client sent. Asserts (client_common.rs): a result that is not `Partial`
//! never changes when bytes are appended or when more of the input is in;
//! `head_len <= len` and `<= MAX_REQUEST`; a request's host is canonical
//! (`check_host` gives it back unchanged) and its port non-zero; every
//! client-bound stream extends the ones asked for before it; `Partial` only
//! below `MAX_REQUEST` bytes.
#![no_main]

#[path = "client_common.rs"]
mod client_common;

use httptunneling::client::Protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| client_common::run(Protocol::Socks, data));
