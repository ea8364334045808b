//! Decoding of the warp-collective tensor-core instructions `mma.sync` and
//! `ldmatrix.sync` (shape / type validation and fragment register counts).

use super::ast::*;
use super::decode::{Ctx, Mods};
use super::error::PtxError;
use super::parser::Operand;

pub fn mma(cx: &Ctx, mut m: Mods, ops: &[Operand]) -> Result<Op, PtxError> {
    m.take("sync");
    m.take("aligned");
    let shape = m.take_any(&["m16n8k16", "m16n8k8", "m16n8k32"]);
    if !(m.take("row") && m.take("col")) {
        return cx.unsupported_why("mma supports .row.col layouts only");
    }
    let tys = m.types();
    m.finish(cx)?;
    let [dty, aty, bty, cty] = tys.as_slice() else {
        return cx.err("mma needs .dtype.atype.btype.ctype");
    };
    let kind = match (shape, *dty, *aty, *bty, *cty) {
        (Some("m16n8k16"), Ty::F32, a @ (Ty::BF16 | Ty::F16), b, Ty::F32) if a == b => {
            MmaKind::F32Acc { k: 16, a }
        }
        (Some("m16n8k8"), Ty::F32, a @ (Ty::BF16 | Ty::F16), b, Ty::F32) if a == b => {
            MmaKind::F32Acc { k: 8, a }
        }
        (Some("m16n8k16"), Ty::F16, Ty::F16, Ty::F16, Ty::F16) => MmaKind::F16Acc { k: 16 },
        (Some("m16n8k8"), Ty::F16, Ty::F16, Ty::F16, Ty::F16) => MmaKind::F16Acc { k: 8 },
        (
            Some("m16n8k32"),
            Ty::F32,
            a @ (Ty::E4m3 | Ty::E5m2),
            b @ (Ty::E4m3 | Ty::E5m2),
            Ty::F32,
        ) => MmaKind::Fp8 { a, b },
        (Some("m16n8k8"), Ty::F32, Ty::TF32, Ty::TF32, Ty::F32) => MmaKind::Tf32,
        _ => return cx.unsupported_why("mma shape/type combination"),
    };
    let (nd, na, nb) = match kind {
        MmaKind::F32Acc { k: 16, .. } => (4, 4, 2),
        MmaKind::F32Acc { .. } => (4, 2, 1),
        MmaKind::F16Acc { k: 16 } => (2, 4, 2),
        MmaKind::F16Acc { .. } => (2, 2, 1),
        MmaKind::Fp8 { .. } | MmaKind::Tf32 => (4, 4, 2),
    };
    cx.nops(ops, 4, 4)?;
    let d = cx.dsts(&ops[0])?;
    let a = cx.srcs(&ops[1], Ty::B32)?;
    let b = cx.srcs(&ops[2], Ty::B32)?;
    let c = cx.srcs(&ops[3], Ty::B32)?;
    if d.len() != nd || a.len() != na || b.len() != nb || c.len() != nd {
        return cx.err(format!(
            "fragment register counts must be d:{nd} a:{na} b:{nb} c:{nd}, found d:{} a:{} b:{} c:{}",
            d.len(),
            a.len(),
            b.len(),
            c.len()
        ));
    }
    Ok(Op::Mma(Box::new(MmaOp { kind, d, a, b, c })))
}

pub fn ldmatrix(cx: &Ctx, mut m: Mods, ops: &[Operand]) -> Result<Op, PtxError> {
    m.take("sync");
    m.take("aligned");
    if !m.take("m8n8") {
        return cx.unsupported_why("ldmatrix supports .m8n8 only");
    }
    let num = match m.take_any(&["x1", "x2", "x4"]) {
        Some("x1") => 1,
        Some("x2") => 2,
        Some("x4") => 4,
        _ => return cx.err("ldmatrix needs .x1, .x2 or .x4"),
    };
    let trans = m.take("trans");
    let space = m.space().unwrap_or(Space::Generic);
    if !matches!(space, Space::Shared | Space::Generic) {
        return cx.unsupported_why("ldmatrix reads shared memory only");
    }
    if !m.take("b16") {
        return cx.unsupported_why("ldmatrix supports .b16 only");
    }
    m.finish(cx)?;
    cx.nops(ops, 2, 2)?;
    let ds = cx.dsts(&ops[0])?;
    if ds.len() != num as usize {
        return cx.err(format!(
            "ldmatrix .x{num} needs {num} destination registers"
        ));
    }
    Ok(Op::Ldmatrix {
        num,
        trans,
        ds,
        addr: cx.addr(&ops[1], space)?,
        space,
    })
}
