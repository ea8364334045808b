//! A `GpuError` crosses the engine's `Backend` trait typed: `EngineError::Backend { backend,
//! source }` names the device, and `source` downcasts back to the `GpuError` (and, for an
//! interpreter fault, to the `PtxError` inside it). Nothing on the way turns it into a string.

use troupe_engine::backend::{AttentionParams, Backend};
use troupe_engine::weights::Weight;
use troupe_engine::{EngineError, Tensor};
use troupe_ptx::interp::PtxError;
use troupe_ptx::{interp_backend, GpuBackend, GpuError, InterpDevice, InterpOptions};

/// The `GpuError` behind `result`'s `EngineError::Backend` of device `ptx-interp`.
fn gpu_error<T: std::fmt::Debug>(result: troupe_engine::Result<T>) -> GpuError {
    match result {
        Err(EngineError::Backend { backend, source }) => {
            assert_eq!(backend, "ptx-interp");
            match source.downcast::<GpuError>() {
                Ok(e) => *e,
                Err(other) => panic!("source is not a GpuError: {other}"),
            }
        }
        other => panic!("expected EngineError::Backend, got {other:?}"),
    }
}

#[test]
fn shape_and_limit_errors_downcast_to_gpu_error() {
    let be = interp_backend().expect("interpreter");
    let x = be
        .upload(&Tensor::matrix(2, 3, vec![1.0; 6]).expect("x"))
        .expect("up");
    let w = Weight::from_f32("blk.0.w", vec![4, 5], &[0.5; 20]);
    match gpu_error(be.linear(&x, &w)) {
        GpuError::Shape {
            kernel,
            tensor,
            found,
            ..
        } => assert_eq!(
            (kernel.as_str(), tensor.as_str(), found),
            ("linear_f32w", "blk.0.w", vec![4, 5])
        ),
        e => panic!("expected GpuError::Shape, got {e}"),
    }
    let p = AttentionParams {
        heads: 2,
        kv_heads: 0,
        d1: 3,
        d2: 0,
        v_dim: 3,
        scale: 1.0,
        q_start: 0,
        sliding_window: None,
    };
    let q = be
        .upload(&Tensor::matrix(1, 6, vec![0.1; 6]).expect("q"))
        .expect("up");
    match gpu_error(be.attention(&q, None, &q, None, &q, &p)) {
        GpuError::Limit { field, value, .. } => {
            assert_eq!((field.as_str(), value), ("kv_heads", 0))
        }
        e => panic!("expected GpuError::Limit, got {e}"),
    }
}

#[test]
fn interpreter_fault_downcasts_to_the_typed_ptx_error() {
    // silu_mul with its `i >= n` exit turned into `i > n`: thread n reads one past the end.
    let file = troupe_ptx::kernels::file_of("silu_mul_f32").expect("kernel");
    let src = file
        .source
        .replace("setp.ge.u32 %p1, %r5, %r1;", "setp.gt.u32 %p1, %r5, %r1;");
    assert_ne!(src, file.source, "the edit must apply");
    let dev = InterpDevice::new(InterpOptions::default())
        .with_source(file.file, src)
        .expect("override");
    let be: Box<dyn Backend> = Box::new(GpuBackend::new(dev));
    let g = be
        .upload(&Tensor::matrix(1, 40, vec![0.5; 40]).expect("g"))
        .expect("up");
    match gpu_error(be.silu_mul(&g, &g)) {
        GpuError::Ptx { kernel, error } => {
            assert_eq!(kernel, "silu_mul_f32");
            assert!(
                matches!(
                    *error,
                    PtxError::OutOfBounds {
                        tid: (40, 0, 0),
                        ..
                    }
                ),
                "{error}"
            );
        }
        e => panic!("expected GpuError::Ptx, got {e}"),
    }
}
