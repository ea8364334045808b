//! Unit tests of the prefix index and its place in the page allocator (`prefix_cache.rs`,
//! `kv.rs`): reuse, sharing, the last token left to compute, LRU eviction of unheld leaves.

use super::kv::*;
use crate::device_tensor::KvLayout;
use crate::error::EngineError;
use crate::kernels::CpuBackend;

const PAGE: usize = 4;

/// Two layers sharing one allocator of `capacity` 4-position pages.
fn pools(capacity: usize) -> KvPools {
    let layout = KvLayout {
        page_tokens: PAGE,
        key_width: 2,
        rope_width: 1,
        value_width: 0,
    };
    let be = CpuBackend::new();
    let alloc = PageAllocator::new(capacity, PAGE).unwrap();
    KvPools {
        config: KvConfig {
            page_tokens: PAGE,
            capacity_pages: capacity,
        },
        layers: (0..2)
            .map(|l| KvPool::sharing(&be, l, layout, alloc.clone()).unwrap())
            .collect(),
    }
}

/// A cache whose `prompt` is prefilled (pages taken, every layer's length set), then published.
fn prefilled(p: &KvPools, prompt: &[u32]) -> SequenceCache {
    let mut c = p.new_cache();
    let reused = p.reuse_prefix(&mut c, prompt);
    c.reserve(prompt.len()).unwrap();
    for l in &mut c.layers {
        l.set_len(prompt.len()).unwrap();
    }
    assert!(reused < prompt.len());
    p.publish_prefix(&c, prompt);
    c
}

fn pages(c: &SequenceCache) -> Vec<u32> {
    c.layers[0].table().pages.to_vec()
}

#[test]
fn a_prompt_sharing_full_pages_takes_them_and_computes_the_rest() {
    let p = pools(16);
    let first: Vec<u32> = (0..10).collect(); // pages [0..4) [4..8), 2 positions more
    let a = prefilled(&p, &first);
    assert_eq!(p.prefix_stats().cached_pages, 2);
    let mut second: Vec<u32> = (0..8).collect();
    second.extend([50, 51, 52]);
    let mut b = p.new_cache();
    assert_eq!(p.reuse_prefix(&mut b, &second), 8);
    assert_eq!(b.len(), 8);
    assert!(b.layers.iter().all(|l| l.len() == 8));
    assert_eq!(pages(&b), pages(&a)[..2].to_vec());
    // Shared pages are counted once; the sequence's own pages come after them.
    assert_eq!(p.layers[0].pages_in_use(), 3);
    b.reserve(11).unwrap();
    assert_eq!(p.layers[0].pages_in_use(), 4);
    let s = p.prefix_stats();
    assert_eq!((s.prompt_tokens, s.hit_tokens), (10 + 11, 8));
    drop(a);
    drop(b);
    // Nobody holds a page now, and the two cached ones stay cached.
    assert_eq!(p.layers[0].pages_in_use(), 0);
    assert_eq!(p.prefix_stats().cached_pages, 2);
}

#[test]
fn at_least_the_last_prompt_token_is_left_to_compute() {
    let p = pools(16);
    let prompt: Vec<u32> = (100..108).collect(); // exactly two pages
    drop(prefilled(&p, &prompt));
    assert_eq!(p.prefix_stats().cached_pages, 2);
    let mut c = p.new_cache();
    assert_eq!(p.reuse_prefix(&mut c, &prompt), 4);
    let mut short = p.new_cache();
    assert_eq!(p.reuse_prefix(&mut short, &prompt[..4]), 0);
}

#[test]
fn a_different_page_ends_the_match_and_a_later_equal_page_does_not_match() {
    let p = pools(16);
    drop(prefilled(&p, &(0..13).collect::<Vec<u32>>()));
    let mut other: Vec<u32> = (0..13).collect();
    other[5] = 99; // second page differs; the third is equal but follows another prefix
    let mut c = p.new_cache();
    assert_eq!(p.reuse_prefix(&mut c, &other), 4);
    let mut none = p.new_cache();
    assert_eq!(p.reuse_prefix(&mut none, &[7, 7, 7, 7, 7, 7]), 0);
}

#[test]
fn eviction_takes_unheld_pages_least_recently_used_and_leaves_first() {
    let p = pools(6);
    let x: Vec<u32> = (0..9).collect(); // 2 full pages: x0 x1
    let y: Vec<u32> = (20..29).collect(); // y0 y1
    drop(prefilled(&p, &x));
    drop(prefilled(&p, &y));
    assert_eq!(p.prefix_stats().cached_pages, 4);
    // Touch x: y is now the least recently used.
    let mut touch = p.new_cache();
    assert_eq!(p.reuse_prefix(&mut touch, &x), 8);
    drop(touch);
    // 4 cached, 2 free. Needing 3 evicts one page: y's last (the older leaf; y0 has a child).
    let mut big = p.new_cache();
    big.reserve(3 * PAGE).unwrap();
    let s = p.prefix_stats();
    assert_eq!((s.cached_pages, s.evicted_pages), (3, 1));
    let mut y_again = p.new_cache();
    assert_eq!(
        p.reuse_prefix(&mut y_again, &y),
        4,
        "y's first page survives its second"
    );
    drop(y_again);
    let mut x_again = p.new_cache();
    assert_eq!(
        p.reuse_prefix(&mut x_again, &x),
        8,
        "x was used more recently"
    );
    // x held, y0 cached and unheld, nothing free: two pages cannot be had, and the failed
    // request evicts nothing; one page can, and it is y0.
    let mut more = p.new_cache();
    assert!(matches!(
        more.reserve(2 * PAGE),
        Err(EngineError::KvCacheFull { .. })
    ));
    assert_eq!((pages(&more), p.prefix_stats().cached_pages), (vec![], 3));
    more.reserve(PAGE).unwrap();
    assert_eq!(p.prefix_stats().cached_pages, 2);
    drop((x_again, big, more));
    assert_eq!(p.layers[0].pages_in_use(), 0);
    let mut x_last = p.new_cache();
    assert_eq!(p.reuse_prefix(&mut x_last, &x), 8);
}

#[test]
fn pools_without_a_shared_allocator_and_started_caches_do_not_reuse() {
    let layout = KvLayout {
        page_tokens: PAGE,
        key_width: 2,
        rope_width: 0,
        value_width: 2,
    };
    let be = CpuBackend::new();
    let separate = KvPools {
        config: KvConfig {
            page_tokens: PAGE,
            capacity_pages: 8,
        },
        layers: (0..2)
            .map(|l| KvPool::new(&be, l, layout, 8).unwrap())
            .collect(),
    };
    let prompt: Vec<u32> = (0..9).collect();
    drop(prefilled(&separate, &prompt));
    let mut c = separate.new_cache();
    assert_eq!(separate.reuse_prefix(&mut c, &prompt), 0);
    let p = pools(8);
    drop(prefilled(&p, &prompt));
    let mut started = p.new_cache();
    started.reserve(1).unwrap();
    for l in &mut started.layers {
        l.set_len(1).unwrap();
    }
    assert_eq!(p.reuse_prefix(&mut started, &prompt), 0);
}
