//! The floor's duties (`FLOOR_DUTIES=1`): what a gateway owes every request on a public
//! route, done the least way on the crates Drawbridge uses, so that the benchmark can tell
//! the cost of the duties themselves from Drawbridge's own way of doing them.
//!
//! Per request, in one pass where one pass will do:
//! - the head's limits hyper leaves to the proxy (target length, head size) and its framing
//!   (one `Content-Length`, never beside `Transfer-Encoding`);
//! - one `Host`, a valid authority without user info, the host it names;
//! - the client's headers: no value with white space at either end, no name with `_` or
//!   `.`, at most one `Content-Type`; hop-by-hop headers, the names `Connection` lists and
//!   every identity, address or verdict header Drawbridge strips (its own list) removed;
//! - a path already in normal form, or refused (Drawbridge normalises instead), and the
//!   route: one prefix;
//! - the forwarding headers (`X-Forwarded-For`, `-Proto`, `-Host`) and a request id
//!   (`X-Request-Id`, 32 hex digits) set;
//! - the upstream exchange bounded by a request timeout; hop-by-hop headers removed from
//!   the response;
//! - the request counted and timed (two relaxed atomic additions).
//!
//! Nothing else: no configuration snapshot, no trusted proxies, no access event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

/// Hop-by-hop headers (RFC 9110 §7.6.1, and those older peers send); the request's screen
/// names the same.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request target, and largest head, as Drawbridge's defaults.
const MAX_TARGET: usize = 8 * 1024;
const MAX_HEAD: usize = 64 * 1024;

/// The duties' state: the request ids and the counters.
pub struct Duties {
    /// How long an upstream exchange may take.
    pub timeout: Duration,
    prefix: [u8; 16],
    ids: AtomicU64,
    requests: AtomicU64,
    micros: AtomicU64,
}

impl Duties {
    /// Duties with a request id prefix taken from the clock (the floor needs unique ids,
    /// not unguessable ones).
    pub fn new(timeout: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            timeout,
            prefix: hex(seed),
            ids: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            micros: AtomicU64::new(0),
        }
    }

    /// Checks and rewrites a request's head for the upstream; `peer` is the client's
    /// address as a header value (made once per connection). A refusal is its status.
    pub fn request(&self, req: &mut Parts, peer: &HeaderValue) -> Result<(), StatusCode> {
        let target = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        if target > MAX_TARGET {
            return Err(StatusCode::URI_TOO_LONG);
        }
        let host = one_host(&req.headers)?;
        if !is_normal(req.uri.path()) {
            return Err(StatusCode::BAD_REQUEST);
        }
        let doomed = screen(&req.headers, target + req.method.as_str().len())?;
        for name in doomed.iter().flatten() {
            req.headers.remove(name);
        }
        let h = &mut req.headers;
        h.insert(X_FORWARDED_FOR, peer.clone());
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        h.insert(X_FORWARDED_HOST, host);
        h.insert(X_REQUEST_ID, self.next_id());
        Ok(())
    }

    /// Removes the hop-by-hop headers from an upstream's response.
    pub fn response(headers: &mut HeaderMap) {
        let mut present = [false; 8];
        for name in headers.keys() {
            if let Some(i) = hop_by_hop(name.as_str()) {
                present[i] = true;
            }
        }
        for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
            headers.remove(name);
        }
    }

    /// Counts a request that took `took`.
    pub fn count(&self, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn next_id(&self) -> HeaderValue {
        let mut id = [0u8; 32];
        id[..16].copy_from_slice(&self.prefix);
        id[16..].copy_from_slice(&hex(self.ids.fetch_add(1, Ordering::Relaxed)));
        HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
    }
}

/// Where `name` stands in [`HOP_BY_HOP`], if it is one.
fn hop_by_hop(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authorization" => 3,
        "te" => 4,
        "trailer" => 5,
        "transfer-encoding" => 6,
        "upgrade" => 7,
        _ => return None,
    })
}

/// The one `Host` header, checked as an authority without user info.
fn one_host(headers: &HeaderMap) -> Result<HeaderValue, StatusCode> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return Err(StatusCode::BAD_REQUEST);
    };
    match http::uri::Authority::try_from(host.as_bytes()) {
        Ok(a) if !a.as_str().contains('@') && !a.host().is_empty() => Ok(host.clone()),
        _ => Err(StatusCode::BAD_REQUEST),
    }
}

/// A path that decoding and resolving would not change: from `/`, no `%` or `\\`, no `.`
/// or `..` segment, no empty one but the last.
fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if rest.contains(['%', '\\']) {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(s) = segments.next() {
        if s == "." || s == ".." || (s.is_empty() && segments.peek().is_some()) {
            return false;
        }
    }
    true
}

/// One pass over the client's headers: refuses what no upstream should be asked to read,
/// and names what must go (at most eight; more refuses the request).
fn screen(headers: &HeaderMap, line: usize) -> Result<[Option<HeaderName>; 8], StatusCode> {
    let mut doomed: [Option<HeaderName>; 8] = Default::default();
    let mut n = 0;
    let mut doom = |name: &HeaderName| -> Result<(), StatusCode> {
        if doomed[..n].iter().any(|d| d.as_ref() == Some(name)) {
            return Ok(());
        }
        *doomed.get_mut(n).ok_or(StatusCode::BAD_REQUEST)? = Some(name.clone());
        n += 1;
        Ok(())
    };
    let (mut size, mut lengths, mut types, mut chunked) = (line, 0, 0, false);
    for (name, value) in headers {
        let v = value.as_bytes();
        size += name.as_str().len() + v.len() + 4;
        if matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t')) {
            return Err(StatusCode::BAD_REQUEST);
        }
        let s = name.as_str();
        if s.bytes().any(|b| b == b'_' || b == b'.') {
            return Err(StatusCode::BAD_REQUEST);
        }
        match s {
            "content-length" => lengths += 1,
            "content-type" => types += 1,
            "connection" => {
                doom(name)?;
                for token in value.to_str().unwrap_or("").split(',') {
                    let token = token.trim();
                    if token.eq_ignore_ascii_case("close")
                        || token.eq_ignore_ascii_case("keep-alive")
                    {
                        continue;
                    }
                    match HeaderName::from_bytes(token.as_bytes()) {
                        Ok(listed)
                            if listed != header::HOST && listed != header::CONTENT_LENGTH =>
                        {
                            doom(&listed)?;
                        }
                        _ => {}
                    }
                }
            }
            "transfer-encoding" => {
                chunked = true;
                doom(name)?;
            }
            "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "upgrade" => doom(name)?,
            _ if drawbridge_config::headers::is_stripped(s) => doom(name)?,
            _ => {}
        }
    }
    if size > MAX_HEAD {
        return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    if lengths > 1 || (lengths == 1 && chunked) || types > 1 {
        return Err(StatusCode::BAD_REQUEST);
    }
    Ok(doomed)
}

/// `n` as 16 lower-case hex digits.
fn hex(n: u64) -> [u8; 16] {
    let mut digits = [0u8; 16];
    let _ = base16ct::lower::encode(&n.to_be_bytes(), &mut digits);
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)], target: &str) -> Parts {
        let mut b = http::Request::builder().uri(target);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(())
            .map(|r| r.into_parts().0)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn forwards_with_the_forwarding_headers_and_without_spoofed_ones() {
        let d = Duties::new(Duration::from_secs(1));
        let mut req = head(
            &[
                ("host", "a.example"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-drawbridge-identity", "forged"),
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "1"),
                ("accept", "*/*"),
            ],
            "/a/b",
        );
        let peer = HeaderValue::from_static("10.0.0.1");
        assert_eq!(d.request(&mut req, &peer), Ok(()));
        let h = &req.headers;
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1");
        assert_eq!(h[X_FORWARDED_HOST], "a.example");
        assert_eq!(h[X_REQUEST_ID].len(), 32);
        for gone in ["x-drawbridge-identity", "connection", "x-secret"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn refuses_what_drawbridge_refuses() {
        let d = Duties::new(Duration::from_secs(1));
        let peer = HeaderValue::from_static("10.0.0.1");
        for (headers, target) in [
            (vec![("host", "a"), ("host", "b")], "/"),
            (vec![("host", "u@a")], "/"),
            (vec![], "/"),
            (vec![("host", "a"), ("x_forwarded_for", "1")], "/"),
            (
                vec![
                    ("host", "a"),
                    ("content-length", "1"),
                    ("transfer-encoding", "chunked"),
                ],
                "/",
            ),
            (vec![("host", "a")], "/a/../b"),
            (vec![("host", "a")], "/a%2fb"),
            (vec![("host", "a")], "//a"),
        ] {
            let mut req = head(&headers, target);
            assert!(d.request(&mut req, &peer).is_err(), "{headers:?} {target}");
        }
    }

    #[test]
    fn takes_hop_by_hop_headers_off_a_response() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        Duties::response(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_LENGTH));
    }
}
