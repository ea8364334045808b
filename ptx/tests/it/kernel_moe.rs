//! The MoE dispatch kernels the `Backend` trait does not reach, launched on the interpreter device
//! (race detector on) with `troupe_ptx::launch` configurations, as one pipeline:
//! `moe_sort` (exact: a host stable counting sort) -> `moe_gather` (exact copy) ->
//! `grouped_linear_*w` (bitwise equal to `linear_*w` on each expert's rows, which is itself checked
//! against the CPU in kernel_linear.rs) -> `moe_combine` (bitwise equal to the documented order:
//! acc = acc + w * y per slot, separate roundings).
//! Ragged: 37 experts (block of 64 threads, idle lanes), empty experts, an expert with more rows
//! than the 16-row chunk (grid z > 1), hidden and output widths off the warp multiples.

use crate::common::*;
use troupe_engine::backend::Backend;
use troupe_engine::dtype::DType;
use troupe_engine::Tensor;
use troupe_ptx::device::{bytes_f32, bytes_u32, f32_bytes, u32_bytes, Arg, Device};
use troupe_ptx::launch;

const TOKENS: usize = 21;
const TOP_K: usize = 3;
const EXPERTS: usize = 37;
const HIDDEN: usize = 45;
const OUT: usize = 19;

/// Per token, TOP_K distinct ascending expert ids; expert 5 is in every token (21 rows > 16) and
/// experts >= 30 are never chosen (empty segments).
fn routing(rng: &mut Rng) -> Vec<u32> {
    let mut ids = Vec::new();
    for _ in 0..TOKENS {
        let mut t = vec![5u32];
        while t.len() < TOP_K {
            let e = rng.below(30);
            if !t.contains(&e) {
                t.push(e);
            }
        }
        t.sort_unstable();
        ids.extend(t);
    }
    ids
}

/// Host stable counting sort: (offsets, order, inv).
fn host_sort(ids: &[u32]) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut offsets = vec![0u32; EXPERTS + 1];
    for &e in ids {
        offsets[e as usize + 1] += 1;
    }
    for e in 0..EXPERTS {
        offsets[e + 1] += offsets[e];
    }
    let mut next = offsets.clone();
    let mut order = vec![0u32; ids.len()];
    let mut inv = vec![0u32; ids.len()];
    for (i, &e) in ids.iter().enumerate() {
        let p = next[e as usize] as usize;
        next[e as usize] += 1;
        order[p] = i as u32;
        inv[i] = p as u32;
    }
    (offsets, order, inv)
}

fn pipeline(dtype: DType, seed: u64) {
    let gpu = interp();
    let dev = gpu.device();
    let mut rng = Rng::new(seed);
    let ids = routing(&mut rng);
    let entries = ids.len();
    let u = |v: usize| Arg::U32(v as u32);

    // moe_sort
    let idb = dev.upload(&u32_bytes(&ids)).expect("upload ids");
    let (offb, ordb, invb) = (
        dev.alloc((EXPERTS + 1) * 4).expect("alloc"),
        dev.alloc(entries * 4).expect("alloc"),
        dev.alloc(entries * 4).expect("alloc"),
    );
    let l = launch::moe_sort(EXPERTS).expect("config");
    assert_eq!(l.block, (64, 1, 1));
    dev.launch(
        &l,
        &[
            Arg::Buf(&offb),
            Arg::Buf(&ordb),
            Arg::Buf(&invb),
            Arg::Buf(&idb),
            u(entries),
            u(EXPERTS),
            Arg::Null,
            u(0),
        ],
    )
    .expect("moe_sort");
    let (offsets, order, inv) = host_sort(&ids);
    let got_off = bytes_u32(&dev.download(&offb, (EXPERTS + 1) * 4).expect("dl"));
    assert_eq!(got_off, offsets, "moe_sort offsets");
    assert_eq!(
        bytes_u32(&dev.download(&ordb, entries * 4).expect("dl")),
        order,
        "moe_sort order"
    );
    assert_eq!(
        bytes_u32(&dev.download(&invb, entries * 4).expect("dl")),
        inv,
        "moe_sort inv"
    );

    // moe_gather
    let x = rng.matrix(TOKENS, HIDDEN, 1.0);
    let xb = dev.upload(&f32_bytes(x.data())).expect("upload x");
    let xs = dev.alloc(entries * HIDDEN * 4).expect("alloc");
    let l = launch::moe_gather(entries).expect("config");
    dev.launch(
        &l,
        &[
            Arg::Buf(&xs),
            Arg::Buf(&xb),
            Arg::Buf(&ordb),
            u(entries),
            u(HIDDEN),
            u(TOP_K),
        ],
    )
    .expect("moe_gather");
    let gathered = bytes_f32(&dev.download(&xs, entries * HIDDEN * 4).expect("dl"));
    for (p, &i) in order.iter().enumerate() {
        let t = i as usize / TOP_K;
        assert_bits(
            &format!("moe_gather row {p}"),
            &gathered[p * HIDDEN..(p + 1) * HIDDEN],
            x.row(t),
        );
    }

    // grouped_linear over stacked [E, OUT, HIDDEN] weights
    let wv = rng.vec(EXPERTS * OUT * HIDDEN, 0.5);
    let stacked = weight(
        &format!("stacked{dtype:?}"),
        dtype,
        vec![EXPERTS * OUT, HIDDEN],
        &wv,
    );
    let wb = dev.upload(stacked.bytes()).expect("upload w");
    let y = dev.alloc(entries * OUT * 4).expect("alloc");
    let max_rows = (0..EXPERTS)
        .map(|e| (offsets[e + 1] - offsets[e]) as usize)
        .max()
        .unwrap_or(0);
    let l = launch::grouped_linear(dtype, OUT, EXPERTS, max_rows).expect("config");
    assert!(l.grid.2 > 1, "the test must cover several 16-row chunks");
    dev.launch(
        &l,
        &[
            Arg::Buf(&y),
            Arg::Buf(&xs),
            Arg::Buf(&wb),
            Arg::Buf(&offb),
            u(EXPERTS),
            u(OUT),
            u(HIDDEN),
        ],
    )
    .expect("grouped_linear");
    let yv = bytes_f32(&dev.download(&y, entries * OUT * 4).expect("dl"));
    for e in 0..EXPERTS {
        let (a, b) = (offsets[e] as usize, offsets[e + 1] as usize);
        if a == b {
            continue;
        }
        let seg =
            Tensor::matrix(b - a, HIDDEN, gathered[a * HIDDEN..b * HIDDEN].to_vec()).expect("seg");
        let we = weight(
            &format!("e{e}{dtype:?}"),
            dtype,
            vec![OUT, HIDDEN],
            &wv[e * OUT * HIDDEN..(e + 1) * OUT * HIDDEN],
        );
        let want = gpu
            .down(gpu.linear(&gpu.up(&seg), &we))
            .expect("linear per expert");
        assert_bits(
            &format!("grouped_linear {dtype:?} expert {e}"),
            &yv[a * OUT..b * OUT],
            want.data(),
        );
    }

    // moe_combine
    let weights = rng.vec(entries, 1.0);
    let wtb = dev.upload(&f32_bytes(&weights)).expect("upload weights");
    let out = dev.alloc(TOKENS * OUT * 4).expect("alloc");
    let l = launch::moe_combine(TOKENS).expect("config");
    dev.launch(
        &l,
        &[
            Arg::Buf(&out),
            Arg::Buf(&y),
            Arg::Buf(&wtb),
            Arg::Buf(&invb),
            u(TOKENS),
            u(OUT),
            u(TOP_K),
            Arg::Null,
            Arg::Null,
        ],
    )
    .expect("moe_combine");
    let got = bytes_f32(&dev.download(&out, TOKENS * OUT * 4).expect("dl"));
    let mut want = vec![0.0f32; TOKENS * OUT];
    for t in 0..TOKENS {
        for c in 0..OUT {
            let mut acc = 0.0f32;
            for j in 0..TOP_K {
                let e = t * TOP_K + j;
                acc += weights[e] * yv[inv[e] as usize * OUT + c];
            }
            want[t * OUT + c] = acc;
        }
    }
    assert_bits("moe_combine", &got, &want);
}

#[test]
fn moe_dispatch_pipeline_f32_weights() {
    pipeline(DType::F32, 81);
}

#[test]
fn moe_dispatch_pipeline_bf16_weights() {
    pipeline(DType::BF16, 82);
}

#[test]
fn moe_dispatch_pipeline_f16_weights() {
    pipeline(DType::F16, 83);
}
