//! Authorization through the real server: Cedar policies decide per route, method, parameter
//! and caller; every refusal is shown never to reach the upstream, and every decision to be
//! in the audit trail.

use std::time::Duration;

use bytes::Bytes;
use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;
use drawbridge_testkit::jwt::{KeyType, SigningKey, jwks, now};
use drawbridge_testkit::policies::{SERVICES, SHOP, routes};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

const CORP: &str = "https://idp.test/";
const WORKLOADS: &str = "https://workloads.test/";

/// The shared example policies, and those for the admin, gRPC and WebSocket routes.
const EXTRA: &str = r#"
@id("admin-only")
permit (principal in Group::"admins", action, resource == Route::"admin");

@id("grpc-catalog-reads")
permit (principal is User, action == Action::"grpc", resource == Route::"catalog")
when { context.grpc.method like "Get*" };

@id("live-editors")
permit (principal in Group::"editors", action == Action::"connect", resource == Route::"live");
"#;

struct Setup {
    h: Harness,
    shop: RecordingUpstream,
    ledger: RecordingUpstream,
    corp: SigningKey,
    workloads: SigningKey,
}

fn policy_config(
    shop: &RecordingUpstream,
    ledger: &RecordingUpstream,
    policy_extra: &str,
) -> Config {
    config(&format!(
        r#"[[authenticators]]
name = "corp"
type = "jwt"
issuer = "{CORP}"
audiences = ["drawbridge"]
algorithms = ["ES256"]
jwks_file = "corp.json"
claims = {{ groups = "groups", attributes = ["tenant"] }}

[[authenticators]]
name = "workloads"
type = "jwt"
issuer = "{WORKLOADS}"
audiences = ["drawbridge"]
algorithms = ["ES256"]
jwks_file = "workloads.json"
principal = "service"

[policy]
files = ["policies"]
attributes = {{ tenant = "String" }}
plain_names = ["corp"]
{policy_extra}

{routes}
[[routes]]
name = "admin"
prefix = "/admin"
upstream = "shop"
authenticate = ["corp"]

[[routes]]
name = "catalog"
prefix = "/shop.Catalog"
upstream = "shop"
authenticate = ["corp"]

[[routes]]
name = "live"
path = "/live"
upstream = "shop"
authenticate = ["corp"]
"#,
        routes = routes(&shop.url(), &ledger.url()),
    ))
    .server("audit_log", "audit.jsonl")
}

async fn setup_with(policy_extra: &str, extra_files: &[(&str, &str)]) -> Setup {
    let shop = RecordingUpstream::start().await;
    let ledger = RecordingUpstream::start().await;
    let corp = SigningKey::generate(KeyType::P256, "c1");
    let workloads = SigningKey::generate(KeyType::P256, "w1");
    let corp_jwks = jwks(&[&corp]);
    let workloads_jwks = jwks(&[&workloads]);
    let mut files = vec![
        ("corp.json", corp_jwks.as_str()),
        ("workloads.json", workloads_jwks.as_str()),
        ("policies/shop.cedar", SHOP),
        ("policies/extra.cedar", EXTRA),
        ("policies/services.cedar", SERVICES),
    ];
    files.extend_from_slice(extra_files);
    let h = Harness::start_with(&policy_config(&shop, &ledger, policy_extra), &files).await;
    Setup {
        h,
        shop,
        ledger,
        corp,
        workloads,
    }
}

async fn setup() -> Setup {
    setup_with("", &[]).await
}

impl Setup {
    fn user(&self, sub: &str, groups: &[&str], tenant: &str) -> String {
        let n = now();
        self.corp.sign(&json!({
            "iss": CORP, "aud": "drawbridge", "sub": sub, "iat": n, "exp": n + 600,
            "groups": groups, "tenant": tenant,
        }))
    }

    fn service(&self, sub: &str) -> String {
        let n = now();
        self.workloads.sign(&json!({
            "iss": WORKLOADS, "aud": "drawbridge", "sub": sub, "iat": n, "exp": n + 600,
        }))
    }

    async fn call(&self, method: &str, path: &str, token: &str) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(self.h.url(path))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        send(&h1_client(), req).await
    }

    /// Sends `method path` with `token`; asserts the status and whether `up` was reached.
    async fn expect(
        &self,
        method: &str,
        path: &str,
        token: &str,
        status: u16,
        up: &RecordingUpstream,
    ) {
        let before = up.count();
        let r = self.call(method, path, token).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path}: {}", r.body);
        let reached = up.count() > before;
        assert_eq!(
            reached,
            status == 200,
            "{method} {path}: upstream reached = {reached}"
        );
        if status == 403 {
            assert!(
                !r.body.contains("reports-") && !r.body.contains("admin-only"),
                "no policy ids to the client: {}",
                r.body
            );
        }
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.h.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The audit event of the last request the upstream or the client saw for `path`.
    async fn audit_for(&self, path: &str, method: &str) -> Value {
        self.audit_where(|e| e["path"] == path && e["action"] == method)
            .await
    }

    /// The last audit event that `matches`, waiting for the writer to catch up:
    /// events are written off the request path, so an earlier one may be on
    /// disk before a later one.
    async fn audit_where(&self, matches: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        eventually(Duration::from_secs(5), || {
            found = self.audit().into_iter().rev().find(|e| matches(e));
            std::future::ready(found.is_some())
        })
        .await;
        found.unwrap_or_else(|| panic!("no matching audit event: {:?}", self.audit()))
    }
}

#[tokio::test]
async fn tenants_reach_their_own_orders_only() {
    let s = setup().await;
    let alice = s.user("alice", &[], "acme");
    s.expect("GET", "/tenants/acme/orders/42", &alice, 200, &s.shop)
        .await;
    assert_eq!(
        s.shop.last().expect("seen").target,
        "/tenants/acme/orders/42"
    );
    s.expect("GET", "/tenants/globex/orders/42", &alice, 403, &s.shop)
        .await;
    s.expect("HEAD", "/tenants/acme/orders", &alice, 200, &s.shop)
        .await;
    // Reads only.
    s.expect("POST", "/tenants/acme/orders", &alice, 403, &s.shop)
        .await;
    // The tenant segment is compared decoded: an escaped spelling is the same tenant.
    s.expect("GET", "/tenants/%61cme/orders", &alice, 200, &s.shop)
        .await;
    // ...and an empty one matches no route at all.
    s.expect("GET", "/tenants//orders", &alice, 404, &s.shop)
        .await;

    let allowed = s.audit_for("/tenants/acme/orders/42", "GET").await;
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["policies"], json!(["tenant-read"]));
    assert_eq!(allowed["resource"], "tenant-orders");
    assert_eq!(allowed["upstream"], "shop");
    assert_eq!(allowed["principal"]["id"], "alice");
    assert_eq!(allowed["principal"]["kind"], "user");
    assert_eq!(allowed["version"], s.h.proxy.version());
    let denied = s.audit_for("/tenants/globex/orders/42", "GET").await;
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["policies"], json!([]));
    assert!(
        !denied.to_string().contains(&alice),
        "no token in the audit trail"
    );
}

#[tokio::test]
async fn refunds_need_billing_and_an_amount_under_the_limit() {
    let s = setup().await;
    let bob = s.user("bob", &["billing"], "acme");
    let carol = s.user("carol", &["sales"], "acme");
    s.expect("POST", "/refunds?amount=500", &bob, 200, &s.shop)
        .await;
    assert_eq!(s.shop.last().expect("seen").target, "/refunds?amount=500");
    s.expect("POST", "/refunds?amount=5000", &bob, 403, &s.shop)
        .await;
    s.expect("POST", "/refunds", &bob, 403, &s.shop).await;
    s.expect("POST", "/refunds?amount=500", &carol, 403, &s.shop)
        .await;
    // Parameter pollution: the policy and the upstream must read the same amount.
    s.expect(
        "POST",
        "/refunds?amount=500&amount=50000",
        &bob,
        400,
        &s.shop,
    )
    .await;
    s.expect(
        "POST",
        "/refunds?am%6Funt=50000&amount=500",
        &bob,
        400,
        &s.shop,
    )
    .await;
    // Every spelling frameworks read as `amount` is `amount`: two of them are a duplicate,
    // and one alone is what the policy reads.
    for q in [
        "amount[]=500&amount[]=50000",
        "amount=500&Amount=50000",
        "AMOUNT=50000&amount=500",
        "amount=500&amount[x]=50000",
        "amount=500;amount=50000",
        "amount=500&%41mount=50000",
        "amount=500&+amount=50000",
    ] {
        s.expect("POST", &format!("/refunds?{q}"), &bob, 400, &s.shop)
            .await;
    }
    s.expect("POST", "/refunds?Amount=50000", &bob, 403, &s.shop)
        .await;
    s.expect("POST", "/refunds?amount[]=50000", &bob, 403, &s.shop)
        .await;
    // A control character in any parameter name is refused outright.
    for q in [
        "amount%00=50000&amount=500",
        "amount=500&x%0a=1",
        "amount%09=1",
    ] {
        s.expect("POST", &format!("/refunds?{q}"), &bob, 400, &s.shop)
            .await;
    }
    s.expect("POST", "/refunds?amount=5e3", &bob, 400, &s.shop)
        .await;
    let r = s.call("POST", "/refunds?amount=1&amount=2", &bob).await;
    assert!(
        r.body
            .contains("query parameter `amount` appears more than once"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn services_talk_only_to_whom_they_may() {
    let s = setup().await;
    let billing = s.service("spiffe://prod/billing");
    let web = s.service("spiffe://prod/web");
    s.expect("GET", "/ledger/entries", &billing, 200, &s.ledger)
        .await;
    s.expect("POST", "/ledger/entries", &billing, 403, &s.ledger)
        .await;
    s.expect("GET", "/ledger/entries", &web, 403, &s.ledger)
        .await;
    // A person whose id reads like the service's is a User, not the Service.
    let impostor = s.user("spiffe://prod/billing", &["admins"], "acme");
    s.expect("GET", "/ledger/entries", &impostor, 403, &s.ledger)
        .await;
    // The billing service is nobody on the shop's routes.
    s.expect("GET", "/reports", &billing, 401, &s.shop).await;
}

#[tokio::test]
async fn groups_decide_writes_and_forbid_overrides_permit() {
    let s = setup().await;
    let erin = s.user("erin", &[], "acme");
    let dave = s.user("dave", &["editors"], "acme");
    let root = s.user("root", &["editors", "admins"], "acme");
    s.expect("GET", "/reports/q3", &erin, 200, &s.shop).await;
    s.expect("PUT", "/reports/q3", &erin, 403, &s.shop).await;
    s.expect("PUT", "/reports/q3", &dave, 200, &s.shop).await;
    s.expect("DELETE", "/reports/q3", &dave, 403, &s.shop).await;
    s.expect("DELETE", "/reports/q3", &root, 200, &s.shop).await;
    let deletes_by =
        |who: &'static str| move |e: &Value| e["action"] == "DELETE" && e["principal"]["id"] == who;
    let dave_delete = s.audit_where(deletes_by("dave")).await;
    assert_eq!(dave_delete["decision"], "deny");
    assert_eq!(dave_delete["policies"], json!(["reports-no-delete"]));
    let root_delete = s.audit_where(deletes_by("root")).await;
    assert_eq!(root_delete["decision"], "allow");
    assert_eq!(
        root_delete["principal"]["groups"],
        json!(["editors", "admins"])
    );
}

#[tokio::test]
async fn ambiguous_paths_never_reach_a_route_with_a_weaker_policy() {
    let s = setup().await;
    let erin = s.user("erin", &[], "acme"); // may read /reports, not /admin
    let root = s.user("root", &["admins"], "acme");
    s.expect("GET", "/admin/users", &erin, 403, &s.shop).await;
    // Dot segments resolve before routing: this is /admin, decided by /admin's policy.
    s.expect("GET", "/reports/../admin/users", &erin, 403, &s.shop)
        .await;
    s.expect("GET", "/reports/./../admin/users", &erin, 403, &s.shop)
        .await;
    s.expect("GET", "//admin/users", &erin, 403, &s.shop).await;
    // Encoded separators and dots are refused outright.
    for path in [
        "/reports/..%2Fadmin/users",
        "/reports/%2e%2e/admin/users",
        "/reports/%2E%2E%2Fadmin",
        "/reports%2F..%2Fadmin",
        "/reports/..%5Cadmin",
        "/admin%00/users",
    ] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {erin}\r\nConnection: close\r\n\r\n"
        );
        let before = s.shop.count();
        let answer = raw(s.h.addr, req.as_bytes(), Duration::from_secs(2)).await;
        assert_eq!(status_of(&answer), 400, "{path}: {answer}");
        assert_eq!(s.shop.count(), before, "{path} reached the upstream");
    }
    // The admin is admitted, and the upstream gets the one normalised path.
    s.expect("GET", "/reports/../admin/users", &root, 200, &s.shop)
        .await;
    assert_eq!(s.shop.last().expect("seen").target, "/admin/users");
}

#[tokio::test]
async fn grpc_and_websocket_calls_are_authorized_as_their_own_actions() {
    let s = setup().await;
    let erin = s.user("erin", &[], "acme");
    let grpc = |method: &'static str| {
        let url = s.h.url(&format!("/shop.Catalog/{method}"));
        let token = erin.clone();
        async move {
            let req = Request::post(url)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
                .expect("request");
            send(&h2_client(), req).await
        }
    };
    let denied = grpc("DeleteItem").await;
    assert_eq!(denied.status, StatusCode::OK);
    assert_eq!(
        denied
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()),
        Some("7"),
        "PERMISSION_DENIED"
    );
    assert_eq!(s.shop.count(), 0);
    let audit = s.audit_for("/shop.Catalog/DeleteItem", "grpc").await;
    assert_eq!(audit["decision"], "deny");
    let allowed = grpc("GetItem").await;
    assert!(allowed.headers.get("grpc-status").is_none_or(|v| v != "7"));
    assert_eq!(s.shop.count(), 1, "GetItem reached the upstream");

    // WebSocket: `connect`, refused before the upgrade for a non-editor.
    let ws = |token: String| {
        format!(
            "GET /live HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let answer = raw(
        s.h.addr,
        ws(erin.clone()).as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(status_of(&answer), 403, "{answer}");
    assert_eq!(s.shop.count(), 1);
    let audit = s.audit_for("/live", "connect").await;
    assert_eq!(audit["decision"], "deny");
}

#[tokio::test]
async fn shadow_policies_are_recorded_and_never_applied() {
    // The shadow set would let nobody read reports, and would let anyone delete them.
    let shadow = r#"
@id("next-reports-delete")
permit (principal, action == Action::"DELETE", resource == Route::"reports");
"#;
    let s = setup_with("shadow = [\"next.cedar\"]", &[("next.cedar", shadow)]).await;
    let erin = s.user("erin", &[], "acme");
    s.expect("GET", "/reports/q3", &erin, 200, &s.shop).await;
    s.expect("DELETE", "/reports/q3", &erin, 403, &s.shop).await;
    let read = s.audit_for("/reports/q3", "GET").await;
    assert_eq!(read["decision"], "allow");
    assert_eq!(read["shadow"]["decision"], "deny");
    assert_eq!(read["shadow"]["disagrees"], true);
    let delete = s.audit_for("/reports/q3", "DELETE").await;
    assert_eq!(delete["decision"], "deny");
    assert_eq!(delete["policies"], json!(["reports-no-delete"]));
    // The shadow permit is overridden by nothing in the shadow set: it would allow.
    assert_eq!(delete["shadow"]["decision"], "allow");
    assert_eq!(delete["shadow"]["policies"], json!(["next-reports-delete"]));
    assert_eq!(s.h.proxy.shadow_disagreements(), 2);
    // A request both sets deny is no disagreement.
    s.expect("PUT", "/reports/q3", &erin, 403, &s.shop).await;
    let put = s.audit_for("/reports/q3", "PUT").await;
    assert_eq!(put["shadow"]["disagrees"], false);
    assert_eq!(s.h.proxy.shadow_disagreements(), 2);
}

#[tokio::test]
async fn a_policy_that_fails_validation_leaves_the_old_set_enforcing_under_load() {
    let s = setup().await;
    let erin = s.user("erin", &[], "acme");
    let dave = s.user("dave", &["editors"], "acme");
    // Decided (and remembered with dave's cached credential) under the old policies.
    s.expect("GET", "/admin/x", &dave, 403, &s.shop).await;
    let version = s.h.proxy.version();
    // Load: readers that must stay admitted and writers that must stay refused, throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let url = s.h.url(if i % 2 == 0 {
            "/reports/q3"
        } else {
            "/admin/x"
        });
        let want = if i % 2 == 0 { 200 } else { 403 };
        let token = erin.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let client = h1_client();
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = Request::get(&url)
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let r = send(&client, req).await;
                assert_eq!(r.status.as_u16(), want, "{url} during reload");
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A policy with a type error (an attribute the schema does not have) that would open
    // /admin to everyone if it were loaded as text.
    std::fs::write(
        s.h.dir.path().join("policies/shop.cedar"),
        format!(
            "{SHOP}\n@id(\"oops\")\npermit (principal, action, resource == Route::\"admin\") when {{ principal.role == \"admin\" || true }};\n"
        ),
    )
    .expect("write");
    let err = s.h.proxy.reload().expect_err("invalid policy refused");
    let text = err.to_string();
    assert!(text.contains("shop.cedar:"), "{text}");
    assert!(text.contains("role"), "{text}");
    assert_eq!(s.h.proxy.version(), version, "old snapshot serving");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A valid change is taken: admins only becomes admins and editors.
    std::fs::write(
        s.h.dir.path().join("policies/shop.cedar"),
        format!("{SHOP}\n@id(\"admin-editors\")\npermit (principal in Group::\"editors\", action, resource == Route::\"admin\");\n"),
    )
    .expect("write");
    s.h.proxy.reload().expect("valid policy taken");
    assert_ne!(s.h.proxy.version(), version);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("load task");
    }
    assert!(total > 20, "load ran: {total} requests");
    // The same credential, decided anew under the new policies.
    s.expect("GET", "/admin/x", &dave, 200, &s.shop).await;
    s.expect("GET", "/admin/x", &erin, 403, &s.shop).await;
}

#[tokio::test]
async fn the_last_decisions_are_written_before_shutdown_returns() {
    let s = setup().await;
    let erin = s.user("erin", &[], "acme");
    for i in 0..50 {
        s.expect("GET", &format!("/reports/last-{i}"), &erin, 200, &s.shop)
            .await;
    }
    s.h.proxy.shutdown().await;
    // No waiting: shutdown flushed the audit trail.
    let events = s.audit();
    assert!(
        events.iter().any(|e| e["path"] == "/reports/last-49"),
        "{} events, the last missing",
        events.len()
    );
}

/// Refunds need the EU region header (a client can remove it, never forge the policy's view).
const REGION: &str = r#"
@id("refunds-eu-only")
forbid (principal, action == Action::"POST", resource == Route::"refunds")
unless { context.headers has "x-region" && context.headers["x-region"] == "eu" };
"#;

/// `drawbridge test` and `serve` decide the same request the same way: hostile headers,
/// odd hosts, unreadable credentials, query credentials and gRPC look-alikes included. Each
/// request goes to the server; its status becomes the expectation of a test case for the
/// same request, and `drawbridge test` must pass them all.
#[tokio::test]
async fn drawbridge_test_decides_as_serve_does() {
    let s = setup_with(
        "tests = [\"cases.toml\"]",
        &[("policies/region.cedar", REGION)],
    )
    .await;
    let bob = s.user("bob", &["billing"], "acme");
    let bearer = format!("Bearer {bob}");
    // (name, method, target, headers; the caller is bob unless `authorization` is given)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: &[Case] = &[
        (
            "region eu",
            "POST",
            "/refunds?amount=5",
            &[("x-region", "eu")],
        ),
        (
            "region named in Connection is removed before policies",
            "POST",
            "/refunds?amount=5",
            &[("x-region", "eu"), ("connection", "x-region")],
        ),
        (
            "region with an underscore is another header",
            "POST",
            "/refunds?amount=5",
            &[("x_region", "eu")],
        ),
        (
            "user info in Host",
            "POST",
            "/refunds?amount=5",
            &[("x-region", "eu"), ("host", "bob@localhost")],
        ),
        (
            "host in capitals with a trailing dot",
            "GET",
            "/tenants/acme/orders",
            &[("host", "LOCALHOST.")],
        ),
        (
            "a Bearer scheme without a token",
            "GET",
            "/reports/q3",
            &[("authorization", "Bearer")],
        ),
        (
            "a token in the query",
            "GET",
            "/reports/q3?access_token=abc",
            &[],
        ),
        (
            "a method override in the query",
            "GET",
            "/reports/q3?_method=DELETE",
            &[],
        ),
        (
            "gRPC content type named in Connection",
            "POST",
            "/shop.Catalog/GetItem",
            &[
                ("content-type", "application/grpc"),
                ("connection", "content-type"),
            ],
        ),
        (
            "a fullwidth solidus",
            "GET",
            "/reports/%EF%BC%8F..%EF%BC%8Fadmin",
            &[],
        ),
        ("dot segments", "GET", "/reports/../admin/users", &[]),
        ("an encoded slash", "GET", "/reports%2f..%2fadmin", &[]),
    ];
    let mut file = String::new();
    for (name, method, target, headers) in cases {
        let mut head = format!("{method} {target} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| *k == "host") {
            head.push_str("host: localhost\r\n");
        }
        if !headers.iter().any(|(k, _)| *k == "authorization") {
            head.push_str(&format!("authorization: {bearer}\r\n"));
        }
        for (k, v) in *headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !headers.iter().any(|(k, _)| k.starts_with("content-length")) {
            head.push_str("content-length: 0\r\n");
        }
        head.push_str("connection: close\r\n\r\n");
        let answer = raw(s.h.addr, head.as_bytes(), Duration::from_secs(2)).await;
        let expect = match status_of(&answer) {
            200 => "allow",
            403 => "deny",
            400 => "bad_request",
            401 => "unauthenticated",
            404 => "not_found",
            other => panic!("{name}: unexpected status {other}: {answer}"),
        };
        file.push_str(&format!(
            "[[cases]]\nname = {name:?}\nmethod = {method:?}\npath = {target:?}\nexpect = {expect:?}\n"
        ));
        let host = headers.iter().find(|(k, _)| *k == "host");
        if let Some((_, h)) = host {
            file.push_str(&format!("host = {h:?}\n"));
        }
        let given = headers.iter().any(|(k, _)| *k == "authorization");
        if !given || headers.iter().any(|(_, v)| *v == "Bearer") {
            file.push_str(
                "principal = { authenticator = \"corp\", claims = { sub = \"bob\", groups = [\"billing\"], tenant = \"acme\" } }\n",
            );
        }
        let listed: Vec<String> = headers
            .iter()
            .filter(|(k, _)| *k != "host")
            .map(|(k, v)| format!("{k:?} = {v:?}"))
            .collect();
        if !listed.is_empty() {
            file.push_str(&format!("headers = {{ {} }}\n", listed.join(", ")));
        }
        file.push('\n');
    }
    // The statuses serve gave are the ones the cases above were written to show.
    let expected: Vec<&str> = file
        .lines()
        .filter_map(|l| l.strip_prefix("expect = "))
        .collect();
    assert_eq!(
        expected,
        [
            "\"allow\"",
            "\"deny\"",
            "\"deny\"",
            "\"bad_request\"",
            "\"allow\"",
            "\"bad_request\"",
            "\"bad_request\"",
            "\"bad_request\"",
            "\"deny\"",
            "\"bad_request\"",
            "\"deny\"",
            "\"bad_request\"",
        ],
        "{file}"
    );
    std::fs::write(s.h.dir.path().join("cases.toml"), &file).expect("write cases");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(["test", "--config"])
        .arg(s.h.config_path())
        .output()
        .expect("run drawbridge test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{file}\n{stdout}");
    assert!(stdout.contains("12 cases: 12 passed"), "{stdout}");
}
