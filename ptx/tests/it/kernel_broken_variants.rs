//! Deliberately broken kernel variants, made by string-editing the embedded PTX at test time and
//! installed with `InterpDevice::with_source`: each bug must be *caught* by the interpreter (race
//! detector, bounds checks) or by the comparison the kernel tests use. Also: malformed PTX and a bad
//! launch surface as typed errors (`GpuError::Ptx`, `EngineError::Backend`), never a panic.

use crate::common::gemm::check_gemm;
use crate::common::*;
use troupe_engine::backend::Backend;
use troupe_engine::dtype::DType;
use troupe_engine::kernels::CpuBackend;
use troupe_engine::{EngineError, Tensor};
use troupe_ptx::device::{f32_bytes, Arg, Device};
use troupe_ptx::interp::PtxError;
use troupe_ptx::kernels::file_of;
use troupe_ptx::{launch, GpuBackend, GpuError, InterpDevice, InterpOptions};

/// The source of `file` with `from` replaced by `to` (which must occur).
fn edited(file_entry: &str, from: &str, to: &str) -> (String, String) {
    let f = file_of(file_entry).expect("kernel in library");
    assert!(
        f.source.contains(from),
        "{}: pattern {from:?} not found",
        f.file
    );
    (f.file.to_string(), f.source.replace(from, to))
}

fn broken(file_entry: &str, from: &str, to: &str) -> GpuBackend<InterpDevice> {
    let (file, src) = edited(file_entry, from, to);
    let dev = InterpDevice::new(InterpOptions {
        race_check: true,
        ..InterpOptions::default()
    });
    GpuBackend::new(dev.with_source(&file, src).expect("override"))
}

/// The typed interpreter fault inside a device-level error.
fn ptx_fault(e: GpuError) -> PtxError {
    match e {
        GpuError::Ptx { error, .. } => *error,
        other => panic!("expected an interpreter fault, got {other}"),
    }
}

#[test]
fn rms_norm_without_bar_sync_is_a_shared_race() {
    let be = broken(
        "rms_norm_f32",
        "    bar.sync 0;\n    ld.shared.f64 %fd3",
        "    ld.shared.f64 %fd3",
    );
    let mut rng = Rng::new(91);
    let x = rng.matrix(2, 300, 1.0);
    let w = weight("norm", DType::F32, vec![300], &rng.vec(300, 1.0));
    // Through the Backend trait: EngineError::Backend naming the backend and the race.
    match be.down(be.rms_norm(&be.up(&x), &w, 1e-6)) {
        Err(EngineError::Backend { backend, source }) => {
            let message = source.to_string();
            assert_eq!(backend, "ptx-interp");
            assert!(
                message.contains("shared-memory race") && message.contains("rms_norm_f32"),
                "{message}"
            );
        }
        other => panic!("missing bar.sync not caught: {other:?}"),
    }
    // On the device: the typed SharedRace.
    let dev = be.device();
    let (xb, wb) = (
        dev.upload(&f32_bytes(x.data())).expect("up"),
        dev.upload(&f32_bytes(&w.to_f32_vec())).expect("up"),
    );
    let out = dev.alloc(600 * 4).expect("alloc");
    let l = launch::rms_norm(2).expect("config");
    let e = dev
        .launch(
            &l,
            &[
                Arg::Buf(&out),
                Arg::Buf(&xb),
                Arg::Buf(&wb),
                Arg::U32(2),
                Arg::U32(300),
                Arg::F32(1e-6),
            ],
        )
        .expect_err("race");
    assert!(matches!(ptx_fault(e), PtxError::SharedRace { .. }));
}

/// Runs the edited gemm on 64 x 64 x 96 (3 k tiles: both stages reused) and returns the fault.
fn gemm_fault(from: &str, to: &str) -> Option<PtxError> {
    let (file, src) = edited("gemm_bf16_tc", from, to);
    let dev = InterpDevice::new(InterpOptions {
        race_check: true,
        ..InterpOptions::default()
    })
    .with_source(&file, src)
    .expect("override");
    let mut rng = Rng::new(94);
    let a = dev
        .upload(&f32_bytes(&rng.vec(64 * 96 / 2, 1.0)))
        .expect("up");
    let b = dev
        .upload(&f32_bytes(&rng.vec(64 * 96 / 2, 1.0)))
        .expect("up");
    let c = dev.alloc(64 * 64 * 4).expect("alloc");
    let l = launch::gemm_bf16_tc(64, 64, 96).expect("config");
    dev.launch(
        &l,
        &[
            Arg::Buf(&c),
            Arg::Buf(&a),
            Arg::Buf(&b),
            Arg::U32(64),
            Arg::U32(64),
            Arg::U32(96),
        ],
    )
    .err()
    .map(ptx_fault)
}

#[test]
fn gemm_without_landing_barrier_is_a_shared_race() {
    // Without the barrier after `cp.async.wait_group`, a warp's ldmatrix reads a tile chunk that
    // another thread's cp.async wrote in the same barrier epoch (read-after-write race).
    let f = gemm_fault("COMPUTE:\n    bar.sync 0;\n", "COMPUTE:\n");
    assert!(matches!(f, Some(PtxError::SharedRace { .. })), "{f:?}");
}

#[test]
fn gemm_without_stage_barrier_is_a_shared_race() {
    // Without the barrier at the end of a k tile, the cp.async of tile kt+2 into the stage of
    // tile kt may land while another warp still reads that stage with ldmatrix: the in-flight
    // copy (a write from issue to its wait) conflicts with the ldmatrix read.
    let stage_barrier =
        "    bar.sync 0;                          // everyone is done with this stage\n";
    let f = gemm_fault(stage_barrier, "");
    let Some(PtxError::SharedRace { first, second, .. }) = f else {
        panic!("missing stage barrier not caught: {f:?}");
    };
    let (_, src) = edited("gemm_bf16_tc", stage_barrier, "");
    let opcode = |line: u32| {
        let l = src.lines().nth(line as usize - 1).unwrap_or_default();
        l.split_whitespace().next().unwrap_or_default().to_string()
    };
    let (w, r) = if first.write {
        (first, second)
    } else {
        (second, first)
    };
    assert!(w.write && !r.write, "{first} / {second}");
    assert_eq!(opcode(w.line), "cp.async.cg.shared.global", "{w}");
    assert!(opcode(r.line).starts_with("ldmatrix"), "{r}");
}

#[test]
fn silu_mul_off_by_one_bound_is_out_of_bounds() {
    // `i >= n` exits -> `i > n` exits: thread n writes out[n], one past the end.
    let be = broken(
        "silu_mul_f32",
        "setp.ge.u32 %p1, %r5, %r1;",
        "setp.gt.u32 %p1, %r5, %r1;",
    );
    let g = Tensor::matrix(3, 100, vec![0.5; 300]).expect("t");
    let gd = be.up(&g);
    match be.down(be.silu_mul(&gd, &gd)) {
        Err(EngineError::Backend { source, .. }) => {
            let message = source.to_string();
            assert!(
                message.contains("out-of-bounds") && message.contains("tid (44, 0, 0)"),
                "{message}"
            );
        }
        other => panic!("off-by-one not caught: {other:?}"),
    }
    let dev = be.device();
    let gb = dev.upload(&f32_bytes(g.data())).expect("up");
    let out = dev.alloc(300 * 4).expect("alloc");
    let e = dev
        .launch(
            &launch::silu_mul(300).expect("config"),
            &[Arg::Buf(&out), Arg::Buf(&gb), Arg::Buf(&gb), Arg::U32(300)],
        )
        .expect_err("oob");
    match ptx_fault(e) {
        PtxError::OutOfBounds {
            kernel, ctaid, tid, ..
        } => {
            assert_eq!(
                (kernel.as_str(), ctaid, tid),
                ("silu_mul_f32", (1, 0, 0), (44, 0, 0))
            );
        }
        f => panic!("expected OutOfBounds, got {f}"),
    }
}

#[test]
fn linear_off_by_one_k_loop_is_caught() {
    // `c >= k` ends the dot product -> `c > k`: one extra term x[r, k] * w[j, k] (the next row's
    // first element, or past the end). Caught as out-of-bounds or as a mismatch with the CPU.
    let be = broken(
        "linear_f32w",
        "setp.ge.u32 %p7, %r18, %r3;",
        "setp.gt.u32 %p7, %r18, %r3;",
    );
    let mut rng = Rng::new(92);
    for &(m, n, k) in &[(1usize, 8usize, 40usize), (5, 13, 64)] {
        let x = rng.matrix(m, k, 1.0);
        let w = weight(
            &format!("w{m}"),
            DType::F32,
            vec![n, k],
            &rng.vec(n * k, 1.0),
        );
        match be.down(be.linear(&be.up(&x), &w)) {
            Err(EngineError::Backend { source, .. }) => {
                let message = source.to_string();
                assert!(message.contains("out-of-bounds"), "{message}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(got) => {
                let cpu = CpuBackend::new();
                let want = cpu.down(cpu.linear(&cpu.up(&x), &w)).expect("cpu");
                let (d, _) = max_abs_diff(got.data(), want.data());
                assert!(d > 1e-3, "off-by-one k loop not caught (max |d| {d})");
            }
        }
    }
}

#[test]
fn gemm_wrong_mma_fragment_layout_mismatches() {
    // Swapping the a1/a2 fragment registers (rows 8-15 at k 0-7 vs rows 0-7 at k 8-15) of every
    // mma is a plausible layout bug; it must show up as a mismatch against the f64 reference.
    let (file, src) = edited(
        "gemm_bf16_tc",
        "{%a0, %a1, %a2, %a3}, {%b",
        "{%a0, %a2, %a1, %a3}, {%b",
    );
    let dev = InterpDevice::new(InterpOptions {
        race_check: true,
        ..InterpOptions::default()
    })
    .with_source(&file, src)
    .expect("override");
    let r = check_gemm(&dev, 20, 24, 32, 93);
    assert!(r.is_err(), "wrong fragment layout not caught");
    // The same shape passes with the real kernel (so the mismatch is the edit's).
    check_gemm(interp().device(), 20, 24, 32, 93).expect("unmodified kernel");
}

#[test]
fn malformed_ptx_and_bad_launch_are_typed_errors() {
    let be = broken(
        "silu_mul_f32",
        "setp.ge.u32 %p1, %r5, %r1;",
        "setp.ge.u32 %p1, %r5 %r1 frobnicate;",
    );
    let g = Tensor::matrix(1, 4, vec![1.0; 4]).expect("t");
    let gd = be.up(&g);
    match be.down(be.silu_mul(&gd, &gd)) {
        Err(EngineError::Backend { backend, source }) => {
            let message = source.to_string();
            assert_eq!(backend, "ptx-interp");
            assert!(
                message.contains("silu_mul_f32") && message.contains("line"),
                "{message}"
            );
        }
        other => panic!("malformed PTX not reported: {other:?}"),
    }
    // A launch with a missing parameter: BadLaunch, not a panic.
    let gpu = interp();
    let dev = gpu.device();
    let out = dev.alloc(16).expect("alloc");
    let e = dev
        .launch(
            &launch::silu_mul(4).expect("config"),
            &[Arg::Buf(&out), Arg::U32(4)],
        )
        .expect_err("bad launch");
    assert!(matches!(ptx_fault(e), PtxError::BadLaunch { .. }));
    // A kernel outside the library.
    let mut l = launch::silu_mul(4).expect("config");
    l.kernel = "no_such_kernel";
    assert!(matches!(
        dev.launch(&l, &[]),
        Err(GpuError::UnknownKernel(_))
    ));
}
