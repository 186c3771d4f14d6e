//! The upstream handshake stages, hop by hop, before Forwarding: dial the
//! first hop (each resolved address in turn), then for each proxy write its
//! `CONNECT` request (built by the stage, with the hop's authentication) and
//! read its answer head into a head buffer, answering a 407 when the hop's
//! [`auth::Session`] can.
//!
//! This is where a new upstream stage goes: a transport upgrade (TLS to a
//! proxy) between `Dialing` and `SentConnect`, an authentication round after
//! `ReadingHeaders`, the next hop of a chain after a 2xx.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use log::debug;
use mio::{Interest, Registry};

use super::endpoint::Endpoint;
use super::{token, Ctx, Progress, Reason, State, Tunnel, UPSTREAM};
use crate::auth::{self, Next};
use crate::connect::{self, Head, MAX_HEAD};
use crate::net;
use crate::ring::Lent;
use crate::transport::Transport;

/// A hop being negotiated: which one, and its authentication so far.
#[derive(Debug)]
pub struct HopStage {
    /// Index into the route's hops.
    pub hop: usize,
    /// The hop's authentication across its rounds.
    pub auth: auth::Session,
}

/// The bytes of a proxy's answer read so far, in a buffer lent from the
/// ring storage pool for as long as the stage lasts. Holds at most
/// [`MAX_HEAD`] + 1 bytes, so a head over the limit is recognised.
#[derive(Debug)]
pub struct HeadBuf {
    buf: Lent,
    len: usize,
}

impl HeadBuf {
    fn new() -> HeadBuf {
        HeadBuf {
            buf: Lent::new(MAX_HEAD + 1),
            len: 0,
        }
    }

    /// One read of at most `max` bytes: the bytes read and the room
    /// offered (fewer read than offered means the socket's queue is empty).
    fn read_from(&mut self, src: &mut impl Read, max: usize) -> io::Result<(usize, usize)> {
        let end = self.buf.len().min(self.len + max);
        let n = src.read(&mut self.buf[self.len..end])?;
        let room = end - self.len;
        self.len += n;
        Ok((n, room))
    }

    fn filled(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Tunnel {
    /// Dials the addresses of `addrs` from `next` on; fails when none is left.
    pub(crate) fn dial_from(
        &mut self,
        addrs: Vec<SocketAddr>,
        mut next: usize,
        deadline: Instant,
        mut last_error: Option<String>,
        registry: &Registry,
        key: usize,
    ) -> Progress {
        // A socket that failed to connect: closing it also takes it out of
        // the poll (see `Tunnel::close`).
        self.upstream = None;
        while let Some(&addr) = addrs.get(next) {
            next += 1;
            match net::dial(&mut self.reserve, addr) {
                Ok(mut stream) => {
                    if let Err(e) = registry.register(
                        &mut stream,
                        token(key, UPSTREAM),
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
                    });
                    return Progress::Idle;
                }
                Err(e) => last_error = Some(format!("connect to {addr}: {e}")),
            }
        }
        let why = last_error.unwrap_or_else(|| "no address to connect to".to_string());
        self.fail(why)
    }

    /// Dialing: mio's "connect completion" recipe (take_error, then
    /// peer_addr; NotConnected means not yet).
    pub(crate) fn check_connected(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        let Some(up) = self.upstream.as_mut() else {
            return Progress::Idle;
        };
        if !(up.readable || up.writable) {
            return Progress::Idle;
        }
        let stream = up.io.tcp();
        let failure = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
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
            let why = match addrs.get(next - 1) {
                Some(a) => format!("connect to {a}: {e}"),
                None => format!("connect: {e}"),
            };
            debug!("{}: {why}", self.prefix());
            return self.dial_from(addrs, next, deadline, Some(why), ctx.registry, ctx.key);
        }
        self.connected = Some(ctx.now);
        if self.route.hops.is_empty() {
            self.start_forwarding(ctx.now);
        } else {
            let stage = HopStage {
                hop: 0,
                auth: auth::Session::new(),
            };
            self.send_connect(stage, deadline, None);
        }
        Progress::Idle
    }

    /// Enters SentConnect for `stage`'s hop with a request of its own: the
    /// hop's first authorization, or `answer` to its challenge.
    fn send_connect(&mut self, mut stage: HopStage, deadline: Instant, answer: Option<String>) {
        let hop = &self.route.hops[stage.hop];
        let authorization = answer.or_else(|| stage.auth.first(&hop.proxy));
        let request = connect::build_request(
            &self.route.connect_target(stage.hop).authority(),
            authorization.as_deref(),
            &hop.proxy.headers,
        );
        self.set_state(State::SentConnect {
            deadline,
            stage,
            request,
            written: 0,
        });
    }

    /// SentConnect: writes the rest of the request.
    pub(crate) fn write_request(&mut self) -> Progress {
        let State::SentConnect {
            request, written, ..
        } = &mut self.state
        else {
            return Progress::Idle;
        };
        let Some(up) = self.upstream.as_mut() else {
            return Progress::Idle;
        };
        let mut error = None;
        while *written < request.len() && up.writable {
            match up.io.write(&request[*written..]) {
                Ok(0) => {
                    error = Some("proxy accepts no more bytes (write returned 0)".to_string());
                    break;
                }
                Ok(n) => *written += n,
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
        if *written < request.len() {
            return Progress::Idle;
        }
        let State::SentConnect {
            deadline, stage, ..
        } = std::mem::replace(&mut self.state, State::Forwarding)
        else {
            return Progress::Idle;
        };
        self.set_state(State::ReadingHeaders {
            deadline,
            stage,
            head: HeadBuf::new(),
        });
        Progress::Idle
    }

    /// ReadingHeaders: reads the proxy's answer into the head buffer and
    /// parses it after every read. Each read takes at most what the
    /// downstream ring holds, so the bytes after the head (which came in the
    /// last read) always fit in front of it: none can be lost, whatever the
    /// ring's size.
    pub(crate) fn read_answer(&mut self, now: Instant) -> Progress {
        let max = self.upstream_to_client.ring.free();
        let State::ReadingHeaders { head: buf, .. } = &mut self.state else {
            return Progress::Idle;
        };
        let Some(up) = self.upstream.as_mut() else {
            return Progress::Idle;
        };
        let parsed = loop {
            if !up.may_read() {
                return Progress::Idle;
            }
            let (n, room) = match buf.read_from(&mut up.io, max) {
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    up.readable = false;
                    return Progress::Idle;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if buf.len > 0 => {
                    return self.fail(format!(
                        "proxy closed the connection in the middle of its answer: {e}"
                    ))
                }
                Err(e) => return self.fail(format!("reading the proxy's answer: {e}")),
            };
            if n == 0 {
                let why = if buf.len == 0 {
                    "proxy closed the connection before answering"
                } else {
                    "proxy closed the connection in the middle of its answer"
                };
                return self.fail(why.into());
            }
            up.after_read(n, room);
            match connect::parse_answer(buf.filled()) {
                Ok(connect::Answer::Partial) => continue,
                other => break other,
            }
        };
        let head = match parsed {
            Ok(connect::Answer::Complete(head)) => head,
            Ok(connect::Answer::Partial) | Err(connect::ParseError::TooLarge) => {
                return self.fail(format!("proxy answer head over {MAX_HEAD} bytes"))
            }
            Err(connect::ParseError::Malformed(why)) => {
                return self.fail(format!("bad proxy answer: {why}"))
            }
        };
        let State::ReadingHeaders {
            deadline,
            stage,
            head: buf,
        } = std::mem::replace(&mut self.state, State::Forwarding)
        else {
            return Progress::Idle;
        };
        let rest = &buf.filled()[head.head_len..];
        if connect::is_success(head.status) {
            // Fits: `rest` came in the last read, of at most `max` bytes.
            let pushed = self.upstream_to_client.ring.push(rest);
            debug_assert_eq!(pushed, rest.len(), "bytes after the head must fit the ring");
            debug!("{}: proxy answered \"{}\"", self.prefix(), head.status_line);
            self.start_forwarding(now);
            return Progress::Idle;
        }
        let rest_len = rest.len();
        drop(buf);
        self.refused(stage, deadline, &head, rest_len)
    }

    /// A non-2xx answer: a 407 the hop's session can answer is answered on
    /// the same connection when nothing of its body is left to drain;
    /// anything else ends the attempt.
    fn refused(
        &mut self,
        mut stage: HopStage,
        deadline: Instant,
        head: &Head,
        rest: usize,
    ) -> Progress {
        let mut why = format!("proxy answered \"{}\"", head.status_line);
        if head.status == 407 {
            match stage
                .auth
                .challenged(&self.route.hops[stage.hop].proxy, head)
            {
                Next::Answer(value) => {
                    let body_done = head.content_length == Some(0) && rest == 0;
                    if body_done && !head.connection_close {
                        self.send_connect(stage, deadline, Some(value));
                        return Progress::Idle;
                    }
                    why.push_str(
                        ": answering it needs a fresh connection or its body drained, not done yet",
                    );
                }
                Next::GiveUp(text) => {
                    why.push_str(": ");
                    why.push_str(&text);
                }
            }
        }
        self.set_state(State::Closing(Reason::Refused(why)));
        Progress::Finished
    }
}
