//! `layer{L}.attention`: input norm + attention + residual for every sequence of a micro-batch,
//! each against its own paged KV cache. The actor owns its layer's KV pool (page storage on its
//! stream's backend, `KvPool`); each sequence's `SeqCaches` holds its block table and this
//! layer's written length (the pass took the chunk's pages before any compute). A chunk's kind
//! (prompt or generated token) travels with the sequence, so `MlaForm::Auto` picks the form the
//! reference executor picks.
//! Before writing, the layer's cache is rolled back to the sequence's start position, so a
//! re-issued message gives the same bits.

use std::sync::Arc;

use troupe_engine::model::{KvPool, MlaForm, Model};
use troupe_engine::EngineError;

use crate::actors::{Block, BlockCtx, Meta};
use crate::batch::MbInfo;
use crate::error::Result;
use crate::transfer::Owned;

pub struct AttentionBlock {
    pub model: Arc<Model>,
    pub layer: usize,
    /// This layer's KV pool, on the actor's stream's backend.
    pub pool: Arc<KvPool>,
}

#[derive(Clone)]
pub struct AttnJob {
    pub x: Owned,
    pub mb: Arc<MbInfo>,
}

impl Block for AttentionBlock {
    type Job = AttnJob;
    type Out = Owned;

    async fn run(&self, ctx: &BlockCtx, job: AttnJob, meta: &Meta) -> Result<Owned> {
        let (model, l, pool) = (self.model.clone(), self.layer, self.pool.clone());
        ctx.stream
            .run_owned(ctx.tags("attention", meta, l), move |be| {
                let layer = &model.layers[l];
                let x = job.x.to(be)?;
                let whole = job.mb.seqs.len() == 1;
                let mut parts = Vec::with_capacity(job.mb.seqs.len());
                for s in &job.mb.seqs {
                    let mut caches = s.caches.lock();
                    let cache = caches.layers.get_mut(l).ok_or_else(|| {
                        EngineError::internal(format!("sequence has no cache for layer {l}"))
                    })?;
                    if !Arc::ptr_eq(cache.pool(), &pool) {
                        return Err(EngineError::internal(format!(
                            "layer {l}: a sequence's cache belongs to another pool"
                        )));
                    }
                    cache.truncate(s.start);
                    if cache.len() != s.start {
                        return Err(EngineError::internal(format!(
                            "layer {l}: a chunk at position {} of a sequence with {} cached",
                            s.start,
                            cache.len()
                        )));
                    }
                    let rows = match whole {
                        true => x.clone(),
                        false => be.slice_rows(&x, s.rows.start, s.rows.end)?,
                    };
                    parts.push(layer.attention_block(
                        be,
                        &rows,
                        cache,
                        &model.rope,
                        model.eps(),
                        MlaForm::Auto,
                        s.kind,
                    )?);
                }
                match parts.len() {
                    1 => Ok(parts.remove(0)),
                    _ => be.concat_rows(&parts),
                }
            })
            .await
    }
}
