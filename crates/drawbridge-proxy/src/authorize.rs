//! Phase 7, authorize: the route's Cedar policies decide about the caller, the action and
//! the request's context. What they decide is returned, never recorded here: the record
//! phase writes it to the audit trail.

use std::sync::Arc;

use drawbridge_identity::Principal;
use drawbridge_policy::{Action, DecideError, Decision, RequestView, Verdict};

use crate::admission::ask::{Ask, Kind};
use crate::rescue::{Forbidden, ProxyError};
use crate::snapshot::{RouteEntry, Snapshot};

/// What `route`'s policies decide about `ask` by `principal`: the action asked for, the
/// decision (a denial when none could be made), and the refusal to answer unless allowed.
pub fn decide(
    snapshot: &Snapshot,
    route: &RouteEntry,
    principal: &Arc<Principal>,
    ask: &Ask<'_>,
) -> (Option<Action>, Arc<Decision>, Option<ProxyError>) {
    let action = action_of(ask);
    let outcome = match (&snapshot.policies, action) {
        (Some(policies), Some(action)) => with_view(route, ask, action, |view| {
            policies.decide(route.index, principal, view)
        }),
        // The config check makes every authorized route come with policies; should that ever
        // not hold, or a method have no action, the request is refused.
        (None, _) => Err(DecideError::Internal("no policies are loaded".into())),
        (_, None) => Err(DecideError::Internal(format!(
            "method `{}` has no policy action",
            ask.method
        ))),
    };
    match outcome {
        Ok(d) => {
            let refusal = (!d.allowed()).then(|| ProxyError::Forbidden(reason(&d.enforced)));
            (action, d, refusal)
        }
        Err(DecideError::BadRequest(e)) => (
            action,
            denied(e.to_string()),
            Some(ProxyError::PolicyInput(e)),
        ),
        Err(e) => {
            let why = e.to_string();
            (
                action,
                denied(why.clone()),
                Some(ProxyError::Forbidden(Forbidden::Evaluation(vec![why]))),
            )
        }
    }
}

/// Whether a second factor among `candidates` would have let through what the policies
/// refused (`denied`): see [`drawbridge_policy::Policies::step_up`].
pub fn step_up(
    snapshot: &Snapshot,
    route: &RouteEntry,
    principal: &Arc<Principal>,
    ask: &Ask<'_>,
    denied: &Verdict,
    candidates: &[drawbridge_config::MfaMethod],
) -> Option<drawbridge_policy::StepUp> {
    let (policies, action) = (snapshot.policies.as_ref()?, action_of(ask)?);
    if candidates.is_empty() {
        return None;
    }
    with_view(route, ask, action, |view| {
        policies.step_up(route.index, principal, view, denied, candidates)
    })
}

/// The policy action `ask` asks for; `None` when its method has none.
pub fn action_of(ask: &Ask<'_>) -> Option<Action> {
    match ask.kind {
        Kind::WebSocket => Some(Action::WebSocket),
        Kind::Grpc => Some(Action::Grpc),
        Kind::Http => Action::of_method(ask.method),
    }
}

/// Runs `f` on the policies' view of `ask` on `route`.
fn with_view<T>(
    route: &RouteEntry,
    ask: &Ask<'_>,
    action: Action,
    f: impl FnOnce(&RequestView<'_>) -> T,
) -> T {
    // A pattern without parameters captures nothing: not split on every request.
    let params = if route.config.params.is_empty() {
        Vec::new()
    } else {
        route.config.path.capture(ask.path).unwrap_or_default()
    };
    let grpc = (ask.kind == Kind::Grpc).then(|| grpc_names(ask.path));
    f(&RequestView {
        action,
        method: ask.method,
        host: ask.host,
        path: ask.path,
        params: &params,
        query: ask.query,
        headers: ask.headers,
        ip: ask.client,
        now: ask.time,
        grpc,
    })
}

/// A decision that never reached the policies.
pub fn denied(why: String) -> Arc<Decision> {
    Arc::new(Decision {
        enforced: Verdict {
            allow: false,
            policies: Vec::new(),
            errors: vec![why],
        },
        shadow: None,
    })
}

/// Why the policies' verdict refuses (the audit trail has the whole story).
pub fn reason(v: &Verdict) -> Forbidden {
    if !v.errors.is_empty() {
        Forbidden::Evaluation(v.errors.clone())
    } else if v.policies.is_empty() {
        Forbidden::NoPermit
    } else {
        Forbidden::By(v.policies.clone())
    }
}

/// A gRPC call's service and method from its path (`/package.Service/Method`).
fn grpc_names(path: &str) -> (&str, &str) {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split_once('/').unwrap_or((rest, ""))
}
