//! `CpuBackend`: the `Backend` implemented by the CPU kernels of this module, over host handles
//! (`DeviceTensor::from_host`, zero-copy). A device handle is `EngineError::WrongDevice`. Nothing
//! crosses a bus, so `counters()` reports 0 bytes each way and the number of calls per op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::backend::{
    AttentionParams, Backend, ExpertRows, ExpertWeights, HeadSlice, RopeSlot, RouterRule, Routing,
};
use crate::device_tensor::{
    BlockTableRef, DeviceCounters, DeviceRouting, DeviceTensor, KvLayout, KvStore, Location,
};
use crate::error::{EngineError, PassSite, Result};
use crate::kernels::kv_pages::HostKvPages;
use crate::kernels::{
    activation, attention, columns, linear, moe, norm, paged_attention, rope, router,
};
use crate::tensor::Tensor;
use crate::tokenizer::check_token_ids;
use crate::weights::Weight;

/// The ops `counters()` counts, in the order of `OP_NAMES`.
#[derive(Clone, Copy)]
enum Op {
    Upload,
    Download,
    Argmax,
    CheckFinite,
    Embedding,
    RmsNorm,
    Linear,
    PerHeadLinear,
    SiluMul,
    Add,
    HeadColumns,
    Rope,
    SliceRows,
    ConcatRows,
    GatherRows,
    Attention,
    KvWrite,
    KvRead,
    PagedAttention,
    Route,
    GroupedMlp,
    MoeCombine,
}

const OP_NAMES: [&str; 22] = [
    "upload",
    "download",
    "argmax",
    "check_finite",
    "embedding",
    "rms_norm",
    "linear",
    "per_head_linear",
    "silu_mul",
    "add",
    "head_columns",
    "rope",
    "slice_rows",
    "concat_rows",
    "gather_rows",
    "attention",
    "kv_write",
    "kv_read",
    "paged_attention",
    "route",
    "grouped_mlp",
    "moe_combine",
];

/// The CPU backend (AVX2+FMA when the processor has it, a portable path otherwise; both give the
/// same bits). Clones share the op counters.
#[derive(Clone, Debug, Default)]
pub struct CpuBackend {
    calls: Arc<[AtomicU64; 22]>,
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend::default()
    }
    fn count(&self, op: Op) {
        self.calls[op as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The host data of a handle, or `WrongDevice` naming `op`.
pub(crate) fn host<'t>(t: &'t DeviceTensor, op: &str) -> Result<&'t Tensor> {
    t.host().ok_or_else(|| wrong_device(op, t.location()))
}

fn wrong_device(op: &str, found: Location) -> EngineError {
    EngineError::WrongDevice {
        op: op.to_string(),
        backend: "cpu".into(),
        found: format!("{found:?}"),
    }
}

fn host_routing<'r>(r: &'r DeviceRouting, op: &str) -> Result<&'r Routing> {
    r.host().ok_or_else(|| wrong_device(op, r.location()))
}

fn host_pages<'s>(s: &'s KvStore, op: &str) -> Result<&'s HostKvPages> {
    match s.owner {
        Location::Host => s
            .buf
            .downcast_ref::<HostKvPages>()
            .ok_or_else(|| EngineError::internal(format!("{op}: a host KV store of another kind"))),
        other => Err(wrong_device(op, other)),
    }
}

fn wrap(t: Tensor) -> DeviceTensor {
    DeviceTensor::from_host(t)
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }
    fn location(&self) -> Location {
        Location::Host
    }
    fn counters(&self) -> DeviceCounters {
        DeviceCounters {
            h2d_bytes: 0,
            d2h_bytes: 0,
            launches: OP_NAMES
                .iter()
                .zip(self.calls.iter())
                .map(|(n, c)| (n.to_string(), c.load(Ordering::Relaxed)))
                .filter(|(_, c)| *c > 0)
                .collect(),
        }
    }
    fn upload(&self, t: &Tensor) -> Result<DeviceTensor> {
        self.count(Op::Upload);
        Ok(wrap(t.clone()))
    }
    fn download(&self, t: &DeviceTensor) -> Result<Tensor> {
        self.count(Op::Download);
        host(t, "download").cloned()
    }
    fn argmax(&self, logits: &DeviceTensor) -> Result<Vec<u32>> {
        self.count(Op::Argmax);
        let t = host(logits, "argmax")?;
        Ok((0..t.rows())
            .map(|r| crate::sampling::argmax(t.row(r)))
            .collect())
    }
    fn check_finite(&self, x: &DeviceTensor, at: PassSite) -> Result<()> {
        self.count(Op::CheckFinite);
        columns::ensure_finite(host(x, "check_finite")?, at)
    }
    fn embedding(&self, table: &Weight, ids: &[u32]) -> Result<DeviceTensor> {
        self.count(Op::Embedding);
        let (vocab, dim) = (table.rows(), table.cols());
        check_token_ids(ids, vocab, 0)?;
        let mut out = Vec::with_capacity(ids.len() * dim);
        for &id in ids {
            out.extend(table.row_f32(id as usize));
        }
        Tensor::matrix(ids.len(), dim, out).map(wrap)
    }
    fn rms_norm(&self, x: &DeviceTensor, weight: &Weight, eps: f32) -> Result<DeviceTensor> {
        self.count(Op::RmsNorm);
        norm::rms_norm(host(x, "rms_norm")?, weight, eps).map(wrap)
    }
    fn linear(&self, x: &DeviceTensor, weight: &Weight) -> Result<DeviceTensor> {
        self.count(Op::Linear);
        linear::linear(host(x, "linear")?, weight).map(wrap)
    }
    fn linears(&self, x: &DeviceTensor, weights: &[&Weight]) -> Result<Vec<DeviceTensor>> {
        for _ in weights {
            self.count(Op::Linear);
        }
        let outs = linear::linears(host(x, "linears")?, weights)?;
        Ok(outs.into_iter().map(wrap).collect())
    }
    fn per_head_linear(&self, x: &DeviceTensor, weights: &[Weight]) -> Result<DeviceTensor> {
        self.count(Op::PerHeadLinear);
        columns::per_head_linear(host(x, "per_head_linear")?, weights).map(wrap)
    }
    fn silu_mul(&self, gate: &DeviceTensor, up: &DeviceTensor) -> Result<DeviceTensor> {
        self.count(Op::SiluMul);
        activation::silu_mul(host(gate, "silu_mul")?, host(up, "silu_mul")?).map(wrap)
    }
    fn add(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        self.count(Op::Add);
        columns::add(host(a, "add")?, host(b, "add")?).map(wrap)
    }
    fn head_columns(&self, x: &DeviceTensor, slice: HeadSlice) -> Result<DeviceTensor> {
        self.count(Op::HeadColumns);
        columns::head_columns(host(x, "head_columns")?, slice).map(wrap)
    }
    fn rope(
        &self,
        x: &DeviceTensor,
        slot: RopeSlot,
        first_position: usize,
        table: &rope::RopeTable,
    ) -> Result<DeviceTensor> {
        self.count(Op::Rope);
        let mut out = host(x, "rope")?.clone();
        rope::apply_rope(&mut out, slot, first_position, table)?;
        Ok(wrap(out))
    }
    fn slice_rows(&self, x: &DeviceTensor, start: usize, end: usize) -> Result<DeviceTensor> {
        self.count(Op::SliceRows);
        let t = host(x, "slice_rows")?;
        if start > end || end > t.rows() {
            return Err(EngineError::kernel(
                "slice_rows",
                format!("rows {start}..{end} of {}", t.rows()),
            ));
        }
        Ok(wrap(t.slice_rows(start, end)))
    }
    fn concat_rows(&self, parts: &[DeviceTensor]) -> Result<DeviceTensor> {
        self.count(Op::ConcatRows);
        let hosts = parts
            .iter()
            .map(|p| host(p, "concat_rows").cloned())
            .collect::<Result<Vec<_>>>()?;
        Tensor::concat_rows(&hosts).map(wrap)
    }
    fn gather_rows(&self, x: &DeviceTensor, rows: &[u32]) -> Result<DeviceTensor> {
        self.count(Op::GatherRows);
        let t = host(x, "gather_rows")?;
        if let Some(&r) = rows.iter().find(|&&r| r as usize >= t.rows()) {
            return Err(EngineError::kernel(
                "gather_rows",
                format!("row {r} of {}", t.rows()),
            ));
        }
        let idx: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
        Ok(wrap(t.gather_rows(&idx)))
    }
    fn attention(
        &self,
        q: &DeviceTensor,
        q_rope: Option<&DeviceTensor>,
        k: &DeviceTensor,
        k_rope: Option<&DeviceTensor>,
        v: &DeviceTensor,
        p: &AttentionParams,
    ) -> Result<DeviceTensor> {
        self.count(Op::Attention);
        let op = "attention";
        let q_rope = q_rope.map(|t| host(t, op)).transpose()?;
        let k_rope = k_rope.map(|t| host(t, op)).transpose()?;
        attention::attention(host(q, op)?, q_rope, host(k, op)?, k_rope, host(v, op)?, p).map(wrap)
    }
    fn kv_store(&self, layout: KvLayout, capacity: usize) -> Result<KvStore> {
        Ok(KvStore {
            layout,
            capacity,
            owner: Location::Host,
            buf: Arc::new(HostKvPages::new(layout, capacity)?),
        })
    }
    fn kv_write(
        &self,
        store: &KvStore,
        table: BlockTableRef<'_>,
        start: usize,
        key: &DeviceTensor,
        rope: Option<&DeviceTensor>,
        value: Option<&DeviceTensor>,
    ) -> Result<()> {
        self.count(Op::KvWrite);
        let op = "kv_write";
        let rope = rope.map(|t| host(t, op)).transpose()?;
        let value = value.map(|t| host(t, op)).transpose()?;
        host_pages(store, op)?.write(table, start, host(key, op)?, rope, value)
    }
    fn kv_read(
        &self,
        store: &KvStore,
        table: BlockTableRef<'_>,
        len: usize,
    ) -> Result<DeviceTensor> {
        self.count(Op::KvRead);
        host_pages(store, "kv_read")?.read(table, len).map(wrap)
    }
    fn paged_attention(
        &self,
        q: &DeviceTensor,
        q_rope: Option<&DeviceTensor>,
        store: &KvStore,
        table: BlockTableRef<'_>,
        len: usize,
        p: &AttentionParams,
    ) -> Result<DeviceTensor> {
        self.count(Op::PagedAttention);
        let op = "paged_attention";
        let pages = host_pages(store, op)?;
        let q_rope = q_rope.map(|t| host(t, op)).transpose()?;
        let guards = pages.lock_pages(op, table, len)?;
        let views: Vec<&[f32]> = guards.iter().map(|g| &g[..]).collect();
        paged_attention::paged_attention(host(q, op)?, q_rope, &views, &pages.layout(), len, p)
            .map(wrap)
    }
    fn route(
        &self,
        logits: &DeviceTensor,
        rule: &RouterRule,
        bias: Option<&Weight>,
    ) -> Result<DeviceRouting> {
        self.count(Op::Route);
        let bias = bias.map(|b| b.to_f32_vec());
        let r = router::route(host(logits, "route")?, rule, bias.as_deref())?;
        Ok(DeviceRouting::from_host(r, rule.top_k))
    }
    fn routing_to_host(&self, r: &DeviceRouting) -> Result<Routing> {
        host_routing(r, "routing_to_host").cloned()
    }
    fn routing_to_device(&self, r: &Routing, top_k: usize) -> Result<DeviceRouting> {
        Ok(DeviceRouting::from_host(r.clone(), top_k))
    }
    fn grouped_mlp(
        &self,
        x: &DeviceTensor,
        routing: &DeviceRouting,
        experts: &[ExpertWeights<'_>],
    ) -> Result<ExpertRows> {
        self.count(Op::GroupedMlp);
        let op = "grouped_mlp";
        let (experts, rows) = moe::grouped_mlp(host(x, op)?, host_routing(routing, op)?, experts)?;
        Ok(ExpertRows {
            experts,
            rows: wrap(rows),
            index: None,
        })
    }
    fn moe_combine(
        &self,
        residual: &DeviceTensor,
        routing: &DeviceRouting,
        parts: &[ExpertRows],
        shared: Option<&DeviceTensor>,
    ) -> Result<DeviceTensor> {
        self.count(Op::MoeCombine);
        let op = "moe_combine";
        let parts = parts
            .iter()
            .map(|p| {
                Ok(moe::ExpertPart {
                    experts: &p.experts,
                    rows: host(&p.rows, op)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let shared = shared.map(|s| host(s, op)).transpose()?;
        moe::moe_combine(
            host(residual, op)?,
            host_routing(routing, op)?,
            &parts,
            shared,
        )
        .map(wrap)
    }
}
