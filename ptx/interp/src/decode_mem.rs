//! Decoding of memory and synchronization instructions: `ld`/`ldu`/`st` (spaces,
//! vectors, cache qualifiers), `atom`/`red`, `cp.async` (copy, commit, wait) and
//! `bar`/`barrier` (sync, arrive, warp sync).

use super::ast::*;
use super::decode::{Ctx, Mods};
use super::decode_ops::one_type;
use super::error::PtxError;
use super::parser::{Lit, Operand};

type R = Result<Op, PtxError>;

fn mem_common(cx: &Ctx, m: &mut Mods) -> Result<(Space, u32, Ty, bool), PtxError> {
    if m.items.iter().any(|s| s.starts_with("shared::cluster")) {
        return cx.unsupported_why("cluster shared memory");
    }
    let hint = m.take("L2::cache_hint");
    let space = m.space().unwrap_or(Space::Generic);
    m.ignore_memory_qualifiers();
    let v = m.vec();
    let ty = one_type(cx, m)?;
    m.finish(cx)?;
    if ty == Ty::Pred {
        return cx.err("predicates cannot be loaded or stored");
    }
    Ok((space, v, ty, hint))
}

pub fn ld(cx: &Ctx, mut m: Mods, ops: &[Operand]) -> R {
    let (space, v, ty, hint) = mem_common(cx, &mut m)?;
    cx.nops(ops, 2, 2 + usize::from(hint))?;
    let ds = cx.dsts(&ops[0])?;
    if ds.len() as u32 != v {
        return cx.err(format!(
            "vector width .v{v} does not match {} destinations",
            ds.len()
        ));
    }
    Ok(Op::Ld {
        space,
        ty,
        ds,
        addr: cx.addr(&ops[1], space)?,
    })
}

pub fn st(cx: &Ctx, mut m: Mods, ops: &[Operand]) -> R {
    let (space, v, ty, hint) = mem_common(cx, &mut m)?;
    cx.nops(ops, 2, 2 + usize::from(hint))?;
    if matches!(space, Space::Param | Space::Const) {
        return cx.unsupported_why("stores to .param/.const");
    }
    let srcs = cx.srcs(&ops[1], ty)?;
    if srcs.len() as u32 != v {
        return cx.err(format!(
            "vector width .v{v} does not match {} sources",
            srcs.len()
        ));
    }
    Ok(Op::St {
        space,
        ty,
        srcs,
        addr: cx.addr(&ops[0], space)?,
    })
}

pub fn atom(cx: &Ctx, red: bool, mut m: Mods, ops: &[Operand]) -> R {
    let space = m.space().unwrap_or(Space::Generic);
    if !matches!(space, Space::Global | Space::Shared | Space::Generic) {
        return cx.unsupported_why("atomics on this state space");
    }
    m.ignore_memory_qualifiers();
    let op = match m.take_any(&[
        "add", "min", "max", "inc", "dec", "and", "or", "xor", "exch", "cas",
    ]) {
        Some("add") => AtomOp::Add,
        Some("min") => AtomOp::Min,
        Some("max") => AtomOp::Max,
        Some("inc") => AtomOp::Inc,
        Some("dec") => AtomOp::Dec,
        Some("and") => AtomOp::And,
        Some("or") => AtomOp::Or,
        Some("xor") => AtomOp::Xor,
        Some("exch") => AtomOp::Exch,
        Some("cas") => AtomOp::Cas,
        _ => return cx.unsupported(),
    };
    let ty = one_type(cx, &mut m)?;
    m.finish(cx)?;
    let ok = match ty {
        Ty::B32 | Ty::B64 => matches!(
            op,
            AtomOp::And | AtomOp::Or | AtomOp::Xor | AtomOp::Exch | AtomOp::Cas
        ),
        Ty::U32 | Ty::S32 | Ty::U64 | Ty::S64 => {
            !matches!(op, AtomOp::And | AtomOp::Or | AtomOp::Xor)
        }
        Ty::F32 | Ty::F64 => matches!(op, AtomOp::Add | AtomOp::Exch | AtomOp::Min | AtomOp::Max),
        _ => false,
    };
    if !ok {
        return cx.unsupported_why("atomic operation/type combination");
    }
    let n = if op == AtomOp::Cas { 3 } else { 2 };
    let (d, rest) = if red {
        cx.nops(ops, n, n)?;
        (SINK, ops)
    } else {
        cx.nops(ops, n + 1, n + 1)?;
        (cx.dst(&ops[0])?, &ops[1..])
    };
    Ok(Op::Atom {
        space,
        op,
        ty,
        d,
        addr: cx.addr(&rest[0], space)?,
        b: cx.src(&rest[1], ty)?,
        c: if op == AtomOp::Cas {
            cx.src(&rest[2], ty)?
        } else {
            Src::Imm(0)
        },
    })
}

pub fn cp_async(cx: &Ctx, mut m: Mods, ops: &[Operand]) -> R {
    if !m.take("async") || m.take("bulk") {
        return cx.unsupported();
    }
    if m.take("commit_group") {
        m.finish(cx)?;
        return Ok(Op::CpCommit);
    }
    if m.take("wait_all") {
        m.finish(cx)?;
        return Ok(Op::CpWait { n: u32::MAX });
    }
    if m.take("wait_group") {
        m.finish(cx)?;
        cx.nops(ops, 1, 1)?;
        let Operand::Imm(Lit::Int(n)) = ops[0] else {
            return cx.err("cp.async.wait_group needs an integer constant");
        };
        return Ok(Op::CpWait {
            n: n.min(1 << 20) as u32,
        });
    }
    let cg = m.take("cg");
    if !cg && !m.take("ca") {
        return cx.unsupported();
    }
    let hint = m.take("L2::cache_hint");
    if !(m.take("shared") || m.take("shared::cta")) || !m.take("global") {
        return cx.unsupported_why("cp.async needs .shared.global");
    }
    m.ignore_memory_qualifiers();
    m.finish(cx)?;
    cx.nops(ops, 3, 4 + usize::from(hint))?;
    let size = match ops[2] {
        Operand::Imm(Lit::Int(s)) if s == 4 || s == 8 || s == 16 => s as u32,
        _ => return cx.err("cp-size must be 4, 8 or 16"),
    };
    if cg && size != 16 {
        return cx.err("cp.async.cg requires cp-size 16");
    }
    let (mut src_size, mut ignore) = (None, None);
    if ops.len() >= 4 && !(hint && ops.len() == 4) {
        let is_pred =
            matches!(&ops[3], Operand::NotPred(_)) || cx.reg_ty(&ops[3]) == Some(Ty::Pred);
        if is_pred {
            let (p, neg) = cx.pred(&ops[3])?;
            let Src::Reg(r) = p else {
                return cx.err("ignore-src must be a predicate register");
            };
            ignore = Some((r, neg));
        } else {
            src_size = Some(cx.src(&ops[3], Ty::U32)?);
        }
    }
    Ok(Op::CpAsync {
        size,
        dst: cx.addr(&ops[0], Space::Shared)?,
        src: cx.addr(&ops[1], Space::Global)?,
        src_size,
        ignore,
    })
}

pub fn bar(cx: &Ctx, mut m: Mods, ops: &[Operand]) -> R {
    m.take("cta");
    m.take("aligned");
    if m.take("warp") {
        if !m.take("sync") {
            return cx.unsupported();
        }
        m.finish(cx)?;
        cx.nops(ops, 1, 1)?;
        return Ok(Op::BarWarp {
            mask: cx.src(&ops[0], Ty::B32)?,
        });
    }
    let arrive = m.take("arrive");
    let sync = m.take("sync");
    m.finish(cx)?;
    if arrive && sync {
        return cx.unsupported();
    }
    cx.nops(ops, if arrive { 2 } else { 1 }, 2)?;
    Ok(Op::Bar {
        id: cx.src(&ops[0], Ty::U32)?,
        count: if ops.len() > 1 {
            Some(cx.src(&ops[1], Ty::U32)?)
        } else {
            None
        },
        arrive,
    })
}
