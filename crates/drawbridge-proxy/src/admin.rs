//! The admin listener: Drawbridge's own address for orchestrators and operators, apart
//! from every route (no route can reach it, and it reaches no upstream).
//!
//! - `/healthz` answers while the process serves; `/readyz` answers 200 only when the
//!   configuration is loaded, every listener bound, every issuer's keys and every OpenID
//!   provider's discovery document had (and not stale), the session store answers, and no
//!   drain has begun; otherwise 503 naming each thing missing.
//! - `/metrics`: every metric, in the OpenMetrics text format.
//! - `/api/...`: JSON for operators (the configuration in force, reloads, recent decisions,
//!   sessions); `drawbridge admin` calls it.
//!
//! Anything but the two probes needs a caller that one of `[admin] authenticators` admits
//! (and in one of `groups`, when listed), checked as a route checks its callers; without
//! authenticators the listener must be on loopback (`check` refuses anything else).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use drawbridge_identity::{ClientCert, Credentials, Principal};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::context::Shared;

/// Audit lines kept in memory for `/api/decisions`.
pub const RECENT_DECISIONS: usize = 1000;

/// How long a store or a provider may take to answer a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What is known of an admin connection.
#[derive(Clone)]
struct Conn {
    cert: Option<Arc<ClientCert>>,
}

/// The admin endpoints, for tests and for [`serve`].
fn router(shared: Arc<Shared>) -> Router<()> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/config", get(config))
        .route("/api/reloads", get(reloads))
        .route("/api/reload", post(reload))
        .route("/api/decisions", get(decisions))
        .route("/api/sessions", get(sessions))
        .route("/api/sessions/revoke", post(revoke))
        .route("/api/blocks", get(blocks).delete(unblock))
        // The path `drawbridge sessions revoke` has always called.
        .route("/sessions/revoke", post(revoke))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Serves the admin endpoints on `listener` until `stop` turns true.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let app = router(shared.clone());
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            r = stop.changed() => if r.is_err() || *stop.borrow() { return } else { continue },
        };
        let tls = shared.snapshot.load().admin_tls.clone();
        tokio::spawn(connection(app.clone(), tcp, peer, tls));
    }
}

async fn connection(
    app: Router<()>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let Some(tls) = tls else {
        let app = app.layer(Extension(Conn { cert: None }));
        let _ = builder
            .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app))
            .await;
        return;
    };
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsAcceptor::from(tls).accept(tcp),
    )
    .await;
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .filter(|c| !c.is_empty())
        .and_then(|chain| ClientCert::from_chain(chain).ok())
        .map(Arc::new);
    let app = app.layer(Extension(Conn { cert }));
    let _ = builder
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
        .await;
}

/// Lets the probes through; everything else needs a caller the admin authenticators
/// admit, in one of the admin groups when they are listed.
async fn guard(
    State(shared): State<Arc<Shared>>,
    Extension(conn): Extension<Conn>,
    mut req: Request,
    next: Next,
) -> Response {
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let snapshot = shared.snapshot.load_full();
    let Some(admin) = &snapshot.admin else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if admin.authenticators.is_empty() {
        // Loopback only: `check` refuses anything else without authenticators.
        return next.run(req).await;
    }
    let authenticators: Vec<_> = admin
        .authenticators
        .iter()
        .filter_map(|&i| snapshot.authenticators.get(i).cloned())
        .collect();
    let admitted = match Credentials::for_authenticators(req.headers(), &authenticators) {
        Ok(creds) => {
            drawbridge_identity::authenticate(
                &authenticators,
                &creds.with_client_cert(conn.cert.as_deref()),
            )
            .await
        }
        Err(e) => Err(e),
    };
    match admitted {
        Ok(p) if admin.groups.is_empty() || p.groups.iter().any(|g| admin.groups.contains(g)) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Ok(p) => {
            tracing::warn!(principal = %p.id, authenticator = %p.authenticator, path = req.uri().path(), "admin API refused: not in an admin group");
            (StatusCode::FORBIDDEN, "forbidden: not an administrator\n").into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, path = req.uri().path(), "admin API refused: not authenticated");
            (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"drawbridge-admin\"",
                )],
                "unauthorized\n",
            )
                .into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    let mut missing = not_ready(&shared).unwrap_or_default();
    missing.extend(dependencies(&shared).await);
    if missing.is_empty() {
        (
            StatusCode::OK,
            format!("ready (config {})\n", shared.snapshot.load().version),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", missing.join("\n")),
        )
    }
}

/// What keeps the process from taking traffic that is known without asking anyone, one
/// line each; `None` when nothing does.
pub fn not_ready(shared: &Shared) -> Option<Vec<String>> {
    let mut missing = Vec::new();
    if shared.draining.load(Ordering::Relaxed) {
        missing.push("draining: the server is shutting down".to_string());
    }
    if shared.audit.enabled() && !shared.audit.writable() {
        missing.push("audit trail: the last write failed".to_string());
    }
    let snapshot = shared.snapshot.load();
    for a in &snapshot.authenticators {
        if let Err(why) = a.ready() {
            missing.push(format!("authenticator `{}`: {why}", a.name()));
        }
    }
    (!missing.is_empty()).then_some(missing)
}

/// The dependencies that must answer now: the session store.
async fn dependencies(shared: &Shared) -> Vec<String> {
    let snapshot = shared.snapshot.load_full();
    let mut missing = Vec::new();
    if let Some(sessions) = &snapshot.sessions {
        let store = sessions.store();
        let probe = tokio::time::timeout(PROBE_TIMEOUT, store.get("drawbridge:ready")).await;
        let why = match probe {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
        };
        if let Some(why) = why {
            missing.push(format!("session store ({}): {why}", store.kind()));
        }
    }
    missing
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: axum::http::HeaderMap) -> Response {
    // OpenMetrics to a scraper that asks for it (Prometheus does), the classic text
    // format to anyone else.
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let snapshot = shared.snapshot.load_full();
    let mut scrape = drawbridge_telemetry::metrics::Scrape {
        version: snapshot.version.clone(),
        ..Default::default()
    };
    for a in &snapshot.authenticators {
        if let Some(k) = a.key_set_state() {
            scrape.key_sets.push((a.name().to_string(), k));
        }
    }
    for u in &snapshot.upstreams {
        for (i, ep) in u.endpoints.iter().enumerate() {
            let (up, in_flight) = u.endpoint_state(i);
            scrape.endpoints.push((
                u.name.to_string(),
                ep.label.to_string(),
                up,
                in_flight as u64,
            ));
        }
    }
    scrape.logs = vec![
        ("access", shared.log.depth(), shared.log.dropped()),
        ("audit", shared.audit.depth(), shared.audit.dropped()),
    ];
    let text = snapshot.metrics.encode(scrape, openmetrics);
    let kind = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    ([(header::CONTENT_TYPE, kind)], text).into_response()
}

async fn config(State(shared): State<Arc<Shared>>) -> Response {
    let snapshot = shared.snapshot.load_full();
    axum::Json(json!({
        "version": snapshot.version,
        "files": std::iter::once(shared.config_path.display().to_string())
            .chain(snapshot.files.iter().map(|f| f.display().to_string()))
            .collect::<Vec<_>>(),
        "listeners": snapshot.listeners.iter().map(|l| json!({
            "name": &*l.name,
            "address": l.address.to_string(),
        })).collect::<Vec<_>>(),
        "routes": snapshot.routes.iter().map(|r| &*r.name).collect::<Vec<_>>(),
        "warnings": snapshot.warnings.iter().map(|w| w.as_warning().to_string()).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn reloads(State(shared): State<Arc<Shared>>) -> Response {
    let history: Vec<_> = shared
        .reload_history
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    axum::Json(history).into_response()
}

async fn reload(
    State(shared): State<Arc<Shared>>,
    by: Option<Extension<Arc<Principal>>>,
) -> Response {
    let s = shared.clone();
    let outcome = tokio::task::spawn_blocking(move || crate::reload::apply(&s))
        .await
        .unwrap_or_else(|e| Err(crate::ReloadError::Failed(e.to_string())));
    let by = by.map_or_else(|| "loopback".to_string(), |Extension(p)| p.id.clone());
    match outcome {
        Ok(version) => {
            tracing::info!(%version, by, "configuration reloaded through the admin API");
            axum::Json(json!({"ok": true, "version": version})).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, by, "reload through the admin API refused; the previous configuration keeps serving");
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({
                    "ok": false,
                    "version": shared.snapshot.load().version,
                    "error": e.to_string(),
                })),
            )
                .into_response()
        }
    }
}

/// What `/api/decisions` filters by.
#[derive(serde::Deserialize)]
struct Filter {
    principal: Option<String>,
    route: Option<String>,
    decision: Option<String>,
    limit: Option<usize>,
}

async fn decisions(State(shared): State<Arc<Shared>>, Query(f): Query<Filter>) -> Response {
    let limit = f.limit.unwrap_or(100).min(RECENT_DECISIONS);
    let mut out: Vec<serde_json::Value> = Vec::new();
    for line in shared.audit.recent().iter().rev() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let field = |path: &[&str]| {
            path.iter()
                .try_fold(&v, |v, k| v.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        if f.principal
            .as_ref()
            .is_some_and(|p| field(&["principal", "id"]).as_ref() != Some(p))
            || f.route
                .as_ref()
                .is_some_and(|r| field(&["resource"]).as_ref() != Some(r))
            || f.decision
                .as_ref()
                .is_some_and(|d| field(&["decision"]).as_ref() != Some(d))
        {
            continue;
        }
        out.push(v);
        if out.len() == limit {
            break;
        }
    }
    axum::Json(out).into_response()
}

async fn blocks(State(shared): State<Arc<Shared>>) -> Response {
    let snapshot = shared.snapshot.load_full();
    match shared.alerter.list(snapshot.sessions.as_deref()).await {
        Ok(list) => axum::Json(list).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

/// What `DELETE /api/blocks` takes: one of them.
#[derive(serde::Deserialize)]
struct Unblock {
    client: Option<String>,
    principal: Option<String>,
}

async fn unblock(
    State(shared): State<Arc<Shared>>,
    by: Option<Extension<Arc<Principal>>>,
    Query(u): Query<Unblock>,
) -> (StatusCode, String) {
    use drawbridge_config::AlertKey;
    let (kind, key) = match (u.client, u.principal) {
        (Some(c), None) => (AlertKey::Client, c),
        (None, Some(p)) => (AlertKey::Principal, p),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "name one block: ?client=ADDRESS or ?principal=AUTHENTICATOR/ID\n".into(),
            );
        }
    };
    let by = by.map_or_else(|| "loopback".to_string(), |Extension(p)| p.id.clone());
    let snapshot = shared.snapshot.load_full();
    match shared
        .alerter
        .lift(snapshot.sessions.as_deref(), kind, &key)
        .await
    {
        Ok(true) => {
            tracing::info!(by, block = %key, "block lifted through the admin API");
            (
                StatusCode::OK,
                format!("lifted the block of {} {key}\n", kind.as_str()),
            )
        }
        Ok(false) => (StatusCode::NOT_FOUND, "no such block\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// What `/api/sessions` filters by.
#[derive(serde::Deserialize)]
struct SessionFilter {
    user: Option<String>,
    limit: Option<usize>,
}

async fn sessions(State(shared): State<Arc<Shared>>, Query(f): Query<SessionFilter>) -> Response {
    let snapshot = shared.snapshot.load_full();
    let Some(sessions) = &snapshot.sessions else {
        return (StatusCode::NOT_FOUND, "no sessions configured\n").into_response();
    };
    match sessions
        .list(f.user.as_deref(), f.limit.unwrap_or(100).min(1000))
        .await
    {
        Ok(list) => axum::Json(list).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
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
        Ok(done) => {
            tracing::info!(session = ?r.session, user = ?r.user, "sessions revoked through the admin API");
            (StatusCode::OK, format!("{done}\n"))
        }
        Err(drawbridge_session::RevokeError::Usage(m)) => {
            (StatusCode::BAD_REQUEST, format!("{m}\n"))
        }
        Err(drawbridge_session::RevokeError::NotFound) => {
            (StatusCode::NOT_FOUND, "no such session\n".into())
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}
