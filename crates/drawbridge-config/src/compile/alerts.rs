//! `[alerts]`: detectors over the stream of decisions, and the webhook they post to.

use std::collections::HashSet;
use std::time::Duration;

use toml::Spanned;

use super::Cx;
use super::authn::parse_url;
use crate::model::*;
use crate::raw::*;

/// Shortest HMAC key accepted for webhook signatures.
const MIN_SECRET: usize = 32;

impl Cx<'_> {
    /// `[tracing]`: where spans go, how many, and whose trace context is continued.
    pub(super) fn tracing(&mut self, raw: &Spanned<RawTracing>) -> Option<Tracing> {
        let t = raw.get_ref();
        let endpoint = match parse_url(t.otlp_endpoint.get_ref()) {
            Ok(u) => Some(u),
            Err(e) => {
                self.r.error_help(
                    t.otlp_endpoint.span().start,
                    "tracing.otlp_endpoint",
                    e,
                    "write the collector's OTLP/HTTP traces address: `https://otel.internal:4318/v1/traces`, or `http://127.0.0.1:4318/v1/traces` for a collector beside Drawbridge",
                );
                None
            }
        };
        let ca = match &t.ca_file {
            Some(f) => self.read_certs("tracing.ca_file", f),
            None => None,
        };
        let sample_ratio = match &t.sample_ratio {
            None => 1.0,
            Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
            Some(r) => {
                self.r.error_help(
                    r.span().start,
                    "tracing.sample_ratio",
                    format!("{} is not between 0 and 1", r.get_ref()),
                    "write the share of requests to record: `0.1` for one in ten",
                );
                1.0
            }
        };
        let trusted_sources = self.ip_nets("tracing.trusted_sources", &t.trusted_sources);
        Some(Tracing {
            endpoint: JwksUrl { ca, ..endpoint? },
            service_name: t
                .service_name
                .as_ref()
                .map_or_else(|| "drawbridge".to_string(), |s| s.get_ref().clone()),
            sample_ratio,
            trusted_sources,
        })
    }

    pub(super) fn alerts(&mut self, raw: Option<&Spanned<RawAlerts>>) -> Alerts {
        let Some(raw) = raw else {
            return Alerts::default();
        };
        let a = raw.get_ref();
        let webhook = match (&a.webhook_url, &a.webhook_secret_file) {
            (None, None) => None,
            (Some(u), Some(f)) => {
                let url = match parse_url(u.get_ref()) {
                    Ok(url) => Some(url),
                    Err(e) => {
                        self.r.error_help(
                            u.span().start,
                            "alerts.webhook_url",
                            e,
                            "write an `https://` address (plain `http://` only to a loopback address)",
                        );
                        None
                    }
                };
                let ca = match &a.webhook_ca_file {
                    Some(f) => self.read_certs("alerts.webhook_ca_file", f),
                    None => None,
                };
                let secret = self.secret_file(
                    "alerts.webhook_secret_file",
                    f,
                    MIN_SECRET,
                    "the receiver checks each body's HMAC with this key: give it at least 32 random characters (`openssl rand -hex 32`)",
                );
                match (url, secret) {
                    (Some(url), Some((_, secret))) => Some(Webhook {
                        url: JwksUrl { ca, ..url },
                        secret,
                    }),
                    _ => None,
                }
            }
            (Some(u), None) => {
                self.r.error_help(
                    u.span().start,
                    "alerts.webhook_secret_file",
                    "a webhook needs a secret to sign its bodies with",
                    "add `webhook_secret_file`: the receiver checks each body's HMAC-SHA256 with it",
                );
                None
            }
            (None, Some(f)) => {
                self.r.error_help(
                    f.span().start,
                    "alerts.webhook_secret_file",
                    "a secret without `webhook_url` signs nothing",
                    "add `webhook_url`, or remove the secret",
                );
                None
            }
        };
        let mut names = HashSet::new();
        let mut detectors = Vec::new();
        for (i, d) in a.detectors.iter().enumerate() {
            let at = format!("alerts.detectors[{i}]");
            let r = d.get_ref();
            self.name(&format!("{at}.name"), &r.name);
            if !names.insert(r.name.get_ref().clone()) {
                self.r.error(
                    r.name.span().start,
                    format!("{at}.name"),
                    format!("`{}` names two detectors", r.name.get_ref()),
                );
            }
            let on = match r.on.get_ref().as_str() {
                "failed_authentication" => Signal::FailedAuthentication,
                "denial" => Signal::Denial,
                "mfa_failure" => Signal::MfaFailure,
                "principal_addresses" => Signal::PrincipalAddresses,
                "shadow_denial" => Signal::ShadowDenial,
                other => {
                    self.r.error_help(
                        r.on.span().start,
                        format!("{at}.on"),
                        format!("unknown signal `{other}`"),
                        "use `failed_authentication`, `denial`, `mfa_failure`, `principal_addresses` or `shadow_denial`",
                    );
                    continue;
                }
            };
            // What each signal can be counted per; the first is the default.
            let allowed: &[AlertKey] = match on {
                Signal::FailedAuthentication => &[AlertKey::Client],
                Signal::Denial => &[AlertKey::Route, AlertKey::Client, AlertKey::Principal],
                Signal::MfaFailure | Signal::PrincipalAddresses => &[AlertKey::Principal],
                Signal::ShadowDenial => &[AlertKey::Route],
            };
            let by = match r.by.as_ref().map(|b| b.get_ref().as_str()) {
                None => allowed[0],
                Some(b) => match allowed.iter().find(|k| k.as_str() == b) {
                    Some(k) => *k,
                    None => {
                        let names: Vec<&str> = allowed.iter().map(|k| k.as_str()).collect();
                        self.r.error_help(
                            r.by.as_ref().map_or(0, |b| b.span().start),
                            format!("{at}.by"),
                            format!(
                                "`{}` is counted per {}, not `{b}`",
                                on.as_str(),
                                names.join(" or ")
                            ),
                            format!("write `by = \"{}\"`", names[0]),
                        );
                        continue;
                    }
                },
            };
            let threshold = self.int(
                &format!("{at}.threshold"),
                Some(&r.threshold),
                1,
                1_000_000,
                1,
            ) as u64;
            let window = self.duration(
                &format!("{at}.window"),
                r.window.as_ref(),
                Duration::from_secs(60),
            );
            if window > Duration::from_secs(24 * 3600) {
                self.r.error(
                    r.window.as_ref().map_or(0, |w| w.span().start),
                    format!("{at}.window"),
                    "a window longer than a day is not kept",
                );
            }
            let block = r
                .block
                .as_ref()
                .map(|b| self.duration(&format!("{at}.block"), Some(b), Duration::from_secs(600)));
            if let (Some(_), AlertKey::Route) = (&block, by) {
                self.r.error_help(
                    r.block.as_ref().map_or(0, |b| b.span().start),
                    format!("{at}.block"),
                    "a route is not blocked: only a client address or a principal is",
                    "count `by = \"client\"` or `by = \"principal\"`, or remove `block`",
                );
            }
            detectors.push(Detector {
                name: r.name.get_ref().clone(),
                on,
                by,
                threshold,
                window,
                block,
                location: self.r.locate(d.span().start),
            });
        }
        Alerts { webhook, detectors }
    }
}
