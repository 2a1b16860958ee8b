//! Phase 2, parse: hyper reads HTTP/1.1 and HTTP/2 with the listener's limits (see
//! [`crate::accept`]); here are the limits and readings hyper leaves to us: the target's
//! length, framing two parsers could read differently, the one host the request is for,
//! and, once a route is known, its body limit and the shape of an upgrade.

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, header};

use crate::context::Ctx;
use crate::rescue::ProxyError;
use crate::snapshot::{ListenerEntry, RouteEntry};

/// Checks what the listener's limits say of the request line and framing, and reads the
/// host the request is for into `ctx`.
pub fn request(ctx: &mut Ctx, listener: &ListenerEntry, req: &Parts) -> Result<(), ProxyError> {
    let limits = &listener.limits;
    let target_len = req.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let head = Head::read(req, target_len);
    let host = if target_len > limits.max_uri_bytes {
        Err(ProxyError::UriTooLong(limits.max_uri_bytes))
    } else if head.len > limits.max_header_bytes {
        // HTTP/1.1's parser checks this only while a head is incomplete, so a head that
        // arrives whole in one read could pass; HTTP/2's is the header list size.
        Err(ProxyError::HeadersTooLarge(limits.max_header_bytes))
    } else {
        request_host(req, &head)
    };
    match host {
        Ok((h, sent)) => {
            // The record takes it from `ctx` when the request ends.
            ctx.host = h;
            ctx.host_read = true;
            ctx.original_host = sent.cloned();
        }
        Err(e) => {
            // The record names what the client asked for, even unusable.
            ctx.event.host = asked_host(req);
            return Err(e);
        }
    }
    head.check_framing()
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

/// What parse reads of a request's headers, in one pass over them: the head's size, its
/// `Host` fields and its framing fields.
struct Head<'a> {
    /// The size of an HTTP/1.1 request head as it came (`name: value\r\n` per field), or
    /// of an HTTP/2 header list as RFC 9113 counts it (32 bytes more per field).
    len: usize,
    /// The first `Host` field, and how many there are.
    host: Option<&'a HeaderValue>,
    hosts: usize,
    /// How many `Content-Length` fields, and whether there is a `Transfer-Encoding`.
    lengths: usize,
    transfer_encoding: bool,
}

impl<'a> Head<'a> {
    fn read(req: &'a Parts, target_len: usize) -> Self {
        let per_field = if req.version == http::Version::HTTP_2 {
            32
        } else {
            4
        };
        let mut head = Head {
            len: req.method.as_str().len() + target_len + 12,
            host: None,
            hosts: 0,
            lengths: 0,
            transfer_encoding: false,
        };
        for (name, value) in &req.headers {
            head.len += name.as_str().len() + value.len() + per_field;
            if *name == header::HOST {
                head.host.get_or_insert(value);
                head.hosts += 1;
            } else if *name == header::CONTENT_LENGTH {
                head.lengths += 1;
            } else if *name == header::TRANSFER_ENCODING {
                head.transfer_encoding = true;
            }
        }
        head
    }

    /// Refuses framing that two parsers could read differently.
    fn check_framing(&self) -> Result<(), ProxyError> {
        match (self.lengths, self.transfer_encoding) {
            (0, _) => Ok(()),
            (1, false) => Ok(()),
            (1, true) => Err(ProxyError::Framing(
                "both Transfer-Encoding and Content-Length",
            )),
            _ => Err(ProxyError::Framing("more than one Content-Length")),
        }
    }
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
fn asked_host(req: &Parts) -> Option<Arc<str>> {
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
            .collect::<String>()
            .into(),
    )
}

/// The request's host, lower-case, without port or trailing dot, and the `Host` header it
/// came in (`head` holds the request's `Host` fields).
fn request_host<'a>(
    req: &'a Parts,
    head: &Head<'a>,
) -> Result<(Arc<str>, Option<&'a HeaderValue>), ProxyError> {
    if head.hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    let header_host = head.host;
    // The `Host` header whose host is worked out below, to be remembered once it is.
    let mut checked = None;
    let mut host = match (req.uri.authority(), header_host) {
        // User info in an absolute-form target is never forwarded, nor quietly dropped.
        (Some(a), _) if a.as_str().contains('@') => {
            return Err(ProxyError::BadRequest("user info in the request target"));
        }
        (Some(a), _) => host_of(a.as_str()).to_ascii_lowercase(),
        (None, Some(h)) => {
            if let Some(host) = LAST_HOST.with_borrow(|last| last.host_of(h.as_bytes())) {
                return Ok((host, header_host));
            }
            let s = h
                .to_str()
                .map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
            if s.as_bytes().contains(&b'@') {
                return Err(ProxyError::BadRequest("invalid Host header"));
            }
            // The authority grammar is http's to check; what passes has no user info.
            s.parse::<http::uri::Authority>()
                .map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
            checked = Some(h);
            host_of(s).to_ascii_lowercase()
        }
        (None, None) if req.version == http::Version::HTTP_11 => {
            return Err(ProxyError::BadRequest("missing Host header"));
        }
        (None, None) => return Ok((Arc::default(), None)),
    };
    if host.ends_with('.') {
        host.pop();
    }
    let host = Arc::<str>::from(host);
    if let Some(h) = checked {
        LAST_HOST.with_borrow_mut(|last| last.keep(h.as_bytes(), &host));
    }
    Ok((host, header_host))
}

/// The last `Host` header a thread found valid, and the host it names. A connection's
/// requests repeat their `Host`, and so do most of a listener's: checking the authority
/// grammar again (which copies the value) and lower-casing it again would find the same.
/// Kept as its own copy, never the request's value (which shares the connection's read
/// buffer); the host is shared, so a request that repeats it copies nothing.
#[derive(Default)]
struct LastHost {
    sent: Vec<u8>,
    host: Arc<str>,
}

impl LastHost {
    /// The host `sent` names, when it is the value last found valid.
    fn host_of(&self, sent: &[u8]) -> Option<Arc<str>> {
        (!self.sent.is_empty() && self.sent == sent).then(|| self.host.clone())
    }

    /// Remembers that `sent` was found valid and names `host` (values of a bounded size:
    /// a long one is checked each time).
    fn keep(&mut self, sent: &[u8], host: &Arc<str>) {
        if sent.len() <= 256 {
            self.sent.clear();
            self.sent.extend_from_slice(sent);
            self.host = host.clone();
        }
    }
}

thread_local! {
    static LAST_HOST: std::cell::RefCell<LastHost> = std::cell::RefCell::new(LastHost::default());
}

/// The host of an authority that parsed and holds no user info: an IP literal with its
/// brackets, or what comes before the port.
fn host_of(authority: &str) -> &str {
    let bytes = authority.as_bytes();
    let end = if bytes.first() == Some(&b'[') {
        bytes
            .iter()
            .position(|&b| b == b']')
            .map_or(bytes.len(), |i| i + 1)
    } else {
        bytes.iter().position(|&b| b == b':').unwrap_or(bytes.len())
    };
    &authority[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of_parts(req: &Parts) -> Result<(Arc<str>, Option<&HeaderValue>), ProxyError> {
        request_host(req, &Head::read(req, 0))
    }

    fn parts(uri: &str, hosts: &[&str]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).map(|r| r.into_parts().0).expect("request")
    }

    #[test]
    fn the_host_is_the_authority_without_port_in_lower_case() {
        for (host, want) in [
            ("Example.COM", "example.com"),
            ("example.com:8443", "example.com"),
            ("example.com.", "example.com"),
            ("example.com.:80", "example.com"),
            ("10.0.0.1:80", "10.0.0.1"),
            ("[::1]:8080", "[::1]"),
            ("[FE80::1]", "[fe80::1]"),
        ] {
            let req = parts("/", &[host]);
            let (got, sent) = host_of_parts(&req).expect(host);
            assert_eq!(&*got, want, "{host}");
            assert_eq!(sent.map(|v| v.as_bytes()), Some(host.as_bytes()));
            let absolute = parts(&format!("http://{host}/x"), &["other.example"]);
            assert_eq!(&*host_of_parts(&absolute).expect(host).0, want, "{host}");
        }
    }

    #[test]
    fn hosts_with_user_info_or_bad_grammar_or_twice_are_refused() {
        for hosts in [
            &["user@example.com"][..],
            &["user:pw@example.com:80"],
            &["exa mple.com"],
            &["[::1"],
            &["a.example", "b.example"],
        ] {
            assert!(host_of_parts(&parts("/", hosts)).is_err(), "{hosts:?}");
        }
        assert!(host_of_parts(&parts("http://u@example.com/", &[])).is_err());
        assert!(
            host_of_parts(&parts("/", &[])).is_err(),
            "HTTP/1.1 needs a host"
        );
    }

    #[test]
    fn a_remembered_host_answers_only_for_the_same_value() {
        let host = |h: &str| host_of_parts(&parts("/", &[h])).map(|(got, _)| got);
        for _ in 0..2 {
            assert_eq!(
                host("Example.COM.:8080").ok().as_deref(),
                Some("example.com")
            );
            // Right after a valid value, others are checked as if it had never been seen.
            for refused in [
                "exa mple.com",
                "Example.COM.:8080@evil",
                "user@Example.COM.:8080",
            ] {
                assert!(host(refused).is_err(), "{refused}");
            }
            assert_eq!(
                host("Example.COM.:8080").ok().as_deref(),
                Some("example.com")
            );
            assert_eq!(host("other.example").ok().as_deref(), Some("other.example"));
            assert_eq!(host("[FE80::1]:80").ok().as_deref(), Some("[fe80::1]"));
        }
    }

    #[test]
    fn framing_two_parsers_could_read_differently_is_refused() {
        let framing = |fields: &[(&'static str, &'static str)]| {
            let mut req = parts("/", &["example.com"]);
            for (n, v) in fields {
                req.headers.append(
                    http::HeaderName::from_static(n),
                    http::HeaderValue::from_static(v),
                );
            }
            Head::read(&req, 1).check_framing()
        };
        assert!(framing(&[]).is_ok());
        assert!(framing(&[("content-length", "5")]).is_ok());
        assert!(framing(&[("transfer-encoding", "chunked")]).is_ok());
        for refused in [
            &[("content-length", "5"), ("transfer-encoding", "chunked")][..],
            &[("transfer-encoding", "chunked"), ("content-length", "5")],
            &[("content-length", "5"), ("content-length", "5")],
            &[("content-length", "5"), ("content-length", "6")],
        ] {
            assert!(framing(refused).is_err(), "{refused:?}");
        }
    }
}
