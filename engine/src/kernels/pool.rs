//! The compute pool of the CPU kernels: `threads - 1` helper threads that, between parallel
//! regions, spin for a short while ([`SPIN`]) before they sleep, so the many small regions of a
//! decode step (a few tens of microseconds each) cost no thread wake-ups. A region
//! ([`for_each_task`]) is a number of tasks the calling thread and the helpers claim one by one
//! from a shared counter; the caller takes part and returns once every task has run. Tasks write
//! disjoint outputs and each output's arithmetic is fixed by its kernel, so neither the thread
//! count nor which thread ran a task changes a result.
//!
//! A region started while another is running (a second caller, or a task that starts a region)
//! runs its tasks on its own thread, in order. `set_threads` sizes the pool before its first use
//! (the CLI's `--threads`); by default it has as many threads as the machine has cores.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock, TryLockError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle helper spins before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

type Task<'a> = dyn Fn(usize) + Sync + 'a;

/// A region's task function, lifetime-erased (valid while the region is open; see `Region`).
#[derive(Clone, Copy)]
struct TaskPtr(*const Task<'static>);
// SAFETY: the pointee is `Sync`, and helpers only call it while the region that owns it is open.
unsafe impl Send for TaskPtr {}

struct Shared {
    /// `epoch << 1 | open`: a region is open for helpers to join while the low bit is set.
    state: AtomicU64,
    /// The open region's tasks.
    task: Mutex<Option<TaskPtr>>,
    n_tasks: AtomicUsize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Helpers inside a region (the caller waits for 0 before the task function goes away).
    inside: AtomicUsize,
    panicked: AtomicBool,
    /// Per helper: asleep (parked) flag and handle.
    sleeping: Vec<AtomicBool>,
    handles: OnceLock<Vec<Thread>>,
    /// Held by the thread whose region is running.
    busy: Mutex<()>,
}

static THREADS: AtomicUsize = AtomicUsize::new(0);
static POOL: OnceLock<&'static Shared> = OnceLock::new();

thread_local! {
    /// Set on helpers and on a caller while its region runs (nested regions run serially).
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

/// Sets the pool's thread count (the caller included); takes effect only before the first
/// parallel region. Returns whether it did.
pub fn set_threads(threads: usize) -> bool {
    THREADS.store(threads.max(1), SeqCst);
    POOL.get().is_none()
}

/// The pool's thread count (the caller included).
pub fn threads() -> usize {
    match THREADS.load(SeqCst) {
        0 => thread::available_parallelism().map_or(1, |n| n.get()),
        t => t,
    }
}

fn pool() -> &'static Shared {
    POOL.get_or_init(|| {
        let helpers = threads() - 1;
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            state: AtomicU64::new(0),
            task: Mutex::new(None),
            n_tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleeping: (0..helpers).map(|_| AtomicBool::new(false)).collect(),
            handles: OnceLock::new(),
            busy: Mutex::new(()),
        }));
        let handles = (0..helpers)
            .filter_map(|h| {
                thread::Builder::new()
                    .name(format!("troupe-compute-{}", h + 1))
                    .spawn(move || helper(shared, h))
                    .ok()
                    .map(|j| j.thread().clone())
            })
            .collect();
        let _ = shared.handles.set(handles);
        shared
    })
}

/// Runs `task(0..n_tasks)`, each index once, on the pool (the calling thread included); returns
/// when all have run. A panic in a task is re-raised here after the region closes.
pub fn for_each_task(n_tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    let serial = || (0..n_tasks).for_each(task);
    if n_tasks <= 1 || threads() <= 1 || IN_REGION.with(Cell::get) {
        return serial();
    }
    let p = pool();
    let _busy = match p.busy.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => return serial(),
    };
    if p.handles.get().is_none_or(|h| h.is_empty()) {
        return serial();
    }
    // Open the region. No helper is inside (the last region waited for that), so the task slot
    // and counters are ours to set.
    // SAFETY (lifetime erasure): the pointer is cleared and every helper has left before this
    // function returns, so it never outlives `task`.
    let erased: TaskPtr = TaskPtr(unsafe {
        std::mem::transmute::<*const Task<'_>, *const Task<'static>>(task as *const Task<'_>)
    });
    *p.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(erased);
    p.n_tasks.store(n_tasks, SeqCst);
    p.next.store(0, SeqCst);
    p.done.store(0, SeqCst);
    p.panicked.store(false, SeqCst);
    let epoch = (p.state.load(SeqCst) >> 1) + 1;
    p.state.store(epoch << 1 | 1, SeqCst);
    if let Some(handles) = p.handles.get() {
        for (flag, h) in p.sleeping.iter().zip(handles) {
            if flag.load(SeqCst) {
                h.unpark();
            }
        }
    }
    IN_REGION.with(|c| c.set(true));
    let mine = catch_unwind(AssertUnwindSafe(|| claim(p, task)));
    IN_REGION.with(|c| c.set(false));
    // Wait for tasks claimed by helpers, then close and wait for every helper to leave.
    let mut spins = 0u32;
    while p.done.load(SeqCst) < n_tasks {
        backoff(&mut spins);
    }
    p.state.store(epoch << 1, SeqCst);
    while p.inside.load(SeqCst) > 0 {
        backoff(&mut spins);
    }
    *p.task.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if let Err(payload) = mine {
        resume_unwind(payload);
    }
    if p.panicked.load(SeqCst) {
        panic!("a compute-pool task panicked");
    }
}

/// Claims and runs tasks of the open region until none is left.
fn claim(p: &Shared, task: &Task<'_>) {
    let n = p.n_tasks.load(SeqCst);
    loop {
        let i = p.next.fetch_add(1, SeqCst);
        if i >= n {
            return;
        }
        let ok = catch_unwind(AssertUnwindSafe(|| task(i))).is_ok();
        if !ok {
            p.panicked.store(true, SeqCst);
        }
        p.done.fetch_add(1, SeqCst);
    }
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 1 << 14 {
        std::hint::spin_loop();
    } else {
        thread::yield_now();
    }
}

fn helper(p: &'static Shared, me: usize) {
    IN_REGION.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        // Spin for a new open region, then sleep.
        let start = Instant::now();
        let mut i = 0u32;
        let state = loop {
            let s = p.state.load(SeqCst);
            if s & 1 == 1 && s >> 1 != seen {
                break Some(s);
            }
            i = i.wrapping_add(1);
            if i % 64 == 0 && start.elapsed() > SPIN {
                break None;
            }
            std::hint::spin_loop();
        };
        let Some(state) = state else {
            p.sleeping[me].store(true, SeqCst);
            let s = p.state.load(SeqCst);
            if !(s & 1 == 1 && s >> 1 != seen) {
                thread::park();
            }
            p.sleeping[me].store(false, SeqCst);
            continue;
        };
        seen = state >> 1;
        p.inside.fetch_add(1, SeqCst);
        // Join only if that region is still open (its caller may have finished it alone).
        if p.state.load(SeqCst) == state {
            let task = *p.task.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(TaskPtr(t)) = task {
                // SAFETY: the region is open and we are counted in `inside`, so its caller has not
                // returned and the task function is alive.
                claim(p, unsafe { &*t });
            }
        }
        p.inside.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_once_and_regions_nest() {
        for n in [0usize, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            for_each_task(n, &|i| {
                // A region inside a task runs on that thread.
                for_each_task(2, &|_| {});
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "n={n}");
        }
    }

    #[test]
    fn concurrent_callers_all_finish() {
        let total = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        for_each_task(8, &|i| {
                            total.fetch_add(i, SeqCst);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), 4 * 50 * 28);
    }
}
