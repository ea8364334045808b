//! `troupe calibrate --out machine.toml`: this machine as a simulator hardware file. A
//! micro-benchmark gives the streaming read bandwidth, and another the f32 FMA rate of the active
//! kernel path (`attention_cost.rs`) — only a ceiling: decode's kernels, a few rows each, reach
//! a fraction of it, and their per-row work (norms, routing, gathers, attention per sequence)
//! is not in the FLOP count. So real decode runs of the actor runtime (`sequential`: one stream
//! with 1, 2, `--seqs` and twice `--seqs` sequences, two streams with `--seqs`, and the experts
//! across a link; `--rounds` rounds of all of them in turn, each keeping its fastest step) fix
//! what no micro-benchmark sees, by searching the simulator's own step time or by reading the
//! runtime's traces:
//! 1. the roofline's FLOP rate and efficiency (the one-stream runs), which remain for kernel
//!    kinds not measured and for attention's context beyond the measured one;
//! 2. the kernels' own times, traced (`calibrate_kernels.rs`): per kind, the median call
//!    against its rows (`[kernels]`), and the stream's cost per call (`compute.launch_us`);
//! 3. the actor hops' latency, read from the same traces (`runtime.hop_us`, and a router's
//!    fan-out: `runtime.fanout_us`, `runtime.fanout_message_us`);
//! 4. the shared cores' speedup when two streams run kernels at once
//!    (`compute.stream_speedup`, see `troupe_sim`'s `device.rs`);
//! 5. with the experts across a `[placement.link]` (`Runs::ExpertsAcrossLink`, traced), how
//!    long a stream takes to wake for a kernel held for its input (`runtime.link_wake_us`);
//!    the run's measured step is printed beside the simulated one, not fitted.
//!
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
use troupe_sim::hardware::{Compute, DeviceKind, Roofline, RuntimeCosts, TransferBytes};
use troupe_sim::measured::MeasuredKernels;
use troupe_sim::{report, Hardware, Layout, Simulation};

use super::calibrate_kernels::{hop_gaps, kernel_times, launch_gap, link_wake, traced_run};
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
    #[arg(long, default_value_t = 15)]
    pub steps: usize,
    /// Rounds of the untraced runs: each round runs every configuration once in turn, and each
    /// keeps its fastest step over all rounds. Step times here drift by ±5% over seconds
    /// (one stream, 8 sequences: 93–117 ms within one run of 60 steps), so one run per
    /// configuration left each calibrated figure that much apart from the next calibration.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
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

/// The placements of the calibration runs.
#[derive(Clone, Copy)]
enum Runs {
    OneStream,
    TwoStreams,
    /// Two streams on two nodes, the experts on the second across a 5 Gbit/s link with 250 µs
    /// of latency (no row of `bench/sim-validate.sh` uses it), traced for the stream's wake-up
    /// after an arrival (`link_wake_us`). Until session 19 a cost per transfer on the wire
    /// (`link_hop_us`) was fitted to this run's step instead: it moved from 24 to 128 µs
    /// between two calibrations, while a link of 1000 Gbit/s and 1 µs costs the real runtime
    /// nothing measurable over no link at all (48.8–50.3 against 49.7–50.2 ms).
    ExpertsAcrossLink,
}

impl Runs {
    /// The `[placement]` table.
    fn table(self) -> Result<toml::Table, CliError> {
        let text = match self {
            Runs::OneStream => "streams = 1",
            Runs::TwoStreams => "streams = 2",
            Runs::ExpertsAcrossLink => {
                "streams = 2\nnodes = 2\nexpert_nodes = [1]\nlink = { gbps = 5.0, latency_us = 250.0 }"
            }
        };
        text.parse()
            .map_err(|e| CliError::Runtime(format!("calibration placement: {e}")))
    }

    /// The placement the runtime resolves.
    fn placement(self) -> Result<PlacementSpec, CliError> {
        PlacementSpec::from_table(Some(&self.table()?))
            .map_err(|e| CliError::Runtime(e.to_string()))
    }
}

/// Simulated decode step (seconds) of `graph` on `hw` on calibration placement `on`,
/// sequential.
fn simulate_one(
    graph: &LoadedGraph,
    hw: &Hardware,
    on: Runs,
    seqs: usize,
    a: &CalibrateArgs,
) -> Result<f64, CliError> {
    let err = |e: troupe_sim::SimError| CliError::Runtime(e.to_string());
    let experts = ModelCost::from_spec(&graph.spec, None, 4.0).layer_experts();
    let layout = Layout::from_table(Some(&on.table()?), &experts, None, hw).map_err(err)?;
    let mut sim =
        Simulation::new(&graph.spec, layout, Arc::new(Sequential), hw.clone()).map_err(err)?;
    let r = report::decode(&mut sim, seqs, a.context, a.steps).map_err(err)?;
    Ok(r.step_ms / 1e3)
}

/// The value of `grid` that, put into `hw` by `set`, brings the simulated step of `run`
/// (placement, sequences, measured seconds) closest to the measured one; `hw` keeps it.
/// Returns (relative error, value).
fn fit_on_grid(
    graph: &LoadedGraph,
    hw: &mut Hardware,
    grid: impl Iterator<Item = f64>,
    set: impl Fn(&mut Hardware, f64),
    (on, n, m): (Runs, usize, f64),
    a: &CalibrateArgs,
) -> Result<(f64, f64), CliError> {
    let mut best = (f64::INFINITY, 0.0);
    for v in grid {
        set(hw, v);
        let err = (simulate_one(graph, hw, on, n, a)? / m - 1.0).abs();
        if err < best.0 {
            best = (err, v);
        }
    }
    set(hw, best.1);
    Ok(best)
}

/// The factor `x ≥ 1` that, multiplying every simulated time, balances the relative errors of
/// the runs `(simulated, measured)` (the smallest worst error), and that worst error.
fn balance(runs: &[(f64, f64)]) -> (f64, f64) {
    let x = balancing_factor(runs).max(1.0);
    let worst = runs
        .iter()
        .map(|&(s, m)| (x * s / m - 1.0).abs())
        .fold(0.0, f64::max);
    (x, worst)
}

/// The factor `x` (any sign of `x − 1`) that, multiplying every simulated time, gives the
/// runs `(simulated, measured)` the smallest worst relative error.
fn balancing_factor(runs: &[(f64, f64)]) -> f64 {
    let lo = runs
        .iter()
        .map(|&(s, m)| m / s)
        .fold(f64::INFINITY, f64::min);
    let hi = runs.iter().map(|&(s, m)| m / s).fold(0.0, f64::max);
    // Worst relative error |x·s/m − 1| is smallest where the largest over- and under-estimates
    // meet: x = 2 / (1/lo + 1/hi).
    2.0 / (1.0 / lo + 1.0 / hi)
}

/// Candidates for the kernels' FLOP rate (GFLOP/s): 48 steps from `top / 200` up to `top`,
/// evenly on a log scale.
fn rate_candidates(top: f64) -> impl Iterator<Item = f64> {
    (0..48).map(move |i| top * (200f64).powf(i as f64 / 47.0 - 1.0))
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
            stream_speedup: None,
            roofline: None,
        },
        runtime: RuntimeCosts {
            hop_us: 0.0,
            issue_us: 0.0,
            link_hop_us: 0.0,
            link_wake_us: 0.0,
            fanout_us: 0.0,
            fanout_message_us: 0.0,
        },
        nvlink: None,
        network: None,
        transfer: TransferBytes::default(),
        weight_bytes: None,
        kernels: None,
    };
    let model = Arc::new(Model::load(&graph, &mut |_, _| {})?);
    let schedule: Arc<dyn Schedule> = Arc::new(Sequential);
    let seqs = a.seqs.max(2);
    // One stream at 1, 2, `seqs` and twice `seqs` sequences (the traced runs below measure the
    // kernels at the same row counts), two streams, and the experts across the link, in rounds.
    let mut counts = vec![1, 2, seqs, 2 * seqs];
    counts.dedup();
    let mut configs: Vec<(Runs, usize, f64)> = counts
        .iter()
        .map(|&n| (Runs::OneStream, n, f64::INFINITY))
        .collect();
    configs.push((Runs::TwoStreams, seqs, f64::INFINITY));
    configs.push((Runs::ExpertsAcrossLink, seqs, f64::INFINITY));
    for _ in 0..a.rounds.max(1) {
        for (on, n, fastest) in &mut configs {
            let t = measure(&model, &on.placement()?, &schedule, *n, a.context, a.steps)?;
            *fastest = fastest.min(t);
        }
    }
    let across_link = configs
        .pop()
        .ok_or_else(|| CliError::Runtime("no link run".into()))?;
    let two_streams = configs
        .pop()
        .ok_or_else(|| CliError::Runtime("no two-stream run".into()))?;
    let one_stream = configs;
    // One stream: the step is the kernels' times end to end, so efficiency scales it exactly
    // and the FLOP rate (and how it combines with memory time) decides how it grows with the
    // sequences. Each candidate gets the efficiency balancing the three one-stream runs; the
    // one with the smallest worst error wins.
    let mut best = (f64::INFINITY, gflops, 1.0, Roofline::Max);
    for roofline in [Roofline::Max, Roofline::Sum] {
        hw.compute.roofline = Some(roofline);
        for rate in rate_candidates(gflops) {
            hw.compute.tflops_bf16 = rate / 1e3;
            let mut pairs = Vec::new();
            for &(on, n, m) in &one_stream {
                pairs.push((simulate_one(&graph, &hw, on, n, &a)?, m));
            }
            let (x, worst) = balance(&pairs);
            if worst < best.0 {
                best = (worst, rate, x, roofline);
            }
        }
    }
    hw.compute.roofline = Some(best.3);
    hw.compute.tflops_bf16 = best.1 / 1e3;
    hw.compute.efficiency = (1.0 / best.2).clamp(1e-3, 1.0);
    // The kernels' own times, traced at 1, 2, `seqs` and twice `seqs` sequences, replace that
    // roofline for the kinds they cover (it stays for attention's context beyond the measured
    // one); the stream's cost per call is the gap between expert calls, and the actor hops'
    // latency the other gaps (`calibrate_kernels.rs`).
    // One list of calls per run: each run's trace has its own clock.
    let one_stream_placement = Runs::OneStream.placement()?;
    let runs = counts
        .iter()
        .map(|&n| Ok(traced_run(&model, &one_stream_placement, n, a.context, a.steps)?.0))
        .collect::<Result<Vec<_>, CliError>>()?;
    hw.kernels = Some(MeasuredKernels {
        context: a.context as f64 + (a.steps.max(1) - 1) as f64 / 2.0,
        times: kernel_times(&runs.concat()),
    });
    hw.compute.launch_us = launch_gap(&runs).unwrap_or(0.0);
    if let Some(h) = hop_gaps(&runs, hw.compute.launch_us) {
        hw.runtime.hop_us = h.hop;
        hw.runtime.fanout_us = h.fanout_base;
        hw.runtime.fanout_message_us = h.per_message;
    }
    // The traced calls are medians and carry the tracer's own cost, while the runs above are
    // each their fastest step. Every curve's point at n rows comes from the traced run of n
    // sequences, so those points are scaled together until the simulated one-stream step of n
    // sequences is the measured one (three rounds, because the hops do not scale).
    let one_stream_pairs = |hw: &Hardware| -> Result<Vec<(f64, f64)>, CliError> {
        one_stream
            .iter()
            .map(|&(on, n, m)| Ok((simulate_one(&graph, hw, on, n, &a)?, m)))
            .collect()
    };
    let mut scales = vec![1.0; counts.len()];
    for _ in 0..3 {
        let pairs = one_stream_pairs(&hw)?;
        for ((&n, &(sim, measured)), scale) in counts.iter().zip(&pairs).zip(&mut scales) {
            if let Some(k) = hw.kernels.as_mut() {
                k.times.scale_at(n as f64, measured / sim);
            }
            *scale *= measured / sim;
        }
    }
    let one_stream_error = one_stream_pairs(&hw)?
        .iter()
        .map(|&(s, m)| (s / m - 1.0).abs())
        .fold(0.0, f64::max);
    // Two streams: the speedup of the shared cores that matches that run (1–2, steps of 0.02).
    let speedup = fit_on_grid(
        &graph,
        &mut hw,
        (0..=50).map(|i| 1.0 + i as f64 * 0.02),
        |hw, g| hw.compute.stream_speedup = Some(g),
        two_streams,
        &a,
    )?;
    // The link: the stream's wake-up for a held kernel, read from a traced run; the untraced
    // run's step is only compared.
    let (link_calls, arrivals) = traced_run(
        &model,
        &Runs::ExpertsAcrossLink.placement()?,
        seqs,
        a.context,
        a.steps,
    )?;
    hw.runtime.link_wake_us = link_wake(&link_calls, &arrivals).unwrap_or(0.0);
    let link_error =
        simulate_one(&graph, &hw, Runs::ExpertsAcrossLink, seqs, &a)? / across_link.2 - 1.0;
    let runs: Vec<String> = one_stream
        .iter()
        .map(|&(_, n, m)| format!("{:.3} ms at {n}", m * 1e3))
        .collect();
    let text = format!(
        "# Written by `troupe calibrate` on this machine in {:.1} s. Read bandwidth from a micro-benchmark\n\
         # ({gbps:.1} GB/s; FMA micro-benchmark {gflops:.1} GFLOP/s, the ceiling of the rate below); the\n\
         # kernels' FLOP rate (tflops_bf16) and efficiency fitted to real decode steps of {} (sequential,\n\
         # one stream, by sequences): {}; [kernels] traced on one stream at the same\n\
         # sequences (the median call per kind and rows, scaled {scales:.3?} to those runs), launch_us\n\
         # the median gap between expert calls, hop_us and the fan-out from the other gaps;\n\
         # stream_speedup to {:.3} ms at {seqs} on two streams; link_wake_us from a traced run with\n\
         # the experts across a 5 Gbit/s link, 250 µs (untraced: {:.3} ms at {seqs}, simulated {:+.1}%)\n\
         # (untraced runs: the fastest of {} rounds of {} steps after a {}-token prompt).\n{}",
        wall.elapsed().as_secs_f64(),
        a.model.display(),
        runs.join(", "),
        two_streams.2 * 1e3,
        across_link.2 * 1e3,
        link_error * 100.0,
        a.rounds.max(1),
        a.steps,
        a.context,
        hw.to_toml()
    );
    std::fs::write(&a.out, text).map_err(|e| CliError::Output {
        path: a.out.display().to_string(),
        message: e.to_string(),
    })?;
    println!(
        "read {gbps:.1} GB/s, FMA {gflops:.1} GFLOP/s; fitted: kernels {:.1} GFLOP/s ({:?}), efficiency {:.3} \
         (worst one-stream error {:.1}%); measured kernel times (scaled {:.3?}), launch {:.1} µs, hop {:.0} µs, fan-out {:.0} µs + \
         {:.1} µs a message (worst one-stream error {:.1}%); stream speedup {:.2}, link wake {:.0} µs (link run simulated {:+.1}%) -> {}",
        best.1,
        best.3,
        hw.compute.efficiency,
        best.0 * 100.0,
        scales,
        hw.compute.launch_us,
        hw.runtime.hop_us,
        hw.runtime.fanout_us,
        hw.runtime.fanout_message_us,
        one_stream_error * 100.0,
        speedup.1,
        hw.runtime.link_wake_us,
        link_error * 100.0,
        a.out.display()
    );
    Ok(())
}
