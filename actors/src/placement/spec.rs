//! The `[placement]` table as written in a graph file: serde structs that only check types and
//! unknown fields (`deny_unknown_fields` on every table), read through [`from_table`], which names
//! the field at fault (`streams[1].device`, `link.gbps`). What the values mean (stream names,
//! layer ranges, expert coverage, link ranges) is checked when the spec is resolved against a
//! model (`resolve.rs`).

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Table;

use crate::error::{ActorError, Result};

/// `[placement]`: every field optional (see `graphs/README.md` for the defaults).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    pub streams: Option<StreamsSpec>,
    pub stages: Option<StagesSpec>,
    pub stage_streams: Option<Vec<String>>,
    pub experts: Option<ExpertRule>,
    pub expert_group_size: Option<usize>,
    pub expert_streams: Option<Vec<String>>,
    pub expert_groups: Option<Vec<ExpertGroupSpec>>,
    pub nodes: Option<usize>,
    pub stage_nodes: Option<Vec<usize>>,
    pub expert_nodes: Option<Vec<usize>>,
    pub link: Option<LinkTable>,
    pub channel_capacity: Option<usize>,
    pub stream_threads: Option<usize>,
    pub supervision: Option<SupervisionTable>,
}

impl PlacementSpec {
    /// Reads a `[placement]` table (none: every default).
    pub fn from_table(table: Option<&Table>) -> Result<PlacementSpec> {
        match table {
            None => Ok(PlacementSpec::default()),
            Some(t) => from_table(t).map_err(|e| ActorError::placement(e.field, e.message)),
        }
    }
}

/// A field that is a count or a list: `streams = 3` / `streams = [..]`, `stages = 2` /
/// `stages = [[0, 3], [4, 7]]`. The count is checked when resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum CountOrList<T> {
    Count(i64),
    List(Vec<T>),
}

/// `streams`: a count (`cpu0..`, 1..=256) or a list of entries.
pub type StreamsSpec = CountOrList<StreamEntry>;

/// One entry of a `streams` list.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEntry {
    /// A bare name: a CPU stream.
    Name(String),
    /// `[[placement.streams]]`: a named stream bound to a device.
    Table(StreamTable),
}

/// `{ name, device }`; `device` is parsed as a `DeviceId` when resolved (default `cpu`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamTable {
    pub name: Option<String>,
    pub device: Option<String>,
}

/// `stages`: a count (even split) or inclusive `[first, last]` layer ranges.
pub type StagesSpec = CountOrList<(usize, usize)>;

/// `experts`: how rule-made expert groups are spread over `expert_streams` / `expert_nodes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpertRule {
    /// Group `g` → entry `g mod n`.
    #[default]
    RoundRobin,
    /// Contiguous runs of groups per entry.
    Block,
}

/// `[[placement.expert_groups]]`; `experts` and `stream` are required (checked when resolved,
/// so the error names the field).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertGroupSpec {
    pub layer: Option<usize>,
    pub experts: Option<Vec<usize>>,
    pub stream: Option<String>,
    pub node: Option<usize>,
}

/// `[placement.link]`: checked by `LinkSpec::from_table`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkTable {
    pub latency_us: Option<f64>,
    pub gbps: Option<f64>,
}

/// `[placement.supervision]`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionTable {
    pub max_restarts: Option<usize>,
    pub window_ms: Option<u64>,
    pub deadline_ms: Option<u64>,
}

/// A table that did not deserialize: the dotted path of the field at fault and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Deserializes `table` into `T`, naming the field at fault (`streams[1].device`); an unknown
/// field is named itself (`link.colour`). Serves `[placement]` and `[schedule]`.
pub fn from_table<T: DeserializeOwned>(table: &Table) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().message().to_string();
        let mut field = if path == "." { String::new() } else { path };
        if let Some(unknown) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            // The path may stop at the table holding the unknown key, or name the key itself.
            if field.rsplit('.').next() != Some(unknown) {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(unknown);
            }
        }
        FieldError { field, message }
    })
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for CountOrList<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = CountOrList<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a count or a list")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<CountOrList<T>, E> {
                Ok(CountOrList::Count(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<CountOrList<T>, E> {
                Ok(CountOrList::Count(i64::try_from(n).unwrap_or(i64::MAX)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CountOrList<T>, A::Error> {
                let mut list = Vec::new();
                while let Some(e) = seq.next_element()? {
                    list.push(e);
                }
                Ok(CountOrList::List(list))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for StreamEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StreamEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a stream name or a { name, device } table")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StreamEntry, E> {
                Ok(StreamEntry::Name(s.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StreamEntry, A::Error> {
                StreamTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(StreamEntry::Table)
            }
        }
        d.deserialize_any(V)
    }
}
