//! Tunnels through a scripted fake HTTP proxy: how the binary reads the
//! proxy's answer to `CONNECT` (split, dribbled, with payload attached,
//! other 2xx, refusals, garbage, oversized, silence, early close), that no
//! client byte goes out before the answer, and the exact request it sends.
//! Ends with an in-process test: a slow resolver must not stall open tunnels.
//!
//! The failure cases run the failing script on the proxy's first
//! connection and a good one (`200`, then relay) on later ones, and end by
//! opening a fresh tunnel through the same entry: the process must survive
//! the failure and the entry must still work.

mod common;

use common::*;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const OK: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// The binary with one entry through a fake proxy to an echo backend.
struct Setup {
    ht: Running,
    port: u16,
    proxy: FakeProxy,
    echo: Backend,
}

impl Setup {
    /// `proxy_for(echo_addr)` builds the fake proxy; the entry is
    /// `127.0.0.1:PORT 127.0.0.1 ECHO 127.0.0.1 PROXY OPTIONS`.
    fn new(proxy_for: impl FnOnce(SocketAddr) -> FakeProxy, options: &str) -> Setup {
        let echo = echo_backend();
        let proxy = proxy_for(echo.addr);
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

    /// Runs `scripts[i]` on the proxy's connection `i` (the last one on
    /// later connections).
    fn sequence(scripts: Vec<Script>, options: &str) -> Setup {
        Setup::new(|_| FakeProxy::sequence(scripts), options)
    }

    /// The process is alive and a fresh tunnel through the same entry works.
    fn assert_still_serving(&mut self) {
        self.ht.assert_alive();
        assert_echo(self.port, 0xBEEF, 128 * 1024);
        self.ht.assert_alive();
    }
}

/// A script that answers `answer` at once and then relays.
fn answer_then_relay(answer: &[u8]) -> Script {
    Script::answer(answer, Then::RelayToTarget)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------
// Answers that open the tunnel
// ---------------------------------------------------------------------------

#[test]
fn payload_in_the_same_write_as_the_200_reaches_the_client_at_once() {
    // The proxy sends the answer and the destination's first bytes in one
    // write, then sends nothing more until the client has them: bytes
    // behind the blank line must not wait for a later read.
    let (got_first_tx, got_first_rx) = mpsc::channel::<()>();
    let got_first_rx = Mutex::new(got_first_rx);
    let mut setup = Setup::new(
        |_| {
            FakeProxy::spawn(move |mut conn| {
                if conn.index > 0 {
                    let _ = ok_relay_script().run(conn);
                    return;
                }
                let run = || -> io::Result<()> {
                    conn.read_head()?;
                    conn.send(b"HTTP/1.1 200 Connection established\r\n\r\nfirst|")?;
                    let _ = got_first_rx
                        .lock()
                        .unwrap()
                        .recv_timeout(Duration::from_secs(10));
                    conn.send(b"second|")?;
                    conn.relay_to_target().map(drop)
                };
                let _ = run();
            })
        },
        "",
    );

    let mut client = connect_port(setup.port);
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut first = [0u8; 6];
    client
        .read_exact(&mut first)
        .expect("bytes behind the 200 reach the client without further proxy traffic");
    assert_eq!(lossy(&first), "first|");
    got_first_tx.send(()).unwrap();
    let mut second = [0u8; 7];
    client.read_exact(&mut second).expect("later bytes follow");
    assert_eq!(lossy(&second), "second|");

    // And the tunnel is an ordinary tunnel from there on.
    client.write_all(b"ping").unwrap();
    let mut pong = [0u8; 4];
    client.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"ping");
    client.shutdown(Shutdown::Write).unwrap();
    expect_closed(&mut client, Duration::from_secs(5), "after the echo's EOF");
    setup
        .ht
        .wait_log("closed up=4 down=17 ", Duration::from_secs(5));
    setup.assert_still_serving();
}

#[test]
fn answer_dribbled_one_byte_per_write_opens_the_tunnel() {
    let answer = b"HTTP/1.1 200 Connection established\r\nProxy-Agent: fake/1.0\r\n\r\n";
    let dribble = Script {
        chunks: answer
            .iter()
            .map(|&b| (Duration::from_millis(3), vec![b]))
            .collect(),
        then: Then::RelayToTarget,
    };
    let mut setup = Setup::sequence(vec![dribble, ok_relay_script()], "");
    assert_echo(setup.port, 11, 256 * 1024);
    setup.assert_still_serving();
}

#[test]
fn http_1_0_200_opens_the_tunnel() {
    let mut setup = Setup::sequence(vec![answer_then_relay(b"HTTP/1.0 200 OK\r\n\r\n")], "");
    assert_echo(setup.port, 12, 256 * 1024);
    setup.assert_still_serving();
}

#[test]
fn bare_lf_line_ends_are_accepted() {
    let mut setup = Setup::sequence(
        vec![answer_then_relay(
            b"HTTP/1.1 200 Connection established\nVia: fake\n\n",
        )],
        "",
    );
    assert_echo(setup.port, 13, 64 * 1024);
    setup.assert_still_serving();
}

#[test]
fn content_length_and_connection_close_on_a_200_are_ignored() {
    let mut setup = Setup::sequence(
        vec![answer_then_relay(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\n",
        )],
        "",
    );
    // Far more than 5 bytes, in both directions at once.
    assert_echo(setup.port, 14, 1 << 20);
    setup
        .ht
        .wait_log("closed up=1048576 down=1048576 ", Duration::from_secs(5));
    setup.assert_still_serving();
}

#[test]
fn any_2xx_opens_the_tunnel() {
    let mut setup = Setup::sequence(
        vec![
            answer_then_relay(b"HTTP/1.1 204 No Content\r\n\r\n"),
            answer_then_relay(b"HTTP/1.1 299 Whatever\r\n\r\n"),
            answer_then_relay(b"HTTP/1.1 201\r\n\r\n"),
            ok_relay_script(),
        ],
        "",
    );
    for seed in [21, 22, 23] {
        assert_echo(setup.port, seed, 64 * 1024);
    }
    setup.assert_still_serving();
}

// ---------------------------------------------------------------------------
// Answers that end the attempt
// ---------------------------------------------------------------------------

/// What the proxy saw after it sent a refusal.
#[derive(Debug)]
struct AfterRefusal {
    /// Client bytes that reached the proxy after the request head.
    bytes_after_head: usize,
    /// Whether the program closed the proxy connection (within 10 s).
    closed: bool,
}

/// Runs a proxy whose first connection gets `answer` (then waits for the
/// program to close it), checks that the client is closed without a single
/// byte, that none of the client's bytes reached the proxy, and that one
/// `failed:` line says so; returns that line. The entry must still work
/// afterwards.
fn refused(answer: &'static [u8], options: &str) -> (Setup, String) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let mut setup = Setup::new(
        |_| {
            FakeProxy::spawn(move |mut conn| {
                if conn.index > 0 {
                    let _ = ok_relay_script().run(conn);
                    return;
                }
                if conn.read_head().is_err() || conn.send(answer).is_err() {
                    return;
                }
                let mut after = Vec::new();
                let _ = conn.stream.set_read_timeout(Some(Duration::from_secs(10)));
                let closed = match conn.stream.read_to_end(&mut after) {
                    Ok(_) => true,
                    Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
                };
                let _ = tx.lock().unwrap().send(AfterRefusal {
                    bytes_after_head: after.len(),
                    closed,
                });
            })
        },
        options,
    );

    let mut client = connect_port(setup.port);
    client.write_all(b"CLIENT-BYTES").unwrap();
    expect_closed(&mut client, Duration::from_secs(5), "refused tunnel");
    let seen = recv_within(&rx, Duration::from_secs(15), "fake proxy report");
    assert!(
        seen.closed,
        "the program closed the proxy connection: {seen:?}"
    );
    assert_eq!(
        seen.bytes_after_head, 0,
        "client bytes reached a proxy that refused the tunnel"
    );
    let line = setup.ht.wait_log("failed:", Duration::from_secs(5));
    setup.assert_still_serving();
    setup
        .ht
        .wait_log("closed up=131072 down=131072 ", Duration::from_secs(5));
    let failed = setup.ht.log_lines("failed:");
    assert_eq!(failed.len(), 1, "one failed line: {failed:#?}");
    let closed = setup.ht.log_lines(" closed up=");
    assert_eq!(
        closed.len(),
        1,
        "only the fresh tunnel has a close line: {closed:#?}"
    );
    (setup, line)
}

#[test]
fn status_403_closes_the_client_and_quotes_the_status_line() {
    let (_setup, line) = refused(
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/html\r\nContent-Length: 19\r\n\r\n<html>denied</html>",
        "",
    );
    assert!(
        line.contains("proxy answered \"HTTP/1.1 403 Forbidden\""),
        "{line}"
    );
}

#[test]
fn status_502_closes_the_client_and_quotes_the_status_line() {
    let (_setup, line) = refused(b"HTTP/1.1 502 Bad Gateway\r\n\r\n", "");
    assert!(
        line.contains("proxy answered \"HTTP/1.1 502 Bad Gateway\""),
        "{line}"
    );
}

#[test]
fn status_1xx_is_not_a_tunnel() {
    let (_setup, line) = refused(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", "");
    assert!(
        line.contains("proxy answered \"HTTP/1.1 100 Continue\""),
        "{line}"
    );
}

#[test]
fn status_407_without_credentials_says_the_proxy_wants_them_and_lists_schemes() {
    let (_setup, line) = refused(
        b"HTTP/1.1 407 Proxy Authentication Required\r\n\
          Proxy-Authenticate: Basic realm=\"fake\"\r\n\
          Proxy-Authenticate: Digest realm=\"fake\", nonce=\"abc123\", qop=\"auth\"\r\n\
          Content-Type: text/plain\r\n\
          Content-Length: 21\r\n\r\n\
          authentication needed",
        "",
    );
    assert!(
        line.contains("proxy answered \"HTTP/1.1 407 Proxy Authentication Required\""),
        "{line}"
    );
    assert!(line.contains("wants credentials"), "{line}");
    let offered = line
        .split("offered")
        .nth(1)
        .unwrap_or_else(|| panic!("no offered schemes in {line}"));
    assert!(
        offered.contains("Basic") && offered.contains("Digest"),
        "{line}"
    );
}

#[test]
fn status_407_with_a_basic_password_never_logs_the_password() {
    let (setup, line) = refused(
        b"HTTP/1.1 407 Proxy Authentication Required\r\n\
          Proxy-Authenticate: Basic realm=\"fake\"\r\n\
          Content-Length: 6\r\n\r\n\
          denied",
        "auth=alice:S3cretPw auth-scheme=basic",
    );
    assert!(line.contains("HTTP/1.1 407 "), "{line}");
    assert!(
        line.to_lowercase().contains("basic"),
        "names the scheme: {line}"
    );
    let heads = setup.proxy.heads();
    // One request for the refused tunnel (no retry loop), one for the
    // fresh tunnel after it.
    assert_eq!(
        heads.len(),
        2,
        "{:?}",
        heads.iter().map(|h| lossy(h)).collect::<Vec<_>>()
    );
    let encoded = "YWxpY2U6UzNjcmV0UHc="; // base64("alice:S3cretPw")
    assert!(
        lossy(&heads[0]).contains(&format!("\r\nProxy-Authorization: Basic {encoded}\r\n")),
        "{}",
        lossy(&heads[0])
    );
    let log = setup.ht.log();
    assert!(!log.contains("S3cretPw"), "password in the log:\n{log}");
    assert!(
        !log.contains(encoded),
        "encoded password in the log:\n{log}"
    );
}

#[test]
fn garbage_answers_close_the_client() {
    let mut setup = Setup::sequence(
        vec![
            Script::answer(
                &b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..],
                Then::Hold(Duration::from_secs(10)),
            ),
            Script::answer(
                &b"HTTP/1.1 2x0 OK\r\n\r\n"[..],
                Then::Hold(Duration::from_secs(10)),
            ),
            Script::answer(
                &b"HTTP/2 200\r\n\r\n"[..],
                Then::Hold(Duration::from_secs(10)),
            ),
            ok_relay_script(),
        ],
        "",
    );
    for n in 1..=3 {
        let mut client = connect_port(setup.port);
        expect_closed(&mut client, Duration::from_secs(5), "garbage answer");
        let failed = setup
            .ht
            .wait_log_count("failed:", n, Duration::from_secs(5));
        assert!(
            failed[n - 1].contains("bad proxy answer"),
            "{}",
            failed[n - 1]
        );
    }
    setup.assert_still_serving();
}

/// An answer head of exactly `len` bytes: status line, one padding header,
/// blank line.
fn head_of_len(len: usize) -> Vec<u8> {
    let fixed = "HTTP/1.1 200 OK\r\nX-Pad: \r\n\r\n".len();
    let mut head = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat(b'a').take(len - fixed));
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), len);
    head
}

#[test]
fn answer_head_over_16384_bytes_fails_without_waiting_for_the_timeout() {
    // No blank line at all, the connection held open: the limit must end
    // the attempt, not the 20 s connect-timeout.
    let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
    while endless.len() <= 20_000 {
        endless.extend_from_slice(
            b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    let mut setup = Setup::sequence(
        vec![
            Script::answer(endless, Then::Hold(Duration::from_secs(30))),
            Script::answer(head_of_len(16_385), Then::RelayToTarget),
            Script::answer(head_of_len(16_384), Then::RelayToTarget),
        ],
        "connect-timeout=20s",
    );
    for n in 1..=2 {
        let mut client = connect_port(setup.port);
        let start = Instant::now();
        expect_closed(&mut client, Duration::from_secs(5), "oversized answer head");
        assert!(start.elapsed() < Duration::from_secs(5));
        let failed = setup
            .ht
            .wait_log_count("failed:", n, Duration::from_secs(5));
        assert!(failed[n - 1].contains("16384 bytes"), "{}", failed[n - 1]);
    }
    // Exactly at the limit is fine.
    assert_echo(setup.port, 31, 64 * 1024);
    setup.assert_still_serving();
}

#[test]
fn proxy_that_never_answers_is_cut_at_connect_timeout() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let mut setup = Setup::new(
        |_| {
            FakeProxy::spawn(move |mut conn| {
                if conn.index > 0 {
                    let _ = ok_relay_script().run(conn);
                    return;
                }
                if conn.read_head().is_ok() {
                    let closed_at = conn.hold(Duration::from_secs(15));
                    let _ = tx.lock().unwrap().send(closed_at);
                }
            })
        },
        "connect-timeout=1s",
    );

    let start = Instant::now();
    let mut client = connect_port(setup.port);
    expect_closed(&mut client, Duration::from_secs(6), "silent proxy");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed <= Duration::from_secs(3),
        "client closed after {elapsed:?}, expected about 1s"
    );
    let closed_at = recv_within(&rx, Duration::from_secs(20), "fake proxy report")
        .expect("the program closes its connection to the silent proxy");
    assert!(closed_at.duration_since(start) <= Duration::from_secs(4));
    let line = setup.ht.wait_log("failed:", Duration::from_secs(5));
    assert!(line.contains("connect-timeout"), "{line}");
    assert!(
        line.contains("while waiting for the proxy's answer"),
        "{line}"
    );
    setup.assert_still_serving();
}

#[test]
fn proxy_closing_before_or_during_its_answer_closes_the_client() {
    let mut setup = Setup::sequence(
        vec![
            Script::answer(&b"HTTP/1.1 200 OK\r\nX-Partial: yes"[..], Then::Close),
            Script {
                chunks: vec![],
                then: Then::Close,
            },
            ok_relay_script(),
        ],
        "",
    );
    for n in 1..=2 {
        let mut client = connect_port(setup.port);
        expect_closed(&mut client, Duration::from_secs(5), "proxy closed");
        let failed = setup
            .ht
            .wait_log_count("failed:", n, Duration::from_secs(5));
        assert!(failed[n - 1].contains("closed"), "{}", failed[n - 1]);
    }
    setup.assert_still_serving();
}

// ---------------------------------------------------------------------------
// What the program sends
// ---------------------------------------------------------------------------

#[test]
fn no_client_byte_reaches_the_proxy_before_its_answer() {
    const EARLY: u64 = 64 * 1024;
    const LATER: u64 = 64 * 1024;
    let (verdict_tx, verdict_rx) = mpsc::channel();
    let verdict_tx = Mutex::new(verdict_tx);
    // The destination greets, then hashes everything until EOF.
    let (report_tx, report_rx) = mpsc::channel();
    let report_tx = Mutex::new(report_tx);
    let dest = Backend::spawn(move |mut stream| {
        let got = stream
            .write_all(b"WELCOME")
            .and_then(|_| recv_to_eof(&mut stream));
        let _ = report_tx
            .lock()
            .unwrap()
            .send(got.map_err(|e| e.to_string()));
    });
    let dest_addr = dest.addr;
    let mut setup = Setup::new(
        move |_| {
            FakeProxy::spawn(move |mut conn| {
                if conn.index > 0 {
                    let _ = ok_relay_script().run(conn);
                    return;
                }
                if conn.read_head().is_err() {
                    return;
                }
                // Part of the script, not a wait for something: the client
                // writes at once, so 300 ms is ample time for an early byte
                // to arrive here.
                thread::sleep(Duration::from_millis(300));
                let verdict = conn.nothing_pending();
                let _ = verdict_tx
                    .lock()
                    .unwrap()
                    .send(verdict.map_err(|e| e.to_string()));
                if conn.send(OK).is_ok() {
                    let _ = conn.relay(dest_addr);
                }
            })
        },
        "",
    );

    let mut client = connect_port(setup.port);
    let mut writer = client.try_clone().unwrap();
    // Written from a thread: with the tunnel not yet forwarding, the write
    // may block until the proxy answers.
    let early = thread::spawn(move || {
        let mut gen = Payload::new(41);
        let mut buf = vec![0u8; EARLY as usize];
        gen.fill(&mut buf);
        writer.write_all(&buf).map(|_| (writer, gen, buf))
    });
    let nothing_early = recv_within(&verdict_rx, Duration::from_secs(10), "proxy verdict")
        .expect("peek at the proxy");
    assert!(
        nothing_early,
        "a client byte reached the proxy before its answer"
    );

    let mut welcome = [0u8; 7];
    client
        .read_exact(&mut welcome)
        .expect("greeting through the tunnel");
    assert_eq!(&welcome, b"WELCOME");
    let (mut writer, mut gen, mut all) = early.join().unwrap().expect("early bytes written");
    let mut later = vec![0u8; LATER as usize];
    gen.fill(&mut later);
    writer.write_all(&later).unwrap();
    writer.shutdown(Shutdown::Write).unwrap();
    all.extend_from_slice(&later);

    let (n, digest) = recv_within(&report_rx, Duration::from_secs(10), "destination report")
        .expect("destination reads to EOF");
    assert_eq!(n, EARLY + LATER, "byte count at the destination");
    assert_eq!(
        hex(&digest),
        hex(&sha(&all)),
        "early bytes intact and in order"
    );
    let head = lossy(&setup.proxy.heads()[0]);
    let authority = format!("127.0.0.1:{}", setup.echo.port());
    assert_eq!(
        head,
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
    );
    expect_closed(&mut client, Duration::from_secs(5), "after both EOFs");
    setup.assert_still_serving();
}

#[test]
fn connect_request_bytes_are_exact() {
    let echo = echo_backend();
    let proxy = FakeProxy::scripted(Script::answer(OK, Then::Relay(echo.addr)));
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let pp = proxy.port();
    let config = format!(
        "{p1} example.test 443 127.0.0.1 {pp} auth=user:pw header=\"User-Agent: Test/1.0 (X11)\" header=\"X-Other: v\"\n\
         {p2} ::1 8443 127.0.0.1 {pp}\n\
         {p3} [::1] 22 http://127.0.0.1:{pp}\n"
    );
    let ht = spawn_binary(&config);

    let expected = [
        (
            p1,
            "CONNECT example.test:443 HTTP/1.1\r\n\
             Host: example.test:443\r\n\
             Proxy-Authorization: Basic dXNlcjpwdw==\r\n\
             User-Agent: Test/1.0 (X11)\r\n\
             X-Other: v\r\n\r\n",
        ),
        (
            p2,
            "CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n",
        ),
        (p3, "CONNECT [::1]:22 HTTP/1.1\r\nHost: [::1]:22\r\n\r\n"),
    ];
    for (i, (port, want)) in expected.iter().enumerate() {
        assert_echo(*port, 50 + i as u64, 16 * 1024);
        let heads = proxy.wait_heads(i + 1, Duration::from_secs(5));
        assert_eq!(lossy(&heads[i]), *want, "request for entry {}", i + 1);
    }
    drop(ht);
}

#[test]
fn credentials_in_the_proxy_url_are_percent_decoded() {
    let echo = echo_backend();
    let proxy = FakeProxy::scripted(ok_relay_script());
    let port = free_port();
    let config = format!(
        "{port} 127.0.0.1 {} http://user:p%40ss@127.0.0.1:{}\n",
        echo.port(),
        proxy.port()
    );
    let ht = spawn_binary(&config);
    assert_echo(port, 60, 16 * 1024);
    let authority = format!("127.0.0.1:{}", echo.port());
    assert_eq!(
        lossy(&proxy.wait_heads(1, Duration::from_secs(5))[0]),
        format!(
            "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\
             Proxy-Authorization: Basic dXNlcjpwQHNz\r\n\r\n" // user:p@ss
        )
    );
    assert!(!ht.log().contains("p@ss") && !ht.log().contains("p%40ss"));
}

// ---------------------------------------------------------------------------
// In process: a slow resolver does not stall open tunnels
// ---------------------------------------------------------------------------

mod in_process {
    use super::*;
    use httptunneling::config::{Config, Dest, Entry, HostPort, Options, RouteSpec};
    use httptunneling::{Engine, EngineOptions, Resolve};

    const SLOW: Duration = Duration::from_secs(3);

    /// `fast.test` is 127.0.0.1 at once; `slow.invalid` too, but once armed
    /// its next lookup takes 3 s and reports when it started and ended.
    struct TestResolver {
        armed: AtomicBool,
        events: Mutex<mpsc::Sender<(&'static str, Instant)>>,
    }

    impl Resolve for TestResolver {
        fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            let loopback = vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)];
            match host {
                "fast.test" => Ok(loopback),
                "slow.invalid" => {
                    if self.armed.swap(false, Ordering::SeqCst) {
                        let events = self.events.lock().unwrap().clone();
                        let _ = events.send(("start", Instant::now()));
                        thread::sleep(SLOW);
                        let _ = events.send(("end", Instant::now()));
                    }
                    Ok(loopback)
                }
                _ => Err(io::Error::new(io::ErrorKind::NotFound, host.to_owned())),
            }
        }
    }

    /// An entry listening on a free port (two entries on `127.0.0.1:0`
    /// would share one listen address, the key of an entry).
    fn entry(line: usize, host: &str, port: u16) -> Entry {
        Entry {
            line,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port()),
            dest: Dest::Fixed(HostPort {
                host: host.to_owned(),
                port,
            }),
            routes: vec![RouteSpec::direct()],
            env: None,
            allow: Vec::new(),
            options: Options {
                connect_timeout: Duration::from_secs(10),
                idle_timeout: None,
                keepalive: None,
                max_conns: None,
                buffer: 64 * 1024,
                ..Options::default()
            },
        }
    }

    #[test]
    fn slow_name_resolution_does_not_stall_open_tunnels() {
        const CHUNK: usize = 64 * 1024;
        let echo = echo_backend();
        let (events_tx, events) = mpsc::channel();
        let resolver = Arc::new(TestResolver {
            armed: AtomicBool::new(false),
            events: Mutex::new(events_tx),
        });

        // The engine is built and run on its own thread.
        let (ready_tx, ready) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let config = Config {
            entries: vec![
                entry(1, "fast.test", echo.port()),
                entry(2, "slow.invalid", echo.port()),
            ],
            metrics: None,
        };
        let opts = EngineOptions {
            resolver: resolver.clone(),
            ..EngineOptions::default()
        };
        thread::spawn(move || {
            let engine = Engine::new(config, opts).expect("engine starts");
            let _ = ready_tx.send((engine.listen_addrs(), engine.handle()));
            let _ = done_tx.send(engine.run().map_err(|e| e.to_string()));
        });
        let (addrs, handle) = recv_within(&ready, Duration::from_secs(10), "engine ready");
        assert_eq!(addrs.len(), 2);

        // A bulk tunnel doing 64 KiB round trips, each checked, each
        // completion time recorded.
        let stop = Arc::new(AtomicBool::new(false));
        let timeline = Arc::new(Mutex::new(Vec::<Instant>::new()));
        let bulk = {
            let (stop, timeline, addr) = (stop.clone(), timeline.clone(), addrs[0]);
            thread::spawn(move || -> Result<(), String> {
                let mut s = connect(addr);
                let mut gen = Payload::new(70);
                let mut out = vec![0u8; CHUNK];
                let mut back = vec![0u8; CHUNK];
                while !stop.load(Ordering::SeqCst) {
                    gen.fill(&mut out);
                    s.write_all(&out)
                        .and_then(|_| s.read_exact(&mut back))
                        .map_err(|e| format!("bulk round trip: {e}"))?;
                    if back != out {
                        return Err("bulk tunnel corrupted data".into());
                    }
                    timeline.lock().unwrap().push(Instant::now());
                }
                Ok(())
            })
        };
        assert!(
            wait_until(Duration::from_secs(10), || timeline.lock().unwrap().len()
                >= 4),
            "the bulk tunnel does not move"
        );

        // Open a tunnel whose name takes 3 s to resolve.
        resolver.armed.store(true, Ordering::SeqCst);
        let mut slow_client = connect(addrs[1]);
        slow_client.write_all(b"late hello").unwrap();
        let (what, start) = recv_within(&events, Duration::from_secs(5), "slow lookup starts");
        assert_eq!(what, "start");
        let (what, end) = recv_within(&events, Duration::from_secs(10), "slow lookup ends");
        assert_eq!(what, "end");

        // The slow tunnel opens after its lookup, with its early bytes.
        let mut hello = [0u8; 10];
        slow_client
            .read_exact(&mut hello)
            .expect("slow tunnel works");
        assert_eq!(&hello, b"late hello");

        stop.store(true, Ordering::SeqCst);
        bulk.join().unwrap().expect("bulk tunnel");

        let times = timeline.lock().unwrap().clone();
        let during: Vec<Instant> = times
            .iter()
            .copied()
            .filter(|t| *t > start && *t < end)
            .collect();
        let moved = during.len() * CHUNK;
        assert!(
            moved >= 1 << 20,
            "only {moved} bytes made the round trip during the {SLOW:?} lookup"
        );
        let mut edges = vec![start];
        edges.extend(&during);
        edges.push(end);
        let longest = edges
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .max()
            .unwrap();
        assert!(
            longest < Duration::from_millis(1500),
            "the bulk tunnel stalled for {longest:?} during the lookup"
        );

        handle.shutdown();
        let result = recv_within(
            &done,
            Duration::from_secs(10),
            "engine stops after shutdown",
        );
        assert_eq!(result, Ok(()));
    }
}
