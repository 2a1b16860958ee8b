//! The authenticated caller.

use std::sync::Arc;

use drawbridge_config::{MfaMethod, PrincipalKind};
use serde_json::{Map, Value};

/// A caller whose credentials were verified: plain data. What other layers compute from it
/// (its policy entity, decisions, identity assertions) they keep in their own caches
/// ([`crate::PrincipalCache`]), not in the principal.
#[derive(Debug, Clone, PartialEq)]
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
    /// The second factors it proved, each once with its latest time.
    pub factors: Vec<Factor>,
}

/// A second factor a principal proved, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Factor {
    /// Which.
    pub method: MfaMethod,
    /// When, Unix seconds.
    pub at: u64,
}

/// How far ahead of the clock a factor's time may be (clock skew between the issuer and
/// Drawbridge): a factor dated later than that counts for nothing, never as "just done".
pub const FACTOR_SKEW: u64 = 60;

impl Factor {
    /// Its age at `now`, in seconds; `None` when it is dated beyond [`FACTOR_SKEW`] in the
    /// future (a token claiming a factor to come must not stay fresh for ever).
    pub fn age(&self, now: u64) -> Option<u64> {
        (self.at <= now.saturating_add(FACTOR_SKEW)).then(|| now.saturating_sub(self.at))
    }

    /// Adds `factor` to `factors`, or moves its method's time forward.
    pub fn record(factors: &mut Vec<Factor>, factor: Factor) {
        match factors.iter_mut().find(|f| f.method == factor.method) {
            Some(f) => f.at = f.at.max(factor.at),
            None => factors.push(factor),
        }
    }
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
            factors: Vec::new(),
        }
    }

    /// Whether `other` says exactly what this principal says (every field): a value
    /// computed for one serves the other.
    pub fn same_as(&self, other: &Principal) -> bool {
        self == other
    }

    /// The latest time, as of `now`, it proved one of `methods` (a factor dated beyond
    /// clock skew in the future does not count).
    pub fn factor_at(&self, methods: &[MfaMethod], now: u64) -> Option<u64> {
        self.factors
            .iter()
            .filter(|f| methods.contains(&f.method) && f.age(now).is_some())
            .map(|f| f.at.min(now))
            .max()
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
    /// A sign-in at an OpenID provider, carried by a session.
    Oidc,
}

impl AuthMethod {
    /// The name used in identity assertions and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Mtls => "mtls",
            AuthMethod::Oidc => "oidc",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_factor_from_the_future_has_no_age() {
        let f = |at| Factor {
            method: MfaMethod::Totp,
            at,
        };
        assert_eq!(f(1_000).age(1_100), Some(100));
        // Within clock skew ahead: just done.
        assert_eq!(f(1_100 + FACTOR_SKEW).age(1_100), Some(0));
        // Beyond it: nothing, and never the latest factor.
        assert_eq!(f(1_101 + FACTOR_SKEW).age(1_100), None);
        let p = Principal {
            factors: vec![f(1_000), f(99_999)],
            ..Principal::anonymous()
        };
        assert_eq!(p.factor_at(&[MfaMethod::Totp], 1_100), Some(1_000));
    }
}
