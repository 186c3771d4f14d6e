//! The reactor: one `mio::Poll` driving every listener and tunnel.
//!
//! Owns the poll, the slab of listeners and tunnels (keyed by token), the
//! waker and its channel, the timers, accepting, reloads and shutdown.
//! Never blocks: name resolution and file reading happen on other threads
//! ([`crate::resolve`], [`crate::reload`]) and come back as [`Msg`]s.
//!
//! One tick: compute the poll timeout (zero while a tunnel or listener has
//! work left, else the nearest deadline, else none: idle costs no CPU) →
//! poll → record readiness and queue owners → drive queued tunnels → accept
//! → handle messages (resolutions, reloads, signals) → expire deadlines →
//! remove finished tunnels (closing their sockets). Removing last means a key freed in
//! this batch is never reused while stale events for it are queued.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::event::Event;
use mio::{Events, Poll, Token, Waker};
use slab::Slab;

mod accept;
mod apply;
mod scrape;

use crate::config::{self, Config};
use crate::logsink;
use crate::net;
use crate::reload::{self, Reloader};
use crate::resolve::{Job, Resolve, Resolver, SystemResolver};
use crate::sys::{self, Signal};
use crate::tls;
use crate::tunnel::{self, Ctx, Progress, Tunnel};
use accept::Listener;

const WAKER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
/// Connections accepted from one listener in one tick before the others get a turn.
const ACCEPT_BATCH: usize = 256;
/// How long a listener pauses after the process ran out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Which lookup an answer is for: the tunnel's slab key and id, and the
/// tunnel's number for the lookup (a route given up makes it stale).
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    key: usize,
    id: u64,
    n: u32,
}

/// Messages from other threads (and [`Handle`]s) to the reactor.
pub enum Msg {
    /// A lookup for tunnel `(key, id)` finished.
    Resolved(Lookup, io::Result<Vec<SocketAddr>>),
    /// A configuration was read again (or failed to parse).
    Reload(Result<Config, Vec<config::Error>>),
    /// A valid configuration's TLS settings could not be built (a bad
    /// `proxy-ca`, an unusable system store): the reload is refused.
    TlsFailed(String),
    /// A valid configuration with the TLS settings it needs.
    Reloaded(Config, tls::Store),
    /// A Negotiate token (or why there is none) for a tunnel.
    Token(Lookup, Result<Vec<u8>, String>),
    /// Stop: close listeners and tunnels, return from [`Engine::run`].
    Shutdown(&'static str),
}

/// How the engine is set up beyond the configuration itself.
pub struct EngineOptions {
    /// The config file, for reloads (watching and SIGHUP).
    pub config_path: Option<PathBuf>,
    /// Watch `config_path` for changes.
    pub watch: bool,
    /// Handle SIGHUP, SIGUSR1, SIGINT and SIGTERM (Windows: Ctrl-C, Ctrl-Break,
    /// console close; see [`crate::sys`]).
    pub signals: bool,
    /// Name resolution (runs on resolver threads).
    pub resolver: Arc<dyn Resolve>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            config_path: None,
            watch: false,
            signals: false,
            resolver: Arc::new(SystemResolver),
        }
    }
}

/// Why the engine could not start.
#[derive(Debug)]
pub enum StartError {
    /// A listener could not be bound.
    Bind {
        /// The address as configured.
        listen: SocketAddr,
        /// The entry's line in the config file.
        line: usize,
        /// What the OS said.
        source: io::Error,
    },
    /// Setting up the poll, waker, signals or watcher failed.
    Setup(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind {
                listen,
                line,
                source,
            } => write!(f, "cannot listen on {listen} (line {line}): {source}"),
            StartError::Setup(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for StartError {}

/// A cheap, thread-safe way to talk to a running engine.
#[derive(Clone)]
pub struct Handle {
    tx: Sender<Msg>,
    waker: Arc<Waker>,
}

impl Handle {
    fn send(&self, msg: Msg) {
        // Failing sends mean the engine already stopped: nothing to tell.
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Asks the engine to stop; [`Engine::run`] returns soon after.
    pub fn shutdown(&self) {
        self.send(Msg::Shutdown("shutdown requested"));
    }
}

/// Deadlines as (instant, slab key, owner id); stale ones are skipped.
type Timers = BinaryHeap<Reverse<(Instant, usize, u64)>>;

/// A slab entry. Every variant is boxed, so an entry costs 16 bytes
/// whatever it holds: the slab has one per tunnel.
enum Slot {
    Listener(Box<Listener>),
    Tunnel(Box<Tunnel>),
    Metrics(Box<scrape::MetricsListener>),
    Scrape(Box<scrape::Scrape>),
}

/// The forwarding engine. See the module docs.
pub struct Engine {
    poll: Poll,
    slab: Slab<Slot>,
    by_listen: HashMap<SocketAddr, usize>,
    waker: Arc<Waker>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    resolver: Resolver<Lookup>,
    reloader: Option<Reloader>,
    signals: Option<sys::Signals>,
    timers: Timers,
    drive_queue: Vec<usize>,
    accept_queue: Vec<usize>,
    finished: Vec<usize>,
    /// An empty queue with capacity: the three queues above are swapped
    /// with it each tick, so no tick allocates a queue anew.
    spare_queue: Vec<usize>,
    next_id: u64,
    tunnels_total: u64,
    bytes_total: (u64, u64),
    stop: Option<&'static str>,
    started: Instant,
    /// The signal source fired this tick (draining it costs a syscall).
    signalled: bool,
    /// The TLS settings of the configuration in force.
    tls: tls::Store,
    /// The metrics listener's slab key.
    metrics: Option<usize>,
    /// Scrapes being served.
    scrapes: usize,
    /// Reloads applied and refused.
    reloads: (u64, u64),
    /// An upstream socket made for a client that was not there (accept
    /// said WouldBlock): the next accept of a route of its family uses it.
    spare: Option<net::Reserved>,
}

impl Engine {
    /// Binds every entry's listener and prepares the loop.
    ///
    /// # Errors
    /// [`StartError::Bind`] naming the first entry that cannot listen, or
    /// [`StartError::Setup`] when the poll, signals or watcher fail.
    pub fn new(config: Config, opts: EngineOptions) -> Result<Engine, StartError> {
        let setup = |what: &str, e: io::Error| StartError::Setup(format!("{what}: {e}"));
        let poll = Poll::new().map_err(|e| setup("poll", e))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| setup("waker", e))?);
        let (tx, rx) = mpsc::channel();
        let deliver_tx = tx.clone();
        let deliver_waker = Arc::clone(&waker);
        let resolver = Resolver::new(
            opts.resolver,
            Arc::new(move |lookup: Lookup, answer| {
                // Sender is Sync: the resolver threads share it as it is.
                if deliver_tx.send(Msg::Resolved(lookup, answer)).is_ok() {
                    let _ = deliver_waker.wake();
                }
            }),
        );
        let mut engine = Engine {
            poll,
            slab: Slab::new(),
            by_listen: HashMap::new(),
            waker,
            tx,
            rx,
            resolver,
            reloader: None,
            signals: None,
            timers: BinaryHeap::new(),
            drive_queue: Vec::new(),
            accept_queue: Vec::new(),
            finished: Vec::new(),
            spare_queue: Vec::new(),
            next_id: 1,
            tunnels_total: 0,
            bytes_total: (0, 0),
            stop: None,
            started: Instant::now(),
            signalled: false,
            spare: None,
            tls: tls::Store::build(tunnel::trusts(&config.entries)).map_err(StartError::Setup)?,
            metrics: None,
            scrapes: 0,
            reloads: (0, 0),
        };
        if let Some(m) = &config.metrics {
            let (listen, line) = (m.listen, m.line);
            engine
                .add_metrics(listen)
                .map_err(|source| StartError::Bind {
                    listen,
                    line,
                    source,
                })?;
        }
        for entry in config.entries {
            let (listen, line) = (entry.listen, entry.line);
            engine
                .add_listener(entry)
                .map_err(|source| StartError::Bind {
                    listen,
                    line,
                    source,
                })?;
        }
        if opts.signals {
            let handle = engine.handle();
            let stop = move |why| handle.send(Msg::Shutdown(why));
            let signals = sys::Signals::new(engine.poll.registry(), SIGNALS, stop)
                .map_err(|e| setup("signals", e))?;
            engine.signals = Some(signals);
        }
        if let Some(path) = opts.config_path {
            let handle = engine.handle();
            let reloader = reload::spawn(path, opts.watch, move |result| {
                // Still on the reload thread: reading the CA files here
                // keeps the reactor from blocking on them.
                let msg = match result {
                    Ok(config) => match tls::Store::build(tunnel::trusts(&config.entries)) {
                        Ok(store) => Msg::Reloaded(config, store),
                        Err(e) => Msg::TlsFailed(e),
                    },
                    Err(errors) => Msg::Reload(Err(errors)),
                };
                handle.send(msg);
            })
            .map_err(|e| setup("watching the config file", e))?;
            engine.reloader = Some(reloader);
        }
        info!("ready: {} entries", engine.by_listen.len());
        Ok(engine)
    }

    /// The bound address of every listener, in no particular order when
    /// reloads happened, in entry order otherwise (port 0 resolved).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let mut keys: Vec<usize> = self.by_listen.values().copied().collect();
        keys.sort_unstable();
        keys.into_iter()
            .filter_map(|k| match self.slab.get(k) {
                Some(Slot::Listener(l)) => l.socket.local_addr().ok(),
                _ => None,
            })
            .collect()
    }

    /// A handle to stop or reload the engine from another thread.
    pub fn handle(&self) -> Handle {
        Handle {
            tx: self.tx.clone(),
            waker: Arc::clone(&self.waker),
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Runs until a shutdown (Handle or signal).
    ///
    /// # Errors
    /// Only when `poll` itself fails, which mio documents as unrecoverable.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        while self.stop.is_none() {
            logsink::flush();
            let timeout = self.poll_timeout();
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in events.iter() {
                self.record(event);
            }
            self.drive_queued(now);
            self.accept_queued(now);
            self.handle_messages(now);
            self.handle_signals();
            self.expire(now);
            self.remove_finished(now);
        }
        self.shut_down();
        logsink::flush();
        Ok(())
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.drive_queue.is_empty() || !self.accept_queue.is_empty() {
            return Some(Duration::ZERO);
        }
        self.timers.peek().map(|Reverse((at, _, _))| {
            // Round up to the next millisecond so epoll's millisecond timeout
            // never wakes us just before the deadline (a busy loop).
            let left = at.saturating_duration_since(Instant::now());
            Duration::from_millis(left.as_micros().div_ceil(1000) as u64)
        })
    }

    fn record(&mut self, event: &Event) {
        match event.token() {
            WAKER => {} // the channel is checked every tick (no syscall)
            SIGNALS => self.signalled = true,
            token => {
                let (key, side) = tunnel::decode(token);
                match self.slab.get_mut(key) {
                    Some(Slot::Tunnel(t)) => {
                        t.record(side, event);
                        if !t.queued {
                            t.queued = true;
                            self.drive_queue.push(key);
                        }
                    }
                    Some(Slot::Listener(l)) if side == tunnel::CLIENT => {
                        l.ready = true;
                        l.queue(key, &mut self.accept_queue);
                    }
                    Some(Slot::Metrics(_)) => self.metrics_ready(key),
                    Some(Slot::Scrape(_)) => self.drive_scrape(key),
                    _ => {} // stale: the owner is gone
                }
            }
        }
    }

    fn drive_queued(&mut self, now: Instant) {
        let queue = std::mem::take(&mut self.spare_queue);
        let queue = std::mem::replace(&mut self.drive_queue, queue);
        for &key in &queue {
            let Some(Slot::Tunnel(t)) = self.slab.get_mut(key) else {
                continue;
            };
            t.queued = false;
            let mut ctx = Ctx {
                registry: self.poll.registry(),
                key,
                now,
            };
            let progress = t.drive(&mut ctx);
            self.after_drive(key, progress);
        }
        self.give_spare(queue);
    }

    /// Acts on what a drive (or start, or resolution) reported, and arms a
    /// timer when the tunnel's deadline is earlier than the one armed.
    fn after_drive(&mut self, key: usize, progress: Progress) {
        if progress == Progress::Finished {
            self.finished.push(key);
            return;
        }
        let Some(Slot::Tunnel(t)) = self.slab.get_mut(key) else {
            return;
        };
        if progress == Progress::MoreWork && !t.queued {
            t.queued = true;
            self.drive_queue.push(key);
        }
        if let Some((n, host)) = t.token_request() {
            let lookup = Lookup { key, id: t.id, n };
            self.ask_token(lookup, host);
        }
        let Some(Slot::Tunnel(t)) = self.slab.get_mut(key) else {
            return;
        };
        if let Some((n, hop)) = t.lookup() {
            self.resolver.submit(Job {
                tag: Lookup { key, id: t.id, n },
                host: hop.host,
                port: hop.port,
            });
        }
        Self::arm(&mut self.timers, key, t);
    }

    /// Asks a worker thread for a Negotiate token for `HTTP@host`: GSSAPI
    /// may talk to the KDC (seconds), so never on this thread. The answer
    /// comes back as [`Msg::Token`]; `connect-timeout` still bounds the
    /// handshake.
    fn ask_token(&mut self, lookup: Lookup, host: String) {
        let tx = self.tx.clone();
        let waker = Arc::clone(&self.waker);
        let spawned = std::thread::Builder::new()
            .name("negotiate".into())
            .spawn(move || {
                let token = crate::auth::gssapi::load().and_then(|g| g.initial_token(&host));
                if tx.send(Msg::Token(lookup, token)).is_ok() {
                    let _ = waker.wake();
                }
            });
        if let Err(e) = spawned {
            let _ = self.tx.send(Msg::Token(
                lookup,
                Err(format!("no thread for GSSAPI: {e}")),
            ));
        }
    }

    /// A Negotiate token arrived for a tunnel: its request is built and sent.
    fn token(&mut self, lookup: Lookup, token: Result<Vec<u8>, String>, now: Instant) {
        let Lookup { key, id, n } = lookup;
        let Some(Slot::Tunnel(t)) = self.slab.get_mut(key) else {
            return;
        };
        if t.id != id {
            return;
        }
        let mut ctx = Ctx {
            registry: self.poll.registry(),
            key,
            now,
        };
        let mut progress = t.token_arrived(n, token);
        if progress != Progress::Finished {
            progress = t.drive(&mut ctx);
        }
        self.after_drive(key, progress);
    }

    /// Pushes a timer for `t`'s deadline unless one at or before it is armed.
    /// Deadlines move later as a tunnel runs (idle time counted from the last
    /// byte), so a timer that fires early finds nothing due and re-arms.
    fn arm(timers: &mut Timers, key: usize, t: &mut Tunnel) {
        if let Some(at) = t.deadline() {
            if t.timer.map_or(true, |armed| at < armed) {
                t.timer = Some(at);
                timers.push(Reverse((at, key, t.id)));
            }
        }
    }

    fn handle_messages(&mut self, now: Instant) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Resolved(lookup, answer) => self.resolved(lookup, answer, now),
                Msg::Reload(Ok(config)) => {
                    // In-process callers (tests): settings built here.
                    match tls::Store::build(tunnel::trusts(&config.entries)) {
                        Ok(store) => self.apply_reload(config, store),
                        Err(e) => warn!("reload failed, keeping the running configuration: {e}"),
                    }
                }
                Msg::Reloaded(config, store) => self.apply_reload(config, store),
                Msg::Token(lookup, token) => self.token(lookup, token, now),
                Msg::TlsFailed(e) => {
                    self.reloads.1 += 1;
                    warn!("reload failed, keeping the running configuration: {e}")
                }
                Msg::Reload(Err(errors)) => {
                    self.reloads.1 += 1;
                    warn!("reload failed, keeping the running configuration");
                    for e in errors {
                        warn!("{e}");
                    }
                }
                Msg::Shutdown(why) => self.stop = Some(why),
            }
        }
    }

    fn resolved(&mut self, lookup: Lookup, answer: io::Result<Vec<SocketAddr>>, now: Instant) {
        let Lookup { key, id, n } = lookup;
        let Some(Slot::Tunnel(t)) = self.slab.get_mut(key) else {
            return;
        };
        if t.id != id {
            return; // the tunnel it was for is gone (timed out)
        }
        let mut ctx = Ctx {
            registry: self.poll.registry(),
            key,
            now,
        };
        let progress = t.resolved(n, answer, &mut ctx);
        self.after_drive(key, progress);
    }

    fn handle_signals(&mut self) {
        if !std::mem::take(&mut self.signalled) {
            return;
        }
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        for signal in signals.pending() {
            match signal {
                Signal::Reload => {
                    info!("SIGHUP: reloading the configuration");
                    if let Some(r) = &self.reloader {
                        r.trigger();
                    }
                }
                Signal::Snapshot => self.snapshot(),
                Signal::Stop(why) => self.stop = Some(why),
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, key, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match self.slab.get_mut(key) {
                Some(Slot::Tunnel(t)) if t.id == id && t.timer == Some(at) => {
                    t.timer = None;
                    let mut ctx = Ctx {
                        registry: self.poll.registry(),
                        key,
                        now,
                    };
                    let progress = t.expire(&mut ctx);
                    self.after_drive(key, progress);
                }
                Some(Slot::Listener(l))
                    if l.id == id && l.paused_until.is_some_and(|u| u <= now) =>
                {
                    l.paused_until = None;
                    l.queue(key, &mut self.accept_queue);
                }
                Some(Slot::Scrape(_)) => self.scrape_expired(key, id, now),
                _ => {} // stale timer: its owner is gone
            }
        }
    }

    fn remove_finished(&mut self, now: Instant) {
        let finished = std::mem::take(&mut self.spare_queue);
        let finished = std::mem::replace(&mut self.finished, finished);
        for &key in &finished {
            let Some(Slot::Tunnel(_)) = self.slab.get(key) else {
                continue;
            };
            let Slot::Tunnel(mut t) = self.slab.remove(key) else {
                continue;
            };
            t.close();
            t.log_end(now);
            let (up, down) = t.bytes();
            self.bytes_total.0 += up;
            self.bytes_total.1 += down;
            let (lkey, lid) = t.listener;
            if let Some(Slot::Listener(l)) = self.slab.get_mut(lkey) {
                if l.id == lid {
                    match t.result() {
                        Ok(handshake) => {
                            l.counters.ok += 1;
                            l.counters.handshake.observe(handshake);
                        }
                        Err(kind) => l.counters.failed(kind),
                    }
                    l.counters.up += up;
                    l.counters.down += down;
                    l.open = l.open.saturating_sub(1);
                    // A slot is free: accept what waits (max-conns), and
                    // retry early after a descriptor shortage.
                    l.paused_until = None;
                    if l.ready {
                        l.queue(lkey, &mut self.accept_queue);
                    }
                }
            }
        }
        self.give_spare(finished);
    }

    /// Keeps the emptied `queue`'s capacity as `spare_queue`.
    pub(super) fn give_spare(&mut self, mut queue: Vec<usize>) {
        queue.clear();
        self.spare_queue = queue;
    }

    /// The listeners, in the order of their lines (snapshot, metrics).
    fn listeners_by_line(&self) -> Vec<&Listener> {
        let mut listeners: Vec<&Listener> = self
            .slab
            .iter()
            .filter_map(|(_, s)| match s {
                Slot::Listener(l) => Some(&**l),
                _ => None,
            })
            .collect();
        listeners.sort_by_key(|l| l.route.entry.line);
        listeners
    }

    fn shut_down(&mut self) {
        info!("shutting down ({})", self.stop.unwrap_or("shutdown"));
        let now = Instant::now();
        let keys: Vec<usize> = self.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.slab.remove(key) {
                Slot::Listener(mut l) => {
                    let _ = self.poll.registry().deregister(&mut l.socket);
                }
                Slot::Tunnel(mut t) => {
                    t.shut_down();
                    t.close();
                    t.log_end(now);
                }
                Slot::Metrics(_) | Slot::Scrape(_) => {}
            }
        }
        self.by_listen.clear();
    }
}
