//! troupe from a dependent crate, through `troupe::prelude::*` only (default features off):
//! 1. streams text from the deepseek-v3-tiny fixture and checks the deltas add up to the
//!    decoded tokens (the model is random enough to emit bytes that are no UTF-8, so both may
//!    hold `�`; characters split over tokens are the detokenizer's unit tests);
//! 2. drops a 2,000-token request's stream at its third token and measures this process's CPU
//!    time over the next second (nothing may keep computing);
//! 3. does the same after dropping the `Engine` (not the stream) without `shutdown`.
//!
//! Prints one `key=value` line per check and exits 1 when a check fails.

use std::time::Duration;

use troupe::prelude::*;

/// CPU time of the whole process so far (user + system), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU seconds this process uses over one second of waiting.
async fn cpu_over_one_second() -> f64 {
    // Let the decode step in flight (if any) end first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cpu_seconds() - before
}

/// A 2,000-token request, read up to its third token.
async fn long_request(engine: &Engine) -> Result<TokenStream, Error> {
    let ids = engine.tokenizer().encode("The quick brown fox")?;
    let request = GenerateRequest::new(ids, 2000).stop_at_eos(false);
    let mut stream = engine.generate(request).await?;
    for _ in 0..3 {
        match stream.next().await {
            Some(event) => drop(event?),
            None => return Err(Error::Closed("the stream ended before 3 tokens".into())),
        }
    }
    Ok(stream)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/deepseek-v3-tiny"
    );
    let long = concat!(env!("CARGO_MANIFEST_DIR"), "/long-context.toml");
    let mut ok = true;

    // 1. The README's snippet.
    let engine = Engine::load(fixture, EngineOptions::default()).await?;
    let ids = engine.tokenizer().encode("The quick brown fox")?;
    let mut stream = engine.generate(GenerateRequest::new(ids, 32)).await?;
    let (mut text, mut tokens) = (String::new(), Vec::new());
    while let Some(event) = stream.next().await {
        let event = event?;
        tokens.push(event.token);
        text.push_str(&event.text);
    }
    let decoded = engine.tokenizer().decode(&tokens)?;
    println!("streamed_text={text:?}");
    println!("streamed_tokens={}", tokens.len());
    if text != decoded || tokens.is_empty() {
        println!("FAIL: streamed text {text:?} vs decoded {decoded:?}");
        ok = false;
    }
    engine.shutdown().await?;

    // 2. A 2,000-token request's stream dropped at its third token.
    let engine = Engine::load(long, EngineOptions::default()).await?;
    let stream = long_request(&engine).await?;
    drop(stream);
    let settled = {
        tokio::time::sleep(Duration::from_millis(300)).await;
        engine.tokens_generated()
    };
    let cpu = cpu_over_one_second().await;
    let after = engine.tokens_generated();
    println!("cpu_seconds_after_drop={cpu:.3}");
    println!("tokens_generated_after_drop={settled}->{after}");
    if cpu >= 0.1 || after != settled || after >= 100 {
        println!("FAIL: work went on after the stream was dropped");
        ok = false;
    }

    // 3. The engine dropped without shutdown while a request runs (its stream kept).
    let mut stream = long_request(&engine).await?;
    drop(engine);
    let cpu = cpu_over_one_second().await;
    let mut rest = 0;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        rest += 1;
    }
    println!("cpu_seconds_after_engine_drop={cpu:.3}");
    println!("tokens_after_engine_drop={rest}");
    if cpu >= 0.1 || rest > 20 {
        println!("FAIL: work went on after the engine was dropped");
        ok = false;
    }
    if !ok {
        std::process::exit(1);
    }
    println!("ok");
    Ok(())
}
