//! The `metrics` listener and its scrapes: ordinary slab entries of the
//! same loop (SPEC "Metrics"). A scrape reads one request (at most
//! [`metrics::MAX_REQUEST`] bytes, within 10 s), gets the whole answer,
//! written as the socket takes it, and is closed. At most [`MAX_SCRAPES`]
//! at once; more wait in the listen backlog. A scraper that never reads
//! costs one socket and its answer's bytes until its deadline.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::Interest;

use super::{Engine, Slot};
use crate::metrics::{self, EntryView, Process, Request};
use crate::net;
use crate::tunnel;
use std::cmp::Reverse;

/// Most scrapes served at once.
pub const MAX_SCRAPES: usize = 16;
/// Time a scrape has to send its request and take its answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `metrics LISTEN` socket.
pub(super) struct MetricsListener {
    pub(super) listen: SocketAddr,
    socket: TcpListener,
    ready: bool,
}

/// One scrape connection.
pub(super) struct Scrape {
    id: u64,
    stream: TcpStream,
    request: Vec<u8>,
    answer: Vec<u8>,
    written: usize,
    deadline: Instant,
}

impl Engine {
    /// Starts serving metrics on `listen` (at start or on reload).
    pub(super) fn add_metrics(&mut self, listen: SocketAddr) -> io::Result<()> {
        let mut socket = net::bind_listener(listen)?;
        let slot = self.slab.vacant_entry();
        let key = slot.key();
        self.poll.registry().register(
            &mut socket,
            tunnel::token(key, tunnel::CLIENT),
            Interest::READABLE,
        )?;
        info!(
            "metrics on http://{}/metrics",
            socket.local_addr().unwrap_or(listen)
        );
        slot.insert(Slot::Metrics(Box::new(MetricsListener {
            listen,
            socket,
            ready: true,
        })));
        self.metrics = Some(key);
        self.accept_scrapes(key);
        Ok(())
    }

    /// Stops serving metrics (a reload removed or moved the line).
    pub(super) fn remove_metrics(&mut self) {
        if let Some(key) = self.metrics.take() {
            if let Some(Slot::Metrics(mut m)) = self.slab.try_remove(key) {
                let _ = self.poll.registry().deregister(&mut m.socket);
                info!("stopped serving metrics on {}", m.listen);
            }
        }
    }

    /// The metrics address in force, if any.
    pub(super) fn metrics_listen(&self) -> Option<SocketAddr> {
        match self.metrics.and_then(|k| self.slab.get(k)) {
            Some(Slot::Metrics(m)) => Some(m.listen),
            _ => None,
        }
    }

    /// An event for the metrics listener.
    pub(super) fn metrics_ready(&mut self, key: usize) {
        if let Some(Slot::Metrics(m)) = self.slab.get_mut(key) {
            m.ready = true;
        }
        self.accept_scrapes(key);
    }

    /// Accepts scrapes while there is room.
    pub(super) fn accept_scrapes(&mut self, key: usize) {
        while self.scrapes < MAX_SCRAPES {
            let Some(Slot::Metrics(m)) = self.slab.get_mut(key) else {
                return;
            };
            if !m.ready {
                return;
            }
            let mut stream = match m.socket.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    m.ready = false;
                    return;
                }
                Err(e) if net::is_transient_accept_error(&e) => continue,
                Err(e) => {
                    // Out of descriptors: a tunnel closing or the next
                    // event brings us back; scrapes are not worth a pause.
                    warn!("metrics: accept: {e}");
                    m.ready = false;
                    return;
                }
            };
            let id = self.next_id();
            let slot = self.slab.vacant_entry();
            let skey = slot.key();
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    tunnel::token(skey, tunnel::CLIENT),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            let deadline = Instant::now() + SCRAPE_TIMEOUT;
            slot.insert(Slot::Scrape(Box::new(Scrape {
                id,
                stream,
                request: Vec::new(),
                answer: Vec::new(),
                written: 0,
                deadline,
            })));
            self.scrapes += 1;
            self.timers.push(Reverse((deadline, skey, id)));
            self.drive_scrape(skey);
        }
    }

    /// Reads the request, answers it, closes when done or broken.
    pub(super) fn drive_scrape(&mut self, key: usize) {
        let done = {
            let Some(Slot::Scrape(s)) = self.slab.get_mut(key) else {
                return;
            };
            if s.answer.is_empty() {
                let mut buf = [0u8; 2048];
                loop {
                    match s.stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let room = metrics::MAX_REQUEST + 1
                                - s.request.len().min(metrics::MAX_REQUEST + 1);
                            s.request.extend_from_slice(&buf[..n.min(room)]);
                            if metrics::parse_request(&s.request) != Request::Partial {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            }
            let Some(Slot::Scrape(s)) = self.slab.get(key) else {
                return;
            };
            let request = metrics::parse_request(&s.request);
            if s.answer.is_empty() && request != Request::Partial {
                let body = match request {
                    Request::Metrics => self.exposition(),
                    _ => String::new(),
                };
                let answer = metrics::response(&request, &body);
                if let Some(Slot::Scrape(s)) = self.slab.get_mut(key) {
                    s.answer = answer;
                }
            }
            let Some(Slot::Scrape(s)) = self.slab.get_mut(key) else {
                return;
            };
            if s.answer.is_empty() {
                false
            } else {
                loop {
                    if s.written == s.answer.len() {
                        break true;
                    }
                    match s.stream.write(&s.answer[s.written..]) {
                        Ok(0) => break true,
                        Ok(n) => s.written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break true,
                    }
                }
            }
        };
        if done {
            self.close_scrape(key);
        }
    }

    /// Closes a scrape; one more may be accepted.
    pub(super) fn close_scrape(&mut self, key: usize) {
        if let Some(Slot::Scrape(mut s)) = self.slab.try_remove(key) {
            let _ = s.stream.flush();
            self.scrapes -= 1;
            if let Some(m) = self.metrics {
                self.accept_scrapes(m);
            }
        }
    }

    /// A scrape's deadline passed (id checked by the caller).
    pub(super) fn scrape_expired(&mut self, key: usize, id: u64, now: Instant) {
        if let Some(Slot::Scrape(s)) = self.slab.get(key) {
            if s.id == id && s.deadline <= now {
                debug!("metrics: a scrape sent no complete request within 10s");
                self.close_scrape(key);
            }
        }
    }

    /// The exposition of every entry and the process.
    fn exposition(&self) -> String {
        let listeners = self.listeners_by_line();
        let now = Instant::now();
        let mut open_bytes = std::collections::HashMap::new();
        for (_, slot) in self.slab.iter() {
            if let Slot::Tunnel(t) = slot {
                let e: &mut (u64, u64) = open_bytes.entry(t.listener).or_default();
                let (u, d) = t.bytes();
                e.0 += u;
                e.1 += d;
            }
        }
        let views: Vec<EntryView<'_>> = listeners
            .iter()
            .map(|l| {
                let key = self
                    .by_listen
                    .get(&l.route.entry.listen)
                    .copied()
                    .unwrap_or(usize::MAX);
                EntryView {
                    entry: l.route.entry.listen.to_string(),
                    open: l.open as u64,
                    counters: &l.counters,
                    open_bytes: open_bytes.get(&(key, l.id)).copied().unwrap_or_default(),
                    routes: l
                        .route
                        .paths
                        .iter()
                        .map(|p| (p.label(), !p.in_backoff(now)))
                        .collect(),
                }
            })
            .collect();
        metrics::render(
            &views,
            Process {
                reloads_ok: self.reloads.0,
                reloads_failed: self.reloads.1,
                uptime: self.started.elapsed(),
            },
        )
    }
}
