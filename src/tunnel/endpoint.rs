//! One side of a tunnel: its transport and the readiness mio last reported
//! for the socket underneath.
//!
//! The readiness rule the code follows (mio is edge-triggered): an event
//! sets `readable`/`writable` (an error or hang-up hint sets both, since
//! only the read or write itself tells what happened); they are cleared by
//! a `WouldBlock`, and also by a short read or write, which shows the
//! kernel's queue empty or full, so the call that would only say
//! `WouldBlock` is skipped. A short read does not clear `readable` once a
//! FIN was seen (`read_closed`, sticky): the EOF itself must still be read.
//! On Windows a short read or write clears nothing (see
//! [`crate::sys::SHORT_IO_MEANS_WOULD_BLOCK`]).
//! An error or hang-up hint also sets `fault_hint`, so the pending socket
//! error is looked at even when neither side wants to read or write.

use std::io::{self, Write};

use mio::event::Event;

use crate::transport::Transport;

/// Whether a hang-up without an error flag may still hide a pending socket
/// error. Not on Linux: epoll reports `EPOLLERR` whenever `SO_ERROR` is set
/// (a reset sets it before the hang-up), so a plain hang-up is a clean end
/// that the next read reports, and looking at `SO_ERROR` for it would cost
/// a `getsockopt` in every tunnel whose client closes after the destination.
const HANG_UP_HINTS_AT_ERRORS: bool = !cfg!(target_os = "linux");

/// A connection with its readiness bits.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) io: Transport,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// mio reported the read half closed (FIN seen); sticky.
    pub(crate) read_closed: bool,
    /// mio reported an error or a hang-up; cleared when looked at.
    pub(crate) fault_hint: bool,
}

impl Endpoint {
    pub(crate) fn new(io: Transport) -> Endpoint {
        Endpoint {
            io,
            readable: false,
            writable: false,
            read_closed: false,
            fault_hint: false,
        }
    }

    /// Records what mio reported.
    pub(crate) fn record(&mut self, event: &Event) {
        // Hints (read/write closed, error) only mean "try now": the read or
        // write itself tells what happened, and buffered bytes stay.
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.readable = true;
        }
        if event.is_read_closed() {
            self.read_closed = true;
        }
        if event.is_writable() || event.is_write_closed() || event.is_error() {
            self.writable = true;
        }
        if event.is_error()
            || (HANG_UP_HINTS_AT_ERRORS && event.is_read_closed() && event.is_write_closed())
        {
            self.fault_hint = true;
        }
    }

    /// Writes what the transport holds for the socket (TLS records) while
    /// the socket is writable; nothing to do for plain TCP. Records left
    /// for a full socket go out at its next writable edge.
    ///
    /// # Errors
    /// A write error of the socket.
    #[inline]
    pub(crate) fn flush_pending(&mut self) -> io::Result<()> {
        if self.writable && self.io.wants().write {
            match self.io.flush() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                other => other?,
            }
        }
        Ok(())
    }

    /// Whether a read may bring bytes: the socket is readable, or the
    /// transport holds bytes already (TLS plaintext).
    #[inline]
    pub(crate) fn may_read(&self) -> bool {
        self.readable || self.io.read_buffered()
    }

    /// After a read that returned `n` of the `room` bytes offered: a short
    /// read emptied the socket's queue (new data raises a new edge), unless
    /// a FIN was seen, whose EOF must still be read.
    #[inline]
    pub(crate) fn after_read(&mut self, n: usize, room: usize) {
        if crate::sys::SHORT_IO_MEANS_WOULD_BLOCK && n < room && !self.read_closed {
            self.readable = false;
        }
    }
}
