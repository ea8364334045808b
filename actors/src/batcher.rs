//! Continuous batching. One driver thread owns the active sequences: every loop it admits the
//! requests that arrived meanwhile (their whole prompt is their chunk this step, less the full
//! pages the prefix cache already holds when it is on; once prefilled, a prompt's full pages
//! are published to it), drops the
//! requests whose stream was dropped or cancelled (their KV pages go back at once), runs one
//! forward pass over the active sequences whose stream has room (prefill chunks and 1-token
//! decode chunks together), samples one token per sequence and streams it out. A stream that
//! is full pauses its request (back-pressure: no compute, its cache kept) until the reader takes
//! an event; the others go on. Because every op is row-independent and attention is per
//! sequence, the tokens do not depend on who shares a step. A pass failing because an actor is
//! down fails only the sequences that needed it; the rest re-run the step (attention truncates
//! the caches back, so the re-run is exact).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use troupe_engine::generate::{check_request, last_rows, GenerateOutput, GenerateRequest};
use troupe_engine::model::ChunkKind;
use troupe_engine::sampling::Sampler;
use troupe_engine::EngineError;

use crate::batch::SeqCaches;
use crate::error::{ActorError, Result};
use crate::pass::{PassFailure, SeqInput};
use crate::runtime::Core;
use crate::transfer::Owned;

/// One generated token, with its logits row when asked for.
pub type FullToken = (u32, Option<Vec<f32>>);

/// Why a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced `max_new_tokens`.
    Length,
    /// It produced its stop token (or EOS).
    Stop,
}

/// One token on a request's bounded stream.
#[derive(Clone, Debug)]
pub struct StreamToken {
    pub token: u32,
    /// The logits row it was chosen from (only with `keep_logits`).
    pub logits: Option<Vec<f32>>,
    /// Set on the request's last token.
    pub finish: Option<FinishReason>,
}

/// The sending side of a request's bounded stream.
pub type StreamSender = tokio::sync::mpsc::Sender<Result<StreamToken>>;

/// Where a request's tokens go.
pub enum Sink {
    /// A bounded stream (the async `Engine`): full pauses the request; closed or `cancelled`
    /// ends it.
    Stream {
        tx: StreamSender,
        cancelled: Arc<AtomicBool>,
    },
    /// Everything, unbounded (the blocking `ActorRuntime`, whose caller collects it).
    Full(flume::Sender<Result<FullToken>>),
}

impl Sink {
    fn token(&self, token: u32, logits: Option<Vec<f32>>, finish: Option<FinishReason>) {
        match self {
            // Room was checked before the step and only this thread sends.
            Sink::Stream { tx, .. } => {
                let _ = tx.try_send(Ok(StreamToken {
                    token,
                    logits,
                    finish,
                }));
            }
            Sink::Full(tx) => {
                let _ = tx.send(Ok((token, logits)));
            }
        }
    }
    fn fail(&self, e: ActorError) {
        match self {
            Sink::Stream { tx, .. } => {
                let _ = tx.try_send(Err(e));
            }
            Sink::Full(tx) => {
                let _ = tx.send(Err(e));
            }
        }
    }
    /// The reader is gone (stream dropped or cancelled): the request stops.
    fn gone(&self) -> bool {
        match self {
            Sink::Stream { tx, cancelled } => tx.is_closed() || cancelled.load(Ordering::Acquire),
            Sink::Full(tx) => tx.is_disconnected(),
        }
    }
    /// The stream can take one more token.
    fn has_room(&self) -> bool {
        match self {
            Sink::Stream { tx, .. } => tx.capacity() > 0,
            Sink::Full(_) => true,
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
    finished: bool,
    sink: Sink,
}

/// How the driver thread should end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    Running,
    /// Finish the requests in progress (`Batcher::stop`).
    Finish,
    /// Drop the requests in progress (`Batcher::abort`: the engine was dropped).
    Abort,
}

/// What the driver thread waits on: new requests, a reader making room or cancelling, a stop.
pub struct Inbox {
    state: Mutex<InboxState>,
    changed: Condvar,
    /// Tokens generated so far, every request (as `troupe_tokens_generated_total` counts them).
    tokens_generated: AtomicU64,
}

struct InboxState {
    submissions: VecDeque<Submission>,
    woken: bool,
    stop: Stop,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// A reader took an event or cancelled: the driver looks at its requests again.
    pub fn wake(&self) {
        self.lock().woken = true;
        self.changed.notify_one();
    }
    fn set_stop(&self, stop: Stop) {
        let mut st = self.lock();
        st.stop = st.stop.max(stop);
        st.woken = true;
        self.changed.notify_one();
    }
    /// The submissions so far and the stop state; with `wait`, first waits (up to `timeout`)
    /// for anything to happen. Returns `true` as its last item when the wait timed out.
    fn take(&self, wait: bool, timeout: Duration) -> (Vec<Submission>, Stop, bool) {
        let mut st = self.lock();
        let mut timed_out = false;
        if wait && st.submissions.is_empty() && !st.woken && st.stop != Stop::Abort {
            let (guard, t) = self
                .changed
                .wait_timeout_while(st, timeout, |s| {
                    s.submissions.is_empty() && !s.woken && s.stop != Stop::Abort
                })
                .unwrap_or_else(|p| p.into_inner());
            st = guard;
            timed_out = t.timed_out();
        }
        st.woken = false;
        (st.submissions.drain(..).collect(), st.stop, timed_out)
    }
}

/// How long a stopping engine waits for the reader of a full stream before it drops the
/// request (so `shutdown` cannot hang on a stream nobody reads).
const UNREAD_STREAM_GRACE: Duration = Duration::from_secs(5);

/// Handle to the batching thread.
pub struct Batcher {
    inbox: Arc<Inbox>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Batcher {
    pub fn start(core: Arc<Core>) -> Result<Batcher> {
        let inbox = Arc::new(Inbox {
            state: Mutex::new(InboxState {
                submissions: VecDeque::new(),
                woken: false,
                stop: Stop::Running,
            }),
            changed: Condvar::new(),
            tokens_generated: AtomicU64::new(0),
        });
        let driver = inbox.clone();
        let thread = std::thread::Builder::new()
            .name("troupe-batcher".into())
            .spawn(move || batch_loop(&core, &driver))
            .map_err(|e| ActorError::Startup(format!("batcher thread: {e}")))?;
        Ok(Batcher {
            inbox,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Tokens generated so far by every request.
    pub fn tokens_generated(&self) -> u64 {
        self.inbox.tokens_generated.load(Ordering::Relaxed)
    }

    /// What a reader wakes the driver with.
    pub fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }

    fn submit(&self, request: GenerateRequest, sink: Sink) -> Result<()> {
        let mut st = self.inbox.lock();
        if st.stop != Stop::Running {
            return Err(ActorError::Closed("the engine is shut down".into()));
        }
        st.submissions.push_back(Submission { request, sink });
        self.inbox.changed.notify_one();
        Ok(())
    }

    /// Submits a request whose tokens go to `tx` (a bounded stream; see [`Sink::Stream`]).
    pub fn submit_stream(
        &self,
        request: GenerateRequest,
        tx: StreamSender,
        cancelled: Arc<AtomicBool>,
    ) -> Result<()> {
        self.submit(request, Sink::Stream { tx, cancelled })
    }

    /// Submits a request whose tokens come with their logits rows (when `keep_logits`).
    pub fn submit_full(
        &self,
        request: GenerateRequest,
    ) -> Result<flume::Receiver<Result<FullToken>>> {
        let (tx, rx) = flume::unbounded();
        self.submit(request, Sink::Full(tx))?;
        Ok(rx)
    }

    /// Finishes the requests in progress, then stops the thread (a request whose full stream
    /// goes unread for 5 s is dropped).
    pub fn stop(&self) {
        self.inbox.set_stop(Stop::Finish);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Drops the requests in progress and lets the thread end after its current step, without
    /// waiting for it.
    pub fn abort(&self) {
        self.inbox.set_stop(Stop::Abort);
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.abort();
        // Joining on an async thread could wait for actors that need this very thread.
        if tokio::runtime::Handle::try_current().is_err() {
            self.stop();
        }
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
    let caches = SeqCaches::new(&core.kv_pools);
    let reused = match core.prefix_cache {
        true => {
            let n = core
                .kv_pools
                .reuse_prefix(&mut caches.lock(), &s.request.prompt);
            crate::metrics::prefix_cache(&core.kv_pools.prefix_stats());
            n
        }
        false => 0,
    };
    active.push(Active {
        id: core.next_request(),
        sampler: Sampler::new(s.request.sampling),
        caches,
        committed: reused,
        next: s.request.prompt[reused..].to_vec(),
        produced: 0,
        finished: false,
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

fn batch_loop(core: &Core, inbox: &Inbox) {
    let eos = core.model.spec.eos_token_id;
    let mut active: Vec<Active> = Vec::new();
    let mut runnable = false;
    loop {
        let (submissions, stop, timed_out) = inbox.take(!runnable, UNREAD_STREAM_GRACE);
        for s in submissions {
            admit(core, s, &mut active);
        }
        if stop == Stop::Abort {
            for a in &active {
                a.sink
                    .fail(ActorError::Closed("the engine was dropped".into()));
            }
            return;
        }
        // Cancelled or dropped streams: the request and its cache pages go now.
        active.retain(|a| !a.sink.gone());
        crate::metrics::kv_pages_in_use(pages_in_use(core));
        if stop == Stop::Finish && (active.is_empty() || timed_out) {
            for a in &active {
                a.sink.fail(ActorError::Closed(
                    "the engine shut down while this stream went unread".into(),
                ));
            }
            return;
        }
        let (mut running, parked): (Vec<Active>, Vec<Active>) =
            active.drain(..).partition(|a| a.sink.has_room());
        runnable = !running.is_empty();
        if runnable {
            step(core, &mut running, eos, &inbox.tokens_generated);
        }
        active = running;
        active.extend(parked);
        crate::metrics::kv_pages_in_use(pages_in_use(core));
        runnable = runnable && !active.is_empty();
    }
}

/// KV pages held now, over the runtime's distinct page allocators.
fn pages_in_use(core: &Core) -> usize {
    let mut seen: Vec<&Arc<troupe_engine::model::kv::PageAllocator>> = Vec::new();
    let mut pages = 0;
    for pool in &core.kv_pools.layers {
        let alloc = pool.allocator();
        if !seen.iter().any(|s| Arc::ptr_eq(s, alloc)) {
            seen.push(alloc);
            pages += alloc.pages_in_use();
        }
    }
    pages
}

/// One forward pass over `active`, one token each; finished and failed requests leave.
fn step(core: &Core, active: &mut Vec<Active>, eos: Option<u32>, generated: &AtomicU64) {
    let seqs: Vec<SeqInput> = active
        .iter()
        .map(|a| SeqInput {
            request: a.id,
            tokens: a.next.clone(),
            caches: a.caches.clone(),
            start: a.committed,
            kind: match a.produced {
                0 => ChunkKind::Prompt,
                _ => ChunkKind::Generated,
            },
        })
        .collect();
    let t0 = Instant::now();
    match core.forward(seqs).and_then(|l| sample(&l, active)) {
        Ok(tokens) => {
            crate::metrics::step_done(active.len(), t0.elapsed());
            generated.fetch_add(active.len() as u64, Ordering::Relaxed);
            for (a, (tok, row)) in active.iter_mut().zip(tokens) {
                a.committed += a.next.len();
                if a.produced == 0 && core.prefix_cache {
                    core.kv_pools
                        .publish_prefix(&a.caches.lock(), &a.req.prompt);
                    crate::metrics::prefix_cache(&core.kv_pools.prefix_stats());
                }
                a.next = vec![tok];
                a.produced += 1;
                let finish = if a.req.stops_at(tok, eos) {
                    Some(FinishReason::Stop)
                } else if a.produced >= a.req.max_new_tokens {
                    Some(FinishReason::Length)
                } else {
                    None
                };
                a.sink.token(tok, row, finish);
                a.finished = finish.is_some();
            }
            active.retain(|a| !a.finished);
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
