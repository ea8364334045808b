//! `attention_f32` through the `Backend` trait on the interpreter (race detector on, the backend's
//! launch configuration) against `CpuBackend`: MHA with a head count that leaves warps idle, GQA
//! decode chunks (q_start > 0), MQA, a split rope part whose key all kv heads share (MLA), a
//! sliding window, key counts above the 32-key block and head widths below/above the 32 lanes.
//! Each case also runs paged: the keys written into scattered pages (`kv_write` in two parts),
//! attended in place (bit-identical to the contiguous launch) and read back (`kv_read`).

use crate::common::*;
use troupe_engine::backend::{AttentionParams, Backend};
use troupe_engine::device_tensor::{BlockTableRef, KvLayout};
use troupe_engine::kernels::CpuBackend;
use troupe_engine::{DeviceTensor, Tensor};

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
    /// Width of the split rope part (0: none); its key is shared by all kv heads.
    rope: usize,
    v: usize,
    window: Option<usize>,
}

fn check(c: &Case, seed: u64) {
    let gpu = interp();
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(seed);
    let q = rng.matrix(c.tq, c.heads * c.qk, 1.0);
    let qr = rng.matrix(c.tq, c.heads * c.rope, 1.0);
    let k = rng.matrix(c.tk, c.kv_heads * c.qk, 1.0);
    let kr = rng.matrix(c.tk, c.rope, 1.0);
    let v = rng.matrix(c.tk, c.kv_heads * c.v, 1.0);
    let p = AttentionParams {
        heads: c.heads,
        kv_heads: c.kv_heads,
        d1: c.qk,
        d2: c.rope,
        v_dim: c.v,
        scale: 1.0 / ((c.qk + c.rope) as f32).sqrt(),
        q_start: c.tk - c.tq,
        sliding_window: c.window,
    };
    let split = |b: &dyn Backend, t: &Tensor| (c.rope > 0).then(|| b.up(t));
    let (gq, gqr, gk, gkr, gv) = (
        gpu.up(&q),
        split(&gpu, &qr),
        gpu.up(&k),
        split(&gpu, &kr),
        gpu.up(&v),
    );
    let got_d = gpu
        .attention(&gq, gqr.as_ref(), &gk, gkr.as_ref(), &gv, &p)
        .expect("interp attention");
    let got = gpu.download(&got_d).expect("download");
    let (cqr, ckr) = (split(&cpu, &qr), split(&cpu, &kr));
    let want = cpu
        .down(cpu.attention(
            &cpu.up(&q),
            cqr.as_ref(),
            &cpu.up(&k),
            ckr.as_ref(),
            &cpu.up(&v),
            &p,
        ))
        .expect("cpu attention");
    assert_eq!(got.shape(), want.shape());
    let (d, i) = max_abs_diff(got.data(), want.data());
    let tol = ATT_TOL_OF_MAX_V * 1.0;
    eprintln!(
        "attention {}x{} h{}/{} qk{}+{} v{}: max |d| {d:.2e}",
        c.tq, c.tk, c.heads, c.kv_heads, c.qk, c.rope, c.v
    );
    assert!(
        d <= tol,
        "attention tq{} tk{}: max |d| {d:e} at {i} > {tol:e}",
        c.tq,
        c.tk
    );
    // Batch invariance: the last query row alone (a decode step) gives the same bits.
    let p1 = AttentionParams {
        q_start: c.tk - 1,
        ..p
    };
    let last = |t: &DeviceTensor| gpu.slice_rows(t, c.tq - 1, c.tq).expect("slice");
    let alone = gpu
        .down(gpu.attention(
            &last(&gq),
            gqr.as_ref().map(last).as_ref(),
            &gk,
            gkr.as_ref(),
            &gv,
            &p1,
        ))
        .expect("interp attention, one row");
    assert_bits(
        "attention batch invariance",
        alone.data(),
        got.row(c.tq - 1),
    );
    // Paged: the same keys written into scattered 4-position pages, attended in place.
    let layout = KvLayout {
        page_tokens: 4,
        key_width: c.kv_heads * c.qk,
        rope_width: c.rope,
        value_width: c.kv_heads * c.v,
    };
    let n_pages = c.tk.div_ceil(4);
    let store = gpu.kv_store(layout, n_pages + 3).expect("kv_store");
    let pages: Vec<u32> = (0..n_pages as u32).rev().map(|p| p + 2).collect();
    let table = BlockTableRef {
        id: seed,
        generation: 0,
        pages: &pages,
    };
    // Two writes (a prefill, then the rest), so a write starts inside a page.
    let cut = c.tk / 2 + 1;
    for (a, b) in [(0, cut), (cut, c.tk)] {
        let part = |t: &DeviceTensor| gpu.slice_rows(t, a, b).expect("slice");
        gpu.kv_write(
            &store,
            table,
            a,
            &part(&gk),
            gkr.as_ref().map(part).as_ref(),
            Some(&part(&gv)),
        )
        .expect("kv_write");
    }
    let paged = gpu
        .down(gpu.paged_attention(&gq, gqr.as_ref(), &store, table, c.tk, &p))
        .expect("paged attention");
    assert_bits("paged attention == contiguous", paged.data(), got.data());
    let back = gpu.down(gpu.kv_read(&store, table, c.tk)).expect("kv_read");
    for j in 0..c.tk {
        let row = back.row(j);
        assert_bits("kv_read key", &row[..layout.key_width], k.row(j));
        assert_bits(
            "kv_read rope",
            &row[layout.key_width..layout.key_width + c.rope],
            kr.row(j),
        );
        assert_bits("kv_read value", &row[layout.key_width + c.rope..], v.row(j));
    }
}

/// MLA absorbed decode over a latent page layout `[latent | rope]` (values = the latent, one kv
/// head): paged attention matches contiguous attention with v = the latent, bit for bit.
#[test]
fn mla_latent_pages_values_are_the_key_columns() {
    let gpu = interp();
    let mut rng = Rng::new(47);
    let (heads, lat, rope, tk) = (3usize, 40usize, 8usize, 70usize);
    let q = gpu.up(&rng.matrix(2, heads * lat, 1.0));
    let qr = gpu.up(&rng.matrix(2, heads * rope, 1.0));
    let c = gpu.up(&rng.matrix(tk, lat, 1.0));
    let kr = gpu.up(&rng.matrix(tk, rope, 1.0));
    let p = AttentionParams {
        heads,
        kv_heads: 1,
        d1: lat,
        d2: rope,
        v_dim: lat,
        scale: 0.2,
        q_start: tk - 2,
        sliding_window: None,
    };
    let want = gpu
        .down(gpu.attention(&q, Some(&qr), &c, Some(&kr), &c, &p))
        .expect("contiguous");
    let layout = KvLayout {
        page_tokens: 16,
        key_width: lat,
        rope_width: rope,
        value_width: 0,
    };
    let store = gpu.kv_store(layout, 8).expect("kv_store");
    let pages = [6u32, 1, 3, 0, 7];
    let table = BlockTableRef {
        id: 1,
        generation: 0,
        pages: &pages,
    };
    gpu.kv_write(&store, table, 0, &c, Some(&kr), None)
        .expect("kv_write");
    let got = gpu
        .down(gpu.paged_attention(&q, Some(&qr), &store, table, tk, &p))
        .expect("paged");
    assert_bits("MLA paged attention", got.data(), want.data());
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
            rope: 0,
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
            rope: 8,
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
            rope: 16,
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
            rope: 0,
            v: 16,
            window: Some(5),
        },
        44,
    );
}
