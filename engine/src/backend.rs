//! The `Backend` trait: the ops an executor may call, over handles the backend owns
//! (`device_tensor`). Executors never call a CPU kernel directly and never touch activation data
//! themselves: every step of a forward pass — residual adds, the MoE dispatch and combine, the
//! paged attention over the KV cache, the non-finite check, greedy sampling — is an op here, so
//! the same executor runs on the CPU kernels, on a CUDA stream (`troupe-ptx`) or on the PTX
//! interpreter, and on a device the activations stay on the device.
//!
//! Contract for every implementation:
//! - activations are f32 (`DeviceTensor`); weights may be f32/bf16/f16 and are upcast per element;
//! - a handle made by another backend (or host data given to a device backend) is a typed
//!   `EngineError::WrongDevice`, never a silent copy: moving data is `upload`/`download`;
//! - **batch invariance**: row `r` of an output depends only on row `r` of the inputs (and, for
//!   attention, on that sequence's keys), with a reduction order that does not depend on the number
//!   of rows or on the thread count;
//! - errors, never panics, on shape mismatches.

use crate::device_tensor::{
    BlockTableRef, DeviceCounters, DeviceRouting, DeviceTensor, KvLayout, KvStore, Location,
};
use crate::error::{PassSite, Result};
pub use crate::params::{RopeTable, RouterRule};
use crate::tensor::Tensor;
use crate::weights::Weight;

/// One attention call over a single sequence. Query head `h` is `[q[h·d1 ..+d1] | q_rope[h·d2
/// ..+d2]]`; the key of kv head `g` at position `j` is `[k[j][g·d1 ..+d1] | k_rope[j][..d2]]` (the
/// rope part is one vector shared by all kv heads, as MLA's); its value is `v[j][g·v_dim ..]`.
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    pub heads: usize,
    pub kv_heads: usize,
    /// Per-head width of the first query/key part.
    pub d1: usize,
    /// Width of the rope part (0: none).
    pub d2: usize,
    /// Per-head width of v (and of the output).
    pub v_dim: usize,
    pub scale: f32,
    /// Absolute position of query row 0; query row `i` sits at `q_start + i` and key row `j` at `j`.
    pub q_start: usize,
    /// Each query sees keys at positions `p` with `q_pos - window < p <= q_pos`, or all `p <= q_pos`.
    pub sliding_window: Option<usize>,
}

/// The layout of the rotated part inside each head of a `[rows, heads * head_stride]` tensor.
#[derive(Clone, Copy, Debug)]
pub struct RopeSlot {
    pub heads: usize,
    pub head_stride: usize,
    /// Offset of the rotated part inside a head.
    pub offset: usize,
}

/// Columns `[h·stride + offset, h·stride + offset + width)` of each head `h < heads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadSlice {
    pub heads: usize,
    pub stride: usize,
    pub offset: usize,
    pub width: usize,
}

/// The experts a router chose for each row: `ids[r]` ascending, `weights[r]` aligned with them.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    pub ids: Vec<Vec<u32>>,
    pub weights: Vec<Vec<f32>>,
}

/// One routed expert's SwiGLU weights.
#[derive(Clone, Copy, Debug)]
pub struct ExpertWeights<'a> {
    pub id: u32,
    pub gate: &'a Weight,
    pub up: &'a Weight,
    pub down: &'a Weight,
}

/// The outputs of some experts for the rows routed to them: `experts` ascending, and `rows` holds
/// one row per (expert, routed row) entry, ordered by expert id then row index — the order of
/// `DispatchPlan::rows`. A device backend may add its own index data in `index`.
#[derive(Clone, Debug)]
pub struct ExpertRows {
    pub experts: Vec<u32>,
    pub rows: DeviceTensor,
    pub index: Option<crate::device_tensor::DeviceBuf>,
}

/// The device-side operations of a forward pass.
pub trait Backend: Send + Sync {
    /// A short name for errors and traces (`cpu`, `cuda:0`, `ptx-interp`).
    fn name(&self) -> String;
    /// Where this backend's handles live (`Location::Host` for host backends).
    fn location(&self) -> Location;
    /// Bytes moved and kernels launched so far.
    fn counters(&self) -> DeviceCounters;

    // ---- transfers (the only ops that move activation data between host and device) ----
    /// A host tensor onto this backend (h2d; zero-copy on host backends).
    fn upload(&self, t: &Tensor) -> Result<DeviceTensor>;
    /// A tensor of this backend back to the host (d2h; zero-copy on host backends).
    fn download(&self, t: &DeviceTensor) -> Result<Tensor>;
    /// Greedy sampling: per row, the lowest index of the maximum (d2h: 4 bytes per row). Fails
    /// with `NonFinite` when a `check_finite` of this pass found a NaN or infinity.
    fn argmax(&self, logits: &DeviceTensor) -> Result<Vec<u32>>;
    /// Fails with `EngineError::NonFinite { layer: at, .. }` when `x` holds a NaN or infinity.
    /// A device backend may defer the report to its next `download`/`argmax`/`routing_to_host`
    /// (still naming the first site that failed), so that the check moves no bytes.
    fn check_finite(&self, x: &DeviceTensor, at: PassSite) -> Result<()>;

    // ---- row-wise math ----
    /// Rows of `table` (`[vocab, hidden]`) for each id → `[ids.len(), hidden]` (ids: h2d).
    fn embedding(&self, table: &Weight, ids: &[u32]) -> Result<DeviceTensor>;
    /// `x / rms(x) * weight` per row, rms over the last dim, in f32.
    fn rms_norm(&self, x: &DeviceTensor, weight: &Weight, eps: f32) -> Result<DeviceTensor>;
    /// `x @ weight^T`: `x` `[n, in]`, `weight` `[out, in]` → `[n, out]`.
    fn linear(&self, x: &DeviceTensor, weight: &Weight) -> Result<DeviceTensor>;
    /// `x @ w^T` for every `w` of `weights`, in order: the projections that read one input
    /// (MLA's query and latent down-projections, an MLP's gate and up, a router beside the
    /// shared experts' gate and up), in one call where a backend can run them together (the
    /// CPU backend: one parallel region, so decode pays for fewer region starts and ends).
    /// The same bits as one `linear` each, which is what this default does.
    fn linears(&self, x: &DeviceTensor, weights: &[&Weight]) -> Result<Vec<DeviceTensor>> {
        weights.iter().map(|w| self.linear(x, w)).collect()
    }
    /// Per head `h`: `x[:, h·in ..+in] @ weights[h]^T` → `[n, heads·out]` (MLA's absorbed
    /// `W_uk`/`W_uv`); every `weights[h]` is `[out, in]`.
    fn per_head_linear(&self, x: &DeviceTensor, weights: &[Weight]) -> Result<DeviceTensor>;
    /// `silu(gate) * up`, element-wise.
    fn silu_mul(&self, gate: &DeviceTensor, up: &DeviceTensor) -> Result<DeviceTensor>;
    /// `a + b`, element-wise (the residual adds).
    fn add(&self, a: &DeviceTensor, b: &DeviceTensor) -> Result<DeviceTensor>;
    /// The columns `slice` names, head after head → `[n, heads·width]`.
    fn head_columns(&self, x: &DeviceTensor, slice: HeadSlice) -> Result<DeviceTensor>;
    /// A copy of `x` with the rope part of every head rotated; row `i` sits at position
    /// `first_position + i`.
    fn rope(
        &self,
        x: &DeviceTensor,
        slot: RopeSlot,
        first_position: usize,
        table: &RopeTable,
    ) -> Result<DeviceTensor>;

    // ---- rows of a batch ----
    /// Rows `[start, end)`.
    fn slice_rows(&self, x: &DeviceTensor, start: usize, end: usize) -> Result<DeviceTensor>;
    /// Rows of all parts, in order (equal widths).
    fn concat_rows(&self, parts: &[DeviceTensor]) -> Result<DeviceTensor>;
    /// Rows `rows[i]` of `x`, in that order (the indices cross h2d on a device).
    fn gather_rows(&self, x: &DeviceTensor, rows: &[u32]) -> Result<DeviceTensor>;

    // ---- attention ----
    /// Causal attention of one sequence over keys given as tensors (MLA's naive prefill):
    /// `q` `[tq, heads·d1]`, `q_rope` `[tq, heads·d2]`, `k` `[tk, kv_heads·d1]`, `k_rope`
    /// `[tk, d2]`, `v` `[tk, kv_heads·v_dim]` → `[tq, heads·v_dim]`. Softmax in f32.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &DeviceTensor,
        q_rope: Option<&DeviceTensor>,
        k: &DeviceTensor,
        k_rope: Option<&DeviceTensor>,
        v: &DeviceTensor,
        p: &AttentionParams,
    ) -> Result<DeviceTensor>;
    /// Storage for `capacity` pages of one layer's cache.
    fn kv_store(&self, layout: KvLayout, capacity: usize) -> Result<KvStore>;
    /// Writes the cache rows of positions `start ..start + t` of the sequence owning `table`:
    /// row `i` is `[key[i] | rope[i] | value[i]]` (absent parts have width 0 in the layout).
    /// The pages covering those positions must be in `table`.
    fn kv_write(
        &self,
        store: &KvStore,
        table: BlockTableRef<'_>,
        start: usize,
        key: &DeviceTensor,
        rope: Option<&DeviceTensor>,
        value: Option<&DeviceTensor>,
    ) -> Result<()>;
    /// Positions `0..len` of a sequence's cache as one `[len, row_width]` tensor (a copy; for
    /// the naive MLA prefill, which expands every cached latent anyway).
    fn kv_read(
        &self,
        store: &KvStore,
        table: BlockTableRef<'_>,
        len: usize,
    ) -> Result<DeviceTensor>;
    /// Causal attention of one sequence reading its keys and values in place from its pages:
    /// keys `[key | rope]` of the first `len` positions, values the value columns (or the key
    /// columns when `value_width` is 0). `q` `[tq, heads·d1]`, `q_rope` `[tq, heads·d2]`.
    fn paged_attention(
        &self,
        q: &DeviceTensor,
        q_rope: Option<&DeviceTensor>,
        store: &KvStore,
        table: BlockTableRef<'_>,
        len: usize,
        p: &AttentionParams,
    ) -> Result<DeviceTensor>;

    // ---- mixture of experts ----
    /// Applies a routing rule to raw router logits `[n, n_experts]`; `bias` is the V3
    /// `e_score_correction_bias` (`[n_experts]`).
    fn route(
        &self,
        logits: &DeviceTensor,
        rule: &RouterRule,
        bias: Option<&Weight>,
    ) -> Result<DeviceRouting>;
    /// The routing on the host (d2h: 8 bytes per slot).
    fn routing_to_host(&self, r: &DeviceRouting) -> Result<Routing>;
    /// A host routing onto this backend (h2d: 8 bytes per slot).
    fn routing_to_device(&self, r: &Routing, top_k: usize) -> Result<DeviceRouting>;
    /// The grouped expert MLP: for every row of `x` and every slot of its routing whose expert is
    /// one of `experts` (ascending ids), `down(silu(gate(x)) * up(x))` of that expert — all
    /// experts in one call, rows grouped per expert (see `ExpertRows`).
    fn grouped_mlp(
        &self,
        x: &DeviceTensor,
        routing: &DeviceRouting,
        experts: &[ExpertWeights<'_>],
    ) -> Result<ExpertRows>;
    /// `residual + (Σ_slots w·y + shared)` per row, the slots summed in the routing's ascending
    /// expert-id order starting from 0.0 whatever order `parts` come in; `parts` together cover
    /// every expert the routing names.
    fn moe_combine(
        &self,
        residual: &DeviceTensor,
        routing: &DeviceRouting,
        parts: &[ExpertRows],
        shared: Option<&DeviceTensor>,
    ) -> Result<DeviceTensor>;
}
