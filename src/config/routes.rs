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
