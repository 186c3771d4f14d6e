//! The client-side stage of a `socks` or `http` entry: read the client's
//! request in `Accepting`, check `allow`, take its destination as the
//! tunnel's, and answer the client once the tunnel is open (or why not).
//!
//! The request is read into the client-to-upstream ring (or a lent buffer
//! when the ring is smaller than a request may be), so the client's
//! optimistic data after the request is already where forwarding takes it
//! from; none of it reaches the upstream before the tunnel is open. The
//! success reply is written before any byte of the destination's.

use std::io::{self, Write};

use log::debug;

use super::head::HeadBuf;
use super::{Ctx, Progress, Reason, State, Tunnel};
use crate::client::{self, Outcome, Parse, Protocol, Request};
use crate::config::HostPort;
use crate::metrics::Failure;

/// A client-named entry's request and answer.
#[derive(Debug)]
pub struct ClientStage {
    protocol: Protocol,
    /// The request so far; after it, the client's optimistic data.
    head: Option<HeadBuf>,
    /// The client-bound bytes written so far (SOCKS 5's method selection
    /// first, then the reply; see [`crate::client`]).
    written: usize,
    /// The request, once complete.
    request: Option<Request>,
    /// The reply still to be written (tail of the client-bound stream).
    pending: Vec<u8>,
}

impl ClientStage {
    /// A stage for a fresh client of a `protocol` entry.
    pub fn new(protocol: Protocol) -> ClientStage {
        ClientStage {
            protocol,
            head: None,
            written: 0,
            request: None,
            pending: Vec::new(),
        }
    }

    /// Whether the client's request is in (the destination is known).
    pub fn has_request(&self) -> bool {
        self.request.is_some()
    }
}

/// The SOCKS/HTTP outcome of a failure.
fn outcome_of(kind: Failure, why: &str) -> Outcome {
    match kind {
        Failure::NotAllowed => Outcome::NotAllowed,
        Failure::Resolve => Outcome::NotFound,
        Failure::Timeout => Outcome::Timeout,
        Failure::Refused if why.contains("unreachable") => Outcome::Unreachable,
        Failure::Refused => Outcome::Refused,
        _ => Outcome::Other(why.to_string()),
    }
}

/// Writes `stream[*written..]` to the client; what the socket does not
/// take now waits in `pending` (written before anything else later).
fn write_from(io: &mut impl Write, stream: &[u8], written: &mut usize) -> io::Result<()> {
    while *written < stream.len() {
        match io.write(&stream[*written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Tunnel {
    /// Accepting, client-named entry: reads and parses the request. Once
    /// it is in and allowed, the route's first hop is dialed (or looked
    /// up) for the client's destination.
    pub(crate) fn read_client_request(&mut self, ctx: &mut Ctx<'_>) -> Progress {
        loop {
            let Some(stage) = self.named.as_mut() else {
                return Progress::Idle;
            };
            if stage.request.is_some() {
                return Progress::Idle;
            }
            let ring = &mut self.client_to_upstream.ring;
            let head = stage.head.get_or_insert_with(|| HeadBuf::new(ring));
            let parsed = if head.len(ring) > 0 {
                client::parse(stage.protocol, head.parts(ring).0)
            } else {
                Parse::Partial { send: b"" }
            };
            match parsed {
                Parse::Partial { send } => {
                    // SOCKS 5's method selection; a client that does not
                    // read it is gone soon enough (connect-timeout).
                    match write_from(&mut self.client.io, send, &mut stage.written) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return self.client_failed(format!("client: {e}")),
                    }
                }
                Parse::Reply(bytes, why) => {
                    let _ = write_from(&mut self.client.io, &bytes, &mut stage.written);
                    let _ = self.client.io.shutdown_write();
                    return self.client_failed(format!("client: {why}"));
                }
                Parse::Complete(request) => return self.client_request_in(request, ctx),
            }
            if !self.client.may_read() {
                return Progress::Idle;
            }
            let ring = &mut self.client_to_upstream.ring;
            let Some(head) = stage.head.as_mut() else {
                return Progress::Idle;
            };
            match head.read_from(ring, &mut self.client.io) {
                Ok((0, _)) => {
                    return self.client_failed(
                        "client closed the connection before its request was complete".into(),
                    )
                }
                Ok((n, room)) => self.client.after_read(n, room),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.client.readable = false;
                    return Progress::Idle;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.client_failed(format!("client: {e}")),
            }
        }
    }

    fn client_failed(&mut self, why: String) -> Progress {
        self.end_attempt(Failure::Client, why, false)
    }

    /// The request is in: the bytes after it stay as the first bytes for
    /// the destination; the destination must be allowed; then the tunnel
    /// dials the route's first hop for it.
    fn client_request_in(&mut self, request: Request, ctx: &mut Ctx<'_>) -> Progress {
        let Some(stage) = self.named.as_mut() else {
            return Progress::Idle;
        };
        let ring = &mut self.client_to_upstream.ring;
        if let Some(head) = stage.head.take() {
            head.into_ring(ring, request.head_len);
        }
        let dest = HostPort {
            host: request.host.clone(),
            port: request.port,
        };
        let asked = format!("{} request for {}", request.kind, request.destination());
        stage.request = Some(request);
        debug!("{}: {asked}", self.prefix());
        let allowed = crate::config::allowed(&self.route.entry.allow, &dest.host, dest.port);
        self.dest = Some(Box::new(dest));
        if !allowed {
            let why = format!("{} is not allowed by this entry", self.dest().authority());
            return self.end_attempt(Failure::NotAllowed, why, false);
        }
        self.route_for_dest(ctx.now);
        self.dial_now(ctx)
    }

    /// Writes the client's success reply (before any byte of the
    /// destination's); `false` while some of it still waits for the socket.
    pub(crate) fn reply_to_client(&mut self) -> io::Result<bool> {
        let Some(stage) = self.named.as_mut() else {
            return Ok(true);
        };
        if stage.pending.is_empty() {
            if let Some(request) = &stage.request {
                stage.pending = client::reply(request, &Outcome::Ok);
            }
        }
        if !self.client.writable {
            return Ok(false);
        }
        match write_from(&mut self.client.io, &stage.pending, &mut stage.written) {
            Ok(()) => {
                self.named = None;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.client.writable = false;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The tunnel never opened: the client is told why, as its protocol
    /// says (best effort: the socket takes a few bytes now or never).
    pub(crate) fn refuse_client(&mut self) {
        let Some(stage) = self.named.as_mut() else {
            return;
        };
        let Some(request) = &stage.request else {
            return;
        };
        let State::Closing(Reason::Failed(failed)) = &self.state else {
            return;
        };
        let outcome = outcome_of(failed.kind, &failed.why);
        let bytes = client::reply(request, &outcome);
        let _ = write_from(&mut self.client.io, &bytes, &mut stage.written);
        let _ = self.client.io.shutdown_write();
    }
}
