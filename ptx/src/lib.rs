//! troupe-ptx: the GPU path of troupe.
//!
//! - `kernels/*.ptx`: hand-written PTX kernels for a whole forward pass (embedded by [`kernels`]);
//! - [`launch`]: for each op, the kernel and its grid/block/shared memory -- the single source of
//!   truth used by every device;
//! - [`device`]: the buffer/launch primitives a device offers; [`counted`] counts the bytes each way
//!   and the launches per kernel; [`ops::GpuBackend`] implements the engine's `Backend` on any
//!   device with device-resident activations;
//! - [`cuda`]: the device on a CUDA stream via cudarc (dynamic loading; `GpuError::NoDriver` on
//!   machines without a driver);
//! - [`interp`]: the PTX interpreter, the `troupe-ptx-interp` crate (`ptx/interp/`), re-exported;
//!   [`interp_device`] adapts it to the [`device::Device`] trait (`--device ptx-interp`).
//!
//! The CLI builds backends with [`cuda_backend`] and [`interp_backend`].
//!
//! See `ptx/README.md` for the kernel list and `ptx/check.sh` for the ptxas check.

// `x % n != 0` rather than `is_multiple_of` (stable only since 1.87; the workspace targets 1.80).
#![allow(clippy::manual_is_multiple_of)]

pub mod counted;
pub mod cuda;
pub mod device;
pub mod error;
pub mod interp_device;
pub mod kernels;
pub mod launch;
pub mod ops;

/// The PTX interpreter crate (`ptx/interp/`), whose `PtxError` travels inside `GpuError::Ptx`.
pub use troupe_ptx_interp as interp;

use std::sync::Arc;

pub use cuda::{CudaBackend, CudaDevice};
pub use error::{GpuError, GpuResult};
pub use interp_device::{InterpBackend, InterpDevice, InterpOptions};
pub use ops::{Fp8Compute, GpuBackend};

/// The engine backend on CUDA device `ordinal` (`--device cuda[:N]`); `GpuError::NoDriver` when
/// no NVIDIA driver is installed.
pub fn cuda_backend(ordinal: usize) -> Result<Arc<dyn troupe_engine::Backend>, GpuError> {
    cuda_backend_with(ordinal, Fp8Compute::default())
}

/// The engine backend on the PTX interpreter (`--device ptx-interp`): the same kernels and launch
/// configurations as the CUDA backend, executed on the CPU.
pub fn interp_backend() -> Result<Arc<dyn troupe_engine::Backend>, GpuError> {
    interp_backend_with(Fp8Compute::default())
}

/// [`cuda_backend`] computing FP8 linears by `fp8` (W8A8 needs an sm_89+ device).
pub fn cuda_backend_with(
    ordinal: usize,
    fp8: Fp8Compute,
) -> Result<Arc<dyn troupe_engine::Backend>, GpuError> {
    Ok(Arc::new(CudaBackend::cuda(ordinal)?.with_fp8_compute(fp8)?))
}

/// [`interp_backend`] computing FP8 linears by `fp8` (the interpreter device is sm_89).
pub fn interp_backend_with(fp8: Fp8Compute) -> Result<Arc<dyn troupe_engine::Backend>, GpuError> {
    Ok(Arc::new(InterpBackend::interp().with_fp8_compute(fp8)?))
}
