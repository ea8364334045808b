//! The per-sequence state a forward pass hands to actors: each sequence's KV caches (one lock per
//! layer, owned by the request, shared with the attention actors: a block table in the layer's
//! pool, made by the attention actor on first use and returning its pages when the request's
//! caches are dropped) and the layout of a micro-batch (which rows belong to which sequence, and
//! where each sequence's chunk starts).

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use troupe_engine::model::{KvPool, LayerCache, Model};
use troupe_engine::EngineError;

use crate::actors::attention::table_in;

/// One sequence's KV caches, layer by layer (`None` until the layer's attention first runs).
#[derive(Debug)]
pub struct SeqCaches {
    pub layers: Vec<Mutex<Option<LayerCache>>>,
}

impl SeqCaches {
    pub fn new(model: &Model) -> Arc<SeqCaches> {
        Arc::new(SeqCaches {
            layers: model.layers.iter().map(|_| Mutex::new(None)).collect(),
        })
    }
    /// Locks layer `l` (a poisoned lock is recovered: attention truncates before writing).
    pub fn layer(&self, l: usize) -> Option<MutexGuard<'_, Option<LayerCache>>> {
        self.layers
            .get(l)
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }
    /// Rolls every layer back to `start` positions and takes the pages of positions
    /// `0..start + new` in each layer's pool (`pools[l]`); on `KvCacheFull` every layer is
    /// rolled back to `start` again, so the sequence holds no page it did not hold before.
    pub fn reserve(
        &self,
        pools: &[Arc<KvPool>],
        start: usize,
        new: usize,
    ) -> Result<(), EngineError> {
        let r = self.reserve_all(pools, start, new);
        if r.is_err() {
            for l in 0..self.layers.len() {
                if let Some(Some(c)) = self.layer(l).as_deref_mut() {
                    c.truncate(start);
                }
            }
        }
        r
    }
    fn reserve_all(
        &self,
        pools: &[Arc<KvPool>],
        start: usize,
        new: usize,
    ) -> Result<(), EngineError> {
        if pools.len() != self.layers.len() {
            return Err(EngineError::internal(format!(
                "{} KV pools for a sequence of {} layers",
                pools.len(),
                self.layers.len()
            )));
        }
        for (l, pool) in pools.iter().enumerate() {
            let mut slot = self
                .layer(l)
                .ok_or_else(|| EngineError::internal(format!("no cache for layer {l}")))?;
            let cache = table_in(&mut slot, pool)?;
            cache.truncate(start);
            cache.reserve(start + new)?;
        }
        Ok(())
    }
}

/// One sequence inside a micro-batch.
#[derive(Clone, Debug)]
pub struct MbSeq {
    /// Index of the sequence in the forward pass.
    pub index: usize,
    pub request: u64,
    /// Its rows inside the micro-batch tensor.
    pub rows: Range<usize>,
    /// Cached positions before this pass (the chunk sits at `start..start+rows.len()`).
    pub start: usize,
    pub caches: Arc<SeqCaches>,
}

/// A micro-batch's layout.
#[derive(Clone, Debug)]
pub struct MbInfo {
    pub index: usize,
    pub step: u64,
    pub seqs: Vec<MbSeq>,
}

impl MbInfo {
    /// Pass-level sequence indices owning the given micro-batch rows.
    pub fn sequences_of_rows(&self, rows: &[usize]) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .seqs
            .iter()
            .filter(|s| rows.iter().any(|r| s.rows.contains(r)))
            .map(|s| s.index)
            .collect();
        out.dedup();
        out
    }
    pub fn requests(&self) -> Vec<u64> {
        self.seqs.iter().map(|s| s.request).collect()
    }
}
