//! Expert-parallel load balancing (EPLB), the algorithm DeepSeek describes in `deepseek-ai/EPLB`:
//! given the load of every logical expert of every MoE layer, choose how many replicas each
//! expert gets (R physical slots per layer: the experts plus redundant copies of the heavy ones)
//! and which device holds each slot, so that the load per device is as even as possible.
//!
//! Two policies, as there:
//! - **hierarchical** (the node count divides the expert-group count): expert groups are packed
//!   onto nodes with balanced load (each node gets the same number of groups, so group-limited
//!   routing keeps most traffic inside a node); each node replicates its own experts into its
//!   share of the slots; each node's slots are packed onto its devices with balanced load;
//! - **global** (otherwise): the same with one group and one node — replicate over all experts,
//!   pack the slots onto all devices.
//!
//! The building blocks: `balanced_packing` (greedy: heaviest item first into the lightest pack
//! that still has room; every pack takes the same number of items) and `replicate` (repeatedly
//! give one more replica to the expert whose load per replica is the largest). Ties go to the
//! lower index everywhere, so a plan is a pure function of its input. Slot `s` of a layer sits
//! on device `s / (R / D)`. This lives beside the placement it produces (`[[placement.
//! expert_groups]]` with one expert listed in several groups: its replicas).

/// What [`rebalance_experts`] refuses: one line naming the number at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EplbError {
    #[error("the load has no MoE layer (expected [[tokens per expert] per MoE layer])")]
    NoLayers,
    #[error("MoE layer {layer} has no experts")]
    NoExperts { layer: usize },
    #[error(
        "MoE layer {layer} has {found} experts but layer 0 has {expected} (rows must be equal)"
    )]
    Ragged {
        layer: usize,
        expected: usize,
        found: usize,
    },
    #[error("MoE layer {layer}, expert {expert}: load {load} is not a finite number >= 0")]
    BadLoad {
        layer: usize,
        expert: usize,
        load: f64,
    },
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    #[error("replicas {replicas} < {experts} logical experts (every expert needs a slot)")]
    TooFewReplicas { replicas: usize, experts: usize },
    #[error("gpus {devices} does not divide replicas {replicas} (every device gets R/D slots)")]
    SlotsPerDevice { replicas: usize, devices: usize },
    #[error("groups {groups} does not divide the {experts} experts")]
    GroupSize { groups: usize, experts: usize },
    #[error("nodes {nodes} does not divide gpus {devices} (hierarchical policy: groups {groups} is a multiple of nodes)")]
    DevicesPerNode {
        nodes: usize,
        devices: usize,
        groups: usize,
    },
}

/// Which policy made a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Hierarchical,
    Global,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Hierarchical => "hierarchical",
            Policy::Global => "global",
        })
    }
}

/// A replication and placement plan for every MoE layer.
#[derive(Clone, Debug, PartialEq)]
pub struct EplbPlan {
    /// `phy2log[layer][slot]`: the logical expert in physical slot `slot` (R per layer).
    pub phy2log: Vec<Vec<usize>>,
    /// `logcnt[layer][expert]`: its replica count (>= 1, summing to R).
    pub logcnt: Vec<Vec<usize>>,
    /// Devices (slot `s` sits on device `s / (R / devices)`).
    pub devices: usize,
    pub policy: Policy,
}

impl EplbPlan {
    /// Slots per device.
    pub fn slots_per_device(&self) -> usize {
        self.phy2log.first().map_or(0, Vec::len) / self.devices.max(1)
    }

    /// The logical experts device `device` holds in `layer` (ascending, each once: two replicas
    /// of one expert on one device serve as one).
    pub fn device_experts(&self, layer: usize, device: usize) -> Vec<usize> {
        let per = self.slots_per_device();
        let mut experts = self.phy2log[layer][device * per..(device + 1) * per].to_vec();
        experts.sort_unstable();
        experts.dedup();
        experts
    }

    /// Load per device of `layer` under this plan: an expert's load split evenly over its
    /// replicas.
    pub fn device_loads(&self, layer: usize, load: &[f64]) -> Vec<f64> {
        let per = self.slots_per_device();
        self.phy2log[layer]
            .chunks(per.max(1))
            .map(|slots| {
                slots
                    .iter()
                    .map(|&e| load[e] / self.logcnt[layer][e] as f64)
                    .sum()
            })
            .collect()
    }
}

/// Load per device with no replication: `experts` split into `devices` contiguous blocks
/// (expert `e` on device `e * devices / experts`), the layout of `experts = "block"`.
pub fn block_device_loads(load: &[f64], devices: usize) -> Vec<f64> {
    let mut out = vec![0.0; devices.max(1)];
    for (e, &l) in load.iter().enumerate() {
        out[e * devices.max(1) / load.len().max(1)] += l;
    }
    out
}

/// Max over mean of `loads` (1.0 = perfectly balanced; 1.0 too when all are zero).
pub fn imbalance(loads: &[f64]) -> f64 {
    let mean = loads.iter().sum::<f64>() / loads.len().max(1) as f64;
    let max = loads.iter().copied().fold(0.0, f64::max);
    if mean > 0.0 {
        max / mean
    } else {
        1.0
    }
}

/// DeepSeek's EPLB: `load[layer][expert]` (tokens per logical expert), `replicas` = physical
/// slots per layer (R), `groups` = expert groups (G), `nodes` = server nodes (N), `devices` =
/// devices in all (D). Hierarchical when N divides G, global otherwise.
pub fn rebalance_experts(
    load: &[Vec<f64>],
    replicas: usize,
    groups: usize,
    nodes: usize,
    devices: usize,
) -> Result<EplbPlan, EplbError> {
    let experts = check_load(load)?;
    for (v, what) in [
        (replicas, "replicas"),
        (groups, "groups"),
        (nodes, "nodes"),
        (devices, "gpus"),
    ] {
        if v == 0 {
            return Err(EplbError::Zero { what });
        }
    }
    if replicas < experts {
        return Err(EplbError::TooFewReplicas { replicas, experts });
    }
    if replicas % devices != 0 {
        return Err(EplbError::SlotsPerDevice { replicas, devices });
    }
    let (policy, shape) = if groups % nodes == 0 {
        if experts % groups != 0 {
            return Err(EplbError::GroupSize { groups, experts });
        }
        if devices % nodes != 0 {
            return Err(EplbError::DevicesPerNode {
                nodes,
                devices,
                groups,
            });
        }
        let shape = Shape {
            replicas,
            groups,
            nodes,
            devices,
        };
        (Policy::Hierarchical, shape)
    } else {
        let shape = Shape {
            replicas,
            groups: 1,
            nodes: 1,
            devices,
        };
        (Policy::Global, shape)
    };
    let (phy2log, logcnt) = load.iter().map(|row| shape.layer(row)).unzip();
    Ok(EplbPlan {
        phy2log,
        logcnt,
        devices,
        policy,
    })
}

/// Every row the same non-zero length, every load finite and >= 0; returns the expert count.
fn check_load(load: &[Vec<f64>]) -> Result<usize, EplbError> {
    let experts = load.first().ok_or(EplbError::NoLayers)?.len();
    for (layer, row) in load.iter().enumerate() {
        if row.is_empty() {
            return Err(EplbError::NoExperts { layer });
        }
        if row.len() != experts {
            return Err(EplbError::Ragged {
                layer,
                expected: experts,
                found: row.len(),
            });
        }
        if let Some((expert, &l)) = row
            .iter()
            .enumerate()
            .find(|(_, l)| !(l.is_finite() && **l >= 0.0))
        {
            return Err(EplbError::BadLoad {
                layer,
                expert,
                load: l,
            });
        }
    }
    Ok(experts)
}

/// The checked numbers of one hierarchical run (the global policy is one group on one node).
struct Shape {
    replicas: usize,
    groups: usize,
    nodes: usize,
    devices: usize,
}

impl Shape {
    /// One layer: `(phy2log, logcnt)`.
    fn layer(&self, load: &[f64]) -> (Vec<usize>, Vec<usize>) {
        let experts = load.len();
        let group_size = experts / self.groups;
        let groups_per_node = self.groups / self.nodes;
        let experts_per_node = experts / self.nodes;
        let slots_per_node = self.replicas / self.nodes;
        let devices_per_node = self.devices / self.nodes;
        let slots_per_device = self.replicas / self.devices;

        // 1. Groups onto nodes. Node-major order of the experts ("node-local ids"): node n's
        //    groups in the order they were packed, each group's experts in id order.
        let group_loads: Vec<f64> = load
            .chunks(group_size)
            .map(|g| g.iter().sum::<f64>())
            .collect();
        let packed = balanced_packing(&group_loads, self.nodes);
        let mut local_to_expert = vec![0; experts];
        for (g, &(node, rank)) in packed.iter().enumerate() {
            let first = (node * groups_per_node + rank) * group_size;
            for i in 0..group_size {
                local_to_expert[first + i] = g * group_size + i;
            }
        }

        let mut phy2log = vec![0; self.replicas];
        let mut logcnt = vec![0; experts];
        for node in 0..self.nodes {
            let mine = &local_to_expert[node * experts_per_node..(node + 1) * experts_per_node];
            let node_load: Vec<f64> = mine.iter().map(|&e| load[e]).collect();
            // 2. Replicate the node's experts into its slots.
            let (slot_expert, counts) = replicate(&node_load, slots_per_node);
            for (i, &c) in counts.iter().enumerate() {
                logcnt[mine[i]] = c;
            }
            // 3. The node's slots onto its devices, by load per replica.
            let slot_loads: Vec<f64> = slot_expert
                .iter()
                .map(|&i| node_load[i] / counts[i] as f64)
                .collect();
            for (s, (device, rank)) in balanced_packing(&slot_loads, devices_per_node)
                .into_iter()
                .enumerate()
            {
                let at = node * slots_per_node + device * slots_per_device + rank;
                phy2log[at] = mine[slot_expert[s]];
            }
        }
        (phy2log, logcnt)
    }
}

/// Packs `weights` into `packs` packs of `weights.len() / packs` items each (`packs` divides
/// the count): heaviest first (ties: lower index first), each into the lightest pack with room
/// (ties: lower pack). Returns `(pack, rank in pack)` per item. One item per pack: item i → i.
fn balanced_packing(weights: &[f64], packs: usize) -> Vec<(usize, usize)> {
    let per_pack = weights.len() / packs;
    if per_pack == 1 {
        return (0..weights.len()).map(|i| (i, 0)).collect();
    }
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]));
    let mut pack_load = vec![0.0f64; packs];
    let mut pack_items = vec![0usize; packs];
    let mut out = vec![(0, 0); weights.len()];
    for item in order {
        let mut best: Option<usize> = None;
        for p in (0..packs).filter(|&p| pack_items[p] < per_pack) {
            if best.is_none_or(|b| pack_load[p] < pack_load[b]) {
                best = Some(p);
            }
        }
        // A pack with room exists: the items fill exactly packs × per_pack places.
        let p = best.unwrap_or(0);
        out[item] = (p, pack_items[p]);
        pack_load[p] += weights[item];
        pack_items[p] += 1;
    }
    out
}

/// Replicates `load.len()` experts into `slots` slots: slot i < experts holds expert i, each
/// further slot a replica of the expert with the largest load per replica (ties: lower id).
/// Returns `(expert of each slot, replica count of each expert)`.
fn replicate(load: &[f64], slots: usize) -> (Vec<usize>, Vec<usize>) {
    let mut slot_expert: Vec<usize> = (0..load.len()).collect();
    let mut counts = vec![1usize; load.len()];
    while slot_expert.len() < slots {
        let mut best = 0;
        for e in 1..load.len() {
            if load[e] / counts[e] as f64 > load[best] / counts[best] as f64 {
                best = e;
            }
        }
        slot_expert.push(best);
        counts[best] += 1;
    }
    (slot_expert, counts)
}
