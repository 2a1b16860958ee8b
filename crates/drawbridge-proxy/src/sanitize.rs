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
/// `_` to `-` (header names arrive lower-case).
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
/// forwarding header, in any spelling. One pass over the headers; nothing is allocated
/// unless something must go.
pub fn strip_request_headers(headers: &mut HeaderMap) -> ClientHeaders {
    let mut seen = ClientHeaders::default();
    let mut doomed: Vec<HeaderName> = Vec::new();
    let mut connection_upgrade = false;
    let mut upgrade_websocket = false;
    let mut xff: Vec<&str> = Vec::new();
    let mut xff_invalid = false;
    for (name, value) in headers.iter() {
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
        } else if !HOP_BY_HOP.contains(&n) && !is_spoofable(n) {
            continue;
        }
        if doomed.last() != Some(name) {
            doomed.push(name.clone());
        }
    }
    if !xff.is_empty() && !xff_invalid {
        seen.forwarded_for = Some(xff.join(", "));
    }
    seen.websocket = connection_upgrade && upgrade_websocket;
    for name in doomed {
        headers.remove(&name);
    }
    seen
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

fn is_spoofable(name: &str) -> bool {
    SPOOFABLE.iter().any(|s| eq_folded(name, s))
        || SPOOFABLE_PREFIXES
            .iter()
            .any(|p| name.len() > p.len() && eq_folded(&name[..p.len()], p))
}

/// `a == b` where `_` in `a` stands for `-` (`b` is written with `-`).
fn eq_folded(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || (x == b'_' && y == b'-'))
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
        assert!(strip_request_headers(&mut h).websocket);
        assert!(h.is_empty());
    }

    mod properties {
        use super::super::*;
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
                    Just("x-app"), Just("authorization"),
                ], 0..12)) {
                let mut h = HeaderMap::new();
                for n in &names {
                    h.append(HeaderName::from_static(n), HeaderValue::from_static("v"));
                }
                strip_request_headers(&mut h);
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
