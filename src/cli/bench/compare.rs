//! `troupe bench --compare`: the actor runtime's decode tokens/s against the reference
//! executor's, interleaved in one process (`troupe_actors::bench`: `--seqs` sequences prefilled
//! with `-p` tokens, `-r` rounds, median step), and the fraction of link time each schedule hides
//! (link at 100 µs / 10 Gbit/s; `--no-link` skips it); `--profile actors|reference [--trace F]`
//! runs one contender's decode steps alone, for `perf record`.

use troupe_actors::bench::Contender;

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
    let o = troupe_actors::bench::BenchOptions {
        sequences: a.seqs.unwrap_or(8),
        prompt_len: a.n_prompt.unwrap_or(PREFILL_LEN),
        steps: a.reps,
        with_link: !a.no_link,
        trace: a.trace.clone(),
        ..Default::default()
    };
    println!(
        "model: {}  threads: {}  runtime: actors vs reference  sequences: {}  prompt tokens: {}  rounds: {}",
        a.run.model.display(),
        rayon::current_num_threads(),
        o.sequences,
        o.prompt_len,
        o.steps
    );
    let placement = graph.placement.as_ref();
    let runtime_err = |e: troupe_actors::ActorError| CliError::Runtime(e.to_string());
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
