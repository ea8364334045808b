//! Tests of `stream.rs`: order, overlap, link arrivals, panics, own pools.
use super::*;
use std::sync::mpsc;
use std::thread::ThreadId;
use std::time::Duration;

fn cpu_stream() -> Stream {
    let be = Arc::new(troupe_engine::kernels::CpuBackend::new());
    Stream::spawn("cpu-test", 0, be, None, StreamKind::CpuPool).expect("stream")
}

fn tags() -> SpanTags {
    SpanTags {
        name: "test",
        ..SpanTags::default()
    }
}

/// Waits until `done()` holds; fails the test naming `what` after 10 s.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::yield_now();
    }
}

/// Waits until `n` kernels are queued behind the running one.
fn wait_queued(s: &Stream, n: usize) {
    wait_until("kernels never queued", || s.queued() >= n);
}

/// Starts a kernel that holds the stream until `release` fires, recording its thread.
fn hold(
    s: &Arc<Stream>,
    release: mpsc::Receiver<()>,
    log: Arc<Mutex<Vec<(usize, ThreadId)>>>,
) -> std::thread::JoinHandle<Result<usize>> {
    let (s2, started) = (s.clone(), log.clone());
    let h = std::thread::spawn(move || {
        s2.run_blocking(tags(), move |_| {
            log.lock().unwrap().push((0, std::thread::current().id()));
            release
                .recv()
                .map_err(|e| EngineError::internal(e.to_string()))?;
            Ok(0usize)
        })
    });
    wait_until("first kernel never started", || {
        !started.lock().unwrap().is_empty()
    });
    h
}

#[test]
fn queued_kernels_run_in_order_on_the_thread_holding_the_stream() {
    let s = Arc::new(cpu_stream());
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let order = Arc::new(Mutex::new(Vec::<(usize, ThreadId)>::new()));
    let first = hold(&s, release_rx, order.clone());
    // Queue three more, one by one, while the first holds the stream.
    let mut waiters = Vec::new();
    for k in 1..=3usize {
        let (s2, o) = (s.clone(), order.clone());
        waiters.push(std::thread::spawn(move || {
            s2.run_blocking(tags(), move |_| {
                o.lock().unwrap().push((k, std::thread::current().id()));
                Ok(k * 10)
            })
        }));
        wait_queued(&s, k);
    }
    release_tx.send(()).unwrap();
    assert_eq!(first.join().unwrap().unwrap(), 0);
    for (k, w) in waiters.into_iter().enumerate() {
        assert_eq!(w.join().unwrap().unwrap(), (k + 1) * 10);
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order.iter().map(|o| o.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
    // Combining: the thread that held the stream ran the queued kernels too.
    assert!(
        order.iter().all(|o| o.1 == order[0].1),
        "queued kernels ran elsewhere"
    );
    assert_eq!(s.queued(), 0);
}

/// Submits `n` kernels from the calling thread and waits for them; returns the kernels'
/// numbers in the order they ran.
fn submit_many(s: &Stream, n: usize) -> Vec<usize> {
    let (done, order) = submit_many_nowait(s, n);
    order_after(done, n, order)
}

fn order_after(done: mpsc::Receiver<()>, n: usize, order: Arc<Mutex<Vec<usize>>>) -> Vec<usize> {
    for _ in 0..n {
        done.recv_timeout(Duration::from_secs(20))
            .expect("a kernel never ran");
    }
    let v = order.lock().unwrap().clone();
    v
}

/// The first position where `order` is not `0, 1, 2, ...`.
fn first_swap(order: &[usize]) -> Option<(usize, usize)> {
    order
        .iter()
        .enumerate()
        .find(|&(i, &k)| i != k)
        .map(|(i, &k)| (i, k))
}

#[test]
fn kernels_run_in_submission_order_whatever_the_pool_size() {
    const N: usize = 3000;
    // From a thread outside the pool (how actors submit; the global pool's size follows
    // RAYON_NUM_THREADS) ...
    let s = cpu_stream();
    for round in 0..3 {
        let order = submit_many(&s, N);
        assert_eq!(order.len(), N);
        assert_eq!(first_swap(&order), None, "outside the pool, round {round}");
    }
    // ... and from a worker of pools of 1 to 8 threads (a kernel submitted from the pool).
    for threads in [1, 2, 3, 8] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        let order = pool.install(|| submit_many_nowait(&s, N));
        let order = order_after(order.0, N, order.1);
        assert_eq!(first_swap(&order), None, "inside a pool of {threads}");
    }
}

/// Submits `n` kernels without waiting, each recording its number when it runs (so a pool
/// worker can submit and return): one completion per kernel, and the recorded order.
fn submit_many_nowait(s: &Stream, n: usize) -> (mpsc::Receiver<()>, Arc<Mutex<Vec<usize>>>) {
    let order = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    for k in 0..n {
        let (o, d) = (order.clone(), done_tx.clone());
        s.submit(
            tags(),
            None,
            move |_| {
                o.lock().unwrap().push(k);
                Ok(())
            },
            move |r: Result<()>| {
                r.expect("kernel");
                let _ = d.send(());
            },
        );
    }
    (done_rx, order)
}

#[test]
fn a_queued_kernel_panicking_fails_only_its_submitter() {
    let s = Arc::new(cpu_stream());
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let first = hold(&s, release_rx, Arc::default());
    let s2 = s.clone();
    let bad = std::thread::spawn(move || {
        s2.run_blocking(tags(), |_| -> Result<u32, EngineError> { panic!("boom") })
    });
    wait_queued(&s, 1);
    let s3 = s.clone();
    let good = std::thread::spawn(move || s3.run_blocking(tags(), |_| Ok(3u32)));
    wait_queued(&s, 2);
    release_tx.send(()).unwrap();
    assert_eq!(first.join().unwrap().unwrap(), 0);
    match bad.join().unwrap() {
        Err(ActorError::KernelPanic { message, .. }) => assert_eq!(message, "boom"),
        other => panic!("expected a kernel panic, got {other:?}"),
    }
    assert_eq!(good.join().unwrap().unwrap(), 3);
    // The stream is free again (the runner lets go just after delivering the last result).
    assert_eq!(s.run_blocking(tags(), |_| Ok(4u32)).unwrap(), 4);
    wait_until("stream never let go", || !s.lane.queue.lock().0);
}

#[test]
fn a_kernel_held_for_a_link_arrival_waits_for_it() {
    let s = cpu_stream();
    let due = Instant::now() + Duration::from_millis(30);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = rt
        .block_on(s.run_at(tags(), Some(due), |_| Ok(Instant::now())))
        .unwrap();
    assert!(started >= due, "ran {:?} early", due - started);
}

#[test]
fn a_stream_with_threads_of_its_own_computes_on_them() {
    let be = Arc::new(troupe_engine::kernels::CpuBackend::new());
    let s = Stream::spawn_with_threads("own", 0, be, None, StreamKind::CpuPool, Some(1))
        .expect("stream");
    let (threads, name) = s
        .run_blocking(tags(), |_| {
            let name = std::thread::current().name().map(str::to_string);
            Ok::<_, EngineError>((rayon::current_num_threads(), name))
        })
        .unwrap();
    // The kernels' parallel regions see the stream's pool (1 thread), not the process's.
    assert_eq!(threads, 1);
    assert_eq!(name.as_deref(), Some("troupe-own-0"));
    // A stream without one runs on the process's pool.
    let shared = cpu_stream();
    let name = shared
        .run_blocking(tags(), |_| {
            Ok::<_, EngineError>(std::thread::current().name().map(str::to_string))
        })
        .unwrap();
    assert_ne!(name.as_deref(), Some("troupe-own-0"));
}

/// A pool worker waiting inside one stream's kernel (for a task of its parallel region that
/// another worker holds) may take other pool jobs meanwhile; it must not take another stream's
/// drain there (see `KernelQueue`). Stream B's kernel, submitted while stream A's kernel waits,
/// runs on another thread or after A's kernel ends. (With one pool thread nothing can nest.)
#[test]
fn a_drain_never_runs_inside_another_streams_kernel() {
    use troupe_engine::kernels::pool;
    if pool::threads() < 2 {
        return;
    }
    let mut checked = 0;
    for _ in 0..1000 {
        if checked == 3 {
            break;
        }
        let (a, b) = (Arc::new(cpu_stream()), Arc::new(cpu_stream()));
        let (waiting_tx, waiting_rx) = mpsc::channel::<()>();
        let ha = std::thread::spawn(move || {
            a.run_blocking(tags(), move |_| {
                let me = std::thread::current().id();
                pool::for_each_task(2, &|_| {
                    if std::thread::current().id() != me {
                        // Held by the other worker: A's thread waits for it.
                        let _ = waiting_tx.send(());
                        std::thread::sleep(Duration::from_millis(100));
                    } else {
                        // Long enough for the other worker to take the other task.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                });
                Ok((me, Instant::now()))
            })
        });
        let helped = waiting_rx.recv_timeout(Duration::from_secs(10)).is_ok();
        let (b_thread, b_start) = b
            .run_blocking(tags(), |_| {
                Ok((std::thread::current().id(), Instant::now()))
            })
            .unwrap();
        let (a_thread, a_end) = ha.join().unwrap().unwrap();
        if helped {
            checked += 1;
            assert!(
                b_thread != a_thread || b_start >= a_end,
                "stream B's kernel ran inside stream A's on {a_thread:?}"
            );
        }
    }
    assert_eq!(
        checked, 3,
        "stream A's kernel never waited for another worker"
    );
}
