//! Single sign-on against a real OpenID provider (npm `oidc-provider`, two instances as two
//! IdPs): the whole flow with a cookie-keeping client, and the attacks on it. Every refusal
//! is checked upstream too: nothing reaches it.

use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::browser::{Browser, Page, resolve};
use drawbridge_testkit::certs::TestCa;
use drawbridge_testkit::harness::*;
use drawbridge_testkit::idp::{Idp, settings};
use http::{Method, StatusCode};

const SESSION: &str = "__Host-drawbridge-session";
const LOGIN: &str = "__Host-drawbridge-login";

struct Sso {
    /// The proxy in this process; `None` when the test runs the binary itself.
    _h: Option<Harness>,
    /// Where browsers reach Drawbridge.
    addr: std::net::SocketAddr,
    /// The configuration, and the files beside it.
    config: String,
    files: Vec<(&'static str, String)>,
    up: RecordingUpstream,
    corp: Idp,
    partner: Idp,
    port: u16,
    ca: TestCa,
}

impl Sso {
    fn browser(&self) -> Browser {
        Browser::new(self.addr, &self.ca.cert_pem)
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.port)
    }
}

/// The CI issuer's key: the same on every call, so tokens made in a test verify.
fn ci_key() -> &'static drawbridge_testkit::jwt::SigningKey {
    static KEY: std::sync::OnceLock<drawbridge_testkit::jwt::SigningKey> =
        std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        drawbridge_testkit::jwt::SigningKey::generate(
            drawbridge_testkit::jwt::KeyType::P256,
            "ci-1",
        )
    })
}

/// A port nobody listens on yet: the providers must know Drawbridge's redirect URIs
/// before it starts.
fn free_port() -> u16 {
    drawbridge_testkit::reserved_port()
}

struct Options {
    /// Token lifetimes at the corp provider.
    ttl: serde_json::Value,
    /// Extra `[sessions]` settings.
    sessions: &'static str,
    /// Extra settings of the corp authenticator.
    corp: &'static str,
    /// Sessions in this Redis instead of the embedded store.
    redis: Option<String>,
    /// Every host signs in at `auth.test`.
    central: bool,
    /// Leave starting Drawbridge to the test (the binary), with an admin listener here.
    binary_with_admin: Option<u16>,
    /// The corp client authenticates with `private_key_jwt` and this key.
    corp_key: Option<drawbridge_testkit::jwt::KeyType>,
    /// Route `other` is decided by a Cedar policy: group `eng` reads it.
    policy: bool,
    /// `[sessions] cache_ttl`.
    cache_ttl: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ttl: serde_json::json!({}),
            sessions: "",
            corp: "",
            redis: None,
            central: false,
            binary_with_admin: None,
            corp_key: None,
            policy: false,
            cache_ttl: "5s",
        }
    }
}

async fn setup(o: Options) -> Sso {
    let port = free_port();
    let ca = TestCa::new("sso ca");
    let leaf = ca.leaf(&["app.test", "other.test", "both.test", "auth.test"]);
    let up = RecordingUpstream::start().await;
    let uris = |path: &str| -> Vec<String> {
        ["app.test", "other.test", "both.test", "auth.test"]
            .iter()
            .map(|h| format!("https://{h}:{port}{path}"))
            .collect()
    };
    let mut corp_settings = settings(
        "drawbridge",
        "corp-secret",
        &uris("/.drawbridge/callback"),
        &uris("/.drawbridge/signed_out"),
        o.ttl,
    );
    let client_key = o
        .corp_key
        .map(|ty| drawbridge_testkit::jwt::SigningKey::generate(ty, "client-1"));
    let corp_auth = match &client_key {
        Some(k) => {
            let client = &mut corp_settings["clients"][0];
            client["token_endpoint_auth_method"] = "private_key_jwt".into();
            client["jwks"] = serde_json::json!({ "keys": [k.jwk] });
            client
                .as_object_mut()
                .expect("client")
                .remove("client_secret");
            "client_auth = \"private_key_jwt\"\nclient_key_file = \"client.key\"\nclient_key_id = \"client-1\""
        }
        None => "client_secret_file = \"corp.secret\"",
    };
    let corp = Idp::start(&corp_settings).await;
    let partner = Idp::start(&settings(
        "drawbridge-partner",
        "partner-secret",
        &uris("/.drawbridge/callback"),
        &uris("/.drawbridge/signed_out"),
        serde_json::json!({}),
    ))
    .await;
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
issuer = "{corp}"
client_id = "drawbridge"
{corp_auth}
scopes = ["openid", "email", "profile", "groups"]
claims = {{ groups = "groups", attributes = ["email", "name"] }}
display_name = "Corp SSO"
{corp_extra}

[[authenticators]]
name = "partner"
type = "oidc"
issuer = "{partner}"
client_id = "drawbridge-partner"
client_secret_file = "partner.secret"
scopes = ["openid", "email", "groups"]
claims = {{ groups = "groups" }}

[[authenticators]]
name = "ci"
type = "jwt"
issuer = "https://ci.test"
audiences = ["apps"]
jwks_file = "ci.jwks"
principal = "service"

[sessions]
{store}
cache_ttl = "{cache_ttl}"
{sessions}

[[routes]]
name = "app"
host = "app.test"
prefix = "/"
upstream = "app"
authenticate = ["corp", "ci"]
authorize = false

[[routes]]
name = "other"
host = "other.test"
prefix = "/"
upstream = "app"
authenticate = ["corp"]
authorize = {authorize_other}
{policy}

[[routes]]
name = "both"
host = "both.test"
prefix = "/"
upstream = "app"
authenticate = ["corp", "partner"]
authorize = false
"#,
        up = up.url(),
        corp = corp.issuer,
        partner = partner.issuer,
        corp_extra = o.corp,
        corp_auth = corp_auth,
        cache_ttl = o.cache_ttl,
        authorize_other = o.policy,
        policy = if o.policy {
            "\n[policy]\nfiles = [\"sso.cedar\"]\nplain_names = [\"corp\"]\n"
        } else {
            ""
        },
        sessions = o.sessions,
        store = match &o.redis {
            Some(url) =>
                format!("store = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"sso-test:\""),
            None => "path = \"sessions.redb\"".to_string(),
        } + &if o.central {
            format!("\nsign_in_url = \"https://auth.test:{port}\"")
        } else {
            String::new()
        },
    );
    let mut files = vec![
        ("leaf.crt", leaf.cert_pem.clone()),
        ("leaf.key", leaf.key_pem.clone()),
        ("corp.secret", "corp-secret\n".to_string()),
        ("partner.secret", "partner-secret\n".to_string()),
        ("ci.jwks", drawbridge_testkit::jwt::jwks(&[ci_key()])),
    ];
    if let Some(k) = &client_key {
        files.push(("client.key", k.pem.clone()));
    }
    if o.policy {
        files.push((
            "sso.cedar",
            "@id(\"eng-reads-other\")\npermit (principal in Group::\"eng\", action in Action::\"read\", resource == Route::\"other\");\n"
                .to_string(),
        ));
    }
    let (config, h) = match o.binary_with_admin {
        Some(admin) => (
            format!("{config}\n[admin]\naddress = \"127.0.0.1:{admin}\"\n"),
            None,
        ),
        None => {
            let config = format!("{config}\n[admin]\naddress = \"127.0.0.1:0\"\n");
            let refs: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
            let h = Harness::start_with(&config, &refs).await;
            assert_eq!(h.addr.port(), port);
            (config, Some(h))
        }
    };
    Sso {
        _h: h,
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        config,
        files,
        up,
        corp,
        partner,
        port,
        ca,
    }
}

/// Signs in at whatever provider page `page` is, as `user`; returns the page the
/// browser lands on.
async fn sign_in_at_idp(b: &mut Browser, page: &Page, user: &str, password: &str) -> Page {
    assert!(
        page.url.contains("/interaction/"),
        "expected the provider's sign-in form, got {} {}: {}",
        page.status,
        page.url,
        page.body
    );
    let action = page.form_action().expect("sign-in form");
    b.submit(
        &page.url,
        &action,
        &[("login", user), ("password", password)],
    )
    .await
}

/// Navigates to `url` and signs in as alice at the corp provider.
async fn signed_in(b: &mut Browser, url: &str) -> Page {
    let form = b.navigate(url).await;
    sign_in_at_idp(b, &form, "alice", "alice-pw").await
}

#[tokio::test]
async fn a_browser_signs_in_and_returns_to_the_exact_url() {
    let s = setup(Options::default()).await;
    signs_in_and_returns(&s).await;
}

#[tokio::test]
async fn with_redis_a_browser_signs_in_and_out() {
    let redis = drawbridge_testkit::redis::RedisServer::start();
    let s = setup(Options {
        redis: Some(redis.url()),
        ..Options::default()
    })
    .await;
    signs_in_and_returns(&s).await;
    signs_out(&s).await;
}

#[tokio::test]
async fn with_redis_down_sessions_and_sign_ins_are_refused() {
    let mut redis = drawbridge_testkit::redis::RedisServer::start();
    let s = setup(Options {
        redis: Some(redis.url()),
        cache_ttl: "1s",
        ..Options::default()
    })
    .await;
    let ready = || async {
        let h = s._h.as_ref().expect("in process");
        let admin = h.proxy.admin_addr().expect("admin listener");
        get(&format!("http://{admin}/readyz")).await
    };
    let mut b = s.browser();
    signed_in(&mut b, &s.url("app.test", "/")).await;
    assert_eq!(
        ready().await.status,
        StatusCode::OK,
        "{}",
        ready().await.body
    );
    s.up.clear();
    redis.stop();
    // Readiness names the store that does not answer.
    let r = ready().await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("session store (redis)"), "{}", r.body);
    // Within `cache_ttl` the instance still knows the session it just read; past it, the
    // session is not trusted without the store.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    // A session cannot be read: refused, not trusted from memory.
    let page = b.navigate(&s.url("app.test", "/")).await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    // A new sign-in cannot be started.
    let mut fresh = s.browser();
    let page = fresh.navigate(&s.url("app.test", "/")).await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.body.contains("Sign-in failed"));
    assert_eq!(s.up.count(), 0);
    // Back, empty: the old session is gone, a new sign-in works.
    redis.restart();
    let mut ok = false;
    for _ in 0..40 {
        let page = fresh.navigate(&s.url("app.test", "/")).await;
        if page.url.contains("/interaction/") {
            let landed = sign_in_at_idp(&mut fresh, &page, "alice", "alice-pw").await;
            assert_eq!(landed.status, StatusCode::OK);
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "sign-in works again once Redis is back");
    assert_eq!(ready().await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_embedded_store_keeps_sessions_across_restarts_and_revocation_ends_them() {
    let admin = free_port();
    let s = setup(Options {
        binary_with_admin: Some(admin),
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, contents) in &s.files {
        std::fs::write(dir.path().join(name), contents).expect("write");
    }
    let path = dir.path().join("drawbridge.toml");
    std::fs::write(&path, &s.config).expect("write config");
    let mut b = s.browser();
    let mut a = s.browser();
    {
        let _running = Binary::serve(&path);
        signed_in(&mut b, &s.url("app.test", "/")).await;
        signed_in(&mut a, &s.url("other.test", "/")).await;
    }
    // Restarted: the same cookies still open their sessions, no provider on the way.
    let running = Binary::serve(&path);
    let before = b.visited.len();
    let page = b.navigate(&s.url("app.test", "/after-restart")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(b.visited.len(), before + 1);
    // Revoked through the running instance (it holds the embedded store).
    let me = b.navigate(&s.url("app.test", "/.drawbridge/whoami")).await;
    let handle = me
        .body
        .split("<code>")
        .nth(1)
        .and_then(|c| c.split("</code>").next())
        .expect("session handle on whoami")
        .to_string();
    assert_eq!(handle.len(), 64);
    let revoke = |args: &[&str]| {
        std::process::Command::new(drawbridge_binary())
            .args(["sessions", "revoke", "--config"])
            .arg(&path)
            .args(args)
            .output()
            .expect("drawbridge runs")
    };
    // A prefix of a handle revokes nothing.
    let out = revoke(&["--session", &handle[..16]]);
    assert!(!out.status.success());
    // One session, by its handle: that browser only.
    let out = revoke(&["--session", &handle]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        api_status(&s, &mut b, "app.test").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(api_status(&s, &mut a, "other.test").await, StatusCode::OK);
    // Every session of the person.
    let out = revoke(&["--user", "corp/alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.up.clear();
    for (browser, host) in [(&mut b, "app.test"), (&mut a, "other.test")] {
        assert_eq!(
            api_status(&s, browser, host).await,
            StatusCode::UNAUTHORIZED,
            "{host}"
        );
    }
    assert_eq!(s.up.count(), 0);
    // Signing in again works (the provider still knows the person: no password asked),
    // with a new session: the revocation covers sessions signed in before it.
    let before = b.visited.len();
    let again = b.navigate(&s.url("app.test", "/")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(
        b.visited[before..]
            .iter()
            .any(|u| u.starts_with(&format!("{}/auth", s.corp.issuer)))
    );
    drop(running);
    // With the instance stopped, the command opens the store itself.
    let out = revoke(&["--user", "corp/alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The status of an API call (no sign-in redirect) to `host` from `b`.
async fn api_status(s: &Sso, b: &mut Browser, host: &str) -> StatusCode {
    b.request(
        Method::GET,
        &s.url(host, "/"),
        None,
        &[("accept", "application/json".into())],
    )
    .await
    .status
}

async fn signs_in_and_returns(s: &Sso) {
    let mut b = s.browser();
    b.set_cookie("app.test", "theme", "dark");
    let landed = signed_in(&mut b, &s.url("app.test", "/reports/q3?year=2026&x=%2F")).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    // The admin API lists the session: who, where, never a token.
    if let Some(h) = &s._h {
        let admin = h.proxy.admin_addr().expect("admin");
        let listed = get(&format!("http://{admin}/api/sessions?user=corp/alice")).await;
        let list: Vec<serde_json::Value> = serde_json::from_str(&listed.body).expect("json");
        assert_eq!(list.len(), 1, "{}", listed.body);
        assert_eq!(
            (&list[0]["user"], &list[0]["host"]),
            (
                &serde_json::json!("corp/alice"),
                &serde_json::json!("app.test")
            )
        );
        assert_eq!(list[0]["handle"].as_str().map(str::len), Some(64));
        assert!(!listed.body.contains("token") && !listed.body.contains("sealed"));
        let none = get(&format!("http://{admin}/api/sessions?user=corp/bob")).await;
        assert_eq!(none.body.trim(), "[]");
    }
    assert_eq!(landed.url, s.url("app.test", "/reports/q3?year=2026&x=%2F"));
    // The way there: sign-in, the provider, the callback, back.
    assert!(b.visited[1].starts_with(&s.url("app.test", "/.drawbridge/sign_in?rd=")));
    assert!(b.visited[2].starts_with(&format!("{}/auth?", s.corp.issuer)));
    let auth = url::Url::parse(&b.visited[2]).expect("url");
    let q: std::collections::HashMap<_, _> = auth.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["response_type"], "code");
    assert_eq!(
        q["redirect_uri"],
        s.url("app.test", "/.drawbridge/callback")
    );
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43);
    // The upstream got the person, and none of Drawbridge's cookies.
    let got = s.up.last().expect("forwarded");
    assert_eq!(got.target, "/reports/q3?year=2026&x=%2F");
    let identity = got.header("x-drawbridge-identity").expect("identity");
    let claims = drawbridge_testkit::jwt::claims_of(identity);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["authn"], "corp");
    assert_eq!(claims["idp"], s.corp.issuer.as_str());
    assert_eq!(claims["groups"], serde_json::json!(["eng"]));
    assert_eq!(got.header("cookie"), Some("theme=dark"));
    // The session cookie: host-only, Secure, HttpOnly, Lax.
    let id = b
        .cookie("app.test", SESSION)
        .expect("session cookie")
        .to_string();
    assert_eq!(id.len(), 43);
    // The session is reused: no provider on the way.
    let before = b.visited.len();
    let again = b.navigate(&s.url("app.test", "/again")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(b.visited.len(), before + 1);
    // Who am I.
    let me = b.navigate(&s.url("app.test", "/.drawbridge/whoami")).await;
    assert_eq!(me.status, StatusCode::OK);
    assert!(
        me.body.contains("alice") && me.body.contains("alice@corp.test"),
        "{}",
        me.body
    );
    let csp = me.headers["content-security-policy"].to_str().expect("csp");
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(me.headers["x-frame-options"], "DENY");
}

#[tokio::test]
async fn api_calls_fetches_and_writes_get_401_never_a_redirect() {
    let s = setup(Options::default()).await;
    let mut b = s.browser();
    let url = s.url("app.test", "/api/items");
    for (method, headers) in [
        (
            Method::GET,
            vec![("accept", "application/json".to_string())],
        ),
        (
            Method::GET,
            vec![
                ("accept", "text/html".to_string()),
                ("sec-fetch-mode", "cors".to_string()),
            ],
        ),
        (
            Method::GET,
            vec![
                ("accept", "text/html".to_string()),
                ("x-requested-with", "XMLHttpRequest".to_string()),
            ],
        ),
        (Method::POST, vec![("accept", "text/html".to_string())]),
        (
            Method::GET,
            vec![
                ("accept", "text/html".to_string()),
                ("authorization", "Bearer abc.def.ghi".to_string()),
            ],
        ),
    ] {
        let page = b.request(method.clone(), &url, None, &headers).await;
        assert_eq!(
            page.status,
            StatusCode::UNAUTHORIZED,
            "{method} {headers:?}"
        );
        assert!(page.location().is_none());
    }
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn the_callback_refuses_forged_replayed_and_foreign_states() {
    let s = setup(Options::default()).await;
    // Forged: a state never issued.
    let mut b = s.browser();
    let forged = b
        .navigate(&s.url(
            "app.test",
            "/.drawbridge/callback?state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&code=x",
        ))
        .await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    assert!(forged.body.contains("Sign-in failed"));
    assert!(b.cookie("app.test", SESSION).is_none());

    // A real sign-in, whose callback URL is kept.
    let mut b = s.browser();
    let form = b.navigate(&s.url("app.test", "/")).await;
    let action = form.form_action().expect("form");
    let post = resolve(&form.url, &action);
    let body = "login=alice&password=alice-pw";
    let mut headers = vec![(
        "content-type",
        "application/x-www-form-urlencoded".to_string(),
    )];
    headers.push(("accept", "text/html".to_string()));
    let mut page = b
        .request(Method::POST, &post, Some(body.into()), &headers)
        .await;
    // Follow the provider's redirects up to (not into) the callback.
    let callback = loop {
        let next = resolve(&page.url, page.location().expect("redirect"));
        if next.contains("/.drawbridge/callback") {
            break next;
        }
        page = b.request(Method::GET, &next, None, &[]).await;
    };
    let q: std::collections::HashMap<_, _> = url::Url::parse(&callback)
        .expect("url")
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(q["iss"], s.corp.issuer, "RFC 9207 iss in the response");

    // Another browser (no login cookie, or another one) cannot use it.
    let mut other = s.browser();
    let stolen = other.navigate(&callback).await;
    assert_eq!(stolen.status, StatusCode::BAD_REQUEST);
    assert!(other.cookie("app.test", SESSION).is_none());
    // ... and it was taken: the real browser cannot either (single use).
    let late = b.navigate(&callback).await;
    assert_eq!(late.status, StatusCode::BAD_REQUEST);
    assert!(b.cookie("app.test", SESSION).is_none());
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn a_replayed_callback_is_refused() {
    let s = setup(Options::default()).await;
    let mut b = s.browser();
    signed_in(&mut b, &s.url("app.test", "/")).await;
    let callback = b
        .visited
        .iter()
        .find(|u| u.contains("/.drawbridge/callback"))
        .expect("callback")
        .clone();
    let first = b.cookie("app.test", SESSION).expect("session").to_string();
    let replay = b.navigate(&callback).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert_eq!(b.cookie("app.test", SESSION), Some(first.as_str()));
}

#[tokio::test]
async fn a_response_from_the_other_provider_is_refused() {
    let s = setup(Options::default()).await;
    // Start at corp (on both.test, which admits both), finish at partner.
    let mut b = s.browser();
    let choose = b.navigate(&s.url("both.test", "/x")).await;
    assert_eq!(choose.status, StatusCode::OK);
    assert!(choose.body.contains("Corp SSO") && choose.body.contains("partner"));
    let csrf = choose.input("csrf").expect("csrf");
    let rd = choose.input("rd").expect("rd");
    // The corp authorization request, not followed: its state is what we need.
    let post = b
        .request(
            Method::POST,
            &s.url("both.test", "/.drawbridge/sign_in"),
            Some(format!("idp=corp&rd={}&csrf={csrf}", urlenc(&rd)).into()),
            &[
                ("content-type", "application/x-www-form-urlencoded".into()),
                ("origin", s.url("both.test", "")),
            ],
        )
        .await;
    assert_eq!(post.status, StatusCode::FOUND);
    let corp_auth = url::Url::parse(post.location().expect("location")).expect("url");
    let corp_state = corp_auth
        .query_pairs()
        .find(|(k, _)| k == "state")
        .expect("state")
        .1
        .into_owned();
    // A sign-in at partner, in the same browser, stopped before its callback.
    let choose = b.navigate(&s.url("both.test", "/y")).await;
    let page = b
        .submit(
            &choose.url,
            "/.drawbridge/sign_in",
            &[
                ("idp", "partner"),
                ("rd", "/y"),
                ("csrf", &choose.input("csrf").expect("csrf")),
            ],
        )
        .await;
    let action = page.form_action().expect("partner form");
    let mut page = b
        .request(
            Method::POST,
            &resolve(&page.url, &action),
            Some("login=alice&password=alice-pw".into()),
            &[("content-type", "application/x-www-form-urlencoded".into())],
        )
        .await;
    let partner_callback = loop {
        let next = resolve(&page.url, page.location().expect("redirect"));
        if next.contains("/.drawbridge/callback") {
            break url::Url::parse(&next).expect("url");
        }
        page = b.request(Method::GET, &next, None, &[]).await;
    };
    let code = partner_callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .expect("code")
        .1
        .into_owned();
    // partner's code (and iss) under corp's state: a mix-up.
    for iss in [Some(s.partner.issuer.as_str()), None] {
        let mut target = format!(
            "/.drawbridge/callback?state={corp_state}&code={}",
            urlenc(&code)
        );
        if let Some(iss) = iss {
            target.push_str(&format!("&iss={}", urlenc(iss)));
        }
        let page = b.navigate(&s.url("both.test", &target)).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "iss {iss:?}");
        assert!(b.cookie("both.test", SESSION).is_none());
    }
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn a_cookie_set_before_sign_in_is_never_the_session() {
    let s = setup(Options::default()).await;
    let mut b = s.browser();
    let planted = "A".repeat(43);
    b.set_cookie("app.test", SESSION, &planted);
    let landed = signed_in(&mut b, &s.url("app.test", "/")).await;
    assert_eq!(landed.status, StatusCode::OK);
    let id = b.cookie("app.test", SESSION).expect("session");
    assert_ne!(id, planted);
    // Two sign-ins, two ids.
    let mut b2 = s.browser();
    signed_in(&mut b2, &s.url("app.test", "/")).await;
    assert_ne!(b2.cookie("app.test", SESSION), Some(id));
}

#[tokio::test]
async fn a_session_is_for_its_own_host_only() {
    let s = setup(Options::default()).await;
    let mut b = s.browser();
    signed_in(&mut b, &s.url("app.test", "/")).await;
    let id = b.cookie("app.test", SESSION).expect("session").to_string();
    s.up.clear();
    // The same cookie, sent to another host the gateway serves.
    let mut thief = s.browser();
    thief.set_cookie("other.test", SESSION, &id);
    assert_eq!(
        api_status(&s, &mut thief, "other.test").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn return_targets_never_leave_the_served_hosts() {
    let s = setup(Options::default()).await;
    let root = s.url("app.test", "/");
    for (rd, lands) in [
        ("/deep/path?q=1", s.url("app.test", "/deep/path?q=1")),
        ("//evil.test/", root.clone()),
        ("https://evil.test/", root.clone()),
        ("/\\evil.test", root.clone()),
        ("https:evil.test", root.clone()),
        (
            &*format!("https://app.test:{}@evil.test/", s.port),
            root.clone(),
        ),
        ("/%2F%2Fevil.test", root.clone()),
        ("https://app.test.evil.test/", root.clone()),
        ("javascript:alert(1)", root.clone()),
        (&*s.url("other.test", "/fine"), s.url("other.test", "/fine")),
    ] {
        let mut b = s.browser();
        let target = format!("/.drawbridge/sign_in?rd={}", urlenc(rd));
        let form = b.navigate(&s.url("app.test", &target)).await;
        let landed = sign_in_at_idp(&mut b, &form, "alice", "alice-pw").await;
        assert_eq!(landed.url, lands, "rd = {rd}");
    }
}

#[tokio::test]
async fn signing_out_ends_the_session_here_and_at_the_provider() {
    let s = setup(Options::default()).await;
    signs_out(&s).await;
}

async fn signs_out(s: &Sso) {
    let mut b = s.browser();
    signed_in(&mut b, &s.url("app.test", "/")).await;
    let me = b.navigate(&s.url("app.test", "/.drawbridge/whoami")).await;
    let csrf = me.input("csrf").expect("csrf");
    let old = b.cookie("app.test", SESSION).expect("session").to_string();
    // Without the anti-forgery token: refused, still signed in.
    let forged = b
        .submit(&me.url, "/.drawbridge/sign_out", &[("csrf", "nope")])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(b.cookie("app.test", SESSION), Some(old.as_str()));
    // With it: to the provider's logout, which asks to confirm.
    let confirm = b
        .submit(&me.url, "/.drawbridge/sign_out", &[("csrf", &csrf)])
        .await;
    assert!(b.cookie("app.test", SESSION).is_none());
    assert!(
        confirm
            .url
            .starts_with(&format!("{}/session/end", s.corp.issuer)),
        "{}",
        confirm.url
    );
    let action = confirm.form_action().expect("logout form");
    let xsrf = confirm.input("xsrf").expect("xsrf");
    let done = b
        .submit(&confirm.url, &action, &[("xsrf", &xsrf), ("logout", "yes")])
        .await;
    assert_eq!(done.url, s.url("app.test", "/.drawbridge/signed_out"));
    assert!(done.body.contains("signed out"));
    // The old cookie opens nothing, even replayed.
    s.up.clear();
    let mut replay = s.browser();
    replay.set_cookie("app.test", SESSION, &old);
    assert_eq!(
        api_status(s, &mut replay, "app.test").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(s.up.count(), 0);
    // Signed out at the provider too: signing in again asks for the password.
    let again = b.navigate(&s.url("app.test", "/")).await;
    assert!(again.url.contains("/interaction/"), "{}", again.url);
}

#[tokio::test]
async fn tokens_are_refreshed_and_a_refused_refresh_ends_the_session() {
    // ID and access tokens live 2 s; refresh tokens 8 s (the provider counts whole
    // seconds: 6 s left a token used 5 s after sign-in a fraction of a second to spare).
    let s = setup(Options {
        ttl: serde_json::json!({"IdToken": 2, "AccessToken": 2, "RefreshToken": 8}),
        cache_ttl: "0s",
        ..Options::default()
    })
    .await;
    let mut b = s.browser();
    signed_in(&mut b, &s.url("app.test", "/")).await;
    // Past the tokens' lifetime, the session carries on: refreshed at the provider.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(api_status(&s, &mut b, "app.test").await, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(api_status(&s, &mut b, "app.test").await, StatusCode::OK);
    // Past the refresh token's lifetime: the provider refuses, the session ends.
    tokio::time::sleep(std::time::Duration::from_secs(9)).await;
    assert_eq!(
        api_status(&s, &mut b, "app.test").await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn conditions_on_the_id_token_refuse_other_people() {
    for condition in [
        "allowed_email_domains = [\"corp.test\"]",
        "required_claims = { groups = [\"eng\", \"ops\"] }",
    ] {
        let s = setup(Options {
            corp: condition,
            ..Options::default()
        })
        .await;
        let mut b = s.browser();
        let form = b.navigate(&s.url("app.test", "/")).await;
        let landed = sign_in_at_idp(&mut b, &form, "bob", "bob-pw").await;
        assert_eq!(landed.status, StatusCode::BAD_REQUEST, "{condition}");
        assert!(landed.body.contains("Sign-in failed"));
        assert!(
            !landed.body.contains("email") && !landed.body.contains("groups"),
            "no detail shown: {}",
            landed.body
        );
        assert!(b.cookie("app.test", SESSION).is_none());
        let mut a = s.browser();
        let ok = signed_in(&mut a, &s.url("app.test", "/")).await;
        assert_eq!(ok.status, StatusCode::OK, "{condition}");
    }
}

#[tokio::test]
async fn the_login_cookie_and_session_cookie_are_secure_host_cookies() {
    let s = setup(Options::default()).await;
    let mut b = s.browser();
    let first = b
        .request(
            Method::GET,
            &s.url("app.test", "/.drawbridge/sign_in?rd=%2F"),
            None,
            &[("accept", "text/html".into())],
        )
        .await;
    assert_eq!(first.status, StatusCode::FOUND);
    let set = first.headers["set-cookie"].to_str().expect("cookie");
    assert!(set.starts_with(&format!("{LOGIN}=")), "{set}");
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Domain"), "{set}");
}

fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn one_sign_in_serves_every_host() {
    let s = setup(Options {
        central: true,
        ..Options::default()
    })
    .await;
    let mut b = s.browser();
    let landed = signed_in(&mut b, &s.url("app.test", "/x?a=1")).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    assert_eq!(landed.url, s.url("app.test", "/x?a=1"));
    // Signed in at the central host, which handed the sign-in to app.test.
    let authorize = b
        .visited
        .iter()
        .find(|u| u.starts_with(&format!("{}/auth?", s.corp.issuer)))
        .expect("authorization request");
    let auth = url::Url::parse(authorize).expect("url");
    let redirect = auth
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .expect("redirect_uri")
        .1
        .into_owned();
    assert_eq!(redirect, s.url("auth.test", "/.drawbridge/callback"));
    let handover = b
        .visited
        .iter()
        .find(|u| u.contains("/.drawbridge/handover?code="))
        .expect("hand-over")
        .clone();
    assert!(handover.starts_with(&s.url("app.test", "/")));
    assert!(b.cookie("auth.test", SESSION).is_some());
    assert!(b.cookie("app.test", SESSION).is_some());
    assert_ne!(
        b.cookie("auth.test", SESSION),
        b.cookie("app.test", SESSION)
    );
    // Another host: no provider on the way.
    let before = b.visited.len();
    let other = b.navigate(&s.url("other.test", "/y")).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.url, s.url("other.test", "/y"));
    assert!(
        b.visited[before..]
            .iter()
            .all(|u| !u.contains(&s.corp.issuer)),
        "{:?}",
        &b.visited[before..]
    );
    let got = s.up.last().expect("forwarded");
    let claims =
        drawbridge_testkit::jwt::claims_of(got.header("x-drawbridge-identity").expect("identity"));
    assert_eq!(claims["sub"], "alice");
    // A hand-over code is used once, and only on its own host.
    let mut thief = s.browser();
    let replay = thief.navigate(&handover).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert!(thief.cookie("app.test", SESSION).is_none());
    // Signing out on one host ends the sign-in everywhere.
    let me = b
        .navigate(&s.url("other.test", "/.drawbridge/whoami"))
        .await;
    let csrf = me.input("csrf").expect("csrf");
    b.submit(&me.url, "/.drawbridge/sign_out", &[("csrf", &csrf)])
        .await;
    s.up.clear();
    assert_eq!(
        api_status(&s, &mut b, "app.test").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(s.up.count(), 0);
}

#[tokio::test]
async fn a_hand_over_code_for_one_host_opens_no_other() {
    let s = setup(Options {
        central: true,
        ..Options::default()
    })
    .await;
    let mut b = s.browser();
    // Signed in centrally (for other.test), then a code made for app.test, not followed.
    signed_in(&mut b, &s.url("other.test", "/")).await;
    let target = urlenc(&s.url("app.test", "/"));
    let page = b
        .request(
            Method::GET,
            &s.url("auth.test", &format!("/.drawbridge/sign_in?rd={target}")),
            None,
            &[("accept", "text/html".into())],
        )
        .await;
    let location = page.location().expect("hand-over redirect").to_string();
    assert!(
        location.starts_with(&s.url("app.test", "/.drawbridge/handover?code=")),
        "{location}"
    );
    // Redeemed on other.test: refused, and spent.
    let code = location.split("code=").nth(1).expect("code");
    let mut c = s.browser();
    let wrong = c
        .navigate(&s.url("other.test", &format!("/.drawbridge/handover?code={code}")))
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert!(c.cookie("other.test", SESSION).is_none());
    let late = c.navigate(&location).await;
    assert_eq!(late.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_bearer_token_and_a_session_each_work_on_one_route() {
    let s = setup(Options::default()).await;
    let now = drawbridge_testkit::jwt::now();
    let token = ci_key().sign(&serde_json::json!({
        "iss": "https://ci.test", "aud": "apps", "sub": "deploy-bot",
        "iat": now, "exp": now + 300,
    }));
    let mut api = s.browser();
    let page = api
        .request(
            Method::GET,
            &s.url("app.test", "/deploy"),
            None,
            &[("authorization", format!("Bearer {token}"))],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let claims = drawbridge_testkit::jwt::claims_of(
        s.up.last()
            .expect("forwarded")
            .header("x-drawbridge-identity")
            .expect("identity"),
    );
    assert_eq!(claims["sub"], "deploy-bot");
    assert_eq!(claims["authn"], "ci");
    // A browser page load with a bad token is an API call gone wrong: 401, no sign-in.
    let page = api
        .request(
            Method::GET,
            &s.url("app.test", "/"),
            None,
            &[
                ("accept", "text/html".into()),
                ("sec-fetch-mode", "navigate".into()),
                ("authorization", "Bearer not.a.token".into()),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    // A person with a session, on the same route.
    let mut b = s.browser();
    let landed = signed_in(&mut b, &s.url("app.test", "/wiki")).await;
    assert_eq!(landed.status, StatusCode::OK);
    let claims = drawbridge_testkit::jwt::claims_of(
        s.up.last()
            .expect("forwarded")
            .header("x-drawbridge-identity")
            .expect("identity"),
    );
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["amr"], serde_json::json!(["oidc"]));
}

/// Debian's Chromium, driven over WebDriver (Debian's chromedriver): a person signs in
/// through the pages, chooses one of two providers, reaches one host and then another
/// without signing in again, and signs out. Screenshots of each page go to
/// `target/browser-screenshots/sign-in/`.
#[tokio::test]
async fn a_person_signs_in_with_a_real_browser() {
    use fantoccini::Locator;

    let s = setup(Options {
        central: true,
        ..Options::default()
    })
    .await;
    let chrome = drawbridge_testkit::chromium::Chromium::start("sign-in").await;
    let c = &chrome.client;
    // A page of both.test, which admits both providers: the choice.
    c.goto(&s.url("both.test", "/reports?q=1"))
        .await
        .expect("goto");
    if c.wait()
        .for_element(Locator::Css("button[name=idp]"))
        .await
        .is_err()
    {
        panic!(
            "no sign-in page at {}: {}",
            c.current_url().await.expect("url"),
            c.source().await.expect("source")
        );
    }
    chrome.shot("1-sign-in").await;
    let title = c.title().await.expect("title");
    assert_eq!(title, "Sign in");
    let buttons = c
        .find_all(Locator::Css("button[name=idp]"))
        .await
        .expect("buttons");
    assert_eq!(buttons.len(), 2);
    c.find(Locator::Css("button[value=corp]"))
        .await
        .expect("corp button")
        .click()
        .await
        .expect("click");
    // The provider's form.
    let login = chrome.wait_css("input[name=login]").await;
    chrome.shot("2-provider").await;
    login.send_keys("alice").await.expect("type");
    c.find(Locator::Css("input[name=password]"))
        .await
        .expect("password")
        .send_keys("alice-pw")
        .await
        .expect("type");
    c.find(Locator::Css("button[type=submit]"))
        .await
        .expect("submit")
        .click()
        .await
        .expect("click");
    // Back on the page asked for.
    let wanted = s.url("both.test", "/reports?q=1");
    let mut at = String::new();
    for _ in 0..100 {
        at = c.current_url().await.expect("url").to_string();
        if at == wanted {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(at, wanted);
    chrome.shot("3-app").await;
    let body = c.source().await.expect("source");
    assert!(body.contains("x-drawbridge-identity"), "{body}");
    let claims = drawbridge_testkit::jwt::claims_of(
        s.up.last()
            .expect("forwarded")
            .header("x-drawbridge-identity")
            .expect("identity"),
    );
    assert_eq!(claims["sub"], "alice");

    // Another host: no sign-in page, no provider.
    c.goto(&s.url("app.test", "/dashboard"))
        .await
        .expect("goto");
    for _ in 0..100 {
        at = c.current_url().await.expect("url").to_string();
        if at == s.url("app.test", "/dashboard") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(at, s.url("app.test", "/dashboard"));
    assert!(
        !c.source()
            .await
            .expect("source")
            .contains("Choose how to sign in")
    );

    // Who am I, then sign out (here and at the provider).
    c.goto(&s.url("app.test", "/.drawbridge/whoami"))
        .await
        .expect("goto");
    let out = chrome
        .wait_css("form[action='/.drawbridge/sign_out'] button")
        .await;
    chrome.shot("4-whoami").await;
    assert!(
        c.source()
            .await
            .expect("source")
            .contains("alice@corp.test")
    );
    out.click().await.expect("click");
    let confirm = chrome.wait_css("button[name=logout]").await;
    chrome.shot("5-provider-logout").await;
    confirm.click().await.expect("click");
    c.wait()
        .for_element(Locator::XPath("//h1[contains(., 'signed out')]"))
        .await
        .expect("signed out");
    chrome.shot("6-signed-out").await;
    // Signed out everywhere: both hosts send the person to sign in again.
    s.up.clear();
    c.goto(&s.url("app.test", "/dashboard"))
        .await
        .expect("goto");
    chrome.wait_css("input[name=login]").await;
    assert_eq!(s.up.count(), 0);
    c.clone().close().await.expect("close");
}

#[tokio::test]
async fn drawbridge_authenticates_to_the_provider_with_a_private_key_jwt() {
    use drawbridge_testkit::jwt::KeyType;
    for ty in [KeyType::P256, KeyType::Ed25519, KeyType::Rsa] {
        let s = setup(Options {
            corp_key: Some(ty),
            ..Options::default()
        })
        .await;
        let mut b = s.browser();
        let landed = signed_in(&mut b, &s.url("app.test", "/x")).await;
        assert_eq!(landed.status, StatusCode::OK, "{ty:?}: {}", landed.body);
        assert_eq!(landed.url, s.url("app.test", "/x"));
    }
}

#[tokio::test]
async fn policies_decide_about_people_as_they_do_about_tokens() {
    let s = setup(Options {
        policy: true,
        ..Options::default()
    })
    .await;
    // alice is in `eng`: the policy lets her read; a write is refused by policy.
    let mut a = s.browser();
    let landed = signed_in(&mut a, &s.url("other.test", "/doc")).await;
    assert_eq!(landed.status, StatusCode::OK, "{}", landed.body);
    s.up.clear();
    let write = a
        .request(Method::POST, &s.url("other.test", "/doc"), None, &[])
        .await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);
    // bob signs in (no groups) and is refused: 403, not sent to sign in again.
    let mut b = s.browser();
    let form = b.navigate(&s.url("other.test", "/doc")).await;
    let refused = sign_in_at_idp(&mut b, &form, "bob", "bob-pw").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(b.cookie("other.test", SESSION).is_some());
    assert_eq!(s.up.count(), 0);
}
