//! Proxy authentication policy, in one place: given a hop's credentials, the
//! scheme configured for it, what the entry has learnt and what the proxy
//! answered, what goes into the next request's `Proxy-Authorization`, or why
//! the attempt ends.
//!
//! Owns: which scheme is used (SPEC "Proxy authentication"), the header
//! values, what an entry learns, the wording of a refusal, and the warning
//! an entry gets at load. Never does: sockets, logging, timeouts; the tunnel
//! asks, sends what it is told and logs what it is given. The leaf modules
//! ([`challenge`], [`digest`], [`ntlm`]) are pure message code.
//!
//! One [`Session`] per hop per tunnel lives through the rounds of that hop's
//! handshake: [`Session::first`] for the first request, then
//! [`Session::challenged`] after each 407, then [`Session::succeeded`] on the
//! 2xx, which teaches the entry's [`Learnt`] (shared by its tunnels) the
//! scheme that worked. Adding a scheme means: a [`Scheme`] variant (its
//! place in the strength order), its first message in `first`, its answer in
//! `answer`.
//!
//! Rules (SPEC): with credentials the first request carries Basic, unless a
//! scheme is named or learnt; a 407 is answered with the strongest scheme it
//! offers that the configuration allows and this tunnel has not tried yet
//! (NTLM, then Digest, then Basic), each at most once, so a wrong password
//! ends in one refusal and never loops; a Digest nonce called stale is
//! answered again at once; what failed is forgotten.

pub mod challenge;
pub mod digest;
pub mod gssapi;
pub mod ntlm;

use std::sync::OnceLock;

use base64::Engine as _;

use crate::config::{AuthScheme, Credentials, Proxy};
use crate::connect::Head;
use challenge::Challenge;
use digest::DigestState;

/// A scheme this program can answer with, weakest first (`Ord` is strength).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scheme {
    /// RFC 7617.
    Basic,
    /// RFC 7616.
    Digest,
    /// MS-NLMP, NTLMv2 only.
    Ntlm,
    /// RFC 4559: SPNEGO/Kerberos through the system's GSSAPI ([`gssapi`]).
    Negotiate,
}

impl Scheme {
    /// Every scheme, strongest first.
    const STRONGEST_FIRST: [Scheme; 4] = [
        Scheme::Negotiate,
        Scheme::Ntlm,
        Scheme::Digest,
        Scheme::Basic,
    ];

    /// The name as it appears in headers and log lines.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Basic => "Basic",
            Scheme::Digest => "Digest",
            Scheme::Ntlm => "NTLM",
            Scheme::Negotiate => "Negotiate",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Whether the configured `auth-scheme` lets this scheme be used.
    fn allowed_by(self, configured: AuthScheme) -> bool {
        matches!(
            (configured, self),
            (AuthScheme::Auto, _)
                | (AuthScheme::Basic, Scheme::Basic)
                | (AuthScheme::Digest, Scheme::Digest)
                | (AuthScheme::Ntlm, Scheme::Ntlm)
                | (AuthScheme::Negotiate, Scheme::Negotiate)
        )
    }
}

/// What an entry has learnt about one hop, shared by the entry's tunnels;
/// gone with the entry when a reload changes it.
#[derive(Debug, Default, Clone)]
pub struct Learnt {
    /// The scheme the proxy last accepted.
    scheme: Option<Scheme>,
    /// For Digest: the proxy's nonce and how often it was used.
    digest: Option<DigestState>,
}

impl Learnt {
    /// The scheme learnt, if any (for the snapshot).
    pub fn scheme(&self) -> Option<Scheme> {
        self.scheme
    }

    fn forget(&mut self) {
        self.scheme = None;
        self.digest = None;
    }
}

/// What to do after a 407.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Send the request again with this `Proxy-Authorization` value; on the
    /// same connection when `same_connection` (the NTLM authenticate
    /// message belongs to the connection that carried the challenge), else
    /// on the same or a new one.
    Answer {
        value: String,
        same_connection: bool,
    },
    /// Send the request again with a fresh Negotiate token, which a worker
    /// thread asks the system's GSSAPI for (it may talk to the KDC); when
    /// none can be had, [`Session::token_failed`] says what next.
    Token,
    /// End the attempt; the text says why, for the log (never a secret).
    GiveUp(String),
}

/// Where NTLM's three messages are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NtlmStep {
    NotStarted,
    NegotiateSent,
    AuthenticateSent,
}

/// One hop's authentication during one tunnel's handshake.
#[derive(Debug)]
pub struct Session {
    /// The scheme whose credentials the last request carried.
    sent: Option<Scheme>,
    /// Schemes whose credentials this tunnel has sent (each at most once).
    tried: u8,
    ntlm: NtlmStep,
    /// A stale Digest nonce was answered again already.
    stale_retried: bool,
    /// The Digest state this tunnel answers with (handed to the entry on
    /// success).
    digest: Option<DigestState>,
    /// The CONNECT target, the Digest `uri`.
    target: String,
    /// The last 407's challenges, to choose again when no Negotiate token
    /// can be had.
    last: Vec<String>,
}

impl Session {
    /// A session that has sent nothing yet, for a request to `target`
    /// (`host:port`, as in the request line).
    pub fn new(target: String) -> Session {
        Session {
            sent: None,
            tried: 0,
            ntlm: NtlmStep::NotStarted,
            stale_retried: false,
            digest: None,
            target,
            last: Vec::new(),
        }
    }

    /// Whether the first request waits for a Negotiate token: the scheme is
    /// named, or the entry learnt it (a fresh token per tunnel).
    pub fn negotiate_first(&mut self, proxy: &Proxy, learnt: &Learnt) -> bool {
        let wanted = match proxy.auth_scheme {
            AuthScheme::Negotiate => true,
            AuthScheme::Auto => learnt.scheme == Some(Scheme::Negotiate),
            _ => false,
        };
        if wanted {
            self.mark(Scheme::Negotiate);
        }
        wanted
    }

    /// No Negotiate token could be had (no ticket, no library; `why` says
    /// which): the scheme is passed over and the next one offered is used.
    /// `Ok(None)`: send the request without credentials.
    ///
    /// # Errors
    /// Nothing else can be tried; the text says why.
    pub fn token_failed(
        &mut self,
        proxy: &Proxy,
        learnt: &mut Learnt,
        why: &str,
    ) -> Result<Option<String>, String> {
        if learnt.scheme == Some(Scheme::Negotiate) {
            learnt.forget();
        }
        self.sent = None;
        if self.last.is_empty() {
            // The first request: what it would have carried without it.
            if proxy.auth_scheme == AuthScheme::Negotiate {
                return Err(format!("no Negotiate token: {why}"));
            }
            return Ok(self.first(proxy, learnt));
        }
        let values: Vec<String> = self.last.clone();
        match self.pick(proxy, learnt, &values) {
            Next::Answer { value, .. } => Ok(Some(value)),
            Next::Token => Err(format!("no Negotiate token: {why}")),
            Next::GiveUp(text) => Err(format!("{text}; Negotiate passed over: {why}")),
        }
    }

    /// The `Proxy-Authorization` value of the first request to `proxy`.
    pub fn first(&mut self, proxy: &Proxy, learnt: &mut Learnt) -> Option<String> {
        let credentials = proxy.credentials.as_ref()?;
        let scheme = match (proxy.auth_scheme, learnt.scheme) {
            // Negotiate asks for a token instead (`negotiate_first`).
            (AuthScheme::Negotiate, _) | (AuthScheme::Auto, Some(Scheme::Negotiate)) => {
                return None
            }
            (AuthScheme::Basic, _) => Scheme::Basic,
            (AuthScheme::Ntlm, _) => Scheme::Ntlm,
            (AuthScheme::Digest, _) | (AuthScheme::Auto, Some(Scheme::Digest)) => {
                let mut state = learnt.digest.clone()?;
                let value = state
                    .authorization_random(
                        "CONNECT",
                        &self.target,
                        &credentials.user,
                        &credentials.password,
                    )
                    .ok()?;
                // The entry's count grows with every use of its nonce.
                learnt.digest = Some(state.clone());
                self.digest = Some(state);
                self.mark(Scheme::Digest);
                return Some(value);
            }
            (AuthScheme::Auto, Some(s)) => s,
            (AuthScheme::Auto, None) => Scheme::Basic,
        };
        match scheme {
            Scheme::Ntlm => {
                self.ntlm = NtlmStep::NegotiateSent;
                self.mark(Scheme::Ntlm);
                Some(ntlm::header_value(&ntlm::negotiate()))
            }
            _ => {
                self.mark(Scheme::Basic);
                Some(basic(&credentials.user, &credentials.password))
            }
        }
    }

    /// After a 407 from `proxy` with answer `head`: the value to answer with,
    /// or why the attempt ends.
    pub fn challenged(&mut self, proxy: &Proxy, learnt: &mut Learnt, head: &Head) -> Next {
        self.last = head.challenges.clone();
        let values: Vec<String> = head.challenges.clone();
        let challenges = challenge::parse(&values.iter().map(String::as_str).collect::<Vec<_>>());
        // The NTLM handshake's second step, and a stale Digest nonce, go on
        // with the scheme just sent; anything else means it was refused.
        if let Some(credentials) = proxy.credentials.as_ref() {
            match self.sent {
                Some(Scheme::Ntlm) if self.ntlm == NtlmStep::NegotiateSent => {
                    if let Some(c) = challenges
                        .iter()
                        .find(|c| c.is("NTLM") && c.token68.is_some())
                    {
                        return self.ntlm_authenticate(c, credentials);
                    }
                }
                Some(Scheme::Digest) if !self.stale_retried => {
                    if let Some(c) = challenges
                        .iter()
                        .find(|c| c.is("Digest") && digest::is_stale(c))
                    {
                        self.stale_retried = true;
                        if let Ok(state) = DigestState::from_challenge(c) {
                            learnt.digest = None;
                            return self.digest_answer(state, credentials);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(sent) = self.sent {
            if learnt.scheme == Some(sent) {
                learnt.forget();
            }
        }
        self.pick(proxy, learnt, &values)
    }

    /// The strongest scheme the challenges offer that the configuration
    /// allows and this tunnel has not tried.
    fn pick(&mut self, proxy: &Proxy, _learnt: &mut Learnt, values: &[String]) -> Next {
        let challenges = challenge::parse(&values.iter().map(String::as_str).collect::<Vec<_>>());
        let mut names: Vec<&str> = Vec::new();
        for c in &challenges {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(&c.scheme)) {
                names.push(&c.scheme);
            }
        }
        let offered = if names.is_empty() {
            "none named".to_string()
        } else {
            names.join(", ")
        };
        let credentials = proxy.credentials.as_ref();
        let mut bad = None;
        for scheme in Scheme::STRONGEST_FIRST {
            if self.tried & scheme.bit() != 0 || !scheme.allowed_by(proxy.auth_scheme) {
                continue;
            }
            if !challenges.iter().any(|c| c.is(scheme.name())) {
                continue;
            }
            let Some(credentials) = credentials else {
                if scheme == Scheme::Negotiate {
                    self.mark(Scheme::Negotiate);
                    return Next::Token;
                }
                continue;
            };
            match scheme {
                Scheme::Negotiate => {
                    self.mark(Scheme::Negotiate);
                    return Next::Token;
                }
                Scheme::Ntlm => {
                    self.ntlm = NtlmStep::NegotiateSent;
                    self.mark(Scheme::Ntlm);
                    return Next::Answer {
                        value: ntlm::header_value(&ntlm::negotiate()),
                        same_connection: false,
                    };
                }
                Scheme::Digest => {
                    let digests: Vec<Challenge> = challenges
                        .iter()
                        .filter(|c| c.is("Digest"))
                        .cloned()
                        .collect();
                    match DigestState::from_challenges(&digests) {
                        Ok(state) => return self.digest_answer(state, credentials),
                        Err(e) => bad = Some(format!("unusable Digest challenge: {e}")),
                    }
                }
                Scheme::Basic => {
                    self.mark(Scheme::Basic);
                    return Next::Answer {
                        value: basic(&credentials.user, &credentials.password),
                        same_connection: false,
                    };
                }
            }
        }
        Next::GiveUp(match (self.sent, bad) {
            (Some(sent), _) => format!(
                "the proxy refused the credentials (scheme {}; offered: {offered})",
                sent.name()
            ),
            (None, Some(bad)) => format!("{bad} (offered: {offered})"),
            (None, None) if credentials.is_none() => {
                format!("the proxy wants credentials (offered: {offered})")
            }
            (None, None) if proxy.auth_scheme != AuthScheme::Auto => format!(
                "auth-scheme={} but the proxy does not offer it (offered: {offered})",
                proxy.auth_scheme
            ),
            (None, None) => {
                format!("the proxy offers no scheme this program speaks (offered: {offered})")
            }
        })
    }

    /// The 2xx came: the entry learns the scheme that got through.
    pub fn succeeded(&mut self, learnt: &mut Learnt) {
        let Some(sent) = self.sent else {
            return;
        };
        learnt.scheme = Some(sent);
        if sent == Scheme::Digest {
            // Keep the higher count: another tunnel may have used the nonce since.
            if let Some(mine) = self.digest.take() {
                match &mut learnt.digest {
                    Some(theirs) if theirs.nonce == mine.nonce => {
                        theirs.nc = theirs.nc.max(mine.nc)
                    }
                    other => *other = Some(mine),
                }
            }
        } else {
            learnt.digest = None;
        }
    }

    /// The scheme the last request's credentials were for, if any (for the
    /// open line).
    pub fn sent(&self) -> Option<Scheme> {
        self.sent
    }

    /// Rounds of this hop so far that carried credentials.
    pub fn rounds(&self) -> u32 {
        self.tried.count_ones()
            + u32::from(self.ntlm == NtlmStep::AuthenticateSent)
            + u32::from(self.stale_retried)
    }

    fn mark(&mut self, scheme: Scheme) {
        self.sent = Some(scheme);
        self.tried |= scheme.bit();
    }

    fn ntlm_authenticate(&mut self, c: &Challenge, credentials: &Credentials) -> Next {
        let message = ntlm::challenge_from_header(c).and_then(|ch| {
            let (domain, user) = ntlm::split_user(&credentials.user);
            let client = ntlm::client_challenge()?;
            ntlm::authenticate(
                &ch,
                user,
                domain,
                &credentials.password,
                workstation(),
                client,
                ntlm::filetime_now(),
            )
        });
        match message {
            Ok(m) => {
                self.ntlm = NtlmStep::AuthenticateSent;
                Next::Answer {
                    value: ntlm::header_value(&m),
                    same_connection: true,
                }
            }
            Err(e) => Next::GiveUp(format!("bad NTLM challenge: {e}")),
        }
    }

    fn digest_answer(&mut self, mut state: DigestState, credentials: &Credentials) -> Next {
        match state.authorization_random(
            "CONNECT",
            &self.target,
            &credentials.user,
            &credentials.password,
        ) {
            Ok(value) => {
                self.digest = Some(state);
                self.mark(Scheme::Digest);
                Next::Answer {
                    value,
                    same_connection: false,
                }
            }
            Err(e) => Next::GiveUp(format!("cannot answer the Digest challenge: {e}")),
        }
    }
}

/// The workstation name NTLM sends: this host's name, as cntlm and curl
/// send it (empty when it cannot be had).
fn workstation() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        crate::sys::host_name()
            .unwrap_or_default()
            .split('.')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase()
    })
}

/// The warning an entry gets when it is loaded, if its settings cannot work
/// as written; `None` when they can.
pub fn load_warning(proxy: &Proxy) -> Option<String> {
    match (proxy.credentials.is_some(), proxy.auth_scheme) {
        (false, AuthScheme::Basic | AuthScheme::Digest | AuthScheme::Ntlm) => Some(format!(
            "auth-scheme={} without credentials: nothing to answer the proxy with",
            proxy.auth_scheme
        )),
        _ => None,
    }
}

/// The `Proxy-Authorization` value for Basic: `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}").as_bytes());
    format!("Basic {encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Credentials, HostPort};

    fn proxy(scheme: AuthScheme, credentials: bool) -> Proxy {
        Proxy {
            addr: HostPort {
                host: "proxy".into(),
                port: 3128,
            },
            tls: false,
            credentials: credentials.then(|| Credentials {
                user: "Aladdin".into(),
                password: "open sesame".into(),
            }),
            auth_file: None,
            auth_scheme: scheme,
            headers: Vec::new(),
        }
    }

    /// A 407 with these `Proxy-Authenticate` values.
    fn challenge(values: &[&str]) -> Head {
        let mut schemes = Vec::new();
        for c in challenge::parse(values) {
            if !schemes
                .iter()
                .any(|s: &String| s.eq_ignore_ascii_case(&c.scheme))
            {
                schemes.push(c.scheme.clone());
            }
        }
        Head {
            status: 407,
            head_len: 0,
            status_line: "HTTP/1.1 407 Proxy Authentication Required".into(),
            proxy_authenticate: schemes,
            challenges: values.iter().map(|s| s.to_string()).collect(),
            content_length: Some(0),
            chunked: false,
            connection_close: false,
        }
    }

    fn session() -> Session {
        Session::new("db.example:5432".into())
    }

    fn answer(next: Next) -> String {
        match next {
            Next::Answer { value, .. } => value,
            Next::Token => panic!("expected an answer, got a token request"),
            Next::GiveUp(why) => panic!("expected an answer, got: {why}"),
        }
    }

    fn give_up(next: Next) -> String {
        match next {
            Next::GiveUp(why) => why,
            Next::Token => panic!("expected to give up, got a token request"),
            Next::Answer { value, .. } => panic!("expected to give up, got an answer {value}"),
        }
    }

    const DIGEST: &str = r#"Digest realm="corp", nonce="abc123", qop="auth", algorithm=MD5"#;

    #[test]
    fn basic_is_the_rfc_7617_example() {
        assert_eq!(
            basic("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn basic_authorization_is_utf8_user_colon_password() {
        let auth = basic("CORP\\jdoe", "pä:ss");
        let encoded = auth.strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(decoded, "CORP\\jdoe:pä:ss".as_bytes());
        assert_eq!(basic("", ""), "Basic Og==");
    }

    #[test]
    fn auto_and_basic_send_basic_first() {
        for scheme in [AuthScheme::Auto, AuthScheme::Basic] {
            let mut s = session();
            assert_eq!(
                s.first(&proxy(scheme, true), &mut Learnt::default())
                    .as_deref(),
                Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
            );
            assert_eq!(s.sent(), Some(Scheme::Basic));
        }
    }

    #[test]
    fn ntlm_starts_with_the_negotiate_message_and_digest_with_nothing() {
        let mut s = session();
        let first = s.first(&proxy(AuthScheme::Ntlm, true), &mut Learnt::default());
        assert_eq!(first, Some(ntlm::header_value(&ntlm::negotiate())));
        let mut s = session();
        assert_eq!(
            s.first(&proxy(AuthScheme::Digest, true), &mut Learnt::default()),
            None
        );
    }

    #[test]
    fn no_credentials_sends_nothing_and_says_the_proxy_wants_some() {
        let p = proxy(AuthScheme::Auto, false);
        let mut learnt = Learnt::default();
        let mut s = session();
        assert_eq!(s.first(&p, &mut learnt), None);
        assert_eq!(
            give_up(s.challenged(&p, &mut learnt, &challenge(&["Basic realm=\"x\"", "NTLM"]))),
            "the proxy wants credentials (offered: Basic, NTLM)"
        );
        assert_eq!(
            give_up(s.challenged(&p, &mut learnt, &challenge(&[]))),
            "the proxy wants credentials (offered: none named)"
        );
    }

    #[test]
    fn a_second_407_after_basic_is_a_refusal_never_a_loop() {
        let p = proxy(AuthScheme::Auto, true);
        let mut learnt = Learnt::default();
        let mut s = session();
        s.first(&p, &mut learnt);
        assert_eq!(
            give_up(s.challenged(&p, &mut learnt, &challenge(&["Basic realm=\"x\""]))),
            "the proxy refused the credentials (scheme Basic; offered: Basic)"
        );
    }

    #[test]
    fn after_basic_the_strongest_scheme_offered_is_answered() {
        let p = proxy(AuthScheme::Auto, true);
        let mut learnt = Learnt::default();
        let mut s = session();
        s.first(&p, &mut learnt);
        let all = challenge(&["Basic realm=\"x\"", DIGEST, "NTLM"]);
        let negotiate = answer(s.challenged(&p, &mut learnt, &all));
        assert!(negotiate.starts_with("NTLM TlRMTVNTUAAB"), "{negotiate}");
        // NTLM refused (a bare NTLM again): Digest comes next, then nothing.
        let digest = answer(s.challenged(&p, &mut learnt, &all));
        assert!(
            digest.starts_with("Digest username=\"Aladdin\""),
            "{digest}"
        );
        assert!(digest.contains("uri=\"db.example:5432\""), "{digest}");
        let why = give_up(s.challenged(&p, &mut learnt, &all));
        assert!(
            why.contains("refused the credentials (scheme Digest"),
            "{why}"
        );
        assert!(s.rounds() <= 3);
    }

    #[test]
    fn a_named_scheme_is_the_only_one_used() {
        let all = challenge(&["Basic realm=\"x\"", DIGEST, "NTLM"]);
        let p = proxy(AuthScheme::Digest, true);
        let mut learnt = Learnt::default();
        let mut s = session();
        assert_eq!(s.first(&p, &mut learnt), None);
        assert!(answer(s.challenged(&p, &mut learnt, &all)).starts_with("Digest "));
        let why = give_up(s.challenged(&p, &mut learnt, &all));
        assert!(why.contains("scheme Digest"), "{why}");
        // Basic only: never anything else, and nothing when Basic is not offered.
        let p = proxy(AuthScheme::Basic, true);
        let mut s = session();
        s.first(&p, &mut learnt);
        let why = give_up(s.challenged(&p, &mut learnt, &challenge(&["NTLM", DIGEST])));
        assert!(why.contains("scheme Basic"), "{why}");
        let p = proxy(AuthScheme::Ntlm, true);
        let mut s = Session::new("h:1".into());
        let why = give_up(Session::challenged(
            &mut s,
            &p,
            &mut learnt,
            &challenge(&[DIGEST]),
        ));
        assert!(
            why.contains("auth-scheme=ntlm but the proxy does not offer it"),
            "{why}"
        );
    }

    #[test]
    fn ntlm_answers_the_challenge_on_the_same_connection() {
        let p = proxy(AuthScheme::Ntlm, true);
        let mut learnt = Learnt::default();
        let mut s = session();
        s.first(&p, &mut learnt);
        let ch = ntlm::Challenge2 {
            flags: ntlm::NEGOTIATE_FLAGS | 0x0080_0000,
            server_challenge: [1, 2, 3, 4, 5, 6, 7, 8],
            target_name: Vec::new(),
            target_info: vec![0, 0, 0, 0],
            version: None,
        };
        let value = format!(
            "NTLM {}",
            base64::engine::general_purpose::STANDARD.encode(ch.to_bytes())
        );
        match s.challenged(&p, &mut learnt, &challenge(&[&value])) {
            Next::Answer {
                value,
                same_connection,
            } => {
                assert!(same_connection);
                assert!(value.starts_with("NTLM TlRMTVNTUAAD"), "{value}");
            }
            other => panic!("{other:?}"),
        }
        // A 407 after the authenticate message: refused, once.
        let why = give_up(s.challenged(&p, &mut learnt, &challenge(&["NTLM"])));
        assert!(
            why.contains("refused the credentials (scheme NTLM"),
            "{why}"
        );
    }

    #[test]
    fn a_bogus_ntlm_challenge_ends_the_attempt_clearly() {
        let p = proxy(AuthScheme::Ntlm, true);
        let mut learnt = Learnt::default();
        let mut s = session();
        s.first(&p, &mut learnt);
        // A type-2 header whose target-info offset points far outside.
        let mut m = b"NTLMSSP\0\x02\0\0\0".to_vec();
        m.extend_from_slice(&[0; 36]);
        let flags = ntlm::NEGOTIATE_UNICODE | ntlm::NEGOTIATE_TARGET_INFO;
        m[20..24].copy_from_slice(&flags.to_le_bytes());
        m[40..42].copy_from_slice(&8u16.to_le_bytes());
        m[42..44].copy_from_slice(&8u16.to_le_bytes());
        m[44..48].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        let value = format!(
            "NTLM {}",
            base64::engine::general_purpose::STANDARD.encode(&m)
        );
        let why = give_up(s.challenged(&p, &mut learnt, &challenge(&[&value])));
        assert!(why.starts_with("bad NTLM challenge"), "{why}");
    }

    #[test]
    fn learnt_schemes_start_later_tunnels_and_are_forgotten_when_refused() {
        let p = proxy(AuthScheme::Auto, true);
        let mut learnt = Learnt::default();
        // Tunnel 1: Basic pre-emptively, then Digest, which gets through.
        let mut s = session();
        s.first(&p, &mut learnt);
        answer(s.challenged(&p, &mut learnt, &challenge(&[DIGEST])));
        s.succeeded(&mut learnt);
        assert_eq!(learnt.scheme(), Some(Scheme::Digest));
        // Tunnel 2: Digest from the first request, the nonce's count grown.
        let mut s = session();
        let first = s.first(&p, &mut learnt).expect("a learnt Digest answer");
        assert!(
            first.contains("nonce=\"abc123\"") && first.contains("nc=00000002"),
            "{first}"
        );
        // Stale: answered again at once with the new nonce, count from 1.
        let stale = challenge(&[r#"Digest realm="corp", nonce="fresh", qop="auth", stale=true"#]);
        let again = answer(s.challenged(&p, &mut learnt, &stale));
        assert!(
            again.contains("nonce=\"fresh\"") && again.contains("nc=00000001"),
            "{again}"
        );
        s.succeeded(&mut learnt);
        let mut s = session();
        let third = s.first(&p, &mut learnt).unwrap();
        assert!(
            third.contains("nonce=\"fresh\"") && third.contains("nc=00000002"),
            "{third}"
        );
        // Refused (not stale): forgotten; the next tunnel starts with Basic.
        give_up(s.challenged(
            &p,
            &mut learnt,
            &challenge(&[r#"Digest realm="corp", nonce="x""#]),
        ));
        assert_eq!(learnt.scheme(), None);
        let mut s = session();
        assert!(s.first(&p, &mut learnt).unwrap().starts_with("Basic "));
    }

    #[test]
    fn a_learnt_ntlm_entry_never_sends_basic() {
        let p = proxy(AuthScheme::Auto, true);
        let mut learnt = Learnt {
            scheme: Some(Scheme::Ntlm),
            digest: None,
        };
        let mut s = session();
        assert!(s
            .first(&p, &mut learnt)
            .unwrap()
            .starts_with("NTLM TlRMTVNTUAAB"));
    }

    #[test]
    fn load_warns_for_a_named_scheme_without_credentials() {
        assert!(load_warning(&proxy(AuthScheme::Ntlm, false)).is_some());
        assert_eq!(load_warning(&proxy(AuthScheme::Auto, false)), None);
        assert_eq!(load_warning(&proxy(AuthScheme::Ntlm, true)), None);
    }

    #[test]
    fn no_message_holds_the_password() {
        let p = proxy(AuthScheme::Auto, true);
        let mut learnt = Learnt::default();
        let mut s = session();
        s.first(&p, &mut learnt);
        for next in [
            s.challenged(&p, &mut learnt, &challenge(&["Basic realm=\"x\""])),
            session().challenged(&p, &mut learnt, &challenge(&["Bearer realm=\"x\""])),
        ] {
            let why = give_up(next);
            assert!(!why.contains("open sesame"), "{why}");
        }
    }

    #[test]
    fn negotiate_comes_first_and_without_a_token_the_next_scheme_is_used() {
        let p = proxy(AuthScheme::Auto, true);
        let mut learnt = Learnt::default();
        let mut s = session();
        assert!(!s.negotiate_first(&p, &learnt));
        s.first(&p, &mut learnt);
        let offer = challenge(&["Negotiate", "NTLM", "Basic realm=\"x\""]);
        assert_eq!(s.challenged(&p, &mut learnt, &offer), Next::Token);
        // No ticket: passed over, NTLM from the same 407.
        let next = s.token_failed(&p, &mut learnt, "no credentials").unwrap();
        assert!(next.unwrap().starts_with("NTLM TlRMTVNTUAAB"));
        // Learnt Negotiate: later tunnels ask for a token first.
        let mut s = session();
        s.mark(Scheme::Negotiate);
        s.succeeded(&mut learnt);
        let mut s = session();
        assert!(s.negotiate_first(&p, &learnt));
        // Without a token, the first request falls back to Basic (auto).
        let first = s.token_failed(&p, &mut learnt, "no ticket").unwrap();
        assert!(first.unwrap().starts_with("Basic "));
        assert_eq!(learnt.scheme(), None, "forgotten");
        // auth-scheme=negotiate without a token: nothing else, one line.
        let p = proxy(AuthScheme::Negotiate, false);
        let mut s = session();
        assert!(s.negotiate_first(&p, &learnt));
        let why = s.token_failed(&p, &mut learnt, "no ticket").unwrap_err();
        assert!(why.contains("no Negotiate token: no ticket"), "{why}");
        // No credentials at all: Negotiate is still offered a try.
        let p = proxy(AuthScheme::Auto, false);
        let mut s = session();
        assert_eq!(s.challenged(&p, &mut learnt, &offer), Next::Token);
    }
}
