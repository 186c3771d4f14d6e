//! The upstream handshake stages, hop by hop, before Forwarding: dial the
//! first hop (each resolved address in turn), then for each proxy write its
//! `CONNECT` request (built by the stage, with the hop's authentication) and
//! read its answer head; a 407 that the hop's [`auth::Session`] can answer
//! is answered on the same connection (after draining its body) or on a new
//! one, within the same `connect-timeout`.
//!
//! This is where a new upstream stage goes: a transport upgrade (TLS to a
//! proxy) between `Dialing` and `SentConnect`, the next hop of a chain after
//! a 2xx.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Instant;

use base64::Engine as _;
use log::{debug, info};
use mio::Interest;

use super::endpoint::Endpoint;
use super::head::HeadBuf;
use super::{token, Ctx, Progress, Reason, State, Tunnel, UPSTREAM};
use crate::auth::{self, Next};
use crate::connect::{self, BodyDrain, Head, MAX_BODY, MAX_HEAD};
use crate::metrics::Failure;
use crate::net;

use crate::tls::TlsStream;
use crate::transport::Transport;

/// A hop being negotiated: which one, and its authentication so far.
#[derive(Debug)]
pub struct HopStage {
    /// Index into the route's hops.
    pub hop: usize,
    /// The hop's authentication across its rounds.
    pub auth: auth::Session,
    /// The schemes the hops before it authenticated with (for the open line).
    pub earlier: Vec<Option<auth::Scheme>>,
}

impl HopStage {
    fn first(target: String) -> HopStage {
        HopStage {
            hop: 0,
            auth: auth::Session::new(target),
            earlier: Vec::new(),
        }
    }
}

/// Stands for "a fresh Negotiate token" where an answer to a 407 is kept
/// (a header value never holds a NUL: config values are refused with
/// control characters, and ours are base64).
pub(crate) const TOKEN_ANSWER: &str = "\0negotiate";

/// A Negotiate token the request waits for (asked of a worker thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The request is complete.
    NotNeeded,
    /// To be asked for.
    Wanted,
    /// Asked for, as the tunnel's `n`th worker job.
    Asked(u32),
}

/// SentConnect's data: the request being written.
#[derive(Debug)]
pub struct Sending {
    pub deadline: Instant,
    pub stage: HopStage,
    pub request: Vec<u8>,
    pub written: usize,
    /// The request is built once this token is in.
    pub token: Token,
}

/// ReadingHeaders' data: the answer read so far, and a 407 body being
/// drained before answering it on the same connection.
#[derive(Debug)]
pub struct Reading {
    pub deadline: Instant,
    pub stage: HopStage,
    head: HeadBuf,
    drain: Option<Pending>,
}

/// A 407 being answered on the same connection once its body is drained.
#[derive(Debug)]
struct Pending {
    body: BodyDrain,
    /// `proxy answered "..."`, for the line if the body is unusable.
    quoted: String,
    answer: String,
    /// The answer must go on this connection (NTLM's authenticate message).
    same_connection: bool,
}

/// A dial again after a 407 on a connection the proxy does not keep: the
/// hop's session and the answer to send on the new connection.
#[derive(Debug)]
pub struct Resume {
    stage: HopStage,
    answer: String,
}

/// What to do after looking at the bytes read so far.
enum Step {
    /// Read more.
    Read,
    /// Look again: the bytes held mean something new (a body to drain).
    Again,
    /// The stage is over (or changed); report this.
    Done(Progress),
}

impl Tunnel {
    /// Dials the addresses of `addrs` from `next` on; fails when none is left.
    pub(crate) fn dial_from(
        &mut self,
        addrs: Vec<SocketAddr>,
        mut next: usize,
        deadline: Instant,
        reserve: &mut Option<net::Reserved>,
        mut last_error: Option<String>,
        ctx: &Ctx<'_>,
    ) -> Progress {
        // A socket that failed to connect: closing it also takes it out of
        // the poll (see `Tunnel::close`).
        self.upstream = None;
        while let Some(&addr) = addrs.get(next) {
            next += 1;
            match net::dial(reserve, addr) {
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
                    self.upstream = Some(Endpoint::new(Transport::Tcp(stream)));
                    self.set_state(State::Dialing {
                        deadline,
                        addrs,
                        next,
                        resume: None,
                    });
                    return Progress::Idle;
                }
                Err(e) => last_error = Some(format!("connect to {addr}: {e}")),
            }
        }
        let why = last_error.unwrap_or_else(|| "no address to connect to".to_string());
        self.fail(Failure::Refused, why)
    }

    /// Dialing: mio's "connect completion" recipe (take_error, then
    /// peer_addr; NotConnected means not yet). On Linux a writable edge
    /// without an error is the completion itself (epoll reports a
    /// connecting socket writable only once it is connected or failed, and
    /// a failure sets `SO_ERROR`), so `getpeername` is skipped there.
    pub(crate) fn check_connected(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        let Some(up) = self.upstream.as_mut() else {
            return Progress::Idle;
        };
        if !(up.readable || up.writable) {
            return Progress::Idle;
        }
        let stream = up.io.tcp();
        let connected_edge = cfg!(target_os = "linux") && up.writable && !up.fault_hint;
        let failure = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) if connected_edge => None,
            Ok(None) => match stream.peer_addr() {
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
        let State::Dialing {
            deadline,
            addrs,
            next,
            resume,
        } = self.take_state(State::Closing(Reason::Shutdown))
        else {
            return Progress::Idle;
        };
        if let Some(e) = failure {
            let why = match addrs.get(next - 1) {
                Some(a) => format!("connect to {a}: {e}"),
                None => format!("connect: {e}"),
            };
            debug!("{}: {why}", self.prefix());
            let progress = self.dial_from(addrs, next, deadline, &mut None, Some(why), ctx);
            if let State::Dialing { resume: r, .. } = &mut self.state {
                *r = resume;
            }
            return progress;
        }
        self.connected.get_or_insert(ctx.now);
        match resume {
            Some(r) => {
                let Resume { stage, answer } = *r;
                self.send_connect(stage, deadline, Some(answer));
            }
            None if self.hops().is_empty() => self.start_forwarding(ctx.now, &[]),
            None => {
                if let Err(e) = self.upgrade(0) {
                    return self.fail(Failure::Tls, e);
                }
                let stage = HopStage::first(self.connect_target(0).authority());
                self.send_connect(stage, deadline, None);
            }
        }
        Progress::Idle
    }

    /// Wraps the upstream connection in TLS when hop `hop` is an
    /// `https://` proxy (the connection is the socket for the first hop,
    /// the tunnel through the hop before it for a later one).
    fn upgrade(&mut self, hop: usize) -> Result<(), String> {
        let route = std::rc::Rc::clone(&self.route);
        let hop = &route.paths[self.path as usize].hops[hop];
        let Some(config) = hop.tls.clone() else {
            return Ok(());
        };
        let host = &hop.proxy.addr.host;
        let Some(up) = self.upstream.take() else {
            return Err("no connection to the proxy".into());
        };
        let Endpoint {
            io,
            readable,
            writable,
            read_closed,
            fault_hint,
        } = up;
        let tls = TlsStream::new(io, config, host)
            .map_err(|e| format!("TLS to {}: {e}", hop.proxy.addr.authority()))?;
        self.upstream = Some(Endpoint {
            io: Transport::Tls(Box::new(tls)),
            readable,
            writable,
            read_closed,
            fault_hint,
        });
        Ok(())
    }

    /// Enters SentConnect for `stage`'s hop with a request of its own: the
    /// hop's first authorization, or `answer` to its challenge.
    fn send_connect(&mut self, mut stage: HopStage, deadline: Instant, answer: Option<String>) {
        let route = std::rc::Rc::clone(&self.route);
        let hop = &route.paths[self.path as usize].hops[stage.hop];
        let wants_token = match answer.as_deref() {
            Some(TOKEN_ANSWER) => true,
            Some(_) => false,
            None => stage.auth.negotiate_first(&hop.proxy, &hop.learnt.borrow()),
        };
        if wants_token {
            self.set_state(State::SentConnect(Box::new(Sending {
                deadline,
                stage,
                request: Vec::new(),
                written: 0,
                token: Token::Wanted,
            })));
            return;
        }
        let authorization =
            answer.or_else(|| stage.auth.first(&hop.proxy, &mut hop.learnt.borrow_mut()));
        let request = connect::build_request(
            &self.connect_target(stage.hop).authority(),
            authorization.as_deref(),
            &hop.proxy.headers,
        );
        self.set_state(State::SentConnect(Box::new(Sending {
            deadline,
            stage,
            request,
            written: 0,
            token: Token::NotNeeded,
        })));
    }

    /// A Negotiate token the tunnel waits for and has not asked for: its
    /// number and the proxy host (the service is `HTTP@host`).
    pub(crate) fn token_request(&mut self) -> Option<(u32, String)> {
        let State::SentConnect(sending) = &mut self.state else {
            return None;
        };
        if sending.token != Token::Wanted {
            return None;
        }
        self.lookups += 1;
        sending.token = Token::Asked(self.lookups);
        let host = self.route.paths[self.path as usize].hops[sending.stage.hop]
            .proxy
            .addr
            .host
            .clone();
        Some((self.lookups, host))
    }

    /// The answer to token request `n`: the request is built with it, or,
    /// without a token, with the next scheme the proxy offered.
    pub(crate) fn token_arrived(&mut self, n: u32, token: Result<Vec<u8>, String>) -> Progress {
        let State::SentConnect(sending) = &mut self.state else {
            return Progress::Idle;
        };
        if sending.token != Token::Asked(n) {
            return Progress::Idle;
        }
        let route = std::rc::Rc::clone(&self.route);
        let hop = &route.paths[self.path as usize].hops[sending.stage.hop];
        let authorization = match token {
            Ok(token) => Some(format!(
                "Negotiate {}",
                base64::engine::general_purpose::STANDARD.encode(token)
            )),
            Err(why) => {
                let next =
                    sending
                        .stage
                        .auth
                        .token_failed(&hop.proxy, &mut hop.learnt.borrow_mut(), &why);
                match next {
                    Ok(value) => {
                        info!("{}: Negotiate passed over: {why}", self.prefix());
                        value
                    }
                    Err(text) => return self.refuse(Failure::ProxyAuth, text),
                }
            }
        };
        let hop_index = match &self.state {
            State::SentConnect(sending) => sending.stage.hop,
            _ => return Progress::Idle,
        };
        let request = connect::build_request(
            &self.connect_target(hop_index).authority(),
            authorization.as_deref(),
            &hop.proxy.headers,
        );
        let State::SentConnect(sending) = &mut self.state else {
            return Progress::Idle;
        };
        sending.request = request;
        sending.token = Token::NotNeeded;
        Progress::Idle
    }

    /// SentConnect: writes the rest of the request.
    pub(crate) fn write_request(&mut self) -> Progress {
        let State::SentConnect(sending) = &mut self.state else {
            return Progress::Idle;
        };
        if sending.token != Token::NotNeeded {
            return Progress::Idle; // waiting for the worker thread
        }
        let Some(up) = self.upstream.as_mut() else {
            return Progress::Idle;
        };
        let mut error = None;
        while sending.written < sending.request.len() && up.writable {
            match up.io.write(&sending.request[sending.written..]) {
                Ok(0) => {
                    error = Some("proxy accepts no more bytes (write returned 0)".to_string());
                    break;
                }
                Ok(n) => sending.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => up.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(format!("sending CONNECT to the proxy: {e}"));
                    break;
                }
            }
        }
        if let Some(why) = error {
            return self.fail(self.transport_failure(), why);
        }
        if sending.written < sending.request.len() {
            return Progress::Idle;
        }
        let State::SentConnect(sending) = self.take_state(State::Forwarding) else {
            return Progress::Idle;
        };
        let Sending {
            deadline, stage, ..
        } = *sending;
        let head = HeadBuf::new(&self.upstream_to_client.ring);
        self.set_state(State::ReadingHeaders(Box::new(Reading {
            deadline,
            stage,
            head,
            drain: None,
        })));
        Progress::Idle
    }

    /// ReadingHeaders: reads the proxy's answer, parses it after every
    /// read, and drains a 407's body that is to be answered on this
    /// connection.
    pub(crate) fn read_answer(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        loop {
            match self.look_at_answer(ctx) {
                Step::Done(progress) => return progress,
                Step::Again => continue,
                Step::Read => {}
            }
            let State::ReadingHeaders(reading) = &mut self.state else {
                return Progress::Idle;
            };
            let Some(up) = self.upstream.as_mut() else {
                return Progress::Idle;
            };
            if !up.may_read() {
                return Progress::Idle;
            }
            let ring = &mut self.upstream_to_client.ring;
            let had = reading.head.len(ring);
            let (n, room) = match reading.head.read_from(ring, &mut up.io) {
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    up.readable = false;
                    return Progress::Idle;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if had > 0 || reading.drain.is_some() => {
                    let kind = self.transport_failure();
                    return self.fail(
                        kind,
                        format!("proxy closed the connection in the middle of its answer: {e}"),
                    );
                }
                Err(e) => {
                    let kind = self.transport_failure();
                    return self.fail(kind, format!("reading the proxy's answer: {e}"));
                }
            };
            if n == 0 {
                return match reading.drain.take() {
                    // The body of a 407 ended with the connection after all:
                    // answer on a new one.
                    Some(p) if !p.same_connection => self.redial(p.answer, ctx),
                    Some(_) => self.fail(
                        Failure::ProxyAuth,
                        "proxy closed the connection in the middle of the NTLM handshake".into(),
                    ),
                    None if had == 0 => self.fail(
                        Failure::ProxyStatus,
                        "proxy closed the connection before answering".into(),
                    ),
                    None => self.fail(
                        Failure::ProxyStatus,
                        "proxy closed the connection in the middle of its answer".into(),
                    ),
                };
            }
            up.after_read(n, room);
        }
    }

    /// Works on the bytes of the answer read so far.
    fn look_at_answer(&mut self, ctx: &mut Ctx<'_>) -> Step {
        let State::ReadingHeaders(reading) = &mut self.state else {
            return Step::Done(Progress::Idle);
        };
        let ring = &mut self.upstream_to_client.ring;
        if let Some(Pending {
            body: drain,
            quoted,
            ..
        }) = &mut reading.drain
        {
            let (a, b) = reading.head.parts(ring);
            let fed = drain.feed(a).and_then(|n| {
                if n < a.len() || drain.is_done() {
                    Ok(n)
                } else {
                    drain.feed(b).map(|m| n + m)
                }
            });
            let used = match fed {
                Ok(n) => n,
                Err(why) => {
                    let why = format!("{quoted}: {why}");
                    return Step::Done(self.refuse(Failure::ProxyAuth, why));
                }
            };
            reading.head.consume(ring, used);
            if !drain.is_done() {
                return Step::Read;
            }
            // The proxy has nothing to say before our next request; anything
            // it sent anyway is not an answer to it.
            let extra = reading.head.len(ring);
            reading.head.consume(ring, extra);
            if extra > 0 {
                debug!(
                    "{}: {extra} bytes after the 407's body dropped",
                    self.prefix()
                );
            }
            let State::ReadingHeaders(reading) = self.take_state(State::Forwarding) else {
                return Step::Done(Progress::Idle);
            };
            let Reading {
                deadline,
                stage,
                drain,
                ..
            } = *reading;
            let answer = drain.map(|p| p.answer);
            self.send_connect(stage, deadline, answer);
            return Step::Done(Progress::Idle);
        }
        if reading.head.len(ring) == 0 {
            return Step::Read;
        }
        let head = match connect::parse_answer(reading.head.parts(ring).0) {
            Ok(connect::Answer::Complete(head)) => head,
            Ok(connect::Answer::Partial) if reading.head.len(ring) <= MAX_HEAD => {
                return Step::Read
            }
            Ok(connect::Answer::Partial) | Err(connect::ParseError::TooLarge) => {
                let why = format!("proxy answer head over {MAX_HEAD} bytes");
                return Step::Done(self.fail(Failure::ProxyStatus, why));
            }
            Err(connect::ParseError::Malformed(why)) => {
                let why = format!("bad proxy answer: {why}");
                return Step::Done(self.fail(Failure::ProxyStatus, why));
            }
        };
        self.answered(head, ctx)
    }

    /// A complete answer head: a 2xx opens the tunnel, a 407 may be
    /// answered, anything else ends the attempt.
    fn answered(&mut self, head: Head, ctx: &mut Ctx<'_>) -> Step {
        let route = std::rc::Rc::clone(&self.route);
        let State::ReadingHeaders(reading) = &mut self.state else {
            return Step::Done(Progress::Idle);
        };
        let hops = &route.paths[self.path as usize].hops;
        let hop = &hops[reading.stage.hop];
        if connect::is_success(head.status) {
            let State::ReadingHeaders(reading) = self.take_state(State::Forwarding) else {
                return Step::Done(Progress::Idle);
            };
            let Reading {
                deadline,
                mut stage,
                head: buf,
                ..
            } = *reading;
            buf.into_ring(&mut self.upstream_to_client.ring, head.head_len);
            stage.auth.succeeded(&mut hop.learnt.borrow_mut());
            debug!(
                "{}: hop {} answered \"{}\"",
                self.prefix(),
                stage.hop + 1,
                head.status_line
            );
            let mut schemes = stage.earlier;
            schemes.push(stage.auth.sent());
            let next = stage.hop + 1;
            if next == hops.len() {
                self.start_forwarding(ctx.now, &schemes);
                return Step::Done(Progress::Idle);
            }
            // A chain: through this hop's tunnel, the next hop. Bytes after
            // this 2xx would be the next hop speaking before our request,
            // which no proxy does: they are dropped, not taken as its answer.
            let ring = &mut self.upstream_to_client.ring;
            ring.consume(ring.len());
            if let Err(e) = self.upgrade(next) {
                return Step::Done(self.fail(Failure::Tls, e));
            }
            let stage = HopStage {
                hop: next,
                auth: auth::Session::new(self.connect_target(next).authority()),
                earlier: schemes,
            };
            self.send_connect(stage, deadline, None);
            return Step::Done(Progress::Idle);
        }
        let quoted = format!("proxy answered \"{}\"", head.status_line);
        if head.status != 407 {
            // 5xx: the route is at fault (the proxy could not reach on);
            // anything else is the proxy's decision about this destination.
            if (500..600).contains(&head.status) {
                return Step::Done(self.fail(Failure::ProxyStatus, quoted));
            }
            return Step::Done(self.refuse(Failure::ProxyStatus, quoted));
        }
        let next = reading
            .stage
            .auth
            .challenged(&hop.proxy, &mut hop.learnt.borrow_mut(), &head);
        let (answer, same_connection) = match next {
            Next::Token => (TOKEN_ANSWER.to_string(), false),
            Next::GiveUp(why) => {
                return Step::Done(self.refuse(Failure::ProxyAuth, format!("{quoted}: {why}")))
            }
            Next::Answer {
                value,
                same_connection,
            } => (value, same_connection),
        };
        let round = reading.stage.auth.rounds();
        let body = match (head.connection_close, head.chunked, head.content_length) {
            (false, true, _) => Some(BodyDrain::chunked()),
            (false, false, Some(n)) if n <= MAX_BODY => Some(BodyDrain::length(n)),
            (false, false, Some(_)) => {
                let why = format!("{quoted}: its body is over {} MiB", MAX_BODY >> 20);
                return Step::Done(self.refuse(Failure::ProxyAuth, why));
            }
            // Closed after it, or a body up to the close: a new connection.
            _ => None,
        };
        debug!("{}: {quoted}: answering (round {round})", self.prefix());
        let State::ReadingHeaders(reading) = &mut self.state else {
            return Step::Done(Progress::Idle);
        };
        Step::Done(match body {
            Some(body) => {
                let ring = &mut self.upstream_to_client.ring;
                reading.head.consume(ring, head.head_len);
                reading.drain = Some(Pending {
                    body,
                    quoted,
                    answer,
                    same_connection,
                });
                return Step::Again;
            }
            None if same_connection => self.refuse(
                Failure::ProxyAuth,
                format!(
                    "{quoted}: the proxy closes the connection in the middle of the NTLM handshake"
                ),
            ),
            None => self.redial(answer, ctx),
        })
    }

    /// Ends the attempt on a proxy's refusal (logged at warn): its
    /// decision about this destination, so no other route is tried.
    fn refuse(&mut self, kind: Failure, why: String) -> Progress {
        self.end_attempt(kind, why, false)
    }

    /// The kind of a failure to talk to the proxy: TLS while its handshake
    /// is going on, else the proxy's doing.
    fn transport_failure(&self) -> Failure {
        match &self.upstream {
            Some(up) if up.io.is_handshaking() => Failure::Tls,
            _ => Failure::ProxyStatus,
        }
    }

    /// Answers a 407 on a new connection to the same proxy address, within
    /// the same deadline.
    fn redial(&mut self, answer: String, ctx: &mut Ctx<'_>) -> Progress {
        let peer = self
            .upstream
            .as_ref()
            .and_then(|u| u.io.tcp().peer_addr().ok());
        let State::ReadingHeaders(reading) = self.take_state(State::Closing(Reason::Shutdown))
        else {
            return Progress::Idle;
        };
        let Reading {
            deadline, stage, ..
        } = *reading;
        let Some(peer) = peer else {
            return self.fail(
                Failure::Other,
                "the proxy's address is gone, cannot dial it again".into(),
            );
        };
        if stage.hop != 0 {
            return self.fail(
                Failure::Other,
                format!(
                    "hop {} wants a new connection, which needs the hops before it again",
                    stage.hop + 1
                ),
            );
        }
        // The old socket is closed first, so the new one reuses its descriptor.
        self.upstream = None;
        self.upstream_to_client
            .ring
            .consume(self.upstream_to_client.ring.len());
        debug!(
            "{}: answering the 407 on a new connection to {peer}",
            self.prefix()
        );
        let progress = self.dial_from(vec![peer], 0, deadline, &mut None, None, ctx);
        if let State::Dialing { resume, .. } = &mut self.state {
            *resume = Some(Box::new(Resume { stage, answer }));
        }
        progress
    }
}
