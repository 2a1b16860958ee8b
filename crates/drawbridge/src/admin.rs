//! `drawbridge admin`: a running instance's admin API from the command line. Plain HTTP to
//! the admin address (loopback, or a guarded address with `--token`); for an admin
//! listener behind TLS, call the same paths with any HTTPS client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct AdminArgs {
    /// The configuration whose `[admin] address` to call.
    #[arg(long, short, conflicts_with = "address")]
    config: Option<PathBuf>,
    /// The admin address, when not read from a configuration.
    #[arg(long)]
    address: Option<SocketAddr>,
    /// A bearer token (a JWT or an API key) for an admin listener guarded by
    /// authenticators; also read from DRAWBRIDGE_ADMIN_TOKEN.
    #[arg(long, env = "DRAWBRIDGE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(clap::Subcommand)]
enum AdminCommand {
    /// The configuration in force: version, files, listeners, routes, warnings.
    Status,
    /// The latest reloads and their results.
    Reloads,
    /// Reload the configuration now; the old one keeps serving if the new one is refused.
    Reload,
    /// Recent decisions (newest first), filtered.
    Decisions {
        /// Only this principal's (its id).
        #[arg(long)]
        principal: Option<String>,
        /// Only this route's.
        #[arg(long)]
        route: Option<String>,
        /// Only `allow` or `deny`.
        #[arg(long)]
        decision: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// The metrics, as Prometheus reads them.
    Metrics,
    /// People's sessions (of one person with --user), newest data the store holds.
    Sessions {
        /// Only this person's, as AUTHENTICATOR/ID.
        #[arg(long)]
        user: Option<String>,
    },
    /// Blocks in force (client addresses and principals), with their end and detector.
    Blocks,
    /// Lift a block before its end.
    Unblock {
        /// The client address.
        #[arg(
            long,
            conflicts_with = "principal",
            required_unless_present = "principal"
        )]
        client: Option<String>,
        /// The principal, as AUTHENTICATOR/ID.
        #[arg(long)]
        principal: Option<String>,
    },
}

pub async fn run(args: AdminArgs) -> ExitCode {
    let address = match (&args.address, &args.config) {
        (Some(a), _) => *a,
        (None, Some(path)) => match drawbridge_config::load(path) {
            Ok(cfg) => match cfg.admin {
                Some(a) => loopback_for(a.address),
                None => {
                    eprintln!("error: `{}` has no `[admin]` listener", path.display());
                    return ExitCode::FAILURE;
                }
            },
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => {
            eprintln!("error: say which instance: --config FILE or --address HOST:PORT");
            return ExitCode::FAILURE;
        }
    };
    let (method, target) = match &args.command {
        AdminCommand::Status => ("GET", "/api/config".to_string()),
        AdminCommand::Reloads => ("GET", "/api/reloads".to_string()),
        AdminCommand::Reload => ("POST", "/api/reload".to_string()),
        AdminCommand::Metrics => ("GET", "/metrics".to_string()),
        AdminCommand::Blocks => ("GET", "/api/blocks".to_string()),
        AdminCommand::Sessions { user } => {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(u) = user {
                q.append_pair("user", u);
            }
            ("GET", format!("/api/sessions?{}", q.finish()))
        }
        AdminCommand::Unblock { client, principal } => {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(c) = client {
                q.append_pair("client", c);
            }
            if let Some(p) = principal {
                q.append_pair("principal", p);
            }
            ("DELETE", format!("/api/blocks?{}", q.finish()))
        }
        AdminCommand::Decisions {
            principal,
            route,
            decision,
            limit,
        } => {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in [
                ("principal", principal),
                ("route", route),
                ("decision", decision),
            ] {
                if let Some(v) = v {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("limit", &limit.to_string());
            ("GET", format!("/api/decisions?{}", q.finish()))
        }
    };
    match call(address, method, &target, args.token.as_deref()).await {
        Ok((status, body)) if (200..300).contains(&status) => {
            print!("{}", pretty(&body));
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprint!("error: {status}: {}", pretty(&body));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: asking the instance at {address}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An address to call for one a listener binds: the unspecified address is this host.
fn loopback_for(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        let ip = if a.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, a.port())
    } else {
        a
    }
}

/// JSON indented for reading; anything else as it came, ending in a newline.
fn pretty(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()),
        Err(_) if body.ends_with('\n') || body.is_empty() => body.to_string(),
        Err(_) => format!("{body}\n"),
    }
}

/// One request to the admin listener at `addr`: its status and body.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    target: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<
            _,
            http_body_util::Empty<bytes::Bytes>,
        >(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(target)
            .header(http::header::HOST, addr.to_string());
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
        .await
        .map_err(|_| "no answer within 30s".to_string())?
}
