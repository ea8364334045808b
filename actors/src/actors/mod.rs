//! Block actors: the generic supervised actor every compute block runs in, and the blocks
//! themselves (attention, routed-expert groups, shared experts, dense MLPs, routers).
//!
//! Data plane vs control plane: an actor's work arrives as an [`Envelope`] on its **bounded**
//! flume channel (capacity = `placement.channel_capacity`, the back-pressure quota) and its
//! result leaves on the envelope's reply channel; tensors are `Arc`-backed, so nothing is copied.
//! The ractor mailbox (unbounded) only ever carries the control message `Pull`. Concurrent
//! blocks (routers, expert groups, shared experts) work on up to `channel_capacity` envelopes at
//! once, each as a task. Supervision: the envelopes being worked on sit in the actor's
//! `InflightSet`, which lives outside the actor instance, so a restarted actor re-issues them first.

pub mod attention;
pub mod expert;
pub mod remote;
pub mod router;

use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};

use crate::error::{ActorError, Result};
use crate::fault::{FaultKind, FaultTrigger};
use crate::inflight::InflightSet;
use crate::link::{Link, TransferTags};
use crate::metrics::ActorMetrics;
use crate::stream::Stream;
use crate::trace::{SpanTags, Tracer};

/// Where an actor runs and reports.
pub struct BlockCtx {
    pub name: String,
    pub stream: Arc<Stream>,
    pub tracer: Option<Arc<Tracer>>,
}

impl BlockCtx {
    /// The span tags of a kernel: everything when tracing, only the kernel name otherwise (so
    /// the untraced path allocates nothing).
    pub(crate) fn tags(&self, name: &'static str, meta: &Meta, layer: usize) -> SpanTags {
        if self.tracer.is_none() {
            return SpanTags {
                generated_rows: meta.generated_rows,
                ..SpanTags::named(name)
            };
        }
        SpanTags {
            name,
            generated_rows: meta.generated_rows,
            actor: self.name.clone(),
            layer: Some(layer),
            micro_batch: Some(meta.micro_batch),
            step: Some(meta.step),
            requests: meta.requests.to_vec(),
            ..SpanTags::default()
        }
    }
    pub(crate) fn traced(&self) -> bool {
        self.tracer.is_some()
    }
    pub(crate) fn flow_id(&self) -> Option<u64> {
        self.tracer.as_ref().map(|t| t.flow_id())
    }
}

/// Which step / micro-batch / requests a message belongs to (for traces and metrics).
#[derive(Clone, Debug, Default)]
pub struct Meta {
    pub step: u64,
    pub micro_batch: usize,
    pub requests: Arc<Vec<u64>>,
    /// Every row is a generated token's: the kernels take that kind's linears
    /// (`troupe_engine::kernels::row_kind`).
    pub generated_rows: bool,
}

/// One kind of compute block.
pub trait Block: Send + Sync + 'static {
    type Job: Clone + Send + Sync + 'static;
    type Out: Send + 'static;
    /// Multiplier on the supervision deadline (routers wait on experts).
    const DEADLINE_FACTOR: u32 = 1;
    /// Whether the actor may work on several envelopes at once (up to the channel capacity):
    /// a router waiting on micro-batch A's experts and link must not hold up B's routing.
    const CONCURRENT: bool = false;
    fn run(
        &self,
        ctx: &BlockCtx,
        job: Self::Job,
        meta: &Meta,
    ) -> impl Future<Output = Result<Self::Out>> + Send;
    /// Bytes of a result (what crosses the link on the way back).
    fn out_bytes(_out: &Self::Out) -> usize {
        0
    }
    /// Records when a result sent back over the link arrives.
    fn arrives_at(_out: &mut Self::Out, _at: Instant) {}
}

/// Where a result goes: straight back, or across the link.
pub enum ReplyTo<T> {
    Direct(flume::Sender<Result<T>>),
    /// Back over the link, the transfer tagged with what it belongs to.
    ViaLink(Arc<Link>, flume::Sender<Result<T>>, TransferTags),
}

impl<T> Clone for ReplyTo<T> {
    fn clone(&self) -> Self {
        match self {
            ReplyTo::Direct(t) => ReplyTo::Direct(t.clone()),
            ReplyTo::ViaLink(l, t, tags) => ReplyTo::ViaLink(l.clone(), t.clone(), *tags),
        }
    }
}

impl<T: Send + 'static> ReplyTo<T> {
    pub(crate) async fn send<B: Block<Out = T>>(&self, r: Result<T>, bytes: usize) {
        match self {
            ReplyTo::Direct(tx) => {
                let _ = tx.send_async(r).await;
            }
            ReplyTo::ViaLink(link, tx, tags) => {
                let mut r = r;
                if let Ok(out) = &mut r {
                    B::arrives_at(out, link.book_tagged("combine", bytes, *tags));
                }
                let _ = tx.send_async(r).await;
            }
        }
    }
}

/// A unit of work for a block actor.
pub struct Envelope<B: Block> {
    pub job: B::Job,
    pub meta: Meta,
    pub reply: ReplyTo<B::Out>,
}

impl<B: Block> Clone for Envelope<B> {
    fn clone(&self) -> Self {
        Envelope {
            job: self.job.clone(),
            meta: self.meta.clone(),
            reply: self.reply.clone(),
        }
    }
}

/// Sends `job` to a block actor and waits for its result.
pub(crate) async fn call<B: Block>(
    tx: &flume::Sender<Envelope<B>>,
    job: B::Job,
    meta: Meta,
) -> Result<B::Out> {
    let (rtx, rrx) = flume::bounded(2);
    tx.send_async(Envelope {
        job,
        meta,
        reply: ReplyTo::Direct(rtx),
    })
    .await
    .map_err(|_| ActorError::Closed("a block actor's channel closed".into()))?;
    rrx.recv_async()
        .await
        .map_err(|_| ActorError::Closed("a block actor dropped a request".into()))?
}

/// An envelope being worked on (an entry of the actor's [`InflightSet`], kept outside the
/// actor instance so a restart re-issues it).
pub struct Attempt<B: Block> {
    pub env: Envelope<B>,
    /// When the current attempt started (the supervisor's deadline runs from here).
    pub since: Instant,
    /// The actor instance (epoch) that started it; an older epoch means "re-issue me".
    pub epoch: u64,
}

impl<B: Block> Clone for Attempt<B> {
    fn clone(&self) -> Self {
        Attempt {
            env: self.env.clone(),
            since: self.since,
            epoch: self.epoch,
        }
    }
}

/// Everything an actor instance needs; outlives instances, so restarts keep weights (the block
/// holds `Arc`s into the loaded model), the queue and the in-flight envelopes.
pub struct BlockSlot<B: Block> {
    pub block: Arc<B>,
    pub ctx: BlockCtx,
    pub rx: flume::Receiver<Envelope<B>>,
    pub inflight: InflightSet<Attempt<B>>,
    pub fault: Option<Arc<FaultTrigger>>,
    pub down: AtomicBool,
    metrics: ActorMetrics,
    epoch: AtomicU64,
    /// A concurrent actor at its in-flight limit waits for a task to finish (which then pulls).
    parked: AtomicBool,
}

impl<B: Block> BlockSlot<B> {
    pub fn new(
        block: B,
        ctx: BlockCtx,
        rx: flume::Receiver<Envelope<B>>,
        fault: Option<Arc<FaultTrigger>>,
    ) -> Arc<Self> {
        Arc::new(BlockSlot {
            block: Arc::new(block),
            metrics: ActorMetrics::new(&ctx.name),
            ctx,
            rx,
            inflight: InflightSet::default(),
            fault,
            down: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            parked: AtomicBool::new(false),
        })
    }
    /// Envelopes a concurrent actor works on at once: the channel capacity (the same quota).
    fn limit(&self) -> usize {
        if B::CONCURRENT {
            self.rx.capacity().unwrap_or(1).max(1)
        } else {
            1
        }
    }
    /// Runs one envelope to its reply, then forgets it.
    async fn execute(&self, id: u64, env: Envelope<B>) {
        let t0 = Instant::now();
        // The in-flight list keeps its own copy for re-issue; this one is consumed.
        let Envelope { job, meta, reply } = env;
        let out = self.block.run(&self.ctx, job, &meta).await;
        self.metrics.message(t0.elapsed(), self.rx.len());
        let bytes = out.as_ref().map(B::out_bytes).unwrap_or(0);
        reply.send::<B>(out, bytes).await;
        self.inflight.remove(id);
    }
    /// One attempt at `env`: the fault hook, then run inline or as a task.
    async fn start(self: &Arc<Self>, me: &ActorRef<BlockMsg>, id: u64, env: Envelope<B>) {
        if let Some(f) = &self.fault {
            match f.on_attempt() {
                Some(FaultKind::Panic) => {
                    panic!("injected fault: actor `{}` panics", self.ctx.name)
                }
                Some(FaultKind::Hang) => std::future::pending::<()>().await,
                None => {}
            }
        }
        if !B::CONCURRENT {
            self.execute(id, env).await;
            return;
        }
        let (s, me2) = (self.clone(), me.clone());
        let task = tokio::spawn(async move {
            // A panic outside the kernels (those are caught on the stream) crashes the actor, so
            // the supervisor restarts it and the new instance re-issues the envelope.
            if AssertUnwindSafe(s.execute(id, env))
                .catch_unwind()
                .await
                .is_err()
            {
                me2.get_cell().kill();
                return;
            }
            if s.parked.swap(false, Ordering::SeqCst) {
                let _ = me2.send_message(BlockMsg::Pull);
            }
        });
        self.inflight.set_task(id, task.abort_handle());
    }
}

/// The ractor actor running one block.
pub struct BlockActor<B: Block>(PhantomData<fn() -> B>);

/// Control messages of a block actor (tensors never travel here).
#[derive(Debug)]
pub enum BlockMsg {
    /// Take the next envelope (the in-flight ones first, after a restart).
    Pull,
}

impl<B: Block> Actor for BlockActor<B> {
    type Msg = BlockMsg;
    type State = Arc<BlockSlot<B>>;
    type Arguments = Arc<BlockSlot<B>>;

    async fn pre_start(
        &self,
        _me: ActorRef<BlockMsg>,
        slot: Arc<BlockSlot<B>>,
    ) -> Result<Self::State, ActorProcessingErr> {
        slot.epoch.fetch_add(1, Ordering::SeqCst);
        Ok(slot)
    }

    async fn post_start(
        &self,
        me: ActorRef<BlockMsg>,
        _slot: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        me.send_message(BlockMsg::Pull)?;
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<BlockMsg>,
        _msg: BlockMsg,
        slot: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let epoch = slot.epoch.load(Ordering::SeqCst);
        // Re-issue what a previous instance left in flight (its tasks are aborted first).
        let now = Instant::now();
        let stale = slot.inflight.reissue(|a| {
            let old = a.epoch != epoch;
            if old {
                a.epoch = epoch;
                a.since = now;
            }
            old
        });
        for (id, a) in stale {
            slot.start(&me, id, a.env).await;
        }
        if slot.inflight.len() >= slot.limit() {
            slot.parked.store(true, Ordering::SeqCst);
            // A task may have finished between the check and parking: then pull ourselves.
            if slot.inflight.len() >= slot.limit() || !slot.parked.swap(false, Ordering::SeqCst) {
                return Ok(());
            }
        }
        let mut env = match slot.rx.recv_async().await {
            Ok(e) => e,
            Err(_) => {
                me.stop(None);
                return Ok(());
            }
        };
        // Start every envelope already waiting, up to the in-flight limit (one `Pull` for all).
        loop {
            let id = slot.inflight.add(Attempt {
                env: env.clone(),
                since: Instant::now(),
                epoch,
            });
            slot.start(&me, id, env).await;
            if slot.inflight.len() >= slot.limit() {
                break;
            }
            match slot.rx.try_recv() {
                Ok(e) => env = e,
                Err(_) => break,
            }
        }
        me.send_message(BlockMsg::Pull)?;
        Ok(())
    }
}

type SpawnFuture<'a> = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send + 'a>>;

/// What a supervisor needs to know about a child, whatever its block type.
pub trait Child: Send + Sync {
    fn name(&self) -> &str;
    /// Spawns a (new) instance linked to `supervisor`.
    fn spawn(self: Arc<Self>, supervisor: ActorCell) -> SpawnFuture<'static>;
    /// When the message in progress started (None: idle).
    fn busy_since(&self) -> Option<Instant>;
    fn deadline_factor(&self) -> u32;
    /// Gives up on the child: fails its in-flight and every later envelope with `ActorDown`.
    fn declare_down(self: Arc<Self>, reason: String);
    /// Whether the child was declared down (a restarted stage does not respawn it).
    fn is_down(&self) -> bool;
}

impl<B: Block> Child for BlockSlot<B> {
    fn name(&self) -> &str {
        &self.ctx.name
    }
    fn spawn(self: Arc<Self>, supervisor: ActorCell) -> SpawnFuture<'static> {
        Box::pin(async move {
            let (r, _join) =
                Actor::spawn_linked(None, BlockActor::<B>(PhantomData), self, supervisor).await?;
            Ok(r.get_cell())
        })
    }
    fn busy_since(&self) -> Option<Instant> {
        self.inflight.lock().iter().map(|f| f.item.since).min()
    }
    fn deadline_factor(&self) -> u32 {
        B::DEADLINE_FACTOR
    }
    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
    fn declare_down(self: Arc<Self>, reason: String) {
        self.down.store(true, Ordering::SeqCst);
        let err = ActorError::ActorDown {
            actor: self.ctx.name.clone(),
            reason,
            rows: None,
        };
        let inflight = self.inflight.drain();
        tokio::spawn(async move {
            for a in inflight {
                a.env.reply.send::<B>(Err(err.clone()), 0).await;
            }
            while let Ok(e) = self.rx.recv_async().await {
                e.reply.send::<B>(Err(err.clone()), 0).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::StreamKind;
    use std::time::Duration;

    #[test]
    fn untraced_kernel_tags_and_per_message_metrics_allocate_nothing() {
        let be = Arc::new(troupe_engine::kernels::CpuBackend::new());
        let stream = Stream::spawn("cpu-test", 0, be, None, StreamKind::CpuPool).expect("stream");
        let ctx = BlockCtx {
            name: "layer1.router".into(),
            stream: Arc::new(stream),
            tracer: None,
        };
        let meta = Meta {
            step: 7,
            micro_batch: 1,
            requests: Arc::new(vec![3, 4, 5]),
            generated_rows: false,
        };
        let metrics = ActorMetrics::new(&ctx.name);
        crate::metrics::expert_tokens(1, 2, 4); // registers the handle
        let n = crate::alloc_probe::allocations(|| {
            for _ in 0..100 {
                std::hint::black_box(ctx.tags("dispatch", &meta, 1));
                std::hint::black_box(ctx.flow_id());
                metrics.message(Duration::from_micros(3), 2);
                crate::metrics::expert_tokens(1, 2, 4);
            }
        });
        assert_eq!(n, 0, "allocations on the untraced path");
    }
}
