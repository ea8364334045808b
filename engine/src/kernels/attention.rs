//! Causal multi-head attention over one sequence (GQA/MQA/MHA, optional sliding window), softmax
//! in f32. Naive MLA (keys/values expanded per head) and absorbed MLA (one latent "kv head") both
//! run through this kernel.

use crate::backend::AttentionParams;
use crate::error::{EngineError, Result};
use crate::tensor::Tensor;

/// `q` `[tq, heads*qk]`, `k` `[tk, kv_heads*qk]`, `v` `[tk, kv_heads*v]` → `[tq, heads*v]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttentionParams) -> Result<Tensor> {
    let err = |m: String| EngineError::kernel("attention", m);
    if p.kv_heads == 0 || p.heads % p.kv_heads != 0 {
        return Err(err(format!("{} heads vs {} kv heads", p.heads, p.kv_heads)));
    }
    if q.cols() != p.heads * p.qk_dim
        || k.cols() != p.kv_heads * p.qk_dim
        || v.cols() != p.kv_heads * p.v_dim
    {
        return Err(err(format!(
            "widths q {} k {} v {} do not match heads {}x{} / kv {}x{}",
            q.cols(),
            k.cols(),
            v.cols(),
            p.heads,
            p.qk_dim,
            p.kv_heads,
            p.v_dim
        )));
    }
    let tq = q.rows();
    let tk = k.rows();
    if v.rows() != tk || p.q_start + tq > tk {
        return Err(err(format!(
            "{tq} queries from position {} need {} keys, have {tk} (v {})",
            p.q_start,
            p.q_start + tq,
            v.rows()
        )));
    }
    let group = p.heads / p.kv_heads;
    let mut out = vec![0.0f32; tq * p.heads * p.v_dim];
    let mut scores = vec![0.0f32; tk];
    for i in 0..tq {
        let pos = p.q_start + i;
        let first = match p.sliding_window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        for h in 0..p.heads {
            let kh = h / group;
            let qv = &q.row(i)[h * p.qk_dim..(h + 1) * p.qk_dim];
            let mut max = f32::NEG_INFINITY;
            for j in first..=pos {
                let kv = &k.row(j)[kh * p.qk_dim..(kh + 1) * p.qk_dim];
                let mut s = 0.0f32;
                for (a, b) in qv.iter().zip(kv) {
                    s += a * b;
                }
                let s = s * p.scale;
                scores[j] = s;
                max = max.max(s);
            }
            let mut sum = 0.0f32;
            for s in &mut scores[first..=pos] {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out[(i * p.heads + h) * p.v_dim..(i * p.heads + h + 1) * p.v_dim];
            for j in first..=pos {
                let w = scores[j] / sum;
                let vv = &v.row(j)[kh * p.v_dim..(kh + 1) * p.v_dim];
                for (a, b) in o.iter_mut().zip(vv) {
                    *a += w * b;
                }
            }
        }
    }
    Tensor::matrix(tq, p.heads * p.v_dim, out)
}
