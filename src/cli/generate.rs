//! `troupe generate`: tokens from a prompt (or one request per line of `--prompts-file`),
//! greedy or sampled; `--json` ends stdout with `{"prompt_ids":[..],"generated_ids":[..],"text":".."}`
//! (one such line per request with `--prompts-file`). Under mpirun, rank 0 prints.

use std::path::PathBuf;

use clap::Args;
use troupe_engine::generate::GenerateRequest;
use troupe_engine::sampling::SamplingParams;
use troupe_engine::tokenizer::TextTokenizer;

use troupe_engine::graph::LoadedGraph;

use super::common::{check_memory, mla_form, open_graph_placed, parse_ids, start_model, CliError};
use super::distributed::Deployment;
use super::executor::Executor;
use super::{RunArgs, RuntimeArgs};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Prompt text (tokenized with the model's tokenizer.json; BOS is prepended if the model has one).
    #[arg(
        long,
        conflicts_with_all = ["prompt_ids", "prompts_file"],
        required_unless_present_any = ["prompt_ids", "prompts_file"]
    )]
    pub prompt: Option<String>,
    /// Prompt token ids, comma separated (used as given).
    #[arg(long, conflicts_with = "prompts_file")]
    pub prompt_ids: Option<String>,
    /// Several requests: one prompt per line (text, tokenized like --prompt), or JSON lines
    /// `{"prompt_ids": [..]}`; blank lines are skipped. With --json, one JSON line per request
    /// in input order.
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// Do not prepend the model's BOS token to --prompt.
    #[arg(long)]
    pub no_bos: bool,
    #[arg(long, short = 'n', default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sampling temperature; absent or 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop at the model's EOS token.
    #[arg(long)]
    pub stop_at_eos: bool,
    /// End stdout with one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Write the rows routed to each expert as load.json for `troupe eplb` (actor runtime).
    #[arg(long)]
    pub dump_expert_load: Option<std::path::PathBuf>,
}

pub fn run(a: GenerateArgs) -> Result<(), CliError> {
    if let Some(t) = a.temperature {
        if !(t >= 0.0) {
            return Err(CliError::Usage(format!("--temperature {t}: must be >= 0")));
        }
    }
    if let Some(p) = a.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(CliError::Usage(format!("--top-p {p}: must be in (0, 1]")));
        }
    }
    let (graph, attention) = open_graph_placed(&a.run)?;
    let tokenizer = match &graph.tokenizer {
        Some(p) => Some(TextTokenizer::open(p)?),
        None => None,
    };
    let encode = |text: &str| -> Result<Vec<u32>, CliError> {
        let tok = tokenizer.as_ref().ok_or_else(|| {
            CliError::Usage(format!(
                "{}: no tokenizer.json for this model; use --prompt-ids",
                graph.origin.display()
            ))
        })?;
        let mut ids = Vec::new();
        if let (Some(bos), false) = (graph.spec.bos_token_id, a.no_bos) {
            ids.push(bos);
        }
        ids.extend(tok.encode(text)?);
        Ok(ids)
    };
    let prompts = match (&a.prompt, &a.prompt_ids, &a.prompts_file) {
        (_, _, Some(path)) => read_prompts(path, &encode)?,
        (_, Some(ids), None) => vec![parse_ids(ids)?],
        (Some(text), None, None) => vec![encode(text)?],
        (None, None, None) => return Err(CliError::Usage("give --prompt or --prompt-ids".into())),
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let positions = check_positions(&graph, longest, a.max_new_tokens)?;
    check_memory(&a.run, &graph, prompts.len(), positions)?;
    // Under mpirun every rank serves its experts; rank 0 (staged attention) or rank i mod
    // nodes (data-parallel) runs request i; rank 0 prints them all, in input order.
    let dep = Deployment::join(&graph, attention)?;
    let (model, be) = start_model(&a.run, &graph)?;
    let dist = dep.distributed();
    let request = |prompt: &Vec<u32>| GenerateRequest {
        prompt: prompt.clone(),
        max_new_tokens: a.max_new_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        stop_token: if a.stop_at_eos {
            model.spec.eos_token_id
        } else {
            None
        },
        stop_at_eos: false,
        keep_logits: false,
    };
    let mine: Vec<usize> = (0..prompts.len()).filter(|&i| dep.runs(i)).collect();
    let mut done = Vec::with_capacity(mine.len());
    // This rank's expert-load tally, for --dump-expert-load (rank 0 sums every rank's: with
    // data-parallel attention each rank routes its own requests).
    let mut load = None;
    if !mine.is_empty() {
        // --trace and --metrics-addr belong to rank 0 (the others' runtimes stay silent).
        let mut runtime = a.runtime.clone();
        if dep.rank != 0 {
            runtime.trace = None;
            runtime.metrics_addr = None;
        }
        let exec = Executor::start(
            &graph,
            model.clone(),
            be,
            &a.run,
            &runtime,
            mla_form(&a.run.mla)?,
            dist,
        )?;
        if a.dump_expert_load.is_some() && !matches!(exec, Executor::Actors(_)) {
            return Err(CliError::Usage(
                "--dump-expert-load needs --runtime actors".into(),
            ));
        }
        let reqs: Vec<GenerateRequest> = mine.iter().map(|&i| request(&prompts[i])).collect();
        let result = exec.generate(&reqs);
        exec.finish()?;
        if a.dump_expert_load.is_some() {
            load = Some(super::eplb::expert_load(&model));
        }
        done.extend(
            mine.into_iter()
                .zip(result?.into_iter().map(|o| o.generated)),
        );
    }
    let Some((all, loads)) = dep.finish_with(done, load)? else {
        return Ok(());
    };
    if let Some(path) = &a.dump_expert_load {
        let mut total = super::eplb::expert_load(&model);
        total.clear();
        for l in loads.iter().flatten() {
            total.merge(l);
        }
        super::eplb::write_expert_load(path, &total)?;
    }
    let many = a.prompts_file.is_some();
    for (i, generated) in all {
        let text = match &tokenizer {
            Some(t) => t.decode(&generated)?,
            None => String::new(),
        };
        if !a.json || (tokenizer.is_some() && !many) {
            let shown = if tokenizer.is_some() {
                text.clone()
            } else {
                format!("{generated:?}")
            };
            println!("{shown}");
        }
        if a.json {
            let line = serde_json::json!({ "prompt_ids": prompts[i], "generated_ids": generated, "text": text });
            println!("{line}");
        }
    }
    Ok(())
}

/// The largest prompts file read.
const MAX_PROMPTS_FILE_BYTES: u64 = 64 << 20;

/// `--prompts-file`: a prompt per non-blank line, text (through `encode`) or a JSON object
/// `{"prompt_ids": [..]}`; errors name the line.
fn read_prompts(
    path: &std::path::Path,
    encode: &dyn Fn(&str) -> Result<Vec<u32>, CliError>,
) -> Result<Vec<Vec<u32>>, CliError> {
    let text =
        troupe_engine::files::read_text_capped(path, MAX_PROMPTS_FILE_BYTES, "a prompts file")?;
    let at = |n: usize, m: String| {
        CliError::Usage(format!("--prompts-file {} line {n}: {m}", path.display()))
    };
    let mut prompts = Vec::new();
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() {
            continue;
        }
        if !line.starts_with('{') {
            prompts.push(encode(line)?);
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(n, e.to_string()))?;
        let ids = v
            .get("prompt_ids")
            .and_then(|x| x.as_array())
            .ok_or_else(|| at(n, "expected {\"prompt_ids\": [..]}".into()))?;
        let ids = ids
            .iter()
            .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| at(n, "prompt_ids must be token ids (whole numbers)".into()))?;
        prompts.push(ids);
    }
    if prompts.is_empty() {
        return Err(CliError::Usage(format!(
            "--prompts-file {}: no prompts",
            path.display()
        )));
    }
    Ok(prompts)
}

/// The engine's position check, before any weight is loaded, worded for the flag.
fn check_positions(
    graph: &LoadedGraph,
    prompt: usize,
    max_new_tokens: usize,
) -> Result<usize, CliError> {
    let limit = graph.spec.max_position_embeddings;
    troupe_engine::generate::check_positions(limit, prompt, max_new_tokens).map_err(|_| {
        CliError::Usage(format!(
            "--max-new-tokens {max_new_tokens}: {prompt} prompt tokens + {max_new_tokens} new tokens exceed the position limit of {limit} (max_position_embeddings)"
        ))
    })
}
