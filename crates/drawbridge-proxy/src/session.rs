//! Phase 5 for people: the session a request's cookie names, read for a route that admits
//! an `oidc` authenticator; the redirect that sends a browser without one to sign in; and
//! the session store a snapshot is put in force with.

use std::sync::Arc;

use drawbridge_identity::Principal;
use drawbridge_session::{SESSION_COOKIE, Sessions, cookies};
use http::HeaderMap;

use crate::rescue::ProxyError;
use crate::snapshot::{RouteEntry, Snapshot};

/// Opens the session store for `next` (or carries on `previous`'s when it names the same
/// store), so a snapshot that signs people in can be put in force.
pub fn attach(next: &mut Snapshot, previous: Option<&Snapshot>) -> Result<(), String> {
    let Some(config) = next.sessions_config.clone() else {
        return Ok(());
    };
    let same = previous
        .and_then(|p| p.sessions.as_ref())
        .filter(|s| s.config().store == config.store);
    let sessions = match same {
        Some(s) => s.renew(config, next.served.clone()),
        None => {
            let store = drawbridge_session::Store::open(&config.store)
                .map_err(|e| format!("opening the session store: {e}"))?;
            Sessions::new(store, config, next.served.clone())
        }
    }
    .map_err(|e| e.to_string())?;
    let sessions = Arc::new(sessions);
    next.mfa = next
        .mfa_config
        .clone()
        .map(|m| Arc::new(drawbridge_mfa::Mfa::new(m, sessions.clone())));
    next.sessions = Some(sessions);
    Ok(())
}

/// Phase 5 for sessions: the principal of the session the request's cookie names, when the
/// route admits its authenticator and the session is for this host. `Ok(None)` when there
/// is none; an error when the store could not say (the request is refused).
pub async fn session(
    snapshot: &Snapshot,
    route: &RouteEntry,
    host: &str,
    headers: &HeaderMap,
) -> Result<Option<Arc<Principal>>, ProxyError> {
    let Some(sessions) = &snapshot.sessions else {
        return Ok(None);
    };
    if !route.signs_in() {
        return Ok(None);
    }
    let Some(cookie) = cookies::find(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    match sessions.lookup(cookie, host, &route.authenticators).await {
        Ok(s) => Ok(s.map(|s| s.principal.clone())),
        Err(e) => {
            tracing::error!(error = %e, route = %route.name, "session lookup failed; refusing");
            Err(ProxyError::SessionUnavailable)
        }
    }
}

/// The redirect that sends a browser to sign in and back to `target` (the request's path
/// and query).
pub fn to_sign_in(target: &str) -> ProxyError {
    ProxyError::SignIn(sign_in_location(target))
}

/// The sign-in page's address, to come back to `target`.
pub fn sign_in_location(target: &str) -> String {
    let rd: String = url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
    format!("/.drawbridge/sign_in?rd={rd}")
}
