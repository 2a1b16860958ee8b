//! The admin listener: health for orchestrators, apart from every route. `/readyz` says
//! ready only when every issuer's keys are in hand and no drain has begun, and names what
//! is missing otherwise.

use std::time::Duration;

use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;
use drawbridge_testkit::jwks::JwksServer;
use drawbridge_testkit::jwt::{KeyType, SigningKey, jwks};
use http::StatusCode;

fn with_admin(up: &RecordingUpstream, jwks_url: &str) -> Config {
    config(&format!(
        r#"[admin]
address = "127.0.0.1:0"

[[authenticators]]
name = "corp"
type = "jwt"
issuer = "https://idp.test/"
audiences = ["drawbridge"]
jwks_url = "{jwks_url}"
jwks_cooldown = "100ms"

[[upstreams]]
name = "app"
endpoints = ["{}"]

[[routes]]
name = "all"
prefix = "/"
upstream = "app"
public = true
"#,
        up.url()
    ))
}

async fn admin_get(h: &Harness, path: &str) -> Reply {
    let addr = h.proxy.admin_addr().expect("admin listener");
    get(&format!("http://{addr}{path}")).await
}

#[tokio::test]
async fn readiness_names_an_issuer_whose_keys_are_missing() {
    let up = RecordingUpstream::start().await;
    // Nothing listens there: the issuer's keys can never be fetched.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let h = Harness::start(&with_admin(&up, &format!("http://{dead}/jwks.json"))).await;
    let health = admin_get(&h, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = admin_get(&h, "/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        ready.body.contains("authenticator `corp`"),
        "{}",
        ready.body
    );
    // The admin paths are nobody's route: on the serving listener they go where routes say.
    assert_eq!(get(&h.url("/readyz")).await.status, StatusCode::OK);
    assert_eq!(up.last().expect("forwarded").target, "/readyz");
}

#[tokio::test]
async fn ready_once_keys_are_in_and_not_ready_from_the_start_of_the_drain() {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::P256, "k1");
    let server = JwksServer::start(&jwks(&[&key])).await;
    let h = Harness::start(&with_admin(&up, &server.url())).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            admin_get(&h, "/readyz").await.status == StatusCode::OK
        })
        .await,
        "{}",
        admin_get(&h, "/readyz").await.body
    );
    // A slow request in flight, then SIGTERM's drain: not ready at once, while the request
    // finishes.
    let slow_url = h.url("/__upstream/sleep/800");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let proxy = h.proxy.clone();
    let drain = tokio::spawn(async move { proxy.shutdown().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = admin_get(&h, "/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.body.contains("draining"), "{}", ready.body);
    assert_eq!(slow.await.expect("join").status, StatusCode::OK);
    drain.await.expect("join");
}
