//! The kernel backends troupe ships, by [`DeviceId`]: `cpu` (troupe-engine's CPU kernels),
//! `ptx-interp` (troupe-ptx's PTX interpreter) and `cuda:N` (troupe-ptx over the CUDA driver);
//! the last two only with the cargo feature `gpu` (without it they are
//! [`BackendBuildError::NotBuilt`]).
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
#[cfg(feature = "gpu")]
use troupe_ptx::Fp8Compute;

/// What [`backend`] builds, for error messages.
#[cfg(feature = "gpu")]
pub const BUILTIN_DEVICES: &str = "cpu, ptx-interp and cuda[:N]";
/// What [`backend`] builds, for error messages.
#[cfg(not(feature = "gpu"))]
pub const BUILTIN_DEVICES: &str = "cpu (ptx-interp and cuda[:N] need the `gpu` feature)";

/// The backend of a built-in device; a [`DeviceId::Custom`] device is `Unsupported` (serve it
/// with a factory of your own that falls back to this function).
#[cfg(feature = "gpu")]
pub fn backend(device: &DeviceId) -> Result<Arc<dyn Backend>, BackendBuildError> {
    let failed = |e: troupe_ptx::GpuError| BackendBuildError::Failed {
        device: device.clone(),
        source: Box::new(e),
    };
    match device {
        DeviceId::Cpu => Ok(Arc::new(CpuBackend::new())),
        DeviceId::PtxInterp => fp8_choice(device)
            .and_then(troupe_ptx::interp_backend_with)
            .map_err(failed),
        DeviceId::Cuda(n) => fp8_choice(device)
            .and_then(|fp8| troupe_ptx::cuda_backend_with(*n, fp8))
            .map_err(failed),
        DeviceId::Custom(_) => Err(BackendBuildError::Unsupported {
            device: device.clone(),
            serves: BUILTIN_DEVICES.into(),
        }),
    }
}

/// The backend of a built-in device; without the `gpu` feature only `cpu` is built, and the GPU
/// devices are `NotBuilt`.
#[cfg(not(feature = "gpu"))]
pub fn backend(device: &DeviceId) -> Result<Arc<dyn Backend>, BackendBuildError> {
    match device {
        DeviceId::Cpu => Ok(Arc::new(CpuBackend::new())),
        DeviceId::PtxInterp | DeviceId::Cuda(_) => Err(BackendBuildError::NotBuilt {
            device: device.clone(),
            feature: "gpu",
        }),
        DeviceId::Custom(_) => Err(BackendBuildError::Unsupported {
            device: device.clone(),
            serves: BUILTIN_DEVICES.into(),
        }),
    }
}

/// The variable that opts the GPU backends into W8A8 FP8 compute.
pub const FP8_ENV: &str = "TROUPE_FP8_COMPUTE";

/// The FP8 compute of a GPU device from `TROUPE_FP8_COMPUTE`, printed when it is not the default.
#[cfg(feature = "gpu")]
fn fp8_choice(device: &DeviceId) -> Result<Fp8Compute, troupe_ptx::GpuError> {
    let fp8 = fp8_compute(std::env::var(FP8_ENV).ok().as_deref())?;
    if fp8 != Fp8Compute::default() {
        eprintln!("troupe: {device}: FP8 linears compute as {fp8} ({FP8_ENV})");
    }
    Ok(fp8)
}

/// The value of `TROUPE_FP8_COMPUTE`: unset, empty or `weight-only` (the default), or `w8a8`.
#[cfg(feature = "gpu")]
fn fp8_compute(value: Option<&str>) -> Result<Fp8Compute, troupe_ptx::GpuError> {
    match value {
        None | Some("") | Some("weight-only") => Ok(Fp8Compute::WeightOnly),
        Some("w8a8") => Ok(Fp8Compute::W8A8),
        Some(other) => Err(troupe_ptx::GpuError::launch(
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

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn without_gpu_the_gpu_devices_are_a_typed_error_naming_the_feature() {
        let f = default_factory();
        assert_eq!(f.build(&DeviceId::Cpu).expect("cpu").name(), "cpu");
        for device in [DeviceId::PtxInterp, DeviceId::Cuda(0)] {
            match f.build(&device) {
                Err(e @ BackendBuildError::NotBuilt { .. }) => {
                    assert!(e.to_string().contains("feature `gpu`"), "{e}")
                }
                Err(e) => panic!("unexpected error {e}"),
                Ok(_) => panic!("{device} was built without the gpu feature"),
            }
        }
    }

    #[cfg(feature = "gpu")]
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

    #[cfg(feature = "gpu")]
    #[test]
    fn fp8_compute_is_weight_only_unless_w8a8_is_asked_for() {
        assert_eq!(fp8_compute(None).unwrap(), Fp8Compute::WeightOnly);
        assert_eq!(fp8_compute(Some("")).unwrap(), Fp8Compute::WeightOnly);
        assert_eq!(
            fp8_compute(Some("weight-only")).unwrap(),
            Fp8Compute::WeightOnly
        );
        assert_eq!(fp8_compute(Some("w8a8")).unwrap(), Fp8Compute::W8A8);
        let e = fp8_compute(Some("fp4")).unwrap_err().to_string();
        assert!(e.contains("TROUPE_FP8_COMPUTE=fp4"), "{e}");
    }
}
