//! Live reload: the config file's directory is watched (Kubernetes swaps ConfigMaps through
//! symlinks, so the file itself is not enough) and SIGHUP asks for a reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::Proxy;

/// Reloads `proxy` on SIGHUP and, when `watch` is set, on changes in the config's directory.
/// Runs until the process ends.
pub async fn run(proxy: Arc<Proxy>, watch: bool) {
    let (tx, mut rx) = mpsc::channel::<&'static str>(16);
    let mut watched = if watch {
        Watched::start(&proxy, tx.clone())
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
    if watched.is_some() {
        // A change made between loading the config and installing the watcher would go
        // unnoticed until the next one: look once now.
        let _ = tx.try_send("watch started");
    }
    drop(tx);
    while let Some(cause) = rx.recv().await {
        // Editors and ConfigMap swaps write in several steps: let them settle.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
        if let Some(w) = watched.as_mut() {
            w.follow_target(&proxy);
        }
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

/// The watcher, on the config file's directory and on the directory its symlinks resolve to
/// (so an edit in place behind a symlink is seen as well as a swap of the link).
struct Watched {
    watcher: notify::RecommendedWatcher,
    target_dir: Option<PathBuf>,
    /// Directories of the other files the configuration reads (JWK Sets, API keys).
    file_dirs: std::collections::HashSet<PathBuf>,
}

impl Watched {
    fn start(proxy: &Proxy, tx: mpsc::Sender<&'static str>) -> Option<Watched> {
        let dir = parent(proxy.config_path());
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res
                && !matches!(event.kind, notify::EventKind::Access(_))
            {
                let _ = tx.try_send("file change");
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the file watcher; reload with SIGHUP");
                return None;
            }
        };
        if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP");
            return None;
        }
        let mut w = Watched {
            watcher,
            target_dir: None,
            file_dirs: Default::default(),
        };
        w.follow_target(proxy);
        Some(w)
    }

    /// Watches the directory the config file currently resolves to, if it differs, and the
    /// directories of the files it names.
    fn follow_target(&mut self, proxy: &Proxy) {
        let config_dir = parent(proxy.config_path());
        for dir in proxy.files().iter().map(|f| parent(f)) {
            if dir != config_dir && !self.file_dirs.contains(&dir) {
                match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.file_dirs.insert(dir);
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a directory the config reads from; reload with SIGHUP")
                    }
                }
            }
        }
        let path = proxy.config_path();
        let target = std::fs::canonicalize(path).ok().map(|p| parent(&p));
        let own = std::fs::canonicalize(parent(path)).ok();
        let wanted = target.filter(|t| Some(t) != own.as_ref());
        if wanted == self.target_dir {
            return;
        }
        if let Some(old) = self.target_dir.take() {
            let _ = self.watcher.unwatch(&old);
        }
        if let Some(dir) = wanted {
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => self.target_dir = Some(dir),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config file's target directory")
                }
            }
        }
    }
}

fn parent(path: &Path) -> PathBuf {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
