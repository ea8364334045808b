//! Replicated experts in `[placement]`: what resolving accepts and refuses, actor names, and how
//! a step's rows are shared among replicas (every (expert, row) entry exactly once, contiguous
//! runs in holder order) and joined back.

use troupe_engine::backend::{ExpertRows, Routing};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::model::DispatchPlan;
use troupe_engine::{Backend, Tensor};

use super::{ExpertReplicas, PlacementSpec};
use crate::error::ActorError;

fn resolve(text: &str, experts: usize) -> crate::error::Result<super::Placement> {
    let t: toml::Table = toml::from_str(text).expect("toml");
    PlacementSpec::from_table(Some(&t))?.resolve(&[None, Some(experts), Some(experts)], None)
}

#[test]
fn an_expert_in_several_groups_is_replicated_and_names_stay_unique() {
    let p = resolve(
        "streams = 2\nnodes = 2\n\
         [[expert_groups]]\nexperts = [0, 1]\nstream = \"cpu0\"\n\
         [[expert_groups]]\nexperts = [0]\nstream = \"cpu1\"\nnode = 1\n\
         [[expert_groups]]\nexperts = [2, 3, 0]\nstream = \"cpu1\"\nnode = 1\n\
         [[expert_groups]]\nexperts = [0]\nstream = \"cpu0\"\n\
         [[expert_groups]]\nexperts = [0, 1]\nstream = \"cpu1\"\n",
        4,
    )
    .unwrap();
    let names: Vec<String> = p.expert_groups[1]
        .iter()
        .enumerate()
        .map(|(g, grp)| grp.actor_name(1, g))
        .collect();
    assert_eq!(
        names,
        [
            "layer1.experts0-1",
            "layer1.expert0",
            "layer1.group2",
            "layer1.expert0.replica1",
            "layer1.experts0-1.replica1",
        ]
    );
    let r = ExpertReplicas::new(&p.expert_groups[1], 4);
    assert!(r.replicated());
    assert_eq!(r.holders(0), [0, 1, 2, 3, 4]);
    assert_eq!(r.holders(1), [0, 4]);
    assert_eq!(r.holders(3), [2]);
    assert!(!ExpertReplicas::new(&resolve("", 4).unwrap().expert_groups[1], 4).replicated());
}

#[test]
fn the_remaining_bad_groups_are_refused() {
    let err = |text: &str| match resolve(text, 4) {
        Err(ActorError::Placement { field, message }) => (field, message),
        other => panic!("{text}: {other:?}"),
    };
    let (f, m) = err("[[expert_groups]]\nexperts = [0, 1, 2, 3, 1]\nstream = \"cpu0\"");
    assert_eq!(f, "expert_groups[0].experts");
    assert!(m.contains("expert 1 is listed twice"), "{m}");
    let (f, m) = err(
        "[[expert_groups]]\nexperts = [0, 1, 2]\nstream = \"cpu0\"\n\
         [[expert_groups]]\nexperts = [0, 1, 2]\nstream = \"cpu1\"",
    );
    assert_eq!(f, "expert_groups");
    assert!(m.contains("expert 3 of layer 1 is not placed"), "{m}");
    let (_, m) = err(
        "[[expert_groups]]\nexperts = [0, 1, 2, 3]\nstream = \"cpu0\"\n\
         [[expert_groups]]\nexperts = [4]\nstream = \"cpu1\"",
    );
    assert!(m.contains("expert 4 does not exist"), "{m}");
}

/// A step of `rows` rows routed top-2 by a fixed pattern over `experts` experts.
fn routing(rows: usize, experts: u32) -> Routing {
    let ids: Vec<Vec<u32>> = (0..rows as u32)
        .map(|r| {
            let (a, b) = ((r * 7) % experts, (r * 3 + 1) % experts);
            let mut v = vec![a.min(b), a.max(b)];
            v.dedup();
            v
        })
        .collect();
    let weights = ids
        .iter()
        .map(|v| v.iter().map(|&e| 0.25 + e as f32).collect())
        .collect();
    Routing { ids, weights }
}

#[test]
fn shares_cover_every_entry_once_in_contiguous_runs() {
    let p = resolve(
        "[[expert_groups]]\nexperts = [0, 1, 2]\nstream = \"cpu0\"\n\
         [[expert_groups]]\nexperts = [0, 3]\nstream = \"cpu1\"\n\
         [[expert_groups]]\nexperts = [0, 1]\nstream = \"cpu1\"",
        4,
    )
    .unwrap();
    let r = ExpertReplicas::new(&p.expert_groups[1], 4);
    for rows in [1, 2, 3, 5, 11] {
        let routing = routing(rows, 4);
        let plan = DispatchPlan::new(&routing, 4).unwrap();
        let shares = r.shares(&plan, &routing);
        assert_eq!(shares.len(), 3);
        for e in 0..4u32 {
            // The holders' runs, in run order, are exactly the expert's rows.
            let mut runs = Vec::new();
            for &g in r.holders(e as usize) {
                if let Some(i) = shares[g].experts.iter().position(|&x| x == e) {
                    assert!(!shares[g].rows[i].is_empty());
                    runs.push((shares[g].run[i], shares[g].rows[i].clone()));
                }
            }
            runs.sort();
            let joined: Vec<usize> = runs.into_iter().flat_map(|(_, r)| r).collect();
            assert_eq!(joined, plan.rows[e as usize], "{rows} rows, expert {e}");
            // Runs differ in length by at most one.
            let lens: Vec<usize> = r
                .holders(e as usize)
                .iter()
                .map(|&g| {
                    let s = &shares[g];
                    s.experts
                        .iter()
                        .position(|&x| x == e)
                        .map_or(0, |i| s.rows[i].len())
                })
                .collect();
            let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            assert!(hi - lo <= 1, "{lens:?}");
        }
        // Group 1 holds only replicated expert 0 and unreplicated 3: not whole when 0 has rows.
        assert_eq!(shares[1].whole, plan.rows[0].is_empty());
        let (idx, entries) = shares[0].as_entries(&routing);
        assert_eq!(idx.len(), shares[0].entries());
        assert!(entries.ids.iter().all(|ids| ids.len() == 1));
    }
}

#[test]
fn merged_replica_outputs_equal_one_groups_output() {
    let be = CpuBackend::new();
    let (rows, experts, width) = (7usize, 4usize, 3usize);
    let routing = routing(rows, experts as u32);
    let plan = DispatchPlan::new(&routing, experts).unwrap();
    // A fake output per (expert, row) entry: row r of expert e is [e, r, e·r].
    let entry = |e: usize, r: usize| vec![e as f32, r as f32, (e * r) as f32];
    let block =
        |e: usize, rows: &[usize]| -> Vec<f32> { rows.iter().flat_map(|&r| entry(e, r)).collect() };
    let p = resolve(
        "[[expert_groups]]\nexperts = [0, 1, 2, 3]\nstream = \"cpu0\"\n\
         [[expert_groups]]\nexperts = [1, 2]\nstream = \"cpu1\"",
        experts,
    )
    .unwrap();
    let r = ExpertReplicas::new(&p.expert_groups[1], experts);
    let shares = r.shares(&plan, &routing);
    let outs: Vec<(usize, ExpertRows)> = shares
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .map(|(g, s)| {
            let data: Vec<f32> = s
                .experts
                .iter()
                .zip(&s.rows)
                .flat_map(|(&e, rows)| block(e as usize, rows))
                .collect();
            let t = Tensor::matrix(s.entries(), width, data).unwrap();
            let rows = ExpertRows {
                experts: s.experts.clone(),
                rows: be.upload(&t).unwrap(),
                index: None,
            };
            (g, rows)
        })
        .collect();
    let parts = r.merge(&be, outs, &shares).unwrap();
    let mut seen: Vec<u32> = parts.iter().flat_map(|p| p.experts.clone()).collect();
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3]);
    for part in &parts {
        let t = be.download(&part.rows).unwrap();
        let want: Vec<f32> = part
            .experts
            .iter()
            .flat_map(|&e| block(e as usize, &plan.rows[e as usize]))
            .collect();
        assert_eq!(t.data(), &want[..], "experts {:?}", part.experts);
    }
}
