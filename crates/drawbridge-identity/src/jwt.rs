//! Bearer JWTs from one issuer, checked as RFC 8725 asks: the algorithm from the issuer's
//! allow-list, the key by `kid` from the issuer's own JWKS only (a token's `jku`, `x5u`, `x5c`
//! and embedded `jwk` are never looked at), `iss`, `aud`, `exp` and `nbf` with a bounded
//! leeway, a maximum lifetime, no `crit` extension it does not implement, and optionally
//! the `typ`.

use std::sync::Arc;

use base64::Engine as _;
use drawbridge_config::{ClaimMapping, GroupsFormat, JwksSource, JwtIssuer, PrincipalKind};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::cache::{Known, TokenCache};
use crate::error::{BuildError, Refusal};
use crate::jwks::{FetchSettings, KeySource};
use crate::principal::{AuthMethod, Factor, Principal};

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Verifies the tokens of one issuer.
pub struct JwtAuthenticator {
    name: Arc<str>,
    config: JwtIssuer,
    /// The allowed algorithms, each with its ready-made claim validation.
    algorithms: Vec<(Algorithm, Validation)>,
    keys: Arc<KeySource>,
    cache: Option<TokenCache>,
}

impl JwtAuthenticator {
    /// Builds the authenticator `name` from its checked configuration.
    pub fn new(name: &str, config: &JwtIssuer) -> Result<Self, BuildError> {
        let algorithms = validations(
            &config.algorithms,
            &config.issuer,
            &config.audiences,
            config.leeway,
            &["exp", "iss", "aud"],
        )?;
        let keys = match &config.jwks {
            JwksSource::File { path, bytes } => {
                KeySource::from_file(bytes).map_err(|source| BuildError::KeySet {
                    path: path.clone(),
                    source,
                })?
            }
            JwksSource::Url(url) => KeySource::from_url(
                url.clone(),
                FetchSettings {
                    refresh: config.jwks_refresh,
                    cooldown: config.jwks_cooldown,
                    grace: config.jwks_grace,
                    timeout: config.jwks_timeout,
                },
            ),
        };
        Ok(Self {
            name: name.into(),
            config: config.clone(),
            algorithms,
            keys: Arc::new(keys),
            cache: config.cache.then(|| TokenCache::new(config.cache_size)),
        })
    }

    /// The authenticator's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The `iss` its tokens carry.
    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// The configuration it was built from; an unchanged one lets a reload keep it, with
    /// its fetched keys and verified tokens.
    pub fn config(&self) -> &JwtIssuer {
        &self.config
    }

    /// Its key source.
    pub fn keys(&self) -> &Arc<KeySource> {
        &self.keys
    }

    /// The principal of a token verified earlier and still valid, without any other work.
    pub fn cached(&self, token: &[u8]) -> Option<Arc<Principal>> {
        match self.known(token) {
            Known::Valid(p) => Some(p),
            Known::Expired | Known::Unknown => None,
        }
    }

    /// What the cache knows of `token`: valid (while the keys are usable), expired since it
    /// was verified, or nothing.
    fn known(&self, token: &[u8]) -> Known {
        let Some(cache) = self.cache.as_ref() else {
            return Known::Unknown;
        };
        let keys = self.keys.standing();
        match cache.known(token, crate::unix_now(), keys.generation) {
            Known::Valid(_) if keys.usable.is_err() => Known::Unknown,
            Known::Valid(p) => {
                if keys.due {
                    self.keys.refresh_now();
                }
                Known::Valid(p)
            }
            other => other,
        }
    }

    /// Verifies `token` fully and returns its principal.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, Refusal> {
        match self.known(token.as_bytes()) {
            Known::Valid(p) => return Ok(p),
            // Verified before and expired since: refused as verifying it again would.
            Known::Expired => return Err(Refusal::Expired),
            Known::Unknown => {}
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::TooLong(MAX_TOKEN_BYTES));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| refusal(&e, self.issuer()))?;
        // RFC 7519 §4 and RFC 8725 §3.1: a member named twice anywhere in the header or the
        // claims is refused, so no reader takes another value than the one checked here.
        refuse_duplicate_members(token)?;
        if let Some(crit) = &header.crit {
            // This gateway implements no JWS extension, so any critical one is unknown.
            return Err(Refusal::Critical(printable(&crit.join(","))));
        }
        let Some((_, validation)) = self.algorithms.iter().find(|(a, _)| *a == header.alg) else {
            return Err(Refusal::Algorithm(format!("{:?}", header.alg)));
        };
        if let Some(required) = &self.config.token_type {
            let typ = header.typ.as_deref().unwrap_or("");
            if !same_type(typ, required) {
                return Err(Refusal::Type(printable(typ)));
            }
        }
        if header
            .typ
            .as_deref()
            .is_some_and(is_not_an_access_token_type)
        {
            return Err(Refusal::Type(printable(
                header.typ.as_deref().unwrap_or(""),
            )));
        }
        let kid = header.kid.as_deref();
        // The generation of exactly the set that verifies, so a set replaced meanwhile (a key
        // withdrawn) never has this verification cached under its successor.
        let (keys, generation) = self.keys.keys_for(kid).await?;
        let key = keys.find(kid, header.alg)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map_err(|e| refusal(&e, self.issuer()))?;
        let claims = data.claims;
        if let Some(kind) = not_an_access_token(&claims) {
            return Err(Refusal::Claim(kind.into()));
        }
        let now = crate::unix_now();
        let leeway = self.config.leeway.as_secs();
        let exp = number(&claims, "exp").ok_or_else(|| Refusal::Claim("exp".into()))?;
        let iat = match claims.get("iat") {
            None => None,
            Some(_) => Some(number(&claims, "iat").ok_or_else(|| Refusal::Claim("iat".into()))?),
        };
        if iat.is_some_and(|iat| iat > now + leeway) {
            return Err(Refusal::NotYetValid);
        }
        let max = self.config.max_lifetime.as_secs();
        let lifetime = exp.saturating_sub(iat.unwrap_or(now).min(now));
        if lifetime > max {
            return Err(Refusal::Lifetime(max));
        }
        let principal = Arc::new(self.principal(&claims, exp, iat)?);
        if let Some(cache) = &self.cache {
            let nbf = number(&claims, "nbf").unwrap_or(0);
            cache.insert(
                token.as_bytes(),
                principal.clone(),
                (nbf.saturating_sub(leeway), exp.saturating_add(leeway)),
                generation,
                now,
            );
        }
        Ok(principal)
    }

    /// The principal of a token with `claims` (see [`crate::Simulated`]).
    pub(crate) fn simulate(&self, claims: &Map<String, Value>) -> Result<Principal, String> {
        let now = crate::unix_now();
        let iat = number(claims, "iat").or(Some(now));
        let exp = number(claims, "exp").unwrap_or(now + 600);
        self.principal(claims, exp, iat).map_err(|e| e.to_string())
    }

    fn principal(
        &self,
        claims: &Map<String, Value>,
        exp: u64,
        iat: Option<u64>,
    ) -> Result<Principal, Refusal> {
        debug_assert!(self.config.principal != PrincipalKind::ApiKey);
        map_claims(
            Mapped {
                authenticator: &self.name,
                issuer: &self.config.issuer,
                kind: self.config.principal,
                mapping: &self.config.claims,
                method: AuthMethod::Jwt,
            },
            claims,
            exp,
            iat,
        )
    }
}

/// One ready-made validation per allowed algorithm (each checks exactly its algorithm, so a
/// key is never tried with another): asymmetric algorithms only.
pub(crate) fn validations(
    names: &[String],
    issuer: &str,
    audiences: &[String],
    leeway: std::time::Duration,
    required: &[&str],
) -> Result<Vec<(Algorithm, Validation)>, BuildError> {
    let algorithms = names
        .iter()
        .map(|a| {
            a.parse::<Algorithm>()
                .map_err(|source| BuildError::Algorithm {
                    name: a.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if algorithms.is_empty() {
        return Err(BuildError::NoAlgorithm);
    }
    if algorithms
        .iter()
        .any(|a| a.family() == jsonwebtoken::AlgorithmFamily::Hmac)
    {
        return Err(BuildError::SharedSecret);
    }
    Ok(algorithms
        .into_iter()
        .map(|alg| {
            let mut v = Validation::new(alg);
            v.set_issuer(&[issuer]);
            v.set_audience(audiences);
            v.set_required_spec_claims(required);
            v.leeway = leeway.as_secs();
            v.validate_exp = true;
            v.validate_nbf = true;
            v.validate_aud = true;
            (alg, v)
        })
        .collect())
}

/// Who a verified token's claims stand for, and how they are read.
pub(crate) struct Mapped<'a> {
    pub authenticator: &'a Arc<str>,
    pub issuer: &'a str,
    pub kind: PrincipalKind,
    pub mapping: &'a ClaimMapping,
    pub method: AuthMethod,
}

/// The principal a verified token's `claims` make through `m.mapping`: the same for a
/// bearer JWT and an ID token, so policies see a person the same way however they came.
pub(crate) fn map_claims(
    m: Mapped<'_>,
    claims: &Map<String, Value>,
    exp: u64,
    iat: Option<u64>,
) -> Result<Principal, Refusal> {
    let ClaimMapping {
        id,
        groups,
        groups_format,
        attributes,
        trusted_mfa,
    } = m.mapping;
    let principal_id = match claims.get(id) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 1024 => s.clone(),
        _ => return Err(Refusal::Claim(id.clone())),
    };
    // The claim has the shape the mapping declares, or the token is refused: a role
    // string `"admin user"` is never split into two groups unless the mapping says so.
    let groups = match (groups.as_ref().map(|g| (g, claims.get(g))), groups_format) {
        (None | Some((_, None)), _) => Vec::new(),
        (Some((_, Some(Value::String(s)))), GroupsFormat::SpaceSeparated) => s
            .split(' ')
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect(),
        (Some((name, Some(Value::Array(items)))), GroupsFormat::Array) => items
            .iter()
            .map(|v| v.as_str().filter(|s| !s.is_empty()).map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Refusal::Claim(name.clone()))?,
        (Some((name, Some(_))), _) => return Err(Refusal::Claim(name.clone())),
    };
    let attributes = attributes
        .iter()
        .filter_map(|a| claims.get(a).map(|v| (a.clone(), v.clone())))
        .collect();
    Ok(Principal {
        id: principal_id,
        kind: m.kind,
        authenticator: m.authenticator.clone(),
        issuer: Some(m.issuer.to_string()),
        groups,
        attributes,
        methods: vec![m.method],
        authenticated_at: number(claims, "auth_time").or(iat),
        expires_at: Some(exp),
        factors: idp_factor(trusted_mfa, claims).into_iter().collect(),
    })
}

/// The second factor a token says its issuer checked, when the authenticator trusts what it
/// says (`trusted_mfa`): a trusted `amr` member or `acr` value, at the token's `auth_time`.
/// Without `auth_time` nothing counts: a factor of unknown age satisfies no maximum age.
fn idp_factor(
    trusted: &drawbridge_config::TrustedMfa,
    claims: &Map<String, Value>,
) -> Option<Factor> {
    if trusted.is_empty() {
        return None;
    }
    let at = number(claims, "auth_time")?;
    let by_amr = match claims.get("amr") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .any(|v| trusted.amr.iter().any(|t| t == v)),
        _ => false,
    };
    let by_acr = claims
        .get("acr")
        .and_then(Value::as_str)
        .is_some_and(|v| trusted.acr.iter().any(|t| t == v));
    (by_amr || by_acr).then_some(Factor {
        method: drawbridge_config::MfaMethod::Idp,
        at,
    })
}

/// Refuses a token whose header or claims name a member twice, at any depth.
pub(crate) fn refuse_duplicate_members(token: &str) -> Result<(), Refusal> {
    let mut parts = token.split('.');
    for (part, what) in [(parts.next(), "header"), (parts.next(), "claims")] {
        let bytes = part
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .ok_or_else(|| Refusal::Malformed(format!("{what} is not base64url")))?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde::de::DeserializeSeed::deserialize(UniqueMembers, &mut de)
            .and_then(|()| de.end())
            .map_err(|e| Refusal::Malformed(format!("{what}: {e}")))?;
    }
    Ok(())
}

/// Walks a JSON value and fails on an object that names a member twice.
#[derive(Clone, Copy)]
struct UniqueMembers;

impl<'de> serde::de::DeserializeSeed<'de> for UniqueMembers {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueMembers {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON without duplicate member names")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format_args!(
                    "member `{}` appears twice",
                    printable(&key)
                )));
            }
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

/// Header `typ` values of tokens that are not access tokens: ID tokens, refresh and logout
/// tokens, security events, DPoP proofs.
fn is_not_an_access_token_type(typ: &str) -> bool {
    let t = typ.to_ascii_lowercase();
    let t = t.strip_prefix("application/").unwrap_or(&t);
    matches!(
        t,
        "id_token"
            | "id+jwt"
            | "idtoken"
            | "refresh"
            | "refresh+jwt"
            | "logout+jwt"
            | "secevent+jwt"
            | "dpop+jwt"
            | "jwt-bearer+jwt"
    )
}

/// What a token says it is, when that is not an access token: Cognito's `token_use`
/// (`id`, `refresh`), Keycloak's `typ` claim (`ID`, `Refresh`, `Offline`, `Logout`), or the
/// hashes only an OpenID Connect ID token carries (`at_hash`, `c_hash`).
fn not_an_access_token(claims: &Map<String, Value>) -> Option<&'static str> {
    let text = |name: &str| {
        claims
            .get(name)
            .map(|v| v.as_str().map(str::to_ascii_lowercase))
    };
    if let Some(used) = text("token_use")
        && used.as_deref() != Some("access")
    {
        return Some("token_use");
    }
    if let Some(typ) = text("typ")
        && !matches!(typ.as_deref(), Some("bearer" | "at+jwt" | "jwt"))
    {
        return Some("typ");
    }
    if claims.contains_key("at_hash") || claims.contains_key("c_hash") {
        return Some("at_hash");
    }
    None
}

/// The `iss` a token claims, read without verifying anything: only to choose which issuer's
/// rules verify it.
pub fn peek_issuer(token: &str) -> Result<String, Refusal> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refusal::TooLong(MAX_TOKEN_BYTES));
    }
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed("not three dot-separated parts".into()));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| Refusal::Malformed("payload is not base64url".into()))?;
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let iss: Iss = serde_json::from_slice(&bytes)
        .map_err(|_| Refusal::Malformed("payload is not a JSON object".into()))?;
    iss.iss.ok_or_else(|| Refusal::Claim("iss".into()))
}

pub(crate) fn refusal(e: &jsonwebtoken::errors::Error, issuer: &str) -> Refusal {
    match e.kind() {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidAlgorithmName => Refusal::Malformed(e.to_string()),
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidAudience => Refusal::Audience,
        ErrorKind::InvalidIssuer => Refusal::Issuer(format!("not `{issuer}`")),
        ErrorKind::MissingRequiredClaim(c) => Refusal::Claim(c.clone()),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            Refusal::Algorithm("(mismatch)".into())
        }
        _ => Refusal::Signature,
    }
}

/// A numeric date claim as whole seconds; fractions are cut, negatives refused.
pub(crate) fn number(claims: &Map<String, Value>, name: &str) -> Option<u64> {
    let v = claims.get(name)?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.is_finite())
            .map(|f| f as u64)
    })
}

/// `typ` values compare without case and without the `application/` prefix (RFC 7515 §4.1.9).
fn same_type(got: &str, want: &str) -> bool {
    let strip = |s: &str| {
        let l = s.to_ascii_lowercase();
        l.strip_prefix("application/")
            .map(String::from)
            .unwrap_or(l)
    };
    strip(got) == strip(want)
}

pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
