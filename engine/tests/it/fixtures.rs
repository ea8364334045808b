//! The one way to the shared fixtures (`tests/fixtures/` at the workspace root, which the root
//! crate's tests read too), and readers of a case's `reference.safetensors` built on the
//! engine's own checkpoint loader and conversions.

use std::path::{Path, PathBuf};

use troupe_engine::graph::spec::ModelSpec;
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::Model;
use troupe_engine::weights::Checkpoint;

pub const CASES: [&str; 5] = [
    "deepseek-v3-tiny",
    "deepseek-v3-tiny-bf16",
    "deepseek-v2-lite-tiny",
    "mixtral-tiny",
    "llama-tiny",
];

/// `<rel>` under the workspace root (the one place test paths are built).
pub fn workspace_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// `tests/fixtures/<rel>` of the workspace.
pub fn fixture(rel: &str) -> PathBuf {
    workspace_file("tests/fixtures").join(rel)
}

/// Loads the model of a graph file or HF folder.
pub fn load_model(path: &Path) -> Model {
    let g = LoadedGraph::open(path).expect("open model");
    Model::load(&g, &mut |_, _| {}).expect("load model")
}

/// The spec of a fixture case (its config.json, imported).
pub fn case_spec(case: &str) -> ModelSpec {
    LoadedGraph::open(&fixture(case)).expect("open case").spec
}

/// The arrays of one case's `reference.safetensors`.
pub struct Reference {
    /// f32 arrays, through the engine's checkpoint loader.
    arrays: Checkpoint,
    /// The raw file, for the i64 arrays the engine does not load.
    bytes: Vec<u8>,
    pub json: serde_json::Value,
}

impl Reference {
    pub fn open(case: &str) -> Reference {
        let dir = fixture(case);
        let file = dir.join("reference.safetensors");
        let arrays = Checkpoint::open_files(&[file.clone()]).expect("reference.safetensors");
        let bytes = std::fs::read(&file).expect("reference.safetensors");
        let json = serde_json::from_str(
            &std::fs::read_to_string(dir.join("reference.json")).expect("reference.json"),
        )
        .expect("json");
        Reference {
            arrays,
            bytes,
            json,
        }
    }
    /// (shape, values) of an F32 tensor.
    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let w = self
            .arrays
            .get(name)
            .unwrap_or_else(|e| panic!("reference tensor {name}: {e}"));
        (w.shape().to_vec(), w.to_f32_vec())
    }
    /// Values of an I64 tensor.
    pub fn i64(&self, name: &str) -> Vec<i64> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).expect("reference header");
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference tensor {name}"));
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    }
    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.i64(name).into_iter().map(|x| x as u32).collect()
    }
    pub fn n_prompts(&self) -> usize {
        self.json["prompts"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0)
    }
    pub fn hidden_prompt(&self) -> usize {
        self.json["hidden_states"]["prompt_index"]
            .as_u64()
            .expect("hidden_states.prompt_index") as usize
    }
}

pub fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// A scratch copy of a fixture folder (config, checkpoint, tokenizer) to break on purpose.
pub fn scratch_copy(case: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(fixture(case)).expect("case dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
    }
    dir
}

/// A sparse file of `len` bytes (zeros) in `dir`, to exceed a size cap without writing it.
pub fn sparse_file(dir: &Path, name: &str, len: u64) -> PathBuf {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).expect("create");
    f.set_len(len).expect("set_len");
    path
}
