//! Phase 6, verify: the second factor a request needs against the ones its caller proved
//! and their ages. Two things ask for one: a route's `mfa` (every request on it), checked
//! here before the policies; and the policies themselves, when a request they refused
//! would be allowed had the caller just proved a factor (a step-up: see
//! [`drawbridge_policy::Policies::step_up`]). Either way the caller is challenged (RFC 9470)
//! instead of refused, and nothing reaches the upstream.

use std::time::Duration;

use drawbridge_config::MfaMethod;
use drawbridge_identity::{AuthMethod, Principal};
use drawbridge_telemetry::AuditMfa;

use crate::rescue::Challenge;
use crate::snapshot::{RouteEntry, Snapshot};

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
                .filter_map(|f| f.age(now).map(|age| (f.method, age)))
                .min_by_key(|(_, age)| *age)
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
/// asks for none (the common case costs one test).
pub fn route(
    route: &RouteEntry,
    principal: Option<&Principal>,
    now: std::time::SystemTime,
) -> Option<MfaCheck> {
    let req = route.config.mfa.as_ref()?;
    Some(MfaCheck::of(
        principal,
        &req.methods,
        Some(req.max_age),
        unix(now),
    ))
}

/// The step-up the policies found for `principal` (see
/// [`crate::authorize::step_up`]), as what it needed and what it showed at `now`.
pub fn stepped_up(
    principal: &Principal,
    s: drawbridge_policy::StepUp,
    now: std::time::SystemTime,
) -> MfaCheck {
    MfaCheck {
        satisfied: false,
        ..MfaCheck::of(Some(principal), &s.methods, s.max_age, unix(now))
    }
}

/// Unix seconds.
fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
        out.extend([
            MfaMethod::Totp,
            MfaMethod::Webauthn,
            MfaMethod::RecoveryCode,
        ]);
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
