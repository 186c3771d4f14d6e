//! Real HTTP proxies for the integration tests: tinyproxy and squid, each
//! started on a free 127.0.0.1 port from a configuration generated into a
//! private directory, as a child process that is killed by its own PID when
//! the [`RealProxy`] is dropped.
//!
//! A missing proxy program fails the test with the `apt-get` line that
//! installs it ([`INSTALL`]), unless `HTTPTUNNELING_SKIP_REAL_PROXIES=1` is
//! set: then the constructor prints a note and returns `None`, and the test
//! returns early.
//!
//! Started as root, the proxies drop their privileges (tinyproxy to
//! `nobody`, squid to its build's effective user, `proxy` on Debian). Their
//! directory therefore lives under `/tmp` (not `$TMPDIR`, which may sit in a
//! home folder they cannot enter) and is world-writable; its name is unique
//! to this process and call, and it is removed on drop unless the test is
//! failing, in which case the proxy's logs are printed.
//!
//! Neither proxy reaches outside loopback: every test names its destination
//! as an IP literal, so no name is ever resolved.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Set to `1` to skip (with a note) tests whose real proxy is not installed,
/// instead of failing them.
pub const SKIP_ENV: &str = "HTTPTUNNELING_SKIP_REAL_PROXIES";

/// What installs everything this module runs (as root, Debian/Ubuntu).
pub const INSTALL: &str = "apt-get install -y tinyproxy squid apache2-utils";

/// How long a proxy may take to accept connections after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A proxy that exits at start (most likely: its port was taken between
/// picking it and binding it) is retried this many times on a fresh port.
const START_ATTEMPTS: usize = 3;

/// Which proxy program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tinyproxy,
    Squid,
}

impl Kind {
    /// The program's file name.
    pub fn program(self) -> &'static str {
        match self {
            Kind::Tinyproxy => "tinyproxy",
            Kind::Squid => "squid",
        }
    }
}

/// Finds `name` on `PATH` or in the usual bin and sbin folders (squid lives
/// in /usr/sbin, which is not on every user's `PATH`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for extra in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Where distributions put squid's helper `name` (`basic_ncsa_auth`,
/// `digest_file_auth`, `ntlm_fake_auth`).
fn find_helper(name: &str) -> Option<PathBuf> {
    [
        "/usr/lib/squid",
        "/usr/lib64/squid",
        "/usr/libexec/squid",
        "/usr/lib/squid3",
    ]
    .iter()
    .map(|d| Path::new(d).join(name))
    .find(|p| is_executable(p))
}

/// Authentication schemes a test squid can demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SquidScheme {
    /// `basic_ncsa_auth` with an htpasswd file.
    Basic,
    /// `digest_file_auth` with a plain password file.
    Digest,
    /// `ntlm_fake_auth`: any user, any password.
    NtlmFake,
    /// `negotiate_kerberos_auth` with the keytab of a test KDC's
    /// `HTTP/localhost`: needs [`RealProxy::squid_negotiate`], which says
    /// where the keytab is.
    Negotiate,
}

/// What squid's `negotiate_kerberos_auth` needs to accept Kerberos tickets
/// (from `common::kdc::Kdc::acceptor`).
#[derive(Clone, Debug)]
pub struct NegotiateAcceptor {
    /// The service's keytab (`KRB5_KTNAME`, `-k`), readable by squid's user.
    pub keytab: PathBuf,
    /// The service principal the helper accepts for (`-s`), e.g.
    /// `HTTP/localhost@HTTPTUNNELING.TEST`.
    pub principal: String,
    /// The krb5.conf the helper reads (`KRB5_CONFIG`).
    pub krb5_config: PathBuf,
}

/// Whether a missing program may skip the test instead of failing it.
pub fn skip_allowed() -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|v| v == "1")
}

/// `found`, or `None` after a note when it is missing and skipping is
/// allowed; panics with the install line otherwise.
fn require(what: &str, found: Option<PathBuf>) -> Option<PathBuf> {
    match found {
        Some(path) => Some(path),
        None if skip_allowed() => {
            eprintln!("note: {what} is not installed; skipping this test because {SKIP_ENV}=1");
            None
        }
        None => panic!(
            "{what} is not installed: install the real proxies with `{INSTALL}` (as root), \
             or set {SKIP_ENV}=1 to skip the tests that need them"
        ),
    }
}

/// The first line of `PROGRAM -v` (e.g. `tinyproxy 1.11.1`,
/// `Squid Cache: Version 5.7`), or `None` when the program is missing.
pub fn version(kind: Kind) -> Option<String> {
    let program = find_program(kind.program())?;
    let out = Command::new(program)
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_owned())
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The first of `names` that is a group on this system.
fn existing_group(names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| {
        let c = std::ffi::CString::new(*name).ok()?;
        // SAFETY: a valid NUL-terminated string; the result is only
        // compared with null, never dereferenced.
        let found = unsafe { !libc::getgrnam(c.as_ptr()).is_null() };
        found.then(|| (*name).to_owned())
    })
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A fresh world-writable directory under /tmp (see the module docs) and a
/// name made of letters and digits only, unique to this process and call.
fn proxy_dir(tag: &str) -> (PathBuf, String) {
    let n = UNIQUE.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!("httest{}x{n}x{nanos}{tag}", std::process::id());
    let dir = PathBuf::from("/tmp").join(&name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    // The umask would strip the write bits from create_dir's mode.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
    (dir, name)
}

/// Writes `text` to `path`, readable by the unprivileged proxy user.
fn write_readable(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Writes an htpasswd file holding `user`/`password` as an `$apr1$` (MD5)
/// hash, which squid's NCSA helper reads, made by apache2-utils' `htpasswd`
/// or else by `openssl passwd -apr1`. `None` when neither is installed and skipping is
/// allowed.
fn write_htpasswd(path: &Path, user: &str, password: &str) -> Option<()> {
    if let Some(htpasswd) = find_program("htpasswd") {
        let out = Command::new(htpasswd)
            .args(["-b", "-c", "-m"])
            .arg(path)
            .args([user, password])
            .stdin(Stdio::null())
            .output()
            .expect("run htpasswd");
        assert!(
            out.status.success(),
            "htpasswd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else if let Some(openssl) = find_program("openssl") {
        let out = Command::new(openssl)
            .args(["passwd", "-apr1", password])
            .stdin(Stdio::null())
            .output()
            .expect("run openssl passwd");
        assert!(
            out.status.success(),
            "openssl passwd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        fs::write(path, format!("{user}:{hash}\n")).expect("write htpasswd file");
    } else {
        require("htpasswd (apache2-utils)", None)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod htpasswd file");
    Some(())
}

/// Why a start attempt did not produce a listening proxy.
enum StartFailure {
    Exited(ExitStatus),
    TimedOut,
}

/// A real proxy process listening on 127.0.0.1. Killed by PID on drop.
pub struct RealProxy {
    pub kind: Kind,
    /// Where it accepts proxy requests.
    pub addr: SocketAddr,
    /// Its private directory: configuration, logs, pid file.
    pub dir: PathBuf,
    child: Child,
    /// squid's service name (`-n`), which names its shared-memory segments;
    /// unique so that several squids (ours or the system's) never share them.
    service: String,
    /// How it was started, for [`RealProxy::restart`]: program, arguments,
    /// environment, the log it writes and the line that says it is ready.
    program: std::ffi::OsString,
    args: Vec<std::ffi::OsString>,
    envs: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    log_name: String,
    ready: String,
}

impl RealProxy {
    /// tinyproxy with no `ConnectPort` line, so CONNECT to any port is
    /// allowed, serving clients from 127.0.0.1 only.
    pub fn tinyproxy() -> Option<RealProxy> {
        let program = require("tinyproxy", find_program("tinyproxy"))?;
        let (dir, service) = proxy_dir("tinyproxy");
        let user = if running_as_root() {
            // tinyproxy refuses to keep running as root; drop to nobody.
            let group = existing_group(&["nogroup", "nobody"])
                .map(|g| format!("Group {g}\n"))
                .unwrap_or_default();
            format!("User nobody\n{group}")
        } else {
            String::new()
        };
        let config = |port: u16| {
            format!(
                "Port {port}\n\
                 Listen 127.0.0.1\n\
                 Allow 127.0.0.1\n\
                 {user}\
                 Timeout 600\n\
                 MaxClients 512\n\
                 PidFile \"{dir}/tinyproxy.pid\"\n\
                 LogFile \"{dir}/tinyproxy.log\"\n\
                 LogLevel Info\n",
                dir = dir.display()
            )
        };
        let ready = "Starting main loop. Accepting connections.";
        Some(RealProxy::start(
            Kind::Tinyproxy,
            dir.clone(),
            service,
            &config,
            |conf| {
                let mut cmd = Command::new(&program);
                // -d: stay in the foreground, so the child we hold is the proxy.
                cmd.arg("-d").arg("-c").arg(conf);
                cmd
            },
            "tinyproxy.log",
            ready,
        ))
    }

    /// squid allowing CONNECT to any port from 127.0.0.1, caching nothing.
    pub fn squid() -> Option<RealProxy> {
        RealProxy::squid_with(&[], None, None, "")
    }

    /// Like [`RealProxy::squid`], but every request must carry HTTP Basic
    /// credentials for `user`/`password` (checked by squid's NCSA helper
    /// against an htpasswd file); others get `407` with
    /// `Proxy-Authenticate: Basic`.
    pub fn squid_basic_auth(user: &str, password: &str) -> Option<RealProxy> {
        RealProxy::squid_with(&[SquidScheme::Basic], Some((user, password)), None, "")
    }

    /// Like [`RealProxy::squid`], but every request must carry HTTP Digest
    /// credentials (RFC 2617/7616, MD5, `qop="auth"`) for `user`/`password`,
    /// checked by squid's `digest_file_auth` helper against a plain
    /// `user:password` file; others get `407` with `Proxy-Authenticate:
    /// Digest realm="httptunneling-test", nonce=..., qop="auth"`.
    /// squid's defaults hold: a nonce serves at most 50 requests
    /// (`nonce_max_count`), then squid answers `stale=true`.
    pub fn squid_digest_auth(user: &str, password: &str) -> Option<RealProxy> {
        RealProxy::squid_with(&[SquidScheme::Digest], Some((user, password)), None, "")
    }

    /// Like [`RealProxy::squid`], but every request must authenticate with
    /// NTLM, checked by squid's `ntlm_fake_auth` helper, which accepts any
    /// well-formed exchange whatever the user and password (so only the
    /// message flow is tested against squid, not the NTLMv2 arithmetic).
    /// NTLM authenticates a connection, so it needs the persistent client
    /// connections squid keeps by default.
    pub fn squid_ntlm_fake_auth() -> Option<RealProxy> {
        RealProxy::squid_with(&[SquidScheme::NtlmFake], None, None, "")
    }

    /// squid offering every scheme in `schemes` (one `Proxy-Authenticate`
    /// header each, in this order); Basic and Digest check `user`/`password`,
    /// NTLM is `ntlm_fake_auth`.
    pub fn squid_auth(schemes: &[SquidScheme], user: &str, password: &str) -> Option<RealProxy> {
        RealProxy::squid_with(schemes, Some((user, password)), None, "")
    }

    /// Like [`RealProxy::squid_auth`], with `extra` configuration lines
    /// after the `auth_param` lines of the schemes (e.g. `auth_param digest
    /// nonce_max_count 2\n`).
    pub fn squid_auth_with(
        schemes: &[SquidScheme],
        user: &str,
        password: &str,
        extra: &str,
    ) -> Option<RealProxy> {
        RealProxy::squid_with(schemes, Some((user, password)), None, extra)
    }

    /// squid offering every scheme in `schemes` (which holds
    /// [`SquidScheme::Negotiate`], in the place its `Proxy-Authenticate:
    /// Negotiate` header should take), Negotiate checked by
    /// `negotiate_kerberos_auth` with `acceptor`'s keytab; Basic and Digest
    /// need `cred`. `extra` as in [`RealProxy::squid_auth_with`]. Tunnels
    /// must name this proxy `localhost` (the service is `HTTP/localhost`).
    pub fn squid_negotiate(
        acceptor: &NegotiateAcceptor,
        schemes: &[SquidScheme],
        cred: Option<(&str, &str)>,
        extra: &str,
    ) -> Option<RealProxy> {
        RealProxy::squid_with(schemes, cred, Some(acceptor), extra)
    }

    /// Like [`RealProxy::squid`] (no authentication), with `extra`
    /// configuration lines before its `http_access` lines, e.g. `acl only
    /// port 4000\nhttp_access deny !only\n` to let it CONNECT to one port
    /// only.
    pub fn squid_extra(extra: &str) -> Option<RealProxy> {
        RealProxy::squid_with(&[], None, None, extra)
    }

    fn squid_with(
        schemes: &[SquidScheme],
        cred: Option<(&str, &str)>,
        acceptor: Option<&NegotiateAcceptor>,
        extra: &str,
    ) -> Option<RealProxy> {
        let program = require("squid", find_program("squid"))?;
        let (dir, service) = proxy_dir("squid");
        let mut auth_lines = String::new();
        // The helpers inherit squid's environment.
        let mut env: Vec<(&str, std::ffi::OsString)> = Vec::new();
        for scheme in schemes {
            match scheme {
                SquidScheme::Basic => {
                    let (user, password) = cred.expect("Basic needs credentials");
                    let helper = require(
                        "squid's basic_ncsa_auth helper",
                        find_helper("basic_ncsa_auth"),
                    )?;
                    let passwd = dir.join("passwd");
                    write_htpasswd(&passwd, user, password)?;
                    auth_lines.push_str(&format!(
                        "auth_param basic program {} {}\n\
                         auth_param basic children 4 startup=1 idle=1\n\
                         auth_param basic realm httptunneling-test\n",
                        helper.display(),
                        passwd.display()
                    ));
                }
                SquidScheme::Digest => {
                    let (user, password) = cred.expect("Digest needs credentials");
                    let helper = require(
                        "squid's digest_file_auth helper",
                        find_helper("digest_file_auth"),
                    )?;
                    let file = dir.join("digest-passwd");
                    // Plain `user:password` lines (no -c: not HA1 hashes).
                    write_readable(&file, &format!("{user}:{password}\n"));
                    auth_lines.push_str(&format!(
                        "auth_param digest program {} {}\n\
                         auth_param digest children 4 startup=1 idle=1\n\
                         auth_param digest realm httptunneling-test\n",
                        helper.display(),
                        file.display()
                    ));
                }
                SquidScheme::NtlmFake => {
                    let helper = require(
                        "squid's ntlm_fake_auth helper",
                        find_helper("ntlm_fake_auth"),
                    )?;
                    // Stateful helpers: one per connection mid-handshake, so
                    // enough of them for the concurrent tests.
                    auth_lines.push_str(&format!(
                        "auth_param ntlm program {}\n\
                         auth_param ntlm children 24 startup=2 idle=1\n\
                         auth_param ntlm keep_alive on\n",
                        helper.display()
                    ));
                }
                SquidScheme::Negotiate => {
                    let acceptor =
                        acceptor.expect("SquidScheme::Negotiate needs RealProxy::squid_negotiate");
                    let helper = require(
                        "squid's negotiate_kerberos_auth helper",
                        find_helper("negotiate_kerberos_auth"),
                    )?;
                    // -k/-s: the keytab and the one service principal
                    // accepted (without -s the helper would want
                    // HTTP/<this host's FQDN>, so visible_hostname does not
                    // matter); -d: its debug lines go to cache.log, printed
                    // when a test fails.
                    auth_lines.push_str(&format!(
                        "auth_param negotiate program {} -d -k {} -s {}\n\
                         auth_param negotiate children 24 startup=2 idle=1\n\
                         auth_param negotiate keep_alive on\n",
                        helper.display(),
                        acceptor.keytab.display(),
                        acceptor.principal
                    ));
                    env.push(("KRB5_CONFIG", acceptor.krb5_config.clone().into()));
                    let mut ktname = std::ffi::OsString::from("FILE:");
                    ktname.push(&acceptor.keytab);
                    env.push(("KRB5_KTNAME", ktname));
                    // The replay cache in squid's own (writable) directory.
                    env.push(("KRB5RCACHEDIR", dir.clone().into()));
                }
            }
        }
        auth_lines.push_str(extra);
        let access = if schemes.is_empty() {
            "http_access allow test_clients\n".to_owned()
        } else {
            // auth_param must come before the proxy_auth acl.
            auth_lines.push_str("acl authenticated proxy_auth REQUIRED\n");
            "http_access allow test_clients authenticated\n".to_owned()
        };
        let config = |port: u16| {
            format!(
                "http_port 127.0.0.1:{port}\n\
                 {auth_lines}\
                 acl test_clients src 127.0.0.1/32\n\
                 {access}\
                 http_access deny all\n\
                 cache deny all\n\
                 cache_mem 8 MB\n\
                 access_log stdio:{dir}/access.log\n\
                 cache_store_log none\n\
                 cache_log {dir}/cache.log\n\
                 pid_filename {dir}/squid.pid\n\
                 coredump_dir {dir}\n\
                 netdb_filename none\n\
                 pinger_enable off\n\
                 workers 1\n\
                 visible_hostname httptunneling-test\n\
                 shutdown_lifetime 0 seconds\n",
                dir = dir.display()
            )
        };
        let ready = "Accepting HTTP Socket connections";
        let name = service.clone();
        Some(RealProxy::start(
            Kind::Squid,
            dir.clone(),
            service,
            &config,
            |conf| {
                let mut cmd = Command::new(&program);
                // -N: no daemon, no kid processes; -n: our own service name.
                cmd.arg("-N").arg("-n").arg(&name).arg("-f").arg(conf);
                cmd.envs(env.iter().map(|(k, v)| (k, v)));
                cmd
            },
            "cache.log",
            ready,
        ))
    }

    /// Writes the configuration for a fresh port, spawns the proxy and waits
    /// until it logged `ready`, accepts a connection and is still running.
    fn start(
        kind: Kind,
        dir: PathBuf,
        service: String,
        config: &dyn Fn(u16) -> String,
        command: impl Fn(&Path) -> Command,
        log_name: &str,
        ready: &str,
    ) -> RealProxy {
        let conf = dir.join(format!("{}.conf", kind.program()));
        let log = dir.join(log_name);
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let _ = fs::remove_file(&log);
            write_readable(&conf, &config(port));
            let mut cmd = command(&conf);
            let program = cmd.get_program().to_owned();
            let args = cmd.get_args().map(|a| a.to_owned()).collect();
            let envs = cmd
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
                .collect();
            let child = cmd
                .stdin(Stdio::null())
                .stdout(fs::File::create(dir.join("stdout")).expect("create stdout file"))
                .stderr(fs::File::create(dir.join("stderr")).expect("create stderr file"))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", kind.program()));
            let mut proxy = RealProxy {
                kind,
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                dir: dir.clone(),
                child,
                service: service.clone(),
                program,
                args,
                envs,
                log_name: log_name.to_owned(),
                ready: ready.to_owned(),
            };
            match proxy.wait_ready(&log, ready) {
                Ok(()) => return proxy,
                Err(StartFailure::Exited(status)) => {
                    failures.push(format!(
                        "attempt {attempt} on port {port}: exited ({status})\n{}",
                        proxy.logs()
                    ));
                    // Keep the directory for the next attempt.
                    proxy.forget_dir();
                }
                Err(StartFailure::TimedOut) => {
                    panic!(
                        "{} did not accept on port {port} within {START_TIMEOUT:?}\n{}",
                        kind.program(),
                        proxy.logs()
                    );
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!(
            "{} failed to start {START_ATTEMPTS} times:\n{}",
            kind.program(),
            failures.join("\n")
        );
    }

    fn wait_ready(&mut self, log: &Path, ready: &str) -> Result<(), StartFailure> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(StartFailure::Exited(status));
            }
            let logged = fs::read(log)
                .map(|b| String::from_utf8_lossy(&b).contains(ready))
                .unwrap_or(false);
            // The log line shows it is our process that bound the port, the
            // connect that it accepts, and try_wait that it did not exit
            // right after (a port lost to another process ends in exit).
            if logged
                && TcpStream::connect_timeout(&self.addr, Duration::from_millis(500)).is_ok()
                && self.child.try_wait().expect("try_wait").is_none()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::TimedOut);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Empties `dir` so that Drop leaves the shared directory in place.
    fn forget_dir(&mut self) {
        self.dir = PathBuf::new();
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The proxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the proxy with SIGKILL, by its PID (this child only), and
    /// reaps it: its connections die with it, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.kind == Kind::Squid {
            remove_shm_segments(&self.service);
        }
    }

    /// Starts the proxy again after [`RealProxy::kill`], on the same port
    /// with the same configuration, and waits until it accepts. A port
    /// still held for a moment by the dead process is retried for up to
    /// [`START_TIMEOUT`].
    pub fn restart(&mut self) {
        let log = self.dir.join(&self.log_name);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let _ = fs::remove_file(&log);
            self.child = Command::new(&self.program)
                .args(&self.args)
                .envs(self.envs.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(fs::File::create(self.dir.join("stdout")).expect("create stdout file"))
                .stderr(fs::File::create(self.dir.join("stderr")).expect("create stderr file"))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.kind.program()));
            let ready = self.ready.clone();
            match self.wait_ready(&log, &ready) {
                Ok(()) => return,
                Err(StartFailure::Exited(status)) if Instant::now() < deadline => {
                    eprintln!(
                        "note: {} exited ({status}) at restart on {}; retrying",
                        self.kind.program(),
                        self.addr
                    );
                    thread::sleep(Duration::from_millis(100));
                }
                Err(_) => panic!(
                    "{} did not restart on {}\n{}",
                    self.kind.program(),
                    self.addr,
                    self.logs()
                ),
            }
        }
    }

    /// The proxy's own log: tinyproxy's log file, or squid's access log
    /// followed by its cache log.
    pub fn logs(&self) -> String {
        let read = |name: &str| {
            fs::read(self.dir.join(name))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        match self.kind {
            Kind::Tinyproxy => format!(
                "--- tinyproxy.log ---\n{}\n--- stderr ---\n{}",
                read("tinyproxy.log"),
                read("stderr")
            ),
            Kind::Squid => format!(
                "--- access.log ---\n{}\n--- cache.log ---\n{}\n--- stderr ---\n{}",
                read("access.log"),
                read("cache.log"),
                read("stderr")
            ),
        }
    }

    /// squid's access log (one line per finished transaction, e.g.
    /// `... TCP_DENIED/407 ... CONNECT 127.0.0.1:4000 - ...`); empty for
    /// tinyproxy.
    pub fn access_log(&self) -> String {
        fs::read(self.dir.join("access.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for RealProxy {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's PID only. squid's auth
        // helpers then see EOF on their stdin and exit by themselves.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.kind == Kind::Squid {
            remove_shm_segments(&self.service);
        }
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if thread::panicking() {
            eprintln!(
                "--- {} on {} ({}) ---\n{}",
                self.kind.program(),
                self.addr,
                self.dir.display(),
                self.logs()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes the shared-memory segments squid names after its service name
/// (`/dev/shm/SERVICE-cf__*.shm`): a killed squid cannot remove them itself.
/// The name is unique to one of our squids, so nothing else is touched.
fn remove_shm_segments(service: &str) {
    let prefix = format!("{service}-");
    let Ok(entries) = fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Connects to `proxy`, asks for a tunnel to `dest` (with `Basic` credentials
/// when given) and returns the socket and the answer's status line. Used to
/// tell a broken test environment from a broken forwarder.
pub fn connect_via(
    proxy: SocketAddr,
    dest: SocketAddr,
    basic: Option<(&str, &str)>,
) -> io::Result<(TcpStream, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&proxy, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n");
    if let Some((user, password)) = basic {
        request.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64(format!("{user}:{password}").as_bytes())
        ));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    // One byte at a time so nothing past the head is consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("proxy closed after {:?}", String::from_utf8_lossy(&head)),
            ));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.lines().next().unwrap_or_default().trim().to_owned();
    Ok((stream, status))
}

/// Standard base64 with padding (RFC 4648), for `Proxy-Authorization`
/// values the tests compute themselves (the `base64` crate the program uses).
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
