//! The seam between a tunnel's endpoint and its connection: what the
//! handshake stages and the forwarding core call to move bytes, whatever
//! carries them.
//!
//! Owns: one connection (today a plain TCP socket; a TLS session over one
//! slots in as another variant) and the calls made on it: read, write,
//! vectored write, shutting the write half, and whether the next step wants
//! the socket readable or writable. Never does: readiness bookkeeping (the
//! endpoint keeps the bits mio reported), buffering beyond what the
//! transport itself needs, logging.
//!
//! An enum rather than a trait object: dispatch is a match the compiler
//! sees through, so plain TCP costs what calling the socket directly costs
//! (peerbench before/after, in the issue 8 note).

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

use crate::tls::TlsStream;

/// What a transport needs from its socket before it can make progress of
/// its own, apart from the caller's reads and writes: a TLS session in its
/// handshake wants to read or write records; one with encrypted bytes not
/// yet on the wire wants the socket writable. Plain TCP never wants either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wants {
    /// Progress needs the socket readable.
    pub read: bool,
    /// Progress needs the socket writable.
    pub write: bool,
}

/// A connection a tunnel reads from and writes to.
#[derive(Debug)]
pub enum Transport {
    /// Bytes go straight to the socket.
    Tcp(TcpStream),
    /// Bytes go through a TLS session to an `https://` proxy (boxed: a
    /// session is large, and only tunnels through such a proxy have one).
    Tls(Box<TlsStream>),
}

impl Transport {
    /// The socket underneath, for registration, `SO_ERROR`, the peer
    /// address and `SO_LINGER`.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Tcp(s) => s,
            Transport::Tls(t) => t.tcp(),
        }
    }

    /// The socket underneath, mutably (registration).
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Transport::Tcp(s) => s,
            Transport::Tls(t) => t.tcp_mut(),
        }
    }

    /// Whether a TLS handshake is going on (its failures are worded so).
    pub fn is_handshaking(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            Transport::Tls(t) => t.is_handshaking(),
        }
    }

    /// What the transport itself wants next; see [`Wants`].
    pub fn wants(&self) -> Wants {
        match self {
            Transport::Tcp(_) => Wants::default(),
            Transport::Tls(t) => Wants {
                read: false,
                write: t.wants_write(),
            },
        }
    }

    /// Whether bytes can be read without the socket being readable
    /// (plaintext a TLS session already decrypted). Never for plain TCP.
    pub fn read_buffered(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            Transport::Tls(t) => t.read_buffered(),
        }
    }

    /// Shuts the write half: a FIN for TCP (a TLS session would send its
    /// close_notify first).
    ///
    /// # Errors
    /// What `shutdown(2)` says; `NotConnected` when the peer is gone.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.shutdown(Shutdown::Write),
            Transport::Tls(t) => t.shutdown_write(),
        }
    }
}

impl Read for Transport {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }

    #[inline]
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read_vectored(bufs),
            Transport::Tls(t) => t.read_vectored(bufs),
        }
    }
}

impl Write for Transport {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write(buf),
            Transport::Tls(t) => t.write(buf),
        }
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write_vectored(bufs),
            Transport::Tls(t) => t.write_vectored(bufs),
        }
    }

    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.flush(),
            Transport::Tls(t) => t.flush(),
        }
    }
}
