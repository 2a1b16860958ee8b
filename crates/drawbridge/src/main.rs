//! `drawbridge`: the identity-aware access proxy. A thin CLI over the library crates.
// Denied, not forbidden: the global allocator (`memory`) calls into mimalloc.
#![deny(unsafe_code)]

mod admin;
mod apikey;
mod audit;
mod demo;
mod memory;
mod notify;
mod out;
mod policytest;
mod sessions;
mod upgrade;

/// mimalloc: the proxy allocates and frees small buffers on every request; glibc's malloc
/// spent a fifth of the instructions per request in the benchmark. Connections' long-lived
/// state comes from heaps of its own (see `memory`).
#[global_allocator]
static GLOBAL: memory::Allocator = memory::Allocator;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drawbridge_proxy::Proxy;

#[derive(Parser)]
#[command(name = "drawbridge", version, about = "Identity-aware access proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The configuration file, as `--config FILE` or plainly `FILE`.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct ConfigArg {
    /// The configuration file (TOML).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The configuration file, without `--config`.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

impl ConfigArg {
    fn path(self) -> PathBuf {
        // The group makes one of them required.
        self.config.or(self.file).unwrap_or_default()
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configuration until SIGTERM or SIGINT; SIGHUP or a file change reloads it;
    /// SIGUSR2 hands the listening sockets to a new process of the binary and drains.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a configuration exactly as `serve` would load it; exit 1 with diagnostics.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Run the policy test cases the configuration's `[policy] tests` files hold; exit 1 on
    /// any failure.
    Test {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the Cedar schema the configuration's policies are checked against.
    Schema {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Make API keys and the server secret they are hashed with.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// People's sessions: revoke one, or every session of a person.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// The audit trail: check that nothing was removed, moved or edited.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Ask a running instance's admin API (its address from `--config` or `--address`).
    Admin(admin::AdminArgs),
    /// Run a self-contained demo: Drawbridge in front of a built-in sample upstream.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the demo's HTTPS listener (people signing in) listens.
        #[arg(long, default_value = "127.0.0.1:8443")]
        tls_listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of an audit trail and the signatures of its seals; exit 1 at
    /// the first event removed, moved or edited, or a trail cut short.
    Verify {
        /// The trail's files (`audit.jsonl*`: rotated files are put in their order, the
        /// live one after them).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The instance's public keys (`/.drawbridge/jwks.json`), to check the seals'
        /// signatures.
        #[arg(long)]
        jwks: Option<PathBuf>,
        /// Accept a trail that does not end in a seal: a file still being written.
        #[arg(long)]
        live: bool,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// End one session (its handle, shown on /.drawbridge/whoami and in the log) or every
    /// session of a person; takes effect on every instance within `[sessions] cache_ttl`.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        /// The session's handle (64 hex digits).
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        session: Option<String>,
        /// The person, as AUTHENTICATOR/ID (`corp-sso/alice`): every session signed in
        /// until now.
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Make a new key: the entry for the keys file (its HMAC, never the key) on standard
    /// output, so `>> apikeys.toml` appends it; the key itself, shown once, on standard error
    /// or in a new file of its own (`--key-file`).
    New {
        /// What the key is for; also the principal's id unless `--principal` says otherwise.
        #[arg(long)]
        name: String,
        /// The server secret the authenticator hashes keys with (its `secret_file`).
        #[arg(long)]
        secret_file: PathBuf,
        /// The principal's id.
        #[arg(long)]
        principal: Option<String>,
        /// A group of the principal; repeat for several.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// When the key stops working (RFC 3339, e.g. 2027-01-31T00:00:00Z).
        #[arg(long)]
        expires: Option<String>,
        /// An attribute of the principal, NAME=VALUE; repeat for several.
        #[arg(long = "attribute")]
        attributes: Vec<String>,
        /// Write the key to this new file (readable by its owner only) instead of showing it.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Print a new random server secret, for an authenticator's `secret_file`.
    Secret,
}

fn main() -> ExitCode {
    memory::small_pages();
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config.path()),
        Command::Test { config } => policytest::run(&config.path()),
        Command::Schema { config } => schema(&config.path()),
        Command::Apikey {
            command: ApikeyCommand::Secret,
        } => apikey::secret(),
        Command::Apikey {
            command:
                ApikeyCommand::New {
                    name,
                    secret_file,
                    principal,
                    groups,
                    expires,
                    attributes,
                    key_file,
                },
        } => apikey::new(apikey::NewArgs {
            name: &name,
            secret_file: &secret_file,
            principal: principal.as_deref(),
            groups: &groups,
            expires: expires.as_deref(),
            attributes: &attributes,
            key_file: key_file.as_deref(),
        }),
        Command::Serve { config } => {
            // Before any thread starts: taking them clears the variables that name them.
            let inherited = drawbridge_proxy::Inherited::from_env();
            runtime().block_on(serve(config.path(), inherited))
        }
        Command::Sessions {
            command:
                SessionsCommand::Revoke {
                    config,
                    session,
                    user,
                },
        } => runtime().block_on(sessions::revoke(
            &config.path(),
            session.as_deref(),
            user.as_deref(),
        )),
        Command::Audit {
            command: AuditCommand::Verify { files, jwks, live },
        } => audit::verify(&files, jwks.as_ref(), live),
        Command::Admin(args) => runtime().block_on(admin::run(args)),
        Command::Demo { listen, tls_listen } => runtime().block_on(demo::run(listen, tls_listen)),
    }
}

/// The multi-threaded runtime, one worker per available CPU. (A single-threaded runtime on
/// one CPU was measured too: it polled the I/O driver more often and cost more system time.)
fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(memory::on_park)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRAWBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// `n` things, in the singular or plural (`things`, or the singular with an `s`).
fn count(n: usize, thing: &str) -> String {
    match (n, thing) {
        (1, _) => format!("1 {thing}"),
        (_, "policy") => format!("{n} policies"),
        _ => format!("{n} {thing}s"),
    }
}

fn check(config: &std::path::Path) -> ExitCode {
    match drawbridge_proxy::compile(config, None) {
        Ok(s) => {
            for w in &s.warnings {
                eprintln!("{}", w.as_warning());
            }
            let policies = s
                .policies
                .as_ref()
                .map_or(String::new(), |p| match p.counts {
                    (n, 0) => format!(", {}", count(n, "policy")),
                    (n, shadow) => format!(", {} + {shadow} in shadow", count(n, "policy")),
                });
            crate::out::say!(
                "ok: {} is valid ({}, {}, {}, {}{policies}; version {})",
                config.display(),
                count(s.listeners.len(), "listener"),
                count(s.upstreams.len(), "upstream"),
                count(s.routes.len(), "route"),
                count(s.authenticators.len(), "authenticator"),
                s.version
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn schema(config: &std::path::Path) -> ExitCode {
    match drawbridge_config::load(config) {
        Ok(c) => {
            crate::out::text(&drawbridge_policy::schema::text(&c));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: PathBuf, inherited: drawbridge_proxy::Inherited) -> ExitCode {
    // The path this binary was started from, for a successor: a new binary installed there
    // is the one an upgrade runs.
    let exe = std::env::current_exe();
    // Every connection is a descriptor: take all the hard limit allows (the soft limit is
    // often 1,024). At the limit, idle connections make room for new ones.
    let descriptors = rlimit::increase_nofile_limit(u64::MAX);
    let mut signals = Signals::register();
    let proxy = match Proxy::start_with(&config, inherited).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}", start_error(&e));
            return ExitCode::FAILURE;
        }
    };
    match descriptors {
        Ok(n) => tracing::info!(descriptors = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    // Ready: to systemd (`Type=notify`), or to the process this one replaces.
    let notify = notify::Notify::from_env();
    notify.ready();
    tokio::spawn(drawbridge_proxy::reload::run(
        proxy.clone(),
        signals.hangups.take(),
    ));
    let mut upgrades = signals.upgrades();
    let stop = signals.stopped();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(()) = upgrades.recv() => {
                let Ok(exe) = &exe else {
                    tracing::error!("upgrade refused: the path of this binary is unknown");
                    continue;
                };
                match upgrade::start_successor(exe, &proxy, &notify).await {
                    Ok(pid) => {
                        tracing::info!(successor = pid, "upgrade: the new process serves; this one drains");
                        // Under systemd, the successor is the service's main process now.
                        notify.successor(pid);
                        break;
                    }
                    Err(e) => tracing::error!(error = %e, "upgrade failed; still serving"),
                }
            }
        }
    }
    notify.stopping();
    tracing::info!("stopping: no new connections; draining in-flight requests");
    proxy.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// What a failed start says: configuration errors as `check` reports them, anything else
/// as one `error:` line, with a way out where there is one.
fn start_error(e: &drawbridge_proxy::StartError) -> String {
    match e {
        drawbridge_proxy::StartError::Config(_) => e.to_string(),
        drawbridge_proxy::StartError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            format!(
                "error: {e}\n  help: another process listens there; stop it, or give the listener another `address`"
            )
        }
        drawbridge_proxy::StartError::Io { .. } => format!("error: {e}"),
    }
}

/// The signals a server answers, registered before it listens: one that arrives while it
/// starts is answered once it runs. Unregistered, a signal takes its default action, and for
/// each of these that ends the process at once: SIGTERM and SIGINT without draining,
/// SIGHUP (a reload) and SIGUSR2 (an upgrade) where nothing should end at all.
pub(crate) struct Signals {
    /// SIGHUP, for the reloader.
    pub(crate) hangups: Option<drawbridge_proxy::reload::Hangups>,
    #[cfg(unix)]
    stop: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    #[cfg(unix)]
    upgrade: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Registers them all now.
    pub(crate) fn register() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let stop = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM and SIGINT; Ctrl-C stops");
                    None
                }
            };
            let upgrade = signal(SignalKind::user_defined2())
                .inspect_err(
                    |e| tracing::warn!(error = %e, "cannot listen for SIGUSR2; upgrades are off"),
                )
                .ok();
            Signals {
                hangups: drawbridge_proxy::reload::hangups(),
                stop,
                upgrade,
            }
        }
        #[cfg(not(unix))]
        Signals {
            hangups: drawbridge_proxy::reload::hangups(),
        }
    }

    /// One message per SIGUSR2, dropped while one waits (one upgrade at a time).
    fn upgrades(&mut self) -> tokio::sync::mpsc::Receiver<()> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        #[cfg(unix)]
        if let Some(mut usr2) = self.upgrade.take() {
            tokio::spawn(async move {
                while usr2.recv().await.is_some() {
                    let _ = tx.try_send(());
                }
            });
        }
        #[cfg(not(unix))]
        drop(tx);
        rx
    }

    /// Resolves on SIGTERM or SIGINT (Ctrl-C where those cannot be listened for).
    pub(crate) async fn stopped(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.stop {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
