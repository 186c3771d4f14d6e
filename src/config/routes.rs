//! The PROXY field of an entry line: `PROXY_HOST PROXY_PORT`, `env`, or a
//! route list (`http://p1:3128,https://gw:443>http://10.1.2.3:8080,direct`).
//!
//! Owns: telling these forms apart, the route-list syntax and its errors
//! (empty routes, `>` misplaced, `direct` inside a chain, white space
//! inside, a route given twice), and building an entry's routes from the
//! hops and its first-hop settings. Never does: judge one URL (that is
//! `url`) or read the environment (`env` resolves it; the parser gives it).

use std::path::PathBuf;

use super::key::Key;
use super::lex::Field;
use super::url::{parse_proxy_url, redact, UrlHop};
use super::values::{parse_host, parse_port};
use super::{AuthScheme, Credentials, HostPort, Proxy, RouteSpec};

/// The hops of one route as written; empty for `direct`.
pub(super) type ParsedRoute = Vec<UrlHop>;

/// The PROXY part of an entry line.
pub(super) enum ProxyField {
    /// No PROXY field.
    Direct,
    /// The classic form or a route list; `None` when it did not parse
    /// (errors already noted).
    Routes(Option<Vec<ParsedRoute>>),
    /// `env`.
    Env,
    /// Too few fields to tell.
    Unknown,
}

/// Reads the positional fields after the destination (`rest`) as PROXY and
/// reports extra fields; `form` is the expected line form for messages.
pub(super) fn proxy_field(rest: &[&Field], form: &str, errors: &mut Vec<String>) -> ProxyField {
    let unexpected = |field: &Field, after: &str| {
        let hint = if field.text.parse::<Key>().is_ok() {
            " (options are written KEY=VALUE)"
        } else {
            ""
        };
        format!(
            "unexpected field {:?} after {after}{hint}: expected {form}",
            redact(&field.text)
        )
    };
    if split_by_white_space(rest) {
        errors.push(
            "white space inside PROXY: write the route list as one field, e.g. http://p1:3128,http://p2:3128,direct"
                .to_string(),
        );
        return ProxyField::Routes(None);
    }
    match rest {
        [] => ProxyField::Direct,
        [list, more @ ..] if is_route_list(&list.text, more.is_empty()) => {
            if let Some(extra) = more.first() {
                let after = if list.text.contains([',', '>']) {
                    "PROXY"
                } else {
                    "PROXY_URL"
                };
                errors.push(unexpected(extra, after));
            }
            if list.text.eq_ignore_ascii_case("env") {
                return ProxyField::Env;
            }
            match parse_routes(&list.text) {
                Ok(routes) => ProxyField::Routes(Some(routes)),
                Err(messages) => {
                    errors.extend(messages);
                    ProxyField::Routes(None)
                }
            }
        }
        [host] => {
            errors.push(format!(
                "missing PROXY_PORT after PROXY_HOST {:?}: write the proxy as PROXY_HOST PROXY_PORT or as http://HOST:PORT",
                redact(&host.text)
            ));
            ProxyField::Routes(None)
        }
        [host, port, more @ ..] => {
            if let Some(extra) = more.first() {
                errors.push(unexpected(extra, "PROXY_PORT"));
            }
            let host = note(parse_host(&host.text, "PROXY_HOST"), errors);
            let port = note(parse_port(&port.text, "PROXY_PORT"), errors);
            ProxyField::Routes(host.zip(port).map(|(host, port)| {
                vec![vec![UrlHop {
                    addr: HostPort { host, port },
                    tls: false,
                    credentials: None,
                }]]
            }))
        }
    }
}

/// True when `text` is a route list or keyword rather than a PROXY_HOST:
/// it holds `://`, `,` or `>`, or it is `env` or `direct` as the last
/// positional field (`env 3128` is a proxy host called `env`).
fn is_route_list(text: &str, last: bool) -> bool {
    text.contains("://")
        || text.contains([',', '>'])
        || (last && (text.eq_ignore_ascii_case("env") || text.eq_ignore_ascii_case("direct")))
}

/// True when the PROXY fields look like one route list cut by white space:
/// a field ending or a later one starting with `,` or `>`, or a later field
/// holding a second URL or `direct` after a route list.
fn split_by_white_space(rest: &[&Field]) -> bool {
    if rest.len() < 2 {
        return false;
    }
    let list_like = is_route_list(&rest[0].text, true);
    let ends = |f: &Field| f.key_end.is_none() && f.text.ends_with([',', '>']);
    let starts = |f: &Field| f.text.starts_with([',', '>']);
    rest[..rest.len() - 1].iter().any(|f| ends(f))
        || rest[1..].iter().any(|f| {
            starts(f)
                || f.text.contains("://")
                || (list_like && f.text.eq_ignore_ascii_case("direct"))
        })
}

/// Parses a route list: routes separated by `,`, each `direct` or hops
/// separated by `>`.
///
/// # Errors
///
/// Every problem found; messages name PROXY and the route (and hop) at
/// fault, never quoting the list (it may hold passwords). A list of a single
/// URL keeps the messages of a lone PROXY_URL.
pub(super) fn parse_routes(text: &str) -> Result<Vec<ParsedRoute>, Vec<String>> {
    let texts: Vec<&str> = text.split(',').collect();
    let single_url = texts.len() == 1 && !text.contains('>');
    let mut errors = Vec::new();
    let mut routes: Vec<ParsedRoute> = Vec::new();
    // Proxied routes with their number in the list, to find repeats.
    let mut numbered: Vec<(usize, ParsedRoute)> = Vec::new();
    for (i, route) in texts.iter().enumerate() {
        let n = i + 1;
        if route.is_empty() {
            let place = if i == 0 && texts.len() > 1 {
                "',' at the start"
            } else if i + 1 == texts.len() {
                "',' at the end"
            } else {
                "two ',' in a row"
            };
            errors.push(format!("invalid PROXY: route {n} is empty ({place})"));
            continue;
        }
        if route.eq_ignore_ascii_case("direct") {
            routes.push(Vec::new());
            continue;
        }
        let hops: Vec<&str> = route.split('>').collect();
        let mut parsed = Vec::new();
        let mut bad = false;
        for (j, hop) in hops.iter().enumerate() {
            let message = if hop.is_empty() {
                Some(if j == 0 {
                    format!("invalid PROXY: '>' at the start of route {n}")
                } else if j + 1 == hops.len() {
                    format!("invalid PROXY: '>' at the end of route {n}")
                } else {
                    format!("invalid PROXY: two '>' in a row in route {n}")
                })
            } else if hop.eq_ignore_ascii_case("direct") {
                Some(format!(
                    "invalid PROXY: direct inside a chain in route {n}: direct is a route of its own (separate routes with ',')"
                ))
            } else {
                match parse_proxy_url(hop, "PROXY_URL") {
                    Ok(parsed_hop) => {
                        parsed.push(parsed_hop);
                        None
                    }
                    Err(m) if single_url => Some(m),
                    Err(m) if hops.len() == 1 => Some(format!("PROXY route {n}: {m}")),
                    Err(m) => Some(format!("PROXY route {n} hop {}: {m}", j + 1)),
                }
            };
            if let Some(message) = message {
                bad = true;
                errors.push(message);
                if hop.is_empty() {
                    // One message for `>>>` or a lone `>`.
                    break;
                }
            }
        }
        if bad {
            continue;
        }
        if let Some((m, _)) = numbered.iter().find(|(_, r)| same_route(r, &parsed)) {
            errors.push(format!("invalid PROXY: route {n} is the same as route {m}"));
        }
        numbered.push((n, parsed.clone()));
        routes.push(parsed);
    }
    // `direct` twice is the same route too.
    let directs: Vec<usize> = texts
        .iter()
        .enumerate()
        .filter(|(_, r)| r.eq_ignore_ascii_case("direct"))
        .map(|(i, _)| i + 1)
        .collect();
    if let [first, second, ..] = directs[..] {
        errors.push(format!(
            "invalid PROXY: route {second} is the same as route {first}"
        ));
    }
    if errors.is_empty() {
        Ok(routes)
    } else {
        Err(errors)
    }
}

/// Same scheme and address at every hop (credentials aside).
fn same_route(a: &ParsedRoute, b: &ParsedRoute) -> bool {
    !a.is_empty()
        && a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.tls == y.tls && x.addr == y.addr)
}

/// What the first hop of every route gets from the entry's options.
pub(super) struct FirstHop {
    /// From `auth`/`auth-file` (the line's or the defaults'), for first hops
    /// whose URL has no credentials.
    pub(super) credentials: Option<Credentials>,
    /// Where `credentials` came from, when from an `auth-file`.
    pub(super) auth_file: Option<PathBuf>,
    pub(super) auth_scheme: AuthScheme,
    pub(super) headers: Vec<String>,
}

/// The routes of an entry: each hop from its URL, the first hop of each
/// route with the entry's proxy options (its URL credentials winning).
pub(super) fn build_routes(parsed: &[ParsedRoute], first: &FirstHop) -> Vec<RouteSpec> {
    parsed
        .iter()
        .map(|hops| RouteSpec {
            hops: hops
                .iter()
                .enumerate()
                .map(|(j, hop)| {
                    let (credentials, auth_file) = match (&hop.credentials, j) {
                        (Some(own), _) => (Some(own.clone()), None),
                        (None, 0) => (first.credentials.clone(), first.auth_file.clone()),
                        (None, _) => (None, None),
                    };
                    let (auth_scheme, headers) = if j == 0 {
                        (first.auth_scheme, first.headers.clone())
                    } else {
                        (AuthScheme::Auto, Vec::new())
                    };
                    Proxy {
                        addr: hop.addr.clone(),
                        tls: hop.tls,
                        credentials,
                        auth_file,
                        auth_scheme,
                        headers,
                    }
                })
                .collect(),
        })
        .collect()
}

/// Pushes the error of `result`, if any, and returns its value.
pub(super) fn note<T>(result: Result<T, String>, errors: &mut Vec<String>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(message) => {
            errors.push(message);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;
    use crate::config::{AuthScheme, Dest, PathBuf, Proxy, RouteSpec};

    /// The routes of a line as `--check` shows them in logs.
    fn shown(line: &str) -> Vec<String> {
        one(line).routes.iter().map(ToString::to_string).collect()
    }

    fn plain(host: &str, port: u16) -> Proxy {
        Proxy {
            addr: hp(host, port),
            tls: false,
            credentials: None,
            auth_file: None,
            auth_scheme: AuthScheme::Auto,
            headers: vec![],
        }
    }

    #[test]
    fn route_list_forms() {
        assert_eq!(shown("2222 h 22 http://p:3128"), ["http://p:3128"]);
        assert_eq!(
            shown("2222 h 22 https://gw.corp:443"),
            ["https://gw.corp:443"]
        );
        assert_eq!(
            shown("2222 h 22 http://p1.corp:3128,http://p2.corp:3128,direct"),
            ["http://p1.corp:3128", "http://p2.corp:3128", "direct"]
        );
        assert_eq!(
            shown("2222 h 22 https://gw.corp:443>http://10.1.2.3:8080"),
            ["https://gw.corp:443>http://10.1.2.3:8080"]
        );
        assert_eq!(
            shown("2222 h 22 direct,HTTPS://[::1]:1>http://a:2>http://b:3,http://c:4"),
            [
                "direct",
                "https://[::1]:1>http://a:2>http://b:3",
                "http://c:4"
            ]
        );
        // `direct` alone (any case) is a direct entry.
        for line in ["2222 h 22 direct", "2222 h 22 DIRECT", "2222 h 22"] {
            let entry = one(line);
            assert_eq!(entry.routes, [RouteSpec::direct()], "{line}");
            assert!(!entry.is_proxied());
        }
        // As the last field only: `direct 3128` is a proxy host called direct.
        assert_eq!(shown("2222 h 22 direct 3128"), ["http://direct:3128"]);
        assert_eq!(shown("2222 h 22 env 3128"), ["http://env:3128"]);
        let entry = one("2222 h 22 http://p:1>https://q:2,direct");
        assert_eq!(entry.routes[0].hops[0], plain("p", 1));
        assert_eq!(
            entry.routes[0].hops[1],
            Proxy {
                tls: true,
                ..plain("q", 2)
            }
        );
        assert!(entry.is_proxied());
    }

    #[test]
    fn proxy_options_go_to_every_first_hop_and_url_credentials_win() {
        let entry = one(
            "2222 h 22 http://a:1>http://u2:p2@b:2,http://own:pw@c:3,http://d:4 auth=alice:s auth-scheme=digest header=X-A:1",
        );
        let with = |proxy: Proxy, user: &str, pw: &str| Proxy {
            credentials: Some(creds(user, pw)),
            auth_scheme: AuthScheme::Digest,
            headers: vec!["X-A: 1".into()],
            ..proxy
        };
        assert_eq!(
            entry.routes,
            [
                RouteSpec {
                    hops: vec![
                        with(plain("a", 1), "alice", "s"),
                        Proxy {
                            credentials: Some(creds("u2", "p2")),
                            ..plain("b", 2)
                        },
                    ]
                },
                RouteSpec {
                    hops: vec![with(plain("c", 3), "own", "pw")]
                },
                RouteSpec {
                    hops: vec![with(plain("d", 4), "alice", "s")]
                },
            ]
        );
        let entry = one("2222 h 22 http://u:p@a:1,http://b:2 auth-file=secret");
        assert_eq!(entry.routes[0].hops[0].auth_file, None);
        assert_eq!(
            entry.routes[1].hops[0].auth_file,
            Some(PathBuf::from("/etc/ht/secret"))
        );
        assert_eq!(
            entry.routes[1].hops[0].credentials,
            Some(creds("alice", "s3cret"))
        );
        // Where every first hop has its own, `auth` would reach no hop.
        assert_eq!(
            err1("2222 h 22 http://u:p@a:1,http://v:q@b:2>http://c:3 auth=x:y"),
            "x.conf:1: credentials given twice: in PROXY_URL and in auth (keep one)"
        );
        // Defaults credentials are simply not used there.
        ok("defaults auth=x:y\n2222 h 22 http://u:p@a:1,direct\n");
        // A direct route in the list: still a proxied entry.
        ok("2222 h 22 direct,http://a:1 auth=x:y proxy-backoff=5s");
    }

    #[test]
    fn route_list_errors_name_the_field() {
        for (proxy, message) in [
            ("http://a:1,,http://b:2", "invalid PROXY: route 2 is empty (two ',' in a row)"),
            (",http://a:1", "invalid PROXY: route 1 is empty (',' at the start)"),
            ("http://a:1,", "invalid PROXY: route 2 is empty (',' at the end)"),
            (">http://a:1", "invalid PROXY: '>' at the start of route 1"),
            ("http://a:1>", "invalid PROXY: '>' at the end of route 1"),
            ("http://a:1>>http://b:2", "invalid PROXY: two '>' in a row in route 1"),
            ("direct,http://a:1>", "invalid PROXY: '>' at the end of route 2"),
            (">", "invalid PROXY: '>' at the start of route 1"),
            ("direct>http://x:1", "invalid PROXY: direct inside a chain in route 1: direct is a route of its own (separate routes with ',')"),
            ("http://x:1>direct", "invalid PROXY: direct inside a chain in route 1: direct is a route of its own (separate routes with ',')"),
            ("socks5://p:1080", "unsupported proxy scheme \"socks5\" in PROXY_URL: only http:// and https:// are supported"),
            ("http://a:1,socks5://p:1080", "PROXY route 2: unsupported proxy scheme \"socks5\" in PROXY_URL: only http:// and https:// are supported"),
            ("http://a:1>socks4://p:1080", "PROXY route 1 hop 2: unsupported proxy scheme \"socks4\" in PROXY_URL: only http:// and https:// are supported"),
            ("http://a:1,p:3128", "PROXY route 2: invalid PROXY_URL: expected http://[USER:PASSWORD@]HOST:PORT"),
            ("http://a:1,http://b", "PROXY route 2: PROXY_URL needs a port: expected http://[USER:PASSWORD@]HOST:PORT"),
            ("http://a:1,http://a:1", "invalid PROXY: route 2 is the same as route 1"),
            ("http://u:p@a:1,direct,HTTP://a:1/", "invalid PROXY: route 3 is the same as route 1"),
            ("direct,http://a:1,direct", "invalid PROXY: route 3 is the same as route 1"),
        ] {
            assert_eq!(
                err1(&format!("2222 h 22 {proxy}")),
                format!("x.conf:1: {message}"),
                "{proxy}"
            );
        }
        // Different schemes or chains are different routes.
        ok("2222 h 22 http://a:1,https://a:1,http://a:1>http://b:2");
        // Every bad route is reported.
        assert_eq!(
            errs("2222 h 22 ,http://a:1>,direct>http://b:2"),
            [
                "x.conf:1: invalid PROXY: route 1 is empty (',' at the start)",
                "x.conf:1: invalid PROXY: '>' at the end of route 2",
                "x.conf:1: invalid PROXY: direct inside a chain in route 3: direct is a route of its own (separate routes with ',')",
            ]
        );
    }

    #[test]
    fn white_space_inside_the_route_list() {
        let message = "x.conf:1: white space inside PROXY: write the route list as one field, e.g. http://p1:3128,http://p2:3128,direct";
        for proxy in [
            "http://a:1, http://b:2",
            "http://a:1 ,http://b:2",
            "http://a:1 , http://b:2",
            "http://a:1 > http://b:2",
            "http://a:1> http://b:2",
            "http://a:1 http://b:2",
            "http://a:1 direct",
            "direct ,http://a:1",
            "direct, http://a:1",
        ] {
            assert_eq!(err1(&format!("2222 h 22 {proxy}")), message, "{proxy}");
        }
        // Not a list cut in two: the messages of before.
        assert_eq!(
            err1("2222 h 22 http://a:1,http://b:2 3128"),
            "x.conf:1: unexpected field \"3128\" after PROXY: expected LISTEN DEST_HOST DEST_PORT [PROXY_HOST PROXY_PORT | PROXY_URL] [KEY=VALUE ...]"
        );
    }

    #[test]
    fn client_named_entries() {
        let entry = one("1080 socks");
        assert_eq!(entry.dest, Dest::Socks);
        assert_eq!(entry.routes, [RouteSpec::direct()]);
        assert_eq!(one("8080 http").dest, Dest::Http);
        let entry = one("1080 socks proxy 3128");
        assert_eq!(
            (entry.dest.clone(), proxy_of(&entry).addr),
            (Dest::Socks, hp("proxy", 3128))
        );
        let entry = one("1080 http http://a:1,direct auth=u:p");
        assert_eq!(entry.routes.len(), 2);
        assert_eq!(proxy_of(&entry).credentials, Some(creds("u", "p")));
        assert_eq!(one("1080 socks direct").routes, [RouteSpec::direct()]);
        // A port as the third field: a fixed entry to a host called socks.
        let entry = one("1080 socks 22");
        assert_eq!(entry.dest, Dest::Fixed(hp("socks", 22)));
        assert_eq!(
            one("1080 http 80 proxy 3128").dest,
            Dest::Fixed(hp("http", 80))
        );
        // Exactly `socks` and `http`.
        assert_eq!(
            err1("1080 SOCKS"),
            "x.conf:1: missing DEST_PORT: expected LISTEN DEST_HOST DEST_PORT [PROXY_HOST PROXY_PORT | PROXY_URL] [KEY=VALUE ...]"
        );
        assert_eq!(
            err1("1080 socks proxy"),
            "x.conf:1: missing PROXY_PORT after PROXY_HOST \"proxy\": write the proxy as PROXY_HOST PROXY_PORT or as http://HOST:PORT"
        );
        assert_eq!(
            err1("1080 socks proxy 3128 extra"),
            "x.conf:1: unexpected field \"extra\" after PROXY_PORT: expected LISTEN socks|http [PROXY] [KEY=VALUE ...]"
        );
        assert_eq!(
            err1("1080 http auth=u:p"),
            "x.conf:1: option \"auth\" needs a proxy"
        );
        // A client-named entry has no fixed first hop to compare when direct,
        // but its proxies are checked.
        ok("127.0.0.1:1080 socks");
        assert_eq!(
            err1("1080 socks http://127.0.0.1:1080"),
            "x.conf:1: proxy 127.0.0.1:1080 is this entry's own listen address 127.0.0.1:1080: the tunnel would connect to itself"
        );
    }

    #[test]
    fn self_connect_is_checked_for_the_first_hop_of_every_route() {
        assert_eq!(
            err1("2222 h 22 http://p:1,http://127.0.0.1:2222>http://q:2"),
            "x.conf:1: proxy 127.0.0.1:2222 is this entry's own listen address 127.0.0.1:2222: the tunnel would connect to itself"
        );
        assert_eq!(
            err1("2222 127.0.0.1 2222 http://p:1,direct"),
            "x.conf:1: destination 127.0.0.1:2222 is this entry's own listen address 127.0.0.1:2222: the tunnel would connect to itself"
        );
        // A later hop may well be: it is reached through the first.
        ok("2222 h 22 http://p:1>http://127.0.0.1:2222");
    }
}
