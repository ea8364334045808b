//! Resolving a [`PlacementSpec`] against a model's layers, one step per concern: streams and
//! their devices, stages, the streams and nodes of stages, expert groups (explicit or rule-made)
//! per layer, link, channel capacity and supervision. Every error names its field.

use std::ops::Range;

use troupe_engine::DeviceId;

use super::spec::{CountOrList, ExpertGroupSpec, ExpertRule, PlacementSpec, StreamEntry};
use super::{ExpertGroup, LinkSpec, Placement, SupervisionSpec};
use crate::error::{ActorError, Result};

/// At most this many streams by count (`streams = N`).
const MAX_STREAM_COUNT: i64 = 256;
/// Most threads of one stream's own kernel pool (`stream_threads`).
const MAX_STREAM_THREADS: usize = 1024;

/// The streams of a placement by name, for the fields that refer to them.
struct StreamNames<'a>(&'a [String]);

impl StreamNames<'_> {
    fn index(&self, name: &str, field: &str) -> Result<usize> {
        self.0.iter().position(|s| s == name).ok_or_else(|| {
            ActorError::placement(
                field,
                format!("no stream named `{name}` (streams: {})", self.0.join(", ")),
            )
        })
    }

    /// `field[i]` for each name of a list.
    fn list(&self, names: &[String], field: &str) -> Result<Vec<usize>> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| self.index(n, &format!("{field}[{i}]")))
            .collect()
    }
}

/// An explicit expert group and the layer it is limited to (None: every MoE layer).
type Explicit = Vec<(Option<usize>, ExpertGroup)>;

impl PlacementSpec {
    /// Resolves the spec for a model whose layer `l` has `layer_experts[l]` routed experts
    /// (`None`: a dense layer). `stages_override` is the CLI's `--stages N`.
    pub fn resolve(
        &self,
        layer_experts: &[Option<usize>],
        stages_override: Option<usize>,
    ) -> Result<Placement> {
        let n_layers = layer_experts.len();
        let (streams, stream_devices): (Vec<String>, Vec<DeviceId>) =
            self.resolve_streams()?.into_iter().unzip();
        let names = StreamNames(&streams);
        let stages = match stages_override {
            Some(n) => even_stages(n, n_layers, "stages")?,
            None => self.resolve_stages(n_layers)?,
        };
        let stage_streams = self.resolve_stage_streams(&names, stages.len())?;
        let nodes = self.nodes.unwrap_or(1);
        if nodes == 0 {
            return Err(ActorError::placement(
                "nodes",
                "at least one node is needed",
            ));
        }
        let stage_nodes = match &self.stage_nodes {
            None => vec![0; stages.len()],
            Some(list) => {
                let n = node_list(list, "stage_nodes", nodes)?;
                if n.len() != stages.len() {
                    return Err(ActorError::placement(
                        "stage_nodes",
                        format!("{} entries for {} stages", n.len(), stages.len()),
                    ));
                }
                n
            }
        };
        let rule = RuleGroups {
            nodes: match &self.expert_nodes {
                None => vec![0],
                Some(list) => node_list(list, "expert_nodes", nodes)?,
            },
            streams: self.resolve_expert_streams(&names, streams.len())?,
            rule: self.experts.unwrap_or_default(),
            size: match self.expert_group_size {
                Some(0) => {
                    return Err(ActorError::placement(
                        "expert_group_size",
                        "must be at least 1",
                    ))
                }
                size => size,
            },
        };
        let explicit = self.resolve_explicit_groups(&names, nodes)?;
        let expert_groups = expert_groups_per_layer(layer_experts, &explicit, &rule)?;
        let link = self.link.as_ref().map(LinkSpec::from_table).transpose()?;
        let channel_capacity = match self.channel_capacity {
            None => 4,
            Some(0) => {
                return Err(ActorError::placement(
                    "channel_capacity",
                    "must be at least 1",
                ))
            }
            Some(c) => c,
        };
        let stream_threads = match self.stream_threads {
            Some(n) if !(1..=MAX_STREAM_THREADS).contains(&n) => {
                return Err(ActorError::placement(
                    "stream_threads",
                    format!("{n}: must be 1..={MAX_STREAM_THREADS}"),
                ))
            }
            n => n,
        };
        let supervision = match &self.supervision {
            None => SupervisionSpec::default(),
            Some(t) => SupervisionSpec::from_table(t)?,
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
            stream_threads,
            supervision,
        })
    }

    /// `(name, device)` of every stream, names unique.
    fn resolve_streams(&self) -> Result<Vec<(String, DeviceId)>> {
        let cpu = |i: i64| (format!("cpu{i}"), DeviceId::Cpu);
        let streams: Vec<(String, DeviceId)> = match &self.streams {
            None => (0..2).map(cpu).collect(),
            Some(CountOrList::Count(n)) if (1..=MAX_STREAM_COUNT).contains(n) => {
                (0..*n).map(cpu).collect()
            }
            Some(CountOrList::List(list)) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, e)| stream_entry(e, i))
                .collect::<Result<_>>()?,
            Some(other) => {
                let found = match other {
                    CountOrList::Count(n) => n.to_string(),
                    CountOrList::List(_) => "[]".to_string(),
                };
                return Err(ActorError::placement(
                    "streams",
                    format!(
                        "expected a stream count (1..={MAX_STREAM_COUNT}), a non-empty list of names or [[placement.streams]] tables, found `{found}`"
                    ),
                ));
            }
        };
        for (i, (n, _)) in streams.iter().enumerate() {
            if streams[..i].iter().any(|(m, _)| m == n) {
                return Err(ActorError::placement(
                    format!("streams[{i}]"),
                    format!("stream `{n}` is listed twice"),
                ));
            }
        }
        Ok(streams)
    }

    fn resolve_stages(&self, n_layers: usize) -> Result<Vec<Range<usize>>> {
        match &self.stages {
            None => even_stages(1, n_layers, "stages"),
            Some(CountOrList::Count(n)) => match usize::try_from(*n) {
                Ok(n) => even_stages(n, n_layers, "stages"),
                Err(_) => Err(ActorError::placement(
                    "stages",
                    format!(
                        "expected a stage count or a list of [first, last] layer ranges, found `{n}`"
                    ),
                )),
            },
            Some(CountOrList::List(ranges)) => stage_ranges(ranges, n_layers),
        }
    }

    /// Stream of each stage (default: stage `s` → stream `s mod n`).
    fn resolve_stage_streams(&self, names: &StreamNames, n_stages: usize) -> Result<Vec<usize>> {
        match &self.stage_streams {
            None => Ok((0..n_stages).map(|s| s % names.0.len()).collect()),
            Some(list) if list.len() != n_stages => Err(ActorError::placement(
                "stage_streams",
                format!("{} entries for {n_stages} stages", list.len()),
            )),
            Some(list) => names.list(list, "stage_streams"),
        }
    }

    /// Streams the rule-made expert groups are spread over (default: all).
    fn resolve_expert_streams(&self, names: &StreamNames, n_streams: usize) -> Result<Vec<usize>> {
        match &self.expert_streams {
            None => Ok((0..n_streams).collect()),
            Some(list) if list.is_empty() => Err(ActorError::placement(
                "expert_streams",
                "expected a non-empty list of stream names, found `[]`",
            )),
            Some(list) => names.list(list, "expert_streams"),
        }
    }

    fn resolve_explicit_groups(&self, names: &StreamNames, nodes: usize) -> Result<Explicit> {
        let Some(list) = &self.expert_groups else {
            return Ok(Vec::new());
        };
        list.iter()
            .enumerate()
            .map(|(i, g)| explicit_group(g, i, names, nodes))
            .collect()
    }
}

fn stream_entry(e: &StreamEntry, i: usize) -> Result<(String, DeviceId)> {
    let field = |k: &str| format!("streams[{i}].{k}");
    match e {
        StreamEntry::Name(n) if n.is_empty() => Err(ActorError::placement(
            format!("streams[{i}]"),
            "a stream name must not be empty",
        )),
        // A bare name is a CPU stream, whatever it is called, unless it reads as another
        // device: that is almost certainly a stream meant to be bound to it.
        StreamEntry::Name(n) => match n.parse::<DeviceId>() {
            Ok(d) if d.is_builtin() && d != DeviceId::Cpu => Err(ActorError::placement(
                format!("streams[{i}]"),
                format!("stream `{n}`: a bare name is a CPU stream; bind a device with {{ name = \"s{i}\", device = \"{d}\" }}"),
            )),
            _ => Ok((n.clone(), DeviceId::Cpu)),
        },
        StreamEntry::Table(t) => {
            let name = match &t.name {
                Some(n) if !n.is_empty() => n.clone(),
                Some(_) => {
                    return Err(ActorError::placement(
                        field("name"),
                        "expected a non-empty string, found `\"\"`",
                    ))
                }
                None => return Err(ActorError::placement(field("name"), "missing")),
            };
            let device = match &t.device {
                None => DeviceId::Cpu,
                Some(d) => d
                    .parse()
                    .map_err(|e: troupe_engine::device::ParseDeviceError| {
                        ActorError::placement(field("device"), e.to_string())
                    })?,
            };
            Ok((name, device))
        }
    }
}

/// `n` stages splitting `n_layers` layers evenly (the earlier stages get fewer).
pub(super) fn even_stages(n: usize, n_layers: usize, field: &str) -> Result<Vec<Range<usize>>> {
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

/// Inclusive `[first, last]` ranges → stages: non-empty, in layer order, covering every layer
/// exactly once.
fn stage_ranges(list: &[(usize, usize)], n_layers: usize) -> Result<Vec<Range<usize>>> {
    if list.is_empty() {
        return Err(ActorError::placement(
            "stages",
            "at least one stage is needed",
        ));
    }
    let mut stages = Vec::with_capacity(list.len());
    for (s, &(first, last)) in list.iter().enumerate() {
        let field = format!("stages[{s}]");
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
        let (prev, cur) = (&stages[s - 1], &stages[s]);
        if cur.start < prev.start {
            return Err(ActorError::placement(
                format!("stages[{s}]"),
                format!(
                    "layers {}-{} come before stage {}'s layers {}-{}: data would flow backwards (a cycle); stages must follow layer order",
                    cur.start,
                    cur.end - 1,
                    s - 1,
                    prev.start,
                    prev.end - 1
                ),
            ));
        }
    }
    let mut next = 0;
    for (s, r) in stages.iter().enumerate() {
        if r.start < next {
            return Err(ActorError::placement(
                format!("stages[{s}]"),
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
                format!("stages[{s}]"),
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

/// `field`: a non-empty list of node ids `< nodes`.
fn node_list(list: &[usize], field: &str, nodes: usize) -> Result<Vec<usize>> {
    if list.is_empty() {
        return Err(ActorError::placement(field, "must not be empty"));
    }
    for (i, &n) in list.iter().enumerate() {
        if n >= nodes {
            return Err(ActorError::placement(
                format!("{field}[{i}]"),
                format!("node {n} does not exist (placement.nodes = {nodes})"),
            ));
        }
    }
    Ok(list.to_vec())
}

fn explicit_group(
    g: &ExpertGroupSpec,
    i: usize,
    names: &StreamNames,
    nodes: usize,
) -> Result<(Option<usize>, ExpertGroup)> {
    let field = |k: &str| format!("expert_groups[{i}].{k}");
    let mut experts = match &g.experts {
        Some(e) if !e.is_empty() => e.clone(),
        _ => {
            return Err(ActorError::placement(
                field("experts"),
                "expected a non-empty list of expert ids",
            ))
        }
    };
    experts.sort_unstable();
    if let Some(w) = experts.windows(2).find(|w| w[0] == w[1]) {
        return Err(ActorError::placement(
            field("experts"),
            format!(
                "expert {} is listed twice (a replica goes in another group)",
                w[0]
            ),
        ));
    }
    let stream = match &g.stream {
        Some(s) => names.index(s, &field("stream"))?,
        None => {
            return Err(ActorError::placement(
                field("stream"),
                "missing (which stream runs this group?)",
            ))
        }
    };
    let node = g.node.unwrap_or(0);
    if node >= nodes {
        return Err(ActorError::placement(
            field("node"),
            format!("node {node} does not exist (placement.nodes = {nodes})"),
        ));
    }
    Ok((
        g.layer,
        ExpertGroup {
            experts,
            stream,
            node,
            replica: 0,
        },
    ))
}

/// How expert groups are made when no explicit group covers a layer.
struct RuleGroups {
    streams: Vec<usize>,
    nodes: Vec<usize>,
    rule: ExpertRule,
    /// Experts per group (None: one per expert up to 64 experts, else 32 groups).
    size: Option<usize>,
}

impl RuleGroups {
    fn groups(&self, n_experts: usize) -> Vec<ExpertGroup> {
        // Default: one actor per expert up to 64 experts, otherwise 32 groups (256 experts → 8 each).
        let size = self.size.unwrap_or(if n_experts <= 64 {
            1
        } else {
            n_experts.div_ceil(32)
        });
        let n_groups = n_experts.div_ceil(size);
        let pick = |list: &[usize], g: usize| match self.rule {
            ExpertRule::Block => list[g * list.len() / n_groups],
            ExpertRule::RoundRobin => list[g % list.len()],
        };
        (0..n_groups)
            .map(|g| ExpertGroup {
                experts: (g * size..((g + 1) * size).min(n_experts)).collect(),
                stream: pick(&self.streams, g),
                node: pick(&self.nodes, g),
                replica: 0,
            })
            .collect()
    }
}

/// Per layer: its explicit groups (those of the layer, else those for every layer), checked to
/// place each expert exactly once, or the rule's groups; none for dense layers.
fn expert_groups_per_layer(
    layer_experts: &[Option<usize>],
    explicit: &Explicit,
    rule: &RuleGroups,
) -> Result<Vec<Vec<ExpertGroup>>> {
    let mut out = Vec::with_capacity(layer_experts.len());
    for (layer, n_experts) in layer_experts.iter().enumerate() {
        let Some(n_experts) = *n_experts else {
            if let Some(i) = explicit.iter().position(|(l, _)| *l == Some(layer)) {
                return Err(ActorError::placement(
                    format!("expert_groups[{i}].layer"),
                    format!("layer {layer} is dense (no experts)"),
                ));
            }
            out.push(Vec::new());
            continue;
        };
        let mut mine: Vec<&ExpertGroup> = explicit
            .iter()
            .filter(|(l, _)| *l == Some(layer))
            .map(|(_, g)| g)
            .collect();
        if mine.is_empty() {
            mine = explicit
                .iter()
                .filter(|(l, _)| l.is_none())
                .map(|(_, g)| g)
                .collect();
        }
        if mine.is_empty() {
            out.push(rule.groups(n_experts));
        } else {
            check_coverage(&mine, layer, n_experts)?;
            out.push(number_replicas(&mine, layer));
        }
    }
    if let Some((i, (Some(l), _))) = explicit
        .iter()
        .enumerate()
        .find(|(_, (l, _))| l.is_some_and(|l| l >= layer_experts.len()))
    {
        return Err(ActorError::placement(
            format!("expert_groups[{i}].layer"),
            format!(
                "layer {l} does not exist (the model has {} layers)",
                layer_experts.len()
            ),
        ));
    }
    Ok(out)
}

/// Every expert of the layer in at least one of `groups` (in several: its replicas, which share
/// its rows); each id an expert of the layer.
fn check_coverage(groups: &[&ExpertGroup], layer: usize, n_experts: usize) -> Result<()> {
    let mut seen = vec![false; n_experts];
    for g in groups {
        for &e in &g.experts {
            if e >= n_experts {
                return Err(ActorError::placement(
                    "expert_groups",
                    format!("expert {e} does not exist (layer {layer} has {n_experts} experts)"),
                ));
            }
            seen[e] = true;
        }
    }
    match seen.iter().position(|s| !s) {
        Some(e) => Err(ActorError::placement(
            "expert_groups",
            format!("expert {e} of layer {layer} is not placed"),
        )),
        None => Ok(()),
    }
}

/// The layer's groups with `replica` set: the number of earlier groups with the same base actor
/// name (two groups of the same experts), so every actor name stays unique.
fn number_replicas(groups: &[&ExpertGroup], layer: usize) -> Vec<ExpertGroup> {
    let mut out: Vec<ExpertGroup> = Vec::with_capacity(groups.len());
    for (i, g) in groups.iter().enumerate() {
        let name = g.actor_name(layer, i);
        let replica = out
            .iter()
            .enumerate()
            .filter(|(j, o)| o.base_name(layer, *j) == name)
            .count();
        out.push(ExpertGroup {
            replica,
            ..(*g).clone()
        });
    }
    out
}
