//! The `node` of stages and expert groups decides what crosses the link: dispatch/combine between a
//! router and an expert group on another node go over it, same-node transfers never do. Outputs
//! are bit-identical either way.

use std::sync::atomic::Ordering;

use crate::common::*;
use troupe_actors::{ActorRuntime, FaultPlan, RuntimeConfig, RuntimeOptions};

/// Runs the fixture's prompts with `placement` (+ a 20 µs / 10 Gbit/s link); returns the link's
/// (transfers, busy ns).
fn run(placement: &str, schedule: &str) -> (u64, u64) {
    let (_g, model) = load("deepseek-v3-tiny");
    let reqs = greedy_requests("deepseek-v3-tiny", 2);
    let want = reference(&model, &reqs);
    let text = format!("{placement}\n[link]\nlatency_us = 20\ngbps = 10");
    let table: toml::Table = toml::from_str(&text).expect("placement");
    let cfg = RuntimeConfig {
        options: RuntimeOptions {
            schedule: Some(schedule.into()),
            ..Default::default()
        },
        faults: Some(FaultPlan::default()),
        ..Default::default()
    };
    let rt = ActorRuntime::start_with(model, Some(&table), None, cfg).expect("start");
    let got = rt.generate(&reqs).expect("generate");
    assert_same(&got, &want, &format!("{placement} {schedule}"));
    let stats = rt.core().link.as_ref().expect("a link").stats.clone();
    rt.shutdown().expect("shutdown");
    (
        stats.transfers.load(Ordering::Relaxed),
        stats.busy_ns.load(Ordering::Relaxed),
    )
}

#[test]
fn only_cross_node_transfers_use_the_link() {
    for schedule in ["sequential", "two-microbatch"] {
        let (n, busy) = run("streams = 2", schedule);
        assert_eq!((n, busy), (0, 0), "one node: nothing crosses the link");
        let (n, busy) = run("nodes = 2\nstage_nodes = [1]\nexpert_nodes = [1]", schedule);
        assert_eq!((n, busy), (0, 0), "everything on node 1: nothing crosses");
        let (n, busy) = run("nodes = 2\nexpert_nodes = [1]", schedule);
        assert!(n > 0 && busy > 0, "experts on node 1: {n} transfers");
        let (m, _) = run(
            "nodes = 2\nstages = 2\nstage_nodes = [0, 1]\nexpert_nodes = [0, 1]",
            schedule,
        );
        assert!(
            m > 0 && m < n,
            "half the groups remote: {m} of {n} transfers"
        );
    }
}

#[test]
fn explicit_groups_on_another_node_use_the_link() {
    let groups = "[[expert_groups]]\nexperts = [0, 1, 2, 3, 4, 5, 6, 7]\nstream = \"cpu0\"\nnode = 0\n[[expert_groups]]\nexperts = [8, 9, 10, 11, 12, 13, 14, 15]\nstream = \"cpu1\"\nnode = 1";
    let (n, busy) = run(&format!("nodes = 2\n{groups}"), "sequential");
    assert!(n > 0 && busy > 0, "{n} transfers");
}
