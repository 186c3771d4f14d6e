//! Listeners and accepting: binding an entry's socket, accepting until
//! `WouldBlock`, `max-conns` or a descriptor shortage, and opening a tunnel
//! for each accepted client (with its upstream socket already made).

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::Interest;

use super::{Engine, Slot, Timers, ACCEPT_BACKOFF, ACCEPT_BATCH};
use crate::auth;
use crate::config::Entry;
use crate::net;
use crate::tunnel::{self, Ctx, Route, Tunnel};
use std::cmp::Reverse;

/// One entry's listening socket and its accept bookkeeping.
pub(super) struct Listener {
    pub(super) id: u64,
    pub(super) socket: TcpListener,
    pub(super) route: Rc<Route>,
    /// Open tunnels accepted here (for max-conns).
    pub(super) open: usize,
    /// The kernel said a connection may be waiting; cleared by WouldBlock.
    pub(super) ready: bool,
    /// Paused after EMFILE and similar until this instant.
    pub(super) paused_until: Option<Instant>,
    /// The listener is paused for want of descriptors (warned once when it
    /// starts, said again at info when accepting works again).
    pub(super) short_of_fds: bool,
    pub(super) queued: bool,
    /// The entry's counters for the metrics (kept across reloads).
    pub(super) counters: crate::metrics::Counters,
}

impl Listener {
    /// Puts the listener on the accept queue unless it is there already.
    pub(super) fn queue(&mut self, key: usize, accept_queue: &mut Vec<usize>) {
        if !self.queued {
            self.queued = true;
            accept_queue.push(key);
        }
    }

    /// Stops accepting for [`ACCEPT_BACKOFF`]; the timer brings it back.
    pub(super) fn pause(&mut self, key: usize, now: Instant, timers: &mut Timers) {
        let until = now + ACCEPT_BACKOFF;
        self.paused_until = Some(until);
        timers.push(Reverse((until, key, self.id)));
    }
}

impl Engine {
    pub(super) fn add_listener(&mut self, entry: Entry) -> io::Result<()> {
        let listen = entry.listen;
        let mut socket = net::bind_listener(listen)?;
        net::tune_listener(&socket, entry.options.keepalive)?;
        // Port 0 (in-process tests and benches only: the config parser
        // refuses it) is keyed by the port the kernel chose.
        let key_addr = match socket.local_addr() {
            Ok(bound) if listen.port() == 0 => bound,
            _ => listen,
        };
        let route = Rc::new(Route::with_tls(entry, &self.tls));
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
        let tls_hops = route
            .paths
            .iter()
            .flat_map(|p| &p.hops)
            .any(|h| h.tls.is_some());
        if tls_hops && !route.entry.options.proxy_verify {
            warn!(
                "{listen} (line {}): proxy-verify=off: the certificates of its https:// proxies are not checked",
                route.entry.line
            );
        }
        for hop in route.paths.iter().flat_map(|p| &p.hops) {
            if let Some(warning) = auth::load_warning(&hop.proxy) {
                warn!("{listen} (line {}): {warning}", route.entry.line);
            }
        }
        slot.insert(Slot::Listener(Box::new(Listener {
            id,
            socket,
            route,
            open: 0,
            // Connections may already be queued: try accepting once.
            ready: true,
            paused_until: None,
            short_of_fds: false,
            queued: true,
            counters: Default::default(),
        })));
        self.accept_queue.push(key);
        self.by_listen.insert(key_addr, key);
        Ok(())
    }

    pub(super) fn accept_queued(&mut self, now: Instant) {
        let queue = std::mem::take(&mut self.spare_queue);
        let queue = std::mem::replace(&mut self.accept_queue, queue);
        for &key in &queue {
            if let Some(Slot::Listener(l)) = self.slab.get_mut(key) {
                l.queued = false;
                self.accept_on(key, now);
            }
        }
        self.give_spare(queue);
    }

    /// Accepts from one listener until WouldBlock, max-conns, a descriptor
    /// shortage or the batch limit.
    ///
    /// Each accept is preceded by making the tunnel's upstream socket, so a
    /// client is accepted only when its upstream descriptor is already held:
    /// out of descriptors, clients wait in the listen backlog instead of
    /// being accepted and then reset (SPEC "Limits and faults"), whatever
    /// else happens in the same tick.
    pub(super) fn accept_on(&mut self, key: usize, now: Instant) {
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
            // The first route's first hop: what a new tunnel dials first.
            let v6 = l
                .route
                .first_hop_ip(0, &l.route.dest)
                .is_some_and(|a| a.is_ipv6());
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
    pub(super) fn short_of_descriptors(
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

    pub(super) fn open_tunnel(
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
        let mut ctx = Ctx {
            registry: self.poll.registry(),
            key,
            now,
        };
        let progress = t.start(&mut ctx);
        slot.insert(Slot::Tunnel(t));
        if let Some(Slot::Listener(l)) = self.slab.get_mut(listener_key) {
            l.open += 1;
        }
        self.tunnels_total += 1;
        self.after_drive(key, progress);
    }
}
