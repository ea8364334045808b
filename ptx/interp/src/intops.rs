//! Per-lane semantics of integer / bitwise instructions (`add`…`mad.wide`, `mul24`,
//! `div`/`rem`, shifts, `bfe`/`bfi`/`prmt`/`lop3`/`shf`, `popc`/`clz`/`brev`/`bfind`,
//! `dp4a`/`dp2a`, carry-chain ops) and of comparisons (`setp`/`set` operators).

use super::ast::{extend, width_mask, Cmp, IntOp, Ty};
use super::convert::float_value;

/// Evaluate an integer op on one lane. `cc` is the lane's carry flag.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn int_eval(
    op: IntOp,
    bits: u32,
    signed: bool,
    a: u64,
    b: u64,
    c: u64,
    e: u64,
    cc: &mut u64,
) -> u64 {
    let ext = |v: u64| extend(v, bits, signed);
    let mask = width_mask(bits);
    let (sa, sb) = (ext(a), ext(b));
    match op {
        IntOp::Add => a.wrapping_add(b),
        IntOp::Sub => a.wrapping_sub(b),
        IntOp::AddSat => {
            ((sa as i64 as i128 + sb as i64 as i128).clamp(i32::MIN as i128, i32::MAX as i128))
                as u64
        }
        IntOp::SubSat => {
            ((sa as i64 as i128 - sb as i64 as i128).clamp(i32::MIN as i128, i32::MAX as i128))
                as u64
        }
        IntOp::MulLo => a.wrapping_mul(b),
        IntOp::MulHi | IntOp::MadHi => {
            let p = if signed {
                ((sa as i64 as i128) * (sb as i64 as i128)) >> bits
            } else {
                ((sa as u128 * sb as u128) >> bits) as i128
            };
            let p = p as u64;
            if op == IntOp::MadHi {
                p.wrapping_add(c)
            } else {
                p
            }
        }
        IntOp::MulWide | IntOp::MadWide => {
            let p = if signed {
                (sa as i64).wrapping_mul(sb as i64) as u64
            } else {
                sa.wrapping_mul(sb)
            };
            if op == IntOp::MadWide {
                p.wrapping_add(c)
            } else {
                p
            }
        }
        IntOp::MadLo => a.wrapping_mul(b).wrapping_add(c),
        IntOp::Mul24Lo | IntOp::Mul24Hi | IntOp::Mad24Lo | IntOp::Mad24Hi => {
            let a24 = extend(a, 24, signed) as i64;
            let b24 = extend(b, 24, signed) as i64;
            let p = a24.wrapping_mul(b24) as u64;
            let r = if matches!(op, IntOp::Mul24Hi | IntOp::Mad24Hi) {
                p >> 16
            } else {
                p
            };
            if matches!(op, IntOp::Mad24Lo | IntOp::Mad24Hi) {
                r.wrapping_add(c)
            } else {
                r
            }
        }
        IntOp::Div => {
            if sb & mask == 0 {
                mask
            } else if signed {
                (sa as i64).wrapping_div(sb as i64) as u64
            } else {
                sa / sb
            }
        }
        IntOp::Rem => {
            if sb & mask == 0 {
                a
            } else if signed {
                (sa as i64).wrapping_rem(sb as i64) as u64
            } else {
                sa % sb
            }
        }
        IntOp::Abs => (sa as i64).wrapping_abs() as u64,
        IntOp::Neg => (sa as i64).wrapping_neg() as u64,
        IntOp::Min | IntOp::Max => {
            let less = if signed {
                (sa as i64) < (sb as i64)
            } else {
                sa < sb
            };
            if less == (op == IntOp::Min) {
                a
            } else {
                b
            }
        }
        IntOp::And => a & b,
        IntOp::Or => a | b,
        IntOp::Xor => a ^ b,
        IntOp::Not => !a,
        IntOp::CNot => u64::from(a & mask == 0),
        IntOp::Shl => {
            let s = b & 0xFFFF_FFFF;
            if s >= bits as u64 {
                0
            } else {
                a << s
            }
        }
        IntOp::Shr => {
            let s = (b & 0xFFFF_FFFF).min(63);
            if signed {
                ((sa as i64) >> s) as u64
            } else if s >= bits as u64 {
                0
            } else {
                (a & mask) >> s
            }
        }
        IntOp::Popc => (a & mask).count_ones() as u64,
        IntOp::Clz => {
            let v = a & mask;
            if v == 0 {
                bits as u64
            } else {
                (v.leading_zeros() - (64 - bits)) as u64
            }
        }
        IntOp::Brev => (a & mask).reverse_bits() >> (64 - bits),
        IntOp::Bfind | IntOp::BfindShift => {
            let v = if signed && (sa as i64) < 0 {
                !sa & mask
            } else {
                a & mask
            };
            if v == 0 {
                0xFFFF_FFFF
            } else {
                let pos = 63 - v.leading_zeros() as u64;
                if op == IntOp::BfindShift {
                    bits as u64 - 1 - pos
                } else {
                    pos
                }
            }
        }
        IntOp::Bfe => {
            let pos = b & 0xFF;
            let len = c & 0xFF;
            let msb = bits as u64 - 1;
            let sbit = if !signed || len == 0 {
                0
            } else {
                (a >> (pos + len - 1).min(msb)) & 1
            };
            let mut d = 0u64;
            for i in 0..=msb {
                let bit = if i < len && pos + i <= msb {
                    (a >> (pos + i)) & 1
                } else {
                    sbit
                };
                d |= bit << i;
            }
            d
        }
        IntOp::Bfi => {
            let pos = c & 0xFF;
            let len = e & 0xFF;
            let mut f = b;
            let msb = bits as u64 - 1;
            for i in 0..len {
                if pos + i > msb {
                    break;
                }
                f = (f & !(1 << (pos + i))) | (((a >> i) & 1) << (pos + i));
            }
            f
        }
        IntOp::Prmt(mode) => prmt(a as u32, b as u32, c as u32, mode) as u64,
        IntOp::Lop3 => {
            let lut = c_lut(e);
            let mut r = 0u64;
            for i in 0..8 {
                if (lut >> i) & 1 == 1 {
                    let ta = if i & 4 != 0 { a } else { !a };
                    let tb = if i & 2 != 0 { b } else { !b };
                    let tc = if i & 1 != 0 { c } else { !c };
                    r |= ta & tb & tc;
                }
            }
            r
        }
        IntOp::ShfL | IntOp::ShfLClamp | IntOp::ShfR | IntOp::ShfRClamp => {
            let n = if matches!(op, IntOp::ShfL | IntOp::ShfR) {
                c & 31
            } else {
                (c & 0xFFFF_FFFF).min(32)
            };
            let v = ((b & 0xFFFF_FFFF) << 32) | (a & 0xFFFF_FFFF);
            if matches!(op, IntOp::ShfL | IntOp::ShfLClamp) {
                (v << n) >> 32
            } else {
                v >> n
            }
        }
        IntOp::Dp4a(asg, bsg) => {
            let mut acc = c as i64;
            for i in 0..4 {
                let x = extend(a >> (8 * i), 8, asg) as i64;
                let y = extend(b >> (8 * i), 8, bsg) as i64;
                acc = acc.wrapping_add(x * y);
            }
            acc as u64
        }
        IntOp::Dp2aLo(asg, bsg) | IntOp::Dp2aHi(asg, bsg) => {
            let off = if matches!(op, IntOp::Dp2aHi(..)) {
                2
            } else {
                0
            };
            let mut acc = c as i64;
            for i in 0..2 {
                let x = extend(a >> (16 * i), 16, asg) as i64;
                let y = extend(b >> (8 * (i + off)), 8, bsg) as i64;
                acc = acc.wrapping_add(x * y);
            }
            acc as u64
        }
        IntOp::Sad => {
            let diff = if signed {
                (sa as i64).wrapping_sub(sb as i64).unsigned_abs()
            } else {
                sa.abs_diff(sb)
            };
            c.wrapping_add(diff)
        }
        IntOp::AddCc | IntOp::AddC | IntOp::AddCCc => {
            let cin = if op == IntOp::AddCc { 0 } else { *cc & 1 };
            let s = (a & mask) as u128 + (b & mask) as u128 + cin as u128;
            if op != IntOp::AddC {
                *cc = ((s >> bits) & 1) as u64;
            }
            s as u64
        }
        IntOp::SubCc | IntOp::SubC | IntOp::SubCCc => {
            let bin = if op == IntOp::SubCc { 0 } else { *cc & 1 };
            let x = (a & mask) as i128 - (b & mask) as i128 - bin as i128;
            if op != IntOp::SubC {
                *cc = u64::from(x < 0);
            }
            x as u64
        }
    }
}

#[inline(always)]
fn c_lut(e: u64) -> u64 {
    e & 0xFF
}

/// `prmt.b32` byte permute. Mode 0 is the default selector form.
pub fn prmt(a: u32, b: u32, c: u32, mode: u8) -> u32 {
    let bytes = ((b as u64) << 32) | a as u64;
    let byte = |i: u32| ((bytes >> (8 * (i & 7))) & 0xFF) as u32;
    let sel: [u32; 4] = match mode {
        0 => {
            let mut r = 0u32;
            for k in 0..4 {
                let s = (c >> (4 * k)) & 0xF;
                let mut v = byte(s & 7);
                if s & 8 != 0 {
                    v = if v & 0x80 != 0 { 0xFF } else { 0 };
                }
                r |= v << (8 * k);
            }
            return r;
        }
        _ => {
            let s = c & 3;
            match (mode, s) {
                (1, _) => [s, s + 1, s + 2, s + 3],                   // f4e
                (2, _) => [s, (s + 7) & 7, (s + 6) & 7, (s + 5) & 7], // b4e
                (3, _) => [s, s, s, s],                               // rc8
                (4, 0) => [0, 1, 2, 3],                               // ecl
                (4, 1) => [1, 1, 2, 3],
                (4, 2) => [2, 2, 2, 3],
                (4, _) => [3, 3, 3, 3],
                (5, 0) => [0, 0, 0, 0], // ecr
                (5, 1) => [0, 1, 1, 1],
                (5, 2) => [0, 1, 2, 2],
                (5, _) => [0, 1, 2, 3],
                (_, _) => {
                    let s = (c & 1) * 2; // rc16
                    [s, s + 1, s, s + 1]
                }
            }
        }
    };
    sel.iter()
        .enumerate()
        .fold(0, |r, (k, &s)| r | (byte(s) << (8 * k)))
}

/// Evaluate a comparison operator for values of type `ty`.
#[inline(always)]
pub fn compare(cmp: Cmp, ty: Ty, a: u64, b: u64, ftz: bool) -> bool {
    if ty.is_float() {
        let (mut x, mut y) = if ty == Ty::F32 {
            (
                f32::from_bits(a as u32) as f64,
                f32::from_bits(b as u32) as f64,
            )
        } else {
            (float_value(a, ty), float_value(b, ty))
        };
        if ftz && ty == Ty::F32 {
            if (x as f32).is_subnormal() {
                x = 0.0;
            }
            if (y as f32).is_subnormal() {
                y = 0.0;
            }
        }
        let nan = x.is_nan() || y.is_nan();
        return match cmp {
            Cmp::Eq => !nan && x == y,
            Cmp::Ne => !nan && x != y,
            Cmp::Lt | Cmp::Lo => !nan && x < y,
            Cmp::Le | Cmp::Ls => !nan && x <= y,
            Cmp::Gt | Cmp::Hi => !nan && x > y,
            Cmp::Ge | Cmp::Hs => !nan && x >= y,
            Cmp::Equ => nan || x == y,
            Cmp::Neu => nan || x != y,
            Cmp::Ltu => nan || x < y,
            Cmp::Leu => nan || x <= y,
            Cmp::Gtu => nan || x > y,
            Cmp::Geu => nan || x >= y,
            Cmp::Num => !nan,
            Cmp::Nan => nan,
        };
    }
    let bits = ty.bits();
    let signed = ty.is_signed();
    let (ua, ub) = (extend(a, bits, false), extend(b, bits, false));
    let (sa, sb) = (extend(a, bits, true) as i64, extend(b, bits, true) as i64);
    match cmp {
        Cmp::Eq | Cmp::Equ => ua == ub,
        Cmp::Ne | Cmp::Neu => ua != ub,
        Cmp::Lt | Cmp::Ltu => {
            if signed {
                sa < sb
            } else {
                ua < ub
            }
        }
        Cmp::Le | Cmp::Leu => {
            if signed {
                sa <= sb
            } else {
                ua <= ub
            }
        }
        Cmp::Gt | Cmp::Gtu => {
            if signed {
                sa > sb
            } else {
                ua > ub
            }
        }
        Cmp::Ge | Cmp::Geu => {
            if signed {
                sa >= sb
            } else {
                ua >= ub
            }
        }
        Cmp::Lo => ua < ub,
        Cmp::Ls => ua <= ub,
        Cmp::Hi => ua > ub,
        Cmp::Hs => ua >= ub,
        Cmp::Num => true,
        Cmp::Nan => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prmt_default_and_sign_replicate() {
        assert_eq!(prmt(0x3322_1100, 0x7766_5544, 0x5410, 0), 0x5544_1100);
        assert_eq!(prmt(0x0000_8000, 0, 0x0009, 0), 0x0000_00FF);
        assert_eq!(prmt(0x3322_1100, 0x7766_5544, 0x7654, 0), 0x7766_5544);
    }

    #[test]
    fn bfe_bfi_lop3() {
        let mut cc = 0;
        assert_eq!(
            int_eval(IntOp::Bfe, 32, false, 0xABCD_1234, 8, 8, 0, &mut cc),
            0x12
        );
        assert_eq!(
            int_eval(IntOp::Bfe, 32, true, 0x0000_8000, 8, 8, 0, &mut cc) as u32,
            0xFFFF_FF80
        );
        assert_eq!(int_eval(IntOp::Bfi, 32, false, 0xF, 0, 4, 4, &mut cc), 0xF0);
        // lop3 with 0x96 = a ^ b ^ c
        assert_eq!(
            int_eval(
                IntOp::Lop3,
                32,
                false,
                0b1100,
                0b1010,
                0b1001,
                0x96,
                &mut cc
            ) & 0xF,
            0b1100 ^ 0b1010 ^ 0b1001
        );
        assert_eq!(
            int_eval(
                IntOp::MulHi,
                32,
                true,
                (-2i32) as u32 as u64,
                3,
                0,
                0,
                &mut cc
            ) as u32,
            0xFFFF_FFFF
        );
        assert_eq!(
            int_eval(IntOp::Shr, 32, true, 0x8000_0000, 40, 0, 0, &mut cc) as u32,
            0xFFFF_FFFF
        );
        assert_eq!(int_eval(IntOp::Shl, 32, false, 1, 32, 0, 0, &mut cc), 0);
        let s = int_eval(IntOp::AddCc, 32, false, 0xFFFF_FFFF, 1, 0, 0, &mut cc);
        assert_eq!((s as u32, cc), (0, 1));
        assert_eq!(
            int_eval(IntOp::AddC, 32, false, 1, 1, 0, 0, &mut cc) as u32,
            3
        );
    }
}
