//! Who is calling: the [`Principal`], the authenticators that produce one from a request's
//! credentials (bearer JWTs checked against an issuer's JWKS so far), and the errors that
//! refuse a caller.
//!
//! Nothing here knows about HTTP servers: the proxy hands in the credential it found and
//! gets a principal or a refusal back, so other protocols can reuse the same checks.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apikey;
mod assertion;
mod authn;
mod cache;
mod error;
pub mod fetch;
mod jwks;
mod jwt;
mod mtls;
mod oidc;
mod principal;

pub use apikey::ApiKeyAuthenticator;
pub use assertion::{MintError, Minter};
pub use authn::{Authenticator, Credentials, Scheme, Simulated, authenticate};
pub use cache::PrincipalCache;
pub use error::{AuthError, BuildError, JwksError, KeyError, Refusal};
pub use fetch::FetchError;
pub use jwks::{FetchSettings, KeySet, KeySource};
pub use jwt::{JwtAuthenticator, MAX_TOKEN_BYTES, peek_issuer};
pub use mtls::{ClientCert, MtlsAuthenticator};
pub use oidc::{Discovered, IdToken, OidcAuthenticator, OidcError, Tokens};
pub use principal::{AuthMethod, FACTOR_SKEW, Factor, Principal};

/// Seconds since the Unix epoch, the unit of JWT time claims.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
