//! 64-byte-aligned f32 storage: scratch in a reused `Vec<f32>` (`aligned`), for the kernels
//! that pack their operands (`panel_gemm`, `attention_rows`), and owned zeroed buffers
//! (`AlignedVec`) for the heads-in-lanes queries and the KV cache's pages. 32-byte loads that
//! straddle cache lines ran the 3 × 2 GEMM tile at 55–73 GFLOP/s on Zen 3 in a micro-benchmark,
//! aligned ones at 86–97.

/// Values of slack that let a 4-byte-aligned allocation start a run on a 64-byte boundary.
const SLACK: usize = 15;

/// Where the first 64-byte boundary of `buf` is, in values.
fn boundary(buf: &[f32]) -> usize {
    buf.as_ptr().align_offset(64).min(SLACK)
}

/// The 64-byte-aligned start of `buf`, `len` values long (`buf` grows as needed).
pub(super) fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len + SLACK, 0.0);
    let skip = boundary(buf);
    &mut buf[skip..skip + len]
}

/// `len` values starting on a 64-byte boundary, owned; derefs to the aligned slice.
pub struct AlignedVec {
    buf: Box<[f32]>,
    at: usize,
    len: usize,
}

impl AlignedVec {
    /// `len` zeros (aborts when the allocation fails, as `vec!` does).
    pub(super) fn zeroed(len: usize) -> AlignedVec {
        AlignedVec::from_zeros(vec![0.0; len + SLACK], len)
    }

    /// `len` zeros, or `None` when the allocation fails.
    pub(super) fn try_zeroed(len: usize) -> Option<AlignedVec> {
        let mut data: Vec<f32> = Vec::new();
        data.try_reserve_exact(len + SLACK).ok()?;
        data.resize(len + SLACK, 0.0);
        Some(AlignedVec::from_zeros(data, len))
    }

    fn from_zeros(data: Vec<f32>, len: usize) -> AlignedVec {
        let buf = data.into_boxed_slice();
        let at = boundary(&buf);
        AlignedVec { buf, at, len }
    }
}

impl std::ops::Deref for AlignedVec {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.at..self.at + self.len]
    }
}

impl std::ops::DerefMut for AlignedVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.at..self.at + self.len]
    }
}
