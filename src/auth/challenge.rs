//! `Proxy-Authenticate` challenges: parsing the header values a proxy sent
//! with its 407 into [`Challenge`]s, and rendering a challenge back into
//! header syntax.
//!
//! The grammar is RFC 9110 §11.3 and §11.6.1 (RFC 7235 before it):
//!
//! ```text
//! Proxy-Authenticate = #challenge
//! challenge   = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//! auth-param  = token BWS "=" BWS ( token / quoted-string )
//! token68     = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
//! ```
//!
//! Commas separate both challenges and the parameters of one challenge; an
//! element is a new challenge when it is a token *not* followed by `=`.
//! Scheme and parameter names are compared without regard to case, and kept
//! as sent; values are kept as sent (a quoted string is unescaped).
//!
//! This module owns only the syntax: it never decides which scheme to use,
//! never decodes a token68, and does no I/O. Work is linear in the input; a
//! malformed challenge is skipped (up to the next comma that can start a
//! challenge) and the well-formed ones around it are kept.

use std::fmt::Write as _;

/// One challenge: a scheme, and either a token68 or a list of parameters
/// (or neither, as in a bare `NTLM`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// The auth-scheme as the proxy spelt it (`Basic`, `digest`, `NTLM`).
    pub scheme: String,
    /// The token68 after the scheme (`NTLM TlRMTVNT...`), when there is one.
    pub token68: Option<String>,
    /// The auth-params in the order sent: names as sent, values unquoted
    /// and unescaped.
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// Whether this challenge's scheme is `scheme`, ignoring ASCII case.
    pub fn is(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    /// The value of the first parameter called `name` (ignoring ASCII case),
    /// or `None` when there is no such parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses every challenge in `values`, the `Proxy-Authenticate` header
/// values of one response in the order received (one element per header
/// line). Malformed challenges are left out; see [`parse_counting`] to learn
/// how many were.
pub fn parse(values: &[&str]) -> Vec<Challenge> {
    parse_counting(values).0
}

/// As [`parse`], and also returns how many malformed challenges (or stray
/// pieces that could not start one) were skipped, for a log line.
pub fn parse_counting(values: &[&str]) -> (Vec<Challenge>, usize) {
    let mut out = Vec::new();
    let mut skipped = 0;
    for value in values {
        Parser {
            s: value.as_bytes(),
            i: 0,
        }
        .run(&mut out, &mut skipped);
    }
    (out, skipped)
}

/// Renders `c` in header syntax: `scheme`, then its token68 when it has one,
/// else its parameters as `name=value` (a value that is not a token is
/// written as a quoted string with `"` and `\` escaped).
///
/// The result parses back to `c` (`parse(&[&render(c)]) == [c]`) when `c` is
/// well formed: scheme and parameter names are tokens, the token68 is one,
/// not both a token68 and parameters are present, and no value holds a
/// control character other than HTAB. Everything [`parse`] returns is well
/// formed.
pub fn render(c: &Challenge) -> String {
    let mut s = c.scheme.clone();
    if let Some(t) = &c.token68 {
        s.push(' ');
        s.push_str(t);
    } else {
        for (k, (name, value)) in c.params.iter().enumerate() {
            s.push_str(if k == 0 { " " } else { ", " });
            s.push_str(name);
            s.push('=');
            if !value.is_empty() && value.bytes().all(is_tchar) {
                s.push_str(value);
            } else {
                write_quoted(&mut s, value);
            }
        }
    }
    s
}

/// Renders several challenges as one header value, separated by `, `.
pub fn render_all(cs: &[Challenge]) -> String {
    cs.iter().map(render).collect::<Vec<_>>().join(", ")
}

/// Appends `value` to `out` as a quoted-string, escaping `"` and `\`.
pub(crate) fn write_quoted(out: &mut String, value: &str) {
    out.push('"');
    for ch in value.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        let _ = out.write_char(ch);
    }
    out.push('"');
}

/// RFC 9110 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Characters of a token68 before its trailing `=`s.
fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)
}

/// Optional white space. Besides SP and HTAB, stray CR and LF (from an
/// obs-fold that reached us unfolded) count as white space too.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// A piece that cannot be part of a well-formed challenge.
struct Malformed;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.i += 1;
        }
    }

    /// Skips white space and any number of commas (empty list elements).
    fn skip_separators(&mut self) {
        while self.peek().is_some_and(|b| is_ws(b) || b == b',') {
            self.i += 1;
        }
    }

    /// The text of `s[from..to]`; the bounds always sit on ASCII bytes (or
    /// the ends), so this never fails on the `&str` the parser was built on.
    fn text(&self, from: usize, to: usize) -> String {
        String::from_utf8_lossy(&self.s[from..to]).into_owned()
    }

    fn token(&mut self) -> Option<(usize, usize)> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then_some((start, self.i))
    }

    /// Whether an auth-param starts here: a token, BWS, `=`, BWS, then the
    /// start of a value (a tchar or `"`). Anything else is a scheme or a
    /// token68 (`abc=`, `abc==` followed by a comma or the end are token68s).
    /// Does not move.
    fn at_param(&self) -> bool {
        let at = |j: usize| self.s.get(j).copied();
        let mut j = self.i;
        while at(j).is_some_and(is_tchar) {
            j += 1;
        }
        if j == self.i {
            return false;
        }
        while at(j).is_some_and(is_ws) {
            j += 1;
        }
        if at(j) != Some(b'=') {
            return false;
        }
        j += 1;
        while at(j).is_some_and(is_ws) {
            j += 1;
        }
        at(j).is_some_and(|b| b == b'"' || is_tchar(b))
    }

    fn run(&mut self, out: &mut Vec<Challenge>, skipped: &mut usize) {
        loop {
            self.skip_separators();
            if self.i >= self.s.len() {
                return;
            }
            if self.at_param() || !self.peek().is_some_and(is_tchar) {
                // A parameter with no challenge to belong to, or junk.
                *skipped += 1;
                self.recover();
                continue;
            }
            match self.challenge() {
                Ok(c) => out.push(c),
                Err(Malformed) => {
                    *skipped += 1;
                    self.recover();
                }
            }
        }
    }

    /// After a malformed piece: skips to the next element that can start a
    /// challenge (a token not followed by `=`), stepping over quoted strings
    /// so that a comma inside one does not count.
    fn recover(&mut self) {
        loop {
            match self.peek() {
                None => return,
                Some(b'"') => {
                    self.i += 1;
                    while let Some(b) = self.peek() {
                        self.i += 1;
                        match b {
                            b'\\' => self.i = (self.i + 1).min(self.s.len()),
                            b'"' => break,
                            _ => {}
                        }
                    }
                }
                Some(b',') => {
                    self.skip_separators();
                    if self.peek().is_some_and(is_tchar) && !self.at_param() {
                        return;
                    }
                }
                Some(_) => self.i += 1,
            }
        }
    }

    /// One challenge starting at a token that is not a parameter name.
    fn challenge(&mut self) -> Result<Challenge, Malformed> {
        let (a, b) = self.token().ok_or(Malformed)?;
        let mut c = Challenge {
            scheme: self.text(a, b),
            token68: None,
            params: Vec::new(),
        };
        let had_space = self.peek().is_some_and(is_ws);
        self.skip_ws();
        match self.peek() {
            None | Some(b',') => return Ok(c),
            Some(_) if !had_space => return Err(Malformed),
            Some(_) => {}
        }
        if !self.at_param() {
            c.token68 = Some(self.token68()?);
            self.end_of_element()?;
            return Ok(c);
        }
        loop {
            c.params.push(self.param()?);
            self.end_of_element()?;
            // At a comma or the end: the next element either continues this
            // challenge's parameters or starts something else.
            let save = self.i;
            self.skip_separators();
            if self.i < self.s.len() && self.at_param() {
                continue;
            }
            self.i = save;
            return Ok(c);
        }
    }

    /// After an element: white space, then a comma or the end.
    fn end_of_element(&mut self) -> Result<(), Malformed> {
        self.skip_ws();
        match self.peek() {
            None | Some(b',') => Ok(()),
            Some(_) => Err(Malformed),
        }
    }

    fn token68(&mut self) -> Result<String, Malformed> {
        let start = self.i;
        while self.peek().is_some_and(is_token68_char) {
            self.i += 1;
        }
        if self.i == start {
            return Err(Malformed);
        }
        while self.peek() == Some(b'=') {
            self.i += 1;
        }
        Ok(self.text(start, self.i))
    }

    fn param(&mut self) -> Result<(String, String), Malformed> {
        let (a, b) = self.token().ok_or(Malformed)?;
        let name = self.text(a, b);
        self.skip_ws();
        if self.peek() != Some(b'=') {
            return Err(Malformed);
        }
        self.i += 1;
        self.skip_ws();
        let value = if self.peek() == Some(b'"') {
            self.quoted()?
        } else {
            let (a, b) = self.token().ok_or(Malformed)?;
            self.text(a, b)
        };
        Ok((name, value))
    }

    /// A quoted-string at `"`, unescaped. Control characters other than HTAB
    /// and an unterminated string are malformed; either way the whole string
    /// is consumed, so that recovery resumes after its closing quote.
    fn quoted(&mut self) -> Result<String, Malformed> {
        self.i += 1;
        let mut v = Vec::new();
        let mut bad = false;
        loop {
            let b = self.peek().ok_or(Malformed)?;
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let e = self.peek().ok_or(Malformed)?;
                    bad |= is_ctl(e);
                    v.push(e);
                    self.i += 1;
                }
                _ => {
                    bad |= is_ctl(b);
                    v.push(b);
                }
            }
        }
        if bad {
            return Err(Malformed);
        }
        // `v` holds whole UTF-8 sequences of the input: escapes only ever
        // drop a backslash before a byte, and a backslash before a non-ASCII
        // lead byte keeps that byte with its continuation bytes after it.
        String::from_utf8(v).map_err(|_| Malformed)
    }
}

/// A control character other than HTAB (which qdtext allows).
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ch(scheme: &str, token68: Option<&str>, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            token68: token68.map(Into::into),
            params: params
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn basic_realm() {
        assert_eq!(
            parse(&[r#"Basic realm="Squid proxy""#]),
            [ch("Basic", None, &[("realm", "Squid proxy")])]
        );
    }

    #[test]
    fn several_values_and_several_challenges_in_one() {
        let got = parse(&[
            "NTLM",
            r#"Digest realm="corp", nonce="abc, def", qop="auth,auth-int", algorithm=MD5-sess, stale=FALSE, Basic realm="x""#,
            "Negotiate",
        ]);
        assert_eq!(
            got,
            [
                ch("NTLM", None, &[]),
                ch(
                    "Digest",
                    None,
                    &[
                        ("realm", "corp"),
                        ("nonce", "abc, def"),
                        ("qop", "auth,auth-int"),
                        ("algorithm", "MD5-sess"),
                        ("stale", "FALSE")
                    ]
                ),
                ch("Basic", None, &[("realm", "x")]),
                ch("Negotiate", None, &[]),
            ]
        );
    }

    #[test]
    fn token68_forms() {
        let got = parse(&[
            "NTLM TlRMTVNTUAACAAAADAAMADgAAAAzgoriASNFZ4mrze8AAAAAAAAAACQAJABEAAAABgBwFwAAAA9TAGUAcgB2AGUAcgACAAwARABvAG0AYQBpAG4AAQAMAFMAZQByAHYAZQByAAAAAAA=",
            "Negotiate YIIBhwYGKwYBBQUCoIIBezCCAXeg+/w==, Basic realm=r",
            "Foo abc",
        ]);
        assert_eq!(got.len(), 4);
        assert!(got[0].is("ntlm"));
        assert!(got[0].token68.as_deref().unwrap().ends_with("AAAAAAA="));
        assert_eq!(
            got[1].token68.as_deref(),
            Some("YIIBhwYGKwYBBQUCoIIBezCCAXeg+/w==")
        );
        assert_eq!(got[2], ch("Basic", None, &[("realm", "r")]));
        assert_eq!(got[3], ch("Foo", Some("abc"), &[]));
    }

    #[test]
    fn case_is_ignored_for_names_and_kept_for_values() {
        let got = parse(&[r#"dIgEsT REALM="Ab", Nonce=XyZ"#]);
        assert_eq!(got[0].scheme, "dIgEsT");
        assert!(got[0].is("Digest"));
        assert_eq!(got[0].param("realm"), Some("Ab"));
        assert_eq!(got[0].param("NONCE"), Some("XyZ"));
        assert_eq!(got[0].param("opaque"), None);
    }

    #[test]
    fn escapes_in_quoted_strings() {
        let got = parse(&[r#"Basic realm="a \"quoted\" \\ back\slash""#]);
        assert_eq!(got[0].param("realm"), Some(r#"a "quoted" \ backslash"#));
        // Non-ASCII inside a quoted string survives, escaped or not.
        let got = parse(&["Basic realm=\"caf\\é ü\""]);
        assert_eq!(got[0].param("realm"), Some("café ü"));
    }

    #[test]
    fn bad_whitespace_is_tolerated() {
        let got =
            parse(&[" ,\t, Digest\t realm = \"r\" ,nonce=\"n\"  ,,  , Basic   realm=\"b\" , "]);
        assert_eq!(
            got,
            [
                ch("Digest", None, &[("realm", "r"), ("nonce", "n")]),
                ch("Basic", None, &[("realm", "b")]),
            ]
        );
    }

    #[test]
    fn malformed_challenges_are_skipped_and_the_others_kept() {
        let cases: &[(&str, usize)] = &[
            // Unterminated quoted string eats the rest of its value.
            (r#"Basic realm="x, NTLM"#, 0),
            // Junk where a value should be.
            (r#"Digest realm=@@@, NTLM"#, 1),
            // A stray parameter before any scheme.
            (r#"realm="x", NTLM"#, 1),
            // Two token68s.
            (r#"Negotiate abc def, NTLM"#, 1),
            // Missing comma between parameters.
            (r#"Digest realm="a" nonce="b", NTLM"#, 1),
            // A comma inside the skipped quoted string does not resync.
            (r#"Digest realm=@ "a, Basic x=y", NTLM"#, 1),
            // Control character inside a quoted string.
            ("Basic realm=\"a\u{1}b\", NTLM", 1),
            // No space after the scheme.
            (r#"Basic"realm", NTLM"#, 1),
        ];
        for (input, n) in cases {
            let (got, skipped) = parse_counting(&[input]);
            assert_eq!(got.len(), *n, "{input}: {got:?}");
            assert!(skipped >= 1, "{input}");
            if *n == 1 {
                assert_eq!(got[0], ch("NTLM", None, &[]), "{input}");
            }
        }
    }

    #[test]
    fn token68_with_padding_before_a_param_list_challenge() {
        let got = parse(&["NTLM abc==, Digest realm=\"r\", Basic realm= , X"]);
        assert_eq!(
            got,
            [
                ch("NTLM", Some("abc=="), &[]),
                ch("Digest", None, &[("realm", "r")]),
                // `realm=` with nothing after it is a token68 by the grammar.
                ch("Basic", Some("realm="), &[]),
                ch("X", None, &[]),
            ]
        );
    }

    #[test]
    fn render_examples() {
        assert_eq!(
            render(&ch(
                "Digest",
                None,
                &[("realm", "a \"b\" \\"), ("algorithm", "MD5")]
            )),
            r#"Digest realm="a \"b\" \\", algorithm=MD5"#
        );
        assert_eq!(render(&ch("NTLM", Some("TlRM=="), &[])), "NTLM TlRM==");
        assert_eq!(render(&ch("Negotiate", None, &[])), "Negotiate");
        assert_eq!(
            render(&ch("Basic", None, &[("realm", "")])),
            r#"Basic realm="""#
        );
    }

    #[test]
    fn big_input_is_linear() {
        // 16 KiB of commas and parameters, well past any real head.
        let mut s = String::from("Digest ");
        while s.len() < 16 * 1024 {
            s.push_str("a=b, ");
        }
        let got = parse(&[&s]);
        assert_eq!(got.len(), 1);
        assert!(got[0].params.len() > 3000);
        let junk = "=".repeat(16 * 1024);
        assert!(parse(&[&junk]).is_empty());
        let quotes = "Basic x=\"".to_string() + &"\\".repeat(16 * 1024);
        assert!(parse(&[&quotes]).is_empty());
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
    }

    fn challenge() -> impl Strategy<Value = Challenge> {
        let value = prop_oneof![
            token(),
            // Any printable text, with the characters that need escaping,
            // HTAB and some non-ASCII.
            "[ -~\t\"\\\\éü€]{0,16}",
        ];
        let params = prop::collection::vec((token(), value), 0..5);
        let token68 = "[A-Za-z0-9._~+/-]{1,24}={0,2}";
        (token(), prop::option::of(token68), params).prop_map(|(scheme, t68, params)| {
            let token68 = if params.is_empty() { t68 } else { None };
            Challenge {
                scheme,
                token68,
                params,
            }
        })
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_any_string(values in prop::collection::vec(".{0,200}", 0..4)) {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let _ = parse_counting(&refs);
        }

        #[test]
        fn parse_never_panics_on_header_like_text(values in prop::collection::vec("[ ,=\"\\\\A-Za-z0-9+/\t]{0,200}", 0..4)) {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let _ = parse_counting(&refs);
        }

        /// Header lines are independent: any mix of well-formed challenges
        /// and junk parses to what each line gives alone, in order (junk
        /// never swallows a neighbour), and never yields more text than it
        /// was given.
        #[test]
        fn header_lines_parse_independently_and_never_grow(
            values in prop::collection::vec(prop_oneof![
                challenge().prop_map(|c| render(&c)),
                ".{0,60}",
                "[ ,=\"\\\\A-Za-z0-9+/\t]{0,60}",
            ], 0..6),
        ) {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            let (all, skipped) = parse_counting(&refs);
            let mut each = Vec::new();
            let mut each_skipped = 0;
            for v in &refs {
                let (cs, n) = parse_counting(&[v]);
                let text: usize = cs.iter().map(|c| {
                    c.scheme.len() + c.token68.as_ref().map_or(0, String::len)
                        + c.params.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                }).sum();
                prop_assert!(text <= v.len(), "{} bytes out of {:?}", text, v);
                prop_assert!(cs.len() + n <= v.matches(',').count() + 1, "{:?} -> {:?}", v, cs);
                each.extend(cs);
                each_skipped += n;
            }
            prop_assert_eq!(all, each);
            prop_assert_eq!(skipped, each_skipped);
        }

        /// Challenges in a 407, spread over any number of
        /// `Proxy-Authenticate` lines, the answer cut at every byte: no
        /// challenge until the head is complete, then exactly the ones sent.
        #[test]
        fn challenges_of_a_407_are_the_same_however_it_is_cut(
            cs in prop::collection::vec(challenge(), 1..5),
            breaks in prop::collection::vec(any::<bool>(), 4),
        ) {
            let mut lines = vec![vec![cs[0].clone()]];
            for (c, new_line) in cs[1..].iter().zip(&breaks) {
                if *new_line {
                    lines.push(Vec::new());
                }
                lines.last_mut().expect("a line").push(c.clone());
            }
            let mut answer = String::from("HTTP/1.1 407 Proxy Authentication Required\r\n");
            for line in &lines {
                answer.push_str(&format!("Proxy-Authenticate: {}\r\n", render_all(line)));
            }
            answer.push_str("Content-Length: 0\r\n\r\n");
            let bytes = answer.as_bytes();
            for k in 0..=bytes.len() {
                match crate::connect::parse_answer(&bytes[..k]) {
                    Ok(crate::connect::Answer::Partial) => prop_assert!(k < bytes.len(), "cut {}", k),
                    Ok(crate::connect::Answer::Complete(head)) => {
                        prop_assert_eq!(k, bytes.len());
                        let values: Vec<&str> = head.challenges.iter().map(String::as_str).collect();
                        prop_assert_eq!(&parse(&values), &cs);
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("cut {k}: {e}"))),
                }
            }
        }

        #[test]
        fn parse_after_render_is_identity(cs in prop::collection::vec(challenge(), 1..5)) {
            let one: Vec<Challenge> = cs.iter().flat_map(|c| parse(&[&render(c)])).collect();
            prop_assert_eq!(&one, &cs);
            let all = parse(&[&render_all(&cs)]);
            prop_assert_eq!(&all, &cs);
        }
    }
}
