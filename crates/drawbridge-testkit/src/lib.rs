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

/// A port on 127.0.0.1 that nothing listens on now, for a server whose address must be
/// known before it starts (an identity provider's redirect URIs name it). Taken below the
/// kernel's ephemeral range (32768 and up), where no connection's own port and no
/// `127.0.0.1:0` listener can land on it meanwhile; distinct for each call in a process.
pub fn reserved_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test binary starts at its own place in the range (its process id).
    let start = (std::process::id() % 600) * 20;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // 20000 to 31999: below the ephemeral range, whatever the start.
        let port = u16::try_from(20_000 + (start + n) % 12_000).unwrap_or(20_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Writes `contents` to `name` in `dir` and returns the path.
pub fn write_file(dir: &std::path::Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}
