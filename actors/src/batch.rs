//! The per-sequence state a forward pass hands to actors: each sequence's KV cache (owned by the
//! request, shared with the attention actors: one block table for all its layers, from the
//! runtime's pools, whose pages go back when the request's caches are dropped) and the layout of
//! a micro-batch (which rows belong to which sequence, and where each sequence's chunk starts).

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use troupe_engine::model::{ChunkKind, KvPools, SequenceCache};
use troupe_engine::EngineError;

/// One sequence's KV cache, every layer. One lock: a sequence is in one micro-batch of a pass
/// and its layers run one after another, so nobody waits on it.
#[derive(Debug)]
pub struct SeqCaches {
    cache: Mutex<SequenceCache>,
}

impl SeqCaches {
    /// An empty cache in `pools` (the runtime's: `Core::kv_pools`).
    pub fn new(pools: &KvPools) -> Arc<SeqCaches> {
        Arc::new(SeqCaches {
            cache: Mutex::new(pools.new_cache()),
        })
    }
    /// Locks the cache (a poisoned lock is recovered: attention truncates before writing).
    pub fn lock(&self) -> MutexGuard<'_, SequenceCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Rolls every layer back to `start` positions (returning the pages past it) and takes the
    /// pages of positions `0..start + new`; on `KvCacheFull` the sequence holds no page past
    /// `start`'s.
    pub fn reserve(&self, start: usize, new: usize) -> Result<(), EngineError> {
        let mut c = self.lock();
        c.truncate(start);
        c.reserve(start + new)
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
    /// Prompt positions or a generated token.
    pub kind: ChunkKind,
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
    /// Every row of the micro-batch is a generated token's (its kernels' row kind).
    pub fn generated_rows(&self) -> bool {
        troupe_engine::pass_kinds::all_generated(self.seqs.iter().map(|s| s.kind))
    }
}
