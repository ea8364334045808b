//! What every model-running command shares: the error type, the checks that run before any
//! weight is touched (TROUPE_FAULT, the memory pre-check), thread setup, model loading with a
//! progress bar, device selection, and prompt parsing.

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use troupe_actors::BackendBuildError;
use troupe_engine::graph::spec::ModelSpec;
use troupe_engine::graph::{LoadedGraph, WeightsSource};
use troupe_engine::kernels::isa::{self, Isa, IsaError};
use troupe_engine::memory::{self, Available, MemoryError, MemoryNeed, RunShape};
use troupe_engine::model::kv::DEFAULT_PAGE_TOKENS;
use troupe_engine::model::{KvConfig, MlaForm, Model};
use troupe_engine::{Backend, DeviceId, EngineError};

use super::{RunArgs, MAX_THREADS};

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
    #[error("{0}; pass --skip-memory-check to try anyway")]
    Memory(#[from] MemoryError),
}

/// Sizes the global compute pool, rayon's, which every CPU kernel runs on (once per process).
pub fn init_threads(threads: Option<usize>) -> Result<(), CliError> {
    if let Some(t) = threads {
        if t == 0 || t > MAX_THREADS {
            return Err(CliError::Usage(format!(
                "--threads {t}: expected a whole number from 1 to {MAX_THREADS}"
            )));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| CliError::Runtime(format!("cannot size the thread pool: {e}")))?;
    }
    Ok(())
}

/// Makes the CPU kernels use `--isa` (a path this processor lacks, or an unknown name, is a
/// usage error).
pub fn init_isa(isa: Option<&str>) -> Result<(), CliError> {
    let Some(name) = isa else {
        return Ok(());
    };
    let usage = |e: IsaError| CliError::Usage(e.to_string());
    isa::set_active(Isa::parse(name).map_err(usage)?).map_err(usage)
}

/// Makes the linear layers use `--compute` (bf16 exists on the CPU kernels only).
fn init_compute(run: &RunArgs) -> Result<(), CliError> {
    use troupe_engine::kernels::precision::{self, Compute};
    let Some(mode) = run.compute else {
        return Ok(());
    };
    if mode != Compute::F32 && run.device != troupe_engine::DeviceId::Cpu {
        return Err(CliError::Usage(format!(
            "--compute {} runs on the CPU kernels only, not on --device {}",
            mode.name(),
            run.device
        )));
    }
    precision::set_compute(mode);
    Ok(())
}

/// The graph of `--model`, once the checks that need no model pass (a malformed `TROUPE_FAULT` is
/// an error under every runtime, not only where actors read it; so is `--isa`).
pub fn open_graph(run: &RunArgs) -> Result<LoadedGraph, CliError> {
    Ok(open_graph_placed(run)?.0)
}

/// [`open_graph`] with `--placement` applied, and the placement's `attention` mode.
pub fn open_graph_placed(
    run: &RunArgs,
) -> Result<(LoadedGraph, troupe_actors::transport::AttentionMode), CliError> {
    check_fault_env()?;
    if run.no_keep_awake {
        troupe_engine::kernels::awake::set_enabled(false);
    }
    init_isa(run.isa.as_deref())?;
    init_compute(run)?;
    let mut graph = LoadedGraph::open(&run.model)?;
    let mode = super::distributed::apply_placement(&mut graph, run.placement.as_deref())?;
    if let Some(d) = run.dequantize {
        apply_dequantize(&mut graph, d)?;
    }
    if run.quantize.is_some() {
        graph.quantize = Some(quantize_policy(&graph, run.quantize_keep.as_deref())?);
    }
    Ok((graph, mode))
}

/// `--quantize int8`: the graph file's `[quantize]` policy (or the default, which keeps
/// attention), its `keep` list replaced by `--quantize-keep` when given.
pub fn quantize_policy(
    graph: &LoadedGraph,
    keep: Option<&str>,
) -> Result<troupe_engine::weights::int8::QuantizePolicy, CliError> {
    use troupe_engine::weights::int8::{QuantizePolicy, WeightClass};
    let mut policy = graph.quantize.clone().unwrap_or_else(QuantizePolicy::int8);
    if let Some(list) = keep {
        policy.keep = match list.trim() {
            "none" | "" => Vec::new(),
            l => l
                .split(',')
                .map(|c| WeightClass::parse(c.trim()))
                .collect::<Result<_, _>>()
                .map_err(|e| CliError::Usage(format!("--quantize-keep: {e}")))?,
        };
    }
    Ok(policy)
}
/// `--dequantize`: an FP8 checkpoint's weights are turned into `d` at load (the loader
/// dequantises FP8 tensors whenever the model's dtype is not f8e4m3).
fn apply_dequantize(
    graph: &mut LoadedGraph,
    d: troupe_engine::dtype::DType,
) -> Result<(), CliError> {
    use troupe_engine::dtype::DType;
    if graph.spec.dtype != DType::F8E4M3 {
        return Err(CliError::Usage(format!(
            "--dequantize {d}: {} is not an FP8 model (dtype {})",
            run_name(graph),
            graph.spec.dtype
        )));
    }
    if matches!(graph.weights, WeightsSource::Random(_)) {
        return Err(CliError::Usage(format!(
            "--dequantize {d}: {} has random weights; set `dtype` in its graph file instead",
            run_name(graph)
        )));
    }
    graph.spec.dtype = d;
    Ok(())
}

fn run_name(graph: &LoadedGraph) -> String {
    graph.origin.display().to_string()
}

fn check_fault_env() -> Result<(), CliError> {
    let Some(raw) = std::env::var_os("TROUPE_FAULT") else {
        return Ok(());
    };
    let text = raw
        .to_str()
        .ok_or_else(|| CliError::Usage("TROUPE_FAULT is not valid UTF-8".into()))?;
    troupe_actors::FaultPlan::parse(text)
        .map(|_| ())
        .map_err(|e| CliError::Usage(format!("TROUPE_FAULT: {e}")))
}

/// Fails when `sequences` sequences of `tokens` positions would not fit in the memory this
/// process can get (unless `--skip-memory-check`); runs before any weight is allocated or mapped.
pub fn check_memory(
    run: &RunArgs,
    graph: &LoadedGraph,
    sequences: usize,
    tokens: usize,
) -> Result<(), CliError> {
    if run.skip_memory_check {
        return Ok(());
    }
    let threads = run.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    // Longer runs are refused by the position check, with a clearer message.
    let shape = RunShape {
        sequences,
        tokens_per_sequence: tokens.min(graph.spec.max_position_embeddings),
        threads,
    };
    let random = matches!(graph.weights, WeightsSource::Random(_));
    let need = MemoryNeed::of(&graph.spec, random, &shape);
    Ok(memory::check(need, Available::of_this_process())?)
}

/// Sizes the thread pool, builds the `--device` backend and loads the weights (under mpirun,
/// this rank's share, then serves its experts to the other ranks).
pub fn start_model(
    run: &RunArgs,
    graph: &LoadedGraph,
) -> Result<(Arc<Model>, Arc<dyn Backend>), CliError> {
    init_threads(run.threads)?;
    let be = backend(&run.device)?;
    let model = load_model(graph)?;
    super::distributed::serve_loaded(&model)?;
    Ok((model, be))
}

/// Loads the weights of `graph` (under mpirun, this rank's share: see `distributed`), with a
/// progress bar on a terminal.
pub fn load_model(graph: &LoadedGraph) -> Result<Arc<Model>, CliError> {
    let share = super::distributed::rank_share(graph)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} tensors")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(graph.origin.display().to_string());
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let model = match &share {
        Some(names) => Model::load_where(graph, &|n| names.contains(n), &mut progress),
        None => Model::load(graph, &mut progress),
    };
    bar.finish_and_clear();
    Ok(Arc::new(model?))
}

/// The KV cache configuration of `--kv-pages` / `--page-tokens` (the engine's defaults for the
/// rest).
pub fn kv_config(run: &RunArgs, spec: &ModelSpec) -> KvConfig {
    let page_tokens = run.page_tokens.unwrap_or(DEFAULT_PAGE_TOKENS);
    let default = KvConfig::for_spec(spec, page_tokens);
    KvConfig {
        page_tokens,
        capacity_pages: run.kv_pages.unwrap_or(default.capacity_pages),
    }
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
        BackendBuildError::NotBuilt { .. } => CliError::Usage(e.to_string()),
        BackendBuildError::Failed { .. } => CliError::Runtime(e.to_string()),
    })
}

/// Parses `0,5,9` into token ids; the error names the bad entry. An empty (or blank) string is
/// an empty prompt; an empty entry (`1,,2`, `1,2,`) is an error.
pub fn parse_ids(s: &str) -> Result<Vec<u32>, CliError> {
    let mut out = Vec::new();
    if s.trim().is_empty() {
        return Ok(out);
    }
    for (i, part) in s.split(',').map(str::trim).enumerate() {
        if part.is_empty() {
            return Err(CliError::Usage(format!(
                "--prompt-ids: entry {i} is empty (ids are separated by single commas)"
            )));
        }
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

/// Setup for a run of `sequences` sequences of `tokens` positions: open the graph, check the
/// memory, then size the pool, build the backend and load the weights.
pub fn prepare_for(
    run: &RunArgs,
    sequences: usize,
    tokens: usize,
) -> Result<(LoadedGraph, Arc<Model>, Arc<dyn Backend>), CliError> {
    let graph = open_graph(run)?;
    check_memory(run, &graph, sequences, tokens)?;
    let (model, be) = start_model(run, &graph)?;
    Ok((graph, model, be))
}

/// Setup shared by generate/logits/bench when the run's length is not known up front: the memory
/// check counts the weights and one position of one sequence.
pub fn prepare(run: &RunArgs) -> Result<(LoadedGraph, Arc<Model>, Arc<dyn Backend>), CliError> {
    prepare_for(run, 1, 1)
}
