//! A schedule defined here, outside troupe-actors, registered by name and benched by
//! `troupe_actors::bench` exactly as the built-ins are: the same report (decode speed against
//! the reference, link busy / exposed time and the link time hidden), from a placement built with
//! `Placement::builder()` rather than a TOML table.

use std::sync::Arc;

use crate::common::*;
use troupe_actors::bench::{self, BenchOptions};
use troupe_actors::placement::{LinkSpec, Placement};
use troupe_actors::schedule::{registry, ScheduleParams};
use troupe_actors::{ForwardPass, Schedule};

/// Three micro-batches balanced by rows, issued as independent op chains.
struct ThreeMicroBatch;

impl Schedule for ThreeMicroBatch {
    fn name(&self) -> &str {
        "three-microbatch"
    }
    fn run(&self, pass: &mut ForwardPass<'_>) -> troupe_actors::Result<()> {
        let mbs = pass.split_balanced(3)?;
        let ops = pass.all_ops();
        for &mb in &mbs {
            pass.issue(mb, &ops)?;
        }
        for &mb in &mbs {
            pass.wait(mb)?;
        }
        Ok(())
    }
}

#[test]
fn a_registered_custom_schedule_gets_the_built_ins_report() {
    let (_g, model) = load("deepseek-v3-tiny");
    registry::register("three-microbatch", |_| Arc::new(ThreeMicroBatch)).expect("register");
    let params = ScheduleParams::default();
    let schedules = ["sequential", "three-microbatch"]
        .iter()
        .map(|n| registry::lookup(n, &params, "--schedule"))
        .collect::<Result<Vec<_>, _>>()
        .expect("both names are registered");
    let o = BenchOptions {
        sequences: 4,
        prompt_len: 3,
        steps: 2,
        link: LinkSpec::builder()
            .latency_us(50.0)
            .gbps(1.0)
            .build()
            .expect("link"),
        schedules,
        ..Default::default()
    };
    let placement = Placement::builder()
        .cpu_streams(2)
        .expert_group_size(4)
        .build();
    let report = bench::run(model, Some(&placement), &o).expect("bench");
    let names: Vec<&str> = report.actors.iter().map(|r| r.schedule.as_str()).collect();
    assert_eq!(names, ["sequential", "three-microbatch"]);
    assert!(report.reference_decode_tok_s > 0.0);
    for r in &report.actors {
        assert!(r.decode_tok_s > 0.0 && r.paired_ratio > 0.0, "{r:?}");
    }
    let names: Vec<&str> = report.link.iter().map(|r| r.schedule.as_str()).collect();
    assert_eq!(names, ["sequential", "three-microbatch"]);
    for r in &report.link {
        // Every dispatch and combine crossed the 1 Gbit/s link (experts on node 1).
        assert!(r.link_busy > 0.0, "{r:?}");
        assert!(
            r.link_exposed >= 0.0 && r.link_exposed <= r.link_busy,
            "{r:?}"
        );
        assert!((0.0..=1.0).contains(&r.hidden) && (0.0..=1.0).contains(&r.hidden_direct));
        assert!(r.step_with_link > 0.0 && r.step_without_link > 0.0, "{r:?}");
    }
    let text = report.to_string();
    assert!(text.contains("actors three-microbatch: "), "{text}");
    assert!(text.contains("link three-microbatch: "), "{text}");
}

#[test]
fn a_custom_schedule_using_split_balanced_stays_bit_identical() {
    let (_g, model) = load("deepseek-v3-tiny");
    let reqs = greedy_requests("deepseek-v3-tiny", 3);
    let cfg = troupe_actors::RuntimeConfig {
        custom_schedule: Some(Arc::new(ThreeMicroBatch)),
        placement: Some(Placement::builder().cpu_streams(2).build()),
        faults: Some(troupe_actors::FaultPlan::default()),
        ..Default::default()
    };
    let rt =
        troupe_actors::ActorRuntime::start_with(model.clone(), None, None, cfg).expect("start");
    let got = rt.generate(&reqs).expect("generate");
    rt.shutdown().expect("shutdown");
    for (g, w) in got.iter().zip(reference(&model, &reqs)) {
        assert_eq!(g.generated, w.generated);
        let (g, w): (Vec<f32>, Vec<f32>) = (
            g.step_logits.iter().flatten().copied().collect(),
            w.step_logits.iter().flatten().copied().collect(),
        );
        assert_eq!(bits(&g), bits(&w));
    }
}
