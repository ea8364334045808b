//! What every model-running command shares: the error type, thread setup, model loading with a
//! progress bar, device selection, and prompt parsing.

use std::path::Path;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use troupe_actors::stream::BackendBuildError;
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::{MlaForm, Model};
use troupe_engine::{Backend, DeviceId, EngineError};

use super::RunArgs;

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {message}")]
    Output { path: String, message: String },
    #[error("{0}")]
    Runtime(String),
}

/// Sizes the global compute pool (once per process).
pub fn init_threads(threads: Option<usize>) -> Result<(), CliError> {
    if let Some(t) = threads {
        if t == 0 {
            return Err(CliError::Usage("--threads must be at least 1".into()));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| CliError::Runtime(format!("cannot size the thread pool: {e}")))?;
    }
    Ok(())
}

/// Opens the graph and loads its weights, with a progress bar on a terminal.
pub fn load_model(path: &Path) -> Result<(LoadedGraph, Arc<Model>), CliError> {
    let graph = LoadedGraph::open(path)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} tensors")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(path.display().to_string());
    let model = Model::load(&graph, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    Ok((graph, Arc::new(model?)))
}

pub fn mla_form(s: &str) -> Result<MlaForm, CliError> {
    match s {
        "auto" => Ok(MlaForm::Auto),
        "naive" => Ok(MlaForm::Naive),
        "absorbed" => Ok(MlaForm::Absorbed),
        other => Err(CliError::Usage(format!(
            "--mla {other}: expected auto, naive or absorbed"
        ))),
    }
}

/// The kernel backend for `--device` (the library's built-in devices, `troupe::backends`).
pub fn backend(device: &DeviceId) -> Result<Arc<dyn Backend>, CliError> {
    troupe::backends::backend(device).map_err(|e| match e {
        BackendBuildError::Unsupported { .. } => CliError::Usage(format!(
            "--device {device}: expected {}",
            troupe::backends::BUILTIN_DEVICES
        )),
        BackendBuildError::Failed { .. } => CliError::Runtime(e.to_string()),
    })
}

/// Parses `0,5,9` into token ids; the error names the bad entry.
pub fn parse_ids(s: &str) -> Result<Vec<u32>, CliError> {
    let mut out = Vec::new();
    for (i, part) in s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        let v: i64 = part.parse().map_err(|_| {
            CliError::Usage(format!(
                "--prompt-ids: entry {i} `{part}` is not an integer"
            ))
        })?;
        if v < 0 || v > u32::MAX as i64 {
            return Err(CliError::Usage(format!(
                "--prompt-ids: entry {i} ({v}) is not a valid token id"
            )));
        }
        out.push(v as u32);
    }
    Ok(out)
}

/// Setup shared by generate/logits/bench.
pub fn prepare(run: &RunArgs) -> Result<(LoadedGraph, Arc<Model>, Arc<dyn Backend>), CliError> {
    init_threads(run.threads)?;
    let be = backend(&run.device)?;
    let (graph, model) = load_model(&run.model)?;
    Ok((graph, model, be))
}
