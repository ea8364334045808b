//! `troupe serve`: the OpenAI-compatible HTTP server (`troupe::serve`) on the actor runtime's
//! async `Engine`. Loads the model like `generate` (placement, KV pages, memory pre-check),
//! installs the metrics recorder before the engine starts, prints `listening on http://ADDR` as
//! the first stdout line, and serves until Ctrl-C / SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;
use troupe::serve::{self, ChatTemplate, ServeOptions, Server};
use troupe_actors::{EngineOptions, RuntimeOptions};
use troupe_engine::model::MlaForm;
use troupe_engine::DeviceId;

use super::common::{
    check_memory, init_threads, kv_config, load_model, mla_form, open_graph_placed, CliError,
};
use super::RunArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Where to listen (port 0 picks a free port; the first stdout line says which).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Require `Authorization: Bearer KEY` on /v1/* (401 without it). Default: the
    /// TROUPE_API_KEY environment variable, if set (which keeps the key out of `ps`).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Requests held at once, queued or generating; one more gets 503 with Retry-After.
    #[arg(long, default_value_t = serve::DEFAULT_MAX_QUEUE as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queue: u32,
    /// The largest request body in bytes; a larger one gets 413.
    #[arg(long, default_value_t = serve::DEFAULT_MAX_BODY_BYTES as u64, value_parser = clap::value_parser!(u64).range(64..=(1 << 30)))]
    pub max_body_bytes: u64,
    /// Actor schedule: sequential, two-microbatch, pipeline (default: the graph's [schedule]).
    #[arg(long)]
    pub schedule: Option<String>,
    /// Turn the prefix cache off (on by default: a prompt starting with the full KV pages of an
    /// earlier prompt reuses them; outputs are bit-identical either way).
    #[arg(long)]
    pub no_prefix_cache: bool,
}

pub fn run(a: ServeArgs) -> Result<(), CliError> {
    if mla_form(&a.run.mla)? != MlaForm::Auto {
        return Err(CliError::Usage(
            "--mla: the server runs the actor runtime, which uses auto".into(),
        ));
    }
    let api_key = match a.api_key.clone() {
        Some(k) => Some(k),
        None => env_api_key()?,
    };
    let (graph, _attention) = open_graph_placed(&a.run)?;
    let template =
        ChatTemplate::for_model(&a.run.model).map_err(|e| CliError::Usage(e.to_string()))?;
    check_memory(&a.run, &graph, 1, graph.spec.max_position_embeddings)?;
    init_threads(a.run.threads)?;
    super::common::backend(&a.run.device)?;
    let model = load_model(&graph)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("tokio runtime: {e}")))?;
    runtime.block_on(async move {
        // Before the engine starts: metric handles registered earlier would record nothing.
        let metrics = troupe_actors::metrics::prometheus_handle()
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        let options = EngineOptions::default().runtime(RuntimeOptions {
            schedule: a.schedule.clone(),
            device: (a.run.device != DeviceId::Cpu).then(|| a.run.device.clone()),
            backends: Some(troupe::backends::default_factory()),
            kv: Some(kv_config(&a.run, &model.spec)),
            prefix_cache: !a.no_prefix_cache,
            ..RuntimeOptions::default()
        });
        let engine = troupe::Engine::start(model, &graph, options)
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        let engine = Arc::new(engine);
        let options = ServeOptions {
            addr: a.addr,
            model_id: serve::model_id(&a.run.model),
            api_key,
            max_queue: a.max_queue as usize,
            max_body_bytes: a.max_body_bytes as usize,
            chat_template: template,
            metrics: Some(metrics),
        };
        let server = Server::bind(engine.clone(), options)
            .await
            .map_err(|e| CliError::Runtime(format!("cannot listen on {}: {e}", a.addr)))?;
        let addr = server
            .local_addr()
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on http://{addr}");
            let _ = out.flush();
        }
        server
            .run(shutdown_signal())
            .await
            .map_err(|e| CliError::Runtime(format!("server: {e}")))?;
        engine
            .shutdown()
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        Ok::<(), CliError>(())
    })
}

/// `TROUPE_API_KEY`, when set and not empty.
fn env_api_key() -> Result<Option<String>, CliError> {
    match std::env::var("TROUPE_API_KEY") {
        Ok(k) if k.is_empty() => Ok(None),
        Ok(k) => Ok(Some(k)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(CliError::Usage("TROUPE_API_KEY is not valid UTF-8".into()))
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
