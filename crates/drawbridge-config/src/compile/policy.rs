//! `[policy]`, and what each route hands its policies: `authorize`, `[routes.context]` and the
//! parameters of its path pattern. The policies themselves are Cedar, checked against the
//! schema by the policy crate when the snapshot is compiled.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use toml::Spanned;

use super::Cx;
use crate::model::*;
use crate::raw::*;

/// Headers a route may never hand its policies: credentials, and what Drawbridge sets itself.
impl Cx<'_> {
    /// Reads `[policy]`: the policy files (a directory stands for its `*.cedar` files, sorted),
    /// the shadow set, the test files and the typed principal attributes.
    pub(super) fn policy(&mut self, raw: Option<&Spanned<RawPolicy>>) -> Option<PolicyConfig> {
        let raw = raw?;
        let p = raw.get_ref();
        let enforce = self.policy_files("policy.files", &p.files);
        if p.files.get_ref().is_empty() {
            self.r.error_help(
                p.files.span().start,
                "policy.files",
                "no policy file is named, so every authorized route would refuse everyone",
                "name `.cedar` files or a directory of them: `files = [\"policies\"]`",
            );
        }
        let shadow = p
            .shadow
            .as_ref()
            .map(|s| self.policy_files("policy.shadow", s))
            .unwrap_or_default();
        let tests = p
            .tests
            .as_ref()
            .map(|ts| {
                ts.get_ref()
                    .iter()
                    .map(|t| self.base.join(t.get_ref()))
                    .collect()
            })
            .unwrap_or_default();
        let attributes = p
            .attributes
            .as_ref()
            .map(|a| self.typed_names("policy.attributes", a.get_ref(), false))
            .unwrap_or_default();
        let plain_names = p
            .plain_names
            .as_ref()
            .map(|l| l.get_ref().iter().map(|n| n.get_ref().clone()).collect())
            .unwrap_or_default();
        Some(PolicyConfig {
            enforce,
            shadow,
            tests,
            attributes,
            plain_names,
            location: self.r.locate(raw.span().start),
        })
    }

    fn policy_files(
        &mut self,
        field: &str,
        list: &Spanned<Vec<Spanned<String>>>,
    ) -> Vec<PolicyFile> {
        let mut out = Vec::new();
        for (i, entry) in list.get_ref().iter().enumerate() {
            let at = format!("{field}[{i}]");
            let path = self.base.join(entry.get_ref());
            let files: Vec<PathBuf> = if path.is_dir() {
                match std::fs::read_dir(&path) {
                    Ok(dir) => {
                        let mut found: Vec<PathBuf> = dir
                            .filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
                            .collect();
                        found.sort();
                        if found.is_empty() {
                            self.r.error(
                                entry.span().start,
                                at.clone(),
                                format!("`{}` holds no `.cedar` file", path.display()),
                            );
                        }
                        found
                    }
                    Err(e) => {
                        self.r.error(
                            entry.span().start,
                            at.clone(),
                            format!("cannot read `{}`: {e}", path.display()),
                        );
                        Vec::new()
                    }
                }
            } else {
                vec![path]
            };
            for f in files {
                match std::fs::read_to_string(&f) {
                    Ok(text) => {
                        self.read_file(&f, text.as_bytes());
                        out.push(PolicyFile { path: f, text });
                    }
                    Err(e) => self.r.error_help(
                        entry.span().start,
                        at.clone(),
                        format!("cannot read `{}`: {e}", f.display()),
                        "name a `.cedar` file or a directory of them, relative to this file",
                    ),
                }
            }
        }
        out
    }

    /// `name = "Type"` tables: principal attributes (`query = false`) or query parameters.
    fn typed_names(
        &mut self,
        field: &str,
        table: &BTreeMap<Spanned<String>, Spanned<String>>,
        query: bool,
    ) -> Vec<(String, ValueType)> {
        let mut out = Vec::new();
        for (name, ty) in table {
            let at = format!("{field}.{}", name.get_ref());
            if !is_identifier(name.get_ref()) {
                self.r.error_help(
                    name.span().start,
                    at.clone(),
                    format!("`{}` is not a name policies can read", name.get_ref()),
                    "use letters, digits and `_`, not starting with a digit",
                );
                continue;
            }
            let t = match ty.get_ref().as_str() {
                "String" => ValueType::String,
                "Long" => ValueType::Long,
                "Bool" => ValueType::Bool,
                "Set<String>" if !query => ValueType::StringSet,
                other => {
                    let allowed = if query {
                        "`String`, `Long` or `Bool`"
                    } else {
                        "`String`, `Long`, `Bool` or `Set<String>`"
                    };
                    self.r.error_help(
                        ty.span().start,
                        at,
                        format!("unknown type `{other}`"),
                        format!("use {allowed}"),
                    );
                    continue;
                }
            };
            if query
                && let Some((other, _)) = out
                    .iter()
                    .find(|(o, _): &&(String, ValueType)| o.eq_ignore_ascii_case(name.get_ref()))
            {
                self.r.error_help(
                    name.span().start,
                    at,
                    format!("`{}` and `{other}` are one parameter", name.get_ref()),
                    "query parameter names are matched without case, as many frameworks read them",
                );
                continue;
            }
            out.push((name.get_ref().clone(), t));
        }
        out
    }

    /// What one route hands its policies, and whether they decide for it at all.
    pub(super) fn route_policy(
        &mut self,
        at: &str,
        start: usize,
        r: &RawRoute,
        path: Option<&PathMatch>,
        admission: Option<&Admission>,
        has_policy: bool,
    ) -> (Authorization, Vec<String>, RouteContext) {
        let params: Vec<String> = path
            .map(|p| {
                p.text()
                    .split('/')
                    .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let mut seen = HashSet::new();
        for name in &params {
            if !seen.insert(name) {
                let span = r
                    .path
                    .as_ref()
                    .or(r.prefix.as_ref())
                    .map_or(start, |s| s.span().start);
                self.r.error(
                    span,
                    format!("{at}.{}", if r.path.is_some() { "path" } else { "prefix" }),
                    format!("parameter `{{{name}}}` appears twice"),
                );
            }
        }
        // A route whose admission is wrong was reported already; say nothing more of it.
        let Some(admission) = admission else {
            return (Authorization::Unchecked, params, RouteContext::default());
        };
        let public = matches!(admission, Admission::Public { .. });
        let authorize = match (&r.authorize, public) {
            // A public route is open to all unless it asks its policies, which then decide
            // about the `Anonymous` caller (its address, the time, the path).
            (Some(a), true) if *a.get_ref() => {
                if !has_policy {
                    self.r.error_help(
                        a.span().start,
                        format!("{at}.authorize"),
                        "no policy can decide who may use this route: there is no `[policy]`",
                        "add a `[policy]` table with policies for the route, or remove `authorize`",
                    );
                }
                true
            }
            (_, true) => false,
            (Some(a), false) if !*a.get_ref() => {
                self.r.warn(
                    a.span().start,
                    format!("{at}.authorize"),
                    "`authorize = false`: every caller the route's authenticators admit reaches the upstream",
                    "write policies for the route and remove `authorize = false`",
                );
                false
            }
            (_, false) => {
                if !has_policy {
                    self.r.error_help(
                        r.authenticate.as_ref().map_or(start, |a| a.span().start),
                        format!("{at}.authenticate"),
                        "no policy can decide who may use this route: there is no `[policy]`",
                        "add a `[policy]` table with policies for the route, or write `authorize = false` to admit every authenticated caller",
                    );
                }
                true
            }
        };
        let mut context = RouteContext::default();
        if let Some(c) = &r.context {
            if public {
                self.r.error_help(
                    c.span().start,
                    format!("{at}.context"),
                    "a public route has no policies to hand a context to",
                    "remove `[routes.context]`",
                );
            }
            let c = c.get_ref();
            // A removed identity header the route lets through is the route's to read.
            let passed: Vec<String> = r
                .pass_headers
                .as_ref()
                .map(|l| {
                    l.get_ref()
                        .iter()
                        .map(|p| p.get_ref().to_ascii_lowercase())
                        .collect()
                })
                .unwrap_or_default();
            let passes =
                |name: &str| crate::headers::is_stripped(name) && passed.iter().any(|p| p == name);
            if let Some(q) = &c.query {
                context.query = self.typed_names(&format!("{at}.context.query"), q.get_ref(), true);
            }
            if let Some(hs) = &c.headers {
                for (j, h) in hs.get_ref().iter().enumerate() {
                    let name = h.get_ref().to_ascii_lowercase();
                    let field = format!("{at}.context.headers[{j}]");
                    if http_header_name(&name).is_none() {
                        self.r.error(
                            h.span().start,
                            field,
                            format!("`{}` is not a header name", h.get_ref()),
                        );
                    } else if let Some(why) =
                        crate::headers::hidden_from_policies(&name).filter(|_| !passes(&name))
                    {
                        self.r.error_help(
                            h.span().start,
                            field,
                            format!("`{name}` cannot be handed to policies"),
                            format!("it {why}"),
                        );
                    } else if context.headers.contains(&name) {
                        self.r
                            .error(h.span().start, field, format!("`{name}` is listed twice"));
                    } else {
                        context.headers.push(name);
                    }
                }
            }
        }
        let authorization = if authorize {
            Authorization::Policies
        } else {
            Authorization::Unchecked
        };
        (authorization, params, context)
    }

    /// Credential headers of API-key authenticators and the identity header cannot be handed
    /// to policies either; known only once every authenticator is read.
    pub(super) fn context_credentials(
        &mut self,
        routes: &[(usize, Route)],
        raw: &[Spanned<RawRoute>],
        authenticators: &[Authenticator],
        identity_header: &str,
    ) {
        let mut secret: Vec<&str> = vec![identity_header];
        for a in authenticators {
            if let AuthenticatorKind::ApiKey(k) = &a.kind
                && let ApiKeyHeader::Named(h) = &k.header
            {
                secret.push(h);
            }
        }
        for (i, r) in routes {
            for (j, h) in r.context.headers.iter().enumerate() {
                if secret.contains(&h.as_str()) {
                    let span = raw[*i]
                        .get_ref()
                        .context
                        .as_ref()
                        .map_or(raw[*i].span().start, |c| c.span().start);
                    self.r.error_help(
                        span,
                        format!("routes[{i}].context.headers[{j}]"),
                        format!("`{h}` carries a credential and cannot be handed to policies"),
                        "the caller is `principal`; its attributes come from the credential",
                    );
                }
            }
        }
    }
}

fn is_identifier(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A header name as HTTP allows it (token characters), lower-case.
fn http_header_name(s: &str) -> Option<&str> {
    let ok = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
        });
    ok.then_some(s)
}
