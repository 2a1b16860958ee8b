//! Prometheus metrics. The request path touches only atomics that the configuration's
//! objects hold (a route's counters hang off the route, an upstream's off its pool): no
//! label lookup, no lock, no allocation per request. Labels come from configuration names
//! only (route, upstream, listener, authenticator) and from small fixed sets (method class,
//! status class, outcome): never a principal, a path, an address or a token, so the number
//! of series is bounded by the configuration. Counters are kept by name across reloads.
//!
//! A scrape encodes everything in the OpenMetrics text format with `prometheus-client`,
//! together with what is read at scrape time ([`Scrape`]: key sets, endpoint health, queue
//! depths) from the configuration in force.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Upper bounds of the latency buckets, microseconds: Drawbridge's own phases take
/// microseconds, upstreams milliseconds to seconds.
const BUCKETS_US: [u64; 19] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram of atomics: one bucket and the sum touched per observation.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Counts one observation of `d`.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let us = ns / 1_000;
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn encode(&self, m: &mut prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result {
        let mut buckets = Vec::with_capacity(BUCKETS_US.len() + 1);
        let mut count = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            count += n;
            let bound = BUCKETS_US
                .get(i)
                .map_or(f64::INFINITY, |&us| us as f64 / 1e6);
            buckets.push((bound, n));
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Method classes, the `method` label: the standard methods by name, the rest `other`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

fn method_class(method: &str) -> usize {
    METHODS[..7].iter().position(|m| *m == method).unwrap_or(7)
}

/// Status classes, the `status` label.
const STATUSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// Phases timed per route.
#[derive(Debug, Clone, Copy)]
pub enum Timed {
    /// Phase 5, the authenticators (a cached token, a session lookup, a JWKS fetch).
    Authenticate,
    /// Phases 6 and 7, the second factor's check and the policies.
    Authorize,
    /// Phase 10, until the upstream's response head.
    Upstream,
}

const TIMED: [&str; 3] = ["authenticate", "authorize", "upstream"];

/// A route's counters (and those of requests no route took, as route `(none)`).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    requests: [[AtomicU64; STATUSES.len()]; METHODS.len()],
    duration: Histogram,
    phases: [Histogram; TIMED.len()],
    /// Allowed, refused, asked for a second factor.
    decisions: [AtomicU64; 3],
    shadow_disagreements: AtomicU64,
}

const DECISIONS: [&str; 3] = ["allow", "deny", "step_up"];

/// What the policies (or the route's MFA requirement) decided.
#[derive(Debug, Clone, Copy)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
    /// Refused until a second factor is shown.
    StepUp,
}

impl RouteMetrics {
    /// A request that ended with `status` after `duration`.
    pub fn request(&self, method: &str, status: u16, duration: Duration) {
        self.requests[method_class(method)][status_class(status)].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(duration);
    }

    /// Time spent in a phase.
    pub fn phase(&self, phase: Timed, d: Duration) {
        self.phases[phase as usize].observe(d);
    }

    /// A decision; `disagrees` when the shadow policies decided otherwise.
    pub fn decision(&self, d: Decision, disagrees: bool) {
        self.decisions[d as usize].fetch_add(1, Ordering::Relaxed);
        if disagrees {
            self.shadow_disagreements.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Outcome classes of authentication, the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthnOutcome {
    /// A principal was admitted.
    Ok,
    /// No credential was presented.
    Missing,
    /// A credential that is not even well-formed.
    Malformed,
    /// A credential that failed a check (signature, issuer, audience, unknown key...).
    Invalid,
    /// A credential past its expiry.
    Expired,
    /// A dependency (the issuer's keys, the session store) could not be had.
    Unavailable,
}

const AUTHN: [&str; 6] = [
    "ok",
    "missing",
    "malformed",
    "invalid",
    "expired",
    "unavailable",
];

/// An authenticator's counters.
#[derive(Debug, Default)]
pub struct AuthnMetrics {
    outcomes: [AtomicU64; AUTHN.len()],
}

impl AuthnMetrics {
    /// Counts one outcome.
    pub fn outcome(&self, o: AuthnOutcome) {
        self.outcomes[o as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// An upstream's counters.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    /// Connect failures, timeouts, other failures.
    errors: [AtomicU64; 3],
    retries: AtomicU64,
}

const UPSTREAM_ERRORS: [&str; 3] = ["connect", "timeout", "failed"];

/// How an upstream attempt failed.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamFailure {
    /// No connection could be made.
    Connect,
    /// No answer within the request timeout.
    Timeout,
    /// The exchange failed otherwise (reset, malformed response).
    Failed,
}

impl UpstreamMetrics {
    /// Counts a failed attempt.
    pub fn failure(&self, f: UpstreamFailure) {
        self.errors[f as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an attempt sent again to another endpoint.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// A listener's counters.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    accepted: AtomicU64,
    open: AtomicI64,
    streams: AtomicI64,
    /// Idle connections closed to admit new ones.
    evicted: AtomicU64,
    /// New connections closed at once: the listener was full and nothing idle to close.
    shed: AtomicU64,
    /// Idle connections parked: their HTTP state and buffers let go until the client sends.
    parked: AtomicI64,
}

impl ListenerMetrics {
    /// A connection accepted; it counts as open until [`ListenerMetrics::closed`].
    pub fn opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed.
    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request (an HTTP/2 stream, or an HTTP/1.1 exchange) started.
    pub fn stream_opened(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    /// A request ended.
    pub fn stream_closed(&self) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// `n` idle connections asked to close to admit new ones.
    pub fn evicted(&self, n: usize) {
        self.evicted.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A new connection closed at once, the listener (or the process) being full.
    pub fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// An idle connection parked (`true`) or woke (`false`).
    pub fn parked(&self, parked: bool) {
        self.parked
            .fetch_add(if parked { 1 } else { -1 }, Ordering::Relaxed);
    }
}

/// Metrics of one kind, by configuration name; kept across reloads.
#[derive(Debug)]
struct Named<T>(Mutex<BTreeMap<Arc<str>, Arc<T>>>);

impl<T: Default> Named<T> {
    fn get(&self, name: &str) -> Arc<T> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.get(name) {
            return m.clone();
        }
        let m = Arc::new(T::default());
        map.insert(name.into(), m.clone());
        m
    }

    fn all(&self) -> Vec<(Arc<str>, Arc<T>)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl<T> Default for Named<T> {
    fn default() -> Self {
        Named(Mutex::new(BTreeMap::new()))
    }
}

/// Counters of rare events with small fixed label sets (MFA attempts, blocks, alerts):
/// a lock per event is nothing at their rate.
#[derive(Debug, Default)]
struct Tally(Mutex<BTreeMap<(&'static str, [&'static str; 2]), u64>>);

impl Tally {
    fn add(&self, metric: &'static str, labels: [&'static str; 2]) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((metric, labels)).or_default() += 1;
    }

    fn rows(&self, metric: &str) -> Vec<([&'static str; 2], u64)> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|((m, _), _)| *m == metric)
            .map(|((_, l), n)| (*l, *n))
            .collect()
    }
}

/// Every metric of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Named<RouteMetrics>,
    authenticators: Named<AuthnMetrics>,
    upstreams: Named<UpstreamMetrics>,
    listeners: Named<ListenerMetrics>,
    /// Reloads that took effect, and reloads refused.
    reloads: [AtomicU64; 2],
    tally: Tally,
    /// Firings, by detector.
    alerts: Named<AtomicU64>,
    /// Blocks in force, as last read.
    blocks: AtomicU64,
}

/// The route name of requests no route took.
pub const NO_ROUTE: &str = "(none)";

impl Metrics {
    /// A route's counters (the same ones for the same name across reloads).
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        self.routes.get(name)
    }

    /// An authenticator's counters.
    pub fn authenticator(&self, name: &str) -> Arc<AuthnMetrics> {
        self.authenticators.get(name)
    }

    /// An upstream's counters.
    pub fn upstream(&self, name: &str) -> Arc<UpstreamMetrics> {
        self.upstreams.get(name)
    }

    /// A listener's counters.
    pub fn listener(&self, name: &str) -> Arc<ListenerMetrics> {
        self.listeners.get(name)
    }

    /// A reload: `ok` when it took effect.
    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt at a second factor: `method` (`totp`...) and `outcome` (`ok`,
    /// `wrong_code`, `locked`...).
    pub fn mfa_attempt(&self, method: &'static str, outcome: &'static str) {
        self.tally.add("mfa", [method, outcome]);
    }

    /// A detector fired.
    pub fn alert_fired(&self, detector: &str) {
        self.alerts.get(detector).fetch_add(1, Ordering::Relaxed);
    }

    /// A webhook delivery's end: `delivered`, `failed` (after its retries) or `dropped`.
    pub fn webhook(&self, result: &'static str) {
        self.tally.add("webhook", [result, ""]);
    }

    /// A signal the detectors' queue had no room for.
    pub fn signal_dropped(&self) {
        self.tally.add("signals_dropped", ["", ""]);
    }

    /// A request refused for a block, of a `client` or a `principal`.
    pub fn blocked(&self, by: &'static str) {
        self.tally.add("blocked", [by, ""]);
    }

    /// Blocks in force.
    pub fn set_blocks(&self, n: usize) {
        self.blocks.store(n as u64, Ordering::Relaxed);
    }

    /// Every metric, with `scrape`'s values read now: in the OpenMetrics text format, or
    /// in Prometheus's classic text format (0.0.4) when `openmetrics` is false.
    pub fn encode(self: &Arc<Self>, scrape: Scrape, openmetrics: bool) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Collect {
            metrics: self.clone(),
            scrape,
        }));
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        };
        out
    }
}

/// What a scrape reads from the configuration in force.
#[derive(Debug, Default)]
pub struct Scrape {
    /// The configuration version in force.
    pub version: String,
    /// Per authenticator with fetched keys: its name and their state.
    pub key_sets: Vec<(String, KeySetState)>,
    /// Per upstream endpoint: upstream, endpoint, healthy, requests in flight.
    pub endpoints: Vec<(String, String, bool, u64)>,
    /// Per log (`access`, `audit`): queued events and events dropped so far.
    pub logs: Vec<(&'static str, u64, u64)>,
}

/// An issuer's key set, as a scrape reads it.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeySetState {
    /// Fetches that succeeded.
    pub fetched: u64,
    /// Fetches that failed.
    pub failed: u64,
    /// How long ago the keys in use were fetched; `None` before the first.
    pub age: Option<Duration>,
}

#[derive(Debug)]
struct Collect {
    metrics: Arc<Metrics>,
    scrape: Scrape,
}

/// Writes one metric family: its descriptor, then a sample per row.
fn family<'a, const N: usize>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = ([(&'static str, &'a str); N], Sample<'a>)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, sample) in rows {
        let fam = m.encode_family(&labels)?;
        match sample {
            Sample::Counter(v) => ConstCounter::new(v).encode(fam)?,
            Sample::Gauge(v) => ConstGauge::new(v).encode(fam)?,
            Sample::GaugeF(v) => ConstGauge::new(v).encode(fam)?,
            Sample::Histogram(h) => {
                let mut fam = fam;
                h.encode(&mut fam)?
            }
        }
    }
    Ok(())
}

enum Sample<'a> {
    Counter(u64),
    Gauge(i64),
    GaugeF(f64),
    Histogram(&'a Histogram),
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Collector for Collect {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let m = &self.metrics;
        let s = &self.scrape;
        let routes = m.routes.all();
        let mut rows = Vec::new();
        for (name, r) in &routes {
            for (mi, by_status) in r.requests.iter().enumerate() {
                for (si, n) in by_status.iter().enumerate() {
                    let n = load(n);
                    if n > 0 {
                        rows.push((
                            [
                                ("route", &**name),
                                ("method", METHODS[mi]),
                                ("status", STATUSES[si]),
                            ],
                            Sample::Counter(n),
                        ));
                    }
                }
            }
        }
        family(
            &mut enc,
            "drawbridge_requests",
            "Requests answered, by route, method class and status class.",
            MetricType::Counter,
            rows,
        )?;
        family(
            &mut enc,
            "drawbridge_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route.",
            MetricType::Histogram,
            routes
                .iter()
                .filter(|(_, r)| r.duration.count() > 0)
                .map(|(n, r)| ([("route", &**n)], Sample::Histogram(&r.duration))),
        )?;
        let mut rows = Vec::new();
        for (name, r) in &routes {
            for (i, h) in r.phases.iter().enumerate() {
                if h.count() > 0 {
                    rows.push((
                        [("route", &**name), ("phase", TIMED[i])],
                        Sample::Histogram(h),
                    ));
                }
            }
        }
        family(
            &mut enc,
            "drawbridge_phase_duration_seconds",
            "Time spent in a phase of the pipeline (authenticate, authorize, upstream until its response head), by route.",
            MetricType::Histogram,
            rows,
        )?;
        let mut rows = Vec::new();
        for (name, r) in &routes {
            for (i, n) in r.decisions.iter().enumerate() {
                let n = load(n);
                if n > 0 {
                    rows.push((
                        [("route", &**name), ("decision", DECISIONS[i])],
                        Sample::Counter(n),
                    ));
                }
            }
        }
        family(
            &mut enc,
            "drawbridge_authorization_decisions",
            "Decisions of the policies and of the routes' second-factor requirements, by route and outcome.",
            MetricType::Counter,
            rows,
        )?;
        family(
            &mut enc,
            "drawbridge_shadow_disagreements",
            "Decisions where the shadow policies decided otherwise than the enforced ones, by route.",
            MetricType::Counter,
            routes
                .iter()
                .filter(|(_, r)| load(&r.shadow_disagreements) > 0)
                .map(|(n, r)| {
                    (
                        [("route", &**n)],
                        Sample::Counter(load(&r.shadow_disagreements)),
                    )
                }),
        )?;
        let authn = m.authenticators.all();
        let mut rows = Vec::new();
        for (name, a) in &authn {
            for (i, n) in a.outcomes.iter().enumerate() {
                let n = load(n);
                if n > 0 {
                    rows.push((
                        [("authenticator", &**name), ("outcome", AUTHN[i])],
                        Sample::Counter(n),
                    ));
                }
            }
        }
        family(
            &mut enc,
            "drawbridge_authentications",
            "Authentication outcomes, by authenticator (the route's, when none admitted the caller) and outcome class.",
            MetricType::Counter,
            rows,
        )?;
        let ups = m.upstreams.all();
        let mut rows = Vec::new();
        for (name, u) in &ups {
            for (i, n) in u.errors.iter().enumerate() {
                let n = load(n);
                if n > 0 {
                    rows.push((
                        [("upstream", &**name), ("kind", UPSTREAM_ERRORS[i])],
                        Sample::Counter(n),
                    ));
                }
            }
        }
        family(
            &mut enc,
            "drawbridge_upstream_errors",
            "Failed upstream attempts, by upstream and kind (connect, timeout, failed).",
            MetricType::Counter,
            rows,
        )?;
        family(
            &mut enc,
            "drawbridge_upstream_retries",
            "Attempts sent again to another endpoint, by upstream.",
            MetricType::Counter,
            ups.iter()
                .map(|(n, u)| ([("upstream", &**n)], Sample::Counter(load(&u.retries)))),
        )?;
        family(
            &mut enc,
            "drawbridge_upstream_endpoint_up",
            "1 when the endpoint takes requests, 0 when ejected or failing its checks.",
            MetricType::Gauge,
            s.endpoints.iter().map(|(u, e, up, _)| {
                (
                    [("upstream", u.as_str()), ("endpoint", e.as_str())],
                    Sample::Gauge(i64::from(*up)),
                )
            }),
        )?;
        family(
            &mut enc,
            "drawbridge_upstream_in_flight",
            "Requests in flight to the endpoint.",
            MetricType::Gauge,
            s.endpoints.iter().map(|(u, e, _, n)| {
                (
                    [("upstream", u.as_str()), ("endpoint", e.as_str())],
                    Sample::Gauge(i64::try_from(*n).unwrap_or(i64::MAX)),
                )
            }),
        )?;
        let mut rows = Vec::new();
        for (name, k) in &s.key_sets {
            rows.push((
                [("authenticator", name.as_str()), ("result", "ok")],
                Sample::Counter(k.fetched),
            ));
            rows.push((
                [("authenticator", name.as_str()), ("result", "failed")],
                Sample::Counter(k.failed),
            ));
        }
        family(
            &mut enc,
            "drawbridge_jwks_fetches",
            "Fetches of an issuer's key set, by authenticator and result.",
            MetricType::Counter,
            rows,
        )?;
        family(
            &mut enc,
            "drawbridge_jwks_age_seconds",
            "Age of the key set in use, by authenticator (absent before the first fetch).",
            MetricType::Gauge,
            s.key_sets.iter().filter_map(|(n, k)| {
                k.age.map(|a| {
                    (
                        [("authenticator", n.as_str())],
                        Sample::GaugeF(a.as_secs_f64()),
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "drawbridge_config_reloads",
            "Reloads of the configuration, by result.",
            MetricType::Counter,
            [
                ([("result", "ok")], Sample::Counter(load(&m.reloads[0]))),
                ([("result", "failed")], Sample::Counter(load(&m.reloads[1]))),
            ],
        )?;
        family(
            &mut enc,
            "drawbridge_config_info",
            "The configuration version in force (always 1).",
            MetricType::Gauge,
            [([("version", s.version.as_str())], Sample::Gauge(1))],
        )?;
        let listeners = m.listeners.all();
        family(
            &mut enc,
            "drawbridge_connections_accepted",
            "Connections accepted, by listener.",
            MetricType::Counter,
            listeners
                .iter()
                .map(|(n, l)| ([("listener", &**n)], Sample::Counter(load(&l.accepted)))),
        )?;
        family(
            &mut enc,
            "drawbridge_connections_open",
            "Connections open, by listener.",
            MetricType::Gauge,
            listeners.iter().map(|(n, l)| {
                (
                    [("listener", &**n)],
                    Sample::Gauge(l.open.load(Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut enc,
            "drawbridge_connections_evicted",
            "Idle connections closed to admit new ones (at max_connections or out of file descriptors), by listener.",
            MetricType::Counter,
            listeners
                .iter()
                .map(|(n, l)| ([("listener", &**n)], Sample::Counter(load(&l.evicted)))),
        )?;
        family(
            &mut enc,
            "drawbridge_connections_shed",
            "New connections closed at once because the listener was full and no connection idle, by listener.",
            MetricType::Counter,
            listeners
                .iter()
                .map(|(n, l)| ([("listener", &**n)], Sample::Counter(load(&l.shed)))),
        )?;
        family(
            &mut enc,
            "drawbridge_connections_parked",
            "Idle HTTP/1.1 connections holding no HTTP state or buffers until their client sends again, by listener.",
            MetricType::Gauge,
            listeners.iter().map(|(n, l)| {
                (
                    [("listener", &**n)],
                    Sample::Gauge(l.parked.load(Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut enc,
            "drawbridge_streams_open",
            "Requests in progress (HTTP/2 streams and HTTP/1.1 exchanges, tunnels included), by listener.",
            MetricType::Gauge,
            listeners.iter().map(|(n, l)| {
                (
                    [("listener", &**n)],
                    Sample::Gauge(l.streams.load(Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut enc,
            "drawbridge_log_queue_depth",
            "Events waiting to be written, by log (access, audit).",
            MetricType::Gauge,
            s.logs.iter().map(|(n, depth, _)| {
                (
                    [("log", *n)],
                    Sample::Gauge(i64::try_from(*depth).unwrap_or(i64::MAX)),
                )
            }),
        )?;
        family(
            &mut enc,
            "drawbridge_log_dropped",
            "Events dropped because the log's queue was full, by log.",
            MetricType::Counter,
            s.logs
                .iter()
                .map(|(n, _, dropped)| ([("log", *n)], Sample::Counter(*dropped))),
        )?;
        family(
            &mut enc,
            "drawbridge_mfa_attempts",
            "Attempts at a second factor, by method and outcome.",
            MetricType::Counter,
            m.tally
                .rows("mfa")
                .into_iter()
                .map(|(l, n)| ([("method", l[0]), ("outcome", l[1])], Sample::Counter(n))),
        )?;
        let fired: Vec<(Arc<str>, u64)> = m
            .alerts
            .all()
            .into_iter()
            .map(|(n, c)| (n, load(&c)))
            .collect();
        family(
            &mut enc,
            "drawbridge_alerts_fired",
            "Detectors that fired, by detector.",
            MetricType::Counter,
            fired
                .iter()
                .map(|(n, c)| ([("detector", &**n)], Sample::Counter(*c))),
        )?;
        family(
            &mut enc,
            "drawbridge_webhook_deliveries",
            "Alerts posted to the webhook, by result (delivered, failed after retries, dropped for a full queue).",
            MetricType::Counter,
            m.tally
                .rows("webhook")
                .into_iter()
                .map(|(l, n)| ([("result", l[0])], Sample::Counter(n))),
        )?;
        family(
            &mut enc,
            "drawbridge_blocked_requests",
            "Requests refused because their client address or principal is blocked.",
            MetricType::Counter,
            m.tally
                .rows("blocked")
                .into_iter()
                .map(|(l, n)| ([("by", l[0])], Sample::Counter(n))),
        )?;
        family(
            &mut enc,
            "drawbridge_alert_signals_dropped",
            "Signals the detectors never saw: their queue was full.",
            MetricType::Counter,
            [(
                [],
                Sample::Counter(m.tally.rows("signals_dropped").first().map_or(0, |r| r.1)),
            )],
        )?;
        family(
            &mut enc,
            "drawbridge_blocks",
            "Blocks in force, as last read from the store.",
            MetricType::Gauge,
            [(
                [],
                Sample::Gauge(i64::try_from(load(&m.blocks)).unwrap_or(i64::MAX)),
            )],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_what_falls_below_their_bound() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(11));
        h.observe(Duration::from_secs(60));
        assert_eq!(load(&h.buckets[0]), 1);
        assert_eq!(load(&h.buckets[1]), 1);
        assert_eq!(load(&h.buckets[BUCKETS_US.len()]), 1);
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn encodes_counts_by_route_method_and_status() {
        let m = Arc::new(Metrics::default());
        let r = m.route("orders");
        r.request("GET", 200, Duration::from_micros(300));
        r.request("GET", 204, Duration::from_micros(300));
        r.request("BREW", 503, Duration::from_micros(300));
        r.decision(Decision::Deny, true);
        m.mfa_attempt("totp", "wrong_code");
        let text = m.encode(
            Scrape {
                version: "abc".into(),
                ..Scrape::default()
            },
            true,
        );
        for line in [
            r#"drawbridge_requests_total{route="orders",method="GET",status="2xx"} 2"#,
            r#"drawbridge_requests_total{route="orders",method="other",status="5xx"} 1"#,
            r#"drawbridge_request_duration_seconds_bucket{le="0.0005",route="orders"} 3"#,
            r#"drawbridge_authorization_decisions_total{route="orders",decision="deny"} 1"#,
            r#"drawbridge_shadow_disagreements_total{route="orders"} 1"#,
            r#"drawbridge_mfa_attempts_total{method="totp",outcome="wrong_code"} 1"#,
            r#"drawbridge_config_info{version="abc"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
