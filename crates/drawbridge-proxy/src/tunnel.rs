//! Leases for long-lived exchanges: a WebSocket tunnel or a streaming response lives no
//! longer than the credential that admitted it (its expiry) and the route's
//! `max_stream_lifetime`; a tunnel also no longer than a reload that revokes the credential or
//! makes the policies refuse it. A tunnel that is ended is audited.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::net::IpAddr;

use drawbridge_config::Admission;
use drawbridge_identity::{ClientCert, Credentials, Principal};
use drawbridge_telemetry::{AuditEvent, AuditLog};
use http::HeaderMap;
use tokio::time::Instant;

use crate::pipeline::{ConnInfo, Shared};
use crate::snapshot::{RouteEntry, Snapshot};

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

/// What a WebSocket tunnel needs to end itself: its deadline, how to tell whether a reload
/// revoked its credential or its permission, and what to audit when it ends.
pub struct Lease {
    /// When it ends at the latest.
    pub deadline: Deadline,
    /// The admitted request, decided again after each reload.
    pub recheck: Option<Recheck>,
    /// The audit event written when the tunnel is ended (its decision and time filled then).
    pub audit: Option<(AuditLog, AuditEvent)>,
}

/// The request a tunnel was admitted as, seen from the pipeline.
pub struct Admitted<'a> {
    /// What every connection shares (the configuration in force, reloads, the audit trail).
    pub shared: Arc<Shared>,
    /// The configuration that admitted it.
    pub snapshot: &'a Snapshot,
    /// Its route.
    pub route: &'a RouteEntry,
    /// Its caller; `None` on a public route.
    pub principal: Option<&'a Arc<Principal>>,
    /// Its request id.
    pub request_id: &'a str,
    /// The host it was routed by.
    pub host: &'a str,
    /// Its normalised path.
    pub path: &'a str,
    /// Its query as forwarded.
    pub query: Option<&'a str>,
    /// Its headers after sanitize, credentials still in them.
    pub headers: &'a HeaderMap,
    /// The client's address as policies see it.
    pub client: IpAddr,
    /// The connection.
    pub conn: &'a ConnInfo,
}

impl Lease {
    /// The lease of a tunnel admitted as `a`, ending at `deadline` at the latest.
    pub fn new(deadline: Deadline, a: Admitted<'_>) -> Lease {
        let audit = a.shared.audit.enabled().then(|| {
            let p = a.principal.unwrap_or_else(|| crate::authz::anonymous());
            let event = AuditEvent {
                time: SystemTime::now(),
                log: "audit",
                request_id: a.request_id.to_string(),
                version: a.snapshot.version_label.clone(),
                principal: crate::authz::audit_principal(p),
                action: drawbridge_policy::Action::WebSocket.id(),
                resource: a.route.name.clone(),
                upstream: a.route.upstream.name.clone(),
                path: a.path.to_string(),
                client: a.conn.peer_label.clone(),
                decision: "close",
                reason: None,
                policies: Vec::new(),
                errors: Vec::new(),
                shadow: None,
            };
            (a.shared.audit.clone(), event)
        });
        let recheck = Recheck {
            route: a.route.name.clone(),
            request_id: a.request_id.to_string(),
            host: a.host.to_string(),
            path: a.path.to_string(),
            query: a.query.map(str::to_string),
            headers: a.headers.clone(),
            client: a.client,
            client_label: a.conn.peer_label.clone(),
            client_cert: a.conn.client_cert.clone(),
            principal: a.principal.map(|p| (p.authenticator.clone(), p.id.clone())),
            shared: a.shared,
        };
        Lease {
            deadline,
            recheck: Some(recheck),
            audit,
        }
    }

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

/// An admitted tunnel's request, kept to be decided again when the configuration changes:
/// its caller authenticated again with the credential it presented, and the route's policies
/// asked again.
pub struct Recheck {
    shared: Arc<Shared>,
    route: Arc<str>,
    request_id: String,
    host: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    client: IpAddr,
    client_label: Arc<str>,
    client_cert: Option<ClientCert>,
    /// The authenticator and id that admitted the caller; `None` on a public route.
    principal: Option<(Arc<str>, String)>,
}

impl Recheck {
    /// Waits for a reload after which the request would no longer be admitted; says why.
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
        let principal = match (&route.config.admission, &self.principal) {
            (Admission::Public, _) => None,
            // A route that now asks for credentials the tunnel never presented.
            (Admission::Authenticated { .. }, None) => return Some("credential revoked"),
            (Admission::Authenticated { .. }, Some((authenticator, id))) => {
                let Ok(creds) = Credentials::from_headers(&self.headers) else {
                    return Some("credential revoked");
                };
                let creds = creds.with_client_cert(self.client_cert.as_ref());
                match drawbridge_identity::authenticate(&route.authenticators, &creds).await {
                    Ok(p) if p.authenticator == *authenticator && p.id == *id => Some(p),
                    _ => return Some("credential revoked"),
                }
            }
        };
        if route.config.authorize {
            let p = principal
                .as_ref()
                .unwrap_or_else(|| crate::authz::anonymous());
            let ask = crate::authz::Ask {
                request_id: &self.request_id,
                time: SystemTime::now(),
                method: &http::Method::GET,
                websocket: true,
                grpc: false,
                host: &self.host,
                path: &self.path,
                query: self.query.as_deref(),
                headers: &self.headers,
                client: self.client,
                client_label: &self.client_label,
            };
            // Decided and audited as at admission; any refusal ends the tunnel.
            if crate::authz::authorize(snapshot, route, p, &ask, &self.shared).is_err() {
                return Some("no longer allowed by the policies");
            }
        }
        None
    }
}
