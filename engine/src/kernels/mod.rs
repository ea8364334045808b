//! CPU kernels (f32 accumulation; AVX2/FMA chosen at run time with a bit-identical portable
//! fallback) and `CpuBackend`, which exposes them through the `Backend` trait.

pub mod activation;
pub mod attention;
pub mod cpu;
pub mod dot;
pub mod linear;
pub mod norm;
pub mod rope;
pub mod router;

pub use cpu::CpuBackend;
