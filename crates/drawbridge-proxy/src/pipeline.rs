//! The HTTP request pipeline, phase by phase in the order of ARCHITECTURE.md §1:
//! accept and parse happen in [`crate::server`]; here follow sanitize, route, authenticate,
//! authorize ([`crate::authz`]), mutate, forward and record (verify and limit arrive with
//! later releases).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use drawbridge_config::Admission;
use drawbridge_identity::Credentials;
use drawbridge_telemetry::{AccessEvent, AccessLog};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use hyper::body::Incoming;

use crate::body::{Record, RequestBody, ResponseBody};
use crate::forward::{self, Forwarded, Outgoing};
use crate::rescue::{self, ProxyError, Schemes};
use crate::route::Match;
use crate::sanitize::{self, NormalPath};
use crate::snapshot::{ListenerEntry, RouteEntry, Snapshot};

/// What every connection task shares.
pub struct Shared {
    /// The configuration in force.
    pub snapshot: ArcSwap<Snapshot>,
    /// Access log.
    pub log: AccessLog,
    /// Audit trail: one event per authorization decision.
    pub audit: drawbridge_telemetry::AuditLog,
    /// Decisions where the shadow policies disagreed with the enforced ones.
    pub shadow_disagreements: std::sync::atomic::AtomicU64,
    /// Request id source.
    pub ids: RequestIds,
    /// Counts reloads; open tunnels watch it to check their credentials again.
    pub reloads: tokio::sync::watch::Sender<u64>,
}

/// What is known of a connection.
pub struct ConnInfo {
    /// Index of the listener in the snapshot.
    pub listener: usize,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// `peer` as text, made once per connection for the access log.
    pub peer_label: Arc<str>,
    /// The peer's IP as a header value, made once per connection.
    pub peer_ip: HeaderValue,
    /// The client certificate the TLS handshake verified, read once per connection.
    pub client_cert: Option<drawbridge_identity::ClientCert>,
    /// The connection's requests, for its idle deadline.
    pub streams: Arc<crate::io::Streams>,
    /// The server name the TLS handshake asked for.
    pub sni: Option<Box<str>>,
}

/// Request ids: a random per-process prefix and a counter, so ids never repeat.
pub struct RequestIds {
    prefix: u64,
    counter: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    /// A fresh id source.
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        // A failing OS random source leaves a zero prefix: ids stay unique within the process.
        let _ = getrandom::fill(&mut seed);
        Self {
            prefix: u64::from_le_bytes(seed),
            counter: Default::default(),
        }
    }

    /// The next id: 32 hex digits.
    pub fn next(&self) -> String {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = String::with_capacity(32);
        for word in [self.prefix, n] {
            for shift in (0..16).rev() {
                id.push(char::from(HEX[((word >> (shift * 4)) & 0xf) as usize]));
            }
        }
        id
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs one request through the pipeline; never fails: errors become responses (rescue).
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let stream = conn.streams.open();
    let time = SystemTime::now();
    let snapshot = shared.snapshot.load_full();
    let listener = &snapshot.listeners[conn.listener];
    let request_id = shared.ids.next();
    let grpc = rescue::is_grpc(req.headers());
    let mut event = AccessEvent {
        time,
        request_id,
        listener: listener.name.clone(),
        host: None,
        route: None,
        client: conn.peer_label.clone(),
        forwarded_for: None,
        principal: None,
        method: method_name(req.method()),
        path: String::new(),
        protocol: protocol_name(req.version()),
        status: 0,
        grpc_status: None,
        bytes_sent: 0,
        upstream: None,
        duration_ms: 0.0,
        phase: None,
        reason: None,
    };
    let outcome = run(&shared, &snapshot, listener, &conn, req, &mut event, start).await;
    let (res, in_flight) = match outcome {
        Ok(Outcome::Forwarded(Forwarded {
            response,
            in_flight,
            reuse,
            deadline,
        })) => (
            response.map(|b| ResponseBody::upstream(b, reuse, deadline)),
            Some(in_flight),
        ),
        Ok(Outcome::Local(response)) => (response, None),
        Err(err) => {
            event.phase = Some(err.phase());
            event.reason = Some(err.to_string());
            if grpc {
                event.grpc_status = Some(err.grpc_status());
            }
            (rescue::respond(&err, grpc, &event.request_id), None)
        }
    };
    event.status = res.status().as_u16();
    let log = shared.log.clone();
    res.map(|b| {
        b.with_record(Record {
            log,
            event,
            start,
            in_flight,
            stream,
        })
    })
}

async fn run(
    shared: &Arc<Shared>,
    snapshot: &Snapshot,
    listener: &ListenerEntry,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    event: &mut AccessEvent,
    arrived: Instant,
) -> Result<Outcome, ProxyError> {
    // --- 2 parse: the limits hyper does not enforce itself --------------------------------
    let limits = &listener.limits;
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_uri_bytes {
        event.host = asked_host(&req);
        return Err(ProxyError::UriTooLong(limits.max_uri_bytes));
    }

    // --- 3 sanitize ---------------------------------------------------------------------
    let host = match request_host(&req) {
        Ok(h) => h,
        Err(e) => {
            // The record names what the client asked for, even unusable.
            event.host = asked_host(&req);
            return Err(e);
        }
    };
    event.host = Some(host.clone());
    let path = match sanitize::normalize_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => {
            // A refused path is logged as received (bounded), for whoever investigates it.
            let raw = req.uri().path();
            let cut = raw.char_indices().nth(512).map_or(raw.len(), |(i, _)| i);
            event.path = raw[..cut].to_string();
            return Err(e.into());
        }
    };
    event.path.clone_from(&path.decoded);
    check_framing(req.headers())?;
    let original_host = req.headers().get(header::HOST).cloned();
    let mut seen = sanitize::strip_request_headers(
        req.headers_mut(),
        &snapshot.header_rules,
        listener.nonstandard_header_names,
    )?;
    req.headers_mut().remove(header::EXPECT);

    // --- 4 route ------------------------------------------------------------------------
    // On TLS, the virtual host asked for is the one the handshake was made for (or one the
    // same certificate serves): never an mTLS-only host reached over a public one's SNI.
    if let Some(resolver) = &listener.sni
        && !resolver.same_virtual_host(conn.sni.as_deref(), &host)
    {
        return Err(ProxyError::Misdirected);
    }
    // Drawbridge's own paths come first, on every listener; no route can shadow them.
    if drawbridge_config::prefix_matches(drawbridge_config::RESERVED_PREFIX, &path.decoded) {
        return reserved(snapshot, &path.decoded, req.method()).map(Outcome::Local);
    }
    let route = match listener
        .routes
        .lookup(&host, &path.decoded, req.method().as_str())
    {
        Match::Found(r) => r.clone(),
        Match::MethodNotAllowed(allowed) => {
            return Err(ProxyError::MethodNotAllowed(allowed.join(", ")));
        }
        Match::NotFound => return Err(ProxyError::NoRoute),
    };
    event.route = Some(route.name.clone());
    if !seen.held.is_empty() {
        seen.restore(&route.config.pass_headers, req.headers_mut());
    }
    // The rest of sanitize needs the route: what its query may carry.
    let query = screen_query(&route, req.uri().query())?;

    // --- 5 authenticate ---------------------------------------------------------------
    let (pass_credentials, principal) = match &route.config.admission {
        Admission::Public => (true, None),
        Admission::Authenticated {
            pass_credentials, ..
        } => {
            let refused = |e| ProxyError::Unauthenticated(e, Schemes::of(&route.authenticators));
            let creds = Credentials::from_headers(req.headers())
                .map_err(refused)?
                .with_client_cert(conn.client_cert.as_ref());
            let principal = drawbridge_identity::authenticate(&route.authenticators, &creds)
                .await
                .map_err(refused)?;
            event.principal = Some(format!("{}:{}", principal.authenticator, principal.id));
            (*pass_credentials, Some(principal))
        }
    };

    // --- 6 verify (MFA, a later release) --------------------------------------------------

    // --- 7 authorize --------------------------------------------------------------------
    let client = client_ip(snapshot, conn, seen.forwarded_for.as_deref());
    if route.config.authorize {
        // A public route that asks its policies: they decide about the anonymous caller.
        let p = principal
            .as_ref()
            .unwrap_or_else(|| crate::authz::anonymous());
        let ask = crate::authz::Ask {
            request_id: &event.request_id,
            time: event.time,
            method: req.method(),
            websocket: seen.websocket,
            grpc: rescue::is_grpc(req.headers()),
            host: &host,
            path: &path.decoded,
            query: query.as_deref().or(req.uri().query()),
            headers: req.headers(),
            client,
            client_label: &conn.peer_label,
        };
        crate::authz::authorize(snapshot, &route, p, &ask, shared)?;
    }

    // --- 8 limit (a later release) -------------------------------------------------------

    // --- 2 parse, continued: limits that depend on the route, checked once it admitted ---
    let max_body = route.config.max_body_bytes.unwrap_or(limits.max_body_bytes);
    if let Some(len) = declared_length(req.headers())?
        && len > max_body
    {
        return Err(ProxyError::BodyTooLarge(max_body));
    }
    let upgrade = if seen.websocket {
        if req.method() != http::Method::GET || req.version() != http::Version::HTTP_11 {
            return Err(ProxyError::BadRequest(
                "websocket upgrade must be an HTTP/1.1 GET",
            ));
        }
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };

    // A tunnel or a stream lives no longer than the credential that admitted it.
    let deadline = crate::tunnel::Deadline::of(&route, principal.as_deref(), arrived, event.time);
    let lease = upgrade.as_ref().map(|_| {
        crate::tunnel::Lease::new(
            deadline,
            crate::tunnel::Admitted {
                shared: shared.clone(),
                snapshot,
                route: &route,
                principal: principal.as_ref(),
                request_id: &event.request_id,
                host: &host,
                path: &path.decoded,
                query: query.as_deref().or(req.uri().query()),
                headers: req.headers(),
                client,
                conn,
            },
        )
    });

    // --- 9 mutate -----------------------------------------------------------------------
    let trusted = is_trusted(&snapshot.server.trusted_proxies, conn.peer.ip());
    let forwarded_for = match (&seen.forwarded_for, trusted) {
        (Some(chain), true) => {
            event.forwarded_for = Some(chain.clone());
            HeaderValue::from_str(&format!("{chain}, {}", conn.peer.ip()))
                .map_err(|_| ProxyError::BadRequest("invalid X-Forwarded-For"))?
        }
        _ => conn.peer_ip.clone(),
    };
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    if !pass_credentials {
        // The upstream gets Drawbridge's word for who is calling, never the credential.
        headers.remove(header::AUTHORIZATION);
        for a in &route.authenticators {
            if let Some(h) = a.credential_header() {
                headers.remove(h);
            }
        }
    }
    // Only Drawbridge speaks in the identity header (the `x-drawbridge-` ones went in
    // sanitize; a configured name may be outside that namespace).
    headers.remove(&snapshot.identity_header);
    if let Some(p) = &principal {
        set_identity(snapshot, &route, p, &event.request_id, &mut headers)?;
    }
    // The authority the route was chosen by is the one the upstream is told: an absolute-form
    // target or `:authority` wins over a `Host` header that says otherwise.
    let host = match parts.uri.authority() {
        Some(a) => {
            let v = HeaderValue::from_str(a.as_str())
                .map_err(|_| ProxyError::BadRequest("invalid authority"))?;
            if headers.contains_key(header::HOST) {
                headers.insert(header::HOST, v.clone());
            }
            Some(v)
        }
        None => original_host,
    };
    set_forwarding(
        &mut headers,
        forwarded_for,
        conn.tls,
        host.as_ref(),
        &event.request_id,
    );
    if let (Some(cert), true) = (
        conn.client_cert.as_ref(),
        route.config.forward_client_cert != drawbridge_config::ForwardClientCert::Off,
    ) {
        let with_subject =
            route.config.forward_client_cert == drawbridge_config::ForwardClientCert::WithSubject;
        if let Ok(v) = HeaderValue::from_str(&xfcc(cert, with_subject)) {
            headers.insert(X_FORWARDED_CLIENT_CERT, v);
        }
    }
    if seen.te_trailers {
        // gRPC over HTTP/2 needs it; it is the one `TE` value HTTP/2 allows.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let path_and_query = http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(
        upstream_target(&route, &path, query.as_deref().or(parts.uri.query())),
    ))
    .map_err(|_| ProxyError::BadRequest("unrepresentable request target"))?;

    // --- 10 forward ---------------------------------------------------------------------
    let body = if upgrade.is_some() {
        RequestBody::empty()
    } else if let Some(screen) = parameter_screen(&route).filter(|_| is_form(&headers)) {
        screened_form(
            body,
            &screen,
            max_body,
            limits.body_idle_timeout,
            &mut headers,
        )
        .await?
    } else {
        RequestBody::limited(
            body,
            max_body,
            route.trailers.clone(),
            limits.body_idle_timeout,
        )
    };
    let out = Outgoing {
        method: parts.method,
        path_and_query,
        host,
        headers,
        body,
        upgrade,
        lease,
    };
    let mut forwarded = forward::forward(&route.upstream, out).await?;
    forwarded.deadline = Some(deadline);
    event.upstream = Some(forwarded.in_flight.endpoint().label.clone());
    Ok(Outcome::Forwarded(forwarded))
}

/// Screens the query for what the route does not let through: credentials on authenticated
/// routes, method overrides where the method matters. `Some` is the query to use instead
/// (stripped); `None` keeps the client's.
fn screen_query(route: &RouteEntry, query: Option<&str>) -> Result<Option<String>, ProxyError> {
    match (query, parameter_screen(route)) {
        (Some(query), Some(screen)) => Ok(sanitize::screen_query(query, &screen)?),
        _ => Ok(None),
    }
}

/// What a route screens request parameters (query, form fields) for; `None` when nothing.
fn parameter_screen(route: &RouteEntry) -> Option<sanitize::QueryScreen<'_>> {
    let authenticated = matches!(route.config.admission, Admission::Authenticated { .. });
    let screen = sanitize::QueryScreen {
        credentials: authenticated.then_some(route.config.query_credentials),
        extra_credentials: &route.credential_params,
        method_override: (authenticated || route.config.methods.is_some())
            .then_some(route.config.method_override),
    };
    (screen.credentials.is_some() || screen.method_override.is_some()).then_some(screen)
}

/// Largest form body read whole to screen its fields.
const MAX_SCREENED_FORM: u64 = 1 << 20;

/// A URL-encoded form body on a route that screens parameters: frameworks read `_method`
/// and `access_token` in form fields as in the query (Rails, Laravel, RFC 6750 §2.2), so the
/// body is read whole (bounded), screened the same way, and forwarded as read or stripped.
async fn screened_form(
    body: Incoming,
    screen: &sanitize::QueryScreen<'_>,
    limit: u64,
    idle: std::time::Duration,
    headers: &mut HeaderMap,
) -> Result<RequestBody, ProxyError> {
    use http_body_util::BodyExt;
    let limit = limit.min(MAX_SCREENED_FORM);
    let read = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let collected = tokio::time::timeout(idle, read.collect())
        .await
        .map_err(|_| ProxyError::BodyTimeout(idle))?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ProxyError::BodyTooLarge(limit)
            } else {
                ProxyError::BadRequest("request body could not be read")
            }
        })?;
    let bytes = collected.to_bytes();
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ProxyError::BadRequest("form body is not UTF-8"))?;
    match sanitize::screen_query(text, screen)? {
        None => Ok(RequestBody::full(bytes)),
        Some(kept) => {
            headers.remove(header::TRANSFER_ENCODING);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(kept.len()));
            Ok(RequestBody::full(bytes::Bytes::from(kept)))
        }
    }
}

/// Whether the body is a URL-encoded form (`application/x-www-form-urlencoded`, any case,
/// with or without parameters).
fn is_form(headers: &HeaderMap) -> bool {
    sanitize::media_type(headers)
        .is_some_and(|m| m.eq_ignore_ascii_case(b"application/x-www-form-urlencoded"))
}

/// How a request that passed the pipeline ends.
enum Outcome {
    /// An upstream answered.
    Forwarded(Forwarded),
    /// Drawbridge answered itself (its own paths).
    Local(Response<ResponseBody>),
}

/// Answers `/.drawbridge/...`: the identity assertion's public keys; nothing else yet.
fn reserved(
    snapshot: &Snapshot,
    path: &str,
    method: &http::Method,
) -> Result<Response<ResponseBody>, ProxyError> {
    if path != "/.drawbridge/jwks.json" {
        return Err(ProxyError::NoRoute);
    }
    if method != http::Method::GET && method != http::Method::HEAD {
        return Err(ProxyError::MethodNotAllowed("GET, HEAD".into()));
    }
    let mut res = Response::new(ResponseBody::full(snapshot.minter.jwks().clone()));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(res)
}

const X_DRAWBRIDGE_USER: HeaderName = HeaderName::from_static("x-drawbridge-user");
const X_DRAWBRIDGE_GROUPS: HeaderName = HeaderName::from_static("x-drawbridge-groups");

/// Adds the signed identity assertion and, where the route asks, the plain identity headers.
fn set_identity(
    snapshot: &Snapshot,
    route: &RouteEntry,
    p: &drawbridge_identity::Principal,
    request_id: &str,
    headers: &mut HeaderMap,
) -> Result<(), ProxyError> {
    let assertion = snapshot
        .minter
        .assertion(p, &route.upstream.name, request_id)
        .map_err(ProxyError::Internal)?;
    let assertion = if snapshot.identity_header == header::AUTHORIZATION {
        let mut v = Vec::with_capacity(assertion.len() + 7);
        v.extend_from_slice(b"Bearer ");
        v.extend_from_slice(assertion.as_bytes());
        HeaderValue::from_bytes(&v).map_err(|e| ProxyError::Internal(e.to_string()))?
    } else {
        assertion
    };
    headers.insert(snapshot.identity_header.clone(), assertion);
    if route.config.identity_headers {
        // Values that cannot travel as a header are left out rather than mangled.
        if let Ok(v) = HeaderValue::from_str(&p.id) {
            headers.insert(X_DRAWBRIDGE_USER, v);
        }
        let groups: Vec<&str> = p
            .groups
            .iter()
            .map(String::as_str)
            .filter(|g| !g.contains(',') && !g.is_empty())
            .collect();
        if let Ok(v) = HeaderValue::from_str(&groups.join(",")) {
            headers.insert(X_DRAWBRIDGE_GROUPS, v);
        }
    }
    Ok(())
}

/// Refuses framing that two parsers could read differently.
fn check_framing(h: &HeaderMap) -> Result<(), ProxyError> {
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::Framing(
            "both Transfer-Encoding and Content-Length",
        ));
    }
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(ProxyError::Framing("more than one Content-Length"));
    }
    Ok(())
}

fn declared_length(h: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    match h.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or(ProxyError::Framing("invalid Content-Length")),
    }
}

/// The host the client asked for, for the access log, whatever later checks make of it:
/// the target's authority or the first `Host`, without port, lower-case, bounded and made
/// printable.
fn asked_host(req: &Request<Incoming>) -> Option<String> {
    let raw: &[u8] = match (req.uri().authority(), req.headers().get(header::HOST)) {
        (Some(a), _) => a.host().as_bytes(),
        (None, Some(h)) => h.as_bytes(),
        (None, None) => return None,
    };
    let raw = &raw[..raw.len().min(256)];
    let host = match raw.iter().rposition(|&b| b == b':') {
        Some(i) if !raw.starts_with(b"[") || raw[..i].ends_with(b"]") => &raw[..i],
        _ => raw,
    };
    Some(
        host.iter()
            .map(|&b| match b {
                0x21..=0x7e => char::from(b.to_ascii_lowercase()),
                _ => '?',
            })
            .collect(),
    )
}

/// The request's host, lower-case, without port or trailing dot.
fn request_host(req: &Request<Incoming>) -> Result<String, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header_host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let raw = match (req.uri().authority(), header_host) {
        // User info in an absolute-form target is never forwarded, nor quietly dropped.
        (Some(a), _) if a.as_str().contains('@') => {
            return Err(ProxyError::BadRequest("user info in the request target"));
        }
        (Some(a), _) => a.host().to_string(),
        (None, Some(h)) => {
            let s = h
                .to_str()
                .map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
            let a: http::uri::Authority = s
                .parse()
                .map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
            if s.contains('@') {
                return Err(ProxyError::BadRequest("invalid Host header"));
            }
            a.host().to_string()
        }
        (None, None) if req.version() == http::Version::HTTP_11 => {
            return Err(ProxyError::BadRequest("missing Host header"));
        }
        (None, None) => String::new(),
    };
    let mut host = raw.to_ascii_lowercase();
    if host.ends_with('.') {
        host.pop();
    }
    Ok(host)
}

const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The client certificate in Envoy's `X-Forwarded-Client-Cert` format: `Hash` (SHA-256 of
/// the DER, hex), `Subject` when asked for, each `URI` and `DNS` SAN; values holding `,`,
/// `;`, `=` or `"` are quoted.
fn xfcc(cert: &drawbridge_identity::ClientCert, with_subject: bool) -> String {
    use std::fmt::Write as _;
    fn value(out: &mut String, v: &str) {
        if v.contains([',', ';', '=', '"']) {
            out.push('"');
            for c in v.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        } else {
            out.push_str(v);
        }
    }
    let mut out = String::from("Hash=");
    for b in cert.fingerprint {
        let _ = write!(out, "{b:02x}");
    }
    if with_subject {
        out.push_str(";Subject=");
        value(&mut out, &cert.subject);
    }
    for u in &cert.uris {
        out.push_str(";URI=");
        value(&mut out, u);
    }
    for d in &cert.dns {
        out.push_str(";DNS=");
        value(&mut out, d);
    }
    out
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn set_forwarding(
    h: &mut HeaderMap,
    forwarded_for: HeaderValue,
    tls: bool,
    host: Option<&HeaderValue>,
    request_id: &str,
) {
    h.insert(X_FORWARDED_FOR, forwarded_for);
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST, host.clone());
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(X_REQUEST_ID, v);
    }
}

fn upstream_target(route: &RouteEntry, path: &NormalPath, query: Option<&str>) -> String {
    let mut target = match (&route.config.path, route.config.strip_prefix) {
        (drawbridge_config::PathMatch::Prefix(prefix), true) if prefix != "/" => {
            // The encoded prefix is the decoded one re-encoded; strip by segment count.
            let depth = prefix.matches('/').count();
            let rest: String = path.encoded.split_inclusive('/').skip(depth + 1).collect();
            if rest.is_empty() {
                "/".to_string()
            } else {
                format!("/{rest}")
            }
        }
        _ => path.encoded.clone(),
    };
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    target
}

/// The client's address for policies: the peer, or the nearest address a trusted proxy
/// put in `X-Forwarded-For`.
fn client_ip(snapshot: &Snapshot, conn: &ConnInfo, forwarded_for: Option<&str>) -> IpAddr {
    let peer = conn.peer.ip();
    if !is_trusted(&snapshot.server.trusted_proxies, peer) {
        return peer;
    }
    forwarded_for
        .and_then(|chain| chain.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

fn is_trusted(nets: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

fn protocol_name(v: http::Version) -> &'static str {
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
fn method_name(m: &http::Method) -> std::borrow::Cow<'static, str> {
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
        _ => return std::borrow::Cow::Owned(m.as_str().to_string()),
    };
    std::borrow::Cow::Borrowed(known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits_and_unique() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(a[..16], b[..16], "one process prefix");
        assert_eq!(&a[16..], "0000000000000000");
        assert_eq!(&b[16..], "0000000000000001");
    }
}
