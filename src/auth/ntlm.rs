//! NTLMv2 client messages (MS-NLMP): the NEGOTIATE_MESSAGE we send first,
//! the parsing of the proxy's CHALLENGE_MESSAGE, and the
//! AUTHENTICATE_MESSAGE that answers it with an NTLMv2 response.
//!
//! Owns the byte layout of the three messages, the NTLMv2 arithmetic
//! (NTOWFv2, NTProofStr, LMv2) and the `NTLM <base64>` header form. It never
//! produces an LM or NTLMv1 response, never offers session security (no
//! SIGN, SEAL or KEY_EXCH: an HTTP proxy only authenticates the
//! connection), does no I/O and logs nothing; the only outside calls are the
//! OS random source in [`client_challenge`] and the clock in
//! [`filetime_now`]. Which connection the messages travel on, and when, is
//! the caller's business.
//!
//! The proxy's message is untrusted: every length and offset is checked
//! against the message, nothing is allocated beyond the message's own size,
//! and a malformed message is an [`Error`], never a panic.
//!
//! Not done: the MIC (MS-NLMP §3.1.5.1.2 says a client SHOULD send one when
//! the challenge has MsvAvTimestamp; proxies do not check it, curl and cntlm
//! do not send it), channel bindings, and the Version field.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md4::{Digest as _, Md4};
use md5::Md5;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Text fields are UTF-16LE.
pub const NEGOTIATE_UNICODE: u32 = 0x0000_0001;
/// Text fields are in the OEM code page.
pub const NEGOTIATE_OEM: u32 = 0x0000_0002;
/// The server is asked to send its name (TargetName).
pub const REQUEST_TARGET: u32 = 0x0000_0004;
/// Session signing (never set by us).
pub const NEGOTIATE_SIGN: u32 = 0x0000_0010;
/// Session sealing (never set by us).
pub const NEGOTIATE_SEAL: u32 = 0x0000_0020;
/// LAN Manager session key (never set by us: LM is never used).
pub const NEGOTIATE_LM_KEY: u32 = 0x0000_0080;
/// NTLM authentication (v1 or v2; we answer only with v2).
pub const NEGOTIATE_NTLM: u32 = 0x0000_0200;
/// A dummy signature is always present.
pub const NEGOTIATE_ALWAYS_SIGN: u32 = 0x0000_8000;
/// The target is a domain (set by the server).
pub const TARGET_TYPE_DOMAIN: u32 = 0x0001_0000;
/// The target is a server (set by the server).
pub const TARGET_TYPE_SERVER: u32 = 0x0002_0000;
/// NTLM2 session security / extended session security.
pub const NEGOTIATE_EXTENDED_SESSIONSECURITY: u32 = 0x0008_0000;
/// The CHALLENGE_MESSAGE carries TargetInfo (set by the server).
pub const NEGOTIATE_TARGET_INFO: u32 = 0x0080_0000;
/// The message carries a Version field.
pub const NEGOTIATE_VERSION: u32 = 0x0200_0000;
/// 128-bit session keys.
pub const NEGOTIATE_128: u32 = 0x2000_0000;
/// Explicit key exchange (never set by us).
pub const NEGOTIATE_KEY_EXCH: u32 = 0x4000_0000;
/// 56-bit session keys.
pub const NEGOTIATE_56: u32 = 0x8000_0000;

/// The flags of our NEGOTIATE_MESSAGE.
///
/// UNICODE and OEM both, so the server picks (all modern ones pick
/// UNICODE); REQUEST_TARGET, since the target info that NTLMv2 needs comes
/// with the target; NTLM; ALWAYS_SIGN and EXTENDED_SESSIONSECURITY, which
/// every current Windows, Samba and curl client sets and some servers
/// expect; 128 and 56, likewise. Not set: TARGET_INFO (a server statement
/// about its CHALLENGE_MESSAGE, not a request), VERSION (debugging only,
/// and we would have to invent an OS version), SIGN, SEAL and KEY_EXCH (no
/// session security over HTTP), LM_KEY (no LM ever), the
/// domain/workstation-supplied flags (we send neither in the negotiate).
pub const NEGOTIATE_FLAGS: u32 = NEGOTIATE_UNICODE
    | NEGOTIATE_OEM
    | REQUEST_TARGET
    | NEGOTIATE_NTLM
    | NEGOTIATE_ALWAYS_SIGN
    | NEGOTIATE_EXTENDED_SESSIONSECURITY
    | NEGOTIATE_128
    | NEGOTIATE_56;

/// AV pair ids (MS-NLMP §2.2.2.1) that this module looks at.
pub const AV_EOL: u16 = 0;
/// MsvAvNbComputerName.
pub const AV_NB_COMPUTER_NAME: u16 = 1;
/// MsvAvNbDomainName.
pub const AV_NB_DOMAIN_NAME: u16 = 2;
/// MsvAvTimestamp: a FILETIME, 8 bytes.
pub const AV_TIMESTAMP: u16 = 7;

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
/// A target info longer than this is refused: real ones are a few hundred
/// bytes, and the NTLMv2 response that repeats it must fit a 16-bit length.
pub const MAX_TARGET_INFO: usize = 8192;

/// Why a message cannot be parsed or built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The `Proxy-Authenticate` challenge is not `NTLM`.
    NotNtlm,
    /// An `NTLM` challenge without a token (the proxy's first, bare
    /// `NTLM`): there is nothing to parse yet.
    NoToken,
    /// The token is not base64.
    Base64,
    /// Shorter than the fixed part of the message.
    TooShort(usize),
    /// Not starting with `NTLMSSP\0`.
    BadSignature,
    /// A message of another type (the number) where a CHALLENGE_MESSAGE (2)
    /// was expected.
    WrongType(u32),
    /// A field's offset and length point outside the message or into its
    /// fixed header.
    OutOfBounds(&'static str),
    /// The target info's AV pairs are malformed (the reason).
    BadTargetInfo(&'static str),
    /// A field to be sent does not fit a 16-bit length (which one).
    TooLong(&'static str),
    /// The OS random source failed.
    Random,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotNtlm => write!(f, "not an NTLM challenge"),
            Error::NoToken => write!(f, "NTLM challenge without a token"),
            Error::Base64 => write!(f, "NTLM token is not valid base64"),
            Error::TooShort(n) => write!(f, "NTLM message too short ({n} bytes)"),
            Error::BadSignature => write!(f, "NTLM message without the NTLMSSP signature"),
            Error::WrongType(t) => write!(f, "NTLM message of type {t}, expected a challenge (2)"),
            Error::OutOfBounds(what) => {
                write!(f, "NTLM challenge: {what} lies outside the message")
            }
            Error::BadTargetInfo(why) => write!(f, "NTLM challenge: target info {why}"),
            Error::TooLong(what) => write!(f, "NTLM {what} too long"),
            Error::Random => write!(f, "the system's random source failed"),
        }
    }
}

impl std::error::Error for Error {}

/// The NEGOTIATE_MESSAGE (32 bytes): [`NEGOTIATE_FLAGS`], no domain, no
/// workstation, no version.
pub fn negotiate() -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&NEGOTIATE_FLAGS.to_le_bytes());
    // DomainNameFields and WorkstationFields: empty, offset where the
    // payload would start (MS-NLMP §2.2.1.1).
    for _ in 0..2 {
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&32u32.to_le_bytes());
    }
    m
}

/// A parsed CHALLENGE_MESSAGE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge2 {
    /// NegotiateFlags as the server sent them.
    pub flags: u32,
    /// The 8-byte server challenge.
    pub server_challenge: [u8; 8],
    /// TargetName, raw (UTF-16LE or OEM per the flags).
    pub target_name: Vec<u8>,
    /// TargetInfo, raw AV pairs through MsvAvEOL (anything after EOL is
    /// dropped); empty when the server sent none. Well formed: every pair
    /// lies inside, MsvAvTimestamp is 8 bytes.
    pub target_info: Vec<u8>,
    /// The Version field, when NEGOTIATE_VERSION is set and the header has
    /// room for it.
    pub version: Option<[u8; 8]>,
}

impl Challenge2 {
    /// The AV pairs of the target info, `(id, value)`, before MsvAvEOL.
    pub fn av_pairs(&self) -> impl Iterator<Item = (u16, &[u8])> + '_ {
        AvIter {
            rest: &self.target_info,
        }
    }

    /// MsvAvTimestamp (a FILETIME), when the server sent one.
    pub fn timestamp(&self) -> Option<u64> {
        self.av_pairs()
            .find(|(id, _)| *id == AV_TIMESTAMP)
            .and_then(|(_, v)| v.try_into().ok())
            .map(u64::from_le_bytes)
    }

    /// The message bytes: a 48-byte header, the version when present, then
    /// TargetName and TargetInfo. [`parse_challenge`] of the result gives
    /// `self` back whenever `self` is well formed (target info valid and
    /// ending in MsvAvEOL, or empty; version present exactly when the flags
    /// say NEGOTIATE_VERSION; fields under 64 KiB). For tests and fakes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = 48 + if self.version.is_some() { 8 } else { 0 };
        let mut m = Vec::with_capacity(header + self.target_name.len() + self.target_info.len());
        m.extend_from_slice(SIGNATURE);
        m.extend_from_slice(&2u32.to_le_bytes());
        push_fields(&mut m, self.target_name.len(), header);
        m.extend_from_slice(&self.flags.to_le_bytes());
        m.extend_from_slice(&self.server_challenge);
        m.extend_from_slice(&[0; 8]);
        push_fields(
            &mut m,
            self.target_info.len(),
            header + self.target_name.len(),
        );
        if let Some(v) = &self.version {
            m.extend_from_slice(v);
        }
        m.extend_from_slice(&self.target_name);
        m.extend_from_slice(&self.target_info);
        m
    }
}

fn push_fields(m: &mut Vec<u8>, len: usize, offset: usize) {
    let len = len as u16;
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(&(offset as u32).to_le_bytes());
}

struct AvIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AvIter<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        // Validated at parse; stays safe on anything all the same.
        let id = u16::from_le_bytes([*self.rest.first()?, *self.rest.get(1)?]);
        let len = usize::from(u16::from_le_bytes([*self.rest.get(2)?, *self.rest.get(3)?]));
        if id == AV_EOL {
            return None;
        }
        let value = self.rest.get(4..4 + len)?;
        self.rest = &self.rest[4 + len..];
        Some((id, value))
    }
}

fn u16_at(m: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([m[at], m[at + 1]])
}

fn u32_at(m: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]])
}

/// The (offset, length) of the security buffer whose fields start at
/// `at`; `m` is at least `at + 8` long. An empty buffer may have any offset
/// in the message, and is returned as `(0, 0)` so that slicing `m` with it
/// cannot go out of bounds (fuzz target `ntlm_challenge`, regression tests
/// `fuzz_ntlm_challenge_*`).
fn buffer(m: &[u8], at: usize, header: usize, what: &'static str) -> Result<(usize, usize), Error> {
    let len = usize::from(u16_at(m, at));
    let offset = u32_at(m, at + 4) as usize;
    if len == 0 {
        return Ok((0, 0));
    }
    match offset.checked_add(len) {
        Some(end) if offset >= header && end <= m.len() => Ok((offset, len)),
        _ => Err(Error::OutOfBounds(what)),
    }
}

/// Parses a CHALLENGE_MESSAGE (MS-NLMP §2.2.1.2).
///
/// Accepts the short forms of old servers (32 bytes, no target info), reads
/// TargetInfo when the header has room for its fields, and Version when the
/// flag is set and the header has room for it. Errors: too short, wrong
/// signature or type, a buffer outside the message or overlapping the
/// fixed header, a malformed or over-long ([`MAX_TARGET_INFO`]) target
/// info. Never panics; allocates at most the message's size.
pub fn parse_challenge(m: &[u8]) -> Result<Challenge2, Error> {
    if m.len() < 32 {
        return Err(Error::TooShort(m.len()));
    }
    if &m[..8] != SIGNATURE {
        return Err(Error::BadSignature);
    }
    let t = u32_at(m, 8);
    if t != 2 {
        return Err(Error::WrongType(t));
    }
    let flags = u32_at(m, 20);
    let mut server_challenge = [0; 8];
    server_challenge.copy_from_slice(&m[24..32]);

    // Where the payload starts bounds the header: the target info fields
    // (40..48) and the version (48..56) exist only when it starts after them.
    let name_len = usize::from(u16_at(m, 12));
    let name_off = u32_at(m, 16) as usize;
    let payload_start = |limit: usize| m.len() >= limit && (name_len == 0 || name_off >= limit);
    // MS-NLMP 2.2.1.2: TargetInfoFields are meaningful only with
    // NEGOTIATE_TARGET_INFO; older servers (squid's ntlm_fake_auth) send a
    // 40-byte header whose bytes 40.. are already payload.
    let has_info = flags & NEGOTIATE_TARGET_INFO != 0 && payload_start(48);
    let info = if has_info {
        let info_len = usize::from(u16_at(m, 40));
        let info_off = u32_at(m, 44) as usize;
        let has_version = flags & NEGOTIATE_VERSION != 0
            && payload_start(56)
            && (info_len == 0 || info_off >= 56);
        let header = if has_version { 56 } else { 48 };
        Some((buffer(m, 40, header, "target info")?, has_version, header))
    } else {
        None
    };
    let header = info.map_or(32, |(_, _, h)| h);
    // The target name is informational (NTLMv2 uses the user's domain):
    // one that lies outside the message, as some servers send with an
    // uninitialised offset, is taken as empty rather than refused.
    let target_name = match buffer(m, 12, header, "target name") {
        Ok((off, len)) => m[off..off + len].to_vec(),
        Err(_) => Vec::new(),
    };

    let mut target_info = Vec::new();
    let mut version = None;
    if let Some(((off, len), has_version, _)) = info {
        if len > MAX_TARGET_INFO {
            return Err(Error::TooLong("target info"));
        }
        target_info = validate_target_info(&m[off..off + len])?.to_vec();
        if has_version {
            let mut v = [0; 8];
            v.copy_from_slice(&m[48..56]);
            version = Some(v);
        }
    }
    Ok(Challenge2 {
        flags,
        server_challenge,
        target_name,
        target_info,
        version,
    })
}

/// Checks the AV pairs of `info` and returns them through MsvAvEOL
/// (or empty when `info` is).
fn validate_target_info(info: &[u8]) -> Result<&[u8], Error> {
    if info.is_empty() {
        return Ok(info);
    }
    let mut at = 0;
    loop {
        if info.len() - at < 4 {
            return Err(Error::BadTargetInfo("ends without MsvAvEOL"));
        }
        let id = u16_at(info, at);
        let len = usize::from(u16_at(info, at + 2));
        at += 4;
        if id == AV_EOL {
            return Ok(&info[..at]);
        }
        if len > info.len() - at {
            return Err(Error::BadTargetInfo("has a pair longer than itself"));
        }
        if id == AV_TIMESTAMP && len != 8 {
            return Err(Error::BadTargetInfo("has a timestamp that is not 8 bytes"));
        }
        at += len;
    }
}

/// Decodes the `Proxy-Authenticate: NTLM <base64>` challenge into a
/// CHALLENGE_MESSAGE. Padding is optional. Errors: another scheme, no
/// token (the bare `NTLM` of the first 407), bad base64, or what
/// [`parse_challenge`] refuses.
pub fn challenge_from_header(c: &super::challenge::Challenge) -> Result<Challenge2, Error> {
    if !c.is("NTLM") {
        return Err(Error::NotNtlm);
    }
    let token = c.token68.as_deref().ok_or(Error::NoToken)?;
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let bytes = LENIENT.decode(token).map_err(|_| Error::Base64)?;
    parse_challenge(&bytes)
}

/// The `Proxy-Authorization` value for a message: `NTLM <base64>`.
pub fn header_value(message: &[u8]) -> String {
    format!("NTLM {}", STANDARD.encode(message))
}

/// Splits a configured user name into `(domain, user)`: `DOMAIN\user`
/// (first backslash) or `user@domain` (last `@`), else `("", name)`. A
/// backslash wins over `@` (`CORP\a@b` is user `a@b` of `CORP`).
///
/// Splitting `user@domain` sends the part after `@` as the domain, as cntlm
/// does; Windows would instead send the whole UPN as the user with an empty
/// domain. Domain controllers accept both.
pub fn split_user(name: &str) -> (&str, &str) {
    if let Some((d, u)) = name.split_once('\\') {
        (d, u)
    } else if let Some((u, d)) = name.rsplit_once('@') {
        (d, u)
    } else {
        ("", name)
    }
}

/// The current time as a FILETIME (100 ns ticks since 1601-01-01 UTC), the
/// NTLMv2 timestamp used when the challenge carries none.
pub fn filetime_now() -> u64 {
    const UNIX_EPOCH_AS_FILETIME: u64 = 116_444_736_000_000_000;
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UNIX_EPOCH_AS_FILETIME
        .saturating_add(since.as_secs().saturating_mul(10_000_000))
        .saturating_add(u64::from(since.subsec_nanos() / 100))
}

/// A fresh 8-byte client challenge from the OS random source.
pub fn client_challenge() -> Result<[u8; 8], Error> {
    let mut c = [0u8; 8];
    getrandom::fill(&mut c).map_err(|_| Error::Random)?;
    Ok(c)
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = <Hmac<Md5> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// Upper case the way Windows does it for NTOWFv2: character by character,
/// keeping a character whose upper case is not a single character (`ß`).
fn upper(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut u = c.to_uppercase();
            match (u.next(), u.next()) {
                (Some(one), None) => one,
                _ => c,
            }
        })
        .collect()
}

/// NTOWFv2 (MS-NLMP §3.3.2), the NTLMv2 response key:
/// `HMAC_MD5(MD4(UTF16(password)), UTF16(UPPER(user) ++ domain))`.
pub fn ntowfv2(password: &str, user: &str, domain: &str) -> [u8; 16] {
    let nt_hash = Md4::digest(utf16le(password));
    let who = utf16le(&(upper(user) + domain));
    hmac_md5(&nt_hash, &[&who])
}

/// The NTLMv2 responses (MS-NLMP §3.3.2) for `key` = [`ntowfv2`]:
/// `(NtChallengeResponse, LmChallengeResponse)`. The NT response is
/// NTProofStr (its first 16 bytes) followed by the blob
/// `01 01 Z(6) time client_challenge Z(4) target_info Z(4)`; `target_info`
/// is the server's AV pairs through MsvAvEOL (an empty one is sent as a
/// lone MsvAvEOL). The LM response is LMv2 (HMAC over both challenges, then
/// the client challenge), or Z(24) when `lm_zero` (the challenge had
/// MsvAvTimestamp, MS-NLMP §3.1.5.1.2).
pub fn ntlmv2_responses(
    key: &[u8; 16],
    server_challenge: &[u8; 8],
    client_challenge: &[u8; 8],
    time: u64,
    target_info: &[u8],
    lm_zero: bool,
) -> (Vec<u8>, [u8; 24]) {
    let eol = [0u8; 4];
    let info = if target_info.is_empty() {
        &eol[..]
    } else {
        target_info
    };
    let mut blob = Vec::with_capacity(28 + info.len() + 4);
    blob.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
    blob.extend_from_slice(&time.to_le_bytes());
    blob.extend_from_slice(client_challenge);
    blob.extend_from_slice(&[0; 4]);
    blob.extend_from_slice(info);
    blob.extend_from_slice(&[0; 4]);
    let proof = hmac_md5(key, &[server_challenge, &blob]);
    let mut nt = Vec::with_capacity(16 + blob.len());
    nt.extend_from_slice(&proof);
    nt.extend_from_slice(&blob);
    let mut lm = [0u8; 24];
    if !lm_zero {
        lm[..16].copy_from_slice(&hmac_md5(key, &[server_challenge, client_challenge]));
        lm[16..].copy_from_slice(client_challenge);
    }
    (nt, lm)
}

/// The AUTHENTICATE_MESSAGE answering `ch` (MS-NLMP §2.2.1.3), NTLMv2 only.
///
/// `user` and `domain` as split by [`split_user`]; `workstation` may be
/// empty. `client_challenge` and `timestamp` (a FILETIME) are the caller's
/// so that the result is reproducible ([`client_challenge`] and
/// [`filetime_now`] give real ones); the challenge's MsvAvTimestamp, when
/// present, is used instead of `timestamp` and makes the LM response Z(24).
/// Text fields are UTF-16LE when the server chose UNICODE, else sent as
/// their UTF-8 bytes (the OEM code page is unknowable; ASCII is the same in
/// all). The flags are the server's, limited to [`NEGOTIATE_FLAGS`] and
/// TARGET_INFO, with exactly one of UNICODE and OEM. Layout: 64-byte
/// header (no version, no MIC), then LM response, NT response, domain,
/// user, workstation; no session key.
///
/// Errors: a field over 64 KiB.
pub fn authenticate(
    ch: &Challenge2,
    user: &str,
    domain: &str,
    password: &str,
    workstation: &str,
    client_challenge: [u8; 8],
    timestamp: u64,
) -> Result<Vec<u8>, Error> {
    let server_time = ch.timestamp();
    let key = ntowfv2(password, user, domain);
    let (nt, lm) = ntlmv2_responses(
        &key,
        &ch.server_challenge,
        &client_challenge,
        server_time.unwrap_or(timestamp),
        &ch.target_info,
        server_time.is_some(),
    );
    let unicode = ch.flags & NEGOTIATE_UNICODE != 0;
    let mut flags = ch.flags & (NEGOTIATE_FLAGS | NEGOTIATE_TARGET_INFO);
    if unicode {
        flags &= !NEGOTIATE_OEM;
    } else {
        flags |= NEGOTIATE_OEM;
    }
    let text = |s: &str| {
        if unicode {
            utf16le(s)
        } else {
            s.as_bytes().to_vec()
        }
    };
    let fields: [(&'static str, Vec<u8>); 5] = [
        ("LM response", lm.to_vec()),
        ("NT response", nt),
        ("domain", text(domain)),
        ("user", text(user)),
        ("workstation", text(workstation)),
    ];
    for (what, f) in &fields {
        if f.len() > usize::from(u16::MAX) {
            return Err(Error::TooLong(what));
        }
    }
    const HEADER: usize = 64;
    let total = HEADER + fields.iter().map(|(_, f)| f.len()).sum::<usize>();
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&3u32.to_le_bytes());
    let mut offset = HEADER;
    // LmChallengeResponseFields, NtChallengeResponseFields, DomainNameFields,
    // UserNameFields, WorkstationFields, in this order, then the empty
    // EncryptedRandomSessionKeyFields.
    for (_, f) in &fields {
        push_fields(&mut m, f.len(), offset);
        offset += f.len();
    }
    push_fields(&mut m, 0, offset);
    m.extend_from_slice(&flags.to_le_bytes());
    for (_, f) in &fields {
        m.extend_from_slice(f);
    }
    debug_assert_eq!(m.len(), total);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// MS-NLMP §4.2.4.3, the CHALLENGE_MESSAGE of the NTLMv2 example.
    const SPEC_CHALLENGE: &str = "
        4e 54 4c 4d 53 53 50 00 02 00 00 00 0c 00 0c 00
        38 00 00 00 33 82 8a e2 01 23 45 67 89 ab cd ef
        00 00 00 00 00 00 00 00 24 00 24 00 44 00 00 00
        06 00 70 17 00 00 00 0f 53 00 65 00 72 00 76 00
        65 00 72 00 02 00 0c 00 44 00 6f 00 6d 00 61 00
        69 00 6e 00 01 00 0c 00 53 00 65 00 72 00 76 00
        65 00 72 00 00 00 00 00";

    /// MS-NLMP §4.2.4: the AV pairs (NbDomainName "Domain", NbComputerName
    /// "Server", EOL).
    fn spec_target_info() -> Vec<u8> {
        let mut t = vec![2, 0, 12, 0];
        t.extend(utf16le("Domain"));
        t.extend([1, 0, 12, 0]);
        t.extend(utf16le("Server"));
        t.extend([0, 0, 0, 0]);
        t
    }

    const SERVER_CHALLENGE: [u8; 8] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
    const CLIENT_CHALLENGE: [u8; 8] = [0xaa; 8];

    #[test]
    fn spec_ntowfv2() {
        assert_eq!(
            ntowfv2("Password", "User", "Domain").to_vec(),
            unhex("0c868a403bfd7a93a3001ef22ef02e3f")
        );
    }

    #[test]
    fn spec_ntproofstr_and_lmv2() {
        let key = ntowfv2("Password", "User", "Domain");
        let (nt, lm) = ntlmv2_responses(
            &key,
            &SERVER_CHALLENGE,
            &CLIENT_CHALLENGE,
            0,
            &spec_target_info(),
            false,
        );
        assert_eq!(nt[..16].to_vec(), unhex("68cd0ab851e51c96aabc927bebef6a1c"));
        let mut blob = unhex("0101000000000000 0000000000000000 aaaaaaaaaaaaaaaa 00000000");
        blob.extend(spec_target_info());
        blob.extend([0; 4]);
        assert_eq!(nt[16..], blob[..]);
        assert_eq!(
            lm.to_vec(),
            unhex("86c35097ac9cec102554764a57cccc19 aaaaaaaaaaaaaaaa")
        );
    }

    #[test]
    fn spec_challenge_parses_and_renders_back() {
        let bytes = unhex(SPEC_CHALLENGE);
        let c = parse_challenge(&bytes).unwrap();
        assert_eq!(c.flags, 0xe28a_8233);
        assert_eq!(c.server_challenge, SERVER_CHALLENGE);
        assert_eq!(c.target_name, utf16le("Server"));
        assert_eq!(c.target_info, spec_target_info());
        assert_eq!(c.version, Some([0x06, 0x00, 0x70, 0x17, 0, 0, 0, 0x0f]));
        assert_eq!(c.timestamp(), None);
        let pairs: Vec<(u16, Vec<u8>)> = c.av_pairs().map(|(i, v)| (i, v.to_vec())).collect();
        assert_eq!(
            pairs,
            [
                (AV_NB_DOMAIN_NAME, utf16le("Domain")),
                (AV_NB_COMPUTER_NAME, utf16le("Server"))
            ]
        );
        assert_eq!(c.to_bytes(), bytes);
    }

    /// Reads the security buffers of our AUTHENTICATE_MESSAGE.
    fn fields(m: &[u8]) -> Vec<Vec<u8>> {
        (0..6)
            .map(|k| {
                let at = 12 + 8 * k;
                let len = usize::from(u16_at(m, at));
                assert_eq!(u16_at(m, at + 2), u16_at(m, at), "maxlen = len");
                let off = u32_at(m, at + 4) as usize;
                m[off..off + len].to_vec()
            })
            .collect()
    }

    #[test]
    fn spec_authenticate_message_carries_the_spec_responses() {
        let c = parse_challenge(&unhex(SPEC_CHALLENGE)).unwrap();
        let m = authenticate(
            &c,
            "User",
            "Domain",
            "Password",
            "COMPUTER",
            CLIENT_CHALLENGE,
            0,
        )
        .unwrap();
        assert_eq!(&m[..12], b"NTLMSSP\0\x03\0\0\0");
        let f = fields(&m);
        assert_eq!(
            f[0],
            unhex("86c35097ac9cec102554764a57cccc19 aaaaaaaaaaaaaaaa")
        );
        assert_eq!(f[1][..16], unhex("68cd0ab851e51c96aabc927bebef6a1c")[..]);
        assert_eq!(f[2], utf16le("Domain"));
        assert_eq!(f[3], utf16le("User"));
        assert_eq!(f[4], utf16le("COMPUTER"));
        assert!(f[5].is_empty());
        let flags = u32_at(&m, 60);
        // The server's flags, less what we never do.
        assert_eq!(
            flags,
            0xe28a_8233
                & !(NEGOTIATE_OEM
                    | NEGOTIATE_SIGN
                    | NEGOTIATE_SEAL
                    | NEGOTIATE_KEY_EXCH
                    | NEGOTIATE_VERSION
                    | TARGET_TYPE_SERVER)
        );
        assert_eq!(u32_at(&m, 12 + 4), 64, "payload right after the header");
        assert_eq!(m.len(), 64 + 24 + f[1].len() + 12 + 8 + 16);
    }

    #[test]
    fn server_timestamp_is_used_and_zeroes_the_lm_response() {
        let mut info = vec![AV_TIMESTAMP as u8, 0, 8, 0];
        info.extend(0x01d9_0000_1234_5678u64.to_le_bytes());
        info.extend(spec_target_info());
        let c = Challenge2 {
            flags: NEGOTIATE_UNICODE | NEGOTIATE_NTLM | NEGOTIATE_TARGET_INFO,
            server_challenge: SERVER_CHALLENGE,
            target_name: vec![],
            target_info: info.clone(),
            version: None,
        };
        let c = parse_challenge(&c.to_bytes()).unwrap();
        assert_eq!(c.timestamp(), Some(0x01d9_0000_1234_5678));
        let m = authenticate(&c, "u", "D", "p", "", CLIENT_CHALLENGE, 42).unwrap();
        let f = fields(&m);
        assert_eq!(f[0], [0; 24]);
        assert_eq!(f[1][24..32], 0x01d9_0000_1234_5678u64.to_le_bytes());
        assert_eq!(f[1][44..44 + info.len()], info[..]);
        assert!(f[4].is_empty());
    }

    #[test]
    fn caller_timestamp_without_server_one_and_empty_target_info() {
        let c = Challenge2 {
            flags: NEGOTIATE_OEM | NEGOTIATE_NTLM,
            server_challenge: SERVER_CHALLENGE,
            target_name: b"SRV".to_vec(),
            target_info: vec![],
            version: None,
        };
        let c = parse_challenge(&c.to_bytes()).unwrap();
        let m = authenticate(&c, "jdoe", "CORP", "pw", "WS", CLIENT_CHALLENGE, 7).unwrap();
        let f = fields(&m);
        assert_eq!(f[1][24..32], 7u64.to_le_bytes());
        // Lone EOL then Z(4).
        assert_eq!(f[1][44..], [0; 8]);
        assert_ne!(f[0], [0; 24]);
        // OEM: the text as bytes.
        assert_eq!(f[3], b"jdoe");
        assert_eq!(
            u32_at(&m, 60) & (NEGOTIATE_OEM | NEGOTIATE_UNICODE),
            NEGOTIATE_OEM
        );
    }

    #[test]
    fn negotiate_message_bytes() {
        let m = negotiate();
        assert_eq!(m.len(), 32);
        assert_eq!(&m[..12], b"NTLMSSP\0\x01\0\0\0");
        assert_eq!(u32_at(&m, 12), 0xa008_8207);
        assert_eq!(m[16..], [0, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0]);
        assert_eq!(
            header_value(&m),
            "NTLM TlRMTVNTUAABAAAAB4IIoAAAAAAgAAAAAAAAACAAAAA="
        );
    }

    #[test]
    fn header_round_trip_and_refusals() {
        use crate::auth::challenge::parse;
        let bytes = unhex(SPEC_CHALLENGE);
        let v = header_value(&bytes);
        let c = &parse(&[&v])[0];
        assert_eq!(
            challenge_from_header(c).unwrap(),
            parse_challenge(&bytes).unwrap()
        );
        // Unpadded base64 is accepted too.
        let unpadded = v.trim_end_matches('=');
        assert!(challenge_from_header(&parse(&[unpadded])[0]).is_ok());
        assert_eq!(
            challenge_from_header(&parse(&["NTLM"])[0]),
            Err(Error::NoToken)
        );
        assert_eq!(
            challenge_from_header(&parse(&["Basic realm=x"])[0]),
            Err(Error::NotNtlm)
        );
        assert_eq!(
            challenge_from_header(&parse(&["NTLM a"])[0]),
            Err(Error::Base64)
        );
        let neg = header_value(&negotiate());
        assert_eq!(
            challenge_from_header(&parse(&[&neg])[0]),
            Err(Error::WrongType(1))
        );
    }

    #[test]
    fn bogus_challenges_are_errors() {
        let good = unhex(SPEC_CHALLENGE);
        assert_eq!(parse_challenge(&good[..31]), Err(Error::TooShort(31)));
        let mut m = good.clone();
        m[0] = b'X';
        assert_eq!(parse_challenge(&m), Err(Error::BadSignature));
        // Target name running past the end: informational only, so taken
        // as empty (some servers leave its offset uninitialised).
        let mut m = good.clone();
        m[12] = 0xff;
        assert!(parse_challenge(&m).unwrap().target_name.is_empty());
        // Target info offset near u32::MAX: no overflow.
        let mut m = good.clone();
        m[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_challenge(&m), Err(Error::OutOfBounds("target info")));
        // Target info pointing into the header.
        let mut m = good.clone();
        m[44..48].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(parse_challenge(&m), Err(Error::OutOfBounds("target info")));
        // An AV pair longer than the target info.
        let mut m = good.clone();
        m[0x46] = 0x40;
        assert!(matches!(parse_challenge(&m), Err(Error::BadTargetInfo(_))));
        // Truncated: the last bytes (the EOL) cut off, lengths left as sent.
        assert_eq!(
            parse_challenge(&good[..good.len() - 2]),
            Err(Error::OutOfBounds("target info"))
        );
        // Target info without EOL.
        let c = Challenge2 {
            flags: NEGOTIATE_UNICODE | NEGOTIATE_TARGET_INFO,
            server_challenge: [0; 8],
            target_name: vec![],
            target_info: vec![1, 0, 2, 0, b'a', 0],
            version: None,
        };
        assert_eq!(
            parse_challenge(&c.to_bytes()),
            Err(Error::BadTargetInfo("ends without MsvAvEOL"))
        );
        // A timestamp of the wrong size.
        let c = Challenge2 {
            target_info: vec![7, 0, 4, 0, 1, 2, 3, 4, 0, 0, 0, 0],
            ..c
        };
        assert!(matches!(
            parse_challenge(&c.to_bytes()),
            Err(Error::BadTargetInfo(_))
        ));
        // Over-long target info.
        let mut info = vec![1, 0, 0x00, 0x24];
        info.resize(4 + 0x2400, 0);
        info.extend([0; 4]);
        let c = Challenge2 {
            target_info: info,
            ..c
        };
        assert_eq!(
            parse_challenge(&c.to_bytes()),
            Err(Error::TooLong("target info"))
        );
        for e in [
            Error::OutOfBounds("x"),
            Error::TooShort(3),
            Error::WrongType(1),
        ] {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn short_old_style_challenge() {
        // 32 bytes: no target info fields at all.
        let mut m = unhex(SPEC_CHALLENGE)[..32].to_vec();
        m[12..20].copy_from_slice(&[0; 8]);
        let c = parse_challenge(&m).unwrap();
        assert!(c.target_info.is_empty() && c.target_name.is_empty() && c.version.is_none());
        // Trailing bytes after EOL are dropped.
        let c2 = Challenge2 {
            flags: NEGOTIATE_UNICODE | NEGOTIATE_TARGET_INFO,
            server_challenge: [0; 8],
            target_name: vec![],
            target_info: vec![0, 0, 0, 0, 9, 9],
            version: None,
        };
        assert_eq!(parse_challenge(&c2.to_bytes()).unwrap().target_info, [0; 4]);
    }

    #[test]
    fn split_user_forms() {
        assert_eq!(split_user(r"CORP\jdoe"), ("CORP", "jdoe"));
        assert_eq!(split_user("jdoe@corp.example"), ("corp.example", "jdoe"));
        assert_eq!(split_user(r"CORP\j@x"), ("CORP", "j@x"));
        assert_eq!(split_user("a@b@c"), ("c", "a@b"));
        assert_eq!(split_user("jdoe"), ("", "jdoe"));
        assert_eq!(split_user(r"\jdoe"), ("", "jdoe"));
    }

    #[test]
    fn uppercase_is_per_character() {
        assert_eq!(upper("straße é"), "STRAßE É");
        assert_eq!(
            ntowfv2("Password", "user", "Domain"),
            ntowfv2("Password", "USER", "Domain")
        );
        assert_ne!(
            ntowfv2("Password", "User", "domain"),
            ntowfv2("Password", "User", "Domain")
        );
    }

    #[test]
    fn randomness_and_clock() {
        assert_ne!(client_challenge().unwrap(), client_challenge().unwrap());
        // After 2020-01-01 (132223104000000000) as a FILETIME.
        assert!(filetime_now() > 132_223_104_000_000_000);
    }

    fn av_info() -> impl Strategy<Value = Vec<u8>> {
        let pair = (1u16..12, prop::collection::vec(any::<u8>(), 0..40)).prop_map(|(id, v)| {
            let v = if id == AV_TIMESTAMP {
                v.into_iter().chain([0; 8]).take(8).collect()
            } else {
                v
            };
            let mut p = id.to_le_bytes().to_vec();
            p.extend((v.len() as u16).to_le_bytes());
            p.extend(v);
            p
        });
        prop_oneof![
            Just(vec![]),
            prop::collection::vec(pair, 0..6).prop_map(|ps| {
                let mut t: Vec<u8> = ps.concat();
                t.extend([0; 4]);
                t
            }),
        ]
    }

    fn challenge2() -> impl Strategy<Value = Challenge2> {
        (
            any::<u32>(),
            any::<[u8; 8]>(),
            prop::collection::vec(any::<u8>(), 0..64),
            av_info(),
            any::<[u8; 8]>(),
        )
            .prop_map(|(flags, server_challenge, target_name, target_info, v)| {
                // The modern layout, which carries target info (the old one
                // without it has its own test).
                let flags = flags | NEGOTIATE_TARGET_INFO;
                Challenge2 {
                    flags,
                    server_challenge,
                    target_name,
                    target_info,
                    version: (flags & NEGOTIATE_VERSION != 0).then_some(v),
                }
            })
    }

    proptest! {
        #[test]
        fn parse_challenge_never_panics(m in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_challenge(&m);
        }

        #[test]
        fn parse_challenge_never_panics_past_a_valid_prefix(
            tail in prop::collection::vec(any::<u8>(), 0..300),
            flags in any::<u32>(),
        ) {
            // Signature and type right, so the fields and AV pairs are reached.
            let mut m = b"NTLMSSP\0\x02\0\0\0".to_vec();
            m.extend(&tail[..tail.len().min(8)]);
            m.extend(flags.to_le_bytes());
            m.extend(&tail[tail.len().min(8)..]);
            if let Ok(c) = parse_challenge(&m) {
                prop_assert!(c.target_info.len() + c.target_name.len() <= m.len());
                let a = authenticate(&c, "u", "d", "p", "w", [1; 8], 2).unwrap();
                prop_assert!(a.len() < 64 + 24 + 48 + m.len() + 16);
            }
        }

        #[test]
        fn parse_after_render_is_identity(c in challenge2()) {
            prop_assert_eq!(parse_challenge(&c.to_bytes()).unwrap(), c);
        }

        /// A message cut short at any byte never yields a byte that was not
        /// in it: it is refused, or it is the same challenge except that a
        /// target name, a version or (in an old-style header) a target info
        /// that no longer fits is left out. Bytes
        /// after the message (padding, junk) change nothing.
        #[test]
        fn a_challenge_cut_anywhere_or_padded_reads_nothing_more(
            c in challenge2(),
            junk in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let m = c.to_bytes();
            for k in 0..m.len() {
                match parse_challenge(&m[..k]) {
                    Err(_) => {}
                    Ok(got) => {
                        prop_assert_eq!(got.flags, c.flags, "cut {}", k);
                        prop_assert_eq!(got.server_challenge, c.server_challenge, "cut {}", k);
                        // Cut before byte 48 it reads as the old 40-byte
                        // header, without target info fields.
                        prop_assert!(got.target_info == c.target_info || (got.target_info.is_empty() && k < 48), "cut {}", k);
                        prop_assert!(got.target_name == c.target_name || got.target_name.is_empty(), "cut {}", k);
                        prop_assert!(got.version == c.version || got.version.is_none(), "cut {}", k);
                        prop_assert!(got.target_name.len() + got.target_info.len() <= k);
                    }
                }
            }
            let mut padded = m.clone();
            padded.extend_from_slice(&junk);
            prop_assert_eq!(parse_challenge(&padded), Ok(c));
        }

        /// The cap: a target info up to [`MAX_TARGET_INFO`] bytes is read,
        /// a longer one refused.
        #[test]
        fn target_info_is_read_up_to_its_cap_only(
            c in challenge2(),
            pairs in 28usize..36,
            last in 0usize..256,
            fill in any::<u8>(),
        ) {
            // `pairs` AV pairs of 255-byte values and one of `last` bytes
            // (id 10, any value), then MsvAvEOL: from about 7 to 9 KiB.
            let mut info = Vec::new();
            for v in std::iter::repeat(255).take(pairs).chain([last]) {
                info.extend_from_slice(&10u16.to_le_bytes());
                info.extend_from_slice(&(v as u16).to_le_bytes());
                info.resize(info.len() + v, fill);
            }
            info.extend_from_slice(&[0; 4]);
            let len = info.len();
            let big = Challenge2 { target_info: info.clone(), ..c };
            match parse_challenge(&big.to_bytes()) {
                Ok(got) => {
                    prop_assert!(len <= MAX_TARGET_INFO, "{} bytes of target info read", len);
                    prop_assert_eq!(got.target_info, info);
                }
                Err(e) => {
                    prop_assert!(len > MAX_TARGET_INFO, "{} bytes refused: {:?}", len, e);
                    prop_assert_eq!(e, Error::TooLong("target info"));
                }
            }
        }
    }

    /// squid's ntlm_fake_auth sends an old-style challenge: a 40-byte header
    /// without target info (NEGOTIATE_TARGET_INFO clear), the target name's
    /// offset left uninitialised (0xaaaaaaae), "WORKGROUP" as payload.
    #[test]
    fn an_old_style_challenge_without_target_info_parses() {
        use base64::Engine as _;
        let m = base64::engine::general_purpose::STANDARD
            .decode("TlRMTVNTUAACAAAACQAJAK6qqqoGgggAzJJQYl1AlFoAAAAAAAA6AFdPUktHUk9VUA==")
            .unwrap();
        let ch = parse_challenge(&m).expect("squid's fake challenge");
        assert_eq!(ch.flags, 0x0008_8206);
        assert!(ch.target_info.is_empty());
        assert!(ch.target_name.is_empty());
        assert_eq!(
            ch.server_challenge,
            [0xcc, 0x92, 0x50, 0x62, 0x5d, 0x40, 0x94, 0x5a]
        );
        let msg = authenticate(&ch, "alice", "CORP", "x", "WS", [7; 8], 0).unwrap();
        assert_eq!(&msg[..12], b"NTLMSSP\0\x03\0\0\0");
    }

    // ----- regressions found by the fuzz target `ntlm_challenge` -------------

    /// fuzz/artifacts/ntlm_challenge/crash-05efc473e88f763a36ffa4cd3617b0f8f837511b:
    /// a 32-byte message whose empty TargetName has an offset far outside
    /// it (0x01000800). `buffer` passed the offset of an empty buffer
    /// through, and `m[off..off]` panicked (ntlm.rs:322 before the fix);
    /// with `panic = "abort"` a proxy sending it killed the process.
    #[test]
    fn fuzz_ntlm_challenge_crash_05efc473() {
        let m = unhex(
            "4e544c4d53535000 02000000 0000 0000 00080001
             01010101 3b3b0100 0600 0000",
        );
        let c = parse_challenge(&m).expect("an empty name at any offset is just empty");
        assert!(c.target_name.is_empty());
        assert_eq!(parse_challenge(&c.to_bytes()), Ok(c));
    }

    /// The same for an empty TargetInfo whose offset lies past the message
    /// (it was sliced the same way before being validated).
    #[test]
    fn fuzz_ntlm_challenge_empty_target_info_far_offset() {
        let mut m = Vec::new();
        m.extend_from_slice(SIGNATURE);
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&[0, 0, 0, 0, 48, 0, 0, 0]);
        m.extend_from_slice(&(NEGOTIATE_NTLM | NEGOTIATE_TARGET_INFO).to_le_bytes());
        m.extend_from_slice(&SERVER_CHALLENGE);
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f]);
        let c = parse_challenge(&m).expect("an empty target info at any offset is just empty");
        assert!(c.target_info.is_empty());
        assert_eq!(parse_challenge(&c.to_bytes()), Ok(c));
    }
}
