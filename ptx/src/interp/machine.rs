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

    /// Alignment check and generic-address resolution shared by every load and store.
    #[inline(always)]
    fn locate(
        &self,
        w: &Warp,
        lane: usize,
        pc: u32,
        space: Space,
        addr: u64,
        size: u32,
    ) -> Result<(Space, u64), PtxError> {
        if addr % size as u64 != 0 {
            return Err(self.misaligned(w, lane, pc, space, addr, size));
        }
        Ok(Self::resolve(space, addr))
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
        let (sp, off) = self.locate(w, lane, pc, space, addr, size)?;
        let n = size as usize;
        match sp {
            Space::Global => match self.gmem.slice(off, n) {
                Some(b) => Ok(read_le(b)),
                None => Err(self.oob(w, lane, pc, space, addr, size)),
            },
            Space::Shared => {
                let r = self.shared_range(w, lane, pc, (space, addr), off, size, track)?;
                Ok(read_le(&self.shared[r]))
            }
            Space::Local => match self.local_range(w, lane, off, size) {
                Some(o) => Ok(read_le(&self.local[o..o + n])),
                None => Err(self.oob(w, lane, pc, space, addr, size)),
            },
            Space::Param | Space::Const => {
                let buf: &[u8] = if sp == Space::Param {
                    &self.params
                } else {
                    self.consts
                };
                match buf.get(off as usize..(off as usize).saturating_add(n)) {
                    Some(b) if off < u32::MAX as u64 => Ok(read_le(b)),
                    _ => Err(self.oob(w, lane, pc, space, addr, size)),
                }
            }
            Space::Generic => Err(self.oob(w, lane, pc, space, addr, size)),
        }
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
        let (sp, off) = self.locate(w, lane, pc, space, addr, size)?;
        let n = size as usize;
        match sp {
            Space::Global => match self.gmem.slice_mut(off, n) {
                Some(b) => {
                    write_le(b, v);
                    Ok(())
                }
                None => Err(self.oob(w, lane, pc, space, addr, size)),
            },
            Space::Shared => {
                let track = if atomic { Track::Atomic } else { Track::Write };
                let r = self.shared_range(w, lane, pc, (space, addr), off, size, track)?;
                write_le(&mut self.shared[r], v);
                Ok(())
            }
            Space::Local => match self.local_range(w, lane, off, size) {
                Some(o) => {
                    write_le(&mut self.local[o..o + n], v);
                    Ok(())
                }
                None => Err(self.oob(w, lane, pc, space, addr, size)),
            },
            _ => Err(self.runtime(
                w,
                lane,
                pc,
                format!("store to read-only {sp} space at {addr:#x}"),
            )),
        }
    }

    /// Atomic read-modify-write; returns the old value. In shared memory the access is
    /// recorded once, as an atomic write (not as a plain read).
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
        let (sp, _) = Self::resolve(space, addr);
        if !matches!(sp, Space::Global | Space::Shared) {
            return Err(self.runtime(w, lane, pc, format!("atomic on {sp} space at {addr:#x}")));
        }
        let old = self.load(w, lane, pc, space, addr, size, Track::Untracked)?;
        self.store(w, lane, pc, space, addr, size, f(old), true)?;
        Ok(old)
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
