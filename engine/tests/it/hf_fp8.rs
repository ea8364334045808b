//! FP8 block-scaled checkpoints (made by `troupe quantize --fp8` from deepseek-v3-tiny and from
//! extra/deepseek-v3-odd, whose dimensions are not multiples of 128) against transformers run in
//! f32 on the dequantised weights (tests/tools/make_fp8_cases.py): logits ≤ 2e-4·max, greedy
//! tokens exact — with the weights kept FP8 in memory. Plus what loading FP8 checks: the block
//! scales' dtype and shape, an F8_E5M2 tensor, and `quantization_config`.

use std::path::Path;

use serde_json::{json, Value};
use troupe_engine::dtype::DType;
use troupe_engine::executor::ReferenceExecutor;
use troupe_engine::generate::{generate, GenerateRequest};
use troupe_engine::graph::LoadedGraph;
use troupe_engine::kernels::CpuBackend;
use troupe_engine::model::{FeedForward, Model};
use troupe_engine::sampling::SamplingParams;
use troupe_engine::EngineError;

use crate::checkpoint_errors::{join, split};
use crate::fixtures::*;

fn check(case: &str, new_tokens: usize) {
    let model = load_model(&fixture(case));
    // The linear weights stay FP8 (1 byte each), the embeddings do not.
    let FeedForward::Moe(moe) = &model.layers[1].ffn else {
        panic!("layer 1 is MoE")
    };
    assert_eq!(moe.experts[0].up.dtype(), DType::F8E4M3);
    assert!(moe.experts[0].up.block_scales().is_some());
    assert_eq!(model.embed.dtype(), DType::F32);
    assert_eq!(moe.router.gate.dtype(), DType::F32);
    let be = CpuBackend::new();
    let exec = ReferenceExecutor::new(&model, &be);
    let r = Reference::open(case);
    let mut reqs = Vec::new();
    for p in 0..r.n_prompts() {
        let ids = r.ids(&format!("prompt.{p}.input_ids"));
        let (_, want) = r.f32(&format!("prompt.{p}.logits"));
        let got = exec.logits(&ids).unwrap();
        let d = max_abs_diff(got.data(), &want);
        let tol = 2e-4 * max_abs(&want);
        eprintln!("{case} prompt {p}: logits max|Δ| = {d:.3e} (tol {tol:.3e})");
        assert!(d <= tol, "{case} prompt {p}: logits {d} > {tol}");
        reqs.push(GenerateRequest {
            prompt: ids,
            max_new_tokens: new_tokens,
            sampling: SamplingParams::default(),
            stop_token: None,
            stop_at_eos: false,
            keep_logits: true,
        });
    }
    for (p, out) in generate(&exec, &reqs).unwrap().iter().enumerate() {
        let want = r.ids(&format!("prompt.{p}.generated_ids"));
        assert_eq!(out.generated, want, "{case} prompt {p}: greedy tokens");
        let (_, sl) = r.f32(&format!("prompt.{p}.step_logits"));
        let d = max_abs_diff(&out.step_logits.concat(), &sl);
        eprintln!("{case} prompt {p}: step logits max|Δ| = {d:.3e}");
        assert!(
            d <= 2e-4 * max_abs(&sl),
            "{case} prompt {p}: step logits {d}"
        );
    }
}

#[test]
fn deepseek_v3_tiny_fp8_matches_hf() {
    check("deepseek-v3-tiny-fp8", 16)
}

#[test]
fn deepseek_v3_odd_fp8_matches_hf() {
    check("deepseek-v3-odd-fp8", 32)
}

fn load(dir: &Path) -> Result<Model, EngineError> {
    Model::load(&LoadedGraph::open(dir)?, &mut |_, _| {})
}

const W: &str = "model.layers.0.mlp.down_proj.weight";

#[test]
fn scale_grids_are_checked_by_name() {
    let dir = scratch_copy("deepseek-v3-odd-fp8");
    let st = dir.path().join("model.safetensors");
    let (header, data) = split(&st);
    // down_proj of the dense layer is [200, 328]: the grid must be [2, 3].
    let scale = format!("{W}_scale_inv");
    assert_eq!(header[&scale]["shape"], json!([2, 3]));

    let mut h = header.clone();
    h[&scale]["shape"] = json!([3, 2]);
    join(&st, &h, &data);
    match load(dir.path()) {
        Err(EngineError::ShapeMismatch {
            tensor,
            expected,
            found,
        }) => assert_eq!(
            (tensor, expected, found),
            (scale.clone(), vec![2, 3], vec![3, 2])
        ),
        other => panic!("{:?}", other.err()),
    }

    let mut h = header.clone();
    h.remove(&scale);
    join(&st, &h, &data);
    let e = load(dir.path()).err().expect("a missing scale grid fails");
    assert!(
        matches!(&e, EngineError::MissingTensor { tensor, .. } if *tensor == scale),
        "{e}"
    );
    assert!(e.to_string().contains(W), "{e}");

    // An F8_E5M2 weight is refused by name; bytes are reinterpreted, the size is the same.
    let mut h = header.clone();
    h[W]["dtype"] = json!("F8_E5M2");
    join(&st, &h, &data);
    let e = load(dir.path()).err().expect("e5m2 is refused");
    assert!(
        matches!(&e, EngineError::UnsupportedDtype { tensor, .. } if tensor == W),
        "{e}"
    );
    assert!(e.to_string().contains("F8_E5M2"), "{e}");
}

#[test]
fn quantization_config_other_than_deepseek_fp8_is_refused_by_key() {
    let dir = scratch_copy("deepseek-v3-odd-fp8");
    let cfg_path = dir.path().join("config.json");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    for (key, value, named) in [
        (
            "quant_method",
            json!("gptq"),
            "quantization_config.quant_method",
        ),
        ("fmt", json!("e5m2"), "quantization_config.fmt"),
        (
            "weight_block_size",
            json!([64, 64]),
            "quantization_config.weight_block_size",
        ),
    ] {
        let mut c = cfg.clone();
        c["quantization_config"][key] = value;
        std::fs::write(&cfg_path, c.to_string()).unwrap();
        let e = LoadedGraph::open(dir.path()).err().expect("refused");
        assert!(e.to_string().contains(named), "{key}: {e}");
    }
    // With a plain config (no quantization_config) the FP8 tensors are dequantised at load.
    let mut c = cfg.clone();
    c.as_object_mut().unwrap().remove("quantization_config");
    std::fs::write(&cfg_path, c.to_string()).unwrap();
    let g = LoadedGraph::open(dir.path()).unwrap();
    assert_eq!(g.spec.dtype, DType::F32);
    let m = Model::load(&g, &mut |_, _| {}).unwrap();
    let FeedForward::Dense(mlp) = &m.layers[0].ffn else {
        panic!("layer 0 is dense")
    };
    assert_eq!(mlp.down.dtype(), DType::F32);
}
