//! The proxy-answer head parser (`connect::parse_answer`), fed all the
//! bytes so far as the tunnel does.
//!
//! Asserts beyond "no panic", for the input and a cut point drawn from it:
//! - the answer for the prefix is consistent with the answer for the whole:
//!   `Complete` on the prefix is the same `Complete` on the whole; an error
//!   on the prefix is an error of the same kind on the whole; `Partial` on
//!   the prefix only while the whole has no head ending within the prefix;
//! - a complete head lies inside what was given and inside `MAX_HEAD`, its
//!   status line is at most 203 printable bytes, its framing is coherent;
//! - `Partial` only below `MAX_HEAD` bytes;
//! - the `Proxy-Authenticate` values it returns go through the challenge
//!   parser, and the bytes after a 407-style head through a `BodyDrain`
//!   framed as the head says, which never takes more than it is given.
#![no_main]

use httptunneling::auth::challenge;
use httptunneling::connect::{parse_answer, Answer, BodyDrain, ParseError, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

fn check(buf: &[u8], r: &Result<Answer, ParseError>) {
    match r {
        Ok(Answer::Partial) => assert!(buf.len() < MAX_HEAD),
        Ok(Answer::Complete(h)) => {
            assert!(h.head_len > 0 && h.head_len <= buf.len() && h.head_len <= MAX_HEAD);
            assert!(h.status_line.len() <= 203, "{:?}", h.status_line);
            assert!(h
                .status_line
                .bytes()
                .all(|b| b == b' ' || b.is_ascii_graphic()));
            assert!(!(h.chunked && h.content_length.is_some()));
            assert!(h.proxy_authenticate.len() <= h.head_len);
            assert!(h.proxy_authenticate.iter().all(|s| !s.is_empty()));
            assert!(h.proxy_authenticate.is_empty() || !h.challenges.is_empty());
        }
        Err(ParseError::TooLarge) => assert!(buf.len() >= MAX_HEAD),
        Err(ParseError::Malformed(m)) => {
            assert!(!m.is_empty() && !m.contains('\n'), "{m:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let cut = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let buf = &data[2..];
    let cut = if buf.is_empty() { 0 } else { cut % (buf.len() + 1) };
    let whole = parse_answer(buf);
    let part = parse_answer(&buf[..cut]);
    check(buf, &whole);
    check(&buf[..cut], &part);

    match (&part, &whole) {
        (Ok(Answer::Complete(a)), w) => {
            assert_eq!(Ok(Answer::Complete(a.clone())), *w, "prefix {cut}")
        }
        (Ok(Answer::Partial), Ok(Answer::Complete(h))) => {
            assert!(h.head_len > cut, "Partial on a prefix holding the head")
        }
        (Ok(Answer::Partial), _) => {}
        (Err(ParseError::Malformed(_)), w) => {
            assert!(matches!(w, Err(ParseError::Malformed(_))), "prefix {cut}: {part:?} whole {w:?}")
        }
        (Err(ParseError::TooLarge), w) => assert_eq!(part, *w),
    }
    if let Ok(Answer::Complete(h)) = &whole {
        if h.head_len <= cut {
            assert_eq!(part, whole);
        }
        let values: Vec<&str> = h.challenges.iter().map(String::as_str).collect();
        let _ = challenge::parse(&values);
        let mut drain = if h.chunked {
            Some(BodyDrain::chunked())
        } else {
            h.content_length.map(BodyDrain::length)
        };
        if let Some(d) = drain.as_mut() {
            let rest = &buf[h.head_len..];
            if let Ok(n) = d.feed(rest) {
                assert!(n <= rest.len());
                assert!(n == rest.len() || d.is_done());
            }
        }
    }
});
