//! Vectorizable fast paths for the most frequent ALU instructions: operands are
//! gathered into `[u64; 32]` lane arrays, the op runs branch-free over all 32 lanes, and
//! only the executing lanes are written back. Everything not covered here falls back to
//! the general per-lane evaluators in `intops.rs` / `float.rs`.

use super::ast::{FKind, FMods, FOp, IntOp, Reg, Rnd, Src, Ty, SINK};
use super::convert::canon32;
use super::machine::{lanes, Warp};

pub type Lanes = [u64; 32];

#[inline(always)]
pub fn fetch(w: &Warp, s: Src) -> Lanes {
    match s {
        Src::Reg(r) => {
            let mut v = [0u64; 32];
            let b = r as usize * 32;
            v.copy_from_slice(&w.regs[b..b + 32]);
            v
        }
        Src::Imm(x) => [x; 32],
    }
}

/// Write `out` (masked) to register `d` for the lanes in `exec`.
#[inline(always)]
pub fn store(w: &mut Warp, d: Reg, exec: u32, out: &Lanes, mask: u64) {
    if d == SINK {
        return;
    }
    let b = d as usize * 32;
    let dst = &mut w.regs[b..b + 32];
    if exec == u32::MAX {
        for (x, o) in dst.iter_mut().zip(out.iter()) {
            *x = o & mask;
        }
    } else {
        for l in lanes(exec) {
            dst[l] = out[l] & mask;
        }
    }
}

#[inline(always)]
fn map2(a: &Lanes, b: &Lanes, out: &mut Lanes, f: impl Fn(u64, u64) -> u64) {
    for l in 0..32 {
        out[l] = f(a[l], b[l]);
    }
}

#[inline(always)]
fn map3(a: &Lanes, b: &Lanes, c: &Lanes, out: &mut Lanes, f: impl Fn(u64, u64, u64) -> u64) {
    for l in 0..32 {
        out[l] = f(a[l], b[l], c[l]);
    }
}

/// Common integer ops; returns `false` when the op needs the general path.
#[inline]
pub fn int_fast(op: IntOp, ty: Ty, a: &Lanes, b: &Lanes, c: &Lanes, out: &mut Lanes) -> bool {
    let bits = ty.bits();
    match op {
        IntOp::Add => map2(a, b, out, |x, y| x.wrapping_add(y)),
        IntOp::Sub => map2(a, b, out, |x, y| x.wrapping_sub(y)),
        IntOp::MulLo => map2(a, b, out, |x, y| x.wrapping_mul(y)),
        IntOp::MadLo => map3(a, b, c, out, |x, y, z| x.wrapping_mul(y).wrapping_add(z)),
        IntOp::And => map2(a, b, out, |x, y| x & y),
        IntOp::Or => map2(a, b, out, |x, y| x | y),
        IntOp::Xor => map2(a, b, out, |x, y| x ^ y),
        IntOp::MulWide if bits == 32 && !ty.is_signed() => {
            map2(a, b, out, |x, y| (x & 0xFFFF_FFFF) * (y & 0xFFFF_FFFF))
        }
        IntOp::MadWide if bits == 32 && !ty.is_signed() => map3(a, b, c, out, |x, y, z| {
            ((x & 0xFFFF_FFFF) * (y & 0xFFFF_FFFF)).wrapping_add(z)
        }),
        IntOp::Shl if bits == 32 || bits == 64 => map2(a, b, out, |x, y| {
            let s = y & 0xFFFF_FFFF;
            if s >= bits as u64 {
                0
            } else {
                x << s
            }
        }),
        IntOp::Shr if !ty.is_signed() && (bits == 32 || bits == 64) => {
            let m = super::ast::width_mask(bits);
            map2(a, b, out, |x, y| {
                let s = y & 0xFFFF_FFFF;
                if s >= bits as u64 {
                    0
                } else {
                    (x & m) >> s
                }
            })
        }
        IntOp::Min | IntOp::Max if bits == 32 && !ty.is_signed() => {
            let min = op == IntOp::Min;
            map2(a, b, out, |x, y| {
                let (x32, y32) = (x as u32, y as u32);
                (if (x32 < y32) == min { x32 } else { y32 }) as u64
            })
        }
        _ => return false,
    }
    true
}

#[inline(always)]
fn f32x(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

/// f32 round-to-nearest arithmetic without `.ftz/.sat/.relu`; `false` = general path.
#[inline]
pub fn float_fast(
    op: FOp,
    kind: FKind,
    m: FMods,
    a: &Lanes,
    b: &Lanes,
    c: &Lanes,
    out: &mut Lanes,
) -> bool {
    if kind != FKind::F32 || m.rnd != Rnd::Rn || m.ftz || m.sat || m.relu {
        return false;
    }
    match op {
        FOp::Add => map2(a, b, out, |x, y| canon32(f32x(x) + f32x(y)) as u64),
        FOp::Sub => map2(a, b, out, |x, y| canon32(f32x(x) - f32x(y)) as u64),
        FOp::Mul => map2(a, b, out, |x, y| canon32(f32x(x) * f32x(y)) as u64),
        FOp::Fma => map3(a, b, c, out, |x, y, z| {
            canon32(f32x(x).mul_add(f32x(y), f32x(z))) as u64
        }),
        _ => return false,
    }
    true
}
