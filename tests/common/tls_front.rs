//! A real TLS front for the `https://` hop tests: certificates made with
//! rcgen (a CA, and server certificates it signs: for a name, for another
//! name, expired) and stunnel, started on a free 127.0.0.1 port, taking TLS
//! and passing the plain bytes on to a backend (a squid), as a child process
//! that is killed by its own PID when the [`Stunnel`] is dropped.
//!
//! A missing stunnel fails the test with the `apt-get` line that installs it
//! ([`INSTALL`]), unless `HTTPTUNNELING_SKIP_REAL_PROXIES=1` is set: then the
//! constructor prints a note and returns `None`, and the test returns early.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use super::proxies::{find_program, skip_allowed, SKIP_ENV};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// What installs stunnel (as root, Debian/Ubuntu).
pub const INSTALL: &str = "apt-get install -y stunnel4";

/// How long stunnel may take to accept connections after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A stunnel that exits at start (most likely: its port was taken between
/// picking it and binding it) is retried this many times on a fresh port.
const START_ATTEMPTS: usize = 3;

/// A CA made for one test: its certificate (PEM) and what signs with it.
pub struct TestCa {
    pub pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

static SERIAL: AtomicUsize = AtomicUsize::new(0);

impl TestCa {
    /// A fresh self-signed CA with a name unique to this process and call.
    pub fn new() -> TestCa {
        let n = SERIAL.fetch_add(1, Ordering::SeqCst);
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("httptunneling test CA {} {n}", std::process::id()),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A server certificate for `names` (DNS names or IP literals) signed by
    /// this CA; `expired` makes it valid in 2020 only.
    pub fn server_cert(&self, names: &[&str], expired: bool) -> ServerCert {
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("none"));
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the server certificate");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// A server certificate and its private key, PEM.
#[derive(Clone)]
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Whether stunnel is installed (`stunnel4` or `stunnel`).
pub fn stunnel_program() -> Option<PathBuf> {
    find_program("stunnel4").or_else(|| find_program("stunnel"))
}

/// `stunnel4`'s path, or `None` after a note when it is missing and
/// skipping is allowed; panics with the install line otherwise.
pub fn require_stunnel() -> Option<PathBuf> {
    match stunnel_program() {
        Some(p) => Some(p),
        None if skip_allowed() => {
            eprintln!("note: stunnel is not installed; skipping this test because {SKIP_ENV}=1");
            None
        }
        None => panic!(
            "stunnel is not installed: install it with `{INSTALL}` (as root), \
             or set {SKIP_ENV}=1 to skip the tests that need it"
        ),
    }
}

/// The first line stunnel prints about itself (`stunnel 5.68 on ...`).
pub fn stunnel_version() -> Option<String> {
    let program = stunnel_program()?;
    let out = Command::new(program)
        .arg("-version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find(|l| l.contains("stunnel"))
        .map(|l| l.trim().to_owned())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

fn stunnel_dir() -> PathBuf {
    let n = UNIQUE.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "httptunneling-stunnel-{}-{n}-{nanos}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// stunnel on 127.0.0.1 taking TLS with one certificate and passing the
/// plain bytes on to `backend`. Killed by PID on drop.
pub struct Stunnel {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    child: Child,
}

impl Stunnel {
    /// Starts stunnel in the foreground serving `cert`, forwarding to
    /// `backend`; waits until it says its configuration is loaded and
    /// accepts a connection.
    pub fn start(cert: &ServerCert, backend: SocketAddr) -> Option<Stunnel> {
        let program = require_stunnel()?;
        let dir = stunnel_dir();
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        fs::write(&cert_path, &cert.cert_pem).expect("write cert");
        fs::write(&key_path, &cert.key_pem).expect("write key");
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).expect("chmod key");
        let log = dir.join("stunnel.log");
        let conf = dir.join("stunnel.conf");
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let _ = fs::remove_file(&log);
            fs::write(
                &conf,
                format!(
                    "foreground = yes\n\
                     pid =\n\
                     debug = 5\n\
                     output = {log}\n\
                     [proxy]\n\
                     accept = 127.0.0.1:{port}\n\
                     connect = {backend}\n\
                     cert = {cert}\n\
                     key = {key}\n",
                    log = log.display(),
                    cert = cert_path.display(),
                    key = key_path.display()
                ),
            )
            .expect("write stunnel.conf");
            let child = Command::new(&program)
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(fs::File::create(dir.join("stdout")).expect("create stdout file"))
                .stderr(fs::File::create(dir.join("stderr")).expect("create stderr file"))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
            let mut front = Stunnel {
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                dir: dir.clone(),
                child,
            };
            match front.wait_ready(&log) {
                Ok(()) => return Some(front),
                Err(Some(status)) => {
                    failures.push(format!(
                        "attempt {attempt} on port {port}: exited ({status})\n{}",
                        front.logs()
                    ));
                    // Keep the directory for the next attempt.
                    front.dir = PathBuf::new();
                }
                Err(None) => panic!(
                    "stunnel did not accept on port {port} within {START_TIMEOUT:?}\n{}",
                    front.logs()
                ),
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!(
            "stunnel failed to start {START_ATTEMPTS} times:\n{}",
            failures.join("\n")
        );
    }

    /// `Err(Some(status))`: it exited; `Err(None)`: the deadline passed.
    fn wait_ready(&mut self, log: &Path) -> Result<(), Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(Some(status));
            }
            let logged = fs::read(log)
                .map(|b| String::from_utf8_lossy(&b).contains("Configuration successful"))
                .unwrap_or(false);
            // A plain TCP connect (closed at once) costs stunnel one failed
            // handshake line in its log, nothing else.
            if logged
                && TcpStream::connect_timeout(&self.addr, Duration::from_millis(500)).is_ok()
                && self.child.try_wait().expect("try_wait").is_none()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// stunnel's log and stderr.
    pub fn logs(&self) -> String {
        let read = |name: &str| {
            fs::read(self.dir.join(name))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        format!(
            "--- stunnel.log ---\n{}\n--- stderr ---\n{}",
            read("stunnel.log"),
            read("stderr")
        )
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if thread::panicking() {
            eprintln!(
                "--- stunnel on {} ({}) ---\n{}",
                self.addr,
                self.dir.display(),
                self.logs()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
