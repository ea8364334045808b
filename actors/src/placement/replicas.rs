//! Replicated experts at run time: which expert groups of a layer hold each expert (an expert
//! listed in several `[[placement.expert_groups]]` has a replica in each), how one step's rows
//! are shared among the replicas, and how their outputs are put back together for the combine.
//!
//! The share is deterministic and depends only on the step's routing: expert `e`'s `n` rows, in
//! ascending row order (`DispatchPlan::rows[e]`), are cut into `k` contiguous runs (sizes
//! `n/k`, the first `n mod k` runs one longer), run `i` going to holder `(i + o) mod k` (holders
//! in ascending group index), where the offset `o` is a hash of the expert id and the bits of its
//! first row's routing weight — so the one-row steps of decoding spread over the replicas too. A
//! group that computes only part of an expert's rows gets them as entries — one row per (expert,
//! row), routed to that expert alone — and the router concatenates the runs back in run order,
//! so the combine sees each expert's rows exactly as if one group had computed them all. Rows are
//! independent in every expert kernel (batch invariance), so the bits are the reference's.

use troupe_engine::backend::{ExpertRows, Routing};
use troupe_engine::device_tensor::Location;
use troupe_engine::model::DispatchPlan;
use troupe_engine::weights::random::SplitMix64;
use troupe_engine::{Backend, EngineError};

use super::ExpertGroup;

/// The holders of every expert of one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertReplicas {
    /// `holders[e]`: the groups holding expert `e`, ascending.
    holders: Vec<Vec<usize>>,
    /// Node of each group.
    nodes: Vec<usize>,
}

/// One group's work in one step: its experts that got rows (ascending) and, aligned, the rows
/// of each it computes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Share {
    pub experts: Vec<u32>,
    pub rows: Vec<Vec<usize>>,
    /// Aligned with `experts`: which run of the expert's rows these are (0 when unreplicated).
    pub run: Vec<usize>,
    /// Every listed expert's rows are all here (no replica takes part of them).
    pub whole: bool,
}

impl Share {
    pub fn is_empty(&self) -> bool {
        self.experts.is_empty()
    }

    /// (expert, row) entries: the rows of the group's output.
    pub fn entries(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }

    /// The rows the group needs, ascending, each once.
    pub fn rows_needed(&self) -> Vec<usize> {
        let mut rows: Vec<usize> = self.rows.iter().flatten().copied().collect();
        rows.sort_unstable();
        rows.dedup();
        rows
    }

    /// As entries: one row per (expert, row), experts ascending, and the routing sending each
    /// entry to its expert alone (`top_k` 1) with the row's weight for it.
    pub fn as_entries(&self, routing: &Routing) -> (Vec<u32>, Routing) {
        let mut idx = Vec::with_capacity(self.entries());
        let mut entries = Routing {
            ids: Vec::with_capacity(self.entries()),
            weights: Vec::with_capacity(self.entries()),
        };
        for (&e, rows) in self.experts.iter().zip(&self.rows) {
            for &r in rows {
                let slot = routing.ids[r].iter().position(|&id| id == e);
                idx.push(r as u32);
                entries.ids.push(vec![e]);
                entries
                    .weights
                    .push(vec![slot.map_or(0.0, |s| routing.weights[r][s])]);
            }
        }
        (idx, entries)
    }
}

impl ExpertReplicas {
    /// The holders of each of `n_experts` experts in `groups` (every expert in at least one, as
    /// resolving the placement checked).
    pub fn new(groups: &[ExpertGroup], n_experts: usize) -> ExpertReplicas {
        let mut holders = vec![Vec::new(); n_experts];
        for (g, grp) in groups.iter().enumerate() {
            for &e in &grp.experts {
                if let Some(h) = holders.get_mut(e) {
                    h.push(g);
                }
            }
        }
        ExpertReplicas {
            holders,
            nodes: groups.iter().map(|g| g.node).collect(),
        }
    }

    /// Whether any expert has more than one holder.
    pub fn replicated(&self) -> bool {
        self.holders.iter().any(|h| h.len() > 1)
    }

    /// The groups holding expert `e` (ascending; empty for an unknown expert).
    pub fn holders(&self, e: usize) -> &[usize] {
        self.holders.get(e).map_or(&[], Vec::as_slice)
    }

    /// The node of group `g` (0 for an unknown group).
    pub fn node(&self, g: usize) -> usize {
        self.nodes.get(g).copied().unwrap_or(0)
    }

    /// Each group's share of the step `plan` describes (empty: no rows for it); `routing` is
    /// the step's host routing (the plan's source).
    pub fn shares(&self, plan: &DispatchPlan, routing: &Routing) -> Vec<Share> {
        let mut shares = vec![
            Share {
                whole: true,
                ..Share::default()
            };
            self.nodes.len()
        ];
        for e in plan.active_experts() {
            let (rows, holders) = (&plan.rows[e], self.holders(e));
            let k = holders.len().max(1);
            let (base, extra) = (rows.len() / k, rows.len() % k);
            let offset = if k > 1 {
                run_offset(e, rows[0], routing)
            } else {
                0
            };
            let mut start = 0;
            for i in 0..holders.len() {
                let g = holders[(i + offset) % k];
                let len = base + usize::from(i < extra);
                if k > 1 {
                    shares[g].whole = false;
                }
                if len > 0 {
                    shares[g].experts.push(e as u32);
                    shares[g].rows.push(rows[start..start + len].to_vec());
                    shares[g].run.push(i);
                }
                start += len;
            }
        }
        shares
    }

    /// The combine's parts from the groups' outputs `(group, rows)` on `be` (each already holding
    /// exactly its share's entries): a whole share's output as it is; a partial share's output
    /// cut per expert, each replicated expert's runs concatenated in run order.
    pub fn merge(
        &self,
        be: &dyn Backend,
        outs: Vec<(usize, ExpertRows)>,
        shares: &[Share],
    ) -> troupe_engine::Result<Vec<ExpertRows>> {
        let mut parts = Vec::with_capacity(outs.len());
        // Per replicated expert: (run, rows) of each run.
        let mut runs: std::collections::BTreeMap<u32, Vec<(usize, _)>> = Default::default();
        for (g, out) in outs {
            let share = &shares[g];
            if share.whole {
                parts.push(out);
                continue;
            }
            if be.location() != Location::Host {
                return Err(EngineError::Invalid(format!(
                    "replicated experts: the router's backend `{}` keeps data on a device; a router with replicated experts needs a host backend",
                    be.name()
                )));
            }
            let mut start = 0;
            for ((&e, rows), &run) in share.experts.iter().zip(&share.rows).zip(&share.run) {
                let block = be.slice_rows(&out.rows, start, start + rows.len())?;
                start += rows.len();
                let holders = self.holders(e as usize);
                if holders.len() == 1 {
                    parts.push(ExpertRows {
                        experts: vec![e],
                        rows: block,
                        index: None,
                    });
                } else {
                    runs.entry(e).or_default().push((run, block));
                }
            }
        }
        for (e, mut blocks) in runs {
            blocks.sort_by_key(|(at, _)| *at);
            let blocks: Vec<_> = blocks.into_iter().map(|(_, b)| b).collect();
            let rows = match blocks.len() {
                1 => blocks.into_iter().next().ok_or_else(|| {
                    EngineError::internal(format!("expert {e}: no rows to merge"))
                })?,
                _ => be.concat_rows(&blocks)?,
            };
            parts.push(ExpertRows {
                experts: vec![e],
                rows,
                index: None,
            });
        }
        Ok(parts)
    }
}

/// A deterministic offset for expert `e`'s runs: SplitMix64 seeded with its id and the bits of
/// `row`'s routing weight for it, so consecutive one-row steps land on varied replicas.
fn run_offset(e: usize, row: usize, routing: &Routing) -> usize {
    let weight = routing.ids.get(row).and_then(|ids| {
        let slot = ids.iter().position(|&id| id as usize == e)?;
        routing.weights[row].get(slot).copied()
    });
    let seed = (e as u64) << 32 | u64::from(weight.unwrap_or(0.0).to_bits());
    SplitMix64::new(seed).next_u64() as usize
}
