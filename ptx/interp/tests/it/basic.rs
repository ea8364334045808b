//! Interpreter basics: parsing errors, unsupported PTX, launch validation, a real
//! kernel end to end, integer semantics, special registers, state spaces (const,
//! module globals, local, dynamic shared) and out-of-bounds / misaligned / trap faults.

#![allow(clippy::needless_range_loop, clippy::manual_is_multiple_of)]

use crate::helpers::*;
use troupe_ptx_interp::*;

#[test]
fn real_silu_mul_kernel_matches_cpu() {
    let src = &kernel_source("silu_mul.ptx");
    let m = Module::parse(src).unwrap();
    let n = 1000usize;
    let gate: Vec<f32> = (0..n).map(|i| (i as f32 - 500.0) / 37.0).collect();
    let up: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
    let mut dev = SimulatedGpu::new();
    let pg = dev.alloc_f32(&gate).unwrap();
    let pu = dev.alloc_f32(&up).unwrap();
    let po = dev.alloc(n * 4).unwrap();
    let stats = dev
        .launch(
            &m,
            "silu_mul_f32",
            &LaunchConfig::linear(n.div_ceil(256) as u32, 256),
            &[
                ParamValue::Ptr(po),
                ParamValue::Ptr(pg),
                ParamValue::Ptr(pu),
                ParamValue::U32(n as u32),
            ],
        )
        .unwrap();
    let out = dev.read_f32(po, n).unwrap();
    for i in 0..n {
        let g = gate[i] as f64;
        let want = g / (1.0 + (-g).exp()) * up[i] as f64;
        assert!(
            (out[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{i}: {} vs {want}",
            out[i]
        );
    }
    assert_eq!(stats.ctas, 4);
    assert_eq!(stats.warps, 32);
    assert!(stats.instructions > 20 * n as u64);
}

#[test]
fn parse_error_names_line() {
    let e = Module::parse(&format!(
        "{HDR}.visible .entry k()\n{{\n  .reg .b32 %r<2>;\n  mov.u32 %r1, ;\n}}"
    ))
    .unwrap_err();
    assert!(matches!(e, PtxError::Parse { line: 7, .. }), "{e}");
    let e = Module::parse(&format!(
        "{HDR}.visible .entry k()\n{{\n  mov.u32 %r1, 1;\n}}"
    ))
    .unwrap_err();
    match e {
        PtxError::Parse { line, message } => {
            assert_eq!(line, 6);
            assert!(message.contains("%r1"), "{message}");
        }
        e => panic!("{e}"),
    }
    let e =
        Module::parse(&format!("{HDR}.visible .entry k()\n{{\n  bra NOWHERE;\n}}")).unwrap_err();
    assert!(matches!(e, PtxError::Parse { line: 6, .. }), "{e}");
    assert!(matches!(
        Module::parse(".visible .entry k( {"),
        Err(PtxError::Parse { .. })
    ));
    assert!(matches!(
        Module::parse("\u{0}"),
        Err(PtxError::Parse { .. })
    ));
}

#[test]
fn unsupported_is_reported_at_parse_time() {
    let e = Module::parse(&format!(
        "{HDR}.visible .entry k()\n{{\n  .reg .b32 %r<3>;\n  tex.1d.v4.f32.s32 %r1, [%r2];\n}}"
    ))
    .unwrap_err();
    match e {
        PtxError::Unsupported { line, opcode } => {
            assert_eq!(line, 7);
            assert!(opcode.starts_with("tex.1d"), "{opcode}");
        }
        e => panic!("{e}"),
    }
    let e = Module::parse(&format!(
        "{HDR}.visible .entry k()\n{{\n  .reg .b32 %r<3>;\n  bar.red.popc.u32 %r1, 0, %r2;\n}}"
    ))
    .unwrap_err();
    assert!(matches!(e, PtxError::Unsupported { line: 7, .. }), "{e}");
    let e = Module::parse(&format!(
        "{HDR}.visible .entry k()\n{{\n  .reg .b32 %r<3>;\n  call.uni foo, (%r1);\n}}"
    ))
    .unwrap_err();
    assert!(matches!(e, PtxError::Unsupported { line: 7, .. }), "{e}");
    let e = Module::parse(&format!("{HDR}.weird_directive 3;")).unwrap_err();
    assert!(matches!(e, PtxError::Unsupported { line: 4, .. }), "{e}");
}

#[test]
fn bad_launches_are_typed_errors() {
    let m = kernel("ret;");
    let mut dev = SimulatedGpu::new();
    let p = dev.alloc(64).unwrap();
    let cfg = LaunchConfig::linear(1, 32);
    let e = dev.launch(&m, "nope", &cfg, &[]).unwrap_err();
    assert!(matches!(e, PtxError::BadLaunch { .. }), "{e}");
    let e = dev
        .launch(&m, "k", &cfg, &[ParamValue::Ptr(p)])
        .unwrap_err();
    assert!(
        matches!(e, PtxError::BadLaunch { ref kernel, .. } if kernel == "k"),
        "{e}"
    );
    let mut big = LaunchConfig::linear(1, 32);
    big.dynamic_shared_bytes = 1 << 20;
    let two_ptrs = [ParamValue::Ptr(p), ParamValue::Ptr(p)];
    // wrong parameter type, too many threads, empty grid, too much dynamic shared memory
    for (cfg, params) in [
        (&cfg, &[ParamValue::Ptr(p), ParamValue::U32(1)][..]),
        (&LaunchConfig::linear(1, 2048), &two_ptrs[..]),
        (&LaunchConfig::linear(0, 32), &two_ptrs[..]),
        (&big, &two_ptrs[..]),
    ] {
        let e = dev.launch(&m, "k", cfg, params).unwrap_err();
        assert!(matches!(e, PtxError::BadLaunch { .. }), "{e}");
    }
    // host-side memory API errors
    assert!(matches!(
        dev.read(DevicePtr(12345), 4),
        Err(PtxError::Memory { .. })
    ));
    assert!(matches!(
        dev.write(p.offset(60), &[0; 8]),
        Err(PtxError::Memory { .. })
    ));
    assert!(matches!(
        dev.free(p.offset(4)),
        Err(PtxError::Memory { .. })
    ));
    dev.free(p).unwrap();
    assert!(matches!(dev.read(p, 4), Err(PtxError::Memory { .. })));
    let q = dev.alloc(0).unwrap();
    assert_ne!(q.0, 0);
    assert_eq!(q.0 % 256, 0);
}

#[test]
fn integer_semantics() {
    let ops = [
        "mul.hi.s32 %r10, %r4, %r5;",
        "mul.hi.u32 %r10, %r4, %r5;",
        "div.s32 %r10, %r4, %r6;",
        "rem.s32 %r10, %r4, %r6;",
        "shr.s32 %r10, %r4, 3;",
        "shr.u32 %r10, %r4, 3;",
        "bfe.u32 %r10, %r4, 4, 9;",
        "bfe.s32 %r10, %r4, 4, 9;",
        "bfi.b32 %r10, %r5, %r4, 8, 4;",
        "prmt.b32 %r10, %r4, %r5, 0x7351;",
        "popc.b32 %r10, %r4;",
        "clz.b32 %r10, %r4;",
        "brev.b32 %r10, %r4;",
        "min.s32 %r10, %r4, %r5;",
        "max.u32 %r10, %r4, %r5;",
        "mad.lo.u32 %r10, %r4, %r5, 7;",
        "sad.u32 %r10, %r4, %r5, 1;",
        "mul24.lo.s32 %r10, %r4, %r5;",
        "mul.wide.s32 %rd10, %r4, %r5;\ncvt.u32.u64 %r10, %rd10;",
        "mul.wide.s32 %rd10, %r4, %r5;\nshr.u64 %rd10, %rd10, 32;\ncvt.u32.u64 %r10, %rd10;",
        "setp.lt.s32 %p1, %r4, %r5;\nselp.u32 %r10, 11, 22, %p1;",
        "setp.lo.u32 %p1, %r4, %r5;\nsetp.ne.and.u32 %p2, %r4, 0, %p1;\nselp.u32 %r10, 1, 0, %p2;",
        "abs.s32 %r10, %r4;",
        "neg.s32 %r10, %r4;",
        "not.b32 %r10, %r4;",
        "xor.b32 %r10, %r4, %r5;",
        "shf.l.wrap.b32 %r10, %r4, %r5, 12;",
        "lop3.b32 %r10, %r4, %r5, %r6, 0xE8;",
        "add.cc.u32 %r10, %r4, %r5;\naddc.u32 %r10, 0, 0;",
        "cvt.s8.s32 %r10, %r4;",
        "cvt.sat.u8.s32 %r10, %r4;",
        "dp4a.s32.s32 %r10, %r4, %r5, 100;",
        "bfind.u32 %r10, %r4;",
        "slct.u32.s32 %r10, 5, 6, %r4;",
    ];
    let n = ops.len() as u32;
    let mut body = String::from(
        "mul.wide.u32 %rd3, %r1, 12;\nadd.u64 %rd3, %rd2, %rd3;\nld.global.u32 %r4, [%rd3];\nld.global.u32 %r5, [%rd3+4];\nld.global.u32 %r6, [%rd3+8];\n",
    );
    for (i, op) in ops.iter().enumerate() {
        body += op;
        body += "\n";
        body += &st(10, n, i as u32);
    }
    body += "ret;";
    let m = kernel(&body);
    let vals: [(i32, i32, i32); 6] = [
        (-123456789, 987654, 7),
        (i32::MIN, -1, -1),
        (0x7F00_00F1, 0x1234_5678, -13),
        (-1, 1, 3),
        (300, -5, 4),
        (0, 0x80, 5),
    ];
    let mut input = Vec::new();
    for (a, b, c) in vals {
        input.extend([a as u32, b as u32, c as u32]);
    }
    let out = run(&m, 1, vals.len() as u32, vals.len() * n as usize, &input).unwrap();
    for (t, &(a, b, c)) in vals.iter().enumerate() {
        let (ua, ub) = (a as u32, b as u32);
        let bfe_u = (ua >> 4) & 0x1FF;
        let bfe_s = ((bfe_u << 23) as i32 >> 23) as u32;
        let bytes = [ua.to_le_bytes(), ub.to_le_bytes()].concat();
        let prmt = [1usize, 5, 3, 7]
            .iter()
            .enumerate()
            .fold(0u32, |r, (k, &s)| r | (bytes[s] as u32) << (8 * k));
        let wide = a as i64 * b as i64;
        let lop = (ua & ub) | (ua & c as u32) | (ub & c as u32); // majority = 0xE8
        let dp4a = (0..4).fold(100i32, |acc, i| {
            acc + ((ua >> (8 * i)) as i8 as i32) * ((ub >> (8 * i)) as i8 as i32)
        });
        let want: Vec<u32> = vec![
            (wide >> 32) as u32,
            ((ua as u64 * ub as u64) >> 32) as u32,
            if c == 0 {
                u32::MAX
            } else {
                a.wrapping_div(c) as u32
            },
            if c == 0 { ua } else { a.wrapping_rem(c) as u32 },
            (a >> 3) as u32,
            ua >> 3,
            bfe_u,
            bfe_s,
            (ua & !0xF00) | ((ub & 0xF) << 8),
            prmt,
            ua.count_ones(),
            ua.leading_zeros(),
            ua.reverse_bits(),
            a.min(b) as u32,
            ua.max(ub),
            ua.wrapping_mul(ub).wrapping_add(7),
            ua.abs_diff(ub) + 1,
            (((a << 8) >> 8) as i64 * ((b << 8) >> 8) as i64) as u32,
            wide as u32,
            (wide >> 32) as u32,
            if a < b { 11 } else { 22 },
            u32::from(ua != 0 && ua < ub),
            a.wrapping_abs() as u32,
            a.wrapping_neg() as u32,
            !ua,
            ua ^ ub,
            ((((ub as u64) << 32 | ua as u64) << 12) >> 32) as u32,
            lop,
            u32::from(ua.checked_add(ub).is_none()),
            a as i8 as i32 as u32,
            a.clamp(0, 255) as u32,
            dp4a as u32,
            if ua == 0 {
                u32::MAX
            } else {
                31 - ua.leading_zeros()
            },
            if a >= 0 { 5 } else { 6 },
        ];
        let got = &out[t * n as usize..(t + 1) * n as usize];
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "thread {t} op `{}`: got {g:#x} want {w:#x}", ops[i]);
        }
    }
}

#[test]
fn special_registers_in_3d_launch() {
    let m = module(
        ".visible .entry k(.param .u64 out)\n{\n.reg .b32 %r<20>;\n.reg .b64 %rd<4>;\n\
         ld.param.u64 %rd1, [out];\n\
         mov.u32 %r1, %tid.x; mov.u32 %r2, %tid.y; mov.u32 %r3, %tid.z;\n\
         mov.u32 %r4, %ntid.x; mov.u32 %r5, %ntid.y;\n\
         mad.lo.u32 %r6, %r3, %r5, %r2; mad.lo.u32 %r6, %r6, %r4, %r1;\n\
         mov.u32 %r7, %ctaid.x; mov.u32 %r8, %ctaid.y; mov.u32 %r9, %nctaid.x;\n\
         mad.lo.u32 %r10, %r8, %r9, %r7;\n\
         mov.u32 %r11, %ntid.z; mul.lo.u32 %r11, %r11, %r5; mul.lo.u32 %r11, %r11, %r4;\n\
         mad.lo.u32 %r12, %r10, %r11, %r6;\n\
         mul.wide.u32 %rd2, %r12, 16; add.u64 %rd2, %rd1, %rd2;\n\
         mov.u32 %r13, %laneid; mov.u32 %r14, %warpid; mov.u32 %r15, %lanemask_lt; mov.u32 %r16, %nctaid.y;\n\
         st.global.v4.u32 [%rd2], {%r13, %r14, %r15, %r10};\n\
         ret;\n}\n",
    );
    let mut dev = SimulatedGpu::new();
    let (grid, block) = ((2u32, 3u32, 1u32), (8u32, 4u32, 2u32));
    let nthreads = 8 * 4 * 2;
    let total = 6 * nthreads;
    let out = dev.alloc(total * 16).unwrap();
    let st = dev
        .launch(
            &m,
            "k",
            &LaunchConfig::new(grid, block),
            &[ParamValue::Ptr(out)],
        )
        .unwrap();
    assert_eq!(st.ctas, 6);
    assert_eq!(st.warps, 12);
    let v = dev.read_u32(out, total * 4).unwrap();
    for cta in 0..6usize {
        for t in 0..nthreads {
            let r = &v[(cta * nthreads + t) * 4..][..4];
            assert_eq!(r[0] as usize, t % 32);
            assert_eq!(r[1] as usize, t / 32);
            assert_eq!(r[2], (1u32 << (t % 32)) - 1);
            assert_eq!(r[3] as usize, cta);
        }
    }
}

#[test]
fn const_global_local_and_dynamic_shared() {
    let m = module(
        ".const .align 4 .u32 tbl[4] = {10, 20, 30, 40};\n\
         .global .align 4 .u32 gcount[2] = {5, 0};\n\
         .extern .shared .align 16 .b8 dyn[];\n\
         .visible .entry k(.param .u64 out)\n{\n.reg .b32 %r<20>;\n.reg .b64 %rd<10>;\n\
         .local .align 4 .b8 scratch[16];\n\
         ld.param.u64 %rd1, [out];\n mov.u32 %r1, %tid.x;\n\
         and.b32 %r2, %r1, 3; shl.b32 %r3, %r2, 2; mov.u32 %r4, tbl; add.u32 %r4, %r4, %r3;\n\
         ld.const.u32 %r5, [%r4];\n\
         ld.global.u32 %r6, [gcount];\n\
         mov.u64 %rd2, scratch; st.local.u32 [%rd2+8], %r5; ld.local.u32 %r7, [scratch+8];\n\
         mov.u64 %rd3, dyn; cvta.shared.u64 %rd3, %rd3; shl.b32 %r8, %r1, 2; cvt.u64.u32 %rd4, %r8; add.u64 %rd4, %rd3, %rd4;\n\
         st.u32 [%rd4], %r1; ld.u32 %r9, [%rd4];\n\
         atom.global.add.u32 %r10, [gcount+4], 1;\n\
         mul.wide.u32 %rd5, %r1, 16; add.u64 %rd5, %rd1, %rd5;\n\
         st.global.v4.u32 [%rd5], {%r5, %r6, %r7, %r9};\n\
         ret;\n}\n",
    );
    let mut dev = SimulatedGpu::new();
    let out = dev.alloc(64 * 16).unwrap();
    let mut cfg = LaunchConfig::linear(1, 64);
    cfg.dynamic_shared_bytes = 256;
    dev.launch(&m, "k", &cfg, &[ParamValue::Ptr(out)]).unwrap();
    let v = dev.read_u32(out, 64 * 4).unwrap();
    for t in 0..64 {
        assert_eq!(
            &v[t * 4..t * 4 + 4],
            &[
                [10, 20, 30, 40][t % 4],
                5,
                [10, 20, 30, 40][t % 4],
                t as u32
            ]
        );
    }
    // dynamic shared too small: the generic store of thread 32 is out of bounds
    cfg.dynamic_shared_bytes = 128;
    let e = dev
        .launch(&m, "k", &cfg, &[ParamValue::Ptr(out)])
        .unwrap_err();
    match e {
        PtxError::OutOfBounds {
            space, tid, line, ..
        } => {
            assert_eq!(space, Space::Generic);
            assert_eq!(tid, (32, 0, 0));
            assert_eq!(line, 19);
        }
        e => panic!("{e}"),
    }
}

#[test]
fn out_of_bounds_global_read_names_thread() {
    let m = kernel(
        "setp.eq.u32 %p1, %r1, 37;\n@!%p1 bra OK;\nadd.u64 %rd2, %rd2, 4096;\nOK:\n\
         mul.wide.u32 %rd3, %r1, 4;\nand.b64 %rd3, %rd3, 63;\nadd.u64 %rd3, %rd2, %rd3;\nld.global.u32 %r5, [%rd3];\nret;",
    );
    let e = run(&m, 2, 32, 64, &[0; 16]).unwrap_err();
    match e {
        PtxError::OutOfBounds {
            kernel,
            space,
            address,
            ctaid,
            tid,
            line,
            opcode,
            ..
        } => {
            assert_eq!(kernel, "k");
            assert_eq!(space, Space::Global);
            assert_eq!(ctaid, (1, 0, 0));
            assert_eq!(tid, (5, 0, 0));
            assert_eq!(line, 24);
            assert_eq!(opcode, "ld.global.u32");
            assert!(address >= 1 << 40);
        }
        e => panic!("{e}"),
    }
}

#[test]
fn shared_oob_misaligned_and_trap() {
    let m = module(
        ".visible .entry k()\n{\n.reg .b32 %r<4>;\n.shared .align 4 .b8 sm[64];\n\
         mov.u32 %r1, %tid.x;\nshl.b32 %r1, %r1, 2;\nld.shared.u32 %r2, [%r1];\nret;\n}\n",
    );
    let mut dev = SimulatedGpu::new();
    dev.launch(&m, "k", &LaunchConfig::linear(1, 16), &[])
        .unwrap();
    let e = dev
        .launch(&m, "k", &LaunchConfig::linear(1, 17), &[])
        .unwrap_err();
    assert!(
        matches!(
            e,
            PtxError::OutOfBounds {
                space: Space::Shared,
                address: 64,
                tid: (16, 0, 0),
                ..
            }
        ),
        "{e}"
    );
    let m = kernel("ld.global.u32 %r5, [%rd2+2];\nret;");
    let e = run(&m, 1, 1, 1, &[1, 2]).unwrap_err();
    assert!(matches!(e, PtxError::Misaligned { align: 4, .. }), "{e}");
    let m = kernel("setp.eq.u32 %p1, %r1, 3;\n@%p1 trap;\nret;");
    let e = run(&m, 1, 8, 1, &[]).unwrap_err();
    assert!(
        matches!(
            e,
            PtxError::Trap {
                tid: (3, 0, 0),
                line: 18,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn stats_count_thread_instructions() {
    let m = module(".visible .entry k()\n{\n.reg .b32 %r<4>;\nmov.u32 %r1, 1;\nadd.u32 %r1, %r1, 1;\nret;\n}\n");
    let mut dev = SimulatedGpu::new();
    let s = dev
        .launch(&m, "k", &LaunchConfig::linear(2, 48), &[])
        .unwrap();
    // 3 instructions × 48 threads × 2 CTAs
    assert_eq!(s.instructions, 3 * 48 * 2);
    assert_eq!(s.warps, 4);
}
