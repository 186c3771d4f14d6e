//! Limits and resources (SPEC "Limits and faults", "Never block the loop",
//! options `max-conns`, `idle-timeout`, `keepalive`): what the binary holds,
//! costs and gives back, read from /proc of its process.

mod common;

use common::*;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A direct entry from 127.0.0.1:`port` to `backend`, with `options`.
fn entry(port: u16, backend: SocketAddr, options: &str) -> String {
    format!(
        "127.0.0.1:{port} {} {} {options}\n",
        backend.ip(),
        backend.port()
    )
}

/// Connects and checks one small round trip through an echo backend;
/// leaves the tunnel open.
fn open_tunnel(port: u16) -> TcpStream {
    let mut s = connect_port(port);
    round_trip(&mut s, b"ping");
    s
}

fn round_trip(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).expect("write");
    let mut buf = vec![0u8; data.len()];
    s.read_exact(&mut buf).expect("read echo");
    assert_eq!(buf, data, "echo");
}

/// Reads with `within` as timeout and expects nothing: no byte, no EOF.
fn expect_silence(s: &mut TcpStream, within: Duration, what: &str) {
    s.set_read_timeout(Some(within)).expect("set_read_timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        Ok(0) => panic!("{what}: closed instead of being held"),
        Ok(n) => panic!("{what}: got {n} bytes while it should be held"),
        Err(e) => panic!("{what}: {e}"),
    }
    s.set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
}

/// The number of connections waiting in the accept queue of the listener on
/// `listen` (the rx_queue of a LISTEN socket in /proc/net/tcp), or `None`
/// when nothing listens there.
fn accept_queue(listen: SocketAddr) -> Option<u32> {
    let SocketAddr::V4(a) = listen else {
        unreachable!("IPv4 only")
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(a.ip().octets()),
        a.port()
    );
    let text = fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[1] != want || f[3] != "0A" {
            return None;
        }
        let (_tx, rx) = f[4].split_once(':')?;
        u32::from_str_radix(rx, 16).ok()
    })
}

// ---------------------------------------------------------------------------
// max-conns
// ---------------------------------------------------------------------------

/// With `max-conns=2` a third client is connected (kernel backlog) but gets
/// nothing through while two tunnels are open; when one closes, it is
/// served.
#[test]
fn max_conns_holds_the_third_client_until_one_closes() {
    let dest = echo_backend();
    let port = free_port();
    let run = spawn_binary(&entry(port, dest.addr, "max-conns=2"));
    let first = open_tunnel(port);
    let mut second = open_tunnel(port);
    let mut third = connect_port(port);
    third.write_all(b"third").expect("write");
    expect_silence(&mut third, Duration::from_secs(1), "third client");
    assert_eq!(
        dest.accepted(),
        2,
        "only two tunnels reached the destination"
    );

    first.shutdown(Shutdown::Both).expect("close first client");
    drop(first);
    let mut buf = [0u8; 5];
    third.read_exact(&mut buf).unwrap_or_else(|e| {
        panic!(
            "third client after the first closed: {e}\n{}",
            run.diagnostics()
        )
    });
    assert_eq!(&buf, b"third");
    assert_eq!(dest.accepted(), 3);

    // Still two at most: a fourth waits in its turn.
    let mut fourth = connect_port(port);
    fourth.write_all(b"fourth").expect("write");
    expect_silence(&mut fourth, Duration::from_millis(500), "fourth client");
    round_trip(&mut second, b"still open");
    drop(second);
    let mut buf = [0u8; 6];
    fourth.read_exact(&mut buf).expect("fourth client served");
    assert_eq!(&buf, b"fourth");
}

// ---------------------------------------------------------------------------
// Running out of descriptors
// ---------------------------------------------------------------------------

/// Under a 64-descriptor limit with 100 clients: the process stays alive,
/// does not spin (under 0.5 s CPU over 2 s), an open tunnel keeps working,
/// and once the clients leave a new one is served.
#[test]
fn out_of_descriptors_pauses_without_spinning_and_recovers() {
    raise_nofile(4096);
    let dest = echo_backend();
    let port = free_port();
    let mut run = spawn_binary(&entry(port, dest.addr, ""));
    let pid = run.pid();
    let baseline = fd_count(pid);
    limit_fds(pid, 64);
    let mut early = open_tunnel(port);
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(connect_port(port));
    }
    // The process has run out: wait until it says so.
    run.wait_log("os error 24", IO_TIMEOUT);
    let cpu = cpu_over(pid, Duration::from_secs(2));
    run.assert_alive();
    assert!(
        cpu < Duration::from_millis(500),
        "used {cpu:?} CPU in 2 s while out of descriptors\n{}",
        run.diagnostics()
    );
    let emfile_lines = run.log_lines("os error 24").len();
    assert!(
        emfile_lines < 1000,
        "{emfile_lines} log lines about EMFILE in a few seconds: a flood"
    );
    // The tunnel opened before is not harmed.
    round_trip(&mut early, &payload(1, 64 * 1024));
    drop(early);
    drop(clients);
    // Once the departed clients' tunnels are closed and those still queued
    // in the backlog are drained, a new client must be served. (While the
    // backlog drains, each dead client briefly holds descriptors, so one
    // arriving meanwhile may legitimately find none.)
    let drained = wait_until(IO_TIMEOUT, || {
        accept_queue(addr(port)) == Some(0) && fd_count(pid) <= baseline
    });
    assert!(
        drained,
        "{} descriptors open ({baseline} at start), accept queue {:?}, after the clients left\n{}\n{}",
        fd_count(pid),
        accept_queue(addr(port)),
        fd_list(pid),
        run.diagnostics()
    );
    assert_echo(port, 2, 64 * 1024);
    run.assert_alive();
}

// ---------------------------------------------------------------------------
// Idle costs nothing
// ---------------------------------------------------------------------------

/// 100 open, idle tunnels cost under 0.05 s CPU over 3 s: no busy polling.
#[test]
fn idle_tunnels_use_no_cpu() {
    raise_nofile(4096);
    let dest = echo_backend();
    let port = free_port();
    let mut run = spawn_binary(&entry(port, dest.addr, ""));
    let tunnels: Vec<TcpStream> = (0..100).map(|_| open_tunnel(port)).collect();
    run.wait_log_count(": open, dial ", 100, IO_TIMEOUT);
    let cpu = cpu_over(run.pid(), Duration::from_secs(3));
    assert!(
        cpu < Duration::from_millis(50),
        "100 idle tunnels used {cpu:?} CPU in 3 s\n{}",
        run.diagnostics()
    );
    run.assert_alive();
    drop(tunnels);
}

// ---------------------------------------------------------------------------
// idle-timeout
// ---------------------------------------------------------------------------

/// With `idle-timeout=1s` an idle tunnel is closed 1 to 3 s after its last
/// byte, with `reason=idle timeout` in its close line, while a tunnel that
/// moves a byte every 300 ms stays open for as long as it does.
#[test]
fn idle_timeout_closes_an_idle_tunnel_and_spares_a_busy_one() {
    let dest = echo_backend();
    let port = free_port();
    let run = spawn_binary(&entry(port, dest.addr, "idle-timeout=1s"));
    let busy = thread::spawn(move || {
        let mut s = open_tunnel(port);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(2500) {
            thread::sleep(Duration::from_millis(300));
            round_trip(&mut s, b"b");
        }
        let quiet = Instant::now();
        let (_, _) = expect_closed(&mut s, Duration::from_secs(5), "busy tunnel once idle");
        quiet.elapsed()
    });
    let mut idle = open_tunnel(port);
    let quiet = Instant::now();
    expect_closed(&mut idle, Duration::from_secs(5), "idle tunnel");
    let after = quiet.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after <= Duration::from_secs(3),
        "idle tunnel closed {after:?} after its last byte (want 1 to 3 s)"
    );
    let busy_after = busy.join().expect("busy client");
    assert!(
        busy_after >= Duration::from_millis(900) && busy_after <= Duration::from_secs(3),
        "busy tunnel closed {busy_after:?} after its last byte (want 1 to 3 s)"
    );
    let lines = run.wait_log_count("reason=idle timeout", 2, IO_TIMEOUT);
    assert_eq!(lines.len(), 2, "{}", lines.join("\n"));
}

// ---------------------------------------------------------------------------
// Descriptors come back
// ---------------------------------------------------------------------------

/// After tunnels that end in every way (client EOF, client reset, upstream
/// closing first, upstream refused, proxy refusal) the process holds as
/// many descriptors as before them.
#[test]
fn descriptors_return_to_baseline_after_clients_close() {
    let echo = echo_backend();
    let closer = Backend::spawn(drop::<TcpStream>);
    let refused = free_port();
    let proxy = FakeProxy::scripted(Script::answer(
        &b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"[..],
        Then::Close,
    ));
    let (pe, pc, pr, pp) = (free_port(), free_port(), free_port(), free_port());
    let config = entry(pe, echo.addr, "")
        + &entry(pc, closer.addr, "")
        + &entry(pr, addr(refused), "")
        + &format!(
            "127.0.0.1:{pp} 127.0.0.1 {} 127.0.0.1 {}\n",
            echo.port(),
            proxy.port()
        );
    let run = spawn_binary(&config);
    let pid = run.pid();
    // Warm up, so lazily created things (threads, pipes) exist already.
    assert_echo(pe, 1, 1024);
    run.wait_log(" reason=", IO_TIMEOUT);
    let baseline = fd_count(pid);
    let fds_at_baseline = fd_list(pid);

    let mut held = Vec::new();
    for i in 0..5u64 {
        assert_echo(pe, 10 + i, 16 * 1024);
        let s = open_tunnel(pe);
        reset(s);
        let mut s = connect_port(pc);
        expect_closed(&mut s, IO_TIMEOUT, "tunnel to a closing upstream");
        let mut s = connect_port(pr);
        expect_closed(&mut s, IO_TIMEOUT, "tunnel to a refused upstream");
        let mut s = connect_port(pp);
        expect_closed(&mut s, IO_TIMEOUT, "tunnel refused by the proxy");
        held.push(open_tunnel(pe));
    }
    assert!(
        fd_count(pid) > baseline,
        "the open tunnels hold descriptors"
    );
    drop(held);
    // Regression (seen once in CI: 18 descriptors at baseline, 17 at the
    // end): env_logger flushed each line at once, so the warm-up's close line
    // could be read while its upstream socket was still being closed. Lines
    // now reach the file only at the next tick, after the tunnel is dropped.
    let ok = wait_until(Duration::from_secs(10), || fd_count(pid) == baseline);
    assert!(
        ok,
        "{} descriptors open 10 s after every client left, {baseline} before\n\
         --- before ---\n{fds_at_baseline}\n--- now ---\n{}\n{}",
        fd_count(pid),
        fd_list(pid),
        run.diagnostics()
    );
}

// ---------------------------------------------------------------------------
// keepalive
// ---------------------------------------------------------------------------

/// The keepalive timer of the socket `local` -> `remote` from
/// /proc/net/tcp: `None` when no such socket, else `(timer, seconds)` where
/// timer 2 means the keepalive timer is armed and seconds is its time left.
fn tcp_timer(local: SocketAddr, remote: SocketAddr) -> Option<(u32, f64)> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(_) => unreachable!("IPv4 only"),
    };
    let (want_local, want_remote) = (hex(local), hex(remote));
    let text = fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != want_local || f[2] != want_remote {
            return None;
        }
        // f[5] is "TR:WHEN": timer kind, then clock ticks until it fires.
        let (tr, when) = f[5].split_once(':')?;
        let tr = u32::from_str_radix(tr, 16).ok()?;
        let when = u64::from_str_radix(when, 16).ok()?;
        Some((tr, when as f64 / clock_ticks()))
    })
}

/// `keepalive=7s`: both sockets of a tunnel have their keepalive timer armed
/// at no more than 7 s (not the 60 s default); `keepalive=off`: no timer.
/// The client side cannot see the option, so the sockets are read from
/// /proc/net/tcp.
#[test]
fn keepalive_option_arms_the_timer_on_both_sockets() {
    let with = echo_backend();
    let without = echo_backend();
    let (pk, po) = (free_port(), free_port());
    let run = spawn_binary(
        &(entry(pk, with.addr, "keepalive=7s") + &entry(po, without.addr, "keepalive=off")),
    );
    for (port, dest, want) in [(pk, &with, true), (po, &without, false)] {
        let client = open_tunnel(port);
        let accepted = (addr(port), client.local_addr().expect("local_addr"));
        let mut upstream = None;
        // The upstream socket is the engine's connection to `dest`: the only
        // socket whose remote end is that backend's (unique) address.
        let text = fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
        let dest_hex = format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes([127, 0, 0, 1]),
            dest.port()
        );
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 && f[2] == dest_hex && f[3] == "01" {
                let local = f[1];
                let (ip, p) = local.split_once(':').expect("address:port");
                let port = u16::from_str_radix(p, 16).expect("port");
                assert_eq!(ip, "0100007F", "upstream socket on 127.0.0.1");
                upstream = Some((addr(port), dest.addr));
            }
        }
        let upstream = upstream.expect("the engine's upstream socket");
        for (what, (local, remote)) in [
            ("accepted client socket", accepted),
            ("upstream socket", upstream),
        ] {
            // Until the peer's (possibly delayed) ACK of the last bytes
            // arrives, the retransmit timer (kind 1) is the one shown.
            let mut found = None;
            wait_until(Duration::from_secs(5), || {
                found = tcp_timer(local, remote);
                !matches!(found, Some((1, _)))
            });
            let (timer, left) =
                found.unwrap_or_else(|| panic!("{what} {local} -> {remote} not in /proc/net/tcp"));
            if want {
                assert_eq!(
                    timer,
                    2,
                    "keepalive=7s: the {what} has its keepalive timer armed\n{}",
                    run.diagnostics()
                );
                assert!(
                    left > 0.0 && left <= 7.5,
                    "keepalive=7s: the {what}'s keepalive fires in {left} s"
                );
            } else {
                assert_eq!(
                    timer, 0,
                    "keepalive=off: the {what} has no timer (found kind {timer}, {left} s)"
                );
            }
        }
        drop(client);
    }
}
