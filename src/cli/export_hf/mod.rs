//! `troupe export-hf -m GRAPH --out DIR`: writes a graph's model, random weights included, as a
//! Hugging Face folder (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json`, `generation_config.json`), so other engines (transformers, llama.cpp's
//! converter) run exactly the same weights, and troupe runs the folder back from mmap.
//!
//! The weights are the ones `Model::load` would use (`troupe_engine::model::collect_weights`),
//! written byte for byte in their own dtype (bf16 stays bf16; the V3 correction bias is f32);
//! 4-byte tensors come first so every tensor of the file is aligned for mmap without a copy.
//! A graph's `[quantize]` table is not applied (`troupe quantize --int8` writes that form).
//! `config.json` is in `config.rs`, the tokenizer in `tokenizer.rs`.

mod config;

pub(super) use config::hf_config;
mod tokenizer;

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};
use troupe_engine::graph::{LoadedGraph, Plan};
use troupe_engine::model::collect_weights;
use troupe_engine::weights::Weight;

use super::common::CliError;

#[derive(Args, Debug)]
pub struct ExportHfArgs {
    /// A graph file (.toml) or an HF model folder.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// The folder to write (created if missing; the files above are replaced).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: ExportHfArgs) -> Result<(), CliError> {
    let mut graph = LoadedGraph::open(&a.model)?;
    // The stored weights, unquantised: `troupe quantize --int8` writes an int8 folder.
    graph.quantize = None;
    let spec = &graph.spec;
    let usage = |m: String| CliError::Usage(format!("export-hf {}: {m}", a.model.display()));
    // Everything that can be refused is checked before a weight is generated or written.
    let config = config::hf_config(spec, &graph.origin).map_err(usage)?;
    let tok = tokenizer::tokenizer_json(spec.vocab_size, spec.bos_token_id, spec.eos_token_id)
        .map_err(usage)?;
    fs::create_dir_all(&a.out).map_err(|e| out_err(&a.out, e))?;
    let plan = Plan::compile(spec);
    let weights = collect_weights(&graph, &plan, &mut |_, _| {})?;
    let mut ordered: Vec<&Weight> = plan
        .weight_specs()
        .iter()
        .filter_map(|s| weights.get(&s.name))
        .collect();
    // Stable: 4-byte tensors first, then 2-byte ones, each group in plan order.
    ordered.sort_by_key(|w| std::cmp::Reverse(w.dtype().size()));
    write_safetensors(&a.out.join("model.safetensors"), &ordered)?;
    write_json(&a.out.join("config.json"), &config)?;
    write_json(&a.out.join("tokenizer.json"), &tok)?;
    write_json(
        &a.out.join("tokenizer_config.json"),
        &tokenizer::tokenizer_config(spec.bos_token_id, spec.eos_token_id),
    )?;
    write_json(
        &a.out.join("generation_config.json"),
        &json!({
            "bos_token_id": spec.bos_token_id,
            "eos_token_id": spec.eos_token_id,
            "do_sample": false,
        }),
    )?;
    let bytes: usize = ordered.iter().map(|w| w.nbytes()).sum();
    println!(
        "wrote {} ({} tensors, {:.1} MB of weights, vocab {})",
        a.out.display(),
        ordered.len(),
        bytes as f64 / 1e6,
        spec.vocab_size
    );
    Ok(())
}

fn out_err(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Output {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn write_json(path: &Path, v: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| out_err(path, e))?;
    fs::write(path, text + "\n").map_err(|e| out_err(path, e))
}

/// The safetensors name of a weight's dtype (by its name, so new dtypes are refused, not missed).
fn safetensors_dtype(w: &Weight) -> Result<&'static str, String> {
    match w.dtype().to_string().as_str() {
        "f32" => Ok("F32"),
        "bf16" => Ok("BF16"),
        "f16" => Ok("F16"),
        other => Err(format!(
            "tensor `{}`: export-hf does not write {other} weights",
            w.name()
        )),
    }
}

/// The safetensors header of `weights` laid out back to back in this order, padded with spaces
/// to a multiple of 8 bytes (so the data starts 8-byte aligned).
fn safetensors_header(weights: &[&Weight]) -> Result<Vec<u8>, String> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0usize;
    for w in weights {
        let end = offset + w.bytes().len();
        header.insert(
            w.name().to_string(),
            json!({
                "dtype": safetensors_dtype(w)?,
                "shape": w.shape(),
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&Value::Object(header)).map_err(|e| e.to_string())?;
    while (8 + text.len()) % 8 != 0 {
        text.push(b' ');
    }
    Ok(text)
}

/// Streams `weights` into one safetensors file (a temp file renamed over `path` at the end).
fn write_safetensors(path: &Path, weights: &[&Weight]) -> Result<(), CliError> {
    let header = safetensors_header(weights).map_err(|e| out_err(path, e))?;
    let tmp = path.with_extension("safetensors.tmp");
    let written = (|| -> std::io::Result<()> {
        let mut f = BufWriter::with_capacity(1 << 22, fs::File::create(&tmp)?);
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(&header)?;
        for w in weights {
            f.write_all(w.bytes())?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(|e| out_err(path, e))
}
