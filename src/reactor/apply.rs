//! Applying a reload and logging the SIGUSR1 snapshot.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use log::{error, info, warn};

use super::accept::Listener;
use super::{Engine, Slot};
use crate::config::{Config, Entry};
use crate::net;
use crate::reload;
use crate::tls;
use crate::tunnel::{Route, Tunnel};

impl Engine {
    /// Applies a valid new configuration: the pure [`reload::diff`] says
    /// what changes, this does it (SPEC "Reload").
    pub(super) fn apply_reload(&mut self, config: Config, store: tls::Store) {
        self.tls = store;
        self.reloads.0 += 1;
        let metrics = config.metrics.as_ref().map(|m| m.listen);
        if metrics != self.metrics_listen() {
            self.remove_metrics();
            if let Some(listen) = metrics {
                if let Err(e) = self.add_metrics(listen) {
                    error!("cannot serve metrics on {listen}, the rest of the reload applies: {e}");
                }
            }
        }
        let running: Vec<(SocketAddr, &Entry)> = self
            .by_listen
            .iter()
            .filter_map(|(addr, key)| match self.slab.get(*key) {
                Some(Slot::Listener(l)) => Some((*addr, &l.route.entry)),
                _ => None,
            })
            .collect();
        let diff = reload::diff(running, config.entries);
        let mut added = 0;
        let (removed, changed, unchanged) =
            (diff.removed.len(), diff.changed.len(), diff.unchanged.len());
        for listen in diff.removed {
            if let Some(key) = self.by_listen.remove(&listen) {
                if let Some(Slot::Listener(mut l)) = self.slab.try_remove(key) {
                    let _ = self.poll.registry().deregister(&mut l.socket);
                    info!(
                        "stopped listening on {listen} ({} open tunnels run on)",
                        l.open
                    );
                }
            }
        }
        let store = self.tls.clone();
        for (listen, entry) in diff.unchanged {
            if let Some(l) = self.listener_at(listen) {
                if l.route.entry.line != entry.line {
                    l.route = Rc::new(Route::keeping_learnt(entry, &l.route, &store));
                }
            }
        }
        for (listen, entry) in diff.changed {
            let Some(&key) = self.by_listen.get(&listen) else {
                continue;
            };
            let Some(Slot::Listener(l)) = self.slab.get_mut(key) else {
                continue;
            };
            let route = Route::with_tls(entry, &self.tls);
            info!("changed {listen} -> {}", route.describe());
            if let Err(e) = net::tune_listener(&l.socket, route.entry.options.keepalive) {
                warn!("{listen}: socket options for new tunnels: {e}");
            }
            l.route = Rc::new(route);
            // max-conns may have grown: accept what waits.
            if l.ready {
                l.queue(key, &mut self.accept_queue);
            }
        }
        for entry in diff.added {
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

    /// The listener known by `listen`, if any.
    fn listener_at(&mut self, listen: SocketAddr) -> Option<&mut Listener> {
        let key = *self.by_listen.get(&listen)?;
        match self.slab.get_mut(key) {
            Some(Slot::Listener(l)) => Some(l),
            _ => None,
        }
    }

    pub(super) fn snapshot(&self) {
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
        let listeners = self.listeners_by_line();
        let now = Instant::now();
        for l in listeners {
            info!(
                "snapshot: entry {} -> {}: {} open, {} ok, {} failed",
                l.route.entry.listen,
                l.route.describe(),
                l.open,
                l.counters.ok,
                l.counters.failed
            );
            for path in &l.route.paths {
                let learnt: Vec<String> = path
                    .hops
                    .iter()
                    .map(|h| {
                        h.learnt
                            .borrow()
                            .scheme()
                            .map_or("-".to_string(), |s| s.name().to_string())
                    })
                    .collect();
                info!(
                    "snapshot:   route {}: {}{}",
                    path.label(),
                    if path.in_backoff(now) {
                        "in back-off"
                    } else {
                        "up"
                    },
                    if learnt.is_empty() {
                        String::new()
                    } else {
                        format!(", learnt {}", learnt.join(">"))
                    }
                );
            }
        }
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
}
