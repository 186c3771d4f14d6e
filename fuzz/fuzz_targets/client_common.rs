//! Shared by `client_socks` and `client_http`: the contract of
//! `client::parse` (src/client/mod.rs, "Contract"), checked on one input,
//! a prefix of it and the input with bytes appended.

use httptunneling::client::{check_host, parse, reply, Kind, Outcome, Parse, Protocol, MAX_REQUEST};

const OUTCOMES: [Outcome; 7] = [
    Outcome::Ok,
    Outcome::NotAllowed,
    Outcome::Refused,
    Outcome::NotFound,
    Outcome::Unreachable,
    Outcome::Timeout,
    Outcome::Other(String::new()),
];

/// Every client-bound stream this result may lead to (module doc "Bytes for
/// the client": each extends every stream returned before it).
fn streams(r: &Parse) -> Vec<Vec<u8>> {
    match r {
        Parse::Partial { send } => vec![send.to_vec()],
        Parse::Reply(bytes, _) => vec![bytes.clone()],
        Parse::Complete(req) => {
            let mut out: Vec<Vec<u8>> = OUTCOMES.iter().map(|o| reply(req, o)).collect();
            out.push(reply(req, &Outcome::Other("HTTP/1.1 403 \u{1b}[31m no".repeat(20))));
            out
        }
    }
}

fn check_one(protocol: Protocol, buf: &[u8], r: &Parse) {
    match r {
        Parse::Partial { .. } => assert!(buf.len() < MAX_REQUEST, "Partial at {}", buf.len()),
        Parse::Complete(req) => {
            assert!(req.head_len > 0, "{req:?}");
            assert!(req.head_len <= buf.len(), "head_len {} > {}", req.head_len, buf.len());
            assert!(req.head_len <= MAX_REQUEST);
            assert_ne!(req.port, 0);
            assert_eq!(check_host(req.host.as_bytes()).as_deref(), Ok(req.host.as_str()));
            match (protocol, req.kind) {
                (Protocol::Http, Kind::Http { minor }) => assert!(minor <= 1),
                (Protocol::Socks, Kind::Socks4 | Kind::Socks4a | Kind::Socks5) => {}
                (p, k) => panic!("{k:?} from a {p:?} entry"),
            }
            if req.kind == Kind::Socks4 {
                assert!(matches!(req.ip(), Some(std::net::IpAddr::V4(_))), "{req:?}");
            }
            for s in streams(r) {
                assert!(s.starts_with(req.kind.interim()));
            }
            let _ = req.destination();
        }
        Parse::Reply(bytes, why) => {
            let text = why.to_string();
            assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
            if protocol == Protocol::Http {
                assert!(bytes.starts_with(b"HTTP/1.1 4"), "{bytes:?}");
            }
        }
    }
}

pub fn run(protocol: Protocol, data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let cut = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let buf = &data[2..];
    let cut = cut % (buf.len() + 1);
    let whole = parse(protocol, buf);
    check_one(protocol, buf, &whole);
    let part = parse(protocol, &buf[..cut]);
    check_one(protocol, &buf[..cut], &part);

    // A result that is not Partial never changes with more bytes.
    if !matches!(part, Parse::Partial { .. }) {
        assert_eq!(part, whole, "prefix of {cut} bytes vs all {}", buf.len());
    }
    // Bytes after the request are the client's data and change nothing.
    if let Parse::Complete(req) = &whole {
        if req.head_len <= cut {
            assert_eq!(part, whole);
        }
    }
    // Whatever the prefix asked to send is the start of every later stream.
    if let Parse::Partial { send } = &part {
        for s in streams(&whole) {
            assert!(s.starts_with(send), "{send:?} then {s:?}");
        }
    }
    // Appending bytes (here: the input again, and a blank line) to a final
    // result leaves it as it was.
    if !matches!(whole, Parse::Partial { .. }) {
        let mut longer = buf.to_vec();
        longer.extend_from_slice(b"\r\n\r\n");
        longer.extend_from_slice(buf);
        assert_eq!(parse(protocol, &longer), whole, "appended");
    }
}
