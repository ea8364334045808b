//! Device streams. A `Stream` is a worker thread owning one `Box<dyn Backend>` that runs submitted
//! kernels strictly in submission order, so actors sharing a stream serialise on it exactly like
//! CUDA work on one CUDA stream. A CPU stream wraps `CpuBackend`; a CUDA stream will wrap the
//! troupe-ptx backend through the same trait (`Stream::spawn` takes any `Box<dyn Backend>`).
//! Kernel panics are caught on the worker and returned as errors; the stream keeps running.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use troupe_engine::{Backend, EngineError};

use crate::error::{ActorError, Result};
use crate::trace::{SpanTags, Tracer};

type Job = Box<dyn FnOnce(&dyn Backend) + Send>;

/// A named in-order execution queue bound to one backend.
pub struct Stream {
    name: String,
    index: usize,
    tx: Option<flume::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    tracer: Option<Arc<Tracer>>,
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
        backend: Box<dyn Backend>,
        tracer: Option<Arc<Tracer>>,
    ) -> Result<Stream> {
        let (tx, rx) = flume::unbounded::<Job>();
        let thread = std::thread::Builder::new()
            .name(format!("troupe-stream-{name}"))
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&*backend);
                }
            })
            .map_err(|e| ActorError::Startup(format!("stream `{name}`: {e}")))?;
        Ok(Stream {
            name: name.to_string(),
            index,
            tx: Some(tx),
            thread: Some(thread),
            tracer,
        })
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
        f: impl FnOnce(&dyn Backend) -> Result<T, EngineError> + Send + 'static,
        done: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        let tracer = self.tracer.clone();
        let (stream, index) = (self.name.clone(), self.index);
        let job: Job = Box::new(move |be| {
            let start = Instant::now();
            let out = match std::panic::catch_unwind(AssertUnwindSafe(|| f(be))) {
                Ok(r) => r.map_err(ActorError::from),
                Err(p) => Err(ActorError::KernelPanic {
                    stream,
                    kernel: tags.name.to_string(),
                    message: panic_message(&*p),
                }),
            };
            if let Some(t) = &tracer {
                t.span(index, &tags, start, Instant::now());
            }
            done(out);
        });
        if let Some(tx) = &self.tx {
            // The worker only exits once every sender is gone, so this cannot fail while `self` lives.
            let _ = tx.send(job);
        }
    }

    /// Runs `f` on the stream; resolves when it has run.
    pub async fn run<T: Send + 'static>(
        &self,
        tags: SpanTags,
        f: impl FnOnce(&dyn Backend) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(tags, f, move |r| {
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
        let (tx, rx) = flume::bounded(1);
        self.submit(tags, f, move |r| {
            let _ = tx.send(r);
        });
        rx.recv()
            .map_err(|_| ActorError::Closed(format!("stream `{}` stopped", self.name)))?
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
