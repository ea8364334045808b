//! `troupe eplb`: DeepSeek's expert-parallel load balancer over a measured expert load
//! (`troupe_actors::placement::eplb`), printed as a `[placement]` table with one expert group
//! per device and MoE layer (a hot expert listed on several devices: its replicas), or with
//! `--json` as `{"phy2log", "logcnt"}` in eplb.py's meaning.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use troupe_actors::placement::eplb::{block_device_loads, imbalance, rebalance_experts, EplbPlan};
use troupe_actors::placement::load::ExpertLoad;

use super::CliError;

#[derive(Args, Debug)]
pub struct EplbArgs {
    /// JSON: [[tokens per logical expert] per MoE layer, MoE layers in order] (what
    /// `--dump-expert-load` writes).
    #[arg(long)]
    pub load: PathBuf,
    /// Physical expert slots per layer (R): the logical experts plus redundant replicas.
    #[arg(long)]
    pub replicas: usize,
    /// Expert groups (G) of group-limited routing (DeepSeek-V3: n_group).
    #[arg(long)]
    pub groups: usize,
    /// Server nodes (N); hierarchical policy when N divides G, global otherwise.
    #[arg(long)]
    pub nodes: usize,
    /// Devices in all (D; one device = one troupe rank); R/D slots each.
    #[arg(long)]
    pub gpus: usize,
    /// Model layer of the first MoE layer, for the table's `layer = ...` (DeepSeek:
    /// first_k_dense_replace; ds-v3-mini: 1).
    #[arg(long, default_value_t = 0)]
    pub first_moe_layer: usize,
    /// Print {"phy2log": [[..] per MoE layer], "logcnt": [[..] per MoE layer]} as the last line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: EplbArgs) -> Result<(), CliError> {
    let path = a.load.display().to_string();
    let text = std::fs::read_to_string(&a.load).map_err(|e| CliError::Output {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let load: Vec<Vec<f64>> = serde_json::from_str(&text).map_err(|e| CliError::Output {
        path: path.clone(),
        message: format!("expected [[tokens per expert] per MoE layer]: {e}"),
    })?;
    let plan = rebalance_experts(&load, a.replicas, a.groups, a.nodes, a.gpus)
        .map_err(|e| CliError::Usage(format!("eplb: {e}")))?;
    if a.json {
        let out = serde_json::json!({ "phy2log": plan.phy2log, "logcnt": plan.logcnt });
        println!("{out}");
    } else {
        print!("{}", placement_table(&plan, &load, &a));
    }
    Ok(())
}

/// The plan as a `[placement]` table: `nodes = D`, one stream per device, and per MoE layer one
/// `[[placement.expert_groups]]` per device, preceded by comments with the balance it buys.
fn placement_table(plan: &EplbPlan, load: &[Vec<f64>], a: &EplbArgs) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# troupe eplb: {} policy, {} slots per MoE layer on {} devices ({} groups, {} nodes)",
        plan.policy, a.replicas, a.gpus, a.groups, a.nodes
    );
    for (l, row) in load.iter().enumerate() {
        let before = imbalance(&block_device_loads(row, a.gpus));
        let after = imbalance(&plan.device_loads(l, row));
        let _ = writeln!(
            s,
            "# MoE layer {l} (layer {}): max/mean load per device {before:.3} with contiguous blocks, {after:.3} balanced",
            a.first_moe_layer + l
        );
    }
    let _ = writeln!(s, "[placement]\nnodes = {}\nstreams = {}", a.gpus, a.gpus);
    for l in 0..plan.phy2log.len() {
        for d in 0..a.gpus {
            let experts: Vec<String> = plan
                .device_experts(l, d)
                .iter()
                .map(usize::to_string)
                .collect();
            let _ = writeln!(
                s,
                "\n[[placement.expert_groups]]\nlayer = {}\nexperts = [{}]\nstream = \"cpu{d}\"\nnode = {d}",
                a.first_moe_layer + l,
                experts.join(", ")
            );
        }
    }
    s
}

/// `--dump-expert-load FILE`: writes the rows routed to each logical expert by this process's
/// actor runtime (see [`write_expert_load`]).
pub fn dump_expert_load(
    path: &std::path::Path,
    model: &troupe_engine::model::Model,
) -> Result<(), CliError> {
    write_expert_load(path, &expert_load(model))
}

/// What this process's actor runtime tallied of `model`'s expert load so far.
pub fn expert_load(model: &troupe_engine::model::Model) -> ExpertLoad {
    troupe_actors::placement::load::snapshot(&troupe_actors::placement::layer_experts(model))
}

/// Writes `load` as `load.json` for `troupe eplb` ([[rows per expert] per MoE layer]), and says
/// on stderr how evenly the placement's nodes computed them (max/mean rows per node).
pub fn write_expert_load(path: &std::path::Path, load: &ExpertLoad) -> Result<(), CliError> {
    let text = serde_json::to_string(&load.experts).map_err(|e| CliError::Output {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    std::fs::write(path, text + "\n").map_err(|e| CliError::Output {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let as_f64 = |v: &[u64]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let per_layer: Vec<String> = load
        .nodes
        .iter()
        .map(|n| format!("{:.3}", imbalance(&as_f64(n))))
        .collect();
    let (max_sum, mean_sum) = load.nodes.iter().fold((0.0, 0.0), |(a, b), n| {
        let n = as_f64(n);
        let mean = n.iter().sum::<f64>() / n.len().max(1) as f64;
        (a + n.iter().copied().fold(0.0, f64::max), b + mean)
    });
    let overall = if mean_sum > 0.0 {
        max_sum / mean_sum
    } else {
        1.0
    };
    eprintln!(
        "expert load: {} MoE layers written to {}; rows per node (max/mean) over {} nodes: {overall:.3} overall, per MoE layer [{}]",
        load.experts.len(),
        path.display(),
        load.nodes.first().map_or(0, Vec::len),
        per_layer.join(", ")
    );
    Ok(())
}
