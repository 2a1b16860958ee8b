//! The bounded caches of the identity layer and of the layers above it: verified tokens,
//! and [`PrincipalCache`], values computed for a principal (its policy entity, decisions,
//! identity assertions) kept by who the principal is.
//!
//! Both are quick_cache's concurrent S3-FIFO caches: a full cache drops the entries least
//! likely to come back, never everything at once, and its capacity is the number of
//! entries it holds (shards picked by a token's last byte used to leave most of it empty:
//! an RS256 signature's last byte takes four values). Each is owned by the component that
//! fills it and lives as long as it does: nothing is kept inside a principal.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::principal::Principal;

/// Verified tokens, kept until they expire so a caller's next request costs a lookup
/// instead of a signature check. Keyed by the whole token's bytes (looked up before they
/// are read as text): two tokens that differ anywhere are two entries.
pub(crate) struct TokenCache {
    cache: quick_cache::sync::Cache<TokenKey, Entry>,
}

/// A held token: equal to another only byte for byte, hashed by its length and its last
/// [`HASHED_TAIL`] bytes. Only verified tokens are held, and a signed token ends in its
/// signature: the tail tells apart any two a signer made, where hashing the rest too (a
/// header and claims much alike from caller to caller) would only take longer. Tokens sent
/// ending alike make nothing slower but their own lookups: none of them is held unless its
/// signer made it.
#[derive(PartialEq, Eq)]
struct TokenKey(Box<[u8]>);

/// A token looked up, borrowed from the request.
struct TokenProbe<'a>(&'a [u8]);

/// How many of a token's last bytes its hash reads: 192 bits of an RS256, ES256 or EdDSA
/// signature in base64url.
const HASHED_TAIL: usize = 32;

fn hash_token<H: Hasher>(token: &[u8], h: &mut H) {
    h.write_usize(token.len());
    h.write(&token[token.len().saturating_sub(HASHED_TAIL)..]);
}

impl Hash for TokenKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_token(&self.0, h);
    }
}

impl Hash for TokenProbe<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_token(self.0, h);
    }
}

impl quick_cache::Equivalent<TokenKey> for TokenProbe<'_> {
    fn equivalent(&self, key: &TokenKey) -> bool {
        *self.0 == *key.0
    }
}

/// What the token cache knows of a token.
pub(crate) enum Known {
    /// Verified, and valid now: its principal.
    Valid(Arc<Principal>),
    /// Verified, and expired since.
    Expired,
    /// Not verified with the current keys, or not valid yet.
    Unknown,
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
    #[cfg(test)]
    pub(crate) fn get(&self, token: &[u8], now: u64, generation: u64) -> Option<Arc<Principal>> {
        match self.known(token, now, generation) {
            Known::Valid(p) => Some(p),
            Known::Expired | Known::Unknown => None,
        }
    }

    /// What is known of `token` at `now` under the keys of `generation`. A token verified
    /// with these keys whose `exp` (and leeway) has passed stays known as expired: time only
    /// goes one way, and refusing it again costs a lookup, not a signature check (a client
    /// that keeps sending its expired token costs what a valid one does). Verified with keys
    /// since replaced, or not valid yet: forgotten, and verified afresh if it comes again.
    pub(crate) fn known(&self, token: &[u8], now: u64, generation: u64) -> Known {
        let Some(e) = self.cache.get(&TokenProbe(token)) else {
            return Known::Unknown;
        };
        if e.generation != generation || now < e.valid_from {
            self.cache.remove(&TokenProbe(token));
            Known::Unknown
        } else if now > e.valid_until {
            Known::Expired
        } else {
            Known::Valid(e.principal)
        }
    }

    pub(crate) fn insert(
        &self,
        token: &[u8],
        principal: Arc<Principal>,
        valid: (u64, u64),
        generation: u64,
        _now: u64,
    ) {
        self.cache.insert(
            TokenKey(token.into()),
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

// === impl PrincipalCache ===

/// Values computed for a principal and kept by who it is: its authenticator and id, and a
/// key `K` the owner picks (an audience, a route and action). An entry serves the
/// principal it was computed for (the same `Arc`, as a cached credential hands out) and any
/// principal that says exactly the same things ([`Principal::same_as`]: a credential
/// checked again); a principal whose groups or attributes changed is a miss, and its value
/// replaces the old one.
pub struct PrincipalCache<K, V> {
    cache: quick_cache::sync::Cache<Key<K>, (Arc<Principal>, V)>,
}

/// An entry's key, owned.
#[derive(PartialEq, Eq)]
struct Key<K> {
    authenticator: Arc<str>,
    id: Box<str>,
    extra: K,
}

/// An entry's key, borrowed from the principal asking: a lookup allocates nothing.
struct Probe<'a, Q: ?Sized> {
    authenticator: &'a str,
    id: &'a str,
    extra: &'a Q,
}

impl<K: Hash> Hash for Key<K> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // The same sequence as `Probe`'s, so that both find the same entry.
        (*self.authenticator).hash(h);
        (*self.id).hash(h);
        self.extra.hash(h);
    }
}

impl<Q: Hash + ?Sized> Hash for Probe<'_, Q> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.authenticator.hash(h);
        self.id.hash(h);
        self.extra.hash(h);
    }
}

impl<K, Q> quick_cache::Equivalent<Key<K>> for Probe<'_, Q>
where
    K: std::borrow::Borrow<Q>,
    Q: Eq + ?Sized,
{
    fn equivalent(&self, key: &Key<K>) -> bool {
        *self.authenticator == *key.authenticator
            && *self.id == *key.id
            && *self.extra == *key.extra.borrow()
    }
}

impl<K, V> PrincipalCache<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    /// A cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }

    /// The value kept for `principal` and `extra`, if it was computed for this principal
    /// or one that says the same.
    pub fn get<Q>(&self, principal: &Arc<Principal>, extra: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let probe = Probe {
            authenticator: &principal.authenticator,
            id: &principal.id,
            extra,
        };
        let (owner, value) = self.cache.get(&probe)?;
        if Arc::ptr_eq(&owner, principal) {
            return Some(value);
        }
        if !owner.same_as(principal) {
            return None;
        }
        // Another copy of the same principal: requests that verified one credential at
        // once each made their own, and the credential cache keeps one of them. The entry
        // moves to the copy asking, so that its next lookups compare one pointer instead
        // of every field (two copies in use by turns would move it each time: equal
        // principals from two credentials are rare, as they differ in expiry). Only the
        // entry compared moves: one that another request put there meanwhile (for a
        // principal whose groups changed) is never handed to this one.
        if let Some((key, (_, kept))) = self
            .cache
            .remove_if(&probe, |(o, _)| Arc::ptr_eq(o, &owner))
        {
            self.cache.insert(key, (principal.clone(), kept));
        }
        Some(value)
    }

    /// Keeps `value` for `principal` and `extra`, in place of any value kept before.
    pub fn insert(&self, principal: &Arc<Principal>, extra: K, value: V) {
        let key = Key {
            authenticator: principal.authenticator.clone(),
            id: principal.id.as_str().into(),
            extra,
        };
        self.cache.insert(key, (principal.clone(), value));
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

impl<K: Hash + Eq, V: Clone> std::fmt::Debug for PrincipalCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrincipalCache({} entries)", self.cache.len())
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
            cache.insert(token(i).as_bytes(), p.clone(), (0, u64::MAX), 1, 0);
        }
        assert!(cache.len() >= 900, "{}", cache.len());
        for i in 1000..1500 {
            cache.insert(token(i).as_bytes(), p.clone(), (0, u64::MAX), 1, 0);
        }
        let held = (0..1500)
            .filter(|&i| cache.get(token(i).as_bytes(), 1, 1).is_some())
            .count();
        assert!((800..=1100).contains(&held), "{held} held");
        // The newest are there: a full cache did not start over.
        assert!(cache.get(token(1499).as_bytes(), 1, 1).is_some());
    }

    /// The hash reads a token's tail only; a token is found only by all its bytes.
    #[test]
    fn a_token_is_found_only_by_every_byte_of_it() {
        let cache = TokenCache::new(100);
        let p = Arc::new(Principal::anonymous());
        let held = format!("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.{}", "s".repeat(40));
        cache.insert(held.as_bytes(), p.clone(), (0, u64::MAX), 1, 0);
        assert!(cache.get(held.as_bytes(), 1, 1).is_some());
        let mut alike = Vec::new();
        // Each byte changed in turn: the same tail, other claims; the tail itself.
        for at in 0..held.len() {
            let mut t = held.clone().into_bytes();
            t[at] = if t[at] == b'x' { b'y' } else { b'x' };
            alike.push(t);
        }
        // Longer and shorter with the same tail, and the tail alone.
        alike.push(format!("x{held}").into_bytes());
        alike.push(held.as_bytes()[1..].to_vec());
        alike.push(held.as_bytes()[held.len() - HASHED_TAIL..].to_vec());
        for t in &alike {
            assert!(
                cache.get(t, 1, 1).is_none(),
                "{}",
                String::from_utf8_lossy(t)
            );
        }
        // Short tokens are held and told apart as well.
        for short in [&b""[..], b"a", b"ab", b"ba"] {
            cache.insert(short, p.clone(), (0, u64::MAX), 1, 0);
        }
        assert!(cache.get(b"ab", 1, 1).is_some() && cache.get(b"abc", 1, 1).is_none());
        assert!(cache.get(held.as_bytes(), 1, 1).is_some());
    }

    /// An expired token, or one verified with replaced keys, is a miss; one verified with
    /// replaced keys or not valid yet is gone, an expired one stays known as expired (for as
    /// long as the keys that verified it stay).
    #[test]
    fn validity_and_generation_decide() {
        let cache = TokenCache::new(10);
        let p = Arc::new(Principal::anonymous());
        cache.insert(b"t", p.clone(), (100, 200), 7, 150);
        assert!(cache.get(b"t", 150, 7).is_some());
        assert!(
            cache.get(b"t", 200, 7).is_some(),
            "valid through its last second"
        );
        assert!(cache.get(b"t", 99, 7).is_none(), "not yet valid");
        assert!(matches!(cache.known(b"t", 150, 7), Known::Unknown), "gone");
        cache.insert(b"t", p.clone(), (100, 200), 7, 150);
        assert!(cache.get(b"t", 150, 8).is_none(), "other keys");
        assert!(cache.get(b"t", 150, 7).is_none(), "removed once stale");
        cache.insert(b"t", p, (100, 200), 7, 150);
        assert!(cache.get(b"t", 201, 7).is_none(), "expired");
        for now in [201, 202, u64::MAX] {
            assert!(matches!(cache.known(b"t", now, 7), Known::Expired), "{now}");
        }
        assert!(
            matches!(cache.known(b"t", 201, 8), Known::Unknown),
            "other keys"
        );
        assert!(
            matches!(cache.known(b"t", 201, 7), Known::Unknown),
            "gone with them"
        );
    }

    fn caller(id: &str, groups: &[&str]) -> Arc<Principal> {
        let mut p = Principal::anonymous();
        p.id = id.into();
        p.authenticator = "corp".into();
        p.groups = groups.iter().map(|g| g.to_string()).collect();
        Arc::new(p)
    }

    /// The same principal, or one saying the same, finds its value; one whose groups
    /// changed does not, and its value replaces the old.
    #[test]
    fn principal_cache_serves_the_same_caller_only() {
        let cache: PrincipalCache<&str, u32> = PrincipalCache::new(100);
        let alice = caller("alice", &["dev"]);
        assert_eq!(cache.get(&alice, &"orders"), None);
        cache.insert(&alice, "orders", 1);
        assert_eq!(cache.get(&alice, &"orders"), Some(1), "same Arc");
        assert_eq!(cache.get(&alice, &"billing"), None, "other key");
        let again = caller("alice", &["dev"]);
        assert_eq!(
            cache.get(&again, &"orders"),
            Some(1),
            "checked again, same claims"
        );
        let promoted = caller("alice", &["dev", "admin"]);
        assert_eq!(cache.get(&promoted, &"orders"), None, "groups changed");
        cache.insert(&promoted, "orders", 2);
        assert_eq!(cache.get(&promoted, &"orders"), Some(2));
        assert_eq!(cache.get(&alice, &"orders"), None, "the old value is gone");
        // Another authenticator's `alice` is someone else.
        let mut other = (*alice).clone();
        other.authenticator = "partner".into();
        assert_eq!(cache.get(&Arc::new(other), &"orders"), None);
    }

    /// A lookup by another copy of the kept principal moves the entry to that copy: its
    /// next lookups compare a pointer.
    #[test]
    fn principal_cache_moves_to_the_copy_in_use() {
        let cache: PrincipalCache<&str, u32> = PrincipalCache::new(100);
        let owner = |c: &PrincipalCache<&str, u32>, p: &Principal| {
            let probe = Probe {
                authenticator: &p.authenticator,
                id: &p.id,
                extra: &"orders",
            };
            c.cache.peek(&probe).map(|(o, _)| o)
        };
        let first = caller("alice", &["dev"]);
        cache.insert(&first, "orders", 1);
        let second = caller("alice", &["dev"]);
        assert_eq!(cache.get(&second, &"orders"), Some(1));
        let kept = owner(&cache, &second).expect("kept");
        assert!(Arc::ptr_eq(&kept, &second), "moved to the copy asking");
        assert_eq!(cache.get(&second, &"orders"), Some(1));
        assert_eq!(
            cache.get(&first, &"orders"),
            Some(1),
            "the first copy still finds it"
        );
        let other = caller("alice", &["ops"]);
        assert_eq!(cache.get(&other, &"orders"), None);
        let kept = owner(&cache, &first).expect("kept");
        assert!(
            Arc::ptr_eq(&kept, &first),
            "not moved by a principal saying otherwise"
        );
    }

    /// A full principal cache evicts some entries, never all, and stays at its capacity.
    #[test]
    fn principal_cache_is_bounded() {
        let cache: PrincipalCache<u32, u32> = PrincipalCache::new(1000);
        let callers: Vec<_> = (0..3000).map(|i| caller(&format!("u{i}"), &[])).collect();
        for (i, p) in callers.iter().enumerate() {
            cache.insert(p, 7, i as u32);
        }
        assert!(cache.len() <= 1100, "{}", cache.len());
        assert!(cache.len() >= 800, "{}", cache.len());
        assert_eq!(
            cache.get(&callers[2999], &7),
            Some(2999),
            "the newest is kept"
        );
    }
}
