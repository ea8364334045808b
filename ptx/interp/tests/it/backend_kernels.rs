//! The kernels troupe-ptx's device-resident backend added or changed, launched directly on the
//! interpreter (race detector on) with hand-computed expectations: paged attention reads the same
//! bits as contiguous attention (MLA latent layout, shared rope key), `copy_rows_b32` scatters
//! rows into pages and gathers them back, `rope_f32` from a first position into a copy,
//! `moe_sort` over a subset of experts, `moe_combine` with the shared expert and the residual,
//! `moe_index_merge`, and the non-finite flag (`check_finite_f32`, `argmax_f32`'s sentinel,
//! `flag_copy_b32`).

use crate::helpers::{kernel_source, XorShift};
use troupe_ptx_interp::{DevicePtr, LaunchConfig, Module, ParamValue, SimulatedGpu};

fn load(file: &str) -> Module {
    Module::parse(&kernel_source(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn cfg(grid: (u32, u32, u32), block: u32, shared: u32) -> LaunchConfig {
    let mut c = LaunchConfig::new(grid, (block, 1, 1));
    c.dynamic_shared_bytes = shared;
    c.race_check = true;
    c
}

fn p(ptr: DevicePtr) -> ParamValue {
    ParamValue::Ptr(ptr)
}
fn u(v: usize) -> ParamValue {
    ParamValue::U32(v as u32)
}
const NULL: ParamValue = ParamValue::Ptr(DevicePtr(0));

fn vec_of(rng: &mut XorShift, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.unit()).collect()
}

/// One attention_f32 launch; `src` = (k1, k2, v, table, strides, page_shift).
#[allow(clippy::too_many_arguments)]
fn attend(
    dev: &mut SimulatedGpu,
    m: &Module,
    q: DevicePtr,
    qr: DevicePtr,
    src: (
        ParamValue,
        ParamValue,
        ParamValue,
        ParamValue,
        [usize; 3],
        usize,
    ),
    tq: usize,
    tk: usize,
    dims: (usize, usize, usize, usize),
) -> Vec<f32> {
    let (heads, d1, d2, dv) = dims;
    let out = dev.alloc(tq * heads * dv * 4).unwrap();
    let shared = (4 * (d1 + d2 + dv + 64) * 4) as u32;
    let params = [
        p(out),
        p(q),
        p(qr),
        src.0,
        src.1,
        src.2,
        src.3,
        u(tq),
        u(tk),
        u(heads),
        u(1),
        u(d1),
        u(d2),
        u(dv),
        u(src.4[0]),
        u(src.4[1]),
        u(src.4[2]),
        u(tk - tq),
        u(0),
        ParamValue::F32(0.3),
        u(src.5),
    ];
    let grid = (tq as u32, heads.div_ceil(4) as u32, 1);
    dev.launch(m, "attention_f32", &cfg(grid, 128, shared), &params)
        .unwrap_or_else(|e| panic!("{e}"));
    dev.read_f32(out, tq * heads * dv).unwrap()
}

/// MLA absorbed decode over a latent cache: contiguous rows and scattered pages give the same
/// bits, and both match an f64 softmax.
#[test]
fn paged_attention_matches_contiguous_bitwise() {
    let m = load("attention.ptx");
    let (heads, d1, d2, tq, tk) = (5usize, 24usize, 8usize, 2usize, 37usize);
    let (page, shift, pages) = (8usize, 3usize, [7u32, 2, 9, 0, 4]);
    let w = d1 + d2;
    let mut rng = XorShift(0x5eed);
    let q = vec_of(&mut rng, tq * heads * d1);
    let qr = vec_of(&mut rng, tq * heads * d2);
    let lat = vec_of(&mut rng, tk * d1);
    let rope = vec_of(&mut rng, tk * d2);
    let mut dev = SimulatedGpu::new();
    let (qb, qrb) = (dev.alloc_f32(&q).unwrap(), dev.alloc_f32(&qr).unwrap());
    let (lb, rb) = (dev.alloc_f32(&lat).unwrap(), dev.alloc_f32(&rope).unwrap());
    let dims = (heads, d1, d2, d1);
    let contiguous = attend(
        &mut dev,
        &m,
        qb,
        qrb,
        (p(lb), p(rb), p(lb), NULL, [d1, d2, d1], 0),
        tq,
        tk,
        dims,
    );
    let mut store = vec![f32::NAN; 10 * page * w];
    for j in 0..tk {
        let row = pages[j / page] as usize * page + j % page;
        store[row * w..row * w + d1].copy_from_slice(&lat[j * d1..(j + 1) * d1]);
        store[row * w + d1..(row + 1) * w].copy_from_slice(&rope[j * d2..(j + 1) * d2]);
    }
    let sb = dev.alloc_f32(&store).unwrap();
    let tb = dev.alloc(pages.len() * 4).unwrap();
    dev.write_u32(tb, &pages).unwrap();
    let paged = attend(
        &mut dev,
        &m,
        qb,
        qrb,
        (
            p(sb),
            p(sb.offset(4 * d1 as u64)),
            p(sb),
            p(tb),
            [w, w, w],
            shift,
        ),
        tq,
        tk,
        dims,
    );
    for (i, (a, b)) in contiguous.iter().zip(&paged).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "element {i}: {a} vs {b}");
    }
    for i in 0..tq {
        let pos = tk - tq + i;
        for h in 0..heads {
            let s: Vec<f64> = (0..=pos)
                .map(|j| {
                    let a: f64 = (0..d1)
                        .map(|d| (q[(i * heads + h) * d1 + d] * lat[j * d1 + d]) as f64)
                        .sum();
                    let b: f64 = (0..d2)
                        .map(|d| (qr[(i * heads + h) * d2 + d] * rope[j * d2 + d]) as f64)
                        .sum();
                    0.3 * (a + b)
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..d1 {
                let want: f64 = (0..=pos)
                    .map(|j| e[j] * lat[j * d1 + d] as f64)
                    .sum::<f64>()
                    / z;
                let got = paged[(i * heads + h) * d1 + d] as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "row {i} head {h} d {d}: {got} vs {want}"
                );
            }
        }
    }
}

/// One copy_rows_b32 launch.
#[allow(clippy::too_many_arguments)]
fn copy(
    dev: &mut SimulatedGpu,
    m: &Module,
    dst: (DevicePtr, ParamValue, [usize; 4]),
    src: (DevicePtr, ParamValue, [usize; 4]),
    rows: usize,
    heads: usize,
    cols: usize,
    shift: usize,
) {
    let [ds, dh, dc, dr] = dst.2;
    let [ss, sh, sc, sr] = src.2;
    let params = [
        p(dst.0),
        p(src.0),
        dst.1,
        src.1,
        u(rows),
        u(heads),
        u(cols),
        u(ds),
        u(dh),
        u(dc),
        u(dr),
        u(ss),
        u(sh),
        u(sc),
        u(sr),
        u(shift),
    ];
    let grid = (rows as u32, heads as u32, 1);
    dev.launch(m, "copy_rows_b32", &cfg(grid, 128, 0), &params)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Positions 5..19 of a sequence written into 4-row pages through a block table (a kv_write of
/// the key columns at column 0 of 6-wide rows), then positions 0..19 read back (a kv_read), and a
/// per-head transpose [2, 3 heads, 4] -> [3 heads, 2, 4].
#[test]
fn copy_rows_scatters_into_pages_gathers_back_and_transposes() {
    let m = load("copy.ptx");
    let mut dev = SimulatedGpu::new();
    let table = [3u32, 0, 5, 1, 4];
    let (w, kw, t, start) = (6usize, 5usize, 14usize, 5usize);
    let tb = dev.alloc(table.len() * 4).unwrap();
    dev.write_u32(tb, &table).unwrap();
    let store = dev.alloc(6 * 4 * w * 4).unwrap();
    let key: Vec<f32> = (0..t * kw).map(|i| i as f32 + 0.5).collect();
    let kb = dev.alloc_f32(&key).unwrap();
    copy(
        &mut dev,
        &m,
        (store, p(tb), [w, 0, 0, start]),
        (kb, NULL, [kw, 0, 0, 0]),
        t,
        1,
        kw,
        2,
    );
    let len = start + t;
    let out = dev.alloc(len * w * 4).unwrap();
    copy(
        &mut dev,
        &m,
        (out, NULL, [w, 0, 0, 0]),
        (store, p(tb), [w, 0, 0, 0]),
        len,
        1,
        w,
        2,
    );
    let got = dev.read_f32(out, len * w).unwrap();
    for pos in 0..len {
        for c in 0..w {
            let want = if pos >= start && c < kw {
                key[(pos - start) * kw + c]
            } else {
                0.0
            };
            assert_eq!(got[pos * w + c], want, "position {pos} column {c}");
        }
    }
    let x: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let xb = dev.alloc_f32(&x).unwrap();
    let xt = dev.alloc(24 * 4).unwrap();
    copy(
        &mut dev,
        &m,
        (xt, NULL, [4, 8, 0, 0]),
        (xb, NULL, [12, 4, 0, 0]),
        2,
        3,
        4,
        0,
    );
    let got = dev.read_f32(xt, 24).unwrap();
    for h in 0..3 {
        for r in 0..2 {
            for c in 0..4 {
                assert_eq!(got[h * 8 + r * 4 + c], x[r * 12 + h * 4 + c]);
            }
        }
    }
}

/// rope_f32 from a first position, half-split layout, into a copy: the other columns are copied
/// exactly and the rotated pairs match an f64 rotation.
#[test]
fn rope_from_first_position_into_a_copy() {
    let m = load("rope.ptx");
    let (rows, heads, stride, offset, rot, first) = (3usize, 2usize, 10usize, 4usize, 6usize, 41);
    let mut rng = XorShift(7);
    let x = vec_of(&mut rng, rows * heads * stride);
    let inv: Vec<f32> = (0..rot / 2)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / rot as f32))
        .collect();
    let mut dev = SimulatedGpu::new();
    let (xb, fb) = (dev.alloc_f32(&x).unwrap(), dev.alloc_f32(&inv).unwrap());
    let out = dev.alloc(x.len() * 4).unwrap();
    let params = [
        p(out),
        p(xb),
        p(fb),
        ParamValue::F32(1.0),
        u(rows),
        u(first),
        u(heads),
        u(stride),
        u(offset),
        u(rot),
        u(1),
    ];
    dev.launch(
        &m,
        "rope_f32",
        &cfg((rows as u32, heads as u32, 1), 64, 0),
        &params,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got = dev.read_f32(out, x.len()).unwrap();
    for r in 0..rows {
        for h in 0..heads {
            let base = (r * heads + h) * stride;
            for c in (0..offset).chain(offset + rot..stride) {
                assert_eq!(got[base + c].to_bits(), x[base + c].to_bits());
            }
            for i in 0..rot / 2 {
                let angle = ((first + r) as f32 * inv[i]) as f64;
                let (a, b) = (
                    x[base + offset + i] as f64,
                    x[base + offset + i + rot / 2] as f64,
                );
                let want0 = a * angle.cos() - b * angle.sin();
                let want1 = b * angle.cos() + a * angle.sin();
                assert!((got[base + offset + i] as f64 - want0).abs() < 1e-6);
                assert!((got[base + offset + i + rot / 2] as f64 - want1).abs() < 1e-6);
            }
        }
    }
}

/// moe_sort over experts {2, 5, 6} of a routing over 8: entries of other experts get no position,
/// the rest are placed stably by local expert; then moe_combine with the shared expert and the
/// residual, and moe_index_merge of two parts.
#[test]
fn moe_sort_subset_combine_and_merge() {
    let m = load("permute.ptx");
    let mut dev = SimulatedGpu::new();
    let ids = [2u32, 5, 0, 6, 5, 7, 1, 2]; // 4 tokens x top-2
    let map = [u32::MAX, u32::MAX, 0, u32::MAX, u32::MAX, 1, 2];
    let (ib, mb) = (dev.alloc(32).unwrap(), dev.alloc(28).unwrap());
    dev.write_u32(ib, &ids).unwrap();
    dev.write_u32(mb, &map).unwrap();
    let (off, order, inv) = (
        dev.alloc(16).unwrap(),
        dev.alloc(32).unwrap(),
        dev.alloc(32).unwrap(),
    );
    let params = [
        p(off),
        p(order),
        p(inv),
        p(ib),
        u(8),
        u(3),
        p(mb),
        u(map.len()),
    ];
    dev.launch(&m, "moe_sort", &cfg((1, 1, 1), 32, 0), &params)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dev.read_u32(off, 4).unwrap(), vec![0, 2, 4, 5]);
    assert_eq!(dev.read_u32(order, 5).unwrap(), vec![0, 7, 1, 4, 3]);
    let x = u32::MAX;
    assert_eq!(dev.read_u32(inv, 8).unwrap(), vec![0, 2, x, 4, 3, x, x, 1]);

    // combine: hidden 3; y rows = sorted position * 10 + column
    let hidden = 3;
    let y: Vec<f32> = (0..5 * hidden)
        .map(|i| (i / hidden * 10 + i % hidden) as f32)
        .collect();
    let w: Vec<f32> = (0..8).map(|i| 0.25 * (i + 1) as f32).collect();
    let res: Vec<f32> = (0..4 * hidden).map(|i| 100.0 * i as f32).collect();
    let shared: Vec<f32> = (0..4 * hidden).map(|i| -(i as f32)).collect();
    let (yb, wb) = (dev.alloc_f32(&y).unwrap(), dev.alloc_f32(&w).unwrap());
    let (rb, sb) = (
        dev.alloc_f32(&res).unwrap(),
        dev.alloc_f32(&shared).unwrap(),
    );
    let out = dev.alloc(4 * hidden * 4).unwrap();
    let params = [
        p(out),
        p(yb),
        p(wb),
        p(inv),
        u(4),
        u(hidden),
        u(2),
        p(rb),
        p(sb),
    ];
    dev.launch(&m, "moe_combine", &cfg((4, 1, 1), 256, 0), &params)
        .unwrap_or_else(|e| panic!("{e}"));
    let got = dev.read_f32(out, 4 * hidden).unwrap();
    let invv = [0u32, 2, x, 4, 3, x, x, 1];
    for t in 0..4 {
        for c in 0..hidden {
            let mut acc = 0.0f32;
            for j in 0..2 {
                let e = t * 2 + j;
                if invv[e] != x {
                    acc += w[e] * y[invv[e] as usize * hidden + c];
                }
            }
            acc += shared[t * hidden + c];
            let want = res[t * hidden + c] + acc;
            assert_eq!(
                got[t * hidden + c].to_bits(),
                want.to_bits(),
                "token {t} col {c}"
            );
        }
    }

    // merge: part A has inv [0, x, 1, x], part B [x, 0, x, 1] -> [0, 2, 1, 3]
    let (a, b, merged) = (
        dev.alloc(16).unwrap(),
        dev.alloc(16).unwrap(),
        dev.alloc(16).unwrap(),
    );
    dev.write_u32(a, &[0, x, 1, x]).unwrap();
    dev.write_u32(b, &[x, 0, x, 1]).unwrap();
    for (part, offset, first) in [(a, 0, 1), (b, 2, 0)] {
        let params = [p(merged), p(part), u(4), u(offset), u(first)];
        dev.launch(&m, "moe_index_merge", &cfg((1, 1, 1), 256, 0), &params)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(dev.read_u32(merged, 4).unwrap(), vec![0, 2, 1, 3]);
}

/// check_finite_f32 records the first failing code (a later failing launch does not overwrite
/// it), argmax_f32 then writes its sentinel, flag_copy_b32 marks word 0; with a clear flag both
/// behave normally.
#[test]
fn non_finite_flag_is_sticky_and_reported_by_argmax_and_flag_copy() {
    let ew = load("elementwise.ptx");
    let am = load("argmax.ptx");
    let mut dev = SimulatedGpu::new();
    let flag = dev.alloc(12).unwrap();
    let x = [1.0f32, 3.0, 2.0, 0.5, 7.0, -1.0];
    let xb = dev.alloc_f32(&x).unwrap();
    let ids = dev.alloc(8).unwrap();
    let argmax = |dev: &mut SimulatedGpu| {
        let params = [p(ids), p(xb), u(2), u(3), p(flag)];
        dev.launch(&am, "argmax_f32", &cfg((2, 1, 1), 256, 0), &params)
            .unwrap_or_else(|e| panic!("{e}"));
        dev.read_u32(ids, 2).unwrap()
    };
    let check = |dev: &mut SimulatedGpu, v: DevicePtr, n: usize, code: usize| {
        let params = [p(flag), p(v), u(n), u(code)];
        dev.launch(&ew, "check_finite_f32", &cfg((1, 1, 1), 256, 0), &params)
            .unwrap_or_else(|e| panic!("{e}"));
    };
    check(&mut dev, xb, 6, 1);
    assert_eq!(dev.read_u32(flag, 3).unwrap(), vec![0, 0, 0]);
    assert_eq!(argmax(&mut dev), vec![1, 1]);
    let bad = dev.alloc_f32(&[0.0, f32::INFINITY, 2.0]).unwrap();
    check(&mut dev, bad, 3, 7);
    let worse = dev.alloc_f32(&[f32::NAN]).unwrap();
    check(&mut dev, worse, 1, 9);
    let f = dev.read_u32(flag, 3).unwrap();
    assert_eq!((f[0], f[1], f32::from_bits(f[2])), (7, 1, f32::INFINITY));
    assert_eq!(argmax(&mut dev), vec![u32::MAX, u32::MAX]);
    let dst = dev.alloc(24).unwrap();
    let params = [p(dst), p(xb), u(6), p(flag), ParamValue::U32(0xABCD)];
    dev.launch(&ew, "flag_copy_b32", &cfg((1, 1, 1), 256, 0), &params)
        .unwrap_or_else(|e| panic!("{e}"));
    let got = dev.read_u32(dst, 6).unwrap();
    assert_eq!(got[0], 0xABCD);
    assert_eq!(
        got[1..],
        x[1..].iter().map(|v| v.to_bits()).collect::<Vec<_>>()[..]
    );
    dev.write_u32(flag, &[0, 0, 0]).unwrap();
    dev.launch(&ew, "flag_copy_b32", &cfg((1, 1, 1), 256, 0), &params)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dev.read_f32(dst, 6).unwrap(), x.to_vec());
    // add_f32
    let sum = dev.alloc(24).unwrap();
    let params = [p(sum), p(xb), p(xb), u(6)];
    dev.launch(&ew, "add_f32", &cfg((1, 1, 1), 256, 0), &params)
        .unwrap_or_else(|e| panic!("{e}"));
    let want: Vec<f32> = x.iter().map(|v| v + v).collect();
    assert_eq!(dev.read_f32(sum, 6).unwrap(), want);
}
