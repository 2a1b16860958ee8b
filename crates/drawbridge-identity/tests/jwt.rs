//! Every check of a bearer JWT, each shown refusing the token it exists for, with real keys.

use std::time::Duration;

use drawbridge_config::{ClaimMapping, GroupsFormat, JwksSource, JwtIssuer, PrincipalKind};
use drawbridge_identity::{BuildError, JwksError, JwtAuthenticator, Refusal, peek_issuer};
use drawbridge_testkit::jwt::{KeyType, SigningKey, encode_part, jwks, now, sign_hs256};
use serde_json::{Value, json};

const ISS: &str = "https://idp.test/";

struct Keys {
    rsa: SigningKey,
    ec: SigningKey,
    ed: SigningKey,
}

fn keys() -> Keys {
    Keys {
        rsa: SigningKey::generate(KeyType::Rsa, "rsa-1"),
        ec: SigningKey::generate(KeyType::P256, "ec-1"),
        ed: SigningKey::generate(KeyType::Ed25519, "ed-1"),
    }
}

fn config(jwks_doc: &str) -> JwtIssuer {
    JwtIssuer {
        issuer: ISS.into(),
        audiences: vec!["drawbridge".into()],
        algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        jwks: JwksSource::File {
            path: "jwks.json".into(),
            bytes: jwks_doc.as_bytes().to_vec(),
        },
        jwks_refresh: Duration::from_secs(300),
        jwks_cooldown: Duration::from_secs(30),
        jwks_grace: Duration::from_secs(3600),
        jwks_timeout: Duration::from_secs(5),
        leeway: Duration::from_secs(30),
        max_lifetime: Duration::from_secs(3600),
        token_type: None,
        principal: PrincipalKind::User,
        claims: ClaimMapping {
            id: "sub".into(),
            groups: Some("groups".into()),
            groups_format: GroupsFormat::Array,
            attributes: vec!["tenant".into()],
            trusted_mfa: Default::default(),
        },
        cache: true,
        cache_size: 1000,
    }
}

fn authenticator(k: &Keys) -> JwtAuthenticator {
    JwtAuthenticator::new("corp", &config(&jwks(&[&k.rsa, &k.ec, &k.ed]))).unwrap()
}

fn claims() -> Value {
    let n = now();
    json!({
        "iss": ISS, "aud": "drawbridge", "sub": "alice",
        "iat": n, "exp": n + 300,
        "groups": ["eng", "oncall"], "tenant": "acme", "email": "alice@example.com",
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

async fn refused(a: &JwtAuthenticator, token: &str) -> Refusal {
    match a.verify(token).await {
        Ok(p) => panic!("token admitted as {p:?}"),
        Err(r) => r,
    }
}

#[tokio::test]
async fn tokens_of_every_key_type_are_admitted_with_their_claims() {
    let k = keys();
    let a = authenticator(&k);
    for key in [&k.rsa, &k.ec, &k.ed] {
        let p = a.verify(&key.sign(&claims())).await.unwrap();
        assert_eq!(p.id, "alice");
        assert_eq!(p.kind, PrincipalKind::User);
        assert_eq!(&*p.authenticator, "corp");
        assert_eq!(p.issuer.as_deref(), Some(ISS));
        assert_eq!(p.groups, ["eng", "oncall"]);
        assert_eq!(p.attributes.get("tenant"), Some(&json!("acme")));
        assert!(!p.attributes.contains_key("email"), "only mapped claims");
    }
}

#[tokio::test]
async fn groups_have_the_shape_the_mapping_declares() {
    let k = keys();
    // An array claim: a string of roles is never split into groups.
    let a = authenticator(&k);
    for bad in [
        json!("admin user"),
        json!("admin"),
        json!([1]),
        json!([""]),
        json!({"a": 1}),
    ] {
        assert_eq!(
            refused(&a, &k.ec.sign(&with(claims(), "groups", bad.clone()))).await,
            Refusal::Claim("groups".into()),
            "{bad}"
        );
    }
    // A space-separated claim (OAuth `scope`), when the mapping says so.
    let mut cfg = config(&jwks(&[&k.ec]));
    cfg.claims.groups = Some("scope".into());
    cfg.claims.groups_format = GroupsFormat::SpaceSeparated;
    let a = JwtAuthenticator::new("corp", &cfg).unwrap();
    let p = a
        .verify(&k.ec.sign(&with(claims(), "scope", json!("read write"))))
        .await
        .unwrap();
    assert_eq!(p.groups, ["read", "write"]);
    assert_eq!(
        refused(&a, &k.ec.sign(&with(claims(), "scope", json!(["read"])))).await,
        Refusal::Claim("scope".into())
    );
}

#[tokio::test]
async fn a_member_named_twice_anywhere_is_refused() {
    let k = keys();
    let a = authenticator(&k);
    let n = now();
    let base = format!(
        r#""iss":"{ISS}","aud":"drawbridge","sub":"alice","iat":{n},"exp":{}"#,
        n + 300
    );
    let header = k.ec.header_text();
    // Sanity: the same text without a duplicate is admitted.
    let fine =
        k.ec.sign_text(&header, &format!(r#"{{{base},"groups":["eng"]}}"#));
    assert_eq!(a.verify(&fine).await.unwrap().groups, ["eng"]);
    for claims in [
        format!(r#"{{{base},"groups":["eng"],"groups":["admin"]}}"#),
        format!(r#"{{{base},"sub":"root"}}"#),
        format!(r#"{{{base},"groups":["eng"],"tenant":{{"id":"a","id":"b"}}}}"#),
        format!(r#"{{{base},"groups":["eng"],"x":[{{"k":1,"k":2}}]}}"#),
        format!(r#"{{{base},"groups":["eng"],"groups":["admin"]}}"#),
    ] {
        let t = k.ec.sign_text(&header, &claims);
        assert!(
            matches!(refused(&a, &t).await, Refusal::Malformed(_)),
            "{claims}"
        );
    }
    let dup_header = header.replacen('{', r#"{"typ":"at+jwt","#, 1);
    let t =
        k.ec.sign_text(&dup_header, &format!(r#"{{{base},"groups":["eng"]}}"#));
    assert!(matches!(refused(&a, &t).await, Refusal::Malformed(_)));
}

#[tokio::test]
async fn id_refresh_and_other_non_access_tokens_are_refused() {
    let k = keys();
    let a = authenticator(&k);
    for (name, value) in [
        ("token_use", json!("refresh")),
        ("token_use", json!("id")),
        ("typ", json!("Refresh")),
        ("typ", json!("ID")),
        ("typ", json!("Offline")),
        ("at_hash", json!("abc")),
        ("c_hash", json!("abc")),
    ] {
        let t = k.ec.sign(&with(claims(), name, value.clone()));
        assert!(
            matches!(refused(&a, &t).await, Refusal::Claim(_)),
            "{name}: {value}"
        );
    }
    for typ in [
        "id_token",
        "application/id+jwt",
        "refresh+jwt",
        "logout+jwt",
        "secevent+jwt",
        "dpop+jwt",
    ] {
        let t = k.ec.sign_with_header(
            &json!({"alg": "ES256", "kid": "ec-1", "typ": typ}),
            &claims(),
        );
        assert!(matches!(refused(&a, &t).await, Refusal::Type(_)), "{typ}");
    }
    // Access tokens say so, or say nothing.
    for (name, value) in [("token_use", json!("access")), ("typ", json!("Bearer"))] {
        a.verify(&k.ec.sign(&with(claims(), name, value)))
            .await
            .unwrap();
    }
    let t = k.ec.sign_with_header(
        &json!({"alg": "ES256", "kid": "ec-1", "typ": "at+jwt"}),
        &claims(),
    );
    a.verify(&t).await.unwrap();
}

#[tokio::test]
async fn time_claims_are_enforced_with_the_leeway() {
    let k = keys();
    let a = authenticator(&k);
    let n = now();
    let expired = with(claims(), "exp", json!(n - 120));
    assert_eq!(refused(&a, &k.rsa.sign(&expired)).await, Refusal::Expired);
    // Within the 30 s leeway: still valid.
    let just = with(claims(), "exp", json!(n - 10));
    a.verify(&k.rsa.sign(&just)).await.unwrap();
    let early = with(claims(), "nbf", json!(n + 600));
    assert_eq!(refused(&a, &k.rsa.sign(&early)).await, Refusal::NotYetValid);
    let future_iat = with(claims(), "iat", json!(n + 600));
    assert_eq!(
        refused(&a, &k.rsa.sign(&future_iat)).await,
        Refusal::NotYetValid
    );
    let no_exp = {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        c
    };
    assert_eq!(
        refused(&a, &k.rsa.sign(&no_exp)).await,
        Refusal::Claim("exp".into())
    );
}

#[tokio::test]
async fn lifetime_beyond_the_maximum_is_refused() {
    let k = keys();
    let a = authenticator(&k);
    let n = now();
    let long = with(claims(), "exp", json!(n + 7200));
    assert_eq!(
        refused(&a, &k.rsa.sign(&long)).await,
        Refusal::Lifetime(3600)
    );
    // Without `iat`, the lifetime is counted from now.
    let mut no_iat = long.clone();
    no_iat.as_object_mut().unwrap().remove("iat");
    assert_eq!(
        refused(&a, &k.rsa.sign(&no_iat)).await,
        Refusal::Lifetime(3600)
    );
    // An old `iat` with a near `exp` is still a long-lived token.
    let old = with(
        with(claims(), "iat", json!(n - 86_400)),
        "exp",
        json!(n + 60),
    );
    assert_eq!(
        refused(&a, &k.rsa.sign(&old)).await,
        Refusal::Lifetime(3600)
    );
}

#[tokio::test]
async fn wrong_issuer_and_audience_are_refused() {
    let k = keys();
    let a = authenticator(&k);
    let iss = with(claims(), "iss", json!("https://evil.test/"));
    assert!(matches!(
        refused(&a, &k.rsa.sign(&iss)).await,
        Refusal::Issuer(_)
    ));
    let aud = with(claims(), "aud", json!("another-service"));
    assert_eq!(refused(&a, &k.rsa.sign(&aud)).await, Refusal::Audience);
    let auds = with(claims(), "aud", json!(["x", "drawbridge"]));
    a.verify(&k.rsa.sign(&auds)).await.unwrap();
    let mut no_aud = claims();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        refused(&a, &k.rsa.sign(&no_aud)).await,
        Refusal::Claim("aud".into())
    );
}

#[tokio::test]
async fn alg_none_and_stripped_signatures_are_refused() {
    let k = keys();
    let a = authenticator(&k);
    let none = format!(
        "{}.{}.",
        encode_part(&json!({"alg": "none", "typ": "JWT"})),
        encode_part(&claims())
    );
    assert!(matches!(refused(&a, &none).await, Refusal::Malformed(_)));
    let good = k.rsa.sign(&claims());
    let stripped = format!("{}.", good.rsplit_once('.').unwrap().0);
    assert!(matches!(
        refused(&a, &stripped).await,
        Refusal::Signature | Refusal::Malformed(_)
    ));
    let two_parts = good.rsplit_once('.').unwrap().0.to_string();
    assert!(matches!(
        refused(&a, &two_parts).await,
        Refusal::Malformed(_)
    ));
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let k = keys();
    let a = authenticator(&k);
    for secret in [k.rsa.public_raw.clone(), k.rsa.jwk.to_string().into_bytes()] {
        let t = sign_hs256(
            &secret,
            &json!({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}),
            &claims(),
        );
        assert_eq!(refused(&a, &t).await, Refusal::Algorithm("HS256".into()));
    }
}

#[tokio::test]
async fn a_key_is_used_only_for_its_own_algorithm() {
    let k = keys();
    let a = authenticator(&k);
    // RS256 naming the EC key: the RSA signature is checked against nothing.
    let t = k
        .rsa
        .sign_with_header(&json!({"alg": "RS256", "kid": "ec-1"}), &claims());
    assert!(matches!(refused(&a, &t).await, Refusal::KeyMismatch(..)));
    // ES256 naming the Ed25519 key.
    let t =
        k.ec.sign_with_header(&json!({"alg": "ES256", "kid": "ed-1"}), &claims());
    assert!(matches!(refused(&a, &t).await, Refusal::KeyMismatch(..)));
}

#[tokio::test]
async fn tampered_payloads_do_not_verify() {
    let k = keys();
    let a = authenticator(&k);
    for key in [&k.rsa, &k.ec, &k.ed] {
        let good = key.sign(&claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = encode_part(&with(claims(), "sub", json!("admin")));
        parts[1] = &forged;
        assert_eq!(refused(&a, &parts.join(".")).await, Refusal::Signature);
    }
}

#[tokio::test]
async fn unknown_and_hostile_kids_find_no_key() {
    let k = keys();
    let a = authenticator(&k);
    for kid in [
        "rsa-2",
        "../../../../etc/passwd",
        "' OR '1'='1' --",
        "rsa-1\u{0}",
        "",
    ] {
        let t = k
            .rsa
            .sign_with_header(&json!({"alg": "RS256", "kid": kid}), &claims());
        assert!(
            matches!(refused(&a, &t).await, Refusal::UnknownKey(_)),
            "kid {kid:?}"
        );
    }
}

#[tokio::test]
async fn keys_named_by_the_token_itself_are_never_used() {
    let k = keys();
    let a = authenticator(&k);
    let attacker = SigningKey::generate(KeyType::Rsa, "rsa-1");
    let headers = [
        json!({"alg": "RS256", "kid": "rsa-1", "jwk": attacker.jwk}),
        json!({"alg": "RS256", "kid": "rsa-1", "jku": "https://evil.test/jwks.json"}),
        json!({"alg": "RS256", "kid": "rsa-1", "x5u": "https://evil.test/cert.pem"}),
        json!({"alg": "RS256", "jwk": attacker.jwk}),
    ];
    for h in headers {
        let t = attacker.sign_with_header(&h, &claims());
        // Verified against the issuer's own `rsa-1` (or its only RSA key), so it fails.
        assert_eq!(refused(&a, &t).await, Refusal::Signature, "header {h}");
    }
}

#[tokio::test]
async fn critical_extensions_are_refused() {
    let k = keys();
    let a = authenticator(&k);
    let t = k.rsa.sign_with_header(
        &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": 1}),
        &claims(),
    );
    assert!(matches!(refused(&a, &t).await, Refusal::Critical(_)));
}

#[tokio::test]
async fn encryption_keys_never_verify() {
    let k = keys();
    let mut enc = SigningKey::generate(KeyType::Rsa, "enc-1");
    enc.jwk["use"] = json!("enc");
    let mut ops = SigningKey::generate(KeyType::P256, "ops-1");
    ops.jwk.as_object_mut().unwrap().remove("use");
    ops.jwk["key_ops"] = json!(["encrypt"]);
    let a = JwtAuthenticator::new("corp", &config(&jwks(&[&k.rsa, &enc, &ops]))).unwrap();
    assert!(matches!(
        refused(&a, &enc.sign(&claims())).await,
        Refusal::UnknownKey(_)
    ));
    assert!(matches!(
        refused(&a, &ops.sign(&claims())).await,
        Refusal::UnknownKey(_)
    ));
    // A set of only encryption keys is refused when the configuration loads, with a typed
    // cause a log or metric can tell apart.
    let Err(e) = JwtAuthenticator::new("corp", &config(&jwks(&[&enc]))) else {
        panic!("a set of encryption keys was accepted");
    };
    assert!(
        matches!(
            &e,
            BuildError::KeySet {
                source: JwksError::NoUsableKey(1),
                ..
            }
        ),
        "{e:?}"
    );
    let cause = std::error::Error::source(&e).expect("the cause is kept");
    assert!(cause.to_string().contains("1 skipped"), "{cause}");
}

#[tokio::test]
async fn algorithms_outside_the_allow_list_are_refused() {
    let k = keys();
    let mut cfg = config(&jwks(&[&k.rsa, &k.ec]));
    cfg.algorithms = vec!["ES256".into()];
    let a = JwtAuthenticator::new("corp", &cfg).unwrap();
    assert_eq!(
        refused(&a, &k.rsa.sign(&claims())).await,
        Refusal::Algorithm("RS256".into())
    );
    a.verify(&k.ec.sign(&claims())).await.unwrap();
    cfg.algorithms = vec!["HS256".into()];
    assert!(matches!(
        JwtAuthenticator::new("corp", &cfg),
        Err(BuildError::SharedSecret)
    ));
}

#[tokio::test]
async fn a_required_type_is_checked() {
    let k = keys();
    let mut cfg = config(&jwks(&[&k.rsa]));
    cfg.token_type = Some("at+jwt".into());
    let a = JwtAuthenticator::new("corp", &cfg).unwrap();
    assert!(matches!(
        refused(&a, &k.rsa.sign(&claims())).await,
        Refusal::Type(_)
    ));
    for typ in ["at+jwt", "application/at+JWT"] {
        let t = k.rsa.sign_with_header(
            &json!({"alg": "RS256", "kid": "rsa-1", "typ": typ}),
            &claims(),
        );
        a.verify(&t).await.unwrap();
    }
}

#[tokio::test]
async fn the_principal_id_claim_is_required() {
    let k = keys();
    let a = authenticator(&k);
    let mut c = claims();
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        refused(&a, &k.rsa.sign(&c)).await,
        Refusal::Claim("sub".into())
    );
    let c = with(claims(), "sub", json!(42));
    assert_eq!(
        refused(&a, &k.rsa.sign(&c)).await,
        Refusal::Claim("sub".into())
    );
    let c = with(claims(), "groups", json!([1, 2]));
    assert_eq!(
        refused(&a, &k.rsa.sign(&c)).await,
        Refusal::Claim("groups".into())
    );
}

#[tokio::test]
async fn verified_tokens_are_cached_until_they_expire() {
    let k = keys();
    let a = authenticator(&k);
    let t = k.ec.sign(&claims());
    assert!(a.cached(t.as_bytes()).is_none());
    let first = a.verify(&t).await.unwrap();
    let again = a
        .cached(t.as_bytes())
        .expect("cached after one verification");
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    // Another token, even of the same caller, is verified on its own.
    let other = k.ec.sign(&with(claims(), "jti", json!("2")));
    assert!(a.cached(other.as_bytes()).is_none());
    // A refused token is never cached.
    let bad = k.ec.sign(&with(claims(), "aud", json!("x")));
    let _ = a.verify(&bad).await;
    assert!(a.cached(bad.as_bytes()).is_none());
    // Without the cache, nothing is kept.
    let mut cfg = config(&jwks(&[&k.ec]));
    cfg.cache = false;
    let uncached = JwtAuthenticator::new("corp", &cfg).unwrap();
    uncached.verify(&t).await.unwrap();
    assert!(uncached.cached(t.as_bytes()).is_none());
}

/// Headers with `Authorization: Bearer <token>`.
fn bearer(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    let value = format!("Bearer {token}");
    h.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&value).expect("header value"),
    );
    h
}

/// A token an authenticator verified before is known by its bytes when credentials are
/// read for it, admits only through that authenticator, and anything that is not those
/// bytes is read as strictly as ever.
#[tokio::test]
async fn a_cached_token_admits_only_through_the_authenticator_that_verified_it() {
    use drawbridge_identity::{AuthError, Authenticator, Credentials, authenticate};
    use std::sync::Arc;
    let k = keys();
    let corp = Arc::new(Authenticator::Jwt(authenticator(&k)));
    let mut cfg = config(&jwks(&[&k.rsa, &k.ec, &k.ed]));
    cfg.issuer = "https://other.test/".into();
    let other = Arc::new(Authenticator::Jwt(
        JwtAuthenticator::new("other", &cfg).unwrap(),
    ));
    let route = [corp.clone()];
    let t = k.ec.sign(&claims());
    let headers = bearer(&t);

    let first = Credentials::for_authenticators(&headers, &route).expect("a token");
    let verified = authenticate(&route, &first).await.expect("admitted");
    let known = Credentials::for_authenticators(&headers, &route).expect("a token");
    let again = authenticate(&route, &known).await.expect("admitted");
    assert!(Arc::ptr_eq(&verified, &again), "the cached principal");

    // Read for `corp`, asked of `other`: `other` checks the token itself, and its issuer is
    // not the one `other` trusts.
    let elsewhere = [other.clone()];
    match authenticate(&elsewhere, &known).await {
        Err(AuthError::Invalid(Refusal::Issuer(_))) => {}
        outcome => panic!("admitted through another authenticator: {outcome:?}"),
    }

    // The cached token with anything added, or cut, is no token68 or no cached token.
    for bad in [
        format!("{t}\""),
        format!("{t} x"),
        format!("{t},"),
        format!("\"{t}\""),
        format!("{t}%"),
    ] {
        let h = bearer(&bad);
        assert!(
            matches!(
                Credentials::for_authenticators(&h, &route),
                Err(AuthError::Malformed(_))
            ),
            "{bad:?} read as a token"
        );
    }
    let cut = &t[..t.len() - 1];
    let h = bearer(cut);
    let creds = Credentials::for_authenticators(&h, &route).expect("still a token68");
    assert!(
        authenticate(&route, &creds).await.is_err(),
        "a cut signature"
    );
}

#[test]
fn the_issuer_is_read_without_trusting_it() {
    let k = keys();
    let t = k.rsa.sign(&claims());
    assert_eq!(peek_issuer(&t).unwrap(), ISS);
    assert!(peek_issuer("a.b").is_err());
    assert!(peek_issuer("a.!!!.c").is_err());
    let no_iss = format!(
        "{}.{}.x",
        encode_part(&json!({"alg": "RS256"})),
        encode_part(&json!({"sub": "x"}))
    );
    assert_eq!(peek_issuer(&no_iss), Err(Refusal::Claim("iss".into())));
}

#[tokio::test]
async fn a_token_without_kid_needs_exactly_one_fitting_key() {
    let k = keys();
    let second = SigningKey::generate(KeyType::P256, "ec-2");
    // Two P-256 keys: a token without `kid` could be checked against either, so neither.
    let a = JwtAuthenticator::new("corp", &config(&jwks(&[&k.ec, &second, &k.rsa]))).unwrap();
    for key in [&k.ec, &second] {
        let t = key.sign_with_header(&json!({"alg": "ES256", "typ": "JWT"}), &claims());
        assert_eq!(
            refused(&a, &t).await,
            Refusal::UnknownKey("(no kid)".into())
        );
    }
    // One fitting key: it answers (and only for its own signature).
    let one = JwtAuthenticator::new("corp", &config(&jwks(&[&k.ec, &k.rsa]))).unwrap();
    let t =
        k.ec.sign_with_header(&json!({"alg": "ES256", "typ": "JWT"}), &claims());
    one.verify(&t).await.unwrap();
    let t = second.sign_with_header(&json!({"alg": "ES256", "typ": "JWT"}), &claims());
    assert_eq!(refused(&one, &t).await, Refusal::Signature);
}

#[tokio::test]
async fn a_token_is_refused_once_its_exp_has_passed_cached_or_not() {
    let k = keys();
    for cache in [true, false] {
        let mut cfg = config(&jwks(&[&k.ec]));
        cfg.leeway = Duration::ZERO;
        cfg.cache = cache;
        let a = JwtAuthenticator::new("corp", &cfg).unwrap();
        let n = now();
        let t =
            k.ec.sign(&with(with(claims(), "iat", json!(n)), "exp", json!(n + 1)));
        a.verify(&t).await.unwrap();
        assert_eq!(a.cached(t.as_bytes()).is_some(), cache);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(
            a.cached(t.as_bytes()).is_none(),
            "cache {cache}: served past exp"
        );
        // Again and again: from the cache, the same refusal as a full check gives.
        for _ in 0..3 {
            assert_eq!(refused(&a, &t).await, Refusal::Expired, "cache {cache}");
            assert!(
                a.cached(t.as_bytes()).is_none(),
                "cache {cache}: served past exp"
            );
        }
    }
}
