//! The authenticate phase: the credentials a request carries, and the route's
//! authenticators tried in order until one admits the caller.

use std::sync::Arc;

use drawbridge_config::{Authenticator as AuthenticatorConfig, AuthenticatorKind};
use http::{HeaderMap, header};

use crate::error::{AuthError, Refusal};
use crate::jwt::{JwtAuthenticator, peek_issuer};
use crate::principal::Principal;

/// One configured authenticator, ready to check credentials.
pub enum Authenticator {
    /// Bearer JWTs of one issuer.
    Jwt(JwtAuthenticator),
}

impl Authenticator {
    /// Builds an authenticator from its checked configuration.
    pub fn new(config: &AuthenticatorConfig) -> Result<Self, String> {
        match &config.kind {
            AuthenticatorKind::Jwt(j) => JwtAuthenticator::new(&config.name, j).map(Self::Jwt),
        }
    }

    /// Its name.
    pub fn name(&self) -> &Arc<str> {
        match self {
            Self::Jwt(j) => j.name(),
        }
    }

    /// Whether it was built from `config`, so a reload can keep it (and what it fetched and
    /// cached) instead of building it again.
    pub fn built_from(&self, config: &AuthenticatorConfig) -> bool {
        match (self, &config.kind) {
            (Self::Jwt(j), AuthenticatorKind::Jwt(c)) => {
                **j.name() == *config.name && j.config() == c
            }
        }
    }

    /// Loads what it needs from the network ahead of the first request (an issuer's JWKS).
    pub async fn prefetch(&self) {
        match self {
            Self::Jwt(j) => j.keys().prefetch().await,
        }
    }
}

/// What a request offers as proof of identity, taken from its headers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// The token of an `Authorization: Bearer` header.
    pub bearer: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// Reads the credentials in `headers`. Credentials that are there but cannot be read
    /// unambiguously (two `Authorization` headers, a `Bearer` scheme without a token) make
    /// the request malformed.
    pub fn from_headers(headers: &'a HeaderMap) -> Result<Self, AuthError> {
        let mut auth = headers.get_all(header::AUTHORIZATION).iter();
        let Some(value) = auth.next() else {
            return Ok(Self::default());
        };
        if auth.next().is_some() {
            return Err(AuthError::Malformed("more than one Authorization header"));
        }
        let value = value
            .to_str()
            .map_err(|_| AuthError::Malformed("Authorization header is not ASCII"))?;
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            // Another scheme: not a credential this gateway reads.
            return Ok(Self::default());
        }
        let token = rest.trim_matches(' ');
        if token.is_empty() || !token.bytes().all(is_token68) {
            return Err(AuthError::Malformed("Bearer credentials are not a token"));
        }
        Ok(Self {
            bearer: Some(token),
        })
    }

    /// Whether the request carries any credential at all.
    pub fn is_empty(&self) -> bool {
        self.bearer.is_none()
    }
}

/// RFC 9110 §11.2 `token68` characters (the trailing `=` padding included).
fn is_token68(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// Tries `authenticators` in order against `creds`; the first that admits the caller
/// decides. When none does, the refusal of the first credential that was checked is
/// returned, or [`AuthError::Missing`] when the request carried none any of them reads.
pub async fn authenticate(
    authenticators: &[Arc<Authenticator>],
    creds: &Credentials<'_>,
) -> Result<Arc<Principal>, AuthError> {
    let Some(token) = creds.bearer else {
        return Err(AuthError::Missing);
    };
    // A token seen before costs one lookup.
    for a in authenticators {
        let Authenticator::Jwt(j) = &**a;
        if let Some(p) = j.cached(token) {
            return Ok(p);
        }
    }
    // Otherwise the token's (unverified) issuer picks the rules that verify it.
    let issuer = peek_issuer(token).map_err(AuthError::Invalid)?;
    for a in authenticators {
        let Authenticator::Jwt(j) = &**a;
        if j.issuer() == issuer {
            return j.verify(token).await.map_err(AuthError::Invalid);
        }
    }
    Err(AuthError::Invalid(Refusal::Issuer(
        issuer.chars().take(128).collect(),
    )))
}
