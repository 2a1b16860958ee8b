//! The snapshot: one immutable, compiled configuration. A request takes the current one once
//! and uses it to the end; reload swaps in a new one only when it compiled whole.

use std::collections::HashMap;
use std::sync::Arc;

use drawbridge_config::{Admission, Config, Diagnostic, Diagnostics, Limits, Server};
use drawbridge_identity::{Authenticator, Minter};

pub use crate::route::RouteEntry;
use crate::route::RouteTable;
use crate::upstream::UpstreamPool;

/// A compiled configuration.
pub struct Snapshot {
    /// Hash of the config file and the files it names, shown in logs.
    pub version: String,
    /// The same, shared by the audit events of this snapshot.
    pub version_label: Arc<str>,
    /// The files besides the config file it was compiled from.
    pub files: Vec<std::path::PathBuf>,
    /// Process-wide settings.
    pub server: Server,
    /// The admin listener, when configured.
    pub admin: Option<drawbridge_config::Admin>,
    /// The admin listener's TLS, when `[admin.tls]` is set.
    pub admin_tls: Option<Arc<rustls::ServerConfig>>,
    /// The audit trail's rotation, and whether requests wait on it.
    pub audit: drawbridge_config::Audit,
    /// The detectors, and the webhook they post to.
    pub alerts: drawbridge_config::Alerts,
    /// `[tracing]` as configured.
    pub tracing_config: Option<drawbridge_config::Tracing>,
    /// The tracer: attached with the sessions, once the snapshot is to be served.
    pub tracing: Option<Arc<crate::trace::Tracing>>,
    /// Listeners in config order.
    pub listeners: Vec<ListenerEntry>,
    /// Upstream pools by config order.
    pub upstreams: Vec<Arc<UpstreamPool>>,
    /// Authenticators by config order.
    pub authenticators: Vec<Arc<Authenticator>>,
    /// Signs the identity assertions upstreams receive.
    pub minter: Arc<Minter>,
    /// The header the assertion travels in.
    pub identity_header: http::HeaderName,
    /// Whether sanitize always removes a client's identity header (the header pass removes
    /// its name on every listener and keeps it for no route to put back).
    pub identity_header_stripped: bool,
    /// Which client headers never reach an upstream.
    pub header_rules: Arc<crate::sanitize::headers::HeaderRules>,
    /// Every route, in config order.
    pub routes: Vec<Arc<RouteEntry>>,
    /// The compiled policies, when the configuration has a `[policy]`.
    pub policies: Option<Arc<drawbridge_policy::Policies>>,
    /// What `check` reports without refusing the configuration.
    pub warnings: Vec<Diagnostic>,
    /// `[sessions]`, when people sign in.
    pub sessions_config: Option<drawbridge_config::Sessions>,
    /// People's sessions: attached by `serve` once the snapshot is in force
    /// ([`crate::session::attach`]), never by `check` or `test`, which open no store.
    pub sessions: Option<Arc<drawbridge_session::Sessions>>,
    /// `[mfa]`, when people sign in.
    pub mfa_config: Option<drawbridge_config::Mfa>,
    /// Second factors, kept with the sessions: attached with them.
    pub mfa: Option<Arc<drawbridge_mfa::Mfa>>,
    /// The hosts this configuration serves over https: where a browser may return after
    /// signing in.
    pub served: drawbridge_session::Served,
    /// Every metric, carried from one snapshot to the next.
    pub metrics: Arc<drawbridge_telemetry::metrics::Metrics>,
    /// The counters of requests no route took.
    pub unrouted: Arc<drawbridge_telemetry::metrics::RouteMetrics>,
}

/// A listener's compiled settings.
pub struct ListenerEntry {
    /// Name from the config.
    pub name: Arc<str>,
    /// Bound address.
    pub address: std::net::SocketAddr,
    /// Whether HTTP/2 is offered.
    pub http2: bool,
    /// TLS, when the listener terminates it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Which certificate serves which name, to tell a request for another virtual host than
    /// its connection's SNI.
    pub sni: Option<Arc<crate::tls::SniResolver>>,
    /// Limits applied to its connections (shared by each of them).
    pub limits: Arc<Limits>,
    /// What becomes of header names with `_` or `.`.
    pub nonstandard_header_names: drawbridge_config::NonstandardHeaderNames,
    /// Only redirects to HTTPS, on this port.
    pub redirect_to_https: Option<u16>,
    /// `Strict-Transport-Security`, sent with every response of a TLS listener that sets it.
    pub hsts: Option<http::HeaderValue>,
    /// Its routes.
    pub routes: RouteTable,
    /// Its counters, kept by name across reloads.
    pub metrics: Arc<drawbridge_telemetry::metrics::ListenerMetrics>,
}

impl Snapshot {
    /// Compiles `config`, reusing the connection pools of `previous` whose upstream settings
    /// did not change.
    pub fn compile(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, Diagnostics> {
        let mut errors = Vec::new();
        let metrics = previous.map_or_else(Arc::default, |p| p.metrics.clone());
        let old: HashMap<&str, &Arc<UpstreamPool>> = previous
            .map(|p| p.upstreams.iter().map(|u| (&*u.name, u)).collect())
            .unwrap_or_default();
        let mut upstreams = Vec::new();
        for u in &config.upstreams {
            match old.get(u.name.as_str()) {
                // Unchanged: keep its connections and its endpoints' health.
                Some(prev) if prev.settings.same_settings(u) => upstreams.push(Arc::clone(prev)),
                _ => match UpstreamPool::new(u) {
                    Ok(mut pool) => {
                        pool.metrics = metrics.upstream(&u.name);
                        upstreams.push(Arc::new(pool))
                    }
                    Err(e) => errors.push(Diagnostic {
                        location: u.location.clone(),
                        field: format!("upstreams `{}`", u.name),
                        message: e.to_string(),
                        help: None,
                    }),
                },
            }
        }
        let old_authn: HashMap<&str, &Arc<Authenticator>> = previous
            .map(|p| p.authenticators.iter().map(|a| (&**a.name(), a)).collect())
            .unwrap_or_default();
        let mut authenticators = Vec::new();
        for a in &config.authenticators {
            match old_authn.get(a.name.as_str()) {
                // Unchanged: keep its fetched keys and verified tokens.
                Some(prev) if prev.built_from(a) => authenticators.push(Arc::clone(prev)),
                _ => match Authenticator::new(a) {
                    Ok(built) => authenticators.push(Arc::new(built)),
                    Err(e) => errors.push(Diagnostic {
                        location: a.location.clone(),
                        field: format!("authenticators `{}`", a.name),
                        message: e.to_string(),
                        help: None,
                    }),
                },
            }
        }
        let minter = match previous.map(|p| &p.minter) {
            // Unchanged settings keep the key, so assertions already handed out still verify.
            Some(m) if *m.config() == config.identity => Some(Arc::clone(m)),
            _ => match Minter::new(&config.identity) {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    errors.push(Diagnostic {
                        location: config.identity.location.clone(),
                        field: "identity".into(),
                        message: e.to_string(),
                        help: None,
                    });
                    None
                }
            },
        };
        let identity_header = match http::HeaderName::from_bytes(config.identity.header.as_bytes())
        {
            Ok(h) => Some(h),
            Err(e) => {
                errors.push(Diagnostic {
                    location: config.identity.location.clone(),
                    field: "identity.header".into(),
                    message: e.to_string(),
                    help: None,
                });
                None
            }
        };
        let policies = match drawbridge_policy::compile(&config) {
            Ok(p) => p.map(Arc::new),
            Err(d) => {
                errors.extend(d.0);
                None
            }
        };
        let (Some(minter), Some(identity_header)) = (minter, identity_header) else {
            return Err(Diagnostics(errors));
        };
        if !errors.is_empty() {
            return Err(Diagnostics(errors));
        }
        let header_rules = Arc::new(crate::sanitize::headers::HeaderRules::new(
            config.server.strip_headers.clone(),
            authenticators
                .iter()
                .filter_map(|a| a.credential_header().cloned())
                .collect(),
            config
                .routes
                .iter()
                .flat_map(|r| r.pass_headers.iter().cloned())
                .collect(),
        ));
        let routes: Vec<Arc<RouteEntry>> = config
            .routes
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let authenticators: Vec<Arc<Authenticator>> = match &r.admission {
                    Admission::Public { .. } => Vec::new(),
                    Admission::Authenticated {
                        authenticators: list,
                        ..
                    } => list.iter().map(|&i| authenticators[i].clone()).collect(),
                };
                let trailers = r.request_trailers.then(|| {
                    let mut credentials = vec![identity_header.clone()];
                    credentials.extend(
                        authenticators
                            .iter()
                            .filter_map(|a| a.credential_header().cloned()),
                    );
                    Arc::new(crate::sanitize::headers::TrailerFilter {
                        rules: header_rules.clone(),
                        credentials,
                    })
                });
                let credential_params = authenticators
                    .iter()
                    .filter_map(|a| a.credential_header())
                    .map(|h| h.as_str().replace('-', "_"))
                    .collect();
                Arc::new(RouteEntry {
                    metrics: metrics.route(&r.name),
                    authn_metrics: authenticators
                        .iter()
                        .map(|a| metrics.authenticator(a.name()))
                        .collect(),
                    request_edits: crate::route::Edits::new(&r.request_headers),
                    response_edits: crate::route::Edits::new(&r.response_headers),
                    credential_params,
                    index,
                    name: r.name.as_str().into(),
                    config: r.clone(),
                    upstream: upstreams[r.upstream].clone(),
                    authenticators,
                    trailers,
                })
            })
            .collect();
        let mut listeners = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let (tls, sni) = match &l.tls {
                Some(t) => match crate::tls::server_config(t, l.http2) {
                    Ok((c, r)) => (Some(c), Some(r)),
                    Err(mut d) => {
                        d.field = format!("listeners[{i}].tls.{}", d.field);
                        errors.push(d);
                        (None, None)
                    }
                },
                None => (None, None),
            };
            // A redirecting listener serves no route.
            let mine = routes
                .iter()
                .filter(|_| l.redirect_to_https.is_none())
                .filter(|r| r.config.listeners.as_ref().is_none_or(|ls| ls.contains(&i)))
                .cloned();
            listeners.push(ListenerEntry {
                name: l.name.as_str().into(),
                address: l.address,
                http2: l.http2,
                tls,
                sni,
                limits: Arc::new(l.limits.clone()),
                nonstandard_header_names: l.nonstandard_header_names,
                redirect_to_https: l.redirect_to_https,
                hsts: l
                    .tls
                    .as_ref()
                    .and_then(|t| t.hsts.as_deref())
                    .and_then(|v| http::HeaderValue::from_str(v).ok()),
                routes: RouteTable::new(mine),
                metrics: metrics.listener(&l.name),
            });
        }
        let admin_tls = match config.admin.as_ref().and_then(|a| a.tls.as_ref()) {
            None => None,
            Some(t) => match crate::tls::server_config(t, false) {
                Ok((c, _)) => Some(c),
                Err(mut d) => {
                    d.field = format!("admin.tls.{}", d.field);
                    errors.push(d);
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(Diagnostics(errors));
        }
        let served = served(&config);
        let mut warnings = config.warnings.clone();
        if let Some(p) = &policies {
            warnings.extend(p.warnings.iter().cloned());
        }
        Ok(Snapshot {
            version_label: config.version.as_str().into(),
            routes,
            policies,
            warnings,
            version: config.version,
            files: config.files,
            server: config.server,
            admin: config.admin,
            audit: config.audit,
            alerts: config.alerts,
            tracing_config: config.tracing,
            tracing: None,
            admin_tls,
            listeners,
            upstreams,
            authenticators,
            minter,
            identity_header_stripped: header_rules.always_strips(&identity_header),
            identity_header,
            header_rules,
            sessions_config: config.sessions,
            sessions: None,
            mfa_config: config.mfa,
            mfa: None,
            served,
            unrouted: metrics.route(drawbridge_telemetry::metrics::NO_ROUTE),
            metrics,
        })
    }

    /// Whether `other` binds the same listeners; reload cannot move sockets.
    pub fn same_listeners(&self, other: &Snapshot) -> bool {
        self.admin.as_ref().map(|a| a.address) == other.admin.as_ref().map(|a| a.address)
            && self.listeners.len() == other.listeners.len()
            && self.listeners.iter().zip(&other.listeners).all(|(a, b)| {
                a.name == b.name && a.address == b.address && a.tls.is_some() == b.tls.is_some()
            })
    }
}

/// The hosts `config` serves over https, on the ports browsers reach them on (443, and
/// the listener's own port): where a browser may return after signing in.
fn served(config: &Config) -> drawbridge_session::Served {
    let mut origins = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if l.tls.is_none() || l.redirect_to_https.is_some() {
            continue;
        }
        for r in &config.routes {
            if !r.listeners.as_ref().is_none_or(|ls| ls.contains(&i)) {
                continue;
            }
            if let drawbridge_config::HostMatch::Exact(h) = &r.host {
                for port in [443, l.address.port()] {
                    if let Ok(o) = drawbridge_session::Origin::new(h, port)
                        && !origins.contains(&o)
                    {
                        origins.push(o);
                    }
                }
            }
        }
    }
    if let Some(s) = config.sessions.as_ref().and_then(|s| s.sign_in.as_ref())
        && let Ok(o) = drawbridge_session::Origin::new(&s.host, s.port)
        && !origins.contains(&o)
    {
        origins.push(o);
    }
    drawbridge_session::Served::new(origins)
}
