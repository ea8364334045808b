//! The two constructors the CLI calls: `interp_backend()` runs the kernels through the `Backend`
//! trait; `cuda_backend(n)` on a machine without a driver is the typed `NoDriver` error.

use troupe_engine::weights::Weight;
use troupe_engine::Tensor;
use troupe_ptx::{cuda::driver_present, cuda_backend, interp_backend, GpuError};

#[test]
fn interp_backend_runs_an_op() {
    let be = interp_backend().expect("the interpreter backend is always available");
    assert_eq!(be.name(), "ptx-interp");
    let x = Tensor::matrix(2, 3, vec![1.0, 2.0, 3.0, -1.0, 0.5, 0.25]).expect("t");
    let w = Weight::from_f32("w", vec![1, 3], &[1.0, 1.0, 1.0]);
    assert_eq!(be.linear(&x, &w).expect("linear").data(), &[6.0, -0.25]);
}

#[test]
fn cuda_backend_without_driver_is_no_driver() {
    if driver_present() {
        return;
    }
    match cuda_backend(0) {
        Err(GpuError::NoDriver) => {}
        Err(e) => panic!("expected NoDriver, got {e}"),
        Ok(_) => panic!("expected NoDriver"),
    }
}
