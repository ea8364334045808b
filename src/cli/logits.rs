//! `troupe logits`: one cache-free forward pass, written as safetensors tensor `logits` (F32, [T, V]).

use std::path::PathBuf;

use clap::Args;
use safetensors::tensor::{Dtype, TensorView};

use super::common::{mla_form, parse_ids, prepare, CliError};
use super::executor::Executor;
use super::{RunArgs, RuntimeArgs};

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Prompt token ids, comma separated.
    #[arg(long)]
    pub prompt_ids: String,
    /// Output .safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: LogitsArgs) -> Result<(), CliError> {
    let ids = parse_ids(&a.prompt_ids)?;
    let (graph, model, be) = prepare(&a.run)?;
    let exec = Executor::start(&graph, model, be, &a.run, &a.runtime, mla_form(&a.run.mla)?)?;
    let result = exec.logits(&ids);
    exec.finish()?;
    let logits = result?;
    write_logits(&a.out, logits.shape(), logits.data())
}

/// Writes one F32 tensor named `logits`.
pub fn write_logits(path: &std::path::Path, shape: &[usize], data: &[f32]) -> Result<(), CliError> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let out_err = |m: String| CliError::Output {
        path: path.display().to_string(),
        message: m,
    };
    let view =
        TensorView::new(Dtype::F32, shape.to_vec(), &bytes).map_err(|e| out_err(e.to_string()))?;
    safetensors::serialize_to_file([("logits", view)], None, path)
        .map_err(|e| out_err(e.to_string()))
}
