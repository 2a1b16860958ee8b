//! Phase 9, mutate: what the upstream is told. The client's credentials are removed unless
//! the route passes them; Drawbridge's signed identity assertion (and, where asked, plain
//! identity headers and the client certificate) and the forwarding headers are set; the
//! request target becomes the normalised path the route and policies saw.

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use drawbridge_config::{Admission, ForwardClientCert};
use drawbridge_identity::Principal;

use crate::admission::Admitted;
use crate::context::{ConnInfo, Ctx};
use crate::rescue::ProxyError;
use crate::sanitize::NormalPath;
use crate::snapshot::{RouteEntry, Snapshot};

/// The request head as the upstream receives it.
pub struct Upstream {
    /// The headers.
    pub headers: HeaderMap,
    /// The target: the normalised path (less a stripped prefix) and the query.
    pub path_and_query: PathAndQuery,
    /// The authority the route was chosen by.
    pub host: Option<HeaderValue>,
}

/// Rewrites the admitted request's head for the upstream.
pub fn request(
    ctx: &mut Ctx,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    admitted: &Admitted,
    mut headers: HeaderMap,
    uri: &http::Uri,
) -> Result<Upstream, ProxyError> {
    let route = &admitted.route;
    let trusted = crate::sanitize::is_trusted(&snapshot.server.trusted_proxies, conn.peer.ip());
    let forwarded_for = match (&ctx.headers.forwarded_for, trusted) {
        (Some(chain), true) => {
            ctx.event.forwarded_for = Some(chain.clone());
            extended_chain(chain, conn)?
        }
        _ => conn.peer_ip.clone(),
    };
    if let Admission::Authenticated {
        pass_credentials: false,
        ..
    } = route.config.admission
    {
        // The upstream gets Drawbridge's word for who is calling, never the credential.
        headers.remove(header::AUTHORIZATION);
        for a in &route.authenticators {
            if let Some(h) = a.credential_header() {
                headers.remove(h);
            }
        }
    }
    // Drawbridge's own cookies (sessions, sign-in) never reach an upstream, on any route
    // (cookies come only from the client: none sent, none to look for).
    if ctx.headers.cookie {
        drawbridge_session::cookies::strip_own(&mut headers);
    }
    // The route's own edits, before Drawbridge's headers, which no edit can touch.
    if !route.request_edits.is_empty() {
        route.request_edits.apply(&mut headers);
    }
    // Only Drawbridge speaks in the identity header. Sanitize removed it when the header
    // rules always strip its name (the `x-drawbridge-` ones); a configured name outside
    // them, or one the route's edits may have set, goes here.
    if !snapshot.identity_header_stripped || !route.request_edits.is_empty() {
        headers.remove(&snapshot.identity_header);
    }
    if let Some(p) = &admitted.principal {
        set_identity(snapshot, route, p, ctx.request_id(), &mut headers)?;
    }
    // The authority the route was chosen by is the one the upstream is told: an absolute-form
    // target or `:authority` wins over a `Host` header that says otherwise.
    let host = match uri.authority() {
        Some(a) => {
            let v = HeaderValue::from_str(a.as_str())
                .map_err(|_| ProxyError::BadRequest("invalid authority"))?;
            if headers.contains_key(header::HOST) {
                headers.insert(header::HOST, v.clone());
            }
            Some(v)
        }
        None => ctx.original_host.take(),
    };
    set_forwarding(
        &mut headers,
        forwarded_for,
        conn.tls,
        host.as_ref(),
        &ctx.event.request_id,
    );
    if let (Some(cert), true) = (
        conn.client_cert.as_deref(),
        route.config.forward_client_cert != ForwardClientCert::Off,
    ) {
        let with_subject = route.config.forward_client_cert == ForwardClientCert::WithSubject;
        if let Ok(v) = HeaderValue::from_str(&xfcc(cert, with_subject)) {
            headers.insert(X_FORWARDED_CLIENT_CERT, v);
        }
    }
    if ctx.headers.te_trailers {
        // gRPC over HTTP/2 needs it; it is the one `TE` value HTTP/2 allows.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let path_and_query = upstream_target(route, &ctx.path, ctx.query(uri.query()), uri)?;
    Ok(Upstream {
        headers,
        path_and_query,
        host,
    })
}

/// A trusted proxy's `X-Forwarded-For` chain with the peer's address added. Out of line:
/// most requests come straight from their clients, and the instructions every request runs
/// are kept together.
#[cold]
#[inline(never)]
fn extended_chain(chain: &str, conn: &ConnInfo) -> Result<HeaderValue, ProxyError> {
    HeaderValue::from_str(&format!("{chain}, {}", conn.peer.ip()))
        .map_err(|_| ProxyError::BadRequest("invalid X-Forwarded-For"))
}

const X_DRAWBRIDGE_USER: HeaderName = HeaderName::from_static("x-drawbridge-user");
const X_DRAWBRIDGE_GROUPS: HeaderName = HeaderName::from_static("x-drawbridge-groups");

/// Adds the signed identity assertion and, where the route asks, the plain identity headers.
/// Out of line: a public route's requests never run it.
#[inline(never)]
fn set_identity(
    snapshot: &Snapshot,
    route: &RouteEntry,
    p: &std::sync::Arc<Principal>,
    request_id: &str,
    headers: &mut HeaderMap,
) -> Result<(), ProxyError> {
    let assertion = snapshot
        .minter
        .assertion(p, &route.upstream.name, request_id)?;
    let assertion = if snapshot.identity_header == header::AUTHORIZATION {
        let mut v = Vec::with_capacity(assertion.len() + 7);
        v.extend_from_slice(b"Bearer ");
        v.extend_from_slice(assertion.as_bytes());
        HeaderValue::from_bytes(&v)
            .map_err(|e| ProxyError::Internal(drawbridge_identity::MintError::Header(e)))?
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

const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The client certificate in Envoy's `X-Forwarded-Client-Cert` format: `Hash` (SHA-256 of
/// the DER, hex), `Subject` when asked for, each `URI` and `DNS` SAN; values holding `,`,
/// `;`, `=` or `"` are quoted.
#[cold]
#[inline(never)]
fn xfcc(cert: &drawbridge_identity::ClientCert, with_subject: bool) -> String {
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
    out.push_str(&base16ct::lower::encode_string(&cert.fingerprint));
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
    request_id: &drawbridge_telemetry::RequestId,
) {
    h.insert(X_FORWARDED_FOR, forwarded_for);
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST, host.clone());
    }
    if let Ok(v) = HeaderValue::from_bytes(request_id.as_bytes()) {
        h.insert(X_REQUEST_ID, v);
    }
}

/// The target the upstream receives: the normalised path, less a stripped prefix, and the
/// query as forwarded. When that is exactly what the client sent (a path already in normal
/// form, its query untouched), the client's target is forwarded as it was parsed rather
/// than rebuilt and parsed again.
fn upstream_target(
    route: &RouteEntry,
    path: &NormalPath,
    query: Option<&str>,
    uri: &http::Uri,
) -> Result<PathAndQuery, ProxyError> {
    let strips = matches!(
        (&route.config.path, route.config.strip_prefix),
        (drawbridge_config::PathMatch::Prefix(prefix), true) if prefix != "/"
    );
    if !strips
        && let Some(sent) = uri.path_and_query()
        && let Some(rest) = sent.as_str().strip_prefix(path.encoded())
        && match query {
            None => rest.is_empty(),
            Some(q) => rest.strip_prefix('?') == Some(q),
        }
    {
        return Ok(sent.clone());
    }
    let target = build_target(route, path, query);
    PathAndQuery::from_maybe_shared(bytes::Bytes::from(target))
        .map_err(|_| ProxyError::BadRequest("unrepresentable request target"))
}

/// [`upstream_target`] written out.
fn build_target(route: &RouteEntry, path: &NormalPath, query: Option<&str>) -> String {
    let mut target = match (&route.config.path, route.config.strip_prefix) {
        (drawbridge_config::PathMatch::Prefix(prefix), true) if prefix != "/" => {
            // The encoded prefix is the decoded one re-encoded; strip by segment count.
            let depth = prefix.matches('/').count();
            let rest: String = path
                .encoded()
                .split_inclusive('/')
                .skip(depth + 1)
                .collect();
            if rest.is_empty() {
                "/".to_string()
            } else {
                format!("/{rest}")
            }
        }
        _ => path.encoded().to_string(),
    };
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    target
}
