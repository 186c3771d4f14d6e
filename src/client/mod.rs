//! The client side of a `socks` or `http` entry, as pure message code: what
//! the client asked for ([`parse`]), and the bytes it is answered with
//! ([`reply`], or the bytes of a [`Parse::Reply`]).
//!
//! Owns: the SOCKS 5 (RFC 1928, "no authentication" only), SOCKS 4 and
//! SOCKS 4a request formats ([`socks`]), the `CONNECT host:port HTTP/1.x`
//! head ([`http`]), the validation of the destination the client names, and
//! every reply byte SPEC "Client-named destinations" lists. Never does:
//! sockets, buffering, timeouts, logging, `allow` matching, resolving names;
//! the tunnel reads, calls, writes what it is given and logs the
//! [`Refusal`]'s `Display`.
//!
//! # Contract
//!
//! [`parse`] is a pure function of *all* the bytes the client has sent so
//! far. For any input it never panics, looks at no more than
//! [`MAX_REQUEST`] bytes and does work linear in what it looks at. Feeding a
//! request in any number of pieces gives [`Parse::Partial`] until its last
//! byte is in, then the same [`Parse::Complete`]; bytes after the request
//! (the client's optimistic data, starting at [`Request::head_len`]) never
//! change the result. More generally, once a result is not `Partial`, every
//! longer buffer gives the same result.
//!
//! Cost: one pass over the bytes so far per call. A client sending a 16 KiB
//! HTTP head one byte per read costs about 0.2 s of CPU over its 16384 calls
//! (release build). Since `Complete` needs a final `\n` and a refusal
//! stays the same refusal, an `http` caller may skip calls until the new
//! bytes hold a `\n` or the buffer reaches [`MAX_REQUEST`]. It gets the same
//! results; only a malformed line is answered at its end rather than at once.
//!
//! # Bytes for the client: one stream, written from an offset
//!
//! SOCKS 5 answers twice: the method selection (`05 00`) once the greeting is
//! in, so that the client sends its request, then the reply to the request.
//! So every result that carries bytes for the client carries *the whole
//! client-bound stream of the stage, from its first byte*:
//!
//! - [`Parse::Partial`]`{ send }`: `send` is what the client must have
//!   received so far (`05 00` once a SOCKS 5 greeting offering "no
//!   authentication" is in; empty otherwise);
//! - [`Parse::Reply`]`(bytes, _)`: `bytes` is the whole answer to a bad or
//!   unsupported request, `05 00` included when the greeting was accepted
//!   (e.g. `05 00 05 07 00 01 00 00 00 00 00 00` for a BIND);
//! - [`reply`]`(request, outcome)`: the whole answer for the outcome,
//!   starting with [`Kind::interim`] (`05 00` for SOCKS 5, empty otherwise).
//!
//! For one connection each of these is an extension of every stream
//! returned before it (a prefix property the tests check). The caller keeps
//! one counter, `written`: the client-bound bytes it has written in this
//! stage, and always writes `stream[written..]`. The method selection is
//! then written exactly once, whether the client waited for it or pipelined
//! its request behind the greeting (a `Complete` can come with no `Partial`
//! before it):
//!
//! ```text
//! let mut written = 0;
//! on every read:  match parse(protocol, &received) {
//!     Partial { send } => write send[written..], keep reading
//!     Reply(bytes, why) => write bytes[written..], log why, shut down, close
//!     Complete(request) => check allow, open the tunnel, then
//!                          write reply(&request, &outcome)[written..];
//!                          received[request.head_len..] goes upstream
//! }
//! ```
//!
//! A `Reply` comes once the whole bad request is in whenever its length can
//! be known (a BIND waits for its address), so the caller can close without
//! unread bytes, which would turn its close into a reset that may destroy
//! the reply; it should still `shutdown(Write)` and not wait for more.
//!
//! # Destinations
//!
//! [`Request::host`] is either a canonical IP literal (`10.0.0.1`, `2001:db8::1`,
//! IPv6 without brackets) or a name, kept as sent (case and a final `.`
//! included) after [`check_host`]: ASCII letters, digits, `-`, `_`, `.`;
//! labels of 1 to 63 bytes not starting or ending with `-`; at most 253 bytes
//! besides a final `.`; the last label not numeric (`127.1`, `2130706433`,
//! `0x7f000001` would be read as IPv4 addresses by `inet_aton`, so they are
//! refused rather than let an address pass as a name). A name that is an IP
//! literal (a SOCKS 5 domain name `10.1.2.3`, SOCKS 4a `192.168.0.1` as curl
//! sends it) becomes that IP. Port 0 is refused as malformed.

pub mod http;
pub mod socks;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest request accepted, in bytes (an HTTP head through its blank line;
/// a SOCKS request is far shorter). Nothing past it is ever looked at.
pub const MAX_REQUEST: usize = 16384;

/// Longest destination host name, in bytes, before any other check.
pub const MAX_HOST: usize = 255;

/// What the entry speaks to its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// SOCKS 5, 4 or 4a, told apart by the first byte.
    Socks,
    /// HTTP `CONNECT`.
    Http,
}

/// The form of a request; the reply to it takes the same form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SOCKS 5 (RFC 1928), after a "no authentication" method selection.
    Socks5,
    /// SOCKS 4 with an IPv4 address.
    Socks4,
    /// SOCKS 4a: address `0.0.0.x` (x ≠ 0) and a host name after the user id.
    Socks4a,
    /// `CONNECT host:port HTTP/1.minor`.
    Http {
        /// `0` or `1`. The reply is `HTTP/1.1` either way.
        minor: u8,
    },
}

impl Kind {
    /// The bytes that precede any reply to a request of this kind, already
    /// part of what [`Parse::Partial`] asked to send: `05 00` (method
    /// selection, "no authentication") for SOCKS 5, nothing for the others.
    pub fn interim(self) -> &'static [u8] {
        match self {
            Kind::Socks5 => socks::METHOD_NO_AUTH,
            Kind::Socks4 | Kind::Socks4a | Kind::Http { .. } => b"",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Socks5 => f.write_str("SOCKS 5"),
            Kind::Socks4 => f.write_str("SOCKS 4"),
            Kind::Socks4a => f.write_str("SOCKS 4a"),
            Kind::Http { minor } => write!(f, "HTTP/1.{minor} CONNECT"),
        }
    }
}

/// What the client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// A checked DNS name as sent, or a canonical IP literal (IPv6 without
    /// brackets); see the module doc.
    pub host: String,
    /// 1–65535.
    pub port: u16,
    /// The request's form, which the reply follows.
    pub kind: Kind,
    /// Length of the request (for SOCKS 5 the greeting included): the bytes
    /// from here on are the client's optimistic data, for the destination.
    pub head_len: usize,
}

impl Request {
    /// The host as an address when it is an IP literal; `None` for a name.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `host:port`, IPv6 in brackets: the destination as logged and as an
    /// HTTP authority.
    pub fn destination(&self) -> String {
        authority(&self.host, self.port)
    }
}

/// The result of [`parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parse {
    /// The bytes so far may still become a request: write `send[written..]`
    /// (module doc) and read more.
    Partial {
        /// The client-bound stream so far: `05 00` after a SOCKS 5 greeting
        /// that offers "no authentication", else empty.
        send: &'static [u8],
    },
    /// A whole request; the bytes from `head_len` on are optimistic data.
    Complete(Request),
    /// A bad or unsupported request: write `bytes[written..]` (possibly
    /// nothing: a socks entry does not answer what is not SOCKS), then close.
    Reply(Vec<u8>, Refusal),
}

/// Why a request was answered with a failure by the parser itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A socks entry got a first byte that is neither 4 nor 5; no reply.
    NotSocks(u8),
    /// A SOCKS 5 greeting that does not offer "no authentication" (`05 FF`).
    NoAcceptableMethod,
    /// A SOCKS command other than CONNECT (SOCKS 5 reply 7, SOCKS 4 reply 91).
    Command(u8),
    /// A SOCKS 5 address type other than 1, 3 and 4 (reply 8).
    AddressType(u8),
    /// A destination that is neither a valid name nor an IP literal (SOCKS 5
    /// reply 8, SOCKS 4a reply 91, HTTP 400); the reason.
    Host(String),
    /// An HTTP method other than `CONNECT` (405); the method as sent.
    Method(String),
    /// An HTTP head longer than [`MAX_REQUEST`] bytes (400).
    TooLarge,
    /// Anything else malformed (SOCKS 5 reply 1, SOCKS 4 reply 91, HTTP 400).
    Malformed(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotSocks(b) => write!(f, "not a SOCKS request (first byte 0x{b:02x})"),
            Refusal::NoAcceptableMethod => {
                f.write_str("no acceptable SOCKS 5 method (only \"no authentication\" is offered)")
            }
            Refusal::Command(c) => write!(f, "SOCKS command {c} not supported (CONNECT only)"),
            Refusal::AddressType(t) => write!(f, "SOCKS 5 address type {t} not supported"),
            Refusal::Host(reason) => write!(f, "invalid destination: {reason}"),
            Refusal::Method(m) => write!(f, "method {m:?} not allowed (CONNECT only)"),
            Refusal::TooLarge => write!(f, "request head longer than {MAX_REQUEST} bytes"),
            Refusal::Malformed(reason) => write!(f, "malformed request: {reason}"),
        }
    }
}

/// How the attempt to reach a [`Request`]'s destination ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The tunnel is open (TCP connect done, or the last hop's 2xx).
    Ok,
    /// The destination is outside the entry's `allow`.
    NotAllowed,
    /// Connection refused.
    Refused,
    /// The name does not resolve.
    NotFound,
    /// Network or host unreachable.
    Unreachable,
    /// `connect-timeout` passed.
    Timeout,
    /// Anything else, e.g. a proxy's refusal: its status line, quoted in an
    /// HTTP 502 body (control characters escaped, at most 200 characters).
    Other(String),
}

/// Parses what the client has sent so far; see the module doc for the
/// contract and [`socks`] and [`http`] for the formats.
pub fn parse(protocol: Protocol, buf: &[u8]) -> Parse {
    let window = &buf[..buf.len().min(MAX_REQUEST)];
    match protocol {
        Protocol::Socks => socks::parse(window),
        Protocol::Http => http::parse(window),
    }
}

/// The bytes to write to the client for `outcome` of `request`, from the
/// first byte of the stage (SOCKS 5: `05 00` first; write from the caller's
/// offset, module doc). SOCKS 5: `05 REP 00 01 00 00 00 00 00 00` (bound
/// address 0.0.0.0:0) with REP 0 ok, 2 not allowed, 5 refused, 4 not found,
/// unreachable or timeout, 1 other; SOCKS 4/4a: `00 5A 00 00 00 00 00 00`
/// on success, `00 5B ...` otherwise; HTTP: see [`http::reply`].
pub fn reply(request: &Request, outcome: &Outcome) -> Vec<u8> {
    match request.kind {
        Kind::Socks5 => socks::reply5(socks::code5(outcome)),
        Kind::Socks4 | Kind::Socks4a => socks::reply4(*outcome == Outcome::Ok),
        Kind::Http { .. } => http::reply(request, outcome),
    }
}

/// `host:port`, an IPv6 host in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Checks a destination host as the client sent it (no brackets): an IP
/// literal comes back canonical, a name as sent (module doc, "Destinations").
///
/// # Errors
///
/// A short lowercase reason, for [`Refusal::Host`].
pub fn check_host(bytes: &[u8]) -> Result<String, String> {
    if bytes.is_empty() {
        return Err("empty host".to_string());
    }
    if bytes.len() > MAX_HOST {
        return Err(format!("host longer than {MAX_HOST} bytes"));
    }
    if let Some(&b) = bytes
        .iter()
        .find(|&&b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')))
    {
        return Err(if b.is_ascii_graphic() {
            format!("character {:?} not allowed in a host name", b as char)
        } else if !b.is_ascii() {
            "non-ASCII host name (send its xn-- form)".to_string()
        } else {
            format!("byte 0x{b:02x} not allowed in a host name")
        });
    }
    // Only ASCII from here on.
    let s = std::str::from_utf8(bytes).map_err(|_| "not ASCII".to_string())?;
    if s.contains(':') {
        return s
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| "not an IPv6 address".to_string());
    }
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    check_dns_name(s)?;
    Ok(s.to_string())
}

/// The label rules of [`check_host`], for a string of allowed characters
/// that is not an IP literal.
fn check_dns_name(s: &str) -> Result<(), String> {
    let last = crate::config::check_labels(s)?;
    if is_numeric_label(last) {
        return Err("not a valid IPv4 address".to_string());
    }
    Ok(())
}

/// A label `inet_aton` reads as a number: decimal (octal with a leading 0)
/// digits, or `0x` and hex digits.
fn is_numeric_label(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"));
    match hex {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        None => label.bytes().all(|b| b.is_ascii_digit()),
    }
}

#[cfg(test)]
mod tests;
