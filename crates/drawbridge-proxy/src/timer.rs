//! Deadlines on the request path, on timers kept for reuse. A tokio timer registered for a
//! request and taken out again when the request ends takes the timer wheel's lock twice;
//! a timer still registered and moved to a later deadline takes none (tokio extends its
//! expiry in place and files it again only when the old one comes due). So each worker
//! thread keeps the timers its requests are done with, and [`within`] lends one out.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Id;
use tokio::time::{Instant, Sleep};

/// Most timers a thread keeps for reuse: about the requests it has in flight at once.
const KEPT: usize = 1024;

/// `fut` bounded by `deadline`: its output, or [`Elapsed`] when the deadline came first.
/// `fut` is polled first, as tokio's `timeout_at` does; a timer is lent only once it is
/// pending.
pub fn within<F: Future>(deadline: Instant, fut: F) -> Within<F> {
    Within {
        fut,
        deadline,
        timer: None,
    }
}

pin_project_lite::pin_project! {
    /// The future [`within`] returns: `fut` itself (not moved again), its deadline and, once
    /// it is pending, the timer lent for it.
    pub struct Within<F> {
        #[pin]
        fut: F,
        deadline: Instant,
        timer: Option<Lent>,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let deadline = *this.deadline;
        match this.timer.get_or_insert_with(|| lend(deadline)).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// The timers a thread keeps, for the runtime they belong to (a timer never outlives the
/// use of its own runtime: a thread may run more than one in turn).
struct Kept {
    runtime: Option<Id>,
    timers: Vec<Pin<Box<Sleep>>>,
}

thread_local! {
    static KEPT_TIMERS: RefCell<Kept> = const {
        RefCell::new(Kept {
            runtime: None,
            timers: Vec::new(),
        })
    };
}

/// A timer for `deadline`: one this thread kept for the current runtime, or a new one.
fn lend(deadline: Instant) -> Lent {
    let runtime = tokio::runtime::Handle::current().id();
    let kept = KEPT_TIMERS
        .try_with(|k| {
            let mut k = k.borrow_mut();
            if k.runtime != Some(runtime) {
                k.timers.clear();
                k.runtime = Some(runtime);
            }
            k.timers.pop()
        })
        .ok()
        .flatten();
    let timer = match kept {
        Some(mut t) => {
            t.as_mut().reset(deadline);
            t
        }
        None => Box::pin(tokio::time::sleep_until(deadline)),
    };
    Lent {
        timer: Some(timer),
        runtime,
    }
}

/// A lent timer; kept again by whichever thread drops it, when that thread keeps its
/// runtime's timers and has room.
struct Lent {
    timer: Option<Pin<Box<Sleep>>>,
    runtime: Id,
}

impl Lent {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.timer {
            Some(t) => t.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let Some(mut timer) = self.timer.take() else {
            return;
        };
        // Kept only by a thread that keeps this runtime's timers and has room; otherwise
        // (another runtime's thread, a full pool, a thread that is exiting) it is dropped.
        let _ = KEPT_TIMERS.try_with(move |k| {
            if let Ok(mut k) = k.try_borrow_mut()
                && k.runtime == Some(self.runtime)
                && k.timers.len() < KEPT
            {
                // It lets go of the waker of the task that used it now, not when it next
                // fires: a kept timer must not keep a finished connection's task allocated.
                let _ = timer
                    .as_mut()
                    .poll(&mut Context::from_waker(std::task::Waker::noop()));
                k.timers.push(timer);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn kept() -> usize {
        KEPT_TIMERS.with_borrow(|k| k.timers.len())
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_future_is_answered_without_a_timer() {
        let out = within(Instant::now() + Duration::from_secs(1), async { 7 }).await;
        assert_eq!(out, Ok(7));
        assert_eq!(kept(), 0, "no timer was lent");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_a_pending_future_and_its_timer_is_kept() {
        let start = Instant::now();
        let out = within(start + Duration::from_secs(2), std::future::pending::<()>()).await;
        assert_eq!(out, Err(Elapsed));
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        assert_eq!(kept(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_timer_keeps_each_new_deadline_later_or_earlier() {
        let slow = |secs| tokio::time::sleep(Duration::from_secs(secs));
        // Done before its deadline: the timer goes back, still set for 10 s from now.
        let start = Instant::now();
        assert_eq!(
            within(start + Duration::from_secs(10), slow(1)).await,
            Ok(())
        );
        assert_eq!(kept(), 1);
        // Reused for an earlier deadline than the one it was set for: it fires then.
        let start = Instant::now();
        assert_eq!(
            within(start + Duration::from_secs(3), slow(60)).await,
            Err(Elapsed)
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
        // And for a later one, past the first one's deadline: it does not fire early.
        let start = Instant::now();
        assert_eq!(
            within(start + Duration::from_secs(30), slow(20)).await,
            Ok(())
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(20));
        let start = Instant::now();
        assert_eq!(
            within(start + Duration::from_secs(5), std::future::pending::<()>()).await,
            Err(Elapsed)
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        assert_eq!(kept(), 1, "one timer served every deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_timer_holds_no_waker_of_the_task_that_used_it() {
        struct Counted;
        impl std::task::Wake for Counted {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let task = std::sync::Arc::new(Counted);
        let waker = std::task::Waker::from(task.clone());
        let mut pending = Box::pin(within(
            Instant::now() + Duration::from_secs(30),
            std::future::pending::<()>(),
        ));
        let polled = pending.as_mut().poll(&mut Context::from_waker(&waker));
        assert!(polled.is_pending());
        drop(waker);
        assert_eq!(
            std::sync::Arc::strong_count(&task),
            2,
            "the timer holds the waker"
        );
        drop(pending);
        assert_eq!(kept(), 1);
        assert_eq!(
            std::sync::Arc::strong_count(&task),
            1,
            "and lets it go when kept"
        );
    }

    #[test]
    fn timers_are_never_reused_across_runtimes() {
        let run = || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            rt.block_on(async {
                let start = Instant::now();
                let out = within(start + Duration::from_secs(1), std::future::pending::<()>());
                assert_eq!(out.await, Err(Elapsed));
                assert_eq!(Instant::now() - start, Duration::from_secs(1));
            });
        };
        // The second runtime finds the first one's timer kept on this thread and must not
        // use it (a timer of a runtime that is gone panics when polled).
        run();
        assert_eq!(kept(), 1);
        run();
        assert_eq!(kept(), 1);
    }
}
