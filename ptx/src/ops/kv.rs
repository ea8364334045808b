//! The paged KV cache on the device: `kv_store` (one buffer of `capacity × page_tokens` rows of
//! `[key | rope | value]`), `kv_write` (rows scattered into their pages by `copy_rows_b32` through
//! the block table), `kv_read` (a sequence's positions gathered back into rows), and the device
//! copies of block tables: one per `BlockTableRef::id`, to which only appended entries are
//! uploaded (4 bytes per new page) unless the table's `generation` changed.

use std::collections::HashMap;
use std::sync::Arc;

use troupe_engine::device_tensor::{BlockTableRef, DeviceBuf, KvLayout, KvStore, Location};
use troupe_engine::{DeviceTensor, EngineError, Result};

use super::{lock, Copy2d, GpuBackend};
use crate::device::{u32_bytes, Device};
use crate::error::GpuResult;

/// Device copies of block tables kept before the map is cleared (sequences that ended leave
/// their entry behind; the next use of a live one re-uploads it).
const MAX_TABLES: usize = 4096;

/// One block table's device copy: `len` entries valid, room for `cap`.
struct TableCopy<B> {
    generation: u64,
    len: usize,
    cap: usize,
    buf: B,
}

/// The device copies of block tables, by table id.
pub(crate) struct BlockTables<B> {
    map: HashMap<u64, TableCopy<B>>,
}

impl<B> Default for BlockTables<B> {
    fn default() -> Self {
        BlockTables {
            map: HashMap::new(),
        }
    }
}

/// log2 of a layout's page size (a power of two).
pub(super) fn page_shift(layout: &KvLayout) -> Result<usize> {
    if !layout.page_tokens.is_power_of_two() {
        return Err(EngineError::Invalid(format!(
            "KV page size {} is not a power of two",
            layout.page_tokens
        )));
    }
    Ok(layout.page_tokens.trailing_zeros() as usize)
}

impl<D: Device> GpuBackend<D> {
    /// The page storage behind `store`, or `WrongDevice`.
    pub(super) fn store_buf<'a>(&self, op: &str, store: &'a KvStore) -> Result<&'a D::Buf> {
        match store.owner {
            Location::Device(id) if id == self.id => store
                .buf
                .downcast_ref::<D::Buf>()
                .ok_or_else(|| self.wrong_device(op, store.owner)),
            other => Err(self.wrong_device(op, other)),
        }
    }

    /// Checks that `table` covers positions `0..end` with pages inside the store.
    pub(super) fn check_table(
        &self,
        op: &str,
        store: &KvStore,
        table: BlockTableRef<'_>,
        end: usize,
    ) -> Result<()> {
        let needed = end.div_ceil(store.layout.page_tokens.max(1));
        if needed > table.pages.len() {
            return Err(EngineError::Invalid(format!(
                "{op}: positions 0..{end} need {needed} pages, block table {} has {}",
                table.id,
                table.pages.len()
            )));
        }
        if let Some(p) = table.pages[..needed]
            .iter()
            .find(|&&p| p as usize >= store.capacity)
        {
            return Err(EngineError::Invalid(format!(
                "{op}: block table {} names page {p} of a pool of {} pages",
                table.id, store.capacity
            )));
        }
        Ok(())
    }

    /// Runs `f` with the device copy of `table`, first uploading what changed since last time.
    pub(super) fn with_table<R>(
        &self,
        table: BlockTableRef<'_>,
        f: impl FnOnce(&D::Buf) -> GpuResult<R>,
    ) -> GpuResult<R> {
        let mut tabs = lock(&self.tables, "block tables")?;
        let n = table.pages.len();
        let reuse = tabs
            .map
            .get(&table.id)
            .is_some_and(|c| c.generation == table.generation && c.len <= n);
        if !reuse {
            if tabs.map.len() >= MAX_TABLES {
                tabs.map.clear();
            }
            let cap = n.next_power_of_two().max(16);
            let mut buf = self.dev.alloc(cap * 4)?;
            self.dev.write(&mut buf, 0, &u32_bytes(table.pages))?;
            tabs.map.insert(
                table.id,
                TableCopy {
                    generation: table.generation,
                    len: n,
                    cap,
                    buf,
                },
            );
        }
        let Some(copy) = tabs.map.get_mut(&table.id) else {
            return Err(crate::error::GpuError::launch("block-table", "table lost"));
        };
        if copy.len < n {
            if n > copy.cap {
                // Grow on the device: the entries already there are copied, not re-uploaded.
                let cap = n.next_power_of_two();
                let grown = self.dev.alloc(cap * 4)?;
                self.copy(&grown, &copy.buf, &Copy2d::rows(1, copy.len, 0, 0))?;
                copy.buf = grown;
                copy.cap = cap;
            }
            self.dev.write(
                &mut copy.buf,
                copy.len * 4,
                &u32_bytes(&table.pages[copy.len..]),
            )?;
            copy.len = n;
        }
        f(&copy.buf)
    }

    pub(super) fn kv_store_op(&self, layout: KvLayout, capacity: usize) -> Result<KvStore> {
        page_shift(&layout)?;
        let buf =
            self.on_device(|| self.alloc_f32(capacity * layout.page_tokens * layout.row_width()))?;
        let buf: DeviceBuf = Arc::new(buf);
        Ok(KvStore {
            layout,
            capacity,
            owner: Location::Device(self.id),
            buf,
        })
    }

    pub(super) fn kv_write_op(
        &self,
        store: &KvStore,
        table: BlockTableRef<'_>,
        start: usize,
        key: &DeviceTensor,
        rope: Option<&DeviceTensor>,
        value: Option<&DeviceTensor>,
    ) -> Result<()> {
        let sb = self.store_buf("kv_write", store)?;
        let lay = store.layout;
        let shift = page_shift(&lay)?;
        let t = key.rows();
        let mut parts = vec![(self.buf("kv_write", key)?, key, lay.key_width, 0, "key")];
        for (part, width, col, what) in [
            (rope, lay.rope_width, lay.key_width, "rope"),
            (
                value,
                lay.value_width,
                lay.key_width + lay.rope_width,
                "value",
            ),
        ] {
            match part {
                Some(p) => parts.push((self.buf("kv_write", p)?, p, width, col, what)),
                None if width > 0 => {
                    return Err(EngineError::Invalid(format!(
                        "kv_write: the layout has a {what} part of width {width} and none was given"
                    )))
                }
                None => {}
            }
        }
        for &(_, p, width, _, what) in &parts {
            if p.rows() != t || p.cols() != width {
                return Err(EngineError::ShapeMismatch {
                    tensor: format!("kv_write {what}"),
                    expected: vec![t, width],
                    found: vec![p.rows(), p.cols()],
                });
            }
        }
        self.check_table("kv_write", store, table, start + t)?;
        if t == 0 {
            return Ok(());
        }
        self.on_device(|| {
            self.with_table(table, |tb| {
                for &(b, _, width, col, _) in &parts {
                    let c = Copy2d {
                        dst_stride: lay.row_width(),
                        dst_col: col,
                        dst_map: Some(tb),
                        page_shift: shift,
                        ..Copy2d::rows(t, width, 0, start)
                    };
                    self.copy(sb, b, &c)?;
                }
                Ok(())
            })
        })
    }

    pub(super) fn kv_read_op(
        &self,
        store: &KvStore,
        table: BlockTableRef<'_>,
        len: usize,
    ) -> Result<DeviceTensor> {
        let sb = self.store_buf("kv_read", store)?;
        let lay = store.layout;
        let shift = page_shift(&lay)?;
        self.check_table("kv_read", store, table, len)?;
        let w = lay.row_width();
        let out = self.on_device(|| {
            let out = self.alloc_f32(len * w)?;
            if len == 0 {
                return Ok(out);
            }
            self.with_table(table, |tb| {
                let c = Copy2d {
                    src_map: Some(tb),
                    page_shift: shift,
                    ..Copy2d::rows(len, w, 0, 0)
                };
                self.copy(&out, sb, &c)
            })?;
            Ok(out)
        })?;
        Ok(self.tensor(len, w, out))
    }
}
