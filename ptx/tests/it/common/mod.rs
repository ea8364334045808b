//! Shared helpers of troupe-ptx's tests: the paths of the kernel sources and the HF fixtures, the
//! interpreter backend with the race detector on, `OnHost` (host tensors in and out of any
//! backend's device handles), a deterministic random source, and comparison helpers that report
//! the worst element. `gemm` is the host side of the tensor-core GEMM tests.

pub mod gemm;

use std::path::PathBuf;

use troupe_engine::weights::Weight;
use troupe_engine::{Backend, DeviceTensor, Tensor};
use troupe_ptx::{GpuBackend, InterpDevice, InterpOptions};

/// `ptx/kernels/`, the PTX sources the library embeds.
pub fn kernels_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels")
}

/// `tests/fixtures/<case>` at the workspace root: the HF reference fixtures (shared, read-only).
pub fn fixture(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(case)
}

/// The backend under test: the interpreter with the shared-memory race detector on every launch.
pub fn interp() -> GpuBackend<InterpDevice> {
    GpuBackend::new(InterpDevice::new(InterpOptions {
        race_check: true,
        ..InterpOptions::default()
    }))
}

/// Host tensors in and out of a backend's handles, for tests that compare ops across backends.
pub trait OnHost: Backend {
    /// `t` uploaded (panics on failure: test input).
    fn up(&self, t: &Tensor) -> DeviceTensor {
        self.upload(t).expect("upload")
    }
    /// The result of an op, downloaded (errors pass through).
    fn down(&self, r: troupe_engine::Result<DeviceTensor>) -> troupe_engine::Result<Tensor> {
        r.and_then(|t| self.download(&t))
    }
}

impl<B: Backend + ?Sized> OnHost for B {}

/// xorshift64*: deterministic test data without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
    pub fn matrix(&mut self, rows: usize, cols: usize, scale: f32) -> Tensor {
        Tensor::matrix(rows, cols, self.vec(rows * cols, scale)).expect("shape")
    }
}

/// bf16 bits of `x` with round-to-nearest-even (as torch and `cvt.rn.bf16.f32`).
pub fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// A weight of `dtype` with values `v` rounded to that dtype (f32, bf16, f16), or quantised to
/// FP8 with 128×128 block scales as DeepSeek's checkpoints are (f8e4m3, 2-D only).
pub fn weight(
    name: &str,
    dtype: troupe_engine::dtype::DType,
    shape: Vec<usize>,
    v: &[f32],
) -> Weight {
    use troupe_engine::dtype::DType;
    match dtype {
        DType::F32 => Weight::from_f32(name, shape, v),
        DType::BF16 => Weight::from_u16(
            name,
            dtype,
            shape,
            &v.iter().map(|&x| bf16_bits(x)).collect::<Vec<_>>(),
        ),
        DType::F16 => Weight::from_u16(
            name,
            dtype,
            shape,
            &v.iter()
                .map(|&x| half::f16::from_f32(x).to_bits())
                .collect::<Vec<_>>(),
        ),
        DType::F8E4M3 => {
            troupe_engine::weights::fp8::quantize_block_scaled(name, shape[0], shape[1], v)
                .expect("quantise")
        }
        DType::I8 => troupe_engine::weights::int8::quantize_int8(name, shape[0], shape[1], v)
            .expect("quantise"),
    }
}

/// Largest `|a - b|`, with the index where it occurs; panics on a length mismatch or a NaN.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut worst = (0.0f32, 0usize);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x.is_nan() == y.is_nan(), "NaN mismatch at {i}: {x} vs {y}");
        let d = (x - y).abs();
        if d > worst.0 {
            worst = (d, i);
        }
    }
    worst
}

/// Asserts `|got - want| <= rel * max(|want|, floor)` elementwise.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, floor: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = rel * w.abs().max(floor);
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w} (|d| = {:e} > tol {tol:e})",
            (g - w).abs()
        );
    }
}

/// Asserts bit-identical f32 slices.
pub fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: element {i}: got {g:e}, want {w:e}"
        );
    }
}
