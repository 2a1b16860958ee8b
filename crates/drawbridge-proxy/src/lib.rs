//! Drawbridge's data plane: listeners, TLS, the HTTP pipeline, upstream pools, the rescue
//! and live reload.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The phases, in the order a request meets them.
pub mod accept;
pub mod admission;
pub mod authenticate;
pub mod authorize;
pub mod forward;
pub mod mutate;
pub mod parse;
pub mod record;
pub mod sanitize;
pub mod session;
pub mod verify;

// What they run over.
pub mod admin;
pub mod alerts;
pub mod body;
pub mod context;
pub mod deadline;
pub mod detect;
pub mod inherit;
pub mod io;
pub mod mfa;
pub mod page;
pub mod pipeline;
pub mod placement;
pub mod reload;
pub mod rescue;
pub mod roster;
pub mod route;
pub mod signin;
pub mod snapshot;
pub mod timer;
pub mod tls;
pub mod trace;
pub mod transport;
pub mod tunnel;
pub mod upstream;
pub mod websocket;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use drawbridge_config::{AccessLogTarget, ConfigError};
use drawbridge_identity::Minter;
use drawbridge_telemetry::{AccessLog, AuditLog, JsonLog, Sink};
use tokio::sync::{Mutex, mpsc, watch};

use crate::context::{RequestIds, Shared};
pub use crate::inherit::Inherited;
use crate::snapshot::Snapshot;

/// Why Drawbridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A listener could not be bound, or the access log opened.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Why a reload was refused; the old configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The new configuration moves, adds or removes listeners.
    #[error("listeners changed; adding, removing or moving listeners needs a restart")]
    ListenersChanged,
    /// The reload itself failed to run.
    #[error("reload failed: {0}")]
    Failed(String),
}

/// Reads and compiles `path` exactly as `serve` does, without binding anything.
pub fn compile(path: &Path, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
    let config = drawbridge_config::load(path)?;
    Ok(Snapshot::compile(config, previous)?)
}

/// Starts what the snapshot needs running: fetching what its authenticators need from the
/// network (issuers' keys), so the first requests do not wait for it, and its upstreams'
/// active health checks.
fn prefetch(snapshot: &Snapshot) {
    for a in &snapshot.authenticators {
        let a = Arc::clone(a);
        tokio::spawn(async move { a.prefetch().await });
    }
    // Upstreams' active health checks run from the start (once per pool).
    for u in &snapshot.upstreams {
        u.start_checks();
    }
}

/// Logs what `check` would warn about (routes no policy decides for, unused policies), so a
/// server started or reloaded without `check` says it too.
fn warn_about(snapshot: &Snapshot) {
    for w in &snapshot.warnings {
        tracing::warn!("{}", w.as_warning());
    }
}

/// Starts the writer of a JSON-lines log (`what` names it in errors).
fn open_log<T: drawbridge_telemetry::Line + Send + 'static>(
    target: &AccessLogTarget,
    what: &str,
) -> Result<JsonLog<T>, StartError> {
    match target {
        AccessLogTarget::Stdout => JsonLog::start(Sink::Stdout),
        AccessLogTarget::Stderr => JsonLog::start(Sink::Stderr),
        AccessLogTarget::Off => Ok(JsonLog::off()),
        AccessLogTarget::File(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .and_then(|f| JsonLog::start(Sink::Writer(Box::new(f)))),
    }
    .map_err(|source| StartError::Io {
        what: format!("opening the {what}"),
        source,
    })
}

/// The audit trail: hash-chained wherever it goes, its seals signed with the instance's
/// key as `key` holds it (a reload may change it), rotated as `[audit]` says.
fn open_audit(snapshot: &Snapshot, key: Arc<ArcSwap<Minter>>) -> Result<AuditLog, StartError> {
    use drawbridge_telemetry::chain::{Chained, Rotation};
    let signer: drawbridge_telemetry::chain::Signer =
        Box::new(move |claims| key.load().sign_claims(claims).ok());
    let chained = match &snapshot.server.audit_log {
        AccessLogTarget::Off => return Ok(JsonLog::off()),
        AccessLogTarget::Stdout => Ok(Chained::stream(Box::new(std::io::stdout()), signer)),
        AccessLogTarget::Stderr => Ok(Chained::stream(Box::new(std::io::stderr()), signer)),
        AccessLogTarget::File(p) => Chained::file(
            p,
            Rotation {
                bytes: snapshot.audit.rotate_bytes,
                every: snapshot.audit.rotate_every,
            },
            signer,
        ),
    };
    let chained = chained.and_then(|c| match &snapshot.audit.syslog {
        None => Ok(c),
        Some(drawbridge_config::SyslogTarget::Udp(a)) => {
            drawbridge_telemetry::chain::Syslog::udp(*a).map(|s| c.with_syslog(s))
        }
        Some(drawbridge_config::SyslogTarget::Unix(p)) => {
            drawbridge_telemetry::chain::Syslog::unix(p).map(|s| c.with_syslog(s))
        }
    });
    chained
        .and_then(|c| JsonLog::start_lines(Box::new(c), recent_decisions(snapshot), true))
        .map_err(|source| StartError::Io {
            what: "opening the audit log".into(),
            source,
        })
}

/// How many audit lines to keep in memory: the admin API's recent decisions, or none when
/// there is no admin API to show them (a reload cannot add one). A thousand lines kept are
/// a ring of several hundred kilobytes that every decision is copied through.
fn recent_decisions(snapshot: &Snapshot) -> usize {
    if snapshot.admin.is_some() {
        admin::RECENT_DECISIONS
    } else {
        0
    }
}

/// Binds `address`, or takes the socket handed over for it; `what` says what was being
/// bound if that fails.
fn bind(
    address: SocketAddr,
    what: String,
    inherited: &mut Inherited,
) -> Result<(SocketAddr, tokio::net::TcpListener), StartError> {
    let listener = match inherited.take(address) {
        Some(socket) => {
            tracing::info!(%address, "listening socket handed over; not binding");
            socket
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(socket))
        }
        None => accept::bind(address),
    }
    .map_err(|source| StartError::Io { what, source })?;
    let local = listener.local_addr().map_err(|source| StartError::Io {
        what: "reading bound address".into(),
        source,
    })?;
    Ok((local, listener))
}

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    addrs: Vec<(String, SocketAddr)>,
    admin_addr: Option<SocketAddr>,
    admin_stop: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    /// Every connection holds a clone of the sender until it ends; shutdown drops this one
    /// and waits for the receiver to see them all gone.
    drain: std::sync::Mutex<Option<mpsc::Sender<()>>>,
    drained: Mutex<mpsc::Receiver<()>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// A second descriptor of each listening socket (listeners, then the admin listener),
    /// by name, to hand to a successor; given up when the drain starts, so that the sockets
    /// close with the accept loops.
    sockets: std::sync::Mutex<Vec<(String, std::os::fd::OwnedFd)>>,
}

impl Proxy {
    /// Loads `config_path`, binds every listener and starts serving.
    pub async fn start(config_path: &Path) -> Result<Arc<Proxy>, StartError> {
        Self::start_with(config_path, Inherited::none()).await
    }

    /// As [`Proxy::start`], taking the sockets in `inherited` for the listeners at their
    /// addresses instead of binding them.
    pub async fn start_with(
        config_path: &Path,
        mut inherited: Inherited,
    ) -> Result<Arc<Proxy>, StartError> {
        let mut snapshot = compile(config_path, None)?;
        session::attach(&mut snapshot, None).map_err(|e| StartError::Io {
            what: "starting sessions".into(),
            source: std::io::Error::other(e),
        })?;
        snapshot.tracing =
            trace::build(snapshot.tracing_config.as_ref(), None).map_err(|e| StartError::Io {
                what: "starting the trace exporter".into(),
                source: std::io::Error::other(e),
            })?;
        let log: AccessLog = open_log(&snapshot.server.access_log, "access log")?;
        let audit_key = Arc::new(ArcSwap::new(snapshot.minter.clone()));
        let audit = open_audit(&snapshot, audit_key.clone())?;

        let mut bound = Vec::new();
        for l in &snapshot.listeners {
            let what = format!("binding listener `{}` to {}", l.name, l.address);
            let (local, listener) = bind(l.address, what, &mut inherited)?;
            bound.push((l.name.to_string(), local, listener));
        }
        let admin = match &snapshot.admin {
            Some(a) => Some(bind(
                a.address,
                format!("binding the admin listener to {}", a.address),
                &mut inherited,
            )?),
            None => None,
        };
        inherited.close_unused();
        let second = |name: &str, l: &tokio::net::TcpListener| {
            use std::os::fd::AsFd;
            l.as_fd()
                .try_clone_to_owned()
                .map(|fd| (name.to_string(), fd))
                .map_err(|source| StartError::Io {
                    what: "keeping the listening sockets for an upgrade".into(),
                    source,
                })
        };
        let mut sockets = Vec::new();
        for (name, _, l) in &bound {
            sockets.push(second(name, l)?);
        }
        if let Some((_, l)) = &admin {
            sockets.push(second("admin", l)?);
        }
        tracing::info!(version = %snapshot.version, listeners = bound.len(), upstreams = snapshot.upstreams.len(), "configuration loaded");
        warn_about(&snapshot);
        prefetch(&snapshot);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            log,
            audit,
            shadow_disagreements: Default::default(),
            ids: RequestIds::new(),
            reloads: watch::channel(0).0,
            draining: Default::default(),
            config_path: config_path.to_path_buf(),
            reload_history: Default::default(),
            audit_key,
            alerter: Default::default(),
            roster: Default::default(),
        });
        detect::start(&shared);
        tokio::spawn(roster::sweep_every(
            Arc::downgrade(&shared.roster),
            roster::SWEEP_EVERY,
        ));
        tokio::spawn(park_upstreams_every(
            Arc::downgrade(&shared),
            roster::SWEEP_EVERY,
        ));
        let (stop, stop_rx) = watch::channel(false);
        let (drain, drained) = mpsc::channel(1);
        let mut tasks = Vec::new();
        let mut addrs = Vec::new();
        for (i, (name, local, listener)) in bound.into_iter().enumerate() {
            tracing::info!(listener = %name, address = %local, "listening");
            addrs.push((name, local));
            tasks.push(tokio::spawn(accept::accept_loop(
                shared.clone(),
                i,
                listener,
                drain.clone(),
                stop_rx.clone(),
            )));
        }
        // The admin listener outlives the drain (it answers 503 throughout) and stops last.
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let admin_addr = admin.map(|(local, listener)| {
            tracing::info!(address = %local, "admin listening");
            tokio::spawn(admin::serve(shared.clone(), listener, admin_stop_rx));
            local
        });
        Ok(Arc::new(Proxy {
            shared,
            addrs,
            admin_addr,
            admin_stop,
            stop,
            drain: std::sync::Mutex::new(Some(drain)),
            drained: Mutex::new(drained),
            tasks: Mutex::new(tasks),
            sockets: std::sync::Mutex::new(sockets),
        }))
    }

    /// A new descriptor of each listening socket, by listener name (`admin` for the admin
    /// listener), for a successor process to serve from. Empty once the drain has started.
    pub fn listening_sockets(&self) -> std::io::Result<Vec<(String, std::os::fd::OwnedFd)>> {
        let kept = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .map(|(name, fd)| Ok((name.clone(), fd.try_clone()?)))
            .collect()
    }

    /// The bound address of each listener, by name, in config order.
    pub fn addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    /// The admin listener's bound address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// What keeps the process from being ready for traffic; `None` when ready.
    pub fn not_ready(&self) -> Option<Vec<String>> {
        admin::not_ready(&self.shared)
    }

    /// The bound address of the listener `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// The version (hash) of the configuration in force.
    pub fn version(&self) -> String {
        self.shared.snapshot.load().version.clone()
    }

    /// The files besides the config file that the configuration in force reads.
    pub fn files(&self) -> Vec<PathBuf> {
        self.shared.snapshot.load().files.clone()
    }

    /// Whether the configuration in force asks for its files to be watched.
    pub fn watches(&self) -> bool {
        self.shared.snapshot.load().server.watch
    }

    /// The config file this proxy was started with.
    pub fn config_path(&self) -> &Path {
        &self.shared.config_path
    }

    /// Decisions the shadow policies would have made otherwise, since start.
    pub fn shadow_disagreements(&self) -> u64 {
        self.shared
            .shadow_disagreements
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Audit events dropped because the audit queue was full.
    pub fn audit_dropped(&self) -> u64 {
        self.shared.audit.dropped()
    }

    /// Access-log events dropped because the queue was full.
    pub fn access_log_dropped(&self) -> u64 {
        self.shared.log.dropped()
    }

    /// Recompiles the config file; swaps it in only if it is valid. Requests in flight keep
    /// the snapshot they started with.
    pub fn reload(&self) -> Result<String, ReloadError> {
        reload::apply(&self.shared)
    }

    /// Stops accepting, then waits up to the configured `shutdown_timeout` for in-flight
    /// requests to finish.
    pub async fn shutdown(&self) {
        // Not ready from the first moment of the drain, so orchestrators send no more.
        self.shared
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // The sockets close with the accept loops (or stay open in a successor).
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let _ = self.stop.send(true);
        // Parked connections wait on their sockets alone: woken, they see the stop.
        self.shared.roster.drain();
        for t in self.tasks.lock().await.drain(..) {
            let _ = t.await;
        }
        let timeout = self.shared.snapshot.load().server.shutdown_timeout;
        // The accept loops have stopped and dropped their senders; connections, told by
        // `stop`, finish what is in flight and drop theirs.
        let own = self
            .drain
            .lock()
            .map(|mut d| d.take())
            .unwrap_or_else(|p| p.into_inner().take());
        if own.is_some() {
            drop(own);
            let mut drained = self.drained.lock().await;
            if tokio::time::timeout(timeout, drained.recv()).await.is_err() {
                tracing::warn!(
                    ?timeout,
                    "shutdown timeout reached with requests still in flight"
                );
            }
        }
        // The last requests' records reach their sinks before the process ends.
        let (log, audit) = (self.shared.log.clone(), self.shared.audit.clone());
        let tracing = self.shared.snapshot.load().tracing.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(t) = tracing {
                t.flush();
            }
            audit.seal(std::time::Duration::from_secs(2));
            log.flush(std::time::Duration::from_secs(2));
        })
        .await;
        let _ = self.admin_stop.send(true);
    }
}

/// Parks the upstreams' pooled connections idle for a sweep's time, every sweep, until the
/// server is gone: a burst that opened many connections leaves their sockets, not their
/// buffers.
async fn park_upstreams_every(shared: std::sync::Weak<Shared>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for u in &shared.snapshot.load().upstreams {
            u.park_idle(every);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot of one public route, with `extra` (TOML) before it.
    fn snapshot(extra: &str) -> Snapshot {
        let src = format!(
            "{extra}\n[[listeners]]\nname = \"l\"\naddress = \"127.0.0.1:1\"\n\n\
             [[upstreams]]\nname = \"u\"\nendpoints = [\"http://127.0.0.1:9000\"]\n\n\
             [[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"u\"\npublic = true\n"
        );
        let cfg = drawbridge_config::parse(Path::new("/etc/drawbridge/t.toml"), &src)
            .expect("valid config");
        Snapshot::compile(cfg, None).expect("compiles")
    }

    /// Audit lines are kept in memory for the admin API to show, and only when there is one.
    #[test]
    fn recent_decisions_are_kept_only_for_an_admin_api() {
        assert_eq!(recent_decisions(&snapshot("")), 0);
        let with_admin = snapshot("[admin]\naddress = \"127.0.0.1:9901\"\n");
        assert_eq!(recent_decisions(&with_admin), admin::RECENT_DECISIONS);
    }
}
