//! `troupe generate`: tokens from a prompt, greedy or sampled; `--json` ends stdout with
//! `{"prompt_ids":[..],"generated_ids":[..],"text":".."}`.

use clap::Args;
use troupe_engine::generate::GenerateRequest;
use troupe_engine::sampling::SamplingParams;
use troupe_engine::tokenizer::TextTokenizer;

use troupe_engine::graph::LoadedGraph;

use super::common::{check_memory, mla_form, open_graph, parse_ids, start_model, CliError};
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
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    pub prompt: Option<String>,
    /// Prompt token ids, comma separated (used as given).
    #[arg(long)]
    pub prompt_ids: Option<String>,
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
    let graph = open_graph(&a.run)?;
    let tokenizer = match &graph.tokenizer {
        Some(p) => Some(TextTokenizer::open(p)?),
        None => None,
    };
    let prompt = match (&a.prompt, &a.prompt_ids) {
        (_, Some(ids)) => parse_ids(ids)?,
        (Some(text), None) => {
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
            ids
        }
        (None, None) => return Err(CliError::Usage("give --prompt or --prompt-ids".into())),
    };
    let positions = check_positions(&graph, prompt.len(), a.max_new_tokens)?;
    check_memory(&a.run, &graph, 1, positions)?;
    let (model, be) = start_model(&a.run, &graph)?;
    let exec = Executor::start(
        &graph,
        model.clone(),
        be,
        &a.run,
        &a.runtime,
        mla_form(&a.run.mla)?,
    )?;
    let req = GenerateRequest {
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
        keep_logits: false,
    };
    if a.dump_expert_load.is_some() && !matches!(exec, Executor::Actors(_)) {
        return Err(CliError::Usage(
            "--dump-expert-load needs --runtime actors".into(),
        ));
    }
    let result = exec.generate(std::slice::from_ref(&req));
    exec.finish()?;
    let out = result?.remove(0);
    if let Some(path) = &a.dump_expert_load {
        super::eplb::dump_expert_load(path, &model)?;
    }
    let text = match &tokenizer {
        Some(t) => t.decode(&out.generated)?,
        None => String::new(),
    };
    if !a.json || tokenizer.is_some() {
        let shown = if tokenizer.is_some() {
            text.clone()
        } else {
            format!("{:?}", out.generated)
        };
        println!("{shown}");
    }
    if a.json {
        let line = serde_json::json!({ "prompt_ids": prompt, "generated_ids": out.generated, "text": text });
        println!("{line}");
    }
    Ok(())
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
