//! The `CONNECT` request we send to an HTTP proxy and the answer head it sends back.
//!
//! Owns: the bytes of the request (built from config values that were
//! validated at load, so they hold no CR, LF or other control character) and
//! the incremental parse of the proxy's answer head into a [`Head`]: status,
//! printable status line, authentication schemes offered, body framing.
//!
//! Never does: sockets, buffering, logging, timeouts, or deciding what to do
//! with an answer beyond [`is_success`]. The caller accumulates the bytes
//! received and calls [`parse_answer`] again after every read; bytes past
//! [`Head::head_len`] are tunnel payload (or a refusal's body) and are none of
//! this module's business.
//!
//! Contract of [`parse_answer`], for any input: it never panics; it returns
//! [`Answer::Partial`] only while the bytes so far are a valid beginning of a
//! head shorter than [`MAX_HEAD`]; [`Answer::Complete`] as soon as the blank
//! line ending the head is in, with `head_len <= MAX_HEAD`; an error
//! otherwise. Feeding the same answer in any number of pieces gives the same
//! result. Parsing is lenient where proxies are known to be sloppy: bare LF
//! line ends, a missing reason phrase, runs of spaces in the status line,
//! spaces before a header's colon, folded header lines, and header lines that
//! are not valid headers (skipped).
//!
//! Authentication lives in [`crate::auth`]; [`Head`] reports the
//! schemes a 407 offers and how its body is framed, for Digest and NTLM later.

use std::fmt;

use crate::config::is_token_char as is_tchar;

/// Longest answer head (status line through blank line) accepted, in bytes.
pub const MAX_HEAD: usize = 16384;

/// Longest status line kept in [`Head::status_line`], in bytes (before `...`).
const STATUS_LINE_MAX: usize = 200;

/// Longest excerpt of a bad first line quoted in a [`ParseError::Malformed`], in bytes.
const EXCERPT_MAX: usize = 64;

/// Header slots tried first; an answer with more headers is parsed again with
/// enough slots for any head within [`MAX_HEAD`] (a header line takes at least
/// 3 bytes, `a:\n`).
const HEADERS_FIRST: usize = 64;

/// The whole request, exactly:
///
/// ```text
/// CONNECT host:port HTTP/1.1\r\n
/// Host: host:port\r\n
/// Proxy-Authorization: <proxy_authorization>\r\n     (when given)
/// <each of headers>\r\n
/// \r\n
/// ```
///
/// `dest_authority` comes from [`authority`]; `proxy_authorization` is a
/// header value such as [`crate::auth::basic`] returns; `headers` are
/// `Name: value` lines from the config. All were validated at load: none holds
/// CR or LF, so none can end the head early.
pub fn build_request(
    dest_authority: &str,
    proxy_authorization: Option<&str>,
    headers: &[String],
) -> Vec<u8> {
    debug_assert!(
        std::iter::once(dest_authority)
            .chain(proxy_authorization)
            .chain(headers.iter().map(String::as_str))
            .all(|s| !s.contains(['\r', '\n'])),
        "CONNECT request parts are validated by config and hold no CR or LF"
    );
    let mut request = Vec::with_capacity(
        64 + 2 * dest_authority.len()
            + proxy_authorization.map_or(0, |a| a.len() + 23)
            + headers.iter().map(|h| h.len() + 2).sum::<usize>(),
    );
    request.extend_from_slice(b"CONNECT ");
    request.extend_from_slice(dest_authority.as_bytes());
    request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    request.extend_from_slice(dest_authority.as_bytes());
    request.extend_from_slice(b"\r\n");
    if let Some(authorization) = proxy_authorization {
        request.extend_from_slice(b"Proxy-Authorization: ");
        request.extend_from_slice(authorization.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    for header in headers {
        request.extend_from_slice(header.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request
}

/// Whether a `CONNECT` answer with this status opens the tunnel: 2xx only.
/// Any other status, 1xx included, ends the attempt.
pub fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A valid beginning of a head: read more and call [`parse_answer`] again
    /// with all the bytes. The bytes so far are fewer than [`MAX_HEAD`].
    Partial,
    /// The head is complete.
    Complete(Head),
}

/// A complete answer head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Status code, e.g. 200 or 407.
    pub status: u16,
    /// Bytes of the head, status line through the blank line (and any empty
    /// lines before the status line). Bytes after it are not part of the head.
    pub head_len: usize,
    /// The status line for logs, e.g. `HTTP/1.1 407 Proxy Authentication
    /// Required`: anything outside printable ASCII escaped, cut at 200
    /// bytes (then ending in `...`).
    pub status_line: String,
    /// Authentication schemes offered by the `Proxy-Authenticate` headers, in
    /// order of appearance, each once (compared without case), as written,
    /// e.g. `["Basic", "NTLM"]`. Several challenges in one header
    /// (comma-separated) are all listed.
    pub proxy_authenticate: Vec<String>,
    /// The `Proxy-Authenticate` values as sent, one per header line (bytes
    /// outside UTF-8 replaced), for [`crate::auth::challenge::parse`].
    pub challenges: Vec<String>,
    /// The body length from `Content-Length`, if it is present, valid and
    /// consistent, and no `Transfer-Encoding` overrides it.
    pub content_length: Option<u64>,
    /// Whether the body is chunked (`Transfer-Encoding` ends with `chunked`).
    pub chunked: bool,
    /// Whether the proxy's connection cannot carry another request after this
    /// answer: `Connection: close`, an HTTP/1.0 answer without `Connection:
    /// keep-alive`, or body framing that cannot be trusted (a
    /// `Transfer-Encoding` not ending in `chunked`, `Transfer-Encoding` with
    /// `Content-Length`, an invalid or conflicting `Content-Length`).
    pub connection_close: bool,
}

/// Why bytes received are not a usable answer head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// No complete head within the first [`MAX_HEAD`] bytes.
    TooLarge,
    /// Not an HTTP/1.x answer head; the reason is short and printable.
    Malformed(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooLarge => write!(f, "answer head longer than {MAX_HEAD} bytes"),
            ParseError::Malformed(reason) => write!(f, "malformed answer: {reason}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses the answer head from all the bytes received so far.
///
/// Incremental: call it again with more bytes after [`Answer::Partial`].
/// `buf` may run past the head (payload in the same read); only the first
/// [`MAX_HEAD`] bytes are ever looked at.
///
/// # Errors
///
/// [`ParseError::TooLarge`] when no head ends within [`MAX_HEAD`] bytes;
/// [`ParseError::Malformed`] as soon as the bytes cannot begin a valid head.
pub fn parse_answer(buf: &[u8]) -> Result<Answer, ParseError> {
    // A head that fits ends within the first MAX_HEAD bytes, so a window of
    // that size decides everything and bounds the work.
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_FIRST];
    let parsed = match parse_window(window, &mut headers) {
        Err(httparse::Error::TooManyHeaders) => {
            let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEAD / 3 + 1];
            parse_window(window, &mut headers)
        }
        other => other,
    };
    match parsed {
        Ok(Some(head)) => Ok(Answer::Complete(head)),
        Ok(None) if window.len() == MAX_HEAD => Err(ParseError::TooLarge),
        Ok(None) => Ok(Answer::Partial),
        Err(e) => Err(ParseError::Malformed(describe(e, window))),
    }
}

/// One httparse pass over `window`; `Ok(None)` when incomplete.
fn parse_window<'b>(
    window: &'b [u8],
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<Head>, httparse::Error> {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .ignore_invalid_headers_in_responses(true);
    let mut response = httparse::Response::new(headers);
    let head_len = match config.parse_response(&mut response, window)? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    // httparse sets version and code before it can report Complete.
    let (Some(version), Some(status)) = (response.version, response.code) else {
        return Err(httparse::Error::Status);
    };
    let mut head = Head {
        status,
        head_len,
        status_line: printable(first_line(window), STATUS_LINE_MAX),
        proxy_authenticate: Vec::new(),
        challenges: Vec::new(),
        content_length: None,
        chunked: false,
        connection_close: false,
    };
    let mut lengths: Vec<&[u8]> = Vec::new();
    let mut codings: Option<Vec<&[u8]>> = None;
    let (mut close, mut keep_alive) = (false, false);
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("proxy-authenticate") {
            offered_schemes(header.value, &mut head.proxy_authenticate);
            head.challenges
                .push(String::from_utf8_lossy(header.value).into_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths.extend(list_items(header.value));
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings
                .get_or_insert_with(Vec::new)
                .extend(list_items(header.value));
        } else if name.eq_ignore_ascii_case("connection") {
            for option in list_items(header.value) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    // Body framing as RFC 9112 §6.3 reads it for a response.
    let untrusted_framing = match codings {
        Some(codings) => {
            head.chunked = codings
                .last()
                .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
            !head.chunked || !lengths.is_empty()
        }
        None if lengths.is_empty() => false,
        None => {
            head.content_length = content_length(&lengths);
            head.content_length.is_none()
        }
    };
    head.connection_close = close || (version == 0 && !keep_alive) || untrusted_framing;
    Ok(Some(head))
}

/// The one value all `Content-Length` items agree on, if they are all valid.
fn content_length(items: &[&[u8]]) -> Option<u64> {
    let mut value = None;
    for item in items {
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(item).ok()?.parse::<u64>().ok()?;
        if value.is_some_and(|v| v != n) {
            return None;
        }
        value = Some(n);
    }
    value
}

/// The non-empty, trimmed items of a comma-separated header value.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|s| !s.is_empty())
}

/// Adds to `out` the schemes of the challenges in one `Proxy-Authenticate`
/// value (RFC 9110 §11.3, §11.6.1): `#challenge` where
/// `challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`. Its
/// comma-separated elements (commas inside quoted strings do not count) each
/// start a challenge, unless they are an `auth-param` (`name = value`)
/// continuing the previous one.
fn offered_schemes(value: &[u8], out: &mut Vec<String>) {
    for element in split_outside_quotes(value) {
        let element = trim(element);
        let token_len = element.iter().take_while(|&&b| is_tchar(b)).count();
        if token_len == 0 {
            continue;
        }
        let (token, rest) = element.split_at(token_len);
        let rest_trimmed = trim(rest);
        let is_param = rest_trimmed.first() == Some(&b'=');
        let separated = rest.first().map_or(true, |&b| is_space(b));
        if is_param || !separated {
            continue;
        }
        // tchars are ASCII, so this is valid UTF-8.
        let scheme = String::from_utf8_lossy(token).into_owned();
        if !out.iter().any(|s| s.eq_ignore_ascii_case(&scheme)) {
            out.push(scheme);
        }
    }
}

/// Splits on commas that are not inside a quoted string (with `\` escapes).
fn split_outside_quotes(value: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in value.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == b',' && !quoted {
            parts.push(&value[start..i]);
            start = i + 1;
        }
    }
    parts.push(&value[start..]);
    parts
}

/// White space inside a header value (CR and LF appear in folded lines).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_space(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_space(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// The first non-empty line of `buf` (without its line end), as far as it goes.
fn first_line(buf: &[u8]) -> &[u8] {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let line = &line[..end];
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `bytes` made safe for a log line: printable ASCII kept, everything else
/// escaped (`\t`, `\u{1b}`, `\u{fffd}` for invalid UTF-8); when that exceeds
/// `max_len` bytes, cut to at most `max_len` and `...` appended.
fn printable(bytes: &[u8], max_len: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len().min(max_len + 3));
    for c in text.chars() {
        let before = out.len();
        if c == ' ' || c.is_ascii_graphic() {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
        if out.len() > max_len {
            out.truncate(before);
            out.push_str("...");
            break;
        }
    }
    out
}

/// A short reason for an httparse error, quoting the first line when that is
/// where the problem lies.
fn describe(error: httparse::Error, window: &[u8]) -> String {
    let line = || printable(first_line(window), EXCERPT_MAX);
    match error {
        httparse::Error::Version => format!("not an HTTP/1.x status line: \"{}\"", line()),
        httparse::Error::Status => format!("invalid status line: \"{}\"", line()),
        httparse::Error::NewLine => "invalid line ending".to_owned(),
        httparse::Error::HeaderName => "invalid header name".to_owned(),
        httparse::Error::HeaderValue => "invalid header value".to_owned(),
        httparse::Error::Token => "invalid token".to_owned(),
        httparse::Error::TooManyHeaders => "too many headers".to_owned(),
    }
}

/// Most bytes of a refusal's body read to keep its connection (SPEC: a
/// 407's body is drained up to 1 MiB).
pub const MAX_BODY: u64 = 1 << 20;

/// Reads past the body of an answer that is not the tunnel (a 407 being
/// answered on the same connection), framed by `Content-Length` or chunked
/// (RFC 9112 §7.1: sizes in hex, extensions and trailers skipped). Bytes can
/// be fed in pieces of any size; at most [`MAX_BODY`] bytes in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyDrain {
    state: Drain,
    /// Bytes fed so far.
    seen: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// This many body bytes are left.
    Length(u64),
    /// In a chunk-size line: the size so far and its digit count.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: extensions, up to the LF.
    SizeRest {
        size: u64,
    },
    /// Chunk data left, then its CRLF.
    Data(u64),
    /// The CR or LF after a chunk's data.
    DataEnd,
    /// At the start of a trailer line (an empty one ends the body).
    TrailerStart,
    /// Inside a trailer line, up to its LF.
    Trailer,
    Done,
}

impl BodyDrain {
    /// A body of `length` bytes.
    pub fn length(length: u64) -> BodyDrain {
        BodyDrain {
            state: if length == 0 {
                Drain::Done
            } else {
                Drain::Length(length)
            },
            seen: 0,
        }
    }

    /// A chunked body.
    pub fn chunked() -> BodyDrain {
        BodyDrain {
            state: Drain::Size { size: 0, digits: 0 },
            seen: 0,
        }
    }

    /// Whether the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == Drain::Done
    }

    /// Takes body bytes from the front of `bytes`; returns how many were
    /// body (the rest, if any, come after it).
    ///
    /// # Errors
    /// A malformed chunked framing, or a body over [`MAX_BODY`] bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, String> {
        let mut used = 0;
        while used < bytes.len() && self.state != Drain::Done {
            let rest = &bytes[used..];
            let b = rest[0];
            let mut step = 1;
            self.state = match self.state {
                Drain::Length(left) | Drain::Data(left) => {
                    let take = left.min(rest.len() as u64);
                    step = take as usize;
                    match (self.state, left - take) {
                        (Drain::Length(_), 0) => Drain::Done,
                        (Drain::Length(_), n) => Drain::Length(n),
                        (_, 0) => Drain::DataEnd,
                        (_, n) => Drain::Data(n),
                    }
                }
                Drain::Size { size, digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => Drain::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => {
                        return Err("its chunked body is malformed (chunk size too large)".into())
                    }
                    None if digits == 0 => {
                        return Err("its chunked body is malformed (chunk size missing)".into())
                    }
                    None => Self::after_size(size, b)?,
                },
                Drain::SizeRest { size } => Self::after_size(size, b)?,
                Drain::DataEnd => match b {
                    b'\r' => Drain::DataEnd,
                    b'\n' => Drain::Size { size: 0, digits: 0 },
                    _ => {
                        return Err(
                            "its chunked body is malformed (no line end after chunk data)".into(),
                        )
                    }
                },
                Drain::TrailerStart => match b {
                    b'\r' => Drain::TrailerStart,
                    b'\n' => Drain::Done,
                    _ => Drain::Trailer,
                },
                Drain::Trailer if b == b'\n' => Drain::TrailerStart,
                Drain::Trailer => Drain::Trailer,
                Drain::Done => Drain::Done,
            };
            used += step;
            self.seen += step as u64;
            if self.seen > MAX_BODY {
                return Err(format!("its body is over {} MiB", MAX_BODY >> 20));
            }
        }
        Ok(used)
    }

    /// The state after byte `b` that follows a chunk size of `size`.
    fn after_size(size: u64, b: u8) -> Result<Drain, String> {
        Ok(match b {
            b'\n' if size == 0 => Drain::TrailerStart,
            b'\n' => {
                if size > MAX_BODY {
                    return Err(format!("its body is over {} MiB", MAX_BODY >> 20));
                }
                Drain::Data(size)
            }
            b if b.is_ascii_control() && b != b'\r' && b != b'\t' => {
                return Err(
                    "its chunked body is malformed (control character in a chunk-size line)".into(),
                )
            }
            _ => Drain::SizeRest { size },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn complete(buf: &[u8]) -> Head {
        match parse_answer(buf) {
            Ok(Answer::Complete(head)) => head,
            other => panic!(
                "{:?}: expected a complete head, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn malformed(buf: &[u8]) -> String {
        match parse_answer(buf) {
            Err(ParseError::Malformed(reason)) => reason,
            other => panic!(
                "{:?}: expected malformed, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    /// Every proper prefix of the head is `Partial`; the head alone, and the
    /// head followed by any part of `payload`, give the same `Head`.
    fn check_split_everywhere(head: &[u8], payload: &[u8]) -> Head {
        let expected = complete(head);
        assert_eq!(expected.head_len, head.len());
        for k in 0..head.len() {
            assert_eq!(
                parse_answer(&head[..k]),
                Ok(Answer::Partial),
                "prefix of {k} bytes of {:?}",
                String::from_utf8_lossy(head)
            );
        }
        let whole = [head, payload].concat();
        for k in head.len()..=whole.len() {
            assert_eq!(complete(&whole[..k]), expected, "prefix of {k} bytes");
        }
        expected
    }

    struct Case {
        answer: &'static [u8],
        status: u16,
        status_line: &'static str,
        schemes: &'static [&'static str],
        content_length: Option<u64>,
        chunked: bool,
        connection_close: bool,
    }

    const fn case(answer: &'static [u8], status: u16, status_line: &'static str) -> Case {
        Case {
            answer,
            status,
            status_line,
            schemes: &[],
            content_length: None,
            chunked: false,
            connection_close: false,
        }
    }

    fn table() -> Vec<Case> {
        vec![
            case(b"HTTP/1.1 200 Connection established\r\n\r\n", 200, "HTTP/1.1 200 Connection established"),
            Case {
                connection_close: true,
                ..case(b"HTTP/1.0 200 Connection established\r\n\r\n", 200, "HTTP/1.0 200 Connection established")
            },
            case(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", 200, "HTTP/1.0 200 OK"),
            case(b"HTTP/1.1 200\r\n\r\n", 200, "HTTP/1.1 200"),
            case(b"HTTP/1.1 200 \r\n\r\n", 200, "HTTP/1.1 200 "),
            case(b"HTTP/1.1 200\n\n", 200, "HTTP/1.1 200"),
            case(b"HTTP/1.1  200  OK\r\n\r\n", 200, "HTTP/1.1  200  OK"),
            case(b"HTTP/1.1 200 OK\nProxy-Agent: tinyproxy/1.11\n\n", 200, "HTTP/1.1 200 OK"),
            case(b"HTTP/1.1 200 OK\r\nVia: 1.1 squid\n\r\n", 200, "HTTP/1.1 200 OK"),
            case(b"\r\n\nHTTP/1.1 200 OK\r\n\r\n", 200, "HTTP/1.1 200 OK"),
            Case {
                connection_close: true,
                ..case(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", 200, "HTTP/1.1 200 OK")
            },
            Case {
                connection_close: true,
                ..case(b"HTTP/1.1 200 OK\r\nconnection: Upgrade, CLOSE\r\n\r\n", 200, "HTTP/1.1 200 OK")
            },
            Case {
                content_length: Some(0),
                ..case(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "HTTP/1.1 200 OK")
            },
            Case {
                chunked: true,
                ..case(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 200, "HTTP/1.1 200 OK")
            },
            case(b"HTTP/1.1 204 No Content\r\n\r\n", 204, "HTTP/1.1 204 No Content"),
            case(b"HTTP/1.1 299 Whatever\r\n\r\n", 299, "HTTP/1.1 299 Whatever"),
            case(b"HTTP/1.1 100 Continue\r\n\r\n", 100, "HTTP/1.1 100 Continue"),
            case(b"HTTP/1.1 300 Multiple Choices\r\n\r\n", 300, "HTTP/1.1 300 Multiple Choices"),
            Case {
                schemes: &["Basic"],
                content_length: Some(3),
                ..case(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                      Proxy-Authenticate: Basic realm=\"squid proxy\"\r\n\
                      Content-Length: 3\r\n\r\n",
                    407,
                    "HTTP/1.1 407 Proxy Authentication Required",
                )
            },
            Case {
                schemes: &["NTLM", "Negotiate", "Basic"],
                content_length: Some(10),
                ..case(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                      Proxy-Authenticate: NTLM\r\n\
                      Server: x\r\n\
                      Proxy-Authenticate: Negotiate\r\n\
                      proxy-authenticate: Basic realm=\"corp\"\r\n\
                      Content-Length: 10\r\n\r\n",
                    407,
                    "HTTP/1.1 407 Proxy Authentication Required",
                )
            },
            Case {
                schemes: &["Digest", "Basic", "NTLM"],
                chunked: true,
                ..case(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                      Proxy-Authenticate: Digest realm=\"a, b\", nonce=\"x\\\", y\", qop=\"auth,auth-int\", \
                      algorithm=MD5, Basic realm = \"c\", NTLM\r\n\
                      Transfer-Encoding: chunked\r\n\r\n",
                    407,
                    "HTTP/1.1 407 Proxy Authentication Required",
                )
            },
            Case {
                schemes: &["Negotiate", "basic"],
                connection_close: true,
                ..case(
                    b"HTTP/1.0 407 Proxy Authentication Required\r\n\
                      Proxy-Authenticate: Negotiate TlRMTVNTUAABAAAAB4IIAAAAAAAAAAAAAAAAAAAAAAA=, basic\r\n\
                      Proxy-Authenticate: BASIC realm=\"again\"\r\n\r\n",
                    407,
                    "HTTP/1.0 407 Proxy Authentication Required",
                )
            },
            Case {
                content_length: Some(5),
                ..case(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n",
                    502,
                    "HTTP/1.1 502 Bad Gateway",
                )
            },
            Case {
                connection_close: true,
                ..case(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 5, 6\r\n\r\n", 502, "HTTP/1.1 502 Bad Gateway")
            },
            Case {
                connection_close: true,
                ..case(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: -1\r\n\r\n", 502, "HTTP/1.1 502 Bad Gateway")
            },
            Case {
                connection_close: true,
                ..case(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                    502,
                    "HTTP/1.1 502 Bad Gateway",
                )
            },
            Case {
                chunked: true,
                connection_close: true,
                ..case(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                    403,
                    "HTTP/1.1 403 Forbidden",
                )
            },
            Case {
                connection_close: true,
                ..case(b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 403, "HTTP/1.1 403 Forbidden")
            },
            // Lenient: not-a-header lines are skipped, folded lines and a space before the colon accepted.
            case(b"HTTP/1.1 200 OK\r\nthis is not a header\r\n\r\n", 200, "HTTP/1.1 200 OK"),
            Case {
                schemes: &["Basic", "NTLM"],
                ..case(
                    b"HTTP/1.1 407 Nope\r\nProxy-Authenticate : Basic realm=x,\r\n NTLM\r\n\r\n",
                    407,
                    "HTTP/1.1 407 Nope",
                )
            },
            case(b"HTTP/1.1 407 Auth\tRequired\r\n\r\n", 407, "HTTP/1.1 407 Auth\\tRequired"),
            case(b"HTTP/1.1 407 Zug\xe4nglich\r\n\r\n", 407, "HTTP/1.1 407 Zug\\u{fffd}nglich"),
            case(b"HTTP/1.1 000 zero\r\n\r\n", 0, "HTTP/1.1 000 zero"),
        ]
    }

    #[test]
    fn answer_table() {
        for case in table() {
            let head =
                check_split_everywhere(case.answer, b"payload \x00\xff HTTP/1.1 500 x\r\n\r\n");
            let what = String::from_utf8_lossy(case.answer);
            assert_eq!(head.status, case.status, "{what}");
            assert_eq!(head.status_line, case.status_line, "{what}");
            assert_eq!(head.proxy_authenticate, case.schemes, "{what}");
            assert_eq!(head.content_length, case.content_length, "{what}");
            assert_eq!(head.chunked, case.chunked, "{what}");
            assert_eq!(head.connection_close, case.connection_close, "{what}");
        }
    }

    #[test]
    fn payload_after_head_is_not_part_of_it() {
        let buf = b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-OpenSSH_9.6\r\n";
        let head = complete(buf);
        assert_eq!(&buf[head.head_len..], b"SSH-2.0-OpenSSH_9.6\r\n");
        let buf = b"HTTP/1.1 200 OK\n\nHTTP/1.1 407 x\n\n";
        let head = complete(buf);
        assert_eq!(head.status, 200);
        assert_eq!(&buf[head.head_len..], b"HTTP/1.1 407 x\n\n");
    }

    #[test]
    fn informational_answer_is_complete_and_not_success() {
        let buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
        let head = complete(buf);
        assert_eq!(head.status, 100);
        assert_eq!(head.head_len, 25);
        assert!(!is_success(head.status));
    }

    #[test]
    fn success_is_2xx_only() {
        for status in [200, 201, 204, 250, 299] {
            assert!(is_success(status), "{status}");
        }
        for status in [0, 100, 101, 199, 300, 302, 407, 502, 999] {
            assert!(!is_success(status), "{status}");
        }
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(malformed(b"SSH-2.0-OpenSSH_9.6\r\n")
            .contains("not an HTTP/1.x status line: \"SSH-2.0-OpenSSH_9.6\""));
        assert!(malformed(b"X").starts_with("not an HTTP/1.x status line"));
        assert!(malformed(b"\x16\x03\x01\x02\x00").contains("\\u{16}\\u{3}\\u{1}"));
        assert!(malformed(b"HTTP/2 200\r\n\r\n").starts_with("not an HTTP/1.x"));
        assert!(malformed(b"HTTP/1.2 200 OK\r\n\r\n").starts_with("not an HTTP/1.x"));
        assert!(malformed(b"HTTP/1.1 abc\r\n\r\n").starts_with("invalid status line"));
        assert!(malformed(b"HTTP/1.1 20 OK\r\n\r\n").starts_with("invalid status line"));
        assert!(malformed(b"HTTP/1.1 2000 OK\r\n\r\n").starts_with("invalid status line"));
        assert!(malformed(b"HTTP/1.1 200 O\x00K\r\n\r\n").starts_with("invalid status line"));
        assert!(malformed(b"HTTP/1.1 200 OK\r\r\n\r\n").starts_with("invalid status line"));
        assert!(malformed(b"<html>").starts_with("not an HTTP/1.x"));
        // An excerpt is short.
        let long = [b"X".repeat(1000), b"\r\n".to_vec()].concat();
        assert!(malformed(&long).len() < 120);
    }

    #[test]
    fn bad_line_after_blank_line_is_payload() {
        assert_eq!(complete(b"HTTP/1.1 200 OK\r\n\r\n\x00\r\r").head_len, 19);
    }

    #[test]
    fn head_of_exactly_max_head_is_accepted() {
        let start = b"HTTP/1.1 200 OK\r\nX-Pad: ";
        let end = b"\r\n\r\n";
        let pad = MAX_HEAD - start.len() - end.len();
        let head = [&start[..], &b"a".repeat(pad), end].concat();
        assert_eq!(head.len(), MAX_HEAD);
        assert_eq!(complete(&head).head_len, MAX_HEAD);
        let with_payload = [head, b"payload".to_vec()].concat();
        assert_eq!(complete(&with_payload).head_len, MAX_HEAD);
    }

    #[test]
    fn head_over_max_head_is_too_large() {
        let start = b"HTTP/1.1 200 OK\r\nX-Pad: ";
        let end = b"\r\n\r\n";
        let pad = MAX_HEAD + 1 - start.len() - end.len();
        let head = [&start[..], &b"a".repeat(pad), end].concat();
        assert_eq!(parse_answer(&head[..MAX_HEAD - 1]), Ok(Answer::Partial));
        assert_eq!(parse_answer(&head[..MAX_HEAD]), Err(ParseError::TooLarge));
        assert_eq!(parse_answer(&head), Err(ParseError::TooLarge));
    }

    #[test]
    fn endless_headers_are_too_large() {
        let mut buf = b"HTTP/1.1 200 OK\r\n".to_vec();
        while buf.len() < 3 * MAX_HEAD {
            buf.extend_from_slice(b"X-Filler: yes\r\n");
            let expected = if buf.len() < MAX_HEAD {
                Ok(Answer::Partial)
            } else {
                Err(ParseError::TooLarge)
            };
            assert_eq!(parse_answer(&buf), expected, "at {} bytes", buf.len());
        }
        let mut blank_lines = vec![b'\n'; MAX_HEAD - 1];
        assert_eq!(parse_answer(&blank_lines), Ok(Answer::Partial));
        blank_lines.push(b'\n');
        assert_eq!(parse_answer(&blank_lines), Err(ParseError::TooLarge));
    }

    #[test]
    fn many_headers_are_fine() {
        let mut buf = b"HTTP/1.1 407 Auth\r\n".to_vec();
        for i in 0..1000 {
            buf.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        buf.extend_from_slice(b"Proxy-Authenticate: Digest realm=x\r\n\r\n");
        let head = complete(&buf);
        assert_eq!(head.head_len, buf.len());
        assert_eq!(head.proxy_authenticate, ["Digest"]);
        // The smallest header lines possible, as many as fit.
        let mut buf = b"HTTP/1.1 200\n".to_vec();
        while buf.len() + 4 <= MAX_HEAD {
            buf.extend_from_slice(b"a:\n");
        }
        buf.push(b'\n');
        assert_eq!(complete(&buf).head_len, buf.len());
    }

    #[test]
    fn long_status_line_is_cut() {
        let buf = [&b"HTTP/1.1 407 "[..], &b"r".repeat(500), b"\r\n\r\n"].concat();
        let head = complete(&buf);
        assert_eq!(head.status_line.len(), 203);
        assert!(head.status_line.ends_with("rrr..."));
    }

    #[test]
    fn empty_input_is_partial() {
        assert_eq!(parse_answer(b""), Ok(Answer::Partial));
    }

    #[test]
    fn errors_display_lowercase() {
        assert_eq!(
            ParseError::TooLarge.to_string(),
            "answer head longer than 16384 bytes"
        );
        assert_eq!(
            ParseError::Malformed("invalid status line: \"x\"".into()).to_string(),
            "malformed answer: invalid status line: \"x\""
        );
    }

    // ---- the request ----

    #[test]
    fn request_without_auth() {
        assert_eq!(
            build_request("example.com:22", None, &[]),
            b"CONNECT example.com:22 HTTP/1.1\r\nHost: example.com:22\r\n\r\n"
        );
    }

    #[test]
    fn request_with_auth_and_headers() {
        let auth = crate::auth::basic("Aladdin", "open sesame");
        assert_eq!(auth, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        let headers = vec![
            "User-Agent: Mozilla/5.0 (X11)".to_owned(),
            "X-Team: ops".to_owned(),
        ];
        assert_eq!(
            build_request("db.internal:5432", Some(&auth), &headers),
            b"CONNECT db.internal:5432 HTTP/1.1\r\n\
              Host: db.internal:5432\r\n\
              Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\
              User-Agent: Mozilla/5.0 (X11)\r\n\
              X-Team: ops\r\n\
              \r\n"
        );
    }

    #[test]
    fn request_with_headers_only() {
        let headers = vec!["User-Agent: curl/8.5.0".to_owned()];
        assert_eq!(
            build_request("h:1", None, &headers),
            b"CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\nUser-Agent: curl/8.5.0\r\n\r\n"
        );
    }

    #[test]
    fn request_to_ipv6_destination() {
        assert_eq!(
            build_request("[2001:db8::1]:443", None, &[]),
            b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n"
        );
    }

    // ---- properties ----

    fn check_contract(buf: &[u8]) -> Result<(), TestCaseError> {
        match parse_answer(buf) {
            Ok(Answer::Partial) => prop_assert!(buf.len() < MAX_HEAD),
            Ok(Answer::Complete(head)) => {
                prop_assert!(head.head_len > 0 && head.head_len <= buf.len().min(MAX_HEAD));
                prop_assert!(head.status_line.len() <= STATUS_LINE_MAX + 3);
                // The same head from the head alone, and Partial one byte short.
                prop_assert_eq!(
                    parse_answer(&buf[..head.head_len]),
                    Ok(Answer::Complete(head.clone()))
                );
                prop_assert_eq!(parse_answer(&buf[..head.head_len - 1]), Ok(Answer::Partial));
            }
            Err(ParseError::TooLarge) => prop_assert!(buf.len() >= MAX_HEAD),
            Err(ParseError::Malformed(reason)) => {
                prop_assert!(!reason.is_empty() && reason.len() < 200);
                prop_assert!(reason.chars().all(|c| c == ' ' || c.is_ascii_graphic()));
            }
        }
        Ok(())
    }

    fn line_end() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("\r\n"), Just("\n")]
    }

    fn header_line() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("Proxy-Authenticate".to_owned()),
            Just("Content-Length".to_owned()),
            Just("Transfer-Encoding".to_owned()),
            Just("Connection".to_owned()),
            "[A-Za-z-]{1,12}",
        ];
        let value = prop_oneof![
            Just("Basic realm=\"x, y\", NTLM".to_owned()),
            Just("chunked".to_owned()),
            Just("close".to_owned()),
            "[0-9]{1,4}",
            "[ -~]{0,30}",
        ];
        (name, value, line_end()).prop_map(|(n, v, e)| format!("{n}: {v}{e}"))
    }

    /// Plausible answers: status line, headers, blank line, payload.
    fn answer() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![Just("1.0"), Just("1.1")],
            100u16..600,
            "[ -~]{0,20}",
            line_end(),
            prop::collection::vec(header_line(), 0..8),
            line_end(),
            prop::collection::vec(any::<u8>(), 0..20),
        )
            .prop_map(|(version, status, reason, end, headers, blank, payload)| {
                let mut buf = format!("HTTP/{version} {status} {reason}{end}").into_bytes();
                for header in headers {
                    buf.extend_from_slice(header.as_bytes());
                }
                buf.extend_from_slice(blank.as_bytes());
                buf.extend_from_slice(&payload);
                buf
            })
    }

    proptest! {
        #[test]
        fn never_panics_on_anything(buf in prop::collection::vec(any::<u8>(), 0..512)) {
            check_contract(&buf)?;
        }

        #[test]
        fn never_panics_on_near_answers(
            prefix in prop_oneof![Just(&b"HTTP/1.1 "[..]), Just(&b"HTTP/1.0 407 x\r\n"[..]), Just(&b""[..])],
            rest in prop::collection::vec(prop_oneof![
                Just(b'\r'), Just(b'\n'), Just(b':'), Just(b' '), Just(b','), Just(b'"'),
                Just(b'2'), Just(b'a'), any::<u8>(),
            ], 0..200),
        ) {
            check_contract(&[prefix, &rest[..]].concat())?;
        }

        #[test]
        fn plausible_answers_parse_the_same_in_any_split(buf in answer(), cut in any::<prop::sample::Index>()) {
            check_contract(&buf)?;
            let whole = parse_answer(&buf);
            if let Ok(Answer::Complete(head)) = &whole {
                let k = cut.index(buf.len() + 1);
                let expected = if k < head.head_len { Answer::Partial } else { Answer::Complete(head.clone()) };
                prop_assert_eq!(parse_answer(&buf[..k]), Ok(expected));
            }
        }

        #[test]
        fn big_inputs_never_panic(buf in prop::collection::vec(any::<u8>(), MAX_HEAD - 8..MAX_HEAD + 8)) {
            check_contract(&buf)?;
        }

        /// Arbitrary bytes and plausible answers (sometimes with a byte
        /// changed), cut at every byte: what a prefix gives agrees with the
        /// whole. The caller parses everything received so far after each
        /// read, so this covers any way of cutting the input into reads.
        #[test]
        fn any_bytes_parse_the_same_split_at_every_byte(
            buf in prop_oneof![prop::collection::vec(any::<u8>(), 0..300), answer(), mutated(answer())],
        ) {
            let whole = parse_answer(&buf);
            for k in 0..=buf.len() {
                check_prefix(&whole, &buf[..k], k)?;
            }
        }

    }

    proptest! {
        // 16 KiB inputs parsed a few dozen times each: fewer cases.
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Past [`MAX_HEAD`] bytes nothing is looked at: whatever follows
        /// the first `MAX_HEAD` bytes, the result is the same, and prefixes
        /// cut anywhere near the cap agree with it.
        #[test]
        fn nothing_past_max_head_is_looked_at(
            head in prop_oneof![Just(b"HTTP/1.1 407 x\r\nX: ".to_vec()), Just(b"HTTP/1.1 200 ok\r\n".to_vec()), Just(Vec::new())],
            filler in prop_oneof![Just(b'a'), Just(b' '), any::<u8>()],
            len in MAX_HEAD - 4..MAX_HEAD + 4,
            end in prop_oneof![Just(&b""[..]), Just(&b"\r\n\r\n"[..])],
            tail in prop::collection::vec(any::<u8>(), 0..64),
            other in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut buf = head;
            buf.resize(len.max(buf.len()), filler);
            buf.extend_from_slice(end);
            buf.extend_from_slice(&tail);
            let whole = parse_answer(&buf);
            if buf.len() > MAX_HEAD {
                let mut changed = buf[..MAX_HEAD].to_vec();
                changed.extend_from_slice(&other);
                prop_assert_eq!(parse_answer(&changed), whole.clone());
            }
            if let Ok(Answer::Complete(h)) = &whole {
                prop_assert!(h.head_len <= MAX_HEAD);
            }
            for k in (MAX_HEAD - 8..=buf.len()).chain([0, 1, 10, buf.len() / 2]) {
                check_prefix(&whole, &buf[..k.min(buf.len())], k.min(buf.len()))?;
            }
        }
    }

    /// `buf` with a few bytes replaced, so that a plausible answer breaks
    /// somewhere in the middle.
    fn mutated(s: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
        (
            s,
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        )
            .prop_map(|(mut buf, edits)| {
                if !buf.is_empty() {
                    for (at, b) in edits {
                        let i = at.index(buf.len());
                        buf[i] = b;
                    }
                }
                buf
            })
    }

    /// What the first `k` bytes of an input must give, knowing what the
    /// whole input gave: a complete head is Partial until its last byte and
    /// the same head from then on; a malformed input is Partial or
    /// malformed (never a head) on the way; too large is Partial below the
    /// cap. And every prefix satisfies the contract by itself.
    fn check_prefix(
        whole: &Result<Answer, ParseError>,
        prefix: &[u8],
        k: usize,
    ) -> Result<(), TestCaseError> {
        let now = parse_answer(prefix);
        match whole {
            Ok(Answer::Complete(head)) if k < head.head_len => {
                prop_assert_eq!(now, Ok(Answer::Partial), "cut {}", k);
            }
            Ok(Answer::Complete(head)) => {
                prop_assert_eq!(now, Ok(Answer::Complete(head.clone())), "cut {}", k);
            }
            Ok(Answer::Partial) => prop_assert_eq!(now, Ok(Answer::Partial), "cut {}", k),
            Err(ParseError::Malformed(_)) => prop_assert!(
                matches!(now, Ok(Answer::Partial) | Err(ParseError::Malformed(_))),
                "cut {}: {:?} before {:?}",
                k,
                now,
                whole
            ),
            Err(ParseError::TooLarge) if k < MAX_HEAD => {
                prop_assert_eq!(now, Ok(Answer::Partial), "cut {}", k);
            }
            Err(ParseError::TooLarge) => {
                prop_assert_eq!(now, Err(ParseError::TooLarge), "cut {}", k);
            }
        }
        Ok(())
    }

    // ---- body drain ----

    fn drain_all(mut d: BodyDrain, bytes: &[u8], piece: usize) -> Result<usize, String> {
        let mut used = 0;
        for chunk in bytes.chunks(piece.max(1)) {
            let n = d.feed(chunk)?;
            used += n;
            if n < chunk.len() || d.is_done() {
                break;
            }
        }
        if d.is_done() {
            Ok(used)
        } else {
            Err("not done".into())
        }
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers_in_any_pieces() {
        let body =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for piece in 1..=body.len() {
            assert_eq!(
                drain_all(BodyDrain::chunked(), body, piece),
                Ok(end),
                "pieces of {piece}"
            );
        }
        assert_eq!(
            drain_all(BodyDrain::chunked(), b"0\n\n", 1),
            Ok(3),
            "bare LF"
        );
    }

    #[test]
    fn a_length_body_takes_exactly_its_length() {
        assert_eq!(drain_all(BodyDrain::length(3), b"abcdef", 2), Ok(3));
        assert!(BodyDrain::length(0).is_done());
    }

    #[test]
    fn bad_or_huge_bodies_are_errors() {
        assert!(drain_all(BodyDrain::chunked(), b"zz\r\n", 4).is_err());
        assert!(drain_all(BodyDrain::chunked(), b"5\r\nhelloXX", 20).is_err());
        assert!(drain_all(BodyDrain::chunked(), b"ffffffffffffffffff\r\n", 30).is_err());
        let big = format!("{:x}\r\n", MAX_BODY + 1);
        let e = drain_all(BodyDrain::chunked(), big.as_bytes(), 64).unwrap_err();
        assert!(e.contains("over 1 MiB"), "{e}");
        let mut d = BodyDrain::length(2 * MAX_BODY);
        let e = d.feed(&vec![0; MAX_BODY as usize + 1]).unwrap_err();
        assert!(e.contains("over 1 MiB"), "{e}");
    }

    /// How feeding `bytes` to `d` in `pieces` (sizes, cycled; the rest in
    /// one piece) ended: `Ok((body bytes, done))` or the error; stops at
    /// the end of the body like the caller does.
    fn drain_in(mut d: BodyDrain, bytes: &[u8], pieces: &[usize]) -> Result<(usize, bool), String> {
        let mut used = 0;
        let mut sizes = pieces.iter().copied().filter(|&n| n > 0).cycle();
        while used < bytes.len() && !d.is_done() {
            let n = sizes.next().unwrap_or(bytes.len()).min(bytes.len() - used);
            let took = d.feed(&bytes[used..used + n])?;
            assert!(took <= n, "took {took} of a {n}-byte piece");
            // Fewer than offered only when the body ended inside the piece.
            assert!(took == n || d.is_done(), "took {took} of {n} but not done");
            used += took;
            if took < n {
                break;
            }
        }
        Ok((used, d.is_done()))
    }

    /// Chunked bodies as proxies send them (sizes in either case, with
    /// extensions, bare LFs, trailers), then whatever follows the body.
    fn chunked_body() -> impl Strategy<Value = (Vec<u8>, usize)> {
        let chunk = (
            prop::collection::vec(any::<u8>(), 1..300),
            prop_oneof![Just(""), Just(";ext=1"), Just(" ; a=\"b\"")],
            prop_oneof![Just("\r\n"), Just("\n")],
            any::<bool>(),
        );
        (
            prop::collection::vec(chunk, 0..5),
            prop::collection::vec("[A-Za-z-]{1,8}: [ -~]{0,12}", 0..3),
            prop_oneof![Just("\r\n"), Just("\n")],
            prop::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(chunks, trailers, eol, after)| {
                let mut body = Vec::new();
                for (data, ext, end, upper) in chunks {
                    let size = if upper {
                        format!("{:X}", data.len())
                    } else {
                        format!("{:x}", data.len())
                    };
                    body.extend_from_slice(format!("{size}{ext}{end}").as_bytes());
                    body.extend_from_slice(&data);
                    body.extend_from_slice(end.as_bytes());
                }
                body.extend_from_slice(format!("0{eol}").as_bytes());
                for t in trailers {
                    body.extend_from_slice(format!("{t}{eol}").as_bytes());
                }
                body.extend_from_slice(eol.as_bytes());
                let len = body.len();
                body.extend_from_slice(&after);
                (body, len)
            })
    }

    proptest! {
        #[test]
        fn body_drain_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), piece in 1usize..64) {
            let _ = drain_all(BodyDrain::chunked(), &bytes, piece);
        }

        /// A chunked body, fed whole, split in two at every byte, and in
        /// arbitrary pieces: it ends exactly at its last byte every time,
        /// never taking a byte of what follows it.
        #[test]
        fn a_chunked_body_ends_at_its_end_however_it_is_cut(
            (bytes, len) in chunked_body(),
            pieces in prop::collection::vec(1usize..40, 1..8),
        ) {
            prop_assert_eq!(drain_in(BodyDrain::chunked(), &bytes, &[]), Ok((len, true)));
            prop_assert_eq!(drain_in(BodyDrain::chunked(), &bytes, &pieces), Ok((len, true)));
            for k in 0..=bytes.len() {
                prop_assert_eq!(drain_in(BodyDrain::chunked(), &bytes, &[k]), Ok((len, true)), "cut {}", k);
            }
        }

        /// Any bytes (arbitrary, or a chunked body with a byte changed),
        /// chunked or with a length: the same outcome, error message
        /// included, whether fed whole, split at any byte, or in arbitrary
        /// pieces; never more than [`MAX_BODY`] bytes taken.
        #[test]
        fn any_bytes_drain_the_same_however_they_are_cut(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..300),
                mutated(chunked_body().prop_map(|(b, _)| b)),
            ],
            length in prop::option::of(0u64..400),
            pieces in prop::collection::vec(1usize..40, 1..8),
        ) {
            let fresh = || length.map_or_else(BodyDrain::chunked, BodyDrain::length);
            let whole = drain_in(fresh(), &bytes, &[]);
            if let Ok((used, done)) = whole {
                prop_assert!(used as u64 <= MAX_BODY);
                if let Some(n) = length {
                    prop_assert_eq!(used as u64, n.min(bytes.len() as u64));
                    prop_assert_eq!(done, bytes.len() as u64 >= n);
                }
            }
            prop_assert_eq!(drain_in(fresh(), &bytes, &pieces), whole.clone());
            for k in 0..=bytes.len() {
                prop_assert_eq!(drain_in(fresh(), &bytes, &[k]), whole.clone(), "cut {}", k);
            }
        }

    }

    proptest! {
        // A MiB of body a case: fewer cases.
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The cap: a body that announces (or keeps sending) more than
        /// [`MAX_BODY`] bytes is refused once it passes the cap, however it
        /// is fed, and nothing is taken past that point.
        #[test]
        fn no_body_is_read_past_max_body(
            over in 1u64..4096,
            pieces in prop::collection::vec(1usize..(256 << 10), 1..4),
            chunked in any::<bool>(),
        ) {
            let size = MAX_BODY + over;
            let (d, mut bytes) = if chunked {
                // Chunks of 64 KiB, as many as it takes to pass the cap.
                let mut b = Vec::new();
                while (b.len() as u64) <= size {
                    b.extend_from_slice(b"10000\r\n");
                    b.resize(b.len() + 0x10000, b'x');
                    b.extend_from_slice(b"\r\n");
                }
                (BodyDrain::chunked(), b)
            } else {
                (BodyDrain::length(size), vec![b'x'; size as usize])
            };
            bytes.extend_from_slice(b"0\r\n\r\n");
            let whole = drain_in(d.clone(), &bytes, &[]);
            prop_assert_eq!(whole.clone(), Err(format!("its body is over {} MiB", MAX_BODY >> 20)));
            prop_assert_eq!(drain_in(d.clone(), &bytes, &pieces), whole);
            // One huge announced chunk is refused at its size line.
            let line = format!("{size:x}\r\n");
            prop_assert!(drain_in(BodyDrain::chunked(), line.as_bytes(), &pieces).is_err());
        }
    }
}
