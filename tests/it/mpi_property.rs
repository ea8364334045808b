//! A property test over 16 random deployments (seeded, so a failure reruns): rank count 2–4,
//! experts scattered over random uneven groups on random nodes and streams, a random schedule
//! and attention mode; tokens always equal the reference executor's.

use crate::common::case_dir;
use crate::mpi::{assert_deployment_matches, reference_lines, scratch, write, Group, PROMPTS};

/// SplitMix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_deployments_match_the_reference() {
    let seed: u64 = std::env::var("TROUPE_MPI_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut rng = Rng(seed);
    let dir = scratch("property");
    let model = case_dir("deepseek-v3-tiny");
    let prompts = write(&dir, "prompts.jsonl", PROMPTS);
    let expected = reference_lines(&model, &prompts);
    for case in 0..16 {
        let nodes = 2 + rng.below(3);
        let n_groups = 1 + rng.below(6);
        let mut groups: Vec<Group> = (0..n_groups)
            .map(|_| Group {
                experts: Vec::new(),
                stream: rng.below(2),
                node: rng.below(nodes),
            })
            .collect();
        for e in 0..16 {
            groups[rng.below(n_groups)].experts.push(e);
        }
        groups.retain(|g| !g.experts.is_empty());
        let schedule = ["sequential", "two-microbatch", "pipeline"][rng.below(3)];
        let dp = rng.below(2) == 1;
        let what = format!("seed {seed} case {case}");
        let d = (nodes, &groups[..], schedule, dp);
        assert_deployment_matches(&dir, &model, &expected, d, &what);
    }
}
