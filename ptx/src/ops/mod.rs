//! `GpuBackend<D>`: the engine's `Backend` implemented with the PTX kernels on any `Device` (a
//! CUDA stream or the PTX interpreter), with **device-resident activations**: every op takes and
//! returns handles to buffers of this backend (`DeviceTensor::on_device` tagged with this
//! backend's `BackendId`), and data crosses host↔device only in the transfer ops (`transfer`),
//! `embedding`'s ids, `gather_rows`' indices, the routing transfers and the few bytes of a block
//! table's new entries. Weights (and what is derived from them: weight-address tables for the
//! grouped kernels, rope frequencies, expert-id maps) are uploaded once and cached.
//!
//! This file holds the backend's state and the helpers every op uses; the ops live in one file
//! per area: `transfer` (upload/download/argmax/non-finite flag), `dense` (row-wise math and
//! linears), `rows` (row/column copies), `attention` (contiguous and paged attention), `kv` (page
//! storage and block tables), `moe` (router, grouped expert MLP, combine), `fp8` (FP8 block-scaled
//! weights: their scales, the weight-only and W8A8 linears); `backend_impl` maps the `Backend`
//! trait onto them.

mod attention;
mod backend_impl;
mod dense;
mod fp8;
mod kv;
mod moe;
mod rows;
mod transfer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use troupe_engine::device_tensor::{BackendId, DeviceBuf, DeviceTensor, Location};
use troupe_engine::dtype::DType;
use troupe_engine::weights::Weight;
use troupe_engine::{EngineError, Result};

use crate::counted::Counted;
use crate::device::{f32_bytes, Arg, Device};
use crate::error::{to_engine, GpuError, GpuResult};
use crate::launch::{self, u32_of};

pub use fp8::Fp8Compute;
pub(crate) use kv::BlockTables;
pub(crate) use transfer::FiniteFlag;

/// The `Backend` on device `D`.
pub struct GpuBackend<D: Device> {
    dev: Counted<D>,
    id: BackendId,
    /// Device copies of weights and weight-derived tables, by a key naming their source.
    weights: Mutex<HashMap<String, Arc<D::Buf>>>,
    tables: Mutex<BlockTables<D::Buf>>,
    finite: Mutex<FiniteFlag<D::Buf>>,
    /// How `linear` computes with FP8 weights (`fp8.rs`).
    fp8: Fp8Compute,
}

impl<D: Device> GpuBackend<D> {
    pub fn new(dev: D) -> Self {
        GpuBackend {
            dev: Counted::new(dev),
            id: BackendId::fresh(),
            weights: Mutex::new(HashMap::new()),
            tables: Mutex::new(BlockTables::default()),
            finite: Mutex::new(FiniteFlag::default()),
            fp8: Fp8Compute::default(),
        }
    }

    /// The device (launches made directly on it bypass the backend's counters).
    pub fn device(&self) -> &D {
        self.dev.inner()
    }

    /// The id tagging this backend's handles.
    pub fn id(&self) -> BackendId {
        self.id
    }

    /// Runs the device part of an op; a `GpuError` leaves through the `Backend` trait as the typed
    /// `EngineError::Backend` source, naming this device.
    fn on_device<T>(&self, run: impl FnOnce() -> GpuResult<T>) -> Result<T> {
        run().map_err(|e| to_engine(&self.dev.name(), e))
    }

    /// A `GpuError` as the `EngineError::Backend` naming this device.
    fn gpu_err(&self, e: GpuError) -> EngineError {
        to_engine(&self.dev.name(), e)
    }

    /// `EngineError::WrongDevice` for a handle `op` was given that this backend did not make.
    fn wrong_device(&self, op: &str, found: Location) -> EngineError {
        EngineError::WrongDevice {
            op: op.to_string(),
            backend: self.dev.name(),
            found: match found {
                Location::Host => "the host".to_string(),
                Location::Device(id) => format!("another device backend ({id:?})"),
            },
        }
    }

    /// The device buffer behind `t`, or `WrongDevice`.
    fn buf<'a>(&self, op: &str, t: &'a DeviceTensor) -> Result<&'a D::Buf> {
        t.device_buf::<D::Buf>(self.id)
            .ok_or_else(|| self.wrong_device(op, t.location()))
    }

    /// A handle to a new `[rows, cols]` buffer of this backend.
    fn tensor(&self, rows: usize, cols: usize, buf: D::Buf) -> DeviceTensor {
        let arc: DeviceBuf = Arc::new(buf);
        DeviceTensor::on_device(self.id, rows, cols, arc)
    }

    /// A zero-filled buffer of `n` f32 values.
    fn alloc_f32(&self, n: usize) -> GpuResult<D::Buf> {
        self.dev.alloc(n * 4)
    }

    /// The cached device buffer under `key`, uploading `make()` on first use.
    fn cached(
        &self,
        key: &str,
        make: impl FnOnce() -> GpuResult<Vec<u8>>,
    ) -> GpuResult<Arc<D::Buf>> {
        if let Some(b) = lock(&self.weights, "weight cache")?.get(key) {
            return Ok(b.clone());
        }
        let buf = Arc::new(self.dev.upload(&make()?)?);
        lock(&self.weights, "weight cache")?.insert(key.to_string(), buf.clone());
        Ok(buf)
    }

    /// The device copy of `w`; `as_f32` forces an f32 copy (norm weights, f16 embedding tables).
    /// int8 weights are always f32 copies (dequantised): the PTX kernels have no int8 form.
    fn weight(&self, w: &Weight, as_f32: bool) -> GpuResult<Arc<D::Buf>> {
        let f32_copy = (as_f32 || w.dtype() == DType::I8) && w.dtype() != DType::F32;
        let key = format!(
            "{}#{}",
            w.name(),
            if f32_copy { DType::F32 } else { w.dtype() }
        );
        self.cached(&key, || {
            Ok(if f32_copy {
                f32_bytes(&w.to_f32_vec())
            } else {
                w.bytes().to_vec()
            })
        })
    }

    /// The device addresses of `ws` (the experts of a grouped MLP, the heads of a per-head
    /// linear) as the weight table `grouped_linear_*w` reads: each weight is uploaded once (the
    /// weight cache), and a table per set of weights (8 bytes each) is cached under their names.
    /// Mixed dtypes are read as f32 copies (FP8 ones dequantised). For FP8 weights the table
    /// holds two addresses per weight, its bytes then its block scales (`grouped_linear_fp8w`).
    /// Returns the table and the dtype the kernel reads.
    fn weight_table(&self, ws: &[&Weight]) -> GpuResult<(Arc<D::Buf>, DType)> {
        let dtype = match ws.first() {
            Some(w) if ws.iter().all(|x| x.dtype() == w.dtype()) => w.dtype(),
            _ => DType::F32,
        };
        let mut key = format!("table:{dtype}");
        for w in ws {
            key.push('|');
            key.push_str(w.name());
        }
        let table = self.cached(&key, || {
            let mut bytes = Vec::with_capacity(ws.len() * 8);
            for w in ws {
                let b = self.weight(w, dtype == DType::F32)?;
                bytes.extend_from_slice(&self.dev.address(&b).to_le_bytes());
                if dtype == DType::F8E4M3 {
                    let s = self.fp8_scales("grouped_linear_fp8w", w)?;
                    bytes.extend_from_slice(&self.dev.address(&s).to_le_bytes());
                }
            }
            Ok(bytes)
        })?;
        Ok((table, dtype))
    }

    /// One `copy_rows_b32` launch (see `copy.ptx`).
    fn copy(&self, dst: &D::Buf, src: &D::Buf, c: &Copy2d<'_, D::Buf>) -> GpuResult<()> {
        if c.rows == 0 || c.heads == 0 || c.cols == 0 {
            return Ok(());
        }
        let l = launch::copy_rows(c.rows, c.heads)?;
        let u = |f: &str, v: usize| u32_of(l.kernel, f, v).map(Arg::U32);
        self.dev.launch(
            &l,
            &[
                Arg::Buf(dst),
                Arg::Buf(src),
                c.dst_map.map_or(Arg::Null, Arg::Buf),
                c.src_map.map_or(Arg::Null, Arg::Buf),
                u("rows", c.rows)?,
                u("heads", c.heads)?,
                u("cols", c.cols)?,
                u("dst_stride", c.dst_stride)?,
                u("dst_hstride", c.dst_hstride)?,
                u("dst_col", c.dst_col)?,
                u("dst_row0", c.dst_row0)?,
                u("src_stride", c.src_stride)?,
                u("src_hstride", c.src_hstride)?,
                u("src_col", c.src_col)?,
                u("src_row0", c.src_row0)?,
                u("page_shift", c.page_shift)?,
            ],
        )
    }
}

/// The parameters of one `copy_rows_b32` launch: element `(i, h, c)` moves from
/// `src[R(src_map, src_row0 + i) * src_stride + h * src_hstride + src_col + c]` to the same
/// expression over `dst` (see `copy.ptx`).
pub(crate) struct Copy2d<'a, B> {
    pub rows: usize,
    pub heads: usize,
    pub cols: usize,
    pub dst_stride: usize,
    pub dst_hstride: usize,
    pub dst_col: usize,
    pub dst_row0: usize,
    pub src_stride: usize,
    pub src_hstride: usize,
    pub src_col: usize,
    pub src_row0: usize,
    pub dst_map: Option<&'a B>,
    pub src_map: Option<&'a B>,
    pub page_shift: usize,
}

impl<'a, B> Copy2d<'a, B> {
    /// Rows `src_row0 ..+rows` of a `[_, cols]` matrix to rows `dst_row0 ..` of another.
    pub fn rows(rows: usize, cols: usize, src_row0: usize, dst_row0: usize) -> Self {
        Copy2d {
            rows,
            heads: 1,
            cols,
            dst_stride: cols,
            dst_hstride: 0,
            dst_col: 0,
            dst_row0,
            src_stride: cols,
            src_hstride: 0,
            src_col: 0,
            src_row0,
            dst_map: None,
            src_map: None,
            page_shift: 0,
        }
    }
}

pub(crate) fn lock<'a, T>(m: &'a Mutex<T>, what: &str) -> GpuResult<MutexGuard<'a, T>> {
    m.lock().map_err(|_| {
        GpuError::launch(
            "gpu-backend",
            format!("a thread panicked while holding the {what}"),
        )
    })
}

pub(crate) fn shape_err(kernel: &str, tensor: &str, found: &[usize], expected: String) -> GpuError {
    GpuError::Shape {
        kernel: kernel.to_string(),
        tensor: tensor.to_string(),
        found: found.to_vec(),
        expected,
    }
}
