//! troupe-ptx's integration tests, one binary: one module per area (the constructors and the CUDA
//! path without a driver, typed errors across the `Backend` trait, launch parameters, the
//! device-resident ops and the transfer/launch budgets of a decode step, every kernel through the
//! `Backend` trait on the interpreter, broken kernel variants, end-to-end fixtures),
//! with the shared helpers in `common`. The interpreter's own tests live in `ptx/interp/tests/it/`.

mod common;

mod backend_budget;
mod backend_constructors;
mod backend_errors;
mod backend_fp8;
mod backend_ops;
mod backend_params;
mod kernel_attention;
mod kernel_broken_variants;
mod kernel_e2e_fixtures;
mod kernel_e2e_fp8;
mod kernel_fp8;
mod kernel_gemm_tc;
mod kernel_library;
mod kernel_linear;
mod kernel_linear_fp8;
mod kernel_moe;
mod kernel_router;
mod kernel_rowwise;
mod kernel_speed;
