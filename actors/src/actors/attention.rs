//! `layer{L}.attention`: input norm + attention + residual for every sequence of a micro-batch,
//! each against its own paged KV cache, in one `DecoderLayer::attention_blocks` call (the
//! projections run once over every sequence's rows; the cache writes and attention per sequence). The actor owns its layer's KV pool (page storage on its
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
                // Every sequence's cache is held for the call (locked in address order, so two
                // blocks locking overlapping sets cannot wait on each other).
                let mut order: Vec<usize> = (0..job.mb.seqs.len()).collect();
                order.sort_by_key(|&i| Arc::as_ptr(&job.mb.seqs[i].caches) as usize);
                let mut guards: Vec<Option<_>> = (0..job.mb.seqs.len()).map(|_| None).collect();
                for i in order {
                    guards[i] = Some(job.mb.seqs[i].caches.lock());
                }
                let mut chunks = Vec::with_capacity(job.mb.seqs.len());
                for (s, guard) in job.mb.seqs.iter().zip(guards.iter_mut()) {
                    let caches = guard
                        .as_mut()
                        .ok_or_else(|| EngineError::internal("attention: a cache left unlocked"))?;
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
                    chunks.push((s.rows.clone(), cache, s.kind));
                }
                layer.attention_blocks(be, &x, &mut chunks, &model.rope, model.eps(), MlaForm::Auto)
            })
            .await
    }
}
