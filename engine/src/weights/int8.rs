//! int8 weight-only quantisation: which weights of a plan become int8 (the policy of a graph
//! file's `[quantize]` table or `--quantize int8`), and the quantiser.
//!
//! Format: an `I8` tensor `[out, in]` plus an f32 `<name>_scale_inv` `[out, ceil(in/32)]`, one
//! scale per 32 consecutive weights of a row (the granularity of llama.cpp's Q8_0). The value of
//! element `(r, c)` is `q · scale_inv[r][c / 32]`, an exact integer times an f32, rounded once:
//! the linear kernels multiply exactly that product in the one dot order of
//! `kernels::dot`, so an int8 linear gives the bits of an f32 linear over the dequantised weight
//! (tested), whatever the batch, tiling, thread count or instruction set.
//!
//! Quantiser: per block `scale = amax / 127` (1 for an all-zero block), `q = round(v / scale)`
//! to nearest even, clamped to ±127. Activations stay f32.

use std::collections::HashSet;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{EngineError, Result};
use crate::graph::ir::{NodeKind, Plan, WeightRole};
use crate::weights::fp8::{BlockScales, SCALE_INV_SUFFIX};
use crate::weights::weight::try_zeroed_bytes;
use crate::weights::Weight;

/// Weights per scale along a row.
pub const INT8_BLOCK: usize = 32;

/// The largest magnitude of a quantised element.
const Q_MAX: f32 = 127.0;

/// Which kind of weight a plan matrix is, for a quantisation policy's `keep` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightClass {
    /// The projections of attention (MLA or GQA).
    Attention,
    /// The MLP of a dense layer.
    DenseMlp,
    /// The routed experts of an MoE layer.
    RoutedExperts,
    /// The shared experts of an MoE layer.
    SharedExperts,
    /// The output head (when not tied to the embedding table, which is never quantised).
    Head,
}

impl WeightClass {
    pub const ALL: [WeightClass; 5] = [
        WeightClass::Attention,
        WeightClass::DenseMlp,
        WeightClass::RoutedExperts,
        WeightClass::SharedExperts,
        WeightClass::Head,
    ];

    /// The name a `keep` list uses.
    pub fn name(self) -> &'static str {
        match self {
            WeightClass::Attention => "attention",
            WeightClass::DenseMlp => "dense_mlp",
            WeightClass::RoutedExperts => "routed_experts",
            WeightClass::SharedExperts => "shared_experts",
            WeightClass::Head => "head",
        }
    }

    /// Parses a `keep` entry (an error lists the names).
    pub fn parse(s: &str) -> Result<WeightClass> {
        WeightClass::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                EngineError::Invalid(format!(
                    "`{s}` is not a weight class; expected one of {}",
                    WeightClass::ALL.map(|c| c.name()).join(", ")
                ))
            })
    }
}

/// The quantised format (only int8 exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantFormat {
    Int8,
}

/// A graph file's `[quantize]` table: weights of the plan become int8 at load, except the
/// classes in `keep` and every weight of the layers in `keep_layers`, which stay as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizePolicy {
    pub format: QuantFormat,
    /// Weight classes left unquantised (default: attention, the most sensitive).
    #[serde(default = "default_keep")]
    pub keep: Vec<WeightClass>,
    /// Decoder layers (HF indices) left wholly unquantised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_layers: Vec<usize>,
}

fn default_keep() -> Vec<WeightClass> {
    vec![WeightClass::Attention]
}

impl QuantizePolicy {
    /// int8 with the default `keep` (attention).
    pub fn int8() -> Self {
        QuantizePolicy {
            format: QuantFormat::Int8,
            keep: default_keep(),
            keep_layers: Vec::new(),
        }
    }

    /// The names of the weights of `plan` this policy quantises: 2-D matrices of the classes
    /// not kept (never the embedding table, norms, the router gate or its bias).
    pub fn weight_names(&self, plan: &Plan) -> HashSet<String> {
        let mut names = HashSet::new();
        let embed = plan
            .nodes
            .iter()
            .find(|n| n.kind == NodeKind::Embedding)
            .and_then(|n| n.weights.first())
            .map(|w| w.name.clone());
        for node in &plan.nodes {
            if node.layer.is_some_and(|l| self.keep_layers.contains(&l)) {
                continue;
            }
            let (class, skip) = match node.kind {
                NodeKind::MlaAttention | NodeKind::GqaAttention => (WeightClass::Attention, 0),
                NodeKind::DenseMlp { .. } => (WeightClass::DenseMlp, 0),
                // The router gate comes first in an MoE node; its bias is not a matrix.
                NodeKind::Moe { .. } => (WeightClass::RoutedExperts, 1),
                NodeKind::LmHead => (WeightClass::Head, 0),
                NodeKind::Embedding | NodeKind::RmsNorm => continue,
            };
            for w in node.weights.iter().skip(skip) {
                let class = match class {
                    WeightClass::RoutedExperts if !w.name.contains(".experts.") => {
                        WeightClass::SharedExperts
                    }
                    c => c,
                };
                let tied = embed.as_deref() == Some(w.name.as_str());
                if w.role == WeightRole::Matrix
                    && w.shape.len() == 2
                    && !tied
                    && !self.keep.contains(&class)
                {
                    names.insert(w.name.clone());
                }
            }
        }
        names
    }
}

/// Quantises a row-major `rows × cols` f32 matrix to int8 with a scale per 32 columns of each
/// row (see the module docs); an error names the tensor if a value is not finite.
pub fn quantize_int8(name: &str, rows: usize, cols: usize, values: &[f32]) -> Result<Weight> {
    if values.len() != rows * cols {
        return Err(EngineError::ShapeMismatch {
            tensor: name.to_string(),
            expected: vec![rows, cols],
            found: vec![values.len()],
        });
    }
    let per_row = cols.div_ceil(INT8_BLOCK);
    let mut bytes = try_zeroed_bytes(name, rows * cols)?;
    let mut scales = vec![1.0f32; rows * per_row];
    bytes
        .par_chunks_mut(cols.max(1))
        .zip(scales.par_chunks_mut(per_row.max(1)))
        .enumerate()
        .try_for_each(|(r, (row, row_scales))| {
            quantize_row(name, r, &values[r * cols..(r + 1) * cols], row, row_scales)
        })?;
    let w = Weight::from_bytes(name, DType::I8, vec![rows, cols], &bytes)?;
    let scale_inv = Weight::from_f32(
        &format!("{name}{SCALE_INV_SUFFIX}"),
        vec![rows, per_row],
        &scales,
    );
    w.with_block_scales(BlockScales::for_dtype(DType::I8, scale_inv)?)
}

/// Row `r` of a quantisation: its bytes (two's-complement int8) and scales.
fn quantize_row(
    name: &str,
    r: usize,
    values: &[f32],
    out: &mut [u8],
    scales: &mut [f32],
) -> Result<()> {
    for (b, s) in scales.iter_mut().enumerate() {
        let (c0, c1) = (b * INT8_BLOCK, ((b + 1) * INT8_BLOCK).min(values.len()));
        let block = &values[c0..c1];
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if !amax.is_finite() || block.iter().any(|v| v.is_nan()) {
            return Err(EngineError::Invalid(format!(
                "tensor `{name}`: row {r}, columns {c0}..{c1} hold a non-finite value; it cannot be quantised"
            )));
        }
        if amax > 0.0 {
            *s = amax / Q_MAX;
        }
        for (o, &v) in out[c0..c1].iter_mut().zip(block) {
            *o = (round_even((v / *s).clamp(-Q_MAX, Q_MAX)) as i8) as u8;
        }
    }
    Ok(())
}

/// `x` (|x| ≤ 127) rounded to the nearest integer, ties to even: adding and removing 1.5·2^23
/// leaves no fraction bits, and f32 addition rounds to nearest even. `f32::round_ties_even`
/// gives the same values (tested) but is a libm call, a fifth of a model's quantisation time.
#[inline(always)]
fn round_even(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (x + SHIFT) - SHIFT
}

/// `w` quantised to int8 (a bf16, f16, f32 or FP8 weight, read as f32 values); an int8 weight
/// comes back unchanged.
pub fn quantize_weight(w: &Weight) -> Result<Weight> {
    if w.dtype() == DType::I8 {
        return Ok(w.clone());
    }
    let [rows, cols] = w.shape()[..] else {
        return Err(EngineError::Invalid(format!(
            "tensor `{}`: only 2-D weights are quantised to int8, not {:?}",
            w.name(),
            w.shape()
        )));
    };
    let values = match w.dtype() {
        DType::F32 => std::borrow::Cow::Borrowed(w.as_f32()?),
        _ => std::borrow::Cow::Owned(w.to_f32_vec()),
    };
    quantize_int8(w.name(), rows, cols, &values)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_even_is_round_ties_even_on_the_quantised_range() {
        let mut x = -127.0f32;
        while x <= 127.0 {
            for v in [x, x + 0.5, x + 0.25, x + 0.499_999_97, x + 0.500_000_06] {
                let v = v.clamp(-127.0, 127.0);
                assert_eq!(super::round_even(v), v.round_ties_even(), "{v}");
            }
            x += 1.0;
        }
    }
}
