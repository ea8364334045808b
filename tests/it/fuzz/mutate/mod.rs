//! Mutations, as proptest strategies: interesting values, edits of TOML lines and JSON trees,
//! safetensors header edits (names, dtypes, shapes, offsets, the length prefix, truncation),
//! byte-level edits, and edits of fault strings. A mutation is drawn independently of the input
//! it is applied to (positions are `Index`es), so every case is one draw from a fixed seed.

use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Value};

mod args;
mod safetensors;

pub use args::{apply_cli, apply_fault, cli_op, fault_op, CliOp, FaultOp};
pub use safetensors::{apply_safetensors, safetensors_op, SafetensorsOp};

/// Values a TOML field is set to: small, boundary, absurd, non-finite and ill-typed.
pub const TOML_VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "7",
    "1023",
    "1024",
    "1000000000",
    "99999992",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "nan",
    "inf",
    "-inf",
    "1e300",
    "1e-300",
    "0.0",
    "-0.0",
    "0.5",
    "1.5",
    "\"\"",
    "\"x\"",
    "\"gelu\"",
    "true",
    "[]",
    "{}",
    "[1, 2]",
    "1979-05-27",
];

/// Values a JSON node is set to.
pub fn json_value() -> impl Strategy<Value = Value> {
    select(vec![
        json!(0),
        json!(1),
        json!(-1),
        json!(2),
        json!(3),
        json!(1023),
        json!(1024),
        json!(99999992),
        json!(1000000000),
        json!(2147483648u64),
        json!(4294967296u64),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(0.5),
        json!(-0.0),
        json!(1e-300),
        json!(1e300),
        json!(f64::MAX),
        json!(3.0),
        json!(""),
        json!("x"),
        json!("nan"),
        json!("gelu"),
        json!("sigmoid"),
        json!("F64"),
        json!(true),
        json!(false),
        Value::Null,
        json!([]),
        json!({}),
        json!([1, 2]),
        json!({"type": "yarn", "factor": 0}),
    ])
}

/// Keys inserted into objects and TOML tables: unknown ones and real ones in the wrong place.
pub const KEYS: &[&str] = &[
    "hiden_size",
    "vocab_size",
    "num_hidden_layers",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "scoring_func",
    "hidden_act",
    "attention_bias",
    "rope_scaling",
    "quantization_config",
    "__metadata__",
    "data_offsets",
    "dtype",
    "shape",
    "",
];

/// A byte-level edit.
#[derive(Clone, Debug)]
pub enum ByteOp {
    Flip(Index, u8),
    Set(Index, u8),
    Delete(Index, usize),
    Duplicate(Index, usize),
    Insert(Index, Vec<u8>),
    Truncate(Index),
}

pub fn byte_op() -> impl Strategy<Value = ByteOp> {
    let token = select(vec![
        b"9".to_vec(),
        b"99999992".to_vec(),
        b"-".to_vec(),
        b"\"".to_vec(),
        b"{".to_vec(),
        b"]".to_vec(),
        b",".to_vec(),
        b"\n".to_vec(),
        b"\\u0000".to_vec(),
        vec![0xff, 0xfe],
        vec![0],
    ]);
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| ByteOp::Flip(i, 1 << b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteOp::Set(i, b)),
        (any::<Index>(), 1usize..64).prop_map(|(i, n)| ByteOp::Delete(i, n)),
        (any::<Index>(), 1usize..64).prop_map(|(i, n)| ByteOp::Duplicate(i, n)),
        (any::<Index>(), token).prop_map(|(i, t)| ByteOp::Insert(i, t)),
        any::<Index>().prop_map(ByteOp::Truncate),
    ]
}

pub fn apply_bytes(data: &mut Vec<u8>, op: &ByteOp) {
    if data.is_empty() {
        return;
    }
    let len = data.len();
    match op {
        ByteOp::Flip(i, bit) => data[i.index(len)] ^= bit,
        ByteOp::Set(i, b) => data[i.index(len)] = *b,
        ByteOp::Delete(i, n) => {
            let at = i.index(len);
            data.drain(at..(at + n).min(len));
        }
        ByteOp::Duplicate(i, n) => {
            let at = i.index(len);
            let piece = data[at..(at + n).min(len)].to_vec();
            data.splice(at..at, piece);
        }
        ByteOp::Insert(i, bytes) => {
            let at = i.index(len + 1);
            data.splice(at..at, bytes.iter().copied());
        }
        ByteOp::Truncate(i) => data.truncate(i.index(len)),
    }
}

/// An edit of a TOML file, line-wise (so NaN, infinities and dates can be written).
#[derive(Clone, Debug)]
pub enum TomlOp {
    /// Sets the value of the n-th `key = value` line.
    SetValue(Index, &'static str),
    DeleteAssignment(Index),
    DuplicateAssignment(Index),
    /// Inserts `key = value` after the n-th line.
    InsertKey(Index, &'static str, &'static str),
    /// Deletes a `[table]` header line.
    DeleteHeader(Index),
    Bytes(ByteOp),
}

pub fn toml_op() -> impl Strategy<Value = TomlOp> {
    prop_oneof![
        6 => (any::<Index>(), select(TOML_VALUES)).prop_map(|(i, v)| TomlOp::SetValue(i, v)),
        1 => any::<Index>().prop_map(TomlOp::DeleteAssignment),
        1 => any::<Index>().prop_map(TomlOp::DuplicateAssignment),
        1 => (any::<Index>(), select(KEYS), select(TOML_VALUES))
            .prop_map(|(i, k, v)| TomlOp::InsertKey(i, k, v)),
        1 => any::<Index>().prop_map(TomlOp::DeleteHeader),
        2 => byte_op().prop_map(TomlOp::Bytes),
    ]
}

pub fn apply_toml(text: &str, op: &TomlOp) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let assignments: Vec<usize> = (0..lines.len())
        .filter(|&i| {
            let l = lines[i].trim_start();
            !l.starts_with('#') && !l.starts_with('[') && l.contains('=')
        })
        .collect();
    let headers: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim_start().starts_with('['))
        .collect();
    let pick = |v: &[usize], i: &Index| (!v.is_empty()).then(|| v[i.index(v.len())]);
    match op {
        TomlOp::SetValue(i, value) => {
            if let Some(n) = pick(&assignments, i) {
                let key = lines[n]
                    .split('=')
                    .next()
                    .unwrap_or("")
                    .trim_end()
                    .to_string();
                lines[n] = format!("{key} = {value}");
            }
        }
        TomlOp::DeleteAssignment(i) => {
            if let Some(n) = pick(&assignments, i) {
                lines.remove(n);
            }
        }
        TomlOp::DuplicateAssignment(i) => {
            if let Some(n) = pick(&assignments, i) {
                let l = lines[n].clone();
                lines.insert(n, l);
            }
        }
        TomlOp::InsertKey(i, key, value) => {
            let at = i.index(lines.len() + 1);
            let key = if key.is_empty() { "\"\"" } else { key };
            lines.insert(at, format!("{key} = {value}"));
        }
        TomlOp::DeleteHeader(i) => {
            if let Some(n) = pick(&headers, i) {
                lines.remove(n);
            }
        }
        TomlOp::Bytes(b) => {
            let mut data = text.as_bytes().to_vec();
            apply_bytes(&mut data, b);
            return String::from_utf8_lossy(&data).into_owned();
        }
    }
    lines.join("\n") + "\n"
}

/// An edit of a JSON tree.
#[derive(Clone, Debug)]
pub enum JsonOp {
    /// Replaces the n-th node (pre-order) with a value.
    Set(Index, Value),
    /// Removes the n-th node from its parent.
    Remove(Index),
    /// Inserts `key: value` into the n-th object.
    Insert(Index, &'static str, Value),
    /// Renames the n-th object member (to a near-miss of its name).
    Rename(Index),
}

pub fn json_op() -> impl Strategy<Value = JsonOp> {
    prop_oneof![
        5 => (any::<Index>(), json_value()).prop_map(|(i, v)| JsonOp::Set(i, v)),
        2 => any::<Index>().prop_map(JsonOp::Remove),
        1 => (any::<Index>(), select(KEYS), json_value()).prop_map(|(i, k, v)| JsonOp::Insert(i, k, v)),
        1 => any::<Index>().prop_map(JsonOp::Rename),
    ]
}

/// Pre-order paths of every node below the root (a path is a list of object keys / array
/// positions).
fn paths(v: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(PathStep::Key(k.clone()));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(PathStep::At(i));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathStep {
    Key(String),
    At(usize),
}

fn node_mut<'a>(root: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    path.iter().try_fold(root, |v, step| match step {
        PathStep::Key(k) => v.get_mut(k.as_str()),
        PathStep::At(i) => v.get_mut(*i),
    })
}

pub fn apply_json(root: &mut Value, op: &JsonOp) {
    let mut all = Vec::new();
    paths(root, &mut Vec::new(), &mut all);
    if all.is_empty() {
        *root = json!({});
        return;
    }
    let pick = |i: &Index| all[i.index(all.len())].clone();
    match op {
        JsonOp::Set(i, value) => {
            if let Some(node) = node_mut(root, &pick(i)) {
                *node = value.clone();
            }
        }
        JsonOp::Remove(i) => {
            let path = pick(i);
            let (last, parent) = path.split_last().expect("non-empty path");
            match (node_mut(root, parent), last) {
                (Some(Value::Object(m)), PathStep::Key(k)) => {
                    m.remove(k);
                }
                (Some(Value::Array(a)), PathStep::At(n)) => {
                    a.remove(*n);
                }
                _ => {}
            }
        }
        JsonOp::Insert(i, key, value) => {
            let path = pick(i);
            let target = match node_mut(root, &path) {
                Some(Value::Object(_)) => path,
                _ => path[..path.len() - 1].to_vec(),
            };
            if let Some(Value::Object(m)) = node_mut(root, &target) {
                m.insert((*key).to_string(), value.clone());
            }
        }
        JsonOp::Rename(i) => {
            let path = pick(i);
            let (last, parent) = path.split_last().expect("non-empty path");
            if let (Some(Value::Object(m)), PathStep::Key(k)) = (node_mut(root, parent), last) {
                if let Some(v) = m.remove(k) {
                    m.insert(format!("{k}_"), v);
                }
            }
        }
    }
}
