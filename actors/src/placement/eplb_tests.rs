//! EPLB: the `deepseek-ai/EPLB` README example reproduced exactly, the plan's invariants and its
//! balance on random skewed loads, and every refused input.

use super::eplb::{block_device_loads, imbalance, rebalance_experts, EplbError, Policy};

/// The README's example: 2 layers × 12 experts, 16 replicas, 4 groups, 2 nodes, 8 GPUs.
fn readme_load() -> Vec<Vec<f64>> {
    vec![
        vec![
            90., 132., 40., 61., 104., 165., 39., 4., 73., 56., 183., 86.,
        ],
        vec![
            20., 107., 104., 64., 19., 197., 187., 157., 172., 86., 16., 27.,
        ],
    ]
}

#[test]
fn reproduces_the_readme_example() {
    let plan = rebalance_experts(&readme_load(), 16, 4, 2, 8).unwrap();
    assert_eq!(plan.policy, Policy::Hierarchical);
    assert_eq!(
        plan.phy2log,
        vec![
            vec![5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
            vec![7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1],
        ]
    );
    // logcnt: each expert's slots in phy2log (the README prints phy2log; this is its count).
    assert_eq!(
        plan.logcnt,
        vec![
            vec![1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1],
            vec![1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1],
        ]
    );
    assert_eq!(plan.device_experts(0, 1), vec![5, 7]);
    assert_eq!(plan.device_experts(1, 2), vec![6, 11]);
}

#[test]
fn nodes_not_dividing_groups_take_the_global_policy() {
    let plan = rebalance_experts(&readme_load(), 16, 4, 3, 8).unwrap();
    assert_eq!(plan.policy, Policy::Global);
    // The global policy is the hierarchical one over one group on one node.
    let one = rebalance_experts(&readme_load(), 16, 1, 1, 8).unwrap();
    assert_eq!(plan.phy2log, one.phy2log);
    assert_eq!(plan.logcnt, one.logcnt);
    // The 4 redundant slots go to the heaviest per-replica loads: 183, 165, 132, 104 (layer 0).
    assert_eq!(plan.logcnt[0], vec![1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1]);
}

/// xorshift64: deterministic skewed loads without a dependency.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Heavily skewed: most experts light, a few hot (u⁴ · 1000 tokens).
    fn skewed(&mut self, layers: usize, experts: usize) -> Vec<Vec<f64>> {
        (0..layers)
            .map(|_| {
                (0..experts)
                    .map(|_| (1000.0 * self.unit().powi(4)).floor())
                    .collect()
            })
            .collect()
    }
}

#[test]
fn plans_keep_their_invariants_and_balance_skewed_loads() {
    // (experts, replicas, groups, nodes, devices): hierarchical and global, with redundancy
    // and at least two devices per node (one device per node can only move whole groups).
    let shapes = [
        (12, 16, 4, 2, 8),
        (64, 72, 8, 2, 8),
        (64, 80, 8, 4, 8),
        (64, 68, 8, 3, 4),
        (16, 24, 4, 2, 4),
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut plans, mut strictly_better) = (0, 0);
    for _ in 0..40 {
        for &(experts, r, g, n, d) in &shapes {
            let load = rng.skewed(2, experts);
            let plan = rebalance_experts(&load, r, g, n, d).unwrap();
            assert_eq!(plan.policy == Policy::Hierarchical, g % n == 0);
            for (l, row) in load.iter().enumerate() {
                let (phy, cnt) = (&plan.phy2log[l], &plan.logcnt[l]);
                assert_eq!(phy.len(), r);
                assert!(cnt.iter().all(|&c| c >= 1), "{cnt:?}");
                assert_eq!(cnt.iter().sum::<usize>(), r);
                for (e, &c) in cnt.iter().enumerate() {
                    assert_eq!(phy.iter().filter(|&&p| p == e).count(), c);
                }
                let loads = plan.device_loads(l, row);
                assert_eq!(loads.len(), d, "R/D slots on each of D devices");
                let total: f64 = row.iter().sum();
                assert!((loads.iter().sum::<f64>() - total).abs() <= 1e-6 * total.max(1.0));
                let (after, before) = (imbalance(&loads), imbalance(&block_device_loads(row, d)));
                assert!(
                    after <= before + 1e-12,
                    "{:?} layer {l}: max/mean {after} > {before} without replication",
                    (experts, r, g, n, d)
                );
                plans += 1;
                strictly_better += usize::from(after < before);
            }
        }
    }
    assert_eq!(plans, 400);
    assert!(strictly_better > 350, "{strictly_better} of 400");
    // Same input, same plan.
    let load = Rng(7).skewed(3, 64);
    assert_eq!(
        rebalance_experts(&load, 72, 8, 2, 8),
        rebalance_experts(&load, 72, 8, 2, 8)
    );
}

#[test]
fn bad_input_is_refused_with_the_number_at_fault() {
    let ok = readme_load();
    let cases: Vec<(Vec<Vec<f64>>, [usize; 4], EplbError)> = vec![
        (vec![], [16, 4, 2, 8], EplbError::NoLayers),
        (
            vec![vec![]],
            [16, 4, 2, 8],
            EplbError::NoExperts { layer: 0 },
        ),
        (
            vec![ok[0].clone(), ok[1][..11].to_vec()],
            [16, 4, 2, 8],
            EplbError::Ragged {
                layer: 1,
                expected: 12,
                found: 11,
            },
        ),
        (
            vec![ok[0].clone(), {
                let mut r = ok[1].clone();
                r[3] = -1.0;
                r
            }],
            [16, 4, 2, 8],
            EplbError::BadLoad {
                layer: 1,
                expert: 3,
                load: -1.0,
            },
        ),
        (
            ok.clone(),
            [8, 4, 2, 8],
            EplbError::TooFewReplicas {
                replicas: 8,
                experts: 12,
            },
        ),
        (
            ok.clone(),
            [18, 4, 2, 8],
            EplbError::SlotsPerDevice {
                replicas: 18,
                devices: 8,
            },
        ),
        (
            ok.clone(),
            [16, 8, 2, 8],
            EplbError::GroupSize {
                groups: 8,
                experts: 12,
            },
        ),
        (
            ok.clone(),
            [16, 4, 4, 2],
            EplbError::DevicesPerNode {
                nodes: 4,
                devices: 2,
                groups: 4,
            },
        ),
        (ok.clone(), [16, 4, 2, 0], EplbError::Zero { what: "gpus" }),
        (
            ok.clone(),
            [16, 0, 2, 8],
            EplbError::Zero { what: "groups" },
        ),
    ];
    for (load, [r, g, n, d], want) in cases {
        let got = rebalance_experts(&load, r, g, n, d);
        assert_eq!(got, Err(want.clone()));
        assert!(!want.to_string().contains('\n'));
    }
    let nan = vec![vec![f64::NAN; 12]];
    assert!(matches!(
        rebalance_experts(&nan, 16, 4, 2, 8),
        Err(EplbError::BadLoad { expert: 0, .. })
    ));
}
