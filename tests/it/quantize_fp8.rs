//! `troupe quantize --fp8`: it reproduces the committed FP8 fixture byte for byte (so the
//! fixture is the tool's output), shards with an index when asked (same bits as one file), writes
//! a graph file's DeepSeek model as an HF folder whose config imports back to the same spec, and
//! `--dequantize bf16` / `troupe inspect` on the result.

use crate::common::*;
use troupe::engine::dtype::DType;
use troupe::engine::executor::ReferenceExecutor;
use troupe::engine::graph::LoadedGraph;
use troupe::engine::kernels::CpuBackend;

fn logits_of(path: &std::path::Path, ids: &[u32]) -> Vec<u32> {
    let model = load_model(path);
    ReferenceExecutor::new(&model, &CpuBackend::new())
        .logits(ids)
        .unwrap()
        .into_vec()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn quantize(model: &str, out: &std::path::Path, extra: &[&str]) {
    let mut args = vec![
        "quantize",
        "--fp8",
        "-m",
        model,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let (code, stdout, stderr) = troupe(&args);
    assert_eq!(code, 0, "quantize {model}: {stderr}");
    assert!(stdout.contains("FP8 weights"), "{stdout}");
}

#[test]
fn quantize_reproduces_the_fixture_and_shards_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    let src = case_dir("extra/deepseek-v3-odd");
    quantize(src.to_str().unwrap(), &one, &[]);
    let fixture = case_dir("deepseek-v3-odd-fp8");
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(
            std::fs::read(one.join(f)).unwrap() == std::fs::read(fixture.join(f)).unwrap(),
            "{f} differs from the committed fixture"
        );
    }
    let sharded = dir.path().join("sharded");
    quantize(
        src.to_str().unwrap(),
        &sharded,
        &["--max-shard-bytes", "100000"],
    );
    assert!(sharded.join("model.safetensors.index.json").is_file());
    assert!(!sharded.join("model.safetensors").exists());
    let ids = [0u32, 7, 300, 5, 999];
    assert!(logits_of(&one, &ids) == logits_of(&sharded, &ids));
    // Refuses to overwrite a model.
    let (code, _, stderr) = troupe(&[
        "quantize",
        "--fp8",
        "-m",
        src.to_str().unwrap(),
        "--out",
        one.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("already holds a model"), "{stderr}");
}

#[test]
fn a_graph_file_becomes_an_fp8_folder_with_the_same_spec() {
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("g.toml");
    std::fs::write(
        &graph,
        r#"format = 1
[model]
architecture = "deepseek-v3"
vocab_size = 300
hidden_size = 136
num_hidden_layers = 2
num_attention_heads = 2
intermediate_size = 200
rms_norm_eps = 1e-6
max_position_embeddings = 256
dtype = "bf16"
bos_token_id = 0
eos_token_id = 1
[model.attention]
kind = "mla"
q_lora_rank = 40
kv_lora_rank = 24
qk_nope_head_dim = 16
qk_rope_head_dim = 8
v_head_dim = 16
[model.rope]
theta = 10000.0
layout = "interleaved"
[model.moe]
n_routed_experts = 4
num_experts_per_tok = 2
moe_intermediate_size = 24
n_shared_experts = 1
first_k_dense_replace = 1
n_group = 2
topk_group = 1
scoring = "sigmoid"
topk_method = "noaux_tc"
norm_topk_prob = true
routed_scaling_factor = 2.5
[weights]
random = { seed = 3, std = 0.05 }
"#,
    )
    .unwrap();
    let out = dir.path().join("fp8");
    quantize(graph.to_str().unwrap(), &out, &[]);
    let want = LoadedGraph::open(&graph).unwrap().spec;
    let got = LoadedGraph::open(&out).unwrap().spec;
    assert_eq!(got.dtype, DType::F8E4M3);
    assert_eq!(
        troupe::engine::graph::spec::ModelSpec {
            dtype: want.dtype,
            ..got
        },
        want
    );

    let (code, stdout, stderr) = troupe(&["inspect", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("at f8e4m3") && stdout.contains("FP8 e4m3"),
        "{stdout}"
    );

    // --dequantize bf16 runs it with bf16 weights; a non-FP8 model refuses the flag.
    let (code, _, stderr) = troupe(&[
        "logits",
        "-m",
        out.to_str().unwrap(),
        "--prompt-ids",
        "0,5,9",
        "--dequantize",
        "bf16",
        "--out",
        dir.path().join("l.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = troupe(&[
        "logits",
        "-m",
        graph.to_str().unwrap(),
        "--prompt-ids",
        "0,5",
        "--dequantize",
        "bf16",
        "--out",
        dir.path().join("m.safetensors").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is not an FP8 model"), "{stderr}");
}
