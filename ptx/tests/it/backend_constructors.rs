//! The constructors the CLI and library users call: `interp_backend()` runs the kernels through the
//! `Backend` trait; on a machine without an NVIDIA driver (this one, CI) `cuda_backend(n)` and
//! `CudaBackend::cuda(n)` return `GpuError::NoDriver` with the one clear message -- never a panic
//! inside cudarc.

use troupe_engine::weights::Weight;
use troupe_engine::Tensor;
use troupe_ptx::{cuda::driver_present, cuda_backend, interp_backend, CudaBackend, GpuError};

#[test]
fn interp_backend_runs_an_op() {
    let be = interp_backend().expect("the interpreter backend is always available");
    assert_eq!(be.name(), "ptx-interp");
    let x = Tensor::matrix(2, 3, vec![1.0, 2.0, 3.0, -1.0, 0.5, 0.25]).expect("t");
    let w = Weight::from_f32("w", vec![1, 3], &[1.0, 1.0, 1.0]);
    let y = be
        .linear(&be.upload(&x).expect("upload"), &w)
        .expect("linear");
    assert_eq!(be.download(&y).expect("download").data(), &[6.0, -0.25]);
}

#[test]
fn cuda_backend_without_driver_is_no_driver() {
    if driver_present() {
        eprintln!("a CUDA driver is present; the no-driver path is not exercised here");
        return;
    }
    let through_cli = std::panic::catch_unwind(|| cuda_backend(0).map(|_| ()));
    let direct = std::panic::catch_unwind(|| CudaBackend::cuda(0).map(|_| ()));
    for r in [through_cli, direct] {
        match r.expect("constructing the CUDA backend must not panic") {
            Err(GpuError::NoDriver) => {}
            Err(e) => panic!("expected NoDriver, got {e}"),
            Ok(()) => panic!("expected NoDriver, got a backend"),
        }
    }
    let msg = GpuError::NoDriver.to_string();
    assert!(
        msg.contains("libcuda.so.1")
            && msg.contains("--device cpu")
            && msg.contains("--device ptx-interp"),
        "{msg}"
    );
}
