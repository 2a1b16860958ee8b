//! Memory back to the system once many connections let theirs go.
//!
//! mimalloc keeps the pages it frees for reuse, and gives them back to the system only a
//! while later, when the thread that freed them next allocates or frees: a process whose ten
//! thousand connections just parked or closed and which then has little to do would keep
//! their memory for as long as it stays quiet. When the roster says many connections let
//! their state go ([`drawbridge_proxy::roster::releases`]), each worker thread, the next
//! time it has nothing to run, has mimalloc collect its heap and return what is free.

use std::cell::Cell;

thread_local! {
    /// The roster's release count this thread last collected for.
    static COLLECTED: Cell<u64> = const { Cell::new(0) };
}

/// Called by each runtime worker as it parks: one atomic load unless there is memory to
/// give back.
pub fn on_park() {
    let wanted = drawbridge_proxy::roster::releases();
    if COLLECTED.get() != wanted {
        COLLECTED.set(wanted);
        collect();
    }
}

/// Has mimalloc free what this thread's heap holds unused and return it to the system.
#[allow(unsafe_code)]
fn collect() {
    // SAFETY: `mi_collect` takes no pointer and touches only the allocator's own state (the
    // calling thread's heap and the shared arenas, under the allocator's own locking); it is
    // the allocator that `GLOBAL` installs, so nothing else owns that memory.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
