//! `troupe simulate`: the actor runtime's deployment of a model simulated on a discrete-event
//! clock (`troupe-sim`): placement from `--placement` / the graph / `--gpus N`, the runtime's
//! schedules by name (`--schedule`, the same registry), a hardware file or built-in name.
//! Prints the report; `--json` ends stdout with one JSON object; `--trace F` writes the runtime's
//! trace format.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use troupe_actors::schedule::{registry, ScheduleParams};
use troupe_engine::graph::file::LoadedGraph;
use troupe_sim::cost::ModelCost;
use troupe_sim::{report, Hardware, Layout, Simulation};

use super::common::CliError;

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// A graph file (.toml) or an HF model folder; no weights are read.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// A TOML file whose [placement] replaces the graph's.
    #[arg(long)]
    pub placement: Option<PathBuf>,
    /// Schedule name (the runtime's registry: sequential, two-microbatch, pipeline).
    #[arg(long)]
    pub schedule: Option<String>,
    /// A hardware file or a built-in: h800, h100, h200, cpu.
    #[arg(long)]
    pub hardware: String,
    /// Spread the model over N simulated GPUs (the documented default layout: data-parallel
    /// attention, experts in N groups, 8 GPUs per node); ignores the graph's [placement].
    #[arg(long)]
    pub gpus: Option<usize>,
    /// Pipeline stages (the runtime's --stages).
    #[arg(long)]
    pub stages: Option<usize>,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 4)]
    pub seqs: usize,
    /// Decode steps simulated (after one prefill pass that is not counted).
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Cached positions per sequence when decoding starts.
    #[arg(long, default_value_t = 128)]
    pub context: usize,
    /// JSON lines {"arrival_s", "prompt_tokens", "output_tokens"} to serve instead of --seqs.
    #[arg(long)]
    pub workload: Option<PathBuf>,
    /// Most requests batched in one step under --workload.
    #[arg(long, default_value_t = 256)]
    pub max_batch: usize,
    /// End stdout with the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write the simulated steps as a Chrome/Perfetto trace (the runtime's format).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Also run the configuration for real on this machine (the actor runtime, random weights,
    /// CPU streams; --seqs/--context/--steps) and report the simulated step time's error.
    #[arg(long, conflicts_with_all = ["gpus", "workload"])]
    pub measure: bool,
}

pub fn run(a: SimulateArgs) -> Result<(), CliError> {
    let sim_err = |e: troupe_sim::SimError| CliError::Runtime(e.to_string());
    let mut graph = LoadedGraph::open(&a.model)?;
    let mode = super::distributed::apply_placement(&mut graph, a.placement.as_deref())?;
    let hw = Hardware::load(&a.hardware).map_err(sim_err)?;
    let experts = ModelCost::from_spec(&graph.spec, None, 4.0).layer_experts();
    let layout = match a.gpus {
        Some(n) => Layout::gpus(n, &experts, &hw),
        None => {
            let mut l = Layout::from_table(graph.placement.as_ref(), &experts, a.stages, &hw);
            if let (Ok(l), troupe_actors::transport::AttentionMode::DataParallel) = (&mut l, mode) {
                l.attention_lanes = l.placement.stage_streams.clone();
            }
            l
        }
    }
    .map_err(sim_err)?;
    let params = ScheduleParams {
        n_stages: layout.placement.stages.len(),
        ..ScheduleParams::default()
    };
    let schedule = match &a.schedule {
        Some(name) => registry::lookup(name, &params, "--schedule"),
        None => troupe_actors::schedule::from_config(
            graph.schedule.as_ref(),
            None,
            layout.placement.stages.len(),
        ),
    }
    .map_err(|e| CliError::Usage(e.to_string()))?;
    let mut sim = Simulation::new(&graph.spec, layout, Arc::clone(&schedule), hw).map_err(sim_err)?;
    sim.keep_spans = a.trace.is_some();
    let rep = match &a.workload {
        Some(w) => {
            let reqs = report::read_workload(w).map_err(sim_err)?;
            report::workload(&mut sim, &reqs, a.max_batch)
        }
        None => report::decode(&mut sim, a.seqs, a.context, a.steps),
    }
    .map_err(sim_err)?;
    if let Some(t) = &a.trace {
        report::write_trace(&sim, t).map_err(sim_err)?;
    }
    println!(
        "{}: {} on {} ({} streams, {} stages), schedule {}",
        a.model.display(),
        match a.workload {
            Some(_) => "workload".to_string(),
            None => format!("{} sequences at context {}", a.seqs, a.context),
        },
        sim.hardware().name,
        sim.layout().n_streams(),
        sim.layout().placement.stages.len(),
        schedule.name()
    );
    println!("{rep}");
    let mut json = serde_json::to_value(&rep).unwrap_or_default();
    if a.measure {
        let model = std::sync::Arc::new(troupe_engine::model::Model::load(&graph, &mut |_, _| {})?);
        let spec = troupe_actors::placement::PlacementSpec::from_table(graph.placement.as_ref())
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let measured =
            super::calibrate::measure(&model, &spec, &schedule, a.seqs, a.context, a.steps)?;
        let error = rep.step_ms / (measured * 1e3) - 1.0;
        println!(
            "measured step:    {:.3} ms (median of {} real steps); simulated {:+.1}%",
            measured * 1e3,
            a.steps,
            100.0 * error
        );
        json["measured_step_ms"] = serde_json::json!(measured * 1e3);
        json["error"] = serde_json::json!(error);
    }
    if a.json {
        println!("{json}");
    }
    Ok(())
}
