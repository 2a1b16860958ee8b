//! Client headers are hostile (ARCHITECTURE.md §4.4): what never reaches an upstream, in
//! requests, trailers and responses.

use std::sync::Arc;

use drawbridge_config::NonstandardHeaderNames;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded. Names, not strings: removing a
/// header by a string parses the string first.
pub(crate) static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The index in [`HOP_BY_HOP`] of a header name (lower-case, as `HeaderName`s are): one
/// comparison by length and bytes, not one per hop-by-hop name, as every header of every
/// request and response is looked up here.
pub(crate) fn hop_by_hop(name: &str) -> Option<usize> {
    let i = match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    };
    debug_assert_eq!(HOP_BY_HOP[i], *name);
    Some(i)
}

/// Which client headers never reach an upstream, for one snapshot: the built-in identity,
/// address and verdict headers of [`drawbridge_config::headers`], the names
/// `[server] strip_headers` adds, and what routes may let through.
#[derive(Debug, Default)]
pub struct HeaderRules {
    /// `[server] strip_headers`, folded; `*` ends a prefix.
    extra: Vec<String>,
    /// The authenticators' own credential headers (an API key in `X-Auth-Token`): left for
    /// phase 5 to read, and removed in phase 9 unless the route passes credentials.
    exempt: Vec<HeaderName>,
    /// Every route's `pass_headers`, folded: stripped names worth keeping aside until the
    /// route is known.
    passable: Vec<String>,
}

impl HeaderRules {
    /// Rules with `extra` names (folded; a trailing `*` makes a prefix), `exempt` credential
    /// headers, and the names some route passes.
    pub fn new(extra: Vec<String>, exempt: Vec<HeaderName>, passable: Vec<String>) -> Self {
        Self {
            extra,
            exempt,
            passable,
        }
    }

    /// Whether a client's header called `name` (lower-case) is removed.
    pub fn strips(&self, name: &HeaderName) -> bool {
        let n = name.as_str();
        // Most names (`accept`, `authorization`, `host`, `user-agent`...) start with a letter
        // no built-in name does: then only the configured names can remove them.
        let first = n.as_bytes().first().copied().unwrap_or(0);
        if !matches!(
            first,
            b'c' | b'f' | b'k' | b'p' | b'r' | b's' | b't' | b'u' | b'x'
        ) && self.extra.is_empty()
        {
            return false;
        }
        if hop_by_hop(n).is_some() {
            return true;
        }
        let folded = drawbridge_config::headers::fold(n);
        let stripped = drawbridge_config::headers::is_stripped(&folded)
            || self
                .extra
                .iter()
                .any(|e| drawbridge_config::headers::matches_entry(e, &folded));
        stripped && !self.exempt.contains(name)
    }

    /// Whether the header pass removes a client's header called `name` on every listener
    /// and keeps it for no route to put back: after sanitize, no request holds it. Asked of
    /// the pass itself, on the listener setting that forwards the most.
    pub fn always_strips(&self, name: &HeaderName) -> bool {
        let mut sent = HeaderMap::new();
        sent.insert(name.clone(), HeaderValue::from_static("x"));
        matches!(
            strip_request_headers(&mut sent, self, NonstandardHeaderNames::Forward),
            Ok(seen) if sent.is_empty() && seen.held.is_empty()
        )
    }
}

/// What the client's headers said that Drawbridge acts on, taken before they are removed.
#[derive(Debug, Default)]
pub struct ClientHeaders {
    /// `X-Forwarded-For` as the client sent it (all fields joined), kept only for trusted peers.
    pub forwarded_for: Option<String>,
    /// The client asked for a WebSocket upgrade (`Connection: upgrade`, `Upgrade: websocket`).
    pub websocket: bool,
    /// `TE: trailers` was sent (gRPC needs it passed to HTTP/2 upstreams).
    pub te_trailers: bool,
    /// The one `Content-Type` names a gRPC media type: the call is answered with gRPC
    /// statuses.
    pub grpc: bool,
    /// The client sent a `Cookie` header (whether or not it is removed here).
    pub cookie: bool,
    /// Stripped headers that some route lets through, kept until the route is known.
    pub held: Vec<(HeaderName, HeaderValue)>,
}

impl ClientHeaders {
    /// Puts back the held headers that `route_passes` (folded names) lets through.
    pub fn restore(&mut self, route_passes: &[String], headers: &mut HeaderMap) {
        for (name, value) in self.held.drain(..) {
            if route_passes.iter().any(|p| p == name.as_str()) {
                headers.append(name, value);
            }
        }
    }
}

/// Why a request's headers were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A name with `_` or `.` on a listener that refuses them.
    #[error("header name with `_` or `.`")]
    NonstandardName,
    /// A value with leading or trailing white space (RFC 9113 §8.2.1 for HTTP/2; HTTP/1.1
    /// parsers trim it).
    #[error("header value with leading or trailing white space")]
    Whitespace,
    /// Two `Content-Type` headers: one reader takes the first, another the last.
    #[error("more than one Content-Type")]
    RepeatedContentType,
}

/// Removes hop-by-hop headers, headers named in `Connection`, `Expect` (the server answers
/// it; the upstream gets the body), every identity, address or verdict header in any
/// spelling, and header names with `_` or `.` (as the listener says), and reads whether the
/// request is a gRPC call from its `Content-Type`. One pass over the headers; nothing is
/// allocated unless something must go.
pub fn strip_request_headers(
    headers: &mut HeaderMap,
    rules: &HeaderRules,
    nonstandard: NonstandardHeaderNames,
) -> Result<ClientHeaders, HeaderError> {
    let mut seen = ClientHeaders::default();
    let mut doomed: Vec<HeaderName> = Vec::new();
    let mut connection_upgrade = false;
    let mut upgrade_websocket = false;
    let mut xff: Vec<&str> = Vec::new();
    let mut xff_invalid = false;
    let mut content_types = 0;
    for (name, value) in headers.iter() {
        if let (Some(first), Some(last)) = (value.as_bytes().first(), value.as_bytes().last())
            && (matches!(first, b' ' | b'\t') || matches!(last, b' ' | b'\t'))
        {
            return Err(HeaderError::Whitespace);
        }
        let n = name.as_str();
        seen.cookie |= n == "cookie";
        if n == "x-forwarded-for" {
            match value.to_str() {
                Ok(v) => xff.push(v.trim()),
                Err(_) => xff_invalid = true,
            }
        } else if n == "connection" {
            connection_upgrade |= connection_tokens(value, &mut doomed);
        } else if n == "te" {
            seen.te_trailers |= value.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        } else if n == "upgrade" {
            upgrade_websocket |= value
                .to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
        } else if n == "content-type" {
            content_types += 1;
            seen.grpc = is_grpc(media_type(value));
            continue;
        } else if n == "expect" {
            // Removed below, as every name that reaches the end of this chain.
        } else if drawbridge_config::headers::is_nonstandard(n) {
            match nonstandard {
                NonstandardHeaderNames::Refuse => return Err(HeaderError::NonstandardName),
                NonstandardHeaderNames::Drop => {}
                NonstandardHeaderNames::Forward if rules.strips(name) => {}
                NonstandardHeaderNames::Forward => continue,
            }
        } else if !rules.strips(name) {
            continue;
        } else if !rules.passable.is_empty() && rules.passable.iter().any(|p| p == n) {
            seen.held.push((name.clone(), value.clone()));
        }
        if doomed.last() != Some(name) {
            doomed.push(name.clone());
        }
    }
    if content_types > 1 {
        return Err(HeaderError::RepeatedContentType);
    }
    if !xff.is_empty() && !xff_invalid {
        seen.forwarded_for = Some(xff.join(", "));
    }
    seen.websocket = connection_upgrade && upgrade_websocket;
    // Read from the `Content-Type` that is forwarded: none, when `Connection` named it.
    seen.grpc &= !doomed.contains(&header::CONTENT_TYPE);
    for name in doomed {
        headers.remove(&name);
    }
    Ok(seen)
}

/// Request headers that never travel in trailers, whatever the route allows: what frames,
/// routes, authenticates or controls the request (RFC 9110 §6.5.1), and Drawbridge's own.
const NEVER_IN_TRAILERS: &[&str] = &[
    "authorization",
    "cache-control",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "cookie",
    "expect",
    "host",
    "max-forwards",
    "pragma",
    "range",
    "set-cookie",
];

/// Sanitizes request trailers on a route that lets them through: everything the header rules
/// remove, names with `_` or `.`, framing, routing and credential headers (`credentials`:
/// the route's credential headers and the identity header) are dropped.
pub fn strip_request_trailers(
    trailers: &mut HeaderMap,
    rules: &HeaderRules,
    credentials: &[HeaderName],
) {
    let doomed: Vec<HeaderName> = trailers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            NEVER_IN_TRAILERS.contains(&n)
                || drawbridge_config::headers::is_nonstandard(n)
                || credentials.contains(name)
                || rules.strips(name)
        })
        .cloned()
        .collect();
    for name in doomed {
        trailers.remove(&name);
    }
}

/// The media type of a `Content-Type` value (`type/subtype`, parameters and white space
/// left out), as sent: compare it without case.
pub fn media_type(value: &HeaderValue) -> &[u8] {
    let v = value.as_bytes();
    let end = v
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(v.len());
    &v[..end]
}

/// Whether a media type is gRPC's: `application/grpc`, alone or with a `+` or `-` suffix,
/// in any case (media types are case-insensitive).
pub fn is_grpc(media: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    media.len() >= GRPC.len()
        && media[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(media.get(GRPC.len()), None | Some(b'+' | b'-'))
}

/// Adds the header names a `Connection` value lists to `doomed`; returns whether it listed
/// `upgrade`.
fn connection_tokens(value: &HeaderValue, doomed: &mut Vec<HeaderName>) -> bool {
    // What nearly every peer sends names no header: nothing to split or look up.
    if matches!(value.as_bytes(), b"keep-alive" | b"close") {
        return false;
    }
    let Ok(s) = value.to_str() else { return false };
    let mut upgrade = false;
    for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if token.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if token.eq_ignore_ascii_case("close")
            || HOP_BY_HOP
                .iter()
                .any(|h| token.eq_ignore_ascii_case(h.as_str()))
        {
            // `close`, `keep-alive`: options, or names removed as hop-by-hop anyway.
        } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            // Framing and routing headers are not the client's to remove.
            if name != header::HOST
                && name != header::CONTENT_LENGTH
                && name != header::TRANSFER_ENCODING
            {
                doomed.push(name);
            }
        }
    }
    upgrade
}

/// Removes hop-by-hop headers from an upstream response (and the headers its `Connection`
/// names). `keep_upgrade` keeps `Upgrade`/`Connection` for a `101 Switching Protocols`.
pub fn strip_response_headers(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Which hop-by-hop names are present (bit `i` for `HOP_BY_HOP[i]`), and the other names
    // `Connection` lists: nothing is allocated unless it lists one.
    let mut present = 0u16;
    let mut listed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        let n = name.as_str();
        if keep_upgrade && (n == "upgrade" || n == "connection") {
            continue;
        }
        let Some(i) = hop_by_hop(n) else {
            continue;
        };
        if n == "connection" {
            connection_tokens(value, &mut listed);
        }
        present |= 1 << i;
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    for name in listed {
        headers.remove(&name);
    }
}

/// What of a client's request trailers a route lets through: the header rules apply to them
/// as to headers, and credentials never travel there.
pub struct TrailerFilter {
    /// The snapshot's header rules.
    pub rules: Arc<HeaderRules>,
    /// The identity header and the route's credential headers.
    pub credentials: Vec<http::HeaderName>,
}
