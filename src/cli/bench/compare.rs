//! `troupe bench --compare`: the actor runtime's decode tokens/s against the reference
//! executor's, interleaved in one process (`troupe_actors::bench`: `--seqs` sequences prefilled
//! with `-p` tokens, `-r` rounds, median step), and the fraction of link time each schedule hides
//! (over the placement's `[placement.link]`, else 100 µs / 10 Gbit/s; `--no-link` skips it), for
//! every `--schedule` name (looked up in the schedule registry with the graph's `[schedule]`
//! parameters; default sequential and two-microbatch); `--profile actors|reference [--trace F]`
//! runs one contender's decode steps alone (the actors with the first schedule, on the
//! placement as given, its link included), for `perf record`.

use std::sync::Arc;

use troupe_actors::bench::Contender;
use troupe_actors::placement::{Placement, PlacementSpec};
use troupe_actors::Schedule;
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::Model;

use super::BenchArgs;
use crate::cli::common::{prepare, CliError};

/// `-p` default under `--compare`: each sequence's prefill before the decode rounds.
const PREFILL_LEN: usize = 16;

pub fn run(a: &BenchArgs) -> Result<(), CliError> {
    if a.json || a.n_depth.iter().any(|&d| d > 0) || a.runtime.is_some() {
        return Err(CliError::Usage(
            "--compare runs both runtimes on CPU without depth: drop --json, -d and --runtime"
                .into(),
        ));
    }
    let (graph, model, _be) = prepare(&a.run)?;
    let runtime_err = |e: troupe_actors::ActorError| CliError::Runtime(e.to_string());
    let spec = PlacementSpec::from_table(graph.placement.as_ref()).map_err(runtime_err)?;
    let mut o = troupe_actors::bench::BenchOptions {
        sequences: a.seqs.unwrap_or(8),
        prompt_len: a.n_prompt.unwrap_or(PREFILL_LEN),
        steps: a.reps,
        with_link: !a.no_link,
        trace: a.trace.clone(),
        ..Default::default()
    };
    if let Some(link) = troupe_actors::bench::placement_link(Some(&spec)).map_err(runtime_err)? {
        o.link = link;
    }
    if !a.schedule.is_empty() {
        o.schedules = schedules(&a.schedule, &graph, &model, &spec).map_err(runtime_err)?;
    }
    let names: Vec<&str> = o.schedules.iter().map(|s| s.name()).collect();
    println!(
        "model: {}  threads: {}  runtime: actors vs reference  schedules: {}  sequences: {}  prompt tokens: {}  rounds: {}",
        a.run.model.display(),
        rayon::current_num_threads(),
        names.join(", "),
        o.sequences,
        o.prompt_len,
        o.steps
    );
    let placement = Some(&spec);
    match a.profile {
        Some(which) => {
            let which = Contender::from(which);
            let tok_s =
                troupe_actors::bench::profile(model, placement, &o, which).map_err(runtime_err)?;
            println!("{which}: {tok_s:.1} decode tok/s (median step)");
        }
        None => {
            let report = troupe_actors::bench::run(model, placement, &o).map_err(runtime_err)?;
            print!("{report}");
        }
    }
    Ok(())
}

/// The schedules named on the command line, from the registry, with the graph's `[schedule]`
/// parameters and its placement's stage count.
pub fn schedules(
    names: &[String],
    graph: &LoadedGraph,
    model: &Model,
    spec: &PlacementSpec,
) -> troupe_actors::Result<Vec<Arc<dyn Schedule>>> {
    let stages = spec
        .resolve(&troupe_actors::placement::layer_experts(model), None)
        .map(|p: Placement| p.stages.len())?;
    names
        .iter()
        .map(|n| troupe_actors::schedule::from_config(graph.schedule.as_ref(), Some(n), stages))
        .collect()
}
