//! The parallel regions of the CPU kernels, run on rayon's pool (the one pool every CPU kernel,
//! attention and the actor runtime's CPU streams share). A region ([`for_each_task`]) is a number
//! of tasks; each writes disjoint outputs whose arithmetic its kernel fixes, so neither the
//! thread count nor which thread ran a task changes a result.
//!
//! A separate spinning pool (helpers spinning 200 µs between regions) was tried in session 5: it
//! ran 1-thread decode faster, but beside rayon's own workers it oversubscribed two cores and
//! made 2-thread decode of ds-v3-mini 0.62× as fast (alternated runs: 18.4 vs 29.8 and 15.2 vs
//! 24.2 tok/s), so regions go to rayon until one pool serves every kernel. Its size is rayon's
//! (the CLI's `--threads` sizes it).

use rayon::prelude::*;

/// The pool's thread count (the caller included).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Runs `f` on a thread of the pool and returns its result (inline when the caller is one
/// already). A caller outside the pool that starts many short regions pays, per region, for
/// waking the pool from outside and parking itself until the region ends; from a pool thread a
/// region starts by work-stealing instead. The reference executor runs each forward pass this
/// way (decode of ds-v3-mini: ~10% more tokens/s on 2 threads).
/// The processors are kept awake meanwhile ([`super::awake`]).
pub fn on_pool<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let _awake = super::awake::keep_awake();
    rayon::join(f, || ()).0
}

/// Runs `task(0..n_tasks)`, each index once, in parallel when there is more than one task and
/// more than one thread; returns when all have run. A task's panic reaches the caller.
pub fn for_each_task(n_tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    if n_tasks <= 1 || threads() == 1 {
        (0..n_tasks).for_each(task);
    } else {
        (0..n_tasks).into_par_iter().for_each(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};

    #[test]
    fn every_task_runs_once_and_regions_nest() {
        for n in [0usize, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            for_each_task(n, &|i| {
                for_each_task(2, &|_| {});
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "n={n}");
        }
    }

    #[test]
    fn on_pool_runs_on_a_pool_thread_and_returns_the_result() {
        let (inside, value) = on_pool(|| (rayon::current_thread_index().is_some(), 7));
        assert!(inside && value == 7);
        // Nested: inline on the same thread.
        let outer = on_pool(|| {
            let here = rayon::current_thread_index();
            on_pool(|| rayon::current_thread_index() == here)
        });
        assert!(outer);
    }

    #[test]
    fn concurrent_callers_all_finish() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
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
