//! The HTTP pipeline through the real server against a recording upstream.

use std::time::Duration;

use bytes::Bytes;
use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;
use http::{Method, Request, StatusCode, Version};
use http_body_util::Full;

#[tokio::test]
async fn forwards_and_sets_forwarding_headers() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&upstream_and_route("app", &up.url()))).await;
    let r = get(&h.url("/hello/world?x=1&y=%20")).await;
    assert_eq!(r.status, StatusCode::OK);
    let got = up.last().expect("upstream saw the request");
    assert_eq!(got.target, "/hello/world?x=1&y=%20");
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        got.header("x-forwarded-host"),
        Some(h.addr.to_string().as_str())
    );
    let id = got.header("x-request-id").expect("request id");
    assert_eq!(id.len(), 32);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn no_route_is_404_and_contacts_no_upstream() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"app\"\npublic = true\n",
        up.url()
    )))
    .await;
    for path in ["/", "/apix", "/admin", "/API"] {
        assert_eq!(
            get(&h.url(path)).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert_eq!(get(&h.url("/api/x")).await.status, StatusCode::OK);
    assert_eq!(up.count(), 1);
}

/// Request targets whose meaning is ambiguous (ARCHITECTURE.md §4.3): each must get 400.
const AMBIGUOUS_PATHS: &[&str] = &[
    "/public/..%2fadmin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/admin%00",
    "/admin;x",
    "/admin%5c..%5cx",
    "/a%zz",
    "/%ff%fe",
    "/..",
    "/%252e%252e/admin",
];

#[tokio::test]
async fn ambiguous_paths_are_refused_and_never_reach_the_upstream() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&upstream_and_route("app", &up.url()))).await;
    for path in AMBIGUOUS_PATHS {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = raw(h.addr, req.as_bytes(), Duration::from_secs(2)).await;
        assert_eq!(status_of(&reply), 400, "{path}: {reply}");
    }
    // Non-UTF-8 bytes on the wire never get through either.
    let reply = raw(
        h.addr,
        b"GET /caf\xe9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(status_of(&reply), 400, "{reply}");
    assert_eq!(up.count(), 0, "the upstream saw {:?}", up.received());
}

#[tokio::test]
async fn paths_are_normalised_once_and_forwarded_as_matched() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"public\"\nprefix = \"/public\"\nupstream = \"app\"\npublic = true\n",
        up.url()
    )))
    .await;
    for (sent, status, forwarded) in [
        ("//public/x", 200, Some("/public/x")),
        ("/public/./a/../b", 200, Some("/public/b")),
        ("/public/a%20b", 200, Some("/public/a%20b")),
        ("/%70ublic/x", 200, Some("/public/x")),
        ("/admin#x", 404, None),
        ("/public/x#frag", 200, Some("/public/x")),
        ("/public/../admin", 404, None),
        ("//admin", 404, None),
        // The query travels as sent, after a path in normal form or one made so.
        ("/public/x?a=1&b=%20c", 200, Some("/public/x?a=1&b=%20c")),
        ("/public/./y?a=/../z", 200, Some("/public/y?a=/../z")),
        ("/public/x?", 200, Some("/public/x?")),
        ("/public/x?q#frag", 200, Some("/public/x?q")),
        ("http://x/public/x?q", 200, Some("/public/x?q")),
        ("http://x//public/x?q", 200, Some("/public/x?q")),
        // Rewritten to the same length: still the normal form that goes.
        ("/public/%c3%a9?q", 200, Some("/public/%C3%A9?q")),
    ] {
        up.clear();
        let req = format!("GET {sent} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let reply = raw(h.addr, req.as_bytes(), Duration::from_secs(2)).await;
        assert_eq!(status_of(&reply), status, "{sent}: {reply}");
        assert_eq!(
            up.last().map(|r| r.target),
            forwarded.map(String::from),
            "{sent}"
        );
    }
}

#[tokio::test]
async fn spoofed_identity_and_forwarding_headers_never_reach_the_upstream() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&upstream_and_route("app", &up.url()))).await;
    let req = "GET /x HTTP/1.1\r\nHost: x\r\n\
        X-Forwarded-For: 6.6.6.6\r\nx_forwarded_for: 6.6.6.7\r\nX-FORWARDED-HOST: evil\r\nX-Forwarded-Proto: https\r\n\
        X-Forwarded-Prefix: /admin\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nx_real_ip: 6.6.6.6\r\n\
        X-Drawbridge-User: admin\r\nx_drawbridge_groups: root\r\nX-Request-Id: chosen\r\nX-Original-URL: /admin\r\n\
        Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\n\
        Connection: close\r\n\r\n";
    let reply = raw(h.addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let got = up.last().expect("forwarded");
    let names: Vec<String> = got.headers.keys().map(|k| k.as_str().to_string()).collect();
    for bad in [
        "x_forwarded_for",
        "x-forwarded-prefix",
        "forwarded",
        "x-real-ip",
        "x_real_ip",
        "x-drawbridge-user",
        "x_drawbridge_groups",
        "x-original-url",
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "connection",
    ] {
        assert!(
            !names.iter().any(|n| n == bad),
            "{bad} reached the upstream: {names:?}"
        );
    }
    assert_eq!(got.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(got.header("x-forwarded-host"), Some("x"));
    assert_eq!(got.header("x-forwarded-proto"), Some("http"));
    assert_ne!(got.header("x-request-id"), Some("chosen"));
}

#[tokio::test]
async fn x_forwarded_for_is_kept_only_from_trusted_peers() {
    let up = RecordingUpstream::start().await;
    let rest = upstream_and_route("app", &up.url());
    let trusted = config(&rest).server("trusted_proxies", strings(&["127.0.0.0/8"]));
    let h = Harness::start(&trusted).await;
    let req = "GET /x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9, 10.0.0.1\r\nConnection: close\r\n\r\n";
    raw(h.addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(
        up.last().expect("forwarded").header("x-forwarded-for"),
        Some("203.0.113.9, 10.0.0.1, 127.0.0.1")
    );

    let untrusted = config(&rest).server("trusted_proxies", strings(&["10.0.0.0/8"]));
    let h2 = Harness::start(&untrusted).await;
    raw(h2.addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(
        up.last().expect("forwarded").header("x-forwarded-for"),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn hosts_methods_and_prefix_stripping() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{u}\"]\n\n\
         [[routes]]\nname = \"api\"\nhost = \"api.example.com\"\nprefix = \"/v1\"\nstrip_prefix = true\nmethods = [\"GET\"]\nupstream = \"app\"\npublic = true\n\n\
         [[routes]]\nname = \"api-write\"\nhost = \"api.example.com\"\nprefix = \"/v1\"\nmethods = [\"POST\"]\nupstream = \"app\"\npublic = true\n\n\
         [[routes]]\nname = \"tenants\"\nhost = \"*.example.com\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n",
        u = up.url()
    )))
    .await;
    let client = h1_client();
    let send_to = |host: &'static str, method: Method, path: &'static str| {
        Request::builder()
            .method(method)
            .uri(h.url(path))
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let r = send(
        &client,
        send_to("API.example.com:443", Method::GET, "/v1/users/7"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.last().expect("forwarded").target, "/users/7");
    let r = send(
        &client,
        send_to("api.example.com", Method::POST, "/v1/users"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.last().expect("forwarded").target, "/v1/users");
    let before = up.count();
    let r = send(
        &client,
        send_to("api.example.com", Method::DELETE, "/v1/users/7"),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        r.headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, POST")
    );
    // The most specific host owns its paths: no fallback to the wildcard route.
    let r = send(&client, send_to("api.example.com", Method::GET, "/other")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(up.count(), before);
    let r = send(
        &client,
        send_to("acme.example.com", Method::DELETE, "/anything"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(&client, send_to("example.com", Method::GET, "/anything")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn http2_clients_and_h2c_upstreams() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"h1\"\nendpoints = [\"{u}\"]\nprotocol = \"http1\"\n\n\
         [[upstreams]]\nname = \"h2\"\nendpoints = [\"{u}\"]\nprotocol = \"http2\"\n\n\
         [[routes]]\nname = \"one\"\nprefix = \"/one\"\nupstream = \"h1\"\npublic = true\n\n\
         [[routes]]\nname = \"two\"\nprefix = \"/two\"\nupstream = \"h2\"\npublic = true\n",
        u = up.url()
    )))
    .await;
    for (client, path, want) in [
        (h1_client(), "/one", Version::HTTP_11),
        (h1_client(), "/two", Version::HTTP_2),
        (h2_client(), "/one", Version::HTTP_11),
        (h2_client(), "/two", Version::HTTP_2),
    ] {
        let req = Request::post(h.url(path))
            .body(Full::new(Bytes::from_static(b"payload")))
            .expect("request");
        let r = send(&client, req).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let got = up.last().expect("forwarded");
        assert_eq!(got.version, want, "{path}");
        assert_eq!(&got.body[..], b"payload");
        assert_eq!(got.target, path);
    }
}

#[tokio::test]
async fn size_limits() {
    let up = RecordingUpstream::start().await;
    let rest = upstream_and_route("app", &up.url());
    let cfg = config(&rest)
        .limits("max_body_bytes", 1000)
        .limits("max_uri_bytes", 200)
        .limits("max_headers", 20)
        .limits("max_header_bytes", 8192);
    let h = Harness::start(&cfg).await;

    // Declared body too large: refused before the upstream is contacted.
    let big = vec![b'a'; 1001];
    let r = send(
        &h1_client(),
        Request::post(h.url("/x"))
            .body(Full::new(Bytes::from(big)))
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(up.count(), 0);

    // Chunked body that grows past the limit: cut off, 413.
    let chunk = "a".repeat(600);
    let req = format!(
        "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let reply = raw(h.addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(status_of(&reply), 413, "{reply}");

    let ok = vec![b'a'; 1000];
    let r = send(
        &h1_client(),
        Request::post(h.url("/x"))
            .body(Full::new(Bytes::from(ok)))
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    up.clear();

    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(300)
    );
    assert_eq!(
        status_of(&raw(h.addr, long.as_bytes(), Duration::from_secs(2)).await),
        414
    );

    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    assert_eq!(
        status_of(&raw(h.addr, req.as_bytes(), Duration::from_secs(2)).await),
        431
    );

    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(10_000)
    );
    assert_eq!(
        status_of(&raw(h.addr, req.as_bytes(), Duration::from_secs(2)).await),
        431
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn header_read_timeout_answers_408_to_slow_request_heads() {
    let up = RecordingUpstream::start().await;
    let rest = upstream_and_route("app", &up.url());
    let cfg = config(&rest).limits("header_read_timeout", "300ms");
    let h = Harness::start(&cfg).await;
    // A head that never completes (slowloris): 408, then the connection closes.
    let started = std::time::Instant::now();
    let (reply, closed) = raw_closed(h.addr, b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    assert!(closed, "slow client still connected: {reply}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(status_of(&reply), 408, "{reply}");
    // A connection idle after a complete exchange is closed without an unsolicited answer.
    let (reply, closed) = raw_closed(h.addr, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(closed, "idle keep-alive connection still open");
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn upstream_failures_map_to_502_503_504() {
    let up = RecordingUpstream::start().await;
    // A port nothing listens on: bind, note the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"dead\"\nendpoints = [\"http://{dead}\"]\nretries = 0\n[upstreams.health]\nmax_failures = 2\nejection = \"1m\"\n\n\
         [[upstreams]]\nname = \"slow\"\nendpoints = [\"{u}\"]\nrequest_timeout = \"200ms\"\n\n\
         [[upstreams]]\nname = \"app\"\nendpoints = [\"{u}\"]\nretries = 0\n\n\
         [[upstreams]]\nname = \"patient\"\nendpoints = [\"{u}\"]\nrequest_timeout = \"100years\"\n\n\
         [[routes]]\nname = \"dead\"\nprefix = \"/dead\"\nupstream = \"dead\"\npublic = true\n\n\
         [[routes]]\nname = \"patient\"\nprefix = \"/patient\"\nupstream = \"patient\"\npublic = true\n\n\
         [[routes]]\nname = \"slow\"\nprefix = \"/__upstream/sleep\"\nupstream = \"slow\"\npublic = true\n\n\
         [[routes]]\nname = \"app\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n",
        u = up.url()
    )))
    .await;
    assert_eq!(get(&h.url("/dead")).await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(get(&h.url("/dead")).await.status, StatusCode::BAD_GATEWAY);
    // Two failures in a row ejected the only endpoint.
    assert_eq!(
        get(&h.url("/dead")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get(&h.url("/__upstream/sleep/2000")).await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    // The longest timeout the configuration takes is a deadline like any other.
    assert_eq!(get(&h.url("/patient")).await.status, StatusCode::OK);
    // The upstream dropping the connection mid-request: 502, and a POST is not retried.
    let before = up.count();
    let r = send(
        &h1_client(),
        Request::post(h.url("/__upstream/reset"))
            .body(Full::new(Bytes::from_static(b"x")))
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        up.count(),
        before + 1,
        "a non-idempotent request was sent twice"
    );
    // A later request on the same client connection still works: nothing poisoned.
    assert_eq!(get(&h.url("/ok")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn idempotent_requests_retry_on_another_endpoint_and_bad_endpoints_are_ejected() {
    let up = RecordingUpstream::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"http://{dead}\", \"{u}\"]\nretries = 1\n[upstreams.health]\nmax_failures = 1\nejection = \"1m\"\n\n\
         [[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n",
        u = up.url()
    )))
    .await;
    for _ in 0..6 {
        assert_eq!(get(&h.url("/x")).await.status, StatusCode::OK);
    }
    assert_eq!(up.count(), 6);
    // POST is never retried, but the dead endpoint is ejected now, so it still succeeds.
    let r = send(
        &h1_client(),
        Request::post(h.url("/x"))
            .body(Full::new(Bytes::from_static(b"x")))
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn gateway_errors_for_grpc_calls_are_grpc_statuses() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n[[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"app\"\npublic = true\n",
        up.url()
    )))
    .await;
    let req = Request::post(h.url("/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("request");
    let r = send(&h2_client(), req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/grpc")
    );
    assert_eq!(
        r.headers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("12")
    );
    assert!(r.body.is_empty());
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn access_log_has_one_line_per_request_without_secrets() {
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let cfg = config(&upstream_and_route("app", &up.url()))
        .server("access_log", log.display().to_string());
    let h = Harness::start(&cfg).await;
    let req = Request::get(h.url("/ok?token=hunter2"))
        .header("authorization", "Bearer hunter2")
        .header("cookie", "s=hunter2")
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(&h1_client(), req).await;
    let reply = raw(
        h.addr,
        b"GET /a/..%2fb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(status_of(&reply), 400);
    let mut lines = Vec::new();
    for _ in 0..50 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text.lines().map(String::from).collect();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("hunter2")),
        "a secret was logged: {lines:?}"
    );
    let ok: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["route"], "all");
    assert_eq!(ok["path"], "/ok");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["listener"], "main");
    assert_eq!(ok["upstream"], up.url());
    assert!(ok["bytes_sent"].as_u64().unwrap_or(0) > 0);
    assert!(
        ok["duration_us"].as_u64().is_some(),
        "integer microseconds: {ok}"
    );
    assert_eq!(ok["request_id"].as_str().map(str::len), Some(32));
    let refused: serde_json::Value = serde_json::from_str(&lines[1]).expect("json");
    assert_eq!(refused["status"], 400);
    assert_eq!(refused["phase"], "sanitize");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap_or("")
            .contains("encoded separator")
    );
}

#[tokio::test]
async fn the_upstream_is_told_the_authority_the_route_was_chosen_by() {
    let up = RecordingUpstream::start().await;
    let other = RecordingUpstream::start().await;
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n[[upstreams]]\nname = \"other\"\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"public\"\nhost = \"public.test\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n\n\
         [[routes]]\nname = \"internal\"\nhost = \"internal.test\"\nprefix = \"/\"\nupstream = \"other\"\npublic = true\n",
        up.url(),
        other.url()
    )))
    .await;
    // Absolute-form target naming one host, `Host` naming another: the target decides the
    // route (RFC 9112 §3.2.2), and the upstream must hear the same host.
    let req =
        "GET http://public.test/x HTTP/1.1\r\nHost: internal.test\r\nConnection: close\r\n\r\n";
    let reply = raw(h.addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert_eq!(other.count(), 0);
    let got = up.last().expect("forwarded");
    assert_eq!(got.header("host"), Some("public.test"));
    assert_eq!(got.header("x-forwarded-host"), Some("public.test"));
    assert_eq!(got.target, "/x");
}

#[tokio::test]
async fn http2_requests_get_the_same_refusals() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&upstream_and_route("app", &up.url()))).await;
    for path in AMBIGUOUS_PATHS {
        let req = Request::get(h.url(path))
            .body(Full::new(Bytes::new()))
            .expect("request");
        assert_eq!(
            send(&h2_client(), req).await.status,
            StatusCode::BAD_REQUEST,
            "{path}"
        );
    }
    let req = Request::get(h.url("/ok"))
        .header("x-forwarded-for", "6.6.6.6")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(send(&h2_client(), req).await.status, StatusCode::OK);
    assert_eq!(up.count(), 1);
    assert_eq!(
        up.last().expect("forwarded").header("x-forwarded-for"),
        Some("127.0.0.1")
    );
}

/// A route sets and removes headers on the way up and on the way back; it can never set
/// Drawbridge's own (the config check refuses them, and the client's are stripped anyway).
#[tokio::test]
async fn routes_set_and_remove_headers_both_ways() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"app\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n\
         [routes.request_headers]\nset = {{ \"x-env\" = \"prod\", \"x-team\" = \"platform\" }}\nremove = [\"x-debug\"]\n\
         [routes.response_headers]\nset = {{ \"x-frame-options\" = \"DENY\" }}\nremove = [\"content-type\"]\n",
        up.url()
    )))
    .await;
    let r = get_with(
        &h.url("/x"),
        &[
            ("x-debug", "1"),
            ("x-team", "attacker"),
            ("x-other", "kept"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let got = up.last().expect("forwarded");
    assert_eq!(got.header("x-env"), Some("prod"));
    assert_eq!(
        got.header("x-team"),
        Some("platform"),
        "the route's value, not the client's"
    );
    assert_eq!(got.header("x-debug"), None);
    assert_eq!(got.header("x-other"), Some("kept"));
    assert_eq!(
        r.headers
            .get("x-frame-options")
            .and_then(|v| v.to_str().ok()),
        Some("DENY")
    );
    assert!(r.headers.get("content-type").is_none());
    // Drawbridge's own headers are not a route's to set.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drawbridge.toml");
    for name in [
        "x-drawbridge-user",
        "x-forwarded-for",
        "host",
        "authorization",
    ] {
        std::fs::write(
            &path,
            config(&format!(
                "[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n\n\
                 [[routes]]\nname = \"app\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n\
                 [routes.request_headers]\nset = {{ \"{name}\" = \"x\" }}\n",
                up.url()
            ))
            .text(),
        )
        .expect("write");
        let e = drawbridge_proxy::compile(&path, None)
            .err()
            .expect("refused");
        assert!(
            e.to_string().contains("cannot be set by a route"),
            "{name}: {e}"
        );
    }
}

/// A listener that only redirects: `308` to the same host, path and query over HTTPS, the
/// upstream never contacted; the routes are served on the other listener.
#[tokio::test]
async fn a_redirect_listener_sends_everyone_to_https() {
    let up = RecordingUpstream::start().await;
    let cfg = config(&format!(
        "[[listeners]]\nname = \"redirect\"\naddress = \"127.0.0.2:0\"\nredirect_to_https = true\nhttps_port = 8443\n\n{}",
        upstream_and_route("app", &up.url())
    ));
    let h = Harness::start(&cfg).await;
    let addr = h.proxy.addr("redirect").expect("redirect listener");
    let reply = raw(
        addr,
        b"GET /shop/cart?item=7 HTTP/1.1\r\nHost: Shop.Example.com\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(status_of(&reply), 308, "{reply}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("location: https://shop.example.com:8443/shop/cart?item=7\r\n"),
        "{reply}"
    );
    assert_eq!(up.count(), 0);
    // The other listener serves the routes.
    assert_eq!(get(&h.url("/x")).await.status, StatusCode::OK);
    assert_eq!(up.count(), 1);
}
