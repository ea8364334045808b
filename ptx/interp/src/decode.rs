//! Kernel assembly: lays out params, shared / local / const storage, assigns register
//! slots, resolves labels, and provides the operand / modifier helpers used by
//! `decode_ops.rs` to turn each raw instruction into a pre-decoded `Inst`.

use std::collections::HashMap;

use super::ast::*;
use super::convert;
use super::error::PtxError;
use super::parser::{Lit, Operand, RawFunc, Stmt, VarDecl};

#[derive(Debug, Clone, Copy)]
pub enum Sym {
    Shared(u64),
    Local(u64),
    Param(u64),
    Const(u64),
    Global(u32),
}

/// Module-wide symbols shared by all kernels.
pub struct ModuleCtx {
    pub shared: Vec<VarDecl>,
    pub consts: HashMap<String, u64>,
    pub globals: HashMap<String, u32>,
}

/// Decoding context of one instruction.
pub struct Ctx<'a> {
    pub regs: &'a HashMap<String, (Reg, Ty)>,
    pub syms: &'a HashMap<String, Sym>,
    pub labels: &'a HashMap<String, u32>,
    pub line: u32,
    pub opcode: &'a str,
}

impl Ctx<'_> {
    pub fn unsupported<T>(&self) -> Result<T, PtxError> {
        Err(PtxError::unsupported(self.line, self.opcode))
    }
    pub fn unsupported_why<T>(&self, why: &str) -> Result<T, PtxError> {
        Err(PtxError::unsupported(
            self.line,
            format!("{} ({why})", self.opcode),
        ))
    }
    pub fn err<T>(&self, msg: impl std::fmt::Display) -> Result<T, PtxError> {
        Err(PtxError::parse(
            self.line,
            format!("`{}`: {msg}", self.opcode),
        ))
    }

    pub fn nops(&self, ops: &[Operand], lo: usize, hi: usize) -> Result<(), PtxError> {
        if ops.len() < lo || ops.len() > hi {
            return self.err(format!(
                "expected {lo}..={hi} operands, found {}",
                ops.len()
            ));
        }
        Ok(())
    }

    /// A destination register (or `_`).
    pub fn dst(&self, op: &Operand) -> Result<Reg, PtxError> {
        match op {
            Operand::Name(n) if n == "_" => Ok(SINK),
            Operand::Name(n) => match self.regs.get(n) {
                Some(&(r, _)) => Ok(r),
                None if sreg::lookup(n).is_some() => {
                    self.err(format!("cannot write special register {n}"))
                }
                None => self.err(format!("undeclared register {n}")),
            },
            _ => self.err("destination must be a register"),
        }
    }

    pub fn dsts(&self, op: &Operand) -> Result<Vec<Reg>, PtxError> {
        match op {
            Operand::Vec(v) => v.iter().map(|o| self.dst(o)).collect(),
            o => Ok(vec![self.dst(o)?]),
        }
    }

    pub fn srcs(&self, op: &Operand, ty: Ty) -> Result<Vec<Src>, PtxError> {
        match op {
            Operand::Vec(v) => v.iter().map(|o| self.src(o, ty)).collect(),
            o => Ok(vec![self.src(o, ty)?]),
        }
    }

    /// Declared type of a register operand, if it is one.
    pub fn reg_ty(&self, op: &Operand) -> Option<Ty> {
        match op {
            Operand::Name(n) => self.regs.get(n).map(|&(_, t)| t),
            _ => None,
        }
    }

    fn sym_value(&self, s: Sym) -> Result<u64, PtxError> {
        match s {
            Sym::Shared(o) | Sym::Local(o) | Sym::Param(o) | Sym::Const(o) => Ok(o),
            Sym::Global(_) => self.err("module .global variable used as a plain operand"),
        }
    }

    /// A source operand interpreted with instruction type `ty`.
    pub fn src(&self, op: &Operand, ty: Ty) -> Result<Src, PtxError> {
        match op {
            Operand::Name(n) => {
                if let Some(&(r, _)) = self.regs.get(n) {
                    return Ok(Src::Reg(r));
                }
                if let Some(s) = sreg::lookup(n) {
                    return Ok(Src::Reg(s));
                }
                if n == "WARP_SZ" {
                    return Ok(Src::Imm(32));
                }
                if let Some(&s) = self.syms.get(n) {
                    return Ok(Src::Imm(self.sym_value(s)?));
                }
                if n.starts_with("%clock") || n.starts_with("%globaltimer") {
                    return self.unsupported_why("clock registers are only supported in mov");
                }
                if n.starts_with('%') {
                    return self.err(format!("undeclared register {n}"));
                }
                self.err(format!("unknown symbol {n}"))
            }
            Operand::SymOff(n, off) => match self.syms.get(n) {
                Some(&s) => Ok(Src::Imm(self.sym_value(s)?.wrapping_add(*off as u64))),
                None => self.err(format!("unknown symbol {n}")),
            },
            Operand::Imm(l) => Ok(Src::Imm(lit_bits(l, ty))),
            Operand::NotPred(_) => self.err("`!` only allowed on predicate operands"),
            _ => self.err("unexpected operand kind"),
        }
    }

    /// A predicate source with optional negation.
    pub fn pred(&self, op: &Operand) -> Result<(Src, bool), PtxError> {
        match op {
            Operand::NotPred(n) => Ok((self.src(&Operand::Name(n.clone()), Ty::Pred)?, true)),
            o => Ok((self.src(o, Ty::Pred)?, false)),
        }
    }

    pub fn label(&self, op: &Operand) -> Result<u32, PtxError> {
        match op {
            Operand::Name(n) => match self.labels.get(n) {
                Some(&i) => Ok(i),
                None => self.err(format!("unknown label {n}")),
            },
            _ => self.err("expected a label"),
        }
    }

    /// An address operand `[…]` for an access in `space`.
    pub fn addr(&self, op: &Operand, space: Space) -> Result<Addr, PtxError> {
        let (base, off) = match op {
            Operand::Addr { base, off } => (base, *off),
            _ => return self.err("expected an address operand `[...]`"),
        };
        let base = match base {
            None => AddrBase::Imm(0),
            Some(n) => {
                if let Some(&(r, _)) = self.regs.get(n) {
                    AddrBase::Reg(r)
                } else if let Some(&s) = self.syms.get(n) {
                    let generic = space == Space::Generic;
                    match s {
                        Sym::Global(i) => AddrBase::GlobalVar(i),
                        Sym::Shared(o) => {
                            AddrBase::Imm(if generic { o + SHARED_WINDOW } else { o })
                        }
                        Sym::Local(o) => AddrBase::Imm(if generic { o + LOCAL_WINDOW } else { o }),
                        Sym::Const(o) => AddrBase::Imm(if generic { o + CONST_WINDOW } else { o }),
                        Sym::Param(o) => AddrBase::Imm(if generic { o + PARAM_WINDOW } else { o }),
                    }
                } else {
                    return self.err(format!("unknown address base {n}"));
                }
            }
        };
        Ok(Addr { base, off })
    }
}

/// Convert a literal to the raw register bits of type `ty`.
pub fn lit_bits(l: &Lit, ty: Ty) -> u64 {
    let as_f64 = |l: &Lit| -> f64 {
        match *l {
            Lit::Int(v) => v as i64 as f64,
            Lit::F32(b) => f32::from_bits(b) as f64,
            Lit::F64(b) => f64::from_bits(b),
            Lit::Float(f) => f,
        }
    };
    match ty {
        Ty::F32 => match *l {
            Lit::F32(b) => b as u64,
            _ => (as_f64(l) as f32).to_bits() as u64,
        },
        Ty::F64 => match *l {
            Lit::F64(b) => b,
            _ => as_f64(l).to_bits(),
        },
        Ty::F16 | Ty::BF16 | Ty::F16x2 | Ty::BF16x2 => match *l {
            Lit::Int(v) => v & ty.mask(),
            _ => {
                let base = if matches!(ty, Ty::F16 | Ty::F16x2) {
                    Ty::F16
                } else {
                    Ty::BF16
                };
                convert::float_encode(as_f64(l), 0, base, Rnd::Rn, false)
            }
        },
        Ty::Pred => match *l {
            Lit::Int(v) => u64::from(v != 0),
            _ => u64::from(as_f64(l) != 0.0),
        },
        _ => match *l {
            Lit::Int(v) => v & ty.mask(),
            Lit::F32(b) => b as u64 & ty.mask(),
            Lit::F64(b) => b & ty.mask(),
            Lit::Float(f) => (f as i64 as u64) & ty.mask(),
        },
    }
}

/// Modifier list of an opcode (everything after the base name).
pub struct Mods<'a> {
    pub items: Vec<&'a str>,
}

impl<'a> Mods<'a> {
    pub fn new(mods: &[&'a str]) -> Self {
        Mods {
            items: mods.to_vec(),
        }
    }
    pub fn take(&mut self, s: &str) -> bool {
        if let Some(i) = self.items.iter().position(|m| *m == s) {
            self.items.remove(i);
            true
        } else {
            false
        }
    }
    pub fn take_any(&mut self, opts: &[&'static str]) -> Option<&'static str> {
        for (i, m) in self.items.iter().enumerate() {
            if let Some(o) = opts.iter().find(|o| **o == *m) {
                self.items.remove(i);
                return Some(o);
            }
        }
        None
    }
    pub fn types(&mut self) -> Vec<Ty> {
        let mut out = Vec::new();
        self.items.retain(|m| match Ty::parse(m) {
            Some(t) => {
                out.push(t);
                false
            }
            None => true,
        });
        out
    }
    pub fn space(&mut self) -> Option<Space> {
        let s = self.take_any(&[
            "global",
            "shared",
            "shared::cta",
            "local",
            "param",
            "param::entry",
            "param::func",
            "const",
        ])?;
        Some(match s {
            "global" => Space::Global,
            "shared" | "shared::cta" => Space::Shared,
            "local" => Space::Local,
            "param" | "param::entry" | "param::func" => Space::Param,
            _ => Space::Const,
        })
    }
    pub fn rnd(&mut self) -> Option<Rnd> {
        Some(match self.take_any(&["rn", "rz", "rm", "rp", "rna"])? {
            "rn" => Rnd::Rn,
            "rz" => Rnd::Rz,
            "rm" => Rnd::Rm,
            "rp" => Rnd::Rp,
            _ => Rnd::Rna,
        })
    }
    pub fn irnd(&mut self) -> Option<IRnd> {
        Some(match self.take_any(&["rni", "rzi", "rmi", "rpi"])? {
            "rni" => IRnd::Ni,
            "rzi" => IRnd::Zi,
            "rmi" => IRnd::Mi,
            _ => IRnd::Pi,
        })
    }
    pub fn vec(&mut self) -> u32 {
        match self.take_any(&["v2", "v4", "v8"]) {
            Some("v2") => 2,
            Some("v4") => 4,
            Some("v8") => 8,
            _ => 1,
        }
    }
    /// Drop cache / memory-ordering / scope qualifiers that do not change results here.
    pub fn ignore_memory_qualifiers(&mut self) {
        self.items.retain(|m| {
            !(matches!(
                *m,
                "nc" | "ca"
                    | "cg"
                    | "cs"
                    | "lu"
                    | "cv"
                    | "wb"
                    | "wt"
                    | "volatile"
                    | "relaxed"
                    | "acquire"
                    | "release"
                    | "acq_rel"
                    | "weak"
                    | "sc"
                    | "cta"
                    | "gpu"
                    | "sys"
                    | "mmio"
                    | "unified"
                    | "noftz"
            ) || m.starts_with("L1::")
                || m.starts_with("L2::"))
        });
    }
    /// Fails with `Unsupported` if any modifier was not consumed.
    pub fn finish(&self, cx: &Ctx) -> Result<(), PtxError> {
        if self.items.is_empty() {
            Ok(())
        } else {
            cx.unsupported_why(&format!("modifier .{}", self.items.join(".")))
        }
    }
}

/// Maximum `.local` bytes per thread (the CUDA limit).
const MAX_LOCAL: u64 = 512 * 1024;

fn align_up(x: u64, a: u64) -> u64 {
    let a = a.max(1);
    x.div_ceil(a) * a
}

/// Build a decoded kernel from a raw `.entry`.
pub fn build_kernel(f: &RawFunc, m: &ModuleCtx) -> Result<Kernel, PtxError> {
    let mut regs: HashMap<String, (Reg, Ty)> = HashMap::new();
    let mut reg_masks = vec![0xFFFF_FFFFu64; sreg::COUNT as usize];
    reg_masks[sreg::GRIDID as usize] = u64::MAX;
    reg_masks[sreg::CC as usize] = 1;
    for (name, ty, line) in &f.regs {
        if regs.contains_key(name) {
            continue; // redeclaration in a nested scope: share the slot
        }
        if sreg::lookup(name).is_some() {
            return Err(PtxError::parse(
                *line,
                format!("cannot redeclare special register {name}"),
            ));
        }
        let slot = reg_masks.len() as Reg;
        regs.insert(name.clone(), (slot, *ty));
        reg_masks.push(if *ty == Ty::Pred { 1 } else { ty.mask() });
    }

    let mut syms: HashMap<String, Sym> = HashMap::new();
    for (name, off) in &m.consts {
        syms.insert(name.clone(), Sym::Const(*off));
    }
    for (name, idx) in &m.globals {
        syms.insert(name.clone(), Sym::Global(*idx));
    }
    // Params.
    let mut params = Vec::new();
    let mut poff = 0u64;
    for p in &f.params {
        poff = align_up(poff, p.align as u64);
        params.push(Param {
            name: p.name.clone(),
            ty: p.ty,
            size: p.size,
            offset: poff as u32,
        });
        syms.insert(p.name.clone(), Sym::Param(poff));
        poff += p.size as u64;
    }
    // Shared (module-level then function-level), extern shared at the end.
    let mut soff = 0u64;
    let mut externs = Vec::new();
    let mut max_extern_align = 16u64;
    let mut local_off = 0u64;
    for v in m.shared.iter().chain(f.vars.iter()) {
        match v.space.as_str() {
            "shared" if v.unsized_array || v.size == 0 => {
                externs.push(v.name.clone());
                max_extern_align = max_extern_align.max(v.align as u64);
            }
            "shared" => {
                soff = align_up(soff, v.align as u64);
                syms.insert(v.name.clone(), Sym::Shared(soff));
                soff += v.size as u64;
            }
            "local" => {
                local_off = align_up(local_off, v.align as u64);
                syms.insert(v.name.clone(), Sym::Local(local_off));
                local_off += v.size as u64;
            }
            other => {
                return Err(PtxError::unsupported(
                    v.line,
                    format!(".{other} variable inside a function"),
                ))
            }
        }
    }
    if local_off > MAX_LOCAL {
        return Err(PtxError::parse(
            f.line,
            format!(
                "`{}` needs {local_off} bytes of .local memory per thread (max {MAX_LOCAL})",
                f.name
            ),
        ));
    }
    let dyn_base = align_up(soff, max_extern_align);
    for n in externs {
        syms.insert(n, Sym::Shared(dyn_base));
    }

    // Labels.
    let mut labels = HashMap::new();
    let mut n = 0u32;
    for s in &f.body {
        match s {
            Stmt::Label(l, line) => {
                if labels.insert(l.clone(), n).is_some() {
                    return Err(PtxError::parse(*line, format!("duplicate label {l}")));
                }
            }
            Stmt::Inst(_) => n += 1,
        }
    }

    let mut insts = Vec::with_capacity(n as usize + 1);
    let mut texts = Vec::with_capacity(n as usize + 1);
    for s in &f.body {
        let Stmt::Inst(ri) = s else { continue };
        let cx = Ctx {
            regs: &regs,
            syms: &syms,
            labels: &labels,
            line: ri.line,
            opcode: &ri.opcode,
        };
        let (guard, guard_neg) = match &ri.guard {
            None => (SINK, false),
            Some((p, neg)) => match regs.get(p) {
                Some(&(r, Ty::Pred)) => (r, *neg),
                Some(_) => return cx.err(format!("guard {p} is not a predicate")),
                None => return cx.err(format!("undeclared predicate {p}")),
            },
        };
        let op = super::decode_ops::decode(&cx, &ri.operands)?;
        insts.push(Inst {
            guard,
            guard_neg,
            op,
            line: ri.line,
        });
        texts.push(ri.opcode.clone());
    }
    // Falling off the end of a kernel exits.
    insts.push(Inst {
        guard: SINK,
        guard_neg: false,
        op: Op::Exit,
        line: f.line,
    });
    texts.push("<end of kernel>".into());

    Ok(Kernel {
        name: f.name.clone(),
        insts,
        texts,
        reg_masks,
        params,
        param_size: align_up(poff, 8) as u32,
        shared_static: dyn_base.min(u32::MAX as u64) as u32,
        local_size: align_up(local_off, 16).min(u32::MAX as u64) as u32,
        reqntid: f.reqntid,
        maxntid: f.maxntid,
    })
}
