//! Alerts that act, through the real server: a credential-stuffing script trips a
//! detector, which writes an audit event, posts a signed webhook (retried until the
//! receiver is up) and blocks the client address: the blocked client gets 403 and the
//! upstream nothing, until the block expires or an operator lifts it. Blocks live in the
//! shared store, so a second instance enforces them too.

use std::time::Duration;

use bytes::Bytes;
use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;
use drawbridge_testkit::jwt::{KeyType, SigningKey, jwks, now};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test/";
const SECRET: &str = "0123456789abcdef0123456789abcdef-webhook";

struct Setup {
    h: Harness,
    up: RecordingUpstream,
    key: SigningKey,
}

fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], drawbridge_testkit::reserved_port()))
}

async fn setup(alerts: &str, extra: &str) -> Setup {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::P256, "c1");
    let cfg = config(&format!(
        r#"[admin]
address = "127.0.0.1:0"

{alerts}

{extra}

[[authenticators]]
name = "corp"
type = "jwt"
issuer = "{ISSUER}"
audiences = ["drawbridge"]
algorithms = ["ES256"]
jwks_file = "corp.json"

[[upstreams]]
name = "app"
endpoints = ["{}"]

[[routes]]
name = "api"
prefix = "/api"
upstream = "app"
authenticate = ["corp"]
authorize = false

[[routes]]
name = "guarded"
prefix = "/guarded"
upstream = "app"
authenticate = ["corp"]
authorize = {authorize}
"#,
        up.url(),
        authorize = extra.contains("[policy]"),
    ))
    .server("audit_log", "audit.jsonl")
    .server("trusted_proxies", strings(&["127.0.0.1"]));
    let set = jwks(&[&key]);
    let h = Harness::start_with(
        &cfg,
        &[
            ("corp.json", set.as_str()),
            ("webhook.secret", SECRET),
            (
                "allow.cedar",
                "permit (principal, action, resource == Route::\"guarded\");\n",
            ),
            (
                "strict.cedar",
                "permit (principal, action == Action::\"DELETE\", resource == Route::\"guarded\");\n",
            ),
        ],
    )
    .await;
    Setup { h, up, key }
}

impl Setup {
    fn token(&self, sub: &str) -> String {
        let n = now();
        self.key.sign(&json!({
            "iss": ISSUER, "aud": "drawbridge", "sub": sub, "iat": n, "exp": n + 600,
        }))
    }

    async fn call(&self, token: &str, from: Option<&str>) -> Reply {
        let mut req =
            Request::get(self.h.url("/api/x")).header("authorization", format!("Bearer {token}"));
        if let Some(ip) = from {
            req = req.header("x-forwarded-for", ip);
        }
        send(
            &h1_client(),
            req.body(Full::new(Bytes::new())).expect("request"),
        )
        .await
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.h.proxy.admin_addr().expect("admin"))
    }

    /// Waits until the store holds `n` blocks (the detectors run off the request path).
    async fn blocks(&self, n: usize) -> Vec<Value> {
        let mut list = Vec::new();
        for _ in 0..100 {
            let r = self.admin_call("GET", "/api/blocks").await;
            list = serde_json::from_str(&r.body).expect("json");
            if list.len() == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        list
    }

    async fn admin_call(&self, method: &str, path: &str) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(self.admin(path))
            .body(Full::new(Bytes::new()))
            .expect("request");
        send(&h1_client(), req).await
    }
}

/// The receiver's check of a delivery: the HMAC of "<timestamp>.<body>" with the secret.
fn signature_valid(r: &drawbridge_testkit::upstream::Received) -> bool {
    use aws_lc_rs::hmac;
    let (Some(ts), Some(sig)) = (
        r.header("x-drawbridge-timestamp"),
        r.header("x-drawbridge-signature"),
    ) else {
        return false;
    };
    let Some(hex) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let tag: Vec<u8> = (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&r.body);
    hmac::verify(&key, &signed, &tag).is_ok()
}

#[tokio::test]
async fn credential_stuffing_is_detected_blocked_posted_and_lifted() {
    // The webhook's receiver is not up yet: the first delivery fails and is retried.
    let hook_addr = free_addr();
    let s = setup(
        &format!(
            r#"[alerts]
webhook_url = "http://{hook_addr}/hooks/drawbridge"
webhook_secret_file = "webhook.secret"

[[alerts.detectors]]
name = "stuffing"
on = "failed_authentication"
by = "client"
threshold = 5
window = "1m"
block = "1h"
"#
        ),
        "",
    )
    .await;
    let good = s.token("alice");
    // Another client, through the trusted proxy, fails too but stays under the threshold.
    for _ in 0..4 {
        let r = s.call("not-a-token", Some("198.51.100.9")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // The stuffing client: five refused credentials.
    for _ in 0..5 {
        let r = s.call("guess", Some("203.0.113.7")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Blocked: even a valid token gets 403, and nothing reaches the upstream.
    assert_eq!(s.blocks(1).await.len(), 1);
    for _ in 0..3 {
        let r = s.call(&good, Some("203.0.113.7")).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(s.up.count(), 0);
    // The other client is not blocked.
    assert_eq!(
        s.call(&good, Some("198.51.100.9")).await.status,
        StatusCode::OK
    );
    assert_eq!(s.up.count(), 1);

    // The audit event.
    let audit = s.h.dir.path().join("audit.jsonl");
    let fired = json_lines(&audit, 1, |l| l["action"] == "alert").await;
    assert_eq!(fired.len(), 1, "one firing");
    assert_eq!(fired[0]["resource"], "stuffing");
    assert_eq!(fired[0]["decision"], "block");
    assert_eq!(fired[0]["client"], "203.0.113.7");

    // The webhook, retried until its receiver is up, signed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hook = RecordingUpstream::start_on(hook_addr).await;
    assert!(
        eventually(Duration::from_secs(10), || async { hook.count() == 1 }).await,
        "delivered after the receiver came up"
    );
    let delivery = hook.last().expect("delivery");
    assert_eq!(delivery.target, "/hooks/drawbridge");
    assert!(signature_valid(&delivery), "signature checks");
    let body: Value = serde_json::from_slice(&delivery.body).expect("json");
    assert_eq!(
        (
            &body["detector"],
            &body["key"],
            &body["signal"],
            &body["count"]
        ),
        (
            &json!("stuffing"),
            &json!("203.0.113.7"),
            &json!("failed_authentication"),
            &json!(5)
        )
    );
    assert!(body["blocked_until"].is_string());
    // A body changed on the way no longer checks.
    let mut forged = delivery.clone();
    forged.body =
        Bytes::from(String::from_utf8_lossy(&delivery.body).replace("203.0.113.7", "203.0.113.8"));
    assert!(!signature_valid(&forged));

    // The admin API lists the block, and lifts it.
    let r = s.admin_call("GET", "/api/blocks").await;
    let blocks: Vec<Value> = serde_json::from_str(&r.body).expect("json");
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(
        (&blocks[0]["by"], &blocks[0]["key"], &blocks[0]["detector"]),
        (&json!("client"), &json!("203.0.113.7"), &json!("stuffing"))
    );
    let r = s
        .admin_call("DELETE", "/api/blocks?client=203.0.113.7")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        s.call(&good, Some("203.0.113.7")).await.status,
        StatusCode::OK
    );
    let r = s
        .admin_call("DELETE", "/api/blocks?client=203.0.113.7")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Metrics.
    let m = s.admin_call("GET", "/metrics").await.body;
    assert!(
        m.contains("drawbridge_alerts_fired_total{detector=\"stuffing\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("drawbridge_blocked_requests_total{by=\"client\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("drawbridge_webhook_deliveries_total{result=\"delivered\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_block_expires_by_itself() {
    let s = setup(
        r#"[[alerts.detectors]]
name = "stuffing"
on = "failed_authentication"
threshold = 3
window = "1m"
block = "2s"
"#,
        "",
    )
    .await;
    for _ in 0..3 {
        s.call("guess", None).await;
    }
    let good = s.token("alice");
    assert_eq!(s.blocks(1).await.len(), 1);
    assert_eq!(s.call(&good, None).await.status, StatusCode::FORBIDDEN);
    assert_eq!(s.up.count(), 0);
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.call(&good, None).await.status == StatusCode::OK
        })
        .await,
        "the block ended"
    );
}

/// One principal seen from many addresses: the principal is blocked, not its addresses.
#[tokio::test]
async fn a_principal_from_many_addresses_is_blocked() {
    let s = setup(
        r#"[[alerts.detectors]]
name = "shared-token"
on = "principal_addresses"
threshold = 3
window = "10m"
block = "1h"
"#,
        "",
    )
    .await;
    let mallory = s.token("mallory");
    for ip in ["192.0.2.1", "192.0.2.2"] {
        assert_eq!(s.call(&mallory, Some(ip)).await.status, StatusCode::OK);
    }
    // The third address fires it.
    s.call(&mallory, Some("192.0.2.3")).await;
    assert_eq!(s.blocks(1).await.len(), 1);
    let before = s.up.count();
    assert_eq!(
        s.call(&mallory, Some("192.0.2.1")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.call(&mallory, Some("192.0.2.9")).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(s.up.count(), before, "a blocked principal reaches nothing");
    // Others, from the same addresses, are not.
    assert_eq!(
        s.call(&s.token("alice"), Some("192.0.2.1")).await.status,
        StatusCode::OK
    );
    let r = s.admin_call("GET", "/api/blocks").await;
    let blocks: Vec<Value> = serde_json::from_str(&r.body).expect("json");
    assert_eq!(
        (&blocks[0]["by"], &blocks[0]["key"]),
        (&json!("principal"), &json!("corp/mallory"))
    );
}

/// Blocks live in the shared store: an instance that saw nothing enforces what another's
/// detector decided.
#[tokio::test]
async fn every_instance_sharing_the_store_enforces_a_block() {
    let redis = drawbridge_testkit::redis::RedisServer::start();
    let store = format!(
        "[sessions]\nstore = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    let detectors = r#"[[alerts.detectors]]
name = "stuffing"
on = "failed_authentication"
threshold = 3
window = "1m"
block = "1h"
"#;
    let a = setup(detectors, &store).await;
    let b = setup(detectors, &store).await;
    let good = a.token("alice");
    // Both trust the same key: b's token is a's.
    std::fs::copy(
        a.h.dir.path().join("corp.json"),
        b.h.dir.path().join("corp.json"),
    )
    .expect("copy keys");
    b.h.proxy.reload().expect("reload");
    assert_eq!(
        b.call(&good, Some("203.0.113.50")).await.status,
        StatusCode::OK
    );
    for _ in 0..3 {
        a.call("guess", Some("203.0.113.50")).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.call(&good, Some("203.0.113.50")).await.status == StatusCode::FORBIDDEN
        })
        .await,
        "the other instance enforces the block"
    );
    // Lifted on one, lifted everywhere.
    let r = b
        .admin_call("DELETE", "/api/blocks?client=203.0.113.50")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.call(&good, Some("203.0.113.50")).await.status == StatusCode::OK
        })
        .await
    );
}

/// A spike of refusals on a route, and requests the shadow policies would refuse, fire
/// detectors that only alert: the audit trail and the metrics say so, nothing is blocked.
#[tokio::test]
async fn refusal_spikes_and_shadow_refusals_alert() {
    let s = setup(
        r#"[[alerts.detectors]]
name = "denial-spike"
on = "denial"
threshold = 4
window = "1m"

[[alerts.detectors]]
name = "shadow-would-refuse"
on = "shadow_denial"
threshold = 2
window = "1m"
"#,
        "[policy]\nfiles = [\"allow.cedar\"]\nshadow = [\"strict.cedar\"]\nplain_names = [\"corp\"]\n",
    )
    .await;
    // The api route asks no policies (authorize = false): refusals are 401s here.
    for _ in 0..4 {
        assert_eq!(s.call("nope", None).await.status, StatusCode::UNAUTHORIZED);
    }
    let audit = s.h.dir.path().join("audit.jsonl");
    let fired = json_lines(&audit, 1, |l| l["resource"] == "denial-spike").await;
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0]["decision"], "alert", "it blocks nothing");
    assert!(
        fired[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("denial `api` 4 times"))
    );
    // The guarded route: allowed by the enforced policies, refused by the shadow ones.
    let good = s.token("alice");
    for _ in 0..2 {
        let r = send(
            &h1_client(),
            Request::get(s.h.url("/guarded/x"))
                .header("authorization", format!("Bearer {good}"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let fired = json_lines(&audit, 1, |l| l["resource"] == "shadow-would-refuse").await;
    assert_eq!(fired.len(), 1);
    assert!(
        fired[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("shadow_denial `guarded`"))
    );
    assert_eq!(
        s.call(&good, None).await.status,
        StatusCode::OK,
        "nothing blocked"
    );
    let m = s.admin_call("GET", "/metrics").await.body;
    assert!(
        m.contains("drawbridge_alerts_fired_total{detector=\"denial-spike\"} 1"),
        "{m}"
    );
}
