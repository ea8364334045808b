//! The per-sequence state a forward pass hands to actors: each sequence's KV caches (one lock per
//! layer, owned by the request, shared with the attention actors) and the layout of a
//! micro-batch (which rows belong to which sequence, and where each sequence's chunk starts).

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use troupe_engine::model::{LayerCache, Model};

/// One sequence's KV caches, layer by layer.
#[derive(Debug)]
pub struct SeqCaches {
    pub layers: Vec<Mutex<LayerCache>>,
}

impl SeqCaches {
    pub fn new(model: &Model) -> Arc<SeqCaches> {
        Arc::new(SeqCaches {
            layers: model
                .new_cache()
                .layers
                .into_iter()
                .map(Mutex::new)
                .collect(),
        })
    }
    /// Locks layer `l` (a poisoned lock is recovered: attention truncates before writing).
    pub fn layer(&self, l: usize) -> Option<MutexGuard<'_, LayerCache>> {
        self.layers
            .get(l)
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
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
