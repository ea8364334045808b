//! Row-wise math and the linears on device handles: `embedding` (ids h2d), `rms_norm`, `linear`,
//! `per_head_linear` (the heads' matrices, uploaded once, run as one `grouped_linear` launch,
//! with head-major transposes through `copy_rows_b32` when there is more than one row), `silu_mul`,
//! the residual `add` and `rope` (from a `first_position` scalar, into a copy). Every output is a
//! new device buffer; nothing is read back.

use troupe_engine::backend::{RopeSlot, RopeTable};
use troupe_engine::dtype::DType;
use troupe_engine::graph::spec::RopeLayout;
use troupe_engine::weights::Weight;
use troupe_engine::{DeviceTensor, EngineError, Result};

use super::{shape_err, Copy2d, GpuBackend};
use crate::device::{f32_bytes, u32_bytes, Arg, Device};
use crate::error::{GpuError, GpuResult};
use crate::launch::{self, u32_of};

impl<D: Device> GpuBackend<D> {
    pub(super) fn embedding_op(&self, table: &Weight, ids: &[u32]) -> Result<DeviceTensor> {
        let (vocab, hidden) = (table.rows(), table.cols());
        troupe_engine::tokenizer::check_token_ids(ids, vocab, 0)?;
        let out = self.on_device(|| {
            let out = self.alloc_f32(ids.len() * hidden)?;
            if ids.is_empty() {
                return Ok(out);
            }
            let bf16 = table.dtype() == DType::BF16;
            let t = self.weight(table, !bf16)?;
            let l = launch::embedding(if bf16 { DType::BF16 } else { DType::F32 }, ids.len())?;
            let idb = self.dev.upload(&u32_bytes(ids))?;
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&out),
                    Arg::Buf(&t),
                    Arg::Buf(&idb),
                    Arg::U32(u32_of(l.kernel, "rows", ids.len())?),
                    Arg::U32(u32_of(l.kernel, "hidden", hidden)?),
                    Arg::U32(u32_of(l.kernel, "vocab", vocab)?),
                ],
            )?;
            Ok(out)
        })?;
        Ok(self.tensor(ids.len(), hidden, out))
    }

    pub(super) fn rms_norm_op(
        &self,
        x: &DeviceTensor,
        weight: &Weight,
        eps: f32,
    ) -> Result<DeviceTensor> {
        let xb = self.buf("rms_norm", x)?;
        let (rows, cols) = (x.rows(), x.cols());
        if weight.numel() != cols {
            return Err(EngineError::ShapeMismatch {
                tensor: weight.name().to_string(),
                expected: vec![cols],
                found: weight.shape().to_vec(),
            });
        }
        let out = self.on_device(|| {
            let out = self.alloc_f32(rows * cols)?;
            if rows == 0 {
                return Ok(out);
            }
            let w = self.weight(weight, true)?;
            let l = launch::rms_norm(rows)?;
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&out),
                    Arg::Buf(xb),
                    Arg::Buf(&w),
                    Arg::U32(u32_of(l.kernel, "rows", rows)?),
                    Arg::U32(u32_of(l.kernel, "cols", cols)?),
                    Arg::F32(eps),
                ],
            )?;
            Ok(out)
        })?;
        Ok(self.tensor(rows, cols, out))
    }

    pub(super) fn linear_op(&self, x: &DeviceTensor, weight: &Weight) -> Result<DeviceTensor> {
        let xb = self.buf("linear", x)?;
        let (m, k, n) = (x.rows(), x.cols(), weight.rows());
        let out = self.on_device(|| {
            let l = launch::linear(weight.dtype(), m, n)?;
            if weight.cols() != k {
                return Err(shape_err(
                    l.kernel,
                    weight.name(),
                    weight.shape(),
                    format!("[_, {k}]"),
                ));
            }
            let out = self.alloc_f32(m * n)?;
            if m == 0 {
                return Ok(out);
            }
            if weight.dtype() == DType::F8E4M3 {
                self.fp8_linear(&out, xb, weight, (m, n, k))?;
                return Ok(out);
            }
            let w = self.weight(weight, false)?;
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&out),
                    Arg::Buf(xb),
                    Arg::Buf(&w),
                    Arg::U32(u32_of(l.kernel, "m", m)?),
                    Arg::U32(u32_of(l.kernel, "n", n)?),
                    Arg::U32(u32_of(l.kernel, "k", k)?),
                ],
            )?;
            Ok(out)
        })?;
        Ok(self.tensor(m, n, out))
    }

    /// One `grouped_linear_*w` launch: rows `offsets[e] .. offsets[e+1]` of `x` (`[_, k]`) times
    /// weight `e` of the address table `w` (each `[n, k]`) into the same rows of `out` (`[_, n]`);
    /// `max_rows` bounds every group's row count (grid z).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn grouped_linear(
        &self,
        out: &D::Buf,
        x: &D::Buf,
        w: &D::Buf,
        dtype: DType,
        offsets: &D::Buf,
        groups: usize,
        n: usize,
        k: usize,
        max_rows: usize,
    ) -> GpuResult<()> {
        let l = launch::grouped_linear(dtype, n, groups, max_rows)?;
        self.dev.launch(
            &l,
            &[
                Arg::Buf(out),
                Arg::Buf(x),
                Arg::Buf(w),
                Arg::Buf(offsets),
                Arg::U32(u32_of(l.kernel, "experts", groups)?),
                Arg::U32(u32_of(l.kernel, "n", n)?),
                Arg::U32(u32_of(l.kernel, "k", k)?),
            ],
        )
    }

    pub(super) fn per_head_linear_op(
        &self,
        x: &DeviceTensor,
        weights: &[Weight],
    ) -> Result<DeviceTensor> {
        let xb = self.buf("per_head_linear", x)?;
        let heads = weights.len();
        let (out_w, in_w) = match weights.first() {
            Some(w) => (w.rows(), w.cols()),
            None => (0, 0),
        };
        let rows = x.rows();
        let out = self.on_device(|| {
            let kernel = "grouped_linear (per head)";
            if heads == 0 || x.cols() != heads * in_w {
                return Err(shape_err(
                    kernel,
                    "x",
                    &[rows, x.cols()],
                    format!("[_, {heads} heads x {in_w}]"),
                ));
            }
            if let Some(w) = weights
                .iter()
                .find(|w| w.rows() != out_w || w.cols() != in_w)
            {
                return Err(shape_err(
                    kernel,
                    w.name(),
                    w.shape(),
                    format!("[{out_w}, {in_w}] like every head"),
                ));
            }
            let y = self.alloc_f32(rows * heads * out_w)?;
            if rows == 0 || out_w == 0 {
                return Ok(y);
            }
            let refs: Vec<&Weight> = weights.iter().collect();
            let (w, dtype) = self.weight_table(&refs)?;
            let offsets = self.cached(&format!("offsets:{heads}x{rows}"), || {
                let v: Vec<u32> = (0..=heads).map(|h| (h * rows) as u32).collect();
                Ok(u32_bytes(&v))
            })?;
            if rows == 1 {
                // [1, heads, in] is already head-major.
                self.grouped_linear(&y, xb, &w, dtype, &offsets, heads, out_w, in_w, 1)?;
                return Ok(y);
            }
            let xt = self.alloc_f32(rows * heads * in_w)?;
            self.copy(
                &xt,
                xb,
                &Copy2d {
                    heads,
                    src_stride: heads * in_w,
                    src_hstride: in_w,
                    dst_stride: in_w,
                    dst_hstride: rows * in_w,
                    ..Copy2d::rows(rows, in_w, 0, 0)
                },
            )?;
            let yt = self.alloc_f32(rows * heads * out_w)?;
            self.grouped_linear(&yt, &xt, &w, dtype, &offsets, heads, out_w, in_w, rows)?;
            self.copy(
                &y,
                &yt,
                &Copy2d {
                    heads,
                    src_stride: out_w,
                    src_hstride: rows * out_w,
                    dst_stride: heads * out_w,
                    dst_hstride: out_w,
                    ..Copy2d::rows(rows, out_w, 0, 0)
                },
            )?;
            Ok(y)
        })?;
        Ok(self.tensor(rows, heads * out_w, out))
    }

    /// `silu_mul_f32` or `add_f32`: `out = f(a, b)` element-wise over equal shapes.
    fn elementwise(
        &self,
        op: &str,
        a: &DeviceTensor,
        b: &DeviceTensor,
        l: fn(usize) -> GpuResult<launch::Launch>,
    ) -> Result<DeviceTensor> {
        let (ab, bb) = (self.buf(op, a)?, self.buf(op, b)?);
        let n = a.rows() * a.cols();
        let out = self.on_device(|| {
            let l = l(n)?;
            if (a.rows(), a.cols()) != (b.rows(), b.cols()) {
                return Err(shape_err(
                    l.kernel,
                    "b",
                    &[b.rows(), b.cols()],
                    format!("[{}, {}]", a.rows(), a.cols()),
                ));
            }
            let out = self.alloc_f32(n)?;
            if n > 0 {
                let nn = u32_of(l.kernel, "n", n)?;
                self.dev.launch(
                    &l,
                    &[Arg::Buf(&out), Arg::Buf(ab), Arg::Buf(bb), Arg::U32(nn)],
                )?;
            }
            Ok(out)
        })?;
        Ok(self.tensor(a.rows(), a.cols(), out))
    }

    pub(super) fn silu_mul_op(
        &self,
        gate: &DeviceTensor,
        up: &DeviceTensor,
    ) -> Result<DeviceTensor> {
        self.elementwise("silu_mul", gate, up, launch::silu_mul)
    }

    pub(super) fn add_op(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        self.elementwise("add", a, b, launch::add)
    }

    pub(super) fn rope_op(
        &self,
        x: &DeviceTensor,
        slot: RopeSlot,
        first_position: usize,
        table: &RopeTable,
    ) -> Result<DeviceTensor> {
        let xb = self.buf("rope", x)?;
        let rot = table.dim();
        let (rows, cols) = (x.rows(), x.cols());
        let out = self.on_device(|| {
            let l = launch::rope(rows, slot.heads)?;
            if cols != slot.heads * slot.head_stride || slot.offset + rot > slot.head_stride {
                return Err(shape_err(
                    l.kernel,
                    "x",
                    &[rows, cols],
                    format!(
                        "[_, {} heads x {}] with rope at {}..{}",
                        slot.heads,
                        slot.head_stride,
                        slot.offset,
                        slot.offset + rot
                    ),
                ));
            }
            let last = first_position + rows;
            if u32::try_from(last).is_err() {
                return Err(GpuError::limit(l.kernel, "position", last, "< 2^32"));
            }
            let out = self.alloc_f32(rows * cols)?;
            if rows == 0 || slot.heads == 0 {
                return Ok(out);
            }
            let mut key = format!("rope:{:08x}", table.attention_factor.to_bits());
            for f in &table.inv_freq {
                key.push_str(&format!("{:08x}", f.to_bits()));
            }
            let freq = self.cached(&key, || Ok(f32_bytes(&table.inv_freq)))?;
            let layout = match table.layout {
                RopeLayout::Interleaved => 0,
                RopeLayout::HalfSplit => 1,
            };
            let u = |f: &str, v: usize| u32_of(l.kernel, f, v).map(Arg::U32);
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&out),
                    Arg::Buf(xb),
                    Arg::Buf(&freq),
                    Arg::F32(table.attention_factor),
                    u("rows", rows)?,
                    u("first_position", first_position)?,
                    u("heads", slot.heads)?,
                    u("head_stride", slot.head_stride)?,
                    u("offset", slot.offset)?,
                    u("rot_dim", rot)?,
                    Arg::U32(layout),
                ],
            )?;
            Ok(out)
        })?;
        Ok(self.tensor(rows, cols, out))
    }
}
