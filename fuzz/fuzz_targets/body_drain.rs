//! The body drain (`connect::BodyDrain`): skipping a refusal's body framed
//! by `Content-Length` or chunked, fed in pieces as reads deliver it.
//!
//! Input: byte 0 picks the framing (even: chunked; odd: a length from bytes
//! 1..5, so that lengths above `MAX_BODY` occur), bytes 5..7 seed the cut
//! points, the rest is the body stream (body and what follows it).
//!
//! Asserts beyond "no panic":
//! - fed in pieces it gives what it gives fed whole: the same error or not,
//!   the same number of bytes taken, the same `is_done`;
//! - a feed never takes more than offered, and takes less only once done;
//! - once done, it takes nothing more;
//! - a length body takes exactly `min(length, offered)` bytes (while within
//!   `MAX_BODY`), and is done exactly when it got them all;
//! - it never takes more than `MAX_BODY` bytes in all.
#![no_main]

use httptunneling::connect::{BodyDrain, MAX_BODY};
use libfuzzer_sys::fuzz_target;

/// Feeds `bytes` in the pieces `cuts` makes; `Ok(taken)` or the first error.
fn in_pieces(mut d: BodyDrain, bytes: &[u8], cuts: &[usize]) -> (Result<usize, String>, bool) {
    let mut at = 0;
    let mut taken = 0;
    for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let piece = &bytes[at..end.max(at)];
        at = end.max(at);
        match d.feed(piece) {
            Err(e) => return (Err(e), d.is_done()),
            Ok(n) => {
                assert!(n <= piece.len());
                taken += n;
                if n < piece.len() {
                    assert!(d.is_done(), "took {n} of {} without being done", piece.len());
                    return (Ok(taken), true);
                }
            }
        }
    }
    (Ok(taken), d.is_done())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 7 {
        return;
    }
    let length = u64::from(u32::from_le_bytes([data[1], data[2], data[3], data[4]]));
    let make = || {
        if data[0] % 2 == 0 {
            BodyDrain::chunked()
        } else {
            BodyDrain::length(length)
        }
    };
    let mut seed = u16::from_le_bytes([data[5], data[6]]) as usize | 1;
    let bytes = &data[7..];

    let mut whole = make();
    let w = whole.feed(bytes);
    if let Ok(n) = &w {
        assert!(*n <= bytes.len());
        assert!(*n == bytes.len() || whole.is_done());
        assert!(*n as u64 <= MAX_BODY);
        if whole.is_done() {
            assert_eq!(whole.feed(bytes), Ok(0));
            assert_eq!(whole.feed(b"0\r\n\r\n"), Ok(0));
        }
    }
    if data[0] % 2 == 1 && length <= MAX_BODY {
        let expect = length.min(bytes.len() as u64) as usize;
        assert_eq!(w, Ok(expect));
        assert_eq!(whole.is_done(), expect as u64 == length);
    }

    // Cut points: a small pseudo-random walk, including 0-byte pieces.
    let mut cuts = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() && cuts.len() < 64 {
        seed = seed.wrapping_mul(25173).wrapping_add(13849) & 0xffff;
        at += seed % 9;
        cuts.push(at.min(bytes.len()));
    }
    let (p, done) = in_pieces(make(), bytes, &cuts);
    assert_eq!(p.is_err(), w.is_err(), "pieces {p:?} whole {w:?}");
    match (&p, &w) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            assert_eq!(done, whole.is_done());
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => unreachable!(),
    }
    // One byte at a time.
    let ones: Vec<usize> = (1..bytes.len()).collect();
    let (p1, done1) = in_pieces(make(), bytes, &ones);
    assert_eq!(p1, w);
    if w.is_ok() {
        assert_eq!(done1, whole.is_done());
    }
});
