//! Causal multi-head attention over one sequence (GQA/MQA/MHA, optional sliding window), softmax
//! in f32. Naive MLA (keys/values expanded per head) and absorbed MLA (one latent "kv head") both
//! run through this kernel.

use rayon::prelude::*;

use crate::backend::AttentionParams;
use crate::error::{EngineError, Result};
use crate::tensor::Tensor;

/// The split-key form of the `Backend::attention` contract: head `h`'s query is
/// `[q_h | q_rope_h]` and kv head `g`'s key `[k_g | k_rope]`; joined here, then the joint kernel.
pub fn attention(
    q: &Tensor,
    q_rope: Option<&Tensor>,
    k: &Tensor,
    k_rope: Option<&Tensor>,
    v: &Tensor,
    p: &AttentionParams,
) -> Result<Tensor> {
    let join = |a: &Tensor, b: Option<&Tensor>, heads: usize, shared: bool| {
        let Some(b) = b else { return a.clone() };
        let (w1, w2) = (p.d1, p.d2);
        let mut out = Vec::with_capacity(a.rows() * heads * (w1 + w2));
        for r in 0..a.rows() {
            for h in 0..heads {
                out.extend_from_slice(&a.row(r)[h * w1..(h + 1) * w1]);
                let hb = if shared { 0 } else { h };
                out.extend_from_slice(&b.row(r)[hb * w2..(hb + 1) * w2]);
            }
        }
        Tensor::from_flat(heads * (w1 + w2), out)
    };
    if q_rope.is_some() != k_rope.is_some()
        || q.cols() != p.heads * p.d1
        || k.cols() != p.kv_heads * p.d1
        || q_rope.is_some_and(|t| t.cols() != p.heads * p.d2 || t.rows() != q.rows())
        || k_rope.is_some_and(|t| t.cols() != p.d2 || t.rows() != k.rows())
    {
        return Err(EngineError::kernel(
            "attention",
            format!("query/key widths do not match {p:?}"),
        ));
    }
    let qj = join(q, q_rope, p.heads, false);
    let kj = join(k, k_rope, p.kv_heads, true);
    joint(
        &qj,
        &kj,
        v,
        p,
        p.d1 + if q_rope.is_some() { p.d2 } else { 0 },
    )
}

/// `q` `[tq, heads*qk]`, `k` `[tk, kv_heads*qk]`, `v` `[tk, kv_heads*v]` → `[tq, heads*v]`.
fn joint(q: &Tensor, k: &Tensor, v: &Tensor, p: &AttentionParams, qk_dim: usize) -> Result<Tensor> {
    let err = |m: String| EngineError::kernel("attention", m);
    if p.kv_heads == 0 || p.heads % p.kv_heads != 0 {
        return Err(err(format!("{} heads vs {} kv heads", p.heads, p.kv_heads)));
    }
    if q.cols() != p.heads * qk_dim
        || k.cols() != p.kv_heads * qk_dim
        || v.cols() != p.kv_heads * p.v_dim
    {
        return Err(err(format!(
            "widths q {} k {} v {} do not match heads {}x{} / kv {}x{}",
            q.cols(),
            k.cols(),
            v.cols(),
            p.heads,
            qk_dim,
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
    let width = p.heads * p.v_dim;
    let mut out = vec![0.0f32; tq * width];
    // Query rows are independent: parallel over rows (each row's arithmetic is the same whatever
    // the split, so results do not depend on the thread count).
    let row = |(i, o): (usize, &mut [f32])| {
        let pos = p.q_start + i;
        let first = match p.sliding_window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        let mut scores = vec![0.0f32; pos + 1 - first];
        for h in 0..p.heads {
            let kh = h / group;
            let qv = &q.row(i)[h * qk_dim..(h + 1) * qk_dim];
            let mut max = f32::NEG_INFINITY;
            for (s, j) in scores.iter_mut().zip(first..=pos) {
                let kv = &k.row(j)[kh * qk_dim..(kh + 1) * qk_dim];
                *s = dot8(qv, kv) * p.scale;
                max = max.max(*s);
            }
            let mut sum = 0.0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let oh = &mut o[h * p.v_dim..(h + 1) * p.v_dim];
            for (s, j) in scores.iter().zip(first..=pos) {
                let w = s / sum;
                let vv = &v.row(j)[kh * p.v_dim..(kh + 1) * p.v_dim];
                for (a, b) in oh.iter_mut().zip(vv) {
                    *a += w * b;
                }
            }
        }
    };
    let work = tq * p.heads * (p.q_start + tq) * (qk_dim + p.v_dim);
    if work < (1 << 18) {
        out.chunks_mut(width).enumerate().for_each(row);
    } else {
        out.par_chunks_mut(width).enumerate().for_each(row);
    }
    Tensor::matrix(tq, p.heads * p.v_dim, out)
}

/// Dot product with 8 independent partial sums (element `i` into sum `i % 8`), folded in a fixed
/// order: vectorisable without reassociation, and the same result on every call.
#[inline]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut l = [0.0f32; 8];
    let n = a.len().min(b.len());
    let main = n / 8 * 8;
    for (ca, cb) in a[..main].chunks_exact(8).zip(b[..main].chunks_exact(8)) {
        for j in 0..8 {
            l[j] += ca[j] * cb[j];
        }
    }
    for i in main..n {
        l[i - main] += a[i] * b[i];
    }
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}
