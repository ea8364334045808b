//! Row and column copies on the device, all through `copy_rows_b32`: `head_columns` (a strided
//! column slice per head), `slice_rows`, `concat_rows` and `gather_rows` (whose indices are the
//! only bytes that cross, h2d).

use troupe_engine::backend::HeadSlice;
use troupe_engine::{DeviceTensor, EngineError, Result};

use super::{shape_err, Copy2d, GpuBackend};
use crate::device::{u32_bytes, Device};
use crate::error::GpuError;

impl<D: Device> GpuBackend<D> {
    pub(super) fn head_columns_op(&self, x: &DeviceTensor, s: HeadSlice) -> Result<DeviceTensor> {
        let xb = self.buf("head_columns", x)?;
        let rows = x.rows();
        let out = self.on_device(|| {
            let last = s.heads.saturating_sub(1) * s.stride + s.offset + s.width;
            if s.heads > 0 && last > x.cols() {
                return Err(shape_err(
                    "copy_rows_b32",
                    "x",
                    &[rows, x.cols()],
                    format!("at least {last} columns for {s:?}"),
                ));
            }
            let out = self.alloc_f32(rows * s.heads * s.width)?;
            self.copy(
                &out,
                xb,
                &Copy2d {
                    heads: s.heads,
                    src_stride: x.cols(),
                    src_hstride: s.stride,
                    src_col: s.offset,
                    dst_stride: s.heads * s.width,
                    dst_hstride: s.width,
                    ..Copy2d::rows(rows, s.width, 0, 0)
                },
            )?;
            Ok(out)
        })?;
        Ok(self.tensor(rows, s.heads * s.width, out))
    }

    pub(super) fn slice_rows_op(
        &self,
        x: &DeviceTensor,
        start: usize,
        end: usize,
    ) -> Result<DeviceTensor> {
        let xb = self.buf("slice_rows", x)?;
        if start > end || end > x.rows() {
            return Err(EngineError::Invalid(format!(
                "slice_rows: rows {start}..{end} of a tensor of {} rows",
                x.rows()
            )));
        }
        let (rows, cols) = (end - start, x.cols());
        let out = self.on_device(|| {
            let out = self.alloc_f32(rows * cols)?;
            self.copy(&out, xb, &Copy2d::rows(rows, cols, start, 0))?;
            Ok(out)
        })?;
        Ok(self.tensor(rows, cols, out))
    }

    pub(super) fn concat_rows_op(&self, parts: &[DeviceTensor]) -> Result<DeviceTensor> {
        let cols = parts.first().map_or(0, |p| p.cols());
        let mut bufs = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            if p.cols() != cols {
                return Err(EngineError::ShapeMismatch {
                    tensor: format!("concat_rows part {i}"),
                    expected: vec![p.rows(), cols],
                    found: vec![p.rows(), p.cols()],
                });
            }
            bufs.push(self.buf("concat_rows", p)?);
        }
        let rows: usize = parts.iter().map(|p| p.rows()).sum();
        let out = self.on_device(|| {
            let out = self.alloc_f32(rows * cols)?;
            let mut at = 0;
            for (p, b) in parts.iter().zip(&bufs) {
                self.copy(&out, b, &Copy2d::rows(p.rows(), cols, 0, at))?;
                at += p.rows();
            }
            Ok(out)
        })?;
        Ok(self.tensor(rows, cols, out))
    }

    pub(super) fn gather_rows_op(&self, x: &DeviceTensor, rows: &[u32]) -> Result<DeviceTensor> {
        let xb = self.buf("gather_rows", x)?;
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= x.rows()) {
            return Err(EngineError::Invalid(format!(
                "gather_rows: row {r} of a tensor of {} rows",
                x.rows()
            )));
        }
        let cols = x.cols();
        let out = self.on_device(|| {
            let out = self.alloc_f32(rows.len() * cols)?;
            if rows.is_empty() || cols == 0 {
                return Ok(out);
            }
            let idx = self.dev.upload(&u32_bytes(rows))?;
            self.copy(
                &out,
                xb,
                &Copy2d {
                    src_map: Some(&idx),
                    ..Copy2d::rows(rows.len(), cols, 0, 0)
                },
            )?;
            Ok::<_, GpuError>(out)
        })?;
        Ok(self.tensor(rows.len(), cols, out))
    }
}
