//! One tunnel: the accepted client socket, the upstream socket (the proxy,
//! or the destination when there is none), two rings and the state machine
//! that takes them from an accepted connection to a finished one.
//!
//! Owns: its sockets, rings, counters and state. Never owns the slab, the
//! poll or the timers: it gets the `mio::Registry` and its slab key as
//! arguments, and reports what the reactor should do as a [`Progress`].
//!
//! ```text
//!                 first hop is a name           all addresses failed,
//!   accept ──► Accepting ──(resolved)──┐        timeout, resolve error
//!                 │ first hop is an IP  ▼        ┌──────────────────────►  Closing(Failed)
//!                 └──────────────► Dialing ──────┤
//!                                    │ connected │ (direct entry)
//!                       (proxied)    ▼           └──────────────┐
//!                                SentConnect ──(request written)─┐
//!                                                                ▼
//!         non-2xx, bad head, close, timeout ◄──── ReadingHeaders
//!                                                  │ 2xx: bytes after the
//!                                                  ▼ blank line stay queued
//!                                              Forwarding ◄─────┘
//!                                                  │ both directions shut,
//!                                                  ▼ reset, error, idle
//!                                               Closing(reason)
//! ```
//!
//! Invariants: no client byte is read before Forwarding (so none can reach
//! the proxy ahead of the CONNECT request); readiness bits are set by events
//! and cleared only by `WouldBlock` (mio is edge-triggered); a direction's
//! destination is shut for writing only once its ring is empty after its
//! source hit EOF, so no byte is ever dropped on a half-close.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::config::{AuthScheme, Entry, HostPort};
use crate::connect;
use crate::net;
use crate::ring::Ring;

/// Bytes one tunnel may move in one drive before yielding to the others.
const BUDGET_BYTES: usize = 1 << 20;

/// Side 0 of a tunnel's token: the accepted client socket (and listeners).
pub const CLIENT: usize = 0;
/// Side 1 of a tunnel's token: the upstream socket.
pub const UPSTREAM: usize = 1;

/// Encodes a slab key and a side into a poll token.
pub fn token(key: usize, side: usize) -> Token {
    debug_assert!(side <= 1, "a token side is 0 or 1");
    Token(key << 1 | side)
}

/// Decodes a poll token into a slab key and a side.
pub fn decode(token: Token) -> (usize, usize) {
    (token.0 >> 1, token.0 & 1)
}

/// What a tunnel needs of its entry, frozen when it is accepted: a reload
/// replaces the listener's route, never a running tunnel's.
#[derive(Debug)]
pub struct Route {
    /// The entry as configured.
    pub entry: Entry,
    /// The first hop: the proxy, or the destination for a direct entry.
    pub first_hop: HostPort,
    /// The first hop's address when it is an IP literal (no resolution).
    pub first_hop_ip: Option<SocketAddr>,
    /// The whole CONNECT request, for proxied entries.
    pub request: Option<Vec<u8>>,
}

impl Route {
    /// Prepares the route of `entry`: first hop and CONNECT request.
    pub fn new(entry: Entry) -> Route {
        let (first_hop, request) = match &entry.proxy {
            Some(proxy) => {
                // Basic goes pre-emptively, as every peer does. Digest and
                // NTLM are not spoken yet: sending Basic to a proxy the user
                // said wants NTLM would put the password on the wire in clear.
                let basic = matches!(proxy.auth_scheme, AuthScheme::Auto | AuthScheme::Basic);
                let authorization = proxy
                    .credentials
                    .as_ref()
                    .filter(|_| basic)
                    .map(|c| connect::basic_authorization(&c.user, &c.password));
                let request = connect::build_request(
                    &entry.dest.authority(),
                    authorization.as_deref(),
                    &proxy.headers,
                );
                (proxy.addr.clone(), Some(request))
            }
            None => (entry.dest.clone(), None),
        };
        let first_hop_ip = first_hop
            .host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, first_hop.port));
        Route {
            entry,
            first_hop,
            first_hop_ip,
            request,
        }
    }

    /// `dest` or `dest via proxy`, as in log lines.
    pub fn describe(&self) -> String {
        match &self.entry.proxy {
            Some(p) => format!("{} via {}", self.entry.dest.authority(), p.addr.authority()),
            None => self.entry.dest.authority(),
        }
    }
}

/// Why a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Both directions ended with a FIN and every byte was delivered.
    Eof,
    /// The client reset the connection.
    ClientReset,
    /// The upstream reset the connection.
    UpstreamReset,
    /// No byte in either direction for `idle-timeout`.
    IdleTimeout,
    /// A local or unexpected socket error.
    Error(String),
    /// The process is stopping.
    Shutdown,
    /// The tunnel never reached Forwarding; the text says why.
    Failed(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Eof => f.write_str("eof"),
            Reason::ClientReset => f.write_str("reset by client"),
            Reason::UpstreamReset => f.write_str("reset by upstream"),
            Reason::IdleTimeout => f.write_str("idle timeout"),
            Reason::Error(e) => write!(f, "error: {e}"),
            Reason::Shutdown => f.write_str("shutdown"),
            Reason::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// The tunnel's state; each variant carries only what exists in it.
#[derive(Debug)]
pub enum State {
    /// Accepted; waiting for the first hop's addresses from the resolver.
    Accepting { deadline: Instant },
    /// Connecting to `addrs[next - 1]`; the rest are tried in turn.
    Dialing {
        deadline: Instant,
        addrs: Vec<SocketAddr>,
        next: usize,
    },
    /// Writing the CONNECT request; `written` bytes of it are out.
    SentConnect { deadline: Instant, written: usize },
    /// Waiting for the proxy's answer head.
    ReadingHeaders { deadline: Instant },
    /// Moving bytes both ways.
    Forwarding,
    /// Done; the reactor drops the tunnel at the end of the tick.
    Closing(Reason),
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Accepting { .. } => "Accepting",
            State::Dialing { .. } => "Dialing",
            State::SentConnect { .. } => "SentConnect",
            State::ReadingHeaders { .. } => "ReadingHeaders",
            State::Forwarding => "Forwarding",
            State::Closing(_) => "Closing",
        })
    }
}

/// What the reactor should do with a tunnel after driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing more to do until the next event or deadline.
    Idle,
    /// Out of budget with work left: drive again without waiting.
    MoreWork,
    /// In `Closing`: drop it at the end of the tick.
    Finished,
}

/// A socket with the readiness mio last reported for it.
#[derive(Debug)]
struct Endpoint {
    stream: TcpStream,
    readable: bool,
    writable: bool,
    /// mio reported the read half closed (FIN seen); sticky. It keeps a
    /// short read from clearing `readable` (the EOF must still be read) and
    /// tells ReadingHeaders that a partial head will never complete (`peek`
    /// never reports EOF while bytes are buffered).
    read_closed: bool,
    /// mio reported an error or a hang-up: the pending socket error must be
    /// looked at even when neither a read nor a write is wanted (a reset on
    /// a side whose ring is full and which has nothing to be sent would go
    /// unnoticed otherwise). Cleared when looked at.
    fault_hint: bool,
}

impl Endpoint {
    fn new(stream: TcpStream) -> Endpoint {
        Endpoint {
            stream,
            readable: false,
            writable: false,
            read_closed: false,
            fault_hint: false,
        }
    }
}

/// One direction: its ring and how far its half-close has got.
#[derive(Debug)]
struct Flow {
    ring: Ring,
    /// The source returned EOF.
    src_eof: bool,
    /// The destination's write half is shut down.
    dst_shut: bool,
    /// Bytes delivered to the destination.
    bytes: u64,
}

impl Flow {
    fn new(capacity: usize) -> Flow {
        Flow {
            ring: Ring::new(capacity),
            src_eof: false,
            dst_shut: false,
            bytes: 0,
        }
    }
}

/// Which socket a fault came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Upstream,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        })
    }
}

/// What a tunnel gets from the reactor when it is driven.
pub struct Ctx<'a> {
    pub registry: &'a Registry,
    pub key: usize,
    pub now: Instant,
    /// Scratch space of at least `connect::MAX_HEAD + 1` bytes.
    pub scratch: &'a mut [u8],
}

/// One tunnel. See the module docs for the state diagram.
#[derive(Debug)]
pub struct Tunnel {
    /// Process-wide tunnel id, as in log lines.
    pub id: u64,
    /// The listener's slab key and id, for `max-conns` accounting.
    pub listener: (usize, u64),
    /// The listener's address as configured.
    pub listen: SocketAddr,
    /// The route frozen at accept.
    pub route: Rc<Route>,
    client_addr: SocketAddr,
    client: Endpoint,
    upstream: Option<Endpoint>,
    client_to_upstream: Flow,
    upstream_to_client: Flow,
    state: State,
    accepted: Instant,
    connected: Option<Instant>,
    forwarding_since: Option<Instant>,
    last_activity: Instant,
    max_idle: Duration,
    first_closed: Option<Side>,
    /// The upstream socket, made before the client was accepted; the dial
    /// uses it.
    reserve: Option<net::Reserved>,
    /// Set while the tunnel is on the reactor's list of tunnels to drive.
    pub queued: bool,
}

impl Tunnel {
    /// Creates a tunnel for an accepted (and registered) client socket.
    pub fn new(
        id: u64,
        listener: (usize, u64),
        route: Rc<Route>,
        client: TcpStream,
        client_addr: SocketAddr,
        reserve: Option<net::Reserved>,
        now: Instant,
    ) -> Tunnel {
        let capacity = route.entry.options.buffer;
        let deadline = now + route.entry.options.connect_timeout;
        Tunnel {
            id,
            listener,
            listen: route.entry.listen,
            route,
            client_addr,
            client: Endpoint::new(client),
            upstream: None,
            client_to_upstream: Flow::new(capacity),
            upstream_to_client: Flow::new(capacity),
            state: State::Accepting { deadline },
            accepted: now,
            connected: None,
            forwarding_since: None,
            last_activity: now,
            max_idle: Duration::ZERO,
            first_closed: None,
            reserve,
            queued: false,
        }
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Bytes delivered client → destination and destination → client.
    pub fn bytes(&self) -> (u64, u64) {
        (self.client_to_upstream.bytes, self.upstream_to_client.bytes)
    }

    /// When the tunnel was accepted.
    pub fn accepted(&self) -> Instant {
        self.accepted
    }

    /// The log line prefix: `tunnel 17 LISTEN <- CLIENT -> DEST [via PROXY]`.
    pub fn prefix(&self) -> Prefix<'_> {
        Prefix(self)
    }

    /// The first hop still needs resolving (the reactor submits the lookup).
    pub fn needs_resolution(&self) -> bool {
        matches!(self.state, State::Accepting { .. }) && self.route.first_hop_ip.is_none()
    }

    fn set_state(&mut self, next: State) {
        debug!("{}: {} => {}", self.prefix(), self.state, next);
        self.state = next;
    }

    fn fail(&mut self, why: String) -> Progress {
        self.set_state(State::Closing(Reason::Failed(why)));
        Progress::Finished
    }

    /// Records readiness reported by mio for one of the two sockets.
    pub fn record(&mut self, side: usize, event: &mio::event::Event) {
        let endpoint = if side == CLIENT {
            Some(&mut self.client)
        } else {
            self.upstream.as_mut()
        };
        // A stale event for an upstream socket already dropped finds None.
        if let Some(e) = endpoint {
            // Hints (read/write closed, error) only mean "try now": the read
            // or write itself tells what happened, and buffered bytes stay.
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                e.readable = true;
            }
            if event.is_read_closed() {
                e.read_closed = true;
            }
            if event.is_writable() || event.is_write_closed() || event.is_error() {
                e.writable = true;
            }
            if event.is_error() || (event.is_read_closed() && event.is_write_closed()) {
                e.fault_hint = true;
            }
        }
    }

    /// The first hop's addresses arrived (or resolution failed).
    pub fn resolved(&mut self, answer: io::Result<Vec<SocketAddr>>, ctx: &mut Ctx<'_>) -> Progress {
        let State::Accepting { deadline } = self.state else {
            return Progress::Idle;
        };
        match answer {
            Ok(addrs) => self.dial(addrs, deadline, ctx),
            Err(e) => self.fail(format!("cannot resolve {}: {e}", self.route.first_hop.host)),
        }
    }

    /// Starts a tunnel whose first hop is an IP literal.
    pub fn start(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        match (&self.state, self.route.first_hop_ip) {
            (State::Accepting { deadline }, Some(ip)) => {
                let deadline = *deadline;
                self.dial(vec![ip], deadline, ctx)
            }
            _ => Progress::Idle,
        }
    }

    /// Dials the next address of `addrs` from `next` on; fails when none is left.
    fn dial(&mut self, addrs: Vec<SocketAddr>, deadline: Instant, ctx: &mut Ctx<'_>) -> Progress {
        self.dial_from(addrs, 0, deadline, None, ctx)
    }

    fn dial_from(
        &mut self,
        addrs: Vec<SocketAddr>,
        mut next: usize,
        deadline: Instant,
        mut last_error: Option<String>,
        ctx: &mut Ctx<'_>,
    ) -> Progress {
        // A socket that failed to connect: closing it also takes it out of
        // the poll (see `close`).
        self.upstream = None;
        while let Some(&addr) = addrs.get(next) {
            next += 1;
            match net::dial(&mut self.reserve, addr) {
                Ok(mut stream) => {
                    if let Err(e) = ctx.registry.register(
                        &mut stream,
                        token(ctx.key, UPSTREAM),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        last_error = Some(format!("connect to {addr}: register: {e}"));
                        continue;
                    }
                    if let Err(e) = net::tune(&stream, self.route.entry.options.keepalive) {
                        debug!("{}: socket options on upstream: {e}", self.prefix());
                    }
                    self.upstream = Some(Endpoint::new(stream));
                    self.set_state(State::Dialing {
                        deadline,
                        addrs,
                        next,
                    });
                    return Progress::Idle;
                }
                Err(e) => last_error = Some(format!("connect to {addr}: {e}")),
            }
        }
        let why = last_error.unwrap_or_else(|| "no address to connect to".to_string());
        self.fail(why)
    }

    /// Prepares both sockets for closing, which happens when the tunnel is
    /// dropped. A reset on one side is passed on as a reset to the other.
    ///
    /// No explicit deregistration (a departure from the style guide, worth
    /// two `epoll_ctl` calls per tunnel): closing a socket removes it from
    /// the epoll set, pending events included, since our sockets are never
    /// duplicated (epoll(7), "Will closing a file descriptor cause it to be
    /// removed from all epoll interest lists?"). The reactor drops a tunnel
    /// only at the end of a tick, so no event of this batch refers to it.
    pub fn close(&mut self) {
        match self.state {
            State::Closing(Reason::ClientReset) => {
                if let Some(u) = &self.upstream {
                    net::reset_on_close(&u.stream);
                }
            }
            State::Closing(Reason::UpstreamReset) => net::reset_on_close(&self.client.stream),
            _ => {}
        }
    }

    /// Moves the tunnel as far as readiness allows.
    pub fn drive(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        if let Some(fault) = self.take_fault() {
            return self.end_with(fault);
        }
        loop {
            let before = std::mem::discriminant(&self.state);
            let progress = match self.state {
                State::Accepting { .. } => Progress::Idle,
                State::Dialing { .. } => self.check_connected(ctx),
                State::SentConnect { .. } => self.send_request(ctx),
                State::ReadingHeaders { .. } => self.read_answer(ctx),
                State::Forwarding => self.forward(ctx.now),
                State::Closing(_) => Progress::Finished,
            };
            // A transition may make the next state's work possible at once
            // (connected → write the request → read an answer already there).
            if progress != Progress::Idle || std::mem::discriminant(&self.state) == before {
                return progress;
            }
        }
    }

    /// Dialing: mio's "connect completion" recipe (take_error, then
    /// peer_addr; NotConnected means not yet).
    fn check_connected(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        let Some(up) = self.upstream.as_mut() else {
            return Progress::Idle;
        };
        if !(up.readable || up.writable) {
            return Progress::Idle;
        }
        let failure = match up.stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match up.stream.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    // Spurious: the completion will come as a new edge.
                    up.readable = false;
                    up.writable = false;
                    return Progress::Idle;
                }
                Err(e) => Some(e),
            },
        };
        let State::Dialing { deadline, next, .. } = &self.state else {
            return Progress::Idle;
        };
        let (deadline, next) = (*deadline, *next);
        if let Some(e) = failure {
            let State::Dialing { addrs, .. } =
                std::mem::replace(&mut self.state, State::Accepting { deadline })
            else {
                return Progress::Idle;
            };
            let addr = addrs.get(next - 1).copied();
            let why = match addr {
                Some(a) => format!("connect to {a}: {e}"),
                None => format!("connect: {e}"),
            };
            debug!("{}: {why}", self.prefix());
            return self.dial_from(addrs, next, deadline, Some(why), ctx);
        }
        self.connected = Some(ctx.now);
        if self.route.request.is_some() {
            self.set_state(State::SentConnect {
                deadline,
                written: 0,
            });
        } else {
            self.start_forwarding(ctx.now);
        }
        Progress::Idle
    }

    fn send_request(&mut self, _ctx: &mut Ctx<'_>) -> Progress {
        let State::SentConnect { deadline, written } = self.state else {
            return Progress::Idle;
        };
        let Some(up) = self.upstream.as_mut() else {
            return Progress::Idle;
        };
        let request = self.route.request.as_deref().unwrap_or_default();
        let mut done = written;
        let mut error = None;
        while done < request.len() && up.writable {
            match up.stream.write(&request[done..]) {
                Ok(0) => {
                    error = Some("proxy accepts no more bytes (write returned 0)".to_string());
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => up.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(format!("sending CONNECT to the proxy: {e}"));
                    break;
                }
            }
        }
        if let Some(why) = error {
            return self.fail(why);
        }
        if done == request.len() {
            self.set_state(State::ReadingHeaders { deadline });
        } else {
            self.state = State::SentConnect {
                deadline,
                written: done,
            };
        }
        Progress::Idle
    }

    /// ReadingHeaders: peek at what the proxy sent, parse it, and consume
    /// exactly the head. Bytes after the blank line stay in the socket and
    /// become the first bytes read in Forwarding, so none can be lost
    /// whatever the ring's size.
    fn read_answer(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        let Some(up) = self.upstream.as_mut() else {
            return Progress::Idle;
        };
        if !up.readable {
            return Progress::Idle;
        }
        let window = &mut ctx.scratch[..connect::MAX_HEAD + 1];
        let n = match up.stream.peek(window) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                up.readable = false;
                return Progress::Idle;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Progress::Idle,
            Err(e) => return self.fail(format!("reading the proxy's answer: {e}")),
        };
        if n == 0 {
            return self.fail("proxy closed the connection before answering".into());
        }
        let head = match connect::parse_answer(&window[..n]) {
            Ok(connect::Answer::Complete(head)) => head,
            Ok(connect::Answer::Partial) if n > connect::MAX_HEAD => {
                return self.fail(format!(
                    "proxy answer head over {} bytes",
                    connect::MAX_HEAD
                ))
            }
            Ok(connect::Answer::Partial) if up.read_closed => {
                return self.fail("proxy closed the connection in the middle of its answer".into())
            }
            Ok(connect::Answer::Partial) => {
                // peek does not drain, so no WouldBlock will come: the next
                // bytes from the proxy raise a new readiness edge.
                up.readable = false;
                return Progress::Idle;
            }
            Err(connect::ParseError::TooLarge) => {
                return self.fail(format!(
                    "proxy answer head over {} bytes",
                    connect::MAX_HEAD
                ))
            }
            Err(connect::ParseError::Malformed(why)) => {
                return self.fail(format!("bad proxy answer: {why}"))
            }
        };
        if !connect::is_success(head.status) {
            let why = self.refusal(&head);
            warn!("{}: failed: {why}", self.prefix());
            self.set_state(State::Closing(Reason::Failed(why)));
            return Progress::Finished;
        }
        // Consume exactly the head: peek showed it is all there.
        let Some(up) = self.upstream.as_mut() else {
            return Progress::Idle;
        };
        let mut left = head.head_len;
        while left > 0 {
            match up.stream.read(&mut ctx.scratch[..left]) {
                Ok(0) => return self.fail("proxy closed the connection during its answer".into()),
                Ok(k) => left -= k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(format!("reading the proxy's answer: {e}")),
            }
        }
        debug!("{}: proxy answered \"{}\"", self.prefix(), head.status_line);
        self.start_forwarding(ctx.now);
        Progress::Idle
    }

    /// The log text for a proxy's non-2xx answer. Never holds credentials.
    fn refusal(&self, head: &connect::Head) -> String {
        let mut why = format!("proxy answered \"{}\"", head.status_line);
        if head.status == 407 {
            let offered = if head.proxy_authenticate.is_empty() {
                "none named".to_string()
            } else {
                head.proxy_authenticate.join(", ")
            };
            let sent = self
                .route
                .entry
                .proxy
                .as_ref()
                .and_then(|p| p.credentials.as_ref())
                .is_some();
            if sent {
                why.push_str(&format!(
                    ": the proxy refused the credentials (scheme Basic; offered: {offered})"
                ));
            } else {
                why.push_str(&format!(
                    ": the proxy wants credentials (offered: {offered})"
                ));
            }
        }
        why
    }

    fn start_forwarding(&mut self, now: Instant) {
        self.forwarding_since = Some(now);
        self.last_activity = now;
        self.set_state(State::Forwarding);
        let dial = self.connected.unwrap_or(now) - self.accepted;
        let handshake = now - self.connected.unwrap_or(now);
        info!(
            "{}: open, dial {}, handshake {}",
            self.prefix(),
            net::fmt_duration(dial),
            net::fmt_duration(handshake)
        );
    }

    /// Forwarding: pump both directions until nothing more can move, the
    /// budget is spent, or the tunnel ends.
    fn forward(&mut self, now: Instant) -> Progress {
        let Some(upstream) = self.upstream.as_mut() else {
            return self.fail("forwarding without an upstream socket".into());
        };
        let mut budget = BUDGET_BYTES;
        let mut moved_any = false;
        let result = loop {
            let a = pump(
                &mut self.client,
                upstream,
                &mut self.client_to_upstream,
                &mut budget,
                Side::Client,
                self.upstream_to_client.dst_shut,
            );
            if let Err(f) = a {
                break Err(f);
            }
            let b = pump(
                upstream,
                &mut self.client,
                &mut self.upstream_to_client,
                &mut budget,
                Side::Upstream,
                self.client_to_upstream.dst_shut,
            );
            match (a, b) {
                (Err(f), _) | (_, Err(f)) => break Err(f),
                (Ok(false), Ok(false)) => break Ok(()),
                _ => moved_any = true,
            }
            if budget == 0 {
                break Ok(());
            }
        };
        if moved_any {
            let gap = now.saturating_duration_since(self.last_activity);
            self.max_idle = self.max_idle.max(gap);
            self.last_activity = now;
        }
        for (flow, side) in [
            (&self.client_to_upstream, Side::Client),
            (&self.upstream_to_client, Side::Upstream),
        ] {
            if flow.src_eof && self.first_closed.is_none() {
                self.first_closed = Some(side);
            }
        }
        match result {
            Err(fault) => self.end_with(fault),
            Ok(()) if self.client_to_upstream.dst_shut && self.upstream_to_client.dst_shut => {
                self.set_state(State::Closing(Reason::Eof));
                Progress::Finished
            }
            Ok(()) if budget == 0 => Progress::MoreWork,
            Ok(()) => Progress::Idle,
        }
    }

    /// The error pending on a socket that had an error or hang-up hint, if
    /// any. The upstream is left alone while it is being dialed, since
    /// there an error is a failed dial (`check_connected` takes it).
    fn take_fault(&mut self) -> Option<Fault> {
        if std::mem::take(&mut self.client.fault_hint) {
            if let Some(error) = net::pending_error(&self.client.stream) {
                return Some(Fault {
                    side: Side::Client,
                    error,
                });
            }
        }
        if matches!(self.state, State::Accepting { .. } | State::Dialing { .. }) {
            return None;
        }
        let up = self.upstream.as_mut()?;
        if std::mem::take(&mut up.fault_hint) {
            if let Some(error) = net::pending_error(&up.stream) {
                return Some(Fault {
                    side: Side::Upstream,
                    error,
                });
            }
        }
        None
    }

    /// Ends the tunnel on a socket error: both sides close, a reset passed
    /// on as a reset (see [`Tunnel::close`]); the bytes still buffered for
    /// a peer that reset can never be delivered.
    fn end_with(&mut self, fault: Fault) -> Progress {
        if self.first_closed.is_none() {
            self.first_closed = Some(fault.side);
        }
        let reason = match (fault.side, net::is_peer_reset(&fault.error)) {
            (Side::Client, true) => Reason::ClientReset,
            (Side::Upstream, true) => Reason::UpstreamReset,
            (side, false) => Reason::Error(format!("{side}: {}", fault.error)),
        };
        self.set_state(State::Closing(reason));
        Progress::Finished
    }

    /// The instant at which [`Tunnel::expire`] has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Accepting { deadline }
            | State::Dialing { deadline, .. }
            | State::SentConnect { deadline, .. }
            | State::ReadingHeaders { deadline } => Some(*deadline),
            State::Forwarding => self
                .route
                .entry
                .options
                .idle_timeout
                .map(|t| self.last_activity + t),
            State::Closing(_) => None,
        }
    }

    /// Applies a passed deadline: connect-timeout or idle-timeout.
    pub fn expire(&mut self, now: Instant) -> Progress {
        match self.deadline() {
            Some(d) if d <= now => {}
            _ => return Progress::Idle,
        }
        let timeout = net::fmt_duration(self.route.entry.options.connect_timeout);
        let doing = match &self.state {
            State::Accepting { .. } => format!("resolving {}", self.route.first_hop.host),
            State::Dialing { addrs, next, .. } => match addrs.get(next.wrapping_sub(1)) {
                Some(a) => format!("dialing {a}"),
                None => "dialing".to_string(),
            },
            State::SentConnect { .. } => "sending the CONNECT request".to_string(),
            State::ReadingHeaders { .. } => "waiting for the proxy's answer".to_string(),
            State::Forwarding => {
                let gap = now.saturating_duration_since(self.last_activity);
                self.max_idle = self.max_idle.max(gap);
                self.set_state(State::Closing(Reason::IdleTimeout));
                return Progress::Finished;
            }
            State::Closing(_) => return Progress::Finished,
        };
        self.fail(format!("connect-timeout {timeout} expired while {doing}"))
    }

    /// Ends the tunnel because the process stops.
    pub fn shut_down(&mut self) {
        if !matches!(self.state, State::Closing(_)) {
            self.set_state(State::Closing(Reason::Shutdown));
        }
    }

    /// Logs the tunnel's last line: `failed: ...` for a tunnel that never
    /// reached Forwarding, `closed ...` with the counters otherwise.
    pub fn log_end(&self, now: Instant) {
        let reason = match &self.state {
            State::Closing(r) => r.clone(),
            _ => Reason::Shutdown,
        };
        if let Reason::Failed(why) = &reason {
            // Proxy refusals were logged at warn where they were seen.
            if !why.starts_with("proxy answered") {
                info!("{}: failed: {why}", self.prefix());
            }
            return;
        }
        if self.forwarding_since.is_none() {
            info!("{}: closed before forwarding: {reason}", self.prefix());
            return;
        }
        let idle = now.saturating_duration_since(self.last_activity);
        let max_idle = self.max_idle.max(idle);
        let first = match self.first_closed {
            Some(s) => s.to_string(),
            None => "-".to_string(),
        };
        info!(
            "{}: closed up={} down={} duration={} max-idle={} first={first} reason={reason}",
            self.prefix(),
            self.client_to_upstream.bytes,
            self.upstream_to_client.bytes,
            net::fmt_duration(now.saturating_duration_since(self.accepted)),
            net::fmt_duration(max_idle),
        );
    }
}

/// Display helper for the log prefix of a tunnel.
pub struct Prefix<'a>(&'a Tunnel);

impl fmt::Display for Prefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        write!(
            f,
            "tunnel {} {} <- {} -> {}",
            t.id,
            t.listen,
            t.client_addr,
            t.route.entry.dest.authority()
        )?;
        if let Some(p) = &t.route.entry.proxy {
            write!(f, " via {}", p.addr.authority())?;
        }
        Ok(())
    }
}

/// A read or write error on one side while forwarding.
struct Fault {
    side: Side,
    error: io::Error,
}

/// Moves bytes from `src` through `flow`'s ring to `dst` until neither the
/// read nor the write can make progress; shuts `dst` for writing once `src`
/// has ended and everything it sent has been delivered (`other_done`: the
/// opposite direction is shut already, so the close that follows does it).
/// Returns whether anything happened.
fn pump(
    src: &mut Endpoint,
    dst: &mut Endpoint,
    flow: &mut Flow,
    budget: &mut usize,
    src_side: Side,
    other_done: bool,
) -> Result<bool, Fault> {
    let dst_side = match src_side {
        Side::Client => Side::Upstream,
        Side::Upstream => Side::Client,
    };
    let mut progress = false;
    loop {
        let mut moved = false;
        if !flow.src_eof && src.readable && !flow.ring.is_full() {
            let room = flow.ring.free();
            match flow.ring.read_from(&mut src.stream) {
                Ok(0) => {
                    flow.src_eof = true;
                    moved = true;
                }
                Ok(n) => {
                    moved = true;
                    // A short read emptied the socket's receive queue: skip
                    // the read that would only say WouldBlock. New data raises
                    // a new edge; a FIN already seen (read_closed is sticky)
                    // keeps us reading until the EOF itself.
                    if n < room && !src.read_closed {
                        src.readable = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => src.readable = false,
                Err(error) => {
                    return Err(Fault {
                        side: src_side,
                        error,
                    })
                }
            }
        }
        if !flow.ring.is_empty() && dst.writable {
            let pending = flow.ring.len();
            // The ring retries Interrupted itself and turns a write that
            // takes nothing into WriteZero, so only WouldBlock and real
            // errors come back here.
            match flow.ring.write_to(&mut dst.stream) {
                Ok(n) => {
                    flow.bytes += n as u64;
                    *budget = budget.saturating_sub(n);
                    moved = true;
                    // A short write means the send buffer is full; the next
                    // write would only say WouldBlock. Freed space raises a
                    // new writable edge.
                    if n < pending {
                        dst.writable = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable = false,
                Err(error) => {
                    return Err(Fault {
                        side: dst_side,
                        error,
                    })
                }
            }
        }
        if flow.src_eof && flow.ring.is_empty() && !flow.dst_shut {
            flow.dst_shut = true;
            moved = true;
            // When the other direction is already shut, the tunnel ends in
            // this tick and closing the socket sends this FIN: every byte of
            // both sources was read up to EOF, so close cannot turn into a
            // reset, and the shutdown call would be redundant.
            if other_done {
                return Ok(true);
            }
            if let Err(error) = dst.stream.shutdown(Shutdown::Write) {
                if error.kind() != io::ErrorKind::NotConnected {
                    return Err(Fault {
                        side: dst_side,
                        error,
                    });
                }
            }
        }
        if !moved {
            return Ok(progress);
        }
        progress = true;
        if *budget == 0 {
            return Ok(progress);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(Reason::Failed("x".into()).to_string(), "failed: x");
    }
}

/// One transition each, from fixtures already in a state, over real loopback
/// sockets and a real `Poll` (no reactor): the state machine on its own.
#[cfg(test)]
mod state_tests {
    use super::*;
    use crate::config::{AuthScheme, Options, Proxy};
    use mio::{Events, Poll};
    use std::io::{Read, Write};
    use std::net::{TcpListener as StdListener, TcpStream as StdStream};

    /// Later than the default `connect-timeout` (10 s) from now.
    const PAST_CONNECT_TIMEOUT: Duration = Duration::from_secs(11);

    /// A tunnel with its client connected, registered on its own poll.
    struct Fixture {
        poll: Poll,
        events: Events,
        scratch: Vec<u8>,
        /// The test's end of the client connection.
        client_peer: StdStream,
        tunnel: Tunnel,
    }

    fn entry(dest: SocketAddr, proxy: Option<SocketAddr>, options: Options) -> Entry {
        let hop = |a: SocketAddr| HostPort {
            host: a.ip().to_string(),
            port: a.port(),
        };
        Entry {
            line: 1,
            listen: "127.0.0.1:1".parse().unwrap(),
            dest: hop(dest),
            proxy: proxy.map(|p| Proxy {
                addr: hop(p),
                credentials: None,
                auth_file: None,
                auth_scheme: AuthScheme::Auto,
                headers: Vec::new(),
            }),
            options,
        }
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
            scratch: vec![0; connect::MAX_HEAD + 1],
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
                scratch: &mut self.scratch,
            };
            self.tunnel.start(&mut ctx)
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
                    scratch: &mut self.scratch,
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
            State::Closing(Reason::Failed(why)) => why.clone(),
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
        assert!(!f.tunnel.needs_resolution());
        assert_eq!(f.start(), Progress::Idle);
        assert_eq!(f.tunnel.state().to_string(), "Dialing");
    }

    #[test]
    fn accepting_past_the_connect_timeout_fails_naming_the_lookup() {
        let mut e = entry(refused_port(), None, Options::default());
        e.dest.host = "name.invalid".into();
        let mut f = fixture(e);
        assert!(f.tunnel.needs_resolution());
        let late = Instant::now() + PAST_CONNECT_TIMEOUT;
        assert_eq!(f.tunnel.expire(late), Progress::Finished);
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
        assert_eq!(f.tunnel.expire(Instant::now()), Progress::Idle);
        let late = Instant::now() + PAST_CONNECT_TIMEOUT;
        assert_eq!(f.tunnel.expire(late), Progress::Finished);
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
            f.tunnel.expire(deadline - Duration::from_millis(1)),
            Progress::Idle
        );
        assert_eq!(f.tunnel.expire(deadline), Progress::Finished);
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
