//! Authentication through the real server: bearer JWTs checked against file and fetched
//! JWK Sets, with real keys; every refused credential is shown never to reach the upstream.

use std::time::Duration;

use bytes::Bytes;
use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::certs::TestCa;
use drawbridge_testkit::harness::*;
use drawbridge_testkit::jwks::JwksServer;
use drawbridge_testkit::jwt::{KeyType, SigningKey, encode_part, jwks, now, sign_hs256};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

const ISS: &str = "https://idp.test/";

/// A JWT authenticator `name` for issuer `iss` with its keys from `source` (a TOML line),
/// an upstream, and one route on `/` admitting it.
fn jwt_config(up: &RecordingUpstream, source: &str, route_extra: &str) -> Config {
    config(&format!(
        r#"[[authenticators]]
name = "corp"
type = "jwt"
issuer = "{ISS}"
audiences = ["drawbridge"]
algorithms = ["RS256", "ES256", "EdDSA"]
max_lifetime = "1h"
{source}
claims = {{ groups = "groups", attributes = ["tenant"] }}

[[upstreams]]
name = "app"
endpoints = ["{}"]

[[routes]]
name = "api"
prefix = "/"
upstream = "app"
authenticate = ["corp"]
authorize = false
{route_extra}
"#,
        up.url()
    ))
}

/// A JWK Set file holding `doc`, outside the harness directory.
fn jwks_file(doc: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, doc).expect("write jwks");
    let line = format!("jwks_file = \"{}\"", path.display());
    (dir, line)
}

fn claims() -> Value {
    let n = now();
    json!({
        "iss": ISS, "aud": "drawbridge", "sub": "alice",
        "iat": n, "exp": n + 300, "groups": ["eng"], "tenant": "acme",
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

async fn bearer(url: &str, token: &str) -> Reply {
    get_with(url, &[("authorization", &format!("Bearer {token}"))]).await
}

fn challenge(r: &Reply) -> String {
    r.headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_valid_token_is_admitted_and_the_upstream_never_sees_it() {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::Rsa, "k1");
    let (_d, source) = jwks_file(&jwks(&[&key]));
    let h = Harness::start(&jwt_config(&up, &source, "")).await;
    let token = key.sign(&claims());
    let r = bearer(&h.url("/orders"), &token).await;
    assert_eq!(r.status, StatusCode::OK);
    let got = up.last().expect("upstream saw the request");
    assert_eq!(got.target, "/orders");
    assert_eq!(got.header("authorization"), None, "credential stripped");
    // The same token again: admitted from the verification cache.
    assert_eq!(bearer(&h.url("/x"), &token).await.status, StatusCode::OK);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_route_can_pass_the_original_credential_through() {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::P256, "k1");
    let (_d, source) = jwks_file(&jwks(&[&key]));
    let h = Harness::start(&jwt_config(&up, &source, "pass_credentials = true")).await;
    let token = key.sign(&claims());
    assert_eq!(bearer(&h.url("/"), &token).await.status, StatusCode::OK);
    let expected = format!("Bearer {token}");
    assert_eq!(
        up.last().expect("forwarded").header("authorization"),
        Some(expected.as_str())
    );
}

#[tokio::test]
async fn every_bad_token_is_refused_before_the_upstream() {
    let up = RecordingUpstream::start().await;
    let rsa = SigningKey::generate(KeyType::Rsa, "rsa-1");
    let ec = SigningKey::generate(KeyType::P256, "ec-1");
    let mut enc = SigningKey::generate(KeyType::Rsa, "enc-1");
    enc.jwk["use"] = json!("enc");
    let attacker = SigningKey::generate(KeyType::Rsa, "rsa-1");
    let (_d, source) = jwks_file(&jwks(&[&rsa, &ec, &enc]));
    let h = Harness::start(&jwt_config(&up, &source, "")).await;
    let n = now();
    let good = rsa.sign(&claims());
    let (signed_part, _) = good.rsplit_once('.').expect("three parts");
    let mut tampered: Vec<String> = good.split('.').map(String::from).collect();
    tampered[1] = encode_part(&with(claims(), "sub", json!("admin")));
    let bad: Vec<(&str, String)> = vec![
        ("expired", rsa.sign(&with(claims(), "exp", json!(n - 120)))),
        (
            "not yet valid",
            rsa.sign(&with(claims(), "nbf", json!(n + 600))),
        ),
        (
            "wrong iss",
            rsa.sign(&with(claims(), "iss", json!("https://evil.test/"))),
        ),
        (
            "wrong aud",
            rsa.sign(&with(claims(), "aud", json!("billing"))),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                encode_part(&json!({"alg": "none"})),
                encode_part(&claims())
            ),
        ),
        (
            "HS256 with the RSA public key",
            sign_hs256(
                &rsa.public_raw,
                &json!({"alg": "HS256", "kid": "rsa-1"}),
                &claims(),
            ),
        ),
        (
            "RS256 against the EC key",
            rsa.sign_with_header(&json!({"alg": "RS256", "kid": "ec-1"}), &claims()),
        ),
        ("tampered payload", tampered.join(".")),
        ("stripped signature", format!("{signed_part}.")),
        (
            "unknown kid",
            rsa.sign_with_header(&json!({"alg": "RS256", "kid": "rsa-9"}), &claims()),
        ),
        (
            "path traversal kid",
            rsa.sign_with_header(
                &json!({"alg": "RS256", "kid": "../../../etc/passwd"}),
                &claims(),
            ),
        ),
        (
            "SQL kid",
            rsa.sign_with_header(&json!({"alg": "RS256", "kid": "x' OR '1'='1"}), &claims()),
        ),
        (
            "embedded jwk",
            attacker.sign_with_header(
                &json!({"alg": "RS256", "kid": "rsa-1", "jwk": attacker.jwk}),
                &claims(),
            ),
        ),
        (
            "jku",
            attacker.sign_with_header(
                &json!({"alg": "RS256", "kid": "rsa-1", "jku": "https://evil.test/k"}),
                &claims(),
            ),
        ),
        (
            "x5u",
            attacker.sign_with_header(
                &json!({"alg": "RS256", "kid": "rsa-1", "x5u": "https://evil.test/c"}),
                &claims(),
            ),
        ),
        (
            "unknown crit",
            rsa.sign_with_header(
                &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["b64"], "b64": false}),
                &claims(),
            ),
        ),
        (
            "lifetime over the maximum",
            rsa.sign(&with(claims(), "exp", json!(n + 3 * 3600))),
        ),
        ("use=enc key", enc.sign(&claims())),
        ("not a JWT", "hello".into()),
    ];
    for (what, token) in &bad {
        let r = bearer(&h.url("/"), token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        let c = challenge(&r);
        assert!(c.starts_with("Bearer realm=\"drawbridge\""), "{what}: {c}");
        assert!(c.contains("error=\"invalid_token\""), "{what}: {c}");
        for word in ["expired", "kid", "signature", "audience", "issuer"] {
            assert!(
                !c.contains(word),
                "{what}: the challenge says `{word}`: {c}"
            );
            assert!(!r.body.contains(word), "{what}: the body says `{word}`");
        }
    }
    assert_eq!(up.count(), 0, "no refused request reached the upstream");
    // The good token still works: refusals poisoned nothing.
    assert_eq!(bearer(&h.url("/"), &good).await.status, StatusCode::OK);
}

#[tokio::test]
async fn missing_or_misplaced_credentials_are_refused() {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::Ed25519, "k1");
    let (_d, source) = jwks_file(&jwks(&[&key]));
    let h = Harness::start(&jwt_config(&up, &source, "")).await;
    let token = key.sign(&claims());

    let r = get_with(&h.url("/"), &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&r), "Bearer realm=\"drawbridge\"");
    // A token in the query string is not a credential, and is never forwarded: refused.
    let r = get_with(&h.url(&format!("/?access_token={token}")), &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Another scheme is not a bearer token.
    let r = get_with(&h.url("/"), &[("authorization", &format!("Basic {token}"))]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The token elsewhere than in Authorization.
    let r = get_with(&h.url("/"), &[("x-access-token", &token)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Two Authorization headers: malformed, whatever they hold.
    let auth = format!("Bearer {token}");
    let r = get_with(
        &h.url("/"),
        &[("authorization", &auth), ("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(challenge(&r).contains("error=\"invalid_request\""));
    // A bearer scheme without a token.
    let r = get_with(&h.url("/"), &[("authorization", "Bearer ")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(up.count(), 0);
    assert_eq!(bearer(&h.url("/"), &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn grpc_calls_without_credentials_get_unauthenticated() {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::Rsa, "k1");
    let (_d, source) = jwks_file(&jwks(&[&key]));
    let h = Harness::start(&jwt_config(&up, &source, "")).await;
    let req = Request::post(h.url("/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .expect("request");
    let r = send(&h2_client(), req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("16")
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn websocket_upgrades_without_credentials_are_refused_before_the_upgrade() {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::Rsa, "k1");
    let (_d, source) = jwks_file(&jwks(&[&key]));
    let h = Harness::start(&jwt_config(&up, &source, "")).await;
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        h.addr
    );
    let answer = raw(h.addr, req.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(status_of(&answer), 401, "{answer}");
    assert!(!answer.contains("101"), "{answer}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn the_access_log_says_why_without_the_token() {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::Rsa, "k1");
    let (d, source) = jwks_file(&jwks(&[&key]));
    let log = d.path().join("access.log");
    let cfg = jwt_config(&up, &source, "").server("access_log", log.display().to_string());
    let h = Harness::start(&cfg).await;
    let expired = key.sign(&with(claims(), "exp", json!(now() - 600)));
    let good = key.sign(&claims());
    assert_eq!(
        bearer(&h.url("/a"), &expired).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(bearer(&h.url("/b"), &good).await.status, StatusCode::OK);
    let lines = {
        let mut text = String::new();
        for _ in 0..50 {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        text
    };
    assert!(
        !lines.contains(&expired) && !lines.contains(&good),
        "no token in the log"
    );
    let events: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(events.len(), 2, "{lines}");
    assert_eq!(events[0]["status"], 401);
    assert_eq!(events[0]["phase"], "authenticate");
    assert_eq!(events[0]["reason"], "authentication: token: expired");
    assert_eq!(events[1]["status"], 200);
    assert_eq!(events[1]["principal"], "corp:alice");
}

#[tokio::test]
async fn several_issuers_each_verify_only_their_own_tokens() {
    let up = RecordingUpstream::start().await;
    let corp = SigningKey::generate(KeyType::Rsa, "corp-1");
    let partner = SigningKey::generate(KeyType::P256, "partner-1");
    let (_d1, corp_src) = jwks_file(&jwks(&[&corp]));
    let (_d2, partner_src) = jwks_file(&jwks(&[&partner]));
    let cfg = jwt_config(&up, &corp_src, "")
        .set("routes.0.authenticate", strings(&["corp", "partner"]))
        .with(&format!(
            r#"
[[authenticators]]
name = "partner"
type = "jwt"
issuer = "https://partner.test/"
audiences = ["drawbridge"]
algorithms = ["ES256"]
{partner_src}
"#
        ));
    let h = Harness::start(&cfg).await;
    let partner_claims = with(claims(), "iss", json!("https://partner.test/"));
    assert_eq!(
        bearer(&h.url("/"), &corp.sign(&claims())).await.status,
        StatusCode::OK
    );
    assert_eq!(
        bearer(&h.url("/"), &partner.sign(&partner_claims))
            .await
            .status,
        StatusCode::OK
    );
    // A partner token signed with the corp key, or a corp token with the partner's.
    let crossed = [
        corp.sign_with_header(&json!({"alg": "RS256", "kid": "corp-1"}), &partner_claims),
        partner.sign_with_header(&json!({"alg": "ES256", "kid": "partner-1"}), &claims()),
    ];
    for t in &crossed {
        assert_eq!(
            bearer(&h.url("/"), t).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(up.count(), 2);
}

/// An issuer whose keys are fetched from `url`, with short timings for the test.
fn fetched(url: &str, timings: &str) -> String {
    format!("jwks_url = \"{url}\"\n{timings}")
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_keys_at_most_once_per_cooldown() {
    let up = RecordingUpstream::start().await;
    let k1 = SigningKey::generate(KeyType::Rsa, "k1");
    let k2 = SigningKey::generate(KeyType::Rsa, "k2");
    let server = JwksServer::start(&jwks(&[&k1])).await;
    let source = fetched(&server.url(), "jwks_cooldown = \"1s\"");
    let h = Harness::start(&jwt_config(&up, &source, "")).await;
    assert_eq!(
        bearer(&h.url("/"), &k1.sign(&claims())).await.status,
        StatusCode::OK
    );
    let after_first = server.fetches();
    assert_eq!(after_first, 1, "fetched once");
    // The issuer rotates in k2.
    server.set(&jwks(&[&k1, &k2]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        bearer(&h.url("/"), &k2.sign(&claims())).await.status,
        StatusCode::OK
    );
    assert_eq!(server.fetches(), 2, "one refetch for the new kid");
    // A flood of unknown kids within the cooldown causes no further fetch.
    for i in 0..20 {
        let t = k2.sign_with_header(
            &json!({"alg": "RS256", "kid": format!("nope-{i}")}),
            &claims(),
        );
        assert_eq!(
            bearer(&h.url("/"), &t).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(server.fetches(), 2, "no refetch within the cooldown");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn keys_outlive_their_server_for_the_grace_period_only() {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::P256, "k1");
    let server = JwksServer::start(&jwks(&[&key])).await;
    let source = fetched(
        &server.url(),
        "jwks_refresh = \"1s\"\njwks_grace = \"2s\"\njwks_cooldown = \"200ms\"",
    );
    let h = Harness::start(&jwt_config(&up, &source, "")).await;
    let token = key.sign(&claims());
    assert_eq!(bearer(&h.url("/"), &token).await.status, StatusCode::OK);
    server.stop();
    // Past the refresh interval, inside the grace period: the cached keys still serve,
    // for a cached token and a token verified now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(bearer(&h.url("/"), &token).await.status, StatusCode::OK);
    let fresh = key.sign(&with(claims(), "jti", json!("2")));
    assert_eq!(bearer(&h.url("/"), &fresh).await.status, StatusCode::OK);
    // Past refresh + grace with no successful fetch: every token of the issuer is refused.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        bearer(&h.url("/"), &token).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        bearer(&h.url("/"), &fresh).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn an_unreachable_jwks_never_admits() {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::Rsa, "k1");
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/jwks.json", closed.local_addr().expect("addr"));
    drop(closed);
    let h = Harness::start(&jwt_config(
        &up,
        &fetched(&url, "jwks_timeout = \"1s\""),
        "",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            bearer(&h.url("/"), &key.sign(&claims())).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn keys_are_fetched_over_https_with_a_configured_ca() {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::Ed25519, "k1");
    let ca = TestCa::new("idp test CA");
    let server = JwksServer::start_tls(&jwks(&[&key]), &ca.leaf(&["127.0.0.1"])).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem).expect("write ca");
    let source = fetched(
        &server.url(),
        &format!("jwks_ca_file = \"{}\"", ca_path.display()),
    );
    let h = Harness::start(&jwt_config(&up, &source, "")).await;
    assert_eq!(
        bearer(&h.url("/"), &key.sign(&claims())).await.status,
        StatusCode::OK
    );
    assert_eq!(server.fetches(), 1);

    // The same server is not trusted without the CA: no keys, no admission.
    let other = TestCa::new("someone else");
    std::fs::write(&ca_path, &other.cert_pem).expect("write ca");
    let h2 = Harness::start(&jwt_config(&up, &source, "")).await;
    assert_eq!(
        bearer(&h2.url("/"), &key.sign(&claims())).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(up.count(), 1);
}

/// Verifies `token` with jose (Node.js), against the JWK Set at `jwks_url`; the payload, or
/// why not.
async fn verify_with_jose(
    jwks_url: &str,
    iss: &str,
    aud: &str,
    token: &str,
) -> Result<Value, String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
    assert!(
        std::path::Path::new(dir).join("node_modules/jose").exists(),
        "jose is not installed: run `npm ci` in {dir} (scripts/test.sh does)"
    );
    let out = tokio::process::Command::new("node")
        .arg(format!("{dir}/verify-jwt.mjs"))
        .args([jwks_url, iss, aud, token])
        .output()
        .await
        .expect("node runs");
    if out.status.success() {
        let line: Value = serde_json::from_slice(&out.stdout).expect("json");
        Ok(line["payload"].clone())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn the_upstream_gets_an_identity_it_can_verify_with_any_jwt_library() {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::Rsa, "k1");
    let (_d, source) = jwks_file(&jwks(&[&key]));
    let h = Harness::start(&jwt_config(&up, &source, "")).await;
    let token = key.sign(&claims());
    assert_eq!(bearer(&h.url("/a"), &token).await.status, StatusCode::OK);
    assert_eq!(bearer(&h.url("/b"), &token).await.status, StatusCode::OK);
    let seen = up.received();
    let assertion = seen[0]
        .header("x-drawbridge-identity")
        .expect("identity assertion")
        .to_string();
    // One caller, one upstream: the assertion is reused while it is fresh.
    assert_eq!(
        seen[1].header("x-drawbridge-identity"),
        Some(assertion.as_str())
    );

    let jwks_url = h.url("/.drawbridge/jwks.json");
    let r = get(&jwks_url).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/jwk-set+json")
    );
    let doc: Value = serde_json::from_str(&r.body).expect("jwks json");
    assert_eq!(doc["keys"][0]["kty"], "EC");
    assert!(
        doc["keys"][0].get("d").is_none(),
        "no private part published"
    );

    let payload = verify_with_jose(&jwks_url, "drawbridge", "app", &assertion)
        .await
        .expect("the assertion verifies");
    assert_eq!(payload["sub"], "alice");
    assert_eq!(payload["kind"], "user");
    assert_eq!(payload["authn"], "corp");
    assert_eq!(payload["idp"], ISS);
    assert_eq!(payload["groups"], json!(["eng"]));
    assert_eq!(payload["attrs"], json!({"tenant": "acme"}));
    assert_eq!(payload["amr"], json!(["jwt"]));
    let (iat, exp) = (
        payload["iat"].as_i64().unwrap(),
        payload["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 60, "60 s lifetime by default");
    assert!((iat - now()).abs() <= 5);
    // Bound to its upstream: another audience refuses it.
    let err = verify_with_jose(&jwks_url, "drawbridge", "billing", &assertion)
        .await
        .expect_err("wrong audience");
    assert!(err.contains("aud"), "{err}");
    // And a tampered one does not verify.
    let mut parts: Vec<String> = assertion.split('.').map(String::from).collect();
    parts[1] =
        encode_part(&json!({"iss": "drawbridge", "aud": "app", "sub": "admin", "exp": now() + 60}));
    assert!(
        verify_with_jose(&jwks_url, "drawbridge", "app", &parts.join("."))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn per_request_eddsa_assertions_carry_the_request_id() {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::P256, "k1");
    let (_d, source) = jwks_file(&jwks(&[&key]));
    let cfg = jwt_config(&up, &source, "").with(
        "[identity]\nissuer = \"https://gw.test\"\nalgorithm = \"EdDSA\"\nlifetime = \"30s\"\nper_request = true",
    );
    let h = Harness::start(&cfg).await;
    let token = key.sign(&claims());
    for _ in 0..2 {
        assert_eq!(bearer(&h.url("/"), &token).await.status, StatusCode::OK);
    }
    let seen = up.received();
    let a: Vec<&str> = seen
        .iter()
        .map(|r| r.header("x-drawbridge-identity").expect("assertion"))
        .collect();
    assert_ne!(a[0], a[1], "one assertion per request");
    for (r, assertion) in seen.iter().zip(&a) {
        let payload = verify_with_jose(
            &h.url("/.drawbridge/jwks.json"),
            "https://gw.test",
            "app",
            assertion,
        )
        .await
        .expect("verifies");
        assert_eq!(payload["rid"].as_str(), r.header("x-request-id"));
        assert_eq!(
            payload["exp"].as_i64().unwrap() - payload["iat"].as_i64().unwrap(),
            30
        );
    }
}

#[tokio::test]
async fn client_sent_identity_headers_never_reach_the_upstream() {
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::Rsa, "k1");
    let (_d, source) = jwks_file(&jwks(&[&key]));
    let cfg = jwt_config(&up, &source, "identity_headers = true")
        .with("[identity]\nheader = \"X-Identity\"")
        .with(
            "[[routes]]\nname = \"open\"\nprefix = \"/open\"\nupstream = \"app\"\npublic = true\n",
        );
    let h = Harness::start(&cfg).await;
    let token = key.sign(&with(claims(), "groups", json!(["eng", "a,b", "ops"])));
    let auth = format!("Bearer {token}");
    let forged = [
        ("x-identity", "forged"),
        ("x-drawbridge-identity", "forged"),
        ("x-drawbridge-user", "admin"),
        ("X_Drawbridge_User", "admin"),
        ("x-drawbridge-groups", "admins"),
    ];
    let mut with_auth: Vec<(&str, &str)> = forged.to_vec();
    with_auth.push(("authorization", &auth));
    assert_eq!(
        get_with(&h.url("/api"), &with_auth).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_with(&h.url("/open"), &forged).await.status,
        StatusCode::OK
    );
    let seen = up.received();
    let authed = &seen[0];
    assert_ne!(authed.header("x-identity"), Some("forged"));
    assert!(
        authed
            .header("x-identity")
            .is_some_and(|v| v.split('.').count() == 3)
    );
    assert_eq!(authed.header("x-drawbridge-identity"), None);
    assert_eq!(authed.header("x-drawbridge-user"), Some("alice"));
    assert_eq!(authed.header("x_drawbridge_user"), None);
    // A group that would read as two is left out.
    assert_eq!(authed.header("x-drawbridge-groups"), Some("eng,ops"));
    let public = &seen[1];
    for (name, _) in forged {
        assert_eq!(
            public.header(&name.to_ascii_lowercase()),
            None,
            "{name} on a public route"
        );
    }
}

#[tokio::test]
async fn an_identity_header_named_outside_the_stripped_ones_is_never_the_clients() {
    // No header rule strips this name: only the mutate step keeps a client's copy out.
    let up = RecordingUpstream::start().await;
    let key = SigningKey::generate(KeyType::Rsa, "k1");
    let (_d, source) = jwks_file(&jwks(&[&key]));
    let cfg = jwt_config(&up, &source, "")
        .with("[identity]\nheader = \"X-Gateway-Assertion\"")
        .with(
            "[[routes]]\nname = \"open\"\nprefix = \"/open\"\nupstream = \"app\"\npublic = true\n",
        );
    let h = Harness::start(&cfg).await;
    let auth = format!("Bearer {}", key.sign(&claims()));
    let forged = ("x-gateway-assertion", "forged");
    assert_eq!(
        get_with(&h.url("/open"), &[forged]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_with(&h.url("/api"), &[forged, ("authorization", &auth)])
            .await
            .status,
        StatusCode::OK
    );
    let seen = up.received();
    assert_eq!(seen[0].header("x-gateway-assertion"), None, "public route");
    let minted = seen[1].header("x-gateway-assertion");
    assert_ne!(minted, Some("forged"));
    assert!(
        minted.is_some_and(|v| v.split('.').count() == 3),
        "{minted:?}"
    );
}

#[tokio::test]
async fn a_key_withdrawn_from_the_jwks_stops_its_cached_tokens() {
    let up = RecordingUpstream::start().await;
    let old = SigningKey::generate(KeyType::Rsa, "old");
    let new = SigningKey::generate(KeyType::Rsa, "new");
    let server = JwksServer::start(&jwks(&[&old, &new])).await;
    let source = fetched(
        &server.url(),
        "jwks_refresh = \"1s\"\njwks_cooldown = \"200ms\"",
    );
    let h = Harness::start(&jwt_config(&up, &source, "")).await;
    let token = old.sign(&claims());
    // Verified, then served from the token cache.
    for _ in 0..2 {
        assert_eq!(bearer(&h.url("/"), &token).await.status, StatusCode::OK);
    }
    // The issuer withdraws the key (say it leaked).
    server.set(&jwks(&[&new]));
    let refused = eventually(Duration::from_secs(10), || {
        let url = h.url("/");
        let token = token.clone();
        async move { bearer(&url, &token).await.status == StatusCode::UNAUTHORIZED }
    })
    .await;
    assert!(refused, "a token of a withdrawn key kept being admitted");
    assert_eq!(
        bearer(&h.url("/"), &new.sign(&claims())).await.status,
        StatusCode::OK
    );
}

/// The cooldown is between fetches caused by unknown `kid`s only: an issuer that rotates
/// right after Drawbridge started (or refreshed) is followed at once, not 30 s later.
#[tokio::test]
async fn a_rotation_right_after_start_is_followed_at_once() {
    let up = RecordingUpstream::start().await;
    let k1 = SigningKey::generate(KeyType::Rsa, "k1");
    let k2 = SigningKey::generate(KeyType::Rsa, "k2");
    let server = JwksServer::start(&jwks(&[&k1])).await;
    let source = fetched(&server.url(), "jwks_cooldown = \"30s\"");
    let h = Harness::start(&jwt_config(&up, &source, "")).await;
    assert_eq!(
        bearer(&h.url("/"), &k1.sign(&claims())).await.status,
        StatusCode::OK
    );
    assert_eq!(server.fetches(), 1);
    server.set(&jwks(&[&k1, &k2]));
    assert_eq!(
        bearer(&h.url("/"), &k2.sign(&claims())).await.status,
        StatusCode::OK,
        "the new key is fetched for the first unknown kid"
    );
    assert_eq!(server.fetches(), 2);
    // The next unknown kid is within the cooldown of that fetch.
    let t = k2.sign_with_header(&json!({"alg": "RS256", "kid": "nope"}), &claims());
    assert_eq!(
        bearer(&h.url("/"), &t).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(server.fetches(), 2);
}
