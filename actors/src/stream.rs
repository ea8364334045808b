//! Device streams. A `Stream` is one backend (`Arc<dyn Backend>`, built by the runtime's
//! [`BackendFactory`](crate::backend_factory::BackendFactory) from the stream's `device`) plus a `KernelQueue`: kernels submitted to it
//! run one at a time, strictly in submission order (a kernel held for a link arrival enters the
//! order when it arrives), so actors sharing a stream serialise on it exactly like CUDA work on
//! one CUDA stream. The order holds because the submitter enqueues synchronously; only the
//! drain is a pool task, started on the idle→busy transition. CPU streams run their kernels as tasks of the CPU
//! kernel pool ([`StreamKind::CpuPool`]); device streams (`ptx-interp`, `cuda:N`) on their own
//! worker thread, which on every stream also holds kernels back until their input arrives over
//! the link (`Stream::run_at`). The device backends come from troupe-ptx through the factory the
//! caller passes (this crate does not depend on troupe-ptx). Kernel panics are caught and
//! returned as errors; the stream keeps running.

use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use troupe_engine::kernels::row_kind;
use troupe_engine::{Backend, DeviceId, DeviceTensor, EngineError};

use crate::error::{ActorError, Result};
use crate::overlap::Overlap;
use crate::trace::{SpanTags, Tracer};
use crate::transfer::Owned;

type Work = Box<dyn FnOnce(&dyn Backend) + Send>;

/// A kernel, and the earliest time it may start (its input arrives over the link then).
struct Job {
    not_before: Option<Instant>,
    work: Work,
}

thread_local! {
    /// This thread is running a stream's drain (see [`KernelQueue`]).
    static DRAINING: Cell<bool> = const { Cell::new(false) };
}

/// The kernels of a stream not run yet, and whether a drain is under way. A submitter appends
/// its kernel synchronously, under the lock, so the queue order is the submission order; the
/// submission that finds the stream idle (the idle→busy transition) also starts the one drain,
/// which runs the queued kernels in order, one at a time, until none is left ("combining":
/// back-to-back kernels pass from one to the next on the same thread, with no wake-up in
/// between). A submitter that finds the stream busy only queues and goes on (its result reaches
/// it through its reply channel).
///
/// A drain never runs inside another: a pool worker waiting for the rest of a kernel's parallel
/// region takes other pool jobs meanwhile (rayon steals while it waits), and a drain it took
/// there would run a whole queue of another stream's kernels before the waiting kernel could
/// finish. Traced on two streams with the experts behind a 500 µs link, the shared experts'
/// kernel then lasted 3.4 ms (median) instead of ~0.65 ms, ending only when the other stream's
/// queue was empty; 12% of drains started nested. Such a drain hands itself back to the pool
/// instead (`Lane::start_drain`), for a worker that is not inside a kernel.
#[derive(Default)]
struct KernelQueue {
    state: Mutex<(bool, VecDeque<Work>)>, // (a drain is under way, kernels waiting their turn)
    /// Kernels submitted and not started (queued here, or held on the worker).
    pending: AtomicUsize,
}

impl KernelQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, VecDeque<Work>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Appends `work`; true when the stream was idle, so the caller must start a drain.
    fn push(&self, work: Work) -> bool {
        let mut q = self.lock();
        q.1.push_back(work);
        !std::mem::replace(&mut q.0, true)
    }
    /// Runs the queued kernels in order until none is left, then marks the stream idle; false,
    /// running nothing, when this thread is inside a drain already (see the type's doc).
    fn drain(&self, backend: &dyn Backend) -> bool {
        if DRAINING.with(Cell::get) {
            return false;
        }
        /// Clears the flag however the drain ends.
        struct Draining;
        impl Drop for Draining {
            fn drop(&mut self) {
                DRAINING.with(|d| d.set(false));
            }
        }
        DRAINING.with(|d| d.set(true));
        let _draining = Draining;
        loop {
            let next = {
                let mut q = self.lock();
                match q.1.pop_front() {
                    Some(w) => w,
                    None => {
                        q.0 = false;
                        return true;
                    }
                }
            };
            self.pending.fetch_sub(1, Ordering::Relaxed);
            // `Work` catches the kernel's panics; this guard only keeps the queue draining if
            // the bookkeeping around a kernel ever panicked (that submitter's reply is lost).
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| next(backend)));
        }
    }
}

/// Where a stream's ready kernels run: on the thread at hand, or as a task of the CPU kernel
/// pool (rayon's global pool, or the stream's own: `[placement] stream_threads`), whose worker
/// then takes part in the kernel's own parallel loops.
#[derive(Clone)]
struct Lane {
    queue: Arc<KernelQueue>,
    backend: Arc<dyn Backend>,
    on_pool: bool,
    own_pool: Option<Arc<rayon::ThreadPool>>,
}

impl Lane {
    /// Queues `work` in the caller (so kernels keep their submission order); on the idle→busy
    /// transition starts the drain: as a pool task, or right here on the worker thread.
    fn launch(&self, work: Work) {
        if !self.queue.push(work) {
            return;
        }
        if self.on_pool {
            self.start_drain();
        } else {
            self.queue.drain(&*self.backend);
        }
    }

    /// Hands the drain to the pool; a worker that finds itself inside another drain hands it
    /// back (see [`KernelQueue`]).
    fn start_drain(&self) {
        let lane = self.clone();
        let job = move || {
            if !lane.queue.drain(&*lane.backend) {
                lane.start_drain();
            }
        };
        match &self.own_pool {
            Some(pool) => pool.spawn(job),
            None => rayon::spawn(job),
        }
    }
}

/// A named in-order execution queue bound to one backend.
pub struct Stream {
    /// Shared with every kernel's wrapper (named in a kernel-panic error) without a copy.
    name: Arc<str>,
    index: usize,
    tx: Option<flume::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    tracer: Option<Arc<Tracer>>,
    overlap: Option<Arc<Overlap>>,
    lane: Lane,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stream({})", self.name)
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Where a stream runs its kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// As tasks of the CPU kernel pool (rayon), for backends callable from any thread (the CPU
    /// backend): the pool worker running a kernel takes part in the kernel's own parallel loops
    /// instead of sleeping until they finish, and no thread hands each kernel to a worker and
    /// back. Measured: this took the actor runtime's decode overhead against the reference
    /// executor from about -10% to parity (`troupe bench --runtime actors`).
    CpuPool,
    /// On the stream's own worker thread (device backends bound to one thread, e.g. CUDA).
    Worker,
}

impl StreamKind {
    /// How a stream on `device` runs: the CPU backend on the pool, every other device (custom
    /// ones included, whose thread-safety this crate cannot know) on its worker thread.
    pub fn for_device(device: &DeviceId) -> StreamKind {
        match device {
            DeviceId::Cpu => StreamKind::CpuPool,
            _ => StreamKind::Worker,
        }
    }
}

impl Stream {
    /// Starts stream `name` (trace track `index`) and its worker thread (which, on a `CpuPool`
    /// stream, only holds kernels waiting for a link arrival).
    pub fn spawn(
        name: &str,
        index: usize,
        backend: Arc<dyn Backend>,
        tracer: Option<Arc<Tracer>>,
        kind: StreamKind,
    ) -> Result<Stream> {
        Stream::spawn_with_threads(name, index, backend, tracer, kind, None)
    }

    /// [`Stream::spawn`]; a `CpuPool` stream given `threads` runs its kernels on a pool of that
    /// many threads of its own instead of the process's.
    pub fn spawn_with_threads(
        name: &str,
        index: usize,
        backend: Arc<dyn Backend>,
        tracer: Option<Arc<Tracer>>,
        kind: StreamKind,
        threads: Option<usize>,
    ) -> Result<Stream> {
        let own_pool = match (kind, threads) {
            (StreamKind::CpuPool, Some(n)) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name({
                        let name = name.to_string();
                        move |i| format!("troupe-{name}-{i}")
                    })
                    .build()
                    .map_err(|e| ActorError::Startup(format!("stream `{name}`: pool: {e}")))?,
            )),
            _ => None,
        };
        let (tx, rx) = flume::unbounded::<Job>();
        let lane = Lane {
            queue: Arc::new(KernelQueue::default()),
            backend,
            on_pool: kind == StreamKind::CpuPool,
            own_pool,
        };
        let l2 = lane.clone();
        let thread = std::thread::Builder::new()
            .name(format!("troupe-stream-{name}"))
            .spawn(move || worker(rx, &l2))
            .map_err(|e| ActorError::Startup(format!("stream `{name}`: {e}")))?;
        Ok(Stream {
            name: Arc::from(name),
            index,
            tx: Some(tx),
            thread: Some(thread),
            tracer,
            overlap: None,
            lane,
        })
    }

    /// Reports kernel start/end to `overlap` (the link-hiding measurement).
    pub fn with_overlap(mut self, overlap: Option<Arc<Overlap>>) -> Self {
        self.overlap = overlap;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend this stream's kernels run on.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.lane.backend
    }

    /// Kernels submitted but not started yet.
    pub fn queued(&self) -> usize {
        self.lane.queue.pending.load(Ordering::Relaxed)
    }

    /// Hands `f` to the stream: to its lane when due (see [`StreamKind`]), else to the worker,
    /// which launches it when its input arrives; `done` gets the result.
    fn submit<T: Send + 'static>(
        &self,
        tags: SpanTags,
        not_before: Option<Instant>,
        f: impl FnOnce(&dyn Backend) -> Result<T, EngineError> + Send + 'static,
        done: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        let work = self.wrap(tags, f, done);
        let due = not_before.is_none_or(|t| t <= Instant::now());
        self.lane.queue.pending.fetch_add(1, Ordering::Relaxed);
        if self.lane.on_pool && due {
            self.lane.launch(work);
        } else if let Some(tx) = &self.tx {
            // The worker only exits once every sender is gone, so this cannot fail while `self` lives.
            let _ = tx.send(Job { not_before, work });
        }
    }

    fn wrap<T: Send + 'static>(
        &self,
        tags: SpanTags,
        f: impl FnOnce(&dyn Backend) -> Result<T, EngineError> + Send + 'static,
        done: impl FnOnce(Result<T>) + Send + 'static,
    ) -> Work {
        let (tracer, overlap) = (self.tracer.clone(), self.overlap.clone());
        let (stream, index) = (self.name.clone(), self.index);
        Box::new(move |be| {
            if let Some(o) = &overlap {
                o.kernel(true);
            }
            let start = Instant::now();
            let generated = tags.generated_rows;
            let run = || row_kind::with_generated(generated, || f(be));
            let out = match std::panic::catch_unwind(AssertUnwindSafe(run)) {
                Ok(r) => r.map_err(ActorError::from),
                Err(p) => Err(ActorError::KernelPanic {
                    stream: stream.to_string(),
                    kernel: tags.name.to_string(),
                    message: panic_message(&*p),
                }),
            };
            if let Some(o) = &overlap {
                o.kernel(false);
            }
            if let Some(t) = &tracer {
                t.span(index, &tags, start, Instant::now());
            }
            done(out);
        })
    }

    /// Runs `f` on the stream; resolves when it has run.
    pub async fn run<T: Send + 'static>(
        &self,
        tags: SpanTags,
        f: impl FnOnce(&dyn Backend) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T> {
        self.run_at(tags, None, f).await
    }

    /// Like [`Stream::run`], but the kernel enters the stream's queue only at `not_before` (when
    /// its input arrives over the link): until then later-submitted ready kernels run first.
    pub async fn run_at<T: Send + 'static>(
        &self,
        tags: SpanTags,
        not_before: Option<Instant>,
        f: impl FnOnce(&dyn Backend) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(tags, not_before, f, move |r| {
            let _ = tx.send(r);
        });
        rx.await
            .map_err(|_| ActorError::Closed(format!("stream `{}` stopped", self.name)))?
    }

    /// [`Stream::run`] of a kernel producing a tensor, returned with this stream's backend.
    pub async fn run_owned(
        &self,
        tags: SpanTags,
        f: impl FnOnce(&dyn Backend) -> Result<DeviceTensor, EngineError> + Send + 'static,
    ) -> Result<Owned> {
        let t = self.run_at(tags, None, f).await?;
        Ok(Owned::new(t, self.backend().clone()))
    }

    /// Runs `f` on the stream and blocks the calling (non-async) thread until it has run.
    pub fn run_blocking<T: Send + 'static>(
        &self,
        tags: SpanTags,
        f: impl FnOnce(&dyn Backend) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = flume::bounded(1);
        self.submit(tags, None, f, move |r| {
            let _ = tx.send(r);
        });
        rx.recv()
            .map_err(|_| ActorError::Closed(format!("stream `{}` stopped", self.name)))?
    }
}

/// The worker loop: ready kernels in submission order; a kernel with a future `not_before` waits
/// aside and joins the queue when that time comes (in arrival order).
fn worker(rx: flume::Receiver<Job>, lane: &Lane) {
    crate::link::precise_timers();
    let mut ready: VecDeque<Work> = VecDeque::new();
    let mut waiting: Vec<(Instant, u64, Work)> = Vec::new();
    let mut seq = 0u64;
    let mut open = true;
    loop {
        let now = Instant::now();
        // Arrived kernels join the queue, earliest arrival first.
        if waiting.iter().any(|w| w.0 <= now) {
            waiting.sort_by_key(|w| (w.0, w.1));
            let n = waiting.iter().take_while(|w| w.0 <= now).count();
            ready.extend(waiting.drain(..n).map(|w| w.2));
        }
        while let Ok(job) = rx.try_recv() {
            take(job, &mut ready, &mut waiting, &mut seq);
        }
        if let Some(work) = ready.pop_front() {
            lane.launch(work);
            continue;
        }
        let next = waiting.iter().map(|w| w.0).min();
        let got = match (open, next) {
            (true, Some(t)) => match rx.recv_deadline(t) {
                Ok(job) => Some(job),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            },
            (true, None) => match rx.recv() {
                Ok(job) => Some(job),
                Err(_) => {
                    open = false;
                    None
                }
            },
            (false, Some(t)) => {
                std::thread::sleep(t.saturating_duration_since(Instant::now()));
                None
            }
            (false, None) => return,
        };
        if let Some(job) = got {
            take(job, &mut ready, &mut waiting, &mut seq);
        }
    }
}

fn take(
    job: Job,
    ready: &mut VecDeque<Work>,
    waiting: &mut Vec<(Instant, u64, Work)>,
    seq: &mut u64,
) {
    match job.not_before {
        Some(t) if t > Instant::now() => {
            *seq += 1;
            waiting.push((t, *seq, job.work));
        }
        _ => ready.push_back(job.work),
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
