//! Phase 11, record: one access-log line per request (written when its response ends, see
//! [`crate::body`]) and one audit event per decision the policies made, allowed or denied.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use drawbridge_identity::Principal;
use drawbridge_telemetry::metrics::Decision;
use drawbridge_telemetry::{AccessEvent, AuditEvent, AuditLog, AuditPrincipal, AuditShadow};

use crate::admission::Decided;
use crate::snapshot::{RouteEntry, Snapshot};

/// The access-log record of a request that has just arrived; the phases complete it.
pub fn access_event(
    time: SystemTime,
    request_id: drawbridge_telemetry::RequestId,
    listener: Arc<str>,
    client: Arc<str>,
    method: &http::Method,
    version: http::Version,
) -> AccessEvent {
    AccessEvent {
        time,
        request_id,
        trace_id: None,
        listener,
        host: None,
        route: None,
        client,
        forwarded_for: None,
        principal: None,
        method: method_name(method),
        path: String::new(),
        protocol: protocol_name(version),
        status: 0,
        grpc_status: None,
        bytes_sent: 0,
        bytes_received: None,
        upstream: None,
        duration_us: 0,
        phase: None,
        reason: None,
    }
}

/// What a decision is about, beside the decision itself.
pub struct About<'a> {
    /// The request's id.
    pub request_id: &'a str,
    /// When it was decided.
    pub time: SystemTime,
    /// The normalised path.
    pub path: &'a str,
    /// The client as the access log names it.
    pub client: &'a Arc<str>,
    /// The client's address (the nearest a trusted proxy named).
    pub ip: std::net::IpAddr,
    /// The request's trace, when traced.
    pub trace_id: Option<&'a str>,
}

/// Where decisions are recorded: the audit trail, and the count of shadow disagreements.
pub struct Decisions<'a> {
    /// The audit trail.
    pub audit: &'a AuditLog,
    /// Decisions where the shadow policies disagreed with the enforced ones.
    pub disagreements: &'a std::sync::atomic::AtomicU64,
    /// The detectors, which count refusals, shadow denials and second-factor failures.
    pub alerter: &'a crate::alerts::Alerter,
}

/// What became of an audit event.
pub enum Written {
    /// Queued for the writer.
    Queued,
    /// Queued, and the writer will say whether it was written (`[audit] required`).
    Waiting(tokio::sync::oneshot::Receiver<bool>),
    /// Not queued: the trail is off, or its queue full.
    Lost,
}

impl Written {
    /// Whether the event is in the trail: waits for the writer's word when there is one
    /// (`within` at most).
    pub async fn confirmed(self, within: std::time::Duration) -> bool {
        match self {
            Written::Queued => true,
            Written::Lost => false,
            Written::Waiting(rx) => matches!(tokio::time::timeout(within, rx).await, Ok(Ok(true))),
        }
    }
}

/// Writes `decided` on `route` to the audit trail, and counts and logs a disagreement of
/// the shadow policies. Where the trail is `required`, the writer is asked to say when the
/// event is written.
pub fn decision(
    to: &Decisions<'_>,
    snapshot: &Snapshot,
    route: &RouteEntry,
    decided: &Decided,
    about: &About<'_>,
) -> Written {
    let d = &decided.decision;
    let verdict = if d.enforced.allow {
        Decision::Allow
    } else if decided.mfa.as_ref().is_some_and(|m| !m.satisfied) {
        Decision::StepUp
    } else {
        Decision::Deny
    };
    route.metrics.decision(verdict, d.disagrees());
    if d.enforced.allow && d.shadow.as_ref().is_some_and(|s| !s.allow) {
        to.alerter.observe(
            snapshot,
            || crate::alerts::Observed {
                signal: drawbridge_config::Signal::ShadowDenial,
                client: about.ip,
                principal: None,
                route: Some(route.name.clone()),
            },
            drawbridge_config::Signal::ShadowDenial,
        );
    }
    if d.disagrees() {
        to.disagreements.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            request_id = about.request_id,
            route = %route.name,
            enforced = d.enforced.allow,
            shadow = d.shadow.as_ref().is_some_and(|s| s.allow),
            "shadow policies disagree"
        );
    }
    if !to.audit.enabled() {
        return Written::Lost;
    }
    let mut event = audit_event(snapshot, route, &decided.principal, about);
    event.action = decided
        .action
        .map_or("(none)", drawbridge_policy::Action::id);
    event.decision = word(d.enforced.allow);
    event.policies = Cow::Borrowed(&d.enforced.policies);
    event.errors = Cow::Borrowed(&d.enforced.errors);
    event.shadow = d.shadow.as_ref().map(|s| AuditShadow {
        decision: word(s.allow),
        policies: Cow::Borrowed(&s.policies),
        errors: Cow::Borrowed(&s.errors),
        disagrees: s.allow != d.enforced.allow,
    });
    event.mfa = decided.mfa.as_ref().map(crate::verify::MfaCheck::audit);
    if snapshot.audit.required {
        return to
            .audit
            .record_acked(event)
            .map_or(Written::Lost, Written::Waiting);
    }
    if to.audit.record(event) {
        Written::Queued
    } else {
        Written::Lost
    }
}

/// Writes an attempt at a second factor (`action` `mfa.verify`, `mfa.enrol` or
/// `mfa.remove`) to the audit trail: who, which factor, and whether it was accepted or why
/// not (`wrong_code`, `replayed_code`, `locked`...). Never the code.
pub fn mfa_attempt(
    to: &Decisions<'_>,
    snapshot: &Snapshot,
    principal: &Principal,
    about: &About<'_>,
    action: &'static str,
    method: Option<drawbridge_config::MfaMethod>,
    outcome: Result<(), &'static str>,
) {
    snapshot.metrics.mfa_attempt(
        method.map_or("none", drawbridge_config::MfaMethod::as_str),
        outcome.err().unwrap_or("ok"),
    );
    if outcome.is_err() {
        to.alerter.observe(
            snapshot,
            || crate::alerts::Observed {
                signal: drawbridge_config::Signal::MfaFailure,
                client: about.ip,
                principal: Some(format!("{}/{}", principal.authenticator, principal.id)),
                route: None,
            },
            drawbridge_config::Signal::MfaFailure,
        );
    }
    if !to.audit.enabled() {
        return;
    }
    to.audit.record(AuditEvent {
        time: about.time,
        log: "audit",
        request_id: about.request_id.into(),
        trace_id: about.trace_id.map(Cow::Borrowed),
        version: Cow::Borrowed(&snapshot.version_label),
        principal: audit_principal(principal),
        action,
        resource: MFA_RESOURCE.into(),
        upstream: MFA_RESOURCE.into(),
        path: about.path.into(),
        client: Cow::Borrowed(about.client),
        decision: word(outcome.is_ok()),
        reason: outcome.err().map(Cow::Borrowed),
        policies: Cow::Borrowed(&[]),
        errors: Cow::Borrowed(&[]),
        shadow: None,
        mfa: method.map(|m| drawbridge_telemetry::AuditMfa {
            required: vec![m.as_str()],
            max_age: None,
            presented: Some(m.as_str()),
            age: Some(0),
            satisfied: outcome.is_ok(),
        }),
    });
}

/// Writes a detector's firing to the audit trail (`action` `alert`): which detector, on
/// what key, how many signals, and the block it set.
pub fn alert(
    audit: &AuditLog,
    snapshot: &Snapshot,
    d: &drawbridge_config::Detector,
    key: &str,
    count: u64,
    blocked_until: Option<u64>,
) {
    if !audit.enabled() {
        return;
    }
    let principal = match d.by {
        drawbridge_config::AlertKey::Principal => key.split_once('/').map_or_else(
            || (key.to_string(), String::new()),
            |(a, id)| (id.to_string(), a.to_string()),
        ),
        _ => ("(none)".to_string(), String::new()),
    };
    let mut reason = format!(
        "{} `{}` {} times within {}s (threshold {})",
        d.on.as_str(),
        key,
        count,
        d.window.as_secs(),
        d.threshold
    );
    if let Some(until) = blocked_until {
        reason.push_str(&format!(
            "; {} blocked until {}",
            d.by.as_str(),
            humantime::format_rfc3339_seconds(
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(until)
            )
        ));
    }
    audit.record(AuditEvent {
        time: std::time::SystemTime::now(),
        log: "audit",
        request_id: "".into(),
        trace_id: None,
        version: Cow::Borrowed(&snapshot.version_label),
        principal: AuditPrincipal {
            id: principal.0.into(),
            kind: "user",
            authenticator: principal.1.into(),
            groups: Cow::Borrowed(&[]),
        },
        action: "alert",
        resource: d.name.as_str().into(),
        upstream: "".into(),
        path: "".into(),
        client: match d.by {
            drawbridge_config::AlertKey::Client => key.into(),
            _ => "".into(),
        },
        decision: if blocked_until.is_some() {
            "block"
        } else {
            "alert"
        },
        reason: Some(reason.into()),
        policies: Cow::Borrowed(&[]),
        errors: Cow::Borrowed(&[]),
        shadow: None,
        mfa: None,
    });
}

/// What MFA attempts are recorded against: Drawbridge's own pages.
const MFA_RESOURCE: &str = "/.drawbridge/mfa";

/// An audit event about `principal` on `route`, its decision still to be said.
pub fn audit_event<'a>(
    snapshot: &'a Snapshot,
    route: &'a RouteEntry,
    principal: &'a Principal,
    about: &About<'a>,
) -> AuditEvent<'a> {
    AuditEvent {
        time: about.time,
        log: "audit",
        request_id: about.request_id.into(),
        trace_id: about.trace_id.map(Cow::Borrowed),
        version: Cow::Borrowed(&snapshot.version_label),
        principal: audit_principal(principal),
        action: "(none)",
        resource: Cow::Borrowed(&route.name),
        upstream: Cow::Borrowed(&route.upstream.name),
        path: about.path.into(),
        client: Cow::Borrowed(about.client),
        decision: "deny",
        reason: None,
        policies: Cow::Borrowed(&[]),
        errors: Cow::Borrowed(&[]),
        shadow: None,
        mfa: None,
    }
}

fn word(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

/// The caller as the audit trail names it.
pub fn audit_principal(principal: &Principal) -> AuditPrincipal<'_> {
    AuditPrincipal {
        id: Cow::Borrowed(&principal.id),
        kind: principal.kind.as_str(),
        authenticator: Cow::Borrowed(&principal.authenticator),
        groups: Cow::Borrowed(&principal.groups),
    }
}

/// The protocol as the access log names it.
pub fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

/// The method's name, borrowed for the standard methods.
pub fn method_name(m: &http::Method) -> Cow<'static, str> {
    use http::Method;
    let known = match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return Cow::Owned(m.as_str().to_string()),
    };
    Cow::Borrowed(known)
}
