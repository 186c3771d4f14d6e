//! Negotiate (SPNEGO/Kerberos) against a real MIT KDC and squid's
//! `negotiate_kerberos_auth`: the tokens of `httptunneling::auth::gssapi`,
//! checked by hand (without the forwarder), the errors a user sees when the
//! ticket is missing, expired or of the wrong realm, and the program where
//! the GSSAPI library is missing.
//!
//! GSSAPI reads its configuration from the environment (`KRB5_CONFIG`,
//! `KRB5CCNAME`, `KRB5_CLIENT_KTNAME`), and `gssapi::load` opens the library
//! once per process, so every token is made in a child process: this test
//! binary run again on its ignored test [`child_gssapi`] with the
//! environment of the case ([`gssapi_child`]). The tests never change their
//! own environment.

mod common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::kdc::{self, Kdc};
use common::proxies::{base64, find_program, NegotiateAcceptor, RealProxy, SquidScheme};
use common::*;
use httptunneling::auth::gssapi;

/// Which case [`child_gssapi`] runs: `load`, `token` or `continue`.
const CHILD_MODE: &str = "HTTPTUNNELING_TEST_GSSAPI_CHILD";
/// The service host [`child_gssapi`] asks a token for.
const CHILD_HOST: &str = "HTTPTUNNELING_TEST_GSSAPI_HOST";
/// For `continue`: the acceptor's keytab, principal and krb5.conf.
const CHILD_ACCEPTOR: &str = "HTTPTUNNELING_TEST_GSSAPI_ACCEPTOR";

// ---------------------------------------------------------------------------
// The child
// ---------------------------------------------------------------------------

/// Not a test by itself: the body of the child processes of the other tests
/// (does nothing without [`CHILD_MODE`]). Prints one result line:
/// `RESULT OK <base64 token>`, `RESULT ERR <message>`, `RESULT LOADED <lib>`.
#[test]
#[ignore = "run by the other tests of this file in a child process"]
fn child_gssapi() {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return;
    };
    let result = match gssapi::load() {
        Err(e) => Err(format!("load: {e}")),
        Ok(api) => match mode.as_str() {
            "load" => Ok(format!("LOADED {}", api.name())),
            "token" => {
                let host = std::env::var(CHILD_HOST).expect("host");
                api.initial_token(&host)
                    .map(|t| format!("OK {}", base64(&t)))
            }
            "continue" => {
                let host = std::env::var(CHILD_HOST).expect("host");
                child_continue(api, &host)
            }
            other => panic!("unknown child mode {other}"),
        },
    };
    match result {
        // On a line of its own: the harness has printed "test ... " before.
        Ok(line) => println!("\nRESULT {line}"),
        Err(e) => println!("\nRESULT ERR {e}"),
    }
}

/// A context's first token, accepted by squid's helper (run here), whose
/// reply token completes the context.
fn child_continue(api: &gssapi::Gssapi, host: &str) -> Result<String, String> {
    let acceptor = std::env::var(CHILD_ACCEPTOR).expect("acceptor");
    let mut parts = acceptor.splitn(3, '\n');
    let acceptor = NegotiateAcceptor {
        keytab: parts.next().expect("keytab").into(),
        principal: parts.next().expect("principal").to_owned(),
        krb5_config: parts.next().expect("krb5.conf").into(),
    };
    let (mut context, token) = api.begin(host)?;
    if context.is_complete() {
        return Err("complete after the first token".to_owned());
    }
    let (reply, user) = helper_accepts(&acceptor, &token)?;
    let reply = reply.ok_or("the helper sent no token back")?;
    match context.continue_token(&reply)? {
        None if context.is_complete() => Ok(format!("COMPLETE {user}")),
        None => Err("no token and not complete".to_owned()),
        Some(t) => Err(format!("another token ({} bytes) after the reply", t.len())),
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Runs [`child_gssapi`] in a child process with `mode`, `host` and `env`
/// (nothing else of Kerberos' inherited) and returns its result line
/// (without `RESULT `).
fn gssapi_child(mode: &str, host: &str, env: &[(String, String)]) -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "child_gssapi",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_MODE, mode)
    .env(CHILD_HOST, host);
    for var in [
        "KRB5_CONFIG",
        "KRB5CCNAME",
        "KRB5_CLIENT_KTNAME",
        "KRB5_KTNAME",
        gssapi::LIB_ENV,
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run the test binary as a child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "child {mode} printed no result ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        out.status.success(),
        "child {mode} failed ({}):\n{stdout}",
        out.status
    );
    line.to_owned()
}

/// The token the child made, or panics with its error.
fn token_ok(result: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = result
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("expected a token, got: {result}"));
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 token")
}

/// The error the child met, or panics when it made a token.
fn token_err(result: &str) -> String {
    result
        .strip_prefix("ERR ")
        .unwrap_or_else(|| panic!("expected an error, got: {result}"))
        .to_owned()
}

/// Feeds `token` to squid's `negotiate_kerberos_auth` (the helper protocol
/// squid speaks: `YR <token>`) and returns its reply token and the user it
/// authenticated, or its refusal.
fn helper_accepts(
    acceptor: &NegotiateAcceptor,
    token: &[u8],
) -> Result<(Option<Vec<u8>>, String), String> {
    use base64::Engine as _;
    let helper = ["/usr/lib/squid", "/usr/lib64/squid", "/usr/libexec/squid"]
        .iter()
        .map(|d| std::path::Path::new(d).join("negotiate_kerberos_auth"))
        .find(|p| p.exists())
        .expect("squid's negotiate_kerberos_auth helper (apt-get install squid)");
    let rcache = std::env::temp_dir();
    let mut child = Command::new(helper)
        .args(["-k"])
        .arg(&acceptor.keytab)
        .args(["-s", &acceptor.principal])
        .env("KRB5_CONFIG", &acceptor.krb5_config)
        .env("KRB5_KTNAME", format!("FILE:{}", acceptor.keytab.display()))
        .env("KRB5RCACHETYPE", "none")
        .env("KRB5RCACHEDIR", rcache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn negotiate_kerberos_auth: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "YR {}", base64(token)).map_err(|e| e.to_string())?;
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let reply = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = reply.lines().next().unwrap_or_default();
    let fields: Vec<&str> = line.split_whitespace().collect();
    // squid 4+: `OK token=<b64> user=<name>`; older: `AF <b64> <name>`.
    let (code, rest) = fields.split_first().ok_or_else(|| {
        format!(
            "no answer from the helper: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let decode = |b: &str| base64::engine::general_purpose::STANDARD.decode(b).ok();
    match *code {
        "OK" => {
            let value = |key: &str| {
                rest.iter()
                    .find_map(|f| f.strip_prefix(key))
                    .map(str::to_owned)
            };
            let user = value("user=").unwrap_or_default();
            Ok((value("token=").and_then(|t| decode(&t)), user))
        }
        "AF" if rest.len() >= 2 => Ok((decode(rest[0]), rest[1].to_owned())),
        _ => Err(format!(
            "helper refused: {line}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// A CONNECT to `dest` through `proxy` with `Proxy-Authorization:
/// Negotiate <token>` (none when `token` is `None`); the socket and the
/// answer's head.
fn connect_negotiate(
    proxy: SocketAddr,
    dest: SocketAddr,
    token: Option<&[u8]>,
) -> io::Result<(TcpStream, String)> {
    let mut stream = TcpStream::connect_timeout(&proxy, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut request = format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n");
    if let Some(token) = token {
        request.push_str(&format!(
            "Proxy-Authorization: Negotiate {}\r\n",
            base64(token)
        ));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    // One byte at a time so nothing past the head is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("proxy closed after {:?}", String::from_utf8_lossy(&head)),
            ));
        }
        head.push(byte[0]);
    }
    Ok((stream, String::from_utf8_lossy(&head).into_owned()))
}

/// `len` bytes of the stream for `seed` through `stream` and back from the
/// echo backend, byte-exact.
fn echo_through(stream: &TcpStream, seed: u64, len: usize) {
    let mut writer = stream.try_clone().expect("try_clone");
    let sender = thread::spawn(move || send_payload(&mut writer, seed, len as u64, 16 * 1024));
    let mut reader = stream.try_clone().expect("try_clone");
    let mut check = StreamCheck::new(seed);
    let mut buf = vec![0; 64 * 1024];
    while check.received() < len as u64 {
        let want = (len as u64 - check.received()).min(buf.len() as u64) as usize;
        match reader.read(&mut buf[..want]) {
            Ok(0) => panic!("EOF after {} of {len} bytes", check.received()),
            Ok(n) => check.feed(&buf[..n]),
            Err(e) => panic!("read after {} of {len} bytes: {e}", check.received()),
        }
    }
    sender.join().expect("sender").expect("send");
    check.assert_complete(len as u64, "echo through the Negotiate tunnel");
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// (a) The token of `initial_token("localhost")`, sent by hand in a
/// `CONNECT`, opens a tunnel through squid checking Kerberos tickets, and
/// the tunnel carries bytes exactly; without it squid answers 407 offering
/// Negotiate; squid logs the user.
#[test]
fn a_token_by_hand_opens_a_tunnel_through_squid() {
    let Some(kdc) = Kdc::start() else { return };
    let Some(squid) =
        RealProxy::squid_negotiate(&kdc.acceptor(), &[SquidScheme::Negotiate], None, "")
    else {
        return;
    };
    let backend = echo_backend();

    let (_s, head) = connect_negotiate(squid.addr, backend.addr, None).expect("CONNECT");
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    assert!(head.contains("Proxy-Authenticate: Negotiate"), "{head}");

    let token = token_ok(&gssapi_child(
        "token",
        kdc::SERVICE_HOST,
        &kdc.client_env(&kdc.ccache),
    ));
    let (stream, head) =
        connect_negotiate(squid.addr, backend.addr, Some(&token)).expect("CONNECT with the token");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{}", squid.logs());
    echo_through(&stream, 12, 256 * 1024);
    drop(stream);
    let user = format!("{}@{}", kdc::USER, kdc::REALM);
    assert!(
        wait_until(Duration::from_secs(10), || squid
            .access_log()
            .contains(&user)),
        "squid's access log names {user}:\n{}",
        squid.access_log()
    );
}

/// The continuation: the acceptor's reply token completes the context
/// (`continue_token` returns nothing more to send).
#[test]
fn continue_token_completes_with_the_acceptors_reply() {
    let Some(kdc) = Kdc::start() else { return };
    let acceptor = kdc.acceptor();
    let mut env = kdc.client_env(&kdc.ccache);
    env.push((
        CHILD_ACCEPTOR.to_owned(),
        format!(
            "{}\n{}\n{}",
            acceptor.keytab.display(),
            acceptor.principal,
            acceptor.krb5_config.display()
        ),
    ));
    let result = gssapi_child("continue", kdc::SERVICE_HOST, &env);
    assert_eq!(result, format!("COMPLETE {}@{}", kdc::USER, kdc::REALM));
}

/// A service keytab for the client (`KRB5_CLIENT_KTNAME`) instead of
/// `kinit`: the library gets the ticket itself into an empty cache.
#[test]
fn a_client_keytab_works_without_kinit() {
    let Some(kdc) = Kdc::start() else { return };
    let keytab = kdc.user_keytab();
    let mut env = kdc.client_env(&kdc.ccache_path("from-keytab"));
    env.push((
        "KRB5_CLIENT_KTNAME".to_owned(),
        format!("FILE:{}", keytab.display()),
    ));
    let token = token_ok(&gssapi_child("token", kdc::SERVICE_HOST, &env));
    let (_, user) = helper_accepts(&kdc.acceptor(), &token).expect("the helper accepts");
    assert_eq!(user, format!("{}@{}", kdc::USER, kdc::REALM));
}

/// (b) No ticket: the error names the missing credentials and the cache.
#[test]
fn no_ticket_is_an_error_naming_the_missing_credentials() {
    let Some(kdc) = Kdc::start() else { return };
    let missing = kdc.ccache_path("never-created");
    let err = token_err(&gssapi_child(
        "token",
        kdc::SERVICE_HOST,
        &kdc.client_env(&missing),
    ));
    assert!(err.contains("No Kerberos credentials available"), "{err}");
    assert!(err.contains(&missing), "{err}");
    // An empty cache file says the same.
    let empty = kdc.dir.join("empty-ccache");
    std::fs::write(&empty, b"").expect("write empty cache");
    let empty = format!("FILE:{}", empty.display());
    let err = token_err(&gssapi_child(
        "token",
        kdc::SERVICE_HOST,
        &kdc.client_env(&empty),
    ));
    assert!(err.contains("credentials"), "{err}");
    eprintln!("no ticket: {err}");
}

/// (c) An expired ticket: the error says it expired.
#[test]
fn an_expired_ticket_is_a_clear_error() {
    let Some(kdc) = Kdc::start() else { return };
    let ccache = kdc.ccache_path("short");
    let issued = Instant::now();
    kdc.kinit(&ccache, &["-l", "1s"]).expect("kinit -l 1s");
    let left = Duration::from_millis(2500).saturating_sub(issued.elapsed());
    thread::sleep(left);
    let err = token_err(&gssapi_child(
        "token",
        kdc::SERVICE_HOST,
        &kdc.client_env(&ccache),
    ));
    assert!(err.to_lowercase().contains("expired"), "{err}");
    eprintln!("expired: {err}");
}

/// (c) A proxy in a realm the user's realm does not trust.
#[test]
fn a_wrong_realm_is_a_clear_error() {
    let Some(kdc) = Kdc::start() else { return };
    let host = format!("proxy.{}", kdc::WRONG_REALM_DOMAIN);
    let err = token_err(&gssapi_child("token", &host, &kdc.client_env(&kdc.ccache)));
    let cross = format!("krbtgt/{}@{}", kdc::OTHER_REALM, kdc::REALM);
    assert!(err.contains(&cross) && err.contains("not found"), "{err}");
    eprintln!("wrong realm: {err}");
}

/// A proxy host with no `HTTP/` principal, and a KDC that is down.
#[test]
fn an_unknown_service_and_an_unreachable_kdc_are_clear_errors() {
    let Some(mut kdc) = Kdc::start() else { return };
    let err = token_err(&gssapi_child(
        "token",
        "nosuchproxy.localhost",
        &kdc.client_env(&kdc.ccache),
    ));
    assert!(
        err.contains("HTTP/nosuchproxy.localhost@") && err.contains("not found"),
        "{err}"
    );
    eprintln!("unknown service: {err}");
    kdc.stop();
    let started = Instant::now();
    let err = token_err(&gssapi_child(
        "token",
        kdc::SERVICE_HOST,
        &kdc.client_env(&kdc.ccache),
    ));
    assert!(err.contains("Cannot contact any KDC"), "{err}");
    eprintln!("KDC down ({:?}): {err}", started.elapsed());
}

/// (d) With the library hidden (its name overridden by
/// `HTTPTUNNELING_GSSAPI_LIB`), `load` fails with a message saying it is
/// not installed; with the system's library it loads.
#[test]
fn load_fails_cleanly_when_the_library_is_hidden() {
    let hidden = [(
        gssapi::LIB_ENV.to_owned(),
        "/nonexistent/libgssapi_krb5.so.2".to_owned(),
    )];
    let result = gssapi_child("load", "", &hidden);
    let err = token_err(&result);
    assert!(
        err.contains("the GSSAPI library /nonexistent/libgssapi_krb5.so.2 is not installed"),
        "{err}"
    );
    let result = gssapi_child("load", "", &[]);
    assert_eq!(result, format!("LOADED {}", gssapi::LIBRARIES[0]));
}

/// (d) The program starts and forwards a direct entry where the library is
/// hidden.
#[test]
fn the_binary_forwards_with_the_library_hidden() {
    let backend = echo_backend();
    let port = free_port();
    let config = format!(
        "127.0.0.1:{port} {} {}\n",
        backend.addr.ip(),
        backend.addr.port()
    );
    let env = [(
        gssapi::LIB_ENV.to_owned(),
        "/nonexistent/libgssapi_krb5.so.2".to_owned(),
    )];
    let mut run = spawn_binary_env(&config, &["-v"], &env);
    assert_echo(port, 5, 64 * 1024);
    assert_echo(port, 6, 1024);
    run.assert_alive();
    assert!(!run.log().contains("panicked"), "{}", run.diagnostics());
}

/// kinit and the KDC tools are found (so a missing package fails here with
/// the install line, not later with a confusing error).
#[test]
fn the_kerberos_programs_are_installed() {
    if common::proxies::skip_allowed() {
        return;
    }
    for program in ["krb5kdc", "kdb5_util", "kadmin.local", "kinit"] {
        assert!(
            find_program(program).is_some(),
            "{program} is not installed: `{}`",
            kdc::INSTALL
        );
    }
}

// ---------------------------------------------------------------------------
// Through the forwarder
// ---------------------------------------------------------------------------

/// The proxy host as the service principal names it (`HTTP/localhost`).
fn squid_url(squid: &RealProxy) -> String {
    format!("http://{}:{}", kdc::SERVICE_HOST, squid.addr.port())
}

/// `auth-scheme=negotiate` with a ticket: 20 tunnels at once through squid
/// checking Kerberos, byte-exact, each with a fresh token from a worker
/// thread; the open lines say `auth Negotiate`; squid logs the user.
#[test]
fn negotiate_through_the_forwarder_twenty_at_once() {
    let Some(kdc) = Kdc::start() else { return };
    let Some(squid) =
        RealProxy::squid_negotiate(&kdc.acceptor(), &[SquidScheme::Negotiate], None, "")
    else {
        return;
    };
    let backend = echo_backend();
    let port = free_port();
    let config = format!(
        "127.0.0.1:{port} {} {} {} auth-scheme=negotiate\n",
        backend.addr.ip(),
        backend.addr.port(),
        squid_url(&squid)
    );
    let run = spawn_binary_env(&config, &["-v"], &kdc.client_env(&kdc.ccache));
    let workers: Vec<_> = (0..20u64)
        .map(|seed| {
            std::thread::spawn(move || echo_through(&connect_port(port), 100 + seed, 128 * 1024))
        })
        .collect();
    let failures = workers.into_iter().filter_map(|w| w.join().err()).count();
    let mut run = run;
    let status = run.try_exit();
    assert_eq!(
        failures,
        0,
        "tunnels through Negotiate failed (exit: {status:?})\n{}",
        run.diagnostics()
    );
    let opens = run.wait_log_count("auth Negotiate", 20, IO_TIMEOUT);
    assert_eq!(opens.len(), 20, "{}", run.diagnostics());
    assert!(!run.log().contains("failed:"), "{}", run.diagnostics());
    let user = format!("{}@{}", kdc::USER, kdc::REALM);
    assert!(
        wait_until(Duration::from_secs(10), || squid
            .access_log()
            .contains(&user)),
        "squid names {user}:\n{}",
        squid.access_log()
    );
}

/// `auto` learns Negotiate from squid's 407 (no credentials in the config:
/// the ticket is all), and without a ticket it is passed over with one line
/// and the next scheme squid offers (Basic) is used.
#[test]
fn auto_learns_negotiate_and_passes_it_over_without_a_ticket() {
    let Some(kdc) = Kdc::start() else { return };
    let Some(squid) = RealProxy::squid_negotiate(
        &kdc.acceptor(),
        &[SquidScheme::Negotiate, SquidScheme::Basic],
        Some(("alice", "S3cret")),
        "",
    ) else {
        return;
    };
    let backend = echo_backend();
    // With a ticket and no password: Negotiate, learnt for the next tunnel.
    let port = free_port();
    let config = format!(
        "127.0.0.1:{port} {} {} {}\n",
        backend.addr.ip(),
        backend.addr.port(),
        squid_url(&squid)
    );
    let run = spawn_binary_env(&config, &["-v"], &kdc.client_env(&kdc.ccache));
    echo_through(&connect_port(port), 1, 4096);
    echo_through(&connect_port(port), 2, 4096);
    let opens = run.wait_log_count("auth Negotiate", 2, IO_TIMEOUT);
    assert_eq!(opens.len(), 2, "{}", run.diagnostics());
    drop(run);
    // No ticket, a password: one "passed over" line, then Basic works.
    let port = free_port();
    let config = format!(
        "127.0.0.1:{port} {} {} {} auth=alice:S3cret\n",
        backend.addr.ip(),
        backend.addr.port(),
        squid_url(&squid)
    );
    let missing = kdc.ccache_path("no-such-ticket");
    let run = spawn_binary_env(&config, &["-v"], &kdc.client_env(&missing));
    // The first tunnel sends Basic pre-emptively: squid takes it at once.
    echo_through(&connect_port(port), 3, 4096);
    run.wait_log("auth Basic", IO_TIMEOUT);
    drop(run);
    // A named negotiate without a ticket: one clear failure line.
    let port = free_port();
    let config = format!(
        "127.0.0.1:{port} {} {} {} auth-scheme=negotiate\n",
        backend.addr.ip(),
        backend.addr.port(),
        squid_url(&squid)
    );
    let run = spawn_binary_env(&config, &["-v"], &kdc.client_env(&missing));
    let mut s = connect_port(port);
    let mut b = [0u8; 1];
    assert!(matches!(
        std::io::Read::read(&mut s, &mut b),
        Ok(0) | Err(_)
    ));
    let line = run.wait_log("no Negotiate token", IO_TIMEOUT);
    assert!(
        line.contains("No Kerberos credentials") || line.contains("credentials"),
        "{line}"
    );
    assert!(!run.log().contains("S3cret"));
}
