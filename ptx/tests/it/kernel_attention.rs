//! `attention_f32` through the `Backend` trait on the interpreter (race detector on, the backend's
//! launch configuration) against `CpuBackend`: MHA with a head count that leaves warps idle, GQA
//! decode chunks (q_start > 0), MQA, a sliding window, key counts above the 32-key block and head
//! widths below/above the 32 lanes.

use crate::common::*;
use troupe_engine::backend::{AttentionParams, Backend};
use troupe_engine::kernels::CpuBackend;

/// The kernel uses an online softmax with `ex2.approx` (<= 2 ulp) and lane-strided fma dot
/// products; the CPU uses a two-pass softmax with libm `exp` and serial dots. With |q|, |k| <= 1,
/// scale = 1/sqrt(d) and d <= 64 the scores differ by < 64 * 2^-24 * 8 ~ 3e-5 absolute at most,
/// so each softmax weight differs by < ~4e-5 relative in the worst case (typically ~1e-6), and the
/// sum over <= 70 keys adds < 70 * 2^-24 ~ 4e-6 relative. The output is a convex combination of v
/// rows, so |d| <= 5e-5 * max|v| bounds the worst case; observed errors are ~1e-6 * max|v|.
const ATT_TOL_OF_MAX_V: f32 = 5e-5;

struct Case {
    tq: usize,
    tk: usize,
    heads: usize,
    kv_heads: usize,
    qk: usize,
    v: usize,
    window: Option<usize>,
}

fn check(c: &Case, seed: u64) {
    let gpu = interp();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed);
    let q = rng.matrix(c.tq, c.heads * c.qk, 1.0);
    let k = rng.matrix(c.tk, c.kv_heads * c.qk, 1.0);
    let v = rng.matrix(c.tk, c.kv_heads * c.v, 1.0);
    let p = AttentionParams {
        heads: c.heads,
        kv_heads: c.kv_heads,
        qk_dim: c.qk,
        v_dim: c.v,
        scale: 1.0 / (c.qk as f32).sqrt(),
        q_start: c.tk - c.tq,
        sliding_window: c.window,
    };
    let got = gpu.attention(&q, &k, &v, &p).expect("interp attention");
    let want = cpu.attention(&q, &k, &v, &p).expect("cpu attention");
    assert_eq!(got.shape(), want.shape());
    let (d, i) = max_abs_diff(got.data(), want.data());
    let tol = ATT_TOL_OF_MAX_V * 1.0;
    eprintln!(
        "attention {}x{} h{}/{} qk{} v{}: max |d| {d:.2e}",
        c.tq, c.tk, c.heads, c.kv_heads, c.qk, c.v
    );
    assert!(
        d <= tol,
        "attention tq{} tk{}: max |d| {d:e} at {i} > {tol:e}",
        c.tq,
        c.tk
    );
    // Batch invariance: the last query row alone (a decode step) gives the same bits.
    let last = q.slice_rows(c.tq - 1, c.tq);
    let p1 = AttentionParams {
        q_start: c.tk - 1,
        ..p
    };
    let alone = gpu
        .attention(&last, &k, &v, &p1)
        .expect("interp attention, one row");
    assert_bits(
        "attention batch invariance",
        alone.data(),
        got.row(c.tq - 1),
    );
}

#[test]
fn mha_prefill_idle_warps() {
    // 3 heads: the CTA's 4th warp has no head; qk 20 < 32 lanes; v 37 > 32.
    check(
        &Case {
            tq: 7,
            tk: 7,
            heads: 3,
            kv_heads: 3,
            qk: 20,
            v: 37,
            window: None,
        },
        41,
    );
}

#[test]
fn gqa_decode_chunk() {
    check(
        &Case {
            tq: 3,
            tk: 8,
            heads: 6,
            kv_heads: 2,
            qk: 40,
            v: 24,
            window: None,
        },
        42,
    );
}

#[test]
fn mqa_decode_many_keys() {
    // 70 keys: three 32-key blocks, the last one ragged.
    check(
        &Case {
            tq: 1,
            tk: 70,
            heads: 5,
            kv_heads: 1,
            qk: 64,
            v: 33,
            window: None,
        },
        43,
    );
}

#[test]
fn sliding_window_longer_prompt() {
    check(
        &Case {
            tq: 45,
            tk: 45,
            heads: 4,
            kv_heads: 2,
            qk: 16,
            v: 16,
            window: Some(5),
        },
        44,
    );
}
