//! Chaos: a few hundred tunnels through one running binary, each drawn at
//! random (seeded; the seed is printed, `CHAOS_SEED=N` replays it) from
//! three ways in and seven behaviours, at most [`CONCURRENCY`] at a time.
//!
//! Ways in: a direct entry; an entry through a [`FakeProxy`] that answers
//! `200` and relays; a `socks` entry spoken to by a raw SOCKS 5 client
//! (greeting and request sent apart or pipelined, the first data sometimes
//! sent before the reply). All lead to one backend that learns what to do
//! from a 16-byte header the client sends first (tunnel id, magic).
//!
//! Behaviours: a clean exchange of random size both ways at once; a
//! half-close from the client with data still flowing back; a half-close
//! from the destination with data still flowing up; a reset from the client
//! mid-transfer; a reset from the destination mid-transfer; a destination
//! that stalls, then resumes, while the client writes far more than the
//! buffers hold; a client that connects and leaves (FIN or RST).
//!
//! Checked: every tunnel that completes is byte-exact both ways (sha256 at
//! each end) and its close line (found by the client's port) says exactly
//! `closed up=U down=D` with `reason=eof`; every one that fails ends on
//! both sides (no side left waiting) with a logged end line and reason, and
//! whatever did arrive is an exact prefix of what was sent. Afterwards the
//! backend has no connection left, the binary's descriptors are back at
//! their baseline and it uses (almost) no CPU over 1 s of idle.

mod common;

use common::*;
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Tunnels at once.
const CONCURRENCY: usize = 32;
/// Tunnels in a run (`CHAOS_TUNNELS` overrides).
const TUNNELS: usize = 800;
/// No tunnel starts after this much time: the run stays under a minute on
/// a slow machine, with fewer tunnels.
const LAUNCH_BUDGET: Duration = Duration::from_secs(40);
/// Read/write timeout of every chaos socket: a side left waiting this long
/// is a failure.
const CHAOS_IO: Duration = Duration::from_secs(20);
/// What a side keeps sending while waiting to be reset: more than every
/// buffer on the way, far less than it could send before the reset lands.
const LONG: u64 = 64 << 20;
/// The tunnel header's second word.
const MAGIC: u64 = 0xC4A0_5C4A_05C4_A05C;
/// The entries' buffer size: small, so that buffers fill.
const BUFFER: &str = "16k";
const BUFFER_KIB: u64 = 16;
/// RSS the binary may keep after the run beyond its ring pool: allocator
/// slack, the slab, the log's formatting buffers.
const RSS_SLACK_KIB: u64 = 4096;
/// SO_RCVBUF of the stalling destination, SO_SNDBUF of its client.
const STALL_RCVBUF: usize = 32 << 10;

/// When each stalled destination resumed reading, and when its client's
/// last write returned: a stall "held" the client when the second is
/// later, i.e. its writes did not fit in the buffers on the way.
static RESUMED: Mutex<Vec<(u64, Instant)>> = Mutex::new(Vec::new());
static SENDS_DONE: Mutex<Vec<(u64, Instant)>> = Mutex::new(Vec::new());

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Via {
    Direct,
    Proxy,
    Socks,
    /// Through a real tinyproxy in its own process, killed with SIGKILL
    /// while tunnels through it are mid-transfer, then restarted.
    Killed,
}

#[derive(Clone, Copy, Debug)]
enum Case {
    /// Both ways at once; the client shuts down its write half after `up`
    /// bytes, the destination after `down`.
    Clean { up: u64, down: u64 },
    /// The client sends `up` bytes and shuts down; only once the
    /// destination has read its EOF does it send `down` bytes.
    HalfCloseClient { up: u64, down: u64 },
    /// The destination sends `down` bytes and shuts down; only once the
    /// client has read that EOF does it send `up` bytes.
    HalfCloseServer { up: u64, down: u64 },
    /// The client sends `up` bytes, reads `after` bytes of an endless
    /// download, then resets.
    ResetByClient { up: u64, after: u64 },
    /// The destination reads `after` bytes of an endless upload, sends
    /// `down` bytes, then resets.
    ResetByServer { after: u64, down: u64 },
    /// The destination reads nothing for `stall_ms`, then everything, while
    /// the client writes `up` bytes (megabytes); both ways at once.
    Stall { up: u64, down: u64, stall_ms: u64 },
    /// The client connects and closes at once (with a RST if `reset`).
    Leave { reset: bool },
    /// Both sides send endlessly until the proxy between them is killed;
    /// each then sees an EOF or a reset, and what arrived before it is a
    /// prefix of what was sent.
    ProxyKilled,
    /// Both ways at once without a half-close (tinyproxy closes the whole
    /// tunnel on the first FIN): each side reads all it is owed, then the
    /// destination closes and the client reads that EOF.
    Exchange { up: u64, down: u64 },
}

impl Case {
    fn name(&self) -> &'static str {
        match self {
            Case::Clean { .. } => "clean",
            Case::HalfCloseClient { .. } => "half-close-client",
            Case::HalfCloseServer { .. } => "half-close-server",
            Case::ResetByClient { .. } => "reset-by-client",
            Case::ResetByServer { .. } => "reset-by-server",
            Case::Stall { .. } => "stall",
            Case::Leave { reset: false } => "leave",
            Case::Leave { reset: true } => "leave-rst",
            Case::ProxyKilled => "proxy-killed",
            Case::Exchange { .. } => "exchange",
        }
    }

    /// `(up, down)` as the close line must count them, for the cases that
    /// complete (the header included in `up`).
    fn exact(&self) -> Option<(u64, u64)> {
        match *self {
            Case::Clean { up, down }
            | Case::HalfCloseClient { up, down }
            | Case::HalfCloseServer { up, down }
            | Case::Stall { up, down, .. }
            | Case::Exchange { up, down } => Some((16 + up, down)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Plan {
    id: u64,
    via: Via,
    case: Case,
    /// Seeds of the client's and the destination's streams.
    seed_up: u64,
    seed_down: u64,
    /// Write size of both sides.
    chunk: usize,
    /// SOCKS: greeting and request in one write; header before the reply.
    pipeline: bool,
    early_data: bool,
    domain_atyp: bool,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tunnel #{} via {:?}: {:?}", self.id, self.via, self.case)?;
        if self.via == Via::Socks {
            write!(
                f,
                " (pipeline={} early={} domain={})",
                self.pipeline, self.early_data, self.domain_atyp
            )?;
        }
        write!(f, " chunk={}", self.chunk)
    }
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    /// A size spread over orders of magnitude: 0, a few bytes, KiB, up to
    /// `max`.
    fn size(&mut self, max: u64) -> u64 {
        match self.below(10) {
            0 => 0,
            1 => 1 + self.below(16),
            2..=4 => 1 + self.below(16 << 10),
            5..=7 => 1 + self.below(256 << 10),
            _ => 1 + self.below(max),
        }
    }
}

fn draw(rng: &mut Rng, id: u64, seed: u64) -> Plan {
    let via = match rng.below(3) {
        0 => Via::Direct,
        1 => Via::Proxy,
        _ => Via::Socks,
    };
    let case = match rng.below(100) {
        0..=29 => Case::Clean {
            up: rng.size(8 << 20),
            down: rng.size(8 << 20),
        },
        30..=41 => Case::HalfCloseClient {
            up: rng.size(4 << 20),
            down: rng.size(4 << 20),
        },
        42..=53 => Case::HalfCloseServer {
            up: rng.size(4 << 20),
            down: rng.size(4 << 20),
        },
        54..=65 => Case::ResetByClient {
            up: rng.size(256 << 10),
            after: 1 + rng.below(512 << 10),
        },
        66..=77 => Case::ResetByServer {
            after: 1 + rng.below(512 << 10),
            down: rng.size(64 << 10),
        },
        78..=89 => Case::Stall {
            up: (4 << 20) + rng.below(12 << 20),
            down: rng.size(256 << 10),
            stall_ms: 200 + rng.below(600),
        },
        _ => Case::Leave {
            reset: rng.chance(50),
        },
    };
    let chunk = match rng.below(4) {
        0 => 1 + rng.below(512) as usize,
        1 => 1 + rng.below(8192) as usize,
        _ => 1 + rng.below(64 << 10) as usize,
    };
    Plan {
        id,
        via,
        case,
        seed_up: seed ^ (id << 1),
        seed_down: seed ^ (id << 1 | 1),
        chunk,
        pipeline: rng.chance(50),
        early_data: rng.chance(50),
        domain_atyp: rng.chance(30),
    }
}

// ---------------------------------------------------------------------------
// Both ends
// ---------------------------------------------------------------------------

fn chaos_socket(s: &TcpStream) {
    s.set_read_timeout(Some(CHAOS_IO))
        .expect("set_read_timeout");
    s.set_write_timeout(Some(CHAOS_IO))
        .expect("set_write_timeout");
    let _ = s.set_nodelay(true);
}

/// Reads until EOF or an error; the count, the digest, and the error.
fn drain(r: &mut TcpStream) -> (u64, Sha, Option<io::Error>) {
    drain_counting(r, Arc::new(AtomicU64::new(0)))
}

/// Reads until EOF or an error, adding every byte read to `seen` as it
/// comes; the count, the digest, and the error.
fn drain_counting(r: &mut TcpStream, seen: Arc<AtomicU64>) -> (u64, Sha, Option<io::Error>) {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (total, hasher.finalize().into(), None),
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
                seen.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (total, hasher.finalize().into(), Some(e)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Client,
    Destination,
}

/// Bytes each side of a [`Case::ProxyKilled`] tunnel has read so far.
static PROGRESS: Mutex<Vec<(u64, Side, Arc<AtomicU64>)>> = Mutex::new(Vec::new());

fn progress(id: u64, side: Side) -> Arc<AtomicU64> {
    let mut all = PROGRESS.lock().expect("progress");
    if let Some((_, _, c)) = all.iter().find(|(i, s, _)| *i == id && *s == side) {
        return c.clone();
    }
    let c = Arc::new(AtomicU64::new(0));
    all.push((id, side, c.clone()));
    c
}

/// Reads exactly `n` bytes and checks they are the start of `seed`'s stream.
fn read_prefix(r: &mut TcpStream, seed: u64, n: u64, what: &str) -> Result<(), String> {
    let mut buf = vec![0; n as usize];
    r.read_exact(&mut buf)
        .map_err(|e| format!("{what}: reading the first {n} bytes: {e}"))?;
    if buf != payload(seed, n as usize) {
        return Err(format!(
            "{what}: the first {n} bytes differ from what was sent"
        ));
    }
    Ok(())
}

/// Sets SO_SNDBUF or SO_RCVBUF (which also stops the kernel growing it).
fn set_buffer(s: &TcpStream, option: libc::c_int, bytes: libc::c_int) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a valid descriptor owned by `s` and an int-sized option.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            &bytes as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", io::Error::last_os_error());
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A stream that ended (EOF or a reset) and is an exact prefix of `seed`'s
/// stream of at most `max` bytes; an I/O timeout is a side left waiting.
fn check_prefix_end(
    (n, digest, err): (u64, Sha, Option<io::Error>),
    seed: u64,
    max: u64,
    what: &str,
) -> Result<(), String> {
    if let Some(e) = &err {
        if timed_out(e) {
            return Err(format!(
                "{what}: still open after {CHAOS_IO:?} ({n} bytes read)"
            ));
        }
    }
    if n > max {
        return Err(format!("{what}: {n} bytes, more than the {max} sent"));
    }
    if digest != payload_sha(seed, n) {
        return Err(format!(
            "{what}: the {n} bytes received are not the start of what was sent"
        ));
    }
    Ok(())
}

/// A stream that ended cleanly with exactly `len` bytes of `seed`'s stream.
fn check_exact(
    (n, digest, err): (u64, Sha, Option<io::Error>),
    seed: u64,
    len: u64,
    what: &str,
) -> Result<(), String> {
    if let Some(e) = err {
        return Err(format!("{what}: error after {n} of {len} bytes: {e}"));
    }
    if n != len {
        return Err(format!("{what}: {n} bytes instead of {len}"));
    }
    if digest != payload_sha(seed, len) {
        return Err(format!("{what}: {len} bytes, but not the ones sent (sha)"));
    }
    Ok(())
}

/// Sends `len` bytes of `seed`'s stream on a clone of `s` from a thread,
/// then shuts down the write half if `shutdown`.
fn spawn_sender(
    s: &TcpStream,
    seed: u64,
    len: u64,
    chunk: usize,
    shutdown: bool,
) -> thread::JoinHandle<io::Result<Sha>> {
    let mut w = s.try_clone().expect("try_clone");
    thread::spawn(move || {
        let sha = send_payload(&mut w, seed, len, chunk)?;
        if shutdown {
            w.shutdown(Shutdown::Write)?;
        }
        Ok(sha)
    })
}

fn joined(h: thread::JoinHandle<io::Result<Sha>>, what: &str) -> Result<(), String> {
    match h.join() {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{what}: send: {e}")),
        Err(_) => Err(format!("{what}: sender panicked")),
    }
}

/// A sender expected to be cut off by a reset: any error but a timeout.
fn joined_cut(h: thread::JoinHandle<io::Result<Sha>>, what: &str) -> Result<(), String> {
    match h.join() {
        Ok(Ok(_)) => Err(format!("{what}: sent all {LONG} bytes, no reset came")),
        Ok(Err(e)) if timed_out(&e) => Err(format!(
            "{what}: send blocked for {CHAOS_IO:?}: the other side neither read nor closed"
        )),
        Ok(Err(_)) => Ok(()),
        Err(_) => Err(format!("{what}: sender panicked")),
    }
}

// ---------------------------------------------------------------------------
// The destination
// ---------------------------------------------------------------------------

type Plans = Arc<Mutex<HashMap<u64, Plan>>>;
type Reports = Arc<Mutex<HashMap<u64, Result<(), String>>>>;

/// A destination: a listener on 127.0.0.1:0 (its accepted sockets with a
/// fixed `rcvbuf`, set before `listen` so that the window they advertise
/// matches it, when given), a thread per connection.
struct Destination {
    addr: SocketAddr,
    active: Arc<AtomicUsize>,
}

impl Destination {
    fn spawn(rcvbuf: Option<usize>, plans: Plans, reports: Reports) -> Destination {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        if let Some(bytes) = rcvbuf {
            socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        }
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        socket.bind(&any.into()).expect("bind");
        socket.listen(1024).expect("listen");
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr().expect("local_addr");
        let active = Arc::new(AtomicUsize::new(0));
        let counter = active.clone();
        // Lives as long as the test process, like the connections it serves.
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(stream) = conn else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let (plans, reports, counter) = (plans.clone(), reports.clone(), counter.clone());
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        destination(stream, &plans, &reports);
                        counter.fetch_sub(1, Ordering::SeqCst);
                    })
                    .expect("spawn destination thread");
            }
        });
        Destination { addr, active }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

fn destination(mut s: TcpStream, plans: &Plans, reports: &Reports) {
    chaos_socket(&s);
    let mut header = [0u8; 16];
    // A client that left: the tunnel may still have opened this
    // connection; it must close it.
    if s.read_exact(&mut header).is_err() {
        return;
    }
    let id = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
    let magic = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
    let plan = plans.lock().expect("plans").get(&id).copied();
    let result = match plan {
        Some(plan) if magic == MAGIC => serve(&plan, s),
        _ => Err(format!("bad tunnel header {header:02x?}")),
    };
    reports.lock().expect("reports").insert(id, result);
}

fn serve(p: &Plan, mut s: TcpStream) -> Result<(), String> {
    let what = "destination";
    match p.case {
        Case::Clean { up, down } => {
            let h = spawn_sender(&s, p.seed_down, down, p.chunk, true);
            let got = drain(&mut s);
            joined(h, what)?;
            check_exact(got, p.seed_up, up, what)
        }
        Case::HalfCloseClient { up, down } => {
            check_exact(drain(&mut s), p.seed_up, up, what)?;
            send_payload(&mut s, p.seed_down, down, p.chunk)
                .map_err(|e| format!("{what}: send after the client's EOF: {e}"))?;
            s.shutdown(Shutdown::Write)
                .map_err(|e| format!("{what}: shutdown: {e}"))
        }
        Case::HalfCloseServer { up, down } => {
            send_payload(&mut s, p.seed_down, down, p.chunk)
                .map_err(|e| format!("{what}: send: {e}"))?;
            s.shutdown(Shutdown::Write)
                .map_err(|e| format!("{what}: shutdown: {e}"))?;
            check_exact(drain(&mut s), p.seed_up, up, what)
        }
        Case::ResetByClient { up, .. } => {
            let h = spawn_sender(&s, p.seed_down, LONG, p.chunk, true);
            let got = drain(&mut s);
            let r = check_prefix_end(got, p.seed_up, up, what);
            // Our write fails once the tunnel is gone; the read result
            // says whether it went.
            let _ = s.shutdown(Shutdown::Both);
            let _ = h.join();
            r
        }
        Case::ResetByServer { after, down } => {
            read_prefix(&mut s, p.seed_up, after, what)?;
            send_payload(&mut s, p.seed_down, down, p.chunk)
                .map_err(|e| format!("{what}: send: {e}"))?;
            reset(s);
            Ok(())
        }
        Case::Stall { up, down, stall_ms } => {
            thread::sleep(Duration::from_millis(stall_ms));
            RESUMED
                .lock()
                .expect("resumed")
                .push((p.id, Instant::now()));
            let h = spawn_sender(&s, p.seed_down, down, p.chunk, true);
            let got = drain(&mut s);
            joined(h, what)?;
            check_exact(got, p.seed_up, up, what)
        }
        Case::Exchange { up, down } => {
            let h = spawn_sender(&s, p.seed_down, down, p.chunk, false);
            read_prefix(&mut s, p.seed_up, up, what)?;
            joined(h, what)?;
            s.shutdown(Shutdown::Write)
                .map_err(|e| format!("{what}: shutdown: {e}"))?;
            // The proxy closes the whole tunnel on our FIN: nothing more.
            check_exact(drain(&mut s), p.seed_up, 0, what)
        }
        Case::ProxyKilled => {
            let h = spawn_sender(&s, p.seed_down, LONG, p.chunk, false);
            let got = drain_counting(&mut s, progress(p.id, Side::Destination));
            let r = check_prefix_end(got, p.seed_up, LONG, what);
            let cut = joined_cut(h, what);
            r.and(cut)
        }
        Case::Leave { .. } => Err(format!("{what}: a leaving client sent a header")),
    }
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

/// The entries, and the destinations they lead to: the stall cases go to
/// a destination with small receive buffers (and a client with a small
/// send buffer), so that what fills up is the tunnel's.
#[derive(Clone, Copy)]
struct Ports {
    killed: u16,
    direct: u16,
    direct_stall: u16,
    proxy: u16,
    proxy_stall: u16,
    socks: u16,
    backend: u16,
    backend_stall: u16,
}

fn header(id: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&id.to_le_bytes());
    h[8..].copy_from_slice(&MAGIC.to_le_bytes());
    h
}

/// SOCKS 5 to 127.0.0.1:`port`, the tunnel header written as early data
/// (before the reply) or after it.
fn socks5(s: &mut TcpStream, p: &Plan, port: u16) -> Result<(), String> {
    let greeting = [5u8, 1, 0];
    let mut request = vec![5u8, 1, 0];
    if p.domain_atyp {
        request.push(3);
        request.push(9);
        request.extend_from_slice(b"127.0.0.1");
    } else {
        request.extend_from_slice(&[1, 127, 0, 0, 1]);
    }
    request.extend_from_slice(&port.to_be_bytes());
    let e = |what: &str, err: io::Error| format!("socks: {what}: {err}");
    if p.pipeline {
        let mut both = greeting.to_vec();
        both.extend_from_slice(&request);
        if p.early_data {
            both.extend_from_slice(&header(p.id));
        }
        s.write_all(&both).map_err(|err| e("write", err))?;
    } else {
        s.write_all(&greeting)
            .map_err(|err| e("write greeting", err))?;
    }
    let mut method = [0u8; 2];
    s.read_exact(&mut method)
        .map_err(|err| e("read method", err))?;
    if method != [5, 0] {
        return Err(format!("socks: method selection {method:02x?}"));
    }
    if !p.pipeline {
        let mut rest = request.clone();
        if p.early_data {
            rest.extend_from_slice(&header(p.id));
        }
        s.write_all(&rest).map_err(|err| e("write request", err))?;
    }
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)
        .map_err(|err| e("read reply", err))?;
    if reply[..2] != [5, 0] {
        return Err(format!("socks: reply {reply:02x?}"));
    }
    if !p.early_data {
        s.write_all(&header(p.id))
            .map_err(|err| e("write header", err))?;
    }
    Ok(())
}

/// Runs the client side of `p`; returns the entry's port and the client's.
fn client(p: &Plan, ports: Ports) -> (Option<(u16, u16)>, Result<(), String>) {
    let stall = matches!(p.case, Case::Stall { .. });
    let port = match (p.via, stall) {
        (Via::Direct, false) => ports.direct,
        (Via::Direct, true) => ports.direct_stall,
        (Via::Proxy, false) => ports.proxy,
        (Via::Proxy, true) => ports.proxy_stall,
        (Via::Socks, _) => ports.socks,
        (Via::Killed, _) => ports.killed,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return (None, Err(format!("connect to {addr}: {e}"))),
    };
    chaos_socket(&s);
    let cport = (port, s.local_addr().expect("local_addr").port());
    if let Case::Leave { reset: rst } = p.case {
        if rst {
            reset(s);
        }
        return (Some(cport), Ok(()));
    }
    let start = if p.via == Via::Socks {
        let to = if stall {
            ports.backend_stall
        } else {
            ports.backend
        };
        socks5(&mut s, p, to)
    } else {
        s.write_all(&header(p.id))
            .map_err(|e| format!("write header: {e}"))
    };
    (Some(cport), start.and_then(|()| exchange(p, s)))
}

fn exchange(p: &Plan, mut s: TcpStream) -> Result<(), String> {
    let what = "client";
    match p.case {
        Case::Clean { up, down } => {
            let h = spawn_sender(&s, p.seed_up, up, p.chunk, true);
            let got = drain(&mut s);
            joined(h, what)?;
            check_exact(got, p.seed_down, down, what)
        }
        Case::Stall { up, down, .. } => {
            set_buffer(&s, libc::SO_SNDBUF, STALL_RCVBUF as libc::c_int);
            let mut w = s.try_clone().expect("try_clone");
            let (seed, chunk) = (p.seed_up, p.chunk);
            let h = thread::spawn(move || {
                let r =
                    send_payload(&mut w, seed, up, chunk).and_then(|_| w.shutdown(Shutdown::Write));
                (r, Instant::now())
            });
            let got = drain(&mut s);
            let (sent, finished) = h.join().map_err(|_| format!("{what}: sender panicked"))?;
            sent.map_err(|e| format!("{what}: send: {e}"))?;
            SENDS_DONE.lock().expect("sends").push((p.id, finished));
            check_exact(got, p.seed_down, down, what)
        }
        Case::HalfCloseClient { up, down } => {
            send_payload(&mut s, p.seed_up, up, p.chunk)
                .map_err(|e| format!("{what}: send: {e}"))?;
            s.shutdown(Shutdown::Write)
                .map_err(|e| format!("{what}: shutdown: {e}"))?;
            check_exact(drain(&mut s), p.seed_down, down, what)
        }
        Case::HalfCloseServer { up, down } => {
            check_exact(drain(&mut s), p.seed_down, down, what)?;
            send_payload(&mut s, p.seed_up, up, p.chunk)
                .map_err(|e| format!("{what}: send after the destination's EOF: {e}"))?;
            s.shutdown(Shutdown::Write)
                .map_err(|e| format!("{what}: shutdown: {e}"))
        }
        Case::ResetByClient { up, after } => {
            send_payload(&mut s, p.seed_up, up, p.chunk)
                .map_err(|e| format!("{what}: send: {e}"))?;
            read_prefix(&mut s, p.seed_down, after, what)?;
            reset(s);
            Ok(())
        }
        Case::ResetByServer { down, .. } => {
            let h = spawn_sender(&s, p.seed_up, LONG, p.chunk, false);
            let got = drain(&mut s);
            let r = check_prefix_end(got, p.seed_down, down, what);
            // The sender may be blocked on a full buffer of a tunnel that
            // closed only its read side towards us: that is a side left
            // waiting, which joined_cut reports after CHAOS_IO.
            let cut = joined_cut(h, what);
            r.and(cut)
        }
        Case::Exchange { up, down } => {
            let h = spawn_sender(&s, p.seed_up, up, p.chunk, false);
            read_prefix(&mut s, p.seed_down, down, what)?;
            joined(h, what)?;
            // The destination's FIN, then our close.
            check_exact(drain(&mut s), p.seed_down, 0, what)
        }
        Case::ProxyKilled => {
            let h = spawn_sender(&s, p.seed_up, LONG, p.chunk, false);
            let got = drain_counting(&mut s, progress(p.id, Side::Client));
            let r = check_prefix_end(got, p.seed_down, LONG, what);
            let cut = joined_cut(h, what);
            r.and(cut)
        }
        Case::Leave { .. } => unreachable!("handled before the header"),
    }
}

// ---------------------------------------------------------------------------
// The binary's side: log lines and /proc
// ---------------------------------------------------------------------------

/// The end line of each tunnel in `log` (`closed up=...`, `closed before
/// forwarding: ...` or `failed: ...`), by entry port and client port (the
/// kernel may give one client port to two connections to different entries
/// at once, and reuses ports over a run).
fn end_lines(log: &str) -> HashMap<(u16, u16), Vec<String>> {
    let mut out: HashMap<(u16, u16), Vec<String>> = HashMap::new();
    for line in log.lines() {
        if !(line.contains(": closed ") || line.contains(": failed: ")) {
            continue;
        }
        // "tunnel N 127.0.0.1:LISTEN <- 127.0.0.1:CLIENT -> ..."
        let Some(arrow) = line.find(" <- 127.0.0.1:") else {
            continue;
        };
        let port_before = |s: &str| -> Option<u16> { s.rsplit(':').next()?.parse().ok() };
        let listen = line[..arrow].rsplit(' ').next().and_then(port_before);
        let rest = &line[arrow + " <- 127.0.0.1:".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let (Some(listen), Ok(client)) = (listen, digits.parse()) {
            out.entry((listen, client))
                .or_default()
                .push(line.to_string());
        }
    }
    out
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------

/// Rounds of the proxy kill, run alongside the mix.
const KILL_ROUNDS: u64 = 3;
/// Tunnels through the tinyproxy entry in each round: killed mid-transfer,
/// then as many exchanges through the restarted proxy.
const KILL_TUNNELS: u64 = 8;
/// What each side of a tunnel to be killed reads before the kill.
const KILL_AFTER: u64 = 256 << 10;
/// How long after the kill every tunnel through the proxy must have ended.
const KILL_ENDS_WITHIN: Duration = Duration::from_secs(10);
/// Ids of the kill rounds' tunnels start here (the mix's count from 0).
const KILL_ID_BASE: u64 = 1 << 32;

/// The kill rounds: each starts [`KILL_TUNNELS`] endless tunnels through
/// the tinyproxy entry, waits until each side of each has read
/// [`KILL_AFTER`] bytes, kills tinyproxy with SIGKILL by its PID, waits for
/// every one of them to end on both sides (within [`KILL_ENDS_WITHIN`]),
/// restarts tinyproxy on the same port and runs [`KILL_TUNNELS`] exchanges
/// through it, which must be byte-exact. Returns the tunnels and what went
/// wrong beyond them.
fn kill_rounds(
    proxy: &mut proxies::RealProxy,
    ports: Ports,
    seed: u64,
    plans: &Plans,
) -> (Vec<Done>, Vec<String>) {
    let mut rng = Rng(seed ^ 0x6B69_6C6C);
    let (mut done, mut failures) = (Vec::new(), Vec::new());
    let mut id = KILL_ID_BASE;
    let run = |batch: Vec<Plan>| -> Vec<thread::JoinHandle<(Done, Instant)>> {
        {
            let mut map = plans.lock().expect("plans");
            for p in &batch {
                map.insert(p.id, *p);
            }
        }
        batch
            .into_iter()
            .map(|plan| {
                thread::spawn(move || {
                    let (cport, client) = client(&plan, ports);
                    let d = Done {
                        plan,
                        cport,
                        client,
                    };
                    (d, Instant::now())
                })
            })
            .collect()
    };
    let mut plan = |rng: &mut Rng, case: Case| {
        id += 1;
        Plan {
            id,
            via: Via::Killed,
            case,
            seed_up: seed ^ (id << 1),
            seed_down: seed ^ (id << 1 | 1),
            chunk: 1 + rng.below(64 << 10) as usize,
            pipeline: false,
            early_data: false,
            domain_atyp: false,
        }
    };
    for round in 1..=KILL_ROUNDS {
        let batch: Vec<Plan> = (0..KILL_TUNNELS)
            .map(|_| plan(&mut rng, Case::ProxyKilled))
            .collect();
        let ids: Vec<u64> = batch.iter().map(|p| p.id).collect();
        let handles = run(batch);
        let moving = wait_until(Duration::from_secs(20), || {
            ids.iter().all(|&i| {
                progress(i, Side::Client).load(Ordering::SeqCst) >= KILL_AFTER
                    && progress(i, Side::Destination).load(Ordering::SeqCst) >= KILL_AFTER
            })
        });
        if !moving {
            failures.push(format!(
                "kill round {round}: not every tunnel through tinyproxy moved {KILL_AFTER} bytes each way within 20 s"
            ));
        }
        let pid = proxy.pid();
        proxy.kill();
        let killed = Instant::now();
        for h in handles {
            let (d, ended) = h.join().expect("kill round client");
            let took = ended.saturating_duration_since(killed);
            if took > KILL_ENDS_WITHIN {
                failures.push(format!(
                    "kill round {round}: {} ended {took:?} after tinyproxy (pid {pid}) was killed",
                    d.plan
                ));
            }
            done.push(d);
        }
        eprintln!(
            "chaos: kill round {round}: tinyproxy pid {pid} killed with {KILL_TUNNELS} tunnels mid-transfer; all ended within {:?}",
            killed.elapsed()
        );
        proxy.restart();
        let batch: Vec<Plan> = (0..KILL_TUNNELS)
            .map(|_| {
                let case = Case::Exchange {
                    up: rng.size(2 << 20),
                    down: rng.size(2 << 20),
                };
                plan(&mut rng, case)
            })
            .collect();
        for h in run(batch) {
            done.push(h.join().expect("exchange client").0);
        }
    }
    (done, failures)
}

struct Done {
    plan: Plan,
    /// Entry port and client port.
    cport: Option<(u16, u16)>,
    client: Result<(), String>,
}

#[test]
fn chaos_mix_of_hundreds_of_tunnels() {
    raise_nofile(8192);
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let tunnels = std::env::var("CHAOS_TUNNELS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(TUNNELS);
    eprintln!("chaos: seed {seed} (CHAOS_SEED={seed} to replay), {tunnels} tunnels, {CONCURRENCY} at a time");

    let plans: Plans = Arc::default();
    let reports: Reports = Arc::default();
    let backend = Destination::spawn(None, plans.clone(), reports.clone());
    let backend_stall = Destination::spawn(Some(STALL_RCVBUF), plans.clone(), reports.clone());
    let proxy = FakeProxy::scripted(ok_relay_script());
    // A missing tinyproxy fails the test (or skips only the kill rounds,
    // loudly, with HTTPTUNNELING_SKIP_REAL_PROXIES=1).
    let mut tinyproxy = proxies::RealProxy::tinyproxy();
    if tinyproxy.is_none() {
        eprintln!("chaos: NOTE: no tinyproxy: the proxy-killed rounds do not run");
    }
    let ports = Ports {
        killed: free_port(),
        direct: free_port(),
        direct_stall: free_port(),
        proxy: free_port(),
        proxy_stall: free_port(),
        socks: free_port(),
        backend: backend.port(),
        backend_stall: backend_stall.port(),
    };
    let opts = format!("buffer={BUFFER} connect-timeout=5s");
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port());
    let config = format!(
        "127.0.0.1:{} 127.0.0.1 {} {opts}\n\
         127.0.0.1:{} 127.0.0.1 {} {opts}\n\
         127.0.0.1:{} 127.0.0.1 {} {proxy_url} {opts}\n\
         127.0.0.1:{} 127.0.0.1 {} {proxy_url} {opts}\n\
         127.0.0.1:{} socks allow=* {opts}\n\
         {}",
        ports.direct,
        ports.backend,
        ports.direct_stall,
        ports.backend_stall,
        ports.proxy,
        ports.backend,
        ports.proxy_stall,
        ports.backend_stall,
        ports.socks,
        tinyproxy.as_ref().map_or(String::new(), |t| format!(
            "127.0.0.1:{} 127.0.0.1 {} http://127.0.0.1:{} {opts}\n",
            ports.killed,
            ports.backend,
            t.port()
        )),
    );
    let ht = spawn_binary(&config);
    let pid = ht.pid();
    let fd_baseline = fd_count(pid);
    let rss_before = rss_kib(pid);

    let mut rng = Rng(seed);
    let all: Vec<Plan> = (0..tunnels as u64)
        .map(|id| draw(&mut rng, id, seed))
        .collect();
    {
        let mut map = plans.lock().expect("plans");
        for p in &all {
            map.insert(p.id, *p);
        }
    }

    let started = Instant::now();
    let killer = tinyproxy.take().map(|mut t| {
        let plans = plans.clone();
        thread::spawn(move || {
            let r = kill_rounds(&mut t, ports, seed, &plans);
            (r, t)
        })
    });
    let next = Arc::new(AtomicUsize::new(0));
    let done: Arc<Mutex<Vec<Done>>> = Arc::default();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (next, done, all) = (next.clone(), done.clone(), all.clone());
            thread::spawn(move || loop {
                if started.elapsed() > LAUNCH_BUDGET {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(plan) = all.get(i) else { return };
                let (cport, client) = client(plan, ports);
                done.lock().expect("done").push(Done {
                    plan: *plan,
                    cport,
                    client,
                });
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let mut failures = Vec::new();
    // Kept alive (and its logs printed on a failure) until the end.
    let mut _tinyproxy = None;
    if let Some(k) = killer {
        let ((killed, kill_failures), t) = k.join().expect("kill rounds");
        done.lock().expect("done").extend(killed);
        failures.extend(kill_failures);
        _tinyproxy = Some(t);
    }
    let ran = started.elapsed();
    let mut done = std::mem::take(&mut *done.lock().expect("done"));
    done.sort_by_key(|d| d.plan.id);
    eprintln!("chaos: {} tunnels in {ran:?}", done.len());

    // Every destination connection ends.
    let backend_quiet = wait_until(Duration::from_secs(10), || {
        backend.active() + backend_stall.active() == 0
    });

    // Every tunnel has an end line.
    let mut ends = HashMap::new();
    let all_logged = wait_until(Duration::from_secs(10), || {
        ends = end_lines(&ht.log());
        done.iter()
            .all(|d| d.cport.map_or(true, |p| ends.contains_key(&p)))
    });
    let _ = all_logged;
    let reports = reports.lock().expect("reports").clone();

    // (via, case) -> (count, ok)
    let mut table: HashMap<(Via, &'static str), (usize, usize)> = HashMap::new();
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for d in &done {
        let p = &d.plan;
        let mut problems = Vec::new();
        if let Err(e) = &d.client {
            problems.push(e.clone());
        }
        let expect_report = !matches!(p.case, Case::Leave { .. });
        match reports.get(&p.id) {
            Some(Err(e)) => problems.push(e.clone()),
            Some(Ok(())) => {}
            None if expect_report => {
                problems.push("the destination never got the tunnel's header".to_string())
            }
            None => {}
        }
        let lines = d
            .cport
            .and_then(|port| ends.get(&port))
            .cloned()
            .unwrap_or_default();
        if d.cport.is_some() && lines.is_empty() {
            problems.push("no end line in the log for its client port".to_string());
        }
        for line in &lines {
            let reason = if let Some(r) = line.split(" reason=").nth(1) {
                r.to_string()
            } else if let Some(r) = line.split(": failed: ").nth(1) {
                format!("failed: {}", r.split(':').next().unwrap_or(r))
            } else if line.contains("closed before forwarding") {
                "closed before forwarding".to_string()
            } else {
                problems.push(format!("an end line without a reason: {line}"));
                continue;
            };
            // A port used by several tunnels of the run: every line is
            // counted, under "(port reused)".
            let shared = if lines.len() > 1 {
                " (port reused)"
            } else {
                ""
            };
            if std::env::var_os("CHAOS_DEBUG").is_some() && lines.len() == 1 {
                eprintln!("end {} {reason}: {p}: {line}", p.case.name());
            }
            *reasons
                .entry(format!("{} -> {reason}{shared}", p.case.name()))
                .or_default() += 1;
        }
        if let (Some((up, down)), false) = (p.case.exact(), lines.is_empty()) {
            let want = format!(": closed up={up} down={down} ");
            // Ports can be reused over a run: one of the lines is this one.
            if !lines
                .iter()
                .any(|l| l.contains(&want) && l.contains("reason=eof"))
            {
                problems.push(format!(
                    "expected a line with {want:?} and reason=eof, got {lines:?}"
                ));
            }
        }
        let entry = table.entry((p.via, p.case.name())).or_default();
        entry.0 += 1;
        if problems.is_empty() {
            entry.1 += 1;
        } else {
            failures.push(format!(
                "{p} (client port {:?}): {}",
                d.cport,
                problems.join("; ")
            ));
        }
    }
    if !backend_quiet {
        failures.push(format!(
            "{} destination connection(s) still open 10 s after the last tunnel",
            backend.active() + backend_stall.active()
        ));
    }

    // Descriptors back at the baseline, and no CPU while idle.
    let fds_back = wait_until(Duration::from_secs(10), || fd_count(pid) == fd_baseline);
    if !fds_back {
        failures.push(format!(
            "descriptors: {} after the run, {fd_baseline} before\n{}",
            fd_count(pid),
            fd_list(pid)
        ));
    }
    // RSS back near its baseline: what may stay is the ring pool (at most
    // the rings of the tunnels open at once, each BUFFER_KIB, two a
    // tunnel) and allocator slack. Measured: a few hundred KiB.
    let rss_after = rss_kib(pid);
    let rss_bound =
        rss_before + (CONCURRENCY as u64 + KILL_TUNNELS) * 2 * BUFFER_KIB + RSS_SLACK_KIB;
    if rss_after > rss_bound {
        failures.push(format!(
            "RSS {rss_after} KiB after the run, {rss_before} KiB before: more than the {rss_bound} KiB \
             the ring pool and {RSS_SLACK_KIB} KiB of slack explain"
        ));
    }
    let before = cpu_time(pid);
    thread::sleep(Duration::from_secs(1));
    let idle_cpu = cpu_time(pid).saturating_sub(before);
    if idle_cpu >= Duration::from_millis(50) {
        failures.push(format!("{idle_cpu:?} of CPU over 1 s of idle"));
    }

    // Did the stalls hold the clients back? Counted for the tunnels without
    // the fake proxy, whose own relay buffers (kernel-sized) absorb much.
    let resumed: HashMap<u64, Instant> = RESUMED.lock().expect("resumed").iter().copied().collect();
    let sends = SENDS_DONE.lock().expect("sends").clone();
    let (mut stalls, mut held, mut proxied, mut proxied_held) = (0, 0, 0, 0);
    for (id, finished) in &sends {
        let plan = &all[*id as usize];
        let Some(resume) = resumed.get(id) else {
            continue;
        };
        let was_held = finished > resume;
        if std::env::var_os("CHAOS_DEBUG").is_some() {
            eprintln!("stall {plan}: held={was_held}");
        }
        if plan.via == Via::Proxy {
            proxied += 1;
            proxied_held += usize::from(was_held);
        } else {
            stalls += 1;
            held += usize::from(was_held);
        }
    }
    eprintln!(
        "chaos: stalls that held their client's writes back (more than the buffers hold): \
         {held} of {stalls} direct and socks, {proxied_held} of {proxied} through the proxy"
    );
    // At least half must, or the stall case tests nothing. (Not "nearly
    // all": on a loaded machine a client thread that is scheduled late can
    // finish its writes only after the stall, or a destination that starts
    // late stalls after them; a check that fails on scheduling tests that.)
    if held * 2 < stalls {
        failures.push(format!(
            "only {held} of {stalls} stalls held the client's writes back: make the writes larger"
        ));
    }

    let mut rows: Vec<_> = table.into_iter().collect();
    rows.sort();
    eprintln!("chaos: via / case / tunnels / as expected");
    for ((via, case), (n, ok)) in rows {
        eprintln!("  {via:?} {case} {n} {ok}");
    }
    let mut reasons: Vec<_> = reasons.into_iter().collect();
    reasons.sort();
    eprintln!("chaos: end lines by case and reason");
    for (r, n) in reasons {
        eprintln!("  {r}: {n}");
    }
    eprintln!(
        "chaos: fds {fd_baseline} -> {}, RSS {rss_before} KiB -> {rss_after} KiB (bound {rss_bound} KiB), idle CPU {idle_cpu:?}, total {:?}",
        fd_count(pid),
        started.elapsed()
    );
    assert!(
        done.len() >= 100 || done.len() == tunnels,
        "only {} tunnels ran within {LAUNCH_BUDGET:?}",
        done.len()
    );
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {} tunnels went wrong:\n{}\n{}",
        failures.len(),
        done.len(),
        failures.join("\n"),
        ht.diagnostics()
    );
}
