//! `[placement]`: which streams exist and on which device, which layers form which pipeline
//! stage, which stream runs each stage's blocks, how routed experts are grouped into actors and
//! mapped to streams and nodes, the link model and the supervision policy. `spec.rs` reads the
//! graph file's table (serde, unknown fields refused), `resolve.rs` resolves it against the
//! loaded model; every error names the offending field. `builder.rs` fills the same spec in code
//! ([`Placement::builder`], [`LinkSpec::builder`]).

use std::ops::Range;
use std::time::Duration;

use toml::Table;
use troupe_engine::model::{FeedForward, Model};
use troupe_engine::DeviceId;

use crate::error::{ActorError, Result};

mod builder;
#[cfg(test)]
mod device_tests;
pub mod eplb;
#[cfg(test)]
mod eplb_tests;
pub mod load;
pub mod replicas;
#[cfg(test)]
mod replicas_tests;
mod resolve;
pub mod spec;
#[cfg(test)]
mod tests;

pub use builder::{LinkBuilder, PlacementBuilder};
pub use replicas::{ExpertReplicas, Share};
pub use spec::{LinkTable, PlacementSpec, SupervisionTable};

/// One resolved expert group: the experts one actor owns. An expert may sit in several groups
/// of a layer (its replicas, see [`ExpertReplicas`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertGroup {
    pub experts: Vec<usize>,
    pub stream: usize,
    pub node: usize,
    /// How many earlier groups of the layer have the same base actor name (a replica of the
    /// same experts); more than 0 adds `.replica{N}` to the actor name.
    pub replica: usize,
}

impl ExpertGroup {
    /// Actor name: `layer{L}.expert{E}` (one expert), `layer{L}.experts{A}-{B}` (a contiguous
    /// range), `layer{L}.group{G}` (an explicit non-contiguous list; G = index in the layer);
    /// a later replica of the same experts adds `.replica{N}`.
    pub fn actor_name(&self, layer: usize, index: usize) -> String {
        match self.replica {
            0 => self.base_name(layer, index),
            n => format!("{}.replica{n}", self.base_name(layer, index)),
        }
    }

    pub(super) fn base_name(&self, layer: usize, index: usize) -> String {
        let (first, last) = (self.experts[0], self.experts[self.experts.len() - 1]);
        if self.experts.len() == 1 {
            format!("layer{layer}.expert{first}")
        } else if last - first + 1 == self.experts.len()
            && self.experts.windows(2).all(|w| w[1] == w[0] + 1)
        {
            format!("layer{layer}.experts{first}-{last}")
        } else {
            format!("layer{layer}.group{index}")
        }
    }
}

/// The link between the router and the expert groups. Build it with [`LinkSpec::new`], which
/// keeps both numbers in their documented range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkSpec {
    pub latency: Duration,
    pub gbps: f64,
}

/// `[placement.link] latency_us` range: 0 to 1 s.
pub const LINK_LATENCY_US: std::ops::RangeInclusive<f64> = 0.0..=1e6;
/// `[placement.link] gbps` range: 1 Mbit/s to 1 Pbit/s.
pub const LINK_GBPS: std::ops::RangeInclusive<f64> = 1e-3..=1e6;

impl LinkSpec {
    /// A link of `latency_us` µs and `gbps` Gbit/s; each must be finite and in
    /// [`LINK_LATENCY_US`] / [`LINK_GBPS`] (the error names `link.latency_us` / `link.gbps`).
    pub fn new(latency_us: f64, gbps: f64) -> Result<LinkSpec> {
        let latency_us = in_range(latency_us, &LINK_LATENCY_US, "link.latency_us", "µs")?;
        let gbps = in_range(gbps, &LINK_GBPS, "link.gbps", "Gbit/s")?;
        let latency = Duration::try_from_secs_f64(latency_us * 1e-6)
            .map_err(|e| ActorError::placement("link.latency_us", e.to_string()))?;
        Ok(LinkSpec { latency, gbps })
    }

    /// Checks a spec built field by field (e.g. `RuntimeConfig::link`) like [`LinkSpec::new`].
    pub fn validate(&self) -> Result<()> {
        LinkSpec::new(self.latency.as_secs_f64() * 1e6, self.gbps).map(|_| ())
    }

    /// `[placement.link]`: `gbps` is required, `latency_us` defaults to 0.
    pub fn from_table(t: &LinkTable) -> Result<LinkSpec> {
        let gbps = t
            .gbps
            .ok_or_else(|| ActorError::placement("link.gbps", "missing (bandwidth in Gbit/s)"))?;
        LinkSpec::new(t.latency_us.unwrap_or(0.0), gbps)
    }
}

fn in_range(x: f64, range: &std::ops::RangeInclusive<f64>, field: &str, unit: &str) -> Result<f64> {
    if range.contains(&x) {
        Ok(x)
    } else {
        Err(ActorError::placement(
            field,
            format!(
                "expected a finite number of {unit} in {}..={}, found {x}",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// Restart policy of every supervisor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SupervisionSpec {
    /// More than this many restarts of one actor within `window` → the actor is declared down.
    pub max_restarts: usize,
    pub window: Duration,
    /// A message in progress for longer than this (router: 4×, it waits on experts) → hung.
    pub deadline: Duration,
}

impl Default for SupervisionSpec {
    fn default() -> Self {
        SupervisionSpec {
            max_restarts: 3,
            window: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
        }
    }
}

/// `window_ms` / `deadline_ms` at most one day (a deadline is multiplied by 4 for routers).
pub const MAX_SUPERVISION_MS: u64 = 86_400_000;

impl SupervisionSpec {
    /// `[placement.supervision]` over the defaults.
    pub fn from_table(t: &SupervisionTable) -> Result<SupervisionSpec> {
        let mut s = SupervisionSpec::default();
        let ms = |v: u64, field: &str| {
            if v > MAX_SUPERVISION_MS {
                return Err(ActorError::placement(
                    field,
                    format!("{v} ms is more than a day (at most {MAX_SUPERVISION_MS})"),
                ));
            }
            Ok(Duration::from_millis(v))
        };
        if let Some(n) = t.max_restarts {
            s.max_restarts = n;
        }
        if let Some(w) = t.window_ms {
            s.window = ms(w, "supervision.window_ms")?;
        }
        match t.deadline_ms {
            Some(0) => {
                return Err(ActorError::placement(
                    "supervision.deadline_ms",
                    "must be at least 1",
                ))
            }
            Some(d) => s.deadline = ms(d, "supervision.deadline_ms")?,
            None => {}
        }
        Ok(s)
    }
}

/// A resolved placement.
#[derive(Clone, Debug)]
pub struct Placement {
    pub streams: Vec<String>,
    /// Device of each stream; its backend is built by the runtime's backend factory.
    pub stream_devices: Vec<DeviceId>,
    pub stages: Vec<Range<usize>>,
    /// Stream of stage `s`'s attention / router / shared / dense-MLP actors.
    pub stage_streams: Vec<usize>,
    /// Node of stage `s`'s attention / router / shared / dense-MLP actors: dispatch and
    /// combine cross the link only between a router and an expert group on another node.
    pub stage_nodes: Vec<usize>,
    /// Per layer: its expert groups (empty for dense layers).
    pub expert_groups: Vec<Vec<ExpertGroup>>,
    pub nodes: usize,
    pub link: Option<LinkSpec>,
    pub channel_capacity: usize,
    /// Threads of each CPU stream's own kernel pool (`stream_threads`); `None`: every stream
    /// runs its kernels on the process's pool. One thread per stream makes one process compute
    /// as nodes of one core each would (the link model against MPI ranks, `bench/mpi-tbf.sh`).
    pub stream_threads: Option<usize>,
    pub supervision: SupervisionSpec,
}

impl Placement {
    /// Reads `table` (the graph's `[placement]`, or none) and resolves it against `model`.
    /// `stages_override` is the CLI's `--stages N`.
    pub fn resolve(
        table: Option<&Table>,
        model: &Model,
        stages_override: Option<usize>,
    ) -> Result<Placement> {
        PlacementSpec::from_table(table)?.resolve(&layer_experts(model), stages_override)
    }

    /// Puts every stream on `device` (`RuntimeOptions::device`).
    pub fn put_all_streams_on(&mut self, device: &DeviceId) {
        self.stream_devices = vec![device.clone(); self.streams.len()];
    }

    /// The stage owning `layer`.
    pub fn stage_of(&self, layer: usize) -> usize {
        stage_of(&self.stages, layer)
    }
}

/// The stage (index into `stages`) holding `layer` (0 when none does).
pub fn stage_of(stages: &[Range<usize>], layer: usize) -> usize {
    stages.iter().position(|r| r.contains(&layer)).unwrap_or(0)
}

/// Per layer of `model`: its routed-expert count (`None`: a dense layer).
pub fn layer_experts(model: &Model) -> Vec<Option<usize>> {
    model
        .layers
        .iter()
        .map(|l| match &l.ffn {
            FeedForward::Moe(m) => Some(m.experts.len()),
            FeedForward::Dense(_) => None,
        })
        .collect()
}
