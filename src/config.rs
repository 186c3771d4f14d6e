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

// ---- TEMPORARY STUBS (replaced by the real parser) ----
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:***", self.user)
    }
}
#[derive(Debug, Clone)]
pub struct Error {
    pub file: String,
    pub line: usize,
    pub message: String,
}
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.listen, self.dest.host, self.dest.port)
    }
}
impl Entry {
    pub fn same_settings(&self, other: &Entry) -> bool {
        let mut a = self.clone();
        a.line = other.line;
        &a == other
    }
}
impl HostPort {
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}
pub fn load(path: &Path) -> Result<Config, Vec<Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Error {
            file: path.display().to_string(),
            line: 0,
            message: e.to_string(),
        }]
    })?;
    let mut entries = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 || f[0].starts_with('#') {
            continue;
        }
        let err = |m: &str| {
            vec![Error {
                file: path.display().to_string(),
                line: i + 1,
                message: m.into(),
            }]
        };
        let listen: SocketAddr = if f[0].contains(':') {
            f[0].parse().map_err(|_| err("listen"))?
        } else {
            format!("127.0.0.1:{}", f[0])
                .parse()
                .map_err(|_| err("listen"))?
        };
        let port: u16 = f[2].parse().map_err(|_| err("port"))?;
        let proxy = if f.len() >= 5 {
            Some(Proxy {
                addr: HostPort {
                    host: f[3].into(),
                    port: f[4].parse().map_err(|_| err("pport"))?,
                },
                credentials: None,
                auth_file: None,
                auth_scheme: AuthScheme::Auto,
                headers: vec![],
            })
        } else {
            None
        };
        entries.push(Entry {
            line: i + 1,
            listen,
            dest: HostPort {
                host: f[1].into(),
                port,
            },
            proxy,
            options: Options {
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                idle_timeout: None,
                keepalive: Some(DEFAULT_KEEPALIVE),
                max_conns: None,
                buffer: DEFAULT_BUFFER,
            },
        });
    }
    Ok(Config { entries })
}
