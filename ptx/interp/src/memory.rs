//! Simulated device global memory: a bump allocator of 256-byte-aligned, zeroed
//! allocations separated by guard gaps (addresses are never reused, so use-after-free
//! and small overruns are caught as out-of-bounds), bounds-checked lookup with a
//! one-entry cache, and little-endian scalar helpers shared by all state spaces.

use std::cell::Cell;

/// First device address handed out (well below the generic shared/local windows).
pub const GLOBAL_BASE: u64 = 1 << 40;
const ALIGN: u64 = 256;
const GUARD: u64 = 256;

#[derive(Debug)]
struct Alloc {
    base: u64,
    data: Vec<u8>,
}

#[derive(Debug)]
pub struct GlobalMem {
    allocs: Vec<Alloc>,
    next: u64,
    last: Cell<usize>,
}

impl Default for GlobalMem {
    fn default() -> Self {
        GlobalMem {
            allocs: Vec::new(),
            next: GLOBAL_BASE,
            last: Cell::new(0),
        }
    }
}

impl GlobalMem {
    /// Allocate `bytes` zeroed bytes; returns the base address.
    pub fn alloc(&mut self, bytes: usize) -> Option<u64> {
        let base = self.next;
        let span = (bytes as u64).max(1).checked_add(GUARD)?;
        self.next = base.checked_add(span.div_ceil(ALIGN) * ALIGN)?;
        if self.next >= super::ast::SHARED_WINDOW {
            return None;
        }
        let mut data = Vec::new();
        data.try_reserve_exact(bytes).ok()?;
        data.resize(bytes, 0);
        self.allocs.push(Alloc { base, data });
        Some(base)
    }

    /// Free the allocation starting exactly at `base`.
    pub fn free(&mut self, base: u64) -> bool {
        match self.allocs.binary_search_by_key(&base, |a| a.base) {
            Ok(i) => {
                self.allocs.remove(i);
                self.last.set(0);
                true
            }
            Err(_) => false,
        }
    }

    #[inline]
    fn find(&self, addr: u64, len: u64) -> Option<(usize, usize)> {
        let fits = |a: &Alloc| {
            addr >= a.base
                && addr
                    .checked_add(len)
                    .is_some_and(|e| e <= a.base + a.data.len() as u64)
        };
        let li = self.last.get();
        if let Some(a) = self.allocs.get(li) {
            if fits(a) {
                return Some((li, (addr - a.base) as usize));
            }
        }
        let i = match self.allocs.binary_search_by_key(&addr, |a| a.base) {
            Ok(i) => i,
            Err(0) => return None,
            Err(i) => i - 1,
        };
        let a = &self.allocs[i];
        if fits(a) {
            self.last.set(i);
            Some((i, (addr - a.base) as usize))
        } else {
            None
        }
    }

    #[inline]
    pub fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let (i, o) = self.find(addr, len as u64)?;
        Some(&self.allocs[i].data[o..o + len])
    }

    #[inline]
    pub fn slice_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let (i, o) = self.find(addr, len as u64)?;
        Some(&mut self.allocs[i].data[o..o + len])
    }
}

/// Read up to 8 little-endian bytes.
#[inline(always)]
pub fn read_le(b: &[u8]) -> u64 {
    match b.len() {
        1 => b[0] as u64,
        2 => u16::from_le_bytes([b[0], b[1]]) as u64,
        4 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64,
        8 => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        n => {
            let mut v = 0u64;
            for (i, x) in b.iter().enumerate().take(n.min(8)) {
                v |= (*x as u64) << (8 * i);
            }
            v
        }
    }
}

/// Write the low `b.len()` (≤ 8) bytes of `v` little-endian.
#[inline(always)]
pub fn write_le(b: &mut [u8], v: u64) {
    match b.len() {
        1 => b[0] = v as u8,
        2 => b.copy_from_slice(&(v as u16).to_le_bytes()),
        4 => b.copy_from_slice(&(v as u32).to_le_bytes()),
        8 => b.copy_from_slice(&v.to_le_bytes()),
        n => {
            for (i, x) in b.iter_mut().enumerate().take(n.min(8)) {
                *x = (v >> (8 * i)) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_bounds_and_free() {
        let mut g = GlobalMem::default();
        let a = g.alloc(100).unwrap();
        let b = g.alloc(8).unwrap();
        assert_eq!(a % 256, 0);
        assert!(b >= a + 100 + 256);
        assert!(g.slice(a, 100).is_some());
        assert!(g.slice(a + 97, 4).is_none());
        assert!(g.slice(a - 1, 1).is_none());
        assert!(g.slice(b, 8).is_some());
        assert!(g.free(a));
        assert!(!g.free(a));
        assert!(g.slice(a, 4).is_none());
        assert!(g.slice(b, 8).is_some());
    }
}
