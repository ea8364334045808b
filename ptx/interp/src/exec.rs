//! Per-instruction execution of non-control operations over the executing lanes of a
//! warp: moves, integer / float arithmetic, comparisons, selects and conversions.
//! Memory, warp-collective and tensor-core ops are delegated to `exec_mem.rs`,
//! `collective.rs` and `mma.rs`. Each op is one tight loop over the lane mask.

use super::ast::*;
use super::convert;
use super::error::PtxError;
use super::fastpath::{fetch, float_fast, int_fast, store};
use super::float::float_lane;
use super::intops::{compare, int_eval};
use super::machine::{lanes, Machine, Warp};

fn bool_combine(w: &Warp, bop: &Option<(BoolOp, Src, bool)>, lane: usize, v: bool) -> bool {
    match bop {
        None => v,
        Some((op, c, neg)) => {
            let c = (w.get(*c, lane) & 1 == 1) != *neg;
            match op {
                BoolOp::And => v && c,
                BoolOp::Or => v || c,
                BoolOp::Xor => v != c,
            }
        }
    }
}

/// Execute `op` for the lanes in `exec` (the lanes at this PC whose guard holds).
pub fn exec(m: &mut Machine, w: &mut Warp, pc: u32, exec: u32, op: &Op) -> Result<(), PtxError> {
    match op {
        Op::Nop => {}
        Op::Mov { d, a } => {
            let dm = m.reg_mask(*d);
            let va = fetch(w, *a);
            store(w, *d, exec, &va, dm);
        }
        Op::Pack {
            d,
            parts,
            part_bits,
        } => {
            let dm = m.reg_mask(*d);
            let pm = width_mask(*part_bits);
            for l in lanes(exec) {
                let mut v = 0u64;
                for (i, p) in parts.iter().enumerate() {
                    v |= (w.get(*p, l) & pm) << (i as u32 * part_bits);
                }
                w.put(*d, l, v, dm);
            }
        }
        Op::Unpack { ds, a, part_bits } => {
            let pm = width_mask(*part_bits);
            for l in lanes(exec) {
                let v = w.get(*a, l);
                for (i, d) in ds.iter().enumerate() {
                    let dm = m.reg_mask(*d);
                    w.put(*d, l, (v >> (i as u32 * part_bits)) & pm, dm);
                }
            }
        }
        Op::MovGlobalVar { d, var } => {
            let v = m.gvars.get(*var as usize).copied().unwrap_or(0);
            let dm = m.reg_mask(*d);
            for l in lanes(exec) {
                w.put(*d, l, v, dm);
            }
        }
        Op::Clock { d } => {
            let v = m.instructions;
            let dm = m.reg_mask(*d);
            for l in lanes(exec) {
                w.put(*d, l, v, dm);
            }
        }
        Op::Int {
            op,
            ty,
            d,
            a,
            b,
            c,
            e,
        } => {
            let (bits, signed) = (ty.bits(), ty.is_signed());
            let dm = m.reg_mask(*d);
            let (va, vb, vc) = (fetch(w, *a), fetch(w, *b), fetch(w, *c));
            let mut out = [0u64; 32];
            if int_fast(*op, *ty, &va, &vb, &vc, &mut out) {
                store(w, *d, exec, &out, dm);
                return Ok(());
            }
            let ccb = sreg::CC as usize * 32;
            for l in lanes(exec) {
                let mut cc = w.regs[ccb + l];
                let r = int_eval(
                    *op,
                    bits,
                    signed,
                    va[l],
                    vb[l],
                    vc[l],
                    w.get(*e, l),
                    &mut cc,
                );
                w.regs[ccb + l] = cc;
                w.put(*d, l, r, dm);
            }
        }
        Op::Float {
            op,
            kind,
            m: fm,
            d,
            a,
            b,
            c,
        } => {
            let dm = m.reg_mask(*d);
            let (va, vb, vc) = (fetch(w, *a), fetch(w, *b), fetch(w, *c));
            let mut out = [0u64; 32];
            if float_fast(*op, *kind, *fm, &va, &vb, &vc, &mut out) {
                store(w, *d, exec, &out, dm);
                return Ok(());
            }
            for l in lanes(exec) {
                let r = float_lane(*op, *kind, *fm, va[l], vb[l], vc[l]);
                w.put(*d, l, r, dm);
            }
        }
        Op::Setp {
            cmp,
            ty,
            ftz,
            p,
            q,
            a,
            b,
            bop,
        } => {
            let (va, vb) = (fetch(w, *a), fetch(w, *b));
            let mut t = [0u64; 32];
            for l in 0..32 {
                t[l] = compare(*cmp, *ty, va[l], vb[l], *ftz) as u64;
            }
            if bop.is_none() {
                store(w, *p, exec, &t, 1);
                if *q != SINK {
                    let nt = t.map(|x| x ^ 1);
                    store(w, *q, exec, &nt, 1);
                }
                return Ok(());
            }
            for l in lanes(exec) {
                let pv = bool_combine(w, bop, l, t[l] == 1);
                let qv = bool_combine(w, bop, l, t[l] == 0);
                w.put(*p, l, pv as u64, 1);
                w.put(*q, l, qv as u64, 1);
            }
        }
        Op::Set {
            cmp,
            dty,
            sty,
            ftz,
            d,
            a,
            b,
            bop,
        } => {
            let dm = m.reg_mask(*d);
            let one = if *dty == Ty::F32 {
                1.0f32.to_bits() as u64
            } else {
                u64::MAX
            };
            for l in lanes(exec) {
                let t = compare(*cmp, *sty, w.get(*a, l), w.get(*b, l), *ftz);
                let v = bool_combine(w, bop, l, t);
                w.put(*d, l, if v { one } else { 0 }, dm);
            }
        }
        Op::Selp { d, a, b, c } => {
            let dm = m.reg_mask(*d);
            for l in lanes(exec) {
                let v = if w.get(*c, l) & 1 == 1 {
                    w.get(*a, l)
                } else {
                    w.get(*b, l)
                };
                w.put(*d, l, v, dm);
            }
        }
        Op::Slct { float, d, a, b, c } => {
            let dm = m.reg_mask(*d);
            for l in lanes(exec) {
                let cv = w.get(*c, l);
                let pick_a = if *float {
                    f32::from_bits(cv as u32) >= 0.0
                } else {
                    (cv as u32 as i32) >= 0
                };
                let v = if pick_a { w.get(*a, l) } else { w.get(*b, l) };
                w.put(*d, l, v, dm);
            }
        }
        Op::Testp { op, ty, d, a } => {
            for l in lanes(exec) {
                let x = convert::float_value(w.get(*a, l), *ty);
                let r = match op {
                    0 => x.is_finite(),
                    1 => x.is_infinite(),
                    2 => !x.is_nan(),
                    3 => x.is_nan(),
                    4 => {
                        if *ty == Ty::F32 {
                            (x as f32).is_normal()
                        } else {
                            x.is_normal()
                        }
                    }
                    _ => {
                        if *ty == Ty::F32 {
                            (x as f32).is_subnormal()
                        } else {
                            x.is_subnormal()
                        }
                    }
                };
                w.put(*d, l, r as u64, 1);
            }
        }
        Op::Cvt { spec, d, a } => {
            let dm = m.reg_mask(*d);
            for l in lanes(exec) {
                let v = convert::cvt(w.get(*a, l), spec);
                w.put(*d, l, v, dm);
            }
        }
        Op::CvtPack {
            dty,
            relu,
            satfinite,
            d,
            a,
            b,
        } => {
            let dm = m.reg_mask(*d);
            let half = if matches!(dty, Ty::E4m3x2 | Ty::E5m2x2) {
                8
            } else {
                16
            };
            for l in lanes(exec) {
                let hi = convert::pack_lane(
                    f32::from_bits(w.get(*a, l) as u32),
                    *dty,
                    *relu,
                    *satfinite,
                );
                let lo = convert::pack_lane(
                    f32::from_bits(w.get(*b, l) as u32),
                    *dty,
                    *relu,
                    *satfinite,
                );
                w.put(*d, l, (hi << half) | lo, dm);
            }
        }
        Op::CvtUnpack8 { sty, relu, d, a } => {
            let dm = m.reg_mask(*d);
            let f = if *sty == Ty::E4m3x2 {
                &convert::E4M3
            } else {
                &convert::E5M2
            };
            for l in lanes(exec) {
                let v = w.get(*a, l);
                let mut out = 0u64;
                for i in 0..2 {
                    let mut x = convert::decode((v >> (8 * i)) & 0xFF, f);
                    if *relu && x < 0.0 {
                        x = 0.0;
                    }
                    out |= convert::encode(x, 0, &convert::F16, Rnd::Rn, false) << (16 * i);
                }
                w.put(*d, l, out, dm);
            }
        }
        Op::Cvta { to, space, d, a } => {
            let win = match space {
                Space::Shared => SHARED_WINDOW,
                Space::Local => LOCAL_WINDOW,
                Space::Const => CONST_WINDOW,
                Space::Param => PARAM_WINDOW,
                _ => 0,
            };
            let dm = m.reg_mask(*d);
            for l in lanes(exec) {
                let v = w.get(*a, l);
                let r = if *to {
                    v.wrapping_sub(win)
                } else {
                    v.wrapping_add(win)
                };
                w.put(*d, l, r, dm);
            }
        }
        Op::Isspacep { space, d, a } => {
            for l in lanes(exec) {
                let (sp, _) = Machine::resolve(Space::Generic, w.get(*a, l));
                w.put(*d, l, (sp == *space) as u64, 1);
            }
        }
        Op::Ld { .. }
        | Op::St { .. }
        | Op::Atom { .. }
        | Op::CpAsync { .. }
        | Op::CpCommit
        | Op::CpWait { .. } => super::exec_mem::exec_mem(m, w, pc, exec, op)?,
        Op::Shfl { .. }
        | Op::Vote { .. }
        | Op::Redux { .. }
        | Op::Match { .. }
        | Op::Activemask { .. }
        | Op::BarWarp { .. } => super::collective::exec_collective(m, w, pc, exec, op)?,
        Op::Mma(mma) => super::mma::exec_mma(m, w, pc, exec, mma)?,
        Op::Ldmatrix {
            num,
            trans,
            ds,
            addr,
            space,
        } => super::mma::exec_ldmatrix(m, w, pc, exec, *num, *trans, ds, addr, *space)?,
        Op::Bra { .. } | Op::Exit | Op::Trap | Op::Bar { .. } => {
            return Err(m.runtime(
                w,
                exec.trailing_zeros() as usize % 32,
                pc,
                "control op reached the ALU path",
            ))
        }
    }
    Ok(())
}
