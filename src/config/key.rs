//! Option keys: the `KEY` of `KEY=VALUE`.
//!
//! Owns: the list of keys ([`Key::ALL`]), their spelling in the file, which
//! of them need a proxy or may be repeated, and the "unknown option" message
//! with its "did you mean" suggestion. Adding a key here makes the exhaustive
//! `match` in `grammar` fail to compile until the key is handled there.

use std::str::FromStr;

/// Declares [`Key`], [`Key::ALL`] and [`Key::as_str`] from one list, so that
/// no key can be in one of them and missing from another.
macro_rules! keys {
    ($($(#[$meta:meta])* $variant:ident => $text:literal,)+) => {
        /// An option key.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(super) enum Key {
            $($(#[$meta])* $variant,)+
        }

        impl Key {
            /// Every option key, in the order `--check` prints them.
            pub(super) const ALL: &'static [Key] = &[$(Key::$variant),+];

            /// The key as written in the file (case matters).
            pub(super) fn as_str(self) -> &'static str {
                match self {
                    $(Key::$variant => $text,)+
                }
            }
        }
    };
}

keys! {
    /// `auth=USER:PASSWORD`.
    Auth => "auth",
    /// `auth-file=PATH`.
    AuthFile => "auth-file",
    /// `auth-scheme=auto|basic|digest|ntlm|negotiate`.
    AuthScheme => "auth-scheme",
    /// `header="Name: value"`, repeatable.
    Header => "header",
    /// `connect-timeout=DURATION`.
    ConnectTimeout => "connect-timeout",
    /// `idle-timeout=DURATION`.
    IdleTimeout => "idle-timeout",
    /// `keepalive=DURATION|off`.
    Keepalive => "keepalive",
    /// `max-conns=N|unlimited`.
    MaxConns => "max-conns",
    /// `buffer=SIZE`.
    Buffer => "buffer",
    /// `proxy-backoff=DURATION`.
    ProxyBackoff => "proxy-backoff",
    /// `proxy-ca=PATH`.
    ProxyCa => "proxy-ca",
    /// `proxy-verify=on|off`.
    ProxyVerify => "proxy-verify",
    /// `allow=PATTERN[,PATTERN...]`, repeatable; client-named entries only.
    Allow => "allow",
}

impl Key {
    /// True for the options that only make sense with a proxy.
    pub(super) fn needs_proxy(self) -> bool {
        match self {
            Key::Auth
            | Key::AuthFile
            | Key::AuthScheme
            | Key::Header
            | Key::ProxyBackoff
            | Key::ProxyCa
            | Key::ProxyVerify => true,
            Key::ConnectTimeout
            | Key::IdleTimeout
            | Key::Keepalive
            | Key::MaxConns
            | Key::Buffer
            | Key::Allow => false,
        }
    }

    /// True when the key may be given more than once on a line.
    pub(super) fn repeatable(self) -> bool {
        matches!(self, Key::Header | Key::Allow)
    }
}

impl FromStr for Key {
    type Err = String;

    /// The key spelt exactly as [`Key::as_str`] gives it.
    ///
    /// # Errors
    ///
    /// Any other text: the message is the whole `unknown option "KEY"` error,
    /// with a suggestion when a known key is close.
    fn from_str(s: &str) -> Result<Key, String> {
        Key::ALL
            .iter()
            .copied()
            .find(|key| key.as_str() == s)
            .ok_or_else(|| unknown_option(s))
    }
}

/// `unknown option "KEY"`, with a suggestion when a known key is within two
/// edits (Levenshtein; on a tie, the alphabetically first key).
fn unknown_option(key: &str) -> String {
    let closest = Key::ALL
        .iter()
        .map(|known| (strsim::levenshtein(key, known.as_str()), known.as_str()))
        .min()
        .filter(|(distance, _)| *distance <= 2);
    match closest {
        Some((_, known)) => format!("unknown option {key:?} (did you mean {known:?}?)"),
        None => format!("unknown option {key:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn unknown_options_and_suggestions() {
        assert_eq!(
            err1("2222 h 22 lisen=1"),
            "x.conf:1: unknown option \"lisen\""
        );
        assert_eq!(
            err1("2222 h 22 max_conns=1"),
            "x.conf:1: unknown option \"max_conns\" (did you mean \"max-conns\"?)"
        );
        assert_eq!(
            err1("2222 h 22 Buffer=4k"),
            "x.conf:1: unknown option \"Buffer\" (did you mean \"buffer\"?)"
        );
        assert_eq!(
            err1("2222 h 22 keepalive=1 timeout=3"),
            "x.conf:1: unknown option \"timeout\""
        );
    }

    #[test]
    fn every_key_reads_back_from_its_spelling() {
        let spelt: Vec<&str> = Key::ALL.iter().map(|key| key.as_str()).collect();
        assert_eq!(
            spelt,
            [
                "auth",
                "auth-file",
                "auth-scheme",
                "header",
                "connect-timeout",
                "idle-timeout",
                "keepalive",
                "max-conns",
                "buffer",
                "proxy-backoff",
                "proxy-ca",
                "proxy-verify",
                "allow",
            ]
        );
        for key in Key::ALL {
            assert_eq!(key.as_str().parse::<Key>(), Ok(*key));
        }
        let proxy_only: Vec<&str> = Key::ALL
            .iter()
            .filter(|key| key.needs_proxy())
            .map(|key| key.as_str())
            .collect();
        assert_eq!(
            proxy_only,
            [
                "auth",
                "auth-file",
                "auth-scheme",
                "header",
                "proxy-backoff",
                "proxy-ca",
                "proxy-verify"
            ]
        );
        let repeatable: Vec<Key> = Key::ALL
            .iter()
            .copied()
            .filter(|key| key.repeatable())
            .collect();
        assert_eq!(repeatable, [Key::Header, Key::Allow]);
    }

    #[test]
    fn an_unknown_key_is_the_whole_message() {
        assert_eq!(
            "Buffer".parse::<Key>(),
            Err("unknown option \"Buffer\" (did you mean \"buffer\"?)".to_string())
        );
        assert_eq!(
            "timeout".parse::<Key>(),
            Err("unknown option \"timeout\"".to_string())
        );
        // One letter short.
        assert_eq!(
            "auth-fil".parse::<Key>(),
            Err("unknown option \"auth-fil\" (did you mean \"auth-file\"?)".to_string())
        );
    }
}
