//! The inputs the fuzz cases start from: "micro" copies of the bundled HF fixtures (each
//! fixture's own config.json with every size shrunk, a checkpoint of the tensors its plan reads,
//! its tokenizer) so a mutated model loads and runs in milliseconds, graph files over them (one
//! with a short supervision deadline for fault runs, one with random weights), and the bundled
//! `graphs/*.toml` for the cases that only parse and estimate.

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use troupe::engine::dtype::DType;
use troupe::engine::graph::ir::WeightRole;
use troupe::engine::graph::{LoadedGraph, Plan};
use troupe::engine::weights::random::{random_weight, RandomInit};

use crate::common::{case_dir, repo_path};

/// The fixtures the micro models are made from.
pub const MICRO: [&str; 4] = [
    "deepseek-v3-tiny",
    "deepseek-v2-lite-tiny",
    "mixtral-tiny",
    "llama-tiny",
];

/// Where the seeds were written.
pub struct Seeds {
    pub root: PathBuf,
}

impl Seeds {
    /// The micro HF folder made from `fixture`.
    pub fn micro(&self, fixture: &str) -> PathBuf {
        self.root.join(format!("micro-{fixture}"))
    }
    /// A graph file over micro-deepseek-v3 with a 400 ms supervision deadline (fault runs).
    pub fn graph(&self) -> PathBuf {
        self.root.join("micro.toml")
    }
    /// A graph file with seeded random weights of micro size.
    pub fn random_graph(&self) -> PathBuf {
        self.root.join("micro-random.toml")
    }
    /// The graph-file seeds: the two micro ones, and with `bundled` the `graphs/*.toml`.
    pub fn graph_files(&self, bundled: bool) -> Vec<PathBuf> {
        let mut v = vec![self.graph(), self.random_graph()];
        if bundled {
            v.push(repo_path("graphs/ds-v3-mini.toml"));
            v.push(repo_path("graphs/deepseek-v3-671b.toml"));
        }
        v
    }
    /// Writes every seed under `root` (idempotent).
    pub fn build(root: &Path) -> Seeds {
        let seeds = Seeds {
            root: root.to_path_buf(),
        };
        if root.join("done").exists() {
            return seeds;
        }
        std::fs::create_dir_all(root).expect("seed dir");
        for fixture in MICRO {
            write_micro(fixture, &seeds.micro(fixture));
        }
        let micro_v3 = LoadedGraph::open(&seeds.micro("deepseek-v3-tiny")).expect("micro v3");
        let mut g = micro_v3.to_graph_file();
        g.weights.hf = Some(PathBuf::from("micro-deepseek-v3-tiny"));
        g.tokenizer = Some(troupe::engine::graph::file::TokenizerTable {
            path: PathBuf::from("micro-deepseek-v3-tiny/tokenizer.json"),
        });
        g.placement = Some(
            toml::from_str(
                "streams = 2\nstages = 1\n[supervision]\nmax_restarts = 3\nwindow_ms = 10000\ndeadline_ms = 400\n",
            )
            .expect("placement"),
        );
        std::fs::write(seeds.graph(), g.to_toml()).expect("micro.toml");
        g.weights.hf = None;
        g.weights.random = Some(troupe::engine::graph::file::RandomWeights { seed: 5, std: 0.1 });
        g.placement = None;
        std::fs::write(seeds.random_graph(), g.to_toml()).expect("micro-random.toml");
        std::fs::write(root.join("done"), "").expect("done");
        seeds
    }
}

/// Shrinks every size in a fixture's config.json (keys it lacks stay absent).
fn shrink(config: &mut Value) {
    let sizes = [
        ("hidden_size", json!(32)),
        ("intermediate_size", json!(48)),
        ("moe_intermediate_size", json!(16)),
        ("num_hidden_layers", json!(2)),
        ("num_attention_heads", json!(2)),
        ("num_key_value_heads", json!(1)),
        ("head_dim", json!(16)),
        ("n_routed_experts", json!(4)),
        ("num_local_experts", json!(4)),
        ("num_experts_per_tok", json!(2)),
        ("n_group", json!(2)),
        ("topk_group", json!(1)),
        ("first_k_dense_replace", json!(1)),
        ("q_lora_rank", json!(16)),
        ("kv_lora_rank", json!(16)),
        ("qk_nope_head_dim", json!(8)),
        ("qk_rope_head_dim", json!(8)),
        ("qk_head_dim", json!(16)),
        ("v_head_dim", json!(8)),
        ("max_position_embeddings", json!(64)),
    ];
    let Some(m) = config.as_object_mut() else {
        return;
    };
    for (k, v) in sizes {
        if m.get(k).is_some_and(|old| !old.is_null()) {
            m.insert(k.to_string(), v);
        }
    }
    // DeepSeek's `head_dim` is the rope width; GQA families get an explicit 16.
    let deepseek = m.contains_key("kv_lora_rank");
    m.insert("head_dim".into(), json!(if deepseek { 8 } else { 16 }));
}

/// A micro HF folder: shrunk config.json, a checkpoint of its plan's tensors, the tokenizer.
fn write_micro(fixture: &str, dir: &Path) {
    let src = case_dir(fixture);
    std::fs::create_dir_all(dir).expect("micro dir");
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).expect("config"))
            .expect("config json");
    shrink(&mut config);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).expect("json"),
    )
    .expect("write config");
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).expect("tokenizer");
    let g = LoadedGraph::open(dir).unwrap_or_else(|e| panic!("micro {fixture}: {e}"));
    let plan = Plan::compile(&g.spec);
    let weights: Vec<(String, Vec<usize>, Vec<u8>)> = plan
        .weight_specs()
        .into_iter()
        .map(|s| {
            let init = match s.role {
                WeightRole::Matrix => RandomInit::Normal(0.2),
                WeightRole::NormGain => RandomInit::Ones,
                WeightRole::Bias => RandomInit::Zeros,
            };
            let w = random_weight(&s.name, s.shape.clone(), DType::F32, init, 11)
                .unwrap_or_else(|e| panic!("micro {fixture}: {e}"));
            (s.name.clone(), s.shape.clone(), w.bytes().to_vec())
        })
        .collect();
    let views: Vec<(String, TensorView)> = weights
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))
        .expect("micro checkpoint");
}
