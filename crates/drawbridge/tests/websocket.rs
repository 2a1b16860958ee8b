//! WebSockets: an upgrade passes only once the request was admitted, then frames flow both
//! ways until either side closes.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
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
    .replace(LISTENER_END, &limits("idle_timeout = \"300ms\""));
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
    .replace(
        common::SERVER_END,
        &common::server("audit_log = \"audit.log\""),
    );
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
    let start = std::time::Instant::now();
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), ws.next()).await {
            Err(_) => return None,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                return Some(start.elapsed());
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

    // A token good for 2 more seconds: the tunnel it opened ends with it.
    let mut ws = open_ws(&h, "/ws", Some(&token(2))).await;
    let ended = ends_within(&mut ws, std::time::Duration::from_secs(6)).await;
    assert!(
        ended.is_some_and(|d| d < std::time::Duration::from_secs(4)),
        "{ended:?}"
    );

    // A long-lived token whose key is withdrawn by a reload.
    let mut ws = open_ws(&h, "/ws", Some(&token(300))).await;
    let other = SigningKey::generate(KeyType::P256, "k2");
    std::fs::write(h.dir.path().join("jwks.json"), jwks(&[&other])).expect("rewrite");
    h.proxy.reload().expect("reload");
    let ended = ends_within(&mut ws, std::time::Duration::from_secs(3)).await;
    assert!(ended.is_some(), "a revoked credential kept its tunnel");

    // A public tunnel at its route's maximum lifetime.
    let mut ws = open_ws(&h, "/brief", None).await;
    let ended = ends_within(&mut ws, std::time::Duration::from_secs(4)).await;
    assert!(
        ended.is_some_and(|d| d < std::time::Duration::from_secs(3)),
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
    .replace(common::SERVER_END, &common::server("audit_log = \"audit.log\""));
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
