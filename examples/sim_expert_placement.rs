//! Research API: sweep expert placements in the simulator. DeepSeek-V3 671B decodes on 64
//! simulated H800s (8 nodes) with a skewed routing trace (per layer, expert loads falling as
//! 1/rank^1.2 over a shuffled expert order); two placements of each layer's 256 experts are
//! compared at several batch sizes: round-robin (`--gpus`' contiguous groups of 4) and DeepSeek's
//! EPLB (`troupe::actors::placement::eplb`, 320 slots: 64 redundant experts, 5 per GPU). Prints
//! a table and writes `target/sim-expert-placement.svg` (tokens/s against batch size).
//!
//! `cargo run --release --example sim_expert_placement`

use std::sync::Arc;

use troupe::actors::placement::eplb::rebalance_experts;
use troupe::actors::schedule::TwoMicroBatch;
use troupe::engine::graph::file::LoadedGraph;
use troupe::sim::cost::ModelCost;
use troupe::sim::{report, svg, Hardware, Layout, Simulation};

const GPUS: usize = 64;

/// Per layer, a skewed load over the layer's experts (empty for dense layers).
fn skewed_load(experts: &[Option<usize>]) -> Vec<Vec<f64>> {
    let mut x = 0x9e3779b97f4a7c15u64;
    experts
        .iter()
        .map(|e| match e {
            None => Vec::new(),
            Some(n) => {
                let mut order: Vec<usize> = (0..*n).collect();
                for i in (1..*n).rev() {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    order.swap(i, (x >> 33) as usize % (i + 1));
                }
                let mut load = vec![0.0; *n];
                for (rank, &expert) in order.iter().enumerate() {
                    load[expert] = 1.0 / ((rank + 1) as f64).powf(1.2);
                }
                load
            }
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = env!("CARGO_MANIFEST_DIR");
    let graph = LoadedGraph::open(format!("{root}/graphs/deepseek-v3-671b.toml").as_ref())?;
    let hw = Hardware::load("h800")?;
    let experts = ModelCost::from_spec(&graph.spec, None, 2.0).layer_experts();
    let load = skewed_load(&experts);
    let moe_layers: Vec<usize> = (0..experts.len())
        .filter(|&l| experts[l].is_some())
        .collect();
    let moe_load: Vec<Vec<f64>> = moe_layers.iter().map(|&l| load[l].clone()).collect();
    let plan = rebalance_experts(&moe_load, 320, 8, GPUS / 8, GPUS)?;
    let batches = [1024usize, 4096, 16384];
    let mut series = Vec::new();
    println!("placement     batch  step ms  tokens/s");
    for name in ["round-robin", "eplb"] {
        let mut tps = Vec::new();
        for &seqs in &batches {
            let mut layout = Layout::gpus(GPUS, &experts, &hw)?;
            if name == "eplb" {
                for (i, &l) in moe_layers.iter().enumerate() {
                    let groups = (0..GPUS).map(|d| (plan.device_experts(i, d), d)).collect();
                    layout.set_expert_groups(l, groups)?;
                }
            }
            let schedule = Arc::new(TwoMicroBatch::default());
            let mut sim = Simulation::new(&graph.spec, layout, schedule, hw.clone())?;
            sim.set_expert_load(load.clone())?;
            let r = report::decode(&mut sim, seqs, 2048, 5)?;
            println!(
                "{name:<12} {seqs:>6} {:>8.2} {:>9.0}",
                r.step_ms, r.tokens_per_s
            );
            tps.push(r.tokens_per_s);
        }
        series.push((name.to_string(), tps));
    }
    let x: Vec<String> = batches.iter().map(|b| b.to_string()).collect();
    let text = svg::lines(
        &x,
        &series,
        "tokens/s",
        "671B on 64 H800s, skewed routing: tokens/s against batch",
    );
    let path = format!("{root}/target/sim-expert-placement.svg");
    std::fs::write(&path, text)?;
    println!("wrote {path}");
    Ok(())
}
