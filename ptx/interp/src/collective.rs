//! Warp-collective instructions: `shfl.sync` (up/down/bfly/idx with clamp and segment
//! mask), `vote.sync`, `redux.sync`, `match.sync`, `activemask` and `bar.warp.sync`.
//! Every lane named in `membermask` that has not exited must be executing the same
//! instruction (converged and not predicated off); otherwise a `Divergence` error is
//! reported instead of silently producing undefined values.

use super::ast::*;
use super::error::PtxError;
use super::machine::{lanes, Machine, Warp};

/// Validate `membermask` against the executing lanes; returns the participating lanes.
pub fn check_members(
    m: &Machine,
    w: &Warp,
    pc: u32,
    exec: u32,
    mask: u32,
) -> Result<u32, PtxError> {
    let live = w.valid & !w.exited;
    let need = mask & live;
    if need & !exec != 0 {
        return Err(m.divergence(
            w,
            pc,
            format!(
                "membermask {mask:#010x} names lanes {:#010x} that are not executing this instruction \
                 (diverged, blocked at a barrier, or predicated off)",
                need & !exec
            ),
        ));
    }
    if exec & !mask != 0 {
        return Err(m.divergence(
            w,
            pc,
            format!(
                "lanes {:#010x} execute it but are not in membermask {mask:#010x}",
                exec & !mask
            ),
        ));
    }
    Ok(need)
}

fn mask_of(w: &Warp, s: Src, exec: u32) -> u32 {
    w.get(s, exec.trailing_zeros() as usize % 32) as u32
}

pub fn exec_collective(
    m: &mut Machine,
    w: &mut Warp,
    pc: u32,
    exec: u32,
    op: &Op,
) -> Result<(), PtxError> {
    if exec == 0 {
        return Ok(());
    }
    match op {
        Op::Shfl {
            mode,
            d,
            p,
            a,
            b,
            c,
            mask,
        } => {
            let mask = mask_of(w, *mask, exec);
            check_members(m, w, pc, exec, mask)?;
            let mut vals = [0u64; 32];
            for (l, v) in vals.iter_mut().enumerate() {
                *v = w.get(*a, l);
            }
            let dm = m.reg_mask(*d);
            for l in lanes(exec) {
                let lane = l as i32;
                let bv = (w.get(*b, l) & 31) as i32;
                let cv = w.get(*c, l) as u32;
                let cval = (cv & 31) as i32;
                let seg = ((cv >> 8) & 31) as i32;
                let max_lane = (lane & seg) | (cval & !seg);
                let min_lane = lane & seg;
                let (j, pval) = match mode {
                    ShflMode::Up => (lane - bv, lane - bv >= max_lane),
                    ShflMode::Down => (lane + bv, lane + bv <= max_lane),
                    ShflMode::Bfly => (lane ^ bv, (lane ^ bv) <= max_lane),
                    ShflMode::Idx => {
                        let j = min_lane | (bv & !seg);
                        (j, j <= max_lane)
                    }
                };
                let src = if pval && (0..32).contains(&j) {
                    j as usize
                } else {
                    l
                };
                w.put(*d, l, vals[src], dm);
                w.put(*p, l, pval as u64, 1);
            }
        }
        Op::Vote {
            mode,
            d,
            a,
            neg,
            mask,
        } => {
            let mask = mask_of(w, *mask, exec);
            let part = check_members(m, w, pc, exec, mask)? & exec;
            let mut ballot = 0u32;
            for l in lanes(part) {
                if (w.get(*a, l) & 1 == 1) != *neg {
                    ballot |= 1 << l;
                }
            }
            let v = match mode {
                VoteMode::Ballot => ballot as u64,
                VoteMode::All => (ballot == part) as u64,
                VoteMode::Any => (ballot != 0) as u64,
                VoteMode::Uni => (ballot == part || ballot == 0) as u64,
            };
            let dm = m.reg_mask(*d);
            for l in lanes(exec) {
                w.put(*d, l, v, dm);
            }
        }
        Op::Redux {
            op,
            signed,
            d,
            a,
            mask,
        } => {
            let mask = mask_of(w, *mask, exec);
            let part = check_members(m, w, pc, exec, mask)? & exec;
            let mut acc: Option<u32> = None;
            for l in lanes(part) {
                let x = w.get(*a, l) as u32;
                acc = Some(match acc {
                    None => x,
                    Some(y) => match op {
                        ReduxOp::Add => y.wrapping_add(x),
                        ReduxOp::Min if *signed => (y as i32).min(x as i32) as u32,
                        ReduxOp::Max if *signed => (y as i32).max(x as i32) as u32,
                        ReduxOp::Min => y.min(x),
                        ReduxOp::Max => y.max(x),
                        ReduxOp::And => y & x,
                        ReduxOp::Or => y | x,
                        ReduxOp::Xor => y ^ x,
                    },
                });
            }
            let dm = m.reg_mask(*d);
            for l in lanes(exec) {
                w.put(*d, l, acc.unwrap_or(0) as u64, dm);
            }
        }
        Op::Match {
            all,
            ty,
            d,
            p,
            a,
            mask,
        } => {
            let mask = mask_of(w, *mask, exec);
            let part = check_members(m, w, pc, exec, mask)? & exec;
            let tm = ty.mask();
            let mut vals = [0u64; 32];
            for l in lanes(part) {
                vals[l] = w.get(*a, l) & tm;
            }
            let first = vals[part.trailing_zeros() as usize % 32];
            let all_eq = lanes(part).all(|l| vals[l] == first);
            for l in lanes(exec) {
                let (dv, pv) = if *all {
                    if all_eq {
                        (part, 1)
                    } else {
                        (0, 0)
                    }
                } else {
                    (
                        lanes(part)
                            .filter(|&k| vals[k] == vals[l])
                            .fold(0u32, |acc, k| acc | 1 << k),
                        1,
                    )
                };
                w.put(*d, l, dv as u64, m.reg_mask(*d));
                w.put(*p, l, pv, 1);
            }
        }
        Op::Activemask { d } => {
            let dm = m.reg_mask(*d);
            for l in lanes(exec) {
                w.put(*d, l, exec as u64, dm);
            }
        }
        Op::BarWarp { mask } => {
            let mask = mask_of(w, *mask, exec);
            check_members(m, w, pc, exec, mask)?;
            w.wepoch = w.wepoch.wrapping_add(1);
        }
        _ => {}
    }
    Ok(())
}
