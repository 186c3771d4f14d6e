//! The grammar of a file: entry, `defaults` and `metrics` lines and their
//! options.
//!
//! Owns: the [`Parser`] that walks the lines of a file, tells entry lines
//! (fixed and client-named) from `defaults` and `metrics` lines, checks the
//! order and count of positional fields, applies each option through an
//! exhaustive `match` on [`Key`], keeps the defaults set so far and merges
//! them into each entry (credentials, headers, options), resolves `env`
//! once per parse, and finds duplicate and self-connecting LISTEN
//! addresses. Never does: judge a single value (that is `values`, `url`,
//! `routes`, `allow` and `env`) or read a file except through the
//! `read_file` it is given.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::allow::Allow;
use super::env::{self, EnvProxy};
use super::key::Key;
use super::lex::{split_fields, Field};
use super::options::{LineOptions, OptionParser, Shape};
use super::routes::{build_routes, note, proxy_field, FirstHop, ParsedRoute, ProxyField};
use super::url::{redact, UrlHop};
use super::values::{parse_host, parse_listen, parse_port};
use super::{AuthScheme, Credentials, Dest, Entry, HostPort, Metrics, Options};

/// The expected form of an entry line, quoted by field-count messages.
const ENTRY_FORM: &str =
    "LISTEN DEST_HOST DEST_PORT [PROXY_HOST PROXY_PORT | PROXY_URL] [KEY=VALUE ...]";
/// The same for a client-named entry.
const CLIENT_FORM: &str = "LISTEN socks|http [PROXY] [KEY=VALUE ...]";
/// The form of a `metrics` line.
const METRICS_FORM: &str = "expected metrics LISTEN";

/// What a parse gives: the entries and the `metrics` line.
type Parsed = (Vec<Entry>, Option<Metrics>);

/// Parses the text of a whole file into its entries and `metrics` line, or
/// into every problem found as `(line, message)`, line 0 for the whole file
/// (see [`super::parse_str_env`]).
pub(super) fn parse(
    text: &str,
    base_dir: &Path,
    read_file: &mut dyn FnMut(&Path) -> io::Result<String>,
    env_lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, Vec<(usize, String)>> {
    let mut parser = Parser {
        base_dir,
        read_file,
        env_lookup,
        env: None,
        defaults: Defaults::default(),
        entries: Vec::new(),
        metrics: None,
        first_line_of: HashMap::new(),
        errors: Vec::new(),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        for message in parser.line(index + 1, line) {
            parser.errors.push((index + 1, message));
        }
    }
    if parser.errors.is_empty() && parser.entries.is_empty() {
        parser.errors.push((
            0,
            format!("no entries: expected lines of the form {ENTRY_FORM}"),
        ));
    }
    if parser.errors.is_empty() {
        Ok((parser.entries, parser.metrics))
    } else {
        Err(parser.errors)
    }
}

/// Where the credentials of the defaults come from.
#[derive(Debug, Clone, Default)]
enum DefaultCredentials {
    #[default]
    None,
    Inline(Credentials),
    File(PathBuf, Credentials),
}

/// What `defaults` lines have set so far.
#[derive(Debug, Clone, Default)]
struct Defaults {
    options: Options,
    credentials: DefaultCredentials,
    auth_scheme: Option<AuthScheme>,
    headers: Vec<String>,
    /// `None` until a `defaults` line sets `allow`; empty = every destination.
    allow: Option<Vec<Allow>>,
}

/// The state of one parse: the defaults set so far, the entries and the
/// problems found.
struct Parser<'a> {
    base_dir: &'a Path,
    read_file: &'a mut dyn FnMut(&Path) -> io::Result<String>,
    env_lookup: &'a dyn Fn(&str) -> Option<String>,
    /// What `env` resolved to, once the first `env` entry asked.
    env: Option<Result<EnvProxy, String>>,
    defaults: Defaults,
    entries: Vec<Entry>,
    metrics: Option<Metrics>,
    /// Line of the first entry (or `metrics`) with each LISTEN address, for duplicates.
    first_line_of: HashMap<SocketAddr, usize>,
    errors: Vec<(usize, String)>,
}

impl Parser<'_> {
    /// Parses the options of a line (see [`OptionParser::parse`]).
    fn options(
        &mut self,
        fields: &[&Field],
        shape: Shape,
        errors: &mut Vec<String>,
    ) -> LineOptions {
        OptionParser {
            base_dir: self.base_dir,
            read_file: &mut *self.read_file,
        }
        .parse(fields, shape, errors)
    }

    /// Handles one line; returns its problems.
    fn line(&mut self, line_no: usize, line: &str) -> Vec<String> {
        let fields = match split_fields(line) {
            Ok(fields) => fields,
            Err(message) => return vec![message],
        };
        match fields.first() {
            None => Vec::new(),
            Some(first) if first.key_end.is_none() && first.text == "defaults" => {
                self.defaults_line(&fields[1..])
            }
            Some(first) if first.key_end.is_none() && first.text == "metrics" => {
                self.metrics_line(line_no, &fields[1..])
            }
            Some(_) => self.entry_line(line_no, &fields),
        }
    }

    fn defaults_line(&mut self, fields: &[Field]) -> Vec<String> {
        let mut errors = Vec::new();
        let mut options = Vec::new();
        for field in fields {
            if field.option().is_some() {
                options.push(field);
            } else {
                errors.push(format!(
                    "unexpected field {:?} in defaults: expected defaults KEY=VALUE [KEY=VALUE ...]",
                    redact(&field.text)
                ));
            }
        }
        if fields.is_empty() {
            errors.push("defaults without any KEY=VALUE option".to_string());
        }
        let line = self.options(&options, Shape::DEFAULTS, &mut errors);
        if line.has(Key::Auth) && line.has(Key::AuthFile) {
            errors.push("credentials given twice: in auth and in auth-file (keep one)".to_string());
        }
        // Apply what is valid even when the line has errors: the file is
        // rejected anyway, and this avoids follow-on errors further down.
        let allow = line.allow();
        let defaults = &mut self.defaults;
        if let Some(credentials) = line.auth {
            defaults.credentials = DefaultCredentials::Inline(credentials);
        }
        if let Some((path, credentials)) = line.auth_file {
            defaults.credentials = DefaultCredentials::File(path, credentials);
        }
        if line.auth_scheme.is_some() {
            defaults.auth_scheme = line.auth_scheme;
        }
        if line.seen.contains(&Key::Header) {
            defaults.headers = line.headers;
        }
        if line.seen.contains(&Key::Allow) {
            defaults.allow = Some(allow);
        }
        let options = &mut defaults.options;
        if let Some(v) = line.connect_timeout {
            options.connect_timeout = v;
        }
        if let Some(v) = line.idle_timeout {
            options.idle_timeout = v;
        }
        if let Some(v) = line.keepalive {
            options.keepalive = v;
        }
        if let Some(v) = line.max_conns {
            options.max_conns = v;
        }
        if let Some(v) = line.buffer {
            options.buffer = v;
        }
        if let Some(v) = line.proxy_backoff {
            options.proxy_backoff = v;
        }
        if let Some(v) = line.proxy_ca {
            options.proxy_ca = Some(v);
        }
        if let Some(v) = line.proxy_verify {
            options.proxy_verify = v;
        }
        errors
    }

    /// `metrics LISTEN`.
    fn metrics_line(&mut self, line_no: usize, fields: &[Field]) -> Vec<String> {
        let mut errors = Vec::new();
        let listen = match fields {
            [] => {
                errors.push(format!("missing LISTEN after metrics: {METRICS_FORM}"));
                None
            }
            [listen, rest @ ..] => {
                if let Some(extra) = rest.first() {
                    errors.push(format!(
                        "unexpected field {:?} after metrics LISTEN: {METRICS_FORM}",
                        redact(&extra.text)
                    ));
                }
                note(parse_listen(&listen.text), &mut errors)
            }
        };
        if let Some(first) = &self.metrics {
            errors.push(format!(
                "metrics given twice (first on line {})",
                first.line
            ));
        }
        if let Some(listen) = listen {
            self.claim(listen, line_no, &mut errors);
            if errors.is_empty() {
                self.metrics = Some(Metrics {
                    line: line_no,
                    listen,
                });
            }
        }
        errors
    }

    /// Notes `listen` as used by `line_no`, or the duplicate.
    fn claim(&mut self, listen: SocketAddr, line_no: usize, errors: &mut Vec<String>) {
        match self.first_line_of.get(&listen) {
            Some(first) => errors.push(format!(
                "duplicate listen address {listen} (first on line {first})"
            )),
            None => {
                self.first_line_of.insert(listen, line_no);
            }
        }
    }

    fn entry_line(&mut self, line_no: usize, fields: &[Field]) -> Vec<String> {
        let mut errors = Vec::new();
        let mut positional = Vec::new();
        let mut options = Vec::new();
        for field in fields {
            if field.option().is_some() {
                options.push(field);
            } else if options.is_empty() {
                positional.push(field);
            } else {
                errors.push(format!(
                    "unexpected field {:?} after the options (options are KEY=VALUE and go last)",
                    redact(&field.text)
                ));
                break;
            }
        }

        let listen = positional
            .first()
            .and_then(|f| note(parse_listen(&f.text), &mut errors));
        let (dest, proxy_field) = match client_named(&positional) {
            Some(kind) => (
                Some(kind),
                proxy_field(&positional[2..], CLIENT_FORM, &mut errors),
            ),
            None => {
                let host = positional
                    .get(1)
                    .and_then(|f| note(parse_host(&f.text, "DEST_HOST"), &mut errors));
                let port = positional
                    .get(2)
                    .and_then(|f| note(parse_port(&f.text, "DEST_PORT"), &mut errors));
                let names = ["LISTEN", "DEST_HOST", "DEST_PORT"];
                let field = if positional.len() < names.len() {
                    let missing = names[positional.len()..].join(" and ");
                    errors.push(format!("missing {missing}: expected {ENTRY_FORM}"));
                    ProxyField::Unknown
                } else {
                    proxy_field(&positional[3..], ENTRY_FORM, &mut errors)
                };
                let dest = host
                    .zip(port)
                    .map(|(host, port)| Dest::Fixed(HostPort { host, port }));
                (dest, field)
            }
        };

        let shape = Shape {
            proxied: match &proxy_field {
                ProxyField::Direct => Some(false),
                ProxyField::Routes(Some(routes)) => Some(routes.iter().any(|r| !r.is_empty())),
                ProxyField::Env => Some(true),
                ProxyField::Routes(None) | ProxyField::Unknown => None,
            },
            client_named: (positional.len() >= 2).then(|| client_named(&positional).is_some()),
        };
        let line = self.options(&options, shape, &mut errors);

        // The hops as written (or as the environment gave them).
        let mut env = None;
        let parsed: Option<Vec<ParsedRoute>> = match proxy_field {
            ProxyField::Direct => Some(vec![Vec::new()]),
            ProxyField::Routes(routes) => routes,
            ProxyField::Unknown => None,
            ProxyField::Env => match self.env() {
                Ok(resolved) => {
                    let routes = env_routes(&resolved, dest.as_ref());
                    env = Some(resolved);
                    Some(routes)
                }
                Err(message) => {
                    errors.push(message);
                    None
                }
            },
        };

        // Line credentials are refused only where they would reach no hop:
        // every route's first hop has credentials in its URL.
        let url_credentials_everywhere = env.is_none()
            && parsed.as_ref().is_some_and(|routes| {
                routes.iter().any(|r| !r.is_empty())
                    && routes
                        .iter()
                        .filter_map(|r| r.first())
                        .all(|hop| hop.credentials.is_some())
            });
        let (credentials, auth_file) = if shape.proxied == Some(false) {
            // Refused above; nothing to take credentials from.
            (None, None)
        } else {
            self.entry_credentials(url_credentials_everywhere, &line, &mut errors)
        };
        let first = FirstHop {
            credentials,
            auth_file,
            auth_scheme: line
                .auth_scheme
                .or(self.defaults.auth_scheme)
                .unwrap_or(AuthScheme::Auto),
            headers: merge_headers(&self.defaults.headers, &line.headers),
        };
        let routes = parsed.map(|parsed| build_routes(&parsed, &first));

        if let (Some(listen), Some(routes)) = (listen, &routes) {
            let from = env
                .as_ref()
                .map(|e| format!(" (from {})", e.variable))
                .unwrap_or_default();
            let mut seen = Vec::new();
            for route in routes {
                let (what, first_hop) = match (route.hops.first(), dest.as_ref()) {
                    (Some(proxy), _) => ("proxy", &proxy.addr),
                    (None, Some(Dest::Fixed(dest))) => ("destination", dest),
                    (None, _) => continue,
                };
                if connects_to_itself(listen, first_hop) && !seen.contains(&first_hop) {
                    seen.push(first_hop);
                    let from = if what == "proxy" { from.as_str() } else { "" };
                    errors.push(format!(
                        "{what} {}{from} is this entry's own listen address {listen}: the tunnel would connect to itself",
                        first_hop.authority()
                    ));
                }
            }
        }

        if let Some(listen) = listen {
            self.claim(listen, line_no, &mut errors);
        }

        if let (true, Some(listen), Some(dest), Some(routes)) =
            (errors.is_empty(), listen, dest, routes)
        {
            let proxied = env.is_some() || routes.iter().any(|r| !r.is_direct());
            let client_named = dest.is_client_named();
            let options = self.entry_options(&line, proxied);
            let allow = match (client_named, line.has(Key::Allow)) {
                (false, _) => Vec::new(),
                (true, true) => line.allow(),
                (true, false) => self.defaults.allow.clone().unwrap_or_default(),
            };
            self.entries.push(Entry {
                line: line_no,
                listen,
                dest,
                routes,
                env,
                allow,
                options,
            });
        }
        errors
    }

    /// The options of an entry: the line's, else the defaults'; the
    /// proxy-only ones stay built-in on an entry without a proxy.
    fn entry_options(&self, line: &LineOptions, proxied: bool) -> Options {
        let defaults = &self.defaults.options;
        let builtin = Options::default();
        let proxy = if proxied { defaults } else { &builtin };
        Options {
            connect_timeout: line.connect_timeout.unwrap_or(defaults.connect_timeout),
            idle_timeout: line.idle_timeout.unwrap_or(defaults.idle_timeout),
            keepalive: line.keepalive.unwrap_or(defaults.keepalive),
            max_conns: line.max_conns.unwrap_or(defaults.max_conns),
            buffer: line.buffer.unwrap_or(defaults.buffer),
            proxy_backoff: line.proxy_backoff.unwrap_or(proxy.proxy_backoff),
            proxy_ca: line.proxy_ca.clone().or_else(|| proxy.proxy_ca.clone()),
            proxy_verify: line.proxy_verify.unwrap_or(proxy.proxy_verify),
        }
    }

    /// What `env` resolved to (read once per parse).
    fn env(&mut self) -> Result<EnvProxy, String> {
        let lookup = self.env_lookup;
        self.env.get_or_insert_with(|| env::resolve(lookup)).clone()
    }

    /// The credentials for first hops without URL credentials, and the
    /// `auth-file` they came from: the line's own (at most one source, else
    /// an error), or the defaults'.
    fn entry_credentials(
        &self,
        url_credentials_everywhere: bool,
        line: &LineOptions,
        errors: &mut Vec<String>,
    ) -> (Option<Credentials>, Option<PathBuf>) {
        let sources: Vec<&str> = [
            (url_credentials_everywhere, "PROXY_URL"),
            (line.has(Key::Auth), "auth"),
            (line.has(Key::AuthFile), "auth-file"),
        ]
        .iter()
        .filter(|(given, _)| *given)
        .map(|(_, name)| *name)
        .collect();
        if let [first, second, ..] = sources[..] {
            errors.push(format!(
                "credentials given twice: in {first} and in {second} (keep one)"
            ));
        }
        match (&line.auth, &line.auth_file) {
            (Some(c), _) => (Some(c.clone()), None),
            (None, Some((path, c))) => (Some(c.clone()), Some(path.clone())),
            (None, None) => match &self.defaults.credentials {
                DefaultCredentials::None => (None, None),
                DefaultCredentials::Inline(c) => (Some(c.clone()), None),
                DefaultCredentials::File(path, c) => (Some(c.clone()), Some(path.clone())),
            },
        }
    }
}

/// `Some(Socks | Http)` when the line is a client-named entry: its second
/// field is exactly `socks` or `http` and its third, if any, is not a port
/// number (`1080 socks 22` forwards to a host called `socks`).
fn client_named(positional: &[&Field]) -> Option<Dest> {
    let kind = match positional.get(1)?.text.as_str() {
        "socks" => Dest::Socks,
        "http" => Dest::Http,
        _ => return None,
    };
    let third_is_port = positional
        .get(2)
        .is_some_and(|f| !f.text.is_empty() && f.text.bytes().all(|b| b.is_ascii_digit()));
    (!third_is_port).then_some(kind)
}

/// The routes `env` gives: the variable's proxy, or `direct` when none was
/// set or `NO_PROXY` matches a fixed destination.
fn env_routes(env: &EnvProxy, dest: Option<&Dest>) -> Vec<ParsedRoute> {
    let excluded = dest
        .and_then(Dest::fixed)
        .is_some_and(|d| env.no_proxy.matches(&d.host));
    match &env.proxy {
        Some(proxy) if !excluded => vec![vec![UrlHop {
            addr: proxy.addr.clone(),
            tls: proxy.tls,
            credentials: proxy.credentials.clone(),
        }]],
        _ => vec![Vec::new()],
    }
}

/// The default headers an entry's own do not replace (same name,
/// case-insensitive), then the entry's own.
fn merge_headers(defaults: &[String], own: &[String]) -> Vec<String> {
    let replaced = |d: &String| {
        own.iter()
            .any(|o| header_name(o).eq_ignore_ascii_case(header_name(d)))
    };
    defaults
        .iter()
        .filter(|d| !replaced(d))
        .chain(own)
        .cloned()
        .collect()
}

fn header_name(header: &str) -> &str {
    header.split(':').next().unwrap_or(header)
}

/// True when the first hop is, literally, the entry's own listen address.
fn connects_to_itself(listen: SocketAddr, first_hop: &HostPort) -> bool {
    if first_hop.port != listen.port() {
        return false;
    }
    let hop_ips: Vec<IpAddr> = if first_hop.host.eq_ignore_ascii_case("localhost") {
        vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
    } else if let Ok(ip) = first_hop.host.parse::<IpAddr>() {
        vec![ip]
    } else {
        return false;
    };
    let listen_ip = listen.ip();
    hop_ips.iter().any(|ip| {
        *ip == listen_ip
            || (listen_ip.is_unspecified()
                && ip.is_ipv4() == listen_ip.is_ipv4()
                && (ip.is_loopback() || ip.is_unspecified()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;
    use crate::config::{parse_str, Proxy, RouteSpec, DEFAULT_BUFFER, DEFAULT_CONNECT_TIMEOUT};
    use std::time::Duration;

    #[test]
    fn blank_lines_comments_crlf_bom_and_no_final_newline() {
        let text = "\u{feff}# tunnels\r\n\r\n   \r\n2222 a.example 22\r\n\t# x\r\n3333 b.example 33 # direct\r\n4444 c.example 44";
        let config = ok(text);
        let lines: Vec<usize> = config.entries.iter().map(|e| e.line).collect();
        assert_eq!(lines, [4, 6, 7]);
        assert_eq!(config.entries[2].dest, Dest::Fixed(hp("c.example", 44)));
    }

    #[test]
    fn crlf_does_not_leak_into_the_last_field() {
        let entry = one("2222 h 22 proxy 3128 header=\"X-A: b\"\r\n");
        assert_eq!(proxy_of(&entry).headers, ["X-A: b"]);
        let entry = one("2222 h 22 proxy 3128 auth=u:pw\r\n");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("u", "pw")));
    }

    #[test]
    fn a_file_without_entries_is_an_error() {
        assert_eq!(
            err1(""),
            "x.conf: no entries: expected lines of the form LISTEN DEST_HOST DEST_PORT [PROXY_HOST PROXY_PORT | PROXY_URL] [KEY=VALUE ...]"
        );
        assert_eq!(errs("# nothing\n\ndefaults buffer=4k\n").len(), 1);
    }

    #[test]
    fn every_bad_line_is_reported_in_order() {
        let text = "\
# header comment
2222 a.example 22
2223 b.example 70000
2224 a@b 22 lisen=1
2225 c.example 25 socks5://proxy:1
2222 d.example 22
2226 e.example 26 auth=u:p
2227 f.example 27 buffer=1g keepalive=500ms
2228 g.example 28 header=\"broken
2229 h.example
";
        // The same with CRLF line ends, and the same line numbers.
        assert_eq!(errs(text), errs(&text.replace('\n', "\r\n")));
        assert_eq!(
            errs(text),
            [
                "x.conf:3: port \"70000\" out of range 1-65535 in DEST_PORT",
                "x.conf:4: invalid DEST_HOST \"a@b\": character '@' not allowed in a host name",
                "x.conf:4: unknown option \"lisen\"",
                "x.conf:5: unsupported proxy scheme \"socks5\" in PROXY_URL: only http:// and https:// are supported",
                "x.conf:6: duplicate listen address 127.0.0.1:2222 (first on line 2)",
                "x.conf:7: option \"auth\" needs a proxy",
                "x.conf:8: invalid buffer \"1g\": expected a number of bytes, optionally with k or m, e.g. 4096, 16k, 1m",
                "x.conf:8: invalid keepalive \"500ms\": whole seconds from 1s to 32767s, or off",
                "x.conf:9: unterminated quote (opened at column 26)",
                "x.conf:10: missing DEST_PORT: expected LISTEN DEST_HOST DEST_PORT [PROXY_HOST PROXY_PORT | PROXY_URL] [KEY=VALUE ...]",
            ]
        );
    }

    #[test]
    fn three_field_form_is_direct_with_default_options() {
        let entry = one("2222 example.com 22");
        assert_eq!(
            entry,
            Entry {
                line: 1,
                listen: sa("127.0.0.1:2222"),
                dest: Dest::Fixed(hp("example.com", 22)),
                routes: vec![RouteSpec::direct()],
                env: None,
                allow: vec![],
                options: Options::default(),
            }
        );
        assert_eq!(
            Options::default(),
            Options {
                connect_timeout: Duration::from_secs(10),
                idle_timeout: None,
                keepalive: Some(Duration::from_secs(60)),
                max_conns: None,
                buffer: 256 * 1024,
                proxy_backoff: Duration::from_secs(30),
                proxy_ca: None,
                proxy_verify: true,
            }
        );
    }

    #[test]
    fn classic_five_field_form() {
        let entry = one("2222 example.com 22 proxy.corp 3128");
        assert_eq!(
            first_proxy(&entry),
            Some(Proxy {
                addr: hp("proxy.corp", 3128),
                tls: false,
                credentials: None,
                auth_file: None,
                auth_scheme: AuthScheme::Auto,
                headers: vec![],
            })
        );
        let entry = one("2222 example.com 22 ::1 3128");
        assert_eq!(proxy_of(&entry).addr, hp("::1", 3128));
        let entry = one("2222 example.com 22 [::1] 3128");
        assert_eq!(proxy_of(&entry).addr, hp("::1", 3128));
    }

    #[test]
    fn field_count_errors_name_the_expected_form() {
        let form = "expected LISTEN DEST_HOST DEST_PORT [PROXY_HOST PROXY_PORT | PROXY_URL] [KEY=VALUE ...]";
        assert_eq!(
            err1("2222"),
            format!("x.conf:1: missing DEST_HOST and DEST_PORT: {form}")
        );
        assert_eq!(
            err1("2222 h"),
            format!("x.conf:1: missing DEST_PORT: {form}")
        );
        assert_eq!(
            err1("buffer=4k"),
            format!("x.conf:1: missing LISTEN and DEST_HOST and DEST_PORT: {form}")
        );
        assert_eq!(
            err1("2222 h 22 proxy"),
            "x.conf:1: missing PROXY_PORT after PROXY_HOST \"proxy\": write the proxy as PROXY_HOST PROXY_PORT or as http://HOST:PORT"
        );
        assert_eq!(
            err1("2222 h 22 http://proxy:3128 3128"),
            format!("x.conf:1: unexpected field \"3128\" after PROXY_URL: {form}")
        );
        assert_eq!(
            err1("2222 h 22 proxy 3128 extra"),
            format!("x.conf:1: unexpected field \"extra\" after PROXY_PORT: {form}")
        );
        // `2222 h 22 max-conns 5` is a valid classic line (proxy "max-conns"), but:
        assert_eq!(
            err1("2222 h 22 p 1 max-conns 5"),
            format!("x.conf:1: unexpected field \"max-conns\" after PROXY_PORT (options are written KEY=VALUE): {form}")
        );
        assert_eq!(
            err1("2222 h 22 buffer=4k proxy 3128"),
            "x.conf:1: unexpected field \"proxy\" after the options (options are KEY=VALUE and go last)"
        );
    }

    #[test]
    fn duplicate_listen_addresses_compare_normalised() {
        assert_eq!(
            err1("2222 a 1\n\n127.0.0.1:2222 b 2\n"),
            "x.conf:3: duplicate listen address 127.0.0.1:2222 (first on line 1)"
        );
        assert_eq!(
            err1("[::1]:2222 a 1\n[0:0::1]:2222 b 2\n"),
            "x.conf:2: duplicate listen address [::1]:2222 (first on line 1)"
        );
        // Different addresses on one port are the OS's concern, not ours.
        let config = ok("0.0.0.0:2222 a 1\n127.0.0.1:2222 b 2\n[::]:2222 c 3\n[::1]:2222 d 4\n");
        assert_eq!(config.entries.len(), 4);
    }

    #[test]
    fn a_bad_line_still_claims_its_listen_address() {
        assert_eq!(
            errs("2222 a@b 22\n2222 ok 22\n"),
            [
                "x.conf:1: invalid DEST_HOST \"a@b\": character '@' not allowed in a host name",
                "x.conf:2: duplicate listen address 127.0.0.1:2222 (first on line 1)",
            ]
        );
        // A LISTEN that does not parse claims nothing.
        assert_eq!(errs("222x a 1\n2222 b 2\n").len(), 1);
    }

    #[test]
    fn first_hop_equal_to_the_listen_address_is_refused() {
        assert_eq!(
            err1("2222 127.0.0.1 2222"),
            "x.conf:1: destination 127.0.0.1:2222 is this entry's own listen address 127.0.0.1:2222: the tunnel would connect to itself"
        );
        assert_eq!(
            err1("0.0.0.0:2222 localhost 2222"),
            "x.conf:1: destination localhost:2222 is this entry's own listen address 0.0.0.0:2222: the tunnel would connect to itself"
        );
        assert_eq!(
            err1("[::1]:3128 h 22 ::1 3128"),
            "x.conf:1: proxy [::1]:3128 is this entry's own listen address [::1]:3128: the tunnel would connect to itself"
        );
        assert_eq!(
            err1("[::]:3128 h 22 http://[::1]:3128"),
            "x.conf:1: proxy [::1]:3128 is this entry's own listen address [::]:3128: the tunnel would connect to itself"
        );
        // Another port, address or family, or a name we cannot judge: fine.
        ok("2222 127.0.0.1 2223");
        ok("2222 127.0.0.2 2222");
        ok("[::]:2222 127.0.0.1 2222");
        ok("2222 myhost 2222");
        // Through a proxy the destination may well be the same address elsewhere.
        ok("2222 127.0.0.1 2222 proxy 3128");
    }

    #[test]
    fn every_option_on_an_entry() {
        let entry = one(
            "2222 h 22 proxy 3128 auth=alice:pw auth-scheme=NTLM header=\"User-Agent: Mozilla/5.0 (X11)\" \
             header=X-A:1 connect-timeout=250ms idle-timeout=5m keepalive=30 max-conns=8 buffer=16K",
        );
        assert_eq!(
            first_proxy(&entry),
            Some(Proxy {
                addr: hp("proxy", 3128),
                tls: false,
                credentials: Some(creds("alice", "pw")),
                auth_file: None,
                auth_scheme: AuthScheme::Ntlm,
                headers: vec!["User-Agent: Mozilla/5.0 (X11)".into(), "X-A: 1".into()],
            })
        );
        assert_eq!(
            entry.options,
            Options {
                connect_timeout: Duration::from_millis(250),
                idle_timeout: Some(Duration::from_secs(300)),
                keepalive: Some(Duration::from_secs(30)),
                max_conns: Some(8),
                buffer: 16 * 1024,
                ..Options::default()
            }
        );
    }

    #[test]
    fn an_option_twice_is_an_error_except_header() {
        assert_eq!(
            err1("2222 h 22 buffer=4k buffer=8k"),
            "x.conf:1: option \"buffer\" given twice"
        );
        assert_eq!(
            err1("2222 h 22 p 1 auth-scheme=basic auth-scheme=basic"),
            "x.conf:1: option \"auth-scheme\" given twice"
        );
        assert_eq!(
            err1("defaults keepalive=off keepalive=1"),
            "x.conf:1: option \"keepalive\" given twice"
        );
        let entry = one("2222 h 22 p 1 header=A:1 header=A:2");
        assert_eq!(proxy_of(&entry).headers, ["A: 1", "A: 2"]);
    }

    #[test]
    fn proxy_only_options_on_a_direct_line_are_errors() {
        for key in [
            "auth=u:p",
            "auth-file=secret",
            "auth-scheme=basic",
            "header=A:b",
        ] {
            let name = key.split('=').next().expect("key");
            assert_eq!(
                err1(&format!("2222 h 22 {key}")),
                format!("x.conf:1: option \"{name}\" needs a proxy")
            );
        }
        // The value is not even looked at, and a repeated header is one error.
        assert_eq!(
            err1("2222 h 22 auth=nonsense"),
            "x.conf:1: option \"auth\" needs a proxy"
        );
        assert_eq!(
            err1("2222 h 22 header=A:1 header=B:2"),
            "x.conf:1: option \"header\" needs a proxy"
        );
    }

    #[test]
    fn credentials_from_two_sources_are_an_error() {
        assert_eq!(
            err1("2222 h 22 http://a:b@p:1 auth=c:d"),
            "x.conf:1: credentials given twice: in PROXY_URL and in auth (keep one)"
        );
        assert_eq!(
            err1("2222 h 22 p 1 auth=c:d auth-file=secret"),
            "x.conf:1: credentials given twice: in auth and in auth-file (keep one)"
        );
        assert_eq!(
            err1("2222 h 22 http://a:b@p:1 auth-file=secret"),
            "x.conf:1: credentials given twice: in PROXY_URL and in auth-file (keep one)"
        );
        assert_eq!(
            err1("defaults auth=c:d auth-file=secret"),
            "x.conf:1: credentials given twice: in auth and in auth-file (keep one)"
        );
    }

    #[test]
    fn auth_file_option() {
        let entry = one("2222 h 22 p 1 auth-file=secret");
        let proxy = proxy_of(&entry);
        assert_eq!(proxy.credentials, Some(creds("alice", "s3cret")));
        assert_eq!(proxy.auth_file, Some(PathBuf::from("/etc/ht/secret")));
        let entry = one("2222 h 22 p 1 auth-file=/abs/other");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("carol", "c")));
        assert_eq!(
            proxy_of(&entry).auth_file,
            Some(PathBuf::from("/abs/other"))
        );
        let entry = one("2222 h 22 p 1 auth-file=crlf");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("bob", "pw")));
        let entry = one("2222 h 22 p 1 auth-file=bom");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("dave", "pw")));
        let entry = one("2222 h 22 p 1 auth-file=\"with space\"");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("erin", "pw")));
    }

    #[test]
    fn auth_file_errors_name_the_path_and_reason() {
        for (file, message) in [
            ("missing", "cannot read auth-file \"/etc/ht/missing\": no such file"),
            ("empty", "invalid auth-file \"/etc/ht/empty\": first line must be USER:PASSWORD"),
            ("nocolon", "invalid auth-file \"/etc/ht/nocolon\": first line must be USER:PASSWORD"),
            ("ctrl", "invalid auth-file \"/etc/ht/ctrl\": first line: control characters are not allowed in USER or PASSWORD"),
            ("nouser", "invalid auth-file \"/etc/ht/nouser\": first line: USER is empty"),
            ("\"\"", "invalid auth-file \"\": expected a path"),
        ] {
            assert_eq!(
                err1(&format!("2222 h 22 p 1 auth-file={file}")),
                format!("x.conf:1: {message}"),
                "{file}"
            );
        }
    }

    #[test]
    fn auth_file_is_read_once_per_option_in_order() {
        let mut read = Vec::new();
        let mut recorder = |path: &Path| {
            read.push(path.to_path_buf());
            reader(path)
        };
        let text = "defaults auth-file=secret\n2222 h 22 p 1\n2223 h 22 p 1\n2224 h 22 p 1 auth-file=crlf\n2225 h 22\n";
        let config = parse_str(text, "x.conf", Path::new(BASE), &mut recorder).expect("valid");
        assert_eq!(config.entries.len(), 4);
        assert_eq!(
            read,
            [
                PathBuf::from("/etc/ht/secret"),
                PathBuf::from("/etc/ht/crlf")
            ]
        );
    }

    #[test]
    fn defaults_apply_to_the_entries_below_only() {
        let config = ok("2222 a 1\ndefaults max-conns=4 buffer=8k\n2223 b 2\n2224 c 3 buffer=4k\n");
        let options: Vec<(Option<usize>, usize)> = config
            .entries
            .iter()
            .map(|e| (e.options.max_conns, e.options.buffer))
            .collect();
        assert_eq!(
            options,
            [(None, DEFAULT_BUFFER), (Some(4), 8192), (Some(4), 4096)]
        );
    }

    #[test]
    fn later_defaults_override_key_by_key() {
        let config =
            ok("defaults idle-timeout=5m keepalive=off\ndefaults keepalive=30s\n2222 a 1\n");
        let options = &config.entries[0].options;
        assert_eq!(options.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(options.keepalive, Some(Duration::from_secs(30)));
        assert_eq!(options.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        // An entry can put a default back.
        let entry = one(
            "defaults max-conns=2 idle-timeout=1m\n2222 a 1 max-conns=unlimited idle-timeout=0\n",
        );
        assert_eq!(entry.options.max_conns, None);
        assert_eq!(entry.options.idle_timeout, None);
    }

    #[test]
    fn proxy_only_defaults_apply_to_proxied_entries_only() {
        let text = "defaults auth=alice:pw auth-scheme=digest header=\"User-Agent: X\"\n2222 a 1\n2223 b 2 p 3128\n";
        let config = ok(text);
        assert_eq!(first_proxy(&config.entries[0]), None);
        assert_eq!(
            first_proxy(&config.entries[1]),
            Some(Proxy {
                addr: hp("p", 3128),
                tls: false,
                credentials: Some(creds("alice", "pw")),
                auth_file: None,
                auth_scheme: AuthScheme::Digest,
                headers: vec!["User-Agent: X".into()],
            })
        );
    }

    #[test]
    fn entry_credentials_replace_default_ones() {
        let text = "defaults auth-file=secret\n\
                    2222 a 1 p 1\n\
                    2223 a 1 http://bob:x@p:1\n\
                    2224 a 1 p 1 auth=carol:y\n\
                    defaults auth=dan:z\n\
                    2225 a 1 p 1\n\
                    2226 a 1 p 1 auth-file=crlf\n";
        let proxies: Vec<(Option<Credentials>, Option<PathBuf>)> = ok(text)
            .entries
            .iter()
            .map(|e| {
                let p = proxy_of(e);
                (p.credentials, p.auth_file)
            })
            .collect();
        assert_eq!(
            proxies,
            [
                (
                    Some(creds("alice", "s3cret")),
                    Some(PathBuf::from("/etc/ht/secret"))
                ),
                (Some(creds("bob", "x")), None),
                (Some(creds("carol", "y")), None),
                (Some(creds("dan", "z")), None),
                (
                    Some(creds("bob", "pw")),
                    Some(PathBuf::from("/etc/ht/crlf"))
                ),
            ]
        );
    }

    #[test]
    fn default_headers_merge_by_name_and_defaults_lines_replace_the_list() {
        let text = "defaults header=User-Agent:X header=X-Team:a\n\
                    2222 a 1 p 1 header=user-agent:Y header=X-New:1\n\
                    2223 a 1 p 1\n\
                    defaults header=X-Only:1\n\
                    2224 a 1 p 1\n";
        let headers: Vec<Vec<String>> = ok(text)
            .entries
            .iter()
            .map(|e| proxy_of(e).headers)
            .collect();
        assert_eq!(
            headers,
            [
                vec!["X-Team: a", "user-agent: Y", "X-New: 1"],
                vec!["User-Agent: X", "X-Team: a"],
                vec!["X-Only: 1"],
            ]
        );
    }

    #[test]
    fn defaults_line_errors() {
        assert_eq!(
            err1("defaults\n2222 a 1\n"),
            "x.conf:1: defaults without any KEY=VALUE option"
        );
        assert_eq!(
            err1("defaults 10s\n2222 a 1\n"),
            "x.conf:1: unexpected field \"10s\" in defaults: expected defaults KEY=VALUE [KEY=VALUE ...]"
        );
        assert_eq!(
            errs("defaults buffer=1 lisen=2 auth-file=missing\n2222 a 1\n"),
            [
                "x.conf:1: buffer \"1\" out of range 1k-16m",
                "x.conf:1: unknown option \"lisen\"",
                "x.conf:1: cannot read auth-file \"/etc/ht/missing\": no such file",
            ]
        );
        // Proxy-only defaults are no error, even with only direct entries.
        ok("defaults auth=a:b header=X:1 auth-scheme=basic\n2222 a 1\n");
    }

    #[test]
    fn a_bad_defaults_value_keeps_the_earlier_default() {
        // Only the defaults line is reported, not every entry below.
        assert_eq!(
            errs("defaults buffer=8k\ndefaults buffer=1g\n2222 a 1\n2223 b 2\n").len(),
            1
        );
    }

    #[test]
    fn proxy_backoff_ca_and_verify() {
        let entry = one("2222 h 22 p 1 proxy-backoff=1s proxy-ca=ca.pem proxy-verify=OFF");
        assert_eq!(entry.options.proxy_backoff, Duration::from_secs(1));
        assert_eq!(
            entry.options.proxy_ca,
            Some(PathBuf::from("/etc/ht/ca.pem"))
        );
        assert!(!entry.options.proxy_verify);
        let entry = one("2222 h 22 https://gw:443 proxy-ca=/etc/ht/ca.pem proxy-verify=on");
        assert_eq!(
            entry.options.proxy_ca,
            Some(PathBuf::from("/etc/ht/ca.pem"))
        );
        assert!(entry.options.proxy_verify);
        for (option, message) in [
            ("proxy-backoff=0", "proxy-backoff must be more than 0"),
            ("proxy-backoff=soon", "invalid proxy-backoff \"soon\": expected a number with ms, s, m or h, e.g. 250ms, 10s, 5m, 1h"),
            ("proxy-verify=no", "invalid proxy-verify \"no\": expected on or off"),
            ("proxy-ca=missing.pem", "cannot read proxy-ca \"/etc/ht/missing.pem\": no such file"),
            ("proxy-ca=key.pem", "invalid proxy-ca \"/etc/ht/key.pem\": no PEM certificate (-----BEGIN CERTIFICATE-----) in it"),
            ("proxy-ca=\"\"", "invalid proxy-ca \"\": expected a path"),
            ("auth-scheme=negotiat", "invalid auth-scheme \"negotiat\": expected auto, basic, digest, ntlm or negotiate"),
        ] {
            assert_eq!(err1(&format!("2222 h 22 p 1 {option}")), format!("x.conf:1: {option_message}", option_message = message), "{option}");
        }
        assert_eq!(
            proxy_of(&one("2222 h 22 p 1 auth-scheme=Negotiate")).auth_scheme,
            AuthScheme::Negotiate
        );
        // Proxy-only on a direct entry, whatever the value.
        for key in ["proxy-backoff=1s", "proxy-ca=nowhere", "proxy-verify=maybe"] {
            let name = key.split('=').next().expect("key");
            for line in [
                format!("2222 h 22 {key}"),
                format!("2222 h 22 direct {key}"),
                format!("1080 socks {key}"),
            ] {
                assert_eq!(
                    err1(&line),
                    format!("x.conf:1: option \"{name}\" needs a proxy"),
                    "{line}"
                );
            }
        }
        // Defaults: proxied entries only.
        let config = ok("defaults proxy-backoff=2m proxy-ca=ca.pem proxy-verify=off\n2222 a 1\n2223 b 2 p 1\n2224 c 3 env\n");
        assert_eq!(config.entries[0].options, Options::default());
        for entry in &config.entries[1..] {
            assert_eq!(entry.options.proxy_backoff, Duration::from_secs(120));
            assert_eq!(
                entry.options.proxy_ca,
                Some(PathBuf::from("/etc/ht/ca.pem"))
            );
            assert!(!entry.options.proxy_verify);
        }
        assert_eq!(
            err1("defaults proxy-ca=missing.pem\n2222 a 1\n"),
            "x.conf:1: cannot read proxy-ca \"/etc/ht/missing.pem\": no such file"
        );
    }

    #[test]
    fn metrics_line() {
        let config = ok("metrics 9100\n2222 a 1\n");
        assert_eq!(
            config.metrics,
            Some(crate::config::Metrics {
                line: 1,
                listen: sa("127.0.0.1:9100")
            })
        );
        assert_eq!(
            ok("2222 a 1\nmetrics [::1]:9100\n")
                .metrics
                .expect("metrics")
                .listen,
            sa("[::1]:9100")
        );
        assert_eq!(ok("2222 a 1\n").metrics, None);
        for (text, message) in [
            ("metrics\n2222 a 1\n", "x.conf:1: missing LISTEN after metrics: expected metrics LISTEN"),
            ("metrics 9100 9101\n2222 a 1\n", "x.conf:1: unexpected field \"9101\" after metrics LISTEN: expected metrics LISTEN"),
            ("metrics 9100 buffer=4k\n2222 a 1\n", "x.conf:1: unexpected field \"buffer=4k\" after metrics LISTEN: expected metrics LISTEN"),
            ("metrics host:9100\n2222 a 1\n", "x.conf:1: invalid LISTEN \"host:9100\": \"host\" is a host name; listen on an IP address, e.g. 127.0.0.1"),
            ("metrics 9100\n2222 a 1\nmetrics 9101\n", "x.conf:3: metrics given twice (first on line 1)"),
            ("metrics 2222\n2222 a 1\n", "x.conf:2: duplicate listen address 127.0.0.1:2222 (first on line 1)"),
            ("2222 a 1\nmetrics 127.0.0.1:2222\n", "x.conf:2: duplicate listen address 127.0.0.1:2222 (first on line 1)"),
        ] {
            assert_eq!(err1(text), message, "{text:?}");
        }
        // A metrics line alone is no configuration.
        assert_eq!(errs("metrics 9100\n").len(), 1);
    }
}
