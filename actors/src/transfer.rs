//! Handles travelling between actors, and the one explicit way data changes device. An envelope
//! carries a `DeviceTensor` together with the backend that owns it ([`Owned`]), so the actor that
//! receives it on another stream can move it: when both backends keep it in the same place (two
//! CPU streams: host memory) the handle is used as it is, otherwise it is a `download` on the
//! owner followed by an `upload` on the receiver — the only activation bytes that cross between
//! devices, counted by both backends' `DeviceCounters`. Expert results (`ExpertRows`) and routings
//! move the same way.

use std::sync::Arc;

use troupe_engine::backend::{ExpertRows, Routing};
use troupe_engine::{Backend, DeviceRouting, DeviceTensor, Result};

/// A tensor handle and the backend that made it.
#[derive(Clone)]
pub struct Owned {
    pub t: DeviceTensor,
    pub on: Arc<dyn Backend>,
}

impl std::fmt::Debug for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} of {}", self.t, self.on.name())
    }
}

impl Owned {
    pub fn new(t: DeviceTensor, on: Arc<dyn Backend>) -> Owned {
        Owned { t, on }
    }
    /// The tensor as a handle of `to`: the same handle when `to` keeps data where it is, else
    /// an explicit download from its owner and upload to `to`.
    pub fn to(&self, to: &dyn Backend) -> Result<DeviceTensor> {
        move_tensor(&self.t, &*self.on, to)
    }
    /// Bytes of data.
    pub fn bytes(&self) -> usize {
        self.t.bytes()
    }
}

/// `t` (made by `from`) as a handle `to` can read.
pub fn move_tensor(t: &DeviceTensor, from: &dyn Backend, to: &dyn Backend) -> Result<DeviceTensor> {
    if t.location() == to.location() {
        return Ok(t.clone());
    }
    to.upload(&from.download(t)?)
}

/// Expert outputs (made by `from`) as `ExpertRows` `to` can combine. Moved, they are the
/// `entries` (expert, routed row) rows in their order (by expert id, then row), nothing more: a
/// device may keep more rows behind them (padding) and its own index data, which do not move.
pub fn move_expert_rows(
    r: &ExpertRows,
    entries: usize,
    from: &dyn Backend,
    to: &dyn Backend,
) -> Result<ExpertRows> {
    if r.rows.location() == to.location() {
        return Ok(r.clone());
    }
    let rows = match r.rows.rows() == entries {
        true => r.rows.clone(),
        false => from.slice_rows(&r.rows, 0, entries)?,
    };
    Ok(ExpertRows {
        experts: r.experts.clone(),
        rows: move_tensor(&rows, from, to)?,
        index: None,
    })
}

/// A routing for an expert group: the router's handle when the group's backend reads it, else
/// the rows it needs on the host (their routing crosses to the group's device there).
#[derive(Clone, Debug)]
pub enum GroupRouting {
    Handle(DeviceRouting),
    Host { routing: Arc<Routing>, top_k: usize },
}

impl GroupRouting {
    /// The routing as a handle of `be`.
    pub fn on(&self, be: &dyn Backend) -> Result<DeviceRouting> {
        match self {
            GroupRouting::Handle(r) => Ok(r.clone()),
            GroupRouting::Host { routing, top_k } => be.routing_to_device(routing, *top_k),
        }
    }
    /// Bytes of a host routing crossing to a device (8 per slot); a handle moves nothing.
    pub fn bytes(&self) -> usize {
        match self {
            GroupRouting::Handle(_) => 0,
            GroupRouting::Host { routing, top_k } => routing.ids.len() * top_k * 8,
        }
    }
}
