//! Properties of [`parse`] over both protocols, and the destination checks.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

/// The client-bound stream a result stands for (module doc).
fn stream(parse: &Parse) -> Vec<u8> {
    match parse {
        Parse::Partial { send } => send.to_vec(),
        Parse::Complete(request) => request.kind.interim().to_vec(),
        Parse::Reply(bytes, _) => bytes.clone(),
    }
}

const OUTCOMES: [Outcome; 7] = [
    Outcome::Ok,
    Outcome::NotAllowed,
    Outcome::Refused,
    Outcome::NotFound,
    Outcome::Unreachable,
    Outcome::Timeout,
    Outcome::Other(String::new()),
];

#[test]
fn check_host_keeps_names_and_canonicalises_ips() {
    for (host, checked) in [
        ("Example.ORG", "Example.ORG"),
        ("example.org.", "example.org."),
        ("_srv.a-b.example", "_srv.a-b.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("localhost", "localhost"),
        ("1a", "1a"),
        ("10.0.0.1", "10.0.0.1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("::ffff:10.0.0.1", "::ffff:10.0.0.1"),
        ("::", "::"),
    ] {
        assert_eq!(
            check_host(host.as_bytes()).as_deref(),
            Ok(checked),
            "{host}"
        );
    }
}

#[test]
fn check_host_refuses_what_is_not_a_name() {
    let long_label = format!("{}.example", "a".repeat(64));
    let long_name = format!("{}.{}", vec!["a".repeat(63); 3].join("."), "b".repeat(62));
    let too_long = "a.".repeat(128);
    for (host, reason) in [
        ("", "empty host"),
        (too_long.as_str(), "host longer than 255 bytes"),
        ("a b", "byte 0x20 not allowed in a host name"),
        ("a\tb", "byte 0x09 not allowed in a host name"),
        ("a\x7fb", "byte 0x7f not allowed in a host name"),
        ("bücher.example", "non-ASCII host name (send its xn-- form)"),
        ("a/b", "character '/' not allowed in a host name"),
        ("[::1]", "character '[' not allowed in a host name"),
        ("fe80::1%eth0", "character '%' not allowed in a host name"),
        ("1:2", "not an IPv6 address"),
        (".", "empty label in host name"),
        (".example", "empty label in host name"),
        ("a..b", "empty label in host name"),
        ("example..", "empty label in host name"),
        (
            "-a.example",
            "label starting or ending with '-' in host name",
        ),
        (
            "a-.example",
            "label starting or ending with '-' in host name",
        ),
        (
            long_label.as_str(),
            "label longer than 63 characters in host name",
        ),
        (long_name.as_str(), "host name longer than 253 characters"),
        ("127.1", "not a valid IPv4 address"),
        ("2130706433", "not a valid IPv4 address"),
        ("010.0.0.1", "not a valid IPv4 address"),
        ("0x7f000001", "not a valid IPv4 address"),
        ("0x7f.0.0.1.", "not a valid IPv4 address"),
        ("1.2.3.4.5", "not a valid IPv4 address"),
    ] {
        assert_eq!(
            check_host(host.as_bytes()),
            Err(reason.to_string()),
            "{host:?}"
        );
    }
}

#[test]
fn request_destination_and_ip() {
    let mut request = Request {
        host: "2001:db8::1".to_string(),
        port: 443,
        kind: Kind::Socks5,
        head_len: 26,
    };
    assert_eq!(request.destination(), "[2001:db8::1]:443");
    assert_eq!(request.ip(), Some("2001:db8::1".parse().unwrap()));
    request.host = "example.org".to_string();
    assert_eq!(request.destination(), "example.org:443");
    assert_eq!(request.ip(), None);
}

#[test]
fn reply_begins_with_the_interim_bytes_of_its_kind() {
    for kind in [
        Kind::Socks5,
        Kind::Socks4,
        Kind::Socks4a,
        Kind::Http { minor: 1 },
    ] {
        let request = Request {
            host: "example.org".to_string(),
            port: 443,
            kind,
            head_len: 0,
        };
        for outcome in &OUTCOMES {
            assert!(
                reply(&request, outcome).starts_with(kind.interim()),
                "{kind} {outcome:?}"
            );
        }
    }
    assert_eq!(Kind::Socks5.interim(), [5, 0]);
}

#[test]
fn refusals_read_as_log_lines() {
    for (refusal, text) in [
        (
            Refusal::NotSocks(0x47),
            "not a SOCKS request (first byte 0x47)",
        ),
        (
            Refusal::NoAcceptableMethod,
            "no acceptable SOCKS 5 method (only \"no authentication\" is offered)",
        ),
        (
            Refusal::Command(2),
            "SOCKS command 2 not supported (CONNECT only)",
        ),
        (
            Refusal::AddressType(9),
            "SOCKS 5 address type 9 not supported",
        ),
        (
            Refusal::Host("empty host".into()),
            "invalid destination: empty host",
        ),
        (
            Refusal::Method("GET".into()),
            "method \"GET\" not allowed (CONNECT only)",
        ),
        (Refusal::TooLarge, "request head longer than 16384 bytes"),
        (
            Refusal::Malformed("port 0".into()),
            "malformed request: port 0",
        ),
    ] {
        assert_eq!(refusal.to_string(), text);
    }
}

/// Junk past MAX_REQUEST gets a reply at once, and the bytes past the limit
/// (here: the end of an otherwise valid head) are never looked at.
#[test]
fn nothing_past_max_request_is_read() {
    let start = Instant::now();
    let mut head = b"CONNECT a.example:443 HTTP/1.1\r\nX: ".to_vec();
    head.resize(MAX_REQUEST + 1000, b'v');
    head.extend_from_slice(b"\r\n\r\n");
    assert!(matches!(
        parse(Protocol::Http, &head),
        Parse::Reply(_, Refusal::TooLarge)
    ));
    let junk = vec![b'A'; MAX_REQUEST + 1000];
    assert!(matches!(
        parse(Protocol::Http, &junk),
        Parse::Reply(_, Refusal::TooLarge)
    ));
    for byte in [4, 5, b'A', 0] {
        let junk = vec![byte; MAX_REQUEST + 1000];
        assert!(
            matches!(parse(Protocol::Socks, &junk), Parse::Reply(..)),
            "{byte}"
        );
    }
    // Many header lines: the slow path with its large header table.
    let mut many = b"CONNECT a.example:443 HTTP/1.1\r\n".to_vec();
    while many.len() < MAX_REQUEST + 1000 {
        many.extend_from_slice(b"h:\n");
    }
    assert!(matches!(
        parse(Protocol::Http, &many),
        Parse::Reply(_, Refusal::TooLarge)
    ));
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

/// A valid request of each form, what it parses to, and its bytes.
fn valid_request() -> impl Strategy<Value = (Protocol, Vec<u8>, Request)> {
    let name = "[a-zA-Z_]([a-zA-Z0-9_-]{0,8}[a-zA-Z0-9_])?(\\.[a-zA-Z_][a-zA-Z0-9_-]{0,8}[a-zA-Z0-9_]){0,3}\\.?";
    let host = prop_oneof![
        name.prop_map(|s| (s.clone(), s)),
        any::<[u8; 4]>().prop_map(|o| {
            let s = Ipv4Addr::from(o).to_string();
            (s.clone(), s)
        }),
        any::<[u8; 16]>().prop_map(|o| {
            let ip = Ipv6Addr::from(o);
            (
                format!("{:x?}", ip.segments())
                    .replace(['[', ']', ' '], "")
                    .replace(',', ":"),
                ip.to_string(),
            )
        }),
    ];
    let methods = prop::collection::vec(any::<u8>(), 0..6);
    let user = "[a-z]{0,12}";
    let headers = prop::collection::vec(("[A-Za-z-]{1,12}", "[ -~]{0,30}"), 0..5);
    (
        host,
        1u16..,
        any::<[u8; 4]>(),
        methods,
        user,
        headers,
        0u8..6,
        any::<bool>(),
    )
        .prop_map(
            |((sent, host), port, ip, mut methods, user, headers, form, bare_lf)| {
                let [hi, lo] = port.to_be_bytes();
                let mut bytes = Vec::new();
                let (protocol, kind, host) = match form {
                    // SOCKS 5 with the host as its natural address type.
                    0 | 1 => {
                        methods.push(0);
                        bytes.extend_from_slice(&[5, methods.len() as u8]);
                        bytes.extend_from_slice(&methods);
                        bytes.extend_from_slice(&[5, 1, 0]);
                        match (host.parse::<Ipv4Addr>(), host.parse::<Ipv6Addr>()) {
                            (Ok(v4), _) if form == 0 => {
                                bytes.push(1);
                                bytes.extend_from_slice(&v4.octets());
                            }
                            (_, Ok(v6)) if form == 0 => {
                                bytes.push(4);
                                bytes.extend_from_slice(&v6.octets());
                            }
                            _ => {
                                bytes.extend_from_slice(&[3, sent.len() as u8]);
                                bytes.extend_from_slice(sent.as_bytes());
                            }
                        }
                        bytes.extend_from_slice(&[hi, lo]);
                        (Protocol::Socks, Kind::Socks5, host)
                    }
                    2 => {
                        let ip = Ipv4Addr::from(ip);
                        let ip = if matches!(ip.octets(), [0, 0, 0, x] if x != 0) {
                            Ipv4Addr::new(10, 0, 0, 1)
                        } else {
                            ip
                        };
                        bytes.extend_from_slice(&[4, 1, hi, lo]);
                        bytes.extend_from_slice(&ip.octets());
                        bytes.extend_from_slice(user.as_bytes());
                        bytes.push(0);
                        (Protocol::Socks, Kind::Socks4, ip.to_string())
                    }
                    3 => {
                        bytes.extend_from_slice(&[4, 1, hi, lo, 0, 0, 0, ip[3].max(1)]);
                        bytes.extend_from_slice(user.as_bytes());
                        bytes.push(0);
                        bytes.extend_from_slice(sent.as_bytes());
                        bytes.push(0);
                        (Protocol::Socks, Kind::Socks4a, host)
                    }
                    _ => {
                        let eol = if bare_lf { "\n" } else { "\r\n" };
                        let authority = if sent.contains(':') {
                            format!("[{sent}]:{port}")
                        } else {
                            format!("{sent}:{port}")
                        };
                        let minor = form - 4;
                        let mut head = format!("CONNECT {authority} HTTP/1.{minor}{eol}");
                        for (name, value) in headers {
                            head.push_str(&format!("{name}: {}{eol}", value.trim()));
                        }
                        head.push_str(eol);
                        bytes.extend_from_slice(head.as_bytes());
                        (Protocol::Http, Kind::Http { minor }, host)
                    }
                };
                let request = Request {
                    host,
                    port,
                    kind,
                    head_len: bytes.len(),
                };
                (protocol, bytes, request)
            },
        )
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Socks), Just(Protocol::Http)]
}

/// Every result's client-bound stream extends the one of every prefix of
/// `bytes`, and once a result is not Partial, more bytes never change it.
fn check_prefix_consistent(protocol: Protocol, bytes: &[u8]) -> Result<(), TestCaseError> {
    let last = parse(protocol, bytes);
    let last_stream = stream(&last);
    let mut settled: Option<Parse> = None;
    for cut in 0..=bytes.len() {
        let now = parse(protocol, &bytes[..cut]);
        prop_assert!(
            last_stream.starts_with(&stream(&now)),
            "cut {}: {:?} then {:?}",
            cut,
            now,
            last
        );
        if let Some(settled) = &settled {
            prop_assert_eq!(settled, &now, "cut {}", cut);
        } else if !matches!(now, Parse::Partial { .. }) {
            if let Parse::Complete(request) = &now {
                prop_assert!(request.head_len <= cut);
            }
            settled = Some(now);
        }
    }
    Ok(())
}

/// Bytes that look like the start of a request often enough to go deep.
fn request_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let prefix = prop_oneof![
        Just(Vec::new()),
        Just(vec![5, 1, 0, 5, 1, 0]),
        Just(vec![5, 2, 0, 1, 5]),
        Just(vec![4, 1, 0, 80, 0, 0, 0, 1]),
        Just(b"CONNECT ".to_vec()),
        Just(b"CONNECT [".to_vec()),
        Just(b"CONNECT a.example:443 HTTP/1.1\r\n".to_vec()),
    ];
    let tail = prop::collection::vec(
        prop_oneof![
            any::<u8>(),
            Just(0u8),
            Just(b':'),
            Just(b'\n'),
            Just(b'.'),
            Just(b'a')
        ],
        0..300,
    );
    (prefix, tail).prop_map(|(mut prefix, tail)| {
        prefix.extend(tail);
        prefix
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(protocol in protocol(), bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = parse(protocol, &bytes);
    }

    /// Every result's client-bound stream extends the one of every prefix,
    /// and once a result is not Partial, more bytes never change it.
    #[test]
    fn results_are_prefix_consistent(protocol in protocol(), bytes in request_like_bytes()) {
        check_prefix_consistent(protocol, &bytes)?;
    }

    /// The same for arbitrary bytes, cut at every byte. The tunnel parses
    /// everything received so far after each read, so this covers any way
    /// of cutting the input into reads.
    #[test]
    fn arbitrary_bytes_are_prefix_consistent(protocol in protocol(), bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check_prefix_consistent(protocol, &bytes)?;
    }
}

proptest! {
    // Inputs of 16 KiB, parsed a few dozen times each: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The cap: nothing past [`MAX_REQUEST`] bytes is looked at (whatever
    /// follows them, the result is the same), a request still incomplete at
    /// the cap is refused rather than left waiting for more, and a complete
    /// one ends within it. Half-open heads of every kind: an HTTP head
    /// without its blank line (one endless header, or many), SOCKS 5 and
    /// 4a requests whose strings never end.
    #[test]
    fn nothing_past_max_request_is_looked_at(
        (protocol, start) in prop_oneof![
            Just((Protocol::Http, b"CONNECT a.example:1 HTTP/1.1\r\nHost: ".to_vec())),
            Just((Protocol::Http, b"CONNECT a.example:1 HTTP/1.1\r\n".to_vec())),
            Just((Protocol::Http, b"CONNECT ".to_vec())),
            Just((Protocol::Socks, vec![5, 1, 0, 5, 1, 0, 3, 255])),
            Just((Protocol::Socks, vec![4, 1, 0, 80, 0, 0, 0, 1])),
            Just((Protocol::Socks, vec![4, 1, 0, 80, 0, 0, 0, 1, b'u', 0])),
        ],
        filler in prop_oneof![Just(&b"a"[..]), Just(&b"X-A: b\r\n"[..]), Just(&b" "[..])],
        len in MAX_REQUEST - 4..MAX_REQUEST + 4,
        end in prop_oneof![Just(&b""[..]), Just(&b"\r\n\r\n"[..]), Just(&b"\0"[..])],
        tail in prop::collection::vec(any::<u8>(), 0..64),
        other in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = start;
        while bytes.len() < len {
            bytes.extend_from_slice(filler);
        }
        bytes.truncate(len);
        bytes.extend_from_slice(end);
        bytes.extend_from_slice(&tail);
        let whole = parse(protocol, &bytes);
        if bytes.len() >= MAX_REQUEST {
            prop_assert!(!matches!(whole, Parse::Partial { .. }), "still Partial at {} bytes", bytes.len());
            let mut changed = bytes[..MAX_REQUEST].to_vec();
            changed.extend_from_slice(&other);
            prop_assert_eq!(parse(protocol, &changed), whole.clone());
        }
        if let Parse::Complete(request) = &whole {
            prop_assert!(request.head_len <= MAX_REQUEST);
        }
        // And prefixes agree with the whole near the cap.
        let last_stream = stream(&whole);
        for cut in (MAX_REQUEST - 8..=bytes.len()).chain([0, 1, 9, bytes.len() / 2]) {
            let now = parse(protocol, &bytes[..cut.min(bytes.len())]);
            prop_assert!(last_stream.starts_with(&stream(&now)), "cut {}: {:?} then {:?}", cut, now, whole);
            prop_assert!(matches!(now, Parse::Partial { .. }) || now == whole, "cut {}: {:?} then {:?}", cut, now, whole);
        }
    }

    /// Split anywhere, a valid request is Partial until its last byte, then
    /// the same Complete; what follows it changes nothing; and every stream
    /// on the way is a prefix of the reply for any outcome.
    #[test]
    fn valid_requests_parse_the_same_split_at_every_byte(
        (protocol, bytes, request) in valid_request(),
        after in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut with_data = bytes.clone();
        with_data.extend_from_slice(&after);
        for cut in 0..bytes.len() {
            let now = parse(protocol, &bytes[..cut]);
            prop_assert!(matches!(now, Parse::Partial { .. }), "cut {} of {:?}: {:?}", cut, bytes, now);
            for outcome in &OUTCOMES {
                prop_assert!(reply(&request, outcome).starts_with(&stream(&now)));
            }
        }
        for cut in bytes.len()..=with_data.len() {
            prop_assert_eq!(parse(protocol, &with_data[..cut]), Parse::Complete(request.clone()), "cut {} of {:?}", cut, with_data);
        }
        prop_assert_eq!(&with_data[request.head_len..], &after[..]);
    }
}
