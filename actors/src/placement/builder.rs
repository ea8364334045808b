//! Builders for a placement and a link in code, instead of `toml::Table`s: [`PlacementBuilder`]
//! fills the same [`PlacementSpec`] a graph file's `[placement]` deserializes into, and
//! [`LinkBuilder`] the same [`LinkTable`] as `[placement.link]`, so both are checked by the one
//! resolve path (`resolve.rs`, `LinkSpec::from_table`) and their errors name the same fields.
//! Pass the spec as `RuntimeConfig::placement`, the one way to override a graph's placement.
//!
//! ```
//! use troupe_actors::placement::{LinkSpec, Placement};
//! let link = LinkSpec::builder().latency_us(100.0).gbps(10.0).build()?;
//! let spec = Placement::builder()
//!     .cpu_streams(3)
//!     .stages(2)
//!     .expert_group_size(4)
//!     .nodes(2)
//!     .expert_nodes([1])
//!     .link(link)
//!     .build();
//! // A model with 2 dense and 2 MoE layers of 8 experts:
//! let placement = spec.resolve(&[None, None, Some(8), Some(8)], None)?;
//! assert_eq!(placement.expert_groups[2].len(), 2);
//! # Ok::<(), troupe_actors::ActorError>(())
//! ```

use toml::Table;

use super::spec::{
    CountOrList, ExpertGroupSpec, ExpertRule, LinkTable, PlacementSpec, StreamEntry, StreamTable,
    SupervisionTable,
};
use super::{LinkSpec, Placement, SupervisionSpec};
use crate::error::{ActorError, Result};

impl Placement {
    /// A builder of a [`PlacementSpec`] (every field unset: the defaults a graph file without
    /// `[placement]` gets).
    pub fn builder() -> PlacementBuilder {
        PlacementBuilder::default()
    }
}

impl PlacementSpec {
    /// Reads `[placement]` from TOML text (the table's body, as after `[placement]`), checked
    /// like a graph file's; no `toml` dependency needed on the caller's side.
    pub fn from_toml_str(text: &str) -> Result<PlacementSpec> {
        let table: Table = toml::from_str(text)
            .map_err(|e| ActorError::placement("placement", e.message().to_string()))?;
        PlacementSpec::from_table(Some(&table))
    }
}

/// Fills a [`PlacementSpec`] field by field; values are checked when the spec is resolved
/// against a model (at runtime start, or [`PlacementSpec::resolve`]).
#[derive(Clone, Debug, Default)]
pub struct PlacementBuilder {
    spec: PlacementSpec,
}

impl PlacementBuilder {
    /// `streams = n`: CPU streams `cpu0..cpu{n-1}`.
    pub fn cpu_streams(mut self, n: usize) -> Self {
        self.spec.streams = Some(CountOrList::Count(i64::try_from(n).unwrap_or(i64::MAX)));
        self
    }

    /// Appends a named stream on `device` (`cpu`, `ptx-interp`, `cuda:N`, a custom name),
    /// like a `[[placement.streams]]` entry (replaces a stream count set before).
    pub fn stream(mut self, name: &str, device: &str) -> Self {
        let entry = StreamEntry::Table(StreamTable {
            name: Some(name.to_string()),
            device: Some(device.to_string()),
        });
        match &mut self.spec.streams {
            Some(CountOrList::List(list)) => list.push(entry),
            other => *other = Some(CountOrList::List(vec![entry])),
        }
        self
    }

    /// `stages = n`: layers split evenly over `n` pipeline stages.
    pub fn stages(mut self, n: usize) -> Self {
        self.spec.stages = Some(CountOrList::Count(i64::try_from(n).unwrap_or(i64::MAX)));
        self
    }

    /// `stages = [[first, last], ..]`: inclusive layer ranges per stage.
    pub fn stage_layers(mut self, ranges: impl IntoIterator<Item = (usize, usize)>) -> Self {
        self.spec.stages = Some(CountOrList::List(ranges.into_iter().collect()));
        self
    }

    /// `stage_streams`: the stream of each stage's attention, router and shared actors.
    pub fn stage_streams<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.spec.stage_streams = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// `nodes`: how many nodes the deployment has (transfers between nodes use the link).
    pub fn nodes(mut self, n: usize) -> Self {
        self.spec.nodes = Some(n);
        self
    }

    /// `stage_nodes`: the node of each stage.
    pub fn stage_nodes(mut self, nodes: impl IntoIterator<Item = usize>) -> Self {
        self.spec.stage_nodes = Some(nodes.into_iter().collect());
        self
    }

    /// `expert_nodes`: the nodes rule-made expert groups are spread over.
    pub fn expert_nodes(mut self, nodes: impl IntoIterator<Item = usize>) -> Self {
        self.spec.expert_nodes = Some(nodes.into_iter().collect());
        self
    }

    /// `expert_group_size`: experts per rule-made group (one actor each).
    pub fn expert_group_size(mut self, n: usize) -> Self {
        self.spec.expert_group_size = Some(n);
        self
    }

    /// `experts`: how rule-made groups are spread (`round-robin` or `block`).
    pub fn expert_rule(mut self, rule: ExpertRule) -> Self {
        self.spec.experts = Some(rule);
        self
    }

    /// `expert_streams`: the streams rule-made expert groups are spread over.
    pub fn expert_streams<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.spec.expert_streams = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Appends a `[[placement.expert_groups]]` entry: `experts` of `layer` (None: every MoE
    /// layer) on stream `stream` and node `node`.
    pub fn expert_group(
        mut self,
        layer: Option<usize>,
        experts: impl IntoIterator<Item = usize>,
        stream: &str,
        node: usize,
    ) -> Self {
        self.spec
            .expert_groups
            .get_or_insert_with(Vec::new)
            .push(ExpertGroupSpec {
                layer,
                experts: Some(experts.into_iter().collect()),
                stream: Some(stream.to_string()),
                node: Some(node),
            });
        self
    }

    /// `[placement.link]`, from a checked [`LinkSpec`].
    pub fn link(mut self, link: LinkSpec) -> Self {
        self.spec.link = Some(LinkTable {
            latency_us: Some(link.latency.as_secs_f64() * 1e6),
            gbps: Some(link.gbps),
        });
        self
    }

    /// `channel_capacity`: envelopes per data-plane channel.
    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.spec.channel_capacity = Some(n);
        self
    }

    /// `stream_threads`: each CPU stream runs its kernels on a pool of `n` threads of its own.
    pub fn stream_threads(mut self, n: usize) -> Self {
        self.spec.stream_threads = Some(n);
        self
    }

    /// `[placement.supervision]`.
    pub fn supervision(mut self, s: SupervisionSpec) -> Self {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.spec.supervision = Some(SupervisionTable {
            max_restarts: Some(s.max_restarts),
            window_ms: Some(ms(s.window)),
            deadline_ms: Some(ms(s.deadline)),
        });
        self
    }

    /// The spec (unchecked until resolved).
    pub fn build(self) -> PlacementSpec {
        self.spec
    }
}

/// Fills a [`LinkTable`] and checks it as `[placement.link]` is checked.
#[derive(Clone, Copy, Debug)]
pub struct LinkBuilder {
    table: LinkTable,
}

impl Default for LinkBuilder {
    fn default() -> Self {
        LinkBuilder {
            table: LinkTable {
                latency_us: None,
                gbps: None,
            },
        }
    }
}

impl LinkSpec {
    /// A builder: `gbps` is required, `latency_us` defaults to 0, as in `[placement.link]`.
    pub fn builder() -> LinkBuilder {
        LinkBuilder::default()
    }
}

impl LinkBuilder {
    pub fn latency_us(mut self, us: f64) -> Self {
        self.table.latency_us = Some(us);
        self
    }
    pub fn gbps(mut self, gbps: f64) -> Self {
        self.table.gbps = Some(gbps);
        self
    }
    /// The link, checked by [`LinkSpec::from_table`] (errors name `link.gbps` /
    /// `link.latency_us`).
    pub fn build(self) -> Result<LinkSpec> {
        LinkSpec::from_table(&self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 layers: 1 dense, 3 MoE of 8 experts.
    const LAYERS: [Option<usize>; 4] = [None, Some(8), Some(8), Some(8)];

    fn resolve_toml(text: &str) -> Result<Placement> {
        PlacementSpec::from_toml_str(text)?.resolve(&LAYERS, None)
    }

    #[test]
    fn builder_resolves_like_the_same_toml() {
        let link = LinkSpec::builder()
            .latency_us(20.0)
            .gbps(10.0)
            .build()
            .unwrap();
        let built = Placement::builder()
            .stream("a", "cpu")
            .stream("b", "cpu")
            .stages(2)
            .stage_streams(["a", "b"])
            .nodes(2)
            .expert_nodes([1])
            .expert_group_size(4)
            .expert_streams(["b"])
            .link(link)
            .channel_capacity(3)
            .stream_threads(1)
            .build()
            .resolve(&LAYERS, None)
            .unwrap();
        let toml = resolve_toml(
            "streams = [{ name = \"a\", device = \"cpu\" }, { name = \"b\", device = \"cpu\" }]\n\
             stages = 2\nstage_streams = [\"a\", \"b\"]\nnodes = 2\nexpert_nodes = [1]\n\
             expert_group_size = 4\nexpert_streams = [\"b\"]\nchannel_capacity = 3\n\
             stream_threads = 1\n[link]\nlatency_us = 20\ngbps = 10",
        )
        .unwrap();
        assert_eq!(format!("{built:?}"), format!("{toml:?}"));
    }

    #[test]
    fn builder_errors_name_the_fields_the_toml_path_names() {
        let field = |e: ActorError| match e {
            ActorError::Placement { field, .. } => field,
            other => panic!("not a placement error: {other}"),
        };
        let e = Placement::builder()
            .cpu_streams(2)
            .stages(2)
            .stage_streams(["cpu0", "nope"])
            .build()
            .resolve(&LAYERS, None)
            .unwrap_err();
        assert_eq!(field(e), "stage_streams[1]");
        let e = Placement::builder()
            .nodes(2)
            .expert_nodes([2])
            .build()
            .resolve(&LAYERS, None)
            .unwrap_err();
        assert_eq!(field(e), "expert_nodes[0]");
        let e = Placement::builder()
            .cpu_streams(1)
            .expert_group(Some(1), [0, 1, 2], "cpu0", 0)
            .build()
            .resolve(&LAYERS, None)
            .unwrap_err();
        assert_eq!(field(e), "expert_groups");
        assert_eq!(
            field(LinkSpec::builder().latency_us(1.0).build().unwrap_err()),
            "link.gbps"
        );
        assert_eq!(
            field(LinkSpec::builder().gbps(f64::NAN).build().unwrap_err()),
            "link.gbps"
        );
        assert_eq!(
            field(
                LinkSpec::builder()
                    .gbps(1.0)
                    .latency_us(-1.0)
                    .build()
                    .unwrap_err()
            ),
            "link.latency_us"
        );
        assert_eq!(
            field(PlacementSpec::from_toml_str("colour = 1").unwrap_err()),
            "colour"
        );
    }
}
