//! What the request path shares with the detectors (`[[alerts.detectors]]`, run by
//! [`crate::detect`]): the queue it hands signals to, and the blocks in force.
//!
//! The request path only hands a signal to a bounded queue, and only for signals some
//! detector counts. Blocks live in the session store, so that every instance sharing it
//! enforces them; each instance reads them into memory every second, and enforces its own
//! at once. The pipeline refuses a blocked client before authentication, and a blocked
//! principal as soon as it is known.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use drawbridge_config::{AlertKey, Signal};
use drawbridge_session::Sessions;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::snapshot::Snapshot;

/// Signals queued between the request path and the detectors.
const QUEUE: usize = 64 * 1024;
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
    pub(crate) fn store_key(by: &str, key: &str) -> String {
        format!("{PREFIX}{by}:{key}")
    }
}

/// The process's alerting: the queue to the detectors, and the blocks in force.
pub struct Alerter {
    tx: mpsc::Sender<Observed>,
    /// Taken once by the detectors.
    pub(crate) rx: std::sync::Mutex<Option<mpsc::Receiver<Observed>>>,
    /// Blocks in force, by `by:key`, with their end (Unix seconds). Set through
    /// [`Alerter::install`] only, which keeps `any` true of it.
    blocks: ArcSwap<HashMap<String, u64>>,
    /// Whether `blocks` holds any: what every request reads (one load, not the map's).
    any: std::sync::atomic::AtomicBool,
    /// Changes whenever this instance sets or lifts a block: a read of the store that
    /// began before is not installed over it.
    pub(crate) generation: AtomicU64,
}

impl Default for Alerter {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Alerter {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            blocks: ArcSwap::default(),
            any: std::sync::atomic::AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }
    }
}

impl Alerter {
    /// Hands `o` to the detectors when one of `snapshot`'s counts its signal; a full queue
    /// drops it and counts the drop.
    pub fn observe(&self, snapshot: &Snapshot, o: impl FnOnce() -> Observed, signal: Signal) {
        if !snapshot.alerts.detectors.iter().any(|d| d.on == signal) {
            return;
        }
        if self.tx.try_send(o()).is_err() {
            snapshot.metrics.signal_dropped();
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
        self.any.load(Ordering::Relaxed)
    }

    /// Puts `blocks` in force.
    pub(crate) fn install(&self, blocks: HashMap<String, u64>) {
        self.any.store(!blocks.is_empty(), Ordering::Relaxed);
        self.blocks.store(Arc::new(blocks));
    }

    pub(crate) fn set_local(&self, by: &str, key: &str, until: u64) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut next = (**self.blocks.load()).clone();
        next.insert(format!("{by}:{key}"), until);
        self.install(next);
    }

    fn lift_local(&self, by: &str, key: &str) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut next = (**self.blocks.load()).clone();
        next.remove(&format!("{by}:{key}"));
        self.install(next);
    }

    /// Blocks in force (from the store, where blocks are kept).
    pub async fn list(&self, sessions: Option<&Sessions>) -> Result<Vec<Block>, String> {
        let now = drawbridge_identity::unix_now();
        match sessions {
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
    pub async fn lift(
        &self,
        sessions: Option<&Sessions>,
        by: AlertKey,
        key: &str,
    ) -> Result<bool, String> {
        let had = self.blocked(by, key);
        self.lift_local(by.as_str(), key);
        match sessions {
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
