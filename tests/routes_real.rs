//! Chains, TLS to a proxy and the proxy from the environment (SPEC "Routes,
//! failover and chains", "TLS to a proxy", "Proxy from the environment")
//! against real squids and a real TLS front (stunnel), all on 127.0.0.1.
//!
//! squid closes the whole tunnel as soon as either side sends a FIN (see
//! tests/proxy_real.rs), so the bulk tests use an *exchange*: the client
//! announces a seed and a length, both sides send that many bytes at once,
//! each checks what it received, and only then does the client close.
//!
//! A chain is proven hop by hop: the first squid may CONNECT only to the
//! second hop's port (an `acl ... port` with `http_access deny`), so a tunnel
//! that works went through both, and each squid's access log shows its
//! CONNECT.

mod common;

use common::proxies::{self, RealProxy, SquidScheme};
use common::tls_front::{self, ServerCert, Stunnel, TestCa};
use common::*;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// Credentials of the first squid of a chain; the `@` and `:` check the
/// URL's percent-decoding.
const USER_A: &str = "alice";
const PASSWORD_A: &str = "a-s3cr@t:7f3a";
const PASSWORD_A_IN_URL: &str = "a-s3cr%40t%3A7f3a";
/// Credentials of the second squid.
const USER_B: &str = "bob";
const PASSWORD_B: &str = "b-pw-19c2";

// ---------------------------------------------------------------------------
// Exchange: both directions at once, no half-close
// ---------------------------------------------------------------------------

/// Seed of the stream the backend sends back to a client that sent `seed`.
fn down_seed(seed: u64) -> u64 {
    seed ^ 0xD0D0_D0D0_D0D0_D0D0
}

/// What the exchange backend saw on one connection.
#[derive(Debug)]
struct ExchangeReport {
    seed: u64,
    len: u64,
    received: u64,
    sha: Sha,
    sent_all: bool,
    error: Option<String>,
}

impl ExchangeReport {
    fn assert_ok(&self, what: &str) {
        assert_eq!(self.error, None, "{what}: backend error");
        assert_eq!(
            self.received, self.len,
            "{what}: bytes the backend received"
        );
        assert_eq!(
            hex(&self.sha),
            hex(&payload_sha(self.seed, self.len)),
            "{what}: sha256 of what the backend received"
        );
        assert!(
            self.sent_all,
            "{what}: the backend could not send everything"
        );
    }
}

/// On each connection: reads `[seed u64 LE][len u64 LE]`, then at the same
/// time sends `len` bytes of the stream for `down_seed(seed)` and reads and
/// hashes `len` bytes; reports; then waits for the client to close first.
fn exchange_backend() -> (Backend, mpsc::Receiver<ExchangeReport>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let backend = Backend::spawn(move |mut stream| {
        let mut header = [0u8; 16];
        if stream.read_exact(&mut header).is_err() {
            return;
        }
        let seed = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
        let Ok(mut writer) = stream.try_clone() else {
            return;
        };
        let sender =
            thread::spawn(move || send_payload(&mut writer, down_seed(seed), len, 64 * 1024));
        let (received, sha, error) = read_exact_sha(&mut stream, len);
        let sent_all = sender.join().map(|r| r.is_ok()).unwrap_or(false);
        let _ = tx.lock().expect("report channel").send(ExchangeReport {
            seed,
            len,
            received,
            sha,
            sent_all,
            error,
        });
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    (backend, rx)
}

fn read_exact_sha(r: &mut impl Read, len: u64) -> (u64, Sha, Option<String>) {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0u64;
    while total < len {
        let want = (len - total).min(buf.len() as u64) as usize;
        match r.read(&mut buf[..want]) {
            Ok(0) => return (total, hasher.finalize().into(), Some("early EOF".into())),
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (total, hasher.finalize().into(), Some(e.to_string())),
        }
    }
    (total, hasher.finalize().into(), None)
}

/// The client side of an exchange on `stream`: sends the header and `len`
/// bytes for `seed` while reading `len` bytes, checked byte-exact. Leaves
/// the connection open.
fn exchange(stream: &TcpStream, seed: u64, len: u64, what: &str) {
    let mut writer = stream.try_clone().expect("try_clone");
    let sender = thread::spawn(move || -> io::Result<()> {
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&seed.to_le_bytes());
        header[8..].copy_from_slice(&len.to_le_bytes());
        writer.write_all(&header)?;
        send_payload(&mut writer, seed, len, 64 * 1024).map(drop)
    });
    let mut reader = stream.try_clone().expect("try_clone");
    let mut check = StreamCheck::new(down_seed(seed));
    let mut buf = vec![0; 64 * 1024];
    while check.received() < len {
        let want = (len - check.received()).min(buf.len() as u64) as usize;
        match reader.read(&mut buf[..want]) {
            Ok(0) => panic!("{what}: EOF after {} of {len} bytes", check.received()),
            Ok(n) => check.feed(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "{what}: read after {} of {len} bytes: {e}",
                check.received()
            ),
        }
    }
    sender
        .join()
        .expect("sender thread")
        .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    check.assert_complete(len, what);
}

/// One tunnel through `port`: an exchange of `len` bytes each way, checked
/// on both ends, then closed; returns the tunnel's open line (the `nth`).
fn tunnel_exchange(
    run: &Running,
    port: u16,
    reports: &mpsc::Receiver<ExchangeReport>,
    seed: u64,
    len: u64,
    nth: usize,
    what: &str,
) -> String {
    let client = connect_port(port);
    exchange(&client, seed, len, what);
    recv_within(reports, IO_TIMEOUT, what).assert_ok(what);
    drop(client);
    let closes = run.wait_log_count(": closed up=", nth, IO_TIMEOUT);
    let want = 16 + len;
    assert!(
        closes[nth - 1].contains(&format!("closed up={want} down={len} ")),
        "{what}: the close line counts every byte: {}",
        closes[nth - 1]
    );
    run.wait_log_count(": open, ", nth, IO_TIMEOUT)[nth - 1].clone()
}

/// A client of a tunnel that must fail: sends a few bytes and expects to be
/// closed without a byte within `within`.
fn expect_client_closed(port: u16, within: Duration, what: &str) {
    let mut client = connect_port(port);
    let _ = client.write_all(b"held until the proxy says 2xx");
    expect_closed(&mut client, within, what);
}

/// Lines of squid's access log holding `needle`.
fn access_count(squid: &RealProxy, needle: &str) -> usize {
    squid.access_log().matches(needle).count()
}

/// Waits until squid logged at least `n` lines holding `needle`.
fn wait_access(squid: &RealProxy, needle: &str, n: usize) {
    let ok = wait_until(Duration::from_secs(15), || access_count(squid, needle) >= n);
    assert!(
        ok,
        "squid on {} logged {} {needle:?} lines, expected at least {n}:\n{}",
        squid.addr,
        access_count(squid, needle),
        squid.access_log()
    );
}

/// squid letting clients CONNECT to `port` only (every other port: 403).
fn squid_only_to(port: u16) -> Option<RealProxy> {
    RealProxy::squid_extra(&only_to(port))
}

/// The squid lines that deny CONNECT to any port but `port`.
fn only_to(port: u16) -> String {
    format!("acl next_hop port {port}\nhttp_access deny !next_hop\n")
}

/// Runs the binary with one entry from a fresh port to `dest` through
/// `routes`, plus `options`, with `files` in the config's folder.
fn forwarder(
    dest: SocketAddr,
    routes: &str,
    options: &str,
    files: &[(&str, &str)],
) -> (Running, u16) {
    let port = free_port();
    let config = format!(
        "# generated by tests/routes_real.rs\n127.0.0.1:{port} {} {} {routes} {options}\n",
        dest.ip(),
        dest.port()
    );
    (spawn_binary_with_files(&config, &["-v"], files), port)
}

fn print_versions() {
    eprintln!(
        "{} / {}",
        proxies::version(proxies::Kind::Squid).unwrap_or_else(|| "squid ?".into()),
        tls_front::stunnel_version().unwrap_or_else(|| "stunnel ?".into())
    );
}

// ---------------------------------------------------------------------------
// Two squids chained
// ---------------------------------------------------------------------------

/// Without the forwarder: the first squid of a chain refuses a CONNECT to
/// the destination itself (so a working tunnel through it must have gone
/// on through the second hop).
#[test]
fn chain_test_setup_first_squid_refuses_anything_but_the_second() {
    let backend = echo_backend();
    let Some(b) = RealProxy::squid() else { return };
    let Some(a) = squid_only_to(b.port()) else {
        return;
    };
    let (_, status) = proxies::connect_via(a.addr, backend.addr, None).expect("CONNECT");
    assert!(status.contains(" 403"), "A to the backend: {status:?}");
    let (mut s, status) = proxies::connect_via(a.addr, b.addr, None).expect("CONNECT");
    assert!(status.contains(" 200"), "A to B: {status:?}");
    // Inside A's tunnel, B is asked for the backend.
    let request = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", backend.addr);
    s.write_all(request.as_bytes()).expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("read B's answer"), 1, "B closed");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "B through A: {head:?}");
    s.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).expect("echo");
    assert_eq!(&buf, b"ping");
}

/// `http://alice:...@A>http://B`: A (Basic auth, credentials in its URL,
/// allowed to CONNECT only to B) and B (no auth) → 8 MiB each way.
#[test]
fn two_real_squids_chained_8_mib_each_way() {
    print_versions();
    let (backend, reports) = exchange_backend();
    let Some(b) = RealProxy::squid_extra(&only_to(backend.port())) else {
        return;
    };
    let Some(a) = RealProxy::squid_auth_with(
        &[SquidScheme::Basic],
        USER_A,
        PASSWORD_A,
        &only_to(b.port()),
    ) else {
        return;
    };
    let (run, port) = forwarder(
        backend.addr,
        &format!(
            "http://{USER_A}:{PASSWORD_A_IN_URL}@{}>http://{}",
            a.addr, b.addr
        ),
        "",
        &[],
    );
    let open = tunnel_exchange(&run, port, &reports, 41, 8 * MIB, 1, "chain A>B");
    assert!(
        open.contains(&format!(" via {}>{}: open, ", a.addr, b.addr)),
        "the open line names both hops: {open}"
    );
    assert!(
        open.contains(", auth Basic"),
        "the open line names hop 1's scheme: {open}"
    );
    wait_access(&a, &format!("CONNECT {} {USER_A}", b.addr), 1);
    wait_access(&b, &format!("CONNECT {} ", backend.addr), 1);
    assert_eq!(
        access_count(&a, &format!("CONNECT {}", backend.addr)),
        0,
        "A was never asked for the destination itself"
    );
    let log = run.log();
    for secret in [PASSWORD_A, PASSWORD_A_IN_URL] {
        assert!(!log.contains(secret), "the log shows {secret:?}:\n{log}");
    }
}

/// Each hop with its own credentials: A as alice, B as bob, both Basic.
#[test]
fn two_real_squids_chained_each_with_its_own_credentials() {
    let (backend, reports) = exchange_backend();
    let Some(b) = RealProxy::squid_auth_with(
        &[SquidScheme::Basic],
        USER_B,
        PASSWORD_B,
        &only_to(backend.port()),
    ) else {
        return;
    };
    let Some(a) = RealProxy::squid_auth_with(
        &[SquidScheme::Basic],
        USER_A,
        PASSWORD_A,
        &only_to(b.port()),
    ) else {
        return;
    };
    let (run, port) = forwarder(
        backend.addr,
        &format!("http://{}>http://{USER_B}:{PASSWORD_B}@{}", a.addr, b.addr),
        &format!("auth={USER_A}:{PASSWORD_A}"),
        &[],
    );
    let open = tunnel_exchange(&run, port, &reports, 42, MIB, 1, "chain A>B, two users");
    assert!(
        open.contains(", auth Basic>Basic"),
        "the open line names each hop's scheme: {open}"
    );
    wait_access(&a, &format!("CONNECT {} {USER_A}", b.addr), 1);
    wait_access(&b, &format!("CONNECT {} {USER_B}", backend.addr), 1);
    // A second tunnel: both hops learnt Basic and send it at once, so no
    // 407 more than the first tunnel's (squid logs TCP_DENIED/407).
    let denied_before = access_count(&a, "/407 ") + access_count(&b, "/407 ");
    tunnel_exchange(&run, port, &reports, 43, MIB, 2, "chain A>B, second tunnel");
    wait_access(&b, &format!("CONNECT {} {USER_B}", backend.addr), 2);
    assert_eq!(
        access_count(&a, "/407 ") + access_count(&b, "/407 "),
        denied_before,
        "the second tunnel was not refused by either hop:\n--- A ---\n{}\n--- B ---\n{}",
        a.access_log(),
        b.access_log()
    );
}

// ---------------------------------------------------------------------------
// squid behind TLS (stunnel)
// ---------------------------------------------------------------------------

/// A squid, a stunnel in front of it serving `cert`, and an exchange
/// backend.
struct TlsSetup {
    backend: Backend,
    reports: mpsc::Receiver<ExchangeReport>,
    squid: RealProxy,
    front: Stunnel,
}

fn tls_setup(cert: &ServerCert) -> Option<TlsSetup> {
    let (backend, reports) = exchange_backend();
    let squid = RealProxy::squid()?;
    let front = Stunnel::start(cert, squid.addr)?;
    Some(TlsSetup {
        backend,
        reports,
        squid,
        front,
    })
}

/// The failed line of a tunnel whose `https://` hop's certificate is
/// refused; the client is closed and nothing reached squid.
fn assert_tls_refused(setup: &TlsSetup, options: &str, files: &[(&str, &str)]) -> String {
    let (run, port) = forwarder(
        setup.backend.addr,
        &format!("https://localhost:{}", setup.front.port()),
        options,
        files,
    );
    expect_client_closed(port, Duration::from_secs(15), "client of a refused TLS hop");
    let failed = run.wait_log(": failed: ", IO_TIMEOUT);
    eprintln!("{failed}");
    assert!(
        failed.contains(&format!(
            " via https://localhost:{}: failed: ",
            setup.front.port()
        )),
        "the failed line names the https:// route: {failed}"
    );
    assert!(
        failed.contains("TLS") && failed.contains("certificate"),
        "the failed line says the TLS check failed on the certificate: {failed}"
    );
    assert_eq!(
        access_count(&setup.squid, "CONNECT"),
        0,
        "no CONNECT went through a TLS session that failed its check"
    );
    assert_eq!(setup.backend.accepted(), 0);
    failed
}

/// Verified against `proxy-ca` (a file relative to the config's folder):
/// 8 MiB each way through `https://localhost:PORT`.
#[test]
fn squid_behind_tls_verified_with_proxy_ca_8_mib_each_way() {
    print_versions();
    let ca = TestCa::new();
    let Some(setup) = tls_setup(&ca.server_cert(&["localhost"], false)) else {
        return;
    };
    let (run, port) = forwarder(
        setup.backend.addr,
        &format!("https://localhost:{}", setup.front.port()),
        "proxy-ca=ca.pem",
        &[("ca.pem", &ca.pem)],
    );
    let open = tunnel_exchange(&run, port, &setup.reports, 51, 8 * MIB, 1, "https:// hop");
    assert!(
        open.contains(&format!(
            " via https://localhost:{}: open, ",
            setup.front.port()
        )),
        "the open line names the https:// hop: {open}"
    );
    wait_access(&setup.squid, &format!("CONNECT {} ", setup.backend.addr), 1);
    assert!(
        run.log_lines("proxy-verify=off").is_empty(),
        "no proxy-verify warning when verifying"
    );
}

#[test]
fn squid_behind_tls_certificate_for_another_name_is_refused() {
    let ca = TestCa::new();
    let Some(setup) = tls_setup(&ca.server_cert(&["proxy.other.test"], false)) else {
        return;
    };
    let failed = assert_tls_refused(&setup, "proxy-ca=ca.pem", &[("ca.pem", &ca.pem)]);
    assert!(
        failed.contains("not valid for name"),
        "the failed line says the name does not match: {failed}"
    );
}

#[test]
fn squid_behind_tls_unknown_ca_is_refused() {
    let trusted = TestCa::new();
    let other = TestCa::new();
    let Some(setup) = tls_setup(&other.server_cert(&["localhost"], false)) else {
        return;
    };
    let failed = assert_tls_refused(&setup, "proxy-ca=ca.pem", &[("ca.pem", &trusted.pem)]);
    assert!(
        failed.to_lowercase().contains("issuer"),
        "the failed line says the issuer is unknown: {failed}"
    );
}

#[test]
fn squid_behind_tls_with_the_system_store_refuses_a_test_ca() {
    // No proxy-ca: the system's store, which does not hold the test CA.
    let ca = TestCa::new();
    let Some(setup) = tls_setup(&ca.server_cert(&["localhost"], false)) else {
        return;
    };
    let failed = assert_tls_refused(&setup, "", &[]);
    assert!(
        failed.to_lowercase().contains("issuer"),
        "the failed line says the issuer is unknown: {failed}"
    );
}

#[test]
fn squid_behind_tls_expired_certificate_is_refused() {
    let ca = TestCa::new();
    let Some(setup) = tls_setup(&ca.server_cert(&["localhost"], true)) else {
        return;
    };
    let failed = assert_tls_refused(&setup, "proxy-ca=ca.pem", &[("ca.pem", &ca.pem)]);
    assert!(
        failed.contains("expired"),
        "the failed line says the certificate expired: {failed}"
    );
}

/// `proxy-verify=off` accepts a certificate for another name from an
/// unknown CA, and says so at load.
#[test]
fn squid_behind_tls_proxy_verify_off_accepts_a_wrong_name() {
    let ca = TestCa::new();
    let Some(setup) = tls_setup(&ca.server_cert(&["proxy.other.test"], false)) else {
        return;
    };
    let (run, port) = forwarder(
        setup.backend.addr,
        &format!("https://localhost:{}", setup.front.port()),
        "proxy-verify=off",
        &[],
    );
    let warning = run.wait_log(
        "proxy-verify=off: the certificates of its https:// proxies are not checked",
        IO_TIMEOUT,
    );
    assert!(warning.contains("WARN"), "a warn line: {warning}");
    let open = tunnel_exchange(&run, port, &setup.reports, 52, MIB, 1, "proxy-verify=off");
    assert!(
        open.contains(&format!(
            " via https://localhost:{}: open, ",
            setup.front.port()
        )),
        "{open}"
    );
    wait_access(&setup.squid, &format!("CONNECT {} ", setup.backend.addr), 1);
}

/// A certificate refused on route 1 is a route failure: route 2 (plain
/// squid) carries the tunnel.
#[test]
fn tls_failure_on_the_first_route_fails_over() {
    let ca = TestCa::new();
    let Some(setup) = tls_setup(&ca.server_cert(&["proxy.other.test"], false)) else {
        return;
    };
    let (run, port) = forwarder(
        setup.backend.addr,
        &format!(
            "https://localhost:{},http://{}",
            setup.front.port(),
            setup.squid.addr
        ),
        "proxy-ca=ca.pem",
        &[("ca.pem", &ca.pem)],
    );
    let open = tunnel_exchange(&run, port, &setup.reports, 53, MIB, 1, "failover from TLS");
    assert!(
        open.contains(&format!(" via {}: open, ", setup.squid.addr)),
        "route 2 carried the tunnel: {open}"
    );
    let warn = run.wait_log(
        &format!("route https://localhost:{} failed (", setup.front.port()),
        IO_TIMEOUT,
    );
    assert!(
        warn.contains("certificate"),
        "the warn line says why: {warn}"
    );
}

/// TLS as the second hop: `http://A>https://localhost:STUNNEL`, A allowed
/// to CONNECT only to the stunnel's port; stunnel → squid B → backend.
#[test]
fn tls_as_the_second_hop_of_a_chain() {
    let ca = TestCa::new();
    let Some(setup) = tls_setup(&ca.server_cert(&["localhost"], false)) else {
        return;
    };
    let Some(a) = squid_only_to(setup.front.port()) else {
        return;
    };
    let (run, port) = forwarder(
        setup.backend.addr,
        &format!("http://{}>https://localhost:{}", a.addr, setup.front.port()),
        "proxy-ca=ca.pem",
        &[("ca.pem", &ca.pem)],
    );
    let open = tunnel_exchange(
        &run,
        port,
        &setup.reports,
        54,
        2 * MIB,
        1,
        "http>https chain",
    );
    assert!(
        open.contains(&format!(
            " via {}>https://localhost:{}: open, ",
            a.addr,
            setup.front.port()
        )),
        "the open line names both hops: {open}"
    );
    wait_access(&a, &format!("CONNECT localhost:{} ", setup.front.port()), 1);
    wait_access(&setup.squid, &format!("CONNECT {} ", setup.backend.addr), 1);
}

// ---------------------------------------------------------------------------
// The proxy from the environment
// ---------------------------------------------------------------------------

/// Runs the binary on `config` with exactly `vars` as proxy variables.
fn env_forwarder(dest: SocketAddr, vars: &[(&str, &str)]) -> (Running, u16) {
    let port = free_port();
    let config = format!(
        "# generated by tests/routes_real.rs\n127.0.0.1:{port} {} {} env\n",
        dest.ip(),
        dest.port()
    );
    (spawn_binary_proxy_env(&config, &["-v"], vars), port)
}

#[test]
fn env_https_proxy_goes_through_squid() {
    let (backend, reports) = exchange_backend();
    let Some(squid) = RealProxy::squid() else {
        return;
    };
    let url = format!("http://{}", squid.addr);
    let (run, port) = env_forwarder(backend.addr, &[("HTTPS_PROXY", &url)]);
    let open = tunnel_exchange(&run, port, &reports, 61, MIB, 1, "env HTTPS_PROXY");
    assert!(
        open.contains(&format!(" via {}: open, ", squid.addr)),
        "the open line names the proxy from HTTPS_PROXY: {open}"
    );
    wait_access(&squid, &format!("CONNECT {} ", backend.addr), 1);
}

#[test]
fn env_lowercase_https_proxy_with_credentials_authenticates() {
    let (backend, reports) = exchange_backend();
    let Some(squid) = RealProxy::squid_basic_auth(USER_A, PASSWORD_A) else {
        return;
    };
    let url = format!("http://{USER_A}:{PASSWORD_A_IN_URL}@{}", squid.addr);
    let (run, port) = env_forwarder(backend.addr, &[("https_proxy", &url)]);
    let open = tunnel_exchange(
        &run,
        port,
        &reports,
        62,
        MIB,
        1,
        "env https_proxy with user",
    );
    assert!(open.contains(", auth Basic"), "{open}");
    wait_access(&squid, &format!("CONNECT {} {USER_A}", backend.addr), 1);
    let log = run.log();
    for secret in [PASSWORD_A, PASSWORD_A_IN_URL] {
        assert!(!log.contains(secret), "the log shows {secret:?}:\n{log}");
    }
}

#[test]
fn env_no_proxy_matching_the_destination_goes_direct() {
    let (backend, reports) = exchange_backend();
    let Some(squid) = RealProxy::squid() else {
        return;
    };
    let url = format!("http://{}", squid.addr);
    let (run, port) = env_forwarder(
        backend.addr,
        &[("HTTPS_PROXY", &url), ("NO_PROXY", "example.org,127.0.0.1")],
    );
    let open = tunnel_exchange(&run, port, &reports, 63, MIB, 1, "env with NO_PROXY");
    assert!(
        !open.contains(" via "),
        "NO_PROXY matched: the tunnel went direct: {open}"
    );
    assert_eq!(
        access_count(&squid, "CONNECT"),
        0,
        "squid saw nothing:\n{}",
        squid.access_log()
    );
}

#[test]
fn env_no_proxy_not_matching_still_uses_the_proxy() {
    let (backend, reports) = exchange_backend();
    let Some(squid) = RealProxy::squid() else {
        return;
    };
    let url = format!("http://{}", squid.addr);
    let (run, port) = env_forwarder(
        backend.addr,
        &[
            ("HTTPS_PROXY", &url),
            ("NO_PROXY", "10.0.0.0/8,.example.org"),
        ],
    );
    let open = tunnel_exchange(&run, port, &reports, 64, MIB, 1, "env, NO_PROXY elsewhere");
    assert!(
        open.contains(&format!(" via {}: open, ", squid.addr)),
        "{open}"
    );
    wait_access(&squid, &format!("CONNECT {} ", backend.addr), 1);
}

// ---------------------------------------------------------------------------
// A socks entry with env
// ---------------------------------------------------------------------------

/// The SOCKS 5 greeting and CONNECT for `host:port` (domain-name form, as
/// `curl --socks5-hostname` sends it); panics unless it is granted.
fn socks5_connect(stream: &mut TcpStream, host: &str, port: u16) {
    stream.write_all(&[5, 1, 0]).expect("socks greeting");
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).expect("socks method choice");
    assert_eq!(choice, [5, 0], "no-authentication method chosen");
    let mut request = vec![5, 1, 0, 3, host.len() as u8];
    request.extend_from_slice(host.as_bytes());
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).expect("socks request");
    let mut reply = [0u8; 4];
    stream.read_exact(&mut reply).expect("socks reply");
    assert_eq!(reply[..2], [5, 0], "socks CONNECT granted: {reply:?}");
    let rest = match reply[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            stream
                .read_exact(&mut len)
                .expect("socks bound name length");
            len[0] as usize + 2
        }
        other => panic!("socks reply address type {other}"),
    };
    let mut bound = vec![0u8; rest];
    stream.read_exact(&mut bound).expect("socks bound address");
}

/// A `socks` entry with `env`: a destination NO_PROXY matches goes direct,
/// one it does not match goes through squid.
#[test]
fn env_socks_entry_follows_no_proxy_per_destination() {
    let (backend, reports) = exchange_backend();
    let Some(squid) = RealProxy::squid() else {
        return;
    };
    let url = format!("http://{}", squid.addr);
    for (n, (no_proxy, via_squid)) in [("10.0.0.0/8", true), ("127.0.0.0/8", false)]
        .into_iter()
        .enumerate()
    {
        let port = free_port();
        let config = format!("# generated by tests/routes_real.rs\n127.0.0.1:{port} socks env\n");
        let run = spawn_binary_proxy_env(
            &config,
            &["-v"],
            &[("HTTPS_PROXY", &url), ("NO_PROXY", no_proxy)],
        );
        let before = access_count(&squid, &format!("CONNECT {} ", backend.addr));
        let what = format!("socks env, NO_PROXY={no_proxy}");
        let mut client = connect_port(port);
        socks5_connect(&mut client, "127.0.0.1", backend.port());
        exchange(&client, 70 + n as u64, MIB, &what);
        recv_within(&reports, IO_TIMEOUT, &what).assert_ok(&what);
        drop(client);
        run.wait_log(": closed up=", IO_TIMEOUT);
        let open = run.wait_log(": open, ", IO_TIMEOUT);
        if via_squid {
            assert!(
                open.contains(&format!(" via {}", squid.addr)),
                "{what}: {open}"
            );
            wait_access(&squid, &format!("CONNECT {} ", backend.addr), before + 1);
        } else {
            // The direct route is named when the entry has others.
            assert!(
                !open.contains(" via ") || open.contains(" via direct:"),
                "{what}: direct: {open}"
            );
            assert_eq!(
                access_count(&squid, &format!("CONNECT {} ", backend.addr)),
                before,
                "{what}: squid saw nothing new:\n{}",
                squid.access_log()
            );
        }
        drop(run);
    }
}

/// One direction only, client to proxy, through an `https://` hop: 8 MiB
/// up, nothing down until the backend has it all (the smallest case of the
/// TLS forwarding path: the ring drains into the TLS session, which must
/// get its records out as the socket takes them).
#[test]
fn squid_behind_tls_upload_only_8_mib() {
    let ca = TestCa::new();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let len = 8 * MIB;
    let backend = Backend::spawn(move |mut stream| {
        let (received, sha, error) = read_exact_sha(&mut stream, len);
        let _ = tx
            .lock()
            .expect("report channel")
            .send((received, sha, error));
        let _ = stream.write_all(b"done");
        let _ = stream.read_to_end(&mut Vec::new());
    });
    let Some(squid) = RealProxy::squid() else {
        return;
    };
    let Some(front) = Stunnel::start(&ca.server_cert(&["localhost"], false), squid.addr) else {
        return;
    };
    let (run, port) = forwarder(
        backend.addr,
        &format!("https://localhost:{}", front.port()),
        "proxy-ca=ca.pem",
        &[("ca.pem", &ca.pem)],
    );
    let mut client = connect_port(port);
    let mut writer = client.try_clone().expect("try_clone");
    let sender = thread::spawn(move || send_payload(&mut writer, 81, len, 64 * 1024));
    let (received, sha, error) = recv_within(&rx, Duration::from_secs(60), "upload through TLS");
    assert_eq!(error, None, "backend error after {received} bytes");
    assert_eq!(received, len, "bytes the backend received");
    assert_eq!(
        hex(&sha),
        hex(&payload_sha(81, len)),
        "sha256 of the upload"
    );
    sender
        .join()
        .expect("sender thread")
        .expect("send the upload");
    let mut done = [0u8; 4];
    client.read_exact(&mut done).expect("the backend's answer");
    assert_eq!(&done, b"done");
    drop(client);
    run.wait_log(&format!("closed up={len} down=4 "), IO_TIMEOUT);
}
