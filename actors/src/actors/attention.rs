//! `layer{L}.attention`: input norm + attention + residual for every sequence of a micro-batch,
//! each against its own KV cache. The chunk of one sequence is always whole (so `MlaForm::Auto`
//! picks the same form as the reference executor). Before writing, the cache is truncated to the
//! sequence's start position, so a re-issued message gives the same bits.

use std::sync::Arc;

use troupe_engine::model::{MlaForm, Model};
use troupe_engine::{EngineError, Tensor};

use crate::actors::{Block, BlockCtx, Meta};
use crate::batch::MbInfo;
use crate::error::Result;

pub struct AttentionBlock {
    pub model: Arc<Model>,
    pub layer: usize,
}

#[derive(Clone)]
pub struct AttnJob {
    pub x: Tensor,
    pub mb: Arc<MbInfo>,
}

impl Block for AttentionBlock {
    type Job = AttnJob;
    type Out = Tensor;

    async fn run(&self, ctx: &BlockCtx, job: AttnJob, meta: &Meta) -> Result<Tensor> {
        let (model, l) = (self.model.clone(), self.layer);
        ctx.stream
            .run(ctx.tags("attention", meta, l), move |be| {
                let layer = &model.layers[l];
                let mut parts = Vec::with_capacity(job.mb.seqs.len());
                for s in &job.mb.seqs {
                    let mut cache = s.caches.layer(l).ok_or_else(|| {
                        EngineError::internal(format!("sequence has no cache for layer {l}"))
                    })?;
                    cache.truncate(s.start);
                    parts.push(layer.attention_block(
                        be,
                        &job.x.slice_rows(s.rows.start, s.rows.end),
                        &mut cache,
                        &model.rope,
                        model.eps(),
                        MlaForm::Auto,
                    )?);
                }
                Tensor::concat_rows(&parts)
            })
            .await
    }
}
