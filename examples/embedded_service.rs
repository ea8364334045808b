//! The actor runtime embedded in a small line-based TCP service on 127.0.0.1: each line is a
//! space-separated list of token ids, the reply streams the generated ids back on one line.
//! The example starts the server, connects eight concurrent clients (which the engine batches
//! continuously), prints their answers and shuts down — it runs to completion by itself.
//!
//! `cargo run -p troupe-actors --example embedded_service [MODEL]`

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use troupe_actors::{Engine, RuntimeOptions};
use troupe_engine::generate::GenerateRequest;
use troupe_engine::sampling::SamplingParams;

async fn serve_one(engine: Arc<Engine>, sock: TcpStream) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let prompt: Result<Vec<u32>, _> = line.split_whitespace().map(str::parse).collect();
        let Ok(prompt) = prompt else {
            w.write_all(b"error: expected token ids\n").await?;
            continue;
        };
        let req = GenerateRequest {
            prompt,
            max_new_tokens: 8,
            sampling: SamplingParams::default(),
            stop_token: None,
            keep_logits: false,
        };
        let mut tokens = engine.generate(req);
        while let Some(t) = tokens.recv().await {
            match t {
                Ok(t) => w.write_all(format!("{t} ").as_bytes()).await?,
                Err(e) => w.write_all(format!("error: {e}").as_bytes()).await?,
            }
        }
        w.write_all(b"\n").await?;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/deepseek-v3-tiny"
        )
        .to_string()
    });
    let engine = Arc::new(
        Engine::load(
            &path,
            RuntimeOptions {
                schedule: Some("two-microbatch".into()),
                ..Default::default()
            },
        )
        .await?,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("serving {path} on {addr}");
    let server = {
        let engine = engine.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve_one(engine.clone(), sock));
            }
        })
    };
    let clients: Vec<_> = (0..8u32)
        .map(|c| {
            tokio::spawn(async move {
                let sock = TcpStream::connect(addr).await?;
                let (r, mut w) = sock.into_split();
                let prompt: Vec<String> = (0..3 + c)
                    .map(|i| ((c * 31 + i * 7) % 1000).to_string())
                    .collect();
                w.write_all(format!("{}\n", prompt.join(" ")).as_bytes())
                    .await?;
                w.shutdown().await?;
                let answer = BufReader::new(r)
                    .lines()
                    .next_line()
                    .await?
                    .unwrap_or_default();
                Ok::<_, std::io::Error>((c, prompt.join(" "), answer))
            })
        })
        .collect();
    for c in clients {
        let (c, prompt, answer) = c.await??;
        println!("client {c}: [{prompt}] -> [{}]", answer.trim());
    }
    server.abort();
    engine.shutdown().await?;
    println!("done");
    Ok(())
}
