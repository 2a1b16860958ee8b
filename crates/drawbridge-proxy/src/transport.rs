//! Upstream connections: TCP, TLS with ALPN, HTTP/1.1 connections pooled per endpoint and
//! reused only after a complete exchange, and one multiplexed HTTP/2 connection per endpoint.
//!
//! A pooled HTTP/1.1 connection idle for a sweep's time parks, as an idle client connection
//! does: hyper's state for it (its buffers, its request channel, its task) goes, and the
//! pool keeps the socket alone (and its TLS session), made into a connection again when a
//! request needs it. A burst of requests that opened hundreds of connections leaves
//! hundreds of sockets, not hundreds of sets of buffers.
//!
//! Built on hyper's connection API rather than a general-purpose client: the proxy already
//! knows the endpoint, so a checkout is a pop from a short list, with no pool keys to hash
//! and no connect race.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use drawbridge_config::{Endpoint, UpstreamProtocol};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    /// Ready for a request, with when their last exchange ended; the most recent last.
    idle: Mutex<Vec<(Http1, Instant)>>,
    /// Parked: sockets alone, given back by their connections' tasks.
    parked: Arc<Parked>,
    shared_h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
}

/// The sockets of parked connections, with when their last exchange ended.
#[derive(Default)]
struct Parked {
    socks: Mutex<Vec<(UpstreamIo, Instant)>>,
    /// `socks.len()`, read without the lock when a connection is given back.
    len: AtomicUsize,
}

/// An HTTP/1.1 connection: hyper's handle on it, and where its task leaves the socket when
/// the pool parks it (none for a connection made for an upgrade, which never goes back).
pub struct Http1 {
    send: http1::SendRequest<RequestBody>,
    park: Option<Arc<ParkAsk>>,
    interims: Interims,
}

/// The interim (1xx) responses of the exchange in progress, counted: hyper reads past them
/// and tells only a callback the request carries in its extensions. The callback is made
/// once for the connection (which has one exchange at a time) and each request gets a copy
/// of it, not a new one.
struct Interims {
    seen: Arc<AtomicU32>,
    callback: http::Extensions,
}

impl Interims {
    fn new() -> Self {
        let seen = Arc::new(AtomicU32::new(0));
        let count = seen.clone();
        let mut carrier = Request::new(());
        hyper::ext::on_informational(&mut carrier, move |_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        Self {
            seen,
            callback: std::mem::take(carrier.extensions_mut()),
        }
    }
}

impl Http1 {
    fn new(send: http1::SendRequest<RequestBody>, park: Option<Arc<ParkAsk>>) -> Self {
        Self {
            send,
            park,
            interims: Interims::new(),
        }
    }

    fn watch_interims(&self, req: &mut Request<RequestBody>) {
        self.interims.seen.store(0, Ordering::Relaxed);
        req.extensions_mut().extend(self.interims.callback.clone());
    }
}

/// Set by the pool when it parks a connection (to when its last exchange ended): its task,
/// seeing hyper finish, keeps the socket for the pool instead of closing it. Finished for
/// any other reason (the upstream closed, an exchange cut short, a misbehaving upstream),
/// a connection is never parked.
#[derive(Default)]
struct ParkAsk(Mutex<Option<Instant>>);

/// A connection's socket: TCP, or TLS over TCP.
pub enum UpstreamIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (boxed: a TLS session's state is large, and most pools are plain).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A connection ready for one request, and how long it sat idle before (zero when new).
pub struct Checkout {
    /// The connection.
    pub sender: Sender,
    /// Time since its previous exchange ended; a connection idle for a while may have been
    /// closed by the upstream in the meantime.
    pub idle_for: Duration,
}

/// What the pool has at once for a request.
enum Ready {
    /// A ready connection.
    Now(Checkout),
    /// A connection that has not yet noticed its exchange ended, to wait for, and how long
    /// it had been idle.
    Finishing(Http1, Duration),
    /// No pooled connection, but parked sockets.
    Parked,
    /// Nothing pooled.
    Empty,
}

/// A connection ready for one request.
pub enum Sender {
    /// An HTTP/1.1 connection, taken out of the pool for this exchange.
    Http1(Http1),
    /// A handle on the endpoint's shared HTTP/2 connection.
    Http2(http2::SendRequest<RequestBody>),
}

impl Sender {
    /// Whether requests go out as HTTP/2.
    pub fn is_http2(&self) -> bool {
        matches!(self, Sender::Http2(_))
    }

    /// Counts the interim responses to `req` from none (an HTTP/1.1 connection: hyper reads
    /// past them and reports them only to a callback; HTTP/2 ones it does not report).
    pub fn watch_interims(&self, req: &mut Request<RequestBody>) {
        if let Sender::Http1(s) = self {
            s.watch_interims(req);
        }
    }

    /// How many interim responses came for the request last watched.
    pub fn interims(&self) -> u32 {
        match self {
            Sender::Http1(s) => s.interims.seen.load(Ordering::Relaxed),
            Sender::Http2(_) => 0,
        }
    }

    /// Sends `req`. A request the connection could not take comes back in the error.
    ///
    /// hyper's own future, not one around it: an `async fn` here would keep the request a
    /// second time beside the future that holds it, in every request's state.
    pub fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<RequestBody>>>>
    + Send
    + use<> {
        use futures_util::future::Either;
        match self {
            Sender::Http1(s) => Either::Left(s.send.try_send_request(req)),
            Sender::Http2(s) => Either::Right(s.try_send_request(req)),
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
    /// `http1` insists on HTTP/1.1 (WebSocket upgrades); `now` is the time the request
    /// asks (idle times are measured to it).
    pub async fn checkout(
        &self,
        ep: &Endpoint,
        conns: &Connections,
        http1: bool,
        now: Instant,
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
        // An upgrade takes a connection of its own: hyper hands over an upgraded socket only
        // from a connection made for it, and pooled ones park instead.
        if !http1 {
            // Most requests find a ready connection and never wait here.
            match self.ready(conns, now) {
                Ready::Now(c) => return Ok(c),
                Ready::Empty => {}
                first => {
                    if let Some(c) = Box::pin(self.pooled(conns, first)).await {
                        return Ok(c);
                    }
                }
            }
        }
        // Boxed, as the waits above: these paths are rare, and their state would otherwise
        // enlarge (and make every move of) each request's future.
        let sender = Box::pin(self.connect(ep, conns, http1)).await?;
        Ok(Checkout {
            sender,
            idle_for: Duration::ZERO,
        })
    }

    /// What the pool has at once, without waiting: a ready connection (the most recently
    /// used first), one still finishing its exchange, parked sockets, or nothing.
    fn ready(&self, conns: &Connections, now: Instant) -> Ready {
        loop {
            let popped = lock(&conns.idle).pop();
            let Some((s, since)) = popped else {
                return if conns.parked.is_empty() {
                    Ready::Empty
                } else {
                    Ready::Parked
                };
            };
            let idle_for = now.saturating_duration_since(since);
            if idle_for >= self.idle_timeout || s.send.is_closed() {
                continue;
            }
            if s.send.is_ready() {
                return Ready::Now(Checkout {
                    sender: Sender::Http1(s),
                    idle_for,
                });
            }
            return Ready::Finishing(s, idle_for);
        }
    }

    /// A pooled connection, waiting if need be, starting from what [`Transport::ready`]
    /// found (`next`): a connection still finishing its exchange is waited for (it notices
    /// in a moment, or reports that it closed), then the next pooled one is looked at; with
    /// none left, a parked socket is made into a connection again. `None` when none is left.
    async fn pooled(&self, conns: &Connections, mut next: Ready) -> Option<Checkout> {
        loop {
            match next {
                Ready::Now(c) => return Some(c),
                Ready::Finishing(mut s, idle_for) => {
                    if s.send.ready().await.is_ok() {
                        return Some(Checkout {
                            sender: Sender::Http1(s),
                            idle_for,
                        });
                    }
                }
                Ready::Parked | Ready::Empty => break,
            }
            next = self.ready(conns, Instant::now());
        }
        loop {
            let (io, since) = conns.parked.pop()?;
            // Closed by the upstream meanwhile (or sending unasked): dropped, closed.
            if since.elapsed() >= self.idle_timeout || !io.is_quiet() {
                continue;
            }
            if let Ok(Sender::Http1(s)) = self.handshake(io, false, conns, false).await {
                return Some(Checkout {
                    sender: Sender::Http1(s),
                    idle_for: since.elapsed(),
                });
            }
        }
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
            return self
                .handshake(UpstreamIo::Plain(tcp), h2, conns, http1)
                .await;
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
        self.handshake(UpstreamIo::Tls(Box::new(stream)), h2, conns, http1)
            .await
    }

    /// hyper's connection over `io`, its task spawned. An HTTP/1.1 connection made for an
    /// `upgrade` can hand its socket to a tunnel; any other can park.
    async fn handshake(
        &self,
        io: UpstreamIo,
        h2: bool,
        conns: &Connections,
        upgrade: bool,
    ) -> Result<Sender, ConnectError> {
        let io = TokioIo::new(io);
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
            let (send, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|source| ConnectError::Handshake {
                    protocol: "http1",
                    source,
                })?;
            if upgrade {
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "upstream http1 connection ended");
                    }
                });
                return Ok(Sender::Http1(Http1::new(send, None)));
            }
            let ask = Arc::new(ParkAsk::default());
            let parked = Arc::downgrade(&conns.parked);
            let (max, asked) = (self.max_idle, ask.clone());
            tokio::spawn(async move {
                // Ends when the connection closes, or once idle with its handle dropped: not
                // shut down then, so that a parked socket stays open.
                match conn.without_shutdown().await {
                    Ok(parts) => park(&parked, &asked, parts, max),
                    Err(e) => tracing::debug!(error = %e, "upstream http1 connection ended"),
                }
            });
            Ok(Sender::Http1(Http1::new(send, Some(ask))))
        }
    }

    /// Returns an HTTP/1.1 connection whose exchange completed (`now`, when its response
    /// ended), for the next request.
    pub fn give_back(&self, conns: &Connections, sender: Http1, now: Instant) {
        if sender.send.is_closed() || sender.park.is_none() {
            return;
        }
        let mut idle = lock(&conns.idle);
        // Oldest first (each is pushed with the time it came back, and taken from the end):
        // drop the ones idle too long, which lead, looking no further than the first that is
        // not; then keep at most `max_idle` (parked ones included).
        let expired = idle
            .iter()
            .position(|(_, since)| now.duration_since(*since) < self.idle_timeout)
            .unwrap_or(idle.len());
        idle.drain(..expired);
        if idle.len() + conns.parked.len.load(Ordering::Relaxed) < self.max_idle {
            idle.push((sender, now));
        }
    }

    /// Parks the connections of `conns` idle for `after` or longer (their tasks leave their
    /// sockets with the pool), and closes those, parked or not, idle for the upstream's
    /// `idle_timeout`. Returns how many were asked to park.
    pub fn park_idle(&self, conns: &Connections, after: Duration) -> usize {
        let now = Instant::now();
        let mut asked = 0;
        lock(&conns.idle).retain(|(c, since)| {
            let idle = now.duration_since(*since);
            if idle < after {
                return true;
            }
            if let Some(ask) = c.park.as_ref().filter(|_| idle < self.idle_timeout) {
                *lock(&ask.0) = Some(*since);
                asked += 1;
            }
            // Dropped: hyper finishes the connection, which parks if asked.
            false
        });
        let mut socks = lock(&conns.parked.socks);
        socks.retain(|(_, since)| now.duration_since(*since) < self.idle_timeout);
        conns.parked.len.store(socks.len(), Ordering::Relaxed);
        asked
    }
}

impl Parked {
    /// Whether no socket is parked (read without the lock: a socket parked meanwhile is
    /// found by the next request).
    fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }

    fn pop(&self) -> Option<(UpstreamIo, Instant)> {
        let mut socks = lock(&self.socks);
        let popped = socks.pop();
        self.len.store(socks.len(), Ordering::Relaxed);
        popped
    }
}

/// Keeps the socket of a connection that hyper finished, when the pool asked it to park and
/// it ended between exchanges (nothing read and not parsed): a socket in any other state is
/// closed.
fn park(
    parked: &Weak<Parked>,
    ask: &ParkAsk,
    parts: http1::Parts<TokioIo<UpstreamIo>>,
    max: usize,
) {
    let Some(since) = *lock(&ask.0) else { return };
    let Some(parked) = parked.upgrade() else {
        return;
    };
    if !parts.read_buf.is_empty() {
        return;
    }
    let mut socks = lock(&parked.socks);
    if socks.len() < max {
        socks.push((parts.io.into_inner(), since));
        parked.len.store(socks.len(), Ordering::Relaxed);
    }
}

impl UpstreamIo {
    fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamIo::Plain(s) => s,
            UpstreamIo::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether nothing came from the upstream while the socket was parked: neither its close
    /// nor bytes it was not asked for. Looked at without reading.
    fn is_quiet(&self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.tcp().poll_peek(&mut cx, &mut buf).is_pending()
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, data),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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

    /// A transport with these settings and an empty pool.
    fn pool(idle_timeout: Duration, max_idle: usize) -> (Transport, Connections) {
        (transport(idle_timeout, max_idle), Connections::default())
    }

    /// One exchange on a checked-out connection; the connection, to give back.
    async fn exchange(t: &Transport, ep: &Endpoint, conns: &Connections) -> Checkout {
        let mut c = t
            .checkout(ep, conns, false, Instant::now())
            .await
            .expect("checkout");
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

    /// A new connection, no exchange on it yet.
    async fn fresh(t: &Transport, ep: &Endpoint, conns: &Connections) -> Checkout {
        Checkout {
            sender: t.connect(ep, conns, false).await.expect("connect"),
            idle_for: Duration::ZERO,
        }
    }

    fn give_back(t: &Transport, conns: &Connections, c: Checkout) {
        if let Sender::Http1(s) = c.sender {
            t.give_back(conns, s, Instant::now());
        }
    }

    #[tokio::test]
    async fn a_connection_given_back_is_reused() {
        let (ep, accepted) = upstream(false).await;
        let (t, conns) = pool(Duration::from_secs(30), 8);
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

    /// Waits until `conns` holds `n` parked sockets (their tasks give them back).
    async fn until_parked(conns: &Connections, n: usize) {
        for _ in 0..100 {
            if conns.parked.len.load(Ordering::Relaxed) == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{} parked, not {n}",
            conns.parked.len.load(Ordering::Relaxed)
        );
    }

    #[tokio::test]
    async fn an_idle_connection_parks_and_its_socket_serves_the_next_request() {
        let (ep, accepted) = upstream(false).await;
        let (t, conns) = pool(Duration::from_secs(30), 8);
        let first = exchange(&t, &ep, &conns).await;
        give_back(&t, &conns, first);
        // Not idle long enough: stays as it is.
        assert_eq!(t.park_idle(&conns, Duration::from_secs(5)), 0);
        assert_eq!(lock(&conns.idle).len(), 1);
        assert_eq!(t.park_idle(&conns, Duration::ZERO), 1);
        assert!(lock(&conns.idle).is_empty());
        until_parked(&conns, 1).await;
        // Parked ones count against `max_idle`.
        let full = transport(Duration::from_secs(30), 1);
        let mut other = full.connect(&ep, &conns, false).await.expect("connect");
        let req = Request::get("/")
            .body(RequestBody::empty())
            .expect("request");
        let res = other
            .send(req)
            .await
            .map_err(|e| e.into_error())
            .expect("send");
        let _ = http_body_util::BodyExt::collect(res.into_body()).await;
        let other = Checkout {
            sender: other,
            idle_for: Duration::ZERO,
        };
        give_back(&full, &conns, other);
        assert!(lock(&conns.idle).is_empty(), "one parked already: not kept");
        let second = exchange(&t, &ep, &conns).await;
        assert!(
            second.idle_for > Duration::ZERO,
            "idle since the first exchange"
        );
        assert_eq!(conns.parked.len.load(Ordering::Relaxed), 0);
        // One for the first and second exchanges (the parked socket), one for `other`.
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the parked socket");
        // Parks again, and again serves.
        give_back(&t, &conns, second);
        assert_eq!(t.park_idle(&conns, Duration::ZERO), 1);
        until_parked(&conns, 1).await;
        let _ = exchange(&t, &ep, &conns).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// An upstream that answers one request per connection with `200` (keep-alive), then
    /// closes the connection a moment later, as one whose idle timeout is short does.
    async fn closing_upstream() -> (Endpoint, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
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

    #[tokio::test]
    async fn a_parked_socket_the_upstream_closed_is_not_reused() {
        let (ep, accepted) = closing_upstream().await;
        let (t, conns) = pool(Duration::from_secs(30), 8);
        let first = exchange(&t, &ep, &conns).await;
        give_back(&t, &conns, first);
        assert_eq!(t.park_idle(&conns, Duration::ZERO), 1);
        until_parked(&conns, 1).await;
        // Closed by the upstream while parked: the next request gets a new connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = exchange(&t, &ep, &conns).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(conns.parked.len.load(Ordering::Relaxed), 0, "dropped");
    }

    #[tokio::test]
    async fn a_connection_not_given_back_never_parks_and_upgrades_take_their_own() {
        let (ep, accepted) = upstream(false).await;
        let (t, conns) = pool(Duration::from_secs(30), 8);
        // Dropped without going back to the pool (an exchange cut short, say): closed.
        drop(exchange(&t, &ep, &conns).await);
        assert_eq!(t.park_idle(&conns, Duration::ZERO), 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(conns.parked.len.load(Ordering::Relaxed), 0);
        // An upgrade never takes a pooled connection, and its own never goes back.
        let pooled = exchange(&t, &ep, &conns).await;
        give_back(&t, &conns, pooled);
        let upgrade = t
            .checkout(&ep, &conns, true, Instant::now())
            .await
            .expect("checkout");
        // Counted once the upstream's accept loop has run.
        for _ in 0..100 {
            if accepted.load(Ordering::SeqCst) == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "a connection of its own"
        );
        give_back(&t, &conns, upgrade);
        assert_eq!(lock(&conns.idle).len(), 1, "only the pooled one");
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_dropped_when_another_comes_back() {
        let (ep, _) = upstream(false).await;
        let (t, conns) = pool(Duration::from_millis(100), 8);
        let a = fresh(&t, &ep, &conns).await;
        let b = fresh(&t, &ep, &conns).await;
        give_back(&t, &conns, a);
        tokio::time::sleep(Duration::from_millis(60)).await;
        give_back(&t, &conns, b);
        tokio::time::sleep(Duration::from_millis(60)).await;
        // `a` is past the idle timeout, `b` is not: only `a` goes.
        give_back(&t, &conns, fresh(&t, &ep, &conns).await);
        assert_eq!(lock(&conns.idle).len(), 2);
        tokio::time::sleep(Duration::from_millis(110)).await;
        give_back(&t, &conns, fresh(&t, &ep, &conns).await);
        assert_eq!(lock(&conns.idle).len(), 1, "all the older ones went");
    }

    #[tokio::test]
    async fn a_connection_idle_too_long_is_not_reused() {
        let (ep, accepted) = upstream(false).await;
        let (t, conns) = pool(Duration::from_millis(50), 8);
        let first = exchange(&t, &ep, &conns).await;
        give_back(&t, &conns, first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = exchange(&t, &ep, &conns).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_reused() {
        let (ep, accepted) = upstream(true).await;
        let (t, conns) = pool(Duration::from_secs(30), 8);
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
        let (t, conns) = pool(Duration::from_secs(30), 2);
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
