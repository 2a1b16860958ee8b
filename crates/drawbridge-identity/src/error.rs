//! Why a caller was not admitted.

/// A refusal of the authenticate phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request carries no credential any of the route's authenticators reads.
    #[error("no credentials")]
    Missing,
    /// The credential is not even well-formed as a credential (two `Authorization` headers,
    /// a scheme without a value): a malformed request.
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    /// A credential was presented and failed a check.
    #[error("{0}")]
    Invalid(Refusal),
}

/// What exactly was wrong with a credential: recorded in the access log, never told to the
/// client beyond "invalid".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not three base64url parts, or a header or payload that is not JSON.
    #[error("token: malformed ({0})")]
    Malformed(String),
    /// Longer than any token this gateway accepts.
    #[error("token: longer than {0} bytes")]
    TooLong(usize),
    /// `alg` outside the issuer's allow-list.
    #[error("token: algorithm `{0}` is not allowed for this issuer")]
    Algorithm(String),
    /// A `crit` header names extensions this gateway does not implement.
    #[error("token: critical header extensions `{0}` are not understood")]
    Critical(String),
    /// `typ` is not the one the issuer requires.
    #[error("token: type `{0}` is not the required one")]
    Type(String),
    /// The `iss` claim names no issuer the route accepts.
    #[error("token: issuer `{0}` is not accepted here")]
    Issuer(String),
    /// No key of the issuer has this `kid`, even after a refetch.
    #[error("token: no key `{0}` in the issuer's JWKS")]
    UnknownKey(String),
    /// The key named does not fit the algorithm (wrong family, curve or declared `alg`).
    #[error("token: key `{0}` does not fit algorithm `{1}`")]
    KeyMismatch(String, String),
    /// The issuer's keys could not be had (never fetched, or stale beyond the grace period).
    #[error("token: issuer keys unavailable ({0})")]
    KeysUnavailable(String),
    /// The signature does not verify.
    #[error("token: signature does not verify")]
    Signature,
    /// `exp` has passed.
    #[error("token: expired")]
    Expired,
    /// `nbf` (or `iat`) lies in the future.
    #[error("token: not yet valid")]
    NotYetValid,
    /// `aud` names none of the accepted audiences.
    #[error("token: audience not accepted")]
    Audience,
    /// A required claim is missing or has the wrong type.
    #[error("token: claim `{0}` missing or invalid")]
    Claim(String),
    /// A client certificate whose names are outside the trust domain, or that expired.
    #[error("client certificate: {0}")]
    Certificate(String),
    /// An API key that is malformed, unknown, wrong or expired.
    #[error("api key: {0}")]
    ApiKey(&'static str),
    /// A credential of a kind none of the route's authenticators reads (a bearer token on a
    /// route that takes only API keys).
    #[error("{0} presented, but no authenticator of the route reads it")]
    NotAccepted(&'static str),
    /// A caller described by a `drawbridge test` case that the authenticator would not
    /// admit.
    #[error("test case: {0}")]
    Simulated(String),
    /// `exp` lies further from `iat` (or now) than the issuer allows.
    #[error("token: lifetime exceeds the maximum of {0}s")]
    Lifetime(u64),
}

/// Why a JWK Set document was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not JSON of the shape `{"keys": [...]}`.
    #[error("not a JWK Set (`{{\"keys\": [...]}}`): {0}")]
    NotAKeySet(#[source] serde_json::Error),
    /// Every key was skipped (the count).
    #[error(
        "no key in the set can verify signatures ({0} skipped: encryption, symmetric or unsupported keys)"
    )]
    NoUsableKey(usize),
}

/// Why an authenticator could not be built from its checked configuration. Refused at
/// start and at reload (where the configuration in force keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An algorithm name the JWT library does not know.
    #[error("algorithm `{name}`: {source}")]
    Algorithm {
        /// The name as configured.
        name: String,
        /// What the library said.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// The allow-list is empty.
    #[error("no algorithm is allowed")]
    NoAlgorithm,
    /// An HMAC algorithm was listed.
    #[error("shared-secret algorithms are never accepted")]
    SharedSecret,
    /// The JWK Set file does not hold a usable key set.
    #[error("`{path}`: {source}")]
    KeySet {
        /// The file.
        path: std::path::PathBuf,
        /// Why it was refused.
        #[source]
        source: JwksError,
    },
    /// The header an API key travels in is not a header name.
    #[error("header `{name}`: {source}")]
    Header {
        /// The name as configured.
        name: String,
        /// Why it is not one.
        #[source]
        source: http::header::InvalidHeaderName,
    },
    /// A CA certificate rustls refuses.
    #[error("CA certificate rejected: {0}")]
    Ca(#[source] rustls::Error),
    /// The client certificate verifier could not be built from the CAs.
    #[error("client certificate verifier: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// An `oidc` authenticator's client key that is not an EC P-256, Ed25519 or RSA
    /// PKCS#8 key.
    #[error("client_key_file: not an EC P-256, Ed25519 or RSA private key")]
    ClientKey,
}

/// Why the identity assertion key could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The random source failed while generating a key.
    #[error("cannot generate {0} key")]
    Generate(&'static str),
    /// The configured key is not of the algorithm's kind.
    #[error("identity key is not {expected}: {source}")]
    Rejected {
        /// The kind of key the algorithm needs.
        expected: &'static str,
        /// What aws-lc-rs said.
        #[source]
        source: aws_lc_rs::error::KeyRejected,
    },
    /// The public key could not be described as a JWK.
    #[error("identity key as a JWK: {0}")]
    Jwk(#[source] serde_json::Error),
    /// The JWK thumbprint (the key's `kid`) could not be computed.
    #[error("identity key thumbprint: {0}")]
    Thumbprint(#[source] jsonwebtoken::errors::Error),
    /// A trial signature failed: the key cannot sign.
    #[error("identity key cannot sign: {0}")]
    Sign(#[source] crate::MintError),
}
