//! Phases 1 and 2, accept and parse: listeners, TLS, connection limits, hyper's HTTP/1.1 and
//! HTTP/2 servers with their limits, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::context::{ConnInfo, Shared};
use crate::io::{HeadTimeout, IdleIo, Parks, Streams, TlsParking};
use crate::placement;

/// Binds a listener socket.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections on `listener` until `stop` turns true, serving each through the
/// pipeline. Each connection holds a clone of `drain` until it ends, so shutdown can wait
/// for them; when `stop` turns true they finish gracefully.
///
/// A full listener (`max_connections` open) closes its longest-idle connections to admit a
/// new one, and so does a process out of file descriptors, any listener's, the new one
/// waiting while they close (a few rounds of [`ROOM_WAIT`] at most); when nothing is idle or
/// closing the new connection is closed at once (shed), never left waiting in the kernel's
/// queue. Both are counted, and logged once per [`PRESSURE_LOG_EVERY`].
pub async fn accept_loop(
    shared: Arc<Shared>,
    index: usize,
    listener: TcpListener,
    drain: mpsc::Sender<()>,
    mut stop: watch::Receiver<bool>,
) {
    let mut slots = Slots::new(
        shared.snapshot.load().listeners[index]
            .limits
            .max_connections,
    );
    let mut pressure = Pressure::default();
    let mut spare = Spare::open();
    loop {
        let (stream, peer) = tokio::select! {
            // The new socket's registration lives as long as the connection.
            r = std::future::poll_fn(|cx| placement::long_lived(|| listener.poll_accept(cx))) => match r {
                Ok(pair) => pair,
                Err(e) => {
                    let snapshot = shared.snapshot.load_full();
                    let entry = &snapshot.listeners[index];
                    out_of_room(&shared, entry, &listener, &mut spare, &mut pressure, e).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let snapshot = shared.snapshot.load_full();
        let entry = &snapshot.listeners[index];
        // A reload may have changed the cap: it applies from this connection on.
        slots.resize(entry.limits.max_connections);
        let permit = match slots.sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                match make_room(&shared, index, entry, &slots, &mut pressure).await {
                    Some(p) => p,
                    None => {
                        // Closed at once: the client sees the connection end, not a wait.
                        drop(stream);
                        entry.metrics.shed();
                        pressure.shed += 1;
                        pressure.report(&entry.name, Some(entry.limits.max_connections));
                        continue;
                    }
                }
            }
        };
        pressure.closing_waits = 0;
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let drain = drain.clone();
        let stop = stop.clone();
        // The connection's slot and its place in the drain go with it, to a tunnel too.
        let metrics = entry.metrics.clone();
        metrics.opened();
        let held = Held {
            permit: Some(permit),
            debt: slots.debt.clone(),
            _drain: drain,
            metrics,
        };
        // The connection's task and what it keeps while it lives are made here, apart from
        // what its requests will allocate (see `placement`).
        placement::long_lived(|| {
            tokio::spawn(serve_connection(
                shared, index, entry, stream, peer, stop, held,
            ))
        });
    }
}

/// How often a listener under pressure (full, or out of descriptors) says so at most.
pub const PRESSURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long a new connection waits for the idle ones asked to close to be gone.
const ROOM_WAIT: Duration = Duration::from_millis(250);

/// Rounds of [`ROOM_WAIT`] new clients wait, one after another, for connections asked to
/// close earlier and still closing, with nothing else to close; past them, new clients are
/// shed until a connection is admitted again or more are asked to close. A connection that
/// cannot finish closing (a client that reads nothing, so that even a TLS close waits)
/// delays new clients by a second at most, never locks them out.
const CLOSING_ROUNDS: u32 = 4;

/// The listener is full: asks its longest-idle connections to close and waits for a slot.
/// `None` when nothing is idle or still closing (within [`CLOSING_ROUNDS`]), or no slot came
/// free in time.
async fn make_room(
    shared: &Shared,
    index: usize,
    entry: &crate::snapshot::ListenerEntry,
    slots: &Slots,
    pressure: &mut Pressure,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let evicted = shared.roster.evict(Some(index));
    if evicted > 0 {
        entry.metrics.evicted(evicted);
        pressure.evicted += evicted as u64;
        pressure.report(&entry.name, Some(entry.limits.max_connections));
        pressure.closing_waits = 0;
    } else if !(shared.roster.closing(Some(index)) && pressure.wait_for_closing()) {
        return None;
    }
    tokio::time::timeout(ROOM_WAIT, slots.sem.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// An accept failed. Out of file descriptors: idle connections of any listener are asked to
/// close and the accept is tried again once one has; with none idle or closing (or closing
/// for longer than [`CLOSING_ROUNDS`] allow), the spare descriptor is given up to take the
/// waiting connection and close it (and taken again). Other failures back off briefly. Said
/// once per [`PRESSURE_LOG_EVERY`].
async fn out_of_room(
    shared: &Shared,
    entry: &crate::snapshot::ListenerEntry,
    listener: &TcpListener,
    spare: &mut Spare,
    pressure: &mut Pressure,
    e: std::io::Error,
) {
    if !crate::io::out_of_descriptors(&e) {
        pressure.failed(e);
        pressure.report(&entry.name, None);
        // A transient failure (the peer gave up before its accept, say): go on, after a
        // pause that keeps a failing listener from spinning.
        tokio::time::sleep(Duration::from_millis(10)).await;
        return;
    }
    pressure.out_of_descriptors += 1;
    let left = shared.roster.left();
    let mut left = std::pin::pin!(left.notified());
    left.as_mut().enable();
    let evicted = shared.roster.evict(None);
    if evicted > 0 {
        entry.metrics.evicted(evicted);
        pressure.evicted += evicted as u64;
        pressure.report(&entry.name, None);
        pressure.closing_waits = 0;
    }
    // Connections asked to close earlier and not yet gone free their descriptors in a
    // moment: the new client waits for them rather than being shed (a few rounds at most).
    if evicted > 0 || (shared.roster.closing(None) && pressure.wait_for_closing()) {
        let _ = tokio::time::timeout(ROOM_WAIT, left).await;
        return;
    }
    if spare.shed(listener) {
        entry.metrics.shed();
        pressure.shed += 1;
        pressure.report(&entry.name, None);
        return;
    }
    pressure.failed(e);
    pressure.report(&entry.name, None);
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// A descriptor kept open (on `/dev/null`) so that a process out of descriptors can still
/// take a waiting connection and close it, instead of leaving it in the kernel's queue.
struct Spare(Option<std::fs::File>);

impl Spare {
    fn open() -> Spare {
        Spare(std::fs::File::open("/dev/null").ok())
    }

    /// Gives the spare up for an accept, closes what came, and takes the spare again.
    /// Whether a connection was taken.
    fn shed(&mut self, listener: &TcpListener) -> bool {
        if self.0.take().is_none() {
            *self = Spare::open();
            return false;
        }
        let taken = match futures_util::FutureExt::now_or_never(listener.accept()) {
            Some(Ok((stream, _))) => {
                drop(stream);
                true
            }
            _ => false,
        };
        *self = Spare::open();
        taken
    }
}

/// What a listener under pressure has to say, said at most once per
/// [`PRESSURE_LOG_EVERY`].
#[derive(Default)]
struct Pressure {
    last: Option<std::time::Instant>,
    evicted: u64,
    shed: u64,
    out_of_descriptors: u64,
    failures: u64,
    error: Option<std::io::Error>,
    /// Rounds waited in a row for connections still closing, with none asked to close
    /// since and none admitted.
    closing_waits: u32,
}

impl Pressure {
    /// Whether a new client may wait one more round for connections still closing.
    fn wait_for_closing(&mut self) -> bool {
        self.closing_waits += 1;
        self.closing_waits <= CLOSING_ROUNDS
    }

    fn failed(&mut self, e: std::io::Error) {
        self.failures += 1;
        self.error = Some(e);
    }

    /// Logs what happened since the last report, if that was long enough ago.
    fn report(&mut self, listener: &str, max_connections: Option<usize>) {
        if self
            .last
            .is_some_and(|at| at.elapsed() < PRESSURE_LOG_EVERY)
        {
            return;
        }
        self.last = Some(std::time::Instant::now());
        let error = self.error.take().map(|e| e.to_string());
        tracing::warn!(
            listener,
            max_connections,
            idle_closed = self.evicted,
            new_closed = self.shed,
            out_of_descriptors = self.out_of_descriptors,
            accept_failures = self.failures,
            error,
            "listener under pressure: idle connections closed to admit new ones, or new ones closed (counts since the last report)"
        );
        self.evicted = 0;
        self.shed = 0;
        self.out_of_descriptors = 0;
        self.failures = 0;
    }
}

/// A listener's connection slots: `max_connections` of them, resized when a reload changes
/// the cap. Shrinking below the connections open takes effect as they close.
struct Slots {
    sem: Arc<Semaphore>,
    size: usize,
    /// Slots to retire as connections close, when the cap shrank below those open.
    debt: Arc<std::sync::atomic::AtomicUsize>,
}

impl Slots {
    fn new(size: usize) -> Slots {
        Slots {
            sem: Arc::new(Semaphore::new(size)),
            size,
            debt: Arc::default(),
        }
    }

    fn resize(&mut self, want: usize) {
        use std::sync::atomic::Ordering;
        if want > self.size {
            let more = want - self.size;
            // Slots still owed are cancelled first.
            let owed = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d.saturating_sub(more))
                })
                .unwrap_or(0);
            self.sem.add_permits(more - owed.min(more));
        } else if want < self.size {
            let fewer = self.size - want;
            let retired = self.sem.forget_permits(fewer);
            self.debt.fetch_add(fewer - retired, Ordering::AcqRel);
        }
        self.size = want;
    }
}

/// What a connection holds until it ends (a WebSocket tunnel's included): its listener slot
/// and its place in the drain. Dropped, the slot is given back, or retired while the cap is
/// shrinking.
struct Held {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    debt: Arc<std::sync::atomic::AtomicUsize>,
    _drain: mpsc::Sender<()>,
    /// Counts the connection open until it ends.
    metrics: Arc<drawbridge_telemetry::metrics::ListenerMetrics>,
}

impl Drop for Held {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.metrics.closed();
        let owed = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1));
        if let (Ok(_), Some(permit)) = (owed, self.permit.take()) {
            permit.forget();
        }
    }
}

/// One accepted connection, as its protocol's server needs it.
struct Accepted {
    shared: Arc<Shared>,
    index: usize,
    peer: SocketAddr,
    limits: Arc<drawbridge_config::Limits>,
    streams: Arc<Streams>,
    stop: watch::Receiver<bool>,
    /// The slot and drain place, until `info` hands them to the connection's `ConnInfo`.
    held: Option<Held>,
    aged_at: tokio::time::Instant,
}

impl Accepted {
    /// What the pipeline knows of the connection; it holds the slot from now on.
    fn info(
        &mut self,
        tls: bool,
        client_cert: Option<drawbridge_identity::ClientCert>,
        sni: Option<Box<str>>,
    ) -> Arc<ConnInfo> {
        let conn = ConnInfo::new(
            self.index,
            self.peer,
            tls,
            client_cert,
            sni,
            self.streams.clone(),
        );
        Arc::new(match self.held.take() {
            Some(h) => conn.holding(self.stop.clone(), Box::new(h)),
            None => conn,
        })
    }

    /// Serves `c` (boxed by the caller: a task keeps the size of its largest state for as
    /// long as it lives, parked and idle included) until it ends, recording what the parser
    /// refused. Whether it ended without an error.
    async fn run<C, E>(
        &mut self,
        c: std::pin::Pin<&mut C>,
        shutdown: impl Fn(std::pin::Pin<&mut C>),
    ) -> bool
    where
        C: std::future::Future<Output = Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = std::time::Instant::now();
        let ended = self.drive(c, shutdown).await;
        self.ended(ended, started)
    }

    /// Drives `c` to its end (see [`drive`]).
    async fn drive<C, E>(
        &mut self,
        c: std::pin::Pin<&mut C>,
        shutdown: impl Fn(std::pin::Pin<&mut C>),
    ) -> Result<(), E>
    where
        C: std::future::Future<Output = Result<(), E>>,
    {
        drive(
            c,
            &mut self.stop,
            &self.limits,
            &self.streams,
            self.aged_at,
            shutdown,
        )
        .await
    }

    /// Whether the connection `started` then ended cleanly; what the parser refused is
    /// recorded.
    fn ended<E>(&self, ended: Result<(), E>, started: std::time::Instant) -> bool
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match ended {
            Ok(()) => true,
            Err(e) => {
                let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                refused_by_parser(&self.shared, self.index, self.peer, &*e, started);
                false
            }
        }
    }
}

/// The pipeline, as hyper's service for one connection.
fn pipeline(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::body::ResponseBody>,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    service_fn(move |req| {
        let shared = shared.clone();
        // Open from the moment the server has the request, not from the future's first
        // poll: an HTTP/1.1 server reads on (to see the client leave) before it polls the
        // request's future, and such a read must not find the connection idle and park it.
        let stream = conn.streams.open();
        // hyper's service future is the pipeline's own, not one around it that would keep
        // the request a second time.
        futures_util::FutureExt::map(
            crate::pipeline::handle(shared, conn.clone(), stream, req),
            Ok::<_, std::convert::Infallible>,
        )
    })
}

/// A new connection's state, made at once (its task is spawned with what it returns), and
/// the future that serves it; `entry` is its listener as the snapshot it was accepted under
/// has it.
fn serve_connection(
    shared: Arc<Shared>,
    index: usize,
    entry: &crate::snapshot::ListenerEntry,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    held: Held,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    use futures_util::future::Either;
    let limits = entry.limits.clone();
    let offers_h2 = entry.http2;
    let tls = entry.tls.clone();
    let streams = Arc::new(Streams::with(
        held.metrics.clone(),
        shared.roster.eviction(),
    ));
    // Listed while hyper serves it, so a full listener can close it when idle.
    let listed = shared.roster.enter(index, streams.clone());
    let io = IdleIo::new(
        stream,
        limits.idle_timeout,
        limits.header_read_timeout,
        tls.is_none(),
        streams.clone(),
    );
    let aged_at = tokio::time::Instant::now() + limits.max_connection_age;
    let conn = Accepted {
        shared,
        index,
        peer,
        limits,
        streams,
        stop,
        held: Some(held),
        aged_at,
    };
    // Each protocol's state in a box of its own, so that no connection carries another's.
    let serving = match tls {
        None => Either::Left(Box::pin(serve_plain(conn, io, offers_h2))),
        Some(cfg) => Either::Right(Box::pin(serve_tls(conn, io, cfg))),
    };
    async move {
        let _listed = listed;
        serving.await
    }
}

/// hyper's HTTP/1.1 server with the listener's limits.
fn h1_server(limits: &drawbridge_config::Limits) -> hyper::server::conn::http1::Builder {
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        // Heads are timed by IdleIo, which answers 408 on the connection's own socket.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        // Checked on a whole head too, not only while one is arriving.
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .half_close(false)
        .keep_alive(true);
    h1
}

/// hyper's auto-detecting server (HTTP/1.1 and HTTP/2) with the listener's limits.
fn auto_server(
    limits: &drawbridge_config::Limits,
    offers_h2: bool,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .half_close(false)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    if !offers_h2 {
        builder = builder.http1_only();
    }
    builder
}

/// A plaintext connection: HTTP/2 with prior knowledge (its first bytes may be the
/// preface's), or HTTP/1.1 served by [`serve_h1`], which parks it while idle.
///
/// The sniff, and an HTTP/2 connection, are served in a box: once the connection is known
/// to speak HTTP/1.1 it goes on without them, and a parked connection's state is its
/// socket, what it was accepted with, and the wait for its next bytes.
fn serve_plain(
    conn: Accepted,
    io: IdleIo<TcpStream>,
    offers_h2: bool,
) -> impl std::future::Future<Output = ()> + Send {
    use futures_util::FutureExt;
    use futures_util::future::Either;
    if !offers_h2 {
        return Either::Left(plain_h1(conn, io));
    }
    Either::Right(
        Box::pin(h2_by_prior_knowledge(conn, io)).then(|h1| match h1 {
            Some((conn, io)) => Either::Left(plain_h1(conn, io)),
            None => Either::Right(std::future::ready(())),
        }),
    )
}

/// Serves a plaintext connection known to speak HTTP/2 with prior knowledge; hands it back
/// when it speaks HTTP/1.1 instead. Nothing when it is to close.
async fn h2_by_prior_knowledge(
    mut conn: Accepted,
    io: IdleIo<TcpStream>,
) -> Option<(Accepted, IdleIo<TcpStream>)> {
    match sniff_h2(&mut conn, &io).await? {
        false => Some((conn, io)),
        true => {
            let info = placement::long_lived(|| conn.info(false, None, None));
            let c = auto_server(&conn.limits, true)
                .serve_connection_with_upgrades(
                    TokioIo::new(io),
                    pipeline(conn.shared.clone(), info),
                )
                .into_owned();
            Box::pin(conn.run(Box::pin(c).as_mut(), |c| c.graceful_shutdown())).await;
            None
        }
    }
}

/// HTTP/1.1 on a plaintext connection, parking while idle.
fn plain_h1(
    mut conn: Accepted,
    mut io: IdleIo<TcpStream>,
) -> impl std::future::Future<Output = ()> + Send {
    let info = placement::long_lived(|| conn.info(false, None, None));
    io.set_parkable();
    serve_h1(conn, io, info)
}

/// HTTP/1.1 by hyper's HTTP/1.1 server directly, parking whenever the connection is idle
/// for a sweep of the roster: hyper's connection (its state and buffers) goes, and is made
/// again when the client next sends.
///
/// A plain function around an `async move` block that uses its arguments in place (an
/// `async fn` would keep a second copy of each), and hyper's connection and its driver,
/// which live only while requests are served, are boxed.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a copy of each argument beside the one it moves"
)]
fn serve_h1<P: Parks>(
    mut conn: Accepted,
    mut io: P,
    info: Arc<ConnInfo>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        loop {
            let mut c = Box::new(
                h1_server(&conn.limits)
                    .serve_connection(
                        TokioIo::new(io),
                        pipeline(conn.shared.clone(), info.clone()),
                    )
                    .with_upgrades(),
            );
            // Boxed with what it needs while requests are served (when it began), so that the
            // state every idle connection keeps does not carry it.
            let (ended, started) = Box::pin(async {
                let started = std::time::Instant::now();
                let ended = conn
                    .drive(std::pin::Pin::new(&mut *c), |c| c.graceful_shutdown())
                    .await;
                (ended, started)
            })
            .await;
            let Some((back, held)) = parked(c) else {
                conn.ended(ended, started);
                return;
            };
            io = back;
            // The end of input hyper saw was the park's: an error it made of that (a
            // pipelined head cut short) is not the client's. A head already begun goes on
            // at once.
            let begun = !held.is_empty();
            io.unpark(held);
            if begun {
                continue;
            }
            let metrics = info.streams.listener();
            metrics.parked(true);
            // Until the next head's deadline: a kept-alive connection's wait for its next
            // request, at most until the connection's age is up.
            let until = conn
                .aged_at
                .min(tokio::time::Instant::now() + conn.limits.header_read_timeout);
            let stop = &conn.stop;
            let woke = io.idle_io().parked_until(until, || *stop.borrow()).await;
            metrics.parked(false);
            if !woke {
                return;
            }
        }
    }
}

/// Whether a plaintext connection speaks HTTP/2 with prior knowledge (its first bytes are the
/// preface's); `None` when it is to close: nothing came in time, it closed, or it was evicted.
async fn sniff_h2(conn: &mut Accepted, io: &IdleIo<TcpStream>) -> Option<bool> {
    let sniff = first_bytes_h2(io.get_ref());
    let mut sniff = std::pin::pin!(sniff);
    let first = tokio::select! {
        r = tokio::time::timeout(conn.limits.header_read_timeout, sniff.as_mut()) => r,
        () = conn.streams.eviction.evicted() => return None,
        // Draining: a connection accepted just before has as long as `drive` gives
        // one whose first request has not started, not a whole head timeout.
        () = draining(&mut conn.stop) => {
            let grace = FIRST_REQUEST_GRACE.min(conn.limits.header_read_timeout);
            tokio::time::timeout(grace, sniff.as_mut()).await
        }
    };
    // Nothing in time, or closed: as IdleIo would, without a word.
    first.ok().flatten()
}

/// The socket of a connection hyper finished because it parked, hyper's state let go, and
/// the bytes it had read and not parsed; `None` when it finished otherwise: upgraded (a
/// tunnel has the socket), or closed.
///
/// Takes hyper's connection boxed, so that the box is freed here, before the connection
/// waits parked, and not kept (empty) until the loop around it goes on.
#[expect(
    clippy::boxed_local,
    reason = "the box is freed here, not in the caller's parked wait"
)]
fn parked<P: Parks, S>(
    c: Box<hyper::server::conn::http1::UpgradeableConnection<TokioIo<P>, S>>,
) -> Option<(P, bytes::Bytes)>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::body::ResponseBody>,
{
    let parts = (*c).into_parts()?;
    if !parts.io.inner().is_parked() {
        return None;
    }
    Some((parts.io.into_inner(), parts.read_buf))
}

/// A TLS connection: the handshake (its client certificate and SNI read once, here), then
/// HTTP/2 when ALPN agreed on `h2`, HTTP/1.1 otherwise.
async fn serve_tls(mut conn: Accepted, io: IdleIo<TcpStream>, cfg: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let handshake = tokio::select! {
        r = tokio::time::timeout(conn.limits.header_read_timeout, acceptor.accept(io)) => r,
        // Closed to admit another connection before saying anything.
        () = conn.streams.eviction.evicted() => return,
    };
    let mut tls_stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
            record_refused(
                &conn.shared,
                conn.index,
                conn.peer,
                Refused {
                    status: 0,
                    protocol: "TLS",
                    phase: drawbridge_telemetry::Phase::Accept,
                    reason: format!("TLS handshake refused: {e}"),
                    duration: Duration::ZERO,
                },
            );
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "TLS handshake timed out");
            return;
        }
    };
    // HTTP/2 over TLS is agreed in the handshake or not spoken (RFC 9113 §3.3: prior
    // knowledge is for cleartext only); the handshake agrees on nothing the listener does
    // not offer. Without ALPN, as with `http/1.1`, the client speaks HTTP/1.1.
    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
    // The first request's clock starts when the handshake is done.
    tls_stream.get_mut().0.handshake_done(h2);
    let session = tls_stream.get_ref().1;
    let sni: Option<Box<str>> = session.server_name().map(Into::into);
    // The handshake verified the chain; its names are read once, here.
    let client_cert = match session.peer_certificates().filter(|c| !c.is_empty()) {
        None => None,
        Some(chain) => match drawbridge_identity::ClientCert::from_chain(chain) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::debug!(peer = %conn.peer, error = %e, "unreadable client certificate");
                return;
            }
        },
    };
    let info = placement::long_lived(|| conn.info(true, client_cert, sni));
    if !h2 {
        // HTTP/1.1: hyper's HTTP/1.1 server alone, above TLS, and parking while idle as over
        // plaintext (the TLS session stays; hyper's state goes).
        serve_h1(conn, TlsParking::new(tls_stream), info).await;
        return;
    }
    let service = pipeline(conn.shared.clone(), info);
    let c = auto_server(&conn.limits, true)
        .http2_only()
        .serve_connection_with_upgrades(TokioIo::new(tls_stream), service)
        .into_owned();
    conn.run(Box::pin(c).as_mut(), |c| c.graceful_shutdown())
        .await;
}

/// Serves `conn` until it ends. It is asked to finish gracefully (HTTP/2 `GOAWAY`, HTTP/1.1
/// `Connection: close` after the request in flight) when the proxy stops or the connection
/// reaches its `max_connection_age`.
///
/// A connection accepted just before the stop, whose first request is still on its way
/// (or sits unread in the socket), is not closed as idle: closing a socket with a request
/// unread in it resets the connection, and the client, which sent its request to a
/// listening socket, sees an error. It gets until its first request starts, for at most
/// [`FIRST_REQUEST_GRACE`] (or its head timeout, if shorter), and is then asked to finish
/// like any other.
///
/// The connection is polled first, every time its task wakes (twice a request); the waits
/// beside it (its age, the roster's asks, the stop signal) registered their wakers on the
/// first poll and are polled again only when a cheap look says one may be over: what a
/// `select!` over all of them cost every request (a timer, a watch and a random order
/// polled at each wake) is a few loads.
async fn drive<C, R>(
    mut conn: std::pin::Pin<&mut C>,
    stop: &mut watch::Receiver<bool>,
    limits: &drawbridge_config::Limits,
    streams: &Streams,
    aged_at: tokio::time::Instant,
    shutdown: impl Fn(std::pin::Pin<&mut C>),
) -> R
where
    C: std::future::Future<Output = R>,
{
    use std::task::Poll;
    let mut asked = streams.eviction.asks();
    let mut aged = std::pin::pin!(tokio::time::sleep_until(aged_at));
    // The stop signal looked at without waiting on it; `changed` waits, once (the signal
    // only ever turns on).
    let signal = stop.clone();
    let mut changed = std::pin::pin!(stop.changed());
    let mut watching = true;
    let grace = FIRST_REQUEST_GRACE.min(limits.header_read_timeout);
    // Stopping, and until when a first request may still start.
    let mut stopping: Option<tokio::time::Instant> = None;
    // While stopping, a look for a first request (the pipeline counts it) every 10 ms.
    let mut recheck: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut closing = false;
    let mut first = true;
    std::future::poll_fn(|cx| {
        loop {
            if !closing
                && let Some(until) = stopping
                && (!streams.none_started() || tokio::time::Instant::now() >= until)
            {
                closing = true;
                shutdown(conn.as_mut());
            }
            if !closing && stopping.is_none() && *signal.borrow() {
                stopping = Some(tokio::time::Instant::now() + grace);
                continue;
            }
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            let registering = first;
            if !closing && (registering || aged.is_elapsed()) && aged.as_mut().poll(cx).is_ready() {
                closing = true;
                shutdown(conn.as_mut());
                continue;
            }
            // Asked by the roster: to close, idle, to admit a new connection (hyper closes an
            // idle HTTP/1.1 connection at once, and IdleIo ends one that would wait for
            // bytes); to park (the connection, polled again, reads an end of input); or to
            // look at the stop signal (a drain).
            if !closing && streams.eviction.poll_asked_since(asked, cx).is_ready() {
                asked = streams.eviction.asks();
                if streams.eviction.is_evicted() {
                    closing = true;
                    shutdown(conn.as_mut());
                }
                continue;
            }
            // Sent, or its sender gone (then stopping all the same).
            if watching
                && stopping.is_none()
                && (registering || !matches!(signal.has_changed(), Ok(false)))
                && let Poll::Ready(r) = changed.as_mut().poll(cx)
            {
                watching = false;
                if r.is_err() || *signal.borrow() {
                    stopping = Some(tokio::time::Instant::now() + grace);
                }
                continue;
            }
            if stopping.is_some() && !closing {
                let tick = recheck
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(10))));
                if tick.as_mut().poll(cx).is_ready() {
                    recheck = None;
                    continue;
                }
            }
            // Every wait has its waker now: from here on each is looked at first.
            first = false;
            return Poll::Pending;
        }
    })
    .await
}

/// Resolves once the proxy is stopping (or its stop signal is gone).
async fn draining(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await.map(|_| ());
}

/// Whether the first bytes on `stream` may be HTTP/2's preface (what arrived so far matches
/// its start); `None` when the peer closed without sending anything.
async fn first_bytes_h2(stream: &TcpStream) -> Option<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    let n = stream.peek(&mut buf).await.ok()?;
    (n > 0).then(|| buf[..n] == PREFACE[..n])
}

/// How long a connection accepted just before a drain has for its first request to start.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// How long the head that timed out could take, when `e` is a head timeout of [`IdleIo`].
fn head_timeout(e: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<HeadTimeout>() {
            return Some(t.0);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<HeadTimeout>())
        {
            return Some(t.0);
        }
        cur = err.source();
    }
    None
}

/// Records a request the HTTP parser refused, or whose head did not arrive in time (answered
/// 408 on plaintext connections), when `e` says so.
fn refused_by_parser(
    shared: &Shared,
    index: usize,
    peer: SocketAddr,
    e: &(dyn std::error::Error + 'static),
    started: std::time::Instant,
) {
    if let Some(limit) = head_timeout(e) {
        let tls = shared.snapshot.load().listeners[index].tls.is_some();
        record_refused(
            shared,
            index,
            peer,
            Refused {
                status: if tls { 0 } else { 408 },
                protocol: "HTTP/1.1",
                phase: drawbridge_telemetry::Phase::Parse,
                reason: format!("request head not received within {limit:?}"),
                duration: limit,
            },
        );
        return;
    }
    if let Some(status) = parse_refusal(e) {
        record_refused(
            shared,
            index,
            peer,
            Refused {
                status,
                protocol: "HTTP/1.1",
                phase: drawbridge_telemetry::Phase::Parse,
                reason: format!("refused by the HTTP parser: {e}"),
                duration: started.elapsed(),
            },
        );
    }
}

/// A request or connection refused before the pipeline saw it.
struct Refused {
    status: u16,
    protocol: &'static str,
    phase: drawbridge_telemetry::Phase,
    reason: String,
    duration: Duration,
}

/// Records what the HTTP parser refused (hyper has already answered it: 400, 414 or 431), or
/// a TLS handshake refused, so that nothing refused goes unlogged.
fn record_refused(shared: &Shared, index: usize, peer: SocketAddr, r: Refused) {
    let listener = shared.snapshot.load().listeners[index].name.clone();
    shared.log.record(drawbridge_telemetry::AccessEvent {
        time: std::time::SystemTime::now() - r.duration,
        request_id: shared.ids.next(),
        trace_id: None,
        listener,
        host: None,
        route: None,
        client: peer.to_string().into(),
        forwarded_for: None,
        principal: None,
        method: "".into(),
        path: String::new(),
        protocol: r.protocol,
        status: r.status,
        grpc_status: None,
        bytes_sent: 0,
        bytes_received: None,
        upstream: None,
        duration_us: u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX),
        phase: Some(r.phase),
        reason: Some(r.reason),
    });
}

/// The status hyper answered a request it could not parse with, when `e` is such an error.
fn parse_refusal(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                return Some(431);
            }
            if h.is_parse() || h.is_parse_status() {
                return Some(400);
            }
            return None;
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_clients_wait_for_closing_connections_a_few_rounds_only() {
        let mut p = Pressure::default();
        for round in 1..=CLOSING_ROUNDS {
            assert!(p.wait_for_closing(), "round {round} waits");
        }
        assert!(!p.wait_for_closing(), "past the bound: shed, not wait");
        assert!(!p.wait_for_closing(), "and so on, while nothing changes");
        p.closing_waits = 0;
        assert!(
            p.wait_for_closing(),
            "after an admission or an eviction, waits again"
        );
    }
}
