//! `troupe export-hf`: a graph's model written as an HF folder runs back (from mmap) to exactly
//! the graph's logits, for random bf16 weights and for the bundled checkpoints of the other
//! families; its config carries V3's routing keys; its tokenizer has exactly `vocab_size` ids and
//! round-trips text; every tensor of its safetensors file is aligned for its dtype (so loading maps
//! it rather than copying); a vocabulary too small for the tokenizer is one clear error.

use std::path::Path;

use serde_json::Value;
use troupe::engine::executor::ReferenceExecutor;
use troupe::engine::graph::file::RandomWeights;
use troupe::engine::graph::LoadedGraph;
use troupe::engine::kernels::CpuBackend;
use troupe::engine::tokenizer::TextTokenizer;

use crate::common::*;

fn logits_of(path: &Path, ids: &[u32]) -> Vec<f32> {
    let model = load_model(path);
    ReferenceExecutor::new(&model, &CpuBackend::new())
        .logits(ids)
        .unwrap()
        .into_vec()
}

fn export(model: &Path, out: &Path) {
    let (code, stdout, stderr) = troupe(&[
        "export-hf",
        "-m",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "export-hf failed: {stderr}");
    assert!(stdout.contains("wrote"), "{stdout}");
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A random-weight bf16 graph with deepseek-v3-tiny's shape (vocab 1024, bos 0, eos 1).
fn random_v3_graph(dir: &Path) -> std::path::PathBuf {
    let cfg = LoadedGraph::open(&case_dir("deepseek-v3-tiny")).unwrap();
    let mut g = cfg.to_graph_file();
    g.model.dtype = troupe::engine::dtype::DType::BF16;
    g.weights.hf = None;
    g.weights.random = Some(RandomWeights { seed: 11, std: 0.1 });
    g.tokenizer = None;
    let f = dir.join("v3-random.toml");
    std::fs::write(&f, g.to_toml()).unwrap();
    f
}

/// Every tensor of a safetensors file starts at an offset aligned for its element size.
fn assert_aligned(file: &Path) {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "header length {n} keeps the data 8-byte aligned");
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    for (name, t) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let size = match t["dtype"].as_str().unwrap() {
            "F32" => 4,
            "BF16" | "F16" => 2,
            other => panic!("{name}: unexpected dtype {other}"),
        };
        let start = t["data_offsets"][0].as_u64().unwrap() as usize;
        assert_eq!((8 + n + start) % size, 0, "{name} is misaligned");
    }
}

#[test]
fn random_bf16_graph_exports_and_runs_back_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let graph = random_v3_graph(tmp.path());
    let out = tmp.path().join("hf");
    export(&graph, &out);

    let ids = [0u32, 17, 300, 5, 999, 42, 1];
    let from_graph = logits_of(&graph, &ids);
    let from_folder = logits_of(&out, &ids);
    assert_eq!(from_graph.len(), ids.len() * 1024);
    assert!(from_graph.iter().all(|x| x.is_finite()));
    assert_eq!(
        from_graph, from_folder,
        "logits differ after the HF round trip"
    );
    assert_aligned(&out.join("model.safetensors"));

    let config = read_json(&out.join("config.json"));
    assert_eq!(config["architectures"][0], "DeepseekV3ForCausalLM");
    assert_eq!(config["scoring_func"], "sigmoid");
    assert_eq!(config["topk_method"], "noaux_tc");
    assert_eq!(config["torch_dtype"], "bfloat16");
    // The folder reads back as the same spec.
    let back = LoadedGraph::open(&out).unwrap();
    assert_eq!(back.spec, LoadedGraph::open(&graph).unwrap().spec);

    // The tokenizer: exactly vocab_size distinct ids, specials at BOS/EOS, text round trip.
    let tok = read_json(&out.join("tokenizer.json"));
    let vocab = tok["model"]["vocab"].as_object().unwrap();
    let mut ids_seen: Vec<u64> = vocab.values().map(|v| v.as_u64().unwrap()).collect();
    ids_seen.sort_unstable();
    ids_seen.dedup();
    assert_eq!(ids_seen, (0..1024).collect::<Vec<u64>>());
    assert_eq!(vocab["<|bos|>"], 0);
    assert_eq!(vocab["<|eos|>"], 1);
    let t = TextTokenizer::open(&out.join("tokenizer.json")).unwrap();
    let text = "Hello world, 3.14 — déjà vu!\n\tend";
    let encoded = t.encode(text).unwrap();
    assert!(encoded.iter().all(|&i| (2..1024).contains(&i)));
    assert!(encoded.len() < text.len(), "byte pairs merge: {encoded:?}");
    assert_eq!(t.decode(&encoded).unwrap(), text);
}

#[test]
fn checkpoints_of_other_families_export_and_run_back_identically() {
    for case in ["deepseek-v2-lite-tiny", "mixtral-tiny", "llama-tiny"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("hf");
        export(&case_dir(case), &out);
        let ids = [0u32, 9, 100, 7];
        assert_eq!(
            logits_of(&case_dir(case), &ids),
            logits_of(&out, &ids),
            "{case}: logits differ after the HF round trip"
        );
        assert_eq!(
            LoadedGraph::open(&out).unwrap().spec,
            LoadedGraph::open(&case_dir(case)).unwrap().spec,
            "{case}"
        );
        assert_aligned(&out.join("model.safetensors"));
    }
}

#[test]
fn too_small_vocabulary_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = LoadedGraph::open(&case_dir("llama-tiny")).unwrap();
    let mut g = cfg.to_graph_file();
    g.model.vocab_size = 100;
    g.weights.hf = None;
    g.weights.random = Some(RandomWeights { seed: 1, std: 0.02 });
    g.tokenizer = None;
    let f = tmp.path().join("small.toml");
    std::fs::write(&f, g.to_toml()).unwrap();
    let out = tmp.path().join("hf");
    let (code, _, stderr) = troupe(&[
        "export-hf",
        "-m",
        f.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("vocab_size 100"), "{stderr}");
    assert!(
        !out.exists(),
        "nothing is written when the export is refused"
    );
}
