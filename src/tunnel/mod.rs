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
//! with address fallback, room for a transport upgrade, the request, the
//! answer head, authentication rounds), then the duplex core ([`duplex`]).
//!
//! ```text
//!                 first hop is a name           all addresses failed,
//!   accept ──► Accepting ──(resolved)──┐        timeout, resolve error
//!                 │ first hop is an IP  ▼        ┌──────────────────────►  Closing(Failed)
//!                 └──────────────► Dialing ──────┤
//!                                    │ connected │ (direct entry)
//!                       (proxied)    ▼           └──────────────┐
//!        ┌──────────────────────► SentConnect{hop, request}     │
//!        │ 407 answered               │ request written         │
//!        │ (auth::Session)            ▼                         │
//!        └─────────────────────── ReadingHeaders{hop, head} ────┼──► Closing(Refused/Failed)
//!                                     │ 2xx: bytes after the    │    non-2xx, bad head,
//!                                     ▼ head go to the ring     │    close, timeout
//!                                 Forwarding ◄──────────────────┘
//!                                     │ both directions shut,
//!                                     ▼ reset, error, idle
//!                                  Closing(reason)
//! ```
//!
//! Invariants: no client byte is read before Forwarding (so none can reach
//! the proxy ahead of the CONNECT request); readiness follows the rule in
//! [`endpoint`]; a direction's destination is shut for writing only once
//! its ring is empty after its source hit EOF, so no byte is ever dropped on
//! a half-close; a reset or error on either side, noticed even while neither
//! side is read or written, closes both.

mod duplex;
mod endpoint;
mod route;
mod upstream;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Registry, Token};

use crate::auth;
use crate::net;
use crate::transport::Transport;
use duplex::{Fault, Flow};
use endpoint::Endpoint;
pub use route::{Hop, Route};
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
    /// The tunnel never reached Forwarding; the text says why.
    Failed(String),
    /// A proxy refused the tunnel (a non-2xx answer it could not get
    /// past); the text quotes its status line. Logged at warn.
    Refused(String),
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
            Reason::Failed(e) | Reason::Refused(e) => write!(f, "failed: {e}"),
        }
    }
}

/// The tunnel's state; each variant carries only what exists in it.
#[derive(Debug)]
pub enum State {
    /// Accepted; waiting for the first hop's addresses from the resolver.
    /// Holds the upstream socket made before the client was accepted.
    Accepting {
        deadline: Instant,
        reserve: Option<net::Reserved>,
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

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Accepting { .. } => "Accepting",
            State::Dialing { .. } => "Dialing",
            State::SentConnect(_) => "SentConnect",
            State::ReadingHeaders(_) => "ReadingHeaders",
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
        Tunnel {
            id,
            listener,
            route,
            client_addr,
            client: Endpoint::new(Transport::Tcp(client)),
            upstream: None,
            client_to_upstream: Flow::new(capacity),
            upstream_to_client: Flow::new(capacity),
            state: State::Accepting { deadline, reserve },
            accepted: now,
            connected: None,
            forwarding_since: None,
            last_activity: now,
            max_idle: Duration::ZERO,
            first_closed: None,
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

    /// The first hop still needs resolving (the reactor submits the lookup).
    pub fn needs_resolution(&self) -> bool {
        matches!(self.state, State::Accepting { .. }) && self.route.first_hop_ip().is_none()
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
            e.record(event);
        }
    }

    /// The first hop's addresses arrived (or resolution failed).
    pub fn resolved(&mut self, answer: io::Result<Vec<SocketAddr>>, ctx: &mut Ctx<'_>) -> Progress {
        let State::Accepting { deadline, reserve } = &mut self.state else {
            return Progress::Idle;
        };
        let (deadline, mut reserve) = (*deadline, reserve.take());
        match answer {
            Ok(addrs) => self.dial_from(addrs, 0, deadline, &mut reserve, None, ctx),
            Err(e) => self.fail(format!(
                "cannot resolve {}: {e}",
                self.route.first_hop().host
            )),
        }
    }

    /// Starts a tunnel whose first hop is an IP literal.
    pub fn start(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        match (&mut self.state, self.route.first_hop_ip()) {
            (State::Accepting { deadline, reserve }, Some(ip)) => {
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
        if let Some(fault) = self.take_fault() {
            return self.end_with(fault);
        }
        loop {
            let before = std::mem::discriminant(&self.state);
            let progress = match self.state {
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

    /// Enters Forwarding; `auth` is the scheme the proxy accepted, if any.
    fn start_forwarding(&mut self, now: Instant, auth: Option<auth::Scheme>) {
        self.forwarding_since = Some(now);
        self.last_activity = now;
        self.set_state(State::Forwarding);
        let dial = self.connected.unwrap_or(now) - self.accepted;
        let handshake = now - self.connected.unwrap_or(now);
        let auth = match auth {
            Some(scheme) => format!(", auth {}", scheme.name()),
            None => String::new(),
        };
        info!(
            "{}: open, dial {}, handshake {}{auth}",
            self.prefix(),
            net::fmt_duration(dial),
            net::fmt_duration(handshake)
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

    /// Applies a passed deadline: connect-timeout or idle-timeout.
    pub fn expire(&mut self, now: Instant) -> Progress {
        match self.deadline() {
            Some(d) if d <= now => {}
            _ => return Progress::Idle,
        }
        let timeout = net::fmt_duration(self.route.entry.options.connect_timeout);
        let doing = match &self.state {
            State::Accepting { .. } => format!("resolving {}", self.route.first_hop().host),
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
        self.fail(format!("connect-timeout {timeout} expired while {doing}"))
    }

    /// Ends the tunnel because the process stops.
    pub fn shut_down(&mut self) {
        if !matches!(self.state, State::Closing(_)) {
            self.set_state(State::Closing(Reason::Shutdown));
        }
    }

    /// Logs the tunnel's last line: `failed: ...` for a tunnel that never
    /// reached Forwarding (at warn for a proxy's refusal), `closed ...` with
    /// the counters otherwise.
    pub fn log_end(&self, now: Instant) {
        let reason = match &self.state {
            State::Closing(r) => r,
            _ => &Reason::Shutdown,
        };
        match reason {
            Reason::Failed(why) => return info!("{}: failed: {why}", self.prefix()),
            Reason::Refused(why) => return warn!("{}: failed: {why}", self.prefix()),
            _ => {}
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
            t.id, t.route.entry.listen, t.client_addr, t.route.entry.dest
        )?;
        for hop in &t.route.hops {
            write!(f, " via {}", hop.proxy.addr.authority())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
