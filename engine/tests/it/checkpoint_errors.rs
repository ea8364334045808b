//! Loading errors that name what is at fault: safetensors headers (a removed tensor, an unknown or
//! wrong dtype, a truncated file, overlapping tensors) and model paths that are not a model
//! (a checkpoint or config file, a device).

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::Model;
use troupe_engine::weights::Checkpoint;
use troupe_engine::EngineError;

use crate::fixtures::{fixture, scratch_copy, sparse_file};

/// (header, data) of a safetensors file.
pub(crate) fn split(path: &Path) -> (Map<String, Value>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), bytes[8 + n..].to_vec())
}

pub(crate) fn join(path: &Path, header: &Map<String, Value>, data: &[u8]) {
    let h = serde_json::to_vec(header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    std::fs::write(path, out).unwrap();
}

/// A scratch llama-tiny folder whose checkpoint header was edited.
fn edited_llama(
    edit: impl FnOnce(&mut Map<String, Value>, &mut Vec<u8>),
) -> (tempfile::TempDir, PathBuf) {
    let dir = scratch_copy("llama-tiny");
    let st = dir.path().join("model.safetensors");
    let (mut header, mut data) = split(&st);
    edit(&mut header, &mut data);
    join(&st, &header, &data);
    (dir, st)
}

fn load(dir: &Path) -> Result<Model, EngineError> {
    Model::load(&LoadedGraph::open(dir)?, &mut |_, _| {})
}

const NORM: &str = "model.layers.1.input_layernorm.weight";

#[test]
fn a_tensor_removed_from_the_header_is_reported_missing_by_its_own_name() {
    let (dir, st) = edited_llama(|h, _| {
        h.remove(NORM).unwrap();
    });
    // The checkpoint itself opens (the orphaned bytes belong to no tensor)...
    let ck = Checkpoint::open_files(&[st]).unwrap();
    assert!(ck
        .get("model.layers.1.post_attention_layernorm.weight")
        .is_ok());
    // ...and the model names the tensor that is gone, not a neighbour.
    match load(dir.path()) {
        Err(EngineError::MissingTensor { tensor, .. }) => assert_eq!(tensor, NORM),
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn an_unknown_dtype_names_the_tensor() {
    let (_dir, st) = edited_llama(|h, _| h[NORM]["dtype"] = json!("F33"));
    let e = Checkpoint::open_files(&[st]).err().unwrap().to_string();
    assert!(e.contains(NORM) && e.contains("unknown dtype `F33`"), "{e}");
}

#[test]
fn a_dtype_that_does_not_fit_the_bytes_names_the_tensor_and_the_sizes() {
    let (_dir, st) = edited_llama(|h, _| h[NORM]["dtype"] = json!("BF16"));
    let e = Checkpoint::open_files(&[st]).err().unwrap().to_string();
    assert!(
        e.contains(NORM) && e.contains("needs") && e.contains("bytes"),
        "{e}"
    );
}

#[test]
fn a_truncated_file_says_truncated_with_the_sizes() {
    let (_dir, st) = edited_llama(|_, data| {
        let keep = data.len() - 100;
        data.truncate(keep);
    });
    let e = Checkpoint::open_files(&[st]).err().unwrap().to_string();
    assert!(e.contains("truncated") && e.contains("data bytes"), "{e}");
    for cut in [3usize, 20] {
        let (_dir, st) = edited_llama(|_, _| {});
        let bytes = std::fs::read(&st).unwrap();
        std::fs::write(&st, &bytes[..cut]).unwrap();
        let e = Checkpoint::open_files(&[st]).err().unwrap().to_string();
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
    }
}

#[test]
fn overlapping_tensors_are_both_named() {
    let other = "model.layers.1.post_attention_layernorm.weight";
    let (_dir, st) = edited_llama(|h, _| {
        let offsets = h[other]["data_offsets"].clone();
        h[NORM]["data_offsets"] = offsets;
    });
    let e = Checkpoint::open_files(&[st]).err().unwrap().to_string();
    assert!(
        e.contains(NORM) && e.contains(other) && e.contains("overlap"),
        "{e}"
    );
}

#[test]
fn an_unsupported_dtype_is_an_error_only_when_the_tensor_is_needed() {
    let (dir, _st) = edited_llama(|h, _| {
        // Same bytes, read as I32: a dtype troupe cannot compute with.
        h[NORM]["dtype"] = json!("I32");
    });
    match load(dir.path()) {
        Err(EngineError::UnsupportedDtype { tensor, dtype }) => {
            assert_eq!((tensor.as_str(), dtype.as_str()), (NORM, "I32"))
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn a_checkpoint_or_config_as_the_model_path_asks_for_the_folder() {
    for file in ["model.safetensors", "config.json", "tokenizer.json"] {
        let e = LoadedGraph::open(&fixture("llama-tiny").join(file))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("pass the model folder"), "{file}: {e}");
    }
    // A folder that is not a model folder says so.
    let empty = tempfile::tempdir().unwrap();
    let e = LoadedGraph::open(empty.path()).err().unwrap().to_string();
    assert!(e.contains("not a model folder"), "{e}");
    // Binary content under another name gets the same hint instead of a UTF-8 error.
    let dir = tempfile::tempdir().unwrap();
    let weird = dir.path().join("weights.bin");
    std::fs::write(&weird, [0xffu8, 0xfe, 0, 1]).unwrap();
    let e = LoadedGraph::open(&weird).err().unwrap().to_string();
    assert!(e.contains("pass the model folder"), "{e}");
}

#[cfg(unix)]
#[test]
fn a_device_as_the_model_or_tokenizer_path_is_refused_without_reading() {
    let dev = Path::new("/dev/zero");
    let errors = [
        LoadedGraph::open(dev).err().map(|e| e.to_string()),
        troupe_engine::tokenizer::TextTokenizer::open(dev)
            .err()
            .map(|e| e.to_string()),
    ];
    for e in errors {
        let e = e.expect("an error");
        assert!(
            e.contains("/dev/zero") && e.contains("not a regular file"),
            "{e}"
        );
    }
}

#[test]
fn an_oversized_graph_file_is_refused_with_the_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let g = sparse_file(
        dir.path(),
        "big.toml",
        troupe_engine::files::MAX_GRAPH_FILE_BYTES + 1,
    );
    let e = LoadedGraph::open(&g).err().unwrap().to_string();
    assert!(e.contains("big.toml") && e.contains("larger than"), "{e}");
}
