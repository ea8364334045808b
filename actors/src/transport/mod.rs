//! The transport seam: how a router's rows reach expert groups living in **another process**
//! (another rank of the deployment) and how their outputs come back. One message per (MoE
//! layer, micro-batch, destination rank) carries every row that rank's groups need, with their
//! routing; one reply carries the outputs (`wire.rs`) — never one message per row. A rank's
//! expert work is answered by an [`ExpertServer`] (the engine's own `MoeBlock::experts`, so the
//! bits are the reference's whatever the placement).
//!
//! Implementations:
//! * [`SimulatedTransport`] — every "rank" in this process; bytes are encoded and decoded as on
//!   the wire and timed by the `[placement.link]` model (`link.rs`) when one is given.
//! * `MpiTransport` (`transport/mpi.rs`, cargo feature `mpi`) — Open MPI point-to-point
//!   messages between the processes `mpirun`/`srun` started.
//!
//! Bytes on the wire are counted per peer ([`PeerStats`]): Prometheus
//! `troupe_transport_bytes_total{peer,direction}` / `troupe_transport_messages_total{peer}`, and
//! one trace track per peer (pid 3) with a span per request (send → reply) that says how long the
//! peer had it ([`Served`]), so the time on the wire is the span minus that; work this rank
//! computed for other ranks is on pid 4, one track per asking rank.

#[cfg(feature = "mpi")]
pub mod mpi;
mod server;
mod simulated;
pub mod wire;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub use server::ExpertServer;
pub use simulated::SimulatedTransport;
pub use wire::{monotonic_ns, ExpertReply, ExpertRequest, Message, Served, WireError};

use crate::error::Result;
use crate::trace::Tracer;

/// A boxed future of a transport call.
pub type Call = Pin<Box<dyn Future<Output = Result<ExpertReply>> + Send>>;

/// Moves a node's share of an MoE layer to that node and its outputs back.
pub trait Transport: Send + Sync + 'static {
    /// `simulated` or `mpi` (traces, errors).
    fn kind(&self) -> &'static str;
    /// This process's rank (its node in the placement).
    fn rank(&self) -> usize;
    /// Ranks in the deployment (= the placement's `nodes`).
    fn nodes(&self) -> usize;
    /// Sends `req` to rank `node` and resolves to its outputs (or the error that rank hit).
    fn call(&self, node: usize, req: ExpertRequest) -> Call;
    /// Bytes and messages per peer so far.
    fn stats(&self) -> &PeerStats;
}

/// Where attention runs in a deployment over several ranks (`[placement] attention`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionMode {
    /// Stages (attention, routers, shared experts, dense MLPs) on node 0; expert groups on any
    /// node ("experts on other nodes").
    #[default]
    Staged,
    /// Every rank runs attention for its own requests (request i on rank i mod nodes) and holds
    /// the expert groups placed on its node; each MoE layer exchanges rows with every rank
    /// owning experts they are routed to.
    DataParallel,
}

impl AttentionMode {
    /// `[placement] attention`: `"staged"` (default) or `"data-parallel"`.
    pub fn parse(s: &str) -> Result<AttentionMode> {
        match s {
            "staged" => Ok(AttentionMode::Staged),
            "data-parallel" => Ok(AttentionMode::DataParallel),
            other => Err(crate::ActorError::placement(
                "attention",
                format!("expected \"staged\" or \"data-parallel\", found {other:?}"),
            )),
        }
    }

    /// Takes `attention` out of a `[placement]` table (the rest is the placement proper).
    pub fn take_from(table: &mut toml::Table) -> Result<AttentionMode> {
        match table.remove("attention") {
            None => Ok(AttentionMode::Staged),
            Some(toml::Value::String(s)) => AttentionMode::parse(&s),
            Some(v) => Err(crate::ActorError::placement(
                "attention",
                format!("expected a string, found {}", v.type_str()),
            )),
        }
    }

    /// The rank serving request `i` of a run over `nodes` ranks.
    pub fn rank_of_request(self, i: usize, nodes: usize) -> usize {
        match self {
            AttentionMode::Staged => 0,
            AttentionMode::DataParallel => i % nodes.max(1),
        }
    }
}

/// A runtime spread over several ranks: the transport and where attention runs.
#[derive(Clone)]
pub struct Distributed {
    pub transport: Arc<dyn Transport>,
    pub attention: AttentionMode,
}

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Distributed({} rank {}/{}, {:?})",
            self.transport.kind(),
            self.transport.rank(),
            self.transport.nodes(),
            self.attention
        )
    }
}

/// The deployment this process is one rank of, when it is one (set once, by whoever joined
/// the job: the CLI under mpirun). An MPI process belongs to one job, so every runtime started
/// in it without an explicit [`crate::RuntimeConfig::distributed`] joins this one.
static PROCESS_DISTRIBUTED: OnceLock<Distributed> = OnceLock::new();

/// Makes `d` the deployment of every later runtime of this process (the first call wins).
pub fn set_process_distributed(d: Distributed) {
    let _ = PROCESS_DISTRIBUTED.set(d);
}

/// The deployment set by [`set_process_distributed`].
pub fn process_distributed() -> Option<Distributed> {
    PROCESS_DISTRIBUTED.get().cloned()
}

/// A moment on this process's clock and the host's ([`monotonic_ns`]).
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    pub at: Instant,
    pub mono: u64,
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp {
            at: Instant::now(),
            mono: monotonic_ns(),
        }
    }
}

/// Counters of one peer.
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub messages_sent: AtomicU64,
}

/// Bytes and messages per peer rank, exported as metrics and (once a tracer is attached) as one
/// trace track per peer.
#[derive(Debug)]
pub struct PeerStats {
    pub peers: Vec<PeerCounters>,
    tracer: OnceLock<Arc<Tracer>>,
}

impl PeerStats {
    pub fn new(nodes: usize) -> PeerStats {
        PeerStats {
            peers: (0..nodes).map(|_| PeerCounters::default()).collect(),
            tracer: OnceLock::new(),
        }
    }

    /// Trace every later exchange on `t` (pid 3, one track per peer).
    pub fn attach_tracer(&self, t: Arc<Tracer>) {
        if self.tracer.set(t.clone()).is_ok() {
            t.name_peers(self.peers.len());
        }
    }

    /// One message of `bytes` sent to `peer`.
    pub fn sent(&self, peer: usize, bytes: usize) {
        if let Some(p) = self.peers.get(peer) {
            p.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
            p.messages_sent.fetch_add(1, Ordering::Relaxed);
        }
        let peer = peer.to_string();
        metrics::counter!("troupe_transport_bytes_total", "peer" => peer.clone(), "direction" => "sent")
            .increment(bytes as u64);
        metrics::counter!("troupe_transport_messages_total", "peer" => peer).increment(1);
    }

    /// One message of `bytes` received from `peer`.
    pub fn received(&self, peer: usize, bytes: usize) {
        if let Some(p) = self.peers.get(peer) {
            p.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
        }
        metrics::counter!("troupe_transport_bytes_total", "peer" => peer.to_string(), "direction" => "received")
            .increment(bytes as u64);
    }

    /// A request to `peer` and its reply, from `start` (sent) to `end` (reply in), on the peer's
    /// trace track, with when the peer had it. The peer's times are placed in this rank's
    /// timeline when they fall inside the exchange on this rank's clock (both ranks on one
    /// host); otherwise only their duration is kept.
    pub fn exchange(
        &self,
        peer: usize,
        layer: u32,
        (out, back): (usize, usize),
        (start, end): (Stamp, Stamp),
        served: Served,
    ) {
        if let Some(t) = self.tracer.get() {
            let inside = start.mono <= served.received_ns
                && served.received_ns <= served.replied_ns
                && served.replied_ns <= end.mono;
            let at = inside.then(|| (served.received_ns - start.mono) as f64 / 1000.0);
            let us = served.duration_ns() as f64 / 1000.0;
            t.peer_span(peer, layer, out, back, start.at, end.at, us, at);
        }
    }

    /// Expert work of `layer` this rank computed for `peer` since `start`, on the serving track.
    pub fn serving(&self, peer: usize, layer: u32, start: Instant) {
        if let Some(t) = self.tracer.get() {
            t.serving_span(peer, layer, start, Instant::now());
        }
    }

    /// Bytes sent to and received from every peer, summed.
    pub fn totals(&self) -> (u64, u64) {
        self.peers.iter().fold((0, 0), |(s, r), p| {
            (
                s + p.bytes_sent.load(Ordering::Relaxed),
                r + p.bytes_received.load(Ordering::Relaxed),
            )
        })
    }
}

/// A decoded reply from `peer` as the call's result, with when the peer had the request.
fn reply_result(
    peer: usize,
    m: std::result::Result<Message, WireError>,
) -> (Result<ExpertReply>, Served) {
    match m {
        Ok(Message::Reply { result, served, .. }) => (
            result.map_err(|message| crate::ActorError::Transport { peer, message }),
            served,
        ),
        Ok(_) => (
            Err(crate::ActorError::Transport {
                peer,
                message: "expected a reply".into(),
            }),
            Served::default(),
        ),
        Err(e) => (
            Err(crate::ActorError::Transport {
                peer,
                message: e.to_string(),
            }),
            Served::default(),
        ),
    }
}
