//! Proxy authentication against a scripted fake proxy: what squid will not
//! do. A 407 with a chunked body answered on the same connection, a proxy
//! that closes after its 407, a 200 straight after the NTLM negotiate
//! message, several schemes offered at once, a full NTLM exchange checked
//! byte by byte, `stale=true` after a learnt Digest nonce, a 2 MiB 407 body,
//! wrong passwords, malformed NTLM challenges, and which scheme is never
//! sent.
//!
//! The fake proxy records every request head; the tests check them after
//! the fact: a Digest answer is recomputed with
//! `httptunneling::auth::digest::response` from the nonce the fake sent, an
//! NTLM authenticate message is taken apart and its NTLMv2 response
//! recomputed from the challenge the fake sent.

mod common;

use common::*;
use httptunneling::auth::{challenge, digest, ntlm};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const OK: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

const USER: &str = "alice";
const PASSWORD: &str = "Pw-8c1e";

/// The realm and nonces the fake proxy's Digest challenges carry.
const REALM: &str = "fake-realm";
const NONCE_A: &str = "nonce-A-5e1f0c";
const NONCE_B: &str = "nonce-B-77aa31";
const OPAQUE: &str = "opaque-3f";

// ---------------------------------------------------------------------------
// The binary and its fake proxy
// ---------------------------------------------------------------------------

/// The binary with one entry through a fake proxy to an echo backend.
struct Setup {
    ht: Running,
    port: u16,
    proxy: FakeProxy,
    echo: Backend,
}

impl Setup {
    /// The entry is `127.0.0.1:PORT 127.0.0.1 ECHO 127.0.0.1 PROXY OPTIONS`;
    /// `script` runs on each connection the proxy accepts.
    fn new<F>(script: F, options: &str) -> Setup
    where
        F: Fn(ProxyConn) + Send + Sync + 'static,
    {
        let echo = echo_backend();
        let proxy = FakeProxy::spawn(script);
        let port = free_port();
        let config = format!(
            "127.0.0.1:{port} 127.0.0.1 {} 127.0.0.1 {} {options}\n",
            echo.port(),
            proxy.port()
        );
        Setup {
            ht: spawn_binary(&config),
            port,
            proxy,
            echo,
        }
    }

    /// `steps[i]` runs on the proxy's connection `i` (the last one on later
    /// connections).
    fn steps(steps: Vec<Steps>, options: &str) -> Setup {
        assert!(!steps.is_empty());
        Setup::new(
            move |conn| {
                let i = conn.index.min(steps.len() - 1);
                steps[i].run(conn);
            },
            options,
        )
    }

    /// The CONNECT target every request must name.
    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.echo.port())
    }

    /// The request heads the proxy saw, as text.
    fn heads(&self) -> Vec<String> {
        self.proxy.heads().iter().map(|h| lossy(h)).collect()
    }

    /// The `Proxy-Authorization` values of every head, in order (`None`
    /// for a head without one).
    fn authorizations(&self) -> Vec<Option<String>> {
        self.heads().iter().map(|h| authorization(h)).collect()
    }

    /// Diagnostics: the heads seen and the binary's log.
    fn what_happened(&self) -> String {
        format!(
            "--- heads the fake proxy saw ({} connections) ---\n{}\n{}",
            self.proxy.accepted(),
            self.heads().join("----\n"),
            self.ht.diagnostics()
        )
    }

    /// A tunnel through the entry echoes 128 KiB byte-exact.
    fn assert_tunnel_works(&self, seed: u64) {
        assert_echo(self.port, seed, 128 * 1024);
    }
}

/// What a fake proxy connection does: for each answer, read a request head,
/// then write the answer (one write, or several with a pause between); then
/// `after`.
#[derive(Clone)]
struct Steps {
    answers: Vec<Vec<Vec<u8>>>,
    after: After,
}

#[derive(Clone, Copy)]
enum After {
    /// Relay to the CONNECT target (the last answer was a 200).
    Relay,
    /// Close at once.
    Close,
}

impl Steps {
    fn new(answers: Vec<Vec<u8>>, after: After) -> Steps {
        Steps {
            answers: answers.into_iter().map(|a| vec![a]).collect(),
            after,
        }
    }

    /// Answers written in pieces, 50 ms apart.
    fn pieces(answers: Vec<Vec<Vec<u8>>>, after: After) -> Steps {
        Steps { answers, after }
    }

    fn run(&self, mut conn: ProxyConn) {
        for pieces in &self.answers {
            if conn.read_head().is_err() {
                return;
            }
            for (i, p) in pieces.iter().enumerate() {
                if i > 0 {
                    thread::sleep(Duration::from_millis(50));
                }
                if conn.send(p).is_err() {
                    return;
                }
            }
        }
        match self.after {
            After::Relay => {
                let _ = conn.relay_to_target();
            }
            After::Close => {}
        }
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A 407 answer: status line, one `Proxy-Authenticate` header per element
/// of `challenges`, `headers` (each ending in CRLF), the blank line, `body`.
fn answer_407(challenges: &[&str], headers: &str, body: &[u8]) -> Vec<u8> {
    let mut a = b"HTTP/1.1 407 Proxy Authentication Required\r\n".to_vec();
    for c in challenges {
        a.extend_from_slice(format!("Proxy-Authenticate: {c}\r\n").as_bytes());
    }
    a.extend_from_slice(headers.as_bytes());
    a.extend_from_slice(b"\r\n");
    a.extend_from_slice(body);
    a
}

/// A 407 with a Content-Length body, keep-alive.
fn simple_407(challenges: &[&str]) -> Vec<u8> {
    let body = b"<html>authentication required</html>";
    answer_407(
        challenges,
        &format!(
            "Content-Type: text/html\r\nContent-Length: {}\r\n",
            body.len()
        ),
        body,
    )
}

fn digest_challenge(nonce: &str) -> String {
    format!("Digest realm=\"{REALM}\", nonce=\"{nonce}\", qop=\"auth\", opaque=\"{OPAQUE}\"")
}

/// The value of the `Proxy-Authorization` header of `head`, if any.
fn authorization(head: &str) -> Option<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_owned())
}

/// The scheme of an authorization value (`Basic`, `Digest`, `NTLM`).
fn scheme_of(value: &str) -> &str {
    value.split_whitespace().next().unwrap_or_default()
}

/// A Digest `Proxy-Authorization` value, checked against what the fake
/// sent: user, realm, nonce, `uri` = the CONNECT target, `qop=auth`, the
/// expected `nc`, a cnonce, the opaque echoed, and a `response` equal to the
/// one recomputed with `digest::response`.
fn check_digest(value: &str, nonce: &str, nc: &str, uri: &str) -> Result<(), String> {
    let cs = challenge::parse(&[value]);
    let d = cs
        .iter()
        .find(|c| c.is("Digest"))
        .ok_or_else(|| format!("not a Digest answer: {value}"))?;
    let p = |name: &str| d.param(name).map(str::to_owned);
    let want = |name: &str, expected: &str| -> Result<(), String> {
        match p(name) {
            Some(v) if v == expected => Ok(()),
            other => Err(format!(
                "{name} is {other:?}, expected {expected:?} in {value}"
            )),
        }
    };
    want("username", USER)?;
    want("realm", REALM)?;
    want("nonce", nonce)?;
    want("uri", uri)?;
    want("qop", "auth")?;
    want("nc", nc)?;
    want("opaque", OPAQUE)?;
    let cnonce = p("cnonce").ok_or_else(|| format!("no cnonce in {value}"))?;
    if cnonce.is_empty() {
        return Err(format!("empty cnonce in {value}"));
    }
    let alg = match p("algorithm") {
        Some(a) => digest::Algorithm::from_name(&a).ok_or_else(|| format!("algorithm {a}"))?,
        None => digest::Algorithm::Md5,
    };
    if alg != digest::Algorithm::Md5 {
        return Err(format!(
            "the challenge named no algorithm (MD5), the answer says {alg:?}"
        ));
    }
    let expected = digest::response(
        alg,
        USER,
        REALM,
        PASSWORD,
        nonce,
        Some(("auth", nc, &cnonce)),
        "CONNECT",
        uri,
    );
    match p("response") {
        Some(r) if r == expected => Ok(()),
        other => Err(format!(
            "response is {other:?}, recomputed {expected:?} in {value}"
        )),
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .unwrap_or_else(|e| panic!("not base64 ({e}): {text:?}"))
}

fn encode_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The NTLM message in an authorization value `NTLM <base64>`.
fn ntlm_message(value: &str) -> Result<Vec<u8>, String> {
    let token = value
        .strip_prefix("NTLM ")
        .ok_or_else(|| format!("not an NTLM answer: {value}"))?;
    let m = decode_base64(token);
    if m.len() < 12 || !m.starts_with(b"NTLMSSP\0") {
        return Err(format!("no NTLMSSP signature: {m:02x?}"));
    }
    Ok(m)
}

fn u16_at(m: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([m[at], m[at + 1]])
}

fn u32_at(m: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(m[at..at + 4].try_into().expect("4 bytes"))
}

/// Checks that `value` carries an NTLM NEGOTIATE_MESSAGE (type 1) asking
/// for NTLM, never for LM.
fn check_negotiate(value: &str) -> Result<(), String> {
    let m = ntlm_message(value)?;
    if u32_at(&m, 8) != 1 {
        return Err(format!(
            "message type {} where a negotiate (1) was due",
            u32_at(&m, 8)
        ));
    }
    if m.len() < 16 {
        return Err(format!("negotiate message too short: {m:02x?}"));
    }
    let flags = u32_at(&m, 12);
    if flags & ntlm::NEGOTIATE_NTLM == 0 || flags & ntlm::NEGOTIATE_LM_KEY != 0 {
        return Err(format!("negotiate flags {flags:#010x}"));
    }
    Ok(())
}

/// An AUTHENTICATE_MESSAGE taken apart (MS-NLMP §2.2.1.3).
#[derive(Debug)]
struct Authenticate {
    lm: Vec<u8>,
    nt: Vec<u8>,
    domain: Vec<u8>,
    user: Vec<u8>,
    flags: u32,
}

fn parse_authenticate(m: &[u8]) -> Result<Authenticate, String> {
    if m.len() < 64 || u32_at(m, 8) != 3 {
        return Err(format!("not an authenticate message: {m:02x?}"));
    }
    let field = |at: usize| -> Result<Vec<u8>, String> {
        let len = usize::from(u16_at(m, at));
        let off = u32_at(m, at + 4) as usize;
        m.get(off..off + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("field at {at} points outside the message"))
    };
    Ok(Authenticate {
        lm: field(12)?,
        nt: field(20)?,
        domain: field(28)?,
        user: field(36)?,
        flags: u32_at(m, 60),
    })
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// A FILETIME for the challenge's MsvAvTimestamp (2024-01-01).
const SERVER_TIME: u64 = 133_485_408_000_000_000;

/// The CHALLENGE_MESSAGE the fake proxy sends: UNICODE, target info with
/// the domain, the computer name and a timestamp.
fn test_challenge() -> ntlm::Challenge2 {
    let mut info = Vec::new();
    let mut av = |id: u16, value: &[u8]| {
        info.extend_from_slice(&id.to_le_bytes());
        info.extend_from_slice(&(value.len() as u16).to_le_bytes());
        info.extend_from_slice(value);
    };
    av(ntlm::AV_NB_DOMAIN_NAME, &utf16le("CORP"));
    av(ntlm::AV_NB_COMPUTER_NAME, &utf16le("PROXY1"));
    av(ntlm::AV_TIMESTAMP, &SERVER_TIME.to_le_bytes());
    av(ntlm::AV_EOL, &[]);
    ntlm::Challenge2 {
        flags: ntlm::NEGOTIATE_UNICODE
            | ntlm::REQUEST_TARGET
            | ntlm::NEGOTIATE_NTLM
            | ntlm::NEGOTIATE_ALWAYS_SIGN
            | ntlm::TARGET_TYPE_DOMAIN
            | ntlm::NEGOTIATE_EXTENDED_SESSIONSECURITY
            | ntlm::NEGOTIATE_TARGET_INFO
            | ntlm::NEGOTIATE_128
            | ntlm::NEGOTIATE_56,
        server_challenge: [0x4a, 0x11, 0x9c, 0x02, 0xe7, 0x5b, 0x38, 0xd0],
        target_name: utf16le("CORP"),
        target_info: info,
        version: None,
    }
}

/// The 407 carrying `ch` as `NTLM <base64>`, keep-alive.
fn ntlm_challenge_407(ch: &ntlm::Challenge2) -> Vec<u8> {
    simple_407(&[&format!("NTLM {}", encode_base64(&ch.to_bytes()))])
}

/// Checks that `value` carries an AUTHENTICATE_MESSAGE answering `ch` with
/// an NTLMv2 response (NT response over 24 bytes, recomputed here from the
/// password, user, domain, the server challenge and the target info; LM
/// response zero since the challenge has a timestamp) that names `user` and
/// `domain` in UTF-16LE.
fn check_authenticate(
    value: &str,
    ch: &ntlm::Challenge2,
    user: &str,
    domain: &str,
    password: &str,
) -> Result<(), String> {
    let m = ntlm_message(value)?;
    let a = parse_authenticate(&m)?;
    if a.nt.len() <= 24 {
        return Err(format!(
            "NT response of {} bytes: NTLMv1, not NTLMv2",
            a.nt.len()
        ));
    }
    if a.user != utf16le(user) || a.domain != utf16le(domain) {
        return Err(format!(
            "names user {:?} of domain {:?}, expected {user:?} of {domain:?}",
            String::from_utf16_lossy(
                &a.user
                    .chunks(2)
                    .map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                    .collect::<Vec<_>>()
            ),
            String::from_utf16_lossy(
                &a.domain
                    .chunks(2)
                    .map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                    .collect::<Vec<_>>()
            ),
        ));
    }
    if a.flags & ntlm::NEGOTIATE_UNICODE == 0 {
        return Err(format!("flags {:#010x} without UNICODE", a.flags));
    }
    let blob = &a.nt[16..];
    if blob.len() < 28 || blob[..2] != [1, 1] {
        return Err(format!(
            "NTLMv2 blob header {:02x?}",
            &blob[..blob.len().min(8)]
        ));
    }
    let time = u64::from_le_bytes(blob[8..16].try_into().expect("8 bytes"));
    if time != SERVER_TIME {
        return Err(format!(
            "blob timestamp {time}, the challenge's MsvAvTimestamp is {SERVER_TIME}"
        ));
    }
    let client_challenge: [u8; 8] = blob[16..24].try_into().expect("8 bytes");
    let key = ntlm::ntowfv2(password, user, domain);
    let (nt, _) = ntlm::ntlmv2_responses(
        &key,
        &ch.server_challenge,
        &client_challenge,
        time,
        &ch.target_info,
        true,
    );
    if a.nt != nt {
        return Err(format!(
            "the NTLMv2 response does not prove the password: sent {:02x?}, recomputed {:02x?}",
            a.nt, nt
        ));
    }
    if a.lm != [0u8; 24] && !a.lm.is_empty() {
        return Err(format!(
            "LM response {:02x?}: must be Z(24) with a server timestamp",
            a.lm
        ));
    }
    Ok(())
}

/// Panics with `setup`'s story unless `result` is Ok.
fn ok_or_story(result: Result<(), String>, what: &str, setup: &Setup) {
    if let Err(e) = result {
        panic!("{what}: {e}\n{}", setup.what_happened());
    }
}

/// The scheme named at the end of the only open line, waiting for it.
fn open_line(setup: &Setup, n: usize) -> String {
    setup.ht.wait_log_count(": open, ", n, IO_TIMEOUT)[n - 1].clone()
}

fn assert_open_with(line: &str, scheme: &str) {
    let named = line
        .rsplit_once(", auth ")
        .and_then(|(_, rest)| rest.split_whitespace().next());
    assert_eq!(named, Some(scheme), "the open line names {scheme}: {line}");
}

/// Connects, writes a few bytes, and expects to be closed without a byte
/// within `within`; returns how long it took.
fn expect_refused(port: u16, within: Duration, what: &str) -> Duration {
    let mut client = connect_port(port);
    let _ = client.write_all(b"client bytes held until a 2xx");
    expect_closed(&mut client, within, what).1
}

// ---------------------------------------------------------------------------
// Draining the 407 and where the answer goes
// ---------------------------------------------------------------------------

/// A chunked 407 (chunk extensions, several chunks, a trailer), keep-alive,
/// written in pieces: its body is drained and the Digest answer goes on the
/// same connection (one connection accepted), with a response that
/// recomputes from the nonce sent. With `auth-scheme=digest` the first
/// request has no credentials; with `auto` it has Basic.
#[test]
fn chunked_407_is_drained_and_answered_on_the_same_connection() {
    for (scheme, first) in [("digest", None), ("auto", Some("Basic"))] {
        let head = answer_407(
            &[&digest_challenge(NONCE_A)],
            "Content-Type: text/html\r\nTransfer-Encoding: chunked\r\n",
            b"",
        );
        let steps = Steps::pieces(
            vec![
                vec![
                    head,
                    b"5;ext=1\r\n<html\r\n".to_vec(),
                    b"18\r\n>proxy authentication...\r\n".to_vec(),
                    b"0\r\nX-Trailer: yes\r\n\r\n".to_vec(),
                ],
                vec![OK.to_vec()],
            ],
            After::Relay,
        );
        let setup = Setup::steps(
            vec![steps],
            &format!("auth={USER}:{PASSWORD} auth-scheme={scheme}"),
        );
        setup.assert_tunnel_works(1);
        let auths = setup.authorizations();
        assert_eq!(
            auths.len(),
            2,
            "{scheme}: two requests\n{}",
            setup.what_happened()
        );
        assert_eq!(
            auths[0].as_deref().map(scheme_of),
            first,
            "{scheme}: the first request\n{}",
            setup.what_happened()
        );
        let second = auths[1].clone().unwrap_or_default();
        ok_or_story(
            check_digest(&second, NONCE_A, "00000001", &setup.target()),
            &format!("{scheme}: the Digest answer"),
            &setup,
        );
        assert_eq!(
            setup.proxy.accepted(),
            1,
            "{scheme}: answered on the same connection\n{}",
            setup.what_happened()
        );
        assert_open_with(&open_line(&setup, 1), "Digest");
        assert!(!setup.ht.log().contains(PASSWORD), "password in the log");
    }
}

/// A proxy that closes after its 407 (`Connection: close`, or HTTP/1.0):
/// the Digest answer goes on a new connection (two accepted), with the nonce
/// from the first, and the tunnel works.
#[test]
fn proxy_closing_after_its_407_is_answered_on_a_new_connection() {
    let body = b"go away and come back";
    for (version, connection) in [("HTTP/1.1", "Connection: close\r\n"), ("HTTP/1.0", "")] {
        let mut refusal = answer_407(
            &[&digest_challenge(NONCE_A)],
            &format!("{connection}Content-Length: {}\r\n", body.len()),
            body,
        );
        refusal.splice(..8, version.bytes());
        let setup = Setup::steps(
            vec![
                Steps::new(vec![refusal], After::Close),
                Steps::new(vec![OK.to_vec()], After::Relay),
            ],
            &format!("auth={USER}:{PASSWORD} auth-scheme=digest"),
        );
        setup.assert_tunnel_works(2);
        assert_eq!(
            setup.proxy.accepted(),
            2,
            "{version}: the answer went on a new connection\n{}",
            setup.what_happened()
        );
        let auths = setup.authorizations();
        assert_eq!(auths.len(), 2, "{}", setup.what_happened());
        assert_eq!(auths[0], None, "auth-scheme=digest sends nothing first");
        ok_or_story(
            check_digest(
                auths[1].as_deref().unwrap_or_default(),
                NONCE_A,
                "00000001",
                &setup.target(),
            ),
            &format!("{version}: the Digest answer on the new connection"),
            &setup,
        );
        // The debug lines name every state the tunnel went through, the
        // state left included (not a placeholder it was rebuilt from).
        setup.ht.wait_log(": closed ", IO_TIMEOUT);
        let transitions: Vec<String> = setup
            .ht
            .log_lines(" => ")
            .iter()
            .filter_map(|l| l.rsplit(": ").next().map(str::to_owned))
            .collect();
        assert_eq!(
            transitions,
            [
                "Accepting => Dialing",
                "Dialing => SentConnect",
                "SentConnect => ReadingHeaders",
                "ReadingHeaders => Dialing",
                "Dialing => SentConnect",
                "SentConnect => ReadingHeaders",
                "ReadingHeaders => Forwarding",
                "Forwarding => Closing",
            ],
            "{version}: the transitions\n{}",
            setup.ht.log()
        );
    }
}

// ---------------------------------------------------------------------------
// NTLM
// ---------------------------------------------------------------------------

/// `auth-scheme=ntlm`: the first request carries the negotiate message;
/// a proxy that answers 200 straight away has let the tunnel through.
#[test]
fn a_200_straight_after_the_ntlm_negotiate_opens_the_tunnel() {
    let setup = Setup::steps(
        vec![Steps::new(vec![OK.to_vec()], After::Relay)],
        "auth=\"CORP\\jdoe:pw\" auth-scheme=ntlm",
    );
    setup.assert_tunnel_works(3);
    let auths = setup.authorizations();
    assert_eq!(auths.len(), 1, "{}", setup.what_happened());
    ok_or_story(
        check_negotiate(auths[0].as_deref().unwrap_or_default()),
        "the first request",
        &setup,
    );
    assert_eq!(setup.proxy.accepted(), 1);
    assert!(
        setup.ht.log_lines("failed").is_empty(),
        "{}",
        setup.ht.log()
    );
}

/// Basic, Digest and NTLM offered in one 407 (three headers, or one header
/// holding all three): after the pre-emptive Basic, NTLM is chosen (the
/// negotiate message), the fake's challenge is answered with an NTLMv2
/// authenticate message naming `CORP\jdoe`, all on one connection, and the
/// tunnel works.
#[test]
fn several_schemes_offered_at_once_ntlm_is_chosen_and_completed() {
    let digest = "Digest realm=\"r\", nonce=\"n\", qop=\"auth\"";
    let three_headers = simple_407(&["Basic realm=\"r\"", digest, "NTLM"]);
    let one_header = simple_407(&[&format!("Basic realm=\"r\", {digest}, NTLM")]);
    for (what, first) in [("three headers", three_headers), ("one header", one_header)] {
        let ch = test_challenge();
        let setup = Setup::steps(
            vec![Steps::new(
                vec![first, ntlm_challenge_407(&ch), OK.to_vec()],
                After::Relay,
            )],
            "auth=\"CORP\\jdoe:Secr3t-nt\"",
        );
        setup.assert_tunnel_works(4);
        let auths = setup.authorizations();
        assert_eq!(auths.len(), 3, "{what}\n{}", setup.what_happened());
        assert_eq!(
            auths[0].as_deref().map(scheme_of),
            Some("Basic"),
            "{what}: pre-emptive Basic first\n{}",
            setup.what_happened()
        );
        ok_or_story(
            check_negotiate(auths[1].as_deref().unwrap_or_default()),
            &format!("{what}: NTLM chosen"),
            &setup,
        );
        ok_or_story(
            check_authenticate(
                auths[2].as_deref().unwrap_or_default(),
                &ch,
                "jdoe",
                "CORP",
                "Secr3t-nt",
            ),
            &format!("{what}: the authenticate message"),
            &setup,
        );
        assert_eq!(setup.proxy.accepted(), 1, "{what}: one connection");
        assert_open_with(&open_line(&setup, 1), "NTLM");
    }
}

/// `auth-scheme=ntlm`, the full exchange for both user name forms
/// (`DOMAIN\user`, `user@domain`): negotiate, the fake's challenge, an
/// authenticate message with an NTLMv2 response that recomputes from the
/// password, naming the user and domain.
#[test]
fn full_ntlm_exchange_sends_ntlmv2_naming_user_and_domain() {
    for (configured, user, domain) in [
        ("CORP\\jdoe", "jdoe", "CORP"),
        ("jdoe@corp.example", "jdoe", "corp.example"),
    ] {
        let ch = test_challenge();
        let setup = Setup::steps(
            vec![Steps::new(
                vec![ntlm_challenge_407(&ch), OK.to_vec()],
                After::Relay,
            )],
            &format!("auth=\"{configured}:p\u{e4}ss w\u{f6}rd\" auth-scheme=ntlm"),
        );
        setup.assert_tunnel_works(5);
        let auths = setup.authorizations();
        assert_eq!(auths.len(), 2, "{configured}\n{}", setup.what_happened());
        ok_or_story(
            check_negotiate(auths[0].as_deref().unwrap_or_default()),
            &format!("{configured}: negotiate"),
            &setup,
        );
        ok_or_story(
            check_authenticate(
                auths[1].as_deref().unwrap_or_default(),
                &ch,
                user,
                domain,
                "p\u{e4}ss w\u{f6}rd",
            ),
            &format!("{configured}: authenticate"),
            &setup,
        );
        assert_eq!(setup.proxy.accepted(), 1);
        assert_open_with(&open_line(&setup, 1), "NTLM");
    }
}

/// A fake NTLM-only proxy connection: answers a request without NTLM with
/// `407 NTLM`, a negotiate with the challenge, an authenticate with 200 and
/// a relay.
fn ntlm_only_proxy(mut conn: ProxyConn) {
    let ch = test_challenge();
    loop {
        let Ok(head) = conn.read_head() else { return };
        let auth = authorization(&lossy(&head)).unwrap_or_default();
        let answer = match ntlm_message(&auth).ok().map(|m| u32_at(&m, 8)) {
            Some(1) => ntlm_challenge_407(&ch),
            Some(3) => {
                if conn.send(OK).is_ok() {
                    let _ = conn.relay_to_target();
                }
                return;
            }
            _ => simple_407(&["NTLM"]),
        };
        if conn.send(&answer).is_err() {
            return;
        }
    }
}

/// `auto` through an NTLM-only proxy: the first tunnel may pre-empt Basic
/// (before any 407), but once the entry has learnt NTLM, later tunnels
/// start with the negotiate message and Basic is never sent again.
#[test]
fn basic_is_never_sent_after_the_proxy_asked_for_ntlm_only() {
    let setup = Setup::new(ntlm_only_proxy, "auth=\"CORP\\jdoe:pw\"");
    for i in 1..=3 {
        setup.assert_tunnel_works(10 + i);
        assert_open_with(&open_line(&setup, i as usize), "NTLM");
    }
    let auths = setup.authorizations();
    let schemes: Vec<&str> = auths
        .iter()
        .map(|a| a.as_deref().map(scheme_of).unwrap_or("-"))
        .collect();
    assert_eq!(
        schemes,
        ["Basic", "NTLM", "NTLM", "NTLM", "NTLM", "NTLM", "NTLM"],
        "Basic once (pre-emptive), then NTLM only\n{}",
        setup.what_happened()
    );
    for (i, a) in auths.iter().enumerate().skip(1) {
        let a = a.as_deref().unwrap_or_default();
        let result = if i % 2 == 1 {
            check_negotiate(a)
        } else {
            check_authenticate(a, &test_challenge(), "jdoe", "CORP", "pw")
        };
        ok_or_story(result, &format!("request {i}"), &setup);
    }
}

// ---------------------------------------------------------------------------
// Digest: learnt nonce, stale
// ---------------------------------------------------------------------------

/// Tunnel 1 learns Digest (Basic → 407 nonce A → Digest nc=1 → 200).
/// Tunnel 2 sends Digest with nonce A and nc=00000002 in its first request;
/// the fake answers 407 `stale=true` with nonce B; tunnel 2 answers at once
/// with nonce B and nc=00000001 and gets through. No failure is logged.
#[test]
fn stale_nonce_after_a_learnt_digest_is_answered_at_once() {
    let stale = format!("{}, stale=true", digest_challenge(NONCE_B));
    let setup = Setup::steps(
        vec![
            Steps::new(
                vec![simple_407(&[&digest_challenge(NONCE_A)]), OK.to_vec()],
                After::Relay,
            ),
            Steps::new(vec![simple_407(&[&stale]), OK.to_vec()], After::Relay),
        ],
        &format!("auth={USER}:{PASSWORD}"),
    );
    setup.assert_tunnel_works(20);
    setup.assert_tunnel_works(21);
    let auths = setup.authorizations();
    assert_eq!(auths.len(), 4, "{}", setup.what_happened());
    assert_eq!(auths[0].as_deref().map(scheme_of), Some("Basic"));
    let target = setup.target();
    let a = |i: usize| auths[i].clone().unwrap_or_default();
    ok_or_story(
        check_digest(&a(1), NONCE_A, "00000001", &target),
        "tunnel 1's answer",
        &setup,
    );
    ok_or_story(
        check_digest(&a(2), NONCE_A, "00000002", &target),
        "tunnel 2's first request reuses the learnt nonce",
        &setup,
    );
    ok_or_story(
        check_digest(&a(3), NONCE_B, "00000001", &target),
        "tunnel 2's answer to stale=true",
        &setup,
    );
    assert_eq!(setup.proxy.accepted(), 2, "one connection per tunnel");
    assert!(
        setup.ht.log_lines("failed").is_empty() && setup.ht.log_lines(" WARN ").is_empty(),
        "a stale nonce is not a failure:\n{}",
        setup.ht.log()
    );
    assert_open_with(&open_line(&setup, 2), "Digest");
}

// ---------------------------------------------------------------------------
// Bad input: a huge body, wrong passwords, malformed challenges
// ---------------------------------------------------------------------------

/// The peak resident set of process `pid`, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status:\n{status}"))
}

/// A 407 with a 2 MiB body (by Content-Length, then chunked) that the
/// program would have to drain before answering the Digest challenge: each
/// attempt ends well within connect-timeout with one line saying the body
/// is over 1 MiB, the peak RSS stays far below 20 MB, nothing panics, and
/// the entry still works.
#[test]
fn a_407_with_a_2_mib_body_ends_with_one_clear_line_and_bounded_memory() {
    const BODY: usize = 2 * 1024 * 1024;
    let sent = Arc::new(AtomicUsize::new(0));
    let script = {
        let sent = sent.clone();
        move |mut conn: ProxyConn| {
            if conn.index >= 2 {
                Steps::new(vec![OK.to_vec()], After::Relay).run(conn);
                return;
            }
            if conn.read_head().is_err() {
                return;
            }
            let chunked = conn.index == 1;
            let framing = if chunked {
                "Transfer-Encoding: chunked\r\n".to_owned()
            } else {
                format!("Content-Length: {BODY}\r\n")
            };
            let head = answer_407(&[&digest_challenge(NONCE_A)], &framing, b"");
            if conn.send(&head).is_err() {
                return;
            }
            let block = vec![b'x'; 64 * 1024];
            let _ = conn.stream.set_write_timeout(Some(Duration::from_secs(10)));
            let mut n = 0;
            while n < BODY {
                let r = if chunked {
                    conn.send(format!("{:x}\r\n", block.len()).as_bytes())
                        .and_then(|_| conn.send(&block))
                        .and_then(|_| conn.send(b"\r\n"))
                } else {
                    conn.send(&block)
                };
                if r.is_err() {
                    break;
                }
                n += block.len();
                sent.fetch_max(n, Ordering::SeqCst);
            }
            if chunked && n >= BODY {
                let _ = conn.send(b"0\r\n\r\n");
            }
            conn.hold(Duration::from_secs(20));
        }
    };
    let setup = Setup::new(
        script,
        &format!("auth={USER}:{PASSWORD} auth-scheme=digest connect-timeout=5s"),
    );
    for (i, what) in ["Content-Length", "chunked"].iter().enumerate() {
        let took = expect_refused(
            setup.port,
            Duration::from_secs(8),
            &format!("{what} 2 MiB body"),
        );
        assert!(
            took < Duration::from_secs(6),
            "{what}: the attempt ended within connect-timeout (took {took:?})"
        );
        let lines = setup.ht.wait_log_count("failed", i + 1, IO_TIMEOUT);
        let line = &lines[i];
        assert!(
            line.contains(" WARN ")
                && line.contains("HTTP/1.1 407 ")
                && line.contains("its body is over 1 MiB"),
            "{what}: one clear line: {line}\n{}",
            setup.what_happened()
        );
    }
    let peak = peak_rss_kib(setup.ht.pid());
    eprintln!("peak RSS of the binary after two 2 MiB 407 bodies: {peak} KiB");
    assert!(
        peak < 20 * 1024,
        "peak RSS {peak} KiB while draining 2 MiB bodies"
    );
    assert_eq!(
        setup.ht.log_lines("failed").len(),
        2,
        "one line per attempt\n{}",
        setup.ht.log()
    );
    assert!(!setup.ht.log().contains("panicked"), "{}", setup.ht.log());
    setup.assert_tunnel_works(30);
    assert_eq!(setup.proxy.accepted(), 3, "{}", setup.what_happened());
    // Last, so that everything above is checked whatever the wording: like
    // every refusal, the line quotes the proxy's status line (SPEC
    // "Logging"; the contract: `failed: proxy answered "HTTP/1.1 407 ...":
    // its body is over 1 MiB`), for a chunked body found too big while
    // draining as much as for a Content-Length seen in the head.
    for line in setup.ht.log_lines("failed") {
        assert!(
            line.contains("failed: proxy answered \"HTTP/1.1 407 Proxy Authentication Required\": its body is over 1 MiB"),
            "the line quotes the status line: {line}"
        );
    }
}

/// A proxy that refuses whatever it is sent (`respond` gives its answer to
/// each request head): one refused tunnel ends with one refusal line naming
/// `scheme` and listing what was offered, the proxy saw at most 3 requests,
/// the client was closed, the password is not in the log. Returns the line.
fn wrong_password(
    respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    options: &str,
    scheme: &str,
) -> (Setup, String) {
    let setup = Setup::new(
        move |mut conn| loop {
            let Ok(head) = conn.read_head() else { return };
            if conn.send(&respond(&lossy(&head))).is_err() {
                return;
            }
        },
        options,
    );
    expect_refused(setup.port, Duration::from_secs(10), "refused tunnel");
    let line = setup.ht.wait_log("failed:", IO_TIMEOUT);
    // Room for a loop, if there were one, to show itself.
    thread::sleep(Duration::from_millis(500));
    assert!(
        line.contains(" WARN ")
            && line.contains("failed: proxy answered \"HTTP/1.1 407")
            && line.contains("the proxy refused the credentials")
            && line.contains(&format!("(scheme {scheme}; offered: ")),
        "one refusal line naming {scheme}: {line}\n{}",
        setup.what_happened()
    );
    assert_eq!(
        setup.ht.log_lines("failed:").len(),
        1,
        "one line\n{}",
        setup.what_happened()
    );
    let heads = setup.heads();
    assert!(
        !heads.is_empty() && heads.len() <= 3,
        "at most three requests for one refused tunnel, saw {}\n{}",
        heads.len(),
        setup.what_happened()
    );
    assert_eq!(setup.echo.accepted(), 0, "nothing reached the destination");
    assert!(
        !setup.ht.log().contains("wrong-Pw-1"),
        "password in the log\n{}",
        setup.ht.log()
    );
    (setup, line)
}

#[test]
fn wrong_digest_password_ends_with_one_refusal_line() {
    let (setup, line) = wrong_password(
        |_| simple_407(&[&digest_challenge(NONCE_A), "Basic realm=\"r\""]),
        &format!("auth={USER}:wrong-Pw-1"),
        "Digest",
    );
    assert!(
        line.contains("Digest") && line.contains("Basic"),
        "lists the offered schemes: {line}"
    );
    let auths = setup.authorizations();
    assert!(
        auths
            .iter()
            .filter(|a| a.as_deref().map(scheme_of) == Some("Digest"))
            .count()
            == 1,
        "one Digest answer\n{}",
        setup.what_happened()
    );
}

#[test]
fn wrong_ntlm_password_ends_with_one_refusal_line() {
    let ch = test_challenge();
    let (setup, _) = wrong_password(
        move |head| match ntlm_message(&authorization(head).unwrap_or_default())
            .ok()
            .map(|m| u32_at(&m, 8))
        {
            Some(1) => ntlm_challenge_407(&ch),
            _ => simple_407(&["NTLM"]),
        },
        "auth=\"CORP\\jdoe:wrong-Pw-1\" auth-scheme=ntlm",
        "NTLM",
    );
    assert_eq!(
        setup.proxy.accepted(),
        1,
        "one connection\n{}",
        setup.what_happened()
    );
}

#[test]
fn wrong_basic_password_ends_with_one_refusal_line() {
    wrong_password(
        |_| simple_407(&["Basic realm=\"r\""]),
        &format!("auth={USER}:wrong-Pw-1"),
        "Basic",
    );
}

/// `auth-scheme=basic` through a proxy offering NTLM, Digest and Basic:
/// only Basic is ever sent; the refusal names Basic.
#[test]
fn auth_scheme_basic_never_sends_anything_but_basic() {
    let (setup, _) = wrong_password(
        |_| simple_407(&["NTLM", &digest_challenge(NONCE_A), "Basic realm=\"r\""]),
        &format!("auth={USER}:wrong-Pw-1 auth-scheme=basic"),
        "Basic",
    );
    expect_refused(setup.port, Duration::from_secs(10), "second tunnel");
    setup.ht.wait_log_count("failed:", 2, IO_TIMEOUT);
    for a in setup.authorizations() {
        assert_eq!(
            a.as_deref().map(scheme_of),
            Some("Basic"),
            "only Basic\n{}",
            setup.what_happened()
        );
    }
}

/// CHALLENGE_MESSAGEs with bogus content: offsets and lengths outside the
/// message, malformed target info, not base64, too short, wrong signature,
/// wrong type. Each ends its tunnel with one clear `bad NTLM challenge`
/// line, no panic, no retry; the entry still works afterwards.
#[test]
fn malformed_ntlm_challenges_end_with_one_clear_line() {
    let good = test_challenge().to_bytes();
    let patched = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut m = good.clone();
        f(&mut m);
        encode_base64(&m)
    };
    let mut bad_info = test_challenge();
    bad_info.target_info = vec![2, 0, 0xf0, 0x00, b'C', 0, b'O', 0];
    let variants: Vec<(&str, String)> = vec![
        (
            "target info offset past the end",
            patched(&|m| m[44..48].copy_from_slice(&0xffff_fff0u32.to_le_bytes())),
        ),
        (
            "target info length past the end",
            patched(&|m| {
                m[40..42].copy_from_slice(&0xfff0u16.to_le_bytes());
                m[42..44].copy_from_slice(&0xfff0u16.to_le_bytes());
            }),
        ),
        (
            "target info offset inside the header",
            patched(&|m| m[44..48].copy_from_slice(&8u32.to_le_bytes())),
        ),
        (
            "AV pair longer than the target info",
            encode_base64(&bad_info.to_bytes()),
        ),
        ("not base64", "TlRM-TVNT.UAAC~AAAA".to_owned()),
        ("too short", encode_base64(&good[..20])),
        (
            "wrong signature",
            patched(&|m| m[..8].copy_from_slice(b"NTLMSSX\0")),
        ),
        ("wrong type", patched(&|m| m[8] = 3)),
    ];
    // The premise: the library refuses each of them.
    for (what, token) in &variants {
        let cs = challenge::parse(&[&format!("NTLM {token}")]);
        let parsed = cs.first().map(ntlm::challenge_from_header);
        assert!(
            !matches!(parsed, Some(Ok(_))),
            "{what}: the library's parser accepts it: {parsed:?}"
        );
    }
    let tokens: Vec<String> = variants.iter().map(|(_, t)| t.clone()).collect();
    let n = tokens.len();
    let setup = Setup::new(
        move |mut conn| {
            if conn.index >= n {
                Steps::new(vec![OK.to_vec()], After::Relay).run(conn);
                return;
            }
            if conn.read_head().is_ok() {
                let _ = conn.send(&simple_407(&[&format!("NTLM {}", tokens[conn.index])]));
                conn.hold(Duration::from_secs(20));
            }
        },
        "auth=\"CORP\\jdoe:pw\" auth-scheme=ntlm connect-timeout=5s",
    );
    for (i, (what, _)) in variants.iter().enumerate() {
        let took = expect_refused(setup.port, Duration::from_secs(8), what);
        let lines = setup.ht.wait_log_count("failed", i + 1, IO_TIMEOUT);
        let line = &lines[i];
        assert!(
            line.contains("proxy answered \"HTTP/1.1 407") && line.contains("bad NTLM challenge"),
            "{what}: one clear line: {line}\n{}",
            setup.what_happened()
        );
        assert!(
            took < Duration::from_secs(4),
            "{what}: ended at once, not by the timeout ({took:?})"
        );
        assert_eq!(
            setup.proxy.accepted(),
            i + 1,
            "{what}: no retry\n{}",
            setup.what_happened()
        );
    }
    assert_eq!(setup.ht.log_lines("failed").len(), n, "{}", setup.ht.log());
    assert!(!setup.ht.log().contains("panicked"), "{}", setup.ht.log());
    setup.assert_tunnel_works(40);
}

/// A proxy that sends its NTLM challenge and then closes the connection
/// (with `Connection: close`, or without warning): NTLM needs that
/// connection, so the attempt ends, promptly and with one line, never a
/// hang until the timeout and never a loop of new connections.
#[test]
fn a_connection_closed_after_the_ntlm_challenge_does_not_hang() {
    for (what, extra) in [
        ("Connection: close", "Connection: close\r\n"),
        ("closed without warning", ""),
    ] {
        let ch = test_challenge();
        let answer = answer_407(
            &[&format!("NTLM {}", encode_base64(&ch.to_bytes()))],
            &format!("{extra}Content-Length: 0\r\n"),
            b"",
        );
        let setup = Setup::steps(
            vec![Steps::new(vec![answer], After::Close)],
            "auth=\"CORP\\jdoe:pw\" auth-scheme=ntlm connect-timeout=5s",
        );
        let started = Instant::now();
        let mut client = connect_port(setup.port);
        let _ = client.write_all(b"client bytes");
        let mut buf = [0u8; 64];
        client
            .set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        let r = client.read(&mut buf);
        let took = started.elapsed();
        assert!(
            matches!(r, Ok(0))
                || r.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{what}: the client is closed: {r:?}\n{}",
            setup.what_happened()
        );
        assert!(
            took < Duration::from_secs(4),
            "{what}: ended promptly, not by connect-timeout ({took:?})\n{}",
            setup.what_happened()
        );
        let _ = setup.ht.wait_log("failed", IO_TIMEOUT);
        thread::sleep(Duration::from_millis(500));
        assert_eq!(
            setup.ht.log_lines("failed").len(),
            1,
            "{what}: one line\n{}",
            setup.what_happened()
        );
        assert!(
            setup.proxy.accepted() <= 2,
            "{what}: no loop of new connections\n{}",
            setup.what_happened()
        );
    }
}

/// The checkers above accept what the library's own primitives build (and
/// refuse a wrong password), so a failure elsewhere in this file is about
/// the binary, not about the checkers.
#[test]
fn the_checkers_accept_the_librarys_own_messages() {
    let uri = "127.0.0.1:4000";
    let cs = challenge::parse(&[&digest_challenge(NONCE_A)]);
    let mut state = digest::DigestState::from_challenge(&cs[0]).expect("Digest state");
    let h = state
        .authorization_random("CONNECT", uri, USER, PASSWORD)
        .expect("header");
    check_digest(&h, NONCE_A, "00000001", uri).expect("our own Digest answer");
    let h = state
        .authorization_random("CONNECT", uri, USER, "not the password")
        .expect("header");
    assert!(check_digest(&h, NONCE_A, "00000002", uri).is_err());

    check_negotiate(&ntlm::header_value(&ntlm::negotiate())).expect("our own negotiate");
    let ch = test_challenge();
    assert_eq!(ntlm::parse_challenge(&ch.to_bytes()), Ok(ch.clone()));
    let m = ntlm::authenticate(&ch, "jdoe", "CORP", "pw", "", [7; 8], 1).expect("authenticate");
    check_authenticate(&ntlm::header_value(&m), &ch, "jdoe", "CORP", "pw")
        .expect("our own authenticate");
    assert!(check_authenticate(&ntlm::header_value(&m), &ch, "jdoe", "CORP", "other").is_err());
    assert!(check_authenticate(&ntlm::header_value(&m), &ch, "jane", "CORP", "pw").is_err());
}

/// What an entry learnt is forgotten when the entry changes in a reload:
/// after two tunnels through an NTLM-only proxy (the second starting with
/// negotiate), the entry's password changes; the next tunnel starts over
/// with the pre-emptive Basic, then NTLM again.
#[test]
fn a_changed_entry_forgets_the_learnt_scheme() {
    let mut setup = Setup::new(ntlm_only_proxy, "auth=\"CORP\\jdoe:pw\"");
    setup.assert_tunnel_works(50);
    setup.assert_tunnel_works(51);
    let config = std::fs::read_to_string(&setup.ht.config_path).expect("read config");
    let changed = config.replace("CORP\\jdoe:pw", "CORP\\jdoe:pw2");
    assert_ne!(config, changed);
    std::fs::write(&setup.ht.config_path, changed).expect("write config");
    setup.ht.signal(libc::SIGHUP);
    setup.ht.wait_log("1 changed", IO_TIMEOUT);
    setup.assert_tunnel_works(52);
    let auths = setup.authorizations();
    let schemes: Vec<&str> = auths
        .iter()
        .map(|a| a.as_deref().map(scheme_of).unwrap_or("-"))
        .collect();
    assert_eq!(
        schemes,
        ["Basic", "NTLM", "NTLM", "NTLM", "NTLM", "Basic", "NTLM", "NTLM"],
        "learnt NTLM for tunnel 2, forgotten after the change\n{}",
        setup.what_happened()
    );
    ok_or_story(
        check_authenticate(
            auths[7].as_deref().unwrap_or_default(),
            &test_challenge(),
            "jdoe",
            "CORP",
            "pw2",
        ),
        "the new password is used",
        &setup,
    );
}
