//! The demo's identity provider: a P-256 key made at start, its JWK Set, and tokens signed
//! with it. It exists only for `drawbridge demo`.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A signing key and its public JWK Set.
pub struct Idp {
    key: EncodingKey,
    header: Header,
    jwks: String,
}

impl Idp {
    /// A fresh key named `kid`.
    pub fn generate(kid: &str) -> Result<Idp, String> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| "cannot generate the demo issuer's key".to_string())?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| "cannot read the demo issuer's key".to_string())?;
        // The public key is the uncompressed point: 0x04, X, Y.
        let point = pair.public_key().as_ref();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]})
        .to_string();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        Ok(Idp {
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            header,
            jwks,
        })
    }

    /// The public keys, as a JWK Set document.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// A token carrying `claims`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        jsonwebtoken::encode(&self.header, claims, &self.key).map_err(|e| e.to_string())
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
