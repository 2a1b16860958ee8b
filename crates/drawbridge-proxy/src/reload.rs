//! Live reload: the config file's directory is watched (Kubernetes swaps ConfigMaps through
//! symlinks, so the file itself is not enough) and SIGHUP asks for a reload.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::Proxy;

/// Reloads `proxy` on SIGHUP and, when `watch` is set, on changes in the config's directory.
/// Runs until the process ends.
pub async fn run(proxy: Arc<Proxy>, watch: bool) {
    let (tx, mut rx) = mpsc::channel::<&'static str>(16);
    let _watcher = if watch {
        start_watcher(&proxy, tx.clone())
    } else {
        None
    };
    #[cfg(unix)]
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP");
                return;
            };
            while hup.recv().await.is_some() {
                let _ = tx.send("SIGHUP").await;
            }
        });
    }
    drop(tx);
    while let Some(cause) = rx.recv().await {
        // Editors and ConfigMap swaps write in several steps: let them settle.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
        let before = proxy.version();
        match proxy.reload() {
            Ok(version) if version == before => tracing::debug!(cause, "configuration unchanged"),
            Ok(version) => tracing::info!(cause, %version, "configuration reloaded"),
            Err(e) => {
                tracing::error!(cause, error = %e, "reload refused; the previous configuration keeps serving")
            }
        }
    }
}

fn start_watcher(
    proxy: &Proxy,
    tx: mpsc::Sender<&'static str>,
) -> Option<notify::RecommendedWatcher> {
    let path = proxy.config_path().to_path_buf();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| std::path::PathBuf::from("."), |d| d.to_path_buf());
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if !matches!(event.kind, notify::EventKind::Access(_)) {
                let _ = tx.try_send("file change");
            }
        }
    });
    match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the file watcher; reload with SIGHUP");
            None
        }
    }
}
