//! The transport seam in one process (`SimulatedTransport`): expert groups on other "ranks"
//! are reached through one encoded message per (layer, micro-batch, rank), answered by that
//! rank's `ExpertServer`; outputs stay bit-identical to the reference executor for every
//! schedule, with and without the link model timing the bytes; bytes are counted per peer.
//! (Data-parallel attention needs one runtime per rank: `tests/it/mpi.rs` at the root runs it.)

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::common::*;
use troupe_actors::link::Link;
use troupe_actors::transport::{
    AttentionMode, Distributed, ExpertServer, SimulatedTransport, Transport,
};
use troupe_actors::{ActorRuntime, FaultPlan, LinkSpec, RuntimeConfig, RuntimeOptions};
use troupe_engine::model::Model;

fn transport(model: &Arc<Model>, nodes: usize, link: bool) -> Arc<SimulatedTransport> {
    let servers = (0..nodes)
        .map(|k| {
            let be: Arc<dyn troupe_engine::Backend> =
                Arc::new(troupe_engine::kernels::CpuBackend::new());
            Arc::new(ExpertServer::new(model.clone(), be, k))
        })
        .collect();
    let link = link.then(|| {
        let spec = LinkSpec::new(20.0, 10.0).unwrap();
        Arc::new(Link::new(spec, None, Arc::default()))
    });
    Arc::new(SimulatedTransport::new(servers, link))
}

const GROUPS: &str = "nodes = 3\nstreams = 2\n[[expert_groups]]\nexperts = [0, 5, 9, 14]\nstream = \"cpu1\"\nnode = 1\n[[expert_groups]]\nexperts = [1, 2, 3, 4, 6, 7, 8]\nstream = \"cpu0\"\nnode = 2\n[[expert_groups]]\nexperts = [10, 11, 12, 13, 15]\nstream = \"cpu0\"\nnode = 0";

#[test]
fn simulated_ranks_give_the_reference_bits_and_count_their_bytes() {
    let (_g, model) = load("deepseek-v3-tiny");
    let reqs = greedy_requests("deepseek-v3-tiny", 3);
    let want = reference(&model, &reqs);
    let table: toml::Table = toml::from_str(GROUPS).unwrap();
    for (schedule, link) in [
        ("sequential", false),
        ("two-microbatch", true),
        ("pipeline", false),
    ] {
        let t = transport(&model, 3, link);
        let cfg = RuntimeConfig {
            options: RuntimeOptions {
                schedule: Some(schedule.into()),
                stages: (schedule == "pipeline").then_some(2),
                ..Default::default()
            },
            faults: Some(FaultPlan::default()),
            distributed: Some(Distributed {
                transport: t.clone(),
                attention: AttentionMode::Staged,
            }),
            ..Default::default()
        };
        let rt = ActorRuntime::start_with(model.clone(), Some(&table), None, cfg).expect("start");
        assert!(
            rt.core().actor_names.iter().any(|n| n == "layer1.node2"),
            "{:?}",
            rt.core().actor_names
        );
        let got = rt.generate(&reqs).expect("generate");
        rt.shutdown().unwrap();
        assert_same(&got, &want, schedule);
        let p = &t.stats().peers;
        for k in [1, 2] {
            let (sent, back, msgs) = (
                p[k].bytes_sent.load(Ordering::Relaxed),
                p[k].bytes_received.load(Ordering::Relaxed),
                p[k].messages_sent.load(Ordering::Relaxed),
            );
            assert!(
                sent > 0 && back > 0,
                "{schedule}: rank {k}: {sent} B out, {back} B back"
            );
            // At most one message per MoE layer (3), micro-batch and decode step to each rank.
            let steps = (reqs[0].max_new_tokens + 1) as u64;
            assert!(
                msgs <= 3 * 2 * steps * reqs.len() as u64,
                "{schedule}: {msgs} messages to rank {k}"
            );
        }
        assert_eq!(
            p[0].messages_sent.load(Ordering::Relaxed),
            0,
            "rank 0's own groups are local"
        );
    }
}

#[test]
fn a_rank_count_other_than_the_placements_nodes_is_refused() {
    let (_g, model) = load("deepseek-v3-tiny");
    let table: toml::Table = toml::from_str(GROUPS).unwrap();
    let cfg = RuntimeConfig {
        distributed: Some(Distributed {
            transport: transport(&model, 2, false),
            attention: AttentionMode::Staged,
        }),
        faults: Some(FaultPlan::default()),
        ..Default::default()
    };
    let err = ActorRuntime::start_with(model, Some(&table), None, cfg)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("3 nodes but 2 ranks"), "{err}");
}

#[test]
fn the_attention_mode_is_read_and_taken_out_of_the_table() {
    let mut t: toml::Table = toml::from_str("attention = \"data-parallel\"\nnodes = 2").unwrap();
    assert_eq!(
        AttentionMode::take_from(&mut t).unwrap(),
        AttentionMode::DataParallel
    );
    assert!(!t.contains_key("attention"));
    let mut t: toml::Table = toml::from_str("attention = \"sideways\"").unwrap();
    let e = AttentionMode::take_from(&mut t).unwrap_err().to_string();
    assert!(e.contains("`attention`") && e.contains("sideways"), "{e}");
    assert_eq!(AttentionMode::DataParallel.rank_of_request(5, 3), 2);
    assert_eq!(AttentionMode::Staged.rank_of_request(5, 3), 0);
}
