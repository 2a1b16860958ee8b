//! The factors' rules against the embedded store and Redis alike.

use super::*;

const ALICE: Account<'static> = Account {
    authenticator: "corp",
    user: "alice",
};

/// Sessions (for their store and key) in a fresh embedded store.
fn embedded() -> (tempfile::TempDir, Arc<Sessions>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = drawbridge_session::Store::Embedded(
        drawbridge_session::Embedded::open(&dir.path().join("s.redb")).expect("open"),
    );
    (dir, sessions(store))
}

fn sessions(store: drawbridge_session::Store) -> Arc<Sessions> {
    let config = drawbridge_config::Sessions {
        store: drawbridge_config::SessionStore::Embedded {
            path: "unused".into(),
        },
        key: None,
        idle_timeout: std::time::Duration::from_secs(3600),
        lifetime: std::time::Duration::from_secs(7200),
        cache_ttl: std::time::Duration::from_secs(5),
        sign_in: None,
        location: here(),
    };
    Arc::new(Sessions::new(store, config, drawbridge_session::Served::new([])).expect("sessions"))
}

fn settings() -> drawbridge_config::Mfa {
    drawbridge_config::Mfa {
        issuer: "Drawbridge".into(),
        totp: drawbridge_config::TotpSettings::default(),
        max_failures: 5,
        failure_window: std::time::Duration::from_secs(900),
        enrol_timeout: std::time::Duration::from_secs(600),
        user_verification: true,
        location: here(),
    }
}

/// An independent TOTP (the RFC 6238 reference computation with aws-lc-rs's HMAC).
fn code_at(secret_b32: &str, time: u64) -> String {
    let secret = base32_decode(secret_b32);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &secret);
    let tag = aws_lc_rs::hmac::sign(&key, &(time / 30).to_be_bytes());
    let h = tag.as_ref();
    let o = usize::from(h[h.len() - 1] & 0x0f);
    let n = u32::from_be_bytes([h[o] & 0x7f, h[o + 1], h[o + 2], h[o + 3]]) % 1_000_000;
    format!("{n:06}")
}

fn base32_decode(s: &str) -> Vec<u8> {
    let mut bits = 0u64;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32"),
        };
        bits = (bits << 5) | u64::from(v);
        n += 5;
        if n >= 8 {
            out.push((bits >> (n - 8)) as u8);
            n -= 8;
        }
    }
    out
}

/// Enrols ALICE and returns the secret and the recovery codes.
async fn enrolled(m: &Mfa) -> (String, Vec<String>) {
    let started = m
        .begin_totp(ALICE, "alice@example.com")
        .await
        .expect("begin");
    assert!(
        started.uri.starts_with("otpauth://totp/"),
        "{}",
        *started.uri
    );
    assert!(started.qr_svg.contains("<svg"));
    let secret = started.secret.to_string();
    let now = drawbridge_identity::unix_now();
    // The previous step's code: the current one stays free for the tests.
    let (accepted, codes) = m
        .confirm_totp(ALICE, &code_at(&secret, now - 30))
        .await
        .expect("confirm");
    assert_eq!(accepted.factor.method, MfaMethod::Totp);
    assert_eq!(codes.len(), RECOVERY_CODES);
    (secret, codes.iter().map(|c| c.to_string()).collect())
}

async fn rules(m: &Mfa) {
    // Nothing enrolled: nothing to verify against.
    assert!(matches!(
        m.verify(ALICE, "123456").await,
        Err(MfaError::NotEnrolled)
    ));
    let (secret, codes) = enrolled(m).await;
    assert!(m.status(ALICE).await.expect("status").totp);
    let now = drawbridge_identity::unix_now();
    // The next step's code is accepted, once; then an earlier step's is refused too.
    let next = code_at(&secret, now + 30);
    assert_eq!(
        m.verify(ALICE, &next).await.expect("next").factor.method,
        MfaMethod::Totp
    );
    assert!(matches!(
        m.verify(ALICE, &next).await,
        Err(MfaError::Replayed)
    ));
    assert!(matches!(
        m.verify(ALICE, &code_at(&secret, now)).await,
        Err(MfaError::Replayed)
    ));
    // Two steps away: refused.
    assert!(matches!(
        m.verify(ALICE, &code_at(&secret, now + 60)).await,
        Err(MfaError::Wrong)
    ));
    // A recovery code works once, however it is typed.
    let typed = codes[0].to_uppercase().replace('-', " ");
    let used = m.verify(ALICE, &typed).await.expect("recovery");
    assert_eq!(used.factor.method, MfaMethod::RecoveryCode);
    assert_eq!(used.recovery_left, Some(RECOVERY_CODES - 1));
    assert!(matches!(
        m.verify(ALICE, &codes[0]).await,
        Err(MfaError::Wrong)
    ));
    // Two failures so far (the far step, the reused recovery code; replays of a valid
    // code are not guesses): three more spend the budget of five, then even a right code
    // is refused.
    let mut failures = 0;
    while !matches!(m.verify(ALICE, "000000").await, Err(MfaError::Locked)) {
        failures += 1;
        assert!(failures <= 5, "never locked");
    }
    assert_eq!(failures, 3);
    assert!(matches!(
        m.verify(ALICE, &codes[1]).await,
        Err(MfaError::Locked)
    ));
    // Another account is not locked with it.
    let bob = Account {
        authenticator: "corp",
        user: "bob",
    };
    assert!(matches!(
        m.verify(bob, "000000").await,
        Err(MfaError::NotEnrolled)
    ));
    // Removed: nothing is enrolled, recovery codes are gone.
    m.remove(ALICE).await.expect("remove");
    assert!(!m.status(ALICE).await.expect("status").totp);
}

#[tokio::test]
async fn factors_on_the_embedded_store() {
    let (_dir, s) = embedded();
    rules(&Mfa::new(settings(), s)).await;
}

#[tokio::test]
async fn factors_on_redis() {
    let server = drawbridge_testkit::redis::RedisServer::start();
    let store = drawbridge_session::Store::Redis(Box::new(
        drawbridge_session::Redis::new(&server.url(), None, "mfa-test:").expect("redis"),
    ));
    rules(&Mfa::new(settings(), sessions(store))).await;
}

#[tokio::test]
async fn one_code_given_to_twenty_at_once_admits_one() {
    let server = drawbridge_testkit::redis::RedisServer::start();
    let redis = drawbridge_session::Redis::new(&server.url(), None, "race:").expect("redis");
    let first = sessions(drawbridge_session::Store::Redis(Box::new(redis.clone())));
    // A second instance: its own `Sessions` on the same Redis (the key is shared there).
    let second = sessions(drawbridge_session::Store::Redis(Box::new(redis)));
    let (a, b) = (
        Mfa::new(
            drawbridge_config::Mfa {
                max_failures: 20,
                ..settings()
            },
            first,
        ),
        Mfa::new(
            drawbridge_config::Mfa {
                max_failures: 20,
                ..settings()
            },
            second,
        ),
    );
    let (secret, _) = enrolled(&a).await;
    let code = code_at(&secret, drawbridge_identity::unix_now());
    let tries = (0..20).map(|i| {
        let m = if i % 2 == 0 { &a } else { &b };
        let code = code.clone();
        async move { m.verify(ALICE, &code).await }
    });
    let results = futures_util::future::join_all(tries).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(MfaError::Replayed | MfaError::Locked)))
    );
    // None of them was a guess: the account is not locked.
    assert!(matches!(
        a.verify(ALICE, "000000").await,
        Err(MfaError::Wrong)
    ));
}

#[tokio::test]
async fn the_secret_is_sealed_at_rest() {
    let (_dir, s) = embedded();
    let m = Mfa::new(settings(), s.clone());
    let (secret, codes) = enrolled(&m).await;
    let stored = s
        .store()
        .get(&ALICE.key("enrolment"))
        .await
        .expect("get")
        .expect("enrolment");
    let text = String::from_utf8_lossy(&stored);
    assert!(!text.contains(&secret), "{text}");
    let raw = base32_decode(&secret);
    assert!(!stored.windows(raw.len()).any(|w| w == raw.as_slice()));
    for c in &codes {
        assert!(!text.contains(c.as_str()));
    }
}

fn here() -> drawbridge_config::Location {
    drawbridge_config::Location {
        file: "test.toml".into(),
        line: 1,
        column: 1,
    }
}
