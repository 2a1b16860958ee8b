//! Slow, stalled and idle clients through the real server: a client's stall is answered 408
//! and never counted against the upstream, idle and silent connections are closed on time,
//! and connections do not outlive their maximum age.

use std::time::{Duration, Instant};

use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One upstream that a single failure ejects for a minute, a catch-all public route, and
/// `limits` on the listener.
async fn fragile(limits_toml: &str, request_timeout: &str) -> (RecordingUpstream, Harness) {
    fragile_over("http1", limits_toml, request_timeout).await
}

/// The same, speaking `protocol` to the upstream.
async fn fragile_over(
    protocol: &str,
    limits_toml: &str,
    request_timeout: &str,
) -> (RecordingUpstream, Harness) {
    let up = RecordingUpstream::start().await;
    let cfg = config(&format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\nprotocol = \"{protocol}\"\nrequest_timeout = \"{request_timeout}\"\n\
         [upstreams.health]\nmax_failures = 1\nejection = \"1m\"\n\n\
         [[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"app\"\npublic = true\n",
        up.url()
    ))
    .listener("limits", table(limits_toml));
    (up, Harness::start(&cfg).await)
}

/// Sends a request head declaring `declared` body bytes and `sent` of them, then waits for
/// the answer.
async fn stalled_body(h: &Harness, declared: usize, sent: &[u8]) -> String {
    let mut s = TcpStream::connect(h.addr).await.expect("connect");
    let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(sent).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_stalled_body_is_408_and_never_ejects_the_upstream() {
    for protocol in ["http1", "http2"] {
        stalled_bodies_over(protocol).await;
    }
}

async fn stalled_bodies_over(protocol: &str) {
    let (up, h) = fragile_over(protocol, "body_idle_timeout = \"300ms\"", "30s").await;
    for _ in 0..5 {
        let started = Instant::now();
        let reply = stalled_body(&h, 100, b"x").await;
        assert_eq!(status_of(&reply), 408, "{reply}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "answered at the body timeout"
        );
    }
    // One failure would have ejected the only endpoint: it is still in service.
    up.clear();
    let r = get(&h.url("/after")).await;
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.body);
    assert_eq!(up.last().map(|r| r.target), Some("/after".into()));
}

#[tokio::test]
async fn a_trickling_body_past_the_deadline_is_the_clients_fault() {
    // Bytes keep coming (so the body never idles), but not all of them before the
    // upstream's deadline: 408, and the upstream is not blamed.
    let (up, h) = fragile("body_idle_timeout = \"2s\"", "400ms").await;
    let mut s = TcpStream::connect(h.addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..20 {
        let _ = s.write_all(b"x").await;
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                reply.extend_from_slice(&buf[..n]);
                break;
            }
            _ => {}
        }
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert_eq!(status_of(&reply), 408, "{reply}");
    let r = get(&h.url("/after")).await;
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.body);
    assert!(up.count() >= 1);
}

/// How long until the server closes `s` (reads return 0 or fail), at most `limit`.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), s.read(&mut buf)).await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn connections_that_bring_no_request_are_closed_at_the_header_timeout() {
    let limits = "header_read_timeout = \"500ms\"\nidle_timeout = \"1m\"";
    let (ca, h, _d, up) = tls_listener(limits, "").await;
    // Handshake done, then silence: over HTTP/1.1 and HTTP/2 alike.
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut s = tls_connect(&ca, &h, alpn).await;
        let after = closed_after(&mut s, Duration::from_secs(5)).await;
        assert!(
            after.is_some_and(|d| d < Duration::from_secs(3)),
            "{}: {after:?}",
            String::from_utf8_lossy(alpn)
        );
    }
    // Many at once, each closed.
    let mut many = Vec::new();
    for _ in 0..50 {
        many.push(tls_connect(&ca, &h, b"h2").await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for s in &mut many {
        assert!(closed_after(s, Duration::from_millis(100)).await.is_some());
    }
    assert_eq!(up.count(), 0);

    // Plaintext: a connection that sends nothing.
    let (_up, h) = fragile(limits, "30s").await;
    let mut s = TcpStream::connect(h.addr).await.expect("connect");
    let after = closed_after(&mut s, Duration::from_secs(5)).await;
    assert!(
        after.is_some_and(|d| d < Duration::from_secs(3)),
        "{after:?}"
    );
}

#[tokio::test]
async fn http2_connections_idle_but_for_pings_are_closed() {
    // The client pings every 100 ms and answers the server's pings: bytes keep moving, but
    // no stream is open, so the connection is idle.
    let (_up, h) = fragile("idle_timeout = \"500ms\"", "30s").await;
    let tcp = TcpStream::connect(h.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(100))
            .keep_alive_while_idle(true)
            .handshake::<_, http_body_util::Full<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/x", h.addr))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let res = sender.send_request(req).await.expect("response");
    assert_eq!(res.status(), http::StatusCode::OK);
    drop(res);
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        ended.is_ok(),
        "an HTTP/2 connection kept open by pings alone"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn connections_are_closed_gracefully_at_their_maximum_age() {
    let (up, h) = fragile(
        "max_connection_age = \"500ms\"\nidle_timeout = \"1m\"",
        "30s",
    )
    .await;
    let mut s = TcpStream::connect(h.addr).await.expect("connect");
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive, busy or not, but not past its age.
    let after = closed_after(&mut s, Duration::from_secs(5)).await;
    assert!(
        after.is_some_and(|d| d < Duration::from_secs(2)),
        "{after:?}"
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn an_http2_client_flooding_pings_without_reading_is_cut_off() {
    let (up, h) = fragile("header_read_timeout = \"1s\"\nidle_timeout = \"1m\"", "30s").await;
    let mut s = TcpStream::connect(h.addr).await.expect("connect");
    // The connection preface and an empty SETTINGS frame, then PING frames (type 6, eight
    // bytes of payload) as fast as they go, never reading an ACK.
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    s.write_all(&start).await.expect("preface");
    let ping: Vec<u8> = [0u8, 0, 8, 6, 0, 0, 0, 0, 0]
        .into_iter()
        .chain([7u8; 8])
        .collect();
    let flood: Vec<u8> = ping.repeat(512);
    let started = Instant::now();
    let cut = loop {
        if started.elapsed() > Duration::from_secs(10) {
            break None;
        }
        match tokio::time::timeout(Duration::from_secs(1), s.write_all(&flood)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break Some(started.elapsed()),
            // Writes blocked: the server stopped reading; it must close soon.
            Err(_) => {}
        }
    };
    assert!(cut.is_some_and(|d| d < Duration::from_secs(5)), "{cut:?}");
    assert_eq!(up.count(), 0);
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// A plaintext connection holds one descriptor (it held two: a duplicate kept to write a
/// 408 after hyper gave up on a slow head), so a descriptor limit admits as many
/// connections as nginx's would.
#[tokio::test]
async fn a_connection_holds_one_descriptor() {
    let (_up, h) = fragile(
        "idle_timeout = \"1m\"\nheader_read_timeout = \"30s\"",
        "30s",
    )
    .await;
    // Warm: the upstream pool's connection and the runtime's own descriptors exist.
    let mut warm = TcpStream::connect(h.addr).await.expect("connect");
    warm.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let _ = warm.read(&mut buf).await.expect("read");
    let before = open_descriptors();
    let mut held = Vec::new();
    for _ in 0..100 {
        // Kept alive after a served request: the server side keeps each connection open.
        let mut s = TcpStream::connect(h.addr).await.expect("connect");
        s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let n = s.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let grown = open_descriptors() - before;
    // 100 client sockets in this process and 100 server sockets, a few more for pooling.
    assert!(grown <= 210, "{grown} descriptors for 100 connections");
    drop(held);
}

/// The head of a second request on a kept-alive connection that does not arrive in time is
/// answered 408 and recorded, as the first one's is.
#[tokio::test]
async fn a_slow_second_head_is_408() {
    let (_up, h) = fragile(
        "header_read_timeout = \"300ms\"\nidle_timeout = \"1m\"",
        "30s",
    )
    .await;
    let mut s = TcpStream::connect(h.addr).await.expect("connect");
    s.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    s.write_all(b"GET /second HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => panic!("neither answered nor closed"),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
