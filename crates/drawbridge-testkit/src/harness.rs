//! The integration tests' harness: the real server started in the test's process from a
//! configuration, or the real `drawbridge` binary serving one, and real clients (hyper's,
//! or raw sockets) to talk to them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drawbridge_proxy::Proxy;

pub use crate::config::{Config, line_of, strings, table};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A proxy running in this process from a config written to a temporary directory.
pub struct Harness {
    /// The running proxy.
    pub proxy: Arc<Proxy>,
    /// Where its configuration and files are.
    pub dir: tempfile::TempDir,
    /// Its first listener's address.
    pub addr: SocketAddr,
}

impl Harness {
    /// Starts the proxy on `config` (TOML text, or a [`Config`]).
    pub async fn start(config: &impl std::fmt::Display) -> Harness {
        Self::start_with(config, &[]).await
    }

    /// Starts with `files` (name, contents) written beside the config first.
    pub async fn start_with(config: &impl std::fmt::Display, files: &[(&str, &str)]) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, contents) in files {
            let p = dir.path().join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(&p, contents).expect("write file");
        }
        let path = dir.path().join("drawbridge.toml");
        std::fs::write(&path, config.to_string()).expect("write config");
        let proxy = Proxy::start(&path)
            .await
            .unwrap_or_else(|e| panic!("start failed:\n{e}"));
        let addr = proxy.addrs()[0].1;
        Harness { proxy, dir, addr }
    }

    /// The configuration file.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("drawbridge.toml")
    }

    /// `http://` its first listener, then `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// One listener on 127.0.0.1:0, the access log off, plus what `rest` says.
pub fn config(rest: &str) -> Config {
    Config::new().with(rest)
}

/// An upstream named `name` at `url` and a public catch-all route to it, as TOML.
pub fn upstream_and_route(name: &str, url: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"{name}\"\nendpoints = [\"{url}\"]\n\n[[routes]]\nname = \"all\"\nprefix = \"/\"\nupstream = \"{name}\"\npublic = true\n"
    )
}

/// A response, read whole.
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body, as text.
    pub body: String,
    /// Its trailers, if it had any.
    pub trailers: Option<HeaderMap>,
}

/// An HTTP/1.1 client (keeping connections).
pub fn h1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client (prior knowledge, plaintext).
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `req` with `client` and reads the whole response (10 s at most).
pub async fn send(client: &Client<HttpConnector, Full<Bytes>>, req: Request<Full<Bytes>>) -> Reply {
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("response in time")
        .expect("request");
    let (parts, body) = res.into_parts();
    let collected = body.collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        trailers,
    }
}

/// GET `url`.
pub async fn get(url: &str) -> Reply {
    let req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(&h1_client(), req).await
}

/// GET `url` with `headers` (a name may repeat).
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(
        &h1_client(),
        req.body(Full::new(Bytes::new())).expect("request"),
    )
    .await
}

/// Writes `request` on a fresh connection and reads until the server closes it or goes
/// quiet for `wait`.
pub async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the server closed the connection after answering `request`.
pub async fn raw_closed(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Err(_) => break false,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// The status code of the first response in a raw reply.
pub fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A connection to `addr` whose request is in flight: a `POST` to `path` whose 4-byte body
/// is still to come, admitted (the proxy asked for the body with `100 Continue`). `None`
/// when the connection was closed or answered otherwise.
pub async fn in_flight(addr: SocketAddr, path: &str) -> Option<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.ok()?;
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf[..n])
        .starts_with("HTTP/1.1 100")
        .then_some(s)
}

/// The `drawbridge` binary cargo built beside the running test (`target/<profile>/`; the
/// test itself runs from `deps/` below it).
pub fn drawbridge_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps");
    let bin = dir.join("drawbridge");
    assert!(
        bin.exists(),
        "{} is missing: build the binary first (cargo builds it for the drawbridge crate's tests)",
        bin.display()
    );
    bin
}

/// The real `drawbridge` binary, serving a config file; killed when dropped.
pub struct Binary {
    /// The process.
    pub child: std::process::Child,
    /// Its first listener's address, as it logged it.
    pub addr: SocketAddr,
    /// What it wrote to stderr so far.
    pub stderr: Arc<std::sync::Mutex<String>>,
    /// The thread reading its stderr, done once the pipe closes.
    reader: std::thread::JoinHandle<()>,
}

impl Binary {
    /// Starts `drawbridge serve --config path` and waits for its first listener.
    pub fn serve(path: &std::path::Path) -> Binary {
        Self::serve_logging(path, "info")
    }

    /// The same, with `DRAWBRIDGE_LOG` set to `filter`.
    pub fn serve_logging(path: &std::path::Path, filter: &str) -> Binary {
        let mut cmd = std::process::Command::new(drawbridge_binary());
        cmd.args(["serve", "--config"]).arg(path);
        Self::spawn(cmd, filter)
    }

    /// The same, allowed at most `descriptors` open file descriptors (by util-linux's
    /// `prlimit`, which runs it in its own place).
    pub fn serve_limited(path: &std::path::Path, filter: &str, descriptors: u64) -> Binary {
        let mut cmd = std::process::Command::new("prlimit");
        cmd.arg(format!("--nofile={descriptors}:{descriptors}"))
            .arg("--")
            .arg(drawbridge_binary())
            .args(["serve", "--config"])
            .arg(path);
        Self::spawn(cmd, filter)
    }

    fn spawn(mut cmd: std::process::Command, filter: &str) -> Binary {
        use std::io::BufRead;
        let mut child = cmd
            .env("DRAWBRIDGE_LOG", filter)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn drawbridge");
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("stderr");
        let log = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split("address=")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "drawbridge did not start: {}",
                    stderr.lock().map(|s| s.clone()).unwrap_or_default()
                )
            });
        Binary {
            child,
            addr,
            stderr,
            reader,
        }
    }

    /// Waits for it to exit on its own: how it ended, and its whole stderr (read to the
    /// pipe's end, or to what came within two seconds of the exit when a process it started
    /// still holds the pipe).
    pub async fn exited(mut self) -> (std::process::ExitStatus, String) {
        tokio::task::spawn_blocking(move || {
            let status = self.child.wait().expect("wait");
            let until = std::time::Instant::now() + Duration::from_secs(2);
            while !self.reader.is_finished() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            (status, self.log())
        })
        .await
        .expect("join")
    }

    /// Sends it `sig` (`HUP`, `TERM`, `USR2`...).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// `http://` its first listener, then `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 50 ms until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The JSON lines of a log file, waiting up to two seconds for at least `at_least` of those
/// `keep` selects (the writer is asynchronous).
pub async fn json_lines(
    path: &std::path::Path,
    at_least: usize,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| keep(l))
            .collect();
        if lines.len() >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lines
}

/// A TLS listener for `a.test` with `limits_toml` (and `extra`, more of the config), in
/// front of a recording upstream: its CA, the proxy, the certificates' directory, the
/// upstream.
pub async fn tls_listener(
    limits_toml: &str,
    extra: &str,
) -> (
    crate::certs::TestCa,
    Harness,
    tempfile::TempDir,
    crate::RecordingUpstream,
) {
    let ca = crate::certs::TestCa::new("test ca");
    let up = crate::RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = ca.leaf(&["a.test"]);
    crate::write_file(dir.path(), "a.crt", &leaf.cert_pem);
    crate::write_file(dir.path(), "a.key", &leaf.key_pem);
    let d = dir.path().display();
    let cfg = config(&upstream_and_route("app", &up.url()))
        .with(extra)
        .listener("limits", table(limits_toml))
        .listener(
            "tls",
            table(&format!(
                "[[certificates]]\ncert = \"{d}/a.crt\"\nkey = \"{d}/a.key\"\n"
            )),
        );
    let h = Harness::start(&cfg).await;
    (ca, h, dir, up)
}

/// A TLS connection to `h`'s first listener as `a.test`, offering `alpn` (nothing when
/// empty), trusting `ca`.
pub async fn tls_connect(
    ca: &crate::certs::TestCa,
    h: &Harness,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("ca"))
        .expect("root");
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = if alpn.is_empty() {
        Vec::new()
    } else {
        vec![alpn.to_vec()]
    };
    let tcp = TcpStream::connect(h.addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls_pki_types::ServerName::try_from("a.test").expect("name"),
            tcp,
        )
        .await
        .expect("handshake")
}
