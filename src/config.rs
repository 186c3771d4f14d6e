//! The configuration file: grammar, validation, normalised form.
//!
//! Owns: turning the text of a config file (and the `auth-file`s it names)
//! into a [`Config`], or into every problem found, each as `FILE:LINE: message`.
//! Never does: sockets, logging, DNS. Reading files happens only in [`load`],
//! which callers run off the reactor thread.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default capacity of each of a tunnel's two ring buffers.
pub const DEFAULT_BUFFER: usize = 64 * 1024;
/// Default `connect-timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `keepalive` idle time.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);

/// A whole, valid configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Entries in file order.
    pub entries: Vec<Entry>,
}

/// A host (DNS name or IP literal, IPv6 without brackets) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

/// Proxy credentials. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// `auth-scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthScheme {
    Auto,
    Basic,
    Digest,
    Ntlm,
}

/// The HTTP proxy of an entry and everything that only makes sense with one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub addr: HostPort,
    /// From `auth=`, the URL's user info, or the first line of `auth-file=`.
    pub credentials: Option<Credentials>,
    /// `auth-file=` resolved against the config file's folder (kept for display and reload).
    pub auth_file: Option<PathBuf>,
    pub auth_scheme: AuthScheme,
    /// `header=` values, each `Name: value`, in order.
    pub headers: Vec<String>,
}

/// Per-entry options (after `defaults` were applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub connect_timeout: Duration,
    /// `None` = never.
    pub idle_timeout: Option<Duration>,
    /// `None` = off.
    pub keepalive: Option<Duration>,
    /// `None` = unlimited.
    pub max_conns: Option<usize>,
    pub buffer: usize,
}

/// One forwarded port: one line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number in the file (ignored by [`Entry::same_settings`]).
    pub line: usize,
    pub listen: SocketAddr,
    pub dest: HostPort,
    pub proxy: Option<Proxy>,
    pub options: Options,
}
