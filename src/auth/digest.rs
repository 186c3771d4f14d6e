//! HTTP Digest client (RFC 7616, and the RFC 2069 form without `qop`): from
//! a parsed `Digest` [`Challenge`] to the `Proxy-Authorization` header value.
//!
//! Owns the arithmetic and the header syntax of one nonce's use:
//! algorithms MD5, MD5-sess, SHA-256 and SHA-256-sess, `qop=auth`, the nonce
//! count, the client nonce, and the escaping of quoted values. It never
//! chooses between schemes, never decides when a nonce is given up (only
//! reports `stale=true` through [`is_stale`]), does no I/O and logs nothing;
//! the only outside call is the OS random source in [`cnonce`].
//!
//! `userhash` and `auth-int` are not supported: a challenge that offers only
//! `auth-int` is refused with [`Error::UnsupportedQop`]; `userhash=true` is
//! ignored (the username is sent in clear, as RFC 7616 §3.4.4 allows).

use super::challenge::{write_quoted, Challenge};
use md5::Md5;
use sha2::{Digest as _, Sha256};
use std::fmt;

/// The hash of a Digest challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    /// `MD5`, also what an absent `algorithm` means.
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256`.
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl Algorithm {
    /// The algorithm named `name` (ASCII case ignored), if supported.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        [
            Algorithm::Md5,
            Algorithm::Md5Sess,
            Algorithm::Sha256,
            Algorithm::Sha256Sess,
        ]
        .into_iter()
        .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// The RFC 7616 spelling, as sent in the `algorithm` parameter.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// Whether A1 includes the nonce and cnonce (`-sess`).
    pub fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// Lower-case hex of the hash of `data`.
    fn hex(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex(&Md5::digest(data)),
            Algorithm::Sha256 | Algorithm::Sha256Sess => hex(&Sha256::digest(data)),
        }
    }
}

/// Why a challenge cannot be answered, or a header cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The challenge's scheme is not `Digest`.
    NotDigest,
    /// A required parameter (`realm`, `nonce`) is missing.
    Missing(&'static str),
    /// `algorithm` names something other than the four supported.
    UnsupportedAlgorithm(String),
    /// `qop` lists no `auth` (e.g. only `auth-int`).
    UnsupportedQop(String),
    /// A `-sess` algorithm without `qop`: there is then no cnonce to put in
    /// A1 (RFC 7616 §3.4.2 only defines `-sess` with a cnonce).
    SessWithoutQop,
    /// A value to be sent holds a control character (CR, LF, NUL...), which
    /// could not be sent in a header.
    ControlCharacter(&'static str),
    /// The OS random source failed while drawing a cnonce.
    Random,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotDigest => write!(f, "not a Digest challenge"),
            Error::Missing(p) => write!(f, "Digest challenge without {p}"),
            Error::UnsupportedAlgorithm(a) => {
                write!(f, "unsupported Digest algorithm {a:?}")
            }
            Error::UnsupportedQop(q) => {
                write!(
                    f,
                    "Digest qop {q:?} offers no \"auth\" (auth-int is not supported)"
                )
            }
            Error::SessWithoutQop => write!(f, "Digest -sess algorithm without qop"),
            Error::ControlCharacter(what) => {
                write!(f, "Digest {what} holds a control character")
            }
            Error::Random => write!(f, "the system's random source failed"),
        }
    }
}

impl std::error::Error for Error {}

/// Whether `c` is a Digest challenge saying `stale=true` (ASCII case
/// ignored): the credentials were fine, only the nonce expired, so the
/// request is answered again at once with the new nonce.
pub fn is_stale(c: &Challenge) -> bool {
    c.is("Digest")
        && c.param("stale")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// A fresh client nonce: 16 bytes from the OS random source, as 32 hex
/// digits.
pub fn cnonce() -> Result<String, Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|_| Error::Random)?;
    Ok(hex(&b))
}

/// One Digest challenge being answered: its fields, and how many times its
/// nonce has been used. Later tunnels may keep answering with the same
/// state (the nonce count grows) until the proxy calls the nonce stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestState {
    /// `realm`, unescaped.
    pub realm: String,
    /// `nonce`, unescaped.
    pub nonce: String,
    /// `opaque`, echoed back when the challenge had it.
    pub opaque: Option<String>,
    /// `algorithm`; [`Algorithm::Md5`] when the challenge named none.
    pub algorithm: Algorithm,
    /// Whether `qop=auth` is used (the challenge offered it); `false` is the
    /// RFC 2069 form, without `qop`, `nc` and `cnonce`.
    pub qop_auth: bool,
    /// Whether the challenge said `charset=UTF-8`. Credentials are always
    /// hashed as their UTF-8 bytes; this only records the proxy's promise
    /// to read them so.
    pub charset_utf8: bool,
    /// How many requests this nonce has answered; the next one sends
    /// `nc = nc + 1`.
    pub nc: u32,
}

impl DigestState {
    /// The state for answering `c`, with no use of its nonce yet.
    ///
    /// Errors: `c` is not Digest, lacks `realm` or `nonce`, names an
    /// unsupported `algorithm`, has a `qop` without `auth`, or a `-sess`
    /// algorithm without `qop`.
    pub fn from_challenge(c: &Challenge) -> Result<DigestState, Error> {
        if !c.is("Digest") {
            return Err(Error::NotDigest);
        }
        let realm = c.param("realm").ok_or(Error::Missing("realm"))?;
        let nonce = c.param("nonce").ok_or(Error::Missing("nonce"))?;
        let algorithm = match c.param("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::from_name(a.trim())
                .ok_or_else(|| Error::UnsupportedAlgorithm(a.into()))?,
        };
        let qop_auth = match c.param("qop") {
            None => false,
            Some(q) => {
                if !q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")) {
                    return Err(Error::UnsupportedQop(q.into()));
                }
                true
            }
        };
        if algorithm.is_sess() && !qop_auth {
            return Err(Error::SessWithoutQop);
        }
        Ok(DigestState {
            realm: realm.into(),
            nonce: nonce.into(),
            opaque: c.param("opaque").map(Into::into),
            algorithm,
            qop_auth,
            charset_utf8: c
                .param("charset")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("UTF-8")),
            nc: 0,
        })
    }

    /// The strongest answerable Digest challenge among `cs` (SHA-256-sess,
    /// SHA-256, MD5-sess, MD5; the first of equals), or the error of the
    /// first Digest challenge when none can be answered, or
    /// [`Error::NotDigest`] when there is none.
    pub fn from_challenges(cs: &[Challenge]) -> Result<DigestState, Error> {
        let mut best: Option<DigestState> = None;
        let mut first_err = None;
        for c in cs.iter().filter(|c| c.is("Digest")) {
            match DigestState::from_challenge(c) {
                Ok(s) => {
                    if best.as_ref().map_or(true, |b| s.algorithm > b.algorithm) {
                        best = Some(s);
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        best.ok_or(first_err.unwrap_or(Error::NotDigest))
    }

    /// The `Proxy-Authorization` value for one request, using the next nonce
    /// count (which this call consumes: `nc` grows by one, saturating at
    /// `u32::MAX`, where a proxy will call the nonce stale).
    ///
    /// For the tunnel, `method` is `CONNECT` and `uri` the CONNECT target
    /// `host:port` (as curl sends it). `cnonce` is the client nonce to use
    /// (see [`cnonce`]); it is ignored in the RFC 2069 form. The result
    /// holds, in this order: `username`, `realm`, `nonce`, `uri`,
    /// `algorithm`, `response`, then with `qop`: `qop=auth`, `nc`, `cnonce`,
    /// and `opaque` when the challenge had one. Quoted values escape `"` and
    /// `\` (`CORP\jdoe` is sent as `"CORP\\jdoe"`).
    ///
    /// Errors: a control character in `username`, `uri` or `cnonce` (the
    /// challenge's own values come from the parser, which refuses them, but
    /// are checked too), so a header can never be split.
    pub fn authorization(
        &mut self,
        method: &str,
        uri: &str,
        username: &str,
        password: &str,
        cnonce: &str,
    ) -> Result<String, Error> {
        for (what, v) in [
            ("username", username),
            ("uri", uri),
            ("cnonce", cnonce),
            ("realm", &self.realm),
            ("nonce", &self.nonce),
            ("opaque", self.opaque.as_deref().unwrap_or("")),
        ] {
            if v.chars().any(|c| c.is_control() && c != '\t') {
                return Err(Error::ControlCharacter(what));
            }
        }
        if method.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(Error::ControlCharacter("method"));
        }
        self.nc = self.nc.saturating_add(1);
        let nc = format!("{:08x}", self.nc);
        let qop = self.qop_auth.then_some(("auth", nc.as_str(), cnonce));
        let response = response(
            self.algorithm,
            username,
            &self.realm,
            password,
            &self.nonce,
            qop,
            method,
            uri,
        );

        let mut h = String::from("Digest username=");
        write_quoted(&mut h, username);
        h.push_str(", realm=");
        write_quoted(&mut h, &self.realm);
        h.push_str(", nonce=");
        write_quoted(&mut h, &self.nonce);
        h.push_str(", uri=");
        write_quoted(&mut h, uri);
        h.push_str(", algorithm=");
        h.push_str(self.algorithm.name());
        h.push_str(", response=\"");
        h.push_str(&response);
        h.push('"');
        if self.qop_auth {
            h.push_str(", qop=auth, nc=");
            h.push_str(&nc);
            h.push_str(", cnonce=");
            write_quoted(&mut h, cnonce);
        }
        if let Some(o) = &self.opaque {
            h.push_str(", opaque=");
            write_quoted(&mut h, o);
        }
        Ok(h)
    }

    /// [`authorization`](Self::authorization) with a fresh random cnonce.
    pub fn authorization_random(
        &mut self,
        method: &str,
        uri: &str,
        username: &str,
        password: &str,
    ) -> Result<String, Error> {
        let c = cnonce()?;
        self.authorization(method, uri, username, password, &c)
    }
}

/// The `response` value (lower-case hex) of RFC 7616 §3.4.1, for raw
/// (unescaped) inputs. `qop` is `Some((qop, nc, cnonce))` with `nc` as the
/// 8 hex digits sent; `None` is the RFC 2069 form `H(A1:nonce:H(A2))`.
/// A `-sess` algorithm with `qop = None` uses an empty cnonce.
#[allow(clippy::too_many_arguments)]
pub fn response(
    alg: Algorithm,
    username: &str,
    realm: &str,
    password: &str,
    nonce: &str,
    qop: Option<(&str, &str, &str)>,
    method: &str,
    uri: &str,
) -> String {
    let cnonce = qop.map_or("", |q| q.2);
    let mut ha1 = alg.hex(format!("{username}:{realm}:{password}").as_bytes());
    if alg.is_sess() {
        ha1 = alg.hex(format!("{ha1}:{nonce}:{cnonce}").as_bytes());
    }
    let ha2 = alg.hex(format!("{method}:{uri}").as_bytes());
    match qop {
        Some((qop, nc, cnonce)) => {
            alg.hex(format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}").as_bytes())
        }
        None => alg.hex(format!("{ha1}:{nonce}:{ha2}").as_bytes()),
    }
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[usize::from(x >> 4)] as char);
        s.push(D[usize::from(x & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::challenge::parse;

    /// RFC 7616 §3.9.1.
    const RFC_REALM: &str = "http-auth@example.org";
    const RFC_NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const RFC_OPAQUE: &str = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS";
    const RFC_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    fn rfc_challenge(alg: &str) -> Challenge {
        let v = format!(
            r#"Digest realm="{RFC_REALM}", qop="auth, auth-int", algorithm={alg}, nonce="{RFC_NONCE}", opaque="{RFC_OPAQUE}""#
        );
        parse(&[&v]).remove(0)
    }

    fn rfc_answer(alg: &str) -> String {
        let mut s = DigestState::from_challenge(&rfc_challenge(alg)).unwrap();
        s.authorization(
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle of Life",
            RFC_CNONCE,
        )
        .unwrap()
    }

    #[test]
    fn rfc7616_md5_vector() {
        let h = rfc_answer("MD5");
        assert_eq!(
            h,
            format!(
                r#"Digest username="Mufasa", realm="{RFC_REALM}", nonce="{RFC_NONCE}", uri="/dir/index.html", algorithm=MD5, response="8ca523f5e9506fed4657c9700eebdbec", qop=auth, nc=00000001, cnonce="{RFC_CNONCE}", opaque="{RFC_OPAQUE}""#
            )
        );
    }

    #[test]
    fn rfc7616_sha256_vector() {
        let h = rfc_answer("SHA-256");
        assert!(
            h.contains(
                r#"response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1""#
            ),
            "{h}"
        );
        assert!(h.contains("algorithm=SHA-256,"), "{h}");
    }

    /// Independent values for the `-sess` variants and the RFC 2069 form,
    /// computed with Python's hashlib from the RFC 7616 §3.9.1 inputs
    /// (method GET, uri /dir/index.html, nc 00000001). The same script
    /// prints the two RFC vectors first, which shows it computes what the
    /// RFC means:
    ///
    /// ```text
    /// import hashlib
    /// u,r,p="Mufasa","http-auth@example.org","Circle of Life"
    /// n="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    /// c="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    /// for h in (hashlib.md5, hashlib.sha256):
    ///     H=lambda s: h(s.encode()).hexdigest()
    ///     a2=H("GET:/dir/index.html")
    ///     ha1=H(u+":"+r+":"+p)
    ///     print("plain", H(":".join([ha1,n,"00000001",c,"auth",a2])))
    ///     a1=H(":".join([ha1,n,c]))
    ///     print("sess", H(":".join([a1,n,"00000001",c,"auth",a2])))
    ///     print("2069", H(":".join([ha1,n,a2])))
    /// ```
    const PY_MD5_SESS: &str = "e783283f46242139c486a698fec7211d";
    const PY_MD5_2069: &str = "7b2cc3b30e75b4777ea31027084363fd";
    const PY_SHA256_SESS: &str = "2fd51b3a77ad75bad6afad6003e818d767133c46d9e2749e7f5232ae1ea3efd7";
    const PY_SHA256_2069: &str = "a1306b0595a6c7fe96c448631fb5cfbd5107bd1fe1da729d978dd7446b812363";

    #[test]
    fn sess_variants_match_an_independent_computation() {
        let md5 = rfc_answer("md5-SESS");
        assert!(
            md5.contains(&format!("response=\"{PY_MD5_SESS}\"")),
            "{md5}"
        );
        assert!(md5.contains("algorithm=MD5-sess,"), "{md5}");
        let sha = rfc_answer("SHA-256-sess");
        assert!(
            sha.contains(&format!("response=\"{PY_SHA256_SESS}\"")),
            "{sha}"
        );
    }

    #[test]
    fn rfc2069_form_without_qop() {
        for (alg, want) in [("MD5", PY_MD5_2069), ("SHA-256", PY_SHA256_2069)] {
            let v = format!(r#"Digest realm="{RFC_REALM}", nonce="{RFC_NONCE}", algorithm={alg}"#);
            let mut s = DigestState::from_challenge(&parse(&[&v])[0]).unwrap();
            assert!(!s.qop_auth);
            let h = s
                .authorization(
                    "GET",
                    "/dir/index.html",
                    "Mufasa",
                    "Circle of Life",
                    "ignored",
                )
                .unwrap();
            assert_eq!(
                h,
                format!(
                    r#"Digest username="Mufasa", realm="{RFC_REALM}", nonce="{RFC_NONCE}", uri="/dir/index.html", algorithm={alg}, response="{want}""#
                )
            );
        }
    }

    #[test]
    fn absent_algorithm_is_md5_and_nc_counts_per_use() {
        let c = &parse(&[r#"Digest realm="r", nonce="n", qop="auth""#])[0];
        let mut s = DigestState::from_challenge(c).unwrap();
        assert_eq!(s.algorithm, Algorithm::Md5);
        let first = s
            .authorization("CONNECT", "example.org:22", "u", "p", "c1")
            .unwrap();
        let second = s
            .authorization("CONNECT", "example.org:22", "u", "p", "c2")
            .unwrap();
        assert!(first.contains("nc=00000001,"), "{first}");
        assert!(second.contains("nc=00000002,"), "{second}");
        assert!(first.contains(r#"uri="example.org:22""#), "{first}");
        assert!(!first.contains("opaque"), "{first}");
        assert_eq!(s.nc, 2);
        let want = response(
            Algorithm::Md5,
            "u",
            "r",
            "p",
            "n",
            Some(("auth", "00000002", "c2")),
            "CONNECT",
            "example.org:22",
        );
        assert!(second.contains(&format!("response=\"{want}\"")));
        s.nc = u32::MAX - 1;
        assert!(s
            .authorization("CONNECT", "h:1", "u", "p", "c")
            .unwrap()
            .contains("nc=ffffffff,"));
        assert!(s
            .authorization("CONNECT", "h:1", "u", "p", "c")
            .unwrap()
            .contains("nc=ffffffff,"));
    }

    #[test]
    fn quoted_values_are_escaped_but_hashed_raw() {
        let c = &parse(&[r#"Digest realm="a \"q\" realm", nonce="n", qop=auth"#])[0];
        let mut s = DigestState::from_challenge(c).unwrap();
        assert_eq!(s.realm, r#"a "q" realm"#);
        let h = s
            .authorization("CONNECT", "h:22", r"CORP\jdoe", "pw", "cn")
            .unwrap();
        assert!(
            h.starts_with(r#"Digest username="CORP\\jdoe", realm="a \"q\" realm", "#),
            "{h}"
        );
        let want = response(
            Algorithm::Md5,
            r"CORP\jdoe",
            r#"a "q" realm"#,
            "pw",
            "n",
            Some(("auth", "00000001", "cn")),
            "CONNECT",
            "h:22",
        );
        assert!(h.contains(&want));
        // The header parses back to the values sent.
        let back = &parse(&[&h])[0];
        assert_eq!(back.param("username"), Some(r"CORP\jdoe"));
        assert_eq!(back.param("realm"), Some(r#"a "q" realm"#));
        assert_eq!(back.param("response"), Some(want.as_str()));
    }

    #[test]
    fn refusals_are_clear() {
        let err = |v: &str| DigestState::from_challenge(&parse(&[v])[0]).unwrap_err();
        assert_eq!(err(r#"Basic realm="r""#), Error::NotDigest);
        assert_eq!(err(r#"Digest nonce="n""#), Error::Missing("realm"));
        assert_eq!(err(r#"Digest realm="r""#), Error::Missing("nonce"));
        assert_eq!(
            err(r#"Digest realm="r", nonce="n", qop="auth-int""#),
            Error::UnsupportedQop("auth-int".into())
        );
        assert_eq!(
            err(r#"Digest realm="r", nonce="n", algorithm=SHA-512-256"#),
            Error::UnsupportedAlgorithm("SHA-512-256".into())
        );
        assert_eq!(
            err(r#"Digest realm="r", nonce="n", algorithm=MD5-sess"#),
            Error::SessWithoutQop
        );
        for e in [
            Error::UnsupportedQop("auth-int".into()),
            Error::UnsupportedAlgorithm("X".into()),
        ] {
            assert!(!e.to_string().is_empty());
        }
        let c = &parse(&[r#"Digest realm="r", nonce="n", qop=auth"#])[0];
        let mut s = DigestState::from_challenge(c).unwrap();
        assert_eq!(
            s.authorization("CONNECT", "h:1", "u\r\nX-Evil: 1", "p", "c"),
            Err(Error::ControlCharacter("username"))
        );
        assert_eq!(s.nc, 0, "a refused header does not use a count");
    }

    #[test]
    fn qop_list_and_charset_and_choice_among_several() {
        let cs = parse(&[
            r#"Digest realm="r", nonce="n1", qop="auth-int , AUTH", algorithm=MD5"#,
            r#"Digest realm="r", nonce="n2", qop="auth", algorithm=SHA-256, charset=UTF-8"#,
            r#"Digest realm="r", nonce="n3", qop="auth", algorithm=SHA-512"#,
            r#"Basic realm="r""#,
        ]);
        let s = DigestState::from_challenge(&cs[0]).unwrap();
        assert!(s.qop_auth && !s.charset_utf8);
        let best = DigestState::from_challenges(&cs).unwrap();
        assert_eq!(
            (best.nonce.as_str(), best.algorithm),
            ("n2", Algorithm::Sha256)
        );
        assert!(best.charset_utf8);
        assert_eq!(
            DigestState::from_challenges(&cs[2..]),
            Err(Error::UnsupportedAlgorithm("SHA-512".into()))
        );
        assert_eq!(
            DigestState::from_challenges(&cs[3..]),
            Err(Error::NotDigest)
        );
    }

    #[test]
    fn stale() {
        let cs = parse(&[
            r#"Digest realm="r", nonce="n", stale=TRUE"#,
            r#"Digest realm="r", nonce="n", stale="true""#,
            r#"Digest realm="r", nonce="n", stale=false"#,
            r#"Digest realm="r", nonce="n""#,
            r#"Basic stale=true"#,
        ]);
        let got: Vec<bool> = cs.iter().map(is_stale).collect();
        assert_eq!(got, [true, true, false, false, false]);
    }

    #[test]
    fn random_cnonce_is_32_hex_digits_and_fresh() {
        let a = cnonce().unwrap();
        let b = cnonce().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        let c = &parse(&[r#"Digest realm="r", nonce="n", qop=auth"#])[0];
        let mut s = DigestState::from_challenge(c).unwrap();
        let h = s.authorization_random("CONNECT", "h:1", "u", "p").unwrap();
        assert!(h.contains("cnonce=\""));
    }
}
