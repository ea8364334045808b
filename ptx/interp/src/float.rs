//! Per-lane floating-point arithmetic for f32 / f64 / f16 / bf16 (scalar and x2):
//! IEEE round-to-nearest fast paths, exact directed rounding via error-free
//! transformations (TwoSum, FMA residuals) fed into the generic encoder, `.ftz`,
//! `.sat`, `.relu`, PTX min/max NaN rules, and the approximate transcendental ops
//! (computed in f64 and rounded once — more accurate than the hardware's ulp bounds).

use super::ast::{FKind, FMods, FOp, Rnd};
use super::convert::{self, canon32, encode, ftz32, Fmt, BF16, F16, F32, F64, NAN32};

/// Sign of the magnitude perturbation `err` relative to `s`.
#[inline]
fn tsign(s: f64, err: f64) -> i8 {
    if err == 0.0 || !err.is_finite() || !s.is_finite() {
        0
    } else if (err > 0.0) == (s > 0.0) {
        1
    } else {
        -1
    }
}

#[inline]
fn two_sum(a: f64, b: f64) -> (f64, i8) {
    let s = a + b;
    let bb = s - a;
    let err = (a - (s - bb)) + (b - bb);
    (s, tsign(s, err))
}

/// Exact-ish result `(value, residual sign)` of a binary/ternary op in f64.
fn exact(op: FOp, a: f64, b: f64, c: f64) -> (f64, i8) {
    match op {
        FOp::Add => two_sum(a, b),
        FOp::Sub => two_sum(a, -b),
        FOp::Mul => {
            let p = a * b;
            (p, tsign(p, a.mul_add(b, -p)))
        }
        FOp::Fma => {
            let p = a * b;
            let pe = a.mul_add(b, -p);
            let (s, t) = two_sum(p, c);
            // p*b residual is exact-zero for f32/f16/bf16 inputs; combine otherwise
            if pe == 0.0 {
                (s, t)
            } else {
                (a.mul_add(b, c), 0)
            }
        }
        FOp::Div => {
            let q = a / b;
            let r = (-q).mul_add(b, a);
            (q, tsign(q, r / b))
        }
        FOp::Rcp => {
            let q = 1.0 / a;
            let r = (-q).mul_add(a, 1.0);
            (q, tsign(q, r / a))
        }
        FOp::Sqrt => {
            let s = a.sqrt();
            (s, tsign(s, (-s).mul_add(s, a)))
        }
        FOp::Rsqrt => (1.0 / a.sqrt(), 0),
        FOp::Ex2 => (a.exp2(), 0),
        FOp::Lg2 => (a.log2(), 0),
        FOp::Sin => (a.sin(), 0),
        FOp::Cos => (a.cos(), 0),
        FOp::Tanh => (a.tanh(), 0),
        _ => (f64::NAN, 0),
    }
}

fn fmin(a: f64, b: f64, max: bool, nan_prop: bool) -> f64 {
    if a.is_nan() || b.is_nan() {
        if nan_prop || (a.is_nan() && b.is_nan()) {
            return f64::NAN;
        }
        return if a.is_nan() { b } else { a };
    }
    if a == b {
        // -0 < +0
        let a_neg = a.is_sign_negative();
        return if a_neg != max { a } else { b };
    }
    if (a < b) != max {
        a
    } else {
        b
    }
}

/// Generic per-element evaluation in format `f` (bits in, bits out).
fn eval_fmt(op: FOp, m: FMods, f: &Fmt, a: u64, b: u64, c: u64) -> u64 {
    let sign = 1u64 << (f.ebits + f.mbits);
    let dec = |x: u64| {
        let v = convert::decode(x, f);
        if m.ftz && v != 0.0 && v.abs() < convert::pow2(1 - f.bias) {
            if v < 0.0 {
                -0.0
            } else {
                0.0
            }
        } else {
            v
        }
    };
    match op {
        FOp::Abs => {
            return if convert::decode(a, f).is_nan() {
                f.nan
            } else {
                a & !sign
            }
        }
        FOp::Neg => {
            return if convert::decode(a, f).is_nan() {
                f.nan
            } else {
                a ^ sign
            }
        }
        FOp::Copysign => return (b & !sign) | (a & sign),
        _ => {}
    }
    let (x, y, z) = (dec(a), dec(b), dec(c));
    let (mut v, t) = match op {
        FOp::Min => (fmin(x, y, false, false), 0),
        FOp::Max => (fmin(x, y, true, false), 0),
        FOp::MinNaN => (fmin(x, y, false, true), 0),
        FOp::MaxNaN => (fmin(x, y, true, true), 0),
        _ => exact(op, x, y, z),
    };
    if m.relu && v < 0.0 {
        v = 0.0;
    }
    let mut r = encode(v, t, f, m.rnd, false);
    let rv = convert::decode(r, f);
    if m.ftz && rv != 0.0 && rv.abs() < convert::pow2(1 - f.bias) {
        r &= sign;
    }
    if m.sat {
        if rv.is_nan() || rv <= 0.0 {
            r = 0;
        } else if rv >= 1.0 {
            r = encode(1.0, 0, f, Rnd::Rn, false);
        }
    }
    r
}

/// f32 fast path + general path.
#[inline]
pub fn f32_op(op: FOp, m: FMods, a: u32, b: u32, c: u32) -> u32 {
    if m.rnd == Rnd::Rn && !m.ftz && !m.sat && !m.relu {
        let (x, y, z) = (f32::from_bits(a), f32::from_bits(b), f32::from_bits(c));
        let r = match op {
            FOp::Add => x + y,
            FOp::Sub => x - y,
            FOp::Mul => x * y,
            FOp::Fma => x.mul_add(y, z),
            FOp::Div => x / y,
            FOp::Sqrt => x.sqrt(),
            FOp::Rcp => 1.0 / x,
            FOp::Abs => return if x.is_nan() { NAN32 } else { a & 0x7FFF_FFFF },
            FOp::Neg => return if x.is_nan() { NAN32 } else { a ^ 0x8000_0000 },
            FOp::Copysign => return (b & 0x7FFF_FFFF) | (a & 0x8000_0000),
            FOp::Min | FOp::Max if !x.is_nan() && !y.is_nan() && x != y => {
                if (x < y) == (op == FOp::Min) {
                    x
                } else {
                    y
                }
            }
            FOp::Ex2 => (x as f64).exp2() as f32,
            FOp::Lg2 => (x as f64).log2() as f32,
            FOp::Rsqrt => (1.0 / (x as f64).sqrt()) as f32,
            FOp::Sin => (x as f64).sin() as f32,
            FOp::Cos => (x as f64).cos() as f32,
            FOp::Tanh => (x as f64).tanh() as f32,
            _ => return eval_fmt(op, m, &F32, a as u64, b as u64, c as u64) as u32,
        };
        return canon32(r);
    }
    let fl = |v: u32| {
        if m.ftz {
            ftz32(f32::from_bits(v)).to_bits()
        } else {
            v
        }
    };
    eval_fmt(op, m, &F32, fl(a) as u64, fl(b) as u64, fl(c) as u64) as u32
}

#[inline]
pub fn f64_op(op: FOp, m: FMods, a: u64, b: u64, c: u64) -> u64 {
    let (x, y, z) = (f64::from_bits(a), f64::from_bits(b), f64::from_bits(c));
    if m.rnd == Rnd::Rn && !m.sat && !m.relu && !m.ftz {
        let r = match op {
            FOp::Add => x + y,
            FOp::Sub => x - y,
            FOp::Mul => x * y,
            FOp::Fma => x.mul_add(y, z),
            FOp::Div => x / y,
            FOp::Sqrt => x.sqrt(),
            FOp::Rcp => 1.0 / x,
            _ => return eval_fmt(op, m, &F64, a, b, c),
        };
        return if r.is_nan() { F64.nan } else { r.to_bits() };
    }
    eval_fmt(op, m, &F64, a, b, c)
}

/// Evaluate one lane of a float instruction of any kind (register bits in/out).
#[inline]
pub fn float_lane(op: FOp, kind: FKind, m: FMods, a: u64, b: u64, c: u64) -> u64 {
    match kind {
        FKind::F32 => f32_op(op, m, a as u32, b as u32, c as u32) as u64,
        FKind::F64 => f64_op(op, m, a, b, c),
        FKind::F16 => eval_fmt(op, m, &F16, a & 0xFFFF, b & 0xFFFF, c & 0xFFFF),
        FKind::BF16 => eval_fmt(op, m, &BF16, a & 0xFFFF, b & 0xFFFF, c & 0xFFFF),
        FKind::F16x2 | FKind::BF16x2 => {
            let f = if kind == FKind::F16x2 { &F16 } else { &BF16 };
            let lo = eval_fmt(op, m, f, a & 0xFFFF, b & 0xFFFF, c & 0xFFFF);
            let hi = eval_fmt(
                op,
                m,
                f,
                (a >> 16) & 0xFFFF,
                (b >> 16) & 0xFFFF,
                (c >> 16) & 0xFFFF,
            );
            (hi << 16) | lo
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rnd: Rnd) -> FMods {
        FMods {
            rnd,
            ftz: false,
            sat: false,
            relu: false,
        }
    }

    #[test]
    fn directed_add_and_fma() {
        let one = 1.0f32.to_bits();
        let tiny = 1e-20f32.to_bits();
        assert_eq!(f32_op(FOp::Add, m(Rnd::Rn), one, tiny, 0), one);
        assert_eq!(f32_op(FOp::Add, m(Rnd::Rp), one, tiny, 0), one + 1);
        assert_eq!(
            f32_op(FOp::Add, m(Rnd::Rz), one, (-1e-20f32).to_bits(), 0),
            0x3F7F_FFFF
        );
        assert_eq!(
            f32_op(FOp::Add, m(Rnd::Rm), one, (-1e-20f32).to_bits(), 0),
            0x3F7F_FFFF
        );
        // fma exactness: (1+2^-12)^2 - 1 in one rounding
        let x = f32::from_bits(one + (1 << 11));
        let r = f32_op(
            FOp::Fma,
            m(Rnd::Rn),
            x.to_bits(),
            x.to_bits(),
            (-1.0f32).to_bits(),
        );
        assert_eq!(f32::from_bits(r), 2f32.powi(-11) + 2f32.powi(-24));
        let q = f32_op(FOp::Div, m(Rnd::Rz), one, 3.0f32.to_bits(), 0);
        assert_eq!(q, (1.0f32 / 3.0).to_bits() - 1); // RN rounds 1/3 up
        let q = f32_op(FOp::Div, m(Rnd::Rp), one, 3.0f32.to_bits(), 0);
        assert_eq!(q, (1.0f32 / 3.0).to_bits());
        let q = f32_op(
            FOp::Div,
            m(Rnd::Rm),
            (-1.0f32).to_bits(),
            3.0f32.to_bits(),
            0,
        );
        assert_eq!(q, (-1.0f32 / 3.0).to_bits());
    }

    #[test]
    fn min_max_nan_and_zero() {
        let r = f32_op(
            FOp::Min,
            m(Rnd::Rn),
            f32::NAN.to_bits(),
            2.0f32.to_bits(),
            0,
        );
        assert_eq!(f32::from_bits(r), 2.0);
        let r = f32_op(
            FOp::Min,
            m(Rnd::Rn),
            0.0f32.to_bits(),
            (-0.0f32).to_bits(),
            0,
        );
        assert_eq!(r, 0x8000_0000);
        let r = f32_op(
            FOp::Max,
            m(Rnd::Rn),
            (-0.0f32).to_bits(),
            0.0f32.to_bits(),
            0,
        );
        assert_eq!(r, 0);
        let r = f32_op(
            FOp::MaxNaN,
            m(Rnd::Rn),
            f32::NAN.to_bits(),
            2.0f32.to_bits(),
            0,
        );
        assert_eq!(r, NAN32);
    }

    #[test]
    fn ftz_and_sat() {
        let sub = f32::from_bits(1).to_bits();
        let ftz = FMods {
            rnd: Rnd::Rn,
            ftz: true,
            sat: false,
            relu: false,
        };
        assert_eq!(f32_op(FOp::Add, ftz, sub, 0, 0), 0);
        let sat = FMods {
            rnd: Rnd::Rn,
            ftz: false,
            sat: true,
            relu: false,
        };
        assert_eq!(
            f32::from_bits(f32_op(FOp::Mul, sat, 3.0f32.to_bits(), 2.0f32.to_bits(), 0)),
            1.0
        );
        assert_eq!(f32_op(FOp::Sub, sat, 0, 2.0f32.to_bits(), 0), 0);
    }

    #[test]
    fn bf16x2_fma_rounds_once() {
        let bf = |x: f32| half::bf16::from_f32(x).to_bits() as u64;
        let a = (bf(1.5) << 16) | bf(2.0);
        let b = (bf(2.0) << 16) | bf(3.0);
        let c = (bf(0.25) << 16) | bf(-1.0);
        let r = float_lane(FOp::Fma, FKind::BF16x2, m(Rnd::Rn), a, b, c);
        assert_eq!(r & 0xFFFF, bf(5.0));
        assert_eq!(r >> 16, bf(3.25));
    }
}
