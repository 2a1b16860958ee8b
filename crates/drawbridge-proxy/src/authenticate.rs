//! Phase 5, authenticate: the route's authenticators, tried in order, turn the request's
//! credentials into the [`Principal`] the policies decide about.

use std::sync::Arc;

use drawbridge_config::Admission;
use drawbridge_identity::{AuthError, Credentials, Principal, Refusal};
use http::HeaderMap;

use crate::admission::ask::Proof;
use crate::rescue::{ProxyError, Schemes};
use crate::snapshot::{RouteEntry, Snapshot};

/// The caller of a request on `route`: `None` on a public route, which reads no
/// credentials; otherwise the principal one of the route's authenticators admits.
pub async fn caller(
    snapshot: &Snapshot,
    route: &RouteEntry,
    proof: Proof<'_>,
    host: &str,
    headers: &HeaderMap,
) -> Result<Option<Arc<Principal>>, ProxyError> {
    if let Admission::Public { .. } = route.config.admission {
        return Ok(None);
    }
    // A person's session, on a route people sign in to.
    if let Proof::Presented { .. } = proof
        && let Some(p) = crate::session::session(snapshot, route, host, headers).await?
    {
        return Ok(Some(p));
    }
    let refused = |e| ProxyError::Unauthenticated(e, Schemes::of(&route.authenticators));
    // Credentials are read the same way whoever checks them: an ambiguous one is refused
    // before any authenticator sees it (a token the route's authenticators verified before
    // is known by its bytes).
    let creds = Credentials::for_authenticators(headers, &route.authenticators).map_err(refused)?;
    let principal = match proof {
        Proof::Presented { client_cert } => {
            drawbridge_identity::authenticate(
                &route.authenticators,
                &creds.with_client_cert(client_cert),
            )
            .await
        }
        Proof::Simulated(None) if creds.has_bearer() || creds.api_key.is_some() => {
            Err(AuthError::Invalid(Refusal::Simulated(
                "a test case names its caller with `principal`, not with credentials".into(),
            )))
        }
        Proof::Simulated(None) => Err(AuthError::Missing),
        Proof::Simulated(Some((name, caller, factors))) => {
            match route.authenticators.iter().find(|a| &**a.name() == name) {
                None => Err(AuthError::Invalid(Refusal::Simulated(format!(
                    "route `{}` does not accept authenticator `{name}`",
                    route.name
                )))),
                Some(a) => a
                    .simulate(caller)
                    .map(|mut p| {
                        for f in factors {
                            drawbridge_identity::Factor::record(&mut p.factors, *f);
                        }
                        Arc::new(p)
                    })
                    .map_err(|e| AuthError::Invalid(Refusal::Simulated(e))),
            }
        }
    };
    principal.map(Some).map_err(refused)
}

/// Counts the outcome of authenticating a request on `route`: against the authenticator
/// that admitted the caller, or the one whose kind of credential was refused (the route's
/// first when that cannot be told).
pub fn count(route: &RouteEntry, caller: &Result<Option<Arc<Principal>>, ProxyError>) {
    use drawbridge_telemetry::metrics::AuthnOutcome;
    let by = |i: Option<usize>| route.authn_metrics.get(i.unwrap_or(0));
    let kind = |want: fn(&drawbridge_identity::Authenticator) -> bool| {
        route.authenticators.iter().position(|a| want(a))
    };
    let (metrics, outcome) = match caller {
        Ok(None) => return,
        Ok(Some(p)) => (
            by(route.authenticators.iter().position(|a| {
                Arc::ptr_eq(a.name(), &p.authenticator) || *a.name() == p.authenticator
            })),
            AuthnOutcome::Ok,
        ),
        Err(ProxyError::Unauthenticated(e, _)) => {
            use drawbridge_identity::Authenticator as A;
            let outcome = match e {
                AuthError::Missing => AuthnOutcome::Missing,
                AuthError::Malformed(_) => AuthnOutcome::Malformed,
                AuthError::Invalid(Refusal::Expired) => AuthnOutcome::Expired,
                AuthError::Invalid(Refusal::KeysUnavailable(_)) => AuthnOutcome::Unavailable,
                AuthError::Invalid(_) => AuthnOutcome::Invalid,
            };
            let at = match e {
                AuthError::Invalid(Refusal::ApiKey(_)) => kind(|a| matches!(a, A::ApiKey(_))),
                AuthError::Invalid(Refusal::Certificate(_)) => kind(|a| matches!(a, A::Mtls(_))),
                AuthError::Invalid(Refusal::NotAccepted(_) | Refusal::Simulated(_))
                | AuthError::Missing
                | AuthError::Malformed(_) => None,
                AuthError::Invalid(_) => kind(|a| matches!(a, A::Jwt(_))),
            };
            (by(at), outcome)
        }
        // The session store or the provider could not be had.
        Err(_) => (
            by(kind(|a| {
                matches!(a, drawbridge_identity::Authenticator::Oidc(_))
            })),
            AuthnOutcome::Unavailable,
        ),
    };
    if let Some(m) = metrics {
        m.outcome(outcome);
    }
}

/// The caller of every public route that asks its policies; one for the process, so the
/// policies' entity for it is built once.
pub fn anonymous() -> &'static Arc<Principal> {
    static ANONYMOUS: std::sync::LazyLock<Arc<Principal>> =
        std::sync::LazyLock::new(|| Arc::new(Principal::anonymous()));
    &ANONYMOUS
}
