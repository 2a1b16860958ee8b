//! A request decided without a network: the same path normalisation, route table, claim
//! mapping and policies as the pipeline, for `drawbridge test` (request in, decision out).

use std::net::IpAddr;
use std::time::SystemTime;

use drawbridge_config::Admission;
use drawbridge_identity::Simulated;
use drawbridge_policy::{Action, DecideError, RequestView, Verdict};
use http::HeaderMap;

use crate::route::Match;
use crate::snapshot::Snapshot;

/// A request as a test case describes it.
pub struct Probe<'a> {
    /// The listener it arrives on; the first when `None`.
    pub listener: Option<&'a str>,
    /// Method, upper-case.
    pub method: &'a str,
    /// Host, without port.
    pub host: &'a str,
    /// Path and query as sent (`/refunds?amount=5`).
    pub target: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// Client address.
    pub client: IpAddr,
    /// When it is made.
    pub time: SystemTime,
    /// Plain HTTP, a gRPC call or a WebSocket upgrade.
    pub kind: ProbeKind,
    /// Who calls: an authenticator's name and what it would verify. `None`: no credentials.
    pub caller: Option<(&'a str, Simulated<'a>)>,
}

/// What kind of request a probe is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Plain HTTP.
    Http,
    /// A gRPC call.
    Grpc,
    /// A WebSocket upgrade.
    WebSocket,
}

/// How the pipeline would end the probe, up to and including the authorize phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The policies allow it.
    Allowed(Verdicts),
    /// The policies deny it.
    Denied(Verdicts),
    /// Admitted without policies: a public route, or one with `authorize = false`.
    Unchecked,
    /// 400: the path, query or a header cannot be read one way.
    BadRequest(String),
    /// 401: no credentials, or the route does not accept this caller's authenticator.
    Unauthenticated(String),
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
}

/// The enforced and shadow verdicts, and the route that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdicts {
    /// The route the request matched.
    pub route: String,
    /// The enforced policies' verdict.
    pub enforced: Verdict,
    /// The shadow policies' verdict, when loaded.
    pub shadow: Option<Verdict>,
}

impl Snapshot {
    /// Decides `p` as the pipeline would.
    pub fn probe(&self, p: &Probe<'_>) -> Outcome {
        let listener = match p.listener {
            None => self.listeners.first(),
            Some(name) => self.listeners.iter().find(|l| &*l.name == name),
        };
        let Some(listener) = listener else {
            return Outcome::NotFound;
        };
        let (raw_path, query) = match p.target.split_once('?') {
            Some((path, q)) => (path, Some(q)),
            None => (p.target, None),
        };
        let path = match crate::sanitize::normalize_path(raw_path) {
            Ok(path) => path,
            Err(e) => return Outcome::BadRequest(e.to_string()),
        };
        let host = p.host.to_ascii_lowercase();
        let route = match listener.routes.lookup(&host, &path.decoded, p.method) {
            Match::Found(r) => r,
            Match::MethodNotAllowed(_) => return Outcome::MethodNotAllowed,
            Match::NotFound => return Outcome::NotFound,
        };
        let principal = match &route.config.admission {
            // A public route is open to all, unless it asks its policies about the anonymous
            // caller.
            Admission::Public if !route.config.authorize => return Outcome::Unchecked,
            Admission::Public => drawbridge_identity::Principal::anonymous(),
            Admission::Authenticated { .. } => {
                let Some((name, caller)) = p.caller else {
                    return Outcome::Unauthenticated("no credentials".into());
                };
                let Some(authenticator) = route.authenticators.iter().find(|a| &**a.name() == name)
                else {
                    return Outcome::Unauthenticated(format!(
                        "route `{}` does not accept authenticator `{name}`",
                        route.name
                    ));
                };
                let principal = match authenticator.simulate(caller) {
                    Ok(p) => p,
                    Err(e) => return Outcome::Unauthenticated(e),
                };
                if !route.config.authorize {
                    return Outcome::Unchecked;
                }
                principal
            }
        };
        let Some(policies) = &self.policies else {
            return Outcome::Denied(denied(&route.name, "no policies are loaded".into()));
        };
        let action = match p.kind {
            ProbeKind::WebSocket => Action::WebSocket,
            ProbeKind::Grpc => Action::Grpc,
            ProbeKind::Http => match Action::of_method(p.method) {
                Some(a) => a,
                None => return Outcome::MethodNotAllowed,
            },
        };
        let params = route.config.path.capture(&path.decoded).unwrap_or_default();
        let grpc = (p.kind == ProbeKind::Grpc).then(|| {
            let rest = path.decoded.strip_prefix('/').unwrap_or(&path.decoded);
            rest.split_once('/').unwrap_or((rest, ""))
        });
        let view = RequestView {
            action,
            method: p.method,
            host: &host,
            path: &path.decoded,
            params: &params,
            query,
            headers: p.headers,
            ip: p.client,
            now: p.time,
            grpc,
        };
        match policies.decide(route.index, &principal, &view) {
            Ok(d) => {
                let v = Verdicts {
                    route: route.name.to_string(),
                    enforced: d.enforced.clone(),
                    shadow: d.shadow.clone(),
                };
                if v.enforced.allow {
                    Outcome::Allowed(v)
                } else {
                    Outcome::Denied(v)
                }
            }
            Err(DecideError::BadRequest(e)) => Outcome::BadRequest(e.to_string()),
            Err(e) => Outcome::Denied(denied(&route.name, e.to_string())),
        }
    }
}

fn denied(route: &str, why: String) -> Verdicts {
    Verdicts {
        route: route.to_string(),
        enforced: Verdict {
            allow: false,
            policies: Vec::new(),
            errors: vec![why],
        },
        shadow: None,
    }
}
