//! The parallel regions of the CPU kernels, run on rayon's pool (the one pool every CPU kernel,
//! attention and the actor runtime's CPU streams share). A region ([`for_each_task`]) is a number
//! of tasks; each writes disjoint outputs whose arithmetic its kernel fixes, so neither the
//! thread count nor which thread ran a task changes a result. [`claim_units`] is a region whose
//! threads claim runs of units as they go, long runs first.
//!
//! A separate spinning pool (helpers spinning 200 µs between regions) was tried in session 5: it
//! ran 1-thread decode faster, but beside rayon's own workers it oversubscribed two cores and
//! made 2-thread decode of ds-v3-mini 0.62× as fast (alternated runs: 18.4 vs 29.8 and 15.2 vs
//! 24.2 tok/s), so regions go to rayon until one pool serves every kernel. Its size is rayon's
//! (the CLI's `--threads` sizes it).
//!
//! During a forward pass ([`on_pool`]) the pool's other threads **poll** for the pass's regions
//! instead of sleeping between them: each takes a helper job that spins, taking any pool work
//! offered (`rayon::yield_now`), until the pass ends. A sleeping rayon worker must be woken with a
//! `futex` call for each region, which in these VMs costs the waking thread several µs (4–5% of
//! a decode's samples sat in `try_to_wake_up`, and as much again in the woken thread's switch).
//! The helpers are the pool's own threads, so nothing is oversubscribed (unlike session 5's
//! separate spinning pool, above). A helper also leaves after [`POLL_IDLE_LIMIT`] without work, so
//! a helper can never hold its thread long from work queued below it (rayon runs a job inside
//! another on one stack), and `TROUPE_POOL_POLL=0` turns helpers off. Results never change: who
//! runs a task does not change what it computes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long a pass's helper polls without finding work before it leaves the pass. The longest
/// gap between two regions of a ds-v3-mini decode step, sampling plus the next token's
/// embedding, was ~45 µs (a per-region timer, not kept), so a decode pass keeps its helpers.
pub const POLL_IDLE_LIMIT: Duration = Duration::from_micros(500);

/// The pool's thread count (the caller included).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Runs `f` on a thread of the pool and returns its result (inline when the caller is one
/// already). A caller outside the pool that starts many short regions pays, per region, for
/// waking the pool from outside and parking itself until the region ends; from a pool thread a
/// region starts by work-stealing instead. The reference executor runs each forward pass this
/// way (decode of ds-v3-mini: ~10% more tokens/s on 2 threads).
/// The processors are kept awake meanwhile ([`super::awake`]), and the pool's other threads
/// poll for the pass's regions (the module's doc).
pub fn on_pool<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let _awake = super::awake::keep_awake();
    let helpers = threads().saturating_sub(1);
    if helpers == 0 || !polling() {
        return rayon::join(f, || ()).0;
    }
    let pass = || {
        let owner = rayon::current_thread_index();
        let done = AtomicBool::new(false);
        rayon::join(
            || {
                let out = f();
                done.store(true, Ordering::Release);
                out
            },
            || help(helpers, owner, &done),
        )
        .0
    };
    rayon::join(pass, || ()).0
}

/// Whether passes get polling helpers (`TROUPE_POOL_POLL=0`: no).
fn polling() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("TROUPE_POOL_POLL").map_or(true, |v| v != "0"))
}

/// Starts `n` helpers of the pass running on thread `owner` (one per job, so each can be
/// stolen by another thread), and returns when all have left.
fn help(n: usize, owner: Option<usize>, done: &AtomicBool) {
    if n > 1 {
        rayon::join(|| poll(owner, done), || help(n - 1, owner, done));
    } else {
        poll(owner, done);
    }
}

/// One helper: on a thread other than the pass's, takes pool work until the pass is done or
/// none came for [`POLL_IDLE_LIMIT`]. On the pass's own thread (it took its own helper job
/// back while waiting inside the pass) it returns at once: spinning there would stall the pass.
fn poll(owner: Option<usize>, done: &AtomicBool) {
    if rayon::current_thread_index() == owner {
        return;
    }
    let mut idle_since = Instant::now();
    while !done.load(Ordering::Acquire) {
        if let Some(rayon::Yield::Executed) = rayon::yield_now() {
            idle_since = Instant::now();
            continue;
        }
        if idle_since.elapsed() > POLL_IDLE_LIMIT {
            #[cfg(test)]
            tests::IDLE_EXITS.fetch_add(1, Ordering::Relaxed);
            return;
        }
        for _ in 0..8 {
            std::hint::spin_loop();
        }
    }
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

/// A claim of [`claim_units`] takes 1 / (this × threads) of the units left (1: half of them on
/// 2 threads). Each claim of a decode GEMV starts its weight streams cold, so fewer, longer
/// claims pay: tg64 on ds-v3-mini (`--compute bf16`, 2 threads) fell by ~3% with 2 and ~8%
/// with 8.
const GUIDED_SHARES: usize = 1;

/// Runs `run(u0, u1)` over runs of units that together cover `0..units` once each, in parallel:
/// guided self-scheduling. Each pool thread claims a share of what is left ([`GUIDED_SHARES`]),
/// down to one unit near the end, so the threads finish within about a unit of each other and
/// a thread that joins late takes what is left. Returns when every unit has run.
pub fn claim_units(units: usize, run: &(dyn Fn(usize, usize) + Sync)) {
    let threads = threads();
    let next = AtomicUsize::new(0);
    for_each_task(threads, &|_| loop {
        let at = next.load(Ordering::Relaxed);
        if at >= units {
            return;
        }
        let take = (units - at).div_ceil(GUIDED_SHARES * threads);
        // The claim is the atomic step: a unit is claimed by one thread only.
        if next
            .compare_exchange_weak(at, at + take, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            run(at, at + take);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};

    /// Helpers that left a pass for want of work (counted in tests only).
    pub(super) static IDLE_EXITS: AtomicUsize = AtomicUsize::new(0);

    fn two_threads() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
    }

    #[test]
    fn claims_cover_every_unit_once_long_runs_first() {
        let pool = two_threads();
        for units in [0usize, 1, 2, 5, 64, 1000] {
            let hits: Vec<AtomicU32> = (0..units).map(|_| AtomicU32::new(0)).collect();
            let claims = std::sync::Mutex::new(Vec::new());
            pool.install(|| {
                claim_units(units, &|u0, u1| {
                    claims.lock().unwrap().push(u1 - u0);
                    hits[u0..u1].iter().for_each(|h| {
                        h.fetch_add(1, SeqCst);
                    });
                })
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "units={units}");
            let claims = claims.into_inner().unwrap();
            // Half of what is left per thread each time: about log2(units) claims, not units.
            if units >= 64 {
                assert!(
                    claims.len() < units / 4,
                    "{units} units in {} claims",
                    claims.len()
                );
                assert_eq!(claims.iter().max(), Some(&units.div_ceil(2)));
            }
        }
    }

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

    /// Passes from several threads at once, each with regions and a nested pass, on a pool of
    /// two (so every pass has a helper): all finish with every task run once. A helper that
    /// held its thread from work queued below it would hang here (the watchdog fails instead).
    #[test]
    fn passes_with_helpers_from_several_threads_all_finish() {
        let pool = std::sync::Arc::new(two_threads());
        let total = std::sync::Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let (pool, total, tx) = (pool.clone(), total.clone(), tx.clone());
            std::thread::spawn(move || {
                for _ in 0..50 {
                    pool.install(|| {
                        on_pool(|| {
                            for_each_task(8, &|i| {
                                total.fetch_add(i, SeqCst);
                            });
                            on_pool(|| {
                                for_each_task(4, &|i| {
                                    total.fetch_add(i, SeqCst);
                                })
                            });
                        })
                    });
                }
                let _ = tx.send(());
            });
        }
        for _ in 0..4 {
            rx.recv_timeout(std::time::Duration::from_secs(120))
                .expect("a pass with polling helpers did not finish");
        }
        assert_eq!(total.load(SeqCst), 4 * 50 * (28 + 6));
    }

    /// A pass that offers its helper no work for longer than the limit gets its thread back:
    /// the helper leaves (counted), and the pass still returns its result.
    #[test]
    fn a_helper_leaves_a_pass_without_work() {
        let pool = two_threads();
        let before = IDLE_EXITS.load(SeqCst);
        let out = pool.install(|| {
            on_pool(|| {
                std::thread::sleep(POLL_IDLE_LIMIT * 200);
                5
            })
        });
        assert_eq!(out, 5);
        assert!(
            IDLE_EXITS.load(SeqCst) > before,
            "the helper stayed for the whole pass"
        );
    }
}
