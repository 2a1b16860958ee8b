//! Raw file -> checked [`Config`]. Every check lives here, so `check` and `serve` agree.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use toml::Spanned;

use crate::diag::Reporter;
use crate::model::*;
use crate::raw::*;

mod alerts;
mod authn;
pub use authn::parse_url as https_url;
mod mfa;
mod policy;
mod sso;

/// Methods a route may name.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Whether a path segment is a whole `{name}` parameter.
fn is_param_segment(seg: &str) -> bool {
    seg.strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .is_some_and(|name| {
            name.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The path prefix Drawbridge keeps for itself on every listener.
pub const RESERVED_PREFIX: &str = "/.drawbridge";

/// The longest duration a setting takes (humantime's 100 years): every timeout, age and
/// lifetime becomes a deadline on a clock, and a duration past the clock's reach would
/// overflow it.
const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

pub(crate) fn compile(
    file: &Path,
    source: &str,
    raw: RawConfig,
) -> Result<Config, crate::Diagnostics> {
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut cx = Cx {
        r: Reporter::new(file, source),
        base,
        files: Vec::new(),
    };

    let server = cx.server(&raw.server);
    let listeners: Vec<Listener> = raw
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| cx.listener(i, l))
        .collect();
    if raw.listeners.is_empty() {
        cx.r.error_help(
            0,
            "listeners",
            "no listener is configured",
            "add a `[[listeners]]` table with a `name` and an `address`",
        );
    }
    cx.unique("listeners", raw.listeners.iter().map(|l| &l.get_ref().name));
    cx.distinct_addresses(&raw.listeners);

    let upstreams: Vec<Upstream> = raw
        .upstreams
        .iter()
        .enumerate()
        .filter_map(|(i, u)| cx.upstream(i, u))
        .collect();
    cx.unique("upstreams", raw.upstreams.iter().map(|u| &u.get_ref().name));

    let upstream_index: HashMap<&str, usize> = raw
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| (u.get_ref().name.get_ref().as_str(), i))
        .collect();
    let listener_index: HashMap<&str, usize> = raw
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (l.get_ref().name.get_ref().as_str(), i))
        .collect();
    let authenticators: Vec<Authenticator> = raw
        .authenticators
        .iter()
        .enumerate()
        .filter_map(|(i, a)| cx.authenticator(i, a))
        .collect();
    cx.unique(
        "authenticators",
        raw.authenticators.iter().map(|a| &a.get_ref().name),
    );
    let authenticator_index: HashMap<&str, usize> = raw
        .authenticators
        .iter()
        .enumerate()
        .map(|(i, a)| (a.get_ref().name.get_ref().as_str(), i))
        .collect();
    let admin = cx.admin(raw.admin.as_ref(), &raw.listeners, &authenticators);
    let audit = cx.audit(raw.audit.as_ref(), &server);
    let policy = cx.policy(raw.policy.as_ref());
    if let Some(names) = raw
        .policy
        .as_ref()
        .and_then(|p| p.get_ref().plain_names.as_ref())
    {
        let mut seen = HashSet::new();
        for (i, n) in names.get_ref().iter().enumerate() {
            if !authenticator_index.contains_key(n.get_ref().as_str()) {
                cx.r.error_help(
                    n.span().start,
                    format!("policy.plain_names[{i}]"),
                    format!("no authenticator is named `{}`", n.get_ref()),
                    "list authenticators whose callers policies name without their authenticator",
                );
            } else if !seen.insert(n.get_ref().as_str()) {
                cx.r.error(
                    n.span().start,
                    format!("policy.plain_names[{i}]"),
                    format!("`{}` is listed twice", n.get_ref()),
                );
            }
        }
        if names.get_ref().len() > 1 {
            let listed: Vec<&str> = names
                .get_ref()
                .iter()
                .map(|n| n.get_ref().as_str())
                .collect();
            cx.r.warn(
                names.span().start,
                "policy.plain_names",
                format!(
                    "{} are declared equivalent: a plain `User::\"alice\"` or `Group::\"admins\"` is whoever any of them names so",
                    sorted(listed)
                ),
                "list one authenticator, unless the issuers' names really are one namespace",
            );
        }
    }
    let names = Names {
        upstreams: &upstream_index,
        listeners: &listener_index,
        authenticators: &authenticator_index,
        policy: policy.is_some(),
    };
    let routes: Vec<(usize, Route)> = raw
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| cx.route(i, r, &names).map(|route| (i, route)))
        .collect();
    cx.unique("routes", raw.routes.iter().map(|r| &r.get_ref().name));
    cx.mtls_routes(&routes, &raw, &listeners);
    // A redirecting listener serves no route.
    for (i, r) in &routes {
        if let Some(ls) = &r.listeners
            && let Some(&l) = ls
                .iter()
                .find(|&&l| listeners[l].redirect_to_https.is_some())
        {
            let span = raw.routes[*i]
                .get_ref()
                .listeners
                .as_ref()
                .map_or(raw.routes[*i].span().start, |l| l.span().start);
            cx.r.error_help(
                span,
                format!("routes[{i}].listeners"),
                format!(
                    "listener `{}` only redirects to HTTPS; it serves no route",
                    listeners[l].name
                ),
                "serve the route on the HTTPS listener",
            );
        }
    }
    cx.overlaps(&routes, &raw.routes);

    let identity = cx.identity(raw.identity.as_ref());
    let signs_in = authenticators
        .iter()
        .any(|a| matches!(a.kind, AuthenticatorKind::Oidc(_)));
    let alerts = cx.alerts(raw.alerts.as_ref());
    let tracing = raw.tracing.as_ref().and_then(|t| cx.tracing(t));
    // Blocks live in the session store: one is kept for them when nobody signs in.
    let blocks = alerts.detectors.iter().any(|d| d.block.is_some());
    let sessions = cx.sessions(raw.sessions.as_ref(), signs_in || blocks);
    let mfa = cx.mfa(
        raw.mfa.as_ref(),
        sessions.is_some() && (signs_in || raw.sessions.is_some()),
    );
    cx.mfa_routes(&routes, &raw.routes, &authenticators, mfa.is_some());
    cx.sign_in_routes(&routes, &raw.routes, &listeners, &authenticators);
    cx.context_credentials(&routes, &raw.routes, &authenticators, &identity.header);
    // A configured identity header outside `x-drawbridge-` is Drawbridge's too.
    for (i, r) in &routes {
        let named = r
            .request_headers
            .set
            .iter()
            .map(|(n, _)| n)
            .chain(&r.request_headers.remove)
            .chain(r.response_headers.set.iter().map(|(n, _)| n))
            .chain(&r.response_headers.remove);
        if named.into_iter().any(|n| *n == identity.header) {
            cx.r.error_help(
                raw.routes[*i].span().start,
                format!("routes[{i}]"),
                format!(
                    "`{}` is the identity header; a route cannot set or remove it",
                    identity.header
                ),
                "remove it from `request_headers` and `response_headers`",
            );
        }
    }
    if identity.header == "authorization" {
        // The assertion would replace the very credential such a route promises to pass.
        for (i, r) in &routes {
            if let Admission::Authenticated {
                pass_credentials: true,
                ..
            } = r.admission
                && let Some(p) = &raw.routes[*i].get_ref().pass_credentials
            {
                cx.r.error_help(
                    p.span().start,
                    format!("routes[{i}].pass_credentials"),
                    "the identity assertion travels in `Authorization`, which this route would pass through",
                    "carry the assertion in a header of its own (`[identity] header`), or stop passing credentials",
                );
            }
        }
    }

    let warnings = cx.r.take_warnings();
    cx.r.finish()?;
    // SHA-256 of the config and of every file it reads (names and contents): the same on
    // every build and every machine for the same files.
    let mut parts: Vec<&[u8]> = vec![source.as_bytes()];
    for (path, digest) in &cx.files {
        parts.push(path.as_os_str().as_encoded_bytes());
        parts.push(digest);
    }
    let version = base16ct::lower::encode_string(&crate::sha256(&parts)[..16]);
    Ok(Config {
        source: file.to_path_buf(),
        version,
        files: cx.files.into_iter().map(|(p, _)| p).collect(),
        server,
        listeners,
        upstreams,
        routes: routes.into_iter().map(|(_, r)| r).collect(),
        authenticators,
        identity,
        policy,
        admin,
        audit,
        alerts,
        tracing,
        sessions,
        mfa,
        warnings,
    })
}

/// What routes may refer to, by name.
struct Names<'a> {
    upstreams: &'a HashMap<&'a str, usize>,
    listeners: &'a HashMap<&'a str, usize>,
    authenticators: &'a HashMap<&'a str, usize>,
    /// Whether `[policy]` is present.
    policy: bool,
}

struct Cx<'a> {
    r: Reporter<'a>,
    base: PathBuf,
    /// Files besides the config that make it up (key sets, keys files), with their
    /// contents' hash: part of the version, and watched for reload.
    files: Vec<(PathBuf, [u8; 32])>,
}

impl Cx<'_> {
    fn server(&mut self, raw: &RawServer) -> Server {
        let shutdown_timeout = self.duration(
            "server.shutdown_timeout",
            raw.shutdown_timeout.as_ref(),
            Duration::from_secs(30),
        );
        let trusted_proxies = self.ip_nets("server.trusted_proxies", &raw.trusted_proxies);
        let access_log = self.log_target("server.access_log", raw.access_log.as_ref());
        let audit_log = self.log_target("server.audit_log", raw.audit_log.as_ref());
        let strip_headers = raw
            .strip_headers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| self.header_name(&format!("server.strip_headers[{i}]"), h, true))
            .collect();
        Server {
            shutdown_timeout,
            trusted_proxies,
            access_log,
            audit_log,
            watch: raw.watch.unwrap_or(true),
            strip_headers,
        }
    }

    /// A header name as a config lists it: lower-cased, letters, digits and `-` only (so it
    /// has one spelling); `prefix` lets it end in `*`.
    fn header_name(&mut self, field: &str, raw: &Spanned<String>, prefix: bool) -> Option<String> {
        let name = raw.get_ref().trim().to_ascii_lowercase();
        let stem = if prefix {
            name.strip_suffix('*').unwrap_or(&name)
        } else {
            &name
        };
        if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            self.r.error_help(
                raw.span().start,
                field,
                format!("`{}` is not a header name Drawbridge can match", raw.get_ref()),
                if prefix {
                    "use letters, digits and `-` (`_` and `.` are folded into `-`); end with `*` for a prefix"
                } else {
                    "use letters, digits and `-` (`_` and `.` are folded into `-`)"
                },
            );
            return None;
        }
        Some(name)
    }

    /// One of a few named settings; the first is the default. An unknown name is reported
    /// with the ones there are.
    pub(crate) fn choice<T: Copy>(
        &mut self,
        field: &str,
        raw: Option<&Spanned<String>>,
        options: &[(&str, T)],
    ) -> T {
        let Some(raw) = raw else { return options[0].1 };
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == raw.get_ref()) {
            return *v;
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("`{n}`")).collect();
        self.r.error_help(
            raw.span().start,
            field,
            format!("unknown setting `{}`", raw.get_ref()),
            format!("use {}", names.join(", ")),
        );
        options[0].1
    }

    /// `stdout`, `stderr`, `off` or a file path (relative to the config's directory).
    /// `[audit]`: rotation only for a trail written to a file.
    fn audit(&mut self, raw: Option<&Spanned<RawAudit>>, server: &Server) -> Audit {
        let Some(raw) = raw else {
            return Audit::default();
        };
        let r = raw.get_ref();
        let rotate_bytes = r.rotate_bytes.as_ref().map(|_| {
            self.int(
                "audit.rotate_bytes",
                r.rotate_bytes.as_ref(),
                64 * 1024,
                i64::MAX,
                0,
            ) as u64
        });
        let rotate_every = r
            .rotate_every
            .as_ref()
            .map(|d| self.duration("audit.rotate_every", Some(d), Duration::from_secs(86_400)));
        if (rotate_bytes.is_some() || rotate_every.is_some())
            && !matches!(server.audit_log, AccessLogTarget::File(_))
        {
            self.r.error_help(
                raw.span().start,
                "audit",
                "the audit trail rotates only when it is written to a file",
                "set `[server] audit_log` to a file path, or leave `rotate_bytes` and `rotate_every` out",
            );
        }
        let syslog = r.syslog.as_ref().and_then(|s| {
            let text = s.get_ref();
            let target = if let Some(addr) = text.strip_prefix("udp://") {
                addr.parse().ok().map(SyslogTarget::Udp)
            } else {
                text.strip_prefix("unix://")
                    .filter(|p| p.starts_with('/'))
                    .map(|p| SyslogTarget::Unix(PathBuf::from(p)))
            };
            if target.is_none() {
                self.r.error_help(
                    s.span().start,
                    "audit.syslog",
                    format!("`{text}` is not a syslog receiver"),
                    "write `udp://10.0.0.9:514` or `unix:///dev/log`",
                );
            }
            target
        });
        let required = r.required.unwrap_or(false);
        if required && server.audit_log == AccessLogTarget::Off {
            self.r.error_help(
                raw.span().start,
                "audit.required",
                "a required audit trail that is off would refuse every decided request",
                "set `[server] audit_log` to a file (or `stdout`), or leave `required` out",
            );
        }
        Audit {
            rotate_bytes,
            rotate_every,
            required,
            syslog,
        }
    }

    /// A list of addresses and CIDR ranges (`field[i]` names a bad one).
    fn ip_nets(&mut self, field: &str, raw: &[Spanned<String>]) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let text = s.get_ref().trim();
            match text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
            {
                Ok(net) => out.push(net.trunc()),
                Err(_) => self.r.error_help(
                    s.span().start,
                    format!("{field}[{i}]"),
                    format!("`{text}` is not an IP address or CIDR range"),
                    "write an address (`10.0.0.7`) or a range (`10.0.0.0/8`)",
                ),
            }
        }
        out
    }

    fn log_target(&mut self, field: &str, raw: Option<&Spanned<String>>) -> AccessLogTarget {
        match raw {
            None => AccessLogTarget::Stdout,
            Some(s) => match s.get_ref().as_str() {
                "stdout" => AccessLogTarget::Stdout,
                "stderr" => AccessLogTarget::Stderr,
                "off" => AccessLogTarget::Off,
                "" => {
                    self.r.error_help(
                        s.span().start,
                        field,
                        "empty log target",
                        "use `stdout`, `stderr`, `off` or a file path",
                    );
                    AccessLogTarget::Off
                }
                path => AccessLogTarget::File(self.base.join(path)),
            },
        }
    }

    fn listener(&mut self, i: usize, raw: &Spanned<RawListener>) -> Option<Listener> {
        let at = format!("listeners[{i}]");
        let l = raw.get_ref();
        self.name(&format!("{at}.name"), &l.name);
        let address = match l.address.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.r.error_help(
                    l.address.span().start,
                    format!("{at}.address"),
                    format!("`{}` is not a socket address", l.address.get_ref()),
                    "write an IP and a port: `127.0.0.1:8080` or `[::]:443`",
                );
                None
            }
        };
        let tls = l.tls.as_ref().map(|t| self.tls(&format!("{at}.tls"), t));
        let limits = self.limits(&format!("{at}.limits"), &l.limits);
        let nonstandard_header_names = self.choice(
            &format!("{at}.nonstandard_header_names"),
            l.nonstandard_header_names.as_ref(),
            &[
                ("drop", NonstandardHeaderNames::Drop),
                ("refuse", NonstandardHeaderNames::Refuse),
                ("forward", NonstandardHeaderNames::Forward),
            ],
        );
        let redirect = l.redirect_to_https.as_ref().filter(|r| *r.get_ref());
        if let (Some(r), Some(_)) = (redirect, &l.tls) {
            self.r.error_help(
                r.span().start,
                format!("{at}.redirect_to_https"),
                "a TLS listener redirecting to HTTPS would redirect to itself",
                "set it on the plaintext listener, or remove it",
            );
        }
        if let (None, Some(p)) = (redirect, &l.https_port) {
            self.r.error_help(
                p.span().start,
                format!("{at}.https_port"),
                "`https_port` is the port a redirecting listener sends clients to",
                "set `redirect_to_https = true`, or remove it",
            );
        }
        let redirect_to_https = redirect.map(|_| {
            self.int(
                &format!("{at}.https_port"),
                l.https_port.as_ref(),
                1,
                65535,
                443,
            ) as u16
        });
        Some(Listener {
            name: l.name.get_ref().clone(),
            address: address?,
            http2: l.http2.unwrap_or(true),
            tls: tls.flatten(),
            limits,
            nonstandard_header_names,
            redirect_to_https,
            location: self.r.locate(raw.span().start),
        })
    }

    fn tls(&mut self, at: &str, raw: &Spanned<RawTls>) -> Option<Tls> {
        let t = raw.get_ref();
        if t.certificates.is_empty() {
            self.r.error_help(
                raw.span().start,
                format!("{at}.certificates"),
                "a TLS listener needs at least one certificate",
                "add `[[listeners.tls.certificates]]` with `cert` and `key`",
            );
        }
        let min_version = match t.min_version.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("1.2") => TlsVersion::Tls12,
            Some("1.3") => TlsVersion::Tls13,
            Some(other) => {
                let span = t.min_version.as_ref().map(|v| v.span().start).unwrap_or(0);
                self.r.error_help(
                    span,
                    format!("{at}.min_version"),
                    format!("unsupported TLS version `{other}`"),
                    "use `1.2` or `1.3`; older versions are not offered",
                );
                TlsVersion::Tls12
            }
        };
        let mut certificates = Vec::new();
        let mut seen = HashSet::new();
        for (i, c) in t.certificates.iter().enumerate() {
            let cat = format!("{at}.certificates[{i}]");
            let cr = c.get_ref();
            let chain = self.read_pem(&format!("{cat}.cert"), &cr.cert, |bytes| {
                CertificateDer::pem_slice_iter(bytes)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        if v.is_empty() {
                            Err("no certificate in the file".into())
                        } else {
                            Ok(v)
                        }
                    })
            });
            let key = self.read_pem(&format!("{cat}.key"), &cr.key, |bytes| {
                PrivateKeyDer::from_pem_slice(bytes).map_err(|e| e.to_string())
            });
            let mut server_names = Vec::new();
            for (j, n) in cr.server_names.iter().enumerate() {
                match host_pattern(n.get_ref()) {
                    Ok(HostMatch::Exact(h)) => server_names.push(h),
                    Ok(HostMatch::Suffix(s)) => server_names.push(format!("*.{s}")),
                    Ok(HostMatch::Any) | Err(_) => {
                        self.r.error_help(
                            n.span().start,
                            format!("{cat}.server_names[{j}]"),
                            format!("`{}` is not a host name", n.get_ref()),
                            "write a DNS name (`api.example.com`) or a wildcard (`*.example.com`)",
                        );
                        continue;
                    }
                }
                if !seen.insert(server_names.last().cloned().unwrap_or_default()) {
                    self.r.error(
                        n.span().start,
                        format!("{cat}.server_names[{j}]"),
                        format!("`{}` is served by an earlier certificate", n.get_ref()),
                    );
                }
            }
            if let (Some(chain), Some(key)) = (chain, key) {
                certificates.push(Certificate {
                    chain,
                    key,
                    server_names,
                    location: self.r.locate(c.span().start),
                });
            }
        }
        let client_auth = self.client_auth(at, t);
        let hsts = t.hsts.as_ref().and_then(|h| {
            let v = h.get_ref().trim();
            let max_age = v
                .split(';')
                .next()
                .and_then(|d| d.trim().strip_prefix("max-age="))
                .is_some_and(|n| n.trim_matches('"').parse::<u64>().is_ok());
            let text = v.bytes().all(|b| (0x20..0x7f).contains(&b));
            if max_age && text {
                Some(v.to_string())
            } else {
                self.r.error_help(
                    h.span().start,
                    format!("{at}.hsts"),
                    format!("`{v}` is not a Strict-Transport-Security value"),
                    "start with `max-age=SECONDS`, then `; includeSubDomains` or `; preload` if wanted",
                );
                None
            }
        });
        Some(Tls {
            certificates,
            min_version,
            client_auth,
            hsts,
        })
    }

    pub(super) fn read_pem<T>(
        &mut self,
        field: &str,
        path: &Spanned<String>,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Option<T> {
        let full = self.base.join(path.get_ref());
        match std::fs::read(&full) {
            Ok(bytes) => match parse(&bytes) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.r.error(
                        path.span().start,
                        field,
                        format!("`{}` holds no usable PEM: {e}", full.display()),
                    );
                    None
                }
            },
            Err(e) => {
                self.r.error_help(
                    path.span().start,
                    field,
                    format!("cannot read `{}`: {e}", full.display()),
                    "paths are relative to the config file's directory",
                );
                None
            }
        }
    }

    /// A PEM file of one or more certificates (CAs to trust).
    fn read_certs(
        &mut self,
        field: &str,
        path: &Spanned<String>,
    ) -> Option<Vec<CertificateDer<'static>>> {
        self.read_pem(field, path, |bytes| {
            let certs = CertificateDer::pem_slice_iter(bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            if certs.is_empty() {
                return Err("no certificate in the file".into());
            }
            Ok(certs)
        })
    }

    fn limits(&mut self, at: &str, raw: &RawLimits) -> Limits {
        let d = Limits::default();
        Limits {
            max_header_bytes: self.int(
                &format!("{at}.max_header_bytes"),
                raw.max_header_bytes.as_ref(),
                8192,
                1 << 20,
                d.max_header_bytes as i64,
            ) as usize,
            max_headers: self.int(
                &format!("{at}.max_headers"),
                raw.max_headers.as_ref(),
                1,
                1000,
                d.max_headers as i64,
            ) as usize,
            max_uri_bytes: self.int(
                &format!("{at}.max_uri_bytes"),
                raw.max_uri_bytes.as_ref(),
                64,
                65534,
                d.max_uri_bytes as i64,
            ) as usize,
            max_body_bytes: self.int(
                &format!("{at}.max_body_bytes"),
                raw.max_body_bytes.as_ref(),
                0,
                i64::MAX,
                d.max_body_bytes as i64,
            ) as u64,
            header_read_timeout: self.duration(
                &format!("{at}.header_read_timeout"),
                raw.header_read_timeout.as_ref(),
                d.header_read_timeout,
            ),
            idle_timeout: self.duration(
                &format!("{at}.idle_timeout"),
                raw.idle_timeout.as_ref(),
                d.idle_timeout,
            ),
            body_idle_timeout: self.duration(
                &format!("{at}.body_idle_timeout"),
                raw.body_idle_timeout.as_ref(),
                d.body_idle_timeout,
            ),
            max_connection_age: self.duration(
                &format!("{at}.max_connection_age"),
                raw.max_connection_age.as_ref(),
                d.max_connection_age,
            ),
            max_connections: self.int(
                &format!("{at}.max_connections"),
                raw.max_connections.as_ref(),
                1,
                10_000_000,
                d.max_connections as i64,
            ) as usize,
            max_concurrent_streams: self.int(
                &format!("{at}.max_concurrent_streams"),
                raw.max_concurrent_streams.as_ref(),
                1,
                100_000,
                d.max_concurrent_streams as i64,
            ) as u32,
        }
    }

    fn upstream(&mut self, i: usize, raw: &Spanned<RawUpstream>) -> Option<Upstream> {
        let at = format!("upstreams[{i}]");
        let u = raw.get_ref();
        self.name(&format!("{at}.name"), &u.name);
        if u.endpoints.get_ref().is_empty() {
            self.r.error_help(
                u.endpoints.span().start,
                format!("{at}.endpoints"),
                "an upstream needs at least one endpoint",
                "list URLs such as `http://127.0.0.1:9000`",
            );
        }
        let mut endpoints = Vec::new();
        for (j, e) in u.endpoints.get_ref().iter().enumerate() {
            match parse_endpoint(e.get_ref()) {
                Ok(ep) => {
                    if endpoints.contains(&ep) {
                        self.r.error(
                            e.span().start,
                            format!("{at}.endpoints[{j}]"),
                            format!("endpoint `{}` is listed twice", e.get_ref()),
                        );
                    }
                    endpoints.push(ep)
                }
                Err(msg) => self.r.error_help(
                    e.span().start,
                    format!("{at}.endpoints[{j}]"),
                    msg,
                    "write `http://host:port` or `https://host:port`, nothing after the port",
                ),
            }
        }
        let protocol = match u.protocol.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("auto") => UpstreamProtocol::Auto,
            Some("http1") => UpstreamProtocol::Http1,
            Some("http2") => UpstreamProtocol::Http2,
            Some(other) => {
                self.r.error_help(
                    u.protocol.as_ref().map_or(0, |p| p.span().start),
                    format!("{at}.protocol"),
                    format!("unknown protocol `{other}`"),
                    "use `auto`, `http1` or `http2` (h2c for plaintext endpoints)",
                );
                UpstreamProtocol::Auto
            }
        };
        let balance = self.choice(
            &format!("{at}.balance"),
            u.balance.as_ref(),
            &[
                ("round_robin", Balance::RoundRobin),
                ("least_requests", Balance::LeastRequests),
            ],
        );
        let ca = u
            .ca_file
            .as_ref()
            .and_then(|f| self.read_certs(&format!("{at}.ca_file"), f));
        let any_tls = endpoints.iter().any(|e| e.tls);
        if !any_tls {
            for (field, v) in [
                ("ca_file", &u.ca_file),
                ("tls_server_name", &u.tls_server_name),
            ] {
                if let Some(v) = v {
                    self.r.error_help(
                        v.span().start,
                        format!("{at}.{field}"),
                        "set, but no endpoint uses `https`",
                        "remove it, or make the endpoints `https://`",
                    );
                }
            }
        }
        let max_failures = self.int(
            &format!("{at}.health.max_failures"),
            u.health.max_failures.as_ref(),
            1,
            1000,
            5,
        ) as u32;
        let ejection = self.duration(
            &format!("{at}.health.ejection"),
            u.health.ejection.as_ref(),
            Duration::from_secs(30),
        );
        let check = self.health_check(&format!("{at}.health"), &u.health);
        let host_header = self.choice(
            &format!("{at}.host_header"),
            u.host_header.as_ref(),
            &[
                ("client", HostHeader::Client),
                ("endpoint", HostHeader::Endpoint),
            ],
        );
        Some(Upstream {
            host_header,
            name: u.name.get_ref().clone(),
            endpoints,
            protocol,
            balance,
            ca,
            tls_server_name: u.tls_server_name.as_ref().map(|s| s.get_ref().clone()),
            connect_timeout: self.duration(
                &format!("{at}.connect_timeout"),
                u.connect_timeout.as_ref(),
                Duration::from_secs(5),
            ),
            request_timeout: self.duration(
                &format!("{at}.request_timeout"),
                u.request_timeout.as_ref(),
                Duration::from_secs(60),
            ),
            idle_timeout: self.duration(
                &format!("{at}.idle_timeout"),
                u.idle_timeout.as_ref(),
                Duration::from_secs(90),
            ),
            max_idle_connections: self.int(
                &format!("{at}.max_idle_connections"),
                u.max_idle_connections.as_ref(),
                0,
                100_000,
                256,
            ) as usize,
            max_requests: self.int(
                &format!("{at}.max_requests"),
                u.max_requests.as_ref(),
                1,
                10_000_000,
                10_000,
            ) as usize,
            retries: self.int(&format!("{at}.retries"), u.retries.as_ref(), 0, 10, 1) as u32,
            health: Health {
                max_failures,
                ejection,
                check,
            },
            location: self.r.locate(raw.span().start),
        })
    }

    fn route(&mut self, i: usize, raw: &Spanned<RawRoute>, names: &Names<'_>) -> Option<Route> {
        let (upstreams, listeners) = (names.upstreams, names.listeners);
        let at = format!("routes[{i}]");
        let r = raw.get_ref();
        self.name(&format!("{at}.name"), &r.name);
        let start = raw.span().start;
        let host = match r.host.as_ref() {
            None => Some(HostMatch::Any),
            Some(h) => match host_pattern(h.get_ref()) {
                Ok(m) => Some(m),
                Err(msg) => {
                    self.r.error_help(h.span().start, format!("{at}.host"), msg, "write a host name (`api.example.com`) or a wildcard (`*.example.com`), without port");
                    None
                }
            },
        };
        let path = match (&r.path, &r.prefix) {
            (Some(_), Some(p)) => {
                self.r.error_help(
                    p.span().start,
                    format!("{at}.prefix"),
                    "a route has `path` or `prefix`, not both",
                    "`path` matches one path exactly, `prefix` a whole subtree",
                );
                None
            }
            (None, None) => {
                self.r.error_help(
                    start,
                    at.clone(),
                    "the route matches no path",
                    "add `prefix = \"/\"` to match every path, or `path = \"/exact\"`",
                );
                None
            }
            (Some(p), None) => self
                .route_path(&format!("{at}.path"), p)
                .map(PathMatch::Exact),
            (None, Some(p)) => self.route_path(&format!("{at}.prefix"), p).map(|p| {
                let trimmed = p.trim_end_matches('/');
                PathMatch::Prefix(if trimmed.is_empty() {
                    "/".into()
                } else {
                    trimmed.into()
                })
            }),
        };
        if let Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) = &path
            && crate::model::prefix_matches(RESERVED_PREFIX, p)
        {
            let span = r
                .path
                .as_ref()
                .or(r.prefix.as_ref())
                .map_or(start, |s| s.span().start);
            self.r.error_help(
                span,
                format!("{at}.{}", if r.path.is_some() { "path" } else { "prefix" }),
                format!("`{RESERVED_PREFIX}/` is reserved for Drawbridge"),
                "choose another path",
            );
        }
        let methods = r.methods.as_ref().map(|ms| {
            if ms.get_ref().is_empty() {
                self.r.error_help(
                    ms.span().start,
                    format!("{at}.methods"),
                    "an empty method list matches nothing",
                    "remove `methods` to allow every method, or list some",
                );
            }
            let mut out: Vec<String> = Vec::new();
            for (j, m) in ms.get_ref().iter().enumerate() {
                let up = m.get_ref().to_ascii_uppercase();
                if !METHODS.contains(&up.as_str()) {
                    self.r.error_help(
                        m.span().start,
                        format!("{at}.methods[{j}]"),
                        format!("unknown method `{}`", m.get_ref()),
                        format!("use one of {}", METHODS.join(", ")),
                    );
                } else if out.contains(&up) {
                    self.r.error(
                        m.span().start,
                        format!("{at}.methods[{j}]"),
                        format!("method `{up}` is listed twice"),
                    );
                } else {
                    out.push(up);
                }
            }
            out
        });
        let upstream = match upstreams.get(r.upstream.get_ref().as_str()) {
            Some(&u) => Some(u),
            None => {
                let known: Vec<&str> = upstreams.keys().copied().collect();
                self.r.error_help(
                    r.upstream.span().start,
                    format!("{at}.upstream"),
                    format!("no upstream is named `{}`", r.upstream.get_ref()),
                    if known.is_empty() {
                        "declare it in an `[[upstreams]]` table".to_string()
                    } else {
                        format!("known upstreams: {}", sorted(known))
                    },
                );
                None
            }
        };
        let strip_prefix = r.strip_prefix.as_ref().is_some_and(|s| *s.get_ref());
        if strip_prefix && r.prefix.is_none() {
            let span = r.strip_prefix.as_ref().map_or(start, |s| s.span().start);
            self.r.error_help(
                span,
                format!("{at}.strip_prefix"),
                "`strip_prefix` needs a `prefix`",
                "use `prefix` instead of `path`, or remove `strip_prefix`",
            );
        }
        let admission = self.admission(&at, start, r, names.authenticators);
        let (authorization, params, context) = self.route_policy(
            &at,
            start,
            r,
            path.as_ref(),
            admission.as_ref(),
            names.policy,
        );
        let route_listeners = r.listeners.as_ref().map(|ls| {
            let mut out = Vec::new();
            for (j, l) in ls.get_ref().iter().enumerate() {
                match listeners.get(l.get_ref().as_str()) {
                    Some(&idx) => out.push(idx),
                    None => self.r.error(
                        l.span().start,
                        format!("{at}.listeners[{j}]"),
                        format!("no listener is named `{}`", l.get_ref()),
                    ),
                }
            }
            if ls.get_ref().is_empty() {
                self.r.error_help(
                    ls.span().start,
                    format!("{at}.listeners"),
                    "an empty listener list serves nothing",
                    "remove `listeners` to serve on every listener",
                );
            }
            out
        });
        let identity_headers = r.identity_headers.as_ref().is_some_and(|v| *v.get_ref());
        if identity_headers
            && r.authenticate.is_none()
            && let Some(v) = &r.identity_headers
        {
            self.r.error_help(
                v.span().start,
                format!("{at}.identity_headers"),
                "a public route has no caller to describe",
                "remove `identity_headers`, or name authenticators with `authenticate`",
            );
        }
        let max_body_bytes = r
            .max_body_bytes
            .as_ref()
            .map(|v| self.int(&format!("{at}.max_body_bytes"), Some(v), 0, i64::MAX, 0) as u64);
        let pass_headers = self.pass_headers(&at, r);
        let rules = [("refuse", QueryRule::Refuse), ("strip", QueryRule::Strip)];
        let query_credentials = self.choice(
            &format!("{at}.query_credentials"),
            r.query_credentials.as_ref(),
            &rules,
        );
        let method_override = self.choice(
            &format!("{at}.method_override"),
            r.method_override.as_ref(),
            &rules,
        );
        let max_stream_lifetime = self.duration(
            &format!("{at}.max_stream_lifetime"),
            r.max_stream_lifetime.as_ref(),
            Duration::from_secs(24 * 3600),
        );
        let forward_client_cert = self.choice(
            &format!("{at}.forward_client_cert"),
            r.forward_client_cert.as_ref(),
            &[
                ("off", ForwardClientCert::Off),
                ("on", ForwardClientCert::On),
                ("with_subject", ForwardClientCert::WithSubject),
            ],
        );
        let request_headers = self.header_edits(
            &format!("{at}.request_headers"),
            r.request_headers.as_ref(),
            true,
        );
        let response_headers = self.header_edits(
            &format!("{at}.response_headers"),
            r.response_headers.as_ref(),
            false,
        );
        let mfa = self.route_mfa(&at, r.mfa.as_ref());
        Some(Route {
            mfa,
            request_headers,
            response_headers,
            forward_client_cert,
            max_stream_lifetime,
            pass_headers,
            request_trailers: r.request_trailers.as_ref().is_some_and(|v| *v.get_ref()),
            query_credentials,
            method_override,
            name: r.name.get_ref().clone(),
            host: host?,
            path: path?,
            methods,
            upstream: upstream?,
            strip_prefix,
            admission: admission?.with(authorization),
            listeners: route_listeners,
            max_body_bytes,
            identity_headers,
            params,
            context,
            location: self.r.locate(start),
        })
    }

    /// `pass_headers`: names only; never the headers Drawbridge itself sets or that frame the
    /// connection.
    fn pass_headers(&mut self, at: &str, r: &RawRoute) -> Vec<String> {
        match r.pass_headers.as_ref() {
            Some(list) => self.route_header_names(
                &format!("{at}.pass_headers"),
                list.get_ref(),
                "is set by Drawbridge and never taken from a client",
                "remove it; the upstream receives Drawbridge's own value",
            ),
            None => Vec::new(),
        }
    }

    /// Header names a route lists (folded, lower-case), never one Drawbridge sets itself:
    /// those are reported with `why` and `help`.
    fn route_header_names(
        &mut self,
        field: &str,
        list: &[Spanned<String>],
        why: &str,
        help: &str,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (j, h) in list.iter().enumerate() {
            let field = format!("{field}[{j}]");
            let Some(name) = self.header_name(&field, h, false) else {
                continue;
            };
            if crate::headers::is_drawbridge_set(&name) {
                self.r
                    .error_help(h.span().start, field, format!("`{name}` {why}"), help);
                continue;
            }
            out.push(name);
        }
        out
    }

    /// `[upstreams.health]`'s active checks: on when `check_path` is set; the other check
    /// settings without it are refused.
    fn health_check(&mut self, at: &str, h: &RawHealth) -> Option<HealthCheck> {
        let Some(path) = &h.check_path else {
            for (field, start) in [
                (
                    "check_interval",
                    h.check_interval.as_ref().map(|v| v.span().start),
                ),
                (
                    "check_timeout",
                    h.check_timeout.as_ref().map(|v| v.span().start),
                ),
                (
                    "healthy_threshold",
                    h.healthy_threshold.as_ref().map(|v| v.span().start),
                ),
                (
                    "unhealthy_threshold",
                    h.unhealthy_threshold.as_ref().map(|v| v.span().start),
                ),
            ] {
                if let Some(start) = start {
                    self.r.error_help(
                        start,
                        format!("{at}.{field}"),
                        "active checks are off without `check_path`",
                        "set `check_path = \"/healthz\"` (the path each endpoint is asked), or remove it",
                    );
                }
            }
            return None;
        };
        let p = path.get_ref();
        // The proxy parses it as a request target when it builds the pool.
        let valid = p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
        if !valid {
            self.r.error_help(
                path.span().start,
                format!("{at}.check_path"),
                format!("`{p}` is not a request path"),
                "write an absolute path: `/healthz`",
            );
            return None;
        }
        let interval = self.duration(
            &format!("{at}.check_interval"),
            h.check_interval.as_ref(),
            Duration::from_secs(10),
        );
        let timeout = self.duration(
            &format!("{at}.check_timeout"),
            h.check_timeout.as_ref(),
            Duration::from_secs(2),
        );
        Some(HealthCheck {
            path: p.clone(),
            interval,
            timeout,
            healthy_threshold: self.int(
                &format!("{at}.healthy_threshold"),
                h.healthy_threshold.as_ref(),
                1,
                100,
                2,
            ) as u32,
            unhealthy_threshold: self.int(
                &format!("{at}.unhealthy_threshold"),
                h.unhealthy_threshold.as_ref(),
                1,
                100,
                3,
            ) as u32,
        })
    }

    /// `[routes.request_headers]` / `[routes.response_headers]`: valid names and values, and
    /// never a header Drawbridge itself sets, nor one that frames the message (an upstream
    /// must never be told who is calling by anyone but Drawbridge).
    fn header_edits(
        &mut self,
        at: &str,
        raw: Option<&Spanned<RawHeaderEdits>>,
        request: bool,
    ) -> HeaderEdits {
        let mut out = HeaderEdits::default();
        let Some(raw) = raw else { return out };
        let forbidden = |name: &str| {
            crate::headers::is_drawbridge_set(name)
                || (!request && matches!(name, "set-cookie" | "www-authenticate" | "x-request-id"))
                || (request && matches!(name, "authorization" | "cookie" | "proxy-authorization"))
        };
        if let Some(list) = &raw.get_ref().remove {
            out.remove = self.route_header_names(
                &format!("{at}.remove"),
                list.get_ref(),
                "is Drawbridge's to set; a route cannot remove it",
                "remove it from the list",
            );
        }
        if let Some(map) = &raw.get_ref().set {
            for (k, v) in map.get_ref() {
                let field = format!("{at}.set.{}", k.get_ref());
                let Some(name) = self.header_name(&field, k, false) else {
                    continue;
                };
                if forbidden(&name) {
                    self.r.error_help(
                        k.span().start,
                        field,
                        format!("`{name}` cannot be set by a route"),
                        "Drawbridge sets identity, forwarding and framing headers itself, and credentials and cookies are never made up by configuration",
                    );
                    continue;
                }
                let value = v.get_ref();
                if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                    self.r.error(
                        v.span().start,
                        field,
                        "a header value cannot hold control characters",
                    );
                    continue;
                }
                out.set.push((name, value.clone()));
            }
        }
        out
    }

    /// A route that admits by client certificate must be served where one can be presented.
    fn mtls_routes(&mut self, routes: &[(usize, Route)], raw: &RawConfig, listeners: &[Listener]) {
        for (i, r) in routes {
            let Admission::Authenticated { authenticators, .. } = &r.admission else {
                continue;
            };
            let mtls = authenticators.iter().any(|&a| {
                raw.authenticators
                    .get(a)
                    .is_some_and(|a| a.get_ref().kind.get_ref() == "mtls")
            });
            let served_with_certs = listeners.iter().enumerate().any(|(li, l)| {
                r.listeners.as_ref().is_none_or(|ls| ls.contains(&li))
                    && l.tls.as_ref().is_some_and(|t| t.client_auth.is_some())
            });
            if mtls && !served_with_certs {
                let span = raw.routes[*i]
                    .get_ref()
                    .authenticate
                    .as_ref()
                    .map_or(raw.routes[*i].span().start, |a| a.span().start);
                self.r.error_help(
                    span,
                    format!("routes[{i}].authenticate"),
                    "an `mtls` authenticator, but no listener of this route asks for client certificates",
                    "set `client_ca_file` in the `[listeners.tls]` of a listener that serves the route",
                );
            }
        }
    }

    fn route_path(&mut self, field: &str, p: &Spanned<String>) -> Option<String> {
        let s = p.get_ref();
        let problem = if !s.starts_with('/') {
            Some("must start with `/`")
        } else if s.contains('%')
            || s.contains('?')
            || s.contains('#')
            || s.contains(';')
            || s.contains('\\')
        {
            Some("must be written decoded, without `%`, `?`, `#`, `;` or `\\`")
        } else if s.contains("//") || s.split('/').any(|seg| seg == "." || seg == "..") {
            Some("must be normalised: no empty, `.` or `..` segments")
        } else if s.chars().any(char::is_control) {
            Some("must not hold control characters")
        } else if s
            .split('/')
            .any(|seg| (seg.contains('{') || seg.contains('}')) && !is_param_segment(seg))
        {
            Some(
                "has a `{` or `}` that is not a whole `{name}` segment (a name is letters, digits and `_`)",
            )
        } else {
            None
        };
        match problem {
            Some(msg) => {
                self.r.error(p.span().start, field, format!("`{s}` {msg}"));
                None
            }
            None => Some(s.clone()),
        }
    }

    fn overlaps(&mut self, routes: &[(usize, Route)], raw: &[Spanned<RawRoute>]) {
        for (a_pos, (ai, a)) in routes.iter().enumerate() {
            for (bi, b) in routes.iter().skip(a_pos + 1) {
                if a.host != b.host || a.path.shape() != b.path.shape() {
                    continue;
                }
                let listeners_meet = match (&a.listeners, &b.listeners) {
                    (Some(x), Some(y)) => x.iter().any(|l| y.contains(l)),
                    _ => true,
                };
                let shared_method = match (&a.methods, &b.methods) {
                    (None, _) | (_, None) => Some("any method".to_string()),
                    (Some(x), Some(y)) => {
                        x.iter().find(|m| y.contains(m)).map(|m| format!("`{m}`"))
                    }
                };
                if let (true, Some(method)) = (listeners_meet, shared_method) {
                    self.r.error_help(
                        raw[*bi].span().start,
                        format!("routes[{bi}]"),
                        format!(
                            "route `{}` overlaps route `{}` (line {}): same host, same path and {method}, so a request could match either",
                            b.name, a.name, a.location.line
                        ),
                        "give them different hosts, paths, or disjoint `methods`",
                    );
                    let _ = ai;
                }
            }
        }
    }

    /// `[admin]`: an address no listener uses; anything but loopback only with
    /// authenticators (`jwt`, `api_key`, `mtls` over the admin listener's own TLS).
    fn admin(
        &mut self,
        raw: Option<&Spanned<RawAdmin>>,
        listeners: &[Spanned<RawListener>],
        authenticators: &[Authenticator],
    ) -> Option<Admin> {
        let raw = raw?;
        let location = self.r.locate(raw.span().start);
        let r = raw.get_ref();
        let tls = r.tls.as_ref().map(|t| self.tls("admin.tls", t));
        let tls = match tls {
            Some(None) => return None,
            Some(Some(t)) => Some(t),
            None => None,
        };
        let mut chosen = Vec::new();
        for (i, n) in r
            .authenticators
            .iter()
            .flat_map(|a| a.get_ref())
            .enumerate()
        {
            let at = format!("admin.authenticators[{i}]");
            match authenticators.iter().position(|a| a.name == *n.get_ref()) {
                None => self.r.error_help(
                    n.span().start,
                    at,
                    format!("no authenticator is named `{}`", n.get_ref()),
                    "name an authenticator declared in `[[authenticators]]`",
                ),
                Some(k) => match &authenticators[k].kind {
                    AuthenticatorKind::Oidc(_) => self.r.error_help(
                        n.span().start,
                        at,
                        format!("`{}` signs people in with sessions", n.get_ref()),
                        "the admin API takes bearer JWTs, API keys or client certificates: name a `jwt`, `api_key` or `mtls` authenticator",
                    ),
                    AuthenticatorKind::Mtls(_)
                        if tls.as_ref().is_none_or(|t| t.client_auth.is_none()) =>
                    {
                        self.r.error_help(
                            n.span().start,
                            at,
                            format!(
                                "`{}` reads client certificates, which the admin listener does not ask for",
                                n.get_ref()
                            ),
                            "add `[admin.tls]` with `certificates` and `client_ca_file`",
                        )
                    }
                    _ => chosen.push(k),
                },
            }
        }
        if let Some(a) = &r.authenticators
            && a.get_ref().is_empty()
        {
            self.r.error_help(
                a.span().start,
                "admin.authenticators",
                "no authenticator is listed",
                "name at least one, or leave `authenticators` out and keep the admin listener on loopback",
            );
        }
        let groups: Vec<String> = r
            .groups
            .iter()
            .flat_map(|g| g.get_ref())
            .map(|g| g.get_ref().clone())
            .collect();
        if let Some(g) = &r.groups
            && r.authenticators.is_none()
        {
            self.r.error_help(
                g.span().start,
                "admin.groups",
                "`groups` without `authenticators` restricts nobody",
                "add `authenticators` whose callers carry these groups",
            );
        }
        let Some(a) = &r.address else {
            return Some(Admin {
                address: SocketAddr::from(([127, 0, 0, 1], 9901)),
                authenticators: chosen,
                groups,
                tls,
                location,
            });
        };
        let address = match a.get_ref().parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                self.r.error_help(
                    a.span().start,
                    "admin.address",
                    format!("`{}` is not a socket address", a.get_ref()),
                    "write an address and a port: `127.0.0.1:9901`",
                );
                return None;
            }
        };
        if !address.ip().is_loopback() && r.authenticators.is_none() {
            self.r.error_help(
                a.span().start,
                "admin.address",
                format!("`{address}` is not a loopback address, and no authenticator guards it"),
                "keep the admin listener on 127.0.0.1 or [::1], or add `authenticators` (a `jwt`, `api_key` or `mtls` authenticator for operators) so that every caller but the health probes must prove who it is",
            );
            return None;
        }
        if address.port() != 0
            && let Some(i) = listeners
                .iter()
                .position(|l| l.get_ref().address.get_ref().parse::<SocketAddr>() == Ok(address))
        {
            self.r.error(
                a.span().start,
                "admin.address",
                format!("`{address}` is already used by listeners[{i}]"),
            );
            return None;
        }
        Some(Admin {
            address,
            authenticators: chosen,
            groups,
            tls,
            location,
        })
    }

    fn distinct_addresses(&mut self, raw: &[Spanned<RawListener>]) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, l) in raw.iter().enumerate() {
            let a = l.get_ref().address.get_ref().as_str();
            if let Some(first) = seen.insert(a, i) {
                self.r.error(
                    l.get_ref().address.span().start,
                    format!("listeners[{i}].address"),
                    format!("`{a}` is already used by listeners[{first}]"),
                );
            }
        }
    }

    fn unique<'s>(&mut self, section: &str, names: impl Iterator<Item = &'s Spanned<String>>) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, n) in names.enumerate() {
            if let Some(first) = seen.insert(n.get_ref().as_str(), i) {
                self.r.error_help(
                    n.span().start,
                    format!("{section}[{i}].name"),
                    format!(
                        "the name `{}` is already used by {section}[{first}]",
                        n.get_ref()
                    ),
                    "names must be unique within their section",
                );
            }
        }
    }

    fn name(&mut self, field: &str, n: &Spanned<String>) {
        let s = n.get_ref();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !ok {
            self.r.error_help(
                n.span().start,
                field,
                format!("`{s}` is not a valid name"),
                "use 1 to 64 letters, digits, `-`, `_` or `.`",
            );
        }
    }

    /// A duration in the configuration, at most [`MAX_DURATION`]; zero is refused.
    fn duration(
        &mut self,
        field: &str,
        raw: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let Some(raw) = raw else { return default };
        match humantime::parse_duration(raw.get_ref()) {
            Ok(d) if !d.is_zero() && d <= MAX_DURATION => d,
            Ok(d) if !d.is_zero() => {
                // Deadlines are points on the clock: one past its reach cannot be set.
                self.r.error_help(
                    raw.span().start,
                    field,
                    format!("`{}` is longer than 100 years", raw.get_ref()),
                    "give at most `100years`, or leave the field out for its default",
                );
                default
            }
            Ok(_) => {
                self.r.error_help(
                    raw.span().start,
                    field,
                    "a zero duration is not allowed",
                    "give a positive duration such as `30s`",
                );
                default
            }
            Err(e) => {
                self.r.error_help(
                    raw.span().start,
                    field,
                    format!("`{}` is not a duration: {e}", raw.get_ref()),
                    "write a duration such as `500ms`, `30s` or `5m`",
                );
                default
            }
        }
    }

    fn int(
        &mut self,
        field: &str,
        raw: Option<&Spanned<i64>>,
        min: i64,
        max: i64,
        default: i64,
    ) -> i64 {
        let Some(raw) = raw else { return default };
        let v = *raw.get_ref();
        if v < min || v > max {
            self.r.error(
                raw.span().start,
                field,
                format!("{v} is out of range ({min} to {max})"),
            );
            return default;
        }
        v
    }
}

fn sorted(mut v: Vec<&str>) -> String {
    v.sort_unstable();
    v.iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a route's or certificate's host pattern.
/// `s` as a DNS name in ASCII, lowercase: labels of letters, digits and inner hyphens, at
/// most 63 bytes each and 253 in all, no trailing dot. The one check of host names, for
/// routes and for the origins a login may return to.
pub fn dns_name(s: &str) -> Option<String> {
    let lower = s.to_ascii_lowercase();
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (lower.len() <= 253 && lower.split('.').all(label)).then_some(lower)
}

pub(crate) fn host_pattern(s: &str) -> Result<HostMatch, String> {
    let lower = s.trim().to_ascii_lowercase();
    if lower == "*" {
        return Ok(HostMatch::Any);
    }
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, lower.clone()),
    };
    let is_ip = name.parse::<std::net::IpAddr>().is_ok();
    if (!is_ip && dns_name(&name).is_none()) || (wild && is_ip) {
        return Err(format!("`{s}` is not a host name or `*.suffix` pattern"));
    }
    Ok(if wild {
        HostMatch::Suffix(name)
    } else {
        HostMatch::Exact(name)
    })
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!("`{s}` must start with `http://` or `https://`"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "`{s}` has a path, query or user info; an endpoint is scheme, host and port"
        ));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{s}` has an unclosed `[`"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("`{s}` has an invalid port"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("`{s}` has text after the IPv6 address")),
        };
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("`{s}` has an invalid IPv6 address"))?;
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("`{s}` has an invalid port"))?,
            ),
            None => (rest.to_string(), default_port),
        }
    };
    if host.is_empty() || host_pattern(&host).is_err() && host.parse::<std::net::IpAddr>().is_err()
    {
        return Err(format!("`{s}` has an invalid host"));
    }
    if port == 0 {
        return Err(format!("`{s}` has port 0"));
    }
    Ok(Endpoint {
        tls,
        host: host.to_ascii_lowercase(),
        port,
    })
}
