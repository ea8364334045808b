//! Host kernels of the MoE block: the grouped expert MLP (every routed row of every listed expert,
//! rows grouped per expert in ascending expert id, then ascending row) and the weighted combine
//! (`residual + (Σ_slots w·y + shared)`, slots summed in ascending expert id from 0.0). Each
//! expert row is computed with the same per-element order as a lone MLP on those rows (the
//! projections of all experts share parallel regions, `linear::linear_many`), so results are
//! bit-identical to running the experts one by one.

use crate::backend::{ExpertWeights, Routing};
use crate::error::{EngineError, Result};
use crate::kernels::activation;
use crate::kernels::linear::{self, LinearJob};
use crate::tensor::Tensor;

/// Rows routed to `expert`, ascending.
pub fn rows_of_expert(routing: &Routing, expert: u32) -> Vec<usize> {
    routing
        .ids
        .iter()
        .enumerate()
        .filter(|(_, ids)| ids.contains(&expert))
        .map(|(r, _)| r)
        .collect()
}

/// `down(silu(gate(x)) * up(x))` of one expert's weights.
pub fn mlp(x: &Tensor, e: &ExpertWeights<'_>) -> Result<Tensor> {
    let g = linear::linear(x, e.gate)?;
    let u = linear::linear(x, e.up)?;
    linear::linear(&activation::silu_mul(&g, &u)?, e.down)
}

/// The grouped expert MLP: for each expert of `experts` (ascending ids) the rows of `x` routed to
/// it, in row order, concatenated → `[Σ rows, hidden]`, with the experts that got rows. Two
/// parallel regions in all: every expert's gate and up projections, then every expert's down
/// projection (written straight into its rows of the output); each output element is computed as
/// by [`mlp`] on that expert's rows alone.
pub fn grouped_mlp(
    x: &Tensor,
    routing: &Routing,
    experts: &[ExpertWeights<'_>],
) -> Result<(Vec<u32>, Tensor)> {
    if routing.ids.len() != x.rows() {
        return Err(EngineError::kernel(
            "grouped_mlp",
            format!("{} rows but a routing of {}", x.rows(), routing.ids.len()),
        ));
    }
    if experts.windows(2).any(|w| w[0].id >= w[1].id) {
        return Err(EngineError::kernel(
            "grouped_mlp",
            "experts must be listed in ascending id order",
        ));
    }
    let width = experts.first().map_or(x.cols(), |e| e.down.rows());
    if let Some(e) = experts.iter().find(|e| e.down.rows() != width) {
        return Err(EngineError::kernel(
            "grouped_mlp",
            format!(
                "expert {} outputs {} columns, not {width}",
                e.id,
                e.down.rows()
            ),
        ));
    }
    let mut active = Vec::new();
    for e in experts {
        let rows = rows_of_expert(routing, e.id);
        if !rows.is_empty() {
            active.push((e, x.gather_rows(&rows)));
        }
    }
    let ids = active.iter().map(|(e, _)| e.id).collect();
    // Gate and up of every expert.
    let mut gates: Vec<Vec<f32>> = active
        .iter()
        .map(|(e, xe)| vec![0.0; xe.rows() * e.gate.rows()])
        .collect();
    let mut ups: Vec<Vec<f32>> = active
        .iter()
        .map(|(e, xe)| vec![0.0; xe.rows() * e.up.rows()])
        .collect();
    let mut jobs = Vec::with_capacity(2 * active.len());
    for (((e, xe), g), u) in active.iter().zip(&mut gates).zip(&mut ups) {
        jobs.push(LinearJob {
            x: xe,
            w: e.gate,
            out: g,
        });
        jobs.push(LinearJob {
            x: xe,
            w: e.up,
            out: u,
        });
    }
    linear::linear_many(&mut jobs)?;
    drop(jobs);
    let hidden = active
        .iter()
        .zip(gates.into_iter().zip(ups))
        .map(|((e, xe), (g, u))| {
            let g = Tensor::matrix(xe.rows(), e.gate.rows(), g)?;
            activation::silu_mul(&g, &Tensor::matrix(xe.rows(), e.up.rows(), u)?)
        })
        .collect::<Result<Vec<_>>>()?;
    // Down of every expert, into its block of rows.
    let total: usize = active.iter().map(|(_, xe)| xe.rows()).sum();
    let mut out = vec![0.0f32; total * width];
    let mut jobs = Vec::with_capacity(active.len());
    let mut rest = out.as_mut_slice();
    for ((e, xe), h) in active.iter().zip(&hidden) {
        let (mine, tail) = rest.split_at_mut(xe.rows() * width);
        rest = tail;
        jobs.push(LinearJob {
            x: h,
            w: e.down,
            out: mine,
        });
    }
    linear::linear_many(&mut jobs)?;
    drop(jobs);
    Ok((ids, Tensor::matrix(total, width, out)?))
}

/// One `grouped_mlp` output as the combine reads it.
pub struct ExpertPart<'a> {
    pub experts: &'a [u32],
    pub rows: &'a Tensor,
}

/// `residual + (moe + shared)` per row with `moe = Σ_slots (acc += w·y)` over the row's slots in
/// ascending expert id starting from 0.0; `parts` together cover every expert the routing names.
pub fn moe_combine(
    residual: &Tensor,
    routing: &Routing,
    parts: &[ExpertPart<'_>],
    shared: Option<&Tensor>,
) -> Result<Tensor> {
    let err = |m: String| EngineError::kernel("moe_combine", m);
    let (n, d) = (residual.rows(), residual.cols());
    if routing.ids.len() != n || shared.is_some_and(|s| s.rows() != n || s.cols() != d) {
        return Err(err(format!(
            "residual [{n}, {d}], routing of {} rows, shared {:?}",
            routing.ids.len(),
            shared.map(|s| s.shape().to_vec())
        )));
    }
    // Where each expert's block starts: (part, first row inside the part's tensor).
    let mut counts = std::collections::BTreeMap::<u32, usize>::new();
    for ids in &routing.ids {
        for &e in ids {
            *counts.entry(e).or_default() += 1;
        }
    }
    let mut block = std::collections::BTreeMap::<u32, (usize, usize)>::new();
    for (p, part) in parts.iter().enumerate() {
        let mut start = 0;
        for &e in part.experts {
            block.insert(e, (p, start));
            start += counts.get(&e).copied().unwrap_or(0);
        }
        if start != part.rows.rows() || part.rows.cols() != d {
            return Err(err(format!(
                "part {p}: experts {:?} need {start} rows of {d}, got {:?}",
                part.experts,
                part.rows.shape()
            )));
        }
    }
    let mut moe = vec![0.0f32; n * d];
    let mut cursor = std::collections::BTreeMap::<u32, usize>::new();
    for r in 0..n {
        let acc = &mut moe[r * d..(r + 1) * d];
        for (&e, &w) in routing.ids[r].iter().zip(&routing.weights[r]) {
            let &(p, start) = block
                .get(&e)
                .ok_or_else(|| err(format!("no output from expert {e}")))?;
            let slot = cursor.entry(e).or_default();
            let y = parts[p].rows.row(start + *slot);
            *slot += 1;
            for (a, b) in acc.iter_mut().zip(y) {
                *a += w * b;
            }
        }
    }
    let mut out = residual.clone();
    let data = out.data_mut();
    for r in 0..n {
        for c in 0..d {
            let mut m = moe[r * d + c];
            if let Some(s) = shared {
                m += s.row(r)[c];
            }
            data[r * d + c] += m;
        }
    }
    Ok(out)
}
