//! The async library API: concurrent requests on one `Engine` are batched continuously and each
//! token stream equals the reference executor's tokens.

use crate::common::*;
use troupe_actors::{Engine, FaultPlan, RuntimeConfig, RuntimeOptions};

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
                let mut s = engine.generate(r);
                let mut toks = Vec::new();
                while let Some(t) = s.recv().await {
                    toks.push(t.expect("token"));
                }
                toks
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.expect("task"), want[i].generated, "request {i}");
    }
    let bad = engine
        .generate(request(vec![4096], 2, None))
        .recv()
        .await
        .expect("an item")
        .expect_err("bad prompt");
    assert!(bad.to_string().contains("out of range"), "{bad}");
    let logits = engine.logits(ps[0].clone()).await.expect("logits");
    assert_eq!(logits.rows(), ps[0].len());
    engine.shutdown().await.expect("shutdown");
}
