//! Test-only: a global allocator that counts the allocations made by the current thread while a
//! probe runs, for tests asserting a path allocates nothing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static PROBING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; counting only touches
// const-initialised thread-locals without destructors (`try_with`: none during thread exit).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if PROBING.try_with(Cell::get).unwrap_or(false) {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Runs `f` and returns how many allocations this thread made meanwhile.
pub(crate) fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    PROBING.with(|p| p.set(true));
    f();
    PROBING.with(|p| p.set(false));
    COUNT.with(Cell::get)
}
