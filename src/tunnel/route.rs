//! What a tunnel needs of its entry, frozen when it is accepted: a reload
//! replaces the listener's route, never a running tunnel's.
//!
//! Owns: the hops of the route in order (each proxy, with its address when
//! it is an IP literal) and the destination. Never builds request bytes:
//! each `SentConnect` stage builds its own (an authentication round or a
//! later hop needs a request of its own).

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};

use crate::auth::Learnt;
use crate::config::{Entry, HostPort, Proxy};

/// One proxy of a route.
#[derive(Debug)]
pub struct Hop {
    /// The proxy as configured: address, credentials, scheme, headers.
    pub proxy: Proxy,
    /// What the entry's tunnels learnt about authenticating to it (the
    /// reactor is single-threaded; a tunnel borrows it only inside a call).
    pub learnt: RefCell<Learnt>,
}

/// The hops of one entry and where they lead.
#[derive(Debug)]
pub struct Route {
    /// The entry as configured.
    pub entry: Entry,
    /// The proxies in order of the entry's first route; empty for a direct
    /// route. (Failover over `entry.routes` is the lead engineer's.)
    pub hops: Vec<Hop>,
    /// Where the tunnel ends: the entry's fixed destination.
    dest: HostPort,
    /// The first hop's address when it is an IP literal (no resolution).
    first_hop_ip: Option<SocketAddr>,
}

impl Route {
    /// The route of `entry`.
    pub fn new(entry: Entry) -> Route {
        let hops: Vec<Hop> = entry
            .routes
            .first()
            .map(|r| r.hops.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|p| Hop {
                proxy: p.clone(),
                learnt: RefCell::default(),
            })
            .collect();
        // client-named: the lead engineer wires the client stage. Until then
        // a `socks`/`http` entry's tunnels aim at a name that never resolves
        // (RFC 6761 `.invalid`), so they fail cleanly.
        let dest = entry.dest.fixed().cloned().unwrap_or_else(|| HostPort {
            host: "client-named.invalid".to_string(),
            port: 1,
        });
        let mut route = Route {
            entry,
            hops,
            dest,
            first_hop_ip: None,
        };
        let first = route.first_hop();
        route.first_hop_ip = first
            .host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, first.port));
        route
    }

    /// The route of `entry`, an entry with the same settings as `old`'s
    /// (only its line moved): what `old`'s tunnels learnt is kept.
    pub fn keeping_learnt(entry: Entry, old: &Route) -> Route {
        let route = Route::new(entry);
        for (new, old) in route.hops.iter().zip(&old.hops) {
            *new.learnt.borrow_mut() = old.learnt.borrow().clone();
        }
        route
    }

    /// What a tunnel dials: the first proxy, or the destination.
    pub fn first_hop(&self) -> &HostPort {
        match self.hops.first() {
            Some(hop) => &hop.proxy.addr,
            None => &self.dest,
        }
    }

    /// The first hop's address when it is an IP literal.
    pub fn first_hop_ip(&self) -> Option<SocketAddr> {
        self.first_hop_ip
    }

    /// What hop `hop` is asked to `CONNECT` to: the next hop, or the
    /// destination after the last one.
    pub fn connect_target(&self, hop: usize) -> &HostPort {
        match self.hops.get(hop + 1) {
            Some(next) => &next.proxy.addr,
            None => &self.dest,
        }
    }

    /// `dest` or `dest via proxy`, as in log lines.
    pub fn describe(&self) -> String {
        let mut out = self.entry.dest.to_string();
        for hop in &self.hops {
            out.push_str(" via ");
            out.push_str(&hop.proxy.addr.authority());
        }
        out
    }
}
