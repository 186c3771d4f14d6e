//! Heap allocations per tunnel on the reactor thread (issue 15: "tunnel
//! setup must not allocate more than a constant number of times").
//!
//! A counting global allocator counts the allocations made on the engine's
//! own thread only. The engine runs in process with the binary's logging
//! set-up (env_logger at `info` into the per-tick log buffer, written to a
//! sink), so the two log lines of every tunnel are formatted as in
//! production. Tunnels run one after another (connect, 64 bytes up, 64
//! bytes down, the destination closes, the client closes) through a direct
//! entry and through an entry behind a minimal CONNECT proxy; the count for
//! a batch of tunnels is taken after a warm-up batch (slab and timer heap
//! grown, log buffer allocated), and must be the same constant per tunnel
//! however many tunnels run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Once};
use std::thread;
use std::time::Duration;

use httptunneling::config::{self, Config, Entry};
use httptunneling::{logsink, Engine, EngineOptions};

/// Most heap allocations one tunnel may make on the reactor thread, from
/// accept to close, both log lines included: direct, the tunnel's box and
/// its address list; through a proxy, also the CONNECT stage's request,
/// its state boxes and the answer's status line (measured: 2 and 11).
const MAX_DIRECT: u64 = 2;
const MAX_VIA_PROXY: u64 = 11;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    COUNTED.try_with(|c| c.get()).unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The entry of config line `line` (the earlier lines left empty): DEST,
/// through PROXY if given, with the grammar's defaults, parsed as the
/// binary parses a file, then listening on an ephemeral loopback port.
fn entry(line: usize, dest: SocketAddr, proxy: Option<SocketAddr>) -> Entry {
    let via = proxy.map_or(String::new(), |p| format!(" {} {}", p.ip(), p.port()));
    let text = format!(
        "{}127.0.0.1:1 {} {}{via}\n",
        "\n".repeat(line - 1),
        dest.ip(),
        dest.port()
    );
    let mut no_files = |_: &Path| Err(io::Error::other("no files here"));
    let mut config = config::parse_str(&text, "alloc", Path::new("."), &mut no_files)
        .unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
    let mut entry = config.entries.remove(0);
    entry.listen = "127.0.0.1:0".parse().unwrap();
    entry
}

/// Logging as the binary sets it up, once per process.
fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut logger = env_logger::Builder::new();
        logger
            .filter_level(log::LevelFilter::Info)
            .target(env_logger::Target::Pipe(Box::new(logsink::install(
                Box::new(io::sink()),
            ))))
            .write_style(env_logger::WriteStyle::Never)
            .format(|buf, record| logsink::format(buf, record));
        logger.init();
    });
}

/// Reads 64 bytes, answers 64 bytes, closes: one thread, one connection
/// at a time.
fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 64];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&[b'R'; 64]);
            }
        }
    });
    addr
}

/// A minimal CONNECT proxy: reads the request head, dials, answers 200,
/// then relays in two threads.
fn proxy() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut client) = s else { continue };
            thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head);
                let target = text.split(' ').nth(1).unwrap_or("").to_string();
                let Ok(mut server) = TcpStream::connect(&target) else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let mut c2 = client.try_clone().unwrap();
                let mut s2 = server.try_clone().unwrap();
                let up = thread::spawn(move || {
                    let _ = io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(Shutdown::Write);
                });
                let _ = io::copy(&mut server, &mut client);
                let _ = client.shutdown(Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    addr
}

/// One tunnel the way peerbench's `conn` scenario makes them.
fn one_tunnel(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(&[b'q'; 64]).unwrap();
    let mut reply = [0u8; 64];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply, [b'R'; 64]);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "EOF after the reply");
}

/// The connected sockets this process holds (tunnels' sockets in the
/// engine, the backend and the proxy; not listeners, and not a socket that
/// is not connected, like the engine's reserve), or `None` where
/// `/proc/self/fd` cannot be read. (A descriptor closed and reused while
/// this looks is at worst counted once too often: the caller asks again.)
fn open_connections() -> Option<usize> {
    let mut open = 0;
    for fd in std::fs::read_dir("/proc/self/fd").ok()? {
        let Some(fd) = fd
            .ok()
            .and_then(|fd| fd.file_name().to_str()?.parse::<i32>().ok())
        else {
            continue;
        };
        let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `peer` and `len` are valid for writes of `len` bytes; on a
        // descriptor that is not a connected socket the call only fails.
        let connected =
            unsafe { libc::getpeername(fd, (&raw mut peer).cast::<libc::sockaddr>(), &mut len) }
                == 0;
        open += usize::from(connected);
    }
    Some(open)
}

/// Waits until every tunnel is closed on all sides, the engine's included
/// (the client's EOF comes before the engine closes its side): no
/// connected socket left in the process.
fn settle() {
    if open_connections().is_none() {
        thread::sleep(Duration::from_millis(200));
        return;
    }
    let start = std::time::Instant::now();
    while open_connections().is_some_and(|n| n > 0) {
        assert!(
            start.elapsed() < TIMEOUT,
            "tunnels still open after {TIMEOUT:?}: {:?} connected sockets",
            open_connections()
        );
        thread::sleep(Duration::from_millis(2));
    }
}

fn allocations_for(addr: SocketAddr, tunnels: u64) -> u64 {
    settle();
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..tunnels {
        one_tunnel(addr);
    }
    settle();
    ALLOCS.load(Ordering::Relaxed) - before
}

#[test]
fn a_tunnel_allocates_a_constant_small_number_of_times() {
    init_logging();
    let backend = backend();
    let proxy = proxy();
    let (tx, rx) = mpsc::channel();
    let engine = thread::spawn(move || {
        COUNTED.with(|c| c.set(true));
        let config = Config {
            entries: vec![entry(1, backend, None), entry(2, backend, Some(proxy))],
            metrics: None,
        };
        let engine = Engine::new(config, EngineOptions::default()).expect("engine starts");
        tx.send((engine.listen_addrs(), engine.handle())).unwrap();
        engine.run().expect("engine runs");
    });
    let (addrs, handle) = rx.recv_timeout(TIMEOUT).expect("engine started");
    let mut report = Vec::new();
    for (name, addr, max) in [
        ("direct", addrs[0], MAX_DIRECT),
        ("via proxy", addrs[1], MAX_VIA_PROXY),
    ] {
        // Warm-up: the slab, the timer heap, the queues and the log buffer
        // grow once.
        allocations_for(addr, 200);
        let small = allocations_for(addr, 100);
        let large = allocations_for(addr, 400);
        report.push(format!(
            "{name}: {small} allocations for 100 tunnels, {large} for 400 ({:.2} per tunnel)",
            large as f64 / 400.0
        ));
        eprintln!("{}", report.last().unwrap());
        // Constant per tunnel: four times the tunnels, four times the
        // allocations (a few of the engine's own, e.g. a queue growing
        // under a burst, allowed).
        assert!(
            large.abs_diff(4 * small) <= 40,
            "{name}: allocations do not grow with the tunnel count: {report:?}"
        );
        assert!(
            large <= 400 * max + 10,
            "{name}: more than {max} allocations per tunnel: {report:?}"
        );
    }
    handle.shutdown();
    engine.join().unwrap();
}
