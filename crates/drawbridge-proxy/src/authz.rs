//! Phase 7, authorize: the route's policies decide, and every decision goes to the audit
//! trail.

use std::time::SystemTime;

use drawbridge_identity::Principal;
use drawbridge_policy::{Action, DecideError, Decision, RequestView, Verdict};
use drawbridge_telemetry::{AuditEvent, AuditLog, AuditPrincipal, AuditShadow};
use http::HeaderMap;

use crate::pipeline::Shared;
use crate::rescue::ProxyError;
use crate::snapshot::{RouteEntry, Snapshot};

/// The request as the authorize phase sees it.
pub struct Ask<'a> {
    /// The request's id.
    pub request_id: &'a str,
    /// When it arrived.
    pub time: SystemTime,
    /// The method as received.
    pub method: &'a http::Method,
    /// A WebSocket upgrade.
    pub websocket: bool,
    /// A gRPC call.
    pub grpc: bool,
    /// Host the route was chosen by.
    pub host: &'a str,
    /// Normalised, decoded path.
    pub path: &'a str,
    /// Raw query.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Client address.
    pub client: std::net::IpAddr,
    /// Client address as logged.
    pub client_label: &'a std::sync::Arc<str>,
}

/// Decides `ask` on `route` for `principal`; records the decision; refuses unless allowed.
pub fn authorize(
    snapshot: &Snapshot,
    route: &RouteEntry,
    principal: &Principal,
    ask: &Ask<'_>,
    shared: &Shared,
) -> Result<(), ProxyError> {
    let audit = &shared.audit;
    let action = if ask.websocket {
        Some(Action::WebSocket)
    } else if ask.grpc {
        Some(Action::Grpc)
    } else {
        Action::of_method(ask.method.as_str())
    };
    let params = route.config.path.capture(ask.path).unwrap_or_default();
    let grpc = ask.grpc.then(|| grpc_names(ask.path));
    let outcome = match (&snapshot.policies, action) {
        (Some(policies), Some(action)) => {
            let view = RequestView {
                action,
                method: ask.method.as_str(),
                host: ask.host,
                path: ask.path,
                params: &params,
                query: ask.query,
                headers: ask.headers,
                ip: ask.client,
                now: ask.time,
                grpc,
            };
            policies.decide(route.index, principal, &view)
        }
        // The config check makes every authorized route come with policies; should that ever
        // not hold, or a method have no action, the request is refused.
        (None, _) => Err(DecideError::Internal("no policies are loaded".into())),
        (_, None) => Err(DecideError::Internal(format!(
            "method `{}` has no policy action",
            ask.method
        ))),
    };
    let decision = match outcome {
        Ok(d) => d,
        Err(DecideError::BadRequest(e)) => {
            record(
                snapshot,
                route,
                principal,
                ask,
                action,
                audit,
                &denied(e.to_string()),
            );
            return Err(ProxyError::PolicyInput(e));
        }
        Err(e) => {
            let d = denied(e.to_string());
            record(snapshot, route, principal, ask, action, audit, &d);
            return Err(ProxyError::Forbidden(e.to_string()));
        }
    };
    record(snapshot, route, principal, ask, action, audit, &decision);
    if decision.disagrees() {
        shared
            .shadow_disagreements
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            request_id = ask.request_id,
            route = %route.name,
            enforced = decision.enforced.allow,
            shadow = decision.shadow.as_ref().is_some_and(|s| s.allow),
            "shadow policies disagree"
        );
    }
    if decision.allowed() {
        Ok(())
    } else {
        Err(ProxyError::Forbidden(reason(&decision.enforced)))
    }
}

/// A decision that never reached the policies.
fn denied(why: String) -> Decision {
    Decision {
        enforced: Verdict {
            allow: false,
            policies: Vec::new(),
            errors: vec![why],
        },
        shadow: None,
    }
}

/// Why the access log says a request was forbidden (the audit trail has the whole story).
fn reason(v: &Verdict) -> String {
    if !v.errors.is_empty() {
        format!("policy evaluation failed: {}", v.errors.join("; "))
    } else if v.policies.is_empty() {
        "no policy permits the request".into()
    } else {
        format!("forbidden by {}", v.policies.join(", "))
    }
}

fn record(
    snapshot: &Snapshot,
    route: &RouteEntry,
    principal: &Principal,
    ask: &Ask<'_>,
    action: Option<Action>,
    audit: &AuditLog,
    d: &Decision,
) {
    if !audit.enabled() {
        return;
    }
    let word = |allow: bool| if allow { "allow" } else { "deny" };
    audit.record(AuditEvent {
        time: ask.time,
        log: "audit",
        request_id: ask.request_id.to_string(),
        version: snapshot.version_label.clone(),
        principal: audit_principal(principal),
        action: action.map_or("(none)", Action::id),
        resource: route.name.clone(),
        upstream: route.upstream.name.clone(),
        path: ask.path.to_string(),
        client: ask.client_label.clone(),
        decision: word(d.enforced.allow),
        reason: None,
        policies: d.enforced.policies.clone(),
        errors: d.enforced.errors.clone(),
        shadow: d.shadow.as_ref().map(|s| AuditShadow {
            decision: word(s.allow),
            policies: s.policies.clone(),
            errors: s.errors.clone(),
            disagrees: s.allow != d.enforced.allow,
        }),
    });
}

/// The caller of every public route that asks its policies; one for the process, so the
/// policies' entity for it is built once.
pub fn anonymous() -> &'static std::sync::Arc<Principal> {
    static ANONYMOUS: std::sync::LazyLock<std::sync::Arc<Principal>> =
        std::sync::LazyLock::new(|| std::sync::Arc::new(Principal::anonymous()));
    &ANONYMOUS
}

/// The caller as the audit trail names it.
pub fn audit_principal(principal: &Principal) -> AuditPrincipal {
    AuditPrincipal {
        id: principal.id.clone(),
        kind: principal.kind.as_str(),
        authenticator: principal.authenticator.clone(),
        groups: principal.groups.clone(),
    }
}

/// A gRPC call's service and method from its path (`/package.Service/Method`).
fn grpc_names(path: &str) -> (&str, &str) {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split_once('/').unwrap_or((rest, ""))
}
