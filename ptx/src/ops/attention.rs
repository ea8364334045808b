//! Attention on device handles, one `attention_f32` launch each: over keys given as tensors
//! (`attention`, MLA's naive prefill and GQA over fresh keys) and in place over a sequence's
//! pages (`paged_attention`: the kernel maps each position through the device block table; the
//! key, rope and value parts are column offsets into the one page storage, so nothing is copied).

use troupe_engine::backend::AttentionParams;
use troupe_engine::device_tensor::{BlockTableRef, KvStore};
use troupe_engine::{DeviceTensor, EngineError, Result};

use super::kv::page_shift;
use super::{shape_err, GpuBackend};
use crate::device::{Arg, Device};
use crate::error::{GpuError, GpuResult};
use crate::launch::{self, u32_of};

/// Where the keys and values of one launch live: buffers (or column offsets into one) and the
/// row strides, plus the block table of a paged launch.
struct KeySource<'a, B> {
    k1: Arg<'a, B>,
    k2: Arg<'a, B>,
    v: Arg<'a, B>,
    strides: (usize, usize, usize),
    table: Option<&'a B>,
    page_shift: usize,
}

const KERNEL: &str = "attention_f32";

impl<D: Device> GpuBackend<D> {
    /// A `GpuError::Shape` of `attention_f32` for tensor `what`.
    fn bad(&self, what: &str, found: &[usize], expected: String) -> EngineError {
        self.gpu_err(shape_err(KERNEL, what, found, expected))
    }

    /// Checks the query side and returns the q_rope buffer (when `d2 > 0`).
    fn queries<'a>(
        &self,
        op: &str,
        q: &DeviceTensor,
        q_rope: Option<&'a DeviceTensor>,
        p: &AttentionParams,
    ) -> Result<Option<&'a D::Buf>> {
        if p.kv_heads == 0 || p.heads % p.kv_heads != 0 {
            return Err(self.gpu_err(GpuError::limit(
                KERNEL,
                "kv_heads",
                p.kv_heads,
                format!("dividing {} heads", p.heads),
            )));
        }
        if q.cols() != p.heads * p.d1 {
            return Err(self.bad(
                "q",
                &[q.rows(), q.cols()],
                format!("[_, {}]", p.heads * p.d1),
            ));
        }
        match q_rope {
            Some(r) if p.d2 > 0 => {
                if r.rows() != q.rows() || r.cols() != p.heads * p.d2 {
                    return Err(self.bad(
                        "q_rope",
                        &[r.rows(), r.cols()],
                        format!("[{}, {}]", q.rows(), p.heads * p.d2),
                    ));
                }
                Ok(Some(self.buf(op, r)?))
            }
            None if p.d2 > 0 => Err(self.bad("q_rope", &[], format!("[_, {}]", p.heads * p.d2))),
            _ => Ok(None),
        }
    }

    /// One `attention_f32` launch over `tk` keys.
    fn launch_attention(
        &self,
        q: &D::Buf,
        q_rope: Option<&D::Buf>,
        tq: usize,
        tk: usize,
        src: KeySource<'_, D::Buf>,
        p: &AttentionParams,
    ) -> GpuResult<D::Buf> {
        let out = self.alloc_f32(tq * p.heads * p.v_dim)?;
        if tq == 0 || p.heads == 0 {
            return Ok(out);
        }
        let l = launch::attention(tq, p.heads, p.d1, p.d2, p.v_dim)?;
        if p.q_start + tq > tk {
            return Err(GpuError::limit(
                l.kernel,
                "q_start + tq",
                p.q_start + tq,
                format!("<= {tk} keys"),
            ));
        }
        let u = |f: &str, x: usize| u32_of(l.kernel, f, x).map(Arg::U32);
        self.dev.launch(
            &l,
            &[
                Arg::Buf(&out),
                Arg::Buf(q),
                q_rope.map_or(Arg::Null, Arg::Buf),
                src.k1,
                src.k2,
                src.v,
                src.table.map_or(Arg::Null, Arg::Buf),
                u("tq", tq)?,
                u("tk", tk)?,
                u("heads", p.heads)?,
                u("kv_heads", p.kv_heads)?,
                u("d1", p.d1)?,
                u("d2", p.d2)?,
                u("v_dim", p.v_dim)?,
                u("k1_stride", src.strides.0)?,
                u("k2_stride", src.strides.1)?,
                u("v_stride", src.strides.2)?,
                u("q_start", p.q_start)?,
                u("sliding_window", p.sliding_window.unwrap_or(0))?,
                Arg::F32(p.scale),
                u("page_shift", src.page_shift)?,
            ],
        )?;
        Ok(out)
    }

    pub(super) fn attention_op(
        &self,
        q: &DeviceTensor,
        q_rope: Option<&DeviceTensor>,
        k: &DeviceTensor,
        k_rope: Option<&DeviceTensor>,
        v: &DeviceTensor,
        p: &AttentionParams,
    ) -> Result<DeviceTensor> {
        let op = "attention";
        let qb = self.buf(op, q)?;
        let qr = self.queries(op, q, q_rope, p)?;
        let (kb, vb) = (self.buf(op, k)?, self.buf(op, v)?);
        let tk = k.rows();
        if k.cols() != p.kv_heads * p.d1 {
            return Err(self.bad("k", &[tk, k.cols()], format!("[_, {}]", p.kv_heads * p.d1)));
        }
        if v.rows() != tk || v.cols() != p.kv_heads * p.v_dim {
            return Err(self.bad(
                "v",
                &[v.rows(), v.cols()],
                format!("[{tk}, {}]", p.kv_heads * p.v_dim),
            ));
        }
        let kr = match k_rope {
            Some(r) if p.d2 > 0 => {
                if r.rows() != tk || r.cols() != p.d2 {
                    return Err(self.bad(
                        "k_rope",
                        &[r.rows(), r.cols()],
                        format!("[{tk}, {}]", p.d2),
                    ));
                }
                Some(self.buf(op, r)?)
            }
            None if p.d2 > 0 => return Err(self.bad("k_rope", &[], format!("[{tk}, {}]", p.d2))),
            _ => None,
        };
        let src = KeySource {
            k1: Arg::Buf(kb),
            k2: kr.map_or(Arg::Null, Arg::Buf),
            v: Arg::Buf(vb),
            strides: (k.cols(), p.d2, v.cols()),
            table: None,
            page_shift: 0,
        };
        let out = self.on_device(|| self.launch_attention(qb, qr, q.rows(), tk, src, p))?;
        Ok(self.tensor(q.rows(), p.heads * p.v_dim, out))
    }

    pub(super) fn paged_attention_op(
        &self,
        q: &DeviceTensor,
        q_rope: Option<&DeviceTensor>,
        store: &KvStore,
        table: BlockTableRef<'_>,
        len: usize,
        p: &AttentionParams,
    ) -> Result<DeviceTensor> {
        let op = "paged_attention";
        let qb = self.buf(op, q)?;
        let qr = self.queries(op, q, q_rope, p)?;
        let sb = self.store_buf(op, store)?;
        let lay = store.layout;
        let shift = page_shift(&lay)?;
        if lay.key_width != p.kv_heads * p.d1 || lay.rope_width != p.d2 {
            return Err(EngineError::Invalid(format!(
                "{op}: layout {lay:?} does not hold keys of {} kv heads x {} (+ rope {})",
                p.kv_heads, p.d1, p.d2
            )));
        }
        let v_col = if lay.value_width == 0 {
            if p.kv_heads * p.v_dim > lay.key_width {
                return Err(EngineError::Invalid(format!(
                    "{op}: values of {} kv heads x {} read from {} key columns",
                    p.kv_heads, p.v_dim, lay.key_width
                )));
            }
            0
        } else {
            if p.kv_heads * p.v_dim != lay.value_width {
                return Err(EngineError::Invalid(format!(
                    "{op}: values of {} kv heads x {} in {} value columns",
                    p.kv_heads, p.v_dim, lay.value_width
                )));
            }
            lay.key_width + lay.rope_width
        };
        self.check_table(op, store, table, len)?;
        let w = lay.row_width();
        let out = self.on_device(|| {
            self.with_table(table, |tb| {
                let src = KeySource {
                    k1: Arg::Buf(sb),
                    k2: Arg::BufAt(sb, lay.key_width * 4),
                    v: Arg::BufAt(sb, v_col * 4),
                    strides: (w, w, w),
                    table: Some(tb),
                    page_shift: shift,
                };
                self.launch_attention(qb, qr, q.rows(), len, src, p)
            })
        })?;
        Ok(self.tensor(q.rows(), p.heads * p.v_dim, out))
    }
}
