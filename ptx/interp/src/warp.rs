//! SIMT scheduling. Each warp keeps a PC per lane and issues, at every step, the
//! instruction at the minimum PC among its runnable lanes, with the active mask = all
//! lanes at that PC ("min-PC" reconvergence: divergent paths are serialized and lanes
//! merge as soon as they reach the same PC, which handles structured and unstructured
//! control flow, divergent loop trip counts and early exits). A fast uniform mode skips
//! the per-lane PC scan while the warp is converged. Also implements `bra`, `exit`,
//! `trap`, `bar.sync`/`bar.arrive` blocking, CTA-wide barrier release and deadlock
//! detection.

use super::ast::*;
use super::error::PtxError;
use super::exec;
use super::machine::{lanes, BarState, Machine, Warp};

#[inline(always)]
fn guard_mask(w: &Warp, p: Reg, neg: bool, active: u32) -> u32 {
    let base = p as usize * 32;
    let mut m = 0u32;
    for (l, v) in w.regs[base..base + 32].iter().enumerate() {
        m |= ((*v & 1) as u32) << l;
    }
    if neg {
        m = !m;
    }
    m & active
}

/// Lanes at the minimum PC among `runnable`.
#[inline]
fn select(w: &Warp, runnable: u32) -> (u32, u32) {
    let mut min = u32::MAX;
    let mut mask = 0u32;
    for l in lanes(runnable) {
        let p = w.pc[l];
        if p < min {
            min = p;
            mask = 1 << l;
        } else if p == min {
            mask |= 1 << l;
        }
    }
    (min, mask)
}

#[inline]
fn reconverge(w: &mut Warp) {
    let r = w.runnable();
    if r == 0 {
        return;
    }
    let p0 = w.pc[r.trailing_zeros() as usize];
    if lanes(r).all(|l| w.pc[l] == p0) {
        w.uniform = true;
        w.upc = p0;
    }
}

/// Move `mask` lanes (all runnable lanes of the step that did not exit/block) to `to`.
#[inline(always)]
fn goto(w: &mut Warp, mask: u32, to: u32) {
    if w.uniform {
        w.upc = to;
    } else {
        for l in lanes(mask) {
            w.pc[l] = to;
        }
        reconverge(w);
    }
}

/// Run warp `w` for at most `budget` warp-instructions or until it has no runnable lane.
pub fn run_warp(m: &mut Machine, w: &mut Warp, budget: u64) -> Result<(), PtxError> {
    let kernel = m.kernel;
    let insts = &kernel.insts;
    let mut issued = 0u64;
    while issued < budget {
        let runnable = w.runnable();
        if runnable == 0 {
            break;
        }
        let (pc, active) = if w.uniform {
            (w.upc, runnable)
        } else {
            select(w, runnable)
        };
        let Some(inst) = insts.get(pc as usize) else {
            return Err(m.runtime(
                w,
                active.trailing_zeros() as usize,
                pc,
                "program counter out of range",
            ));
        };
        let exec = if inst.guard == SINK {
            active
        } else {
            guard_mask(w, inst.guard, inst.guard_neg, active)
        };
        m.instructions += active.count_ones() as u64;
        issued += 1;
        match &inst.op {
            Op::Bra { target } => {
                let fall = active & !exec;
                if fall == 0 {
                    goto(w, active, *target);
                } else if exec == 0 {
                    goto(w, active, pc + 1);
                } else {
                    w.diverge();
                    for l in lanes(exec) {
                        w.pc[l] = *target;
                    }
                    for l in lanes(fall) {
                        w.pc[l] = pc + 1;
                    }
                    reconverge(w);
                }
            }
            Op::Exit => {
                if exec != 0 {
                    w.diverge();
                    w.exited |= exec;
                    for l in lanes(exec) {
                        w.cp[l].clear();
                    }
                }
                goto(w, active & !exec, pc + 1);
            }
            Op::Trap => {
                if exec != 0 {
                    return Err(m.trap(w, exec.trailing_zeros() as usize, pc));
                }
                goto(w, active, pc + 1);
            }
            Op::Bar { id, count, arrive } => {
                if exec != 0 {
                    let l0 = exec.trailing_zeros() as usize;
                    let bid = w.get(*id, l0);
                    if bid >= 16 {
                        return Err(m.runtime(
                            w,
                            l0,
                            pc,
                            format!("barrier id {bid} out of range 0..16"),
                        ));
                    }
                    let cnt = count.map(|c| w.get(c, l0) as u32);
                    if let Some(c) = cnt {
                        if c == 0 || c % 32 != 0 {
                            return Err(m.runtime(
                                w,
                                l0,
                                pc,
                                format!(
                                    "barrier thread count {c} is not a positive multiple of 32"
                                ),
                            ));
                        }
                    }
                    let b = &mut m.bars[bid as usize];
                    if cnt.is_some() {
                        b.expected = cnt;
                    }
                    b.arrived += exec.count_ones();
                    if !*arrive {
                        w.diverge();
                        for l in lanes(exec) {
                            w.pc[l] = pc + 1;
                            w.bar_id[l] = bid as u8;
                        }
                        w.blocked |= exec;
                    }
                }
                let rest = w.runnable() & active;
                goto(w, rest, pc + 1);
            }
            op => {
                exec::exec(m, w, pc, exec, op)?;
                goto(w, active, pc + 1);
            }
        }
    }
    Ok(())
}

/// Release every barrier whose arrival count is complete. Returns whether any was.
pub fn release_barriers(m: &mut Machine, warps: &mut [Warp]) -> bool {
    let mut any = false;
    for id in 0..16usize {
        let b = m.bars[id];
        if b.arrived == 0 {
            continue;
        }
        let expected = b.expected.unwrap_or(m.nthreads);
        if b.arrived < expected {
            continue;
        }
        m.bars[id] = BarState::default();
        for w in warps.iter_mut() {
            let rel = lanes(w.blocked)
                .filter(|&l| w.bar_id[l] as usize == id)
                .fold(0u32, |a, l| a | 1 << l);
            if rel != 0 {
                w.diverge();
                w.blocked &= !rel;
                reconverge(w);
            }
        }
        if let Some(r) = m.race.as_mut() {
            r.new_epoch();
        }
        any = true;
    }
    any
}

/// Run all warps of the current CTA to completion.
pub fn run_cta(m: &mut Machine, warps: &mut [Warp], limit: u64) -> Result<(), PtxError> {
    const QUANTUM: u64 = 4096;
    loop {
        let mut progressed = false;
        for w in warps.iter_mut() {
            if w.runnable() != 0 {
                run_warp(m, w, QUANTUM)?;
                progressed = true;
                if m.instructions > limit {
                    return Err(PtxError::InstructionLimit {
                        kernel: m.kernel.name.clone(),
                        limit,
                    });
                }
            }
        }
        if release_barriers(m, warps) {
            progressed = true;
        }
        if !progressed {
            let live: u32 = warps
                .iter()
                .map(|w| (w.valid & !w.exited).count_ones())
                .sum();
            if live == 0 {
                return Ok(());
            }
            let exited: u32 = warps
                .iter()
                .map(|w| (w.valid & w.exited).count_ones())
                .sum();
            let mut waits = Vec::new();
            for (id, b) in m.bars.iter().enumerate() {
                if b.arrived > 0 {
                    let exp = b.expected.unwrap_or(m.nthreads);
                    let line = warps
                        .iter()
                        .find_map(|w| {
                            lanes(w.blocked)
                                .find(|&l| w.bar_id[l] as usize == id)
                                .map(|l| w.pc[l])
                        })
                        .and_then(|pc| m.kernel.insts.get(pc.saturating_sub(1) as usize))
                        .map(|i| i.line)
                        .unwrap_or(0);
                    waits.push(format!(
                        "barrier {id} (line {line}): {} of {exp} threads arrived",
                        b.arrived
                    ));
                }
            }
            return Err(PtxError::Deadlock {
                kernel: m.kernel.name.clone(),
                ctaid: m.ctaid,
                message: format!(
                    "{live} threads are blocked forever; {exited} threads already exited; {}",
                    waits.join("; ")
                ),
            });
        }
    }
}
