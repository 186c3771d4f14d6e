//! The configuration file: grammar, validation, normalised form.
//!
//! Owns: turning the text of a config file (and the `auth-file`s and
//! `proxy-ca`s it names, and the proxy variables `env` reads) into a
//! [`Config`], or into every problem found, each as `FILE:LINE: message`.
//! Never does: sockets, logging, DNS. Reading files happens only through
//! [`load`] or the reader given to [`parse_str`], which callers run off the
//! reactor thread; the environment only through [`load`], [`parse_str`] or
//! the lookup given to [`parse_str_env`].
//!
//! # Where things are
//!
//! - this file: the public types, [`load`] and [`parse_str`];
//! - `lex`: one line into fields (white space, quotes, escapes, comments);
//! - `key`: the option keys, and "did you mean" for an unknown one;
//! - `grammar`: entry, `defaults` and `metrics` lines, options, merging the
//!   defaults;
//! - `options`: the `KEY=VALUE` options of one line;
//! - `routes`: the PROXY field (classic, `env`, route lists) and building the
//!   routes of an entry from it;
//! - `env`: the proxy from the environment and `NO_PROXY` ([`EnvProxy`],
//!   [`NoProxy`]);
//! - `allow`: `allow` patterns ([`Allow`], [`allowed`]);
//! - `values`: one field or option value (ports, LISTEN, hosts, durations,
//!   sizes, credentials, headers, …) into its checked form;
//! - `url`: hop URLs, percent-decoding their user info, and hiding passwords
//!   in messages;
//! - `display`: the normalised line `--check` prints.
//!
#![doc = include_str!("grammar.md")]

mod allow;
mod display;
mod env;
mod grammar;
mod key;
mod lex;
mod options;
mod routes;
#[cfg(test)]
mod test_support;
mod url;
mod values;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use allow::{allowed, Allow};
pub use env::{EnvProxy, NoProxy, PROXY_VARIABLES};
pub(crate) use values::{check_labels, is_token_char};
pub use values::{format_duration, format_size, parse_duration, parse_size};

/// Default capacity of each of a tunnel's two ring buffers. Chosen from the
/// buffer sweep in BENCHMARKS.md (`cargo bench --bench throughput -- sweep`):
/// one stream through the tunnel reaches 0.48x direct loopback with 64k,
/// 0.60x with 128k and 0.70x with 256k. Rings hold memory only while bytes
/// are in flight, so an idle tunnel costs the same at every size, and a busy
/// one already queues megabytes in its kernel socket buffers.
pub const DEFAULT_BUFFER: usize = 256 * 1024;
/// Default `connect-timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `keepalive` idle time.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);
/// Default `proxy-backoff`.
pub const DEFAULT_PROXY_BACKOFF: Duration = Duration::from_secs(30);
/// Smallest `buffer` accepted (1k).
pub const MIN_BUFFER: usize = 1024;
/// Largest `buffer` accepted (16m).
pub const MAX_BUFFER: usize = 16 * 1024 * 1024;
/// Longest duration [`parse_duration`] accepts (365 days, written `8760h`):
/// far beyond any sensible timeout, and safe to add to an `Instant`.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest `keepalive`: Linux refuses a `TCP_KEEPIDLE` above 32767 seconds.
pub const MAX_KEEPALIVE: Duration = Duration::from_secs(32767);

/// A whole, valid configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Entries in file order.
    pub entries: Vec<Entry>,
    /// The `metrics` line, if the file has one.
    pub metrics: Option<Metrics>,
}

/// The `metrics LISTEN` line: where `/metrics` is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// 1-based line number in the file.
    pub line: usize,
    /// The address to listen on (a bare `PORT` is `127.0.0.1:PORT`).
    pub listen: SocketAddr,
}

/// A host (DNS name or IP literal, IPv6 without brackets) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Checked DNS name, or canonical IPv4/IPv6 literal (IPv6 without brackets).
    pub host: String,
    /// 1–65535 when parsed from a file.
    pub port: u16,
}

/// Where an entry's tunnels end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// `LISTEN DEST_HOST DEST_PORT`: always the same destination.
    Fixed(HostPort),
    /// `LISTEN socks`: each SOCKS 4/4a/5 client names its destination.
    Socks,
    /// `LISTEN http`: each HTTP `CONNECT` client names its destination.
    Http,
}

impl Dest {
    /// The destination of a fixed entry; `None` for a client-named one.
    pub fn fixed(&self) -> Option<&HostPort> {
        match self {
            Dest::Fixed(dest) => Some(dest),
            Dest::Socks | Dest::Http => None,
        }
    }

    /// True for `socks` and `http` entries.
    pub fn is_client_named(&self) -> bool {
        self.fixed().is_none()
    }
}

/// One route of an entry: the proxies a tunnel goes through, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Each hop `CONNECT`s to the next one, the last to the destination;
    /// empty for `direct`.
    pub hops: Vec<Proxy>,
}

impl RouteSpec {
    /// The `direct` route.
    pub fn direct() -> RouteSpec {
        RouteSpec { hops: Vec::new() }
    }

    /// True for the `direct` route.
    pub fn is_direct(&self) -> bool {
        self.hops.is_empty()
    }
}

/// Proxy credentials. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Non-empty, no `:` and no control characters; may be `DOMAIN\user`.
    pub user: String,
    /// May be empty; no control characters.
    pub password: String,
}

/// `auth-scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthScheme {
    /// Basic first, then learn the strongest scheme a 407 offers.
    Auto,
    /// Basic only.
    Basic,
    /// Digest (RFC 7616).
    Digest,
    /// NTLM (negotiate, challenge, authenticate).
    Ntlm,
    /// SPNEGO/Kerberos with the user's ticket (no password in the config).
    Negotiate,
}

/// One proxy (a hop of a route) and everything that only makes sense with one.
///
/// On the first hop of a route the options (`auth`, `auth-file`,
/// `auth-scheme`, `header`) apply; later hops have only their URL's own
/// credentials, [`AuthScheme::Auto`] and no headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Where the proxy listens.
    pub addr: HostPort,
    /// `https://`: speak TLS to the proxy (SNI and certificate for `addr.host`).
    pub tls: bool,
    /// From the URL's user info, `auth=`, or the first line of `auth-file=`.
    pub credentials: Option<Credentials>,
    /// `auth-file=` resolved against the config file's folder (kept for
    /// display and reload); `Some` only when `credentials` came from it.
    pub auth_file: Option<PathBuf>,
    /// `auth-scheme=`, [`AuthScheme::Auto`] unless given.
    pub auth_scheme: AuthScheme,
    /// `header=` values, each `Name: value`, in order.
    pub headers: Vec<String>,
}

/// Per-entry options (after `defaults` were applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `connect-timeout`, more than zero; per route.
    pub connect_timeout: Duration,
    /// `None` = never.
    pub idle_timeout: Option<Duration>,
    /// `None` = off.
    pub keepalive: Option<Duration>,
    /// `None` = unlimited.
    pub max_conns: Option<usize>,
    /// Capacity of each ring buffer, in bytes.
    pub buffer: usize,
    /// `proxy-backoff`: how long a failed route is passed over; more than zero.
    pub proxy_backoff: Duration,
    /// `proxy-ca`: a readable PEM file (resolved against the config file's
    /// folder) trusted for `https://` hops instead of the system store.
    pub proxy_ca: Option<PathBuf>,
    /// `proxy-verify`: `false` accepts any certificate and name.
    pub proxy_verify: bool,
}

impl Default for Options {
    /// The built-in defaults of SPEC's option table.
    fn default() -> Options {
        Options {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: None,
            keepalive: Some(DEFAULT_KEEPALIVE),
            max_conns: None,
            buffer: DEFAULT_BUFFER,
            proxy_backoff: DEFAULT_PROXY_BACKOFF,
            proxy_ca: None,
            proxy_verify: true,
        }
    }
}

/// One listener: one entry line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number in the file (ignored by [`Entry::same_settings`]).
    pub line: usize,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// What the tunnel reaches.
    pub dest: Dest,
    /// Never empty; tried in order by each new tunnel. `[direct]` for a
    /// direct entry (and for an `env` entry the environment made direct).
    pub routes: Vec<RouteSpec>,
    /// `Some` when PROXY was `env`: what the environment said.
    pub env: Option<EnvProxy>,
    /// Client-named entries only: the destinations clients may ask for;
    /// empty means every destination (`*`). See [`allowed`].
    pub allow: Vec<Allow>,
    /// Every option, defaults applied.
    pub options: Options,
}

impl Entry {
    /// True when some route goes through a proxy, or PROXY was `env`: the
    /// entries proxy-only options may be given on.
    pub fn is_proxied(&self) -> bool {
        self.env.is_some() || self.routes.iter().any(|r| !r.is_direct())
    }

    /// True when both entries would behave the same: every field but `line`
    /// is equal (credentials included). Reload uses it to tell "changed" from
    /// "unchanged".
    pub fn same_settings(&self, other: &Entry) -> bool {
        // Destructured so that a field added to `Entry` cannot be forgotten here.
        let Entry {
            line: _,
            listen,
            dest,
            routes,
            env,
            allow,
            options,
        } = self;
        *listen == other.listen
            && *dest == other.dest
            && *routes == other.routes
            && *env == other.env
            && *allow == other.allow
            && *options == other.options
    }

    /// Every hop of every route, each once per route.
    pub fn hops(&self) -> impl Iterator<Item = &Proxy> {
        self.routes.iter().flat_map(|r| r.hops.iter())
    }
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The file name as given by the caller.
    pub file: String,
    /// 1-based line number; 0 = the whole file.
    pub line: usize,
    /// Lowercase, no trailing period, names the field at fault.
    pub message: String,
}

impl fmt::Display for Error {
    /// `FILE:LINE: message`, or `FILE: message` when the line is 0.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

impl std::error::Error for Error {}

impl fmt::Debug for Credentials {
    /// `user:***`: the password never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:***", self.user)
    }
}

impl fmt::Display for AuthScheme {
    /// The config keyword: `auto`, `basic`, `digest`, `ntlm` or `negotiate`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthScheme::Auto => "auto",
            AuthScheme::Basic => "basic",
            AuthScheme::Digest => "digest",
            AuthScheme::Ntlm => "ntlm",
            AuthScheme::Negotiate => "negotiate",
        })
    }
}

impl FromStr for AuthScheme {
    type Err = String;

    /// `auto`, `basic`, `digest`, `ntlm` or `negotiate`, case-insensitive.
    ///
    /// # Errors
    ///
    /// Any other word; the message lists the accepted ones.
    fn from_str(s: &str) -> Result<AuthScheme, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(AuthScheme::Auto),
            "basic" => Ok(AuthScheme::Basic),
            "digest" => Ok(AuthScheme::Digest),
            "ntlm" => Ok(AuthScheme::Ntlm),
            "negotiate" => Ok(AuthScheme::Negotiate),
            _ => Err("expected auto, basic, digest, ntlm or negotiate".to_string()),
        }
    }
}

/// Reads and parses the config file at `path`; `auth-file`s and `proxy-ca`s
/// are read with [`std::fs::read_to_string`], relative to the file's folder;
/// `env` reads the process environment. Errors name the file as `path` was
/// given.
///
/// # Errors
///
/// Every problem found (see [`parse_str`]); a file that cannot be read gives a
/// single error with line 0 and the OS reason, one that is not UTF-8 an error
/// on the first line that is not.
pub fn load(path: &Path) -> Result<Config, Vec<Error>> {
    let file = path.display().to_string();
    let whole_file = |message: String| {
        vec![Error {
            file: file.clone(),
            line: 0,
            message,
        }]
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return Err(whole_file(format!("cannot read file: {e}"))),
    };
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
            return Err(vec![Error {
                file,
                line,
                message: "not valid UTF-8".to_string(),
            }]);
        }
    };
    let base_dir = path.parent().unwrap_or_else(|| Path::new(""));
    parse_str(&text, &file, base_dir, &mut |p: &Path| {
        std::fs::read_to_string(p)
    })
}

/// Warnings about a valid configuration read from `file`: today, an
/// `auth-file` that users other than its owner can read (it holds a
/// password; mode 0600 is right), as `FILE:LINE: message` for the first
/// entry naming it. Reads file metadata: call it where `load` is called,
/// off the reactor thread.
pub fn warnings(config: &Config, file: &str) -> Vec<String> {
    let mut seen: Vec<&Path> = Vec::new();
    let mut out = Vec::new();
    for entry in &config.entries {
        for path in entry.hops().filter_map(|p| p.auth_file.as_deref()) {
            if seen.contains(&path) {
                continue;
            }
            seen.push(path);
            if let Ok(meta) = std::fs::metadata(path) {
                if let Some(mode) = crate::sys::readable_by_others(&meta) {
                    out.push(format!(
                        "{file}:{}: auth-file {} can be read by other users (mode {mode:04o}); `chmod 600` it",
                        entry.line,
                        path.display()
                    ));
                }
            }
        }
    }
    out
}

/// Parses the text of a config file; `env` entries read the process
/// environment (see [`parse_str_env`]).
///
/// `file` is the name errors show; `base_dir` is the folder relative
/// `auth-file` and `proxy-ca` paths start from; `read_file` reads an
/// `auth-file` or `proxy-ca` (given the resolved path) and is called once
/// per such option, in file order.
///
/// # Errors
///
/// Every problem of the file, in line order, not only the first: a bad line
/// gives all its errors and parsing carries on with the next one.
pub fn parse_str(
    text: &str,
    file: &str,
    base_dir: &Path,
    read_file: &mut dyn FnMut(&Path) -> io::Result<String>,
) -> Result<Config, Vec<Error>> {
    // A variable that is not UTF-8 is read lossily: it then fails to parse
    // and is reported by name, rather than silently taken as unset.
    let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    parse_str_env(text, file, base_dir, read_file, &env)
}

/// [`parse_str`] with the environment given as a lookup: `env(NAME)` is the
/// value of variable `NAME`, `None` when it is not set. It is asked only
/// when some entry's PROXY is `env`, and at most once per name.
///
/// # Errors
///
/// As [`parse_str`].
pub fn parse_str_env(
    text: &str,
    file: &str,
    base_dir: &Path,
    read_file: &mut dyn FnMut(&Path) -> io::Result<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Error>> {
    match grammar::parse(text, base_dir, read_file, env) {
        Ok((entries, metrics)) => Ok(Config { entries, metrics }),
        Err(errors) => Err(errors
            .into_iter()
            .map(|(line, message)| Error {
                file: file.to_string(),
                line,
                message,
            })
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::display::quote;
    use super::test_support::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn error_display_with_and_without_line() {
        let e = Error {
            file: "tunnels.conf".into(),
            line: 12,
            message: "unknown option \"lisen\"".into(),
        };
        assert_eq!(e.to_string(), "tunnels.conf:12: unknown option \"lisen\"");
        let whole = Error { line: 0, ..e };
        assert_eq!(whole.to_string(), "tunnels.conf: unknown option \"lisen\"");
    }

    #[test]
    fn auth_scheme_option() {
        for (value, scheme) in [
            ("auto", AuthScheme::Auto),
            ("basic", AuthScheme::Basic),
            ("Digest", AuthScheme::Digest),
            ("NTLM", AuthScheme::Ntlm),
            ("negotiate", AuthScheme::Negotiate),
        ] {
            let entry = one(&format!("2222 h 22 p 1 auth-scheme={value}"));
            assert_eq!(proxy_of(&entry).auth_scheme, scheme);
            assert_eq!(scheme.to_string(), value.to_ascii_lowercase());
        }
        assert_eq!(
            err1("2222 h 22 p 1 auth-scheme=kerberos"),
            "x.conf:1: invalid auth-scheme \"kerberos\": expected auto, basic, digest, ntlm or negotiate"
        );
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        assert_eq!(format!("{:?}", creds("alice", "s3cret")), "alice:***");
        assert_eq!(format!("{:?}", Some(creds("bob", "x"))), "Some(bob:***)");
    }

    #[test]
    fn same_settings_ignores_the_line_only() {
        let config = ok("2222 a 1\n\n2223 a 1\n");
        let (first, second) = (&config.entries[0], &config.entries[1]);
        let moved = Entry {
            line: 99,
            ..first.clone()
        };
        assert!(first.same_settings(&moved));
        assert!(!first.same_settings(second));
        let mut other = first.clone();
        other.options.buffer = 4096;
        assert!(!first.same_settings(&other));
        let a = one("2222 a 1 p 1 auth=u:one");
        let b = one("\n2222 a 1 p 1 auth=u:two");
        assert!(!a.same_settings(&b));
        let c = one("\n\n2222 a 1 http://u:one@p:1");
        assert!(a.same_settings(&c));
    }

    // ----- load ---------------------------------------------------------------

    /// A fresh folder under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "httptunneling-config-{}-{name}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn load_reads_the_file_and_auth_files_beside_it() {
        let dir = TempDir::new("load");
        std::fs::write(dir.0.join("pw"), "alice:s3cret\r\n").expect("write");
        let conf = dir.0.join("tunnels.conf");
        std::fs::write(&conf, "2222 h 22 p 1 auth-file=pw\r\n").expect("write");
        let config = load(&conf).expect("valid");
        let proxy = proxy_of(&config.entries[0]);
        assert_eq!(proxy.credentials, Some(creds("alice", "s3cret")));
        assert_eq!(proxy.auth_file, Some(dir.0.join("pw")));
    }

    #[test]
    fn load_reports_an_unreadable_file_on_line_0() {
        let dir = TempDir::new("missing");
        let conf = dir.0.join("nope.conf");
        let errors = load(&conf).expect_err("missing file");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 0);
        assert_eq!(errors[0].file, conf.display().to_string());
        let shown = errors[0].to_string();
        assert!(
            shown.starts_with(&format!("{}: cannot read file: ", conf.display())),
            "{shown}"
        );
        assert!(shown.contains("os error"), "{shown}");
    }

    #[test]
    fn load_reports_invalid_utf8_with_its_line() {
        let dir = TempDir::new("utf8");
        let conf = dir.0.join("bad.conf");
        std::fs::write(&conf, b"2222 h 22\n# caf\xe9\n").expect("write");
        let errors = load(&conf).expect_err("not UTF-8");
        assert_eq!(
            errors[0].to_string(),
            format!("{}:2: not valid UTF-8", conf.display())
        );
    }

    #[test]
    fn load_reports_a_missing_auth_file_with_its_path() {
        let dir = TempDir::new("authmissing");
        let conf = dir.0.join("t.conf");
        std::fs::write(&conf, "\n2222 h 22 p 1 auth-file=gone\n").expect("write");
        let errors = load(&conf).expect_err("missing auth file");
        let shown = errors[0].to_string();
        let expected = format!(
            "{}:2: cannot read auth-file {:?}: ",
            conf.display(),
            dir.0.join("gone").display().to_string()
        );
        assert!(shown.starts_with(&expected), "{shown}");
    }

    // ----- properties -------------------------------------------------------------

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("2222".to_string()),
            Just("0.0.0.0:2223".to_string()),
            Just("[::]:2224".to_string()),
            Just("[::1]:2225".to_string()),
            Just("example.com".to_string()),
            Just("::1".to_string()),
            Just("[2001:db8::1]".to_string()),
            Just("22".to_string()),
            Just("3128".to_string()),
            Just("proxy".to_string()),
            Just("http://u:p%40@proxy:3128/".to_string()),
            Just("http://[::1]:8080".to_string()),
            Just("https://x:1".to_string()),
            Just("defaults".to_string()),
            Just("#".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("auth=u:p".to_string()),
            Just("auth-file=secret".to_string()),
            Just("auth-file=missing".to_string()),
            Just("auth-scheme=ntlm".to_string()),
            Just("header=\"X-A: b c\"".to_string()),
            Just("connect-timeout=250ms".to_string()),
            Just("idle-timeout=0".to_string()),
            Just("keepalive=off".to_string()),
            Just("max-conns=3".to_string()),
            Just("buffer=16k".to_string()),
            Just("socks".to_string()),
            Just("http".to_string()),
            Just("env".to_string()),
            Just("direct".to_string()),
            Just("metrics".to_string()),
            Just("http://a:1,direct".to_string()),
            Just("https://u:p@b:2>http://c:3".to_string()),
            Just(",>".to_string()),
            Just("allow=.a,10.0.0.0/8:22".to_string()),
            Just("proxy-backoff=1s".to_string()),
            Just("proxy-ca=ca.pem".to_string()),
            Just("proxy-verify=off".to_string()),
            "[a-z=:@/%\\[\\]\"#\\\\0-9.-]{0,12}",
        ]
    }

    fn line() -> impl Strategy<Value = String> {
        prop::collection::vec(token(), 0..8).prop_map(|tokens| tokens.join(" "))
    }

    fn file() -> impl Strategy<Value = String> {
        prop::collection::vec((line(), prop_oneof![Just("\n"), Just("\r\n")]), 0..6)
            .prop_map(|lines| lines.into_iter().map(|(l, end)| l + end).collect())
    }

    /// A line that must parse, and the value of each of its options.
    fn valid_line() -> impl Strategy<Value = String> {
        let listen = prop_oneof![
            Just("2222"),
            Just("0.0.0.0:2223"),
            Just("[::]:2224"),
            Just("[fe80::1]:2225"),
            Just("127.0.0.5:9"),
        ];
        let dest = prop_oneof![
            Just("example.com"),
            Just("10.1.2.3"),
            Just("::1"),
            Just("[2001:db8::5]"),
            Just("a_b.c-d.example."),
            Just("socks"),
            Just("http"),
        ];
        let proxy = prop_oneof![
            Just(None),
            Just(Some("proxy.corp 3128")),
            Just(Some("::1 8080")),
            Just(Some("http://proxy:3128")),
            Just(Some("http://us%20er:p%40ss@[::1]:8080/")),
            Just(Some("auth-file")),
            Just(Some("env")),
            Just(Some("direct")),
            Just(Some("routes")),
        ];
        // A route list of distinct routes: each hop's port is unique.
        let hop = (
            any::<bool>(),
            prop::option::of("[a-z]{1,4}"),
            prop_oneof![Just("p.corp"), Just("10.0.0.1"), Just("[fd00::1]")],
        );
        let route = prop::option::of(prop::collection::vec(hop, 1..4));
        let routes = prop::collection::vec(route, 1..4).prop_map(|routes| {
            let mut direct_seen = false;
            let mut out = Vec::new();
            for (i, route) in routes.into_iter().enumerate() {
                match route {
                    None if direct_seen => continue,
                    None => {
                        direct_seen = true;
                        out.push("direct".to_string());
                    }
                    Some(hops) => out.push(
                        hops.into_iter()
                            .enumerate()
                            .map(|(j, (tls, user, host))| {
                                let scheme = if tls { "https" } else { "http" };
                                let info = user.map(|u| format!("{u}:pw@")).unwrap_or_default();
                                format!("{scheme}://{info}{host}:{}", 1000 + i * 10 + j)
                            })
                            .collect::<Vec<_>>()
                            .join(">"),
                    ),
                }
            }
            out.join(",")
        });
        let allow = prop::option::of(prop_oneof![
            Just("allow=*"),
            Just("allow=.example.org,10.0.0.0/8:22"),
            Just("allow=[fd00::/8]:22-80 allow=git.example.org"),
        ]);
        let tls_options = (
            prop::option::of((1u64..100_000).prop_map(|n| format!("proxy-backoff={n}ms"))),
            prop::option::of(Just("proxy-ca=ca.pem".to_string())),
            prop::option::of(prop_oneof![
                Just("proxy-verify=on".to_string()),
                Just("proxy-verify=off".to_string())
            ]),
        );
        let header = ("[A-Za-z][A-Za-z0-9-]{0,10}", "[ -~]{0,20}")
            .prop_filter("refused names", |(name, _)| {
                ![
                    "host",
                    "proxy-authorization",
                    "content-length",
                    "transfer-encoding",
                ]
                .contains(&name.to_ascii_lowercase().as_str())
            })
            .prop_map(|(name, value)| format!("header={}", quote(&format!("{name}: {value}"))));
        let options = (
            prop::option::of((1u64..100_000).prop_map(|n| format!("connect-timeout={n}ms"))),
            prop::option::of((0u64..100_000).prop_map(|n| format!("idle-timeout={n}s"))),
            prop::option::of(prop_oneof![
                Just("keepalive=off".to_string()),
                (0u64..=32767).prop_map(|n| format!("keepalive={n}"))
            ]),
            prop::option::of(prop_oneof![
                Just("max-conns=unlimited".to_string()),
                (1usize..100_000).prop_map(|n| format!("max-conns={n}"))
            ]),
            prop::option::of((MIN_BUFFER..=MAX_BUFFER).prop_map(|n| format!("buffer={n}"))),
        );
        let proxy_options = (
            prop::option::of(prop_oneof![
                Just("auth-scheme=auto"),
                Just("auth-scheme=BASIC"),
                Just("auth-scheme=ntlm")
            ]),
            prop::collection::vec(header, 0..3),
        );
        (
            listen,
            dest,
            1u16..,
            proxy,
            options,
            proxy_options,
            (routes, allow, tls_options),
        )
            .prop_map(
                |(listen, dest, port, proxy, options, (scheme, headers), (routes, allow, tls))| {
                    let client_named = matches!(dest, "socks" | "http");
                    let mut fields = vec![listen.to_string(), dest.to_string()];
                    if !client_named {
                        fields.push(port.to_string());
                    }
                    let (o1, o2, o3, o4, o5) = options;
                    match proxy {
                        None | Some("direct") => {}
                        Some("auth-file") => {
                            fields.push("p 1 auth-file=secret".to_string());
                        }
                        Some("routes") => fields.push(routes.clone()),
                        Some(p) => fields.push(p.to_string()),
                    }
                    let proxied = match proxy {
                        None | Some("direct") => false,
                        Some("routes") => routes != "direct",
                        Some(_) => true,
                    };
                    if proxied {
                        fields.extend(scheme.map(str::to_string));
                        fields.extend(headers);
                        let (b, c, v) = tls;
                        fields.extend([b, c, v].into_iter().flatten());
                    }
                    if client_named {
                        fields.extend(allow.map(str::to_string));
                    }
                    fields.extend([o1, o2, o3, o4, o5].into_iter().flatten());
                    fields.join(" ")
                },
            )
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
            let _ = parse(&text);
        }

        #[test]
        fn parse_never_panics_on_arbitrary_bytes_as_lossy_text(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn generated_valid_lines_parse_and_round_trip(line in valid_line()) {
            let config = match parse(&line) {
                Ok(config) => config,
                Err(e) => return Err(TestCaseError::fail(format!("{line} -> {e:?}"))),
            };
            let entry = &config.entries[0];
            let printed = entry.to_string();
            let again = match parse(&printed) {
                Ok(c) => c.entries[0].clone(),
                Err(e) => return Err(TestCaseError::fail(format!("{printed} -> {e:?}"))),
            };
            let expected = masked(entry);
            prop_assert!(expected.same_settings(&again), "{} vs {}", printed, again);
            prop_assert_eq!(again.to_string(), printed);
        }

        /// The file cut at any character: the complete lines before the cut
        /// give exactly the entries and errors they give in the whole file
        /// (an error never lands on an earlier line because of a later
        /// one, and a line is never read past its end); only the cut line
        /// and the file as a whole (no entry at all) may differ. The loader
        /// reads the file whole, so this is what "however it is cut" means
        /// for a config.
        #[test]
        fn complete_lines_parse_the_same_wherever_the_file_is_cut(text in file()) {
            let whole = parse(&text);
            let cuts: Vec<usize> = (0..=text.len()).filter(|&k| text.is_char_boundary(k)).collect();
            for k in cuts {
                let prefix = &text[..k];
                // The cut falls in line `cut_line`; lines before it are whole.
                let cut_line = prefix.matches('\n').count() + 1;
                let now = parse(prefix);
                let errors = |r: &Result<Config, Vec<Error>>| -> Vec<(usize, String)> {
                    match r {
                        Ok(_) => Vec::new(),
                        Err(es) => es
                            .iter()
                            .filter(|e| e.line != 0 && e.line < cut_line)
                            .map(|e| (e.line, e.message.clone()))
                            .collect(),
                    }
                };
                prop_assert_eq!(errors(&now), errors(&whole), "cut {} of {:?}", k, text);
                if let (Ok(now), Ok(whole)) = (&now, &whole) {
                    let before = |c: &Config| -> Vec<String> {
                        c.entries.iter().filter(|e| e.line < cut_line).map(|e| format!("{}:{e}", e.line)).collect()
                    };
                    prop_assert_eq!(before(now), before(whole), "cut {} of {:?}", k, text);
                }
            }
        }

        #[test]
        fn valid_entries_round_trip_through_display(text in file()) {
            match parse(&text) {
                Err(errors) => {
                    prop_assert!(!errors.is_empty());
                    for e in &errors {
                        prop_assert!(!e.message.is_empty());
                        prop_assert!(!e.message.ends_with('.'));
                        prop_assert!(!e.message.contains('\n'));
                    }
                }
                Ok(config) => {
                    prop_assert!(!config.entries.is_empty());
                    for entry in &config.entries {
                        let again = match parse(&entry.to_string()) {
                            Ok(c) => c.entries[0].clone(),
                            Err(e) => return Err(TestCaseError::fail(format!("{entry} -> {e:?}"))),
                        };
                        let expected = masked(entry);
                        prop_assert!(expected.same_settings(&again), "{} vs {}", entry, again);
                    }
                }
            }
        }
    }
}
