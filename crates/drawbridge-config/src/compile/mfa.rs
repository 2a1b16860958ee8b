//! Second factors: `[mfa]`, a route's `mfa`, and an issuer's `trusted_mfa`.

use std::time::Duration;

use toml::Spanned;

use super::Cx;
use crate::model::*;
use crate::raw::*;

/// Most failed attempts a config may allow per window (NIST SP 800-63B §5.2.2 caps it at
/// 100; a six-digit code wants far fewer).
const MAX_FAILURES: i64 = 20;

impl Cx<'_> {
    /// `[mfa]`: present whenever people sign in (with its defaults when not written).
    pub(super) fn mfa(&mut self, raw: Option<&Spanned<RawMfa>>, sessions: bool) -> Option<Mfa> {
        if !sessions {
            if let Some(m) = raw {
                self.r.error_help(
                    m.span().start,
                    "mfa",
                    "second factors are enrolled by people who sign in, and no `oidc` authenticator signs anyone in",
                    "declare an `oidc` authenticator (and `[sessions]`), or remove `[mfa]`",
                );
            }
            return None;
        }
        let default = RawMfa::default();
        let m = raw.map_or(&default, Spanned::get_ref);
        let issuer = match &m.issuer {
            Some(i) if valid_label(i.get_ref()) => i.get_ref().clone(),
            Some(i) => {
                self.r.error_help(
                    i.span().start,
                    "mfa.issuer",
                    "not a name authenticator apps can show",
                    "use 1 to 64 printable characters without `:`",
                );
                String::new()
            }
            None => "Drawbridge".into(),
        };
        let max_failures = self.int(
            "mfa.max_failures",
            m.max_failures.as_ref(),
            1,
            MAX_FAILURES,
            5,
        ) as u32;
        let failure_window = self.duration(
            "mfa.failure_window",
            m.failure_window.as_ref(),
            Duration::from_secs(15 * 60),
        );
        let enrol_timeout = self.duration(
            "mfa.enrol_timeout",
            m.enrol_timeout.as_ref(),
            Duration::from_secs(10 * 60),
        );
        let user_verification = self.choice(
            "mfa.user_verification",
            m.user_verification.as_ref(),
            &[("required", true), ("preferred", false)],
        );
        let totp = self.totp(m.totp.as_ref());
        Some(Mfa {
            issuer,
            totp,
            max_failures,
            failure_window,
            enrol_timeout,
            user_verification,
            location: self.r.locate(raw.map_or(0, |r| r.span().start)),
        })
    }

    fn totp(&mut self, raw: Option<&Spanned<RawTotp>>) -> TotpSettings {
        let Some(t) = raw.map(Spanned::get_ref) else {
            return TotpSettings::default();
        };
        let algorithm = self.choice(
            "mfa.totp.algorithm",
            t.algorithm.as_ref(),
            &[
                ("SHA1", TotpAlgorithm::Sha1),
                ("SHA256", TotpAlgorithm::Sha256),
                ("SHA512", TotpAlgorithm::Sha512),
            ],
        );
        let digits = self.int("mfa.totp.digits", t.digits.as_ref(), 6, 8, 6) as u32;
        let period = self.duration(
            "mfa.totp.period",
            t.period.as_ref(),
            Duration::from_secs(30),
        );
        if !(15..=120).contains(&period.as_secs())
            && let Some(p) = &t.period
        {
            self.r.error_help(
                p.span().start,
                "mfa.totp.period",
                format!("a step of {period:?} is outside what apps accept"),
                "use 30s (every app's default), or between 15s and 2m",
            );
        }
        TotpSettings {
            algorithm,
            digits,
            period: period.as_secs().clamp(15, 120),
        }
    }

    /// A route's `mfa`; `None` when absent or `required = false`.
    pub(super) fn route_mfa(
        &mut self,
        at: &str,
        raw: Option<&Spanned<RawRouteMfa>>,
    ) -> Option<MfaRequirement> {
        let raw = raw?;
        let m = raw.get_ref();
        if m.required.as_ref().is_some_and(|r| !*r.get_ref()) {
            for (field, set) in [
                ("max_age", m.max_age.as_ref().map(|v| v.span().start)),
                ("methods", m.methods.as_ref().map(|v| v.span().start)),
            ] {
                if let Some(offset) = set {
                    self.r.error_help(
                        offset,
                        format!("{at}.mfa.{field}"),
                        "`required = false` asks for no second factor, so this says nothing",
                        "remove it, or set `required = true`",
                    );
                }
            }
            return None;
        }
        let Some(max_age) = &m.max_age else {
            self.r.error_help(
                raw.span().start,
                format!("{at}.mfa.max_age"),
                "a route that requires a second factor says how lately it must have been done",
                "add `max_age = \"12h\"` (or `\"5m\"` for a sensitive action)",
            );
            return None;
        };
        let max_age = self.duration(
            &format!("{at}.mfa.max_age"),
            Some(max_age),
            Duration::from_secs(12 * 3600),
        );
        let methods = match &m.methods {
            None => MfaMethod::ALL.to_vec(),
            Some(list) if list.get_ref().is_empty() => {
                self.r.error_help(
                    list.span().start,
                    format!("{at}.mfa.methods"),
                    "no method would ever satisfy the route",
                    "list the factors that count: `totp`, `webauthn`, `recovery_code`, `idp`",
                );
                return None;
            }
            Some(list) => {
                let mut out = Vec::new();
                for name in list.get_ref() {
                    match MfaMethod::parse(name.get_ref()) {
                        Some(method) if !out.contains(&method) => out.push(method),
                        Some(_) => {}
                        None => self.r.error_help(
                            name.span().start,
                            format!("{at}.mfa.methods"),
                            format!("unknown second factor `{}`", name.get_ref()),
                            "use `totp`, `webauthn`, `recovery_code` or `idp`",
                        ),
                    }
                }
                out
            }
        };
        Some(MfaRequirement { max_age, methods })
    }

    /// `trusted_mfa`, for a `jwt` or `oidc` authenticator.
    pub(super) fn trusted_mfa(
        &mut self,
        at: &str,
        raw: Option<&Spanned<RawTrustedMfa>>,
    ) -> TrustedMfa {
        let Some(raw) = raw else {
            return TrustedMfa::default();
        };
        let mut list = |field: &str, v: Option<&Spanned<Vec<Spanned<String>>>>| -> Vec<String> {
            let mut out = Vec::new();
            for s in v.map(Spanned::get_ref).into_iter().flatten() {
                if s.get_ref().is_empty() || !s.get_ref().bytes().all(|b| b.is_ascii_graphic()) {
                    self.r.error(
                        s.span().start,
                        format!("{at}.trusted_mfa.{field}"),
                        "a value is printable ASCII without spaces",
                    );
                } else {
                    out.push(s.get_ref().clone());
                }
            }
            out
        };
        let t = TrustedMfa {
            amr: list("amr", raw.get_ref().amr.as_ref()),
            acr: list("acr", raw.get_ref().acr.as_ref()),
        };
        if t.amr.iter().any(|a| a == "pwd") {
            self.r.error_help(
                raw.span().start,
                format!("{at}.trusted_mfa.amr"),
                "`pwd` is a password: it is never a second factor",
                "list what the provider says of a second factor: `mfa`, `otp`, `hwk`, `swk`...",
            );
        }
        if t.is_empty() {
            self.r.error_help(
                raw.span().start,
                format!("{at}.trusted_mfa"),
                "trusts nothing",
                "list `amr` values (`amr = [\"mfa\"]`) or `acr` values, or remove it",
            );
        }
        t
    }

    /// Routes that require a second factor must be reachable by someone who can show one.
    pub(super) fn mfa_routes(
        &mut self,
        routes: &[(usize, Route)],
        raw: &[Spanned<RawRoute>],
        authenticators: &[Authenticator],
        enrols: bool,
    ) {
        for (i, r) in routes {
            let Some(req) = &r.mfa else { continue };
            let span = raw[*i].get_ref().mfa.as_ref().map_or(0, |m| m.span().start);
            let Admission::Authenticated {
                authenticators: list,
                ..
            } = &r.admission
            else {
                self.r.error_help(
                    span,
                    format!("routes[{i}].mfa"),
                    "a public route has nobody to ask for a second factor",
                    "authenticate the route's callers, or remove `mfa`",
                );
                continue;
            };
            let can = |a: &Authenticator, m: MfaMethod| match (&a.kind, m) {
                (AuthenticatorKind::Oidc(o), MfaMethod::Idp) => !o.claims.trusted_mfa.is_empty(),
                (AuthenticatorKind::Oidc(_), _) => enrols,
                (AuthenticatorKind::Jwt(j), MfaMethod::Idp) => !j.claims.trusted_mfa.is_empty(),
                _ => false,
            };
            let satisfiable = list
                .iter()
                .filter_map(|&a| authenticators.get(a))
                .any(|a| req.methods.iter().any(|&m| can(a, m)));
            if !satisfiable {
                self.r.error_help(
                    span,
                    format!("routes[{i}].mfa"),
                    "none of the route's callers could ever show one of these factors",
                    "people who sign in (`oidc`) enrol `totp`, `webauthn` and `recovery_code`; `idp` needs `trusted_mfa` on the route's `jwt` or `oidc` authenticator",
                );
            }
        }
    }
}

/// A name an authenticator app shows: printable, no `:` (the URI's label separator).
fn valid_label(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= 64 && !s.contains(':') && !s.chars().any(char::is_control)
}
