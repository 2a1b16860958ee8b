//! Phase 3, sanitize: one path, one meaning (ARCHITECTURE.md §4.3), and client headers are
//! hostile (§4.4).

use drawbridge_config::NonstandardHeaderNames;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// A request path after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    /// Decoded, dot segments resolved, duplicate slashes merged: what routes and policy see.
    pub decoded: String,
    /// `decoded` re-encoded in one canonical way: what the upstream receives.
    pub encoded: String,
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path.
    #[error("path does not start with `/`")]
    NotOriginForm,
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    InvalidEncoding,
    /// `%2F`, `%5C`, `%2E`, `%00` or another encoded control byte.
    #[error("encoded separator, dot or control character")]
    EncodedSeparator,
    /// An encoding of an encoding of a separator (`%252e`).
    #[error("double-encoded separator or dot")]
    DoubleEncoded,
    /// Decoded bytes are not UTF-8.
    #[error("path is not UTF-8")]
    NotUtf8,
    /// `\` or a control character.
    #[error("backslash or control character in path")]
    ForbiddenByte,
    /// `;` path parameters.
    #[error("`;` path parameter")]
    Semicolon,
    /// `..` above the root.
    #[error("dot segments climb above the root")]
    AboveRoot,
    /// A character that compatibility normalisation (NFKC) turns into a separator, a dot or
    /// another delimiter (`／`, `．`, `‥`, `＼`): a backend that normalises reads another path.
    #[error("look-alike of a separator or dot (NFKC)")]
    LookAlike,
}

/// Normalises the path of a request target.
pub fn normalize_path(raw: &str) -> Result<NormalPath, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let decoded = decode(raw.as_bytes())?;
    if !decoded.is_ascii() {
        refuse_look_alikes(&decoded)?;
    }
    let segments = resolve(&decoded)?;
    let mut decoded = String::with_capacity(raw.len());
    let mut encoded = String::with_capacity(raw.len() + 8);
    for seg in &segments.parts {
        decoded.push('/');
        decoded.push_str(seg);
        encoded.push('/');
        encode_segment(seg, &mut encoded);
    }
    if segments.trailing_slash || segments.parts.is_empty() {
        decoded.push('/');
        encoded.push('/');
    }
    Ok(NormalPath { decoded, encoded })
}

fn decode(raw: &[u8]) -> Result<String, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let hi = raw.get(i + 1).and_then(|c| hex(*c));
                let lo = raw.get(i + 2).and_then(|c| hex(*c));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::InvalidEncoding);
                };
                let v = hi << 4 | lo;
                if matches!(v, b'/' | b'\\' | b'.') || v < 0x20 || v == 0x7f {
                    return Err(PathError::EncodedSeparator);
                }
                if v == b'%' && is_dangerous_escape(raw.get(i + 3..i + 5)) {
                    return Err(PathError::DoubleEncoded);
                }
                out.push(v);
                i += 3;
            }
            b'\\' => return Err(PathError::ForbiddenByte),
            b';' => return Err(PathError::Semicolon),
            b if b < 0x20 || b == 0x7f => return Err(PathError::ForbiddenByte),
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    // A decoded `;` only comes from `%3B`: it is data, and is re-encoded upstream.
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

/// Characters whose count must not change under NFKC: separators, dots and the delimiters
/// a second decoder would act on.
const DELIMITERS: &[char] = &['/', '\\', '.', ';', '%', '?', '#', ':'];

/// Refuses a path in which compatibility normalisation (NFKC, as some backends and file
/// systems apply) would create or remove a separator, a dot or another delimiter, or make a
/// control character. ASCII segments are unchanged by NFKC and never looked at.
fn refuse_look_alikes(decoded: &str) -> Result<(), PathError> {
    use unicode_normalization::UnicodeNormalization;
    for seg in decoded.split('/').filter(|s| !s.is_ascii()) {
        let normal: String = seg.nfkc().collect();
        if normal == seg {
            continue;
        }
        let count = |s: &str, c: char| s.chars().filter(|x| *x == c).count();
        if DELIMITERS
            .iter()
            .any(|&c| count(seg, c) != count(&normal, c))
            || normal.chars().any(char::is_control)
        {
            return Err(PathError::LookAlike);
        }
    }
    Ok(())
}

/// After `%25`: would the next two characters decode, a second time, to a separator or dot?
fn is_dangerous_escape(next: Option<&[u8]>) -> bool {
    let Some([a, b]) = next else { return false };
    match (hex(*a), hex(*b)) {
        (Some(hi), Some(lo)) => {
            let v = hi << 4 | lo;
            matches!(v, b'/' | b'\\' | b'.') || v < 0x20 || v == 0x7f || v == b'%'
        }
        _ => false,
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

struct Segments<'a> {
    parts: Vec<&'a str>,
    trailing_slash: bool,
}

fn resolve(path: &str) -> Result<Segments<'_>, PathError> {
    let mut parts: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    // The first element is the empty string before the leading `/`.
    for seg in path.split('/').skip(1) {
        trailing_slash = false;
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                if parts.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => parts.push(s),
        }
    }
    Ok(Segments {
        parts,
        trailing_slash,
    })
}

/// Percent-encodes everything but RFC 3986 `pchar` (minus `;`, `%`).
fn encode_segment(seg: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in seg.as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b':'
                    | b'@'
            );
        if keep {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

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
        if HOP_BY_HOP.contains(&n) {
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

/// Removes hop-by-hop headers, headers named in `Connection`, every identity, address or
/// verdict header in any spelling, and header names with `_` or `.` (as the listener says).
/// One pass over the headers; nothing is allocated unless something must go.
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
            continue;
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

/// The media type of the request's `Content-Type` (`type/subtype`, parameters and white
/// space left out), as sent: compare it without case.
pub fn media_type(headers: &HeaderMap) -> Option<&[u8]> {
    let v = headers.get(header::CONTENT_TYPE)?.as_bytes();
    let end = v
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(v.len());
    Some(&v[..end])
}

/// Query parameters that carry a credential (RFC 6750 §2.3 `access_token`, API keys, OIDC
/// tokens), as canonical names with `-` read as `_`.
const CREDENTIAL_PARAMS: &[&str] = &[
    "access_token",
    "api_key",
    "apikey",
    "id_token",
    "refresh_token",
    "x_api_key",
];

/// Query parameters that override the method frameworks run (Rails, Laravel, Symfony,
/// Express method-override), as canonical names with `-` read as `_`.
const METHOD_OVERRIDE_PARAMS: &[&str] = &[
    "_http_method",
    "_method",
    "x_http_method",
    "x_http_method_override",
    "x_method_override",
];

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A parameter name that cannot be read one way only.
    #[error(transparent)]
    Name(#[from] drawbridge_config::params::ParamNameError),
    /// A credential in the query string or a form body of an authenticated route.
    #[error("credential as a request parameter (`{0}`); send it in a header")]
    Credential(String),
    /// A method override in the query string or a form body.
    #[error("method override as a request parameter (`{0}`)")]
    MethodOverride(String),
}

/// Which parameters a route screens its query for.
#[derive(Debug, Clone, Copy)]
pub struct QueryScreen<'a> {
    /// Credentials (authenticated routes), and what becomes of them.
    pub credentials: Option<drawbridge_config::QueryRule>,
    /// Extra credential parameter names (API-key header names), canonical with `_` for `-`.
    pub extra_credentials: &'a [String],
    /// Method overrides (routes that authenticate or restrict methods), and what becomes of
    /// them.
    pub method_override: Option<drawbridge_config::QueryRule>,
}

/// Screens a query string for credentials and method overrides, in every spelling frameworks
/// read as those names (`Access_Token`, `access_token[]`, `%61ccess_token`), with `&` or `;`
/// between pairs; a name with a control character is refused. Returns the query to forward
/// when parameters were stripped.
pub fn screen_query(query: &str, screen: &QueryScreen<'_>) -> Result<Option<String>, QueryError> {
    use drawbridge_config::QueryRule;
    let mut kept: Option<Vec<&str>> = None;
    for (i, pair) in query.split(['&', ';']).enumerate() {
        if pair.is_empty() {
            continue;
        }
        let raw = pair.split_once('=').map_or(pair, |(n, _)| n);
        let name = param_key(raw)?;
        let credential = screen.credentials.filter(|_| {
            CREDENTIAL_PARAMS.contains(&name.as_ref())
                || screen.extra_credentials.iter().any(|c| *c == name)
        });
        let overriding = screen
            .method_override
            .filter(|_| METHOD_OVERRIDE_PARAMS.contains(&name.as_ref()));
        let rule = match (credential, overriding) {
            (Some(QueryRule::Refuse), _) => return Err(QueryError::Credential(name.into_owned())),
            (_, Some(QueryRule::Refuse)) => {
                return Err(QueryError::MethodOverride(name.into_owned()));
            }
            (Some(r), _) | (None, Some(r)) => Some(r),
            (None, None) => None,
        };
        match (rule, kept.as_mut()) {
            (Some(_), None) => {
                // The first one stripped: what came before is kept.
                kept = Some(
                    query
                        .split(['&', ';'])
                        .take(i)
                        .filter(|p| !p.is_empty())
                        .collect(),
                );
            }
            (Some(_), Some(_)) => {}
            (None, Some(k)) => k.push(pair),
            (None, None) => {}
        }
    }
    Ok(kept.map(|k| k.join("&")))
}

/// A parameter name's canonical form with `-` read as `_`; plain ASCII names are only
/// lower-cased, without allocating when already lower-case.
fn param_key(
    raw: &str,
) -> Result<std::borrow::Cow<'_, str>, drawbridge_config::params::ParamNameError> {
    use std::borrow::Cow;
    let plain = raw
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        return Ok(Cow::Borrowed(raw));
    }
    let canonical = drawbridge_config::params::canonical_param(raw)?;
    Ok(Cow::Owned(canonical.replace('-', "_")))
}

/// Adds the header names a `Connection` value lists to `doomed`; returns whether it listed
/// `upgrade`.
fn connection_tokens(value: &HeaderValue, doomed: &mut Vec<HeaderName>) -> bool {
    let Ok(s) = value.to_str() else { return false };
    let mut upgrade = false;
    for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if token.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
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
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        let n = name.as_str();
        if keep_upgrade && (n == "upgrade" || n == "connection") {
            continue;
        }
        if n == "connection" {
            connection_tokens(value, &mut doomed);
        } else if !HOP_BY_HOP.contains(&n) {
            continue;
        }
        if doomed.last() != Some(name) {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in rules on a listener that drops nonstandard names.
    pub(super) fn strip(h: &mut HeaderMap) -> Result<ClientHeaders, HeaderError> {
        strip_request_headers(h, &HeaderRules::default(), NonstandardHeaderNames::Drop)
    }

    fn ok(raw: &str) -> (String, String) {
        let p = normalize_path(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        (p.decoded, p.encoded)
    }

    #[test]
    fn normalises() {
        assert_eq!(ok("/"), ("/".into(), "/".into()));
        assert_eq!(ok("//admin"), ("/admin".into(), "/admin".into()));
        assert_eq!(ok("/a/./b/../c"), ("/a/c".into(), "/a/c".into()));
        assert_eq!(ok("/a/b/.."), ("/a/".into(), "/a/".into()));
        assert_eq!(ok("/a/"), ("/a/".into(), "/a/".into()));
        assert_eq!(ok("/%61pi"), ("/api".into(), "/api".into()));
        assert_eq!(ok("/a%20b"), ("/a b".into(), "/a%20b".into()));
        assert_eq!(ok("/caf%C3%A9"), ("/café".into(), "/caf%C3%A9".into()));
        assert_eq!(ok("/a%3Bb"), ("/a;b".into(), "/a%3Bb".into()));
        assert_eq!(ok("/100%25"), ("/100%".into(), "/100%25".into()));
        assert_eq!(ok("/a:b@c"), ("/a:b@c".into(), "/a:b@c".into()));
    }

    #[test]
    fn rejects_ambiguous() {
        use PathError::*;
        for (raw, want) in [
            ("/public/..%2fadmin", EncodedSeparator),
            ("/public/%2e%2e/admin", EncodedSeparator),
            ("/public/%2E%2E/admin", EncodedSeparator),
            ("/admin%00", EncodedSeparator),
            ("/admin%5cx", EncodedSeparator),
            ("/admin%0d%0a", EncodedSeparator),
            ("/admin;x", Semicolon),
            ("/admin\\x", ForbiddenByte),
            ("/a%zz", InvalidEncoding),
            ("/a%2", InvalidEncoding),
            ("/a%", InvalidEncoding),
            ("/%ff", NotUtf8),
            ("/%c0%af", NotUtf8),
            ("/..", AboveRoot),
            ("/a/../..", AboveRoot),
            ("/%252e%252e/admin", DoubleEncoded),
            ("/%252F", DoubleEncoded),
            ("*", NotOriginForm),
        ] {
            assert_eq!(normalize_path(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn encoded_form_is_a_fixed_point() {
        for raw in ["/a%20b/c", "/caf%C3%A9/", "/x/%3B/y", "/%7E~"] {
            let once = normalize_path(raw).expect("valid");
            let twice = normalize_path(&once.encoded).expect("valid");
            assert_eq!(once, twice, "{raw}");
        }
    }

    #[test]
    fn strips_spoofed_and_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-forwarded-for", "1.2.3.4"),
            ("x_forwarded_for", "5.6.7.8"),
            ("x-forwarded-host", "evil"),
            ("x_forwarded_proto", "https"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x_real_ip", "1.2.3.4"),
            ("x-drawbridge-user", "admin"),
            ("x_drawbridge_user", "admin"),
            ("x-request-id", "mine"),
            ("connection", "keep-alive, x-secret, host"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("accept", "*/*"),
            ("host", "example.com"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let seen = strip(&mut h).expect("accepted");
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "host"]);
        assert_eq!(seen.forwarded_for.as_deref(), Some("1.2.3.4"));
        assert!(seen.te_trailers);
        assert!(!seen.websocket);
    }

    #[test]
    fn sees_websocket_upgrades() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(strip(&mut h).expect("accepted").websocket);
        assert!(h.is_empty());
    }

    #[test]
    fn strips_identity_headers_of_every_ecosystem_in_every_spelling() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-auth-user", "root"),
            ("x-auth-roles", "admin"),
            ("x-auth-request-email", "a@b"),
            ("remote-user", "root"),
            ("x-remote-user", "root"),
            ("x-user", "root"),
            ("x-forwarded-user", "root"),
            ("x-forwarded-groups", "admin"),
            ("x-forwarded-access-token", "t"),
            ("x-ssl-client-s-dn", "CN=root"),
            ("x-client-cert", "pem"),
            ("x-client-verify", "SUCCESS"),
            ("ssl-client-verify", "SUCCESS"),
            ("x-envoy-internal", "true"),
            ("x-middleware-subrequest", "middleware"),
            ("x-proxy-user", "root"),
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-method-override", "DELETE"),
            ("cf-access-authenticated-user-email", "a@b"),
            ("x-goog-authenticated-user-email", "a@b"),
            ("x-amzn-oidc-identity", "root"),
            ("x-ms-client-principal-name", "root"),
            ("x-pomerium-jwt-assertion", "t"),
            ("x_auth_user", "root"),
            ("x.auth.user", "root"),
            ("x_app_flag", "1"),
            ("transfer_encoding", "chunked"),
            ("accept", "*/*"),
            ("x-app", "1"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_static(v),
            );
        }
        strip(&mut h).expect("accepted");
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-app"]);
    }

    #[test]
    fn nonstandard_names_follow_the_listener() {
        let mk = || {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_static("x_app_flag"),
                HeaderValue::from_static("1"),
            );
            h.insert(
                HeaderName::from_static("x_auth_user"),
                HeaderValue::from_static("root"),
            );
            h
        };
        let rules = HeaderRules::default();
        let mut h = mk();
        assert_eq!(
            strip_request_headers(&mut h, &rules, NonstandardHeaderNames::Refuse).err(),
            Some(HeaderError::NonstandardName)
        );
        let mut h = mk();
        strip_request_headers(&mut h, &rules, NonstandardHeaderNames::Forward).expect("ok");
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            left,
            ["x_app_flag"],
            "a spelling of a stripped name never passes"
        );
    }

    #[test]
    fn configured_names_exemptions_and_passes() {
        let rules = HeaderRules::new(
            vec!["x-tenant-admin".into(), "x-corp-*".into()],
            vec![HeaderName::from_static("x-auth-token")],
            vec!["x-auth-request-email".into()],
        );
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-tenant-admin", "1"),
            ("x_tenant_admin", "1"),
            ("x-corp-role", "boss"),
            ("x-auth-token", "key"),
            ("x-auth-request-email", "a@b"),
            ("x-app", "1"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let mut seen =
            strip_request_headers(&mut h, &rules, NonstandardHeaderNames::Drop).expect("ok");
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-app", "x-auth-token"]);
        let mut other = h.clone();
        seen.restore(&["x-auth-request-email".into()], &mut h);
        assert_eq!(
            h.get("x-auth-request-email").map(|v| v.as_bytes()),
            Some(&b"a@b"[..])
        );
        assert!(seen.held.is_empty());
        seen.restore(&[], &mut other);
        assert!(!other.contains_key("x-auth-request-email"));
    }

    #[test]
    fn refuses_ambiguous_values_and_content_types() {
        let mut h = HeaderMap::new();
        h.insert("x-app", HeaderValue::from_static(" padded"));
        assert_eq!(strip(&mut h).err(), Some(HeaderError::Whitespace));
        let mut h = HeaderMap::new();
        h.insert("x-app", HeaderValue::from_static("padded\t"));
        assert_eq!(strip(&mut h).err(), Some(HeaderError::Whitespace));
        let mut h = HeaderMap::new();
        h.append(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.append(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        assert_eq!(strip(&mut h).err(), Some(HeaderError::RepeatedContentType));
    }

    #[test]
    fn trailers_lose_credentials_and_identity() {
        let rules = HeaderRules::default();
        let mut t = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer x"),
            ("x-drawbridge-identity", "forged"),
            ("x-drawbridge-user", "root"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-request-id", "mine"),
            ("x-api-key", "k"),
            ("x_auth_user", "root"),
            ("content-length", "1"),
            ("grpc-status", "0"),
            ("x-checksum", "abc"),
        ] {
            t.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_request_trailers(&mut t, &rules, &[HeaderName::from_static("x-api-key")]);
        let mut left: Vec<&str> = t.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["grpc-status", "x-checksum"]);
    }

    #[test]
    fn look_alike_separators_are_refused() {
        for raw in [
            "/public/..%EF%BC%8Fadmin/users",   // fullwidth solidus
            "/public/%EF%BC%8E%EF%BC%8E/admin", // fullwidth full stops
            "/public/%E2%80%A5/admin",          // two dot leader
            "/public/%E2%80%A4/admin",          // one dot leader
            "/public/%EF%BC%BCadmin",           // fullwidth reverse solidus
            "/public/%EF%B9%92admin",           // small full stop
            "/a%EF%BC%9Bb",                     // fullwidth semicolon
            "/a%EF%BC%85%32%65",                // fullwidth percent
            "/a%EF%BC%9Fx",                     // fullwidth question mark
            "/a%EF%BC%83x",                     // fullwidth number sign
        ] {
            assert_eq!(normalize_path(raw), Err(PathError::LookAlike), "{raw}");
        }
        // Compatibility forms that create no delimiter are data.
        assert!(normalize_path("/caf%C3%A9").is_ok());
        assert!(normalize_path("/%EF%AC%81le.txt").is_ok(), "ligature fi");
        assert!(normalize_path("/%E2%91%A0").is_ok(), "circled digit one");
    }

    #[test]
    fn query_credentials_and_overrides_in_every_spelling() {
        use drawbridge_config::QueryRule::*;
        let both = QueryScreen {
            credentials: Some(Refuse),
            extra_credentials: &[],
            method_override: Some(Refuse),
        };
        for q in [
            "access_token=x",
            "a=1&Access_Token=x",
            "access_token[]=x",
            "%61ccess_token=x",
            "a=1;access_token=x",
            "ACCESS-TOKEN=x",
            "api_key=k",
            "apikey=k",
            "api-key=k",
            "x-api-key=k",
            "id_token=t",
        ] {
            assert!(
                matches!(screen_query(q, &both), Err(QueryError::Credential(_))),
                "{q}"
            );
        }
        for q in [
            "_method=DELETE",
            "_METHOD=DELETE",
            "_method[]=DELETE",
            "x-http-method-override=DELETE",
        ] {
            assert!(
                matches!(screen_query(q, &both), Err(QueryError::MethodOverride(_))),
                "{q}"
            );
        }
        assert!(matches!(
            screen_query("a%00=1", &both),
            Err(QueryError::Name(_))
        ));
        assert_eq!(
            screen_query("a=1&token_type=x&method=card", &both),
            Ok(None)
        );
        let strip = QueryScreen {
            credentials: Some(Strip),
            extra_credentials: &["x_key".to_string()],
            method_override: Some(Strip),
        };
        assert_eq!(
            screen_query("a=1&access_token=x;b=2&_method=PUT&X-Key=k&c", &strip),
            Ok(Some("a=1&b=2&c".into()))
        );
        assert_eq!(
            screen_query("access_token=x", &strip),
            Ok(Some(String::new()))
        );
        let off = QueryScreen {
            credentials: None,
            extra_credentials: &[],
            method_override: None,
        };
        assert_eq!(screen_query("access_token=x&_method=PUT", &off), Ok(None));
    }

    mod properties {
        use super::super::*;
        use super::strip;
        use proptest::prelude::*;

        /// Request targets built from the characters that matter: separators, dots,
        /// percent signs, hex digits, `;`, backslashes and a few letters.
        fn target() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    Just("/"),
                    Just("."),
                    Just(".."),
                    Just("%"),
                    Just("%2e"),
                    Just("%2F"),
                    Just("%25"),
                    Just("%5c"),
                    Just("%00"),
                    Just(";"),
                    Just("\\"),
                    Just("a"),
                    Just("b"),
                    Just("2"),
                    Just("e"),
                    Just("f"),
                    Just("%20"),
                    Just("%c3%a9"),
                    Just("%ff"),
                    Just("~"),
                ],
                0..16,
            )
            .prop_map(|parts| format!("/{}", parts.concat()))
        }

        proptest! {
            #[test]
            fn accepted_paths_are_normal_and_stable(raw in target()) {
                if let Ok(p) = normalize_path(&raw) {
                    prop_assert!(p.decoded.starts_with('/'));
                    let inner = p.decoded.trim_end_matches('/');
                    prop_assert!(inner.is_empty() || inner[1..].split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{:?}", p);
                    prop_assert!(!p.encoded.to_ascii_lowercase().contains("%2e") && !p.encoded.to_ascii_lowercase().contains("%2f"));
                    let again = normalize_path(&p.encoded);
                    prop_assert_eq!(again.as_ref(), Ok(&p));
                }
            }

            #[test]
            fn no_spoofable_header_survives(names in proptest::collection::vec(
                prop_oneof![
                    Just("x-forwarded-for"), Just("x_forwarded_for"), Just("x-forwarded-anything"),
                    Just("x_drawbridge_user"), Just("x-drawbridge-groups"), Just("forwarded"),
                    Just("x-real-ip"), Just("x_real_ip"), Just("connection"), Just("te"),
                    Just("transfer-encoding"), Just("upgrade"), Just("keep-alive"), Just("accept"),
                    Just("x-app"), Just("authorization"), Just("x-auth-user"), Just("x_auth_user"),
                    Just("x.auth.user"), Just("remote-user"), Just("x_http_method_override"),
                    Just("x-ssl-client-verify"), Just("x-envoy-internal"), Just("x-real_ip"),
                ], 0..12)) {
                let mut h = HeaderMap::new();
                for n in &names {
                    h.append(HeaderName::from_static(n), HeaderValue::from_static("v"));
                }
                strip(&mut h).expect("accepted");
                for name in h.keys() {
                    prop_assert!(["accept", "x-app", "authorization"].contains(&name.as_str()), "{} survived", name);
                }
                for keep in ["accept", "x-app", "authorization"] {
                    prop_assert_eq!(h.contains_key(keep), names.contains(&keep));
                }
            }
        }
    }
}
