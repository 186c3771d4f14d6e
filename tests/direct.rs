//! Direct tunnels (no proxy) through the real binary: bulk transfer in both
//! directions at once, half-closes from either side, refused and
//! unanswering destinations, many tunnels at once, resets, and the byte
//! counts of the close log line.
//!
//! Every test runs its own process with an extra entry to an echo backend
//! and ends by opening a fresh tunnel through it: the process must survive
//! whatever the test did to it.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// The process under test plus an entry that leads to an echo backend.
struct Setup {
    ht: Running,
    /// Listen port of the entry under test.
    port: u16,
    /// Listen port of the echo entry.
    echo_port: u16,
    _echo: Backend,
}

impl Setup {
    /// Runs the binary with `127.0.0.1:PORT 127.0.0.1 DEST_PORT OPTIONS` and
    /// an echo entry.
    fn new(dest_port: u16, options: &str) -> Setup {
        let echo = echo_backend();
        let port = free_port();
        let echo_port = free_port();
        let config = format!(
            "# entry under test\n\
             127.0.0.1:{port} 127.0.0.1 {dest_port} {options}\n\
             {echo_port} 127.0.0.1 {}\n",
            echo.port()
        );
        Setup {
            ht: spawn_binary(&config),
            port,
            echo_port,
            _echo: echo,
        }
    }

    /// The process is still running and a fresh tunnel works end to end.
    fn assert_still_serving(&mut self) {
        self.ht.assert_alive();
        assert_echo(self.echo_port, 0xF00D, 256 * 1024);
        self.ht.assert_alive();
    }
}

/// The close line of the (single) tunnel of the entry under test.
fn close_line(setup: &Setup, up: u64, down: u64) -> String {
    setup.ht.wait_log(
        &format!("closed up={up} down={down} "),
        Duration::from_secs(10),
    )
}

#[test]
fn bulk_64_mib_each_way_at_the_same_time_is_byte_exact() {
    const LEN: u64 = 64 << 20;
    let (backend, reports) = sink_source_backend(2, LEN);
    let mut setup = Setup::new(backend.port(), "");

    let mut client = connect_port(setup.port);
    let mut writer = client.try_clone().expect("try_clone");
    let sender = thread::spawn(move || {
        let sha = send_payload(&mut writer, 1, LEN, 256 * 1024)?;
        writer.shutdown(Shutdown::Write)?;
        std::io::Result::Ok(sha)
    });
    let mut check = StreamCheck::new(2);
    check
        .read_to_eof(&mut client)
        .expect("client reads the backend's stream to EOF");
    let sent = sender
        .join()
        .expect("sender thread")
        .expect("client sends its stream");
    check.assert_complete(LEN, "backend to client");

    let report = recv_within(&reports, Duration::from_secs(30), "backend report");
    assert_eq!(report.error, None, "backend read error");
    assert!(report.sent_all, "backend could not send all of its stream");
    assert_eq!(report.received, LEN, "client to backend: byte count");
    assert_eq!(hex(&report.sha), hex(&sent), "client to backend: sha256");

    close_line(&setup, LEN, LEN);
    setup.assert_still_serving();
}

#[test]
fn client_half_close_still_gets_the_reply_sent_after_its_eof() {
    const UP: u64 = 1 << 20;
    const DOWN: u64 = 8 << 20;
    let (tx, reports) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    // Reads to EOF first, then answers with a large reply.
    let backend = Backend::spawn(move |mut stream| {
        let got = recv_to_eof(&mut stream);
        let sent = send_payload(&mut stream, 4, DOWN, 64 * 1024)
            .and_then(|_| stream.shutdown(Shutdown::Write));
        let _ = tx.lock().unwrap().send((got, sent.is_ok()));
    });
    let mut setup = Setup::new(backend.port(), "");

    let mut client = connect_port(setup.port);
    let sent = send_payload(&mut client, 3, UP, 64 * 1024).expect("client sends");
    client
        .shutdown(Shutdown::Write)
        .expect("client shutdown(Write)");

    let mut check = StreamCheck::new(4);
    check
        .read_to_eof(&mut client)
        .expect("client reads the reply to EOF");
    check.assert_complete(DOWN, "reply after the client's EOF");

    let (got, reply_sent) = recv_within(&reports, Duration::from_secs(30), "backend report");
    let (n, sha) = got.expect("backend reads the client's stream to EOF");
    assert_eq!(n, UP, "client to backend: byte count");
    assert_eq!(hex(&sha), hex(&sent), "client to backend: sha256");
    assert!(reply_sent, "backend could not send its reply");

    let line = close_line(&setup, UP, DOWN);
    assert!(line.contains("first=client"), "close line: {line}");
    setup.assert_still_serving();
}

#[test]
fn backend_half_close_lets_the_client_keep_sending() {
    const DOWN: u64 = 8 << 20;
    const PART: usize = 2 << 20;
    let (tx, reports) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    // Sends its whole reply and shuts down its write half at once, while
    // reading the client's stream to EOF; reports the digest out of band.
    let backend = Backend::spawn(move |stream| {
        let mut writer = stream.try_clone().expect("try_clone");
        let sender = thread::spawn(move || {
            send_payload(&mut writer, 6, DOWN, 64 * 1024)
                .and_then(|_| writer.shutdown(Shutdown::Write))
                .is_ok()
        });
        let mut reader = stream;
        let got = recv_to_eof(&mut reader);
        let sent = sender.join().unwrap_or(false);
        let _ = tx.lock().unwrap().send((got, sent));
    });
    let mut setup = Setup::new(backend.port(), "");

    let mut client = connect_port(setup.port);
    let mut writer = client.try_clone().expect("try_clone");
    let (eof_tx, eof_rx) = mpsc::channel::<()>();
    // Part one goes while the reply streams in; part two only after the
    // client has seen the backend's EOF: the upstream direction must still
    // carry it.
    let sender = thread::spawn(move || {
        let mut gen = Payload::new(5);
        let mut buf = vec![0u8; PART];
        let mut hasher_input = Vec::with_capacity(2 * PART);
        gen.fill(&mut buf);
        writer.write_all(&buf)?;
        hasher_input.extend_from_slice(&buf);
        eof_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|e| std::io::Error::other(format!("no EOF from the backend: {e}")))?;
        gen.fill(&mut buf);
        writer.write_all(&buf)?;
        hasher_input.extend_from_slice(&buf);
        writer.shutdown(Shutdown::Write)?;
        std::io::Result::Ok(sha(&hasher_input))
    });

    let mut check = StreamCheck::new(6);
    check
        .read_to_eof(&mut client)
        .expect("client reads the backend's reply to EOF");
    eof_tx.send(()).expect("sender still waiting");
    check.assert_complete(DOWN, "backend to client before its FIN");

    let sent = sender
        .join()
        .expect("sender thread")
        .expect("client keeps sending after the backend's FIN");
    let (got, reply_sent) = recv_within(&reports, Duration::from_secs(30), "backend report");
    let (n, digest) = got.expect("backend reads the client's stream to EOF");
    assert!(reply_sent, "backend could not send its reply");
    assert_eq!(n, 2 * PART as u64, "client to backend: byte count");
    assert_eq!(hex(&digest), hex(&sent), "client to backend: sha256");

    let line = close_line(&setup, 2 * PART as u64, DOWN);
    assert!(line.contains("first=upstream"), "close line: {line}");
    setup.assert_still_serving();
}

#[test]
fn refused_destination_closes_the_client_within_a_second() {
    let nothing_there = free_port();
    let mut setup = Setup::new(nothing_there, "");

    let start = Instant::now();
    let mut client = connect_port(setup.port);
    let (how, _) = expect_closed(&mut client, Duration::from_secs(5), "refused destination");
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(1),
        "client closed only after {elapsed:?} ({how:?})"
    );

    let line = setup.ht.wait_log("failed:", Duration::from_secs(5));
    assert!(
        line.to_lowercase().contains("refused"),
        "failed line does not say refused: {line}"
    );
    setup.assert_still_serving();
    let failed = setup.ht.log_lines("failed:");
    assert_eq!(failed.len(), 1, "exactly one failed line: {failed:#?}");
}

#[test]
fn connect_timeout_is_honoured_against_a_silent_destination() {
    let hole = BlackHole::new();
    let mut setup = Setup::new(hole.addr.port(), "connect-timeout=1s");

    let start = Instant::now();
    let mut client = connect_port(setup.port);
    let (how, _) = expect_closed(&mut client, Duration::from_secs(6), "silent destination");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800) && elapsed <= Duration::from_secs(3),
        "client closed after {elapsed:?} ({how:?}), expected about 1s"
    );

    let line = setup.ht.wait_log("failed:", Duration::from_secs(5));
    assert!(line.contains("connect-timeout"), "failed line: {line}");
    setup.assert_still_serving();
    drop(hole);
}

#[test]
fn five_hundred_concurrent_tunnels_are_each_byte_exact() {
    const N: usize = 500;
    const LEN: usize = 64 * 1024;
    const CHUNK: usize = 8 * 1024;
    // Each tunnel holds two descriptors in the program and one here, plus
    // one in the echo backend (also here).
    raise_nofile(4 * N as libc::rlim_t + 256);
    let echo = echo_backend();
    let mut setup = Setup::new(echo.port(), "");
    let port = setup.port;

    // Every tunnel first completes one round trip and then waits for all
    // others to have done the same, so all N are open at once.
    let arrived = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let arrived = arrived.clone();
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || -> Result<(), String> {
                    let seed = 1000 + i as u64;
                    let data = payload(seed, LEN);
                    let mut s = TcpStream::connect(("127.0.0.1", port))
                        .map_err(|e| format!("tunnel {i}: connect: {e}"))?;
                    prepare(&s);
                    let mut echoed = vec![0u8; LEN];
                    let mut round = |s: &mut TcpStream, from: usize, to: usize| {
                        s.write_all(&data[from..to])
                            .and_then(|_| s.read_exact(&mut echoed[from..to]))
                            .map_err(|e| format!("tunnel {i}: bytes {from}..{to}: {e}"))
                    };
                    round(&mut s, 0, CHUNK)?;
                    arrived.fetch_add(1, Ordering::SeqCst);
                    if !wait_until(Duration::from_secs(40), || {
                        arrived.load(Ordering::SeqCst) >= N
                    }) {
                        return Err(format!("tunnel {i}: not all tunnels opened"));
                    }
                    for from in (CHUNK..LEN).step_by(CHUNK) {
                        round(&mut s, from, from + CHUNK)?;
                    }
                    if sha(&echoed) != sha(&data) {
                        return Err(format!("tunnel {i}: echoed bytes differ"));
                    }
                    s.shutdown(Shutdown::Write)
                        .map_err(|e| format!("tunnel {i}: shutdown: {e}"))?;
                    let mut rest = Vec::new();
                    s.read_to_end(&mut rest)
                        .map_err(|e| format!("tunnel {i}: waiting for EOF: {e}"))?;
                    if !rest.is_empty() {
                        return Err(format!("tunnel {i}: {} unexpected bytes", rest.len()));
                    }
                    Ok(())
                })
                .expect("spawn client thread")
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().expect("client thread panicked").err())
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {N} tunnels failed, e.g. {:#?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        echo.max_active() >= N,
        "only {} tunnels reached the backend at once",
        echo.max_active()
    );
    setup.ht.wait_log_count(
        &format!("closed up={LEN} down={LEN} "),
        N,
        Duration::from_secs(20),
    );
    setup.assert_still_serving();
}

#[test]
fn close_line_counts_the_exact_bytes_each_way() {
    const UP: u64 = 12_345;
    const DOWN: u64 = 54_321;
    let (backend, reports) = sink_source_backend(8, DOWN);
    let mut setup = Setup::new(backend.port(), "");

    let mut client = connect_port(setup.port);
    let sent = send_payload(&mut client, 7, UP, 1000).expect("client sends");
    client.shutdown(Shutdown::Write).expect("shutdown(Write)");
    let mut check = StreamCheck::new(8);
    check.read_to_eof(&mut client).expect("client reads to EOF");
    check.assert_complete(DOWN, "backend to client");
    let report = recv_within(&reports, Duration::from_secs(10), "backend report");
    assert_eq!((report.received, hex(&report.sha)), (UP, hex(&sent)));

    let line = close_line(&setup, UP, DOWN);
    assert!(line.contains("reason=eof"), "close line: {line}");
    let closed = setup.ht.log_lines(" closed up=");
    assert_eq!(
        closed.len(),
        1,
        "one close line for one tunnel: {closed:#?}"
    );
    setup.assert_still_serving();
}

#[test]
fn backend_reset_closes_the_client() {
    let backend = Backend::spawn(|mut stream| {
        let mut buf = [0u8; 1000];
        if stream.read_exact(&mut buf).is_ok() {
            reset(stream);
        }
    });
    let mut setup = Setup::new(backend.port(), "");

    let mut client = connect_port(setup.port);
    client.write_all(&[b'x'; 1000]).expect("client sends");
    expect_closed(
        &mut client,
        Duration::from_secs(5),
        "after the backend's reset",
    );

    let line = setup
        .ht
        .wait_log("closed up=1000 down=0 ", Duration::from_secs(5));
    assert!(
        line.contains("reason=reset by upstream"),
        "close line: {line}"
    );
    setup.assert_still_serving();
}

#[test]
fn client_reset_closes_the_backend_side() {
    let (tx, ends) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let backend = Backend::spawn(move |mut stream| {
        let mut buf = [0u8; 1000];
        let mut end = stream.read_exact(&mut buf).map(|_| "read");
        if end.is_ok() {
            let _ = stream.write_all(b"ready");
            end = match stream.read(&mut buf) {
                Ok(0) => Ok("eof"),
                Ok(_) => Ok("data"),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok("reset"),
                Err(e) => Err(e),
            };
        }
        let _ = tx.lock().unwrap().send(end.map_err(|e| e.to_string()));
    });
    let mut setup = Setup::new(backend.port(), "");

    let mut client = connect_port(setup.port);
    client.write_all(&[b'y'; 1000]).expect("client sends");
    let mut ready = [0u8; 5];
    client.read_exact(&mut ready).expect("backend answers");
    reset(client);

    let end = recv_within(&ends, Duration::from_secs(10), "backend sees the close");
    assert!(
        matches!(end.as_deref(), Ok("eof") | Ok("reset")),
        "backend connection ended with {end:?}"
    );
    let line = setup
        .ht
        .wait_log("closed up=1000 down=5 ", Duration::from_secs(5));
    assert!(
        line.contains("reason=reset by client"),
        "close line: {line}"
    );
    setup.assert_still_serving();
}
