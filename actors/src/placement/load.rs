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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExpertLoad {
    /// `experts[moe_layer][expert]`: rows routed to it (the `load.json` of `troupe eplb`).
    pub experts: Vec<Vec<u64>>,
    /// `nodes[moe_layer][node]`: (expert, row) entries computed on the node (nodes up to the
    /// highest that computed any).
    pub nodes: Vec<Vec<u64>>,
}

impl ExpertLoad {
    /// Zeroes every count (the shape stays).
    pub fn clear(&mut self) {
        for v in self.experts.iter_mut().chain(self.nodes.iter_mut()) {
            v.iter_mut().for_each(|c| *c = 0);
        }
    }

    /// Adds `other`'s counts (another process's tally of the same model) to these; node lists
    /// grow to the longer of the two.
    pub fn merge(&mut self, other: &ExpertLoad) {
        fn add(into: &mut Vec<Vec<u64>>, from: &[Vec<u64>]) {
            if into.len() < from.len() {
                into.resize(from.len(), Vec::new());
            }
            for (a, b) in into.iter_mut().zip(from) {
                if a.len() < b.len() {
                    a.resize(b.len(), 0);
                }
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
            }
        }
        add(&mut self.experts, &other.experts);
        add(&mut self.nodes, &other.nodes);
    }
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

#[cfg(test)]
mod tests {
    use super::ExpertLoad;

    #[test]
    fn merging_adds_counts_and_grows_node_lists() {
        let mut a = ExpertLoad {
            experts: vec![vec![1, 2, 3], vec![0, 0, 4]],
            nodes: vec![vec![6], vec![4]],
        };
        let b = ExpertLoad {
            experts: vec![vec![10, 0, 1], vec![2, 2, 2]],
            nodes: vec![vec![5, 6], vec![3, 3]],
        };
        a.merge(&b);
        assert_eq!(a.experts, vec![vec![11, 2, 4], vec![2, 2, 6]]);
        assert_eq!(a.nodes, vec![vec![11, 6], vec![7, 3]]);
        a.clear();
        assert_eq!(a.experts, vec![vec![0; 3]; 2]);
        assert_eq!(a.nodes, vec![vec![0, 0]; 2]);
    }
}
