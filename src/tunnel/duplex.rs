//! Forwarding: the duplex core. Two symmetric directions, each a ring from
//! a source endpoint to a destination endpoint; EOF on a source becomes a
//! write shutdown of its destination once the ring is drained; the tunnel
//! is done when both directions are shut, or at once on a reset or error.
//!
//! It talks to endpoints only through their transport and readiness bits,
//! so a TLS transport changes nothing here.

use std::io;
use std::time::Instant;

use super::endpoint::Endpoint;
use super::{Progress, Reason, Side, State, Tunnel};
use crate::metrics::Failure;
use crate::ring::Ring;

/// Bytes one tunnel may move in one drive before yielding to the others.
const BUDGET_BYTES: usize = 1 << 20;

/// One direction: its ring and how far its half-close has got.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) ring: Ring,
    /// The source returned EOF.
    pub(crate) src_eof: bool,
    /// The destination's write half is shut down.
    pub(crate) dst_shut: bool,
    /// Bytes delivered to the destination.
    pub(crate) bytes: u64,
}

impl Flow {
    pub(crate) fn new(capacity: usize) -> Flow {
        Flow {
            ring: Ring::new(capacity),
            src_eof: false,
            dst_shut: false,
            bytes: 0,
        }
    }
}

/// A read or write error on one side.
pub(crate) struct Fault {
    pub(crate) side: Side,
    pub(crate) error: io::Error,
}

impl Tunnel {
    /// Forwarding: pump both directions until nothing more can move, the
    /// budget is spent, or the tunnel ends.
    pub(crate) fn forward(&mut self, now: Instant) -> Progress {
        // A socks/http client hears that the tunnel is open before any
        // byte of the destination's.
        if self.named.is_some() {
            match self.reply_to_client() {
                Ok(true) => {}
                Ok(false) => return Progress::Idle,
                Err(error) => {
                    return self.end_with(Fault {
                        side: Side::Client,
                        error,
                    })
                }
            }
        }
        let Some(upstream) = self.upstream.as_mut() else {
            return self.fail(
                Failure::Other,
                "forwarding without an upstream socket".into(),
            );
        };
        let mut budget = BUDGET_BYTES;
        let mut moved_any = false;
        let result = loop {
            let a = match pump(
                &mut self.client,
                upstream,
                &mut self.client_to_upstream,
                &mut budget,
                Side::Client,
                self.upstream_to_client.dst_shut,
            ) {
                Ok(moved) => moved,
                Err(f) => break Err(f),
            };
            let b = match pump(
                upstream,
                &mut self.client,
                &mut self.upstream_to_client,
                &mut budget,
                Side::Upstream,
                self.client_to_upstream.dst_shut,
            ) {
                Ok(moved) => moved,
                Err(f) => break Err(f),
            };
            if !(a || b) {
                break Ok(());
            }
            moved_any = true;
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
            // Both shut, and nothing the transport still holds for the
            // upstream socket (TLS records after a full send buffer).
            Ok(())
                if self.client_to_upstream.dst_shut
                    && self.upstream_to_client.dst_shut
                    && !upstream.io.wants().write =>
            {
                self.set_state(State::Closing(Reason::Eof));
                Progress::Finished
            }
            Ok(()) if budget == 0 => Progress::MoreWork,
            Ok(()) => Progress::Idle,
        }
    }
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
    let dst_side = src_side.other();
    let mut progress = false;
    loop {
        let mut moved = false;
        if !flow.src_eof && src.may_read() && !flow.ring.is_full() {
            let room = flow.ring.free();
            match flow.ring.read_from(&mut src.io) {
                Ok(0) => {
                    flow.src_eof = true;
                    moved = true;
                }
                Ok(n) => {
                    moved = true;
                    src.after_read(n, room);
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
            match flow.ring.write_to(&mut dst.io) {
                Ok(n) => {
                    flow.bytes += n as u64;
                    *budget = budget.saturating_sub(n);
                    moved = true;
                    // A short write means the send buffer is full; the next
                    // write would only say WouldBlock. Freed space raises a
                    // new writable edge (not on Windows: see sys).
                    if n < pending && crate::sys::SHORT_IO_MEANS_WOULD_BLOCK {
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
            if let Err(error) = dst.io.shutdown_write() {
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
