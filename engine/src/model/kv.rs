//! The paged KV cache. Each layer has a **pool**: the page storage a backend gives
//! (`Backend::kv_store`) and a `PageAllocator` (the free list of page ids). Pools built together
//! (`KvPools::new`) share one allocator, so page id `p` names page `p` of every layer's store and
//! a sequence has **one block table for all its layers** — the ids of its pages in position order
//! (page `i` holds positions `i·page_tokens ..`), with an `id` and a `generation` that changes
//! whenever an entry other than a new last one changes. A device keeping a copy of the table
//! therefore uploads one new entry when a sequence opens a page, whatever the number of layers.
//! Each layer's `LayerCache` holds the table (shared) and the number of positions it has written.
//!
//! The allocator also keeps a **prefix index** (`prefix_cache.rs`): full pages of prompt
//! positions that finished sequences leave behind, which a new sequence whose prompt starts with
//! the same tokens takes into its table (`KvPools::reuse_prefix`) instead of computing them.
//!
//! Invariants: a page is held by the tables that hold it (counted) and by the prefix index; it
//! is free when neither does. A page held by more than one table, or by the index, is full and
//! wholly below every holder's length, so nobody writes it again. Appending positions only adds
//! pages at the end of a table and never moves or copies a cached row; truncating to `len`
//! releases every page wholly past `len` once no layer of the table needs it; dropping a
//! sequence's caches releases all its pages; the index's pages that no table holds are evicted
//! (least recently used first) before the allocator reports `EngineError::KvCacheFull`; a
//! sequence that needs a page when none can be had gets that error and nothing else changes
//! (other sequences keep their pages).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::Backend;
use crate::device_tensor::{BlockTableRef, KvLayout, KvStore};
use crate::error::{EngineError, Result};
use crate::graph::spec::ModelSpec;
use crate::model::prefix_cache::{PrefixCacheStats, PrefixIndex};

/// Positions per page unless configured otherwise.
pub const DEFAULT_PAGE_TOKENS: usize = 64;
/// Sequences of the model's full length the default pool capacity covers.
pub const DEFAULT_FULL_LENGTH_SEQUENCES: usize = 8;
/// The default pool capacity is at least this many pages.
pub const MIN_DEFAULT_PAGES: usize = 1024;
/// The largest page (positions) a configuration may ask for.
pub const MAX_PAGE_TOKENS: usize = 1 << 20;

/// The pool configuration of every layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvConfig {
    /// Positions per page (a power of two).
    pub page_tokens: usize,
    /// Page ids of the allocator the layers share: each layer's store holds this many pages and
    /// a sequence's page `p` serves every layer (a cap: the CPU store allocates a page on its
    /// first write).
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
                .clamp(MIN_DEFAULT_PAGES, u32::MAX as usize),
        }
    }
    /// The default: `DEFAULT_PAGE_TOKENS` per page.
    pub fn default_for(spec: &ModelSpec) -> KvConfig {
        KvConfig::for_spec(spec, DEFAULT_PAGE_TOKENS)
    }
    /// Errors unless `page_tokens` is a power of two up to `MAX_PAGE_TOKENS` and the capacity
    /// is positive and fits u32 page ids.
    pub fn validate(&self) -> Result<()> {
        if !self.page_tokens.is_power_of_two()
            || self.page_tokens > MAX_PAGE_TOKENS
            || self.capacity_pages == 0
            || self.capacity_pages > u32::MAX as usize
        {
            return Err(EngineError::Invalid(format!(
                "KV cache: page_tokens {} must be a power of two up to {MAX_PAGE_TOKENS}, and \
                 capacity_pages {} between 1 and {}",
                self.page_tokens,
                self.capacity_pages,
                u32::MAX
            )));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct FreeList {
    /// Free pages that were used before, reused first (last returned, first reused).
    returned: Vec<u32>,
    /// Pages `fresh..capacity` were never handed out.
    fresh: usize,
    /// Tables holding each page that any table holds (its length is the pages in use).
    holders: HashMap<u32, u32>,
    index: PrefixIndex,
}

impl FreeList {
    fn free(&self, capacity: usize) -> usize {
        self.returned.len() + (capacity - self.fresh)
    }
    /// Evicts index pages no table holds until `n` pages are free; evicts none when that
    /// cannot make `n`.
    fn evict_for(&mut self, capacity: usize, n: usize) {
        let have = self.free(capacity);
        if have >= n || have + self.index.evictable(|p| !self.holders.contains_key(&p)) < n {
            return;
        }
        while self.free(capacity) < n {
            let holders = &self.holders;
            match self.index.evict_one(|p| !holders.contains_key(&p)) {
                Some(p) => self.returned.push(p),
                None => break,
            }
        }
    }
    /// One more table holds each of `pages`.
    fn hold(&mut self, pages: &[u32]) {
        for &p in pages {
            *self.holders.entry(p).or_insert(0) += 1;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The free list of page ids `0..capacity`, shared by the pools built together.
#[derive(Debug)]
pub struct PageAllocator {
    capacity: usize,
    page_tokens: usize,
    free: Mutex<FreeList>,
}

impl PageAllocator {
    /// `capacity` pages of `page_tokens` positions (a power of two).
    pub fn new(capacity: usize, page_tokens: usize) -> Result<Arc<PageAllocator>> {
        KvConfig {
            page_tokens,
            capacity_pages: capacity,
        }
        .validate()?;
        Ok(Arc::new(PageAllocator {
            capacity,
            page_tokens,
            free: Mutex::new(FreeList {
                returned: Vec::new(),
                fresh: 0,
                holders: HashMap::new(),
                index: PrefixIndex::default(),
            }),
        }))
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Pages currently held by sequences (the prefix index's other pages not counted).
    pub fn pages_in_use(&self) -> usize {
        lock(&self.free).holders.len()
    }
    /// The prefix index's counters.
    pub fn prefix_stats(&self) -> PrefixCacheStats {
        lock(&self.free).index.stats()
    }
    /// `n` pages (evicting unheld prefix pages as needed), or `KvCacheFull` naming `layer`
    /// (taking none) when fewer can be had.
    fn take(&self, layer: usize, n: usize) -> Result<Vec<u32>> {
        let mut f = lock(&self.free);
        f.evict_for(self.capacity, n);
        if f.free(self.capacity) < n {
            return Err(EngineError::KvCacheFull {
                layer,
                capacity_pages: self.capacity,
                page_tokens: self.page_tokens,
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
        f.hold(&out);
        Ok(out)
    }
    /// A table lets go of `pages`; those nobody holds any more become free.
    fn give_back(&self, pages: &[u32]) {
        let mut f = lock(&self.free);
        for &p in pages.iter().rev() {
            let Some(h) = f.holders.get_mut(&p) else {
                continue;
            };
            *h -= 1;
            if *h == 0 {
                f.holders.remove(&p);
                if !f.index.holds(p) {
                    f.returned.push(p);
                }
            }
        }
    }
    /// The cached pages of `prompt`'s longest cached run of full pages, at most `max_pages`,
    /// now held by the caller's table.
    fn adopt(&self, prompt: &[u32], max_pages: usize) -> Vec<u32> {
        let mut f = lock(&self.free);
        let pages = f.index.lookup(prompt, self.page_tokens, max_pages);
        f.hold(&pages);
        pages
    }
    /// Publishes `pages` (a table's first pages) as holding `tokens` (whole pages of prompt
    /// positions).
    fn publish(&self, tokens: &[u32], pages: &[u32]) {
        let mut f = lock(&self.free);
        f.index.insert(tokens, self.page_tokens, pages);
    }
}

/// One layer's pool: a backend's page storage and the allocator of its page ids.
#[derive(Debug)]
pub struct KvPool {
    layer: usize,
    store: KvStore,
    alloc: Arc<PageAllocator>,
}

impl KvPool {
    /// A pool of `capacity` pages of `layout` on `be` for decoder layer `layer`, with its own
    /// allocator (its sequences' tables are this layer's alone).
    pub fn new(
        be: &dyn Backend,
        layer: usize,
        layout: KvLayout,
        capacity: usize,
    ) -> Result<Arc<KvPool>> {
        let alloc = PageAllocator::new(capacity, layout.page_tokens)?;
        KvPool::sharing(be, layer, layout, alloc)
    }
    /// A pool on `be` whose page ids come from `alloc` (shared with other layers' pools, so a
    /// sequence's table serves all of them); the store holds `alloc.capacity()` pages.
    pub fn sharing(
        be: &dyn Backend,
        layer: usize,
        layout: KvLayout,
        alloc: Arc<PageAllocator>,
    ) -> Result<Arc<KvPool>> {
        if layout.page_tokens != alloc.page_tokens {
            return Err(EngineError::Invalid(format!(
                "KV cache layer {layer}: {}-position pages in an allocator of {}-position pages",
                layout.page_tokens, alloc.page_tokens
            )));
        }
        Ok(Arc::new(KvPool {
            layer,
            store: be.kv_store(layout, alloc.capacity)?,
            alloc,
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
    pub fn allocator(&self) -> &Arc<PageAllocator> {
        &self.alloc
    }
    /// Pages currently owned by sequences (of every pool sharing this one's allocator).
    pub fn pages_in_use(&self) -> usize {
        self.alloc.pages_in_use()
    }
}

/// The pools of every layer of a model.
#[derive(Clone, Debug)]
pub struct KvPools {
    pub config: KvConfig,
    pub layers: Vec<Arc<KvPool>>,
}

impl KvPools {
    /// One pool per layer on `be`, laid out for each layer's attention, all sharing one
    /// allocator of `config.capacity_pages` pages (one block table per sequence).
    pub fn new(model: &super::Model, be: &dyn Backend, config: KvConfig) -> Result<KvPools> {
        let alloc = PageAllocator::new(config.capacity_pages, config.page_tokens)?;
        let layers = model
            .layers
            .iter()
            .map(|l| {
                let layout = l.attention.kv_layout(config.page_tokens);
                KvPool::sharing(be, l.index, layout, alloc.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvPools { config, layers })
    }
    /// The allocator of every layer, when they share one (as `KvPools::new` and the actor
    /// runtime build them).
    fn shared_allocator(&self) -> Option<&Arc<PageAllocator>> {
        let first = &self.layers.first()?.alloc;
        self.layers
            .iter()
            .all(|p| Arc::ptr_eq(&p.alloc, first))
            .then_some(first)
    }
    /// Starts the empty `cache` with the cached pages of `prompt`'s longest cached prefix of
    /// full pages (leaving at least its last token to compute, whose logits the caller needs);
    /// returns the positions now cached. 0 when the pools do not share one allocator or
    /// `cache` is not empty.
    pub fn reuse_prefix(&self, cache: &mut SequenceCache, prompt: &[u32]) -> usize {
        let Some(alloc) = self.shared_allocator() else {
            return 0;
        };
        let Some(table) = cache.layers.first().map(|l| l.table.clone()) else {
            return 0;
        };
        if !cache.is_empty() || table.len() != 0 {
            return 0;
        }
        let page = alloc.page_tokens;
        let pages = alloc.adopt(prompt, prompt.len().saturating_sub(1) / page);
        let len = pages.len() * page;
        lock(&table.state).pages = pages;
        for l in &mut cache.layers {
            l.refresh();
            l.len = len;
        }
        len
    }
    /// Publishes the pages of `cache` that hold only `prompt` positions (its whole pages that
    /// the cache has written), for later prompts to reuse. Call it once the prompt is prefilled.
    pub fn publish_prefix(&self, cache: &SequenceCache, prompt: &[u32]) {
        let (Some(alloc), Some(first)) = (self.shared_allocator(), cache.layers.first()) else {
            return;
        };
        let page = alloc.page_tokens;
        let written = cache.layers.iter().map(|l| l.len()).min().unwrap_or(0);
        let full = prompt.len().min(written) / page;
        let pages: Vec<u32> = lock(&first.table.state)
            .pages
            .iter()
            .take(full)
            .copied()
            .collect();
        alloc.publish(&prompt[..pages.len() * page], &pages);
    }
    /// The prefix index's counters (zeros when the pools do not share an allocator).
    pub fn prefix_stats(&self) -> PrefixCacheStats {
        self.shared_allocator()
            .map(|a| a.prefix_stats())
            .unwrap_or_default()
    }
    /// An empty cache of one sequence (no page taken yet): one table for the layers whose pools
    /// share an allocator.
    pub fn new_cache(&self) -> SequenceCache {
        let mut tables: Vec<Arc<Table>> = Vec::new();
        let layers = self
            .layers
            .iter()
            .map(|pool| {
                let shared = tables
                    .iter()
                    .find(|t| Arc::ptr_eq(&t.alloc, &pool.alloc))
                    .cloned();
                let table = shared.unwrap_or_else(|| {
                    let t = Table::new(pool.alloc.clone());
                    tables.push(t.clone());
                    t
                });
                LayerCache::in_table(pool.clone(), table)
            })
            .collect();
        SequenceCache { layers }
    }
}

/// A sequence's block table in one allocator; its pages go back when the last layer drops it.
#[derive(Debug)]
struct Table {
    id: u64,
    alloc: Arc<PageAllocator>,
    state: Mutex<TableState>,
}

#[derive(Debug, Default)]
struct TableState {
    pages: Vec<u32>,
    generation: u64,
}

impl Table {
    fn new(alloc: Arc<PageAllocator>) -> Arc<Table> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Arc::new(Table {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            alloc,
            state: Mutex::new(TableState::default()),
        })
    }
    /// Pages for `pages` entries (`KvCacheFull` naming `layer`, the table unchanged).
    fn grow(&self, layer: usize, pages: usize) -> Result<()> {
        let mut s = lock(&self.state);
        if pages > s.pages.len() {
            let more = self.alloc.take(layer, pages - s.pages.len())?;
            s.pages.extend(more);
        }
        Ok(())
    }
    /// Keeps the first `pages` entries and returns the others.
    fn shrink(&self, pages: usize) {
        let mut s = lock(&self.state);
        if pages < s.pages.len() {
            self.alloc.give_back(&s.pages[pages..]);
            s.pages.truncate(pages);
            s.generation += 1;
        }
    }
    fn len(&self) -> usize {
        lock(&self.state).pages.len()
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let s = lock(&self.state);
        self.alloc.give_back(&s.pages);
    }
}

/// One sequence's cache of one layer: the sequence's block table (shared with the layers whose
/// pools share this one's allocator) and the positions this layer has written.
#[derive(Debug)]
pub struct LayerCache {
    pool: Arc<KvPool>,
    table: Arc<Table>,
    /// The table's entries and generation as this layer last saw them (what `table()` lends).
    seen: Vec<u32>,
    seen_generation: u64,
    len: usize,
}

impl LayerCache {
    /// An empty table of its own in `pool`.
    pub fn new(pool: Arc<KvPool>) -> LayerCache {
        let table = Table::new(pool.alloc.clone());
        LayerCache::in_table(pool, table)
    }
    fn in_table(pool: Arc<KvPool>, table: Arc<Table>) -> LayerCache {
        LayerCache {
            pool,
            table,
            seen: Vec::new(),
            seen_generation: 0,
            len: 0,
        }
    }
    /// Brings `seen` up to date with the shared table.
    fn refresh(&mut self) {
        let s = lock(&self.table.state);
        if s.generation != self.seen_generation || s.pages.len() < self.seen.len() {
            self.seen.clear();
            self.seen_generation = s.generation;
        }
        let have = self.seen.len();
        self.seen.extend_from_slice(&s.pages[have..]);
    }
    fn page_tokens(&self) -> usize {
        self.pool.layout().page_tokens
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
    /// The block table as backends see it (as of this layer's last `reserve`/`truncate`).
    pub fn table(&self) -> BlockTableRef<'_> {
        BlockTableRef {
            id: self.table.id,
            generation: self.seen_generation,
            pages: &self.seen,
        }
    }
    /// Takes pages until positions `0..len` are covered (none when they already are);
    /// `KvCacheFull` when the allocator runs out, leaving the table as it was.
    pub fn reserve(&mut self, len: usize) -> Result<()> {
        self.table
            .grow(self.pool.layer(), len.div_ceil(self.page_tokens()))?;
        self.refresh();
        Ok(())
    }
    /// Records that positions `0..len` are written (their pages must be reserved).
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len.div_ceil(self.page_tokens()) > self.seen.len() {
            return Err(EngineError::internal(format!(
                "layer {}: {len} positions written into {} pages",
                self.pool.layer(),
                self.seen.len()
            )));
        }
        self.len = len;
        Ok(())
    }
    /// Drops cached positions `len..` (reserved pages up to `len` stay): rolls a cache back to
    /// before a chunk, so a re-run of that chunk gives the same bits. The pages wholly past
    /// `len` go back to the allocator when this layer is the table's only user (a table shared
    /// by layers gives pages back through `SequenceCache::truncate`).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        if Arc::strong_count(&self.table) == 1 {
            self.table.shrink(len.div_ceil(self.page_tokens()));
        }
        self.refresh();
    }
    /// Bytes of the pages this layer's store holds for the table (f32 rows).
    pub fn bytes(&self) -> usize {
        let l = self.pool.layout();
        self.seen.len() * l.page_tokens * l.row_width() * 4
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
    /// Bytes of the pages all layers hold.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bytes()).sum()
    }
    /// Pages for positions `0..len` in every layer, or `KvCacheFull` with every table as before.
    pub fn reserve(&mut self, len: usize) -> Result<()> {
        let before: Vec<usize> = self.layers.iter().map(|l| l.table.len()).collect();
        for i in 0..self.layers.len() {
            if let Err(e) = self.layers[i].reserve(len) {
                for (l, &n) in self.layers.iter_mut().zip(&before) {
                    l.table.shrink(n);
                }
                for l in &mut self.layers {
                    l.refresh();
                }
                return Err(e);
            }
        }
        Ok(())
    }
    /// Rolls every layer back to `len` positions and returns the pages wholly past `len`.
    pub fn truncate(&mut self, len: usize) {
        for l in &mut self.layers {
            l.len = l.len.min(len);
            l.table.shrink(len.div_ceil(l.page_tokens()));
        }
        for l in &mut self.layers {
            l.refresh();
        }
    }
}
