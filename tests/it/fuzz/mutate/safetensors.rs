//! Safetensors mutations: edits of a checkpoint's header (tensor names, dtypes, shapes, data
//! offsets), of its 8-byte length prefix, and truncation of the file.

use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Value};

use super::{apply_json, json_op, JsonOp};

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
