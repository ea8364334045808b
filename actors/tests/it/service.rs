//! The async library API: concurrent requests on one `Engine` are batched continuously and each
//! token stream equals the reference executor's tokens; bad requests fail before any stream;
//! dropped or cancelled streams and a dropped engine stop generating; a full stream pauses only
//! its own request.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use futures_util::StreamExt;
use troupe_actors::{
    Engine, EngineOptions, FaultPlan, FinishReason, RuntimeConfig, RuntimeOptions,
};
use troupe_engine::generate::GenerateRequest;
use troupe_engine::model::Model;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_match_reference() {
    let (g, model) = load("deepseek-v3-tiny");
    let ps = prompts("deepseek-v3-tiny");
    let reqs: Vec<_> = (0..12)
        .map(|i| {
            request(
                ps[i % ps.len()][..1 + i % 5].to_vec(),
                2 + i % 4,
                (i % 2 == 0).then_some(i as u64),
            )
        })
        .collect();
    let want = reference(&model, &reqs);
    let cfg = RuntimeConfig {
        options: RuntimeOptions {
            schedule: Some("two-microbatch".into()),
            ..Default::default()
        },
        faults: Some(FaultPlan::default()),
        ..Default::default()
    };
    let engine = std::sync::Arc::new(Engine::start(model.clone(), &g, cfg).await.expect("start"));
    let tasks: Vec<_> = reqs
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, r)| {
            let engine = engine.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(3 * i as u64)).await;
                let mut s = engine.generate(r).await.expect("a valid request");
                let mut toks = Vec::new();
                while let Some(t) = s.next().await {
                    toks.push(t.expect("token").token);
                }
                toks
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.expect("task"), want[i].generated, "request {i}");
    }
    let bad = match engine.generate(request(vec![4096], 2, None)).await {
        Err(e) => e,
        Ok(_) => panic!("a bad prompt got a stream"),
    };
    assert!(bad.to_string().contains("out of range"), "{bad}");
    let logits = engine.logits(ps[0].clone()).await.expect("logits");
    assert_eq!(logits.rows(), ps[0].len());
    engine.shutdown().await.expect("shutdown");
}

async fn engine(capacity: usize) -> (Engine, Arc<Model>) {
    let (g, model) = load("deepseek-v3-tiny");
    let cfg = RuntimeConfig {
        faults: Some(FaultPlan::default()),
        ..Default::default()
    };
    let options = EngineOptions::from(cfg).stream_capacity(capacity);
    let engine = Engine::start(model.clone(), &g, options)
        .await
        .expect("start");
    (engine, model)
}

fn pages_in_use(engine: &Engine) -> usize {
    engine.core().kv_pools.layers[0].pages_in_use()
}

/// Waits for the batcher to be idle: the token count stops changing.
async fn settled(engine: &Engine) -> u64 {
    let mut last = engine.tokens_generated();
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = engine.tokens_generated();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_cancelled_and_engine_dropped_requests_stop_within_a_step() {
    const CAP: usize = 2;
    let (engine, _) = engine(CAP).await;
    let long = || GenerateRequest::new(vec![0, 5, 9], 200).stop_at_eos(false);
    // Dropped at its third token: at most CAP buffered tokens and one step in flight follow.
    let mut s = engine.generate(long()).await.expect("stream");
    for _ in 0..3 {
        s.next().await.expect("an event").expect("a token");
    }
    drop(s);
    let n = settled(&engine).await;
    assert!(n <= (3 + CAP + 1) as u64, "{n} tokens after dropping at 3");
    assert_eq!(pages_in_use(&engine), 0, "the dropped request's pages");
    // Cancelled from another task through its handle: the stream ends.
    let mut s = engine.generate(long()).await.expect("stream");
    s.next().await.expect("an event").expect("a token");
    let handle = s.cancel_handle();
    tokio::spawn(async move { handle.cancel() })
        .await
        .expect("cancel task");
    assert!(s.next().await.is_none(), "a cancelled stream ends");
    let m = settled(&engine).await - n;
    assert!(
        m <= (1 + CAP + 1) as u64,
        "{m} tokens after cancelling at 1"
    );
    assert_eq!(pages_in_use(&engine), 0, "the cancelled request's pages");
    // The engine dropped without shutdown: the stream ends after what was buffered.
    let mut s = engine.generate(long()).await.expect("stream");
    s.next().await.expect("an event").expect("a token");
    drop(engine);
    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        let mut n = 0;
        while let Some(Ok(_)) = s.next().await {
            n += 1;
        }
        n
    })
    .await
    .expect("the stream of a dropped engine ends");
    assert!(
        rest <= CAP + 1,
        "{rest} tokens after the engine was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_pauses_its_request_only_and_resumes_exactly() {
    const CAP: usize = 2;
    let (engine, model) = engine(CAP).await;
    let ps = prompts("deepseek-v3-tiny");
    let req = |i: usize| GenerateRequest::new(ps[i].clone(), 24).stop_at_eos(false);
    let want = reference(&model, &[req(0), req(1)]);
    let mut slow = engine.generate(req(0)).await.expect("stream");
    let mut fast = engine.generate(req(1)).await.expect("stream");
    let mut fast_tokens = Vec::new();
    while let Some(e) = fast.next().await {
        fast_tokens.push(e.expect("token").token);
    }
    assert_eq!(fast_tokens, want[1].generated, "the request read at once");
    // The unread request made CAP tokens and waits.
    assert_eq!(settled(&engine).await, (24 + CAP) as u64);
    let mut slow_tokens = Vec::new();
    while let Some(e) = slow.next().await {
        slow_tokens.push(e.expect("token").token);
    }
    assert_eq!(
        slow_tokens, want[0].generated,
        "the paused request, resumed"
    );
    engine.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_checked_before_any_stream_and_events_carry_text() {
    let (engine, model) = engine(16).await;
    let vocab = model.spec.vocab_size as u32;
    let bad = [
        GenerateRequest::new(vec![], 4),
        GenerateRequest::new(vec![5, vocab], 4),
        GenerateRequest::new(vec![5; 200], 100),
        GenerateRequest::new(vec![5], 4).temperature(f32::NAN),
        GenerateRequest::new(vec![5], 4).temperature(-1.0),
        GenerateRequest::new(vec![5], 4).temperature(0.7).top_p(0.0),
        GenerateRequest::new(vec![5], 4).stop_token(vocab),
    ];
    for r in bad {
        let what = format!("{r:?}");
        match engine.generate(r).await {
            Err(e) => assert!(e.engine().is_some(), "{what}: {e}"),
            Ok(_) => panic!("{what}: a stream for a bad request"),
        }
    }
    assert_eq!(engine.tokens_generated(), 0);
    // Text: the deltas add up to the decoded tokens; the last event says why it ended.
    let ids = engine
        .tokenizer()
        .encode("The quick brown fox")
        .expect("encode");
    assert_eq!(ids[0], model.spec.bos_token_id.expect("bos"));
    let mut s = engine
        .generate(GenerateRequest::new(ids.clone(), 12).keep_logits())
        .await
        .expect("stream");
    let (mut tokens, mut text, mut last) = (Vec::new(), String::new(), None);
    while let Some(e) = s.next().await {
        let e = e.expect("event");
        assert_eq!(e.logits.as_ref().map(Vec::len), Some(vocab as usize));
        tokens.push(e.token);
        text.push_str(&e.text);
        last = e.finish;
    }
    assert_eq!(text, engine.tokenizer().decode(&tokens).expect("decode"));
    let stopped_at_eos = tokens.last() == model.spec.eos_token_id.as_ref();
    let want = if stopped_at_eos {
        FinishReason::Stop
    } else {
        FinishReason::Length
    };
    assert_eq!(last, Some(want));
    // A stop token ends the request at its first occurrence.
    let stop = tokens[2];
    let at = tokens.iter().position(|&t| t == stop).expect("present");
    let mut s = engine
        .generate(GenerateRequest::new(ids, 12).stop_token(stop))
        .await
        .expect("stream");
    let mut n = 0;
    while let Some(e) = s.next().await {
        n += 1;
        if e.expect("event").finish == Some(FinishReason::Stop) {
            assert_eq!(n, at + 1);
        }
    }
    assert_eq!(n, at + 1);
    engine.shutdown().await.expect("shutdown");
}
