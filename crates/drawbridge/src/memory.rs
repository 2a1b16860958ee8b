//! The allocator, and memory back to the system once many connections let theirs go.
//!
//! mimalloc serves every allocation. What a connection keeps for as long as it lives (see
//! `drawbridge_proxy::placement`) comes from a heap of its own, so that it
//! never shares an allocator page with the buffers of requests served meanwhile: once those
//! are freed, their pages are wholly free and can go back to the system, where one
//! long-lived object among them would keep each page.
//!
//! mimalloc keeps the pages it frees for reuse, and gives them back to the system only a
//! while later, when the thread that freed them next allocates or frees: a process whose ten
//! thousand connections just parked or closed and which then has little to do would keep
//! their memory for as long as it stays quiet. When the roster says many connections let
//! their state go ([`drawbridge_proxy::roster::releases`]), each worker thread, the next
//! time it has nothing to run, has mimalloc collect its heaps and return what is free.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

use libmimalloc_sys::mi_heap_t;

thread_local! {
    /// The roster's release count this thread last collected for.
    static COLLECTED: Cell<u64> = const { Cell::new(0) };
}

/// The heap for long-lived connection state, made on first use and never deleted. mimalloc
/// heaps are shared by all threads (each thread allocates from its own part of it).
static LONG_LIVED: AtomicPtr<mi_heap_t> = AtomicPtr::new(std::ptr::null_mut());

/// mimalloc, with connections' long-lived state in a heap of its own.
pub struct Allocator;

/// The heap for long-lived state; null if mimalloc could not make one (then the default
/// heap serves).
#[allow(unsafe_code)]
fn long_lived_heap() -> *mut mi_heap_t {
    let heap = LONG_LIVED.load(Ordering::Acquire);
    if !heap.is_null() {
        return heap;
    }
    // SAFETY: `mi_heap_new` takes no argument and returns a new heap (or null).
    let made = unsafe { libmimalloc_sys::mi_heap_new() };
    match LONG_LIVED.compare_exchange(heap, made, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => made,
        Err(first) => {
            if !made.is_null() {
                // SAFETY: `made` was never published nor allocated from; deleting it
                // frees only the heap itself.
                unsafe { libmimalloc_sys::mi_heap_delete(made) }
            }
            first
        }
    }
}

/// Whether an allocation of alignment `align` can take mimalloc's plain `mi_malloc`, whose
/// every block is aligned to a word: its size classes are all multiples of one. (The
/// aligned calls, which `mimalloc::MiMalloc` always makes, check and re-check alignment on
/// every allocation; most of a request's allocations need no more than a word's.)
#[inline]
fn plain(align: usize) -> bool {
    align <= std::mem::size_of::<usize>()
}

/// The heap for the allocation being made, when it is marked long-lived (and the heap
/// could be made).
#[inline]
fn marked_heap() -> Option<*mut mi_heap_t> {
    if !drawbridge_proxy::placement::is_long_lived() {
        return None;
    }
    let heap = long_lived_heap();
    (!heap.is_null()).then_some(heap)
}

// SAFETY: every block comes from mimalloc, aligned as `layout` asks (`mi_heap_*_aligned`
// and `MiMalloc` both honour size and alignment; `mi_malloc`, `mi_zalloc` and `mi_realloc`
// are used only for alignments of a word or less, which every mimalloc block has), and every
// block is freed or reallocated by
// mimalloc, which finds a block's heap from its address: `mi_free` and `mi_realloc_aligned`
// accept a block of any heap, from any thread. mimalloc's heaps may allocate on any thread,
// and the long-lived heap is never deleted once published.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: size and alignment are the layout's, which `GlobalAlloc` guarantees valid;
        // the heap is live (above).
        unsafe {
            match marked_heap() {
                Some(heap) => {
                    libmimalloc_sys::mi_heap_malloc_aligned(heap, layout.size(), layout.align())
                        .cast()
                }
                None if plain(layout.align()) => libmimalloc_sys::mi_malloc(layout.size()).cast(),
                None => mimalloc::MiMalloc.alloc(layout),
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            match marked_heap() {
                Some(heap) => {
                    libmimalloc_sys::mi_heap_zalloc_aligned(heap, layout.size(), layout.align())
                        .cast()
                }
                None if plain(layout.align()) => libmimalloc_sys::mi_zalloc(layout.size()).cast(),
                None => mimalloc::MiMalloc.alloc_zeroed(layout),
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, so by mimalloc, with `layout`.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a mimalloc block of this allocator with `layout`'s alignment;
        // `new_size` is valid per `GlobalAlloc`; the heap is live (above).
        unsafe {
            match marked_heap() {
                Some(heap) => libmimalloc_sys::mi_heap_realloc_aligned(
                    heap,
                    ptr.cast::<c_void>(),
                    new_size,
                    layout.align(),
                )
                .cast(),
                None if plain(layout.align()) => {
                    libmimalloc_sys::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
                }
                None => mimalloc::MiMalloc.realloc(ptr, layout, new_size),
            }
        }
    }
}

/// Has the kernel back this process's memory with small (4 KiB) pages only, never with
/// transparent huge pages. mimalloc asks for huge pages where it can, and a 2 MiB page is
/// resident as a whole as soon as one byte of it is used and goes back to the system only
/// whole: ten thousand idle connections cost a fifth more, and twice as much stayed after
/// they closed. Called first thing in `main`, before the allocator maps more memory.
#[allow(unsafe_code)]
pub fn small_pages() {
    // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` takes integers only and changes a flag
    // of this process; it cannot fail in a way that matters (a kernel without it says EINVAL
    // and the process goes on with huge pages, as before).
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
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

/// Has mimalloc free what this thread's heaps hold unused and return it to the system.
#[allow(unsafe_code)]
fn collect() {
    // SAFETY: `mi_collect` takes no pointer and touches only the allocator's own state (the
    // calling thread's heap and the shared arenas, under the allocator's own locking); it is
    // the allocator that `GLOBAL` installs, so nothing else owns that memory.
    unsafe { libmimalloc_sys::mi_collect(true) }
    let heap = LONG_LIVED.load(Ordering::Acquire);
    if !heap.is_null() {
        // SAFETY: `heap` is a live heap (never deleted once published); collecting it on
        // this thread frees only blocks already freed.
        unsafe { libmimalloc_sys::mi_heap_collect(heap, true) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    unsafe extern "C" {
        /// Whether `p`, a block of any heap, is one of `heap`'s.
        fn mi_heap_contains(heap: *const mi_heap_t, p: *const c_void) -> bool;
    }

    #[test]
    #[allow(unsafe_code)]
    fn the_process_asks_for_small_pages_only() {
        small_pages();
        // SAFETY: integers only; reads this process's flag.
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(disabled, 1);
    }

    #[test]
    #[allow(unsafe_code)]
    fn blocks_of_every_size_and_alignment_are_aligned_zeroed_and_kept_across_realloc() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 24, 100, 1000, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: a valid non-zero layout; each block is freed once, with its layout.
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(
                        !p.is_null() && (p as usize).is_multiple_of(align),
                        "{layout:?}"
                    );
                    std::ptr::write_bytes(p, 0xA5, size);
                    let grown = Allocator.realloc(p, layout, size * 3);
                    assert!((grown as usize).is_multiple_of(align), "{layout:?} grown");
                    assert!((0..size).all(|i| *grown.add(i) == 0xA5), "{layout:?} kept");
                    Allocator.dealloc(
                        grown,
                        Layout::from_size_align(size * 3, align).expect("layout"),
                    );
                    let z = Allocator.alloc_zeroed(layout);
                    assert!((z as usize).is_multiple_of(align), "{layout:?} zeroed");
                    assert!((0..size).all(|i| *z.add(i) == 0), "{layout:?} zeroed");
                    Allocator.dealloc(z, layout);
                }
            }
        }
    }

    #[test]
    #[allow(unsafe_code)]
    fn long_lived_blocks_come_from_their_own_heap_and_free_anywhere() {
        let long = drawbridge_proxy::placement::long_lived(|| vec![7u8; 4096]);
        let grown = drawbridge_proxy::placement::long_lived(|| {
            let mut v: Vec<u64> = Vec::with_capacity(2);
            v.extend(0..1000);
            v
        });
        let plain = vec![7u8; 4096];
        let heap = LONG_LIVED.load(Ordering::Acquire);
        assert!(!heap.is_null());
        let layout = Layout::from_size_align(48, 64).expect("layout");
        // SAFETY: `heap` is live; the pointers are live blocks of this allocator.
        unsafe {
            assert!(mi_heap_contains(heap, long.as_ptr().cast()));
            assert!(mi_heap_contains(heap, grown.as_ptr().cast()));
            assert!(!mi_heap_contains(heap, plain.as_ptr().cast()));
            let p = Allocator.alloc(layout);
            assert!(!p.is_null() && (p as usize).is_multiple_of(64));
            assert!(!mi_heap_contains(heap, p.cast()));
            Allocator.dealloc(p, layout);
        }
        assert!(long.iter().all(|b| *b == 7));
        assert_eq!(grown.iter().sum::<u64>(), 499_500);
        // Freed from another thread, as a connection's state is when another worker drops it.
        std::thread::spawn(move || drop((long, grown)))
            .join()
            .expect("freed");
        collect();
    }
}
