//! Mutations, as proptest strategies: interesting values, edits of TOML lines and JSON trees,
//! safetensors header edits (names, dtypes, shapes, offsets, the length prefix, truncation),
//! byte-level edits, and edits of fault strings. A mutation is drawn independently of the input
//! it is applied to (positions are `Index`es), so every case is one draw from a fixed seed.

use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Value};

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

/// An edit of a safetensors file (header JSON and its framing).
#[derive(Clone, Debug)]
pub enum SafetensorsOp {
    Json(JsonOp),
    Dtype(Index, &'static str),
    ShapeDim(Index, Index, u64),
    ShapePush(Index, u64),
    ShapePop(Index),
    Offset(Index, bool, u64),
    SwapOffsets(Index, Index),
    RenameTo(Index, Index),
    RemoveTensor(Index),
    /// Adds this to the 8-byte header length (wrapping).
    HeaderLen(i64),
    Truncate(Index),
    Append(Vec<u8>),
}

const BIG: &[u64] = &[
    0,
    1,
    2,
    3,
    1023,
    1024,
    65536,
    99999992,
    1 << 31,
    1 << 32,
    1 << 40,
    (1 << 53) + 1,
    i64::MAX as u64,
    u64::MAX,
];

pub fn safetensors_op() -> impl Strategy<Value = SafetensorsOp> {
    let dtype = select(vec![
        "F32", "F16", "BF16", "F64", "I32", "I64", "U8", "I8", "BOOL", "F8_E4M3", "F4", "f32", "",
        "X",
    ]);
    prop_oneof![
        2 => json_op().prop_map(SafetensorsOp::Json),
        2 => (any::<Index>(), dtype).prop_map(|(i, d)| SafetensorsOp::Dtype(i, d)),
        2 => (any::<Index>(), any::<Index>(), select(BIG))
            .prop_map(|(t, d, v)| SafetensorsOp::ShapeDim(t, d, v)),
        1 => (any::<Index>(), select(BIG)).prop_map(|(t, v)| SafetensorsOp::ShapePush(t, v)),
        1 => any::<Index>().prop_map(SafetensorsOp::ShapePop),
        2 => (any::<Index>(), any::<bool>(), select(BIG))
            .prop_map(|(t, end, v)| SafetensorsOp::Offset(t, end, v)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| SafetensorsOp::SwapOffsets(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| SafetensorsOp::RenameTo(a, b)),
        1 => any::<Index>().prop_map(SafetensorsOp::RemoveTensor),
        1 => select(vec![-9i64, -1, 1, 7, 1 << 20, 1 << 40, i64::MAX, i64::MIN])
            .prop_map(SafetensorsOp::HeaderLen),
        1 => any::<Index>().prop_map(SafetensorsOp::Truncate),
        1 => select(vec![vec![0u8; 3], b"{}".to_vec()]).prop_map(SafetensorsOp::Append),
    ]
}

/// Applies `op` to a safetensors file; a file whose header is not JSON is edited byte-wise.
pub fn apply_safetensors(file: &mut Vec<u8>, op: &SafetensorsOp) {
    let parsed = split_header(file);
    let Some((mut header, data)) = parsed else {
        if let Some(b) = file.first_mut() {
            *b ^= 1;
        }
        return;
    };
    let names: Vec<String> = header
        .as_object()
        .map(|m| m.keys().filter(|k| *k != "__metadata__").cloned().collect())
        .unwrap_or_default();
    let tensor = |i: &Index| (!names.is_empty()).then(|| names[i.index(names.len())].clone());
    let mut raw_tail: Option<Vec<u8>> = None;
    match op {
        SafetensorsOp::Json(j) => apply_json(&mut header, j),
        SafetensorsOp::Dtype(t, d) => {
            if let Some(v) = tensor(t).and_then(|n| field(&mut header, &n, "dtype")) {
                *v = json!(d);
            }
        }
        SafetensorsOp::ShapeDim(t, d, v) => {
            if let Some(Value::Array(s)) = tensor(t).and_then(|n| field(&mut header, &n, "shape")) {
                if !s.is_empty() {
                    let at = d.index(s.len());
                    s[at] = json!(v);
                }
            }
        }
        SafetensorsOp::ShapePush(t, v) => {
            if let Some(Value::Array(s)) = tensor(t).and_then(|n| field(&mut header, &n, "shape")) {
                s.push(json!(v));
            }
        }
        SafetensorsOp::ShapePop(t) => {
            if let Some(Value::Array(s)) = tensor(t).and_then(|n| field(&mut header, &n, "shape")) {
                s.pop();
            }
        }
        SafetensorsOp::Offset(t, end, v) => {
            if let Some(Value::Array(o)) =
                tensor(t).and_then(|n| field(&mut header, &n, "data_offsets"))
            {
                if o.len() == 2 {
                    o[usize::from(*end)] = json!(v);
                }
            }
        }
        SafetensorsOp::SwapOffsets(a, b) => {
            if let (Some(a), Some(b)) = (tensor(a), tensor(b)) {
                let oa = field(&mut header, &a, "data_offsets").map(Value::take);
                let ob = field(&mut header, &b, "data_offsets").map(Value::take);
                if let (Some(oa), Some(ob)) = (oa, ob) {
                    *field(&mut header, &a, "data_offsets").expect("present") = ob;
                    *field(&mut header, &b, "data_offsets").expect("present") = oa;
                }
            }
        }
        SafetensorsOp::RenameTo(a, b) => {
            if let (Some(a), Some(b), Some(m)) = (tensor(a), tensor(b), header.as_object_mut()) {
                if let Some(v) = m.remove(&a) {
                    m.insert(b, v);
                }
            }
        }
        SafetensorsOp::RemoveTensor(t) => {
            if let (Some(n), Some(m)) = (tensor(t), header.as_object_mut()) {
                m.remove(&n);
            }
        }
        SafetensorsOp::HeaderLen(delta) => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&file[..8]);
            let n = u64::from_le_bytes(len).wrapping_add(*delta as u64);
            file[..8].copy_from_slice(&n.to_le_bytes());
            return;
        }
        SafetensorsOp::Truncate(i) => {
            let at = i.index(file.len());
            file.truncate(at);
            return;
        }
        SafetensorsOp::Append(bytes) => raw_tail = Some(bytes.clone()),
    }
    let text = serde_json::to_vec(&header).unwrap_or_default();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&data);
    if let Some(t) = raw_tail {
        out.extend_from_slice(&t);
    }
    *file = out;
}

/// A member of a tensor's header entry.
fn field<'a>(header: &'a mut Value, tensor: &str, name: &str) -> Option<&'a mut Value> {
    header.get_mut(tensor)?.get_mut(name)
}

/// (header JSON, data bytes) of a well-framed safetensors file.
fn split_header(file: &[u8]) -> Option<(Value, Vec<u8>)> {
    let n = u64::from_le_bytes(file.get(..8)?.try_into().ok()?) as usize;
    let header = file.get(8..8usize.checked_add(n)?)?;
    let v = serde_json::from_slice(header).ok()?;
    Some((v, file[8 + n..].to_vec()))
}

/// An edit of a fault string.
#[derive(Clone, Debug)]
pub enum FaultOp {
    /// Replaces the n-th `key:value` value.
    Value(Index, &'static str),
    /// Replaces the n-th key.
    Key(Index, &'static str),
    /// Inserts a separator or stray text at a byte position.
    Insert(Index, &'static str),
    Delete(Index, usize),
}

pub fn fault_op() -> impl Strategy<Value = FaultOp> {
    let values = select(vec![
        "",
        "0",
        "1",
        "-1",
        "3",
        "18446744073709551615",
        "18446744073709551616",
        "1e3",
        "panic",
        "hang",
        "abort",
        "layer0.attention",
        "layer1.router",
        "stage0",
        "nope",
        " ",
        "é",
    ]);
    let keys = select(vec![
        "actor", "after", "kind", "times", "", "Actor", "kind ",
    ]);
    // No NUL: an environment variable cannot hold one.
    let inserts = select(vec![";", ",", ":", ";;", ",,", "::", " ", "\t", "=", "é"]);
    prop_oneof![
        4 => (any::<Index>(), values).prop_map(|(i, v)| FaultOp::Value(i, v)),
        2 => (any::<Index>(), keys).prop_map(|(i, k)| FaultOp::Key(i, k)),
        2 => (any::<Index>(), inserts).prop_map(|(i, s)| FaultOp::Insert(i, s)),
        1 => (any::<Index>(), 1usize..8).prop_map(|(i, n)| FaultOp::Delete(i, n)),
    ]
}

pub fn apply_fault(text: &str, op: &FaultOp) -> String {
    let mut pairs: Vec<(String, Option<String>)> = text
        .split(',')
        .map(|p| match p.split_once(':') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (p.to_string(), None),
        })
        .collect();
    let n = pairs.len();
    match op {
        FaultOp::Value(i, v) => pairs[i.index(n)].1 = Some((*v).to_string()),
        FaultOp::Key(i, k) => pairs[i.index(n)].0 = (*k).to_string(),
        FaultOp::Insert(i, s) => {
            let mut chars: Vec<char> = text.chars().collect();
            let at = i.index(chars.len() + 1);
            chars.splice(at..at, s.chars());
            return chars.into_iter().collect();
        }
        FaultOp::Delete(i, len) => {
            let mut chars: Vec<char> = text.chars().collect();
            let at = i.index(chars.len().max(1)).min(chars.len());
            chars.drain(at..(at + len).min(chars.len()));
            return chars.into_iter().collect();
        }
    }
    pairs
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}:{v}"),
            None => k,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Values a CLI option is set to (`{out}` is a file in the case folder, `{model}` the case's
/// model folder; relative paths land in the case folder, the run's working directory).
pub const CLI_VALUES: &[&str] = &[
    "",
    "0",
    "-1",
    "1",
    "2",
    "5",
    "1024",
    "1025",
    "100000",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "4294967296",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "0.0",
    "1e-45",
    "abc",
    "1,,2",
    ",",
    "0,1024",
    "0,-3",
    " 1 , 2 ",
    "💥",
    "/nonexistent/dir/x",
    "/dev/zero",
    "out.safetensors",
    "{out}",
    "{model}",
    "{model}/config.json",
    "{model}/model.safetensors",
    "cuda:99",
    "cpu",
    "gpu",
    "reference",
    "actors",
    "pipeline",
    "two-microbatch",
    "sequential",
    "127.0.0.1:0",
    "naive",
    "absorbed",
    "--",
    "-",
];

/// Options inserted into an argument list.
pub const CLI_FLAGS: &[&str] = &[
    "--threads",
    "-n",
    "--max-new-tokens",
    "--prompt-ids",
    "--prompt",
    "--temperature",
    "--top-k",
    "--top-p",
    "--seed",
    "--runtime",
    "--schedule",
    "--stages",
    "--trace",
    "--device",
    "--mla",
    "--out",
    "-m",
    "--no-bos",
    "--stop-at-eos",
    "--json",
    "--skip-memory-check",
    "--reps",
    "--foo",
    "--help",
    "-V",
];

/// An edit of an argument list.
#[derive(Clone, Debug)]
pub enum CliOp {
    /// Replaces the n-th argument after the subcommand.
    Set(Index, &'static str),
    Remove(Index),
    Duplicate(Index),
    Insert(Index, &'static str, &'static str),
    Swap(Index, Index),
}

pub fn cli_op() -> impl Strategy<Value = CliOp> {
    prop_oneof![
        5 => (any::<Index>(), select(CLI_VALUES)).prop_map(|(i, v)| CliOp::Set(i, v)),
        1 => any::<Index>().prop_map(CliOp::Remove),
        1 => any::<Index>().prop_map(CliOp::Duplicate),
        3 => (any::<Index>(), select(CLI_FLAGS), select(CLI_VALUES))
            .prop_map(|(i, f, v)| CliOp::Insert(i, f, v)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| CliOp::Swap(a, b)),
    ]
}

/// Applies `op` to `args` (the subcommand, `args[0]`, is kept).
pub fn apply_cli(args: &mut Vec<String>, op: &CliOp) {
    let n = args.len();
    if n < 2 {
        return;
    }
    let at = |i: &Index| 1 + i.index(n - 1);
    match op {
        CliOp::Set(i, v) => args[at(i)] = (*v).to_string(),
        CliOp::Remove(i) => {
            args.remove(at(i));
        }
        CliOp::Duplicate(i) => {
            let a = args[at(i)].clone();
            args.insert(at(i), a);
        }
        CliOp::Insert(i, f, v) => {
            let k = 1 + i.index(n);
            args.splice(k..k, [(*f).to_string(), (*v).to_string()]);
        }
        CliOp::Swap(a, b) => args.swap(at(a), at(b)),
    }
}
