//! Command-line definitions (clap) and dispatch to one file per subcommand.

mod bench;
mod calibrate;
mod calibrate_kernels;
mod common;
mod distributed;
mod eplb;
mod executor;
mod export_hf;
mod generate;
mod inspect;
mod logits;
mod quant_report;
mod quantize;
mod serve;
mod simulate;
mod trace_stats;

use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use troupe_engine::DeviceId;

pub use common::CliError;
pub use distributed::exit_with_error;

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
        /// A TOML file whose [placement] replaces the graph's: also print the weight bytes
        /// each rank (node) holds.
        #[arg(long)]
        placement: Option<PathBuf>,
    },
    /// Print the graph file describing an HF model folder.
    ImportHf {
        /// HF folder with config.json.
        dir: PathBuf,
    },
    /// Prompt-processing and decode throughput (llama-bench's pp/tg).
    Bench(bench::BenchArgs),
    /// Write a graph's model (random weights included) as an HF folder other engines can load.
    ExportHf(export_hf::ExportHfArgs),
    /// Expert load balancing (DeepSeek's EPLB): replicas and devices for measured expert loads.
    Eplb(eplb::EplbArgs),
    /// Write a model as a quantised HF folder: --fp8 (DeepSeek-V3's FP8 block-scaled layout) or
    /// --int8 (what --quantize int8 does at load), -m MODEL --out DIR.
    Quantize(quantize::QuantizeArgs),
    /// Teacher-forced top-1 agreement and KL of a quantised model (--quantize int8's policy)
    /// against the model as stored.
    QuantReport(quant_report::QuantReportArgs),
    /// Per-stream utilisation and link time hidden, from a trace written by --trace.
    TraceStats(trace_stats::TraceStatsArgs),
    /// An OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions, /v1/models,
    /// /health, /metrics.
    Serve(serve::ServeArgs),
    /// Simulate a deployment on a discrete-event clock: the runtime's placement and schedules,
    /// a hardware file's costs; no weights are loaded.
    Simulate(simulate::SimulateArgs),
    /// Measure this machine for the simulator: kernel micro-benchmarks and two real decode runs
    /// fit a hardware file (--out machine.toml).
    Calibrate(calibrate::CalibrateArgs),
}

/// Options shared by the commands that run a model.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// A graph file (.toml) or an HF model folder.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Compute threads, 1 to 1024 (default: all cores).
    #[arg(long, short = 't', value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// Device for the kernels: cpu, cuda[:N], ptx-interp.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceId,
    /// CPU kernel path: amx, avx512bf16, avx512, avx2 or portable (default: the best this
    /// processor has; avx512bf16 and amx differ from avx512 only under `--compute bf16`, where
    /// avx512bf16 uses vdpbf16ps and amx multiplies prompt rows in AMX tiles and generated
    /// rows with vdpbf16ps).
    #[arg(long)]
    pub isa: Option<String>,
    /// Precision of the activations entering each linear layer: f32 (default; weights upcast
    /// exactly) or bf16 (rounded to bf16 first, as llama.cpp's bf16 path does; CPU only).
    #[arg(long, value_parser = parse_compute)]
    pub compute: Option<troupe_engine::kernels::precision::Compute>,
    /// MLA computation: auto (naive prefill, absorbed decode), naive, absorbed.
    #[arg(long, default_value = "auto")]
    pub mla: String,
    /// Run even when the model looks too large for this machine's available memory.
    #[arg(long)]
    pub skip_memory_check: bool,
    /// Let idle processors halt during a forward pass. By default a pass holds a 0 µs wake-up
    /// latency request (/dev/cpu_dma_latency, where writable) so that a thread woken for the
    /// next kernel does not wait for a halted (virtual) processor; see `kernels::awake`. Same
    /// as TROUPE_KEEP_AWAKE=0.
    #[arg(long)]
    pub no_keep_awake: bool,
    /// KV cache pages per layer pool (default: room for 8 sequences of the model's full length,
    /// at least 1024). A request whose cache needs a page when none is free fails alone.
    #[arg(long, value_parser = parse_pages)]
    pub kv_pages: Option<usize>,
    /// Positions per KV cache page, a power of two (default 64).
    #[arg(long, value_parser = parse_page_tokens)]
    pub page_tokens: Option<usize>,
    /// A TOML file whose [placement] and [schedule] tables replace the graph file's whole
    /// (under mpirun: its `nodes` are the ranks).
    #[arg(long)]
    pub placement: Option<PathBuf>,
    /// Turn an FP8 checkpoint's weights into bf16 (or f16, f32) at load instead of keeping them FP8.
    #[arg(long, value_parser = parse_dequantize)]
    pub dequantize: Option<troupe_engine::dtype::DType>,
    /// Quantise weights at load: `int8` (weight-only, an f32 scale per 32 weights of a row).
    /// Which weights stay as stored comes from the graph file's [quantize] table, else
    /// attention's (see --quantize-keep).
    #[arg(long, value_parser = parse_quantize)]
    pub quantize: Option<troupe_engine::weights::int8::QuantFormat>,
    /// With --quantize: the weight classes left unquantised, comma separated (attention,
    /// dense_mlp, routed_experts, shared_experts, head), or `none`; replaces the policy's list.
    #[arg(long, requires = "quantize")]
    pub quantize_keep: Option<String>,
}

fn parse_quantize(s: &str) -> Result<troupe_engine::weights::int8::QuantFormat, String> {
    match s {
        "int8" => Ok(troupe_engine::weights::int8::QuantFormat::Int8),
        _ => Err("expected int8".into()),
    }
}

fn parse_compute(s: &str) -> Result<troupe_engine::kernels::precision::Compute, String> {
    troupe_engine::kernels::precision::Compute::parse(s).map_err(|e| e.to_string())
}

fn parse_dequantize(s: &str) -> Result<troupe_engine::dtype::DType, String> {
    use troupe_engine::dtype::DType;
    match DType::parse(s) {
        Some(d @ (DType::BF16 | DType::F16 | DType::F32)) => Ok(d),
        _ => Err("expected bf16, f16 or f32".into()),
    }
}

/// The most pages `--kv-pages` accepts (page ids are 32-bit).
pub const MAX_KV_PAGES: usize = u32::MAX as usize;

fn parse_pages(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_KV_PAGES).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {MAX_KV_PAGES}")),
    }
}

/// The largest page `--page-tokens` accepts.
pub const MAX_PAGE_TOKENS: usize = 1 << 16;

fn parse_page_tokens(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n.is_power_of_two() && n <= MAX_PAGE_TOKENS => Ok(n),
        _ => Err(format!(
            "expected a power of two from 1 to {MAX_PAGE_TOKENS}"
        )),
    }
}

/// The most compute threads `--threads` accepts: more only thrash (and 10⁵ hang the machine).
pub const MAX_THREADS: usize = 1024;

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(t) if (1..=MAX_THREADS).contains(&t) => Ok(t),
        _ => Err(format!("expected a whole number from 1 to {MAX_THREADS}")),
    }
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

/// Parses the command line; `--help`/`--version` print and exit 0, and a usage error prints one
/// line (`troupe: error: ...; see 'troupe generate --help'`) and exits 2.
pub fn parse_or_exit() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            std::process::exit(0)
        }
        Err(e) => {
            let args: Vec<String> = std::env::args_os()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            distributed::error_line(&usage_line(&e, &args));
            std::process::exit(2)
        }
    }
}

/// One line for a clap error: its first line without the `error:` prefix, and where to read more.
fn usage_line(e: &clap::Error, args: &[String]) -> String {
    let command = Cli::command();
    let sub = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .filter(|a| command.find_subcommand(a.as_str()).is_some());
    let help = match sub {
        Some(s) => format!("troupe {s} --help"),
        None => "troupe --help".into(),
    };
    let message = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let names: Vec<&str> = command.get_subcommands().map(|c| c.get_name()).collect();
        match sub {
            Some(s) => format!("`{s}` needs arguments"),
            None => format!("a command is required ({})", names.join(", ")),
        }
    } else {
        // The first paragraph (a list of missing arguments continues it), without the `error:`
        // prefix; tips and usage follow a blank line.
        let text = e.render().to_string();
        let paragraph: Vec<&str> = text
            .lines()
            .map(str::trim)
            .skip_while(|l| l.is_empty())
            .take_while(|l| !l.is_empty())
            .collect();
        let first = paragraph.join(" ");
        let first = first.strip_prefix("error: ").unwrap_or(&first);
        let first = first.strip_suffix(" found").unwrap_or(first);
        if first.is_empty() {
            "invalid arguments".into()
        } else {
            first.to_string()
        }
    };
    format!("{message}; see '{help}'")
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Inspect { model, placement } => inspect::run_inspect(&model, placement.as_deref()),
        Command::ImportHf { dir } => inspect::run_import(&dir),
        Command::Bench(a) => bench::run(a),
        Command::ExportHf(a) => export_hf::run(a),
        Command::Eplb(a) => eplb::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::QuantReport(a) => quant_report::run(a),
        Command::TraceStats(a) => trace_stats::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Simulate(a) => simulate::run(a),
        Command::Calibrate(a) => calibrate::run(a),
    }
}
