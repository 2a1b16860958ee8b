//! The authenticate phase: the credentials a request carries, and the route's
//! authenticators tried in order until one admits the caller.

use std::sync::Arc;

use drawbridge_config::{Authenticator as AuthenticatorConfig, AuthenticatorKind};
use http::{HeaderMap, HeaderName, header};

use crate::apikey::ApiKeyAuthenticator;
use crate::error::{AuthError, BuildError, Refusal};
use crate::jwt::{JwtAuthenticator, peek_issuer};
use crate::mtls::{ClientCert, MtlsAuthenticator};
use crate::oidc::OidcAuthenticator;
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
    /// People signed in at one OpenID provider; their sessions carry them afterwards.
    Oidc(OidcAuthenticator),
}

/// A caller described by a policy test case instead of presented credentials: what a token
/// would claim, which key it would hold, which certificate identity it would present.
#[derive(Debug, Clone, Copy)]
pub enum Simulated<'a> {
    /// The claims of a token the JWT authenticator verified.
    Claims(&'a serde_json::Map<String, serde_json::Value>),
    /// The name of a key in the API-key authenticator's keys file.
    Key(&'a str),
    /// The SPIFFE id or DNS name of a client certificate.
    Id(&'a str),
}

impl Authenticator {
    /// The principal this authenticator would admit for `caller`, through the same claim
    /// mapping, keys file and trust-domain rules as real credentials (signatures and expiry
    /// aside). For `drawbridge test`; never on the request path.
    pub fn simulate(&self, caller: Simulated<'_>) -> Result<Principal, String> {
        match (self, caller) {
            (Authenticator::Jwt(j), Simulated::Claims(c)) => j.simulate(c),
            (Authenticator::ApiKey(k), Simulated::Key(name)) => k.simulate(name),
            (Authenticator::Mtls(m), Simulated::Id(id)) => m.simulate(id),
            (Authenticator::Oidc(o), Simulated::Claims(c)) => o.simulate(c),
            (Authenticator::Jwt(_), _) => Err("a `jwt` authenticator takes `claims`".into()),
            (Authenticator::Oidc(_), _) => {
                Err("an `oidc` authenticator takes `claims` (the ID token's)".into())
            }
            (Authenticator::ApiKey(_), _) => {
                Err("an `api_key` authenticator takes `key` (a key's name)".into())
            }
            (Authenticator::Mtls(_), _) => {
                Err("an `mtls` authenticator takes `id` (a SPIFFE id or DNS name)".into())
            }
        }
    }

    /// Builds an authenticator from its checked configuration.
    pub fn new(config: &AuthenticatorConfig) -> Result<Self, BuildError> {
        match &config.kind {
            AuthenticatorKind::Jwt(j) => JwtAuthenticator::new(&config.name, j).map(Self::Jwt),
            AuthenticatorKind::ApiKey(k) => {
                ApiKeyAuthenticator::new(&config.name, k).map(Self::ApiKey)
            }
            AuthenticatorKind::Mtls(m) => Ok(Self::Mtls(MtlsAuthenticator::new(&config.name, m)?)),
            AuthenticatorKind::Oidc(o) => OidcAuthenticator::new(&config.name, o).map(Self::Oidc),
        }
    }

    /// What of its tokens' `amr` and `acr` it takes as a second factor done at the issuer;
    /// `None` when it takes nothing (the default, and every authenticator without tokens).
    pub fn trusted_mfa(&self) -> Option<&drawbridge_config::TrustedMfa> {
        let t = match self {
            Self::Jwt(j) => &j.config().claims.trusted_mfa,
            Self::Oidc(o) => &o.config().claims.trusted_mfa,
            Self::ApiKey(_) | Self::Mtls(_) => return None,
        };
        (!t.is_empty()).then_some(t)
    }

    /// Its name.
    pub fn name(&self) -> &Arc<str> {
        match self {
            Self::Jwt(j) => j.name(),
            Self::ApiKey(k) => k.name(),
            Self::Mtls(m) => m.name(),
            Self::Oidc(o) => o.name(),
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
                (Self::Oidc(o), AuthenticatorKind::Oidc(c)) => o.config() == &**c,
                _ => false,
            }
    }

    /// Loads what it needs from the network ahead of the first request (an issuer's JWKS).
    pub async fn prefetch(&self) {
        match self {
            Self::Jwt(j) => j.keys().prefetch().await,
            Self::Oidc(o) => o.prefetch().await,
            Self::ApiKey(_) | Self::Mtls(_) => {}
        }
    }

    /// Whether it can admit callers now: an issuer's keys fetched at least once and not
    /// stale beyond their grace period. Why not, for a readiness probe.
    pub fn ready(&self) -> Result<(), String> {
        match self {
            Self::Jwt(j) => j.keys().usable().map_err(|e| e.to_string()),
            Self::Oidc(o) => o.ready(),
            Self::ApiKey(_) | Self::Mtls(_) => Ok(()),
        }
    }

    /// The state of the issuer's fetched keys (fetches, failures, age), for metrics; `None`
    /// where no keys are fetched.
    pub fn key_set_state(&self) -> Option<drawbridge_telemetry::metrics::KeySetState> {
        match self {
            Self::Jwt(j) => j.keys().state(),
            Self::Oidc(o) => o.discovered_now().and_then(|d| d.keys().state()),
            Self::ApiKey(_) | Self::Mtls(_) => None,
        }
    }

    /// The challenge scheme a refusal names for it (`WWW-Authenticate`); none for client
    /// certificates, which are asked for by the TLS handshake, not by HTTP, nor for
    /// sessions, which a browser gets by signing in.
    pub fn scheme(&self) -> Option<Scheme> {
        match self {
            Self::Jwt(_) => Some(Scheme::Bearer),
            Self::ApiKey(_) => Some(Scheme::ApiKey),
            Self::Mtls(_) | Self::Oidc(_) => None,
        }
    }

    /// A header other than `Authorization` that carries its credentials; removed before
    /// the request is forwarded.
    pub fn credential_header(&self) -> Option<&HeaderName> {
        match self {
            Self::Jwt(_) | Self::Mtls(_) | Self::Oidc(_) => None,
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
#[derive(Clone)]
pub struct Credentials<'a> {
    /// The request's headers, for authenticators with a header of their own.
    pub headers: &'a HeaderMap,
    /// The token of an `Authorization: Bearer` header: token68 (so ASCII), checked byte by
    /// byte or equal to a token a cache holds, which was.
    bearer: Option<&'a [u8]>,
    /// The key of an `Authorization: ApiKey` header.
    pub api_key: Option<&'a str>,
    /// The client certificate the connection presented, verified by the listener.
    pub client_cert: Option<&'a ClientCert>,
    /// The principal of the bearer token, when the cache of the authenticator it names
    /// holds it valid.
    known: Option<(&'a Authenticator, Arc<Principal>)>,
}

impl<'a> Credentials<'a> {
    /// Reads the credentials in `headers`. Credentials that are there but cannot be read
    /// unambiguously (two `Authorization` headers, a `Bearer` scheme without a token) make
    /// the request malformed.
    pub fn from_headers(headers: &'a HeaderMap) -> Result<Self, AuthError> {
        Self::for_authenticators(headers, &[])
    }

    /// Reads the credentials in `headers` for `authenticators`, as [`Self::from_headers`]
    /// does, except that a bearer token one of their caches holds as valid is not checked
    /// byte by byte again: it was, before it was verified and cached (a hit is equal to it
    /// byte for byte). Its principal is kept for [`authenticate`], which then costs nothing.
    pub fn for_authenticators(
        headers: &'a HeaderMap,
        authenticators: &'a [Arc<Authenticator>],
    ) -> Result<Self, AuthError> {
        let mut creds = Self {
            headers,
            bearer: None,
            api_key: None,
            client_cert: None,
            known: None,
        };
        let mut auth = headers.get_all(header::AUTHORIZATION).iter();
        let Some(value) = auth.next() else {
            return Ok(creds);
        };
        if auth.next().is_some() {
            return Err(AuthError::Malformed("more than one Authorization header"));
        }
        // Bytes, not `to_str`: a token is checked byte by byte below anyway, and this runs
        // on every request of an authenticated route.
        let bytes = value.as_bytes();
        let (scheme, rest) = match bytes.iter().position(|&b| b == b' ') {
            Some(i) => (&bytes[..i], &bytes[i + 1..]),
            None => (bytes, &[][..]),
        };
        let rest = trim_spaces(rest);
        if scheme.eq_ignore_ascii_case(b"apikey") {
            let key = std::str::from_utf8(rest)
                .ok()
                .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or(AuthError::Malformed("ApiKey credentials are not a key"))?;
            creds.api_key = Some(key);
            return Ok(creds);
        }
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            // Another scheme: not a credential this gateway reads.
            return Ok(creds);
        }
        creds.known = cached(authenticators, rest);
        if creds.known.is_none() && (rest.is_empty() || !all_token68(rest)) {
            return Err(AuthError::Malformed("Bearer credentials are not a token"));
        }
        creds.bearer = Some(rest);
        Ok(creds)
    }

    /// The token of an `Authorization: Bearer` header.
    pub fn bearer(&self) -> Option<&'a str> {
        // Always text: token68 is ASCII.
        self.bearer.and_then(|b| std::str::from_utf8(b).ok())
    }

    /// Whether the request carries an `Authorization: Bearer` token.
    pub fn has_bearer(&self) -> bool {
        self.bearer.is_some()
    }
}

impl<'a> Credentials<'a> {
    /// Adds the connection's verified client certificate.
    pub fn with_client_cert(mut self, cert: Option<&'a ClientCert>) -> Self {
        self.client_cert = cert;
        self
    }
}

/// `b` without leading and trailing spaces.
fn trim_spaces(mut b: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' '] = b {
        b = rest;
    }
    b
}

/// Whether every byte is an RFC 9110 §11.2 `token68` character (the trailing `=` padding
/// included). Branch-free per byte, so the compiler vectorises it: every byte of every bearer
/// token goes through here.
fn all_token68(s: &[u8]) -> bool {
    s.iter().fold(true, |ok, &b| {
        let alpha = (b | 0x20).wrapping_sub(b'a') < 26;
        // `-`, `.`, `/` and the digits are one run of ASCII (0x2D to 0x39): one comparison.
        let run = b.wrapping_sub(b'-') <= b'9' - b'-';
        let sym = (b == b'_') | (b == b'~') | (b == b'+') | (b == b'=');
        ok & (alpha | run | sym)
    })
}

/// The principal of `token` when the cache of one of `authenticators` holds it valid, with
/// that authenticator.
fn cached<'a>(
    authenticators: &'a [Arc<Authenticator>],
    token: &[u8],
) -> Option<(&'a Authenticator, Arc<Principal>)> {
    authenticators.iter().find_map(|a| match &**a {
        Authenticator::Jwt(j) => j.cached(token).map(|p| (&**a, p)),
        _ => None,
    })
}

/// Tries `authenticators` in order against `creds`; the first that admits the caller
/// decides. When none does, the refusal of the first credential that was checked is
/// returned, or [`AuthError::Missing`] when the request carried none any of them reads.
pub async fn authenticate(
    authenticators: &[Arc<Authenticator>],
    creds: &Credentials<'_>,
) -> Result<Arc<Principal>, AuthError> {
    // A token seen before costs one lookup, done when the credentials were read for these
    // authenticators, or here.
    // Only from one of these: credentials read for other authenticators admit nobody here.
    if let Some((by, p)) = &creds.known
        && authenticators.iter().any(|a| std::ptr::eq(&**a, *by))
    {
        return Ok(p.clone());
    }
    if let Some((_, p)) = creds.bearer.and_then(|token| cached(authenticators, token)) {
        return Ok(p);
    }
    let mut refusal = None;
    // With several issuers, a token's (unverified) `iss` picks the rules that verify it,
    // read once; with one, verification checks `iss` itself.
    let issuers = authenticators
        .iter()
        .filter(|a| matches!(&***a, Authenticator::Jwt(_)))
        .count();
    let mut issuer: Option<Result<String, Refusal>> = None;
    // A token not in the cache is verified in a box: the verification (keys fetched when
    // unknown) is kilobytes of state every request's future would otherwise carry.
    for a in authenticators {
        let outcome = match &**a {
            Authenticator::Jwt(j) if issuers == 1 => match creds.bearer() {
                Some(token) => Some(Box::pin(j.verify(token)).await),
                None => continue,
            },
            Authenticator::Jwt(j) => {
                let Some(token) = creds.bearer() else {
                    continue;
                };
                match issuer.get_or_insert_with(|| peek_issuer(token)) {
                    Err(r) => Some(Err(r.clone())),
                    Ok(iss) if iss == j.issuer() => Some(Box::pin(j.verify(token)).await),
                    Ok(_) => None,
                }
            }
            Authenticator::ApiKey(k) => k
                .read(creds.headers, creds.api_key)?
                .map(|key| k.verify(key)),
            Authenticator::Mtls(m) => creds.client_cert.map(|c| m.verify(c)),
            // A session is looked up by the caller before it gets here (its store is not
            // this crate's); the provider itself admits nobody per request.
            Authenticator::Oidc(_) => None,
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
        // A credential no authenticator of the route reads: say which, not "none".
        _ if creds.has_bearer() => Err(AuthError::Invalid(Refusal::NotAccepted("a bearer token"))),
        _ if creds.api_key.is_some() => Err(AuthError::Invalid(Refusal::NotAccepted("an API key"))),
        _ => Err(AuthError::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(value: &[u8]) -> Result<(Option<String>, Option<String>), AuthError> {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            http::HeaderValue::from_bytes(value).expect("header value"),
        );
        let c = Credentials::from_headers(&h)?;
        Ok((c.bearer().map(String::from), c.api_key.map(String::from)))
    }

    #[test]
    fn authorization_schemes_are_read_exactly() {
        let bearer = |t: &str| Ok((Some(t.to_string()), None));
        assert_eq!(read(b"Bearer abc.def-_~+/="), bearer("abc.def-_~+/="));
        assert_eq!(read(b"bearer  abc  "), bearer("abc"));
        assert_eq!(read(b"BEARER abc"), bearer("abc"));
        assert_eq!(read(b"ApiKey dbk_x"), Ok((None, Some("dbk_x".into()))));
        assert_eq!(read(b"Basic dXNlcjpwYXNz"), Ok((None, None)));
        // Every byte value at every position of tokens long enough for the vectorised loop
        // and its tail: exactly the token68 set passes.
        for b in 0u8..=255 {
            let expected = b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
            for len in [1, 3, 16, 33, 70] {
                for at in 0..len {
                    let mut token = vec![b'a'; len];
                    token[at] = b;
                    assert_eq!(
                        all_token68(&token),
                        expected,
                        "byte {b:#04x} at {at} of {len}"
                    );
                }
            }
        }
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Bearer a b",
            b"Bearer a,b",
            b"Bearer t\xc3\xb6k",
            b"Bearer \xff\xfe",
            b"Bearer \"abc\"",
            b"ApiKey ",
            b"ApiKey a\xc3\xb6",
        ] {
            assert!(
                matches!(read(bad), Err(AuthError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
