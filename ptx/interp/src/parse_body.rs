//! Parsing of function bodies: `.reg` declarations (incl. `%r<N>` ranges), body-level
//! `.shared`/`.local` variables, labels, `{ }` scopes, guarded instructions and their
//! operands (registers, immediates, `[base+off]` addresses, `{…}` vectors, `!%p`,
//! `%p|%q`).

use super::ast::Ty;
use super::error::PtxError;
use super::lexer::Tok;
use super::parser::{parse_var_decl, Lit, Operand, RawFunc, RawInst, Stmt, P};

/// Upper bound on registers per function (keeps the per-warp register file bounded).
const MAX_REGS: u64 = 1 << 16;

pub(super) fn parse_body(p: &mut P, f: &mut RawFunc) -> Result<(), PtxError> {
    let mut depth = 1;
    loop {
        let line = p.line();
        let tok = match p.peek() {
            Some(t) => t,
            None => return p.err(format!("unterminated body of `{}`", f.name)),
        };
        match tok {
            Tok::Punct('}') => {
                p.i += 1;
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            }
            Tok::Punct('{') => {
                p.i += 1;
                depth += 1;
            }
            Tok::Dir(d) => {
                p.i += 1;
                match d.as_str() {
                    "reg" => parse_reg_decl(p, f)?,
                    "shared" | "local" | "param" | "const" | "global" => {
                        let decls = parse_var_decl(p, d, line)?;
                        f.vars.extend(decls);
                    }
                    "pragma" => p.skip_to_semicolon()?,
                    "loc" => {
                        // .loc file line col [, inlined_at …] — skip the rest of the source line.
                        while p.i < p.t.len() && p.t[p.i].line == line {
                            p.i += 1;
                        }
                    }
                    other => return Err(PtxError::unsupported(line, format!(".{other}"))),
                }
            }
            Tok::Ident(name) if p.peek_at(1) == Some(&Tok::Punct(':')) => {
                f.body.push(Stmt::Label(name.clone(), line));
                p.i += 2;
            }
            Tok::Punct('@') | Tok::Ident(_) => {
                let inst = parse_inst(p)?;
                f.body.push(Stmt::Inst(inst));
            }
            _ => return p.err(format!("unexpected {} in function body", p.describe())),
        }
    }
}

fn parse_reg_decl(p: &mut P, f: &mut RawFunc) -> Result<(), PtxError> {
    let line = p.line();
    let mut ty = None;
    while let Some(Tok::Dir(d)) = p.peek() {
        p.i += 1;
        match Ty::parse(d) {
            Some(t) => ty = Some(t),
            None => return Err(PtxError::unsupported(line, format!(".reg .{d}"))),
        }
    }
    let ty = match ty {
        Some(t) => t,
        None => return p.err(".reg without a type"),
    };
    loop {
        let name = p.ident()?;
        if p.eat_punct('<') {
            let n = p.int()?;
            p.expect_punct('>')?;
            if n + f.regs.len() as u64 > MAX_REGS {
                return p.err(format!("more than {MAX_REGS} registers declared"));
            }
            for k in 0..n {
                f.regs.push((format!("{name}{k}"), ty, line));
            }
        } else {
            if f.regs.len() as u64 >= MAX_REGS {
                return p.err(format!("more than {MAX_REGS} registers declared"));
            }
            f.regs.push((name, ty, line));
        }
        if !p.eat_punct(',') {
            break;
        }
    }
    p.expect_punct(';')
}

fn parse_inst(p: &mut P) -> Result<RawInst, PtxError> {
    let line = p.line();
    let mut guard = None;
    if p.eat_punct('@') {
        let neg = p.eat_punct('!');
        guard = Some((p.ident()?, neg));
    }
    let opcode = p.ident()?;
    let mut operands = Vec::new();
    if opcode == "call" || opcode.starts_with("call.") {
        // Device-function calls are not supported; decode reports `Unsupported`.
        p.skip_to_semicolon()?;
        return Ok(RawInst {
            guard,
            opcode,
            operands,
            line,
        });
    }
    if !p.eat_punct(';') {
        loop {
            operands.push(parse_operand(p)?);
            if p.eat_punct(';') {
                break;
            }
            p.expect_punct(',')?;
        }
    }
    Ok(RawInst {
        guard,
        opcode,
        operands,
        line,
    })
}

fn parse_signed_int(p: &mut P) -> Result<i64, PtxError> {
    let neg = p.eat_punct('-');
    let v = p.int()? as i64;
    Ok(if neg { v.wrapping_neg() } else { v })
}

fn parse_operand(p: &mut P) -> Result<Operand, PtxError> {
    if p.eat_punct('[') {
        let mut base = None;
        let mut off = 0i64;
        match p.peek() {
            Some(Tok::Ident(s)) => {
                base = Some(s.clone());
                p.i += 1;
                if p.eat_punct('+') {
                    off = parse_signed_int(p)?;
                } else if p.eat_punct('-') {
                    off = (p.int()? as i64).wrapping_neg();
                }
            }
            _ => off = parse_signed_int(p)?,
        }
        p.expect_punct(']')?;
        return Ok(Operand::Addr { base, off });
    }
    if p.eat_punct('{') {
        let mut v = Vec::new();
        loop {
            v.push(parse_operand(p)?);
            if p.eat_punct('}') {
                break;
            }
            p.expect_punct(',')?;
        }
        return Ok(Operand::Vec(v));
    }
    if p.eat_punct('!') {
        return Ok(Operand::NotPred(p.ident()?));
    }
    let neg = p.eat_punct('-');
    let line = p.line();
    match p.next()? {
        Tok::Int(v) => Ok(Operand::Imm(Lit::Int(if neg {
            v.wrapping_neg()
        } else {
            *v
        }))),
        Tok::F32Bits(b) => Ok(Operand::Imm(Lit::F32(if neg {
            b ^ 0x8000_0000
        } else {
            *b
        }))),
        Tok::F64Bits(b) => Ok(Operand::Imm(Lit::F64(if neg { b ^ (1 << 63) } else { *b }))),
        Tok::Float(f) => Ok(Operand::Imm(Lit::Float(if neg { -f } else { *f }))),
        Tok::Ident(s) if !neg => {
            if p.eat_punct('|') {
                return Ok(Operand::PredPair(s.clone(), p.ident()?));
            }
            if p.eat_punct('+') {
                return Ok(Operand::SymOff(s.clone(), parse_signed_int(p)?));
            }
            Ok(Operand::Name(s.clone()))
        }
        _ => {
            p.i -= 1;
            Err(PtxError::parse(
                line,
                format!("unexpected operand {}", p.describe()),
            ))
        }
    }
}
