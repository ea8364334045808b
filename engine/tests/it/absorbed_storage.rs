//! The absorbed MLA form's per-head matrices (`uk_t`, `uv`, split from `kv_b_proj` at load)
//! keep the checkpoint's element type where that is exact: bf16 stays bf16 and multiplies to the
//! bits of f32 copies; FP8 stays FP8 with the block scales when each head's rows sit inside
//! 128-row scale blocks, with the same dequantised values; int8 keeps `uv` (kv_b's own rows)
//! int8 and upcasts the transposed `uk_t`; other shapes are upcast to f32.

use troupe_engine::dtype::DType;
use troupe_engine::kernels::linear::linear;
use troupe_engine::model::attention::{Attention, MlaAttention};
use troupe_engine::weights::Weight;
use troupe_engine::Tensor;

use crate::fixtures::{fixture, load_model};

fn first_mla(case: &str) -> MlaAttention {
    let model = load_model(&fixture(case));
    match model.layers.into_iter().next().map(|l| l.attention) {
        Some(Attention::Mla(a)) => a,
        _ => panic!("{case}: layer 0 is not MLA"),
    }
}

/// Every element of `w` as f32 (FP8: e4m3 times its block's scale, one rounding).
fn values(w: &Weight) -> Vec<f32> {
    (0..w.rows()).flat_map(|r| w.row_f32(r)).collect()
}

/// `uk_t[h]` is W_uk[h] transposed and `uv[h]` is W_uv[h], element for element.
fn check_split(a: &MlaAttention) {
    let per = a.nope + a.v_dim;
    for h in 0..a.heads {
        let (uk, uv) = (values(&a.uk_t[h]), values(&a.uv[h]));
        for n in 0..a.nope {
            let row = a.kv_b.row_f32(h * per + n);
            for (c, v) in row.iter().enumerate() {
                assert_eq!(
                    uk[c * a.nope + n].to_bits(),
                    v.to_bits(),
                    "uk_t[{h}] ({c}, {n})"
                );
            }
        }
        for r in 0..a.v_dim {
            let row = a.kv_b.row_f32(h * per + a.nope + r);
            assert_eq!(
                uv[r * a.kv_lora..(r + 1) * a.kv_lora],
                row[..],
                "uv[{h}] row {r}"
            );
        }
    }
}

#[test]
fn bf16_heads_stay_bf16_and_multiply_as_f32_copies() {
    let a = first_mla("deepseek-v3-tiny-bf16");
    assert_eq!(a.kv_b.dtype(), DType::BF16);
    assert!(a.uk_t.iter().chain(&a.uv).all(|w| w.dtype() == DType::BF16));
    check_split(&a);
    let x = Tensor::matrix(
        3,
        a.nope,
        (0..3 * a.nope).map(|i| (i as f32 * 0.37).sin()).collect(),
    )
    .unwrap();
    for w in &a.uk_t {
        let copy = Weight::from_f32("copy", vec![w.rows(), w.cols()], &values(w));
        let (got, want) = (linear(&x, w).unwrap(), linear(&x, &copy).unwrap());
        let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{}", w.name());
    }
}

#[test]
fn fp8_heads_inside_scale_blocks_stay_fp8() {
    let a = first_mla("deepseek-v3-tiny-fp8");
    assert_eq!(a.kv_b.dtype(), DType::F8E4M3);
    assert!(a
        .uk_t
        .iter()
        .chain(&a.uv)
        .all(|w| w.dtype() == DType::F8E4M3));
    assert!(a
        .uk_t
        .iter()
        .chain(&a.uv)
        .all(|w| w.block_scales().is_some()));
    check_split(&a);
}

#[test]
fn fp8_heads_across_scale_blocks_are_upcast() {
    // 5 heads of 24 + 20 rows: head 2's W_uv rows 112..132 cross the block edge at 128.
    let a = first_mla("deepseek-v3-odd-fp8");
    assert!(a.uk_t.iter().chain(&a.uv).all(|w| w.dtype() == DType::F32));
    check_split(&a);
}

#[test]
fn int8_value_heads_stay_int8_and_key_heads_are_upcast() {
    let mut g = troupe_engine::graph::LoadedGraph::open(&fixture("deepseek-v3-tiny-bf16")).unwrap();
    g.quantize = Some(troupe_engine::weights::int8::QuantizePolicy {
        keep: vec![],
        ..troupe_engine::weights::int8::QuantizePolicy::int8()
    });
    let model = troupe_engine::model::Model::load(&g, &mut |_, _| {}).unwrap();
    let Some(Attention::Mla(a)) = model.layers.into_iter().next().map(|l| l.attention) else {
        panic!("layer 0 is not MLA");
    };
    assert_eq!(a.kv_b.dtype(), DType::I8);
    assert!(a
        .uv
        .iter()
        .all(|w| w.dtype() == DType::I8 && w.block_scales().is_some()));
    assert!(a.uk_t.iter().all(|w| w.dtype() == DType::F32));
    check_split(&a);
}
