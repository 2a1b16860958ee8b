//! `[[authenticators]]` and how routes name them.

use std::collections::HashMap;
use std::time::Duration;

use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use toml::Spanned;

use super::{Cx, sorted};
use crate::model::*;
use crate::raw::*;

/// Signature algorithms an issuer may allow: asymmetric only, so a public key can never be
/// used as an HMAC secret, and never `none`.
const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Most clock skew an issuer may allow.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

impl Cx<'_> {
    pub(super) fn authenticator(
        &mut self,
        i: usize,
        raw: &Spanned<RawAuthenticator>,
    ) -> Option<Authenticator> {
        let at = format!("authenticators[{i}]");
        let a = raw.get_ref();
        self.name(&format!("{at}.name"), &a.name);
        let kind = match a.kind.get_ref().as_str() {
            "jwt" => {
                self.only_for(&at, a, "jwt");
                self.jwt(&at, a)
                    .map(|j| AuthenticatorKind::Jwt(Box::new(j)))
            }
            "api_key" => {
                self.only_for(&at, a, "api_key");
                self.api_keys(&at, a).map(AuthenticatorKind::ApiKey)
            }
            "mtls" => {
                self.only_for(&at, a, "mtls");
                self.mtls(&at, a).map(AuthenticatorKind::Mtls)
            }
            "oidc" => {
                self.only_for(&at, a, "oidc");
                self.oidc(&at, a)
                    .map(|o| AuthenticatorKind::Oidc(Box::new(o)))
            }
            other => {
                self.r.error_help(
                    a.kind.span().start,
                    format!("{at}.type"),
                    format!("unknown authenticator type `{other}`"),
                    "use `jwt`, `api_key`, `mtls` or `oidc`",
                );
                None
            }
        };
        Some(Authenticator {
            name: a.name.get_ref().clone(),
            kind: kind?,
            location: self.r.locate(raw.span().start),
        })
    }

    fn jwt(&mut self, at: &str, a: &RawAuthenticator) -> Option<JwtIssuer> {
        let start = a.name.span().start;
        let issuer = match &a.issuer {
            Some(s) if !s.get_ref().trim().is_empty() => Some(s.get_ref().clone()),
            Some(s) => {
                self.r
                    .error(s.span().start, format!("{at}.issuer"), "empty issuer");
                None
            }
            None => {
                self.r.error_help(
                    start,
                    format!("{at}.issuer"),
                    "a `jwt` authenticator needs the `issuer` its tokens name in `iss`",
                    "add `issuer = \"https://idp.example.com/\"`, exactly as the tokens carry it",
                );
                None
            }
        };
        let audiences = match &a.audiences {
            Some(list) if !list.get_ref().is_empty() => {
                Some(list.get_ref().iter().map(|s| s.get_ref().clone()).collect())
            }
            Some(list) => {
                self.r.error_help(
                    list.span().start,
                    format!("{at}.audiences"),
                    "an empty audience list accepts no token",
                    "list the `aud` values meant for this gateway",
                );
                None
            }
            None => {
                self.r.error_help(
                    start,
                    format!("{at}.audiences"),
                    "a `jwt` authenticator needs `audiences`",
                    "list the `aud` values meant for this gateway: tokens minted for other services must not pass",
                );
                None
            }
        };
        let algorithms = self.algorithms(at, a.algorithms.as_ref());
        let jwks = self.jwks(at, a);
        let leeway = self.duration_or_zero(
            &format!("{at}.leeway"),
            a.leeway.as_ref(),
            Duration::from_secs(30),
        );
        if leeway > MAX_LEEWAY
            && let Some(l) = &a.leeway
        {
            self.r.error_help(
                l.span().start,
                format!("{at}.leeway"),
                format!("a leeway of {leeway:?} is too generous"),
                "at most 5m; clocks that drift further need fixing",
            );
        }
        let max_lifetime = self.duration(
            &format!("{at}.max_lifetime"),
            a.max_lifetime.as_ref(),
            Duration::from_secs(24 * 3600),
        );
        let principal = match a.principal.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("user") => Some(PrincipalKind::User),
            Some("service") => Some(PrincipalKind::Service),
            Some(other) => {
                let span = a.principal.as_ref().map_or(start, |p| p.span().start);
                self.r.error_help(
                    span,
                    format!("{at}.principal"),
                    format!("unknown principal kind `{other}`"),
                    "use `user` for people or `service` for workloads",
                );
                None
            }
        };
        let mut claims = self.claim_mapping(at, a.claims.as_ref());
        claims.trusted_mfa = self.trusted_mfa(at, a.trusted_mfa.as_ref());
        let fetch = self.key_fetch(at, a);
        let cache_size = self.int(
            &format!("{at}.cache_size"),
            a.cache_size.as_ref(),
            1,
            10_000_000,
            100_000,
        ) as usize;
        Some(JwtIssuer {
            issuer: issuer?,
            audiences: audiences?,
            algorithms: algorithms?,
            jwks: jwks?,
            jwks_refresh: fetch.refresh,
            jwks_cooldown: fetch.cooldown,
            jwks_grace: fetch.grace,
            jwks_timeout: fetch.timeout,
            leeway,
            max_lifetime,
            token_type: a.token_type.as_ref().map(|t| t.get_ref().clone()),
            principal: principal?,
            claims,
            cache: a.cache.as_ref().is_none_or(|c| *c.get_ref()),
            cache_size,
        })
    }

    /// `jwks_refresh`, `jwks_cooldown`, `jwks_grace`, `jwks_timeout`, shared by `jwt` and
    /// `oidc`.
    pub(super) fn key_fetch(&mut self, at: &str, a: &RawAuthenticator) -> KeyFetch {
        KeyFetch {
            refresh: self.duration(
                &format!("{at}.jwks_refresh"),
                a.jwks_refresh.as_ref(),
                Duration::from_secs(300),
            ),
            cooldown: self.duration(
                &format!("{at}.jwks_cooldown"),
                a.jwks_cooldown.as_ref(),
                Duration::from_secs(30),
            ),
            grace: self.duration_or_zero(
                &format!("{at}.jwks_grace"),
                a.jwks_grace.as_ref(),
                Duration::from_secs(3600),
            ),
            timeout: self.duration(
                &format!("{at}.jwks_timeout"),
                a.jwks_timeout.as_ref(),
                Duration::from_secs(5),
            ),
        }
    }

    /// `claims = { id, groups, groups_format, attributes }`, shared by `jwt` and `oidc`.
    pub(super) fn claim_mapping(
        &mut self,
        at: &str,
        raw: Option<&Spanned<RawClaims>>,
    ) -> ClaimMapping {
        let raw_claims = raw.map(Spanned::get_ref);
        let groups_format = self.choice(
            &format!("{at}.claims.groups_format"),
            raw_claims.and_then(|c| c.groups_format.as_ref()),
            &[
                ("array", GroupsFormat::Array),
                ("space_separated", GroupsFormat::SpaceSeparated),
            ],
        );
        ClaimMapping {
            groups_format,
            id: raw_claims
                .and_then(|c| c.id.as_ref())
                .map_or_else(|| "sub".to_string(), |s| s.get_ref().clone()),
            groups: raw_claims
                .and_then(|c| c.groups.as_ref())
                .map(|s| s.get_ref().clone()),
            attributes: raw_claims
                .map(|c| c.attributes.iter().map(|s| s.get_ref().clone()).collect())
                .unwrap_or_default(),
            trusted_mfa: TrustedMfa::default(),
        }
    }

    /// Notes a file the configuration is made of (never a secret: only its hash is kept).
    pub(super) fn read_file(&mut self, path: &std::path::Path, bytes: &[u8]) {
        self.files
            .push((path.to_path_buf(), crate::sha256(&[bytes])));
    }

    /// Reports fields set that belong to another authenticator type.
    fn only_for(&mut self, at: &str, a: &RawAuthenticator, kind: &str) {
        let fields: [(&str, &str, Option<usize>); 33] = [
            ("mtls", "trust_domain", start(&a.trust_domain)),
            ("mtls", "ca_file", start(&a.ca_file)),
            ("jwt oidc", "issuer", start(&a.issuer)),
            ("jwt", "audiences", start(&a.audiences)),
            ("jwt oidc", "algorithms", start(&a.algorithms)),
            ("jwt", "jwks_url", start(&a.jwks_url)),
            ("jwt", "jwks_file", start(&a.jwks_file)),
            ("jwt", "jwks_ca_file", start(&a.jwks_ca_file)),
            ("jwt oidc", "jwks_refresh", start(&a.jwks_refresh)),
            ("jwt oidc", "jwks_cooldown", start(&a.jwks_cooldown)),
            ("jwt oidc", "jwks_grace", start(&a.jwks_grace)),
            ("jwt oidc", "jwks_timeout", start(&a.jwks_timeout)),
            ("jwt oidc", "leeway", start(&a.leeway)),
            ("jwt oidc", "max_lifetime", start(&a.max_lifetime)),
            ("jwt", "token_type", start(&a.token_type)),
            ("jwt", "principal", start(&a.principal)),
            ("jwt oidc", "claims", start(&a.claims)),
            ("jwt", "cache", start(&a.cache)),
            ("jwt", "cache_size", start(&a.cache_size)),
            ("api_key", "keys_file", start(&a.keys_file)),
            ("api_key", "secret_file", start(&a.secret_file)),
            ("api_key", "header", start(&a.header)),
            ("oidc", "client_id", start(&a.client_id)),
            ("oidc", "client_secret_file", start(&a.client_secret_file)),
            ("oidc", "client_auth", start(&a.client_auth)),
            ("oidc", "client_key_file", start(&a.client_key_file)),
            ("oidc", "client_key_id", start(&a.client_key_id)),
            ("oidc", "scopes", start(&a.scopes)),
            (
                "oidc",
                "allowed_email_domains",
                start(&a.allowed_email_domains),
            ),
            ("oidc", "display_name", start(&a.display_name)),
            ("oidc", "issuer_ca_file", start(&a.issuer_ca_file)),
            ("oidc", "required_claims", start(&a.required_claims)),
            ("jwt oidc", "trusted_mfa", start(&a.trusted_mfa)),
        ];
        for (owner, field, at_offset) in fields {
            if let Some(offset) = at_offset
                && !owner.split(' ').any(|o| o == kind)
            {
                let owners = owner
                    .split(' ')
                    .map(|o| format!("`type = \"{o}\"`"))
                    .collect::<Vec<_>>()
                    .join(" and ");
                self.r.error_help(
                    offset,
                    format!("{at}.{field}"),
                    format!("`{field}` belongs to {owners} authenticators"),
                    "remove it, or declare a separate authenticator of that type",
                );
            }
        }
    }

    fn mtls(&mut self, at: &str, a: &RawAuthenticator) -> Option<MtlsIdentity> {
        let Some(td) = &a.trust_domain else {
            self.r.error_help(
                a.name.span().start,
                format!("{at}.trust_domain"),
                "an `mtls` authenticator needs the `trust_domain` its callers belong to",
                "add `trust_domain = \"prod.example.com\"`: SPIFFE ids `spiffe://prod.example.com/...` and DNS names under it",
            );
            return None;
        };
        let lower = td.get_ref().to_ascii_lowercase();
        let valid = !lower.is_empty()
            && lower.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            self.r.error_help(
                td.span().start,
                format!("{at}.trust_domain"),
                format!("`{}` is not a trust domain", td.get_ref()),
                "write a domain name, without `spiffe://` or a path",
            );
            return None;
        }
        let Some(ca) = &a.ca_file else {
            self.r.error_help(
                a.name.span().start,
                format!("{at}.ca_file"),
                "an `mtls` authenticator needs the CAs that issue identities in its trust domain",
                "add `ca_file = \"mesh-ca.pem\"`: a certificate from any other CA is refused, even one the listener trusts",
            );
            return None;
        };
        let roots = self.read_certs(&format!("{at}.ca_file"), ca)?;
        if let Ok(bytes) = std::fs::read(self.base.join(ca.get_ref())) {
            self.read_file(&self.base.join(ca.get_ref()), &bytes);
        }
        Some(MtlsIdentity {
            trust_domain: lower,
            roots,
        })
    }

    /// `client_ca_file` and `client_auth` of a listener's TLS.
    pub(super) fn client_auth(&mut self, at: &str, t: &RawTls) -> Option<ClientAuth> {
        let required = match t.client_auth.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("request") => false,
            Some("require") => true,
            Some(other) => {
                let span = t.client_auth.as_ref().map_or(0, |v| v.span().start);
                self.r.error_help(
                    span,
                    format!("{at}.client_auth"),
                    format!("unknown client_auth `{other}`"),
                    "use `request` (routes decide) or `require` (no certificate, no connection)",
                );
                false
            }
        };
        let Some(f) = &t.client_ca_file else {
            if let Some(v) = &t.client_auth {
                self.r.error_help(
                    v.span().start,
                    format!("{at}.client_auth"),
                    "client certificates need a CA to be checked against",
                    "add `client_ca_file`",
                );
            }
            return None;
        };
        let roots = self.read_certs(&format!("{at}.client_ca_file"), f)?;
        Some(ClientAuth { roots, required })
    }

    fn api_keys(&mut self, at: &str, a: &RawAuthenticator) -> Option<ApiKeys> {
        let start = a.name.span().start;
        let header = match &a.header {
            None => Some(ApiKeyHeader::Authorization),
            Some(h) => {
                let lower = h.get_ref().to_ascii_lowercase();
                let valid = !lower.is_empty()
                    && lower
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if lower == "authorization" {
                    Some(ApiKeyHeader::Authorization)
                } else if !valid || lower == "cookie" || lower == "host" {
                    self.r.error_help(
                        h.span().start,
                        format!("{at}.header"),
                        format!("`{}` cannot carry API keys", h.get_ref()),
                        "use `Authorization` (scheme `ApiKey`) or a header of its own such as `X-Api-Key`",
                    );
                    None
                } else {
                    Some(ApiKeyHeader::Named(lower))
                }
            }
        };
        let secret = match &a.secret_file {
            None => {
                self.r.error_help(
                    start,
                    format!("{at}.secret_file"),
                    "an `api_key` authenticator needs the server secret its keys are hashed with",
                    "create one with `drawbridge apikey secret > apikeys.secret` and set `secret_file = \"apikeys.secret\"`",
                );
                None
            }
            Some(f) => self
                .secret_file(
                    &format!("{at}.secret_file"),
                    f,
                    32,
                    "create a secret with `drawbridge apikey secret`",
                )
                .map(|(_, s)| s),
        };
        let (keys_file, keys) = match &a.keys_file {
            None => {
                self.r.error_help(
                    start,
                    format!("{at}.keys_file"),
                    "an `api_key` authenticator needs a `keys_file`",
                    "make keys with `drawbridge apikey new` and list them in a keys file",
                );
                return None;
            }
            Some(f) => {
                let path = self.base.join(f.get_ref());
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        self.read_file(&path, text.as_bytes());
                        let keys = self.keys_file(&path, &text);
                        (path, keys)
                    }
                    Err(e) => {
                        self.r.error_help(
                            f.span().start,
                            format!("{at}.keys_file"),
                            format!("cannot read `{}`: {e}", path.display()),
                            "paths are relative to the config file's directory",
                        );
                        return None;
                    }
                }
            }
        };
        Some(ApiKeys {
            header: header?,
            secret: secret?,
            keys_file,
            keys: keys?,
        })
    }

    /// Checks a keys file; its problems are reported against its own lines.
    fn keys_file(&mut self, path: &std::path::Path, text: &str) -> Option<Vec<ApiKeyEntry>> {
        let raw: RawKeysFile = match crate::deserialize(path, text) {
            Ok(r) => r,
            Err(d) => {
                self.r.absorb(d);
                return None;
            }
        };
        let mut r = crate::diag::Reporter::new(path, text);
        let mut out = Vec::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        for (i, k) in raw.keys.iter().enumerate() {
            let e = k.get_ref();
            let at = format!("keys[{i}]");
            let id = e.id.get_ref();
            if id.len() != 16
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                r.error_help(
                    e.id.span().start,
                    format!("{at}.id"),
                    format!("`{id}` is not a key id"),
                    "copy the entry `drawbridge apikey new` printed",
                );
                continue;
            }
            if let Some(first) = ids.insert(id.clone(), i) {
                r.error(
                    e.id.span().start,
                    format!("{at}.id"),
                    format!("id `{id}` is already used by keys[{first}]"),
                );
            }
            let hash = e.hash.get_ref();
            let Some(hash) = decode_hex32(hash) else {
                r.error_help(
                    e.hash.span().start,
                    format!("{at}.hash"),
                    "not an HMAC-SHA256 (64 hex digits)",
                    "copy the entry `drawbridge apikey new` printed",
                );
                continue;
            };
            let expires = match &e.expires {
                None => None,
                Some(x) => match humantime::parse_rfc3339_weak(x.get_ref()) {
                    Ok(t) => Some(
                        t.duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs()),
                    ),
                    Err(err) => {
                        r.error_help(
                            x.span().start,
                            format!("{at}.expires"),
                            format!("`{}` is not a time: {err}", x.get_ref()),
                            "write an RFC 3339 time such as `2027-01-31T00:00:00Z`",
                        );
                        continue;
                    }
                },
            };
            out.push(ApiKeyEntry {
                id: id.clone(),
                name: e.name.get_ref().clone(),
                principal: e
                    .principal
                    .as_ref()
                    .map_or_else(|| e.name.get_ref().clone(), |p| p.get_ref().clone()),
                hash,
                expires,
                groups: e.groups.iter().map(|g| g.get_ref().clone()).collect(),
                attributes: e
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.get_ref().clone()))
                    .collect(),
            });
        }
        match r.finish() {
            Ok(()) => Some(out),
            Err(d) => {
                self.r.absorb(d);
                None
            }
        }
    }

    pub(super) fn algorithms(
        &mut self,
        at: &str,
        raw: Option<&Spanned<Vec<Spanned<String>>>>,
    ) -> Option<Vec<String>> {
        let Some(list) = raw else {
            return Some(vec!["RS256".into(), "ES256".into()]);
        };
        if list.get_ref().is_empty() {
            self.r.error_help(
                list.span().start,
                format!("{at}.algorithms"),
                "an empty algorithm list accepts no token",
                format!("use some of {}", ALGORITHMS.join(", ")),
            );
            return None;
        }
        let mut out: Vec<String> = Vec::new();
        let mut ok = true;
        for (j, alg) in list.get_ref().iter().enumerate() {
            let name = alg.get_ref();
            let field = format!("{at}.algorithms[{j}]");
            if let Some(known) = ALGORITHMS.iter().find(|a| a.eq_ignore_ascii_case(name)) {
                if out.iter().any(|o| o == known) {
                    self.r
                        .error(alg.span().start, field, format!("`{name}` is listed twice"));
                } else {
                    out.push((*known).to_string());
                }
                continue;
            }
            ok = false;
            let upper = name.to_ascii_uppercase();
            let why = if upper == "NONE" {
                "`none` means no signature: it is never accepted".to_string()
            } else if upper.starts_with("HS") {
                format!(
                    "`{name}` is a shared-secret algorithm; with published keys it lets anyone forge tokens"
                )
            } else {
                format!("unknown or unsupported algorithm `{name}`")
            };
            self.r.error_help(
                alg.span().start,
                field,
                why,
                format!("use some of {}", ALGORITHMS.join(", ")),
            );
        }
        ok.then_some(out)
    }

    fn jwks(&mut self, at: &str, a: &RawAuthenticator) -> Option<JwksSource> {
        match (&a.jwks_url, &a.jwks_file) {
            (Some(_), Some(f)) => {
                self.r.error_help(
                    f.span().start,
                    format!("{at}.jwks_file"),
                    "an issuer has `jwks_url` or `jwks_file`, not both",
                    "keep the one its keys come from",
                );
                None
            }
            (None, None) => {
                self.r.error_help(
                    a.name.span().start,
                    format!("{at}.jwks_url"),
                    "a `jwt` authenticator needs the issuer's public keys",
                    "add `jwks_url = \"https://idp.example.com/.well-known/jwks.json\"` or `jwks_file = \"keys.json\"`",
                );
                None
            }
            (None, Some(f)) => {
                if let Some(ca) = &a.jwks_ca_file {
                    self.r.error_help(
                        ca.span().start,
                        format!("{at}.jwks_ca_file"),
                        "set, but the keys come from a file",
                        "remove it, or fetch the keys with `jwks_url`",
                    );
                }
                let path = self.base.join(f.get_ref());
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        self.read_file(&path, &bytes);
                        Some(JwksSource::File { path, bytes })
                    }
                    Err(e) => {
                        self.r.error_help(
                            f.span().start,
                            format!("{at}.jwks_file"),
                            format!("cannot read `{}`: {e}", path.display()),
                            "paths are relative to the config file's directory",
                        );
                        None
                    }
                }
            }
            (Some(u), None) => {
                let parsed = match parse_url(u.get_ref()) {
                    Ok(p) => Some(p),
                    Err(msg) => {
                        self.r.error_help(
                            u.span().start,
                            format!("{at}.jwks_url"),
                            msg,
                            "write `https://host[:port]/path`; plain `http://` only to 127.0.0.1, ::1 or localhost",
                        );
                        None
                    }
                };
                let ca = a
                    .jwks_ca_file
                    .as_ref()
                    .map(|f| self.read_certs(&format!("{at}.jwks_ca_file"), f));
                let ca = match ca {
                    Some(None) => return None,
                    Some(Some(c)) => Some(c),
                    None => None,
                };
                if ca.is_some()
                    && parsed.as_ref().is_some_and(|p| !p.tls)
                    && let Some(f) = &a.jwks_ca_file
                {
                    self.r.error_help(
                        f.span().start,
                        format!("{at}.jwks_ca_file"),
                        "set, but `jwks_url` is plain `http://`",
                        "remove it, or use `https://`",
                    );
                }
                parsed.map(|p| JwksSource::Url(JwksUrl { ca, ..p }))
            }
        }
    }

    pub(super) fn identity(&mut self, raw: Option<&Spanned<RawIdentity>>) -> IdentityAssertion {
        let default = RawIdentity::default();
        let i = raw.map_or(&default, Spanned::get_ref);
        let algorithm = match i.algorithm.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("ES256") => AssertionAlgorithm::Es256,
            Some("EdDSA") => AssertionAlgorithm::EdDsa,
            Some(other) => {
                let span = i.algorithm.as_ref().map_or(0, |a| a.span().start);
                self.r.error_help(
                    span,
                    "identity.algorithm",
                    format!("Drawbridge does not sign with `{other}`"),
                    "use `ES256` or `EdDSA`",
                );
                AssertionAlgorithm::Es256
            }
        };
        let key = i.key_file.as_ref().and_then(|f| {
            self.read_pem("identity.key_file", f, |bytes| {
                match PrivateKeyDer::from_pem_slice(bytes).map_err(|e| e.to_string())? {
                    PrivateKeyDer::Pkcs8(k) => Ok(Secret::new(k.secret_pkcs8_der().to_vec())),
                    _ => Err("the key must be PKCS#8 (`BEGIN PRIVATE KEY`); convert it with `openssl pkcs8 -topk8 -nocrypt`".into()),
                }
            })
            .map(|k| (self.base.join(f.get_ref()), k))
        });
        let header = match &i.header {
            None => "x-drawbridge-identity".to_string(),
            Some(h) => {
                let lower = h.get_ref().to_ascii_lowercase();
                let valid = !lower.is_empty()
                    && lower
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                let reserved = matches!(
                    lower.as_str(),
                    "host"
                        | "connection"
                        | "content-length"
                        | "transfer-encoding"
                        | "te"
                        | "upgrade"
                        | "cookie"
                        | "x-forwarded-for"
                        | "x-request-id"
                );
                if !valid || reserved {
                    self.r.error_help(
                        h.span().start,
                        "identity.header",
                        format!("`{}` cannot carry the identity assertion", h.get_ref()),
                        "use a header name of its own, such as `X-Drawbridge-Identity` or `Authorization`",
                    );
                }
                lower
            }
        };
        IdentityAssertion {
            issuer: i
                .issuer
                .as_ref()
                .map_or_else(|| "drawbridge".to_string(), |s| s.get_ref().clone()),
            algorithm,
            key,
            lifetime: self.duration(
                "identity.lifetime",
                i.lifetime.as_ref(),
                Duration::from_secs(60),
            ),
            header,
            per_request: i.per_request.unwrap_or(false),
            location: self.r.locate(raw.map_or(0, |r| r.span().start)),
        }
    }

    /// How a route admits callers: `public = true` or `authenticate = [...]`, never both.
    pub(super) fn admission(
        &mut self,
        at: &str,
        start: usize,
        r: &RawRoute,
        known: &HashMap<&str, usize>,
    ) -> Option<Admission> {
        let pass_credentials = r.pass_credentials.as_ref().is_some_and(|p| *p.get_ref());
        match (r.public.as_ref(), r.authenticate.as_ref()) {
            (Some(p), Some(_)) if *p.get_ref() => {
                self.r.error_help(
                    p.span().start,
                    format!("{at}.public"),
                    "a route is `public` or names authenticators, not both",
                    "remove `public = true` to require credentials, or `authenticate` to open the route",
                );
                None
            }
            (Some(p), _) if !*p.get_ref() => {
                self.r.error_help(
                    p.span().start,
                    format!("{at}.public"),
                    "`public = false` names no way to admit callers",
                    "name the authenticators that admit callers: `authenticate = [\"corp\"]`",
                );
                None
            }
            (Some(_), None) => {
                if let Some(p) = &r.pass_credentials {
                    self.r.error_help(
                        p.span().start,
                        format!("{at}.pass_credentials"),
                        "a public route checks no credentials; whatever the client sends goes through",
                        "remove `pass_credentials`",
                    );
                }
                Some(Admission::Public {
                    authorization: Authorization::Unchecked,
                })
            }
            (_, Some(list)) => {
                if list.get_ref().is_empty() {
                    self.r.error_help(
                        list.span().start,
                        format!("{at}.authenticate"),
                        "an empty list admits nobody",
                        "name at least one authenticator, or write `public = true`",
                    );
                    return None;
                }
                let mut out = Vec::new();
                for (j, name) in list.get_ref().iter().enumerate() {
                    let field = format!("{at}.authenticate[{j}]");
                    match known.get(name.get_ref().as_str()) {
                        Some(&idx) if out.contains(&idx) => self.r.error(
                            name.span().start,
                            field,
                            format!("`{}` is listed twice", name.get_ref()),
                        ),
                        Some(&idx) => out.push(idx),
                        None => {
                            let names: Vec<&str> = known.keys().copied().collect();
                            self.r.error_help(
                                name.span().start,
                                field,
                                format!("no authenticator is named `{}`", name.get_ref()),
                                if names.is_empty() {
                                    "declare it in an `[[authenticators]]` table".to_string()
                                } else {
                                    format!("known authenticators: {}", sorted(names))
                                },
                            );
                        }
                    }
                }
                (out.len() == list.get_ref().len()).then_some(Admission::Authenticated {
                    authenticators: out,
                    pass_credentials,
                    authorization: Authorization::Policies,
                })
            }
            (None, None) => {
                self.r.error_help(
                    start,
                    at.to_string(),
                    "the route does not say how callers are admitted",
                    "name authenticators with `authenticate = [\"corp\"]`, or write `public = true` to open it to anonymous callers",
                );
                None
            }
        }
    }

    /// Like `duration`, but zero is allowed (a leeway or grace period of none).
    pub(super) fn duration_or_zero(
        &mut self,
        field: &str,
        raw: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        match raw {
            Some(r) if matches!(humantime::parse_duration(r.get_ref()), Ok(d) if d.is_zero()) => {
                Duration::ZERO
            }
            _ => self.duration(field, raw, default),
        }
    }
}

/// How an issuer's keys are fetched.
pub(super) struct KeyFetch {
    pub refresh: Duration,
    pub cooldown: Duration,
    pub grace: Duration,
    pub timeout: Duration,
}

/// Where an optional field was written.
fn start<T>(v: &Option<Spanned<T>>) -> Option<usize> {
    v.as_ref().map(|s| s.span().start)
}

/// Parses a JWKS (or OpenID provider) address: `https://host[:port]/path`, or `http://` to a loopback host.
pub fn parse_url(s: &str) -> Result<JwksUrl, String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("`{s}` must start with `https://`"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') || path.contains('#') || path.chars().any(char::is_whitespace) {
        return Err(format!(
            "`{s}` has user info, a fragment or spaces; none belong in a JWKS address"
        ));
    }
    let endpoint = super::parse_endpoint(&format!(
        "{}://{authority}",
        if tls { "https" } else { "http" }
    ))?;
    let loopback = endpoint.host == "localhost"
        || endpoint
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !tls && !loopback {
        return Err(format!(
            "`{s}` is plain HTTP: keys fetched without TLS can be replaced on the way"
        ));
    }
    Ok(JwksUrl {
        url: s.to_string(),
        tls,
        host: endpoint.host,
        port: endpoint.port,
        path: path.to_string(),
        ca: None,
    })
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
