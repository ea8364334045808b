//! Where the simulated work runs: the runtime's resolved [`Placement`] (same resolution as
//! `troupe generate`, from the graph's `[placement]` and the model's layer shapes only) plus what
//! the simulator needs on top — each stream's compute device and node, and which streams run
//! attention (one per stage, or every GPU with data-parallel attention).
//!
//! **`--gpus N` default layout** (when asked for, or the graph file has no `[placement]`
//! and N > 1): N streams `0..N` each its own GPU, `gpus_per_node` to a node; one pipeline stage;
//! attention data-parallel over all N GPUs (sequence `i` of a micro-batch on GPU `i mod N`, as
//! DeepSeek-V3 decodes: DP attention + expert parallelism); each MoE layer's routed experts cut
//! into N contiguous groups of ⌈E/N⌉ experts, group `g` on GPU `g`; shared experts beside
//! attention.

use troupe_actors::placement::PlacementSpec;
use troupe_actors::Placement;

use crate::error::{Result, SimError};
use crate::hardware::{DeviceKind, Hardware};

/// A resolved placement with devices and nodes (see the module doc).
#[derive(Clone, Debug)]
pub struct Layout {
    pub placement: Placement,
    /// Compute device of each stream (CPU streams of a process share device 0).
    pub stream_device: Vec<usize>,
    /// Node of each stream (for the wire a transfer takes).
    pub stream_node: Vec<usize>,
    pub n_devices: usize,
    /// Streams running attention data-parallel (empty: staged, each stage on its stream).
    pub attention_lanes: Vec<usize>,
}

impl Layout {
    /// The graph's `[placement]` (or none) resolved for a model with `layer_experts`, its
    /// streams mapped to `hw`'s devices: on GPUs each stream is a device, its node that of the
    /// first stage or expert group using it; on a CPU every stream shares the one device.
    pub fn from_table(
        table: Option<&toml::Table>,
        layer_experts: &[Option<usize>],
        stages: Option<usize>,
        hw: &Hardware,
    ) -> Result<Layout> {
        let placement = PlacementSpec::from_table(table)?.resolve(layer_experts, stages)?;
        let n = placement.streams.len();
        let mut stream_node: Vec<Option<usize>> = vec![None; n];
        for (s, &st) in placement.stage_streams.iter().enumerate() {
            stream_node[st].get_or_insert(placement.stage_nodes[s]);
        }
        for g in placement.expert_groups.iter().flatten() {
            stream_node[g.stream].get_or_insert(g.node);
        }
        let stream_node = stream_node.into_iter().map(|n| n.unwrap_or(0)).collect();
        let (stream_device, n_devices) = match hw.kind {
            DeviceKind::Cpu => (vec![0; n], 1),
            DeviceKind::Gpu => ((0..n).collect(), n),
        };
        Ok(Layout {
            placement,
            stream_device,
            stream_node,
            n_devices,
            attention_lanes: Vec::new(),
        })
    }

    /// The documented `--gpus N` layout (module doc).
    pub fn gpus(n: usize, layer_experts: &[Option<usize>], hw: &Hardware) -> Result<Layout> {
        if !(1..=4096).contains(&n) {
            return Err(SimError::parameter(
                "--gpus",
                format!("{n}: expected 1..=4096"),
            ));
        }
        let experts = layer_experts.iter().flatten().copied().max().unwrap_or(1);
        let size = experts.div_ceil(n).max(1);
        let mut table = toml::Table::new();
        table.insert("streams".into(), toml::Value::Integer(n.min(256) as i64));
        table.insert(
            "expert_group_size".into(),
            toml::Value::Integer(size as i64),
        );
        let mut layout = Layout::from_table(Some(&table), layer_experts, Some(1), hw)?;
        // More GPUs than the placement's 256-stream cap: groups stay on streams 0..256, and
        // attention spreads over all N (the resolved placement's stream list is only names).
        let per_node = hw.gpus_per_node;
        layout.stream_device = (0..n).collect();
        layout.stream_node = (0..n).map(|s| s / per_node).collect();
        layout.n_devices = n;
        layout.attention_lanes = (0..n).collect();
        for groups in &mut layout.placement.expert_groups {
            for (g, grp) in groups.iter_mut().enumerate() {
                grp.stream = g % n;
                grp.node = (g % n) / per_node;
            }
        }
        layout.placement.streams = (0..n).map(|s| format!("gpu{s}")).collect();
        layout.placement.nodes = n.div_ceil(per_node);
        Ok(layout)
    }

    /// Replaces layer `layer`'s expert groups: `(experts, stream)` each (an expert in several
    /// groups has replicas), the node that of the stream. Streams must exist.
    pub fn set_expert_groups(
        &mut self,
        layer: usize,
        groups: Vec<(Vec<usize>, usize)>,
    ) -> Result<()> {
        let n = self.n_streams();
        let slot = self
            .placement
            .expert_groups
            .get_mut(layer)
            .ok_or_else(|| SimError::parameter("layer", format!("{layer}: no such layer")))?;
        if let Some((_, s)) = groups.iter().find(|(e, s)| *s >= n || e.is_empty()) {
            return Err(SimError::parameter(
                "expert groups",
                format!("layer {layer}: stream {s} of {n}, or a group without experts"),
            ));
        }
        *slot = groups
            .into_iter()
            .map(|(experts, stream)| troupe_actors::placement::ExpertGroup {
                experts,
                stream,
                node: self.stream_node[stream],
                replica: 0,
            })
            .collect();
        Ok(())
    }

    pub fn n_streams(&self) -> usize {
        self.stream_device.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_layout_spreads_experts_and_attention() {
        let hw = Hardware::load("h800").unwrap();
        let mut layers = vec![None; 3];
        layers.extend(vec![Some(256); 58]);
        let l = Layout::gpus(256, &layers, &hw).unwrap();
        assert_eq!(l.n_streams(), 256);
        assert_eq!(l.attention_lanes.len(), 256);
        assert_eq!(l.placement.expert_groups[3].len(), 256);
        assert_eq!(l.placement.expert_groups[3][17].stream, 17);
        assert_eq!(l.stream_node[17], 2);
        assert_eq!(l.placement.nodes, 32);
        assert!(Layout::gpus(0, &layers, &hw).is_err());
    }

    #[test]
    fn cpu_streams_share_one_device() {
        let hw = Hardware::load("cpu").unwrap();
        let t: toml::Table = toml::from_str("streams = 3\nnodes = 2\nexpert_nodes = [1]").unwrap();
        let l = Layout::from_table(Some(&t), &[None, Some(8)], None, &hw).unwrap();
        assert_eq!(l.stream_device, vec![0, 0, 0]);
        assert_eq!(l.n_devices, 1);
        assert_eq!(l.stream_node[0], 0);
        assert!(l.placement.expert_groups[1].iter().all(|g| g.node == 1));
    }
}
