//! The kernel backends troupe ships, by [`DeviceId`]: `cpu` (troupe-engine's CPU kernels),
//! `ptx-interp` (troupe-ptx's PTX interpreter) and `cuda:N` (troupe-ptx over the CUDA driver).
//! The actor runtime (troupe-actors) does not link troupe-ptx, so it builds `cpu` streams only
//! unless given a factory: [`default_factory`] is that factory, for library users
//! (`RuntimeOptions { backends: Some(troupe::backends::default_factory()), .. }`) and the CLI
//! alike.

use std::sync::Arc;

use troupe_actors::{BackendBuildError, BackendFactory};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::{Backend, DeviceId};

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
        DeviceId::PtxInterp => troupe_ptx::interp_backend().map_err(failed),
        DeviceId::Cuda(n) => troupe_ptx::cuda_backend(*n).map_err(failed),
        DeviceId::Custom(_) => Err(BackendBuildError::Unsupported {
            device: device.clone(),
            serves: BUILTIN_DEVICES.into(),
        }),
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
