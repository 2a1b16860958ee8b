//! Phase 6, verify: the second factor a request needs against the ones its caller proved
//! and their ages. Two things ask for one: a route's `mfa` (every request on it), checked
//! here before the policies; and the policies themselves, when a request they refused
//! would be allowed had the caller just proved a factor (a step-up: see
//! [`drawbridge_policy::Policies::step_up`]). Either way the caller is challenged (RFC 9470)
//! instead of refused, and nothing reaches the upstream.

use std::sync::Arc;
use std::time::Duration;

use drawbridge_config::MfaMethod;
use drawbridge_identity::{AuthMethod, Principal};
use drawbridge_telemetry::AuditMfa;

use crate::snapshot::{RouteEntry, Snapshot};

/// What a caller must prove before it is let through: one of `methods`, within `max_age`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The factors that would each do.
    pub methods: Vec<MfaMethod>,
    /// How lately, when said.
    pub max_age: Option<Duration>,
    /// The `acr` values the caller's token issuer would need to assert (those the route's
    /// authenticators trust); the methods' names when none do.
    pub acr_values: Vec<String>,
    /// The caller had such a factor, grown too old.
    pub stale: bool,
}

impl Challenge {
    /// In words, for logs.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.methods.iter().map(|m| m.as_str()).collect();
        match self.max_age {
            Some(a) => format!("{} within {}s", names.join(" or "), a.as_secs()),
            None => names.join(" or "),
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 9470 §3).
    pub fn www_authenticate(&self) -> String {
        let description = if self.stale {
            "a more recent second factor is required"
        } else {
            "a second factor is required"
        };
        let mut s = format!(
            "Bearer realm=\"drawbridge\", error=\"insufficient_user_authentication\", error_description=\"{description}\""
        );
        if !self.acr_values.is_empty() {
            s.push_str(&format!(", acr_values=\"{}\"", self.acr_values.join(" ")));
        }
        if let Some(a) = self.max_age {
            s.push_str(&format!(", max_age={}", a.as_secs()));
        }
        s
    }
}

/// The second-factor part of a decision: what was needed, what was shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaCheck {
    /// The factors that would each do.
    pub required: Vec<MfaMethod>,
    /// How lately.
    pub max_age: Option<Duration>,
    /// The caller's latest factor among them, and its age in seconds.
    pub presented: Option<(MfaMethod, u64)>,
    /// Whether that was enough.
    pub satisfied: bool,
}

impl MfaCheck {
    /// What `principal` shows against `required` within `max_age`, at `now`.
    fn of(
        principal: Option<&Principal>,
        required: &[MfaMethod],
        max_age: Option<Duration>,
        now: u64,
    ) -> MfaCheck {
        let presented = principal.and_then(|p| {
            p.factors
                .iter()
                .filter(|f| required.contains(&f.method))
                .max_by_key(|f| f.at)
                .map(|f| (f.method, now.saturating_sub(f.at)))
        });
        let satisfied =
            presented.is_some_and(|(_, age)| max_age.is_none_or(|m| age <= m.as_secs()));
        MfaCheck {
            required: required.to_vec(),
            max_age,
            presented,
            satisfied,
        }
    }

    /// For the audit trail.
    pub fn audit(&self) -> AuditMfa {
        AuditMfa {
            required: self.required.iter().map(|m| m.as_str()).collect(),
            max_age: self.max_age.map(|a| a.as_secs()),
            presented: self.presented.map(|(m, _)| m.as_str()),
            age: self.presented.map(|(_, a)| a),
            satisfied: self.satisfied,
        }
    }

    /// The challenge that asks for what is missing, on `route`.
    pub fn challenge(&self, route: &RouteEntry) -> Challenge {
        let mut acr_values: Vec<String> = Vec::new();
        if self.required.contains(&MfaMethod::Idp) {
            for a in &route.authenticators {
                for v in a
                    .trusted_mfa()
                    .map(|t| t.acr.as_slice())
                    .unwrap_or_default()
                {
                    if !acr_values.contains(v) {
                        acr_values.push(v.clone());
                    }
                }
            }
        }
        if acr_values.is_empty() {
            acr_values = self.required.iter().map(|m| m.as_str().into()).collect();
        }
        Challenge {
            methods: self.required.clone(),
            max_age: self.max_age,
            acr_values,
            stale: self.presented.is_some(),
        }
    }
}

/// Phase 6 on `route`: the route's `mfa` against `principal` at `now`; `None` when the route
/// asks for none.
pub fn route(route: &RouteEntry, principal: Option<&Principal>, now: u64) -> Option<MfaCheck> {
    let req = route.config.mfa.as_ref()?;
    Some(MfaCheck::of(
        principal,
        &req.methods,
        Some(req.max_age),
        now,
    ))
}

/// After the policies refused `principal`: the factors that would have let it through,
/// among those it could prove (see [`candidates`]); `None` for a plain refusal.
pub fn step_up(
    snapshot: &Snapshot,
    route: &RouteEntry,
    principal: &Arc<Principal>,
    ask: &crate::admission::Ask<'_>,
    denied: &drawbridge_policy::Verdict,
) -> Option<MfaCheck> {
    let candidates = candidates(snapshot, route, principal);
    let s = crate::authorize::step_up(snapshot, route, principal, ask, denied, &candidates)?;
    let now = unix(ask.time);
    Some(MfaCheck {
        satisfied: false,
        ..MfaCheck::of(Some(principal), &s.methods, s.max_age, now)
    })
}

/// The factors `principal` could prove: those Drawbridge enrols, for a person signed in
/// here; the issuer's, when its authenticator trusts what its tokens say.
pub fn candidates(
    snapshot: &Snapshot,
    route: &RouteEntry,
    principal: &Principal,
) -> Vec<MfaMethod> {
    let mut out = Vec::new();
    if principal.methods.contains(&AuthMethod::Oidc) && snapshot.mfa_config.is_some() {
        out.extend([MfaMethod::Totp, MfaMethod::RecoveryCode]);
    }
    let trusted = route
        .authenticators
        .iter()
        .find(|a| **a.name() == *principal.authenticator)
        .and_then(|a| a.trusted_mfa());
    if trusted.is_some() {
        out.push(MfaMethod::Idp);
    }
    out
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
