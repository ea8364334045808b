//! `troupe simulate`: the actor runtime's deployment of a model simulated on a discrete-event
//! clock (`troupe-sim`): placement from `--placement` / the graph / `--gpus N`, the runtime's
//! schedules by name (`--schedule`, the same registry), a hardware file or built-in name.
//! Prints the report; `--json` ends stdout with one JSON object; `--trace F` writes the runtime's
//! trace format; `--svg DIR` plots; `--sweep KEY=v1,v2,..` repeats the run per value;
//! `--measure` runs the same configuration for real on this machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use troupe_actors::schedule::{registry, ScheduleParams};
use troupe_actors::Schedule;
use troupe_engine::graph::file::LoadedGraph;
use troupe_sim::cost::ModelCost;
use troupe_sim::{report, svg, Hardware, Layout, Report, Simulation};

use super::common::CliError;

#[derive(Args, Debug, Clone)]
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
    /// Write SVG plots into DIR: timeline.svg (the last step per stream), utilization.svg,
    /// and with --sweep sweep.svg.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Repeat the run for each value of one key: seqs, context, gpus or schedule
    /// (e.g. --sweep seqs=1,4,16).
    #[arg(long)]
    pub sweep: Option<String>,
    /// Also run the configuration for real on this machine (the actor runtime, random weights,
    /// CPU streams; --seqs/--context/--steps) and report the simulated step time's error.
    #[arg(long, conflicts_with_all = ["gpus", "workload", "sweep"])]
    pub measure: bool,
    /// --measure: real runs of --steps steps each; the fastest step over all of them counts
    /// (as `troupe calibrate --rounds` measures).
    #[arg(long, default_value_t = 3, requires = "measure")]
    pub rounds: usize,
}

fn sim_err(e: troupe_sim::SimError) -> CliError {
    CliError::Runtime(e.to_string())
}

fn output_err(path: &Path, e: std::io::Error) -> CliError {
    CliError::Output {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Builds the simulation `a` describes and runs it.
fn simulate(
    a: &SimulateArgs,
    graph: &LoadedGraph,
    mode: troupe_actors::transport::AttentionMode,
) -> Result<(Simulation, Report, Arc<dyn Schedule>), CliError> {
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
    let mut sim = Simulation::new(&graph.spec, layout, schedule.clone(), hw).map_err(sim_err)?;
    sim.keep_spans = a.trace.is_some();
    let rep = match &a.workload {
        Some(w) => {
            let reqs = report::read_workload(w).map_err(sim_err)?;
            report::workload(&mut sim, &reqs, a.max_batch)
        }
        None => report::decode(&mut sim, a.seqs, a.context, a.steps),
    }
    .map_err(sim_err)?;
    Ok((sim, rep, schedule))
}

/// `KEY=v1,v2,..` → the key and one argument set per value.
fn sweep_args(
    a: &SimulateArgs,
    sweep: &str,
) -> Result<(String, Vec<(String, SimulateArgs)>), CliError> {
    let bad = |m: String| CliError::Usage(format!("--sweep {sweep}: {m}"));
    let (key, values) = sweep
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=v1,v2,...".into()))?;
    let mut out = Vec::new();
    for v in values.split(',').filter(|v| !v.is_empty()) {
        let mut b = a.clone();
        let num = || {
            v.parse::<usize>()
                .map_err(|_| bad(format!("`{v}` is not a whole number")))
        };
        match key {
            "seqs" => b.seqs = num()?,
            "context" => b.context = num()?,
            "gpus" => b.gpus = Some(num()?),
            "schedule" => b.schedule = Some(v.to_string()),
            _ => {
                return Err(bad(format!(
                    "unknown key `{key}` (seqs, context, gpus, schedule)"
                )))
            }
        }
        out.push((v.to_string(), b));
    }
    if out.is_empty() {
        return Err(bad("no values".into()));
    }
    Ok((key.to_string(), out))
}

pub fn run(a: SimulateArgs) -> Result<(), CliError> {
    let mut graph = LoadedGraph::open(&a.model)?;
    let mode = super::distributed::apply_placement(&mut graph, a.placement.as_deref())?;
    if let Some(dir) = &a.svg {
        std::fs::create_dir_all(dir).map_err(|e| output_err(dir, e))?;
    }
    if let Some(sweep) = &a.sweep {
        let (key, runs) = sweep_args(&a, sweep)?;
        let mut reports = Vec::new();
        for (v, b) in &runs {
            let (_, rep, schedule) = simulate(b, &graph, mode)?;
            println!(
                "{key}={v}: step {:.3} ms, {:.1} tokens/s, bubble {:.3}, hidden {:.1}% ({})",
                rep.step_ms,
                rep.tokens_per_s,
                rep.bubble_fraction,
                100.0 * rep.hidden_fraction,
                schedule.name()
            );
            reports.push(rep);
        }
        if let Some(dir) = &a.svg {
            let x: Vec<String> = runs.iter().map(|(v, _)| v.clone()).collect();
            let tps = vec![(
                "tokens/s".to_string(),
                reports.iter().map(|r| r.tokens_per_s).collect(),
            )];
            let text = svg::lines(
                &x,
                &tps,
                "tokens/s",
                &format!("{} — tokens/s against {key}", a.model.display()),
            );
            let path = dir.join("sweep.svg");
            std::fs::write(&path, text).map_err(|e| output_err(&path, e))?;
        }
        if a.json {
            let values: Vec<&String> = runs.iter().map(|(v, _)| v).collect();
            println!(
                "{}",
                serde_json::json!({"sweep": key, "values": values, "reports": reports})
            );
        }
        return Ok(());
    }
    let (sim, rep, schedule) = simulate(&a, &graph, mode)?;
    if let Some(t) = &a.trace {
        report::write_trace(&sim, t).map_err(sim_err)?;
    }
    if let Some(dir) = &a.svg {
        let names = &sim.layout().placement.streams;
        if let Some(step) = sim.last_step {
            let title = format!(
                "{} — last step, {:.3} ms",
                a.model.display(),
                (step.end_us - step.start_us) / 1e3
            );
            let text = svg::timeline(&sim.last_spans, names, step.start_us, step.end_us, &title);
            let path = dir.join("timeline.svg");
            std::fs::write(&path, text).map_err(|e| output_err(&path, e))?;
        }
        let items: Vec<(String, f64)> = rep
            .utilization
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let path = dir.join("utilization.svg");
        std::fs::write(&path, svg::bars(&items, "stream utilization"))
            .map_err(|e| output_err(&path, e))?;
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
        let model = Arc::new(troupe_engine::model::Model::load(&graph, &mut |_, _| {})?);
        let spec = troupe_actors::placement::PlacementSpec::from_table(graph.placement.as_ref())
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let mut measured = f64::INFINITY;
        for _ in 0..a.rounds.max(1) {
            let t =
                super::calibrate::measure(&model, &spec, &schedule, a.seqs, a.context, a.steps)?;
            measured = measured.min(t);
        }
        let error = rep.step_ms / (measured * 1e3) - 1.0;
        println!(
            "measured step:    {:.3} ms (fastest of {} runs of {} real steps); simulated {:+.1}%",
            measured * 1e3,
            a.rounds.max(1),
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
