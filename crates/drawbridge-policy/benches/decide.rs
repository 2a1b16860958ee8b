//! One authorization decision: 100 policies across 50 routes, a principal in 20 of 1,000
//! groups. `cargo bench -p drawbridge-policy`.

use std::fmt::Write;
use std::hint::black_box;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use drawbridge_config::PrincipalKind;
use drawbridge_identity::{AuthMethod, Principal};
use drawbridge_policy::{Action, RequestView};

const ROUTES: usize = 50;
const GROUPS: usize = 1000;

fn config() -> String {
    let mut s = String::from(
        r#"[[listeners]]
name = "main"
address = "127.0.0.1:0"

[[authenticators]]
name = "corp"
type = "jwt"
issuer = "https://idp.test/"
audiences = ["x"]
jwks_file = "jwks.json"

[policy]
files = ["policies.cedar"]
attributes = { tenant = "String" }
plain_names = ["corp"]

[[upstreams]]
name = "app"
endpoints = ["http://127.0.0.1:9"]
"#,
    );
    for r in 0..ROUTES {
        let _ = write!(
            s,
            "\n[[routes]]\nname = \"r{r}\"\nprefix = \"/t/{{tenant}}/r{r}\"\nupstream = \"app\"\nauthenticate = [\"corp\"]\n"
        );
    }
    s
}

/// Two policies per route: members of one group read within their tenant; another group
/// writes.
fn policies() -> String {
    let mut s = String::new();
    for r in 0..ROUTES {
        let (g1, g2) = (r * 20, r * 20 + 7);
        let _ = write!(
            s,
            "permit (principal in Group::\"g{g1}\", action in Action::\"read\", resource == Route::\"r{r}\")\n\
             when {{ principal has tenant && context.params has tenant && context.params.tenant == principal.tenant }};\n\
             permit (principal in Group::\"g{g2}\", action in Action::\"write\", resource == Route::\"r{r}\");\n"
        );
    }
    s
}

fn principal() -> std::sync::Arc<Principal> {
    caller("alice")
}

fn caller(id: &str) -> std::sync::Arc<Principal> {
    let mut attributes = serde_json::Map::new();
    attributes.insert("tenant".into(), "acme".into());
    std::sync::Arc::new(Principal {
        id: id.into(),
        kind: PrincipalKind::User,
        authenticator: "corp".into(),
        issuer: Some("https://idp.test/".into()),
        // 20 of the 1,000 groups, one of them the read group of route r7 (g140).
        groups: (0..20)
            .map(|i| format!("g{}", (i * 47 + 140) % GROUPS))
            .collect(),
        attributes,
        methods: vec![AuthMethod::Jwt],
        authenticated_at: None,
        expires_at: None,
        factors: Vec::new(),
    })
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("jwks.json"),
        include_str!("../../../examples/keys/ci-jwks.json"),
    )
    .expect("jwks");
    std::fs::write(dir.path().join("policies.cedar"), policies()).expect("policies");
    let path = dir.path().join("drawbridge.toml");
    std::fs::write(&path, config()).expect("config");
    let config = drawbridge_config::load(&path).expect("config");
    let policies = drawbridge_policy::compile(&config)
        .expect("compile")
        .expect("policies");
    assert_eq!(policies.counts.0, 2 * ROUTES);

    let headers = http::HeaderMap::new();
    let params = ["acme"];
    let view = RequestView {
        action: Action::Get,
        method: "GET",
        host: "api.test",
        path: "/t/acme/r7/items",
        params: &params,
        query: None,
        headers: &headers,
        ip: IpAddr::from([10, 0, 0, 1]),
        now: SystemTime::now(),
        grpc: None,
    };
    let p = principal();
    assert!(policies.decide(7, &p, &view).expect("decide").allowed());

    let mut g = c.benchmark_group("authorize");
    // A caller whose credential is cached, asking what it asked before: the remembered
    // decision.
    g.bench_function("decision, cached principal, repeat request", |b| {
        b.iter(|| black_box(policies.decide(7, black_box(&p), black_box(&view))))
    });
    // The same caller, each request with a path parameter it never used: its entity is
    // kept, the policies are evaluated.
    let mut i = 0usize;
    g.bench_function("decision, cached principal, new context", |b| {
        b.iter(|| {
            i += 1;
            let tenant = format!("t{i}");
            let params = [tenant.as_str()];
            let v = RequestView {
                params: &params,
                ..view
            };
            black_box(policies.decide(7, black_box(&p), black_box(&v)))
        })
    });
    // A caller seen for the first time: the entity is built too.
    let mut n = 0usize;
    g.bench_function("decision, new principal", |b| {
        b.iter_batched(
            || {
                n += 1;
                caller(&format!("user{n}"))
            },
            |fresh| black_box(policies.decide(7, &fresh, black_box(&view))),
            criterion::BatchSize::SmallInput,
        )
    });

    // The naive way, for comparison: the whole set, entities and context built from scratch.
    let set = cedar_policy::PolicySet::from_str(&self::policies()).expect("parse");
    let auth = cedar_policy::Authorizer::new();
    g.bench_function("naive: whole set, entities built per request", |b| {
        b.iter(|| {
            use cedar_policy::*;
            let user = EntityUid::from_str("User::\"alice\"").expect("uid");
            let groups = p
                .groups
                .iter()
                .map(|g| EntityUid::from_str(&format!("Group::\"{g}\"")).expect("group"))
                .collect();
            let attrs = [(
                "tenant".to_string(),
                RestrictedExpression::new_string("acme".into()),
            )]
            .into_iter()
            .collect();
            let route = EntityUid::from_str("Route::\"r7\"").expect("route");
            let entities = Entities::from_entities(
                [
                    Entity::new(user.clone(), attrs, groups).expect("user"),
                    Entity::new_no_attrs(
                        route.clone(),
                        [EntityUid::from_str("Upstream::\"app\"").expect("up")].into(),
                    ),
                    Entity::new_no_attrs(
                        EntityUid::from_str("Action::\"GET\"").expect("get"),
                        [EntityUid::from_str("Action::\"read\"").expect("read")].into(),
                    ),
                ],
                None,
            )
            .expect("entities");
            let ctx = Context::from_json_value(
                serde_json::json!({"params": {"tenant": "acme"}, "path": "/t/acme/r7/items"}),
                None,
            )
            .expect("ctx");
            let req = Request::new(
                user,
                EntityUid::from_str("Action::\"GET\"").expect("get"),
                route,
                ctx,
                None,
            )
            .expect("request");
            black_box(auth.is_authorized(&req, &set, &entities))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
