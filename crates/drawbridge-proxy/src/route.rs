//! Phase 4, route: host + path + method -> the one [`RouteEntry`] that decides the request.

use std::collections::HashMap;
use std::sync::Arc;

use drawbridge_config::{HostMatch, PathMatch};

use crate::snapshot::RouteEntry;

/// The routes one listener serves, indexed for lookup.
#[derive(Default)]
pub struct RouteTable {
    exact_hosts: HashMap<String, HostRoutes>,
    /// Longest suffix first.
    suffix_hosts: Vec<(String, HostRoutes)>,
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

#[derive(Default)]
struct HostRoutes {
    exact: HashMap<String, Vec<Arc<RouteEntry>>>,
    /// Longest prefix first.
    prefixes: Vec<(String, Vec<Arc<RouteEntry>>)>,
}

impl RouteTable {
    /// Indexes `routes`. Overlaps were refused by the config checks.
    pub fn new(routes: impl IntoIterator<Item = Arc<RouteEntry>>) -> Self {
        let mut t = RouteTable::default();
        for r in routes {
            let bucket = match &r.config.host {
                HostMatch::Any => t.any_host.get_or_insert_with(HostRoutes::default),
                HostMatch::Exact(h) => t.exact_hosts.entry(h.clone()).or_default(),
                HostMatch::Suffix(s) => {
                    let key = format!(".{s}");
                    match t.suffix_hosts.iter().position(|(k, _)| *k == key) {
                        Some(i) => &mut t.suffix_hosts[i].1,
                        None => {
                            t.suffix_hosts.push((key, HostRoutes::default()));
                            let last = t.suffix_hosts.len() - 1;
                            &mut t.suffix_hosts[last].1
                        }
                    }
                }
            };
            match &r.config.path {
                PathMatch::Exact(p) => bucket.exact.entry(p.clone()).or_default().push(r.clone()),
                PathMatch::Prefix(p) => match bucket.prefixes.iter_mut().find(|(k, _)| k == p) {
                    Some((_, v)) => v.push(r.clone()),
                    None => bucket.prefixes.push((p.clone(), vec![r.clone()])),
                },
            }
        }
        t.suffix_hosts.sort_by_key(|h| std::cmp::Reverse(h.0.len()));
        for hr in t
            .exact_hosts
            .values_mut()
            .chain(t.suffix_hosts.iter_mut().map(|(_, h)| h))
            .chain(t.any_host.as_mut())
        {
            hr.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        }
        t
    }

    /// Finds the route for a request. `host` is lower-case without port; `path` normalised.
    ///
    /// The most specific host pattern that has routes is chosen (exact, then the longest
    /// `*.suffix`, then routes without host), then the most specific path within it (exact,
    /// then the longest prefix), then the method. There is no fallback to a less specific
    /// host or path: the most specific route owns its subtree.
    pub fn lookup(&self, host: &str, path: &str, method: &str) -> Match<'_> {
        let hosts = self
            .exact_hosts
            .get(host)
            .or_else(|| {
                self.suffix_hosts
                    .iter()
                    .find(|(s, _)| host.ends_with(s.as_str()) && host.len() > s.len())
                    .map(|(_, h)| h)
            })
            .or(self.any_host.as_ref());
        let Some(hosts) = hosts else {
            return Match::NotFound;
        };
        let candidates = hosts.exact.get(path).or_else(|| {
            hosts
                .prefixes
                .iter()
                .find(|(p, _)| drawbridge_config::prefix_matches(p, path))
                .map(|(_, v)| v)
        });
        let Some(candidates) = candidates else {
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
