//! Device streams. A `Stream` is a worker thread owning one backend (`Arc<dyn Backend>`, built by
//! the runtime's [`BackendFactory`] from the stream's `device`) that runs submitted kernels
//! strictly in submission order, so actors sharing a stream serialise on it exactly like CUDA work
//! on one CUDA stream. CPU streams wrap `CpuBackend`; `ptx-interp` / `cuda:N` streams wrap the
//! troupe-ptx backends, passed in by the caller (this crate does not depend on troupe-ptx).
//! Kernel panics are caught on the worker and returned as errors; the stream keeps running.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use troupe_engine::{Backend, EngineError};

use crate::error::{ActorError, Result};
use crate::overlap::Overlap;
use crate::trace::{SpanTags, Tracer};

type Work = Box<dyn FnOnce(&dyn Backend) + Send>;

/// A kernel, and the earliest time it may start (its input arrives over the link then).
struct Job {
    not_before: Option<Instant>,
    work: Work,
}

/// A device name → backend function.
pub type MakeBackend = dyn Fn(&str) -> std::result::Result<Arc<dyn Backend>, String> + Send + Sync;

/// A kernel closure not run yet (handed back when it cannot run inline).
type Kernel<T> = Box<dyn FnOnce(&dyn Backend) -> Result<T, EngineError> + Send>;

/// Builds the backend of a stream from its device name (`cpu`, `ptx-interp`, `cuda:N`).
#[derive(Clone)]
pub struct BackendFactory(pub Arc<MakeBackend>);

impl std::fmt::Debug for BackendFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendFactory")
    }
}

impl BackendFactory {
    /// Wraps a device → backend function.
    pub fn new(
        f: impl Fn(&str) -> std::result::Result<Arc<dyn Backend>, String> + Send + Sync + 'static,
    ) -> Self {
        BackendFactory(Arc::new(f))
    }
    /// The default: `cpu` only.
    pub fn cpu_only() -> Self {
        BackendFactory::new(|device| {
            match device {
            "cpu" => Ok(Arc::new(troupe_engine::kernels::CpuBackend::new()) as Arc<dyn Backend>),
            other => Err(format!(
                "device `{other}` needs a backend factory (RuntimeOptions::backends); this one builds cpu only"
            )),
        }
        })
    }
    pub fn build(&self, device: &str) -> std::result::Result<Arc<dyn Backend>, String> {
        (self.0)(device)
    }
}

/// Who may run a kernel of the stream now: at most one at a time, in submission order.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, usize)>, // (a kernel is running, kernels queued on the worker)
    cv: Condvar,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, usize)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Claims the stream for an inline kernel: only when idle with nothing queued.
    fn try_enter(&self) -> bool {
        let mut g = self.lock();
        if g.0 || g.1 > 0 {
            return false;
        }
        g.0 = true;
        true
    }
    /// The worker claims the stream for its next queued kernel.
    fn enter_queued(&self) {
        let mut g = self.lock();
        while g.0 {
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.0 = true;
        g.1 = g.1.saturating_sub(1);
    }
    fn leave(&self) {
        self.lock().0 = false;
        self.cv.notify_all();
    }
    fn queued(&self) {
        self.lock().1 += 1;
    }
}

/// A named in-order execution queue bound to one backend.
pub struct Stream {
    name: String,
    index: usize,
    tx: Option<flume::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    tracer: Option<Arc<Tracer>>,
    overlap: Option<Arc<Overlap>>,
    backend: Arc<dyn Backend>,
    gate: Arc<Gate>,
    /// Run a kernel on the caller's thread when the stream is idle (CPU streams).
    inline: bool,
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

impl Stream {
    /// Starts the worker thread of stream `name` (trace track `index`).
    pub fn spawn(
        name: &str,
        index: usize,
        backend: Arc<dyn Backend>,
        tracer: Option<Arc<Tracer>>,
    ) -> Result<Stream> {
        let (tx, rx) = flume::unbounded::<Job>();
        let gate = Arc::new(Gate::default());
        let (be, g) = (backend.clone(), gate.clone());
        let thread = std::thread::Builder::new()
            .name(format!("troupe-stream-{name}"))
            .spawn(move || worker(rx, &*be, &g))
            .map_err(|e| ActorError::Startup(format!("stream `{name}`: {e}")))?;
        Ok(Stream {
            name: name.to_string(),
            index,
            tx: Some(tx),
            thread: Some(thread),
            tracer,
            overlap: None,
            backend,
            gate,
            inline: false,
        })
    }

    /// Lets an idle stream run a kernel directly on the submitting thread (no hand-over to the
    /// worker and back: two thread wake-ups saved per op). Only for backends that may be called
    /// from any thread (the CPU backend); queued kernels keep their order either way.
    pub fn inline_when_idle(mut self, yes: bool) -> Self {
        self.inline = yes;
        self
    }

    /// Reports kernel start/end to `overlap` (the link-hiding measurement).
    pub fn with_overlap(mut self, overlap: Option<Arc<Overlap>>) -> Self {
        self.overlap = overlap;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kernels submitted but not started yet.
    pub fn queued(&self) -> usize {
        self.tx.as_ref().map(|t| t.len()).unwrap_or(0)
    }

    fn submit<T: Send + 'static>(
        &self,
        tags: SpanTags,
        not_before: Option<Instant>,
        f: impl FnOnce(&dyn Backend) -> Result<T, EngineError> + Send + 'static,
        done: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        let work = self.wrap(tags, f, done);
        if let Some(tx) = &self.tx {
            self.gate.queued();
            // The worker only exits once every sender is gone, so this cannot fail while `self` lives.
            let _ = tx.send(Job { not_before, work });
        }
    }

    /// Runs `f` right here if the stream is idle (see [`Stream::inline_when_idle`]).
    fn try_inline<T: Send + 'static>(
        &self,
        tags: &SpanTags,
        not_before: Option<Instant>,
        f: impl FnOnce(&dyn Backend) -> Result<T, EngineError> + Send + 'static,
    ) -> std::result::Result<Result<T>, Kernel<T>> {
        let due = not_before.is_none_or(|t| t <= Instant::now());
        if !(self.inline && due && self.gate.try_enter()) {
            return Err(Box::new(f));
        }
        let out = Arc::new(Mutex::new(None));
        let o2 = out.clone();
        let work = self.wrap(tags.clone(), f, move |r| {
            *o2.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        });
        work(&*self.backend);
        self.gate.leave();
        let r = out.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(r.unwrap_or_else(|| {
            Err(ActorError::Closed(format!(
                "stream `{}`: kernel lost",
                self.name
            )))
        }))
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
            let out = match std::panic::catch_unwind(AssertUnwindSafe(|| f(be))) {
                Ok(r) => r.map_err(ActorError::from),
                Err(p) => Err(ActorError::KernelPanic {
                    stream,
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
        let f = match self.try_inline(&tags, not_before, f) {
            Ok(r) => return r,
            Err(f) => f,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(tags, not_before, f, move |r| {
            let _ = tx.send(r);
        });
        rx.await
            .map_err(|_| ActorError::Closed(format!("stream `{}` stopped", self.name)))?
    }

    /// Runs `f` on the stream and blocks the calling (non-async) thread until it has run.
    pub fn run_blocking<T: Send + 'static>(
        &self,
        tags: SpanTags,
        f: impl FnOnce(&dyn Backend) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T> {
        let f = match self.try_inline(&tags, None, f) {
            Ok(r) => return r,
            Err(f) => f,
        };
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
fn worker(rx: flume::Receiver<Job>, backend: &dyn Backend, gate: &Gate) {
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
            gate.enter_queued();
            work(backend);
            gate.leave();
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
