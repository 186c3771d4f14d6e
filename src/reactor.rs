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
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::auth;
use crate::config::{self, Config, Entry};
use crate::logsink;
use crate::net;
use crate::reload::{self, Reloader};
use crate::resolve::{Job, Resolve, Resolver, SystemResolver};
use crate::tunnel::{self, Ctx, Progress, Route, Tunnel};

const WAKER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
/// Connections accepted from one listener in one tick before the others get a turn.
const ACCEPT_BATCH: usize = 256;
/// How long a listener pauses after the process ran out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Messages from other threads (and [`Handle`]s) to the reactor.
pub enum Msg {
    /// A lookup for tunnel `(key, id)` finished.
    Resolved(usize, u64, io::Result<Vec<SocketAddr>>),
    /// A configuration was read again (or failed to parse).
    Reload(Result<Config, Vec<config::Error>>),
    /// Stop: close listeners and tunnels, return from [`Engine::run`].
    Shutdown(&'static str),
}

/// How the engine is set up beyond the configuration itself.
pub struct EngineOptions {
    /// The config file, for reloads (watching and SIGHUP).
    pub config_path: Option<PathBuf>,
    /// Watch `config_path` for changes.
    pub watch: bool,
    /// Handle SIGHUP, SIGUSR1, SIGINT and SIGTERM.
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

    /// Applies `config` as a reload, exactly as if the file had changed.
    pub fn reload(&self, config: Config) {
        self.send(Msg::Reload(Ok(config)));
    }
}

struct Listener {
    id: u64,
    socket: TcpListener,
    route: Rc<Route>,
    /// Open tunnels accepted here (for max-conns).
    open: usize,
    /// The kernel said a connection may be waiting; cleared by WouldBlock.
    ready: bool,
    /// Paused after EMFILE and similar until this instant.
    paused_until: Option<Instant>,
    /// The listener is paused for want of descriptors (warned once when it
    /// starts, said again at info when accepting works again).
    short_of_fds: bool,
    queued: bool,
}

impl Listener {
    /// Puts the listener on the accept queue unless it is there already.
    fn queue(&mut self, key: usize, accept_queue: &mut Vec<usize>) {
        if !self.queued {
            self.queued = true;
            accept_queue.push(key);
        }
    }

    /// Stops accepting for [`ACCEPT_BACKOFF`]; the timer brings it back.
    fn pause(&mut self, key: usize, now: Instant, timers: &mut Timers) {
        let until = now + ACCEPT_BACKOFF;
        self.paused_until = Some(until);
        timers.push(Reverse((until, key, self.id)));
    }
}

/// Deadlines as (instant, slab key, owner id); stale ones are skipped.
type Timers = BinaryHeap<Reverse<(Instant, usize, u64)>>;

enum Slot {
    Listener(Listener),
    Tunnel(Box<Tunnel>),
}

/// The forwarding engine. See the module docs.
pub struct Engine {
    poll: Poll,
    slab: Slab<Slot>,
    by_listen: HashMap<SocketAddr, usize>,
    waker: Arc<Waker>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    resolver: Resolver<(usize, u64)>,
    reloader: Option<Reloader>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    timers: Timers,
    drive_queue: Vec<usize>,
    accept_queue: Vec<usize>,
    finished: Vec<usize>,
    next_id: u64,
    tunnels_total: u64,
    bytes_total: (u64, u64),
    stop: Option<&'static str>,
    started: Instant,
    /// The signal source fired this tick (draining it costs a syscall).
    signalled: bool,
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
        let deliver_tx = std::sync::Mutex::new(tx.clone());
        let deliver_waker = Arc::clone(&waker);
        let resolver = Resolver::new(
            opts.resolver,
            Arc::new(move |(key, id): (usize, u64), answer| {
                if let Ok(tx) = deliver_tx.lock() {
                    if tx.send(Msg::Resolved(key, id, answer)).is_ok() {
                        let _ = deliver_waker.wake();
                    }
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
            next_id: 1,
            tunnels_total: 0,
            bytes_total: (0, 0),
            stop: None,
            started: Instant::now(),
            signalled: false,
            spare: None,
        };
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
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
            let mut signals =
                signal_hook_mio::v1_0::Signals::new([SIGHUP, SIGUSR1, SIGINT, SIGTERM])
                    .map_err(|e| setup("signals", e))?;
            engine
                .poll
                .registry()
                .register(&mut signals, SIGNALS, Interest::READABLE)
                .map_err(|e| setup("signals", e))?;
            engine.signals = Some(signals);
        }
        if let Some(path) = opts.config_path {
            let handle = engine.handle();
            let reloader = reload::spawn(path, opts.watch, move |result| {
                handle.send(Msg::Reload(result));
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

    fn add_listener(&mut self, entry: Entry) -> io::Result<()> {
        let listen = entry.listen;
        let mut socket = net::bind_listener(listen)?;
        net::tune_listener(&socket, entry.options.keepalive)?;
        // Port 0 (in-process tests and benches only: the config parser
        // refuses it) is keyed by the port the kernel chose.
        let key_addr = match socket.local_addr() {
            Ok(bound) if listen.port() == 0 => bound,
            _ => listen,
        };
        let route = Rc::new(Route::new(entry));
        let id = self.next_id();
        let slot = self.slab.vacant_entry();
        let key = slot.key();
        self.poll.registry().register(
            &mut socket,
            tunnel::token(key, tunnel::CLIENT),
            Interest::READABLE,
        )?;
        info!(
            "listening on {} (line {}) -> {}",
            socket.local_addr().unwrap_or(listen),
            route.entry.line,
            route.describe()
        );
        for hop in &route.hops {
            if let Some(warning) = auth::load_warning(&hop.proxy) {
                warn!("{listen} (line {}): {warning}", route.entry.line);
            }
        }
        slot.insert(Slot::Listener(Listener {
            id,
            socket,
            route,
            open: 0,
            // Connections may already be queued: try accepting once.
            ready: true,
            paused_until: None,
            short_of_fds: false,
            queued: true,
        }));
        self.accept_queue.push(key);
        self.by_listen.insert(key_addr, key);
        Ok(())
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
                    _ => {} // stale: the owner is gone
                }
            }
        }
    }

    fn drive_queued(&mut self, now: Instant) {
        let queue = std::mem::take(&mut self.drive_queue);
        for key in queue {
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
        Self::arm(&mut self.timers, key, t);
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

    fn accept_queued(&mut self, now: Instant) {
        let queue = std::mem::take(&mut self.accept_queue);
        for key in queue {
            if let Some(Slot::Listener(l)) = self.slab.get_mut(key) {
                l.queued = false;
                self.accept_on(key, now);
            }
        }
    }

    /// Accepts from one listener until WouldBlock, max-conns, a descriptor
    /// shortage or the batch limit.
    ///
    /// Each accept is preceded by making the tunnel's upstream socket, so a
    /// client is accepted only when its upstream descriptor is already held:
    /// out of descriptors, clients wait in the listen backlog instead of
    /// being accepted and then reset (SPEC "Limits and faults"), whatever
    /// else happens in the same tick.
    fn accept_on(&mut self, key: usize, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            let Some(Slot::Listener(l)) = self.slab.get_mut(key) else {
                return;
            };
            if !l.ready || l.paused_until.is_some() {
                return;
            }
            if let Some(max) = l.route.entry.options.max_conns {
                if l.open >= max {
                    debug!(
                        "listener {}: max-conns {max} reached, pausing accept",
                        l.route.entry.listen
                    );
                    return; // resumed when one of its tunnels closes
                }
            }
            let v6 = l.route.first_hop_ip().is_some_and(|a| a.is_ipv6());
            let reserve = match self.spare.take() {
                Some(r) if r.is_v6() == v6 => Ok(r),
                other => {
                    drop(other);
                    net::Reserved::new(v6)
                }
            };
            let reserve = match reserve {
                Ok(r) => r,
                Err(e) => {
                    Self::short_of_descriptors(l, key, now, &mut self.timers, "socket", &e);
                    return;
                }
            };
            match l.socket.accept() {
                Ok((stream, client_addr)) => {
                    if std::mem::take(&mut l.short_of_fds) {
                        info!("accepting on {} again", l.route.entry.listen);
                    }
                    self.open_tunnel(key, stream, client_addr, reserve, now)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    l.ready = false;
                    self.spare = Some(reserve);
                    return;
                }
                Err(e) if net::is_transient_accept_error(&e) => self.spare = Some(reserve),
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays
                    // queued; edge triggers will not report it again, so we
                    // come back ourselves after a pause (or a tunnel closing).
                    drop(reserve);
                    Self::short_of_descriptors(l, key, now, &mut self.timers, "accept", &e);
                    return;
                }
            }
        }
        // Batch spent with connections possibly left: continue next tick.
        if let Some(Slot::Listener(l)) = self.slab.get_mut(key) {
            l.queue(key, &mut self.accept_queue);
        }
    }

    /// Pauses listener `l` for [`ACCEPT_BACKOFF`] after `what` failed with
    /// `e`: one warn line when the shortage starts, debug lines while it
    /// lasts (a retry every 100 ms must not flood the log).
    fn short_of_descriptors(
        l: &mut Listener,
        key: usize,
        now: Instant,
        timers: &mut Timers,
        what: &str,
        e: &io::Error,
    ) {
        let pause = ACCEPT_BACKOFF.as_millis();
        if l.short_of_fds {
            debug!("{what} for {}: {e}; still pausing", l.route.entry.listen);
        } else {
            warn!(
                "{what} for {}: {e}; clients wait in the backlog, retrying every {pause}ms or when a tunnel closes",
                l.route.entry.listen
            );
            l.short_of_fds = true;
        }
        l.pause(key, now, timers);
    }

    fn open_tunnel(
        &mut self,
        listener_key: usize,
        mut stream: mio::net::TcpStream,
        client_addr: SocketAddr,
        reserve: net::Reserved,
        now: Instant,
    ) {
        let id = self.next_id();
        let Some(Slot::Listener(l)) = self.slab.get_mut(listener_key) else {
            return;
        };
        let route = Rc::clone(&l.route);
        let listener = (listener_key, l.id);
        let slot = self.slab.vacant_entry();
        let key = slot.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            tunnel::token(key, tunnel::CLIENT),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("accept on {}: register: {e}", route.entry.listen);
            return;
        }
        // TCP_NODELAY and keepalive came from the listener (net::tune_listener).
        let mut t = Box::new(Tunnel::new(
            id,
            listener,
            route,
            stream,
            client_addr,
            Some(reserve),
            now,
        ));
        debug!("{}: accepted", t.prefix());
        let progress = if t.needs_resolution() {
            let hop = t.route.first_hop();
            self.resolver.submit(Job {
                tag: (key, id),
                host: hop.host.clone(),
                port: hop.port,
            });
            Progress::Idle
        } else {
            let mut ctx = Ctx {
                registry: self.poll.registry(),
                key,
                now,
            };
            t.start(&mut ctx)
        };
        slot.insert(Slot::Tunnel(t));
        if let Some(Slot::Listener(l)) = self.slab.get_mut(listener_key) {
            l.open += 1;
        }
        self.tunnels_total += 1;
        self.after_drive(key, progress);
    }

    fn handle_messages(&mut self, now: Instant) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Msg::Resolved(key, id, answer) => self.resolved(key, id, answer, now),
                Msg::Reload(Ok(config)) => self.apply_reload(config),
                Msg::Reload(Err(errors)) => {
                    warn!("reload failed, keeping the running configuration");
                    for e in errors {
                        warn!("{e}");
                    }
                }
                Msg::Shutdown(why) => self.stop = Some(why),
            }
        }
    }

    fn resolved(&mut self, key: usize, id: u64, answer: io::Result<Vec<SocketAddr>>, now: Instant) {
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
        let progress = t.resolved(answer, &mut ctx);
        self.after_drive(key, progress);
    }

    fn handle_signals(&mut self) {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        if !std::mem::take(&mut self.signalled) {
            return;
        }
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let pending: Vec<i32> = signals.pending().collect();
        for signal in pending {
            match signal {
                SIGHUP => {
                    info!("SIGHUP: reloading the configuration");
                    if let Some(r) = &self.reloader {
                        r.trigger();
                    }
                }
                SIGUSR1 => self.snapshot(),
                SIGINT => self.stop = Some("SIGINT"),
                SIGTERM => self.stop = Some("SIGTERM"),
                _ => {}
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
                    let progress = t.expire(now);
                    self.after_drive(key, progress);
                }
                Some(Slot::Listener(l))
                    if l.id == id && l.paused_until.is_some_and(|u| u <= now) =>
                {
                    l.paused_until = None;
                    l.queue(key, &mut self.accept_queue);
                }
                _ => {} // stale timer: its owner is gone
            }
        }
    }

    fn remove_finished(&mut self, now: Instant) {
        let finished = std::mem::take(&mut self.finished);
        for key in finished {
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
    }

    fn apply_reload(&mut self, config: Config) {
        let mut wanted: HashMap<SocketAddr, Entry> =
            config.entries.into_iter().map(|e| (e.listen, e)).collect();
        let (mut added, mut removed, mut changed, mut unchanged) = (0, 0, 0, 0);
        let current: Vec<(SocketAddr, usize)> =
            self.by_listen.iter().map(|(a, k)| (*a, *k)).collect();
        for (listen, key) in current {
            match wanted.remove(&listen) {
                None => {
                    if let Some(Slot::Listener(mut l)) = self.slab.try_remove(key) {
                        let _ = self.poll.registry().deregister(&mut l.socket);
                        info!(
                            "stopped listening on {listen} ({} open tunnels run on)",
                            l.open
                        );
                    }
                    self.by_listen.remove(&listen);
                    removed += 1;
                }
                Some(entry) => {
                    let Some(Slot::Listener(l)) = self.slab.get_mut(key) else {
                        continue;
                    };
                    if l.route.entry.same_settings(&entry) {
                        if l.route.entry.line != entry.line {
                            l.route = Rc::new(Route::new(entry));
                        }
                        unchanged += 1;
                    } else {
                        info!(
                            "changed {listen} -> {}",
                            Route::new(entry.clone()).describe()
                        );
                        if let Err(e) = net::tune_listener(&l.socket, entry.options.keepalive) {
                            warn!("{listen}: socket options for new tunnels: {e}");
                        }
                        l.route = Rc::new(Route::new(entry));
                        changed += 1;
                        // max-conns may have grown: accept what waits.
                        if l.ready {
                            l.queue(key, &mut self.accept_queue);
                        }
                    }
                }
            }
        }
        let mut new_entries: Vec<Entry> = wanted.into_values().collect();
        new_entries.sort_by_key(|e| e.line);
        for entry in new_entries {
            let (listen, line) = (entry.listen, entry.line);
            match self.add_listener(entry) {
                Ok(()) => added += 1,
                Err(e) => error!(
                    "cannot listen on {listen} (line {line}), the rest of the reload applies: {e}"
                ),
            }
        }
        info!("reload: {added} added, {removed} removed, {changed} changed, {unchanged} unchanged");
    }

    fn snapshot(&self) {
        let open: Vec<&Tunnel> = self
            .slab
            .iter()
            .filter_map(|(_, s)| match s {
                Slot::Tunnel(t) => Some(&**t),
                _ => None,
            })
            .collect();
        let (mut up, mut down) = self.bytes_total;
        for t in &open {
            let (u, d) = t.bytes();
            up += u;
            down += d;
        }
        info!(
            "snapshot: {} entries, {} open tunnels, {} tunnels since start, up={up} down={down}, uptime {}",
            self.by_listen.len(),
            open.len(),
            self.tunnels_total,
            net::fmt_duration(self.started.elapsed())
        );
        let mut listeners: Vec<&Listener> = self
            .slab
            .iter()
            .filter_map(|(_, s)| match s {
                Slot::Listener(l) => Some(l),
                _ => None,
            })
            .collect();
        listeners.sort_by_key(|l| l.route.entry.line);
        for l in listeners {
            info!(
                "snapshot: entry {} -> {}: {} open",
                l.route.entry.listen,
                l.route.describe(),
                l.open
            );
        }
        let now = Instant::now();
        for t in open {
            let (u, d) = t.bytes();
            info!(
                "snapshot: {}: age={} up={u} down={d} state={}",
                t.prefix(),
                net::fmt_duration(now.saturating_duration_since(t.accepted())),
                t.state()
            );
        }
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
            }
        }
        self.by_listen.clear();
    }
}
