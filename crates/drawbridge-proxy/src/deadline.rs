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
    /// The earlier of the principal's credential expiry and the route's maximum lifetime,
    /// for a request that arrived at `arrived` (`arrived_at` by the wall clock): no clock is
    /// read here.
    pub fn of(
        route: &RouteEntry,
        principal: Option<&Principal>,
        arrived: std::time::Instant,
        arrived_at: SystemTime,
    ) -> Deadline {
        let now = Instant::from_std(arrived);
        let lifetime = Deadline {
            at: now + route.config.max_stream_lifetime,
            why: "maximum stream lifetime reached",
            credential: false,
        };
        let Some(expires) = principal.and_then(|p| p.expires_at) else {
            return lifetime;
        };
        let unix_now = arrived_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let left = Duration::from_secs(expires.saturating_sub(unix_now));
        if left < route.config.max_stream_lifetime {
            Deadline {
                at: now + left,
                why: "credential expired",
                credential: true,
            }
        } else {
            lifetime
        }
    }
}
