//! Metrics: the counters kept per entry and the Prometheus text exposition
//! (format 0.0.4) served at `GET /metrics` (SPEC "Metrics").
//!
//! Owns: the counter types, the failure vocabulary, the rendering, and the
//! parsing of a scrape's request. Never does: sockets or time-keeping (the
//! reactor serves scrapes as ordinary slab entries and hands in the values).

use std::fmt::Write as _;
use std::time::Duration;

/// The failure reasons of `httptunneling_failures_total`, a fixed list.
pub const REASONS: [&str; 9] = [
    "refused",
    "timeout",
    "resolve",
    "proxy_status",
    "proxy_auth",
    "tls",
    "not_allowed",
    "client",
    "other",
];

/// Why a tunnel failed, for `httptunneling_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A connection was refused or reset (an address unreachable too).
    Refused,
    /// `connect-timeout` ran out.
    Timeout,
    /// The first hop's (or the destination's) name did not resolve.
    Resolve,
    /// A proxy answered another status than 2xx or 407, or garbage.
    ProxyStatus,
    /// A proxy wanted credentials it did not get or refused them.
    ProxyAuth,
    /// TLS to a proxy failed (handshake, certificate).
    Tls,
    /// A client-named destination outside `allow`.
    NotAllowed,
    /// The client went away or sent a bad request before the tunnel opened.
    Client,
    /// Anything else.
    Other,
}

impl Failure {
    fn index(self) -> usize {
        self as usize
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        REASONS[self.index()]
    }
}

/// Upper bounds of the handshake histogram's buckets, in seconds.
pub const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// A histogram of durations with [`BUCKETS`] (cumulative when rendered).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| s <= b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += s;
    }
}

/// The counters of one entry; kept across reloads for entries that stay.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Tunnels that reached Forwarding.
    pub ok: u64,
    /// Tunnels that never did.
    pub failed: u64,
    /// Bytes delivered client → destination by closed tunnels.
    pub up: u64,
    /// Bytes delivered destination → client by closed tunnels.
    pub down: u64,
    failures: [u64; REASONS.len()],
    /// Accept to Forwarding, for tunnels that got there.
    pub handshake: Histogram,
}

impl Counters {
    /// Counts a failure.
    pub fn failed(&mut self, why: Failure) {
        self.failed += 1;
        self.failures[why.index()] += 1;
    }

    /// How many failures of this kind were counted.
    pub fn failures(&self, why: Failure) -> u64 {
        self.failures[why.index()]
    }
}

/// What one entry shows in a scrape.
#[derive(Debug, Clone)]
pub struct EntryView<'a> {
    /// The entry's LISTEN, as normalised.
    pub entry: String,
    /// Tunnels open now.
    pub open: u64,
    /// The entry's counters.
    pub counters: &'a Counters,
    /// Bytes moved so far by open tunnels (added to the counters' totals).
    pub open_bytes: (u64, u64),
    /// Each route (credentials hidden) and whether it is up (not in back-off).
    pub routes: Vec<(String, bool)>,
}

/// Process-wide values of a scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Process {
    /// Reloads applied and refused.
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub uptime: Duration,
}

/// The exposition text of a scrape.
pub fn render(entries: &[EntryView<'_>], process: Process) -> String {
    let mut out = String::with_capacity(1024 + entries.len() * 2048);
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "httptunneling_tunnels_open",
        "gauge",
        "Tunnels open now.",
    );
    for e in entries {
        let _ = writeln!(
            out,
            "httptunneling_tunnels_open{{entry=\"{}\"}} {}",
            escape(&e.entry),
            e.open
        );
    }
    family(
        &mut out,
        "httptunneling_tunnels_total",
        "counter",
        "Tunnels accepted, by whether they reached forwarding.",
    );
    for e in entries {
        let entry = escape(&e.entry);
        let _ = writeln!(
            out,
            "httptunneling_tunnels_total{{entry=\"{entry}\",result=\"ok\"}} {}",
            e.counters.ok
        );
        let _ = writeln!(
            out,
            "httptunneling_tunnels_total{{entry=\"{entry}\",result=\"failed\"}} {}",
            e.counters.failed
        );
    }
    family(
        &mut out,
        "httptunneling_bytes_total",
        "counter",
        "Bytes delivered, up: client to destination, down: back.",
    );
    for e in entries {
        let entry = escape(&e.entry);
        let up = e.counters.up + e.open_bytes.0;
        let down = e.counters.down + e.open_bytes.1;
        let _ = writeln!(
            out,
            "httptunneling_bytes_total{{entry=\"{entry}\",direction=\"up\"}} {up}"
        );
        let _ = writeln!(
            out,
            "httptunneling_bytes_total{{entry=\"{entry}\",direction=\"down\"}} {down}"
        );
    }
    family(
        &mut out,
        "httptunneling_failures_total",
        "counter",
        "Tunnels that never reached forwarding, by reason.",
    );
    for e in entries {
        let entry = escape(&e.entry);
        for (i, reason) in REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "httptunneling_failures_total{{entry=\"{entry}\",reason=\"{reason}\"}} {}",
                e.counters.failures[i]
            );
        }
    }
    family(
        &mut out,
        "httptunneling_handshake_seconds",
        "histogram",
        "Time from accept to forwarding.",
    );
    for e in entries {
        let entry = escape(&e.entry);
        let h = &e.counters.handshake;
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += h.counts[i];
            let _ = writeln!(
                out,
                "httptunneling_handshake_seconds_bucket{{entry=\"{entry}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "httptunneling_handshake_seconds_bucket{{entry=\"{entry}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "httptunneling_handshake_seconds_sum{{entry=\"{entry}\"}} {}",
            h.sum
        );
        let _ = writeln!(
            out,
            "httptunneling_handshake_seconds_count{{entry=\"{entry}\"}} {}",
            h.count
        );
    }
    family(
        &mut out,
        "httptunneling_route_up",
        "gauge",
        "1 for a route new tunnels try, 0 while it is in back-off.",
    );
    for e in entries {
        let entry = escape(&e.entry);
        for (route, up) in &e.routes {
            let _ = writeln!(
                out,
                "httptunneling_route_up{{entry=\"{entry}\",route=\"{}\"}} {}",
                escape(route),
                u8::from(*up)
            );
        }
    }
    family(
        &mut out,
        "httptunneling_reloads_total",
        "counter",
        "Configuration reloads, by result.",
    );
    let _ = writeln!(
        out,
        "httptunneling_reloads_total{{result=\"ok\"}} {}",
        process.reloads_ok
    );
    let _ = writeln!(
        out,
        "httptunneling_reloads_total{{result=\"failed\"}} {}",
        process.reloads_failed
    );
    family(
        &mut out,
        "httptunneling_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
    );
    let _ = writeln!(
        out,
        "httptunneling_uptime_seconds {}",
        process.uptime.as_secs_f64()
    );
    family(
        &mut out,
        "httptunneling_build_info",
        "gauge",
        "The program's version.",
    );
    let _ = writeln!(
        out,
        "httptunneling_build_info{{version=\"{}\"}} 1",
        escape(env!("CARGO_PKG_VERSION"))
    );
    out
}

/// A label value escaped as the format wants (`\`, `"`, newline).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Longest scrape request read, in bytes.
pub const MAX_REQUEST: usize = 8192;

/// What a scrape's bytes so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read more.
    Partial,
    /// `GET /metrics` (a query string allowed).
    Metrics,
    /// Another path.
    NotFound,
    /// Another method.
    NotAllowed,
    /// Not HTTP, or over [`MAX_REQUEST`] bytes.
    Bad,
}

/// Parses a scrape's request head (bytes after it are ignored).
pub fn parse_request(buf: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..buf.len().min(MAX_REQUEST)]) {
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => Request::Partial,
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("");
            let path = path.split('?').next().unwrap_or("");
            match (req.method, path) {
                (Some("GET"), "/metrics") => Request::Metrics,
                (Some("GET"), _) => Request::NotFound,
                _ => Request::NotAllowed,
            }
        }
        _ => Request::Bad,
    }
}

/// The whole answer to a scrape: the exposition for [`Request::Metrics`],
/// a short error otherwise; the connection closes after it.
pub fn response(request: &Request, body: &str) -> Vec<u8> {
    let (status, content_type, body, extra) = match request {
        Request::Metrics => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            body,
            "",
        ),
        Request::NotFound => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n",
            "",
        ),
        Request::NotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n",
            "Allow: GET\r\n",
        ),
        Request::Bad | Request::Partial => ("400 Bad Request", "text/plain", "bad request\n", ""),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_told_apart() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost"),
            Request::Partial
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::NotAllowed
        );
        assert_eq!(parse_request(b"\x16\x03\x01 hello"), Request::Bad);
        assert_eq!(parse_request(&vec![b'a'; MAX_REQUEST + 10]), Request::Bad);
    }

    #[test]
    fn the_exposition_has_every_family_and_exact_values() {
        let mut c = Counters {
            ok: 3,
            up: 100,
            down: 200,
            ..Counters::default()
        };
        c.failed(Failure::Timeout);
        c.handshake.observe(Duration::from_micros(800));
        c.handshake.observe(Duration::from_millis(30));
        let text = render(
            &[EntryView {
                entry: "127.0.0.1:2222".into(),
                open: 2,
                counters: &c,
                open_bytes: (5, 7),
                routes: vec![("http://p\"1:3128".into(), false)],
            }],
            Process {
                reloads_ok: 1,
                reloads_failed: 2,
                uptime: Duration::from_secs(3),
            },
        );
        for line in [
            "httptunneling_tunnels_open{entry=\"127.0.0.1:2222\"} 2",
            "httptunneling_tunnels_total{entry=\"127.0.0.1:2222\",result=\"ok\"} 3",
            "httptunneling_tunnels_total{entry=\"127.0.0.1:2222\",result=\"failed\"} 1",
            "httptunneling_bytes_total{entry=\"127.0.0.1:2222\",direction=\"up\"} 105",
            "httptunneling_bytes_total{entry=\"127.0.0.1:2222\",direction=\"down\"} 207",
            "httptunneling_failures_total{entry=\"127.0.0.1:2222\",reason=\"timeout\"} 1",
            "httptunneling_failures_total{entry=\"127.0.0.1:2222\",reason=\"refused\"} 0",
            "httptunneling_handshake_seconds_bucket{entry=\"127.0.0.1:2222\",le=\"0.001\"} 1",
            "httptunneling_handshake_seconds_bucket{entry=\"127.0.0.1:2222\",le=\"0.05\"} 2",
            "httptunneling_handshake_seconds_bucket{entry=\"127.0.0.1:2222\",le=\"+Inf\"} 2",
            "httptunneling_handshake_seconds_count{entry=\"127.0.0.1:2222\"} 2",
            "httptunneling_route_up{entry=\"127.0.0.1:2222\",route=\"http://p\\\"1:3128\"} 0",
            "httptunneling_reloads_total{result=\"failed\"} 2",
            "httptunneling_uptime_seconds 3",
            "# TYPE httptunneling_handshake_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.contains(&format!(
            "httptunneling_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[test]
    fn responses_are_complete_http() {
        let ok = String::from_utf8(response(&Request::Metrics, "a 1\n")).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 4\r\n") && ok.ends_with("\r\n\r\na 1\n"));
        let e = String::from_utf8(response(&Request::NotAllowed, "")).unwrap();
        assert!(
            e.starts_with("HTTP/1.1 405") && e.contains("Allow: GET"),
            "{e}"
        );
    }

    /// The exposition read back by an independent parser of the format.
    #[test]
    fn a_real_parser_reads_the_exposition() {
        let mut c = Counters {
            ok: 4,
            ..Counters::default()
        };
        c.failed(Failure::ProxyAuth);
        c.handshake.observe(Duration::from_millis(2));
        let text = render(
            &[EntryView {
                entry: "[::1]:1080".into(),
                open: 1,
                counters: &c,
                open_bytes: (0, 0),
                routes: vec![("direct".into(), true)],
            }],
            Process::default(),
        );
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
        let find = |name: &str, label: (&str, &str)| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
                .map(|s| s.value.clone())
        };
        assert!(matches!(
            find("httptunneling_tunnels_total", ("result", "ok")),
            Some(prometheus_parse::Value::Counter(v)) if v == 4.0
        ));
        assert!(matches!(
            find("httptunneling_failures_total", ("reason", "proxy_auth")),
            Some(prometheus_parse::Value::Counter(v)) if v == 1.0
        ));
        assert!(matches!(
            find("httptunneling_handshake_seconds", ("entry", "[::1]:1080")),
            Some(prometheus_parse::Value::Histogram(_))
        ));
    }
}
