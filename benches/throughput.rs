//! Benchmarks of the forwarding engine, driven in process over loopback.
//!
//! ```text
//! cargo bench --bench throughput -- [bulk|conn|lat|mem|sweep|all]... [--quick]
//! ```
//!
//! The engine runs on its own thread (`Engine::run`, stopped with
//! `Handle::shutdown`); backends, clients and a minimal CONNECT proxy are
//! plain std threads with blocking sockets on 127.0.0.1. Every measurement
//! of the engine is paired with a reference measured in the same run:
//!
//! - direct entry: client → engine → backend, against client → backend;
//! - proxied entry: client → engine → proxy → backend, against the client
//!   speaking CONNECT to the same proxy itself.
//!
//! Scenarios: `bulk` (throughput, 1 and 8 streams, up and down), `conn`
//! (connection rate at concurrency 1 and 64), `lat` (64-byte ping-pong),
//! `mem` (RSS per idle tunnel) and `sweep` (throughput and memory per
//! `buffer` size). Memory is measured in a child process (this binary run
//! again with `--mem-child`), so freed memory of earlier scenarios cannot
//! hide new allocations.
//!
//! Without `--bench` (that is, under `cargo test --benches`) every scenario
//! runs once with tiny durations, as a smoke test.

use std::env;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use httptunneling::config::{self, Config, Entry, Options};
use httptunneling::{Engine, EngineOptions, Handle};

/// Read and write timeout on every socket the bench owns: nothing can hang.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a connection to arrive at a backend, or an engine to start.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bulk writes.
const CHUNK: usize = 128 * 1024;
/// Request and reply size of the connection-rate and latency scenarios.
const SMALL: usize = 64;
/// Largest number of idle tunnels the memory scenario opens.
const MEM_MAX_TUNNELS: usize = 10_000;
/// Descriptors kept aside for everything but the tunnels.
const FD_RESERVE: u64 = 200;
/// Descriptors one tunnel costs in process: client, accepted, upstream, backend.
const FDS_PER_TUNNEL: u64 = 4;
/// Buffer sizes of the sweep.
const SWEEP_BUFFERS: [usize; 5] = [4 << 10, 16 << 10, 64 << 10, 128 << 10, 256 << 10];
/// Concurrency levels of the connection-rate scenario.
const CONN_CONCURRENCY: [usize; 2] = [1, 64];
/// Stream counts of the bulk scenario.
const BULK_STREAMS: [usize; 2] = [1, 8];

/// How long each measurement runs.
struct Settings {
    name: &'static str,
    reps: usize,
    bulk: Duration,
    conn: Duration,
    lat: Duration,
    /// Cap on round trips per latency measurement.
    lat_max: usize,
    /// Cap on idle tunnels (the descriptor limit may lower it further).
    mem_max: usize,
    /// Cap on idle tunnels per buffer size in the sweep.
    sweep_idle_max: usize,
    /// Tunnels with a full ring in the sweep's loaded-memory measurement.
    loaded: usize,
}

const FULL: Settings = Settings {
    name: "full",
    reps: 3,
    bulk: Duration::from_secs(2),
    conn: Duration::from_secs(2),
    lat: Duration::from_millis(1500),
    lat_max: 200_000,
    mem_max: MEM_MAX_TUNNELS,
    sweep_idle_max: MEM_MAX_TUNNELS,
    loaded: 64,
};

const QUICK: Settings = Settings {
    name: "quick",
    reps: 3,
    bulk: Duration::from_millis(300),
    conn: Duration::from_millis(300),
    lat: Duration::from_millis(200),
    lat_max: 50_000,
    mem_max: MEM_MAX_TUNNELS,
    sweep_idle_max: 1000,
    loaded: 64,
};

/// `cargo test --benches`: everything once, briefly.
const SMOKE: Settings = Settings {
    name: "smoke (no --bench: cargo test)",
    reps: 1,
    bulk: Duration::from_millis(100),
    conn: Duration::from_millis(100),
    lat: Duration::from_millis(50),
    lat_max: 10_000,
    mem_max: 50,
    sweep_idle_max: 50,
    loaded: 4,
};

const SCENARIOS: [&str; 5] = ["bulk", "conn", "lat", "mem", "sweep"];

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench throughput -- [bulk|conn|lat|mem|sweep|all]... [--quick]"
    );
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--mem-child") {
        mem_child(&args[1..]);
        return;
    }
    let (mut quick, mut bench) = (false, false);
    let mut wanted: Vec<&str> = Vec::new();
    for arg in &args {
        match arg.as_str() {
            "--quick" => quick = true,
            "--bench" => bench = true, // added by `cargo bench`
            "-h" | "--help" => usage(),
            "all" => wanted.extend(SCENARIOS),
            s if SCENARIOS.contains(&s) => wanted.push(s),
            s if s.starts_with('-') => eprintln!("note: ignoring option {s}"),
            _ => usage(),
        }
    }
    if wanted.is_empty() {
        wanted.extend(SCENARIOS);
    }
    let settings = match (bench, quick) {
        (false, _) => &SMOKE,
        (true, true) => &QUICK,
        (true, false) => &FULL,
    };
    let started = Instant::now();
    print_machine(settings);
    let proxy = ConnectProxy::start();
    for scenario in SCENARIOS {
        if wanted.contains(&scenario) {
            match scenario {
                "bulk" => bench_bulk(settings, proxy.addr),
                "conn" => bench_conn(settings, proxy.addr),
                "lat" => bench_lat(settings, proxy.addr),
                "mem" => bench_mem(settings),
                "sweep" => bench_sweep(settings),
                _ => unreachable!("scenario names are checked above"),
            }
        }
    }
    proxy.stop();
    println!(
        "\n_total bench time: {:.1} s_",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// Machine, numbers, tables
// ---------------------------------------------------------------------------

fn print_machine(s: &Settings) {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".to_string(), |k| k.trim().to_string());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".to_string());
    let (soft, hard) = nofile_limits();
    let load = std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "?".to_string(),
        |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    println!("# httptunneling benchmarks\n");
    println!("- machine: nproc {cpus}, Linux {kernel}, {model}");
    println!("- load average at start: {load}");
    println!("- RLIMIT_NOFILE: soft {soft}, hard {}", fmt_limit(hard));
    println!(
        "- mode: {} — bulk {} per run, conn {} per run, latency {} per run; \
         {} repetition(s), reference and tunnel interleaved, median reported",
        s.name,
        fmt_secs(s.bulk),
        fmt_secs(s.conn),
        fmt_secs(s.lat),
        s.reps
    );
    println!(
        "- loopback only (127.0.0.1); engine on its own thread, clients and backends \
         are blocking std threads in the same process; no logger installed"
    );
}

fn fmt_secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

fn fmt_limit(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        v.to_string()
    }
}

fn fmt_size(bytes: usize) -> String {
    if bytes % (1 << 20) == 0 {
        format!("{}m", bytes >> 20)
    } else if bytes % 1024 == 0 {
        format!("{}k", bytes >> 10)
    } else {
        bytes.to_string()
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The `p`-quantile (0..=1) of sorted values, nearest rank.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn gbits(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e9
}

// ---------------------------------------------------------------------------
// Sockets, paths, the engine
// ---------------------------------------------------------------------------

fn tune(s: &TcpStream) {
    s.set_nodelay(true).expect("set TCP_NODELAY");
    s.set_read_timeout(Some(IO_TIMEOUT))
        .expect("set read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("set write timeout");
}

fn listen() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener")
}

/// Accepts one connection, failing after [`SETUP_TIMEOUT`].
fn accept_timeout(listener: &TcpListener) -> TcpStream {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "backend accept: no connection within {SETUP_TIMEOUT:?}"
        );
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: one pollfd we own, count 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
        }
        if rc > 0 {
            let (stream, _) = listener.accept().expect("backend accept");
            tune(&stream);
            return stream;
        }
    }
}

/// How a client reaches the backend.
#[derive(Clone, Copy)]
enum Path {
    /// Connect there and talk: the backend itself, or an engine listener.
    Plain(SocketAddr),
    /// Connect to a proxy and ask it for `target` with CONNECT.
    Connect {
        proxy: SocketAddr,
        target: SocketAddr,
    },
}

fn dial(path: Path) -> TcpStream {
    match path {
        Path::Plain(addr) => {
            let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            tune(&s);
            s
        }
        Path::Connect { proxy, target } => {
            let mut s =
                TcpStream::connect(proxy).unwrap_or_else(|e| panic!("connect proxy {proxy}: {e}"));
            tune(&s);
            let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
            s.write_all(request.as_bytes()).expect("send CONNECT");
            let mut head = [0u8; 256];
            let mut len = 0;
            loop {
                let n = s.read(&mut head[len..]).expect("read the proxy's answer");
                assert!(n > 0, "proxy closed before answering");
                len += n;
                if head[..len].ends_with(b"\r\n\r\n") {
                    break;
                }
                assert!(len < head.len(), "proxy answer too long");
            }
            assert!(
                head.starts_with(b"HTTP/1.1 200"),
                "proxy refused: {:?}",
                String::from_utf8_lossy(&head[..len])
            );
            s
        }
    }
}

/// The entry of config line `line` (the earlier lines left empty): DEST,
/// through PROXY if given, with `buffer=BUFFER` and the grammar's other
/// defaults, parsed as the binary parses a file, then listening on an
/// ephemeral loopback port.
fn entry(line: usize, dest: SocketAddr, proxy: Option<SocketAddr>, buffer: usize) -> Entry {
    let via = proxy.map_or(String::new(), |p| format!(" {} {}", p.ip(), p.port()));
    let text = format!(
        "{}127.0.0.1:1 {} {}{via} buffer={buffer}\n",
        "\n".repeat(line - 1),
        dest.ip(),
        dest.port()
    );
    let mut no_files = |_: &std::path::Path| Err(io::Error::other("no files here"));
    let dir = std::path::Path::new(".");
    let mut config = config::parse_str(&text, "bench", dir, &mut no_files)
        .unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
    let mut entry = config.entries.remove(0);
    entry.listen = "127.0.0.1:0".parse().expect("literal socket address");
    entry
}

/// An engine running on its own thread.
struct RunningEngine {
    handle: Handle,
    thread: JoinHandle<()>,
    /// Bound listener addresses, in entry order.
    addrs: Vec<SocketAddr>,
}

impl RunningEngine {
    fn start(entries: Vec<Entry>) -> RunningEngine {
        let (tx, rx) = mpsc::channel();
        // The engine holds `Rc`s, so it is built on the thread that runs it.
        let thread = thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let engine = Engine::new(
                    Config {
                        entries,
                        metrics: None,
                    },
                    EngineOptions::default(),
                )
                .expect("engine starts");
                tx.send((engine.listen_addrs(), engine.handle()))
                    .expect("bench waits for the engine");
                engine.run().expect("engine runs");
            })
            .expect("spawn the engine thread");
        let (addrs, handle) = rx
            .recv_timeout(SETUP_TIMEOUT)
            .expect("engine started in time");
        RunningEngine {
            handle,
            thread,
            addrs,
        }
    }

    fn stop(self) {
        self.handle.shutdown();
        self.thread.join().expect("engine thread ends cleanly");
    }
}

// ---------------------------------------------------------------------------
// The minimal CONNECT proxy (blocking threads, two per connection)
// ---------------------------------------------------------------------------

type Job = Box<dyn FnOnce() + Send>;

/// Blocking threads kept for reuse: a job goes to an idle thread, or to a new
/// one when none is idle, so a relay never waits for a thread. Creating a
/// thread costs a few hundred microseconds on small VMs, which would make a
/// spawn-per-connection proxy a poor reference for the connection rate.
struct ThreadCache {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    /// Threads waiting (or about to wait) for a job and not yet promised one.
    idle: Arc<AtomicUsize>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl ThreadCache {
    fn new() -> Arc<ThreadCache> {
        let (tx, rx) = mpsc::channel();
        Arc::new(ThreadCache {
            tx: Mutex::new(Some(tx)),
            rx: Arc::new(Mutex::new(rx)),
            idle: Arc::new(AtomicUsize::new(0)),
            threads: Mutex::new(Vec::new()),
        })
    }

    fn run(&self, job: Job) {
        let promised = self
            .idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |i| i.checked_sub(1))
            .is_ok();
        if promised {
            let tx = self.tx.lock().expect("thread cache lock");
            if let Some(tx) = tx.as_ref() {
                tx.send(job).expect("an idle thread takes the job");
            }
            return;
        }
        let (rx, idle) = (Arc::clone(&self.rx), Arc::clone(&self.idle));
        let thread = thread::Builder::new()
            .name("proxy-relay".into())
            .spawn(move || {
                job();
                loop {
                    idle.fetch_add(1, Ordering::SeqCst);
                    let next = rx.lock().expect("thread cache lock").recv();
                    match next {
                        Ok(job) => job(),
                        Err(_) => return, // shut down
                    }
                }
            })
            .expect("spawn a proxy thread");
        self.threads.lock().expect("thread cache lock").push(thread);
    }

    /// Ends every thread once its current job is done.
    fn shut_down(&self) {
        self.tx.lock().expect("thread cache lock").take();
        let threads = std::mem::take(&mut *self.threads.lock().expect("thread cache lock"));
        for t in threads {
            t.join().expect("proxy thread ends");
        }
    }
}

struct ConnectProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    threads: Arc<ThreadCache>,
}

impl ConnectProxy {
    fn start() -> ConnectProxy {
        let listener = listen();
        let addr = listener.local_addr().expect("proxy address");
        let stop = Arc::new(AtomicBool::new(false));
        let threads = ThreadCache::new();
        let (flag, cache) = (Arc::clone(&stop), Arc::clone(&threads));
        let thread = thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) if !flag.load(Ordering::SeqCst) => {
                            let c = Arc::clone(&cache);
                            cache.run(Box::new(move || proxy_conn(s, &c)));
                        }
                        Ok(_) => break, // the wake-up connection of stop()
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
            .expect("spawn the proxy");
        ConnectProxy {
            addr,
            stop,
            thread,
            threads,
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        self.thread.join().expect("proxy accept thread ends");
        self.threads.shut_down();
    }
}

/// Reads the CONNECT head, dials the target, answers 200, relays both ways.
fn proxy_conn(mut client: TcpStream, threads: &ThreadCache) {
    tune(&client);
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let head_end = loop {
        match client.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        if let Some(i) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if len == buf.len() {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut words = head.split_ascii_whitespace();
    let target = match (words.next(), words.next()) {
        (Some("CONNECT"), Some(t)) => t.to_string(),
        _ => {
            let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            return;
        }
    };
    let upstream = target
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .and_then(|a| TcpStream::connect(a).ok());
    let Some(mut upstream) = upstream else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        return;
    };
    tune(&upstream);
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    if len > head_end && upstream.write_all(&buf[head_end..len]).is_err() {
        return;
    }
    drop(buf);
    let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let (done_tx, done_rx) = mpsc::channel();
    threads.run(Box::new(move || {
        copy_half(upstream2, client2);
        let _ = done_tx.send(());
    }));
    copy_half(client, upstream);
    // The other half ends by EOF, error or its read timeout.
    let _ = done_rx.recv();
}

/// Copies until EOF, then half-closes the destination; on error shuts both.
fn copy_half(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// A reference path and the engine path it is compared with.
struct Pair {
    title: &'static str,
    ref_name: &'static str,
    tunnel_name: &'static str,
    reference: Path,
    tunnel: Path,
}

/// An engine with a direct entry and an entry through the proxy, both to
/// `backend`, and the two comparisons.
fn engine_and_pairs(backend: SocketAddr, proxy: SocketAddr) -> (RunningEngine, [Pair; 2]) {
    let buffer = Options::default().buffer;
    let engine = RunningEngine::start(vec![
        entry(1, backend, None, buffer),
        entry(2, backend, Some(proxy), buffer),
    ]);
    let pairs = [
        Pair {
            title: "direct entry",
            ref_name: "direct loopback",
            tunnel_name: "tunnel",
            reference: Path::Plain(backend),
            tunnel: Path::Plain(engine.addrs[0]),
        },
        Pair {
            title: "entry via CONNECT proxy",
            ref_name: "proxy alone",
            tunnel_name: "tunnel via proxy",
            reference: Path::Connect {
                proxy,
                target: backend,
            },
            tunnel: Path::Plain(engine.addrs[1]),
        },
    ];
    (engine, pairs)
}

// ---------------------------------------------------------------------------
// (a) bulk throughput
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    /// Client → destination.
    Up,
    /// Destination → client.
    Down,
}

/// Moves data for `dur` over `streams` connections; Gbit/s at the receivers.
fn bulk_once(path: Path, backend: &TcpListener, streams: usize, dir: Dir, dur: Duration) -> f64 {
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        let client = dial(path);
        let server = accept_timeout(backend);
        conns.push((client, server));
    }
    // Every thread exists before the clock starts (spawning is not free).
    let gate = Arc::new(Barrier::new(streams + 1));
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (client, server) in conns {
        let (tx, rx) = match dir {
            Dir::Up => (client, server),
            Dir::Down => (server, client),
        };
        let gate = Arc::clone(&gate);
        senders.push(thread::spawn(move || send_for(tx, &gate, dur)));
        receivers.push(thread::spawn(move || recv_count(rx)));
    }
    gate.wait();
    let start = Instant::now();
    let mut sent = 0;
    let mut keep = Vec::new();
    for s in senders {
        let (n, stream) = s.join().expect("bulk sender");
        sent += n;
        keep.push(stream);
    }
    let (mut received, mut last) = (0, start);
    for r in receivers {
        let (n, at) = r.join().expect("bulk receiver");
        received += n;
        last = last.max(at);
    }
    assert_eq!(sent, received, "every byte sent arrives");
    gbits(received, last.duration_since(start).as_secs_f64())
}

/// Passes `gate`, writes 128 KiB chunks for `dur`, then half-closes.
fn send_for(mut s: TcpStream, gate: &Barrier, dur: Duration) -> (u64, TcpStream) {
    let buf = vec![0xA5u8; CHUNK];
    gate.wait();
    let deadline = Instant::now() + dur;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        s.write_all(&buf).expect("bulk write");
        sent += CHUNK as u64;
    }
    s.shutdown(Shutdown::Write).expect("half-close after bulk");
    (sent, s)
}

/// Reads to EOF; returns the byte count and when the last byte came.
fn recv_count(mut s: TcpStream) -> (u64, Instant) {
    let mut buf = vec![0u8; 2 * CHUNK];
    let (mut total, mut last) = (0u64, Instant::now());
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (total, last),
            Ok(n) => {
                total += n as u64;
                last = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("bulk read after {total} bytes: {e}"),
        }
    }
}

fn bench_bulk(s: &Settings, proxy: SocketAddr) {
    let backend = listen();
    let (engine, pairs) = engine_and_pairs(backend.local_addr().expect("backend address"), proxy);
    for pair in &pairs {
        println!(
            "\n## Bulk throughput, {} (Gbit/s at the receiver, {} per run, 128 KiB writes)\n",
            pair.title,
            fmt_secs(s.bulk)
        );
        println!(
            "| streams | direction | {} | {} | ratio |",
            pair.ref_name, pair.tunnel_name
        );
        println!("|---:|---|---:|---:|---:|");
        for streams in BULK_STREAMS {
            for dir in [Dir::Up, Dir::Down] {
                let (mut reference, mut tunnel) = (Vec::new(), Vec::new());
                for _ in 0..s.reps {
                    reference.push(bulk_once(pair.reference, &backend, streams, dir, s.bulk));
                    tunnel.push(bulk_once(pair.tunnel, &backend, streams, dir, s.bulk));
                }
                let (r, t) = (median(&reference), median(&tunnel));
                println!(
                    "| {streams} | {} | {r:.2} | {t:.2} | {:.2} |",
                    if dir == Dir::Up { "up" } else { "down" },
                    t / r
                );
            }
        }
    }
    engine.stop();
}

// ---------------------------------------------------------------------------
// (b) connection rate
// ---------------------------------------------------------------------------

/// Backend workers: accept, read 64 bytes, answer 64 bytes, close.
struct RequestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl RequestServer {
    fn start(workers: usize) -> RequestServer {
        let listener = listen();
        let addr = listener.local_addr().expect("backend address");
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let l = listener.try_clone().expect("clone the backend listener");
                let flag = Arc::clone(&stop);
                thread::spawn(move || loop {
                    let Ok((mut s, _)) = l.accept() else {
                        if flag.load(Ordering::SeqCst) {
                            return;
                        }
                        thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    if flag.load(Ordering::SeqCst) {
                        return; // a wake-up connection from stop()
                    }
                    tune(&s);
                    let mut req = [0u8; SMALL];
                    if s.read_exact(&mut req).is_ok() {
                        let _ = s.write_all(&[b'r'; SMALL]);
                    }
                    // Dropping closes: the server closes first.
                })
            })
            .collect();
        RequestServer {
            addr,
            stop,
            workers,
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // One connection per worker: each accepts one, sees the flag, ends.
        let wake: Vec<_> = (0..self.workers.len())
            .map(|_| TcpStream::connect(self.addr).expect("wake a backend worker"))
            .collect();
        for w in self.workers {
            w.join().expect("backend worker ends");
        }
        drop(wake);
    }
}

/// One request: connect, send 64, receive 64, wait for the server's close, close.
fn one_request(path: Path) {
    let mut s = dial(path);
    s.write_all(&[b'q'; SMALL]).expect("send request");
    let mut reply = [0u8; SMALL];
    s.read_exact(&mut reply).expect("read reply");
    let n = s.read(&mut reply).expect("read the server's close");
    assert_eq!(n, 0, "server closes after its reply");
}

/// Connections per second with `concurrency` clients for `dur`.
fn conn_once(path: Path, concurrency: usize, dur: Duration) -> f64 {
    let gate = Arc::new(Barrier::new(concurrency + 1));
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            let gate = Arc::clone(&gate);
            thread::spawn(move || {
                gate.wait();
                let deadline = Instant::now() + dur;
                let mut done = 0u64;
                while Instant::now() < deadline {
                    one_request(path);
                    done += 1;
                }
                (done, Instant::now())
            })
        })
        .collect();
    gate.wait();
    let start = Instant::now();
    let (mut total, mut end) = (0, start);
    for c in clients {
        let (n, at) = c.join().expect("connection-rate client");
        total += n;
        end = end.max(at);
    }
    total as f64 / end.duration_since(start).as_secs_f64()
}

fn bench_conn(s: &Settings, proxy: SocketAddr) {
    let max = CONN_CONCURRENCY.iter().copied().max().unwrap_or(1);
    let backend = RequestServer::start(max);
    let (engine, pairs) = engine_and_pairs(backend.addr, proxy);
    for pair in &pairs {
        println!(
            "\n## Connection rate, {} (conns/s; connect, 64 B request, 64 B reply, \
             server closes, client closes; {} per run)\n",
            pair.title,
            fmt_secs(s.conn)
        );
        println!(
            "| concurrency | {} | {} | ratio |",
            pair.ref_name, pair.tunnel_name
        );
        println!("|---:|---:|---:|---:|");
        for c in CONN_CONCURRENCY {
            let (mut reference, mut tunnel) = (Vec::new(), Vec::new());
            for _ in 0..s.reps {
                reference.push(conn_once(pair.reference, c, s.conn));
                tunnel.push(conn_once(pair.tunnel, c, s.conn));
            }
            let (r, t) = (median(&reference), median(&tunnel));
            println!("| {c} | {r:.0} | {t:.0} | {:.2} |", t / r);
        }
    }
    engine.stop();
    backend.stop();
}

// ---------------------------------------------------------------------------
// (c) latency
// ---------------------------------------------------------------------------

/// Round-trip times (µs) of 64-byte ping-pong on one connection.
fn lat_once(path: Path, backend: &TcpListener, dur: Duration, max: usize) -> Vec<f64> {
    let mut client = dial(path);
    let mut server = accept_timeout(backend);
    let echo = thread::spawn(move || {
        let mut buf = [0u8; SMALL];
        loop {
            match server.read_exact(&mut buf) {
                Ok(()) => server.write_all(&buf).expect("echo write"),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return,
                Err(e) => panic!("echo read: {e}"),
            }
        }
    });
    let ping = [b'p'; SMALL];
    let mut pong = [0u8; SMALL];
    let mut round_trip = |c: &mut TcpStream| {
        c.write_all(&ping).expect("ping");
        c.read_exact(&mut pong).expect("pong");
    };
    for _ in 0..200 {
        round_trip(&mut client); // warm-up: caches, rings, scheduler
    }
    let mut samples = Vec::with_capacity(max.min(1 << 20));
    let deadline = Instant::now() + dur;
    while samples.len() < max {
        let t0 = Instant::now();
        if t0 >= deadline {
            break;
        }
        round_trip(&mut client);
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    client.shutdown(Shutdown::Write).expect("end the ping-pong");
    echo.join().expect("echo thread");
    samples
}

fn bench_lat(s: &Settings, proxy: SocketAddr) {
    let backend = listen();
    let (engine, pairs) = engine_and_pairs(backend.local_addr().expect("backend address"), proxy);
    println!(
        "\n## Round-trip latency (64 B ping-pong on one connection, TCP_NODELAY; \
         µs; {} × {} per path, samples pooled)\n",
        s.reps,
        fmt_secs(s.lat)
    );
    println!("| path | round trips | median µs | p99 µs | median added µs | p99 added µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    for pair in &pairs {
        let (mut reference, mut tunnel) = (Vec::new(), Vec::new());
        for _ in 0..s.reps {
            reference.extend(lat_once(pair.reference, &backend, s.lat, s.lat_max));
            tunnel.extend(lat_once(pair.tunnel, &backend, s.lat, s.lat_max));
        }
        reference.sort_by(f64::total_cmp);
        tunnel.sort_by(f64::total_cmp);
        let (rm, r99) = (quantile(&reference, 0.5), quantile(&reference, 0.99));
        let (tm, t99) = (quantile(&tunnel, 0.5), quantile(&tunnel, 0.99));
        println!(
            "| {} | {} | {rm:.1} | {r99:.1} | (reference) | (reference) |",
            pair.ref_name,
            reference.len()
        );
        println!(
            "| {} | {} | {tm:.1} | {t99:.1} | {:+.1} | {:+.1} |",
            pair.tunnel_name,
            tunnel.len(),
            tm - rm,
            t99 - r99
        );
    }
    engine.stop();
}

// ---------------------------------------------------------------------------
// (d) memory, measured in a child process
// ---------------------------------------------------------------------------

fn nofile_limits() -> (libc::rlim_t, libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit: {}", io::Error::last_os_error());
    (lim.rlim_cur, lim.rlim_max)
}

/// Raises the soft descriptor limit as far as the hard limit (and
/// `fs.nr_open`) allow; returns the soft limit in force afterwards.
fn raise_nofile() -> u64 {
    let (soft, hard) = nofile_limits();
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let target = hard.min(nr_open);
    if target > soft {
        let lim = libc::rlimit {
            rlim_cur: target,
            rlim_max: hard,
        };
        // SAFETY: setrlimit only reads the struct.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        if rc != 0 {
            eprintln!(
                "note: cannot raise RLIMIT_NOFILE: {}",
                io::Error::last_os_error()
            );
        }
    }
    nofile_limits().0
}

/// How many idle tunnels fit: 4 descriptors each, 200 kept aside.
fn tunnels_for(limit: u64, cap: usize) -> usize {
    (limit.saturating_sub(FD_RESERVE) / FDS_PER_TUNNEL).min(cap as u64) as usize
}

fn vm_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// What a memory child measures.
#[derive(Clone, Copy)]
enum MemKind {
    /// Tunnels verified by a 1-byte echo, then idle.
    Idle,
    /// As idle, then each client writes until nothing moves: the up ring is full.
    Loaded,
    /// The same connections straight to the backend: the bench's own cost.
    Direct,
}

impl MemKind {
    fn arg(self) -> &'static str {
        match self {
            MemKind::Idle => "idle",
            MemKind::Loaded => "loaded",
            MemKind::Direct => "direct",
        }
    }
}

/// A child's answer.
struct MemResult {
    n: usize,
    before_kb: u64,
    after_kb: u64,
    /// Bytes each client managed to write (loaded only).
    queued: u64,
}

impl MemResult {
    fn per_tunnel_kb(&self) -> f64 {
        (self.after_kb as f64 - self.before_kb as f64) / self.n as f64
    }
}

/// Runs this binary again as a memory child and parses its answer.
fn run_mem_child(kind: MemKind, max: usize, buffer: usize) -> MemResult {
    let exe = env::current_exe().expect("path of the bench binary");
    let mut child = Command::new(exe)
        .args([
            "--mem-child",
            kind.arg(),
            &max.to_string(),
            &buffer.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the memory child");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the memory child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("memory child took over 120 s");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("child stdout")
        .read_to_string(&mut out)
        .expect("read the child's answer");
    assert!(status.success(), "memory child failed: {status}\n{out}");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("MEM "))
        .unwrap_or_else(|| panic!("no MEM line from the child:\n{out}"));
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().expect("numbers on the MEM line"))
        .collect();
    assert_eq!(v.len(), 4, "MEM line: {line}");
    MemResult {
        n: v[0] as usize,
        before_kb: v[1],
        after_kb: v[2],
        queued: v[3],
    }
}

/// Opens one connection to `target`, accepts its backend end and checks it
/// with a 1-byte echo.
fn open_checked(target: SocketAddr, backend: &TcpListener) -> (TcpStream, TcpStream) {
    let mut client = TcpStream::connect(target).unwrap_or_else(|e| panic!("connect {target}: {e}"));
    client
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("read timeout");
    let mut server = accept_timeout(backend);
    let mut b = [0u8; 1];
    client.write_all(b"x").expect("echo: client write");
    server.read_exact(&mut b).expect("echo: backend read");
    server.write_all(&b).expect("echo: backend write");
    client.read_exact(&mut b).expect("echo: client read");
    assert_eq!(&b, b"x", "echo");
    (client, server)
}

/// Writes from every client until nothing moves any more; returns the bytes
/// written per client.
fn fill_rings(clients: &[TcpStream], chunk: &[u8]) -> u64 {
    for c in clients {
        c.set_nonblocking(true).expect("client non-blocking");
    }
    let mut total = 0u64;
    let mut quiet = 0;
    for _ in 0..1000 {
        let mut wrote = 0u64;
        for mut c in clients {
            loop {
                match c.write(chunk) {
                    Ok(n) => wrote += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("fill: {e}"),
                }
            }
        }
        total += wrote;
        quiet = if wrote == 0 { quiet + 1 } else { 0 };
        if quiet >= 10 {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    total / clients.len().max(1) as u64
}

/// `--mem-child KIND MAX BUFFER`: prints `MEM n before_kb after_kb queued`.
fn mem_child(args: &[String]) {
    let [kind, max, buffer] = args else {
        panic!("--mem-child KIND MAX BUFFER");
    };
    let max: usize = max.parse().expect("MAX");
    let buffer: usize = buffer.parse().expect("BUFFER");
    let limit = raise_nofile();
    let n = tunnels_for(limit, max);
    assert!(n > 0, "descriptor limit {limit} leaves no room for tunnels");
    let loaded = kind == "loaded";
    let backend = listen();
    let backend_addr = backend.local_addr().expect("backend address");
    let engine = match kind.as_str() {
        "direct" => None,
        "idle" | "loaded" => Some(RunningEngine::start(vec![entry(
            1,
            backend_addr,
            None,
            buffer,
        )])),
        other => panic!("unknown memory kind {other}"),
    };
    let target = engine.as_ref().map_or(backend_addr, |e| e.addrs[0]);
    // Warm-up: the engine's arena, slab, ring pool and poll are set up.
    let warm: Vec<_> = (0..32).map(|_| open_checked(target, &backend)).collect();
    drop(warm);
    thread::sleep(Duration::from_millis(200));
    let mut clients = Vec::with_capacity(n);
    let mut servers = Vec::with_capacity(n);
    let chunk = vec![0x5Au8; 64 * 1024];
    let before = vm_rss_kb();
    for _ in 0..n {
        let (c, s) = open_checked(target, &backend);
        clients.push(c);
        servers.push(s);
    }
    let queued = if loaded {
        fill_rings(&clients, &chunk)
    } else {
        0
    };
    let after = vm_rss_kb();
    println!("MEM {n} {before} {after} {queued}");
    drop(clients);
    drop(servers);
    if let Some(e) = engine {
        e.stop();
    }
}

fn bench_mem(s: &Settings) {
    let (_, hard) = nofile_limits();
    let default = Options::default().buffer;
    println!("\n## Memory: idle tunnels (RSS of the process, VmRSS)\n");
    println!(
        "Each tunnel costs {FDS_PER_TUNNEL} descriptors in this process (client, accepted, \
         upstream, backend-accepted), so N = min({}, (hard limit − {FD_RESERVE}) / {FDS_PER_TUNNEL}); \
         the hard RLIMIT_NOFILE is {}, the soft limit is raised to it. Every tunnel is verified \
         by a 1-byte echo before RSS is read again; each row runs in a fresh child process.\n",
        s.mem_max,
        fmt_limit(hard)
    );
    let tunnel = run_mem_child(MemKind::Idle, s.mem_max, default);
    let direct = run_mem_child(MemKind::Direct, s.mem_max, default);
    println!("| setup | N | RSS before KB | RSS after KB | KB/tunnel |");
    println!("|---|---:|---:|---:|---:|");
    for (name, r) in [
        (
            format!("tunnel (buffer {}, the default)", fmt_size(default)),
            &tunnel,
        ),
        (
            "direct loopback, no engine (the bench's own share)".to_string(),
            &direct,
        ),
    ] {
        println!(
            "| {name} | {} | {} | {} | {:.2} |",
            r.n,
            r.before_kb,
            r.after_kb,
            r.per_tunnel_kb()
        );
    }
}

// ---------------------------------------------------------------------------
// Buffer-size sweep
// ---------------------------------------------------------------------------

fn bench_sweep(s: &Settings) {
    let backend = listen();
    let backend_addr = backend.local_addr().expect("backend address");
    let entries = SWEEP_BUFFERS
        .iter()
        .enumerate()
        .map(|(i, &b)| entry(i + 1, backend_addr, None, b))
        .collect();
    let engine = RunningEngine::start(entries);
    let mut direct = Vec::new();
    let mut tunnel = vec![Vec::new(); SWEEP_BUFFERS.len()];
    for _ in 0..s.reps {
        direct.push(bulk_once(
            Path::Plain(backend_addr),
            &backend,
            1,
            Dir::Up,
            s.bulk,
        ));
        for (i, &addr) in engine.addrs.iter().enumerate() {
            tunnel[i].push(bulk_once(Path::Plain(addr), &backend, 1, Dir::Up, s.bulk));
        }
    }
    engine.stop();
    let direct = median(&direct);
    println!(
        "\n## Buffer-size sweep (option `buffer`, direct entry)\n\n\
         Throughput: 1 stream up, {} per run, median of {}; direct loopback measured in the \
         same runs: {direct:.2} Gbit/s. Idle: N tunnels verified by a 1-byte echo, as in the \
         memory scenario. Full ring: {} tunnels whose backend never reads, each client \
         writing until nothing moves, so the engine's up ring is full (socket buffers are \
         kernel memory, not RSS; the last column is everything queued per tunnel). Each \
         memory figure comes from a fresh child process.\n",
        fmt_secs(s.bulk),
        s.reps,
        s.loaded
    );
    println!(
        "| buffer | Gbit/s | ratio to direct | idle KB/tunnel (N) | full-ring KB/tunnel | \
         KiB written per client |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (i, &buffer) in SWEEP_BUFFERS.iter().enumerate() {
        let t = median(&tunnel[i]);
        let idle = run_mem_child(MemKind::Idle, s.sweep_idle_max, buffer);
        let loaded = run_mem_child(MemKind::Loaded, s.loaded, buffer);
        println!(
            "| {}{} | {t:.2} | {:.2} | {:.2} ({}) | {:.1} | {} |",
            fmt_size(buffer),
            if buffer == Options::default().buffer {
                " (default)"
            } else {
                ""
            },
            t / direct,
            idle.per_tunnel_kb(),
            idle.n,
            loaded.per_tunnel_kb(),
            loaded.queued / 1024
        );
    }
}
