//! The proxy from the environment: what `env` as PROXY becomes.
//!
//! Owns: which variables are read and in what order, parsing the proxy
//! variable (a hop URL, or a bare `HOST:PORT`), and `NO_PROXY` as curl reads
//! it ([`NoProxy`]). Never does: read the process environment itself (the
//! caller gives a lookup), or resolve a name.

use std::fmt;
use std::net::IpAddr;

use super::allow::{destination_ip, in_domain, in_net, normalise_name, parse_net};
use super::url::{parse_proxy_url, UrlHop};
use super::{AuthScheme, Proxy};

/// The proxy variables `env` reads, in order; the first that is set and not
/// blank wins.
pub const PROXY_VARIABLES: [&str; 6] = [
    "https_proxy",
    "HTTPS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "all_proxy",
    "ALL_PROXY",
];

/// The `NO_PROXY` variables, in order; the first that is set wins (even
/// when empty), as curl reads them.
const NO_PROXY_VARIABLES: [&str; 2] = ["no_proxy", "NO_PROXY"];

/// What `env` resolved to when the file was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvProxy {
    /// The variable the proxy came from, e.g. `"HTTPS_PROXY"`; empty when
    /// none was set (the entry is then direct).
    pub variable: String,
    /// What that variable said: address, `https://`, and its own
    /// credentials (no options; the entry's first hops carry those). `None`
    /// when none was set.
    pub proxy: Option<Proxy>,
    /// `no_proxy`/`NO_PROXY`; empty when neither is set. A fixed
    /// destination it matches made the entry direct at load; a client-named
    /// entry checks each destination against it.
    pub no_proxy: NoProxy,
}

/// A `NO_PROXY` list, as curl reads it: comma- (or blank-) separated
/// entries; `*` is every host; a name matches itself and every name under
/// it (a leading `.` or `*.` changes nothing); an IP address or CIDR matches
/// destinations written as IP addresses; names compare case-insensitively
/// and without a final dot; a `:PORT` after an entry is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    /// The variable it came from (`no_proxy` or `NO_PROXY`), empty for none.
    variable: String,
    /// The value as it was, for display.
    text: String,
    all: bool,
    names: Vec<String>,
    nets: Vec<(IpAddr, u8)>,
}

impl NoProxy {
    /// Parses a `NO_PROXY` value; `variable` names it in messages.
    ///
    /// # Errors
    ///
    /// An IP or CIDR entry whose prefix length is out of range; the message
    /// starts with the variable's name.
    pub fn parse(variable: &str, text: &str) -> Result<NoProxy, String> {
        let mut out = NoProxy {
            variable: variable.to_string(),
            text: text.trim().to_string(),
            ..NoProxy::default()
        };
        for entry in text.split(|c: char| c == ',' || c.is_ascii_whitespace()) {
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                out.all = true;
                continue;
            }
            let invalid = |reason: String| format!("{variable}: invalid entry {entry:?}: {reason}");
            if let Some(net) = net_entry(entry).map_err(invalid)? {
                out.nets.push(net);
                continue;
            }
            let name = match entry.rsplit_once(':') {
                Some((name, port))
                    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    name
                }
                _ => entry,
            };
            let name = name
                .strip_prefix("*.")
                .or_else(|| name.strip_prefix('.'))
                .unwrap_or(name);
            let name = normalise_name(name);
            if !name.is_empty() && !out.names.contains(&name) {
                out.names.push(name);
            }
        }
        Ok(out)
    }

    /// True when a tunnel to `host` (a DNS name or an IP literal, IPv6 with
    /// or without brackets) should not use the proxy.
    pub fn matches(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        match destination_ip(host) {
            Some(ip) => self
                .nets
                .iter()
                .any(|&(net, prefix)| in_net(ip, net, prefix)),
            None => {
                let name = normalise_name(host);
                self.names.iter().any(|n| in_domain(&name, n))
            }
        }
    }

    /// True when no variable was set or it lists nothing.
    pub fn is_empty(&self) -> bool {
        !self.all && self.names.is_empty() && self.nets.is_empty()
    }

    /// `no_proxy` or `NO_PROXY`, whichever was read; empty when neither was set.
    pub fn variable(&self) -> &str {
        &self.variable
    }

    /// The value as it was set (trimmed).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// `Some` network for an entry that is an IP address or CIDR (bracketed
/// IPv6 too, a `:PORT` after it dropped), `None` for a name.
fn net_entry(entry: &str) -> Result<Option<(IpAddr, u8)>, String> {
    let text = if let Some(rest) = entry.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Ok(None);
        };
        match after.strip_prefix('/') {
            Some(prefix) => format!("{inner}/{prefix}"),
            None => inner.to_string(),
        }
    } else {
        match entry.rsplit_once(':') {
            // `10.0.0.1:8080`: one colon, so not IPv6.
            Some((addr, port))
                if !addr.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                addr.to_string()
            }
            _ => entry.to_string(),
        }
    };
    let addr = text.split('/').next().unwrap_or(&text);
    if addr.parse::<IpAddr>().is_err() {
        return Ok(None);
    }
    parse_net(&text).map(Some)
}

impl fmt::Display for NoProxy {
    /// `VARIABLE=VALUE` as it was set, or nothing when neither was.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.variable.is_empty() {
            return Ok(());
        }
        write!(f, "{}={}", self.variable, self.text)
    }
}

/// Reads the proxy and `NO_PROXY` variables through `env`.
///
/// # Errors
///
/// An invalid proxy variable or `NO_PROXY`; the message starts with the
/// variable's name and never holds a password.
pub(super) fn resolve(env: &dyn Fn(&str) -> Option<String>) -> Result<EnvProxy, String> {
    let mut out = EnvProxy {
        variable: String::new(),
        proxy: None,
        no_proxy: NoProxy::default(),
    };
    for name in PROXY_VARIABLES {
        let Some(value) = env(name) else { continue };
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let url = if value.contains("://") {
            value.to_string()
        } else {
            format!("http://{value}")
        };
        let UrlHop {
            addr,
            tls,
            credentials,
        } = parse_proxy_url(&url, "URL").map_err(|m| format!("{name}: {m}"))?;
        out.variable = name.to_string();
        out.proxy = Some(Proxy {
            addr,
            tls,
            credentials,
            auth_file: None,
            auth_scheme: AuthScheme::Auto,
            headers: Vec::new(),
        });
        break;
    }
    if let Some((name, value)) = NO_PROXY_VARIABLES
        .iter()
        .find_map(|name| env(name).map(|v| (name, v)))
    {
        out.no_proxy = NoProxy::parse(name, &value)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::allow::format_net;
    use crate::config::test_support::*;
    use std::collections::HashMap;

    fn nets_shown(no_proxy: &NoProxy) -> Vec<String> {
        no_proxy
            .nets
            .iter()
            .map(|&(ip, prefix)| format_net(ip, prefix))
            .collect()
    }

    fn np(text: &str) -> NoProxy {
        NoProxy::parse("NO_PROXY", text).expect("valid NO_PROXY")
    }

    fn fake(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    #[test]
    fn no_proxy_matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            // SPEC: a name matches itself and its subdomains.
            ("example.com", "example.com", true),
            ("example.com", "www.example.com", true),
            ("example.com", "a.b.example.com", true),
            ("example.com", "nonexample.com", false),
            ("example.com", "example.com.evil", false),
            // A leading dot changes nothing (and `*.` neither).
            (".example.com", "example.com", true),
            (".example.com", "www.example.com", true),
            ("*.example.com", "example.com", true),
            // `*` for every host, alone or in a list.
            ("*", "anything", true),
            ("*", "10.0.0.1", true),
            ("a.example,*", "b.example", true),
            // Case and final dots.
            ("Example.COM", "www.EXAMPLE.com", true),
            ("example.com.", "example.com", true),
            ("example.com", "www.example.com.", true),
            // IPs and CIDRs match destinations written as IPs only.
            ("10.0.0.0/8", "10.2.3.4", true),
            ("10.0.0.0/8", "11.2.3.4", false),
            ("10.0.0.1", "10.0.0.1", true),
            ("10.0.0.1", "10.0.0.2", false),
            ("127.0.0.1", "localhost", false),
            ("localhost", "127.0.0.1", false),
            ("::1", "::1", true),
            ("::1", "[::1]", true),
            ("[::1]", "::1", true),
            ("fd00::/8", "fd00:1::2", true),
            ("[fd00::]/8", "fd00:1::2", true),
            ("fd00::/8", "fe80::1", false),
            ("fd00::/8", "10.0.0.1", false),
            ("192.168.0.0/16", "::ffff:192.168.1.1", true),
            // Ports in entries are ignored.
            ("example.com:8080", "example.com", true),
            ("10.0.0.1:3128", "10.0.0.1", true),
            ("[::1]:3128", "::1", true),
            // Separators: commas, blanks, both, repeated.
            (" a.example , b.example ", "b.example", true),
            ("a.example b.example", "b.example", true),
            ("a.example,,,b.example", "b.example", true),
            // Nothing.
            ("", "example.com", false),
            (",", "example.com", false),
            (".", "example.com", false),
            // A name with a slash is a name (never matches), as curl.
            ("name/8", "name", false),
        ];
        for &(list, host, expected) in cases {
            assert_eq!(np(list).matches(host), expected, "{list:?} vs {host}");
        }
        assert!(np("").is_empty());
        assert!(!np("*").is_empty());
        assert_eq!(
            nets_shown(&np("10.1.2.3/8,fd00::1")),
            ["10.0.0.0/8", "fd00::1"]
        );
    }

    #[test]
    fn no_proxy_errors_name_the_variable() {
        assert_eq!(
            NoProxy::parse("no_proxy", "a,10.0.0.0/33"),
            Err(
                "no_proxy: invalid entry \"10.0.0.0/33\": prefix length \"33\" out of range 0-32"
                    .to_string()
            )
        );
        assert_eq!(
            NoProxy::parse("NO_PROXY", "fd00::/200"),
            Err(
                "NO_PROXY: invalid entry \"fd00::/200\": prefix length \"200\" out of range 0-128"
                    .to_string()
            )
        );
    }

    #[test]
    fn proxy_variables_in_order() {
        let all = [
            ("https_proxy", "http://p1:1"),
            ("HTTPS_PROXY", "http://p2:2"),
            ("http_proxy", "http://p3:3"),
            ("HTTP_PROXY", "http://p4:4"),
            ("all_proxy", "http://p5:5"),
            ("ALL_PROXY", "http://p6:6"),
        ];
        for skip in 0..all.len() {
            let vars = &all[skip..];
            let env = resolve(&fake(vars)).expect("valid");
            assert_eq!(env.variable, all[skip].0);
            assert_eq!(env.proxy.expect("set").addr.port, (skip + 1) as u16);
        }
        // Set but empty or blank: the next one.
        let env = resolve(&fake(&[
            ("https_proxy", ""),
            ("HTTPS_PROXY", "  "),
            ("http_proxy", "p:3"),
        ]))
        .expect("valid");
        assert_eq!(env.variable, "http_proxy");
        let env = resolve(&fake(&[])).expect("valid");
        assert_eq!(env.variable, "");
        assert_eq!(env.proxy, None);
        assert!(env.no_proxy.is_empty());
    }

    #[test]
    fn proxy_variable_forms() {
        let proxy = |value: &str| {
            resolve(&fake(&[("HTTPS_PROXY", value)]))
                .expect("valid")
                .proxy
                .expect("set")
        };
        let p = proxy("proxy.corp:3128");
        assert_eq!(
            (p.addr, p.tls, p.credentials),
            (hp("proxy.corp", 3128), false, None)
        );
        let p = proxy("[::1]:8080");
        assert_eq!(p.addr, hp("::1", 8080));
        let p = proxy("https://u%40x:p%2Cw@gw.corp:443/");
        assert_eq!(p.addr, hp("gw.corp", 443));
        assert!(p.tls);
        assert_eq!(p.credentials, Some(creds("u@x", "p,w")));
        let p = proxy(" HTTP://alice:pw@proxy:1 ");
        assert_eq!(p.credentials, Some(creds("alice", "pw")));
        assert_eq!(p.auth_scheme, AuthScheme::Auto);
    }

    #[test]
    fn invalid_proxy_variables_are_named() {
        for (name, value, message) in [
            ("HTTPS_PROXY", "socks5://p:1080", "HTTPS_PROXY: unsupported proxy scheme \"socks5\" in URL: only http:// and https:// are supported"),
            ("https_proxy", "proxy.corp", "https_proxy: URL needs a port: expected http://[USER:PASSWORD@]HOST:PORT"),
            ("HTTP_PROXY", "http://p:0", "HTTP_PROXY: port \"0\" out of range 1-65535 in URL"),
            ("ALL_PROXY", "http://p:1/path", "ALL_PROXY: invalid URL: expected http://[USER:PASSWORD@]HOST:PORT, without a path"),
            ("all_proxy", "http://u:sekrit@p!:1", "all_proxy: invalid host \"p!\" in URL: character '!' not allowed in a host name"),
            ("HTTPS_PROXY", "http://u:se%zzkrit@p:1", "HTTPS_PROXY: invalid user info in URL: '%' not followed by two hex digits"),
        ] {
            assert_eq!(resolve(&fake(&[(name, value)])), Err(message.to_string()), "{value}");
        }
        // An invalid variable is an error even when an earlier one would have
        // been empty; a later one is never looked at.
        assert!(resolve(&fake(&[("https_proxy", ""), ("HTTPS_PROXY", "x")])).is_err());
        assert!(resolve(&fake(&[("https_proxy", "p:1"), ("HTTPS_PROXY", "x")])).is_ok());
    }

    #[test]
    fn no_proxy_lowercase_first_even_when_empty() {
        let env = resolve(&fake(&[("no_proxy", ".a"), ("NO_PROXY", ".b")])).expect("valid");
        assert_eq!(env.no_proxy.variable(), "no_proxy");
        assert!(env.no_proxy.matches("x.a") && !env.no_proxy.matches("x.b"));
        let env = resolve(&fake(&[("no_proxy", ""), ("NO_PROXY", ".b")])).expect("valid");
        assert_eq!(env.no_proxy.variable(), "no_proxy");
        assert!(!env.no_proxy.matches("x.b"));
        let env = resolve(&fake(&[("NO_PROXY", ".b")])).expect("valid");
        assert_eq!(env.no_proxy.to_string(), "NO_PROXY=.b");
        assert_eq!(
            resolve(&fake(&[("NO_PROXY", "10.0.0.0/40")])),
            Err(
                "NO_PROXY: invalid entry \"10.0.0.0/40\": prefix length \"40\" out of range 0-32"
                    .to_string()
            )
        );
    }

    #[test]
    fn env_entries() {
        let vars = [
            ("HTTPS_PROXY", "http://u:pw@proxy.corp:3128"),
            ("NO_PROXY", ".internal,10.0.0.0/8"),
        ];
        let entry = one_env("2222 db.example 5432 env auth-scheme=digest", &vars);
        let env = entry.env.clone().expect("env");
        assert_eq!(env.variable, "HTTPS_PROXY");
        let hop = proxy_of(&entry);
        assert_eq!(hop.addr, hp("proxy.corp", 3128));
        assert_eq!(hop.credentials, Some(creds("u", "pw")));
        assert_eq!(hop.auth_scheme, AuthScheme::Digest);
        assert!(entry.is_proxied());
        // NO_PROXY matching a fixed destination: direct.
        for dest in ["db.internal 5432", "10.1.2.3 22", "DB.Internal. 1"] {
            let entry = one_env(&format!("2222 {dest} env"), &vars);
            assert!(entry.routes[0].is_direct(), "{dest}");
            assert_eq!(entry.routes.len(), 1);
            assert!(entry.env.is_some());
        }
        // A client-named entry keeps the proxy; the engine checks NO_PROXY.
        let entry = one_env("1080 socks env", &vars);
        assert_eq!(proxy_of(&entry).addr, hp("proxy.corp", 3128));
        assert!(entry.env.expect("env").no_proxy.matches("x.internal"));
        // Nothing set: direct, and proxy options are still accepted.
        let entry = one_env("2222 h 22 env auth=a:b proxy-backoff=5s", &[]);
        assert!(entry.routes[0].is_direct());
        assert_eq!(entry.env.as_ref().expect("env").variable, "");
        assert_eq!(
            entry.options.proxy_backoff,
            std::time::Duration::from_secs(5)
        );
        // The variable's credentials win over auth, without an error.
        let entry = one_env("2222 h 22 env auth=a:b", &vars);
        assert_eq!(proxy_of(&entry).credentials, Some(creds("u", "pw")));
        let entry = one_env("2222 h 22 ENV auth=a:b", &[("http_proxy", "p:1")]);
        assert_eq!(proxy_of(&entry).credentials, Some(creds("a", "b")));
        // https:// from the environment.
        let entry = one_env("2222 h 22 env", &[("ALL_PROXY", "https://gw:443")]);
        assert!(proxy_of(&entry).tls);
    }

    #[test]
    fn env_errors_name_the_variable_on_every_env_line() {
        assert_eq!(
            errs_env("2222 h 22 env\n2223 h 22\n2224 h 22 env\n", &[("HTTPS_PROXY", "socks5://p:1080")]),
            [
                "x.conf:1: HTTPS_PROXY: unsupported proxy scheme \"socks5\" in URL: only http:// and https:// are supported",
                "x.conf:3: HTTPS_PROXY: unsupported proxy scheme \"socks5\" in URL: only http:// and https:// are supported",
            ]
        );
        assert_eq!(
            errs_env("2222 h 22 env", &[("http_proxy", "proxy")]),
            ["x.conf:1: http_proxy: URL needs a port: expected http://[USER:PASSWORD@]HOST:PORT"]
        );
        assert_eq!(
            errs_env("2222 h 22 env", &[("NO_PROXY", "10.0.0.0/99")]),
            ["x.conf:1: NO_PROXY: invalid entry \"10.0.0.0/99\": prefix length \"99\" out of range 0-32"]
        );
        // Without an `env` entry the environment is not even read.
        ok("2222 h 22");
        let listen_loop = errs_env("2222 http env", &[("HTTPS_PROXY", "127.0.0.1:2222")]);
        assert_eq!(
            listen_loop,
            ["x.conf:1: proxy 127.0.0.1:2222 (from HTTPS_PROXY) is this entry's own listen address 127.0.0.1:2222: the tunnel would connect to itself"]
        );
        for error in errs_env("2222 h 22 env", &[("HTTPS_PROXY", "http://u:sekrit@p!:1")]) {
            assert!(!error.contains("sekrit"), "{error}");
        }
    }
}
