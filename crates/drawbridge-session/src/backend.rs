//! Where sessions and sign-in states are kept: one small key-value interface with an
//! expiry on every entry, which the embedded store and Redis implement alike.
//!
//! A failing store fails closed: every error is returned, and the callers refuse the
//! sign-in or the session it concerns.

use std::future::Future;

/// Entries that never expire are kept until this (year 9999).
pub const NEVER: u64 = 253_402_300_799;

/// Why the store could not answer. Whoever asked refuses what depended on it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded store's file.
    #[error("embedded store: {0}")]
    Embedded(#[from] redb::Error),
    /// A blocking task could not run (the runtime is shutting down).
    #[error("store task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Redis refused or failed a command, or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The store did not answer in time.
    #[error("no answer in time")]
    Timeout,
    /// The Redis address is not text.
    #[error("the Redis address is not UTF-8")]
    Address,
}

impl StoreError {
    /// Whether the embedded store's file is held by another process (a running instance).
    pub fn in_use(&self) -> bool {
        matches!(self, StoreError::Embedded(redb::Error::DatabaseAlreadyOpen))
    }
}

/// The operations sessions need. Values are opaque bytes; every entry has an expiry (Unix
/// seconds) after which it is gone, whether or not it was removed yet.
pub trait Backend: Send + Sync {
    /// Sets `key` to `value` until `expires_at`.
    fn put(
        &self,
        key: &str,
        value: &[u8],
        expires_at: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The value of `key`, if it is there and has not expired.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Removes `key` and returns its value, in one step: of two callers taking the same
    /// key, one gets it (single-use states and codes).
    fn take(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Removes `key`; whether it was there.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Sets `key` to `value` unless it holds one already; returns the value it holds after.
    fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;

    /// Adds `by` to the counter at `key` and returns its new value, in one step. A counter
    /// that is not there starts at zero and ends at `expires_at` (a fixed window); adding
    /// to it never moves its end. A negative `by` on a counter that is not there creates
    /// none and returns 0.
    fn add(
        &self,
        key: &str,
        by: i64,
        expires_at: u64,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Raises the number at `key` to `value` if it is below (or absent), in one step;
    /// whether it did. Of several callers raising it to the same value, one succeeds: what
    /// makes a one-time code single-use across instances.
    fn advance(
        &self,
        key: &str,
        value: u64,
        expires_at: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every live entry whose key starts with `prefix`, with its value, at most `limit` of
    /// them: for small sets kept under one prefix (blocks).
    fn scan(
        &self,
        prefix: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;
}
