//! Leases for long-lived exchanges: a WebSocket tunnel or a streaming response lives no
//! longer than the credential that admitted it (its expiry) and the route's
//! `max_stream_lifetime`; a tunnel also no longer than a reload that revokes the credential or
//! makes the policies refuse it. A tunnel that is ended is audited.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use drawbridge_identity::ClientCert;
use drawbridge_telemetry::{AuditEvent, AuditLog};
use http::HeaderMap;

use crate::admission::{Ask, Kind, Proof};
use crate::context::{ConnInfo, Ctx, Shared};
use crate::deadline::Deadline;
use crate::snapshot::Snapshot;

/// What a WebSocket tunnel needs to end itself: its deadline, how to tell whether a reload
/// revoked its credential or its permission, and what to audit when it ends.
pub struct Lease {
    /// When it ends at the latest.
    pub deadline: Deadline,
    /// The admitted request, decided again after each reload.
    pub recheck: Option<Recheck>,
    /// The audit event written when the tunnel is ended (its decision and time filled then).
    pub audit: Option<(AuditLog, AuditEvent<'static>)>,
}

/// The request a tunnel was admitted as, seen from the pipeline.
pub struct Admitted<'a> {
    /// What every connection shares (the configuration in force, reloads, the audit trail).
    pub shared: Arc<Shared>,
    /// The configuration that admitted it.
    pub snapshot: &'a Snapshot,
    /// What admission decided.
    pub admitted: &'a crate::admission::Admitted,
    /// The request.
    pub ctx: &'a Ctx,
    /// Its query as forwarded.
    pub query: Option<&'a str>,
    /// Its headers after sanitize, credentials still in them.
    pub headers: &'a HeaderMap,
    /// The connection.
    pub conn: &'a ConnInfo,
}

impl Lease {
    /// The lease of a tunnel admitted as `a`, ending at `deadline` at the latest.
    pub fn new(deadline: Deadline, a: Admitted<'_>) -> Lease {
        let route = &a.admitted.route;
        let audit = a.shared.audit.enabled().then(|| {
            let p = a
                .admitted
                .principal
                .as_ref()
                .unwrap_or_else(|| crate::authenticate::anonymous());
            let about = crate::record::About {
                request_id: a.ctx.request_id(),
                time: a.ctx.time(),
                path: &a.ctx.path.decoded,
                client: &a.conn.peer_label,
                ip: a.ctx.client,
                trace_id: a.ctx.event.trace_id.as_deref(),
            };
            let mut event = crate::record::audit_event(a.snapshot, route, p, &about);
            event.action = drawbridge_policy::Action::WebSocket.id();
            (a.shared.audit.clone(), event.into_owned())
        });
        let recheck = Recheck {
            route: route.name.clone(),
            request_id: a.ctx.event.request_id,
            host: a.ctx.host.clone(),
            path: a.ctx.path.decoded.clone(),
            query: a.query.map(str::to_string),
            headers: a.headers.clone(),
            client: a.ctx.client,
            client_label: a.conn.peer_label.clone(),
            client_cert: a.conn.client_cert.as_deref().cloned(),
            principal: a
                .admitted
                .principal
                .as_ref()
                .map(|p| (p.authenticator.clone(), p.id.clone())),
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
            event.reason = Some(why.to_string().into());
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
    request_id: drawbridge_telemetry::RequestId,
    host: Arc<str>,
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
        let ask = Ask {
            host: &self.host,
            path: &self.path,
            method: "GET",
            kind: Kind::WebSocket,
            query: self.query.as_deref(),
            headers: &self.headers,
            client: self.client,
            time: SystemTime::now(),
        };
        let proof = Proof::Presented {
            client_cert: self.client_cert.as_ref(),
        };
        // Admitted again as at first, by the same core; decided and audited as then.
        let outcome = crate::admission::admit(snapshot, route.clone(), proof, &ask).await;
        let about = crate::record::About {
            request_id: self.request_id.as_str(),
            time: ask.time,
            path: &self.path,
            client: &self.client_label,
            ip: self.client,
            trace_id: None,
        };
        let (admitted, decided) = match &outcome {
            Ok(a) => (a.principal.as_ref(), a.decided.as_ref()),
            Err(r) => (None, r.decided.as_ref()),
        };
        if let Some(d) = decided {
            crate::record::decision(&self.shared.decisions(), snapshot, route, d, &about);
        }
        match (&outcome, &self.principal) {
            (Err(r), _) if r.decided.is_some() => Some("no longer allowed by the policies"),
            (Err(_), _) => Some("credential revoked"),
            // The same credential now admits someone else, or a route that now asks for
            // credentials was entered without them.
            (Ok(_), Some((authenticator, id)))
                if admitted.is_some_and(|p| p.authenticator != *authenticator || p.id != *id) =>
            {
                Some("credential revoked")
            }
            (Ok(_), None) if admitted.is_some() => Some("credential revoked"),
            (Ok(_), _) => None,
        }
    }
}
