//! Typed errors of the PTX interpreter: parse errors, unsupported features, launch
//! validation failures and runtime faults (out-of-bounds, misalignment, shared-memory
//! races and accesses to in-flight `cp.async` destinations, barrier deadlocks, traps). Every runtime fault names the kernel, the PTX
//! source line, the opcode and the offending thread (`ctaid`/`tid`).

use std::fmt;

/// A 3-component index or extent, `(x, y, z)`.
pub type Dim3 = (u32, u32, u32);

/// The `(x, y, z)` thread index of linear thread `lin` in a block of extent `block`.
#[inline]
pub fn tid_of(block: Dim3, lin: u32) -> Dim3 {
    let (bx, by, _) = block;
    (lin % bx, (lin / bx) % by, lin / (bx * by))
}

/// PTX state space of a memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    Global,
    Shared,
    Local,
    Param,
    Const,
    Generic,
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Space::Global => "global",
            Space::Shared => "shared",
            Space::Local => "local",
            Space::Param => "param",
            Space::Const => "const",
            Space::Generic => "generic",
        };
        f.write_str(s)
    }
}

/// One side of a shared-memory race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaceAccess {
    pub tid: Dim3,
    pub line: u32,
    pub write: bool,
}

impl fmt::Display for RaceAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.write { "write" } else { "read" };
        write!(f, "{kind} by tid {:?} at line {}", self.tid, self.line)
    }
}

/// Every failure the interpreter can report. It never panics on bad input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PtxError {
    #[error("PTX parse error at line {line}: {message}")]
    Parse { line: u32, message: String },

    #[error("unsupported PTX at line {line}: `{opcode}`")]
    Unsupported { line: u32, opcode: String },

    #[error("bad launch of kernel `{kernel}`: {message}")]
    BadLaunch { kernel: String, message: String },

    #[error(
        "out-of-bounds {space} access in kernel `{kernel}` line {line} (`{opcode}`): \
         address {address:#x} size {size}, ctaid {ctaid:?} tid {tid:?}"
    )]
    OutOfBounds {
        kernel: String,
        space: Space,
        address: u64,
        size: u32,
        ctaid: Dim3,
        tid: Dim3,
        line: u32,
        opcode: String,
    },

    #[error(
        "misaligned {space} access in kernel `{kernel}` line {line} (`{opcode}`): \
         address {address:#x} needs {align}-byte alignment, ctaid {ctaid:?} tid {tid:?}"
    )]
    Misaligned {
        kernel: String,
        space: Space,
        address: u64,
        align: u32,
        ctaid: Dim3,
        tid: Dim3,
        line: u32,
        opcode: String,
    },

    #[error(
        "shared-memory race in kernel `{kernel}` ctaid {ctaid:?} at shared address {address:#x}: \
         {first} conflicts with {second} (no barrier in between)"
    )]
    SharedRace {
        kernel: String,
        ctaid: Dim3,
        address: u64,
        first: RaceAccess,
        second: RaceAccess,
    },

    #[error(
        "access to an in-flight cp.async destination in kernel `{kernel}` ctaid {ctaid:?} at \
         shared address {address:#x}: {access} before the cp.async.wait_group / wait_all that \
         completes the copy ({copy}); the copy may land at any time until then"
    )]
    AsyncCopyPending {
        kernel: String,
        ctaid: Dim3,
        address: u64,
        /// The in-flight `cp.async` (same thread as `access`).
        copy: RaceAccess,
        access: RaceAccess,
    },

    #[error("barrier deadlock in kernel `{kernel}` ctaid {ctaid:?}: {message}")]
    Deadlock {
        kernel: String,
        ctaid: Dim3,
        message: String,
    },

    #[error(
        "warp-collective `{opcode}` in kernel `{kernel}` line {line} ctaid {ctaid:?} warp {warp}: {message}"
    )]
    Divergence {
        kernel: String,
        ctaid: Dim3,
        warp: u32,
        line: u32,
        opcode: String,
        message: String,
    },

    #[error("trap in kernel `{kernel}` line {line}, ctaid {ctaid:?} tid {tid:?}")]
    Trap {
        kernel: String,
        ctaid: Dim3,
        tid: Dim3,
        line: u32,
    },

    #[error("runtime error in kernel `{kernel}` line {line} (`{opcode}`), ctaid {ctaid:?} tid {tid:?}: {message}")]
    Runtime {
        kernel: String,
        ctaid: Dim3,
        tid: Dim3,
        line: u32,
        opcode: String,
        message: String,
    },

    #[error("device memory error: {message}")]
    Memory { message: String },

    #[error("kernel `{kernel}` exceeded the instruction limit of {limit} thread-instructions")]
    InstructionLimit { kernel: String, limit: u64 },
}

impl PtxError {
    pub(crate) fn parse(line: u32, message: impl Into<String>) -> PtxError {
        PtxError::Parse {
            line,
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(line: u32, opcode: impl Into<String>) -> PtxError {
        PtxError::Unsupported {
            line,
            opcode: opcode.into(),
        }
    }
}
