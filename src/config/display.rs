//! The normalised display: the line `--check` prints for an entry and for
//! the `metrics` line, and the credential-free forms logs use.
//!
//! Owns: `Display` of [`Entry`], [`Metrics`], [`Dest`], [`RouteSpec`],
//! [`Proxy`] and [`HostPort`] (and [`HostPort::authority`], the form a
//! `CONNECT` request takes), brackets around IPv6 literals, and quoting a
//! field so that it lexes back as it was. Never does: show a password (it is
//! always `***`).

use std::borrow::Cow;
use std::fmt;

use super::url::percent_encode_user;
use super::values::{format_duration, format_size};
use super::{Dest, Entry, HostPort, Metrics, Proxy, RouteSpec};

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

impl fmt::Display for Dest {
    /// `socks`, `http`, or the fixed destination's `host:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dest::Fixed(dest) => write!(f, "{dest}"),
            Dest::Socks => f.write_str("socks"),
            Dest::Http => f.write_str("http"),
        }
    }
}

impl fmt::Display for Proxy {
    /// `http://host:port` or `https://host:port`, without credentials: the
    /// form for log lines and metric labels.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", scheme(self), self.addr)
    }
}

impl fmt::Display for RouteSpec {
    /// `direct`, or the hops joined by `>` as [`Proxy`] shows them (no
    /// credentials): `https://gw:443>http://10.1.2.3:8080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hops.is_empty() {
            return f.write_str("direct");
        }
        for (i, hop) in self.hops.iter().enumerate() {
            if i > 0 {
                f.write_str(">")?;
            }
            write!(f, "{hop}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Metrics {
    /// `metrics LISTEN`, e.g. `metrics 127.0.0.1:9100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metrics {}", self.listen)
    }
}

impl fmt::Display for Entry {
    /// The normalised line `--check` prints, itself a valid config line:
    ///
    /// ```text
    /// LISTEN (DEST_HOST DEST_PORT | socks | http) [PROXY [auth=USER:***] [auth-file=PATH]
    ///     auth-scheme=S [header="N: v" ...]]
    ///     connect-timeout=D idle-timeout=D keepalive=D max-conns=N buffer=S
    ///     [proxy-backoff=D [proxy-ca=PATH] proxy-verify=on|off] [allow=P,P...]
    ///     [# env: WHAT IT RESOLVED TO]
    /// ```
    ///
    /// (on one line). LISTEN is the socket address (`127.0.0.1:2222`,
    /// `[::]:2222`); an IPv6 DEST_HOST is bracketed. PROXY is `env`, or the
    /// routes as URLs joined by `,`, hops by `>`, `direct` for a direct
    /// route (`http://p1:3128,https://gw:443>http://10.1.2.3:8080,direct`);
    /// a direct entry has no PROXY. A hop shows its user info when its
    /// credentials come from its URL or `auth=` (the password always `***`);
    /// `auth-file=` is shown instead when they come from a file. For `env`,
    /// credentials from `auth=` show as `auth=USER:***`. The proxy options
    /// (`auth-scheme`, `header`) are those of the first hops; they appear,
    /// like `proxy-backoff`, `proxy-ca` and `proxy-verify`, only on an entry
    /// with a proxy (or `env`), and `allow` only on a client-named entry
    /// (`allow=*` for every destination). Every option appears with its
    /// effective value: durations as whole seconds (`10s`) or, when not
    /// whole, milliseconds (`250ms`); `idle-timeout=0` for never,
    /// `keepalive=off`, `max-conns=unlimited`; sizes in the largest exact
    /// unit (`64k`, `1m`, `1000`). Headers are always quoted, a path when it
    /// needs it.
    ///
    /// An `env` entry ends with a comment saying what the environment gave:
    /// `# env: HTTPS_PROXY=http://u:***@proxy:3128 NO_PROXY=.corp`, or
    /// `# env: direct (NO_PROXY=.corp matches db.corp; HTTPS_PROXY=http://proxy:3128)`,
    /// or `# env: direct (no proxy variable set)`.
    ///
    /// Parsing this line again (in the same environment) gives an entry with
    /// the same settings, except that a password from a URL or `auth=`
    /// reads back as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.listen)?;
        match &self.dest {
            Dest::Fixed(dest) => write!(f, " {} {}", bracketed(&dest.host), dest.port)?,
            Dest::Socks => f.write_str(" socks")?,
            Dest::Http => f.write_str(" http")?,
        }
        let proxied = self.is_proxied();
        if self.env.is_some() {
            f.write_str(" env")?;
        } else if proxied {
            f.write_str(" ")?;
            for (i, route) in self.routes.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                if route.hops.is_empty() {
                    f.write_str("direct")?;
                }
                for (j, hop) in route.hops.iter().enumerate() {
                    if j > 0 {
                        f.write_str(">")?;
                    }
                    write_hop(f, hop)?;
                }
            }
        }
        let mut first_hops = self.routes.iter().filter_map(|r| r.hops.first());
        if let Some(first) = first_hops.clone().next() {
            let env_credentials = self
                .env
                .as_ref()
                .and_then(|e| e.proxy.as_ref())
                .is_some_and(|p| p.credentials.is_some());
            if let (Some(_), Some(c), None, false) = (
                &self.env,
                &first.credentials,
                &first.auth_file,
                env_credentials,
            ) {
                let value = format!("{}:***", c.user);
                write!(f, " auth={}", quote_if_needed(&value))?;
            }
            if let Some(path) = first_hops.find_map(|hop| hop.auth_file.as_ref()) {
                write!(f, " auth-file={}", quote_if_needed(&path.to_string_lossy()))?;
            }
            write!(f, " auth-scheme={}", first.auth_scheme)?;
            for header in &first.headers {
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
        )?;
        if proxied {
            write!(
                f,
                " proxy-backoff={}",
                format_duration(options.proxy_backoff)
            )?;
            if let Some(path) = &options.proxy_ca {
                write!(f, " proxy-ca={}", quote_if_needed(&path.to_string_lossy()))?;
            }
            let verify = if options.proxy_verify { "on" } else { "off" };
            write!(f, " proxy-verify={verify}")?;
        }
        if self.dest.is_client_named() {
            f.write_str(" allow=")?;
            if self.allow.is_empty() {
                f.write_str("*")?;
            }
            for (i, pattern) in self.allow.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{pattern}")?;
            }
        }
        if let Some(env) = &self.env {
            f.write_str(" # env: ")?;
            let no_proxy: String = env
                .no_proxy
                .to_string()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            match &env.proxy {
                None => f.write_str("direct (no proxy variable set)")?,
                Some(proxy) if self.routes.iter().all(RouteSpec::is_direct) => {
                    write!(
                        f,
                        "direct ({no_proxy} matches {}; {}=",
                        self.dest, env.variable
                    )?;
                    write_hop(f, proxy)?;
                    f.write_str(")")?;
                }
                Some(proxy) => {
                    write!(f, "{}=", env.variable)?;
                    write_hop(f, proxy)?;
                    if !no_proxy.is_empty() {
                        write!(f, " {no_proxy}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn scheme(proxy: &Proxy) -> &'static str {
    if proxy.tls {
        "https"
    } else {
        "http"
    }
}

/// A hop as a URL, with `USER:***@` when its credentials are not from an
/// `auth-file`.
fn write_hop(f: &mut fmt::Formatter<'_>, hop: &Proxy) -> fmt::Result {
    write!(f, "{}://", scheme(hop))?;
    if let (Some(credentials), None) = (&hop.credentials, &hop.auth_file) {
        write!(f, "{}:***@", percent_encode_user(&credentials.user))?;
    }
    write!(f, "{}", hop.addr)
}

/// `[host]` for an IPv6 literal, the host itself otherwise.
fn bracketed(host: &str) -> Cow<'_, str> {
    if host.contains(':') {
        Cow::Owned(format!("[{host}]"))
    } else {
        Cow::Borrowed(host)
    }
}

/// A field in double quotes, `"` and `\` escaped.
pub(super) fn quote(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

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
            "127.0.0.1:2222 example.com 22 http://user:***@proxy.corp:3128 auth-scheme=auto connect-timeout=10s idle-timeout=0 keepalive=60s max-conns=unlimited buffer=256k proxy-backoff=30s proxy-verify=on"
        );
        assert_eq!(
            one(r#"0.0.0.0:1 h 2 ::1 3 auth=CORP\j:pw auth-scheme=ntlm header="X-Q: say \"hi\" \\o/""#).to_string(),
            r#"0.0.0.0:1 h 2 http://CORP\j:***@[::1]:3 auth-scheme=ntlm header="X-Q: say \"hi\" \\o/" connect-timeout=10s idle-timeout=0 keepalive=60s max-conns=unlimited buffer=256k proxy-backoff=30s proxy-verify=on"#
        );
        assert_eq!(
            one("2222 h 22 p 1 auth-file=\"with space\"").to_string(),
            "127.0.0.1:2222 h 22 http://p:1 auth-file=\"/etc/ht/with space\" auth-scheme=auto connect-timeout=10s idle-timeout=0 keepalive=60s max-conns=unlimited buffer=256k proxy-backoff=30s proxy-verify=on"
        );
        assert_eq!(
            one("2222 h 22 http://a%20b:pw@p:1").to_string(),
            "127.0.0.1:2222 h 22 http://a%20b:***@p:1 auth-scheme=auto connect-timeout=10s idle-timeout=0 keepalive=60s max-conns=unlimited buffer=256k proxy-backoff=30s proxy-verify=on"
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

    const OPTS: &str =
        "connect-timeout=10s idle-timeout=0 keepalive=60s max-conns=unlimited buffer=256k";

    #[test]
    fn display_new_forms() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], String);
        let cases: &[Case] = &[
            (
                "2222 h 22 http://p1:3128,https://u:pw@gw:443>http://10.1.2.3:8080,direct",
                &[],
                format!("127.0.0.1:2222 h 22 http://p1:3128,https://u:***@gw:443>http://10.1.2.3:8080,direct auth-scheme=auto {OPTS} proxy-backoff=30s proxy-verify=on"),
            ),
            (
                "2222 h 22 direct",
                &[],
                format!("127.0.0.1:2222 h 22 {OPTS}"),
            ),
            (
                "1080 socks",
                &[],
                format!("127.0.0.1:1080 socks {OPTS} allow=*"),
            ),
            (
                "1080 http http://p:1 auth-file=secret proxy-backoff=1s proxy-ca=ca.pem proxy-verify=off allow=*.Corp.,[fd00::/8]:22-80",
                &[],
                format!("127.0.0.1:1080 http http://p:1 auth-file=/etc/ht/secret auth-scheme=auto {OPTS} proxy-backoff=1s proxy-ca=/etc/ht/ca.pem proxy-verify=off allow=.corp,[fd00::/8]:22-80"),
            ),
            (
                "2222 h 22 env auth-scheme=ntlm",
                &[("HTTPS_PROXY", "http://u:pw@proxy:3128"), ("NO_PROXY", ".corp")],
                format!("127.0.0.1:2222 h 22 env auth-scheme=ntlm {OPTS} proxy-backoff=30s proxy-verify=on # env: HTTPS_PROXY=http://u:***@proxy:3128 NO_PROXY=.corp"),
            ),
            (
                "2222 db.corp 22 env",
                &[("http_proxy", "proxy:3128"), ("no_proxy", ".corp")],
                format!("127.0.0.1:2222 db.corp 22 env {OPTS} proxy-backoff=30s proxy-verify=on # env: direct (no_proxy=.corp matches db.corp:22; http_proxy=http://proxy:3128)"),
            ),
            (
                "2222 h 22 env",
                &[],
                format!("127.0.0.1:2222 h 22 env {OPTS} proxy-backoff=30s proxy-verify=on # env: direct (no proxy variable set)"),
            ),
            (
                "2222 h 22 env auth=\"a b:pw\"",
                &[("ALL_PROXY", "https://gw:443")],
                format!("127.0.0.1:2222 h 22 env auth=\"a b:***\" auth-scheme=auto {OPTS} proxy-backoff=30s proxy-verify=on # env: ALL_PROXY=https://gw:443"),
            ),
        ];
        for (line, vars, expected) in cases {
            let entry = one_env(line, vars);
            assert_eq!(&entry.to_string(), expected, "{line}");
            // And it reads back the same, in the same environment.
            let again = one_env(&entry.to_string(), vars);
            assert!(masked(&entry).same_settings(&again), "{entry}\n{again}");
            assert_eq!(again.to_string(), entry.to_string());
        }
        assert_eq!(
            ok("2222 a 1\nmetrics 9100\n")
                .metrics
                .expect("metrics")
                .to_string(),
            "metrics 127.0.0.1:9100"
        );
    }

    #[test]
    fn log_forms_never_show_credentials() {
        let entry = one("2222 h 22 https://u:pw@gw:443>http://v:pw@[::1]:8080,direct");
        let routes: Vec<String> = entry.routes.iter().map(ToString::to_string).collect();
        assert_eq!(routes, ["https://gw:443>http://[::1]:8080", "direct"]);
        assert_eq!(entry.dest.to_string(), "h:22");
        assert_eq!(one("1080 socks").dest.to_string(), "socks");
        assert_eq!(one("1080 http").dest.to_string(), "http");
    }
}
