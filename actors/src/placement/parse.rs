//! Parsers of the individual `[placement]` fields (streams, stages, explicit expert groups, the
//! rule-made groups, link, supervision); each error names its field.

use std::ops::Range;
use std::time::Duration;

use toml::{Table, Value};

use super::{ExpertGroup, LinkSpec, SupervisionSpec};
use crate::error::{ActorError, Result};

pub(super) fn int(v: &Value, field: &str) -> Result<usize> {
    match v.as_integer() {
        Some(i) if i >= 0 => Ok(i as usize),
        _ => Err(ActorError::placement(
            field,
            format!("expected a non-negative integer, found `{v}`"),
        )),
    }
}

pub(super) fn num(v: &Value, field: &str) -> Result<f64> {
    let x = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
    match x {
        Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(ActorError::placement(
            field,
            format!("expected a non-negative number, found `{v}`"),
        )),
    }
}

pub(super) fn stream_ref(
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

/// Whether `d` names a device a stream can be bound to.
fn known_device(d: &str) -> bool {
    d == "cpu"
        || d == "ptx-interp"
        || d == "cuda"
        || d.strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `streams`: a count (`cpu0..`), a list of `cpu…` names, or `[[placement.streams]]` tables
/// `{ name, device = "cpu" | "ptx-interp" | "cuda:N" }`. Returns `(name, device)` pairs.
pub(super) fn parse_streams(v: Option<&Value>) -> Result<Vec<(String, String)>> {
    let cpu = |n: String| (n, "cpu".to_string());
    let streams: Vec<(String, String)> = match v {
        None => (0..2).map(|i| cpu(format!("cpu{i}"))).collect(),
        Some(Value::Integer(n)) if *n >= 1 && *n <= 256 => {
            (0..*n).map(|i| cpu(format!("cpu{i}"))).collect()
        }
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .enumerate()
            .map(|(i, s)| stream_entry(s, i))
            .collect::<Result<_>>()?,
        Some(v) => {
            return Err(ActorError::placement(
                "streams",
                format!(
                    "expected a stream count (1..=256), a non-empty list of names or [[placement.streams]] tables, found `{v}`"
                ),
            ))
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

fn stream_entry(v: &Value, i: usize) -> Result<(String, String)> {
    let f = |k: &str| format!("streams[{i}].{k}");
    match v {
        Value::String(n) if n.starts_with("cpu") => Ok((n.clone(), "cpu".into())),
        Value::String(n) => Err(ActorError::placement(
            format!("streams[{i}]"),
            format!("stream `{n}`: a bare name is a CPU stream and must start with `cpu`; bind another device with {{ name = \"{n}\", device = \"cuda:0\" }}"),
        )),
        Value::Table(t) => {
            if let Some(k) = t.keys().find(|k| !["name", "device"].contains(&k.as_str())) {
                return Err(ActorError::placement(
                    f(k),
                    "unknown field (known: name, device)",
                ));
            }
            let name = match t.get("name") {
                Some(Value::String(n)) if !n.is_empty() => n.clone(),
                Some(v) => {
                    return Err(ActorError::placement(
                        f("name"),
                        format!("expected a non-empty string, found `{v}`"),
                    ))
                }
                None => return Err(ActorError::placement(f("name"), "missing")),
            };
            let device = match t.get("device") {
                None => "cpu".to_string(),
                Some(Value::String(d)) if known_device(d) => d.clone(),
                Some(v) => {
                    return Err(ActorError::placement(
                        f("device"),
                        format!("expected \"cpu\", \"ptx-interp\" or \"cuda:N\", found `{v}`"),
                    ))
                }
            };
            Ok((name, device))
        }
        v => Err(ActorError::placement(
            format!("streams[{i}]"),
            format!("expected a stream name or a {{ name, device }} table, found `{v}`"),
        )),
    }
}

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

pub(super) fn parse_stages(v: Option<&Value>, n_layers: usize) -> Result<Vec<Range<usize>>> {
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

pub(super) type Explicit = Vec<(Option<usize>, ExpertGroup)>;

pub(super) fn parse_explicit_groups(
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

pub(super) fn rule_groups(
    n_experts: usize,
    group_size: Option<usize>,
    rule: &str,
    streams: &[usize],
    nodes: &[usize],
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
            let node = if rule == "block" {
                nodes[g * nodes.len() / n_groups]
            } else {
                nodes[g % nodes.len()]
            };
            ExpertGroup {
                experts: (g * size..((g + 1) * size).min(n_experts)).collect(),
                stream,
                node,
            }
        })
        .collect()
}

pub(super) fn parse_link(t: &Table) -> Result<LinkSpec> {
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

pub(super) fn parse_supervision(t: &Table) -> Result<SupervisionSpec> {
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

/// `field`: a non-empty list of node ids `< nodes`.
pub(super) fn parse_nodes(v: &Value, field: &str, nodes: usize) -> Result<Vec<usize>> {
    let Value::Array(a) = v else {
        return Err(ActorError::placement(
            field,
            format!("expected a list of node ids, found `{v}`"),
        ));
    };
    if a.is_empty() {
        return Err(ActorError::placement(field, "must not be empty"));
    }
    a.iter()
        .enumerate()
        .map(|(i, n)| {
            let f = format!("{field}[{i}]");
            let n = int(n, &f)?;
            if n >= nodes {
                return Err(ActorError::placement(
                    f,
                    format!("node {n} does not exist (placement.nodes = {nodes})"),
                ));
            }
            Ok(n)
        })
        .collect()
}
