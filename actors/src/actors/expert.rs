//! Feed-forward blocks: `layer{L}.expert{E}` / `layer{L}.experts{A}-{B}` / `layer{L}.group{G}`
//! (a group of routed experts: each runs its MLP on the rows dispatched to it),
//! `layer{L}.shared` (the shared experts over all rows) and `layer{L}.mlp` (the dense FFN of a
//! non-MoE layer: the engine's `DecoderLayer::dense_ffn_block`, then the layer's finite check).

use std::sync::Arc;
use std::time::Instant;

use troupe_engine::model::Model;
use troupe_engine::{EngineError, Tensor};

use crate::actors::{Block, BlockCtx, Meta};
use crate::error::Result;

/// A group of routed experts of one layer.
pub struct ExpertGroupBlock {
    pub model: Arc<Model>,
    pub layer: usize,
    pub experts: Vec<usize>,
}

/// Rows for some experts of the group: `(expert id, its rows of normalised hidden state)`.
#[derive(Clone)]
pub struct GroupJob {
    pub items: Vec<(usize, Tensor)>,
    /// Trace flow arrow from the router's dispatch span.
    pub flow: Option<u64>,
    /// When the rows arrive over the link (None: same node).
    pub ready_at: Option<Instant>,
}

/// Expert outputs, aligned with the job's items.
pub struct GroupOut {
    pub outs: Vec<(usize, Tensor)>,
    /// Trace flow arrow to the router's combine span.
    pub flow: Option<u64>,
    /// When the outputs arrive back at the router over the link (None: same node).
    pub ready_at: Option<Instant>,
}

impl Block for ExpertGroupBlock {
    type Job = GroupJob;
    type Out = GroupOut;
    const CONCURRENT: bool = true;

    async fn run(&self, ctx: &BlockCtx, job: GroupJob, meta: &Meta) -> Result<GroupOut> {
        let mut tags = ctx.tags("experts", meta, self.layer);
        if ctx.traced() {
            tags.experts = job.items.iter().map(|(e, _)| *e).collect();
        }
        if let Some(f) = job.flow {
            tags.flows_in.push((f, "dispatch"));
        }
        let back = ctx.flow_id();
        if let Some(f) = back {
            tags.flows_out.push((f, "combine"));
        }
        let (model, l, mine) = (self.model.clone(), self.layer, self.experts.clone());
        let outs = ctx
            .stream
            .run_at(tags, job.ready_at, move |be| {
                let m = model.layers[l].moe()?;
                job.items
                    .iter()
                    .map(|(e, x)| {
                        if !mine.contains(e) {
                            return Err(EngineError::internal(format!(
                                "expert {e} of layer {l} was sent to the wrong group"
                            )));
                        }
                        Ok((*e, m.experts[*e].forward(be, x)?))
                    })
                    .collect::<std::result::Result<Vec<_>, EngineError>>()
            })
            .await?;
        Ok(GroupOut {
            outs,
            flow: back,
            ready_at: None,
        })
    }

    fn out_bytes(out: &GroupOut) -> usize {
        out.outs.iter().map(|(_, t)| t.data().len() * 4).sum()
    }

    fn arrives_at(out: &mut GroupOut, at: Instant) {
        out.ready_at = Some(at);
    }
}

/// The shared experts of one MoE layer.
pub struct SharedBlock {
    pub model: Arc<Model>,
    pub layer: usize,
}

impl Block for SharedBlock {
    /// The normalised hidden rows.
    type Job = Tensor;
    type Out = Tensor;
    const CONCURRENT: bool = true;

    async fn run(&self, ctx: &BlockCtx, hn: Tensor, meta: &Meta) -> Result<Tensor> {
        let (model, l) = (self.model.clone(), self.layer);
        ctx.stream
            .run(ctx.tags("shared", meta, l), move |be| {
                match &model.layers[l].moe()?.shared {
                    Some(s) => s.forward(be, &hn),
                    None => Err(EngineError::internal(format!(
                        "layer {l} has no shared experts"
                    ))),
                }
            })
            .await
    }
}

/// The dense FFN of a non-MoE layer.
pub struct MlpBlock {
    pub model: Arc<Model>,
    pub layer: usize,
}

impl Block for MlpBlock {
    /// The post-attention residual `h`.
    type Job = Tensor;
    type Out = Tensor;

    async fn run(&self, ctx: &BlockCtx, h: Tensor, meta: &Meta) -> Result<Tensor> {
        let (model, l) = (self.model.clone(), self.layer);
        ctx.stream
            .run(ctx.tags("mlp", meta, l), move |be| {
                let layer = &model.layers[l];
                let out = layer.dense_ffn_block(be, &h, model.eps())?;
                layer.check_output(&out)?;
                Ok(out)
            })
            .await
    }
}
