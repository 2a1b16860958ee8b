//! Test parts for Drawbridge: a recording upstream that keeps every request it received and
//! echoes it back, certificates from a throwaway CA, signing keys and JWK Sets,
//! configurations built as values, and (feature `harness`) the integration tests' harness:
//! the real proxy or the real binary, the clients that talk to them, a cookie-keeping
//! browser and a real OpenID provider.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "harness")]
pub mod browser;
pub mod certs;
#[cfg(feature = "chromium")]
pub mod chromium;
pub mod config;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "harness")]
pub mod harness;
#[cfg(feature = "harness")]
pub mod idp;
pub mod jwks;
pub mod jwt;
pub mod metrics;
pub mod policies;
pub mod redis;
pub mod upstream;

pub use upstream::{Received, RecordingUpstream};

/// Writes `contents` to `name` in `dir` and returns the path.
pub fn write_file(dir: &std::path::Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}
