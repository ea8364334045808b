//! Shared helpers for the fixture tests: locating the bundled HF reference cases and reading
//! their `reference.safetensors`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::tensor::{Dtype, SafeTensors};
use troupe::engine::graph::LoadedGraph;
use troupe::engine::model::Model;

pub const CASES: [&str; 5] = [
    "deepseek-v3-tiny",
    "deepseek-v3-tiny-bf16",
    "deepseek-v2-lite-tiny",
    "mixtral-tiny",
    "llama-tiny",
];

pub fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(case)
}

/// The arrays of one case's `reference.safetensors`.
pub struct Reference {
    bytes: Vec<u8>,
    pub json: serde_json::Value,
}

impl Reference {
    pub fn open(case: &str) -> Reference {
        let dir = case_dir(case);
        let bytes =
            std::fs::read(dir.join("reference.safetensors")).expect("reference.safetensors");
        let json = serde_json::from_str(
            &std::fs::read_to_string(dir.join("reference.json")).expect("reference.json"),
        )
        .expect("json");
        Reference { bytes, json }
    }
    pub fn has(&self, name: &str) -> bool {
        SafeTensors::deserialize(&self.bytes)
            .unwrap()
            .tensor(name)
            .is_ok()
    }
    /// (shape, values) of an F32 tensor.
    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference tensor {name}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        (t.shape().to_vec(), f32_le(t.data()))
    }
    /// Values of an I64 tensor.
    pub fn i64(&self, name: &str) -> Vec<i64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("reference tensor {name}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        t.data()
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
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
        self.json["hidden_states"]["prompt_index"].as_u64().unwrap() as usize
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

/// Little-endian f32 values of a byte buffer.
pub fn f32_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Loads the model of a graph file or HF folder.
pub fn load_model(path: &Path) -> Model {
    let g = LoadedGraph::open(path).expect("open model");
    Model::load(&g, &mut |_, _| {}).expect("load model")
}

/// Runs the `troupe` binary: (exit code, stdout, stderr).
pub fn troupe(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(args)
        .output()
        .expect("run troupe");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
