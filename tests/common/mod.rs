//! Shared helpers for the integration tests: backends, a scripted fake HTTP
//! proxy, payloads checked by sha256, and a handle on the real binary.
//!
//! Everything here uses blocking std sockets on loopback with read and write
//! timeouts, so a test that hangs fails with a timeout instead of hanging.
//! Waits poll a condition against a deadline; nothing sleeps a fixed time to
//! "let things settle".

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod kdc;
pub mod proxies;
pub mod tls_front;

use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Read/write timeout on every socket the tests own: long enough for a slow
/// debug build on two busy cores, short enough that a hung test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for the binary to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_httptunneling");

/// A SHA-256 digest.
pub type Sha = [u8; 32];

/// Hex form of a digest, for assertion messages.
pub fn hex(digest: &Sha) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------

/// Deterministic pseudo-random byte stream (splitmix64). The stream depends
/// only on the seed, never on how it is cut into chunks.
pub struct Payload {
    state: u64,
    spare: [u8; 8],
    spare_len: usize,
}

impl Payload {
    pub fn new(seed: u64) -> Payload {
        Payload {
            state: seed ^ 0x5DEE_CE66_D1CE_4E5B,
            spare: [0; 8],
            spare_len: 0,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `out` with the next `out.len()` bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while i < out.len() && self.spare_len > 0 {
            out[i] = self.spare[8 - self.spare_len];
            self.spare_len -= 1;
            i += 1;
        }
        let mut chunks = out[i..].chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            self.spare = self.next_u64().to_le_bytes();
            self.spare_len = 8;
            for b in tail {
                *b = self.spare[8 - self.spare_len];
                self.spare_len -= 1;
            }
        }
    }
}

/// The first `len` bytes of the stream for `seed`.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    Payload::new(seed).fill(&mut v);
    v
}

/// sha256 of the first `len` bytes of the stream for `seed`.
pub fn payload_sha(seed: u64, len: u64) -> Sha {
    let mut gen = Payload::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        gen.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    hasher.finalize().into()
}

pub fn sha(bytes: &[u8]) -> Sha {
    Sha256::digest(bytes).into()
}

/// Writes `len` bytes of the stream for `seed` in chunks of `chunk` bytes and
/// returns the sha256 of what was written.
pub fn send_payload(w: &mut impl Write, seed: u64, len: u64, chunk: usize) -> io::Result<Sha> {
    let mut gen = Payload::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0; chunk];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk as u64) as usize;
        gen.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(hasher.finalize().into())
}

/// Reads until EOF; returns the byte count and sha256 of everything read.
pub fn recv_to_eof(r: &mut impl Read) -> io::Result<(u64, Sha)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok((total, hasher.finalize().into())),
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("after {total} bytes: {e}"),
                ))
            }
        }
    }
}

/// Incremental checker of a received stream against the payload of a seed:
/// every byte is compared with the regenerated stream as it arrives, so a
/// failure says at which offset the stream went wrong (stronger than, and
/// in a debug build much cheaper than, comparing sha256 digests).
pub struct StreamCheck {
    seed: u64,
    expected: Payload,
    received: u64,
    first_mismatch: Option<u64>,
    scratch: Vec<u8>,
}

impl StreamCheck {
    pub fn new(seed: u64) -> StreamCheck {
        StreamCheck {
            seed,
            expected: Payload::new(seed),
            received: 0,
            first_mismatch: None,
            scratch: Vec::new(),
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        if self.first_mismatch.is_none() {
            self.scratch.resize(data.len(), 0);
            self.expected.fill(&mut self.scratch);
            if data != &self.scratch[..] {
                let i = data
                    .iter()
                    .zip(&self.scratch)
                    .position(|(a, b)| a != b)
                    .expect("slices differ somewhere");
                self.first_mismatch = Some(self.received + i as u64);
            }
        }
        self.received += data.len() as u64;
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Reads from `r` until EOF, feeding everything.
    pub fn read_to_eof(&mut self, r: &mut impl Read) -> io::Result<()> {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("after {} bytes: {e}", self.received),
                    ))
                }
            }
        }
    }

    /// Panics unless exactly the first `len` bytes of the stream arrived,
    /// byte for byte.
    pub fn assert_complete(self, len: u64, what: &str) {
        assert_eq!(
            self.first_mismatch, None,
            "{what}: first byte that differs from the stream of seed {}",
            self.seed
        );
        assert_eq!(self.received, len, "{what}: byte count");
    }
}

// ---------------------------------------------------------------------------
// Sockets
// ---------------------------------------------------------------------------

/// A port that was free a moment ago on 127.0.0.1, below Linux's
/// ephemeral range (32768–60999): a port the kernel handed out for port 0
/// can be taken again at once by any outgoing connection (the forwarder's
/// own dials included) before the test's program binds it; one below the
/// range cannot. Each process walks its own sequence, checked by binding.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20000;
    const SPAN: u32 = 12000;
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    let in_use = ports_in_use();
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n.wrapping_mul(37)) % SPAN) as u16;
        if !in_use.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Local ports of every TCP socket on the machine, in any state (a
/// connected socket holding a port makes a later bind fail even when a
/// test bind a moment before succeeded).
fn ports_in_use() -> std::collections::HashSet<u16> {
    let mut ports = std::collections::HashSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let local = line.split_whitespace().nth(1).unwrap_or("");
            if let Some(port) = local.rsplit(':').next() {
                if let Ok(p) = u16::from_str_radix(port, 16) {
                    ports.insert(p);
                }
            }
        }
    }
    ports
}

/// Sets the usual timeouts and TCP_NODELAY on a test socket.
pub fn prepare(stream: &TcpStream) {
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("set_write_timeout");
    let _ = stream.set_nodelay(true);
}

/// Connects to `addr` with a deadline and the usual socket settings.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    prepare(&stream);
    stream
}

/// Connects to 127.0.0.1:`port`.
pub fn connect_port(port: u16) -> TcpStream {
    connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}

/// How a connection we expected to be closed ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Eof,
    Reset,
}

/// Waits up to `within` for the peer to close `stream`: a read returning 0
/// or a reset. Panics if data arrives or nothing happens in time. Returns how
/// it closed and how long it took from the call.
pub fn expect_closed(stream: &mut TcpStream, within: Duration, what: &str) -> (Closed, Duration) {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(within))
        .expect("set_read_timeout");
    let mut buf = [0u8; 4096];
    let result = loop {
        match stream.read(&mut buf) {
            Ok(0) => break Closed::Eof,
            Ok(n) => panic!(
                "{what}: expected the connection to be closed, got {n} bytes: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                ) =>
            {
                break Closed::Reset
            }
            Err(e) => panic!(
                "{what}: connection not closed after {:?}: {e}",
                start.elapsed()
            ),
        }
    };
    let elapsed = start.elapsed();
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    (result, elapsed)
}

/// One round trip of `len` random bytes through `port` (which must lead to an
/// echo backend), byte-exact, then a clean close in both directions.
pub fn assert_echo(port: u16, seed: u64, len: usize) {
    let mut stream = connect_port(port);
    let data = payload(seed, len);
    let mut writer = stream.try_clone().expect("try_clone");
    let sender = thread::spawn(move || {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut check = StreamCheck::new(seed);
    check
        .read_to_eof(&mut stream)
        .unwrap_or_else(|e| panic!("echo through port {port}: {e}"));
    sender
        .join()
        .expect("sender thread")
        .unwrap_or_else(|e| panic!("send through port {port}: {e}"));
    check.assert_complete(len as u64, &format!("echo through port {port}"));
}

/// Sets SO_LINGER {on, 0} so that dropping the socket sends a RST.
pub fn set_linger_zero(stream: &TcpStream) {
    use std::os::unix::io::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd owned by `stream` and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt SO_LINGER: {}",
        io::Error::last_os_error()
    );
}

/// Closes `stream` with a RST (SO_LINGER 0).
pub fn reset(stream: TcpStream) {
    set_linger_zero(&stream);
    drop(stream);
}

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (bounded by
/// the hard limit); children inherit it. Returns the soft limit now in force.
pub fn raise_nofile(want: libc::rlim_t) -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit: {}", io::Error::last_os_error());
    if lim.rlim_cur < want {
        lim.rlim_cur = want.min(lim.rlim_max);
        // SAFETY: `lim` is a valid, initialised rlimit.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        assert_eq!(rc, 0, "setrlimit: {}", io::Error::last_os_error());
    }
    lim.rlim_cur
}

/// A listener whose accept queue is full, so the kernel drops further SYNs
/// and a connect to it neither succeeds nor fails until the connector gives
/// up. Keep it alive for as long as the black hole is needed.
pub struct BlackHole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _held: Vec<TcpStream>,
}

impl BlackHole {
    pub fn new() -> BlackHole {
        use std::os::unix::io::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind black hole");
        // SAFETY: a valid listening fd; calling listen again sets the backlog.
        let rc = unsafe { libc::listen(listener.as_raw_fd(), 0) };
        assert_eq!(rc, 0, "listen: {}", io::Error::last_os_error());
        let addr = listener.local_addr().expect("local_addr");
        let mut held = Vec::new();
        // Fill the accept queue: the first connect that times out shows it
        // is full (Linux drops the SYN of a listener whose queue is full).
        loop {
            assert!(held.len() < 64, "could not fill the accept queue of {addr}");
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => held.push(s),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => break,
                Err(e) => panic!("filling the black hole: {e}"),
            }
        }
        BlackHole {
            addr,
            _listener: listener,
            _held: held,
        }
    }
}

impl Default for BlackHole {
    fn default() -> Self {
        BlackHole::new()
    }
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

struct Counters {
    accepted: AtomicUsize,
    active: AtomicUsize,
    max_active: AtomicUsize,
}

/// A TCP server on loopback that runs a handler on its own thread for each
/// accepted connection. Stops accepting when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    /// Listens on 127.0.0.1:0.
    pub fn spawn<F>(handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Backend::spawn_on("127.0.0.1:0".parse().expect("address"), handler)
    }

    /// Listens on `addr` (port 0 for any).
    pub fn spawn_on<F>(addr: SocketAddr, handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind backend on {addr}: {e}"));
        let addr = listener.local_addr().expect("local_addr");
        let counters = Arc::new(Counters {
            accepted: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        {
            let counters = counters.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = conn else { continue };
                    prepare(&stream);
                    counters.accepted.fetch_add(1, Ordering::SeqCst);
                    let now = counters.active.fetch_add(1, Ordering::SeqCst) + 1;
                    counters.max_active.fetch_max(now, Ordering::SeqCst);
                    let handler = handler.clone();
                    let counters = counters.clone();
                    thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn(move || {
                            handler(stream);
                            counters.active.fetch_sub(1, Ordering::SeqCst);
                        })
                        .expect("spawn backend connection thread");
                }
            });
        }
        Backend {
            addr,
            counters,
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose handler is still running.
    pub fn active(&self) -> usize {
        self.counters.active.load(Ordering::SeqCst)
    }

    /// Most handlers running at once so far.
    pub fn max_active(&self) -> usize {
        self.counters.max_active.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Copies `r` to `w` until EOF, then shuts down `w`'s write half. On an
/// error both sockets are shut down. Returns the bytes copied.
pub fn pump(mut r: TcpStream, mut w: TcpStream) -> io::Result<u64> {
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = w.shutdown(Shutdown::Both);
                let _ = r.shutdown(Shutdown::Both);
                return Err(e);
            }
        };
        if let Err(e) = w.write_all(&buf[..n]) {
            let _ = w.shutdown(Shutdown::Both);
            let _ = r.shutdown(Shutdown::Both);
            return Err(e);
        }
        total += n as u64;
    }
    let _ = w.shutdown(Shutdown::Write);
    Ok(total)
}

/// Echo: sends back everything it reads; at EOF shuts down its write half.
pub fn echo_backend() -> Backend {
    Backend::spawn(|stream| {
        let Ok(r) = stream.try_clone() else { return };
        let _ = pump(r, stream);
    })
}

/// What a sink/source backend saw on one connection.
#[derive(Debug, Clone)]
pub struct SinkReport {
    /// Bytes received before EOF.
    pub received: u64,
    /// sha256 of them.
    pub sha: Sha,
    /// Whether the receive side ended in EOF (false: error, see `error`).
    pub error: Option<String>,
    /// Whether all `send_len` bytes were written.
    pub sent_all: bool,
}

/// Sink/source: on each connection, sends `send_len` bytes of the stream for
/// `send_seed` (then shuts down its write half) while at the same time
/// reading everything until EOF and hashing it; reports on the channel.
pub fn sink_source_backend(send_seed: u64, send_len: u64) -> (Backend, mpsc::Receiver<SinkReport>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let backend = Backend::spawn(move |stream| {
        let Ok(mut writer) = stream.try_clone() else {
            return;
        };
        let sender = thread::spawn(move || {
            let ok = send_payload(&mut writer, send_seed, send_len, 64 * 1024).is_ok();
            let _ = writer.shutdown(Shutdown::Write);
            ok
        });
        let mut reader = stream;
        let (received, sha, error) = match recv_to_eof_keep(&mut reader) {
            (n, sha, None) => (n, sha, None),
            (n, sha, Some(e)) => (n, sha, Some(e)),
        };
        let sent_all = sender.join().unwrap_or(false);
        let report = SinkReport {
            received,
            sha,
            error,
            sent_all,
        };
        let _ = tx.lock().expect("sink report channel").send(report);
    });
    (backend, rx)
}

/// Like [`recv_to_eof`] but keeps the count and digest on error.
fn recv_to_eof_keep(r: &mut impl Read) -> (u64, Sha, Option<String>) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (total, hasher.finalize().into(), None),
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (total, hasher.finalize().into(), Some(e.to_string())),
        }
    }
}

/// Waits up to `timeout` for a message on `rx`, panicking with `what` if
/// none arrives.
pub fn recv_within<T>(rx: &mpsc::Receiver<T>, timeout: Duration, what: &str) -> T {
    rx.recv_timeout(timeout)
        .unwrap_or_else(|e| panic!("{what}: nothing within {timeout:?}: {e}"))
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Scripted fake HTTP proxy
// ---------------------------------------------------------------------------

/// One connection accepted by a [`FakeProxy`], handed to its script.
pub struct ProxyConn {
    pub stream: TcpStream,
    /// 0 for the first connection the proxy accepted, then 1, 2, ...
    pub index: usize,
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
    head: Option<Vec<u8>>,
}

/// Largest request head the fake proxy reads before giving up.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

impl ProxyConn {
    /// Reads the request head one byte at a time up to and including the
    /// blank line (CRLF CRLF, or LF LF), so nothing after it is consumed,
    /// records it in the proxy's list and returns it.
    pub fn read_head(&mut self) -> io::Result<Vec<u8>> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "EOF inside the request head after {:?}",
                            String::from_utf8_lossy(&head)
                        ),
                    ))
                }
                Ok(_) => head.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
                break;
            }
            if head.len() > MAX_REQUEST_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "request head too long",
                ));
            }
        }
        self.heads.lock().expect("heads lock").push(head.clone());
        self.head = Some(head.clone());
        Ok(head)
    }

    /// The authority (`host:port`) of the `CONNECT` request read by
    /// [`ProxyConn::read_head`].
    pub fn target(&self) -> Option<String> {
        let head = self.head.as_ref()?;
        let line = head.split(|&b| b == b'\n').next()?;
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        (words.next()? == "CONNECT").then_some(())?;
        words.next().map(str::to_owned)
    }

    /// Writes `bytes` in one write call.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Writes `bytes` one byte per write, `gap` apart.
    pub fn dribble(&mut self, bytes: &[u8], gap: Duration) -> io::Result<()> {
        let _ = self.stream.set_nodelay(true);
        for b in bytes {
            self.stream.write_all(std::slice::from_ref(b))?;
            thread::sleep(gap);
        }
        Ok(())
    }

    /// True when no byte is waiting to be read right now (non-blocking peek).
    pub fn nothing_pending(&self) -> io::Result<bool> {
        self.stream.set_nonblocking(true)?;
        let mut buf = [0u8; 1];
        let result = match self.stream.peek(&mut buf) {
            Ok(0) => Ok(true), // EOF: no data byte pending
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        };
        self.stream.set_nonblocking(false)?;
        result
    }

    /// Bidirectional copy between this connection and `backend` until both
    /// directions end (half-closes are passed on). Returns the bytes copied
    /// (client to backend, backend to client).
    pub fn relay(self, backend: SocketAddr) -> io::Result<(u64, u64)> {
        let upstream = TcpStream::connect_timeout(&backend, Duration::from_secs(5))?;
        prepare(&upstream);
        let (c_r, c_w) = (self.stream.try_clone()?, self.stream);
        let (u_r, u_w) = (upstream.try_clone()?, upstream);
        let up = thread::spawn(move || pump(c_r, u_w));
        let down = pump(u_r, c_w);
        let up = up.join().expect("relay thread");
        Ok((up?, down?))
    }

    /// Relays to the address named in the CONNECT request (an IP literal).
    pub fn relay_to_target(self) -> io::Result<(u64, u64)> {
        let target = self
            .target()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CONNECT target"))?;
        let addr: SocketAddr = target
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, target.clone()))?;
        self.relay(addr)
    }

    /// Keeps the connection open, reading and discarding, until the peer
    /// closes it or `max` passes. Returns when the peer closed it, or `None`
    /// when it did not within `max`.
    pub fn hold(mut self, max: Duration) -> Option<Instant> {
        let deadline = Instant::now() + max;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut buf) {
                Ok(0) => return Some(Instant::now()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(_) => return Some(Instant::now()),
            }
        }
    }
}

/// What a scripted connection does after its answer chunks are written.
#[derive(Clone, Debug)]
pub enum Then {
    /// Relay to this backend (bidirectional copy).
    Relay(SocketAddr),
    /// Relay to the `host:port` named in the request (IP literal).
    RelayToTarget,
    /// Close the connection.
    Close,
    /// Keep it open (reading and discarding) until the peer closes it or
    /// the duration passes.
    Hold(Duration),
}

/// A scripted answer: read the request head, write each chunk after its
/// delay, then do `then`.
#[derive(Clone, Debug)]
pub struct Script {
    pub chunks: Vec<(Duration, Vec<u8>)>,
    pub then: Then,
}

impl Script {
    /// One chunk written at once, then `then`.
    pub fn answer(bytes: impl Into<Vec<u8>>, then: Then) -> Script {
        Script {
            chunks: vec![(Duration::ZERO, bytes.into())],
            then,
        }
    }

    /// Runs this script on `conn`.
    pub fn run(&self, mut conn: ProxyConn) -> io::Result<()> {
        conn.read_head()?;
        for (delay, bytes) in &self.chunks {
            if !delay.is_zero() {
                thread::sleep(*delay);
            }
            conn.send(bytes)?;
        }
        match &self.then {
            Then::Relay(addr) => conn.relay(*addr).map(drop),
            Then::RelayToTarget => conn.relay_to_target().map(drop),
            Then::Close => Ok(()),
            Then::Hold(max) => {
                conn.hold(*max);
                Ok(())
            }
        }
    }
}

/// A fake HTTP proxy on 127.0.0.1:0 that runs a closure on each accepted
/// connection (on its own thread) and records every request head it reads.
pub struct FakeProxy {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
    _backend: Backend,
}

impl FakeProxy {
    pub fn spawn<F>(script: F) -> FakeProxy
    where
        F: Fn(ProxyConn) + Send + Sync + 'static,
    {
        let heads = Arc::new(Mutex::new(Vec::new()));
        let index = Arc::new(AtomicUsize::new(0));
        let backend = {
            let heads = heads.clone();
            Backend::spawn(move |stream| {
                let conn = ProxyConn {
                    stream,
                    index: index.fetch_add(1, Ordering::SeqCst),
                    heads: heads.clone(),
                    head: None,
                };
                script(conn);
            })
        };
        FakeProxy {
            addr: backend.addr,
            heads,
            _backend: backend,
        }
    }

    /// Runs `script` on every connection.
    pub fn scripted(script: Script) -> FakeProxy {
        FakeProxy::spawn(move |conn| {
            let _ = script.run(conn);
        })
    }

    /// Runs `scripts[i]` on connection `i`, and the last one on later ones.
    pub fn sequence(scripts: Vec<Script>) -> FakeProxy {
        assert!(!scripts.is_empty(), "a sequence needs a script");
        FakeProxy::spawn(move |conn| {
            let i = conn.index.min(scripts.len() - 1);
            let _ = scripts[i].run(conn);
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self._backend.accepted()
    }

    /// Request heads read so far, in order.
    pub fn heads(&self) -> Vec<Vec<u8>> {
        self.heads.lock().expect("heads lock").clone()
    }

    /// Waits until at least `n` heads were read; returns them.
    pub fn wait_heads(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        assert!(
            wait_until(timeout, || self.heads.lock().expect("heads lock").len()
                >= n),
            "fake proxy: fewer than {n} request heads within {timeout:?}: {:?}",
            self.heads()
                .iter()
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .collect::<Vec<_>>()
        );
        self.heads()
    }
}

/// A `200` answer followed by a relay to the CONNECT target.
pub fn ok_relay_script() -> Script {
    Script::answer(
        &b"HTTP/1.1 200 Connection established\r\n\r\n"[..],
        Then::RelayToTarget,
    )
}

// ---------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty directory under the system temp dir, unique to this
/// process and call.
pub fn unique_dir(tag: &str) -> PathBuf {
    let n = UNIQUE.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "httptunneling-test-{}-{n}-{nanos}-{tag}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// The listen addresses a config text declares (first field of each entry
/// line; bare ports are 127.0.0.1), for waiting until they listen.
pub fn listen_addrs_of(config: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in config.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        if first == "defaults" {
            continue;
        }
        if let Ok(port) = first.parse::<u16>() {
            out.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        } else if let Ok(addr) = first.parse::<SocketAddr>() {
            out.push(addr);
        }
    }
    out
}

/// Whether a TCP socket in LISTEN state is bound to `addr` in this network
/// namespace, from /proc/net/tcp{,6}. Unlike a probe connect, this opens no
/// tunnel in the program under test, so its log holds only the tests' own.
pub fn is_listening(addr: SocketAddr) -> bool {
    let (file, want) = match addr {
        SocketAddr::V4(a) => (
            "/proc/net/tcp",
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(a.ip().octets()),
                a.port()
            ),
        ),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            let words: String = o
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
                .collect();
            ("/proc/net/tcp6", format!("{words}:{:04X}", a.port()))
        }
    };
    let Ok(text) = fs::read_to_string(file) else {
        return false;
    };
    text.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let _slot = f.next();
        let local = f.next();
        let _remote = f.next();
        let state = f.next();
        local == Some(want.as_str()) && state == Some("0A")
    })
}

/// The binary running on a config, with its log in a file. Killed (by its
/// own PID) when dropped; its log is printed if the test is failing.
pub struct Running {
    child: Child,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    exited: Option<ExitStatus>,
    owns_dir: bool,
}

/// Starts the binary with `-v --log-file LOG CONFIG` and waits until every
/// listen address of `config` is listening.
pub fn spawn_binary(config: &str) -> Running {
    spawn_binary_with(config, &["-v"])
}

/// Like [`spawn_binary`] with other options before `--log-file`.
pub fn spawn_binary_with(config: &str, args: &[&str]) -> Running {
    let mut running = start_binary(config, args);
    running.wait_listening(&listen_addrs_of(config), START_TIMEOUT);
    running
}

/// Starts the binary without waiting for anything, in a fresh directory
/// removed when the [`Running`] is dropped (unless the test is failing).
pub fn start_binary(config: &str, args: &[&str]) -> Running {
    let mut running = start_binary_in(&unique_dir("run"), config, args);
    running.owns_dir = true;
    running
}

/// Starts the binary with `ARGS --log-file DIR/httptunneling.log
/// DIR/tunnels.conf` (the config file written from `config`), stdout and
/// stderr going to `DIR/stdout` and `DIR/stderr`. Waits for nothing and
/// leaves `dir` in place when dropped.
pub fn start_binary_in(dir: &Path, config: &str, args: &[&str]) -> Running {
    start_binary_in_env(dir, config, args, &[])
}

/// Like [`spawn_binary_with`], with `env` added to the binary's environment
/// (e.g. `KRB5CCNAME` and `KRB5_CONFIG` from `kdc::Kdc::client_env`).
pub fn spawn_binary_env(config: &str, args: &[&str], env: &[(String, String)]) -> Running {
    let mut running = start_binary_in_env(&unique_dir("run"), config, args, env);
    running.owns_dir = true;
    running.wait_listening(&listen_addrs_of(config), START_TIMEOUT);
    running
}

/// Like [`start_binary_in`], with `env` added to the binary's environment.
pub fn start_binary_in_env(
    dir: &Path,
    config: &str,
    args: &[&str],
    env: &[(String, String)],
) -> Running {
    start_binary_in_vars(dir, config, args, env, false)
}

/// Like [`spawn_binary_with`]; the child's proxy variables
/// ([`PROXY_VARIABLES`]) are exactly those of `vars`, whatever the test's
/// own environment holds (for `env` entries).
pub fn spawn_binary_proxy_env(config: &str, args: &[&str], vars: &[(&str, &str)]) -> Running {
    let env: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut running = start_binary_in_vars(&unique_dir("run"), config, args, &env, true);
    running.owns_dir = true;
    running.wait_listening(&listen_addrs_of(config), START_TIMEOUT);
    running
}

/// Like [`spawn_binary_with`], with `files` (name, contents) written into
/// the config's folder first (e.g. a `proxy-ca` file named relative to it).
pub fn spawn_binary_with_files(config: &str, args: &[&str], files: &[(&str, &str)]) -> Running {
    let dir = unique_dir("run");
    for (name, text) in files {
        fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
    let mut running = start_binary_in(&dir, config, args);
    running.owns_dir = true;
    running.wait_listening(&listen_addrs_of(config), START_TIMEOUT);
    running
}

/// [`start_binary_in_env`]; with `clear_proxy_vars`, every one of
/// [`PROXY_VARIABLES`] is removed first, so `env` holds the only ones.
fn start_binary_in_vars(
    dir: &Path,
    config: &str,
    args: &[&str],
    env: &[(String, String)],
    clear_proxy_vars: bool,
) -> Running {
    let config_path = dir.join("tunnels.conf");
    let log_path = dir.join("httptunneling.log");
    fs::write(&config_path, config).expect("write config");
    let mut command = Command::new(BIN);
    if clear_proxy_vars {
        for name in PROXY_VARIABLES {
            command.env_remove(name);
        }
    }
    let child = command
        .args(args)
        .arg("--log-file")
        .arg(&log_path)
        .arg(&config_path)
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("stdout")).expect("create stdout file"))
        .stderr(fs::File::create(dir.join("stderr")).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    Running {
        child,
        dir: dir.to_owned(),
        config_path,
        log_path,
        exited: None,
        owns_dir: false,
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until each of `addrs` is listening; panics (with the log) if the
    /// process exits first or the deadline passes.
    pub fn wait_listening(&mut self, addrs: &[SocketAddr], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if addrs.iter().all(|a| is_listening(*a)) {
                return;
            }
            if let Some(status) = self.try_exit() {
                panic!(
                    "httptunneling exited ({status}) before listening on {addrs:?}\n{}",
                    self.diagnostics()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "httptunneling not listening on {addrs:?} after {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Panics unless the process is still running.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.try_exit() {
            panic!("httptunneling exited ({status})\n{}", self.diagnostics());
        }
    }

    /// Sends `signal` to this child (by its PID). Panics if it has exited.
    pub fn signal(&mut self, signal: libc::c_int) {
        if let Some(status) = self.try_exit() {
            panic!(
                "cannot signal: httptunneling already exited ({status})\n{}",
                self.diagnostics()
            );
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's PID. It has not been reaped (we
        // reap only through `try_exit`/`wait`, just checked), so the PID
        // cannot name another process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            io::Error::last_os_error()
        );
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// What the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    /// Log lines that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Polls the log until a line contains `needle`; false after `timeout`.
    pub fn log_contains(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().lines().any(|l| l.contains(needle)))
    }

    /// Waits for a log line containing `needle` and returns it; panics with
    /// the whole log after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log_count(needle, 1, timeout).remove(0)
    }

    /// Waits until at least `n` log lines contain `needle`; returns them all.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        if wait_until(timeout, || {
            lines = self.log_lines(needle);
            lines.len() >= n
        }) {
            return lines;
        }
        panic!(
            "expected {n} log line(s) containing {needle:?} within {timeout:?}, found {}\n{}",
            lines.len(),
            self.diagnostics()
        );
    }

    /// Log, stderr and stdout, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- log {} ---\n{}\n--- stderr ---\n{}\n--- stdout ---\n{}",
            self.log_path.display(),
            tail(&self.log(), 200),
            tail(&self.stderr(), 50),
            tail(&self.stdout(), 50)
        )
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            // Child::kill sends SIGKILL to this child's PID only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("{}", self.diagnostics());
        } else if self.owns_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs the binary with `args` to completion (killing it after `timeout`)
/// and returns its output.
pub fn run_binary<S: AsRef<std::ffi::OsStr>>(args: &[S], timeout: Duration) -> Output {
    run_binary_env(args, None, timeout)
}

/// The proxy variables `env` reads (SPEC "Proxy from the environment").
pub const PROXY_VARIABLES: [&str; 8] = [
    "https_proxy",
    "HTTPS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// [`run_binary`]; with `vars`, the child's proxy variables are exactly
/// those of `vars` (every other one is removed), whatever the test's own
/// environment holds.
pub fn run_binary_env<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    vars: Option<&[(&str, &str)]>,
    timeout: Duration,
) -> Output {
    let mut command = Command::new(BIN);
    if let Some(vars) = vars {
        for name in PROXY_VARIABLES {
            command.env_remove(name);
        }
        command.envs(vars.iter().copied());
    }
    let mut child = command
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    // Read both pipes on threads so a chatty child cannot block on them.
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
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
            panic!("{BIN} {args:?} still running after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
    }
}

/// Writes `text` to a fresh file named `name` in a fresh directory.
pub fn write_temp(name: &str, text: &str) -> PathBuf {
    let path = unique_dir("file").join(name);
    fs::write(&path, text).expect("write temp file");
    path
}

/// Removes the directory holding `path` (a file from [`write_temp`]).
pub fn remove_temp(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = fs::remove_dir_all(dir);
    }
}

// ---------------------------------------------------------------------------
// The process under test, from /proc
// ---------------------------------------------------------------------------

/// Clock ticks per second of the times in /proc/PID/stat and the timers in
/// /proc/net/tcp.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(hz > 0, "sysconf(_SC_CLK_TCK)");
    hz as f64
}

/// User plus system CPU time used so far by process `pid` (all threads).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name (field 2) is in parentheses and may hold spaces;
    // fields 14 and 15 (utime, stime) count from after its closing one.
    let rest = &stat[stat.rfind(')').expect("comm field") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_secs_f64(ticks as f64 / clock_ticks())
}

/// CPU time `pid` uses during the next `window` (a measurement window: the
/// wait is the point).
pub fn cpu_over(pid: u32, window: Duration) -> Duration {
    let before = cpu_time(pid);
    thread::sleep(window);
    cpu_time(pid).saturating_sub(before)
}

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// What each open descriptor of `pid` points to, for failure messages.
pub fn fd_list(pid: u32) -> String {
    let mut out = Vec::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let target = fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            out.push(format!("{} -> {target}", e.file_name().to_string_lossy()));
        }
    }
    out.sort();
    out.join("\n")
}

/// Sets the soft and hard RLIMIT_NOFILE of the running process `pid`
/// (prlimit(2): the same as setrlimit in the child before exec, but it lets
/// the test use the ordinary spawn helper).
pub fn limit_fds(pid: u32, n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n as libc::rlim_t,
        rlim_max: n as libc::rlim_t,
    };
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: a valid rlimit; a null old-limit pointer is allowed. `pid` is
    // our own unreaped child, so it names no other process.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", io::Error::last_os_error());
}
