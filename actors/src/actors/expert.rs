//! Feed-forward blocks: `layer{L}.expert{E}` / `layer{L}.experts{A}-{B}` / `layer{L}.group{G}`
//! (a group of routed experts: one `grouped_mlp` over the rows routed to its experts),
//! `layer{L}.shared` (the shared experts over all rows) and `layer{L}.mlp` (the dense FFN of a
//! non-MoE layer: the engine's `DecoderLayer::dense_ffn_block`, then the layer's finite check).
//! Inputs arrive as handles with their owning backend and are moved to this actor's stream's
//! backend only when it keeps data elsewhere (`transfer.rs`).

use std::sync::Arc;
use std::time::Instant;

use troupe_engine::backend::ExpertRows;
use troupe_engine::model::Model;
use troupe_engine::{Backend, EngineError};

use crate::actors::remote::RemoteNode;
use crate::actors::{Block, BlockCtx, Meta};
use crate::error::Result;
use crate::transfer::{GroupRouting, Owned};

/// A group of routed experts of one layer.
pub struct ExpertGroupBlock {
    pub model: Arc<Model>,
    pub layer: usize,
    pub experts: Vec<usize>,
    /// Set when the group lives on another rank: its work goes there through the transport.
    pub remote: Option<RemoteNode>,
}

/// Work for some experts of the group: the normalised rows (all of the micro-batch's, or only
/// those routed to this group when it sits on another node or device) and their routing.
#[derive(Clone)]
pub struct GroupJob {
    /// The group's index in its layer (echoed in [`GroupOut::group`]).
    pub group: usize,
    /// The group's experts that got rows (ascending).
    pub experts: Vec<u32>,
    pub x: Owned,
    pub routing: GroupRouting,
    /// Trace flow arrow from the router's dispatch span.
    pub flow: Option<u64>,
    /// When the rows arrive over the link (None: same node).
    pub ready_at: Option<Instant>,
}

/// The group's expert outputs (by expert id, then row), and the backend that made them.
pub struct GroupOut {
    /// The group's index in its layer ([`GroupJob::group`]).
    pub group: usize,
    pub rows: ExpertRows,
    pub on: Arc<dyn Backend>,
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
        if let Some(remote) = &self.remote {
            return remote
                .run(ctx, self.layer, &self.experts, job, meta.generated_rows)
                .await;
        }
        let mut tags = ctx.tags("experts", meta, self.layer);
        if ctx.traced() {
            tags.experts = job.experts.iter().map(|&e| e as usize).collect();
        }
        if let Some(f) = job.flow {
            tags.flows_in.push((f, "dispatch"));
        }
        let back = ctx.flow_id();
        if let Some(f) = back {
            tags.flows_out.push((f, "combine"));
        }
        let (model, l, mine) = (self.model.clone(), self.layer, self.experts.clone());
        let GroupJob {
            group,
            experts,
            x,
            routing,
            ..
        } = job;
        let rows = ctx
            .stream
            .run_at(tags, job.ready_at, move |be| {
                if let Some(e) = experts.iter().find(|&&e| !mine.contains(&(e as usize))) {
                    return Err(EngineError::internal(format!(
                        "expert {e} of layer {l} was sent to the wrong group"
                    )));
                }
                let x = x.to(be)?;
                let routing = routing.on(be)?;
                model.layers[l].moe()?.experts(be, &x, &routing, &experts)
            })
            .await?;
        Ok(GroupOut {
            group,
            rows,
            on: ctx.stream.backend().clone(),
            flow: back,
            ready_at: None,
        })
    }

    fn out_bytes(out: &GroupOut) -> usize {
        out.rows.rows.bytes()
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
    type Job = Owned;
    type Out = Owned;
    const CONCURRENT: bool = true;

    async fn run(&self, ctx: &BlockCtx, hn: Owned, meta: &Meta) -> Result<Owned> {
        let (model, l) = (self.model.clone(), self.layer);
        ctx.stream
            .run_owned(ctx.tags("shared", meta, l), move |be| {
                match &model.layers[l].moe()?.shared {
                    Some(s) => s.forward(be, &hn.to(be)?),
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
    type Job = Owned;
    type Out = Owned;

    async fn run(&self, ctx: &BlockCtx, h: Owned, meta: &Meta) -> Result<Owned> {
        let (model, l) = (self.model.clone(), self.layer);
        ctx.stream
            .run_owned(ctx.tags("mlp", meta, l), move |be| {
                let layer = &model.layers[l];
                let out = layer.dense_ffn_block(be, &h.to(be)?, model.eps())?;
                layer.check_output(be, &out)?;
                Ok(out)
            })
            .await
    }
}
