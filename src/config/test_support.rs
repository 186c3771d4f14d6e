//! Helpers shared by the unit tests of every `config` file: a fake
//! `auth-file` reader, and short ways to parse a text and look at the result.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use super::{parse_str, Config, Credentials, Entry, Error, HostPort, Proxy};

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
        _ => return Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
    };
    Ok(text.to_string())
}

pub(super) fn parse(text: &str) -> Result<Config, Vec<Error>> {
    parse_str(text, "x.conf", Path::new(BASE), &mut reader)
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

pub(super) fn proxy_of(entry: &Entry) -> Proxy {
    entry.proxy.clone().expect("entry has a proxy")
}
