//! 64-byte-aligned scratch in a `Vec<f32>`, for the kernels that pack their operands
//! (`panel_gemm`, `attention_rows`): 32-byte loads that straddle cache lines ran the 3 × 2
//! GEMM tile at 55–73 GFLOP/s on Zen 3 in a micro-benchmark, aligned ones at 86–97.

/// The 64-byte-aligned start of `buf`, `len` values long (`buf` grows as needed).
pub(super) fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len + 16, 0.0);
    let skip = buf.as_ptr().align_offset(64);
    &mut buf[skip..skip + len]
}
