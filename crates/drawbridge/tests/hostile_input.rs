//! Requests that try to put something in front of an upstream that it may trust: identity
//! headers in every ecosystem's spelling, request trailers, look-alike paths and query
//! parameters, credentials and method overrides in the query, two content types. Each is
//! sent through the real server; what the upstream received is asserted, and nothing at all
//! where the request is refused.

use std::time::Duration;

use bytes::Bytes;
use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;
use drawbridge_testkit::jwt::{KeyType, SigningKey, jwks, now};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::json;

const ISS: &str = "https://idp.test/";

struct Setup {
    h: Harness,
    up: RecordingUpstream,
    token: String,
}

/// A JWT route on `/api`, a public catch-all, and `extra` TOML (more routes, settings); the
/// listener's `nonstandard_header_names` where given.
async fn setup(nonstandard_header_names: Option<&str>, api_extra: &str, extra: &str) -> Setup {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::P256, "k1");
    let n = now();
    let token = key.sign(&json!({
        "iss": ISS, "aud": "drawbridge", "sub": "alice", "iat": n, "exp": n + 300,
    }));
    let cfg = config(&format!(
        r#"[[authenticators]]
name = "corp"
type = "jwt"
issuer = "{ISS}"
audiences = ["drawbridge"]
algorithms = ["ES256"]
jwks_file = "jwks.json"

[[upstreams]]
name = "app"
endpoints = ["{url}"]
protocol = "http2"

[[routes]]
name = "api"
prefix = "/api"
upstream = "app"
authenticate = ["corp"]
authorize = false
{api_extra}

[[routes]]
name = "public"
prefix = "/"
upstream = "app"
public = true

{extra}
"#,
        url = up.url()
    ));
    let cfg = match nonstandard_header_names {
        Some(v) => cfg.listener("nonstandard_header_names", v),
        None => cfg,
    };
    let h = Harness::start_with(&cfg, &[("jwks.json", &jwks(&[&key]))]).await;
    Setup { h, up, token }
}

fn names(headers: &HeaderMap) -> Vec<String> {
    headers.keys().map(|k| k.as_str().to_string()).collect()
}

/// Identity and verdict headers of nginx, Envoy, Traefik, oauth2-proxy, Pomerium, Authelia,
/// cloud load balancers and frameworks, each in the spellings CGI-style servers fold together.
const SPOOFED: &[&str] = &[
    "X-Auth-User",
    "X-Auth-Roles",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Preferred-Username",
    "X-Auth-Request-Access-Token",
    "Remote-User",
    "Remote-Groups",
    "Remote-Email",
    "X-Remote-User",
    "X-User",
    "X-User-Id",
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Access-Token",
    "X-SSL-Client-Verify",
    "X-SSL-Client-S-DN",
    "X-Client-Cert",
    "X-Client-Certificate",
    "X-Client-Verify",
    "Ssl-Client-Cert",
    "Ssl-Client-Verify",
    "X-Envoy-Internal",
    "X-Envoy-External-Address",
    "X-Middleware-Subrequest",
    "X-Proxy-User",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "X-Original-Method",
    "X-Original-Host",
    "X-Forwarded-Client-Cert",
    "Cf-Access-Authenticated-User-Email",
    "X-Goog-Authenticated-User-Email",
    "X-Amzn-Oidc-Identity",
    "X-Ms-Client-Principal-Name",
    "X-Pomerium-Claim-Email",
    "X-Webauth-User",
    "X-Authenticated-Userid",
    "X-Consumer-Username",
    "X-Userinfo",
    "X-Cluster-Client-Ip",
    "Cf-Connecting-Ip",
    "True-Client-Ip",
    "X-Client-Ip",
];

fn spellings(name: &str) -> [String; 3] {
    [
        name.to_string(),
        name.replace('-', "_"),
        name.replace('-', "."),
    ]
}

#[tokio::test]
async fn identity_headers_in_every_spelling_never_reach_the_upstream() {
    let s = setup(None, "", "").await;
    // In batches that stay under the listener's header count limit.
    for (version, batch) in ["h1", "h2"]
        .into_iter()
        .flat_map(|v| SPOOFED.chunks(24).map(move |b| (v, b)))
    {
        let mut req = Request::get(s.h.url("/api/x"))
            .header("authorization", format!("Bearer {}", s.token))
            .header("x-app", "kept");
        for name in batch {
            for spelled in spellings(name) {
                req = req.header(spelled.as_str(), "root");
            }
        }
        let req = req.body(Full::new(Bytes::new())).expect("request");
        let client = if version == "h1" {
            h1_client()
        } else {
            h2_client()
        };
        s.up.clear();
        let reply = send(&client, req).await;
        assert_eq!(reply.status, StatusCode::OK, "{version}: {}", reply.body);
        let got = s.up.last().expect("forwarded");
        let seen = names(&got.headers);
        for name in batch {
            for spelled in spellings(name) {
                let lower = spelled.to_ascii_lowercase();
                // The forwarding headers Drawbridge sets itself are present with its values.
                if ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"]
                    .contains(&lower.as_str())
                {
                    continue;
                }
                assert!(
                    !seen.contains(&lower),
                    "{version}: {spelled} reached the upstream: {seen:?}"
                );
            }
        }
        assert_eq!(got.header("x-app"), Some("kept"), "{version}");
        assert!(got.header("x-drawbridge-identity").is_some(), "{version}");
    }
}

#[tokio::test]
async fn names_with_underscores_or_dots_are_dropped_or_refused_as_the_listener_says() {
    // Default: dropped, the request served.
    let s = setup(None, "", "").await;
    let req = b"GET /public HTTP/1.1\r\nHost: x\r\nX_App_Flag: 1\r\nX.Other: 2\r\nTransfer_Encoding: chunked\r\nX-Kept: 3\r\nConnection: close\r\n\r\n";
    let reply = raw(s.h.addr, req, Duration::from_secs(2)).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let got = s.up.last().expect("forwarded");
    let seen = names(&got.headers);
    assert!(seen.contains(&"x-kept".to_string()));
    for bad in ["x_app_flag", "x.other", "transfer_encoding"] {
        assert!(!seen.contains(&bad.to_string()), "{bad}: {seen:?}");
    }

    // `refuse`: 400 and nothing forwarded.
    let s = setup(Some("refuse"), "", "").await;
    let reply = raw(s.h.addr, req, Duration::from_secs(2)).await;
    assert_eq!(status_of(&reply), 400, "{reply}");
    assert_eq!(s.up.count(), 0);

    // `forward`: ordinary names pass, spellings of stripped names still never do.
    let s = setup(Some("forward"), "", "").await;
    let req = b"GET /public HTTP/1.1\r\nHost: x\r\nX_App_Flag: 1\r\nX_Auth_User: root\r\nx.forwarded.user: root\r\nConnection: close\r\n\r\n";
    let reply = raw(s.h.addr, req, Duration::from_secs(2)).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let seen = names(&s.up.last().expect("forwarded").headers);
    assert!(seen.contains(&"x_app_flag".to_string()), "{seen:?}");
    assert!(!seen.contains(&"x_auth_user".to_string()), "{seen:?}");
    assert!(!seen.contains(&"x.forwarded.user".to_string()), "{seen:?}");
}

#[tokio::test]
async fn the_strip_list_extends_and_a_route_passes_what_it_names() {
    let up = RecordingUpstream::start().await;
    let cfg = config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"sso\"\nprefix = \"/sso\"\nupstream = \"app\"\npublic = true\npass_headers = [\"x-auth-request-email\"]\n\n\
         [[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n",
        up.url()
    ))
    .server("strip_headers", strings(&["x-tenant-admin", "x-corp-*"]));
    let h = Harness::start(&cfg).await;
    let hdrs = [
        ("x-auth-request-email", "a@b"),
        ("x_tenant_admin", "1"),
        ("x-tenant-admin", "1"),
        ("x-corp-role", "boss"),
        ("x-app", "1"),
    ];
    assert_eq!(
        get_with(&h.url("/sso/x"), &hdrs).await.status,
        StatusCode::OK
    );
    let got = up.last().expect("forwarded");
    assert_eq!(got.header("x-auth-request-email"), Some("a@b"));
    assert_eq!(
        names(&got.headers)
            .iter()
            .filter(|n| n.contains("tenant") || n.contains("corp"))
            .count(),
        0
    );
    assert_eq!(
        get_with(&h.url("/other"), &hdrs).await.status,
        StatusCode::OK
    );
    let got = up.last().expect("forwarded");
    assert_eq!(
        got.header("x-auth-request-email"),
        None,
        "only the route that names it passes it"
    );
    assert_eq!(got.header("x-app"), Some("1"));
}

type TrailerBody = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
>;

fn with_trailers(trailers: &[(&str, &str)]) -> TrailerBody {
    let mut t = HeaderMap::new();
    for (k, v) in trailers {
        t.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    StreamBody::new(futures_util::stream::iter(vec![
        Ok(Frame::data(Bytes::from_static(b"payload"))),
        Ok(Frame::trailers(t)),
    ]))
}

async fn post_with_trailers(s: &Setup, path: &str, trailers: &[(&str, &str)]) -> StatusCode {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TrailerBody>();
    let req = Request::post(s.h.url(path))
        .header("authorization", format!("Bearer {}", s.token))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(with_trailers(trailers))
        .expect("request");
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("in time")
        .expect("response");
    let status = res.status();
    let _ = res.into_body().collect().await;
    status
}

const HOSTILE_TRAILERS: &[(&str, &str)] = &[
    ("authorization", "Bearer someone-else"),
    ("x-drawbridge-identity", "forged"),
    ("x-drawbridge-user", "root"),
    ("x-forwarded-for", "6.6.6.6"),
    ("x-request-id", "chosen"),
    ("x-auth-user", "root"),
    ("x_auth_user", "root"),
    ("x-checksum", "abc"),
];

#[tokio::test]
async fn request_trailers_are_dropped_unless_the_route_wants_them_and_then_sanitised() {
    let s = setup(None, "", "[[routes]]\nname = \"stream\"\nprefix = \"/stream\"\nupstream = \"app\"\nauthenticate = [\"corp\"]\nauthorize = false\nrequest_trailers = true\n").await;
    assert_eq!(
        post_with_trailers(&s, "/api/x", HOSTILE_TRAILERS).await,
        StatusCode::OK
    );
    let got = s.up.last().expect("forwarded");
    assert_eq!(&got.body[..], b"payload");
    assert!(
        got.trailers.is_none(),
        "dropped by default: {:?}",
        got.trailers
    );

    assert_eq!(
        post_with_trailers(&s, "/stream/x", HOSTILE_TRAILERS).await,
        StatusCode::OK
    );
    let got = s.up.last().expect("forwarded");
    let t = got.trailers.clone().expect("the route passes trailers");
    assert_eq!(
        names(&t),
        ["x-checksum"],
        "only the harmless trailer passes"
    );
    // The headers are Drawbridge's, whatever the trailers said.
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_ne!(got.header("x-drawbridge-identity"), Some("forged"));
}

#[tokio::test]
async fn look_alike_paths_are_refused() {
    let s = setup(None, "", "").await;
    for path in [
        "/public/..%EF%BC%8Fapi/users",
        "/public/%EF%BC%8E%EF%BC%8E/api/users",
        "/public/%E2%80%A5/api/users",
        "/public/%E2%80%A4%E2%80%A4/api",
        "/public/..%EF%BC%BCapi",
        "/public/%EF%B9%92%EF%B9%92/api",
        "/public/%EF%BC%85%32%45%EF%BC%85%32%45/api",
    ] {
        for client in [h1_client(), h2_client()] {
            s.up.clear();
            let req = Request::get(s.h.url(path))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let reply = send(&client, req).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(s.up.count(), 0, "{path} reached the upstream");
        }
    }
    // Non-ASCII that creates no separator is served, as the client spelled it.
    assert_eq!(
        get(&s.h.url("/public/caf%C3%A9")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        s.up.last().map(|r| r.target),
        Some("/public/caf%C3%A9".into())
    );
}

#[tokio::test]
async fn credentials_in_the_query_are_refused_or_stripped() {
    let s = setup(None, "", "[[routes]]\nname = \"lenient\"\nprefix = \"/lenient\"\nupstream = \"app\"\nauthenticate = [\"corp\"]\nauthorize = false\nquery_credentials = \"strip\"\n").await;
    let auth = [("authorization", format!("Bearer {}", s.token))];
    let auth: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for q in [
        "access_token=other",
        "a=1&Access_Token=other",
        "access_token[]=other",
        "%61ccess_token=other",
        "a=1;access_token=other",
        "ACCESS-TOKEN=other",
        "api_key=k",
        "apikey=k",
        "id_token=t",
    ] {
        s.up.clear();
        let reply = get_with(&s.h.url(&format!("/api/x?{q}")), &auth).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(s.up.count(), 0, "{q}");
    }
    let reply = get_with(&s.h.url("/lenient/x?a=1&access_token=other&b=2"), &auth).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        s.up.last().map(|r| r.target),
        Some("/lenient/x?a=1&b=2".into())
    );
    // Public routes carry no caller's credential: their queries are the upstream's business.
    assert_eq!(
        get(&s.h.url("/public/x?access_token=t")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn method_overrides_are_refused_where_the_method_matters() {
    let s = setup(None,
        "",
        "[[routes]]\nname = \"reads\"\nprefix = \"/reads\"\nmethods = [\"GET\"]\nupstream = \"app\"\npublic = true\n\n\
         [[routes]]\nname = \"forms\"\nprefix = \"/forms\"\nupstream = \"app\"\nauthenticate = [\"corp\"]\nauthorize = false\nmethod_override = \"strip\"\n",
    )
    .await;
    let token = format!("Bearer {}", s.token);
    for q in [
        "_method=DELETE",
        "_METHOD=delete",
        "_method[]=DELETE",
        "x-http-method-override=DELETE",
        "a=1;_method=PUT",
    ] {
        for path in ["/api/x", "/reads/x"] {
            s.up.clear();
            let reply = get_with(
                &s.h.url(&format!("{path}?{q}")),
                &[("authorization", &token)],
            )
            .await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}?{q}");
            assert_eq!(s.up.count(), 0, "{path}?{q}");
        }
    }
    let reply = get_with(
        &s.h.url("/forms/x?_method=DELETE&a=1"),
        &[("authorization", &token)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(s.up.last().map(|r| r.target), Some("/forms/x?a=1".into()));
}

#[tokio::test]
async fn two_content_types_and_padded_values_are_refused() {
    let s = setup(None, "", "").await;
    let req = format!(
        "POST /api/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Type: application/grpc\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        s.token
    );
    let reply = raw(s.h.addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(status_of(&reply), 400, "{reply}");
    assert_eq!(s.up.count(), 0);

    // HTTP/2 forbids leading and trailing white space in values (RFC 9113 §8.2.1).
    let req = Request::get(s.h.url("/public/x"))
        .header("x-app", HeaderValue::from_static(" padded "))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let reply = send(&h2_client(), req).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn an_exact_path_owns_its_trailing_slash_forms() {
    let s = setup(None,
        "",
        "[[routes]]\nname = \"admin\"\npath = \"/admin\"\nupstream = \"app\"\nauthenticate = [\"corp\"]\nauthorize = false\n\n\
         [[routes]]\nname = \"orders\"\npath = \"/orders/{id}\"\nupstream = \"app\"\nauthenticate = [\"corp\"]\nauthorize = false\n",
    )
    .await;
    for path in [
        "/admin",
        "/admin/",
        "/admin/.",
        "/admin//",
        "/x/../admin/",
        "/orders/1",
        "/orders/1/",
        "/orders/1/.",
    ] {
        s.up.clear();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = raw(s.h.addr, req.as_bytes(), Duration::from_secs(2)).await;
        assert_eq!(
            status_of(&reply),
            401,
            "{path} fell to a less protected route: {reply}"
        );
        assert_eq!(s.up.count(), 0, "{path}");
    }
    // Below the exact path is not the exact path.
    assert_eq!(get(&s.h.url("/admin/x")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn every_refused_request_leaves_an_access_record_naming_its_host() {
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let cfg = config(&upstream_and_route("app", &up.url()))
        .server("access_log", log.display().to_string());
    let h = Harness::start(&cfg).await;
    let big = format!(
        "GET /x HTTP/1.1\r\nHost: big.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let requests: Vec<(Vec<u8>, u16)> = vec![
        (
            b"GET /a b HTTP/1.1\r\nHost: space.test\r\n\r\n".to_vec(),
            400,
        ),
        (big.into_bytes(), 431),
        (
            b"GET /x HTTP/1.1\r\nHost: ctl.test\r\nX-A: a\x01b\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"GET /a/..%2fb HTTP/1.1\r\nHost: Path.Test:8080\r\nConnection: close\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"GET /ok HTTP/1.1\r\nHost: ok.test\r\nConnection: close\r\n\r\n".to_vec(),
            200,
        ),
    ];
    for (req, status) in &requests {
        let reply = raw(h.addr, req, Duration::from_secs(2)).await;
        assert_eq!(status_of(&reply), *status, "{reply}");
    }
    let lines = json_lines(&log, requests.len(), |_| true).await;
    assert_eq!(lines.len(), requests.len(), "{lines:?}");
    let mut statuses: Vec<u64> = lines.iter().filter_map(|l| l["status"].as_u64()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400, 400, 400, 431]);
    for l in &lines {
        assert!(l.get("host").is_some(), "{l}");
        if l["status"] != 200 {
            assert!(l["phase"].is_string() && l["reason"].is_string(), "{l}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l["host"] == "path.test" && l["phase"] == "sanitize")
    );
    assert!(
        lines
            .iter()
            .any(|l| l["host"] == "ok.test" && l["status"] == 200)
    );
    assert_eq!(lines.iter().filter(|l| l["phase"] == "parse").count(), 3);
}

#[tokio::test]
async fn a_public_route_can_be_limited_to_source_networks_by_policy() {
    let up = RecordingUpstream::start().await;
    let cfg = config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"hooks\"\nprefix = \"/hooks\"\nupstream = \"app\"\npublic = true\nauthorize = true\n\n\
         [[routes]]\nname = \"partner\"\nprefix = \"/partner\"\nupstream = \"app\"\npublic = true\nauthorize = true\n\n\
         [[routes]]\nname = \"open\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n\n\
         [policy]\nfiles = [\"p.cedar\"]\n",
        up.url()
    ))
    .server("trusted_proxies", strings(&["127.0.0.2"]));
    let policies = "\
@id(\"hooks-from-loopback\")\n\
permit (principal is Anonymous, action == Action::\"POST\", resource == Route::\"hooks\")\n\
when { context.ip.isInRange(ip(\"127.0.0.0/8\")) };\n\
@id(\"partner-network\")\n\
permit (principal is Anonymous, action, resource == Route::\"partner\")\n\
when { context.ip.isInRange(ip(\"192.0.2.0/24\")) };\n";
    let h = Harness::start_with(&cfg, &[("p.cedar", policies)]).await;
    let post = |path: &str| {
        Request::post(h.url(path))
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    // From an allowed network, the allowed action.
    assert_eq!(
        send(&h1_client(), post("/hooks/github")).await.status,
        StatusCode::OK
    );
    assert_eq!(up.last().map(|r| r.target), Some("/hooks/github".into()));
    // Another action, or a network outside the range: 403, nothing forwarded.
    up.clear();
    assert_eq!(
        get(&h.url("/hooks/github")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&h1_client(), post("/partner/x")).await.status,
        StatusCode::FORBIDDEN
    );
    // X-Forwarded-For counts only from a trusted proxy (127.0.0.1 is not one).
    let r = get_with(&h.url("/partner/x"), &[("x-forwarded-for", "192.0.2.7")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(up.count(), 0);
    // From the trusted proxy, the address it names decides.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind");
    let mut s = sock.connect(h.addr).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /partner/x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.7\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert_eq!(up.count(), 1);
    // A public route without `authorize` stays open to all.
    assert_eq!(get(&h.url("/anything")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn chunk_extensions_are_bounded_and_never_forwarded() {
    let s = setup(None, "", "").await;
    let post = |ext: &str| {
        format!(
            "POST /public/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             7;{ext}\r\npayload\r\n0\r\n\r\n"
        )
    };
    // A short extension is read past; the upstream gets the body, not the extension.
    let reply = raw(
        s.h.addr,
        post("name=value").as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let got = s.up.last().expect("forwarded");
    assert_eq!(&got.body[..], b"payload");
    // A flood of extension bytes is refused; no complete request reaches the upstream.
    s.up.clear();
    let big = format!("x={}", "a".repeat(20 * 1024));
    let reply = raw(s.h.addr, post(&big).as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(status_of(&reply), 400, "{reply}");
    assert!(
        s.up.received().iter().all(|r| r.body.is_empty()),
        "the body got through"
    );
}

#[tokio::test]
async fn form_fields_that_override_the_method_or_carry_a_credential_are_screened() {
    let s = setup(None,
        "",
        "[[routes]]\nname = \"forms\"\nprefix = \"/forms\"\nupstream = \"app\"\nauthenticate = [\"corp\"]\nauthorize = false\nmethod_override = \"strip\"\nquery_credentials = \"strip\"\n",
    )
    .await;
    let post = |path: &str, content_type: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            s.token,
            body.len()
        )
    };
    for (content_type, body) in [
        ("application/x-www-form-urlencoded", "a=1&_method=DELETE"),
        (
            "application/x-www-form-urlencoded; charset=utf-8",
            "_METHOD=delete&a=1",
        ),
        ("Application/X-WWW-Form-Urlencoded", "a=1;_method[]=PUT"),
        (
            "application/x-www-form-urlencoded",
            "access_token=someone-else",
        ),
        ("application/x-www-form-urlencoded", "a%00=1"),
    ] {
        s.up.clear();
        let reply = raw(
            s.h.addr,
            post("/api/x", content_type, body).as_bytes(),
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(status_of(&reply), 400, "{content_type}: {body}: {reply}");
        assert_eq!(s.up.count(), 0, "{body}");
    }
    // Ordinary forms pass untouched; other content types are the upstream's business.
    let reply = raw(
        s.h.addr,
        post(
            "/api/x",
            "application/x-www-form-urlencoded",
            "a=1&method=card",
        )
        .as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert_eq!(
        &s.up.last().expect("forwarded").body[..],
        b"a=1&method=card"
    );
    let reply = raw(
        s.h.addr,
        post("/api/x", "application/json", "{\"_method\":\"x\"}").as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    // A route that strips: the fields are gone, the length follows.
    let reply = raw(
        s.h.addr,
        post(
            "/forms/x",
            "application/x-www-form-urlencoded",
            "a=1&_method=DELETE&access_token=t&b=2",
        )
        .as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let got = s.up.last().expect("forwarded");
    assert_eq!(&got.body[..], b"a=1&b=2");
    assert_eq!(got.method, http::Method::POST);
}

/// `max_header_bytes` holds however the head arrives: HTTP/1.1's parser looked at the size
/// only while a head was incomplete, so a head that came whole in one read (or in reads
/// that happened to end at its end) went through; HTTP/2's header lists likewise.
#[tokio::test]
async fn heads_over_max_header_bytes_are_refused_however_they_arrive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = RecordingUpstream::start().await;
    let h = Harness::start(
        &config(&upstream_and_route("app", &up.url())).limits("max_header_bytes", 16384),
    )
    .await;
    let head = |value_len: usize| {
        format!(
            "GET /x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(value_len)
        )
        .into_bytes()
    };
    let over = head(17_000);
    // Whole, in one write; and in pieces of every size the reads might take.
    for piece in [over.len(), 8192, 4096, 1000, 16384, 16385] {
        let mut s = tokio::net::TcpStream::connect(h.addr)
            .await
            .expect("connect");
        for chunk in over.chunks(piece) {
            if s.write_all(chunk).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with("HTTP/1.1 431"),
            "pieces of {piece}: {reply}"
        );
    }
    // Just under the limit: served.
    let under = head(16_000);
    let reply = raw(h.addr, &under, Duration::from_secs(2)).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    // HTTP/2: a header list over the limit.
    let client = h2_client();
    let req = Request::get(h.url("/x"))
        .header("x-big", "a".repeat(17_000))
        .body(Full::new(Bytes::new()))
        .expect("request");
    match client.request(req).await {
        Ok(res) => assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(e.to_string().contains("header"), "{e}"),
    }
    assert_eq!(
        up.count(),
        1,
        "only the request under the limit was forwarded"
    );
}
