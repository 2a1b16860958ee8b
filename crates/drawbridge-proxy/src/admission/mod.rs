//! The admission core, phases 4 to 8 for every protocol: route, then authenticate, verify,
//! authorize and limit, over a neutral description of the request ([`Ask`]). The HTTP
//! pipeline, `drawbridge test` and the tunnels' re-checks call this one core; a protocol
//! adds only what it screens once the route is known (the HTTP query, for instance).
//!
//! Limit (rate limits) is not built yet; it slots in after authorize.

pub mod ask;

use std::sync::Arc;
use std::time::Instant;

use drawbridge_identity::Principal;
use drawbridge_policy::{Action, Decision};
use drawbridge_telemetry::metrics::Timed;

pub use ask::{Ask, Kind, Proof};

use crate::rescue::ProxyError;
use crate::route::Match;
use crate::snapshot::{ListenerEntry, RouteEntry, Snapshot};

/// A request the core let in.
pub struct Admitted {
    /// Its route: the resource the policies decided about.
    pub route: Arc<RouteEntry>,
    /// Its caller; `None` on a public route.
    pub principal: Option<Arc<Principal>>,
    /// The policies' decision; `None` where the route asks none.
    pub decided: Option<Decided>,
}

/// A decision the policies made (or failed to make), for the audit trail.
pub struct Decided {
    /// Who the policies decided about (the anonymous caller on a public route).
    pub principal: Arc<Principal>,
    /// The action asked for; `None` when the method has none.
    pub action: Option<Action>,
    /// The enforced and shadow verdicts.
    pub decision: Arc<Decision>,
    /// The second factor the request needed, and what was shown.
    pub mfa: Option<crate::verify::MfaCheck>,
}

/// A request the core refused.
pub struct Refused {
    /// Why, for the rescue.
    pub error: ProxyError,
    /// The route it was refused on, once known.
    pub route: Option<Arc<RouteEntry>>,
    /// The policies' decision, when they were asked.
    pub decided: Option<Decided>,
}

impl From<ProxyError> for Refused {
    fn from(error: ProxyError) -> Self {
        Refused {
            error,
            route: None,
            decided: None,
        }
    }
}

/// Phase 4, route: host + path + method on `listener` -> the one route that decides the
/// request. On TLS the host must be one the handshake's certificate serves (`sni`).
pub fn route(
    listener: &ListenerEntry,
    sni: Option<&str>,
    host: &str,
    path: &str,
    method: &str,
) -> Result<Arc<RouteEntry>, ProxyError> {
    // Never an mTLS-only host reached over a public one's SNI.
    if let Some(resolver) = &listener.sni
        && !resolver.same_virtual_host(sni, host)
    {
        return Err(ProxyError::Misdirected);
    }
    match listener.routes.lookup(host, path, method) {
        Match::Found(r) => Ok(r.clone()),
        Match::MethodNotAllowed(allowed) => Err(ProxyError::MethodNotAllowed(allowed.join(", "))),
        Match::NotFound => Err(ProxyError::NoRoute),
    }
}

/// Phases 5 to 8 on `route`: authenticate the caller by `proof`, verify the second factor
/// the route requires, then let the route's policies decide (and, when they refuse, ask
/// whether a second factor would change their mind). Nothing is recorded here; the caller
/// records what it returns.
pub async fn admit(
    snapshot: &Snapshot,
    route: Arc<RouteEntry>,
    proof: Proof<'_>,
    ask: &Ask<'_>,
) -> Result<Admitted, Refused> {
    // 5 authenticate
    // Timed where there is something to time: a public route reads no credentials.
    let started = (!route.authenticators.is_empty()).then(Instant::now);
    let caller = crate::authenticate::caller(snapshot, &route, proof, ask.host, ask.headers).await;
    let authenticated = started.map(|s| {
        let now = Instant::now();
        route.metrics.phase(Timed::Authenticate, now - s);
        crate::authenticate::count(&route, &caller);
        now
    });
    let principal = match caller {
        Ok(p) => p,
        Err(error) => {
            return Err(Refused {
                error,
                route: Some(route),
                decided: None,
            });
        }
    };
    // 6 verify: the route's own requirement comes before any policy.
    let required = crate::verify::route(&route, principal.as_deref(), ask.time);
    if let Some(check) = required.as_ref().filter(|c| !c.satisfied) {
        let asked = principal
            .clone()
            .unwrap_or_else(|| crate::authenticate::anonymous().clone());
        return Err(Refused {
            error: ProxyError::StepUp(Box::new(check.challenge(&route))),
            decided: Some(Decided {
                principal: asked,
                action: crate::authorize::action_of(ask),
                decision: crate::authorize::denied("second factor required".into()),
                mfa: required,
            }),
            route: Some(route),
        });
    }
    if !route.config.admission.authorizes() {
        return Ok(Admitted {
            route,
            principal,
            decided: None,
        });
    }
    // 7 authorize. A public route that asks its policies: they decide about the anonymous
    // caller.
    let asked = principal
        .clone()
        .unwrap_or_else(|| crate::authenticate::anonymous().clone());
    // From the end of authentication: verify (one test on most routes) and the policies.
    let started = authenticated.unwrap_or_else(Instant::now);
    let (action, decision, error) = crate::authorize::decide(snapshot, &route, &asked, ask);
    route.metrics.phase(Timed::Authorize, started.elapsed());
    // Admitted only on an allowing decision, whatever else was said.
    let mut error = match error {
        None if !decision.allowed() => Some(ProxyError::Forbidden(crate::authorize::reason(
            &decision.enforced,
        ))),
        e => e,
    };
    let mut mfa = required;
    // 6 verify, again: a refusal that a second factor would lift asks for the factor.
    if let Some(ProxyError::Forbidden(_)) = error
        && let Some(s) = crate::authorize::step_up(
            snapshot,
            &route,
            &asked,
            ask,
            &decision.enforced,
            &crate::verify::candidates(snapshot, &route, &asked),
        )
    {
        let check = crate::verify::stepped_up(&asked, s, ask.time);
        error = Some(ProxyError::StepUp(Box::new(check.challenge(&route))));
        mfa = Some(check);
    }
    let decided = Decided {
        principal: asked,
        action,
        decision,
        mfa,
    };
    match error {
        None => Ok(Admitted {
            route,
            principal,
            decided: Some(decided),
        }),
        Some(error) => Err(Refused {
            error,
            route: Some(route),
            decided: Some(decided),
        }),
    }
}
