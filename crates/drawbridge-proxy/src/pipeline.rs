//! The HTTP request pipeline: the phases of ARCHITECTURE.md §1 in order, each a module of
//! its own over one request context ([`Ctx`]). Accept and parse happen in
//! [`crate::accept`]; [`handle`] runs the rest and hands every refusal to the one rescue.
//!
//! ```text
//! parse::request      the limits hyper leaves to us, the host
//! sanitize::request   hostile headers out, gRPC classified, the one path, the client
//! admission::route    host + path + method -> the route (its reserved paths first)
//! sanitize::for_route what the route lets through of the query and held headers
//! parse::for_route    the route's body limit, the upgrade's shape
//! admission::admit    authenticate (a session, or credentials), authorize
//! signin::to_sign_in  a browser without a session is sent to sign in
//! mfa::for_browser    a browser that must prove a second factor is shown how
//! record::decision    the audit event of whatever the policies decided
//! mutate::request     credentials out, identity and forwarding in, the upstream target
//! forward::forward    the upstream exchange (form bodies screened on the way)
//! record              the access-log line, written when the response ends (body.rs)
//! ```

use std::future::Future;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;

use drawbridge_config::AlertKey;
use drawbridge_telemetry::metrics::Timed;

use crate::admission::{Admitted, Ask, Kind, Proof, Refused};
use crate::body::{Record, RequestBody, ResponseBody};
use crate::context::{ConnInfo, Ctx, Shared};
use crate::forward::{self, Forwarded, Outgoing};
use crate::rescue::{self, ProxyError};
use crate::snapshot::{ListenerEntry, Snapshot};

/// Runs one request through the pipeline; never fails: errors become responses (rescue).
/// `stream` counts the request open on its connection: taken when the server handed the
/// request over, before this future is first polled, so that a connection is never taken
/// for idle while a request it read waits to be served.
///
/// What needs no waiting (the snapshot, the request's context) is done when the server
/// hands the request over; the future keeps the request's head, its context and the phase
/// in progress, each once (a future is copied whole wherever it moves, and written afresh
/// for every request).
pub fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    stream: crate::io::StreamGuard,
    req: Request<Incoming>,
) -> impl Future<Output = Response<ResponseBody>> + Send + 'static {
    let snapshot = shared.snapshot.load_full();
    let (mut parts, body) = req.into_parts();
    let mut ctx = Ctx::new(
        &conn,
        snapshot.listeners[conn.listener].name.clone(),
        shared.ids.next(),
        &parts.method,
        parts.version,
    );
    if let Some(tracing) = &snapshot.tracing {
        let trace = tracing.begin(conn.peer.ip(), &parts.headers);
        ctx.event.trace_id = Some(trace.trace_id());
        ctx.trace = Some(Box::new(trace));
    }
    async move {
        let listener = &snapshot.listeners[conn.listener];
        let outcome = run(
            &shared, &snapshot, listener, &conn, &mut parts, body, &mut ctx,
        )
        .await;
        respond(shared, &snapshot, listener, conn, stream, ctx, outcome)
    }
}

/// The response to a request the pipeline ran, its access-log record attached (or handed
/// to the tunnel it opened).
fn respond(
    shared: Arc<Shared>,
    snapshot: &Snapshot,
    listener: &ListenerEntry,
    conn: Arc<ConnInfo>,
    stream: crate::io::StreamGuard,
    mut ctx: Ctx,
    outcome: Result<Outcome, ProxyError>,
) -> Response<ResponseBody> {
    let (res, in_flight, tunnel) = match outcome {
        Ok(Outcome::Forwarded(Forwarded {
            response,
            in_flight,
            reuse,
            deadline,
            tunnel,
            ..
        })) => (
            response.map(|b| ResponseBody::upstream(b, reuse, deadline)),
            in_flight,
            tunnel,
        ),
        Ok(Outcome::Local(response)) => (response, None, None),
        Err(err) => (refusal(&mut ctx, &err), None, None),
    };
    let mut res = res;
    if let Some(hsts) = &listener.hsts {
        res.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    let Ctx {
        mut event,
        arrived,
        metrics,
        trace,
        host,
        path,
        host_read,
        path_read,
        ..
    } = ctx;
    if host_read {
        event.host = Some(host);
    }
    if path_read {
        event.path = path.decoded;
    }
    event.status = res.status().as_u16();
    let record = Record {
        log: shared.log.clone(),
        event,
        start: arrived,
        in_flight,
        stream,
        metrics: metrics.unwrap_or_else(|| snapshot.unrouted.clone()),
        trace,
    };
    match tunnel {
        // A tunnel's line is written when it ends, with the bytes of both directions.
        Some(tunnel) => {
            let _ = tunnel.send(crate::websocket::Kept { record, conn });
            res
        }
        None => {
            res.body_mut().attach(record);
            res
        }
    }
}

/// The answer to a request the pipeline refused, the reason noted on its access event.
/// Out of line and marked cold (as are the other rare turns of the request path below), so
/// that the instructions every request runs sit together in the instruction cache.
#[cold]
#[inline(never)]
fn refusal(ctx: &mut Ctx, err: &ProxyError) -> Response<ResponseBody> {
    ctx.event.phase = Some(err.phase());
    ctx.event.reason = Some(err.to_string());
    if ctx.grpc {
        ctx.event.grpc_status = Some(err.grpc_status());
    }
    rescue::respond(err, ctx.grpc, ctx.request_id())
}

/// Phases 2 to 11 on a request. What admission and mutate needed is let go of before the
/// upstream is asked: while it answers, the request's state is the forward step's and the
/// route's.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a copy of each argument beside the one it uses"
)]
fn run<'a>(
    shared: &'a Arc<Shared>,
    snapshot: &'a Snapshot,
    listener: &'a ListenerEntry,
    conn: &'a ConnInfo,
    req: &'a mut Parts,
    body: Incoming,
    ctx: &'a mut Ctx,
) -> impl Future<Output = Result<Outcome, ProxyError>> + Send + 'a {
    async move {
        if let Some(port) = listener.redirect_to_https {
            crate::parse::request(ctx, listener, req)?;
            return redirect_to_https(&ctx.host, port, &req.uri).map(Outcome::Local);
        }
        let (out, route, deadline) = {
            let (admitted, max_body) =
                match admit_and_audit(shared, snapshot, listener, conn, req, ctx).await {
                    Admission::Route { admitted, max_body } => (admitted, max_body),
                    Admission::Own => {
                        return own_pages(shared, snapshot, listener, ctx, req, body)
                            .await
                            .map(Outcome::Local);
                    }
                    Admission::Refused(error) => return Err(error),
                    Admission::Answered(answer) => return answer.map(Outcome::Local),
                };
            let route = &admitted.route;

            // A tunnel or a stream lives no longer than the credential that admitted it.
            let deadline = crate::deadline::Deadline::of(
                route,
                admitted.principal.as_deref(),
                ctx.arrived,
                ctx.time(),
            );
            let upgrade = ctx
                .headers
                .websocket
                .then(|| req.extensions.remove::<hyper::upgrade::OnUpgrade>())
                .flatten();
            let lease = upgrade.as_ref().map(|_| {
                Box::new(crate::tunnel::Lease::new(
                    deadline,
                    crate::tunnel::Admitted {
                        shared: shared.clone(),
                        snapshot,
                        admitted: &admitted,
                        ctx,
                        query: ctx.query(req.uri.query()),
                        headers: &req.headers,
                        conn,
                    },
                ))
            });

            // 9 mutate
            let headers = std::mem::take(&mut req.headers);
            let mut up = crate::mutate::request(ctx, snapshot, conn, &admitted, headers, &req.uri)?;
            if let (Some(t), Some(tracing)) = (&ctx.trace, &snapshot.tracing) {
                t.inject(tracing, &mut up.headers);
            }

            // 10 forward: the body, screened when the route asks for it
            let idle = listener.limits.body_idle_timeout;
            let body = if upgrade.is_some() {
                RequestBody::empty()
            } else {
                match crate::sanitize::form(route, body, max_body, idle, &mut up.headers).await? {
                    Ok(screened) => screened,
                    Err(body) => RequestBody::limited(body, max_body, route.trailers.clone(), idle),
                }
            };
            let out = Outgoing {
                method: std::mem::take(&mut req.method),
                path_and_query: up.path_and_query,
                host: up.host,
                headers: up.headers,
                body,
                upgrade,
                lease,
            };
            (out, admitted.route, deadline)
        };
        let sent = std::time::Instant::now();
        let forwarded = forward::forward(&route.upstream, out, sent).await;
        route.metrics.phase(Timed::Upstream, sent.elapsed());
        if let Some(t) = &mut ctx.trace {
            t.event("upstream.response");
        }
        let mut forwarded = forwarded?;
        if !route.response_edits.is_empty() {
            route.response_edits.apply(forwarded.response.headers_mut());
        }
        forwarded.deadline = Some(deadline);
        ctx.event.upstream = Some(forwarded.endpoint.clone());
        Ok(Outcome::Forwarded(forwarded))
    }
}

/// Drawbridge's own pages (kilobytes of state) in a box: every request's future would carry
/// them otherwise.
#[cold]
#[inline(never)]
fn own_pages<'a>(
    shared: &'a Arc<Shared>,
    snapshot: &'a Snapshot,
    listener: &'a ListenerEntry,
    ctx: &'a Ctx,
    req: &'a Parts,
    body: Incoming,
) -> std::pin::Pin<Box<impl Future<Output = Answer> + Send + 'a>> {
    Box::pin(async move {
        crate::signin::own(snapshot, listener, ctx, req, body, &shared.decisions()).await
    })
}

/// How a request's admission ended, for [`run`].
enum Admission {
    /// A route admitted it.
    Route { admitted: Admitted, max_body: u64 },
    /// Drawbridge's own paths.
    Own,
    /// Refused.
    Refused(ProxyError),
    /// Refused, and a browser shown how to prove its second factor.
    Answered(Result<Response<ResponseBody>, ProxyError>),
}

/// Phases 2 to 8 and 11, for the policies' part: every decision, allowing or not, is
/// audited (and, for a trail that must be written, written before anything is admitted).
async fn admit_and_audit(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    listener: &ListenerEntry,
    conn: &ConnInfo,
    req: &mut Parts,
    ctx: &mut Ctx,
) -> Admission {
    let proof = Proof::Presented {
        client_cert: conn.client_cert.as_deref(),
    };
    let entry = admit(
        ctx,
        snapshot,
        listener,
        conn.sni.as_deref(),
        req,
        proof,
        Some(&shared.alerter),
    )
    .await;
    observe(&shared.alerter, snapshot, ctx, &entry);
    if let Some(t) = &mut ctx.trace {
        t.event(if entry.is_ok() { "admitted" } else { "refused" });
    }
    // 11 record, for the policies' part: every decision, allowing or not, is audited.
    let decided = match &entry {
        Ok(Entry::Route { admitted, .. }) => Some(&admitted.route).zip(admitted.decided.as_ref()),
        Err(refused) => refused.route.as_ref().zip(refused.decided.as_ref()),
        Ok(Entry::Own) => None,
    };
    if let Some((route, d)) = decided {
        let written =
            crate::record::decision(&shared.decisions(), snapshot, route, d, &about(ctx, conn));
        // A trail that must be written: nothing is admitted before its decision is.
        if snapshot.audit.required && entry.is_ok() && !written.confirmed(AUDIT_WAIT).await {
            return Admission::Refused(ProxyError::AuditUnavailable);
        }
    }
    match entry {
        Ok(Entry::Own) => Admission::Own,
        Ok(Entry::Route { admitted, max_body }) => Admission::Route { admitted, max_body },
        Err(refused) => {
            // A person's browser is shown how to prove the factor, not a bare challenge.
            if let ProxyError::StepUp(challenge) = &refused.error
                && let Some(answer) = factor_pages(snapshot, listener, ctx, req, challenge).await
            {
                return Admission::Answered(answer);
            }
            Admission::Refused(refused.error)
        }
    }
}

/// The pages that show a browser how to prove a second factor, in a box (as
/// [`own_pages`]).
#[cold]
#[inline(never)]
fn factor_pages<'a>(
    snapshot: &'a Snapshot,
    listener: &'a ListenerEntry,
    ctx: &'a Ctx,
    req: &'a Parts,
    challenge: &'a crate::rescue::Challenge,
) -> std::pin::Pin<Box<impl Future<Output = Option<Answer>> + Send + 'a>> {
    Box::pin(crate::mfa::for_browser(
        snapshot, listener, ctx, req, challenge,
    ))
}

/// A response Drawbridge made itself, or the refusal to send.
type Answer = Result<Response<ResponseBody>, ProxyError>;

/// How long an admitted request waits for its decision to be written to a `required`
/// audit trail before it is refused.
const AUDIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a request's head leads, once parsed, sanitized and admitted.
pub enum Entry {
    /// Drawbridge's own paths (`/.drawbridge/`), answered by Drawbridge on every listener.
    Own,
    /// A route admitted it.
    Route {
        /// What admission decided.
        admitted: Admitted,
        /// The largest body the route takes.
        max_body: u64,
    },
}

/// Phases 2 to 8 on an HTTP request's head: everything `serve` decides before it mutates and
/// forwards, and all that `drawbridge test` decides. `req` is left sanitized. With
/// `blocks`, a blocked client is refused before anything else is asked of the request, and
/// a blocked principal as soon as it is known.
pub async fn admit(
    ctx: &mut Ctx,
    snapshot: &Snapshot,
    listener: &ListenerEntry,
    sni: Option<&str>,
    req: &mut Parts,
    proof: Proof<'_>,
    blocks: Option<&crate::alerts::Alerter>,
) -> Result<Entry, Refused> {
    // 2 parse, 3 sanitize
    crate::parse::request(ctx, listener, req)?;
    crate::sanitize::request(ctx, snapshot, listener, req)?;
    if let Some(b) = blocks
        && b.any_blocks()
        && client_blocked(b, snapshot, ctx)
    {
        return Err(ProxyError::Blocked("client address").into());
    }
    // Drawbridge's own paths come first; no route can shadow them.
    if drawbridge_config::prefix_matches(drawbridge_config::RESERVED_PREFIX, &ctx.path.decoded) {
        return Ok(Entry::Own);
    }
    // 4 route, and what the route decides of the request's parameters and shape
    let route = crate::admission::route(
        listener,
        sni,
        &ctx.host,
        &ctx.path.decoded,
        req.method.as_str(),
    )?;
    ctx.event.route = Some(route.name.clone());
    ctx.metrics = Some(route.metrics.clone());
    crate::sanitize::for_route(ctx, &route, req)?;
    let max_body = crate::parse::for_route(ctx, listener, &route, req)?;
    // 5 authenticate ... 8 limit
    let kind = if ctx.headers.websocket {
        Kind::WebSocket
    } else if ctx.grpc {
        Kind::Grpc
    } else {
        Kind::Http
    };
    let ask = Ask {
        host: &ctx.host,
        path: &ctx.path.decoded,
        method: req.method.as_str(),
        kind,
        query: ctx.query(req.uri.query()),
        headers: &req.headers,
        client: ctx.client,
        time: ctx.time(),
    };
    let mut admitted = crate::admission::admit(snapshot, route, proof, &ask).await;
    // A browser without a session on a route people sign in to is sent to sign in.
    if let Err(r) = &mut admitted
        && matches!(r.error, ProxyError::Unauthenticated(..))
        && r.route.as_ref().is_some_and(|r| r.signs_in())
        && snapshot.sessions.is_some()
        && drawbridge_session::is_navigation(&req.method, &req.headers)
    {
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        r.error = crate::session::to_sign_in(target);
    }
    let principal = match &admitted {
        Ok(a) => a.principal.as_deref(),
        Err(r) => r.decided.as_ref().map(|d| &*d.principal),
    };
    if let (Some(b), Ok(a)) = (blocks, &admitted)
        && b.any_blocks()
        && let Some(p) = &a.principal
        && let Some(refused) = principal_blocked(b, snapshot, ctx, a, p)
    {
        return Err(refused);
    }
    ctx.event.principal = principal
        .filter(|p| p.kind != drawbridge_config::PrincipalKind::Anonymous)
        .map(principal_label);
    admitted.map(|admitted| Entry::Route { admitted, max_body })
}

/// Whether the detectors block the request's client (counted when they do).
#[cold]
#[inline(never)]
fn client_blocked(b: &crate::alerts::Alerter, snapshot: &Snapshot, ctx: &Ctx) -> bool {
    let blocked = b.blocked(AlertKey::Client, &ctx.client.to_string());
    if blocked {
        snapshot.metrics.blocked("client");
    }
    blocked
}

/// The refusal of a principal the detectors block (counted and logged), if they do.
#[cold]
#[inline(never)]
fn principal_blocked(
    b: &crate::alerts::Alerter,
    snapshot: &Snapshot,
    ctx: &mut Ctx,
    a: &Admitted,
    p: &drawbridge_identity::Principal,
) -> Option<Refused> {
    if !b.blocked(
        AlertKey::Principal,
        &format!("{}/{}", p.authenticator, p.id),
    ) {
        return None;
    }
    snapshot.metrics.blocked("principal");
    ctx.event.principal = Some(principal_label(p));
    Some(Refused {
        error: ProxyError::Blocked("principal"),
        route: Some(a.route.clone()),
        decided: None,
    })
}

/// `authenticator:id`, as the access log names a principal (built without the formatting
/// machinery: it runs on every authenticated request).
fn principal_label(p: &drawbridge_identity::Principal) -> String {
    let mut label = String::with_capacity(p.authenticator.len() + 1 + p.id.len());
    label.push_str(&p.authenticator);
    label.push(':');
    label.push_str(&p.id);
    label
}

fn about<'a>(ctx: &'a Ctx, conn: &'a ConnInfo) -> crate::record::About<'a> {
    crate::record::About {
        request_id: ctx.request_id(),
        time: ctx.time(),
        path: &ctx.path.decoded,
        client: &conn.peer_label,
        ip: ctx.client,
        trace_id: ctx.event.trace_id.as_deref(),
    }
}

/// Hands what the request path learnt of a request's admission to the detectors: a
/// refused credential, a refusal, a principal's address.
fn observe(
    alerter: &crate::alerts::Alerter,
    snapshot: &Snapshot,
    ctx: &Ctx,
    entry: &Result<Entry, Refused>,
) {
    if snapshot.alerts.detectors.is_empty() {
        return;
    }
    let principal = || {
        ctx.event
            .principal
            .as_deref()
            .map(|p| p.replacen(':', "/", 1))
    };
    let seen = |signal| crate::alerts::Observed {
        signal,
        client: ctx.client,
        principal: principal(),
        route: ctx.event.route.clone(),
    };
    match entry {
        Err(r) => {
            if let ProxyError::Unauthenticated(..) = r.error {
                alerter.observe(
                    snapshot,
                    || seen(drawbridge_config::Signal::FailedAuthentication),
                    drawbridge_config::Signal::FailedAuthentication,
                );
            }
            if matches!(
                r.error,
                ProxyError::Unauthenticated(..) | ProxyError::Forbidden(_)
            ) {
                alerter.observe(
                    snapshot,
                    || seen(drawbridge_config::Signal::Denial),
                    drawbridge_config::Signal::Denial,
                );
            }
        }
        Ok(Entry::Route { admitted, .. }) if admitted.principal.is_some() => {
            alerter.observe(
                snapshot,
                || seen(drawbridge_config::Signal::PrincipalAddresses),
                drawbridge_config::Signal::PrincipalAddresses,
            );
        }
        Ok(_) => {}
    }
}

/// How a request that passed the pipeline ends.
enum Outcome {
    /// An upstream answered.
    Forwarded(Forwarded),
    /// Drawbridge answered itself (its own paths).
    Local(Response<ResponseBody>),
}

/// `308 Permanent Redirect` to the same host, path and query over HTTPS on `port`.
#[cold]
#[inline(never)]
fn redirect_to_https(
    host: &str,
    port: u16,
    uri: &http::Uri,
) -> Result<Response<ResponseBody>, ProxyError> {
    if host.is_empty() {
        return Err(ProxyError::BadRequest("missing Host header"));
    }
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    };
    let location =
        HeaderValue::from_str(&location).map_err(|_| ProxyError::BadRequest("invalid target"))?;
    let mut res = Response::new(ResponseBody::empty());
    *res.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    res.headers_mut().insert(header::LOCATION, location);
    Ok(res)
}
