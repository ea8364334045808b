//! Per-kernel program representation: decoded instructions with guards and source
//! lines, kernel parameters and storage layout, module-level `.global` variables, the
//! special-register slot map and the generic-address windows.

use super::ast::{Op, Reg, Ty};

/// One instruction: guard predicate, operation, and its PTX source line.
#[derive(Debug, Clone, PartialEq)]
pub struct Inst {
    /// Guard predicate register (`SINK` = unguarded) and negation flag.
    pub guard: Reg,
    pub guard_neg: bool,
    pub op: Op,
    pub line: u32,
}

/// A kernel parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub ty: Ty,
    pub size: u32,
    pub offset: u32,
}

/// Special-register slots, materialized per thread at warp start.
pub mod sreg {
    pub const TID: u32 = 0; // x,y,z = 0,1,2
    pub const NTID: u32 = 3;
    pub const CTAID: u32 = 6;
    pub const NCTAID: u32 = 9;
    pub const LANEID: u32 = 12;
    pub const WARPID: u32 = 13;
    pub const NWARPID: u32 = 14;
    pub const LANEMASK_EQ: u32 = 15;
    pub const LANEMASK_LE: u32 = 16;
    pub const LANEMASK_LT: u32 = 17;
    pub const LANEMASK_GE: u32 = 18;
    pub const LANEMASK_GT: u32 = 19;
    pub const SMID: u32 = 20;
    pub const NSMID: u32 = 21;
    pub const GRIDID: u32 = 22;
    pub const DYN_SMEM: u32 = 23;
    pub const TOTAL_SMEM: u32 = 24;
    /// Carry flag of `add.cc`/`addc` (not a PTX-visible name).
    pub const CC: u32 = 25;
    pub const COUNT: u32 = 26;

    pub fn lookup(name: &str) -> Option<u32> {
        let xyz = |base: u32, s: &str| -> Option<u32> {
            match s {
                "x" => Some(base),
                "y" => Some(base + 1),
                "z" => Some(base + 2),
                _ => None,
            }
        };
        let (head, tail) = match name.split_once('.') {
            Some((h, t)) => (h, Some(t)),
            None => (name, None),
        };
        match (head, tail) {
            ("%tid", Some(t)) => xyz(TID, t),
            ("%ntid", Some(t)) => xyz(NTID, t),
            ("%ctaid", Some(t)) => xyz(CTAID, t),
            ("%nctaid", Some(t)) => xyz(NCTAID, t),
            ("%laneid", None) => Some(LANEID),
            ("%warpid", None) => Some(WARPID),
            ("%nwarpid", None) => Some(NWARPID),
            ("%lanemask_eq", None) => Some(LANEMASK_EQ),
            ("%lanemask_le", None) => Some(LANEMASK_LE),
            ("%lanemask_lt", None) => Some(LANEMASK_LT),
            ("%lanemask_ge", None) => Some(LANEMASK_GE),
            ("%lanemask_gt", None) => Some(LANEMASK_GT),
            ("%smid", None) => Some(SMID),
            ("%nsmid", None) => Some(NSMID),
            ("%gridid", None) => Some(GRIDID),
            ("%dynamic_smem_size", None) => Some(DYN_SMEM),
            ("%total_smem_size", None) => Some(TOTAL_SMEM),
            _ => None,
        }
    }
}

/// A decoded kernel (`.entry`).
#[derive(Debug, Clone)]
pub struct Kernel {
    pub name: String,
    pub insts: Vec<Inst>,
    /// Opcode text of each instruction, for error messages.
    pub texts: Vec<String>,
    /// Write mask of each register slot (by declared width).
    pub reg_masks: Vec<u64>,
    pub params: Vec<Param>,
    pub param_size: u32,
    /// Bytes of static shared memory; dynamic (`extern`) shared starts here.
    pub shared_static: u32,
    pub local_size: u32,
    pub reqntid: Option<(u32, u32, u32)>,
    pub maxntid: Option<(u32, u32, u32)>,
}

/// Module-level `.global` variable.
#[derive(Debug, Clone)]
pub struct GlobalVar {
    pub name: String,
    pub size: u32,
    pub align: u32,
    pub init: Vec<u8>,
}

/// Address windows used for generic addressing.
pub const SHARED_WINDOW: u64 = 1 << 48;
pub const LOCAL_WINDOW: u64 = 2 << 48;
pub const CONST_WINDOW: u64 = 3 << 48;
pub const PARAM_WINDOW: u64 = 4 << 48;
pub const WINDOW_SIZE: u64 = 1 << 40;
