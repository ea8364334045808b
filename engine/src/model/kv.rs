//! The paged KV cache. Each layer has a **pool**: the page storage a backend gives
//! (`Backend::kv_store`) plus the engine's free list of page ids. A sequence's cache of one layer
//! (`LayerCache`) is a **block table** — the ids of its pages in position order (page `i` holds
//! positions `i·page_tokens ..`), with an `id` and a `generation` that changes whenever an entry
//! other than a new last one changes — and the number of positions written.
//!
//! Invariants: a page belongs to at most one table; appending positions only adds pages at the
//! end of a table and never moves or copies a cached row; `truncate(len)` returns every page
//! wholly past `len` to the pool; dropping a `LayerCache` returns all its pages; a sequence that
//! needs a page when its pool has none gets `EngineError::KvCacheFull` and nothing else changes
//! (other sequences keep their pages and go on).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::Backend;
use crate::device_tensor::{BlockTableRef, KvLayout, KvStore};
use crate::error::{EngineError, Result};
use crate::graph::spec::ModelSpec;

/// Positions per page unless configured otherwise.
pub const DEFAULT_PAGE_TOKENS: usize = 64;
/// Sequences of the model's full length the default pool capacity covers.
pub const DEFAULT_FULL_LENGTH_SEQUENCES: usize = 8;
/// The default pool capacity is at least this many pages.
pub const MIN_DEFAULT_PAGES: usize = 1024;

/// The pool configuration of every layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvConfig {
    /// Positions per page (a power of two).
    pub page_tokens: usize,
    /// Pages per layer pool (a cap: the CPU store allocates a page on its first write).
    pub capacity_pages: usize,
}

impl KvConfig {
    /// `page_tokens` per page and room for `DEFAULT_FULL_LENGTH_SEQUENCES` sequences of
    /// `max_position_embeddings` positions (at least `MIN_DEFAULT_PAGES` pages).
    pub fn for_spec(spec: &ModelSpec, page_tokens: usize) -> KvConfig {
        let per_seq = spec.max_position_embeddings.div_ceil(page_tokens.max(1));
        KvConfig {
            page_tokens,
            capacity_pages: per_seq
                .saturating_mul(DEFAULT_FULL_LENGTH_SEQUENCES)
                .max(MIN_DEFAULT_PAGES),
        }
    }
    /// The default: `DEFAULT_PAGE_TOKENS` per page.
    pub fn default_for(spec: &ModelSpec) -> KvConfig {
        KvConfig::for_spec(spec, DEFAULT_PAGE_TOKENS)
    }
    /// Errors unless `page_tokens` is a power of two and the capacity is not zero.
    pub fn validate(&self) -> Result<()> {
        if !self.page_tokens.is_power_of_two() || self.capacity_pages == 0 {
            return Err(EngineError::Invalid(format!(
                "KV cache: page_tokens {} must be a power of two and capacity_pages {} positive",
                self.page_tokens, self.capacity_pages
            )));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct FreeList {
    /// Pages returned by sequences, reused first (last returned, first reused).
    returned: Vec<u32>,
    /// Pages `fresh..capacity` were never handed out.
    fresh: usize,
    in_use: usize,
}

/// One layer's pool: a backend's page storage and the free list.
#[derive(Debug)]
pub struct KvPool {
    layer: usize,
    store: KvStore,
    free: Mutex<FreeList>,
}

impl KvPool {
    /// A pool of `capacity` pages of `layout` on `be`, for decoder layer `layer`.
    pub fn new(
        be: &dyn Backend,
        layer: usize,
        layout: KvLayout,
        capacity: usize,
    ) -> Result<Arc<KvPool>> {
        if capacity > u32::MAX as usize {
            return Err(EngineError::Invalid(format!(
                "KV cache: {capacity} pages exceed the u32 page ids"
            )));
        }
        Ok(Arc::new(KvPool {
            layer,
            store: be.kv_store(layout, capacity)?,
            free: Mutex::new(FreeList {
                returned: Vec::new(),
                fresh: 0,
                in_use: 0,
            }),
        }))
    }
    pub fn layer(&self) -> usize {
        self.layer
    }
    pub fn store(&self) -> &KvStore {
        &self.store
    }
    pub fn layout(&self) -> KvLayout {
        self.store.layout
    }
    /// Pages currently owned by sequences.
    pub fn pages_in_use(&self) -> usize {
        self.lock().in_use
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, FreeList> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// `n` pages, or `KvCacheFull` (taking none) when fewer are free.
    fn take(&self, n: usize) -> Result<Vec<u32>> {
        let mut f = self.lock();
        let capacity = self.store.capacity;
        if f.returned.len() + (capacity - f.fresh) < n {
            return Err(EngineError::KvCacheFull {
                layer: self.layer,
                capacity_pages: capacity,
                page_tokens: self.store.layout.page_tokens,
            });
        }
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match f.returned.pop() {
                Some(p) => out.push(p),
                None => {
                    out.push(f.fresh as u32);
                    f.fresh += 1;
                }
            }
        }
        f.in_use += n;
        Ok(out)
    }
    fn give_back(&self, pages: &[u32]) {
        let mut f = self.lock();
        f.in_use -= pages.len();
        f.returned.extend(pages.iter().rev());
    }
}

/// The pools of every layer of a model.
#[derive(Clone, Debug)]
pub struct KvPools {
    pub config: KvConfig,
    pub layers: Vec<Arc<KvPool>>,
}

impl KvPools {
    /// One pool per layer on `be`, laid out for each layer's attention.
    pub fn new(model: &super::Model, be: &dyn Backend, config: KvConfig) -> Result<KvPools> {
        config.validate()?;
        let layers = model
            .layers
            .iter()
            .map(|l| {
                let layout = l.attention.kv_layout(config.page_tokens);
                KvPool::new(be, l.index, layout, config.capacity_pages)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvPools { config, layers })
    }
    /// An empty cache of one sequence (no page taken yet).
    pub fn new_cache(&self) -> SequenceCache {
        SequenceCache {
            layers: self
                .layers
                .iter()
                .map(|p| LayerCache::new(p.clone()))
                .collect(),
        }
    }
}

/// One sequence's cache of one layer: its block table in that layer's pool.
#[derive(Debug)]
pub struct LayerCache {
    pool: Arc<KvPool>,
    id: u64,
    generation: u64,
    pages: Vec<u32>,
    len: usize,
}

impl LayerCache {
    /// An empty table in `pool`.
    pub fn new(pool: Arc<KvPool>) -> LayerCache {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        LayerCache {
            pool,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: 0,
            pages: Vec::new(),
            len: 0,
        }
    }
    /// Cached positions.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn store(&self) -> &KvStore {
        self.pool.store()
    }
    pub fn pool(&self) -> &Arc<KvPool> {
        &self.pool
    }
    /// The block table as backends see it.
    pub fn table(&self) -> BlockTableRef<'_> {
        BlockTableRef {
            id: self.id,
            generation: self.generation,
            pages: &self.pages,
        }
    }
    /// Takes pages until positions `0..len` are covered (none when they already are);
    /// `KvCacheFull` when the pool runs out, leaving the table as it was.
    pub fn reserve(&mut self, len: usize) -> Result<()> {
        let need = len.div_ceil(self.pool.layout().page_tokens);
        if need > self.pages.len() {
            let more = self.pool.take(need - self.pages.len())?;
            self.pages.extend(more);
        }
        Ok(())
    }
    /// Records that positions `0..len` are written (their pages must be reserved).
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len.div_ceil(self.pool.layout().page_tokens) > self.pages.len() {
            return Err(EngineError::internal(format!(
                "layer {}: {len} positions written into {} pages",
                self.pool.layer(),
                self.pages.len()
            )));
        }
        self.len = len;
        Ok(())
    }
    /// Drops cached positions `len..` and returns the pages wholly past `len` (reserved pages
    /// up to `len` stay): rolls a cache back to before a chunk, so a re-run of that chunk gives
    /// the same bits.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        let keep = len.div_ceil(self.pool.layout().page_tokens);
        if keep < self.pages.len() {
            self.pool.give_back(&self.pages[keep..]);
            self.pages.truncate(keep);
            self.generation += 1;
        }
    }
    /// Bytes of the pages this table holds (f32 rows).
    pub fn bytes(&self) -> usize {
        let l = self.pool.layout();
        self.pages.len() * l.page_tokens * l.row_width() * 4
    }
}

impl Drop for LayerCache {
    fn drop(&mut self) {
        self.pool.give_back(&self.pages);
    }
}

/// All layers' caches of one sequence.
#[derive(Debug)]
pub struct SequenceCache {
    pub layers: Vec<LayerCache>,
}

impl SequenceCache {
    /// Positions already cached (equal across layers between forward passes).
    pub fn len(&self) -> usize {
        self.layers.first().map(|l| l.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bytes()).sum()
    }
    /// Pages for positions `0..len` in every layer, or `KvCacheFull` with every table as before.
    pub fn reserve(&mut self, len: usize) -> Result<()> {
        let before: Vec<usize> = self.layers.iter().map(|l| l.pages.len()).collect();
        for i in 0..self.layers.len() {
            if let Err(e) = self.layers[i].reserve(len) {
                for (l, &n) in self.layers.iter_mut().zip(&before) {
                    if l.pages.len() > n {
                        l.pool.give_back(&l.pages[n..]);
                        l.pages.truncate(n);
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }
    /// Rolls every layer back to `len` positions.
    pub fn truncate(&mut self, len: usize) {
        for l in &mut self.layers {
            l.truncate(len);
        }
    }
}
