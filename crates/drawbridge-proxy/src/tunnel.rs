//! Leases for long-lived exchanges: a WebSocket tunnel or a streaming response lives no
//! longer than the credential that admitted it (its expiry, or a reload that revokes it) and
//! the route's `max_stream_lifetime`. A tunnel that is ended is audited.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drawbridge_identity::{ClientCert, Credentials, Principal};
use drawbridge_telemetry::{AuditEvent, AuditLog};
use http::{HeaderMap, HeaderName, header};
use tokio::time::Instant;

use crate::pipeline::Shared;
use crate::snapshot::{RouteEntry, Snapshot};

/// When an exchange must end, and why.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// The instant.
    pub at: Instant,
    /// Why it ends then.
    pub why: &'static str,
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
            }
        } else {
            lifetime
        }
    }
}

/// What a WebSocket tunnel needs to end itself: its deadline, how to tell whether a reload
/// revoked its credential, and what to audit when it ends.
pub struct Lease {
    /// When it ends at the latest.
    pub deadline: Deadline,
    /// The credential that admitted it, checked again after each reload; `None` on a public
    /// route.
    pub recheck: Option<Recheck>,
    /// The audit event written when the tunnel is ended (its decision and time filled then).
    pub audit: Option<(AuditLog, AuditEvent)>,
}

impl Lease {
    /// Records that the tunnel was ended, and why.
    pub fn closed(self, why: &str) {
        tracing::info!(reason = why, "tunnel closed");
        if let Some((log, mut event)) = self.audit {
            event.time = SystemTime::now();
            event.decision = "close";
            event.reason = Some(why.to_string());
            log.record(event);
        }
    }
}

/// A credential kept to be checked again when the configuration changes.
pub struct Recheck {
    shared: Arc<Shared>,
    route: Arc<str>,
    /// Only the headers credentials travel in.
    credentials: HeaderMap,
    client_cert: Option<ClientCert>,
    authenticator: Arc<str>,
    id: String,
}

impl Recheck {
    /// Keeps what `principal` was admitted with on `route`.
    pub fn new(
        shared: Arc<Shared>,
        route: &RouteEntry,
        headers: &HeaderMap,
        client_cert: Option<&ClientCert>,
        principal: &Principal,
    ) -> Self {
        let mut credentials = HeaderMap::new();
        let names = std::iter::once(&header::AUTHORIZATION).chain(
            route
                .authenticators
                .iter()
                .filter_map(|a| a.credential_header()),
        );
        for name in names {
            for v in headers.get_all(name) {
                credentials.append(HeaderName::clone(name), v.clone());
            }
        }
        Self {
            shared,
            route: route.name.clone(),
            credentials,
            client_cert: client_cert.cloned(),
            authenticator: principal.authenticator.clone(),
            id: principal.id.clone(),
        }
    }

    /// Waits for a reload after which the credential no longer admits the same caller to the
    /// same route; says why.
    pub async fn revoked(self) -> &'static str {
        let mut reloads = self.shared.reloads.subscribe();
        loop {
            if reloads.changed().await.is_err() {
                return std::future::pending().await;
            }
            let snapshot = self.shared.snapshot.load_full();
            if let Some(why) = self.check(&snapshot).await {
                return why;
            }
        }
    }

    async fn check(&self, snapshot: &Snapshot) -> Option<&'static str> {
        let Some(route) = snapshot.routes.iter().find(|r| r.name == self.route) else {
            return Some("route removed by a reload");
        };
        let Ok(creds) = Credentials::from_headers(&self.credentials) else {
            return Some("credential revoked");
        };
        let creds = creds.with_client_cert(self.client_cert.as_ref());
        match drawbridge_identity::authenticate(&route.authenticators, &creds).await {
            Ok(p) if p.authenticator == self.authenticator && p.id == self.id => None,
            _ => Some("credential revoked"),
        }
    }
}
