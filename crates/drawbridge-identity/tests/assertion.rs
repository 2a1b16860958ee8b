//! Identity assertions: reused for the same caller and upstream, never across differences.

use std::sync::Arc;
use std::time::Duration;

use drawbridge_config::{AssertionAlgorithm, IdentityAssertion, Location, PrincipalKind};
use drawbridge_identity::{AuthMethod, Minter, Principal};

fn minter(per_request: bool) -> Minter {
    Minter::new(&IdentityAssertion {
        issuer: "drawbridge".into(),
        algorithm: AssertionAlgorithm::EdDsa,
        key: None,
        lifetime: Duration::from_secs(60),
        header: "x-drawbridge-identity".into(),
        per_request,
        location: Location {
            file: "test.toml".into(),
            line: 1,
            column: 1,
        },
    })
    .expect("minter")
}

fn principal(groups: &[&str]) -> Arc<Principal> {
    Arc::new(Principal {
        id: "alice".into(),
        kind: PrincipalKind::User,
        authenticator: "corp".into(),
        issuer: Some("https://idp.test/".into()),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        attributes: Default::default(),
        methods: vec![AuthMethod::Jwt],
        authenticated_at: Some(1),
        expires_at: None,
        factors: Vec::new(),
    })
}

#[test]
fn the_same_caller_gets_the_same_assertion_even_as_a_new_principal() {
    let m = minter(false);
    let a = m.assertion(&principal(&["eng"]), "orders", "r1").unwrap();
    // Another principal value saying the same (a credential verified again).
    let b = m.assertion(&principal(&["eng"]), "orders", "r2").unwrap();
    assert_eq!(a, b);
    // Anything different is another assertion: upstream, groups.
    assert_ne!(
        a,
        m.assertion(&principal(&["eng"]), "billing", "r3").unwrap()
    );
    assert_ne!(
        a,
        m.assertion(&principal(&["eng", "admin"]), "orders", "r4")
            .unwrap()
    );
}

#[test]
fn per_request_assertions_are_never_reused() {
    let m = minter(true);
    let p = principal(&["eng"]);
    let a = m.assertion(&p, "orders", "r1").unwrap();
    let b = m.assertion(&p, "orders", "r2").unwrap();
    assert_ne!(a, b);
}

/// The `exp` claim of an assertion (its payload read without verification: the tests of
/// the signature are elsewhere).
fn exp_of(v: &http::HeaderValue) -> u64 {
    use base64::Engine;
    let token = v.to_str().expect("ascii");
    let payload = token.split('.').nth(1).expect("three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    claims["exp"].as_u64().expect("exp")
}

#[test]
fn an_assertion_never_outlives_the_credential() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for per_request in [false, true] {
        let m = minter(per_request);
        // The credential expires in 10 s; the assertion's lifetime is 60 s.
        let mut p = Arc::unwrap_or_clone(principal(&["eng"]));
        p.expires_at = Some(now + 10);
        let p = Arc::new(p);
        let short = m.assertion(&p, "orders", "r1").unwrap();
        assert_eq!(exp_of(&short), now + 10, "per_request {per_request}");
        // Without an expiry, the configured lifetime.
        let open = m.assertion(&principal(&["eng"]), "orders", "r2").unwrap();
        assert!(exp_of(&open) >= now + 60, "per_request {per_request}");
        // A caller whose credential expires sooner never reuses a longer-lived assertion.
        let mut sooner = Arc::unwrap_or_clone(principal(&["eng"]));
        sooner.expires_at = Some(now + 5);
        let sooner = Arc::new(sooner);
        let a = m.assertion(&sooner, "orders", "r3").unwrap();
        assert_eq!(exp_of(&a), now + 5, "per_request {per_request}");
    }
}

/// A caller admitted within its authenticator's leeway, its credential's `exp` already
/// past: its assertion expires with the credential (never later), and is reused within the
/// second, not signed again for every request.
#[test]
fn a_credential_past_its_end_is_not_signed_for_on_every_request() {
    let m = minter(false);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    };
    let started = now();
    let mut p = Arc::unwrap_or_clone(principal(&["eng"]));
    p.expires_at = Some(started - 5);
    let p = Arc::new(p);
    // Two in the same second (a second that turns between them is tried again).
    for _ in 0..5 {
        let before = now();
        let a = m.assertion(&p, "orders", "r1").unwrap();
        let b = m.assertion(&p, "orders", "r2").unwrap();
        if now() != before {
            continue;
        }
        assert_eq!(exp_of(&a), started - 5);
        assert_eq!(a, b, "signed again within the second");
        return;
    }
    panic!("no two assertions made within one second in five tries");
}
