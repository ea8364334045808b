//! Conversion and floating-point semantics through real kernels: bf16 / f16 / fp8
//! rounding (ties-to-even, saturation, NaN) against the `half` crate and hand-computed
//! values, packed conversions, int↔float rounding modes and saturation, f32 rounding
//! modifiers, `.ftz`/`.sat`, min/max NaN rules and unordered comparisons.

#![allow(clippy::needless_range_loop, clippy::manual_is_multiple_of)]

use crate::helpers::HDR_SM89;
use troupe_ptx_interp::*;

/// Run `body` once per input word: `%r4` holds the input (also as `%f4` / `%rd4`
/// zero-extended), `%r5` the second input; the result is read from `%r10`.
fn map2(body: &str, a: &[u32], b: &[u32]) -> Vec<u32> {
    let src = format!(
        "{HDR_SM89}.visible .entry k(.param .u64 out, .param .u64 inp, .param .u32 n)\n{{\n\
         .reg .pred %p<8>;\n.reg .b16 %h<8>;\n.reg .b32 %r<40>;\n.reg .b64 %rd<20>;\n.reg .f32 %f<20>;\n.reg .f64 %fd<8>;\n\
         ld.param.u64 %rd1, [out];\nld.param.u64 %rd2, [inp];\nld.param.u32 %r2, [n];\n\
         mov.u32 %r1, %tid.x;\nmov.u32 %r3, %ctaid.x;\nmad.lo.u32 %r1, %r3, 256, %r1;\n\
         setp.ge.u32 %p7, %r1, %r2;\n@%p7 ret;\n\
         mul.wide.u32 %rd3, %r1, 8;\nadd.u64 %rd3, %rd2, %rd3;\nld.global.v2.u32 {{%r4, %r5}}, [%rd3];\n\
         mov.b32 %f4, %r4;\nmov.b32 %f5, %r5;\ncvt.u64.u32 %rd4, %r4;\nmov.u32 %r10, 0;\n\
         {body}\n\
         mul.wide.u32 %rd5, %r1, 4;\nadd.u64 %rd5, %rd1, %rd5;\nst.global.u32 [%rd5], %r10;\nret;\n}}\n"
    );
    let m = Module::parse(&src).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let n = a.len();
    let mut dev = SimulatedGpu::new();
    let inp: Vec<u32> = a
        .iter()
        .zip(b.iter().chain(std::iter::repeat(&0)))
        .flat_map(|(x, y)| [*x, *y])
        .collect();
    let pi = dev.alloc(inp.len() * 4).unwrap();
    dev.write_u32(pi, &inp).unwrap();
    let po = dev.alloc(n * 4).unwrap();
    dev.launch(
        &m,
        "k",
        &LaunchConfig::linear(n.div_ceil(256) as u32, 256),
        &[
            ParamValue::Ptr(po),
            ParamValue::Ptr(pi),
            ParamValue::U32(n as u32),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{body}"));
    dev.read_u32(po, n).unwrap()
}

fn map1(body: &str, a: &[u32]) -> Vec<u32> {
    map2(body, a, &[])
}

fn f(x: f32) -> u32 {
    x.to_bits()
}

fn random_f32s(n: usize, seed: u32) -> Vec<u32> {
    let mut s = seed;
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        // mix raw bit patterns with values in a "normal" range and exact ties
        let x = match i % 3 {
            0 => s,
            1 => f((s % 20000) as f32 / 37.0 - 270.0),
            _ => (s & 0xFFFF_0000) | 0x8000 | ((s >> 3) & 0x1_0000),
        };
        v.push(x);
    }
    v
}

#[test]
fn f32_to_bf16_and_f16_match_half_crate() {
    let xs = random_f32s(3000, 0x9E37_79B9);
    let bf = map1("cvt.rn.bf16.f32 %h1, %f4;\ncvt.u32.u16 %r10, %h1;", &xs);
    let hf = map1("cvt.rn.f16.f32 %h1, %f4;\ncvt.u32.u16 %r10, %h1;", &xs);
    for (i, &x) in xs.iter().enumerate() {
        let v = f32::from_bits(x);
        if v.is_nan() {
            assert_eq!(bf[i], 0x7FFF);
            assert_eq!(hf[i], 0x7FFF);
            continue;
        }
        assert_eq!(
            bf[i],
            half::bf16::from_f32(v).to_bits() as u32,
            "bf16 of {v:e} ({x:#x})"
        );
        assert_eq!(
            hf[i],
            half::f16::from_f32(v).to_bits() as u32,
            "f16 of {v:e} ({x:#x})"
        );
    }
    // hand-computed ties to even
    let t = map1(
        "cvt.rn.bf16.f32 %h1, %f4;\ncvt.u32.u16 %r10, %h1;",
        &[
            0x3F80_8000,
            0x3F81_8000,
            0x3F80_8001,
            0x7F7F_FFFF,
            0xFF80_0000,
        ],
    );
    assert_eq!(t, vec![0x3F80, 0x3F82, 0x3F81, 0x7F80, 0xFF80]);
    // round-trips back to f32 are exact
    let back = map1(
        "cvt.rn.bf16.f32 %h1, %f4;\ncvt.f32.bf16 %f10, %h1;\nmov.b32 %r10, %f10;",
        &[f(1.0 + 1.0 / 256.0), f(-3.0e38)],
    );
    assert_eq!(back[0], f(1.0));
    assert_eq!(back[1], f(half::bf16::from_f32(-3.0e38).to_f32()));
    let h = map1(
        "cvt.rn.f16.f32 %h1, %f4;\ncvt.f32.f16 %f10, %h1;\nmov.b32 %r10, %f10;",
        &[f(65519.0), f(65520.0), f(5.96e-8)],
    );
    assert_eq!(h, vec![f(65504.0), f(f32::INFINITY), f(5.9604645e-8)]);
}

#[test]
fn packed_bf16x2_and_f16x2_put_first_operand_high() {
    let a = [f(1.0), f(-2.5), f(3.0e38)];
    let b = [f(0.5), f(7.0), f(f32::NAN)];
    let r = map2("cvt.rn.bf16x2.f32 %r10, %f4, %f5;", &a, &b);
    assert_eq!(r[0], 0x3F80_3F00);
    assert_eq!(r[1], 0xC020_40E0);
    assert_eq!(
        r[2],
        (half::bf16::from_f32(3.0e38).to_bits() as u32) << 16 | 0x7FFF
    );
    let r = map2("cvt.rn.f16x2.f32 %r10, %f4, %f5;", &a, &b);
    assert_eq!(r[0], 0x3C00_3800);
    assert_eq!(r[2], 0x7C00_7FFF);
    let r = map2(
        "cvt.rn.relu.bf16x2.f32 %r10, %f4, %f5;",
        &[f(-1.0)],
        &[f(2.0)],
    );
    assert_eq!(r[0], 0x0000_4000);
    let r = map2(
        "cvt.rn.satfinite.bf16x2.f32 %r10, %f4, %f5;",
        &[f(f32::INFINITY)],
        &[f(-3.4e38)],
    );
    assert_eq!(r[0], 0x7F7F_FF7F);
}

#[test]
fn fp8_e4m3_and_e5m2_conversions() {
    let vals = [
        448.0f32,
        464.0,
        465.0,
        1e9,
        -1e9,
        f32::NAN,
        f32::NEG_INFINITY,
        1.0,
        1.0625,
        1.1875,
        2f32.powi(-10),
        3.0 * 2f32.powi(-10),
        -0.0,
        0.3,
    ];
    let wants: [u32; 14] = [
        0x7E, 0x7E, 0x7E, 0x7E, 0xFE, 0x7F, 0xFE, 0x38, 0x38, 0x3A, 0x00, 0x02, 0x80, 0x2A,
    ];
    let xs: Vec<u32> = vals.iter().map(|v| f(*v)).collect();
    let ones = vec![f(1.0); xs.len()];
    let r = map2(
        "cvt.rn.satfinite.e4m3x2.f32 %h1, %f4, %f5;\ncvt.u32.u16 %r10, %h1;",
        &xs,
        &ones,
    );
    for (i, (&got, &want)) in r.iter().zip(&wants).enumerate() {
        assert_eq!(got, (want << 8) | 0x38, "e4m3 of {}", vals[i]);
    }
    let r = map2(
        "cvt.rn.satfinite.e5m2x2.f32 %h1, %f4, %f5;\ncvt.u32.u16 %r10, %h1;",
        &[f(57344.0), f(1e9), f(1.0), f(1.25), f(1.125)],
        &[f(-0.0); 5],
    );
    assert_eq!(r, vec![0x7B80, 0x7B80, 0x3C80, 0x3D80, 0x3C80]);
    // every e4m3 code widens exactly to f16 (upper byte -> upper half)
    let codes: Vec<u32> = (0..256u32).map(|c| (c << 8) | 0x38).collect();
    let r = map1(
        "cvt.u16.u32 %h1, %r4;\ncvt.rn.f16x2.e4m3x2 %r10, %h1;",
        &codes,
    );
    for c in 0..256u32 {
        let exp = (c >> 3) & 0xF;
        let man = c & 7;
        let mag = if exp == 0 {
            man as f32 * 2f32.powi(-9)
        } else {
            (1.0 + man as f32 / 8.0) * 2f32.powi(exp as i32 - 7)
        };
        let v = if c & 0x80 != 0 { -mag } else { mag };
        let hi = half::f16::from_bits((r[c as usize] >> 16) as u16);
        if c & 0x7F == 0x7F {
            assert!(hi.is_nan(), "code {c:#x}");
        } else {
            assert_eq!(hi.to_f32(), v, "code {c:#x}");
        }
        assert_eq!(r[c as usize] & 0xFFFF, 0x3C00);
    }
}

#[test]
fn float_to_int_and_int_to_float() {
    let xs = [
        f(3e9),
        f(-3e9),
        f(f32::NAN),
        f(-2.5),
        f(2.5),
        f(-0.7),
        f(1e20),
    ];
    assert_eq!(
        map1("cvt.rzi.s32.f32 %r10, %f4;", &xs),
        vec![
            i32::MAX as u32,
            i32::MIN as u32,
            0,
            (-2i32) as u32,
            2,
            0,
            i32::MAX as u32
        ]
    );
    assert_eq!(
        map1("cvt.rni.s32.f32 %r10, %f4;", &xs)[3..6],
        [(-2i32) as u32, 2, (-1i32) as u32]
    );
    assert_eq!(
        map1("cvt.rmi.s32.f32 %r10, %f4;", &xs)[3..6],
        [(-3i32) as u32, 2, (-1i32) as u32]
    );
    assert_eq!(
        map1("cvt.rpi.u32.f32 %r10, %f4;", &xs)[3..7],
        [0, 3, 0, u32::MAX]
    );
    let ints = [16_777_217u32, 16_777_219, u32::MAX, 3];
    assert_eq!(
        map1("cvt.rn.f32.u32 %f10, %r4;\nmov.b32 %r10, %f10;", &ints),
        vec![f(16_777_216.0), f(16_777_220.0), f(4_294_967_296.0), f(3.0)]
    );
    assert_eq!(
        map1("cvt.rz.f32.u32 %f10, %r4;\nmov.b32 %r10, %f10;", &ints),
        vec![f(16_777_216.0), f(16_777_218.0), f(4_294_967_040.0), f(3.0)]
    );
    assert_eq!(
        map1("cvt.rp.f32.u32 %f10, %r4;\nmov.b32 %r10, %f10;", &ints)[..2],
        [f(16_777_218.0), f(16_777_220.0)]
    );
    assert_eq!(
        map1(
            "cvt.rm.f32.s32 %f10, %r4;\nmov.b32 %r10, %f10;",
            &[(-16_777_217i32) as u32]
        )[0],
        f(-16_777_218.0)
    );
    // 64-bit source, directed rounding
    let r = map1(
        "mul.wide.u32 %rd5, %r4, %r4;\ncvt.rp.f32.u64 %f10, %rd5;\nmov.b32 %r10, %f10;",
        &[0xFFFF_FFFF],
    );
    assert_eq!(r[0], f(18_446_744_073_709_551_616.0));
    // int -> int saturation / truncation / sign extension
    let vs = [300u32, (-5i32) as u32, 0x1_0080, 127];
    assert_eq!(
        map1("cvt.sat.u8.s32 %r10, %r4;", &vs),
        vec![255, 0, 255, 127]
    );
    assert_eq!(
        map1("cvt.s8.s32 %r10, %r4;", &vs),
        vec![44, (-5i32) as u32, (-128i32) as u32, 127]
    );
    assert_eq!(
        map1("cvt.u16.u32 %h1, %r4;\ncvt.s32.s16 %r10, %h1;", &vs),
        vec![300, (-5i32) as u32, 128, 127]
    );
    assert_eq!(
        map1(
            "cvt.sat.s16.s32 %h1, %r4;\ncvt.u32.u16 %r10, %h1;",
            &[70000, (-70000i32) as u32]
        ),
        vec![0x7FFF, 0x8000]
    );
    // f64 <-> f32 rounding
    let r = map1("cvt.f64.f32 %fd1, %f4;\nadd.f64 %fd1, %fd1, 0d3E10000000000000;\ncvt.rz.f32.f64 %f10, %fd1;\nmov.b32 %r10, %f10;", &[f(1.0)]);
    assert_eq!(r[0], f(1.0));
    let r = map1("cvt.f64.f32 %fd1, %f4;\nadd.f64 %fd1, %fd1, 0d3E10000000000000;\ncvt.rp.f32.f64 %f10, %fd1;\nmov.b32 %r10, %f10;", &[f(1.0)]);
    assert_eq!(r[0], f(1.0) + 1);
    let r = map1(
        "cvt.rna.tf32.f32 %r10, %f4;",
        &[0x3F80_1000, 0x3F80_0FFF, 0x3F80_3000],
    );
    assert_eq!(r, vec![0x3F80_2000, 0x3F80_0000, 0x3F80_4000]);
}

#[test]
fn f32_rounding_ftz_sat_and_special_values() {
    let one = f(1.0);
    let tiny = f(1e-30);
    assert_eq!(
        map2(
            "add.rn.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[one],
            &[tiny]
        )[0],
        one
    );
    assert_eq!(
        map2(
            "add.rp.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[one],
            &[tiny]
        )[0],
        one + 1
    );
    assert_eq!(
        map2(
            "sub.rz.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[one],
            &[tiny]
        )[0],
        one - 1
    );
    let x1 = one + 1; // 1 + 2^-23; x1*x1 = 1 + 2^-22 + 2^-46
    assert_eq!(
        map2(
            "mul.rm.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[x1],
            &[x1]
        )[0],
        one + 2
    );
    assert_eq!(
        map2(
            "mul.rp.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[x1],
            &[x1]
        )[0],
        one + 3
    );
    assert_eq!(
        map2(
            "mul.rm.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[x1 | 0x8000_0000],
            &[x1]
        )[0],
        (one + 3) | 0x8000_0000
    );
    assert_eq!(
        map2(
            "mul.rz.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[x1 | 0x8000_0000],
            &[x1]
        )[0],
        (one + 2) | 0x8000_0000
    );
    // fma is single-rounded
    let x = f32::from_bits(one + 1);
    assert_eq!(
        map2(
            "fma.rn.f32 %f10, %f4, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[x.to_bits()],
            &[f(-1.0)]
        )[0],
        f(2f32.powi(-22) + 2f32.powi(-46))
    );
    // ftz flushes subnormal inputs and results
    assert_eq!(
        map2(
            "add.ftz.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[1],
            &[0]
        )[0],
        0
    );
    assert_eq!(
        map2(
            "mul.ftz.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[f(1e-20)],
            &[f(1e-20)]
        )[0],
        0
    );
    assert_eq!(
        map2("add.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;", &[1], &[0])[0],
        1
    );
    // sat clamps to [0, 1], NaN -> 0
    assert_eq!(
        map2(
            "add.sat.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[f(0.75), f(-3.0), f(f32::NAN)],
            &[f(0.5), f(1.0), f(1.0)]
        ),
        vec![one, 0, 0]
    );
    // NaN results are canonical
    assert_eq!(
        map2(
            "add.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[f(f32::INFINITY)],
            &[f(f32::NEG_INFINITY)]
        )[0],
        0x7FFF_FFFF
    );
    // min/max: NaN ignored unless .NaN; -0 < +0
    assert_eq!(
        map2(
            "min.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[f(f32::NAN), f(0.0)],
            &[f(2.0), f(-0.0)]
        ),
        vec![f(2.0), f(-0.0)]
    );
    assert_eq!(
        map2(
            "max.NaN.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[f(f32::NAN)],
            &[f(2.0)]
        )[0],
        0x7FFF_FFFF
    );
    // div / sqrt / rcp are correctly rounded; approx ops are the exactly rounded value
    assert_eq!(
        map2(
            "div.rn.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
            &[f(1.0)],
            &[f(3.0)]
        )[0],
        f(1.0 / 3.0)
    );
    assert_eq!(
        map1("sqrt.rn.f32 %f10, %f4;\nmov.b32 %r10, %f10;", &[f(2.0)])[0],
        f(2f32.sqrt())
    );
    assert_eq!(
        map1("rcp.rn.f32 %f10, %f4;\nmov.b32 %r10, %f10;", &[f(3.0)])[0],
        f(1.0 / 3.0)
    );
    assert_eq!(
        map1("ex2.approx.f32 %f10, %f4;\nmov.b32 %r10, %f10;", &[f(0.5)])[0],
        f(std::f32::consts::SQRT_2)
    );
    assert_eq!(
        map1("lg2.approx.f32 %f10, %f4;\nmov.b32 %r10, %f10;", &[f(8.0)])[0],
        f(3.0)
    );
    assert_eq!(
        map1(
            "rsqrt.approx.f32 %f10, %f4;\nmov.b32 %r10, %f10;",
            &[f(4.0)]
        )[0],
        f(0.5)
    );
    assert_eq!(
        map1("tanh.approx.f32 %f10, %f4;\nmov.b32 %r10, %f10;", &[f(0.5)])[0],
        f((0.5f64).tanh() as f32)
    );
    assert_eq!(
        map1("abs.f32 %f10, %f4;\nmov.b32 %r10, %f10;", &[f(-2.0)])[0],
        f(2.0)
    );
    assert_eq!(
        map1("neg.f32 %f10, %f4;\nmov.b32 %r10, %f10;", &[f(2.0)])[0],
        f(-2.0)
    );
    // f64 arithmetic
    assert_eq!(
        map2("cvt.f64.f32 %fd1, %f4;\ncvt.f64.f32 %fd2, %f5;\ndiv.rn.f64 %fd3, %fd1, %fd2;\ncvt.rn.f32.f64 %f10, %fd3;\nmov.b32 %r10, %f10;", &[f(1.0)], &[f(3.0)])[0],
        f((1.0f64 / 3.0) as f32)
    );
}

#[test]
fn comparisons_ordered_unordered_and_bool_combine() {
    let nan = f(f32::NAN);
    let a = [f(1.0), nan, f(2.0), f(-0.0)];
    let b = [f(2.0), f(1.0), f(2.0), f(0.0)];
    let run = |cmp: &str| -> Vec<u32> {
        map2(
            &format!("setp.{cmp}.f32 %p1, %f4, %f5;\nselp.u32 %r10, 1, 0, %p1;"),
            &a,
            &b,
        )
    };
    assert_eq!(run("lt"), vec![1, 0, 0, 0]);
    assert_eq!(run("ltu"), vec![1, 1, 0, 0]);
    assert_eq!(run("eq"), vec![0, 0, 1, 1]);
    assert_eq!(run("equ"), vec![0, 1, 1, 1]);
    assert_eq!(run("ne"), vec![1, 0, 0, 0]);
    assert_eq!(run("neu"), vec![1, 1, 0, 0]);
    assert_eq!(run("ge"), vec![0, 0, 1, 1]);
    assert_eq!(run("geu"), vec![0, 1, 1, 1]);
    assert_eq!(run("num"), vec![1, 0, 1, 1]);
    assert_eq!(run("nan"), vec![0, 1, 0, 0]);
    // setp with .or combine and dual destination
    let r = map2(
        "setp.gt.s32 %p1, %r4, %r5;\nsetp.lt.or.s32 %p2|%p3, %r4, 0, %p1;\nselp.u32 %r10, 1, 0, %p2;\nselp.u32 %r11, 2, 0, %p3;\nadd.u32 %r10, %r10, %r11;",
        &[5, (-1i32) as u32, 1],
        &[3, 3, 3],
    );
    // p2 = (a<0)|(a>b), p3 = !(a<0)|(a>b)
    assert_eq!(r, vec![3, 1, 2]);
    let r = map2("set.gt.u32.s32 %r10, %r4, %r5;", &[5, 1], &[3, 3]);
    assert_eq!(r, vec![u32::MAX, 0]);
    let r = map2(
        "set.lt.f32.f32 %f10, %f4, %f5;\nmov.b32 %r10, %f10;",
        &[f(1.0)],
        &[f(3.0)],
    );
    assert_eq!(r, vec![f(1.0)]);
    let r = map1(
        "testp.notanumber.f32 %p1, %f4;\nselp.u32 %r10, 1, 0, %p1;",
        &[nan, f(1.0)],
    );
    assert_eq!(r, vec![1, 0]);
}

#[test]
fn half_precision_arithmetic() {
    let bf = |x: f32| half::bf16::from_f32(x).to_bits() as u32;
    let hf = |x: f32| half::f16::from_f32(x).to_bits() as u32;
    let r = map2(
        "fma.rn.bf16x2 %r10, %r4, %r5, %r5;",
        &[(bf(2.0) << 16) | bf(1.5)],
        &[(bf(3.0) << 16) | bf(0.25)],
    );
    assert_eq!(r[0], (bf(9.0) << 16) | bf(0.625));
    let r = map2(
        "mul.rn.f16x2 %r10, %r4, %r5;",
        &[(hf(2.0) << 16) | hf(1.5)],
        &[(hf(3.0) << 16) | hf(-0.25)],
    );
    assert_eq!(r[0], (hf(6.0) << 16) | hf(-0.375));
    let r = map2(
        "add.rn.f16 %h3, %h1, %h2;\ncvt.u32.u16 %r10, %h3;",
        &[0],
        &[0],
    );
    assert_eq!(r[0], 0);
    let r = map2(
        "mov.b32 {%h1, %h2}, %r4;\nadd.f16 %h3, %h1, %h2;\ncvt.u32.u16 %r10, %h3;",
        &[(hf(65504.0) << 16) | hf(65504.0)],
        &[0],
    );
    assert_eq!(r[0], 0x7C00);
    let r = map2(
        "max.bf16x2 %r10, %r4, %r5;",
        &[(bf(-1.0) << 16) | bf(4.0)],
        &[(bf(2.0) << 16) | bf(3.0)],
    );
    assert_eq!(r[0], (bf(2.0) << 16) | bf(4.0));
}
