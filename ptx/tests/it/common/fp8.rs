//! Small FP8 DeepSeek-V3 models for the GPU tests: a graph file with `dtype = "f8e4m3"` and
//! seeded random weights (linear weights of attention, dense MLP and experts FP8 with 128×128
//! block scales, the rest bf16, as the engine's loader makes them), of a chosen hidden size —
//! 200 puts partial scale blocks on every edge, 256 gives linears with `k % 128 == 0` (the W8A8
//! path) next to ones without.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::Model;

/// The graph text of the FP8 test model of hidden size `hidden`.
fn graph_text(hidden: usize) -> String {
    format!(
        r#"# FP8 test model (troupe-ptx tests)
format = 1

[model]
architecture = "deepseek-v3"
vocab_size = 300
hidden_size = {hidden}
num_hidden_layers = 2
num_attention_heads = 2
intermediate_size = 264
rms_norm_eps = 1e-6
max_position_embeddings = 64
dtype = "f8e4m3"
bos_token_id = 0
eos_token_id = 1

[model.attention]
kind = "mla"
q_lora_rank = 136
kv_lora_rank = 72
qk_nope_head_dim = 32
qk_rope_head_dim = 16
v_head_dim = 32

[model.rope]
theta = 10000.0
layout = "interleaved"

[model.moe]
n_routed_experts = 8
num_experts_per_tok = 2
moe_intermediate_size = 40
n_shared_experts = 1
first_k_dense_replace = 1
n_group = 2
topk_group = 1
scoring = "sigmoid"
topk_method = "noaux_tc"
norm_topk_prob = true
routed_scaling_factor = 2.5

[weights]
random = {{ seed = 17, std = 0.08 }}
"#
    )
}

/// The FP8 test model of hidden size `hidden` (its graph file written under the target dir).
pub fn fp8_model(hidden: usize) -> Model {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(
        "fp8-test-model-{hidden}-{}-{n}.toml",
        std::process::id()
    ));
    std::fs::write(&path, graph_text(hidden)).expect("write the graph file");
    let graph = LoadedGraph::open(&path).expect("FP8 test graph");
    let model = Model::load(&graph, &mut |_, _| {}).expect("FP8 test model");
    let _ = std::fs::remove_file(&path);
    model
}
