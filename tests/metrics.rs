//! `GET /metrics` of the real binary (SPEC "Metrics"), read back with an
//! independent parser of the Prometheus text format (`prometheus-parse`):
//! exact counts after known traffic, 404/405, a scraper that never sends
//! stalls nothing, at most 16 scrapes at once, and reloads that move the
//! metrics line while counters of entries that stay are kept.

mod common;

use common::*;
use prometheus_parse::{Scrape, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One HTTP request to the metrics port; the whole answer.
fn get(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(addr(port)).expect("connect to metrics");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    out
}

fn scrape(port: u16) -> Scrape {
    let answer = get(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses")
}

/// The value of `name` whose labels include all of `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name} {labels:?}"));
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(h) => h.iter().map(|b| b.count).fold(0.0, f64::max),
        Value::Summary(_) => panic!("{name} is a summary"),
    }
}

fn wait_port(port: u16) {
    assert!(
        wait_until(IO_TIMEOUT, || is_listening(addr(port))),
        "metrics port {port} never listened"
    );
}

#[test]
fn counts_are_exact_after_known_traffic() {
    let echo = echo_backend();
    let (good, bad, metrics) = (free_port(), free_port(), free_port());
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = format!(
        "{good} 127.0.0.1 {}\n{bad} 127.0.0.1 {refused}\nmetrics {metrics}\n",
        echo.addr.port()
    );
    let run = spawn_binary(&config);
    wait_port(metrics);
    for seed in 0..3 {
        let mut s = connect_port(good);
        let data = payload(seed, 1000);
        s.write_all(&data).unwrap();
        let mut back = vec![0; 1000];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, data);
    }
    let mut s = connect_port(bad);
    let mut b = [0u8; 1];
    assert!(
        matches!(s.read(&mut b), Ok(0) | Err(_)),
        "refused destination closes"
    );
    // Wait for the close lines: counters are taken when a tunnel ends.
    run.wait_log_count("closed up=1000 down=1000", 3, IO_TIMEOUT);
    run.wait_log("failed: connect to", IO_TIMEOUT);
    let g = good.to_string();
    let entry_g = format!("127.0.0.1:{g}");
    let entry_b = format!("127.0.0.1:{bad}");
    let m = scrape(metrics);
    let e = |name: &str, entry: &str, more: &[(&str, &str)]| {
        let mut labels = vec![("entry", entry)];
        labels.extend_from_slice(more);
        value(&m, name, &labels)
    };
    assert_eq!(
        e("httptunneling_tunnels_total", &entry_g, &[("result", "ok")]),
        3.0
    );
    assert_eq!(
        e(
            "httptunneling_tunnels_total",
            &entry_g,
            &[("result", "failed")]
        ),
        0.0
    );
    assert_eq!(
        e(
            "httptunneling_tunnels_total",
            &entry_b,
            &[("result", "failed")]
        ),
        1.0
    );
    assert_eq!(
        e(
            "httptunneling_failures_total",
            &entry_b,
            &[("reason", "refused")]
        ),
        1.0
    );
    assert_eq!(
        e(
            "httptunneling_bytes_total",
            &entry_g,
            &[("direction", "up")]
        ),
        3000.0
    );
    assert_eq!(
        e(
            "httptunneling_bytes_total",
            &entry_g,
            &[("direction", "down")]
        ),
        3000.0
    );
    assert_eq!(e("httptunneling_tunnels_open", &entry_g, &[]), 0.0);
    assert_eq!(e("httptunneling_handshake_seconds", &entry_g, &[]), 3.0);
    assert_eq!(
        e("httptunneling_route_up", &entry_g, &[("route", "direct")]),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "httptunneling_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(value(&m, "httptunneling_uptime_seconds", &[]) > 0.0);
    // Other paths and methods.
    assert!(get(metrics, "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    let post = get(
        metrics,
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(
        post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET"),
        "{post}"
    );
}

#[test]
fn silent_scrapers_stall_nothing_and_at_most_16_are_served() {
    let echo = echo_backend();
    let (port, metrics) = (free_port(), free_port());
    let _run = spawn_binary(&format!(
        "{port} 127.0.0.1 {}\nmetrics {metrics}\n",
        echo.addr.port()
    ));
    wait_port(metrics);
    let silent: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(addr(metrics)).unwrap())
        .collect();
    // The 17th waits in the backlog: no answer while 16 are held.
    let mut waiting = TcpStream::connect(addr(metrics)).unwrap();
    waiting.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        waiting.read(&mut buf).is_err(),
        "a 17th scrape was served while 16 were open"
    );
    // Tunnels are not stalled meanwhile.
    let started = Instant::now();
    assert_echo(port, 1, 64 * 1024);
    assert!(started.elapsed() < Duration::from_secs(2));
    // One silent scraper leaves: the waiting one is answered.
    drop(silent);
    waiting.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut answer = String::new();
    waiting.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_reload_moves_the_metrics_line_and_keeps_the_counters() {
    let echo = echo_backend();
    let (port, m1, m2) = (free_port(), free_port(), free_port());
    let entry = format!("{port} 127.0.0.1 {}\n", echo.addr.port());
    let run = spawn_binary(&format!("{entry}metrics {m1}\n"));
    wait_port(m1);
    assert_echo(port, 3, 1000);
    run.wait_log("closed up=1000", IO_TIMEOUT);
    std::fs::write(&run.config_path, format!("{entry}metrics {m2}\n")).unwrap();
    wait_port(m2);
    assert!(
        wait_until(IO_TIMEOUT, || !is_listening(addr(m1))),
        "the old metrics port still listens"
    );
    let m = scrape(m2);
    let entry = format!("127.0.0.1:{port}");
    assert_eq!(
        value(
            &m,
            "httptunneling_tunnels_total",
            &[("entry", &entry), ("result", "ok")]
        ),
        1.0,
        "counters of an entry that stays survive the reload"
    );
    assert_eq!(
        value(&m, "httptunneling_reloads_total", &[("result", "ok")]),
        1.0
    );
}

#[test]
fn status_prints_the_running_instance_from_its_metrics_line() {
    let echo = echo_backend();
    let (port, metrics) = (free_port(), free_port());
    let run = spawn_binary(&format!(
        "{port} 127.0.0.1 {}\nmetrics {metrics}\n",
        echo.addr.port()
    ));
    wait_port(metrics);
    assert_echo(port, 5, 1000);
    run.wait_log("closed up=1000", IO_TIMEOUT);
    let out = std::process::Command::new(BIN)
        .arg("--status")
        .arg(&run.config_path)
        .output()
        .expect("run --status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.starts_with("httptunneling 0."), "{text}");
    assert!(
        text.contains(", 1 entries, reloads 0 ok, 0 failed"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "entry 127.0.0.1:{port}: 0 open, 1 ok, 0 failed, up=1000 down=1000"
        )),
        "{text}"
    );

    // Without a metrics line there is nothing to ask: exit 1, saying why.
    let dir = std::env::temp_dir().join(format!("ht-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("no-metrics.conf");
    std::fs::write(&conf, format!("{port} 127.0.0.1 1\n")).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--status")
        .arg(&conf)
        .output()
        .expect("run --status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err.contains("has no metrics line"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
