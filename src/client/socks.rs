//! SOCKS requests and replies, as bytes: SOCKS 5 (RFC 1928) with the "no
//! authentication" method and the CONNECT command, SOCKS 4 and SOCKS 4a.
//!
//! Owns: the request formats, the method selection, the reply codes. Never
//! does: I/O, `allow`, resolving, logging; the contract (a pure function of
//! the bytes so far, one client-bound stream written from an offset) is the
//! parent module's.
//!
//! ```text
//! SOCKS 5 greeting   05 NMETHODS METHODS...        → 05 00, or 05 FF and close
//!         request    05 CMD RSV ATYP ADDR PORT(2)  → 05 REP 00 01 00000000 0000
//!                    ATYP 1: 4 bytes IPv4, 3: LEN and LEN bytes of name, 4: 16 bytes IPv6
//! SOCKS 4 request    04 CMD PORT(2) IP(4) USERID 00              → 00 5A|5B 0000 00000000
//! SOCKS 4a request   04 CMD PORT(2) 00 00 00 x USERID 00 HOST 00   (x ≠ 0)
//! ```
//!
//! Decisions where RFC 1928 and SPEC leave room: RSV is not checked; any
//! command but CONNECT (1) gets reply 7 (SOCKS 4: 91), once the address is
//! in; an unknown ATYP gets reply 8 at once (its length cannot be known),
//! or 7 if the command is not CONNECT either; a request whose version byte is
//! not 5 gets reply 1; port 0 gets reply 1 (SOCKS 4: 91); a SOCKS 4 user id or
//! SOCKS 4a name longer than 255 bytes gets 91 as soon as the 256th byte
//! arrives without its NUL; the user id is ignored. `0.0.0.0` is an ordinary
//! SOCKS 4 address (only `0.0.0.x`, x ≠ 0, means 4a). The bound address in
//! every SOCKS reply is zero: clients ignore it for CONNECT.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{check_host, Kind, Outcome, Parse, Refusal, Request};

/// SOCKS 5 method selection: version 5, method 0 ("no authentication").
pub const METHOD_NO_AUTH: &[u8] = &[5, 0];

/// SOCKS 5 method selection refusing every method offered.
const METHOD_NONE: &[u8] = &[5, 0xFF];

/// Longest SOCKS 4 user id and SOCKS 4a host name, in bytes (NUL excluded).
const MAX_FIELD: usize = 255;

/// SOCKS 5 reply codes (RFC 1928 §6).
pub mod rep {
    /// Succeeded.
    pub const OK: u8 = 0;
    /// General SOCKS server failure.
    pub const FAILURE: u8 = 1;
    /// Connection not allowed by ruleset.
    pub const NOT_ALLOWED: u8 = 2;
    /// Host unreachable.
    pub const HOST_UNREACHABLE: u8 = 4;
    /// Connection refused.
    pub const REFUSED: u8 = 5;
    /// Command not supported.
    pub const COMMAND: u8 = 7;
    /// Address type not supported.
    pub const ADDRESS_TYPE: u8 = 8;
}

/// SOCKS 4 reply codes: request granted, request rejected or failed.
const GRANTED: u8 = 90;
const REJECTED: u8 = 91;

/// Parses a SOCKS request (either version) from the first byte on.
pub(super) fn parse(buf: &[u8]) -> Parse {
    match buf.first() {
        None => partial(b""),
        Some(5) => parse5(buf),
        Some(4) => parse4(buf),
        Some(&b) => Parse::Reply(Vec::new(), Refusal::NotSocks(b)),
    }
}

fn partial(send: &'static [u8]) -> Parse {
    Parse::Partial { send }
}

/// The SOCKS 5 greeting, then the request.
fn parse5(buf: &[u8]) -> Parse {
    let Some(&nmethods) = buf.get(1) else {
        return partial(b"");
    };
    let greeting_len = 2 + usize::from(nmethods);
    let Some(methods) = buf.get(2..greeting_len) else {
        return partial(b"");
    };
    if !methods.contains(&0) {
        return Parse::Reply(METHOD_NONE.to_vec(), Refusal::NoAcceptableMethod);
    }
    let request = &buf[greeting_len..];
    let fail = |code, why| Parse::Reply(reply5(code), why);
    let waiting = partial(METHOD_NO_AUTH);
    let Some(&version) = request.first() else {
        return waiting;
    };
    if version != 5 {
        return fail(
            rep::FAILURE,
            Refusal::Malformed(format!("SOCKS 5 request with version {version}")),
        );
    }
    let (Some(&command), Some(&atyp)) = (request.get(1), request.get(3)) else {
        return waiting;
    };
    // The address: its offset in `request` and its length.
    let (addr_at, addr_len) = match atyp {
        1 => (4, 4),
        4 => (4, 16),
        3 => match request.get(4) {
            Some(&len) => (5, usize::from(len)),
            None => return waiting,
        },
        _ if command != 1 => return fail(rep::COMMAND, Refusal::Command(command)),
        _ => return fail(rep::ADDRESS_TYPE, Refusal::AddressType(atyp)),
    };
    let port_at = addr_at + addr_len;
    let Some(port) = request.get(port_at..port_at + 2) else {
        return waiting;
    };
    if command != 1 {
        return fail(rep::COMMAND, Refusal::Command(command));
    }
    let addr = &request[addr_at..port_at];
    let host = match atyp {
        1 => Ipv4Addr::from(<[u8; 4]>::try_from(addr).expect("ATYP 1 has 4 bytes")).to_string(),
        4 => Ipv6Addr::from(<[u8; 16]>::try_from(addr).expect("ATYP 4 has 16 bytes")).to_string(),
        _ => match check_host(addr) {
            Ok(host) => host,
            Err(reason) => return fail(rep::ADDRESS_TYPE, Refusal::Host(reason)),
        },
    };
    let port = u16::from_be_bytes([port[0], port[1]]);
    if port == 0 {
        return fail(rep::FAILURE, Refusal::Malformed("port 0".to_string()));
    }
    Parse::Complete(Request {
        host,
        port,
        kind: Kind::Socks5,
        head_len: greeting_len + port_at + 2,
    })
}

/// A SOCKS 4 or 4a request.
fn parse4(buf: &[u8]) -> Parse {
    let fail = |why| Parse::Reply(reply4(false), why);
    let Some(fixed) = buf.get(..8) else {
        return partial(b"");
    };
    let command = fixed[1];
    let port = u16::from_be_bytes([fixed[2], fixed[3]]);
    let ip = Ipv4Addr::new(fixed[4], fixed[5], fixed[6], fixed[7]);
    let user_end = match nul_within(&buf[8..]) {
        Field::End(len) => 8 + len,
        Field::Partial => return partial(b""),
        Field::TooLong => {
            return fail(Refusal::Malformed(format!(
                "SOCKS 4 user id longer than {MAX_FIELD} bytes"
            )))
        }
    };
    let socks4a = matches!(ip.octets(), [0, 0, 0, x] if x != 0);
    let (host, kind, head_len) = if socks4a {
        let host_at = user_end + 1;
        let host_end = match nul_within(&buf[host_at..]) {
            Field::End(len) => host_at + len,
            Field::Partial => return partial(b""),
            Field::TooLong => {
                return fail(Refusal::Malformed(format!(
                    "SOCKS 4a host name longer than {MAX_FIELD} bytes"
                )))
            }
        };
        let host = &buf[host_at..host_end];
        (host, Kind::Socks4a, host_end + 1)
    } else {
        (&[][..], Kind::Socks4, user_end + 1)
    };
    if command != 1 {
        return fail(Refusal::Command(command));
    }
    let host = match kind {
        Kind::Socks4a => match check_host(host) {
            Ok(host) => host,
            Err(reason) => return fail(Refusal::Host(reason)),
        },
        _ => ip.to_string(),
    };
    if port == 0 {
        return fail(Refusal::Malformed("port 0".to_string()));
    }
    Parse::Complete(Request {
        host,
        port,
        kind,
        head_len,
    })
}

/// Where a NUL-terminated field of at most [`MAX_FIELD`] bytes ends.
enum Field {
    /// The field is this long; its NUL follows it.
    End(usize),
    /// No NUL yet, and the field may still end in time.
    Partial,
    /// More than [`MAX_FIELD`] bytes without a NUL.
    TooLong,
}

fn nul_within(bytes: &[u8]) -> Field {
    let window = &bytes[..bytes.len().min(MAX_FIELD + 1)];
    match window.iter().position(|&b| b == 0) {
        Some(len) => Field::End(len),
        None if window.len() > MAX_FIELD => Field::TooLong,
        None => Field::Partial,
    }
}

/// The SOCKS 5 reply code for an outcome (SPEC's table).
pub(super) fn code5(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Ok => rep::OK,
        Outcome::NotAllowed => rep::NOT_ALLOWED,
        Outcome::Refused => rep::REFUSED,
        Outcome::NotFound | Outcome::Unreachable | Outcome::Timeout => rep::HOST_UNREACHABLE,
        Outcome::Other(_) => rep::FAILURE,
    }
}

/// The whole SOCKS 5 client-bound stream after an accepted greeting: the
/// method selection, then `05 code 00 01` and a zero IPv4 address and port.
pub fn reply5(code: u8) -> Vec<u8> {
    let mut out = METHOD_NO_AUTH.to_vec();
    out.extend_from_slice(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]);
    out
}

/// A SOCKS 4 reply: version 0, 90 granted or 91 rejected, zero port and address.
pub fn reply4(granted: bool) -> Vec<u8> {
    let code = if granted { GRANTED } else { REJECTED };
    vec![0, code, 0, 0, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::super::{parse as parse_any, reply, Protocol};
    use super::*;

    fn parse(buf: &[u8]) -> Parse {
        parse_any(Protocol::Socks, buf)
    }

    fn complete(host: &str, port: u16, kind: Kind, head_len: usize) -> Parse {
        Parse::Complete(Request {
            host: host.to_string(),
            port,
            kind,
            head_len,
        })
    }

    fn refused(bytes: &[u8], why: Refusal) -> Parse {
        Parse::Reply(bytes.to_vec(), why)
    }

    const FAIL5: fn(u8) -> Vec<u8> = reply5;

    // Captured from curl 7.88.1 (`--socks5-hostname`, `--socks5`, `-x
    // socks5h://u:p@`, `--socks4a`, `--socks4`, `-x socks4a://alice@`)
    // against a listener that recorded every byte.

    #[test]
    fn curl_socks5_hostname() {
        let bytes = b"\x05\x02\x00\x01\x05\x01\x00\x03\x0bExample.ORG\x1f\x90";
        assert_eq!(
            parse(bytes),
            complete("Example.ORG", 8080, Kind::Socks5, 22)
        );
        assert_eq!(
            parse(b"\x05\x02\x00\x01"),
            Parse::Partial { send: &[5, 0] },
            "the greeting alone asks for the method selection"
        );
    }

    #[test]
    fn curl_socks5_with_credentials_offers_no_auth_too() {
        let bytes = b"\x05\x03\x00\x01\x02\x05\x01\x00\x03\x0bexample.org\x01\xbb";
        assert_eq!(parse(bytes), complete("example.org", 443, Kind::Socks5, 23));
    }

    #[test]
    fn curl_socks5_ipv4() {
        let bytes = b"\x05\x02\x00\x01\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90";
        assert_eq!(parse(bytes), complete("127.0.0.1", 8080, Kind::Socks5, 14));
    }

    #[test]
    fn curl_socks5_hostname_with_an_ip_sends_atyp_1() {
        let bytes = b"\x05\x02\x00\x01\x05\x01\x00\x01\x0a\x01\x02\x03\x01\xbb";
        assert_eq!(parse(bytes), complete("10.1.2.3", 443, Kind::Socks5, 14));
    }

    #[test]
    fn curl_socks5_ipv6() {
        let mut bytes = b"\x05\x02\x00\x01\x05\x01\x00\x04".to_vec();
        bytes.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        bytes.extend_from_slice(&[0x1f, 0x90]);
        assert_eq!(
            parse(&bytes),
            complete("2001:db8::1", 8080, Kind::Socks5, 26)
        );
    }

    #[test]
    fn curl_socks4a() {
        let bytes = b"\x04\x01\x1f\x90\x00\x00\x00\x01\x00Example.ORG\x00";
        assert_eq!(
            parse(bytes),
            complete("Example.ORG", 8080, Kind::Socks4a, 21)
        );
    }

    #[test]
    fn curl_socks4a_with_a_user_id() {
        let bytes = b"\x04\x01\x00\x50\x00\x00\x00\x01alice\x00example.org\x00";
        assert_eq!(parse(bytes), complete("example.org", 80, Kind::Socks4a, 26));
    }

    #[test]
    fn curl_socks4a_with_an_ip_literal_names_it() {
        let bytes = b"\x04\x01\x00\x50\x00\x00\x00\x01\x00192.168.0.1\x00";
        assert_eq!(parse(bytes), complete("192.168.0.1", 80, Kind::Socks4a, 21));
    }

    #[test]
    fn curl_socks4() {
        let bytes = b"\x04\x01\x1f\x90\x7f\x00\x00\x01\x00";
        assert_eq!(parse(bytes), complete("127.0.0.1", 8080, Kind::Socks4, 9));
    }

    #[test]
    fn socks5_domain_that_is_an_ip_literal_becomes_the_ip() {
        let bytes = b"\x05\x01\x00\x05\x01\x00\x03\x0c2001:DB8::01\x00\x16";
        assert_eq!(parse(bytes), complete("2001:db8::1", 22, Kind::Socks5, 22));
        let bytes = b"\x05\x01\x00\x05\x01\x00\x03\x0810.0.0.1\x00\x16";
        assert_eq!(parse(bytes), complete("10.0.0.1", 22, Kind::Socks5, 18));
    }

    #[test]
    fn socks5_partial_is_the_greeting_answer_once_it_is_in() {
        let bytes = b"\x05\x01\x00\x05\x01\x00\x03\x04host\x00\x16";
        for cut in 0..bytes.len() {
            let send: &[u8] = if cut >= 3 { &[5, 0] } else { b"" };
            assert_eq!(parse(&bytes[..cut]), Parse::Partial { send }, "cut {cut}");
        }
        assert_eq!(parse(bytes), complete("host", 22, Kind::Socks5, 14));
    }

    #[test]
    fn socks5_without_no_auth_gets_05_ff() {
        let why = Refusal::NoAcceptableMethod;
        assert_eq!(parse(b"\x05\x01\x02"), refused(&[5, 0xFF], why.clone()));
        assert_eq!(parse(b"\x05\x00"), refused(&[5, 0xFF], why.clone()));
        assert_eq!(parse(b"\x05\x02\x01\x02\x05"), refused(&[5, 0xFF], why));
    }

    #[test]
    fn socks5_bind_and_udp_get_7_once_the_address_is_in() {
        let bind = b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x1f\x90";
        assert_eq!(
            parse(&bind[..bind.len() - 1]),
            Parse::Partial { send: &[5, 0] }
        );
        let seven = b"\x05\x00\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00";
        assert_eq!(parse(bind), refused(seven, Refusal::Command(2)));
        let udp = b"\x05\x01\x00\x05\x03\x00\x03\x01x\x00\x00";
        assert_eq!(parse(udp), refused(seven, Refusal::Command(3)));
        assert_eq!(FAIL5(7), seven);
    }

    #[test]
    fn socks5_unknown_address_type_gets_8_at_once() {
        let eight = b"\x05\x00\x05\x08\x00\x01\x00\x00\x00\x00\x00\x00";
        let bytes = b"\x05\x01\x00\x05\x01\x00\x02";
        assert_eq!(parse(bytes), refused(eight, Refusal::AddressType(2)));
        let bytes = b"\x05\x01\x00\x05\x02\x00\x09";
        let seven = reply5(7);
        assert_eq!(parse(bytes), refused(&seven, Refusal::Command(2)));
    }

    #[test]
    fn socks5_bad_domain_gets_8() {
        let eight = reply5(8);
        for name in [
            &b""[..],
            b"a b",
            b"bad\x00name",
            b"-x.example",
            b"a..b",
            b"127.1",
        ] {
            let mut bytes = vec![5, 1, 0, 5, 1, 0, 3, name.len() as u8];
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(&[0, 80]);
            match parse(&bytes) {
                Parse::Reply(reply, Refusal::Host(_)) => assert_eq!(reply, eight, "{name:?}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn socks5_wrong_request_version_and_port_0_get_1() {
        let one = reply5(1);
        let bytes = b"\x05\x01\x00\x04\x01\x00\x01";
        assert!(matches!(parse(bytes), Parse::Reply(r, Refusal::Malformed(_)) if r == one));
        let bytes = b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00";
        assert!(matches!(parse(bytes), Parse::Reply(r, Refusal::Malformed(_)) if r == one));
    }

    #[test]
    fn socks5_rsv_is_not_checked() {
        let bytes = b"\x05\x01\x00\x05\x01\x7f\x01\x7f\x00\x00\x01\x00\x16";
        assert_eq!(parse(bytes), complete("127.0.0.1", 22, Kind::Socks5, 13));
    }

    #[test]
    fn socks5_longest_greeting_and_name() {
        let mut bytes = vec![5, 255];
        bytes.extend(std::iter::repeat(7).take(254));
        bytes.push(0);
        let name = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(name.len(), 253);
        let name = name + ".";
        bytes.extend_from_slice(&[5, 1, 0, 3, name.len() as u8]);
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(
            parse(&bytes),
            complete(&name, 65535, Kind::Socks5, bytes.len())
        );
    }

    #[test]
    fn socks4_bind_gets_91() {
        let bytes = b"\x04\x02\x00\x50\x0a\x00\x00\x01\x00";
        assert_eq!(parse(&bytes[..8]), Parse::Partial { send: b"" });
        let failed = b"\x00\x5b\x00\x00\x00\x00\x00\x00";
        assert_eq!(parse(bytes), refused(failed, Refusal::Command(2)));
        let bytes = b"\x04\x02\x00\x50\x00\x00\x00\x01\x00host\x00";
        assert_eq!(parse(&bytes[..13]), Parse::Partial { send: b"" });
        assert_eq!(parse(bytes), refused(failed, Refusal::Command(2)));
    }

    #[test]
    fn socks4_long_fields_fail_at_the_256th_byte() {
        let failed = reply4(false);
        let mut bytes = b"\x04\x01\x00\x50\x0a\x00\x00\x01".to_vec();
        bytes.extend(std::iter::repeat(b'u').take(255));
        assert_eq!(parse(&bytes), Parse::Partial { send: b"" });
        bytes.push(b'u');
        assert!(matches!(parse(&bytes), Parse::Reply(r, Refusal::Malformed(_)) if r == failed));

        let mut bytes = b"\x04\x01\x00\x50\x00\x00\x00\x09\x00".to_vec();
        bytes.extend(std::iter::repeat(b'h').take(255));
        assert_eq!(parse(&bytes), Parse::Partial { send: b"" });
        let mut ok = bytes.clone();
        ok.push(0);
        // 255 bytes pass the field bound but not the name rules (one label).
        assert!(matches!(parse(&ok), Parse::Reply(r, Refusal::Host(_)) if r == failed));
        bytes.push(b'h');
        assert!(matches!(parse(&bytes), Parse::Reply(r, Refusal::Malformed(_)) if r == failed));
    }

    #[test]
    fn socks4_user_id_of_255_bytes_is_fine() {
        let mut bytes = b"\x04\x01\x00\x50\x0a\x00\x00\x01".to_vec();
        bytes.extend(std::iter::repeat(b'u').take(255));
        bytes.push(0);
        assert_eq!(parse(&bytes), complete("10.0.0.1", 80, Kind::Socks4, 264));
    }

    #[test]
    fn socks4_address_0_0_0_0_is_plain_socks4() {
        let bytes = b"\x04\x01\x00\x50\x00\x00\x00\x00\x00host\x00";
        assert_eq!(parse(bytes), complete("0.0.0.0", 80, Kind::Socks4, 9));
    }

    #[test]
    fn socks4_bad_name_and_port_0_get_91() {
        let failed = reply4(false);
        let bytes = b"\x04\x01\x00\x50\x00\x00\x00\x01\x00bad name\x00";
        assert!(matches!(parse(bytes), Parse::Reply(r, Refusal::Host(_)) if r == failed));
        let bytes = b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00";
        assert!(matches!(parse(bytes), Parse::Reply(r, Refusal::Host(_)) if r == failed));
        let bytes = b"\x04\x01\x00\x00\x0a\x00\x00\x01\x00";
        assert!(matches!(parse(bytes), Parse::Reply(r, Refusal::Malformed(_)) if r == failed));
    }

    #[test]
    fn other_first_bytes_are_closed_without_a_reply() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n"),
            refused(b"", Refusal::NotSocks(b'G'))
        );
        assert_eq!(
            parse(b"\x16\x03\x01"),
            refused(b"", Refusal::NotSocks(0x16))
        );
        assert_eq!(parse(b""), Parse::Partial { send: b"" });
    }

    #[test]
    fn socks5_reply_for_every_outcome() {
        let request = Request {
            host: "example.org".to_string(),
            port: 443,
            kind: Kind::Socks5,
            head_len: 0,
        };
        for (outcome, code) in [
            (Outcome::Ok, 0),
            (Outcome::NotAllowed, 2),
            (Outcome::Refused, 5),
            (Outcome::NotFound, 4),
            (Outcome::Unreachable, 4),
            (Outcome::Timeout, 4),
            (
                Outcome::Other("HTTP/1.1 407 Proxy Authentication Required".into()),
                1,
            ),
        ] {
            assert_eq!(
                reply(&request, &outcome),
                [5, 0, 5, code, 0, 1, 0, 0, 0, 0, 0, 0],
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn socks4_reply_for_every_outcome() {
        for kind in [Kind::Socks4, Kind::Socks4a] {
            let request = Request {
                host: "10.0.0.1".to_string(),
                port: 80,
                kind,
                head_len: 9,
            };
            assert_eq!(reply(&request, &Outcome::Ok), [0, 90, 0, 0, 0, 0, 0, 0]);
            for outcome in [
                Outcome::NotAllowed,
                Outcome::Refused,
                Outcome::NotFound,
                Outcome::Unreachable,
                Outcome::Timeout,
                Outcome::Other("x".into()),
            ] {
                assert_eq!(reply(&request, &outcome), [0, 91, 0, 0, 0, 0, 0, 0]);
            }
        }
    }
}
