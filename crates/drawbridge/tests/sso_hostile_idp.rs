//! A provider that answers the code exchange with ID tokens crafted to get a person in:
//! unsigned, signed with its public key as an HMAC secret, for another client, with the
//! wrong nonce, from another issuer, expired, with an unknown key, duplicated claims, a
//! `crit` header, an embedded key. Every one ends the sign-in with no session and nothing
//! forwarded; the well-formed token (the control) signs the person in.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::browser::Browser;
use drawbridge_testkit::certs::TestCa;
use drawbridge_testkit::harness::*;
use drawbridge_testkit::jwt::{KeyType, SigningKey, encode_part, now, sign_hs256};
use http::StatusCode;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

const SESSION: &str = "__Host-drawbridge-session";

/// What the provider's token endpoint answers, given the issuer and the nonce sent.
type Mint = Box<dyn Fn(&str, &str) -> String + Send + Sync>;

struct Provider {
    issuer: String,
    key: SigningKey,
    nonce: Mutex<String>,
    mint: Mutex<Mint>,
}

async fn provider() -> Arc<Provider> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let issuer = format!("http://{}", listener.local_addr().expect("addr"));
    let p = Arc::new(Provider {
        issuer,
        key: SigningKey::generate(KeyType::P256, "good-1"),
        nonce: Mutex::new(String::new()),
        mint: Mutex::new(Box::new(|_, _| String::new())),
    });
    let served = p.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let p = served.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let p = p.clone();
                    async move { Ok::<_, Infallible>(p.answer(&req)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    p
}

impl Provider {
    fn answer(&self, req: &http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
        let q: HashMap<String, String> =
            url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let json = |v: Value| {
            http::Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(v.to_string())))
                .expect("response")
        };
        let i = &self.issuer;
        match req.uri().path() {
            "/.well-known/openid-configuration" => json(json!({
                "issuer": i,
                "authorization_endpoint": format!("{i}/authorize"),
                "token_endpoint": format!("{i}/token"),
                "jwks_uri": format!("{i}/jwks"),
                "code_challenge_methods_supported": ["S256"],
                "authorization_response_iss_parameter_supported": true,
            })),
            "/jwks" => json(
                serde_json::from_str(&drawbridge_testkit::jwt::jwks(&[&self.key])).expect("jwks"),
            ),
            "/authorize" => {
                *self.nonce.lock().expect("lock") = q["nonce"].clone();
                let mut to = url::Url::parse(&q["redirect_uri"]).expect("redirect_uri");
                to.query_pairs_mut()
                    .append_pair("code", "the-code")
                    .append_pair("state", &q["state"])
                    .append_pair("iss", i);
                http::Response::builder()
                    .status(302)
                    .header("location", to.as_str())
                    .body(Full::new(Bytes::new()))
                    .expect("response")
            }
            "/token" => {
                let nonce = self.nonce.lock().expect("lock").clone();
                let token = (self.mint.lock().expect("lock"))(i, &nonce);
                json(json!({
                    "access_token": "at", "token_type": "Bearer", "expires_in": 300,
                    "id_token": token,
                }))
            }
            _ => http::Response::builder()
                .status(404)
                .body(Full::new(Bytes::new()))
                .expect("response"),
        }
    }
}

/// The claims of a well-formed ID token for `nonce`.
fn good(issuer: &str, nonce: &str) -> Value {
    let n = now();
    json!({
        "iss": issuer, "aud": "drawbridge", "sub": "mallory", "iat": n, "exp": n + 300,
        "nonce": nonce, "email": "mallory@corp.test", "email_verified": true,
    })
}

#[tokio::test]
async fn crafted_id_tokens_never_sign_anyone_in() {
    let p = provider().await;
    let up = RecordingUpstream::start().await;
    let ca = TestCa::new("hostile ca");
    let leaf = ca.leaf(&["app.test"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let config = format!(
        r#"
[server]
access_log = "off"
audit_log = "off"

[[listeners]]
name = "web"
address = "127.0.0.1:{port}"
[[listeners.tls.certificates]]
cert = "leaf.crt"
key = "leaf.key"

[[upstreams]]
name = "app"
endpoints = ["{up}"]

[[authenticators]]
name = "corp"
type = "oidc"
issuer = "{issuer}"
client_id = "drawbridge"
client_secret_file = "corp.secret"
algorithms = ["ES256", "RS256"]
max_lifetime = "1h"

[sessions]
path = "sessions.redb"

[[routes]]
name = "app"
host = "app.test"
prefix = "/"
upstream = "app"
authenticate = ["corp"]
authorize = false
"#,
        up = up.url(),
        issuer = p.issuer,
    );
    let h = Harness::start_with(
        &config,
        &[
            ("leaf.crt", &leaf.cert_pem),
            ("leaf.key", &leaf.key_pem),
            ("corp.secret", "s\n"),
        ],
    )
    .await;
    let other = SigningKey::generate(KeyType::P256, "other-1");
    let rsa = SigningKey::generate(KeyType::Rsa, "good-1");
    let header = |alg: &str, kid: &str| json!({"alg": alg, "kid": kid, "typ": "JWT"});
    let with = |f: fn(&mut Value)| {
        move |iss: &str, nonce: &str| {
            let mut c = good(iss, nonce);
            f(&mut c);
            c
        }
    };
    let key = &p.key;
    let cases: Vec<(&str, Mint)> = vec![
        ("alg none", {
            Box::new(|iss, nonce| {
                format!(
                    "{}.{}.",
                    encode_part(&json!({"alg": "none", "typ": "JWT"})),
                    encode_part(&good(iss, nonce))
                )
            })
        }),
        ("HS256 with the public key as secret", {
            let raw = key.public_raw.clone();
            Box::new(move |iss, nonce| {
                sign_hs256(
                    &raw,
                    &json!({"alg": "HS256", "kid": "good-1"}),
                    &good(iss, nonce),
                )
            })
        }),
        (
            "another client's token",
            Box::new(with_key(key, with(|c| c["aud"] = json!("other-client")))),
        ),
        (
            "aud with another client and no azp",
            Box::new(with_key(
                key,
                with(|c| c["aud"] = json!(["drawbridge", "other"])),
            )),
        ),
        (
            "azp naming another client",
            Box::new(with_key(key, with(|c| c["azp"] = json!("other")))),
        ),
        (
            "wrong nonce",
            Box::new(with_key(key, with(|c| c["nonce"] = json!("not-the-nonce")))),
        ),
        (
            "no nonce",
            Box::new(with_key(
                key,
                with(|c| {
                    c.as_object_mut().expect("object").remove("nonce");
                }),
            )),
        ),
        (
            "another issuer",
            Box::new(with_key(
                key,
                with(|c| c["iss"] = json!("https://evil.test")),
            )),
        ),
        (
            "expired",
            Box::new(with_key(
                key,
                with(|c| {
                    c["iat"] = json!(now() - 7200);
                    c["exp"] = json!(now() - 3600);
                }),
            )),
        ),
        (
            "issued in the future",
            Box::new(with_key(key, with(|c| c["iat"] = json!(now() + 3600)))),
        ),
        (
            "lifetime beyond max_lifetime",
            Box::new(with_key(key, with(|c| c["exp"] = json!(now() + 86_400)))),
        ),
        (
            "no sub",
            Box::new(with_key(
                key,
                with(|c| {
                    c.as_object_mut().expect("object").remove("sub");
                }),
            )),
        ),
        ("signed by a key not in the provider's set", {
            Box::new(move |iss: &str, nonce: &str| other.sign(&good(iss, nonce)))
        }),
        ("an RSA key under the provider's kid", {
            Box::new(move |iss: &str, nonce: &str| rsa.sign(&good(iss, nonce)))
        }),
        ("sub named twice", {
            let k = clone_key(key);
            Box::new(move |iss: &str, nonce: &str| {
                let c = good(iss, nonce).to_string();
                let twice = c.replacen('{', "{\"sub\":\"admin\",", 1);
                k.sign_text(&header("ES256", "good-1").to_string(), &twice)
            })
        }),
        ("a crit header", {
            let k = clone_key(key);
            Box::new(move |iss: &str, nonce: &str| {
                k.sign_with_header(
                    &json!({"alg": "ES256", "kid": "good-1", "crit": ["exp"]}),
                    &good(iss, nonce),
                )
            })
        }),
        ("an embedded jwk of the attacker's", {
            let attacker = SigningKey::generate(KeyType::P256, "good-1");
            Box::new(move |iss: &str, nonce: &str| {
                attacker.sign_with_header(
                    &json!({"alg": "ES256", "kid": "good-1", "jwk": attacker.jwk}),
                    &good(iss, nonce),
                )
            })
        }),
        (
            "no ID token at all",
            Box::new(|_: &str, _: &str| String::new()),
        ),
    ];
    for (what, mint) in cases {
        *p.mint.lock().expect("lock") = mint;
        let mut b = Browser::new(h.addr, &ca.cert_pem);
        let page = b.navigate(&format!("https://app.test:{port}/in")).await;
        assert_eq!(
            page.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            page.body
        );
        assert!(b.cookie("app.test", SESSION).is_none(), "{what}");
        assert_eq!(up.count(), 0, "{what}");
    }
    // The control: the same flow with a well-formed token signs the person in.
    *p.mint.lock().expect("lock") =
        Box::new(with_key(&p.key, |iss: &str, nonce: &str| good(iss, nonce)));
    let mut b = Browser::new(h.addr, &ca.cert_pem);
    let page = b.navigate(&format!("https://app.test:{port}/in")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(up.count(), 1);
}

/// A copy of the P-256 `key` that signs the same way (the provider keeps its own).
fn clone_key(key: &SigningKey) -> Arc<SigningKey> {
    Arc::new(SigningKey::p256_from_pem(&key.pem, &key.kid))
}

/// Signs what `claims` makes with `key`.
fn with_key(
    key: &SigningKey,
    claims: impl Fn(&str, &str) -> Value + Send + Sync + 'static,
) -> impl Fn(&str, &str) -> String + Send + Sync + 'static {
    let k = clone_key(key);
    move |iss, nonce| k.sign(&claims(iss, nonce))
}
