//! Tests of the tunnel: tokens and reasons, then one state transition each
//! from fixtures over real loopback sockets.

mod basics {
    use super::super::*;
    use crate::metrics::Failure;

    #[test]
    fn token_round_trips() {
        for key in [0usize, 1, 2, 1000, usize::MAX >> 2] {
            for side in [CLIENT, UPSTREAM] {
                assert_eq!(decode(token(key, side)), (key, side));
            }
        }
    }

    #[test]
    fn reasons_read_as_in_the_log_contract() {
        assert_eq!(Reason::Eof.to_string(), "eof");
        assert_eq!(Reason::ClientReset.to_string(), "reset by client");
        assert_eq!(Reason::UpstreamReset.to_string(), "reset by upstream");
        assert_eq!(Reason::IdleTimeout.to_string(), "idle timeout");
        let failed = Failed {
            kind: Failure::Other,
            why: "x".into(),
            route_failed: true,
        };
        assert_eq!(Reason::Failed(failed).to_string(), "failed: x");
    }
}

/// One transition each, from fixtures already in a state, over real loopback
/// sockets and a real `Poll` (no reactor): the state machine on its own.
mod state_tests {
    use super::super::*;
    use crate::config::{Dest, Entry, HostPort, Options};
    use mio::Interest;
    use mio::{Events, Poll};
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::net::{TcpListener as StdListener, TcpStream as StdStream};

    /// Later than the default `connect-timeout` (10 s) from now.
    const PAST_CONNECT_TIMEOUT: Duration = Duration::from_secs(11);

    /// A tunnel with its client connected, registered on its own poll.
    struct Fixture {
        poll: Poll,
        events: Events,
        /// The test's end of the client connection.
        client_peer: StdStream,
        tunnel: Tunnel,
    }

    /// The entry of the config line `127.0.0.1:1 DEST [PROXY]`, parsed as
    /// the binary parses a file, with `options`.
    fn entry(dest: SocketAddr, proxy: Option<SocketAddr>, options: Options) -> Entry {
        let via = proxy.map_or(String::new(), |p| format!(" {} {}", p.ip(), p.port()));
        let text = format!("127.0.0.1:1 {} {}{via}\n", dest.ip(), dest.port());
        let mut no_files = |_: &std::path::Path| Err(std::io::Error::other("no files here"));
        let dir = std::path::Path::new(".");
        let mut config = crate::config::parse_str(&text, "test", dir, &mut no_files)
            .unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
        let mut entry = config.entries.remove(0);
        entry.options = options;
        entry
    }

    fn fixture(entry: Entry) -> Fixture {
        let poll = Poll::new().unwrap();
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let client_peer = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        client_peer
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (accepted, client_addr) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let mut client = TcpStream::from_std(accepted);
        poll.registry()
            .register(
                &mut client,
                token(0, CLIENT),
                Interest::READABLE | Interest::WRITABLE,
            )
            .unwrap();
        let route = Rc::new(Route::new(entry));
        let tunnel = Tunnel::new(1, (0, 0), route, client, client_addr, None, Instant::now());
        Fixture {
            poll,
            events: Events::with_capacity(64),
            client_peer,
            tunnel,
        }
    }

    impl Fixture {
        fn start(&mut self) -> Progress {
            let mut ctx = Ctx {
                registry: self.poll.registry(),
                key: 0,
                now: Instant::now(),
            };
            self.tunnel.start(&mut ctx)
        }

        /// Applies the deadlines as the reactor would at `at`.
        fn expire(&mut self, at: Instant) -> Progress {
            let mut ctx = Ctx {
                registry: self.poll.registry(),
                key: 0,
                now: at,
            };
            self.tunnel.expire(&mut ctx)
        }

        /// Polls, records and drives until `done` holds (5 s at most).
        fn run_until(&mut self, done: impl Fn(&Tunnel) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !done(&self.tunnel) {
                assert!(
                    Instant::now() < deadline,
                    "timed out in state {}",
                    self.tunnel.state()
                );
                self.poll
                    .poll(&mut self.events, Some(Duration::from_millis(50)))
                    .unwrap();
                for event in self.events.iter() {
                    let (_, side) = decode(event.token());
                    self.tunnel.record(side, event);
                }
                let mut ctx = Ctx {
                    registry: self.poll.registry(),
                    key: 0,
                    now: Instant::now(),
                };
                self.tunnel.drive(&mut ctx);
            }
        }
    }

    fn is(state: &'static str) -> impl Fn(&Tunnel) -> bool {
        move |t| t.state().to_string() == state
    }

    fn failure(t: &Tunnel) -> String {
        match t.state() {
            State::Closing(Reason::Failed(f)) => f.why.clone(),
            other => panic!("expected a failure, state is {other}"),
        }
    }

    fn refused_port() -> SocketAddr {
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    // ---- Accepting ----

    #[test]
    fn accepting_with_an_ip_first_hop_dials_at_once() {
        let dest = StdListener::bind("127.0.0.1:0").unwrap();
        let mut f = fixture(entry(dest.local_addr().unwrap(), None, Options::default()));
        assert!(f.tunnel.lookup().is_none());
        assert_eq!(f.start(), Progress::Idle);
        assert_eq!(f.tunnel.state().to_string(), "Dialing");
    }

    #[test]
    fn accepting_past_the_connect_timeout_fails_naming_the_lookup() {
        let mut e = entry(refused_port(), None, Options::default());
        let port = e.dest.fixed().expect("a fixed entry").port;
        e.dest = Dest::Fixed(HostPort {
            host: "name.invalid".into(),
            port,
        });
        let mut f = fixture(e);
        assert!(f.tunnel.lookup().is_some());
        let late = Instant::now() + PAST_CONNECT_TIMEOUT;
        assert_eq!(f.expire(late), Progress::Finished);
        assert!(failure(&f.tunnel).contains("while resolving name.invalid"));
    }

    // ---- Dialing ----

    #[test]
    fn dialing_a_refused_port_fails_naming_the_address() {
        let dest = refused_port();
        let mut f = fixture(entry(dest, None, Options::default()));
        f.start();
        f.run_until(is("Closing"));
        let why = failure(&f.tunnel);
        assert!(why.contains(&format!("connect to {dest}")), "{why}");
    }

    #[test]
    fn dialing_a_direct_destination_goes_straight_to_forwarding() {
        let dest = StdListener::bind("127.0.0.1:0").unwrap();
        let mut f = fixture(entry(dest.local_addr().unwrap(), None, Options::default()));
        f.start();
        f.run_until(is("Forwarding"));
    }

    #[test]
    fn dialing_a_proxy_moves_on_to_reading_its_answer() {
        let proxy = StdListener::bind("127.0.0.1:0").unwrap();
        let e = entry(
            refused_port(),
            Some(proxy.local_addr().unwrap()),
            Options::default(),
        );
        let mut f = fixture(e);
        f.start();
        // Connected, request written in one go: waiting for the answer.
        f.run_until(is("ReadingHeaders"));
        let (mut side, _) = proxy.accept().unwrap();
        side.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = vec![0; 256];
        let n = side.read(&mut got).unwrap();
        assert!(
            got[..n].starts_with(b"CONNECT 127.0.0.1:"),
            "{:?}",
            &got[..n]
        );
        assert!(got[..n].ends_with(b"\r\n\r\n"));
    }

    // ---- ReadingHeaders ----

    fn reading_headers(options: Options) -> (Fixture, StdStream) {
        let proxy = StdListener::bind("127.0.0.1:0").unwrap();
        let e = entry(refused_port(), Some(proxy.local_addr().unwrap()), options);
        let mut f = fixture(e);
        f.start();
        f.run_until(is("ReadingHeaders"));
        let (side, _) = proxy.accept().unwrap();
        (f, side)
    }

    #[test]
    fn reading_headers_a_2xx_forwards_what_followed_the_blank_line() {
        let (mut f, mut proxy) = reading_headers(Options::default());
        proxy
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\nhello")
            .unwrap();
        f.run_until(|t| t.bytes().1 == 5);
        assert_eq!(f.tunnel.state().to_string(), "Forwarding");
        let mut got = [0u8; 5];
        f.client_peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }

    #[test]
    fn reading_headers_a_refusal_fails_quoting_the_status_line() {
        let (mut f, mut proxy) = reading_headers(Options::default());
        proxy
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        f.run_until(is("Closing"));
        assert_eq!(
            failure(&f.tunnel),
            "proxy answered \"HTTP/1.1 403 Forbidden\""
        );
    }

    #[test]
    fn reading_headers_a_close_mid_head_fails() {
        let (mut f, mut proxy) = reading_headers(Options::default());
        proxy.write_all(b"HTTP/1.1 200 OK\r\nX-Partial: y").unwrap();
        drop(proxy);
        f.run_until(is("Closing"));
        assert!(failure(&f.tunnel).contains("in the middle of its answer"));
    }

    #[test]
    fn reading_headers_past_the_connect_timeout_fails() {
        let (mut f, _proxy) = reading_headers(Options::default());
        assert_eq!(f.expire(Instant::now()), Progress::Idle);
        let late = Instant::now() + PAST_CONNECT_TIMEOUT;
        assert_eq!(f.expire(late), Progress::Finished);
        assert!(failure(&f.tunnel).contains("waiting for the proxy's answer"));
    }

    // ---- Forwarding ----

    #[test]
    fn forwarding_idle_timeout_closes_with_its_reason() {
        let dest = StdListener::bind("127.0.0.1:0").unwrap();
        let options = Options {
            idle_timeout: Some(Duration::from_secs(1)),
            ..Options::default()
        };
        let mut f = fixture(entry(dest.local_addr().unwrap(), None, options));
        f.start();
        f.run_until(is("Forwarding"));
        let deadline = f
            .tunnel
            .deadline()
            .expect("an idle deadline while forwarding");
        assert_eq!(
            f.expire(deadline - Duration::from_millis(1)),
            Progress::Idle
        );
        assert_eq!(f.expire(deadline), Progress::Finished);
        assert!(matches!(
            f.tunnel.state(),
            State::Closing(Reason::IdleTimeout)
        ));
    }

    #[test]
    fn forwarding_client_half_close_reaches_the_destination_after_the_data() {
        let dest = StdListener::bind("127.0.0.1:0").unwrap();
        let mut f = fixture(entry(dest.local_addr().unwrap(), None, Options::default()));
        f.start();
        f.run_until(is("Forwarding"));
        let (mut backend, _) = dest.accept().unwrap();
        backend
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        f.client_peer.write_all(b"last words").unwrap();
        f.client_peer.shutdown(Shutdown::Write).unwrap();
        f.run_until(|t| t.client_to_upstream.dst_shut);
        let mut got = Vec::new();
        backend.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"last words");
        // The other direction still works after the half-close.
        backend.write_all(b"reply").unwrap();
        f.run_until(|t| t.bytes().1 == 5);
        assert_eq!(f.tunnel.state().to_string(), "Forwarding");
    }
}
