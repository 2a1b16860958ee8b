//! Second factors at the gateway, through the real server and a real OpenID provider (npm
//! `oidc-provider`): TOTP enrolled from the page and checked with an independent
//! implementation (npm `otpauth`), codes used once, attempts limited, recovery codes,
//! step-up per route and per policy (method and parameter) with a maximum age, RFC 9470
//! challenges for API clients and gRPC, and two instances sharing Redis. Every refusal is
//! checked at the upstream too: nothing reaches it before the factor is proven.

use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::browser::{Browser, Page};
use drawbridge_testkit::certs::TestCa;
use drawbridge_testkit::harness::*;
use drawbridge_testkit::idp::{Idp, settings};
use drawbridge_testkit::jwt::{KeyType, SigningKey, claims_of, jwks, now};
use http::{Method, StatusCode};
use serde_json::json;

const SESSION: &str = "__Host-drawbridge-session";

/// The policies: people and the CI issuer's users use the app; a DELETE needs a second
/// factor within five minutes, a refund above 500 one within ten; nobody deletes archives,
/// factor or not.
const POLICIES: &str = r#"
@id("everyone-uses-the-app")
permit (principal, action, resource in Upstream::"app");

@id("deletes-need-a-fresh-factor")
@mfa_max_age("5m")
forbid (principal, action == Action::"DELETE", resource == Route::"app")
unless { context.authn has mfa_age && context.authn.mfa_age <= 300 };

@id("big-refunds-need-a-factor")
@mfa_max_age("10m")
forbid (principal, action == Action::"POST", resource == Route::"refunds")
when { context.query has amount && context.query.amount > 500 }
unless { context.authn has mfa_age && context.authn.mfa_age <= 600 };

@id("archives-stay")
forbid (principal, action == Action::"DELETE", resource == Route::"app")
when { context.path like "/archive/*" };
"#;

struct Mfa {
    _h: Vec<Harness>,
    /// Where browsers reach each instance.
    addrs: Vec<std::net::SocketAddr>,
    ports: Vec<u16>,
    up: RecordingUpstream,
    _idp: Idp,
    ca: TestCa,
    ci: SigningKey,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Mfa {
    fn browser(&self, instance: usize) -> Browser {
        Browser::new(self.addrs[instance], &self.ca.cert_pem)
    }

    fn url(&self, instance: usize, path: &str) -> String {
        format!("https://app.test:{}{path}", self.ports[instance])
    }

    /// A token of the CI issuer for `sub` with `extra` claims.
    fn token(&self, extra: serde_json::Value) -> String {
        let n = now();
        let mut claims = serde_json::json!({
            "iss": "https://ci.test", "aud": "apps", "sub": "robot", "iat": n, "exp": n + 300,
        });
        if let (Some(c), serde_json::Value::Object(e)) = (claims.as_object_mut(), extra) {
            c.extend(e);
        }
        self.ci.sign(&claims)
    }

    /// The audit events written, once `ready` holds of them (the trail is written off the
    /// request path; waits up to five seconds).
    async fn audit_events(
        &self,
        ready: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        for _ in 0..50 {
            events = std::fs::read_to_string(&self.audit)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if ready(&events) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        events
    }
}

fn free_port() -> u16 {
    drawbridge_testkit::reserved_port()
}

/// Drawbridge (`instances` of it, sharing `redis` when given) in front of a recording
/// upstream, people signing in at a real provider.
async fn setup(instances: usize, redis: Option<String>) -> Mfa {
    let ports: Vec<u16> = (0..instances).map(|_| free_port()).collect();
    let ca = TestCa::new("mfa ca");
    let leaf = ca.leaf(&["app.test"]);
    let up = RecordingUpstream::start().await;
    let uris = |path: &str| -> Vec<String> {
        ports
            .iter()
            .map(|p| format!("https://app.test:{p}{path}"))
            .collect()
    };
    let mut corp = settings(
        "drawbridge",
        "corp-secret",
        &uris("/.drawbridge/callback"),
        &uris("/.drawbridge/signed_out"),
        serde_json::json!({}),
    );
    // Carol signs in with a second factor at the provider, which says so in `amr`; every
    // ID token carries `auth_time`.
    corp["users"]["carol"] = json!({"password": "carol-pw", "amr": ["pwd", "mfa"],
        "claims": {"email": "carol@corp.test", "email_verified": true, "groups": [], "name": "Carol"}});
    corp["clients"][0]["require_auth_time"] = json!(true);
    let idp = Idp::start(&corp).await;
    let ci = SigningKey::generate(KeyType::P256, "ci-1");
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.log");
    let store = match &redis {
        Some(url) => format!("store = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"mfa:\""),
        None => format!("path = \"{}\"", dir.path().join("sessions.redb").display()),
    };
    let mut harnesses = Vec::new();
    for port in &ports {
        let config = format!(
            r#"
[server]
access_log = "off"
audit_log = "{audit}"

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
issuer = "{idp}"
client_id = "drawbridge"
client_secret_file = "corp.secret"
scopes = ["openid", "email", "profile", "groups"]
claims = {{ groups = "groups", attributes = ["email"] }}
trusted_mfa = {{ amr = ["mfa"] }}

[[authenticators]]
name = "ci"
type = "jwt"
issuer = "https://ci.test"
audiences = ["apps"]
jwks_file = "ci.jwks"
trusted_mfa = {{ amr = ["mfa", "hwk"], acr = ["phr"] }}

[sessions]
{store}
key_file = "session.key"

[mfa]
issuer = "Drawbridge Test"

[[alerts.detectors]]
name = "guessing-codes"
on = "mfa_failure"
threshold = 5
window = "10m"

[policy]
files = ["mfa.cedar"]
plain_names = ["corp", "ci"]

[[routes]]
name = "secure"
host = "app.test"
prefix = "/secure"
upstream = "app"
authenticate = ["corp", "ci"]
authorize = false
mfa = {{ required = true, max_age = "8s" }}

[[routes]]
name = "refunds"
host = "app.test"
path = "/refunds"
upstream = "app"
authenticate = ["corp", "ci"]
[routes.context]
query = {{ amount = "Long" }}

[[routes]]
name = "app"
host = "app.test"
prefix = "/"
upstream = "app"
authenticate = ["corp", "ci"]
"#,
            audit = audit.display(),
            up = up.url(),
            idp = idp.issuer,
        );
        let files = [
            ("leaf.crt", leaf.cert_pem.as_str()),
            ("leaf.key", leaf.key_pem.as_str()),
            ("corp.secret", "corp-secret\n"),
            ("ci.jwks", &jwks(&[&ci])),
            ("mfa.cedar", POLICIES),
            // One key for every instance: each opens what another sealed.
            (
                "session.key",
                "q0hK0c4lFZ2Lhk4Ix6cEOWXzK3Dr3vC3rO7x3l9xQ0U=\n",
            ),
        ];
        let h = Harness::start_with(&config, &files).await;
        assert_eq!(h.addr.port(), *port);
        harnesses.push(h);
    }
    Mfa {
        addrs: ports
            .iter()
            .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect(),
        _h: harnesses,
        ports,
        up,
        _idp: idp,
        ca,
        ci,
        audit,
        _dir: dir,
    }
}

/// Signs `user` in on instance `i` through the provider's form, landing on `path`.
async fn sign_in(m: &Mfa, b: &mut Browser, i: usize, user: &str, path: &str) -> Page {
    let form = b.navigate(&m.url(i, path)).await;
    assert!(
        form.url.contains("/interaction/"),
        "{}: {}",
        form.url,
        form.body
    );
    let action = form.form_action().expect("sign-in form");
    let page = b
        .submit(
            &form.url,
            &action,
            &[("login", user), ("password", &format!("{user}-pw"))],
        )
        .await;
    assert!(b.cookie("app.test", SESSION).is_some());
    page
}

/// Codes for `uri` now and at each offset (seconds), by npm `otpauth`.
fn codes(uri: &str, offsets: &[i64]) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/totp.mjs");
    let out = std::process::Command::new("node")
        .arg(script)
        .arg(uri)
        .args(offsets.iter().map(|o| o.to_string()))
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The text between `start` and the next `end` after it.
fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    Some(&s[from..from + s[from..].find(end)?])
}

/// Enrols the signed-in person from the enrolment page: the QR code must encode the URI
/// the secret on the page makes; a first code from `otpauth` confirms it. Returns the URI,
/// the recovery codes, and the code that confirmed it with the one of the step before (both
/// spent from then on, however much later they are tried).
async fn enrol(
    m: &Mfa,
    b: &mut Browser,
    i: usize,
    label: &str,
) -> (String, Vec<String>, [String; 2]) {
    let page = b
        .navigate(&m.url(i, "/.drawbridge/mfa/enrol?rd=%2Fhome"))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let secret = between(&page.body, "<span class=\"secret\">", "</span>")
        .expect("the secret as text")
        .to_string();
    assert!(
        secret.len() >= 32
            && secret
                .bytes()
                .all(|c| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c)),
        "{secret}"
    );
    let uri = between(&page.body, "class=\"otpauth\" href=\"", "\"")
        .expect("the app link")
        .replace("&amp;", "&");
    assert!(
        uri.starts_with("otpauth://totp/Drawbridge%20Test:"),
        "{uri}"
    );
    assert!(
        uri.contains(&urlencode(label)) || uri.contains(label),
        "{uri}"
    );
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    // The QR code shows exactly that URI: drawn again from it here, it is the same.
    let svg = between(&page.body, "<div class=\"qr\"", "</div>").expect("qr code");
    assert!(svg.contains("<svg"), "{svg}");
    let expected = qrcode::QrCode::new(uri.as_bytes())
        .expect("qr")
        .render::<qrcode::render::svg::Color<'_>>()
        .quiet_zone(true)
        .min_dimensions(200, 200)
        .build();
    assert!(
        svg.contains(&expected[expected.find("<svg").expect("svg")..]),
        "the QR code is not the URI {uri}"
    );
    early_in_a_step().await;
    let [before, code]: [String; 2] = codes(&uri, &[-60, -30]).try_into().expect("two codes");
    let csrf = page.input("csrf").expect("csrf");
    let done = b
        .submit(
            &page.url,
            "/.drawbridge/mfa/enrol",
            &[("code", &code), ("rd", "/home"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(
        done.body.contains("Save your recovery codes"),
        "{}",
        done.body
    );
    let recovery: Vec<String> = done
        .body
        .split("<li><code>")
        .skip(1)
        .filter_map(|c| c.split("</code>").next())
        .map(str::to_string)
        .collect();
    assert_eq!(recovery.len(), 10, "{}", done.body);
    (uri, recovery, [before, code])
}

/// Waits until the current 30-second step has at least ten seconds left, so codes computed
/// now keep their meaning (previous, current, next step) while a test uses them.
async fn early_in_a_step() {
    let into = now().rem_euclid(30);
    if into > 18 {
        tokio::time::sleep(std::time::Duration::from_secs((31 - into) as u64)).await;
    }
}

/// Submits `code` on the verify page, back to `rd`.
async fn verify(m: &Mfa, b: &mut Browser, i: usize, code: &str, rd: &str) -> Page {
    let form = b
        .navigate(&m.url(i, &format!("/.drawbridge/mfa/verify?rd={}", urlencode(rd))))
        .await;
    let csrf = form.input("csrf").expect("csrf");
    b.request(
        Method::POST,
        &m.url(i, "/.drawbridge/mfa/verify"),
        Some(
            format!(
                "code={}&rd={}&csrf={}",
                urlencode(code),
                urlencode(rd),
                urlencode(&csrf)
            )
            .into(),
        ),
        &[
            ("content-type", "application/x-www-form-urlencoded".into()),
            ("origin", format!("https://app.test:{}", m.ports[i])),
            ("accept", "text/html".into()),
        ],
    )
    .await
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// An API client's call with a bearer token.
async fn bearer(m: &Mfa, client: &mut Browser, method: Method, path: &str, token: &str) -> Page {
    client
        .request(
            method,
            &m.url(0, path),
            None,
            &[("authorization", format!("Bearer {token}"))],
        )
        .await
}

/// A script's request (no navigation headers) with the browser's cookies.
async fn fetch(m: &Mfa, b: &mut Browser, method: Method, path: &str) -> Page {
    b.request(method, &m.url(0, path), None, &[("accept", "*/*".into())])
        .await
}

#[tokio::test]
async fn a_person_enrols_totp_and_steps_up_per_route_method_and_parameter() {
    let m = setup(1, None).await;
    let mut b = m.browser(0);
    let home = sign_in(&m, &mut b, 0, "alice", "/home").await;
    assert_eq!(home.status, StatusCode::OK, "{}", home.body);

    // A route that requires a factor: the browser is sent to prove one, and has none yet.
    m.up.clear();
    let asked = b.navigate(&m.url(0, "/secure/report?x=1")).await;
    assert_eq!(asked.status, StatusCode::OK);
    assert!(
        asked.url.contains("/.drawbridge/mfa/verify?rd="),
        "{}",
        asked.url
    );
    assert!(
        asked.body.contains("Set up an authenticator app"),
        "{}",
        asked.body
    );
    assert_eq!(
        m.up.count(),
        0,
        "nothing reaches the upstream before the factor"
    );

    let (uri, recovery, spent) = enrol(&m, &mut b, 0, "alice@corp.test").await;
    // Enrolled and proved: the route lets the person through, and the upstream is told.
    let page = b.navigate(&m.url(0, "/secure/report?x=1")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.url, m.url(0, "/secure/report?x=1"));
    let got = m.up.last().expect("forwarded");
    let claims = claims_of(got.header("x-drawbridge-identity").expect("identity"));
    assert_eq!(claims["amr"], serde_json::json!(["oidc", "otp", "mfa"]));
    let totp_at = claims["factors"]["totp"]
        .as_i64()
        .expect("the factor's time");
    assert!((now() - totp_at).abs() < 10, "{claims}");
    assert!(
        got.header("cookie").is_none_or(|c| !c.contains(SESSION)),
        "the session cookie never reaches the upstream"
    );

    // The code that confirmed enrolment is spent; so is every code of an earlier step (the
    // two taken when it was made: a step may have begun since, so codes counted from now
    // would not be those).
    for code in &spent {
        let again = verify(&m, &mut b, 0, code, "/home").await;
        assert_eq!(again.status, StatusCode::UNAUTHORIZED, "{}", again.body);
    }
    early_in_a_step().await;
    let [current, next, far] = codes(&uri, &[0, 30, 60]).try_into().expect("three codes");
    // Two steps away: refused.
    let far_off = verify(&m, &mut b, 0, &far, "/home").await;
    assert_eq!(far_off.status, StatusCode::UNAUTHORIZED);
    // The next step's code is accepted, once.
    let ok = verify(&m, &mut b, 0, &next, "/home").await;
    assert_eq!(ok.status, StatusCode::FOUND, "{}", ok.body);
    assert_eq!(ok.location(), Some(m.url(0, "/home").as_str()));
    let replay = verify(&m, &mut b, 0, &next, "/home").await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    // And the current one is older than the last accepted: refused too.
    let older = verify(&m, &mut b, 0, &current, "/home").await;
    assert_eq!(older.status, StatusCode::UNAUTHORIZED);

    // The route's maximum age (8s) passes: the browser is asked again.
    tokio::time::sleep(std::time::Duration::from_secs(9)).await;
    m.up.clear();
    let stale = b.navigate(&m.url(0, "/secure/report?x=1")).await;
    assert!(
        stale.url.contains("/.drawbridge/mfa/verify"),
        "{}",
        stale.url
    );
    assert!(stale.body.contains("name=\"code\""));
    assert_eq!(m.up.count(), 0);
    // A recovery code proves it, once.
    let used = verify(&m, &mut b, 0, &recovery[0], "/secure/report?x=1").await;
    assert_eq!(used.status, StatusCode::FOUND, "{}", used.body);
    let page = b.navigate(&m.url(0, "/secure/report?x=1")).await;
    assert_eq!(page.status, StatusCode::OK);
    let claims = claims_of(
        m.up.last()
            .expect("forwarded")
            .header("x-drawbridge-identity")
            .expect("identity"),
    );
    assert!(claims["factors"]["recovery_code"].is_i64(), "{claims}");
    let reused = verify(&m, &mut b, 0, &recovery[0], "/home").await;
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED);

    // A policy by method: DELETE within five minutes of a factor passes; a plain forbid
    // stays a 403 whatever the factor.
    let del = fetch(&m, &mut b, Method::DELETE, "/things/1").await;
    assert_eq!(del.status, StatusCode::OK, "{}", del.body);
    m.up.clear();
    let archive = fetch(&m, &mut b, Method::DELETE, "/archive/1").await;
    assert_eq!(archive.status, StatusCode::FORBIDDEN);
    // A policy by parameter: a small refund needs nothing, a big one a factor within ten
    // minutes, which this session has.
    let small = fetch(&m, &mut b, Method::POST, "/refunds?amount=100").await;
    assert_eq!(small.status, StatusCode::OK);
    let big = fetch(&m, &mut b, Method::POST, "/refunds?amount=900").await;
    assert_eq!(big.status, StatusCode::OK);
    assert_eq!(m.up.count(), 3 - 1, "the archive delete never reached it");

    // The audit trail says what was required and presented, and every attempt.
    let events = m
        .audit_events(|e| {
            e.iter()
                .any(|e| e["action"] == "POST" && e["resource"] == "refunds")
        })
        .await;
    let attempts: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["action"] == "mfa.verify")
        .collect();
    assert!(
        attempts
            .iter()
            .any(|e| e["decision"] == "deny" && e["reason"] == "replayed_code"),
        "{attempts:?}"
    );
    assert!(
        attempts
            .iter()
            .any(|e| e["decision"] == "deny" && e["reason"] == "wrong_code")
    );
    assert!(
        attempts
            .iter()
            .any(|e| e["decision"] == "allow" && e["mfa"]["presented"] == "recovery_code")
    );
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "mfa.enrol" && e["decision"] == "allow")
    );
    let secure_denied = events
        .iter()
        .find(|e| e["resource"] == "secure" && e["decision"] == "deny")
        .expect("the step-up is audited");
    assert_eq!(secure_denied["mfa"]["satisfied"], false);
    assert_eq!(secure_denied["mfa"]["max_age"], 8);
    let delete_allowed = events
        .iter()
        .find(|e| e["action"] == "DELETE" && e["decision"] == "allow")
        .expect("the delete");
    assert!(delete_allowed["policies"].as_array().is_some());
    assert!(
        !events.iter().any(|e| e.to_string().contains(&next)),
        "no code in the audit trail"
    );
}

#[tokio::test]
async fn a_stale_factor_asks_again_and_a_form_is_never_replayed() {
    let m = setup(1, None).await;
    let mut b = m.browser(0);
    sign_in(&m, &mut b, 0, "alice", "/home").await;
    // No factor in this session: a DELETE from a script gets the RFC 9470 challenge.
    m.up.clear();
    let del = fetch(&m, &mut b, Method::DELETE, "/things/1").await;
    assert_eq!(del.status, StatusCode::UNAUTHORIZED);
    let challenge = del.headers["www-authenticate"].to_str().expect("ascii");
    assert!(
        challenge.contains("error=\"insufficient_user_authentication\""),
        "{challenge}"
    );
    assert!(challenge.contains("max_age=300"), "{challenge}");
    // A form posting a big refund: a page that asks for the code and says to resend;
    // nothing reached the upstream, and nothing will on its own.
    let form_page = m.url(0, "/refund-form?order=7");
    let posted = b
        .request(
            Method::POST,
            &m.url(0, "/refunds?amount=900"),
            Some("reason=broken".into()),
            &[
                ("content-type", "application/x-www-form-urlencoded".into()),
                ("accept", "text/html".into()),
                ("sec-fetch-mode", "navigate".into()),
                ("sec-fetch-dest", "document".into()),
                ("referer", form_page.clone()),
            ],
        )
        .await;
    assert_eq!(posted.status, StatusCode::UNAUTHORIZED, "{}", posted.body);
    assert!(
        posted.body.contains("send your request again"),
        "{}",
        posted.body
    );
    assert!(
        posted.body.contains("Set up an authenticator app"),
        "{}",
        posted.body
    );
    assert!(posted.headers.contains_key("www-authenticate"));
    assert_eq!(m.up.count(), 0);

    // Enrolled, the same form submission gets the code form, which returns to the form's
    // page (never to the POST).
    let (uri, _, _) = enrol(&m, &mut b, 0, "alice@corp.test").await;
    // The enrolment proved a factor: wait it out of the refund policy's reach? No: make it
    // stale by a session without one: sign in again (a new session, no factor).
    b.cookies.clear();
    sign_in(&m, &mut b, 0, "alice", "/home").await;
    m.up.clear();
    let posted = b
        .request(
            Method::POST,
            &m.url(0, "/refunds?amount=900"),
            Some("reason=broken".into()),
            &[
                ("content-type", "application/x-www-form-urlencoded".into()),
                ("accept", "text/html".into()),
                ("sec-fetch-mode", "navigate".into()),
                ("referer", form_page.clone()),
            ],
        )
        .await;
    assert_eq!(posted.status, StatusCode::UNAUTHORIZED);
    assert!(posted.body.contains("name=\"code\""), "{}", posted.body);
    assert_eq!(posted.input("rd").as_deref(), Some("/refund-form?order=7"));
    let code = codes(&uri, &[30]).remove(0);
    let csrf = posted.input("csrf").expect("csrf");
    let done = b
        .request(
            Method::POST,
            &m.url(0, "/.drawbridge/mfa/verify"),
            Some(
                format!(
                    "code={code}&rd={}&csrf={}",
                    urlencode("/refund-form?order=7"),
                    urlencode(&csrf)
                )
                .into(),
            ),
            &[
                ("content-type", "application/x-www-form-urlencoded".into()),
                ("origin", format!("https://app.test:{}", m.ports[0])),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::FOUND, "{}", done.body);
    assert_eq!(done.location(), Some(form_page.as_str()));
    assert_eq!(m.up.count(), 0, "the refused POST was not replayed");
    // Resent, it passes.
    let resent = fetch(&m, &mut b, Method::POST, "/refunds?amount=900").await;
    assert_eq!(resent.status, StatusCode::OK);
    assert_eq!(m.up.count(), 1);
}

#[tokio::test]
async fn api_clients_get_rfc_9470_challenges() {
    let m = setup(1, None).await;
    let mut client = Browser::new(m.addrs[0], &m.ca.cert_pem);
    // No amr: a DELETE is challenged, with what would do and how lately.
    let plain = m.token(serde_json::json!({}));
    let r = bearer(&m, &mut client, Method::DELETE, "/things/1", &plain.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let c = r.headers["www-authenticate"].to_str().expect("ascii");
    assert_eq!(
        c,
        "Bearer realm=\"drawbridge\", error=\"insufficient_user_authentication\", error_description=\"a second factor is required\", acr_values=\"phr\", max_age=300"
    );
    // Each caller, each request, and what it gets (the challenge's words where it is one).
    let t = |extra: serde_json::Value| m.token(extra);
    let pwd = t(json!({"amr": ["pwd"], "auth_time": now()}));
    let timeless = t(json!({"amr": ["mfa"]}));
    let mfa = t(json!({"amr": ["pwd", "mfa"], "auth_time": now() - 10}));
    let acr = t(json!({"acr": "phr", "auth_time": now()}));
    let old = t(json!({"amr": ["hwk"], "auth_time": now() - 400}));
    let fresh = t(json!({"amr": ["mfa"], "auth_time": now()}));
    // A factor dated an hour ahead would otherwise never grow old.
    let ahead = t(json!({"amr": ["mfa"], "auth_time": now() + 3600}));
    let cases: [(&str, &str, Method, &str, StatusCode, &str); 12] = [
        (
            "a factor dated in the future",
            &ahead,
            Method::DELETE,
            "/things/1",
            StatusCode::UNAUTHORIZED,
            "a second factor is required",
        ),
        (
            "a GET needs nothing",
            &plain,
            Method::GET,
            "/things/1",
            StatusCode::OK,
            "",
        ),
        (
            "an untrusted amr (pwd)",
            &pwd,
            Method::DELETE,
            "/things/1",
            StatusCode::UNAUTHORIZED,
            "a second factor is required",
        ),
        (
            "a trusted amr without auth_time",
            &timeless,
            Method::DELETE,
            "/things/1",
            StatusCode::UNAUTHORIZED,
            "a second factor is required",
        ),
        (
            "a trusted amr done lately",
            &mfa,
            Method::DELETE,
            "/things/1",
            StatusCode::OK,
            "",
        ),
        (
            "a trusted acr done lately",
            &acr,
            Method::DELETE,
            "/things/1",
            StatusCode::OK,
            "",
        ),
        (
            "a factor too old for the policy",
            &old,
            Method::DELETE,
            "/things/1",
            StatusCode::UNAUTHORIZED,
            "a more recent second factor",
        ),
        (
            "...young enough for a big refund",
            &old,
            Method::POST,
            "/refunds?amount=900",
            StatusCode::OK,
            "",
        ),
        (
            "a big refund without one",
            &plain,
            Method::POST,
            "/refunds?amount=900",
            StatusCode::UNAUTHORIZED,
            "max_age=600",
        ),
        (
            "a small refund without one",
            &plain,
            Method::POST,
            "/refunds?amount=100",
            StatusCode::OK,
            "",
        ),
        (
            "a plain forbid, factor or not",
            &fresh,
            Method::DELETE,
            "/archive/1",
            StatusCode::FORBIDDEN,
            "",
        ),
        (
            "the route's own 8s, with a factor 400s old",
            &old,
            Method::GET,
            "/secure/x",
            StatusCode::UNAUTHORIZED,
            "max_age=8",
        ),
    ];
    for (why, token, method, path, want, says) in cases {
        m.up.clear();
        let r = bearer(&m, &mut client, method, path, token).await;
        assert_eq!(r.status, want, "{why}");
        let challenge = r
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(challenge.contains(says), "{why}: {challenge}");
        assert_eq!(m.up.count(), usize::from(want == StatusCode::OK), "{why}");
        if why == "a trusted amr done lately" {
            let claims = claims_of(
                m.up.last()
                    .expect("forwarded")
                    .header("x-drawbridge-identity")
                    .expect("identity"),
            );
            assert_eq!(claims["amr"], json!(["jwt", "mfa"]));
            assert!(claims["factors"]["idp"].is_i64());
        }
    }
    m.up.clear();
    let r = bearer(&m, &mut client, Method::GET, "/secure/x", &plain).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(m.up.count(), 0);
}

#[tokio::test]
async fn failed_attempts_lock_the_account_and_one_code_admits_one_request() {
    let m = setup(1, None).await;
    let mut alice = m.browser(0);
    sign_in(&m, &mut alice, 0, "alice", "/home").await;
    let (uri, alice_recovery, _) = enrol(&m, &mut alice, 0, "alice@corp.test").await;

    // Twenty requests with one valid code at once: exactly one is admitted. Each request
    // carries the same session; the one that succeeds moves it to a new id.
    let code = codes(&uri, &[30]).remove(0);
    let form = alice
        .navigate(&m.url(0, "/.drawbridge/mfa/verify?rd=%2Fhome"))
        .await;
    let csrf = form.input("csrf").expect("csrf");
    let cookie = alice
        .cookie("app.test", SESSION)
        .expect("session")
        .to_string();
    let tries = (0..20).map(|_| {
        let mut b = m.browser(0);
        b.set_cookie("app.test", SESSION, &cookie);
        let body = format!("code={code}&rd=%2Fhome&csrf={}", urlencode(&csrf));
        let url = m.url(0, "/.drawbridge/mfa/verify");
        let origin = format!("https://app.test:{}", m.ports[0]);
        async move {
            b.request(
                Method::POST,
                &url,
                Some(body.into()),
                &[
                    ("content-type", "application/x-www-form-urlencoded".into()),
                    ("origin", origin),
                ],
            )
            .await
        }
    });
    let results = futures_util::future::join_all(tries).await;
    let home = m.url(0, "/home");
    let admitted = results
        .iter()
        .filter(|p| p.status == StatusCode::FOUND && p.location() == Some(home.as_str()))
        .count();
    assert_eq!(
        admitted,
        1,
        "{:?}",
        results
            .iter()
            .map(|p| (p.status, p.location().map(String::from)))
            .collect::<Vec<_>>()
    );

    // Bob: five wrong codes, then the sixth is refused even when right, and the seventh.
    let mut bob = m.browser(0);
    sign_in(&m, &mut bob, 0, "bob", "/home").await;
    let (bob_uri, bob_recovery, _) = enrol(&m, &mut bob, 0, "bob@elsewhere.test").await;
    for _ in 0..5 {
        let r = verify(&m, &mut bob, 0, "000000", "/home").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let right = codes(&bob_uri, &[0, 30]);
    let sixth = verify(&m, &mut bob, 0, &right[0], "/home").await;
    assert_eq!(sixth.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        sixth.body.contains("Too many failed attempts"),
        "{}",
        sixth.body
    );
    let seventh = verify(&m, &mut bob, 0, &right[1], "/home").await;
    assert_eq!(seventh.status, StatusCode::TOO_MANY_REQUESTS);
    let recovery = verify(&m, &mut bob, 0, &bob_recovery[0], "/home").await;
    assert_eq!(recovery.status, StatusCode::TOO_MANY_REQUESTS);
    // Alice is not locked with him (a new browser, a new session).
    let mut again = m.browser(0);
    sign_in(&m, &mut again, 0, "alice", "/home").await;
    let ok = verify(&m, &mut again, 0, &alice_recovery[0], "/home").await;
    assert_eq!(ok.status, StatusCode::FOUND, "{}", ok.body);
    let bob_locked =
        |e: &serde_json::Value| e["reason"] == "locked" && e["principal"]["id"] == "bob";
    let events = m
        .audit_events(|e| e.iter().filter(|e| bob_locked(e)).count() >= 3)
        .await;
    assert_eq!(events.iter().filter(|e| bob_locked(e)).count(), 3);
    // Five failed attempts of one account trip the detector: an alert in the trail.
    let guessing = |e: &serde_json::Value| {
        e["action"] == "alert" && e["resource"] == "guessing-codes" && e["principal"]["id"] == "bob"
    };
    let events = m.audit_events(|e| e.iter().any(&guessing)).await;
    let alert = events.iter().find(|e| guessing(e)).expect("an alert");
    assert_eq!(alert["principal"]["authenticator"], "corp");
    assert!(
        alert["reason"]
            .as_str()
            .is_some_and(|r| r.contains("mfa_failure `corp/bob` 5 times")),
        "{alert}"
    );
}

#[tokio::test]
async fn two_instances_sharing_redis_share_codes_and_limits() {
    let redis = drawbridge_testkit::redis::RedisServer::start();
    let m = setup(2, Some(redis.url())).await;
    let mut a = m.browser(0);
    sign_in(&m, &mut a, 0, "alice", "/home").await;
    let (uri, _, _) = enrol(&m, &mut a, 0, "alice@corp.test").await;
    // The same person on the other instance (same session, same store).
    let mut b = m.browser(1);
    b.set_cookie(
        "app.test",
        SESSION,
        a.cookie("app.test", SESSION).expect("session"),
    );
    let code = codes(&uri, &[30]).remove(0);
    let on_a = verify(&m, &mut a, 0, &code, "/home").await;
    assert_eq!(on_a.status, StatusCode::FOUND, "{}", on_a.body);
    // The session moved to a new id on A: B follows with the browser's new cookie.
    b.set_cookie(
        "app.test",
        SESSION,
        a.cookie("app.test", SESSION).expect("session"),
    );
    let on_b = verify(&m, &mut b, 1, &code, "/home").await;
    assert_eq!(
        on_b.status,
        StatusCode::UNAUTHORIZED,
        "a code used on one instance is refused on the other"
    );
    // Failures on B count on A (the replay was no guess: it did not count).
    for _ in 0..5 {
        verify(&m, &mut b, 1, "000000", "/home").await;
    }
    let locked = verify(&m, &mut a, 0, &codes(&uri, &[60]).remove(0), "/home").await;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        locked.body
    );
}

/// Opens `url` in Chromium and signs in as `user` at the provider's form.
async fn browser_sign_in(chrome: &drawbridge_testkit::chromium::Chromium, url: &str, user: &str) {
    use fantoccini::Locator;
    let c = &chrome.client;
    c.goto(url).await.expect("goto");
    chrome
        .wait_css("input[name=login]")
        .await
        .send_keys(user)
        .await
        .expect("type");
    c.find(Locator::Css("input[name=password]"))
        .await
        .expect("password")
        .send_keys(&format!("{user}-pw"))
        .await
        .expect("type");
    c.find(Locator::Css("button[type=submit]"))
        .await
        .expect("submit")
        .click()
        .await
        .expect("click");
}

/// Headless Chromium: sign in, enrol TOTP from the page, pass a step-up, see the upstream's
/// page. Screenshots of every page go to `target/browser-screenshots/mfa/`.
#[tokio::test]
async fn a_person_enrols_and_steps_up_in_a_real_browser() {
    use fantoccini::Locator;
    let m = setup(1, None).await;
    let chrome = drawbridge_testkit::chromium::Chromium::start("mfa").await;
    let c = &chrome.client;
    let wanted = m.url(0, "/secure/report");
    browser_sign_in(&chrome, &wanted, "alice").await;
    // No factor yet: the page offers to set one up.
    let setup_link = chrome.wait_css("a[href^='/.drawbridge/mfa/enrol']").await;
    chrome.shot("1-needs-a-factor").await;
    setup_link.click().await.expect("click");
    let secret = chrome
        .wait_css("span.secret")
        .await
        .text()
        .await
        .expect("secret");
    chrome.wait_css("div.qr svg").await;
    chrome.shot("2-enrol").await;
    let uri = c
        .find(Locator::Css("a.otpauth"))
        .await
        .expect("the app link")
        .attr("href")
        .await
        .expect("href")
        .expect("a URI");
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    early_in_a_step().await;
    let code = codes(&uri, &[-30]).remove(0);
    c.find(Locator::Css("input[name=code]"))
        .await
        .expect("code")
        .send_keys(&code)
        .await
        .expect("type");
    c.find(Locator::Css("button[type=submit]"))
        .await
        .expect("confirm")
        .click()
        .await
        .expect("click");
    let cont = chrome.wait_css("ol.codes + a").await;
    chrome.shot("3-recovery-codes").await;
    let listed = c
        .find_all(Locator::Css("ol.codes li"))
        .await
        .expect("codes");
    assert_eq!(listed.len(), 10);
    cont.click().await.expect("continue");
    assert_eq!(chrome.wait_url(&wanted).await, wanted);
    chrome.shot("4-upstream").await;
    assert!(
        c.source()
            .await
            .expect("source")
            .contains("x-drawbridge-identity")
    );
    // Past the route's maximum age: asked again, answered, back on the page.
    tokio::time::sleep(std::time::Duration::from_secs(9)).await;
    early_in_a_step().await;
    c.goto(&wanted).await.expect("goto");
    let input = chrome.wait_css("input[name=code]").await;
    chrome.shot("5-step-up").await;
    input
        .send_keys(&codes(&uri, &[30]).remove(0))
        .await
        .expect("type");
    c.find(Locator::Css("button[type=submit]"))
        .await
        .expect("confirm")
        .click()
        .await
        .expect("click");
    assert_eq!(chrome.wait_url(&wanted).await, wanted);
    chrome.shot("6-upstream-again").await;
    // The account page.
    c.goto(&m.url(0, "/.drawbridge/mfa")).await.expect("goto");
    chrome
        .wait_css("form[action='/.drawbridge/mfa/remove'] button")
        .await;
    chrome.shot("7-manage").await;
    c.clone().close().await.expect("close");
}

/// A gRPC upstream behind a route that needs the issuer's own second factor within
/// `max_age`; its tokens are signed with the returned key.
async fn grpc_behind_mfa(
    max_age: &str,
) -> (drawbridge_testkit::grpc::GrpcUpstream, Harness, SigningKey) {
    let up = drawbridge_testkit::grpc::GrpcUpstream::start().await;
    let key = SigningKey::generate(KeyType::P256, "k1");
    let cfg = config(&format!(
        "[[authenticators]]\nname = \"corp\"\ntype = \"jwt\"\nissuer = \"https://idp.test/\"\n\
         audiences = [\"drawbridge\"]\nalgorithms = [\"ES256\"]\njwks_file = \"jwks.json\"\n\
         trusted_mfa = {{ amr = [\"mfa\"] }}\n\n\
         [[upstreams]]\nname = \"echo\"\nendpoints = [\"{}\"]\nprotocol = \"http2\"\n\n\
         [[routes]]\nname = \"echo\"\nprefix = \"/echo.Echo\"\nupstream = \"echo\"\nauthenticate = [\"corp\"]\nauthorize = false\n\
         mfa = {{ required = true, max_age = \"{max_age}\", methods = [\"idp\"] }}\n",
        up.url()
    ));
    let h = Harness::start_with(&cfg, &[("jwks.json", &jwks(&[&key]))]).await;
    (up, h, key)
}

#[tokio::test]
async fn grpc_calls_that_need_a_factor_get_status_16_with_the_challenge() {
    use drawbridge_testkit::grpc::proto::Msg;
    use drawbridge_testkit::grpc::proto::echo_client::EchoClient;
    let (up, h, key) = grpc_behind_mfa("10m").await;
    let channel = tonic::transport::Channel::from_shared(h.url(""))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = EchoClient::new(channel);
    let n = now();
    let call = |claims: serde_json::Value| {
        let token = key.sign(&claims);
        let mut req = tonic::Request::new(Msg {
            text: "hi".into(),
            n: 1,
        });
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        req
    };
    let base = serde_json::json!({"iss": "https://idp.test/", "aud": "drawbridge", "sub": "alice", "iat": n, "exp": n + 60});
    let err = client
        .unary(call(base.clone()))
        .await
        .expect_err("needs a factor");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let challenge = err
        .metadata()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .expect("the challenge in metadata");
    assert!(
        challenge.contains("insufficient_user_authentication"),
        "{challenge}"
    );
    assert!(challenge.contains("max_age=600"), "{challenge}");
    assert!(up.calls().is_empty());
    let mut with = base;
    with["amr"] = serde_json::json!(["mfa"]);
    with["auth_time"] = serde_json::json!(n);
    let ok = client.unary(call(with)).await.expect("admitted");
    assert_eq!(ok.into_inner().text, "HI");
    assert_eq!(up.calls().len(), 1);
}

/// Headless Chromium with the WebDriver virtual authenticator of the WebAuthn spec: a
/// person registers a passkey from the step-up page and lands where they were going; asks
/// again past the route's maximum age; adds a second key; and a cloned key (its signature
/// counter set back) is refused. Screenshots go to `target/browser-screenshots/webauthn/`.
#[tokio::test]
async fn a_person_registers_and_uses_passkeys_and_a_cloned_one_is_refused() {
    use fantoccini::Locator;
    let m = setup(1, None).await;
    let chrome = drawbridge_testkit::chromium::Chromium::start("webauthn").await;
    let c = &chrome.client;
    let first = chrome.virtual_authenticator().await;
    let wanted = m.url(0, "/secure/report");
    browser_sign_in(&chrome, &wanted, "alice").await;
    // No factor yet: the page offers a passkey.
    let register = chrome.wait_css("button[data-webauthn=register]").await;
    chrome.shot("1-needs-a-factor").await;
    m.up.clear();
    register.click().await.expect("click");
    assert_eq!(
        chrome.wait_url(&wanted).await,
        wanted,
        "registered, and on to the page"
    );
    chrome.shot("2-upstream").await;
    let claims = claims_of(
        m.up.last()
            .expect("forwarded")
            .header("x-drawbridge-identity")
            .expect("identity"),
    );
    assert_eq!(claims["amr"], json!(["oidc", "hwk", "mfa"]));
    assert!(claims["factors"]["webauthn"].is_i64());

    // Past the route's maximum age: asked again, with the key.
    tokio::time::sleep(std::time::Duration::from_secs(9)).await;
    c.goto(&wanted).await.expect("goto");
    let use_key = chrome.wait_css("button[data-webauthn=verify]").await;
    chrome.shot("3-step-up").await;
    use_key.click().await.expect("click");
    assert_eq!(chrome.wait_url(&wanted).await, wanted);

    // A second key, on another authenticator (the first one gone from the browser).
    chrome
        .extension(
            http::Method::DELETE,
            &format!("webauthn/authenticator/{first}"),
            None,
        )
        .await;
    let second = chrome.virtual_authenticator().await;
    c.goto(&m.url(0, "/.drawbridge/mfa")).await.expect("goto");
    chrome
        .wait_css("button[data-webauthn=register]")
        .await
        .click()
        .await
        .expect("click");
    // The page comes back with both keys listed.
    let mut listed = false;
    for _ in 0..100 {
        if c.source()
            .await
            .unwrap_or_default()
            .contains("2 registered")
        {
            listed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(listed, "two keys: {}", c.source().await.unwrap_or_default());
    chrome.shot("4-two-keys").await;
    // The second key works (its counter moves past registration's).
    c.goto(&m.url(0, "/.drawbridge/mfa/verify?rd=%2Fsecure%2Freport"))
        .await
        .expect("goto");
    chrome
        .wait_css("button[data-webauthn=verify]")
        .await
        .click()
        .await
        .expect("click");
    assert_eq!(chrome.wait_url(&wanted).await, wanted);

    // A clone of it: the same credential, its signature counter set back to zero.
    let path = format!("webauthn/authenticator/{second}/credentials");
    let creds = chrome.extension(http::Method::GET, &path, None).await;
    let mut cred = creds[0].clone();
    assert!(cred["signCount"].as_u64().expect("count") >= 1, "{cred}");
    chrome.extension(http::Method::DELETE, &path, None).await;
    cred["signCount"] = json!(0);
    chrome
        .extension(
            http::Method::POST,
            &format!("webauthn/authenticator/{second}/credential"),
            Some(cred),
        )
        .await;
    m.up.clear();
    let verify = m.url(0, "/.drawbridge/mfa/verify?rd=%2Fsecure%2Freport");
    c.goto(&verify).await.expect("goto");
    chrome
        .wait_css("button[data-webauthn=verify]")
        .await
        .click()
        .await
        .expect("click");
    let mut said = String::new();
    for _ in 0..100 {
        said = c
            .find(Locator::Id("webauthn-status"))
            .await
            .expect("status")
            .text()
            .await
            .expect("text");
        if !said.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(said.contains("signature counter went back"), "{said}");
    chrome.shot("5-cloned-key-refused").await;
    assert_eq!(chrome.url().await, verify);
    // Nothing but the browser's own icon request reached the upstream.
    assert!(
        m.up.received().iter().all(|r| r.target == "/favicon.ico"),
        "{:?}",
        m.up.received()
            .iter()
            .map(|r| r.target.clone())
            .collect::<Vec<_>>()
    );
    let events = m
        .audit_events(|e| e.iter().any(|e| e["reason"] == "possible_clone"))
        .await;
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "possible_clone" && e["principal"]["id"] == "alice"),
        "the clone is audited"
    );
    // The key is withdrawn: one left (the first, its authenticator gone from the browser).
    c.goto(&m.url(0, "/.drawbridge/mfa")).await.expect("goto");
    chrome.wait_css("h2").await;
    assert!(c.source().await.expect("source").contains("1 registered"));

    // A new session (signed in again, no factor proved in it) cannot add an authenticator
    // app to an account that has a key: it is sent to prove the key first.
    c.delete_all_cookies().await.expect("cookies");
    c.goto(&m.url(0, "/.drawbridge/mfa/enrol?rd=%2F"))
        .await
        .expect("goto");
    let mut at = String::new();
    for _ in 0..100 {
        at = chrome.url().await;
        if at.contains("/.drawbridge/mfa/verify") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(at.contains("/.drawbridge/mfa/verify"), "{at}");
    assert!(
        !c.source()
            .await
            .expect("source")
            .contains("class=\"secret\"")
    );
    c.clone().close().await.expect("close");
}

#[tokio::test]
async fn a_second_factor_done_at_the_provider_counts_where_trusted() {
    let m = setup(1, None).await;
    let mut b = m.browser(0);
    // Carol's ID token says `amr: ["pwd", "mfa"]` with its auth_time: the route that needs
    // a factor lets her straight through, and the upstream is told it was the provider's.
    let page = sign_in(&m, &mut b, 0, "carol", "/secure/report").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.url, m.url(0, "/secure/report"));
    let claims = claims_of(
        m.up.last()
            .expect("forwarded")
            .header("x-drawbridge-identity")
            .expect("identity"),
    );
    assert_eq!(claims["amr"], json!(["oidc", "mfa"]));
    assert!(claims["factors"]["idp"].is_i64(), "{claims}");
    // Alice's says nothing of a factor: she is asked for one.
    let mut a = m.browser(0);
    let asked = sign_in(&m, &mut a, 0, "alice", "/secure/report").await;
    assert!(
        asked.url.contains("/.drawbridge/mfa/verify"),
        "{}",
        asked.url
    );
    // The provider's factor ages like any other: past the route's maximum age, Carol is
    // asked too.
    tokio::time::sleep(std::time::Duration::from_secs(9)).await;
    let stale = b.navigate(&m.url(0, "/secure/report")).await;
    assert!(
        stale.url.contains("/.drawbridge/mfa/verify"),
        "{}",
        stale.url
    );
}

#[tokio::test]
async fn a_stream_ends_when_its_second_factor_grows_too_old() {
    use drawbridge_testkit::grpc::proto::Msg;
    use drawbridge_testkit::grpc::proto::echo_client::EchoClient;
    use tokio_stream::StreamExt;
    let (_up, h, key) = grpc_behind_mfa("3s").await;
    let channel = tonic::transport::Channel::from_shared(h.url(""))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = EchoClient::new(channel);
    // The token lives a minute; its second factor is fresh now, and good for three seconds.
    let n = now();
    let token = key.sign(
        &json!({"iss": "https://idp.test/", "aud": "drawbridge", "sub": "alice",
        "iat": n, "exp": n + 60, "amr": ["mfa"], "auth_time": n}),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(Msg {
        text: "a".into(),
        n: 1,
    })
    .await
    .expect("send");
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    let mut stream = client.bidi(req).await.expect("bidi").into_inner();
    assert_eq!(
        stream.next().await.expect("one").expect("ok").text,
        "echo:a"
    );
    // The stream does not outlive the factor's freshness, though the token is still good.
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(8), stream.next())
        .await
        .expect("the stream outlived its second factor");
    assert!(!matches!(ended, Some(Ok(_))), "{ended:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    drop(tx);
}
