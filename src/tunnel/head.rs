//! The buffer a proxy's answer head is read into during the handshake.

use std::io::{self, Read};

use crate::connect::MAX_HEAD;
use crate::ring::{Lent, Ring};

/// Where the proxy's answer is read to. When the downstream ring can hold a
/// whole head it is the ring itself (no copy: the bytes after a 2xx head are
/// already where forwarding takes them from, and the storage comes from and
/// goes back to the ring pool); else a buffer of [`MAX_HEAD`] + 1 lent from
/// the same pool, each read limited to what the ring can take, so the bytes
/// after the head (which came in the last read) always fit into it.
#[derive(Debug)]
pub(crate) enum HeadBuf {
    InRing,
    Own { buf: Lent, len: usize },
}

impl HeadBuf {
    pub(crate) fn new(ring: &Ring) -> HeadBuf {
        if ring.capacity() > MAX_HEAD {
            HeadBuf::InRing
        } else {
            HeadBuf::Own {
                buf: Lent::new(MAX_HEAD + 1),
                len: 0,
            }
        }
    }

    /// One read: the bytes read and the room offered.
    pub(crate) fn read_from(
        &mut self,
        ring: &mut Ring,
        src: &mut impl Read,
    ) -> io::Result<(usize, usize)> {
        match self {
            HeadBuf::InRing => {
                let room = ring.free();
                Ok((ring.read_from(src)?, room))
            }
            HeadBuf::Own { buf, len } => {
                let end = buf.len().min(*len + ring.free());
                let room = end - *len;
                let n = src.read(&mut buf[*len..end])?;
                *len += n;
                Ok((n, room))
            }
        }
    }

    /// The bytes held, oldest first (the ring's may wrap only while a body
    /// is drained, which reads both parts).
    pub(crate) fn parts<'a>(&'a self, ring: &'a Ring) -> (&'a [u8], &'a [u8]) {
        match self {
            HeadBuf::InRing => ring.as_slices(),
            HeadBuf::Own { buf, len } => (&buf[..*len], &[]),
        }
    }

    pub(crate) fn len(&self, ring: &Ring) -> usize {
        match self {
            HeadBuf::InRing => ring.len(),
            HeadBuf::Own { len, .. } => *len,
        }
    }

    /// Drops the `n` oldest bytes.
    pub(crate) fn consume(&mut self, ring: &mut Ring, n: usize) {
        match self {
            HeadBuf::InRing => ring.consume(n),
            HeadBuf::Own { buf, len } => {
                buf.copy_within(n..*len, 0);
                *len -= n;
            }
        }
    }

    /// After a 2xx head of `head_len` bytes: what followed it is the start
    /// of the downstream ring.
    pub(crate) fn into_ring(mut self, ring: &mut Ring, head_len: usize) {
        self.consume(ring, head_len);
        if let HeadBuf::Own { buf, len } = &self {
            let pushed = ring.push(&buf[..*len]);
            debug_assert_eq!(pushed, *len, "bytes after the head must fit the ring");
        }
    }
}
