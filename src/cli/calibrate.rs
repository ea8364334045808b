//! `troupe calibrate --out machine.toml`: this machine as a simulator hardware file. Kernel
//! micro-benchmarks give the roofline (streaming read bandwidth and the f32 FMA rate of the
//! active kernel path, `attention_cost.rs`); two real decode runs of the actor runtime (one
//! stream, `sequential`, 1 and `--seqs` sequences) then fix the two factors no micro-benchmark
//! sees — the kernels' efficiency against the roofline and the cost of an actor hop — by solving
//! the simulator's own step time, which is linear in 1/efficiency and in the hop, for both runs.
//! Also the real side of `troupe simulate --measure`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use troupe_actors::bench::{step_times, BenchOptions};
use troupe_actors::placement::PlacementSpec;
use troupe_actors::schedule::Sequential;
use troupe_actors::Schedule;
use troupe_engine::graph::file::LoadedGraph;
use troupe_engine::kernels::attention_cost::{measure_fma_rate, measure_read_bandwidth};
use troupe_engine::model::Model;
use troupe_sim::cost::ModelCost;
use troupe_sim::hardware::{Compute, DeviceKind, RuntimeCosts, TransferBytes};
use troupe_sim::{report, Hardware, Layout, Simulation};

use super::common::CliError;

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// Where to write the hardware file.
    #[arg(long)]
    pub out: PathBuf,
    /// The model the two real runs decode (random weights are generated).
    #[arg(long, short = 'm', default_value = "graphs/ds-v3-mini.toml")]
    pub model: PathBuf,
    /// Sequences of the second run.
    #[arg(long, default_value_t = 4)]
    pub seqs: usize,
    /// Decode steps per run (median kept).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Prompt tokens before decoding.
    #[arg(long, default_value_t = 16)]
    pub context: usize,
}

/// Median decode step (seconds) of a real actor runtime on `model`.
pub fn measure(
    model: &Arc<Model>,
    placement: &PlacementSpec,
    schedule: &Arc<dyn Schedule>,
    seqs: usize,
    context: usize,
    steps: usize,
) -> Result<f64, CliError> {
    let o = BenchOptions {
        sequences: seqs,
        prompt_len: context,
        steps: steps.max(1),
        schedules: vec![schedule.clone()],
        ..BenchOptions::default()
    };
    let mut t = step_times(model.clone(), placement, schedule, &o)
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Simulated mean decode step (seconds) of `graph` on `hw`, one stream, sequential.
fn simulate_one(graph: &LoadedGraph, hw: &Hardware, seqs: usize, a: &CalibrateArgs) -> Result<f64, CliError> {
    let err = |e: troupe_sim::SimError| CliError::Runtime(e.to_string());
    let experts = ModelCost::from_spec(&graph.spec, None, 4.0).layer_experts();
    let layout = Layout::from_table(None, &experts, None, hw).map_err(err)?;
    let mut sim = Simulation::new(&graph.spec, layout, Arc::new(Sequential), hw.clone()).map_err(err)?;
    let r = report::decode(&mut sim, seqs, a.context, a.steps).map_err(err)?;
    Ok(r.step_ms / 1e3)
}

pub fn run(a: CalibrateArgs) -> Result<(), CliError> {
    let wall = Instant::now();
    let graph = LoadedGraph::open(&a.model)?;
    let gbps = measure_read_bandwidth();
    let gflops = measure_fma_rate();
    let mut hw = Hardware {
        name: "this machine (troupe calibrate)".into(),
        kind: DeviceKind::Cpu,
        gpus_per_node: 8,
        compute: Compute {
            tflops_bf16: gflops / 1e3,
            tflops_fp8: None,
            tflops_f32: None,
            memory_gbps: gbps,
            efficiency: 1.0,
            launch_us: 0.0,
        },
        runtime: RuntimeCosts {
            hop_us: 0.0,
            issue_us: 0.0,
        },
        nvlink: None,
        network: None,
        transfer: TransferBytes::default(),
        weight_bytes: None,
    };
    let model = Arc::new(Model::load(&graph, &mut |_, _| {})?);
    let schedule: Arc<dyn Schedule> = Arc::new(Sequential);
    let one = PlacementSpec::default();
    let seqs = a.seqs.max(2);
    let measured = [
        measure(&model, &one, &schedule, 1, a.context, a.steps)?,
        measure(&model, &one, &schedule, seqs, a.context, a.steps)?,
    ];
    // Step time = roofline / efficiency + hops · hop: the simulator's own coefficients.
    let mut coef = Vec::new();
    for (i, n) in [1, seqs].into_iter().enumerate() {
        let base = simulate_one(&graph, &hw, n, &a)?;
        let mut h = hw.clone();
        h.runtime.hop_us = 1.0;
        let per_hop = simulate_one(&graph, &h, n, &a)? - base;
        coef.push((base, per_hop, measured[i]));
    }
    let [(r1, h1, m1), (r2, h2, m2)] = [coef[0], coef[1]];
    // Solve m = r·x + h·y for x = 1/efficiency, y = hop (µs).
    let det = r1 * h2 - r2 * h1;
    let (mut x, mut y) = match det.abs() > 1e-18 {
        true => ((m1 * h2 - m2 * h1) / det, (r1 * m2 - r2 * m1) / det),
        false => (m1 / r1, 0.0),
    };
    if y < 0.0 {
        // Overheads cannot be negative: roofline only, fitted to the larger run.
        y = 0.0;
        x = m2 / r2;
    }
    if x < 1.0 {
        x = 1.0;
        y = ((m1 - r1) / h1).max(0.0);
    }
    hw.compute.efficiency = (1.0 / x).clamp(1e-3, 1.0);
    hw.runtime.hop_us = y;
    let text = format!(
        "# Written by `troupe calibrate` on this machine in {:.1} s: read bandwidth and FMA rate from\n\
         # micro-benchmarks; efficiency and hop_us fitted to real decode steps of {} (sequential,\n\
         # one stream): {:.3} ms at 1 sequence, {:.3} ms at {} (median of {} steps after a {}-token prompt).\n{}",
        wall.elapsed().as_secs_f64(),
        a.model.display(),
        m1 * 1e3,
        m2 * 1e3,
        seqs,
        a.steps,
        a.context,
        hw.to_toml()
    );
    std::fs::write(&a.out, text).map_err(|e| CliError::Output {
        path: a.out.display().to_string(),
        message: e.to_string(),
    })?;
    println!(
        "read {gbps:.1} GB/s, FMA {gflops:.1} GFLOP/s, efficiency {:.3}, hop {:.1} µs -> {}",
        hw.compute.efficiency,
        hw.runtime.hop_us,
        a.out.display()
    );
    Ok(())
}
