//! [`BackendFactory`]: how the runtime gets the backend of each stream from its [`DeviceId`].
//! troupe-actors serves `cpu` itself ([`BackendFactory::cpu_only`]) and never links troupe-ptx;
//! `troupe::backends::default_factory()` adds `ptx-interp` and `cuda:N`, and a caller's own
//! factory may serve any device, [`DeviceId::Custom`] names included.

use std::sync::Arc;

use troupe_engine::error::BoxError;
use troupe_engine::{Backend, DeviceId};

/// A device → backend function (see [`BackendFactory::new`]).
pub type MakeBackend =
    dyn Fn(&DeviceId) -> std::result::Result<Arc<dyn Backend>, BackendBuildError> + Send + Sync;

/// Why a stream's backend could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BackendBuildError {
    /// The factory does not serve this device.
    #[error("device `{device}` is not served by this backend factory (it builds {serves}); pass one that does in RuntimeOptions::backends")]
    Unsupported { device: DeviceId, serves: String },
    /// The device's backend is left out of this build (a cargo feature of `troupe` is off).
    #[error(
        "device `{device}` needs troupe's cargo feature `{feature}`, which this build leaves out"
    )]
    NotBuilt {
        device: DeviceId,
        feature: &'static str,
    },
    /// The factory serves the device, but building its backend failed (e.g. no CUDA driver).
    #[error("device `{device}`: {source}")]
    Failed {
        device: DeviceId,
        #[source]
        source: BoxError,
    },
}

/// Builds the backend of a stream from its device. The default ([`BackendFactory::cpu_only`])
/// serves `cpu`; `troupe::backends::default_factory()` adds `ptx-interp` and `cuda:N`; a caller's
/// own factory may serve any device, [`DeviceId::Custom`] names included.
#[derive(Clone)]
pub struct BackendFactory(pub Arc<MakeBackend>);

impl std::fmt::Debug for BackendFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackendFactory")
    }
}

impl BackendFactory {
    /// Wraps a device → backend function.
    pub fn new(
        f: impl Fn(&DeviceId) -> std::result::Result<Arc<dyn Backend>, BackendBuildError>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        BackendFactory(Arc::new(f))
    }
    /// The default: `cpu` only.
    pub fn cpu_only() -> Self {
        BackendFactory::new(|device| match device {
            DeviceId::Cpu => Ok(Arc::new(troupe_engine::kernels::CpuBackend::new())),
            other => Err(BackendBuildError::Unsupported {
                device: other.clone(),
                serves: "cpu only".into(),
            }),
        })
    }
    pub fn build(
        &self,
        device: &DeviceId,
    ) -> std::result::Result<Arc<dyn Backend>, BackendBuildError> {
        (self.0)(device)
    }
}
