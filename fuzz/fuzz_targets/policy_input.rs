//! What a request hands its route's policies: path parameters, query and headers of any
//! shape. Deciding never panics, and an allowed request is one whose `amount` a plain reading
//! of the query finds exactly once and below the limit (no spelling sneaks a second one by).
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::SystemTime;

use drawbridge_config::PrincipalKind;
use drawbridge_identity::{AuthMethod, Principal};
use drawbridge_policy::{Action, Policies, RequestView};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"

[[authenticators]]
name = "keys"
type = "api_key"
keys_file = "keys.toml"
secret_file = "secret"

[policy]
files = ["p.cedar"]

[[upstreams]]
name = "app"
endpoints = ["http://127.0.0.1:9"]

[[routes]]
name = "r"
prefix = "/t/{tenant}"
upstream = "app"
authenticate = ["keys"]
[routes.context]
query = { amount = "Long", flag = "Bool", note = "String" }
headers = ["x-region"]
"#;

const POLICY: &str = r#"
permit (principal, action, resource == Route::"r")
when {
  context.query has amount && context.query.amount < 1000 &&
  context.params has tenant && context.params.tenant != ""
}
unless { context.headers has "x-region" && context.headers["x-region"] == "blocked" };
"#;

fn policies() -> &'static Policies {
    static P: OnceLock<Policies> = OnceLock::new();
    P.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("drawbridge-fuzz-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("keys.toml"), "").expect("keys");
        std::fs::write(dir.join("secret"), "0123456789abcdef0123456789abcdef").expect("secret");
        std::fs::write(dir.join("p.cedar"), POLICY).expect("policy");
        std::fs::write(dir.join("d.toml"), CONFIG).expect("config");
        let config = drawbridge_config::load(&dir.join("d.toml")).expect("config");
        drawbridge_policy::compile(&config).expect("compile").expect("policies")
    })
}

/// The reference reading: every `amount` in the query, decoded as forms are.
fn amounts(query: &str) -> Vec<Option<i64>> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .ok()
                    .map(|c| c.into_owned())
            };
            (dec(k)? == "amount").then(|| dec(v).and_then(|v| v.parse().ok()))
        })
        .collect()
}

fuzz_target!(|input: (String, String, Vec<Vec<u8>>)| {
    let (tenant, query, regions) = input;
    let mut headers = http::HeaderMap::new();
    for r in regions {
        if let Ok(v) = http::HeaderValue::from_bytes(&r) {
            headers.append("x-region", v);
        }
    }
    let principal = Principal {
        id: "k".into(),
        kind: PrincipalKind::ApiKey,
        authenticator: "keys".into(),
        issuer: None,
        groups: Vec::new(),
        attributes: Default::default(),
        methods: vec![AuthMethod::ApiKey],
        authenticated_at: None,
        expires_at: None,
        factors: Vec::new(),
        assertions: Default::default(),
        derived: Default::default(),
    };
    let params = [tenant.as_str()];
    let view = RequestView {
        action: Action::Post,
        method: "POST",
        host: "h",
        path: "/t/x",
        params: &params,
        query: Some(&query),
        headers: &headers,
        ip: IpAddr::from([127, 0, 0, 1]),
        now: SystemTime::now(),
        grpc: None,
    };
    if let Ok(d) = policies().decide(0, &principal, &view) {
        if d.allowed() {
            let found = amounts(&query);
            assert_eq!(found.len(), 1, "allowed with amounts {found:?} in {query:?}");
            assert!(found[0].is_some_and(|a| a < 1000), "allowed with {found:?}");
            assert!(!tenant.is_empty());
            assert!(headers.get_all("x-region").iter().count() <= 1);
        }
    }
});
