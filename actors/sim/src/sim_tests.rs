//! End-to-end checks of the simulator on the repository's graph files: a schedule written
//! outside the runtime runs unchanged; schedule misuse is refused as the runtime refuses it;
//! overlap shows where it should; the trace reads back with `trace_stats`' numbers; 671B
//! resolves and runs from its description alone; measured kernel times replace the roofline.

use std::sync::Arc;

use troupe_actors::schedule::{Pipeline, Sequential, TwoMicroBatch};
use troupe_actors::{ActorError, ForwardPass, Op, Schedule};
use troupe_engine::graph::file::LoadedGraph;

use crate::cost::ModelCost;
use crate::{report, Hardware, Layout, SimError, Simulation};

fn graph(name: &str) -> LoadedGraph {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../graphs")
        .join(name);
    LoadedGraph::open(&path).unwrap()
}

fn sim(g: &LoadedGraph, placement: &str, schedule: Arc<dyn Schedule>, hw: &str) -> Simulation {
    sim_on(g, placement, schedule, Hardware::load(hw).unwrap())
}

/// As [`sim`], on a hardware description built in the test.
fn sim_on(
    g: &LoadedGraph,
    placement: &str,
    schedule: Arc<dyn Schedule>,
    hw: Hardware,
) -> Simulation {
    let table: Option<toml::Table> = match placement {
        "" => None,
        p => Some(toml::from_str(p).unwrap()),
    };
    let experts = ModelCost::from_spec(&g.spec, None, 4.0).layer_experts();
    let layout = Layout::from_table(table.as_ref(), &experts, None, &hw).unwrap();
    Simulation::new(&g.spec, layout, schedule, hw).unwrap()
}

/// The custom schedule of `examples/custom_schedule.rs`, as a user writes it.
struct LayerSynchronous;

impl Schedule for LayerSynchronous {
    fn name(&self) -> &str {
        "layer-synchronous"
    }
    fn run(&self, pass: &mut ForwardPass<'_>) -> troupe_actors::Result<()> {
        let mbs = (0..pass.n_sequences())
            .map(|i| pass.micro_batch(i..i + 1))
            .collect::<Result<Vec<_>, _>>()?;
        for l in 0..pass.n_layers() {
            for op in Op::layer_ops(l) {
                for &mb in &mbs {
                    pass.issue(mb, &[op])?;
                }
                for &mb in &mbs {
                    pass.wait(mb)?;
                }
            }
        }
        Ok(())
    }
}

/// Issues layer 1 before layer 0: the pass refuses it.
struct OutOfOrder;

impl Schedule for OutOfOrder {
    fn name(&self) -> &str {
        "out-of-order"
    }
    fn run(&self, pass: &mut ForwardPass<'_>) -> troupe_actors::Result<()> {
        let mb = pass.micro_batch(0..pass.n_sequences())?;
        pass.issue(mb, &[Op::Attention(1)])
    }
}

const LINKED: &str =
    "streams = 2\nnodes = 2\nexpert_nodes = [1]\n[link]\ngbps = 10.0\nlatency_us = 3000.0\n";

#[test]
fn a_custom_schedule_runs_unchanged_and_misuse_is_refused() {
    let g = graph("ds-v3-mini.toml");
    let mut s = sim(&g, "streams = 2", Arc::new(LayerSynchronous), "cpu");
    let r = report::decode(&mut s, 4, 32, 2).unwrap();
    assert!(r.step_ms > 0.0 && r.tokens_per_s > 0.0, "{r}");
    let mut s = sim(&g, "", Arc::new(OutOfOrder), "cpu");
    match report::decode(&mut s, 2, 8, 1) {
        Err(SimError::Actor(ActorError::ScheduleMisuse { schedule, .. })) => {
            assert_eq!(schedule, "out-of-order")
        }
        other => panic!("expected a schedule misuse, got {other:?}"),
    }
}

#[test]
fn two_micro_batches_hide_link_time_that_sequential_exposes() {
    let g = graph("ds-v3-mini.toml");
    let mut seq = sim(&g, LINKED, Arc::new(Sequential), "cpu");
    let a = report::decode(&mut seq, 8, 64, 3).unwrap();
    let mut two = sim(&g, LINKED, Arc::new(TwoMicroBatch::default()), "cpu");
    let b = report::decode(&mut two, 8, 64, 3).unwrap();
    assert!(a.transfers > 0 && b.transfers > 0);
    // While one micro-batch waits on the link the other computes: far less link time exposed.
    // (Not necessarily a shorter step: on one CPU each micro-batch reads its experts' weights
    // again.)
    assert!(b.link_exposed_ms < 0.5 * a.link_exposed_ms, "{a}\n{b}");
}

#[test]
fn a_pipeline_over_two_stages_overlaps_them() {
    let g = graph("ds-v3-mini.toml");
    let two_stages = "streams = 2\nstages = 2\nexpert_group_size = 32\n";
    let prefill = [crate::SeqStep {
        rows: 256,
        start: 0,
    }; 8];
    let mut one = sim(&g, two_stages, Arc::new(Sequential), "h100");
    one.step(&prefill, true).unwrap();
    let a = report::Report::from_sim(&one, 8, 1.0);
    let mut pipe = sim(
        &g,
        two_stages,
        Arc::new(Pipeline { micro_batches: 4 }),
        "h100",
    );
    pipe.step(&prefill, true).unwrap();
    let b = report::Report::from_sim(&pipe, 8, 1.0);
    // A 4-micro-batch wavefront keeps both stages' devices busy at once (its step is not
    // shorter here: every micro-batch reads the experts' weights again, and this model's
    // prefill is memory-bound on an H100).
    assert!(b.bubble_fraction < a.bubble_fraction - 0.1, "{a}\n{b}");
}

#[test]
fn the_trace_reads_back_with_the_reports_numbers() {
    let g = graph("ds-v3-mini.toml");
    let mut s = sim(&g, LINKED, Arc::new(TwoMicroBatch::default()), "cpu");
    s.keep_spans = true;
    // One recorded step only, so the trace's window is the report's.
    s.step(&[crate::SeqStep { rows: 1, start: 16 }; 4], true)
        .unwrap();
    let r = report::Report::from_sim(&s, 4, 1.0);
    let dir = std::env::temp_dir().join(format!("troupe-sim-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.json");
    report::write_trace(&s, &path).unwrap();
    let stats = troupe_actors::trace_stats::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let link = stats.link.as_ref().unwrap();
    assert_eq!(link.transfers, r.transfers);
    assert!(
        (link.busy_us / 1e3 - r.link_busy_ms).abs() < 1e-3,
        "{stats}\n{r}"
    );
    assert!(
        (link.exposed_us / 1e3 - r.link_exposed_ms).abs() < 1e-3,
        "{stats}\n{r}"
    );
    // Busy time per stream is the same sum; utilisation differs only by the window (the trace's
    // runs from its first span to its last, the report's from the step's start to its end).
    for st in &stats.streams {
        let tid = st.tid as usize;
        let want = s.stats.stream_busy_us[tid];
        assert!(
            (st.busy_us - want).abs() < 1e-3,
            "{}: {} vs {want}",
            st.name,
            st.busy_us
        );
        assert_eq!(st.kernels, s.stats.stream_kernels[tid]);
    }
}

#[test]
fn deepseek_v3_671b_decodes_over_256_gpus_from_its_description() {
    let g = graph("deepseek-v3-671b.toml");
    let hw = Hardware::load("h800").unwrap();
    let experts = ModelCost::from_spec(&g.spec, None, 2.0).layer_experts();
    let layout = Layout::gpus(256, &experts, &hw).unwrap();
    let mut s = Simulation::new(&g.spec, layout, Arc::new(TwoMicroBatch::default()), hw).unwrap();
    let r = report::decode(&mut s, 512, 1024, 2).unwrap();
    assert_eq!(r.utilization.len(), 256);
    assert!(r.transfers > 0);
    assert!(r.step_ms > 1.0 && r.step_ms < 1000.0, "{r}");
}

#[test]
fn a_workload_is_served_in_arrival_order_and_bad_lines_are_named() {
    let dir = std::env::temp_dir().join(format!("troupe-sim-workload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("w.jsonl");
    std::fs::write(
        &good,
        "{\"arrival_s\": 0.0, \"prompt_tokens\": 16, \"output_tokens\": 4}\n\n\
         {\"arrival_s\": 5.0, \"prompt_tokens\": 8, \"output_tokens\": 2}\n",
    )
    .unwrap();
    let reqs = report::read_workload(&good).unwrap();
    assert_eq!(reqs.len(), 2);
    let g = graph("ds-v3-mini.toml");
    let mut s = sim(&g, "", Arc::new(TwoMicroBatch::default()), "cpu");
    let r = report::workload(&mut s, &reqs, 8).unwrap();
    // 4 + 2 tokens in 4 + 2 steps (the two never overlap: the second arrives 5 s later).
    assert_eq!(r.steps, 6);
    assert!(s.now_us() >= 5e6, "{}", s.now_us());
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"arrival_s\": 0.0, \"prompt_tokens\": 0, \"output_tokens\": 1}\n",
    )
    .unwrap();
    let e = report::read_workload(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:1"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With measured times for every kernel kind (constant over rows), no hops, and a bandwidth and
/// FLOP rate so large that attention's context term vanishes, a one-stream sequential decode
/// step is the sum of its calls: the embedding, per layer the attention and the dense MLP or
/// the router's dispatch, shared experts, one call per active expert (uniform routing's
/// expectation) and combine, then the head. `launch_us` adds once per call, an expert's
/// launches counted by its chance of getting rows.
#[test]
fn measured_kernel_times_replace_the_roofline() {
    use crate::measured::{Curve, KernelTimes, MeasuredKernels};
    let g = graph("ds-v3-mini.toml");
    let flat = |us: f64| {
        Some(Curve {
            rows: vec![4.0],
            us: vec![us],
        })
    };
    let step_ms = |launch: f64| {
        let mut hw = Hardware::load("cpu").unwrap();
        hw.compute.memory_gbps = 1e9;
        hw.compute.tflops_bf16 = 1e9;
        hw.compute.tflops_f32 = Some(1e9);
        hw.compute.launch_us = launch;
        hw.runtime.hop_us = 0.0;
        hw.runtime.issue_us = 0.0;
        hw.kernels = Some(MeasuredKernels {
            context: 32.0,
            times: KernelTimes {
                embed: flat(1.0),
                attention: flat(100.0),
                mlp: flat(50.0),
                dispatch: flat(10.0),
                shared: flat(20.0),
                experts: flat(7.0),
                combine: flat(3.0),
                head: flat(1000.0),
            },
        });
        let mut s = sim_on(&g, "streams = 1", Arc::new(Sequential), hw);
        report::decode(&mut s, 4, 32, 3).unwrap().step_ms
    };
    // ds-v3-mini: 8 layers, the first dense; 64 experts in groups of one, top 6, 4 rows.
    let active = 1.0 - (58f64 / 64.0).powi(4);
    let calls = 1.0 + 8.0 * 100.0 + 50.0 + 7.0 * (10.0 + 20.0 + 64.0 * active * 7.0 + 3.0) + 1000.0;
    assert!(
        (step_ms(0.0) * 1e3 / calls - 1.0).abs() < 1e-6,
        "{}",
        step_ms(0.0)
    );
    let chance = 1.0 - (63f64 / 64.0).powi(24);
    let launches = 1.0 + 8.0 + 1.0 + 7.0 * (3.0 + 64.0 * chance) + 1.0;
    let with = (step_ms(2.0) - step_ms(0.0)) * 1e3;
    assert!((with / (2.0 * launches) - 1.0).abs() < 1e-6, "{with}");
}

/// Across a link far slower than any kernel, sequential decode waits on every layer's flights:
/// a held kernel's wake-up (`link_wake_us`) delays the experts once after the rows arrive and
/// the combine once after the results do, so each MoE layer's step grows by twice the wake.
#[test]
fn the_link_wake_delays_each_moe_layer_twice() {
    let g = graph("ds-v3-mini.toml");
    let step_ms = |wake: f64| {
        let mut hw = Hardware::load("cpu").unwrap();
        hw.runtime.link_wake_us = wake;
        let mut s = sim_on(&g, LINKED, Arc::new(Sequential), hw);
        report::decode(&mut s, 4, 32, 3).unwrap().step_ms
    };
    // ds-v3-mini: 7 MoE layers.
    let grown_us = (step_ms(100.0) - step_ms(0.0)) * 1e3;
    assert!(
        (grown_us / (7.0 * 2.0 * 100.0) - 1.0).abs() < 1e-6,
        "{grown_us}"
    );
}
