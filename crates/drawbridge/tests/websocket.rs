//! WebSockets: an upgrade passes only once the request was admitted, then frames flow both
//! ways until either side closes.

use std::sync::{Arc, Mutex};

use drawbridge_testkit::harness::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// A WebSocket echo server that records the path and headers of each handshake.
async fn ws_upstream() -> (String, Arc<Mutex<Vec<(String, http::HeaderMap)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                // The callback's error type is tungstenite's; this one never errs.
                #[allow(clippy::result_large_err)]
                let cb = |req: &Request, res: Response| {
                    rec.lock()
                        .expect("lock")
                        .push((req.uri().path().to_string(), req.headers().clone()));
                    Ok(res)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) => {
                            let _ = ws.send(Message::Text(format!("echo:{t}").into())).await;
                        }
                        Message::Binary(b) => {
                            let _ = ws.send(Message::Binary(b)).await;
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn websocket_frames_flow_both_ways_after_admission() {
    let (url, seen) = ws_upstream().await;
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"ws\"\nendpoints = [\"{url}\"]\n\n[[routes]]\nname = \"ws\"\nprefix = \"/ws\"\nupstream = \"ws\"\npublic = true\n"
    )))
    .await;
    let req = tokio_tungstenite::tungstenite::http::Request::builder()
        .uri(format!("ws://{}/ws/chat", h.addr))
        .header("host", h.addr.to_string())
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .header("x-forwarded-for", "6.6.6.6")
        .body(())
        .expect("request");
    let (mut ws, res) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade through drawbridge");
    assert_eq!(res.status(), 101);
    for i in 0..20 {
        ws.send(Message::Text(format!("m{i}").into()))
            .await
            .expect("send");
        let reply = ws.next().await.expect("frame").expect("ok");
        assert_eq!(reply, Message::Text(format!("echo:m{i}").into()));
    }
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::Binary(big.clone().into()))
        .await
        .expect("send");
    assert_eq!(
        ws.next().await.expect("frame").expect("ok"),
        Message::Binary(big.into())
    );
    ws.close(None).await.expect("close");

    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "/ws/chat");
    assert_eq!(
        seen[0]
            .1
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok()),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn upgrades_without_a_route_are_refused_before_the_upstream() {
    let (url, seen) = ws_upstream().await;
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"ws\"\nendpoints = [\"{url}\"]\n\n[[routes]]\nname = \"ws\"\nprefix = \"/ws\"\nupstream = \"ws\"\npublic = true\n"
    )))
    .await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/admin", h.addr))
        .await
        .expect_err("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 404),
        other => panic!("unexpected: {other}"),
    }
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws/..%2fadmin", h.addr))
        .await
        .expect_err("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 400),
        other => panic!("unexpected: {other}"),
    }
    assert!(seen.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn idle_websockets_are_closed_and_busy_ones_are_not() {
    let (url, _seen) = ws_upstream().await;
    let cfg = config(&format!(
        "[[upstreams]]\nname = \"ws\"\nendpoints = [\"{url}\"]\n\n[[routes]]\nname = \"ws\"\nprefix = \"/ws\"\nupstream = \"ws\"\npublic = true\n"
    ))
    .limits("idle_timeout", "300ms");
    let h = Harness::start(&cfg).await;

    // Traffic every 150 ms for well over the idle timeout: the socket stays open.
    let (mut busy, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", h.addr))
        .await
        .expect("upgrade");
    for i in 0..8 {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        busy.send(Message::Text(format!("{i}").into()))
            .await
            .expect("send while busy");
        assert_eq!(
            busy.next().await.expect("frame").expect("ok"),
            Message::Text(format!("echo:{i}").into())
        );
    }

    // Silence: closed within twice the idle timeout.
    let (mut quiet, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", h.addr))
        .await
        .expect("upgrade");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(3), quiet.next())
        .await
        .expect("closed in time");
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
}

/// A WebSocket route admitting bearer tokens of one issuer (keys from `jwks.json`), another
/// public one whose streams live at most a second, and the audit trail in `audit.log`.
async fn expiring_setup(key: &drawbridge_testkit::jwt::SigningKey) -> Harness {
    let (url, _seen) = ws_upstream().await;
    let cfg = config(&format!(
        r#"[[authenticators]]
name = "corp"
type = "jwt"
issuer = "https://idp.test/"
audiences = ["drawbridge"]
algorithms = ["ES256"]
jwks_file = "jwks.json"
leeway = "0s"

[[upstreams]]
name = "ws"
endpoints = ["{url}"]

[[routes]]
name = "ws"
prefix = "/ws"
upstream = "ws"
authenticate = ["corp"]
authorize = false

[[routes]]
name = "brief"
prefix = "/brief"
upstream = "ws"
public = true
max_stream_lifetime = "1s"
"#
    ))
    .server("audit_log", "audit.log");
    Harness::start_with(
        &cfg,
        &[("jwks.json", &drawbridge_testkit::jwt::jwks(&[key]))],
    )
    .await
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open_ws(h: &Harness, path: &str, token: Option<&str>) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{}{path}", h.addr)
        .into_client_request()
        .expect("request");
    if let Some(t) = token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    ws.send(Message::Text("hi".into())).await.expect("send");
    assert_eq!(
        ws.next().await.expect("frame").expect("ok"),
        Message::Text("echo:hi".into())
    );
    ws
}

/// Waits up to `limit` for the tunnel to end; how long it took.
async fn ends_within(ws: &mut Ws, limit: std::time::Duration) -> Option<std::time::Duration> {
    closes_within(ws, limit).await.map(|(d, _)| d)
}

/// Waits up to `limit` for the tunnel to end: how long it took, and the close frame's code
/// when it ended with one.
async fn closes_within(
    ws: &mut Ws,
    limit: std::time::Duration,
) -> Option<(std::time::Duration, Option<u16>)> {
    let start = std::time::Instant::now();
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Some((start.elapsed(), frame.map(|f| u16::from(f.code))));
            }
            Ok(ended @ (None | Some(Err(_)))) => {
                // Said, for a failure to show how the tunnel ended without a close frame.
                eprintln!("tunnel ended without a close frame: {ended:?}");
                return Some((start.elapsed(), None));
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test]
async fn tunnels_end_when_their_credential_expires_or_is_revoked_or_they_age() {
    use drawbridge_testkit::jwt::{KeyType, SigningKey, jwks, now};
    let key = SigningKey::generate(KeyType::P256, "k1");
    let h = expiring_setup(&key).await;
    let token = |ttl: i64| {
        let n = now();
        key.sign(&serde_json::json!({
            "iss": "https://idp.test/", "aud": "drawbridge", "sub": "alice",
            "iat": n, "exp": n + ttl,
        }))
    };

    // A token good for 2 more seconds: the tunnel it opened ends with it, with a close
    // frame saying why (1008 policy violation), not a cut connection.
    let mut ws = open_ws(&h, "/ws", Some(&token(2))).await;
    let ended = closes_within(&mut ws, std::time::Duration::from_secs(6)).await;
    assert!(
        ended.is_some_and(|(d, code)| d < std::time::Duration::from_secs(4) && code == Some(1008)),
        "{ended:?}"
    );

    // A long-lived token whose key is withdrawn by a reload.
    let mut ws = open_ws(&h, "/ws", Some(&token(300))).await;
    let other = SigningKey::generate(KeyType::P256, "k2");
    std::fs::write(h.dir.path().join("jwks.json"), jwks(&[&other])).expect("rewrite");
    h.proxy.reload().expect("reload");
    let ended = closes_within(&mut ws, std::time::Duration::from_secs(3)).await;
    assert!(
        ended.is_some_and(|(_, code)| code == Some(1008)),
        "a revoked credential kept its tunnel: {ended:?}"
    );

    // A public tunnel at its route's maximum lifetime (1001 going away).
    let mut ws = open_ws(&h, "/brief", None).await;
    let ended = closes_within(&mut ws, std::time::Duration::from_secs(4)).await;
    assert!(
        ended.is_some_and(|(d, code)| d < std::time::Duration::from_secs(3) && code == Some(1001)),
        "{ended:?}"
    );

    // The closings are audited, with why.
    let closings = json_lines(&h.dir.path().join("audit.log"), 3, |l| {
        l["decision"] == "close"
    })
    .await;
    let reasons: Vec<&str> = closings
        .iter()
        .filter_map(|c| c["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        [
            "credential expired",
            "credential revoked",
            "maximum stream lifetime reached"
        ],
        "{closings:?}"
    );
    assert!(
        closings[..2]
            .iter()
            .all(|c| c["principal"]["id"] == "alice" && c["resource"] == "ws")
    );
    assert_eq!(closings[2]["principal"]["kind"], "anonymous");
}

#[tokio::test]
async fn a_tunnel_ends_when_a_reload_makes_the_policies_refuse_it() {
    let (url, _seen) = ws_upstream().await;
    let allow = |range: &str| {
        format!(
            "permit (principal is Anonymous, action == Action::\"connect\", resource == Route::\"live\")\n\
             when {{ context.ip.isInRange(ip(\"{range}\")) }};\n"
        )
    };
    let cfg = config(&format!(
        "[[upstreams]]\nname = \"ws\"\nendpoints = [\"{url}\"]\n\n\
         [[routes]]\nname = \"live\"\nprefix = \"/live\"\nupstream = \"ws\"\npublic = true\nauthorize = true\n\n\
         [policy]\nfiles = [\"p.cedar\"]\n"
    ))
    .server("audit_log", "audit.log");
    let h = Harness::start_with(&cfg, &[("p.cedar", &allow("127.0.0.0/8"))]).await;
    let mut ws = open_ws(&h, "/live", None).await;
    // A reload that changes nothing for it leaves it open.
    h.proxy.reload().expect("reload");
    ws.send(Message::Text("still".into())).await.expect("send");
    assert_eq!(
        ws.next().await.expect("frame").expect("ok"),
        Message::Text("echo:still".into())
    );
    // Policies that no longer allow its address close it.
    std::fs::write(h.dir.path().join("p.cedar"), allow("10.0.0.0/8")).expect("rewrite");
    h.proxy.reload().expect("reload");
    let ended = ends_within(&mut ws, std::time::Duration::from_secs(3)).await;
    assert!(
        ended.is_some(),
        "the tunnel outlived the policy that admitted it"
    );
    let closings = json_lines(&h.dir.path().join("audit.log"), 1, |l| {
        l["decision"] == "close"
    })
    .await;
    assert_eq!(closings.len(), 1, "{closings:?}");
    assert_eq!(closings[0]["reason"], "no longer allowed by the policies");
}

/// A tunnel keeps what its request held: its connection's slot (`max_connections`) and its
/// endpoint's in-flight count (`max_requests`) — upgraded connections used to leave both,
/// so any admitted client could open them without bound.
#[tokio::test]
async fn tunnels_count_in_the_connection_cap_and_the_upstream_cap() {
    let (url, _seen) = ws_upstream().await;
    let h = Harness::start(
        &config(&format!(
            "[[upstreams]]\nname = \"ws\"\nendpoints = [\"{url}\"]\nmax_requests = 1\n\n\
             [[routes]]\nname = \"ws\"\nprefix = \"/\"\nupstream = \"ws\"\npublic = true\n"
        ))
        .limits("max_connections", 2),
    )
    .await;
    let mut ws = open_ws(&h, "/chat", None).await;
    // The tunnel holds the endpoint's only request slot.
    let reply = raw(
        h.addr,
        b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        std::time::Duration::from_secs(2),
    )
    .await;
    assert_eq!(status_of(&reply), 503, "{reply}");
    // ...and one of the two connection slots, which a full listener never takes back: a
    // third connection is admitted by closing the idle second one, never the tunnel.
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut second = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    second
        .write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 512];
    let n = second.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 503"));
    let mut third = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    third
        .write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let n = tokio::time::timeout(std::time::Duration::from_secs(2), third.read(&mut buf))
        .await
        .expect("the third is answered")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 503"));
    let n = tokio::time::timeout(std::time::Duration::from_secs(2), second.read(&mut buf))
        .await
        .expect("the idle second is closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle connection made room");
    ws.send(Message::Text("still here".into()))
        .await
        .expect("send");
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "echo:still here"),
        other => panic!("the tunnel was cut: {other:?}"),
    }
    // A fourth, while the tunnel and the third (idle) hold both slots: the third makes room.
    let mut fourth = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    fourth
        .write_all(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let n = tokio::time::timeout(std::time::Duration::from_secs(2), fourth.read(&mut buf))
        .await
        .expect("the fourth is answered")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 503"),
        "the tunnel still holds the endpoint"
    );
    // The tunnel ends: the endpoint's slot comes back.
    ws.close(None).await.expect("close");
    drop(ws);
    let served = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        loop {
            let reply = raw(
                h.addr,
                b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                std::time::Duration::from_secs(1),
            )
            .await;
            // The upstream answers a plain request as it will; only 503 is the proxy's.
            if reply.starts_with("HTTP/1.1 ") && status_of(&reply) != 503 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "not served once the tunnel ended");
}

/// A tunnel's access-log line is written when it ends, with the bytes relayed each way and
/// its whole duration (it was written at the 101, with 0 bytes).
#[tokio::test]
async fn a_tunnels_log_line_is_written_when_it_ends() {
    let (url, _seen) = ws_upstream().await;
    let h = Harness::start(
        &config(&format!(
            "[[upstreams]]\nname = \"ws\"\nendpoints = [\"{url}\"]\n\n\
             [[routes]]\nname = \"ws\"\nprefix = \"/\"\nupstream = \"ws\"\npublic = true\n"
        ))
        .server("access_log", "access.jsonl"),
    )
    .await;
    let mut ws = open_ws(&h, "/chat", None).await;
    ws.send(Message::Binary(vec![7u8; 10_000].into()))
        .await
        .expect("send");
    let echoed = ws.next().await.expect("frame").expect("ok");
    assert_eq!(echoed.len(), 10_000);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let log = h.dir.path().join("access.jsonl");
    assert!(
        json_lines(&log, 1, |l| l["path"] == "/chat")
            .await
            .is_empty(),
        "written before the tunnel ended"
    );
    ws.close(None).await.expect("close");
    let _ = ends_within(&mut ws, std::time::Duration::from_secs(2)).await;
    drop(ws);
    let lines = json_lines(&log, 1, |l| l["path"] == "/chat").await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["status"], 101);
    assert!(
        line["bytes_received"].as_u64().is_some_and(|b| b > 10_000),
        "{line}"
    );
    assert!(
        line["bytes_sent"].as_u64().is_some_and(|b| b > 10_000),
        "{line}"
    );
    assert!(
        line["duration_us"].as_u64().is_some_and(|d| d >= 300_000),
        "{line}"
    );
}

/// SIGTERM ends open tunnels with a close frame (1001 going away) and the process exits
/// without waiting out its shutdown timeout (tunnels were cut at once, with no close).
#[tokio::test]
async fn draining_closes_tunnels_with_going_away() {
    let (url, _seen) = ws_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drawbridge.toml");
    std::fs::write(
        &path,
        config(&format!(
            "[[upstreams]]\nname = \"ws\"\nendpoints = [\"{url}\"]\n\n\
             [[routes]]\nname = \"ws\"\nprefix = \"/\"\nupstream = \"ws\"\npublic = true\n"
        ))
        .server("shutdown_timeout", "20s")
        .text(),
    )
    .expect("write");
    let bin = Binary::serve(&path);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", bin.addr))
        .await
        .expect("upgrade");
    ws.send(Message::Text("hi".into())).await.expect("send");
    assert_eq!(
        ws.next().await.expect("frame").expect("ok"),
        Message::Text("echo:hi".into())
    );
    let started = std::time::Instant::now();
    bin.signal("TERM");
    let ended = closes_within(&mut ws, std::time::Duration::from_secs(5)).await;
    // The process's whole log, for a failure to show.
    let (status, log) = bin.exited().await;
    assert!(
        ended.is_some_and(|(_, code)| code == Some(1001)),
        "{ended:?}\n{log}"
    );
    assert!(status.success());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "waited for the shutdown timeout: {:?}",
        started.elapsed()
    );
}
