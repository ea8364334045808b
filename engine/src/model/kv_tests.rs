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
