//! SIMT control flow: divergent branches and reconvergence, loops with divergent trip
//! counts, unstructured jumps, early exit, bar.sync across warps, barrier deadlock
//! detection and the instruction limit.

#![allow(clippy::needless_range_loop, clippy::manual_is_multiple_of)]

use crate::helpers::*;
use troupe_ptx_interp::*;

#[test]
fn divergence_reconvergence_and_loops() {
    // lane-dependent if/else, then a loop with a divergent trip count (tid % 7), an
    // unstructured jump into the loop body, then a reconverged warp-wide ballot.
    let m = kernel(
        &("and.b32 %r4, %r1, 1;\nsetp.eq.u32 %p1, %r4, 0;\n@%p1 bra EVEN;\n\
         mul.lo.u32 %r5, %r1, 3;\nbra.uni JOIN;\n\
         EVEN:\nadd.u32 %r5, %r1, 1000;\n\
         JOIN:\nrem.u32 %r6, %r1, 7;\nmov.u32 %r7, 0;\nmov.u32 %r8, 0;\n\
         setp.eq.u32 %p2, %r6, 3;\n@%p2 bra MID;\n\
         LOOP:\nsetp.ge.u32 %p3, %r8, %r6;\n@%p3 bra DONE;\nadd.u32 %r7, %r7, %r8;\n\
         MID:\nadd.u32 %r8, %r8, 1;\nbra LOOP;\n\
         DONE:\nsetp.ne.u32 %p4, %r6, 0;\nvote.sync.ballot.b32 %r9, %p4, 0xffffffff;\n"
            .to_string()
            + &st(5, 3, 0)
            + &st(7, 3, 1)
            + &st(9, 3, 2)
            + "ret;"),
    );
    let out = run(&m, 2, 64, 128 * 3, &[]).unwrap();
    for t in 0..128u32 {
        let a = if t % 2 == 0 { t + 1000 } else { t * 3 };
        let k = t % 7;
        let sum: u32 = if k == 3 { (1..3).sum() } else { (0..k).sum() };
        let warp_base = t / 32 * 32;
        let ballot = (0..32)
            .filter(|l| (warp_base + l) % 7 != 0)
            .fold(0u32, |b, l| b | 1 << l);
        assert_eq!(out[t as usize * 3], a, "t{t}");
        assert_eq!(out[t as usize * 3 + 1], sum, "t{t}");
        assert_eq!(out[t as usize * 3 + 2], ballot, "t{t}");
    }
}

#[test]
fn early_exit_of_some_threads() {
    let m = kernel(
        &("setp.gt.u32 %p1, %r1, 40;\n@%p1 exit;\nadd.u32 %r5, %r1, 7;\n".to_string()
            + &st(5, 1, 0)
            + "ret;"),
    );
    let out = run(&m, 1, 64, 64, &[]).unwrap();
    for t in 0..64u32 {
        assert_eq!(out[t as usize], if t > 40 { 0 } else { t + 7 });
    }
}

#[test]
fn bar_sync_orders_shared_memory_across_warps() {
    let m = module(
        ".visible .entry k(.param .u64 out)\n{\n.reg .b32 %r<10>;\n.reg .b64 %rd<4>;\n\
         .shared .align 4 .b32 sm[128];\n\
         ld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\nshl.b32 %r2, %r1, 2;\nmov.u32 %r3, sm;\nadd.u32 %r4, %r3, %r2;\n\
         mul.lo.u32 %r5, %r1, %r1;\nst.shared.u32 [%r4], %r5;\nbar.sync 0;\n\
         add.u32 %r6, %r1, 37;\nrem.u32 %r6, %r6, 128;\nshl.b32 %r6, %r6, 2;\nadd.u32 %r6, %r3, %r6;\nld.shared.u32 %r7, [%r6];\n\
         bar.sync 0;\nst.shared.u32 [%r4], 0;\n\
         mul.wide.u32 %rd2, %r1, 4;\nadd.u64 %rd2, %rd1, %rd2;\nst.global.u32 [%rd2], %r7;\nret;\n}\n",
    );
    let mut dev = SimulatedGpu::new();
    let out = dev.alloc(512).unwrap();
    let cfg = linear_cfg(3, 128, true);
    dev.launch(&m, "k", &cfg, &[ParamValue::Ptr(out)]).unwrap();
    let v = dev.read_u32(out, 128).unwrap();
    for t in 0..128u32 {
        let s = (t + 37) % 128;
        assert_eq!(v[t as usize], s * s);
    }
}

#[test]
fn barrier_deadlock_is_detected() {
    // threads >= 48 exit before the barrier: the others wait forever
    let m = module(
        ".visible .entry k()\n{\n.reg .pred %p<2>;\n.reg .b32 %r<4>;\n\
         mov.u32 %r1, %tid.x;\nsetp.ge.u32 %p1, %r1, 48;\n@%p1 ret;\nbar.sync 0;\nret;\n}\n",
    );
    let mut dev = SimulatedGpu::new();
    let e = dev
        .launch(&m, "k", &LaunchConfig::linear(1, 96), &[])
        .unwrap_err();
    match e {
        PtxError::Deadlock {
            kernel, message, ..
        } => {
            assert_eq!(kernel, "k");
            assert!(message.contains("48 threads already exited"), "{message}");
            assert!(message.contains("48 of 96"), "{message}");
        }
        e => panic!("{e}"),
    }
    // a barrier inside a branch only half of the warps take
    let m = module(
        ".visible .entry k()\n{\n.reg .pred %p<2>;\n.reg .b32 %r<4>;\n\
         mov.u32 %r1, %tid.x;\nsetp.ge.u32 %p1, %r1, 32;\n@%p1 bra SKIP;\nbar.sync 0;\nSKIP:\nbar.sync 1;\nret;\n}\n",
    );
    assert!(matches!(
        dev.launch(&m, "k", &LaunchConfig::linear(1, 64), &[]),
        Err(PtxError::Deadlock { .. })
    ));
    // with an explicit thread count the same barrier completes
    let m = module(
        ".visible .entry k()\n{\n.reg .pred %p<2>;\n.reg .b32 %r<4>;\n\
         mov.u32 %r1, %tid.x;\nsetp.ge.u32 %p1, %r1, 32;\n@%p1 bra SKIP;\nbar.sync 1, 32;\nSKIP:\nret;\n}\n",
    );
    dev.launch(&m, "k", &LaunchConfig::linear(1, 64), &[])
        .unwrap();
}

#[test]
fn instruction_limit_stops_infinite_loops() {
    let m = kernel("SPIN:\nbra SPIN;");
    let mut dev = SimulatedGpu::new();
    dev.set_instruction_limit(100_000);
    let p = dev.alloc(4).unwrap();
    let e = dev
        .launch(
            &m,
            "k",
            &LaunchConfig::linear(1, 32),
            &[ParamValue::Ptr(p), ParamValue::Ptr(p)],
        )
        .unwrap_err();
    assert!(matches!(e, PtxError::InstructionLimit { .. }), "{e}");
}
