//! Shared-memory race detector: missing barriers are reported with both threads and
//! lines; barrier-separated, same-thread, atomic/atomic and `bar.warp.sync`-separated
//! accesses are clean; cp.async writes count from issue to completion.

#![allow(clippy::needless_range_loop, clippy::manual_is_multiple_of)]

use troupe_ptx::interp::*;

const HDR: &str = ".version 8.0\n.target sm_80\n.address_size 64\n";

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
    let mut dev = Device::new();
    let po = dev.alloc(block as usize * 4)?;
    let mut cfg = LaunchConfig::linear(2, block);
    cfg.race_check = race;
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
    let run = |s: String| -> Result<(), PtxError> {
        let m = Module::parse(&s).unwrap();
        let mut dev = Device::new();
        let po = dev.alloc(64)?;
        let mut cfg = LaunchConfig::linear(1, 64);
        cfg.race_check = true;
        dev.launch(&m, "k", &cfg, &[ParamValue::Ptr(po)])
            .map(|_| ())
    };
    let e = run(src("")).unwrap_err();
    match e {
        PtxError::SharedRace { first, second, .. } => {
            let lines = [first.line, second.line];
            let want = src("")
                .lines()
                .position(|l| l.starts_with("cp.async.ca"))
                .unwrap() as u32
                + 1;
            assert!(
                lines.contains(&want),
                "cp.async line {want} reported: {lines:?}"
            );
        }
        e => panic!("{e}"),
    }
    run(src("bar.sync 0;")).unwrap();
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
    let m = Module::parse(&src).unwrap();
    let mut dev = Device::new();
    let po = dev.alloc(64).unwrap();
    let mut cfg = LaunchConfig::linear(1, 64);
    cfg.race_check = true;
    let e = dev
        .launch(&m, "k", &cfg, &[ParamValue::Ptr(po)])
        .unwrap_err();
    assert!(matches!(e, PtxError::SharedRace { .. }), "{e}");
}
