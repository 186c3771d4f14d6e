//! Hop URLs: `http://[USER:PASSWORD@]HOST:PORT` and `https://...`.
//!
//! Owns: splitting a hop URL into scheme, user info, host and port;
//! percent-decoding the user info (and percent-encoding a user name again
//! for the normalised display); hiding what looks like a password in any
//! field a message quotes ([`redact`]). Never does: accept a scheme other
//! than `http` and `https`, a path, or a message that echoes a password.

use std::borrow::Cow;

use percent_encoding::{percent_decode_str, percent_encode, NON_ALPHANUMERIC};

use super::values::{check_credentials, parse_host_reason, parse_port};
use super::{Credentials, HostPort};

/// One hop as its URL gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UrlHop {
    pub(super) addr: HostPort,
    /// `https://`.
    pub(super) tls: bool,
    /// The URL's own user info, percent-decoded.
    pub(super) credentials: Option<Credentials>,
}

/// `http[s]://[USER:PASSWORD@]HOST:PORT[/]`; `what` names the field in
/// messages (`PROXY_URL`, or `URL` for a variable of the environment).
pub(super) fn parse_proxy_url(s: &str, what: &str) -> Result<UrlHop, String> {
    let form = "expected http://[USER:PASSWORD@]HOST:PORT";
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!("invalid {what}: {form}"));
    };
    let tls = if scheme.eq_ignore_ascii_case("http") {
        false
    } else if scheme.eq_ignore_ascii_case("https") {
        true
    } else {
        return Err(format!(
            "unsupported proxy scheme {:?} in {what}: only http:// and https:// are supported",
            redact(scheme)
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    // The last `@` ends the user info: a raw `@` in a password is common enough.
    let (user_info, host_port) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    if host_port.contains(['/', '?', '#']) {
        return Err(format!("invalid {what}: {form}, without a path"));
    }
    let (host, port) = if host_port.starts_with('[') {
        match host_port.find("]:") {
            Some(end) => (&host_port[..=end], &host_port[end + 2..]),
            None if host_port.ends_with(']') => return Err(format!("{what} needs a port: {form}")),
            None => return Err(format!("invalid {what}: {form}")),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(format!(
                    "invalid {what}: write an IPv6 host in brackets, e.g. http://[::1]:3128"
                ))
            }
            Some(split) => split,
            None => return Err(format!("{what} needs a port: {form}")),
        }
    };
    let host = parse_host_reason(host)
        .map_err(|reason| format!("invalid host {host:?} in {what}: {reason}"))?;
    let port = parse_port(port, what)?;
    let credentials = match user_info {
        None => None,
        Some(info) => Some(
            parse_user_info(info)
                .map_err(|reason| format!("invalid user info in {what}: {reason}"))?,
        ),
    };
    Ok(UrlHop {
        addr: HostPort { host, port },
        tls,
        credentials,
    })
}

/// Percent-decoded `USER:PASSWORD` of a URL.
fn parse_user_info(info: &str) -> Result<Credentials, String> {
    let (user, password) = info
        .split_once(':')
        .ok_or_else(|| "expected USER:PASSWORD".to_string())?;
    let user = percent_decode(user)?;
    let password = percent_decode(password)?;
    check_credentials(&user, &password)?;
    Ok(Credentials { user, password })
}

/// Percent-decodes `s`, strictly: every `%` must start an escape of two hex
/// digits (the `percent-encoding` crate passes a broken escape through as
/// it is, which would hide a typo in a password), and the result must be
/// UTF-8.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let escapes_valid = bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_valid {
        return Err("'%' not followed by two hex digits".to_string());
    }
    percent_decode_str(s)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| "not UTF-8 once percent-decoded".to_string())
}

/// The reverse of [`percent_decode`] for a user name in `--check` output:
/// only what would break the URL is encoded, so `CORP\jdoe` (and any other
/// non-ASCII letter) stays readable.
pub(super) fn percent_encode_user(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for c in user.chars() {
        if c.is_control() || c.is_whitespace() || "%:@/?#[]\"".contains(c) {
            let mut buf = [0; 4];
            // Every byte of such a character is encoded: `NON_ALPHANUMERIC`
            // holds each of these ASCII ones, and non-ASCII bytes always are.
            out.extend(percent_encode(
                c.encode_utf8(&mut buf).as_bytes(),
                NON_ALPHANUMERIC,
            ));
        } else {
            out.push(c);
        }
    }
    out
}

/// A field as it may appear in a message: what looks like the password of
/// `[scheme://]user:password@host` becomes `***`.
pub(super) fn redact(s: &str) -> Cow<'_, str> {
    let Some(at) = s.rfind('@') else {
        return Cow::Borrowed(s);
    };
    let start = s[..at].find("://").map_or(0, |i| i + 3);
    match s[start..at].find(':') {
        Some(colon) => Cow::Owned(format!("{}:***{}", &s[..start + colon], &s[at..])),
        None => Cow::Borrowed(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn proxy_url_form() {
        let entry = one("2222 example.com 22 http://proxy.corp:3128");
        assert_eq!(proxy_of(&entry).addr, hp("proxy.corp", 3128));
        assert_eq!(proxy_of(&entry).credentials, None);
        let entry = one("2222 example.com 22 HTTP://proxy.corp:3128/");
        assert_eq!(proxy_of(&entry).addr, hp("proxy.corp", 3128));
        let entry = one("2222 example.com 22 http://[2001:DB8::1]:8080");
        assert_eq!(proxy_of(&entry).addr, hp("2001:db8::1", 8080));
        let entry = one("2222 example.com 22 http://10.0.0.1:8080");
        assert_eq!(proxy_of(&entry).addr, hp("10.0.0.1", 8080));
    }

    #[test]
    fn proxy_url_credentials_are_percent_decoded() {
        let entry = one("2222 h 22 http://alice:s3cret@proxy:3128");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("alice", "s3cret")));
        let entry = one("2222 h 22 http://CORP%5Cjdoe:p%40ss%3Aw%25rd%20x@proxy:3128");
        assert_eq!(
            proxy_of(&entry).credentials,
            Some(creds(r"CORP\jdoe", "p@ss:w%rd x"))
        );
        let entry = one("2222 h 22 http://us%C3%A9r:pw@proxy:3128");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("usér", "pw")));
        // Lenient: a raw `@` in the password, a raw backslash in the user.
        let entry = one(r"2222 h 22 http://CORP\jdoe:p@ss@proxy:3128");
        assert_eq!(
            proxy_of(&entry).credentials,
            Some(creds(r"CORP\jdoe", "p@ss"))
        );
        let entry = one("2222 h 22 http://alice:@proxy:3128");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("alice", "")));
        let entry = one("2222 h 22 http://alice:a=b@proxy:3128");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("alice", "a=b")));
    }

    #[test]
    fn proxy_url_errors() {
        let cases = [
            ("socks5://proxy:1080", "unsupported proxy scheme \"socks5\" in PROXY_URL: only http:// and https:// are supported"),
            ("ftp://proxy:21", "unsupported proxy scheme \"ftp\" in PROXY_URL: only http:// and https:// are supported"),
            ("http://proxy", "PROXY_URL needs a port: expected http://[USER:PASSWORD@]HOST:PORT"),
            ("http://[::1]", "PROXY_URL needs a port: expected http://[USER:PASSWORD@]HOST:PORT"),
            ("http://[::1", "invalid PROXY_URL: expected http://[USER:PASSWORD@]HOST:PORT"),
            ("http://proxy:3128/path", "invalid PROXY_URL: expected http://[USER:PASSWORD@]HOST:PORT, without a path"),
            ("http://proxy:3128?x", "invalid PROXY_URL: expected http://[USER:PASSWORD@]HOST:PORT, without a path"),
            ("http://proxy:3128//", "invalid PROXY_URL: expected http://[USER:PASSWORD@]HOST:PORT, without a path"),
            ("http://::1:3128", "invalid PROXY_URL: write an IPv6 host in brackets, e.g. http://[::1]:3128"),
            ("http://:3128", "invalid host \"\" in PROXY_URL: empty host"),
            ("http://pro_xy!:3128", "invalid host \"pro_xy!\" in PROXY_URL: character '!' not allowed in a host name"),
            ("http://proxy:0", "port \"0\" out of range 1-65535 in PROXY_URL"),
            ("http://proxy:http", "invalid port \"http\" in PROXY_URL: expected a number 1-65535"),
            ("http://proxy:", "invalid port \"\" in PROXY_URL: expected a number 1-65535"),
            ("http://alice@proxy:1", "invalid user info in PROXY_URL: expected USER:PASSWORD"),
            ("http://:pw@proxy:1", "invalid user info in PROXY_URL: USER is empty"),
            ("http://a%3Ab:pw@proxy:1", "invalid user info in PROXY_URL: USER contains ':'"),
            ("http://a:p%0Aw@proxy:1", "invalid user info in PROXY_URL: control characters are not allowed in USER or PASSWORD"),
            ("http://a:p%zzw@proxy:1", "invalid user info in PROXY_URL: '%' not followed by two hex digits"),
            ("http://a:pw%4@proxy:1", "invalid user info in PROXY_URL: '%' not followed by two hex digits"),
            ("http://a:p%FFw@proxy:1", "invalid user info in PROXY_URL: not UTF-8 once percent-decoded"),
        ];
        for (url, message) in cases {
            assert_eq!(
                err1(&format!("2222 h 22 {url}")),
                format!("x.conf:1: {message}"),
                "{url}"
            );
        }
    }

    #[test]
    fn percent_codec() {
        assert_eq!(percent_decode("a%20b%2f%2F"), Ok("a b//".to_string()));
        assert_eq!(percent_decode(""), Ok(String::new()));
        assert!(percent_decode("%").is_err());
        assert!(percent_decode("%2").is_err());
        assert!(percent_decode("%+1").is_err());
        assert!(percent_decode("%é").is_err());
        let user = "a b:c@d/e%f\"g#h[i]j\\kü";
        assert_eq!(
            percent_decode(&percent_encode_user(user)),
            Ok(user.to_string())
        );
        assert_eq!(percent_encode_user(r"CORP\jdoe"), r"CORP\jdoe");
    }

    #[test]
    fn redact_hides_what_looks_like_a_password() {
        assert_eq!(redact("http://u:sekrit@h:1"), "http://u:***@h:1");
        assert_eq!(redact("u:sekrit@h"), "u:***@h");
        assert_eq!(redact("u:a@b@h"), "u:***@h");
        assert_eq!(redact("u@h"), "u@h");
        assert_eq!(redact("plain"), "plain");
        assert_eq!(redact("u:p@x://h"), "u:***@x://h");
    }

    #[test]
    fn messages_never_echo_a_password() {
        let lines = [
            "2222 h 22 p 1 auth=sekrit",
            "2222 h 22 p 1 auth=:sekrit",
            "2222 h 22 auth=u:sekrit",
            "2222 h 22 p 1 auth=\"u:sekrit\u{1}\"",
            "2222 h 22 p 1 auth=\"u:sekrit",
            "2222 h 22 http://u:sekrit@h",
            "2222 h 22 http://u:sekrit@h:1 extra",
            "2222 h 22 http://u:sekrit%zz@h:1",
            "2222 h 22 ftp://u:sekrit@h:1",
            "2222 h 22 http://u:sekrit@h:1,,direct",
            "2222 h 22 http://u:sekrit@h:1>",
            "2222 h 22 http://u:sekrit@h:1>direct",
            "2222 h 22 http://u:se,krit@h:1",
            "2222 h 22 http://u:se>krit@h:1",
            "2222 h 22 http://u:sekrit@h:1, direct",
            "2222 h 22 http://u:sekrit@h:1 http://v:sekrit@h:2",
            "2222 h 22 http://a:1,http://u:sekrit@h",
            "2222 h 22 http://u:sekrit@h:1,http://u:sekrit@h:1",
            "2222 socks http://u:sekrit@h:1 extra",
            "2222 socks http://u:sekrit@h:1 auth=a:b",
            "2222 h 22 u:sekrit@h 1",
            "2222 h 22 u:sekrit@h",
            "2222 http://u:sekrit@h:1 22",
            "2222 h u:sekrit@h",
            "u:sekrit@h h 22",
            "2222 h 22 http://u:sekrit@h:1 auth=a:b",
            "2222 h 22 buffer=1k http://u:sekrit@h:1",
            "defaults http://u:sekrit@h:1",
        ];
        for line in lines {
            for error in errs(line) {
                assert!(!error.contains("sekrit"), "{line:?} -> {error}");
            }
        }
    }

    #[test]
    fn percent_codec_keeps_what_the_hand_written_one_did() {
        // Lower-case hex decodes; a broken escape anywhere is an error, even
        // after a valid one (the crate alone would pass it through).
        assert_eq!(percent_decode("us%c3%a9r"), Ok("usér".to_string()));
        assert!(percent_decode("%41%").is_err());
        assert!(percent_decode("%%41").is_err());
        assert_eq!(
            percent_decode("%41%zz%FF"),
            Err("'%' not followed by two hex digits".to_string())
        );
        // Letters outside ASCII stay readable; white space and controls
        // outside ASCII are encoded, byte by byte, in upper case.
        assert_eq!(percent_encode_user("usér"), "usér");
        assert_eq!(percent_encode_user("a\u{a0}b\u{85}"), "a%C2%A0b%C2%85");
        assert_eq!(percent_encode_user("a b\tc"), "a%20b%09c");
    }
}
