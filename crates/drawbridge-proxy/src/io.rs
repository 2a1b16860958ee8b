//! Connection I/O with deadlines: a connection that brings no request within the listener's
//! `header_read_timeout` is closed, and so is one idle for at least `idle_timeout` (and at
//! most twice that). Idle means no bytes moving for HTTP/1.1 (and upgraded tunnels), and no
//! stream open or opened for HTTP/2, where keep-alive PINGs and SETTINGS move bytes without
//! doing anything.
//!
//! An HTTP/1.1 request head that starts arriving but is not complete within
//! `header_read_timeout` is answered `408` here, on the connection's own socket (hyper's
//! timer would close it without a word, and answering after hyper gave up took a second
//! descriptor per connection).
//!
//! The deadline is coarse on purpose: reads and writes only mark the connection active, and
//! the timer is looked at when it fires, so the request path never reads the clock or
//! touches the timer wheel.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Wraps a connection and fails reads once it was idle too long, or a request head took
/// too long.
pub struct IdleIo<T> {
    inner: T,
    idle: Duration,
    /// Bytes moved since the deadline was last armed.
    active: bool,
    deadline: Pin<Box<Sleep>>,
    /// The task the deadline will wake; a WebSocket relay polls from another task.
    armed_for: Option<Waker>,
    /// The requests the connection carried, counted by the pipeline.
    streams: Arc<Streams>,
    /// The connection speaks HTTP/2: only streams count as activity.
    h2: bool,
    /// Whether the first bytes (of a plaintext connection) were looked at for the HTTP/2
    /// preface.
    sniffed: bool,
    /// Whether any bytes were read since the clock for the first request started.
    read_any: bool,
    /// `Streams::started` when the deadline was last armed.
    last_started: u64,
    /// Waiting for the first request: how long it may take, and until when.
    first_request: Option<(Duration, Instant)>,
    /// When the current idle window ends.
    idle_at: Instant,
    /// How long an HTTP/1.1 request head may take; the deadline also fires this often.
    head_timeout: Duration,
    /// Bytes were read since the last write: a request is arriving (or its body is).
    reading: bool,
    /// Writes so far, to tell one pending head from the next.
    writes: u64,
    /// Waiting for a head when the deadline last fired: (writes, requests started, bytes
    /// of it read).
    head_pending: Option<(u64, u64, bool)>,
    /// The socket is the client's own (no TLS above it): a `408` can be written to it.
    plaintext: bool,
    /// HTTP/1.1 served by a connection that can be rebuilt: how it parks when asked while
    /// idle.
    parking: Parking,
    /// Asked to park and idle: the read ended (or, under TLS, the layer above ends it) and
    /// the shutdown that follows is not passed on.
    parked: bool,
    /// Bytes the previous HTTP/1.1 connection had read but not parsed when it parked (the
    /// start of a pipelined head), given to the next one before the socket's.
    replay: Option<Box<bytes::Bytes>>,
}

/// How an idle HTTP/1.1 connection parks when the roster asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parking {
    /// It does not (HTTP/2, or not yet known).
    No,
    /// Hyper reads this socket: the read ends (EOF) and hyper lets the connection go.
    Here,
    /// TLS is above: ending the read here would be a TLS error; [`TlsParking`] ends it
    /// above TLS when TLS has nothing either.
    Above,
}

/// The error a connection ends with when a request head did not arrive in time; the
/// client was answered `408` where the socket allows.
#[derive(Debug, thiserror::Error)]
#[error("request head not received within {0:?}")]
pub struct HeadTimeout(pub Duration);

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// The requests of one connection, as the pipeline sees them: how many started, how many are
/// still open (their response not yet finished).
#[derive(Debug, Default)]
pub struct Streams {
    started: AtomicU64,
    open: AtomicUsize,
    /// The listener's counters, where open requests are counted too.
    listener: Arc<drawbridge_telemetry::metrics::ListenerMetrics>,
    /// When the connection last went idle, and whether it was chosen to close.
    pub eviction: Eviction,
}

/// One open request of a connection; closes it when dropped.
#[derive(Debug)]
pub struct StreamGuard(Arc<Streams>);

impl Streams {
    /// The requests of a connection on the listener counted by `listener`.
    pub fn on(listener: Arc<drawbridge_telemetry::metrics::ListenerMetrics>) -> Self {
        Streams::with(listener, Eviction::default())
    }

    /// The requests of a connection a [`crate::roster::Roster`] may close when idle.
    pub fn with(
        listener: Arc<drawbridge_telemetry::metrics::ListenerMetrics>,
        eviction: Eviction,
    ) -> Self {
        Streams {
            listener,
            eviction,
            started: AtomicU64::new(0),
            open: AtomicUsize::new(0),
        }
    }

    /// The listener's counters.
    pub fn listener(&self) -> &Arc<drawbridge_telemetry::metrics::ListenerMetrics> {
        &self.listener
    }

    /// How many requests started on the connection.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether no request is open on the connection.
    pub fn is_idle(&self) -> bool {
        self.open.load(Ordering::Relaxed) == 0
    }

    /// Counts a request that started; it stays open until the guard is dropped.
    pub fn open(self: &Arc<Self>) -> StreamGuard {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        self.listener.stream_opened();
        StreamGuard(self.clone())
    }

    /// Whether no request has started on the connection yet.
    pub fn none_started(&self) -> bool {
        self.started.load(Ordering::Relaxed) == 0
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.eviction.went_idle();
        }
        self.0.listener.stream_closed();
    }
}

/// Whether `e` says the process ran out of file descriptors (or the kernel of socket
/// memory): a failure of this process, never of the peer.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// What a connection shares with the roster: when it last went idle, and the requests to
/// close it or to park it.
///
/// Only the connection's own task waits on it (one waker, not a list of waiters): a request
/// moves `asks` and wakes that task, which looks at the flags.
#[derive(Debug, Default)]
pub struct Eviction {
    /// The idle clock when the connection's last request ended (or it was accepted).
    pub(crate) idle_since: AtomicU64,
    /// Set when the connection is to close.
    pub(crate) evicted: AtomicBool,
    /// Set when the connection, idle since the previous sweep, is to park.
    pub(crate) park: AtomicBool,
    /// Whether the connection can park (HTTP/1.1 served by a connection that can be
    /// rebuilt); an HTTP/2 one is asked too, and never does.
    parkable: AtomicBool,
    /// Moves each time the roster asks something of the connection.
    asks: AtomicU32,
    /// The connection's task, woken when the roster asks.
    waker: AtomicWaker,
    pub(crate) clock: Arc<AtomicU64>,
}

impl Eviction {
    /// A connection's, on the roster's idle `clock`; idle from now.
    pub fn on(clock: Arc<AtomicU64>) -> Eviction {
        let e = Eviction {
            clock,
            ..Eviction::default()
        };
        e.idle_now();
        e
    }

    /// Marks the connection idle from now.
    pub(crate) fn idle_now(&self) {
        self.idle_since
            .store(self.clock.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The connection's last open request ended. Asked to park meanwhile, and able to,
    /// its task looks again: the server may have looked for the next request before this
    /// one ended (and found it busy), and the roster asks only once.
    fn went_idle(&self) {
        self.idle_now();
        if self.park.load(Ordering::Relaxed) && self.parkable.load(Ordering::Relaxed) {
            self.waker.wake();
        }
    }

    /// Whether the connection was chosen to close.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Asks something of the connection (the flags say what: to close, to park, or to look
    /// at the stop signal) and wakes its task.
    pub(crate) fn ask(&self) {
        self.asks.fetch_add(1, Ordering::Release);
        self.waker.wake();
    }

    /// How many times the roster asked so far, for [`Eviction::poll_asked_since`].
    pub fn asks(&self) -> u32 {
        self.asks.load(Ordering::Acquire)
    }

    /// Ready once the roster asked something of the connection since it had asked `seen`
    /// times; the task polling is woken then.
    pub fn poll_asked_since(&self, seen: u32, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.asks() == seen {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Resolves once the connection was chosen to close.
    pub async fn evicted(&self) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.is_evicted() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Takes a request to park, if there is one.
    pub fn take_park(&self) -> bool {
        self.park.load(Ordering::Relaxed) && self.park.swap(false, Ordering::Relaxed)
    }
}

/// The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl<T> IdleIo<T> {
    /// Wraps `inner`; `streams` follows the requests the pipeline counts. The first request
    /// must start within `first_request`, and every HTTP/1.1 head arrive within it.
    pub fn new(
        inner: T,
        idle: Duration,
        first_request: Duration,
        plaintext: bool,
        streams: Arc<Streams>,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle,
            active: false,
            deadline: Box::pin(tokio::time::sleep(idle.min(first_request))),
            armed_for: None,
            streams,
            h2: false,
            sniffed: false,
            read_any: false,
            last_started: 0,
            first_request: Some((first_request, now + first_request)),
            idle_at: now + idle,
            head_timeout: first_request,
            reading: false,
            writes: 0,
            head_pending: None,
            plaintext,
            parking: Parking::No,
            parked: false,
            replay: None,
        }
    }

    /// Lets the connection park when the roster asks (plaintext HTTP/1.1).
    pub fn set_parkable(&mut self) {
        self.parks(Parking::Here);
    }

    /// Lets the connection park when the roster asks, HTTP/1.1 over TLS read through a
    /// [`TlsParking`].
    pub fn set_parkable_under_tls(&mut self) {
        self.parks(Parking::Above);
    }

    fn parks(&mut self, how: Parking) {
        self.parking = how;
        self.streams
            .eviction
            .parkable
            .store(true, Ordering::Relaxed);
    }

    /// Whether to park now, when a read would wait: idle between requests (nothing of a
    /// request read since the last response was written) and asked to. Marks it parked.
    fn park_now(&mut self) -> bool {
        self.parked = self.parking != Parking::No
            && !self.reading
            && !self.h2
            && self.streams.is_idle()
            && self.streams.eviction.take_park();
        self.parked
    }

    /// A request arrives from above (bytes replayed after a park, or decrypted by TLS):
    /// the connection does not park again until it is answered, and the head timeout
    /// applies.
    fn arriving(&mut self) {
        self.active = true;
        self.read_any = true;
        self.reading = true;
    }

    /// Whether the last read ended to park the connection.
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    /// Back from parking: reads and shutdowns are the socket's again, after `held`, the
    /// bytes the parked connection had read and not parsed.
    pub fn unpark(&mut self, held: bytes::Bytes) {
        self.parked = false;
        self.replay = (!held.is_empty()).then(|| Box::new(held));
    }

    /// The socket.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl IdleIo<tokio::net::TcpStream> {
    /// Parked: waits, on the connection's own deadline (set to `until`), for the client's
    /// next bytes. `true` when they arrive; `false` when the connection is to close:
    /// evicted, `stopping` (looked at first, and whenever the roster wakes the connection:
    /// at a drain it wakes them all), `until` passed, or the socket failed.
    ///
    /// The wait holds no state of its own (no timer, no waiter list entry beside the
    /// connection's), so a parked connection costs what its socket and deadline do.
    pub async fn parked_until(&mut self, until: Instant, stopping: impl Fn() -> bool) -> bool {
        self.armed_for = None;
        self.deadline.as_mut().reset(until);
        let woke = std::future::poll_fn(|cx| {
            self.streams.eviction.waker.register(cx.waker());
            if stopping() || self.streams.eviction.is_evicted() {
                return Poll::Ready(false);
            }
            if let Poll::Ready(r) = self.inner.poll_read_ready(cx) {
                return Poll::Ready(r.is_ok());
            }
            if self.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            Poll::Pending
        })
        .await;
        // The deadline is the connection's again: the next head's, or the idle window's.
        self.rearm();
        woke
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> IdleIo<T> {
    /// Arms the deadline for the earlier of the idle window's end and the first request's.
    fn rearm(&mut self) {
        let at = match self.first_request {
            Some((_, by)) => by.min(self.idle_at),
            // HTTP/1.1 heads are looked at every `head_timeout`: one pending at two
            // firings in a row took too long.
            None if !self.h2 => (Instant::now() + self.head_timeout).min(self.idle_at),
            None => self.idle_at,
        };
        self.armed_for = None;
        self.deadline.as_mut().reset(at);
    }

    /// After a TLS handshake: the first request's clock starts again, and ALPN has told
    /// whether the connection speaks HTTP/2.
    pub fn handshake_done(&mut self, h2: bool) {
        self.h2 = h2;
        self.sniffed = true;
        self.read_any = false;
        if let Some((limit, _)) = self.first_request {
            self.first_request = Some((limit, Instant::now() + limit));
            self.rearm();
        }
    }

    /// Called when a read would wait: fails once a whole period passed without traffic, or
    /// when the connection, idle, was chosen to close to admit another.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.streams.eviction.is_evicted() && self.streams.is_idle() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "idle connection closed to admit a new one",
            )));
        }
        loop {
            let armed = self
                .armed_for
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()));
            if armed && !self.deadline.is_elapsed() {
                return Poll::Pending;
            }
            match self.deadline.as_mut().poll(cx) {
                Poll::Pending => {
                    self.armed_for = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(()) => {
                    if let Some(e) = self.deadline_reached() {
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }

    /// The deadline fired: closes the connection (the error) or arms the next one.
    fn deadline_reached(&mut self) -> Option<io::Error> {
        let now = Instant::now();
        let started = self.streams.started.load(Ordering::Relaxed);
        if let Some((limit, by)) = self.first_request {
            // No request yet: nothing at all, or an HTTP/2 connection without a stream, is
            // closed; an HTTP/1.1 head that started arriving is answered 408.
            if started > 0 {
                self.first_request = None;
            } else if now >= by {
                if !self.h2 && self.read_any {
                    return Some(self.head_timed_out(limit));
                }
                return Some(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the header read timeout",
                ));
            }
        } else if !self.h2 {
            // Waiting for a head with no request in the pipeline (a tunnel's request stays
            // open): the same wait at two firings in a row took too long. A head that began
            // arriving is answered 408; a keep-alive connection that sent nothing is closed
            // quietly.
            let open = self.streams.open.load(Ordering::Relaxed);
            let waiting = (open == 0).then_some((self.writes, started, self.reading));
            if waiting.is_some() && waiting == self.head_pending {
                if self.reading {
                    return Some(self.head_timed_out(self.head_timeout));
                }
                return Some(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no new request on a kept-alive connection",
                ));
            }
            self.head_pending = waiting;
        }
        if now >= self.idle_at {
            let busy = if self.h2 {
                self.streams.open.load(Ordering::Relaxed) > 0 || started != self.last_started
            } else {
                self.active
            };
            if !busy {
                return Some(io::Error::new(io::ErrorKind::TimedOut, "connection idle"));
            }
            self.active = false;
            self.last_started = started;
            self.idle_at = now + self.idle;
        }
        self.rearm();
        None
    }

    /// Answers `408` where the socket is the client's own (one attempt that never waits: a
    /// client too slow to take it gets the close alone); the error that ends the connection.
    fn head_timed_out(&mut self, limit: Duration) -> io::Error {
        if self.plaintext {
            let waker = futures_noop_waker();
            let mut cx = Context::from_waker(&waker);
            let _ = Pin::new(&mut self.inner).poll_write(&mut cx, REQUEST_TIMEOUT);
        }
        io::Error::new(io::ErrorKind::TimedOut, HeadTimeout(limit))
    }

    /// Between reads that never wait (a client flooding frames): the deadline is looked at
    /// when it has fired, which costs one flag read otherwise.
    fn check_in_passing(&mut self) -> io::Result<()> {
        if self.deadline.is_elapsed()
            && let Some(e) = self.deadline_reached()
        {
            return Err(e);
        }
        Ok(())
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if replayed(&mut this.replay, buf) {
            // A head that began before the park: reading it is a request arriving, so the
            // connection does not park again until it is answered.
            this.arriving();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    if !this.sniffed {
                        this.sniffed = true;
                        let got = &buf.filled()[before..];
                        let n = got.len().min(H2_PREFACE.len());
                        this.h2 = n > 0 && got[..n] == H2_PREFACE[..n];
                    }
                    this.active = true;
                    this.read_any = true;
                    this.reading = true;
                    this.check_in_passing()?;
                }
                Poll::Ready(r)
            }
            // Idle between requests and asked to park: an end of input, on which hyper
            // finishes the connection cleanly and its state and buffers can go.
            Poll::Pending if this.parking == Parking::Here && this.park_now() => {
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.poll_idle(cx),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(r) => r,
            // A client that does not read what it asked for (PING ACKs, a response) holds
            // the connection; the deadline still applies.
            Poll::Pending => return self.poll_idle(cx).map(|r| r.map(|()| 0)),
        };
        if matches!(r, Ok(n) if n > 0) {
            self.wrote();
        }
        Poll::Ready(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => return self.poll_idle(cx).map(|r| r.map(|()| 0)),
        };
        if matches!(r, Ok(n) if n > 0) {
            self.wrote();
        }
        Poll::Ready(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parked {
            // The connection parks: the socket stays open for the client's next request.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T> IdleIo<T> {
    fn wrote(&mut self) {
        self.active = true;
        self.reading = false;
        self.writes += 1;
    }
}

/// Reads into `buf` from `replay` (bytes read before a park, to be read again first), if
/// there are any left; whether it did.
fn replayed(replay: &mut Option<Box<bytes::Bytes>>, buf: &mut ReadBuf<'_>) -> bool {
    let Some(held) = replay.as_deref_mut() else {
        return false;
    };
    let n = held.len().min(buf.remaining());
    buf.put_slice(&held[..n]);
    bytes::Buf::advance(held, n);
    if held.is_empty() {
        *replay = None;
    }
    true
}

/// A waker that does nothing: the `408` is written in one attempt that never waits.
fn futures_noop_waker() -> Waker {
    Waker::noop().clone()
}

/// The I/O of an HTTP/1.1 connection that parks while idle: hyper's connection is let go
/// when a read ends to park, and a new one made over the same I/O when the client sends
/// again.
pub trait Parks: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The connection's own socket and deadlines, to wait on while parked.
    fn idle_io(&mut self) -> &mut IdleIo<tokio::net::TcpStream>;
    /// Whether the last read ended to park.
    fn is_parked(&self) -> bool;
    /// Back from parking, with `held`, the bytes hyper had read and not parsed: they are
    /// read again first.
    fn unpark(&mut self, held: bytes::Bytes);
}

impl Parks for IdleIo<tokio::net::TcpStream> {
    fn idle_io(&mut self) -> &mut IdleIo<tokio::net::TcpStream> {
        self
    }

    fn is_parked(&self) -> bool {
        self.parked
    }

    fn unpark(&mut self, held: bytes::Bytes) {
        IdleIo::unpark(self, held);
    }
}

type TlsOverIdle = tokio_rustls::server::TlsStream<IdleIo<tokio::net::TcpStream>>;

/// HTTP/1.1 over TLS, parking: hyper reads through this, above TLS. When a read would wait
/// (nothing from the socket, nothing decrypted and unread) and the socket below (an
/// [`IdleIo`] set to park under TLS) is idle and asked to park, the read ends here, so that
/// hyper lets its connection go while the TLS session stays as it is; the shutdown that
/// follows is not passed on (no `close_notify`: the connection stays open).
pub struct TlsParking {
    inner: TlsOverIdle,
    /// The start of a pipelined head hyper had read when it parked, read again first.
    replay: Option<Box<bytes::Bytes>>,
}

impl TlsParking {
    /// `inner`, its socket set to park under TLS.
    pub fn new(mut inner: TlsOverIdle) -> Self {
        inner.get_mut().0.set_parkable_under_tls();
        Self {
            inner,
            replay: None,
        }
    }
}

impl Parks for TlsParking {
    fn idle_io(&mut self) -> &mut IdleIo<tokio::net::TcpStream> {
        self.inner.get_mut().0
    }

    fn is_parked(&self) -> bool {
        self.inner.get_ref().0.parked
    }

    fn unpark(&mut self, held: bytes::Bytes) {
        let below = &mut self.inner.get_mut().0;
        below.unpark(bytes::Bytes::new());
        if !held.is_empty() {
            below.arriving();
            self.replay = Some(Box::new(held));
        }
    }
}

impl AsyncRead for TlsParking {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if replayed(&mut this.replay, buf) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            // Nothing from the socket nor in the TLS session's buffers, idle and asked to
            // park: an end of input for hyper.
            Poll::Pending if this.inner.get_mut().0.park_now() => Poll::Ready(Ok(())),
            // Bytes of a request, which the socket below may have delivered long before (a
            // request sent with the handshake's last flight is decrypted with it, and the
            // session tickets written after it): a request is arriving from here on.
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.inner.get_mut().0.arriving();
                Poll::Ready(Ok(()))
            }
            polled => polled,
        }
    }
}

impl AsyncWrite for TlsParking {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.inner.get_ref().0.parked {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its wakes.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A connection's requests with its task's waker registered; the waker's count.
    fn waiting(parkable: bool) -> (Arc<Streams>, Arc<Wakes>) {
        let streams = Arc::new(Streams::on(Default::default()));
        streams.eviction.parkable.store(parkable, Ordering::Relaxed);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let seen = streams.eviction.asks();
        let pending = streams
            .eviction
            .poll_asked_since(seen, &mut Context::from_waker(&waker));
        assert!(pending.is_pending());
        (streams, wakes)
    }

    #[test]
    fn a_request_that_ends_wakes_a_connection_asked_to_park_that_can() {
        let (streams, wakes) = waiting(true);
        let guard = streams.open();
        streams.eviction.park.store(true, Ordering::Relaxed);
        drop(guard);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken to park");
        // Not asked: no wake.
        let (streams, wakes) = waiting(true);
        drop(streams.open());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        // Asked, but it cannot park (HTTP/2): no wake at each request's end.
        let (streams, wakes) = waiting(false);
        streams.eviction.park.store(true, Ordering::Relaxed);
        drop(streams.open());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_roster_asking_wakes_the_connection_once_per_ask() {
        let (streams, wakes) = waiting(false);
        let seen = streams.eviction.asks();
        streams.eviction.ask();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(streams.eviction.poll_asked_since(seen, &mut cx).is_ready());
        let seen = streams.eviction.asks();
        assert!(
            streams
                .eviction
                .poll_asked_since(seen, &mut cx)
                .is_pending()
        );
    }
}
