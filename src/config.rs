//! The configuration file: grammar, validation, normalised form.
//!
//! Owns: turning the text of a config file (and the `auth-file`s it names)
//! into a [`Config`], or into every problem found, each as `FILE:LINE: message`.
//! Never does: sockets, logging, DNS. Reading files happens only through
//! [`load`] or the reader given to [`parse_str`], which callers run off the
//! reactor thread.
//!
//! # Grammar
//!
//! ```text
//! file     = line *( LF line )          ; a CR before LF is dropped, a leading BOM too
//! line     = [ entry | defaults ] [ comment ]
//! comment  = "#" ...                    ; only at the start of a field (line start or after white space)
//! entry    = LISTEN DEST_HOST DEST_PORT [ PROXY_HOST PROXY_PORT | PROXY_URL ] *option
//! defaults = "defaults" 1*option
//! option   = KEY "=" VALUE              ; KEY = [A-Za-z][A-Za-z0-9_-]*, written unquoted
//! ```
//!
//! Fields are separated by ASCII white space. Inside a field a double-quoted
//! part may hold white space and `#`; inside quotes `\"` is a quote and `\\` a
//! backslash, any other backslash is kept as it is (so `"CORP\jdoe"` works).
//! Outside quotes a backslash is an ordinary character. A field is an option
//! when it starts with an unquoted `KEY=`; every other field is positional, and
//! positional fields must come before the options.
//!
//! # Invariants of a parsed [`Config`]
//!
//! - Every LISTEN address is distinct, has a port in 1–65535, and is an IP
//!   literal (a bare `PORT` is `127.0.0.1:PORT`).
//! - Every host is a checked DNS name or a canonical IP literal (IPv6 stored
//!   without brackets), so it can go into a `CONNECT` request line as it is.
//! - Credentials, headers and hosts hold no control characters, CR or LF.
//! - Durations are whole milliseconds; `keepalive` is whole seconds in
//!   1 s–32767 s (Linux `TCP_KEEPIDLE` limit); `buffer` is in
//!   [`MIN_BUFFER`]..=[`MAX_BUFFER`]; `max-conns` is at least 1.
//! - There is at least one entry.
//!
//! # Choices where SPEC is silent
//!
//! - `defaults` lines override earlier ones key by key; `header` counts as one
//!   key, so a `defaults` line with `header=` replaces the default header list.
//!   An entry's own `header=` values come after the default ones, and replace a
//!   default header of the same name (case-insensitive).
//! - `auth`, `auth-file` and the PROXY_URL's user info are one slot: giving two
//!   of them on one line is an error; on an entry line any of them replaces the
//!   default credentials. A `defaults` line's `auth-file` is read (and must be
//!   valid) at that line, once, even when no proxied entry follows.
//! - `keepalive` must be whole seconds up to 32767 s, since that is what
//!   `TCP_KEEPIDLE` takes; any duration is capped at [`MAX_DURATION`].
//! - Positional fields must come before the options. A field is an option only
//!   when it starts with an unquoted `KEY=`, so a quoted `"a=b"` is positional.
//! - `auth-scheme` is proxy-only like `auth`, `auth-file` and `header`.
//! - `header` refuses `Host` and `Proxy-Authorization` (the program writes
//!   them; a secret would also show in `--check`), and `Content-Length` and
//!   `Transfer-Encoding` (they would make the proxy wait for a request body).
//! - `keepalive=0` means `off`, as `idle-timeout=0` means never.
//! - Keyword values (`off`, `unlimited`, scheme names) and units are
//!   case-insensitive; option keys are not.
//! - A file without any entry is an error (a half-written file must not stop
//!   every listener on reload).
//! - An entry whose first hop (proxy, or destination when direct) is an IP
//!   literal or `localhost` equal to its own listen address is an error: the
//!   tunnel would connect to itself.
//! - Error messages never echo a password: `auth` values are not quoted, and a
//!   positional field shaped like `user:password@host` is shown as `user:***@host`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

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
/// Smallest `buffer` accepted (1k).
pub const MIN_BUFFER: usize = 1024;
/// Largest `buffer` accepted (16m).
pub const MAX_BUFFER: usize = 16 * 1024 * 1024;
/// Longest duration [`parse_duration`] accepts (365 days, written `8760h`):
/// far beyond any sensible timeout, and safe to add to an `Instant`.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest `keepalive`: Linux refuses a `TCP_KEEPIDLE` above 32767 seconds.
pub const MAX_KEEPALIVE: Duration = Duration::from_secs(32767);

/// The expected form of an entry line, quoted by field-count messages.
const ENTRY_FORM: &str =
    "LISTEN DEST_HOST DEST_PORT [PROXY_HOST PROXY_PORT | PROXY_URL] [KEY=VALUE ...]";

/// Every option key, in the order `--check` prints them.
const KEYS: [&str; 9] = [
    "auth",
    "auth-file",
    "auth-scheme",
    "header",
    "connect-timeout",
    "idle-timeout",
    "keepalive",
    "max-conns",
    "buffer",
];

/// Options that only make sense with a proxy.
const PROXY_ONLY: [&str; 4] = ["auth", "auth-file", "auth-scheme", "header"];

/// A whole, valid configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Entries in file order.
    pub entries: Vec<Entry>,
}

/// A host (DNS name or IP literal, IPv6 without brackets) and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Checked DNS name, or canonical IPv4/IPv6 literal (IPv6 without brackets).
    pub host: String,
    /// 1–65535 when parsed from a file.
    pub port: u16,
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
}

/// The HTTP proxy of an entry and everything that only makes sense with one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Where the proxy listens.
    pub addr: HostPort,
    /// From `auth=`, the URL's user info, or the first line of `auth-file=`.
    pub credentials: Option<Credentials>,
    /// `auth-file=` resolved against the config file's folder (kept for display and reload).
    pub auth_file: Option<PathBuf>,
    /// `auth-scheme=`, [`AuthScheme::Auto`] unless given.
    pub auth_scheme: AuthScheme,
    /// `header=` values, each `Name: value`, in order.
    pub headers: Vec<String>,
}

/// Per-entry options (after `defaults` were applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `connect-timeout`, more than zero.
    pub connect_timeout: Duration,
    /// `None` = never.
    pub idle_timeout: Option<Duration>,
    /// `None` = off.
    pub keepalive: Option<Duration>,
    /// `None` = unlimited.
    pub max_conns: Option<usize>,
    /// Capacity of each ring buffer, in bytes.
    pub buffer: usize,
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
        }
    }
}

/// One forwarded port: one line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number in the file (ignored by [`Entry::same_settings`]).
    pub line: usize,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// Where the tunnel ends.
    pub dest: HostPort,
    /// The HTTP proxy to go through, `None` for a direct connection.
    pub proxy: Option<Proxy>,
    /// Every option, defaults applied.
    pub options: Options,
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

impl HostPort {
    /// `host:port`, or `[v6]:port` for an IPv6 literal host: the form of a
    /// `CONNECT` request target and `Host` header.
    pub fn authority(&self) -> String {
        format!("{}:{}", bracketed(&self.host), self.port)
    }
}

impl fmt::Display for HostPort {
    /// Same as [`HostPort::authority`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", bracketed(&self.host), self.port)
    }
}

impl fmt::Display for AuthScheme {
    /// The config keyword: `auto`, `basic`, `digest` or `ntlm`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthScheme::Auto => "auto",
            AuthScheme::Basic => "basic",
            AuthScheme::Digest => "digest",
            AuthScheme::Ntlm => "ntlm",
        })
    }
}

impl FromStr for AuthScheme {
    type Err = String;

    /// `auto`, `basic`, `digest` or `ntlm`, case-insensitive.
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
            _ => Err("expected auto, basic, digest or ntlm".to_string()),
        }
    }
}

impl Entry {
    /// True when both entries would behave the same: every field but `line`
    /// is equal (credentials included). Reload uses it to tell "changed" from
    /// "unchanged".
    pub fn same_settings(&self, other: &Entry) -> bool {
        // Destructured so that a field added to `Entry` cannot be forgotten here.
        let Entry {
            line: _,
            listen,
            dest,
            proxy,
            options,
        } = self;
        *listen == other.listen
            && *dest == other.dest
            && *proxy == other.proxy
            && *options == other.options
    }
}

impl fmt::Display for Entry {
    /// The normalised line `--check` prints, itself a valid config line:
    ///
    /// ```text
    /// LISTEN DEST_HOST DEST_PORT [PROXY_URL [auth-file=PATH] auth-scheme=S [header="N: v" ...]]
    ///     connect-timeout=D idle-timeout=D keepalive=D max-conns=N buffer=S
    /// ```
    ///
    /// (on one line). LISTEN is the socket address (`127.0.0.1:2222`,
    /// `[::]:2222`); an IPv6 DEST_HOST is bracketed; the proxy is always a URL
    /// `http://[USER:***@]HOST:PORT`, the user info shown when the credentials
    /// come from the URL or `auth=` (the password always `***`), `auth-file=`
    /// shown instead when they come from a file. Every option appears with its
    /// effective value: durations as whole seconds (`10s`) or, when not whole,
    /// milliseconds (`250ms`); `idle-timeout=0` for never, `keepalive=off`,
    /// `max-conns=unlimited`; sizes in the largest exact unit (`64k`, `1m`,
    /// `1000`). Headers are always quoted, a path when it needs it.
    ///
    /// Parsing this line again gives an entry with the same settings, except
    /// that a password from the URL or `auth=` reads back as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.listen,
            bracketed(&self.dest.host),
            self.dest.port
        )?;
        if let Some(proxy) = &self.proxy {
            f.write_str(" http://")?;
            if let (Some(credentials), None) = (&proxy.credentials, &proxy.auth_file) {
                write!(f, "{}:***@", percent_encode_user(&credentials.user))?;
            }
            write!(f, "{}", proxy.addr)?;
            if let Some(path) = &proxy.auth_file {
                write!(f, " auth-file={}", quote_if_needed(&path.to_string_lossy()))?;
            }
            write!(f, " auth-scheme={}", proxy.auth_scheme)?;
            for header in &proxy.headers {
                write!(f, " header={}", quote(header))?;
            }
        }
        let options = &self.options;
        write!(
            f,
            " connect-timeout={} idle-timeout={} keepalive={} max-conns={} buffer={}",
            format_duration(options.connect_timeout),
            options
                .idle_timeout
                .map_or_else(|| "0".to_string(), format_duration),
            options
                .keepalive
                .map_or_else(|| "off".to_string(), format_duration),
            options
                .max_conns
                .map_or_else(|| "unlimited".to_string(), |n| n.to_string()),
            format_size(options.buffer)
        )
    }
}

/// Reads and parses the config file at `path`; `auth-file`s are read with
/// [`std::fs::read_to_string`], relative to the file's folder. Errors name the
/// file as `path` was given.
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

/// Parses the text of a config file.
///
/// `file` is the name errors show; `base_dir` is the folder relative
/// `auth-file` paths start from; `read_file` reads an `auth-file` (given the
/// resolved path) and is called once per `auth-file` option, in file order.
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
    let mut parser = Parser {
        base_dir,
        read_file,
        defaults: Defaults::default(),
        entries: Vec::new(),
        first_line_of: HashMap::new(),
        errors: Vec::new(),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        for message in parser.line(index + 1, line) {
            parser.errors.push((index + 1, message));
        }
    }
    if parser.errors.is_empty() && parser.entries.is_empty() {
        parser.errors.push((
            0,
            format!("no entries: expected lines of the form {ENTRY_FORM}"),
        ));
    }
    if parser.errors.is_empty() {
        Ok(Config {
            entries: parser.entries,
        })
    } else {
        Err(parser
            .errors
            .into_iter()
            .map(|(line, message)| Error {
                file: file.to_string(),
                line,
                message,
            })
            .collect())
    }
}

/// Parses a duration: `250ms`, `10s`, `5m`, `1h` (units case-insensitive), or
/// a bare number of seconds. Zero is accepted; callers decide what it means.
///
/// # Errors
///
/// Anything else, or more than [`MAX_DURATION`]. The message names neither
/// the value nor the field: callers put it after `invalid FIELD "VALUE": `.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a number with ms, s, m or h, e.g. 250ms, 10s, 5m, 1h";
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(EXPECTED.to_string());
    }
    let millis_per_unit: u64 = match unit.to_ascii_lowercase().as_str() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60 * 1000,
        "h" => 3600 * 1000,
        _ => return Err(EXPECTED.to_string()),
    };
    let too_large = || "too large (at most 8760h)".to_string();
    let n: u64 = digits.parse().map_err(|_| too_large())?;
    let millis = n.checked_mul(millis_per_unit).ok_or_else(too_large)?;
    let duration = Duration::from_millis(millis);
    if duration > MAX_DURATION {
        return Err(too_large());
    }
    Ok(duration)
}

/// Parses a size in bytes: `4096`, `16k`, `1m` (powers of 1024, `K`/`M` too).
///
/// # Errors
///
/// Anything else, or a size that does not fit a `usize`. The message names
/// neither the value nor the field (see [`parse_duration`]).
pub fn parse_size(s: &str) -> Result<usize, String> {
    const EXPECTED: &str = "expected a number of bytes, optionally with k or m, e.g. 4096, 16k, 1m";
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(EXPECTED.to_string());
    }
    let multiplier: usize = match unit {
        "" => 1,
        "k" | "K" => 1024,
        "m" | "M" => 1024 * 1024,
        _ => return Err(EXPECTED.to_string()),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| "too large".to_string())
}

/// A duration in the config syntax: whole seconds as `10s`, anything else as
/// milliseconds (`250ms`). Sub-millisecond parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let millis = d.as_millis();
    if millis % 1000 == 0 {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// A size in the config syntax, in the largest unit that divides it exactly:
/// `1m`, `64k`, `1000`.
pub fn format_size(n: usize) -> String {
    const K: usize = 1024;
    const M: usize = 1024 * 1024;
    if n != 0 && n % M == 0 {
        format!("{}m", n / M)
    } else if n != 0 && n % K == 0 {
        format!("{}k", n / K)
    } else {
        n.to_string()
    }
}

// ---------------------------------------------------------------------------
// Lines and fields
// ---------------------------------------------------------------------------

/// One white-space separated field, quotes and escapes already resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    text: String,
    /// Byte index of the `=` ending an unquoted `KEY`, when the field is an option.
    key_end: Option<usize>,
}

impl Field {
    /// `(key, value)` when the field is `KEY=VALUE`.
    fn option(&self) -> Option<(&str, &str)> {
        self.key_end
            .map(|end| (&self.text[..end], &self.text[end + 1..]))
    }
}

/// Splits a line (without its line end) into fields, dropping a comment.
///
/// # Errors
///
/// An unterminated quote; the message gives its column, not the text, which
/// may hold a password.
fn split_fields(line: &str) -> Result<Vec<Field>, String> {
    let chars: Vec<char> = line.chars().collect();
    let mut fields = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if chars[i] == '#' {
            break;
        }
        let mut text = String::new();
        let mut key_end = None;
        // Still reading what could be an unquoted `KEY` followed by `=`.
        let mut in_key = true;
        while i < chars.len() && !chars[i].is_ascii_whitespace() {
            let c = chars[i];
            if c == '"' {
                in_key = false;
                let opened_at = i + 1;
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(format!(
                                "unterminated quote (opened at column {opened_at})"
                            ))
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') if matches!(chars.get(i + 1), Some('"' | '\\')) => {
                            text.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(&c) => {
                            text.push(c);
                            i += 1;
                        }
                    }
                }
                continue;
            }
            if in_key {
                if c == '=' && !text.is_empty() {
                    key_end = Some(text.len());
                    in_key = false;
                } else if !(c.is_ascii_alphabetic()
                    || (!text.is_empty() && (c.is_ascii_digit() || c == '-' || c == '_')))
                {
                    in_key = false;
                }
            }
            text.push(c);
            i += 1;
        }
        fields.push(Field { text, key_end });
    }
    Ok(fields)
}

// ---------------------------------------------------------------------------
// Parser state
// ---------------------------------------------------------------------------

/// Where the credentials of the defaults come from.
#[derive(Debug, Clone, Default)]
enum DefaultCredentials {
    #[default]
    None,
    Inline(Credentials),
    File(PathBuf, Credentials),
}

/// What `defaults` lines have set so far.
#[derive(Debug, Clone, Default)]
struct Defaults {
    options: Options,
    credentials: DefaultCredentials,
    auth_scheme: Option<AuthScheme>,
    headers: Vec<String>,
}

/// The options written on one line, each parsed and valid.
#[derive(Debug, Default)]
struct LineOptions {
    auth: Option<Credentials>,
    auth_file: Option<(PathBuf, Credentials)>,
    auth_scheme: Option<AuthScheme>,
    headers: Vec<String>,
    connect_timeout: Option<Duration>,
    idle_timeout: Option<Option<Duration>>,
    keepalive: Option<Option<Duration>>,
    max_conns: Option<Option<usize>>,
    buffer: Option<usize>,
    /// Keys written on the line, valid value or not, each once.
    seen: Vec<&'static str>,
}

impl LineOptions {
    fn has(&self, key: &str) -> bool {
        self.seen.contains(&key)
    }
}

/// The proxy part of an entry line.
enum ProxyField {
    /// Three positional fields.
    Direct,
    /// A proxy is written; `None` when it did not parse (errors already noted).
    Proxied(Option<(HostPort, Option<Credentials>)>),
    /// Too few fields to tell.
    Unknown,
}

struct Parser<'a> {
    base_dir: &'a Path,
    read_file: &'a mut dyn FnMut(&Path) -> io::Result<String>,
    defaults: Defaults,
    entries: Vec<Entry>,
    /// Line of the first entry with each LISTEN address, for duplicates.
    first_line_of: HashMap<SocketAddr, usize>,
    errors: Vec<(usize, String)>,
}

impl Parser<'_> {
    /// Handles one line; returns its problems.
    fn line(&mut self, line_no: usize, line: &str) -> Vec<String> {
        let fields = match split_fields(line) {
            Ok(fields) => fields,
            Err(message) => return vec![message],
        };
        match fields.first() {
            None => Vec::new(),
            Some(first) if first.key_end.is_none() && first.text == "defaults" => {
                self.defaults_line(&fields[1..])
            }
            Some(_) => self.entry_line(line_no, &fields),
        }
    }

    fn defaults_line(&mut self, fields: &[Field]) -> Vec<String> {
        let mut errors = Vec::new();
        let mut options = Vec::new();
        for field in fields {
            if field.option().is_some() {
                options.push(field);
            } else {
                errors.push(format!(
                    "unexpected field {:?} in defaults: expected defaults KEY=VALUE [KEY=VALUE ...]",
                    redact(&field.text)
                ));
            }
        }
        if fields.is_empty() {
            errors.push("defaults without any KEY=VALUE option".to_string());
        }
        let line = self.options(&options, None, &mut errors);
        if line.has("auth") && line.has("auth-file") {
            errors.push("credentials given twice: in auth and in auth-file (keep one)".to_string());
        }
        // Apply what is valid even when the line has errors: the file is
        // rejected anyway, and this avoids follow-on errors further down.
        let defaults = &mut self.defaults;
        if let Some(credentials) = line.auth {
            defaults.credentials = DefaultCredentials::Inline(credentials);
        }
        if let Some((path, credentials)) = line.auth_file {
            defaults.credentials = DefaultCredentials::File(path, credentials);
        }
        if line.auth_scheme.is_some() {
            defaults.auth_scheme = line.auth_scheme;
        }
        if line.seen.contains(&"header") {
            defaults.headers = line.headers;
        }
        let options = &mut defaults.options;
        if let Some(v) = line.connect_timeout {
            options.connect_timeout = v;
        }
        if let Some(v) = line.idle_timeout {
            options.idle_timeout = v;
        }
        if let Some(v) = line.keepalive {
            options.keepalive = v;
        }
        if let Some(v) = line.max_conns {
            options.max_conns = v;
        }
        if let Some(v) = line.buffer {
            options.buffer = v;
        }
        errors
    }

    fn entry_line(&mut self, line_no: usize, fields: &[Field]) -> Vec<String> {
        let mut errors = Vec::new();
        let mut positional = Vec::new();
        let mut options = Vec::new();
        for field in fields {
            if field.option().is_some() {
                options.push(field);
            } else if options.is_empty() {
                positional.push(field);
            } else {
                errors.push(format!(
                    "unexpected field {:?} after the options (options are KEY=VALUE and go last)",
                    redact(&field.text)
                ));
                break;
            }
        }

        let listen = positional
            .first()
            .and_then(|f| note(parse_listen(&f.text), &mut errors));
        let dest_host = positional
            .get(1)
            .and_then(|f| note(parse_host(&f.text, "DEST_HOST"), &mut errors));
        let dest_port = positional
            .get(2)
            .and_then(|f| note(parse_port(&f.text, "DEST_PORT"), &mut errors));
        let names = ["LISTEN", "DEST_HOST", "DEST_PORT"];
        if positional.len() < names.len() {
            let missing = names[positional.len()..].join(" and ");
            errors.push(format!("missing {missing}: expected {ENTRY_FORM}"));
        }
        let proxy_field = proxy_field(&positional, &mut errors);

        let proxied = match proxy_field {
            ProxyField::Direct => Some(false),
            ProxyField::Proxied(_) => Some(true),
            ProxyField::Unknown => None,
        };
        let line = self.options(&options, proxied, &mut errors);

        let credentials = match &proxy_field {
            ProxyField::Proxied(parsed) => {
                let url_credentials = parsed.as_ref().and_then(|(_, c)| c.as_ref());
                self.entry_credentials(url_credentials, &line, &mut errors)
            }
            _ => (None, None),
        };

        let entry = match (listen, dest_host, dest_port, &proxy_field) {
            (Some(listen), Some(host), Some(port), ProxyField::Direct) => {
                Some((listen, HostPort { host, port }, None))
            }
            (Some(listen), Some(host), Some(port), ProxyField::Proxied(Some((addr, _)))) => {
                let proxy = Proxy {
                    addr: addr.clone(),
                    credentials: credentials.0,
                    auth_file: credentials.1,
                    auth_scheme: line
                        .auth_scheme
                        .or(self.defaults.auth_scheme)
                        .unwrap_or(AuthScheme::Auto),
                    headers: merge_headers(&self.defaults.headers, &line.headers),
                };
                Some((listen, HostPort { host, port }, Some(proxy)))
            }
            _ => None,
        };

        if let Some((listen, dest, proxy)) = &entry {
            let (what, first_hop) = match proxy {
                Some(proxy) => ("proxy", &proxy.addr),
                None => ("destination", dest),
            };
            if connects_to_itself(*listen, first_hop) {
                errors.push(format!(
                    "{what} {} is this entry's own listen address {listen}: the tunnel would connect to itself",
                    first_hop.authority()
                ));
            }
        }

        if let Some(listen) = listen {
            match self.first_line_of.get(&listen) {
                Some(first) => errors.push(format!(
                    "duplicate listen address {listen} (first on line {first})"
                )),
                None => {
                    self.first_line_of.insert(listen, line_no);
                }
            }
        }

        if errors.is_empty() {
            if let Some((listen, dest, proxy)) = entry {
                let defaults = &self.defaults.options;
                let options = Options {
                    connect_timeout: line.connect_timeout.unwrap_or(defaults.connect_timeout),
                    idle_timeout: line.idle_timeout.unwrap_or(defaults.idle_timeout),
                    keepalive: line.keepalive.unwrap_or(defaults.keepalive),
                    max_conns: line.max_conns.unwrap_or(defaults.max_conns),
                    buffer: line.buffer.unwrap_or(defaults.buffer),
                };
                self.entries.push(Entry {
                    line: line_no,
                    listen,
                    dest,
                    proxy,
                    options,
                });
            }
        }
        errors
    }

    /// The credentials of a proxied entry and the `auth-file` they came from:
    /// the line's own (at most one source, else an error), or the defaults'.
    fn entry_credentials(
        &self,
        url_credentials: Option<&Credentials>,
        line: &LineOptions,
        errors: &mut Vec<String>,
    ) -> (Option<Credentials>, Option<PathBuf>) {
        let sources: Vec<&str> = [
            (url_credentials.is_some(), "PROXY_URL"),
            (line.has("auth"), "auth"),
            (line.has("auth-file"), "auth-file"),
        ]
        .iter()
        .filter(|(given, _)| *given)
        .map(|(_, name)| *name)
        .collect();
        if let [first, second, ..] = sources[..] {
            errors.push(format!(
                "credentials given twice: in {first} and in {second} (keep one)"
            ));
        }
        match (url_credentials, &line.auth, &line.auth_file) {
            (Some(c), _, _) | (None, Some(c), _) => (Some(c.clone()), None),
            (None, None, Some((path, c))) => (Some(c.clone()), Some(path.clone())),
            (None, None, None) => match &self.defaults.credentials {
                DefaultCredentials::None => (None, None),
                DefaultCredentials::Inline(c) => (Some(c.clone()), None),
                DefaultCredentials::File(path, c) => (Some(c.clone()), Some(path.clone())),
            },
        }
    }

    /// Parses the `KEY=VALUE` fields of a line. `proxied` is `Some(false)` on a
    /// direct entry (proxy-only keys are refused), `None` on a defaults line or
    /// when the entry's form is unclear.
    fn options(
        &mut self,
        fields: &[&Field],
        proxied: Option<bool>,
        errors: &mut Vec<String>,
    ) -> LineOptions {
        let mut line = LineOptions::default();
        for field in fields {
            let Some((key_text, value)) = field.option() else {
                continue;
            };
            let Some(key) = KEYS.iter().copied().find(|k| *k == key_text) else {
                errors.push(unknown_option(key_text));
                continue;
            };
            let first_time = !line.has(key);
            if !first_time && key != "header" {
                errors.push(format!("option {key:?} given twice"));
                continue;
            }
            if first_time {
                line.seen.push(key);
            }
            if proxied == Some(false) && PROXY_ONLY.contains(&key) {
                // Once per key, however many `header=` the line has.
                if first_time {
                    errors.push(format!("option {key:?} needs a proxy"));
                }
                continue;
            }
            let result = match key {
                "auth" => parse_auth(value).map(|c| line.auth = Some(c)),
                "auth-file" => self.auth_file(value).map(|f| line.auth_file = Some(f)),
                "auth-scheme" => value
                    .parse()
                    .map(|s| line.auth_scheme = Some(s))
                    .map_err(|reason| format!("invalid auth-scheme {value:?}: {reason}")),
                "header" => parse_header(value).map(|h| line.headers.push(h)),
                "connect-timeout" => {
                    parse_connect_timeout(value).map(|d| line.connect_timeout = Some(d))
                }
                "idle-timeout" => parse_idle_timeout(value).map(|d| line.idle_timeout = Some(d)),
                "keepalive" => parse_keepalive(value).map(|d| line.keepalive = Some(d)),
                "max-conns" => parse_max_conns(value).map(|n| line.max_conns = Some(n)),
                "buffer" => parse_buffer(value).map(|n| line.buffer = Some(n)),
                _ => Ok(()),
            };
            if let Err(message) = result {
                errors.push(message);
            }
        }
        line
    }

    /// Resolves and reads an `auth-file`.
    fn auth_file(&mut self, value: &str) -> Result<(PathBuf, Credentials), String> {
        if value.is_empty() {
            return Err("invalid auth-file \"\": expected a path".to_string());
        }
        let path = self.base_dir.join(value);
        let shown = path.display().to_string();
        let text =
            (self.read_file)(&path).map_err(|e| format!("cannot read auth-file {shown:?}: {e}"))?;
        let first = text.split('\n').next().unwrap_or("");
        let first = first.strip_prefix('\u{feff}').unwrap_or(first);
        let first = first.trim_end_matches(['\r', '\n']);
        let (user, password) = first.split_once(':').ok_or_else(|| {
            format!("invalid auth-file {shown:?}: first line must be USER:PASSWORD")
        })?;
        check_credentials(user, password)
            .map_err(|reason| format!("invalid auth-file {shown:?}: first line: {reason}"))?;
        Ok((
            path,
            Credentials {
                user: user.to_string(),
                password: password.to_string(),
            },
        ))
    }
}

/// Pushes the error of `result`, if any, and returns its value.
fn note<T>(result: Result<T, String>, errors: &mut Vec<String>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(message) => {
            errors.push(message);
            None
        }
    }
}

/// Reads the proxy fields (4th and 5th positional) and reports extra fields.
fn proxy_field(positional: &[&Field], errors: &mut Vec<String>) -> ProxyField {
    let unexpected = |field: &Field, after: &str| {
        let hint = if KEYS.contains(&field.text.as_str()) {
            " (options are written KEY=VALUE)"
        } else {
            ""
        };
        format!(
            "unexpected field {:?} after {after}{hint}: expected {ENTRY_FORM}",
            redact(&field.text)
        )
    };
    match positional {
        [] | [_] | [_, _] => ProxyField::Unknown,
        [_, _, _] => ProxyField::Direct,
        [_, _, _, url, rest @ ..] if url.text.contains("://") => {
            if let Some(extra) = rest.first() {
                errors.push(unexpected(extra, "PROXY_URL"));
            }
            ProxyField::Proxied(note(parse_proxy_url(&url.text), errors))
        }
        [_, _, _, host] => {
            errors.push(format!(
                "missing PROXY_PORT after PROXY_HOST {:?}: write the proxy as PROXY_HOST PROXY_PORT or as http://HOST:PORT",
                redact(&host.text)
            ));
            ProxyField::Proxied(None)
        }
        [_, _, _, host, port, rest @ ..] => {
            if let Some(extra) = rest.first() {
                errors.push(unexpected(extra, "PROXY_PORT"));
            }
            let host = note(parse_host(&host.text, "PROXY_HOST"), errors);
            let port = note(parse_port(&port.text, "PROXY_PORT"), errors);
            ProxyField::Proxied(
                host.zip(port)
                    .map(|(host, port)| (HostPort { host, port }, None)),
            )
        }
    }
}

/// `unknown option "KEY"`, with a suggestion when a known key is close.
fn unknown_option(key: &str) -> String {
    let closest = KEYS
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .min()
        .filter(|(distance, _)| *distance <= 2);
    match closest {
        Some((_, known)) => format!("unknown option {key:?} (did you mean {known:?}?)"),
        None => format!("unknown option {key:?}"),
    }
}

/// Levenshtein distance, for suggestions only.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

// ---------------------------------------------------------------------------
// Field parsers. Each returns the complete message, naming the field.
// ---------------------------------------------------------------------------

/// A port 1–65535 in decimal; `what` names the field.
fn parse_port(s: &str, what: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid port {:?} in {what}: expected a number 1-65535",
            redact(s)
        ));
    }
    match s.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {s:?} out of range 1-65535 in {what}")),
    }
}

/// `PORT` (127.0.0.1), `IPV4:PORT` or `[IPV6]:PORT`.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    const EXPECTED: &str = "expected PORT, ADDR:PORT or [IPV6]:PORT";
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let port = parse_port(s, "LISTEN")?;
        return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
    }
    let shown = redact(s);
    if let Some(rest) = s.strip_prefix('[') {
        let Some((addr, port)) = rest.split_once("]:") else {
            return Err(format!("invalid LISTEN {shown:?}: {EXPECTED}"));
        };
        let ip: Ipv6Addr = addr.parse().map_err(|_| {
            format!(
                "invalid LISTEN {shown:?}: {:?} is not an IPv6 address",
                redact(addr)
            )
        })?;
        let port = parse_port(port, "LISTEN")?;
        return Ok(SocketAddr::new(ip.into(), port));
    }
    let Some((addr, port)) = s.rsplit_once(':') else {
        return Err(format!("invalid LISTEN {shown:?}: {EXPECTED}"));
    };
    if addr.contains(':') {
        return Err(format!(
            "invalid LISTEN {shown:?}: write an IPv6 address in brackets, e.g. [::1]:PORT"
        ));
    }
    let Ok(ip) = addr.parse::<Ipv4Addr>() else {
        return Err(if check_dns_name(addr).is_ok() {
            format!(
                "invalid LISTEN {shown:?}: {addr:?} is a host name; listen on an IP address, e.g. 127.0.0.1"
            )
        } else {
            format!(
                "invalid LISTEN {shown:?}: {:?} is not an IPv4 address",
                redact(addr)
            )
        });
    };
    let port = parse_port(port, "LISTEN")?;
    Ok(SocketAddr::new(ip.into(), port))
}

/// A DNS name or an IP literal (IPv6 bare or bracketed); returns the stored
/// form (IP literals canonical, IPv6 without brackets). `what` names the field.
fn parse_host(s: &str, what: &str) -> Result<String, String> {
    parse_host_reason(s).map_err(|reason| format!("invalid {what} {:?}: {reason}", redact(s)))
}

fn parse_host_reason(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty host".to_string());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let inner = rest
            .strip_suffix(']')
            .ok_or_else(|| "missing ']' after an IPv6 address".to_string())?;
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| "not an IPv6 address".to_string());
    }
    if s.contains(':') {
        return s.parse::<Ipv6Addr>().map(|ip| ip.to_string()).map_err(|_| {
            "not an IPv6 address (a port goes in its own field, or after the host in PROXY_URL)"
                .to_string()
        });
    }
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    check_dns_name(s)?;
    Ok(s.to_string())
}

/// Letters, digits, `-`, `_` and `.`; labels 1–63 long, not starting or
/// ending with `-`; at most 253 characters (a final `.` aside); the last
/// label not all digits (that would be a broken IPv4 address).
fn check_dns_name(s: &str) -> Result<(), String> {
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(if c.is_ascii() {
            format!("character {c:?} not allowed in a host name")
        } else {
            "non-ASCII host name: write it in its xn-- (punycode) form".to_string()
        });
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.len() > 253 {
        return Err("host name longer than 253 characters".to_string());
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err("empty label in host name".to_string());
        }
        if label.len() > 63 {
            return Err("label longer than 63 characters in host name".to_string());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("label starting or ending with '-' in host name".to_string());
        }
    }
    if labels
        .last()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("not a valid IPv4 address".to_string());
    }
    Ok(())
}

/// `http://[USER:PASSWORD@]HOST:PORT[/]`.
fn parse_proxy_url(s: &str) -> Result<(HostPort, Option<Credentials>), String> {
    const FORM: &str = "expected http://[USER:PASSWORD@]HOST:PORT";
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!("invalid PROXY_URL: {FORM}"));
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(format!(
            "unsupported proxy scheme {:?} in PROXY_URL: only http:// is supported",
            redact(scheme)
        ));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    // The last `@` ends the user info: a raw `@` in a password is common enough.
    let (user_info, host_port) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    if host_port.contains(['/', '?', '#']) {
        return Err(format!("invalid PROXY_URL: {FORM}, without a path"));
    }
    let (host, port) = if host_port.starts_with('[') {
        match host_port.find("]:") {
            Some(end) => (&host_port[..=end], &host_port[end + 2..]),
            None if host_port.ends_with(']') => {
                return Err(format!("PROXY_URL needs a port: {FORM}"))
            }
            None => return Err(format!("invalid PROXY_URL: {FORM}")),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err(
                    "invalid PROXY_URL: write an IPv6 host in brackets, e.g. http://[::1]:3128"
                        .to_string(),
                )
            }
            Some(split) => split,
            None => return Err(format!("PROXY_URL needs a port: {FORM}")),
        }
    };
    let host = parse_host_reason(host)
        .map_err(|reason| format!("invalid host {host:?} in PROXY_URL: {reason}"))?;
    let port = parse_port(port, "PROXY_URL")?;
    let credentials = match user_info {
        None => None,
        Some(info) => Some(
            parse_user_info(info)
                .map_err(|reason| format!("invalid user info in PROXY_URL: {reason}"))?,
        ),
    };
    Ok((HostPort { host, port }, credentials))
}

/// Percent-decoded `USER:PASSWORD` of a URL.
fn parse_user_info(info: &str) -> Result<Credentials, String> {
    let (user, password) = info
        .split_once(':')
        .ok_or_else(|| "expected USER:PASSWORD".to_string())?;
    let user = percent_decode(user)?;
    let password = percent_decode(password)?;
    check_credentials(&user, &password)?;
    Ok(Credentials { user, password })
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = match bytes.get(i + 1..i + 3) {
                Some(&[high, low]) => hex_value(high).zip(hex_value(low)),
                _ => None,
            }
            .ok_or_else(|| "'%' not followed by two hex digits".to_string())?;
            out.push(byte.0 << 4 | byte.1);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once percent-decoded".to_string())
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// The reverse of [`percent_decode`] for a user name in `--check` output:
/// only what would break the URL is encoded, so `CORP\jdoe` stays readable.
fn percent_encode_user(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for c in user.chars() {
        if c.is_control() || c.is_whitespace() || "%:@/?#[]\"".contains(c) {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Rules shared by every credentials source; the reason never holds them.
fn check_credentials(user: &str, password: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("USER is empty".to_string());
    }
    if user.contains(':') {
        return Err("USER contains ':'".to_string());
    }
    if user.chars().chain(password.chars()).any(char::is_control) {
        return Err("control characters are not allowed in USER or PASSWORD".to_string());
    }
    Ok(())
}

/// `auth=USER:PASSWORD`, split at the first `:`. Messages never echo the value.
fn parse_auth(value: &str) -> Result<Credentials, String> {
    let (user, password) = value
        .split_once(':')
        .ok_or_else(|| "invalid auth: expected USER:PASSWORD".to_string())?;
    check_credentials(user, password).map_err(|reason| format!("invalid auth: {reason}"))?;
    Ok(Credentials {
        user: user.to_string(),
        password: password.to_string(),
    })
}

/// RFC 9110 `tchar`.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The default headers an entry's own do not replace (same name,
/// case-insensitive), then the entry's own.
fn merge_headers(defaults: &[String], own: &[String]) -> Vec<String> {
    let replaced = |d: &String| {
        own.iter()
            .any(|o| header_name(o).eq_ignore_ascii_case(header_name(d)))
    };
    defaults
        .iter()
        .filter(|d| !replaced(d))
        .chain(own)
        .cloned()
        .collect()
}

fn header_name(header: &str) -> &str {
    header.split(':').next().unwrap_or(header)
}

/// `header=Name: value`; returns `Name: value` with the value's surrounding
/// white space trimmed.
fn parse_header(value: &str) -> Result<String, String> {
    let Some((name, field_value)) = value.split_once(':') else {
        return Err(format!(
            "invalid header {value:?}: expected \"Name: value\""
        ));
    };
    if name.is_empty() || !name.bytes().all(is_token_char) {
        return Err(format!(
            "invalid header {value:?}: name {name:?} is not an HTTP token"
        ));
    }
    let refused = [
        ("host", "the program writes it"),
        ("proxy-authorization", "use auth or auth-file"),
        ("content-length", "the proxy would wait for a request body"),
        (
            "transfer-encoding",
            "the proxy would wait for a request body",
        ),
    ];
    if let Some((_, why)) = refused.iter().find(|(n, _)| name.eq_ignore_ascii_case(n)) {
        return Err(format!("header {name:?} not allowed: {why}"));
    }
    let field_value = field_value.trim_matches([' ', '\t']);
    if field_value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "invalid header {value:?}: control characters in the value"
        ));
    }
    Ok(format!("{name}: {field_value}"))
}

fn parse_connect_timeout(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)
        .map_err(|reason| format!("invalid connect-timeout {value:?}: {reason}"))?;
    if d.is_zero() {
        return Err("connect-timeout must be more than 0".to_string());
    }
    Ok(d)
}

fn parse_idle_timeout(value: &str) -> Result<Option<Duration>, String> {
    let d = parse_duration(value)
        .map_err(|reason| format!("invalid idle-timeout {value:?}: {reason}"))?;
    Ok(Some(d).filter(|d| !d.is_zero()))
}

fn parse_keepalive(value: &str) -> Result<Option<Duration>, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let d = parse_duration(value)
        .map_err(|reason| format!("invalid keepalive {value:?}: {reason}, or off"))?;
    if d.is_zero() {
        return Ok(None);
    }
    if d.subsec_nanos() != 0 || d > MAX_KEEPALIVE {
        return Err(format!(
            "invalid keepalive {value:?}: whole seconds from 1s to 32767s, or off"
        ));
    }
    Ok(Some(d))
}

fn parse_max_conns(value: &str) -> Result<Option<usize>, String> {
    if value.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid max-conns {value:?}: expected a number of at least 1, or unlimited"
        ));
    }
    match value.parse::<usize>() {
        Ok(0) => Err("max-conns must be at least 1, or unlimited".to_string()),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(format!("invalid max-conns {value:?}: too large")),
    }
}

fn parse_buffer(value: &str) -> Result<usize, String> {
    let n = parse_size(value).map_err(|reason| format!("invalid buffer {value:?}: {reason}"))?;
    if !(MIN_BUFFER..=MAX_BUFFER).contains(&n) {
        return Err(format!("buffer {value:?} out of range 1k-16m"));
    }
    Ok(n)
}

/// True when the first hop is, literally, the entry's own listen address.
fn connects_to_itself(listen: SocketAddr, first_hop: &HostPort) -> bool {
    if first_hop.port != listen.port() {
        return false;
    }
    let hop_ips: Vec<IpAddr> = if first_hop.host.eq_ignore_ascii_case("localhost") {
        vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
    } else if let Ok(ip) = first_hop.host.parse::<IpAddr>() {
        vec![ip]
    } else {
        return false;
    };
    let listen_ip = listen.ip();
    hop_ips.iter().any(|ip| {
        *ip == listen_ip
            || (listen_ip.is_unspecified()
                && ip.is_ipv4() == listen_ip.is_ipv4()
                && (ip.is_loopback() || ip.is_unspecified()))
    })
}

// ---------------------------------------------------------------------------
// Output helpers
// ---------------------------------------------------------------------------

/// `[host]` for an IPv6 literal, the host itself otherwise.
fn bracketed(host: &str) -> Cow<'_, str> {
    if host.contains(':') {
        Cow::Owned(format!("[{host}]"))
    } else {
        Cow::Borrowed(host)
    }
}

/// A field in double quotes, `"` and `\` escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// [`quote`] when the field would not survive unquoted.
fn quote_if_needed(s: &str) -> Cow<'_, str> {
    if s.is_empty()
        || s.chars()
            .any(|c| c.is_ascii_whitespace() || c == '"' || c == '#')
    {
        Cow::Owned(quote(s))
    } else {
        Cow::Borrowed(s)
    }
}

/// A field as it may appear in a message: what looks like the password of
/// `[scheme://]user:password@host` becomes `***`.
fn redact(s: &str) -> Cow<'_, str> {
    let Some(at) = s.rfind('@') else {
        return Cow::Borrowed(s);
    };
    let start = s[..at].find("://").map_or(0, |i| i + 3);
    match s[start..at].find(':') {
        Some(colon) => Cow::Owned(format!("{}:***{}", &s[..start + colon], &s[at..])),
        None => Cow::Borrowed(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BASE: &str = "/etc/ht";

    /// Fake `auth-file` reader: a few fixed files, everything else missing.
    fn reader(path: &Path) -> io::Result<String> {
        let text = match path.to_str() {
            Some("/etc/ht/secret") => "alice:s3cret\n",
            Some("/etc/ht/crlf") => "bob:pw\r\nsecond line\r\n",
            Some("/etc/ht/bom") => "\u{feff}dave:pw",
            Some("/etc/ht/empty") => "",
            Some("/etc/ht/nocolon") => "alice\n",
            Some("/etc/ht/ctrl") => "alice:p\u{1}w\n",
            Some("/etc/ht/nouser") => ":pw\n",
            Some("/etc/ht/with space") => "erin:pw\n",
            Some("/abs/other") => "carol:c\n",
            _ => return Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
        };
        Ok(text.to_string())
    }

    fn parse(text: &str) -> Result<Config, Vec<Error>> {
        parse_str(text, "x.conf", Path::new(BASE), &mut reader)
    }

    fn ok(text: &str) -> Config {
        match parse(text) {
            Ok(config) => config,
            Err(errors) => panic!("unexpected errors for {text:?}: {errors:?}"),
        }
    }

    fn one(text: &str) -> Entry {
        let config = ok(text);
        assert_eq!(config.entries.len(), 1, "{config:?}");
        config.entries[0].clone()
    }

    fn errs(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(config) => panic!("{text:?} parsed: {config:?}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    /// The single error of `text`, as printed.
    fn err1(text: &str) -> String {
        let errors = errs(text);
        assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
        errors[0].clone()
    }

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.to_string(),
            port,
        }
    }

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn proxy_of(entry: &Entry) -> Proxy {
        entry.proxy.clone().expect("entry has a proxy")
    }

    fn fields(line: &str) -> Vec<String> {
        split_fields(line)
            .expect("line splits")
            .into_iter()
            .map(|f| f.text)
            .collect()
    }

    // ----- Error -----------------------------------------------------------

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

    // ----- fields, quotes, comments -----------------------------------------

    #[test]
    fn fields_split_on_spaces_and_tabs() {
        assert_eq!(fields("  a \t b\tc  "), ["a", "b", "c"]);
        assert_eq!(fields(""), Vec::<String>::new());
        assert_eq!(fields(" \t "), Vec::<String>::new());
    }

    #[test]
    fn comments_start_at_a_field_boundary_only() {
        assert_eq!(fields("# whole line"), Vec::<String>::new());
        assert_eq!(fields("   # indented"), Vec::<String>::new());
        assert_eq!(fields("a b # c d"), ["a", "b"]);
        assert_eq!(fields("a\t#c"), ["a"]);
        assert_eq!(fields("pa#ss x#y"), ["pa#ss", "x#y"]);
        assert_eq!(fields("\"#not\" b"), ["#not", "b"]);
        assert_eq!(fields("k=\"a # b\" #c"), ["k=a # b"]);
    }

    #[test]
    fn quotes_hold_spaces_and_escapes() {
        assert_eq!(fields(r#""a b" c"#), ["a b", "c"]);
        assert_eq!(fields(r#""say \"hi\"""#), [r#"say "hi""#]);
        assert_eq!(fields(r#""back\\slash""#), [r"back\slash"]);
        assert_eq!(fields(r#""CORP\jdoe""#), [r"CORP\jdoe"]);
        assert_eq!(fields(r"CORP\jdoe"), [r"CORP\jdoe"]);
        assert_eq!(fields(r#"ab"c d"ef"#), ["abc def"]);
        assert_eq!(fields(r#""""#), [""]);
        assert_eq!(fields(r#""\\" x"#), [r"\", "x"]);
    }

    #[test]
    fn option_key_must_be_unquoted_and_identifier_shaped() {
        let split = split_fields(r#"header="A: b c" "k=v" 9k=v a_b-c=1 =x http://u:p=q@h:1"#)
            .expect("splits");
        let options: Vec<Option<(&str, &str)>> = split.iter().map(Field::option).collect();
        assert_eq!(
            options,
            [
                Some(("header", "A: b c")),
                None,
                None,
                Some(("a_b-c", "1")),
                None,
                None
            ]
        );
    }

    #[test]
    fn unterminated_quote_is_an_error_with_its_column() {
        assert_eq!(
            split_fields(r#"2222 h 22 header="A: b"#),
            Err("unterminated quote (opened at column 18)".to_string())
        );
        assert_eq!(
            err1("2222 h 22 auth=\"alice:pw\n"),
            "x.conf:1: unterminated quote (opened at column 16)"
        );
        assert_eq!(
            split_fields(r#""abc\""#),
            Err("unterminated quote (opened at column 1)".to_string())
        );
    }

    // ----- whole files --------------------------------------------------------

    #[test]
    fn blank_lines_comments_crlf_bom_and_no_final_newline() {
        let text = "\u{feff}# tunnels\r\n\r\n   \r\n2222 a.example 22\r\n\t# x\r\n3333 b.example 33 # direct\r\n4444 c.example 44";
        let config = ok(text);
        let lines: Vec<usize> = config.entries.iter().map(|e| e.line).collect();
        assert_eq!(lines, [4, 6, 7]);
        assert_eq!(config.entries[2].dest, hp("c.example", 44));
    }

    #[test]
    fn crlf_does_not_leak_into_the_last_field() {
        let entry = one("2222 h 22 proxy 3128 header=\"X-A: b\"\r\n");
        assert_eq!(proxy_of(&entry).headers, ["X-A: b"]);
        let entry = one("2222 h 22 proxy 3128 auth=u:pw\r\n");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("u", "pw")));
    }

    #[test]
    fn a_file_without_entries_is_an_error() {
        assert_eq!(
            err1(""),
            "x.conf: no entries: expected lines of the form LISTEN DEST_HOST DEST_PORT [PROXY_HOST PROXY_PORT | PROXY_URL] [KEY=VALUE ...]"
        );
        assert_eq!(errs("# nothing\n\ndefaults buffer=4k\n").len(), 1);
    }

    #[test]
    fn every_bad_line_is_reported_in_order() {
        let text = "\
# header comment
2222 a.example 22
2223 b.example 70000
2224 a@b 22 lisen=1
2225 c.example 25 https://proxy:1
2222 d.example 22
2226 e.example 26 auth=u:p
2227 f.example 27 buffer=1g keepalive=500ms
2228 g.example 28 header=\"broken
2229 h.example
";
        // The same with CRLF line ends, and the same line numbers.
        assert_eq!(errs(text), errs(&text.replace('\n', "\r\n")));
        assert_eq!(
            errs(text),
            [
                "x.conf:3: port \"70000\" out of range 1-65535 in DEST_PORT",
                "x.conf:4: invalid DEST_HOST \"a@b\": character '@' not allowed in a host name",
                "x.conf:4: unknown option \"lisen\"",
                "x.conf:5: unsupported proxy scheme \"https\" in PROXY_URL: only http:// is supported",
                "x.conf:6: duplicate listen address 127.0.0.1:2222 (first on line 2)",
                "x.conf:7: option \"auth\" needs a proxy",
                "x.conf:8: invalid buffer \"1g\": expected a number of bytes, optionally with k or m, e.g. 4096, 16k, 1m",
                "x.conf:8: invalid keepalive \"500ms\": whole seconds from 1s to 32767s, or off",
                "x.conf:9: unterminated quote (opened at column 26)",
                "x.conf:10: missing DEST_PORT: expected LISTEN DEST_HOST DEST_PORT [PROXY_HOST PROXY_PORT | PROXY_URL] [KEY=VALUE ...]",
            ]
        );
    }

    // ----- entry forms ----------------------------------------------------------

    #[test]
    fn three_field_form_is_direct_with_default_options() {
        let entry = one("2222 example.com 22");
        assert_eq!(
            entry,
            Entry {
                line: 1,
                listen: sa("127.0.0.1:2222"),
                dest: hp("example.com", 22),
                proxy: None,
                options: Options::default(),
            }
        );
        assert_eq!(
            Options::default(),
            Options {
                connect_timeout: Duration::from_secs(10),
                idle_timeout: None,
                keepalive: Some(Duration::from_secs(60)),
                max_conns: None,
                buffer: 256 * 1024,
            }
        );
    }

    #[test]
    fn classic_five_field_form() {
        let entry = one("2222 example.com 22 proxy.corp 3128");
        assert_eq!(
            entry.proxy,
            Some(Proxy {
                addr: hp("proxy.corp", 3128),
                credentials: None,
                auth_file: None,
                auth_scheme: AuthScheme::Auto,
                headers: vec![],
            })
        );
        let entry = one("2222 example.com 22 ::1 3128");
        assert_eq!(proxy_of(&entry).addr, hp("::1", 3128));
        let entry = one("2222 example.com 22 [::1] 3128");
        assert_eq!(proxy_of(&entry).addr, hp("::1", 3128));
    }

    #[test]
    fn proxy_url_form() {
        let entry = one("2222 example.com 22 http://proxy.corp:3128");
        assert_eq!(proxy_of(&entry).addr, hp("proxy.corp", 3128));
        assert_eq!(proxy_of(&entry).credentials, None);
        let entry = one("2222 example.com 22 HTTP://proxy.corp:3128/");
        assert_eq!(proxy_of(&entry).addr, hp("proxy.corp", 3128));
        let entry = one("2222 example.com 22 http://[2001:DB8::1]:8080");
        assert_eq!(proxy_of(&entry).addr, hp("2001:db8::1", 8080));
        let entry = one("2222 example.com 22 http://10.0.0.1:8080");
        assert_eq!(proxy_of(&entry).addr, hp("10.0.0.1", 8080));
    }

    #[test]
    fn proxy_url_credentials_are_percent_decoded() {
        let entry = one("2222 h 22 http://alice:s3cret@proxy:3128");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("alice", "s3cret")));
        let entry = one("2222 h 22 http://CORP%5Cjdoe:p%40ss%3Aw%25rd%20x@proxy:3128");
        assert_eq!(
            proxy_of(&entry).credentials,
            Some(creds(r"CORP\jdoe", "p@ss:w%rd x"))
        );
        let entry = one("2222 h 22 http://us%C3%A9r:pw@proxy:3128");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("usér", "pw")));
        // Lenient: a raw `@` in the password, a raw backslash in the user.
        let entry = one(r"2222 h 22 http://CORP\jdoe:p@ss@proxy:3128");
        assert_eq!(
            proxy_of(&entry).credentials,
            Some(creds(r"CORP\jdoe", "p@ss"))
        );
        let entry = one("2222 h 22 http://alice:@proxy:3128");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("alice", "")));
        let entry = one("2222 h 22 http://alice:a=b@proxy:3128");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("alice", "a=b")));
    }

    #[test]
    fn proxy_url_errors() {
        let cases = [
            ("https://proxy:3128", "unsupported proxy scheme \"https\" in PROXY_URL: only http:// is supported"),
            ("socks5://proxy:1080", "unsupported proxy scheme \"socks5\" in PROXY_URL: only http:// is supported"),
            ("http://proxy", "PROXY_URL needs a port: expected http://[USER:PASSWORD@]HOST:PORT"),
            ("http://[::1]", "PROXY_URL needs a port: expected http://[USER:PASSWORD@]HOST:PORT"),
            ("http://[::1", "invalid PROXY_URL: expected http://[USER:PASSWORD@]HOST:PORT"),
            ("http://proxy:3128/path", "invalid PROXY_URL: expected http://[USER:PASSWORD@]HOST:PORT, without a path"),
            ("http://proxy:3128?x", "invalid PROXY_URL: expected http://[USER:PASSWORD@]HOST:PORT, without a path"),
            ("http://proxy:3128//", "invalid PROXY_URL: expected http://[USER:PASSWORD@]HOST:PORT, without a path"),
            ("http://::1:3128", "invalid PROXY_URL: write an IPv6 host in brackets, e.g. http://[::1]:3128"),
            ("http://:3128", "invalid host \"\" in PROXY_URL: empty host"),
            ("http://pro_xy!:3128", "invalid host \"pro_xy!\" in PROXY_URL: character '!' not allowed in a host name"),
            ("http://proxy:0", "port \"0\" out of range 1-65535 in PROXY_URL"),
            ("http://proxy:http", "invalid port \"http\" in PROXY_URL: expected a number 1-65535"),
            ("http://proxy:", "invalid port \"\" in PROXY_URL: expected a number 1-65535"),
            ("http://alice@proxy:1", "invalid user info in PROXY_URL: expected USER:PASSWORD"),
            ("http://:pw@proxy:1", "invalid user info in PROXY_URL: USER is empty"),
            ("http://a%3Ab:pw@proxy:1", "invalid user info in PROXY_URL: USER contains ':'"),
            ("http://a:p%0Aw@proxy:1", "invalid user info in PROXY_URL: control characters are not allowed in USER or PASSWORD"),
            ("http://a:p%zzw@proxy:1", "invalid user info in PROXY_URL: '%' not followed by two hex digits"),
            ("http://a:pw%4@proxy:1", "invalid user info in PROXY_URL: '%' not followed by two hex digits"),
            ("http://a:p%FFw@proxy:1", "invalid user info in PROXY_URL: not UTF-8 once percent-decoded"),
        ];
        for (url, message) in cases {
            assert_eq!(
                err1(&format!("2222 h 22 {url}")),
                format!("x.conf:1: {message}"),
                "{url}"
            );
        }
    }

    #[test]
    fn field_count_errors_name_the_expected_form() {
        let form = "expected LISTEN DEST_HOST DEST_PORT [PROXY_HOST PROXY_PORT | PROXY_URL] [KEY=VALUE ...]";
        assert_eq!(
            err1("2222"),
            format!("x.conf:1: missing DEST_HOST and DEST_PORT: {form}")
        );
        assert_eq!(
            err1("2222 h"),
            format!("x.conf:1: missing DEST_PORT: {form}")
        );
        assert_eq!(
            err1("buffer=4k"),
            format!("x.conf:1: missing LISTEN and DEST_HOST and DEST_PORT: {form}")
        );
        assert_eq!(
            err1("2222 h 22 proxy"),
            "x.conf:1: missing PROXY_PORT after PROXY_HOST \"proxy\": write the proxy as PROXY_HOST PROXY_PORT or as http://HOST:PORT"
        );
        assert_eq!(
            err1("2222 h 22 http://proxy:3128 3128"),
            format!("x.conf:1: unexpected field \"3128\" after PROXY_URL: {form}")
        );
        assert_eq!(
            err1("2222 h 22 proxy 3128 extra"),
            format!("x.conf:1: unexpected field \"extra\" after PROXY_PORT: {form}")
        );
        // `2222 h 22 max-conns 5` is a valid classic line (proxy "max-conns"), but:
        assert_eq!(
            err1("2222 h 22 p 1 max-conns 5"),
            format!("x.conf:1: unexpected field \"max-conns\" after PROXY_PORT (options are written KEY=VALUE): {form}")
        );
        assert_eq!(
            err1("2222 h 22 buffer=4k proxy 3128"),
            "x.conf:1: unexpected field \"proxy\" after the options (options are KEY=VALUE and go last)"
        );
    }

    // ----- LISTEN -------------------------------------------------------------

    #[test]
    fn listen_forms() {
        let cases = [
            ("2222", "127.0.0.1:2222"),
            ("02222", "127.0.0.1:2222"),
            ("127.0.0.1:2222", "127.0.0.1:2222"),
            ("127.0.0.2:2222", "127.0.0.2:2222"),
            ("0.0.0.0:2222", "0.0.0.0:2222"),
            ("[::]:2222", "[::]:2222"),
            ("[::1]:2222", "[::1]:2222"),
            ("[2001:DB8::1]:65535", "[2001:db8::1]:65535"),
        ];
        for (listen, expected) in cases {
            assert_eq!(
                one(&format!("{listen} h 22")).listen,
                sa(expected),
                "{listen}"
            );
        }
    }

    #[test]
    fn listen_errors() {
        let cases = [
            ("localhost:2222", "invalid LISTEN \"localhost:2222\": \"localhost\" is a host name; listen on an IP address, e.g. 127.0.0.1"),
            ("::1:2222", "invalid LISTEN \"::1:2222\": write an IPv6 address in brackets, e.g. [::1]:PORT"),
            ("[::1]2222", "invalid LISTEN \"[::1]2222\": expected PORT, ADDR:PORT or [IPV6]:PORT"),
            ("[1.2.3.4]:22", "invalid LISTEN \"[1.2.3.4]:22\": \"1.2.3.4\" is not an IPv6 address"),
            ("ssh", "invalid LISTEN \"ssh\": expected PORT, ADDR:PORT or [IPV6]:PORT"),
            (":2222", "invalid LISTEN \":2222\": \"\" is not an IPv4 address"),
            ("1.2.3.999:22", "invalid LISTEN \"1.2.3.999:22\": \"1.2.3.999\" is not an IPv4 address"),
            ("0", "port \"0\" out of range 1-65535 in LISTEN"),
            ("65536", "port \"65536\" out of range 1-65535 in LISTEN"),
            ("99999999999999999999", "port \"99999999999999999999\" out of range 1-65535 in LISTEN"),
            ("127.0.0.1:", "invalid port \"\" in LISTEN: expected a number 1-65535"),
            ("127.0.0.1:x", "invalid port \"x\" in LISTEN: expected a number 1-65535"),
            ("[::]:0", "port \"0\" out of range 1-65535 in LISTEN"),
            ("-1", "invalid LISTEN \"-1\": expected PORT, ADDR:PORT or [IPV6]:PORT"),
        ];
        for (listen, message) in cases {
            assert_eq!(
                err1(&format!("{listen} h 22")),
                format!("x.conf:1: {message}"),
                "{listen}"
            );
        }
    }

    #[test]
    fn duplicate_listen_addresses_compare_normalised() {
        assert_eq!(
            err1("2222 a 1\n\n127.0.0.1:2222 b 2\n"),
            "x.conf:3: duplicate listen address 127.0.0.1:2222 (first on line 1)"
        );
        assert_eq!(
            err1("[::1]:2222 a 1\n[0:0::1]:2222 b 2\n"),
            "x.conf:2: duplicate listen address [::1]:2222 (first on line 1)"
        );
        // Different addresses on one port are the OS's concern, not ours.
        let config = ok("0.0.0.0:2222 a 1\n127.0.0.1:2222 b 2\n[::]:2222 c 3\n[::1]:2222 d 4\n");
        assert_eq!(config.entries.len(), 4);
    }

    #[test]
    fn a_bad_line_still_claims_its_listen_address() {
        assert_eq!(
            errs("2222 a@b 22\n2222 ok 22\n"),
            [
                "x.conf:1: invalid DEST_HOST \"a@b\": character '@' not allowed in a host name",
                "x.conf:2: duplicate listen address 127.0.0.1:2222 (first on line 1)",
            ]
        );
        // A LISTEN that does not parse claims nothing.
        assert_eq!(errs("222x a 1\n2222 b 2\n").len(), 1);
    }

    // ----- hosts and ports ------------------------------------------------------

    #[test]
    fn dest_host_forms() {
        let cases = [
            ("example.com", "example.com"),
            ("Example.COM", "Example.COM"),
            ("example.com.", "example.com."),
            ("db", "db"),
            ("_srv.my-host.example", "_srv.my-host.example"),
            ("10.0.0.5", "10.0.0.5"),
            ("::1", "::1"),
            ("[::1]", "::1"),
            ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
            ("[::ffff:1.2.3.4]", "::ffff:1.2.3.4"),
            ("1.2.3.4a", "1.2.3.4a"),
        ];
        for (host, stored) in cases {
            assert_eq!(one(&format!("2222 {host} 22")).dest.host, stored, "{host}");
        }
        let long_label = "a".repeat(63);
        let long_name = [long_label.as_str(); 4].join(".");
        assert_eq!(long_name.len(), 255);
        let name_253 = &long_name[2..];
        assert_eq!(one(&format!("2222 {name_253} 22")).dest.host, name_253);
    }

    #[test]
    fn dest_host_errors() {
        let label_64 = "a".repeat(64);
        let name_254 = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62)
        );
        assert_eq!(name_254.len(), 254);
        let cases: Vec<(String, String)> = vec![
            ("\"a b\"".into(), "invalid DEST_HOST \"a b\": character ' ' not allowed in a host name".into()),
            ("a/b".into(), "invalid DEST_HOST \"a/b\": character '/' not allowed in a host name".into()),
            ("\"a\u{1}b\"".into(), "invalid DEST_HOST \"a\\u{1}b\": character '\\u{1}' not allowed in a host name".into()),
            ("h:22".into(), "invalid DEST_HOST \"h:22\": not an IPv6 address (a port goes in its own field, or after the host in PROXY_URL)".into()),
            ("[1.2.3.4]".into(), "invalid DEST_HOST \"[1.2.3.4]\": not an IPv6 address".into()),
            ("[::1".into(), "invalid DEST_HOST \"[::1\": missing ']' after an IPv6 address".into()),
            ("fe80::1%eth0".into(), "invalid DEST_HOST \"fe80::1%eth0\": not an IPv6 address (a port goes in its own field, or after the host in PROXY_URL)".into()),
            ("256.1.1.1".into(), "invalid DEST_HOST \"256.1.1.1\": not a valid IPv4 address".into()),
            ("1.2.3".into(), "invalid DEST_HOST \"1.2.3\": not a valid IPv4 address".into()),
            ("a..b".into(), "invalid DEST_HOST \"a..b\": empty label in host name".into()),
            (".".into(), "invalid DEST_HOST \".\": empty label in host name".into()),
            ("-a.b".into(), "invalid DEST_HOST \"-a.b\": label starting or ending with '-' in host name".into()),
            ("a-.b".into(), "invalid DEST_HOST \"a-.b\": label starting or ending with '-' in host name".into()),
            (label_64.clone(), format!("invalid DEST_HOST \"{label_64}\": label longer than 63 characters in host name")),
            (name_254.clone(), format!("invalid DEST_HOST \"{name_254}\": host name longer than 253 characters")),
            ("bücher.de".into(), "invalid DEST_HOST \"bücher.de\": non-ASCII host name: write it in its xn-- (punycode) form".into()),
            ("\"\"".into(), "invalid DEST_HOST \"\": empty host".into()),
            ("user:pw@h".into(), "invalid DEST_HOST \"user:***@h\": not an IPv6 address (a port goes in its own field, or after the host in PROXY_URL)".into()),
        ];
        for (host, message) in cases {
            assert_eq!(
                err1(&format!("2222 {host} 22")),
                format!("x.conf:1: {message}"),
                "{host}"
            );
        }
    }

    #[test]
    fn proxy_host_uses_the_same_rules() {
        assert_eq!(
            err1("2222 h 22 proxy:3128 3128"),
            "x.conf:1: invalid PROXY_HOST \"proxy:3128\": not an IPv6 address (a port goes in its own field, or after the host in PROXY_URL)"
        );
        assert_eq!(
            err1("2222 h 22 proxy 99999"),
            "x.conf:1: port \"99999\" out of range 1-65535 in PROXY_PORT"
        );
        assert_eq!(
            errs("2222 h 22 pr@xy 0"),
            [
                "x.conf:1: invalid PROXY_HOST \"pr@xy\": character '@' not allowed in a host name",
                "x.conf:1: port \"0\" out of range 1-65535 in PROXY_PORT",
            ]
        );
    }

    #[test]
    fn ports_are_decimal_1_to_65535() {
        assert_eq!(one("2222 h 1").dest.port, 1);
        assert_eq!(one("2222 h 65535").dest.port, 65535);
        assert_eq!(one("2222 h 0022").dest.port, 22);
        for (port, message) in [
            ("0", "port \"0\" out of range 1-65535 in DEST_PORT"),
            ("65536", "port \"65536\" out of range 1-65535 in DEST_PORT"),
            ("70000", "port \"70000\" out of range 1-65535 in DEST_PORT"),
            (
                "ssh",
                "invalid port \"ssh\" in DEST_PORT: expected a number 1-65535",
            ),
            (
                "+22",
                "invalid port \"+22\" in DEST_PORT: expected a number 1-65535",
            ),
            (
                "0x16",
                "invalid port \"0x16\" in DEST_PORT: expected a number 1-65535",
            ),
            (
                "22.0",
                "invalid port \"22.0\" in DEST_PORT: expected a number 1-65535",
            ),
        ] {
            assert_eq!(
                err1(&format!("2222 h {port}")),
                format!("x.conf:1: {message}")
            );
        }
    }

    #[test]
    fn first_hop_equal_to_the_listen_address_is_refused() {
        assert_eq!(
            err1("2222 127.0.0.1 2222"),
            "x.conf:1: destination 127.0.0.1:2222 is this entry's own listen address 127.0.0.1:2222: the tunnel would connect to itself"
        );
        assert_eq!(
            err1("0.0.0.0:2222 localhost 2222"),
            "x.conf:1: destination localhost:2222 is this entry's own listen address 0.0.0.0:2222: the tunnel would connect to itself"
        );
        assert_eq!(
            err1("[::1]:3128 h 22 ::1 3128"),
            "x.conf:1: proxy [::1]:3128 is this entry's own listen address [::1]:3128: the tunnel would connect to itself"
        );
        assert_eq!(
            err1("[::]:3128 h 22 http://[::1]:3128"),
            "x.conf:1: proxy [::1]:3128 is this entry's own listen address [::]:3128: the tunnel would connect to itself"
        );
        // Another port, address or family, or a name we cannot judge: fine.
        ok("2222 127.0.0.1 2223");
        ok("2222 127.0.0.2 2222");
        ok("[::]:2222 127.0.0.1 2222");
        ok("2222 myhost 2222");
        // Through a proxy the destination may well be the same address elsewhere.
        ok("2222 127.0.0.1 2222 proxy 3128");
    }

    // ----- options ------------------------------------------------------------

    #[test]
    fn every_option_on_an_entry() {
        let entry = one(
            "2222 h 22 proxy 3128 auth=alice:pw auth-scheme=NTLM header=\"User-Agent: Mozilla/5.0 (X11)\" \
             header=X-A:1 connect-timeout=250ms idle-timeout=5m keepalive=30 max-conns=8 buffer=16K",
        );
        assert_eq!(
            entry.proxy,
            Some(Proxy {
                addr: hp("proxy", 3128),
                credentials: Some(creds("alice", "pw")),
                auth_file: None,
                auth_scheme: AuthScheme::Ntlm,
                headers: vec!["User-Agent: Mozilla/5.0 (X11)".into(), "X-A: 1".into()],
            })
        );
        assert_eq!(
            entry.options,
            Options {
                connect_timeout: Duration::from_millis(250),
                idle_timeout: Some(Duration::from_secs(300)),
                keepalive: Some(Duration::from_secs(30)),
                max_conns: Some(8),
                buffer: 16 * 1024,
            }
        );
    }

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
    fn an_option_twice_is_an_error_except_header() {
        assert_eq!(
            err1("2222 h 22 buffer=4k buffer=8k"),
            "x.conf:1: option \"buffer\" given twice"
        );
        assert_eq!(
            err1("2222 h 22 p 1 auth-scheme=basic auth-scheme=basic"),
            "x.conf:1: option \"auth-scheme\" given twice"
        );
        assert_eq!(
            err1("defaults keepalive=off keepalive=1"),
            "x.conf:1: option \"keepalive\" given twice"
        );
        let entry = one("2222 h 22 p 1 header=A:1 header=A:2");
        assert_eq!(proxy_of(&entry).headers, ["A: 1", "A: 2"]);
    }

    #[test]
    fn proxy_only_options_on_a_direct_line_are_errors() {
        for key in [
            "auth=u:p",
            "auth-file=secret",
            "auth-scheme=basic",
            "header=A:b",
        ] {
            let name = key.split('=').next().expect("key");
            assert_eq!(
                err1(&format!("2222 h 22 {key}")),
                format!("x.conf:1: option \"{name}\" needs a proxy")
            );
        }
        // The value is not even looked at, and a repeated header is one error.
        assert_eq!(
            err1("2222 h 22 auth=nonsense"),
            "x.conf:1: option \"auth\" needs a proxy"
        );
        assert_eq!(
            err1("2222 h 22 header=A:1 header=B:2"),
            "x.conf:1: option \"header\" needs a proxy"
        );
    }

    #[test]
    fn auth_option() {
        let entry = one(r"2222 h 22 p 1 auth=CORP\jdoe:pa#ss:word");
        assert_eq!(
            proxy_of(&entry).credentials,
            Some(creds(r"CORP\jdoe", "pa#ss:word"))
        );
        let entry = one("2222 h 22 p 1 auth=\"alice:with space\"");
        assert_eq!(
            proxy_of(&entry).credentials,
            Some(creds("alice", "with space"))
        );
        let entry = one("2222 h 22 p 1 auth=alice:");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("alice", "")));
        // No percent-decoding outside URLs.
        let entry = one("2222 h 22 p 1 auth=alice:%41");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("alice", "%41")));
        for (value, message) in [
            ("alice", "invalid auth: expected USER:PASSWORD"),
            ("", "invalid auth: expected USER:PASSWORD"),
            (":pw", "invalid auth: USER is empty"),
            (
                "\"a:p\u{7f}w\"",
                "invalid auth: control characters are not allowed in USER or PASSWORD",
            ),
            (
                "\"a\u{0}:pw\"",
                "invalid auth: control characters are not allowed in USER or PASSWORD",
            ),
        ] {
            assert_eq!(
                err1(&format!("2222 h 22 p 1 auth={value}")),
                format!("x.conf:1: {message}"),
                "{value}"
            );
        }
    }

    #[test]
    fn credentials_from_two_sources_are_an_error() {
        assert_eq!(
            err1("2222 h 22 http://a:b@p:1 auth=c:d"),
            "x.conf:1: credentials given twice: in PROXY_URL and in auth (keep one)"
        );
        assert_eq!(
            err1("2222 h 22 p 1 auth=c:d auth-file=secret"),
            "x.conf:1: credentials given twice: in auth and in auth-file (keep one)"
        );
        assert_eq!(
            err1("2222 h 22 http://a:b@p:1 auth-file=secret"),
            "x.conf:1: credentials given twice: in PROXY_URL and in auth-file (keep one)"
        );
        assert_eq!(
            err1("defaults auth=c:d auth-file=secret"),
            "x.conf:1: credentials given twice: in auth and in auth-file (keep one)"
        );
    }

    #[test]
    fn auth_file_option() {
        let entry = one("2222 h 22 p 1 auth-file=secret");
        let proxy = proxy_of(&entry);
        assert_eq!(proxy.credentials, Some(creds("alice", "s3cret")));
        assert_eq!(proxy.auth_file, Some(PathBuf::from("/etc/ht/secret")));
        let entry = one("2222 h 22 p 1 auth-file=/abs/other");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("carol", "c")));
        assert_eq!(
            proxy_of(&entry).auth_file,
            Some(PathBuf::from("/abs/other"))
        );
        let entry = one("2222 h 22 p 1 auth-file=crlf");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("bob", "pw")));
        let entry = one("2222 h 22 p 1 auth-file=bom");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("dave", "pw")));
        let entry = one("2222 h 22 p 1 auth-file=\"with space\"");
        assert_eq!(proxy_of(&entry).credentials, Some(creds("erin", "pw")));
    }

    #[test]
    fn auth_file_errors_name_the_path_and_reason() {
        for (file, message) in [
            ("missing", "cannot read auth-file \"/etc/ht/missing\": no such file"),
            ("empty", "invalid auth-file \"/etc/ht/empty\": first line must be USER:PASSWORD"),
            ("nocolon", "invalid auth-file \"/etc/ht/nocolon\": first line must be USER:PASSWORD"),
            ("ctrl", "invalid auth-file \"/etc/ht/ctrl\": first line: control characters are not allowed in USER or PASSWORD"),
            ("nouser", "invalid auth-file \"/etc/ht/nouser\": first line: USER is empty"),
            ("\"\"", "invalid auth-file \"\": expected a path"),
        ] {
            assert_eq!(
                err1(&format!("2222 h 22 p 1 auth-file={file}")),
                format!("x.conf:1: {message}"),
                "{file}"
            );
        }
    }

    #[test]
    fn auth_file_is_read_once_per_option_in_order() {
        let mut read = Vec::new();
        let mut recorder = |path: &Path| {
            read.push(path.to_path_buf());
            reader(path)
        };
        let text = "defaults auth-file=secret\n2222 h 22 p 1\n2223 h 22 p 1\n2224 h 22 p 1 auth-file=crlf\n2225 h 22\n";
        let config = parse_str(text, "x.conf", Path::new(BASE), &mut recorder).expect("valid");
        assert_eq!(config.entries.len(), 4);
        assert_eq!(
            read,
            [
                PathBuf::from("/etc/ht/secret"),
                PathBuf::from("/etc/ht/crlf")
            ]
        );
    }

    #[test]
    fn auth_scheme_option() {
        for (value, scheme) in [
            ("auto", AuthScheme::Auto),
            ("basic", AuthScheme::Basic),
            ("Digest", AuthScheme::Digest),
            ("NTLM", AuthScheme::Ntlm),
        ] {
            let entry = one(&format!("2222 h 22 p 1 auth-scheme={value}"));
            assert_eq!(proxy_of(&entry).auth_scheme, scheme);
            assert_eq!(scheme.to_string(), value.to_ascii_lowercase());
        }
        assert_eq!(
            err1("2222 h 22 p 1 auth-scheme=kerberos"),
            "x.conf:1: invalid auth-scheme \"kerberos\": expected auto, basic, digest or ntlm"
        );
    }

    #[test]
    fn header_option() {
        for (value, stored) in [
            (
                "\"User-Agent: Mozilla/5.0 (X11)\"",
                "User-Agent: Mozilla/5.0 (X11)",
            ),
            ("X-A:b", "X-A: b"),
            ("\"X-A: \t b c \t \"", "X-A: b c"),
            ("X-Empty:", "X-Empty: "),
            ("\"X-Q: say \\\"hi\\\"\"", "X-Q: say \"hi\""),
            ("\"X-T: a\tb\"", "X-T: a\tb"),
            ("X-U:é", "X-U: é"),
            (
                "Proxy-Connection:keep-alive",
                "Proxy-Connection: keep-alive",
            ),
            ("\"X-Colon: a:b\"", "X-Colon: a:b"),
        ] {
            let entry = one(&format!("2222 h 22 p 1 header={value}"));
            assert_eq!(proxy_of(&entry).headers, [stored], "{value}");
        }
    }

    #[test]
    fn header_errors() {
        for (value, message) in [
            (
                "NoColon",
                "invalid header \"NoColon\": expected \"Name: value\"",
            ),
            ("\"\"", "invalid header \"\": expected \"Name: value\""),
            (
                ":v",
                "invalid header \":v\": name \"\" is not an HTTP token",
            ),
            (
                "\"Bad Name: v\"",
                "invalid header \"Bad Name: v\": name \"Bad Name\" is not an HTTP token",
            ),
            (
                "\"X-A : v\"",
                "invalid header \"X-A : v\": name \"X-A \" is not an HTTP token",
            ),
            (
                "Nämé:v",
                "invalid header \"Nämé:v\": name \"Nämé\" is not an HTTP token",
            ),
            (
                "\"X-A: a\u{7}b\"",
                "invalid header \"X-A: a\\u{7}b\": control characters in the value",
            ),
            (
                "host:x",
                "header \"host\" not allowed: the program writes it",
            ),
            (
                "Proxy-Authorization:Basic",
                "header \"Proxy-Authorization\" not allowed: use auth or auth-file",
            ),
            (
                "Content-Length:0",
                "header \"Content-Length\" not allowed: the proxy would wait for a request body",
            ),
            (
                "transfer-encoding:chunked",
                "header \"transfer-encoding\" not allowed: the proxy would wait for a request body",
            ),
        ] {
            assert_eq!(
                err1(&format!("2222 h 22 p 1 header={value}")),
                format!("x.conf:1: {message}"),
                "{value}"
            );
        }
        // A CR inside quotes (not the line end) is refused too.
        assert_eq!(
            err1("2222 h 22 p 1 header=\"X-A: a\rInjected: 1\"\n"),
            "x.conf:1: invalid header \"X-A: a\\rInjected: 1\": control characters in the value"
        );
    }

    #[test]
    fn duration_options() {
        let entry = one("2222 h 22 connect-timeout=1h idle-timeout=0 keepalive=off");
        assert_eq!(entry.options.connect_timeout, Duration::from_secs(3600));
        assert_eq!(entry.options.idle_timeout, None);
        assert_eq!(entry.options.keepalive, None);
        let entry = one("2222 h 22 idle-timeout=10ms keepalive=0 connect-timeout=30");
        assert_eq!(entry.options.idle_timeout, Some(Duration::from_millis(10)));
        assert_eq!(entry.options.keepalive, None);
        assert_eq!(entry.options.connect_timeout, Duration::from_secs(30));
        assert_eq!(
            one("2222 h 22 keepalive=32767s").options.keepalive,
            Some(MAX_KEEPALIVE)
        );
        assert_eq!(one("2222 h 22 keepalive=OFF").options.keepalive, None);
        assert_eq!(
            one("2222 h 22 keepalive=2000ms").options.keepalive,
            Some(Duration::from_secs(2))
        );
        for (option, message) in [
            ("connect-timeout=0", "connect-timeout must be more than 0"),
            ("connect-timeout=0ms", "connect-timeout must be more than 0"),
            ("connect-timeout=fast", "invalid connect-timeout \"fast\": expected a number with ms, s, m or h, e.g. 250ms, 10s, 5m, 1h"),
            ("connect-timeout=1.5s", "invalid connect-timeout \"1.5s\": expected a number with ms, s, m or h, e.g. 250ms, 10s, 5m, 1h"),
            ("idle-timeout=-1", "invalid idle-timeout \"-1\": expected a number with ms, s, m or h, e.g. 250ms, 10s, 5m, 1h"),
            ("idle-timeout=8761h", "invalid idle-timeout \"8761h\": too large (at most 8760h)"),
            ("idle-timeout=", "invalid idle-timeout \"\": expected a number with ms, s, m or h, e.g. 250ms, 10s, 5m, 1h"),
            ("keepalive=500ms", "invalid keepalive \"500ms\": whole seconds from 1s to 32767s, or off"),
            ("keepalive=1500ms", "invalid keepalive \"1500ms\": whole seconds from 1s to 32767s, or off"),
            ("keepalive=32768", "invalid keepalive \"32768\": whole seconds from 1s to 32767s, or off"),
            ("keepalive=10h", "invalid keepalive \"10h\": whole seconds from 1s to 32767s, or off"),
            ("keepalive=no", "invalid keepalive \"no\": expected a number with ms, s, m or h, e.g. 250ms, 10s, 5m, 1h, or off"),
        ] {
            assert_eq!(
                err1(&format!("2222 h 22 {option}")),
                format!("x.conf:1: {message}"),
                "{option}"
            );
        }
    }

    #[test]
    fn max_conns_option() {
        assert_eq!(one("2222 h 22 max-conns=1").options.max_conns, Some(1));
        assert_eq!(one("2222 h 22 max-conns=unlimited").options.max_conns, None);
        assert_eq!(one("2222 h 22 max-conns=Unlimited").options.max_conns, None);
        for (value, message) in [
            ("0", "max-conns must be at least 1, or unlimited"),
            (
                "-1",
                "invalid max-conns \"-1\": expected a number of at least 1, or unlimited",
            ),
            (
                "many",
                "invalid max-conns \"many\": expected a number of at least 1, or unlimited",
            ),
            (
                "",
                "invalid max-conns \"\": expected a number of at least 1, or unlimited",
            ),
            (
                "99999999999999999999999",
                "invalid max-conns \"99999999999999999999999\": too large",
            ),
        ] {
            assert_eq!(
                err1(&format!("2222 h 22 max-conns={value}")),
                format!("x.conf:1: {message}"),
                "{value}"
            );
        }
    }

    #[test]
    fn buffer_option_range_is_inclusive() {
        assert_eq!(one("2222 h 22 buffer=1k").options.buffer, 1024);
        assert_eq!(one("2222 h 22 buffer=1024").options.buffer, 1024);
        assert_eq!(one("2222 h 22 buffer=16m").options.buffer, MAX_BUFFER);
        assert_eq!(one("2222 h 22 buffer=16M").options.buffer, MAX_BUFFER);
        assert_eq!(one("2222 h 22 buffer=4096").options.buffer, 4096);
        assert_eq!(one("2222 h 22 buffer=1000k").options.buffer, 1_024_000);
        for (value, message) in [
            ("1023", "buffer \"1023\" out of range 1k-16m"),
            ("0", "buffer \"0\" out of range 1k-16m"),
            ("16777217", "buffer \"16777217\" out of range 1k-16m"),
            ("17m", "buffer \"17m\" out of range 1k-16m"),
            ("1g", "invalid buffer \"1g\": expected a number of bytes, optionally with k or m, e.g. 4096, 16k, 1m"),
            ("64kb", "invalid buffer \"64kb\": expected a number of bytes, optionally with k or m, e.g. 4096, 16k, 1m"),
            ("99999999999999999999m", "invalid buffer \"99999999999999999999m\": too large"),
        ] {
            assert_eq!(
                err1(&format!("2222 h 22 buffer={value}")),
                format!("x.conf:1: {message}"),
                "{value}"
            );
        }
    }

    // ----- helpers -------------------------------------------------------------

    #[test]
    fn parse_duration_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2H"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("3MS"), Ok(Duration::from_millis(3)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("007s"), Ok(Duration::from_secs(7)));
        for bad in [
            "", "s", "1.5s", "1 s", " 1s", "1d", "-1", "+1", "1sm", "1hh", "１s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        for big in [
            "8761h",
            "31536001",
            "18446744073709551615h",
            "99999999999999999999999",
        ] {
            assert_eq!(
                parse_duration(big),
                Err("too large (at most 8760h)".to_string()),
                "{big}"
            );
        }
    }

    #[test]
    fn parse_size_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("16k"), Ok(16 * 1024));
        assert_eq!(parse_size("16K"), Ok(16 * 1024));
        assert_eq!(parse_size("1m"), Ok(1024 * 1024));
        assert_eq!(parse_size("1M"), Ok(1024 * 1024));
        for bad in ["", "k", "1kb", "1g", "1 k", "-1", "1.5k", "0x10"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_size("99999999999999999999999"),
            Err("too large".to_string())
        );
        assert_eq!(
            parse_size(&format!("{}m", usize::MAX)),
            Err("too large".to_string())
        );
    }

    #[test]
    fn format_helpers() {
        assert_eq!(format_duration(Duration::from_secs(60)), "60s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "3600s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_size(64 * 1024), "64k");
        assert_eq!(format_size(1024 * 1024), "1m");
        assert_eq!(format_size(1_024_000), "1000k");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
        for d in ["250ms", "10s", "5m", "1h", "1ms", "8760h"] {
            let parsed = parse_duration(d).expect("valid");
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
    }

    #[test]
    fn percent_codec() {
        assert_eq!(percent_decode("a%20b%2f%2F"), Ok("a b//".to_string()));
        assert_eq!(percent_decode(""), Ok(String::new()));
        assert!(percent_decode("%").is_err());
        assert!(percent_decode("%2").is_err());
        assert!(percent_decode("%+1").is_err());
        assert!(percent_decode("%é").is_err());
        let user = "a b:c@d/e%f\"g#h[i]j\\kü";
        assert_eq!(
            percent_decode(&percent_encode_user(user)),
            Ok(user.to_string())
        );
        assert_eq!(percent_encode_user(r"CORP\jdoe"), r"CORP\jdoe");
    }

    #[test]
    fn redact_hides_what_looks_like_a_password() {
        assert_eq!(redact("http://u:sekrit@h:1"), "http://u:***@h:1");
        assert_eq!(redact("u:sekrit@h"), "u:***@h");
        assert_eq!(redact("u:a@b@h"), "u:***@h");
        assert_eq!(redact("u@h"), "u@h");
        assert_eq!(redact("plain"), "plain");
        assert_eq!(redact("u:p@x://h"), "u:***@x://h");
    }

    #[test]
    fn messages_never_echo_a_password() {
        let lines = [
            "2222 h 22 p 1 auth=sekrit",
            "2222 h 22 p 1 auth=:sekrit",
            "2222 h 22 auth=u:sekrit",
            "2222 h 22 p 1 auth=\"u:sekrit\u{1}\"",
            "2222 h 22 p 1 auth=\"u:sekrit",
            "2222 h 22 http://u:sekrit@h",
            "2222 h 22 http://u:sekrit@h:1 extra",
            "2222 h 22 http://u:sekrit%zz@h:1",
            "2222 h 22 https://u:sekrit@h:1",
            "2222 h 22 u:sekrit@h 1",
            "2222 h 22 u:sekrit@h",
            "2222 http://u:sekrit@h:1 22",
            "2222 h u:sekrit@h",
            "u:sekrit@h h 22",
            "2222 h 22 http://u:sekrit@h:1 auth=a:b",
            "2222 h 22 buffer=1k http://u:sekrit@h:1",
            "defaults http://u:sekrit@h:1",
        ];
        for line in lines {
            for error in errs(line) {
                assert!(!error.contains("sekrit"), "{line:?} -> {error}");
            }
        }
    }

    // ----- defaults ------------------------------------------------------------

    #[test]
    fn defaults_apply_to_the_entries_below_only() {
        let config = ok("2222 a 1\ndefaults max-conns=4 buffer=8k\n2223 b 2\n2224 c 3 buffer=4k\n");
        let options: Vec<(Option<usize>, usize)> = config
            .entries
            .iter()
            .map(|e| (e.options.max_conns, e.options.buffer))
            .collect();
        assert_eq!(
            options,
            [(None, DEFAULT_BUFFER), (Some(4), 8192), (Some(4), 4096)]
        );
    }

    #[test]
    fn later_defaults_override_key_by_key() {
        let config =
            ok("defaults idle-timeout=5m keepalive=off\ndefaults keepalive=30s\n2222 a 1\n");
        let options = &config.entries[0].options;
        assert_eq!(options.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(options.keepalive, Some(Duration::from_secs(30)));
        assert_eq!(options.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        // An entry can put a default back.
        let entry = one(
            "defaults max-conns=2 idle-timeout=1m\n2222 a 1 max-conns=unlimited idle-timeout=0\n",
        );
        assert_eq!(entry.options.max_conns, None);
        assert_eq!(entry.options.idle_timeout, None);
    }

    #[test]
    fn proxy_only_defaults_apply_to_proxied_entries_only() {
        let text = "defaults auth=alice:pw auth-scheme=digest header=\"User-Agent: X\"\n2222 a 1\n2223 b 2 p 3128\n";
        let config = ok(text);
        assert_eq!(config.entries[0].proxy, None);
        assert_eq!(
            config.entries[1].proxy,
            Some(Proxy {
                addr: hp("p", 3128),
                credentials: Some(creds("alice", "pw")),
                auth_file: None,
                auth_scheme: AuthScheme::Digest,
                headers: vec!["User-Agent: X".into()],
            })
        );
    }

    #[test]
    fn entry_credentials_replace_default_ones() {
        let text = "defaults auth-file=secret\n\
                    2222 a 1 p 1\n\
                    2223 a 1 http://bob:x@p:1\n\
                    2224 a 1 p 1 auth=carol:y\n\
                    defaults auth=dan:z\n\
                    2225 a 1 p 1\n\
                    2226 a 1 p 1 auth-file=crlf\n";
        let proxies: Vec<(Option<Credentials>, Option<PathBuf>)> = ok(text)
            .entries
            .iter()
            .map(|e| {
                let p = proxy_of(e);
                (p.credentials, p.auth_file)
            })
            .collect();
        assert_eq!(
            proxies,
            [
                (
                    Some(creds("alice", "s3cret")),
                    Some(PathBuf::from("/etc/ht/secret"))
                ),
                (Some(creds("bob", "x")), None),
                (Some(creds("carol", "y")), None),
                (Some(creds("dan", "z")), None),
                (
                    Some(creds("bob", "pw")),
                    Some(PathBuf::from("/etc/ht/crlf"))
                ),
            ]
        );
    }

    #[test]
    fn default_headers_merge_by_name_and_defaults_lines_replace_the_list() {
        let text = "defaults header=User-Agent:X header=X-Team:a\n\
                    2222 a 1 p 1 header=user-agent:Y header=X-New:1\n\
                    2223 a 1 p 1\n\
                    defaults header=X-Only:1\n\
                    2224 a 1 p 1\n";
        let headers: Vec<Vec<String>> = ok(text)
            .entries
            .iter()
            .map(|e| proxy_of(e).headers)
            .collect();
        assert_eq!(
            headers,
            [
                vec!["X-Team: a", "user-agent: Y", "X-New: 1"],
                vec!["User-Agent: X", "X-Team: a"],
                vec!["X-Only: 1"],
            ]
        );
    }

    #[test]
    fn defaults_line_errors() {
        assert_eq!(
            err1("defaults\n2222 a 1\n"),
            "x.conf:1: defaults without any KEY=VALUE option"
        );
        assert_eq!(
            err1("defaults 10s\n2222 a 1\n"),
            "x.conf:1: unexpected field \"10s\" in defaults: expected defaults KEY=VALUE [KEY=VALUE ...]"
        );
        assert_eq!(
            errs("defaults buffer=1 lisen=2 auth-file=missing\n2222 a 1\n"),
            [
                "x.conf:1: buffer \"1\" out of range 1k-16m",
                "x.conf:1: unknown option \"lisen\"",
                "x.conf:1: cannot read auth-file \"/etc/ht/missing\": no such file",
            ]
        );
        // Proxy-only defaults are no error, even with only direct entries.
        ok("defaults auth=a:b header=X:1 auth-scheme=basic\n2222 a 1\n");
    }

    #[test]
    fn a_bad_defaults_value_keeps_the_earlier_default() {
        // Only the defaults line is reported, not every entry below.
        assert_eq!(
            errs("defaults buffer=8k\ndefaults buffer=1g\n2222 a 1\n2223 b 2\n").len(),
            1
        );
    }

    // ----- Display, authority, Debug, same_settings -------------------------------

    #[test]
    fn display_direct_entry() {
        assert_eq!(
            one("2222 example.com 22").to_string(),
            "127.0.0.1:2222 example.com 22 connect-timeout=10s idle-timeout=0 keepalive=60s max-conns=unlimited buffer=256k"
        );
        assert_eq!(
            one("[::]:80 2001:db8::1 8080 connect-timeout=250ms idle-timeout=1h keepalive=off max-conns=3 buffer=1000k")
                .to_string(),
            "[::]:80 [2001:db8::1] 8080 connect-timeout=250ms idle-timeout=3600s keepalive=off max-conns=3 buffer=1000k"
        );
    }

    #[test]
    fn display_proxied_entry_hides_the_password() {
        assert_eq!(
            one("2222 example.com 22 http://user:pw@proxy.corp:3128").to_string(),
            "127.0.0.1:2222 example.com 22 http://user:***@proxy.corp:3128 auth-scheme=auto connect-timeout=10s idle-timeout=0 keepalive=60s max-conns=unlimited buffer=256k"
        );
        assert_eq!(
            one(r#"0.0.0.0:1 h 2 ::1 3 auth=CORP\j:pw auth-scheme=ntlm header="X-Q: say \"hi\" \\o/""#).to_string(),
            r#"0.0.0.0:1 h 2 http://CORP\j:***@[::1]:3 auth-scheme=ntlm header="X-Q: say \"hi\" \\o/" connect-timeout=10s idle-timeout=0 keepalive=60s max-conns=unlimited buffer=256k"#
        );
        assert_eq!(
            one("2222 h 22 p 1 auth-file=\"with space\"").to_string(),
            "127.0.0.1:2222 h 22 http://p:1 auth-file=\"/etc/ht/with space\" auth-scheme=auto connect-timeout=10s idle-timeout=0 keepalive=60s max-conns=unlimited buffer=256k"
        );
        assert_eq!(
            one("2222 h 22 http://a%20b:pw@p:1").to_string(),
            "127.0.0.1:2222 h 22 http://a%20b:***@p:1 auth-scheme=auto connect-timeout=10s idle-timeout=0 keepalive=60s max-conns=unlimited buffer=256k"
        );
        for line in [
            "2222 h 22 http://u:s3cret@p:1",
            "2222 h 22 p 1 auth-file=secret",
        ] {
            let entry = one(line);
            assert!(!entry.to_string().contains("s3cret"));
            assert!(!format!("{entry:?}").contains("s3cret"));
        }
    }

    /// Parses `entry`'s Display again, without any defaults.
    fn reparse(entry: &Entry) -> Entry {
        one(&entry.to_string())
    }

    #[test]
    fn display_round_trips() {
        let text = "\
defaults buffer=8k keepalive=off idle-timeout=90s header=X-Default:1
2222 example.com 22
0.0.0.0:2223 10.0.0.1 23 proxy 3128 header=\"User-Agent: Mozilla/5.0 (X11)\" auth-scheme=digest
[::]:2224 [::1] 24 http://[2001:db8::2]:8080/ max-conns=5 connect-timeout=1500ms
127.0.0.9:2225 h 25 p 1 auth-file=secret
[::1]:2226 h. 26 p 1 auth-file=\"with space\" buffer=16m keepalive=1h
";
        for entry in ok(text).entries {
            let again = reparse(&entry);
            assert!(entry.same_settings(&again), "{entry}\n{again}");
            assert_eq!(again.to_string(), entry.to_string());
        }
    }

    #[test]
    fn display_round_trip_of_credentials_keeps_the_user() {
        let entry = one(r"2222 h 22 http://CORP%5Cj%40x:pw@p:1");
        let again = reparse(&entry);
        assert_eq!(proxy_of(&entry).credentials, Some(creds(r"CORP\j@x", "pw")));
        assert_eq!(
            proxy_of(&again).credentials,
            Some(creds(r"CORP\j@x", "***"))
        );
    }

    #[test]
    fn authority_brackets_ipv6_only() {
        assert_eq!(hp("example.com", 22).authority(), "example.com:22");
        assert_eq!(hp("10.0.0.1", 80).authority(), "10.0.0.1:80");
        assert_eq!(hp("2001:db8::1", 443).authority(), "[2001:db8::1]:443");
        assert_eq!(hp("::1", 1).to_string(), "[::1]:1");
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
        ];
        let proxy = prop_oneof![
            Just(None),
            Just(Some("proxy.corp 3128")),
            Just(Some("::1 8080")),
            Just(Some("http://proxy:3128")),
            Just(Some("http://us%20er:p%40ss@[::1]:8080/")),
            Just(Some("auth-file")),
        ];
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
        (listen, dest, 1u16.., proxy, options, proxy_options).prop_map(
            |(listen, dest, port, proxy, options, (scheme, headers))| {
                let mut fields = vec![listen.to_string(), dest.to_string(), port.to_string()];
                let (o1, o2, o3, o4, o5) = options;
                match proxy {
                    None => {}
                    Some("auth-file") => {
                        fields.push("p 1 auth-file=secret".to_string());
                    }
                    Some(p) => fields.push(p.to_string()),
                }
                if proxy.is_some() {
                    fields.extend(scheme.map(str::to_string));
                    fields.extend(headers);
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
            let mut expected = entry.clone();
            if let Some(c) = expected.proxy.as_mut().filter(|p| p.auth_file.is_none()).and_then(|p| p.credentials.as_mut()) {
                c.password = "***".to_string();
            }
            prop_assert!(expected.same_settings(&again), "{} vs {}", printed, again);
            prop_assert_eq!(again.to_string(), printed);
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
                        let mut expected = entry.clone();
                        if let Some(proxy) = expected.proxy.as_mut() {
                            if proxy.auth_file.is_none() {
                                if let Some(c) = proxy.credentials.as_mut() {
                                    c.password = "***".to_string();
                                }
                            }
                        }
                        prop_assert!(expected.same_settings(&again), "{} vs {}", entry, again);
                    }
                }
            }
        }
    }
}
