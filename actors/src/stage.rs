//! The data path of a pipeline stage: `StageCall`s (a micro-batch's hidden rows plus the ops to
//! apply) arrive on the stage's bounded channel; the stage's driver task runs the ops that belong
//! to its layers by calling the attention / router / MLP actors in order, then hands the
//! micro-batch to the next stage's channel or replies. Calls run concurrently (one task each), so
//! two micro-batches can be in different blocks of one stage at once. Calls in progress are kept in
//! a `StageInflight` (an `InflightSet`) outside the stage actor: a restarted stage re-issues them from their first op
//! (blocks are pure and attention truncates the KV cache first, so a re-run gives the same bits).

use std::ops::Range;
use std::sync::Arc;

use ractor::ActorRef;

use crate::actors::attention::{AttentionBlock, AttnJob};
use crate::actors::expert::MlpBlock;
use crate::actors::router::RouterBlock;
use crate::actors::{call, Envelope, Meta};
use crate::batch::MbInfo;
use crate::error::{ActorError, Result};
use crate::fault::FaultTrigger;
use crate::inflight::InflightSet;
use crate::schedule::Op;
use crate::supervisor::StageMsg;
use crate::transfer::Owned;

/// A micro-batch travelling through the stages.
#[derive(Clone)]
pub struct StageCall {
    pub ops: Vec<Op>,
    /// The micro-batch's hidden rows, on the backend of the stream that made them (each block
    /// moves them to its own backend when that one keeps data elsewhere).
    pub x: Owned,
    pub mb: Arc<MbInfo>,
    pub reply: flume::Sender<Result<Owned>>,
}

/// The FFN actor of a layer.
pub enum FfnTx {
    Dense(flume::Sender<Envelope<MlpBlock>>),
    Moe(flume::Sender<Envelope<RouterBlock>>),
}

/// Data-plane senders of every block, by layer, and of every stage.
pub struct Wiring {
    pub attention: Vec<flume::Sender<Envelope<AttentionBlock>>>,
    pub ffn: Vec<FfnTx>,
    pub stages: Vec<flume::Sender<StageCall>>,
    pub stage_ranges: Vec<Range<usize>>,
}

impl Wiring {
    fn stage_of(&self, layer: usize) -> usize {
        crate::placement::stage_of(&self.stage_ranges, layer)
    }
}

/// The calls a stage is working on; outlives stage instances, so a restarted stage re-issues them.
pub type StageInflight = InflightSet<StageCall>;

/// What a stage driver works with.
#[derive(Clone)]
pub struct StageRun {
    pub index: usize,
    pub wiring: Arc<Wiring>,
    pub inflight: Arc<StageInflight>,
    /// Injected faults of `stage{S}` (every call handled is an attempt, re-issues included).
    pub fault: Option<Arc<FaultTrigger>>,
}

impl StageRun {
    /// Starts (or re-starts) call `id`; false when an injected fault says the stage crashes now.
    pub fn start(&self, id: u64, c: StageCall) -> bool {
        if self
            .fault
            .as_ref()
            .is_some_and(|f| f.on_attempt().is_some())
        {
            return false;
        }
        let (index, w, inflight) = (self.index, self.wiring.clone(), self.inflight.clone());
        let task = tokio::spawn(async move {
            run_call(index, w, c).await;
            inflight.remove(id);
        });
        self.inflight.set_task(id, task.abort_handle());
        true
    }
}

/// The driver loop of stage `index` (owned and aborted by the `stage{S}` actor): every call is
/// recorded in flight, then runs as its own task. An injected fault crashes the stage actor.
pub async fn stage_driver(run: StageRun, rx: flume::Receiver<StageCall>, me: ActorRef<StageMsg>) {
    while let Ok(c) = rx.recv_async().await {
        let id = run.inflight.add(c.clone());
        if !run.start(id, c) {
            let _ = me.send_message(StageMsg::Crash);
            return;
        }
    }
}

async fn run_call(index: usize, w: Arc<Wiring>, c: StageCall) {
    let StageCall {
        ops,
        mut x,
        mb,
        reply,
    } = c;
    let range = w.stage_ranges[index].clone();
    let meta = Meta {
        step: mb.step,
        micro_batch: mb.index,
        requests: Arc::new(mb.requests()),
        generated_rows: mb.generated_rows(),
    };
    let mut k = 0;
    while k < ops.len() && range.contains(&ops[k].layer()) {
        let r = match ops[k] {
            Op::Attention(l) => {
                call(&w.attention[l], AttnJob { x, mb: mb.clone() }, meta.clone()).await
            }
            Op::Ffn(l) => match &w.ffn[l] {
                FfnTx::Dense(tx) => call(tx, x, meta.clone()).await,
                FfnTx::Moe(tx) => call(tx, x, meta.clone()).await,
            },
        };
        match r {
            Ok(t) => x = t,
            Err(e) => {
                let _ = reply.send_async(Err(e)).await;
                return;
            }
        }
        k += 1;
    }
    if k == ops.len() {
        let _ = reply.send_async(Ok(x)).await;
        return;
    }
    let next = w.stage_of(ops[k].layer());
    let call = StageCall {
        ops: ops[k..].to_vec(),
        x,
        mb,
        reply: reply.clone(),
    };
    if w.stages[next].send_async(call).await.is_err() {
        let _ = reply
            .send_async(Err(ActorError::Closed(format!("stage{next} is stopped"))))
            .await;
    }
}
