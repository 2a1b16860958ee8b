//! Test issuers: key pairs of every supported type, their JWK Sets, and tokens signed with
//! them, well-formed or crafted to be wrong in one specific way.

use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

/// The key types a test issuer can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// RSA 2048, signs RS256.
    Rsa,
    /// EC P-256, signs ES256.
    P256,
    /// Ed25519, signs EdDSA.
    Ed25519,
}

/// A signing key with its public JWK.
pub struct SigningKey {
    /// Its `kid`.
    pub kid: String,
    /// The algorithm it signs with.
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public key as a JWK (with `kid`, `alg` and `use=sig`).
    pub jwk: Value,
    /// The public key's raw bytes (for RSA: the PKCS#1 DER), e.g. to misuse as an HMAC secret.
    pub public_raw: Vec<u8>,
    /// The private key, PKCS#8 PEM (for a client that signs with it).
    pub pem: String,
}

impl SigningKey {
    /// A fresh key of `ty` named `kid`.
    pub fn generate(ty: KeyType, kid: &str) -> SigningKey {
        let (rcgen_alg, alg) = match ty {
            KeyType::Rsa => (&rcgen::PKCS_RSA_SHA256, Algorithm::RS256),
            KeyType::P256 => (&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256),
            KeyType::Ed25519 => (&rcgen::PKCS_ED25519, Algorithm::EdDSA),
        };
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("key generation");
        let pem = pair.serialize_pem();
        let raw = pair.public_key_raw().to_vec();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let (encoding, mut jwk) = match ty {
            KeyType::Rsa => {
                let enc = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("rsa pem");
                let jwk = serde_json::to_value(Jwk::from_encoding_key(&enc, alg).expect("rsa jwk"))
                    .expect("jwk json");
                (enc, jwk)
            }
            KeyType::P256 => {
                let enc = EncodingKey::from_ec_pem(pem.as_bytes()).expect("ec pem");
                // Uncompressed point: 0x04, X, Y.
                let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
                (enc, jwk)
            }
            KeyType::Ed25519 => {
                let enc = EncodingKey::from_ed_pem(pem.as_bytes()).expect("ed pem");
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&raw)});
                (enc, jwk)
            }
        };
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!(alg_name(alg));
        jwk["use"] = json!("sig");
        SigningKey {
            kid: kid.to_string(),
            alg,
            encoding,
            jwk,
            public_raw: raw,
            pem,
        }
    }

    /// The P-256 key `pem` (PKCS#8) as `kid`: a second handle on a key made elsewhere.
    pub fn p256_from_pem(pem: &str, kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::from_pem(pem).expect("pem key");
        let raw = pair.public_key_raw().to_vec();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        SigningKey {
            kid: kid.to_string(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(pem.as_bytes()).expect("ec pem"),
            jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
                        "kid": kid, "alg": "ES256", "use": "sig"}),
            public_raw: raw,
            pem: pem.to_string(),
        }
    }

    /// A token with the usual header (`alg`, `kid`, `typ: JWT`) and `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": alg_name(self.alg), "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }

    /// A token with exactly `header` and `claims`, signed with this key's algorithm
    /// whatever the header says.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        self.sign_text(&header.to_string(), &claims.to_string())
    }

    /// A token whose header and claims are exactly these JSON texts (which may say what a
    /// `Value` cannot, such as a member named twice).
    pub fn sign_text(&self, header: &str, claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let message = format!("{}.{}", b64(header), b64(claims));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, self.alg)
            .expect("signing");
        format!("{message}.{sig}")
    }

    /// The header `sign` writes, as JSON text.
    pub fn header_text(&self) -> String {
        json!({"alg": alg_name(self.alg), "kid": self.kid, "typ": "JWT"}).to_string()
    }
}

/// A JWK Set document holding `keys`.
pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// A token signed with HMAC-SHA256 under `secret`, with exactly `header` and `claims`.
pub fn sign_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let message = format!("{}.{}", encode_part(header), encode_part(claims));
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .expect("signing");
    format!("{message}.{sig}")
}

/// A token's part: base64url of the JSON, unpadded.
pub fn encode_part(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn alg_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "RS256",
    }
}

/// The claims of `token`, read without verifying anything (to look at what a token says).
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("payload is base64url");
    serde_json::from_slice(&bytes).expect("payload is JSON")
}
