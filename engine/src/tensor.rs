//! `Tensor`: the activation type that flows between ops — row-major f32 on the host.
//!
//! Activations are always f32 (weights may be bf16/f16, upcast inside the kernels), so every
//! backend computes in f32 and the reference executor is the single numeric oracle.
//! Data sits behind an `Arc`, so handing a tensor to another actor or channel never copies it.
//! Constructors check shapes with overflow-checked products and return errors; the row accessors
//! (`row`, `slice_rows`, `gather_rows`) index like slices and panic only on an out-of-range row,
//! which validated specs never produce.

use std::sync::Arc;

use crate::error::{EngineError, Result};

/// Elements of a shape, or None when the product overflows.
fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// A row-major f32 tensor. Cloning shares the buffer; `data_mut` copies only when shared.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Vec<f32>>,
}

impl Tensor {
    /// A tensor of `shape` holding `data` (an error, not a panic, when they disagree).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        if numel(&shape) != Some(data.len()) {
            return Err(EngineError::Invalid(format!(
                "tensor shape {shape:?} does not hold {} values",
                data.len()
            )));
        }
        Ok(Tensor {
            shape,
            data: Arc::new(data),
        })
    }
    /// A 2-D tensor with `cols` columns from a flat vector (rows = len / cols; a ragged tail is
    /// dropped, which only a caller bug can cause).
    pub fn from_flat(cols: usize, mut data: Vec<f32>) -> Self {
        let rows = if cols == 0 { 0 } else { data.len() / cols };
        data.truncate(rows * cols);
        Tensor {
            shape: vec![rows, cols],
            data: Arc::new(data),
        }
    }
    /// A 2-D tensor of `rows` × `cols` from a flat vector.
    pub fn matrix(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        Tensor::new(vec![rows, cols], data)
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.data).as_mut_slice()
    }
    pub fn into_vec(self) -> Vec<f32> {
        Arc::try_unwrap(self.data).unwrap_or_else(|shared| (*shared).clone())
    }
    /// Number of rows when viewed as a matrix (all dims but the last).
    pub fn rows(&self) -> usize {
        if self.shape.is_empty() {
            return 1;
        }
        self.shape[..self.shape.len() - 1].iter().product()
    }
    /// Size of the last dimension.
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
    pub fn row(&self, r: usize) -> &[f32] {
        let c = self.cols();
        &self.data[r * c..(r + 1) * c]
    }
    /// Rows `[start, end)` as a new tensor (copies).
    pub fn slice_rows(&self, start: usize, end: usize) -> Tensor {
        let c = self.cols();
        Tensor {
            shape: vec![end - start, c],
            data: Arc::new(self.data[start * c..end * c].to_vec()),
        }
    }
    /// The listed rows, in the listed order, as a new `[ids.len(), cols]` tensor.
    pub fn gather_rows(&self, ids: &[usize]) -> Tensor {
        let c = self.cols();
        let mut out = Vec::with_capacity(ids.len() * c);
        for &r in ids {
            out.extend_from_slice(self.row(r));
        }
        Tensor {
            shape: vec![ids.len(), c],
            data: Arc::new(out),
        }
    }
    /// Stacks 2-D tensors with the same column count along the rows.
    pub fn concat_rows(parts: &[Tensor]) -> Result<Tensor> {
        let cols = parts.first().map(|t| t.cols()).unwrap_or(0);
        let mut out = Vec::new();
        let mut rows = 0;
        for p in parts {
            if p.cols() != cols {
                return Err(EngineError::Internal(format!(
                    "concat_rows: column mismatch {} vs {cols}",
                    p.cols()
                )));
            }
            rows += p.rows();
            out.extend_from_slice(p.data());
        }
        Tensor::matrix(rows, cols, out)
    }
    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Tensor> {
        if numel(&shape) != Some(self.data.len()) {
            return Err(EngineError::Internal(format!(
                "cannot reshape {:?} into {shape:?}",
                self.shape
            )));
        }
        self.shape = shape;
        Ok(self)
    }
    /// Element-wise `self += other` (same shape).
    pub fn add_assign(&mut self, other: &Tensor) -> Result<()> {
        if self.shape != other.shape {
            return Err(EngineError::Internal(format!(
                "add: shape mismatch {:?} vs {:?}",
                self.shape, other.shape
            )));
        }
        for (a, b) in self.data_mut().iter_mut().zip(other.data.iter()) {
            *a += *b;
        }
        Ok(())
    }
}
