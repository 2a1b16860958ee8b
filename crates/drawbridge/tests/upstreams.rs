//! Upstream behaviour: HTTPS with a private CA, load balancing, connection limits and idle
//! timeouts.

use std::time::Duration;

use bytes::Bytes;
use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::certs::TestCa;
use drawbridge_testkit::harness::*;
use http::{StatusCode, Version};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_ca() {
    let ca = TestCa::new("upstream ca");
    let up = RecordingUpstream::start_tls(&ca.leaf(&["upstream.test"])).await;
    let dir = tempfile::tempdir().expect("tempdir");
    drawbridge_testkit::write_file(dir.path(), "ca.pem", &ca.cert_pem);
    let other = TestCa::new("someone else");
    drawbridge_testkit::write_file(dir.path(), "other.pem", &other.cert_pem);
    let d = dir.path().display();
    let port = up.addr().port();
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"h1\"\nendpoints = [\"https://127.0.0.1:{port}\"]\nca_file = \"{d}/ca.pem\"\ntls_server_name = \"upstream.test\"\nprotocol = \"http1\"\n\n\
         [[upstreams]]\nname = \"alpn\"\nendpoints = [\"https://127.0.0.1:{port}\"]\nca_file = \"{d}/ca.pem\"\ntls_server_name = \"upstream.test\"\n\n\
         [[upstreams]]\nname = \"untrusted\"\nendpoints = [\"https://127.0.0.1:{port}\"]\nca_file = \"{d}/other.pem\"\ntls_server_name = \"upstream.test\"\n\n\
         [[upstreams]]\nname = \"wrong-name\"\nendpoints = [\"https://127.0.0.1:{port}\"]\nca_file = \"{d}/ca.pem\"\ntls_server_name = \"other.test\"\n\n\
         [[routes]]\nname = \"h1\"\nprefix = \"/h1\"\nupstream = \"h1\"\npublic = true\n\
         [[routes]]\nname = \"alpn\"\nprefix = \"/alpn\"\nupstream = \"alpn\"\npublic = true\n\
         [[routes]]\nname = \"untrusted\"\nprefix = \"/untrusted\"\nupstream = \"untrusted\"\npublic = true\n\
         [[routes]]\nname = \"wrong-name\"\nprefix = \"/wrong-name\"\nupstream = \"wrong-name\"\npublic = true\n"
    )))
    .await;
    assert_eq!(get(&h.url("/h1")).await.status, StatusCode::OK);
    assert_eq!(up.last().expect("forwarded").version, Version::HTTP_11);
    assert_eq!(get(&h.url("/alpn")).await.status, StatusCode::OK);
    assert_eq!(
        up.last().expect("forwarded").version,
        Version::HTTP_2,
        "ALPN should pick h2"
    );
    let seen = up.count();
    assert_eq!(
        get(&h.url("/untrusted")).await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        get(&h.url("/wrong-name")).await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        up.count(),
        seen,
        "a request reached an upstream whose certificate failed"
    );
}

#[tokio::test]
async fn round_robin_spreads_and_least_requests_avoids_busy_endpoints() {
    let a = RecordingUpstream::start().await;
    let b = RecordingUpstream::start().await;
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"rr\"\nendpoints = [\"{a}\", \"{b}\"]\n\n\
         [[upstreams]]\nname = \"lr\"\nendpoints = [\"{a}\", \"{b}\"]\nbalance = \"least_requests\"\n\n\
         [[routes]]\nname = \"rr\"\nprefix = \"/rr\"\nupstream = \"rr\"\npublic = true\n\
         [[routes]]\nname = \"lr\"\nprefix = \"/lr\"\nstrip_prefix = true\nupstream = \"lr\"\npublic = true\n",
        a = a.url(),
        b = b.url()
    )))
    .await;
    for _ in 0..10 {
        assert_eq!(get(&h.url("/rr")).await.status, StatusCode::OK);
    }
    assert_eq!((a.count(), b.count()), (5, 5));

    // Three slow requests occupy endpoints; least_requests sends the next ones to whichever
    // endpoint has fewer in flight, so the quick requests all land on the less busy one.
    a.clear();
    b.clear();
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(get_owned(h.url("/lr/__upstream/sleep/2000"))))
        .collect();
    let arrived = eventually(Duration::from_secs(1), || async {
        a.count() + b.count() == 3
    })
    .await;
    assert!(arrived, "the slow requests did not arrive");
    let (busy_a, busy_b) = (a.count(), b.count());
    assert_eq!(busy_a + busy_b, 3);
    for _ in 0..4 {
        assert_eq!(get(&h.url("/lr/quick")).await.status, StatusCode::OK);
    }
    let quick_a = a.received().iter().filter(|r| r.target == "/quick").count();
    let quick_b = b.received().iter().filter(|r| r.target == "/quick").count();
    if busy_a > busy_b {
        assert_eq!((quick_a, quick_b), (0, 4));
    } else {
        assert_eq!((quick_a, quick_b), (4, 0));
    }
    for s in slow {
        assert_eq!(s.await.expect("join").status, StatusCode::OK);
    }
}

async fn get_owned(url: String) -> Reply {
    get(&url).await
}

#[tokio::test]
async fn connection_cap_and_idle_timeout() {
    let up = RecordingUpstream::start().await;
    let cfg = config(&upstream_and_route("app", &up.url()))
        .limits("max_connections", 2)
        .limits("idle_timeout", "400ms");
    let h = Harness::start(&cfg).await;
    let request = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    let mut second = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    let mut buf = [0u8; 1024];
    for s in [&mut first, &mut second] {
        s.write_all(request).await.expect("write");
        let n = s.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    // A third connection while two idle ones fill the cap: the one idle longest is closed
    // to make room, and the third is served at once.
    let mut third = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    third.write_all(request).await.expect("write");
    let n = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
        .await
        .expect("served at once")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let n = tokio::time::timeout(Duration::from_millis(200), first.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "the longest idle connection is closed");
    // Idle connections are closed after idle_timeout.
    for s in [&mut second, &mut third] {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "idle connection not closed");
    }
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn streaming_bodies_pass_in_both_directions() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&upstream_and_route("app", &up.url()))).await;
    let body = Bytes::from(vec![b'z'; 3 * 1024 * 1024]);
    let req = http::Request::post(h.url("/upload"))
        .body(Full::new(body.clone()))
        .expect("request");
    let r = send(&h2_client(), req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.last().expect("forwarded").body, body);
    let r = get(&h.url("/__upstream/bytes/5000000")).await;
    assert_eq!(r.body.len(), 5_000_000);
}

#[tokio::test]
async fn upstream_connections_are_reused_only_after_complete_exchanges() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&upstream_and_route("app", &up.url()))).await;
    for _ in 0..5 {
        assert_eq!(get(&h.url("/x")).await.status, StatusCode::OK);
    }
    let peers: Vec<_> = up.received().iter().map(|r| r.peer).collect();
    assert!(
        peers.windows(2).all(|w| w[0] == w[1]),
        "sequential requests used new connections: {peers:?}"
    );

    // A client that goes away mid-body leaves the upstream connection unfinished: it must
    // not carry the next request.
    up.clear();
    let mut s = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /__upstream/bytes/4000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let _ = s.read(&mut buf).await.expect("read");
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&h.url("/after")).await.status, StatusCode::OK);
    let got = up.received();
    assert_eq!(got.len(), 2);
    assert_ne!(
        got[0].peer, got[1].peer,
        "an unfinished connection was reused"
    );
}

#[tokio::test]
async fn http2_stream_cap_holds_excess_streams_back() {
    let up = RecordingUpstream::start().await;
    let cfg = config(&upstream_and_route("app", &up.url())).limits("max_concurrent_streams", 2);
    let h = Harness::start(&cfg).await;
    let client = h2_client();
    // Warm the connection so the client has seen the server's SETTINGS.
    send(
        &client,
        http::Request::get(h.url("/warm"))
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let url = h.url("/__upstream/sleep/300");
            tokio::spawn(async move {
                send(
                    &client,
                    http::Request::get(url)
                        .body(Full::new(Bytes::new()))
                        .expect("request"),
                )
                .await
                .status
            })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.expect("join"), StatusCode::OK);
    }
    // Four 300 ms calls, two at a time: at least two rounds.
    assert!(
        started.elapsed() >= Duration::from_millis(580),
        "streams ran beyond the cap: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connections_are_reused_after_responses_without_a_body() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&config(&upstream_and_route("app", &up.url()))).await;
    for _ in 0..3 {
        assert_eq!(
            get(&h.url("/__upstream/status/204")).await.status,
            StatusCode::NO_CONTENT
        );
        let head = http::Request::head(h.url("/x"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        assert_eq!(send(&h1_client(), head).await.status, StatusCode::OK);
    }
    let peers: Vec<_> = up.received().iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 6);
    assert!(
        peers.windows(2).all(|w| w[0] == w[1]),
        "empty responses left their connections unused: {peers:?}"
    );
}

/// An upstream can be sent its own authority as `Host` (over HTTP/1.1 and as HTTP/2's
/// `:authority`) instead of the client's, which then travels as `X-Forwarded-Host`.
#[tokio::test]
async fn an_upstream_can_be_sent_its_own_host() {
    let up = RecordingUpstream::start().await;
    for protocol in ["http1", "http2"] {
        let h = Harness::start(&config(&format!(
            "[[upstreams]]\nname = \"own\"\nendpoints = [\"{u}\"]\nprotocol = \"{protocol}\"\nhost_header = \"endpoint\"\n\n\
             [[upstreams]]\nname = \"client\"\nendpoints = [\"{u}\"]\nprotocol = \"{protocol}\"\n\n\
             [[routes]]\nname = \"own\"\nprefix = \"/own\"\nupstream = \"own\"\npublic = true\n\n\
             [[routes]]\nname = \"client\"\nprefix = \"/client\"\nupstream = \"client\"\npublic = true\n",
            u = up.url()
        )))
        .await;
        let authority = up.url().trim_start_matches("http://").to_string();
        let r = get_with(&h.url("/own"), &[("host", "shop.example.com")]).await;
        assert_eq!(r.status, StatusCode::OK);
        let got = up.last().expect("forwarded");
        let sent_host = got
            .header("host")
            .map(str::to_string)
            .or_else(|| got.authority.clone());
        assert_eq!(sent_host.as_deref(), Some(authority.as_str()), "{protocol}");
        assert_eq!(
            got.header("x-forwarded-host"),
            Some("shop.example.com"),
            "{protocol}"
        );
        let r = get_with(&h.url("/client"), &[("host", "shop.example.com")]).await;
        assert_eq!(r.status, StatusCode::OK);
        let got = up.last().expect("forwarded");
        let sent_host = got
            .header("host")
            .map(str::to_string)
            .or_else(|| got.authority.clone());
        assert_eq!(sent_host.as_deref(), Some("shop.example.com"), "{protocol}");
    }
}

/// Active health checks take an endpoint out before any request fails on it, and bring it
/// back once it answers its check path again.
#[tokio::test]
async fn active_checks_take_a_down_endpoint_out_and_bring_it_back() {
    let up = RecordingUpstream::start().await;
    // A second endpoint where nothing listens yet.
    let later = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\", \"http://{later}\"]\nretries = 0\n\
         [upstreams.health]\nmax_failures = 1000\ncheck_path = \"/healthz\"\ncheck_interval = \"100ms\"\ncheck_timeout = \"200ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2\n\n\
         [[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n",
        up.url()
    )))
    .await;
    // Within two checks the dead endpoint is out: every request goes to the live one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        assert_eq!(get(&h.url("/x")).await.status, StatusCode::OK);
    }
    let checks = up
        .received()
        .iter()
        .filter(|r| r.target == "/healthz")
        .count();
    assert!(checks >= 2, "the live endpoint is checked too ({checks})");
    // The endpoint comes up: after two passing checks it takes requests again.
    let revived = RecordingUpstream::start_on(later).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..10 {
        assert_eq!(get(&h.url("/y")).await.status, StatusCode::OK);
    }
    let served = revived
        .received()
        .iter()
        .filter(|r| r.target == "/y")
        .count();
    assert!(served >= 3, "back in the rotation: {served} of 10");
    let check = revived
        .received()
        .into_iter()
        .find(|r| r.target == "/healthz")
        .expect("checked");
    assert_eq!(check.header("host"), Some(later.to_string().as_str()));
}

/// A pooled connection idle for a sweep parks (hyper's state for it goes, the socket and its
/// TLS session stay), and the next request goes out on that same connection, over plain TCP
/// and over TLS.
#[tokio::test]
async fn idle_upstream_connections_park_and_carry_the_next_request() {
    let ca = TestCa::new("upstream ca");
    let plain = RecordingUpstream::start().await;
    let tls = RecordingUpstream::start_tls(&ca.leaf(&["upstream.test"])).await;
    let dir = tempfile::tempdir().expect("tempdir");
    drawbridge_testkit::write_file(dir.path(), "ca.pem", &ca.cert_pem);
    let (d, port) = (dir.path().display(), tls.addr().port());
    let h = Harness::start(&config(&format!(
        "{}[[upstreams]]\nname = \"tls\"\nendpoints = [\"https://127.0.0.1:{port}\"]\nca_file = \"{d}/ca.pem\"\ntls_server_name = \"upstream.test\"\nprotocol = \"http1\"\n\n\
         [[routes]]\nname = \"tls\"\nprefix = \"/tls\"\nupstream = \"tls\"\npublic = true\n",
        upstream_and_route("plain", &plain.url())
    )))
    .await;
    for _ in 0..3 {
        assert_eq!(get(&h.url("/x")).await.status, StatusCode::OK);
        assert_eq!(get(&h.url("/tls")).await.status, StatusCode::OK);
        // Two sweeps: idle through one, parked at the next.
        tokio::time::sleep(Duration::from_millis(2200)).await;
    }
    for up in [&plain, &tls] {
        let got = up.received();
        assert_eq!(got.len(), 3);
        assert!(
            got.windows(2).all(|w| w[0].peer == w[1].peer),
            "a parked connection was not reused: {:?}",
            got.iter().map(|r| r.peer).collect::<Vec<_>>()
        );
        assert_eq!(got[2].version, Version::HTTP_11);
    }
}
