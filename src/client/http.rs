//! The HTTP `CONNECT` request a client of an `http` entry sends, and every
//! answer it can get.
//!
//! Owns: the request head (`CONNECT host:port HTTP/1.x`, headers, a blank
//! line; parsed with httparse), the authority in it, and the answer bytes.
//! Never does: I/O, `allow`, resolving, logging, and never hands on a header
//! of the client's (its `Proxy-Authorization` included): [`super::Request`]
//! has no room for them.
//!
//! Decisions where SPEC leaves room: parsing is lenient where it costs
//! nothing (bare LF line ends, empty lines before the request line, runs of
//! spaces in the request line, header lines that are not valid headers); the
//! method is case-sensitive (RFC 9110 §9.1), so `connect` gets 405 like
//! `GET`; a 405 comes once the whole head is in, so closing after it leaves
//! no head bytes unread; the authority is `host:port` or `[IPv6]:port` with
//! a decimal port 1–65535, anything else (no port, userinfo, a scheme, an
//! IPv6 address without brackets) is 400; a head that is not complete within
//! [`MAX_REQUEST`] bytes is 400, whatever its method. Every answer but the
//! `200` has `Content-Type: text/plain; charset=utf-8`, `Content-Length` and
//! `Connection: close`, and a one-line body saying why.

use std::net::Ipv6Addr;

use super::{check_host, Kind, Outcome, Parse, Refusal, Request, MAX_REQUEST};

/// The success reply, exactly (SPEC).
pub const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// Header slots tried first; a head with more is parsed again with enough
/// slots for any head within [`MAX_REQUEST`] (a header line takes at least 3
/// bytes, `a:\n`).
const HEADERS_FIRST: usize = 64;

/// Longest method quoted in a [`Refusal::Method`], in bytes.
const METHOD_MAX: usize = 32;

/// Longest proxy status line quoted in a 502 body, in characters.
const QUOTE_MAX: usize = 200;

/// The request line of a complete head.
struct Line<'b> {
    method: &'b str,
    target: &'b str,
    minor: u8,
    head_len: usize,
}

/// Parses a head from the first byte; `window` is at most [`MAX_REQUEST`]
/// bytes (the parent cut it).
pub(super) fn parse(window: &[u8]) -> Parse {
    debug_assert!(window.len() <= MAX_REQUEST, "the parent cuts the window");
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_FIRST];
    let parsed = match parse_head(window, &mut headers) {
        Err(httparse::Error::TooManyHeaders) => {
            let mut headers = vec![httparse::EMPTY_HEADER; MAX_REQUEST / 3 + 1];
            parse_head(window, &mut headers).map(|line| line.map(request))
        }
        other => other.map(|line| line.map(request)),
    };
    match parsed {
        Ok(Some(parse)) => parse,
        Ok(None) if window.len() >= MAX_REQUEST => refuse(Refusal::TooLarge),
        Ok(None) => Parse::Partial { send: b"" },
        Err(e) => refuse(Refusal::Malformed(e.to_string())),
    }
}

/// One httparse pass; `Ok(None)` while the head is incomplete.
fn parse_head<'b>(
    window: &'b [u8],
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<Line<'b>>, httparse::Error> {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .ignore_invalid_headers_in_requests(true);
    let mut req = httparse::Request::new(headers);
    let head_len = match config.parse_request(&mut req, window)? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    // httparse sets all three before it can report Complete.
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(httparse::Error::Token);
    };
    Ok(Some(Line {
        method,
        target,
        minor,
        head_len,
    }))
}

/// What a complete head asks for.
fn request(line: Line<'_>) -> Parse {
    if line.method != "CONNECT" {
        let mut method = line.method.to_string();
        if method.len() > METHOD_MAX {
            // A token is ASCII, so any cut is a char boundary.
            method.truncate(METHOD_MAX);
            method.push_str("...");
        }
        return refuse(Refusal::Method(method));
    }
    match authority(line.target) {
        Ok((host, port)) => Parse::Complete(Request {
            host,
            port,
            kind: Kind::Http { minor: line.minor },
            head_len: line.head_len,
        }),
        Err(refusal) => refuse(refusal),
    }
}

/// `host:port` or `[IPv6]:port` into a checked host and a port.
fn authority(target: &str) -> Result<(String, u16), Refusal> {
    let malformed = |reason: &str| Refusal::Malformed(reason.to_string());
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| malformed("missing ']' after an IPv6 address"))?;
        let ip = inner
            .parse::<Ipv6Addr>()
            .map_err(|_| Refusal::Host("not an IPv6 address in brackets".to_string()))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| malformed("missing port after the host (host:port)"))?;
        (ip.to_string(), port)
    } else {
        let (host, port) = target
            .rsplit_once(':')
            .ok_or_else(|| malformed("missing port after the host (host:port)"))?;
        if host.parse::<Ipv6Addr>().is_ok() {
            return Err(malformed("IPv6 address without brackets"));
        }
        (check_host(host.as_bytes()).map_err(Refusal::Host)?, port)
    };
    // `u16::from_str` would take a leading `+`: digits only.
    let port = match port.parse::<u16>() {
        Ok(n) if n != 0 && port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => return Err(malformed("port is not a number from 1 to 65535")),
    };
    Ok((host, port))
}

fn refuse(refusal: Refusal) -> Parse {
    let bytes = match &refusal {
        Refusal::Method(_) => response(
            405,
            "Method Not Allowed",
            "Allow: CONNECT\r\n",
            &refusal.to_string(),
        ),
        _ => response(400, "Bad Request", "", &refusal.to_string()),
    };
    Parse::Reply(bytes, refusal)
}

/// The answer for `outcome`: `ESTABLISHED` on success; 403 when not
/// allowed; 502 when refused, not found, unreachable or for any other
/// failure (a proxy's refusal quoted in the body); 504 on timeout.
pub fn reply(request: &Request, outcome: &Outcome) -> Vec<u8> {
    let dest = request.destination();
    let (status, reason, body) = match outcome {
        Outcome::Ok => return ESTABLISHED.to_vec(),
        Outcome::NotAllowed => (403, "Forbidden", format!("destination {dest} not allowed")),
        Outcome::Refused => (502, "Bad Gateway", format!("connection to {dest} refused")),
        Outcome::NotFound => (
            502,
            "Bad Gateway",
            format!("host {} not found", request.host),
        ),
        Outcome::Unreachable => (502, "Bad Gateway", format!("{dest} unreachable")),
        Outcome::Timeout => (504, "Gateway Timeout", format!("timed out reaching {dest}")),
        Outcome::Other(why) => (
            502,
            "Bad Gateway",
            format!("cannot reach {dest}: {}", quote(why)),
        ),
    };
    response(status, reason, "", &body)
}

/// An error answer with a one-line text body.
fn response(status: u16, reason: &str, extra_headers: &str, text: &str) -> Vec<u8> {
    let body = format!("{text}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\n{extra_headers}Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `s` with control characters escaped, at most [`QUOTE_MAX`] characters
/// (then `...`), so it stays one line of the body whatever it holds.
fn quote(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == QUOTE_MAX {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{parse as parse_any, reply, Protocol};
    use super::*;

    fn parse(buf: &[u8]) -> Parse {
        parse_any(Protocol::Http, buf)
    }

    fn complete(host: &str, port: u16, minor: u8, head_len: usize) -> Parse {
        Parse::Complete(Request {
            host: host.to_string(),
            port,
            kind: Kind::Http { minor },
            head_len,
        })
    }

    fn answer(parse: Parse) -> (String, Refusal) {
        match parse {
            Parse::Reply(bytes, why) => (String::from_utf8(bytes).unwrap(), why),
            other => panic!("not a reply: {other:?}"),
        }
    }

    fn bad_request(body: &str) -> String {
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
            body.len() + 1
        )
    }

    // Captured from curl 7.88.1: `curl -p -x http://127.0.0.1:PORT URL`.
    const CURL: &[u8] = b"CONNECT Example.ORG:8080 HTTP/1.1\r\nHost: Example.ORG:8080\r\n\
        User-Agent: curl/7.88.1\r\nProxy-Connection: Keep-Alive\r\n\r\n";
    const CURL_V6: &[u8] = b"CONNECT [2001:db8::1]:8080 HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\
        User-Agent: curl/7.88.1\r\nProxy-Connection: Keep-Alive\r\n\r\n";

    #[test]
    fn curl_connect() {
        assert_eq!(parse(CURL), complete("Example.ORG", 8080, 1, CURL.len()));
        assert_eq!(parse(&CURL[..CURL.len() - 1]), Parse::Partial { send: b"" });
    }

    #[test]
    fn curl_connect_ipv6() {
        assert_eq!(
            parse(CURL_V6),
            complete("2001:db8::1", 8080, 1, CURL_V6.len())
        );
        let head = b"CONNECT [2001:DB8:0::1]:443 HTTP/1.1\r\n\r\n";
        assert_eq!(parse(head), complete("2001:db8::1", 443, 1, head.len()));
    }

    #[test]
    fn bare_lf_http_1_0_and_no_headers() {
        let head = b"CONNECT host.example.:22 HTTP/1.0\n\n";
        assert_eq!(parse(head), complete("host.example.", 22, 0, head.len()));
        let head = b"\r\nCONNECT  10.0.0.1:22  HTTP/1.1\nHost: x\n\r\n";
        assert_eq!(parse(head), complete("10.0.0.1", 22, 1, head.len()));
    }

    #[test]
    fn client_headers_are_skipped_even_when_invalid_or_many() {
        let head = b"CONNECT a.example:443 HTTP/1.1\r\nProxy-Authorization: Basic dTpw\r\n\
            Bad Header Line\r\nX: y\r\n\r\n";
        assert_eq!(parse(head), complete("a.example", 443, 1, head.len()));
        let mut head = b"CONNECT a.example:443 HTTP/1.1\r\n".to_vec();
        for i in 0..2000 {
            head.extend_from_slice(format!("h{i}:\n").as_bytes());
        }
        head.extend_from_slice(b"\n");
        assert_eq!(parse(&head), complete("a.example", 443, 1, head.len()));
    }

    #[test]
    fn head_of_max_request_bytes_is_fine_one_more_is_400() {
        let start = b"CONNECT a.example:443 HTTP/1.1\r\nX: ";
        let mut head = start.to_vec();
        head.resize(MAX_REQUEST - 4, b'v');
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&head), complete("a.example", 443, 1, MAX_REQUEST));
        let mut longer = start.to_vec();
        longer.resize(MAX_REQUEST - 3, b'v');
        longer.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse(&longer[..MAX_REQUEST - 1]),
            Parse::Partial { send: b"" }
        );
        let (bytes, why) = answer(parse(&longer));
        assert_eq!(why, Refusal::TooLarge);
        assert_eq!(bytes, bad_request("request head longer than 16384 bytes"));
    }

    #[test]
    fn other_methods_get_405_once_the_head_is_in() {
        let head = b"GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\n\r\n";
        assert_eq!(parse(&head[..head.len() - 1]), Parse::Partial { send: b"" });
        let (bytes, why) = answer(parse(head));
        assert_eq!(why, Refusal::Method("GET".to_string()));
        let body = "method \"GET\" not allowed (CONNECT only)\n";
        assert_eq!(
            bytes,
            format!(
                "HTTP/1.1 405 Method Not Allowed\r\nAllow: CONNECT\r\n\
                 Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
        );
        let (_, why) = answer(parse(b"connect a:1 HTTP/1.1\r\n\r\n"));
        assert_eq!(why, Refusal::Method("connect".to_string()));
        let long = format!("{} / HTTP/1.1\r\n\r\n", "M".repeat(100));
        let (_, why) = answer(parse(long.as_bytes()));
        assert_eq!(why, Refusal::Method(format!("{}...", "M".repeat(32))));
    }

    #[test]
    fn bad_authorities_get_400() {
        for (target, body) in [
            (
                "example.org",
                "malformed request: missing port after the host (host:port)",
            ),
            (
                "example.org:",
                "malformed request: port is not a number from 1 to 65535",
            ),
            (
                "example.org:0",
                "malformed request: port is not a number from 1 to 65535",
            ),
            (
                "example.org:65536",
                "malformed request: port is not a number from 1 to 65535",
            ),
            (
                "example.org:+80",
                "malformed request: port is not a number from 1 to 65535",
            ),
            (
                "example.org:80/",
                "malformed request: port is not a number from 1 to 65535",
            ),
            (
                "[::1]",
                "malformed request: missing port after the host (host:port)",
            ),
            (
                "[::1",
                "malformed request: missing ']' after an IPv6 address",
            ),
            (
                "[10.0.0.1]:80",
                "invalid destination: not an IPv6 address in brackets",
            ),
            (
                "[fe80::1%eth0]:80",
                "invalid destination: not an IPv6 address in brackets",
            ),
            ("::1:80", "malformed request: IPv6 address without brackets"),
            (":80", "invalid destination: empty host"),
            (
                "u@example.org:80",
                "invalid destination: character '@' not allowed in a host name",
            ),
            (
                "http://example.org:80",
                "invalid destination: character '/' not allowed in a host name",
            ),
            ("a..b:80", "invalid destination: empty label in host name"),
            ("127.1:80", "invalid destination: not a valid IPv4 address"),
        ] {
            let head = format!("CONNECT {target} HTTP/1.1\r\n\r\n");
            let (bytes, _) = answer(parse(head.as_bytes()));
            assert_eq!(bytes, bad_request(body), "{target}");
        }
    }

    #[test]
    fn malformed_heads_get_400_at_once() {
        for head in [
            &b"CONNECT a:1 HTTP/2.0\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"CONNECT a:1 HTTP/1.1\r\nX\x00: y\r\n",
        ] {
            let (bytes, why) = answer(parse(head));
            assert!(matches!(why, Refusal::Malformed(_)), "{head:?}: {why:?}");
            assert!(
                bytes.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{head:?}"
            );
        }
        assert_eq!(
            parse(b"CONNECT a:1 HTTP/1.1\r\n"),
            Parse::Partial { send: b"" }
        );
    }

    #[test]
    fn reply_for_every_outcome() {
        let request = Request {
            host: "2001:db8::1".to_string(),
            port: 443,
            kind: Kind::Http { minor: 0 },
            head_len: 40,
        };
        let expect = |status: &str, body: &str| {
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
                body.len() + 1
            )
        };
        let text = |outcome| String::from_utf8(reply(&request, &outcome)).unwrap();
        assert_eq!(
            text(Outcome::Ok),
            "HTTP/1.1 200 Connection established\r\n\r\n"
        );
        for (outcome, status, body) in [
            (
                Outcome::NotAllowed,
                "403 Forbidden",
                "destination [2001:db8::1]:443 not allowed",
            ),
            (
                Outcome::Refused,
                "502 Bad Gateway",
                "connection to [2001:db8::1]:443 refused",
            ),
            (
                Outcome::NotFound,
                "502 Bad Gateway",
                "host 2001:db8::1 not found",
            ),
            (
                Outcome::Unreachable,
                "502 Bad Gateway",
                "[2001:db8::1]:443 unreachable",
            ),
            (
                Outcome::Timeout,
                "504 Gateway Timeout",
                "timed out reaching [2001:db8::1]:443",
            ),
            (
                Outcome::Other("HTTP/1.1 407 Proxy Authentication Required".to_string()),
                "502 Bad Gateway",
                "cannot reach [2001:db8::1]:443: HTTP/1.1 407 Proxy Authentication Required",
            ),
            (
                Outcome::Other("bad\r\nX: injected".to_string()),
                "502 Bad Gateway",
                "cannot reach [2001:db8::1]:443: bad\\r\\nX: injected",
            ),
        ] {
            assert_eq!(text(outcome.clone()), expect(status, body), "{outcome:?}");
        }
        let long = Outcome::Other("é".repeat(300));
        assert!(text(long).ends_with(&format!(": {}...\n", "é".repeat(200))));
    }
}
