//! Single sign-on: `type = "oidc"` authenticators and `[sessions]`.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::Cx;
use super::authn::parse_url;
use crate::model::*;
use crate::raw::*;

/// Scopes asked for when a config names none.
const DEFAULT_SCOPES: &[&str] = &["openid", "email", "profile"];

impl Cx<'_> {
    pub(super) fn oidc(&mut self, at: &str, a: &RawAuthenticator) -> Option<OidcProvider> {
        let start = a.name.span().start;
        let issuer = match &a.issuer {
            None => {
                self.r.error_help(
                    start,
                    format!("{at}.issuer"),
                    "an `oidc` authenticator needs its provider's `issuer`",
                    "add `issuer = \"https://idp.example.com\"`: its discovery document is read from `/.well-known/openid-configuration` under it",
                );
                None
            }
            Some(i) => {
                let text = i.get_ref().trim_end_matches('/');
                let url = format!("{text}/.well-known/openid-configuration");
                match parse_url(&url) {
                    Ok(_) if text.contains('?') || text.contains('#') => {
                        self.r.error(
                            i.span().start,
                            format!("{at}.issuer"),
                            "an issuer has no query or fragment",
                        );
                        None
                    }
                    Ok(u) => Some((i.get_ref().clone(), u)),
                    Err(msg) => {
                        self.r.error_help(
                            i.span().start,
                            format!("{at}.issuer"),
                            msg,
                            "write `https://host[:port][/path]`; plain `http://` only to 127.0.0.1, ::1 or localhost",
                        );
                        None
                    }
                }
            }
        };
        let ca = match &a.issuer_ca_file {
            Some(f) => Some(self.read_certs(&format!("{at}.issuer_ca_file"), f)?),
            None => None,
        };
        let client_id = match &a.client_id {
            Some(c)
                if !c.get_ref().is_empty() && c.get_ref().bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(c.get_ref().clone())
            }
            Some(c) => {
                self.r.error(
                    c.span().start,
                    format!("{at}.client_id"),
                    "a client id is printable ASCII without spaces",
                );
                None
            }
            None => {
                self.r.error_help(
                    start,
                    format!("{at}.client_id"),
                    "an `oidc` authenticator needs the `client_id` Drawbridge is registered under",
                    "register Drawbridge at the provider as a confidential web client and copy its client id",
                );
                None
            }
        };
        let client_auth = self.token_endpoint_auth(at, a);
        let scopes = match &a.scopes {
            None => Some(DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect()),
            Some(list) => {
                let mut out: Vec<String> = Vec::new();
                for (j, s) in list.get_ref().iter().enumerate() {
                    let v = s.get_ref();
                    if v.is_empty()
                        || !v
                            .bytes()
                            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
                    {
                        self.r.error(
                            s.span().start,
                            format!("{at}.scopes[{j}]"),
                            format!("`{v}` is not a scope"),
                        );
                    } else if !out.contains(v) {
                        out.push(v.clone());
                    }
                }
                if !out.iter().any(|s| s == "openid") {
                    self.r.error_help(
                        list.span().start,
                        format!("{at}.scopes"),
                        "the scopes do not hold `openid`: the provider would not sign people in",
                        "add `openid`",
                    );
                }
                Some(out)
            }
        };
        let allowed_email_domains = a
            .allowed_email_domains
            .as_ref()
            .map(|list| {
                list.get_ref()
                    .iter()
                    .enumerate()
                    .filter_map(|(j, d)| match crate::dns_name(d.get_ref()) {
                        Some(name) => Some(name),
                        None => {
                            self.r.error_help(
                                d.span().start,
                                format!("{at}.allowed_email_domains[{j}]"),
                                format!("`{}` is not a domain name", d.get_ref()),
                                "write the part after `@`: `corp.example.com`",
                            );
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut required_claims = Vec::new();
        if let Some(table) = &a.required_claims {
            for (name, values) in table.get_ref() {
                if values.get_ref().is_empty() {
                    self.r.error_help(
                        values.span().start,
                        format!("{at}.required_claims.{}", name.get_ref()),
                        "an empty list admits nobody",
                        "list the values the claim may have",
                    );
                    continue;
                }
                required_claims.push((
                    name.get_ref().clone(),
                    values
                        .get_ref()
                        .iter()
                        .map(|v| v.get_ref().clone())
                        .collect(),
                ));
            }
        }
        let algorithms = self.algorithms(at, a.algorithms.as_ref());
        let mut claims = self.claim_mapping(at, a.claims.as_ref());
        claims.trusted_mfa = self.trusted_mfa(at, a.trusted_mfa.as_ref());
        let leeway = self.duration_or_zero(
            &format!("{at}.leeway"),
            a.leeway.as_ref(),
            Duration::from_secs(30),
        );
        let fetch = self.key_fetch(at, a);
        let (issuer, discovery) = issuer?;
        Some(OidcProvider {
            display_name: a
                .display_name
                .as_ref()
                .map_or_else(|| a.name.get_ref().clone(), |d| d.get_ref().clone()),
            discovery: JwksUrl { ca, ..discovery },
            issuer,
            client_id: client_id?,
            client_auth: client_auth?,
            scopes: scopes?,
            algorithms: algorithms?,
            leeway: leeway.min(Duration::from_secs(300)),
            max_lifetime: self.duration(
                &format!("{at}.max_lifetime"),
                a.max_lifetime.as_ref(),
                Duration::from_secs(24 * 3600),
            ),
            jwks_refresh: fetch.refresh,
            jwks_cooldown: fetch.cooldown,
            jwks_grace: fetch.grace,
            timeout: fetch.timeout,
            claims,
            allowed_email_domains,
            required_claims,
        })
    }

    /// `client_auth` with the secret or key it needs.
    fn token_endpoint_auth(
        &mut self,
        at: &str,
        a: &RawAuthenticator,
    ) -> Option<ClientAuthentication> {
        let start = a.name.span().start;
        let method = a.client_auth.as_ref().map(|m| m.get_ref().as_str());
        let misplaced = |cx: &mut Self, field: &str, v: &Option<Spanned<String>>, needs: &str| {
            if let Some(v) = v {
                cx.r.error_help(
                    v.span().start,
                    format!("{at}.{field}"),
                    format!("`{field}` belongs to `client_auth = \"{needs}\"`"),
                    "remove it, or change `client_auth`",
                );
            }
        };
        match method {
            None | Some("client_secret_basic") => {
                misplaced(
                    self,
                    "client_key_file",
                    &a.client_key_file,
                    "private_key_jwt",
                );
                misplaced(self, "client_key_id", &a.client_key_id, "private_key_jwt");
                match &a.client_secret_file {
                    Some(f) => self
                        .secret_file(
                            &format!("{at}.client_secret_file"),
                            f,
                            1,
                            "write the client secret the provider issued into the file",
                        )
                        .map(|(file, secret)| ClientAuthentication::SecretBasic { secret, file }),
                    None => {
                        self.r.error_help(
                            start,
                            format!("{at}.client_secret_file"),
                            "an `oidc` authenticator needs its client secret, in a file",
                            "set `client_secret_file = \"corp-sso.secret\"` (a file only Drawbridge can read), or `client_auth = \"private_key_jwt\"` with `client_key_file`",
                        );
                        None
                    }
                }
            }
            Some("private_key_jwt") => {
                misplaced(
                    self,
                    "client_secret_file",
                    &a.client_secret_file,
                    "client_secret_basic",
                );
                let Some(f) = &a.client_key_file else {
                    self.r.error_help(
                        start,
                        format!("{at}.client_key_file"),
                        "`client_auth = \"private_key_jwt\"` needs the client's private key",
                        "set `client_key_file` to a PKCS#8 PEM key (EC P-256, RSA or Ed25519) whose public key the provider has",
                    );
                    return None;
                };
                let key = self.read_pem(&format!("{at}.client_key_file"), f, |bytes| {
                    use rustls_pki_types::pem::PemObject;
                    match rustls_pki_types::PrivateKeyDer::from_pem_slice(bytes)
                        .map_err(|e| e.to_string())?
                    {
                        rustls_pki_types::PrivateKeyDer::Pkcs8(k) => {
                            Ok(Secret::new(k.secret_pkcs8_der().to_vec()))
                        }
                        _ => Err("the key must be PKCS#8 (`BEGIN PRIVATE KEY`); convert it with `openssl pkcs8 -topk8 -nocrypt`".into()),
                    }
                })?;
                Some(ClientAuthentication::PrivateKeyJwt {
                    key,
                    file: self.base.join(f.get_ref()),
                    key_id: a.client_key_id.as_ref().map(|k| k.get_ref().clone()),
                })
            }
            Some(other) => {
                let span = a.client_auth.as_ref().map_or(start, |m| m.span().start);
                self.r.error_help(
                    span,
                    format!("{at}.client_auth"),
                    format!("unknown client authentication `{other}`"),
                    "use `client_secret_basic` or `private_key_jwt`",
                );
                None
            }
        }
    }

    /// A secret kept in a file of its own (trimmed), at least `min` bytes long.
    pub(super) fn secret_file(
        &mut self,
        field: &str,
        f: &Spanned<String>,
        min: usize,
        help: &str,
    ) -> Option<(PathBuf, Secret)> {
        let path = self.base.join(f.get_ref());
        match std::fs::read_to_string(&path) {
            Ok(text) if text.trim().len() >= min => {
                let secret = Secret::new(text.trim().as_bytes().to_vec());
                zeroize::Zeroize::zeroize(&mut text.into_bytes());
                Some((path, secret))
            }
            Ok(_) => {
                self.r.error_help(
                    f.span().start,
                    field,
                    format!("`{}` holds fewer than {min} characters", path.display()),
                    help,
                );
                None
            }
            Err(e) => {
                self.r.error_help(
                    f.span().start,
                    field,
                    format!("cannot read `{}`: {e}", path.display()),
                    "paths are relative to the config file's directory",
                );
                None
            }
        }
    }

    /// `[sessions]`; `None` when absent and no `oidc` authenticator needs it.
    pub(super) fn sessions(
        &mut self,
        raw: Option<&Spanned<RawSessions>>,
        needed: bool,
    ) -> Option<Sessions> {
        if raw.is_none() && !needed {
            return None;
        }
        let default = RawSessions::default();
        let s = raw.map_or(&default, Spanned::get_ref);
        let start = raw.map_or(0, |r| r.span().start);
        let store = match s.store.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("embedded") => {
                for (field, v) in [
                    ("redis_url", &s.redis_url),
                    ("redis_ca_file", &s.redis_ca_file),
                    ("key_prefix", &s.key_prefix),
                ] {
                    if let Some(v) = v {
                        self.r.error_help(
                            v.span().start,
                            format!("sessions.{field}"),
                            format!("`{field}` belongs to `store = \"redis\"`"),
                            "remove it, or set `store = \"redis\"`",
                        );
                    }
                }
                let path = s
                    .path
                    .as_ref()
                    .map_or_else(|| "sessions.redb".to_string(), |p| p.get_ref().clone());
                SessionStore::Embedded {
                    path: self.base.join(path),
                }
            }
            Some("redis") => {
                if let Some(p) = &s.path {
                    self.r.error_help(
                        p.span().start,
                        "sessions.path",
                        "`path` belongs to `store = \"embedded\"`",
                        "remove it: Redis keeps the sessions",
                    );
                }
                let url = match &s.redis_url {
                    Some(u)
                        if u.get_ref().starts_with("redis://")
                            || u.get_ref().starts_with("rediss://") =>
                    {
                        Some(Secret::new(u.get_ref().clone().into_bytes()))
                    }
                    Some(u) => {
                        self.r.error_help(
                            u.span().start,
                            "sessions.redis_url",
                            "not a Redis address",
                            "write `rediss://host:6379/0` (TLS) or `redis://127.0.0.1:6379/0`",
                        );
                        None
                    }
                    None => {
                        self.r.error_help(
                            start,
                            "sessions.redis_url",
                            "`store = \"redis\"` needs `redis_url`",
                            "write `redis_url = \"rediss://redis.internal:6379/0\"`",
                        );
                        None
                    }
                };
                let ca = match &s.redis_ca_file {
                    Some(f) => Some(self.read_certs("sessions.redis_ca_file", f)?),
                    None => None,
                };
                let key_prefix = s
                    .key_prefix
                    .as_ref()
                    .map_or_else(|| "drawbridge:".to_string(), |p| p.get_ref().clone());
                SessionStore::Redis {
                    url: url?,
                    ca,
                    key_prefix,
                }
            }
            Some(other) => {
                let span = s.store.as_ref().map_or(start, |v| v.span().start);
                self.r.error_help(
                    span,
                    "sessions.store",
                    format!("unknown store `{other}`"),
                    "use `embedded` (one instance) or `redis` (several)",
                );
                return None;
            }
        };
        let key = s.key_file.as_ref().and_then(|f| {
            self.secret_file(
                "sessions.key_file",
                f,
                32,
                "create one with `head -c 32 /dev/urandom | base64 > session.key`",
            )
        });
        let idle_timeout = self.duration(
            "sessions.idle_timeout",
            s.idle_timeout.as_ref(),
            Duration::from_secs(8 * 3600),
        );
        let lifetime = self.duration(
            "sessions.lifetime",
            s.lifetime.as_ref(),
            Duration::from_secs(24 * 3600),
        );
        if idle_timeout > lifetime
            && let Some(i) = &s.idle_timeout
        {
            self.r.error_help(
                i.span().start,
                "sessions.idle_timeout",
                "longer than `lifetime`: a session would never end for being idle",
                "make it shorter than `lifetime`",
            );
        }
        let cache_ttl = self.duration_or_zero(
            "sessions.cache_ttl",
            s.cache_ttl.as_ref(),
            Duration::from_secs(5),
        );
        if cache_ttl > Duration::from_secs(60)
            && let Some(c) = &s.cache_ttl
        {
            self.r.error_help(
                c.span().start,
                "sessions.cache_ttl",
                "a revoked session would be honoured for over a minute",
                "at most 60s",
            );
        }
        let sign_in = s.sign_in_url.as_ref().and_then(|u| {
            match sign_in_origin(u.get_ref()) {
                Ok(o) => Some(o),
                Err(msg) => {
                    self.r.error_help(
                        u.span().start,
                        "sessions.sign_in_url",
                        msg,
                        "write the origin of the sign-in host: `https://auth.example.com` (a port if not 443)",
                    );
                    None
                }
            }
        });
        Some(Sessions {
            store,
            key,
            idle_timeout,
            lifetime,
            cache_ttl,
            sign_in,
            location: self.r.locate(start),
        })
    }
}

impl Cx<'_> {
    /// People sign in over HTTPS only: their cookies are `Secure`, and a session carried in
    /// clear text is a session given away. A route that admits an `oidc` authenticator must
    /// be served by a TLS listener.
    pub(super) fn sign_in_routes(
        &mut self,
        routes: &[(usize, Route)],
        raw: &[Spanned<RawRoute>],
        listeners: &[Listener],
        authenticators: &[Authenticator],
    ) {
        for (i, r) in routes {
            let Admission::Authenticated {
                authenticators: list,
                ..
            } = &r.admission
            else {
                continue;
            };
            let signs_in = list.iter().any(|&a| {
                matches!(
                    authenticators.get(a).map(|a| &a.kind),
                    Some(AuthenticatorKind::Oidc(_))
                )
            });
            let on_tls = listeners.iter().enumerate().any(|(l, listener)| {
                listener.tls.is_some()
                    && listener.redirect_to_https.is_none()
                    && r.listeners.as_ref().is_none_or(|ls| ls.contains(&l))
            });
            if signs_in && !on_tls {
                let span = raw[*i]
                    .get_ref()
                    .authenticate
                    .as_ref()
                    .map_or(raw[*i].span().start, |a| a.span().start);
                self.r.error_help(
                    span,
                    format!("routes[{i}].authenticate"),
                    "people sign in to this route, but no TLS listener serves it",
                    "serve it on a listener with `[listeners.tls]`: session cookies are `Secure` and never travel in clear text",
                );
            }
        }
    }
}

/// `https://host[:port]` and nothing else.
fn sign_in_origin(s: &str) -> Result<SignIn, String> {
    let rest = s
        .strip_prefix("https://")
        .ok_or_else(|| format!("`{s}` is not an `https://` origin"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("`{p}` is not a port"))?,
        ),
        None => (rest, 443),
    };
    let host = crate::dns_name(host)
        .filter(|h| h.contains('.') || h == "localhost")
        .ok_or_else(|| format!("`{s}` is not `https://` and a host name, without a path"))?;
    Ok(SignIn { host, port })
}
