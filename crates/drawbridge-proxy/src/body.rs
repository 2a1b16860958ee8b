//! Bodies on both sides: the request body with its size bound, and the response body that
//! counts what it sends and records the access event when it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use drawbridge_telemetry::{AccessEvent, AccessLog};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::time::{Instant as TokioInstant, Sleep};

use crate::sanitize::{HeaderRules, strip_request_trailers};
use crate::upstream::InFlight;

/// Errors of a request body on its way upstream.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client sent more than the route allows.
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    /// Reading from the client failed.
    #[error("reading the request body: {0}")]
    Client(#[from] hyper::Error),
    /// The client sent no body bytes for the listener's `body_idle_timeout`.
    #[error("no request body bytes for {0:?}")]
    Stalled(Duration),
    /// Reading the client's body failed (seen from the upstream side, without the cause).
    #[error("the request body could not be read")]
    Malformed,
}

/// A client's request body, streamed upstream, cut off past its limit.
pub struct RequestBody {
    inner: Option<Incoming>,
    /// A body read whole before it left (a screened form).
    buffered: Option<Bytes>,
    limit: u64,
    seen: u64,
    /// How the client's trailers are filtered; dropped whole when `None`.
    trailers: Option<Arc<TrailerFilter>>,
    /// How long the client may send nothing.
    idle: Duration,
    /// Armed the first time the client keeps the body waiting, reset by each frame.
    timer: Option<Pin<Box<Sleep>>>,
    /// How reading the body went; shared with forward, which tells a slow or failing client
    /// from a failing upstream by it.
    progress: Option<Arc<BodyProgress>>,
}

/// How far a request body got: still arriving, read whole, or failed on the client's side
/// (whatever error the upstream connection then reports).
#[derive(Debug, Default)]
pub struct BodyProgress(AtomicU8);

impl BodyProgress {
    const ARRIVING: u8 = 0;
    const DONE: u8 = 1;
    const TOO_LARGE: u8 = 2;
    const STALLED: u8 = 3;
    const CLIENT: u8 = 4;

    /// Whether the whole body was read.
    pub fn done(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::DONE
    }

    /// The client's failure, when the body failed on its side: too large, stalled, or the
    /// client went away or sent it malformed.
    pub fn client_fault(&self, limit: u64, idle: Duration) -> Option<BodyError> {
        match self.0.load(Ordering::Relaxed) {
            Self::TOO_LARGE => Some(BodyError::TooLarge(limit)),
            Self::STALLED => Some(BodyError::Stalled(idle)),
            Self::CLIENT => Some(BodyError::Malformed),
            _ => None,
        }
    }

    fn set(&self, state: u8) {
        // The first outcome stays.
        let _ =
            self.0
                .compare_exchange(Self::ARRIVING, state, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// What of a client's request trailers a route lets through: the header rules apply to them
/// as to headers, and credentials never travel there.
pub struct TrailerFilter {
    /// The snapshot's header rules.
    pub rules: Arc<HeaderRules>,
    /// The identity header and the route's credential headers.
    pub credentials: Vec<http::HeaderName>,
}

impl RequestBody {
    /// Streams `inner`, failing once more than `limit` bytes were read; its trailers are
    /// filtered by `trailers`, or dropped when `None`.
    /// A client that sends nothing for `idle` is given up on ([`BodyError::Stalled`]).
    pub fn limited(
        inner: Incoming,
        limit: u64,
        trailers: Option<Arc<TrailerFilter>>,
        idle: Duration,
    ) -> Self {
        let progress = (!inner.is_end_stream()).then(Arc::default);
        Self {
            inner: Some(inner),
            buffered: None,
            limit,
            seen: 0,
            trailers,
            idle,
            timer: None,
            progress,
        }
    }

    /// A body already read whole.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            buffered: (!bytes.is_empty()).then_some(bytes),
            ..Self::empty()
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Self {
            inner: None,
            buffered: None,
            limit: 0,
            seen: 0,
            trailers: None,
            idle: Duration::ZERO,
            timer: None,
            progress: None,
        }
    }

    /// How reading the body goes, for a body still to be read; `None` when there was
    /// nothing to read.
    pub fn progress(&self) -> Option<Arc<BodyProgress>> {
        self.progress.clone()
    }

    /// The limit and idle time, to name a client fault recorded in [`BodyProgress`].
    pub fn bounds(&self) -> (u64, Duration) {
        (self.limit, self.idle)
    }

    fn finished(&mut self) {
        self.inner = None;
        self.timer = None;
        self.record(BodyProgress::DONE);
    }

    fn record(&self, state: u8) {
        if let Some(p) = &self.progress {
            p.set(state);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(this.buffered.take().map(|b| Ok(Frame::data(b))));
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = this.timer.as_mut() {
                    t.as_mut().reset(TokioInstant::now() + this.idle);
                }
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.inner = None;
                        this.record(BodyProgress::TOO_LARGE);
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
                    }
                    if this.inner.as_ref().is_some_and(Body::is_end_stream) {
                        this.finished();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                // Trailers end the body: filtered, or dropped with the route's leave.
                this.finished();
                match (frame.into_trailers(), &this.trailers) {
                    (Ok(mut t), Some(filter)) => {
                        strip_request_trailers(&mut t, &filter.rules, &filter.credentials);
                        if t.is_empty() {
                            Poll::Ready(None)
                        } else {
                            Poll::Ready(Some(Ok(Frame::trailers(t))))
                        }
                    }
                    _ => Poll::Ready(None),
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.record(BodyProgress::CLIENT);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finished();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.inner = None;
                    this.timer = None;
                    this.record(BodyProgress::STALLED);
                    return Poll::Ready(Some(Err(BodyError::Stalled(idle))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_none() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, &self.buffered) {
            (Some(inner), _) => inner.size_hint(),
            (None, Some(b)) => SizeHint::with_exact(b.len() as u64),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

/// The body sent to the client.
pub struct ResponseBody {
    kind: Kind,
    record: Option<Box<Record>>,
    /// The upstream connection, returned to its pool only if the body is read to its end.
    reuse: Option<http1::SendRequest<RequestBody>>,
}

enum Kind {
    Upstream(Streaming),
    Full(Option<Bytes>),
}

/// An upstream's body, and when it must end at the latest.
struct Streaming {
    body: Incoming,
    deadline: Option<crate::tunnel::Deadline>,
    /// Armed when a stream (a body of unknown length) or a response bound to an expiring
    /// credential first waits, and when any other body waits a second time: most public
    /// responses wait once, for their only frame, and never need a timer.
    timer: Option<Pin<Box<Sleep>>>,
    waited: bool,
}

/// Why Drawbridge cut a response short.
#[derive(Debug, thiserror::Error)]
#[error("stream ended: {0}")]
pub struct StreamEnded(pub &'static str);

/// An error of a response body on its way to the client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An access event waiting for the response to end.
pub struct Record {
    /// Where it goes.
    pub log: AccessLog,
    /// The event, complete but for bytes and duration.
    pub event: AccessEvent,
    /// When the request arrived.
    pub start: Instant,
    /// Keeps the endpoint's in-flight count until the response ends.
    pub in_flight: Option<InFlight>,
    /// Keeps the request open on its connection until the response ends.
    pub stream: crate::io::StreamGuard,
}

impl ResponseBody {
    /// An upstream's body, streamed through; `reuse` goes back to the pool at its end.
    /// The stream is cut (an HTTP/2 stream reset, an HTTP/1.1 connection closed) at
    /// `deadline`: the credential that admitted it expired, or its lifetime ran out.
    pub fn upstream(
        body: Incoming,
        reuse: Option<http1::SendRequest<RequestBody>>,
        deadline: Option<crate::tunnel::Deadline>,
    ) -> Self {
        Self {
            kind: Kind::Upstream(Streaming {
                body,
                deadline,
                timer: None,
                waited: false,
            }),
            record: None,
            reuse,
        }
    }

    /// A body Drawbridge wrote.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        Self {
            kind: Kind::Full(if b.is_empty() { None } else { Some(b) }),
            record: None,
            reuse: None,
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
            record: None,
            reuse: None,
        }
    }

    /// Attaches the access event, written when the body ends or is dropped.
    pub fn with_record(mut self, record: Record) -> Self {
        self.record = Some(Box::new(record));
        self
    }

    fn count(&mut self, n: usize) {
        if let Some(r) = self.record.as_mut() {
            r.event.bytes_sent += n as u64;
        }
    }

    /// Writes the access event; `complete` when the body was read to its end, the only case
    /// where the upstream connection can serve another request.
    fn finish(&mut self, complete: bool) {
        let reuse = self.reuse.take();
        if let Some(r) = self.record.take() {
            let Record {
                log,
                mut event,
                start,
                in_flight,
                stream,
            } = *r;
            drop(stream);
            if let (true, Some(sender), Some(f)) = (complete, reuse, in_flight.as_ref()) {
                f.give_back(sender);
            }
            drop(in_flight);
            event.duration_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            log.record(event);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper never polls a body that is empty from the start (HEAD, 204, 304,
        // `content-length: 0`); such an exchange is complete all the same.
        let complete = self.is_end_stream();
        self.finish(complete);
    }
}

impl Streaming {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(BoxError::from))),
            Poll::Pending => {
                let Some(d) = self.deadline else {
                    return Poll::Pending;
                };
                let sized = self.body.size_hint().exact().is_some();
                if sized && !d.credential && !std::mem::replace(&mut self.waited, true) {
                    return Poll::Pending;
                }
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(d.at)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(StreamEnded(d.why))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(s) => s.poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len();
                    this.count(n);
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(e))) => {
                if let Some(r) = this.record.as_mut() {
                    r.event.reason.get_or_insert_with(|| {
                        if e.is::<StreamEnded>() {
                            e.to_string()
                        } else {
                            format!("upstream body: {e}")
                        }
                    });
                }
                this.finish(false);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(s) => s.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(s) => s.body.size_hint(),
        }
    }
}
