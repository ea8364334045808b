//! The MPI transport (cargo feature `mpi`): the ranks `mpirun`/`srun` started are the
//! placement's nodes. Every rank runs four threads beside its runtime, all making MPI calls
//! (`MPI_THREAD_MULTIPLE`, checked at start-up):
//! * **outbox** — sends this rank's requests, one at a time (the runtime's tasks must not block
//!   in a send);
//! * **intake** — receives requests from any rank as they arrive (their transfer overlaps the
//!   server's work on earlier ones) and queues them, stamped with their arrival;
//! * **server** — answers the queued requests with this rank's [`ExpertServer`] and sends the
//!   replies;
//! * **replies** — receives replies and completes the call waiting for each (by request id).
//!
//! Nothing waits inside a blocking MPI call: Open MPI's blocking receives and barriers
//! busy-poll, and idle ranks' threads would then take the cores from the ranks computing
//! (several ranks share a machine's cores). The threads probe (`MPI_Improbe`, `MPI_Test`) and,
//! once a few quick probes found nothing, sleep between probes, longer the longer they wait: at
//! most [`HOT_SLEEP`] during the first [`HOT`] of a wait (messages are flowing: an exchange's
//! message is noticed within 20 µs), then up to [`MESSAGE_SLEEP`] ([`BARRIER_SLEEP`] in a
//! barrier) ([`Idle`]).
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
use super::wire::{monotonic_ns, ExpertRequest, Message, Served};
use super::{Call, PeerStats, Stamp, Transport};
use crate::error::{ActorError, Result};

const TAG_REQUEST: i32 = 11;
const TAG_REPLY: i32 = 12;
const TAG_DATA: i32 = 13;

/// The longest pause between two probes of a thread waiting for messages: what it adds to a
/// message's latency at most after a long idle spell.
const MESSAGE_SLEEP: Duration = Duration::from_micros(200);
/// The longest pause between two probes during the first [`HOT`] of a wait. The 200 µs cap alone
/// left ~100 µs (median) between a message's arrival and its probe, each way of an exchange.
const HOT_SLEEP: Duration = Duration::from_micros(20);
/// How long a wait probes at [`HOT_SLEEP`] at most (an idle rank then backs off further).
const HOT: Duration = Duration::from_millis(5);
/// The longest pause between two probes of a barrier (ends of runs: latency matters little).
const BARRIER_SLEEP: Duration = Duration::from_millis(2);
/// Probes that yield the core instead of sleeping, before an idle thread starts sleeping.
const QUICK_PROBES: u32 = 32;

/// Backs off between probes that found nothing: first yields, then sleeps from 10 µs, doubling
/// up to [`HOT_SLEEP`] for the first [`HOT`] of the wait and up to its cap after.
struct Idle {
    probes: u32,
    cap: Duration,
    since: Instant,
}

impl Idle {
    fn new(cap: Duration) -> Idle {
        Idle {
            probes: 0,
            cap,
            since: Instant::now(),
        }
    }
    fn wait(&mut self) {
        self.probes = self.probes.saturating_add(1);
        match self.probes.checked_sub(QUICK_PROBES + 1) {
            None => std::thread::yield_now(),
            Some(n) => {
                let cap = match self.since.elapsed() < HOT {
                    true => HOT_SLEEP.min(self.cap),
                    false => self.cap,
                };
                let sleep = Duration::from_micros(10u64 << n.min(16));
                std::thread::sleep(sleep.min(cap));
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

/// A reply as its call gets it: the outputs, the reply's size on the wire, when the peer had the
/// request and when the reply came in.
type Answer = (Result<super::ExpertReply>, usize, Served, Stamp);

/// Calls waiting for their reply, by request id.
type Pending = Mutex<HashMap<u64, oneshot::Sender<Answer>>>;

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
                .spawn(move || {
                    favour_this_thread();
                    f()
                })
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
        let stats2 = stats.clone();
        let (queue_tx, queue_rx) = flume::unbounded::<Arrived>();
        let intake = spawn("mpi-intake", Box::new(move || intake(queue_tx)))?;
        let serve = spawn(
            "mpi-server",
            Box::new(move || serve(server, stats2, queue_rx)),
        )?;
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
            threads: Mutex::new(vec![intake, serve, replies, outbox]),
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
        // Intake, server and replies first; then close the outbox so its thread ends.
        for h in it.by_ref().take(3) {
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

/// A request as the intake thread received it: its bytes, sender and arrival on the host's clock.
type Arrived = (Vec<u8>, usize, u64);

/// The intake thread: receives requests from any rank as they arrive (while the server computes
/// an earlier one, so a message's transfer overlaps that work, and its arrival time is when it
/// came, not when the server got to it) and queues them for the server, until a `Stop`.
fn intake(queue: flume::Sender<Arrived>) {
    let world = SimpleCommunicator::world();
    loop {
        let (bytes, status) = receive_any(&world, TAG_REQUEST);
        let arrived = monotonic_ns();
        let from = status.source_rank() as usize;
        let stop = matches!(Message::decode(&bytes), Ok(Message::Stop));
        if queue.send((bytes, from, arrived)).is_err() || stop {
            return;
        }
    }
}

/// The server thread: answers the requests the intake queued, in arrival order, sending each
/// reply itself (a hand-off to the outbox thread added its wake-up to every exchange), until a
/// `Stop`.
fn serve(server: Arc<ExpertServer>, stats: Arc<PeerStats>, queue: flume::Receiver<Arrived>) {
    let world = SimpleCommunicator::world();
    for (bytes, from, received_ns) in queue.iter() {
        let started = Instant::now();
        let (id, layer, result) = match Message::decode(&bytes) {
            Ok(Message::Stop) => return,
            Ok(Message::Request { id, req }) => {
                stats.received(from, bytes.len());
                (id, req.layer, server.answer(&req))
            }
            // Without an id there is no caller to fail: the sender's call would wait, so end the job.
            Ok(_) | Err(_) => {
                one_line(&format!(
                    "troupe: error: rank {from} sent a malformed request\n"
                ));
                world.abort(2)
            }
        };
        stats.serving(from, layer, started);
        let served = Served {
            received_ns,
            replied_ns: monotonic_ns(),
        };
        let out = Message::Reply { id, result, served }.encode();
        stats.sent(from, out.len());
        world
            .process_at_rank(from as i32)
            .send_with_tag(&out[..], TAG_REPLY);
    }
}

/// The reply thread: completes waiting calls until a `Stop`.
fn receive_replies(stats: Arc<PeerStats>, pending: Arc<Pending>) {
    let world = SimpleCommunicator::world();
    loop {
        let (bytes, status) = receive_any(&world, TAG_REPLY);
        let arrived = Stamp::now();
        let from = status.source_rank() as usize;
        let (id, result, served) = match Message::decode(&bytes) {
            Ok(Message::Stop) => return,
            Ok(Message::Reply { id, result, served }) => (id, result, served),
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
            let result = result.map_err(|message| ActorError::Transport {
                peer: from,
                message,
            });
            let _ = tx.send((result, bytes.len(), served, arrived));
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
        let start = Stamp::now();
        self.stats.sent(node, out);
        let posted = self.post(node, TAG_REQUEST, bytes);
        let stats = self.stats.clone();
        Box::pin(async move {
            posted?;
            let (r, back, served, end) = rx.await.map_err(|_| closed(node))?;
            stats.exchange(node, layer, (out, back), (start, end), served);
            r
        })
    }
}

/// How much nicer than the rest of the process the transport threads run: a wake-up of one
/// (a message came) then preempts the compute threads instead of waiting for their time slice.
const FAVOUR: i32 = 5;

/// Lowers the calling thread's nice value by [`FAVOUR`] (Linux: nice is per thread), when the
/// process may (root, or `RLIMIT_NICE`); otherwise leaves it. Measured on two busy cores: a
/// message waited 1–2 ms (median) for its thread to run; the transport threads are asleep
/// nearly all the time, so this takes little from compute.
fn favour_this_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: getpriority/setpriority on the calling thread's id; failure is harmless.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
        if *libc::__errno_location() == 0 {
            libc::setpriority(libc::PRIO_PROCESS, tid, nice - FAVOUR);
        }
    }
}

/// Writes `line` to stderr with one `write` call, so `mpirun`'s own notices cannot land inside
/// it (`eprintln!` writes a formatted line in pieces).
fn one_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
