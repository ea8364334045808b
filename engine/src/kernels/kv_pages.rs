//! The CPU backend's KV-cache storage: `capacity` pages of `page_tokens` rows of one layer's
//! `KvLayout`, each page allocated on first write (the capacity is a cap, not an allocation) and
//! behind its own lock, so sequences writing different pages never wait for each other. Rows are
//! written and read in place; `kv_read` gathers a sequence's rows into one tensor (the naive MLA
//! prefill) and `page_views` lends the pages of a table to the paged attention kernel.

use std::sync::{OnceLock, RwLock, RwLockReadGuard};

use crate::device_tensor::{BlockTableRef, KvLayout};
use crate::error::{EngineError, Result};
use crate::kernels::aligned::AlignedVec;
use crate::tensor::Tensor;

/// One page: allocated on first write, then locked per access. Its values start on a 64-byte
/// boundary, so that a row whose width is a multiple of 16 values (ds-v3-mini's latent rows:
/// 288) occupies whole cache lines and the attention kernels' 64-byte loads never straddle two.
type PageSlot = OnceLock<RwLock<AlignedVec>>;

/// Host pages of one layer's cache.
pub struct HostKvPages {
    layout: KvLayout,
    pages: Box<[PageSlot]>,
}

fn kv_err(op: &str, m: impl Into<String>) -> EngineError {
    EngineError::kernel(op, m)
}

impl HostKvPages {
    /// Storage for `capacity` pages (none allocated yet; `OutOfMemory` when even the page
    /// directory does not fit).
    pub fn new(layout: KvLayout, capacity: usize) -> Result<HostKvPages> {
        let page_values = layout.page_tokens.checked_mul(layout.row_width());
        if !layout.page_tokens.is_power_of_two() || page_values.is_none_or(|v| v == 0) {
            return Err(kv_err(
                "kv_store",
                format!("{layout:?}: page_tokens must be a power of two and rows non-empty"),
            ));
        }
        let mut pages = Vec::new();
        pages
            .try_reserve_exact(capacity)
            .map_err(|_| EngineError::OutOfMemory {
                what: format!("a KV store directory of {capacity} pages"),
                bytes: (capacity as u64).saturating_mul(std::mem::size_of::<PageSlot>() as u64),
            })?;
        pages.extend((0..capacity).map(|_| OnceLock::new()));
        Ok(HostKvPages {
            layout,
            pages: pages.into_boxed_slice(),
        })
    }

    /// Page `id`, allocated (zeroed) on first use; `OutOfMemory` when the allocation fails.
    fn page_for_write(&self, id: u32) -> Result<&RwLock<AlignedVec>> {
        let slot = self.page("kv_write", id)?;
        if let Some(p) = slot.get() {
            return Ok(p);
        }
        let n = self.layout.page_tokens * self.layout.row_width();
        let data = AlignedVec::try_zeroed(n).ok_or_else(|| EngineError::OutOfMemory {
            what: format!("a KV cache page of {n} values"),
            bytes: 4 * n as u64,
        })?;
        Ok(slot.get_or_init(|| RwLock::new(data)))
    }

    /// The entry of page `id` (an error when outside the capacity).
    fn page(&self, op: &str, id: u32) -> Result<&PageSlot> {
        self.pages.get(id as usize).ok_or_else(|| {
            kv_err(
                op,
                format!(
                    "page {id} is outside the store's {} pages",
                    self.pages.len()
                ),
            )
        })
    }

    /// Writes rows `start..start + key.rows()` of the sequence owning `table`: row `i` is
    /// `[key[i] | rope[i] | value[i]]`.
    pub fn write(
        &self,
        table: BlockTableRef<'_>,
        start: usize,
        key: &Tensor,
        rope: Option<&Tensor>,
        value: Option<&Tensor>,
    ) -> Result<()> {
        let l = self.layout;
        let t = key.rows();
        let width = |p: Option<&Tensor>| p.map_or(0, |p| p.cols());
        let rows_ok = |p: Option<&Tensor>| p.is_none_or(|p| p.rows() == t);
        if key.cols() != l.key_width
            || width(rope) != l.rope_width
            || width(value) != l.value_width
            || !rows_ok(rope)
            || !rows_ok(value)
        {
            return Err(kv_err(
                "kv_write",
                format!(
                    "{t} rows of widths {}/{}/{} for layout {l:?}",
                    key.cols(),
                    width(rope),
                    width(value)
                ),
            ));
        }
        let pt = l.page_tokens;
        let row_w = l.row_width();
        let mut pos = start;
        while pos < start + t {
            let page_no = pos / pt;
            let id = *table.pages.get(page_no).ok_or_else(|| {
                kv_err(
                    "kv_write",
                    format!("position {pos} has no page in the table"),
                )
            })?;
            let page = self.page_for_write(id)?;
            let mut data = page.write().unwrap_or_else(|p| p.into_inner());
            let end = (start + t).min((page_no + 1) * pt);
            for p in pos..end {
                let i = p - start;
                let row = &mut data[(p % pt) * row_w..(p % pt + 1) * row_w];
                row[..l.key_width].copy_from_slice(key.row(i));
                if let Some(r) = rope {
                    row[l.key_width..l.key_width + l.rope_width].copy_from_slice(r.row(i));
                }
                if let Some(v) = value {
                    row[l.key_width + l.rope_width..].copy_from_slice(v.row(i));
                }
            }
            pos = end;
        }
        Ok(())
    }

    /// Read locks on the pages holding positions `0..len`, in table order.
    pub fn lock_pages(
        &self,
        op: &str,
        table: BlockTableRef<'_>,
        len: usize,
    ) -> Result<Vec<RwLockReadGuard<'_, AlignedVec>>> {
        let n = len.div_ceil(self.layout.page_tokens);
        if table.pages.len() < n {
            return Err(kv_err(
                op,
                format!(
                    "{len} positions need {n} pages, the table has {}",
                    table.pages.len()
                ),
            ));
        }
        table.pages[..n]
            .iter()
            .map(|&id| {
                let page = self.page(op, id)?.get().ok_or_else(|| {
                    kv_err(op, format!("page {id} is read before any row was written"))
                })?;
                Ok(page.read().unwrap_or_else(|p| p.into_inner()))
            })
            .collect()
    }

    /// Positions `0..len` as one `[len, row_width]` tensor (a copy).
    pub fn read(&self, table: BlockTableRef<'_>, len: usize) -> Result<Tensor> {
        let row_w = self.layout.row_width();
        let pages = self.lock_pages("kv_read", table, len)?;
        let mut out = Vec::with_capacity(len * row_w);
        let mut left = len;
        for p in &pages {
            let take = left.min(self.layout.page_tokens);
            out.extend_from_slice(&p[..take * row_w]);
            left -= take;
        }
        Tensor::matrix(len, row_w, out)
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Pages allocated so far (bytes held = this × page bytes).
    pub fn allocated_pages(&self) -> usize {
        self.pages.iter().filter(|p| p.get().is_some()).count()
    }
}
