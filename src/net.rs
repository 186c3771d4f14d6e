//! Small socket helpers: binding listeners, tuning accepted and dialed
//! streams, and telling a peer's doing from ours in an `io::Error`.
//!
//! Never owns a socket beyond the call that creates it; never logs.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Listen backlog requested; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// Binds a non-blocking listener on `addr`.
///
/// `[::]:PORT` is IPv6 only (`IPV6_V6ONLY`), so `0.0.0.0:PORT` can be
/// configured beside it; `SO_REUSEADDR` lets a restart bind over `TIME_WAIT`.
///
/// # Errors
/// Whatever `socket`, `bind` or `listen` report (address in use, permission).
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Sets `TCP_NODELAY` and, when asked, TCP keepalive with `keepalive` as the
/// idle time before the first probe, on a socket we dialed.
///
/// # Errors
/// The first `setsockopt` that fails (rare: the socket is already dead).
pub fn tune(stream: &TcpStream, keepalive: Option<Duration>) -> io::Result<()> {
    let socket = SockRef::from(stream);
    socket.set_nodelay(true)?;
    if let Some(idle) = keepalive {
        socket.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))?;
    }
    Ok(())
}

/// Sets on a listener the options its accepted sockets should have:
/// `TCP_NODELAY` and keepalive (on with `keepalive` as idle time, or off).
/// Linux copies them into every socket `accept` returns (the child socket is
/// a clone of the listener), which saves three `setsockopt` calls per
/// accepted connection; `tests/limits.rs` checks the accepted side's timer.
///
/// # Errors
/// The first `setsockopt` that fails.
pub fn tune_listener(listener: &TcpListener, keepalive: Option<Duration>) -> io::Result<()> {
    let socket = SockRef::from(listener);
    socket.set_nodelay(true)?;
    match keepalive {
        Some(idle) => socket.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle)),
        None => socket.set_keepalive(false),
    }
}

/// Makes the next close of `stream` send a reset instead of a FIN, so a
/// reset on one side of a tunnel reaches the other side as a reset rather
/// than as a clean end of stream that would hide lost bytes.
pub fn reset_on_close(stream: &TcpStream) {
    // Best effort: failing here only means the peer sees a FIN.
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// A socket for a tunnel's upstream connection, made before its client is
/// accepted (SPEC "Limits and faults": a client is accepted only when a
/// descriptor is there for its upstream connection, so a client is never
/// accepted only to be dropped when its dial runs out of descriptors).
/// Non-blocking, close-on-exec, not connected yet.
#[derive(Debug)]
pub struct Reserved {
    socket: Socket,
    v6: bool,
}

impl Reserved {
    /// Makes a TCP socket of the IPv6 family when `v6`, else IPv4.
    ///
    /// # Errors
    /// What `socket(2)` says: EMFILE/ENFILE when out of descriptors.
    pub fn new(v6: bool) -> io::Result<Reserved> {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let socket = crate::sys::stream_socket(domain)?;
        Ok(Reserved { socket, v6 })
    }

    /// The family this socket can connect to.
    pub fn is_v6(&self) -> bool {
        self.v6
    }
}

/// Starts a non-blocking connect to `addr`, on the reserved socket when its
/// family fits (it is taken), else on a new one (a reserve of the other
/// family is closed first, so the descriptor it frees is the one reused).
/// Completion is reported by readiness, as for `mio::net::TcpStream::connect`.
///
/// # Errors
/// Making the socket (EMFILE), or an immediate failure of `connect(2)`.
pub fn dial(reserve: &mut Option<Reserved>, addr: SocketAddr) -> io::Result<TcpStream> {
    let reserved = match reserve.take() {
        Some(r) if r.v6 == addr.is_ipv6() => r,
        other => {
            drop(other);
            Reserved::new(addr.is_ipv6())?
        }
    };
    match reserved.socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if crate::sys::connect_in_progress(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(reserved.socket.into()))
}

/// The error pending on `stream` (`SO_ERROR`, cleared by reading it), or
/// `None`. After an error or hang-up hint, this tells a reset from a FIN.
pub fn pending_error(stream: &TcpStream) -> Option<io::Error> {
    match stream.take_error() {
        Ok(e) => e,
        Err(e) => Some(e),
    }
}

/// True when the error is the peer's doing: it reset or vanished.
pub fn is_peer_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
    )
}

/// True for accept errors that concern one queued connection only (skip it).
pub fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::PermissionDenied
    )
}

/// Formats a duration for logs: `850us`, `12.3ms`, `1.52s`, `3m04s`.
pub fn fmt_duration(d: Duration) -> String {
    Dur(d).to_string()
}

/// A duration as log lines show it (see [`fmt_duration`]), written without
/// allocating: two of them in every tunnel's log lines.
pub struct Dur(pub Duration);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let micros = d.as_micros();
        if micros < 1_000 {
            write!(f, "{micros}us")
        } else if micros < 999_950 {
            // Tenths of a millisecond, rounded half up.
            let tenths = (micros + 50) / 100;
            write!(f, "{}.{}ms", tenths / 10, tenths % 10)
        } else if d.as_secs() < 60 {
            // Hundredths of a second, rounded half up.
            let hundredths = (micros + 5_000) / 10_000;
            write!(f, "{}.{:02}s", hundredths / 100, hundredths % 100)
        } else {
            let s = d.as_secs();
            if s < 3600 {
                write!(f, "{}m{:02}s", s / 60, s % 60)
            } else {
                write!(f, "{}h{:02}m{:02}s", s / 3600, (s % 3600) / 60, s % 60)
            }
        }
    }
}

/// Writes `v` in decimal into `buf` at `at`; returns the end.
fn put_decimal(buf: &mut [u8], at: usize, v: u32) -> usize {
    let mut digits = [0u8; 10];
    let (mut n, mut v) = (0, v);
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for (i, d) in digits[..n].iter().rev().enumerate() {
        buf[at + i] = *d;
    }
    at + n
}

/// A socket address as `Display` shows it, written in one piece for IPv4
/// (std's formatting of an IPv4 address goes through a padding-aware
/// path digit group by digit group; it was a sixth of the reactor's user
/// time under a connection flood).
pub struct Addr(pub SocketAddr);

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let SocketAddr::V4(v4) = self.0 else {
            return self.0.fmt(f);
        };
        let mut buf = [0u8; 21];
        let mut at = 0;
        for (i, octet) in v4.ip().octets().iter().enumerate() {
            at = put_decimal(&mut buf, at, u32::from(*octet));
            buf[at] = if i == 3 { b':' } else { b'.' };
            at += 1;
        }
        at = put_decimal(&mut buf, at, u32::from(v4.port()));
        // Only ASCII digits, dots and a colon were written.
        f.write_str(std::str::from_utf8(&buf[..at]).map_err(|_| fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_like_the_float_formatting_they_replace() {
        for micros in (0..2_000_000u64).step_by(7).chain(59_999_000..60_001_000) {
            let d = Duration::from_micros(micros);
            let float = if micros < 1_000 {
                format!("{micros}us")
            } else if micros < 1_000_000 {
                format!("{:.1}ms", micros as f64 / 1_000.0)
            } else if micros < 60_000_000 {
                format!("{:.2}s", d.as_secs_f64())
            } else {
                continue;
            };
            let ours = fmt_duration(d);
            // Ties (x.x5) may round either way in binary floating point.
            if ours != float {
                let tie = micros % 100 == 50 || (micros >= 1_000_000 && micros % 10_000 == 5_000);
                let edge = (999_950..1_000_000).contains(&micros);
                assert!(tie || edge, "{micros}us: {ours} vs {float}");
            }
        }
        assert_eq!(fmt_duration(Duration::from_micros(999_949)), "999.9ms");
        assert_eq!(fmt_duration(Duration::from_micros(999_950)), "1.00s");
        assert_eq!(fmt_duration(Duration::from_micros(59_995_000)), "60.00s");
    }

    #[test]
    fn addresses_read_as_std_writes_them() {
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:22",
            "255.255.255.255:65535",
            "10.0.200.9:8080",
            "[::1]:443",
            "[fe80::1%2]:1",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(Addr(a).to_string(), a.to_string());
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_micros(850)), "850us");
        assert_eq!(fmt_duration(Duration::from_micros(12_345)), "12.3ms");
        assert_eq!(fmt_duration(Duration::from_millis(1_520)), "1.52s");
        assert_eq!(fmt_duration(Duration::from_secs(184)), "3m04s");
        assert_eq!(fmt_duration(Duration::from_secs(3_725)), "1h02m05s");
    }

    #[test]
    fn v6_listener_is_v6_only_so_v4_can_share_the_port() {
        let v6 = match bind_listener("[::1]:0".parse().unwrap()) {
            Ok(l) => l,
            Err(_) => return, // no IPv6 loopback on this host
        };
        let port = v6.local_addr().unwrap().port();
        let v4 = bind_listener(SocketAddr::from(([127, 0, 0, 1], port)));
        assert!(v4.is_ok(), "v4 bind beside v6-only failed: {v4:?}");
    }

    #[test]
    fn accepted_sockets_inherit_the_listeners_options() {
        let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        tune_listener(&listener, Some(Duration::from_secs(7))).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let accepted = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        let s = SockRef::from(&accepted);
        assert!(s.nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.keepalive_time().unwrap(), Duration::from_secs(7));
        tune_listener(&listener, None).unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let accepted = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("accept: {e}"),
            }
        };
        assert!(!SockRef::from(&accepted).keepalive().unwrap());
    }

    #[test]
    fn second_bind_on_same_address_fails() {
        let a = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = bind_listener(a.local_addr().unwrap());
        assert_eq!(b.unwrap_err().kind(), io::ErrorKind::AddrInUse);
    }
}
