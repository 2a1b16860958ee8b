//! Bearer tokens from anywhere: reading the issuer and verifying never panics, and nothing
//! the fuzzer makes up is ever admitted (it cannot sign with the issuer's key).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use drawbridge_config::{ClaimMapping, JwksSource, JwtIssuer, PrincipalKind};
use drawbridge_identity::{JwtAuthenticator, peek_issuer};
use libfuzzer_sys::fuzz_target;

fn authenticator() -> &'static (tokio::runtime::Runtime, JwtAuthenticator) {
    static A: OnceLock<(tokio::runtime::Runtime, JwtAuthenticator)> = OnceLock::new();
    A.get_or_init(|| {
        let cfg = JwtIssuer {
            issuer: "https://ci.example.com".into(),
            audiences: vec!["deploy".into()],
            algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            jwks: JwksSource::File {
                path: "ci-jwks.json".into(),
                bytes: include_bytes!("../../examples/keys/ci-jwks.json").to_vec(),
            },
            jwks_refresh: Duration::from_secs(300),
            jwks_cooldown: Duration::from_secs(30),
            jwks_grace: Duration::from_secs(3600),
            jwks_timeout: Duration::from_secs(5),
            leeway: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(3600),
            token_type: None,
            principal: PrincipalKind::Service,
            claims: ClaimMapping {
                id: "sub".into(),
                groups: Some("groups".into()),
                attributes: vec!["tenant".into()],
                groups_format: Default::default(),
                // Tokens' amr and acr are read too: a factor's claims are hostile input.
                trusted_mfa: drawbridge_config::TrustedMfa {
                    amr: vec!["mfa".into()],
                    acr: vec!["phr".into()],
                },
            },
            cache: true,
            cache_size: 1000,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        (rt, JwtAuthenticator::new("ci", &cfg).expect("authenticator"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let _ = peek_issuer(token);
    let (rt, a) = authenticator();
    assert!(rt.block_on(a.verify(token)).is_err(), "a made-up token was admitted");
});
