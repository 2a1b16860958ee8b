//! Watching and steering the gateway through its admin listener: metrics counted exactly
//! for scripted traffic and read by Prometheus's own parsers, the admin API, and who may
//! use it.

use std::time::Duration;

use bytes::Bytes;
use drawbridge_testkit::RecordingUpstream;
use drawbridge_testkit::harness::*;
use drawbridge_testkit::jwt::{KeyType, SigningKey, jwks, now};
use drawbridge_testkit::metrics::{Samples, lint, parse};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.test/";
const OPS: &str = "https://ops.test/";

const POLICIES: &str = r#"
@id("staff-read-orders")
permit (principal in Group::"staff", action == Action::"GET", resource == Route::"orders");
"#;

struct Setup {
    h: Harness,
    up: RecordingUpstream,
    corp: SigningKey,
    ops: SigningKey,
}

/// Routes `orders` (JWT + policies), `pub` (public), `dead` (an upstream nobody serves);
/// the admin listener at `admin` guarded by `guard`.
async fn setup(admin: &str, guard: &str) -> Setup {
    let up = RecordingUpstream::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let corp = SigningKey::generate(KeyType::P256, "c1");
    let ops = SigningKey::generate(KeyType::P256, "o1");
    let cfg = config(&format!(
        r#"[admin]
address = "{admin}"
{guard}

[[authenticators]]
name = "corp"
type = "jwt"
issuer = "{ISSUER}"
audiences = ["drawbridge"]
algorithms = ["ES256"]
jwks_file = "corp.json"
claims = {{ groups = "groups" }}

[[authenticators]]
name = "ops"
type = "jwt"
issuer = "{OPS}"
audiences = ["drawbridge-admin"]
algorithms = ["ES256"]
jwks_file = "ops.json"
claims = {{ groups = "groups" }}

[policy]
files = ["policies.cedar"]
plain_names = ["corp"]

[[upstreams]]
name = "app"
endpoints = ["{app}"]

[[upstreams]]
name = "dead"
endpoints = ["http://{dead}"]
connect_timeout = "1s"

[[routes]]
name = "orders"
prefix = "/orders"
upstream = "app"
authenticate = ["corp"]

[[routes]]
name = "pub"
prefix = "/pub"
upstream = "app"
public = true

[[routes]]
name = "dead"
prefix = "/dead"
upstream = "dead"
public = true
"#,
        app = up.url(),
    ))
    .server("audit_log", "audit.jsonl");
    let (corp_jwks, ops_jwks) = (jwks(&[&corp]), jwks(&[&ops]));
    let h = Harness::start_with(
        &cfg,
        &[
            ("corp.json", corp_jwks.as_str()),
            ("ops.json", ops_jwks.as_str()),
            ("policies.cedar", POLICIES),
        ],
    )
    .await;
    Setup { h, up, corp, ops }
}

impl Setup {
    fn token(&self, groups: &[&str], exp_in: i64) -> String {
        let n = now();
        self.corp.sign(&json!({
            "iss": ISSUER, "aud": "drawbridge", "sub": "alice", "iat": n - 700,
            "exp": n + exp_in, "groups": groups,
        }))
    }

    fn operator(&self, groups: &[&str]) -> String {
        let n = now();
        self.ops.sign(&json!({
            "iss": OPS, "aud": "drawbridge-admin", "sub": "olga", "iat": n,
            "exp": n + 600, "groups": groups,
        }))
    }

    fn admin(&self, path: &str) -> String {
        let port = self.h.proxy.admin_addr().expect("admin listener").port();
        format!("http://127.0.0.1:{port}{path}")
    }

    async fn call(&self, method: &str, url: &str, token: Option<&str>) -> Reply {
        let mut req = Request::builder().method(method).uri(url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        send(
            &h1_client(),
            req.body(Full::new(Bytes::new())).expect("request"),
        )
        .await
    }

    /// Scrapes as Prometheus does (OpenMetrics asked for), parses it with Prometheus's
    /// parsers, and lints the classic format with promtool.
    async fn scrape(&self, token: Option<&str>) -> Samples {
        let mut req = Request::get(self.admin("/metrics")).header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        );
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let r = send(
            &h1_client(),
            req.body(Full::new(Bytes::new())).expect("request"),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(
            r.headers["content-type"]
                .to_str()
                .expect("type")
                .starts_with("application/openmetrics-text"),
        );
        assert!(r.body.ends_with("# EOF\n"));
        let samples = parse(&r.body);
        let classic = self.call("GET", &self.admin("/metrics"), token).await;
        assert!(
            classic.headers["content-type"]
                .to_str()
                .expect("type")
                .starts_with("text/plain; version=0.0.4"),
        );
        let problems = lint(&classic.body);
        assert!(
            problems.is_empty(),
            "promtool: {problems}\n{}",
            classic.body
        );
        samples
    }
}

#[tokio::test]
async fn metrics_count_scripted_traffic_exactly() {
    let s = setup("127.0.0.1:0", "").await;
    let staff = s.token(&["staff"], 600);
    let expired = s.token(&["staff"], -600);
    for _ in 0..3 {
        assert_eq!(get(&s.h.url("/pub/a")).await.status, StatusCode::OK);
    }
    for _ in 0..2 {
        let r = s.call("GET", &s.h.url("/orders/1"), Some(&staff)).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = s.call("DELETE", &s.h.url("/orders/1"), Some(&staff)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = s.call("GET", &s.h.url("/orders/1"), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = s.call("GET", &s.h.url("/orders/1"), Some(&expired)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = s
        .call("GET", &s.h.url("/orders/1"), Some("not.a.token"))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(&s.h.url("/dead/x")).await.status,
        StatusCode::BAD_GATEWAY
    );
    let r = s.call("POST", &s.h.url("/nowhere"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        s.up.count(),
        5,
        "only the admitted requests reached the upstream"
    );

    let m = s.scrape(None).await;
    let req = |route, method, status| {
        m.count(
            "drawbridge_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(req("pub", "GET", "2xx"), 3.0);
    assert_eq!(req("orders", "GET", "2xx"), 2.0);
    assert_eq!(req("orders", "DELETE", "4xx"), 1.0);
    assert_eq!(req("orders", "GET", "4xx"), 3.0);
    assert_eq!(req("dead", "GET", "5xx"), 1.0);
    assert_eq!(req("(none)", "POST", "4xx"), 1.0);
    let total: f64 =
        m.0.iter()
            .filter(|(k, _)| k.starts_with("drawbridge_requests_total{"))
            .map(|(_, v)| v)
            .sum();
    assert_eq!(total, 11.0, "no request counted twice or missed");
    let authn = |outcome| {
        m.count(
            "drawbridge_authentications_total",
            &[("authenticator", "corp"), ("outcome", outcome)],
        )
    };
    assert_eq!(
        (
            authn("ok"),
            authn("missing"),
            authn("expired"),
            authn("invalid")
        ),
        (3.0, 1.0, 1.0, 1.0)
    );
    let decided = |d| {
        m.count(
            "drawbridge_authorization_decisions_total",
            &[("route", "orders"), ("decision", d)],
        )
    };
    assert_eq!((decided("allow"), decided("deny")), (2.0, 1.0));
    // Durations: one observation per request, per route; phases where they ran.
    assert_eq!(
        m.count(
            "drawbridge_request_duration_seconds_count",
            &[("route", "orders")]
        ),
        6.0
    );
    let phase = |route, phase| {
        m.count(
            "drawbridge_phase_duration_seconds_count",
            &[("route", route), ("phase", phase)],
        )
    };
    assert_eq!(phase("orders", "authenticate"), 6.0);
    assert_eq!(phase("orders", "authorize"), 3.0);
    assert_eq!(phase("orders", "upstream"), 2.0);
    assert_eq!(
        phase("pub", "authenticate"),
        0.0,
        "public routes read no credentials"
    );
    assert_eq!(
        m.count(
            "drawbridge_request_duration_seconds_bucket",
            &[("route", "pub"), ("le", "+Inf")]
        ),
        3.0
    );
    assert_eq!(
        m.count(
            "drawbridge_upstream_errors_total",
            &[("upstream", "dead"), ("kind", "connect")]
        ),
        1.0
    );
    let dead_ep =
        m.0.iter()
            .find(|(k, _)| {
                k.starts_with("drawbridge_upstream_endpoint_up{") && k.contains("upstream=\"dead\"")
            })
            .map(|(_, v)| *v);
    assert!(dead_ep.is_some(), "endpoint health is reported");
    assert!(
        m.count(
            "drawbridge_connections_accepted_total",
            &[("listener", "main")]
        ) >= 1.0
    );
    assert_eq!(
        m.count("drawbridge_log_dropped_total", &[("log", "audit")]),
        0.0
    );
    assert!(
        m.get("drawbridge_log_queue_depth", &[("log", "audit")])
            .is_some()
    );
    let version = s.h.proxy.version();
    assert_eq!(
        m.get("drawbridge_config_info", &[("version", version.as_str())]),
        Some(1.0)
    );
    // No label carries a path, a principal, a client's address or a token (endpoints are
    // named as configured).
    for k in m.0.keys() {
        for leaked in ["alice", "/orders/1", "Bearer", "nowhere"] {
            assert!(!k.contains(leaked), "{k} carries {leaked}");
        }
        if !k.starts_with("drawbridge_upstream_") {
            assert!(!k.contains("127.0.0.1"), "{k} carries an address");
        }
    }

    // A reload that fails and one that works are counted; the counters survive the reload.
    let path = s.h.config_path();
    let good = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{good}\n[[routes]]\nname = \"broken\"\n")).expect("write");
    assert!(s.h.proxy.reload().is_err());
    std::fs::write(&path, good.replace("/pub", "/public")).expect("write");
    assert!(s.h.proxy.reload().is_ok());
    let m = s.scrape(None).await;
    assert_eq!(
        (
            m.count("drawbridge_config_reloads_total", &[("result", "ok")]),
            m.count("drawbridge_config_reloads_total", &[("result", "failed")])
        ),
        (1.0, 1.0)
    );
    assert_eq!(
        m.count(
            "drawbridge_requests_total",
            &[("route", "orders"), ("method", "GET"), ("status", "2xx")]
        ),
        2.0
    );
}

#[tokio::test]
async fn shadow_disagreements_are_counted_per_route() {
    let s = setup("127.0.0.1:0", "").await;
    // Replace the policies' configuration with one that has a shadow set allowing DELETE.
    let path = s.h.config_path();
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        s.h.dir.path().join("shadow.cedar"),
        "@id(\"staff-any\")\npermit (principal in Group::\"staff\", action, resource == Route::\"orders\");\n",
    )
    .expect("write");
    std::fs::write(
        &path,
        text.replace(
            "files = [\"policies.cedar\"]",
            "files = [\"policies.cedar\"]\nshadow = [\"shadow.cedar\"]",
        ),
    )
    .expect("write");
    s.h.proxy.reload().expect("reload");
    let staff = s.token(&["staff"], 600);
    for _ in 0..2 {
        let r = s.call("DELETE", &s.h.url("/orders/1"), Some(&staff)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }
    let r = s.call("GET", &s.h.url("/orders/1"), Some(&staff)).await;
    assert_eq!(r.status, StatusCode::OK);
    let m = s.scrape(None).await;
    assert_eq!(
        m.count(
            "drawbridge_shadow_disagreements_total",
            &[("route", "orders")]
        ),
        2.0
    );
}

#[test]
fn check_refuses_an_admin_address_off_loopback_without_authenticators() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("drawbridge.toml");
    let cfg = config("[admin]\naddress = \"0.0.0.0:9901\"\n")
        .with(&upstream_and_route("app", "http://127.0.0.1:9"));
    std::fs::write(&path, cfg.to_string()).expect("write");
    let out = std::process::Command::new(drawbridge_binary())
        .arg("check")
        .arg(&path)
        .output()
        .expect("check runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.address"), "{err}");
    assert!(err.contains("no authenticator guards it"), "{err}");
    assert!(
        err.contains("drawbridge.toml:"),
        "names the file and line: {err}"
    );
}

#[tokio::test]
async fn off_loopback_the_admin_api_wants_an_operator() {
    let s = setup(
        "0.0.0.0:0",
        "authenticators = [\"ops\"]\ngroups = [\"sre\"]",
    )
    .await;
    // The probes stay open: an orchestrator's kubelet carries no token.
    let r = s.call("GET", &s.admin("/healthz"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.call("GET", &s.admin("/readyz"), None).await.status == StatusCode::OK
        })
        .await
    );
    let sre = s.operator(&["sre"]);
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/api/config"),
        ("GET", "/api/reloads"),
        ("POST", "/api/reload"),
        ("GET", "/api/decisions"),
        ("POST", "/api/sessions/revoke"),
        ("POST", "/sessions/revoke"),
    ] {
        // No credential, a user's token for the routes, an operator outside the group.
        let r = s.call(method, &s.admin(path), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert!(r.headers.contains_key("www-authenticate"));
        let user = s.token(&["sre"], 600);
        let r = s.call(method, &s.admin(path), Some(&user)).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: a route token"
        );
        let r = s
            .call(method, &s.admin(path), Some(&s.operator(&["dev"])))
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {path}");
    }
    // The operator is let in.
    let r = s.call("GET", &s.admin("/api/config"), Some(&sre)).await;
    assert_eq!(r.status, StatusCode::OK);
    let v: Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["version"], s.h.proxy.version());
    assert!(
        v["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|n| n == "orders"))
    );
    s.scrape(Some(&sre)).await;
}

#[tokio::test]
async fn the_admin_api_reloads_and_shows_recent_decisions() {
    let s = setup("127.0.0.1:0", "").await;
    let staff = s.token(&["staff"], 600);
    let r = s.call("GET", &s.h.url("/orders/1"), Some(&staff)).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s.call("DELETE", &s.h.url("/orders/2"), Some(&staff)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let decisions = |query: &'static str| {
        let s = &s;
        async move {
            let r = s
                .call("GET", &s.admin(&format!("/api/decisions{query}")), None)
                .await;
            assert_eq!(r.status, StatusCode::OK);
            serde_json::from_str::<Vec<Value>>(&r.body).expect("json")
        }
    };
    assert!(
        eventually(Duration::from_secs(3), || async {
            decisions("").await.len() == 2
        })
        .await
    );
    let denied = decisions("?decision=deny").await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["path"], "/orders/2");
    assert_eq!(denied[0]["principal"]["id"], "alice");
    assert_eq!(decisions("?principal=alice&route=orders").await.len(), 2);
    assert_eq!(decisions("?principal=bob").await.len(), 0);
    assert_eq!(
        decisions("?limit=1").await[0]["path"],
        "/orders/2",
        "newest first"
    );

    // A reload through the API: refused (the old configuration serves on), then done.
    let path = s.h.config_path();
    let good = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{good}\n[[routes]]\nname = \"broken\"\n")).expect("write");
    let r = s.call("POST", &s.admin("/api/reload"), None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("routes")),
        "{v}"
    );
    assert_eq!(get(&s.h.url("/pub/a")).await.status, StatusCode::OK);
    std::fs::write(&path, good.replace("/pub", "/public")).expect("write");
    let r = s.call("POST", &s.admin("/api/reload"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(get(&s.h.url("/public/a")).await.status, StatusCode::OK);
    let r = s.call("GET", &s.admin("/api/reloads"), None).await;
    let history: Vec<Value> = serde_json::from_str(&r.body).expect("json");
    assert_eq!(history.len(), 2);
    assert_eq!(
        (&history[0]["ok"], &history[1]["ok"]),
        (&json!(false), &json!(true))
    );
    assert_eq!(history[1]["version"], s.h.proxy.version());
}

/// Every metric the shipped alerting rules and dashboard name is one Drawbridge exports:
/// a renamed metric cannot leave them watching nothing.
#[tokio::test]
async fn the_shipped_rules_and_dashboard_name_only_exported_metrics() {
    let s = setup("127.0.0.1:0", "").await;
    let text = s.call("GET", &s.admin("/metrics"), None).await.body;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
    let mut named = std::collections::BTreeSet::new();
    for file in [
        "prometheus/drawbridge-rules.yml",
        "grafana/drawbridge-dashboard.json",
    ] {
        let body = std::fs::read_to_string(format!("{root}/{file}")).expect("deploy file");
        let mut rest = body.as_str();
        while let Some(i) = rest.find("drawbridge_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            rest = &rest[i + name.len()..];
            named.insert(name);
        }
    }
    // The dashboard's uid and title are not metrics.
    named.retain(|n| n != "drawbridge_");
    assert!(named.len() >= 15, "{named:?}");
    for name in &named {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "`{name}` is named in deploy/ but not exported"
        );
    }
}

/// `drawbridge admin` (the binary) run against `addr` with `args`: whether it succeeded,
/// and what it printed.
async fn admin_command(addr: String, args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(drawbridge_binary())
            .arg("admin")
            .args(["--address", addr.as_str()])
            .args(&args)
            .output()
            .expect("drawbridge admin runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    })
    .await
    .expect("join")
}

/// `drawbridge admin` (the binary) calls a running instance's API.
#[tokio::test]
async fn the_admin_command_asks_the_running_instance() {
    let s = setup("127.0.0.1:0", "").await;
    let addr = s.h.proxy.admin_addr().expect("admin").to_string();
    let (ok, said) = admin_command(addr.clone(), &["status"]).await;
    assert!(ok, "{said}");
    let v: Value = serde_json::from_str(&said).expect("json");
    assert_eq!(v["version"], s.h.proxy.version());
    let (ok, said) = admin_command(addr.clone(), &["reload"]).await;
    assert!(ok && said.contains("\"ok\": true"), "{said}");
    let (ok, said) = admin_command(addr.clone(), &["metrics"]).await;
    assert!(
        ok && said.contains("drawbridge_config_reloads_total{result=\"ok\"} 1"),
        "{said}"
    );
    let (ok, said) = admin_command(addr, &["unblock", "--client", "192.0.2.1"]).await;
    assert!(!ok, "no such block: {said}");
}
