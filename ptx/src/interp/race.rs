//! Shared-memory race detector. Keeps, per shared byte, the last writer and up to two
//! distinct readers of the current barrier epoch. Two accesses by different threads to
//! the same byte in the same epoch, at least one a write, are a race — except
//! atomic/atomic pairs, and same-warp pairs separated by a `bar.warp.sync`.
//! Epochs are global counters: each CTA start and each completed `bar.sync` opens a new
//! one, so the shadow memory never needs clearing.

use super::error::RaceAccess;

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

#[derive(Debug, Clone, Copy, Default)]
struct Shadow {
    w: Acc,
    r1: Acc,
    r2: Acc,
}

/// The two conflicting accesses (linear thread indices) of a detected race.
#[derive(Debug, Clone, Copy)]
pub struct Conflict {
    pub address: u64,
    pub first: (u32, u32, bool),
    pub second: (u32, u32, bool),
}

#[derive(Debug, Default)]
pub struct RaceDetector {
    shadow: Vec<Shadow>,
    pub epoch: u32,
}

impl RaceDetector {
    pub fn new(shared_bytes: usize) -> Self {
        RaceDetector {
            shadow: vec![Shadow::default(); shared_bytes],
            epoch: 1,
        }
    }

    /// Start a new barrier epoch.
    pub fn new_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1).max(1);
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
        let epoch = self.epoch;
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
            let report = |p: &Acc| Conflict {
                address: b,
                first: (p.tid - 1, p.line, p.write),
                second: (tid, line, write),
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
}

/// Convert a linear thread index into a `RaceAccess` for the error report.
pub fn to_access(block: (u32, u32, u32), (lin, line, write): (u32, u32, bool)) -> RaceAccess {
    let x = lin % block.0;
    let y = (lin / block.0) % block.1;
    let z = lin / (block.0 * block.1);
    RaceAccess {
        tid: (x, y, z),
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
}
