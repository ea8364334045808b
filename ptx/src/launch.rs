//! Launch configurations: for each op, which kernel runs and with what grid, block and dynamic
//! shared memory, computed from the shapes. This is the single source of truth shared by the CUDA
//! backend and the interpreter backend (and the tests), and it mirrors the "Launch:" line in the
//! header comment of each `kernels/*.ptx` file.

use troupe_engine::dtype::DType;

use crate::error::{GpuError, GpuResult};

/// One kernel launch: entry name, grid, block and dynamic shared memory in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub kernel: &'static str,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

/// The dynamic shared memory every kernel here stays within (no opt-in attribute needed).
pub const MAX_DYNAMIC_SHARED: usize = 48 * 1024;
/// Grid y/z limit of every CUDA device.
const MAX_GRID_YZ: usize = 65_535;

/// `v` as the u32 a kernel parameter or launch dimension takes, or `GpuError::Limit` naming the
/// kernel and field.
pub(crate) fn u32_of(kernel: &str, field: &str, v: usize) -> GpuResult<u32> {
    u32::try_from(v).map_err(|_| GpuError::limit(kernel, field, v, "< 2^32"))
}

fn yz(kernel: &str, field: &str, v: usize) -> GpuResult<u32> {
    if v > MAX_GRID_YZ {
        return Err(GpuError::limit(kernel, field, v, "<= 65535 (grid y/z)"));
    }
    u32_of(kernel, field, v)
}

fn l1d(kernel: &'static str, grid_x: usize, block: u32, shared: usize) -> GpuResult<Launch> {
    Ok(Launch {
        kernel,
        grid: (u32_of(kernel, "grid.x", grid_x.max(1))?, 1, 1),
        block: (block, 1, 1),
        shared_bytes: u32_of(kernel, "shared", shared)?,
    })
}

/// `embedding_f32` / `embedding_bf16`: one CTA per id. (f16 tables are upcast to f32 on upload.)
pub fn embedding(table: DType, rows: usize) -> GpuResult<Launch> {
    let kernel = match table {
        DType::BF16 => "embedding_bf16",
        _ => "embedding_f32",
    };
    l1d(kernel, rows, 256, 0)
}

/// `rms_norm_f32`: one CTA of 256 threads per row.
pub fn rms_norm(rows: usize) -> GpuResult<Launch> {
    l1d("rms_norm_f32", rows, 256, 0)
}

/// Grid (rows, heads): one CTA of `block` threads per (row, head), no shared memory.
fn per_row_head(kernel: &'static str, rows: usize, heads: usize, block: u32) -> GpuResult<Launch> {
    Ok(Launch {
        kernel,
        grid: (
            u32_of(kernel, "rows", rows.max(1))?,
            yz(kernel, "heads", heads.max(1))?,
            1,
        ),
        block: (block, 1, 1),
        shared_bytes: 0,
    })
}

/// `rope_f32`: one CTA of 64 threads per (row, head).
pub fn rope(rows: usize, heads: usize) -> GpuResult<Launch> {
    per_row_head("rope_f32", rows, heads, 64)
}

/// `silu_mul_f32`: one thread per element.
pub fn silu_mul(n: usize) -> GpuResult<Launch> {
    l1d("silu_mul_f32", n.div_ceil(256), 256, 0)
}

/// `route_topk`: 4 tokens (warps) per CTA; per warp `8 * experts + 384` bytes of shared memory.
pub fn route(n: usize, experts: usize, top_k: usize, n_group: usize) -> GpuResult<Launch> {
    let k = "route_topk";
    if top_k == 0 || top_k > 32 || top_k > experts {
        return Err(GpuError::limit(k, "top_k", top_k, "1..=min(32, experts)"));
    }
    if n_group == 0 || n_group > 32 || experts % n_group != 0 {
        return Err(GpuError::limit(
            k,
            "n_group",
            n_group,
            "1..=32, dividing experts",
        ));
    }
    let shared = 4 * (8 * experts + 384);
    if shared > MAX_DYNAMIC_SHARED {
        return Err(GpuError::limit(
            k,
            "experts",
            experts,
            "<= 1488 (48 KiB shared)",
        ));
    }
    l1d(k, n.div_ceil(4), 128, shared)
}

/// `moe_sort`: a single CTA with one thread per expert (rounded up to a warp).
pub fn moe_sort(experts: usize) -> GpuResult<Launch> {
    let k = "moe_sort";
    if experts == 0 || experts > 1024 {
        return Err(GpuError::limit(k, "experts", experts, "1..=1024"));
    }
    let block = experts.div_ceil(32).max(1) * 32;
    l1d(k, 1, block as u32, 0)
}

/// `moe_gather`: one CTA per routing entry.
pub fn moe_gather(entries: usize) -> GpuResult<Launch> {
    l1d("moe_gather", entries, 256, 0)
}

/// `moe_combine`: one CTA per token.
pub fn moe_combine(tokens: usize) -> GpuResult<Launch> {
    l1d("moe_combine", tokens, 256, 0)
}

/// `moe_index_merge`: one thread per routing entry.
pub fn moe_index_merge(entries: usize) -> GpuResult<Launch> {
    l1d("moe_index_merge", entries.div_ceil(256), 256, 0)
}

/// `copy_rows_b32`: one CTA of 128 threads per (row, head).
pub fn copy_rows(rows: usize, heads: usize) -> GpuResult<Launch> {
    per_row_head("copy_rows_b32", rows, heads, 128)
}

/// `add_f32`: one thread per element.
pub fn add(n: usize) -> GpuResult<Launch> {
    l1d("add_f32", n.div_ceil(256), 256, 0)
}

/// `check_finite_f32`: one thread per element.
pub fn check_finite(n: usize) -> GpuResult<Launch> {
    l1d("check_finite_f32", n.div_ceil(256), 256, 0)
}

/// `flag_copy_b32`: one thread per word.
pub fn flag_copy(n: usize) -> GpuResult<Launch> {
    l1d("flag_copy_b32", n.div_ceil(256), 256, 0)
}

fn linear_kernel(w: DType, grouped: bool) -> &'static str {
    match (w, grouped) {
        // int8 weights are uploaded as f32 copies (see `ops::Gpu::weight`).
        (DType::F32 | DType::I8, false) => "linear_f32w",
        (DType::BF16, false) => "linear_bf16w",
        (DType::F16, false) => "linear_f16w",
        (DType::F32 | DType::I8, true) => "grouped_linear_f32w",
        (DType::BF16, true) => "grouped_linear_bf16w",
        (DType::F16, true) => "grouped_linear_f16w",
        (DType::F8E4M3, false) => "linear_fp8w",
        (DType::F8E4M3, true) => "grouped_linear_fp8w",
    }
}

/// `linear_*w`: 8 output columns (one per warp) x 16 rows per CTA.
pub fn linear(w: DType, m: usize, n: usize) -> GpuResult<Launch> {
    linear_grid(linear_kernel(w, false), m, n)
}

fn linear_grid(k: &'static str, m: usize, n: usize) -> GpuResult<Launch> {
    Ok(Launch {
        kernel: k,
        grid: (
            u32_of(k, "n", n.div_ceil(8).max(1))?,
            yz(k, "m", m.div_ceil(16).max(1))?,
            1,
        ),
        block: (256, 1, 1),
        shared_bytes: 0,
    })
}

/// `grouped_linear_*w`: like `linear`, with grid y = expert and grid z = 16-row chunk of the
/// longest segment.
pub fn grouped_linear(w: DType, n: usize, experts: usize, max_rows: usize) -> GpuResult<Launch> {
    grouped_grid(linear_kernel(w, true), n, experts, max_rows)
}

fn grouped_grid(k: &'static str, n: usize, experts: usize, max_rows: usize) -> GpuResult<Launch> {
    Ok(Launch {
        kernel: k,
        grid: (
            u32_of(k, "n", n.div_ceil(8).max(1))?,
            yz(k, "experts", experts.max(1))?,
            yz(k, "max_rows", max_rows.div_ceil(16).max(1))?,
        ),
        block: (256, 1, 1),
        shared_bytes: 0,
    })
}

/// `gemm_bf16_tc`: 64 x 64 output tiles, 4 warps; needs `k % 8 == 0`.
pub fn gemm_bf16_tc(m: usize, n: usize, k_dim: usize) -> GpuResult<Launch> {
    let k = "gemm_bf16_tc";
    if k_dim % 8 != 0 {
        return Err(GpuError::limit(k, "k", k_dim, "a multiple of 8"));
    }
    Ok(Launch {
        kernel: k,
        grid: (
            u32_of(k, "n", n.div_ceil(64).max(1))?,
            yz(k, "m", m.div_ceil(64).max(1))?,
            1,
        ),
        block: (128, 1, 1),
        shared_bytes: 0,
    })
}

/// `f32_to_bf16`: one thread per element.
pub fn f32_to_bf16(n: usize) -> GpuResult<Launch> {
    l1d("f32_to_bf16", n.div_ceil(256), 256, 0)
}

/// `attention_f32`: one CTA per (query row, group of 4 heads); per warp `(d1 + d2 + v_dim + 64)`
/// words of shared memory.
pub fn attention(tq: usize, heads: usize, d1: usize, d2: usize, v_dim: usize) -> GpuResult<Launch> {
    let k = "attention_f32";
    let shared = 4 * (d1 + d2 + v_dim + 64) * 4;
    if shared > MAX_DYNAMIC_SHARED {
        return Err(GpuError::limit(
            k,
            "qk_dim + v_dim",
            d1 + d2 + v_dim,
            "<= 3008",
        ));
    }
    Ok(Launch {
        kernel: k,
        grid: (
            u32_of(k, "tq", tq.max(1))?,
            yz(k, "heads", heads.div_ceil(4).max(1))?,
            1,
        ),
        block: (128, 1, 1),
        shared_bytes: shared as u32,
    })
}

/// `argmax_f32`: one CTA per row.
pub fn argmax(rows: usize) -> GpuResult<Launch> {
    l1d("argmax_f32", rows, 256, 0)
}

/// `fp8_quant_act`: one CTA per (row, 128-column block).
pub fn fp8_quant_act(m: usize, k_dim: usize) -> GpuResult<Launch> {
    let k = "fp8_quant_act";
    Ok(Launch {
        kernel: k,
        grid: (
            u32_of(k, "m", m.max(1))?,
            yz(k, "k / 128", k_dim.div_ceil(128).max(1))?,
            1,
        ),
        block: (128, 1, 1),
        shared_bytes: 0,
    })
}

/// `fp8_gemm_blockscaled` (sm_89+): 64 x 32 output tiles, 4 warps; needs `k % 128 == 0`.
pub fn fp8_gemm(m: usize, n: usize, k_dim: usize) -> GpuResult<Launch> {
    let k = "fp8_gemm_blockscaled";
    if k_dim % 128 != 0 {
        return Err(GpuError::limit(k, "k", k_dim, "a multiple of 128"));
    }
    Ok(Launch {
        kernel: k,
        grid: (
            u32_of(k, "n", n.div_ceil(32).max(1))?,
            yz(k, "m", m.div_ceil(64).max(1))?,
            1,
        ),
        block: (128, 1, 1),
        shared_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_cover_ragged_shapes() {
        let l = linear(DType::BF16, 17, 13).unwrap();
        assert_eq!(
            (l.kernel, l.grid, l.block),
            ("linear_bf16w", (2, 2, 1), (256, 1, 1))
        );
        let g = gemm_bf16_tc(65, 1, 24).unwrap();
        assert_eq!(g.grid, (1, 2, 1));
        assert!(gemm_bf16_tc(8, 8, 12).is_err());
        let a = attention(3, 5, 512, 64, 512).unwrap();
        assert_eq!((a.grid, a.shared_bytes), ((3, 2, 1), 4 * 1152 * 4));
        assert_eq!(copy_rows(3, 5).unwrap().grid, (3, 5, 1));
        assert_eq!(moe_sort(8).unwrap().block, (32, 1, 1));
        assert_eq!(moe_sort(257).unwrap().block, (288, 1, 1));
        assert!(route(4, 256, 8, 8).is_ok());
        assert!(route(4, 256, 33, 8).is_err());
    }
}
