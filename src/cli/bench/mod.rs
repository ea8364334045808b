//! `troupe bench`: what llama.cpp's `llama-bench` measures, so the two compare directly.
//! - `pp{P}`: one forward pass over a P-token prompt;
//! - `tg{N}`: N single-token decode steps (each feeds back the greedy token, sampled on the
//!   device);
//! - `-d D` (`--n-depth`, a list like `0,4096`): llama-bench's depth, D tokens already in the
//!   cache before the test; the rows are named `pp128 @ d4096`, `tg64 @ d4096`.
//!
//! Each test runs through the chosen runtime (`--runtime reference`, the default, or `actors`)
//! on `--device`; tokens/s is the median of `--reps` repetitions with min–max. Then the weight
//! bytes a decoded token streams (GB/s against a measured read bandwidth), and at each depth the
//! two costs a decoded token's attention has at least: reading the cache (its bytes ÷ the
//! measured bandwidth) and its FLOPs ÷ a measured FLOP rate (`costs.rs`). `--json` ends stdout
//! with one JSON object (`rows.rs` documents it), including the bytes each decode step moved
//! host↔device and the kernel launches per step, from `Backend::counters()`.
//!
//! `--compare` instead runs `troupe_actors::bench` (`compare.rs`): decode tokens/s of the actor
//! runtime vs the reference executor interleaved, for each `--schedule` (`--seqs`, `--no-link`,
//! `--profile`).
//! Counts of 0 or non-numbers are refused by clap (exit 2).

mod compare;
mod costs;
mod rows;
mod target;

use std::path::PathBuf;

use clap::Args;
use troupe_engine::model::Model;

use troupe_actors::bench::Contender;

use super::common::CliError;
use super::{RunArgs, RuntimeKind};

/// `-p` default of the pp test.
const PROMPT_LEN: usize = 128;

/// A count of at least 1 (clap refuses 0 and non-numbers with exit 2).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Prompt tokens of the pp test (default 128, 0 skips it); with --compare, each sequence's
    /// prefill before the decode rounds (default 16).
    #[arg(short = 'p', long = "n-prompt")]
    pub n_prompt: Option<usize>,
    /// Decode steps of the tg test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    pub n_gen: usize,
    /// Tokens already in the cache before each test (llama-bench's depth); a comma-separated
    /// list runs every test at every depth.
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    pub n_depth: Vec<usize>,
    /// Repetitions (median reported). With --compare: interleaved decode rounds.
    #[arg(short = 'r', long, default_value_t = 5, value_parser = at_least_one)]
    pub reps: usize,
    /// The runtime the tests run through: reference (default) or actors.
    #[arg(long, value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// End stdout with one JSON object: the rows, the device, bytes moved and kernels launched
    /// per decode step.
    #[arg(long)]
    pub json: bool,
    /// Actors vs reference decode, interleaved, and the link overlap (instead of pp/tg rows).
    #[arg(long)]
    pub compare: bool,
    /// Actor schedules by name (built-in or registered in `troupe_actors::schedule::registry`),
    /// comma-separated: with --compare each is measured (default: sequential,two-microbatch);
    /// with --runtime actors, the one schedule the rows run.
    #[arg(long, value_delimiter = ',')]
    pub schedule: Vec<String>,
    /// --compare: sequences decoded together (default 8).
    #[arg(long, value_parser = at_least_one)]
    pub seqs: Option<usize>,
    /// --compare: skip the link-overlap measurement.
    #[arg(long)]
    pub no_link: bool,
    /// --compare: decode steps of one contender only, for `perf record`.
    #[arg(long, value_enum)]
    pub profile: Option<ProfileTarget>,
    /// With --profile actors: write a Chrome/Perfetto trace of the decode steps here.
    #[arg(long, requires = "profile")]
    pub trace: Option<PathBuf>,
    /// With --runtime actors (the pp/tg rows): write the rows routed to each expert over every
    /// test (warm-ups included) as load.json for `troupe eplb`.
    #[arg(long)]
    pub dump_expert_load: Option<PathBuf>,
}

/// `--profile`: the contender whose decode steps run alone.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileTarget {
    Actors,
    Reference,
}

impl From<ProfileTarget> for Contender {
    fn from(p: ProfileTarget) -> Contender {
        match p {
            ProfileTarget::Actors => Contender::Actors,
            ProfileTarget::Reference => Contender::Reference,
        }
    }
}

/// Bytes of weights one decoded token reads, as loaded (int8 and FP8 weights with their scale
/// grids): one embedding row, every layer's attention (MLA: the absorbed per-head matrices a
/// generated token uses, not `kv_b_proj`), dense MLPs, the router, shared experts and top-k of
/// the routed experts (their average size), the final norm and the head.
pub(super) fn weight_bytes_per_token(model: &Model) -> u64 {
    use troupe_engine::model::attention::MlaQuery;
    use troupe_engine::model::{Attention, FeedForward, Mlp};
    use troupe_engine::weights::Weight;
    let bytes = |w: &Weight| {
        let scales = w.block_scales().map_or(0, |s| s.scale_inv.nbytes());
        (w.nbytes() + scales) as u64
    };
    let mlp = |m: &Mlp| bytes(&m.gate) + bytes(&m.up) + bytes(&m.down);
    let mut total = (model.embed.nbytes() / model.embed.rows().max(1)) as u64;
    total += bytes(&model.norm) + bytes(&model.lm_head);
    for layer in &model.layers {
        total += bytes(&layer.input_norm) + bytes(&layer.post_norm);
        total += match &layer.attention {
            Attention::Mla(a) => {
                let query = match &a.query {
                    MlaQuery::Lora { a, norm, b } => bytes(a) + bytes(norm) + bytes(b),
                    MlaQuery::Full(q) => bytes(q),
                };
                let absorbed: u64 = a.uk_t.iter().chain(&a.uv).map(bytes).sum();
                query + bytes(&a.kv_a) + bytes(&a.kv_norm) + bytes(&a.o) + absorbed
            }
            Attention::Gqa(a) => bytes(&a.q) + bytes(&a.k) + bytes(&a.v) + bytes(&a.o),
        };
        total += match &layer.ffn {
            FeedForward::Dense(m) => mlp(m),
            FeedForward::Moe(m) => {
                let routed: u64 = m.experts.iter().map(mlp).sum();
                let top_k = m.router.rule.top_k as u64;
                let router = bytes(&m.router.gate) + m.router.bias.as_ref().map_or(0, bytes);
                router
                    + m.shared.as_ref().map_or(0, mlp)
                    + routed * top_k / (m.experts.len() as u64).max(1)
            }
        };
    }
    total
}

pub fn run(a: BenchArgs) -> Result<(), CliError> {
    // Under mpirun: rank 0 runs the rows, the other ranks serve their experts (mpi helper).
    let actors_rows = a.runtime == Some(RuntimeKind::Actors) && !a.compare;
    super::distributed::bench_on_ranks(&a.run, actors_rows, || run_here(&a))
}

fn run_here(a: &BenchArgs) -> Result<(), CliError> {
    if a.dump_expert_load.is_some() && (a.compare || a.runtime != Some(RuntimeKind::Actors)) {
        return Err(CliError::Usage(
            "--dump-expert-load needs --runtime actors (without --compare)".into(),
        ));
    }
    if a.compare {
        return compare::run(a);
    }
    if a.profile.is_some() || a.no_link || a.seqs.is_some() {
        return Err(CliError::Usage(
            "--profile, --trace, --no-link and --seqs need --compare".into(),
        ));
    }
    rows::run(a, a.n_prompt.unwrap_or(PROMPT_LEN))
}
