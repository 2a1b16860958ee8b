//! Verified tokens, kept until they expire so a caller's next request costs a lookup
//! instead of a signature check. Keyed by the whole token: two tokens that differ anywhere
//! are two entries.
//!
//! A bounded concurrent cache with real eviction (quick_cache's S3-FIFO): a full cache
//! drops the tokens least likely to come back, never everything at once, and its capacity
//! is the number of tokens it holds (shards picked by a token's last byte used to leave
//! most of it empty: an RS256 signature's last byte takes four values).

use std::sync::Arc;

use crate::principal::Principal;

pub(crate) struct TokenCache {
    cache: quick_cache::sync::Cache<Box<str>, Entry>,
}

#[derive(Clone)]
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
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }

    /// The principal of a token verified before, if it is still within its validity and
    /// was verified with the current keys.
    pub(crate) fn get(&self, token: &str, now: u64, generation: u64) -> Option<Arc<Principal>> {
        let e = self.cache.get(token)?;
        if e.generation == generation && now >= e.valid_from && now <= e.valid_until {
            Some(e.principal)
        } else {
            // Expired, or verified with keys since replaced: never again.
            self.cache.remove(token);
            None
        }
    }

    pub(crate) fn insert(
        &self,
        token: &str,
        principal: Arc<Principal>,
        valid: (u64, u64),
        generation: u64,
        _now: u64,
    ) {
        self.cache.insert(
            token.into(),
            Entry {
                principal,
                valid_from: valid.0,
                valid_until: valid.1,
                generation,
            },
        );
    }

    /// Tokens held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache of N holds about N tokens, whatever their signatures end with, and a full one
    /// evicts some, never all.
    #[test]
    fn holds_its_capacity_and_evicts_some() {
        let cache = TokenCache::new(1000);
        let p = Arc::new(Principal::anonymous());
        // RS256-like tokens: long, and ending in one of a few characters.
        let token = |i: usize| {
            format!(
                "eyJhbGciOiJSUzI1NiJ9.{i:08}.sig{}",
                ["A", "Q", "g", "w"][i % 4]
            )
        };
        for i in 0..1000 {
            cache.insert(&token(i), p.clone(), (0, u64::MAX), 1, 0);
        }
        assert!(cache.len() >= 900, "{}", cache.len());
        for i in 1000..1500 {
            cache.insert(&token(i), p.clone(), (0, u64::MAX), 1, 0);
        }
        let held = (0..1500)
            .filter(|&i| cache.get(&token(i), 1, 1).is_some())
            .count();
        assert!((800..=1100).contains(&held), "{held} held");
        // The newest are there: a full cache did not start over.
        assert!(cache.get(&token(1499), 1, 1).is_some());
    }

    /// An expired token, or one verified with replaced keys, is a miss (and gone).
    #[test]
    fn validity_and_generation_decide() {
        let cache = TokenCache::new(10);
        let p = Arc::new(Principal::anonymous());
        cache.insert("t", p.clone(), (100, 200), 7, 150);
        assert!(cache.get("t", 150, 7).is_some());
        assert!(cache.get("t", 99, 7).is_none(), "not yet valid");
        cache.insert("t", p.clone(), (100, 200), 7, 150);
        assert!(cache.get("t", 150, 8).is_none(), "other keys");
        assert!(cache.get("t", 150, 7).is_none(), "removed once stale");
        cache.insert("t", p, (100, 200), 7, 150);
        assert!(cache.get("t", 201, 7).is_none(), "expired");
    }
}
