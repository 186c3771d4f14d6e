//! `--status CONFIG`: a running instance's state, read from outside it.
//!
//! On Unix SIGUSR1 makes the process log its snapshot; Windows has no such
//! signal, and a service has no console to press a key in. Every platform
//! has the `metrics` endpoint, served by the same loop, so `--status` reads
//! CONFIG, finds its `metrics LISTEN` line, asks that address for
//! `GET /metrics` and prints a summary: per entry the open tunnels, the
//! tunnels that reached forwarding or failed, the bytes each way, and every
//! route up or in back-off; the reloads and the uptime.
//!
//! Owns the request (blocking, with timeouts: this is a short command, not
//! the reactor) and the reading of the exposition. Never logs.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::net;

/// How long the whole request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where to connect for a `metrics LISTEN` address: a wildcard listens on
/// loopback too.
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `GET /metrics` from `addr`; the body of a 200 answer.
///
/// # Errors
/// Connecting, a timeout, or an answer other than 200.
pub fn fetch(addr: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the answer was {status:?}, not 200"),
        ));
    }
    Ok(body.to_string())
}

/// One sample of the exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one sample line (comments and blank lines are `None`, as are
/// lines this reader does not understand).
fn sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '}' => break,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        let consumed = chars.next().map_or(inner.len(), |(i, _)| i);
        rest = &inner[consumed..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The per-entry numbers of the summary.
#[derive(Default)]
struct EntryStatus {
    open: f64,
    ok: f64,
    failed: f64,
    up: f64,
    down: f64,
    routes: Vec<(String, bool)>,
}

/// The human summary of an exposition, one line per entry and route.
pub fn summarise(exposition: &str) -> String {
    let mut entries: Vec<(String, EntryStatus)> = Vec::new();
    let (mut uptime, mut reloads_ok, mut reloads_failed, mut version) = (0.0, 0.0, 0.0, None);
    for s in exposition.lines().filter_map(sample) {
        let entry = match s.label("entry") {
            Some(name) => {
                let at = match entries.iter().position(|(e, _)| e == name) {
                    Some(i) => i,
                    None => {
                        entries.push((name.to_string(), EntryStatus::default()));
                        entries.len() - 1
                    }
                };
                Some(&mut entries[at].1)
            }
            None => None,
        };
        match (s.name.as_str(), entry) {
            ("httptunneling_tunnels_open", Some(e)) => e.open = s.value,
            ("httptunneling_tunnels_total", Some(e)) => match s.label("result") {
                Some("ok") => e.ok = s.value,
                Some("failed") => e.failed = s.value,
                _ => {}
            },
            ("httptunneling_bytes_total", Some(e)) => match s.label("direction") {
                Some("up") => e.up = s.value,
                Some("down") => e.down = s.value,
                _ => {}
            },
            ("httptunneling_route_up", Some(e)) => {
                let route = s.label("route").unwrap_or("?").to_string();
                e.routes.push((route, s.value != 0.0));
            }
            ("httptunneling_reloads_total", None) => match s.label("result") {
                Some("ok") => reloads_ok = s.value,
                Some("failed") => reloads_failed = s.value,
                _ => {}
            },
            ("httptunneling_uptime_seconds", None) => uptime = s.value,
            ("httptunneling_build_info", None) => version = s.label("version").map(str::to_owned),
            _ => {}
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "httptunneling {}: up {}, {} entries, reloads {reloads_ok} ok, {reloads_failed} failed",
        version.as_deref().unwrap_or("?"),
        net::fmt_duration(Duration::from_secs_f64(uptime.max(0.0))),
        entries.len()
    );
    for (name, e) in &entries {
        let _ = writeln!(
            out,
            "entry {name}: {} open, {} ok, {} failed, up={} down={}",
            e.open, e.ok, e.failed, e.up, e.down
        );
        for (route, up) in &e.routes {
            let state = if *up { "up" } else { "in back-off" };
            let _ = writeln!(out, "  route {route}: {state}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_labels() {
        assert_eq!(
            sample("httptunneling_uptime_seconds 12.5"),
            Some(Sample {
                name: "httptunneling_uptime_seconds".into(),
                labels: vec![],
                value: 12.5
            })
        );
        let s = sample(r#"x{entry="127.0.0.1:1",route="a \"b\" \\ c"} 3"#).unwrap();
        assert_eq!(s.label("entry"), Some("127.0.0.1:1"));
        assert_eq!(s.label("route"), Some(r#"a "b" \ c"#));
        assert_eq!(s.value, 3.0);
        assert_eq!(sample("# HELP x y"), None);
        assert_eq!(sample(""), None);
        assert_eq!(sample("x{entry=\"unterminated} 1"), None);
        assert_eq!(sample("x{entry=\"a\"} not-a-number"), None);
    }

    #[test]
    fn summary_of_a_rendered_exposition() {
        let text = "\
# HELP httptunneling_tunnels_open Tunnels open now.
httptunneling_tunnels_open{entry=\"127.0.0.1:2222\"} 2
httptunneling_tunnels_total{entry=\"127.0.0.1:2222\",result=\"ok\"} 3
httptunneling_tunnels_total{entry=\"127.0.0.1:2222\",result=\"failed\"} 1
httptunneling_bytes_total{entry=\"127.0.0.1:2222\",direction=\"up\"} 105
httptunneling_bytes_total{entry=\"127.0.0.1:2222\",direction=\"down\"} 210
httptunneling_route_up{entry=\"127.0.0.1:2222\",route=\"http://p:3128\"} 0
httptunneling_route_up{entry=\"127.0.0.1:2222\",route=\"direct\"} 1
httptunneling_tunnels_open{entry=\"127.0.0.1:1080\"} 0
httptunneling_reloads_total{result=\"ok\"} 4
httptunneling_reloads_total{result=\"failed\"} 1
httptunneling_uptime_seconds 65.2
httptunneling_build_info{version=\"0.1.0\"} 1
";
        assert_eq!(
            summarise(text),
            "httptunneling 0.1.0: up 1m05s, 2 entries, reloads 4 ok, 1 failed\n\
             entry 127.0.0.1:2222: 2 open, 3 ok, 1 failed, up=105 down=210\n  \
             route http://p:3128: in back-off\n  \
             route direct: up\n\
             entry 127.0.0.1:1080: 0 open, 0 ok, 0 failed, up=0 down=0\n"
        );
    }

    #[test]
    fn wildcards_are_asked_on_loopback() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(connect_addr(a("0.0.0.0:9100")), a("127.0.0.1:9100"));
        assert_eq!(connect_addr(a("[::]:9100")), a("[::1]:9100"));
        assert_eq!(connect_addr(a("10.0.0.1:9100")), a("10.0.0.1:9100"));
    }
}
