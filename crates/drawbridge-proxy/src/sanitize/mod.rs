//! Phase 3, sanitize: one path, one meaning (ARCHITECTURE.md §4.3), and client headers are
//! hostile (§4.4). The request's head is sanitized before routing ([`request`]); what the
//! route lets through of its parameters is screened once the route is known
//! ([`for_route`], and [`form`] for URL-encoded bodies).

pub mod headers;
pub mod params;
pub mod path;

use std::net::IpAddr;

pub use headers::*;
pub use params::*;
pub use path::*;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, header};

use crate::body::RequestBody;
use crate::context::Ctx;
use crate::rescue::ProxyError;
use crate::snapshot::{ListenerEntry, RouteEntry, Snapshot};

/// Sanitizes the request's head: removes what never reaches an upstream from its headers,
/// classifies it (gRPC, WebSocket) from what remains, normalises its path, and settles the
/// client's address.
pub fn request(
    ctx: &mut Ctx,
    snapshot: &Snapshot,
    listener: &ListenerEntry,
    req: &mut Parts,
) -> Result<(), ProxyError> {
    ctx.headers = strip_request_headers(
        &mut req.headers,
        &snapshot.header_rules,
        listener.nonstandard_header_names,
    )?;
    // Read in the same pass, from the `Content-Type` that is forwarded and decided about.
    ctx.grpc = ctx.headers.grpc;
    match normalize_path(req.uri.path()) {
        Ok(p) => {
            // The record takes it from `ctx` when the request ends.
            ctx.path = p;
            ctx.path_read = true;
        }
        Err(e) => {
            // A refused path is logged as received (bounded), for whoever investigates it.
            let raw = req.uri.path();
            let cut = raw.char_indices().nth(512).map_or(raw.len(), |(i, _)| i);
            ctx.event.path = raw[..cut].to_string();
            return Err(e.into());
        }
    }
    ctx.client = client_ip(
        &snapshot.server.trusted_proxies,
        ctx.client,
        ctx.headers.forwarded_for.as_deref(),
    );
    Ok(())
}

/// What the route decides of the request's headers and query: the held headers it lets
/// through are put back, and its query is screened for credentials and method overrides.
pub fn for_route(ctx: &mut Ctx, route: &RouteEntry, req: &mut Parts) -> Result<(), ProxyError> {
    if !ctx.headers.held.is_empty() {
        ctx.headers
            .restore(&route.config.pass_headers, &mut req.headers);
    }
    if let (Some(query), Some(screen)) = (req.uri.query(), parameter_screen(route)) {
        ctx.query = screen_query(query, &screen)?;
    }
    Ok(())
}

/// What a route screens request parameters (query, form fields) for; `None` when nothing.
fn parameter_screen(route: &RouteEntry) -> Option<QueryScreen<'_>> {
    let authenticated = matches!(
        route.config.admission,
        drawbridge_config::Admission::Authenticated { .. }
    );
    let screen = QueryScreen {
        credentials: authenticated.then_some(route.config.query_credentials),
        extra_credentials: &route.credential_params,
        method_override: (authenticated || route.config.methods.is_some())
            .then_some(route.config.method_override),
    };
    (screen.credentials.is_some() || screen.method_override.is_some()).then_some(screen)
}

/// Largest form body read whole to screen its fields.
const MAX_SCREENED_FORM: u64 = 1 << 20;

/// The body of a URL-encoded form on a route that screens parameters, screened; `Ok(None)`
/// for every other body. Frameworks read `_method` and `access_token` in form fields as in
/// the query (Rails, Laravel, RFC 6750 §2.2), so the body is read whole (bounded), screened
/// the same way, and forwarded as read or stripped.
pub async fn form(
    route: &RouteEntry,
    body: hyper::body::Incoming,
    limit: u64,
    idle: std::time::Duration,
    headers: &mut HeaderMap,
) -> Result<Result<RequestBody, hyper::body::Incoming>, ProxyError> {
    use http_body_util::BodyExt;
    let Some(screen) = parameter_screen(route).filter(|_| is_form(headers)) else {
        return Ok(Err(body));
    };
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
    Ok(Ok(match screen_query(text, &screen)? {
        None => RequestBody::full(bytes),
        Some(kept) => {
            headers.remove(header::TRANSFER_ENCODING);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(kept.len()));
            RequestBody::full(bytes::Bytes::from(kept))
        }
    }))
}

/// Whether the body is a URL-encoded form (`application/x-www-form-urlencoded`, any case,
/// with or without parameters).
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| media_type(v).eq_ignore_ascii_case(b"application/x-www-form-urlencoded"))
}

/// The client's address for policies: the peer, or the nearest address a trusted proxy
/// put in `X-Forwarded-For`.
fn client_ip(trusted: &[ipnet::IpNet], peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
    if !is_trusted(trusted, peer) {
        return peer;
    }
    forwarded_for
        .and_then(|chain| chain.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

/// Whether `ip` (an IPv4-mapped IPv6 address read as IPv4) is in one of `nets`.
pub fn is_trusted(nets: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_config::NonstandardHeaderNames;
    use http::HeaderName;

    /// The built-in rules on a listener that drops nonstandard names.
    pub(super) fn strip(h: &mut HeaderMap) -> Result<ClientHeaders, HeaderError> {
        strip_request_headers(h, &HeaderRules::default(), NonstandardHeaderNames::Drop)
    }

    fn ok(raw: &str) -> (String, String) {
        let p = normalize_path(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
        let encoded = p.encoded().to_string();
        (p.decoded, encoded)
    }

    #[test]
    fn the_header_pass_removes_expect_and_reads_grpc_from_the_content_type() {
        let h = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (n, v) in pairs {
                map.append(
                    HeaderName::from_bytes(n.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                );
            }
            map
        };
        let mut sent = h(&[
            ("expect", "100-continue"),
            ("content-type", "application/grpc+proto"),
            ("accept", "*/*"),
        ]);
        let seen = strip(&mut sent).expect("ok");
        assert!(!sent.contains_key(header::EXPECT));
        assert!(seen.grpc);
        assert_eq!(sent.len(), 2, "{sent:?}");
        for (media, grpc) in [
            ("application/grpc", true),
            ("Application/GRPC-Web", true),
            ("application/grpc; charset=utf-8", true),
            ("application/grpcx", false),
            ("application/json", false),
            ("text/plain", false),
        ] {
            let mut sent = h(&[("content-type", media)]);
            assert_eq!(strip(&mut sent).expect("ok").grpc, grpc, "{media}");
            assert_eq!(sent.len(), 1);
        }
        let mut none = h(&[("accept", "*/*")]);
        assert!(!strip(&mut none).expect("ok").grpc);
        // Named in `Connection`, the type is removed: the call is not gRPC any more.
        let mut named = h(&[
            ("content-type", "application/grpc"),
            ("connection", "content-type"),
        ]);
        assert!(!strip(&mut named).expect("ok").grpc);
        assert!(!named.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn a_name_is_always_stripped_only_when_stripped_and_passed_by_no_route() {
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).expect("name");
        let rules = HeaderRules::default();
        assert!(rules.always_strips(&name("x-drawbridge-identity")));
        assert!(rules.always_strips(&name("x-forwarded-user")));
        for kept in ["authorization", "x-gateway-assertion", "accept"] {
            assert!(!rules.strips(&name(kept)), "{kept}");
            assert!(!rules.always_strips(&name(kept)), "{kept}");
        }
        // A route that lets it through puts it back: sanitize alone does not keep it out.
        let passed = HeaderRules::new(vec![], vec![], vec!["x-drawbridge-identity".into()]);
        assert!(passed.strips(&name("x-drawbridge-identity")));
        assert!(!passed.always_strips(&name("x-drawbridge-identity")));
        // A credential header the authenticators read is not removed in sanitize.
        let exempt = HeaderRules::new(vec!["x-api-key".into()], vec![name("x-api-key")], vec![]);
        assert!(!exempt.always_strips(&name("x-api-key")));
        // A name the rules list but the pass keeps (it reads and forwards `Content-Type`).
        let listed = HeaderRules::new(vec!["content-type".into()], vec![], vec![]);
        assert!(listed.strips(&name("content-type")));
        assert!(!listed.always_strips(&name("content-type")));
        // Hop-by-hop names and names with `_` are removed on every listener.
        assert!(rules.always_strips(&name("te")));
        assert!(rules.always_strips(&name("x_drawbridge_identity")));
    }

    #[test]
    fn the_header_pass_sees_a_cookie_whether_or_not_it_is_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!strip(&mut h).expect("ok").cookie);
        h.insert(header::COOKIE, HeaderValue::from_static("a=1"));
        assert!(strip(&mut h).expect("ok").cookie);
        assert!(h.contains_key(header::COOKIE));
        let rules = HeaderRules::new(vec!["cookie".into()], vec![], vec![]);
        let seen = strip_request_headers(&mut h, &rules, NonstandardHeaderNames::Drop).expect("ok");
        assert!(seen.cookie);
        assert!(!h.contains_key(header::COOKIE));
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
            let twice = normalize_path(once.encoded()).expect("valid");
            assert_eq!(once, twice, "{raw}");
        }
    }

    #[test]
    fn every_hop_by_hop_name_is_found_and_no_other() {
        for (i, name) in headers::HOP_BY_HOP.iter().enumerate() {
            assert_eq!(headers::hop_by_hop(name.as_str()), Some(i), "{name}");
        }
        for name in [
            "host",
            "connections",
            "te2",
            "upgrade-insecure-requests",
            "",
        ] {
            assert_eq!(headers::hop_by_hop(name), None, "{name}");
        }
    }

    /// An upstream's hop-by-hop headers and the ones its `Connection` lists stop here, in
    /// any case and order; a `101` keeps `Upgrade` and `Connection`.
    #[test]
    fn response_hop_by_hop_headers_stop_at_the_proxy() {
        let response = |connection: &'static str| {
            let mut h = HeaderMap::new();
            for (k, v) in [
                ("content-type", "text/plain"),
                ("connection", connection),
                ("keep-alive", "timeout=5"),
                ("x-internal", "1"),
                ("x-other", "2"),
                ("proxy-authenticate", "Basic"),
                ("trailer", "x-checksum"),
                ("upgrade", "h2c"),
                ("transfer-encoding", "chunked"),
                ("set-cookie", "a=b"),
            ] {
                h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            h
        };
        let left = |h: &HeaderMap| {
            let mut names: Vec<String> = h.keys().map(|k| k.to_string()).collect();
            names.sort_unstable();
            names
        };
        for connection in [
            "keep-alive, X-Internal",
            "x-internal,close",
            "Close , X-INTERNAL , Keep-Alive",
            "upgrade, x-internal, te",
        ] {
            let mut h = response(connection);
            strip_response_headers(&mut h, false);
            assert_eq!(
                left(&h),
                ["content-type", "set-cookie", "x-other"],
                "{connection}"
            );
        }
        let mut h = response("upgrade");
        strip_response_headers(&mut h, true);
        assert_eq!(
            left(&h),
            [
                "connection",
                "content-type",
                "set-cookie",
                "upgrade",
                "x-internal",
                "x-other"
            ]
        );
        // A Connection header naming only options removes nothing else.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_response_headers(&mut h, false);
        assert_eq!(left(&h), ["content-length"]);
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
        use http::HeaderName;
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
                    prop_assert!(!p.encoded().to_ascii_lowercase().contains("%2e") && !p.encoded().to_ascii_lowercase().contains("%2f"));
                    let again = normalize_path(p.encoded());
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
