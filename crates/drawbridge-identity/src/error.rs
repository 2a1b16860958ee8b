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
