//! When a long-lived exchange (a WebSocket tunnel, a streaming response) must end: no later
//! than the credential that admitted it, nor than its route's `max_stream_lifetime`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drawbridge_identity::Principal;
use tokio::time::Instant;

use crate::route::RouteEntry;

/// When an exchange must end, and why.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// The instant.
    pub at: Instant,
    /// Why it ends then.
    pub why: &'static str,
    /// It is bound to a credential that expires: no response may outlive it, even one that
    /// waits only once.
    pub credential: bool,
}

impl Deadline {
    /// The earliest of the route's maximum lifetime, the principal's credential expiry, and
    /// (on a route that requires a second factor) the moment that factor grows older than
    /// the route's `max_age`, for a request that arrived at `arrived` (`arrived_at` by the
    /// wall clock): no clock is read here.
    pub fn of(
        route: &RouteEntry,
        principal: Option<&Principal>,
        arrived: std::time::Instant,
        arrived_at: SystemTime,
    ) -> Deadline {
        let now = Instant::from_std(arrived);
        let mut deadline = Deadline {
            at: now + route.config.max_stream_lifetime,
            why: "maximum stream lifetime reached",
            credential: false,
        };
        let Some(p) = principal else {
            return deadline;
        };
        let unix_now = arrived_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut sooner = |until: u64, why: &'static str| {
            let at = now + Duration::from_secs(until.saturating_sub(unix_now));
            if at < deadline.at {
                deadline = Deadline {
                    at,
                    why,
                    credential: true,
                };
            }
        };
        if let Some(expires) = p.expires_at {
            sooner(expires, "credential expired");
        }
        // A tunnel admitted with a fresh second factor does not outlive its freshness.
        if let Some(req) = &route.config.mfa
            && let Some(at) = p.factor_at(&req.methods, unix_now)
        {
            sooner(
                at.saturating_add(req.max_age.as_secs()),
                "second factor older than the route's max_age",
            );
        }
        deadline
    }
}
