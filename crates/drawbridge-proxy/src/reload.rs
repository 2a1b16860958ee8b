//! Live reload: the files the configuration is made of are watched, and SIGHUP asks for a
//! reload. Directories are what a watcher can follow (Kubernetes swaps ConfigMaps through
//! symlinks, editors write a new file and rename it over the old), so the config's
//! directory and those of the files it names are watched, and only events on those files
//! (or on a ConfigMap's `..data` swap) count: an access log written beside the config
//! recompiles nothing.
//!
//! Compiling runs off the runtime's threads (file reads, Cedar, TLS and root stores), bursts
//! of events are debounced, and a refused configuration is reported once per distinct
//! refusal, not at every event.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::context::{Reloaded, Shared};
use crate::{Proxy, ReloadError};

/// Reloads kept for the admin API.
const HISTORY: usize = 20;

/// Recompiles the config file and swaps it in only if it is valid; requests in flight keep
/// the snapshot they started with. Counted, and kept in the reload history, either way.
pub fn apply(shared: &Shared) -> Result<String, ReloadError> {
    let outcome = compile_next(shared);
    shared.snapshot.load().metrics.reload(outcome.is_ok());
    let mut history = shared
        .reload_history
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if history.len() == HISTORY {
        history.pop_front();
    }
    history.push_back(Reloaded {
        time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ok: outcome.is_ok(),
        version: shared.snapshot.load().version.clone(),
        error: outcome.as_ref().err().map(ToString::to_string),
    });
    outcome
}

fn compile_next(shared: &Shared) -> Result<String, ReloadError> {
    let current = shared.snapshot.load_full();
    let mut next = crate::compile(&shared.config_path, Some(&current))?;
    if !current.same_listeners(&next) {
        return Err(ReloadError::ListenersChanged);
    }
    crate::session::attach(&mut next, Some(&current)).map_err(ReloadError::Failed)?;
    next.tracing = crate::trace::build(next.tracing_config.as_ref(), current.tracing.as_ref())
        .map_err(ReloadError::Failed)?;
    let version = next.version.clone();
    crate::warn_about(&next);
    crate::prefetch(&next);
    shared.audit_key.store(next.minter.clone());
    shared.snapshot.store(Arc::new(next));
    // Open tunnels check their credentials against what is now in force.
    shared.reloads.send_modify(|g| *g += 1);
    Ok(version)
}

/// How long events must stop before a reload: editors and ConfigMap swaps write in steps.
const SETTLE: Duration = Duration::from_millis(200);

/// SIGHUP as a stream, registered by the process before it listens: a hangup while it
/// starts is a reload once [`run`] runs, not the signal's default action (which ends the
/// process).
#[cfg(unix)]
pub type Hangups = tokio::signal::unix::Signal;
/// No hangups where there are no Unix signals.
#[cfg(not(unix))]
pub type Hangups = std::convert::Infallible;

/// SIGHUP registered now; `None` (and a warning) when it cannot be.
pub fn hangups() -> Option<Hangups> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP"))
            .ok()
    }
    #[cfg(not(unix))]
    None
}

/// Reloads `proxy` on each of `hangups` and, when its configuration says `watch`, when a
/// file it is made of changes. Runs until the process ends.
pub async fn run(proxy: Arc<Proxy>, hangups: Option<Hangups>) {
    let (tx, mut rx) = mpsc::channel::<&'static str>(16);
    let mut watched = if proxy.watches() {
        Watched::start(&proxy, tx.clone())
    } else {
        None
    };
    #[cfg(unix)]
    if let Some(mut hup) = hangups {
        let tx = tx.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = tx.send("SIGHUP").await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = hangups;
    if watched.is_some() {
        // A change made between loading the config and installing the watcher would go
        // unnoticed until the next one: look once now.
        let _ = tx.try_send("watch started");
    }
    // Likewise when a reload moves the watch to a new directory (a ConfigMap's swapped
    // data): what changed there before it was watched is looked at once.
    let recheck = tx.downgrade();
    drop(tx);
    let mut last_refusal: Option<String> = None;
    while let Some(mut cause) = rx.recv().await {
        // Debounce: wait until the events stop for a moment.
        while let Ok(Some(next)) = tokio::time::timeout(SETTLE, rx.recv()).await {
            if next == "SIGHUP" {
                cause = next;
            }
        }
        let before = proxy.version();
        let p = proxy.clone();
        let outcome = tokio::task::spawn_blocking(move || p.reload())
            .await
            .unwrap_or_else(|e| Err(ReloadError::Failed(e.to_string())));
        match outcome {
            Ok(version) => {
                last_refusal = None;
                if version == before {
                    tracing::debug!(cause, "configuration unchanged");
                } else {
                    tracing::info!(cause, %version, "configuration reloaded");
                }
            }
            Err(e) => {
                let text = e.to_string();
                // The same refusal again (the same broken file touched, a SIGHUP): said once.
                if last_refusal.as_deref() == Some(text.as_str()) && cause != "SIGHUP" {
                    tracing::debug!(cause, "reload refused again for the same reason");
                } else {
                    tracing::error!(cause, error = %text, "reload refused; the previous configuration keeps serving");
                }
                last_refusal = Some(text);
            }
        }
        if let Some(w) = watched.as_mut()
            && w.follow(&proxy)
            && let Some(tx) = recheck.upgrade()
        {
            let _ = tx.try_send("watch moved");
        }
    }
}

/// The watcher and what it watches.
struct Watched {
    watcher: notify::RecommendedWatcher,
    /// Directories watched.
    dirs: HashSet<PathBuf>,
    /// The files that count, by directory and name; shared with the watcher's callback.
    files: Arc<Mutex<HashSet<(PathBuf, OsString)>>>,
}

impl Watched {
    fn start(proxy: &Proxy, tx: mpsc::Sender<&'static str>) -> Option<Watched> {
        let files: Arc<Mutex<HashSet<(PathBuf, OsString)>>> = Arc::default();
        let wanted = files.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let files = wanted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if event.paths.iter().any(|p| counts(&files, p)) {
                let _ = tx.try_send("file change");
            }
        });
        let watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the file watcher; reload with SIGHUP");
                return None;
            }
        };
        let mut w = Watched {
            watcher,
            dirs: HashSet::new(),
            files,
        };
        w.follow(proxy);
        if w.dirs.is_empty() {
            tracing::warn!("cannot watch the config directory; reload with SIGHUP");
            return None;
        }
        Some(w)
    }

    /// Watches the files the configuration in force is made of: the config file (and where
    /// its symlink leads) and every file it names.
    /// Watches the directories of the files the configuration in force is made of; whether
    /// a directory was added.
    fn follow(&mut self, proxy: &Proxy) -> bool {
        let mut added = false;
        let mut paths = vec![proxy.config_path().to_path_buf()];
        paths.extend(proxy.files());
        let mut files = HashSet::new();
        for path in &paths {
            for p in [Some(path.clone()), std::fs::canonicalize(path).ok()]
                .into_iter()
                .flatten()
            {
                if let Some(name) = p.file_name() {
                    files.insert((parent(&p), name.to_os_string()));
                }
            }
        }
        for (dir, _) in &files {
            if !self.dirs.contains(dir) {
                match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.dirs.insert(dir.clone());
                        added = true;
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a directory the config reads from; reload with SIGHUP")
                    }
                }
            }
        }
        *self
            .files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = files;
        added
    }
}

/// Whether an event on `path` concerns one of `files`: the file itself, or a ConfigMap's
/// atomic swap (`..data` and its timestamped directories) in a watched directory.
fn counts(files: &HashSet<(PathBuf, OsString)>, path: &Path) -> bool {
    let Some(name) = path.file_name() else {
        return false;
    };
    let dir = parent(path);
    if name.as_encoded_bytes().starts_with(b"..") {
        return files.iter().any(|(d, _)| *d == dir);
    }
    files.contains(&(dir, name.to_os_string()))
}

fn parent(path: &Path) -> PathBuf {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
