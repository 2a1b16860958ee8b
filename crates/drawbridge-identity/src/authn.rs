//! The authenticate phase: the credentials a request carries, and the route's
//! authenticators tried in order until one admits the caller.

use std::sync::Arc;

use drawbridge_config::{Authenticator as AuthenticatorConfig, AuthenticatorKind};
use http::{HeaderMap, HeaderName, header};

use crate::apikey::{self, ApiKeyAuthenticator};
use crate::error::{AuthError, Refusal};
use crate::jwt::{JwtAuthenticator, peek_issuer};
use crate::mtls::{ClientCert, MtlsAuthenticator};
use crate::principal::Principal;

/// One configured authenticator, ready to check credentials.
// Built once per reload and always held in an `Arc`: the variants' sizes cost nothing.
#[allow(clippy::large_enum_variant)]
pub enum Authenticator {
    /// Bearer JWTs of one issuer.
    Jwt(JwtAuthenticator),
    /// API keys of one keys file.
    ApiKey(ApiKeyAuthenticator),
    /// Client certificates in one trust domain.
    Mtls(MtlsAuthenticator),
}

impl Authenticator {
    /// Builds an authenticator from its checked configuration.
    pub fn new(config: &AuthenticatorConfig) -> Result<Self, String> {
        match &config.kind {
            AuthenticatorKind::Jwt(j) => JwtAuthenticator::new(&config.name, j).map(Self::Jwt),
            AuthenticatorKind::ApiKey(k) => {
                ApiKeyAuthenticator::new(&config.name, k).map(Self::ApiKey)
            }
            AuthenticatorKind::Mtls(m) => Ok(Self::Mtls(MtlsAuthenticator::new(&config.name, m))),
        }
    }

    /// Its name.
    pub fn name(&self) -> &Arc<str> {
        match self {
            Self::Jwt(j) => j.name(),
            Self::ApiKey(k) => k.name(),
            Self::Mtls(m) => m.name(),
        }
    }

    /// Whether it was built from `config`, so a reload can keep it (and what it fetched and
    /// cached) instead of building it again.
    pub fn built_from(&self, config: &AuthenticatorConfig) -> bool {
        **self.name() == *config.name
            && match (self, &config.kind) {
                (Self::Jwt(j), AuthenticatorKind::Jwt(c)) => j.config() == &**c,
                (Self::ApiKey(k), AuthenticatorKind::ApiKey(c)) => k.config() == c,
                (Self::Mtls(m), AuthenticatorKind::Mtls(c)) => m.config() == c,
                _ => false,
            }
    }

    /// Loads what it needs from the network ahead of the first request (an issuer's JWKS).
    pub async fn prefetch(&self) {
        if let Self::Jwt(j) = self {
            j.keys().prefetch().await;
        }
    }

    /// The challenge scheme a refusal names for it (`WWW-Authenticate`); none for client
    /// certificates, which are asked for by the TLS handshake, not by HTTP.
    pub fn scheme(&self) -> Option<Scheme> {
        match self {
            Self::Jwt(_) => Some(Scheme::Bearer),
            Self::ApiKey(_) => Some(Scheme::ApiKey),
            Self::Mtls(_) => None,
        }
    }

    /// A header other than `Authorization` that carries its credentials; removed before
    /// the request is forwarded.
    pub fn credential_header(&self) -> Option<&HeaderName> {
        match self {
            Self::Jwt(_) | Self::Mtls(_) => None,
            Self::ApiKey(k) => k.header(),
        }
    }
}

/// An authentication scheme, as named in a `WWW-Authenticate` challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// RFC 6750 bearer tokens.
    Bearer,
    /// Drawbridge API keys (`Authorization: ApiKey <key>`, or their own header).
    ApiKey,
}

/// What a request offers as proof of identity, taken from its headers.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The request's headers, for authenticators with a header of their own.
    pub headers: &'a HeaderMap,
    /// The token of an `Authorization: Bearer` header.
    pub bearer: Option<&'a str>,
    /// The key of an `Authorization: ApiKey` header.
    pub api_key: Option<&'a str>,
    /// The client certificate the connection presented, verified by the listener.
    pub client_cert: Option<&'a ClientCert>,
}

impl<'a> Credentials<'a> {
    /// Reads the credentials in `headers`. Credentials that are there but cannot be read
    /// unambiguously (two `Authorization` headers, a `Bearer` scheme without a token) make
    /// the request malformed.
    pub fn from_headers(headers: &'a HeaderMap) -> Result<Self, AuthError> {
        let mut creds = Self {
            headers,
            bearer: None,
            api_key: None,
            client_cert: None,
        };
        let mut auth = headers.get_all(header::AUTHORIZATION).iter();
        let Some(value) = auth.next() else {
            return Ok(creds);
        };
        if auth.next().is_some() {
            return Err(AuthError::Malformed("more than one Authorization header"));
        }
        let value = value
            .to_str()
            .map_err(|_| AuthError::Malformed("Authorization header is not ASCII"))?;
        if let Some(key) = apikey::from_authorization(value) {
            if key.is_empty() {
                return Err(AuthError::Malformed("ApiKey credentials are empty"));
            }
            creds.api_key = Some(key);
            return Ok(creds);
        }
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            // Another scheme: not a credential this gateway reads.
            return Ok(creds);
        }
        let token = rest.trim_matches(' ');
        if token.is_empty() || !token.bytes().all(is_token68) {
            return Err(AuthError::Malformed("Bearer credentials are not a token"));
        }
        creds.bearer = Some(token);
        Ok(creds)
    }
}

impl<'a> Credentials<'a> {
    /// Adds the connection's verified client certificate.
    pub fn with_client_cert(mut self, cert: Option<&'a ClientCert>) -> Self {
        self.client_cert = cert;
        self
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
    // A token seen before costs one lookup.
    if let Some(token) = creds.bearer {
        for a in authenticators {
            if let Authenticator::Jwt(j) = &**a
                && let Some(p) = j.cached(token)
            {
                return Ok(p);
            }
        }
    }
    let mut refusal = None;
    // A token's (unverified) issuer picks the rules that verify it; read once.
    let mut issuer: Option<Result<String, Refusal>> = None;
    for a in authenticators {
        let outcome = match &**a {
            Authenticator::Jwt(j) => {
                let Some(token) = creds.bearer else { continue };
                match issuer.get_or_insert_with(|| peek_issuer(token)) {
                    Err(r) => Some(Err(r.clone())),
                    Ok(iss) if iss == j.issuer() => Some(j.verify(token).await),
                    Ok(_) => None,
                }
            }
            Authenticator::ApiKey(k) => k
                .read(creds.headers, creds.api_key)?
                .map(|key| k.verify(key)),
            Authenticator::Mtls(m) => creds.client_cert.map(|c| m.verify(c)),
        };
        match outcome {
            Some(Ok(p)) => return Ok(p),
            Some(Err(r)) => {
                refusal.get_or_insert(r);
            }
            None => {}
        }
    }
    match (refusal, issuer) {
        (Some(r), _) => Err(AuthError::Invalid(r)),
        // A token whose issuer no authenticator of the route trusts.
        (None, Some(Ok(iss))) => Err(AuthError::Invalid(Refusal::Issuer(
            iss.chars().take(128).collect(),
        ))),
        _ => Err(AuthError::Missing),
    }
}
