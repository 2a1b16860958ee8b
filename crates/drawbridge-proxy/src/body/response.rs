//! The response body on its way to the client: it counts what it sends, ends a stream at
//! its deadline, gives the upstream connection back when the exchange is complete, and
//! writes the access-log record when it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use drawbridge_telemetry::{AccessEvent, AccessLog};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::deadline::Deadline;
use crate::upstream::InFlight;

/// The body sent to the client.
pub struct ResponseBody {
    kind: Kind,
    record: Option<Box<Record>>,
    /// The upstream connection, returned to its pool only if the body is read to its end.
    reuse: Option<crate::transport::Http1>,
}

enum Kind {
    Upstream(Streaming),
    Full(Option<Bytes>),
}

/// An upstream's body, and when it must end at the latest.
struct Streaming {
    body: Incoming,
    deadline: Option<Deadline>,
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
    /// Where the request is counted: its route's counters.
    pub metrics: Arc<drawbridge_telemetry::metrics::RouteMetrics>,
    /// The request's span, ended with the record.
    pub trace: Option<Box<crate::trace::Trace>>,
}

impl Record {
    /// Ends the request at `now`: lets go of its endpoint count and its place on the
    /// connection, then writes the event, completed by `complete`, with the request's whole
    /// duration.
    pub fn write(self, now: Instant, complete: impl FnOnce(&mut AccessEvent)) {
        let Record {
            log,
            mut event,
            start,
            in_flight,
            stream,
            metrics,
            trace,
        } = self;
        drop((in_flight, stream));
        complete(&mut event);
        let elapsed = now.saturating_duration_since(start);
        metrics.request(&event.method, event.status, elapsed);
        event.duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(t) = trace {
            t.end(&event);
        }
        log.record(event);
    }
}

impl ResponseBody {
    /// An upstream's body, streamed through; `reuse` goes back to the pool at its end.
    /// The stream is cut (an HTTP/2 stream reset, an HTTP/1.1 connection closed) at
    /// `deadline`: the credential that admitted it expired, or its lifetime ran out.
    pub fn upstream(
        body: Incoming,
        reuse: Option<crate::transport::Http1>,
        deadline: Option<Deadline>,
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

    /// Attaches the access event, written when the body ends or is dropped (in place: the
    /// response around the body is not moved for it).
    pub fn attach(&mut self, record: Record) {
        self.record = Some(Box::new(record));
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
            // One reading of the clock for both the pool and the record.
            let now = Instant::now();
            if let (true, Some(sender), Some(f)) = (complete, reuse, r.in_flight.as_ref()) {
                f.give_back(sender, now);
            }
            r.write(now, |_| {});
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
