//! Expert load measured in the running system, for `--dump-expert-load` and `troupe eplb`: rows
//! routed to each logical expert (what `troupe_expert_tokens_total` counts) and rows computed on
//! each node (a replicated expert's rows counted where its replicas computed them), tallied per
//! MoE layer by every router step of this process since the last [`reset`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use troupe_engine::model::DispatchPlan;

use super::{ExpertReplicas, Share};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Tally {
    /// (layer, expert) → rows routed to it.
    experts: BTreeMap<(usize, usize), u64>,
    /// (layer, node) → (expert, row) entries computed there.
    nodes: BTreeMap<(usize, usize), u64>,
}

static TALLY: Mutex<Option<Tally>> = Mutex::new(None);

/// Tallies one router step of `layer`: its routing plan and the groups' shares.
pub fn record(layer: usize, plan: &DispatchPlan, replicas: &ExpertReplicas, shares: &[Share]) {
    let mut g = TALLY.lock().unwrap_or_else(|p| p.into_inner());
    let t = g.get_or_insert_with(Tally::default);
    for e in plan.active_experts() {
        *t.experts.entry((layer, e)).or_default() += plan.rows[e].len() as u64;
    }
    for (group, share) in shares.iter().enumerate() {
        if !share.is_empty() {
            let node = replicas.node(group);
            *t.nodes.entry((layer, node)).or_default() += share.entries() as u64;
        }
    }
}

/// Forgets everything tallied so far.
pub fn reset() {
    *TALLY.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// What was tallied, per MoE layer of a model whose layer `l` has `layer_experts[l]` routed
/// experts (`None`: dense, skipped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertLoad {
    /// `experts[moe_layer][expert]`: rows routed to it (the `load.json` of `troupe eplb`).
    pub experts: Vec<Vec<u64>>,
    /// `nodes[moe_layer][node]`: (expert, row) entries computed on the node (nodes up to the
    /// highest that computed any).
    pub nodes: Vec<Vec<u64>>,
}

/// The tally so far for a model of `layer_experts`.
pub fn snapshot(layer_experts: &[Option<usize>]) -> ExpertLoad {
    let t = TALLY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default();
    let moe: Vec<(usize, usize)> = layer_experts
        .iter()
        .enumerate()
        .filter_map(|(l, n)| n.map(|n| (l, n)))
        .collect();
    let nodes = t.nodes.keys().map(|&(_, n)| n + 1).max().unwrap_or(1);
    let count = |map: &BTreeMap<(usize, usize), u64>, l: usize, n: usize| -> Vec<u64> {
        (0..n)
            .map(|i| map.get(&(l, i)).copied().unwrap_or(0))
            .collect()
    };
    ExpertLoad {
        experts: moe.iter().map(|&(l, n)| count(&t.experts, l, n)).collect(),
        nodes: moe
            .iter()
            .map(|&(l, _)| count(&t.nodes, l, nodes))
            .collect(),
    }
}
