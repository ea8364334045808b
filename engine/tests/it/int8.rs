//! int8 weight-only quantisation: the quantiser's error bound, the linear over int8 weights
//! (every instruction-set path, batch size and chunking gives the bits of an f32 linear over
//! the dequantised weight), the policy that picks the weights, the `[quantize]` table, and a
//! model loaded with it.

use std::path::Path;

use troupe_engine::dtype::DType;
use troupe_engine::executor::ReferenceExecutor;
use troupe_engine::graph::spec::ModelSpec;
use troupe_engine::graph::{GraphFile, LoadedGraph, Plan};
use troupe_engine::kernels::isa::Isa;
use troupe_engine::kernels::linear::{linear_many_with, linear_split, LinearJob};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::weights::fp8::dequantize;
use troupe_engine::weights::int8::{quantize_int8, QuantizePolicy, WeightClass};
use troupe_engine::weights::random::SplitMix64;
use troupe_engine::weights::Weight;
use troupe_engine::Tensor;

fn values(rng: &mut SplitMix64, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.next_normal_pair().0 * std) as f32)
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn quantisation_keeps_each_element_within_half_a_step() {
    let mut rng = SplitMix64::new(11);
    let (rows, cols) = (5, 70); // a ragged last block of 6 columns
    let mut v = values(&mut rng, rows * cols, 0.02);
    v[3 * cols..3 * cols + 32].fill(0.0); // an all-zero block
    let w = quantize_int8("w", rows, cols, &v).unwrap();
    assert_eq!(w.dtype(), DType::I8);
    let s = w.block_scales().unwrap();
    assert_eq!(s.block, [1, 32]);
    assert_eq!(s.scale_inv.shape(), &[5, 3]);
    let q = w.as_i8().unwrap();
    let back = dequantize(&w, DType::F32).unwrap();
    let back = back.as_f32().unwrap();
    for r in 0..rows {
        for b in 0..3 {
            let (c0, c1) = (b * 32, ((b + 1) * 32).min(cols));
            let block = &v[r * cols + c0..r * cols + c1];
            let amax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let scale = s.scale(r, c0);
            let qs = &q[r * cols + c0..r * cols + c1];
            if amax == 0.0 {
                assert_eq!(scale, 1.0);
                assert!(qs.iter().all(|&x| x == 0));
                continue;
            }
            assert_eq!(scale, amax / 127.0, "row {r} block {b}");
            // The largest element lands on ±127 and every element within half a step.
            assert_eq!(qs.iter().map(|x| x.unsigned_abs()).max(), Some(127));
            for c in c0..c1 {
                let (a, d) = (v[r * cols + c], back[r * cols + c]);
                assert_eq!(d, q[r * cols + c] as f32 * scale);
                assert!((a - d).abs() <= scale * 0.5001, "({r},{c}): {a} vs {d}");
            }
        }
    }
}

#[test]
fn quantisation_refuses_a_non_finite_value_naming_the_tensor() {
    let mut v = vec![0.5f32; 64];
    v[40] = f32::NAN;
    let e = quantize_int8("layers.3.w", 1, 64, &v)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layers.3.w") && e.contains("32..64"), "{e}");
    v[40] = f32::INFINITY;
    assert!(quantize_int8("w", 1, 64, &v).is_err());
}

/// Every path this processor runs, every batch size and chunking: the bits of the portable f32
/// linear over the dequantised weight (the int8 order is the f32 order on `q · scale`).
#[test]
fn int8_linear_gives_the_bits_of_the_f32_linear_over_its_dequantised_weight() {
    let mut rng = SplitMix64::new(5);
    // k = 1024: the SIMD main loops and their prefetch; k = 100: ragged 16- and 32-blocks;
    // 37 rows: a last group of fewer than four. From 8 x rows on, AVX2 widens int8 rows to
    // f32 panels (`panel_gemm`): 9, 20 and 50 rows (two row blocks) take them.
    for (rows, k) in [(37, 100), (38, 1024), (9, 16), (6, 40)] {
        let w = quantize_int8("w", rows, k, &values(&mut rng, rows * k, 0.05)).unwrap();
        let f = dequantize(&w, DType::F32).unwrap();
        for n in [1, 2, 3, 5, 9, 20, 50] {
            let x = Tensor::matrix(n, k, values(&mut rng, n * k, 1.0)).unwrap();
            let want = linear_split(&x, &f, Isa::Portable, None).unwrap();
            for isa in Isa::available() {
                for per in [None, Some(1), Some(7)] {
                    let got = linear_split(&x, &w, isa, per).unwrap();
                    assert_eq!(
                        bits(got.data()),
                        bits(want.data()),
                        "{rows}x{k}, {n} rows, {isa}, {per:?} columns per task"
                    );
                }
            }
        }
    }
}

#[test]
fn int8_products_share_a_region_with_bf16_ones() {
    let mut rng = SplitMix64::new(9);
    let k = 64;
    let x = Tensor::matrix(1, k, values(&mut rng, k, 1.0)).unwrap();
    let q = quantize_int8("q", 12, k, &values(&mut rng, 12 * k, 0.05)).unwrap();
    let b: Vec<u16> = values(&mut rng, 20 * k, 0.05)
        .iter()
        .map(|&v| troupe_engine::dtype::f32_to_bf16(v))
        .collect();
    let b = Weight::from_u16("b", DType::BF16, vec![20, k], &b);
    for isa in Isa::available() {
        let (mut oq, mut ob) = (vec![0.0; 12], vec![0.0; 20]);
        linear_many_with(
            &mut [
                LinearJob {
                    x: &x,
                    w: &q,
                    out: &mut oq,
                },
                LinearJob {
                    x: &x,
                    w: &b,
                    out: &mut ob,
                },
            ],
            isa,
            Some(3),
        )
        .unwrap();
        assert_eq!(
            bits(&oq),
            bits(linear_split(&x, &q, isa, None).unwrap().data())
        );
        assert_eq!(
            bits(&ob),
            bits(linear_split(&x, &b, isa, None).unwrap().data())
        );
    }
}

fn spec(toml_model: &str) -> ModelSpec {
    let text = format!("format = 1\n{toml_model}\n[weights]\nrandom = {{ seed = 1 }}\n");
    GraphFile::parse(&text, Path::new("t.toml")).unwrap().model
}

const TINY: &str = r#"
[model]
architecture = "deepseek-v3"
vocab_size = 64
hidden_size = 32
num_hidden_layers = 3
num_attention_heads = 2
intermediate_size = 48
rms_norm_eps = 1e-6
max_position_embeddings = 64
dtype = "bf16"
[model.attention]
kind = "mla"
q_lora_rank = 16
kv_lora_rank = 32
qk_nope_head_dim = 16
qk_rope_head_dim = 8
v_head_dim = 16
[model.rope]
theta = 10000.0
layout = "interleaved"
[model.moe]
n_routed_experts = 4
num_experts_per_tok = 2
moe_intermediate_size = 32
n_shared_experts = 1
first_k_dense_replace = 1
scoring = "sigmoid"
topk_method = "noaux_tc"
norm_topk_prob = true
routed_scaling_factor = 2.5
"#;

#[test]
fn the_policy_picks_matrices_by_class_and_layer() {
    let plan = Plan::compile(&spec(TINY));
    let default = QuantizePolicy::int8().weight_names(&plan);
    let has = |set: &std::collections::HashSet<String>, n: &str| set.contains(n);
    assert!(has(&default, "model.layers.0.mlp.gate_proj.weight"));
    assert!(has(
        &default,
        "model.layers.1.mlp.experts.3.down_proj.weight"
    ));
    assert!(has(
        &default,
        "model.layers.2.mlp.shared_experts.up_proj.weight"
    ));
    assert!(!has(&default, "model.layers.1.self_attn.kv_b_proj.weight"));
    assert!(
        !has(&default, "model.layers.1.mlp.gate.weight"),
        "router gate"
    );
    assert!(has(&default, "lm_head.weight"));
    assert!(!default
        .iter()
        .any(|n| n.contains("norm") || n.contains("embed")));
    let all = QuantizePolicy {
        keep: vec![],
        ..QuantizePolicy::int8()
    }
    .weight_names(&plan);
    assert!(has(&all, "model.layers.1.self_attn.kv_b_proj.weight"));
    assert!(!all.iter().any(|n| n.contains("correction_bias")));
    let some = QuantizePolicy {
        keep: vec![WeightClass::SharedExperts, WeightClass::Head],
        keep_layers: vec![0],
        ..QuantizePolicy::int8()
    }
    .weight_names(&plan);
    assert!(!has(&some, "model.layers.0.mlp.gate_proj.weight"));
    assert!(!has(
        &some,
        "model.layers.2.mlp.shared_experts.up_proj.weight"
    ));
    assert!(!has(&some, "lm_head.weight"));
    assert!(has(&some, "model.layers.2.mlp.experts.0.gate_proj.weight"));
}

#[test]
fn a_quantize_table_is_read_and_its_mistakes_named() {
    let parse = |table: &str| {
        let text = format!("format = 1\n{TINY}\n[weights]\nrandom = {{ seed = 1 }}\n{table}");
        GraphFile::parse(&text, Path::new("g.toml"))
    };
    let g = parse("[quantize]\nformat = \"int8\"\nkeep = [\"head\"]\nkeep_layers = [2]\n").unwrap();
    let q = g.quantize.unwrap();
    assert_eq!(q.keep, vec![WeightClass::Head]);
    assert_eq!(q.keep_layers, vec![2]);
    let q = parse("[quantize]\nformat = \"int8\"\n")
        .unwrap()
        .quantize
        .unwrap();
    assert_eq!(
        q.keep,
        vec![WeightClass::Attention],
        "attention is kept by default"
    );
    for (table, needle) in [
        ("[quantize]\nformat = \"int4\"\n", "int4"),
        (
            "[quantize]\nformat = \"int8\"\nkeep = [\"experts\"]\n",
            "experts",
        ),
        (
            "[quantize]\nformat = \"int8\"\nkeep_layers = [3]\n",
            "layer 3",
        ),
        ("[quantize]\nformat = \"int8\"\nblock = 64\n", "block"),
    ] {
        let e = parse(table).unwrap_err().to_string();
        assert!(e.contains("g.toml") && e.contains(needle), "{table}: {e}");
    }
}

#[test]
fn a_model_loads_with_its_policy_quantised_and_runs() {
    let text = format!("format = 1\n{TINY}\n[weights]\nrandom = {{ seed = 3 }}\n");
    let dir = std::env::temp_dir().join(format!("troupe-int8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("g.toml");
    std::fs::write(&path, &text).unwrap();
    let mut graph = LoadedGraph::open(&path).unwrap();
    let plain = troupe_engine::model::Model::load(&graph, &mut |_, _| {}).unwrap();
    graph.quantize = Some(QuantizePolicy::int8());
    let model = troupe_engine::model::Model::load(&graph, &mut |_, _| {}).unwrap();
    let ids = [1u32, 5, 9, 2];
    let be = CpuBackend::new();
    let a = ReferenceExecutor::new(&plain, &be).logits(&ids).unwrap();
    let b = ReferenceExecutor::new(&model, &be).logits(&ids).unwrap();
    assert!(b.data().iter().all(|v| v.is_finite()));
    assert_ne!(
        bits(a.data()),
        bits(b.data()),
        "the int8 model is a different model"
    );
    // Small random weights quantise finely: the logits stay close.
    let worst = a
        .data()
        .iter()
        .zip(b.data())
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    let scale = a.data().iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(
        worst <= 0.05 * scale,
        "worst |Δ| {worst} of logits up to {scale}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
