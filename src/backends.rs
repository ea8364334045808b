//! The kernel backends troupe ships, by [`DeviceId`]: `cpu` (troupe-engine's CPU kernels),
//! `ptx-interp` (troupe-ptx's PTX interpreter) and `cuda:N` (troupe-ptx over the CUDA driver).
//! The actor runtime (troupe-actors) does not link troupe-ptx, so it builds `cpu` streams only
//! unless given a factory: [`default_factory`] is that factory, for library users
//! (`RuntimeOptions { backends: Some(troupe::backends::default_factory()), .. }`) and the CLI
//! alike.
//!
//! FP8 weights on `ptx-interp` / `cuda` run the weight-only kernels (f32 activations, within the
//! f32 reference's tolerances) unless `TROUPE_FP8_COMPUTE=w8a8` asks for DeepSeek's W8A8 scheme
//! (e4m3 activations, `fp8_gemm_blockscaled`, sm_89+ only; faster on Ada/Hopper, not within those
//! tolerances); the choice is printed on stderr when it is W8A8.

use std::sync::Arc;

use troupe_actors::{BackendBuildError, BackendFactory};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::{Backend, DeviceId};
use troupe_ptx::Fp8Compute;

/// What [`backend`] builds, for error messages.
pub const BUILTIN_DEVICES: &str = "cpu, ptx-interp and cuda[:N]";

/// The backend of a built-in device; a [`DeviceId::Custom`] device is `Unsupported` (serve it
/// with a factory of your own that falls back to this function).
pub fn backend(device: &DeviceId) -> Result<Arc<dyn Backend>, BackendBuildError> {
    let failed = |e: troupe_ptx::GpuError| BackendBuildError::Failed {
        device: device.clone(),
        source: Box::new(e),
    };
    match device {
        DeviceId::Cpu => Ok(Arc::new(CpuBackend::new())),
        DeviceId::PtxInterp | DeviceId::Cuda(_) => {
            let fp8 = fp8_compute_from_env().map_err(failed)?;
            if fp8 != Fp8Compute::default() {
                eprintln!("troupe: {device}: FP8 linears compute as {fp8} ({FP8_ENV})");
            }
            match device {
                DeviceId::Cuda(n) => troupe_ptx::cuda_backend_with(*n, fp8),
                _ => troupe_ptx::interp_backend_with(fp8),
            }
            .map_err(failed)
        }
        DeviceId::Custom(_) => Err(BackendBuildError::Unsupported {
            device: device.clone(),
            serves: BUILTIN_DEVICES.into(),
        }),
    }
}

/// The variable that opts the GPU backends into W8A8 FP8 compute.
pub const FP8_ENV: &str = "TROUPE_FP8_COMPUTE";

/// `TROUPE_FP8_COMPUTE`: unset or `weight-only` (the default), or `w8a8`.
fn fp8_compute_from_env() -> Result<Fp8Compute, troupe_ptx::GpuError> {
    match std::env::var(FP8_ENV).as_deref() {
        Err(_) | Ok("") | Ok("weight-only") => Ok(Fp8Compute::WeightOnly),
        Ok("w8a8") => Ok(Fp8Compute::W8A8),
        Ok(other) => Err(troupe_ptx::GpuError::launch(
            "fp8",
            format!("{FP8_ENV}={other}: expected weight-only or w8a8"),
        )),
    }
}

/// A factory over [`backend`]: every built-in device.
pub fn default_factory() -> BackendFactory {
    BackendFactory::new(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_devices_build_and_custom_ones_are_refused_by_name() {
        let f = default_factory();
        assert_eq!(f.build(&DeviceId::Cpu).expect("cpu").name(), "cpu");
        let interp = f.build(&DeviceId::PtxInterp).expect("interpreter");
        assert_ne!(interp.name(), "cpu");
        let custom = DeviceId::Custom("npu0".into());
        match f.build(&custom) {
            Err(e @ BackendBuildError::Unsupported { .. }) => {
                assert!(e.to_string().contains("`npu0`"), "{e}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a custom device was built"),
        }
    }
}
