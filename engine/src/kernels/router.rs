//! MoE routers: raw gate logits → the chosen experts and their weights.
//! - Mixtral: softmax over all experts, top-k, renormalised to sum 1 (as HF);
//! - DeepSeek-V2: softmax, plain top-k (`greedy`) or group-limited by group max, × routed scaling,
//!   never renormalised (as HF; experts of dropped groups are filled with 0.0 as HF does, which
//!   cannot outrank a kept softmax score);
//! - DeepSeek-V3 (`noaux_tc`): sigmoid, + correction bias for the choice only, groups scored by
//!   the sum of their top-2, top `topk_group` groups kept, top-k, weights = unbiased sigmoid,
//!   optionally divided by (sum + 1e-20), × routed scaling.
//!
//! **Where troupe differs from HF on purpose**: for `noaux_tc` the experts of dropped groups get
//! `-inf`, as DeepSeek's own inference code does (`masked_fill_(mask, float("-inf"))` in
//! DeepSeek-V3's `model.py`), where transformers' `DeepseekV3` fills them with 0.0. The two pick
//! the same experts whenever the k best kept experts have biased scores ≥ 0; they differ when a negative
//! `e_score_correction_bias` pushes a kept expert below 0, where HF's 0.0 lets an expert of a
//! *dropped* group win — which contradicts group-limited routing (and, in DeepSeek's deployment,
//! would send the token to a node it was meant to avoid). Test: `engine/tests/it/router.rs`.
//!
//! Ties break towards the lower expert id; a NaN score ranks below every number. All in f32, one
//! row at a time.

use crate::backend::Routing;
use crate::error::{EngineError, Result};
use crate::params::{RouterRule, Scoring, TopkMethod};
use crate::tensor::Tensor;

/// Orders scores for ranking: the usual order of finite and infinite values (`-0.0 == 0.0`),
/// with NaN below everything. A total order, so sorting cannot panic on a NaN score (a non-finite
/// layer output is reported by the forward pass's finiteness check right after the layer).
fn rank_order(a: f32, b: f32) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
    }
}

/// Indices of the `k` largest values (ties → lower index), in descending order of value.
pub fn top_k_indices(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| rank_order(v[b], v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

fn softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|&x| (x - max).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|&x| x / s).collect()
}

/// Keeps the experts of the best `topk_group` groups; others get `fill`.
fn mask_groups(
    choice: &[f32],
    rule: &RouterRule,
    group_score: impl Fn(&[f32]) -> f32,
    fill: f32,
) -> Vec<f32> {
    let per = rule.n_experts / rule.n_group;
    let gs: Vec<f32> = choice.chunks(per).map(group_score).collect();
    let keep = top_k_indices(&gs, rule.topk_group);
    let mut out = vec![fill; choice.len()];
    for g in keep {
        out[g * per..(g + 1) * per].copy_from_slice(&choice[g * per..(g + 1) * per]);
    }
    out
}

fn sum_top2(g: &[f32]) -> f32 {
    let t = top_k_indices(g, 2);
    t.iter().map(|&i| g[i]).sum()
}

/// Routes one row of logits.
pub fn route_row(logits: &[f32], rule: &RouterRule, bias: Option<&[f32]>) -> (Vec<u32>, Vec<f32>) {
    let scores: Vec<f32> = match rule.scoring {
        Scoring::Softmax => softmax(logits),
        Scoring::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
    };
    let choice: Vec<f32> = match bias {
        Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        None => scores.clone(),
    };
    let candidates = match rule.method {
        TopkMethod::Greedy => choice,
        TopkMethod::GroupLimitedGreedy => mask_groups(
            &choice,
            rule,
            |g| g.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            0.0,
        ),
        TopkMethod::NoauxTc => mask_groups(&choice, rule, sum_top2, f32::NEG_INFINITY),
    };
    let mut picked = top_k_indices(&candidates, rule.top_k);
    picked.sort_unstable();
    let mut w: Vec<f32> = picked.iter().map(|&e| scores[e]).collect();
    if rule.norm_topk_prob {
        let s: f32 = w.iter().sum();
        let denom = if rule.method == TopkMethod::NoauxTc {
            s + 1e-20
        } else {
            s
        };
        for x in &mut w {
            *x /= denom;
        }
    }
    for x in &mut w {
        *x *= rule.routed_scaling_factor;
    }
    (picked.into_iter().map(|e| e as u32).collect(), w)
}

/// Routes every row of `logits` (`[n, n_experts]`).
pub fn route(logits: &Tensor, rule: &RouterRule, bias: Option<&[f32]>) -> Result<Routing> {
    if logits.cols() != rule.n_experts {
        return Err(EngineError::kernel(
            "route",
            format!(
                "logits have {} columns for {} experts",
                logits.cols(),
                rule.n_experts
            ),
        ));
    }
    if let Some(b) = bias {
        if b.len() != rule.n_experts {
            return Err(EngineError::kernel(
                "route",
                format!(
                    "bias has {} entries for {} experts",
                    b.len(),
                    rule.n_experts
                ),
            ));
        }
    }
    let mut ids = Vec::with_capacity(logits.rows());
    let mut weights = Vec::with_capacity(logits.rows());
    for r in 0..logits.rows() {
        let (i, w) = route_row(logits.row(r), rule, bias);
        ids.push(i);
        weights.push(w);
    }
    Ok(Routing { ids, weights })
}
