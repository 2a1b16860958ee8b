//! Which allocations are a connection's long-lived state, for an allocator that keeps them
//! apart.
//!
//! A connection's state that lives as long as it does (its task, socket registration, idle
//! deadline, the counts the roster reads) is made while other connections are being served.
//! Put in the same allocator pages as those requests' buffers, each long-lived object keeps a
//! page of freed buffers from going back to the system: ten thousand idle connections held
//! several times the memory they use. Code that makes such state marks it
//! ([`long_lived`]), and an allocator that wants to (the `drawbridge`
//! binary's does) reads [`is_long_lived`] and serves those allocations from pages of their
//! own. The mark changes nothing else: any allocator may ignore it.

use std::cell::Cell;

thread_local! {
    static LONG_LIVED: Cell<bool> = const { Cell::new(false) };
}

/// Whether allocations on this thread are, at the moment, a connection's long-lived state.
/// Read by the global allocator on every allocation: a thread-local flag, nothing more.
#[inline]
pub fn is_long_lived() -> bool {
    LONG_LIVED.with(Cell::get)
}

/// Runs `f` with its allocations marked long-lived.
pub fn long_lived<T>(f: impl FnOnce() -> T) -> T {
    let _mark = Mark::set();
    f()
}

/// Sets the mark until dropped (a panic in between included), then restores what was there.
struct Mark(bool);

impl Mark {
    fn set() -> Mark {
        Mark(LONG_LIVED.with(|m| m.replace(true)))
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        LONG_LIVED.with(|m| m.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_holds_inside_and_is_restored_after_even_a_panic() {
        assert!(!is_long_lived());
        let inner = long_lived(|| {
            let nested = long_lived(is_long_lived);
            (is_long_lived(), nested)
        });
        assert_eq!(inner, (true, true));
        assert!(!is_long_lived());
        let caught = std::panic::catch_unwind(|| long_lived(|| panic!("in the middle")));
        assert!(caught.is_err());
        assert!(!is_long_lived());
    }
}
