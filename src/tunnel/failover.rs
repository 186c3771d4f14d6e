//! Failover: moving a tunnel on to the entry's next route when the one it
//! tried is at fault (SPEC "Routes, failover and chains").

use std::rc::Rc;

use log::{debug, warn};

use super::{Ctx, Progress, Reason, State, Tunnel};
use crate::net;

impl Tunnel {
    /// Once a client named its destination: the routes to try for it (an
    /// `env` entry's NO_PROXY sends a matching destination direct).
    pub(crate) fn route_for_dest(&mut self, now: std::time::Instant) {
        if let Some(i) = self.route.bypass(&self.dest().host) {
            self.path = i as u8;
            self.remaining = 1 << i;
            return;
        }
        self.remaining = self.route.candidates(now);
        self.path = self.remaining.trailing_zeros() as u8;
    }

    /// After an attempt ended: when the route was at fault and another is
    /// left, the tunnel moves on to it (SPEC "Routes, failover and chains"):
    /// the failed route is passed over by new tunnels for `proxy-backoff`,
    /// the next one gets a `connect-timeout` of its own, and the client
    /// notices nothing but the time.
    pub(crate) fn settle(&mut self, mut progress: Progress, ctx: &mut Ctx<'_>) -> Progress {
        while progress == Progress::Finished {
            let State::Closing(Reason::Failed(failed)) = &self.state else {
                break;
            };
            if !failed.route_failed {
                break;
            }
            let why = failed.why.clone();
            let route = Rc::clone(&self.route);
            let path = &route.paths[self.path as usize];
            if route.paths.len() > 1 {
                let backoff = route.entry.options.proxy_backoff;
                if path.back_off(ctx.now, ctx.now + backoff) {
                    warn!(
                        "{}: route {} failed ({why}); new tunnels pass it over for {}",
                        self.prefix(),
                        path.label(),
                        net::fmt_duration(backoff)
                    );
                }
            }
            self.remaining &= !(1u64 << self.path);
            if self.remaining == 0 {
                break;
            }
            let next = self.remaining.trailing_zeros() as u8;
            debug!(
                "{}: route {} failed: {why}; trying {}",
                self.prefix(),
                path.label(),
                route.paths[next as usize].label()
            );
            self.upstream = None;
            let ring = &mut self.upstream_to_client.ring;
            ring.consume(ring.len());
            self.connected = None;
            self.path = next;
            self.set_state(State::Accepting {
                deadline: ctx.now + route.entry.options.connect_timeout,
                reserve: None,
                lookup: None,
            });
            progress = self.dial_now(ctx);
        }
        progress
    }
}
