//! troupe-ptx-interp's integration tests, one binary: one module per area of the interpreter
//! (basics, control flow, conversions, warp collectives, tensor-core ops, mma, the race detector,
//! troupe's real kernels, throughput), with the shared helpers in `helpers`.

mod helpers;

mod backend_kernels;
mod basic;
mod control;
mod convert;
mod kernels;
mod mma;
mod perf;
mod race;
mod tensor;
mod warp;
