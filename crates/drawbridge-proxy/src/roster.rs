//! The connections the process serves, so that a full listener, or a process out of file
//! descriptors, can close the longest idle of them to admit a new client, as nginx does with
//! its reusable connections: ten thousand idle keep-alive connections never lock an active
//! client out.
//!
//! Idle means no request open on the connection (between keep-alive requests, before the
//! first one, or an HTTP/2 connection without a stream). Connections are entered and left
//! once each; a request costs one relaxed store of the idle clock, which moves once per
//! accepted connection, so "longest idle" is told apart to the nearest accept.
//!
//! The roster is also swept once a second: an HTTP/1.1 connection that took no request
//! since the previous sweep is asked to park, letting its HTTP state and buffers go until
//! the client sends again (see [`crate::accept`]), so an idle connection costs little more
//! than its socket. A sweep after which many connections let their state go (parked, or
//! closed) says so through [`releases`]: the process can then give the freed memory back to
//! the system, which an allocator otherwise keeps for a while, or until it is next busy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::io::{Eviction, Streams};

/// The open connections of every listener.
#[derive(Default)]
pub struct Roster {
    conns: Mutex<slab::Slab<Listed>>,
    /// Moves once per connection entered: when a connection last went idle.
    clock: Arc<AtomicU64>,
    /// Woken whenever a connection leaves.
    left: Notify,
    /// Connections that left since the previous sweep.
    departed: AtomicU64,
}

/// Connections parked or closed in one sweep's time for the process to give memory back.
const RELEASE_AFTER: u64 = 64;

/// Moves once for each sweep after which many connections had let their state go.
static RELEASES: AtomicU64 = AtomicU64::new(0);

/// How many times many connections have let their state go (parked, or closed): when this
/// moves, memory they held was freed, and the process may give it back to the system.
pub fn releases() -> u64 {
    RELEASES.load(Ordering::Relaxed)
}

struct Listed {
    listener: usize,
    streams: Arc<Streams>,
    /// Requests started as of the previous sweep.
    seen: u64,
}

/// A connection's place in the roster; leaves it when dropped.
pub struct Entry {
    roster: Arc<Roster>,
    key: usize,
}

impl Roster {
    /// The eviction state for a new connection, on this roster's idle clock.
    pub fn eviction(&self) -> Eviction {
        Eviction::on(self.clock.clone())
    }

    /// Enters a connection of `listener`; it stays listed until the entry is dropped.
    pub fn enter(self: &Arc<Self>, listener: usize, streams: Arc<Streams>) -> Entry {
        self.clock.fetch_add(1, Ordering::Relaxed);
        let key = self.lock().insert(Listed {
            listener,
            streams,
            seen: 0,
        });
        Entry {
            roster: self.clone(),
            key,
        }
    }

    /// Asks the longest-idle connections (of `listener`, or of any listener) to close: at
    /// most 32, and at most an eighth of the idle ones (at least one). Returns how many were
    /// asked; each closes at once, its request slot and descriptor given back.
    pub fn evict(&self, listener: Option<usize>) -> usize {
        let conns = self.lock();
        let mut idle: Vec<(u64, &Arc<Streams>)> = conns
            .iter()
            .filter(|(_, l)| listener.is_none_or(|want| want == l.listener))
            .filter(|(_, l)| l.streams.is_idle() && !l.streams.eviction.is_evicted())
            .map(|(_, l)| {
                (
                    l.streams.eviction.idle_since.load(Ordering::Relaxed),
                    &l.streams,
                )
            })
            .collect();
        let n = (idle.len() / 8).clamp(1, 32).min(idle.len());
        if n == 0 {
            return 0;
        }
        if n < idle.len() {
            idle.select_nth_unstable_by_key(n - 1, |(since, _)| *since);
        }
        for (_, streams) in &idle[..n] {
            streams.eviction.evicted.store(true, Ordering::Relaxed);
            streams.eviction.ask();
        }
        n
    }

    /// Whether a connection (of `listener`, or of any listener) asked to close while idle is
    /// still listed: it is closing, and its descriptor and slot will be free in a moment.
    pub fn closing(&self, listener: Option<usize>) -> bool {
        self.lock().iter().any(|(_, l)| {
            listener.is_none_or(|want| want == l.listener)
                && l.streams.eviction.is_evicted()
                && l.streams.is_idle()
        })
    }

    /// Asks every connection that took no request since the previous sweep and has none
    /// open to park (those that can: HTTP/1.1, over plaintext or TLS). Returns how many
    /// were asked.
    pub fn sweep(&self) -> usize {
        let mut conns = self.lock();
        let mut asked = 0;
        for (_, l) in conns.iter_mut() {
            let started = l.streams.started();
            let e = &l.streams.eviction;
            if started == l.seen
                && l.streams.is_idle()
                && !e.is_evicted()
                && !e.park.load(Ordering::Relaxed)
            {
                e.park.store(true, Ordering::Relaxed);
                e.ask();
                asked += 1;
            }
            l.seen = started;
        }
        asked
    }

    /// Wakes every connection to look at the stop signal (sent before): a parked
    /// connection, which waits on nothing else of the server's, closes.
    pub fn drain(&self) {
        for (_, l) in self.lock().iter() {
            l.streams.eviction.ask();
        }
    }

    /// Woken whenever a connection leaves.
    pub fn left(&self) -> &Notify {
        &self.left
    }

    /// How many connections are listed.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, slab::Slab<Listed>> {
        // The slab is never left half-updated: a poisoned lock is still usable.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How often idle connections are asked to park: one idle for a whole period parks.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Sweeps `roster` every `every` until it is dropped. Connections asked to park let their
/// state go after the sweep, so they count as released at the next one too.
pub async fn sweep_every(roster: std::sync::Weak<Roster>, every: std::time::Duration) {
    let mut parking = 0;
    loop {
        tokio::time::sleep(every).await;
        let Some(r) = roster.upgrade() else { return };
        let asked = r.sweep() as u64;
        let closed = r.departed.swap(0, Ordering::Relaxed);
        if released(asked, closed, parking) {
            RELEASES.fetch_add(1, Ordering::Relaxed);
        }
        parking = asked;
    }
}

/// Whether a sweep that asked `asked` connections to park and saw `closed` leave, after one
/// that asked `parking`, says memory was freed.
fn released(asked: u64, closed: u64, parking: u64) -> bool {
    asked + closed >= RELEASE_AFTER || parking >= RELEASE_AFTER
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.roster.lock().try_remove(self.key);
        self.roster.departed.fetch_add(1, Ordering::Relaxed);
        self.roster.left.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(roster: &Arc<Roster>, listener: usize) -> (Arc<Streams>, Entry) {
        let streams = Arc::new(Streams::with(Default::default(), roster.eviction()));
        let entry = roster.enter(listener, streams.clone());
        (streams, entry)
    }

    #[test]
    fn the_longest_idle_is_evicted_first_and_busy_ones_never() {
        let roster = Arc::new(Roster::default());
        let (oldest, _a) = conn(&roster, 0);
        let (busy, _b) = conn(&roster, 0);
        let (newer, _c) = conn(&roster, 0);
        let (other_listener, _d) = conn(&roster, 1);
        // The busy connection went idle first, then took a request it is still serving.
        let guard = busy.open();
        assert!(!roster.closing(None), "none asked to close yet");
        assert_eq!(roster.evict(Some(0)), 1);
        assert!(oldest.eviction.is_evicted());
        assert!(!newer.eviction.is_evicted() && !busy.eviction.is_evicted());
        assert!(!other_listener.eviction.is_evicted());
        // The next one; the busy connection and the evicted one are passed over.
        assert_eq!(roster.evict(Some(0)), 1);
        assert!(newer.eviction.is_evicted());
        assert!(!busy.eviction.is_evicted());
        assert_eq!(roster.evict(Some(0)), 0, "nothing idle left on listener 0");
        assert!(roster.closing(Some(0)), "the evicted ones are still listed");
        assert!(!roster.closing(Some(1)), "none of listener 1's");
        drop(guard);
        assert_eq!(
            roster.evict(Some(0)),
            1,
            "idle again once its request ended"
        );
        assert_eq!(roster.evict(None), 1, "any listener: the other one's");
        assert!(other_listener.eviction.is_evicted());
        drop((_a, _b, _c, _d));
        assert!(!roster.closing(None), "closed ones are no longer listed");
    }

    #[test]
    fn a_request_that_ends_makes_its_connection_the_most_recently_idle() {
        let roster = Arc::new(Roster::default());
        let (first, _a) = conn(&roster, 0);
        let (second, _b) = conn(&roster, 0);
        drop(first.open());
        let (_third, _c) = conn(&roster, 0);
        // `first` went idle after `second` was accepted: `second` is the longest idle.
        roster.evict(Some(0));
        assert!(second.eviction.is_evicted());
        assert!(!first.eviction.is_evicted());
    }

    /// Many connections parking (at the sweep that asks them and the next, when they have
    /// let go) or closing move the release count; a few do not.
    #[tokio::test]
    async fn many_connections_parking_or_closing_say_memory_was_freed() {
        assert!(released(RELEASE_AFTER, 0, 0) && released(0, 0, RELEASE_AFTER));
        assert!(released(RELEASE_AFTER / 2, RELEASE_AFTER / 2, 0));
        assert!(!released(RELEASE_AFTER - 1, 0, RELEASE_AFTER - 1));
        let every = std::time::Duration::from_millis(20);
        // The count moves within a few sweeps.
        let moves = |before: u64| async move {
            for _ in 0..100 {
                if releases() > before {
                    return true;
                }
                tokio::time::sleep(every).await;
            }
            false
        };
        let roster = Arc::new(Roster::default());
        let conns: Vec<_> = (0..RELEASE_AFTER).map(|_| conn(&roster, 0)).collect();
        let before = releases();
        tokio::spawn(sweep_every(Arc::downgrade(&roster), every));
        assert!(moves(before).await, "all asked to park");
        assert!(conns.iter().all(|(s, _)| s.eviction.take_park()));
        drop(conns);
        let before = releases();
        assert!(moves(before).await, "all closed");
    }

    #[test]
    fn a_sweep_asks_connections_idle_since_the_last_one_to_park() {
        let roster = Arc::new(Roster::default());
        let (quiet, _a) = conn(&roster, 0);
        let (busy, _b) = conn(&roster, 0);
        let (serving, _c) = conn(&roster, 0);
        let _open = serving.open();
        // The first sweep sees every count at zero: the quiet and busy ones are idle.
        assert_eq!(roster.sweep(), 2);
        assert!(quiet.eviction.take_park() && busy.eviction.take_park());
        assert!(!serving.eviction.take_park(), "a request is open");
        // The busy one took a request since; the quiet one did not.
        drop(busy.open());
        assert_eq!(roster.sweep(), 1);
        assert!(quiet.eviction.take_park());
        assert!(!busy.eviction.take_park());
        // Asked once until it parks: not again while the request stands.
        assert_eq!(
            roster.sweep(),
            2,
            "quiet (parked since) and busy (idle now)"
        );
        assert_eq!(roster.sweep(), 0);
    }

    #[test]
    fn an_eighth_of_the_idle_at_most_32_are_evicted_at_once() {
        let roster = Arc::new(Roster::default());
        let conns: Vec<_> = (0..400).map(|_| conn(&roster, 0)).collect();
        assert_eq!(roster.evict(Some(0)), 32);
        let evicted = conns
            .iter()
            .filter(|(s, _)| s.eviction.is_evicted())
            .count();
        assert_eq!(evicted, 32);
        // The 32 accepted first.
        assert!(conns[..32].iter().all(|(s, _)| s.eviction.is_evicted()));
        drop(conns);
        assert!(roster.is_empty(), "dropped entries leave");
        let few: Vec<_> = (0..20).map(|_| conn(&roster, 0)).collect();
        assert_eq!(roster.evict(Some(0)), 2);
        drop(few);
    }
}
