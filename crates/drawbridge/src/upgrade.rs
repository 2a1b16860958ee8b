//! Replacing a running Drawbridge without refusing a connection (a binary upgrade, or a
//! restart that must not drop traffic).
//!
//! On SIGUSR2, `serve` starts a successor: the binary at the path this process was started
//! from (a new binary installed there is the one that runs), with the same arguments,
//! handed this process's listening sockets as systemd hands sockets to a service
//! (`LISTEN_FDS`, descriptors from 3, in listener order, names in `LISTEN_FDNAMES`). The
//! successor serves from those very sockets, so none is ever closed and the kernel queues
//! new connections for whichever process accepts first. Once the successor says it is
//! ready (`READY=1` on a notify socket, systemd's notify protocol), this process
//! drains as on SIGTERM and exits.
//!
//! A successor that exits, or is not ready within [`READY_TIMEOUT`] (a configuration that
//! no longer loads, a binary that does not start), is stopped, and this process keeps
//! serving as before.

use std::path::Path;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use drawbridge_proxy::Proxy;

use crate::notify::Notify;

/// How long a successor has to load its configuration and say it is ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why no successor took over.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The listening sockets could not be had (the drain had started).
    #[error("no listening sockets to hand over: {0}")]
    Sockets(#[source] std::io::Error),
    /// The private directory or the notify socket in it could not be made.
    #[error("notify socket: {0}")]
    Notify(#[source] std::io::Error),
    /// Two sockets for one descriptor number (cannot happen: they are numbered in turn).
    #[error("descriptor numbering: {0}")]
    Numbering(#[source] command_fds::FdMappingCollision),
    /// The successor could not be started.
    #[error("starting `{exe}`: {source}")]
    Spawn {
        /// The binary.
        exe: String,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// The successor exited before it was ready.
    #[error("the new process exited before it was ready ({0})")]
    Exited(std::process::ExitStatus),
    /// The successor said nothing within the time it had.
    #[error("the new process was not ready within {0:?}; stopped it")]
    NotReady(Duration),
}

/// Starts a successor from `exe` with this process's arguments and sockets, and waits until
/// it is ready to serve. Its process id, then.
pub async fn start_successor(
    exe: &Path,
    proxy: &Proxy,
    notify: &Notify,
) -> Result<u32, UpgradeError> {
    let sockets = proxy.listening_sockets().map_err(UpgradeError::Sockets)?;
    if sockets.is_empty() {
        return Err(UpgradeError::Sockets(std::io::Error::other(
            "the drain has started",
        )));
    }
    // A directory only this user can enter, so no other local process can say `READY=1`.
    let dir = tempfile::Builder::new()
        .prefix("drawbridge-upgrade-")
        .tempdir()
        .map_err(UpgradeError::Notify)?;
    let path = dir.path().join("notify");
    let told = tokio::net::UnixDatagram::bind(&path).map_err(UpgradeError::Notify)?;

    let names: Vec<String> = sockets.iter().map(|(n, _)| n.clone()).collect();
    let mappings = sockets
        .into_iter()
        .zip(3..)
        .map(|((_, parent_fd), child_fd)| FdMapping {
            parent_fd,
            child_fd,
        })
        .collect();
    let mut command = tokio::process::Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env("NOTIFY_SOCKET", &path)
        .env_remove(crate::notify::SERVICE_VAR)
        .kill_on_drop(false);
    if let Some(service) = notify.service() {
        // The service manager hears the successor's later news directly.
        command.env(crate::notify::SERVICE_VAR, service);
    }
    command
        .fd_mappings(mappings)
        .map_err(UpgradeError::Numbering)?;
    let mut child = command.spawn().map_err(|source| UpgradeError::Spawn {
        exe: exe.display().to_string(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    tracing::info!(
        successor = pid,
        "upgrade: new process started; waiting until it is ready"
    );

    let ready = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = told.recv(&mut buf).await?;
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let outcome = tokio::select! {
        r = ready => r.map_err(UpgradeError::Notify),
        status = child.wait() => Err(match status {
            Ok(s) => UpgradeError::Exited(s),
            Err(e) => UpgradeError::Notify(e),
        }),
        _ = tokio::time::sleep(READY_TIMEOUT) => Err(UpgradeError::NotReady(READY_TIMEOUT)),
    };
    if let Err(e) = outcome {
        // Never two half-started servers: the successor goes, this process stays.
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(e);
    }
    Ok(pid)
}
