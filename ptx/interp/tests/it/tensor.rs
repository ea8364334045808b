//! ldmatrix (x1/x2/x4, .trans) layouts, an ldmatrix→mma GEMM tile from shared memory,
//! and cp.async with and without waits (stale shared data observed when the wait is
//! missing), zero-fill, ignore-src and commit groups.

#![allow(clippy::needless_range_loop, clippy::manual_is_multiple_of)]

use crate::helpers::{bf, bf_val, linear_cfg, XorShift, HDR_SM89 as HDR};
use troupe_ptx_interp::*;

/// smem holds 4 matrices of 8×8 b16, element (m, r, c) = m<<8 | r<<4 | c; row r of
/// matrix m lives at byte (m*8 + r) * 48. Lane l supplies the address of row l.
fn run_ldmatrix(variant: &str, nregs: usize) -> Vec<Vec<u32>> {
    let list = (0..nregs)
        .map(|i| format!("%d{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let src = format!(
        "{HDR}.visible .entry k(.param .u64 out)\n{{\n.reg .pred %p<2>;\n.reg .b32 %r<20>;\n.reg .b64 %rd<8>;\n.reg .b32 %d<4>;\n\
         .shared .align 16 .b8 sm[1536];\n\
         ld.param.u64 %rd1, [out];\nmov.u32 %r1, %laneid;\n\
         mov.u32 %r2, 0;\nFILL:\nshr.u32 %r3, %r2, 3;\nand.b32 %r4, %r2, 7;\nshr.u32 %r5, %r3, 3;\nand.b32 %r6, %r3, 7;\n\
         shl.b32 %r7, %r5, 8;\nshl.b32 %r8, %r6, 4;\nor.b32 %r7, %r7, %r8;\nor.b32 %r7, %r7, %r4;\ncvt.u16.u32 %rs1, %r7;\n\
         mul.lo.u32 %r9, %r3, 48;\nshl.b32 %r10, %r4, 1;\nadd.u32 %r9, %r9, %r10;\nmov.u32 %r11, sm;\nadd.u32 %r9, %r9, %r11;\n\
         st.shared.u16 [%r9], %rs1;\nadd.u32 %r2, %r2, 32;\nsetp.lt.u32 %p1, %r2, 256;\n@%p1 bra FILL;\n\
         bar.sync 0;\nmul.lo.u32 %r12, %r1, 48;\nadd.u32 %r12, %r12, %r11;\n\
         ldmatrix.sync.aligned.m8n8.{variant}.shared.b16 {{{list}}}, [%r12];\n\
         mul.wide.u32 %rd2, %r1, 16;\nadd.u64 %rd2, %rd1, %rd2;\n{}ret;\n}}\n",
        (0..nregs).map(|i| format!("st.global.u32 [%rd2+{}], %d{i};\n", 4 * i)).collect::<String>()
    )
    .replace(".reg .b32 %d<4>;", ".reg .b32 %d<4>;\n.reg .b16 %rs<2>;")
    .replace("mov.u32 %r2, 0;", "mov.u32 %r2, %laneid;");
    let m = Module::parse(&src).unwrap_or_else(|e| panic!("{e}"));
    let mut dev = SimulatedGpu::new();
    let po = dev.alloc(32 * 16).unwrap();
    let cfg = linear_cfg(1, 32, true);
    dev.launch(&m, "k", &cfg, &[ParamValue::Ptr(po)]).unwrap();
    let v = dev.read_u32(po, 32 * 4).unwrap();
    v.chunks(4).map(|c| c[..nregs].to_vec()).collect()
}

#[test]
fn ldmatrix_layouts() {
    let el = |m: u32, r: u32, c: u32| (m << 8) | (r << 4) | c;
    for (variant, n, trans) in [
        ("x1", 1, false),
        ("x2", 2, false),
        ("x4", 4, false),
        ("x4.trans", 4, true),
        ("x2.trans", 2, true),
    ] {
        let got = run_ldmatrix(variant, n);
        for lane in 0..32u32 {
            for m in 0..n as u32 {
                let (r, c) = (lane / 4, 2 * (lane % 4));
                let (lo, hi) = if trans {
                    (el(m, c, r), el(m, c + 1, r))
                } else {
                    (el(m, r, c), el(m, r, c + 1))
                };
                assert_eq!(
                    got[lane as usize][m as usize],
                    lo | hi << 16,
                    "{variant} lane {lane} matrix {m}"
                );
            }
        }
    }
}

#[test]
fn ldmatrix_feeds_mma_for_a_full_tile() {
    // A: 16x16 bf16 row-major (stride 32 B), B: 16x8 bf16 row-major [k][n] (stride 16 B)
    let mut rng = XorShift(99);
    let a: Vec<u16> = (0..256).map(|_| bf(rng.unit())).collect();
    let b: Vec<u16> = (0..128).map(|_| bf(rng.unit())).collect();
    let src = format!(
        "{HDR}.visible .entry k(.param .u64 out, .param .u64 pa, .param .u64 pb)\n{{\n\
         .reg .pred %p<2>;\n.reg .b32 %r<24>;\n.reg .b64 %rd<12>;\n.reg .f32 %f<8>;\n\
         .shared .align 16 .b8 sa[512];\n.shared .align 16 .b8 sb[256];\n\
         ld.param.u64 %rd1, [out];\nld.param.u64 %rd2, [pa];\nld.param.u64 %rd3, [pb];\nmov.u32 %r1, %laneid;\n\
         mul.wide.u32 %rd4, %r1, 16;\nadd.u64 %rd5, %rd2, %rd4;\nld.global.v4.u32 {{%r2,%r3,%r4,%r5}}, [%rd5];\n\
         shl.b32 %r6, %r1, 4;\nmov.u32 %r7, sa;\nadd.u32 %r8, %r7, %r6;\nst.shared.v4.u32 [%r8], {{%r2,%r3,%r4,%r5}};\n\
         setp.lt.u32 %p1, %r1, 16;\n@!%p1 bra SKIPB;\nadd.u64 %rd6, %rd3, %rd4;\nld.global.v4.u32 {{%r2,%r3,%r4,%r5}}, [%rd6];\n\
         mov.u32 %r9, sb;\nadd.u32 %r10, %r9, %r6;\nst.shared.v4.u32 [%r10], {{%r2,%r3,%r4,%r5}};\nSKIPB:\nbar.sync 0;\n\
         and.b32 %r11, %r1, 15;\nshl.b32 %r11, %r11, 5;\nshr.u32 %r12, %r1, 4;\nshl.b32 %r12, %r12, 4;\nadd.u32 %r11, %r11, %r12;\nadd.u32 %r11, %r11, %r7;\n\
         ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{%r13,%r14,%r15,%r16}}, [%r11];\n\
         mov.u32 %r9, sb;\nand.b32 %r17, %r1, 15;\nshl.b32 %r17, %r17, 4;\nadd.u32 %r17, %r17, %r9;\n\
         ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {{%r18,%r19}}, [%r17];\n\
         mov.f32 %f4, 0f00000000;\nmov.f32 %f5, 0f00000000;\nmov.f32 %f6, 0f00000000;\nmov.f32 %f7, 0f00000000;\n\
         mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{%f0,%f1,%f2,%f3}}, {{%r13,%r14,%r15,%r16}}, {{%r18,%r19}}, {{%f4,%f5,%f6,%f7}};\n\
         shr.u32 %r20, %r1, 2;\nand.b32 %r21, %r1, 3;\nshl.b32 %r21, %r21, 1;\nmad.lo.u32 %r22, %r20, 8, %r21;\n\
         mul.wide.u32 %rd7, %r22, 4;\nadd.u64 %rd7, %rd1, %rd7;\nst.global.v2.f32 [%rd7], {{%f0,%f1}};\nst.global.v2.f32 [%rd7+256], {{%f2,%f3}};\n\
         ret;\n}}\n"
    );
    let m = Module::parse(&src).unwrap_or_else(|e| panic!("{e}"));
    let mut dev = SimulatedGpu::new();
    let pa = dev.alloc(512).unwrap();
    dev.write_u16(pa, &a).unwrap();
    let pb = dev.alloc(256).unwrap();
    dev.write_u16(pb, &b).unwrap();
    let po = dev.alloc(16 * 8 * 4).unwrap();
    let cfg = linear_cfg(1, 32, true);
    dev.launch(
        &m,
        "k",
        &cfg,
        &[
            ParamValue::Ptr(po),
            ParamValue::Ptr(pa),
            ParamValue::Ptr(pb),
        ],
    )
    .unwrap();
    let d = dev.read_f32(po, 128).unwrap();
    for i in 0..16 {
        for j in 0..8 {
            let mut acc = 0f32;
            for k in 0..16 {
                acc += bf_val(a[i * 16 + k]) * bf_val(b[k * 8 + j]);
            }
            assert_eq!(d[i * 8 + j].to_bits(), acc.to_bits(), "D[{i}][{j}]");
        }
    }
}

fn cp_async_kernel(wait: &str, extra: &str) -> Module {
    Module::parse(&format!(
        "{HDR}.visible .entry k(.param .u64 out, .param .u64 inp)\n{{\n\
         .reg .pred %p<4>;\n.reg .b32 %r<20>;\n.reg .b64 %rd<12>;\n.shared .align 16 .b8 sm[1024];\n\
         ld.param.u64 %rd1, [out];\nld.param.u64 %rd2, [inp];\nmov.u32 %r1, %tid.x;\n\
         shl.b32 %r2, %r1, 4;\nmov.u32 %r3, sm;\nadd.u32 %r4, %r3, %r2;\ncvt.u64.u32 %rd3, %r2;\nadd.u64 %rd4, %rd2, %rd3;\n\
         {extra}\ncp.async.commit_group;\n{wait}\nbar.sync 0;\n\
         add.u32 %r5, %r1, 1;\nand.b32 %r5, %r5, 63;\nshl.b32 %r5, %r5, 4;\nadd.u32 %r5, %r5, %r3;\n\
         ld.shared.v4.u32 {{%r6,%r7,%r8,%r9}}, [%r5];\n\
         shl.b32 %r10, %r1, 4;\ncvt.u64.u32 %rd5, %r10;\nadd.u64 %rd5, %rd1, %rd5;\nst.global.v4.u32 [%rd5], {{%r6,%r7,%r8,%r9}};\nret;\n}}\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn run_cp(m: &Module, race: bool) -> Result<Vec<u32>, PtxError> {
    let mut dev = SimulatedGpu::new();
    let input: Vec<u32> = (0..256).map(|i| 0x1000 + i).collect();
    let pi = dev.alloc(1024)?;
    dev.write_u32(pi, &input)?;
    let po = dev.alloc(1024)?;
    let cfg = linear_cfg(2, 64, race);
    dev.launch(m, "k", &cfg, &[ParamValue::Ptr(po), ParamValue::Ptr(pi)])?;
    dev.read_u32(po, 256)
}

#[test]
fn cp_async_with_and_without_wait() {
    let copy = "cp.async.cg.shared.global [%r4], [%rd4], 16;";
    let good = run_cp(&cp_async_kernel("cp.async.wait_group 0;", copy), true).unwrap();
    for t in 0..64usize {
        let s = (t + 1) % 64;
        assert_eq!(
            &good[t * 4..t * 4 + 4],
            &[
                0x1000 + 4 * s as u32,
                0x1001 + 4 * s as u32,
                0x1002 + 4 * s as u32,
                0x1003 + 4 * s as u32
            ]
        );
    }
    let all = run_cp(&cp_async_kernel("cp.async.wait_all;", copy), false).unwrap();
    assert_eq!(all, good);
    // missing wait: the barrier does not complete the copies, readers see stale smem
    let stale = run_cp(&cp_async_kernel("", copy), false).unwrap();
    assert!(
        stale.iter().all(|&w| w == 0xFFFF_FFFF),
        "{:x?}",
        &stale[..8]
    );
    // zero-fill: src-size 8 of 16 bytes
    let zf = run_cp(
        &cp_async_kernel(
            "cp.async.wait_group 0;",
            "cp.async.cg.shared.global [%r4], [%rd4], 16, 8;",
        ),
        false,
    )
    .unwrap();
    assert_eq!(&zf[..4], &[0x1004, 0x1005, 0, 0]);
    // ignore-src predicate: odd threads write zeros
    let ig = run_cp(
        &cp_async_kernel(
            "cp.async.wait_all;",
            "and.b32 %r15, %r1, 1;\nsetp.eq.u32 %p2, %r15, 1;\ncp.async.ca.shared.global [%r4], [%rd4], 16, %p2;",
        ),
        false,
    )
    .unwrap();
    assert_eq!(
        &ig[..8],
        &[0; 4]
            .iter()
            .chain(&[0x1008u32, 0x1009, 0x100A, 0x100B])
            .copied()
            .collect::<Vec<_>>()[..]
    );
    // two groups, wait_group 1: only the older group (first 8 bytes) has landed
    let two = run_cp(
        &cp_async_kernel(
            "cp.async.wait_group 1;",
            "cp.async.ca.shared.global [%r4], [%rd4], 8;\ncp.async.commit_group;\ncp.async.ca.shared.global [%r4+8], [%rd4+8], 8;",
        ),
        false,
    )
    .unwrap();
    assert_eq!(&two[..4], &[0x1004, 0x1005, 0xFFFF_FFFF, 0xFFFF_FFFF]);
}

#[test]
fn cp_async_faults_are_reported_at_issue() {
    let oob = cp_async_kernel(
        "cp.async.wait_all;",
        "add.u64 %rd4, %rd4, 4096;\ncp.async.cg.shared.global [%r4], [%rd4], 16;",
    );
    let e = run_cp(&oob, false).unwrap_err();
    assert!(
        matches!(
            e,
            PtxError::OutOfBounds {
                space: Space::Global,
                tid: (0, 0, 0),
                ..
            }
        ),
        "{e}"
    );
    let mis = cp_async_kernel(
        "cp.async.wait_all;",
        "cp.async.cg.shared.global [%r4+4], [%rd4], 16;",
    );
    assert!(matches!(
        run_cp(&mis, false),
        Err(PtxError::Misaligned {
            space: Space::Shared,
            ..
        })
    ));
}

/// A `cp.async` that reads no source bytes (src-size 0, or the ignore-src predicate set) only
/// zero-fills its destination: per the PTX ISA the bytes past src-size are not read, so its source
/// address may lie outside every allocation, at issue and at completion alike.
#[test]
fn cp_async_reading_no_source_bytes_never_faults() {
    // Every thread's source is 4 KiB past the 1 KiB input allocation (past its guard gap too).
    let far = "add.u64 %rd4, %rd4, 4096;\n";
    let cases = [
        (
            "src-size 0",
            "cp.async.cg.shared.global [%r4], [%rd4], 16, 0;",
        ),
        (
            "src-size register 0",
            "mov.u32 %r16, 0;\ncp.async.cg.shared.global [%r4], [%rd4], 16, %r16;",
        ),
        (
            "ignore-src",
            "setp.eq.u32 %p2, %r1, %r1;\ncp.async.ca.shared.global [%r4], [%rd4], 16, %p2;",
        ),
    ];
    for (what, copy) in cases {
        for wait in ["cp.async.wait_group 0;", "cp.async.wait_all;"] {
            for race in [false, true] {
                let m = cp_async_kernel(wait, &format!("{far}{copy}"));
                let got =
                    run_cp(&m, race).unwrap_or_else(|e| panic!("{what}, {wait}, race {race}: {e}"));
                assert!(got.iter().all(|&w| w == 0), "{what}: {:x?}", &got[..8]);
            }
        }
    }
}
