//! The identity assertion: a short-lived JWT Drawbridge signs with its own key, telling an
//! upstream who is calling, so that services verify one issuer's signature instead of
//! handling anyone's credentials. Its public key is published as a JWK Set.
//!
//! A signature costs more than a whole proxied request (about 25 µs for Ed25519, 35 µs for
//! ES256 here), so by default an assertion is minted once per caller and upstream and
//! reused while at least half its lifetime remains; `per_request` mints one per request,
//! with the request id in it.

use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine as _;
use bytes::Bytes;
use drawbridge_config::{AssertionAlgorithm, IdentityAssertion};
use http::HeaderValue;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::principal::Principal;

/// Signs identity assertions.
pub struct Minter {
    config: IdentityAssertion,
    header: Header,
    key: EncodingKey,
    jwks: Bytes,
    /// Assertions by what they say, for principals built anew for each request (a token
    /// cache that is off, a key checked each time).
    /// Keyed by authenticator, id and audience; the rest of what the assertion says is
    /// compared on a hit.
    by_content: Mutex<std::collections::HashMap<ContentKey, ByContent>>,
}

/// Authenticator, principal id, audience.
type ContentKey = (Arc<str>, String, Arc<str>);

/// An assertion kept by content, with the principal it was minted for.
struct ByContent {
    principal: Principal,
    value: HeaderValue,
    refresh_after: u64,
}

/// Most assertions kept by content.
const MAX_BY_CONTENT: usize = 10_000;

impl Minter {
    /// A minter for `config`, with its key (generated now when the config names none).
    pub fn new(config: &IdentityAssertion) -> Result<Minter, String> {
        let rng = SystemRandom::new();
        let pkcs8 = zeroize::Zeroizing::new(match &config.key {
            Some((_, der)) => der.expose().to_vec(),
            None => match config.algorithm {
                AssertionAlgorithm::Es256 => {
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                        .map_err(|_| "cannot generate a P-256 key".to_string())?
                        .as_ref()
                        .to_vec()
                }
                AssertionAlgorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| "cannot generate an Ed25519 key".to_string())?
                    .as_ref()
                    .to_vec(),
            },
        });
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let (alg, key, mut jwk) = match config.algorithm {
            AssertionAlgorithm::Es256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
                    .map_err(|e| format!("identity key is not a P-256 key for ES256: {e}"))?;
                // The uncompressed point: 0x04, X, Y.
                let p = pair.public_key().as_ref();
                (
                    Algorithm::ES256,
                    EncodingKey::from_ec_der(&pkcs8),
                    json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])}),
                )
            }
            AssertionAlgorithm::EdDsa => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
                    .map_err(|e| format!("identity key is not an Ed25519 key for EdDSA: {e}"))?;
                (
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_der(&pkcs8),
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())}),
                )
            }
        };
        let parsed: Jwk = serde_json::from_value(jwk.clone()).map_err(|e| e.to_string())?;
        let kid = parsed
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| format!("identity key thumbprint: {e}"))?;
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(if alg == Algorithm::ES256 {
            "ES256"
        } else {
            "EdDSA"
        });
        jwk["use"] = json!("sig");
        let mut header = Header::new(alg);
        header.kid = Some(kid);
        let minter = Minter {
            config: config.clone(),
            header,
            key,
            jwks: Bytes::from(json!({"keys": [jwk]}).to_string()),
            by_content: Mutex::new(Default::default()),
        };
        // A key that cannot sign is found now, not on the first request.
        minter
            .sign(&Principal::anonymous(), "probe", None)
            .map_err(|e| e.to_string())?;
        Ok(minter)
    }

    /// The configuration it was built from; a reload with the same keeps it (and its key).
    pub fn config(&self) -> &IdentityAssertion {
        &self.config
    }

    /// The public key as a JWK Set document, served at `/.drawbridge/jwks.json`.
    pub fn jwks(&self) -> &Bytes {
        &self.jwks
    }

    /// The assertion for `principal` calling `audience` (the upstream's name), as a header
    /// value: a reused one while at least half its lifetime remains, or a new one.
    pub fn assertion(
        &self,
        principal: &Principal,
        audience: &str,
        request_id: &str,
    ) -> Result<HeaderValue, MintError> {
        if self.config.per_request {
            return self.sign(principal, audience, Some(request_id));
        }
        let now = crate::unix_now();
        if let Some(v) = principal.assertions.get(audience, now) {
            return Ok(v);
        }
        // The same caller may come back as a new principal (its credential checked again):
        // an assertion saying exactly the same things serves it too.
        let key: ContentKey = (
            principal.authenticator.clone(),
            principal.id.clone(),
            audience.into(),
        );
        let known = lock(&self.by_content)
            .get(&key)
            .filter(|c| now < c.refresh_after && same_claims(&c.principal, principal))
            .map(|c| (c.value.clone(), c.refresh_after));
        let (v, refresh_after) = match known {
            Some(found) => found,
            None => {
                let v = self.sign(principal, audience, None)?;
                let refresh_after =
                    (now + self.config.lifetime.as_secs() / 2).min(self.expiry(principal, now));
                let mut map = lock(&self.by_content);
                if map.len() >= MAX_BY_CONTENT {
                    map.retain(|_, c| now < c.refresh_after);
                    if map.len() >= MAX_BY_CONTENT {
                        map.clear();
                    }
                }
                map.insert(
                    key,
                    ByContent {
                        principal: principal.clone(),
                        value: v.clone(),
                        refresh_after,
                    },
                );
                (v, refresh_after)
            }
        };
        principal
            .assertions
            .put(audience, v.clone(), refresh_after, now);
        Ok(v)
    }

    /// When an assertion minted `now` for `p` expires: after the configured lifetime, and
    /// never after the credential it stands for (a token's `exp`, an API key's expiry, a
    /// certificate's `notAfter`).
    fn expiry(&self, p: &Principal, now: u64) -> u64 {
        let exp = now + self.config.lifetime.as_secs();
        p.expires_at.map_or(exp, |credential| exp.min(credential))
    }

    fn sign(
        &self,
        p: &Principal,
        audience: &str,
        request_id: Option<&str>,
    ) -> Result<HeaderValue, MintError> {
        let now = crate::unix_now();
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| MintError::NoRandomness)?;
        let claims = Claims {
            iss: &self.config.issuer,
            aud: audience,
            sub: &p.id,
            iat: now,
            nbf: now,
            exp: self.expiry(p, now),
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            kind: p.kind.as_str(),
            authn: &p.authenticator,
            idp: p.issuer.as_deref(),
            groups: &p.groups,
            attrs: &p.attributes,
            amr: p.methods.iter().map(|m| m.as_str()).collect(),
            auth_time: p.authenticated_at,
            rid: request_id,
        };
        let token =
            jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(MintError::Signing)?;
        HeaderValue::from_str(&token).map_err(MintError::Header)
    }
}

/// Why an identity assertion could not be made: the request is refused, never sent without
/// the identity it should carry.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The system's random source failed (for the `jti`).
    #[error("no randomness for the assertion's jti")]
    NoRandomness,
    /// Signing failed.
    #[error("signing the identity assertion: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
    /// The token cannot travel as a header value.
    #[error("the identity assertion is not a header value: {0}")]
    Header(#[source] http::header::InvalidHeaderValue),
}

/// Whether assertions for `a` and `b` say the same (all but times and `jti`; the
/// authenticator and id are the map's key).
fn same_claims(a: &Principal, b: &Principal) -> bool {
    a.kind == b.kind
        && a.issuer == b.issuer
        && a.groups == b.groups
        && a.attributes == b.attributes
        && a.methods == b.methods
        && a.authenticated_at == b.authenticated_at
        && a.expires_at == b.expires_at
}

/// What an assertion says. Field names are short and documented in docs/configuration.md.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    /// `user`, `service` or `api_key`.
    kind: &'static str,
    /// The authenticator that admitted the caller.
    authn: &'a str,
    /// Who vouched for the caller (the token's issuer).
    #[serde(skip_serializing_if = "Option::is_none")]
    idp: Option<&'a str>,
    groups: &'a [String],
    #[serde(skip_serializing_if = "Map::is_empty")]
    attrs: &'a Map<String, Value>,
    /// How the caller authenticated.
    amr: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_time: Option<u64>,
    /// The request id, when assertions are minted per request.
    #[serde(skip_serializing_if = "Option::is_none")]
    rid: Option<&'a str>,
}

// === impl AssertionCache ===

/// Assertions minted for one principal, by audience. Lives in the principal, so it lasts as
/// long as the verified credential does and is gone with it.
#[derive(Default)]
pub struct AssertionCache(Mutex<Vec<Cached>>);

struct Cached {
    audience: Arc<str>,
    value: HeaderValue,
    refresh_after: u64,
}

/// Most audiences remembered per principal.
const MAX_AUDIENCES: usize = 32;

impl AssertionCache {
    fn get(&self, audience: &str, now: u64) -> Option<HeaderValue> {
        let list = lock(&self.0);
        list.iter()
            .find(|c| &*c.audience == audience && now < c.refresh_after)
            .map(|c| c.value.clone())
    }

    fn put(&self, audience: &str, value: HeaderValue, refresh_after: u64, now: u64) {
        let mut list = lock(&self.0);
        list.retain(|c| &*c.audience != audience && now < c.refresh_after);
        if list.len() >= MAX_AUDIENCES {
            list.clear();
        }
        list.push(Cached {
            audience: audience.into(),
            value,
            refresh_after,
        });
    }
}

impl Clone for AssertionCache {
    /// A copy of a principal starts without assertions: they were minted for the original.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for AssertionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AssertionCache")
    }
}

/// Entries are replaced whole, so a poisoned lock still holds consistent entries.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
