//! Phase 2, parse: hyper reads HTTP/1.1 and HTTP/2 with the listener's limits (see
//! [`crate::accept`]); here are the limits and readings hyper leaves to us: the target's
//! length, framing two parsers could read differently, the one host the request is for,
//! and, once a route is known, its body limit and the shape of an upgrade.

use http::request::Parts;
use http::{HeaderMap, header};

use crate::context::Ctx;
use crate::rescue::ProxyError;
use crate::snapshot::{ListenerEntry, RouteEntry};

/// Checks what the listener's limits say of the request line and framing, and reads the
/// host the request is for into `ctx`.
pub fn request(ctx: &mut Ctx, listener: &ListenerEntry, req: &Parts) -> Result<(), ProxyError> {
    let limits = &listener.limits;
    let target_len = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let host = if target_len > limits.max_uri_bytes {
        Err(ProxyError::UriTooLong(limits.max_uri_bytes))
    } else if head_len(req, target_len) > limits.max_header_bytes {
        // HTTP/1.1's parser checks this only while a head is incomplete, so a head that
        // arrives whole in one read could pass; HTTP/2's is the header list size.
        Err(ProxyError::HeadersTooLarge(limits.max_header_bytes))
    } else {
        request_host(req)
    };
    match host {
        Ok(h) => {
            // The record takes it from `ctx` when the request ends.
            ctx.host = h;
            ctx.host_read = true;
        }
        Err(e) => {
            // The record names what the client asked for, even unusable.
            ctx.event.host = asked_host(req);
            return Err(e);
        }
    }
    ctx.original_host = req.headers.get(header::HOST).cloned();
    check_framing(&req.headers)
}

/// What the route allows of the request's shape: a declared body within its limit, and a
/// WebSocket upgrade only as an HTTP/1.1 `GET`. Checked as soon as the route is known, before
/// anyone is authenticated.
pub fn for_route(
    ctx: &Ctx,
    listener: &ListenerEntry,
    route: &RouteEntry,
    req: &Parts,
) -> Result<u64, ProxyError> {
    let max_body = route
        .config
        .max_body_bytes
        .unwrap_or(listener.limits.max_body_bytes);
    if let Some(len) = declared_length(&req.headers)?
        && len > max_body
    {
        return Err(ProxyError::BodyTooLarge(max_body));
    }
    if ctx.headers.websocket
        && (req.method != http::Method::GET || req.version != http::Version::HTTP_11)
    {
        return Err(ProxyError::BadRequest(
            "websocket upgrade must be an HTTP/1.1 GET",
        ));
    }
    Ok(max_body)
}

/// The size of an HTTP/1.1 request head as it came (`name: value\r\n` per field), or of
/// an HTTP/2 header list as RFC 9113 counts it (32 bytes more per field).
fn head_len(req: &Parts, target_len: usize) -> usize {
    let per_field = if req.version == http::Version::HTTP_2 {
        32
    } else {
        4
    };
    let fields: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + per_field)
        .sum();
    req.method.as_str().len() + target_len + fields + 12
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
fn asked_host(req: &Parts) -> Option<String> {
    let raw: &[u8] = match (req.uri.authority(), req.headers.get(header::HOST)) {
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
fn request_host(req: &Parts) -> Result<String, ProxyError> {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let header_host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let raw = match (req.uri.authority(), header_host) {
        // User info in an absolute-form target is never forwarded, nor quietly dropped.
        (Some(a), _) if a.as_str().contains('@') => {
            return Err(ProxyError::BadRequest("user info in the request target"));
        }
        (Some(a), _) => a.host().to_ascii_lowercase(),
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
            a.host().to_ascii_lowercase()
        }
        (None, None) if req.version == http::Version::HTTP_11 => {
            return Err(ProxyError::BadRequest("missing Host header"));
        }
        (None, None) => String::new(),
    };
    let mut host = raw;
    if host.ends_with('.') {
        host.pop();
    }
    Ok(host)
}
