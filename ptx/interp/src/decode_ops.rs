//! Per-opcode decoding: maps an opcode string with its modifiers and operands to the
//! compact `Op` enum. Anything outside the supported subset is rejected here with
//! `PtxError::Unsupported` (at parse time, never at run time).

use super::ast::*;
use super::decode::{Ctx, Mods, Sym};
use super::error::PtxError;
use super::parser::Operand;

type R = Result<Op, PtxError>;

pub fn decode(cx: &Ctx, ops: &[Operand]) -> R {
    let parts: Vec<&str> = cx.opcode.split('.').collect();
    let base = parts[0];
    let m = Mods::new(&parts[1..]);
    match base {
        "mov" => mov(cx, m, ops),
        "ld" | "ldu" => super::decode_mem::ld(cx, m, ops),
        "st" => super::decode_mem::st(cx, m, ops),
        "add" | "sub" | "mul" | "mad" | "fma" | "div" | "min" | "max" | "abs" | "neg" | "rem"
        | "mul24" | "mad24" | "addc" | "subc" | "popc" | "clz" | "brev" | "bfind" | "not"
        | "cnot" | "and" | "or" | "xor" | "shl" | "shr" | "bfe" | "bfi" | "prmt" | "lop3"
        | "sad" | "sqrt" | "rsqrt" | "rcp" | "ex2" | "lg2" | "sin" | "cos" | "tanh"
        | "copysign" | "shf" | "dp4a" | "dp2a" => super::decode_arith::arith(cx, base, m, ops),
        "setp" => super::decode_arith::setp(cx, m, ops, false),
        "set" => super::decode_arith::setp(cx, m, ops, true),
        "selp" => {
            let mut m = m;
            let ty = one_type(cx, &mut m)?;
            m.finish(cx)?;
            cx.nops(ops, 4, 4)?;
            Ok(Op::Selp {
                d: cx.dst(&ops[0])?,
                a: cx.src(&ops[1], ty)?,
                b: cx.src(&ops[2], ty)?,
                c: cx.src(&ops[3], Ty::Pred)?,
            })
        }
        "slct" => {
            let mut m = m;
            m.take("ftz");
            let tys = m.types();
            m.finish(cx)?;
            cx.nops(ops, 4, 4)?;
            if tys.len() != 2 {
                return cx.err("slct needs .dtype.stype");
            }
            Ok(Op::Slct {
                float: tys[1] == Ty::F32,
                d: cx.dst(&ops[0])?,
                a: cx.src(&ops[1], tys[0])?,
                b: cx.src(&ops[2], tys[0])?,
                c: cx.src(&ops[3], tys[1])?,
            })
        }
        "testp" => {
            let mut m = m;
            let op = match m.take_any(&[
                "finite",
                "infinite",
                "number",
                "notanumber",
                "normal",
                "subnormal",
            ]) {
                Some("finite") => 0,
                Some("infinite") => 1,
                Some("number") => 2,
                Some("notanumber") => 3,
                Some("normal") => 4,
                Some(_) => 5,
                None => return cx.unsupported(),
            };
            let ty = one_type(cx, &mut m)?;
            m.finish(cx)?;
            cx.nops(ops, 2, 2)?;
            Ok(Op::Testp {
                op,
                ty,
                d: cx.dst(&ops[0])?,
                a: cx.src(&ops[1], ty)?,
            })
        }
        "cvt" => super::decode_arith::cvt(cx, m, ops),
        "cvta" => {
            let mut m = m;
            let to = m.take("to");
            let space = m
                .space()
                .ok_or_else(|| PtxError::unsupported(cx.line, cx.opcode))?;
            let ty = one_type(cx, &mut m)?;
            m.finish(cx)?;
            cx.nops(ops, 2, 2)?;
            let d = cx.dst(&ops[0])?;
            if let Operand::Name(n) = &ops[1] {
                if let Some(Sym::Global(var)) = cx.syms.get(n) {
                    return Ok(Op::MovGlobalVar { d, var: *var });
                }
            }
            Ok(Op::Cvta {
                to,
                space,
                d,
                a: cx.src(&ops[1], ty)?,
            })
        }
        "isspacep" => {
            let mut m = m;
            let space = m
                .space()
                .ok_or_else(|| PtxError::unsupported(cx.line, cx.opcode))?;
            m.finish(cx)?;
            cx.nops(ops, 2, 2)?;
            Ok(Op::Isspacep {
                space,
                d: cx.dst(&ops[0])?,
                a: cx.src(&ops[1], Ty::U64)?,
            })
        }
        "atom" | "red" => super::decode_mem::atom(cx, base == "red", m, ops),
        "cp" => super::decode_mem::cp_async(cx, m, ops),
        "bar" | "barrier" => super::decode_mem::bar(cx, m, ops),
        "membar" | "fence" | "nanosleep" | "pmevent" | "prefetch" | "prefetchu"
        | "applypriority" | "griddepcontrol" | "discard" | "nop" => Ok(Op::Nop),
        "createpolicy" => {
            cx.nops(ops, 1, 4)?;
            Ok(Op::Mov {
                d: cx.dst(&ops[0])?,
                a: Src::Imm(0),
            })
        }
        "bra" => {
            let mut m = m;
            m.take("uni");
            m.finish(cx)?;
            cx.nops(ops, 1, 1)?;
            Ok(Op::Bra {
                target: cx.label(&ops[0])?,
            })
        }
        "ret" | "exit" => {
            let mut m = m;
            m.take("uni");
            m.finish(cx)?;
            Ok(Op::Exit)
        }
        "trap" => Ok(Op::Trap),
        "shfl" => shfl(cx, m, ops),
        "vote" => vote(cx, m, ops),
        "redux" => {
            let mut m = m;
            m.take("sync");
            let op = match m.take_any(&["add", "min", "max", "and", "or", "xor"]) {
                Some("add") => ReduxOp::Add,
                Some("min") => ReduxOp::Min,
                Some("max") => ReduxOp::Max,
                Some("and") => ReduxOp::And,
                Some("or") => ReduxOp::Or,
                Some("xor") => ReduxOp::Xor,
                _ => return cx.unsupported(),
            };
            let ty = one_type(cx, &mut m)?;
            m.finish(cx)?;
            if !matches!(ty, Ty::U32 | Ty::S32 | Ty::B32) {
                return cx.unsupported_why("redux.sync supports 32-bit integers only");
            }
            cx.nops(ops, 3, 3)?;
            Ok(Op::Redux {
                op,
                signed: ty == Ty::S32,
                d: cx.dst(&ops[0])?,
                a: cx.src(&ops[1], ty)?,
                mask: cx.src(&ops[2], Ty::B32)?,
            })
        }
        "match" => {
            let mut m = m;
            m.take("sync");
            let all = match m.take_any(&["any", "all"]) {
                Some("all") => true,
                Some(_) => false,
                None => return cx.unsupported(),
            };
            let ty = one_type(cx, &mut m)?;
            m.finish(cx)?;
            cx.nops(ops, 3, 3)?;
            let (d, p) = dst_pair(cx, &ops[0])?;
            Ok(Op::Match {
                all,
                ty,
                d,
                p,
                a: cx.src(&ops[1], ty)?,
                mask: cx.src(&ops[2], Ty::B32)?,
            })
        }
        "activemask" => {
            cx.nops(ops, 1, 1)?;
            Ok(Op::Activemask {
                d: cx.dst(&ops[0])?,
            })
        }
        "mma" => super::decode_mma::mma(cx, m, ops),
        "ldmatrix" => super::decode_mma::ldmatrix(cx, m, ops),
        _ => cx.unsupported(),
    }
}

pub fn one_type(cx: &Ctx, m: &mut Mods) -> Result<Ty, PtxError> {
    let t = m.types();
    if t.len() != 1 {
        return cx.err("expected exactly one type modifier");
    }
    Ok(t[0])
}

pub fn dst_pair(cx: &Ctx, op: &Operand) -> Result<(Reg, Reg), PtxError> {
    match op {
        Operand::PredPair(a, b) => Ok((
            cx.dst(&Operand::Name(a.clone()))?,
            cx.dst(&Operand::Name(b.clone()))?,
        )),
        o => Ok((cx.dst(o)?, SINK)),
    }
}

fn width_ty(bits: u32) -> Ty {
    match bits {
        8 => Ty::B8,
        16 => Ty::B16,
        32 => Ty::B32,
        _ => Ty::B64,
    }
}

fn mov(cx: &Ctx, mut m: Mods, ops: &[Operand]) -> R {
    let ty = one_type(cx, &mut m)?;
    m.finish(cx)?;
    cx.nops(ops, 2, 2)?;
    match (&ops[0], &ops[1]) {
        (Operand::Vec(ds), a) => {
            let n = ds.len() as u32;
            if n < 2 || ty.bits() % n != 0 {
                return cx.err("bad vector unpack");
            }
            Ok(Op::Unpack {
                ds: cx.dsts(&ops[0])?,
                a: cx.src(a, ty)?,
                part_bits: ty.bits() / n,
            })
        }
        (d, Operand::Vec(parts)) => {
            let n = parts.len() as u32;
            if n < 2 || ty.bits() % n != 0 {
                return cx.err("bad vector pack");
            }
            let pb = ty.bits() / n;
            Ok(Op::Pack {
                d: cx.dst(d)?,
                parts: cx.srcs(&ops[1], width_ty(pb))?,
                part_bits: pb,
            })
        }
        (d, Operand::Name(n)) if n.starts_with("%clock") || n.starts_with("%globaltimer") => {
            Ok(Op::Clock { d: cx.dst(d)? })
        }
        (d, Operand::Name(n)) if matches!(cx.syms.get(n), Some(Sym::Global(_))) => {
            let Some(Sym::Global(var)) = cx.syms.get(n) else {
                return cx.unsupported();
            };
            Ok(Op::MovGlobalVar {
                d: cx.dst(d)?,
                var: *var,
            })
        }
        (d, a) => Ok(Op::Mov {
            d: cx.dst(d)?,
            a: cx.src(a, ty)?,
        }),
    }
}

fn shfl(cx: &Ctx, mut m: Mods, ops: &[Operand]) -> R {
    let sync = m.take("sync");
    let mode = match m.take_any(&["up", "down", "bfly", "idx"]) {
        Some("up") => ShflMode::Up,
        Some("down") => ShflMode::Down,
        Some("bfly") => ShflMode::Bfly,
        Some(_) => ShflMode::Idx,
        None => return cx.unsupported(),
    };
    let ty = one_type(cx, &mut m)?;
    m.finish(cx)?;
    if ty != Ty::B32 {
        return cx.unsupported_why("shfl supports .b32 only");
    }
    let n = if sync { 5 } else { 4 };
    cx.nops(ops, n, n)?;
    let (d, p) = dst_pair(cx, &ops[0])?;
    Ok(Op::Shfl {
        mode,
        d,
        p,
        a: cx.src(&ops[1], Ty::B32)?,
        b: cx.src(&ops[2], Ty::B32)?,
        c: cx.src(&ops[3], Ty::B32)?,
        mask: if sync {
            cx.src(&ops[4], Ty::B32)?
        } else {
            Src::Imm(0xFFFF_FFFF)
        },
    })
}

fn vote(cx: &Ctx, mut m: Mods, ops: &[Operand]) -> R {
    let sync = m.take("sync");
    let mode = match m.take_any(&["all", "any", "uni", "ballot"]) {
        Some("all") => VoteMode::All,
        Some("any") => VoteMode::Any,
        Some("uni") => VoteMode::Uni,
        Some(_) => VoteMode::Ballot,
        None => return cx.unsupported(),
    };
    let _ty = one_type(cx, &mut m)?;
    m.finish(cx)?;
    let n = if sync { 3 } else { 2 };
    cx.nops(ops, n, n)?;
    let (a, neg) = cx.pred(&ops[1])?;
    Ok(Op::Vote {
        mode,
        d: cx.dst(&ops[0])?,
        a,
        neg,
        mask: if sync {
            cx.src(&ops[2], Ty::B32)?
        } else {
            Src::Imm(0xFFFF_FFFF)
        },
    })
}
