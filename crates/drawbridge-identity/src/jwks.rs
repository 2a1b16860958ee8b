//! An issuer's public keys: the JWK Set parsed into verification keys, and where it comes
//! from (a file read with the configuration, or an address fetched, cached and refreshed).
//!
//! Only keys that can verify a signature are kept: `use=enc` keys, keys whose `key_ops` do
//! not include `verify`, symmetric (`oct`) keys and unsupported types are dropped when the set
//! is parsed, so no later check can be talked into using them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use drawbridge_config::JwksUrl;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};

use drawbridge_telemetry::metrics::KeySetState;

use crate::error::{JwksError, Refusal};
use crate::fetch::Fetcher;

/// Most keys kept from one set.
const MAX_KEYS: usize = 64;

/// Verification keys of one issuer.
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

struct VerifyKey {
    kid: Option<String>,
    /// The `alg` the set declares for the key; a token must use exactly it.
    alg: Option<Algorithm>,
    curve: Curve,
    key: DecodingKey,
}

/// The key type and curve, which decide the algorithms a key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Curve {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Curve::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Curve::P256 => alg == ES256,
            Curve::P384 => alg == ES384,
            Curve::Ed25519 => alg == EdDSA,
        }
    }
}

impl KeySet {
    /// Parses a JWK Set document. Keys that cannot verify signatures are skipped (and
    /// counted in the second value); a document with no usable key at all is an error.
    pub fn parse(bytes: &[u8]) -> Result<(KeySet, usize), JwksError> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(bytes).map_err(JwksError::NotAKeySet)?;
        let mut keys = Vec::new();
        let mut skipped = 0;
        for v in doc.keys {
            match verify_key(v) {
                Some(k) if keys.len() < MAX_KEYS => keys.push(k),
                _ => skipped += 1,
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey(skipped));
        }
        Ok((KeySet { keys }, skipped))
    }

    /// How many verification keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty (never, for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token's `kid` and `alg`. Without a `kid`, only a set with exactly one
    /// key fitting `alg` answers.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<&DecodingKey, Refusal> {
        let key = match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or_else(|| Refusal::UnknownKey(printable(kid)))?,
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.curve.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => k,
                    _ => return Err(Refusal::UnknownKey("(no kid)".into())),
                }
            }
        };
        if !key.curve.fits(alg) || key.alg.is_some_and(|a| a != alg) {
            return Err(Refusal::KeyMismatch(
                printable(kid.unwrap_or("(no kid)")),
                format!("{alg:?}"),
            ));
        }
        Ok(&key.key)
    }

    fn has(&self, kid: Option<&str>) -> bool {
        match kid {
            Some(kid) => self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
            None => true,
        }
    }
}

fn verify_key(v: serde_json::Value) -> Option<VerifyKey> {
    let jwk: Jwk = serde_json::from_value(v).ok()?;
    let c = &jwk.common;
    if matches!(
        c.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    if let Some(ops) = &c.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return None;
    }
    let alg = match c.key_algorithm {
        None => None,
        Some(ka) => Some(asymmetric(ka)?),
    };
    let curve = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Curve::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Curve::P256,
            EllipticCurve::P384 => Curve::P384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Curve::Ed25519,
        _ => return None,
    };
    if alg.is_some_and(|a| !curve.fits(a)) {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(VerifyKey {
        kid: c.key_id.clone(),
        alg,
        curve,
        key,
    })
}

/// The signature algorithm a JWK's `alg` names, when it is one this gateway verifies.
fn asymmetric(ka: KeyAlgorithm) -> Option<Algorithm> {
    use KeyAlgorithm as K;
    Some(match ka {
        K::RS256 => Algorithm::RS256,
        K::RS384 => Algorithm::RS384,
        K::RS512 => Algorithm::RS512,
        K::PS256 => Algorithm::PS256,
        K::PS384 => Algorithm::PS384,
        K::PS512 => Algorithm::PS512,
        K::ES256 => Algorithm::ES256,
        K::ES384 => Algorithm::ES384,
        K::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// A `kid` as it may appear in a log line: bounded, printable.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

// === impl KeySource ===

/// Where an issuer's keys come from, and the keys last had from there.
pub struct KeySource {
    origin: Origin,
    current: ArcSwapOption<Loaded>,
    /// When a fetch last started (successful or not): background refreshes and retries of
    /// a failing issuer wait a cooldown after it.
    last_attempt: Mutex<Option<Instant>>,
    /// When a token with an unknown `kid` last caused a fetch: the next such fetch waits a
    /// cooldown after it, but never after the start-up fetch or a refresh.
    last_unknown_kid: Mutex<Option<Instant>>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    /// Fetches that succeeded and that failed, for metrics.
    fetches: [std::sync::atomic::AtomicU64; 2],
}

enum Origin {
    File,
    Url {
        fetcher: Fetcher,
        refresh: Duration,
        cooldown: Duration,
        grace: Duration,
    },
}

/// The state of a key source at one moment ([`KeySource::standing`]).
pub(crate) struct Standing {
    /// The generation of the keys in use; 0 before any.
    pub(crate) generation: u64,
    /// Whether they are usable now, and why not.
    pub(crate) usable: Result<(), &'static str>,
    /// Whether a refresh is due.
    pub(crate) due: bool,
}

struct Loaded {
    keys: Arc<KeySet>,
    /// Changes whenever the keys do, so verifications cached under older keys lapse. Kept
    /// with the keys it numbers: a verification and its cache entry name the same set.
    generation: u64,
    fetched_at: Instant,
    digest: [u8; 32],
}

/// Settings of a fetched key set.
pub struct FetchSettings {
    /// How long fetched keys are used before they are fetched again.
    pub refresh: Duration,
    /// Least time between two fetches caused by unknown `kid`s (and between retries).
    pub cooldown: Duration,
    /// How long keys stay usable past `refresh` while fetching fails.
    pub grace: Duration,
    /// Bound on one fetch.
    pub timeout: Duration,
}

impl KeySource {
    /// Keys read from a file with the configuration.
    pub fn from_file(bytes: &[u8]) -> Result<KeySource, JwksError> {
        let (keys, _) = KeySet::parse(bytes)?;
        Ok(KeySource {
            origin: Origin::File,
            current: ArcSwapOption::from_pointee(Loaded {
                keys: Arc::new(keys),
                generation: 1,
                fetched_at: Instant::now(),
                digest: digest(bytes),
            }),
            last_attempt: Mutex::new(None),
            last_unknown_kid: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            fetches: Default::default(),
        })
    }

    /// Keys fetched from `url`, first when they are needed (or [`KeySource::prefetch`]).
    pub fn from_url(url: JwksUrl, settings: FetchSettings) -> KeySource {
        KeySource {
            origin: Origin::Url {
                fetcher: Fetcher::new(url, settings.timeout),
                refresh: settings.refresh,
                cooldown: settings.cooldown,
                grace: settings.grace,
            },
            current: ArcSwapOption::empty(),
            last_attempt: Mutex::new(None),
            last_unknown_kid: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            fetches: Default::default(),
        }
    }

    /// Fetches that succeeded and failed, and the age of the keys in use; `None` for keys
    /// read from a file.
    pub fn state(&self) -> Option<KeySetState> {
        use std::sync::atomic::Ordering;
        let Origin::Url { .. } = self.origin else {
            return None;
        };
        Some(KeySetState {
            fetched: self.fetches[0].load(Ordering::Relaxed),
            failed: self.fetches[1].load(Ordering::Relaxed),
            age: self.current.load().as_ref().map(|l| l.fetched_at.elapsed()),
        })
    }

    /// Fetches the keys now if they come from an address and none were had yet.
    pub async fn prefetch(self: &Arc<Self>) {
        if matches!(self.origin, Origin::Url { .. }) && self.current.load().is_none() {
            let _ = self.fetch(None).await;
        }
    }

    /// Whether keys are usable now: fetched, and not stale beyond the grace period.
    pub fn usable(&self) -> Result<(), Refusal> {
        self.standing()
            .usable
            .map_err(|why| Refusal::KeysUnavailable(why.into()))
    }

    /// The key set to verify a token naming `kid` with: refreshed in the background when
    /// due, fetched now when none is usable or `kid` is unknown (at most once per cooldown).
    pub(crate) async fn keys_for(
        self: &Arc<Self>,
        kid: Option<&str>,
    ) -> Result<(Arc<KeySet>, u64), Refusal> {
        let Origin::Url { cooldown, .. } = &self.origin else {
            let loaded = self.current.load();
            return loaded
                .as_ref()
                .map(|l| (l.keys.clone(), l.generation))
                .ok_or_else(|| Refusal::KeysUnavailable("no keys".into()));
        };
        if self.usable().is_err() {
            // A fetch in flight (the prefetch at start, another request's) may be about to
            // install keys: wait for it rather than refuse meanwhile.
            drop(self.fetching.lock().await);
        }
        let current = self.current.load_full();
        match (&current, self.usable()) {
            (Some(l), Ok(())) => {
                self.refresh_if_due();
                if l.keys.has(kid) || !claim(&self.last_unknown_kid, *cooldown) {
                    return Ok((l.keys.clone(), l.generation));
                }
            }
            (_, Err(why)) if !self.cooled_down(*cooldown) => return Err(why),
            _ => {}
        }
        self.fetch(current.as_ref().map(|l| l.fetched_at)).await?;
        self.usable()?;
        self.current
            .load()
            .as_ref()
            .map(|l| (l.keys.clone(), l.generation))
            .ok_or_else(|| Refusal::KeysUnavailable("no keys".into()))
    }

    /// Starts a background fetch when the keys are older than the refresh interval. Every
    /// use of the keys does this, cached verifications included (from [`Self::standing`]):
    /// otherwise a busy cache would never look at the issuer again, and a key it withdrew
    /// would keep admitting tokens.
    pub(crate) fn refresh_if_due(self: &Arc<Self>) {
        if self.standing().due {
            self.refresh_now();
        }
    }

    /// What a verification cached under these keys needs to know, from one look at the
    /// key set and one reading of the clock: the generation in use (0 before any), whether
    /// the keys are usable ([`Self::usable`]), and whether a refresh is due.
    pub(crate) fn standing(&self) -> Standing {
        let loaded = self.current.load();
        let Some(l) = loaded.as_ref() else {
            return Standing {
                generation: 0,
                usable: Err("never fetched"),
                due: false,
            };
        };
        let (usable, due) = match &self.origin {
            Origin::File => (Ok(()), false),
            Origin::Url { refresh, grace, .. } => {
                let age = l.fetched_at.elapsed();
                let usable = if age > *refresh + *grace {
                    Err("not refreshed within the grace period")
                } else {
                    Ok(())
                };
                (usable, age > *refresh)
            }
        };
        Standing {
            generation: l.generation,
            usable,
            due,
        }
    }

    /// Starts a background refresh, at most once per cooldown, whether or not one is due
    /// ([`Self::standing`] says).
    pub(crate) fn refresh_now(self: &Arc<Self>) {
        if let Origin::Url { cooldown, .. } = &self.origin
            && self.claim_attempt(*cooldown)
        {
            self.refresh_in_background();
        }
    }

    /// Takes the right to start a fetch now, at most once per cooldown, so that many
    /// requests noticing stale keys at once (or a failing issuer) start one fetch, not many.
    fn claim_attempt(&self, cooldown: Duration) -> bool {
        claim(&self.last_attempt, cooldown)
    }

    fn cooled_down(&self, cooldown: Duration) -> bool {
        lock(&self.last_attempt).is_none_or(|t| t.elapsed() >= cooldown)
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let me = Arc::clone(self);
            let seen = self.current.load().as_ref().map(|l| l.fetched_at);
            rt.spawn(async move {
                let _ = me.fetch(seen).await;
            });
        }
    }

    /// Fetches and installs a new set, unless another fetch did so after `seen`.
    async fn fetch(&self, seen: Option<Instant>) -> Result<(), Refusal> {
        let Origin::Url { fetcher, .. } = &self.origin else {
            return Ok(());
        };
        let _one = self.fetching.lock().await;
        let now_loaded = self.current.load().as_ref().map(|l| l.fetched_at);
        if now_loaded.is_some() && now_loaded != seen {
            return Ok(());
        }
        *lock(&self.last_attempt) = Some(Instant::now());
        let result = fetcher
            .get()
            .await
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                KeySet::parse(&bytes)
                    .map(|(k, _)| (k, digest(&bytes)))
                    .map_err(|e| format!("the key set is invalid: {e}"))
            });
        self.fetches[usize::from(result.is_err())]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok((keys, digest)) => {
                let previous = self.current.load();
                let changed = previous.as_ref().is_none_or(|l| l.digest != digest);
                let generation = match previous.as_ref() {
                    Some(l) if !changed => l.generation,
                    Some(l) => l.generation + 1,
                    None => 1,
                };
                tracing::debug!(
                    url = fetcher.url(),
                    keys = keys.len(),
                    changed,
                    "JWKS fetched"
                );
                self.current.store(Some(Arc::new(Loaded {
                    keys: Arc::new(keys),
                    generation,
                    fetched_at: Instant::now(),
                    digest,
                })));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(url = fetcher.url(), error = %e, "JWKS fetch failed");
                Err(Refusal::KeysUnavailable(format!("fetch failed: {e}")))
            }
        }
    }
}

/// Takes the right to act now if `last` is at least `cooldown` ago (or never), and notes it.
fn claim(last: &Mutex<Option<Instant>>, cooldown: Duration) -> bool {
    let mut last = lock(last);
    if last.is_some_and(|t| t.elapsed() < cooldown) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// SHA-256 of a fetched document: stable across releases, and no two key sets share one.
fn digest(bytes: &[u8]) -> [u8; 32] {
    drawbridge_config::sha256(&[bytes])
}

/// The guarded values are replaced whole, so a poisoned lock still holds a usable value.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_testkit::jwt::{KeyType, SigningKey, jwks};

    fn set(keys: &[&SigningKey]) -> KeySet {
        KeySet::parse(jwks(keys).as_bytes()).expect("a key set").0
    }

    #[test]
    fn a_kid_finds_its_key_only_for_its_own_algorithm() {
        let rsa = SigningKey::generate(KeyType::Rsa, "r1");
        let ec = SigningKey::generate(KeyType::P256, "e1");
        let s = set(&[&rsa, &ec]);
        assert!(s.find(Some("r1"), Algorithm::RS256).is_ok());
        assert!(s.find(Some("e1"), Algorithm::ES256).is_ok());
        assert!(matches!(
            s.find(Some("r1"), Algorithm::ES256),
            Err(Refusal::KeyMismatch(..))
        ));
        assert!(matches!(
            s.find(Some("e1"), Algorithm::RS256),
            Err(Refusal::KeyMismatch(..))
        ));
        assert!(matches!(
            s.find(Some("nope"), Algorithm::RS256),
            Err(Refusal::UnknownKey(k)) if k == "nope"
        ));
    }

    #[test]
    fn without_a_kid_exactly_one_fitting_key_answers() {
        let rsa = SigningKey::generate(KeyType::Rsa, "r1");
        let rsa2 = SigningKey::generate(KeyType::Rsa, "r2");
        let ec = SigningKey::generate(KeyType::P256, "e1");
        // One RSA key and one EC key: each algorithm has exactly one candidate.
        let s = set(&[&rsa, &ec]);
        assert!(s.find(None, Algorithm::RS256).is_ok());
        assert!(s.find(None, Algorithm::ES256).is_ok());
        // Two RSA keys: a token without kid could be either; refused.
        let s = set(&[&rsa, &rsa2, &ec]);
        assert!(matches!(
            s.find(None, Algorithm::RS256),
            Err(Refusal::UnknownKey(_))
        ));
        assert!(s.find(None, Algorithm::ES256).is_ok());
        assert!(!s.has(Some("r3")) && s.has(Some("r2")) && s.has(None));
    }
}
