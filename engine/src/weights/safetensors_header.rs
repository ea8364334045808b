//! The safetensors header, parsed and checked tensor by tensor so that every error names the
//! tensor at fault and gives the sizes: an unknown dtype, a byte range that does not match the
//! shape, two tensors sharing bytes, or data past the end of a truncated file.
//!
//! Unlike the `safetensors` crate, bytes that belong to no tensor are tolerated: a header with a
//! tensor removed then loads, and the model reports that tensor as missing, by name, if it needs it.

use safetensors::tensor::Dtype;
use serde_json::Value;

/// Largest header accepted (the `safetensors` crate's limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor of the header, with its byte range as absolute file offsets.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

fn truncated(what: String, file_len: usize) -> String {
    format!("the file is truncated: {what} (the file has {file_len} bytes)")
}

/// Parses and checks the header of a whole safetensors file.
pub fn parse_header(file: &[u8]) -> Result<Vec<HeaderEntry>, String> {
    let len_bytes: [u8; 8] = file
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            truncated(
                "it is shorter than the 8-byte header length".into(),
                file.len(),
            )
        })?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "the header length {header_len} is larger than the {MAX_HEADER_BYTES}-byte limit"
        ));
    }
    let data_start = 8 + header_len as usize;
    let header = file.get(8..data_start).ok_or_else(|| {
        truncated(
            format!("the header needs {header_len} bytes after its length"),
            file.len(),
        )
    })?;
    let header: Value =
        serde_json::from_slice(header).map_err(|e| format!("the header is not valid JSON: {e}"))?;
    let Value::Object(map) = header else {
        return Err("the header is not a JSON object".into());
    };
    let data_len = file.len() - data_start;
    let mut entries = Vec::with_capacity(map.len());
    for (name, info) in &map {
        if name == "__metadata__" {
            continue;
        }
        let (dtype, shape, begin, end) =
            tensor_info(info).map_err(|m| format!("tensor `{name}`: {m}"))?;
        let bits = shape
            .iter()
            .try_fold(dtype.bitsize(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor `{name}`: shape {shape:?} overflows"))?;
        let need = bits.div_ceil(8);
        if end - begin != need {
            return Err(format!(
                "tensor `{name}`: shape {shape:?} of {dtype:?} needs {need} bytes, but its data_offsets [{begin}, {end}] hold {}",
                end - begin
            ));
        }
        if end > data_len {
            return Err(truncated(
                format!(
                    "tensor `{name}` ends at data byte {end}, but only {data_len} data bytes follow the {header_len}-byte header"
                ),
                file.len(),
            ));
        }
        entries.push(HeaderEntry {
            name: name.clone(),
            dtype,
            shape,
            start: data_start + begin,
            end: data_start + end,
        });
    }
    entries.sort_by_key(|e| (e.start, e.end));
    for pair in entries.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.start < a.end && b.start < b.end {
            return Err(format!(
                "tensors `{}` and `{}` overlap (data bytes {}..{} and {}..{})",
                a.name,
                b.name,
                a.start - data_start,
                a.end - data_start,
                b.start - data_start,
                b.end - data_start
            ));
        }
    }
    Ok(entries)
}

/// `(dtype, shape, begin, end)` of one header entry.
fn tensor_info(info: &Value) -> Result<(Dtype, Vec<usize>, usize, usize), String> {
    let dtype_name = info
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or("no `dtype` string")?;
    let dtype: Dtype = serde_json::from_value(Value::String(dtype_name.into()))
        .map_err(|_| format!("unknown dtype `{dtype_name}`"))?;
    let shape = info
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("no `shape` list")?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or("`shape` must list non-negative integers")?;
    let offsets = info
        .get("data_offsets")
        .and_then(Value::as_array)
        .filter(|o| o.len() == 2)
        .and_then(|o| {
            let b = usize::try_from(o[0].as_u64()?).ok()?;
            let e = usize::try_from(o[1].as_u64()?).ok()?;
            Some((b, e))
        })
        .ok_or("`data_offsets` must be two non-negative integers")?;
    if offsets.1 < offsets.0 {
        return Err(format!(
            "data_offsets [{}, {}] end before they begin",
            offsets.0, offsets.1
        ));
    }
    Ok((dtype, shape, offsets.0, offsets.1))
}
