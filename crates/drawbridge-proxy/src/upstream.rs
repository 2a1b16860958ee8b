//! Upstream pools: endpoints, load balancing, passive health and pooled connections.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drawbridge_config::{Balance, Endpoint, Upstream};
use http::uri::{Authority, Scheme};

use crate::body::RequestBody;
use crate::transport::{Connections, Transport};

/// A compiled upstream: its endpoints with their health, and a connection pool.
pub struct UpstreamPool {
    /// Name from the config.
    pub name: Arc<str>,
    /// The settings it was built from, to reuse the pool across reloads when unchanged.
    pub settings: drawbridge_config::Upstream,
    /// Endpoints in config order.
    pub endpoints: Vec<EndpointState>,
    /// How connections are made and pooled.
    pub transport: Transport,
    /// Response-head deadline.
    pub request_timeout: Duration,
    /// Extra attempts for idempotent, bodiless requests.
    pub retries: u32,
    /// Its failures and retries, kept by name across reloads.
    pub metrics: Arc<drawbridge_telemetry::metrics::UpstreamMetrics>,
    balance: Balance,
    max_requests: usize,
    max_failures: u32,
    ejection: Duration,
    next: AtomicUsize,
    /// Active checks: the request target, and whether their tasks run already.
    check: Option<(http::uri::PathAndQuery, drawbridge_config::HealthCheck)>,
    checking: std::sync::atomic::AtomicBool,
}

/// One endpoint and what is known of its health.
pub struct EndpointState {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host:port`.
    pub authority: Authority,
    /// `scheme://host:port`, for logs.
    pub label: Arc<str>,
    /// Where to connect.
    pub endpoint: Endpoint,
    /// Its pooled connections.
    pub conns: Connections,
    in_flight: AtomicUsize,
    failures: AtomicU32,
    /// The active checks found it down: it gets no requests until they pass again.
    down: std::sync::atomic::AtomicBool,
    /// Milliseconds since [`epoch`] until which the endpoint gets no requests.
    ejected_until: AtomicU64,
}

/// Process start, the zero of ejection deadlines.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// Every endpoint is ejected.
    NoHealthy,
    /// Every healthy endpoint is at `max_requests`.
    AtCapacity,
}

/// Counts a request in flight on an endpoint until dropped.
pub struct InFlight {
    pool: Arc<UpstreamPool>,
    index: usize,
}

impl InFlight {
    /// The endpoint.
    pub fn endpoint(&self) -> &EndpointState {
        &self.pool.endpoints[self.index]
    }

    /// Index of the endpoint in its pool.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Records a transport failure (connect error, reset, timeout).
    pub fn failed(&self) {
        let ep = self.endpoint();
        let n = ep.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.pool.max_failures {
            ep.failures.store(0, Ordering::Relaxed);
            let until = now_ms() + self.pool.ejection.as_millis() as u64;
            ep.ejected_until.store(until, Ordering::Relaxed);
            tracing::warn!(upstream = %self.pool.name, endpoint = %ep.label, failures = n, "endpoint ejected");
        }
    }

    /// Returns an HTTP/1.1 connection whose exchange completed (`now`, when its response
    /// ended) to the endpoint's pool.
    pub fn give_back(&self, sender: crate::transport::Http1, now: Instant) {
        self.pool
            .transport
            .give_back(&self.endpoint().conns, sender, now);
    }

    /// Records a success: the failure streak ends.
    pub fn succeeded(&self) {
        let ep = self.endpoint();
        if ep.failures.load(Ordering::Relaxed) != 0 {
            ep.failures.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.endpoints[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why an upstream's pool could not be built from its checked settings. Refused at start
/// and at reload (where the configuration in force keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// `health.check_path` is not a path and query.
    #[error("health.check_path `{path}`: {source}")]
    CheckPath {
        /// The path as configured.
        path: String,
        /// Why it is not one.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// A CA certificate rustls refuses.
    #[error("CA certificate rejected: {0}")]
    Ca(#[source] rustls::Error),
    /// The TLS client settings could not be made.
    #[error("TLS settings: {0}")]
    Tls(#[source] rustls::Error),
    /// `tls_server_name` is not a server name.
    #[error("tls_server_name `{name}`: {source}")]
    ServerName {
        /// The name as configured.
        name: String,
        /// Why it is not one.
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
    /// An endpoint's authority does not parse.
    #[error("endpoint {url}: {source}")]
    Endpoint {
        /// The endpoint as configured.
        url: String,
        /// Why it does not parse.
        #[source]
        source: http::uri::InvalidUri,
    },
}

impl UpstreamPool {
    /// Parks the endpoints' HTTP/1.1 connections idle for `after` or longer, and closes
    /// those idle past the upstream's `idle_timeout` (see [`Transport::park_idle`]).
    pub fn park_idle(&self, after: Duration) -> usize {
        self.endpoints
            .iter()
            .map(|ep| self.transport.park_idle(&ep.conns, after))
            .sum()
    }

    /// Builds the pool for `cfg`.
    pub fn new(cfg: &Upstream) -> Result<Self, PoolError> {
        let check = match &cfg.health.check {
            Some(c) => Some((
                http::uri::PathAndQuery::from_str(&c.path).map_err(|source| {
                    PoolError::CheckPath {
                        path: c.path.clone(),
                        source,
                    }
                })?,
                c.clone(),
            )),
            None => None,
        };
        let tls = if cfg.endpoints.iter().any(|e| e.tls) {
            let mut roots = rustls::RootCertStore::empty();
            match &cfg.ca {
                Some(certs) => {
                    for c in certs {
                        roots.add(c.clone()).map_err(PoolError::Ca)?;
                    }
                }
                None => {
                    for c in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(c);
                    }
                }
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(PoolError::Tls)?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(Arc::new(config))
        } else {
            None
        };
        let server_name = match &cfg.tls_server_name {
            Some(name) => Some(
                rustls_pki_types::ServerName::try_from(name.clone()).map_err(|source| {
                    PoolError::ServerName {
                        name: name.clone(),
                        source,
                    }
                })?,
            ),
            None => None,
        };
        let transport = Transport::new(
            cfg.protocol,
            tls,
            server_name,
            cfg.connect_timeout,
            cfg.idle_timeout,
            cfg.max_idle_connections,
        );

        let endpoints = cfg
            .endpoints
            .iter()
            .map(|e| {
                let authority: Authority =
                    e.authority()
                        .parse()
                        .map_err(|source| PoolError::Endpoint {
                            url: e.url().to_string(),
                            source,
                        })?;
                Ok(EndpointState {
                    scheme: if e.tls { Scheme::HTTPS } else { Scheme::HTTP },
                    authority,
                    label: e.url().into(),
                    endpoint: e.clone(),
                    conns: Connections::default(),
                    in_flight: AtomicUsize::new(0),
                    failures: AtomicU32::new(0),
                    down: Default::default(),
                    ejected_until: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, PoolError>>()?;
        Ok(Self {
            name: cfg.name.as_str().into(),
            settings: cfg.clone(),
            endpoints,
            transport,
            request_timeout: cfg.request_timeout,
            retries: cfg.retries,
            metrics: Arc::default(),
            balance: cfg.balance,
            max_requests: cfg.max_requests,
            max_failures: cfg.health.max_failures,
            ejection: cfg.health.ejection,
            next: AtomicUsize::new(0),
            check,
            checking: Default::default(),
        })
    }

    /// Whether endpoint `i` takes requests now (neither ejected nor failing its checks),
    /// and its requests in flight: what a metrics scrape reads.
    pub fn endpoint_state(&self, i: usize) -> (bool, usize) {
        let ep = &self.endpoints[i];
        let up = ep.ejected_until.load(Ordering::Relaxed) <= now_ms()
            && !ep.down.load(Ordering::Relaxed);
        (up, ep.in_flight.load(Ordering::Relaxed))
    }

    /// Chooses an endpoint, avoiding `exclude` when another is available.
    pub fn pick(self: &Arc<Self>, exclude: Option<usize>) -> Result<InFlight, PickError> {
        let n = self.endpoints.len();
        let now = now_ms();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, usize)> = None;
        let mut saw_healthy = false;
        for pass in 0..2 {
            for k in 0..n {
                let i = (start + k) % n;
                if pass == 0 && Some(i) == exclude && n > 1 {
                    continue;
                }
                let ep = &self.endpoints[i];
                if ep.ejected_until.load(Ordering::Relaxed) > now || ep.down.load(Ordering::Relaxed)
                {
                    continue;
                }
                saw_healthy = true;
                let load = ep.in_flight.load(Ordering::Relaxed);
                if load >= self.max_requests {
                    continue;
                }
                match self.balance {
                    Balance::RoundRobin => {
                        best = Some((i, load));
                        break;
                    }
                    Balance::LeastRequests => {
                        if best.is_none_or(|(_, l)| load < l) {
                            best = Some((i, load));
                        }
                    }
                }
            }
            if best.is_some() || exclude.is_none() {
                break;
            }
        }
        match best {
            Some((i, _)) => {
                self.endpoints[i].in_flight.fetch_add(1, Ordering::Relaxed);
                Ok(InFlight {
                    pool: self.clone(),
                    index: i,
                })
            }
            None if saw_healthy => Err(PickError::AtCapacity),
            None => Err(PickError::NoHealthy),
        }
    }
}

impl UpstreamPool {
    /// Starts the pool's active health checks, once (a pool kept across reloads keeps its
    /// checks); each endpoint's check ends when the pool is dropped.
    pub fn start_checks(self: &Arc<Self>) {
        let Some((target, check)) = self.check.clone() else {
            return;
        };
        if self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        for index in 0..self.endpoints.len() {
            let pool = Arc::downgrade(self);
            let target = target.clone();
            let check = check.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(check.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let (mut passes, mut fails) = (0u32, 0u32);
                loop {
                    tick.tick().await;
                    let Some(pool) = pool.upgrade() else { return };
                    let ok = pool.probe(index, &target, check.timeout).await;
                    let ep = &pool.endpoints[index];
                    let down = ep.down.load(Ordering::Relaxed);
                    if ok {
                        (passes, fails) = (passes.saturating_add(1), 0);
                        if down && passes >= check.healthy_threshold {
                            ep.down.store(false, Ordering::Relaxed);
                            tracing::info!(upstream = %pool.name, endpoint = %ep.label, "health checks pass again; endpoint back");
                        }
                    } else {
                        (passes, fails) = (0, fails.saturating_add(1));
                        if !down && fails >= check.unhealthy_threshold {
                            ep.down.store(true, Ordering::Relaxed);
                            tracing::warn!(upstream = %pool.name, endpoint = %ep.label, failures = fails, "health checks fail; endpoint out");
                        }
                    }
                }
            });
        }
    }

    /// One check of endpoint `index`: `GET target` on a connection of its own (HTTP/1.1,
    /// the endpoint's own authority as `Host`); any 2xx within `timeout` passes.
    async fn probe(
        &self,
        index: usize,
        target: &http::uri::PathAndQuery,
        timeout: Duration,
    ) -> bool {
        let ep = &self.endpoints[index];
        let attempt = async {
            let conns = Connections::default();
            let mut sender = self
                .transport
                .connect(&ep.endpoint, &conns, true)
                .await
                .ok()?;
            let req = http::Request::get(http::Uri::from(target.clone()))
                .header(http::header::HOST, ep.authority.as_str())
                .header(http::header::USER_AGENT, "drawbridge-health-check")
                .body(RequestBody::empty())
                .ok()?;
            let res = sender.send(req).await.ok()?;
            Some(res.status().is_success())
        };
        matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of `n` endpoints with `extra` upstream settings.
    fn pool(n: usize, extra: &str) -> Arc<UpstreamPool> {
        let endpoints: Vec<String> = (0..n)
            .map(|i| format!("\"http://127.0.0.1:{}\"", 9000 + i))
            .collect();
        let src = format!(
            "[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\n\n\
             [[upstreams]]\nname = \"u\"\nendpoints = [{}]\n{extra}\n\n\
             [[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\npublic = true\n",
            endpoints.join(", ")
        );
        let cfg = drawbridge_config::parse(std::path::Path::new("/etc/drawbridge/t.toml"), &src)
            .expect("valid config");
        Arc::new(UpstreamPool::new(&cfg.upstreams[0]).expect("pool"))
    }

    fn picked(p: &Arc<UpstreamPool>) -> usize {
        p.pick(None).expect("an endpoint").index()
    }

    #[test]
    fn round_robin_takes_each_endpoint_in_turn() {
        let p = pool(3, "");
        let order: Vec<usize> = (0..6).map(|_| picked(&p)).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_requests_avoids_the_busy_endpoints() {
        let p = pool(3, "balance = \"least_requests\"");
        let held: Vec<InFlight> = (0..2).map(|_| p.pick(None).expect("pick")).collect();
        let busy: Vec<usize> = held.iter().map(InFlight::index).collect();
        let third = picked(&p);
        assert!(!busy.contains(&third), "{busy:?} then {third}");
        drop(held);
    }

    #[test]
    fn max_requests_caps_each_endpoint_then_the_pool_is_at_capacity() {
        let p = pool(2, "max_requests = 1");
        let a = p.pick(None).expect("first");
        let b = p.pick(None).expect("second");
        assert_ne!(a.index(), b.index());
        assert!(matches!(p.pick(None), Err(PickError::AtCapacity)));
        drop(a);
        assert!(p.pick(None).is_ok(), "a finished request frees its slot");
        drop(b);
    }

    #[test]
    fn failures_eject_an_endpoint_until_none_is_left() {
        let p = pool(
            2,
            "retries = 0\n[upstreams.health]\nmax_failures = 2\nejection = \"1m\"",
        );
        for _ in 0..2 {
            let f = p.pick(None).expect("pick");
            if f.index() == 0 {
                f.failed();
            }
            let g = p.pick(None).expect("pick");
            if g.index() == 0 {
                g.failed();
            }
        }
        // Endpoint 0 failed twice: ejected, every pick is endpoint 1.
        assert!((0..4).all(|_| picked(&p) == 1));
        // A success ends a streak before it ejects.
        for _ in 0..3 {
            let f = p.pick(None).expect("pick");
            f.failed();
            let f = p.pick(None).expect("pick");
            f.succeeded();
        }
        assert_eq!(picked(&p), 1);
        for _ in 0..2 {
            p.pick(None).expect("pick").failed();
        }
        assert!(matches!(p.pick(None), Err(PickError::NoHealthy)));
    }

    #[test]
    fn a_retry_goes_to_another_endpoint_when_there_is_one() {
        let p = pool(3, "");
        for _ in 0..6 {
            let first = picked(&p);
            let retry = p.pick(Some(first)).expect("retry").index();
            assert_ne!(first, retry);
        }
        let single = pool(1, "");
        assert_eq!(single.pick(Some(0)).expect("the only one").index(), 0);
    }
}
