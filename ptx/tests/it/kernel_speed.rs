//! Interpreter speed on real kernels, from the device's per-kernel `LaunchStats`: thread-level
//! instructions per second of interpreter time, with and without the race detector. Prints the
//! numbers quoted in ptx/README.md (`cargo test -p troupe-ptx --test kernel_speed -- --nocapture`);
//! asserts only that work was counted.

use crate::common::*;
use troupe_engine::backend::{AttentionParams, Backend};
use troupe_engine::dtype::DType;
use troupe_ptx::{GpuBackend, InterpDevice, InterpOptions};

fn run(race_check: bool) {
    let be = GpuBackend::new(InterpDevice::new(InterpOptions {
        race_check,
        ..InterpOptions::default()
    }));
    let mut rng = Rng::new(111);
    // A prefill-sized linear (m 32, n 512, k 256) and an attention over 64 keys.
    let x = rng.matrix(32, 256, 1.0);
    let w = weight("w", DType::BF16, vec![512, 256], &rng.vec(512 * 256, 0.5));
    be.linear(&be.up(&x), &w).expect("linear");
    let q = rng.matrix(64, 4 * 64, 1.0);
    let kv = rng.matrix(64, 64, 1.0);
    let p = AttentionParams {
        heads: 4,
        kv_heads: 1,
        d1: 64,
        d2: 0,
        v_dim: 64,
        scale: 0.125,
        q_start: 0,
        sliding_window: None,
    };
    let kv = be.up(&kv);
    be.attention(&be.up(&q), None, &kv, None, &kv, &p)
        .expect("attention");
    let gemm_dev = InterpDevice::new(InterpOptions {
        race_check,
        ..InterpOptions::default()
    });
    crate::common::gemm::check_gemm(&gemm_dev, 128, 128, 256, 112).expect("gemm");
    for (kernel, s) in be.device().stats().into_iter().chain(gemm_dev.stats()) {
        assert!(s.instructions > 0);
        eprintln!(
            "race_check {race_check:5}: {kernel:14} {:>11} thread-instr in {:>7.1} ms = {:6.1} M thread-instr/s",
            s.instructions,
            s.time.as_secs_f64() * 1e3,
            s.instructions_per_second() / 1e6
        );
    }
}

#[test]
fn interpreter_speed_on_real_kernels() {
    run(false);
    run(true);
}
