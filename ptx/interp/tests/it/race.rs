//! Shared-memory race detector: missing barriers are reported with both threads and
//! lines; barrier-separated, same-thread, atomic/atomic and `bar.warp.sync`-separated
//! accesses are clean; cp.async writes count from issue to completion: a two-warp
//! double buffer is clean with its stage barrier and races without it, a read of a stage
//! whose copy is still in flight across a barrier races, and the issuing thread's own
//! access before its wait is an `AsyncCopyPending` fault.

#![allow(clippy::needless_range_loop, clippy::manual_is_multiple_of)]

use crate::helpers::{linear_cfg, HDR};
use troupe_ptx_interp::*;

/// Each thread writes sm[tid], `sync` runs, then it reads sm[(tid + shift) % n].
fn neighbour_kernel(sync: &str, shift: u32) -> Module {
    Module::parse(&neighbour_src(sync, shift)).unwrap()
}

fn neighbour_src(sync: &str, shift: u32) -> String {
    format!(
        "{HDR}.visible .entry k(.param .u64 out)\n{{\n.reg .pred %p<2>;\n.reg .b32 %r<12>;\n.reg .b64 %rd<4>;\n\
         .shared .align 4 .b32 sm[256];\n\
         ld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\nmov.u32 %r9, %ntid.x;\nshl.b32 %r2, %r1, 2;\nmov.u32 %r3, sm;\nadd.u32 %r4, %r3, %r2;\n\
         st.shared.u32 [%r4], %r1;\n{sync}\n\
         add.u32 %r5, %r1, {shift};\nrem.u32 %r5, %r5, %r9;\nshl.b32 %r5, %r5, 2;\nadd.u32 %r5, %r5, %r3;\nld.shared.u32 %r6, [%r5];\n\
         mul.wide.u32 %rd2, %r1, 4;\nadd.u64 %rd2, %rd1, %rd2;\nst.global.u32 [%rd2], %r6;\nret;\n}}\n"
    )
}

fn launch(m: &Module, block: u32, race: bool) -> Result<(), PtxError> {
    let mut dev = SimulatedGpu::new();
    let po = dev.alloc(block as usize * 4)?;
    let cfg = linear_cfg(2, block, race);
    dev.launch(m, "k", &cfg, &[ParamValue::Ptr(po)]).map(|_| ())
}

fn line_of(sync: &str, needle: &str) -> u32 {
    let src = neighbour_src(sync, 40);
    src.lines()
        .position(|l| l.contains(needle))
        .expect("needle in source") as u32
        + 1
}

#[test]
fn missing_barrier_is_a_race() {
    let m = neighbour_kernel("", 40);
    let (st, ld) = (line_of("", "st.shared.u32"), line_of("", "ld.shared.u32"));
    let e = launch(&m, 128, true).unwrap_err();
    match e {
        PtxError::SharedRace {
            kernel,
            ctaid,
            address,
            first,
            second,
        } => {
            assert_eq!(kernel, "k");
            assert_eq!(ctaid, (0, 0, 0));
            // warp 0 runs first: thread 0 reads sm[40] before thread 40 writes it
            assert_eq!(
                first,
                RaceAccess {
                    tid: (0, 0, 0),
                    line: ld,
                    write: false
                }
            );
            assert_eq!(
                second,
                RaceAccess {
                    tid: (40, 0, 0),
                    line: st,
                    write: true
                }
            );
            assert_eq!(address, 40 * 4);
        }
        e => panic!("{e}"),
    }
}

#[test]
fn race_reports_both_accesses() {
    let m = neighbour_kernel("", 40);
    let PtxError::SharedRace { first, second, .. } = launch(&m, 128, true).unwrap_err() else {
        panic!()
    };
    let (w, r) = if first.write {
        (first, second)
    } else {
        (second, first)
    };
    assert!(w.write && !r.write);
    assert_eq!(w.line, line_of("", "st.shared.u32"), "store line");
    assert_eq!(r.line, line_of("", "ld.shared.u32"), "load line");
    assert_eq!(
        (r.tid.0 + 40) % 128,
        w.tid.0,
        "reader reads the writer's slot"
    );
}

#[test]
fn barrier_makes_it_clean_and_detector_off_is_silent() {
    launch(&neighbour_kernel("bar.sync 0;", 40), 128, true).unwrap();
    launch(&neighbour_kernel("barrier.sync.aligned 0;", 40), 128, true).unwrap();
    // without the detector the racy kernel runs (and reads whatever is there)
    launch(&neighbour_kernel("", 40), 128, false).unwrap();
    // own slot only: no race even without a barrier
    launch(&neighbour_kernel("", 0), 128, true).unwrap();
}

#[test]
fn intra_warp_needs_warp_sync() {
    // neighbours within one warp of 32: racy without bar.warp.sync, clean with it
    assert!(matches!(
        launch(&neighbour_kernel("", 1), 32, true),
        Err(PtxError::SharedRace { .. })
    ));
    launch(&neighbour_kernel("bar.warp.sync 0xffffffff;", 1), 32, true).unwrap();
}

#[test]
fn same_instruction_same_address_writes_race_but_atomics_do_not() {
    let m = Module::parse(&format!(
        "{HDR}.visible .entry k(.param .u64 out)\n{{\n.reg .b32 %r<8>;\n.shared .align 4 .b32 sm[4];\n\
         mov.u32 %r1, %tid.x;\nst.shared.u32 [sm], %r1;\nret;\n}}\n"
    ))
    .unwrap();
    let e = launch(&m, 32, true).unwrap_err();
    assert!(
        matches!(
            e,
            PtxError::SharedRace {
                first: RaceAccess { write: true, .. },
                second: RaceAccess { write: true, .. },
                ..
            }
        ),
        "{e}"
    );
    let m = Module::parse(&format!(
        "{HDR}.visible .entry k(.param .u64 out)\n{{\n.reg .b32 %r<8>;\n.shared .align 4 .b32 sm[4];\n\
         mov.u32 %r1, %tid.x;\natom.shared.add.u32 %r2, [sm], %r1;\nred.shared.max.u32 [sm+4], %r1;\nbar.sync 0;\nld.shared.u32 %r3, [sm];\nret;\n}}\n"
    ))
    .unwrap();
    launch(&m, 128, true).unwrap();
    // an atomic racing with a plain read is still a race
    let m = Module::parse(&format!(
        "{HDR}.visible .entry k(.param .u64 out)\n{{\n.reg .b32 %r<8>;\n.shared .align 4 .b32 sm[4];\n\
         mov.u32 %r1, %tid.x;\natom.shared.add.u32 %r2, [sm], %r1;\nld.shared.u32 %r3, [sm];\nret;\n}}\n"
    ))
    .unwrap();
    assert!(matches!(
        launch(&m, 64, true),
        Err(PtxError::SharedRace { .. })
    ));
}

/// Launch `k(out)` of `src` on one CTA of 64 threads with the race detector on.
fn run_one_cta(src: &str) -> Result<(), PtxError> {
    let m = Module::parse(src).unwrap_or_else(|e| panic!("{e}"));
    let mut dev = SimulatedGpu::new();
    let po = dev.alloc(64)?;
    let cfg = linear_cfg(1, 64, true);
    dev.launch(&m, "k", &cfg, &[ParamValue::Ptr(po)])
        .map(|_| ())
}

/// The 1-based line of the first line of `src` that starts with `prefix`.
fn src_line(src: &str, prefix: &str) -> u32 {
    src.lines()
        .position(|l| l.starts_with(prefix))
        .expect("prefix in source") as u32
        + 1
}

#[test]
fn cp_async_writes_count_at_completion() {
    // thread t copies into chunk t, waits, then reads chunk t+1 without a barrier: race
    let src = |sync: &str| {
        format!(
            "{HDR}.visible .entry k(.param .u64 out)\n{{\n.reg .b32 %r<12>;\n.reg .b64 %rd<6>;\n.shared .align 16 .b8 sm[1024];\n\
             ld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\nshl.b32 %r2, %r1, 4;\nmov.u32 %r3, sm;\nadd.u32 %r4, %r3, %r2;\n\
             cp.async.ca.shared.global [%r4], [%rd1], 16;\ncp.async.wait_all;\n{sync}\n\
             add.u32 %r5, %r4, 16;\nand.b32 %r5, %r5, 1023;\nld.shared.u32 %r6, [%r5];\nret;\n}}\n"
        )
    };
    let e = run_one_cta(&src("")).unwrap_err();
    match e {
        PtxError::SharedRace { first, second, .. } => {
            let lines = [first.line, second.line];
            let want = src_line(&src(""), "cp.async.ca");
            assert!(
                lines.contains(&want),
                "cp.async line {want} reported: {lines:?}"
            );
        }
        e => panic!("{e}"),
    }
    run_one_cta(&src("bar.sync 0;")).unwrap();
}

#[test]
fn cp_async_destination_is_busy_from_issue() {
    // thread t reads chunk t+1 while thread t+1's copy into it is in flight; the wait only
    // comes after the barrier, so only the issue-time record can see the conflict
    let src = format!(
        "{HDR}.visible .entry k(.param .u64 out)\n{{\n.reg .b32 %r<12>;\n.reg .b64 %rd<6>;\n.shared .align 16 .b8 sm[1024];\n\
         ld.param.u64 %rd1, [out];\nmov.u32 %r1, %tid.x;\nshl.b32 %r2, %r1, 4;\nmov.u32 %r3, sm;\nadd.u32 %r4, %r3, %r2;\n\
         add.u32 %r5, %r4, 16;\nand.b32 %r5, %r5, 1023;\nld.shared.u32 %r6, [%r5];\n\
         cp.async.ca.shared.global [%r4], [%rd1], 16;\ncp.async.commit_group;\nbar.sync 0;\ncp.async.wait_all;\nret;\n}}\n"
    );
    let e = run_one_cta(&src).unwrap_err();
    assert!(matches!(e, PtxError::SharedRace { .. }), "{e}");
}

/// Two warps (64 threads), 4 tiles of 64 16-byte chunks double buffered in 2 stages: thread t
/// `cp.async`es chunk t of tile kt+1 into stage (kt+1)%2 while tile kt is consumed, and sums
/// chunk (t+32)%64 of stage `{read}`%2 (a chunk copied by the *other* warp). `read` is `%r6`
/// (kt: correct) or `%r7` (kt+1: the stage still in flight); `stage_barrier` ends each tile;
/// `early` is inserted right after the issue of tile kt+1 (`%r8` = its destination).
fn double_buffer_src(stage_barrier: &str, read: &str, early: &str) -> String {
    format!(
        "{HDR}.visible .entry k(.param .u64 out, .param .u64 inp)\n{{\n\
         .reg .pred %p<4>;\n.reg .b32 %r<32>;\n.reg .b64 %rd<12>;\n.shared .align 16 .b8 sm[2048];\n\
         ld.param.u64 %rd1, [out];\nld.param.u64 %rd2, [inp];\nmov.u32 %r1, %tid.x;\nmov.u32 %r2, sm;\n\
         shl.b32 %r3, %r1, 4;\nadd.u32 %r4, %r1, 32;\nand.b32 %r4, %r4, 63;\nshl.b32 %r4, %r4, 4;\n\
         cvt.u64.u32 %rd3, %r3;\nadd.u64 %rd3, %rd2, %rd3;\nmov.u32 %r10, 0;\n\
         add.u32 %r5, %r2, %r3;\ncp.async.cg.shared.global [%r5], [%rd3], 16;\ncp.async.commit_group;\n\
         mov.u32 %r6, 0;\n\
         LOOP:\nadd.u32 %r7, %r6, 1;\nsetp.lt.u32 %p1, %r7, 4;\n@!%p1 bra LAST;\n\
         and.b32 %r8, %r7, 1;\nshl.b32 %r8, %r8, 10;\nadd.u32 %r8, %r8, %r2;\nadd.u32 %r8, %r8, %r3;\n\
         mul.wide.u32 %rd4, %r7, 1024;\nadd.u64 %rd4, %rd3, %rd4;\n\
         cp.async.cg.shared.global [%r8], [%rd4], 16;\ncp.async.commit_group;\n{early}\n\
         cp.async.wait_group 1;\nbra.uni COMPUTE;\n\
         LAST:\ncp.async.wait_group 0;\n\
         COMPUTE:\nbar.sync 0;\n\
         and.b32 %r9, {read}, 1;\nshl.b32 %r9, %r9, 10;\nadd.u32 %r9, %r9, %r2;\nadd.u32 %r9, %r9, %r4;\n\
         ld.shared.v4.u32 {{%r11, %r12, %r13, %r14}}, [%r9];\n\
         add.u32 %r10, %r10, %r11;\nadd.u32 %r10, %r10, %r12;\nadd.u32 %r10, %r10, %r13;\nadd.u32 %r10, %r10, %r14;\n\
         {stage_barrier}\n\
         add.u32 %r6, %r6, 1;\nsetp.lt.u32 %p2, %r6, 4;\n@%p2 bra LOOP;\n\
         mul.wide.u32 %rd5, %r1, 4;\nadd.u64 %rd5, %rd1, %rd5;\nst.global.u32 [%rd5], %r10;\nret;\n}}\n"
    )
}

/// Runs the double-buffer kernel (one CTA of 64 threads, race detector on).
fn run_double_buffer(src: &str) -> Result<Vec<u32>, PtxError> {
    let m = Module::parse(src).unwrap_or_else(|e| panic!("{e}"));
    let input: Vec<u32> = (0..1024u32)
        .map(|i| i.wrapping_mul(0x9E37_79B9) >> 7)
        .collect();
    let mut dev = SimulatedGpu::new();
    let pi = dev.alloc(4096)?;
    dev.write_u32(pi, &input)?;
    let po = dev.alloc(64 * 4)?;
    let cfg = linear_cfg(1, 64, true);
    dev.launch(&m, "k", &cfg, &[ParamValue::Ptr(po), ParamValue::Ptr(pi)])?;
    let out = dev.read_u32(po, 64)?;
    for (t, &got) in out.iter().enumerate() {
        let c = (t + 32) % 64;
        let want = (0..4)
            .flat_map(|kt| (0..4).map(move |j| kt * 256 + c * 4 + j))
            .fold(0u32, |a, i| a.wrapping_add(input[i]));
        assert_eq!(got, want, "thread {t}");
    }
    Ok(out)
}

#[test]
fn cp_async_double_buffer_with_stage_barrier_is_clean() {
    run_double_buffer(&double_buffer_src("bar.sync 0;", "%r6", "")).unwrap();
}

#[test]
fn cp_async_double_buffer_without_stage_barrier_races() {
    // warp 0 finishes tile 0 and issues tile 2 into stage 0 while warp 1 has not yet read
    // stage 0 of tile 0: warp 1's read meets warp 0's in-flight copy
    let src = double_buffer_src("", "%r6", "");
    let e = run_double_buffer(&src).unwrap_err();
    let PtxError::SharedRace { first, second, .. } = e else {
        panic!("{e}");
    };
    let copy = src
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("cp.async.cg"))
        .map(|(i, _)| i as u32 + 1)
        .nth(1)
        .expect("loop copy");
    assert_eq!(
        (first, second),
        (
            RaceAccess {
                tid: (0, 0, 0),
                line: copy,
                write: true
            },
            RaceAccess {
                tid: (32, 0, 0),
                line: src_line(&src, "ld.shared.v4"),
                write: false
            }
        )
    );
}

#[test]
fn cp_async_in_flight_across_a_barrier_races() {
    // reading the stage of tile kt+1: its copy was issued before the barrier and is only
    // waited for in the next iteration, so the read falls strictly inside the copy's window
    let src = double_buffer_src("bar.sync 0;", "%r7", "");
    let e = run_double_buffer(&src).unwrap_err();
    let PtxError::SharedRace { first, second, .. } = e else {
        panic!("{e}");
    };
    assert!(first.write && !second.write, "{e}");
    assert_eq!((first.tid, second.tid), ((32, 0, 0), (0, 0, 0)), "{e}");
    assert_eq!(second.line, src_line(&src, "ld.shared.v4"));
}

#[test]
fn reading_own_cp_async_destination_before_the_wait_is_stale() {
    let src = double_buffer_src("bar.sync 0;", "%r6", "ld.shared.u32 %r15, [%r8];");
    let e = run_double_buffer(&src).unwrap_err();
    match e {
        PtxError::AsyncCopyPending {
            copy,
            access,
            address,
            ..
        } => {
            assert_eq!(copy.tid, (0, 0, 0));
            assert_eq!(access.tid, (0, 0, 0));
            assert!(copy.write && !access.write);
            assert_eq!(access.line, src_line(&src, "ld.shared.u32"));
            assert_eq!(address, 1024, "tile 1 lands in stage 1");
        }
        e => panic!("{e}"),
    }
    // a write to it is a hazard too (the copy lands later and overwrites it)
    let src = double_buffer_src("bar.sync 0;", "%r6", "st.shared.u32 [%r8], %r1;");
    assert!(matches!(
        run_double_buffer(&src),
        Err(PtxError::AsyncCopyPending {
            access: RaceAccess { write: true, .. },
            ..
        })
    ));
}
