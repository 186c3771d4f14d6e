//! The `Proxy-Authenticate` challenge parser (`auth::challenge::parse`) and
//! its inverse `render`.
//!
//! The input is split into header values (one per line) at each 0x00 byte
//! and read as UTF-8 lossily, as `parse_answer` hands them over.
//!
//! Asserts beyond "no panic":
//! - every challenge parsed renders to a value that parses back to exactly
//!   that challenge (`parse(render(c)) == [c]`);
//! - all of them rendered as one value (`render_all`) parse back to the
//!   same list: parse ∘ render ∘ parse = parse;
//! - the skipped count of `parse_counting` is bounded by the input, and
//!   `parse` is `parse_counting`'s list;
//! - challenges come out in input order: a value parsed alone gives a
//!   contiguous run of the whole list.
#![no_main]

use httptunneling::auth::challenge::{parse, parse_counting, render, render_all};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.split('\0').collect();
    let (cs, skipped) = parse_counting(&values);
    assert_eq!(parse(&values), cs);
    assert!(skipped <= data.len() + values.len());
    assert!(cs.len() <= data.len());

    let mut at = 0;
    for v in &values {
        let alone = parse(&[v]);
        assert_eq!(&cs[at..at + alone.len()], &alone[..], "value {v:?}");
        at += alone.len();
    }
    assert_eq!(at, cs.len());

    for c in &cs {
        assert!(!c.scheme.is_empty());
        assert!(c.token68.is_none() || c.params.is_empty(), "{c:?}");
        let r = render(c);
        assert_eq!(parse(&[&r]), vec![c.clone()], "render {r:?}");
    }
    let all = render_all(&cs);
    assert_eq!(parse(&[&all]), cs, "render_all {all:?}");
});
