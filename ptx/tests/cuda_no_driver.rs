//! On a machine without an NVIDIA driver (this one, CI), asking for the CUDA backend must return
//! `GpuError::NoDriver` with the one clear message -- never panic inside cudarc.

use troupe_ptx::cuda::driver_present;
use troupe_ptx::{CudaBackend, GpuError};

#[test]
fn cuda_backend_without_driver_is_a_typed_error() {
    if driver_present() {
        eprintln!("a CUDA driver is present; the no-driver path is not exercised here");
        return;
    }
    let r = std::panic::catch_unwind(|| CudaBackend::cuda(0).map(|_| ()));
    let r = r.expect("constructing the CUDA backend must not panic");
    match r {
        Err(GpuError::NoDriver) => {}
        Err(e) => panic!("expected NoDriver, got {e}"),
        Ok(()) => panic!("expected NoDriver, got a backend"),
    }
    let msg = GpuError::NoDriver.to_string();
    assert!(
        msg.contains("libcuda.so.1")
            && msg.contains("--device cpu")
            && msg.contains("--device ptx-interp"),
        "{msg}"
    );
}
