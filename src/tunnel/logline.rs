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
        let first = match self.first_closed {
            Some(s) => s.to_string(),
            None => "-".to_string(),
        };
        info!(
            "{}: closed up={} down={} duration={} max-idle={} first={first} reason={reason}",
            self.prefix(),
            self.client_to_upstream.bytes,
            self.upstream_to_client.bytes,
            net::fmt_duration(now.saturating_duration_since(self.accepted)),
            net::fmt_duration(max_idle),
        );
    }
}

/// Display helper for the log prefix of a tunnel.
pub struct Prefix<'a>(pub(super) &'a Tunnel);

impl fmt::Display for Prefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        write!(
            f,
            "tunnel {} {} <- {} -> {}",
            t.id,
            t.route.entry.listen,
            t.client_addr,
            match (&t.dest, t.route.client) {
                // A client-named entry before its client named anything.
                (None, Some(_)) => "?".to_string(),
                _ => t.dest().authority(),
            }
        )?;
        let path = &t.route.paths[t.path as usize];
        // A direct route is named only where the entry has others.
        if !path.hops.is_empty() || t.route.paths.len() > 1 {
            write!(f, " via {}", path.label())?;
        }
        Ok(())
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
