//! Execution state of one launch: the per-CTA `Machine` (shared / local / param /
//! const storage, barriers, race detector, statistics) and per-warp `Warp` state
//! (SoA register file, per-lane PCs, exit / barrier masks, cp.async queues), plus
//! address resolution with bounds / alignment checks and fault construction.

use super::ast::*;
use super::error::{tid_of, Dim3, PtxError};
use super::memory::{read_le, write_le, GlobalMem};
use super::race::{to_access, Conflict, RaceDetector};

/// A queued `cp.async` copy of one thread.
#[derive(Debug, Clone, Copy)]
pub struct CpOp {
    pub dst: u32,
    pub src: u64,
    pub size: u32,
    pub src_size: u32,
    pub group: u32,
    pub line: u32,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct BarState {
    pub arrived: u32,
    pub expected: Option<u32>,
}

pub struct Warp {
    /// Register file, `regs[slot * 32 + lane]`.
    pub regs: Vec<u64>,
    pub pc: [u32; 32],
    /// When `uniform`, every runnable lane is at `upc` (their `pc[]` entries are stale).
    pub upc: u32,
    pub uniform: bool,
    pub valid: u32,
    pub exited: u32,
    pub blocked: u32,
    pub bar_id: [u8; 32],
    pub index: u32,
    pub wepoch: u32,
    pub cp: Vec<Vec<CpOp>>,
    pub cp_committed: [u32; 32],
}

impl Warp {
    pub fn new(nslots: usize) -> Warp {
        Warp {
            regs: vec![0; nslots * 32],
            pc: [0; 32],
            upc: 0,
            uniform: true,
            valid: 0,
            exited: 0,
            blocked: 0,
            bar_id: [0; 32],
            index: 0,
            wepoch: 0,
            cp: (0..32).map(|_| Vec::new()).collect(),
            cp_committed: [0; 32],
        }
    }

    #[inline(always)]
    pub fn runnable(&self) -> u32 {
        self.valid & !self.exited & !self.blocked
    }

    #[inline(always)]
    pub fn get(&self, s: Src, lane: usize) -> u64 {
        match s {
            Src::Reg(r) => self.regs[r as usize * 32 + lane],
            Src::Imm(v) => v,
        }
    }

    /// Writes `v & mask` to register `d` of `lane`, `mask` being the register's width
    /// ([`Machine::reg_mask`]); a write to the sink `_` is dropped. Every per-lane register
    /// write goes through here (the 32-lane fast path has `fastpath::store`).
    #[inline(always)]
    pub fn put(&mut self, d: Reg, lane: usize, v: u64, mask: u64) {
        if d != SINK {
            self.regs[d as usize * 32 + lane] = v & mask;
        }
    }

    /// Materialize per-lane PCs and leave uniform mode.
    pub fn diverge(&mut self) {
        if self.uniform {
            let r = self.runnable();
            for l in 0..32 {
                if r >> l & 1 == 1 {
                    self.pc[l] = self.upc;
                }
            }
            self.uniform = false;
        }
    }
}

pub struct Machine<'a> {
    pub kernel: &'a Kernel,
    pub consts: &'a [u8],
    pub params: Vec<u8>,
    pub gvars: Vec<u64>,
    pub gmem: &'a mut GlobalMem,
    pub grid: Dim3,
    pub block: Dim3,
    pub ctaid: Dim3,
    pub nthreads: u32,
    pub shared: Vec<u8>,
    pub local: Vec<u8>,
    pub race: Option<RaceDetector>,
    pub bars: [BarState; 16],
    pub instructions: u64,
}

#[inline(always)]
pub fn lanes(mask: u32) -> impl Iterator<Item = usize> {
    let mut m = mask;
    std::iter::from_fn(move || {
        if m == 0 {
            None
        } else {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            Some(l)
        }
    })
}

impl Machine<'_> {
    /// The value mask of register `d` (its declared width; 0 for the sink `_`).
    #[inline(always)]
    pub fn reg_mask(&self, d: Reg) -> u64 {
        if d == SINK {
            0
        } else {
            self.kernel.reg_masks[d as usize]
        }
    }

    pub fn tid(&self, w: &Warp, lane: usize) -> Dim3 {
        tid_of(self.block, w.index * 32 + lane as u32)
    }

    fn line(&self, pc: u32) -> (u32, String) {
        let i = pc as usize;
        let line = self.kernel.insts.get(i).map(|x| x.line).unwrap_or(0);
        let op = self.kernel.texts.get(i).cloned().unwrap_or_default();
        (line, op)
    }

    pub fn oob(
        &self,
        w: &Warp,
        lane: usize,
        pc: u32,
        space: Space,
        address: u64,
        size: u32,
    ) -> PtxError {
        let (line, opcode) = self.line(pc);
        PtxError::OutOfBounds {
            kernel: self.kernel.name.clone(),
            space,
            address,
            size,
            ctaid: self.ctaid,
            tid: self.tid(w, lane),
            line,
            opcode,
        }
    }

    pub fn misaligned(
        &self,
        w: &Warp,
        lane: usize,
        pc: u32,
        space: Space,
        address: u64,
        align: u32,
    ) -> PtxError {
        let (line, opcode) = self.line(pc);
        PtxError::Misaligned {
            kernel: self.kernel.name.clone(),
            space,
            address,
            align,
            ctaid: self.ctaid,
            tid: self.tid(w, lane),
            line,
            opcode,
        }
    }

    pub fn runtime(&self, w: &Warp, lane: usize, pc: u32, message: impl Into<String>) -> PtxError {
        let (line, opcode) = self.line(pc);
        PtxError::Runtime {
            kernel: self.kernel.name.clone(),
            ctaid: self.ctaid,
            tid: self.tid(w, lane),
            line,
            opcode,
            message: message.into(),
        }
    }

    pub fn divergence(&self, w: &Warp, pc: u32, message: impl Into<String>) -> PtxError {
        let (line, opcode) = self.line(pc);
        PtxError::Divergence {
            kernel: self.kernel.name.clone(),
            ctaid: self.ctaid,
            warp: w.index,
            line,
            opcode,
            message: message.into(),
        }
    }

    pub fn trap(&self, w: &Warp, lane: usize, pc: u32) -> PtxError {
        PtxError::Trap {
            kernel: self.kernel.name.clone(),
            ctaid: self.ctaid,
            tid: self.tid(w, lane),
            line: self.line(pc).0,
        }
    }

    pub fn race_error(&self, c: Conflict) -> PtxError {
        let (first, second) = (
            to_access(self.block, c.first),
            to_access(self.block, c.second),
        );
        let (kernel, ctaid, address) = (self.kernel.name.clone(), self.ctaid, c.address);
        if c.own_pending {
            PtxError::AsyncCopyPending {
                kernel,
                ctaid,
                address,
                copy: first,
                access: second,
            }
        } else {
            PtxError::SharedRace {
                kernel,
                ctaid,
                address,
                first,
                second,
            }
        }
    }

    /// Map an address in `space` to a concrete (non-generic) space and offset.
    #[inline(always)]
    pub fn resolve(space: Space, addr: u64) -> (Space, u64) {
        if space != Space::Generic {
            return (space, addr);
        }
        let win = |b: u64| addr >= b && addr < b + WINDOW_SIZE;
        if addr < SHARED_WINDOW {
            (Space::Global, addr)
        } else if win(SHARED_WINDOW) {
            (Space::Shared, addr - SHARED_WINDOW)
        } else if win(LOCAL_WINDOW) {
            (Space::Local, addr - LOCAL_WINDOW)
        } else if win(CONST_WINDOW) {
            (Space::Const, addr - CONST_WINDOW)
        } else if win(PARAM_WINDOW) {
            (Space::Param, addr - PARAM_WINDOW)
        } else {
            (Space::Global, addr)
        }
    }

    /// Evaluate an address operand for one lane.
    #[inline(always)]
    pub fn addr(&self, w: &Warp, a: &Addr, lane: usize) -> u64 {
        let base = match a.base {
            AddrBase::Reg(r) => w.regs[r as usize * 32 + lane],
            AddrBase::Imm(v) => v,
            AddrBase::GlobalVar(i) => self.gvars.get(i as usize).copied().unwrap_or(0),
        };
        base.wrapping_add(a.off as u64)
    }

    /// The checked location of an access of `size` bytes at `addr` in `space`: the
    /// generic-address resolution and the alignment check every load and store starts with.
    #[inline(always)]
    fn locate(
        &self,
        w: &Warp,
        lane: usize,
        pc: u32,
        space: Space,
        addr: u64,
        size: u32,
    ) -> Result<Access, PtxError> {
        self.aligned(w, lane, pc, Access::new(space, addr, size))
    }

    /// `a`, or the misalignment fault when its address is not a multiple of its size.
    #[inline(always)]
    fn aligned(&self, w: &Warp, lane: usize, pc: u32, a: Access) -> Result<Access, PtxError> {
        if a.addr % a.size as u64 != 0 {
            return Err(self.misaligned(w, lane, pc, a.space, a.addr, a.size));
        }
        Ok(a)
    }

    /// The out-of-bounds fault of access `a` by thread `lane`.
    fn oob_at(&self, w: &Warp, lane: usize, pc: u32, a: Access) -> PtxError {
        self.oob(w, lane, pc, a.space, a.addr, a.size)
    }

    /// Bounds-checked byte range of shared offset `off` (`addr` in `space` for the error),
    /// after recording the access with the race detector as `track`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn shared_range(
        &mut self,
        w: &Warp,
        lane: usize,
        pc: u32,
        (space, addr): (Space, u64),
        off: u64,
        size: u32,
        track: Track,
    ) -> Result<std::ops::Range<usize>, PtxError> {
        if off.saturating_add(size as u64) > self.shared.len() as u64 {
            return Err(self.oob(w, lane, pc, space, addr, size));
        }
        if let (Some(r), Some((write, atomic))) = (self.race.as_mut(), track.kind()) {
            let line = self
                .kernel
                .insts
                .get(pc as usize)
                .map(|x| x.line)
                .unwrap_or(0);
            let tid = w.index * 32 + lane as u32;
            if let Err(c) = r.access(off, size, tid, w.wepoch, line, write, atomic) {
                return Err(self.race_error(c));
            }
        }
        Ok(off as usize..off as usize + size as usize)
    }

    /// Bounds-checked byte range of a non-global space for thread `lane`.
    fn local_range(&self, w: &Warp, lane: usize, off: u64, size: u32) -> Option<usize> {
        let ls = self.kernel.local_size as u64;
        if off.checked_add(size as u64)? > ls {
            return None;
        }
        Some(((w.index as u64 * 32 + lane as u64) * ls + off) as usize)
    }

    /// Load `size` bytes; a shared read is recorded with the race detector as `track`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        &mut self,
        w: &Warp,
        lane: usize,
        pc: u32,
        space: Space,
        addr: u64,
        size: u32,
        track: Track,
    ) -> Result<u64, PtxError> {
        let a = self.locate(w, lane, pc, space, addr, size)?;
        self.read_at(w, lane, pc, a, track)
    }

    /// Store `v` (`size` bytes); `atomic` marks the shared write of an atomic for the race
    /// detector.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn store(
        &mut self,
        w: &Warp,
        lane: usize,
        pc: u32,
        space: Space,
        addr: u64,
        size: u32,
        v: u64,
        atomic: bool,
    ) -> Result<(), PtxError> {
        let a = self.locate(w, lane, pc, space, addr, size)?;
        let track = if atomic { Track::Atomic } else { Track::Write };
        self.write_at(w, lane, pc, a, v, track)
    }

    /// Atomic read-modify-write; returns the old value. The address is located once; in shared
    /// memory the access is recorded once, as an atomic write (not as a plain read).
    #[allow(clippy::too_many_arguments)]
    pub fn rmw(
        &mut self,
        w: &Warp,
        lane: usize,
        pc: u32,
        space: Space,
        addr: u64,
        size: u32,
        f: impl FnOnce(u64) -> u64,
    ) -> Result<u64, PtxError> {
        let a = Access::new(space, addr, size);
        if !matches!(a.to, Space::Global | Space::Shared) {
            let message = format!("atomic on {} space at {addr:#x}", a.to);
            return Err(self.runtime(w, lane, pc, message));
        }
        let a = self.aligned(w, lane, pc, a)?;
        let old = self.read_at(w, lane, pc, a, Track::Untracked)?;
        self.write_at(w, lane, pc, a, f(old), Track::Atomic)?;
        Ok(old)
    }

    /// The bytes of the located access `a` in a writable space (global, shared, local),
    /// bounds-checked (`None` when out of bounds or in another space); a shared access is
    /// recorded with the race detector as `track`.
    #[inline]
    fn bytes_at(
        &mut self,
        w: &Warp,
        lane: usize,
        pc: u32,
        a: Access,
        track: Track,
    ) -> Result<Option<&mut [u8]>, PtxError> {
        let (off, size, n) = (a.off, a.size, a.size as usize);
        Ok(match a.to {
            Space::Global => self.gmem.slice_mut(off, n),
            Space::Shared => {
                let r = self.shared_range(w, lane, pc, (a.space, a.addr), off, size, track)?;
                Some(&mut self.shared[r])
            }
            Space::Local => self
                .local_range(w, lane, off, size)
                .map(|o| &mut self.local[o..o + n]),
            Space::Param | Space::Const | Space::Generic => None,
        })
    }

    /// Read the located access `a`; a shared read is recorded as `track`.
    #[inline]
    fn read_at(
        &mut self,
        w: &Warp,
        lane: usize,
        pc: u32,
        a: Access,
        track: Track,
    ) -> Result<u64, PtxError> {
        if let Space::Param | Space::Const = a.to {
            let buf: &[u8] = if a.to == Space::Param {
                &self.params
            } else {
                self.consts
            };
            let (off, n) = (a.off as usize, a.size as usize);
            return match buf.get(off..off.saturating_add(n)) {
                Some(b) if a.off < u32::MAX as u64 => Ok(read_le(b)),
                _ => Err(self.oob_at(w, lane, pc, a)),
            };
        }
        match self.bytes_at(w, lane, pc, a, track)? {
            Some(b) => Ok(read_le(b)),
            None => Err(self.oob_at(w, lane, pc, a)),
        }
    }

    /// Write `v` to the located access `a`; a shared write is recorded as `track`.
    #[inline]
    fn write_at(
        &mut self,
        w: &Warp,
        lane: usize,
        pc: u32,
        a: Access,
        v: u64,
        track: Track,
    ) -> Result<(), PtxError> {
        if let sp @ (Space::Param | Space::Const | Space::Generic) = a.to {
            let message = format!("store to read-only {sp} space at {:#x}", a.addr);
            return Err(self.runtime(w, lane, pc, message));
        }
        match self.bytes_at(w, lane, pc, a, track)? {
            Some(b) => {
                write_le(b, v);
                Ok(())
            }
            None => Err(self.oob_at(w, lane, pc, a)),
        }
    }
}

/// A located access: the address as the instruction gave it (`space`, `addr`: what a fault
/// reports), its size, and the concrete space and offset it resolves to.
#[derive(Debug, Clone, Copy)]
struct Access {
    space: Space,
    addr: u64,
    size: u32,
    to: Space,
    off: u64,
}

impl Access {
    /// The access of `size` bytes at `addr` in `space`, resolved (generic addresses to their
    /// window's space) but not yet checked.
    #[inline(always)]
    fn new(space: Space, addr: u64, size: u32) -> Access {
        let (to, off) = Machine::resolve(space, addr);
        Access {
            space,
            addr,
            size,
            to,
            off,
        }
    }
}

/// How a shared-memory access is recorded by the race detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    Read,
    Write,
    Atomic,
    /// Not recorded (the read half of an atomic).
    Untracked,
}

impl Track {
    /// `(write, atomic)` for the detector, `None` when not recorded.
    #[inline(always)]
    fn kind(self) -> Option<(bool, bool)> {
        match self {
            Track::Read => Some((false, false)),
            Track::Write => Some((true, false)),
            Track::Atomic => Some((true, true)),
            Track::Untracked => None,
        }
    }
}
