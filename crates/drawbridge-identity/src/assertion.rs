//! The identity assertion: a short-lived JWT Drawbridge signs with its own key, telling an
//! upstream who is calling, so that services verify one issuer's signature instead of
//! handling anyone's credentials. Its public key is published as a JWK Set.
//!
//! A signature costs more than a whole proxied request (about 25 µs for Ed25519, 35 µs for
//! ES256 here), so by default an assertion is minted once per caller and upstream and
//! reused while at least half its lifetime remains; `per_request` mints one per request,
//! with the request id in it.

use std::sync::Arc;

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

use crate::cache::PrincipalCache;
use crate::error::KeyError;
use crate::principal::Principal;

/// Signs identity assertions.
pub struct Minter {
    config: IdentityAssertion,
    header: Header,
    key: EncodingKey,
    jwks: Bytes,
    /// Assertions minted, by caller and audience (the upstream's name), with when each is
    /// due for renewal.
    minted: PrincipalCache<Arc<str>, (HeaderValue, u64)>,
}

/// Most assertions kept.
const MAX_MINTED: usize = 16_384;

impl Minter {
    /// A minter for `config`, with its key (generated now when the config names none).
    pub fn new(config: &IdentityAssertion) -> Result<Minter, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = zeroize::Zeroizing::new(match &config.key {
            Some((_, der)) => der.expose().to_vec(),
            None => match config.algorithm {
                AssertionAlgorithm::Es256 => {
                    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                        .map_err(|_| KeyError::Generate("a P-256"))?
                        .as_ref()
                        .to_vec()
                }
                AssertionAlgorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| KeyError::Generate("an Ed25519"))?
                    .as_ref()
                    .to_vec(),
            },
        });
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let (alg, key, mut jwk) = match config.algorithm {
            AssertionAlgorithm::Es256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
                    .map_err(|source| KeyError::Rejected {
                        expected: "a P-256 key for ES256",
                        source,
                    })?;
                // The uncompressed point: 0x04, X, Y.
                let p = pair.public_key().as_ref();
                (
                    Algorithm::ES256,
                    EncodingKey::from_ec_der(&pkcs8),
                    json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65])}),
                )
            }
            AssertionAlgorithm::EdDsa => {
                let pair =
                    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|source| {
                        KeyError::Rejected {
                            expected: "an Ed25519 key for EdDSA",
                            source,
                        }
                    })?;
                (
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_der(&pkcs8),
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())}),
                )
            }
        };
        let parsed: Jwk = serde_json::from_value(jwk.clone()).map_err(KeyError::Jwk)?;
        let kid = parsed
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(KeyError::Thumbprint)?;
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
            minted: PrincipalCache::new(MAX_MINTED),
        };
        // A key that cannot sign is found now, not on the first request.
        minter
            .sign(&Principal::anonymous(), "probe", None)
            .map_err(KeyError::Sign)?;
        Ok(minter)
    }

    /// The configuration it was built from; a reload with the same keeps it (and its key).
    pub fn config(&self) -> &IdentityAssertion {
        &self.config
    }

    /// `claims` signed with the instance's key as a compact JWS (a JWT with `iss` set to
    /// the assertion issuer): what seals the audit trail's chain, checked later against
    /// the key set at `/.drawbridge/jwks.json`.
    pub fn sign_claims(&self, claims: &Value) -> Result<String, MintError> {
        let mut claims = claims.clone();
        if let Some(map) = claims.as_object_mut() {
            map.insert("iss".into(), json!(self.config.issuer));
        }
        jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(MintError::Signing)
    }

    /// The public key as a JWK Set document, served at `/.drawbridge/jwks.json`.
    pub fn jwks(&self) -> &Bytes {
        &self.jwks
    }

    /// The assertion for `principal` calling `audience` (the upstream's name), as a header
    /// value: a reused one while at least half its lifetime remains, or a new one.
    pub fn assertion(
        &self,
        principal: &Arc<Principal>,
        audience: &str,
        request_id: &str,
    ) -> Result<HeaderValue, MintError> {
        if self.config.per_request {
            return self.sign(principal, audience, Some(request_id));
        }
        let now = crate::unix_now();
        if let Some((v, refresh_after)) = self.minted.get(principal, audience)
            && now < refresh_after
        {
            return Ok(v);
        }
        let v = self.sign(principal, audience, None)?;
        // Reused while half its lifetime remains, never past the credential's end. A
        // credential already past its end (admitted within its authenticator's leeway) gets
        // an assertion that expires with it: one made again would say no more, so it is
        // made at most once a second, not for every request.
        let refresh_after = (now + self.config.lifetime.as_secs() / 2)
            .min(self.expiry(principal, now).max(now + 1));
        self.minted
            .insert(principal, audience.into(), (v.clone(), refresh_after));
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
            jti: base16ct::lower::encode_string(&jti),
            kind: p.kind.as_str(),
            authn: &p.authenticator,
            idp: p.issuer.as_deref(),
            groups: &p.groups,
            attrs: &p.attributes,
            amr: amr(p),
            auth_time: p.authenticated_at,
            factors: p
                .factors
                .iter()
                .map(|f| (f.method.as_str(), f.at))
                .collect(),
            rid: request_id,
        };
        let token =
            jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(MintError::Signing)?;
        HeaderValue::from_str(&token).map_err(MintError::Header)
    }
}

/// The `amr` of an assertion for `p`.
fn amr(p: &Principal) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = p.methods.iter().map(|m| m.as_str()).collect();
    for f in &p.factors {
        if !out.contains(&f.method.amr()) {
            out.push(f.method.amr());
        }
    }
    if !p.factors.is_empty() && !out.contains(&"mfa") {
        out.push("mfa");
    }
    out
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
    /// How the caller authenticated: its credential's method, then RFC 8176 values for its
    /// second factors and `mfa` when it has one.
    amr: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_time: Option<u64>,
    /// Each second factor and when it was done (Unix seconds).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    factors: std::collections::BTreeMap<&'static str, u64>,
    /// The request id, when assertions are minted per request.
    #[serde(skip_serializing_if = "Option::is_none")]
    rid: Option<&'a str>,
}
