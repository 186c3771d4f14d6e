//! Helpers shared by the unit tests of every `config` file: a fake
//! `auth-file` and `proxy-ca` reader, a fake environment, and short ways to
//! parse a text and look at the result.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;

use super::{parse_str_env, Config, Credentials, Entry, Error, HostPort, Proxy};

pub(super) const BASE: &str = "/etc/ht";

/// Fake `auth-file` reader: a few fixed files, everything else missing.
pub(super) fn reader(path: &Path) -> io::Result<String> {
    let text = match path.to_str() {
        Some("/etc/ht/secret") => "alice:s3cret\n",
        Some("/etc/ht/crlf") => "bob:pw\r\nsecond line\r\n",
        Some("/etc/ht/bom") => "\u{feff}dave:pw",
        Some("/etc/ht/empty") => "",
        Some("/etc/ht/nocolon") => "alice\n",
        Some("/etc/ht/ctrl") => "alice:p\u{1}w\n",
        Some("/etc/ht/nouser") => ":pw\n",
        Some("/etc/ht/with space") => "erin:pw\n",
        Some("/abs/other") => "carol:c\n",
        Some("/etc/ht/ca.pem") | Some("/etc/ht/with space.pem") => {
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        }
        Some("/etc/ht/key.pem") => "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
        _ => return Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
    };
    Ok(text.to_string())
}

/// Parses `text` with no proxy variable set.
pub(super) fn parse(text: &str) -> Result<Config, Vec<Error>> {
    parse_env(text, &[])
}

/// Parses `text` in an environment of exactly `vars`.
pub(super) fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, Vec<Error>> {
    let map: HashMap<&str, &str> = vars.iter().copied().collect();
    let env = |name: &str| map.get(name).map(|v| v.to_string());
    parse_str_env(text, "x.conf", Path::new(BASE), &mut reader, &env)
}

/// The single entry of `text` in an environment of exactly `vars`.
pub(super) fn one_env(text: &str, vars: &[(&str, &str)]) -> Entry {
    match parse_env(text, vars) {
        Ok(config) => {
            assert_eq!(config.entries.len(), 1, "{config:?}");
            config.entries[0].clone()
        }
        Err(errors) => panic!("unexpected errors for {text:?}: {errors:?}"),
    }
}

/// The errors of `text` in an environment of exactly `vars`, as printed.
pub(super) fn errs_env(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match parse_env(text, vars) {
        Ok(config) => panic!("{text:?} parsed: {config:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

pub(super) fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(config) => config,
        Err(errors) => panic!("unexpected errors for {text:?}: {errors:?}"),
    }
}

pub(super) fn one(text: &str) -> Entry {
    let config = ok(text);
    assert_eq!(config.entries.len(), 1, "{config:?}");
    config.entries[0].clone()
}

pub(super) fn errs(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(config) => panic!("{text:?} parsed: {config:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// The single error of `text`, as printed.
pub(super) fn err1(text: &str) -> String {
    let errors = errs(text);
    assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
    errors[0].clone()
}

pub(super) fn hp(host: &str, port: u16) -> HostPort {
    HostPort {
        host: host.to_string(),
        port,
    }
}

pub(super) fn creds(user: &str, password: &str) -> Credentials {
    Credentials {
        user: user.to_string(),
        password: password.to_string(),
    }
}

pub(super) fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// The first hop of the entry's first route.
pub(super) fn proxy_of(entry: &Entry) -> Proxy {
    first_proxy(entry).expect("entry has a proxy")
}

/// The first hop of the entry's first route, `None` when that route is direct.
pub(super) fn first_proxy(entry: &Entry) -> Option<Proxy> {
    entry.routes[0].hops.first().cloned()
}

/// `entry` as it reads back from its own Display: passwords that came from
/// a URL or `auth=` (not from an `auth-file` or the environment) are `***`.
pub(super) fn masked(entry: &Entry) -> Entry {
    let mut out = entry.clone();
    let env_credentials = entry
        .env
        .as_ref()
        .and_then(|e| e.proxy.as_ref())
        .and_then(|p| p.credentials.clone());
    for route in &mut out.routes {
        for hop in &mut route.hops {
            if hop.auth_file.is_some() {
                continue;
            }
            if let Some(c) = hop.credentials.as_mut() {
                if env_credentials.as_ref() != Some(c) {
                    c.password = "***".to_string();
                }
            }
        }
    }
    out
}
