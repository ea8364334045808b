//! `route_topk` through the `Backend` trait on the interpreter (race detector on) against
//! `CpuBackend`, for the three routing rules (Mixtral greedy softmax, DeepSeek-V2 group-limited
//! softmax, DeepSeek-V3 sigmoid + bias + noaux_tc), with token counts not a multiple of the 4
//! tokens per CTA and expert counts below and above the 32 lanes.
//! Expert ids are compared exactly; weights within a stated tolerance.

use crate::common::*;
use troupe_engine::backend::{Backend, RouterRule};
use troupe_engine::graph::spec::{Scoring, TopkMethod};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::weights::Weight;

/// Weights: softmax uses `ex2.approx` (<= 2 ulp) and a lane-strided sum over E experts vs libm
/// `exp` and a serial sum (each order within E * u relative), then the same normalisation and
/// scaling: relative error <= (8 + E) * u, u = 2^-24. (Sigmoid has no sum: <= 8 u.)
fn weight_rel(experts: usize) -> f32 {
    (8 + experts) as f32 * f32::EPSILON * 0.5
}

fn check(rule: RouterRule, n: usize, with_bias: bool, seed: u64) {
    let gpu = interp();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed);
    let logits = rng.matrix(n, rule.n_experts, 3.0);
    let bias = with_bias.then(|| {
        let v = rng.vec(rule.n_experts, 0.1);
        Weight::from_f32(&format!("bias{seed}"), vec![rule.n_experts], &v)
    });
    let got = gpu
        .route(&gpu.up(&logits), &rule, bias.as_ref())
        .and_then(|r| gpu.routing_to_host(&r))
        .expect("interp route");
    let want = cpu
        .route(&cpu.up(&logits), &rule, bias.as_ref())
        .and_then(|r| cpu.routing_to_host(&r))
        .expect("cpu route");
    assert_eq!(
        got.ids, want.ids,
        "{:?} {:?}: expert ids",
        rule.method, rule.scoring
    );
    for (r, (g, w)) in got.weights.iter().zip(&want.weights).enumerate() {
        assert_close(
            &format!("{:?} row {r} weights", rule.method),
            g,
            w,
            weight_rel(rule.n_experts),
            1e-30,
        );
    }
}

#[test]
fn mixtral_greedy_softmax() {
    let rule = RouterRule {
        n_experts: 8,
        top_k: 2,
        n_group: 1,
        topk_group: 1,
        scoring: Scoring::Softmax,
        method: TopkMethod::Greedy,
        norm_topk_prob: true,
        routed_scaling_factor: 1.0,
    };
    check(rule, 7, false, 51);
    check(
        RouterRule {
            n_experts: 40,
            top_k: 3,
            ..rule
        },
        5,
        false,
        52,
    );
}

#[test]
fn deepseek_v2_group_limited() {
    let rule = RouterRule {
        n_experts: 16,
        top_k: 4,
        n_group: 4,
        topk_group: 2,
        scoring: Scoring::Softmax,
        method: TopkMethod::GroupLimitedGreedy,
        norm_topk_prob: false,
        routed_scaling_factor: 1.0,
    };
    check(rule, 9, false, 53);
    check(
        RouterRule {
            n_experts: 64,
            top_k: 6,
            n_group: 8,
            topk_group: 3,
            routed_scaling_factor: 16.0,
            ..rule
        },
        6,
        false,
        54,
    );
}

#[test]
fn deepseek_v3_noaux_tc() {
    let rule = RouterRule {
        n_experts: 16,
        top_k: 4,
        n_group: 4,
        topk_group: 2,
        scoring: Scoring::Sigmoid,
        method: TopkMethod::NoauxTc,
        norm_topk_prob: true,
        routed_scaling_factor: 2.5,
    };
    check(rule, 10, true, 55);
    // The real DeepSeek-V3 shape: 256 experts, 8 groups, 4 kept, top-8.
    check(
        RouterRule {
            n_experts: 256,
            top_k: 8,
            n_group: 8,
            topk_group: 4,
            ..rule
        },
        5,
        true,
        56,
    );
}
