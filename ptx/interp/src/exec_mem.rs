//! Memory instructions: `ld`/`st` (scalar and vector, every state space, with sign
//! extension of narrow signed loads), `atom`/`red` (lane-ordered read-modify-write,
//! so contended atomics are exact), and truly asynchronous `cp.async`: copies are
//! queued per thread with their commit-group number and only performed by
//! `cp.async.wait_group` / `wait_all`, so reading shared memory early sees stale data
//! (with the race detector on, the destination is marked in flight from issue to the
//! completing wait, see `race.rs`).

use super::ast::*;
use super::convert::ftz32;
use super::error::PtxError;
use super::machine::{lanes, CpOp, Machine, Track, Warp};

pub fn exec_mem(
    m: &mut Machine,
    w: &mut Warp,
    pc: u32,
    exec: u32,
    op: &Op,
) -> Result<(), PtxError> {
    match op {
        Op::Ld {
            space,
            ty,
            ds,
            addr,
        } => {
            let esz = ty.bytes();
            let total = esz * ds.len() as u32;
            let (bits, signed) = (ty.bits(), ty.is_signed());
            for l in lanes(exec) {
                let a = m.addr(w, addr, l);
                if ds.len() > 1 && a % total as u64 != 0 {
                    return Err(m.misaligned(w, l, pc, *space, a, total));
                }
                for (i, d) in ds.iter().enumerate() {
                    let v = m.load(
                        w,
                        l,
                        pc,
                        *space,
                        a.wrapping_add(i as u64 * esz as u64),
                        esz,
                        Track::Read,
                    )?;
                    w.put(*d, l, extend(v, bits, signed), m.reg_mask(*d));
                }
            }
        }
        Op::St {
            space,
            ty,
            srcs,
            addr,
        } => {
            let esz = ty.bytes();
            let total = esz * srcs.len() as u32;
            for l in lanes(exec) {
                let a = m.addr(w, addr, l);
                if srcs.len() > 1 && a % total as u64 != 0 {
                    return Err(m.misaligned(w, l, pc, *space, a, total));
                }
                for (i, s) in srcs.iter().enumerate() {
                    let v = w.get(*s, l);
                    let ai = a.wrapping_add(i as u64 * esz as u64);
                    m.store(w, l, pc, *space, ai, esz, v, false)?;
                }
            }
        }
        Op::Atom {
            space,
            op,
            ty,
            d,
            addr,
            b,
            c,
        } => {
            let size = ty.bytes();
            for l in lanes(exec) {
                let a = m.addr(w, addr, l);
                let (bv, cv) = (w.get(*b, l), w.get(*c, l));
                let old = m.rmw(w, l, pc, *space, a, size, |old| {
                    atom_apply(*op, *ty, old, bv, cv)
                })?;
                w.put(
                    *d,
                    l,
                    extend(old, ty.bits(), ty.is_signed()),
                    m.reg_mask(*d),
                );
            }
        }
        Op::CpAsync {
            size,
            dst,
            src,
            src_size,
            ignore,
        } => {
            let line = m.kernel.insts[pc as usize].line;
            for l in lanes(exec) {
                let da = m.addr(w, dst, l);
                let sa = m.addr(w, src, l);
                if da % *size as u64 != 0 {
                    return Err(m.misaligned(w, l, pc, Space::Shared, da, *size));
                }
                if sa % *size as u64 != 0 {
                    return Err(m.misaligned(w, l, pc, Space::Global, sa, *size));
                }
                if da.saturating_add(*size as u64) > m.shared.len() as u64 {
                    return Err(m.oob(w, l, pc, Space::Shared, da, *size));
                }
                let mut ss = match src_size {
                    Some(s) => (w.get(*s, l) as u32).min(*size),
                    None => *size,
                };
                if let Some((p, neg)) = ignore {
                    if (w.regs[*p as usize * 32 + l] & 1 == 1) != *neg {
                        ss = 0;
                    }
                }
                if ss > 0 && m.gmem.slice(sa, ss as usize).is_none() {
                    return Err(m.oob(w, l, pc, Space::Global, sa, ss));
                }
                let group = w.cp_committed[l];
                // The destination may be written at any time from now until this thread's
                // completing wait: the race detector marks it in flight over that window.
                if let Some(r) = m.race.as_mut() {
                    let tid = w.index * 32 + l as u32;
                    if let Err(c) = r.issue_async(da, *size, tid, w.wepoch, line) {
                        return Err(m.race_error(c));
                    }
                }
                w.cp[l].push(CpOp {
                    dst: da as u32,
                    src: sa,
                    size: *size,
                    src_size: ss,
                    group,
                    line,
                });
            }
        }
        Op::CpCommit => {
            for l in lanes(exec) {
                w.cp_committed[l] = w.cp_committed[l].wrapping_add(1);
            }
        }
        Op::CpWait { n } => {
            for l in lanes(exec) {
                let threshold = if *n == u32::MAX {
                    w.cp_committed[l] = w.cp_committed[l].wrapping_add(1);
                    u32::MAX
                } else {
                    w.cp_committed[l].saturating_sub(*n)
                };
                complete_cp(m, w, l, pc, threshold)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Perform (in issue order) every queued copy of `lane` whose group is `< threshold`.
fn complete_cp(
    m: &mut Machine,
    w: &mut Warp,
    lane: usize,
    pc: u32,
    threshold: u32,
) -> Result<(), PtxError> {
    if w.cp[lane].is_empty() {
        return Ok(());
    }
    let tid = w.index * 32 + lane as u32;
    let mut queue = std::mem::take(&mut w.cp[lane]);
    let mut kept = 0;
    for i in 0..queue.len() {
        let op = queue[i];
        if op.group >= threshold {
            queue[kept] = op;
            kept += 1;
            continue;
        }
        // The bytes past src-size are zero-filled, never read: a copy with src-size 0 (or
        // ignore-src) reads nothing, so its source address is not looked up (as at issue).
        let mut buf = [0u8; 16];
        let n = op.src_size as usize;
        if n > 0 {
            match m.gmem.slice(op.src, n) {
                Some(b) => buf[..n].copy_from_slice(b),
                None => {
                    let msg = format!(
                        "cp.async source {:#x} (+{n}) is no longer valid at completion",
                        op.src
                    );
                    return Err(m.runtime(w, lane, pc, msg));
                }
            }
        }
        if let Some(r) = m.race.as_mut() {
            if let Err(c) = r.complete_async(op.dst as u64, op.size, tid, w.wepoch, op.line) {
                return Err(m.race_error(c));
            }
        }
        let d = op.dst as usize;
        m.shared[d..d + op.size as usize].copy_from_slice(&buf[..op.size as usize]);
    }
    queue.truncate(kept);
    w.cp[lane] = queue;
    Ok(())
}

fn atom_apply(op: AtomOp, ty: Ty, old: u64, b: u64, c: u64) -> u64 {
    let bits = ty.bits();
    let signed = ty.is_signed();
    match (op, ty) {
        (AtomOp::Add, Ty::F32) => {
            let r = ftz32(ftz32(f32::from_bits(old as u32)) + ftz32(f32::from_bits(b as u32)));
            super::convert::canon32(r) as u64
        }
        (AtomOp::Add, Ty::F64) => (f64::from_bits(old) + f64::from_bits(b)).to_bits(),
        (AtomOp::Min | AtomOp::Max, Ty::F32) => {
            let (x, y) = (f32::from_bits(old as u32), f32::from_bits(b as u32));
            let r = if op == AtomOp::Min {
                x.min(y)
            } else {
                x.max(y)
            };
            r.to_bits() as u64
        }
        (AtomOp::Min | AtomOp::Max, Ty::F64) => {
            let (x, y) = (f64::from_bits(old), f64::from_bits(b));
            (if op == AtomOp::Min {
                x.min(y)
            } else {
                x.max(y)
            })
            .to_bits()
        }
        (AtomOp::Add, _) => old.wrapping_add(b),
        (AtomOp::Min | AtomOp::Max, _) => {
            let (x, y) = (extend(old, bits, signed), extend(b, bits, signed));
            let less = if signed {
                (x as i64) < (y as i64)
            } else {
                x < y
            };
            if less == (op == AtomOp::Min) {
                old
            } else {
                b
            }
        }
        (AtomOp::Inc, _) => {
            let (o, bb) = (old & ty.mask(), b & ty.mask());
            if o >= bb {
                0
            } else {
                o + 1
            }
        }
        (AtomOp::Dec, _) => {
            let (o, bb) = (old & ty.mask(), b & ty.mask());
            if o == 0 || o > bb {
                bb
            } else {
                o - 1
            }
        }
        (AtomOp::And, _) => old & b,
        (AtomOp::Or, _) => old | b,
        (AtomOp::Xor, _) => old ^ b,
        (AtomOp::Exch, _) => b,
        (AtomOp::Cas, _) => {
            if old & ty.mask() == b & ty.mask() {
                c
            } else {
                old
            }
        }
    }
}
