//! The authenticated caller.

use std::sync::Arc;

use drawbridge_config::PrincipalKind;
use serde_json::{Map, Value};

use crate::assertion::AssertionCache;

/// A caller whose credentials were verified.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Its id within its issuer (a JWT's `sub` by default).
    pub id: String,
    /// Person, workload or API key.
    pub kind: PrincipalKind,
    /// The authenticator that admitted it.
    pub authenticator: Arc<str>,
    /// Who vouched for it: a token's `iss`.
    pub issuer: Option<String>,
    /// Groups or roles its credentials carry.
    pub groups: Vec<String>,
    /// Attributes copied from its credentials (tenant, email, scope...).
    pub attributes: Map<String, Value>,
    /// How it proved who it is.
    pub methods: Vec<AuthMethod>,
    /// When it authenticated (a token's `auth_time`, else `iat`), Unix seconds.
    pub authenticated_at: Option<u64>,
    /// When its credential stops being valid, Unix seconds.
    pub expires_at: Option<u64>,
    /// Identity assertions already minted for it, by upstream.
    pub assertions: AssertionCache,
}

impl Principal {
    /// A principal used only to check, at start, that a signing key works.
    pub(crate) fn anonymous_probe() -> Principal {
        Principal {
            id: "probe".into(),
            kind: PrincipalKind::Service,
            authenticator: "probe".into(),
            issuer: None,
            groups: Vec::new(),
            attributes: Map::new(),
            methods: Vec::new(),
            authenticated_at: None,
            expires_at: None,
            assertions: AssertionCache::default(),
        }
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A bearer JWT.
    Jwt,
    /// An API key.
    ApiKey,
    /// A client certificate (mutual TLS).
    Mtls,
}

impl AuthMethod {
    /// The name used in identity assertions and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Mtls => "mtls",
        }
    }
}
