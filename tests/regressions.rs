//! Regression tests for the faults of issue 17, over real loopback sockets
//! against the real binary:
//!
//! 1. A reset on one side of a tunnel was never noticed while the other
//!    direction was stalled (SPEC "Forwarding": "A reset or error on either
//!    side closes both"): the tunnel, its buffers and its two descriptors were
//!    held until the stalled peer read again.
//! 2. Under descriptor pressure, clients waiting in the listen backlog were
//!    accepted and then dropped with `failed: connect to ...: Too many open
//!    files (os error 24)` (SPEC "Limits and faults": a client is accepted
//!    only when a descriptor is there for its upstream connection).

mod common;

use common::*;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long after a reset both sockets of the tunnel must be closed.
const RESET_WITHIN: Duration = Duration::from_secs(2);

/// A sender that keeps finding its socket unwritable for this long is
/// stalled: nothing downstream drains it.
const STALL_QUIET: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------
// The process under test, from /proc (as in tests/limits.rs)
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

/// poll(2) on one socket for `events` (POLLERR and POLLHUP are always
/// reported); returns revents, 0 when nothing within `timeout`.
fn poll_one(stream: &TcpStream, events: libc::c_short, timeout: Duration) -> libc::c_short {
    let mut p = libc::pollfd {
        fd: stream.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for a descriptor `stream` owns.
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
        return 0;
    }
    p.revents
}

/// Whether the connection of `stream` has ended (the peer reset it, or both
/// directions are closed), without reading anything: bytes still queued for
/// us stay queued.
fn has_ended(stream: &TcpStream) -> bool {
    poll_one(stream, 0, Duration::ZERO) & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Writes to `stream` (non-blocking) until it stays unwritable for
/// [`STALL_QUIET`]: everything downstream is full and nobody drains it.
/// Returns the bytes written.
fn write_until_stalled(stream: &TcpStream, what: &str) -> u64 {
    stream.set_nonblocking(true).expect("set_nonblocking");
    let chunk = payload(17, 64 * 1024);
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        match (&*stream).write(&chunk) {
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if poll_one(stream, libc::POLLOUT, STALL_QUIET) == 0 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("{what}: write failed after {total} bytes: {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(60) && total < (1 << 30),
            "{what}: still not stalled after {total} bytes in {:?}: is the peer reading?",
            start.elapsed()
        );
    }
    stream.set_nonblocking(false).expect("set_nonblocking");
    total
}

/// Reads `stream` until it ends (bytes still queued come first); returns the
/// byte count and how it ended. Bounded: panics after `within` or 1 GiB.
fn drain_to_end(stream: &mut TcpStream, within: Duration, what: &str) -> (u64, io::Result<()>) {
    stream
        .set_read_timeout(Some(within))
        .expect("set_read_timeout");
    let start = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        assert!(
            start.elapsed() < within && total < (1 << 30),
            "{what}: still reading after {total} bytes in {:?}",
            start.elapsed()
        );
        match stream.read(&mut buf) {
            Ok(0) => return (total, Ok(())),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "{what}: no end of stream within {within:?} (after {total} bytes): the \
                     connection is still open"
                )
            }
            Err(e) => return (total, Err(e)),
        }
    }
}

/// A backend that hands each accepted connection to the test, untouched.
fn capture_backend() -> (Backend, mpsc::Receiver<TcpStream>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let backend = Backend::spawn(move |stream| {
        let _ = tx.lock().expect("capture channel").send(stream);
    });
    (backend, rx)
}

// ---------------------------------------------------------------------------
// A fake proxy whose relay passes a reset on as a reset
// ---------------------------------------------------------------------------

/// Closes `socks[to]` with a reset (and the other one too).
fn pass_reset(socks: [TcpStream; 2], to: usize) {
    set_linger_zero(&socks[to]);
    drop(socks);
}

/// Relays between `a` and `b` (non-blocking, one thread, poll(2)) with a
/// 256 KiB buffer a direction, passing half-closes on as half-closes and a
/// reset or error on one side as a reset of the other. Unlike
/// [`ProxyConn::relay`] it notices a reset on a side it is neither reading
/// (its buffer toward the other side is full) nor writing (nothing to send).
fn relay_passing_resets(a: TcpStream, b: TcpStream) {
    const CAP: usize = 256 * 1024;
    let socks = [a, b];
    for s in &socks {
        if s.set_nonblocking(true).is_err() {
            return;
        }
    }
    // bufs[i]: read from socks[i], to be written to socks[1 - i].
    let mut bufs: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut eof = [false; 2];
    let mut shut = [false; 2];
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(shut[0] && shut[1]) && Instant::now() < deadline {
        let mut fds = [0, 1].map(|i| {
            let mut events = 0;
            if !eof[i] && bufs[i].len() < CAP {
                events |= libc::POLLIN;
            }
            if !bufs[1 - i].is_empty() {
                events |= libc::POLLOUT;
            }
            libc::pollfd {
                fd: socks[i].as_raw_fd(),
                events,
                revents: 0,
            }
        });
        // SAFETY: two valid pollfds for descriptors `socks` owns.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
                && !matches!(socks[i].take_error(), Ok(None))
            {
                return pass_reset(socks, 1 - i);
            }
        }
        for i in 0..2 {
            let j = 1 - i;
            while !eof[i] && bufs[i].len() < CAP {
                let room = (CAP - bufs[i].len()).min(chunk.len());
                match (&socks[i]).read(&mut chunk[..room]) {
                    Ok(0) => eof[i] = true,
                    Ok(n) => bufs[i].extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return pass_reset(socks, j),
                }
            }
            while !bufs[i].is_empty() {
                match (&socks[j]).write(&bufs[i]) {
                    Ok(n) => {
                        bufs[i].drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return pass_reset(socks, i),
                }
            }
            if eof[i] && bufs[i].is_empty() && !shut[j] {
                let _ = socks[j].shutdown(Shutdown::Write);
                shut[j] = true;
            }
        }
    }
}

/// A fake HTTP proxy: reads the CONNECT head, answers `200 Connection
/// established`, connects to the target (an IP literal) and relays with
/// [`relay_passing_resets`].
fn resetting_proxy() -> FakeProxy {
    FakeProxy::spawn(|mut conn| {
        if conn.read_head().is_err() {
            return;
        }
        let Some(target) = conn.target().and_then(|t| t.parse::<SocketAddr>().ok()) else {
            return;
        };
        let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
            return;
        };
        prepare(&upstream);
        if conn
            .send(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return;
        }
        relay_passing_resets(conn.stream, upstream);
    })
}

// ---------------------------------------------------------------------------
// 1. A reset is noticed while the other direction is stalled
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Direct,
    Proxy,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Resetter {
    /// The destination never reads; the client writes until stalled, then
    /// resets.
    Client,
    /// The client never reads; the destination writes until stalled, then
    /// resets.
    Upstream,
}

/// One case of fault 1: after the reset, within [`RESET_WITHIN`], the close
/// line names who reset, the other peer's socket has ended (and reading it
/// ends in a reset once its queued bytes are read), and the process holds
/// its idle number of descriptors again.
fn reset_while_stalled(via: Via, resetter: Resetter) {
    let echo = echo_backend();
    let (stall, accepted) = capture_backend();
    let proxy = (via == Via::Proxy).then(resetting_proxy);
    let hop = match &proxy {
        Some(p) => format!(" 127.0.0.1 {}", p.port()),
        None => String::new(),
    };
    let (warm_port, port) = (free_port(), free_port());
    let config = format!(
        "127.0.0.1:{warm_port} 127.0.0.1 {}{hop}\n127.0.0.1:{port} 127.0.0.1 {}{hop}\n",
        echo.port(),
        stall.port()
    );
    let run = spawn_binary(&config);
    let pid = run.pid();
    // Warm up through the same kind of route, so that lazily created things
    // exist before the baseline is taken.
    assert_echo(warm_port, 1, 16 * 1024);
    run.wait_log(" reason=", IO_TIMEOUT);
    let baseline = fd_count(pid);
    let fds_at_baseline = fd_list(pid);

    let client = connect_port(port);
    let client_addr = client.local_addr().expect("local_addr");
    let dest = recv_within(
        &accepted,
        IO_TIMEOUT,
        "the destination's accepted connection",
    );
    // Forwarding once the open line is out (through the proxy: after its 200).
    let open = format!("<- {client_addr} -> ");
    assert!(
        wait_until(IO_TIMEOUT, || run
            .log_lines(&open)
            .iter()
            .any(|l| l.contains(": open"))),
        "no open line for the tunnel of {client_addr}\n{}",
        run.diagnostics()
    );

    let (writer, what, mut other, other_what, who) = match resetter {
        Resetter::Client => (client, "client", dest, "the destination", "client"),
        Resetter::Upstream => (dest, "destination", client, "the client", "upstream"),
    };
    let written = write_until_stalled(&writer, what);
    let fds_open = fd_count(pid);
    let reset_at = Instant::now();
    reset(writer);

    let close = format!("first={who} reason=reset by {who}");
    let mut close_line = None;
    let mut ended = false;
    let mut fds = fds_open;
    let all = wait_until(RESET_WITHIN, || {
        close_line = close_line.take().or_else(|| {
            run.log_lines(&open)
                .into_iter()
                .find(|l| l.contains(": closed up="))
        });
        ended = ended || has_ended(&other);
        fds = fd_count(pid);
        close_line.is_some() && ended && fds <= baseline
    });
    let elapsed = reset_at.elapsed();
    assert!(
        all,
        "{via:?} tunnel, the {what} wrote {written} bytes until stalled, then reset: \
         {elapsed:?} after the reset: close line {}; {other_what}'s socket {}; {fds} \
         descriptors open ({baseline} idle, {fds_open} with the tunnel open)\n\
         --- descriptors at baseline ---\n{fds_at_baseline}\n--- descriptors now ---\n{}\n{}",
        close_line.as_deref().unwrap_or("not logged"),
        if ended { "ended" } else { "still open" },
        fd_list(pid),
        run.diagnostics()
    );
    let line = close_line.expect("close line");
    assert!(
        line.contains(&close),
        "{via:?} tunnel reset by the {what}: the close line should say {close:?}: {line}\n{}",
        run.diagnostics()
    );

    // What the other peer reads: the bytes still queued for it, then the
    // reset passed on as a reset.
    let (read, end) = drain_to_end(&mut other, Duration::from_secs(20), other_what);
    match end {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        end => panic!(
            "{via:?} tunnel reset by the {what}: {other_what} read {read} bytes, then {end:?}, \
             not a reset\n{}",
            run.diagnostics()
        ),
    }
    drop(proxy);
}

/// Direct entry; the destination never reads, the client writes until its
/// send blocks, then resets.
#[test]
fn reset_while_the_other_direction_is_stalled_client_resets_direct() {
    reset_while_stalled(Via::Direct, Resetter::Client);
}

/// Direct entry; the client never reads, the destination writes until its
/// send blocks, then resets.
#[test]
fn reset_while_the_other_direction_is_stalled_upstream_resets_direct() {
    reset_while_stalled(Via::Direct, Resetter::Upstream);
}

/// Through a fake proxy that passes resets on; the destination never reads,
/// the client writes until its send blocks, then resets.
#[test]
fn reset_while_the_other_direction_is_stalled_client_resets_via_proxy() {
    reset_while_stalled(Via::Proxy, Resetter::Client);
}

/// Through a fake proxy that passes resets on; the client never reads, the
/// destination writes until its send blocks, then resets.
#[test]
fn reset_while_the_other_direction_is_stalled_upstream_resets_via_proxy() {
    reset_while_stalled(Via::Proxy, Resetter::Upstream);
}

// ---------------------------------------------------------------------------
// 2. Under descriptor pressure no client is accepted only to be dropped
// ---------------------------------------------------------------------------

/// Clients at once.
const CLIENTS: usize = 200;
/// The process's RLIMIT_NOFILE while they come.
const FD_LIMIT: u64 = 128;
/// Bytes each client sends and expects back.
const CLIENT_BYTES: usize = 64 * 1024;
/// Bound on every client's whole life, waiting included.
const CLIENT_BOUND: Duration = Duration::from_secs(60);

/// A one-way latch: clients wait on it, the test opens it.
struct Gate {
    open: Mutex<bool>,
    cond: Condvar,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            open: Mutex::new(false),
            cond: Condvar::new(),
        }
    }

    fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.cond.notify_all();
    }

    /// Waits until open or `max` passes.
    fn wait(&self, max: Duration) {
        let guard = self.open.lock().expect("gate");
        let _ = self
            .cond
            .wait_timeout_while(guard, max, |open| !*open)
            .expect("gate");
    }
}

/// One client: connect, send its payload, read it back byte-exact, hold the
/// tunnel until the gate opens, then close and expect a clean end.
fn pressure_client(port: u16, seed: u64, echoed: &AtomicUsize, gate: &Gate) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(CLIENT_BOUND))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(CLIENT_BOUND))
        .map_err(|e| e.to_string())?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    let data = payload(seed, CLIENT_BYTES);
    s.write_all(&data)
        .map_err(|e| format!("{local}: send: {e}"))?;
    let mut back = vec![0u8; CLIENT_BYTES];
    let mut got = 0;
    while got < back.len() {
        match s.read(&mut back[got..]) {
            Ok(0) => {
                return Err(format!(
                    "{local}: closed after {got} of {CLIENT_BYTES} bytes"
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{local}: after {got} of {CLIENT_BYTES} bytes: {e}")),
        }
    }
    if sha(&back) != sha(&data) {
        return Err(format!("{local}: echo differs from what was sent"));
    }
    echoed.fetch_add(1, Ordering::SeqCst);
    gate.wait(CLIENT_BOUND);
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("{local}: shutdown: {e}"))?;
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => Ok(()),
        Ok(_) => Err(format!(
            "{local}: {} unexpected bytes after the echo",
            rest.len()
        )),
        Err(e) => Err(format!("{local}: closing: {e}")),
    }
}

/// 200 clients at once against a process limited to 128 descriptors: each
/// waits in the backlog as long as it must, then gets through byte-exact;
/// none is accepted and then dropped for lack of a descriptor; the process
/// does not spin while clients wait; afterwards it serves normally and holds
/// its idle number of descriptors.
#[test]
fn descriptor_pressure_never_accepts_a_client_only_to_drop_it() {
    raise_nofile(4096);
    let dest = echo_backend();
    let port = free_port();
    let run = spawn_binary(&format!(
        "127.0.0.1:{port} 127.0.0.1 {}\n",
        dest.addr.port()
    ));
    let pid = run.pid();
    assert_echo(port, 1, 1024);
    run.wait_log(" reason=", IO_TIMEOUT);
    let baseline = fd_count(pid);
    limit_fds(pid, FD_LIMIT);

    let echoed = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Gate::new());
    let start = Arc::new(Barrier::new(CLIENTS + 1));
    let (tx, results) = mpsc::channel();
    for i in 0..CLIENTS {
        let (echoed, gate, start, tx) = (echoed.clone(), gate.clone(), start.clone(), tx.clone());
        thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                start.wait();
                let r = pressure_client(port, 1000 + i as u64, &echoed, &gate);
                let _ = tx.send((i, r));
            })
            .expect("spawn client thread");
    }
    drop(tx);
    start.wait();

    // Phase 1: as many tunnels as the limit allows are open and held; the
    // other clients wait in the backlog. Wait until no more get through.
    let begun = Instant::now();
    let mut last = (0, Instant::now());
    let held = wait_until(Duration::from_secs(30), || {
        let n = echoed.load(Ordering::SeqCst);
        if n != last.0 {
            last = (n, Instant::now());
        }
        // At the limit: nearly every descriptor in use, and no client got
        // through for a second.
        n > 0
            && last.1.elapsed() >= Duration::from_secs(1)
            && fd_count(pid) + 16 >= FD_LIMIT as usize
    });
    let held_n = echoed.load(Ordering::SeqCst);
    assert!(
        held && held_n < CLIENTS,
        "{held_n} of {CLIENTS} clients got through with the gate closed after {:?} ({} \
         descriptors open): the descriptor limit of {FD_LIMIT} did not hold them back, or the \
         process did not reach it\n{}",
        begun.elapsed(),
        fd_count(pid),
        run.diagnostics()
    );
    let fds_held = fd_count(pid);
    let cpu = cpu_over(pid, Duration::from_secs(2));
    assert!(
        cpu < Duration::from_millis(500),
        "used {cpu:?} CPU in 2 s while {} clients waited at the descriptor limit ({held_n} \
         tunnels open, {fds_held} descriptors)\n{}",
        CLIENTS - held_n,
        run.diagnostics()
    );

    // Phase 2: tunnels close while the waiting clients come in.
    gate.open();
    let deadline = Instant::now() + CLIENT_BOUND;
    let mut failures = Vec::new();
    let mut done = 0;
    while done < CLIENTS {
        let left = deadline.saturating_duration_since(Instant::now());
        match results.recv_timeout(left) {
            Ok((i, Ok(()))) => {
                let _ = i;
                done += 1;
            }
            Ok((i, Err(e))) => {
                failures.push(format!("client {i}: {e}"));
                done += 1;
            }
            Err(_) => break,
        }
    }
    let dropped: Vec<String> = run
        .log_lines("failed: connect to")
        .into_iter()
        .filter(|l| l.contains("os error 24") || l.contains("Too many open files"))
        .collect();
    assert!(
        failures.is_empty() && done == CLIENTS && dropped.is_empty(),
        "at RLIMIT_NOFILE={FD_LIMIT}, of {CLIENTS} clients {} failed and {} did not finish \
         within {CLIENT_BOUND:?}; {} accepted and then dropped for lack of a descriptor \
         (log lines `failed: connect to ...: os error 24`); {held_n} got through before the \
         gate opened\n--- failed clients (first 10) ---\n{}\n--- dropped (first 10) ---\n{}\n{}",
        failures.len(),
        CLIENTS - done,
        dropped.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        dropped
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        run.diagnostics()
    );

    // Afterwards: back to the idle descriptor count, and a new client is
    // served normally.
    let idle = wait_until(Duration::from_secs(10), || fd_count(pid) <= baseline);
    assert!(
        idle,
        "{} descriptors open after every client left, {baseline} before\n{}\n{}",
        fd_count(pid),
        fd_list(pid),
        run.diagnostics()
    );
    assert_echo(port, 2, 64 * 1024);
    assert!(
        wait_until(Duration::from_secs(10), || fd_count(pid) <= baseline),
        "{} descriptors open after the last client, {baseline} before\n{}",
        fd_count(pid),
        fd_list(pid)
    );
}
