//! The engine's `Backend` trait on `GpuBackend<D>`: each op forwards to its implementation in
//! the file of its area (see `ops/mod.rs`).

use troupe_engine::backend::{
    AttentionParams, Backend, ExpertRows, ExpertWeights, HeadSlice, RopeSlot, RopeTable,
    RouterRule, Routing,
};
use troupe_engine::device_tensor::{
    BlockTableRef, DeviceCounters, DeviceRouting, KvLayout, KvStore, Location,
};
use troupe_engine::error::PassSite;
use troupe_engine::weights::Weight;
use troupe_engine::{DeviceTensor, Result, Tensor};

use super::GpuBackend;
use crate::device::Device;

impl<D: Device> Backend for GpuBackend<D> {
    fn name(&self) -> String {
        self.dev.name()
    }
    fn location(&self) -> Location {
        Location::Device(self.id)
    }
    fn counters(&self) -> DeviceCounters {
        self.dev.counters()
    }

    fn upload(&self, t: &Tensor) -> Result<DeviceTensor> {
        self.upload_op(t)
    }
    fn download(&self, t: &DeviceTensor) -> Result<Tensor> {
        self.download_op(t)
    }
    fn argmax(&self, logits: &DeviceTensor) -> Result<Vec<u32>> {
        self.argmax_op(logits)
    }
    fn check_finite(&self, x: &DeviceTensor, at: PassSite) -> Result<()> {
        self.check_finite_op(x, at)
    }

    fn embedding(&self, table: &Weight, ids: &[u32]) -> Result<DeviceTensor> {
        self.embedding_op(table, ids)
    }
    fn rms_norm(&self, x: &DeviceTensor, weight: &Weight, eps: f32) -> Result<DeviceTensor> {
        self.rms_norm_op(x, weight, eps)
    }
    fn linear(&self, x: &DeviceTensor, weight: &Weight) -> Result<DeviceTensor> {
        self.linear_op(x, weight)
    }
    fn per_head_linear(&self, x: &DeviceTensor, weights: &[Weight]) -> Result<DeviceTensor> {
        self.per_head_linear_op(x, weights)
    }
    fn silu_mul(&self, gate: &DeviceTensor, up: &DeviceTensor) -> Result<DeviceTensor> {
        self.silu_mul_op(gate, up)
    }
    fn add(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor> {
        self.add_op(a, b)
    }
    fn head_columns(&self, x: &DeviceTensor, slice: HeadSlice) -> Result<DeviceTensor> {
        self.head_columns_op(x, slice)
    }
    fn rope(
        &self,
        x: &DeviceTensor,
        slot: RopeSlot,
        first_position: usize,
        table: &RopeTable,
    ) -> Result<DeviceTensor> {
        self.rope_op(x, slot, first_position, table)
    }

    fn slice_rows(&self, x: &DeviceTensor, start: usize, end: usize) -> Result<DeviceTensor> {
        self.slice_rows_op(x, start, end)
    }
    fn concat_rows(&self, parts: &[DeviceTensor]) -> Result<DeviceTensor> {
        self.concat_rows_op(parts)
    }
    fn gather_rows(&self, x: &DeviceTensor, rows: &[u32]) -> Result<DeviceTensor> {
        self.gather_rows_op(x, rows)
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
        self.attention_op(q, q_rope, k, k_rope, v, p)
    }
    fn kv_store(&self, layout: KvLayout, capacity: usize) -> Result<KvStore> {
        self.kv_store_op(layout, capacity)
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
        self.kv_write_op(store, table, start, key, rope, value)
    }
    fn kv_read(
        &self,
        store: &KvStore,
        table: BlockTableRef<'_>,
        len: usize,
    ) -> Result<DeviceTensor> {
        self.kv_read_op(store, table, len)
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
        self.paged_attention_op(q, q_rope, store, table, len, p)
    }

    fn route(
        &self,
        logits: &DeviceTensor,
        rule: &RouterRule,
        bias: Option<&Weight>,
    ) -> Result<DeviceRouting> {
        self.route_op(logits, rule, bias)
    }
    fn routing_to_host(&self, r: &DeviceRouting) -> Result<Routing> {
        self.routing_to_host_op(r)
    }
    fn routing_to_device(&self, r: &Routing, top_k: usize) -> Result<DeviceRouting> {
        self.routing_to_device_op(r, top_k)
    }
    fn grouped_mlp(
        &self,
        x: &DeviceTensor,
        routing: &DeviceRouting,
        experts: &[ExpertWeights<'_>],
    ) -> Result<ExpertRows> {
        self.grouped_mlp_op(x, routing, experts)
    }
    fn moe_combine(
        &self,
        residual: &DeviceTensor,
        routing: &DeviceRouting,
        parts: &[ExpertRows],
        shared: Option<&DeviceTensor>,
    ) -> Result<DeviceTensor> {
        self.moe_combine_op(residual, routing, parts, shared)
    }
}
