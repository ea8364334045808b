//! One deployment over several processes: `--placement FILE` (its `[placement]`/`[schedule]`
//! replace the graph's whole), the ranks of an MPI job (`mpirun`/`srun`; cargo feature `mpi`),
//! who runs which request, and the one place errors are reported. Rank 0 owns the user-facing
//! output; other ranks print only errors, naming their rank. A rank count that does not match
//! the placement is found by every rank alike and printed by rank 0 alone; any other error is
//! printed by the rank that hit it, and once MPI has started that rank ends the whole job
//! (`MPI_Abort`), so no rank waits for it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use troupe_actors::transport::{AttentionMode, Distributed};
use troupe_engine::graph::LoadedGraph;
use troupe_engine::model::Model;

use super::common::CliError;

/// The largest placement file read.
const MAX_PLACEMENT_FILE_BYTES: u64 = 1 << 20;

/// Replaces the graph's `[placement]` and `[schedule]` with those of `path` (absent tables
/// become absent), and takes out `[placement] attention`.
pub fn apply_placement(
    graph: &mut LoadedGraph,
    path: Option<&Path>,
) -> Result<AttentionMode, CliError> {
    if let Some(path) = path {
        let text = troupe_engine::files::read_text_capped(
            path,
            MAX_PLACEMENT_FILE_BYTES,
            "a placement file",
        )?;
        let at = |m: String| CliError::Usage(format!("--placement {}: {m}", path.display()));
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| at(e.message().to_string()))?;
        let mut take = |key: &str| match table.remove(key) {
            None => Ok(None),
            Some(toml::Value::Table(t)) => Ok(Some(t)),
            Some(_) => Err(at(format!("`{key}` must be a table"))),
        };
        let (placement, schedule) = (take("placement")?, take("schedule")?);
        if let Some(k) = table.keys().next() {
            return Err(at(format!(
                "unknown key `{k}` (a placement file holds [placement] and [schedule])"
            )));
        }
        graph.placement = placement;
        graph.schedule = schedule;
    }
    match graph.placement.as_mut() {
        Some(t) => AttentionMode::take_from(t).map_err(|e| CliError::Usage(e.to_string())),
        None => Ok(AttentionMode::Staged),
    }
}

/// This process's rank and the job's size, as the launcher tells them (`0, 1` when not
/// launched by one).
pub fn ranks_from_env() -> (usize, usize) {
    let var = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok()?.trim().parse::<usize>().ok())
    };
    let rank = var(&[
        "OMPI_COMM_WORLD_RANK",
        "PMIX_RANK",
        "PMI_RANK",
        "SLURM_PROCID",
    ])
    .unwrap_or(0);
    let size = var(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"]).unwrap_or(1);
    (rank, size.max(1))
}

/// Set once MPI has started: from then on a failing rank ends the whole job.
static STARTED: AtomicBool = AtomicBool::new(false);
/// Set when the error being reported is one every rank finds alike (printed by rank 0 only).
static SAME_ON_EVERY_RANK: AtomicBool = AtomicBool::new(false);

/// Reports `message` as this process's error and exits 2 (see the module doc).
pub fn exit_with_error(message: &str) -> ! {
    let (rank, _) = ranks_from_env();
    if STARTED.load(Ordering::SeqCst) {
        eprintln!("troupe: error: rank {rank}: {message}");
        #[cfg(feature = "mpi")]
        if let Some(w) = mpi_job::world() {
            w.abort(2)
        }
        std::process::exit(2)
    }
    if rank == 0 {
        eprintln!("troupe: error: {message}");
    } else if !SAME_ON_EVERY_RANK.load(Ordering::SeqCst) {
        eprintln!("troupe: error: rank {rank}: {message}");
    }
    std::process::exit(2)
}

/// The placement's `nodes` (default 1), read from the (already replaced) table.
fn placement_nodes(graph: &LoadedGraph) -> usize {
    graph
        .placement
        .as_ref()
        .and_then(|t| t.get("nodes"))
        .and_then(|v| v.as_integer())
        .map_or(1, |n| n.max(0) as usize)
}

/// Where this process stands in the deployment.
pub struct Deployment {
    pub rank: usize,
    pub size: usize,
    pub attention: AttentionMode,
    #[cfg(feature = "mpi")]
    transport: Option<Arc<troupe_actors::transport::mpi::MpiTransport>>,
}

impl Deployment {
    /// Checks the rank count against the placement's nodes and, in a job of several ranks,
    /// starts MPI. Call before loading weights.
    pub fn join(graph: &LoadedGraph, attention: AttentionMode) -> Result<Deployment, CliError> {
        let (rank, size) = ranks_from_env();
        let single = Deployment {
            rank: 0,
            size: 1,
            attention,
            #[cfg(feature = "mpi")]
            transport: None,
        };
        if size <= 1 {
            return Ok(single);
        }
        let nodes = placement_nodes(graph);
        if nodes != size {
            SAME_ON_EVERY_RANK.store(true, Ordering::SeqCst);
            return Err(CliError::Usage(format!(
                "the placement has {nodes} node(s) but {size} ranks were started; run `mpirun -n {nodes}` or pass a --placement with nodes = {size}"
            )));
        }
        #[cfg(not(feature = "mpi"))]
        {
            Err(CliError::Usage(format!(
                "started as rank {rank} of {size}, but this troupe was built without MPI (cargo build --features mpi)"
            )))
        }
        #[cfg(feature = "mpi")]
        {
            let world = mpi_job::init()?;
            STARTED.store(true, Ordering::SeqCst);
            if world.rank() != rank || world.size() != size {
                return Err(CliError::Runtime(format!(
                    "MPI says rank {} of {}, the launcher's environment {rank} of {size}",
                    world.rank(),
                    world.size()
                )));
            }
            Ok(Deployment {
                rank,
                size,
                ..single
            })
        }
    }

    /// Whether this rank runs request `i` (rank 0 runs them all in one process).
    pub fn runs(&self, i: usize) -> bool {
        self.attention.rank_of_request(i, self.size) == self.rank
    }

    /// Starts serving this rank's experts to the others; the runtime's transport.
    pub fn serve(&mut self, model: &Arc<Model>) -> Result<Option<Distributed>, CliError> {
        #[cfg(feature = "mpi")]
        if let Some(world) = mpi_job::world() {
            use troupe_actors::transport::{mpi::MpiTransport, ExpertServer};
            let be: Arc<dyn troupe_engine::Backend> =
                Arc::new(troupe_engine::kernels::CpuBackend::new());
            let server = Arc::new(ExpertServer::new(model.clone(), be, self.rank));
            let t =
                MpiTransport::start(world, server).map_err(|e| CliError::Runtime(e.to_string()))?;
            self.transport = Some(t.clone());
            return Ok(Some(Distributed {
                transport: t,
                attention: self.attention,
            }));
        }
        let _ = model;
        Ok(None)
    }

    /// Ends this rank's part: waits for every rank, then sends this rank's results (request
    /// index, generated ids) to rank 0, which gets everyone's back (in request order).
    pub fn finish(
        self,
        mine: Vec<(usize, Vec<u32>)>,
    ) -> Result<Option<Vec<(usize, Vec<u32>)>>, CliError> {
        #[cfg(feature = "mpi")]
        if let (Some(t), Some(world)) = (&self.transport, mpi_job::world()) {
            t.finish(world);
            let mut all = mine;
            if self.rank != 0 {
                let bytes =
                    serde_json::to_vec(&all).map_err(|e| CliError::Runtime(e.to_string()))?;
                world.send_data(0, &bytes);
                mpi_job::finalize();
                return Ok(None);
            }
            for k in 1..self.size {
                let bytes = world.receive_data(k);
                let theirs: Vec<(usize, Vec<u32>)> = serde_json::from_slice(&bytes)
                    .map_err(|e| CliError::Runtime(format!("rank {k}: results: {e}")))?;
                all.extend(theirs);
            }
            all.sort_by_key(|(i, _)| *i);
            mpi_job::finalize();
            return Ok(Some(all));
        }
        Ok(Some(mine))
    }
}

#[cfg(feature = "mpi")]
mod mpi_job {
    //! The process's one MPI world.
    use std::sync::{Mutex, OnceLock};

    use troupe_actors::transport::mpi::MpiWorld;

    use super::CliError;

    static WORLD: OnceLock<MpiWorld> = OnceLock::new();
    static FINALIZED: Mutex<bool> = Mutex::new(false);

    pub fn init() -> Result<&'static MpiWorld, CliError> {
        let w = MpiWorld::init().map_err(|e| CliError::Runtime(e.to_string()))?;
        Ok(WORLD.get_or_init(|| w))
    }

    pub fn world() -> Option<&'static MpiWorld> {
        match *FINALIZED.lock().unwrap_or_else(|p| p.into_inner()) {
            true => None,
            false => WORLD.get(),
        }
    }

    /// Ends MPI in this process (after which no MPI call is made).
    pub fn finalize() {
        let mut f = FINALIZED.lock().unwrap_or_else(|p| p.into_inner());
        if !*f {
            *f = true;
            if let Some(w) = WORLD.get() {
                w.finalize();
            }
        }
    }
}
