//! Warp-level semantics: shfl.sync in every mode against CUDA's documented
//! `__shfl_*_sync(mask, v, x, width)` behaviour, vote / redux / match / activemask,
//! divergent membermask errors, and atomics (global and shared, contended).

#![allow(clippy::needless_range_loop, clippy::manual_is_multiple_of)]

use crate::helpers::{linear_cfg, HDR};
use troupe_ptx_interp::*;

fn shfl_kernel(mode: &str) -> Module {
    Module::parse(&format!(
        "{HDR}.visible .entry k(.param .u64 out, .param .u64 inp, .param .u32 b, .param .u32 c)\n{{\n\
         .reg .pred %p<4>;\n.reg .b32 %r<12>;\n.reg .b64 %rd<8>;\n\
         ld.param.u64 %rd1, [out];\nld.param.u64 %rd2, [inp];\nld.param.u32 %r2, [b];\nld.param.u32 %r3, [c];\n\
         mov.u32 %r1, %tid.x;\nmul.wide.u32 %rd3, %r1, 4;\nadd.u64 %rd4, %rd2, %rd3;\nld.global.u32 %r4, [%rd4];\n\
         shfl.sync.{mode}.b32 %r5|%p1, %r4, %r2, %r3, 0xffffffff;\nselp.u32 %r6, 1, 0, %p1;\n\
         mul.wide.u32 %rd3, %r1, 8;\nadd.u64 %rd5, %rd1, %rd3;\nst.global.v2.u32 [%rd5], {{%r5, %r6}};\nret;\n}}\n"
    ))
    .unwrap()
}

fn run_shfl(m: &Module, b: u32, c: u32) -> Vec<(u32, bool)> {
    let mut dev = SimulatedGpu::new();
    let vals: Vec<u32> = (0..32).map(|i| 1000 + i * 7).collect();
    let pi = dev.alloc(128).unwrap();
    dev.write_u32(pi, &vals).unwrap();
    let po = dev.alloc(256).unwrap();
    dev.launch(
        m,
        "k",
        &LaunchConfig::linear(1, 32),
        &[
            ParamValue::Ptr(po),
            ParamValue::Ptr(pi),
            ParamValue::U32(b),
            ParamValue::U32(c),
        ],
    )
    .unwrap();
    let r = dev.read_u32(po, 64).unwrap();
    (0..32).map(|i| (r[2 * i], r[2 * i + 1] == 1)).collect()
}

#[test]
fn shfl_matches_cuda_semantics_for_all_widths() {
    let v = |i: u32| 1000 + i * 7;
    let (up, down, bfly, idx) = (
        shfl_kernel("up"),
        shfl_kernel("down"),
        shfl_kernel("bfly"),
        shfl_kernel("idx"),
    );
    for width in [32u32, 16, 8, 4, 2] {
        let seg = (32 - width) << 8;
        for x in [0u32, 1, 2, 3, 5, 13] {
            let r_up = run_shfl(&up, x, seg);
            let r_down = run_shfl(&down, x, seg | 0x1f);
            let r_bfly = run_shfl(&bfly, x, seg | 0x1f);
            let r_idx = run_shfl(&idx, x, seg | 0x1f);
            for lane in 0..32u32 {
                let base = lane / width * width;
                let in_up = lane % width >= x;
                assert_eq!(
                    r_up[lane as usize],
                    (if in_up { v(lane - x) } else { v(lane) }, in_up),
                    "up w{width} x{x} lane{lane}"
                );
                let in_down = lane % width + x < width;
                assert_eq!(
                    r_down[lane as usize],
                    (if in_down { v(lane + x) } else { v(lane) }, in_down),
                    "down w{width} x{x} lane{lane}"
                );
                let t = lane ^ x;
                // CUDA: groups may read earlier groups, never later ones
                let in_b = t < base + width;
                assert_eq!(
                    r_bfly[lane as usize].0,
                    if in_b { v(t) } else { v(lane) },
                    "bfly w{width} x{x} lane{lane}"
                );
                assert_eq!(
                    r_idx[lane as usize].0,
                    v(base + x % width),
                    "idx w{width} x{x} lane{lane}"
                );
            }
        }
    }
}

fn warp_kernel(body: &str, block: u32, input: &[u32], outs: usize) -> Result<Vec<u32>, PtxError> {
    let m = Module::parse(&format!(
        "{HDR}.visible .entry k(.param .u64 out, .param .u64 inp)\n{{\n\
         .reg .pred %p<8>;\n.reg .b32 %r<40>;\n.reg .b64 %rd<20>;\n.reg .f32 %f<8>;\n.shared .align 8 .b8 sm[256];\n\
         ld.param.u64 %rd1, [out];\nld.param.u64 %rd2, [inp];\nmov.u32 %r1, %tid.x;\n\
         mul.wide.u32 %rd3, %r1, 4;\nadd.u64 %rd4, %rd2, %rd3;\nld.global.u32 %r4, [%rd4];\n\
         mul.lo.u32 %r30, %r1, {outs};\nmul.wide.u32 %rd10, %r30, 4;\nadd.u64 %rd10, %rd1, %rd10;\n\
         {body}\nret;\n}}\n"
    ))?;
    let mut dev = SimulatedGpu::new();
    let pi = dev.alloc(input.len() * 4)?;
    dev.write_u32(pi, input)?;
    let po = dev.alloc(block as usize * outs * 4)?;
    dev.launch(
        &m,
        "k",
        &LaunchConfig::linear(1, block),
        &[ParamValue::Ptr(po), ParamValue::Ptr(pi)],
    )?;
    dev.read_u32(po, block as usize * outs)
}

#[test]
fn vote_redux_match_activemask() {
    let input: Vec<u32> = (0..64).map(|i| (i * 37 + 11) % 50).collect();
    let body = "setp.gt.u32 %p1, %r4, 20;\n\
        vote.sync.ballot.b32 %r5, %p1, 0xffffffff;\n\
        vote.sync.any.pred %p2, %p1, 0xffffffff;\nselp.u32 %r6, 1, 0, %p2;\n\
        vote.sync.all.pred %p3, !%p1, 0xffffffff;\nselp.u32 %r7, 1, 0, %p3;\n\
        redux.sync.add.u32 %r8, %r4, 0xffffffff;\n\
        redux.sync.max.u32 %r9, %r4, 0xffffffff;\n\
        redux.sync.min.s32 %r10, %r4, 0xffffffff;\n\
        and.b32 %r12, %r4, 3;\nmatch.any.sync.b32 %r11, %r12, 0xffffffff;\n\
        setp.lt.u32 %p4, %r1, 40;\n@%p4 bra SKIP;\nactivemask.b32 %r13;\nSKIP:\n\
        st.global.v4.u32 [%rd10], {%r5, %r6, %r7, %r8};\nst.global.v4.u32 [%rd10+16], {%r9, %r10, %r11, %r13};";
    let out = warp_kernel(body, 64, &input, 8).unwrap();
    for w in 0..2usize {
        let vals = &input[w * 32..w * 32 + 32];
        let ballot = vals
            .iter()
            .enumerate()
            .fold(0u32, |b, (l, &v)| if v > 20 { b | 1 << l } else { b });
        for l in 0..32usize {
            let r = &out[(w * 32 + l) * 8..][..8];
            assert_eq!(r[0], ballot);
            assert_eq!(r[1], u32::from(ballot != 0));
            assert_eq!(r[2], u32::from(ballot == 0));
            assert_eq!(r[3], vals.iter().sum::<u32>());
            assert_eq!(r[4], *vals.iter().max().unwrap());
            assert_eq!(r[5], *vals.iter().min().unwrap());
            let same = vals.iter().enumerate().fold(0u32, |b, (k, &v)| {
                if v & 3 == vals[l] & 3 {
                    b | 1 << k
                } else {
                    b
                }
            });
            assert_eq!(r[6], same);
            let t = w * 32 + l;
            let want_active = if t < 40 {
                0
            } else if w == 1 {
                0xFFFF_FF00
            } else {
                0
            };
            assert_eq!(r[7], want_active, "activemask t{t}");
        }
    }
}

#[test]
fn shfl_in_divergent_code_is_an_error() {
    let body = "setp.lt.u32 %p1, %r1, 16;\n@%p1 bra SKIP;\nshfl.sync.bfly.b32 %r5, %r4, 1, 0x1f, 0xffffffff;\nSKIP:";
    let e = warp_kernel(body, 32, &[0; 32], 1).unwrap_err();
    match e {
        PtxError::Divergence {
            warp, line, opcode, ..
        } => {
            assert_eq!(warp, 0);
            assert_eq!(line, 22);
            assert!(opcode.starts_with("shfl.sync"));
        }
        e => panic!("{e}"),
    }
    // a partial membermask naming only the converged lanes is fine
    let body = "setp.lt.u32 %p1, %r1, 16;\n@%p1 bra SKIP;\nshfl.sync.bfly.b32 %r5, %r4, 1, 0x1f, 0xffff0000;\n\
                st.global.u32 [%rd10], %r5;\nSKIP:";
    let input: Vec<u32> = (0..32).collect();
    let out = warp_kernel(body, 32, &input, 1).unwrap();
    for l in 16..32usize {
        assert_eq!(out[l], (l ^ 1) as u32);
    }
    // bar.warp.sync after reconvergence is fine
    let body = "setp.lt.u32 %p1, %r1, 16;\n@%p1 bra J;\nadd.u32 %r4, %r4, 1;\nJ:\nbar.warp.sync 0xffffffff;\nst.global.u32 [%rd10], %r4;";
    warp_kernel(body, 32, &input, 1).unwrap();
}

#[test]
fn warp_sum_reduction_with_shfl_down() {
    let input: Vec<u32> = (0..96).map(|i| i * i % 1000).collect();
    let body = "mov.u32 %r5, %r4;\n\
        shfl.sync.down.b32 %r6, %r5, 16, 0x1f, 0xffffffff; add.u32 %r5, %r5, %r6;\n\
        shfl.sync.down.b32 %r6, %r5, 8, 0x1f, 0xffffffff; add.u32 %r5, %r5, %r6;\n\
        shfl.sync.down.b32 %r6, %r5, 4, 0x1f, 0xffffffff; add.u32 %r5, %r5, %r6;\n\
        shfl.sync.down.b32 %r6, %r5, 2, 0x1f, 0xffffffff; add.u32 %r5, %r5, %r6;\n\
        shfl.sync.down.b32 %r6, %r5, 1, 0x1f, 0xffffffff; add.u32 %r5, %r5, %r6;\n\
        shfl.sync.idx.b32 %r5, %r5, 0, 0x1f, 0xffffffff;\nst.global.u32 [%rd10], %r5;";
    let out = warp_kernel(body, 96, &input, 1).unwrap();
    for t in 0..96usize {
        let w = t / 32;
        assert_eq!(out[t], input[w * 32..w * 32 + 32].iter().sum::<u32>());
    }
}

#[test]
fn contended_global_and_shared_atomics() {
    let m = Module::parse(&format!(
        "{HDR}.visible .entry k(.param .u64 ctr)\n{{\n.reg .pred %p<4>;\n.reg .b32 %r<20>;\n.reg .b64 %rd<8>;\n.reg .f32 %f<4>;\n\
         .shared .align 4 .b32 s[4];\n\
         ld.param.u64 %rd1, [ctr];\nmov.u32 %r1, %tid.x;\n\
         setp.eq.u32 %p1, %r1, 0;\n@!%p1 bra W;\nst.shared.u32 [s], 0;\nst.shared.u32 [s+4], 0;\nst.shared.u32 [s+8], 0xffffffff;\nW:\nbar.sync 0;\n\
         atom.global.add.u32 %r2, [%rd1], 1;\n\
         red.global.add.u32 [%rd1+4], %r1;\n\
         atom.global.max.s32 %r3, [%rd1+8], %r1;\n\
         cvt.rn.f32.u32 %f1, %r1;\natom.global.add.f32 %f2, [%rd1+12], %f1;\n\
         atom.global.inc.u32 %r4, [%rd1+16], 9;\n\
         atom.shared.add.u32 %r5, [s], 1;\n\
         atom.shared.xor.b32 %r6, [s+4], %r1;\n\
         atom.shared.min.u32 %r7, [s+8], %r1;\n\
         CAS:\natom.global.cas.b32 %r8, [%rd1+20], %r9, %r10;\n\
         bar.sync 0;\n@!%p1 bra DONE;\n\
         ld.shared.u32 %r11, [s];\nld.shared.u32 %r12, [s+4];\nld.shared.u32 %r13, [s+8];\n\
         atom.global.add.u32 %r14, [%rd1+24], %r11;\natom.global.xor.b32 %r14, [%rd1+28], %r12;\natom.global.add.u32 %r14, [%rd1+32], %r13;\n\
         DONE:\nret;\n}}\n"
    ))
    .unwrap();
    let mut dev = SimulatedGpu::new();
    let p = dev.alloc(64).unwrap();
    dev.write_i32(p.offset(8), &[-5]).unwrap();
    let cfg = linear_cfg(4, 200, true);
    dev.launch(&m, "k", &cfg, &[ParamValue::Ptr(p)]).unwrap();
    let v = dev.read_u32(p, 9).unwrap();
    assert_eq!(v[0], 800);
    assert_eq!(v[1], 4 * (0..200).sum::<u32>());
    assert_eq!(v[2], 199);
    assert_eq!(f32::from_bits(v[3]), 4.0 * (0..200).sum::<u32>() as f32);
    assert_eq!(v[4], 800 % 10);
    assert_eq!(v[6], 4 * 200);
    assert_eq!(v[7], 0); // xor of 0..200 four times
    assert_eq!(v[8], 0);
}

#[test]
fn cas_spin_lock_serializes_critical_section() {
    // one lane per warp takes a global lock with atom.cas and does a non-atomic increment
    let m = Module::parse(&format!(
        "{HDR}.visible .entry k(.param .u64 p)\n{{\n.reg .pred %p<4>;\n.reg .b32 %r<10>;\n.reg .b64 %rd<4>;\n\
         ld.param.u64 %rd1, [p];\nmov.u32 %r1, %laneid;\nsetp.ne.u32 %p1, %r1, 0;\n@%p1 bra DONE;\n\
         SPIN:\natom.global.cas.b32 %r2, [%rd1], 0, 1;\nsetp.ne.u32 %p2, %r2, 0;\n@%p2 bra SPIN;\n\
         ld.volatile.global.u32 %r3, [%rd1+4];\nadd.u32 %r3, %r3, 1;\nst.volatile.global.u32 [%rd1+4], %r3;\n\
         membar.gl;\natom.global.exch.b32 %r4, [%rd1], 0;\nDONE:\nret;\n}}\n"
    ))
    .unwrap();
    let mut dev = SimulatedGpu::new();
    let p = dev.alloc(8).unwrap();
    dev.launch(
        &m,
        "k",
        &LaunchConfig::linear(3, 256),
        &[ParamValue::Ptr(p)],
    )
    .unwrap();
    assert_eq!(dev.read_u32(p, 2).unwrap(), vec![0, 24]);
}
