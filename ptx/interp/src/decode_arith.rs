//! Decoding of arithmetic instructions: integer / bitwise ops (incl. `mul.wide`,
//! `mad`, `bfe`/`bfi`/`prmt`/`lop3`/`shf`/`dp4a`), floating-point ops with rounding /
//! `.ftz` / `.sat` modifiers, `setp`/`set` comparisons and `cvt` conversions.

use super::ast::*;
use super::decode::{Ctx, Mods};
use super::decode_ops::{dst_pair, one_type};
use super::error::PtxError;
use super::parser::Operand;

type R = Result<Op, PtxError>;

fn float_kind(ty: Ty) -> Option<FKind> {
    Some(match ty {
        Ty::F32 => FKind::F32,
        Ty::F64 => FKind::F64,
        Ty::F16 => FKind::F16,
        Ty::BF16 => FKind::BF16,
        Ty::F16x2 => FKind::F16x2,
        Ty::BF16x2 => FKind::BF16x2,
        _ => return None,
    })
}

pub fn arith(cx: &Ctx, base: &str, mut m: Mods, ops: &[Operand]) -> R {
    if base == "shf" {
        let left = m.take("l");
        if !left && !m.take("r") {
            return cx.unsupported();
        }
        let clamp = m.take("clamp");
        if !clamp && !m.take("wrap") {
            return cx.unsupported();
        }
        let ty = one_type(cx, &mut m)?;
        m.finish(cx)?;
        cx.nops(ops, 4, 4)?;
        let op = match (left, clamp) {
            (true, false) => IntOp::ShfL,
            (false, false) => IntOp::ShfR,
            (true, true) => IntOp::ShfLClamp,
            (false, true) => IntOp::ShfRClamp,
        };
        return int_op(cx, op, ty, ops, &[ty, ty, Ty::U32]);
    }
    if base == "dp4a" || base == "dp2a" {
        let hi = base == "dp2a" && m.take("hi");
        let lo = base == "dp2a" && m.take("lo");
        let t = m.types();
        m.finish(cx)?;
        if t.len() != 2 || (base == "dp2a" && hi == lo) {
            return cx.err("expected .atype.btype");
        }
        let (sa, sb) = (t[0] == Ty::S32, t[1] == Ty::S32);
        let op = match (base, hi) {
            ("dp4a", _) => IntOp::Dp4a(sa, sb),
            (_, true) => IntOp::Dp2aHi(sa, sb),
            _ => IntOp::Dp2aLo(sa, sb),
        };
        cx.nops(ops, 4, 4)?;
        let rt = if sa || sb { Ty::S32 } else { Ty::U32 };
        return int_op(cx, op, rt, ops, &[Ty::B32, Ty::B32, rt]);
    }
    if base == "prmt" {
        let mode = match m.take_any(&["f4e", "b4e", "rc8", "ecl", "ecr", "rc16"]) {
            None => 0,
            Some("f4e") => 1,
            Some("b4e") => 2,
            Some("rc8") => 3,
            Some("ecl") => 4,
            Some("ecr") => 5,
            Some(_) => 6,
        };
        let ty = one_type(cx, &mut m)?;
        m.finish(cx)?;
        cx.nops(ops, 4, 4)?;
        return int_op(cx, IntOp::Prmt(mode), ty, ops, &[Ty::B32, Ty::B32, Ty::B32]);
    }
    let ty = match m.types().as_slice() {
        [t] => *t,
        _ => return cx.err("expected exactly one type modifier"),
    };
    if let Some(kind) = float_kind(ty) {
        return float_arith(cx, base, m, kind, ty, ops);
    }
    let pred_logic = ty == Ty::Pred && matches!(base, "and" | "or" | "xor" | "not");
    if !ty.is_int() && !pred_logic {
        return cx.unsupported_why("type not supported for this opcode");
    }
    let sat = m.take("sat");
    let cc = m.take("cc");
    let (op, srcs): (IntOp, &[Ty]) = match base {
        "add" if cc => (IntOp::AddCc, &[ty, ty]),
        "sub" if cc => (IntOp::SubCc, &[ty, ty]),
        "addc" => (if cc { IntOp::AddCCc } else { IntOp::AddC }, &[ty, ty]),
        "subc" => (if cc { IntOp::SubCCc } else { IntOp::SubC }, &[ty, ty]),
        "add" if sat => (IntOp::AddSat, &[ty, ty]),
        "sub" if sat => (IntOp::SubSat, &[ty, ty]),
        "add" => (IntOp::Add, &[ty, ty]),
        "sub" => (IntOp::Sub, &[ty, ty]),
        "mul" | "mad" | "mul24" | "mad24" => {
            let which = m.take_any(&["lo", "hi", "wide"]);
            let mad = base.starts_with("mad");
            let op = match (base, which) {
                ("mul", Some("lo")) => IntOp::MulLo,
                ("mul", Some("hi")) => IntOp::MulHi,
                ("mul", Some("wide")) => IntOp::MulWide,
                ("mad", Some("lo")) => IntOp::MadLo,
                ("mad", Some("hi")) => IntOp::MadHi,
                ("mad", Some("wide")) => IntOp::MadWide,
                ("mul24", Some("lo")) => IntOp::Mul24Lo,
                ("mul24", Some("hi")) => IntOp::Mul24Hi,
                ("mad24", Some("lo")) => IntOp::Mad24Lo,
                ("mad24", Some("hi")) => IntOp::Mad24Hi,
                _ => return cx.err("integer mul/mad needs .lo, .hi or .wide"),
            };
            if mad {
                let cty = if matches!(op, IntOp::MadWide) {
                    wide_ty(ty)
                } else {
                    ty
                };
                (
                    op,
                    match cty {
                        Ty::S64 => &[ty, ty, Ty::S64],
                        Ty::U64 => &[ty, ty, Ty::U64],
                        Ty::S32 => &[ty, ty, Ty::S32],
                        Ty::U32 => &[ty, ty, Ty::U32],
                        _ => &[ty, ty, Ty::B64],
                    },
                )
            } else {
                (op, &[ty, ty])
            }
        }
        "div" => (IntOp::Div, &[ty, ty]),
        "rem" => (IntOp::Rem, &[ty, ty]),
        "abs" => (IntOp::Abs, &[ty]),
        "neg" => (IntOp::Neg, &[ty]),
        "min" => (IntOp::Min, &[ty, ty]),
        "max" => (IntOp::Max, &[ty, ty]),
        "and" => (IntOp::And, &[ty, ty]),
        "or" => (IntOp::Or, &[ty, ty]),
        "xor" => (IntOp::Xor, &[ty, ty]),
        "not" => (IntOp::Not, &[ty]),
        "cnot" => (IntOp::CNot, &[ty]),
        "shl" => (IntOp::Shl, &[ty, Ty::U32]),
        "shr" => (IntOp::Shr, &[ty, Ty::U32]),
        "popc" => (IntOp::Popc, &[ty]),
        "clz" => (IntOp::Clz, &[ty]),
        "brev" => (IntOp::Brev, &[ty]),
        "bfind" => (
            if m.take("shiftamt") {
                IntOp::BfindShift
            } else {
                IntOp::Bfind
            },
            &[ty],
        ),
        "bfe" => (IntOp::Bfe, &[ty, Ty::U32, Ty::U32]),
        "bfi" => (IntOp::Bfi, &[ty, ty, Ty::U32, Ty::U32]),
        "lop3" => (IntOp::Lop3, &[ty, ty, ty, Ty::B32]),
        "sad" => (IntOp::Sad, &[ty, ty, ty]),
        _ => return cx.unsupported_why("not an integer operation"),
    };
    m.finish(cx)?;
    if sat && ty != Ty::S32 {
        return cx.unsupported_why(".sat integer arithmetic is only defined for .s32");
    }
    cx.nops(ops, srcs.len() + 1, srcs.len() + 1)?;
    int_op(cx, op, ty, ops, srcs)
}

fn wide_ty(ty: Ty) -> Ty {
    match ty {
        Ty::S16 => Ty::S32,
        Ty::U16 => Ty::U32,
        Ty::S32 => Ty::S64,
        _ => Ty::U64,
    }
}

fn int_op(cx: &Ctx, op: IntOp, ty: Ty, ops: &[Operand], srcs: &[Ty]) -> R {
    let s = |i: usize| -> Result<Src, PtxError> {
        match srcs.get(i) {
            Some(t) => cx.src(&ops[i + 1], *t),
            None => Ok(Src::Imm(0)),
        }
    };
    Ok(Op::Int {
        op,
        ty,
        d: cx.dst(&ops[0])?,
        a: s(0)?,
        b: s(1)?,
        c: s(2)?,
        e: s(3)?,
    })
}

fn float_arith(cx: &Ctx, base: &str, mut m: Mods, kind: FKind, ty: Ty, ops: &[Operand]) -> R {
    let rnd = m.rnd();
    let ftz = m.take("ftz");
    let sat = m.take("sat");
    let relu = m.take("relu");
    let approx = m.take("approx");
    let full = m.take("full");
    let nan = m.take("NaN");
    let (op, n) = match base {
        "add" => (FOp::Add, 2),
        "sub" => (FOp::Sub, 2),
        "mul" => (FOp::Mul, 2),
        "fma" | "mad" => (FOp::Fma, 3),
        "div" => (FOp::Div, 2),
        "min" => (if nan { FOp::MinNaN } else { FOp::Min }, 2),
        "max" => (if nan { FOp::MaxNaN } else { FOp::Max }, 2),
        "abs" => (FOp::Abs, 1),
        "neg" => (FOp::Neg, 1),
        "sqrt" => (FOp::Sqrt, 1),
        "rsqrt" => (FOp::Rsqrt, 1),
        "rcp" => (FOp::Rcp, 1),
        "ex2" => (FOp::Ex2, 1),
        "lg2" => (FOp::Lg2, 1),
        "sin" => (FOp::Sin, 1),
        "cos" => (FOp::Cos, 1),
        "tanh" => (FOp::Tanh, 1),
        "copysign" => (FOp::Copysign, 2),
        _ => return cx.unsupported_why("not a floating-point operation"),
    };
    m.finish(cx)?;
    let _ = (approx, full);
    let rnd = rnd.unwrap_or(Rnd::Rn);
    if rnd == Rnd::Rna {
        return cx.unsupported_why(".rna arithmetic");
    }
    if rnd != Rnd::Rn {
        let directed_ok = match kind {
            FKind::F32 => matches!(
                op,
                FOp::Add | FOp::Sub | FOp::Mul | FOp::Fma | FOp::Div | FOp::Sqrt | FOp::Rcp
            ),
            FKind::F64 => matches!(
                op,
                FOp::Add | FOp::Sub | FOp::Mul | FOp::Div | FOp::Sqrt | FOp::Rcp
            ),
            _ => matches!(op, FOp::Add | FOp::Sub | FOp::Mul | FOp::Fma),
        };
        if !directed_ok {
            return cx.unsupported_why("directed rounding for this operation");
        }
    }
    cx.nops(ops, n + 1, n + 1)?;
    let s = |i: usize| -> Result<Src, PtxError> {
        if i < n {
            cx.src(&ops[i + 1], ty)
        } else {
            Ok(Src::Imm(0))
        }
    };
    Ok(Op::Float {
        op,
        kind,
        m: FMods {
            rnd,
            ftz,
            sat,
            relu,
        },
        d: cx.dst(&ops[0])?,
        a: s(0)?,
        b: s(1)?,
        c: s(2)?,
    })
}

pub fn setp(cx: &Ctx, mut m: Mods, ops: &[Operand], is_set: bool) -> R {
    let cmp = match m.take_any(&[
        "eq", "ne", "lt", "le", "gt", "ge", "lo", "ls", "hi", "hs", "equ", "neu", "ltu", "leu",
        "gtu", "geu", "num", "nan",
    ]) {
        Some("eq") => Cmp::Eq,
        Some("ne") => Cmp::Ne,
        Some("lt") => Cmp::Lt,
        Some("le") => Cmp::Le,
        Some("gt") => Cmp::Gt,
        Some("ge") => Cmp::Ge,
        Some("lo") => Cmp::Lo,
        Some("ls") => Cmp::Ls,
        Some("hi") => Cmp::Hi,
        Some("hs") => Cmp::Hs,
        Some("equ") => Cmp::Equ,
        Some("neu") => Cmp::Neu,
        Some("ltu") => Cmp::Ltu,
        Some("leu") => Cmp::Leu,
        Some("gtu") => Cmp::Gtu,
        Some("geu") => Cmp::Geu,
        Some("num") => Cmp::Num,
        Some("nan") => Cmp::Nan,
        _ => return cx.err("missing comparison operator"),
    };
    let bop = match m.take_any(&["and", "or", "xor"]) {
        Some("and") => Some(BoolOp::And),
        Some("or") => Some(BoolOp::Or),
        Some("xor") => Some(BoolOp::Xor),
        _ => None,
    };
    let ftz = m.take("ftz");
    let tys = m.types();
    m.finish(cx)?;
    let (dty, sty) = match (is_set, tys.as_slice()) {
        (false, [t]) => (Ty::Pred, *t),
        (true, [d, s]) => (*d, *s),
        _ => return cx.err("wrong number of type modifiers"),
    };
    if matches!(sty, Ty::F16x2 | Ty::BF16x2) {
        return cx.unsupported_why("packed comparisons");
    }
    let nsrc = if bop.is_some() { 3 } else { 2 };
    cx.nops(ops, nsrc + 1, nsrc + 1)?;
    let bop = match bop {
        Some(b) => {
            let (c, neg) = cx.pred(&ops[3])?;
            Some((b, c, neg))
        }
        None => None,
    };
    let a = cx.src(&ops[1], sty)?;
    let b = cx.src(&ops[2], sty)?;
    if is_set {
        return Ok(Op::Set {
            cmp,
            dty,
            sty,
            ftz,
            d: cx.dst(&ops[0])?,
            a,
            b,
            bop,
        });
    }
    let (p, q) = dst_pair(cx, &ops[0])?;
    Ok(Op::Setp {
        cmp,
        ty: sty,
        ftz,
        p,
        q,
        a,
        b,
        bop,
    })
}

pub fn cvt(cx: &Ctx, mut m: Mods, ops: &[Operand]) -> R {
    let rnd = m.rnd();
    let irnd = m.irnd();
    let ftz = m.take("ftz");
    let sat = m.take("sat");
    let relu = m.take("relu");
    let satfinite = m.take("satfinite");
    let tys = m.types();
    m.finish(cx)?;
    let [dty, sty] = tys.as_slice() else {
        return cx.err("cvt needs .dtype.stype");
    };
    let (dty, sty) = (*dty, *sty);
    let packed = matches!(dty, Ty::F16x2 | Ty::BF16x2 | Ty::E4m3x2 | Ty::E5m2x2);
    if packed && sty == Ty::F32 {
        if rnd != Some(Rnd::Rn) {
            return cx.unsupported_why("packed cvt supports .rn only");
        }
        cx.nops(ops, 3, 3)?;
        return Ok(Op::CvtPack {
            dty,
            relu,
            satfinite,
            d: cx.dst(&ops[0])?,
            a: cx.src(&ops[1], Ty::F32)?,
            b: cx.src(&ops[2], Ty::F32)?,
        });
    }
    if dty == Ty::F16x2 && matches!(sty, Ty::E4m3x2 | Ty::E5m2x2) {
        cx.nops(ops, 2, 2)?;
        return Ok(Op::CvtUnpack8 {
            sty,
            relu,
            d: cx.dst(&ops[0])?,
            a: cx.src(&ops[1], Ty::B16)?,
        });
    }
    if packed
        || matches!(
            sty,
            Ty::F16x2 | Ty::BF16x2 | Ty::E4m3x2 | Ty::E5m2x2 | Ty::Pred
        )
        || dty == Ty::Pred
    {
        return cx.unsupported_why("conversion between these types");
    }
    if dty == Ty::TF32 && (sty != Ty::F32 || rnd != Some(Rnd::Rna)) {
        return cx.unsupported_why("tf32 conversion supports cvt.rna.tf32.f32 only");
    }
    if matches!(dty, Ty::E4m3 | Ty::E5m2) || matches!(sty, Ty::E4m3 | Ty::E5m2) {
        return cx.unsupported_why("scalar fp8 conversion (use the x2 forms)");
    }
    cx.nops(ops, 2, 2)?;
    Ok(Op::Cvt {
        spec: CvtSpec {
            dty,
            sty,
            rnd,
            irnd,
            ftz,
            sat,
            relu,
            satfinite,
        },
        d: cx.dst(&ops[0])?,
        a: cx.src(&ops[1], sty)?,
    })
}
