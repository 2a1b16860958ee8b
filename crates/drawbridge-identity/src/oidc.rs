//! An OpenID provider people sign in at: its discovery document, the authorization request
//! (code flow, PKCE S256), the code and refresh-token exchanges, and the ID token checked as
//! strictly as a bearer JWT (RFC 8725) plus what OpenID Connect Core §3.1.3.7 adds (`aud`
//! is our client id, `azp`, `nonce`, `iat`).
//!
//! The ID token is verified by the same JOSE library, key sets and claim mapping as bearer
//! JWTs, so a person is the same principal whether a browser session or a token brought
//! them. The provider's HTTP calls go through Drawbridge's own bounded client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use drawbridge_config::{ClientAuthentication, JwksUrl, OidcProvider, PrincipalKind};
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::error::{BuildError, Refusal};
use crate::fetch::{FetchError, Fetcher};
use crate::jwks::{FetchSettings, KeySource};
use crate::jwt::{Mapped, map_claims, number, printable, refusal, refuse_duplicate_members};
use crate::principal::{AuthMethod, Principal};

/// Longest ID token accepted, in bytes (they carry more claims than access tokens).
const MAX_ID_TOKEN_BYTES: usize = 16 * 1024;

/// Least time between two attempts to read a discovery document that failed.
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// How long a discovery document is used before it is read again.
const DISCOVERY_REFRESH: Duration = Duration::from_secs(3600);

/// One OpenID provider.
pub struct OidcAuthenticator {
    name: Arc<str>,
    config: OidcProvider,
    discovery: Fetcher,
    discovered: ArcSwapOption<Discovered>,
    /// One discovery at a time, and when the last one started.
    discovering: tokio::sync::Mutex<Option<Instant>>,
    validations: Vec<(Algorithm, Validation)>,
    /// With `private_key_jwt`, the key client assertions are signed with.
    assertion_key: Option<(EncodingKey, Header)>,
}

/// What the provider's discovery document says, checked.
pub struct Discovered {
    authorization_endpoint: url::Url,
    token: Fetcher,
    token_endpoint: String,
    end_session_endpoint: Option<url::Url>,
    /// RFC 9207: the provider sends `iss` with its authorization responses, so one that
    /// lacks it is refused.
    iss_parameter: bool,
    keys: Arc<KeySource>,
    at: Instant,
}

/// What a token endpoint answered: the ID token, and the tokens a session keeps.
pub struct Tokens {
    /// The ID token, verified only by [`OidcAuthenticator::verify_id_token`].
    pub id_token: Option<String>,
    /// The refresh token, when the provider issued one.
    pub refresh_token: Option<Zeroizing<String>>,
    /// Seconds the access token lives, when the provider said.
    pub expires_in: Option<u64>,
}

/// A verified ID token: the principal it makes and what a session needs of it.
pub struct IdToken {
    /// The principal, through the authenticator's claim mapping.
    pub principal: Principal,
    /// `sub`: the same person across refreshes.
    pub subject: String,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
    /// The provider's session id (`sid`), for logout.
    pub sid: Option<String>,
}

/// Why a sign-in or a refresh failed. The person sees none of it; the log does.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The discovery document could not be had, or says something unacceptable.
    #[error("discovery: {0}")]
    Discovery(String),
    /// The provider could not be reached.
    #[error("{what}: {source}")]
    Fetch {
        /// Which call.
        what: &'static str,
        /// Why.
        #[source]
        source: FetchError,
    },
    /// The provider answered with an OAuth error (`invalid_grant`...), or not with JSON.
    #[error("{what}: provider answered {status}: {error}")]
    Provider {
        /// Which call.
        what: &'static str,
        /// The HTTP status.
        status: u16,
        /// The OAuth `error` code, or what was wrong with the answer.
        error: String,
    },
    /// The ID token was refused.
    #[error("id token: {0}")]
    IdToken(#[from] Refusal),
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    end_session_endpoint: Option<String>,
    code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
    token_type: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
}

impl OidcAuthenticator {
    /// Builds the authenticator `name` from its checked configuration; nothing is fetched
    /// until [`OidcAuthenticator::prefetch`] or the first sign-in.
    pub fn new(name: &str, config: &OidcProvider) -> Result<Self, BuildError> {
        let validations = crate::jwt::validations(
            &config.algorithms,
            &config.issuer,
            std::slice::from_ref(&config.client_id),
            config.leeway,
            &["exp", "iat", "iss", "aud", "sub"],
        )?;
        let assertion_key = match &config.client_auth {
            ClientAuthentication::SecretBasic { .. } => None,
            ClientAuthentication::PrivateKeyJwt { key, key_id, .. } => {
                let (encoding, alg) = client_key(key.expose())?;
                let mut header = Header::new(alg);
                header.kid = key_id.clone();
                Some((encoding, header))
            }
        };
        Ok(Self {
            name: name.into(),
            assertion_key,
            discovery: Fetcher::new(config.discovery.clone(), config.timeout),
            config: config.clone(),
            discovered: ArcSwapOption::empty(),
            discovering: tokio::sync::Mutex::new(None),
            validations,
        })
    }

    /// Its name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &OidcProvider {
        &self.config
    }

    /// The provider's issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Reads the discovery document and the provider's keys ahead of the first sign-in.
    pub async fn prefetch(&self) {
        if let Ok(d) = self.discovered().await {
            d.keys.prefetch().await;
        }
    }

    /// Whether people can sign in now: the discovery document read and the keys usable.
    pub fn ready(&self) -> Result<(), String> {
        match self.discovered.load().as_ref() {
            None => Err("discovery document not read yet".into()),
            Some(d) => d.keys.usable().map_err(|e| e.to_string()),
        }
    }

    /// The discovery document read last, without reading it now.
    pub fn discovered_now(&self) -> Option<Arc<Discovered>> {
        self.discovered.load_full()
    }

    /// The checked discovery document: read now when never read (or too old), at most once
    /// per [`DISCOVERY_RETRY`] while it fails.
    pub async fn discovered(&self) -> Result<Arc<Discovered>, OidcError> {
        if let Some(d) = self.discovered.load_full()
            && d.at.elapsed() < DISCOVERY_REFRESH
        {
            return Ok(d);
        }
        let mut last = self.discovering.lock().await;
        let current = self.discovered.load_full();
        if let Some(d) = &current
            && d.at.elapsed() < DISCOVERY_REFRESH
        {
            return Ok(d.clone());
        }
        if last.is_some_and(|t| t.elapsed() < DISCOVERY_RETRY) {
            // A document read before stays in use while a newer one cannot be had.
            return current
                .ok_or_else(|| OidcError::Discovery("not available (retrying shortly)".into()));
        }
        *last = Some(Instant::now());
        match self.discover().await {
            Ok(d) => {
                let d = Arc::new(d);
                self.discovered.store(Some(d.clone()));
                Ok(d)
            }
            Err(e) => {
                tracing::warn!(authenticator = %self.name, error = %e, "OpenID provider discovery failed");
                current.ok_or(e)
            }
        }
    }

    async fn discover(&self) -> Result<Discovered, OidcError> {
        let bytes = self
            .discovery
            .get()
            .await
            .map_err(|source| OidcError::Fetch {
                what: "discovery",
                source,
            })?;
        let m: Metadata = serde_json::from_slice(&bytes)
            .map_err(|e| OidcError::Discovery(format!("not a discovery document: {e}")))?;
        // OpenID Connect Discovery §4.3: exactly the issuer configured.
        if m.issuer != self.config.issuer {
            return Err(OidcError::Discovery(format!(
                "names issuer `{}`, not `{}`",
                printable(&m.issuer),
                self.config.issuer
            )));
        }
        if let Some(methods) = &m.code_challenge_methods_supported
            && !methods.iter().any(|x| x == "S256")
        {
            return Err(OidcError::Discovery(
                "the provider does not support PKCE with S256".into(),
            ));
        }
        let endpoint = |what: &str, s: &str| -> Result<(JwksUrl, url::Url), OidcError> {
            let checked = drawbridge_config::https_url(s)
                .map_err(|e| OidcError::Discovery(format!("{what}: {e}")))?;
            let parsed =
                url::Url::parse(s).map_err(|e| OidcError::Discovery(format!("{what}: {e}")))?;
            Ok((
                JwksUrl {
                    ca: self.config.discovery.ca.clone(),
                    ..checked
                },
                parsed,
            ))
        };
        let (_, authorization_endpoint) =
            endpoint("authorization_endpoint", &m.authorization_endpoint)?;
        let (token, _) = endpoint("token_endpoint", &m.token_endpoint)?;
        let (jwks, _) = endpoint("jwks_uri", &m.jwks_uri)?;
        let end_session_endpoint = match &m.end_session_endpoint {
            Some(e) => Some(endpoint("end_session_endpoint", e)?.1),
            None => None,
        };
        let keys = KeySource::from_url(
            jwks,
            FetchSettings {
                refresh: self.config.jwks_refresh,
                cooldown: self.config.jwks_cooldown,
                grace: self.config.jwks_grace,
                timeout: self.config.timeout,
            },
        );
        Ok(Discovered {
            authorization_endpoint,
            token_endpoint: token.url.clone(),
            token: Fetcher::new(token, self.config.timeout),
            end_session_endpoint,
            iss_parameter: m.authorization_response_iss_parameter_supported,
            keys: Arc::new(keys),
            at: Instant::now(),
        })
    }

    /// Where to send a browser to sign in: the authorization request of the code flow,
    /// with PKCE S256 (`challenge` is the verifier's SHA-256, base64url).
    pub fn authorization_url(
        &self,
        d: &Discovered,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: &str,
    ) -> String {
        let mut url = d.authorization_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &self.config.scopes.join(" "))
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        url.into()
    }

    /// RFC 9207: whether an authorization response's `iss` (if any) lets it through. A
    /// provider that advertises the parameter must send it; whichever sends it must send
    /// its own issuer, so a response from another provider (mix-up) is refused.
    pub fn accepts_response_issuer(&self, d: &Discovered, iss: Option<&str>) -> bool {
        match iss {
            Some(iss) => iss == self.config.issuer,
            None => !d.iss_parameter,
        }
    }

    /// Where to send a browser to sign out at the provider, when it supports RP-initiated
    /// logout.
    pub fn logout_url(
        &self,
        d: &Discovered,
        id_token_hint: Option<&str>,
        post_logout_redirect_uri: &str,
    ) -> Option<String> {
        let mut url = d.end_session_endpoint.clone()?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("client_id", &self.config.client_id);
            if let Some(hint) = id_token_hint {
                q.append_pair("id_token_hint", hint);
            }
            q.append_pair("post_logout_redirect_uri", post_logout_redirect_uri);
        }
        Some(url.into())
    }

    /// Exchanges an authorization code (RFC 6749 §4.1.3, with the PKCE verifier).
    pub async fn exchange_code(
        &self,
        d: &Discovered,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<Tokens, OidcError> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("code_verifier", verifier)
            .finish();
        self.token_request(d, "code exchange", form).await
    }

    /// Uses a refresh token (RFC 6749 §6).
    pub async fn refresh(&self, d: &Discovered, refresh_token: &str) -> Result<Tokens, OidcError> {
        let form = Zeroizing::new(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", refresh_token)
                .finish(),
        );
        self.token_request(d, "refresh", form.to_string()).await
    }

    async fn token_request(
        &self,
        d: &Discovered,
        what: &'static str,
        form: String,
    ) -> Result<Tokens, OidcError> {
        let mut form = form;
        let basic = match (&self.config.client_auth, &self.assertion_key) {
            // RFC 6749 §2.3.1: client_secret_basic, id and secret form-encoded first.
            (ClientAuthentication::SecretBasic { secret, .. }, _) => {
                let enc = |b: &[u8]| url::form_urlencoded::byte_serialize(b).collect::<String>();
                let secret = Zeroizing::new(enc(secret.expose()));
                Some(Zeroizing::new(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!(
                        "{}:{}",
                        enc(self.config.client_id.as_bytes()),
                        secret.as_str()
                    ))
                )))
            }
            // RFC 7523 §2.2 and OpenID Connect Core §9: a JWT about ourselves, for the token
            // endpoint only, valid a minute, never reused.
            (ClientAuthentication::PrivateKeyJwt { .. }, Some((key, header))) => {
                let now = crate::unix_now();
                let mut jti = [0u8; 16];
                aws_lc_rs::rand::fill(&mut jti).map_err(|_| OidcError::Provider {
                    what,
                    status: 0,
                    error: "no randomness for the client assertion".into(),
                })?;
                let claims = serde_json::json!({
                    "iss": self.config.client_id, "sub": self.config.client_id,
                    "aud": d.token_endpoint, "iat": now, "exp": now + 60,
                    "jti": base16ct::lower::encode_string(&jti),
                });
                let assertion = jsonwebtoken::encode(header, &claims, key).map_err(|e| {
                    OidcError::Provider {
                        what,
                        status: 0,
                        error: format!("client assertion: {e}"),
                    }
                })?;
                form.push('&');
                form.push_str(
                    &url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("client_id", &self.config.client_id)
                        .append_pair(
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        )
                        .append_pair("client_assertion", &assertion)
                        .finish(),
                );
                None
            }
            (ClientAuthentication::PrivateKeyJwt { .. }, None) => {
                return Err(OidcError::Provider {
                    what,
                    status: 0,
                    error: "no client key".into(),
                });
            }
        };
        let (status, body) = d
            .token
            .post_form(form, basic.as_deref().map(String::as_str))
            .await
            .map_err(|source| OidcError::Fetch { what, source })?;
        if !status.is_success() {
            let error = serde_json::from_slice::<ErrorResponse>(&body)
                .map(|e| printable(&e.error))
                .unwrap_or_else(|_| "(no OAuth error)".into());
            return Err(OidcError::Provider {
                what,
                status: status.as_u16(),
                error,
            });
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| OidcError::Provider {
            what,
            status: status.as_u16(),
            error: format!("not a token response: {e}"),
        })?;
        if !t
            .token_type
            .as_deref()
            .is_some_and(|tt| tt.eq_ignore_ascii_case("bearer") || tt.eq_ignore_ascii_case("dpop"))
        {
            return Err(OidcError::Provider {
                what,
                status: status.as_u16(),
                error: "token_type missing or unknown".into(),
            });
        }
        Ok(Tokens {
            id_token: t.id_token,
            refresh_token: t.refresh_token.map(Zeroizing::new),
            expires_in: t.expires_in,
        })
    }

    /// Verifies an ID token: signature by the provider's keys with an allowed algorithm,
    /// `iss`, `aud` holding our client id (and `azp` naming it where present or where
    /// `aud` names others), `exp`, `iat`, `nbf`, a bounded lifetime, `nonce` equal to the
    /// one sent (when `nonce` is given), the allowed email domains, then the claim mapping.
    pub async fn verify_id_token(
        &self,
        d: &Discovered,
        token: &str,
        nonce: Option<&str>,
    ) -> Result<IdToken, Refusal> {
        if token.len() > MAX_ID_TOKEN_BYTES {
            return Err(Refusal::TooLong(MAX_ID_TOKEN_BYTES));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| refusal(&e, self.issuer()))?;
        refuse_duplicate_members(token)?;
        if let Some(crit) = &header.crit {
            return Err(Refusal::Critical(printable(&crit.join(","))));
        }
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(Refusal::Algorithm(format!("{:?}", header.alg)));
        };
        let kid = header.kid.as_deref();
        let (keys, _) = d.keys.keys_for(kid).await?;
        let key = keys.find(kid, header.alg)?;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map_err(|e| refusal(&e, self.issuer()))?
            .claims;
        let client_id = self.config.client_id.as_str();
        let others = match claims.get("aud") {
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() != Some(client_id)),
            _ => false,
        };
        match claims.get("azp") {
            None if !others => {}
            Some(Value::String(azp)) if azp == client_id => {}
            _ => return Err(Refusal::Claim("azp".into())),
        }
        if let Some(expected) = nonce {
            match claims.get("nonce") {
                Some(Value::String(n))
                    if drawbridge_config::constant_time_eq(n.as_bytes(), expected.as_bytes()) => {}
                _ => return Err(Refusal::Claim("nonce".into())),
            }
        }
        let now = crate::unix_now();
        let leeway = self.config.leeway.as_secs();
        let exp = number(&claims, "exp").ok_or_else(|| Refusal::Claim("exp".into()))?;
        let iat = number(&claims, "iat").ok_or_else(|| Refusal::Claim("iat".into()))?;
        if iat > now + leeway {
            return Err(Refusal::NotYetValid);
        }
        let max = self.config.max_lifetime.as_secs();
        if exp.saturating_sub(iat.min(now)) > max {
            return Err(Refusal::Lifetime(max));
        }
        self.email_allowed(&claims)?;
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
            _ => return Err(Refusal::Claim("sub".into())),
        };
        let principal = map_claims(
            Mapped {
                authenticator: &self.name,
                issuer: &self.config.issuer,
                kind: PrincipalKind::User,
                mapping: &self.config.claims,
                method: AuthMethod::Oidc,
            },
            &claims,
            exp,
            Some(iat),
        )?;
        Ok(IdToken {
            principal,
            subject,
            expires_at: exp,
            sid: claims
                .get("sid")
                .and_then(Value::as_str)
                .filter(|s| s.len() <= 255)
                .map(String::from),
        })
    }

    /// The principal a person with ID-token `claims` would be (for `drawbridge test`).
    pub(crate) fn simulate(&self, claims: &Map<String, Value>) -> Result<Principal, String> {
        let now = crate::unix_now();
        self.email_allowed(claims).map_err(|e| e.to_string())?;
        map_claims(
            Mapped {
                authenticator: &self.name,
                issuer: &self.config.issuer,
                kind: PrincipalKind::User,
                mapping: &self.config.claims,
                method: AuthMethod::Oidc,
            },
            claims,
            number(claims, "exp").unwrap_or(now + 600),
            number(claims, "iat").or(Some(now)),
        )
        .map_err(|e| e.to_string())
    }

    /// With `allowed_email_domains`, a verified `email` in one of them (compared exactly,
    /// without case: a subdomain is another domain); with `required_claims`, each claim
    /// with one of its values.
    fn email_allowed(&self, claims: &Map<String, Value>) -> Result<(), Refusal> {
        for (name, values) in &self.config.required_claims {
            let held = match claims.get(name) {
                Some(Value::String(s)) => values.contains(s),
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|i| i.as_str().is_some_and(|s| values.iter().any(|v| v == s))),
                _ => false,
            };
            if !held {
                return Err(Refusal::Claim(name.clone()));
            }
        }
        let allowed = &self.config.allowed_email_domains;
        if allowed.is_empty() {
            return Ok(());
        }
        if claims.get("email_verified") != Some(&Value::Bool(true)) {
            return Err(Refusal::Claim("email_verified".into()));
        }
        let domain = claims
            .get("email")
            .and_then(Value::as_str)
            .and_then(|e| e.rsplit_once('@'))
            .map(|(local, d)| (local, d.to_ascii_lowercase()))
            .filter(|(local, _)| !local.is_empty())
            .map(|(_, d)| d);
        match domain {
            Some(d) if allowed.contains(&d) => Ok(()),
            _ => Err(Refusal::Claim("email".into())),
        }
    }
}

impl Discovered {
    /// The provider's keys.
    pub fn keys(&self) -> &Arc<KeySource> {
        &self.keys
    }
}

/// The signing key and algorithm of a client's PKCS#8 key: ES256 for P-256, EdDSA for
/// Ed25519, RS256 for RSA.
fn client_key(pkcs8: &[u8]) -> Result<(EncodingKey, Algorithm), BuildError> {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair,
    };
    if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).is_ok() {
        return Ok((EncodingKey::from_ec_der(pkcs8), Algorithm::ES256));
    }
    if Ed25519KeyPair::from_pkcs8(pkcs8).is_ok() {
        return Ok((EncodingKey::from_ed_der(pkcs8), Algorithm::EdDSA));
    }
    if RsaKeyPair::from_pkcs8(pkcs8).is_ok() {
        // jsonwebtoken takes RSA keys as PEM (it signs with their PKCS#1 form).
        let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8);
        let mut pem = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        return EncodingKey::from_rsa_pem(pem.as_bytes())
            .map(|k| (k, Algorithm::RS256))
            .map_err(|_| BuildError::ClientKey);
    }
    Err(BuildError::ClientKey)
}
