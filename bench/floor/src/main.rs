//! The benchmark's floor: the least a reverse proxy on hyper 1 can do. A server connection
//! per client, a pool of kept-alive HTTP/1.1 connections to one upstream, the request sent
//! on as it came and the response streamed back; nothing else (no routing, no checks, no
//! logs). Same runtime (multi-threaded, one worker per CPU) and allocator (mimalloc) as
//! Drawbridge, so that the benchmark's distance between the two is Drawbridge's own work.
//!
//! With a certificate and its key it serves TLS (1.3 and 1.2, HTTP/1.1 by ALPN) with the
//! crypto provider Drawbridge uses (aws-lc-rs): the floor of a TLS listener. Given a JWKS,
//! policies, a log directory and an issuer as well, it also checks and records every
//! request the way the benchmark's full access path does, the least way (see [`full`]):
//! the floor of that path.
//!
//! With `FLOOR_WORK_NS` set, it also spends that many nanoseconds busy on every request
//! before sending it on: a floor with a fixed amount of work of its own, to show in the same
//! run what that much work costs a proxy where the benchmark measures it.
//!
//! With `FLOOR_DUTIES=1`, it does what a gateway owes every request on a public route (the
//! head's limits, one valid host, the client's headers screened, a path in normal form,
//! the forwarding headers and a request id, a request timeout, the response's hop-by-hop
//! headers removed, a count and a time), the least way on the same crates (see [`duties`]):
//! the floor of Drawbridge's public route.
//!
//! ```text
//! drawbridge-floor LISTEN UPSTREAM [CERT KEY [JWKS POLICIES LOGDIR ISSUER]]
//! drawbridge-floor 127.0.0.1:18107 127.0.0.1:18100
//! FLOOR_WORK_NS=500 drawbridge-floor 127.0.0.1:18113 127.0.0.1:18100
//! FLOOR_DUTIES=1 drawbridge-floor 127.0.0.1:18114 127.0.0.1:18100
//! ```
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

mod duties;
mod full;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Idle upstream connections.
struct Pool {
    upstream: SocketAddr,
    idle: Mutex<Vec<SendRequest<Incoming>>>,
    /// Time spent busy on every request (`FLOOR_WORK_NS`; none by default).
    work: Duration,
}

/// Keeps the thread busy for `work`, as a proxy's own work on a request would.
fn busy(work: Duration) {
    if work.is_zero() {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < work {
        std::hint::spin_loop();
    }
}

impl Pool {
    fn take(&self) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, s: SendRequest<Incoming>) {
        if s.is_ready() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
        }
    }

    async fn connect(&self) -> std::io::Result<SendRequest<Incoming>> {
        let tcp = tokio::net::TcpStream::connect(self.upstream).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

/// The upstream's response body (none for a refusal); its connection goes back to the pool
/// once the body ends.
struct Returning {
    body: Option<Incoming>,
    conn: Option<(SendRequest<Incoming>, Arc<Pool>)>,
}

impl Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        if (matches!(polled, Poll::Ready(None)) || body.is_end_stream())
            && let Some((s, pool)) = self.conn.take()
        {
            pool.give_back(s);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// What a connection's requests are served with.
#[derive(Clone)]
struct Serving {
    pool: Arc<Pool>,
    gate: Option<Arc<full::Gate>>,
    duties: Option<Arc<duties::Duties>>,
    /// The client's address as a header value, made once per connection.
    peer: http::HeaderValue,
    /// The client's address and port, for the full path's records.
    client: Arc<str>,
}

async fn proxy(
    serving: Serving,
    req: http::Request<Incoming>,
) -> Result<http::Response<Returning>, std::io::Error> {
    let Serving {
        pool,
        gate,
        duties,
        peer,
        client,
    } = serving;
    busy(pool.work);
    if let Some(duties) = duties {
        return dutiful(pool, &duties, &peer, req).await;
    }
    let Some(gate) = gate else {
        return forward(pool, req).await;
    };
    let started = Instant::now();
    let asked = full::Asked::of(&req, &client, &gate);
    match gate.admit(req.headers(), &asked) {
        Ok(caller) => {
            let res = forward(pool, req).await?;
            let sent = res.body().size_hint().exact().unwrap_or(0);
            gate.answered(Some(&caller), &asked, res.status(), sent, started);
            Ok(res)
        }
        Err(status) => {
            gate.answered(None, &asked, status, 0, started);
            Ok(refusal(status))
        }
    }
}

/// The request, checked and rewritten by the duties, sent on within their timeout.
async fn dutiful(
    pool: Arc<Pool>,
    duties: &duties::Duties,
    peer: &http::HeaderValue,
    req: http::Request<Incoming>,
) -> Result<http::Response<Returning>, std::io::Error> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let res = match duties.request(&mut parts, peer) {
        Ok(()) => {
            let req = http::Request::from_parts(parts, body);
            match tokio::time::timeout(duties.timeout, forward(pool, req)).await {
                Ok(Ok(mut res)) => {
                    duties::Duties::response(res.headers_mut());
                    res
                }
                Ok(Err(_)) => refusal(http::StatusCode::BAD_GATEWAY),
                Err(_) => refusal(http::StatusCode::GATEWAY_TIMEOUT),
            }
        }
        Err(status) => refusal(status),
    };
    duties.count(started.elapsed());
    Ok(res)
}

/// An answer of the proxy's own, without a body.
fn refusal(status: http::StatusCode) -> http::Response<Returning> {
    let mut res = http::Response::new(Returning {
        body: None,
        conn: None,
    });
    *res.status_mut() = status;
    res
}

async fn forward(
    pool: Arc<Pool>,
    mut req: http::Request<Incoming>,
) -> Result<http::Response<Returning>, std::io::Error> {
    let mut sender = match pool.take() {
        Some(s) => s,
        None => pool.connect().await?,
    };
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = pq.into();
    }
    let res = sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let (parts, body) = res.into_parts();
    let body = Returning {
        body: Some(body),
        conn: Some((sender, pool)),
    };
    Ok(http::Response::from_parts(parts, body))
}

/// A TLS server configuration from PEM files, as Drawbridge's listeners make theirs.
fn tls_config(cert: &str, key: &str) -> std::io::Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(std::io::Error::other)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(std::io::Error::other)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(std::io::Error::other)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves one client connection until it ends.
async fn serve<S>(io: S, serving: Serving)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| proxy(serving.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = || {
        std::io::Error::other(
            "usage: drawbridge-floor LISTEN UPSTREAM [CERT KEY [JWKS POLICIES LOGDIR ISSUER]]",
        )
    };
    let listen: SocketAddr = args
        .next()
        .ok_or_else(usage)?
        .parse()
        .map_err(|_| usage())?;
    let upstream: SocketAddr = args
        .next()
        .ok_or_else(usage)?
        .parse()
        .map_err(|_| usage())?;
    let tls = match (args.next(), args.next()) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(tls_config(&cert, &key)?)),
        (None, None) => None,
        _ => return Err(usage()),
    };
    let rest: Vec<String> = args.collect();
    let gate = match rest.as_slice() {
        [] => None,
        [jwks, policies, dir, issuer] if tls.is_some() => Some(Arc::new(full::Gate::new(
            jwks,
            policies,
            dir,
            issuer,
            format!("http://{upstream}"),
        )?)),
        _ => return Err(usage()),
    };
    let work =
        match std::env::var("FLOOR_WORK_NS") {
            Ok(ns) => Duration::from_nanos(ns.parse().map_err(|_| {
                std::io::Error::other("FLOOR_WORK_NS: a whole number of nanoseconds")
            })?),
            Err(_) => Duration::ZERO,
        };
    let duties = match std::env::var("FLOOR_DUTIES").as_deref() {
        Ok("1") => Some(Arc::new(duties::Duties::new(Duration::from_secs(30)))),
        Ok("0") | Err(_) => None,
        Ok(_) => return Err(std::io::Error::other("FLOOR_DUTIES: 1 or 0")),
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            let pool = Arc::new(Pool {
                upstream,
                idle: Mutex::new(Vec::new()),
                work,
            });
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(_) => continue,
                };
                let _ = stream.set_nodelay(true);
                let serving = Serving {
                    pool: pool.clone(),
                    gate: gate.clone(),
                    duties: duties.clone(),
                    peer: http::HeaderValue::from_str(&peer.ip().to_string())
                        .unwrap_or(http::HeaderValue::from_static("unknown")),
                    client: Arc::from(peer.to_string()),
                };
                match &tls {
                    None => {
                        tokio::spawn(serve(stream, serving));
                    }
                    Some(acceptor) => {
                        let accept = acceptor.accept(stream);
                        tokio::spawn(async move {
                            if let Ok(tls) = accept.await {
                                serve(tls, serving).await;
                            }
                        });
                    }
                }
            }
        })
}
