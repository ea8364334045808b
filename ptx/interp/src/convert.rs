//! Bit-exact floating-point formats and `cvt` semantics: a generic encoder that rounds
//! an exact value (an f64 plus the sign of a tiny residual) into f64/f32/tf32/f16/bf16/
//! e4m3/e5m2 under any PTX rounding mode with overflow / `.satfinite` rules, the
//! matching decoders, and the per-lane conversion used by `cvt`.

use super::ast::{extend, CvtSpec, IRnd, Rnd, Ty};

/// A binary floating-point format.
#[derive(Debug, Clone, Copy)]
pub struct Fmt {
    pub ebits: u32,
    pub mbits: u32,
    pub bias: i32,
    pub has_inf: bool,
    /// Largest finite magnitude encoding (without sign).
    pub max_finite: u64,
    /// Canonical NaN produced by the GPU.
    pub nan: u64,
}

pub const F64: Fmt = Fmt {
    ebits: 11,
    mbits: 52,
    bias: 1023,
    has_inf: true,
    max_finite: 0x7FEF_FFFF_FFFF_FFFF,
    nan: 0x7FFF_FFFF_FFFF_FFFF,
};
pub const F32: Fmt = Fmt {
    ebits: 8,
    mbits: 23,
    bias: 127,
    has_inf: true,
    max_finite: 0x7F7F_FFFF,
    nan: 0x7FFF_FFFF,
};
pub const TF32: Fmt = Fmt {
    ebits: 8,
    mbits: 10,
    bias: 127,
    has_inf: true,
    max_finite: 0x3_FBFF,
    nan: 0x3_FFFF,
};
pub const F16: Fmt = Fmt {
    ebits: 5,
    mbits: 10,
    bias: 15,
    has_inf: true,
    max_finite: 0x7BFF,
    nan: 0x7FFF,
};
pub const BF16: Fmt = Fmt {
    ebits: 8,
    mbits: 7,
    bias: 127,
    has_inf: true,
    max_finite: 0x7F7F,
    nan: 0x7FFF,
};
pub const E4M3: Fmt = Fmt {
    ebits: 4,
    mbits: 3,
    bias: 7,
    has_inf: false,
    max_finite: 0x7E,
    nan: 0x7F,
};
pub const E5M2: Fmt = Fmt {
    ebits: 5,
    mbits: 2,
    bias: 15,
    has_inf: true,
    max_finite: 0x7B,
    nan: 0x7F,
};

/// Canonical f32 NaN (what the GPU returns for NaN-producing operations).
pub const NAN32: u32 = 0x7FFF_FFFF;

/// Bits of an f32 result, with any NaN replaced by the canonical [`NAN32`].
#[inline(always)]
pub fn canon32(r: f32) -> u32 {
    if r.is_nan() {
        NAN32
    } else {
        r.to_bits()
    }
}

#[inline]
pub fn pow2(k: i32) -> f64 {
    if k >= -1022 {
        f64::from_bits(((k + 1023).clamp(0, 2046) as u64) << 52)
    } else {
        f64::from_bits(1u64 << (k + 1074).clamp(0, 51))
    }
}

/// Decode `bits` of format `f` into an exact f64.
pub fn decode(bits: u64, f: &Fmt) -> f64 {
    let neg = (bits >> (f.ebits + f.mbits)) & 1 == 1;
    let emax = (1u64 << f.ebits) - 1;
    let e = (bits >> f.mbits) & emax;
    let m = bits & ((1u64 << f.mbits) - 1);
    let mag = if f.has_inf && e == emax {
        if m == 0 {
            f64::INFINITY
        } else {
            return f64::NAN;
        }
    } else if !f.has_inf && (bits & ((1u64 << (f.ebits + f.mbits)) - 1)) > f.max_finite {
        return f64::NAN;
    } else if e == 0 {
        m as f64 * pow2(1 - f.bias - f.mbits as i32)
    } else {
        (m | (1u64 << f.mbits)) as f64 * pow2(e as i32 - f.bias - f.mbits as i32)
    };
    if neg {
        -mag
    } else {
        mag
    }
}

/// Round the exact value `x + ε` into format `f`. `t` is the sign of the tiny
/// magnitude perturbation ε relative to |x| (+1: |exact| > |x|, -1: smaller, 0: exact);
/// |ε| must be below half an f64 ulp of `x`.
pub fn encode(x: f64, t: i8, f: &Fmt, mode: Rnd, satfinite: bool) -> u64 {
    if x.is_nan() {
        return f.nan;
    }
    let neg = x.is_sign_negative();
    let sgn = if neg { 1u64 << (f.ebits + f.mbits) } else { 0 };
    let inf = ((1u64 << f.ebits) - 1) << f.mbits;
    let overflow = || -> u64 {
        if satfinite {
            return sgn | f.max_finite;
        }
        let to_inf = match mode {
            Rnd::Rn | Rnd::Rna => true,
            Rnd::Rz => false,
            Rnd::Rm => neg,
            Rnd::Rp => !neg,
        };
        if !to_inf {
            sgn | f.max_finite
        } else if f.has_inf {
            sgn | inf
        } else {
            f.nan
        }
    };
    if x.is_infinite() {
        return if satfinite {
            sgn | f.max_finite
        } else if f.has_inf {
            sgn | inf
        } else {
            f.nan
        };
    }
    if x == 0.0 {
        return sgn;
    }
    let bits = x.to_bits();
    let e_raw = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (mant, e0) = if e_raw == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), e_raw - 1075)
    };
    let lead = 63 - mant.leading_zeros() as i32;
    let floor_log2 = e0 + lead;
    let emin = 1 - f.bias;
    let mbits = f.mbits as i32;
    let mut q = floor_log2.max(emin) - mbits;
    let shift = q - e0;
    // Classify the dropped part: 0 exact, 1 below half, 2 half, 3 above half.
    let (mut kept, r_zero, class) = if shift <= 0 {
        (mant << (-shift).min(63), true, 0u8)
    } else if shift >= 64 {
        (0u64, false, 1u8)
    } else {
        let kept = mant >> shift;
        let r = mant & ((1u64 << shift) - 1);
        let half = 1u64 << (shift - 1);
        let class = match (r == 0, r.cmp(&half), t.signum()) {
            (true, _, _) => 0,
            (false, std::cmp::Ordering::Less, _) | (false, std::cmp::Ordering::Equal, -1) => 1,
            (false, std::cmp::Ordering::Equal, 0) => 2,
            _ => 3,
        };
        (kept, r == 0, class)
    };
    let mut adj = 0i32;
    if r_zero && class == 0 && t != 0 {
        // Exactly representable value perturbed by a tiny residual.
        adj = match mode {
            Rnd::Rn | Rnd::Rna => 0,
            Rnd::Rz => -i32::from(t < 0),
            Rnd::Rm => {
                if neg {
                    i32::from(t > 0)
                } else {
                    -i32::from(t < 0)
                }
            }
            Rnd::Rp => {
                if neg {
                    -i32::from(t < 0)
                } else {
                    i32::from(t > 0)
                }
            }
        };
    } else if class != 0 {
        let up = match mode {
            Rnd::Rn => class == 3 || (class == 2 && kept & 1 == 1),
            Rnd::Rna => class >= 2,
            Rnd::Rz => false,
            Rnd::Rm => neg,
            Rnd::Rp => !neg,
        };
        kept += u64::from(up);
    }
    if kept >> (f.mbits + 1) != 0 {
        kept >>= 1;
        q += 1;
    }
    let mag = if kept < (1u64 << f.mbits) {
        kept
    } else {
        let ef = (q + mbits + f.bias) as u64;
        (ef << f.mbits) | (kept - (1u64 << f.mbits))
    };
    let mag = (mag as i64 + adj as i64) as u64;
    if mag > f.max_finite {
        return overflow();
    }
    sgn | mag
}

#[inline]
pub fn f32_to_bf16_rn(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7FFF;
    }
    let b = x.to_bits();
    let lsb = (b >> 16) & 1;
    (b.wrapping_add(0x7FFF + lsb) >> 16) as u16
}

#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    decode(h as u64, &F16) as f32
}

pub fn f32_to_f16(x: f32, mode: Rnd) -> u16 {
    encode(x as f64, 0, &F16, mode, false) as u16
}

/// Flush an f32 subnormal to sign-preserving zero.
#[inline]
pub fn ftz32(x: f32) -> f32 {
    if x.is_subnormal() {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

fn fmt_of(ty: Ty) -> Option<&'static Fmt> {
    Some(match ty {
        Ty::F64 => &F64,
        Ty::F32 => &F32,
        Ty::F16 => &F16,
        Ty::BF16 => &BF16,
        Ty::E4m3 => &E4M3,
        Ty::E5m2 => &E5M2,
        _ => return None,
    })
}

/// Exact value of a float-typed register value.
pub fn float_value(v: u64, ty: Ty) -> f64 {
    match ty {
        Ty::F64 => f64::from_bits(v),
        Ty::F32 | Ty::TF32 => f32::from_bits(v as u32) as f64,
        Ty::BF16 => bf16_to_f32(v as u16) as f64,
        _ => fmt_of(ty).map(|f| decode(v, f)).unwrap_or(0.0),
    }
}

/// Round an exact `(x, t)` into the float type `ty`.
pub fn float_encode(x: f64, t: i8, ty: Ty, mode: Rnd, satfinite: bool) -> u64 {
    match ty {
        Ty::TF32 => {
            let b = encode(x, t, &TF32, mode, satfinite);
            if x.is_nan() {
                NAN32 as u64
            } else {
                b << 13
            }
        }
        _ => fmt_of(ty)
            .map(|f| encode(x, t, f, mode, satfinite))
            .unwrap_or(0),
    }
}

fn int_range(ty: Ty) -> (i128, i128) {
    let bits = ty.bits();
    if ty.is_signed() {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    }
}

/// Per-lane `cvt` semantics. Returns the destination value (sign-extended to 64 bits
/// for signed destinations).
pub fn cvt(v: u64, s: &CvtSpec) -> u64 {
    let (dty, sty) = (s.dty, s.sty);
    // Fast paths.
    match (dty, sty, s.ftz || s.sat || s.relu || s.satfinite) {
        (Ty::F32, Ty::BF16, false) => return (bf16_to_f32(v as u16)).to_bits() as u64,
        (Ty::BF16, Ty::F32, false) if s.rnd == Some(Rnd::Rn) => {
            return f32_to_bf16_rn(f32::from_bits(v as u32)) as u64
        }
        _ => {}
    }
    let d_int = dty.is_int();
    let s_int = sty.is_int();
    if d_int && s_int {
        let x = extend(v, sty.bits(), sty.is_signed()) as i64 as i128;
        let x = if sty.is_signed() {
            x
        } else {
            extend(v, sty.bits(), false) as i128
        };
        let y = if s.sat {
            let (lo, hi) = int_range(dty);
            x.clamp(lo, hi)
        } else {
            x
        };
        return extend(y as u64, dty.bits(), dty.is_signed());
    }
    if s_int {
        // int -> float
        let x: i128 = if sty.is_signed() {
            extend(v, sty.bits(), true) as i64 as i128
        } else {
            extend(v, sty.bits(), false) as i128
        };
        let approx = x as f64;
        let err = x - approx as i128;
        let t = if err == 0 {
            0
        } else if (err > 0) == (approx >= 0.0) {
            1
        } else {
            -1
        };
        let mut r = float_encode(approx, t, dty, s.rnd.unwrap_or(Rnd::Rn), s.satfinite);
        if s.sat {
            r = sat_float(r, dty);
        }
        return r;
    }
    // float source
    let mut x = float_value(v, sty);
    if s.ftz && sty == Ty::F32 {
        x = ftz32(x as f32) as f64;
    }
    if d_int {
        if x.is_nan() {
            return 0;
        }
        let r = match s.irnd.unwrap_or(IRnd::Zi) {
            IRnd::Ni => x.round_ties_even(),
            IRnd::Zi => x.trunc(),
            IRnd::Mi => x.floor(),
            IRnd::Pi => x.ceil(),
        };
        let (lo, hi) = int_range(dty);
        let y = if r <= lo as f64 {
            lo
        } else if r >= hi as f64 {
            hi
        } else {
            r as i128
        };
        return extend(y as u64, dty.bits(), dty.is_signed());
    }
    // float -> float
    if let Some(ir) = s.irnd {
        x = match ir {
            IRnd::Ni => x.round_ties_even(),
            IRnd::Zi => x.trunc(),
            IRnd::Mi => x.floor(),
            IRnd::Pi => x.ceil(),
        };
    }
    if s.relu && x < 0.0 {
        x = 0.0;
    }
    let mut r = float_encode(x, 0, dty, s.rnd.unwrap_or(Rnd::Rn), s.satfinite);
    if s.ftz && dty == Ty::F32 {
        r = ftz32(f32::from_bits(r as u32)).to_bits() as u64;
    }
    if s.sat {
        r = sat_float(r, dty);
    }
    r
}

/// `.sat` for float destinations: clamp to [0, 1], NaN → 0.
fn sat_float(bits: u64, ty: Ty) -> u64 {
    let x = float_value(bits, ty);
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= 1.0 {
        float_encode(1.0, 0, ty, Rnd::Rn, false)
    } else {
        bits
    }
}

/// Round an f32 into a packed-half lane (`f16`, `bf16`, `e4m3`, `e5m2`) with RN.
pub fn pack_lane(x: f32, ty: Ty, relu: bool, satfinite: bool) -> u64 {
    let x = if relu && x < 0.0 { 0.0 } else { x };
    let base = match ty {
        Ty::F16x2 => Ty::F16,
        Ty::BF16x2 => Ty::BF16,
        Ty::E4m3x2 => Ty::E4m3,
        Ty::E5m2x2 => Ty::E5m2,
        t => t,
    };
    if relu && x.is_nan() {
        return float_encode(f64::NAN, 0, base, Rnd::Rn, false);
    }
    float_encode(x as f64, 0, base, Rnd::Rn, satfinite)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_half_crate() {
        let mut s = 0x1234_5678u32;
        for _ in 0..20000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let x = f32::from_bits(s);
            if x.is_nan() {
                continue;
            }
            let want = half::bf16::from_f32(x).to_bits();
            assert_eq!(
                encode(x as f64, 0, &BF16, Rnd::Rn, false) as u16,
                want,
                "{x:e}"
            );
            assert_eq!(f32_to_bf16_rn(x), want);
            let want16 = half::f16::from_f32(x).to_bits();
            assert_eq!(
                encode(x as f64, 0, &F16, Rnd::Rn, false) as u16,
                want16,
                "{x:e}"
            );
        }
    }

    #[test]
    fn f64_to_f32_all_modes() {
        let x = 1.0f64 + 2f64.powi(-30);
        assert_eq!(encode(x, 0, &F32, Rnd::Rn, false) as u32, 1.0f32.to_bits());
        assert_eq!(
            encode(x, 0, &F32, Rnd::Rp, false) as u32,
            1.0f32.to_bits() + 1
        );
        assert_eq!(
            encode(-x, 0, &F32, Rnd::Rm, false) as u32,
            (-1.0f32).to_bits() + 1
        );
        assert_eq!(
            encode(-x, 0, &F32, Rnd::Rz, false) as u32,
            (-1.0f32).to_bits()
        );
        // perturbation below an exactly representable value
        assert_eq!(encode(1.0, -1, &F32, Rnd::Rz, false) as u32, 0x3F7F_FFFF);
        assert_eq!(encode(1.0, 1, &F32, Rnd::Rp, false) as u32, 0x3F80_0001);
        assert_eq!(encode(1e300, 0, &F32, Rnd::Rz, false) as u32, 0x7F7F_FFFF);
        assert_eq!(encode(1e300, 0, &F32, Rnd::Rn, false) as u32, 0x7F80_0000);
        assert_eq!(encode(1e-50, 0, &F32, Rnd::Rp, false) as u32, 1);
    }

    #[test]
    fn fp8_e4m3_rules() {
        let e = |x: f64| encode(x, 0, &E4M3, Rnd::Rn, true) as u8;
        assert_eq!(e(448.0), 0x7E);
        assert_eq!(e(1e9), 0x7E);
        assert_eq!(e(-1e9), 0xFE);
        assert_eq!(e(f64::INFINITY), 0x7E);
        assert_eq!(e(f64::NAN), 0x7F);
        assert_eq!(e(1.0), 0x38);
        assert_eq!(e(1.0625), 0x38); // tie -> even
        assert_eq!(e(1.1875), 0x3A); // tie -> even (up)
        assert_eq!(e(2f64.powi(-9)), 0x01); // min subnormal
        assert_eq!(e(2f64.powi(-10)), 0x00); // tie to even -> 0
        for b in 0..=255u64 {
            let x = decode(b, &E4M3);
            if x.is_nan() {
                assert_eq!(b & 0x7F, 0x7F);
                continue;
            }
            assert_eq!(encode(x, 0, &E4M3, Rnd::Rn, true), b);
        }
        let e5 = |x: f64| encode(x, 0, &E5M2, Rnd::Rn, true) as u8;
        assert_eq!(e5(57344.0), 0x7B);
        assert_eq!(e5(1e9), 0x7B);
        assert_eq!(e5(1.0), 0x3C);
    }
}
