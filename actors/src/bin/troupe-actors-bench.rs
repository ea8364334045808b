//! `troupe-actors-bench MODEL [SEQS] [NEW_TOKENS]`: decode tokens/s (actors vs reference) and the
//! link time hidden by two-microbatch vs sequential, with the link at 100 µs / 10 Gbit/s.

use std::sync::Arc;

use troupe_actors::bench::{run, BenchOptions};
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::Model;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: troupe-actors-bench MODEL [SEQS] [NEW_TOKENS]");
        std::process::exit(2);
    };
    let mut o = BenchOptions::default();
    if let Some(n) = args.next().and_then(|s| s.parse().ok()) {
        o.sequences = n;
    }
    if let Some(n) = args.next().and_then(|s| s.parse().ok()) {
        o.new_tokens = n;
    }
    let result = (|| -> Result<String, Box<dyn std::error::Error>> {
        let graph = LoadedGraph::open(std::path::Path::new(&path))?;
        let model = Arc::new(Model::load(&graph, &mut |_, _| {})?);
        Ok(run(model, graph.placement.as_ref(), &o)?.to_string())
    })();
    match result {
        Ok(r) => print!(
            "{path}: {} sequences × {} prompt tokens, {} new tokens\n{r}",
            o.sequences, o.prompt_len, o.new_tokens
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
