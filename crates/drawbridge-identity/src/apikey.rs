//! API keys for scripts and services. A key reads `dbk_<id>_<secret>`: the id finds the
//! entry in the keys file, and the whole key is checked against the entry's HMAC-SHA256
//! under the server secret, in constant time. The keys file never holds a key, so reading it
//! gives an attacker nothing to present.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::hmac;
use base64::Engine as _;
use drawbridge_config::{ApiKeyEntry, ApiKeyHeader, ApiKeys, PrincipalKind};
use http::{HeaderMap, HeaderName};
use serde_json::{Map, Value};

use crate::error::{AuthError, BuildError, Refusal};
use crate::principal::{AuthMethod, Principal};

/// The prefix of every key, so they are recognisable in a leaked file or a secret scanner.
pub const KEY_PREFIX: &str = "dbk_";

/// Checks API keys against one keys file.
pub struct ApiKeyAuthenticator {
    name: Arc<str>,
    config: ApiKeys,
    header: Option<HeaderName>,
    secret: hmac::Key,
    by_id: HashMap<String, Entry>,
}

struct Entry {
    hash: [u8; 32],
    expires: Option<u64>,
    principal: Arc<Principal>,
}

impl ApiKeyAuthenticator {
    /// Builds the authenticator `name` from its checked configuration.
    pub fn new(name: &str, config: &ApiKeys) -> Result<Self, BuildError> {
        let name: Arc<str> = name.into();
        let header = match &config.header {
            ApiKeyHeader::Authorization => None,
            ApiKeyHeader::Named(h) => Some(HeaderName::from_bytes(h.as_bytes()).map_err(
                |source| BuildError::Header {
                    name: h.clone(),
                    source,
                },
            )?),
        };
        let by_id = config
            .keys
            .iter()
            .map(|k| (k.id.clone(), entry(&name, k)))
            .collect();
        Ok(Self {
            secret: hmac::Key::new(hmac::HMAC_SHA256, config.secret.expose()),
            name,
            config: config.clone(),
            header,
            by_id,
        })
    }

    /// The authenticator's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &ApiKeys {
        &self.config
    }

    /// The header its keys travel in, other than `Authorization`; removed before forwarding.
    pub fn header(&self) -> Option<&HeaderName> {
        self.header.as_ref()
    }

    /// The key a request carries for this authenticator, if any.
    pub fn read<'a>(
        &self,
        headers: &'a HeaderMap,
        authorization_key: Option<&'a str>,
    ) -> Result<Option<&'a str>, AuthError> {
        let Some(name) = &self.header else {
            return Ok(authorization_key);
        };
        let mut values = headers.get_all(name).iter();
        let Some(v) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(AuthError::Malformed("more than one API key header"));
        }
        let key = v
            .to_str()
            .map_err(|_| AuthError::Malformed("API key is not ASCII"))?
            .trim();
        if key.is_empty() {
            return Err(AuthError::Malformed("empty API key header"));
        }
        Ok(Some(key))
    }

    /// The principal of the key named `name` in the keys file (see [`crate::Simulated`]).
    pub(crate) fn simulate(&self, name: &str) -> Result<Principal, String> {
        let k = self
            .config
            .keys
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| {
                format!(
                    "no key is named `{name}` in `{}`",
                    self.config.keys_file.display()
                )
            })?;
        Ok((*entry(&self.name, k).principal).clone())
    }

    /// The principal holding `key`.
    pub fn verify(&self, key: &str) -> Result<Arc<Principal>, Refusal> {
        let id = key_id(key).ok_or(Refusal::ApiKey("not a Drawbridge API key"))?;
        let Some(entry) = self.by_id.get(id) else {
            return Err(Refusal::ApiKey("no key with this id"));
        };
        // Constant time in the key's bytes: a mismatch says nothing of where it differs.
        hmac::verify(&self.secret, key.as_bytes(), &entry.hash)
            .map_err(|_| Refusal::ApiKey("key does not match its id"))?;
        if entry.expires.is_some_and(|e| crate::unix_now() >= e) {
            return Err(Refusal::ApiKey("key expired"));
        }
        Ok(entry.principal.clone())
    }
}

fn entry(authenticator: &Arc<str>, k: &ApiKeyEntry) -> Entry {
    let mut attributes: Map<String, Value> = k
        .attributes
        .iter()
        .map(|(n, v)| (n.clone(), Value::String(v.clone())))
        .collect();
    attributes.insert("key_name".into(), Value::String(k.name.clone()));
    Entry {
        hash: k.hash,
        expires: k.expires,
        principal: Arc::new(Principal {
            id: k.principal.clone(),
            kind: PrincipalKind::ApiKey,
            authenticator: authenticator.clone(),
            issuer: None,
            groups: k.groups.clone(),
            attributes,
            methods: vec![AuthMethod::ApiKey],
            authenticated_at: None,
            expires_at: k.expires,
            factors: Vec::new(),
        }),
    }
}

/// The id of a well-formed key: `dbk_` + 16 hex digits + `_` + 43 base64url characters.
fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(id)
}

/// A new key and its keys-file entry, for `drawbridge apikey new`.
pub struct NewKey {
    /// The key, shown once.
    pub key: String,
    /// Its id.
    pub id: String,
    /// HMAC-SHA256 of the key under the secret, hex.
    pub hash: String,
}

/// Makes a new random key and its hash under `secret`.
pub fn new_key(secret: &[u8]) -> Result<NewKey, String> {
    let mut id = [0u8; 8];
    let mut body = [0u8; 32];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| "no randomness".to_string())?;
    aws_lc_rs::rand::fill(&mut body).map_err(|_| "no randomness".to_string())?;
    let id = base16ct::lower::encode_string(&id);
    let key = format!(
        "{KEY_PREFIX}{id}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body)
    );
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), key.as_bytes());
    let hash = base16ct::lower::encode_string(tag.as_ref());
    Ok(NewKey { key, id, hash })
}

/// A new server secret: 32 random bytes, base64url.
pub fn new_secret() -> Result<String, String> {
    let mut s = [0u8; 32];
    aws_lc_rs::rand::fill(&mut s).map_err(|_| "no randomness".to_string())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s))
}
