//! What a tunnel needs of its entry, frozen when it is accepted: a reload
//! replaces the listener's route, never a running tunnel's.
//!
//! Owns: the entry's paths (its routes, tried in order: each a chain of
//! proxy hops, or none for `direct`), what the entry learnt about each hop,
//! and each path's back-off. Never builds request bytes: each `SentConnect`
//! stage builds its own (an authentication round or a later hop needs a
//! request of its own).

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::auth::Learnt;
use crate::client::Protocol;
use crate::config::{Dest, Entry, HostPort, Proxy, RouteSpec};
use crate::tls::{self, Trust};

/// One proxy of a path.
#[derive(Debug)]
pub struct Hop {
    /// The proxy as configured: address, credentials, scheme, headers.
    pub proxy: Proxy,
    /// What the entry's tunnels learnt about authenticating to it (the
    /// reactor is single-threaded; a tunnel borrows it only inside a call).
    pub learnt: RefCell<Learnt>,
    /// For an `https://` proxy: the TLS settings to speak to it with.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// One route of an entry: its hops in order (none: `direct`).
#[derive(Debug)]
pub struct Path {
    /// The proxies in order; empty for a direct route.
    pub hops: Vec<Hop>,
    /// The first hop's address when it is an IP literal (no resolution);
    /// for a direct route, filled in per tunnel from the destination.
    first_hop_ip: Option<SocketAddr>,
    /// Until when new tunnels pass this route over (it failed).
    backoff_until: Cell<Option<Instant>>,
    /// What log lines of its tunnels end their prefix with: ` via LABEL`,
    /// or nothing for the direct route of an entry that has no other.
    pub(crate) via: Box<str>,
}

impl Path {
    fn new(hops: Vec<Hop>) -> Path {
        let first_hop_ip = hops.first().and_then(|h| ip_of(&h.proxy.addr));
        Path {
            hops,
            first_hop_ip,
            backoff_until: Cell::new(None),
            via: Box::default(),
        }
    }

    /// Whether new tunnels pass this route over at `now`.
    pub fn in_backoff(&self, now: Instant) -> bool {
        self.backoff_until.get().is_some_and(|until| until > now)
    }

    /// Starts (or extends) a back-off until `until`; whether it was not
    /// in back-off before (the caller logs the start once).
    pub fn back_off(&self, now: Instant, until: Instant) -> bool {
        let before = self.backoff_until.replace(Some(until));
        !before.is_some_and(|b| b > now)
    }

    /// Ends a back-off; whether there was one, running or run out (the
    /// caller logs that the route carries tunnels again).
    pub fn recovered(&self) -> bool {
        self.backoff_until.take().is_some()
    }

    /// The route for log lines and metrics labels: `direct`, or its hops
    /// joined by `>` (plain proxies as `host:port`, TLS ones with
    /// `https://`), never credentials.
    pub fn label(&self) -> String {
        if self.hops.is_empty() {
            return "direct".into();
        }
        let hops: Vec<String> = self
            .hops
            .iter()
            .map(|h| match h.tls {
                Some(_) => format!("https://{}", h.proxy.addr.authority()),
                None => h.proxy.addr.authority(),
            })
            .collect();
        hops.join(">")
    }
}

/// The address of `hp` when its host is an IP literal.
pub fn ip_of(hp: &HostPort) -> Option<SocketAddr> {
    hp.host
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, hp.port))
}

/// The trust an entry's `https://` hops are checked with.
pub fn trust_of(entry: &Entry) -> Trust {
    match (&entry.options.proxy_ca, entry.options.proxy_verify) {
        (_, false) => Trust::Off,
        (Some(path), true) => Trust::File(path.clone()),
        (None, true) => Trust::System,
    }
}

/// The trusts a configuration's entries need (those with `https://` hops).
pub fn trusts(entries: &[Entry]) -> Vec<Trust> {
    entries
        .iter()
        .filter(|e| {
            let env_tls = e
                .env
                .as_ref()
                .and_then(|v| v.proxy.as_ref())
                .is_some_and(|p| p.tls);
            env_tls || e.routes.iter().flat_map(|r| &r.hops).any(|h| h.tls)
        })
        .map(trust_of)
        .collect()
}

/// The paths of one entry and where they lead.
#[derive(Debug)]
pub struct Route {
    /// The entry as configured.
    pub entry: Entry,
    /// The entry's routes in order; at least one.
    pub paths: Vec<Path>,
    /// For a `socks`/`http` entry: what its clients speak.
    pub client: Option<Protocol>,
    /// The fixed destination (a placeholder for client-named entries,
    /// whose tunnels carry the client's).
    pub dest: HostPort,
    /// The destination's address when it is an IP literal.
    dest_ip: Option<SocketAddr>,
    /// For an `env` entry of client-named destinations: the direct path
    /// that destinations matching NO_PROXY take (new tunnels try it for
    /// those only).
    no_proxy_path: Option<usize>,
    /// The listen address and the fixed destination as log lines show
    /// them, rendered once for all the entry's tunnels.
    pub(crate) listen_text: Box<str>,
    pub(crate) dest_text: Box<str>,
}

impl Route {
    /// The route of `entry`, without TLS settings (tests, and entries
    /// without `https://` hops).
    pub fn new(entry: Entry) -> Route {
        Route::with_tls(entry, &tls::Store::default())
    }

    /// The route of `entry`; `https://` hops take their settings from
    /// `store` (built where files may be read).
    pub fn with_tls(entry: Entry, store: &tls::Store) -> Route {
        let config = store.get(&trust_of(&entry));
        let path = |spec: &RouteSpec| {
            Path::new(
                spec.hops
                    .iter()
                    .map(|p: &Proxy| Hop {
                        proxy: p.clone(),
                        learnt: RefCell::default(),
                        tls: if p.tls { config.clone() } else { None },
                    })
                    .collect(),
            )
        };
        let mut paths: Vec<Path> = entry.routes.iter().map(path).collect();
        if paths.is_empty() {
            paths.push(Path::new(Vec::new()));
        }
        let client = match entry.dest {
            Dest::Fixed(_) => None,
            Dest::Socks => Some(Protocol::Socks),
            Dest::Http => Some(Protocol::Http),
        };
        // A client-named entry's tunnels carry the client's destination;
        // this one only stands in where no tunnel uses it.
        let dest = entry.dest.fixed().cloned().unwrap_or_else(|| HostPort {
            host: "client-named.invalid".to_string(),
            port: 1,
        });
        let dest_ip = ip_of(&dest);
        let mut no_proxy_path = None;
        if client.is_some() && entry.env.is_some() && paths.iter().all(|p| !p.hops.is_empty()) {
            paths.push(Path::new(Vec::new()));
            no_proxy_path = Some(paths.len() - 1);
        }
        // A direct route is named only where the entry has others.
        let several = paths.len() > 1;
        for p in &mut paths {
            if !p.hops.is_empty() || several {
                p.via = format!(" via {}", p.label()).into();
            }
        }
        Route {
            listen_text: entry.listen.to_string().into(),
            dest_text: dest.authority().into(),
            entry,
            paths,
            client,
            dest,
            dest_ip,
            no_proxy_path,
        }
    }

    /// The direct path a client-named destination takes because the
    /// NO_PROXY of an `env` entry matches it, if so.
    pub fn bypass(&self, host: &str) -> Option<usize> {
        let env = self.entry.env.as_ref()?;
        if self.client.is_none() || !env.no_proxy.matches(host) {
            return None;
        }
        self.paths.iter().position(|p| p.hops.is_empty())
    }

    /// The route of `entry`, an entry with the same settings as `old`'s
    /// (only its line moved): what `old`'s tunnels learnt, and the routes'
    /// back-off, are kept.
    pub fn keeping_learnt(entry: Entry, old: &Route, store: &tls::Store) -> Route {
        let route = Route::with_tls(entry, store);
        for (new, old) in route.paths.iter().zip(&old.paths) {
            new.backoff_until.set(old.backoff_until.get());
            for (new, old) in new.hops.iter().zip(&old.hops) {
                *new.learnt.borrow_mut() = old.learnt.borrow().clone();
            }
        }
        route
    }

    /// What a tunnel on path `path` dials: its first proxy, or `dest`.
    pub fn first_hop<'a>(&'a self, path: usize, dest: &'a HostPort) -> &'a HostPort {
        match self.paths[path].hops.first() {
            Some(hop) => &hop.proxy.addr,
            None => dest,
        }
    }

    /// The first hop's address on path `path` when it is an IP literal.
    pub fn first_hop_ip(&self, path: usize, dest: &HostPort) -> Option<SocketAddr> {
        let p = &self.paths[path];
        if p.hops.is_empty() {
            if std::ptr::eq(dest, &self.dest) {
                return self.dest_ip;
            }
            return ip_of(dest);
        }
        p.first_hop_ip
    }

    /// What hop `hop` of path `path` is asked to `CONNECT` to: the next
    /// hop, or the destination after the last one.
    pub fn connect_target<'a>(
        &'a self,
        path: usize,
        hop: usize,
        dest: &'a HostPort,
    ) -> &'a HostPort {
        match self.paths[path].hops.get(hop + 1) {
            Some(next) => &next.proxy.addr,
            None => dest,
        }
    }

    /// The routes a new tunnel tries at `now`, as a bit set of path
    /// indices: those not in back-off, or every one when all are.
    pub fn candidates(&self, now: Instant) -> u64 {
        let all = if self.paths.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << self.paths.len()) - 1
        };
        let fresh = self
            .paths
            .iter()
            .enumerate()
            .take(64)
            .filter(|(i, p)| !p.in_backoff(now) && Some(*i) != self.no_proxy_path)
            .fold(0u64, |set, (i, _)| set | 1 << i);
        if fresh == 0 {
            match self.no_proxy_path {
                Some(i) => all & !(1 << i),
                None => all,
            }
        } else {
            fresh
        }
    }

    /// `dest`, `dest via proxy`, `dest via a>b, direct`, as in log lines.
    pub fn describe(&self) -> String {
        let mut out = self.entry.dest.to_string();
        let labels: Vec<String> = self.paths.iter().map(Path::label).collect();
        if labels != ["direct"] {
            out.push_str(" via ");
            out.push_str(&labels.join(", "));
        }
        out
    }
}
