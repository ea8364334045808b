//! A schedule written outside the runtime: every sequence is its own micro-batch, and each layer's
//! attention is issued for all of them at once, then each layer's FFN — a "layer-synchronous"
//! schedule. It runs on the deepseek-v3-tiny fixture (or a model path given as the first
//! argument), checks its tokens against the reference executor bit for bit, then registers the
//! schedule by name and benches it against `sequential` with `troupe::bench` (decode
//! speed against the reference, link time hidden), the report the built-ins get. Finally the
//! same schedule, unchanged, drives the simulator (`troupe::sim`) over the same model
//! description.
//!
//! Only `troupe::` paths: what a crate depending on `troupe` can write.
//!
//! `cargo run --release --example custom_schedule [MODEL]`

use std::sync::Arc;

use troupe::actors::schedule::registry;
use troupe::actors::ActorRuntime;
use troupe::bench;
use troupe::engine::executor::ReferenceExecutor;
use troupe::engine::generate::generate;
use troupe::engine::kernels::CpuBackend;
use troupe::engine::model::Model;
use troupe::prelude::*;

/// One micro-batch per sequence, all advanced layer by layer in lock-step.
struct LayerSynchronous;

impl Schedule for LayerSynchronous {
    fn name(&self) -> &str {
        "layer-synchronous"
    }
    fn run(&self, pass: &mut ForwardPass<'_>) -> troupe::actors::Result<()> {
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/deepseek-v3-tiny"
        )
        .to_string()
    });
    let graph = LoadedGraph::open(std::path::Path::new(&path))?;
    let model = Arc::new(Model::load(&graph, &mut |_, _| {})?);
    let prompts: Vec<Vec<u32>> = vec![
        vec![1, 2, 3, 4, 5],
        vec![9, 8, 7],
        vec![42],
        vec![100, 200, 300, 400],
    ];
    let reqs: Vec<GenerateRequest> = prompts
        .into_iter()
        .map(|prompt| {
            GenerateRequest::new(prompt, 6)
                .stop_at_eos(false)
                .keep_logits()
        })
        .collect();
    let cfg = RuntimeConfig {
        custom_schedule: Some(Arc::new(LayerSynchronous)),
        ..Default::default()
    };
    let rt = ActorRuntime::start_with(
        model.clone(),
        graph.placement.as_ref(),
        graph.schedule.as_ref(),
        cfg,
    )?;
    let got = rt.generate(&reqs)?;
    rt.shutdown()?;
    let be = CpuBackend::new();
    let want = generate(&ReferenceExecutor::new(&model, &be), &reqs)?;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let same = g.generated == w.generated
            && g.step_logits.iter().flatten().map(|x| x.to_bits()).eq(w
                .step_logits
                .iter()
                .flatten()
                .map(|x| x.to_bits()));
        println!(
            "request {i}: {:?} — {}",
            g.generated,
            if same {
                "bit-identical to the reference"
            } else {
                "DIFFERS from the reference"
            }
        );
        if !same {
            return Err("custom schedule changed the result".into());
        }
    }
    // Registered by name, it is found wherever a schedule name is taken (`--schedule`,
    // `[schedule] kind`, `troupe bench --compare --schedule`) in this process.
    registry::register_schedule(Arc::new(LayerSynchronous))?;
    let schedules = ["sequential", "layer-synchronous"]
        .iter()
        .map(|n| registry::lookup(n, &ScheduleParams::default(), "--schedule"))
        .collect::<Result<Vec<_>, _>>()?;
    let o = BenchOptions {
        sequences: 4,
        prompt_len: 8,
        steps: 5,
        schedules,
        ..Default::default()
    };
    let placement = Placement::builder().cpu_streams(2).build();
    print!("{}", bench::run(model, Some(&placement), &o)?);
    // The same schedule drives the simulator: no weights, the model description only.
    let hw = troupe::sim::Hardware::load("cpu")?;
    let experts = troupe::sim::cost::ModelCost::from_spec(&graph.spec, None, 4.0).layer_experts();
    let layout = troupe::sim::Layout::from_table(graph.placement.as_ref(), &experts, None, &hw)?;
    let mut sim =
        troupe::sim::Simulation::new(&graph.spec, layout, Arc::new(LayerSynchronous), hw)?;
    println!(
        "simulated:\n{}",
        troupe::sim::report::decode(&mut sim, 4, 8, 5)?
    );
    Ok(())
}
