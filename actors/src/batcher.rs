//! Continuous batching. One driver thread owns the active sequences: every loop it admits the
//! requests that arrived meanwhile (their whole prompt is their chunk this step), runs one forward
//! pass over all active sequences (prefill chunks and 1-token decode chunks together), samples one
//! token per sequence and streams it out. Because every op is row-independent and attention is
//! per sequence, the tokens do not depend on who shares a step. A pass failing because an actor is
//! down fails only the sequences that needed it; the rest re-run the step (attention truncates the
//! caches back, so the re-run is exact).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use troupe_engine::generate::{check_request, last_rows, GenerateOutput, GenerateRequest};
use troupe_engine::sampling::Sampler;
use troupe_engine::EngineError;

use crate::batch::SeqCaches;
use crate::error::{ActorError, Result};
use crate::pass::{PassFailure, SeqInput};
use crate::runtime::Core;
use crate::transfer::Owned;

/// One generated token, with its logits row when asked for.
pub type FullToken = (u32, Option<Vec<f32>>);

/// Where a request's tokens go.
pub enum Sink {
    Tokens(tokio::sync::mpsc::UnboundedSender<Result<u32>>),
    Full(flume::Sender<Result<FullToken>>),
}

impl Sink {
    fn token(&self, t: u32, logits: Option<Vec<f32>>) {
        match self {
            Sink::Tokens(tx) => {
                let _ = tx.send(Ok(t));
            }
            Sink::Full(tx) => {
                let _ = tx.send(Ok((t, logits)));
            }
        }
    }
    fn fail(&self, e: ActorError) {
        match self {
            Sink::Tokens(tx) => {
                let _ = tx.send(Err(e));
            }
            Sink::Full(tx) => {
                let _ = tx.send(Err(e));
            }
        }
    }
}

struct Submission {
    request: GenerateRequest,
    sink: Sink,
}

/// Collects a `Full` stream into a `GenerateOutput`.
pub fn collect_full(rx: flume::Receiver<Result<FullToken>>) -> Result<GenerateOutput> {
    let mut out = GenerateOutput::default();
    while let Ok(item) = rx.recv() {
        let (t, logits) = item?;
        out.generated.push(t);
        out.step_logits.extend(logits);
    }
    Ok(out)
}

struct Active {
    id: u64,
    req: GenerateRequest,
    sampler: Sampler,
    caches: Arc<SeqCaches>,
    committed: usize,
    next: Vec<u32>,
    produced: usize,
    sink: Sink,
}

/// Handle to the batching thread.
pub struct Batcher {
    tx: std::sync::Mutex<Option<flume::Sender<Submission>>>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Batcher {
    pub fn start(core: Arc<Core>) -> Result<Batcher> {
        let (tx, rx) = flume::unbounded();
        let thread = std::thread::Builder::new()
            .name("troupe-batcher".into())
            .spawn(move || batch_loop(&core, rx))
            .map_err(|e| ActorError::Startup(format!("batcher thread: {e}")))?;
        Ok(Batcher {
            tx: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    fn submit(&self, request: GenerateRequest, sink: Sink) {
        let s = Submission { request, sink };
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match tx {
            Some(tx) => {
                if let Err(flume::SendError(s)) = tx.send(s) {
                    s.sink
                        .fail(ActorError::Closed("the engine is shut down".into()));
                }
            }
            None => s
                .sink
                .fail(ActorError::Closed("the engine is shut down".into())),
        }
    }

    /// Submits a request whose tokens stream out one by one.
    pub fn submit_tokens(
        &self,
        request: GenerateRequest,
    ) -> tokio::sync::mpsc::UnboundedReceiver<Result<u32>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.submit(request, Sink::Tokens(tx));
        rx
    }

    /// Submits a request whose tokens come with their logits rows (when `keep_logits`).
    pub fn submit_full(
        &self,
        request: GenerateRequest,
    ) -> Result<flume::Receiver<Result<FullToken>>> {
        let (tx, rx) = flume::unbounded();
        self.submit(request, Sink::Full(tx));
        Ok(rx)
    }

    /// Finishes the requests in progress, then stops the thread.
    pub fn stop(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn admit(core: &Core, s: Submission, active: &mut Vec<Active>) {
    if let Err(e) = check_request(&core.model, &s.request).map_err(ActorError::from) {
        s.sink.fail(e);
        return;
    }
    if s.request.max_new_tokens == 0 {
        return;
    }
    active.push(Active {
        id: core.next_request(),
        sampler: Sampler::new(s.request.sampling),
        caches: SeqCaches::new(&core.kv_pools),
        committed: 0,
        next: s.request.prompt.clone(),
        produced: 0,
        req: s.request,
        sink: s.sink,
    });
}

/// One token per active sequence from the logits of a pass (with the logits row when its
/// request keeps them). Greedy sampling runs on the device (`argmax`: 4 bytes per sequence come
/// back); the last rows are downloaded only when a request samples on the host or keeps them.
fn sample(
    logits: &Owned,
    active: &mut [Active],
) -> std::result::Result<Vec<(u32, Option<Vec<f32>>)>, PassFailure> {
    let fail = |e: EngineError| PassFailure {
        error: e.into(),
        sequences: None,
    };
    let be = &*logits.on;
    let lens: Vec<usize> = active.iter().map(|a| a.next.len()).collect();
    let last_rows = last_rows(be, &logits.t, &lens).map_err(fail)?;
    let on_host = active
        .iter()
        .any(|a| a.req.keep_logits || !a.sampler.is_greedy());
    if !on_host {
        let ids = be.argmax(&last_rows).map_err(fail)?;
        return Ok(ids.into_iter().map(|t| (t, None)).collect());
    }
    let host = be.download(&last_rows).map_err(fail)?;
    Ok(active
        .iter_mut()
        .enumerate()
        .map(|(j, a)| {
            let row = host.row(j);
            (
                a.sampler.sample(row),
                a.req.keep_logits.then(|| row.to_vec()),
            )
        })
        .collect())
}

fn batch_loop(core: &Core, rx: flume::Receiver<Submission>) {
    let mut active: Vec<Active> = Vec::new();
    loop {
        if active.is_empty() {
            match rx.recv() {
                Ok(s) => admit(core, s, &mut active),
                Err(_) => return,
            }
        }
        while let Ok(s) = rx.try_recv() {
            admit(core, s, &mut active);
        }
        if active.is_empty() {
            continue;
        }
        let seqs: Vec<SeqInput> = active
            .iter()
            .map(|a| SeqInput {
                request: a.id,
                tokens: a.next.clone(),
                caches: a.caches.clone(),
                start: a.committed,
            })
            .collect();
        let t0 = Instant::now();
        match core.forward(seqs).and_then(|l| sample(&l, &mut active)) {
            Ok(tokens) => {
                crate::metrics::step_done(active.len(), t0.elapsed());
                for (a, (tok, row)) in active.iter_mut().zip(tokens) {
                    a.sink.token(tok, row);
                    a.committed += a.next.len();
                    a.next = vec![tok];
                    a.produced += 1;
                }
                active.retain(|a| {
                    a.produced < a.req.max_new_tokens && a.req.stop_token != Some(a.next[0])
                });
            }
            Err(f) => {
                let failed: Vec<usize> = f
                    .sequences
                    .clone()
                    .unwrap_or_else(|| (0..active.len()).collect());
                let mut i = 0;
                active.retain(|a| {
                    let keep = !failed.contains(&i);
                    if !keep {
                        a.sink.fail(f.error.clone());
                    }
                    i += 1;
                    keep
                });
            }
        }
    }
}
