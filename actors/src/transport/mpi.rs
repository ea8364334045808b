//! The MPI transport (cargo feature `mpi`): the ranks `mpirun`/`srun` started are the
//! placement's nodes. Every rank runs three threads beside its runtime, all making MPI calls
//! (`MPI_THREAD_MULTIPLE`, checked at start-up):
//! * **outbox** — sends every message of this rank (requests and replies), one at a time;
//! * **server** — receives requests from any rank and answers them with this rank's
//!   [`ExpertServer`] (replies go through the outbox);
//! * **replies** — receives replies and completes the call waiting for each (by request id).
//!
//! Nothing waits inside a blocking MPI call: Open MPI's blocking receives and barriers
//! busy-poll, and idle ranks' threads would then take the cores from the ranks computing
//! (several ranks share a machine's cores). The threads probe (`MPI_Improbe`, `MPI_Test`) and,
//! once a few quick probes found nothing, sleep between probes, longer the longer they wait, up
//! to [`MESSAGE_SLEEP`] ([`BARRIER_SLEEP`] in a barrier) ([`Idle`]).
//!
//! [`MpiTransport::finish`] ends a run: a barrier (after it no rank sends another request), then
//! each rank stops its own threads with a `Stop` to itself. A rank that dies is noticed by the
//! launcher (`mpirun` ends the whole job and names the rank); a rank that fails calls
//! [`MpiWorld::abort`] so that no other rank waits on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use tokio::sync::oneshot;

use super::server::ExpertServer;
use super::wire::{ExpertRequest, Message};
use super::{Call, PeerStats, Transport};
use crate::error::{ActorError, Result};

const TAG_REQUEST: i32 = 11;
const TAG_REPLY: i32 = 12;
const TAG_DATA: i32 = 13;

/// The longest pause between two probes of a thread waiting for messages: what it adds to a
/// message's latency at most after a long idle spell.
const MESSAGE_SLEEP: Duration = Duration::from_micros(200);
/// The longest pause between two probes of a barrier (ends of runs: latency matters little).
const BARRIER_SLEEP: Duration = Duration::from_millis(2);
/// Probes that yield the core instead of sleeping, before an idle thread starts sleeping.
const QUICK_PROBES: u32 = 32;

/// Backs off between probes that found nothing: first yields, then sleeps from 10 µs, doubling
/// up to its cap.
struct Idle {
    probes: u32,
    cap: Duration,
}

impl Idle {
    fn new(cap: Duration) -> Idle {
        Idle { probes: 0, cap }
    }
    fn wait(&mut self) {
        self.probes = self.probes.saturating_add(1);
        match self.probes.checked_sub(QUICK_PROBES + 1) {
            None => std::thread::yield_now(),
            Some(n) => {
                let sleep = Duration::from_micros(10u64 << n.min(16));
                std::thread::sleep(sleep.min(self.cap));
            }
        }
    }
}

/// The next message tagged `tag` from any rank, received without busy-waiting.
fn receive_any(world: &SimpleCommunicator, tag: i32) -> (Vec<u8>, mpi::point_to_point::Status) {
    use mpi::point_to_point::MatchedReceiveVec;
    let mut idle = Idle::new(MESSAGE_SLEEP);
    loop {
        if let Some(probed) = world.any_process().immediate_matched_probe_with_tag(tag) {
            return probed.matched_receive_vec::<u8>();
        }
        idle.wait();
    }
}

/// Whether this process was started by an MPI launcher (Open MPI's `mpirun`, or PMI/PMIx as
/// Slurm's `srun` sets up).
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// MPI, initialised with `MPI_THREAD_MULTIPLE`; finalised by [`MpiWorld::finalize`] or when dropped.
pub struct MpiWorld {
    universe: Mutex<Option<mpi::environment::Universe>>,
    rank: usize,
    size: usize,
}

impl MpiWorld {
    /// Initialises MPI (once per process).
    pub fn init() -> Result<MpiWorld> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Multiple)
            .ok_or_else(|| {
                ActorError::Startup("MPI was already initialised in this process".into())
            })?;
        if threading != mpi::Threading::Multiple {
            return Err(ActorError::Startup(format!(
                "this MPI library gives threading level {threading:?}; troupe needs MPI_THREAD_MULTIPLE"
            )));
        }
        let world = universe.world();
        Ok(MpiWorld {
            rank: world.rank() as usize,
            size: world.size() as usize,
            universe: Mutex::new(Some(universe)),
        })
    }
    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn size(&self) -> usize {
        self.size
    }
    /// Finalises MPI (what dropping the world does); no MPI call may follow.
    pub fn finalize(&self) {
        drop(
            self.universe
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
    /// Ends every rank of the job with `code` (no rank is left waiting in a collective).
    pub fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }
    /// Waits for every rank (probing, not spinning).
    pub fn barrier(&self) {
        let mut req = SimpleCommunicator::world().immediate_barrier();
        let mut idle = Idle::new(BARRIER_SLEEP);
        while let Err(pending) = req.test() {
            req = pending;
            idle.wait();
        }
    }
    /// Rank 0's `value`, on every rank (a broadcast; every rank must call it).
    pub fn broadcast_from_rank0(&self, value: u8) -> u8 {
        let mut v = value;
        SimpleCommunicator::world()
            .process_at_rank(0)
            .broadcast_into(&mut v);
        v
    }
    /// Sends `bytes` to rank `to` (data outside the expert exchange, e.g. results to rank 0).
    pub fn send_data(&self, to: usize, bytes: &[u8]) {
        SimpleCommunicator::world()
            .process_at_rank(to as i32)
            .send_with_tag(bytes, TAG_DATA);
    }
    /// Receives what rank `from` sent with [`MpiWorld::send_data`].
    pub fn receive_data(&self, from: usize) -> Vec<u8> {
        use mpi::point_to_point::MatchedReceiveVec;
        let world = SimpleCommunicator::world();
        let mut idle = Idle::new(MESSAGE_SLEEP);
        loop {
            let peer = world.process_at_rank(from as i32);
            if let Some(probed) = peer.immediate_matched_probe_with_tag(TAG_DATA) {
                return probed.matched_receive_vec::<u8>().0;
            }
            idle.wait();
        }
    }
}

/// Calls waiting for their reply, by request id: the reply and its size on the wire.
type Pending = Mutex<HashMap<u64, oneshot::Sender<(Result<super::ExpertReply>, usize)>>>;

/// Expert exchange between the ranks of an MPI job.
pub struct MpiTransport {
    rank: usize,
    size: usize,
    next: AtomicU64,
    pending: Arc<Pending>,
    outbox: Mutex<Option<flume::Sender<(usize, i32, Vec<u8>)>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<PeerStats>,
}

impl MpiTransport {
    /// Starts the outbox, server and reply threads of this rank.
    pub fn start(world: &MpiWorld, server: Arc<ExpertServer>) -> Result<Arc<MpiTransport>> {
        let stats = Arc::new(PeerStats::new(world.size));
        let pending: Arc<Pending> = Arc::default();
        let (tx, rx) = flume::unbounded::<(usize, i32, Vec<u8>)>();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| ActorError::Startup(format!("MPI {name} thread: {e}")))
        };
        let outbox = spawn(
            "mpi-outbox",
            Box::new(move || {
                let world = SimpleCommunicator::world();
                for (to, tag, bytes) in rx.iter() {
                    world
                        .process_at_rank(to as i32)
                        .send_with_tag(&bytes[..], tag);
                }
            }),
        )?;
        let (stats2, tx2) = (stats.clone(), tx.clone());
        let serve = spawn("mpi-server", Box::new(move || serve(server, stats2, tx2)))?;
        let (stats3, pending3) = (stats.clone(), pending.clone());
        let replies = spawn(
            "mpi-replies",
            Box::new(move || receive_replies(stats3, pending3)),
        )?;
        Ok(Arc::new(MpiTransport {
            rank: world.rank,
            size: world.size,
            next: AtomicU64::new(0),
            pending,
            outbox: Mutex::new(Some(tx)),
            threads: Mutex::new(vec![serve, replies, outbox]),
            stats,
        }))
    }

    fn post(&self, to: usize, tag: i32, bytes: Vec<u8>) -> Result<()> {
        let g = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            Some(tx) => tx.send((to, tag, bytes)).map_err(|_| closed(to)),
            None => Err(closed(to)),
        }
    }

    /// Ends the run on this rank: waits for every rank to be done sending requests, then stops
    /// this rank's threads.
    pub fn finish(&self, world: &MpiWorld) {
        world.barrier();
        let stop = Message::Stop.encode();
        let _ = self.post(self.rank, TAG_REQUEST, stop.clone());
        let _ = self.post(self.rank, TAG_REPLY, stop);
        let threads: Vec<_> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let mut it = threads.into_iter();
        // Server and replies first; then close the outbox so its thread ends.
        for h in it.by_ref().take(2) {
            let _ = h.join();
        }
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).take();
        for h in it {
            let _ = h.join();
        }
    }
}

fn closed(peer: usize) -> ActorError {
    ActorError::Transport {
        peer,
        message: "the MPI transport is shut down".into(),
    }
}

/// The server thread: answers requests from any rank until a `Stop`.
fn serve(
    server: Arc<ExpertServer>,
    stats: Arc<PeerStats>,
    outbox: flume::Sender<(usize, i32, Vec<u8>)>,
) {
    let world = SimpleCommunicator::world();
    loop {
        let (bytes, status) = receive_any(&world, TAG_REQUEST);
        let from = status.source_rank() as usize;
        let reply = match Message::decode(&bytes) {
            Ok(Message::Stop) => return,
            Ok(Message::Request { id, req }) => {
                stats.received(from, bytes.len());
                Message::Reply {
                    id,
                    result: server.answer(&req),
                }
            }
            // Without an id there is no caller to fail: the sender's call would wait, so end the job.
            Ok(_) | Err(_) => {
                one_line(&format!(
                    "troupe: error: rank {from} sent a malformed request\n"
                ));
                world.abort(2)
            }
        };
        let out = reply.encode();
        stats.sent(from, out.len());
        if outbox.send((from, TAG_REPLY, out)).is_err() {
            return;
        }
    }
}

/// The reply thread: completes waiting calls until a `Stop`.
fn receive_replies(stats: Arc<PeerStats>, pending: Arc<Pending>) {
    let world = SimpleCommunicator::world();
    loop {
        let (bytes, status) = receive_any(&world, TAG_REPLY);
        let from = status.source_rank() as usize;
        let id = match Message::decode(&bytes) {
            Ok(Message::Stop) => return,
            Ok(Message::Reply { id, .. }) => id,
            _ => {
                one_line(&format!(
                    "troupe: error: rank {from} sent a malformed reply\n"
                ));
                world.abort(2)
            }
        };
        stats.received(from, bytes.len());
        let waiting = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(tx) = waiting {
            let _ = tx.send((
                super::reply_result(from, Message::decode(&bytes)),
                bytes.len(),
            ));
        }
    }
}

impl Transport for MpiTransport {
    fn kind(&self) -> &'static str {
        "mpi"
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn nodes(&self) -> usize {
        self.size
    }
    fn stats(&self) -> &PeerStats {
        &self.stats
    }

    fn call(&self, node: usize, req: ExpertRequest) -> Call {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let layer = req.layer;
        let bytes = Message::Request { id, req }.encode();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let out = bytes.len();
        let start = Instant::now();
        self.stats.sent(node, out);
        let posted = self.post(node, TAG_REQUEST, bytes);
        let stats = self.stats.clone();
        Box::pin(async move {
            posted?;
            let (r, back) = rx.await.map_err(|_| closed(node))?;
            stats.exchange(node, layer, out, back, start);
            r
        })
    }
}

/// Writes `line` to stderr with one `write` call, so `mpirun`'s own notices cannot land inside
/// it (`eprintln!` writes a formatted line in pieces).
fn one_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
