//! The request body on its way to the upstream: bounded in size and in the time between
//! its chunks, its trailers filtered, its progress visible to whoever must tell a client's
//! stall from an upstream's failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant as TokioInstant, Sleep};

use crate::sanitize::headers::{TrailerFilter, strip_request_trailers};

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
///
/// A tag and a pointer: the request it travels in is moved a dozen times on its way
/// through hyper's client, so what only a streamed body needs is boxed, and a request
/// without a body (most of them) carries none of it.
pub struct RequestBody(Source);

enum Source {
    /// Nothing (left) to send.
    Empty,
    /// A body read whole before it left (a screened form); never empty.
    Full(Box<Bytes>),
    /// The client's body, streamed.
    Streaming(Box<Streaming>),
}

struct Streaming {
    /// `None` once the body ended, failed or was cut off.
    inner: Option<Incoming>,
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
    progress: Arc<BodyProgress>,
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

impl RequestBody {
    /// Streams `inner`, failing once more than `limit` bytes were read; its trailers are
    /// filtered by `trailers`, or dropped when `None`.
    /// A client that sends nothing for `idle` is given up on ([`BodyError::Stalled`]).
    /// A body that has nothing to send from the start is [`RequestBody::empty`].
    pub fn limited(
        inner: Incoming,
        limit: u64,
        trailers: Option<Arc<TrailerFilter>>,
        idle: Duration,
    ) -> Self {
        if inner.is_end_stream() {
            return Self::empty();
        }
        Self(Source::Streaming(Box::new(Streaming {
            inner: Some(inner),
            limit,
            seen: 0,
            trailers,
            idle,
            timer: None,
            progress: Arc::default(),
        })))
    }

    /// A body already read whole.
    pub fn full(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            Self::empty()
        } else {
            Self(Source::Full(Box::new(bytes)))
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Self(Source::Empty)
    }

    /// How reading the body goes, for a body still to be read; `None` when there was
    /// nothing to read.
    pub fn progress(&self) -> Option<Arc<BodyProgress>> {
        match &self.0 {
            Source::Streaming(s) => Some(s.progress.clone()),
            Source::Empty | Source::Full(_) => None,
        }
    }

    /// The limit and idle time, to name a client fault recorded in [`BodyProgress`].
    pub fn bounds(&self) -> (u64, Duration) {
        match &self.0 {
            Source::Streaming(s) => (s.limit, s.idle),
            Source::Empty | Source::Full(_) => (0, Duration::ZERO),
        }
    }
}

impl Streaming {
    fn finished(&mut self) {
        self.inner = None;
        self.timer = None;
        self.progress.set(BodyProgress::DONE);
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = self.timer.as_mut() {
                    t.as_mut().reset(TokioInstant::now() + self.idle);
                }
                if let Some(data) = frame.data_ref() {
                    self.seen += data.len() as u64;
                    if self.seen > self.limit {
                        self.inner = None;
                        self.progress.set(BodyProgress::TOO_LARGE);
                        return Poll::Ready(Some(Err(BodyError::TooLarge(self.limit))));
                    }
                    if self.inner.as_ref().is_some_and(Body::is_end_stream) {
                        self.finished();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                // Trailers end the body: filtered, or dropped with the route's leave.
                self.finished();
                match (frame.into_trailers(), &self.trailers) {
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
                self.progress.set(BodyProgress::CLIENT);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.finished();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let idle = self.idle;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.inner = None;
                    self.timer = None;
                    self.progress.set(BodyProgress::STALLED);
                    return Poll::Ready(Some(Err(BodyError::Stalled(idle))));
                }
                Poll::Pending
            }
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
        if let Source::Streaming(s) = &mut this.0 {
            return s.poll_frame(cx);
        }
        // A whole body goes in one frame, and nothing is left after it.
        match std::mem::replace(&mut this.0, Source::Empty) {
            Source::Full(b) => Poll::Ready(Some(Ok(Frame::data(*b)))),
            _ => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Source::Empty => true,
            Source::Full(_) => false,
            Source::Streaming(s) => s.inner.as_ref().is_none_or(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Source::Empty => SizeHint::with_exact(0),
            Source::Full(b) => SizeHint::with_exact(b.len() as u64),
            Source::Streaming(s) => s
                .inner
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), Body::size_hint),
        }
    }
}
