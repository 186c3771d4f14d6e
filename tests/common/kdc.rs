//! A real MIT Kerberos KDC for the Negotiate tests, private to one test.
//!
//! [`Kdc::start`] makes a directory under `/tmp` holding a run-local
//! `krb5.conf` (what clients read, through `KRB5_CONFIG`) and `kdc.conf`
//! (the KDC's own profile, through `KRB5_KDC_PROFILE`), creates the realm
//! [`REALM`]'s database with `kdb5_util create -s`, adds with `kadmin.local`
//! the user [`USER`] (password [`PASSWORD`]) and the service `HTTP/localhost`
//! (random key, exported to a keytab with `ktadd -k`), starts `krb5kdc -n`
//! on a free 127.0.0.1 port (TCP and UDP; `udp_preference_limit = 1` makes clients use TCP), and
//! `kinit`s the user into a run-local credentials cache ([`Kdc::ccache`]).
//! Nothing reads or writes /etc/krb5.conf or the system's KDC: the packages'
//! own services are never needed. The KDC is killed by its PID on drop, and
//! the directory removed unless the test is failing, in which case the
//! KDC's log is printed.
//!
//! The client side is configured only through the environment of the
//! process that asks for tickets ([`Kdc::client_env`]): the tests run the
//! program (or a child of the test binary) with `KRB5_CONFIG` and
//! `KRB5CCNAME` set, never changing their own environment.
//!
//! `krb5.conf` also names a second realm, [`OTHER_REALM`], that no KDC
//! serves, for host names under [`WRONG_REALM_DOMAIN`]: a ticket for
//! `HTTP@proxy.wrongrealm.test` needs a cross-realm trust that does not
//! exist, which is how a user with a ticket of the wrong realm fails.
//!
//! Missing programs fail the test with the `apt-get` line ([`INSTALL`]),
//! unless `HTTPTUNNELING_SKIP_REAL_PROXIES=1` (then [`Kdc::start`] prints a
//! note and returns `None`).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::proxies::{find_program, skip_allowed, NegotiateAcceptor, SKIP_ENV};

/// What installs the programs this module runs (as root, Debian/Ubuntu).
pub const INSTALL: &str = "apt-get install -y krb5-kdc krb5-admin-server krb5-user";

/// The test realm.
pub const REALM: &str = "HTTPTUNNELING.TEST";
/// A realm named in krb5.conf that no KDC serves and the test realm does not
/// trust.
pub const OTHER_REALM: &str = "OTHER.TEST";
/// Hosts under this domain belong to [`OTHER_REALM`].
pub const WRONG_REALM_DOMAIN: &str = "wrongrealm.test";
/// The user principal (in [`REALM`]) and its password.
pub const USER: &str = "alice";
pub const PASSWORD: &str = "alice-Secret-1";
/// The proxy's service: `HTTP/localhost@REALM`, so the tunnels name the
/// proxy `localhost`.
pub const SERVICE_HOST: &str = "localhost";

/// How long the KDC may take to answer after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A KDC whose port was taken between picking and binding it exits; it is
/// retried on a fresh port.
const START_ATTEMPTS: usize = 3;

/// The programs: (name, package).
const PROGRAMS: [(&str, &str); 4] = [
    ("krb5kdc", "krb5-kdc"),
    ("kdb5_util", "krb5-kdc"),
    ("kadmin.local", "krb5-admin-server"),
    ("kinit", "krb5-user"),
];

/// A running KDC for [`REALM`] with [`USER`] and `HTTP/localhost` in it.
pub struct Kdc {
    /// The private directory: configuration, database, keytabs, caches, log.
    pub dir: PathBuf,
    /// Where the KDC answers (TCP and UDP).
    pub addr: SocketAddr,
    /// The clients' krb5.conf (`KRB5_CONFIG`).
    pub krb5_conf: PathBuf,
    /// The KDC's profile (`KRB5_KDC_PROFILE`).
    pub kdc_conf: PathBuf,
    /// The keytab holding `HTTP/localhost@REALM`'s key, readable by squid's
    /// helper.
    pub service_keytab: PathBuf,
    /// `FILE:...`: the cache holding [`USER`]'s ticket-granting ticket.
    pub ccache: String,
    child: Child,
    programs: Programs,
}

/// Where the programs are.
#[derive(Clone)]
struct Programs {
    krb5kdc: PathBuf,
    kdb5_util: PathBuf,
    kadmin_local: PathBuf,
    kinit: PathBuf,
}

impl Programs {
    /// The programs, or `None` after a note when one is missing and
    /// skipping is allowed; panics with the install line otherwise.
    fn find() -> Option<Programs> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for (name, package) in PROGRAMS {
            match find_program(name) {
                Some(path) => found.push(path),
                None => missing.push(format!("{name} ({package})")),
            }
        }
        if !missing.is_empty() {
            if skip_allowed() {
                eprintln!(
                    "note: {} not installed; skipping this test because {SKIP_ENV}=1",
                    missing.join(", ")
                );
                return None;
            }
            panic!(
                "{} not installed: install MIT Kerberos with `{INSTALL}` (as root), \
                 or set {SKIP_ENV}=1 to skip the tests that need it",
                missing.join(", ")
            );
        }
        let mut found = found.into_iter();
        let mut next = || found.next().expect("one path per program");
        Some(Programs {
            krb5kdc: next(),
            kdb5_util: next(),
            kadmin_local: next(),
            kinit: next(),
        })
    }
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under /tmp, readable by everyone (squid's helper runs
/// as squid's user and reads krb5.conf and the service keytab from it).
fn kdc_dir() -> PathBuf {
    let n = UNIQUE.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = PathBuf::from("/tmp").join(format!("httest{}x{n}x{nanos}kdc", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn write_readable(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

impl Kdc {
    /// A KDC with the user and the service, and the user's ticket in
    /// [`Kdc::ccache`]. `None` when the programs are missing and skipping is
    /// allowed.
    pub fn start() -> Option<Kdc> {
        let programs = Programs::find()?;
        let dir = kdc_dir();
        let krb5_conf = dir.join("krb5.conf");
        let kdc_conf = dir.join("kdc.conf");
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            write_readable(&krb5_conf, &client_profile(port));
            write_readable(&kdc_conf, &kdc_profile(&dir, port));
            if attempt == 1 {
                create_realm(&programs, &dir, &krb5_conf, &kdc_conf);
            }
            let log = dir.join("kdc.log");
            let _ = fs::remove_file(&log);
            let child = Command::new(&programs.krb5kdc)
                // -n: stay in the foreground, so the child is the KDC.
                .args(["-n", "-r", REALM, "-P"])
                .arg(dir.join("kdc.pid"))
                .env("KRB5_CONFIG", &krb5_conf)
                .env("KRB5_KDC_PROFILE", &kdc_conf)
                .stdin(Stdio::null())
                .stdout(fs::File::create(dir.join("kdc.stdout")).expect("create kdc.stdout"))
                .stderr(fs::File::create(dir.join("kdc.stderr")).expect("create kdc.stderr"))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", programs.krb5kdc.display()));
            let mut kdc = Kdc {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                service_keytab: dir.join("http.keytab"),
                ccache: format!("FILE:{}", dir.join("ccache").display()),
                dir: dir.clone(),
                krb5_conf: krb5_conf.clone(),
                kdc_conf: kdc_conf.clone(),
                child,
                programs: programs.clone(),
            };
            match kdc.wait_ready(&log) {
                Ok(()) => {
                    let ccache = kdc.ccache.clone();
                    kdc.kinit(&ccache, &[])
                        .unwrap_or_else(|e| panic!("kinit {USER}: {e}\n{}", kdc.logs()));
                    return Some(kdc);
                }
                Err(why) => {
                    failures.push(format!(
                        "attempt {attempt} on port {port}: {why}\n{}",
                        kdc.logs()
                    ));
                    // Keep the directory (and the database) for the next try.
                    kdc.dir = PathBuf::new();
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!(
            "krb5kdc failed to start {START_ATTEMPTS} times:\n{}",
            failures.join("\n")
        );
    }

    /// Waits for "commencing operation" in the log, a TCP connect, and the
    /// process still running.
    fn wait_ready(&mut self, log: &Path) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("exited ({status})"));
            }
            let logged = fs::read(log)
                .map(|b| String::from_utf8_lossy(&b).contains("commencing operation"))
                .unwrap_or(false);
            if logged
                && TcpStream::connect_timeout(&self.addr, Duration::from_millis(500)).is_ok()
                && self.child.try_wait().expect("try_wait").is_none()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                panic!(
                    "krb5kdc did not answer on {} within {START_TIMEOUT:?}\n{}",
                    self.addr,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the KDC (by its PID) now, keeping the directory: clients then
    /// find no KDC.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `HTTP/localhost@HTTPTUNNELING.TEST`.
    pub fn service_principal(&self) -> String {
        format!("HTTP/{SERVICE_HOST}@{REALM}")
    }

    /// The KDC's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The environment a client needs to use `ccache` (e.g. [`Kdc::ccache`],
    /// or `FILE:/nonexistent` for no ticket): `KRB5_CONFIG` and `KRB5CCNAME`.
    pub fn client_env(&self, ccache: &str) -> Vec<(String, String)> {
        vec![
            (
                "KRB5_CONFIG".to_owned(),
                self.krb5_conf.display().to_string(),
            ),
            ("KRB5CCNAME".to_owned(), ccache.to_owned()),
        ]
    }

    /// What squid's `negotiate_kerberos_auth` needs to accept tickets for
    /// `HTTP/localhost`.
    pub fn acceptor(&self) -> NegotiateAcceptor {
        NegotiateAcceptor {
            keytab: self.service_keytab.clone(),
            principal: self.service_principal(),
            krb5_config: self.krb5_conf.clone(),
        }
    }

    /// A cache path in the KDC's directory, `FILE:DIR/NAME` (not created).
    pub fn ccache_path(&self, name: &str) -> String {
        format!("FILE:{}", self.dir.join(name).display())
    }

    /// `kinit [ARGS] alice` into `ccache` with the password on stdin.
    pub fn kinit(&self, ccache: &str, args: &[&str]) -> Result<(), String> {
        let mut child = Command::new(&self.programs.kinit)
            .args(["-c", ccache])
            .args(args)
            .arg(format!("{USER}@{REALM}"))
            .env("KRB5_CONFIG", &self.krb5_conf)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn kinit: {e}"))?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .map_err(|e| format!("kinit's stdin: {e}"))?;
        let out = child
            .wait_with_output()
            .map_err(|e| format!("kinit: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "kinit exited ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Runs one `kadmin.local` query (e.g. `addprinc -randkey HTTP/other`)
    /// and returns its output; panics when it fails.
    pub fn kadmin(&self, query: &str) -> String {
        kadmin_local(&self.programs, &self.krb5_conf, &self.kdc_conf, query)
    }

    /// Exports the user's current keys (without changing them) to a new
    /// keytab in the KDC's directory, for `KRB5_CLIENT_KTNAME`.
    pub fn user_keytab(&self) -> PathBuf {
        let path = self.dir.join("alice.keytab");
        self.kadmin(&format!("ktadd -k {} -norandkey {USER}", path.display()));
        path
    }

    /// The KDC's log and output, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| {
            fs::read(self.dir.join(name))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        format!(
            "--- kdc.log ---\n{}\n--- kdc.stderr ---\n{}",
            read("kdc.log"),
            read("kdc.stderr")
        )
    }
}

impl Drop for Kdc {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if thread::panicking() {
            eprintln!(
                "--- KDC on {} ({}) ---\n{}",
                self.addr,
                self.dir.display(),
                self.logs()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The clients' krb5.conf: the test realm's KDC over TCP on `port`, no DNS
/// (no KDC or realm lookups, no canonicalisation of `localhost`), and the
/// wrong-realm domain.
fn client_profile(port: u16) -> String {
    format!(
        "[libdefaults]\n\
         \tdefault_realm = {REALM}\n\
         \tdns_lookup_kdc = false\n\
         \tdns_lookup_realm = false\n\
         \tdns_canonicalize_hostname = false\n\
         \trdns = false\n\
         \tudp_preference_limit = 1\n\
         \tkdc_timeout = 5s\n\
         \tmax_retries = 1\n\
         [realms]\n\
         \t{REALM} = {{\n\
         \t\tkdc = 127.0.0.1:{port}\n\
         \t}}\n\
         \t{OTHER_REALM} = {{\n\
         \t\tkdc = 127.0.0.1:{port}\n\
         \t}}\n\
         [domain_realm]\n\
         \t{SERVICE_HOST} = {REALM}\n\
         \t.{WRONG_REALM_DOMAIN} = {OTHER_REALM}\n\
         \t{WRONG_REALM_DOMAIN} = {OTHER_REALM}\n"
    )
}

/// The KDC's profile: loopback only, everything in `dir`.
fn kdc_profile(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "[kdcdefaults]\n\
         \tkdc_listen = 127.0.0.1:{port}\n\
         \tkdc_tcp_listen = 127.0.0.1:{port}\n\
         [realms]\n\
         \t{REALM} = {{\n\
         \t\tdatabase_name = {d}/principal\n\
         \t\tkey_stash_file = {d}/stash\n\
         \t\tacl_file = {d}/kadm5.acl\n\
         \t\tmax_life = 10h\n\
         \t\tmax_renewable_life = 0\n\
         \t}}\n\
         [logging]\n\
         \tkdc = FILE:{d}/kdc.log\n\
         \tadmin_server = FILE:{d}/kadmin.log\n\
         \tdefault = FILE:{d}/krb5.log\n"
    )
}

/// The database, the user, the service and its keytab.
fn create_realm(programs: &Programs, dir: &Path, krb5_conf: &Path, kdc_conf: &Path) {
    let out = Command::new(&programs.kdb5_util)
        // -s: a stash file, so the KDC starts without asking for the master
        // password; -P: the master password itself (throwaway).
        .args(["create", "-s", "-r", REALM, "-P", "master-Secret-1"])
        .env("KRB5_CONFIG", krb5_conf)
        .env("KRB5_KDC_PROFILE", kdc_conf)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run kdb5_util: {e}"));
    assert!(
        out.status.success(),
        "kdb5_util create failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    kadmin_local(
        programs,
        krb5_conf,
        kdc_conf,
        &format!("addprinc -pw {PASSWORD} {USER}"),
    );
    kadmin_local(
        programs,
        krb5_conf,
        kdc_conf,
        &format!("addprinc -randkey HTTP/{SERVICE_HOST}"),
    );
    let keytab = dir.join("http.keytab");
    kadmin_local(
        programs,
        krb5_conf,
        kdc_conf,
        &format!("ktadd -k {} HTTP/{SERVICE_HOST}", keytab.display()),
    );
    // squid's helper runs as squid's user.
    fs::set_permissions(&keytab, fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", keytab.display()));
}

fn kadmin_local(programs: &Programs, krb5_conf: &Path, kdc_conf: &Path, query: &str) -> String {
    let out = Command::new(&programs.kadmin_local)
        .args(["-r", REALM, "-q", query])
        .env("KRB5_CONFIG", krb5_conf)
        .env("KRB5_KDC_PROFILE", kdc_conf)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run kadmin.local: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // kadmin.local exits 0 even when the query failed; its errors name the
    // query's command ("add_principal: ...", "kadmin.local: ...").
    let failed = !out.status.success()
        || text.lines().any(|l| {
            l.contains("while ") || l.starts_with("kadmin.local:") || l.contains("Unknown request")
        });
    assert!(!failed, "kadmin.local -q {query:?} failed: {text}");
    text
}
