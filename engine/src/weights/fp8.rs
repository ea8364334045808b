//! FP8 block-scaled weights as DeepSeek-V3/R1 publish them: e4m3 bytes `[out, in]` plus an f32
//! `<name>_scale_inv` of shape `[ceil(out/128), ceil(in/128)]`, the multiplier of each 128×128
//! block (edge blocks are partial). This file owns [`BlockScales`], which weights of a plan are
//! FP8 (the linear weights of attention, dense MLPs, routed and shared experts — not embeddings,
//! norms, the router gate and bias, or the head), block quantisation (`scale = amax / 448`, e4m3
//! round-to-nearest-even) and dequantisation to f32/bf16/f16.

use std::collections::HashSet;

use rayon::prelude::*;

use crate::dtype::{e4m3_to_f32, f32_to_bf16, f32_to_e4m3, f32_to_f16, DType, E4M3_MAX};
use crate::error::{EngineError, Result};
use crate::graph::ir::{NodeKind, Plan, WeightRole};
use crate::weights::weight::try_zeroed_bytes;
use crate::weights::Weight;

/// The block edge of every FP8 checkpoint troupe reads (`weight_block_size = [128, 128]`).
pub const FP8_BLOCK: usize = 128;

/// What the safetensors name of a weight's scale grid appends (`...weight` → `...weight_scale_inv`).
pub const SCALE_INV_SUFFIX: &str = "_scale_inv";

/// The dequantisation multipliers of a block-scaled weight: the value at `(r, c)` is
/// `element(r, c) * scale_inv[r / block[0]][c / block[1]]`. FP8 weights have 128×128 blocks;
/// int8 weights ([`super::int8`]) have 1×32 blocks (a scale per 32 columns of each row).
#[derive(Clone, Debug)]
pub struct BlockScales {
    /// Rows × columns of one block (`[128, 128]` for FP8, `[1, 32]` for int8).
    pub block: [usize; 2],
    /// f32 `[ceil(out/block[0]), ceil(in/block[1])]`.
    pub scale_inv: Weight,
}

impl BlockScales {
    /// 128×128 blocks with the scale grid `scale_inv` (an FP8 weight's).
    pub fn new(scale_inv: Weight) -> Self {
        BlockScales {
            block: [FP8_BLOCK, FP8_BLOCK],
            scale_inv,
        }
    }

    /// The block shape a weight of `dtype` carries (None: it has no block scales).
    pub fn block_of(dtype: DType) -> Option<[usize; 2]> {
        match dtype {
            DType::F8E4M3 => Some([FP8_BLOCK, FP8_BLOCK]),
            DType::I8 => Some([1, super::int8::INT8_BLOCK]),
            _ => None,
        }
    }

    /// The scale grid `scale_inv` for a weight of `dtype` (FP8 or int8), with that dtype's
    /// blocks (an error naming the grid for any other dtype).
    pub fn for_dtype(dtype: DType, scale_inv: Weight) -> Result<Self> {
        let block = Self::block_of(dtype).ok_or_else(|| {
            EngineError::Invalid(format!(
                "tensor `{}`: a {dtype} weight has no block scales",
                scale_inv.name()
            ))
        })?;
        Ok(BlockScales { block, scale_inv })
    }

    /// The grid shape an FP8 weight of `rows × cols` needs.
    pub fn grid_for(rows: usize, cols: usize) -> [usize; 2] {
        [rows.div_ceil(FP8_BLOCK), cols.div_ceil(FP8_BLOCK)]
    }

    /// The multiplier of element `(r, c)`.
    #[inline]
    pub fn scale(&self, r: usize, c: usize) -> f32 {
        let grid_cols = self.scale_inv.cols();
        let i = (r / self.block[0]) * grid_cols + c / self.block[1];
        self.scale_inv.as_f32().map(|s| s[i]).unwrap_or(f32::NAN)
    }

    /// The scales of the block row holding weight row `r` (one per `block[1]` columns).
    pub fn row_scales(&self, r: usize) -> Result<&[f32]> {
        let g = self.scale_inv.cols();
        let b = r / self.block[0];
        Ok(&self.scale_inv.as_f32()?[b * g..(b + 1) * g])
    }

    /// Checks that these scales fit the FP8 or int8 weight `w` (errors name both tensors).
    pub fn check_for(&self, w: &Weight) -> Result<()> {
        let name = self.scale_inv.name();
        let block = BlockScales::block_of(w.dtype());
        if block.is_none() || w.shape().len() != 2 {
            return Err(EngineError::Invalid(format!(
                "tensor `{}` ({}, shape {:?}) cannot take block scales `{name}`: only 2-D f8e4m3 and i8 weights have them",
                w.name(),
                w.dtype(),
                w.shape()
            )));
        }
        if block != Some(self.block) {
            return Err(EngineError::Invalid(format!(
                "tensor `{}`: block size {:?} is not supported for {} (troupe reads {:?} blocks)",
                w.name(),
                self.block,
                w.dtype(),
                block.unwrap_or_default()
            )));
        }
        if self.scale_inv.dtype() != DType::F32 {
            return Err(EngineError::UnsupportedDtype {
                tensor: name.to_string(),
                dtype: format!("{} (block scales must be F32)", self.scale_inv.dtype()),
            });
        }
        let grid = [
            w.rows().div_ceil(self.block[0]),
            w.cols().div_ceil(self.block[1]),
        ];
        if self.scale_inv.shape() != grid {
            return Err(EngineError::ShapeMismatch {
                tensor: name.to_string(),
                expected: grid.to_vec(),
                found: self.scale_inv.shape().to_vec(),
            });
        }
        Ok(())
    }
}

/// The names of the weights of `plan` that an FP8 checkpoint stores as e4m3: every matrix of
/// the attention, dense-MLP and MoE nodes except the router gate (and its bias).
pub fn fp8_weight_names(plan: &Plan) -> HashSet<String> {
    let mut names = HashSet::new();
    for node in &plan.nodes {
        let skip = match node.kind {
            NodeKind::MlaAttention | NodeKind::GqaAttention | NodeKind::DenseMlp { .. } => 0,
            // The router gate comes first in an MoE node; its bias is not a matrix.
            NodeKind::Moe { .. } => 1,
            NodeKind::Embedding | NodeKind::RmsNorm | NodeKind::LmHead => continue,
        };
        for w in node.weights.iter().skip(skip) {
            if w.role == WeightRole::Matrix && w.shape.len() == 2 {
                names.insert(w.name.clone());
            }
        }
    }
    names
}

/// Quantises a row-major `rows × cols` matrix to FP8 with 128×128 block scales, as DeepSeek's
/// checkpoints are made: per block `scale = amax / 448` (1 for an all-zero block), each element
/// `e4m3(v / scale)` rounded to nearest even, and `scale` stored as `<name>_scale_inv`.
pub fn quantize_block_scaled(
    name: &str,
    rows: usize,
    cols: usize,
    values: &[f32],
) -> Result<Weight> {
    if values.len() != rows * cols {
        return Err(EngineError::ShapeMismatch {
            tensor: name.to_string(),
            expected: vec![rows, cols],
            found: vec![values.len()],
        });
    }
    let [gr, gc] = BlockScales::grid_for(rows, cols);
    let mut bytes = try_zeroed_bytes(name, rows * cols)?;
    // One task per 128-row band: its scales, then its bytes.
    let scales: Vec<Vec<f32>> = bytes
        .par_chunks_mut(FP8_BLOCK * cols.max(1))
        .enumerate()
        .map(|(br, band)| quantize_band(name, &values[br * FP8_BLOCK * cols..], cols, br, band))
        .collect::<Result<_>>()?;
    let scales: Vec<f32> = scales.concat();
    debug_assert_eq!(scales.len(), gr * gc);
    let w = Weight::from_bytes(name, DType::F8E4M3, vec![rows, cols], &bytes)?;
    let scale_inv = Weight::from_f32(&format!("{name}{SCALE_INV_SUFFIX}"), vec![gr, gc], &scales);
    w.with_block_scales(BlockScales::new(scale_inv))
}

/// Block row `br` of a quantisation: `band` is its `rows × cols` bytes (up to 128 rows), `values`
/// starts at its first row. Returns the band's scales.
fn quantize_band(
    name: &str,
    values: &[f32],
    cols: usize,
    br: usize,
    band: &mut [u8],
) -> Result<Vec<f32>> {
    let rows = band.len() / cols.max(1);
    let gc = cols.div_ceil(FP8_BLOCK);
    let mut scales = vec![1.0f32; gc];
    for (bc, s) in scales.iter_mut().enumerate() {
        let (c0, c1) = (bc * FP8_BLOCK, ((bc + 1) * FP8_BLOCK).min(cols));
        let mut amax = 0.0f32;
        for r in 0..rows {
            for &v in &values[r * cols + c0..r * cols + c1] {
                amax = amax.max(v.abs());
            }
        }
        if !amax.is_finite() {
            return Err(EngineError::Invalid(format!(
                "tensor `{name}`: block ({br}, {bc}) holds a non-finite value; it cannot be quantised"
            )));
        }
        if amax > 0.0 {
            *s = amax / E4M3_MAX;
        }
        for r in 0..rows {
            for c in c0..c1 {
                band[r * cols + c] = f32_to_e4m3(values[r * cols + c] / *s);
            }
        }
    }
    Ok(scales)
}

/// A block-scaled weight (FP8, or int8 from [`super::int8`]) turned into `dtype` (f32, bf16
/// or f16): each element `value · scale` in f32 (exact element, product rounded once), then
/// rounded to `dtype`. Other weights come back unchanged.
pub fn dequantize(w: &Weight, dtype: DType) -> Result<Weight> {
    if BlockScales::block_of(w.dtype()).is_none() {
        return Ok(w.clone());
    }
    let scales = w.block_scales().ok_or_else(|| EngineError::MissingTensor {
        tensor: format!("{}{SCALE_INV_SUFFIX}", w.name()),
        searched: format!("the block scales of {} tensor `{}`", w.dtype(), w.name()),
    })?;
    let cols = w.cols();
    let element: Box<dyn Fn(usize) -> f32 + Sync + '_> = match w.dtype() {
        DType::I8 => {
            let q = w.as_i8()?;
            Box::new(move |i| q[i] as f32)
        }
        _ => {
            let bytes = w.as_u8()?;
            Box::new(move |i| e4m3_to_f32(bytes[i]))
        }
    };
    let value = |i: usize| element(i) * scales.scale(i / cols, i % cols);
    let n = w.numel();
    Ok(match dtype {
        DType::F32 => {
            let v: Vec<f32> = (0..n).map(value).collect();
            Weight::from_f32(w.name(), w.shape().to_vec(), &v)
        }
        DType::BF16 | DType::F16 => {
            let round = if dtype == DType::BF16 {
                f32_to_bf16
            } else {
                f32_to_f16
            };
            let v: Vec<u16> = (0..n).map(|i| round(value(i))).collect();
            Weight::from_u16(w.name(), dtype, w.shape().to_vec(), &v)
        }
        DType::F8E4M3 | DType::I8 => w.clone(),
    })
}
