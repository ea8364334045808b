//! The prefix index of a page allocator: full KV pages of prompt positions, keyed by every
//! token up to and including them, so a later prompt that starts with the same tokens can take
//! those pages instead of computing them again.
//!
//! A key is (the entry id of the page before, this page's tokens): a trie over pages, compared
//! exactly (no hash collision can hand a prompt another prompt's rows). The index holds each of
//! its pages until it evicts it; eviction takes the least recently used entry that no sequence
//! holds and that has no cached child (a child is reachable only through its parent), so a
//! long cached prefix is dropped from its end.
//!
//! Only pages whose every position is a prompt position are published (see `MlaForm::Auto`:
//! a prompt position's rows do not depend on chunking), so a page's contents are a function of
//! its key alone, and reusing it is bit-identical to computing it.

use std::collections::HashMap;

/// Cache counters, since the allocator was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Pages the index holds now.
    pub cached_pages: usize,
    /// Prompt tokens of the requests that looked the cache up.
    pub prompt_tokens: u64,
    /// Of those, the tokens whose cache rows came from the index.
    pub hit_tokens: u64,
    /// Pages evicted to make room.
    pub evicted_pages: u64,
}

impl PrefixCacheStats {
    /// `hit_tokens / prompt_tokens` (0 before any lookup).
    pub fn hit_rate(&self) -> f64 {
        match self.prompt_tokens {
            0 => 0.0,
            n => self.hit_tokens as f64 / n as f64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PageKey {
    /// The entry id of the page before (0: this is the first page).
    parent: u64,
    tokens: Box<[u32]>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    page: u32,
    last_used: u64,
    /// Cached pages whose parent this is.
    children: u32,
}

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct PrefixIndex {
    entries: HashMap<PageKey, Entry>,
    /// Entry id → its key (to reach a parent).
    keys: HashMap<u64, PageKey>,
    /// Page id → its entry's key.
    pages: HashMap<u32, PageKey>,
    next_id: u64,
    clock: u64,
    stats: PrefixCacheStats,
}

impl PrefixIndex {
    /// The index holds `page`.
    pub(crate) fn holds(&self, page: u32) -> bool {
        self.pages.contains_key(&page)
    }

    pub(crate) fn stats(&self) -> PrefixCacheStats {
        PrefixCacheStats {
            cached_pages: self.entries.len(),
            ..self.stats
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The cached pages of the longest run of `tokens`' full pages (at most `max_pages`), each
    /// marked used; counts `tokens` as looked-up prompt tokens, and the hits.
    pub(crate) fn lookup(
        &mut self,
        tokens: &[u32],
        page_tokens: usize,
        max_pages: usize,
    ) -> Vec<u32> {
        let mut parent = 0;
        let mut found = Vec::new();
        for chunk in tokens.chunks_exact(page_tokens).take(max_pages) {
            let key = PageKey {
                parent,
                tokens: chunk.into(),
            };
            let now = self.tick();
            let Some(e) = self.entries.get_mut(&key) else {
                break;
            };
            e.last_used = now;
            parent = e.id;
            found.push(e.page);
        }
        self.stats.prompt_tokens += tokens.len() as u64;
        self.stats.hit_tokens += (found.len() * page_tokens) as u64;
        found
    }

    /// Publishes `pages[i]` as holding `tokens`' page `i` (`tokens` covers whole pages). Pages
    /// whose key is already cached stay their sequence's own.
    pub(crate) fn insert(&mut self, tokens: &[u32], page_tokens: usize, pages: &[u32]) {
        let mut parent = 0;
        for (chunk, &page) in tokens.chunks_exact(page_tokens).zip(pages) {
            let key = PageKey {
                parent,
                tokens: chunk.into(),
            };
            let now = self.tick();
            if let Some(e) = self.entries.get_mut(&key) {
                e.last_used = now;
                parent = e.id;
                continue;
            }
            if self.holds(page) {
                break; // cached under another key: cannot happen for a prompt's own pages
            }
            self.next_id += 1;
            let id = self.next_id;
            if let Some(pk) = self.keys.get(&parent) {
                if let Some(p) = self.entries.get_mut(pk) {
                    p.children += 1;
                }
            }
            self.entries.insert(
                key.clone(),
                Entry {
                    id,
                    page,
                    last_used: now,
                    children: 0,
                },
            );
            self.keys.insert(id, key.clone());
            self.pages.insert(page, key);
            parent = id;
        }
    }

    /// Cached pages that `free_to_evict` allows: all of them can be evicted, leaves first (a
    /// sequence holding a page holds its parents too).
    pub(crate) fn evictable(&self, free_to_evict: impl Fn(u32) -> bool) -> usize {
        self.pages.keys().filter(|&&p| free_to_evict(p)).count()
    }

    /// Evicts the least recently used leaf whose page `free_to_evict` allows (no sequence
    /// holds it); returns its page.
    pub(crate) fn evict_one(&mut self, free_to_evict: impl Fn(u32) -> bool) -> Option<u32> {
        let key = self
            .entries
            .iter()
            .filter(|(_, e)| e.children == 0 && free_to_evict(e.page))
            .min_by_key(|(_, e)| e.last_used)
            .map(|(k, _)| k.clone())?;
        let e = self.entries.remove(&key)?;
        self.keys.remove(&e.id);
        self.pages.remove(&e.page);
        if let Some(pk) = self.keys.get(&key.parent) {
            if let Some(p) = self.entries.get_mut(pk) {
                p.children = p.children.saturating_sub(1);
            }
        }
        self.stats.evicted_pages += 1;
        Some(e.page)
    }
}
