//! `GpuBackend<D>`: the engine's `Backend` implemented with the PTX kernels on any `Device`
//! (a CUDA stream or the PTX interpreter). Each op checks shapes (typed errors, never panics),
//! takes its launch configuration from `launch`, uploads activations, launches, and reads back.
//! Weights are uploaded once and cached by name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use troupe_engine::backend::{AttentionParams, Backend, RopeSlot, RouterRule, Routing};
use troupe_engine::dtype::DType;
use troupe_engine::graph::spec::{RopeLayout, Scoring, TopkMethod};
use troupe_engine::kernels::rope::RopeTable;
use troupe_engine::weights::Weight;
use troupe_engine::{EngineError, Result, Tensor};

use crate::device::{bytes_f32, bytes_u32, f32_bytes, u32_bytes, Arg, Device};
use crate::error::{to_engine, GpuError, GpuResult};
use crate::launch::{self, u32_of};

/// The `Backend` on device `D`.
pub struct GpuBackend<D: Device> {
    dev: D,
    weights: Mutex<HashMap<String, Arc<D::Buf>>>,
}

impl<D: Device> GpuBackend<D> {
    pub fn new(dev: D) -> Self {
        GpuBackend {
            dev,
            weights: Mutex::new(HashMap::new()),
        }
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Runs the device part of an op; a `GpuError` leaves through the `Backend` trait as the typed
    /// `EngineError::Backend` source, naming this device.
    fn on_device<T>(&self, run: impl FnOnce() -> GpuResult<T>) -> Result<T> {
        run().map_err(|e| to_engine(&self.dev.name(), e))
    }

    /// The device copy of `w`; `as_f32` forces an f32 copy (norm weights, f16 embedding tables).
    fn weight(&self, w: &Weight, as_f32: bool) -> GpuResult<Arc<D::Buf>> {
        let key = format!(
            "{}#{}",
            w.name(),
            if as_f32 { DType::F32 } else { w.dtype() }
        );
        if let Some(b) = self.weights.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(b.clone());
        }
        let buf = if as_f32 && w.dtype() != DType::F32 {
            self.dev.upload(&f32_bytes(&w.to_f32_vec()))?
        } else {
            self.dev.upload(w.bytes())?
        };
        let buf = Arc::new(buf);
        self.weights
            .lock()
            .map_err(|_| poisoned())?
            .insert(key, buf.clone());
        Ok(buf)
    }

    fn read_f32(&self, buf: &D::Buf, n: usize) -> GpuResult<Vec<f32>> {
        Ok(bytes_f32(&self.dev.download(buf, n * 4)?))
    }

    /// Greedy sampling on the device: per row, the lowest index of the maximum.
    pub fn argmax(&self, x: &Tensor) -> Result<Vec<u32>> {
        self.on_device(|| {
            let rows = x.rows();
            let xb = self.dev.upload(&f32_bytes(x.data()))?;
            let out = self.dev.alloc(rows * 4)?;
            let l = launch::argmax(rows)?;
            let cols = u32_of(l.kernel, "cols", x.cols())?;
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&out),
                    Arg::Buf(&xb),
                    Arg::U32(u32_of(l.kernel, "rows", rows)?),
                    Arg::U32(cols),
                ],
            )?;
            Ok(bytes_u32(&self.dev.download(&out, rows * 4)?))
        })
    }
}

fn poisoned() -> GpuError {
    GpuError::launch(
        "weight-cache",
        "a thread panicked while holding the weight cache",
    )
}

fn shape_err(kernel: &str, tensor: &str, found: &[usize], expected: String) -> GpuError {
    GpuError::Shape {
        kernel: kernel.to_string(),
        tensor: tensor.to_string(),
        found: found.to_vec(),
        expected,
    }
}

impl<D: Device> Backend for GpuBackend<D> {
    fn name(&self) -> String {
        self.dev.name()
    }

    fn embedding(&self, table: &Weight, ids: &[u32]) -> Result<Tensor> {
        let (vocab, hidden) = (table.rows(), table.cols());
        troupe_engine::tokenizer::check_token_ids(ids, vocab, 0)?;
        let run = || -> GpuResult<Vec<f32>> {
            let bf16 = table.dtype() == DType::BF16;
            let t = self.weight(table, !bf16)?;
            let l = launch::embedding(if bf16 { DType::BF16 } else { DType::F32 }, ids.len())?;
            let idb = self.dev.upload(&u32_bytes(ids))?;
            let out = self.dev.alloc(ids.len() * hidden * 4)?;
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
            self.read_f32(&out, ids.len() * hidden)
        };
        Tensor::matrix(ids.len(), hidden, self.on_device(run)?)
    }

    fn rms_norm(&self, x: &Tensor, weight: &Weight, eps: f32) -> Result<Tensor> {
        let (rows, cols) = (x.rows(), x.cols());
        if weight.numel() != cols {
            return Err(EngineError::ShapeMismatch {
                tensor: weight.name().to_string(),
                expected: vec![cols],
                found: weight.shape().to_vec(),
            });
        }
        let run = || -> GpuResult<Vec<f32>> {
            let w = self.weight(weight, true)?;
            let l = launch::rms_norm(rows)?;
            let xb = self.dev.upload(&f32_bytes(x.data()))?;
            let out = self.dev.alloc(rows * cols * 4)?;
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&out),
                    Arg::Buf(&xb),
                    Arg::Buf(&w),
                    Arg::U32(u32_of(l.kernel, "rows", rows)?),
                    Arg::U32(u32_of(l.kernel, "cols", cols)?),
                    Arg::F32(eps),
                ],
            )?;
            self.read_f32(&out, rows * cols)
        };
        Tensor::new(x.shape().to_vec(), self.on_device(run)?)
    }

    fn linear(&self, x: &Tensor, weight: &Weight) -> Result<Tensor> {
        let (m, k, n) = (x.rows(), x.cols(), weight.rows());
        let run = || -> GpuResult<Vec<f32>> {
            let l = launch::linear(weight.dtype(), m, n)?;
            if weight.cols() != k {
                return Err(shape_err(
                    l.kernel,
                    weight.name(),
                    weight.shape(),
                    format!("[_, {k}]"),
                ));
            }
            let w = self.weight(weight, false)?;
            let xb = self.dev.upload(&f32_bytes(x.data()))?;
            let out = self.dev.alloc(m * n * 4)?;
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&out),
                    Arg::Buf(&xb),
                    Arg::Buf(&w),
                    Arg::U32(u32_of(l.kernel, "m", m)?),
                    Arg::U32(u32_of(l.kernel, "n", n)?),
                    Arg::U32(u32_of(l.kernel, "k", k)?),
                ],
            )?;
            self.read_f32(&out, m * n)
        };
        Tensor::matrix(m, n, self.on_device(run)?)
    }

    fn silu_mul(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        let run = || -> GpuResult<Vec<f32>> {
            let n = gate.data().len();
            let l = launch::silu_mul(n)?;
            if gate.shape() != up.shape() {
                return Err(shape_err(
                    l.kernel,
                    "up",
                    up.shape(),
                    format!("{:?}", gate.shape()),
                ));
            }
            let g = self.dev.upload(&f32_bytes(gate.data()))?;
            let u = self.dev.upload(&f32_bytes(up.data()))?;
            let out = self.dev.alloc(n * 4)?;
            let nn = u32_of(l.kernel, "n", n)?;
            self.dev.launch(
                &l,
                &[Arg::Buf(&out), Arg::Buf(&g), Arg::Buf(&u), Arg::U32(nn)],
            )?;
            self.read_f32(&out, n)
        };
        Tensor::new(gate.shape().to_vec(), self.on_device(run)?)
    }

    fn rope(
        &self,
        x: &mut Tensor,
        slot: RopeSlot,
        positions: &[usize],
        table: &RopeTable,
    ) -> Result<()> {
        let rot = table.dim();
        let (rows, cols) = (x.rows(), x.cols());
        let run = || -> GpuResult<Vec<f32>> {
            let l = launch::rope(rows, slot.heads)?;
            if positions.len() != rows
                || cols != slot.heads * slot.head_stride
                || slot.offset + rot > slot.head_stride
            {
                return Err(shape_err(
                    l.kernel,
                    "x",
                    x.shape(),
                    format!(
                        "[{} rows, {} heads x {}] with rope at {}..{}",
                        positions.len(),
                        slot.heads,
                        slot.head_stride,
                        slot.offset,
                        slot.offset + rot
                    ),
                ));
            }
            let pos: Vec<u32> = positions
                .iter()
                .map(|&p| u32_of(l.kernel, "position", p))
                .collect::<GpuResult<_>>()?;
            let xb = self.dev.upload(&f32_bytes(x.data()))?;
            let pb = self.dev.upload(&u32_bytes(&pos))?;
            let fb = self.dev.upload(&f32_bytes(&table.inv_freq))?;
            let layout = match table.layout {
                RopeLayout::Interleaved => 0,
                RopeLayout::HalfSplit => 1,
            };
            let u = |f: &str, v: usize| u32_of(l.kernel, f, v).map(Arg::U32);
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&xb),
                    Arg::Buf(&pb),
                    Arg::Buf(&fb),
                    Arg::F32(table.attention_factor),
                    u("rows", rows)?,
                    u("row_stride", cols)?,
                    u("heads", slot.heads)?,
                    u("head_stride", slot.head_stride)?,
                    u("offset", slot.offset)?,
                    u("rot_dim", rot)?,
                    Arg::U32(layout),
                ],
            )?;
            self.read_f32(&xb, rows * cols)
        };
        let v = self.on_device(run)?;
        x.data_mut().copy_from_slice(&v);
        Ok(())
    }

    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, p: &AttentionParams) -> Result<Tensor> {
        let (tq, tk) = (q.rows(), k.rows());
        let run = || -> GpuResult<Vec<f32>> {
            let l = launch::attention(tq, p.heads, p.qk_dim, 0, p.v_dim)?;
            if p.kv_heads == 0 || p.heads % p.kv_heads != 0 {
                return Err(GpuError::limit(
                    l.kernel,
                    "kv_heads",
                    p.kv_heads,
                    format!("dividing {} heads", p.heads),
                ));
            }
            if q.cols() != p.heads * p.qk_dim {
                return Err(shape_err(
                    l.kernel,
                    "q",
                    q.shape(),
                    format!("[_, {}]", p.heads * p.qk_dim),
                ));
            }
            if k.cols() != p.kv_heads * p.qk_dim {
                return Err(shape_err(
                    l.kernel,
                    "k",
                    k.shape(),
                    format!("[_, {}]", p.kv_heads * p.qk_dim),
                ));
            }
            if v.cols() != p.kv_heads * p.v_dim || v.rows() != tk || p.q_start + tq > tk {
                return Err(shape_err(
                    l.kernel,
                    "v",
                    v.shape(),
                    format!(
                        "[{tk} (>= q_start {} + {tq}), {}]",
                        p.q_start,
                        p.kv_heads * p.v_dim
                    ),
                ));
            }
            let qb = self.dev.upload(&f32_bytes(q.data()))?;
            let kb = self.dev.upload(&f32_bytes(k.data()))?;
            let vb = self.dev.upload(&f32_bytes(v.data()))?;
            let out = self.dev.alloc(tq * p.heads * p.v_dim * 4)?;
            let u = |f: &str, x: usize| u32_of(l.kernel, f, x).map(Arg::U32);
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&out),
                    Arg::Buf(&qb),
                    Arg::Buf(&kb),
                    Arg::Buf(&kb),
                    Arg::Buf(&vb),
                    u("tq", tq)?,
                    u("tk", tk)?,
                    u("heads", p.heads)?,
                    u("kv_heads", p.kv_heads)?,
                    u("qk_dim", p.qk_dim)?,
                    Arg::U32(0),
                    u("v_dim", p.v_dim)?,
                    u("k_stride", k.cols())?,
                    Arg::U32(0),
                    u("v_stride", v.cols())?,
                    u("q_start", p.q_start)?,
                    u("sliding_window", p.sliding_window.unwrap_or(0))?,
                    Arg::F32(p.scale),
                ],
            )?;
            self.read_f32(&out, tq * p.heads * p.v_dim)
        };
        Tensor::matrix(tq, p.heads * p.v_dim, self.on_device(run)?)
    }

    fn route(&self, logits: &Tensor, rule: &RouterRule, bias: Option<&[f32]>) -> Result<Routing> {
        let n = logits.rows();
        let e = rule.n_experts;
        let greedy = rule.method == TopkMethod::Greedy;
        let run = || -> GpuResult<(Vec<u32>, Vec<f32>)> {
            let n_group = if greedy { 1 } else { rule.n_group };
            let l = launch::route(n, e, rule.top_k, n_group)?;
            if logits.cols() != e {
                return Err(shape_err(
                    l.kernel,
                    "logits",
                    logits.shape(),
                    format!("[_, {e}]"),
                ));
            }
            if bias.is_some_and(|b| b.len() != e) {
                return Err(GpuError::limit(
                    l.kernel,
                    "bias.len",
                    bias.map_or(0, |b| b.len()),
                    format!("== {e}"),
                ));
            }
            let lb = self.dev.upload(&f32_bytes(logits.data()))?;
            let bb = match bias {
                Some(b) => Some(self.dev.upload(&f32_bytes(b))?),
                None => None,
            };
            let ids = self.dev.alloc(n * rule.top_k * 4)?;
            let ws = self.dev.alloc(n * rule.top_k * 4)?;
            let scoring = match rule.scoring {
                Scoring::Softmax => 0,
                Scoring::Sigmoid => 1,
            };
            let method = match rule.method {
                TopkMethod::Greedy => 0,
                TopkMethod::GroupLimitedGreedy => 1,
                TopkMethod::NoauxTc => 2,
            };
            let u = |f: &str, x: usize| u32_of(l.kernel, f, x).map(Arg::U32);
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&ids),
                    Arg::Buf(&ws),
                    Arg::Buf(&lb),
                    bb.as_ref().map_or(Arg::Null, Arg::Buf),
                    u("n", n)?,
                    u("experts", e)?,
                    u("top_k", rule.top_k)?,
                    u("n_group", n_group)?,
                    u("topk_group", if greedy { 1 } else { rule.topk_group })?,
                    Arg::U32(scoring),
                    Arg::U32(method),
                    Arg::U32(rule.norm_topk_prob as u32),
                    Arg::F32(rule.routed_scaling_factor),
                ],
            )?;
            let bytes = n * rule.top_k * 4;
            Ok((
                bytes_u32(&self.dev.download(&ids, bytes)?),
                bytes_f32(&self.dev.download(&ws, bytes)?),
            ))
        };
        let (ids, ws) = self.on_device(run)?;
        let k = rule.top_k.max(1);
        Ok(Routing {
            ids: ids.chunks(k).map(|c| c.to_vec()).collect(),
            weights: ws.chunks(k).map(|c| c.to_vec()).collect(),
        })
    }
}
