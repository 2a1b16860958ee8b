//! The admin listener: Drawbridge's own address for orchestrators, apart from every route
//! (no route can reach it, and it reaches no upstream). `/healthz` answers while the
//! process serves; `/readyz` answers 200 only when the configuration is loaded, every
//! listener bound, every JWT issuer's keys fetched (and not stale) and no drain has begun,
//! and otherwise 503 naming what is missing. `POST /sessions/revoke` ends one session
//! (`?session=HANDLE`) or every session of a person (`?user=AUTHENTICATOR/ID`): what
//! `drawbridge sessions revoke` calls while an instance holds the embedded store.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::context::Shared;

/// Serves the admin endpoints on `listener` until `stop` turns true.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/sessions/revoke", post(revoke))
        .with_state(shared);
    let stopped = async move {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                return;
            }
        }
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::warn!(error = %e, "admin listener failed");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    match not_ready(&shared) {
        None => (
            StatusCode::OK,
            format!("ready (config {})\n", shared.snapshot.load().version),
        ),
        Some(missing) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", missing.join("\n")),
        ),
    }
}

/// What `/sessions/revoke` takes.
#[derive(serde::Deserialize)]
struct Revoke {
    session: Option<String>,
    user: Option<String>,
}

async fn revoke(
    State(shared): State<Arc<Shared>>,
    Query(r): Query<Revoke>,
) -> (StatusCode, String) {
    let snapshot = shared.snapshot.load_full();
    let Some(sessions) = &snapshot.sessions else {
        return (StatusCode::NOT_FOUND, "no sessions configured\n".into());
    };
    match drawbridge_session::revoke(sessions, r.session.as_deref(), r.user.as_deref()).await {
        Ok(done) => (StatusCode::OK, format!("{done}\n")),
        Err(drawbridge_session::RevokeError::Usage(m)) => {
            (StatusCode::BAD_REQUEST, format!("{m}\n"))
        }
        Err(drawbridge_session::RevokeError::NotFound) => {
            (StatusCode::NOT_FOUND, "no such session\n".into())
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// What keeps the process from taking traffic, one line each; `None` when nothing does.
pub fn not_ready(shared: &Shared) -> Option<Vec<String>> {
    let mut missing = Vec::new();
    if shared.draining.load(Ordering::Relaxed) {
        missing.push("draining: the server is shutting down".to_string());
    }
    let snapshot = shared.snapshot.load();
    for a in &snapshot.authenticators {
        if let Err(why) = a.ready() {
            missing.push(format!("authenticator `{}`: {why}", a.name()));
        }
    }
    (!missing.is_empty()).then_some(missing)
}
