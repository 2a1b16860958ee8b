//! The Redis store: several instances share sessions and sign-in states. Every key is under
//! the configured prefix; every entry carries its expiry in Redis itself (`EXAT`), so
//! Redis removes what has ended. Single use is Redis's own `GETDEL`.
//!
//! Each call is bounded in time; a Redis that does not answer is an error, and the callers
//! refuse what depended on it.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::backend::{Backend, NEVER, StoreError};

/// Longest a connection attempt or an answer may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis server, connected to at first use and reconnected after a failure.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    prefix: String,
    connection: std::sync::Arc<tokio::sync::OnceCell<ConnectionManager>>,
}

impl Redis {
    /// A store at `url` (`redis://` or `rediss://`), trusting the certificates `ca` (DER)
    /// for TLS instead of the system's roots when given, keys under `prefix`.
    pub fn new(url: &str, ca: Option<&[&[u8]]>, prefix: &str) -> Result<Redis, StoreError> {
        let client = match ca {
            Some(certs) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem(certs)),
                },
            ),
            None => redis::Client::open(url),
        }?;
        Ok(Redis {
            client,
            prefix: prefix.to_string(),
            connection: std::sync::Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let c = self
            .connection
            .get_or_try_init(|| async {
                tokio::time::timeout(
                    TIMEOUT,
                    self.client.get_connection_manager_with_config(config),
                )
                .await
                .map_err(|_| StoreError::Timeout)?
                .map_err(StoreError::from)
            })
            .await?;
        Ok(c.clone())
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut c = self.connection().await?;
        tokio::time::timeout(TIMEOUT, cmd.query_async(&mut c))
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(StoreError::from)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// Certificates as PEM, the form the Redis client takes its roots in.
fn pem(certs: &[&[u8]]) -> Vec<u8> {
    use base64::Engine as _;
    let mut out = String::new();
    for der in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

impl Backend for Redis {
    async fn put(&self, key: &str, value: &[u8], expires_at: u64) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        if expires_at < NEVER {
            cmd.arg("EXAT").arg(expires_at.max(1));
        }
        self.query::<()>(&cmd).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.query(redis::cmd("GET").arg(self.key(key))).await
    }

    async fn scan(&self, prefix: &str, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // Glob characters in the prefix are matched literally.
        let mut pattern = String::new();
        for c in self.key(prefix).chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('*');
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() >= limit {
                break;
            }
        }
        keys.truncate(limit);
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> = self.query(redis::cmd("MGET").arg(&keys)).await?;
        let strip = self.prefix.len();
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| Some((k.get(strip..)?.to_string(), v?)))
            .collect())
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.query(redis::cmd("GETDEL").arg(self.key(key))).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let n: u64 = self.query(redis::cmd("DEL").arg(self.key(key))).await?;
        Ok(n > 0)
    }

    async fn put_if_absent(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let k = self.key(key);
        self.query::<Option<String>>(redis::cmd("SET").arg(&k).arg(value).arg("NX"))
            .await?;
        let held: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(&k)).await?;
        held.ok_or(StoreError::Timeout)
    }

    async fn add(&self, key: &str, by: i64, expires_at: u64) -> Result<i64, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ADD)
            .arg(1)
            .arg(self.key(key))
            .arg(by)
            .arg(expires_at.max(1));
        self.query(&cmd).await
    }

    async fn advance(&self, key: &str, value: u64, expires_at: u64) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ADVANCE)
            .arg(1)
            .arg(self.key(key))
            .arg(value)
            .arg(expires_at.max(1));
        let raised: i64 = self.query(&cmd).await?;
        Ok(raised == 1)
    }
}

/// `add`: INCRBY, and the window's end set when the counter is new (scripts run whole);
/// nothing is given back to a counter that is gone.
const ADD: &str = "if tonumber(ARGV[1]) < 0 and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end \
local n = redis.call('INCRBY', KEYS[1], ARGV[1]) \
if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end \
return n";

/// `advance`: set only when above what is held.
const ADVANCE: &str = "local held = tonumber(redis.call('GET', KEYS[1]) or '-1') \
if tonumber(ARGV[1]) > held then redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[2]) return 1 end \
return 0";
