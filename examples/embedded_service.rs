//! troupe embedded in a small line-based TCP service on 127.0.0.1, through `troupe::prelude`
//! only: each line is a prompt (text), the reply streams the generated text back on one line as
//! it is decoded. A request the model cannot take (too long, say) is answered with its error
//! before any stream opens. The example starts the server, connects eight concurrent
//! clients (which the engine batches continuously), prints their answers and shuts down: it runs
//! to completion by itself.
//!
//! `cargo run --release --example embedded_service [MODEL]`

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use troupe::prelude::*;

async fn serve_one(engine: Arc<Engine>, sock: TcpStream) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        // BOS as the model wants it, then the text's ids.
        let request = match engine.tokenizer().encode(&line) {
            Ok(ids) => GenerateRequest::new(ids, 12),
            Err(e) => {
                w.write_all(format!("error: {e}\n").as_bytes()).await?;
                continue;
            }
        };
        // Validation happens here, before any stream: a service answers "400" at this point.
        let mut stream = match engine.generate(request).await {
            Ok(s) => s,
            Err(e) => {
                w.write_all(format!("error: {e}\n").as_bytes()).await?;
                continue;
            }
        };
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => w.write_all(event.text.as_bytes()).await?,
                Err(e) => w.write_all(format!(" [error: {e}]").as_bytes()).await?,
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
            "/tests/fixtures/deepseek-v3-tiny"
        )
        .to_string()
    });
    let options = EngineOptions::default().runtime(RuntimeOptions {
        schedule: Some("two-microbatch".into()),
        ..Default::default()
    });
    let engine = Arc::new(Engine::load(&path, options).await?);
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
    let prompts = [
        "The quick brown fox",
        "Once upon a time",
        "A fool and his money",
        "In the beginning",
        "café au lait",
        "The answer is",
        "Hello, world",
        "",
    ];
    let clients: Vec<_> = prompts
        .into_iter()
        .enumerate()
        .map(|(c, prompt)| {
            tokio::spawn(async move {
                let sock = TcpStream::connect(addr).await?;
                let (r, mut w) = sock.into_split();
                w.write_all(format!("{prompt}\n").as_bytes()).await?;
                w.shutdown().await?;
                let answer = BufReader::new(r)
                    .lines()
                    .next_line()
                    .await?
                    .unwrap_or_default();
                Ok::<_, std::io::Error>((c, prompt, answer))
            })
        })
        .collect();
    for c in clients {
        let (c, prompt, answer) = c.await??;
        println!("client {c}: {prompt:?} -> {answer:?}");
    }
    server.abort();
    engine.shutdown().await?;
    println!("done");
    Ok(())
}
