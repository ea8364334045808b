//! CPU kernels (f32 accumulation; AVX2/FMA chosen at run time with a bit-identical portable
//! fallback) and `CpuBackend`, which exposes them through the `Backend` trait.

pub mod activation;
pub mod attention;
pub mod columns;
pub mod cpu;
mod cpu_attention_shim;
pub mod dot;
pub mod kv_pages;
pub mod linear;
pub mod moe;
pub mod norm;
pub mod rope;
pub mod router;

pub use cpu::CpuBackend;
