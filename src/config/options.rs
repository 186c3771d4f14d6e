//! The `KEY=VALUE` options of one line, each parsed and valid.
//!
//! Owns: [`LineOptions`] and the one exhaustive `match` on [`Key`] that
//! gives each key its value parser; refusing a key the line's [`Shape`]
//! does not take (proxy-only keys without a proxy, `allow` without a
//! client-named destination); reading the files options name (`auth-file`,
//! `proxy-ca`) through the reader it is given. Never does: merge defaults
//! or know the other fields of the line (that is `grammar`).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::allow::Allow;
use super::key::Key;
use super::lex::Field;
use super::values::{
    check_credentials, parse_auth, parse_buffer, parse_connect_timeout, parse_header,
    parse_idle_timeout, parse_keepalive, parse_max_conns, parse_proxy_backoff, parse_proxy_verify,
};
use super::{AuthScheme, Credentials};

/// The options written on one line, each parsed and valid.
#[derive(Debug, Default)]
pub(super) struct LineOptions {
    pub(super) auth: Option<Credentials>,
    pub(super) auth_file: Option<(PathBuf, Credentials)>,
    pub(super) auth_scheme: Option<AuthScheme>,
    pub(super) headers: Vec<String>,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) idle_timeout: Option<Option<Duration>>,
    pub(super) keepalive: Option<Option<Duration>>,
    pub(super) max_conns: Option<Option<usize>>,
    pub(super) buffer: Option<usize>,
    pub(super) proxy_backoff: Option<Duration>,
    pub(super) proxy_ca: Option<PathBuf>,
    pub(super) proxy_verify: Option<bool>,
    /// Every `allow=` value's patterns, in order.
    pub(super) allow: Vec<Allow>,
    /// Some `allow=` value held a plain `*`.
    pub(super) allow_all: bool,
    /// Keys written on the line, valid value or not, each once.
    pub(super) seen: Vec<Key>,
}

impl LineOptions {
    pub(super) fn has(&self, key: Key) -> bool {
        self.seen.contains(&key)
    }

    /// The line's `allow` list (empty = every destination).
    pub(super) fn allow(&self) -> Vec<Allow> {
        if self.allow_all {
            Vec::new()
        } else {
            let mut out: Vec<Allow> = Vec::new();
            for a in &self.allow {
                if !out.contains(a) {
                    out.push(a.clone());
                }
            }
            out
        }
    }
}

/// What kind of entry a line is, as far as its options care; `None` where
/// the line is too broken to tell (no option is refused then).
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub(super) proxied: Option<bool>,
    pub(super) client_named: Option<bool>,
}

impl Shape {
    /// A `defaults` line: every key is welcome.
    pub(super) const DEFAULTS: Shape = Shape {
        proxied: None,
        client_named: None,
    };
}

/// Parses options, reading the files they name through `read_file`
/// (relative paths start from `base_dir`).
pub(super) struct OptionParser<'a> {
    pub(super) base_dir: &'a Path,
    pub(super) read_file: &'a mut dyn FnMut(&Path) -> io::Result<String>,
}

impl OptionParser<'_> {
    /// Parses the `KEY=VALUE` fields of a line. Proxy-only keys are refused
    /// when `shape.proxied` is `Some(false)`, `allow` when
    /// `shape.client_named` is `Some(false)`.
    pub(super) fn parse(
        &mut self,
        fields: &[&Field],
        shape: Shape,
        errors: &mut Vec<String>,
    ) -> LineOptions {
        let mut line = LineOptions::default();
        for field in fields {
            let Some((key_text, value)) = field.option() else {
                continue;
            };
            let key: Key = match key_text.parse() {
                Ok(key) => key,
                Err(message) => {
                    errors.push(message);
                    continue;
                }
            };
            let first_time = !line.has(key);
            if !first_time && !key.repeatable() {
                errors.push(format!("option {:?} given twice", key.as_str()));
                continue;
            }
            if first_time {
                line.seen.push(key);
            }
            let refused = if shape.proxied == Some(false) && key.needs_proxy() {
                Some("needs a proxy")
            } else if shape.client_named == Some(false) && key == Key::Allow {
                Some("needs a socks or http entry (where the client names the destination)")
            } else {
                None
            };
            if let Some(why) = refused {
                // Once per key, however many `header=` the line has.
                if first_time {
                    errors.push(format!("option {:?} {why}", key.as_str()));
                }
                continue;
            }
            // Exhaustive on purpose: a key added to `Key` must be handled here.
            let result = match key {
                Key::Auth => parse_auth(value).map(|c| line.auth = Some(c)),
                Key::AuthFile => self.auth_file(value).map(|f| line.auth_file = Some(f)),
                Key::AuthScheme => value
                    .parse()
                    .map(|s| line.auth_scheme = Some(s))
                    .map_err(|reason| format!("invalid auth-scheme {value:?}: {reason}")),
                Key::Header => parse_header(value).map(|h| line.headers.push(h)),
                Key::ConnectTimeout => {
                    parse_connect_timeout(value).map(|d| line.connect_timeout = Some(d))
                }
                Key::IdleTimeout => parse_idle_timeout(value).map(|d| line.idle_timeout = Some(d)),
                Key::Keepalive => parse_keepalive(value).map(|d| line.keepalive = Some(d)),
                Key::MaxConns => parse_max_conns(value).map(|n| line.max_conns = Some(n)),
                Key::Buffer => parse_buffer(value).map(|n| line.buffer = Some(n)),
                Key::ProxyBackoff => {
                    parse_proxy_backoff(value).map(|d| line.proxy_backoff = Some(d))
                }
                Key::ProxyCa => self.proxy_ca(value).map(|p| line.proxy_ca = Some(p)),
                Key::ProxyVerify => parse_proxy_verify(value).map(|v| line.proxy_verify = Some(v)),
                Key::Allow => Allow::parse_list(value).map(|list| {
                    line.allow_all |= list.is_empty();
                    line.allow.extend(list);
                }),
            };
            if let Err(message) = result {
                errors.push(message);
            }
        }
        line
    }

    /// Resolves and reads an `auth-file`.
    fn auth_file(&mut self, value: &str) -> Result<(PathBuf, Credentials), String> {
        if value.is_empty() {
            return Err("invalid auth-file \"\": expected a path".to_string());
        }
        let path = self.base_dir.join(value);
        let shown = path.display().to_string();
        let text =
            (self.read_file)(&path).map_err(|e| format!("cannot read auth-file {shown:?}: {e}"))?;
        let first = text.split('\n').next().unwrap_or("");
        let first = first.strip_prefix('\u{feff}').unwrap_or(first);
        let first = first.trim_end_matches(['\r', '\n']);
        let (user, password) = first.split_once(':').ok_or_else(|| {
            format!("invalid auth-file {shown:?}: first line must be USER:PASSWORD")
        })?;
        check_credentials(user, password)
            .map_err(|reason| format!("invalid auth-file {shown:?}: first line: {reason}"))?;
        Ok((
            path,
            Credentials {
                user: user.to_string(),
                password: password.to_string(),
            },
        ))
    }

    /// Resolves a `proxy-ca` and checks that it can be read and holds a
    /// PEM certificate; the engine loads the certificates.
    fn proxy_ca(&mut self, value: &str) -> Result<PathBuf, String> {
        if value.is_empty() {
            return Err("invalid proxy-ca \"\": expected a path".to_string());
        }
        let path = self.base_dir.join(value);
        let shown = path.display().to_string();
        let text =
            (self.read_file)(&path).map_err(|e| format!("cannot read proxy-ca {shown:?}: {e}"))?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "invalid proxy-ca {shown:?}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
            ));
        }
        Ok(path)
    }
}
