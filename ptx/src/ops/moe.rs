//! Mixture of experts on the device: `route` (`route_topk`, the correction bias a cached weight),
//! the routing transfers, the grouped expert MLP (`moe_sort` → `moe_gather` → `grouped_linear`
//! gate and up → `silu_mul` → `grouped_linear` down, over the experts' weights stacked once per
//! expert set and cached) and `moe_combine` (the weighted sum in ascending expert id from 0.0,
//! plus the shared expert and the residual, in one launch; the parts of a split layer are
//! concatenated and their indices merged by `moe_index_merge` first).
//!
//! On this backend an `ExpertRows` holds `rows × top_k` rows (the entries of its experts first,
//! in `DispatchPlan` order, then zero padding — the host never learns the per-expert counts) and
//! its `index` is the entry → row map (`ExpertIndex`, 0xFFFFFFFF for entries of other experts).

use std::sync::Arc;

use troupe_engine::backend::{ExpertRows, ExpertWeights, RouterRule, Routing};
use troupe_engine::device_tensor::{BackendId, DeviceBuf, DeviceRouting};
use troupe_engine::graph::spec::{Scoring, TopkMethod};
use troupe_engine::weights::Weight;
use troupe_engine::{DeviceTensor, EngineError, Result};

use super::{shape_err, Copy2d, GpuBackend};
use crate::device::{bytes_f32, f32_bytes, u32_bytes, Arg, Device};
use crate::error::GpuError;
use crate::launch::{self, u32_of};

/// A routing on the device: `ids` and `weights`, `[rows, top_k]` each.
pub struct RoutingBufs<B> {
    pub ids: B,
    pub weights: B,
}

/// The entry → row map of one `ExpertRows` (see the module doc).
pub struct ExpertIndex<B> {
    pub owner: BackendId,
    pub inv: B,
}

const ABSENT: u32 = u32::MAX;

impl<D: Device> GpuBackend<D> {
    fn routing_bufs<'a>(&self, op: &str, r: &'a DeviceRouting) -> Result<&'a RoutingBufs<D::Buf>> {
        r.device_buf::<RoutingBufs<D::Buf>>(self.id)
            .ok_or_else(|| EngineError::WrongDevice {
                op: op.to_string(),
                backend: self.dev.name(),
                found: if r.host().is_some() {
                    "the host".to_string()
                } else {
                    "another device backend".to_string()
                },
            })
    }

    fn routing(&self, rows: usize, top_k: usize, ids: D::Buf, weights: D::Buf) -> DeviceRouting {
        let buf: DeviceBuf = Arc::new(RoutingBufs { ids, weights });
        DeviceRouting::on_device(self.id, rows, top_k, buf)
    }

    pub(super) fn route_op(
        &self,
        logits: &DeviceTensor,
        rule: &RouterRule,
        bias: Option<&Weight>,
    ) -> Result<DeviceRouting> {
        let lb = self.buf("route", logits)?;
        let n = logits.rows();
        let e = rule.n_experts;
        let greedy = rule.method == TopkMethod::Greedy;
        let (ids, ws) = self.on_device(|| {
            let n_group = if greedy { 1 } else { rule.n_group };
            let l = launch::route(n, e, rule.top_k, n_group)?;
            if logits.cols() != e {
                return Err(shape_err(
                    l.kernel,
                    "logits",
                    &[n, logits.cols()],
                    format!("[_, {e}]"),
                ));
            }
            if let Some(b) = bias.filter(|b| b.numel() != e) {
                return Err(shape_err(l.kernel, b.name(), b.shape(), format!("[{e}]")));
            }
            let ids = self.dev.alloc(n * rule.top_k * 4)?;
            let ws = self.dev.alloc(n * rule.top_k * 4)?;
            if n == 0 {
                return Ok((ids, ws));
            }
            let bb = bias.map(|b| self.weight(b, true)).transpose()?;
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
                    Arg::Buf(lb),
                    bb.as_deref().map_or(Arg::Null, Arg::Buf),
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
            Ok((ids, ws))
        })?;
        Ok(self.routing(n, rule.top_k, ids, ws))
    }

    pub(super) fn routing_to_host_op(&self, r: &DeviceRouting) -> Result<Routing> {
        let b = self.routing_bufs("routing_to_host", r)?;
        let (n, k) = (r.rows(), r.top_k());
        let ids = self.download_ids(&b.ids, n * k)?;
        let ws = self.on_device(|| Ok(bytes_f32(&self.dev.download(&b.weights, n * k * 4)?)))?;
        let k = k.max(1);
        Ok(Routing {
            ids: ids.chunks(k).map(|c| c.to_vec()).collect(),
            weights: ws.chunks(k).map(|c| c.to_vec()).collect(),
        })
    }

    pub(super) fn routing_to_device_op(&self, r: &Routing, top_k: usize) -> Result<DeviceRouting> {
        let rows = r.ids.len();
        if r.weights.len() != rows
            || r.ids
                .iter()
                .zip(&r.weights)
                .any(|(i, w)| i.len() != top_k || w.len() != top_k)
        {
            return Err(EngineError::Invalid(format!(
                "routing_to_device: every one of {rows} rows needs {top_k} ids and weights"
            )));
        }
        let ids: Vec<u32> = r.ids.concat();
        let ws: Vec<f32> = r.weights.concat();
        let (ib, wb) = self.on_device(|| {
            Ok((
                self.dev.upload(&u32_bytes(&ids))?,
                self.dev.upload(&f32_bytes(&ws))?,
            ))
        })?;
        Ok(self.routing(rows, top_k, ib, wb))
    }

    pub(super) fn grouped_mlp_op(
        &self,
        x: &DeviceTensor,
        routing: &DeviceRouting,
        experts: &[ExpertWeights<'_>],
    ) -> Result<ExpertRows> {
        let op = "grouped_mlp";
        let xb = self.buf(op, x)?;
        let rb = self.routing_bufs(op, routing)?;
        let (n, hidden, top_k) = (x.rows(), x.cols(), routing.top_k());
        if routing.rows() != n {
            return Err(EngineError::Invalid(format!(
                "{op}: {n} rows of x, a routing of {} rows",
                routing.rows()
            )));
        }
        if experts.windows(2).any(|w| w[0].id >= w[1].id) {
            return Err(EngineError::Invalid(format!(
                "{op}: expert ids must be ascending and distinct"
            )));
        }
        let inter = experts.first().map_or(0, |e| e.gate.rows());
        for e in experts {
            for (w, rows, cols) in [
                (e.gate, inter, hidden),
                (e.up, inter, hidden),
                (e.down, hidden, inter),
            ] {
                if w.rows() != rows || w.cols() != cols {
                    return Err(EngineError::ShapeMismatch {
                        tensor: w.name().to_string(),
                        expected: vec![rows, cols],
                        found: w.shape().to_vec(),
                    });
                }
            }
        }
        let entries = n * top_k;
        let count = experts.len();
        let ids: Vec<u32> = experts.iter().map(|e| e.id).collect();
        let (y, inv) = self.on_device(|| {
            let y = self.alloc_f32(entries * hidden)?;
            if entries == 0 || count == 0 {
                let absent = vec![ABSENT; entries];
                return Ok((y, self.dev.upload(&u32_bytes(&absent))?));
            }
            let inv = self.dev.alloc(entries * 4)?;
            // global expert id -> local index in this call (or ABSENT)
            let map_len = ids.last().map_or(0, |&m| m as usize + 1);
            let map = self.cached(&format!("moe-map:{ids:?}"), || {
                let mut m = vec![ABSENT; map_len];
                for (i, &id) in ids.iter().enumerate() {
                    m[id as usize] = i as u32;
                }
                Ok(u32_bytes(&m))
            })?;
            let gates: Vec<&Weight> = experts.iter().map(|e| e.gate).collect();
            let ups: Vec<&Weight> = experts.iter().map(|e| e.up).collect();
            let downs: Vec<&Weight> = experts.iter().map(|e| e.down).collect();
            let (gate, gdt) = self.stacked("gate", &gates)?;
            let (up, udt) = self.stacked("up", &ups)?;
            let (down, ddt) = self.stacked("down", &downs)?;
            // moe_sort
            let offsets = self.dev.alloc((count + 1) * 4)?;
            let order = self.dev.alloc(entries * 4)?;
            let l = launch::moe_sort(count)?;
            let u = |k: &str, f: &str, v: usize| u32_of(k, f, v).map(Arg::U32);
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&offsets),
                    Arg::Buf(&order),
                    Arg::Buf(&inv),
                    Arg::Buf(&rb.ids),
                    u(l.kernel, "entries", entries)?,
                    u(l.kernel, "experts", count)?,
                    Arg::Buf(&map),
                    u(l.kernel, "map_len", map_len)?,
                ],
            )?;
            // moe_gather
            let xs = self.alloc_f32(entries * hidden)?;
            let l = launch::moe_gather(entries)?;
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&xs),
                    Arg::Buf(xb),
                    Arg::Buf(&order),
                    u(l.kernel, "entries", entries)?,
                    u(l.kernel, "hidden", hidden)?,
                    u(l.kernel, "top_k", top_k)?,
                ],
            )?;
            // gate, up -> silu * up -> down
            let g = self.alloc_f32(entries * inter)?;
            let upv = self.alloc_f32(entries * inter)?;
            self.grouped_linear(&g, &xs, &gate, gdt, &offsets, count, inter, hidden, n)?;
            self.grouped_linear(&upv, &xs, &up, udt, &offsets, count, inter, hidden, n)?;
            let l = launch::silu_mul(entries * inter)?;
            if entries * inter > 0 {
                self.dev.launch(
                    &l,
                    &[
                        Arg::Buf(&g),
                        Arg::Buf(&g),
                        Arg::Buf(&upv),
                        u(l.kernel, "n", entries * inter)?,
                    ],
                )?;
            }
            self.grouped_linear(&y, &g, &down, ddt, &offsets, count, hidden, inter, n)?;
            Ok((y, inv))
        })?;
        let index: DeviceBuf = Arc::new(ExpertIndex {
            owner: self.id,
            inv,
        });
        Ok(ExpertRows {
            experts: ids,
            rows: self.tensor(entries, hidden, y),
            index: Some(index),
        })
    }

    pub(super) fn moe_combine_op(
        &self,
        residual: &DeviceTensor,
        routing: &DeviceRouting,
        parts: &[ExpertRows],
        shared: Option<&DeviceTensor>,
    ) -> Result<DeviceTensor> {
        let op = "moe_combine";
        let res = self.buf(op, residual)?;
        let rb = self.routing_bufs(op, routing)?;
        let (n, hidden, top_k) = (residual.rows(), residual.cols(), routing.top_k());
        let entries = n * top_k;
        if routing.rows() != n {
            return Err(EngineError::Invalid(format!(
                "{op}: a residual of {n} rows, a routing of {} rows",
                routing.rows()
            )));
        }
        let sh = match shared {
            Some(s) if s.rows() != n || s.cols() != hidden => {
                return Err(EngineError::ShapeMismatch {
                    tensor: "moe_combine shared".into(),
                    expected: vec![n, hidden],
                    found: vec![s.rows(), s.cols()],
                })
            }
            Some(s) => Some(self.buf(op, s)?),
            None => None,
        };
        let mut pb = Vec::with_capacity(parts.len());
        for p in parts {
            let idx = p
                .index
                .as_ref()
                .and_then(|i| i.downcast_ref::<ExpertIndex<D::Buf>>())
                .filter(|i| i.owner == self.id)
                .ok_or_else(|| self.wrong_device(op, p.rows.location()))?;
            if p.rows.cols() != hidden {
                return Err(EngineError::ShapeMismatch {
                    tensor: "moe_combine expert rows".into(),
                    expected: vec![p.rows.rows(), hidden],
                    found: vec![p.rows.rows(), p.rows.cols()],
                });
            }
            pb.push((self.buf(op, &p.rows)?, idx, p.rows.rows()));
        }
        if pb.is_empty() && entries > 0 {
            return Err(EngineError::Invalid(format!(
                "{op}: a routing of {entries} entries and no expert rows"
            )));
        }
        let out = self.on_device(|| {
            let out = self.alloc_f32(n * hidden)?;
            if n == 0 || hidden == 0 {
                return Ok(out);
            }
            let merged;
            let (y, inv) = match pb.as_slice() {
                [] => (res, res),
                [(y, idx, _)] => (*y, &idx.inv),
                many => {
                    let total: usize = many.iter().map(|p| p.2).sum();
                    let y = self.alloc_f32(total * hidden)?;
                    let inv = self.dev.alloc(entries * 4)?;
                    let l = launch::moe_index_merge(entries)?;
                    let mut at = 0;
                    for (i, (b, idx, rows)) in many.iter().enumerate() {
                        self.copy(&y, b, &Copy2d::rows(*rows, hidden, 0, at))?;
                        self.dev.launch(
                            &l,
                            &[
                                Arg::Buf(&inv),
                                Arg::Buf(&idx.inv),
                                Arg::U32(u32_of(l.kernel, "entries", entries)?),
                                Arg::U32(u32_of(l.kernel, "offset", at)?),
                                Arg::U32((i == 0) as u32),
                            ],
                        )?;
                        at += rows;
                    }
                    merged = (y, inv);
                    (&merged.0, &merged.1)
                }
            };
            let l = launch::moe_combine(n)?;
            self.dev.launch(
                &l,
                &[
                    Arg::Buf(&out),
                    Arg::Buf(y),
                    Arg::Buf(&rb.weights),
                    Arg::Buf(inv),
                    Arg::U32(u32_of(l.kernel, "tokens", n)?),
                    Arg::U32(u32_of(l.kernel, "hidden", hidden)?),
                    Arg::U32(u32_of(
                        l.kernel,
                        "top_k",
                        if pb.is_empty() { 0 } else { top_k },
                    )?),
                    Arg::Buf(res),
                    sh.map_or(Arg::Null, Arg::Buf),
                ],
            )?;
            Ok::<_, GpuError>(out)
        })?;
        Ok(self.tensor(n, hidden, out))
    }
}
