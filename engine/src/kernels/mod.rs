//! CPU kernels (f32 accumulation; AVX2/FMA chosen at run time with a bit-identical portable
//! fallback) and `CpuBackend`, which exposes them through the `Backend` trait.

pub mod activation;
#[cfg(target_arch = "x86_64")]
mod aligned;
pub mod amx;
pub mod attention;
mod attention_combine;
mod attention_core;
pub mod attention_cost;
mod attention_lanes512;
mod attention_lanes_chunk;
mod attention_row_lanes;
#[cfg(target_arch = "x86_64")]
mod attention_rows;
mod attention_simd;
mod attention_simd512;
#[cfg(test)]
mod attention_tests;
pub mod awake;
pub mod columns;
pub mod cpu;
#[cfg(test)]
mod cpu_tests;
pub mod decode_streams;
pub mod dot;
mod dot_i8;
pub mod dot_pairs;
pub mod fp8;
#[cfg(target_arch = "x86_64")]
mod fp8_simd;
mod gemv_bf16;
pub mod isa;
pub mod kv_pages;
pub mod linear;
pub mod moe;
pub mod norm;
pub mod paged_attention;
#[cfg(target_arch = "x86_64")]
mod panel_gemm;
pub mod pool;
pub mod precision;
pub mod rope;
pub mod router;
pub mod row_kind;

pub use cpu::CpuBackend;
