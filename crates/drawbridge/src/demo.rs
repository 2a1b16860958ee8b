//! `drawbridge demo`: Drawbridge in front of a built-in recording upstream, with a config
//! written to a temporary directory, and the curl commands to try.

use std::net::SocketAddr;
use std::process::ExitCode;

use drawbridge_proxy::Proxy;
use drawbridge_testkit::RecordingUpstream;

pub async fn run(listen: SocketAddr) -> ExitCode {
    let upstream = RecordingUpstream::start().await;
    let dir = std::env::temp_dir().join(format!("drawbridge-demo-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let config = format!(
        r#"# The demo's configuration, written by `drawbridge demo`.
[server]
access_log = "stdout"

[[listeners]]
name = "demo"
address = "{listen}"

[[upstreams]]
name = "sample"
endpoints = ["{upstream}"]

[[routes]]
name = "hello"
prefix = "/hello"
upstream = "sample"
public = true

[[routes]]
name = "api"
prefix = "/api"
strip_prefix = true
methods = ["GET", "POST"]
upstream = "sample"
public = true
"#,
        upstream = upstream.url()
    );
    let path = dir.join("drawbridge.toml");
    if let Err(e) = std::fs::write(&path, config) {
        eprintln!("error: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let proxy = match Proxy::start(&path).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = proxy.addr("demo").unwrap_or(listen);
    eprintln!(
        r#"
Drawbridge demo: listening on http://{addr}, in front of a sample upstream at {up}
(config: {cfg}). Access-log lines appear below. Try, in another terminal:

  # forwarded: the upstream echoes what it received (note X-Forwarded-For, X-Request-Id)
  curl -i http://{addr}/hello/world

  # prefix stripped: the upstream receives /v1/items?page=2
  curl -i 'http://{addr}/api/v1/items?page=2'

  # no route: 404, the upstream is never contacted
  curl -i http://{addr}/admin

  # ambiguous path: 400, refused before routing
  curl -i --path-as-is 'http://{addr}/hello/..%2fadmin'

  # spoofed forwarding and identity headers are removed before forwarding
  curl -i -H 'X-Forwarded-For: 6.6.6.6' -H 'X-Drawbridge-User: admin' http://{addr}/hello

Stop with Ctrl-C.
"#,
        up = upstream.url(),
        cfg = path.display()
    );
    let _ = tokio::signal::ctrl_c().await;
    proxy.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    ExitCode::SUCCESS
}
