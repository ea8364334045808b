//! `troupe calibrate --out machine.toml`: this machine as a simulator hardware file. Kernel
//! micro-benchmarks give the roofline (streaming read bandwidth and the f32 FMA rate of the
//! active kernel path, `attention_cost.rs`); two real decode runs of the actor runtime (one
//! stream, `sequential`, 1 and `--seqs` sequences) then fix the two factors no micro-benchmark
//! sees — the kernels' efficiency against the roofline and the CPU time each kernel costs beyond
//! it (launch: queueing, messages, wake-ups, which on a CPU take the cores the kernels use) — by
//! solving the simulator's own step time, linear in 1/efficiency and in that cost, for both runs.
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
    /// Decode steps per run (the fastest kept).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Prompt tokens before decoding.
    #[arg(long, default_value_t = 16)]
    pub context: usize,
}

/// Fastest of `steps` decode steps (seconds) of a real actor runtime on `model`: the step least
/// disturbed by other load on the machine (calibration and `--measure` use the same rule).
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
    let t = step_times(model.clone(), placement, schedule, &o)
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    Ok(t.into_iter().fold(f64::INFINITY, f64::min))
}

/// Simulated mean decode step (seconds) of `graph` on `hw`, one stream, sequential.
fn simulate_one(
    graph: &LoadedGraph,
    hw: &Hardware,
    seqs: usize,
    a: &CalibrateArgs,
) -> Result<f64, CliError> {
    let err = |e: troupe_sim::SimError| CliError::Runtime(e.to_string());
    let experts = ModelCost::from_spec(&graph.spec, None, 4.0).layer_experts();
    let layout = Layout::from_table(None, &experts, None, hw).map_err(err)?;
    let mut sim =
        Simulation::new(&graph.spec, layout, Arc::new(Sequential), hw.clone()).map_err(err)?;
    let r = report::decode(&mut sim, seqs, a.context, a.steps).map_err(err)?;
    Ok(r.step_ms / 1e3)
}

/// Fits `m = r·x + k·y` (x = 1/efficiency ≥ 1, y = launch µs ≥ 0) to runs `(r, k, m)`: the
/// exact solution of the two equations when it is in range, else the boundary candidate (no
/// launch cost, or the full roofline) whose worst relative error over the runs is smallest.
fn fit(runs: &[(f64, f64, f64)]) -> (f64, f64) {
    let worst = |x: f64, y: f64| {
        runs.iter()
            .map(|&(r, k, m)| ((r * x + k * y) / m - 1.0).abs())
            .fold(0.0, f64::max)
    };
    let mut candidates = Vec::new();
    if let [(r1, k1, m1), (r2, k2, m2)] = runs {
        let det = r1 * k2 - r2 * k1;
        if det.abs() > 1e-18 {
            candidates.push(((m1 * k2 - m2 * k1) / det, (r1 * m2 - r2 * m1) / det));
        }
    }
    // y = 0: x balancing the relative errors of the runs.
    let inv: f64 = runs.iter().map(|&(r, _, m)| r / m).sum::<f64>();
    candidates.push((runs.len() as f64 / inv, 0.0));
    // x = 1: y the mean of what each run leaves for its kernels.
    let y1 = runs
        .iter()
        .map(|&(r, k, m)| (m - r) / k.max(1e-12))
        .sum::<f64>()
        / runs.len() as f64;
    candidates.push((1.0, y1.max(0.0)));
    candidates
        .into_iter()
        .filter(|&(x, y)| x.is_finite() && y.is_finite() && x >= 1.0 && y >= 0.0)
        .min_by(|a, b| worst(a.0, a.1).total_cmp(&worst(b.0, b.1)))
        .unwrap_or((1.0, 0.0))
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
    // Step time = roofline / efficiency + kernels · launch: the simulator's own coefficients.
    let mut coef = Vec::new();
    for (i, n) in [1, seqs].into_iter().enumerate() {
        let base = simulate_one(&graph, &hw, n, &a)?;
        let mut h = hw.clone();
        h.compute.launch_us = 1.0;
        let per_launch = simulate_one(&graph, &h, n, &a)? - base;
        coef.push((base, per_launch, measured[i]));
    }
    let (x, y) = fit(&coef);
    hw.compute.efficiency = (1.0 / x).clamp(1e-3, 1.0);
    hw.compute.launch_us = y;
    let text = format!(
        "# Written by `troupe calibrate` on this machine in {:.1} s: read bandwidth and FMA rate from\n\
         # micro-benchmarks; efficiency and launch_us fitted to real decode steps of {} (sequential,\n\
         # one stream): {:.3} ms at 1 sequence, {:.3} ms at {} (fastest of {} steps after a {}-token prompt).\n{}",
        wall.elapsed().as_secs_f64(),
        a.model.display(),
        measured[0] * 1e3,
        measured[1] * 1e3,
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
        "read {gbps:.1} GB/s, FMA {gflops:.1} GFLOP/s, efficiency {:.3}, launch {:.1} µs -> {}",
        hw.compute.efficiency,
        hw.compute.launch_us,
        a.out.display()
    );
    Ok(())
}
