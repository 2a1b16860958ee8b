//! Verified tokens, kept until they expire so a caller's next request costs a lookup
//! instead of a signature check. Keyed by the whole token: two tokens that differ anywhere
//! are two entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::principal::Principal;

/// Lock shards, chosen by the token's last byte (part of its signature).
const SHARDS: usize = 16;

/// Only verified tokens are ever inserted (an attacker cannot choose keys), so a fast
/// hasher with a per-process seed serves; a token is hashed on every request.
type Map = HashMap<Box<str>, Entry, foldhash::fast::RandomState>;

pub(crate) struct TokenCache {
    shards: Vec<Mutex<Map>>,
    per_shard: usize,
}

struct Entry {
    principal: Arc<Principal>,
    /// `exp` and `nbf` widened by the leeway, Unix seconds.
    valid_until: u64,
    valid_from: u64,
    /// The key set generation the token was verified with.
    generation: u64,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Map::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// The principal of a token verified before, if it is still within its validity and
    /// was verified with the current keys.
    pub(crate) fn get(&self, token: &str, now: u64, generation: u64) -> Option<Arc<Principal>> {
        let shard = lock(self.shard(token));
        let e = shard.get(token)?;
        (e.generation == generation && now >= e.valid_from && now <= e.valid_until)
            .then(|| e.principal.clone())
    }

    pub(crate) fn insert(
        &self,
        token: &str,
        principal: Arc<Principal>,
        valid: (u64, u64),
        generation: u64,
        now: u64,
    ) {
        let mut shard = lock(self.shard(token));
        if shard.len() >= self.per_shard {
            shard.retain(|_, e| e.valid_until >= now && e.generation == generation);
            if shard.len() >= self.per_shard {
                // Full of live tokens: start over rather than track recency on every hit.
                shard.clear();
            }
        }
        shard.insert(
            token.into(),
            Entry {
                principal,
                valid_from: valid.0,
                valid_until: valid.1,
                generation,
            },
        );
    }

    fn shard(&self, token: &str) -> &Mutex<Map> {
        let b = token.as_bytes().last().copied().unwrap_or(0) as usize;
        &self.shards[b % SHARDS]
    }
}

/// Entries are inserted whole, so a poisoned shard still holds consistent entries.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
