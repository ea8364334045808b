//! A forward pass producing a NaN or an infinity is an error naming the first step where one
//! appeared (the embedding, a decoder layer, the LM head) — on the reference executor and on the
//! actor runtime alike — instead of all-NaN logits and the same token forever.

use std::path::{Path, PathBuf};

use crate::common::*;
use troupe_actors::{ActorRuntime, FaultPlan, RuntimeConfig};
use troupe_engine::error::PassSite;
use troupe_engine::executor::ReferenceExecutor;
use troupe_engine::graph::LoadedGraph;
use troupe_engine::kernels::CpuBackend;
use troupe_engine::model::Model;
use troupe_engine::EngineError;

/// A copy of `case` in a fresh temporary folder (removed on drop).
struct FixtureCopy(PathBuf);

impl FixtureCopy {
    fn new(case: &str, tag: &str) -> FixtureCopy {
        let dir = std::env::temp_dir().join(format!(
            "troupe-nonfinite-{}-{tag}-{}",
            std::process::id(),
            case.replace('/', "_")
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for entry in std::fs::read_dir(fixture(case)).expect("fixture dir") {
            let entry = entry.expect("fixture entry");
            if entry.file_type().expect("file type").is_file() {
                std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy fixture");
            }
        }
        FixtureCopy(dir)
    }
}

impl Drop for FixtureCopy {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Sets element `index` of the f32 tensor `name` in `dir/model.safetensors` to `value`.
fn poke(dir: &Path, name: &str, index: usize, value: f32) {
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).expect("read checkpoint");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let info = &header[name];
    assert_eq!(info["dtype"], "F32", "{name}");
    let start = info["data_offsets"][0].as_u64().expect("offset") as usize;
    let at = 8 + n + start + 4 * index;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(&path, bytes).expect("write checkpoint");
}

fn load_dir(dir: &Path) -> (LoadedGraph, std::sync::Arc<Model>) {
    let g = LoadedGraph::open(dir).expect("open copy");
    let m = Model::load(&g, &mut |_, _| {}).expect("load copy");
    (g, std::sync::Arc::new(m))
}

fn site_of(e: &EngineError) -> PassSite {
    match e {
        EngineError::NonFinite { layer, .. } => *layer,
        other => panic!("expected a non-finite error, got {other}"),
    }
}

/// Both runtimes, generate and logits, fail naming `want` on the poked copy.
fn assert_both_runtimes_fail_at(tensor: &str, index: usize, value: f32, want: PassSite) {
    let copy = FixtureCopy::new("deepseek-v3-tiny", &tensor.replace('.', "_"));
    poke(&copy.0, tensor, index, value);
    let (_g, model) = load_dir(&copy.0);
    let prompt = vec![0u32, 5, 6, 7];
    let reqs = vec![request(prompt.clone(), 3, None)];

    let be = CpuBackend::new();
    let exec = ReferenceExecutor::new(&model, &be);
    let e = troupe_engine::generate::generate(&exec, &reqs).expect_err("reference generate");
    assert_eq!(site_of(&e), want, "reference generate: {e}");
    assert!(e.to_string().contains(&want.to_string()), "{e}");
    let e = exec.logits(&prompt).expect_err("reference logits");
    assert_eq!(site_of(&e), want, "reference logits: {e}");

    let cfg = RuntimeConfig {
        faults: Some(FaultPlan::default()),
        ..Default::default()
    };
    let rt = ActorRuntime::start_with(model, None, None, cfg).expect("start");
    let gen = rt.generate(&reqs);
    let logits = rt.logits(&prompt);
    rt.shutdown().expect("shutdown");
    let e = gen.expect_err("actor generate");
    assert_eq!(
        site_of(e.engine().expect("an engine error")),
        want,
        "actors: {e}"
    );
    let e = logits.expect_err("actor logits");
    assert_eq!(
        site_of(e.engine().expect("an engine error")),
        want,
        "actors: {e}"
    );
}

#[test]
fn a_nan_weight_in_layer_1_attention_names_layer_1_on_both_runtimes() {
    assert_both_runtimes_fail_at(
        "model.layers.1.input_layernorm.weight",
        0,
        f32::NAN,
        PassSite::Layer(1),
    );
}

#[test]
fn an_infinite_weight_in_layer_1_experts_names_layer_1_on_both_runtimes() {
    assert_both_runtimes_fail_at(
        "model.layers.1.mlp.shared_experts.down_proj.weight",
        0,
        f32::INFINITY,
        PassSite::Layer(1),
    );
}

#[test]
fn an_infinite_embedding_or_head_weight_names_that_step() {
    // Row 0 of the embedding is token 0's, the prompt's first token.
    assert_both_runtimes_fail_at(
        "model.embed_tokens.weight",
        3,
        f32::INFINITY,
        PassSite::Embedding,
    );
    assert_both_runtimes_fail_at("lm_head.weight", 0, f32::NEG_INFINITY, PassSite::Head);
}
