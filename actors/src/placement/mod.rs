//! `[placement]`: which streams exist, which layers form which pipeline stage, which stream runs
//! each stage's blocks, how routed experts are grouped into actors and mapped to streams and
//! nodes, the link model and the supervision policy. Parsed from the graph file's raw table and
//! resolved against the loaded model; every error names the offending field.

use std::ops::Range;
use std::time::Duration;

use toml::{Table, Value};
use troupe_engine::model::{FeedForward, Model};

use crate::error::{ActorError, Result};

mod parse;
use parse::*;

/// One resolved expert group: the experts one actor owns.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertGroup {
    pub experts: Vec<usize>,
    pub stream: usize,
    pub node: usize,
}

impl ExpertGroup {
    /// Actor name: `layer{L}.expert{E}` (one expert), `layer{L}.experts{A}-{B}` (a contiguous
    /// range), `layer{L}.group{G}` (an explicit non-contiguous list; G = index in the layer).
    pub fn actor_name(&self, layer: usize, index: usize) -> String {
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

/// The link between the router and the expert groups.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkSpec {
    pub latency: Duration,
    pub gbps: f64,
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

/// A resolved placement.
#[derive(Clone, Debug)]
pub struct Placement {
    pub streams: Vec<String>,
    /// Device of each stream (`cpu`, `ptx-interp`, `cuda:N`), built by the backend factory.
    pub stream_devices: Vec<String>,
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
    pub supervision: SupervisionSpec,
}

const KNOWN: &[&str] = &[
    "streams",
    "stages",
    "stage_streams",
    "experts",
    "expert_group_size",
    "expert_streams",
    "expert_groups",
    "nodes",
    "stage_nodes",
    "expert_nodes",
    "link",
    "channel_capacity",
    "supervision",
];

impl Placement {
    /// Resolves `table` (the graph's `[placement]`, or none) against `model`. `stages_override`
    /// is the CLI's `--stages N`.
    pub fn resolve(
        table: Option<&Table>,
        model: &Model,
        stages_override: Option<usize>,
    ) -> Result<Placement> {
        let empty = Table::new();
        let t = table.unwrap_or(&empty);
        if let Some(k) = t.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(ActorError::placement(
                k.as_str(),
                format!("unknown field (known: {})", KNOWN.join(", ")),
            ));
        }
        let n_layers = model.layers.len();
        let (streams, stream_devices): (Vec<String>, Vec<String>) =
            parse_streams(t.get("streams"))?.into_iter().unzip();
        let stream_index = |name: &str, field: &str| -> Result<usize> {
            streams.iter().position(|s| s == name).ok_or_else(|| {
                ActorError::placement(
                    field,
                    format!("no stream named `{name}` (streams: {})", streams.join(", ")),
                )
            })
        };
        let stages = match stages_override {
            Some(n) => even_stages(n, n_layers, "stages")?,
            None => parse_stages(t.get("stages"), n_layers)?,
        };
        let stage_streams = match t.get("stage_streams") {
            None => (0..stages.len()).map(|s| s % streams.len()).collect(),
            Some(Value::Array(a)) => {
                if a.len() != stages.len() {
                    return Err(ActorError::placement(
                        "stage_streams",
                        format!("{} entries for {} stages", a.len(), stages.len()),
                    ));
                }
                a.iter()
                    .enumerate()
                    .map(|(i, v)| stream_ref(v, &format!("stage_streams[{i}]"), &stream_index))
                    .collect::<Result<_>>()?
            }
            Some(v) => {
                return Err(ActorError::placement(
                    "stage_streams",
                    format!("expected a list of stream names, found `{v}`"),
                ))
            }
        };
        let nodes = match t.get("nodes") {
            None => 1,
            Some(v) => int(v, "nodes")?,
        };
        if nodes == 0 {
            return Err(ActorError::placement(
                "nodes",
                "at least one node is needed",
            ));
        }
        let stage_nodes = match t.get("stage_nodes") {
            None => vec![0; stages.len()],
            Some(v) => {
                let n = parse_nodes(v, "stage_nodes", nodes)?;
                if n.len() != stages.len() {
                    return Err(ActorError::placement(
                        "stage_nodes",
                        format!("{} entries for {} stages", n.len(), stages.len()),
                    ));
                }
                n
            }
        };
        let expert_nodes = match t.get("expert_nodes") {
            None => vec![0],
            Some(v) => parse_nodes(v, "expert_nodes", nodes)?,
        };
        let expert_streams: Vec<usize> = match t.get("expert_streams") {
            None => (0..streams.len()).collect(),
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .enumerate()
                .map(|(i, v)| stream_ref(v, &format!("expert_streams[{i}]"), &stream_index))
                .collect::<Result<_>>()?,
            Some(v) => {
                return Err(ActorError::placement(
                    "expert_streams",
                    format!("expected a non-empty list of stream names, found `{v}`"),
                ))
            }
        };
        let rule = match t.get("experts") {
            None => "round-robin".to_string(),
            Some(Value::String(s)) if s == "round-robin" || s == "block" => s.clone(),
            Some(v) => {
                return Err(ActorError::placement(
                    "experts",
                    format!("expected \"round-robin\" or \"block\", found `{v}` (explicit lists go in [[placement.expert_groups]])"),
                ))
            }
        };
        let group_size = match t.get("expert_group_size") {
            None => None,
            Some(v) => match int(v, "expert_group_size")? {
                0 => {
                    return Err(ActorError::placement(
                        "expert_group_size",
                        "must be at least 1",
                    ))
                }
                g => Some(g),
            },
        };
        let explicit = parse_explicit_groups(t.get("expert_groups"), &stream_index, nodes)?;
        let mut expert_groups = Vec::with_capacity(n_layers);
        for layer in &model.layers {
            let n_experts = match &layer.ffn {
                FeedForward::Moe(m) => m.experts.len(),
                FeedForward::Dense(_) => {
                    if let Some((i, _)) = explicit
                        .iter()
                        .enumerate()
                        .find(|(_, (l, _))| *l == Some(layer.index))
                    {
                        return Err(ActorError::placement(
                            format!("expert_groups[{i}].layer"),
                            format!("layer {} is dense (no experts)", layer.index),
                        ));
                    }
                    expert_groups.push(Vec::new());
                    continue;
                }
            };
            let mine: Vec<&(Option<usize>, ExpertGroup)> = {
                let per_layer: Vec<_> = explicit
                    .iter()
                    .filter(|(l, _)| *l == Some(layer.index))
                    .collect();
                if per_layer.is_empty() {
                    explicit.iter().filter(|(l, _)| l.is_none()).collect()
                } else {
                    per_layer
                }
            };
            let groups = if mine.is_empty() {
                rule_groups(n_experts, group_size, &rule, &expert_streams, &expert_nodes)
            } else {
                let mut seen = vec![false; n_experts];
                for (_, g) in &mine {
                    for &e in &g.experts {
                        if e >= n_experts {
                            return Err(ActorError::placement(
                                "expert_groups",
                                format!(
                                    "expert {e} does not exist (layer {} has {n_experts} experts)",
                                    layer.index
                                ),
                            ));
                        }
                        if std::mem::replace(&mut seen[e], true) {
                            return Err(ActorError::placement(
                                "expert_groups",
                                format!("expert {e} of layer {} is placed twice", layer.index),
                            ));
                        }
                    }
                }
                if let Some(e) = seen.iter().position(|s| !s) {
                    return Err(ActorError::placement(
                        "expert_groups",
                        format!("expert {e} of layer {} is not placed", layer.index),
                    ));
                }
                mine.iter().map(|(_, g)| g.clone()).collect()
            };
            expert_groups.push(groups);
        }
        if let Some((i, (Some(l), _))) = explicit
            .iter()
            .enumerate()
            .find(|(_, (l, _))| l.is_some_and(|l| l >= n_layers))
        {
            return Err(ActorError::placement(
                format!("expert_groups[{i}].layer"),
                format!("layer {l} does not exist (the model has {n_layers} layers)"),
            ));
        }
        let link = match t.get("link") {
            None => None,
            Some(Value::Table(l)) => Some(parse_link(l)?),
            Some(v) => {
                return Err(ActorError::placement(
                    "link",
                    format!("expected a table, found `{v}`"),
                ))
            }
        };
        let channel_capacity = match t.get("channel_capacity") {
            None => 4,
            Some(v) => match int(v, "channel_capacity")? {
                0 => {
                    return Err(ActorError::placement(
                        "channel_capacity",
                        "must be at least 1",
                    ))
                }
                c => c,
            },
        };
        let supervision = match t.get("supervision") {
            None => SupervisionSpec::default(),
            Some(Value::Table(s)) => parse_supervision(s)?,
            Some(v) => {
                return Err(ActorError::placement(
                    "supervision",
                    format!("expected a table, found `{v}`"),
                ))
            }
        };
        Ok(Placement {
            streams,
            stream_devices,
            stages,
            stage_streams,
            stage_nodes,
            expert_groups,
            nodes,
            link,
            channel_capacity,
            supervision,
        })
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
