//! One tunnel: the accepted client socket, the upstream connection (the
//! proxy, or the destination when there is none), two rings and the state
//! machine that takes them from an accepted connection to a finished one.
//!
//! Owns: its endpoints, rings, counters and state. Never owns the slab, the
//! poll or the timers: it gets the `mio::Registry` and its slab key as
//! arguments, reports what the reactor should do as a [`Progress`], and says
//! when it next needs waking through [`Tunnel::deadline`].
//!
//! A tunnel is an optional client-side stage (today none: the destination
//! is the entry's; a SOCKS or HTTP request from the client goes in
//! `Accepting`), then the upstream stages hop by hop ([`upstream`]: dial
//! with address fallback, TLS for an `https://` hop, the request, the
//! answer head, authentication rounds, the next hop of a chain), then the
//! duplex core ([`duplex`]).
//!
//! ```text
//!                 first hop is a name            all addresses failed,
//!   accept ──► Accepting ──(resolved)──┐         timeout, resolve error
//!                 │ first hop is an IP  ▼         ┌─────────────────────►  Closing(Failed)
//!                 └──────────────► Dialing ───────┤
//!          407, connection not kept  ▲ │ connected │ (direct entry)
//!          (redial, same deadline)   │ │ (+TLS for └──────────────────┐
//!                                    │ ▼  https://)                   │
//!        ┌────────────────────► SentConnect{hop, auth, request}       │
//!        │ 407 answered on the       │ request written                │
//!        │ same connection (body     ▼                                │
//!        │ drained); next hop ◄── ReadingHeaders{hop, head, drain} ───┼──► Closing(Refused/Failed)
//!        └── of a chain after 2xx    │ 2xx from the last hop:         │    non-2xx, refused 407,
//!            (+TLS for https://)     ▼ bytes after it are in the ring │    bad head, close, timeout
//!                                Forwarding ◄─────────────────────────┘
//!                                    │ both directions shut,
//!                                    ▼ reset, error, idle
//!                                 Closing(reason)
//! ```
//!
//! Invariants: no client byte is read before Forwarding (so none can reach
//! the proxy ahead of the CONNECT request); readiness follows the rule in
//! [`endpoint`]; a direction's destination is shut for writing only once
//! its ring is empty after its source hit EOF, so no byte is ever dropped on
//! a half-close; a reset or error on either side, noticed even while neither
//! side is read or written, closes both.

mod client;
mod duplex;
mod endpoint;
mod failover;
mod head;
mod logline;
mod route;
mod upstream;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info};
use mio::net::TcpStream;
use mio::{Registry, Token};

use crate::auth;
use crate::config::HostPort;
use crate::metrics::Failure;
use crate::net;
use crate::transport::Transport;
use duplex::{Fault, Flow};
use endpoint::Endpoint;
use logline::AuthSuffix;
pub use logline::Prefix;
pub use route::{trusts, Hop, Path, Route};
use upstream::{Reading, Resume, Sending};

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
    /// The tunnel never reached Forwarding.
    Failed(Failed),
}

/// Why a tunnel never reached Forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// The kind, for metrics and the log level (a proxy's refusal is a
    /// warning, anything else info).
    pub kind: Failure,
    /// The text for the log line.
    pub why: String,
    /// Whether the route is at fault (unreachable, timeout, closed, a
    /// malformed answer, 5xx), so another route may be tried; false for a
    /// proxy's decision about this destination (4xx, a refused 407).
    pub route_failed: bool,
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
            Reason::Failed(e) => write!(f, "failed: {}", e.why),
        }
    }
}

/// The tunnel's state; each variant carries only what exists in it.
#[derive(Debug)]
pub enum State {
    /// Accepted (or moving on to the next route); waiting for the first
    /// hop's addresses from the resolver. Holds the upstream socket made
    /// before the client was accepted, and the number of the lookup asked
    /// for (answers to an earlier one are stale).
    Accepting {
        deadline: Instant,
        reserve: Option<net::Reserved>,
        lookup: Option<u32>,
    },
    /// Connecting to `addrs[next - 1]`; the rest are tried in turn. With
    /// `resume`, a dial again to answer a 407 on a new connection.
    Dialing {
        deadline: Instant,
        addrs: Vec<SocketAddr>,
        next: usize,
        resume: Option<Box<Resume>>,
    },
    /// Writing a hop's CONNECT request (its hop, auth session and bytes;
    /// boxed, so a forwarding tunnel does not carry handshake-sized state).
    SentConnect(Box<Sending>),
    /// Reading a hop's answer head (and draining a 407's body).
    ReadingHeaders(Box<Reading>),
    /// Moving bytes both ways.
    Forwarding,
    /// Done; the reactor drops the tunnel at the end of the tick.
    Closing(Reason),
}

impl State {
    /// The states' names, by `index`.
    const NAMES: [&'static str; 6] = [
        "Accepting",
        "Dialing",
        "SentConnect",
        "ReadingHeaders",
        "Forwarding",
        "Closing",
    ];

    fn index(&self) -> u8 {
        match self {
            State::Accepting { .. } => 0,
            State::Dialing { .. } => 1,
            State::SentConnect(_) => 2,
            State::ReadingHeaders(_) => 3,
            State::Forwarding => 4,
            State::Closing(_) => 5,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(State::NAMES[self.index() as usize])
    }
}

/// `Tunnel::taken` when no state is taken out.
const NOT_TAKEN: u8 = u8::MAX;

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

/// Which socket a fault came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Upstream,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
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
}

/// One tunnel. See the module docs for the state diagram.
#[derive(Debug)]
pub struct Tunnel {
    /// Process-wide tunnel id, as in log lines.
    pub id: u64,
    /// The listener's slab key and id, for `max-conns` accounting.
    pub listener: (usize, u64),
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
    /// The route (path index) being tried or used.
    path: u8,
    /// The index of the state `take_state` moved out (`NOT_TAKEN`: none),
    /// so that the next transition's debug line names it.
    taken: u8,
    /// The routes still to try (bit set of path indices), the current one
    /// included.
    remaining: u64,
    /// Lookups asked for so far (numbers them).
    lookups: u32,
    /// The destination a client named (socks/http entries); `None`: the
    /// entry's.
    dest: Option<Box<HostPort>>,
    /// A socks/http entry's client stage, until its reply is written.
    named: Option<Box<client::ClientStage>>,
    /// Set while the tunnel is on the reactor's list of tunnels to drive.
    pub queued: bool,
    /// The earliest instant the reactor's timer heap holds for this tunnel
    /// (kept by the reactor, so it pushes a timer only for an earlier one).
    pub timer: Option<Instant>,
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
        let remaining = route.candidates(now);
        let path = remaining.trailing_zeros() as u8;
        let named = route.client.map(|p| Box::new(client::ClientStage::new(p)));
        Tunnel {
            id,
            listener,
            route,
            client_addr,
            client: Endpoint::new(Transport::Tcp(client)),
            upstream: None,
            client_to_upstream: Flow::new(capacity),
            upstream_to_client: Flow::new(capacity),
            state: State::Accepting {
                deadline,
                reserve,
                lookup: None,
            },
            accepted: now,
            connected: None,
            forwarding_since: None,
            last_activity: now,
            max_idle: Duration::ZERO,
            first_closed: None,
            path,
            taken: NOT_TAKEN,
            remaining,
            lookups: 0,
            dest: None,
            named,
            queued: false,
            timer: None,
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

    /// Where the tunnel leads: the entry's destination, or the client's.
    pub fn dest(&self) -> &HostPort {
        self.dest.as_deref().unwrap_or(&self.route.dest)
    }

    /// The hops of the route being tried.
    fn hops(&self) -> &[Hop] {
        &self.route.paths[self.path as usize].hops
    }

    /// What the route's first hop dials.
    fn first_hop(&self) -> &HostPort {
        self.route.first_hop(self.path as usize, self.dest())
    }

    /// What hop `hop` is asked to `CONNECT` to.
    fn connect_target(&self, hop: usize) -> &HostPort {
        self.route
            .connect_target(self.path as usize, hop, self.dest())
    }

    /// A name lookup the tunnel waits for and has not asked for yet: its
    /// number and what to resolve. The reactor asks the resolver and hands
    /// the answer to [`Tunnel::resolved`] with the same number.
    pub fn lookup(&mut self) -> Option<(u32, HostPort)> {
        let State::Accepting { lookup: None, .. } = self.state else {
            return None;
        };
        if self.named.as_ref().is_some_and(|n| !n.has_request()) {
            return None; // the client has not named its destination yet
        }
        if self
            .route
            .first_hop_ip(self.path as usize, self.dest())
            .is_some()
        {
            return None;
        }
        self.lookups += 1;
        let n = self.lookups;
        let hop = self.first_hop().clone();
        if let State::Accepting { lookup, .. } = &mut self.state {
            *lookup = Some(n);
        }
        Some((n, hop))
    }

    fn set_state(&mut self, next: State) {
        let from = match std::mem::replace(&mut self.taken, NOT_TAKEN) {
            NOT_TAKEN => self.state.index(),
            taken => taken,
        };
        debug!(
            "{}: {} => {}",
            self.prefix(),
            State::NAMES[from as usize],
            next
        );
        self.state = next;
    }

    /// Moves the state out, to be rebuilt from its parts, leaving
    /// `placeholder` meanwhile; `set_state` then logs the transition from
    /// the state taken, not from the placeholder.
    fn take_state(&mut self, placeholder: State) -> State {
        self.taken = self.state.index();
        std::mem::replace(&mut self.state, placeholder)
    }

    /// Ends the attempt: the route is at fault (another may be tried).
    fn fail(&mut self, kind: Failure, why: String) -> Progress {
        self.end_attempt(kind, why, true)
    }

    fn end_attempt(&mut self, kind: Failure, why: String, route_failed: bool) -> Progress {
        self.set_state(State::Closing(Reason::Failed(Failed {
            kind,
            why,
            route_failed,
        })));
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
            e.record(event);
        }
    }

    /// The answer to lookup number `n` arrived (or resolution failed).
    pub fn resolved(
        &mut self,
        n: u32,
        answer: io::Result<Vec<SocketAddr>>,
        ctx: &mut Ctx<'_>,
    ) -> Progress {
        let State::Accepting {
            deadline,
            reserve,
            lookup: Some(asked),
        } = &mut self.state
        else {
            return Progress::Idle;
        };
        if *asked != n {
            return Progress::Idle; // for a route given up already
        }
        let (deadline, mut reserve) = (*deadline, reserve.take());
        let progress = match answer {
            Ok(addrs) => self.dial_from(addrs, 0, deadline, &mut reserve, None, ctx),
            Err(e) => {
                let why = format!("cannot resolve {}: {e}", self.first_hop().host);
                self.fail(Failure::Resolve, why)
            }
        };
        self.settle(progress, ctx)
    }

    /// Starts the tunnel: dials at once when the first hop is an IP
    /// literal; otherwise [`Tunnel::lookup`] has a lookup to ask for.
    pub fn start(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        let progress = self.dial_now(ctx);
        self.settle(progress, ctx)
    }

    fn dial_now(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        if self.named.as_ref().is_some_and(|n| !n.has_request()) {
            return Progress::Idle; // the client has not named its destination yet
        }
        let ip = self.route.first_hop_ip(self.path as usize, self.dest());
        match (&mut self.state, ip) {
            (
                State::Accepting {
                    deadline, reserve, ..
                },
                Some(ip),
            ) => {
                let (deadline, mut reserve) = (*deadline, reserve.take());
                self.dial_from(vec![ip], 0, deadline, &mut reserve, None, ctx)
            }
            _ => Progress::Idle,
        }
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
        self.refuse_client();
        match self.state {
            State::Closing(Reason::ClientReset) => {
                if let Some(u) = &self.upstream {
                    net::reset_on_close(u.io.tcp());
                }
            }
            State::Closing(Reason::UpstreamReset) => net::reset_on_close(self.client.io.tcp()),
            _ => {}
        }
    }

    /// Moves the tunnel as far as readiness allows.
    pub fn drive(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        let progress = self.drive_states(ctx);
        self.settle(progress, ctx)
    }

    fn drive_states(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        if let Some(fault) = self.take_fault() {
            return self.end_with(fault);
        }
        if let Some(up) = self.upstream.as_mut() {
            if let Err(error) = up.flush_pending() {
                return match self.state {
                    State::Forwarding => self.end_with(Fault {
                        side: Side::Upstream,
                        error,
                    }),
                    _ => self.fail(
                        Failure::ProxyStatus,
                        format!("sending to the proxy: {error}"),
                    ),
                };
            }
        }
        loop {
            let before = std::mem::discriminant(&self.state);
            let progress = match self.state {
                State::Accepting { .. } if self.named.is_some() => self.read_client_request(ctx),
                State::Accepting { .. } => Progress::Idle,
                State::Dialing { .. } => self.check_connected(ctx),
                State::SentConnect(_) => self.write_request(),
                State::ReadingHeaders(_) => self.read_answer(ctx),
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

    /// The error pending on a socket that had an error or hang-up hint, if
    /// any. The client is checked in every state (it is not read before
    /// Forwarding); the upstream only while forwarding, since in the
    /// handshake its reads and writes are wanted whenever it is ready and
    /// report the error themselves, after what the proxy said before it (a
    /// refusal's status line is worth more than "reset").
    fn take_fault(&mut self) -> Option<Fault> {
        if std::mem::take(&mut self.client.fault_hint) {
            if let Some(error) = net::pending_error(self.client.io.tcp()) {
                return Some(Fault {
                    side: Side::Client,
                    error,
                });
            }
        }
        if !matches!(self.state, State::Forwarding) {
            return None;
        }
        let up = self.upstream.as_mut()?;
        if std::mem::take(&mut up.fault_hint) {
            if let Some(error) = net::pending_error(up.io.tcp()) {
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

    /// Enters Forwarding; `auth` has, per hop, the scheme it accepted.
    fn start_forwarding(&mut self, now: Instant, auth: &[Option<auth::Scheme>]) {
        let path = &self.route.paths[self.path as usize];
        if path.recovered() {
            info!(
                "{}: route {} carries tunnels again",
                self.prefix(),
                path.label()
            );
        }
        self.forwarding_since = Some(now);
        self.last_activity = now;
        self.set_state(State::Forwarding);
        let dial = self.connected.unwrap_or(now) - self.accepted;
        let handshake = now - self.connected.unwrap_or(now);
        info!(
            "{}: open, dial {}, handshake {}{}",
            self.prefix(),
            net::Dur(dial),
            net::Dur(handshake),
            AuthSuffix(auth)
        );
    }

    /// When the tunnel next needs [`Tunnel::expire`]: the handshake's
    /// `connect-timeout`, or while forwarding the `idle-timeout` counted from
    /// the last byte moved. It only ever moves later while a tunnel runs, so
    /// the reactor arms a timer when this is earlier than the one it holds
    /// and, when that fires, calls `expire` and arms the next.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Accepting { deadline, .. } | State::Dialing { deadline, .. } => Some(*deadline),
            State::SentConnect(s) => Some(s.deadline),
            State::ReadingHeaders(r) => Some(r.deadline),
            State::Forwarding => self
                .route
                .entry
                .options
                .idle_timeout
                .map(|t| self.last_activity + t),
            State::Closing(_) => None,
        }
    }

    /// Applies a passed deadline: connect-timeout (then maybe the next
    /// route) or idle-timeout.
    pub fn expire(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        let progress = self.expire_now(ctx.now);
        self.settle(progress, ctx)
    }

    fn expire_now(&mut self, now: Instant) -> Progress {
        match self.deadline() {
            Some(d) if d <= now => {}
            _ => return Progress::Idle,
        }
        let timeout = net::fmt_duration(self.route.entry.options.connect_timeout);
        let doing = match &self.state {
            State::Accepting { .. } => format!("resolving {}", self.first_hop().host),
            State::Dialing { addrs, next, .. } => match addrs.get(next.wrapping_sub(1)) {
                Some(a) => format!("dialing {a}"),
                None => "dialing".to_string(),
            },
            State::SentConnect(_) => "sending the CONNECT request".to_string(),
            State::ReadingHeaders(_) => "waiting for the proxy's answer".to_string(),
            State::Forwarding => {
                let gap = now.saturating_duration_since(self.last_activity);
                self.max_idle = self.max_idle.max(gap);
                self.set_state(State::Closing(Reason::IdleTimeout));
                return Progress::Finished;
            }
            State::Closing(_) => return Progress::Finished,
        };
        self.fail(
            Failure::Timeout,
            format!("connect-timeout {timeout} expired while {doing}"),
        )
    }

    /// Ends the tunnel because the process stops.
    pub fn shut_down(&mut self) {
        if !matches!(self.state, State::Closing(_)) {
            self.set_state(State::Closing(Reason::Shutdown));
        }
    }
}

#[cfg(test)]
mod tests;
