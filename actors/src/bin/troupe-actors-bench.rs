//! `troupe-actors-bench MODEL [SEQS] [STEPS] [--no-link] [--profile actors|reference [--trace F]]`: decode
//! tokens/s of the actor runtime vs the reference executor (interleaved, median step) and the
//! link time hidden per schedule with the link at 100 µs / 10 Gbit/s. `--profile` runs decode
//! steps of one contender only (for `perf record`); `--trace F` writes its Chrome trace.

use std::sync::Arc;

use troupe_actors::bench::{profile, run, BenchOptions};
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::Model;

fn main() {
    let mut o = BenchOptions::default();
    let mut positional = Vec::new();
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-link" => o.with_link = false,
            "--profile" => only = args.next(),
            "--trace" => o.trace = args.next().map(Into::into),
            _ => positional.push(a),
        }
    }
    let Some(path) = positional.first().cloned() else {
        eprintln!("usage: troupe-actors-bench MODEL [SEQS] [STEPS] [--no-link] [--profile actors|reference [--trace F]]");
        std::process::exit(2);
    };
    if let Some(n) = positional.get(1).and_then(|s| s.parse().ok()) {
        o.sequences = n;
    }
    if let Some(n) = positional.get(2).and_then(|s| s.parse().ok()) {
        o.steps = n;
    }
    let result = (|| -> Result<String, Box<dyn std::error::Error>> {
        let graph = LoadedGraph::open(std::path::Path::new(&path))?;
        let model = Arc::new(Model::load(&graph, &mut |_, _| {})?);
        Ok(match &only {
            Some(which) => format!(
                "{which}: {:.1} decode tok/s (median step)\n",
                profile(model, graph.placement.as_ref(), &o, which)?
            ),
            None => run(model, graph.placement.as_ref(), &o)?.to_string(),
        })
    })();
    match result {
        Ok(r) => print!(
            "{path}: {} sequences × {} prompt tokens\n{r}",
            o.sequences, o.prompt_len
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
