//! Phase 4, route: host + path + method -> the one [`RouteEntry`] that decides the request.

use std::collections::HashMap;
use std::sync::Arc;

use drawbridge_config::{HostMatch, PathMatch};

use drawbridge_config::Route;
use drawbridge_identity::Authenticator;

use crate::upstream::UpstreamPool;

/// A route with its upstream resolved.
pub struct RouteEntry {
    /// Its index in the configuration (how the policies know it).
    pub index: usize,
    /// Name, shared with access-log events.
    pub name: Arc<str>,
    /// The checked config.
    pub config: Route,
    /// Where admitted requests go.
    pub upstream: Arc<UpstreamPool>,
    /// Who may admit callers, in the order they are tried; empty for a public route.
    pub authenticators: Vec<Arc<Authenticator>>,
    /// How the client's request trailers are filtered; dropped when `None`.
    pub trailers: Option<Arc<crate::sanitize::headers::TrailerFilter>>,
    /// Query parameter names its API-key authenticators' headers would go by, canonical
    /// with `_` for `-` (`x_api_key`): credentials, never forwarded in the query.
    pub credential_params: Vec<String>,
    /// Headers set on or removed from the request the upstream receives.
    pub request_edits: Edits,
    /// Headers set on or removed from the upstream's response.
    pub response_edits: Edits,
    /// Its counters, kept by name across reloads.
    pub metrics: Arc<drawbridge_telemetry::metrics::RouteMetrics>,
    /// The counters of its authenticators, in the order of `authenticators`.
    pub authn_metrics: Vec<Arc<drawbridge_telemetry::metrics::AuthnMetrics>>,
}

impl RouteEntry {
    /// Whether people sign in to it (one of its authenticators is `oidc`): a browser
    /// without a session is sent to sign in instead of refused.
    pub fn signs_in(&self) -> bool {
        self.authenticators
            .iter()
            .any(|a| matches!(&**a, Authenticator::Oidc(_)))
    }
}

/// A route's header edits, ready to apply: removals first, then the values set.
#[derive(Debug, Default)]
pub struct Edits {
    remove: Vec<http::HeaderName>,
    set: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Edits {
    /// The edits of `config` (checked names and values; any that cannot be a header are left
    /// out, which the config check has already refused).
    pub fn new(config: &drawbridge_config::HeaderEdits) -> Edits {
        Edits {
            remove: config
                .remove
                .iter()
                .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set: config
                .set
                .iter()
                .filter_map(|(n, v)| {
                    Some((
                        http::HeaderName::from_bytes(n.as_bytes()).ok()?,
                        http::HeaderValue::from_bytes(v.as_bytes()).ok()?,
                    ))
                })
                .collect(),
        }
    }

    /// Applies the edits to `headers`.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }
}

/// The routes one listener serves, indexed for lookup.
#[derive(Default)]
pub struct RouteTable {
    exact_hosts: Map<HostRoutes>,
    /// By `.suffix`: the one a host falls under is the longest of its own that begin at a dot.
    suffix_hosts: Map<HostRoutes>,
    any_host: Option<HostRoutes>,
}

/// What a lookup found.
pub enum Match<'a> {
    /// The route that takes the request.
    Found(&'a Arc<RouteEntry>),
    /// Routes take this path, but not with this method.
    MethodNotAllowed(Vec<&'a str>),
    /// Nothing takes this host and path.
    NotFound,
}

/// The routes under one host pattern, indexed so that a lookup costs a few hash probes
/// (one per segment of the path) however many routes there are, not a scan of them.
#[derive(Default)]
struct HostRoutes {
    exact: Map<Vec<Arc<RouteEntry>>>,
    /// Exact paths with `{name}` segments, most specific first.
    exact_patterns: Vec<(PathMatch, Vec<Arc<RouteEntry>>)>,
    /// Literal prefixes by their text: the one that takes a path is the longest of the
    /// path's own prefixes that end at a segment boundary.
    prefixes: Map<Vec<Arc<RouteEntry>>>,
    /// Prefixes with `{name}` segments, most specific first.
    prefix_patterns: Vec<Pattern>,
}

/// A prefix with `{name}` segments and its routes.
struct Pattern {
    path: PathMatch,
    /// How many segments it has, to weigh it against the longest literal prefix.
    segments: usize,
    routes: Vec<Arc<RouteEntry>>,
}

/// Routes by path text. The keys are the configuration's; a request's path is only ever
/// looked up.
type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;

impl HostRoutes {
    fn add(&mut self, r: &Arc<RouteEntry>) {
        let path = &r.config.path;
        match path {
            PathMatch::Exact(p) if !path.is_pattern() => {
                self.exact.entry(p.clone()).or_default().push(r.clone());
            }
            PathMatch::Prefix(p) if !path.is_pattern() => {
                self.prefixes.entry(p.clone()).or_default().push(r.clone());
            }
            PathMatch::Exact(_) => {
                match self
                    .exact_patterns
                    .iter_mut()
                    .find(|(k, _)| k.shape() == path.shape())
                {
                    Some((_, v)) => v.push(r.clone()),
                    None => self.exact_patterns.push((path.clone(), vec![r.clone()])),
                }
            }
            PathMatch::Prefix(_) => {
                match self
                    .prefix_patterns
                    .iter_mut()
                    .find(|p| p.path.shape() == path.shape())
                {
                    Some(p) => p.routes.push(r.clone()),
                    None => self.prefix_patterns.push(Pattern {
                        path: path.clone(),
                        segments: path.specificity().0.0,
                        routes: vec![r.clone()],
                    }),
                }
            }
        }
    }

    fn sort(&mut self) {
        self.exact_patterns.sort_by_key(|(p, _)| p.specificity());
        self.prefix_patterns.sort_by_key(|p| p.path.specificity());
    }

    /// The routes of the most specific path that takes `path`.
    fn candidates(&self, path: &str) -> Option<&Vec<Arc<RouteEntry>>> {
        if let Some(v) = self.exact.get(path) {
            return Some(v);
        }
        // An exact path owns its trailing-slash form (`/admin/`, `/admin/.`), which many
        // frameworks serve with the same handler, unless a route names that form itself.
        if let Some(bare) = path.strip_suffix('/').filter(|b| !b.is_empty())
            && let Some(v) = self.exact.get(bare)
        {
            return Some(v);
        }
        if let Some((_, v)) = self
            .exact_patterns
            .iter()
            .find(|(p, _)| p.capture(path).is_some())
        {
            return Some(v);
        }
        let literal = self.longest_prefix(path);
        let pattern = self
            .prefix_patterns
            .iter()
            .find(|p| p.path.capture(path).is_some());
        match (literal, pattern) {
            // More segments is more specific; at as many, a literal segment beats a
            // parameter, so the literal prefix wins.
            (Some((segments, v)), Some(p)) if segments >= p.segments => Some(v),
            (_, Some(p)) => Some(&p.routes),
            (Some((_, v)), None) => Some(v),
            (None, None) => None,
        }
    }

    /// The longest literal prefix that takes `path` (the path itself, or a part of it that a
    /// `/` follows, or `/`), with its number of segments.
    fn longest_prefix(&self, path: &str) -> Option<(usize, &Vec<Arc<RouteEntry>>)> {
        if self.prefixes.is_empty() {
            return None;
        }
        let mut end = path.len();
        while end > 1 {
            let candidate = &path[..end];
            if let Some(v) = self.prefixes.get(candidate) {
                return Some((candidate.bytes().filter(|&b| b == b'/').count(), v));
            }
            end = candidate.rfind('/').unwrap_or(0);
        }
        self.prefixes.get("/").map(|v| (0, v))
    }
}

impl RouteTable {
    /// Indexes `routes`. Overlaps were refused by the config checks.
    pub fn new(routes: impl IntoIterator<Item = Arc<RouteEntry>>) -> Self {
        let mut t = RouteTable::default();
        for r in routes {
            let bucket = match &r.config.host {
                HostMatch::Any => t.any_host.get_or_insert_with(HostRoutes::default),
                HostMatch::Exact(h) => t.exact_hosts.entry(h.clone()).or_default(),
                HostMatch::Suffix(s) => t.suffix_hosts.entry(format!(".{s}")).or_default(),
            };
            bucket.add(&r);
        }
        for hr in t
            .exact_hosts
            .values_mut()
            .chain(t.suffix_hosts.values_mut())
            .chain(t.any_host.as_mut())
        {
            hr.sort();
        }
        t
    }

    /// The routes of the longest `*.suffix` that `host` falls under (with at least one label
    /// before it).
    fn suffix_host(&self, host: &str) -> Option<&HostRoutes> {
        if self.suffix_hosts.is_empty() {
            return None;
        }
        host.bytes()
            .enumerate()
            .skip(1)
            .filter(|&(_, b)| b == b'.')
            .find_map(|(i, _)| self.suffix_hosts.get(&host[i..]))
    }

    /// Finds the route for a request. `host` is lower-case without port; `path` normalised.
    ///
    /// The most specific host pattern that has routes is chosen (exact, then the longest
    /// `*.suffix`, then routes without host), then the most specific path within it (exact,
    /// then an exact pattern, then the longest prefix; a literal segment beats a `{name}` one),
    /// then the method. There is no fallback to a less specific host or path: the most
    /// specific route owns its subtree.
    pub fn lookup(&self, host: &str, path: &str, method: &str) -> Match<'_> {
        let hosts = self
            .exact_hosts
            .get(host)
            .or_else(|| self.suffix_host(host))
            .or(self.any_host.as_ref());
        let Some(hosts) = hosts else {
            return Match::NotFound;
        };
        let Some(candidates) = hosts.candidates(path) else {
            return Match::NotFound;
        };
        for r in candidates {
            match &r.config.methods {
                None => return Match::Found(r),
                Some(ms) if ms.iter().any(|m| m == method) => return Match::Found(r),
                Some(_) => {}
            }
        }
        let mut allowed: Vec<&str> = candidates
            .iter()
            .flat_map(|r| r.config.methods.iter().flatten().map(String::as_str))
            .collect();
        allowed.sort_unstable();
        allowed.dedup();
        Match::MethodNotAllowed(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes of `routes` (TOML) on one listener, compiled as `serve` compiles them.
    fn table(routes: &str) -> crate::snapshot::Snapshot {
        let src = format!(
            "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\n\n\
             [[upstreams]]\nname = \"u\"\nendpoints = [\"http://127.0.0.1:9000\"]\n\n{routes}"
        );
        let cfg = drawbridge_config::parse(std::path::Path::new("/etc/drawbridge/t.toml"), &src)
            .expect("valid config");
        crate::snapshot::Snapshot::compile(cfg, None).expect("compiles")
    }

    fn route(s: &crate::snapshot::Snapshot, host: &str, path: &str, method: &str) -> String {
        match s.listeners[0].routes.lookup(host, path, method) {
            Match::Found(r) => r.name.to_string(),
            Match::MethodNotAllowed(allowed) => format!("405 {}", allowed.join(",")),
            Match::NotFound => "404".into(),
        }
    }

    fn r(name: &str, rest: &str) -> String {
        format!("[[routes]]\nname = \"{name}\"\nupstream = \"u\"\npublic = true\n{rest}\n\n")
    }

    #[test]
    fn the_most_specific_host_then_path_then_method_wins() {
        let s = table(
            &[
                r("any", "prefix = \"/\""),
                r("wild", "host = \"*.example.com\"\nprefix = \"/\""),
                r("exact-host", "host = \"api.example.com\"\nprefix = \"/\""),
                r("api", "host = \"api.example.com\"\nprefix = \"/v1\""),
                r(
                    "api-deep",
                    "host = \"api.example.com\"\nprefix = \"/v1/orders\"",
                ),
                r(
                    "api-exact",
                    "host = \"api.example.com\"\npath = \"/v1/orders/export\"",
                ),
                r(
                    "api-post",
                    "host = \"api.example.com\"\npath = \"/v1/items\"\nmethods = [\"POST\"]",
                ),
                r(
                    "pattern",
                    "host = \"api.example.com\"\nprefix = \"/t/{tenant}/x\"",
                ),
            ]
            .concat(),
        );
        let cases = [
            ("other.test", "/anything", "GET", "any"),
            ("shop.example.com", "/", "GET", "wild"),
            ("example.com", "/", "GET", "any"),
            ("api.example.com", "/", "GET", "exact-host"),
            ("api.example.com", "/v1", "GET", "api"),
            ("api.example.com", "/v1x", "GET", "exact-host"),
            ("api.example.com", "/v1/orders/7", "GET", "api-deep"),
            ("api.example.com", "/v1/orders/export", "GET", "api-exact"),
            ("api.example.com", "/v1/orders/export/", "GET", "api-exact"),
            ("api.example.com", "/v1/items", "POST", "api-post"),
            ("api.example.com", "/v1/items", "GET", "405 POST"),
            ("api.example.com", "/t/acme/x/1", "GET", "pattern"),
            ("api.example.com", "/t//x/1", "GET", "exact-host"),
        ];
        for (host, path, method, want) in cases {
            assert_eq!(route(&s, host, path, method), want, "{method} {host}{path}");
        }
    }

    /// The indexed lookup picks what a scan of every route in order of specificity picks:
    /// more segments first, a literal segment before a parameter where they differ.
    #[test]
    fn prefixes_are_weighed_as_a_scan_in_order_of_specificity_would() {
        let prefixes = [
            "/",
            "/a",
            "/a/b",
            "/a/b/c",
            "/a/{x}",
            "/a/{x}/c",
            "/{x}",
            "/{x}/b",
            "/{x}/b/c/d",
            "/{x}/{y}/c",
            "/ab",
            "/a-b",
            "/v1/orders",
        ];
        let s = table(
            &prefixes
                .iter()
                .enumerate()
                .map(|(i, p)| r(&format!("p{i}"), &format!("prefix = \"{p}\"")))
                .collect::<String>(),
        );
        let mut by_specificity: Vec<PathMatch> = prefixes
            .iter()
            .map(|p| PathMatch::Prefix((*p).to_string()))
            .collect();
        by_specificity.sort_by_key(PathMatch::specificity);
        let paths = [
            "/",
            "/a",
            "/a/",
            "/a/b",
            "/a/b/",
            "/a/b/c",
            "/a/b/c/d",
            "/a/b/c/d/e",
            "/a/z",
            "/a/z/c",
            "/a/z/c/d",
            "/a/z/y",
            "/z",
            "/z/b",
            "/z/b/c",
            "/z/b/c/d",
            "/z/y/c",
            "/z/y/c/d",
            "/ab",
            "/ab/c",
            "/abc",
            "/a-b",
            "/a-b/c",
            "/v1",
            "/v1/orders",
            "/v1/orders/7",
            "/v1/ordersx",
            "//",
            "//a",
            "/a//b",
            "",
        ];
        for path in paths {
            let want = by_specificity
                .iter()
                .find(|m| m.matches(path))
                .map(|m| {
                    let i = prefixes
                        .iter()
                        .position(|p| *p == m.text())
                        .expect("listed");
                    format!("p{i}")
                })
                .unwrap_or_else(|| "404".into());
            assert_eq!(route(&s, "h.test", path, "GET"), want, "{path:?}");
        }
    }

    #[test]
    fn the_longest_host_suffix_with_a_label_before_it_wins() {
        let s = table(
            &[
                r("wild", "host = \"*.example.com\"\nprefix = \"/\""),
                r("eu", "host = \"*.eu.example.com\"\nprefix = \"/\""),
                r("other", "host = \"*.com\"\nprefix = \"/\""),
            ]
            .concat(),
        );
        let cases = [
            ("a.eu.example.com", "eu"),
            ("a.b.eu.example.com", "eu"),
            ("eu.example.com", "wild"),
            ("x.y.example.com", "wild"),
            ("example.com", "other"),
            ("com", "404"),
            (".com", "404"),
            ("a.eu.example.org", "404"),
            ("a..example.com", "wild"),
        ];
        for (host, want) in cases {
            assert_eq!(route(&s, host, "/", "GET"), want, "{host}");
        }
    }

    #[test]
    fn nothing_matches_is_not_found() {
        let s = table(&r("only", "host = \"a.test\"\nprefix = \"/x\""));
        assert_eq!(route(&s, "a.test", "/y", "GET"), "404");
        assert_eq!(route(&s, "b.test", "/x", "GET"), "404");
    }
}
