//! Shared-memory race detector. Keeps, per shared byte, the last writer and up to two
//! distinct readers of the current barrier epoch. Two accesses by different threads to
//! the same byte in the same epoch, at least one a write, are a race — except
//! atomic/atomic pairs, and same-warp pairs separated by a `bar.warp.sync`.
//! Epochs are global counters: each CTA start and each completed `bar.sync` opens a new
//! one, so the shadow memory never needs clearing.
//!
//! `cp.async` writes are asynchronous: the destination may be written at any time between
//! the issue and the issuing thread's completing `cp.async.wait_group` / `wait_all`. Each
//! destination byte therefore carries a *pending* mark from issue to completion. The issue
//! is checked like a write against the accesses of the issue epoch so far; while the mark
//! is set, **any** access to the byte is a hazard (another thread: a race, whatever epochs
//! lie in between; the issuing thread itself: a stale access, [`Conflict::own_pending`]);
//! the completion is recorded as an ordinary write of the wait's epoch, so accesses by
//! other threads after the wait stay racy until the next barrier.

use super::error::{tid_of, RaceAccess};

#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    /// Linear thread index + 1 (0 = no access recorded).
    tid: u32,
    line: u32,
    epoch: u32,
    wepoch: u32,
    atomic: bool,
    write: bool,
}

/// The in-flight `cp.async` writing a byte (from issue to the issuing thread's wait).
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    /// Linear thread index + 1 (0 = none).
    tid: u32,
    line: u32,
    /// CTA generation of the mark (marks of earlier CTAs are stale).
    cta: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Shadow {
    w: Acc,
    r1: Acc,
    r2: Acc,
    pend: Pending,
}

/// The two conflicting accesses (linear thread index, line, write) of a detected hazard.
#[derive(Debug, Clone, Copy)]
pub struct Conflict {
    pub address: u64,
    pub first: (u32, u32, bool),
    pub second: (u32, u32, bool),
    /// `first` is an in-flight `cp.async` of the *same* thread as `second`: an access to
    /// the destination before the wait that completes the copy (not a race between
    /// threads, but stale data / a write the copy will overwrite).
    pub own_pending: bool,
}

#[derive(Debug, Default)]
pub struct RaceDetector {
    shadow: Vec<Shadow>,
    pub epoch: u32,
    cta: u32,
}

impl RaceDetector {
    pub fn new(shared_bytes: usize) -> Self {
        RaceDetector {
            shadow: vec![Shadow::default(); shared_bytes],
            epoch: 1,
            cta: 1,
        }
    }

    /// Start a new barrier epoch.
    pub fn new_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1).max(1);
    }

    /// Start a new CTA: a new epoch, and every pending `cp.async` mark is dropped.
    pub fn new_cta(&mut self) {
        self.cta = self.cta.wrapping_add(1).max(1);
        self.new_epoch();
    }

    /// Record an access of `size` bytes at shared offset `addr` by linear thread `tid`
    /// whose warp is in warp-epoch `wepoch`.
    #[allow(clippy::too_many_arguments)]
    pub fn access(
        &mut self,
        addr: u64,
        size: u32,
        tid: u32,
        wepoch: u32,
        line: u32,
        write: bool,
        atomic: bool,
    ) -> Result<(), Conflict> {
        let me = Acc {
            tid: tid + 1,
            line,
            epoch: self.epoch,
            wepoch,
            atomic,
            write,
        };
        let (epoch, cta) = (self.epoch, self.cta);
        let conflicts = |p: &Acc| -> bool {
            p.tid != 0
                && p.epoch == epoch
                && p.tid != me.tid
                && !(p.atomic && atomic)
                && !((p.tid - 1) / 32 == tid / 32 && p.wepoch != wepoch)
        };
        for b in addr..addr + size as u64 {
            let Some(s) = self.shadow.get_mut(b as usize) else {
                continue;
            };
            if s.pend.tid != 0 && s.pend.cta == cta {
                return Err(Conflict {
                    address: b,
                    first: (s.pend.tid - 1, s.pend.line, true),
                    second: (tid, line, write),
                    own_pending: s.pend.tid == me.tid,
                });
            }
            let report = |p: &Acc| Conflict {
                address: b,
                first: (p.tid - 1, p.line, p.write),
                second: (tid, line, write),
                own_pending: false,
            };
            if conflicts(&s.w) {
                return Err(report(&s.w));
            }
            if write {
                if conflicts(&s.r1) {
                    return Err(report(&s.r1));
                }
                if conflicts(&s.r2) {
                    return Err(report(&s.r2));
                }
                s.w = me;
                s.r1 = Acc::default();
                s.r2 = Acc::default();
            } else if s.r1.tid == 0 || s.r1.epoch != epoch || s.r1.tid == me.tid {
                s.r1 = me;
            } else if s.r2.tid == 0 || s.r2.epoch != epoch || s.r2.tid == me.tid {
                s.r2 = me;
            }
        }
        Ok(())
    }

    /// Issue of a `cp.async` of `size` bytes to `addr` by thread `tid`: checked as a write
    /// against the epoch so far (and against other in-flight copies), then marked pending.
    pub fn issue_async(
        &mut self,
        addr: u64,
        size: u32,
        tid: u32,
        wepoch: u32,
        line: u32,
    ) -> Result<(), Conflict> {
        self.access(addr, size, tid, wepoch, line, true, false)?;
        let pend = Pending {
            tid: tid + 1,
            line,
            cta: self.cta,
        };
        for s in self.bytes(addr, size) {
            s.pend = pend;
        }
        Ok(())
    }

    /// Completion (at the issuing thread's wait) of a copy issued by `tid`: the pending
    /// mark is cleared and the write recorded in the current epoch.
    pub fn complete_async(
        &mut self,
        addr: u64,
        size: u32,
        tid: u32,
        wepoch: u32,
        line: u32,
    ) -> Result<(), Conflict> {
        for s in self.bytes(addr, size) {
            if s.pend.tid == tid + 1 {
                s.pend = Pending::default();
            }
        }
        self.access(addr, size, tid, wepoch, line, true, false)
    }

    fn bytes(&mut self, addr: u64, size: u32) -> impl Iterator<Item = &mut Shadow> {
        let lo = (addr as usize).min(self.shadow.len());
        let hi = (addr as usize)
            .saturating_add(size as usize)
            .min(self.shadow.len());
        self.shadow[lo..hi].iter_mut()
    }
}

/// Convert a linear thread index into a `RaceAccess` for the error report.
pub fn to_access(block: (u32, u32, u32), (lin, line, write): (u32, u32, bool)) -> RaceAccess {
    RaceAccess {
        tid: tid_of(block, lin),
        line,
        write,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_conflict_and_epochs() {
        let mut r = RaceDetector::new(64);
        r.access(0, 4, 0, 0, 10, true, false).unwrap();
        r.access(0, 4, 0, 0, 11, false, false).unwrap(); // same thread
        let c = r.access(2, 1, 40, 0, 12, false, false).unwrap_err();
        assert_eq!(c.first, (0, 10, true));
        assert_eq!(c.second, (40, 12, false));
        r.new_epoch();
        r.access(2, 1, 40, 0, 12, false, false).unwrap();
        r.access(2, 1, 41, 0, 13, false, false).unwrap();
        assert!(r.access(2, 1, 0, 0, 14, true, false).is_err());
    }

    #[test]
    fn atomics_and_warp_sync() {
        let mut r = RaceDetector::new(8);
        r.access(0, 4, 0, 0, 1, true, true).unwrap();
        r.access(0, 4, 33, 0, 1, true, true).unwrap();
        assert!(r.access(0, 4, 34, 0, 2, false, false).is_err());
        r.new_epoch();
        r.access(4, 4, 1, 5, 1, true, false).unwrap();
        r.access(4, 4, 2, 6, 2, false, false).unwrap(); // same warp, after bar.warp.sync
        assert!(r.access(4, 4, 3, 6, 3, true, false).is_err()); // reader 2 in same warp epoch
    }

    #[test]
    fn cp_async_write_spans_issue_to_wait() {
        let mut r = RaceDetector::new(64);
        r.issue_async(0, 16, 0, 0, 7).unwrap();
        // another thread, two barriers later, still before thread 0's wait: a race
        r.new_epoch();
        r.new_epoch();
        let c = r.access(8, 4, 40, 0, 9, false, false).unwrap_err();
        assert_eq!(
            (c.first, c.second, c.own_pending),
            ((0, 7, true), (40, 9, false), false)
        );
        // the issuing thread itself: a stale access, not a race
        let c = r.access(4, 4, 0, 0, 10, false, false).unwrap_err();
        assert!(c.own_pending && c.address == 4);
        // a second copy into the in-flight bytes, by anyone, is a hazard too
        assert!(r.issue_async(0, 16, 0, 0, 11).unwrap_err().own_pending);
        assert!(!r.issue_async(0, 16, 1, 0, 11).unwrap_err().own_pending);
        // bytes next to the copy are free
        r.access(16, 4, 40, 0, 12, true, false).unwrap();
        // after the wait: the issuing thread reads freely, other threads need a barrier
        r.complete_async(0, 16, 0, 0, 7).unwrap();
        r.access(0, 16, 0, 0, 13, false, false).unwrap();
        assert!(
            !r.access(0, 4, 40, 0, 14, false, false)
                .unwrap_err()
                .own_pending
        );
        r.new_epoch();
        r.access(0, 4, 40, 0, 14, false, false).unwrap();
    }

    #[test]
    fn pending_marks_end_with_the_cta() {
        let mut r = RaceDetector::new(32);
        r.issue_async(0, 16, 3, 0, 7).unwrap(); // never waited for (thread exited)
        r.new_epoch();
        assert!(r.access(0, 4, 4, 0, 8, false, false).is_err());
        r.new_cta();
        r.access(0, 4, 4, 0, 8, false, false).unwrap();
    }
}
