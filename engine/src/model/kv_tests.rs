//! Unit tests of the page allocator (`kv.rs`).

use super::kv::*;
use crate::device_tensor::KvLayout;
use crate::error::EngineError;
use crate::kernels::CpuBackend;

fn pool(capacity: usize) -> std::sync::Arc<KvPool> {
    let layout = KvLayout {
        page_tokens: 4,
        key_width: 2,
        rope_width: 1,
        value_width: 0,
    };
    KvPool::new(&CpuBackend::new(), 3, layout, capacity).unwrap()
}

#[test]
fn tables_take_pages_as_they_grow_and_return_them_on_truncate_and_drop() {
    let p = pool(4);
    let mut a = LayerCache::new(p.clone());
    a.reserve(5).unwrap();
    a.set_len(5).unwrap();
    assert_eq!(a.table().pages, &[0, 1]);
    assert_eq!((p.pages_in_use(), a.bytes()), (2, 2 * 4 * 3 * 4));
    let g = a.table().generation;
    a.truncate(usize::MAX);
    assert_eq!((a.len(), a.table().generation), (5, g));
    a.truncate(4);
    assert_eq!(
        (a.len(), a.table().pages.len(), p.pages_in_use()),
        (4, 1, 1)
    );
    assert_ne!(a.table().generation, g);
    let mut b = LayerCache::new(p.clone());
    b.reserve(12).unwrap();
    assert_eq!(b.table().pages, &[1, 2, 3]);
    assert!(a.set_len(9).is_err());
    match a.reserve(9) {
        Err(EngineError::KvCacheFull {
            layer: 3,
            capacity_pages: 4,
            page_tokens: 4,
        }) => {}
        other => panic!("expected KvCacheFull, got {other:?}"),
    }
    assert_eq!((a.table().pages.len(), p.pages_in_use()), (1, 4));
    drop(b);
    assert_eq!(p.pages_in_use(), 1);
    a.reserve(9).unwrap();
    assert_eq!(a.table().pages.len(), 3);
    drop(a);
    assert_eq!(p.pages_in_use(), 0);
}

#[test]
fn a_sequence_reservation_is_all_layers_or_none() {
    let (p0, p1) = (pool(4), pool(2));
    let mut seq = SequenceCache {
        layers: vec![LayerCache::new(p0.clone()), LayerCache::new(p1.clone())],
    };
    seq.reserve(8).unwrap();
    assert!(matches!(
        seq.reserve(9),
        Err(EngineError::KvCacheFull { .. })
    ));
    assert_eq!((p0.pages_in_use(), p1.pages_in_use()), (2, 2));
    seq.truncate(3);
    assert_eq!((p0.pages_in_use(), p1.pages_in_use()), (1, 1));
}

#[test]
fn layers_sharing_an_allocator_share_one_table() {
    let layout = |key_width| KvLayout {
        page_tokens: 4,
        key_width,
        rope_width: 0,
        value_width: 2,
    };
    let be = CpuBackend::new();
    let alloc = PageAllocator::new(8, 4).unwrap();
    let pools = KvPools {
        config: KvConfig {
            page_tokens: 4,
            capacity_pages: 8,
        },
        layers: vec![
            KvPool::sharing(&be, 0, layout(2), alloc.clone()).unwrap(),
            KvPool::sharing(&be, 1, layout(6), alloc.clone()).unwrap(),
        ],
    };
    assert!(KvPool::sharing(
        &be,
        2,
        KvLayout {
            page_tokens: 8,
            ..layout(2)
        },
        alloc.clone()
    )
    .is_err());
    let other = pools.new_cache();
    let mut seq = pools.new_cache();
    seq.layers[0].reserve(5).unwrap();
    assert_eq!(alloc.pages_in_use(), 2);
    seq.layers[1].reserve(5).unwrap();
    assert_eq!(
        alloc.pages_in_use(),
        2,
        "the second layer takes no page of its own"
    );
    let (t0, t1) = (seq.layers[0].table(), seq.layers[1].table());
    assert_eq!((t0.id, t0.pages), (t1.id, t1.pages));
    assert_ne!(t0.id, other.layers[0].table().id);
    assert_eq!(seq.bytes(), 2 * 4 * (4 + 8) * 4);
    let g = t0.generation;
    seq.layers[1].truncate(0);
    assert_eq!(
        alloc.pages_in_use(),
        2,
        "a shared table keeps its pages on one layer's truncate"
    );
    seq.truncate(4);
    assert_eq!(alloc.pages_in_use(), 1);
    for l in &seq.layers {
        assert_eq!(
            (l.table().pages.len(), l.table().generation != g),
            (1, true)
        );
    }
    match seq.reserve(40) {
        Err(EngineError::KvCacheFull { .. }) => {}
        other => panic!("expected KvCacheFull, got {other:?}"),
    }
    assert_eq!(
        (alloc.pages_in_use(), seq.layers[0].table().pages.len()),
        (1, 1)
    );
    drop(seq);
    assert_eq!(alloc.pages_in_use(), 0);
}

#[test]
fn oversized_configurations_are_errors_not_aborts() {
    let be = CpuBackend::new();
    let layout = KvLayout {
        page_tokens: 4,
        key_width: 2,
        rope_width: 0,
        value_width: 0,
    };
    for (page_tokens, capacity) in [(3, 8), (1 << 21, 8), (4, 0), (4, 1 << 33)] {
        assert!(
            PageAllocator::new(capacity, page_tokens).is_err(),
            "{page_tokens} {capacity}"
        );
    }
    let huge_rows = KvLayout {
        page_tokens: 1 << 20,
        key_width: usize::MAX / 2,
        ..layout
    };
    assert!(KvPool::new(&be, 0, huge_rows, 1).is_err());
}
