//! A pass mixing prompt and generated chunks, run as one pass per kind
//! (`ReferenceExecutor::forward_by_kind`: what `forward` does on a path whose kernels depend on
//! the row kind, the amx path under `--compute bf16`): every chunk's logits and recorded rows
//! are those of a pass of its own, in batch order, whatever the chunks' order.

use crate::fixtures::{fixture, load_model};
use troupe_engine::backend::Backend;
use troupe_engine::executor::{ForwardRecord, ReferenceExecutor, SeqChunk};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::Tensor;

fn bits(t: &Tensor) -> Vec<u32> {
    t.data().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn a_pass_split_by_kind_gives_each_chunk_its_own_pass_bits() {
    let m = load_model(&fixture("deepseek-v3-tiny"));
    let be = CpuBackend::new();
    let ex = ReferenceExecutor::new(&m, &be);
    let (a_prompt, b_prompt, b_next) = (vec![3u32, 17, 9, 44, 2, 8], vec![5u32, 6, 7, 8], 11u32);

    // Alone: A's prompt; B's prompt, then B's generated token.
    let (mut a, mut b) = (ex.new_cache().unwrap(), ex.new_cache().unwrap());
    let mut rec_a = ForwardRecord::default();
    let a_alone = ex
        .forward(
            &mut [SeqChunk::prompt(a_prompt.clone(), &mut a)],
            Some(&mut rec_a),
        )
        .unwrap();
    ex.forward(&mut [SeqChunk::prompt(b_prompt.clone(), &mut b)], None)
        .unwrap();
    let mut rec_b = ForwardRecord::default();
    let b_alone = ex
        .forward(&mut [SeqChunk::generated(b_next, &mut b)], Some(&mut rec_b))
        .unwrap();
    let (a_alone, b_alone) = (
        be.download(&a_alone).unwrap(),
        be.download(&b_alone).unwrap(),
    );

    // Together, B's generated chunk first: one pass per kind, put back in this order.
    let (mut a2, mut b2) = (ex.new_cache().unwrap(), ex.new_cache().unwrap());
    ex.forward(&mut [SeqChunk::prompt(b_prompt, &mut b2)], None)
        .unwrap();
    let mut rec = ForwardRecord::default();
    let both = ex
        .forward_by_kind(
            &mut [
                SeqChunk::generated(b_next, &mut b2),
                SeqChunk::prompt(a_prompt, &mut a2),
            ],
            Some(&mut rec),
        )
        .unwrap();
    let both = be.download(&both).unwrap();
    assert_eq!(both.rows(), 1 + a_alone.rows());
    let row = |t: &Tensor, r: usize| t.row(r).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(row(&both, 0), bits(&b_alone), "B's generated row");
    for r in 0..a_alone.rows() {
        assert_eq!(row(&both, 1 + r), row(&a_alone, r), "A's prompt row {r}");
    }
    // The record: every layer's rows and every router's rows and routing, in batch order.
    assert_eq!(rec.residual_stream.len(), rec_a.residual_stream.len());
    for (l, t) in rec.residual_stream.iter().enumerate() {
        assert_eq!(
            row(t, 0),
            bits(&rec_b.residual_stream[l]),
            "layer {l}: B's row"
        );
        for r in 0..a_alone.rows() {
            assert_eq!(
                row(t, 1 + r),
                row(&rec_a.residual_stream[l], r),
                "layer {l}: A's row {r}"
            );
        }
    }
    assert!(!rec.routers.is_empty(), "the fixture has MoE layers");
    for (m, (layer, logits, routing)) in rec.routers.iter().enumerate() {
        let (la, ta, ra) = &rec_a.routers[m];
        let (_, tb, rb) = &rec_b.routers[m];
        assert_eq!(layer, la);
        assert_eq!(row(logits, 0), bits(tb), "router {layer}: B's logits");
        assert_eq!(routing.ids[0], rb.ids[0], "router {layer}: B's experts");
        assert_eq!(routing.ids[1..], ra.ids[..], "router {layer}: A's experts");
        assert_eq!(
            routing.weights[1..],
            ra.weights[..],
            "router {layer}: A's weights"
        );
        for r in 0..a_alone.rows() {
            assert_eq!(
                row(logits, 1 + r),
                row(ta, r),
                "router {layer}: A's logits row {r}"
            );
        }
    }
}
