//! `troupe inspect` (the per-layer cost table) and `troupe import-hf` (HF config → graph file).

use std::path::Path;

use troupe_engine::graph::{LoadedGraph, Plan};
use troupe_engine::inspect::{inspect, weight_bytes};

use troupe_actors::transport::AttentionMode;

use super::common::CliError;

fn human(n: u64) -> String {
    let f = n as f64;
    if f >= 1e12 {
        format!("{:.2}T", f / 1e12)
    } else if f >= 1e9 {
        format!("{:.2}G", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2}M", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1}K", f / 1e3)
    } else {
        n.to_string()
    }
}

pub fn run_inspect(path: &Path, placement: Option<&Path>) -> Result<(), CliError> {
    let mut graph = LoadedGraph::open(path)?;
    let plan = Plan::compile(&graph.spec);
    let (rows, total) = inspect(&plan);
    println!(
        "model: {} ({:?}, {} layers, hidden {}, dtype {})",
        graph.origin.display(),
        graph.spec.architecture,
        graph.spec.num_hidden_layers,
        graph.spec.hidden_size,
        graph.spec.dtype
    );
    println!(
        "{:<18} {:>10} {:>12} {:>12} {:>12} {:>12} {:>14}",
        "node", "params", "active/tok", "KV B/tok", "KV exp B/tok", "FLOPs/tok", "attn FLOPs/ctx"
    );
    for r in rows
        .iter()
        .chain(std::iter::once(&troupe_engine::inspect::Row {
            label: "total".into(),
            counts: total.clone(),
        }))
    {
        let c = &r.counts;
        println!(
            "{:<18} {:>10} {:>12} {:>12} {:>12} {:>12} {:>14}",
            r.label,
            human(c.params),
            human(c.active_params),
            human(c.kv_bytes_latent),
            human(c.kv_bytes_expanded),
            human(c.flops),
            human(c.attn_flops_per_ctx)
        );
    }
    let bytes = weight_bytes(&plan);
    let fp8 = if bytes.fp8 > 0 {
        format!(
            " ({} FP8 e4m3 + {} of f32 block scales, the rest bf16)",
            human(bytes.fp8),
            human(bytes.scales)
        )
    } else {
        String::new()
    };
    println!(
        "weights: {} bytes at {}{fp8}; active weight bytes per token: {}; KV cache (f32, as stored): {} bytes/token (latent) vs {} expanded",
        human(bytes.total), graph.spec.dtype, human(bytes.active), human(total.kv_bytes_latent), human(total.kv_bytes_expanded)
    );
    if placement.is_some() {
        let mode = super::distributed::apply_placement(&mut graph, placement)?;
        print_rank_bytes(&graph, &plan, mode)?;
    }
    Ok(())
}

/// Weight bytes each rank (node) of the placement holds: embedding and LM head, every stage's
/// attention, norms, routers, shared experts and dense MLPs on its stage's node, each routed
/// expert on its group's node (each replica counted where it is). With data-parallel attention
/// every non-expert weight is on every rank.
fn print_rank_bytes(graph: &LoadedGraph, plan: &Plan, mode: AttentionMode) -> Result<(), CliError> {
    let layer_experts: Vec<Option<usize>> = (0..graph.spec.num_hidden_layers)
        .map(|l| {
            graph
                .spec
                .moe
                .as_ref()
                .filter(|_| graph.spec.is_moe_layer(l))
                .map(|m| m.n_routed_experts)
        })
        .collect();
    let data_parallel = mode == AttentionMode::DataParallel;
    let p = troupe_actors::placement::PlacementSpec::from_table(graph.placement.as_ref())
        .and_then(|s| s.resolve(&layer_experts, None))
        .map_err(|e| CliError::Usage(format!("--placement: {e}")))?;
    let bytes_per = graph.spec.dtype.size() as u64;
    let mut per_rank = vec![0u64; p.nodes.max(1)];
    for node in &plan.nodes {
        for w in &node.weights {
            let bytes = w.shape.iter().product::<usize>() as u64 * bytes_per;
            let expert = w
                .name
                .split(".experts.")
                .nth(1)
                .and_then(|r| r.split('.').next()?.parse::<usize>().ok());
            let owners: Vec<usize> = match (node.layer, expert) {
                (Some(l), Some(e)) => p.expert_groups[l]
                    .iter()
                    .filter(|g| g.experts.contains(&e))
                    .map(|g| g.node)
                    .collect(),
                _ if data_parallel => (0..per_rank.len()).collect(),
                (Some(l), None) => vec![p.stage_nodes[p.stage_of(l)]],
                (None, _) => vec![p.stage_nodes.first().copied().unwrap_or(0)],
            };
            for o in owners {
                if let Some(r) = per_rank.get_mut(o) {
                    *r += bytes;
                }
            }
        }
    }
    let mode = match data_parallel {
        true => "data-parallel attention",
        false => "staged attention",
    };
    println!("weights per rank ({} nodes, {mode}):", per_rank.len());
    for (r, b) in per_rank.iter().enumerate() {
        println!("rank {r}: {b} bytes ({})", human(*b));
    }
    Ok(())
}

pub fn run_import(dir: &Path) -> Result<(), CliError> {
    let graph = LoadedGraph::from_hf_dir(dir)?;
    print!(
        "# Generated by `troupe import-hf {}`\n{}",
        dir.display(),
        graph.to_graph_file().to_toml()
    );
    Ok(())
}
