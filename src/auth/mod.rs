//! Proxy authentication policy, in one place: given a hop's credentials, the
//! scheme configured for it and what the proxy answered, what goes into the
//! next request's `Proxy-Authorization`, or why the attempt ends.
//!
//! Owns: which scheme is used (SPEC "Proxy authentication"), the header
//! values, the wording of a refusal, and the warning an entry gets at load
//! for a scheme that is not spoken. Never does: sockets, logging, timeouts;
//! the tunnel asks, sends what it is told and logs what it is given.
//!
//! One [`Session`] per hop per tunnel lives through the rounds of that hop's
//! handshake: [`Session::first`] for the first request, then
//! [`Session::challenged`] after each 407. Adding a scheme means: a
//! [`Scheme`] variant, its first message in `first`, its answer to a
//! challenge in `challenged`.
//!
//! Spoken today: Basic (pre-emptively, as every peer does). `digest` and
//! `ntlm` are accepted in the config; until they are spoken, an entry naming
//! them sends no credentials at all (Basic would put the password in clear
//! on the wire to a proxy the user said wants another scheme).

pub mod challenge;
pub mod digest;
pub mod ntlm;

use base64::Engine as _;

use crate::config::{AuthScheme, Proxy};
use crate::connect::Head;

/// A scheme this program can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// RFC 7617.
    Basic,
}

impl Scheme {
    /// The name as it appears in headers and log lines.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Basic => "Basic",
        }
    }
}

/// What to do after a 407.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Send the request again with this `Proxy-Authorization` value.
    Answer(String),
    /// End the attempt; the text says why, for the log (never a secret).
    GiveUp(String),
}

/// One hop's authentication during one tunnel's handshake.
#[derive(Debug, Default)]
pub struct Session {
    /// The scheme whose credentials the last request carried.
    sent: Option<Scheme>,
}

impl Session {
    /// A session that has sent nothing yet.
    pub fn new() -> Session {
        Session::default()
    }

    /// The `Proxy-Authorization` value of the first request to `proxy`:
    /// Basic when credentials are set and the scheme is `auto` or `basic`.
    pub fn first(&mut self, proxy: &Proxy) -> Option<String> {
        let credentials = proxy.credentials.as_ref()?;
        match proxy.auth_scheme {
            AuthScheme::Auto | AuthScheme::Basic => {
                self.sent = Some(Scheme::Basic);
                Some(basic(&credentials.user, &credentials.password))
            }
            AuthScheme::Digest | AuthScheme::Ntlm => None,
        }
    }

    /// After a 407 from `proxy` with answer `head`: the value to answer with,
    /// or why the attempt ends. Never answers twice with the same scheme (a
    /// second 407 after our credentials means they were refused).
    pub fn challenged(&mut self, proxy: &Proxy, head: &Head) -> Next {
        let offered = if head.proxy_authenticate.is_empty() {
            "none named".to_string()
        } else {
            head.proxy_authenticate.join(", ")
        };
        let Some(credentials) = proxy.credentials.as_ref() else {
            return Next::GiveUp(format!("the proxy wants credentials (offered: {offered})"));
        };
        if let Some(sent) = self.sent {
            return Next::GiveUp(format!(
                "the proxy refused the credentials (scheme {}; offered: {offered})",
                sent.name()
            ));
        }
        match proxy.auth_scheme {
            AuthScheme::Digest | AuthScheme::Ntlm => Next::GiveUp(format!(
                "auth-scheme={} is not spoken yet, so no credentials were sent (offered: {offered})",
                proxy.auth_scheme
            )),
            AuthScheme::Auto | AuthScheme::Basic => {
                if offers(head, Scheme::Basic) {
                    self.sent = Some(Scheme::Basic);
                    Next::Answer(basic(&credentials.user, &credentials.password))
                } else {
                    Next::GiveUp(format!(
                        "the proxy offers no scheme this program speaks (offered: {offered})"
                    ))
                }
            }
        }
    }

    /// The scheme the last request's credentials were for, if any (for the
    /// open line).
    pub fn sent(&self) -> Option<Scheme> {
        self.sent
    }
}

/// Whether the 407 offers `scheme`.
fn offers(head: &Head, scheme: Scheme) -> bool {
    head.proxy_authenticate
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme.name()))
}

/// The warning an entry gets when it is loaded, if its settings cannot work
/// as written; `None` when they can.
pub fn load_warning(proxy: &Proxy) -> Option<String> {
    match (proxy.credentials.is_some(), proxy.auth_scheme) {
        (true, AuthScheme::Digest | AuthScheme::Ntlm) => Some(format!(
            "auth-scheme={} is not supported yet; CONNECT requests go without credentials",
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
            credentials: credentials.then(|| Credentials {
                user: "Aladdin".into(),
                password: "open sesame".into(),
            }),
            auth_file: None,
            auth_scheme: scheme,
            headers: Vec::new(),
        }
    }

    fn challenge(schemes: &[&str]) -> Head {
        Head {
            status: 407,
            head_len: 0,
            status_line: "HTTP/1.1 407 Proxy Authentication Required".into(),
            proxy_authenticate: schemes.iter().map(|s| s.to_string()).collect(),
            content_length: Some(0),
            chunked: false,
            connection_close: false,
        }
    }

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
            let mut s = Session::new();
            assert_eq!(
                s.first(&proxy(scheme, true)).as_deref(),
                Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
            );
            assert_eq!(s.sent(), Some(Scheme::Basic));
        }
    }

    #[test]
    fn no_credentials_sends_nothing_and_says_the_proxy_wants_some() {
        let p = proxy(AuthScheme::Auto, false);
        let mut s = Session::new();
        assert_eq!(s.first(&p), None);
        assert_eq!(
            s.challenged(&p, &challenge(&["Basic", "NTLM"])),
            Next::GiveUp("the proxy wants credentials (offered: Basic, NTLM)".into())
        );
        assert_eq!(
            s.challenged(&p, &challenge(&[])),
            Next::GiveUp("the proxy wants credentials (offered: none named)".into())
        );
    }

    #[test]
    fn a_second_407_after_basic_is_a_refusal_never_a_loop() {
        let p = proxy(AuthScheme::Auto, true);
        let mut s = Session::new();
        s.first(&p);
        assert_eq!(
            s.challenged(&p, &challenge(&["Basic"])),
            Next::GiveUp("the proxy refused the credentials (scheme Basic; offered: Basic)".into())
        );
    }

    #[test]
    fn a_scheme_not_spoken_yet_sends_nothing_and_says_so() {
        for scheme in [AuthScheme::Digest, AuthScheme::Ntlm] {
            let p = proxy(scheme, true);
            let mut s = Session::new();
            assert_eq!(s.first(&p), None, "{scheme}: no Basic in clear");
            let Next::GiveUp(why) = s.challenged(&p, &challenge(&["Basic", "NTLM"])) else {
                panic!("{scheme}: must give up");
            };
            assert!(why.contains(&format!("auth-scheme={scheme} is not spoken yet")));
            assert!(!why.contains("refused"), "{why}");
            assert!(load_warning(&p).is_some());
        }
        assert_eq!(load_warning(&proxy(AuthScheme::Auto, true)), None);
        assert_eq!(load_warning(&proxy(AuthScheme::Ntlm, false)), None);
    }

    #[test]
    fn no_message_holds_the_password() {
        let p = proxy(AuthScheme::Auto, true);
        let mut s = Session::new();
        s.first(&p);
        for next in [
            s.challenged(&p, &challenge(&["Basic"])),
            Session::new().challenged(&p, &challenge(&["NTLM"])),
        ] {
            let Next::GiveUp(why) = next else {
                panic!("must give up")
            };
            assert!(!why.contains("open sesame"), "{why}");
        }
    }
}
