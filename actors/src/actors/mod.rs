//! Block actors: the generic supervised actor every compute block runs in, and the blocks
//! themselves (attention, routed-expert groups, shared experts, dense MLPs, routers).
//!
//! Data plane vs control plane: an actor's work arrives as an [`Envelope`] on its **bounded**
//! flume channel (capacity = `placement.channel_capacity`, the back-pressure quota) and its
//! result leaves on the envelope's reply channel; tensors are `Arc`-backed, so nothing is copied.
//! The ractor mailbox (unbounded) only ever carries the control message `Pull`. Supervision:
//! the envelope being worked on sits in the actor's in-flight slot, which lives outside the actor
//! instance, so a restarted actor re-issues it first.

pub mod attention;
pub mod expert;
pub mod router;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr};

use crate::error::{ActorError, Result};
use crate::fault::{FaultKind, FaultTrigger};
use crate::link::Link;
use crate::stream::Stream;
use crate::trace::{SpanTags, Tracer};

/// Where an actor runs and reports.
pub struct BlockCtx {
    pub name: String,
    pub stream: Arc<Stream>,
    pub tracer: Option<Arc<Tracer>>,
    pub link: Option<Arc<Link>>,
}

impl BlockCtx {
    pub(crate) fn tags(&self, name: &'static str, meta: &Meta, layer: usize) -> SpanTags {
        SpanTags {
            name,
            actor: self.name.clone(),
            layer: Some(layer),
            micro_batch: Some(meta.micro_batch),
            step: Some(meta.step),
            requests: meta.requests.to_vec(),
            ..SpanTags::default()
        }
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
}

/// One kind of compute block.
pub trait Block: Send + Sync + 'static {
    type Job: Clone + Send + Sync + 'static;
    type Out: Send + 'static;
    /// Multiplier on the supervision deadline (routers wait on experts).
    const DEADLINE_FACTOR: u32 = 1;
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
}

/// Where a result goes: straight back, or across the link.
pub enum ReplyTo<T> {
    Direct(flume::Sender<Result<T>>),
    ViaLink(Arc<Link>, flume::Sender<Result<T>>),
}

impl<T> Clone for ReplyTo<T> {
    fn clone(&self) -> Self {
        match self {
            ReplyTo::Direct(t) => ReplyTo::Direct(t.clone()),
            ReplyTo::ViaLink(l, t) => ReplyTo::ViaLink(l.clone(), t.clone()),
        }
    }
}

impl<T: Send + 'static> ReplyTo<T> {
    pub(crate) async fn send(&self, r: Result<T>, bytes: usize) {
        match self {
            ReplyTo::Direct(tx) => {
                let _ = tx.send_async(r).await;
            }
            ReplyTo::ViaLink(link, tx) => {
                let tx = tx.clone();
                link.send("combine", bytes, move || {
                    let _ = tx.send(r);
                });
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

/// Everything an actor instance needs; outlives instances, so restarts keep weights (the block
/// holds `Arc`s into the loaded model), the queue and the in-flight envelope.
pub struct BlockSlot<B: Block> {
    pub block: Arc<B>,
    pub ctx: BlockCtx,
    pub rx: flume::Receiver<Envelope<B>>,
    pub inflight: Mutex<Option<(Envelope<B>, Instant)>>,
    pub fault: Option<Arc<FaultTrigger>>,
    pub down: AtomicBool,
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
            ctx,
            rx,
            inflight: Mutex::new(None),
            fault,
            down: AtomicBool::new(false),
        })
    }
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(Envelope<B>, Instant)>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The ractor actor running one block.
pub struct BlockActor<B: Block>(PhantomData<fn() -> B>);

/// Control messages of a block actor (tensors never travel here).
#[derive(Debug)]
pub enum BlockMsg {
    /// Take the next envelope (the in-flight one first, after a restart).
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
        let reissue = slot.slot().as_mut().map(|(e, t)| {
            *t = Instant::now();
            e.clone()
        });
        let env = match reissue {
            Some(e) => e,
            None => match slot.rx.recv_async().await {
                Ok(e) => {
                    *slot.slot() = Some((e.clone(), Instant::now()));
                    e
                }
                Err(_) => {
                    me.stop(None);
                    return Ok(());
                }
            },
        };
        if let Some(f) = &slot.fault {
            match f.on_attempt() {
                Some(FaultKind::Panic) => {
                    panic!("injected fault: actor `{}` panics", slot.ctx.name)
                }
                Some(FaultKind::Hang) => std::future::pending::<()>().await,
                None => {}
            }
        }
        let t0 = Instant::now();
        let out = slot.block.run(&slot.ctx, env.job.clone(), &env.meta).await;
        crate::metrics::actor_message(&slot.ctx.name, t0.elapsed(), slot.rx.len());
        let bytes = out.as_ref().map(B::out_bytes).unwrap_or(0);
        env.reply.send(out, bytes).await;
        *slot.slot() = None;
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
        self.slot().as_ref().map(|(_, t)| *t)
    }
    fn deadline_factor(&self) -> u32 {
        B::DEADLINE_FACTOR
    }
    fn declare_down(self: Arc<Self>, reason: String) {
        self.down.store(true, Ordering::SeqCst);
        let err = ActorError::ActorDown {
            actor: self.ctx.name.clone(),
            reason,
            rows: None,
        };
        let inflight = self.slot().take();
        tokio::spawn(async move {
            if let Some((e, _)) = inflight {
                e.reply.send(Err(err.clone()), 0).await;
            }
            while let Ok(e) = self.rx.recv_async().await {
                e.reply.send(Err(err.clone()), 0).await;
            }
        });
    }
}
