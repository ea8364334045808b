//! mma.sync fragment semantics (bf16 / f16 / fp8 / tf32 inputs, f32 and f16
//! accumulators, m16n8k8/k16/k32) against a naive matmul on random inputs, with the
//! register fragments built on the host from the PTX ISA layouts.

#![allow(clippy::needless_range_loop, clippy::manual_is_multiple_of)]

use crate::helpers::{bf, bf_val, hf, hf_val, XorShift, HDR_SM89 as HDR};
use troupe_ptx_interp::*;

/// Load `na+nb+nc` words per lane, run `mma`, store `nd` words per lane.
fn run_mma(
    instr: &str,
    na: usize,
    nb: usize,
    nc: usize,
    nd: usize,
    regs: &[Vec<u32>],
) -> Vec<Vec<u32>> {
    let nt = na + nb + nc;
    let list = |p: &str, n: usize| {
        (0..n)
            .map(|i| format!("%{p}{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut body = String::new();
    for (p, n, off) in [("a", na, 0), ("b", nb, na), ("c", nc, na + nb)] {
        for i in 0..n {
            body += &format!("ld.global.u32 %{p}{i}, [%rd3+{}];\n", 4 * (off + i));
        }
    }
    body += &format!(
        "{instr} {{{}}}, {{{}}}, {{{}}}, {{{}}};\n",
        list("d", nd),
        list("a", na),
        list("b", nb),
        list("c", nc)
    );
    for i in 0..nd {
        body += &format!("st.global.u32 [%rd4+{}], %d{i};\n", 4 * i);
    }
    let src = format!(
        "{HDR}.visible .entry k(.param .u64 out, .param .u64 inp)\n{{\n\
         .reg .b32 %r<8>;\n.reg .b64 %rd<8>;\n.reg .b32 %a<4>;\n.reg .b32 %b<2>;\n.reg .b32 %c<4>;\n.reg .b32 %d<4>;\n\
         ld.param.u64 %rd1, [out];\nld.param.u64 %rd2, [inp];\nmov.u32 %r1, %laneid;\n\
         mul.lo.u32 %r2, %r1, {nt};\nmul.wide.u32 %rd3, %r2, 4;\nadd.u64 %rd3, %rd2, %rd3;\n\
         mul.lo.u32 %r3, %r1, {nd};\nmul.wide.u32 %rd4, %r3, 4;\nadd.u64 %rd4, %rd1, %rd4;\n{body}ret;\n}}\n"
    );
    let m = Module::parse(&src).unwrap_or_else(|e| panic!("{e}"));
    let mut dev = SimulatedGpu::new();
    let flat: Vec<u32> = regs.iter().flatten().copied().collect();
    assert_eq!(flat.len(), 32 * nt);
    let pi = dev.alloc(flat.len() * 4).unwrap();
    dev.write_u32(pi, &flat).unwrap();
    let po = dev.alloc(32 * nd * 4).unwrap();
    dev.launch(
        &m,
        "k",
        &LaunchConfig::linear(1, 32),
        &[ParamValue::Ptr(po), ParamValue::Ptr(pi)],
    )
    .unwrap();
    let out = dev.read_u32(po, 32 * nd).unwrap();
    out.chunks(nd).map(|c| c.to_vec()).collect()
}

/// Reference: D = C + A·B in f32, k ascending, each product exact.
fn reference(a: &[Vec<f32>], b: &[Vec<f32>], c: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let k = b.len();
    (0..16)
        .map(|i| {
            (0..8)
                .map(|j| {
                    let mut acc = c[i][j];
                    for kk in 0..k {
                        acc += a[i][kk] * b[kk][j];
                    }
                    acc
                })
                .collect()
        })
        .collect()
}

/// Scatter/gather helpers for the documented m16n8 C/D layout (f32 accumulators).
fn c_regs(c: &[Vec<f32>], lane: usize) -> Vec<u32> {
    let (g, t) = (lane / 4, lane % 4);
    (0..4)
        .map(|i| c[g + 8 * (i / 2)][2 * t + i % 2].to_bits())
        .collect()
}
fn d_from(d: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let mut m = vec![vec![0f32; 8]; 16];
    for (lane, regs) in d.iter().enumerate() {
        let (g, t) = (lane / 4, lane % 4);
        for i in 0..4 {
            m[g + 8 * (i / 2)][2 * t + i % 2] = f32::from_bits(regs[i]);
        }
    }
    m
}

fn check(d: &[Vec<f32>], want: &[Vec<f32>], exact_f64: Option<&[Vec<f64>]>) {
    for i in 0..16 {
        for j in 0..8 {
            assert_eq!(
                d[i][j].to_bits(),
                want[i][j].to_bits(),
                "D[{i}][{j}] {} vs {}",
                d[i][j],
                want[i][j]
            );
            if let Some(e) = exact_f64 {
                assert!((d[i][j] as f64 - e[i][j]).abs() < 1e-4, "D[{i}][{j}]");
            }
        }
    }
}

/// A `rows` × `cols` matrix of `f(rng)` values, drawn row by row.
fn rand_mat<T>(
    rng: &mut XorShift,
    rows: usize,
    cols: usize,
    mut f: impl FnMut(&mut XorShift) -> T,
) -> Vec<Vec<T>> {
    (0..rows)
        .map(|_| (0..cols).map(|_| f(rng)).collect())
        .collect()
}

/// Element-wise `f` of a matrix.
fn map_mat<T: Copy, U>(m: &[Vec<T>], f: impl Fn(T) -> U) -> Vec<Vec<U>> {
    m.iter()
        .map(|r| r.iter().map(|&x| f(x)).collect())
        .collect()
}

/// Two 16-bit elements packed into one register, `lo` in the low half.
fn pack2(lo: u16, hi: u16) -> u32 {
    lo as u32 | (hi as u32) << 16
}

/// The m16n8k16 A (4 registers) and B (2 registers) fragments of 16-bit inputs for `lane`.
fn ab_regs_k16(a: &[Vec<u16>], b: &[Vec<u16>], lane: usize) -> Vec<u32> {
    let (g, t) = (lane / 4, lane % 4);
    let mut r = Vec::new();
    for i in 0..4 {
        let (row, col) = (g + 8 * (i % 2), 2 * t + 8 * (i / 2));
        r.push(pack2(a[row][col], a[row][col + 1]));
    }
    for i in 0..2 {
        let k = 2 * t + 8 * i;
        r.push(pack2(b[k][g], b[k + 1][g]));
    }
    r
}

#[test]
fn mma_m16n8k16_bf16_and_f16_against_naive_matmul() {
    for (ty, enc, dec) in [
        ("bf16", bf as fn(f32) -> u16, bf_val as fn(u16) -> f32),
        ("f16", hf, hf_val),
    ] {
        let mut rng = XorShift(0x1234_5678_9ABC ^ ty.len() as u64);
        let a = rand_mat(&mut rng, 16, 16, |r| enc(r.unit()));
        let b = rand_mat(&mut rng, 16, 8, |r| enc(r.unit()));
        let c = rand_mat(&mut rng, 16, 8, |r| r.unit());
        let regs: Vec<Vec<u32>> = (0..32)
            .map(|lane| {
                let mut r = ab_regs_k16(&a, &b, lane);
                r.extend(c_regs(&c, lane));
                r
            })
            .collect();
        let d = run_mma(
            &format!("mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32"),
            4,
            2,
            4,
            4,
            &regs,
        );
        let (af, bf_) = (map_mat(&a, dec), map_mat(&b, dec));
        let exact: Vec<Vec<f64>> = (0..16)
            .map(|i| {
                (0..8)
                    .map(|j| {
                        c[i][j] as f64
                            + (0..16)
                                .map(|k| af[i][k] as f64 * bf_[k][j] as f64)
                                .sum::<f64>()
                    })
                    .collect()
            })
            .collect();
        check(&d_from(&d), &reference(&af, &bf_, &c), Some(&exact));
    }
}

#[test]
fn mma_m16n8k8_bf16_and_f16_accumulator() {
    let mut rng = XorShift(77);
    let a = rand_mat(&mut rng, 16, 8, |r| bf(r.unit()));
    let b = rand_mat(&mut rng, 8, 8, |r| bf(r.unit()));
    let c = rand_mat(&mut rng, 16, 8, |r| r.unit());
    let regs: Vec<Vec<u32>> = (0..32)
        .map(|lane| {
            let (g, t) = (lane / 4, lane % 4);
            let mut r = vec![
                pack2(a[g][2 * t], a[g][2 * t + 1]),
                pack2(a[g + 8][2 * t], a[g + 8][2 * t + 1]),
                pack2(b[2 * t][g], b[2 * t + 1][g]),
            ];
            r.extend(c_regs(&c, lane));
            r
        })
        .collect();
    let d = run_mma(
        "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32",
        2,
        1,
        4,
        4,
        &regs,
    );
    let (af, bff) = (map_mat(&a, bf_val), map_mat(&b, bf_val));
    check(&d_from(&d), &reference(&af, &bff, &c), None);

    // f16 inputs, f16 accumulators (f16x2 C/D registers), m16n8k16
    let a = rand_mat(&mut rng, 16, 16, |r| hf(r.unit()));
    let b = rand_mat(&mut rng, 16, 8, |r| hf(r.unit()));
    let c = rand_mat(&mut rng, 16, 8, |r| hf(r.unit()));
    let regs: Vec<Vec<u32>> = (0..32)
        .map(|lane| {
            let (g, t) = (lane / 4, lane % 4);
            let mut r = ab_regs_k16(&a, &b, lane);
            for i in 0..2 {
                r.push(pack2(c[g + 8 * i][2 * t], c[g + 8 * i][2 * t + 1]));
            }
            r
        })
        .collect();
    let d = run_mma(
        "mma.sync.aligned.m16n8k16.row.col.f16.f16.f16.f16",
        4,
        2,
        2,
        2,
        &regs,
    );
    let want = reference(
        &map_mat(&a, hf_val),
        &map_mat(&b, hf_val),
        &map_mat(&c, hf_val),
    );
    for (lane, regs) in d.iter().enumerate() {
        let (g, t) = (lane / 4, lane % 4);
        for i in 0..2 {
            for h in 0..2 {
                let got = (regs[i] >> (16 * h)) as u16;
                assert_eq!(
                    got,
                    hf(want[g + 8 * i][2 * t + h]),
                    "lane {lane} reg {i} half {h}"
                );
            }
        }
    }
}

#[test]
fn mma_m16n8k32_e4m3_and_m16n8k8_tf32() {
    let mut rng = XorShift(4242);
    let code = |rng: &mut XorShift| -> u8 {
        (rng.next() % 0x77) as u8 | if rng.next() % 2 == 0 { 0x80 } else { 0 }
    };
    let val = |c: u8| -> f32 {
        let (e, m) = ((c >> 3) & 0xF, c & 7);
        let mag = if e == 0 {
            m as f32 * 2f32.powi(-9)
        } else {
            (1.0 + m as f32 / 8.0) * 2f32.powi(e as i32 - 7)
        };
        if c & 0x80 != 0 {
            -mag
        } else {
            mag
        }
    };
    let a = rand_mat(&mut rng, 16, 32, code);
    let b = rand_mat(&mut rng, 32, 8, code);
    let c = rand_mat(&mut rng, 16, 8, |r| r.unit());
    let regs: Vec<Vec<u32>> = (0..32)
        .map(|lane| {
            let (g, t) = (lane / 4, lane % 4);
            let mut r = Vec::new();
            for i in 0..4 {
                let (row, col) = (g + 8 * (i % 2), 4 * t + 16 * (i / 2));
                r.push((0..4).fold(0u32, |acc, j| acc | (a[row][col + j] as u32) << (8 * j)));
            }
            for i in 0..2 {
                let k = 4 * t + 16 * i;
                r.push((0..4).fold(0u32, |acc, j| acc | (b[k + j][g] as u32) << (8 * j)));
            }
            r.extend(c_regs(&c, lane));
            r
        })
        .collect();
    let d = run_mma(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32",
        4,
        2,
        4,
        4,
        &regs,
    );
    check(
        &d_from(&d),
        &reference(&map_mat(&a, val), &map_mat(&b, val), &c),
        None,
    );

    // tf32: low 13 mantissa bits of the inputs are ignored
    let a = rand_mat(&mut rng, 16, 8, |r| r.unit());
    let b = rand_mat(&mut rng, 8, 8, |r| r.unit());
    let c = rand_mat(&mut rng, 16, 8, |r| r.unit());
    let regs: Vec<Vec<u32>> = (0..32)
        .map(|lane| {
            let (g, t) = (lane / 4, lane % 4);
            let mut r = vec![
                a[g][t].to_bits(),
                a[g + 8][t].to_bits(),
                a[g][t + 4].to_bits(),
                a[g + 8][t + 4].to_bits(),
            ];
            r.push(b[t][g].to_bits());
            r.push(b[t + 4][g].to_bits());
            r.extend(c_regs(&c, lane));
            r
        })
        .collect();
    let d = run_mma(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
        4,
        2,
        4,
        4,
        &regs,
    );
    let tr = |m: &Vec<Vec<f32>>| map_mat(m, |x: f32| f32::from_bits(x.to_bits() & 0xFFFF_E000));
    check(&d_from(&d), &reference(&tr(&a), &tr(&b), &c), None);
}

#[test]
fn mma_requires_a_converged_warp() {
    let src = format!(
        "{HDR}.visible .entry k()\n{{\n.reg .pred %p<2>;\n.reg .b32 %r<20>;\n.reg .f32 %f<8>;\n\
         mov.u32 %r1, %laneid;\nsetp.lt.u32 %p1, %r1, 4;\n@%p1 bra END;\n\
         mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{%f0,%f1,%f2,%f3}}, {{%r2,%r3,%r4,%r5}}, {{%r6,%r7}}, {{%f4,%f5,%f6,%f7}};\n\
         END:\nret;\n}}\n"
    );
    let m = Module::parse(&src).unwrap();
    let e = SimulatedGpu::new()
        .launch(&m, "k", &LaunchConfig::linear(1, 32), &[])
        .unwrap_err();
    assert!(matches!(e, PtxError::Divergence { line: 12, .. }), "{e}");
    let bad = src.replace("{%r6,%r7}", "{%r6}");
    assert!(matches!(Module::parse(&bad), Err(PtxError::Parse { .. })));
    let unsup = src.replace("m16n8k16.row.col", "m16n8k16.col.col");
    assert!(matches!(
        Module::parse(&unsup),
        Err(PtxError::Unsupported { .. })
    ));
}
