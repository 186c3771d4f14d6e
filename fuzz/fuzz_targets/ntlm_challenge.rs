//! The NTLM CHALLENGE_MESSAGE parser (`auth::ntlm::parse_challenge`), on
//! raw message bytes (what a proxy's base64 token decodes to).
//!
//! Asserts beyond "no panic":
//! - parse → `to_bytes` → parse is the identity for everything accepted;
//! - the parsed fields are within the message (allocates at most its size),
//!   the target info is valid and ends in MsvAvEOL (or is empty), its AV
//!   pairs iterate within it, a timestamp is 8 bytes;
//! - the message with its base64 wrapped in a `Proxy-Authenticate: NTLM`
//!   challenge (`challenge_from_header`) parses to the same result.
#![no_main]

use base64::Engine as _;
use httptunneling::auth::challenge::Challenge;
use httptunneling::auth::ntlm::{
    challenge_from_header, parse_challenge, AV_EOL, MAX_TARGET_INFO, NEGOTIATE_VERSION,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = parse_challenge(data);
    let header = Challenge {
        scheme: "NTLM".to_string(),
        token68: Some(base64::engine::general_purpose::STANDARD.encode(data)),
        params: Vec::new(),
    };
    assert_eq!(
        format!("{:?}", challenge_from_header(&header)),
        format!("{parsed:?}")
    );
    let Ok(c) = parsed else { return };
    assert!(c.target_name.len() + c.target_info.len() <= data.len());
    assert!(c.target_info.len() <= MAX_TARGET_INFO);
    if !c.target_info.is_empty() {
        let n = c.target_info.len();
        assert!(n >= 4);
        assert_eq!(u16::from_le_bytes([c.target_info[n - 4], c.target_info[n - 3]]), AV_EOL);
    }
    let mut total = 0;
    for (_, v) in c.av_pairs() {
        total += 4 + v.len();
    }
    assert!(c.target_info.is_empty() || total + 4 == c.target_info.len());
    if c.version.is_some() {
        assert!(c.flags & NEGOTIATE_VERSION != 0);
    }
    let _ = c.timestamp();

    let bytes = c.to_bytes();
    match parse_challenge(&bytes) {
        Ok(again) => assert_eq!(again, c, "to_bytes {bytes:02x?}"),
        Err(e) => panic!("to_bytes of a parsed challenge does not parse: {e} {bytes:02x?}"),
    }
});
