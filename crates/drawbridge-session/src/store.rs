//! The stores behind [`Backend`]: the embedded one (a redb file, for one instance and the
//! demo), and the choice between it and Redis that a configuration makes ([`Store`]). The
//! same test suite runs against each.

use std::path::Path;
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

pub use crate::backend::{Backend, NEVER, StoreError};

/// The store a configuration names.
#[derive(Clone)]
pub enum Store {
    /// A redb file.
    Embedded(Embedded),
    /// A Redis server.
    Redis(Box<crate::redis_store::Redis>),
}

impl Store {
    /// `embedded` or `redis`, for what names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Embedded(_) => "embedded",
            Store::Redis(_) => "redis",
        }
    }

    /// Opens the store `config` names: the embedded file (created when missing), or a
    /// Redis client (connected at first use).
    pub fn open(config: &drawbridge_config::SessionStore) -> Result<Store, StoreError> {
        match config {
            drawbridge_config::SessionStore::Embedded { path } => {
                Embedded::open(path).map(Store::Embedded)
            }
            drawbridge_config::SessionStore::Redis {
                url,
                ca,
                key_prefix,
            } => {
                let url = std::str::from_utf8(url.expose()).map_err(|_| StoreError::Address)?;
                let ca: Option<Vec<&[u8]>> =
                    ca.as_ref().map(|c| c.iter().map(|d| d.as_ref()).collect());
                crate::redis_store::Redis::new(url, ca.as_deref(), key_prefix)
                    .map(|r| Store::Redis(Box::new(r)))
            }
        }
    }

    /// See [`Backend::put`].
    pub async fn put(&self, key: &str, value: &[u8], expires_at: u64) -> Result<(), StoreError> {
        match self {
            Store::Embedded(e) => e.put(key, value, expires_at).await,
            Store::Redis(r) => r.put(key, value, expires_at).await,
        }
    }
    /// See [`Backend::get`].
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Embedded(e) => e.get(key).await,
            Store::Redis(r) => r.get(key).await,
        }
    }
    /// See [`Backend::take`].
    pub async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Embedded(e) => e.take(key).await,
            Store::Redis(r) => r.take(key).await,
        }
    }
    /// See [`Backend::delete`].
    pub async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(e) => e.delete(key).await,
            Store::Redis(r) => r.delete(key).await,
        }
    }
    /// See [`Backend::scan`].
    pub async fn scan(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match self {
            Store::Embedded(e) => e.scan(prefix, limit).await,
            Store::Redis(r) => r.scan(prefix, limit).await,
        }
    }
    /// See [`Backend::put_if_absent`].
    pub async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        match self {
            Store::Embedded(e) => e.put_if_absent(key, value).await,
            Store::Redis(r) => r.put_if_absent(key, value).await,
        }
    }
    /// See [`Backend::add`].
    pub async fn add(&self, key: &str, by: i64, expires_at: u64) -> Result<i64, StoreError> {
        match self {
            Store::Embedded(e) => e.add(key, by, expires_at).await,
            Store::Redis(r) => r.add(key, by, expires_at).await,
        }
    }
    /// See [`Backend::advance`].
    pub async fn advance(
        &self,
        key: &str,
        value: u64,
        expires_at: u64,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Embedded(e) => e.advance(key, value, expires_at).await,
            Store::Redis(r) => r.advance(key, value, expires_at).await,
        }
    }
}

/// Entries: key -> 8 bytes of expiry (big-endian Unix seconds), then the value.
const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");

/// The embedded store: one redb file. Its calls run on the blocking pool, never on a
/// thread that serves requests.
#[derive(Clone)]
pub struct Embedded {
    db: Arc<redb::Database>,
}

impl Embedded {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Embedded, StoreError> {
        let db = redb::Database::create(path).map_err(redb::Error::from)?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(ENTRIES).map_err(redb::Error::from)?;
        txn.commit().map_err(redb::Error::from)?;
        Ok(Embedded { db: Arc::new(db) })
    }

    /// Removes every expired entry; returns how many.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let db = self.db.clone();
        let now = drawbridge_identity::unix_now();
        blocking(move || {
            let txn = db.begin_write()?;
            let removed = {
                let mut t = txn.open_table(ENTRIES)?;
                let mut removed = 0usize;
                t.retain(|_, v| {
                    let gone = expired(v, now);
                    removed += usize::from(gone);
                    !gone
                })?;
                removed
            };
            txn.commit()?;
            Ok(removed)
        })
        .await
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, redb::Error> + Send + 'static,
) -> Result<T, StoreError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

fn expired(stored: &[u8], now: u64) -> bool {
    match stored.first_chunk::<8>() {
        Some(at) => u64::from_be_bytes(*at) <= now,
        None => true,
    }
}

fn live(stored: &[u8], now: u64) -> Option<Vec<u8>> {
    (!expired(stored, now)).then(|| stored[8..].to_vec())
}

fn entry(value: &[u8], expires_at: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&expires_at.to_be_bytes());
    v.extend_from_slice(value);
    v
}

impl Backend for Embedded {
    async fn put(&self, key: &str, value: &[u8], expires_at: u64) -> Result<(), StoreError> {
        let (db, key, stored) = (self.db.clone(), key.to_string(), entry(value, expires_at));
        blocking(move || {
            let txn = db.begin_write()?;
            txn.open_table(ENTRIES)?
                .insert(key.as_str(), stored.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (db, key) = (self.db.clone(), key.to_string());
        let now = drawbridge_identity::unix_now();
        blocking(move || {
            let t = db.begin_read()?.open_table(ENTRIES)?;
            Ok(t.get(key.as_str())?.and_then(|v| live(v.value(), now)))
        })
        .await
    }

    async fn scan(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let (db, prefix) = (self.db.clone(), prefix.to_string());
        let now = drawbridge_identity::unix_now();
        blocking(move || {
            let t = db.begin_read()?.open_table(ENTRIES)?;
            let mut out = Vec::new();
            for row in t.range(prefix.as_str()..)? {
                let (k, v) = row?;
                if !k.value().starts_with(prefix.as_str()) || out.len() == limit {
                    break;
                }
                if let Some(v) = live(v.value(), now) {
                    out.push((k.value().to_string(), v));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (db, key) = (self.db.clone(), key.to_string());
        let now = drawbridge_identity::unix_now();
        blocking(move || {
            let txn = db.begin_write()?;
            let value = txn
                .open_table(ENTRIES)?
                .remove(key.as_str())?
                .and_then(|v| live(v.value(), now));
            txn.commit()?;
            Ok(value)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let (db, key) = (self.db.clone(), key.to_string());
        let now = drawbridge_identity::unix_now();
        blocking(move || {
            let txn = db.begin_write()?;
            let was = txn
                .open_table(ENTRIES)?
                .remove(key.as_str())?
                .is_some_and(|v| !expired(v.value(), now));
            txn.commit()?;
            Ok(was)
        })
        .await
    }

    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let (db, key, value) = (self.db.clone(), key.to_string(), value.to_vec());
        let now = drawbridge_identity::unix_now();
        blocking(move || {
            let txn = db.begin_write()?;
            let held = {
                let mut t = txn.open_table(ENTRIES)?;
                let held = t.get(key.as_str())?.and_then(|v| live(v.value(), now));
                match held {
                    Some(v) => v,
                    None => {
                        t.insert(key.as_str(), entry(&value, NEVER).as_slice())?;
                        value
                    }
                }
            };
            txn.commit()?;
            Ok(held)
        })
        .await
    }

    async fn add(&self, key: &str, by: i64, expires_at: u64) -> Result<i64, StoreError> {
        let (db, key) = (self.db.clone(), key.to_string());
        let now = drawbridge_identity::unix_now();
        blocking(move || {
            let txn = db.begin_write()?;
            let n = {
                let mut t = txn.open_table(ENTRIES)?;
                let held = t.get(key.as_str())?.and_then(|v| {
                    let at = v
                        .value()
                        .first_chunk::<8>()
                        .map(|a| u64::from_be_bytes(*a))?;
                    let n = live(v.value(), now)?
                        .first_chunk::<8>()
                        .map(|n| i64::from_be_bytes(*n))?;
                    Some((n, at))
                });
                let (n, at) = match held {
                    Some((n, at)) => (n.saturating_add(by), at),
                    // Nothing to give back to: a window that ended starts at zero.
                    None if by < 0 => return Ok(0),
                    None => (by, expires_at),
                };
                t.insert(key.as_str(), entry(&n.to_be_bytes(), at).as_slice())?;
                n
            };
            txn.commit()?;
            Ok(n)
        })
        .await
    }

    async fn advance(&self, key: &str, value: u64, expires_at: u64) -> Result<bool, StoreError> {
        let (db, key) = (self.db.clone(), key.to_string());
        let now = drawbridge_identity::unix_now();
        blocking(move || {
            let txn = db.begin_write()?;
            let raised = {
                let mut t = txn.open_table(ENTRIES)?;
                let held = t.get(key.as_str())?.and_then(|v| {
                    live(v.value(), now)?
                        .first_chunk::<8>()
                        .map(|n| u64::from_be_bytes(*n))
                });
                let raise = held.is_none_or(|h| h < value);
                if raise {
                    t.insert(
                        key.as_str(),
                        entry(&value.to_be_bytes(), expires_at).as_slice(),
                    )?;
                }
                raise
            };
            txn.commit()?;
            Ok(raised)
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod suite {
    //! The behaviour every backend must have.

    use super::*;

    pub(crate) async fn behaves(s: &impl Backend) {
        let far = drawbridge_identity::unix_now() + 3600;
        assert_eq!(s.get("a").await.expect("get"), None);
        s.put("a", b"one", far).await.expect("put");
        assert_eq!(s.get("a").await.expect("get"), Some(b"one".to_vec()));
        s.put("a", b"two", far).await.expect("put");
        assert_eq!(s.get("a").await.expect("get"), Some(b"two".to_vec()));
        // Taken once, then gone.
        assert_eq!(s.take("a").await.expect("take"), Some(b"two".to_vec()));
        assert_eq!(s.take("a").await.expect("take"), None);
        assert_eq!(s.get("a").await.expect("get"), None);
        // Expired entries are absent, whatever the operation.
        let past = drawbridge_identity::unix_now() - 1;
        s.put("old", b"x", past).await.expect("put");
        assert_eq!(s.get("old").await.expect("get"), None);
        assert_eq!(s.take("old").await.expect("take"), None);
        assert!(!s.delete("old").await.expect("delete"));
        s.put("b", b"x", far).await.expect("put");
        assert!(s.delete("b").await.expect("delete"));
        assert!(!s.delete("b").await.expect("delete"));
        // The first value put stays.
        assert_eq!(s.put_if_absent("k", b"first").await.expect("pia"), b"first");
        assert_eq!(
            s.put_if_absent("k", b"second").await.expect("pia"),
            b"first"
        );
        // Of many takers of one key, exactly one gets it.
        s.put("once", b"v", far).await.expect("put");
        let got = futures_util::future::join_all((0..8).map(|_| s.take("once"))).await;
        let got: Vec<_> = got.into_iter().map(|r| r.expect("take")).collect();
        assert_eq!(got.iter().filter(|v| v.is_some()).count(), 1);
        // Counters add in one step, whoever adds, and keep the end of their window.
        let added = futures_util::future::join_all((0..10).map(|_| s.add("count", 1, far))).await;
        let mut seen: Vec<i64> = added.into_iter().map(|r| r.expect("add")).collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
        assert_eq!(s.add("count", -1, far + 999).await.expect("add"), 9);
        // A window that ended starts again.
        s.add("ended", 5, past).await.expect("add");
        assert_eq!(s.add("ended", 1, far).await.expect("add"), 1);
        // Giving back to a counter that is gone creates none (no credit for the next).
        assert_eq!(s.add("gone", -1, far).await.expect("add"), 0);
        assert_eq!(s.add("gone", 1, far).await.expect("add"), 1);
        // A number is raised once to a value, never lowered, whoever raises it.
        let raised =
            futures_util::future::join_all((0..10).map(|_| s.advance("step", 7, far))).await;
        let raised: Vec<bool> = raised.into_iter().map(|r| r.expect("advance")).collect();
        assert_eq!(raised.iter().filter(|r| **r).count(), 1);
        assert!(!s.advance("step", 6, far).await.expect("advance"));
        assert!(s.advance("step", 8, far).await.expect("advance"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_store_behaves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Embedded::open(&dir.path().join("s.redb")).expect("open");
        suite::behaves(&s).await;
        let past = drawbridge_identity::unix_now() - 1;
        s.put("gone", b"x", past).await.expect("put");
        assert!(s.sweep().await.expect("sweep") >= 1);
    }

    #[tokio::test]
    async fn redis_store_behaves() {
        let server = drawbridge_testkit::redis::RedisServer::start();
        let s = crate::redis_store::Redis::new(&server.url(), None, "test:").expect("client");
        suite::behaves(&s).await;
        // Everything under the prefix: another prefix sees none of it.
        let far = drawbridge_identity::unix_now() + 3600;
        s.put("mine", b"v", far).await.expect("put");
        let other = crate::redis_store::Redis::new(&server.url(), None, "other:").expect("client");
        assert_eq!(other.get("mine").await.expect("get"), None);
    }

    #[tokio::test]
    async fn redis_over_tls_trusts_the_configured_ca_only() {
        let ca = drawbridge_testkit::certs::TestCa::new("redis ca");
        let leaf = ca.leaf(&["127.0.0.1"]);
        let server =
            drawbridge_testkit::redis::RedisServer::start_tls(&leaf.cert_pem, &leaf.key_pem);
        assert!(server.url().starts_with("rediss://"));
        let der = |pem: &str| {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
                .expect("pem")
                .to_vec()
        };
        let trusted = der(&ca.cert_pem);
        let s = crate::redis_store::Redis::new(&server.url(), Some(&[&trusted]), "tls:")
            .expect("client");
        suite::behaves(&s).await;
        // A server whose certificate another CA issued is not the store.
        let stranger = der(&drawbridge_testkit::certs::TestCa::new("other").cert_pem);
        let s = crate::redis_store::Redis::new(&server.url(), Some(&[&stranger]), "tls:")
            .expect("client");
        assert!(s.get("k").await.is_err());
    }

    #[tokio::test]
    async fn a_store_that_is_down_is_an_error_never_an_empty_answer() {
        let mut server = drawbridge_testkit::redis::RedisServer::start();
        let s = crate::redis_store::Redis::new(&server.url(), None, "t:").expect("client");
        let far = drawbridge_identity::unix_now() + 3600;
        s.put("k", b"v", far).await.expect("put");
        server.stop();
        assert!(s.get("k").await.is_err());
        assert!(s.take("k").await.is_err());
        assert!(s.put("k", b"v", far).await.is_err());
        // Back (empty): it answers again.
        server.restart();
        let mut ok = false;
        for _ in 0..40 {
            if s.get("k").await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(ok, "the store reconnects");
    }

    #[tokio::test]
    async fn embedded_store_keeps_entries_across_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let far = drawbridge_identity::unix_now() + 3600;
        {
            let s = Embedded::open(&path).expect("open");
            s.put("kept", b"v", far).await.expect("put");
        }
        let s = Embedded::open(&path).expect("reopen");
        assert_eq!(s.get("kept").await.expect("get"), Some(b"v".to_vec()));
    }
}
