//! `Device`: the few primitives a GPU backend needs from a device -- buffers, copies, launches.
//!
//! `GpuBackend<D>` (in `ops`) implements the engine's `Backend` once on top of this trait, so the
//! CUDA stream (`cuda::CudaDevice`) and the PTX interpreter run the same host code, the same
//! launch configurations (`launch`) and the same PTX.

use crate::error::GpuResult;
use crate::launch::Launch;

/// A kernel argument, in the order of the entry's `.param` list.
pub enum Arg<'a, B> {
    Buf(&'a B),
    /// A pointer `bytes` bytes into a buffer (a column offset inside a row-major matrix).
    BufAt(&'a B, usize),
    /// A null pointer (optional inputs such as the router bias).
    Null,
    U32(u32),
    F32(f32),
}

/// A device that can hold buffers and run kernels from the embedded library.
pub trait Device: Send + Sync {
    /// A device buffer (freed on drop).
    type Buf: Send + Sync + 'static;
    /// `cuda:0`, `ptx-interp`, ...
    fn name(&self) -> String;
    /// The compute capability (80 = sm_80, 89 = sm_89): which kernel files it can launch.
    fn sm(&self) -> u32;
    /// A new buffer holding `bytes`.
    fn upload(&self, bytes: &[u8]) -> GpuResult<Self::Buf>;
    /// A new zero-filled buffer of `bytes` bytes.
    fn alloc(&self, bytes: usize) -> GpuResult<Self::Buf>;
    /// Overwrites `bytes.len()` bytes of `buf` from byte `offset` (in stream order).
    fn write(&self, buf: &mut Self::Buf, offset: usize, bytes: &[u8]) -> GpuResult<()>;
    /// The first `bytes` bytes of `buf`, after all launches issued so far have finished.
    fn download(&self, buf: &Self::Buf, bytes: usize) -> GpuResult<Vec<u8>>;
    /// The device address of `buf` (for tables of pointers a kernel reads, e.g. grouped weights).
    fn address(&self, buf: &Self::Buf) -> u64;
    /// Runs `launch.kernel` with `args`.
    fn launch(&self, launch: &Launch, args: &[Arg<'_, Self::Buf>]) -> GpuResult<()>;
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes of u32 values.
pub fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// f32 values from little-endian bytes (a trailing partial word is ignored).
pub fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// u32 values from little-endian bytes.
pub fn bytes_u32(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
