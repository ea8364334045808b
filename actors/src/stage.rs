//! The data path of a pipeline stage: `StageCall`s (a micro-batch's hidden rows plus the ops to
//! apply) arrive on the stage's bounded channel; the stage's driver task runs the ops that belong
//! to its layers by calling the attention / router / MLP actors in order, then hands the
//! micro-batch to the next stage's channel or replies. Calls run concurrently (one task each), so
//! two micro-batches can be in different blocks of one stage at once.

use std::ops::Range;
use std::sync::Arc;

use troupe_engine::Tensor;

use crate::actors::attention::{AttentionBlock, AttnJob};
use crate::actors::expert::MlpBlock;
use crate::actors::router::RouterBlock;
use crate::actors::{call, Envelope, Meta};
use crate::batch::MbInfo;
use crate::error::{ActorError, Result};
use crate::schedule::Op;

/// A micro-batch travelling through the stages.
pub struct StageCall {
    pub ops: Vec<Op>,
    pub x: Tensor,
    pub mb: Arc<MbInfo>,
    pub reply: flume::Sender<Result<Tensor>>,
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
        self.stage_ranges
            .iter()
            .position(|r| r.contains(&layer))
            .unwrap_or(0)
    }
}

/// The driver loop of stage `index` (owned and aborted by the `stage{S}` actor).
pub async fn stage_driver(index: usize, rx: flume::Receiver<StageCall>, wiring: Arc<Wiring>) {
    while let Ok(c) = rx.recv_async().await {
        tokio::spawn(run_call(index, wiring.clone(), c));
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
