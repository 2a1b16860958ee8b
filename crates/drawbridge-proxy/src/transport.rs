//! Upstream connections: TCP, TLS with ALPN, HTTP/1.1 connections pooled per endpoint and
//! reused only after a complete exchange, and one multiplexed HTTP/2 connection per endpoint.
//!
//! Built on hyper's connection API rather than a general-purpose client: the proxy already
//! knows the endpoint, so a checkout is a pop from a short list, with no pool keys to hash
//! and no connect race.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drawbridge_config::{Endpoint, UpstreamProtocol};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::RequestBody;

/// How an upstream's connections are made.
pub struct Transport {
    protocol: UpstreamProtocol,
    tls: Option<UpstreamTls>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

struct UpstreamTls {
    /// ALPN as the upstream's protocol asks.
    connector: TlsConnector,
    /// ALPN `http/1.1` only, for WebSocket upgrades.
    http1_only: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

/// One endpoint's connections.
#[derive(Default)]
pub struct Connections {
    idle: Mutex<Vec<(http1::SendRequest<RequestBody>, Instant)>>,
    shared_h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
}

/// A connection ready for one request, and how long it sat idle before (zero when new).
pub struct Checkout {
    /// The connection.
    pub sender: Sender,
    /// Time since its previous exchange ended; a connection idle for a while may have been
    /// closed by the upstream in the meantime.
    pub idle_for: Duration,
}

/// A connection ready for one request.
pub enum Sender {
    /// An HTTP/1.1 connection, taken out of the pool for this exchange.
    Http1(http1::SendRequest<RequestBody>),
    /// A handle on the endpoint's shared HTTP/2 connection.
    Http2(http2::SendRequest<RequestBody>),
}

impl Sender {
    /// Whether requests go out as HTTP/2.
    pub fn is_http2(&self) -> bool {
        matches!(self, Sender::Http2(_))
    }

    /// Sends `req`. A request the connection could not take comes back in the error.
    pub async fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<RequestBody>>> {
        match self {
            Sender::Http1(s) => s.try_send_request(req).await,
            Sender::Http2(s) => s.try_send_request(req).await,
        }
    }
}

impl Transport {
    /// Settings for one upstream; `tls` is its client config when an endpoint uses https.
    pub fn new(
        protocol: UpstreamProtocol,
        tls: Option<Arc<rustls::ClientConfig>>,
        server_name: Option<ServerName<'static>>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        let tls = tls.map(|base| {
            let mut cfg = (*base).clone();
            cfg.alpn_protocols = match protocol {
                UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
                UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
                UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            };
            let mut h1 = (*base).clone();
            h1.alpn_protocols = vec![b"http/1.1".to_vec()];
            UpstreamTls {
                connector: TlsConnector::from(Arc::new(cfg)),
                http1_only: TlsConnector::from(Arc::new(h1)),
                server_name,
            }
        });
        Self {
            protocol,
            tls,
            connect_timeout,
            idle_timeout,
            max_idle,
        }
    }

    /// A connection to `ep`: the shared HTTP/2 one, an idle HTTP/1.1 one, or a new one.
    /// `http1` insists on HTTP/1.1 (WebSocket upgrades).
    pub async fn checkout(
        &self,
        ep: &Endpoint,
        conns: &Connections,
        http1: bool,
    ) -> Result<Checkout, ConnectError> {
        if !http1 {
            let shared = lock(&conns.shared_h2)
                .as_ref()
                .filter(|s| !s.is_closed())
                .cloned();
            if let Some(s) = shared {
                return Ok(Checkout {
                    sender: Sender::Http2(s),
                    idle_for: Duration::ZERO,
                });
            }
        }
        loop {
            let popped = lock(&conns.idle).pop();
            let Some((mut s, since)) = popped else { break };
            if since.elapsed() >= self.idle_timeout || s.is_closed() {
                continue;
            }
            // A connection that just finished an exchange may not have noticed yet; it will in
            // a moment, or report that it closed.
            if s.is_ready() || s.ready().await.is_ok() {
                return Ok(Checkout {
                    sender: Sender::Http1(s),
                    idle_for: since.elapsed(),
                });
            }
        }
        // Boxed: the connect path is rare, and its state would otherwise enlarge (and make
        // every move of) each request's future.
        let sender = Box::pin(self.connect(ep, conns, http1)).await?;
        Ok(Checkout {
            sender,
            idle_for: Duration::ZERO,
        })
    }

    /// A new connection, never pooled ones (after a pooled one turned out stale).
    pub async fn connect(
        &self,
        ep: &Endpoint,
        conns: &Connections,
        http1: bool,
    ) -> Result<Sender, ConnectError> {
        tokio::time::timeout(self.connect_timeout, self.open(ep, conns, http1))
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))?
    }

    async fn open(
        &self,
        ep: &Endpoint,
        conns: &Connections,
        http1: bool,
    ) -> Result<Sender, ConnectError> {
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| {
                if crate::io::out_of_descriptors(&e) {
                    ConnectError::OutOfDescriptors(e)
                } else {
                    ConnectError::Connect(e)
                }
            })?;
        let _ = tcp.set_nodelay(true);
        if !ep.tls {
            let h2 = self.protocol == UpstreamProtocol::Http2 && !http1;
            return self.handshake(TokioIo::new(tcp), h2, conns).await;
        }
        let Some(tls) = &self.tls else {
            return Err(ConnectError::NoTls);
        };
        let name = match &tls.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(ep.host.clone())
                .map_err(|_| ConnectError::ServerName(ep.host.clone()))?,
        };
        let connector = if http1 {
            &tls.http1_only
        } else {
            &tls.connector
        };
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(ConnectError::Tls)?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        if self.protocol == UpstreamProtocol::Http2 && !h2 && !http1 {
            return Err(ConnectError::NoHttp2);
        }
        self.handshake(TokioIo::new(stream), h2, conns).await
    }

    async fn handshake<T>(
        &self,
        io: T,
        h2: bool,
        conns: &Connections,
    ) -> Result<Sender, ConnectError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true)
                .handshake(io)
                .await
                .map_err(|source| ConnectError::Handshake {
                    protocol: "http2",
                    source,
                })?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream http2 connection ended");
                }
            });
            *lock(&conns.shared_h2) = Some(sender.clone());
            Ok(Sender::Http2(sender))
        } else {
            let (sender, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|source| ConnectError::Handshake {
                    protocol: "http1",
                    source,
                })?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream http1 connection ended");
                }
            });
            Ok(Sender::Http1(sender))
        }
    }

    /// Returns an HTTP/1.1 connection whose exchange completed, for the next request.
    pub fn give_back(&self, conns: &Connections, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&conns.idle);
        // Oldest first: drop the ones idle too long, then keep at most `max_idle`.
        let now = Instant::now();
        idle.retain(|(_, since)| now.duration_since(*since) < self.idle_timeout);
        if idle.len() < self.max_idle {
            idle.push((sender, now));
        }
    }
}

/// The pool's lists are never left half-updated, so a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a connection to an endpoint could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection and handshakes took longer than `connect_timeout`.
    #[error("connect: timed out after {0:?}")]
    Timeout(Duration),
    /// The TCP connection failed.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// This process had no descriptor (or the kernel no memory) for another socket: not the
    /// endpoint's failure.
    #[error("connect: no socket to be had here: {0}")]
    OutOfDescriptors(#[source] std::io::Error),
    /// An `https` endpoint without TLS settings (the config check prevents it).
    #[error("connect: no TLS settings for an https endpoint")]
    NoTls,
    /// The endpoint's host cannot be a TLS server name.
    #[error("tls: `{0}` is not a server name")]
    ServerName(String),
    /// The TLS handshake failed (an untrusted or mismatched certificate, a protocol error).
    #[error("tls: {0}")]
    Tls(#[source] std::io::Error),
    /// An endpoint configured for HTTP/2 did not agree to it in ALPN.
    #[error("tls: the endpoint did not agree to HTTP/2 (ALPN)")]
    NoHttp2,
    /// The HTTP handshake failed.
    #[error("{protocol} handshake: {source}")]
    Handshake {
        /// `http1` or `http2`.
        protocol: &'static str,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A plaintext HTTP/1.1 upstream answering 200 (closing after each response when
    /// `close`), counting the connections it accepted.
    async fn upstream(close: bool) -> (Endpoint, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        let mut res = Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                        if close {
                            res.headers_mut()
                                .insert(http::header::CONNECTION, "close".parse().expect("value"));
                        }
                        Ok::<_, std::convert::Infallible>(res)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let ep = Endpoint {
            tls: false,
            host: "127.0.0.1".into(),
            port,
        };
        (ep, accepted)
    }

    fn transport(idle_timeout: Duration, max_idle: usize) -> Transport {
        Transport::new(
            UpstreamProtocol::Http1,
            None,
            None,
            Duration::from_secs(2),
            idle_timeout,
            max_idle,
        )
    }

    /// One exchange on a checked-out connection; the connection, to give back.
    async fn exchange(t: &Transport, ep: &Endpoint, conns: &Connections) -> Checkout {
        let mut c = t.checkout(ep, conns, false).await.expect("checkout");
        let req = Request::get("/")
            .body(RequestBody::empty())
            .expect("request");
        let res = c
            .sender
            .send(req)
            .await
            .map_err(|e| e.into_error())
            .expect("send");
        assert_eq!(res.status(), 200);
        // The exchange is complete once the body is read.
        let _ = http_body_util::BodyExt::collect(res.into_body()).await;
        c
    }

    fn give_back(t: &Transport, conns: &Connections, c: Checkout) {
        if let Sender::Http1(s) = c.sender {
            t.give_back(conns, s);
        }
    }

    #[tokio::test]
    async fn a_connection_given_back_is_reused() {
        let (ep, accepted) = upstream(false).await;
        let (t, conns) = (
            transport(Duration::from_secs(30), 8),
            Connections::default(),
        );
        let first = exchange(&t, &ep, &conns).await;
        assert_eq!(first.idle_for, Duration::ZERO, "new");
        give_back(&t, &conns, first);
        let second = exchange(&t, &ep, &conns).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for both"
        );
        give_back(&t, &conns, second);
        assert_eq!(lock(&conns.idle).len(), 1);
    }

    #[tokio::test]
    async fn a_connection_idle_too_long_is_not_reused() {
        let (ep, accepted) = upstream(false).await;
        let (t, conns) = (
            transport(Duration::from_millis(50), 8),
            Connections::default(),
        );
        let first = exchange(&t, &ep, &conns).await;
        give_back(&t, &conns, first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = exchange(&t, &ep, &conns).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let (ep, accepted) = upstream(true).await;
        let (t, conns) = (
            transport(Duration::from_secs(30), 8),
            Connections::default(),
        );
        let first = exchange(&t, &ep, &conns).await;
        // Closed by the upstream (`Connection: close`): noticed now or at the next checkout.
        tokio::time::sleep(Duration::from_millis(50)).await;
        give_back(&t, &conns, first);
        let _ = exchange(&t, &ep, &conns).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept() {
        let (ep, accepted) = upstream(false).await;
        let (t, conns) = (
            transport(Duration::from_secs(30), 2),
            Connections::default(),
        );
        // Three exchanges at once: three connections.
        let a = exchange(&t, &ep, &conns).await;
        let b = exchange(&t, &ep, &conns).await;
        let c = exchange(&t, &ep, &conns).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        for x in [a, b, c] {
            give_back(&t, &conns, x);
        }
        assert_eq!(lock(&conns.idle).len(), 2, "the third is dropped");
    }
}
