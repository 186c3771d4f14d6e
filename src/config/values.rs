//! Values: one field or option value into its checked, stored form.
//!
//! Owns: ports, LISTEN addresses, hosts (DNS names and IP literals),
//! durations and sizes (both ways: parse and format), credentials, HTTP
//! header options, and the range rules of `connect-timeout`,
//! `idle-timeout`, `keepalive`, `max-conns` and `buffer`. Each parser
//! returns the complete message, naming the field, except [`parse_duration`]
//! and [`parse_size`], whose callers name it. Never does: know about lines,
//! defaults or other fields.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::url::redact;
use super::{Credentials, MAX_BUFFER, MAX_DURATION, MAX_KEEPALIVE, MIN_BUFFER};

/// Parses a duration: `250ms`, `10s`, `5m`, `1h` (units case-insensitive), or
/// a bare number of seconds. Zero is accepted; callers decide what it means.
///
/// # Errors
///
/// Anything else, or more than [`MAX_DURATION`]. The message names neither
/// the value nor the field: callers put it after `invalid FIELD "VALUE": `.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a number with ms, s, m or h, e.g. 250ms, 10s, 5m, 1h";
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(EXPECTED.to_string());
    }
    let millis_per_unit: u64 = match unit.to_ascii_lowercase().as_str() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60 * 1000,
        "h" => 3600 * 1000,
        _ => return Err(EXPECTED.to_string()),
    };
    let too_large = || "too large (at most 8760h)".to_string();
    let n: u64 = digits.parse().map_err(|_| too_large())?;
    let millis = n.checked_mul(millis_per_unit).ok_or_else(too_large)?;
    let duration = Duration::from_millis(millis);
    if duration > MAX_DURATION {
        return Err(too_large());
    }
    Ok(duration)
}

/// Parses a size in bytes: `4096`, `16k`, `1m` (powers of 1024, `K`/`M` too).
///
/// # Errors
///
/// Anything else, or a size that does not fit a `usize`. The message names
/// neither the value nor the field (see [`parse_duration`]).
pub fn parse_size(s: &str) -> Result<usize, String> {
    const EXPECTED: &str = "expected a number of bytes, optionally with k or m, e.g. 4096, 16k, 1m";
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(EXPECTED.to_string());
    }
    let multiplier: usize = match unit {
        "" => 1,
        "k" | "K" => 1024,
        "m" | "M" => 1024 * 1024,
        _ => return Err(EXPECTED.to_string()),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| "too large".to_string())
}

/// A duration in the config syntax: whole seconds as `10s`, anything else as
/// milliseconds (`250ms`). Sub-millisecond parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let millis = d.as_millis();
    if millis % 1000 == 0 {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// A size in the config syntax, in the largest unit that divides it exactly:
/// `1m`, `64k`, `1000`.
pub fn format_size(n: usize) -> String {
    const K: usize = 1024;
    const M: usize = 1024 * 1024;
    if n != 0 && n % M == 0 {
        format!("{}m", n / M)
    } else if n != 0 && n % K == 0 {
        format!("{}k", n / K)
    } else {
        n.to_string()
    }
}

/// A port 1–65535 in decimal; `what` names the field.
pub(super) fn parse_port(s: &str, what: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid port {:?} in {what}: expected a number 1-65535",
            redact(s)
        ));
    }
    match s.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {s:?} out of range 1-65535 in {what}")),
    }
}

/// `PORT` (127.0.0.1), `IPV4:PORT` or `[IPV6]:PORT`.
pub(super) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    const EXPECTED: &str = "expected PORT, ADDR:PORT or [IPV6]:PORT";
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let port = parse_port(s, "LISTEN")?;
        return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
    }
    let shown = redact(s);
    if let Some(rest) = s.strip_prefix('[') {
        let Some((addr, port)) = rest.split_once("]:") else {
            return Err(format!("invalid LISTEN {shown:?}: {EXPECTED}"));
        };
        let ip: Ipv6Addr = addr.parse().map_err(|_| {
            format!(
                "invalid LISTEN {shown:?}: {:?} is not an IPv6 address",
                redact(addr)
            )
        })?;
        let port = parse_port(port, "LISTEN")?;
        return Ok(SocketAddr::new(ip.into(), port));
    }
    let Some((addr, port)) = s.rsplit_once(':') else {
        return Err(format!("invalid LISTEN {shown:?}: {EXPECTED}"));
    };
    if addr.contains(':') {
        return Err(format!(
            "invalid LISTEN {shown:?}: write an IPv6 address in brackets, e.g. [::1]:PORT"
        ));
    }
    let Ok(ip) = addr.parse::<Ipv4Addr>() else {
        return Err(if check_dns_name(addr).is_ok() {
            format!(
                "invalid LISTEN {shown:?}: {addr:?} is a host name; listen on an IP address, e.g. 127.0.0.1"
            )
        } else {
            format!(
                "invalid LISTEN {shown:?}: {:?} is not an IPv4 address",
                redact(addr)
            )
        });
    };
    let port = parse_port(port, "LISTEN")?;
    Ok(SocketAddr::new(ip.into(), port))
}

/// A DNS name or an IP literal (IPv6 bare or bracketed); returns the stored
/// form (IP literals canonical, IPv6 without brackets). `what` names the field.
pub(super) fn parse_host(s: &str, what: &str) -> Result<String, String> {
    parse_host_reason(s).map_err(|reason| format!("invalid {what} {:?}: {reason}", redact(s)))
}

pub(super) fn parse_host_reason(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty host".to_string());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let inner = rest
            .strip_suffix(']')
            .ok_or_else(|| "missing ']' after an IPv6 address".to_string())?;
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| "not an IPv6 address".to_string());
    }
    if s.contains(':') {
        return s.parse::<Ipv6Addr>().map(|ip| ip.to_string()).map_err(|_| {
            "not an IPv6 address (a port goes in its own field, or after the host in PROXY_URL)"
                .to_string()
        });
    }
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    check_dns_name(s)?;
    Ok(s.to_string())
}

/// Letters, digits, `-`, `_` and `.`; labels 1–63 long, not starting or
/// ending with `-`; at most 253 characters (a final `.` aside); the last
/// label not all digits (that would be a broken IPv4 address).
pub(super) fn check_dns_name(s: &str) -> Result<(), String> {
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(if c.is_ascii() {
            format!("character {c:?} not allowed in a host name")
        } else {
            "non-ASCII host name: write it in its xn-- (punycode) form".to_string()
        });
    }
    let last = check_labels(s)?;
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a valid IPv4 address".to_string());
    }
    Ok(())
}

/// The label rules of a DNS name made of allowed characters (a final `.`
/// aside: at most 253 characters; labels 1–63 long, not starting or ending
/// with `-`), shared with the names SOCKS/HTTP clients send
/// ([`crate::client::check_host`]). Returns the last label.
pub(crate) fn check_labels(s: &str) -> Result<&str, String> {
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.len() > 253 {
        return Err("host name longer than 253 characters".to_string());
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label in host name".to_string());
        }
        if label.len() > 63 {
            return Err("label longer than 63 characters in host name".to_string());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("label starting or ending with '-' in host name".to_string());
        }
        last = label;
    }
    Ok(last)
}

/// Rules shared by every credentials source; the reason never holds them.
pub(super) fn check_credentials(user: &str, password: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("USER is empty".to_string());
    }
    if user.contains(':') {
        return Err("USER contains ':'".to_string());
    }
    if user.chars().chain(password.chars()).any(char::is_control) {
        return Err("control characters are not allowed in USER or PASSWORD".to_string());
    }
    Ok(())
}

/// `auth=USER:PASSWORD`, split at the first `:`. Messages never echo the value.
pub(super) fn parse_auth(value: &str) -> Result<Credentials, String> {
    let (user, password) = value
        .split_once(':')
        .ok_or_else(|| "invalid auth: expected USER:PASSWORD".to_string())?;
    check_credentials(user, password).map_err(|reason| format!("invalid auth: {reason}"))?;
    Ok(Credentials {
        user: user.to_string(),
        password: password.to_string(),
    })
}

/// RFC 9110 `tchar`; `connect` uses it for the tokens of a proxy's answer too.
pub(crate) fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `header=Name: value`; returns `Name: value` with the value's surrounding
/// white space trimmed.
pub(super) fn parse_header(value: &str) -> Result<String, String> {
    let Some((name, field_value)) = value.split_once(':') else {
        return Err(format!(
            "invalid header {value:?}: expected \"Name: value\""
        ));
    };
    if name.is_empty() || !name.bytes().all(is_token_char) {
        return Err(format!(
            "invalid header {value:?}: name {name:?} is not an HTTP token"
        ));
    }
    let refused = [
        ("host", "the program writes it"),
        ("proxy-authorization", "use auth or auth-file"),
        ("content-length", "the proxy would wait for a request body"),
        (
            "transfer-encoding",
            "the proxy would wait for a request body",
        ),
    ];
    if let Some((_, why)) = refused.iter().find(|(n, _)| name.eq_ignore_ascii_case(n)) {
        return Err(format!("header {name:?} not allowed: {why}"));
    }
    let field_value = field_value.trim_matches([' ', '\t']);
    if field_value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "invalid header {value:?}: control characters in the value"
        ));
    }
    Ok(format!("{name}: {field_value}"))
}

pub(super) fn parse_connect_timeout(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)
        .map_err(|reason| format!("invalid connect-timeout {value:?}: {reason}"))?;
    if d.is_zero() {
        return Err("connect-timeout must be more than 0".to_string());
    }
    Ok(d)
}

pub(super) fn parse_idle_timeout(value: &str) -> Result<Option<Duration>, String> {
    let d = parse_duration(value)
        .map_err(|reason| format!("invalid idle-timeout {value:?}: {reason}"))?;
    Ok(Some(d).filter(|d| !d.is_zero()))
}

pub(super) fn parse_keepalive(value: &str) -> Result<Option<Duration>, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let d = parse_duration(value)
        .map_err(|reason| format!("invalid keepalive {value:?}: {reason}, or off"))?;
    if d.is_zero() {
        return Ok(None);
    }
    if d.subsec_nanos() != 0 || d > MAX_KEEPALIVE {
        return Err(format!(
            "invalid keepalive {value:?}: whole seconds from 1s to 32767s, or off"
        ));
    }
    Ok(Some(d))
}

pub(super) fn parse_max_conns(value: &str) -> Result<Option<usize>, String> {
    if value.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid max-conns {value:?}: expected a number of at least 1, or unlimited"
        ));
    }
    match value.parse::<usize>() {
        Ok(0) => Err("max-conns must be at least 1, or unlimited".to_string()),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(format!("invalid max-conns {value:?}: too large")),
    }
}

pub(super) fn parse_proxy_backoff(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)
        .map_err(|reason| format!("invalid proxy-backoff {value:?}: {reason}"))?;
    if d.is_zero() {
        return Err("proxy-backoff must be more than 0".to_string());
    }
    Ok(d)
}

pub(super) fn parse_proxy_verify(value: &str) -> Result<bool, String> {
    if value.eq_ignore_ascii_case("on") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("off") {
        Ok(false)
    } else {
        Err(format!(
            "invalid proxy-verify {value:?}: expected on or off"
        ))
    }
}

pub(super) fn parse_buffer(value: &str) -> Result<usize, String> {
    let n = parse_size(value).map_err(|reason| format!("invalid buffer {value:?}: {reason}"))?;
    if !(MIN_BUFFER..=MAX_BUFFER).contains(&n) {
        return Err(format!("buffer {value:?} out of range 1k-16m"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn listen_forms() {
        let cases = [
            ("2222", "127.0.0.1:2222"),
            ("02222", "127.0.0.1:2222"),
            ("127.0.0.1:2222", "127.0.0.1:2222"),
            ("127.0.0.2:2222", "127.0.0.2:2222"),
            ("0.0.0.0:2222", "0.0.0.0:2222"),
            ("[::]:2222", "[::]:2222"),
            ("[::1]:2222", "[::1]:2222"),
            ("[2001:DB8::1]:65535", "[2001:db8::1]:65535"),
        ];
        for (listen, expected) in cases {
            assert_eq!(
                one(&format!("{listen} h 22")).listen,
                sa(expected),
                "{listen}"
            );
        }
    }

    #[test]
    fn listen_errors() {
        let cases = [
            ("localhost:2222", "invalid LISTEN \"localhost:2222\": \"localhost\" is a host name; listen on an IP address, e.g. 127.0.0.1"),
            ("::1:2222", "invalid LISTEN \"::1:2222\": write an IPv6 address in brackets, e.g. [::1]:PORT"),
            ("[::1]2222", "invalid LISTEN \"[::1]2222\": expected PORT, ADDR:PORT or [IPV6]:PORT"),
            ("[1.2.3.4]:22", "invalid LISTEN \"[1.2.3.4]:22\": \"1.2.3.4\" is not an IPv6 address"),
            ("ssh", "invalid LISTEN \"ssh\": expected PORT, ADDR:PORT or [IPV6]:PORT"),
            (":2222", "invalid LISTEN \":2222\": \"\" is not an IPv4 address"),
            ("1.2.3.999:22", "invalid LISTEN \"1.2.3.999:22\": \"1.2.3.999\" is not an IPv4 address"),
            ("0", "port \"0\" out of range 1-65535 in LISTEN"),
            ("65536", "port \"65536\" out of range 1-65535 in LISTEN"),
            ("99999999999999999999", "port \"99999999999999999999\" out of range 1-65535 in LISTEN"),
            ("127.0.0.1:", "invalid port \"\" in LISTEN: expected a number 1-65535"),
            ("127.0.0.1:x", "invalid port \"x\" in LISTEN: expected a number 1-65535"),
            ("[::]:0", "port \"0\" out of range 1-65535 in LISTEN"),
            ("-1", "invalid LISTEN \"-1\": expected PORT, ADDR:PORT or [IPV6]:PORT"),
        ];
        for (listen, message) in cases {
            assert_eq!(
                err1(&format!("{listen} h 22")),
                format!("x.conf:1: {message}"),
                "{listen}"
            );
        }
    }

    #[test]
    fn dest_host_forms() {
        let cases = [
            ("example.com", "example.com"),
            ("Example.COM", "Example.COM"),
            ("example.com.", "example.com."),
            ("db", "db"),
            ("_srv.my-host.example", "_srv.my-host.example"),
            ("10.0.0.5", "10.0.0.5"),
            ("::1", "::1"),
            ("[::1]", "::1"),
            ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
            ("[::ffff:1.2.3.4]", "::ffff:1.2.3.4"),
            ("1.2.3.4a", "1.2.3.4a"),
        ];
        for (host, stored) in cases {
            assert_eq!(
                one(&format!("2222 {host} 22"))
                    .dest
                    .fixed()
                    .expect("fixed")
                    .host,
                stored,
                "{host}"
            );
        }
        let long_label = "a".repeat(63);
        let long_name = [long_label.as_str(); 4].join(".");
        assert_eq!(long_name.len(), 255);
        let name_253 = &long_name[2..];
        assert_eq!(
            one(&format!("2222 {name_253} 22"))
                .dest
                .fixed()
                .expect("fixed")
                .host,
            name_253
        );
    }

    #[test]
    fn dest_host_errors() {
        let label_64 = "a".repeat(64);
        let name_254 = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62)
        );
        assert_eq!(name_254.len(), 254);
        let cases: Vec<(String, String)> = vec![
            ("\"a b\"".into(), "invalid DEST_HOST \"a b\": character ' ' not allowed in a host name".into()),
            ("a/b".into(), "invalid DEST_HOST \"a/b\": character '/' not allowed in a host name".into()),
            ("\"a\u{1}b\"".into(), "invalid DEST_HOST \"a\\u{1}b\": character '\\u{1}' not allowed in a host name".into()),
            ("h:22".into(), "invalid DEST_HOST \"h:22\": not an IPv6 address (a port goes in its own field, or after the host in PROXY_URL)".into()),
            ("[1.2.3.4]".into(), "invalid DEST_HOST \"[1.2.3.4]\": not an IPv6 address".into()),
            ("[::1".into(), "invalid DEST_HOST \"[::1\": missing ']' after an IPv6 address".into()),
            ("fe80::1%eth0".into(), "invalid DEST_HOST \"fe80::1%eth0\": not an IPv6 address (a port goes in its own field, or after the host in PROXY_URL)".into()),
            ("256.1.1.1".into(), "invalid DEST_HOST \"256.1.1.1\": not a valid IPv4 address".into()),
            ("1.2.3".into(), "invalid DEST_HOST \"1.2.3\": not a valid IPv4 address".into()),
            ("a..b".into(), "invalid DEST_HOST \"a..b\": empty label in host name".into()),
            (".".into(), "invalid DEST_HOST \".\": empty label in host name".into()),
            ("-a.b".into(), "invalid DEST_HOST \"-a.b\": label starting or ending with '-' in host name".into()),
            ("a-.b".into(), "invalid DEST_HOST \"a-.b\": label starting or ending with '-' in host name".into()),
            (label_64.clone(), format!("invalid DEST_HOST \"{label_64}\": label longer than 63 characters in host name")),
            (name_254.clone(), format!("invalid DEST_HOST \"{name_254}\": host name longer than 253 characters")),
            ("bücher.de".into(), "invalid DEST_HOST \"bücher.de\": non-ASCII host name: write it in its xn-- (punycode) form".into()),
            ("\"\"".into(), "invalid DEST_HOST \"\": empty host".into()),
            ("user:pw@h".into(), "invalid DEST_HOST \"user:***@h\": not an IPv6 address (a port goes in its own field, or after the host in PROXY_URL)".into()),
        ];
        for (host, message) in cases {
            assert_eq!(
                err1(&format!("2222 {host} 22")),
                format!("x.conf:1: {message}"),
                "{host}"
            );
        }
    }

    #[test]
    fn proxy_host_uses_the_same_rules() {
        assert_eq!(
            err1("2222 h 22 proxy:3128 3128"),
            "x.conf:1: invalid PROXY_HOST \"proxy:3128\": not an IPv6 address (a port goes in its own field, or after the host in PROXY_URL)"
        );
        assert_eq!(
            err1("2222 h 22 proxy 99999"),
            "x.conf:1: port \"99999\" out of range 1-65535 in PROXY_PORT"
        );
        assert_eq!(
            errs("2222 h 22 pr@xy 0"),
            [
                "x.conf:1: invalid PROXY_HOST \"pr@xy\": character '@' not allowed in a host name",
                "x.conf:1: port \"0\" out of range 1-65535 in PROXY_PORT",
            ]
        );
    }

    #[test]
    fn ports_are_decimal_1_to_65535() {
        assert_eq!(one("2222 h 1").dest.fixed().expect("fixed").port, 1);
        assert_eq!(one("2222 h 65535").dest.fixed().expect("fixed").port, 65535);
        assert_eq!(one("2222 h 0022").dest.fixed().expect("fixed").port, 22);
        for (port, message) in [
            ("0", "port \"0\" out of range 1-65535 in DEST_PORT"),
            ("65536", "port \"65536\" out of range 1-65535 in DEST_PORT"),
            ("70000", "port \"70000\" out of range 1-65535 in DEST_PORT"),
            (
                "ssh",
                "invalid port \"ssh\" in DEST_PORT: expected a number 1-65535",
            ),
            (
                "+22",
                "invalid port \"+22\" in DEST_PORT: expected a number 1-65535",
            ),
            (
                "0x16",
                "invalid port \"0x16\" in DEST_PORT: expected a number 1-65535",
            ),
            (
                "22.0",
                "invalid port \"22.0\" in DEST_PORT: expected a number 1-65535",
            ),
        ] {
            assert_eq!(
                err1(&format!("2222 h {port}")),
                format!("x.conf:1: {message}")
            );
        }
    }

    #[test]
    fn auth_option() {
        let entry = one(r"2222 h 22 p 1 auth=CORP\jdoe:pa#ss:word");
        assert_eq!(
            proxy_of(&entry).credentials,
            Some(creds(r"CORP\jdoe", "pa#ss:word"))
        );
        let entry = one("2222 h 22 p 1 auth=\"alice:with space\"");
        assert_eq!(
            proxy_of(&entry).credentials,
            Some(creds("alice", "with space"))
        );
        let entry = one("2222 h 22 p 1 auth=alice:");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("alice", "")));
        // No percent-decoding outside URLs.
        let entry = one("2222 h 22 p 1 auth=alice:%41");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("alice", "%41")));
        for (value, message) in [
            ("alice", "invalid auth: expected USER:PASSWORD"),
            ("", "invalid auth: expected USER:PASSWORD"),
            (":pw", "invalid auth: USER is empty"),
            (
                "\"a:p\u{7f}w\"",
                "invalid auth: control characters are not allowed in USER or PASSWORD",
            ),
            (
                "\"a\u{0}:pw\"",
                "invalid auth: control characters are not allowed in USER or PASSWORD",
            ),
        ] {
            assert_eq!(
                err1(&format!("2222 h 22 p 1 auth={value}")),
                format!("x.conf:1: {message}"),
                "{value}"
            );
        }
    }

    #[test]
    fn header_option() {
        for (value, stored) in [
            (
                "\"User-Agent: Mozilla/5.0 (X11)\"",
                "User-Agent: Mozilla/5.0 (X11)",
            ),
            ("X-A:b", "X-A: b"),
            ("\"X-A: \t b c \t \"", "X-A: b c"),
            ("X-Empty:", "X-Empty: "),
            ("\"X-Q: say \\\"hi\\\"\"", "X-Q: say \"hi\""),
            ("\"X-T: a\tb\"", "X-T: a\tb"),
            ("X-U:é", "X-U: é"),
            (
                "Proxy-Connection:keep-alive",
                "Proxy-Connection: keep-alive",
            ),
            ("\"X-Colon: a:b\"", "X-Colon: a:b"),
        ] {
            let entry = one(&format!("2222 h 22 p 1 header={value}"));
            assert_eq!(proxy_of(&entry).headers, [stored], "{value}");
        }
    }

    #[test]
    fn header_errors() {
        for (value, message) in [
            (
                "NoColon",
                "invalid header \"NoColon\": expected \"Name: value\"",
            ),
            ("\"\"", "invalid header \"\": expected \"Name: value\""),
            (
                ":v",
                "invalid header \":v\": name \"\" is not an HTTP token",
            ),
            (
                "\"Bad Name: v\"",
                "invalid header \"Bad Name: v\": name \"Bad Name\" is not an HTTP token",
            ),
            (
                "\"X-A : v\"",
                "invalid header \"X-A : v\": name \"X-A \" is not an HTTP token",
            ),
            (
                "Nämé:v",
                "invalid header \"Nämé:v\": name \"Nämé\" is not an HTTP token",
            ),
            (
                "\"X-A: a\u{7}b\"",
                "invalid header \"X-A: a\\u{7}b\": control characters in the value",
            ),
            (
                "host:x",
                "header \"host\" not allowed: the program writes it",
            ),
            (
                "Proxy-Authorization:Basic",
                "header \"Proxy-Authorization\" not allowed: use auth or auth-file",
            ),
            (
                "Content-Length:0",
                "header \"Content-Length\" not allowed: the proxy would wait for a request body",
            ),
            (
                "transfer-encoding:chunked",
                "header \"transfer-encoding\" not allowed: the proxy would wait for a request body",
            ),
        ] {
            assert_eq!(
                err1(&format!("2222 h 22 p 1 header={value}")),
                format!("x.conf:1: {message}"),
                "{value}"
            );
        }
        // A CR inside quotes (not the line end) is refused too.
        assert_eq!(
            err1("2222 h 22 p 1 header=\"X-A: a\rInjected: 1\"\n"),
            "x.conf:1: invalid header \"X-A: a\\rInjected: 1\": control characters in the value"
        );
    }

    #[test]
    fn duration_options() {
        let entry = one("2222 h 22 connect-timeout=1h idle-timeout=0 keepalive=off");
        assert_eq!(entry.options.connect_timeout, Duration::from_secs(3600));
        assert_eq!(entry.options.idle_timeout, None);
        assert_eq!(entry.options.keepalive, None);
        let entry = one("2222 h 22 idle-timeout=10ms keepalive=0 connect-timeout=30");
        assert_eq!(entry.options.idle_timeout, Some(Duration::from_millis(10)));
        assert_eq!(entry.options.keepalive, None);
        assert_eq!(entry.options.connect_timeout, Duration::from_secs(30));
        assert_eq!(
            one("2222 h 22 keepalive=32767s").options.keepalive,
            Some(MAX_KEEPALIVE)
        );
        assert_eq!(one("2222 h 22 keepalive=OFF").options.keepalive, None);
        assert_eq!(
            one("2222 h 22 keepalive=2000ms").options.keepalive,
            Some(Duration::from_secs(2))
        );
        for (option, message) in [
            ("connect-timeout=0", "connect-timeout must be more than 0"),
            ("connect-timeout=0ms", "connect-timeout must be more than 0"),
            ("connect-timeout=fast", "invalid connect-timeout \"fast\": expected a number with ms, s, m or h, e.g. 250ms, 10s, 5m, 1h"),
            ("connect-timeout=1.5s", "invalid connect-timeout \"1.5s\": expected a number with ms, s, m or h, e.g. 250ms, 10s, 5m, 1h"),
            ("idle-timeout=-1", "invalid idle-timeout \"-1\": expected a number with ms, s, m or h, e.g. 250ms, 10s, 5m, 1h"),
            ("idle-timeout=8761h", "invalid idle-timeout \"8761h\": too large (at most 8760h)"),
            ("idle-timeout=", "invalid idle-timeout \"\": expected a number with ms, s, m or h, e.g. 250ms, 10s, 5m, 1h"),
            ("keepalive=500ms", "invalid keepalive \"500ms\": whole seconds from 1s to 32767s, or off"),
            ("keepalive=1500ms", "invalid keepalive \"1500ms\": whole seconds from 1s to 32767s, or off"),
            ("keepalive=32768", "invalid keepalive \"32768\": whole seconds from 1s to 32767s, or off"),
            ("keepalive=10h", "invalid keepalive \"10h\": whole seconds from 1s to 32767s, or off"),
            ("keepalive=no", "invalid keepalive \"no\": expected a number with ms, s, m or h, e.g. 250ms, 10s, 5m, 1h, or off"),
        ] {
            assert_eq!(
                err1(&format!("2222 h 22 {option}")),
                format!("x.conf:1: {message}"),
                "{option}"
            );
        }
    }

    #[test]
    fn max_conns_option() {
        assert_eq!(one("2222 h 22 max-conns=1").options.max_conns, Some(1));
        assert_eq!(one("2222 h 22 max-conns=unlimited").options.max_conns, None);
        assert_eq!(one("2222 h 22 max-conns=Unlimited").options.max_conns, None);
        for (value, message) in [
            ("0", "max-conns must be at least 1, or unlimited"),
            (
                "-1",
                "invalid max-conns \"-1\": expected a number of at least 1, or unlimited",
            ),
            (
                "many",
                "invalid max-conns \"many\": expected a number of at least 1, or unlimited",
            ),
            (
                "",
                "invalid max-conns \"\": expected a number of at least 1, or unlimited",
            ),
            (
                "99999999999999999999999",
                "invalid max-conns \"99999999999999999999999\": too large",
            ),
        ] {
            assert_eq!(
                err1(&format!("2222 h 22 max-conns={value}")),
                format!("x.conf:1: {message}"),
                "{value}"
            );
        }
    }

    #[test]
    fn buffer_option_range_is_inclusive() {
        assert_eq!(one("2222 h 22 buffer=1k").options.buffer, 1024);
        assert_eq!(one("2222 h 22 buffer=1024").options.buffer, 1024);
        assert_eq!(one("2222 h 22 buffer=16m").options.buffer, MAX_BUFFER);
        assert_eq!(one("2222 h 22 buffer=16M").options.buffer, MAX_BUFFER);
        assert_eq!(one("2222 h 22 buffer=4096").options.buffer, 4096);
        assert_eq!(one("2222 h 22 buffer=1000k").options.buffer, 1_024_000);
        for (value, message) in [
            ("1023", "buffer \"1023\" out of range 1k-16m"),
            ("0", "buffer \"0\" out of range 1k-16m"),
            ("16777217", "buffer \"16777217\" out of range 1k-16m"),
            ("17m", "buffer \"17m\" out of range 1k-16m"),
            ("1g", "invalid buffer \"1g\": expected a number of bytes, optionally with k or m, e.g. 4096, 16k, 1m"),
            ("64kb", "invalid buffer \"64kb\": expected a number of bytes, optionally with k or m, e.g. 4096, 16k, 1m"),
            ("99999999999999999999m", "invalid buffer \"99999999999999999999m\": too large"),
        ] {
            assert_eq!(
                err1(&format!("2222 h 22 buffer={value}")),
                format!("x.conf:1: {message}"),
                "{value}"
            );
        }
    }

    #[test]
    fn parse_duration_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2H"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("3MS"), Ok(Duration::from_millis(3)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("007s"), Ok(Duration::from_secs(7)));
        for bad in [
            "", "s", "1.5s", "1 s", " 1s", "1d", "-1", "+1", "1sm", "1hh", "１s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        for big in [
            "8761h",
            "31536001",
            "18446744073709551615h",
            "99999999999999999999999",
        ] {
            assert_eq!(
                parse_duration(big),
                Err("too large (at most 8760h)".to_string()),
                "{big}"
            );
        }
    }

    #[test]
    fn parse_size_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("16k"), Ok(16 * 1024));
        assert_eq!(parse_size("16K"), Ok(16 * 1024));
        assert_eq!(parse_size("1m"), Ok(1024 * 1024));
        assert_eq!(parse_size("1M"), Ok(1024 * 1024));
        for bad in ["", "k", "1kb", "1g", "1 k", "-1", "1.5k", "0x10"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_size("99999999999999999999999"),
            Err("too large".to_string())
        );
        assert_eq!(
            parse_size(&format!("{}m", usize::MAX)),
            Err("too large".to_string())
        );
    }

    #[test]
    fn format_helpers() {
        assert_eq!(format_duration(Duration::from_secs(60)), "60s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "3600s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_size(64 * 1024), "64k");
        assert_eq!(format_size(1024 * 1024), "1m");
        assert_eq!(format_size(1_024_000), "1000k");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
        for d in ["250ms", "10s", "5m", "1h", "1ms", "8760h"] {
            let parsed = parse_duration(d).expect("valid");
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
    }
}
