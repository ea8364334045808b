//! Replicated experts (an expert listed in several `[[placement.expert_groups]]`, as `troupe
//! eplb` writes them): the replicas share each step's rows, and tokens and logits stay
//! bit-identical to the reference executor — seeded random replications over streams, nodes
//! (with and without a link) and schedules on the MoE fixtures.

use crate::common::*;
use troupe_actors::placement::layer_experts;
use troupe_actors::{ActorRuntime, RuntimeConfig};
use troupe_engine::weights::random::SplitMix64;

/// Random explicit groups for every MoE layer: each expert in 1 to 3 of `groups` groups (some
/// groups holding only replicas), groups on random streams of 3 and random nodes of 2.
fn replicated_placement(rng: &mut SplitMix64, experts: usize, link: bool) -> toml::Table {
    let groups = 2 + (rng.next_u64() % 4) as usize;
    let mut members = vec![Vec::new(); groups];
    for e in 0..experts {
        let copies = 1 + (rng.next_u64() % 3) as usize;
        for c in 0..copies.min(groups) {
            let g = (e + c * (1 + (rng.next_u64() % (groups as u64 - 1)) as usize)) % groups;
            if !members[g].contains(&e) {
                members[g].push(e);
            }
        }
    }
    let mut text = String::from("streams = 3\nnodes = 2\n");
    if link {
        text.push_str("[link]\nlatency_us = 5\ngbps = 40\n");
    }
    for m in members.iter().filter(|m| !m.is_empty()) {
        text.push_str(&format!(
            "[[expert_groups]]\nexperts = {m:?}\nstream = \"cpu{}\"\nnode = {}\n",
            rng.next_u64() % 3,
            rng.next_u64() % 2
        ));
    }
    toml::from_str(&text).expect("placement toml")
}

#[test]
fn replicated_experts_match_reference_bits() {
    let mut rng = SplitMix64::new(0xe91b);
    let mut replicated = 0;
    for (i, case) in ["deepseek-v3-tiny", "mixtral-tiny", "deepseek-v3-tiny-bf16"]
        .into_iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        let (_, model) = load(case);
        let experts = layer_experts(&model).into_iter().flatten().max().unwrap();
        let ps = prompts(case);
        let placement = replicated_placement(&mut rng, experts, i % 2 == 0);
        let groups = placement["expert_groups"].as_array().unwrap();
        let listed: usize = groups
            .iter()
            .map(|g| g["experts"].as_array().unwrap().len())
            .sum();
        replicated += usize::from(listed > experts);
        let schedule = ["sequential", "two-microbatch", "pipeline"][i % 3];
        let schedule: toml::Table =
            toml::from_str(&format!("kind = \"{schedule}\"\nmicro_batches = 2")).unwrap();
        let reqs: Vec<_> = ps
            .iter()
            .enumerate()
            .map(|(j, p)| request(p.clone(), 3, (j % 2 == 1).then_some(j as u64)))
            .collect();
        let what = format!("{case}: {placement} {schedule}");
        let rt = ActorRuntime::start_with(
            model.clone(),
            Some(&placement),
            Some(&schedule),
            RuntimeConfig::default(),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let got = rt.generate(&reqs).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_same(&got, &reference(&model, &reqs), &what);
        assert_logits_match_reference(&rt, &model, &ps[0], &what);
        rt.shutdown().expect("shutdown");
    }
    assert!(
        replicated >= 5,
        "only {replicated} of 6 placements replicate"
    );
}
