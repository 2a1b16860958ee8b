//! The policy layer on its own: decisions for the issue's example policies, fail-closed
//! evaluation, sliced sets deciding exactly as the whole set, and diagnostics that name the
//! file and line.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use drawbridge_config::PrincipalKind;
use drawbridge_identity::{AuthMethod, Principal};
use drawbridge_policy::{Action, BadRequest, DecideError, Policies, RequestView};
use drawbridge_testkit::config::{Config, strings};
use drawbridge_testkit::policies::{SERVICES, SHOP, routes};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const HEAD: &str = r#"
[server]
access_log = "off"

[[listeners]]
name = "main"
address = "127.0.0.1:0"

[[authenticators]]
name = "corp"
type = "jwt"
issuer = "https://idp.test/"
audiences = ["drawbridge"]
jwks_file = "jwks.json"
claims = { groups = "groups", attributes = ["tenant"] }

[[authenticators]]
name = "workloads"
type = "jwt"
issuer = "https://workloads.test/"
audiences = ["drawbridge"]
jwks_file = "jwks.json"
principal = "service"

[policy]
files = ["policies"]
attributes = { tenant = "String", level = "Long", scope = "Set<String>" }
plain_names = ["corp"]

"#;

/// Two authenticators, the policies directory, and the shared routes (indexes below).
fn config() -> String {
    format!(
        "{HEAD}{}",
        routes("http://127.0.0.1:9", "http://127.0.0.1:9")
    )
}

/// The shared example policies, and a `forbid` whose arithmetic overflows for any amount
/// above zero: an evaluation error.
fn shop_policies() -> String {
    format!(
        "{SHOP}\n@id(\"refunds-overflow\")\nforbid (principal, action, resource == Route::\"refunds\")\n\
         when {{ context.query has amount && context.query.amount + 9223372036854775807 < 0 }};\n"
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    policies: Policies,
}

fn fixture(config: &str, files: &[(&str, &str)]) -> Result<Fixture, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("jwks.json"), r#"{"keys":[]}"#).expect("jwks");
    std::fs::create_dir_all(dir.path().join("policies")).expect("mkdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let path = dir.path().join("drawbridge.toml");
    std::fs::write(&path, config).expect("config");
    let config = drawbridge_config::load(&path).map_err(|e| e.to_string())?;
    let policies = drawbridge_policy::compile(&config)
        .map_err(|e| e.to_string())?
        .ok_or("no [policy]")?;
    Ok(Fixture {
        _dir: dir,
        policies,
    })
}

fn shop() -> Fixture {
    fixture(
        &config(),
        &[
            ("policies/shop.cedar", &shop_policies()),
            ("policies/services.cedar", SERVICES),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn user(id: &str, groups: &[&str], attrs: Value) -> Arc<Principal> {
    principal(PrincipalKind::User, "corp", id, groups, attrs)
}

fn principal(
    kind: PrincipalKind,
    authn: &str,
    id: &str,
    groups: &[&str],
    attrs: Value,
) -> Arc<Principal> {
    let attributes: Map<String, Value> = match attrs {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Arc::new(Principal {
        id: id.into(),
        kind,
        authenticator: authn.into(),
        issuer: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        attributes,
        methods: vec![AuthMethod::Jwt],
        authenticated_at: None,
        expires_at: None,
        factors: Vec::new(),
    })
}

/// Route indexes in `config()`.
const TENANT_ORDERS: usize = 0;
const REFUNDS: usize = 1;
const LEDGER: usize = 2;
const REPORTS: usize = 3;

struct Req<'a> {
    action: Action,
    path: &'a str,
    params: Vec<&'a str>,
    query: Option<&'a str>,
    headers: http::HeaderMap,
}

fn req<'a>(action: Action, path: &'a str) -> Req<'a> {
    Req {
        action,
        path,
        params: Vec::new(),
        query: None,
        headers: http::HeaderMap::new(),
    }
}

fn decide(
    f: &Fixture,
    route: usize,
    p: &Arc<Principal>,
    r: &Req<'_>,
) -> Result<(bool, Vec<String>), DecideError> {
    let view = RequestView {
        action: r.action,
        method: r.action.id(),
        host: "api.test",
        path: r.path,
        params: &r.params,
        query: r.query,
        headers: &r.headers,
        ip: IpAddr::from([10, 0, 0, 1]),
        now: SystemTime::now(),
        grpc: None,
    };
    f.policies
        .decide(route, p, &view)
        .map(|d| (d.allowed(), d.enforced.policies.clone()))
}

#[test]
fn tenants_read_their_own_orders_only() {
    let f = shop();
    let alice = user("alice", &[], json!({"tenant": "acme"}));
    let mut r = req(Action::Get, "/tenants/acme/orders");
    r.params = vec!["acme"];
    assert_eq!(
        decide(&f, TENANT_ORDERS, &alice, &r).expect("decide"),
        (true, vec!["tenant-read".to_string()])
    );
    r.params = vec!["globex"];
    assert_eq!(
        decide(&f, TENANT_ORDERS, &alice, &r).expect("decide"),
        (false, vec![])
    );
    // Writes have no permit.
    let mut w = req(Action::Post, "/tenants/acme/orders");
    w.params = vec!["acme"];
    assert!(!decide(&f, TENANT_ORDERS, &alice, &w).expect("decide").0);
    // No tenant attribute (or one of another type) never matches.
    let nobody = user("bob", &[], json!({"tenant": 7}));
    r.params = vec!["acme"];
    assert!(!decide(&f, TENANT_ORDERS, &nobody, &r).expect("decide").0);
}

#[test]
fn refunds_need_the_group_and_an_amount_under_the_limit() {
    let f = shop();
    let bob = user("bob", &["billing"], json!({}));
    let carol = user("carol", &["sales"], json!({}));
    let mut r = req(Action::Post, "/refunds");
    r.query = Some("amount=0&note=x");
    assert_eq!(
        decide(&f, REFUNDS, &bob, &r).expect("decide"),
        (true, vec!["refunds-billing".to_string()])
    );
    assert!(!decide(&f, REFUNDS, &carol, &r).expect("decide").0);
    r.query = Some("amount=5000");
    assert!(!decide(&f, REFUNDS, &bob, &r).expect("decide").0);
    r.query = None;
    assert!(
        !decide(&f, REFUNDS, &bob, &r).expect("decide").0,
        "no amount"
    );
}

#[test]
fn an_evaluation_error_denies_even_when_a_permit_applies() {
    let f = shop();
    let bob = user("bob", &["billing"], json!({}));
    let mut r = req(Action::Post, "/refunds");
    // amount=1: the permit applies and the forbid overflows. Cedar alone would allow.
    r.query = Some("amount=1");
    let view = RequestView {
        action: r.action,
        method: "POST",
        host: "api.test",
        path: r.path,
        params: &[],
        query: r.query,
        headers: &r.headers,
        ip: IpAddr::from([10, 0, 0, 1]),
        now: SystemTime::now(),
        grpc: None,
    };
    let d = f.policies.decide(REFUNDS, &bob, &view).expect("decide");
    assert!(!d.allowed(), "{d:?}");
    assert!(d.enforced.policies.is_empty(), "{d:?}");
    assert_eq!(d.enforced.errors.len(), 1, "{d:?}");
    assert!(d.enforced.errors[0].contains("refunds-overflow"), "{d:?}");
}

#[test]
fn ambiguous_or_mistyped_inputs_are_bad_requests() {
    let f = shop();
    let bob = user("bob", &["billing"], json!({}));
    let cases: &[(&str, BadRequest)] = &[
        (
            "amount=1&amount=99999",
            BadRequest::RepeatedQuery("amount".into()),
        ),
        // The same name, spelled with an escape.
        (
            "am%6Funt=99999&amount=1",
            BadRequest::RepeatedQuery("amount".into()),
        ),
        (
            "amount=12abc",
            BadRequest::QueryType("amount".into(), "Long"),
        ),
        ("amount=%FF", BadRequest::QueryEncoding),
    ];
    for (query, want) in cases {
        let mut r = req(Action::Post, "/refunds");
        r.query = Some(query);
        assert_eq!(
            decide(&f, REFUNDS, &bob, &r),
            Err(DecideError::BadRequest(want.clone())),
            "{query}"
        );
    }
    let mut r = req(Action::Post, "/refunds");
    r.query = Some("amount=1");
    r.headers.append("x-region", "eu".parse().expect("value"));
    r.headers.append("x-region", "us".parse().expect("value"));
    assert_eq!(
        decide(&f, REFUNDS, &bob, &r),
        Err(DecideError::BadRequest(BadRequest::RepeatedHeader(
            "x-region".into()
        )))
    );
}

#[test]
fn services_talk_only_to_whom_they_may() {
    let f = shop();
    let billing = principal(
        PrincipalKind::Service,
        "workloads",
        "spiffe://prod/billing",
        &[],
        json!({}),
    );
    let other = principal(
        PrincipalKind::Service,
        "workloads",
        "spiffe://prod/web",
        &[],
        json!({}),
    );
    // A user whose id looks like the service's is not the service.
    let impostor = user("spiffe://prod/billing", &[], json!({}));
    let get = req(Action::Get, "/ledger/entries");
    assert_eq!(
        decide(&f, LEDGER, &billing, &get).expect("decide"),
        (true, vec!["billing-reads-ledger".to_string()])
    );
    assert!(
        !decide(&f, LEDGER, &billing, &req(Action::Post, "/ledger/entries"))
            .expect("decide")
            .0
    );
    assert!(!decide(&f, LEDGER, &other, &get).expect("decide").0);
    assert!(!decide(&f, LEDGER, &impostor, &get).expect("decide").0);
}

#[test]
fn forbid_overrides_permit() {
    let f = shop();
    let dave = user("dave", &["editors"], json!({}));
    let root = user("root", &["editors", "admins"], json!({}));
    let erin = user("erin", &[], json!({}));
    assert!(
        decide(&f, REPORTS, &dave, &req(Action::Post, "/reports"))
            .expect("decide")
            .0
    );
    assert_eq!(
        decide(&f, REPORTS, &dave, &req(Action::Delete, "/reports/1")).expect("decide"),
        (false, vec!["reports-no-delete".to_string()])
    );
    assert!(
        decide(&f, REPORTS, &root, &req(Action::Delete, "/reports/1"))
            .expect("decide")
            .0
    );
    assert!(
        decide(&f, REPORTS, &erin, &req(Action::Get, "/reports"))
            .expect("decide")
            .0
    );
    assert!(
        decide(&f, REPORTS, &erin, &req(Action::Head, "/reports"))
            .expect("decide")
            .0
    );
    assert!(
        !decide(&f, REPORTS, &erin, &req(Action::Put, "/reports"))
            .expect("decide")
            .0
    );
    assert!(
        !decide(&f, REPORTS, &erin, &req(Action::WebSocket, "/reports"))
            .expect("decide")
            .0
    );
}

/// Entities and decisions are remembered per caller, by everything the caller's credential
/// says: the same caller checked again reuses them, a caller of the same id whose groups
/// changed (a new token after a role was removed) never does.
#[test]
fn remembered_decisions_follow_what_the_credential_says() {
    let f = shop();
    let dave = user("dave", &["editors"], json!({}));
    for _ in 0..2 {
        assert!(
            decide(&f, REPORTS, &dave, &req(Action::Post, "/reports"))
                .expect("decide")
                .0
        );
    }
    // The same claims in a new principal (the credential verified again).
    let again = user("dave", &["editors"], json!({}));
    assert!(
        decide(&f, REPORTS, &again, &req(Action::Post, "/reports"))
            .expect("decide")
            .0
    );
    // The same id without the group: decided afresh, and refused.
    let demoted = user("dave", &[], json!({}));
    assert!(
        !decide(&f, REPORTS, &demoted, &req(Action::Post, "/reports"))
            .expect("decide")
            .0
    );
    // Nor does the demoted caller's decision leak back to the original one's spelling.
    assert!(
        decide(&f, REPORTS, &dave, &req(Action::Post, "/reports"))
            .expect("decide")
            .0
    );
    // Another authenticator's `dave` is someone else.
    let partner = principal(
        PrincipalKind::User,
        "partner",
        "dave",
        &["editors"],
        json!({}),
    );
    let (allowed, _) =
        decide(&f, REPORTS, &partner, &req(Action::Post, "/reports")).expect("decide");
    assert!(!allowed, "partner/dave is not corp/dave");
}

// === Slicing decides as the whole set does ===

const ROUTES: &[(&str, &str)] = &[
    ("tenant-orders", "shop"),
    ("refunds", "shop"),
    ("ledger", "ledger"),
    ("reports", "shop"),
];

/// The reference: the whole policy set, entities built the plain way.
fn reference(
    set: &cedar_policy::PolicySet,
    schema: &cedar_policy::Schema,
    route: usize,
    p: &Principal,
    action: Action,
    tenant: &str,
    amount: i64,
) -> bool {
    use cedar_policy::*;
    let ptype = match p.kind {
        PrincipalKind::User => "User",
        PrincipalKind::Service => "Service",
        PrincipalKind::ApiKey => "ApiKey",
        PrincipalKind::Anonymous => "Anonymous",
    };
    let uid = |t: &str, id: &str| {
        EntityUid::from_type_name_and_id(
            EntityTypeName::from_str(t).expect("type"),
            EntityId::new(id),
        )
    };
    // Named as the config says: corp's plainly, every other authenticator's qualified.
    let name = |n: &str| {
        if &*p.authenticator == "corp" {
            n.to_string()
        } else {
            format!("{}/{n}", p.authenticator)
        }
    };
    let puid = uid(ptype, &name(&p.id));
    let groups: HashSet<EntityUid> = p.groups.iter().map(|g| uid("Group", &name(g))).collect();
    let mut attrs = HashMap::new();
    attrs.insert(
        "id".to_string(),
        RestrictedExpression::new_string(p.id.clone()),
    );
    attrs.insert(
        "authenticator".to_string(),
        RestrictedExpression::new_string(p.authenticator.to_string()),
    );
    if let Some(Value::String(t)) = p.attributes.get("tenant") {
        attrs.insert(
            "tenant".to_string(),
            RestrictedExpression::new_string(t.clone()),
        );
    }
    let (rname, uname) = ROUTES[route];
    let entities = Entities::from_entities(
        [
            Entity::new(puid.clone(), attrs, groups).expect("principal"),
            Entity::new_no_attrs(uid("Route", rname), [uid("Upstream", uname)].into()),
        ],
        Some(schema),
    )
    .expect("entities");
    let ctx = Context::from_json_value(
        json!({
            "path": "/", "host": "api.test", "method": action.id(),
            "params": if route == TENANT_ORDERS { json!({"tenant": tenant}) } else { json!({}) },
            "query": if route == REFUNDS { json!({"amount": amount}) } else { json!({}) },
            "headers": {},
            "ip": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}},
            "time": {"__extn": {"fn": "datetime", "arg": "2026-01-01T00:00:00Z"}},
            "authn": {"methods": ["jwt"]},
        }),
        None,
    )
    .expect("context");
    let request = Request::new(
        puid,
        uid("Action", action.id()),
        uid("Route", rname),
        ctx,
        None,
    )
    .expect("request");
    let r = Authorizer::new().is_authorized(&request, set, &entities);
    r.decision() == Decision::Allow && r.diagnostics().errors().next().is_none()
}

/// Built once: the proptest cases share it.
fn whole_set() -> &'static (cedar_policy::PolicySet, cedar_policy::Schema, Fixture) {
    static SET: std::sync::OnceLock<(cedar_policy::PolicySet, cedar_policy::Schema, Fixture)> =
        std::sync::OnceLock::new();
    SET.get_or_init(build_whole_set)
}

fn build_whole_set() -> (cedar_policy::PolicySet, cedar_policy::Schema, Fixture) {
    let f = shop();
    let schema = cedar_policy::Schema::from_cedarschema_str(&f.policies.schema_text)
        .expect("schema")
        .0;
    let mut set = cedar_policy::PolicySet::new();
    for (i, text) in [shop_policies().as_str(), SERVICES].iter().enumerate() {
        let parsed = cedar_policy::PolicySet::from_str(text).expect("parse");
        for p in parsed.policies() {
            set.add(p.new_id(cedar_policy::PolicyId::new(format!("{i}-{}", p.id()))))
                .expect("add");
        }
    }
    (set, schema, f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn sliced_sets_decide_as_the_whole_set(
        route in 0..ROUTES.len(),
        kind in prop::sample::select(vec![PrincipalKind::User, PrincipalKind::Service, PrincipalKind::ApiKey]),
        id in prop::sample::select(vec!["alice", "spiffe://prod/billing", "x"]),
        groups in prop::collection::vec(prop::sample::select(vec!["billing", "editors", "admins", "other"]), 0..4),
        tenant in prop::sample::select(vec!["acme", "globex"]),
        own in prop::sample::select(vec!["acme", "globex"]),
        amount in prop::sample::select(vec![0i64, 999, 1000, 5000]),
        action in prop::sample::select(Action::ALL.to_vec()),
    ) {
        let (set, schema, f) = whole_set();
        let p = principal(kind, "corp", id, &groups, json!({"tenant": own}));
        let want = reference(set, schema, route, &p, action, tenant, amount);
        let query = format!("amount={amount}");
        let mut r = req(action, "/");
        if route == TENANT_ORDERS {
            r.params = vec![tenant];
        }
        if route == REFUNDS {
            r.query = Some(&query);
        }
        let got = decide(f, route, &p, &r).expect("decide").0;
        prop_assert_eq!(got, want);
    }
}

// === Diagnostics ===

fn error_of(policy: &str) -> String {
    match fixture(&config(), &[("policies/shop.cedar", policy)]) {
        Ok(_) => panic!("accepted:\n{policy}"),
        Err(e) => e,
    }
}

#[test]
fn type_errors_name_the_file_line_and_policy() {
    let e = error_of(
        "// comment\n\n@id(\"typo\")\npermit (principal, action, resource == Route::\"reports\")\nwhen { principal.tenat == \"acme\" };\n",
    );
    assert!(e.contains("policies/shop.cedar:5:"), "{e}");
    assert!(e.contains("policy `typo`"), "{e}");
    assert!(e.contains("tenat"), "{e}");
}

#[test]
fn policies_are_named_by_file_and_line_without_an_id() {
    let e = error_of(
        "permit (principal, action, resource == Route::\"reports\");\n\npermit (principal, action, resource == Route::\"reports\")\nwhen { context.nope };\n",
    );
    assert!(e.contains("policy `shop.cedar:3`"), "{e}");
    assert!(e.contains("shop.cedar:4:"), "{e}");
}

#[test]
fn parse_errors_point_at_the_line() {
    let e = error_of(
        "permit (principal, action, resource == Route::\"reports\");\npermit (principal action);\n",
    );
    assert!(e.contains("policies/shop.cedar:2:"), "{e}");
}

#[test]
fn unknown_routes_and_upstreams_are_errors() {
    let e = error_of("permit (principal, action, resource == Route::\"reprots\");\n");
    assert!(e.contains("no route is named `reprots`"), "{e}");
    let e = error_of("permit (principal, action, resource in Upstream::\"legder\");\n");
    assert!(e.contains("no upstream is named `legder`"), "{e}");
    let e =
        error_of("permit (principal, action, resource) when { resource == Route::\"nope\" };\n");
    assert!(e.contains("no route is named `nope`"), "{e}");
}

#[test]
fn policies_that_can_never_apply_are_errors() {
    // `tenant` is not a declared context attribute of the route: always false.
    let e = error_of(
        "forbid (principal, action, resource == Route::\"reports\") when { context has tenant };\n",
    );
    assert!(e.contains("impossible"), "{e}");
    assert!(e.contains("[policy] attributes"), "help is given: {e}");
}

#[test]
fn templates_and_duplicate_ids_are_errors() {
    let e = error_of("permit (principal == ?principal, action, resource);\n");
    assert!(e.contains("templates are not supported"), "{e}");
    let e = error_of(
        "@id(\"a\")\npermit (principal, action, resource == Route::\"reports\");\n@id(\"a\")\npermit (principal, action, resource == Route::\"refunds\");\n",
    );
    assert!(e.contains("policy id `a` is already used"), "{e}");
}

#[test]
fn a_policy_for_no_authorized_route_is_a_warning() {
    let config = Config::parse(&config())
        .set(&format!("routes.{REPORTS}.authorize"), false)
        .text();
    let f = fixture(
        &config,
        &[(
            "policies/shop.cedar",
            "@id(\"r\")\npermit (principal, action, resource == Route::\"reports\");\n",
        )],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.policies.warnings.len(), 1, "{:?}", f.policies.warnings);
    assert!(f.policies.warnings[0].message.contains("no route"));
}

#[test]
fn unknown_entity_types_and_actions_are_errors() {
    let e = error_of("permit (principal is Admin, action, resource == Route::\"reports\");\n");
    assert!(e.contains("Admin"), "{e}");
    let e = error_of(
        "permit (principal, action == Action::\"PURGE\", resource == Route::\"reports\");\n",
    );
    assert!(e.contains("PURGE"), "{e}");
    let e = error_of(
        "permit (principal, action, resource == Route::\"reports\") when { context.query.amount > 1 };\n",
    );
    // `amount` is a query parameter of another route only, and optional: read without `has`.
    assert!(e.contains("amount"), "{e}");
}

#[test]
fn typed_attributes_come_from_the_credential_or_not_at_all() {
    let f = fixture(
        &config(),
        &[(
            "policies/p.cedar",
            "@id(\"admins\")\npermit (principal, action, resource == Route::\"reports\")\n\
             when { principal has scope && principal.scope.contains(\"admin\") && principal has level && principal.level >= 3 };\n",
        )],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let get = req(Action::Get, "/reports");
    let cases = [
        (json!({"scope": ["read", "admin"], "level": 3}), true),
        // An OAuth scope string is a set of its words; a number in a string is a Long.
        (json!({"scope": "read admin", "level": "5"}), true),
        (json!({"scope": "read administrator", "level": 5}), false),
        (json!({"scope": ["admin"], "level": 2}), false),
        // Values of other types are left out, so `has` is false.
        (json!({"scope": ["admin", 7], "level": 5}), false),
        (json!({"scope": ["admin"], "level": true}), false),
        (json!({"scope": ["admin"]}), false),
    ];
    for (attrs, want) in cases {
        let p = user("u", &[], attrs.clone());
        assert_eq!(
            decide(&f, REPORTS, &p, &get).expect("decide").0,
            want,
            "{attrs}"
        );
    }
}

#[test]
fn a_grpc_call_is_a_write_so_write_forbids_cover_it() {
    // gRPC is a POST whose content type the client picks: a client must not escape a
    // `forbid` on writes by calling itself gRPC.
    let f = fixture(
        &config(),
        &[(
            "policies/p.cedar",
            "@id(\"all\")\npermit (principal, action, resource == Route::\"reports\");\n\
             @id(\"no-writes\")\nforbid (principal, action in Action::\"write\", resource == Route::\"reports\");\n",
        )],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let erin = user("erin", &[], json!({}));
    assert!(
        decide(&f, REPORTS, &erin, &req(Action::Get, "/reports"))
            .expect("decide")
            .0
    );
    assert_eq!(
        decide(
            &f,
            REPORTS,
            &erin,
            &req(Action::Grpc, "/shop.Reports/Delete")
        )
        .expect("decide"),
        (false, vec!["no-writes".to_string()])
    );
    assert!(
        !decide(&f, REPORTS, &erin, &req(Action::Post, "/reports"))
            .expect("decide")
            .0
    );
}

#[test]
fn a_remembered_decision_is_never_taken_for_another_route() {
    // Two routes whose policies read nothing of the request: one caller, one action, one
    // (empty) context; only the route differs.
    let cfg = format!(
        "{HEAD}\n[[upstreams]]\nname = \"app\"\nendpoints = [\"http://127.0.0.1:9\"]\n\n\
         [[routes]]\nname = \"open\"\nprefix = \"/open\"\nupstream = \"app\"\nauthenticate = [\"corp\"]\n\n\
         [[routes]]\nname = \"closed\"\nprefix = \"/closed\"\nupstream = \"app\"\nauthenticate = [\"corp\"]\n"
    );
    let f = fixture(
        &cfg,
        &[(
            "policies/p.cedar",
            "permit (principal in Group::\"editors\", action, resource == Route::\"open\");\n\
             permit (principal in Group::\"admins\", action, resource == Route::\"closed\");\n",
        )],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dave = user("dave", &["editors"], json!({}));
    for _ in 0..2 {
        assert!(
            decide(&f, 0, &dave, &req(Action::Get, "/open"))
                .expect("decide")
                .0
        );
        assert!(
            !decide(&f, 1, &dave, &req(Action::Get, "/closed"))
                .expect("decide")
                .0
        );
    }
    // The other order: the denial remembered first.
    let erin = user("erin", &["editors"], json!({}));
    assert!(
        !decide(&f, 1, &erin, &req(Action::Get, "/closed"))
            .expect("decide")
            .0
    );
    assert!(
        decide(&f, 0, &erin, &req(Action::Get, "/open"))
            .expect("decide")
            .0
    );
}

// === Callers of different authenticators never share a name ===

/// The shop config with a partner issuer admitted beside corp on every route that
/// authenticates, and `plain` as the authenticators policies name plainly.
fn two_issuers(plain: &[&str]) -> String {
    let mut c = Config::parse(&config())
        .set("policy.plain_names", strings(plain))
        .with(
            "[[authenticators]]\nname = \"partner\"\ntype = \"jwt\"\nissuer = \"https://partner.test/\"\n\
             audiences = [\"drawbridge\"]\njwks_file = \"jwks.json\"\nclaims = { groups = \"groups\" }\n",
        );
    let routes = c
        .get("routes")
        .and_then(|r| r.as_array())
        .map_or(0, Vec::len);
    for i in 0..routes {
        let at = format!("routes.{i}.authenticate");
        if c.get(&at).is_some() {
            c = c.set(&at, strings(&["corp", "partner"]));
        }
    }
    c.text()
}

#[test]
fn a_partners_alice_or_admins_is_not_corps() {
    let f = fixture(
        &two_issuers(&["corp"]),
        &[(
            "policies/p.cedar",
            "@id(\"corp-alice\")\npermit (principal == User::\"alice\", action, resource == Route::\"reports\");\n\
             @id(\"corp-admins\")\npermit (principal in Group::\"admins\", action, resource == Route::\"tenant-orders\");\n\
             @id(\"partner-editors\")\npermit (principal in Group::\"partner/editors\", action, resource == Route::\"reports\");\n",
        )],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let corp_alice = user("alice", &["admins"], json!({}));
    let partner_alice = principal(
        PrincipalKind::User,
        "partner",
        "alice",
        &["admins"],
        json!({}),
    );
    let get = |path| req(Action::Get, path);
    assert!(
        decide(&f, REPORTS, &corp_alice, &get("/reports"))
            .expect("decide")
            .0
    );
    assert!(
        !decide(&f, REPORTS, &partner_alice, &get("/reports"))
            .expect("decide")
            .0
    );
    assert!(
        !decide(&f, TENANT_ORDERS, &partner_alice, &get("/tenants/a/orders"))
            .expect("decide")
            .0
    );
    assert!(
        decide(&f, TENANT_ORDERS, &corp_alice, &get("/tenants/a/orders"))
            .expect("decide")
            .0
    );
    // The partner's own group, named with its authenticator.
    let partner_editor = principal(
        PrincipalKind::User,
        "partner",
        "bob",
        &["editors"],
        json!({}),
    );
    assert!(
        decide(&f, REPORTS, &partner_editor, &get("/reports"))
            .expect("decide")
            .0
    );
    let corp_editor = user("bob", &["editors"], json!({}));
    assert!(
        !decide(&f, REPORTS, &corp_editor, &get("/reports"))
            .expect("decide")
            .0
    );
}

#[test]
fn check_flags_names_that_no_or_several_authenticators_produce() {
    let policy = "@id(\"x\")\npermit (principal in Group::\"admins\", action, resource == Route::\"tenant-orders\");\n";
    // No plain authenticator: the plain name belongs to nobody.
    let e = fixture(&two_issuers(&[]), &[("policies/p.cedar", policy)])
        .err()
        .expect("refused");
    assert!(e.contains("names no authenticator's caller"), "{e}");
    // Two declared equivalent: a warning names them.
    let f = fixture(
        &two_issuers(&["corp", "partner"]),
        &[("policies/p.cedar", policy)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        f.policies.warnings.iter().any(|w| w
            .message
            .contains("more than one authenticator: corp, partner")),
        "{:?}",
        f.policies.warnings
    );
    for (bad, says) in [
        (
            "Group::\"nobody/admins\"",
            "no authenticator is named `nobody`",
        ),
        ("Group::\"corp/admins\"", "names its callers plainly"),
        ("User::\"workloads/x\"", "never produces a `User`"),
    ] {
        let text = format!(
            "@id(\"x\")\npermit (principal in {bad}, action, resource == Route::\"tenant-orders\");\n"
        );
        let e = fixture(&two_issuers(&["corp"]), &[("policies/p.cedar", &text)])
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(e.contains(says), "{bad}: {e}");
    }
}

/// Policies that ask for a second factor: "DELETE needs WebAuthn within 5 minutes" and
/// "a refund above 500 needs any factor within 10 minutes", each one policy.
const STEP_UP: &str = r#"
@id("editors-write-reports")
permit (principal, action, resource == Route::"reports");

@id("deletes-need-webauthn")
@mfa_max_age("5m")
forbid (principal, action == Action::"DELETE", resource == Route::"reports")
unless { context.authn.factors has webauthn && context.authn.factors.webauthn <= 300 };

@id("refunds")
permit (principal, action == Action::"POST", resource == Route::"refunds");

@id("big-refunds-need-a-factor")
@mfa_max_age("10m")
forbid (principal, action == Action::"POST", resource == Route::"refunds")
when { context.query has amount && context.query.amount > 500 }
unless { context.authn has mfa_age && context.authn.mfa_age <= 600 };

@id("nobody-deletes-archives")
forbid (principal, action == Action::"DELETE", resource == Route::"reports")
when { context.path like "/reports/archive/*" };
"#;

#[test]
fn a_refusal_a_second_factor_would_lift_is_a_step_up_and_says_which() {
    use drawbridge_config::MfaMethod;
    use drawbridge_identity::Factor;
    let f = fixture(&config(), &[("policies/step-up.cedar", STEP_UP)])
        .unwrap_or_else(|e| panic!("{e}"));
    let now = SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let all = [MfaMethod::Totp, MfaMethod::Webauthn, MfaMethod::Idp];
    let ask = |p: &Arc<Principal>, action: Action, path: &str, query: Option<&str>| {
        let params: Vec<&str> = Vec::new();
        let headers = http::HeaderMap::new();
        let view = RequestView {
            action,
            method: action.id(),
            host: "api.test",
            path,
            params: &params,
            query,
            headers: &headers,
            ip: IpAddr::from([10, 0, 0, 1]),
            now,
            grpc: None,
        };
        let route = if path.starts_with("/refunds") {
            REFUNDS
        } else {
            REPORTS
        };
        let d = f.policies.decide(route, p, &view).expect("decide");
        let step = f.policies.step_up(route, p, &view, &d.enforced, &all);
        (d.allowed(), step)
    };
    let with = |factors: Vec<Factor>| {
        let mut p = (*user("alice", &[], json!({}))).clone();
        p.factors = factors;
        Arc::new(p)
    };
    let plain = with(Vec::new());
    // DELETE without WebAuthn: a step-up asking for WebAuthn only, within five minutes.
    let (allowed, step) = ask(&plain, Action::Delete, "/reports/1", None);
    assert!(!allowed);
    let step = step.expect("a step-up");
    assert_eq!(step.methods, [MfaMethod::Webauthn]);
    assert_eq!(step.max_age, Some(std::time::Duration::from_secs(300)));
    // A TOTP does not do; a WebAuthn 10 minutes old does not either; a fresh one does.
    let totp = with(vec![Factor {
        method: MfaMethod::Totp,
        at: secs,
    }]);
    assert_eq!(
        ask(&totp, Action::Delete, "/reports/1", None)
            .1
            .expect("step")
            .methods,
        [MfaMethod::Webauthn]
    );
    let old = with(vec![Factor {
        method: MfaMethod::Webauthn,
        at: secs - 600,
    }]);
    assert!(ask(&old, Action::Delete, "/reports/1", None).1.is_some());
    let fresh = with(vec![Factor {
        method: MfaMethod::Webauthn,
        at: secs - 10,
    }]);
    assert_eq!(
        ask(&fresh, Action::Delete, "/reports/1", None),
        (true, None)
    );
    // A plain forbid stays a plain refusal: no factor lifts it.
    assert_eq!(
        ask(&fresh, Action::Delete, "/reports/archive/1", None),
        (false, None)
    );
    assert_eq!(
        ask(&plain, Action::Delete, "/reports/archive/1", None),
        (false, None)
    );
    // By parameter: a small refund needs nothing; a big one any factor within ten minutes.
    assert_eq!(
        ask(&plain, Action::Post, "/refunds", Some("amount=100")),
        (true, None)
    );
    let (allowed, step) = ask(&plain, Action::Post, "/refunds", Some("amount=900"));
    assert!(!allowed);
    let step = step.expect("a step-up");
    assert_eq!(step.methods, all);
    assert_eq!(step.max_age, Some(std::time::Duration::from_secs(600)));
    assert_eq!(
        ask(&totp, Action::Post, "/refunds", Some("amount=900")),
        (true, None)
    );
    // A refusal by no permit at all (a GET on refunds) is plain.
    assert_eq!(ask(&plain, Action::Get, "/refunds", None), (false, None));
}

#[test]
fn a_malformed_mfa_max_age_is_refused_with_its_place() {
    let e = match fixture(
        &config(),
        &[(
            "policies/bad.cedar",
            "@id(\"p\")\n@mfa_max_age(\"soon\")\npermit (principal, action, resource);\n",
        )],
    ) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    assert!(
        e.contains("bad.cedar:1") || e.contains("bad.cedar:2"),
        "{e}"
    );
    assert!(
        e.contains("`@mfa_max_age(\"soon\")` is not a duration"),
        "{e}"
    );
}
