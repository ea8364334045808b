//! Command-line definitions (clap) and dispatch to one file per subcommand.

mod bench;
mod common;
mod executor;
mod generate;
mod inspect;
mod logits;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use troupe_engine::DeviceId;

pub use common::CliError;

#[derive(Parser, Debug)]
#[command(
    name = "troupe",
    version,
    about = "Actor-based engine for DeepSeek-V3-family MoE transformers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate tokens from a prompt (greedy unless --temperature is given).
    Generate(generate::GenerateArgs),
    /// One cache-free forward pass; writes the logits [T, V] as F32 tensor `logits`.
    Logits(logits::LogitsArgs),
    /// Per layer and total: parameters, active parameters, KV bytes and FLOPs per token.
    Inspect {
        /// A graph file (.toml) or an HF model folder.
        model: PathBuf,
    },
    /// Print the graph file describing an HF model folder.
    ImportHf {
        /// HF folder with config.json.
        dir: PathBuf,
    },
    /// Prompt-processing and decode throughput (llama-bench's pp/tg).
    Bench(bench::BenchArgs),
}

/// Options shared by the commands that run a model.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// A graph file (.toml) or an HF model folder.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Compute threads (default: all cores).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Device for the kernels: cpu, cuda[:N], ptx-interp.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceId,
    /// MLA computation: auto (naive prefill, absorbed decode), naive, absorbed.
    #[arg(long, default_value = "auto")]
    pub mla: String,
}

/// Which executor runs the model, and the actor runtime's options.
#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// actors (supervised actor runtime) or reference (sequential executor). Default: actors on
    /// --device cpu, reference on other devices (give --runtime actors to run the actors there).
    #[arg(long, value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// Actor schedule: sequential, two-microbatch, pipeline (default: the graph's [schedule]).
    #[arg(long)]
    pub schedule: Option<String>,
    /// Pipeline stages (with --schedule pipeline).
    #[arg(long)]
    pub stages: Option<usize>,
    /// Write a Chrome/Perfetto trace of the actor runtime here.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Serve Prometheus metrics on HOST:PORT while running.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// `--runtime`: which executor runs the model.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// The supervised actor runtime (troupe-actors).
    Actors,
    /// The sequential reference executor (troupe-engine).
    Reference,
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Inspect { model } => inspect::run_inspect(&model),
        Command::ImportHf { dir } => inspect::run_import(&dir),
        Command::Bench(a) => bench::run(a),
    }
}
