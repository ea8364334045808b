//! Host kernels that move columns and rows without arithmetic, plus the element-wise residual add
//! and the non-finite check: `head_columns` (a slice of every head), `per_head_linear` (one
//! `linear` per head, interleaved back), `add`, `ensure_finite`.

use crate::backend::HeadSlice;
use crate::error::{EngineError, PassSite, Result};
use crate::kernels::linear;
use crate::tensor::Tensor;
use crate::weights::Weight;

/// Columns `[h·stride + offset, .. + width)` of every head `h`, head after head.
pub fn head_columns(x: &Tensor, s: HeadSlice) -> Result<Tensor> {
    if s.offset + s.width > s.stride || s.heads * s.stride > x.cols() {
        return Err(EngineError::kernel(
            "head_columns",
            format!("{s:?} does not fit rows of {}", x.cols()),
        ));
    }
    let mut out = Vec::with_capacity(x.rows() * s.heads * s.width);
    for r in 0..x.rows() {
        let row = x.row(r);
        for h in 0..s.heads {
            let c = h * s.stride + s.offset;
            out.extend_from_slice(&row[c..c + s.width]);
        }
    }
    Tensor::matrix(x.rows(), s.heads * s.width, out)
}

/// Per head `h`: `x[:, h·in ..+in] @ weights[h]^T`, interleaved back to `[n, heads·out]`.
pub fn per_head_linear(x: &Tensor, weights: &[Weight]) -> Result<Tensor> {
    let heads = weights.len();
    let Some(first) = weights.first() else {
        return Err(EngineError::kernel("per_head_linear", "no weights"));
    };
    let (inp, outw) = (first.cols(), first.rows());
    if x.cols() != heads * inp || weights.iter().any(|w| w.shape() != first.shape()) {
        return Err(EngineError::kernel(
            "per_head_linear",
            format!(
                "{} columns for {heads} heads of {:?}",
                x.cols(),
                first.shape()
            ),
        ));
    }
    let n = x.rows();
    // Every head's product in one parallel region (a decode step of absorbed MLA makes two
    // such calls per sequence and layer: one region each instead of one per head).
    let slices = (0..heads)
        .map(|h| {
            head_columns(
                x,
                HeadSlice {
                    heads: 1,
                    stride: x.cols(),
                    offset: h * inp,
                    width: inp,
                },
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let mut per_head = vec![vec![0.0f32; n * outw]; heads];
    let mut jobs: Vec<linear::LinearJob<'_>> = slices
        .iter()
        .zip(weights)
        .zip(per_head.iter_mut())
        .map(|((x, w), out)| linear::LinearJob { x, w, out })
        .collect();
    linear::linear_many(&mut jobs)?;
    drop(jobs);
    let mut out = vec![0.0f32; n * heads * outw];
    for (h, yh) in per_head.iter().enumerate() {
        for i in 0..n {
            out[(i * heads + h) * outw..(i * heads + h + 1) * outw]
                .copy_from_slice(&yh[i * outw..(i + 1) * outw]);
        }
    }
    Tensor::matrix(n, heads * outw, out)
}

/// `a + b` element-wise (same shape).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let mut out = a.clone();
    out.add_assign(b)?;
    Ok(out)
}

/// Fails with [`EngineError::NonFinite`] naming `at` (and the first offending row) when `t`
/// holds a NaN or an infinity. One pass over the data, branch-free per block so it vectorises;
/// finite data is left untouched.
pub fn ensure_finite(t: &Tensor, at: PassSite) -> Result<()> {
    const BLOCK: usize = 256;
    let data = t.data();
    let clean = data
        .chunks(BLOCK)
        .all(|b| b.iter().fold(true, |ok, v| ok & v.is_finite()));
    if clean {
        return Ok(());
    }
    match data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(EngineError::NonFinite {
            layer: at,
            row: i / t.cols().max(1),
            value: data[i],
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_finite_names_the_step_and_the_first_bad_row() {
        let ok = Tensor::from_flat(3, vec![1.0, -2.0, 0.0, 1e30, -1e-30, f32::MAX]);
        assert!(ensure_finite(&ok, PassSite::Layer(2)).is_ok());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut v = vec![0.5f32; 3 * 300];
            v[3 * 200 + 1] = bad;
            v[3 * 250] = bad;
            match ensure_finite(&Tensor::from_flat(3, v), PassSite::Layer(2)) {
                Err(e @ EngineError::NonFinite { .. }) => {
                    let EngineError::NonFinite { layer, row, value } = &e else {
                        unreachable!()
                    };
                    assert_eq!((*layer, *row), (PassSite::Layer(2), 200));
                    assert_eq!(value.to_bits(), bad.to_bits());
                    assert!(e.to_string().contains("decoder layer 2"), "{e}");
                }
                other => panic!("{bad}: expected a non-finite error, got {other:?}"),
            }
        }
        let e = ensure_finite(&Tensor::from_flat(1, vec![f32::NAN]), PassSite::Head).unwrap_err();
        assert!(e.to_string().contains("the LM head"), "{e}");
    }

    #[test]
    fn head_columns_takes_each_heads_slice() {
        let x = Tensor::from_flat(6, (0..12).map(|v| v as f32).collect());
        let s = HeadSlice {
            heads: 2,
            stride: 3,
            offset: 1,
            width: 2,
        };
        let got = head_columns(&x, s).unwrap();
        assert_eq!(got.data(), &[1.0, 2.0, 4.0, 5.0, 7.0, 8.0, 10.0, 11.0]);
        assert!(head_columns(&x, HeadSlice { width: 3, ..s }).is_err());
    }
}
