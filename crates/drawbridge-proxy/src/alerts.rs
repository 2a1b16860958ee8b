//! Alerts that act: detectors over the stream of decisions (`[[alerts.detectors]]`), and
//! the blocks they leave.
//!
//! The request path only hands a signal to a bounded queue, and only for signals some
//! detector counts; a task of its own keeps the sliding windows. When one reaches its
//! threshold the detector fires: an audit event, a signed webhook (retried with backoff,
//! bounded), and, when the detector says `block`, a block of the client address or the
//! principal for a while. Blocks live in the session store, so that every instance sharing
//! it enforces them; each instance reads them into memory every second, and enforces its
//! own at once. The pipeline refuses a blocked client before authentication, and a blocked
//! principal as soon as it is known.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use drawbridge_config::{AlertKey, Detector, Signal, Webhook};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::context::Shared;

/// Signals queued between the request path and the detectors.
const QUEUE: usize = 64 * 1024;
/// Keys a detector keeps windows for; past this, new keys wait until old ones lapse.
const MAX_KEYS: usize = 100_000;
/// Firings waiting for the webhook.
const WEBHOOK_QUEUE: usize = 1024;
/// Attempts per webhook delivery, and the wait before the first retry (doubling).
const WEBHOOK_ATTEMPTS: u32 = 5;
const WEBHOOK_BACKOFF: Duration = Duration::from_millis(500);
/// How often the blocks are read again from the store.
pub const BLOCK_REFRESH: Duration = Duration::from_secs(1);
/// Where blocks are kept in the store.
const PREFIX: &str = "block:";
/// Most blocks read from the store.
const MAX_BLOCKS: usize = 100_000;

/// One thing seen on the request path that a detector may count.
#[derive(Debug, Clone)]
pub struct Observed {
    /// What was seen.
    pub signal: Signal,
    /// The client's address.
    pub client: IpAddr,
    /// The principal, as `authenticator/id`, when known.
    pub principal: Option<String>,
    /// The route, when one took the request.
    pub route: Option<Arc<str>>,
}

/// A block, as the store and the admin API hold it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Block {
    /// `client` or `principal`.
    pub by: String,
    /// The address, or `authenticator/id`.
    pub key: String,
    /// Until when, Unix seconds.
    pub until: u64,
    /// The detector that set it.
    pub detector: String,
    /// When it was set, Unix seconds.
    pub at: u64,
}

impl Block {
    fn store_key(by: &str, key: &str) -> String {
        format!("{PREFIX}{by}:{key}")
    }
}

/// The process's alerting: the queue to the detectors, and the blocks in force.
pub struct Alerter {
    tx: mpsc::Sender<Observed>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Observed>>>,
    /// Blocks in force, by `by:key`, with their end (Unix seconds).
    blocks: ArcSwap<HashMap<String, u64>>,
    /// Signals dropped for a full queue.
    dropped: AtomicU64,
    /// Changes whenever this instance sets or lifts a block: a read of the store that
    /// began before is not installed over it.
    generation: AtomicU64,
}

impl Default for Alerter {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Alerter {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            blocks: ArcSwap::default(),
            dropped: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }
}

impl Alerter {
    /// Hands `o` to the detectors when one of `detectors` counts its signal.
    pub fn observe(&self, detectors: &[Detector], o: impl FnOnce() -> Observed, signal: Signal) {
        if !detectors.iter().any(|d| d.on == signal) {
            return;
        }
        if self.tx.try_send(o()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether `by:key` is blocked now.
    pub fn blocked(&self, by: AlertKey, key: &str) -> bool {
        let blocks = self.blocks.load();
        if blocks.is_empty() {
            return false;
        }
        let now = drawbridge_identity::unix_now();
        blocks
            .get(&format!("{}:{key}", by.as_str()))
            .is_some_and(|until| *until > now)
    }

    /// Whether any block is in force: lets the request path skip building keys.
    pub fn any_blocks(&self) -> bool {
        !self.blocks.load().is_empty()
    }

    fn set_local(&self, by: &str, key: &str, until: u64) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut next = (**self.blocks.load()).clone();
        next.insert(format!("{by}:{key}"), until);
        self.blocks.store(Arc::new(next));
    }

    fn lift_local(&self, by: &str, key: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut next = (**self.blocks.load()).clone();
        next.remove(&format!("{by}:{key}"));
        self.blocks.store(Arc::new(next));
    }

    /// Blocks in force (from the store when there is one).
    pub async fn list(&self, shared: &Shared) -> Result<Vec<Block>, String> {
        let snapshot = shared.snapshot.load_full();
        let now = drawbridge_identity::unix_now();
        match &snapshot.sessions {
            Some(s) => Ok(s
                .store()
                .scan(PREFIX, MAX_BLOCKS)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter_map(|(_, v)| serde_json::from_slice::<Block>(&v).ok())
                .filter(|b| b.until > now)
                .collect()),
            None => Ok(Vec::new()),
        }
    }

    /// Lifts the block of `by:key`; whether there was one.
    pub async fn lift(&self, shared: &Shared, by: AlertKey, key: &str) -> Result<bool, String> {
        let snapshot = shared.snapshot.load_full();
        let had = self.blocked(by, key);
        self.lift_local(by.as_str(), key);
        match &snapshot.sessions {
            Some(s) => s
                .store()
                .delete(&Block::store_key(by.as_str(), key))
                .await
                .map(|stored| stored || had)
                .map_err(|e| e.to_string()),
            None => Ok(had),
        }
    }
}

/// Hands what the request path learnt of a request's admission to the detectors: a
/// refused credential, a refusal, a principal's address.
pub fn observe(
    alerter: &Alerter,
    snapshot: &crate::snapshot::Snapshot,
    ctx: &crate::context::Ctx,
    entry: &Result<crate::pipeline::Entry, crate::admission::Refused>,
) {
    use crate::rescue::ProxyError;
    let detectors = &snapshot.alerts.detectors;
    if detectors.is_empty() {
        return;
    }
    let principal = || {
        ctx.event
            .principal
            .as_deref()
            .map(|p| p.replacen(':', "/", 1))
    };
    let seen = |signal| Observed {
        signal,
        client: ctx.client,
        principal: principal(),
        route: ctx.event.route.clone(),
    };
    match entry {
        Err(r) => {
            if let ProxyError::Unauthenticated(..) = r.error {
                alerter.observe(
                    detectors,
                    || seen(Signal::FailedAuthentication),
                    Signal::FailedAuthentication,
                );
            }
            if matches!(
                r.error,
                ProxyError::Unauthenticated(..) | ProxyError::Forbidden(_)
            ) {
                alerter.observe(detectors, || seen(Signal::Denial), Signal::Denial);
            }
        }
        Ok(crate::pipeline::Entry::Route { admitted, .. }) if admitted.principal.is_some() => {
            alerter.observe(
                detectors,
                || seen(Signal::PrincipalAddresses),
                Signal::PrincipalAddresses,
            );
        }
        Ok(_) => {}
    }
}

/// Starts the detectors, the webhook sender and the block refresher; they run until the
/// runtime ends.
pub fn start(shared: &Arc<Shared>) {
    let Some(rx) = shared
        .alerter
        .rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return;
    };
    let (hooks, hooks_rx) = mpsc::channel(WEBHOOK_QUEUE);
    tokio::spawn(detect(shared.clone(), rx, hooks));
    tokio::spawn(deliver(shared.clone(), hooks_rx));
    tokio::spawn(refresh(shared.clone()));
}

/// A key's window.
enum Window {
    /// When each signal came.
    Times(VecDeque<Instant>),
    /// When each distinct address was last seen.
    Addresses(HashMap<IpAddr, Instant>),
}

async fn detect(shared: Arc<Shared>, mut rx: mpsc::Receiver<Observed>, hooks: mpsc::Sender<Fired>) {
    let mut windows: HashMap<(String, String), Window> = HashMap::new();
    let mut swept = Instant::now();
    while let Some(o) = rx.recv().await {
        let snapshot = shared.snapshot.load_full();
        let now = Instant::now();
        for d in snapshot
            .alerts
            .detectors
            .iter()
            .filter(|d| d.on == o.signal)
        {
            let key = match d.by {
                AlertKey::Client => Some(o.client.to_string()),
                AlertKey::Principal => o.principal.clone(),
                AlertKey::Route => o.route.as_deref().map(str::to_string),
            };
            let Some(key) = key else { continue };
            let id = (d.name.clone(), key);
            if !windows.contains_key(&id) && windows.len() >= MAX_KEYS {
                continue;
            }
            let w = windows.entry(id.clone()).or_insert_with(|| match d.on {
                Signal::PrincipalAddresses => Window::Addresses(HashMap::new()),
                _ => Window::Times(VecDeque::new()),
            });
            let count = match w {
                Window::Times(t) => {
                    t.push_back(now);
                    while t.front().is_some_and(|&x| now.duration_since(x) > d.window) {
                        t.pop_front();
                    }
                    t.len()
                }
                Window::Addresses(a) => {
                    a.insert(o.client, now);
                    a.retain(|_, &mut x| now.duration_since(x) <= d.window);
                    a.len()
                }
            } as u64;
            if count >= d.threshold {
                // Counted again from zero: it fires again only on as many new signals.
                windows.remove(&id);
                fire(&shared, d, &id.1, count, &hooks).await;
            }
        }
        // Now and then, let go of windows with nothing in them any more.
        if now.duration_since(swept) > Duration::from_secs(60) {
            swept = now;
            let longest = snapshot
                .alerts
                .detectors
                .iter()
                .map(|d| d.window)
                .max()
                .unwrap_or_default();
            windows.retain(|_, w| match w {
                Window::Times(t) => t.back().is_some_and(|&x| now.duration_since(x) <= longest),
                Window::Addresses(a) => a.values().any(|&x| now.duration_since(x) <= longest),
            });
        }
    }
}

/// A firing, as the webhook receives it.
#[derive(Debug, Clone, Serialize)]
struct Fired {
    r#type: &'static str,
    time: String,
    detector: String,
    signal: &'static str,
    by: &'static str,
    key: String,
    count: u64,
    threshold: u64,
    window_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked_until: Option<String>,
    version: String,
}

async fn fire(
    shared: &Arc<Shared>,
    d: &Detector,
    key: &str,
    count: u64,
    hooks: &mpsc::Sender<Fired>,
) {
    let snapshot = shared.snapshot.load_full();
    let now = SystemTime::now();
    let block = d.block.map(|b| {
        let until = drawbridge_identity::unix_now() + b.as_secs().max(1);
        Block {
            by: d.by.as_str().to_string(),
            key: key.to_string(),
            until,
            detector: d.name.clone(),
            at: drawbridge_identity::unix_now(),
        }
    });
    tracing::warn!(
        detector = %d.name,
        signal = d.on.as_str(),
        by = d.by.as_str(),
        key,
        count,
        block = ?d.block,
        "alert fired"
    );
    snapshot.metrics.alert_fired(&d.name);
    if let Some(b) = &block {
        shared.alerter.set_local(&b.by, &b.key, b.until);
        if let Some(s) = &snapshot.sessions {
            // Stored after it is in force here; a read of the store racing with the write
            // is not installed (see `generation`).
            let stored = serde_json::to_vec(b).unwrap_or_default();
            if let Err(e) = s
                .store()
                .put(&Block::store_key(&b.by, &b.key), &stored, b.until)
                .await
            {
                tracing::error!(error = %e, "the block could not be stored: this instance enforces it, others may not");
            }
        }
    }
    crate::record::alert(
        shared,
        &snapshot,
        d,
        key,
        count,
        block.as_ref().map(|b| b.until),
    );
    if snapshot.alerts.webhook.is_some() {
        let fired = Fired {
            r#type: "drawbridge.alert",
            time: humantime::format_rfc3339_seconds(now).to_string(),
            detector: d.name.clone(),
            signal: d.on.as_str(),
            by: d.by.as_str(),
            key: key.to_string(),
            count,
            threshold: d.threshold,
            window_seconds: d.window.as_secs(),
            blocked_until: block.map(|b| {
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(b.until),
                )
                .to_string()
            }),
            version: snapshot.version.clone(),
        };
        if hooks.try_send(fired).is_err() {
            snapshot.metrics.webhook("dropped");
            tracing::warn!(detector = %d.name, "webhook queue full: this alert is not posted");
        }
    }
}

/// Posts each firing to the webhook, signed, retrying with backoff.
async fn deliver(shared: Arc<Shared>, mut rx: mpsc::Receiver<Fired>) {
    while let Some(fired) = rx.recv().await {
        let snapshot = shared.snapshot.load_full();
        let Some(hook) = snapshot.alerts.webhook.clone() else {
            continue;
        };
        let body = Bytes::from(serde_json::to_vec(&fired).unwrap_or_default());
        let client =
            drawbridge_identity::fetch::Fetcher::new(hook.url.clone(), Duration::from_secs(10));
        let mut wait = WEBHOOK_BACKOFF;
        let mut delivered = false;
        for attempt in 1..=WEBHOOK_ATTEMPTS {
            let headers = signed(&hook, &body);
            match client.post_json(body.clone(), &headers).await {
                Ok(status) if status.is_success() => {
                    delivered = true;
                    break;
                }
                Ok(status) => tracing::warn!(
                    attempt,
                    status = status.as_u16(),
                    "webhook refused the alert"
                ),
                Err(e) => tracing::warn!(attempt, error = %e, "webhook failed"),
            }
            if attempt < WEBHOOK_ATTEMPTS {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        snapshot
            .metrics
            .webhook(if delivered { "delivered" } else { "failed" });
        if !delivered {
            tracing::error!(detector = %fired.detector, "alert not delivered to the webhook after {WEBHOOK_ATTEMPTS} attempts");
        }
    }
}

/// The signature headers of `body`: `X-Drawbridge-Timestamp` (Unix seconds) and
/// `X-Drawbridge-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`, so that a
/// receiver can refuse a body replayed later.
fn signed(hook: &Webhook, body: &[u8]) -> Vec<(&'static str, String)> {
    use aws_lc_rs::hmac;
    let ts = drawbridge_identity::unix_now().to_string();
    let key = hmac::Key::new(hmac::HMAC_SHA256, hook.secret.expose());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(ts.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    vec![
        ("x-drawbridge-timestamp", ts),
        ("x-drawbridge-signature", format!("sha256={hex}")),
    ]
}

/// Reads the blocks from the store every [`BLOCK_REFRESH`]: what other instances set, and
/// what expired or was lifted.
async fn refresh(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(BLOCK_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snapshot = shared.snapshot.load_full();
        let Some(sessions) = &snapshot.sessions else {
            continue;
        };
        let generation = shared.alerter.generation.load(Ordering::SeqCst);
        match sessions.store().scan(PREFIX, MAX_BLOCKS).await {
            // This instance set or lifted a block meanwhile: read again at the next tick.
            Ok(_) if shared.alerter.generation.load(Ordering::SeqCst) != generation => {}
            Ok(rows) => {
                let now = drawbridge_identity::unix_now();
                let map: HashMap<String, u64> = rows
                    .into_iter()
                    .filter_map(|(_, v)| serde_json::from_slice::<Block>(&v).ok())
                    .filter(|b| b.until > now)
                    .map(|b| (format!("{}:{}", b.by, b.key), b.until))
                    .collect();
                snapshot.metrics.set_blocks(map.len());
                shared.alerter.blocks.store(Arc::new(map));
            }
            // Blocks read before stay in force; new ones wait for the store.
            Err(e) => tracing::warn!(error = %e, "blocks could not be read from the store"),
        }
    }
}
