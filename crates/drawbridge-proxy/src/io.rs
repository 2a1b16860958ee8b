//! Connection I/O with an idle deadline: a connection with no bytes moving either way for at
//! least the listener's `idle_timeout` (and at most twice that) is closed.
//!
//! The deadline is coarse on purpose: reads and writes only mark the connection active, and
//! the timer is looked at when it fires, so the request path never reads the clock or
//! touches the timer wheel.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Wraps a connection and fails reads once it was idle too long.
pub struct IdleIo<T> {
    inner: T,
    idle: Duration,
    /// Bytes moved since the deadline was last armed.
    active: bool,
    deadline: Pin<Box<Sleep>>,
    /// The task the deadline will wake; a WebSocket relay polls from another task.
    armed_for: Option<Waker>,
    mid_request: Arc<AtomicBool>,
}

/// Whether the client sent bytes since Drawbridge last wrote to it: true while a request
/// head is arriving, false on a connection idle between requests.
#[derive(Clone, Default)]
pub struct MidRequest(Arc<AtomicBool>);

impl MidRequest {
    /// True when bytes arrived after the last response bytes went out.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl<T> IdleIo<T> {
    /// Wraps `inner`; `mid_request` follows whether a request is arriving.
    pub fn new(inner: T, idle: Duration, mid_request: &MidRequest) -> Self {
        Self {
            inner,
            idle,
            active: false,
            deadline: Box::pin(tokio::time::sleep(idle)),
            armed_for: None,
            mid_request: mid_request.0.clone(),
        }
    }

    /// Called when a read would wait: fails once a whole period passed without traffic.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
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
                Poll::Ready(()) if self.active => {
                    self.active = false;
                    self.armed_for = None;
                    let next = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(()) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle",
                    )));
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.active = true;
                    this.mid_request.store(true, Ordering::Relaxed);
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_idle(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = ready!(Pin::new(&mut self.inner).poll_write(cx, data));
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
        let r = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs));
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
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T> IdleIo<T> {
    fn wrote(&mut self) {
        self.active = true;
        self.mid_request.store(false, Ordering::Relaxed);
    }
}
