//! `socks` and `http` entries (SPEC "Client-named destinations"): real
//! clients (curl in its four SOCKS modes and with `-p -x`, OpenSSH through
//! netcat-openbsd's `-X 5` / `-X connect`), direct and through a real squid
//! with Basic auth the client knows nothing about; every reply code byte for
//! byte from a raw client; optimistic data; slow and silent clients; `allow`
//! boundaries.
//!
//! Real programs are looked up like the real proxies (`common::proxies`):
//! a missing one fails the test with the `apt-get` line that installs it,
//! unless `HTTPTUNNELING_SKIP_REAL_PROXIES=1`, which skips with a note.
//! Everything runs on 127.0.0.1; every process a test starts is stopped by
//! its own PID.

mod common;

use common::proxies::{self, RealProxy};
use common::*;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// What installs the real clients these tests run (Debian/Ubuntu, as root).
const INSTALL_CLIENTS: &str =
    "apt-get install -y curl netcat-openbsd openssh-server openssh-client";

/// Credentials squid wants; the clients never see them.
const USER: &str = "alice";
const PASSWORD: &str = "pw-7f3a";

/// How long an external client may take (a debug build on two busy cores).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Programs
// ---------------------------------------------------------------------------

/// The program `name` (`PATH` and the usual bin/sbin folders); `None` after a
/// note when it is missing and skipping is allowed; panics otherwise.
fn program(name: &str) -> Option<PathBuf> {
    match proxies::find_program(name) {
        Some(p) => Some(p),
        None if proxies::skip_allowed() => {
            eprintln!(
                "note: {name} is not installed; skipping because {}=1",
                proxies::SKIP_ENV
            );
            None
        }
        None => panic!(
            "{name} is not installed: install the real clients with `{INSTALL_CLIENTS}` \
             (as root), or set {}=1 to skip the tests that need them",
            proxies::SKIP_ENV
        ),
    }
}

/// netcat-openbsd's `nc` (the one with `-X`, the proxy protocol option).
fn openbsd_nc() -> Option<PathBuf> {
    let nc = program("nc")?;
    let out = Command::new(&nc)
        .arg("-h")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {} -h: {e}", nc.display()));
    let help = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if help.contains("-X proxy_protocol") {
        return Some(nc);
    }
    if proxies::skip_allowed() {
        eprintln!(
            "note: {} is not netcat-openbsd (no -X); skipping",
            nc.display()
        );
        return None;
    }
    panic!(
        "{} is not netcat-openbsd (its -h shows no -X proxy option): `{INSTALL_CLIENTS}`",
        nc.display()
    );
}

/// What a finished external command gave.
struct Ran {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs `cmd` with `stdin` fed to it (or /dev/null), killing it (by its PID)
/// after `timeout`.
fn run(cmd: &mut Command, stdin: Option<Vec<u8>>, timeout: Duration, what: &str) -> Ran {
    for name in PROXY_VARIABLES {
        cmd.env_remove(name);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: spawn {cmd:?}: {e}"));
    if let Some(bytes) = stdin {
        let mut input = child.stdin.take().expect("piped stdin");
        thread::spawn(move || {
            let _ = input.write_all(&bytes);
        });
    }
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            // Child::kill: SIGKILL to this child's PID only.
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: {cmd:?} still running after {timeout:?}; killed");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ran {
        status,
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
    }
}

// ---------------------------------------------------------------------------
// Servers the clients reach
// ---------------------------------------------------------------------------

/// A one-file HTTP/1.1 server: any `GET` is answered `200` with `len` bytes
/// of the stream for `seed`, then the connection is closed.
fn file_server(seed: u64, len: u64) -> Backend {
    Backend::spawn(move |mut stream| {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
            if head.len() > 64 * 1024 {
                return;
            }
        }
        if !head.starts_with(b"GET ") {
            let _ = stream.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
        let header = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        if stream.write_all(header.as_bytes()).is_err() {
            return;
        }
        let _ = send_payload(&mut stream, seed, len, 64 * 1024);
        let _ = stream.shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    })
}

/// An echo backend that also reports, at EOF, every byte it received.
fn recording_echo() -> (Backend, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let backend = Backend::spawn(move |mut stream| {
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = stream.shutdown(Shutdown::Write);
        let _ = tx.lock().expect("record channel").send(got);
    });
    (backend, rx)
}

// ---------------------------------------------------------------------------
// The forwarder
// ---------------------------------------------------------------------------

/// Runs the binary on `lines` (one entry each, `{}` replaced by a fresh
/// port); returns it and the ports in order.
fn forwarder(lines: &[String]) -> (Running, Vec<u16>) {
    let mut ports = Vec::new();
    let mut config = String::from("# generated by tests/client_named.rs\n");
    for line in lines {
        let port = free_port();
        ports.push(port);
        config.push_str(&format!("127.0.0.1:{port} {line}\n"));
    }
    (spawn_binary(&config), ports)
}

/// The `open` line of a tunnel of `entry` to `dest` (waits for it).
fn wait_open(run: &Running, entry: u16, dest: &str) -> String {
    let matches = |l: &String| {
        l.contains(&format!(" 127.0.0.1:{entry} <- "))
            && l.contains(&format!(" -> {dest}"))
            && l.contains(": open")
    };
    let mut found = None;
    let ok = wait_until(Duration::from_secs(20), || {
        found = run.log().lines().map(str::to_owned).find(|l| matches(l));
        found.is_some()
    });
    assert!(
        ok,
        "no open line for entry {entry} naming {dest}\n{}",
        run.diagnostics()
    );
    found.expect("just found")
}

// ---------------------------------------------------------------------------
// Raw SOCKS and HTTP clients
// ---------------------------------------------------------------------------

/// A destination as a SOCKS client names it.
#[derive(Clone, Debug)]
enum Dest<'a> {
    V4([u8; 4], u16),
    V6(Ipv6Addr, u16),
    Name(&'a str, u16),
}

const GREETING: &[u8] = &[5, 1, 0];
const METHOD_OK: &[u8] = &[5, 0];

/// A SOCKS 5 request (after the greeting) with command `cmd`.
fn socks5_request(cmd: u8, dest: &Dest) -> Vec<u8> {
    let mut v = vec![5, cmd, 0];
    let port = match dest {
        Dest::V4(ip, port) => {
            v.push(1);
            v.extend_from_slice(ip);
            *port
        }
        Dest::V6(ip, port) => {
            v.push(4);
            v.extend_from_slice(&ip.octets());
            *port
        }
        Dest::Name(name, port) => {
            v.push(3);
            v.push(u8::try_from(name.len()).expect("short name"));
            v.extend_from_slice(name.as_bytes());
            *port
        }
    };
    v.extend_from_slice(&port.to_be_bytes());
    v
}

/// SOCKS 5 reply `code` with the zero bound address SPEC gives.
fn reply5(code: u8) -> Vec<u8> {
    vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

const SOCKS4_OK: &[u8] = &[0, 0x5A, 0, 0, 0, 0, 0, 0];
const SOCKS4_REJECTED: &[u8] = &[0, 0x5B, 0, 0, 0, 0, 0, 0];

/// A SOCKS 4 CONNECT to `ip:port`, user id `test`.
fn socks4_request(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut v = vec![4, 1];
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&ip);
    v.extend_from_slice(b"test\0");
    v
}

/// A SOCKS 4a CONNECT to `name:port`, user id `test`.
fn socks4a_request(name: &str, port: u16) -> Vec<u8> {
    let mut v = vec![4, 1];
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 1]);
    v.extend_from_slice(b"test\0");
    v.extend_from_slice(name.as_bytes());
    v.push(0);
    v
}

/// `CONNECT authority HTTP/1.1` with a Host header and a blank line.
fn connect_head(authority: &str) -> Vec<u8> {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: client-named-test\r\n\r\n")
        .into_bytes()
}

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// Reads exactly `n` bytes.
fn read_n(stream: &mut TcpStream, n: usize, what: &str) -> Vec<u8> {
    let mut v = vec![0; n];
    let mut got = 0;
    while got < n {
        match stream.read(&mut v[got..]) {
            Ok(0) => panic!(
                "{what}: EOF after {got} of {n} bytes: {:?}",
                String::from_utf8_lossy(&v[..got])
            ),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("{what}: after {got} of {n} bytes ({:02x?}): {e}", &v[..got]),
        }
    }
    v
}

/// Everything until the peer closes (EOF or reset), within the socket's
/// read timeout.
fn read_all(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut v = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return v,
            Ok(n) => v.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                return v
            }
            Err(e) => panic!(
                "{what}: not closed ({e}) after {:?}",
                String::from_utf8_lossy(&v)
            ),
        }
    }
}

/// A SOCKS 5 exchange: greeting, method selection, request; returns the
/// stream and the 10-byte reply.
fn socks5(port: u16, cmd: u8, dest: &Dest) -> (TcpStream, Vec<u8>) {
    let mut s = connect_port(port);
    s.write_all(GREETING).expect("send greeting");
    let method = read_n(&mut s, 2, "method selection");
    assert_eq!(method, METHOD_OK, "method selection for {dest:?}");
    s.write_all(&socks5_request(cmd, dest))
        .expect("send request");
    let reply = read_n(&mut s, 10, &format!("SOCKS 5 reply for {dest:?}"));
    (s, reply)
}

/// A SOCKS 5 request to `dest` that must be refused with `code`: the reply
/// byte for byte, then the connection closed.
fn socks5_refused(port: u16, dest: &Dest, code: u8) {
    let mut s = connect_port(port);
    s.write_all(GREETING).expect("send greeting");
    s.write_all(&socks5_request(1, dest)).expect("send request");
    let got = read_all(&mut s, &format!("SOCKS 5 refusal for {dest:?}"));
    let mut want = METHOD_OK.to_vec();
    want.extend_from_slice(&reply5(code));
    assert_eq!(
        got, want,
        "SOCKS 5 to {dest:?} through port {port}: want reply {code}"
    );
}

/// Sends `request` in one write and reads everything until the close.
fn one_shot(port: u16, request: &[u8], what: &str) -> Vec<u8> {
    let mut s = connect_port(port);
    s.write_all(request).expect("send request");
    read_all(&mut s, what)
}

/// An HTTP error answer, split and checked for the headers every one has.
struct HttpAnswer {
    status_line: String,
    headers: Vec<String>,
    body: String,
}

fn http_answer(bytes: &[u8], what: &str) -> HttpAnswer {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no blank line in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<String> = lines.map(str::to_owned).collect();
    let answer = HttpAnswer {
        status_line,
        headers,
        body: body.to_owned(),
    };
    answer.assert_header(&format!("Content-Length: {}", body.len()), what);
    answer.assert_header("Connection: close", what);
    answer.assert_header("Content-Type: text/plain; charset=utf-8", what);
    assert!(
        answer.body.ends_with('\n') && answer.body.lines().count() == 1,
        "{what}: a one-line body, got {:?}",
        answer.body
    );
    answer
}

impl HttpAnswer {
    fn assert_header(&self, header: &str, what: &str) {
        assert!(
            self.headers.iter().any(|h| h == header),
            "{what}: no header {header:?} in {:?}",
            self.headers
        );
    }
}

/// An `http` entry's answer to `request` must be `status_line` (and the
/// common error headers); returns it.
fn http_refused(port: u16, request: &[u8], status_line: &str, what: &str) -> HttpAnswer {
    let bytes = one_shot(port, request, what);
    let answer = http_answer(&bytes, what);
    assert_eq!(answer.status_line, status_line, "{what}");
    answer
}

/// A port nothing listens on (bound, read, closed).
fn closed_port() -> u16 {
    free_port()
}

// ---------------------------------------------------------------------------
// 1. curl
// ---------------------------------------------------------------------------

/// curl's ways of using a proxy port, the destination host each sends, and
/// whether it goes to the socks (true) or the http entry.
const CURL_MODES: [(&str, &str, bool); 5] = [
    ("--socks5-hostname", "localhost", true),
    ("--socks5", "127.0.0.1", true),
    ("--socks4a", "localhost", true),
    ("--socks4", "127.0.0.1", true),
    ("-x", "localhost", false),
];

/// Fetches a 4 MiB file with curl in every mode through `socks_port` /
/// `http_port`; the body must be byte-exact, the open line must name the
/// destination and, when `via` is given, that route.
fn curl_every_mode(fwd: &Running, socks_port: u16, http_port: u16, via: Option<&str>) {
    let Some(curl) = program("curl") else { return };
    const LEN: u64 = 4 * MIB;
    for (i, (option, host, socks)) in CURL_MODES.iter().enumerate() {
        let seed = 0xC0DE_0000 + i as u64;
        let server = file_server(seed, LEN);
        let url = format!("http://{host}:{}/file.bin", server.port());
        let entry = if *socks { socks_port } else { http_port };
        let mut cmd = Command::new(&curl);
        cmd.args(["-sS", "--fail", "--max-time", "100"]);
        if *socks {
            cmd.arg(option).arg(format!("127.0.0.1:{entry}"));
        } else {
            cmd.arg("-p")
                .arg("-x")
                .arg(format!("http://127.0.0.1:{entry}"));
        }
        cmd.arg(&url);
        let what = format!("curl {option} 127.0.0.1:{entry} {url}");
        let ran = run(&mut cmd, None, CLIENT_TIMEOUT, &what);
        assert!(
            ran.status.success(),
            "{what}: {} {}\n{}",
            ran.status,
            ran.stderr,
            fwd.diagnostics()
        );
        assert_eq!(ran.stdout.len() as u64, LEN, "{what}: body length");
        assert_eq!(
            hex(&sha(&ran.stdout)),
            hex(&payload_sha(seed, LEN)),
            "{what}: body sha256"
        );
        // curl's --socks5 and --socks4 resolve `localhost` themselves; the
        // others send the name, and the open line shows what was asked.
        let dest = format!("{host}:{}", server.port());
        let open = wait_open(fwd, entry, &dest);
        if let Some(via) = via {
            assert!(open.contains(&format!(" via {via}")), "{what}: {open}");
            assert!(!open.contains(PASSWORD), "{what}: password in {open}");
        } else {
            assert!(!open.contains(" via "), "{what}: {open}");
        }
        wait_until(IO_TIMEOUT, || server.accepted() >= 1);
        assert_eq!(server.accepted(), 1, "{what}: connections to the server");
    }
}

#[test]
fn curl_socks5_socks4_and_connect_direct_4mib_byte_exact() {
    if program("curl").is_none() {
        return;
    }
    let (run, ports) = forwarder(&["socks".into(), "http".into()]);
    curl_every_mode(&run, ports[0], ports[1], None);
}

#[test]
fn curl_through_squid_with_basic_auth_the_client_never_gives() {
    if program("curl").is_none() {
        return;
    }
    let Some(squid) = RealProxy::squid_basic_auth(USER, PASSWORD) else {
        return;
    };
    let url = format!("http://{USER}:{PASSWORD}@127.0.0.1:{}", squid.port());
    let (run, ports) = forwarder(&[format!("socks {url}"), format!("http {url}")]);
    // The route as logged: its hop, credentials hidden.
    curl_every_mode(
        &run,
        ports[0],
        ports[1],
        Some(&format!("127.0.0.1:{}", squid.port())),
    );
    // squid saw our credentials on every CONNECT, and the names unresolved.
    let log = squid.access_log();
    let connects: Vec<&str> = log.lines().filter(|l| l.contains("CONNECT")).collect();
    assert_eq!(connects.len(), CURL_MODES.len(), "squid access log:\n{log}");
    for line in &connects {
        assert!(
            line.contains(&format!(" {USER} ")) && line.contains("/200 "),
            "squid authenticated every tunnel: {line}"
        );
    }
    assert!(
        connects
            .iter()
            .filter(|l| l.contains("CONNECT localhost:"))
            .count()
            == 3,
        "the three modes that send a name reached squid with it unresolved:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// 2. OpenSSH
// ---------------------------------------------------------------------------

/// An sshd on 127.0.0.1 with a fresh host key, accepting a fresh client key
/// for the current user. Killed by its PID when dropped.
struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
    key: PathBuf,
    user: String,
}

fn current_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; it is
    // read at once, on this thread.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        assert!(!pw.is_null(), "no passwd entry for the current user");
        std::ffi::CStr::from_ptr((*pw).pw_name)
            .to_string_lossy()
            .into_owned()
    }
}

fn keygen(keygen: &Path, path: &Path) {
    let ran = run(
        Command::new(keygen)
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "client-named-test",
                "-f",
            ])
            .arg(path),
        None,
        Duration::from_secs(30),
        "ssh-keygen",
    );
    assert!(ran.status.success(), "ssh-keygen: {}", ran.stderr);
}

impl Sshd {
    fn start() -> Option<Sshd> {
        let sshd = program("sshd")?;
        let ssh_keygen = program("ssh-keygen")?;
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            // sshd's privilege separation directory, made by the package's
            // service at boot; without it a root sshd refuses to start.
            let privsep = Path::new("/run/sshd");
            if !privsep.is_dir() {
                fs::create_dir_all(privsep).expect("create /run/sshd");
            }
        }
        let dir = unique_dir("sshd");
        let host_key = dir.join("host_ed25519");
        let key = dir.join("client_ed25519");
        keygen(&ssh_keygen, &host_key);
        keygen(&ssh_keygen, &key);
        fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys"))
            .expect("authorized_keys");
        let config = dir.join("sshd_config");
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1\n\
                     Port {port}\n\
                     HostKey {host}\n\
                     AuthorizedKeysFile {dir}/authorized_keys\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     PidFile {dir}/sshd.pid\n\
                     LogLevel VERBOSE\n",
                    host = host_key.display(),
                    dir = dir.display()
                ),
            )
            .expect("write sshd_config");
            let stderr_path = dir.join("sshd.stderr");
            let mut child = Command::new(&sshd)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .args(["-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&stderr_path).expect("sshd stderr"))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", sshd.display()));
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    failures.push(format!(
                        "port {port}: exited {status}: {}",
                        fs::read_to_string(&stderr_path).unwrap_or_default()
                    ));
                    break;
                }
                if is_listening(addr) {
                    return Some(Sshd {
                        child,
                        port,
                        dir,
                        key,
                        user: current_user(),
                    });
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "sshd not listening on {addr} after 20 s: {}",
                        fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        panic!(
            "sshd (run as {}) did not start:\n{}",
            current_user(),
            failures.join("\n")
        );
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.stderr")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // SIGKILL to this child's PID only; its per-connection children
        // have ended with their sessions.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- sshd on port {} ---\n{}", self.port, self.log());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs ssh through `nc -X {mode} -x 127.0.0.1:{entry}`: 1 MiB up (hashed by
/// the remote `sha256sum`) and 1 MiB of zeros down, both checked.
fn ssh_through(run_: &Running, sshd: &Sshd, nc: &Path, mode: &str, entry: u16) {
    let Some(ssh) = program("ssh") else { return };
    const LEN: usize = MIB as usize;
    let up = payload(0x55_4800 + entry as u64, LEN);
    let want_up = hex(&sha(&up));
    let what = format!("ssh via nc -X {mode} -x 127.0.0.1:{entry}");
    let ran = run(
        Command::new(ssh)
            .args(["-F", "/dev/null", "-o"])
            .arg(format!(
                "ProxyCommand={} -X {mode} -x 127.0.0.1:{entry} %h %p",
                nc.display()
            ))
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
                "-i",
            ])
            .arg(&sshd.key)
            .args(["-p", &sshd.port.to_string()])
            .arg(format!("{}@127.0.0.1", sshd.user))
            .arg(format!("sha256sum; head -c {LEN} /dev/zero")),
        Some(up),
        CLIENT_TIMEOUT,
        &what,
    );
    assert!(
        ran.status.success(),
        "{what}: {} {}\n--- sshd ---\n{}\n{}",
        ran.status,
        ran.stderr,
        sshd.log(),
        run_.diagnostics()
    );
    let text_end = ran
        .stdout
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or_else(|| panic!("{what}: no sha256sum line"));
    let line = String::from_utf8_lossy(&ran.stdout[..text_end]).into_owned();
    assert_eq!(
        line.split_whitespace().next(),
        Some(want_up.as_str()),
        "{what}: what sshd's side hashed from 1 MiB sent up"
    );
    let down = &ran.stdout[text_end + 1..];
    assert_eq!(down.len(), LEN, "{what}: bytes down");
    assert!(down.iter().all(|&b| b == 0), "{what}: zeros down");
    wait_open(run_, entry, &format!("127.0.0.1:{}", sshd.port));
}

fn ssh_both_listeners(proxy: Option<&str>) {
    let Some(nc) = openbsd_nc() else { return };
    if program("ssh").is_none() {
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    let suffix = proxy.map(|p| format!(" {p}")).unwrap_or_default();
    let (run, ports) = forwarder(&[format!("socks{suffix}"), format!("http{suffix}")]);
    ssh_through(&run, &sshd, &nc, "5", ports[0]);
    ssh_through(&run, &sshd, &nc, "connect", ports[1]);
    // nc -X 5 sends the destination as given (127.0.0.1, an IPv4 address);
    // -X connect sends `CONNECT 127.0.0.1:PORT HTTP/1.0`.
    run.wait_log("HTTP/1.0 CONNECT request for 127.0.0.1:", START_TIMEOUT);
}

#[test]
fn openssh_through_nc_x5_and_x_connect_direct() {
    ssh_both_listeners(None);
}

#[test]
fn openssh_through_both_listeners_via_squid_basic_auth() {
    if openbsd_nc().is_none() {
        return;
    }
    let Some(squid) = RealProxy::squid_basic_auth(USER, PASSWORD) else {
        return;
    };
    ssh_both_listeners(Some(&format!(
        "http://{USER}:{PASSWORD}@127.0.0.1:{}",
        squid.port()
    )));
    let log = squid.access_log();
    let ok = log
        .lines()
        .filter(|l| l.contains("CONNECT 127.0.0.1:") && l.contains(&format!(" {USER} ")))
        .count();
    assert_eq!(ok, 2, "squid carried both ssh sessions:\n{log}");
}

// ---------------------------------------------------------------------------
// 3. Every reply code, byte for byte
// ---------------------------------------------------------------------------

/// A fake proxy that refuses every CONNECT with `403 Forbidden`.
fn refusing_proxy() -> FakeProxy {
    FakeProxy::scripted(Script::answer(
        &b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..],
        Then::Close,
    ))
}

#[test]
fn socks5_reply_codes_byte_exact() {
    let echo = echo_backend();
    let hole = BlackHole::new();
    let proxy = refusing_proxy();
    let (run, ports) = forwarder(&[
        "socks connect-timeout=1s allow=127.0.0.1,nosuch.invalid".into(),
        format!("socks 127.0.0.1 {}", proxy.port()),
    ]);
    let (direct, proxied) = (ports[0], ports[1]);

    // 0: success, then the tunnel carries data.
    let (mut s, reply) = socks5(direct, 1, &Dest::V4([127, 0, 0, 1], echo.port()));
    assert_eq!(reply, reply5(0), "success");
    s.write_all(b"ping through socks5").expect("send");
    assert_eq!(read_n(&mut s, 19, "echo"), b"ping through socks5");
    drop(s);

    // 2: not allowed by `allow`.
    socks5_refused(direct, &Dest::V4([127, 0, 0, 3], 80), 2);
    run.wait_log(
        "-> 127.0.0.3:80: failed: 127.0.0.3:80 is not allowed by this entry",
        START_TIMEOUT,
    );

    // 5: connection refused.
    let closed = closed_port();
    socks5_refused(direct, &Dest::V4([127, 0, 0, 1], closed), 5);
    let line = run.wait_log(&format!("-> 127.0.0.1:{closed}: failed: "), START_TIMEOUT);
    assert!(line.contains("Connection refused"), "{line}");

    // 4: timeout (a black hole, connect-timeout=1s) and name not found.
    let start = Instant::now();
    socks5_refused(direct, &Dest::V4([127, 0, 0, 1], hole.addr.port()), 4);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "timeout reply after {took:?}"
    );
    socks5_refused(direct, &Dest::Name("nosuch.invalid", 80), 4);

    // 1: a proxy's refusal.
    socks5_refused(proxied, &Dest::V4([127, 0, 0, 1], echo.port()), 1);
    let line = run.wait_log(
        &format!(" via 127.0.0.1:{}: failed: ", proxy.port()),
        START_TIMEOUT,
    );
    assert!(
        line.contains("403 Forbidden"),
        "the proxy's status line quoted: {line}"
    );

    // 7: BIND and UDP ASSOCIATE.
    for cmd in [2u8, 3] {
        let mut request = GREETING.to_vec();
        request.extend_from_slice(&socks5_request(cmd, &Dest::V4([127, 0, 0, 1], echo.port())));
        let got = one_shot(direct, &request, &format!("SOCKS 5 command {cmd}"));
        let mut want = METHOD_OK.to_vec();
        want.extend_from_slice(&reply5(7));
        assert_eq!(got, want, "SOCKS 5 command {cmd}");
    }

    // 8: an address type other than 1, 3, 4.
    let mut request = GREETING.to_vec();
    request.extend_from_slice(&[5, 1, 0, 9, 127, 0, 0, 1, 0, 80]);
    let got = one_shot(direct, &request, "SOCKS 5 address type 9");
    let mut want = METHOD_OK.to_vec();
    want.extend_from_slice(&reply5(8));
    assert_eq!(got, want, "SOCKS 5 address type 9");

    // 8 also for a destination that is not a valid name (empty).
    let got = one_shot(
        direct,
        &[5, 1, 0, 5, 1, 0, 3, 0, 0, 80],
        "SOCKS 5 empty domain name",
    );
    let mut want = METHOD_OK.to_vec();
    want.extend_from_slice(&reply5(8));
    assert_eq!(got, want, "SOCKS 5 empty domain name");

    // A greeting offering several methods, no-auth last: no-auth chosen.
    let mut request = vec![5, 3, 2, 1, 0];
    request.extend_from_slice(&socks5_request(1, &Dest::V4([127, 0, 0, 1], echo.port())));
    let mut s = connect_port(direct);
    s.write_all(&request).expect("send");
    let mut want = METHOD_OK.to_vec();
    want.extend_from_slice(&reply5(0));
    assert_eq!(read_n(&mut s, 12, "three methods"), want);
    drop(s);

    // Not SOCKS at all (an HTTP request on a socks port): closed unanswered.
    let got = one_shot(direct, b"GET / HTTP/1.1\r\n\r\n", "HTTP on a socks port");
    assert_eq!(got, b"", "a socks entry does not answer what is not SOCKS");

    // 05 FF: a greeting that offers only username/password.
    let got = one_shot(direct, &[5, 1, 2], "SOCKS 5 greeting without no-auth");
    assert_eq!(got, vec![5, 0xFF], "no acceptable method");

    // None of the refusals reached the echo backend; the two successes did.
    wait_until(IO_TIMEOUT, || echo.accepted() >= 2);
    assert_eq!(echo.accepted(), 2, "connections the echo backend accepted");
    // A `failed: client: ...` line for each bad request.
    run.wait_log_count(": failed: client: ", 6, START_TIMEOUT);
    run.wait_log("SOCKS 5 address type 9 not supported", START_TIMEOUT);
}

#[test]
fn socks4_and_4a_replies_byte_exact() {
    let echo = echo_backend();
    let proxy = refusing_proxy();
    let (_run, ports) = forwarder(&[
        "socks connect-timeout=2s allow=127.0.0.1,localhost".into(),
        format!("socks 127.0.0.1 {}", proxy.port()),
    ]);
    let (direct, proxied) = (ports[0], ports[1]);

    // 90 (0x5A): granted, then data.
    let mut s = connect_port(direct);
    s.write_all(&socks4_request([127, 0, 0, 1], echo.port()))
        .expect("send");
    assert_eq!(read_n(&mut s, 8, "SOCKS 4 reply"), SOCKS4_OK);
    s.write_all(b"four").expect("send");
    assert_eq!(read_n(&mut s, 4, "echo"), b"four");
    drop(s);
    let mut s = connect_port(direct);
    s.write_all(&socks4a_request("localhost", echo.port()))
        .expect("send");
    assert_eq!(read_n(&mut s, 8, "SOCKS 4a reply"), SOCKS4_OK);
    s.write_all(b"four-a").expect("send");
    assert_eq!(read_n(&mut s, 6, "echo"), b"four-a");
    drop(s);

    // 91 (0x5B): refused, not allowed, a proxy's refusal, BIND.
    let closed = closed_port();
    let cases: Vec<(u16, Vec<u8>, &str)> = vec![
        (direct, socks4_request([127, 0, 0, 1], closed), "refused"),
        (direct, socks4_request([127, 0, 0, 9], 80), "not allowed"),
        (
            direct,
            socks4a_request("other.invalid", 80),
            "4a not allowed",
        ),
        (
            proxied,
            socks4_request([127, 0, 0, 1], echo.port()),
            "proxy 403",
        ),
        (
            direct,
            {
                let mut r = socks4_request([127, 0, 0, 1], echo.port());
                r[1] = 2;
                r
            },
            "BIND",
        ),
    ];
    for (port, request, what) in cases {
        let got = one_shot(port, &request, what);
        assert_eq!(got, SOCKS4_REJECTED, "SOCKS 4: {what}");
    }
    assert_eq!(
        echo.accepted(),
        2,
        "only the granted requests reached the echo backend"
    );
}

#[test]
fn http_connect_answers_200_403_502_504_400_405() {
    let echo = echo_backend();
    let hole = BlackHole::new();
    let proxy = refusing_proxy();
    let (run, ports) = forwarder(&[
        "http connect-timeout=1s allow=127.0.0.1,nosuch.invalid".into(),
        format!("http 127.0.0.1 {}", proxy.port()),
    ]);
    let (direct, proxied) = (ports[0], ports[1]);

    // 200, exactly, and nothing before the tunnel's bytes.
    let mut s = connect_port(direct);
    s.write_all(&connect_head(&format!("127.0.0.1:{}", echo.port())))
        .expect("send");
    assert_eq!(read_n(&mut s, ESTABLISHED.len(), "200"), ESTABLISHED);
    s.write_all(b"ping").expect("send");
    assert_eq!(read_n(&mut s, 4, "echo"), b"ping");
    drop(s);

    // 403: not allowed.
    let a = http_refused(
        direct,
        &connect_head("127.0.0.3:443"),
        "HTTP/1.1 403 Forbidden",
        "not allowed",
    );
    assert!(a.body.contains("127.0.0.3:443"), "403 body: {:?}", a.body);

    // 502: refused.
    let closed = closed_port();
    let a = http_refused(
        direct,
        &connect_head(&format!("127.0.0.1:{closed}")),
        "HTTP/1.1 502 Bad Gateway",
        "refused",
    );
    assert!(
        a.body.contains(&format!("127.0.0.1:{closed}")),
        "{:?}",
        a.body
    );

    // 502: name not found (only when this host's resolver answers at once;
    // a resolver that times out makes it a 504, which is right too).
    let t = Instant::now();
    let resolves = ("nosuch.invalid", 80).to_socket_addrs().is_ok();
    if !resolves && t.elapsed() < Duration::from_millis(500) {
        let a = http_refused(
            direct,
            &connect_head("nosuch.invalid:80"),
            "HTTP/1.1 502 Bad Gateway",
            "not found",
        );
        assert!(a.body.contains("nosuch.invalid"), "{:?}", a.body);
    } else {
        eprintln!(
            "note: this resolver does not fail nosuch.invalid at once; not-found 502 not checked"
        );
    }

    // 502: a proxy's refusal, its status line quoted.
    let a = http_refused(
        proxied,
        &connect_head(&format!("127.0.0.1:{}", echo.port())),
        "HTTP/1.1 502 Bad Gateway",
        "proxy 403",
    );
    assert!(
        a.body.contains("HTTP/1.1 403 Forbidden"),
        "the proxy's status line quoted: {:?}",
        a.body
    );

    // 504: connect-timeout=1s on a black hole.
    let t = Instant::now();
    let a = http_refused(
        direct,
        &connect_head(&hole.addr.to_string()),
        "HTTP/1.1 504 Gateway Timeout",
        "timeout",
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "504 after {took:?}: {:?}",
        a.body
    );

    // 400: malformed requests (no port, port 0, a bad host, garbage).
    for (request, what) in [
        (&b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n"[..], "no port"),
        (&b"CONNECT 127.0.0.1:0 HTTP/1.1\r\n\r\n"[..], "port 0"),
        (&b"CONNECT bad_host!:80 HTTP/1.1\r\n\r\n"[..], "bad host"),
        (
            &b"CONNECT http://127.0.0.1:80/ HTTP/1.1\r\n\r\n"[..],
            "a URL",
        ),
        (&b"\x01\x02garbage\r\n\r\n"[..], "garbage"),
        (&b"CONNECT 127.0.0.1:80 HTTP/2.0\r\n\r\n"[..], "HTTP/2.0"),
        (&[5u8, 1, 0][..], "a SOCKS 5 greeting on an http port"),
    ] {
        http_refused(direct, request, "HTTP/1.1 400 Bad Request", what);
    }

    // 405 with Allow: CONNECT for any other method.
    for method in ["GET", "POST", "connect"] {
        let request = format!(
            "{method} http://127.0.0.1:{}/ HTTP/1.1\r\nHost: x\r\n\r\n",
            echo.port()
        );
        let a = http_refused(
            direct,
            request.as_bytes(),
            "HTTP/1.1 405 Method Not Allowed",
            method,
        );
        a.assert_header("Allow: CONNECT", method);
    }

    wait_until(IO_TIMEOUT, || echo.accepted() >= 1);

    assert_eq!(echo.accepted(), 1, "only the 200 reached the echo backend");
    assert_eq!(
        proxy.accepted(),
        1,
        "one CONNECT reached the refusing proxy"
    );
    run.wait_log(
        "-> 127.0.0.3:443: failed: 127.0.0.3:443 is not allowed by this entry",
        START_TIMEOUT,
    );
    let line = run.wait_log(&format!("-> 127.0.0.1:{closed}: failed: "), START_TIMEOUT);
    assert!(line.contains("Connection refused"), "{line}");
    // A `failed: client: ...` line for each bad request.
    run.wait_log_count(": failed: client: ", 10, START_TIMEOUT);
}

// ---------------------------------------------------------------------------
// 4. Optimistic data
// ---------------------------------------------------------------------------

/// Sends `request` and `data` in one write through `port` (leading to a
/// recording echo) and checks: the reply `reply` comes first, then exactly
/// `data` echoed; the backend received exactly `data`.
fn optimistic(port: u16, request: &[u8], reply: &[u8], rx: &mpsc::Receiver<Vec<u8>>, seed: u64) {
    let data = payload(seed, 3000);
    let mut all = request.to_vec();
    all.extend_from_slice(&data);
    let mut s = connect_port(port);
    s.write_all(&all).expect("one write: request and data");
    let got = read_n(&mut s, reply.len() + data.len(), "reply and echo");
    assert_eq!(&got[..reply.len()], reply, "the success reply comes first");
    assert!(
        got[reply.len()..] == data[..],
        "then exactly the data, echoed"
    );
    s.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_all(&mut s, "after the echo"), b"", "nothing more");
    let received = recv_within(rx, IO_TIMEOUT, "recording echo");
    assert_eq!(received.len(), data.len(), "bytes the destination received");
    assert!(
        received == data,
        "the destination received exactly the data"
    );
}

#[test]
fn optimistic_data_in_the_request_write_arrives_after_the_reply_direct() {
    let (echo, rx) = recording_echo();
    let (_run, ports) = forwarder(&["socks".into(), "http".into()]);
    let dest = Dest::V4([127, 0, 0, 1], echo.port());
    let mut request = GREETING.to_vec();
    request.extend_from_slice(&socks5_request(1, &dest));
    let mut reply = METHOD_OK.to_vec();
    reply.extend_from_slice(&reply5(0));
    optimistic(ports[0], &request, &reply, &rx, 41);
    let head = connect_head(&format!("127.0.0.1:{}", echo.port()));
    optimistic(ports[1], &head, ESTABLISHED, &rx, 42);
    let request = socks4_request([127, 0, 0, 1], echo.port());
    optimistic(ports[0], &request, SOCKS4_OK, &rx, 43);
}

/// Through a fake proxy that waits before answering: no client byte may
/// reach it before its 200; bytes it sends right behind its 200 reach the
/// client after our success reply; the client's headers stay with us.
#[test]
fn optimistic_data_through_a_proxy_waits_for_its_200() {
    const EARLY: &[u8] = b"BYTES-RIGHT-BEHIND-THE-200";
    let (echo, rx) = recording_echo();
    let (clean_tx, clean_rx) = mpsc::channel();
    let clean_tx = Mutex::new(clean_tx);
    let proxy = FakeProxy::spawn(move |mut conn| {
        if conn.read_head().is_err() {
            return;
        }
        // Give a forwarder that sends early the time to do it; nothing may
        // have arrived behind the head when we look.
        thread::sleep(Duration::from_millis(300));
        let clean = conn.nothing_pending().unwrap_or(false);
        let _ = clean_tx.lock().expect("channel").send(clean);
        let mut answer = b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec();
        answer.extend_from_slice(EARLY);
        if conn.send(&answer).is_ok() {
            let _ = conn.relay_to_target();
        }
    });
    let (_run, ports) = forwarder(&[
        format!("socks 127.0.0.1 {}", proxy.port()),
        format!("http 127.0.0.1 {}", proxy.port()),
    ]);
    let authority = format!("127.0.0.1:{}", echo.port());

    // SOCKS 5: greeting, request and data in one write.
    let mut request = GREETING.to_vec();
    request.extend_from_slice(&socks5_request(1, &Dest::V4([127, 0, 0, 1], echo.port())));
    let mut reply = METHOD_OK.to_vec();
    reply.extend_from_slice(&reply5(0));
    reply.extend_from_slice(EARLY);
    optimistic(ports[0], &request, &reply, &rx, 51);
    assert!(
        recv_within(&clean_rx, IO_TIMEOUT, "proxy check"),
        "SOCKS 5: a client byte reached the proxy before its 200"
    );

    // HTTP: head (with the client's own Proxy-Authorization) and data.
    let head = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\
         Proxy-Authorization: Basic Y2xpZW50OnNlY3JldA==\r\nX-Client-Header: mine\r\n\r\n"
    );
    let mut reply = ESTABLISHED.to_vec();
    reply.extend_from_slice(EARLY);
    optimistic(ports[1], head.as_bytes(), &reply, &rx, 52);
    assert!(
        recv_within(&clean_rx, IO_TIMEOUT, "proxy check"),
        "HTTP: a client byte reached the proxy before its 200"
    );

    let heads = proxy.wait_heads(2, IO_TIMEOUT);
    for head in &heads {
        let head = String::from_utf8_lossy(head);
        assert!(
            head.starts_with(&format!("CONNECT {authority} HTTP/1.1\r\n")),
            "our CONNECT: {head:?}"
        );
        assert!(
            !head.contains("Y2xpZW50OnNlY3JldA==")
                && !head.contains("Proxy-Authorization")
                && !head.contains("X-Client-Header"),
            "the client's headers are never passed on: {head:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 5. Slow and silent clients
// ---------------------------------------------------------------------------

/// Writes `bytes` one per write, `gap` apart.
fn dribble(s: &mut TcpStream, bytes: &[u8], gap: Duration) {
    for b in bytes {
        s.write_all(std::slice::from_ref(b)).expect("dribble");
        thread::sleep(gap);
    }
}

#[test]
fn a_request_dribbled_a_byte_every_20ms_works() {
    let echo = echo_backend();
    let (_run, ports) = forwarder(&["socks".into(), "http".into()]);
    let gap = Duration::from_millis(20);

    let mut s = connect_port(ports[0]);
    dribble(&mut s, GREETING, gap);
    assert_eq!(read_n(&mut s, 2, "method selection"), METHOD_OK);
    dribble(
        &mut s,
        &socks5_request(1, &Dest::Name("localhost", echo.port())),
        gap,
    );
    assert_eq!(read_n(&mut s, 10, "reply"), reply5(0));
    s.write_all(b"slow socks").expect("send");
    assert_eq!(read_n(&mut s, 10, "echo"), b"slow socks");
    drop(s);

    let mut s = connect_port(ports[1]);
    dribble(
        &mut s,
        &connect_head(&format!("127.0.0.1:{}", echo.port())),
        gap,
    );
    assert_eq!(read_n(&mut s, ESTABLISHED.len(), "200"), ESTABLISHED);
    s.write_all(b"slow http").expect("send");
    assert_eq!(read_n(&mut s, 9, "echo"), b"slow http");
    drop(s);

    let mut s = connect_port(ports[0]);
    dribble(&mut s, &socks4a_request("localhost", echo.port()), gap);
    assert_eq!(read_n(&mut s, 8, "reply"), SOCKS4_OK);
    drop(s);
    wait_until(IO_TIMEOUT, || echo.accepted() >= 3);
    assert_eq!(echo.accepted(), 3);
}

#[test]
fn a_client_that_does_not_finish_its_request_is_closed_after_connect_timeout() {
    let echo = echo_backend();
    let (run, ports) = forwarder(&[
        "socks connect-timeout=1s".into(),
        "http connect-timeout=1s".into(),
    ]);
    let cases: Vec<(u16, Vec<u8>, &[u8], &str)> = vec![
        (ports[0], Vec::new(), b"", "socks, nothing sent"),
        (ports[1], Vec::new(), b"", "http, nothing sent"),
        (
            ports[0],
            GREETING.to_vec(),
            METHOD_OK,
            "socks, greeting only",
        ),
        (
            ports[0],
            vec![5, 1, 0, 5, 1, 0, 1, 127],
            METHOD_OK,
            "socks, half a request",
        ),
        (
            ports[0],
            vec![4, 1, 0, 80, 127, 0, 0, 1, b'u'],
            b"",
            "socks 4, no user id end",
        ),
        (
            ports[1],
            format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\nHost: x\r\n", echo.port()).into_bytes(),
            b"",
            "http, no blank line",
        ),
    ];
    // All at once, so the test takes one timeout, not six.
    let handles: Vec<_> = cases
        .into_iter()
        .map(|(port, sent, want, what)| {
            thread::spawn(move || {
                let mut s = connect_port(port);
                let start = Instant::now();
                s.write_all(&sent).expect("send");
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let got = read_all(&mut s, what);
                let took = start.elapsed();
                (what, got, want, took)
            })
        })
        .collect();
    for h in handles {
        let (what, got, want, took) = h.join().expect("client thread");
        assert_eq!(got, want, "{what}: bytes before the close");
        assert!(
            took >= Duration::from_millis(500) && took <= Duration::from_secs(3),
            "{what}: closed after {took:?}, want 0.5–3 s (connect-timeout=1s)\n{}",
            run.diagnostics()
        );
    }
    assert_eq!(echo.accepted(), 0, "no request was complete");
    run.wait_log_count(": failed: ", 6, START_TIMEOUT);
}

// ---------------------------------------------------------------------------
// 6. allow
// ---------------------------------------------------------------------------

/// Port-range boundaries of `127.0.0.1:LO-HI`, for SOCKS 5, SOCKS 4 and
/// HTTP: in range works, out of range is refused with the right code and no
/// connection is even attempted.
#[test]
fn allow_port_ranges_refuse_before_any_connection() {
    let inside = echo_backend();
    let lo = inside.port();
    let hi = lo.saturating_add(10);
    let outside = loop {
        let b = echo_backend();
        let p = b.port();
        if p.saturating_add(1) < lo || p > hi.saturating_add(1) {
            break b;
        }
    };
    let allow = format!("allow=.example.test:80,10.0.0.0/8,127.0.0.1:{lo}-{hi}");
    let (run, ports) = forwarder(&[format!("socks {allow}"), format!("http {allow}")]);
    let (socks, http) = (ports[0], ports[1]);

    let (mut s, reply) = socks5(socks, 1, &Dest::V4([127, 0, 0, 1], lo));
    assert_eq!(reply, reply5(0), "LO itself is in the range");
    s.write_all(b"in").expect("send");
    assert_eq!(read_n(&mut s, 2, "echo"), b"in");
    drop(s);

    for port in [lo - 1, hi + 1, outside.port(), 1, 65535] {
        socks5_refused(socks, &Dest::V4([127, 0, 0, 1], port), 2);
        let got = one_shot(socks, &socks4_request([127, 0, 0, 1], port), "socks4");
        assert_eq!(got, SOCKS4_REJECTED, "SOCKS 4 to port {port}");
        http_refused(
            http,
            &connect_head(&format!("127.0.0.1:{port}")),
            "HTTP/1.1 403 Forbidden",
            &format!("port {port}"),
        );
        run.wait_log(
            &format!("failed: 127.0.0.1:{port} is not allowed by this entry"),
            START_TIMEOUT,
        );
    }
    // HI is allowed: whatever it leads to, the answer is not "not allowed".
    let mut s = connect_port(socks);
    s.write_all(GREETING).expect("send");
    s.write_all(&socks5_request(1, &Dest::V4([127, 0, 0, 1], hi)))
        .expect("send");
    let got = read_n(&mut s, 12, "reply for HI");
    assert_ne!(got[3], 2, "HI is in the range: {got:02x?}");
    drop(s);

    let mut s = connect_port(http);
    s.write_all(&connect_head(&format!("127.0.0.1:{lo}")))
        .expect("send");
    assert_eq!(read_n(&mut s, ESTABLISHED.len(), "200"), ESTABLISHED);
    drop(s);

    wait_until(IO_TIMEOUT, || inside.accepted() >= 2);

    assert_eq!(inside.accepted(), 2, "the two tunnels in range");
    assert_eq!(
        outside.accepted(),
        0,
        "a destination outside allow is never connected to"
    );
}

/// Names, domains, CIDRs and IPv6 patterns, through a fake proxy that
/// records what reached it (names unresolved) and answers 200.
#[test]
fn allow_names_domains_cidrs_and_ipv6_through_a_proxy() {
    let proxy = FakeProxy::scripted(Script::answer(
        &b"HTTP/1.1 200 Connection established\r\n\r\n"[..],
        Then::Hold(Duration::from_secs(10)),
    ));
    let allow = "allow=.example.test:80,git.corp.test,10.0.0.0/8,[fd00::/8]:22";
    let (run, ports) = forwarder(&[
        format!("socks 127.0.0.1 {} {allow}", proxy.port()),
        format!("http 127.0.0.1 {} {allow}", proxy.port()),
    ]);
    let (socks, http) = (ports[0], ports[1]);
    let fd00_1: Ipv6Addr = "fd00::1".parse().expect("ip");
    let fe80_1: Ipv6Addr = "fe80::1".parse().expect("ip");
    let allowed: Vec<(Dest, &str)> = vec![
        (Dest::Name("example.test", 80), "example.test:80"),
        (Dest::Name("a.b.example.test", 80), "a.b.example.test:80"),
        (Dest::Name("git.corp.test", 22), "git.corp.test:22"),
        (Dest::Name("git.corp.test", 443), "git.corp.test:443"),
        (Dest::V4([10, 255, 0, 1], 9), "10.255.0.1:9"),
        (Dest::Name("10.1.2.3", 9), "10.1.2.3:9"),
        (Dest::V6(fd00_1, 22), "[fd00::1]:22"),
    ];
    let refused: Vec<(Dest, &str)> = vec![
        (Dest::Name("example.test", 81), "example.test:81"),
        (Dest::Name("badexample.test", 80), "badexample.test:80"),
        (Dest::Name("test", 80), "test:80"),
        (Dest::Name("x.git.corp.test", 22), "x.git.corp.test:22"),
        (Dest::V4([11, 0, 0, 1], 9), "11.0.0.1:9"),
        (Dest::V4([9, 255, 255, 255], 9), "9.255.255.255:9"),
        (Dest::V6(fd00_1, 23), "[fd00::1]:23"),
        (Dest::V6(fe80_1, 22), "[fe80::1]:22"),
    ];
    let mut expected_heads = 0;
    for (dest, authority) in &allowed {
        let (s, reply) = socks5(socks, 1, dest);
        assert_eq!(reply, reply5(0), "SOCKS 5 to {authority} is allowed");
        drop(s);
        expected_heads += 1;
        let heads = proxy.wait_heads(expected_heads, IO_TIMEOUT);
        let head = String::from_utf8_lossy(&heads[expected_heads - 1]).into_owned();
        assert!(
            head.starts_with(&format!("CONNECT {authority} HTTP/1.1\r\n")),
            "the proxy got {authority} as the client named it: {head:?}"
        );

        let mut s = connect_port(http);
        s.write_all(&connect_head(authority)).expect("send");
        assert_eq!(
            read_n(&mut s, ESTABLISHED.len(), authority),
            ESTABLISHED,
            "HTTP CONNECT {authority} is allowed"
        );
        drop(s);
        expected_heads += 1;
        proxy.wait_heads(expected_heads, IO_TIMEOUT);
        wait_open(&run, http, authority);
    }
    for (dest, authority) in &refused {
        socks5_refused(socks, dest, 2);
        http_refused(
            http,
            &connect_head(authority),
            "HTTP/1.1 403 Forbidden",
            authority,
        );
        run.wait_log(
            &format!(
                "-> {authority} via 127.0.0.1:{}: failed: {authority} is not allowed by this entry",
                proxy.port()
            ),
            START_TIMEOUT,
        );
    }
    assert_eq!(
        proxy.heads().len(),
        expected_heads,
        "no refused destination reached the proxy"
    );
    assert_eq!(proxy.accepted(), expected_heads, "connections to the proxy");
}

/// A name pattern does not match an IP destination, and an IP pattern does
/// not match a name (names are not resolved to be matched), direct.
#[test]
fn allow_names_do_not_match_ips_and_ips_do_not_match_names() {
    let echo = echo_backend();
    let p = echo.port();
    let (_run, ports) = forwarder(&[
        format!("socks allow=localhost:{p}"),
        "socks allow=127.0.0.0/8".to_string(),
        format!("http allow=localhost:{p}"),
    ]);
    let (by_name, by_ip, http_by_name) = (ports[0], ports[1], ports[2]);

    // allow=localhost: the name works, the address does not.
    let (s, reply) = socks5(by_name, 1, &Dest::Name("localhost", p));
    assert_eq!(reply, reply5(0), "localhost by name");
    drop(s);
    socks5_refused(by_name, &Dest::V4([127, 0, 0, 1], p), 2);
    let got = one_shot(by_name, &socks4_request([127, 0, 0, 1], p), "socks4 by ip");
    assert_eq!(got, SOCKS4_REJECTED);
    http_refused(
        http_by_name,
        &connect_head(&format!("127.0.0.1:{p}")),
        "HTTP/1.1 403 Forbidden",
        "127.0.0.1 against a name pattern",
    );
    let mut s = connect_port(http_by_name);
    s.write_all(&connect_head(&format!("localhost:{p}")))
        .expect("send");
    assert_eq!(read_n(&mut s, ESTABLISHED.len(), "200"), ESTABLISHED);
    drop(s);

    // allow=127.0.0.0/8: the address works, a name for it does not; a name
    // that is an IP literal (curl's --socks5-hostname 127.0.0.1) is an IP.
    let (s, reply) = socks5(by_ip, 1, &Dest::V4([127, 0, 0, 1], p));
    assert_eq!(reply, reply5(0), "127.0.0.1 by address");
    drop(s);
    let (s, reply) = socks5(by_ip, 1, &Dest::Name("127.0.0.1", p));
    assert_eq!(reply, reply5(0), "the name 127.0.0.1 is the address");
    drop(s);
    socks5_refused(by_ip, &Dest::Name("localhost", p), 2);
    let got = one_shot(by_ip, &socks4a_request("localhost", p), "socks4a by name");
    assert_eq!(got, SOCKS4_REJECTED);

    // The backend's accept thread may lag the replies: wait for it.
    wait_until(IO_TIMEOUT, || echo.accepted() >= 4);
    assert_eq!(echo.accepted(), 4, "only the allowed tunnels connected");
}

// ---------------------------------------------------------------------------
// More of "nothing lost, nothing early"
// ---------------------------------------------------------------------------

/// A fake proxy that reads the CONNECT head, waits `delay`, reports whether
/// any byte had arrived behind the head, answers 200 and relays to the
/// target.
fn delaying_proxy(delay: Duration) -> (FakeProxy, mpsc::Receiver<bool>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let proxy = FakeProxy::spawn(move |mut conn| {
        if conn.read_head().is_err() {
            return;
        }
        thread::sleep(delay);
        let clean = conn.nothing_pending().unwrap_or(false);
        let _ = tx.lock().expect("channel").send(clean);
        if conn
            .send(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_ok()
        {
            let _ = conn.relay_to_target();
        }
    });
    (proxy, rx)
}

/// Request and `len` bytes sent at once (one writer thread, as fast as the
/// socket takes them) while the proxy has not answered yet, then the
/// client's FIN: everything arrives, once, in order, after the reply.
fn early_bulk_then_fin(port: u16, request: Vec<u8>, reply: Vec<u8>, len: usize, seed: u64) {
    let mut s = connect_port(port);
    let mut writer = s.try_clone().expect("clone");
    let sender = thread::spawn(move || {
        let mut all = request;
        all.extend_from_slice(&payload(seed, len));
        writer.write_all(&all)?;
        writer.shutdown(Shutdown::Write)
    });
    let got = read_n(&mut s, reply.len(), "reply");
    assert_eq!(got, reply, "the success reply first");
    let mut check = StreamCheck::new(seed);
    check
        .read_to_eof(&mut s)
        .unwrap_or_else(|e| panic!("echo of the early bytes: {e}"));
    sender
        .join()
        .expect("sender")
        .unwrap_or_else(|e| panic!("send: {e}"));
    check.assert_complete(len as u64, "early bytes echoed");
}

#[test]
fn early_bulk_data_and_a_fin_before_the_tunnel_opens_are_all_delivered() {
    let echo = echo_backend();
    let (proxy, clean) = delaying_proxy(Duration::from_millis(300));
    let (_run, ports) = forwarder(&[
        format!("socks 127.0.0.1 {}", proxy.port()),
        format!("http 127.0.0.1 {}", proxy.port()),
        "socks".into(),
        "http".into(),
    ]);
    let dest = Dest::V4([127, 0, 0, 1], echo.port());
    let mut socks_request = GREETING.to_vec();
    socks_request.extend_from_slice(&socks5_request(1, &dest));
    let mut socks_reply = METHOD_OK.to_vec();
    socks_reply.extend_from_slice(&reply5(0));
    let head = connect_head(&format!("127.0.0.1:{}", echo.port()));
    const LEN: usize = 1024 * 1024;
    early_bulk_then_fin(
        ports[0],
        socks_request.clone(),
        socks_reply.clone(),
        LEN,
        61,
    );
    assert!(
        recv_within(&clean, IO_TIMEOUT, "proxy"),
        "SOCKS: bytes before the 200"
    );
    early_bulk_then_fin(ports[1], head.clone(), ESTABLISHED.to_vec(), LEN, 62);
    assert!(
        recv_within(&clean, IO_TIMEOUT, "proxy"),
        "HTTP: bytes before the 200"
    );
    // Direct, the FIN can come before the TCP connect is done.
    early_bulk_then_fin(
        ports[2],
        socks_request.clone(),
        socks_reply.clone(),
        LEN,
        63,
    );
    early_bulk_then_fin(ports[3], head.clone(), ESTABLISHED.to_vec(), LEN, 64);
    // A small request and FIN in one go, nothing after it.
    early_bulk_then_fin(ports[0], socks_request, socks_reply, 0, 65);
    early_bulk_then_fin(ports[3], head, ESTABLISHED.to_vec(), 0, 66);
}

// ---------------------------------------------------------------------------
// HTTP head limits and forms
// ---------------------------------------------------------------------------

/// A CONNECT head to `authority` padded with one header to exactly `len`
/// bytes through its blank line.
fn padded_head(authority: &str, len: usize) -> Vec<u8> {
    let start = format!("CONNECT {authority} HTTP/1.1\r\nX-Pad: ");
    let end = "\r\n\r\n";
    let pad = len - start.len() - end.len();
    format!("{start}{}{end}", "p".repeat(pad)).into_bytes()
}

#[test]
fn http_head_of_16384_bytes_works_16385_is_400_bare_lf_and_http_1_0_work() {
    let echo = echo_backend();
    let (run, ports) = forwarder(&["http".into()]);
    let authority = format!("127.0.0.1:{}", echo.port());

    let mut s = connect_port(ports[0]);
    s.write_all(&padded_head(&authority, 16384)).expect("send");
    assert_eq!(
        read_n(&mut s, ESTABLISHED.len(), "200 for 16384"),
        ESTABLISHED
    );
    s.write_all(b"big head").expect("send");
    assert_eq!(read_n(&mut s, 8, "echo"), b"big head");
    drop(s);

    http_refused(
        ports[0],
        &padded_head(&authority, 16385),
        "HTTP/1.1 400 Bad Request",
        "a 16385-byte head",
    );

    for (head, what) in [
        (
            format!("CONNECT {authority} HTTP/1.1\nHost: x\n\n"),
            "bare LF",
        ),
        (format!("CONNECT {authority} HTTP/1.0\r\n\r\n"), "HTTP/1.0"),
    ] {
        let mut s = connect_port(ports[0]);
        s.write_all(head.as_bytes()).expect("send");
        assert_eq!(
            read_n(&mut s, ESTABLISHED.len(), what),
            ESTABLISHED,
            "{what}"
        );
        s.write_all(what.as_bytes()).expect("send");
        assert_eq!(read_n(&mut s, what.len(), "echo"), what.as_bytes());
    }
    wait_until(IO_TIMEOUT, || echo.accepted() >= 3);
    assert_eq!(echo.accepted(), 3);
    run.wait_log("HTTP/1.0 CONNECT request for ", START_TIMEOUT);
}

// ---------------------------------------------------------------------------
// A real proxy's refusal
// ---------------------------------------------------------------------------

#[test]
fn squid_refusing_our_credentials_is_socks5_reply_1_and_an_http_502_quoting_it() {
    let Some(squid) = RealProxy::squid_basic_auth(USER, PASSWORD) else {
        return;
    };
    let echo = echo_backend();
    let url = format!("http://{USER}:wrong-password@127.0.0.1:{}", squid.port());
    let (run, ports) = forwarder(&[format!("socks {url}"), format!("http {url}")]);
    let dest = Dest::V4([127, 0, 0, 1], echo.port());
    socks5_refused(ports[0], &dest, 1);
    let got = one_shot(
        ports[0],
        &socks4_request([127, 0, 0, 1], echo.port()),
        "SOCKS 4 through squid with a wrong password",
    );
    assert_eq!(got, SOCKS4_REJECTED);
    let a = http_refused(
        ports[1],
        &connect_head(&format!("127.0.0.1:{}", echo.port())),
        "HTTP/1.1 502 Bad Gateway",
        "squid 407",
    );
    assert!(
        a.body.contains("407 Proxy Authentication Required"),
        "squid's status line quoted: {:?}",
        a.body
    );
    assert_eq!(echo.accepted(), 0, "squid never connected");
    let lines = run.wait_log_count(": failed: ", 3, START_TIMEOUT);
    assert!(
        lines
            .iter()
            .all(|l| l.contains("HTTP/1.1 407 ") && !l.contains("wrong-password")),
        "{lines:#?}"
    );
}

// ---------------------------------------------------------------------------
// Many clients at once, each to its own destination
// ---------------------------------------------------------------------------

/// A backend that first sends its own port (2 bytes, big-endian), then
/// echoes.
fn tagged_echo() -> Backend {
    Backend::spawn(|mut stream| {
        let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
        if stream.write_all(&port.to_be_bytes()).is_err() {
            return;
        }
        let Ok(r) = stream.try_clone() else { return };
        let _ = pump(r, stream);
    })
}

#[test]
fn forty_clients_at_once_each_reach_the_destination_they_named() {
    let backends: Vec<Backend> = (0..4).map(|_| tagged_echo()).collect();
    let (run, ports) = forwarder(&["socks".into(), "http".into()]);
    let (socks, http) = (ports[0], ports[1]);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(40));
    let handles: Vec<_> = (0..40u64)
        .map(|i| {
            let dest = backends[i as usize % 4].port();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let (mut s, reply, want): (TcpStream, Vec<u8>, Vec<u8>) = match i % 4 {
                    0 => {
                        let (s, r) = socks5(socks, 1, &Dest::V4([127, 0, 0, 1], dest));
                        (s, r, reply5(0))
                    }
                    1 => {
                        let (s, r) = socks5(socks, 1, &Dest::Name("localhost", dest));
                        (s, r, reply5(0))
                    }
                    2 => {
                        let mut s = connect_port(socks);
                        s.write_all(&socks4_request([127, 0, 0, 1], dest))
                            .expect("send");
                        let r = read_n(&mut s, 8, "SOCKS 4 reply");
                        (s, r, SOCKS4_OK.to_vec())
                    }
                    _ => {
                        let mut s = connect_port(http);
                        s.write_all(&connect_head(&format!("127.0.0.1:{dest}")))
                            .expect("send");
                        let r = read_n(&mut s, ESTABLISHED.len(), "200");
                        (s, r, ESTABLISHED.to_vec())
                    }
                };
                assert_eq!(reply, want, "client {i}: success reply");
                assert_eq!(
                    read_n(&mut s, 2, "tag"),
                    dest.to_be_bytes(),
                    "client {i} reached the destination it named"
                );
                let data = payload(1000 + i, 64 * 1024);
                let mut w = s.try_clone().expect("clone");
                let sent = data.clone();
                let t = thread::spawn(move || {
                    w.write_all(&sent)?;
                    w.shutdown(Shutdown::Write)
                });
                let mut check = StreamCheck::new(1000 + i);
                check.read_to_eof(&mut s).expect("echo");
                t.join().expect("writer").expect("write");
                check.assert_complete(data.len() as u64, &format!("client {i}"));
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    for b in &backends {
        wait_until(IO_TIMEOUT, || b.accepted() >= 10);
        assert_eq!(b.accepted(), 10, "each backend got its ten clients");
    }
    run.wait_log_count(": closed up=65536 down=65538 ", 40, START_TIMEOUT);
}
