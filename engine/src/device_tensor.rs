//! Handles to data a backend owns: `DeviceTensor` (an f32 activation matrix), `DeviceRouting`
//! (a router's decision), `KvStore` (one layer's paged KV cache storage) and the `BlockTableRef`
//! through which a sequence names its pages. Executors and actors pass these handles around;
//! only the backend that made a handle reads the data behind it. On the CPU backend the data is
//! host memory and nothing is copied; on a GPU backend it is a device buffer, and data crosses
//! host↔device only through `Backend::{upload, download, argmax, routing_to_host, ...}`, which
//! count the bytes they move (`DeviceCounters`).

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::backend::Routing;
use crate::tensor::Tensor;

/// Which backend instance made a device handle (host handles need none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendId(u64);

impl BackendId {
    /// A new id, distinct from every other in this process.
    pub fn fresh() -> BackendId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        BackendId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Where the data of a handle lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location {
    /// Host memory: any host backend (the CPU backend, a caller's host backend) reads it.
    Host,
    /// A buffer of the backend with this id.
    Device(BackendId),
}

/// A buffer a device backend keeps behind a handle (it downcasts to its own type).
pub type DeviceBuf = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
enum Store {
    Host(Tensor),
    Device { owner: BackendId, buf: DeviceBuf },
}

/// An f32 row-major `[rows, cols]` activation owned by a backend. Cloning shares the data.
#[derive(Clone)]
pub struct DeviceTensor {
    rows: usize,
    cols: usize,
    store: Store,
}

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceTensor[{}x{} @ {:?}]",
            self.rows,
            self.cols,
            self.location()
        )
    }
}

impl DeviceTensor {
    /// A host tensor as a handle (zero-copy); what host backends return.
    pub fn from_host(t: Tensor) -> DeviceTensor {
        DeviceTensor {
            rows: t.rows(),
            cols: t.cols(),
            store: Store::Host(t),
        }
    }
    /// A device buffer of backend `owner` holding `rows × cols` f32 values.
    pub fn on_device(owner: BackendId, rows: usize, cols: usize, buf: DeviceBuf) -> DeviceTensor {
        DeviceTensor {
            rows,
            cols,
            store: Store::Device { owner, buf },
        }
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes of data (f32).
    pub fn bytes(&self) -> usize {
        self.rows * self.cols * 4
    }
    pub fn location(&self) -> Location {
        match &self.store {
            Store::Host(_) => Location::Host,
            Store::Device { owner, .. } => Location::Device(*owner),
        }
    }
    /// The host data, when the handle is host memory (host backends only; everyone else goes
    /// through `Backend::download`).
    pub fn host(&self) -> Option<&Tensor> {
        match &self.store {
            Store::Host(t) => Some(t),
            Store::Device { .. } => None,
        }
    }
    /// The device buffer, when `owner` made this handle and the buffer is a `B`.
    pub fn device_buf<B: Any>(&self, owner: BackendId) -> Option<&B> {
        match &self.store {
            Store::Device { owner: o, buf } if *o == owner => buf.downcast_ref::<B>(),
            _ => None,
        }
    }
    /// The shared device buffer (to keep it alive beside another handle).
    pub fn device_arc(&self, owner: BackendId) -> Option<&DeviceBuf> {
        match &self.store {
            Store::Device { owner: o, buf } if *o == owner => Some(buf),
            _ => None,
        }
    }
}

#[derive(Clone)]
enum RoutingStore {
    Host(Arc<Routing>),
    Device { owner: BackendId, buf: DeviceBuf },
}

/// A router's decision for `rows` rows, `top_k` slots each (expert ids ascending per row, and
/// their weights), owned by a backend like a `DeviceTensor`.
#[derive(Clone)]
pub struct DeviceRouting {
    rows: usize,
    top_k: usize,
    store: RoutingStore,
}

impl std::fmt::Debug for DeviceRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceRouting[{}x{}]", self.rows, self.top_k)
    }
}

impl DeviceRouting {
    /// A host routing as a handle (every row must have `top_k` slots).
    pub fn from_host(r: Routing, top_k: usize) -> DeviceRouting {
        DeviceRouting {
            rows: r.ids.len(),
            top_k,
            store: RoutingStore::Host(Arc::new(r)),
        }
    }
    pub fn on_device(owner: BackendId, rows: usize, top_k: usize, buf: DeviceBuf) -> Self {
        DeviceRouting {
            rows,
            top_k,
            store: RoutingStore::Device { owner, buf },
        }
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn top_k(&self) -> usize {
        self.top_k
    }
    /// Where the routing lives.
    pub fn location(&self) -> Location {
        match &self.store {
            RoutingStore::Host(_) => Location::Host,
            RoutingStore::Device { owner, .. } => Location::Device(*owner),
        }
    }
    pub fn host(&self) -> Option<&Routing> {
        match &self.store {
            RoutingStore::Host(r) => Some(r),
            RoutingStore::Device { .. } => None,
        }
    }
    pub fn device_buf<B: Any>(&self, owner: BackendId) -> Option<&B> {
        match &self.store {
            RoutingStore::Device { owner: o, buf } if *o == owner => buf.downcast_ref::<B>(),
            _ => None,
        }
    }
}

/// The row layout of one layer's cache. Each cached position is one row
/// `[key (key_width) | rope (rope_width) | value (value_width)]`:
/// - MLA: key = the normalised latent (`kv_lora`, one kv head), rope = the shared rope key,
///   value_width = 0 (the values are the key columns: absorbed attention's values are the latent);
/// - GQA: key = `kv_heads × head_dim`, rope_width = 0, value = `kv_heads × head_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// Positions per page: a power of two.
    pub page_tokens: usize,
    pub key_width: usize,
    pub rope_width: usize,
    pub value_width: usize,
}

impl KvLayout {
    /// f32 values per cached position.
    pub fn row_width(&self) -> usize {
        self.key_width + self.rope_width + self.value_width
    }
}

/// One layer's page storage on a backend: `capacity` pages of `layout.page_tokens` rows. Page
/// allocation (which sequence owns which page) is the engine's (`model::kv`); the backend only
/// stores rows and reads them in place.
#[derive(Clone)]
pub struct KvStore {
    pub layout: KvLayout,
    pub capacity: usize,
    pub owner: Location,
    pub buf: DeviceBuf,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KvStore[{:?} x {} pages @ {:?}]",
            self.layout, self.capacity, self.owner
        )
    }
}

/// A sequence's pages in one pool, as a backend sees them: page `i` holds positions
/// `i·page_tokens ..`. `id` names the table for the life of the sequence and `generation`
/// changes whenever an entry other than a new last one changes (truncate, free), so a device
/// backend may keep a device copy and upload only appended entries.
#[derive(Clone, Copy, Debug)]
pub struct BlockTableRef<'a> {
    pub id: u64,
    pub generation: u64,
    pub pages: &'a [u32],
}

/// What a backend moved and launched so far (cumulative; callers take differences).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    pub h2d_bytes: u64,
    pub d2h_bytes: u64,
    /// Launches per kernel name (device backends) or per op (the CPU backend).
    pub launches: BTreeMap<String, u64>,
}

impl DeviceCounters {
    /// `self - earlier`, per field (launch counts of kernels absent earlier count from zero).
    pub fn since(&self, earlier: &DeviceCounters) -> DeviceCounters {
        let launches = self
            .launches
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.saturating_sub(*earlier.launches.get(k).unwrap_or(&0)),
                )
            })
            .filter(|(_, v)| *v > 0)
            .collect();
        DeviceCounters {
            h2d_bytes: self.h2d_bytes.saturating_sub(earlier.h2d_bytes),
            d2h_bytes: self.d2h_bytes.saturating_sub(earlier.d2h_bytes),
            launches,
        }
    }
}
