//! `[placement]`: which streams exist, which layers form which pipeline stage, which stream runs
//! each stage's blocks, how routed experts are grouped into actors and mapped to streams and
//! nodes, the link model and the supervision policy. Parsed from the graph file's raw table and
//! resolved against the loaded model; every error names the offending field.

use std::ops::Range;
use std::time::Duration;

use toml::{Table, Value};
use troupe_engine::model::{FeedForward, Model};

use crate::error::{ActorError, Result};

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
    pub stages: Vec<Range<usize>>,
    /// Stream of stage `s`'s attention / router / shared / dense-MLP actors.
    pub stage_streams: Vec<usize>,
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
    "link",
    "channel_capacity",
    "supervision",
];

fn int(v: &Value, field: &str) -> Result<usize> {
    match v.as_integer() {
        Some(i) if i >= 0 => Ok(i as usize),
        _ => Err(ActorError::placement(
            field,
            format!("expected a non-negative integer, found `{v}`"),
        )),
    }
}

fn num(v: &Value, field: &str) -> Result<f64> {
    let x = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
    match x {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(ActorError::placement(
            field,
            format!("expected a non-negative number, found `{v}`"),
        )),
    }
}

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
        let streams = parse_streams(t.get("streams"))?;
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
                rule_groups(n_experts, group_size, &rule, &expert_streams)
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
            stages,
            stage_streams,
            expert_groups,
            nodes,
            link,
            channel_capacity,
            supervision,
        })
    }

    /// The stage owning `layer`.
    pub fn stage_of(&self, layer: usize) -> usize {
        self.stages
            .iter()
            .position(|r| r.contains(&layer))
            .unwrap_or(0)
    }
}

fn stream_ref(
    v: &Value,
    field: &str,
    index: &dyn Fn(&str, &str) -> Result<usize>,
) -> Result<usize> {
    match v.as_str() {
        Some(s) => index(s, field),
        None => Err(ActorError::placement(
            field,
            format!("expected a stream name, found `{v}`"),
        )),
    }
}

fn parse_streams(v: Option<&Value>) -> Result<Vec<String>> {
    let names: Vec<String> =
        match v {
            None => (0..2).map(|i| format!("cpu{i}")).collect(),
            Some(Value::Integer(n)) if *n >= 1 && *n <= 256 => {
                (0..*n).map(|i| format!("cpu{i}")).collect()
            }
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.as_str().map(str::to_string).ok_or_else(|| {
                        ActorError::placement(
                            format!("streams[{i}]"),
                            format!("expected a stream name, found `{s}`"),
                        )
                    })
                })
                .collect::<Result<_>>()?,
            Some(v) => return Err(ActorError::placement(
                "streams",
                format!(
                    "expected a stream count (1..=256) or a non-empty list of names, found `{v}`"
                ),
            )),
        };
    for (i, n) in names.iter().enumerate() {
        if !n.starts_with("cpu") {
            return Err(ActorError::placement(
                format!("streams[{i}]"),
                format!("stream `{n}`: only CPU streams (`cpu…`) exist in this build; CUDA streams come from troupe-ptx"),
            ));
        }
        if names[..i].contains(n) {
            return Err(ActorError::placement(
                format!("streams[{i}]"),
                format!("stream `{n}` is listed twice"),
            ));
        }
    }
    Ok(names)
}

fn even_stages(n: usize, n_layers: usize, field: &str) -> Result<Vec<Range<usize>>> {
    if n == 0 {
        return Err(ActorError::placement(field, "at least one stage is needed"));
    }
    if n > n_layers {
        return Err(ActorError::placement(
            field,
            format!(
                "{n} stages but the model has only {n_layers} layers (every stage needs a layer)"
            ),
        ));
    }
    Ok((0..n)
        .map(|s| (s * n_layers / n)..((s + 1) * n_layers / n))
        .collect())
}

fn parse_stages(v: Option<&Value>, n_layers: usize) -> Result<Vec<Range<usize>>> {
    let list = match v {
        None => return even_stages(1, n_layers, "stages"),
        Some(Value::Integer(n)) if *n >= 0 => return even_stages(*n as usize, n_layers, "stages"),
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ActorError::placement(
                "stages",
                format!(
                    "expected a stage count or a list of [first, last] layer ranges, found `{v}`"
                ),
            ))
        }
    };
    if list.is_empty() {
        return Err(ActorError::placement(
            "stages",
            "at least one stage is needed",
        ));
    }
    let mut stages = Vec::with_capacity(list.len());
    for (s, v) in list.iter().enumerate() {
        let field = format!("stages[{s}]");
        let pair = v.as_array().filter(|p| p.len() == 2).ok_or_else(|| {
            ActorError::placement(
                &field,
                format!("expected [first, last] layers, found `{v}`"),
            )
        })?;
        let (first, last) = (int(&pair[0], &field)?, int(&pair[1], &field)?);
        if last < first {
            return Err(ActorError::placement(
                &field,
                format!("stage is empty (first layer {first} > last layer {last})"),
            ));
        }
        if last >= n_layers {
            return Err(ActorError::placement(
                &field,
                format!("layer {last} does not exist (the model has {n_layers} layers)"),
            ));
        }
        stages.push(first..last + 1);
    }
    for s in 1..stages.len() {
        if stages[s].start < stages[s - 1].start {
            return Err(ActorError::placement(
                format!("stages[{s}]"),
                format!(
                    "layers {}-{} come before stage {}'s layers {}-{}: data would flow backwards (a cycle); stages must follow layer order",
                    stages[s].start,
                    stages[s].end - 1,
                    s - 1,
                    stages[s - 1].start,
                    stages[s - 1].end - 1
                ),
            ));
        }
    }
    let mut next = 0;
    for (s, r) in stages.iter().enumerate() {
        let field = format!("stages[{s}]");
        if r.start < next {
            return Err(ActorError::placement(
                &field,
                format!(
                    "layers {}-{} overlap the previous stage (layer {} is in two stages)",
                    r.start,
                    r.end - 1,
                    r.start
                ),
            ));
        }
        if r.start > next {
            return Err(ActorError::placement(
                &field,
                format!("layer {next} belongs to no stage"),
            ));
        }
        next = r.end;
    }
    if next != n_layers {
        return Err(ActorError::placement(
            "stages",
            format!("layer {next} belongs to no stage"),
        ));
    }
    Ok(stages)
}

type Explicit = Vec<(Option<usize>, ExpertGroup)>;

fn parse_explicit_groups(
    v: Option<&Value>,
    stream_index: &dyn Fn(&str, &str) -> Result<usize>,
    nodes: usize,
) -> Result<Explicit> {
    let list = match v {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ActorError::placement(
                "expert_groups",
                format!("expected [[placement.expert_groups]] tables, found `{v}`"),
            ))
        }
    };
    let mut out = Vec::new();
    for (i, g) in list.iter().enumerate() {
        let f = |k: &str| format!("expert_groups[{i}].{k}");
        let g = g.as_table().ok_or_else(|| {
            ActorError::placement(format!("expert_groups[{i}]"), "expected a table")
        })?;
        if let Some(k) = g
            .keys()
            .find(|k| !["layer", "experts", "stream", "node"].contains(&k.as_str()))
        {
            return Err(ActorError::placement(
                f(k),
                "unknown field (known: layer, experts, stream, node)",
            ));
        }
        let experts: Vec<usize> = match g.get("experts") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|e| int(e, &f("experts")))
                .collect::<Result<_>>()?,
            _ => {
                return Err(ActorError::placement(
                    f("experts"),
                    "expected a non-empty list of expert ids",
                ))
            }
        };
        let mut experts = experts;
        experts.sort_unstable();
        let stream = match g.get("stream") {
            Some(s) => stream_ref(s, &f("stream"), stream_index)?,
            None => {
                return Err(ActorError::placement(
                    f("stream"),
                    "missing (which stream runs this group?)",
                ))
            }
        };
        let node = match g.get("node") {
            Some(n) => int(n, &f("node"))?,
            None => 0,
        };
        if node >= nodes {
            return Err(ActorError::placement(
                f("node"),
                format!("node {node} does not exist (placement.nodes = {nodes})"),
            ));
        }
        let layer = g.get("layer").map(|l| int(l, &f("layer"))).transpose()?;
        out.push((
            layer,
            ExpertGroup {
                experts,
                stream,
                node,
            },
        ));
    }
    Ok(out)
}

fn rule_groups(
    n_experts: usize,
    group_size: Option<usize>,
    rule: &str,
    streams: &[usize],
) -> Vec<ExpertGroup> {
    // Default: one actor per expert up to 64 experts, otherwise 32 groups (256 experts → 8 each).
    let size = group_size.unwrap_or(if n_experts <= 64 {
        1
    } else {
        n_experts.div_ceil(32)
    });
    let n_groups = n_experts.div_ceil(size);
    (0..n_groups)
        .map(|g| {
            let stream = if rule == "block" {
                streams[g * streams.len() / n_groups]
            } else {
                streams[g % streams.len()]
            };
            ExpertGroup {
                experts: (g * size..((g + 1) * size).min(n_experts)).collect(),
                stream,
                node: 0,
            }
        })
        .collect()
}

fn parse_link(t: &Table) -> Result<LinkSpec> {
    if let Some(k) = t
        .keys()
        .find(|k| !["latency_us", "gbps"].contains(&k.as_str()))
    {
        return Err(ActorError::placement(
            format!("link.{k}"),
            "unknown field (known: latency_us, gbps)",
        ));
    }
    let latency_us = t
        .get("latency_us")
        .map(|v| num(v, "link.latency_us"))
        .transpose()?
        .unwrap_or(0.0);
    let gbps = match t.get("gbps") {
        Some(v) => num(v, "link.gbps")?,
        None => {
            return Err(ActorError::placement(
                "link.gbps",
                "missing (bandwidth in Gbit/s)",
            ))
        }
    };
    if gbps <= 0.0 {
        return Err(ActorError::placement("link.gbps", "must be positive"));
    }
    Ok(LinkSpec {
        latency: Duration::from_secs_f64(latency_us * 1e-6),
        gbps,
    })
}

fn parse_supervision(t: &Table) -> Result<SupervisionSpec> {
    let mut s = SupervisionSpec::default();
    for (k, v) in t {
        match k.as_str() {
            "max_restarts" => s.max_restarts = int(v, "supervision.max_restarts")?,
            "window_ms" => {
                s.window = Duration::from_millis(int(v, "supervision.window_ms")? as u64)
            }
            "deadline_ms" => match int(v, "supervision.deadline_ms")? {
                0 => {
                    return Err(ActorError::placement(
                        "supervision.deadline_ms",
                        "must be at least 1",
                    ))
                }
                d => s.deadline = Duration::from_millis(d as u64),
            },
            _ => {
                return Err(ActorError::placement(
                    format!("supervision.{k}"),
                    "unknown field (known: max_restarts, window_ms, deadline_ms)",
                ))
            }
        }
    }
    Ok(s)
}
