//! The detectors (`[[alerts.detectors]]`): a task of their own keeps a sliding window per
//! detector and key over the signals the request path queues ([`crate::alerts`]). When one
//! reaches its threshold the detector fires: an audit event, a signed webhook (retried
//! with backoff, bounded), and, when the detector says `block`, a block of the client
//! address or the principal for a while, kept in the session store. Another task reads the
//! store's blocks every [`BLOCK_REFRESH`], so that what other instances decided is enforced
//! here too.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use drawbridge_config::{AlertKey, Detector, Signal, Webhook};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::alerts::{Block, Observed};
use crate::context::Shared;

/// Keys a detector keeps windows for; past this, new keys wait until old ones lapse.
const MAX_KEYS: usize = 100_000;
/// Firings waiting for the webhook.
const WEBHOOK_QUEUE: usize = 1024;
/// Attempts per webhook delivery, and the wait before the first retry (doubling).
const WEBHOOK_ATTEMPTS: u32 = 5;
const WEBHOOK_BACKOFF: Duration = Duration::from_millis(500);
/// How often the blocks are read again from the store.
pub const BLOCK_REFRESH: Duration = Duration::from_secs(1);

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
        &shared.audit,
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
    let hex = base16ct::lower::encode_string(tag.as_ref());
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
        match shared.alerter.list(Some(sessions)).await {
            // This instance set or lifted a block meanwhile: read again at the next tick.
            Ok(_) if shared.alerter.generation.load(Ordering::SeqCst) != generation => {}
            Ok(blocks) => {
                let map: HashMap<String, u64> = blocks
                    .into_iter()
                    .map(|b| (format!("{}:{}", b.by, b.key), b.until))
                    .collect();
                snapshot.metrics.set_blocks(map.len());
                shared.alerter.install(map);
            }
            // Blocks read before stay in force; new ones wait for the store.
            Err(e) => tracing::warn!(error = %e, "blocks could not be read from the store"),
        }
    }
}
