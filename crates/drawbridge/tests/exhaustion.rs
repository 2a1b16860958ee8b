//! Idle connections and exhaustion: an idle HTTP/1.1 connection parks (its HTTP state and
//! buffers let go) and serves its next request; a listener at `max_connections`, or a
//! process out of file descriptors, closes its longest-idle keep-alive connections to admit
//! new clients; with nothing idle a new connection is closed at once (never left waiting in
//! the kernel's queue); each connection holds one descriptor.

use std::net::SocketAddr;
use std::time::Duration;

use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

fn proxied(up: &RecordingUpstream) -> Config {
    config(&upstream_and_route("app", &up.url()))
}

/// One GET on `s`; the status line, or `None` when the connection closed or nothing came
/// within two seconds.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Option<String> {
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    read_response(s).await
}

/// Reads one whole response (head and `content-length` body).
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text.lines().next().map(str::to_string);
            }
        }
    }
}

/// A new client served `200` within a second, once a request has completed to make room.
/// A client's whole response reaches it a moment before the proxy has let go of the request
/// (and of the upstream connection it pools), so a client arriving in that moment may still
/// be closed or answered 503 (counted as tried); anything else fails. `Err` holds the tries.
async fn served_soon(addr: SocketAddr) -> Result<(), Vec<Option<String>>> {
    let started = std::time::Instant::now();
    let mut tries = Vec::new();
    while started.elapsed() < Duration::from_secs(1) {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let status = exchange(&mut s).await;
        match &status {
            Some(s) if s.starts_with("HTTP/1.1 200") => return Ok(()),
            Some(s) => assert!(s.starts_with("HTTP/1.1 503"), "{s}"),
            None => {}
        }
        tries.push(status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(tries)
}

/// A new connection that was served one request and is now idle.
async fn idle(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let status = exchange(&mut s).await.expect("served");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    s
}

/// Whether the proxy closed `s` (EOF or reset) within two seconds.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

async fn metric(h: &Harness, name: &str) -> f64 {
    let port = h.proxy.admin_addr().expect("admin listener").port();
    let text = get(&format!("http://127.0.0.1:{port}/metrics")).await.body;
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{listener=\"main\"}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

fn with_admin(c: Config) -> Config {
    c.with("[admin]\naddress = \"127.0.0.1:0\"\n")
}

#[tokio::test]
async fn a_full_listener_closes_its_longest_idle_connection_to_serve_a_new_client() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&with_admin(proxied(&up).limits("max_connections", 4))).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(idle(h.addr).await);
    }
    // A fifth client is served at once: the connection idle longest made room.
    let mut fifth = TcpStream::connect(h.addr).await.expect("connect");
    let status = exchange(&mut fifth)
        .await
        .expect("the new client is served");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(closed(&mut held[0]).await, "the longest idle was closed");
    // The others were left alone, and are served.
    for s in &mut held[1..] {
        let status = exchange(s).await.expect("still open");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }
    assert_eq!(
        metric(&h, "drawbridge_connections_evicted_total").await,
        1.0
    );
    assert_eq!(metric(&h, "drawbridge_connections_shed_total").await, 0.0);
    // Nothing reached the upstream but the exchanges: 4 + 1 + 3.
    assert_eq!(up.count(), 8);
}

#[tokio::test]
async fn a_full_listener_with_nothing_idle_closes_a_new_connection_at_once() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&with_admin(proxied(&up).limits("max_connections", 2))).await;
    let mut a = in_flight(h.addr, "/x").await.expect("first admitted");
    let _b = in_flight(h.addr, "/x").await.expect("second admitted");
    // Both slots serve a request in flight: a third connection is closed, not kept waiting.
    let started = std::time::Instant::now();
    let mut third = TcpStream::connect(h.addr).await.expect("connect");
    assert_eq!(exchange(&mut third).await, None, "served past the cap");
    assert!(started.elapsed() < Duration::from_secs(1), "left waiting");
    assert_eq!(metric(&h, "drawbridge_connections_shed_total").await, 1.0);
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    // The first request completes; its connection, idle, makes room for the next client.
    a.write_all(b"body").await.expect("body");
    let status = read_response(&mut a).await.expect("answered");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(&up.last().expect("forwarded").body[..], b"body");
    served_soon(h.addr)
        .await
        .unwrap_or_else(|tries| panic!("not served once a connection is idle ({tries:?})"));
    assert!(closed(&mut a).await, "the idle one made room");
    assert_eq!(
        metric(&h, "drawbridge_connections_evicted_total").await,
        1.0
    );
}

#[tokio::test]
async fn idle_clients_filling_the_limit_never_lock_out_new_ones() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&proxied(&up).limits("max_connections", 200)).await;
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(idle(h.addr).await);
    }
    // Two hundred more clients, one after another: every one is served.
    for i in 0..200 {
        let mut s = TcpStream::connect(h.addr).await.expect("connect");
        let status = exchange(&mut s)
            .await
            .unwrap_or_else(|| panic!("new client {i} not served"));
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        held.push(s);
    }
    assert_eq!(up.count(), 400);
}

#[tokio::test]
async fn connections_that_never_sent_a_request_count_as_idle() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&with_admin(proxied(&up).limits("max_connections", 2))).await;
    let mut silent = TcpStream::connect(h.addr).await.expect("connect");
    // Half a request head, the rest never sent (a slow client holding a slot).
    let mut slow = TcpStream::connect(h.addr).await.expect("connect");
    slow.write_all(b"GET /x HTTP/1.1\r\nHo")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut served = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(h.addr).await.expect("connect");
        let status = exchange(&mut s)
            .await
            .unwrap_or_else(|| panic!("client {i} not served"));
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        served.push(s);
    }
    assert!(closed(&mut silent).await, "silent");
    assert!(closed(&mut slow).await, "slow");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn idle_http2_connections_make_room_too() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&with_admin(proxied(&up).limits("max_connections", 2))).await;
    // Each client keeps its HTTP/2 connection open after its request.
    let clients: Vec<_> = (0..3).map(|_| h2_client()).collect();
    for c in &clients {
        let req = http::Request::get(h.url("/x"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        assert_eq!(send(c, req).await.status, 200);
    }
    assert_eq!(
        metric(&h, "drawbridge_connections_evicted_total").await,
        1.0
    );
    assert_eq!(up.count(), 3);
}

/// Waits until `name` reads `want` (the roster sweeps once a second).
async fn until_metric(h: &Harness, name: &str, want: f64) {
    let mut last = -1.0;
    for _ in 0..80 {
        last = metric(h, name).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} is {last}, not {want}");
}

/// On `s`, served one `GET /x`: parked, it serves the next request and is back; parked
/// again, two requests in one write (pipelined), answered in order; parked again, a head
/// sent in pieces across the park is one request. The upstream receives each.
async fn serves_across_parks<S: AsyncRead + AsyncWrite + Unpin>(
    h: &Harness,
    up: &RecordingUpstream,
    s: &mut S,
) {
    until_metric(h, "drawbridge_connections_parked", 1.0).await;
    let status = exchange(s).await.expect("served after parking");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(metric(h, "drawbridge_connections_parked").await, 0.0);
    until_metric(h, "drawbridge_connections_parked", 1.0).await;
    s.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    for _ in 0..2 {
        let status = read_response(s).await.expect("answered");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }
    until_metric(h, "drawbridge_connections_parked", 1.0).await;
    s.write_all(b"GET /pieces HTTP/1.1\r\n")
        .await
        .expect("write");
    s.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"Host: x\r\n\r\n").await.expect("write");
    let status = read_response(s).await.expect("answered");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let targets: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/x", "/x", "/first", "/second", "/pieces"]);
}

#[tokio::test]
async fn an_idle_connection_parks_and_serves_its_next_requests() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&with_admin(proxied(&up))).await;
    let mut s = idle(h.addr).await;
    serves_across_parks(&h, &up, &mut s).await;
}

/// HTTP/1.1 over TLS parks too: hyper's state goes while the TLS session stays, and the
/// same session serves the next requests, pipelined ones and a head split across the park
/// included; for a client that agreed on `http/1.1` by ALPN and for one that offered no
/// ALPN (and so speaks HTTP/1.1).
#[tokio::test]
async fn an_idle_tls_connection_parks_and_serves_its_next_requests() {
    for alpn in [&b"http/1.1"[..], b""] {
        let (ca, h, _dir, up) = tls_listener(
            "idle_timeout = \"1m\"",
            "[admin]\naddress = \"127.0.0.1:0\"\n",
        )
        .await;
        let mut s = tls_connect(&ca, &h, alpn).await;
        assert_eq!(
            s.get_ref().1.alpn_protocol(),
            Some(alpn).filter(|a| !a.is_empty())
        );
        let status = exchange(&mut s).await.expect("served");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        serves_across_parks(&h, &up, &mut s).await;
        // A pipelined request and half of the next in one write, parked with the half held.
        s.write_all(b"GET /one HTTP/1.1\r\nHost: a.test\r\n\r\nGET /two HTTP/1.1\r\nHost")
            .await
            .expect("write");
        let status = read_response(&mut s).await.expect("first answered");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        s.write_all(b": a.test\r\n\r\n").await.expect("write");
        let status = read_response(&mut s).await.expect("second answered");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(up.last().expect("forwarded").target, "/two");
    }
}

/// Requests the server has read but not yet begun to serve keep a connection busy: two
/// pipelined requests arrive on a connection asked to park before it spoke (while the server
/// looked for HTTP/2's preface); the second waits in the server's buffer while the first is
/// answered, and the read the server makes meanwhile must not park the connection under it.
#[tokio::test]
async fn pipelined_requests_on_a_connection_asked_to_park_are_all_served() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&proxied(&up)).await;
    let mut s = TcpStream::connect(h.addr).await.expect("connect");
    // Listed and silent through a sweep of the roster: asked to park.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    s.write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    for _ in 0..2 {
        let status = read_response(&mut s).await.expect("answered");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }
    let targets: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/first", "/second"]);
}

/// A connection asked to park while silent, which then takes a request, parks once the
/// request is answered: the request ends after the server last looked for the next one, and
/// the roster, having asked once, does not ask again.
#[tokio::test]
async fn a_connection_asked_to_park_before_its_request_parks_after_it() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&with_admin(proxied(&up))).await;
    let mut conns = Vec::new();
    for n in 0..4 {
        let mut s = TcpStream::connect(h.addr).await.expect("connect");
        // Listed and silent through a sweep of the roster: asked to park.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let status = exchange(&mut s).await.expect("served");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        conns.push(s);
        until_metric(&h, "drawbridge_connections_parked", f64::from(n + 1)).await;
    }
    assert_eq!(up.count(), 4);
}

/// A request sent in the handshake's last flight, on a connection asked to park while it
/// shook hands: TLS decrypts the request with the client's `Finished`, the session tickets
/// are written after it, and the server reads on before it serves the request. None of that
/// may pass for an idle connection: the request is served, on that connection.
#[tokio::test]
async fn a_request_sent_with_the_handshake_is_served_on_a_connection_asked_to_park() {
    let (ca, h, _dir, up) = tls_listener("idle_timeout = \"1m\"", "").await;
    for n in 0..3 {
        let tcp = std::net::TcpStream::connect(h.addr).expect("connect");
        // Listed and idle through a sweep of the roster: asked to park before the handshake.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let ca_pem = ca.cert_pem.clone();
        let target = format!("/early-{n}");
        let status =
            tokio::task::spawn_blocking(move || request_with_finished(tcp, &ca_pem, &target))
                .await
                .expect("client");
        assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"), "request {n}");
        assert_eq!(up.last().expect("forwarded").target, format!("/early-{n}"));
    }
    assert_eq!(up.count(), 3);
}

/// A TLS client that writes `GET target` before the handshake is done, so that it leaves in
/// the same write as its `Finished`; the response's status line, `None` if the connection
/// ended first (or nothing came within 5 s).
fn request_with_finished(
    mut tcp: std::net::TcpStream,
    ca_pem: &str,
    target: &str,
) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca"))
        .expect("root");
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from("a.test").expect("name");
    let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).expect("client");
    // Held until the handshake is done, then sent with the client's last flight.
    tls.writer()
        .write_all(format!("GET {target} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
        .expect("buffered");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).ok()?;
    }
    let mut got = Vec::new();
    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got);
    head.lines().next().map(str::to_owned)
}

/// A connection that sent a request and half of the next head in one write, and was answered
/// the first.
async fn first_and_half_of_second(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost")
        .await
        .expect("write");
    let status = read_response(&mut s).await.expect("first answered");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    s
}

/// A pipelined request followed by half of the next head in the same write: the half waits
/// in the server's buffer while the roster asks the idle connection to park; it is kept, and
/// the client's next bytes complete it.
#[tokio::test]
async fn a_half_head_behind_a_pipelined_request_outlives_a_park() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&with_admin(proxied(&up))).await;
    let mut s = first_and_half_of_second(h.addr).await;
    // Two sweeps of the roster: asked to park with the half head held.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(b": x\r\n\r\n").await.expect("write");
    let status = read_response(&mut s).await.expect("second answered");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let targets: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/one", "/two"]);
    // Served, it parks as any idle connection does, and serves again.
    until_metric(&h, "drawbridge_connections_parked", 1.0).await;
    let status = exchange(&mut s).await.expect("served after parking");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

/// The same half head, never completed: it is a head arriving, answered `408` once the head
/// timeout passes, and never forwarded.
#[tokio::test]
async fn a_half_head_behind_a_pipelined_request_times_out_as_any_head() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&proxied(&up).limits("header_read_timeout", "2s")).await;
    let mut s = first_and_half_of_second(h.addr).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(read.is_ok(), "still open after 10 s");
    assert!(rest.starts_with("HTTP/1.1 408"), "{rest:?}");
    let targets: Vec<String> = up.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/one"]);
}

#[tokio::test]
async fn a_parked_connection_closes_when_no_request_comes_and_makes_room_when_full() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&with_admin(
        proxied(&up)
            .limits("header_read_timeout", "2s")
            .limits("max_connections", 2),
    ))
    .await;
    let mut quiet = idle(h.addr).await;
    let mut other = idle(h.addr).await;
    until_metric(&h, "drawbridge_connections_parked", 2.0).await;
    // Full, and both parked: a new client is served, the longest idle making room.
    let mut third = TcpStream::connect(h.addr).await.expect("connect");
    let status = exchange(&mut third).await.expect("served");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        closed(&mut quiet).await,
        "the longest idle, parked, made room"
    );
    // The other parked one sends nothing: closed quietly, as a kept-alive connection that
    // brings no request within header_read_timeout is.
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(6), other.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    until_metric(&h, "drawbridge_connections_parked", 1.0).await;
}

/// A connection that has sent nothing yet holds a drain for the first request's grace, not
/// for a whole `header_read_timeout`; one that was served and parked, not at all.
#[tokio::test]
async fn silent_and_parked_connections_do_not_hold_a_drain() {
    let up = RecordingUpstream::start().await;
    let h = Harness::start(&proxied(&up).limits("header_read_timeout", "30s")).await;
    let mut parked = idle(h.addr).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut silent = TcpStream::connect(h.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    h.proxy.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the drain waited {:?}",
        started.elapsed()
    );
    assert!(closed(&mut silent).await && closed(&mut parked).await);
    assert_eq!(up.count(), 1);
}

/// Descriptors the process has open.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc")
        .count()
}

#[tokio::test]
async fn a_process_out_of_descriptors_closes_idle_connections_for_new_clients() {
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drawbridge.toml");
    std::fs::write(&path, proxied(&up).text()).expect("config");
    // 128 descriptors in all: about a hundred connections' worth.
    let bin = Binary::serve_limited(&path, "info", 128);
    let mut held = Vec::new();
    // Three hundred clients, each served in turn and then left idle: once the process has
    // no descriptor left, the longest-idle connections are closed to admit the next.
    for i in 0..300 {
        let mut s = TcpStream::connect(bin.addr).await.expect("connect");
        let status = exchange(&mut s)
            .await
            .unwrap_or_else(|| panic!("client {i} not served:\n{}", bin.log()));
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        held.push(s);
    }
    let mut closed_early = 0;
    for s in &mut held[..100] {
        if closed(s).await {
            closed_early += 1;
        }
    }
    assert!(closed_early > 0, "no idle connection was closed");
    assert_eq!(up.count(), 300);
    // Said once per interval, not at every failed accept.
    let log = bin.log();
    let reports = log.matches("listener under pressure").count();
    assert!((1..=2).contains(&reports), "{reports} reports:\n{log}");
    assert!(!log.contains("accept failed"), "{log}");
}

#[tokio::test]
async fn a_process_out_of_descriptors_with_nothing_idle_closes_new_connections() {
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drawbridge.toml");
    std::fs::write(&path, proxied(&up).text()).expect("config");
    let bin = Binary::serve_limited(&path, "info", 64);
    // Requests in flight on every connection the process can hold.
    let mut held = Vec::new();
    loop {
        match in_flight(bin.addr, "/x").await {
            Some(s) => held.push(s),
            None => break,
        }
        assert!(held.len() < 64, "admitted more than the descriptors allow");
    }
    assert!(held.len() > 20, "only {} admitted", held.len());
    // The next clients are closed at once, or answered 503 when no descriptor is left for
    // the upstream connection (which is not held against the upstream's health), again and
    // again: never left waiting.
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let mut s = TcpStream::connect(bin.addr).await.expect("connect");
        if let Some(status) = exchange(&mut s).await {
            assert!(status.starts_with("HTTP/1.1 503"), "{status}");
        }
        assert!(started.elapsed() < Duration::from_secs(1), "left waiting");
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    // One request completes: its connection, idle now, makes room.
    let mut first = held.remove(0);
    first.write_all(b"body").await.expect("body");
    assert!(read_response(&mut first).await.is_some());
    served_soon(bin.addr).await.unwrap_or_else(|tries| {
        panic!(
            "not served once a connection is idle ({tries:?}):\n{}",
            bin.log()
        )
    });
    assert_eq!(
        up.count(),
        2,
        "only the completed requests reached the upstream"
    );
}

#[tokio::test]
async fn each_connection_holds_one_descriptor() {
    let up = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drawbridge.toml");
    std::fs::write(&path, proxied(&up).text()).expect("config");
    let bin = Binary::serve(&path);
    let pid = bin.child.id();
    // The upstream connection is pooled by the first exchange.
    let first = idle(bin.addr).await;
    let before = descriptors(pid);
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(idle(bin.addr).await);
    }
    assert_eq!(descriptors(pid) - before, 100);
    // Closed, they give their descriptors back.
    drop((first, held));
    let settled = eventually(Duration::from_secs(5), || async {
        descriptors(pid) + 1 == before
    })
    .await;
    assert!(
        settled,
        "{} descriptors, {} before",
        descriptors(pid),
        before
    );
}
