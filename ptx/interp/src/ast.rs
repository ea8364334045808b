//! Decoded program representation: PTX types, operands resolved to register slots /
//! immediates / addresses, and the compact `Op` enum every instruction is pre-decoded
//! into at parse time (labels resolved to instruction indices), plus per-kernel
//! metadata (register table, params, shared/local layout).

pub use super::error::Space;

/// PTX fundamental (and packed) types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    F16x2,
    BF16,
    BF16x2,
    F32,
    F64,
    Pred,
    TF32,
    E4m3,
    E5m2,
    E4m3x2,
    E5m2x2,
}

impl Ty {
    pub fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "f16x2" => Ty::F16x2,
            "bf16" => Ty::BF16,
            "bf16x2" => Ty::BF16x2,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            "tf32" => Ty::TF32,
            "e4m3" => Ty::E4m3,
            "e5m2" => Ty::E5m2,
            "e4m3x2" => Ty::E4m3x2,
            "e5m2x2" => Ty::E5m2x2,
            _ => return None,
        })
    }

    /// Width in bits (predicates: 1).
    pub fn bits(self) -> u32 {
        match self {
            Ty::Pred => 1,
            Ty::B8 | Ty::U8 | Ty::S8 | Ty::E4m3 | Ty::E5m2 => 8,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::BF16 | Ty::E4m3x2 | Ty::E5m2x2 => 16,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::F16x2 | Ty::BF16x2 | Ty::TF32 => 32,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 64,
        }
    }

    pub fn bytes(self) -> u32 {
        self.bits().div_ceil(8)
    }

    pub fn is_signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            Ty::F16 | Ty::F16x2 | Ty::BF16 | Ty::BF16x2 | Ty::F32 | Ty::F64 | Ty::TF32
        )
    }

    pub fn is_int(self) -> bool {
        !self.is_float() && self != Ty::Pred
    }

    /// Mask of the low `bits()` bits.
    pub fn mask(self) -> u64 {
        width_mask(self.bits())
    }
}

pub fn width_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Sign- or zero-extend the low `bits` of `v` to 64 bits.
#[inline(always)]
pub fn extend(v: u64, bits: u32, signed: bool) -> u64 {
    if bits >= 64 {
        return v;
    }
    if signed {
        let sh = 64 - bits;
        (((v << sh) as i64) >> sh) as u64
    } else {
        v & ((1u64 << bits) - 1)
    }
}

/// Register slot index; `SINK` is the `_` operand.
pub type Reg = u32;
pub const SINK: Reg = u32::MAX;

/// A source operand after decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Src {
    Reg(Reg),
    Imm(u64),
}

/// Base of an address expression `[base+off]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AddrBase {
    Reg(Reg),
    /// Constant address (numeric, or a shared/const/param/local symbol offset).
    Imm(u64),
    /// Module-level `.global` variable, resolved at launch.
    GlobalVar(u32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Addr {
    pub base: AddrBase,
    pub off: i64,
}

/// Floating-point rounding modes (`Rna`: to nearest, ties away; used by tf32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rnd {
    Rn,
    Rz,
    Rm,
    Rp,
    Rna,
}

/// Integer-rounding modes of float→int / float→float-integral conversions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IRnd {
    Ni,
    Zi,
    Mi,
    Pi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Lo,
    Ls,
    Hi,
    Hs,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoolOp {
    And,
    Or,
    Xor,
}

/// Integer / bitwise operations with up to three sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOp {
    Add,
    AddSat,
    Sub,
    SubSat,
    MulLo,
    MulHi,
    MulWide,
    MadLo,
    MadHi,
    MadWide,
    Mul24Lo,
    Mul24Hi,
    Mad24Lo,
    Mad24Hi,
    Div,
    Rem,
    Abs,
    Neg,
    Min,
    Max,
    And,
    Or,
    Xor,
    Not,
    CNot,
    Shl,
    Shr,
    Popc,
    Clz,
    Brev,
    Bfind,
    BfindShift,
    Bfe,
    Bfi,
    Prmt(u8),
    Lop3,
    ShfL,
    ShfR,
    ShfLClamp,
    ShfRClamp,
    Dp4a(bool, bool),
    Dp2aLo(bool, bool),
    Dp2aHi(bool, bool),
    Sad,
    AddCc,
    AddC,
    AddCCc,
    SubCc,
    SubC,
    SubCCc,
}

/// Float precision of an arithmetic instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FKind {
    F32,
    F64,
    F16,
    BF16,
    F16x2,
    BF16x2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FOp {
    Add,
    Sub,
    Mul,
    Fma,
    Div,
    Min,
    Max,
    MinNaN,
    MaxNaN,
    Abs,
    Neg,
    Sqrt,
    Rsqrt,
    Rcp,
    Ex2,
    Lg2,
    Sin,
    Cos,
    Tanh,
    Copysign,
}

/// Flags of a float instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FMods {
    pub rnd: Rnd,
    pub ftz: bool,
    pub sat: bool,
    pub relu: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomOp {
    Add,
    Min,
    Max,
    Inc,
    Dec,
    And,
    Or,
    Xor,
    Exch,
    Cas,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteMode {
    All,
    Any,
    Uni,
    Ballot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduxOp {
    Add,
    Min,
    Max,
    And,
    Or,
    Xor,
}

/// Tensor-core shapes/types supported by `mma.sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmaKind {
    /// m16n8k16 / m16n8k8 with bf16 or f16 inputs and f32 accumulators.
    F32Acc { k: u32, a: Ty },
    /// m16n8k16 / m16n8k8 f16 inputs with f16 accumulators (f16x2 registers).
    F16Acc { k: u32 },
    /// m16n8k32 fp8 (e4m3/e5m2) inputs, f32 accumulators (sm_89).
    Fp8 { a: Ty, b: Ty },
    /// m16n8k8 tf32 inputs, f32 accumulators.
    Tf32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MmaOp {
    pub kind: MmaKind,
    pub d: Vec<Reg>,
    pub a: Vec<Src>,
    pub b: Vec<Src>,
    pub c: Vec<Src>,
}

/// Full `cvt` conversion parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CvtSpec {
    pub dty: Ty,
    pub sty: Ty,
    pub rnd: Option<Rnd>,
    pub irnd: Option<IRnd>,
    pub ftz: bool,
    pub sat: bool,
    pub relu: bool,
    pub satfinite: bool,
}

/// A pre-decoded instruction.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Nop,
    Mov {
        d: Reg,
        a: Src,
    },
    /// `mov.b64 d, {a, b}` — parts given low to high, each `part_bits` wide.
    Pack {
        d: Reg,
        parts: Vec<Src>,
        part_bits: u32,
    },
    /// `mov.b64 {a, b}, s` — parts low to high.
    Unpack {
        ds: Vec<Reg>,
        a: Src,
        part_bits: u32,
    },
    MovGlobalVar {
        d: Reg,
        var: u32,
    },
    Clock {
        d: Reg,
    },
    Int {
        op: IntOp,
        ty: Ty,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
        e: Src,
    },
    Float {
        op: FOp,
        kind: FKind,
        m: FMods,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
    },
    Setp {
        cmp: Cmp,
        ty: Ty,
        ftz: bool,
        p: Reg,
        q: Reg,
        a: Src,
        b: Src,
        bop: Option<(BoolOp, Src, bool)>,
    },
    Set {
        cmp: Cmp,
        dty: Ty,
        sty: Ty,
        ftz: bool,
        d: Reg,
        a: Src,
        b: Src,
        bop: Option<(BoolOp, Src, bool)>,
    },
    Selp {
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
    },
    Slct {
        float: bool,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
    },
    Testp {
        op: u8,
        ty: Ty,
        d: Reg,
        a: Src,
    },
    Cvt {
        spec: CvtSpec,
        d: Reg,
        a: Src,
    },
    /// `cvt.rn{.satfinite}{.relu}.{f16x2,bf16x2,e4m3x2,e5m2x2}.f32 d, a, b` (a → upper half).
    CvtPack {
        dty: Ty,
        relu: bool,
        satfinite: bool,
        d: Reg,
        a: Src,
        b: Src,
    },
    /// `cvt.rn.f16x2.{e4m3x2,e5m2x2} d, a`.
    CvtUnpack8 {
        sty: Ty,
        relu: bool,
        d: Reg,
        a: Src,
    },
    Cvta {
        to: bool,
        space: Space,
        d: Reg,
        a: Src,
    },
    Isspacep {
        space: Space,
        d: Reg,
        a: Src,
    },
    Ld {
        space: Space,
        ty: Ty,
        ds: Vec<Reg>,
        addr: Addr,
    },
    St {
        space: Space,
        ty: Ty,
        srcs: Vec<Src>,
        addr: Addr,
    },
    Atom {
        space: Space,
        op: AtomOp,
        ty: Ty,
        d: Reg,
        addr: Addr,
        b: Src,
        c: Src,
    },
    CpAsync {
        size: u32,
        dst: Addr,
        src: Addr,
        src_size: Option<Src>,
        ignore: Option<(Reg, bool)>,
    },
    CpCommit,
    CpWait {
        n: u32,
    },
    Bra {
        target: u32,
    },
    Exit,
    Trap,
    Bar {
        id: Src,
        count: Option<Src>,
        arrive: bool,
    },
    BarWarp {
        mask: Src,
    },
    Shfl {
        mode: ShflMode,
        d: Reg,
        p: Reg,
        a: Src,
        b: Src,
        c: Src,
        mask: Src,
    },
    Vote {
        mode: VoteMode,
        d: Reg,
        a: Src,
        neg: bool,
        mask: Src,
    },
    Redux {
        op: ReduxOp,
        signed: bool,
        d: Reg,
        a: Src,
        mask: Src,
    },
    Match {
        all: bool,
        ty: Ty,
        d: Reg,
        p: Reg,
        a: Src,
        mask: Src,
    },
    Activemask {
        d: Reg,
    },
    Mma(Box<MmaOp>),
    Ldmatrix {
        num: u32,
        trans: bool,
        ds: Vec<Reg>,
        addr: Addr,
        space: Space,
    },
}

pub use super::program::*;
