//! Fixed-capacity byte ring buffer: one per tunnel direction.
//!
//! Owns: the bytes in flight in one direction of a tunnel, moved in with one
//! (vectored) read from the source and out with one (vectored) write to the
//! destination, plus a small thread-local pool of spare buffers.
//!
//! Never does: sockets, readiness, logging, retries beyond `Interrupted`. It is
//! generic over [`Read`]/[`Write`], so tests drive it with fakes and the tunnel
//! drives it with `mio::net::TcpStream`, whose `read_vectored`/`write_vectored`
//! are `readv(2)`/`writev(2)`: one system call a call, straight to the kernel.
//!
//! # Invariants
//!
//! - `len <= capacity`; `head < capacity`, or `head == 0`.
//! - The bytes held are `storage[head..]` followed by the wrapped part
//!   `storage[..head + len - capacity]` when `head + len > capacity`.
//! - An empty ring holds no storage and has `head == 0`: storage is taken
//!   lazily (from the pool) by the first [`Ring::read_from`] or
//!   [`Ring::push`], and goes back to the pool as soon as the ring is drained,
//!   or when a read brings nothing into an empty ring. So a tunnel with nothing
//!   in flight costs a few dozen bytes per ring, and a drained ring's next read
//!   gets the whole buffer as one contiguous region.
//!
//! # Pool
//!
//! Spare buffers are kept per thread (the reactor is single-threaded), sorted
//! by capacity, up to [`POOL_LIMIT`] bytes in total so idle memory stays
//! bounded; beyond that a returned buffer is freed. New buffers come from
//! `vec![0; capacity]`, i.e. `calloc`, whose large blocks are fresh zero pages
//! the kernel maps only when first touched. A buffer larger than
//! [`POOL_LIMIT`] (a `buffer` option over 8m) is never pooled: it is
//! allocated when data arrives and freed when drained.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};

/// Most bytes of spare buffers one thread's pool keeps.
pub const POOL_LIMIT: usize = 8 << 20;

/// A fixed-capacity FIFO of bytes with lazily allocated, pooled storage.
pub struct Ring {
    /// `None` exactly when the ring is empty (outside a call in progress).
    storage: Option<Box<[u8]>>,
    capacity: usize,
    /// Index of the oldest byte.
    head: usize,
    /// Bytes held.
    len: usize,
}

impl Ring {
    /// An empty ring that will hold up to `capacity` bytes. Allocates nothing.
    pub fn new(capacity: usize) -> Ring {
        Ring {
            storage: None,
            capacity,
            head: 0,
            len: 0,
        }
    }

    /// Most bytes the ring can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes that can still be added.
    pub fn free(&self) -> usize {
        self.capacity - self.len
    }

    /// Whether the ring holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether no byte can be added.
    pub fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    /// Whether the ring currently owns a buffer (it does exactly when it is
    /// not empty); for memory accounting and tests.
    pub fn has_storage(&self) -> bool {
        self.storage.is_some()
    }

    /// One read from `src` into the free space: a vectored read over the two
    /// free regions when the free space wraps, a plain read otherwise.
    /// `Interrupted` is retried; every other outcome is returned as is.
    ///
    /// Takes a buffer from the pool first when the ring has none. `Ok(0)`
    /// means end of stream (the free space is never empty here, see below).
    /// When the ring is empty and the read brings nothing (EOF, `WouldBlock`,
    /// an error), the buffer goes back to the pool.
    ///
    /// The caller must not call this when the ring [is full](Ring::is_full):
    /// it stops reading its source instead and resumes once the ring has
    /// room. Doing so is a bug, caught by a `debug_assert!`; in release builds
    /// it returns an `InvalidInput` error rather than an `Ok(0)` that would
    /// read as end of stream.
    ///
    /// # Errors
    ///
    /// Whatever `src` returns other than `Interrupted`, e.g. `WouldBlock`;
    /// `InvalidData` if `src` claims more bytes than it was offered.
    pub fn read_from<R: Read + ?Sized>(&mut self, src: &mut R) -> io::Result<usize> {
        debug_assert!(
            !self.is_full(),
            "Ring::read_from called on a full ring: callers stop reading while it is full"
        );
        if self.is_full() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring buffer is full",
            ));
        }
        let (head, len, free) = (self.head, self.len, self.free());
        let capacity = self.capacity;
        let storage = self.storage.get_or_insert_with(|| pool::take(capacity));
        let result = loop {
            match read_into_free(storage, head, len, src) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let result = match result {
            Ok(n) if n <= free => {
                self.len += n;
                Ok(n)
            }
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reader returned more bytes than it was offered",
            )),
            Err(e) => Err(e),
        };
        if self.len == 0 {
            self.release();
        }
        result
    }

    /// One write of the bytes held to `dst`: a vectored write over the two
    /// filled regions when the data wraps, a plain write otherwise.
    /// `Interrupted` is retried. The bytes written are consumed; when that
    /// empties the ring, its cursors reset and its buffer goes back to the
    /// pool. With the ring empty this returns `Ok(0)` without calling `dst`.
    ///
    /// # Errors
    ///
    /// Whatever `dst` returns other than `Interrupted`, e.g. `WouldBlock`
    /// (the bytes stay in the ring); `WriteZero` if `dst` accepts no byte of a
    /// non-empty buffer; `InvalidData` if it claims more than it was offered.
    pub fn write_to<W: Write + ?Sized>(&mut self, dst: &mut W) -> io::Result<usize> {
        let Some(storage) = self.storage.as_deref() else {
            return Ok(0);
        };
        let n = loop {
            match write_from_filled(storage, self.head, self.len, dst) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "writer accepted no byte",
            ));
        }
        if n > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "writer claimed more bytes than it was offered",
            ));
        }
        self.consume(n);
        Ok(n)
    }

    /// Copies as much of `data` as fits at the back; returns how many bytes
    /// were copied.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        if n == 0 {
            return 0;
        }
        let capacity = self.capacity;
        let storage = self.storage.get_or_insert_with(|| pool::take(capacity));
        let tail = wrap(self.head + self.len, capacity);
        // The free space starts at `tail` and runs to the end of the buffer,
        // then (when the data does not wrap) on from 0 up to `head`.
        let first = n.min(capacity - tail);
        storage[tail..tail + first].copy_from_slice(&data[..first]);
        storage[..n - first].copy_from_slice(&data[first..n]);
        self.len += n;
        n
    }

    /// The bytes held, oldest first: the second slice is the part that wraps
    /// around to the start of the buffer (empty when nothing wraps).
    pub fn as_slices(&self) -> (&[u8], &[u8]) {
        let Some(storage) = self.storage.as_deref() else {
            return (&[], &[]);
        };
        let end = self.head + self.len;
        if end <= self.capacity {
            (&storage[self.head..end], &[])
        } else {
            (&storage[self.head..], &storage[..end - self.capacity])
        }
    }

    /// Drops the `n` oldest bytes (at most [`len`](Ring::len): asking for
    /// more is a bug, caught by a `debug_assert!`, and drops everything in
    /// release builds). An emptied ring resets its cursors and gives its
    /// buffer back to the pool.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(
            n <= self.len,
            "Ring::consume({n}) with only {} bytes held",
            self.len
        );
        let n = n.min(self.len);
        self.len -= n;
        if self.len == 0 {
            self.release();
        } else {
            self.head = wrap(self.head + n, self.capacity);
        }
    }

    /// Empty-ring state: cursors at 0, buffer back to the pool.
    fn release(&mut self) {
        debug_assert_eq!(self.len, 0, "only an empty ring gives its buffer back");
        self.head = 0;
        if let Some(storage) = self.storage.take() {
            pool::give(storage);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if let Some(storage) = self.storage.take() {
            pool::give(storage);
        }
    }
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity)
            .field("head", &self.head)
            .field("len", &self.len)
            .field("has_storage", &self.has_storage())
            .finish()
    }
}

/// A buffer lent from the pool that ring storage comes from, given back to
/// it when dropped: for a tunnel's handshake, which needs a buffer only
/// until it reaches Forwarding.
pub struct Lent(Box<[u8]>);

impl Lent {
    /// A zeroed (or spare) buffer of `capacity` bytes.
    pub fn new(capacity: usize) -> Lent {
        Lent(pool::take(capacity))
    }
}

impl std::ops::Deref for Lent {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        pool::give(std::mem::take(&mut self.0));
    }
}

impl fmt::Debug for Lent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lent({} bytes)", self.0.len())
    }
}

/// Bytes of spare ring buffers the calling thread's pool currently keeps.
pub fn pool_retained_bytes() -> usize {
    pool::retained_bytes()
}

/// `index` reduced into `0..capacity`, for `index < 2 * capacity`.
#[inline]
fn wrap(index: usize, capacity: usize) -> usize {
    if index >= capacity {
        index - capacity
    } else {
        index
    }
}

/// One read into the free space of `buf`, which holds `len` bytes from `head`.
#[inline]
fn read_into_free<R: Read + ?Sized>(
    buf: &mut [u8],
    head: usize,
    len: usize,
    src: &mut R,
) -> io::Result<usize> {
    let capacity = buf.len();
    let tail = head + len;
    if tail < capacity {
        // Free: [tail, capacity) then [0, head).
        let (front, back) = buf.split_at_mut(tail);
        if head == 0 {
            src.read(back)
        } else {
            src.read_vectored(&mut [IoSliceMut::new(back), IoSliceMut::new(&mut front[..head])])
        }
    } else {
        // The data wraps (or ends exactly at the end): free is [tail, head).
        src.read(&mut buf[tail - capacity..head])
    }
}

/// One write of the `len` bytes held in `buf` from `head`.
#[inline]
fn write_from_filled<W: Write + ?Sized>(
    buf: &[u8],
    head: usize,
    len: usize,
    dst: &mut W,
) -> io::Result<usize> {
    let capacity = buf.len();
    let end = head + len;
    if end <= capacity {
        dst.write(&buf[head..end])
    } else {
        dst.write_vectored(&[
            IoSlice::new(&buf[head..]),
            IoSlice::new(&buf[..end - capacity]),
        ])
    }
}

/// The thread-local pool of spare buffers.
mod pool {
    use super::POOL_LIMIT;
    use std::cell::RefCell;

    /// Spare buffers of one capacity.
    struct Shelf {
        capacity: usize,
        buffers: Vec<Box<[u8]>>,
    }

    struct Pool {
        /// Few shelves: one per distinct `buffer` size configured.
        shelves: Vec<Shelf>,
        /// Sum of the capacities of the buffers on the shelves.
        bytes: usize,
    }

    thread_local! {
        static POOL: RefCell<Pool> = const {
            RefCell::new(Pool { shelves: Vec::new(), bytes: 0 })
        };
    }

    /// A buffer of `capacity` bytes: a spare one or a new zeroed one.
    pub(super) fn take(capacity: usize) -> Box<[u8]> {
        // `try_with`/`try_borrow_mut` instead of `with`/`borrow_mut`: at thread
        // exit the pool may already be gone, and then we just allocate.
        let spare = POOL
            .try_with(|pool| {
                let mut pool = pool.try_borrow_mut().ok()?;
                let shelf = pool.shelves.iter_mut().find(|s| s.capacity == capacity)?;
                let buffer = shelf.buffers.pop()?;
                pool.bytes -= capacity;
                Some(buffer)
            })
            .ok()
            .flatten();
        spare.unwrap_or_else(|| vec![0u8; capacity].into_boxed_slice())
    }

    /// Keeps `buffer` for reuse if the pool has room, frees it otherwise.
    pub(super) fn give(buffer: Box<[u8]>) {
        let capacity = buffer.len();
        if capacity == 0 || capacity > POOL_LIMIT {
            return;
        }
        // If the pool is gone (thread exit) the buffer is simply freed.
        let _ = POOL.try_with(|pool| {
            let Ok(mut pool) = pool.try_borrow_mut() else {
                return;
            };
            if pool.bytes + capacity > POOL_LIMIT {
                return;
            }
            pool.bytes += capacity;
            match pool.shelves.iter_mut().find(|s| s.capacity == capacity) {
                Some(shelf) => shelf.buffers.push(buffer),
                None => pool.shelves.push(Shelf {
                    capacity,
                    buffers: vec![buffer],
                }),
            }
        });
    }

    pub(super) fn retained_bytes() -> usize {
        POOL.try_with(|pool| pool.try_borrow().map(|p| p.bytes).unwrap_or(0))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// What one call of a fake reader or writer does.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Move up to this many bytes (0: a reader reports EOF).
        Take(usize),
        WouldBlock,
        Interrupted,
        Fail,
        /// Claim this many bytes without looking at the buffers (a broken impl).
        Claim(usize),
    }

    fn step_error(step: Step) -> Option<io::Error> {
        match step {
            Step::WouldBlock => Some(io::ErrorKind::WouldBlock.into()),
            Step::Interrupted => Some(io::ErrorKind::Interrupted.into()),
            Step::Fail => Some(io::ErrorKind::ConnectionReset.into()),
            Step::Take(_) | Step::Claim(_) => None,
        }
    }

    /// A reader that follows a script of steps (then `WouldBlock` forever),
    /// serving bytes from `source`. With `vectored`, a vectored read fills
    /// across all slices; without, it falls back to std's default (the first
    /// non-empty slice only), like a `Read` that only implements `read`.
    struct FakeReader {
        source: VecDeque<u8>,
        steps: VecDeque<Step>,
        vectored: bool,
        /// Length of each slice offered, per call.
        calls: Vec<Vec<usize>>,
    }

    impl FakeReader {
        fn new(source: &[u8], steps: &[Step]) -> FakeReader {
            FakeReader {
                source: source.iter().copied().collect(),
                steps: steps.iter().copied().collect(),
                vectored: true,
                calls: Vec::new(),
            }
        }

        fn serve(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
            self.calls.push(bufs.iter().map(|b| b.len()).collect());
            let step = self.steps.pop_front().unwrap_or(Step::WouldBlock);
            if let Some(e) = step_error(step) {
                return Err(e);
            }
            let mut budget = match step {
                Step::Take(k) => k,
                Step::Claim(n) => return Ok(n),
                _ => unreachable!(),
            };
            let mut n = 0;
            for buf in bufs.iter_mut() {
                for byte in buf.iter_mut() {
                    if budget == 0 {
                        return Ok(n);
                    }
                    let Some(b) = self.source.pop_front() else {
                        return Ok(n);
                    };
                    *byte = b;
                    n += 1;
                    budget -= 1;
                }
            }
            Ok(n)
        }
    }

    impl Read for FakeReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.serve(&mut [IoSliceMut::new(buf)])
        }

        fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
            if self.vectored {
                self.serve(bufs)
            } else {
                let buf = bufs.iter_mut().find(|b| !b.is_empty());
                match buf {
                    Some(buf) => self.read(buf),
                    None => self.read(&mut []),
                }
            }
        }
    }

    /// A writer that follows a script of steps (then `WouldBlock` forever).
    struct FakeWriter {
        out: Vec<u8>,
        steps: VecDeque<Step>,
        vectored: bool,
        calls: Vec<Vec<usize>>,
    }

    impl FakeWriter {
        fn new(steps: &[Step]) -> FakeWriter {
            FakeWriter {
                out: Vec::new(),
                steps: steps.iter().copied().collect(),
                vectored: true,
                calls: Vec::new(),
            }
        }

        fn accept(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls.push(bufs.iter().map(|b| b.len()).collect());
            let step = self.steps.pop_front().unwrap_or(Step::WouldBlock);
            if let Some(e) = step_error(step) {
                return Err(e);
            }
            let mut budget = match step {
                Step::Take(k) => k,
                Step::Claim(n) => return Ok(n),
                _ => unreachable!(),
            };
            let mut n = 0;
            for buf in bufs {
                let k = buf.len().min(budget);
                self.out.extend_from_slice(&buf[..k]);
                n += k;
                budget -= k;
            }
            Ok(n)
        }
    }

    impl Write for FakeWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.accept(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.vectored {
                self.accept(bufs)
            } else {
                let buf = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                self.write(buf)
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn contents(ring: &Ring) -> Vec<u8> {
        let (a, b) = ring.as_slices();
        [a, b].concat()
    }

    /// A ring of capacity 8 holding "ef" at head 4 (free space wraps).
    fn ring_ef_at_4() -> Ring {
        let mut ring = Ring::new(8);
        assert_eq!(ring.push(b"abcdef"), 6);
        ring.consume(4);
        assert_eq!(ring.as_slices(), (&b"ef"[..], &b""[..]));
        ring
    }

    /// A ring of capacity 8 holding "efghij", wrapped: "efgh" at 4..8, "ij" at 0..2.
    fn ring_wrapped() -> Ring {
        let mut ring = ring_ef_at_4();
        assert_eq!(ring.push(b"ghij"), 4);
        assert_eq!(ring.as_slices(), (&b"efgh"[..], &b"ij"[..]));
        ring
    }

    // ---- construction and push/consume ----

    #[test]
    fn new_allocates_nothing() {
        let ring = Ring::new(1 << 20);
        assert!(!ring.has_storage());
        assert!(ring.is_empty());
        assert!(!ring.is_full());
        assert_eq!(
            (ring.len(), ring.free(), ring.capacity()),
            (0, 1 << 20, 1 << 20)
        );
        assert_eq!(ring.as_slices(), (&b""[..], &b""[..]));
    }

    #[test]
    fn push_nothing_allocates_nothing() {
        let mut ring = Ring::new(16);
        assert_eq!(ring.push(b""), 0);
        assert!(!ring.has_storage());
    }

    #[test]
    fn push_wraps_and_fills() {
        let mut ring = ring_ef_at_4();
        assert_eq!(ring.push(b"ghijk"), 5);
        assert_eq!(ring.as_slices(), (&b"efgh"[..], &b"ijk"[..]));
        assert_eq!(ring.free(), 1);
        assert_eq!(ring.push(b"lmn"), 1);
        assert!(ring.is_full());
        assert_eq!(ring.push(b"x"), 0);
        assert_eq!(contents(&ring), b"efghijkl");
    }

    #[test]
    fn consume_across_the_wrap() {
        let mut ring = ring_wrapped();
        ring.consume(5);
        assert_eq!(ring.as_slices(), (&b"j"[..], &b""[..]));
        assert!(ring.has_storage());
        ring.consume(1);
        assert!(ring.is_empty());
        assert!(!ring.has_storage());
    }

    #[test]
    fn consume_to_end_of_buffer_wraps_head() {
        let mut ring = ring_wrapped();
        ring.consume(4);
        assert_eq!(ring.as_slices(), (&b"ij"[..], &b""[..]));
        assert_eq!(ring.push(b"klmnop"), 6);
        assert!(ring.is_full());
        assert_eq!(contents(&ring), b"ijklmnop");
    }

    #[test]
    fn consume_zero_is_harmless() {
        let mut ring = Ring::new(4);
        ring.consume(0);
        assert!(!ring.has_storage());
        ring.push(b"ab");
        ring.consume(0);
        assert_eq!(contents(&ring), b"ab");
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "Ring::consume")]
    fn consume_more_than_held_is_a_bug() {
        let mut ring = Ring::new(4);
        ring.push(b"ab");
        ring.consume(3);
    }

    #[test]
    fn emptied_ring_reads_into_one_contiguous_region() {
        let mut ring = ring_ef_at_4();
        ring.consume(2);
        let mut src = FakeReader::new(b"0123456789", &[Step::Take(10)]);
        assert_eq!(ring.read_from(&mut src).unwrap(), 8);
        assert_eq!(src.calls, vec![vec![8]]);
        assert_eq!(ring.as_slices(), (&b"01234567"[..], &b""[..]));
    }

    // ---- read_from ----

    #[test]
    fn read_into_empty_ring_takes_whole_capacity() {
        let mut ring = Ring::new(8);
        let mut src = FakeReader::new(b"hello", &[Step::Take(100)]);
        assert_eq!(ring.read_from(&mut src).unwrap(), 5);
        assert_eq!(src.calls, vec![vec![8]]);
        assert_eq!(contents(&ring), b"hello");
        assert!(ring.has_storage());
    }

    #[test]
    fn read_over_two_free_regions_is_vectored() {
        let mut ring = ring_ef_at_4();
        let mut src = FakeReader::new(b"ghijkl", &[Step::Take(100)]);
        assert_eq!(ring.read_from(&mut src).unwrap(), 6);
        assert_eq!(src.calls, vec![vec![2, 4]]);
        assert_eq!(ring.as_slices(), (&b"efgh"[..], &b"ijkl"[..]));
        assert!(ring.is_full());
    }

    #[test]
    fn read_with_data_ending_at_buffer_end_is_one_region() {
        let mut ring = Ring::new(8);
        ring.push(b"abcdefgh");
        ring.consume(3);
        let mut src = FakeReader::new(b"xyz", &[Step::Take(100)]);
        assert_eq!(ring.read_from(&mut src).unwrap(), 3);
        assert_eq!(src.calls, vec![vec![3]]);
        assert_eq!(ring.as_slices(), (&b"defgh"[..], &b"xyz"[..]));
    }

    #[test]
    fn read_when_data_wraps_fills_the_gap() {
        let mut ring = ring_wrapped();
        let mut src = FakeReader::new(b"klmn", &[Step::Take(100)]);
        assert_eq!(ring.read_from(&mut src).unwrap(), 2);
        assert_eq!(src.calls, vec![vec![2]]);
        assert!(ring.is_full());
        assert_eq!(contents(&ring), b"efghijkl");
    }

    #[test]
    fn short_reads_add_what_arrived() {
        let mut ring = ring_ef_at_4();
        let mut src = FakeReader::new(b"ghijkl", &[Step::Take(1), Step::Take(3), Step::Take(1)]);
        assert_eq!(ring.read_from(&mut src).unwrap(), 1);
        assert_eq!(ring.read_from(&mut src).unwrap(), 3);
        assert_eq!(ring.read_from(&mut src).unwrap(), 1);
        assert_eq!(contents(&ring), b"efghijk");
        assert_eq!(ring.as_slices(), (&b"efgh"[..], &b"ijk"[..]));
    }

    #[test]
    fn non_vectored_reader_fills_first_region_only() {
        let mut ring = ring_ef_at_4();
        let mut src = FakeReader::new(b"ghijkl", &[Step::Take(100), Step::Take(100)]);
        src.vectored = false;
        assert_eq!(ring.read_from(&mut src).unwrap(), 2);
        assert_eq!(ring.read_from(&mut src).unwrap(), 4);
        assert_eq!(contents(&ring), b"efghijkl");
    }

    #[test]
    fn read_retries_interrupted() {
        let mut ring = Ring::new(8);
        let mut src = FakeReader::new(
            b"abc",
            &[Step::Interrupted, Step::Interrupted, Step::Take(9)],
        );
        assert_eq!(ring.read_from(&mut src).unwrap(), 3);
        assert_eq!(src.calls.len(), 3);
    }

    #[test]
    fn would_block_on_empty_ring_releases_storage() {
        let mut ring = Ring::new(4096);
        let before = pool_retained_bytes();
        let mut src = FakeReader::new(b"", &[Step::WouldBlock]);
        let err = ring.read_from(&mut src).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(!ring.has_storage());
        assert_eq!(ring.free(), 4096);
        // Either taken from and returned to the pool, or new and then pooled.
        assert!(pool_retained_bytes() >= before);
    }

    #[test]
    fn would_block_on_non_empty_ring_keeps_data() {
        let mut ring = ring_ef_at_4();
        let mut src = FakeReader::new(b"", &[Step::WouldBlock]);
        assert_eq!(
            ring.read_from(&mut src).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(ring.has_storage());
        assert_eq!(contents(&ring), b"ef");
    }

    #[test]
    fn error_on_empty_ring_releases_storage() {
        let mut ring = Ring::new(64);
        let mut src = FakeReader::new(b"", &[Step::Fail]);
        assert_eq!(
            ring.read_from(&mut src).unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        assert!(!ring.has_storage());
    }

    #[test]
    fn eof_is_ok_zero_with_room_left() {
        let mut ring = Ring::new(8);
        let mut src = FakeReader::new(b"ab", &[Step::Take(8), Step::Take(8)]);
        assert_eq!(ring.read_from(&mut src).unwrap(), 2);
        assert_eq!(ring.read_from(&mut src).unwrap(), 0);
        assert!(ring.free() > 0);
        assert_eq!(contents(&ring), b"ab");
    }

    #[test]
    fn eof_on_empty_ring_releases_storage() {
        let mut ring = Ring::new(8);
        let mut src = FakeReader::new(b"", &[Step::Take(8)]);
        assert_eq!(ring.read_from(&mut src).unwrap(), 0);
        assert!(!ring.has_storage());
    }

    #[test]
    fn reader_claiming_too_much_is_an_error_not_a_panic() {
        let mut ring = Ring::new(8);
        let mut src = FakeReader::new(b"", &[Step::Claim(9)]);
        let err = ring.read_from(&mut src).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(ring.is_empty());
        assert!(!ring.has_storage());
    }

    #[test]
    fn read_from_dyn_read_and_std_slices() {
        let mut ring = ring_ef_at_4();
        let mut src: &[u8] = b"ghijklmn";
        let src_dyn: &mut dyn Read = &mut src;
        assert_eq!(ring.read_from(src_dyn).unwrap(), 6);
        assert_eq!(contents(&ring), b"efghijkl");
        assert_eq!(src, b"mn");
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "full ring")]
    fn read_into_full_ring_is_a_bug() {
        let mut ring = Ring::new(2);
        ring.push(b"ab");
        let _ = ring.read_from(&mut FakeReader::new(b"c", &[Step::Take(1)]));
    }

    #[cfg(not(debug_assertions))]
    #[test]
    fn read_into_full_ring_is_an_error_in_release() {
        let mut ring = Ring::new(2);
        ring.push(b"ab");
        let err = ring.read_from(&mut FakeReader::new(b"c", &[Step::Take(1)]));
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    // ---- write_to ----

    #[test]
    fn write_from_empty_ring_does_not_call_the_writer() {
        let mut ring = Ring::new(8);
        let mut dst = FakeWriter::new(&[]);
        assert_eq!(ring.write_to(&mut dst).unwrap(), 0);
        assert!(dst.calls.is_empty());
    }

    #[test]
    fn write_of_contiguous_data_is_one_slice() {
        let mut ring = ring_ef_at_4();
        let mut dst = FakeWriter::new(&[Step::Take(100)]);
        assert_eq!(ring.write_to(&mut dst).unwrap(), 2);
        assert_eq!(dst.calls, vec![vec![2]]);
        assert_eq!(dst.out, b"ef");
    }

    #[test]
    fn write_of_wrapped_data_is_vectored() {
        let mut ring = ring_wrapped();
        let mut dst = FakeWriter::new(&[Step::Take(100)]);
        assert_eq!(ring.write_to(&mut dst).unwrap(), 6);
        assert_eq!(dst.calls, vec![vec![4, 2]]);
        assert_eq!(dst.out, b"efghij");
        assert!(ring.is_empty());
    }

    #[test]
    fn short_writes_consume_what_was_written() {
        let mut ring = ring_wrapped();
        let mut dst = FakeWriter::new(&[Step::Take(3), Step::Take(2), Step::Take(9)]);
        assert_eq!(ring.write_to(&mut dst).unwrap(), 3);
        assert_eq!(contents(&ring), b"hij");
        assert_eq!(ring.write_to(&mut dst).unwrap(), 2);
        assert_eq!(ring.as_slices(), (&b"j"[..], &b""[..]));
        assert_eq!(ring.write_to(&mut dst).unwrap(), 1);
        assert_eq!(dst.out, b"efghij");
    }

    #[test]
    fn non_vectored_writer_drains_in_two_calls() {
        let mut ring = ring_wrapped();
        let mut dst = FakeWriter::new(&[Step::Take(100), Step::Take(100)]);
        dst.vectored = false;
        assert_eq!(ring.write_to(&mut dst).unwrap(), 4);
        assert_eq!(ring.write_to(&mut dst).unwrap(), 2);
        assert_eq!(dst.out, b"efghij");
    }

    #[test]
    fn write_retries_interrupted() {
        let mut ring = ring_ef_at_4();
        let mut dst = FakeWriter::new(&[Step::Interrupted, Step::Take(100)]);
        assert_eq!(ring.write_to(&mut dst).unwrap(), 2);
        assert_eq!(dst.calls.len(), 2);
    }

    #[test]
    fn write_would_block_or_error_keeps_data() {
        let mut ring = ring_wrapped();
        let mut dst = FakeWriter::new(&[Step::WouldBlock, Step::Fail]);
        assert_eq!(
            ring.write_to(&mut dst).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(
            ring.write_to(&mut dst).unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        assert_eq!(contents(&ring), b"efghij");
        assert!(ring.has_storage());
    }

    #[test]
    fn writer_accepting_nothing_is_write_zero() {
        let mut ring = ring_ef_at_4();
        let mut dst = FakeWriter::new(&[Step::Take(0)]);
        assert_eq!(
            ring.write_to(&mut dst).unwrap_err().kind(),
            io::ErrorKind::WriteZero
        );
        assert_eq!(contents(&ring), b"ef");
    }

    #[test]
    fn writer_claiming_too_much_is_an_error_not_a_panic() {
        let mut ring = ring_ef_at_4();
        let mut dst = FakeWriter::new(&[Step::Claim(3)]);
        assert_eq!(
            ring.write_to(&mut dst).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(contents(&ring), b"ef");
    }

    #[test]
    fn write_to_dyn_write_and_vec() {
        let mut ring = ring_wrapped();
        let mut out = Vec::new();
        let dst: &mut dyn Write = &mut out;
        assert_eq!(ring.write_to(dst).unwrap(), 6);
        assert_eq!(out, b"efghij");
    }

    // ---- storage and pool ----

    #[test]
    fn drained_ring_releases_storage_to_the_pool() {
        let capacity = 12345; // a size no other test uses
        let mut ring = Ring::new(capacity);
        ring.push(b"abc");
        assert!(ring.has_storage());
        let before = pool_retained_bytes();
        let mut dst = FakeWriter::new(&[Step::Take(100)]);
        ring.write_to(&mut dst).unwrap();
        assert!(!ring.has_storage());
        assert_eq!(pool_retained_bytes(), before + capacity);
        // The next fill reuses it.
        ring.push(b"d");
        assert_eq!(pool_retained_bytes(), before);
    }

    #[test]
    fn dropped_ring_returns_storage_to_the_pool() {
        let capacity = 23456;
        let mut ring = Ring::new(capacity);
        ring.push(b"abc");
        let before = pool_retained_bytes();
        drop(ring);
        assert_eq!(pool_retained_bytes(), before + capacity);
    }

    #[test]
    fn pool_keeps_at_most_its_limit() {
        let capacity = 1 << 20;
        let mut rings: Vec<Ring> = (0..(POOL_LIMIT / capacity + 4))
            .map(|_| Ring::new(capacity))
            .collect();
        for ring in &mut rings {
            ring.push(b"x");
        }
        drop(rings);
        assert!(pool_retained_bytes() <= POOL_LIMIT);
        assert!(pool_retained_bytes() >= POOL_LIMIT - capacity);
    }

    #[test]
    fn buffers_larger_than_the_pool_are_not_kept() {
        let mut ring = Ring::new(POOL_LIMIT + 1);
        ring.push(b"x");
        let before = pool_retained_bytes();
        ring.consume(1);
        assert!(!ring.has_storage());
        assert_eq!(pool_retained_bytes(), before);
    }

    #[test]
    fn zero_capacity_ring_is_inert() {
        let mut ring = Ring::new(0);
        assert!(ring.is_full() && ring.is_empty());
        assert_eq!(ring.push(b"abc"), 0);
        assert_eq!(ring.write_to(&mut FakeWriter::new(&[])).unwrap(), 0);
        assert!(!ring.has_storage());
    }

    // ---- against a model ----

    #[derive(Debug, Clone)]
    enum Op {
        /// `None`: the reader would block; `Some((k, vectored))`: it offers up to k bytes.
        Read(Option<(usize, bool)>),
        /// `None`: the writer would block; `Some((k, vectored))`: it takes up to k bytes.
        Write(Option<(usize, bool)>),
        Push(Vec<u8>),
        /// Consume `n % (len + 1)` bytes.
        Consume(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let io = prop::option::weighted(0.9, (1usize..40, any::<bool>()));
        prop_oneof![
            3 => io.clone().prop_map(Op::Read),
            3 => io.prop_map(Op::Write),
            1 => prop::collection::vec(any::<u8>(), 0..20).prop_map(Op::Push),
            1 => any::<usize>().prop_map(Op::Consume),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_vecdeque(
            capacity in 1usize..33,
            source_len in 0usize..400,
            ops in prop::collection::vec(op(), 0..200),
        ) {
            let source: Vec<u8> = (0..source_len).map(|i| (i * 31 + 7) as u8).collect();
            let mut src = FakeReader::new(&source, &[]);
            let mut dst = FakeWriter::new(&[]);
            let mut ring = Ring::new(capacity);
            let mut model: VecDeque<u8> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Read(step) => {
                        if ring.is_full() {
                            continue;
                        }
                        let remaining = src.source.len();
                        src.steps.push_back(step.map_or(Step::WouldBlock, |(k, _)| Step::Take(k)));
                        src.vectored = step.is_some_and(|(_, v)| v);
                        let before: Vec<u8> = src.source.iter().copied().collect();
                        match ring.read_from(&mut src) {
                            Ok(n) => {
                                let (k, vectored) = step.expect("Take gives Ok");
                                let most = k.min(ring.free() + n).min(remaining);
                                if vectored {
                                    prop_assert_eq!(n, most);
                                } else {
                                    prop_assert!(n <= most);
                                    prop_assert!(n > 0 || most == 0);
                                }
                                model.extend(&before[..n]);
                            }
                            Err(e) => {
                                prop_assert!(step.is_none());
                                prop_assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                            }
                        }
                    }
                    Op::Write(step) => {
                        dst.steps.push_back(step.map_or(Step::WouldBlock, |(k, _)| Step::Take(k)));
                        dst.vectored = step.is_some_and(|(_, v)| v);
                        let calls = dst.calls.len();
                        let written = dst.out.len();
                        match ring.write_to(&mut dst) {
                            Ok(n) => {
                                if model.is_empty() {
                                    prop_assert_eq!(n, 0);
                                    prop_assert_eq!(dst.calls.len(), calls);
                                    dst.steps.clear();
                                } else {
                                    let (k, vectored) = step.expect("Take gives Ok");
                                    if vectored {
                                        prop_assert_eq!(n, k.min(model.len()));
                                    } else {
                                        prop_assert!(n > 0 && n <= k.min(model.len()));
                                    }
                                    let expected: Vec<u8> = model.drain(..n).collect();
                                    prop_assert_eq!(&dst.out[written..], &expected[..]);
                                }
                            }
                            Err(e) => {
                                prop_assert!(step.is_none() && !model.is_empty());
                                prop_assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                            }
                        }
                    }
                    Op::Push(data) => {
                        let n = ring.push(&data);
                        prop_assert_eq!(n, data.len().min(capacity - model.len()));
                        model.extend(&data[..n]);
                    }
                    Op::Consume(n) => {
                        let n = n % (model.len() + 1);
                        ring.consume(n);
                        model.drain(..n);
                    }
                }
                prop_assert_eq!(ring.len(), model.len());
                prop_assert_eq!(ring.free(), capacity - model.len());
                prop_assert_eq!(ring.is_full(), model.len() == capacity);
                prop_assert_eq!(ring.has_storage(), !model.is_empty());
                let (a, b) = ring.as_slices();
                prop_assert!(b.is_empty() || a.len() + b.len() == ring.len());
                prop_assert_eq!([a, b].concat(), model.iter().copied().collect::<Vec<u8>>());
            }
        }
    }
}
