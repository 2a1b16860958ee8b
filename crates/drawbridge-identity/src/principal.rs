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
    /// What other layers derived from it once and keep with it (the policy layer's entity).
    pub derived: Derived,
}

impl Principal {
    /// The caller of a public route whose policies decide: nobody in particular, with no
    /// groups or attributes (`Anonymous::"anonymous"` to the policies).
    pub fn anonymous() -> Principal {
        Principal {
            id: "anonymous".into(),
            kind: PrincipalKind::Anonymous,
            authenticator: "anonymous".into(),
            issuer: None,
            groups: Vec::new(),
            attributes: Map::new(),
            methods: Vec::new(),
            authenticated_at: None,
            expires_at: None,
            assertions: AssertionCache::default(),
            derived: Derived::default(),
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

// === impl Derived ===

/// One value another layer computes from a principal and keeps with it, so that a caller
/// whose credential is cached costs no rebuild. Tagged with a key (a hash of the settings it
/// was built under): a value built under other settings is not reused.
#[derive(Default)]
pub struct Derived(arc_swap::ArcSwapOption<(u64, Arc<dyn std::any::Any + Send + Sync>)>);

impl Derived {
    /// The value built under `key`, if there is one of type `T`.
    pub fn get<T: std::any::Any + Send + Sync>(&self, key: u64) -> Option<Arc<T>> {
        let slot = self.0.load();
        let (k, v) = slot.as_deref()?;
        if *k != key {
            return None;
        }
        v.clone().downcast::<T>().ok()
    }

    /// Keeps `value`, built under `key`, in place of whatever was there.
    pub fn set<T: std::any::Any + Send + Sync>(&self, key: u64, value: Arc<T>) {
        self.0.store(Some(Arc::new((key, value))));
    }
}

impl Clone for Derived {
    /// A copy of a principal starts without derived values: they describe the original.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived")
    }
}
