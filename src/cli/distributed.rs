//! One deployment over several processes: `--placement FILE` (its `[placement]`/`[schedule]`
//! replace the graph's whole), the ranks of an MPI job (`mpirun`/`srun`; cargo feature `mpi`),
//! who runs which request, and the one place errors are reported. Rank 0 owns the user-facing
//! output; other ranks print only errors, naming their rank. A rank count that does not match
//! the placement is found by every rank alike and printed by rank 0 alone; any other error is
//! printed by the rank that hit it, and once MPI has started that rank ends the whole job
//! (`MPI_Abort`), so no rank waits for it.
//!
//! Once a process has joined a job (`Deployment::join`, which also makes every rank use rank 0's
//! CPU kernel path), loading a model loads only this rank's share of the weights
//! ([`rank_share`], the same ownership `troupe inspect --placement` counts) and starts serving
//! its experts to the other ranks ([`serve_loaded`]); every actor runtime of the process joins
//! the deployment. `troupe bench` runs through [`bench_on_ranks`].

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use troupe_actors::transport::{AttentionMode, Distributed};
use troupe_engine::graph::ir::WeightSpec;
use troupe_engine::graph::{LoadedGraph, Plan};
use troupe_engine::model::Model;

use super::common::CliError;
use super::RunArgs;

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

/// Prints `troupe: error: {message}` on stderr with one `write` call. Under `mpirun` the
/// launcher forwards each rank's stderr in the chunks it reads and interleaves its own notices
/// (e.g. the `MPI_ABORT` banner) between them; `eprintln!` writes a formatted line in pieces,
/// so a banner could land inside our line. One write of a line shorter than `PIPE_BUF` (4 KiB)
/// arrives whole.
pub fn error_line(message: &str) {
    use std::io::Write;
    let line = format!("troupe: error: {message}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Reports `message` as this process's error and exits 2 (see the module doc).
pub fn exit_with_error(message: &str) -> ! {
    let (rank, _) = ranks_from_env();
    if STARTED.load(Ordering::SeqCst) {
        error_line(&format!("rank {rank}: {message}"));
        #[cfg(feature = "mpi")]
        if let Some(w) = mpi_job::world() {
            w.abort(2)
        }
        std::process::exit(2)
    }
    if rank == 0 {
        error_line(message);
    } else if !SAME_ON_EVERY_RANK.load(Ordering::SeqCst) {
        error_line(&format!("rank {rank}: {message}"));
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
#[derive(Clone, Copy, Debug)]
pub struct Deployment {
    pub rank: usize,
    pub size: usize,
    pub attention: AttentionMode,
}

/// This process's place in a job of several ranks, once it has joined one.
static JOB: OnceLock<Deployment> = OnceLock::new();

/// The job this process joined (None when it runs alone).
pub fn job() -> Option<Deployment> {
    JOB.get().copied()
}

/// The expert transport of this process, once its model is loaded and served.
#[cfg(feature = "mpi")]
static TRANSPORT: OnceLock<Arc<troupe_actors::transport::mpi::MpiTransport>> = OnceLock::new();

/// Set by `TROUPE_RANK_REPORT=1`: every rank prints one stderr line with its kernel path and
/// the weight bytes it loaded (what the tests check ranks by).
fn rank_report_wanted() -> bool {
    std::env::var_os("TROUPE_RANK_REPORT").is_some_and(|v| v == "1")
}

impl Deployment {
    /// Checks the rank count against the placement's nodes and, in a job of several ranks,
    /// starts MPI and makes every rank use rank 0's CPU kernel path. Call before loading
    /// weights.
    pub fn join(graph: &LoadedGraph, attention: AttentionMode) -> Result<Deployment, CliError> {
        let (rank, size) = ranks_from_env();
        let single = Deployment {
            rank: 0,
            size: 1,
            attention,
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
            adopt_rank0_isa(world)?;
            let dep = Deployment {
                rank,
                size,
                attention,
            };
            let _ = JOB.set(dep);
            Ok(dep)
        }
    }

    /// Whether this rank runs request `i` (rank 0 runs them all in one process).
    pub fn runs(&self, i: usize) -> bool {
        self.attention.rank_of_request(i, self.size) == self.rank
    }

    /// The runtime's transport to the other ranks (started when the model was loaded).
    pub fn distributed(&self) -> Option<Distributed> {
        #[cfg(feature = "mpi")]
        if let Some(t) = TRANSPORT.get() {
            return Some(Distributed {
                transport: t.clone(),
                attention: self.attention,
            });
        }
        None
    }

    /// Ends this rank's part: waits for every rank, then sends this rank's results (request
    /// index, generated ids) to rank 0, which gets everyone's back (in request order).
    pub fn finish(self, mine: Results) -> Result<Option<Results>, CliError> {
        Ok(self.finish_with(mine, ())?.map(|(all, _)| all))
    }

    /// As [`Deployment::finish`], each rank also sending `extra` (a tally, say): rank 0 gets
    /// every rank's, in rank order (its own first).
    pub fn finish_with<T: serde::Serialize + serde::de::DeserializeOwned>(
        self,
        mine: Results,
        extra: T,
    ) -> Result<Option<(Results, Vec<T>)>, CliError> {
        #[cfg(feature = "mpi")]
        if let (Some(t), Some(world)) = (TRANSPORT.get(), mpi_job::world()) {
            t.finish(world);
            let mut all = mine;
            if self.rank != 0 {
                let bytes = serde_json::to_vec(&(&all, &extra))
                    .map_err(|e| CliError::Runtime(e.to_string()))?;
                world.send_data(0, &bytes);
                mpi_job::finalize();
                return Ok(None);
            }
            let mut extras = vec![extra];
            for k in 1..self.size {
                let bytes = world.receive_data(k);
                let (theirs, extra): (Results, T) = serde_json::from_slice(&bytes)
                    .map_err(|e| CliError::Runtime(format!("rank {k}: results: {e}")))?;
                all.extend(theirs);
                extras.push(extra);
            }
            all.sort_by_key(|(i, _)| *i);
            mpi_job::finalize();
            return Ok(Some((all, extras)));
        }
        Ok(Some((mine, vec![extra])))
    }
}

/// Requests' results: (request index, generated ids).
pub type Results = Vec<(usize, Vec<u32>)>;

/// Rank 0 tells every rank its CPU kernel path (its `--isa`, or the best it has) and the others
/// switch to it, so every rank computes the same bits; a rank whose processor lacks that path
/// fails naming it.
#[cfg(feature = "mpi")]
fn adopt_rank0_isa(world: &troupe_actors::transport::mpi::MpiWorld) -> Result<(), CliError> {
    use troupe_engine::kernels::isa::{self, Isa};
    let mine = isa::active();
    let index = Isa::ALL.iter().position(|&i| i == mine).unwrap_or(0) as u8;
    let chosen = Isa::ALL
        .get(world.broadcast_from_rank0(index) as usize)
        .copied()
        .ok_or_else(|| CliError::Runtime("rank 0 sent an unknown kernel path".into()))?;
    if chosen != mine {
        isa::set_active(chosen).map_err(|e| {
            CliError::Runtime(format!("rank 0 runs the {chosen} kernels, but here: {e}"))
        })?;
    }
    Ok(())
}

/// The ranks (placement nodes) holding each tensor of `plan`: each routed expert on its groups'
/// nodes (every replica's), and the rest (embedding, head, attention, norms, routers, shared
/// experts, dense MLPs) on its stage's node, or on every rank with data-parallel attention.
/// Also what `troupe inspect --placement` counts. Returns the node count too.
pub fn tensor_owners<'p>(
    graph: &LoadedGraph,
    plan: &'p Plan,
    mode: AttentionMode,
) -> Result<(usize, Vec<(&'p WeightSpec, Vec<usize>)>), CliError> {
    let layer_experts: Vec<Option<usize>> = (0..graph.spec.num_hidden_layers)
        .map(|l| {
            graph
                .spec
                .moe
                .as_ref()
                .filter(|_| graph.spec.is_moe_layer(l))
                .map(|m| m.n_routed_experts)
        })
        .collect();
    let p = troupe_actors::placement::PlacementSpec::from_table(graph.placement.as_ref())
        .and_then(|s| s.resolve(&layer_experts, None))
        .map_err(|e| CliError::Usage(format!("--placement: {e}")))?;
    let nodes = p.nodes.max(1);
    let mut out = Vec::new();
    for node in &plan.nodes {
        for w in &node.weights {
            let expert = w
                .name
                .split(".experts.")
                .nth(1)
                .and_then(|r| r.split('.').next()?.parse::<usize>().ok());
            let owners: Vec<usize> = match (node.layer, expert) {
                (Some(l), Some(e)) => p.expert_groups[l]
                    .iter()
                    .filter(|g| g.experts.contains(&e))
                    .map(|g| g.node)
                    .collect(),
                _ if mode == AttentionMode::DataParallel => (0..nodes).collect(),
                (Some(l), None) => vec![p.stage_nodes[p.stage_of(l)]],
                (None, _) => vec![p.stage_nodes.first().copied().unwrap_or(0)],
            };
            out.push((w, owners));
        }
    }
    Ok((nodes, out))
}

/// Bytes of `w` at the model's dtype (as `troupe inspect` counts them).
pub fn spec_bytes(graph: &LoadedGraph, w: &WeightSpec) -> u64 {
    w.shape.iter().product::<usize>() as u64 * graph.spec.dtype.size() as u64
}

/// The names of the tensors this rank loads, when this process is one rank of a job (None:
/// every tensor). With `TROUPE_RANK_REPORT=1` the rank prints its kernel path and share.
pub fn rank_share(graph: &LoadedGraph) -> Result<Option<HashSet<String>>, CliError> {
    let Some(dep) = job() else {
        return Ok(None);
    };
    let plan = Plan::compile(&graph.spec);
    let (_, owners) = tensor_owners(graph, &plan, dep.attention)?;
    let (mut bytes, mut total) = (0u64, 0u64);
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    for (w, o) in &owners {
        if !seen.insert(w.name.as_str()) {
            continue; // a tied head: the embedding's tensor
        }
        total += spec_bytes(graph, w);
        if o.contains(&dep.rank) {
            bytes += spec_bytes(graph, w);
            names.insert(w.name.clone());
        }
    }
    if rank_report_wanted() {
        // One write, so that mpirun does not interleave it with other ranks' lines.
        let line = format!(
            "troupe: rank {} of {}: isa {}, loading {} of {} tensors, {bytes} of {total} weight bytes\n",
            dep.rank,
            dep.size,
            troupe_engine::kernels::isa::active(),
            names.len(),
            seen.len()
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }
    Ok(Some(names))
}

/// After this rank's share of `model` is loaded: starts serving its experts to the other ranks
/// (once per process), which every actor runtime of this process then uses, and waits until
/// every rank serves.
pub fn serve_loaded(model: &Arc<Model>) -> Result<(), CliError> {
    let Some(dep) = job() else {
        return Ok(());
    };
    #[cfg(feature = "mpi")]
    if let (Some(world), None) = (mpi_job::world(), TRANSPORT.get()) {
        use troupe_actors::transport::{mpi::MpiTransport, ExpertServer};
        let be: Arc<dyn troupe_engine::Backend> =
            Arc::new(troupe_engine::kernels::CpuBackend::new());
        let server = Arc::new(ExpertServer::new(model.clone(), be, dep.rank));
        let t = MpiTransport::start(world, server).map_err(|e| CliError::Runtime(e.to_string()))?;
        let _ = TRANSPORT.set(t.clone());
        troupe_actors::transport::set_process_distributed(Distributed {
            transport: t,
            attention: dep.attention,
        });
        // Ranks load shares of different sizes: no rank sends work before every rank serves
        // (else a request could outwait its deadline while its rank still loads).
        world.barrier();
    }
    let _ = (model, dep);
    Ok(())
}

/// `troupe bench` as one rank of a job: rank 0 runs `body` (the benchmark; it prints the rows)
/// on an actor runtime whose expert groups on other ranks are reached over MPI, while the other
/// ranks load their share, serve their experts and wait for rank 0 to end. Outside a job,
/// `body` alone. `actors_rows`: the run measures the actor runtime's pp/tg rows (the only kind
/// that spans ranks).
pub fn bench_on_ranks(
    run: &RunArgs,
    actors_rows: bool,
    body: impl FnOnce() -> Result<(), CliError>,
) -> Result<(), CliError> {
    if ranks_from_env().1 <= 1 {
        return body();
    }
    if !actors_rows {
        SAME_ON_EVERY_RANK.store(true, Ordering::SeqCst);
        return Err(CliError::Usage(
            "under mpirun, bench measures --runtime actors (without --compare)".into(),
        ));
    }
    let (graph, attention) = super::common::open_graph_placed(run)?;
    let dep = Deployment::join(&graph, attention)?;
    if dep.rank == 0 {
        body()?;
    } else {
        super::common::start_model(run, &graph)?;
    }
    dep.finish(Vec::new())?;
    Ok(())
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
