//! Connection I/O with an idle deadline: no bytes moving either way for the listener's
//! `idle_timeout` closes the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Wraps a connection and fails reads once it was idle too long.
pub struct IdleIo<T> {
    inner: T,
    idle: Duration,
    last: Instant,
    deadline: Pin<Box<Sleep>>,
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
        let now = Instant::now();
        Self {
            inner,
            idle,
            last: now,
            deadline: Box::pin(tokio::time::sleep_until(now + idle)),
            mid_request: mid_request.0.clone(),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn touch(&mut self) {
        self.last = Instant::now();
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
                    this.touch();
                    this.mid_request.store(true, Ordering::Relaxed);
                }
                Poll::Ready(r)
            }
            Poll::Pending => loop {
                ready!(this.deadline.as_mut().poll(cx));
                let due = this.last + this.idle;
                if Instant::now() >= due {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle",
                    )));
                }
                this.deadline.as_mut().reset(due);
            },
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
            self.touch();
            self.mid_request.store(false, Ordering::Relaxed);
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
            self.touch();
            self.mid_request.store(false, Ordering::Relaxed);
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
