//! The routers, on the case where troupe deliberately differs from transformers: DeepSeek-V3
//! (`noaux_tc`) fills the experts of dropped groups with −inf (DeepSeek's own inference code),
//! where HF's `DeepseekV3` fills them with 0.0.

use troupe_engine::kernels::router::route;
use troupe_engine::params::{RouterRule, Scoring, TopkMethod};
use troupe_engine::Tensor;

fn v3_rule() -> RouterRule {
    RouterRule {
        n_experts: 4,
        top_k: 2,
        n_group: 2,
        topk_group: 1,
        scoring: Scoring::Sigmoid,
        method: TopkMethod::NoauxTc,
        norm_topk_prob: true,
        routed_scaling_factor: 2.5,
    }
}

#[test]
fn dropped_groups_never_win_even_against_negative_biased_scores() {
    // All logits 0 → every sigmoid score is 0.5. The correction bias makes the biased scores
    // [0.5, -0.5, -1.5, -1.5]: group 0 (experts 0, 1) sums to 0.0, group 1 to -3.0, so only
    // group 0 is kept and expert 1's biased score (-0.5) is negative.
    let logits = Tensor::matrix(1, 4, vec![0.0; 4]).unwrap();
    let bias = [0.0f32, -1.0, -2.0, -2.0];
    let r = route(&logits, &v3_rule(), Some(&bias)).unwrap();
    // troupe (and DeepSeek's model.py, −inf fill): the two experts of the kept group.
    assert_eq!(r.ids, vec![vec![0, 1]]);
    // HF transformers (0.0 fill) would see [0.5, -0.5, 0.0, 0.0] and pick experts [0, 2]:
    // expert 2 belongs to the dropped group. Weights are the unbiased scores 0.5 / (1.0 + 1e-20)
    // × 2.5 in both cases.
    assert_eq!(r.weights, vec![vec![1.25f32, 1.25]]);
}

#[test]
fn with_non_negative_biased_scores_the_fill_does_not_matter() {
    // Positive biased scores: a 0.0 fill could not outrank them, so HF and troupe agree.
    let logits = Tensor::matrix(1, 4, vec![2.0, 1.0, 3.0, -1.0]).unwrap();
    let r = route(&logits, &v3_rule(), Some(&[0.0; 4])).unwrap();
    // Group sums: g0 = σ(2)+σ(1) ≈ 1.61, g1 = σ(3)+σ(-1) ≈ 1.22 → group 0 kept.
    assert_eq!(r.ids, vec![vec![0, 1]]);
}

#[test]
fn v2_group_limited_greedy_keeps_the_best_groups_by_max() {
    let rule = RouterRule {
        scoring: Scoring::Softmax,
        method: TopkMethod::GroupLimitedGreedy,
        norm_topk_prob: false,
        routed_scaling_factor: 1.0,
        ..v3_rule()
    };
    // Softmax scores; group 1 holds the single best expert (3), so it is kept even though group
    // 0 holds the next two best.
    let logits = Tensor::matrix(1, 4, vec![1.0, 0.9, -5.0, 2.0]).unwrap();
    let r = route(&logits, &rule, None).unwrap();
    assert_eq!(r.ids, vec![vec![2, 3]]);
}

#[test]
fn nan_scores_rank_last_and_never_panic() {
    // A NaN among many scores made the old comparator inconsistent (NaN "equal" to everything),
    // which Rust's sort may answer with a panic. NaN now ranks below every number.
    use troupe_engine::kernels::router::top_k_indices;
    let mut v: Vec<f32> = (0..64).map(|i| ((i * 37) % 64) as f32).collect();
    for i in (0..64).step_by(3) {
        v[i] = f32::NAN;
    }
    let top = top_k_indices(&v, 64);
    let first_nan = top.iter().position(|&i| v[i].is_nan()).unwrap();
    assert!(top[first_nan..].iter().all(|&i| v[i].is_nan()));
    assert!(top[..first_nan].windows(2).all(|w| v[w[0]] >= v[w[1]]));
    // Ties (all NaN) keep ascending ids.
    assert!(top[first_nan..].windows(2).all(|w| w[0] < w[1]));
}
