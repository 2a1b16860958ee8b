//! Phase 3, sanitize: one path, one meaning (ARCHITECTURE.md §4.3), and client headers are
//! hostile (§4.4).

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
}

/// Normalises the path of a request target.
pub fn normalize_path(raw: &str) -> Result<NormalPath, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let decoded = decode(raw.as_bytes())?;
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

/// Headers a client may never set: identity and forwarding headers, compared after folding
/// case and `_` to `-`.
const SPOOFABLE: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-request-id",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-envoy-original-path",
];
/// Prefixes of header names a client may never set.
const SPOOFABLE_PREFIXES: &[&str] = &["x-forwarded-", "x-drawbridge-"];

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

/// What the client's headers said that Drawbridge acts on, taken before they are removed.
#[derive(Debug, Default)]
pub struct ClientHeaders {
    /// `X-Forwarded-For` as the client sent it (all fields joined), kept only for trusted peers.
    pub forwarded_for: Option<String>,
    /// The client asked for a WebSocket upgrade (`Connection: upgrade`, `Upgrade: websocket`).
    pub websocket: bool,
    /// `TE: trailers` was sent (gRPC needs it passed to HTTP/2 upstreams).
    pub te_trailers: bool,
}

/// Removes hop-by-hop headers, headers named in `Connection`, and every identity or
/// forwarding header, in any spelling.
pub fn strip_request_headers(headers: &mut HeaderMap) -> ClientHeaders {
    let mut seen = ClientHeaders {
        te_trailers: headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        }),
        ..Default::default()
    };
    let connection_upgrade = remove_connection_listed(headers);
    seen.websocket = connection_upgrade
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }

    let xff: Vec<&HeaderValue> = headers.get_all("x-forwarded-for").iter().collect();
    if !xff.is_empty() {
        let joined: Vec<&str> = xff
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .collect();
        if joined.len() == xff.len() {
            seen.forwarded_for = Some(joined.join(", "));
        }
    }
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_spoofable(n.as_str()))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    seen
}

/// Removes the headers a `Connection` header names; returns whether it named `upgrade`.
fn remove_connection_listed(headers: &mut HeaderMap) -> bool {
    let mut listed: Vec<HeaderName> = Vec::new();
    let mut upgrade = false;
    for v in headers.get_all(header::CONNECTION) {
        let Ok(s) = v.to_str() else { continue };
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.to_ascii_lowercase().as_bytes()) {
                // Framing and routing headers are not the client's to remove.
                if name != header::HOST
                    && name != header::CONTENT_LENGTH
                    && name != header::TRANSFER_ENCODING
                {
                    listed.push(name);
                }
            }
        }
    }
    for name in listed {
        headers.remove(name);
    }
    upgrade
}

fn is_spoofable(name: &str) -> bool {
    // Header names from hyper are lower-case already; fold `_` to `-`.
    let folded;
    let name = if name.contains('_') {
        folded = name.replace('_', "-");
        folded.as_str()
    } else {
        name
    };
    SPOOFABLE.contains(&name) || SPOOFABLE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Removes hop-by-hop headers from an upstream response (and the headers its `Connection`
/// names). `keep_upgrade` keeps `Upgrade`/`Connection` for a `101 Switching Protocols`.
pub fn strip_response_headers(headers: &mut HeaderMap, keep_upgrade: bool) {
    remove_connection_listed(headers);
    for name in HOP_BY_HOP {
        if keep_upgrade && (*name == "upgrade" || *name == "connection") {
            continue;
        }
        headers.remove(*name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let seen = strip_request_headers(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
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
        assert!(strip_request_headers(&mut h).websocket);
        assert!(h.is_empty());
    }
}
