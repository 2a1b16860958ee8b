//! A recording upstream: HTTP/1.1 and h2c, keeps what it received, answers with a JSON echo.
//!
//! Paths under `/__upstream/` steer it: `status/{code}`, `sleep/{ms}`, `reset` (drops the
//! connection without answering), `bytes/{n}` (a body of n bytes). Everything else is echoed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: Method,
    /// Path and query, exactly as received.
    pub target: String,
    /// Protocol version.
    pub version: Version,
    /// Every header.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The request's trailers, when it had any.
    pub trailers: Option<HeaderMap>,
    /// The address the request came from: equal for requests on one connection.
    pub peer: SocketAddr,
    /// The request's authority (HTTP/2 `:authority`, or an absolute-form target's).
    pub authority: Option<String>,
}

impl Received {
    /// The first value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A running recording upstream. Stops when dropped.
pub struct RecordingUpstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingUpstream {
    /// Starts on 127.0.0.1 on a free port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("literal address")).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::serve(addr, None).await
    }

    /// Starts on 127.0.0.1 serving HTTPS with `leaf` (ALPN `h2` and `http/1.1`).
    pub async fn start_tls(leaf: &crate::certs::Leaf) -> Self {
        let addr = "127.0.0.1:0".parse().expect("literal address");
        Self::serve(addr, Some(tls_acceptor(leaf))).await
    }

    async fn serve(addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("binding upstream {addr}: {e}"));
        let addr = listener.local_addr().expect("bound address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let rec = rec.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(rec.clone(), peer, req));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let io = TokioIo::new(stream);
                            let _ = builder.serve_connection_with_upgrades(io, service).await;
                        }
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let io = TokioIo::new(s);
                                let _ = builder.serve_connection_with_upgrades(io, service).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.received.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// The last request received.
    pub fn last(&self) -> Option<Received> {
        self.received.lock().ok().and_then(|v| v.last().cloned())
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        if let Ok(mut v) = self.received.lock() {
            v.clear();
        }
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    rec: Arc<Mutex<Vec<Received>>>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let (body, trailers) = match body.collect().await {
        Ok(c) => {
            let trailers = c.trailers().cloned();
            (c.to_bytes(), trailers)
        }
        Err(_) => (Bytes::new(), None),
    };
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    let got = Received {
        method: parts.method.clone(),
        target: target.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
        trailers,
        peer,
        authority: parts.uri.authority().map(|a| a.to_string()),
    };
    if let Ok(mut v) = rec.lock() {
        v.push(got);
    }
    let path = parts.uri.path();
    if let Some(cmd) = path.strip_prefix("/__upstream/") {
        let (verb, arg) = cmd.split_once('/').unwrap_or((cmd, ""));
        match verb {
            "status" => {
                let code = arg
                    .parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .unwrap_or(StatusCode::BAD_REQUEST);
                return Ok(Response::builder()
                    .status(code)
                    .body(Full::new(Bytes::from(format!("status {code}\n"))))
                    .unwrap_or_default());
            }
            "sleep" => tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(0))).await,
            "reset" => return Err(std::io::Error::other("reset requested")),
            "bytes" => {
                let n: usize = arg.parse().unwrap_or(0);
                return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; n]))));
            }
            _ => {}
        }
    }
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let echo = serde_json::json!({
        "method": parts.method.as_str(),
        "target": target,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body.len(),
    });
    let text = serde_json::to_string_pretty(&echo).unwrap_or_default() + "\n";
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

/// A TLS acceptor presenting `leaf`, with ALPN `h2` and `http/1.1`.
pub(crate) fn tls_acceptor(leaf: &crate::certs::Leaf) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("leaf certificate");
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("leaf key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}
