//! A tunnel's log lines: the prefix every line starts with and the last
//! line, `failed: ...` or `closed ...` with the counters (README's contract).

use std::fmt;
use std::time::Instant;

use log::{info, warn};

use super::{Failure, Reason, State, Tunnel};
use crate::net;

impl Tunnel {
    /// Logs the tunnel's last line: `failed: ...` for a tunnel that never
    /// reached Forwarding (at warn for a proxy's refusal), `closed ...` with
    /// the counters otherwise.
    pub fn log_end(&self, now: Instant) {
        let reason = match &self.state {
            State::Closing(r) => r,
            _ => &Reason::Shutdown,
        };
        match reason {
            Reason::Failed(f) if matches!(f.kind, Failure::ProxyStatus | Failure::ProxyAuth) => {
                return warn!("{}: failed: {}", self.prefix(), f.why)
            }
            Reason::Failed(f) => return info!("{}: failed: {}", self.prefix(), f.why),
            _ => {}
        }
        if self.forwarding_since.is_none() {
            info!("{}: closed before forwarding: {reason}", self.prefix());
            return;
        }
        let idle = now.saturating_duration_since(self.last_activity);
        let max_idle = self.max_idle.max(idle);
        let first: &dyn fmt::Display = match &self.first_closed {
            Some(s) => s,
            None => &"-",
        };
        info!(
            "{}: closed up={} down={} duration={} max-idle={} first={first} reason={reason}",
            self.prefix(),
            self.client_to_upstream.bytes,
            self.upstream_to_client.bytes,
            net::Dur(now.saturating_duration_since(self.accepted)),
            net::Dur(max_idle),
        );
    }
}

/// Display helper for the log prefix of a tunnel.
pub struct Prefix<'a>(pub(super) &'a Tunnel);

impl fmt::Display for Prefix<'_> {
    /// `tunnel ID LISTEN <- CLIENT -> DEST[ via ROUTE]`, from pieces the
    /// route rendered once (this is written twice per tunnel at least).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        let route = &t.route;
        write!(
            f,
            "tunnel {} {} <- {} -> ",
            t.id,
            route.listen_text,
            net::Addr(t.client_addr)
        )?;
        match (&t.dest, route.client) {
            (Some(dest), _) => fmt::Display::fmt(dest, f)?,
            // A client-named entry before its client named anything.
            (None, Some(_)) => f.write_str("?")?,
            (None, None) => f.write_str(&route.dest_text)?,
        }
        f.write_str(&route.paths[t.path as usize].via)
    }
}

impl Tunnel {
    /// How the tunnel ended, for the metrics: the time from accept to
    /// Forwarding when it got there, else why it did not.
    pub fn result(&self) -> Result<std::time::Duration, Failure> {
        if let Some(since) = self.forwarding_since {
            return Ok(since.saturating_duration_since(self.accepted));
        }
        Err(match &self.state {
            State::Closing(Reason::Failed(f)) => f.kind,
            State::Closing(Reason::Shutdown) => Failure::Other,
            _ => Failure::Client,
        })
    }
}

/// The end of the open line: `, auth SCHEME` (per hop, `>`-joined, `-`
/// for a hop that asked for none), or nothing when no hop authenticated.
pub(super) struct AuthSuffix<'a>(pub(super) &'a [Option<crate::auth::Scheme>]);

impl fmt::Display for AuthSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(Option::is_none) {
            return Ok(());
        }
        f.write_str(", auth ")?;
        for (i, scheme) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(">")?;
            }
            f.write_str(scheme.map_or("-", |s| s.name()))?;
        }
        Ok(())
    }
}
