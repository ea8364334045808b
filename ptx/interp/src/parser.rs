//! Syntactic parser: turns the token stream into module-level variable declarations
//! and raw functions (params, register / shared / local declarations, labels and
//! un-decoded instruction statements with their operands). Semantic decoding of each
//! instruction happens in `decode.rs`.

use super::ast::Ty;
use super::error::PtxError;
use super::lexer::{Tok, Token};

#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Int(u64),
    F32(u32),
    F64(u64),
    Float(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// Register, special register, symbol, label or `_`.
    Name(String),
    Imm(Lit),
    /// `[base+off]`; `base == None` means an absolute address `[off]`.
    Addr {
        base: Option<String>,
        off: i64,
    },
    Vec(Vec<Operand>),
    /// `!%p`
    NotPred(String),
    /// `%p|%q` (setp dual destination)
    PredPair(String, String),
    /// `sym+off` outside brackets
    SymOff(String, i64),
}

#[derive(Debug, Clone)]
pub struct RawInst {
    pub guard: Option<(String, bool)>,
    pub opcode: String,
    pub operands: Vec<Operand>,
    pub line: u32,
}

#[derive(Debug, Clone)]
pub enum Stmt {
    Label(String, u32),
    Inst(RawInst),
}

#[derive(Debug, Clone)]
pub struct VarDecl {
    pub space: String,
    pub name: String,
    pub ty: Ty,
    pub align: u32,
    /// Total size in bytes (0 for `extern`/unsized arrays).
    pub size: u32,
    pub unsized_array: bool,
    pub init: Vec<Lit>,
    pub line: u32,
}

#[derive(Debug, Clone)]
pub struct RawFunc {
    pub name: String,
    pub is_entry: bool,
    pub params: Vec<VarDecl>,
    pub regs: Vec<(String, Ty, u32)>,
    pub vars: Vec<VarDecl>,
    pub body: Vec<Stmt>,
    pub reqntid: Option<(u32, u32, u32)>,
    pub maxntid: Option<(u32, u32, u32)>,
    pub line: u32,
    pub has_body: bool,
}

#[derive(Debug, Default)]
pub struct RawModule {
    pub vars: Vec<VarDecl>,
    pub funcs: Vec<RawFunc>,
}

pub(super) struct P<'a> {
    pub(super) t: &'a [Token],
    pub(super) i: usize,
}

impl<'a> P<'a> {
    pub(super) fn line(&self) -> u32 {
        self.t
            .get(self.i)
            .or_else(|| self.t.last())
            .map(|t| t.line)
            .unwrap_or(1)
    }
    pub(super) fn peek(&self) -> Option<&'a Tok> {
        self.t.get(self.i).map(|t| &t.tok)
    }
    pub(super) fn peek_at(&self, k: usize) -> Option<&'a Tok> {
        self.t.get(self.i + k).map(|t| &t.tok)
    }
    pub(super) fn next(&mut self) -> Result<&'a Tok, PtxError> {
        let line = self.line();
        let t = self
            .t
            .get(self.i)
            .ok_or_else(|| PtxError::parse(line, "unexpected end of input"))?;
        self.i += 1;
        Ok(&t.tok)
    }
    pub(super) fn err<T>(&self, msg: impl Into<String>) -> Result<T, PtxError> {
        Err(PtxError::parse(self.line(), msg))
    }
    pub(super) fn is_punct(&self, c: char) -> bool {
        self.peek() == Some(&Tok::Punct(c))
    }
    pub(super) fn eat_punct(&mut self, c: char) -> bool {
        if self.is_punct(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    pub(super) fn expect_punct(&mut self, c: char) -> Result<(), PtxError> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            self.err(format!("expected `{c}`, found {}", self.describe()))
        }
    }
    pub(super) fn describe(&self) -> String {
        match self.peek() {
            None => "end of input".into(),
            Some(Tok::Ident(s)) => format!("`{s}`"),
            Some(Tok::Dir(s)) => format!("`.{s}`"),
            Some(Tok::Punct(c)) => format!("`{c}`"),
            Some(t) => format!("{t:?}"),
        }
    }
    pub(super) fn ident(&mut self) -> Result<String, PtxError> {
        match self.next()? {
            Tok::Ident(s) => Ok(s.clone()),
            _ => {
                self.i -= 1;
                self.err(format!("expected identifier, found {}", self.describe()))
            }
        }
    }
    pub(super) fn int(&mut self) -> Result<u64, PtxError> {
        match self.next()? {
            Tok::Int(v) => Ok(*v),
            _ => {
                self.i -= 1;
                self.err(format!("expected integer, found {}", self.describe()))
            }
        }
    }
    pub(super) fn skip_to_semicolon(&mut self) -> Result<(), PtxError> {
        while !self.eat_punct(';') {
            self.next()?;
        }
        Ok(())
    }
}

/// Parse a whole module into raw declarations.
pub fn parse_module(tokens: &[Token]) -> Result<RawModule, PtxError> {
    let mut p = P { t: tokens, i: 0 };
    let mut m = RawModule::default();
    while let Some(tok) = p.peek() {
        let line = p.line();
        match tok {
            Tok::Dir(d) => match d.as_str() {
                "version" => {
                    p.i += 1;
                    p.next()?;
                }
                "target" => {
                    p.i += 1;
                    p.ident()?;
                    while p.eat_punct(',') {
                        p.ident()?;
                    }
                }
                "address_size" => {
                    p.i += 1;
                    let v = p.int()?;
                    if v != 64 {
                        return Err(PtxError::unsupported(line, format!(".address_size {v}")));
                    }
                }
                "file" => {
                    p.i += 1;
                    p.int()?;
                    if let Some(Tok::Str(_)) = p.peek() {
                        p.i += 1;
                    }
                    while p.eat_punct(',') {
                        p.int()?;
                    }
                }
                "pragma" => {
                    p.i += 1;
                    p.skip_to_semicolon()?;
                }
                "section" => {
                    p.i += 1;
                    p.next()?;
                    p.expect_punct('{')?;
                    let mut depth = 1;
                    while depth > 0 {
                        match p.next()? {
                            Tok::Punct('{') => depth += 1,
                            Tok::Punct('}') => depth -= 1,
                            _ => {}
                        }
                    }
                }
                "visible" | "extern" | "weak" | "common" => {
                    p.i += 1;
                }
                "entry" | "func" => {
                    p.i += 1;
                    let f = parse_func(&mut p, d == "entry", line)?;
                    m.funcs.push(f);
                }
                "global" | "const" | "shared" => {
                    let extern_ = line_has_extern(tokens, p.i);
                    p.i += 1;
                    let mut decls = parse_var_decl(&mut p, d, line)?;
                    for v in &mut decls {
                        if extern_ && d == "shared" {
                            v.unsized_array = true;
                        }
                    }
                    m.vars.extend(decls);
                }
                other => return Err(PtxError::unsupported(line, format!(".{other}"))),
            },
            _ => return p.err(format!("unexpected {} at module level", p.describe())),
        }
    }
    Ok(m)
}

fn line_has_extern(tokens: &[Token], i: usize) -> bool {
    i > 0 && tokens[i - 1].tok == Tok::Dir("extern".into())
}

/// After the state-space directive: `[.align N] [.vN] .type name[dims] [= init] {, name…};`
pub(super) fn parse_var_decl(p: &mut P, space: &str, line: u32) -> Result<Vec<VarDecl>, PtxError> {
    let mut align = 0u32;
    let mut ty = None;
    let mut vec = 1u32;
    while let Some(Tok::Dir(d)) = p.peek() {
        p.i += 1;
        match d.as_str() {
            "align" => align = p.int()? as u32,
            "v2" => vec = 2,
            "v4" => vec = 4,
            "v8" => vec = 8,
            "ptr" | "global" | "shared" | "const" | "local" | "param" => {}
            t => match Ty::parse(t) {
                Some(t) => ty = Some(t),
                None => return Err(PtxError::unsupported(line, format!(".{t} in declaration"))),
            },
        }
    }
    let ty = match ty {
        Some(t) => t,
        None => return p.err("declaration without a type"),
    };
    let elem = ty.bytes().max(1) * vec;
    if align == 0 {
        align = elem;
    }
    let mut out = Vec::new();
    loop {
        let name = p.ident()?;
        let mut count = 1u64;
        let mut unsized_array = false;
        while p.eat_punct('[') {
            if p.eat_punct(']') {
                unsized_array = true;
                continue;
            }
            count = count.saturating_mul(p.int()?);
            p.expect_punct(']')?;
        }
        let mut init = Vec::new();
        if p.eat_punct('=') {
            parse_init(p, &mut init)?;
        }
        let size = (count.saturating_mul(elem as u64)).min(u32::MAX as u64) as u32;
        if unsized_array && !init.is_empty() {
            return p.err("unsized array with initializer is not supported");
        }
        out.push(VarDecl {
            space: space.to_string(),
            name,
            ty,
            align,
            size: if unsized_array { 0 } else { size },
            unsized_array,
            init,
            line,
        });
        if !p.eat_punct(',') {
            break;
        }
    }
    p.expect_punct(';')?;
    Ok(out)
}

fn parse_init(p: &mut P, out: &mut Vec<Lit>) -> Result<(), PtxError> {
    if p.eat_punct('{') {
        loop {
            if p.eat_punct('}') {
                break;
            }
            parse_init(p, out)?;
            if !p.eat_punct(',') {
                p.expect_punct('}')?;
                break;
            }
        }
        return Ok(());
    }
    let neg = p.eat_punct('-');
    let lit = match p.next()? {
        Tok::Int(v) => Lit::Int(if neg { v.wrapping_neg() } else { *v }),
        Tok::F32Bits(b) => Lit::F32(if neg { b ^ 0x8000_0000 } else { *b }),
        Tok::F64Bits(b) => Lit::F64(if neg { b ^ (1 << 63) } else { *b }),
        Tok::Float(f) => Lit::Float(if neg { -f } else { *f }),
        _ => {
            p.i -= 1;
            return p.err(format!("unsupported initializer element {}", p.describe()));
        }
    };
    out.push(lit);
    Ok(())
}

fn parse_param_list(p: &mut P, line: u32) -> Result<Vec<VarDecl>, PtxError> {
    let mut params = Vec::new();
    p.expect_punct('(')?;
    if p.eat_punct(')') {
        return Ok(params);
    }
    loop {
        match p.next()? {
            Tok::Dir(d) if d == "param" || d == "reg" => {
                let space = d.clone();
                let mut align = 0u32;
                let mut ty = None;
                while let Some(Tok::Dir(d)) = p.peek() {
                    p.i += 1;
                    match d.as_str() {
                        "align" => align = p.int()? as u32,
                        "ptr" | "global" | "shared" | "const" | "local" => {}
                        t => match Ty::parse(t) {
                            Some(t) => ty = Some(t),
                            None => {
                                return Err(PtxError::unsupported(
                                    line,
                                    format!(".{t} in parameter"),
                                ))
                            }
                        },
                    }
                }
                let ty = match ty {
                    Some(t) => t,
                    None => return p.err("parameter without a type"),
                };
                let name = p.ident()?;
                let mut count = 1u64;
                while p.eat_punct('[') {
                    count = count.saturating_mul(p.int()?);
                    p.expect_punct(']')?;
                }
                let size = (count * ty.bytes() as u64).min(u32::MAX as u64) as u32;
                params.push(VarDecl {
                    space,
                    name,
                    ty,
                    align: if align == 0 { ty.bytes() } else { align },
                    size,
                    unsized_array: false,
                    init: Vec::new(),
                    line,
                });
            }
            _ => {
                p.i -= 1;
                return p.err(format!("expected `.param`, found {}", p.describe()));
            }
        }
        if p.eat_punct(')') {
            break;
        }
        p.expect_punct(',')?;
    }
    Ok(params)
}

fn dim3(p: &mut P) -> Result<(u32, u32, u32), PtxError> {
    let x = p.int()? as u32;
    let mut d = (x, 1, 1);
    if p.eat_punct(',') {
        d.1 = p.int()? as u32;
        if p.eat_punct(',') {
            d.2 = p.int()? as u32;
        }
    }
    Ok(d)
}

fn parse_func(p: &mut P, is_entry: bool, line: u32) -> Result<RawFunc, PtxError> {
    let mut rets = Vec::new();
    if p.is_punct('(') {
        rets = parse_param_list(p, line)?;
    }
    let name = p.ident()?;
    let params = if p.is_punct('(') {
        parse_param_list(p, line)?
    } else {
        Vec::new()
    };
    let mut f = RawFunc {
        name,
        is_entry,
        params,
        regs: Vec::new(),
        vars: Vec::new(),
        body: Vec::new(),
        reqntid: None,
        maxntid: None,
        line,
        has_body: false,
    };
    if !rets.is_empty() && is_entry {
        return p.err("an .entry cannot have return parameters");
    }
    loop {
        match p.peek() {
            Some(Tok::Dir(d)) => {
                p.i += 1;
                match d.as_str() {
                    "maxntid" => f.maxntid = Some(dim3(p)?),
                    "reqntid" => f.reqntid = Some(dim3(p)?),
                    "minnctapersm" | "maxnctapersm" | "maxnreg" | "reqnctapercluster"
                    | "maxclusterrank" => {
                        dim3(p)?;
                    }
                    "noreturn" | "explicitcluster" => {}
                    "pragma" => p.skip_to_semicolon()?,
                    other => return Err(PtxError::unsupported(p.line(), format!(".{other}"))),
                }
            }
            Some(Tok::Punct(';')) => {
                p.i += 1;
                return Ok(f);
            }
            Some(Tok::Punct('{')) => break,
            _ => return p.err(format!("expected function body, found {}", p.describe())),
        }
    }
    p.expect_punct('{')?;
    f.has_body = true;
    super::parse_body::parse_body(p, &mut f)?;
    Ok(f)
}
